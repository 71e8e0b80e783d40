//! Benchmark of ward-queue against a raw crossbeam bounded channel, rayon and threadpool, measured
//! in the same run: no-op throughput (unkeyed and keyed) and dispatch latency.
//!
//! Run with `cargo xtask bench --only queue` (= `cargo run --release -p ward-queue --example bench`).
//! Every pool gets the same two worker threads and one producer; memory stays bounded because
//! ward-queue and the raw channel hold at most `CAPACITY` jobs (rayon and threadpool queue without
//! bound, which is one of the differences measured: their producer never waits).
//!
//! Throughput is compared in pairs: each round runs the raw channel and every pool back to back,
//! and a pool's figure is the median over the rounds of its speed relative to the raw channel in
//! the same round. On a small shared machine the load drifts from one second to the next (the
//! raw channel alone has taken anything from 40 to 190 ms per million jobs); a ratio of two
//! medians taken seconds apart measures that drift, a ratio within one round mostly cancels it.
//! The order within a round alternates, so that neither side always runs first, and a first
//! round warms up threads and allocator and is not counted.
//!
//! For instruction counts, `WARD_BENCH_PROFILE=<contender>` runs one contender once and exits
//! (`raw`, `raw-values`, `unkeyed`, `keyed`, `events`; a comma-separated list runs each in turn,
//! `WARD_BENCH_REPS` times over), and `WARD_BENCH_JOBS` sets the job count:
//! `WARD_BENCH_PROFILE=keyed WARD_BENCH_JOBS=100000 valgrind --tool=callgrind
//! --separate-threads=yes target/release/examples/bench` counts each thread's instructions
//! (thread 1 is the producer); the difference between runs of two job counts, divided by the
//! difference in jobs, is the cost per job without the setup.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::thread;
use std::time::{Duration, Instant};

use ward_queue::{Policy, Pool};

/// Jobs per run: 1M, or `WARD_BENCH_JOBS`.
static JOBS: LazyLock<u64> = LazyLock::new(|| {
    std::env::var("WARD_BENCH_JOBS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000)
});
const WORKERS: usize = 2;
const CAPACITY: usize = 1024;
const ROUNDS: usize = 9;
const PINGS: usize = 10_000;
/// Dispatch latency is measured in this many interleaved rounds (raw, unkeyed, keyed each time),
/// and the p99 overhead is the median of the rounds' overheads: on a small shared machine one
/// scheduler hiccup in one window would otherwise decide the figure.
const PING_ROUNDS: usize = 7;

type Boxed = Box<dyn FnOnce() + Send>;

fn raw_crossbeam_boxed() -> Duration {
    let (tx, rx) = crossbeam_channel::bounded::<Boxed>(CAPACITY);
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let rx = rx.clone();
            thread::spawn(move || {
                while let Ok(job) = rx.recv() {
                    job();
                }
            })
        })
        .collect();
    let start = Instant::now();
    for i in 0..*JOBS {
        tx.send(Box::new(move || {
            black_box(i);
        }))
        .unwrap();
    }
    drop(tx);
    workers.into_iter().for_each(|w| w.join().unwrap());
    start.elapsed()
}

fn raw_crossbeam_values() -> Duration {
    let (tx, rx) = crossbeam_channel::bounded::<u64>(CAPACITY);
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let rx = rx.clone();
            thread::spawn(move || {
                while let Ok(job) = rx.recv() {
                    black_box(job);
                }
            })
        })
        .collect();
    let start = Instant::now();
    for i in 0..*JOBS {
        tx.send(i).unwrap();
    }
    drop(tx);
    workers.into_iter().for_each(|w| w.join().unwrap());
    start.elapsed()
}

fn ward(keyed: bool, events: bool) -> Duration {
    let mut builder = Pool::builder()
        .workers(WORKERS)
        .capacity(CAPACITY)
        .policy(Policy::Block { timeout: None });
    if events {
        // What the daemon does: every outcome reaches the owner.
        builder = builder.on_event(|event| {
            black_box(event);
        });
    }
    let pool: Pool<u64, u64> = builder
        .build(|job: &u64| {
            black_box(job);
            Ok(())
        })
        .unwrap();
    let start = Instant::now();
    for i in 0..*JOBS {
        if keyed {
            // Distinct keys: the full key-table path for every job, no coalescing to flatter it.
            pool.submit_keyed(i, i).unwrap();
        } else {
            pool.submit(i).unwrap();
        }
    }
    let left = pool.shutdown(Duration::from_secs(60));
    assert!(left.is_empty());
    start.elapsed()
}

fn rayon_spawn() -> Duration {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(WORKERS)
        .build()
        .unwrap();
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    for i in 0..*JOBS {
        let done = Arc::clone(&done);
        pool.spawn(move || {
            black_box(i);
            done.fetch_add(1, Ordering::Relaxed);
        });
    }
    while done.load(Ordering::Relaxed) < *JOBS {
        thread::yield_now();
    }
    start.elapsed()
}

fn threadpool_execute() -> Duration {
    let pool = threadpool::ThreadPool::new(WORKERS);
    let start = Instant::now();
    for i in 0..*JOBS {
        pool.execute(move || {
            black_box(i);
        });
    }
    pool.join();
    start.elapsed()
}

fn median<T: PartialOrd + Copy>(mut runs: Vec<T>) -> T {
    runs.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    runs[runs.len() / 2]
}

/// The smallest and largest of `values`, for the spread.
fn range(values: &[f64]) -> (f64, f64) {
    values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        })
}

fn rate(d: Duration) -> f64 {
    *JOBS as f64 / d.as_secs_f64() / 1e6
}

/// Latency from submit to the job's start with idle workers, one job at a time: `PINGS` samples.
fn dispatch_latencies(
    mut submit: impl FnMut(Instant),
    last: &AtomicU64,
    done: &AtomicUsize,
) -> Vec<u64> {
    let mut samples = Vec::with_capacity(PINGS);
    for n in 1..=PINGS {
        submit(Instant::now());
        while done.load(Ordering::Acquire) < n {
            // Yield rather than spin: on two shared cores a spinning producer can keep the
            // worker it just woke off the CPU, and that would be measured as dispatch time.
            thread::yield_now();
        }
        samples.push(last.load(Ordering::Acquire));
    }
    samples.sort_unstable();
    samples
}

fn percentile(sorted: &[u64], q: f64) -> Duration {
    let index = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    Duration::from_nanos(sorted[index])
}

fn dispatch_raw() -> Vec<u64> {
    let last = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = crossbeam_channel::bounded::<Instant>(CAPACITY);
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let (rx, last, done) = (rx.clone(), Arc::clone(&last), Arc::clone(&done));
            thread::spawn(move || {
                while let Ok(sent) = rx.recv() {
                    last.store(sent.elapsed().as_nanos() as u64, Ordering::Release);
                    done.fetch_add(1, Ordering::Release);
                }
            })
        })
        .collect();
    let samples = dispatch_latencies(|now| tx.send(now).unwrap(), &last, &done);
    drop(tx);
    workers.into_iter().for_each(|w| w.join().unwrap());
    samples
}

fn dispatch_ward(keyed: bool) -> Vec<u64> {
    let last = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let pool: Pool<Instant, u64> = {
        let (last, done) = (Arc::clone(&last), Arc::clone(&done));
        Pool::builder()
            .workers(WORKERS)
            .capacity(CAPACITY)
            .build(move |sent: &Instant| {
                last.store(sent.elapsed().as_nanos() as u64, Ordering::Release);
                done.fetch_add(1, Ordering::Release);
                Ok(())
            })
            .unwrap()
    };
    let mut key = 0;
    let samples = dispatch_latencies(
        |now| {
            key += 1;
            if keyed {
                pool.submit_keyed(key % 64, now).unwrap();
            } else {
                pool.submit(now).unwrap();
            }
        },
        &last,
        &done,
    );
    assert!(pool.shutdown(Duration::from_secs(10)).is_empty());
    samples
}

fn main() {
    if let Ok(only) = std::env::var("WARD_BENCH_PROFILE") {
        let reps: usize = std::env::var("WARD_BENCH_REPS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(1);
        for _ in 0..reps {
            only.split(',').for_each(profile);
        }
        return;
    }
    let started = Instant::now();
    println!(
        "ward-queue bench: {} no-op jobs, 1 producer, {WORKERS} workers, capacity {CAPACITY}, \
         {ROUNDS} paired rounds after one warm-up; {} CPUs",
        *JOBS,
        thread::available_parallelism().map_or(0, |n| n.get())
    );
    let names = [
        "raw crossbeam bounded (boxed jobs)",
        "raw crossbeam bounded (u64 values)",
        "ward-queue unkeyed",
        "ward-queue keyed (distinct keys)",
        "ward-queue unkeyed + event callback",
        "rayon spawn (unbounded)",
        "threadpool execute (unbounded)",
    ];
    let variants: [fn() -> Duration; 7] = [
        raw_crossbeam_boxed,
        raw_crossbeam_values,
        || ward(false, false),
        || ward(true, false),
        || ward(false, true),
        rayon_spawn,
        threadpool_execute,
    ];
    // One uncounted round: thread stacks, allocator arenas and caches warm up.
    variants.iter().for_each(|run| {
        run();
    });
    let mut runs: Vec<Vec<Duration>> = vec![Vec::new(); names.len()];
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    for round in 0..ROUNDS {
        let mut times = [Duration::ZERO; 7];
        let mut order: Vec<usize> = (0..variants.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            times[i] = variants[i]();
        }
        for (i, time) in times.iter().enumerate() {
            runs[i].push(*time);
            ratios[i].push(times[0].as_secs_f64() / time.as_secs_f64());
        }
    }
    let per_round = |i: usize| -> String {
        let shown: Vec<String> = ratios[i].iter().map(|r| format!("{r:.2}")).collect();
        shown.join(" ")
    };
    println!();
    println!(
        "{:<38} {:>10} {:>10} {:>12} {:>12}",
        "throughput", "time", "M jobs/s", "vs raw boxed", "round range"
    );
    for (i, name) in names.iter().enumerate() {
        let time = median(runs[i].clone());
        let (lo, hi) = range(&ratios[i]);
        println!(
            "{name:<38} {:>8.0}ms {:>10.2} {:>11.2}x {:>5.2}-{:<5.2}",
            time.as_secs_f64() * 1e3,
            rate(time),
            median(ratios[i].clone()),
            lo,
            hi
        );
    }
    println!(
        "raw boxed ms per round: {}",
        runs[0]
            .iter()
            .map(|t| format!("{:.0}", t.as_secs_f64() * 1e3))
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!("unkeyed vs raw per round: {}", per_round(2));
    println!("keyed vs raw per round:   {}", per_round(3));
    let unkeyed = median(ratios[2].clone());
    let keyed = median(ratios[3].clone());
    println!(
        "targets (median of per-round ratios): unkeyed >= 0.80x raw: {:.2}x {}; \
         keyed >= 0.50x raw: {:.2}x {}",
        unkeyed,
        verdict(unkeyed >= 0.8),
        keyed,
        verdict(keyed >= 0.5)
    );

    let mut raw = Vec::new();
    let mut unkeyed = Vec::new();
    let mut keyed = Vec::new();
    let mut overheads = Vec::new();
    for _ in 0..PING_ROUNDS {
        let round = [dispatch_raw(), dispatch_ward(false), dispatch_ward(true)];
        let [r, u, k] = round.each_ref().map(|samples| percentile(samples, 0.99));
        overheads.push(u.max(k).saturating_sub(r));
        raw.extend_from_slice(&round[0]);
        unkeyed.extend_from_slice(&round[1]);
        keyed.extend_from_slice(&round[2]);
    }
    for samples in [&mut raw, &mut unkeyed, &mut keyed] {
        samples.sort_unstable();
    }
    println!();
    println!(
        "dispatch latency, submit -> job start, idle workers, {PINGS} sequential jobs x \
         {PING_ROUNDS} interleaved rounds"
    );
    println!(
        "{:<38} {:>10} {:>10} {:>14}",
        "", "p50", "p99", "p99 overhead"
    );
    let raw_p99 = percentile(&raw, 0.99);
    for (name, samples) in [
        ("raw crossbeam bounded", &raw),
        ("ward-queue unkeyed", &unkeyed),
        ("ward-queue keyed", &keyed),
    ] {
        let p99 = percentile(samples, 0.99);
        let overhead = p99.saturating_sub(raw_p99);
        println!(
            "{name:<38} {:>8.1}us {:>8.1}us {:>12.1}us",
            percentile(samples, 0.5).as_secs_f64() * 1e6,
            p99.as_secs_f64() * 1e6,
            overhead.as_secs_f64() * 1e6
        );
    }
    let per_round: Vec<String> = overheads
        .iter()
        .map(|o| format!("{:.1}", o.as_secs_f64() * 1e6))
        .collect();
    println!(
        "p99 overhead per round (worse of unkeyed and keyed minus raw, us): {}",
        per_round.join(" ")
    );
    let worst = median(overheads);
    println!(
        "target: p99 dispatch overhead <= 10us (median of rounds): {:.1}us {}",
        worst.as_secs_f64() * 1e6,
        verdict(worst <= Duration::from_micros(10))
    );
    println!("(bench took {:.1}s)", started.elapsed().as_secs_f64());
}

/// One run of one contender, for a profiler: no warm-up, no pairing.
fn profile(only: &str) {
    let run: fn() -> Duration = match only {
        "raw" => raw_crossbeam_boxed,
        "raw-values" => raw_crossbeam_values,
        "unkeyed" => || ward(false, false),
        "keyed" => || ward(true, false),
        "events" => || ward(false, true),
        other => {
            eprintln!("WARD_BENCH_PROFILE: unknown contender {other:?}");
            std::process::exit(2);
        }
    };
    let time = run();
    println!(
        "{only}: {} jobs in {:.1} ms",
        *JOBS,
        time.as_secs_f64() * 1e3
    );
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "NOT met" }
}

//! Benchmark of ward-queue against a raw crossbeam bounded channel, rayon and threadpool, measured
//! in the same run: no-op throughput (unkeyed and keyed) and dispatch latency.
//!
//! Run with `cargo xtask bench --only queue` (= `cargo run --release -p ward-queue --example bench`).
//! Every pool gets the same two worker threads and one producer; memory stays bounded because
//! ward-queue and the raw channel hold at most `CAPACITY` jobs (rayon and threadpool queue without
//! bound, which is one of the differences measured: their producer never waits).

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use ward_queue::{Policy, Pool};

const JOBS: u64 = 1_000_000;
const WORKERS: usize = 2;
const CAPACITY: usize = 1024;
const ROUNDS: usize = 5;
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
    for i in 0..JOBS {
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
    for i in 0..JOBS {
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
    for i in 0..JOBS {
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
    for i in 0..JOBS {
        let done = Arc::clone(&done);
        pool.spawn(move || {
            black_box(i);
            done.fetch_add(1, Ordering::Relaxed);
        });
    }
    while done.load(Ordering::Relaxed) < JOBS {
        thread::yield_now();
    }
    start.elapsed()
}

fn threadpool_execute() -> Duration {
    let pool = threadpool::ThreadPool::new(WORKERS);
    let start = Instant::now();
    for i in 0..JOBS {
        pool.execute(move || {
            black_box(i);
        });
    }
    pool.join();
    start.elapsed()
}

fn median(mut runs: Vec<Duration>) -> Duration {
    runs.sort();
    runs[runs.len() / 2]
}

fn rate(d: Duration) -> f64 {
    JOBS as f64 / d.as_secs_f64() / 1e6
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
    let started = Instant::now();
    println!(
        "ward-queue bench: {JOBS} no-op jobs, 1 producer, {WORKERS} workers, capacity {CAPACITY}, \
         median of {ROUNDS} interleaved rounds; {} CPUs",
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
    let mut runs: Vec<Vec<Duration>> = vec![Vec::new(); names.len()];
    for _ in 0..ROUNDS {
        runs[0].push(raw_crossbeam_boxed());
        runs[1].push(raw_crossbeam_values());
        runs[2].push(ward(false, false));
        runs[3].push(ward(true, false));
        runs[4].push(ward(false, true));
        runs[5].push(rayon_spawn());
        runs[6].push(threadpool_execute());
    }
    let medians: Vec<Duration> = runs.into_iter().map(median).collect();
    let reference = rate(medians[0]);
    println!();
    println!(
        "{:<38} {:>10} {:>10} {:>12}",
        "throughput", "time", "M jobs/s", "vs raw boxed"
    );
    for (name, time) in names.iter().zip(&medians) {
        println!(
            "{name:<38} {:>8.0}ms {:>10.2} {:>11.2}x",
            time.as_secs_f64() * 1e3,
            rate(*time),
            rate(*time) / reference
        );
    }
    let unkeyed = rate(medians[2]) / reference;
    let keyed = rate(medians[3]) / reference;
    println!(
        "targets: unkeyed >= 0.80x raw: {:.2}x {}; keyed >= 0.50x raw: {:.2}x {}",
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

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "NOT met" }
}

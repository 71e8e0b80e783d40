//! `cargo xtask bench --only watch`: ward-watch against notify-debouncer-full, in one run.
//!
//! Measures write→delivery latency (p50/p99) at a 50 ms and a 1 ms window, and bursts of 50k and
//! 200k new files with a slow consumer (2 ms of work per delivery): time until every path is
//! accounted for, peak RSS, and the share of paths accounted for. Each scenario runs in a child
//! process (this same binary) so that its peak RSS (`VmHWM`) is its own; the consumer keeps a
//! bitset, not a snapshot, so the RSS is the watcher's. A path counts as accounted for when a
//! delivered change names it, or when it lies in a delivered rescan's subtree on disk.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ward_watch::{Item, Watcher};

/// The slow consumer's work: per delivery, and per item delivered.
const SLOW_CONSUMER: Duration = Duration::from_millis(2);
const PER_ITEM: Duration = Duration::from_micros(50);
/// How long after the last write the consumer may take to account for every path.
const BURST_DEADLINE: Duration = Duration::from_secs(20);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--child") {
        let tool = args[1].as_str();
        let n: u64 = args[3].parse().expect("a number");
        let result = match args[2].as_str() {
            "latency" => latency(tool, Duration::from_millis(n)),
            "burst" => burst(tool, n as usize),
            other => panic!("unknown scenario {other}"),
        };
        println!("RESULT {result}");
        return;
    }
    let exe = std::env::current_exe().expect("own path");
    let run = |tool: &str, scenario: &str, n: u64| -> Vec<f64> {
        let out = Command::new(&exe)
            .args(["--child", tool, scenario, &n.to_string()])
            .output()
            .expect("run child");
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        let stdout = String::from_utf8_lossy(&out.stdout);
        match stdout.lines().find_map(|l| l.strip_prefix("RESULT ")) {
            Some(line) => line
                .split_whitespace()
                .map(|x| x.parse().unwrap_or(f64::NAN))
                .collect(),
            None => {
                eprintln!(
                    "{tool} {scenario} {n} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                vec![f64::NAN; 4]
            }
        }
    };
    println!("ward-watch vs notify-debouncer-full 0.7 (same machine, same run)\n");
    println!("write→delivery latency, 100 single-file writes each");
    println!(
        "{:<10} {:>8} {:>10} {:>10} {:>10} {:>10} {:>8} {:>8}",
        "window", "", "ward p50", "ward p99", "base p50", "base p99", "p50 ×", "p99 ×"
    );
    for window in [50, 1] {
        let w = run("ward", "latency", window);
        let b = run("debouncer", "latency", window);
        println!(
            "{:<10} {:>8} {:>8.1}ms {:>8.1}ms {:>8.1}ms {:>8.1}ms {:>8.2} {:>8.2}",
            format!("{window} ms"),
            "",
            w[0],
            w[1],
            b[0],
            b[1],
            w[0] / b[0],
            w[1] / b[1]
        );
    }
    println!(
        "\nburst of new files, slow consumer ({} ms per delivery + {} µs per item)",
        SLOW_CONSUMER.as_millis(),
        PER_ITEM.as_micros()
    );
    println!(
        "{:<8} {:<10} {:>10} {:>12} {:>12} {:>10}",
        "files", "tool", "write s", "delivered s", "peak RSS MB", "accounted"
    );
    for n in [50_000, 200_000] {
        let w = run("ward", "burst", n);
        let b = run("debouncer", "burst", n);
        for (tool, r) in [("ward", &w), ("debouncer", &b)] {
            println!(
                "{:<8} {:<10} {:>10.2} {:>12.2} {:>12.1} {:>9.2}%",
                n,
                tool,
                r[0],
                r[1],
                r[2],
                r[3] * 100.0
            );
        }
        println!(
            "{:<8} {:<10} {:>10} {:>12.2} {:>12.2}",
            n,
            "ward/base",
            "",
            w[1] / b[1],
            w[2] / b[2]
        );
    }
}

/// Writes 150 new files one at a time and measures how long each takes to be delivered.
/// Prints `p50_ms p99_ms`.
fn latency(tool: &str, window: Duration) -> String {
    let dir = scratch_dir();
    let root = dir.path().to_path_buf();
    let (tx, rx) = crossbeam_channel::unbounded::<PathBuf>();
    let _guard = start(tool, &root, window, tx, Duration::ZERO);
    let mut samples = Vec::new();
    for i in 0..120 {
        let path = root.join(format!("f{i}"));
        let t0 = Instant::now();
        fs::write(&path, "x").expect("write");
        loop {
            match rx.recv_timeout(Duration::from_secs(5)) {
                Ok(p) if p == path => break,
                Ok(_) => {}
                Err(_) => panic!("{} never delivered", path.display()),
            }
        }
        // The first writes warm the caches up.
        if i >= 20 {
            samples.push(t0.elapsed().as_secs_f64() * 1000.0);
        }
        while rx.try_recv().is_ok() {}
        std::thread::sleep(Duration::from_millis(5));
    }
    samples.sort_by(f64::total_cmp);
    let pct = |p: f64| samples[((samples.len() - 1) as f64 * p).round() as usize];
    format!("{} {}", pct(0.5), pct(0.99))
}

/// Writes `n` new files in 50 directories as fast as possible while a slow consumer accounts for
/// them. Prints `write_s delivered_s peak_rss_mb share`.
fn burst(tool: &str, n: usize) -> String {
    let dir = scratch_dir();
    let root = dir.path().to_path_buf();
    for d in 0..50 {
        fs::create_dir(root.join(format!("d{d}"))).expect("mkdir");
    }
    let (tx, rx) = crossbeam_channel::unbounded::<PathBuf>();
    let accounted = Arc::new(AtomicUsize::new(0));
    let consumer = {
        let accounted = accounted.clone();
        std::thread::spawn(move || {
            let mut seen = vec![false; n];
            for p in rx {
                let name = p.file_name().and_then(|s| s.to_str()).unwrap_or("");
                if let Some(i) = name.strip_prefix('f').and_then(|s| s.parse::<usize>().ok())
                    && i < n
                    && !seen[i]
                {
                    seen[i] = true;
                    accounted.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let guard = start(tool, &root, Duration::from_millis(50), tx, SLOW_CONSUMER);
    let t0 = Instant::now();
    for i in 0..n {
        fs::write(root.join(format!("d{}/f{i}", i % 50)), "x").expect("write");
    }
    let write_s = t0.elapsed().as_secs_f64();
    let written = Instant::now();
    while accounted.load(Ordering::Relaxed) < n && written.elapsed() < BURST_DEADLINE {
        std::thread::sleep(Duration::from_millis(5));
    }
    let delivered_s = t0.elapsed().as_secs_f64();
    let share = accounted.load(Ordering::Relaxed) as f64 / n as f64;
    let rss = peak_rss_mb();
    drop(guard);
    let _ = consumer.join();
    format!("{write_s} {delivered_s} {rss} {share}")
}

/// Starts `tool` on `root`; every delivered path goes to `tx` after `work` per delivery.
fn start(
    tool: &str,
    root: &Path,
    window: Duration,
    tx: crossbeam_channel::Sender<PathBuf>,
    work: Duration,
) -> Box<dyn Send> {
    match tool {
        "ward" => {
            let watcher = Watcher::builder()
                .root(root)
                .quiet(window)
                .build()
                .expect("ward-watch");
            let rx = watcher.batches().clone();
            std::thread::spawn(move || {
                for batch in rx {
                    std::thread::sleep(
                        work + PER_ITEM * batch.items.len() as u32 * u32::from(!work.is_zero()),
                    );
                    for item in batch.items {
                        match item {
                            Item::Change(c) => {
                                let _ = tx.send(c.path);
                            }
                            Item::Rescan(r) => walk_files(&r.path, &tx),
                            _ => {}
                        }
                    }
                }
            });
            Box::new(Reporting(watcher))
        }
        "debouncer" => {
            let mut debouncer = notify_debouncer_full::new_debouncer(
                window,
                None,
                move |res: notify_debouncer_full::DebounceEventResult| {
                    let items = res.as_ref().map_or(0, Vec::len) as u32;
                    std::thread::sleep(work + PER_ITEM * items * u32::from(!work.is_zero()));
                    match res {
                        Ok(events) => {
                            for e in events {
                                for p in &e.paths {
                                    let _ = tx.send(p.clone());
                                }
                            }
                        }
                        Err(errors) => eprintln!("debouncer: {errors:?}"),
                    }
                },
            )
            .expect("debouncer");
            debouncer
                .watch(root, notify::RecursiveMode::Recursive)
                .expect("watch");
            Box::new(debouncer)
        }
        other => panic!("unknown tool {other}"),
    }
}

/// A temporary directory in memory where there is one (creating and removing 200k files on a
/// disk would measure the disk), else in the default place.
fn scratch_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(dir) = tempfile::tempdir_in(shm)
    {
        return dir;
    }
    tempfile::tempdir().expect("temp dir")
}

/// Prints the watcher's counters when the scenario ends.
struct Reporting(Watcher);

impl Drop for Reporting {
    fn drop(&mut self) {
        eprintln!("ward-watch stats: {:?}", self.0.stats());
    }
}

/// A rescan resolved against an empty picture: every file now in the subtree.
fn walk_files(dir: &Path, tx: &crossbeam_channel::Sender<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            walk_files(&e.path(), tx);
        } else {
            let _ = tx.send(e.path());
        }
    }
}

fn peak_rss_mb() -> f64 {
    ward_sys::ProcStatus::read(std::process::id())
        .ok()
        .and_then(|status| status.kib("VmHWM"))
        .map_or(f64::NAN, |kib| kib as f64 / 1024.0)
}

//! The sampler: a thread that reads the keeper's and the server's RSS every second and
//! `ward status` every other second, and prints the progress line. What it gathers is judged by
//! `verdict.rs`, not here.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::check::RssSample;
use super::daemon::{self, Ward};
use super::workload::lock;

/// What the sampler thread gathers.
#[derive(Debug, Default)]
pub struct Samples {
    /// The keeper's RSS, every second.
    pub keeper: Mutex<Vec<RssSample>>,
    /// The server's RSS, every second.
    pub server: Mutex<Vec<RssSample>>,
    /// The last `ward status` that answered while running.
    status: Mutex<Option<Value>>,
    /// How many times `ward status` did not answer, or not as running.
    pub status_failures: AtomicU64,
    /// The most jobs seen queued at once.
    pub peak_queued: AtomicU64,
    /// What the run is doing, for the progress line.
    phase: Mutex<String>,
}

impl Samples {
    /// Says what the run is doing now, in the progress line.
    pub fn set_phase(&self, phase: &str) {
        *lock(&self.phase) = phase.to_owned();
    }
}

/// Every second: the keeper's and the server's RSS (pids from the state files, so it works while
/// the server is stopped); every other second `ward status`; and the progress line. Until `stop`.
pub fn run(ward: &Ward, samples: &Samples, stop: &AtomicBool, started: Instant, total: f64) {
    let mut tick = 0u64;
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    while !stop.load(Ordering::Relaxed) {
        let t_s = started.elapsed().as_secs_f64();
        let read = |pid: Option<u32>| {
            pid.and_then(|pid| {
                daemon::rss_kib(pid).map(|(rss_kib, hwm_kib)| RssSample {
                    t_s,
                    pid,
                    rss_kib,
                    hwm_kib,
                })
            })
        };
        if let Some(s) = read(ward.keeper_pid()) {
            lock(&samples.keeper).push(s);
        }
        if let Some(s) = read(ward.server_pid()) {
            lock(&samples.server).push(s);
        }
        if tick.is_multiple_of(2) {
            match ward.status() {
                Some(v) if v["state"] == "running" => {
                    let queued = v["queue"]["queued"].as_u64().unwrap_or(0);
                    samples.peak_queued.fetch_max(queued, Ordering::Relaxed);
                    *lock(&samples.status) = Some(v);
                }
                _ => {
                    samples.status_failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        let line = progress_line(samples, t_s, total);
        if tty {
            eprint!("\r{line:<110}");
        } else if tick.is_multiple_of(10) {
            eprintln!("{line}");
        }
        tick += 1;
        let next = started + Duration::from_secs(tick);
        while Instant::now() < next && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn progress_line(samples: &Samples, t_s: f64, total: f64) -> String {
    let status = lock(&samples.status).clone().unwrap_or(Value::Null);
    let q = &status["queue"];
    let mib = |v: Option<&RssSample>| v.map_or(0.0, |s| s.rss_kib as f64 / 1024.0);
    format!(
        "[{t_s:>5.0}s/{total:.0}s] jobs {} done, {} failed, {} queued | rss keeper {:.1} MiB, server {:.1} MiB | {}",
        q["completed"].as_u64().unwrap_or(0),
        q["failed"].as_u64().unwrap_or(0),
        q["queued"].as_u64().unwrap_or(0),
        mib(lock(&samples.keeper).last()),
        mib(lock(&samples.server).last()),
        lock(&samples.phase),
    )
}

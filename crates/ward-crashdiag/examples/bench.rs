//! The heartbeat's idle cost: CPU time and wakeups per second of an idle process with crash
//! capture installed, with the heartbeat off, at ward's 1 s interval, and at a 10 ms stress
//! interval that makes the cost of one beat measurable. The three run side by side as child
//! processes of this example, in the same run; each measures itself with `getrusage` after
//! `install` returns, so start-up is not counted.
//!
//! Run with `cargo xtask bench --only crashdiag`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ward_crashdiag::{CaptureConfig, install};

const CHILD_VAR: &str = "WARD_CRASHDIAG_BENCH_CHILD";
const SECONDS: u64 = 30;

/// (label, heartbeat interval) for each variant.
const VARIANTS: [(&str, Option<Duration>); 3] = [
    ("no heartbeat", None),
    ("heartbeat every 1 s", Some(Duration::from_secs(1))),
    ("heartbeat every 10 ms", Some(Duration::from_millis(10))),
];

/// CPU time and voluntary context switches (a thread going to sleep: one per wakeup) so far.
fn usage() -> (Duration, u64) {
    // SAFETY: zeroed rusage is valid to overwrite; RUSAGE_SELF always succeeds.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid out pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    (tv(u.ru_utime) + tv(u.ru_stime), u.ru_nvcsw as u64)
}

fn child(index: usize, dir: &Path) {
    let (_, interval) = VARIANTS[index];
    let mut config = CaptureConfig::new("bench", dir.join(format!("crash-{index}")));
    if let Some(interval) = interval {
        config = config.heartbeat(
            dir.join(format!("heartbeat-{index}")),
            interval,
            Some(Duration::from_secs(60)),
        );
    }
    let guard = install(config).expect("installing crash capture");
    let (cpu0, switches0) = usage();
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(SECONDS));
    let (cpu1, switches1) = usage();
    let elapsed = start.elapsed();
    drop(guard);
    println!(
        "{} {} {}",
        (cpu1 - cpu0).as_nanos(),
        switches1 - switches0,
        elapsed.as_nanos()
    );
}

fn main() {
    if let Ok(index) = std::env::var(CHILD_VAR) {
        let dir = std::env::var("WARD_CRASHDIAG_BENCH_DIR").expect("bench dir");
        child(index.parse().expect("variant index"), Path::new(&dir));
        return;
    }
    let dir = tempfile::tempdir().expect("temporary directory");
    let exe = std::env::current_exe().expect("current_exe");
    println!(
        "crashdiag: idle cost of the heartbeat, {SECONDS} s per variant, variants side by side"
    );
    let children: Vec<_> = (0..VARIANTS.len())
        .map(|i| {
            Command::new(&exe)
                .env(CHILD_VAR, i.to_string())
                .env("WARD_CRASHDIAG_BENCH_DIR", dir.path())
                .stdout(Stdio::piped())
                .spawn()
                .expect("spawning a variant")
        })
        .collect();
    let mut rows = Vec::new();
    for (i, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().expect("waiting for a variant");
        assert!(out.status.success(), "variant {i} failed: {}", out.status);
        let text = String::from_utf8_lossy(&out.stdout);
        let nums: Vec<f64> = text
            .split_whitespace()
            .map(|n| n.parse().expect("a number"))
            .collect();
        let secs = nums[2] / 1e9;
        rows.push((nums[0] / 1e3 / secs, nums[1] / secs));
    }

    println!(
        "{:<24} {:>12} {:>12} {:>14}",
        "variant", "CPU µs/s", "wakeups/s", "CPU per beat"
    );
    for (i, (label, interval)) in VARIANTS.iter().enumerate() {
        let (cpu, wakeups) = rows[i];
        let per_beat = match interval {
            Some(iv) => format!("{:.1} µs", (cpu - rows[0].0) * iv.as_secs_f64()),
            None => "-".into(),
        };
        println!("{label:<24} {cpu:>12.2} {wakeups:>12.2} {per_beat:>14}");
    }
    let (off_cpu, off_wake) = rows[0];
    let (on_cpu, on_wake) = rows[1];
    println!(
        "1 s heartbeat vs none: CPU {:+.2} µs/s ({:.4} % of one core), wakeups {:+.2}/s; \
         ratio CPU {:.2}x, wakeups {:.2}x",
        on_cpu - off_cpu,
        (on_cpu - off_cpu) / 1e4,
        on_wake - off_wake,
        on_cpu / off_cpu.max(f64::MIN_POSITIVE),
        on_wake / off_wake.max(f64::MIN_POSITIVE),
    );
}

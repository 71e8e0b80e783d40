//! Benchmark: child crash → replacement running, through ward's `Supervisor` at zero backoff,
//! against a plain `std::process` spawn + wait loop, in the same run.
//!
//! A "crash" is a SIGKILL sent to the running child (`sleep 1000`), timed from just before the
//! `kill`; "running" is the replacement's `Started` event, which is emitted once `exec` has
//! succeeded. The baseline does the same with `Command::spawn`, `kill` and `Child::wait`.
//!
//! Run with `cargo xtask bench --only supervisor`.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ward_supervisor::{ChildSpec, EventKind, Line, Output, RestartPolicy, Supervisor};

const ROUNDS: usize = 10;
const PER_ROUND: usize = 100;
const TARGET_MEDIAN: Duration = Duration::from_millis(5);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut ward = Vec::new();
    let mut ward_captured = Vec::new();
    let mut baseline = Vec::new();
    let mut forked = Vec::new();
    // Interleaved rounds, so the three share whatever else the machine is doing.
    for _ in 0..ROUNDS {
        ward.extend(supervised(ChildSpec::new("sleep").arg("1000"), PER_ROUND)?);
        let captured = ChildSpec::new("sleep")
            .arg("1000")
            .output(Output::Capture(std::sync::Arc::new(|_: &Line| {})));
        ward_captured.extend(supervised(captured, PER_ROUND)?);
        baseline.extend(plain(PER_ROUND, false)?);
        forked.extend(plain(PER_ROUND, true)?);
    }
    let base = Stats::of(&mut baseline);
    println!(
        "crash (SIGKILL) → replacement running, {} samples each",
        ROUNDS * PER_ROUND
    );
    println!(
        "{:<34} {:>10} {:>10} {:>10} {:>12}",
        "", "median", "p99", "max", "median/base"
    );
    for (name, samples) in [
        ("ward Supervisor, zero backoff", &mut ward),
        ("ward Supervisor, output captured", &mut ward_captured),
        ("baseline std spawn+kill+wait", &mut baseline),
        ("baseline + a pre_exec hook (fork)", &mut forked),
    ] {
        let stats = Stats::of(samples);
        println!(
            "{:<34} {:>10.3?} {:>10.3?} {:>10.3?} {:>11.2}x",
            name,
            stats.median,
            stats.p99,
            stats.max,
            stats.median.as_secs_f64() / base.median.as_secs_f64()
        );
    }
    let ours = Stats::of(&mut ward);
    println!(
        "target: median ≤ {TARGET_MEDIAN:?}: {}",
        if ours.median <= TARGET_MEDIAN {
            "met"
        } else {
            "NOT met"
        }
    );
    Ok(())
}

/// Kills the supervised child `n` times; returns each kill → next `Started` latency.
fn supervised(spec: ChildSpec, n: usize) -> Result<Vec<Duration>, Box<dyn std::error::Error>> {
    let (tx, rx) = crossbeam_channel::unbounded();
    // Timestamped on the supervisor thread, as the event happens.
    let supervisor = Supervisor::new(move |event| {
        if let EventKind::Started { pid } = event.kind {
            let _ = tx.send((Instant::now(), pid));
        }
    })?;
    supervisor.add(spec, RestartPolicy::immediate())?;
    let (_, mut pid) = rx.recv_timeout(Duration::from_secs(10))?;
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let crash = Instant::now();
        // SAFETY: kill has no memory-safety preconditions; the pid is the supervisor's running
        // child, which cannot be reaped (and its pid reused) before this signal kills it.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        let (started, next) = rx.recv_timeout(Duration::from_secs(10))?;
        samples.push(started - crash);
        pid = next;
    }
    supervisor.shutdown()?;
    Ok(samples)
}

/// The same loop with nothing but `std::process`. With `hook`, a `pre_exec` closure (as ward
/// needs for the parent-death signal) makes std fork instead of using `posix_spawn`.
fn plain(n: usize, hook: bool) -> Result<Vec<Duration>, Box<dyn std::error::Error>> {
    let spawn = || {
        let mut cmd = Command::new("sleep");
        cmd.arg("1000").stdin(Stdio::null());
        if hook {
            // SAFETY: the hook does nothing, which is async-signal-safe.
            unsafe { cmd.pre_exec(|| Ok(())) };
        }
        cmd.spawn()
    };
    let mut child = spawn()?;
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let crash = Instant::now();
        child.kill()?;
        child.wait()?;
        child = spawn()?;
        samples.push(crash.elapsed());
    }
    child.kill()?;
    child.wait()?;
    Ok(samples)
}

struct Stats {
    median: Duration,
    p99: Duration,
    max: Duration,
}

impl Stats {
    fn of(samples: &mut [Duration]) -> Stats {
        samples.sort_unstable();
        let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
        Stats {
            median: at(0.5),
            p99: at(0.99),
            max: at(1.0),
        }
    }
}

//! The `subscribe` part (#24): a change → its line on a subscriber (`ward changes --follow`),
//! against ward's own change → job started on the same writes; and, in `scrape`, the time of a
//! `/metrics` scrape with 100 triggers.
//!
//! Where a line's time goes: the manifest records a change when its job is queued (a `Queued`
//! update, numbered then), and its writer commits what gathered `FLUSH_EVERY` (50 ms, ward-server's
//! `tracker/writer.rs`) after the oldest update; a subscriber wakes on that commit and reads the
//! change from the manifest. So a line should come about 50 ms after its job was queued, whatever
//! the job does. A second round with a job that runs 100 ms tells whether the line waits for
//! the job's end: its job started → line stays near 50 ms if it does not, near 150 ms if it does.

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::sync::mpsc;
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::super::procs::{LogTail, now_ns};
use super::super::report::Row;
use super::{Owned, Tools, Ward, percentile, scrape, stamp_of};

/// The debounce of both rounds, the latency part's first window.
const WINDOW_MS: u64 = 50;

/// How long the slow round's job runs after its stamp.
const SLOW_JOB_MS: u64 = 100;

/// First writes left out: the follower subscribes meanwhile.
const WARMUP: usize = 5;

/// The bound of every wait for a job or a line.
const LIMIT: Duration = Duration::from_secs(5);

/// Median and 99th percentile.
pub(super) fn p50_p99(mut values: Vec<f64>) -> Vec<f64> {
    values.sort_by(f64::total_cmp);
    vec![percentile(&values, 0.5), percentile(&values, 0.99)]
}

/// Per write, in ms: write → job started, write → the subscriber's line.
#[derive(Debug, Default)]
struct Samples {
    job: Vec<f64>,
    line: Vec<f64>,
}

impl Samples {
    /// Job started → line of each write.
    fn lag(&self) -> Vec<f64> {
        self.line
            .iter()
            .zip(&self.job)
            .map(|(l, j)| l - j)
            .collect()
    }
}

/// `ward changes --follow`, each line's path and the monotonic ns it was read at, from a thread.
struct Follower {
    _child: Owned,
    lines: mpsc::Receiver<(u64, String)>,
}

impl Follower {
    fn start(ward: &Ward) -> Result<Follower> {
        let mut cmd = ward.cmd(&["changes", "--follow"]);
        let mut child = Owned::start(cmd.stdout(Stdio::piped()).stderr(Stdio::null()))?;
        let stdout = child.0.stdout.take().context("no stdout of ward changes")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let at = now_ns();
                let Ok(line) = line else { return };
                let path = serde_json::from_str::<serde_json::Value>(&line)
                    .ok()
                    .and_then(|v| Some(v["path"].as_str()?.to_owned()))
                    .unwrap_or_default();
                if tx.send((at, path)).is_err() {
                    return;
                }
            }
        });
        Ok(Follower {
            _child: child,
            lines,
        })
    }
}

/// Writes `n` single new files one at a time under `tree`, each after `pause` and after the
/// previous one's job stamp and line are in, and returns both times of each.
fn samples(
    tree: &Path,
    log: &Path,
    follower: &Follower,
    n: usize,
    pause: Duration,
) -> Result<Samples> {
    let mut tail = LogTail::new(log);
    let mut out = Samples::default();
    // Stamps and lines read but not yet matched to their write, by path.
    let mut stamps: HashMap<String, u64> = HashMap::new();
    let mut lines: HashMap<String, u64> = HashMap::new();
    for i in 0..WARMUP + n {
        sleep(pause);
        let path = tree.join(format!("sub{i}"));
        let key = path.to_string_lossy().into_owned();
        let t0 = now_ns();
        fs::write(&path, "x")?;
        let deadline = Instant::now() + LIMIT;
        let (job, line) = loop {
            for l in tail.lines() {
                if let (Some(ns), Some((_, p))) = (stamp_of(&l), l.split_once(' ')) {
                    stamps.insert(p.to_owned(), ns);
                }
            }
            while let Ok((ns, p)) = follower.lines.try_recv() {
                lines.insert(p, ns);
            }
            if let (Some(&job), Some(&line)) = (stamps.get(&key), lines.get(&key)) {
                break (job, line);
            }
            if Instant::now() > deadline {
                bail!(
                    "write {i}: job started {}, line {} within {LIMIT:?}",
                    if stamps.contains_key(&key) {
                        "yes"
                    } else {
                        "no"
                    },
                    if lines.contains_key(&key) {
                        "yes"
                    } else {
                        "no"
                    },
                );
            }
            sleep(Duration::from_micros(200));
        };
        if i >= WARMUP {
            out.job.push(job.saturating_sub(t0) as f64 / 1e6);
            out.line.push(line.saturating_sub(t0) as f64 / 1e6);
        }
    }
    Ok(out)
}

/// One round: ward with one exec trigger running `job` (which stamps the path first thing), a
/// follower, `n` writes.
fn round(tools: &Tools, name: &str, job: &str, n: usize, pause: Duration) -> Result<Samples> {
    let dir = tools.dir(name)?;
    let log = dir.join("stamps");
    let job = job.replace("{log}", &format!("{:?}", log.to_str().unwrap_or_default()));
    let ward = Ward::new(
        tools,
        &dir,
        &format!(
            "debounce_ms = {WINDOW_MS}\n\n[[trigger]]\nname = \"stamp\"\nglob = [\"*\"]\nexec = {job}\n"
        ),
    )?;
    ward.start()?;
    let follower = Follower::start(&ward)?;
    let samples = samples(&dir.join("tree"), &log, &follower, n, pause);
    drop(follower);
    ward.stop()?;
    samples
}

fn ms(values: &[f64]) -> String {
    format!("{:.2}/{:.2} ms", values[0], values[1])
}

/// Measures change → subscriber line against change → job started, then the scrape, and adds
/// their rows.
pub(crate) fn run(tools: &Tools, rows: &mut Vec<Row>) -> Result<()> {
    let n = if tools.quick { 50 } else { 200 };
    println!(
        "subscribe: {n} single writes, ward (exec trigger, {WINDOW_MS} ms window) and `ward changes --follow` ..."
    );
    let fast = round(
        tools,
        "subscribe",
        &format!("[{:?}, \"stamp\", {{log}}, \"{{path}}\"]", tools.probe()),
        n,
        Duration::from_millis(15),
    )?;
    let slow_n = if tools.quick { 20 } else { 50 };
    println!(
        "subscribe: {slow_n} single writes, the job running {SLOW_JOB_MS} ms after its stamp ..."
    );
    // After the slow job's end its outcome is committed 50 ms later: the next write waits for
    // that, so that its queueing does not join that commit's group.
    let slow = round(
        tools,
        "subscribe-slow",
        &format!(
            "[\"/bin/sh\", \"-c\", \"{} stamp \\\"$0\\\" \\\"$1\\\" && sleep {}\", {{log}}, \"{{path}}\"]",
            tools.probe(),
            SLOW_JOB_MS as f64 / 1e3
        ),
        slow_n,
        Duration::from_millis(SLOW_JOB_MS + 100),
    )?;
    let (job, line, lag) = (
        p50_p99(fast.job.clone()),
        p50_p99(fast.line.clone()),
        p50_p99(fast.lag()),
    );
    let (slow_job, slow_line, slow_lag) = (
        p50_p99(slow.job.clone()),
        p50_p99(slow.line.clone()),
        p50_p99(slow.lag()),
    );
    println!(
        "subscribe: write → job started {}, write → line {}, job started → line {} (p50/p99)",
        ms(&job),
        ms(&line),
        ms(&lag)
    );
    println!(
        "subscribe: a {SLOW_JOB_MS} ms job: write → job started {}, write → line {}, job started → line {} (p50/p99)",
        ms(&slow_job),
        ms(&slow_line),
        ms(&slow_lag)
    );
    rows.push(
        Row::new(
            "subscribe",
            format!("write → `ward changes --follow` line p50/p99 of {n}, {WINDOW_MS} ms window"),
            "ms",
        )
        .ward(line)
        .anchor("write → ward's job started, same writes", job),
    );
    rows.push(
        Row::new(
            "subscribe",
            format!("write → line p50/p99 of {slow_n}, the job running {SLOW_JOB_MS} ms"),
            "ms",
        )
        .ward(slow_line)
        .anchor("write → ward's job started, same writes", slow_job),
    );
    scrape::run(tools, rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_line_minus_job_per_write() {
        let s = Samples {
            job: vec![51.0, 52.0],
            line: vec![101.5, 103.0],
        };
        assert_eq!(s.lag(), vec![50.5, 51.0]);
        assert_eq!(p50_p99(vec![3.0, 1.0, 2.0]), vec![2.0, 3.0]);
    }
}

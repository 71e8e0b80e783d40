//! The `latency` part: write → job started, p50/p95/p99 over single writes, of ward (an exec
//! trigger) at a 50 ms and a 1 ms window, beside notify-debouncer-full and watchexec at the same
//! windows.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use super::super::procs::{LogTail, now_ns};
use super::super::report::Row;
use super::{Owned, Tools, Ward, percentile, stamp_of, watchexec_command};

fn p50_95_99(mut samples: Vec<f64>) -> Vec<f64> {
    samples.sort_by(f64::total_cmp);
    vec![
        percentile(&samples, 0.5),
        percentile(&samples, 0.95),
        percentile(&samples, 0.99),
    ]
}

const LATENCY_SAMPLES: usize = 200;
const LATENCY_WARMUP: usize = 10;

/// Writes single new files one at a time under `tree` and returns, per write, the milliseconds
/// from just before the write to the first job stamp in `log` taken after it.
fn latency_samples(tree: &Path, log: &Path) -> Result<Vec<f64>> {
    let mut tail = LogTail::new(log);
    let mut samples = Vec::with_capacity(LATENCY_SAMPLES);
    for i in 0..LATENCY_WARMUP + LATENCY_SAMPLES {
        // Let any straggling run of the previous sample end before the next write.
        sleep(Duration::from_millis(15));
        tail.lines();
        let t0 = now_ns();
        fs::write(tree.join(format!("lat{i}")), "x")?;
        let deadline = Instant::now() + Duration::from_secs(5);
        let started = loop {
            if let Some(s) = tail
                .lines()
                .iter()
                .filter_map(|l| stamp_of(l))
                .find(|&s| s >= t0)
            {
                break s;
            }
            if Instant::now() > deadline {
                bail!("no job started within 5 s of write {i}");
            }
            sleep(Duration::from_micros(200));
        };
        if i >= LATENCY_WARMUP {
            samples.push((started - t0) as f64 / 1e6);
        }
    }
    Ok(samples)
}

fn ward_latency(tools: &Tools, window_ms: u64) -> Result<Vec<f64>> {
    let dir = tools.dir(&format!("latency-ward-{window_ms}"))?;
    let log = dir.join("stamps");
    let ward = Ward::new(
        tools,
        &dir,
        &format!(
            "debounce_ms = {window_ms}\n\n[[trigger]]\nname = \"stamp\"\nglob = [\"*\"]\nexec = [{:?}, \"stamp\", {:?}, \"{{path}}\"]\n",
            tools.probe(),
            log.to_str().unwrap_or_default()
        ),
    )?;
    ward.start()?;
    let samples = latency_samples(&dir.join("tree"), &log);
    ward.stop()?;
    samples
}

fn debouncer_latency(tools: &Tools, window_ms: u64) -> Result<Vec<f64>> {
    let dir = tools.dir(&format!("latency-debouncer-{window_ms}"))?;
    let log = dir.join("stamps");
    let _probe = Owned::spawn(
        Command::new(&tools.probe).args([
            "debouncer",
            dir.join("tree").to_str().unwrap_or_default(),
            &window_ms.to_string(),
            "--",
            tools.probe(),
            "stamp",
            log.to_str().unwrap_or_default(),
        ]),
        &dir,
    )?;
    sleep(Duration::from_millis(300));
    latency_samples(&dir.join("tree"), &log)
}

fn watchexec_latency(tools: &Tools, watchexec: &Path, window_ms: u64) -> Result<Vec<f64>> {
    let dir = tools.dir(&format!("latency-watchexec-{window_ms}"))?;
    let log = dir.join("stamps");
    let tree = dir.join("tree");
    let _w = Owned::spawn(
        &mut watchexec_command(
            watchexec,
            &tree,
            window_ms,
            &[],
            &[tools.probe(), "stamp", log.to_str().unwrap_or_default()],
        ),
        &dir,
    )?;
    sleep(Duration::from_millis(500));
    latency_samples(&tree, &log)
}

/// Measures write → job started of ward and its anchors at 50 ms and 1 ms, and adds their rows.
pub(crate) fn run(tools: &Tools, rows: &mut Vec<Row>) -> Result<()> {
    let mut measured = Vec::new();
    for window in [50, 1] {
        println!("latency: ward at {window} ms ...");
        let ward = p50_95_99(ward_latency(tools, window)?);
        println!("latency: notify-debouncer-full at {window} ms ...");
        let debouncer = p50_95_99(debouncer_latency(tools, window)?);
        let watchexec = match &tools.watchexec {
            Some(w) => {
                println!("latency: watchexec at {window} ms ...");
                match watchexec_latency(tools, w, window) {
                    Ok(s) => Some(p50_95_99(s)),
                    Err(e) => {
                        eprintln!("latency: watchexec at {window} ms failed: {e:#}");
                        None
                    }
                }
            }
            None => None,
        };
        measured.push((window, ward, debouncer, watchexec));
    }
    let measure = |w: u64| format!("write → job started p50/p95/p99, {w} ms window");
    for (window, ward, debouncer, watchexec) in measured {
        let bound = window as f64 + 2.0;
        rows.push(
            Row::new("latency", measure(window), "ms")
                .ward(ward.clone())
                .anchor(
                    format!("notify-debouncer-full {window} ms + spawn"),
                    debouncer,
                )
                .target(format!("p50 ≤ {bound} ms"), ward[0] <= bound),
        );
        if let Some(wx) = watchexec {
            let mut row = Row::new("latency", measure(window), "ms")
                .ward(ward.clone())
                .anchor(format!("watchexec {window} ms"), wx.clone());
            if window == 1 {
                row = row.target("p50 ≤ watchexec's", ward[0] <= wx[0]);
            }
            rows.push(row);
        }
    }
    if tools.watchexec.is_none() {
        rows.push(Row::new("latency", "watchexec: not installed, skipped", ""));
    }
    Ok(())
}

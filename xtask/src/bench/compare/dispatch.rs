//! The `dispatch` part: what one job costs ward with a backlog and one worker, exec jobs against
//! a plain spawn+wait loop and worker requests against a raw pipe to the same worker, measured
//! back to back in alternating rounds.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Result, bail};

use super::super::report::Row;
use super::{Tools, Ward, percentile, stamp_of, wait_lines};

/// Median gap between consecutive stamps (first field) in `log`, in microseconds.
fn median_gap_us(log: &Path) -> Result<f64> {
    let text = fs::read_to_string(log)?;
    let mut stamps: Vec<u64> = text.lines().filter_map(stamp_of).collect();
    stamps.sort_unstable();
    let mut gaps: Vec<f64> = stamps
        .windows(2)
        .map(|w| (w[1] - w[0]) as f64 / 1e3)
        .collect();
    gaps.sort_by(f64::total_cmp);
    Ok(percentile(&gaps, 0.5))
}

/// Rounds of each dispatch measurement. Each round measures ward and its anchor back to back, in
/// alternating order, so that a change of the machine's load (other builds and benchmarks share
/// its two cores) hits both alike; each figure is the median of its rounds' medians.
const DISPATCH_ROUNDS: usize = 7;

/// Exec: one worker and a backlog of jobs; the gap between consecutive job starts is the cost of
/// one job (spawn, run, exit, reap, bookkeeping). Returns the median gap in µs.
fn ward_exec_round(tools: &Tools, jobs: usize, round: usize) -> Result<f64> {
    let dir = tools.dir(&format!("dispatch-exec-{round}"))?;
    let log = dir.join("stamps");
    let ward = Ward::new(
        tools,
        &dir,
        &format!(
            "debounce_ms = 1\n\n[jobs]\nworkers = 1\n\n[[trigger]]\nname = \"stamp\"\nglob = [\"*\"]\nexec = [{:?}, \"stamp\", {:?}, \"{{path}}\"]\n",
            tools.probe(),
            log.to_str().unwrap_or_default()
        ),
    )?;
    ward.start()?;
    for i in 0..jobs {
        fs::write(dir.join(format!("tree/f{i}")), "x")?;
    }
    wait_lines(&log, jobs, Duration::from_secs(120))?;
    ward.stop()?;
    median_gap_us(&log)
}

/// The same job in a plain spawn+wait loop.
fn plain_exec_round(tools: &Tools, jobs: usize, round: usize) -> Result<f64> {
    let dir = tools.dir(&format!("dispatch-plain-{round}"))?;
    let log = dir.join("stamps");
    let status = Command::new(&tools.probe)
        .args([
            "spawn-loop",
            &jobs.to_string(),
            "--",
            tools.probe(),
            "stamp",
            log.to_str().unwrap_or_default(),
        ])
        .status()?;
    if !status.success() {
        bail!("spawn-loop failed: {status}");
    }
    median_gap_us(&log)
}

/// Worker: the gap between consecutive requests seen by one persistent worker under a backlog.
fn ward_worker_round(tools: &Tools, jobs: usize, round: usize) -> Result<f64> {
    let dir = tools.dir(&format!("dispatch-worker-{round}"))?;
    let log = dir.join("worker-log");
    let ward = Ward::new(
        tools,
        &dir,
        &format!(
            "debounce_ms = 1\n\n[jobs]\nworkers = 1\n\n{}",
            tools.record_trigger(&log)
        ),
    )?;
    ward.start()?;
    for i in 0..jobs {
        fs::write(dir.join(format!("tree/f{i}")), "x")?;
    }
    wait_lines(&log, jobs, Duration::from_secs(120))?;
    ward.stop()?;
    median_gap_us(&log)
}

/// The same worker, fed one request at a time over a raw pipe by a release-built client: the
/// same number of requests, each the same bytes ward sends for the same file of `ward_tree`
/// (only the path is in the request; the file need not exist).
///
/// With `same_cpu`, the client and the worker share one CPU. Left to the scheduler, the round
/// trip is bimodal: fast when both ends run on one CPU, several times slower when they run on
/// two and each wake-up has to bring an idle virtual CPU back, and which mode a round gets depends on
/// the machine's other load. Pinned, the anchor is the fast mode every time: stable, and the
/// harder target.
fn raw_pipe_round(
    tools: &Tools,
    jobs: usize,
    round: usize,
    ward_tree: &Path,
    same_cpu: bool,
) -> Result<f64> {
    let dir = tools.dir(&format!("dispatch-pipe-{round}"))?;
    let log = dir.join("worker-log");
    let jobs = jobs.to_string();
    let mut args = vec!["pipe-client", &jobs, ward_tree.to_str().unwrap_or_default()];
    if same_cpu {
        args.push("--same-cpu");
    }
    args.extend([
        "--",
        tools.probe(),
        "worker",
        log.to_str().unwrap_or_default(),
    ]);
    let out = Command::new(&tools.probe).args(args).output()?;
    if !out.status.success() {
        bail!(
            "pipe-client failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    median_gap_us(&log)
}

pub(super) fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    percentile(&values, 0.5)
}

/// Measures exec and worker dispatch in `DISPATCH_ROUNDS` rounds, and adds their rows.
pub(crate) fn run(tools: &Tools, rows: &mut Vec<Row>) -> Result<()> {
    let (exec_jobs, worker_jobs) = if tools.quick {
        (300, 2_000)
    } else {
        (1_000, 5_000)
    };
    // ward exec, plain spawns, ward worker, raw pipe on one CPU, raw pipe left to the scheduler.
    let mut figures: [Vec<f64>; 5] = Default::default();
    for round in 0..DISPATCH_ROUNDS {
        println!(
            "dispatch: round {}/{DISPATCH_ROUNDS}: ward exec ({exec_jobs} jobs) and plain spawns, ward worker ({worker_jobs} jobs) and raw pipe ...",
            round + 1
        );
        // The worker round's tree, whose paths the raw pipe's requests name too.
        let ward_tree = tools.scratch.join(format!("dispatch-worker-{round}/tree"));
        if round % 2 == 0 {
            figures[0].push(ward_exec_round(tools, exec_jobs, round)?);
            figures[1].push(plain_exec_round(tools, exec_jobs, round)?);
            figures[2].push(ward_worker_round(tools, worker_jobs, round)?);
            figures[3].push(raw_pipe_round(tools, worker_jobs, round, &ward_tree, true)?);
        } else {
            figures[1].push(plain_exec_round(tools, exec_jobs, round)?);
            figures[0].push(ward_exec_round(tools, exec_jobs, round)?);
            figures[3].push(raw_pipe_round(tools, worker_jobs, round, &ward_tree, true)?);
            figures[2].push(ward_worker_round(tools, worker_jobs, round)?);
        }
        figures[4].push(raw_pipe_round(
            tools,
            worker_jobs,
            round,
            &ward_tree,
            false,
        )?);
    }
    println!(
        "dispatch: per-round medians (µs): ward exec {:.1?}, plain {:.1?}, ward worker {:.1?}, raw pipe one CPU {:.1?}, raw pipe unpinned {:.1?}",
        figures[0], figures[1], figures[2], figures[3], figures[4]
    );
    let ratios = |ward: &[f64], anchor: &[f64]| {
        median(ward.iter().zip(anchor).map(|(w, a)| w / a).collect())
    };
    println!(
        "dispatch: median of per-round ratios: exec {:.2}×, worker {:.2}× (unpinned pipe {:.2}×)",
        ratios(&figures[0], &figures[1]),
        ratios(&figures[2], &figures[3]),
        ratios(&figures[2], &figures[4])
    );
    let [ward_exec, plain_exec, ward_worker, raw_worker, _] = figures.map(median);
    rows.push(
        Row::new(
            "dispatch",
            "exec job → next exec job, 1 worker, backlog (median of rounds)",
            "µs",
        )
        .ward(vec![ward_exec])
        .anchor("plain fork+exec+wait loop", vec![plain_exec])
        .target("≤ 1.2×", ward_exec <= 1.2 * plain_exec),
    );
    rows.push(
        Row::new(
            "dispatch",
            "worker request → next request, 1 worker, backlog (median of rounds)",
            "µs",
        )
        .ward(vec![ward_worker])
        .anchor(
            "raw pipe round trip, same worker, one CPU",
            vec![raw_worker],
        )
        .target("≤ 2×", ward_worker <= 2.0 * raw_worker),
    );
    Ok(())
}

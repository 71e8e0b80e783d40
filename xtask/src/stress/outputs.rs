//! What a run leaves behind: `stress.json`, `stress.svg` and a copy of ward's log in `--out`, and
//! with `--keep` the temporary directory marked as kept, with the harness's record of changes
//! and a copy of a state directory that was a mount of its own. Not the verdict itself.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use serde_json::{Value, json};

use super::check::{self, Line, OpKind, RssSample, WriteOp};
use super::verdict::Evidence;
use super::workload::lock;
use super::{host, plot};

/// What marks a temporary directory kept with `--keep`: it is left for whoever asked for it.
pub const KEPT: &str = "KEPT";

/// Writes the report, the plot and ward's log into `--out`, and says where they are (`dir`: the
/// run's temporary directory).
///
/// # Errors
/// If `--out` cannot be created or written.
pub fn write(e: &Evidence<'_>, lines: &[Line], dir: &Path) -> anyhow::Result<()> {
    let out = &e.opts.out;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let lat = check::latencies(e.writes, &e.ledger.entries);
    let keeper = lock(&e.samples.keeper).clone();
    let server = lock(&e.samples.server).clone();
    let windows: Vec<(f64, f64, String)> = e
        .injected
        .iter()
        .map(|f| {
            let start = e.since_start(f.start_ms);
            (
                start,
                start + (f.end_ms - f.start_ms) as f64 / 1000.0,
                f.label.clone(),
            )
        })
        .collect();
    let at_s = |ms: u64| (e.since_start(ms) * 10.0).round() / 10.0;
    // A report that does not say when it was written is in stress.json, not on the plot.
    let deaths: Vec<plot::Death> = e
        .reports
        .list
        .iter()
        .filter_map(|r| {
            Some(plot::Death {
                t_s: e.since_start(r.written_ms?),
                cause: r.cause.clone(),
                who: format!("{} pid {}", e.short(&r.role), r.pid),
            })
        })
        .collect();
    let svg = plot::svg(
        &keeper,
        &server,
        &windows,
        &deaths,
        &lat.iter().map(|(_, ms)| *ms).collect::<Vec<_>>(),
    );
    std::fs::write(out.join("stress.svg"), svg)?;
    let rss = |s: &[RssSample]| -> Vec<Value> {
        s.iter()
            .map(|s| json!([(s.t_s * 10.0).round() / 10.0, s.pid, s.rss_kib]))
            .collect()
    };
    let report = json!({
        "options": {
            "quick": e.opts.quick,
            "duration_s": e.opts.duration.as_secs_f64(),
            "rate": e.opts.rate,
            "faults": e.opts.faults.iter().map(|k| k.name()).collect::<Vec<_>>(),
            "seed": e.opts.seed,
        },
        "pass": lines.iter().all(|l| l.pass),
        "verdict": lines.iter().map(|l| json!({
            "check": l.check, "pass": l.pass, "figure": l.figure, "details": l.details,
        })).collect::<Vec<_>>(),
        "faults": e.injected.iter().map(|f| json!({
            "label": f.label, "at_s": (f.at_s * 10.0).round() / 10.0,
            "window_ms": f.end_ms - f.start_ms, "note": f.note, "problems": f.problems,
            "expected_deaths": f.expected.iter().map(|x| json!({
                "role_contains": x.role_contains, "pid": x.pid, "causes": x.causes,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "reports": e.reports.list.iter().map(|r| json!({
            "file": r.file, "pid": r.pid, "role": r.role, "cause": r.cause,
            "at_s": r.written_ms.map(at_s),
        })).collect::<Vec<_>>(),
        "changes_made": e.writes.len(),
        "ledger_entries": e.ledger.entries.len(),
        "latency_ms": latency_summary(&lat),
        "rss_kib": { "columns": ["t_s", "pid", "rss_kib"], "keeper": rss(&keeper), "server": rss(&server) },
    });
    std::fs::write(out.join("stress.json"), serde_json::to_vec_pretty(&report)?)?;
    // ward's own account, for whoever reads a FAIL.
    let log = e.ward.state.join("ward.log");
    if log.exists() {
        std::fs::copy(&log, out.join("ward.log"))?;
    }
    println!(
        "stress: report {}, plot {}, ward's log {}{}",
        out.join("stress.json").display(),
        out.join("stress.svg").display(),
        out.join("ward.log").display(),
        if e.opts.keep {
            String::new()
        } else {
            format!(" ({} is removed)", dir.display())
        }
    );
    Ok(())
}

/// Marks the run's temporary directory `dir` as kept, with the harness's record of changes
/// (`writes`) in `out/writes.tsv` and a copy of the `state` directory if it is a mount point.
///
/// # Errors
/// If one of them cannot be written.
pub fn keep(dir: &Path, writes: &[WriteOp], state: &Path) -> anyhow::Result<()> {
    let mut tsv = String::new();
    for w in writes {
        let what = match w.kind {
            OpKind::Wrote(h) => format!("wrote {h:016x}"),
            OpKind::Removed => "removed".to_owned(),
        };
        tsv.push_str(&format!("{}\t{}\t{what}\t{}\n", w.t_ms, w.workload, w.path));
    }
    std::fs::write(dir.join("out/writes.tsv"), tsv)?;
    // A state directory on a tmpfs of its own goes with its unmount: keep a copy.
    if host::is_mount_point(state) {
        copy_tree(state, &dir.join("out/state"))?;
    }
    std::fs::write(dir.join(KEPT), "kept by cargo xtask stress --keep\n")?;
    println!(
        "stress: kept {} (out/ledger is the workers' account, out/writes.tsv the harness's)",
        dir.display()
    );
    Ok(())
}

/// Copies the directory `from` to `to`, files and directories only.
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name()))?;
        }
    }
    Ok(())
}

/// Per workload: how many, p50, p99, max, and the log2-bucket histogram the plot draws.
fn latency_summary(lat: &[(&'static str, u64)]) -> Value {
    let mut by: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for (w, ms) in lat {
        by.entry(w).or_default().push(*ms);
        by.entry("all").or_default().push(*ms);
    }
    let mut out = serde_json::Map::new();
    for (w, mut v) in by {
        v.sort_unstable();
        out.insert(
            w.to_owned(),
            json!({
                "n": v.len(),
                "p50": check::percentile(&v, 0.5),
                "p99": check::percentile(&v, 0.99),
                "max": v.last(),
                "log2_buckets": plot::buckets(&v),
            }),
        );
    }
    Value::Object(out)
}

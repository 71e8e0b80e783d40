//! The `idle` part: CPU, wakeups (context switches over all threads) and RSS of ward's keeper,
//! server and an idle worker over `--idle-secs`, beside watchexec and the notify-debouncer-full
//! probe doing nothing either.

use std::fs;
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::super::procs;
use super::super::report::Row;
use super::{Owned, Tools, Ward, wait_lines, watchexec_command};

/// What one process did over the idle stretch.
#[derive(Debug, Clone)]
struct Idle {
    name: String,
    cpu_ms: f64,
    wakeups: f64,
    rss: f64,
    anon: f64,
}

/// Measures ward's processes and the anchors at rest for `--idle-secs`, and adds their rows.
pub(crate) fn run(tools: &Tools, rows: &mut Vec<Row>) -> Result<()> {
    let secs = tools.idle_secs;
    println!("idle: keeper, server, worker, watchexec and the debouncer probe for {secs} s ...");
    let (ward, keeper, server, worker) = ward_at_rest(tools)?;
    let (debouncer, watchexec) = anchors_at_rest(tools)?;
    // Let start-up settle before measuring.
    sleep(Duration::from_secs(2));
    let mut subjects: Vec<(String, u32)> = vec![
        ("ward keeper".into(), keeper),
        ("ward server".into(), server),
        ("ward idle worker (ward-bench-probe)".into(), worker),
        ("notify-debouncer-full probe".into(), debouncer.pid()),
    ];
    if let Some(w) = &watchexec {
        subjects.push(("watchexec".into(), w.pid()));
    }
    let figures = measure(&subjects, secs);
    ward.stop()?;
    drop(watchexec);
    drop(debouncer);
    push_rows(&figures, secs, rows);
    Ok(())
}

/// ward started, with one job done so that a worker exists and is idle: the daemon, and the
/// pids of its keeper, its server and that worker.
fn ward_at_rest(tools: &Tools) -> Result<(Ward, u32, u32, u32)> {
    let dir = tools.dir("idle-ward")?;
    let log = dir.join("worker-log");
    let ward = Ward::new(tools, &dir, &format!("\n{}", tools.record_trigger(&log)))?;
    ward.start()?;
    fs::write(dir.join("tree/f0"), "x")?;
    wait_lines(&log, 1, Duration::from_secs(10))?;
    let (keeper, server) = ward.pids()?;
    let probe_name = tools.probe.to_string_lossy().into_owned();
    let worker = procs::children(server)
        .into_iter()
        .find(|&p| procs::cmdline(p).contains(&probe_name))
        .context("no idle worker among the server's children")?;
    Ok((ward, keeper, server, worker))
}

/// The anchors started, watching trees of their own at a 50 ms window: the notify-debouncer-full
/// probe, and watchexec when it is installed.
fn anchors_at_rest(tools: &Tools) -> Result<(Owned, Option<Owned>)> {
    let other = tools.dir("idle-debouncer")?;
    let stamp_log = other.join("stamps");
    let debouncer = Owned::spawn(
        Command::new(&tools.probe).args([
            "debouncer",
            other.join("tree").to_str().unwrap_or_default(),
            "50",
            "--",
            tools.probe(),
            "stamp",
            stamp_log.to_str().unwrap_or_default(),
        ]),
        &other,
    )?;
    let other = tools.dir("idle-watchexec")?;
    let watchexec = match &tools.watchexec {
        Some(w) => Some(Owned::spawn(
            &mut watchexec_command(
                w,
                &other.join("tree"),
                50,
                &[],
                &[
                    tools.probe(),
                    "stamp",
                    stamp_log.to_str().unwrap_or_default(),
                ],
            ),
            &other,
        )?),
        None => None,
    };
    Ok((debouncer, watchexec))
}

/// CPU time, wakeups a second and memory of each of `subjects` (name, pid) over `secs` seconds
/// of nothing to do.
fn measure(subjects: &[(String, u32)], secs: u64) -> Vec<Idle> {
    let before: Vec<_> = subjects.iter().map(|(_, p)| procs::usage(*p)).collect();
    let t0 = Instant::now();
    sleep(Duration::from_secs(secs));
    let elapsed = t0.elapsed().as_secs_f64();
    let mut figures = Vec::new();
    for ((name, pid), before) in subjects.iter().zip(before) {
        let after = procs::usage(*pid);
        let rss = procs::status_mb(*pid, "VmRSS").unwrap_or(f64::NAN);
        let anon = procs::status_mb(*pid, "RssAnon").unwrap_or(f64::NAN);
        let (cpu_ms, wakeups) = match (before, after) {
            (Some(b), Some(a)) => {
                let (cpu_s, switches) = a.since(&b);
                (cpu_s * 1e3, switches as f64 / elapsed)
            }
            _ => (f64::NAN, f64::NAN),
        };
        figures.push(Idle {
            name: name.clone(),
            cpu_ms,
            wakeups,
            rss,
            anon,
        });
    }
    figures
}

/// Three rows per ward process, beside watchexec's figures, and one line of the debouncer's.
fn push_rows(figures: &[Idle], secs: u64, rows: &mut Vec<Row>) {
    let anchor = figures.iter().find(|f| f.name == "watchexec").cloned();
    for f in figures.iter().filter(|f| f.name.starts_with("ward")) {
        let name = &f.name;
        let with_anchor = |row: Row, value: f64| match &anchor {
            Some(a) => row.anchor(a.name.clone(), vec![value]),
            None => row,
        };
        let (rss_limit, wake_limit) = match name.as_str() {
            "ward keeper" => (Some(4.0), 1.2),
            "ward server" => (Some(16.0), 1.2),
            _ => (None, 0.1),
        };
        rows.push(with_anchor(
            Row::new("idle", format!("{name}: CPU over {secs} s"), "ms").ward(vec![f.cpu_ms]),
            anchor.as_ref().map_or(f64::NAN, |a| a.cpu_ms),
        ));
        rows.push(with_anchor(
            Row::new("idle", format!("{name}: wakeups (context switches)"), "/s")
                .ward(vec![f.wakeups])
                .target(
                    if wake_limit > 1.0 {
                        "≤ 1 heartbeat/s"
                    } else {
                        "none"
                    },
                    f.wakeups <= wake_limit,
                ),
            anchor.as_ref().map_or(f64::NAN, |a| a.wakeups),
        ));
        let mut rss_row = Row::new("idle", format!("{name}: RSS total/anonymous"), "MB")
            .ward(vec![f.rss, f.anon]);
        if let Some(a) = &anchor {
            rss_row = rss_row.anchor(a.name.clone(), vec![a.rss, a.anon]);
        }
        if let Some(limit) = rss_limit {
            rss_row = rss_row.target(format!("≤ {limit} MB"), f.rss <= limit);
        }
        rows.push(rss_row);
    }
    if let Some(Idle {
        name,
        cpu_ms,
        wakeups,
        rss,
        ..
    }) = figures.iter().find(|f| f.name.starts_with("notify"))
    {
        rows.push(Row::new(
            "idle",
            format!("{name}, 50 ms window: CPU {cpu_ms:.1} ms, {wakeups:.1} wakeups/s, RSS {rss:.1} MB (not ward)"),
            "",
        ));
    }
}

//! The `batch` part: one command run for many changed paths, as `cargo test` or a build is rerun
//! when anything changes. A ward batch trigger against watchexec on the same burst of new files
//! (that of the `burst` part), with the same command (`ward-bench-probe paths`, given the paths on
//! stdin by ward, in `--emit-events-to=file` by watchexec) and the same debounce: how many runs,
//! from the first write to the end of the last run, and the share of the paths given.

use std::path::Path;
use std::thread::sleep;
use std::time::Duration;

use anyhow::Result;

use super::super::report::Row;
use super::burst::{Burst, burst_files, make_dirs};
use super::{Owned, Tools, Ward, watchexec_command};

/// The files of the burst.
const FILES: usize = 50_000;

/// ward's debounce and watchexec's `--debounce`; also ward's batch settle window (its least).
const DEBOUNCE_MS: u64 = 50;

/// Measures ward's batch trigger and watchexec on the burst and adds their rows.
pub(crate) fn run(tools: &Tools, rows: &mut Vec<Row>) -> Result<()> {
    let n = FILES;
    let limit = Duration::from_secs(60 + n as u64 / 1000);
    println!("batch: ward, {n} files ...");
    let ward = ward_batch(tools, n, limit)?;
    say("ward", n, &ward);
    let mut wx = None;
    if let Some(watchexec) = &tools.watchexec {
        println!("batch: watchexec, {n} files ...");
        match watchexec_batch(tools, watchexec, n, limit) {
            Ok(b) => {
                say("watchexec", n, &b);
                wx = Some(b);
            }
            Err(e) => eprintln!("batch: watchexec failed: {e:#}"),
        }
    }
    let mut runs = Row::new("batch", format!("{n} new files: runs of the command"), "")
        .ward(vec![ward.lines as f64]);
    let mut time = Row::new(
        "batch",
        format!("{n} new files: first write → end of the last run"),
        "s",
    )
    .ward(vec![ward.last_stamp_s]);
    let mut given = Row::new(
        "batch",
        format!("{n} new files: paths given to the command"),
        "%",
    )
    .ward(vec![ward.share * 100.0]);
    if let Some(wx) = &wx {
        runs = runs
            .anchor("watchexec", vec![wx.lines as f64])
            .target("≤ watchexec", ward.lines <= wx.lines);
        time = time
            .anchor("watchexec", vec![wx.last_stamp_s])
            .target("≤ watchexec", ward.last_stamp_s <= wx.last_stamp_s);
        given = given.anchor("watchexec", vec![wx.share * 100.0]);
    }
    given = given.target("100%", ward.share >= 1.0);
    rows.extend([runs, time, given]);
    Ok(())
}

fn say(tool: &str, n: usize, b: &Burst) {
    println!(
        "batch: {tool} {n}: written in {:.2} s, {} run(s), the last ended {:.2} s after the first write, {:.2}% of the paths given",
        b.write_s,
        b.lines,
        b.last_stamp_s,
        b.share * 100.0
    );
}

/// The command every tool runs: it appends the paths of its run to `log`.
fn command<'a>(tools: &'a Tools, log: &'a Path) -> [&'a str; 3] {
    [tools.probe(), "paths", log.to_str().unwrap_or_default()]
}

fn ward_batch(tools: &Tools, n: usize, limit: Duration) -> Result<Burst> {
    let dir = tools.dir(&format!("batch-ward-{n}"))?;
    let log = dir.join("runs-log");
    make_dirs(&dir.join("tree"))?;
    let ward = Ward::new(
        tools,
        &dir,
        &format!(
            "debounce_ms = {DEBOUNCE_MS}\n\n[[trigger]]\nname = \"batch\"\nbatch = true\nexec = {:?}\n",
            command(tools, &log)
        ),
    )?;
    ward.start()?;
    let (_, server) = ward.pids()?;
    let b = burst_files(&dir.join("tree"), &log, n, limit, server)?;
    ward.stop()?;
    Ok(b)
}

fn watchexec_batch(tools: &Tools, watchexec: &Path, n: usize, limit: Duration) -> Result<Burst> {
    let dir = tools.dir(&format!("batch-watchexec-{n}"))?;
    let tree = dir.join("tree");
    let log = dir.join("runs-log");
    make_dirs(&tree)?;
    let w = Owned::spawn(
        &mut watchexec_command(
            watchexec,
            &tree,
            DEBOUNCE_MS,
            &["--emit-events-to=file"],
            &command(tools, &log),
        ),
        &dir,
    )?;
    // As in the `burst` part: watchexec has no readiness signal.
    sleep(Duration::from_millis(500));
    burst_files(&tree, &log, n, limit, w.pid())
}

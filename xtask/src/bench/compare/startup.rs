//! The `startup` part: `ward start` → ready and → every file processed for trees of thousands of
//! files, a second start with the manifest up to date, both beside a plain walk of the tree; and
//! the supervision figure, a SIGKILL of the server → the keeper's replacement ready.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::super::procs;
use super::super::report::Row;
use super::{Tools, Ward, wait_lines};

fn make_tree(tree: &Path, files: usize) -> Result<()> {
    for i in 0..files {
        let sub = tree.join(format!("d{:03}", i / 500));
        if i % 500 == 0 {
            fs::create_dir_all(&sub)?;
        }
        fs::write(sub.join(format!("f{i}")), "x")?;
    }
    Ok(())
}

/// Seconds the probe's walk of `tree` took: every directory listed, every file stat-ed.
pub(super) fn walk_s(tools: &Tools, tree: &Path) -> Result<f64> {
    let out = Command::new(&tools.probe).arg("walk").arg(tree).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let ns: f64 = text
        .split_whitespace()
        .skip_while(|w| *w != "walk_ns")
        .nth(1)
        .context("walk printed no time")?
        .parse()?;
    Ok(ns / 1e9)
}

/// Measures `ward start` on trees of two sizes, beside a plain walk, and adds their rows.
pub(crate) fn run(tools: &Tools, rows: &mut Vec<Row>) -> Result<()> {
    let sizes: &[usize] = if tools.quick {
        &[1_000, 20_000]
    } else {
        &[1_000, 100_000]
    };
    for &n in sizes {
        println!("startup: tree of {n} files ...");
        let dir = tools.dir(&format!("startup-{n}"))?;
        let tree = dir.join("tree");
        let log = dir.join("worker-log");
        make_tree(&tree, n)?;
        let walk = walk_s(tools, &tree)?;
        let ward = Ward::new(tools, &dir, &format!("\n{}", tools.record_trigger(&log)))?;
        let t0 = Instant::now();
        let first = ward.start()?.as_secs_f64();
        wait_lines(&log, n, Duration::from_secs(300))?;
        let processed = t0.elapsed().as_secs_f64();
        ward.stop()?;
        let again = ward.start()?.as_secs_f64();
        ward.stop()?;
        rows.push(
            Row::new(
                "startup",
                format!("`ward start` → ready, {n} files, first start"),
                "s",
            )
            .ward(vec![first])
            .anchor("plain walk of the tree", vec![walk]),
        );
        rows.push(
            Row::new(
                "startup",
                format!("`ward start` → every file processed once, {n} files"),
                "s",
            )
            .ward(vec![processed]),
        );
        rows.push(
            Row::new(
                "startup",
                format!("`ward start` → ready, {n} files, manifest up to date"),
                "s",
            )
            .ward(vec![again])
            .anchor("plain walk of the tree", vec![walk]),
        );
    }
    Ok(())
}

/// SIGKILL of the server → the keeper's replacement ready (server pid changed and status
/// answers), three times (the keeper gives up after five restarts within a minute).
pub(crate) fn server_restart(tools: &Tools, rows: &mut Vec<Row>) -> Result<()> {
    println!("supervision: SIGKILL of ward's server → replacement ready ...");
    let dir = tools.dir("server-restart")?;
    let log = dir.join("stamps");
    let ward = Ward::new(
        tools,
        &dir,
        &format!(
            "\n[[trigger]]\nname = \"stamp\"\nglob = [\"*\"]\nexec = [{:?}, \"stamp\", {:?}, \"{{path}}\"]\n",
            tools.probe(),
            log.to_str().unwrap_or_default()
        ),
    )?;
    ward.start()?;
    let mut samples = Vec::new();
    for _ in 0..3 {
        let (_, server) = ward.pids()?;
        let t0 = Instant::now();
        // SAFETY: kill has no memory-safety preconditions; the pid is the server of the daemon
        // this bench started, alive as status just said.
        unsafe { libc::kill(server as libc::pid_t, libc::SIGKILL) };
        loop {
            if let Ok((_, next)) = ward.pids()
                && next != server
                && procs::is_alive(next)
            {
                break;
            }
            if t0.elapsed() > Duration::from_secs(20) {
                bail!("no replacement server within 20 s");
            }
            sleep(Duration::from_millis(2));
        }
        samples.push(t0.elapsed().as_secs_f64() * 1e3);
        sleep(Duration::from_millis(300));
    }
    ward.stop()?;
    rows.push(
        Row::new(
            "supervision",
            "daemon: SIGKILL of the server → replacement ready, 3 crashes in a row (keeper backoff 100/200/400 ms included)",
            "ms",
        )
        .ward(samples),
    );
    Ok(())
}

//! The `scale` part (#26): one large tree (`--scale-files`, 1,000,000 files by default, 20,000
//! with `--quick`; ten files a directory, a hundred directories a parent, like the tree
//! of a million files in about 100k directories), against the stat walk of the same tree in the
//! same run:
//!
//! - `ward start` → ready, a first start (every file owed) and again with the manifest up to
//!   date, each against the walk (goal ≤ 2× with inotify, ≤ 1.3× with fanotify);
//! - `ward start` → every file processed once (a worker trigger), and the jobs a second;
//! - the server's peak RSS (VmHWM) over the whole first start (goal ≤ 48 MB);
//! - the manifest's bytes per path (goal ≤ 100).
//!
//! Per watch backend: inotify, and fanotify where it starts (as root), each from a state of its
//! own on the same tree.

use std::fs;
use std::path::Path;
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use super::super::procs;
use super::super::report::Row;
use super::startup::walk_s;
use super::{Tools, Ward};

/// Files a directory, and directories a parent.
const PER_DIR: usize = 10;
const DIRS_PER_PARENT: usize = 100;

/// Writes `files` files of one byte: `p{i / 1000}/d{(i / 10) % 100}/f{i}`.
fn make_tree(tree: &Path, files: usize) -> Result<usize> {
    let mut dirs = 0;
    for i in 0..files {
        let parent = tree.join(format!("p{}", i / (PER_DIR * DIRS_PER_PARENT)));
        let dir = parent.join(format!("d{}", (i / PER_DIR) % DIRS_PER_PARENT));
        if i % PER_DIR == 0 {
            if i % (PER_DIR * DIRS_PER_PARENT) == 0 {
                dirs += 1;
            }
            fs::create_dir_all(&dir)?;
            dirs += 1;
        }
        fs::write(dir.join(format!("f{i}")), "x")?;
    }
    Ok(dirs)
}

/// Waits until the server has completed `n` jobs; polls its status every 100 ms (reading a
/// million-line log that often would take the CPU the measure needs).
fn wait_completed(ward: &Ward, n: usize, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let done = ward.status()?["queue"]["completed"].as_u64().unwrap_or(0);
        if done >= n as u64 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("ward completed {done} of {n} jobs within {limit:?}");
        }
        sleep(Duration::from_millis(100));
    }
}

/// Measures a tree of `tools.scale_files` files with each backend, and adds their rows.
pub(crate) fn run(tools: &Tools, rows: &mut Vec<Row>) -> Result<()> {
    let n = tools.scale_files;
    let dir = tools.dir("scale")?;
    let tree = dir.join("tree");
    println!("scale: making a tree of {n} files ...");
    let made = Instant::now();
    let dirs = make_tree(&tree, n)?;
    println!(
        "scale: {n} files in {dirs} directories made in {:.1} s; the stat walk ...",
        made.elapsed().as_secs_f64()
    );
    // SAFETY: sync has no preconditions; the tree's dirty pages are not written back during
    // the measures.
    unsafe { libc::sync() };
    let walk = walk_s(tools, &tree)?;
    let walk_anchor = format!("stat walk of the tree ({dirs} directories)");
    // SAFETY: geteuid cannot fail.
    let backends: &[&str] = if unsafe { libc::geteuid() } == 0 {
        &["inotify", "fanotify"]
    } else {
        println!("scale: not root, so fanotify is not measured");
        &["inotify"]
    };
    for backend in backends {
        let _ = fs::remove_dir_all(dir.join("state"));
        measure(tools, &dir, backend, walk, &walk_anchor, rows)?;
    }
    Ok(())
}

/// One backend's first start, start with the manifest up to date, memory and manifest size.
fn measure(
    tools: &Tools,
    dir: &Path,
    backend: &str,
    walk: f64,
    walk_anchor: &str,
    rows: &mut Vec<Row>,
) -> Result<()> {
    let n = tools.scale_files;
    let log = dir.join(format!("worker-log-{backend}"));
    let body = format!("backend = \"{backend}\"\n\n{}", tools.record_trigger(&log));
    let ward = Ward::new(tools, dir, &body)?;
    println!("scale: walk {walk:.2} s; ward ({backend}) first start ...");
    let t0 = Instant::now();
    let first = ward.start()?.as_secs_f64();
    let (_, server) = ward.pids()?;
    let active = ward.status()?["watch"]["backend"].clone();
    if active != backend {
        bail!("asked for {backend}, ward watches with {active}");
    }
    wait_completed(&ward, n, Duration::from_secs(3600))?;
    let processed = t0.elapsed().as_secs_f64();
    let peak_mb = procs::status_mb(server, "VmHWM").unwrap_or(f64::NAN);
    ward.stop()?;
    let manifest = fs::metadata(dir.join("state/manifest.redb")).map_or(0, |m| m.len());
    let per_path = manifest as f64 / n as f64;
    let again = ward.start()?.as_secs_f64();
    let (_, server) = ward.pids()?;
    let steady_mb = procs::status_mb(server, "VmRSS").unwrap_or(f64::NAN);
    ward.stop()?;
    println!(
        "scale: {backend}: ready {first:.2} s (first start), {again:.2} s (manifest up to date); every file processed in {processed:.1} s ({:.0} jobs/s); server peak RSS {peak_mb:.1} MB, {steady_mb:.1} MB after the second start; manifest {per_path:.0} bytes per path",
        n as f64 / processed
    );
    let factor = if backend == "fanotify" { 1.3 } else { 2.0 };
    for (when, ready) in [("first start", first), ("manifest up to date", again)] {
        rows.push(
            Row::new(
                "scale",
                format!("{backend}: `ward start` → ready, {n} files, {when}"),
                "s",
            )
            .ward(vec![ready])
            .anchor(walk_anchor.to_owned(), vec![walk])
            .target(format!("≤ {factor}x"), ready <= factor * walk),
        );
    }
    rows.push(
        Row::new(
            "scale",
            format!("{backend}: `ward start` → every file processed once, {n} files"),
            "s",
        )
        .ward(vec![processed]),
    );
    rows.push(
        Row::new(
            "scale",
            format!("{backend}: server peak RSS, first start of {n} files"),
            "MB",
        )
        .ward(vec![peak_mb])
        .target("≤ 48 MB", peak_mb <= 48.0),
    );
    rows.push(
        Row::new(
            "scale",
            format!("{backend}: manifest bytes per path, {n} files"),
            "B",
        )
        .ward(vec![per_path])
        .target("≤ 100 B", per_path <= 100.0),
    );
    Ok(())
}

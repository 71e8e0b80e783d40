//! Benchmark of the manifest: startup reconciliation of an unchanged 100k-file tree against plain
//! directory walks of the same tree (readdir only, and readdir with a stat of every file: the
//! latter is what the <= 2x target of issue #8 is judged against), and grouped manifest writes
//! against one commit per update.
//!
//! `cargo xtask bench --only server` (= `cargo run --release -p ward-server --example bench`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ward_server::jobs::Event;
use ward_server::manifest::{FileMeta, Manifest, Threads, Update};
use ward_watch::IgnoreRules;

const FILES: usize = 100_000;
const PER_DIR: usize = 500;
const ROUNDS: usize = 3;

fn main() {
    let base = if Path::new("/dev/shm").is_dir() {
        Path::new("/dev/shm")
    } else {
        Path::new("/tmp")
    };
    let dir = tempfile::Builder::new()
        .prefix("ward-bench-")
        .tempdir_in(base)
        .expect("temp dir");
    let root = dir.path().join("tree");
    print!("writing {FILES} files under {} ... ", root.display());
    for i in 0..FILES {
        let sub = root.join(format!("d{:03}", i / PER_DIR));
        if i % PER_DIR == 0 {
            std::fs::create_dir_all(&sub).expect("mkdir");
        }
        std::fs::write(sub.join(format!("f{i}")), b"x").expect("write");
    }
    println!("done");

    let rules = Arc::new(
        IgnoreRules::new(vec![root.clone()], &[], Some(".wardignore".into())).expect("rules"),
    );
    let mut manifest = Manifest::open(&dir.path().join("manifest.redb"))
        .expect("manifest")
        .0;
    // Recorded as the server records a job's success: the metadata of a stat by path.
    let mut recorded = Vec::new();
    ward_watch::walk(
        &rules,
        &root,
        |_| true,
        |path, is_dir| {
            if !is_dir {
                recorded.push(Update::Finished {
                    path: path.to_path_buf(),
                    event: Event::Created,
                    ok: true,
                    processed: FileMeta::read(path),
                    old_path: None,
                    seq: None,
                });
            }
        },
    );
    manifest.apply(&recorded).expect("record the tree");

    // The server's filter: in a root, not ignored (every file has a trigger here). It is asked
    // only about paths that need a job: none in an unchanged tree.
    let reconcile = |threads| {
        let changed = manifest
            .reconcile_with(threads, &rules, &root, |p| {
                rules.root_of(p).is_some() && !rules.is_ignored(p, false)
            })
            .expect("reconcile");
        assert!(
            changed.is_empty(),
            "an unchanged tree must need no job: {changed:?}"
        );
        FILES
    };
    // Measured alternately, round by round, so that load from elsewhere on the machine falls on
    // all of them alike.
    let mut best = [Duration::MAX; 4];
    for _ in 0..ROUNDS {
        let times = [
            timed(|| plain_walk(&root, false)),
            timed(|| plain_walk(&root, true)),
            timed(|| reconcile(Threads::Two)),
            timed(|| reconcile(Threads::One)),
        ];
        for (best, t) in best.iter_mut().zip(times) {
            *best = (*best).min(t);
        }
    }
    let [walk, walk_stat, two_threads, one_thread] = best;
    println!();
    println!("startup reconciliation, unchanged tree of {FILES} files (best of {ROUNDS})");
    println!(
        "{:<48} {:>10} {:>12} {:>12}",
        "", "time", "/ readdir", "/ stat walk"
    );
    for (name, time) in [
        ("plain walk: readdir only", walk),
        ("plain walk: readdir + lstat of every file", walk_stat),
        ("ward reconcile: walk in a 2nd thread (server)", two_threads),
        ("ward reconcile: all in one thread", one_thread),
    ] {
        println!(
            "{:<48} {:>10.1?} {:>11.2}x {:>11.2}x",
            name,
            time,
            ratio(time, walk),
            ratio(time, walk_stat)
        );
    }
    // A file's change shows only in its metadata, so a reconciliation cannot skip the stat per
    // file that a readdir-only walk skips: the walk that stats is the least one can do, and the
    // target is judged against it. The readdir-only ratio is printed for what it says about the
    // stat's share, not as a target.
    let judged = ratio(two_threads, walk_stat);
    let verdict = if judged <= 2.0 { "met" } else { "NOT met" };
    println!(
        "target (issue #8): reconciliation <= 2x the plain walk that stats every file: {verdict} ({judged:.2}x; {:.2}x in one thread); against readdir only it is {:.2}x (not the target: such a walk never sees a file's metadata)",
        ratio(one_thread, walk_stat),
        ratio(two_threads, walk)
    );
    println!(
        "(the plain walks run in one thread, stat-ing relative to the open directory; ward stats the same way)"
    );

    // Writes during a burst: the server groups a flush's updates into one commit.
    let paths: Vec<PathBuf> = recorded.iter().map(|u| u.path().to_path_buf()).collect();
    let grouped_updates = 20_000;
    let t = Instant::now();
    for chunk in paths[..grouped_updates].chunks(500) {
        let updates: Vec<Update> = chunk
            .iter()
            .map(|p| Update::Queued {
                path: p.clone(),
                event: Event::Modified,
                old_path: None,
                seq: None,
            })
            .collect();
        manifest.apply(&updates).expect("grouped write");
    }
    let grouped = grouped_updates as f64 / t.elapsed().as_secs_f64();
    let single_updates = 500;
    let t = Instant::now();
    for p in &paths[..single_updates] {
        manifest
            .apply(&[Update::Queued {
                path: p.clone(),
                event: Event::Modified,
                old_path: None,
                seq: None,
            }])
            .expect("single write");
    }
    let single = single_updates as f64 / t.elapsed().as_secs_f64();
    println!();
    println!("manifest writes during a burst");
    println!(
        "{:<44} {:>10.0} updates/s",
        "grouped, 500 updates per commit", grouped
    );
    println!(
        "{:<44} {:>10.0} updates/s",
        "one commit (fsync) per update", single
    );
    println!("{:<44} {:>10.1}x", "grouped / single", grouped / single);
}

/// Walks `root` recursively, reading every directory, and when `stat`, stat-ing every file the
/// cheapest way std offers (`DirEntry::metadata`: an `lstat` relative to the open directory, not a
/// lookup of the full path).
fn plain_walk(root: &Path, stat: bool) -> usize {
    let mut files = 0;
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read_dir").flatten() {
            let kind = entry.file_type().expect("file type");
            if kind.is_dir() {
                dirs.push(entry.path());
            } else {
                if stat {
                    std::hint::black_box(FileMeta::of(&entry.metadata().expect("stat")));
                }
                files += 1;
            }
        }
    }
    files
}

fn timed(run: impl FnOnce() -> usize) -> Duration {
    let t = Instant::now();
    std::hint::black_box(run());
    t.elapsed()
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}

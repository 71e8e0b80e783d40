//! Benchmark of the manifest: startup reconciliation of an unchanged 100k-file tree against plain
//! directory walks of the same tree, and grouped manifest writes against one commit per update.
//!
//! `cargo xtask bench --only server` (= `cargo run --release -p ward-server --example bench`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ward_server::jobs::Event;
use ward_server::manifest::{FileMeta, Manifest, Update, reconcile, scan};
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
    let recorded: Vec<Update> = scan(&rules, &root, |_| true)
        .into_iter()
        .map(|(path, meta)| Update::Finished {
            path,
            ok: true,
            processed: Some(meta),
        })
        .collect();
    manifest.apply(&recorded).expect("record the tree");

    let walk = best(|| plain_walk(&root, false));
    let walk_stat = best(|| plain_walk(&root, true));
    let mut changed = 0;
    let reconciliation = best(|| {
        let on_disk = scan(&rules, &root, |_| true);
        let records = manifest.records().expect("records");
        changed = reconcile(&records, &on_disk).len();
        on_disk.len()
    });
    assert_eq!(changed, 0, "an unchanged tree must need no job");
    println!();
    println!("startup reconciliation, unchanged tree of {FILES} files (best of {ROUNDS})");
    println!("{:<44} {:>10} {:>8}", "", "time", "ratio");
    println!(
        "{:<44} {:>10.1?} {:>7.2}x",
        "plain walk (readdir only)", walk, 1.0
    );
    println!(
        "{:<44} {:>10.1?} {:>7.2}x",
        "plain walk + stat of every file",
        walk_stat,
        ratio(walk_stat, walk)
    );
    println!(
        "{:<44} {:>10.1?} {:>7.2}x",
        "ward: walk + stat + manifest + diff",
        reconciliation,
        ratio(reconciliation, walk)
    );
    // A file's change can only be seen in its metadata, so reconciliation cannot skip the stat
    // that a readdir-only walk skips: both comparisons are printed.
    let verdict = |r: f64| if r <= 2.0 { "met" } else { "NOT met" };
    println!(
        "target: reconciliation <= 2x a plain walk: {} against readdir only ({:.2}x); {} against a walk that stats ({:.2}x)",
        verdict(ratio(reconciliation, walk)),
        ratio(reconciliation, walk),
        verdict(ratio(reconciliation, walk_stat)),
        ratio(reconciliation, walk_stat)
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

/// Walks `root` recursively, reading every directory (and stat-ing every file when `stat`).
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
                    std::hint::black_box(FileMeta::read(&entry.path()));
                }
                files += 1;
            }
        }
    }
    files
}

fn best(mut run: impl FnMut() -> usize) -> Duration {
    (0..ROUNDS)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(run());
            t.elapsed()
        })
        .min()
        .expect("rounds")
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}

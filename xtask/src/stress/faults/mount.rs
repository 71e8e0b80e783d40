//! The `mount` fault: a tmpfs, and a bind mount of a directory from outside the tree, mounted
//! inside the watched tree; files written into both; both unmounted, and new files written where
//! they were. Its verdict: what was inside the mounts (written there, or brought in by the bind)
//! was processed, its disappearance at the unmount was seen, and the new files were processed.

use std::path::PathBuf;
use std::time::Duration;

use super::super::check::Line;
use super::super::daemon::wait_until;
use super::super::host;
use super::super::ledger::{Entry, content_hash};
use super::super::scene::{Scene, interrupted};
use super::super::workload::now_ms;
use super::{Injected, not_injected};

/// How long ward gets for each thing the fault waits to see.
const SEE_WITHIN: Duration = Duration::from_secs(15);

/// What one mount fault found.
#[derive(Debug)]
pub struct Record {
    label: String,
    inside: usize,
    /// Files inside the mounts no job processed while they were there.
    unprocessed: Vec<PathBuf>,
    /// Files inside the mounts, processed, whose disappearance at the unmount no job was told of.
    not_gone: Vec<PathBuf>,
    after: usize,
    /// Files written after the unmount that no job processed.
    after_unprocessed: Vec<PathBuf>,
    problems: Vec<String>,
}

/// Of `paths`, those whose last mention in the ledger is not their removal (or a rename away)
/// at or after `since_ms`.
pub fn not_seen_gone(paths: &[PathBuf], entries: &[Entry], since_ms: u64) -> Vec<PathBuf> {
    paths
        .iter()
        .filter(|p| {
            let p = p.to_string_lossy();
            let last = entries
                .iter()
                .rev()
                .find(|e| e.path == p || e.old_path.as_deref() == Some(&*p));
            // Its removal, or a rename away from it (where it is the old path).
            !last.is_some_and(|e| e.t_ms >= since_ms && (e.event == "removed" || e.path != p))
        })
        .cloned()
        .collect()
}

/// Injects mount fault number `n`.
pub fn inject(scene: &mut Scene<'_>, f: &mut Injected, n: usize) -> Record {
    let mut record = Record {
        label: f.label.clone(),
        inside: 0,
        unprocessed: Vec::new(),
        not_gone: Vec::new(),
        after: 0,
        after_unprocessed: Vec::new(),
        problems: Vec::new(),
    };
    let base = scene.tree.join(format!("mnt-{n}"));
    let (tmpfs, bound) = (base.join("tmpfs"), base.join("bind"));
    let source = scene.dir.join(format!("mnt-src-{n}"));
    for d in [&tmpfs, &bound, &source.join("sub")] {
        if let Err(e) = std::fs::create_dir_all(d) {
            record
                .problems
                .push(format!("creating {}: {e}", d.display()));
        }
    }
    // Watched before anything is mounted: the mount points are directories ward knows.
    let (seed, errors) = scene.write_files(&base, "seed", &["txt"], 1, "mount");
    record.problems.extend(errors);
    if !scene.ledger.await_handled(&seed, SEE_WITHIN).is_empty() {
        record
            .problems
            .push("its directory's first file was not processed within 15 s".into());
    }
    // What the bind mount brings in.
    let mut brought = Vec::new();
    for rel in (0..5).flat_map(|i| [format!("pre-{i}.txt"), format!("sub/pre-{i}.txt")]) {
        let content = format!("mount source {}\n", scene.log.seq());
        match std::fs::write(source.join(&rel), &content) {
            Ok(()) => brought.push((bound.join(&rel), content_hash(content.as_bytes()))),
            Err(e) => record
                .problems
                .push(format!("writing {rel} in the bind source: {e}")),
        }
    }

    f.start_ms = now_ms();
    let mounted = host::mount_tmpfs(&tmpfs, 16, 0o755)
        .map_err(|e| format!("mounting a tmpfs on {}: {e}", tmpfs.display()))
        .and_then(|()| {
            host::bind(&source, &bound).map_err(|e| {
                format!(
                    "bind-mounting {} on {}: {e}",
                    source.display(),
                    bound.display()
                )
            })
        });
    if let Err(e) = mounted {
        record.problems.push(e);
        let _ = host::unmount(&tmpfs);
        let _ = std::fs::remove_dir_all(&source);
        scene.remove_later(base);
        f.end_ms = now_ms();
        return record;
    }
    for (path, hash) in &brought {
        scene.log.appeared(path, *hash, "mount");
    }
    let mut inside = brought;
    for (dir, stem, count) in [
        (&tmpfs, "t", 20),
        (&tmpfs.join("sub"), "t", 5),
        (&bound, "b", 20),
    ] {
        let (files, errors) = scene.write_files(dir, stem, &["txt"], count, "mount");
        inside.extend(files);
        record.problems.extend(errors);
    }
    record.inside = inside.len();
    record.unprocessed = scene.ledger.await_handled(&inside, SEE_WITHIN);

    for target in [&tmpfs, &bound] {
        if let Err(e) = host::unmount(target) {
            record
                .problems
                .push(format!("unmounting {}: {e}", target.display()));
        }
    }
    let unmounted_ms = now_ms();
    for (path, _) in &inside {
        scene.log.vanished(path, "mount");
    }
    let mut after = Vec::new();
    for dir in [&tmpfs, &bound] {
        let (files, errors) = scene.write_files(dir, "after", &["txt"], 10, "mount");
        after.extend(files);
        record.problems.extend(errors);
    }
    record.after = after.len();
    record.after_unprocessed = scene.ledger.await_handled(&after, SEE_WITHIN);
    // Only what ward saw is owed its disappearance: a file that came and went unseen is not.
    let inside_paths: Vec<PathBuf> = inside
        .into_iter()
        .map(|(p, _)| p)
        .filter(|p| !record.unprocessed.contains(p))
        .collect();
    wait_until(SEE_WITHIN, || {
        scene.ledger.refresh();
        record.not_gone = not_seen_gone(&inside_paths, &scene.ledger.entries, unmounted_ms);
        record.not_gone.is_empty() || interrupted()
    });
    f.end_ms = now_ms();
    f.note = format!(
        "a tmpfs and a bind mount in the tree: {} files inside ({} processed), unmounted ({} seen gone), then {} files where they were ({} processed)",
        record.inside,
        record.inside - record.unprocessed.len(),
        record.inside - record.not_gone.len(),
        record.after,
        record.after - record.after_unprocessed.len()
    );
    scene.remove_later(base);
    if let Err(e) = std::fs::remove_dir_all(&source) {
        record
            .problems
            .push(format!("removing the bind source: {e}"));
    }
    record
}

/// The verdict line of every mount fault injected.
pub fn line(records: &[Record]) -> Line {
    let check = "mount: files in mounts seen, and their unmount";
    if records.is_empty() {
        return not_injected(check);
    }
    let mut details = Vec::new();
    let sum = |f: fn(&Record) -> usize| records.iter().map(f).sum::<usize>();
    for r in records {
        for (what, list) in [
            ("inside a mount, never processed", &r.unprocessed),
            (
                "inside a mount, its disappearance at the unmount never seen",
                &r.not_gone,
            ),
            (
                "written after the unmount, never processed",
                &r.after_unprocessed,
            ),
        ] {
            if let Some(first) = list.first() {
                details.push(format!(
                    "{}: {} file(s) {what}, e.g. {}",
                    r.label,
                    list.len(),
                    first.display()
                ));
            }
        }
        details.extend(r.problems.iter().map(|p| format!("{}: {p}", r.label)));
    }
    Line::new(
        check,
        details.is_empty(),
        format!(
            "{} inside, {} unprocessed, {} not seen gone; {} after the unmount, {} unprocessed",
            sum(|r| r.inside),
            sum(|r| r.unprocessed.len()),
            sum(|r| r.not_gone.len()),
            sum(|r| r.after),
            sum(|r| r.after_unprocessed.len())
        ),
        details,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stress::ledger::Phase;

    fn entry(t_ms: u64, path: &str, event: &str, old_path: Option<&str>) -> Entry {
        Entry {
            phase: Phase::Start,
            t_ms,
            pid: 1,
            event: event.into(),
            hash: None,
            directive: "-".into(),
            trigger: "stress".into(),
            path: path.into(),
            old_path: old_path.map(str::to_owned),
        }
    }

    #[test]
    fn gone_means_last_told_removed_after_the_unmount() {
        let paths: Vec<PathBuf> = ["/m/a", "/m/b", "/m/c", "/m/d", "/m/e"]
            .map(PathBuf::from)
            .into();
        let entries = [
            entry(10, "/m/a", "created", None),
            entry(20, "/m/a", "removed", None),
            entry(10, "/m/b", "created", None),
            // Removed before the unmount, then created again: the unmount's removal is owed.
            entry(5, "/m/c", "removed", None),
            entry(12, "/m/c", "created", None),
            entry(30, "/elsewhere", "renamed", Some("/m/d")),
            entry(10, "/m/e", "created", None),
            entry(40, "/m/e", "removed", None),
            entry(41, "/m/e", "modified", None),
        ];
        assert_eq!(
            not_seen_gone(&paths, &entries, 15),
            [
                PathBuf::from("/m/b"),
                PathBuf::from("/m/c"),
                PathBuf::from("/m/e")
            ]
        );
    }
}

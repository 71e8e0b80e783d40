//! The `chmod` fault: a directory of a watched tree made unreadable while files are added under
//! it (directly and in a new subdirectory), then readable again. Its verdict: the files added
//! while it was unreadable are processed once it is readable, and no job runs on a directory's
//! own path.
//!
//! Permissions mean nothing to root, so the fault runs a small ward of its own (its own tree,
//! state directory, config and ledger, beside the run's): when the harness is root, as a
//! throwaway system user (`host::create_user`, removed when the run ends) who owns that tree,
//! with the directory at mode 000; otherwise as the harness's own user, with the directory at
//! 0300 (no reading, but its owner can still add files, which at 000 it could not).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::super::check::Line;
use super::super::config::ConfigFile;
use super::super::daemon::{self, Ward};
use super::super::host::{self, User};
use super::super::ledger::{Entry, Phase, content_hash};
use super::super::scene::{LedgerTail, Scene};
use super::super::workload::now_ms;
use super::{Injected, not_injected};

/// What one chmod fault found.
#[derive(Debug)]
pub struct Record {
    label: String,
    added: usize,
    /// Files added while the directory was unreadable that no job processed.
    unprocessed: Vec<PathBuf>,
    /// Jobs that ran on a directory's own path.
    on_directories: Vec<String>,
    problems: Vec<String>,
}

/// The entries of `entries` whose path is one of `dirs`: jobs that took a directory for a file.
pub fn jobs_on(dirs: &[PathBuf], entries: &[Entry]) -> Vec<String> {
    entries
        .iter()
        .filter(|e| e.phase == Phase::Start && dirs.iter().any(|d| Path::new(&e.path) == d))
        .map(|e| format!("{} job on {}", e.event, e.path))
        .collect()
}

/// `ward`, `ward-keeper` and the stress worker where the fault's user can run them: the build's
/// directories need not be open to it. Linked if they can be, else copied.
fn place_binaries(scene: &Scene<'_>, into: &Path) -> std::io::Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(into)?;
    std::fs::set_permissions(into, std::fs::Permissions::from_mode(0o755))?;
    let keeper = scene.ward.bin.with_file_name("ward-keeper");
    for from in [&scene.ward.bin, &keeper, &scene.config.worker] {
        let to = into.join(from.file_name().unwrap_or_default());
        if to.exists() {
            continue;
        }
        if std::fs::hard_link(from, &to).is_err() {
            std::fs::copy(from, &to)?;
        }
    }
    let worker = into.join(scene.config.worker.file_name().unwrap_or_default());
    Ok((into.join("ward"), worker))
}

fn set_mode(path: &Path, mode: u32) -> Result<(), String> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("chmod {mode:o} {}: {e}", path.display()))
}

/// Writes a file of the side ward's tree (given to `user`), returning it with its hash.
fn add(path: &Path, user: Option<&User>) -> Result<(PathBuf, u64), String> {
    let content = format!("chmod fault {}\n", now_ms());
    std::fs::write(path, &content).map_err(|e| format!("writing {}: {e}", path.display()))?;
    if let Some(u) = user {
        host::chown_tree(path, u.uid, u.gid)
            .map_err(|e| format!("chown {}: {e}", path.display()))?;
    }
    Ok((path.to_path_buf(), content_hash(content.as_bytes())))
}

/// Injects chmod fault number `n`.
pub fn inject(scene: &mut Scene<'_>, f: &mut Injected, n: usize) -> Record {
    let mut record = Record {
        label: f.label.clone(),
        added: 0,
        unprocessed: Vec::new(),
        on_directories: Vec::new(),
        problems: Vec::new(),
    };
    let side = scene.dir.join(format!("chmod-{n}"));
    match run_side(scene, f, &side, &mut record) {
        Ok(()) => {}
        Err(e) => record.problems.push(e),
    }
    // Its log, for whoever reads a FAIL.
    let log = side.join("state/ward.log");
    let _ = std::fs::create_dir_all(&scene.opts.out);
    let _ = std::fs::copy(&log, scene.opts.out.join(format!("ward-chmod-{n}.log")));
    let left = daemon::sweep(&side);
    if !left.is_empty() {
        record.problems.push(format!(
            "{} process(es) of its ward left after ward stop: {:?}",
            left.len(),
            left.iter().map(|(p, _)| *p).collect::<Vec<_>>()
        ));
    }
    record
}

fn run_side(
    scene: &mut Scene<'_>,
    f: &mut Injected,
    side: &Path,
    record: &mut Record,
) -> Result<(), String> {
    let root = host::is_root();
    let user = if root {
        Some(host::create_user().map_err(|e| format!("creating its user: {e:#}"))?)
    } else {
        None
    };
    let (bin, worker) = place_binaries(scene, &scene.dir.join("bin"))
        .map_err(|e| format!("placing the binaries for its user: {e}"))?;
    let (tree, locked) = (side.join("tree"), side.join("tree/locked"));
    for d in [&locked, &tree.join("open")] {
        std::fs::create_dir_all(d).map_err(|e| format!("creating {}: {e}", d.display()))?;
    }
    let config = ConfigFile {
        path: side.join("ward.toml"),
        worker,
        ledger: side.join("ledger"),
        nats: None,
        // As a throwaway user, fanotify is refused: inotify watches, whatever the run asked.
        backend: None,
    };
    config
        .write(0)
        .map_err(|e| format!("writing its config: {e}"))?;
    if let Some(u) = &user {
        host::chown_tree(side, u.uid, u.gid)
            .map_err(|e| format!("chown {}: {e}", side.display()))?;
    }
    let ward = Ward {
        bin,
        config: config.path.clone(),
        state: side.join("state"),
        user: user.as_ref().map(|u| (u.uid, u.gid)),
    };
    ward.start().map_err(|e| format!("{e:#}"))?;
    let mut ledger = LedgerTail::new(config.ledger.clone());
    let seeds = vec![
        add(&locked.join("seed.txt"), user.as_ref())?,
        add(&tree.join("open/seed.txt"), user.as_ref())?,
    ];
    if !ledger
        .await_handled(&seeds, Duration::from_secs(20))
        .is_empty()
    {
        record
            .problems
            .push("its first files were not processed within 20 s".into());
    }

    let unreadable = if root { 0o000 } else { 0o300 };
    f.start_ms = now_ms();
    set_mode(&locked, unreadable)?;
    let sub = locked.join("sub");
    let mut added = Vec::new();
    let mut problems = Vec::new();
    // Files come over a second and a half, a new subdirectory among them.
    for round in 0..3 {
        if round == 1 {
            if let Err(e) = std::fs::create_dir(&sub) {
                problems.push(format!("creating {}: {e}", sub.display()));
            } else if let Some(u) = &user {
                let _ = host::chown_tree(&sub, u.uid, u.gid);
            }
        }
        for i in 0..5 {
            let dir = if round >= 1 && i % 2 == 1 {
                &sub
            } else {
                &locked
            };
            match add(&dir.join(format!("r{round}-{i}.txt")), user.as_ref()) {
                Ok(file) => added.push(file),
                Err(e) => problems.push(e),
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    set_mode(&locked, 0o755)?;
    record.added = added.len();
    record.unprocessed = ledger.await_handled(&added, Duration::from_secs(15));
    f.end_ms = now_ms();
    record.on_directories = jobs_on(
        &[tree.clone(), locked.clone(), sub, tree.join("open")],
        &ledger.entries,
    );
    record.problems.extend(problems);
    f.note = format!(
        "{} ward as {}: {} at mode {unreadable:03o} while {} files were added, then 755; {} processed",
        if root { "a throwaway" } else { "a second" },
        user.as_ref()
            .map_or("the harness's user", |u| u.name.as_str()),
        locked.display(),
        record.added,
        record.added - record.unprocessed.len()
    );
    let stopped = ward
        .run(&["stop", "--timeout", "10"], Duration::from_secs(30))
        .map_err(|e| format!("ward stop: {e:#}"))?;
    if stopped.code != Some(0) {
        record.problems.push(format!(
            "ward stop: exit {:?}: {}",
            stopped.code,
            stopped.stderr.trim()
        ));
    }
    Ok(())
}

/// The verdict line of every chmod fault injected.
pub fn line(records: &[Record]) -> Line {
    let check = "chmod: files under an unreadable dir processed";
    if records.is_empty() {
        return not_injected(check);
    }
    let mut details = Vec::new();
    for r in records {
        if let Some(first) = r.unprocessed.first() {
            details.push(format!(
                "{}: {} file(s) added while unreadable never processed, e.g. {}",
                r.label,
                r.unprocessed.len(),
                first.display()
            ));
        }
        details.extend(
            r.on_directories
                .iter()
                .take(4)
                .map(|j| format!("{}: a {j}, a directory", r.label)),
        );
        details.extend(r.problems.iter().map(|p| format!("{}: {p}", r.label)));
    }
    let sum = |f: fn(&Record) -> usize| records.iter().map(f).sum::<usize>();
    Line::new(
        check,
        details.is_empty(),
        format!(
            "{} added while unreadable, {} never processed; {} job(s) on a directory's path",
            sum(|r| r.added),
            sum(|r| r.unprocessed.len()),
            sum(|r| r.on_directories.len())
        ),
        details,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_on_a_directory_is_found_by_its_path() {
        let entry = |path: &str, event: &str| Entry {
            phase: Phase::Start,
            t_ms: 1,
            pid: 1,
            event: event.into(),
            hash: None,
            directive: "-".into(),
            trigger: "stress".into(),
            path: path.into(),
            old_path: None,
        };
        let entries = [
            entry("/s/tree/locked/r0-1.txt", "created"),
            entry("/s/tree/locked", "modified"),
            entry("/s/tree/locked/sub/", "created"),
            Entry {
                phase: Phase::Done,
                ..entry("/s/tree/locked", "modified")
            },
        ];
        let dirs = [
            PathBuf::from("/s/tree/locked"),
            PathBuf::from("/s/tree/locked/sub"),
        ];
        assert_eq!(
            jobs_on(&dirs, &entries),
            [
                "modified job on /s/tree/locked",
                "created job on /s/tree/locked/sub/"
            ]
        );
    }
}

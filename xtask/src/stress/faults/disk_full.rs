//! The `state-disk-full` fault: the state directory lives on a tmpfs of its own for the whole
//! run ([`prepare`]); the fault fills it to ENOSPC, keeps it full for seconds while files change
//! and jobs run, then frees it. Its verdict: `ward status` answered all along, the files written
//! meanwhile were processed, the manifest caught up once the space came back, and the log said
//! that lines were lost.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::super::check::Line;
use super::super::daemon::wait_until;
use super::super::host;
use super::super::ledger::{Directive, Entry};
use super::super::scene::{Scene, interrupted};
use super::super::workload::now_ms;
use super::{Injected, not_injected};

/// What ward logs once it can write its log again after losing lines.
const LOST_LINES: &str = "log line(s) could not be written";
/// Lines a talking job writes into ward's log while the disk is full.
const SAY_LINES: u64 = 100;
/// The filler's name in the state directory.
const FILLER: &str = "stress-filler";

/// The state directory's tmpfs, MiB: room for a run's manifest, log and reports, which a long
/// run's manifest needs most of (`du` the state directory of a `--keep` run to see). It costs
/// only what is stored: the fault shrinks it before filling it.
fn size_mib(quick: bool) -> u64 {
    if quick { 256 } else { 2048 }
}

/// The room the fault leaves on the state tmpfs and then fills: the filler's size, whatever the
/// tmpfs's.
const FILLER_MIB: u64 = 16;

/// Mounts the tmpfs on `state` (created here, mode 0700 as ward wants its state directory),
/// before ward starts; the run's sweeper unmounts it.
///
/// # Errors
/// If the directory cannot be made or the tmpfs mounted (the harness is not root).
pub fn prepare(state: &Path, quick: bool) -> anyhow::Result<()> {
    std::fs::create_dir_all(state).with_context(|| format!("creating {}", state.display()))?;
    host::mount_tmpfs(state, size_mib(quick), 0o700).with_context(|| {
        format!(
            "mounting a tmpfs on {} for state-disk-full (root needed; or leave the fault out)",
            state.display()
        )
    })
}

/// What one disk-full fault left for the verdict.
#[derive(Debug)]
pub struct Record {
    label: String,
    /// `ward status` during the full spell: asked, answered, and what went wrong.
    asked: usize,
    answered: usize,
    unanswered: Vec<String>,
    /// Files written while the disk was full: path, hash.
    written: Vec<(PathBuf, u64)>,
    /// Whether `ward status` showed the manifest's write error while full.
    write_error_seen: bool,
    /// Whether the manifest had nothing unrecorded and no error once the space was back.
    caught_up: bool,
    /// Whether the log said it had lost lines.
    lost_said: bool,
    problems: Vec<String>,
}

/// Writes `path` until the filesystem says ENOSPC, in big blocks then small ones; its size.
fn fill(path: &Path) -> std::io::Result<u64> {
    let mut file = std::fs::File::create(path)?;
    let mut written = 0u64;
    for block in [1 << 20, 4096, 1] {
        let chunk = vec![0x5au8; block];
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => return Err(e),
            }
        }
    }
    Ok(written)
}

/// Injects disk-full number `n`.
pub fn inject(scene: &mut Scene<'_>, f: &mut Injected, n: usize) -> Record {
    let hold = Duration::from_secs(if scene.opts.quick { 4 } else { 8 });
    let mut record = Record {
        label: f.label.clone(),
        asked: 0,
        answered: 0,
        unanswered: Vec::new(),
        written: Vec::new(),
        write_error_seen: false,
        caught_up: false,
        lost_said: false,
        problems: Vec::new(),
    };
    let state = &scene.ward.state;
    let filler = state.join(FILLER);
    let said = scene.ward.log_lines_with(LOST_LINES);
    f.start_ms = now_ms();
    let shrunk = host::used_bytes(state)
        .and_then(|used| host::resize_tmpfs(state, used / 1024 + FILLER_MIB * 1024));
    if let Err(e) = &shrunk {
        record.problems.push(format!(
            "shrinking the state tmpfs before filling it: {e} (so all of it is filled)"
        ));
    }
    let filled = fill(&filler);
    if let Err(e) = &filled {
        record
            .problems
            .push(format!("filling {}: {e}", filler.display()));
    }
    let began = Instant::now();
    let dir = scene.tree.join(format!("diskfull-{n}"));
    let mut round = 0;
    while began.elapsed() < hold && !interrupted() {
        let (files, errors) =
            scene.write_files(&dir, &format!("r{round}"), &["txt"], 10, "disk-full");
        record.written.extend(files);
        record.problems.extend(errors);
        // A job that talks: its lines go to ward's log, which has no room for them now (the
        // log file's last page may; a hundred lines pass it).
        let talker = dir.join(format!("r{round}-say.txt"));
        let content = format!(
            "{}seq {}\n",
            Directive::Say(SAY_LINES).line(),
            scene.log.seq()
        );
        match scene.log.write(&talker, content.as_bytes(), "disk-full") {
            Ok(hash) => record.written.push((talker, hash)),
            Err(e) => record
                .problems
                .push(format!("writing {}: {e}", talker.display())),
        }
        round += 1;
        let asked_at = Instant::now();
        record.asked += 1;
        let status = scene
            .ward
            .run(&["status", "--json"], Duration::from_secs(3))
            .ok()
            .and_then(|r| serde_json::from_str::<serde_json::Value>(&r.stdout).ok());
        match status {
            Some(s) => {
                record.answered += 1;
                record.write_error_seen |= !s["manifest"]["write_error"].is_null();
            }
            None => record.unanswered.push(format!(
                "+{:.1} s: no answer within 3 s",
                began.elapsed().as_secs_f64()
            )),
        }
        // One round a second, whatever the status took.
        let rest = Duration::from_secs(1).saturating_sub(asked_at.elapsed());
        std::thread::sleep(rest.min(hold.saturating_sub(began.elapsed())));
    }
    if let Err(e) = std::fs::remove_file(&filler) {
        record
            .problems
            .push(format!("freeing {}: {e}", filler.display()));
    }
    if shrunk.is_ok()
        && let Err(e) = host::resize_tmpfs(state, size_mib(scene.opts.quick) * 1024)
    {
        record
            .problems
            .push(format!("growing the state tmpfs back: {e}"));
    }
    let freed = Instant::now();
    record.caught_up = wait_until(Duration::from_secs(30), || {
        interrupted()
            || scene.ward.status().is_some_and(|s| {
                s["manifest"]["unrecorded"].as_u64() == Some(0)
                    && s["manifest"]["write_error"].is_null()
            })
    });
    let caught_up_s = freed.elapsed().as_secs_f64();
    if !scene.ward.await_idle(Duration::from_secs(60)) {
        record
            .problems
            .push("not caught up 60 s after the space came back".into());
    }
    f.end_ms = now_ms();
    // ward says what its log lost with the next line it writes, which a quiet ward may not
    // write for long: a job that talks once gives it one.
    let nudge = dir.join("after-say.txt");
    let content = format!("{}seq {}\n", Directive::Say(1).line(), scene.log.seq());
    match scene.log.write(&nudge, content.as_bytes(), "disk-full") {
        Ok(hash) => record.written.push((nudge, hash)),
        Err(e) => record
            .problems
            .push(format!("writing {}: {e}", nudge.display())),
    }
    record.lost_said = wait_until(Duration::from_secs(10), || {
        interrupted() || scene.ward.log_lines_with(LOST_LINES) > said
    });
    f.note = format!(
        "state tmpfs shrunk to what it held plus {FILLER_MIB} MiB and filled ({}) for {:.1} s while {} files were written; status answered {}/{}; manifest {} {caught_up_s:.1} s after the space came back",
        filled.map_or_else(
            |e| format!("failed: {e}"),
            |b| format!("{} MiB filler", b >> 20)
        ),
        hold.as_secs_f64(),
        record.written.len(),
        record.answered,
        record.asked,
        if record.caught_up {
            "caught up"
        } else {
            "still behind"
        },
    );
    scene.remove_later(dir);
    record
}

/// The files of `written` no job handled in this content, by the ledger `entries`.
pub fn unprocessed(written: &[(PathBuf, u64)], entries: &[Entry]) -> Vec<PathBuf> {
    let handled: std::collections::HashSet<(&str, u64)> = entries
        .iter()
        .filter(|e| e.handled())
        .filter_map(|e| Some((e.path.as_str(), e.hash?)))
        .collect();
    written
        .iter()
        .filter(|(p, h)| !handled.contains(&(&*p.to_string_lossy(), *h)))
        .map(|(p, _)| p.clone())
        .collect()
}

/// The verdict line of every disk-full fault injected.
pub fn line(
    records: &[Record],
    entries: &[Entry],
    losses: &std::collections::BTreeMap<String, Vec<String>>,
) -> Line {
    let check = "state-disk-full: answered, lost nothing, said so";
    if records.is_empty() {
        return not_injected(check);
    }
    let mut details = Vec::new();
    let (mut asked, mut answered, mut written, mut lost) = (0, 0, 0, 0);
    for r in records {
        asked += r.asked;
        answered += r.answered;
        written += r.written.len();
        let missing = unprocessed(&r.written, entries);
        let l = &r.label;
        // The workloads' changes too: nothing is lost while the disk is full, nor after.
        let in_window = losses.get(l).map_or(&[][..], Vec::as_slice);
        lost += missing.len() + in_window.len();
        if let Some(first) = in_window.first() {
            details.push(format!(
                "{l}: {} change(s) in its window lost, e.g. {first}",
                in_window.len()
            ));
        }
        details.extend(r.unanswered.iter().map(|u| format!("{l}: ward status {u}")));
        if !missing.is_empty() {
            details.push(format!(
                "{l}: {} file(s) written while full never processed, e.g. {}",
                missing.len(),
                missing[0].display()
            ));
        }
        if !r.caught_up {
            details.push(format!(
                "{l}: the manifest still had updates unrecorded or an error 30 s after the space came back"
            ));
        }
        if !r.lost_said {
            details.push(format!(
                "{l}: the log did not say \"{LOST_LINES}\" within 10 s of a job's line after the space came back"
            ));
        }
        if !r.write_error_seen {
            details.push(format!(
                "{l}: (ward status never showed a manifest write error while full)"
            ));
        }
        details.extend(r.problems.iter().map(|p| format!("{l}: {p}")));
    }
    let pass = records.iter().all(|r| {
        r.asked > 0 && r.answered == r.asked && r.caught_up && r.lost_said && r.problems.is_empty()
    }) && lost == 0;
    Line::new(
        check,
        pass,
        format!(
            "{} fault(s): status answered {answered}/{asked}; {written} files written while full; {lost} change(s) lost",
            records.len()
        ),
        details,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stress::ledger::Phase;

    #[test]
    fn a_file_counts_as_processed_only_in_the_content_written() {
        let entry = |path: &str, hash, phase| Entry {
            phase,
            t_ms: 1,
            pid: 1,
            event: "created".into(),
            hash: Some(hash),
            directive: "-".into(),
            trigger: "stress".into(),
            path: path.into(),
            old_path: None,
        };
        let written = [
            (PathBuf::from("/t/a"), 1),
            (PathBuf::from("/t/b"), 2),
            (PathBuf::from("/t/c"), 3),
        ];
        let entries = [
            entry("/t/a", 1, Phase::Done),
            entry("/t/b", 9, Phase::Done),
            entry("/t/c", 3, Phase::Start),
        ];
        assert_eq!(
            unprocessed(&written, &entries),
            [PathBuf::from("/t/b"), PathBuf::from("/t/c")]
        );
    }

    #[test]
    fn fill_stops_at_a_full_disk_and_reports_other_errors() {
        // /dev/full answers every write with ENOSPC: a full disk of size 0.
        if Path::new("/dev/full").exists() {
            let dir = tempfile::tempdir().unwrap();
            let link = dir.path().join("full");
            std::os::unix::fs::symlink("/dev/full", &link).unwrap();
            assert_eq!(fill(&link).unwrap(), 0);
        }
        assert!(fill(Path::new("/nonexistent/dir/filler")).is_err());
    }
}

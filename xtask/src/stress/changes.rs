//! `ward changes --since N` read from outside: the JSON lines it prints, and the verdict that
//! after the run its account of every path ends where the disk ended, and that a client which
//! had read up to a point mid-run hears of every path it knew that changed since. Parsing and the
//! comparisons are pure; [`fetch`] and [`mark`] ask ward.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

use serde_json::Value;

use super::check::{Line, OpKind, WriteOp};
use super::daemon::Ward;
use super::ledger::{Entry, Phase};
use super::workload::now_ms;

/// One line of `ward changes`: a path with its latest change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The change's sequence number.
    pub seq: u64,
    /// The path (from `path_hex` when ward gives one: the exact bytes).
    pub path: String,
    /// `created`, `modified`, `removed` or `renamed`.
    pub event: String,
}

/// The changes in `text`, one JSON object a line, and the lines that are not one.
pub fn parse(text: &str) -> (Vec<Change>, Vec<String>) {
    let mut changes = Vec::new();
    let mut malformed = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: Option<Value> = serde_json::from_str(line).ok();
        let change = v.as_ref().and_then(|v| {
            let path = match v["path_hex"].as_str() {
                Some(hex) => String::from_utf8_lossy(&unhex(hex)?).into_owned(),
                None => v["path"].as_str()?.to_owned(),
            };
            Some(Change {
                seq: v["seq"].as_u64()?,
                path,
                event: v["event"].as_str()?.to_owned(),
            })
        });
        match change {
            Some(c) => changes.push(c),
            None => malformed.push(line.to_owned()),
        }
    }
    (changes, malformed)
}

fn unhex(hex: &str) -> Option<Vec<u8>> {
    (hex.len().is_multiple_of(2) && hex.is_ascii())
        .then(|| {
            (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
                .collect()
        })
        .flatten()
}

/// `ward changes --since SINCE`, parsed.
///
/// # Errors
/// If it cannot run, fails, takes longer than `limit`, or prints a line that is not a change.
pub fn fetch(ward: &Ward, since: u64, limit: Duration) -> Result<Vec<Change>, String> {
    let since = since.to_string();
    let ran = ward
        .run(&["changes", "--since", &since], limit)
        .map_err(|e| format!("{e:#}"))?;
    if ran.code != Some(0) {
        return Err(format!(
            "ward changes --since {since}: exit {:?}{}: {}",
            ran.code,
            if ran.timed_out { " (timed out)" } else { "" },
            ran.stderr.trim()
        ));
    }
    let (changes, malformed) = parse(&ran.stdout);
    match malformed.first() {
        Some(line) => Err(format!(
            "{} line(s) of ward changes are not a change, e.g. {line:?}",
            malformed.len()
        )),
        None => Ok(changes),
    }
}

/// A point a client has read up to: ward's sequence number as of its last commit, and the wall
/// clock (milliseconds since the epoch) once ward had answered. A change the harness makes after
/// that moment is numbered after it.
///
/// `None` if ward did not answer.
pub fn mark(ward: &Ward) -> Option<(u64, u64)> {
    let seq = ward.status()?["manifest"]["seq"].as_u64()?;
    Some((seq, now_ms()))
}

/// The paths a client that had read up to the mark `at_ms` knew (a job had started on them
/// before it) and that the harness changed after it, but that the since-query from the mark
/// (`listed`) does not list: a client never learns that they changed. A rename away is a change
/// of the old path. A path absent at the mark and at the end, that only existed after the mark
/// for less than ward's quiet window at a time (an editor's backup, renamed in and removed at
/// once), did not change for ward: its creation and removal coalesce into nothing.
pub fn unlisted_since(
    listed: &[Change],
    at_ms: u64,
    writes: &[WriteOp],
    entries: &[Entry],
) -> Vec<String> {
    let fleeting = |path: &str| {
        let ops: Vec<&WriteOp> = writes.iter().filter(|w| w.path == path).collect();
        let absent = |op: Option<&&WriteOp>| op.is_some_and(|w| w.kind == OpKind::Removed);
        let at_mark = ops.iter().rev().find(|w| w.t_ms <= at_ms);
        if !absent(at_mark) || !absent(ops.last()) {
            return false;
        }
        // Each stretch of existence after the mark, from the write that made it to the removal.
        let mut since = None;
        ops.iter().filter(|w| w.t_ms > at_ms).all(|w| match w.kind {
            OpKind::Wrote(_) => {
                since = since.or(Some(w.t_ms));
                true
            }
            OpKind::Removed => since
                .take()
                .is_none_or(|made| w.t_ms.saturating_sub(made) < super::config::DEBOUNCE_MS),
        })
    };
    let listed: HashSet<&str> = listed.iter().map(|c| c.path.as_str()).collect();
    let known: HashSet<&str> = entries
        .iter()
        .filter(|e| e.phase == Phase::Start && e.t_ms < at_ms)
        .map(|e| e.path.as_str())
        .collect();
    let changed: BTreeSet<&str> = writes
        .iter()
        .filter(|w| w.t_ms > at_ms)
        .map(|w| w.path.as_str())
        .collect();
    changed
        .into_iter()
        .filter(|p| known.contains(p) && !listed.contains(p) && !fleeting(p))
        .map(|p| format!("{p}: changed after the mark, not listed since it"))
        .collect()
}

/// Where ward's account and the disk disagree, in words, for paths under `root` (`files`: the
/// regular files on disk; `is_dir`: whether a path is a directory on disk).
///
/// A since-query lists each path once, oldest change first, with its latest change: a file on
/// disk must be listed and its last event must not be `removed`; a listed path that is not a
/// file on disk must be last `removed` (a rename away lists the old path's removal too).
pub fn disagreements(
    changes: &[Change],
    files: &BTreeMap<String, u64>,
    is_dir: impl Fn(&str) -> bool,
    root: &str,
) -> Vec<String> {
    let mut out = Vec::new();
    let mut last: HashMap<&str, &Change> = HashMap::new();
    let mut previous_seq = 0;
    for c in changes {
        if c.seq <= previous_seq {
            out.push(format!(
                "seq {} ({}) printed after seq {previous_seq}: not oldest first",
                c.seq, c.path
            ));
        }
        previous_seq = previous_seq.max(c.seq);
        if let Some(before) = last.insert(&c.path, c) {
            out.push(format!(
                "{} listed twice (seq {} {}, seq {} {})",
                c.path, before.seq, before.event, c.seq, c.event
            ));
        }
    }
    let mut paths: Vec<&&Change> = last.values().collect();
    paths.sort_by_key(|c| c.seq);
    for c in paths {
        let on_disk = files.contains_key(&c.path);
        if on_disk && c.event == "removed" {
            out.push(format!(
                "{}: on disk, last reported removed (seq {})",
                c.path, c.seq
            ));
        } else if !on_disk && c.event != "removed" {
            let what = if is_dir(&c.path) {
                "a directory"
            } else {
                "gone"
            };
            out.push(format!(
                "{}: {what}, last reported {} (seq {})",
                c.path, c.event, c.seq
            ));
        }
    }
    for path in files.keys() {
        if path.starts_with(root) && !last.contains_key(path.as_str()) {
            out.push(format!("{path}: on disk, never reported"));
        }
    }
    out
}

/// What the run read of ward's since-queries after it settled.
#[derive(Debug)]
pub struct Reading {
    /// `ward changes --since 0`.
    pub all: Result<Vec<Change>, String>,
    /// The mark taken mid-run (sequence number, wall clock) and `ward changes --since` it.
    pub since_mark: Option<(u64, u64, Result<Vec<Change>, String>)>,
}

/// The verdict line (`files`: the regular files on disk; `root`: the tree, with a trailing
/// slash; `writes` and `entries`: the record of changes and the ledger).
pub fn line(
    reading: &Reading,
    files: &BTreeMap<String, u64>,
    writes: &[WriteOp],
    entries: &[Entry],
    root: &str,
    short: impl Fn(&str) -> String,
) -> Line {
    let check = "changes --since agrees with the disk";
    let all = match &reading.all {
        Ok(c) => c,
        Err(e) => return Line::new(check, false, "no answer".into(), vec![e.clone()]),
    };
    let mut wrong = disagreements(all, files, |p| std::path::Path::new(p).is_dir(), root);
    let since = match &reading.since_mark {
        Some((seq, at_ms, Ok(listed))) => {
            wrong.extend(unlisted_since(listed, *at_ms, writes, entries));
            format!("{} since seq {seq} (marked mid-run)", listed.len())
        }
        Some((seq, _, Err(e))) => {
            wrong.push(format!("ward changes --since {seq}: {e}"));
            format!("none since seq {seq}")
        }
        None => {
            wrong.push("ward never answered the mid-run mark's status".into());
            "no mid-run mark".into()
        }
    };
    Line::new(
        check,
        wrong.is_empty(),
        format!(
            "{} path(s) reported since 0, {since}, {} file(s) on disk; {} disagreement(s)",
            all.len(),
            files.len(),
            wrong.len()
        ),
        wrong.iter().map(|w| short(w)).collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(seq: u64, path: &str, event: &str) -> Change {
        Change {
            seq,
            path: path.into(),
            event: event.into(),
        }
    }

    #[test]
    fn lines_parse_with_hex_paths_and_garbage_is_kept_apart() {
        let text = r#"{"seq":3,"path":"/t/a","event":"created"}
{"seq":5,"path":"/t/\ufffd","path_hex":"2f742fff","event":"removed"}

not json
{"seq":"x","path":"/t/b","event":"created"}
"#;
        let (changes, malformed) = parse(text);
        assert_eq!(changes[0], change(3, "/t/a", "created"));
        assert_eq!(changes[1].path, "/t/\u{fffd}");
        assert_eq!(changes[1].seq, 5);
        assert_eq!(malformed.len(), 2);
        assert_eq!(unhex("2f74"), Some(b"/t".to_vec()));
        assert_eq!(unhex("2f7"), None);
        assert_eq!(unhex("zz"), None);
    }

    #[test]
    fn each_path_must_end_where_the_disk_ended() {
        let files: BTreeMap<String, u64> = [("/t/kept".to_owned(), 1), ("/t/new".to_owned(), 2)]
            .into_iter()
            .collect();
        let good = [
            change(1, "/t/kept", "created"),
            change(2, "/t/old", "removed"),
            change(3, "/t/new", "renamed"),
        ];
        assert!(disagreements(&good, &files, |_| false, "/t/").is_empty());

        // The rename's old path still says what it was before the rename.
        let stale_old = [
            change(1, "/t/old", "created"),
            change(2, "/t/kept", "modified"),
            change(3, "/t/new", "renamed"),
        ];
        let wrong = disagreements(&stale_old, &files, |_| false, "/t/");
        assert_eq!(wrong, ["/t/old: gone, last reported created (seq 1)"]);

        let bad = [
            change(4, "/t/kept", "removed"),
            change(4, "/t/dir", "modified"),
            change(6, "/t/dir", "modified"),
        ];
        let wrong = disagreements(&bad, &files, |p| p == "/t/dir", "/t/");
        assert!(
            wrong.iter().any(|w| w.contains("not oldest first")),
            "{wrong:?}"
        );
        assert!(
            wrong.iter().any(|w| w.contains("listed twice")),
            "{wrong:?}"
        );
        assert!(wrong.contains(&"/t/kept: on disk, last reported removed (seq 4)".to_owned()));
        assert!(wrong.contains(&"/t/dir: a directory, last reported modified (seq 6)".to_owned()));
        assert!(wrong.contains(&"/t/new: on disk, never reported".to_owned()));
    }

    #[test]
    fn a_client_hears_of_every_path_it_knew_that_changed_after_its_mark() {
        let start = |t_ms, path: &str| Entry {
            phase: Phase::Start,
            t_ms,
            pid: 1,
            event: "created".into(),
            hash: Some(1),
            directive: "-".into(),
            trigger: "stress".into(),
            path: path.into(),
            old_path: None,
        };
        let op = |t_ms, path: &str| WriteOp {
            t_ms,
            path: path.into(),
            kind: OpKind::Removed,
            workload: "churn",
        };
        let entries = [
            start(10, "/t/old"),
            start(10, "/t/kept"),
            start(60, "/t/late"),
        ];
        // /t/old was renamed away after the mark, /t/kept changed before it, /t/late and
        // /t/unseen were not known at the mark.
        let writes = [
            op(5, "/t/kept"),
            op(70, "/t/old"),
            op(70, "/t/late"),
            op(70, "/t/unseen"),
        ];
        assert_eq!(
            unlisted_since(&[], 50, &writes, &entries),
            ["/t/old: changed after the mark, not listed since it"]
        );
        assert!(
            unlisted_since(&[change(9, "/t/old", "removed")], 50, &writes, &entries).is_empty()
        );
        // A backup known before the mark, renamed in and removed at once after it: nothing
        // changed for ward. Kept a whole second, it is a change ward must list.
        let wrote = |t_ms, path: &str| WriteOp {
            kind: OpKind::Wrote(7),
            ..op(t_ms, path)
        };
        let entries = [start(10, "/t/doc~")];
        let fleeting = [
            wrote(5, "/t/doc~"),
            op(8, "/t/doc~"),
            wrote(70, "/t/doc~"),
            op(72, "/t/doc~"),
        ];
        assert!(unlisted_since(&[], 50, &fleeting, &entries).is_empty());
        let kept = [
            wrote(5, "/t/doc~"),
            op(8, "/t/doc~"),
            wrote(70, "/t/doc~"),
            op(1070, "/t/doc~"),
        ];
        assert_eq!(
            unlisted_since(&[], 50, &kept, &entries),
            ["/t/doc~: changed after the mark, not listed since it"]
        );
    }
}

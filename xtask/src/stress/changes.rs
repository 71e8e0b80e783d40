//! `ward changes --since N` read from outside: the JSON lines it prints, and the verdict that
//! after the run its account of every path ends where the disk ended. Parsing and the comparison
//! are pure; [`fetch`] asks ward.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde_json::Value;

use super::check::Line;
use super::daemon::Ward;

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

/// The verdict line: `fetched` is what `ward changes --since 0` gave after the run settled.
pub fn line(
    fetched: &Result<Vec<Change>, String>,
    files: &BTreeMap<String, u64>,
    root: &str,
    short: impl Fn(&str) -> String,
) -> Line {
    let check = "changes --since 0 agrees with the disk";
    let changes = match fetched {
        Ok(c) => c,
        Err(e) => return Line::new(check, false, "no answer".into(), vec![e.clone()]),
    };
    let wrong = disagreements(changes, files, |p| std::path::Path::new(p).is_dir(), root);
    Line::new(
        check,
        wrong.is_empty(),
        format!(
            "{} path(s) reported, {} file(s) on disk; {} disagreement(s)",
            changes.len(),
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
}

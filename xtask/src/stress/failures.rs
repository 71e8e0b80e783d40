//! `ward failures` read from outside, and the verdict that after the run it lists exactly the
//! files on disk whose final version can never succeed (a deadly directive), and `ward status`
//! counts as many. The fault files gave up during the run and were removed after their deaths
//! were reported: their removals must have cleared them, through crashes, kills and a full disk.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;

use super::check::Line;
use super::daemon::Ward;
use super::ledger::Directive;

/// What ward and the disk said after the run.
#[derive(Debug)]
pub struct Reading {
    /// The paths `ward failures --json` listed.
    pub listed: Result<BTreeSet<String>, String>,
    /// `manifest.gave_up` of `ward status`.
    pub counted: Option<u64>,
    /// The files on disk whose content carries a deadly directive.
    pub deadly: BTreeSet<String>,
}

/// Asks ward, and reads the first line of every file in `files`.
pub fn fetch<'a>(
    ward: &Ward,
    status: Option<&Value>,
    files: impl Iterator<Item = &'a String>,
) -> Reading {
    let deadly = files
        .filter(|path| {
            std::fs::read(path).is_ok_and(|content| Directive::parse(&content).is_deadly())
        })
        .cloned()
        .collect();
    Reading {
        listed: listed(ward),
        counted: status.and_then(|s| s["manifest"]["gave_up"].as_u64()),
        deadly,
    }
}

fn listed(ward: &Ward) -> Result<BTreeSet<String>, String> {
    let ran = ward
        .run(&["failures", "--json"], Duration::from_secs(60))
        .map_err(|e| format!("{e:#}"))?;
    if ran.code != Some(0) {
        return Err(format!(
            "ward failures --json: exit {:?}: {}",
            ran.code,
            ran.stderr.trim()
        ));
    }
    ran.stdout
        .lines()
        .map(|line| {
            serde_json::from_str::<Value>(line)
                .ok()
                .and_then(|v| v["path"].as_str().map(str::to_owned))
                .ok_or_else(|| format!("not a failure: {line:?}"))
        })
        .collect()
}

/// The verdict line.
pub fn line(reading: &Reading, short: impl Fn(&str) -> String) -> Line {
    let check = "failures agree with the disk";
    let listed = match &reading.listed {
        Ok(listed) => listed,
        Err(e) => return Line::new(check, false, "no answer".into(), vec![e.clone()]),
    };
    let mut wrong: Vec<String> = listed
        .difference(&reading.deadly)
        .map(|p| {
            format!(
                "{}: listed as given up, but gone or able to succeed",
                short(p)
            )
        })
        .chain(
            reading
                .deadly
                .difference(listed)
                .map(|p| format!("{}: can never succeed, but not listed", short(p))),
        )
        .collect();
    if reading.counted != Some(listed.len() as u64) {
        wrong.push(format!(
            "ward status counts {:?} path(s) given up, ward failures lists {}",
            reading.counted,
            listed.len()
        ));
    }
    Line::new(
        check,
        wrong.is_empty(),
        format!(
            "{} listed, {} deadly file(s) on disk; {} disagreement(s)",
            listed.len(),
            reading.deadly.len(),
            wrong.len()
        ),
        wrong,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(paths: &[&str]) -> BTreeSet<String> {
        paths.iter().map(|p| (*p).to_owned()).collect()
    }

    #[test]
    fn a_path_listed_or_missing_against_the_disk_fails_the_line() {
        let agree = Reading {
            listed: Ok(set(&["/t/bad"])),
            counted: Some(1),
            deadly: set(&["/t/bad"]),
        };
        assert!(line(&agree, str::to_owned).pass);
        let stale = Reading {
            listed: Ok(set(&["/t/gone"])),
            counted: Some(1),
            deadly: set(&[]),
        };
        let l = line(&stale, str::to_owned);
        assert!(!l.pass && l.details[0].contains("/t/gone"), "{l:?}");
        let unlisted = Reading {
            listed: Ok(set(&[])),
            counted: Some(0),
            deadly: set(&["/t/bad"]),
        };
        assert!(!line(&unlisted, str::to_owned).pass);
        let miscounted = Reading {
            listed: Ok(set(&[])),
            counted: Some(2),
            deadly: set(&[]),
        };
        assert!(!line(&miscounted, str::to_owned).pass);
    }
}

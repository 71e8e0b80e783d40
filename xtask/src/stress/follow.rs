//! A subscriber through the whole run: `ward changes --follow` from sequence number 0, its lines
//! kept in files, started again from the last sequence number it printed whenever it ended (a
//! killed keeper ends it; a killed server it rides through itself). The verdict: what it heard
//! ends where the manifest ends, every path at its latest sequence number, nothing out of order,
//! and it never ended with an error (a follower that fails to ride through a server's restart
//! does: the harness starting it again must not hide that).
//! Parsing and the comparison are pure; [`Follower`] drives the process.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::changes::{Change, parse};
use super::check::Line;
use super::daemon::{Ward, wait_until};

/// The subscriber, and the files its runs printed to.
#[derive(Debug)]
pub struct Follower {
    ward: Ward,
    dir: PathBuf,
    child: Option<Child>,
    files: Vec<PathBuf>,
    /// Times it was started again after it ended.
    pub restarts: usize,
    /// How each run that ended with an error ended, and what it said.
    pub errors: Vec<String>,
}

impl Follower {
    /// Starts following from sequence number 0, printing into files in `dir`.
    pub fn start(ward: &Ward, dir: &Path) -> Follower {
        let mut follower = Follower {
            ward: ward.clone(),
            dir: dir.to_owned(),
            child: None,
            files: Vec::new(),
            restarts: 0,
            errors: Vec::new(),
        };
        follower.spawn(0);
        follower
    }

    fn spawn(&mut self, since: u64) {
        let path = self.dir.join(format!("follow-{}.jsonl", self.files.len()));
        let Ok(out) = File::create(&path) else {
            eprintln!("stress: cannot create {}", path.display());
            return;
        };
        let child = Command::new(&self.ward.bin)
            .arg("--config")
            .arg(&self.ward.config)
            .arg("--state-dir")
            .arg(&self.ward.state)
            .args(["changes", "--follow", "--since", &since.to_string()])
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(
                File::create(path.with_extension("err"))
                    .map_or_else(|_| Stdio::null(), Stdio::from),
            )
            .spawn();
        match child {
            Ok(child) => {
                self.child = Some(child);
                self.files.push(path);
            }
            Err(e) => eprintln!("stress: cannot start ward changes --follow: {e}"),
        }
    }

    /// Everything printed so far, in order.
    fn heard(&self) -> Vec<Change> {
        self.files
            .iter()
            .flat_map(|f| parse(&std::fs::read_to_string(f).unwrap_or_default()).0)
            .collect()
    }

    fn last_seq(&self) -> u64 {
        self.heard().iter().map(|c| c.seq).max().unwrap_or(0)
    }

    /// Starts it again, from the last sequence number it printed, if it has ended.
    pub fn ensure(&mut self) {
        let ended = match &mut self.child {
            Some(child) => match child.try_wait() {
                Ok(None) => false,
                Ok(Some(status)) => {
                    // Ended by ward's stop (a killed keeper) it exits 0: anything else is a
                    // failure of its own.
                    if !status.success() {
                        let said = self
                            .files
                            .last()
                            .and_then(|f| std::fs::read_to_string(f.with_extension("err")).ok())
                            .unwrap_or_default();
                        self.errors
                            .push(format!("the follower ended with {status}: {}", said.trim()));
                    }
                    true
                }
                Err(_) => true,
            },
            None => true,
        };
        if ended {
            self.restarts += 1;
            let since = self.last_seq();
            self.spawn(since);
        }
    }

    /// Waits (at most `limit`) until it has printed up to `committed`, stops it, and returns
    /// what it heard and how its runs that failed ended.
    pub fn finish(mut self, committed: u64, limit: Duration) -> (Vec<Change>, Vec<String>) {
        self.ensure();
        wait_until(limit, || self.last_seq() >= committed);
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        (self.heard(), std::mem::take(&mut self.errors))
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The paths whose account differs between what the subscriber heard and the manifest's
/// (`all`, from `ward changes`): a path it never heard of, one it heard at another latest
/// sequence number, and sequence numbers heard out of order.
pub fn disagreements(heard: &[Change], all: &[Change]) -> Vec<String> {
    let mut wrong = Vec::new();
    let mut latest: BTreeMap<&str, &Change> = BTreeMap::new();
    let mut last = 0;
    for change in heard {
        if change.seq <= last {
            wrong.push(format!("seq {} heard after {last}", change.seq));
        }
        last = last.max(change.seq);
        latest.insert(&change.path, change);
    }
    for change in all {
        match latest.get(change.path.as_str()) {
            None => wrong.push(format!("{}: never heard (seq {})", change.path, change.seq)),
            Some(h) if h.seq != change.seq || h.event != change.event => wrong.push(format!(
                "{}: heard {} at seq {}, the manifest says {} at seq {}",
                change.path, h.event, h.seq, change.event, change.seq
            )),
            Some(_) => {}
        }
    }
    wrong
}

/// The verdict line.
pub fn line(
    heard: &[Change],
    all: &Result<Vec<Change>, String>,
    restarts: usize,
    errors: &[String],
) -> Line {
    let check = "a subscriber hears what the manifest holds";
    let all = match all {
        Ok(all) => all,
        Err(e) => return Line::new(check, false, "no answer".into(), vec![e.clone()]),
    };
    let mut wrong = errors.to_vec();
    wrong.extend(disagreements(heard, all));
    Line::new(
        check,
        wrong.is_empty(),
        format!(
            "{} line(s) heard for {} path(s), followed again {restarts} time(s); {} disagreement(s)",
            heard.len(),
            all.len(),
            wrong.len()
        ),
        wrong.into_iter().take(20).collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(seq: u64, path: &str, event: &str) -> Change {
        Change {
            seq,
            path: path.into(),
            event: event.into(),
        }
    }

    #[test]
    fn a_path_heard_at_its_latest_agrees_and_one_missed_or_stale_does_not() {
        let all = [c(5, "/t/a", "modified"), c(7, "/t/b", "removed")];
        let heard = [
            c(1, "/t/a", "created"),
            c(5, "/t/a", "modified"),
            c(7, "/t/b", "removed"),
        ];
        assert!(disagreements(&heard, &all).is_empty());
        let stale = [c(1, "/t/a", "created"), c(7, "/t/b", "removed")];
        assert_eq!(disagreements(&stale, &all).len(), 1);
        let missed = [c(5, "/t/a", "modified")];
        assert_eq!(disagreements(&missed, &all).len(), 1);
        let disorder = [
            c(5, "/t/a", "modified"),
            c(3, "/t/x", "created"),
            c(7, "/t/b", "removed"),
        ];
        assert_eq!(disagreements(&disorder, &all).len(), 1);
    }
}

//! The subtrees `ward retry` asked for again lately (the `nats` feature), kept in the state
//! directory so that a retry made while ward is stopped, or just before a restart, counts too.
//!
//! A job under one, published within the stream's duplicate window after it, gets a message id
//! of its own: its version's first message gave up on a worker (dead-lettered, gone from the
//! stream), and the stream would drop a republish with the same id as a duplicate.
//!
//! The file (`names::RETRIED`) holds one entry per retry, `NS PATH\0` (NS: when, in ns since the
//! epoch; a path may hold any byte but NUL). It is appended to as retries come and rewritten with
//! only the entries still within the window when a server opens it, and whenever the appended
//! entries pass twice the bound: it stays small.

use std::collections::VecDeque;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

use crate::state::{StateDir, names};

/// At most this many retries are remembered; the oldest go past it (a retry then within the
/// window is dropped as a duplicate, as before there was this list).
pub(crate) const RETRIED_MAX: usize = 1024;

/// The retries within the duplicate window, oldest first: (path, ns since the epoch).
#[derive(Debug, Default)]
pub(crate) struct Retried {
    state: Mutex<Entries>,
}

#[derive(Debug, Default)]
struct Entries {
    recent: VecDeque<(PathBuf, u64)>,
    /// Where they are kept: `None` in tests that keep them in memory only.
    file: Option<PathBuf>,
    /// Entries appended to the file since it was last rewritten.
    appended: usize,
}

impl Retried {
    /// The retries `state` keeps that are still within the window; the file is rewritten with
    /// those alone. A file that cannot be read or written is said in the log: retries are then
    /// remembered in memory only.
    pub(crate) fn open(state: &StateDir) -> Retried {
        let file = state.join(names::RETRIED);
        let recent = match std::fs::read(&file) {
            Ok(bytes) => within_window(parse(&bytes), now_ns()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => VecDeque::new(),
            Err(e) => {
                log::warn!(
                    "cannot read {} ({e}): retries made before this start are not known, and a job they owe may be dropped by the stream as a duplicate",
                    file.display()
                );
                VecDeque::new()
            }
        };
        let mut entries = Entries {
            recent,
            file: Some(file),
            appended: 0,
        };
        entries.rewrite();
        Retried {
            state: Mutex::new(entries),
        }
    }

    /// `ward retry` asked for `path` (a file or a directory) again, now.
    pub(crate) fn add(&self, path: &Path) {
        let at = now_ns();
        let mut entries = self.state.lock();
        if entries.recent.len() == RETRIED_MAX {
            entries.recent.pop_front();
        }
        entries.recent.push_back((path.to_path_buf(), at));
        entries.appended += 1;
        if entries.appended > 2 * RETRIED_MAX {
            entries.recent = within_window(std::mem::take(&mut entries.recent), at);
            entries.rewrite();
        } else {
            entries.append(path, at);
        }
    }

    /// When the latest retry covering `path` was asked for (ns since the epoch), if within the
    /// duplicate window.
    pub(crate) fn of(&self, path: &Path) -> Option<u64> {
        let now = now_ns();
        let mut entries = self.state.lock();
        while entries
            .recent
            .front()
            .is_some_and(|(_, at)| !in_window(*at, now))
        {
            entries.recent.pop_front();
        }
        entries
            .recent
            .iter()
            .rev()
            .find(|(under, _)| path.starts_with(under))
            .map(|(_, at)| *at)
    }
}

impl Entries {
    fn append(&mut self, path: &Path, at: u64) {
        let Some(file) = &self.file else { return };
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(file)
            .and_then(|mut f| f.write_all(&entry(path, at)));
        if let Err(e) = written {
            log::warn!(
                "cannot write {} ({e}): the retry of {} is remembered until ward stops only",
                file.display(),
                path.display()
            );
        }
    }

    /// Writes the file anew with `recent` alone (removed when there is none).
    fn rewrite(&mut self) {
        self.appended = 0;
        let Some(file) = &self.file else { return };
        if self.recent.is_empty() {
            match std::fs::remove_file(file) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    log::warn!("cannot remove {}: {e}", file.display());
                }
                _ => {}
            }
            return;
        }
        let bytes: Vec<u8> = self
            .recent
            .iter()
            .flat_map(|(path, at)| entry(path, *at))
            .collect();
        let tmp = file.with_extension("tmp");
        if let Err(e) = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, file)) {
            log::warn!(
                "cannot rewrite {} ({e}): retries are remembered until ward stops only",
                file.display()
            );
        }
    }
}

/// Records a retry of `path` in `state` for the next start: `ward retry` while ward is stopped.
pub(crate) fn record_stopped(state: &StateDir, path: &Path) {
    let mut entries = Entries {
        recent: VecDeque::new(),
        file: Some(state.join(names::RETRIED)),
        appended: 0,
    };
    entries.append(path, now_ns());
}

fn entry(path: &Path, at: u64) -> Vec<u8> {
    let mut bytes = format!("{at} ").into_bytes();
    bytes.extend_from_slice(path.as_os_str().as_bytes());
    bytes.push(0);
    bytes
}

/// The entries of a file's bytes, in their order; a damaged entry (a torn last write) is
/// skipped.
fn parse(bytes: &[u8]) -> Vec<(PathBuf, u64)> {
    bytes
        .split(|&b| b == 0)
        .filter_map(|entry| {
            let space = entry.iter().position(|&b| b == b' ')?;
            let at = std::str::from_utf8(&entry[..space]).ok()?.parse().ok()?;
            let path = Path::new(std::ffi::OsStr::from_bytes(&entry[space + 1..]));
            path.is_absolute().then(|| (path.to_path_buf(), at))
        })
        .collect()
}

/// The last [`RETRIED_MAX`] of `entries` still within the window at `now`.
fn within_window(
    entries: impl IntoIterator<Item = (PathBuf, u64)>,
    now: u64,
) -> VecDeque<(PathBuf, u64)> {
    let mut kept: VecDeque<(PathBuf, u64)> = entries
        .into_iter()
        .filter(|(_, at)| in_window(*at, now))
        .collect();
    while kept.len() > RETRIED_MAX {
        kept.pop_front();
    }
    kept
}

fn in_window(at: u64, now: u64) -> bool {
    Duration::from_nanos(now.saturating_sub(at)) <= ward_nats::DUPLICATE_WINDOW
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn a_retry_marks_the_paths_under_it_with_its_time_and_the_oldest_go_past_the_bound() {
        let retried = Retried::default();
        assert_eq!(retried.of(Path::new("/t/a")), None);
        retried.add(Path::new("/t"));
        let first = retried.of(Path::new("/t/a")).expect("under /t");
        assert_eq!(retried.of(Path::new("/other/a")), None);
        retried.add(Path::new("/t/a"));
        let second = retried.of(Path::new("/t/a")).expect("under /t/a");
        assert!(second >= first, "the latest retry covering it wins");
        assert_eq!(retried.of(Path::new("/t/b")), Some(first));
        for i in 0..RETRIED_MAX {
            retried.add(Path::new(&format!("/u/{i}")));
        }
        assert_eq!(retried.of(Path::new("/t/b")), None, "bounded");
    }

    #[test]
    fn retries_made_while_stopped_or_before_a_restart_are_known_at_the_next_open() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(&dir.path().join("state")).unwrap();
        let odd = Path::new(std::ffi::OsStr::from_bytes(b"/t/caf\xe9 \n.txt"));
        record_stopped(&state, odd);
        // Out of the window: forgotten at the next open.
        let old = now_ns() - ward_nats::DUPLICATE_WINDOW.as_nanos() as u64 - 1_000_000_000;
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(state.join(names::RETRIED))
            .unwrap();
        file.write_all(&entry(Path::new("/old"), old)).unwrap();
        // A torn last write.
        file.write_all(b"12").unwrap();
        drop(file);
        let retried = Retried::open(&state);
        assert!(retried.of(odd).is_some(), "the stopped retry");
        assert_eq!(retried.of(Path::new("/old/a")), None, "out of the window");
        retried.add(Path::new("/u"));
        drop(retried);
        let reopened = Retried::open(&state);
        assert!(reopened.of(odd).is_some());
        assert!(
            reopened.of(Path::new("/u/x")).is_some(),
            "the running server's retry"
        );
        let kept = std::fs::read(state.join(names::RETRIED)).unwrap();
        assert_eq!(
            parse(&kept).len(),
            2,
            "rewritten with the two in the window"
        );
    }
}

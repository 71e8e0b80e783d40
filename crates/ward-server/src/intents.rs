//! The intent journal: the paths of jobs that started, kept on disk until the manifest holds their
//! queueing. Not the manifest (the record of what was processed), only what bridges its
//! group-commit delay.
//!
//! The manifest commits what the loop queued once the oldest update has waited
//! `tracker::writer::FLUSH_EVERY`, but a job may start at once. If the server is killed in between,
//! the manifest never learns of a path whose job told its consumer the file exists; and if the file
//! is removed before the next start, nothing tells the consumer it is gone. So a job thread appends
//! its path here (one `write(2)`, no `fsync`: a killed process loses no write it made; a lost
//! machine loses what the manifest's last durable commit lacks anyway) before the job runs.
//!
//! The journal is a series of files `intents.N`. When the manifest writer takes a batch of
//! updates it first seals the live file and starts the next: every path in a sealed file was
//! queued before the batch was taken, so once that batch (or a later one) is committed, the
//! sealed files say nothing the manifest does not, and are deleted. What a start finds left is
//! what a killed server did not commit: each such path that is gone and unknown to the manifest
//! gets a removal job.
//!
//! A job whose change the manifest has already committed needs no entry: the manifest holds its
//! path. Changes are numbered and committed in order, so the writer's last committed number
//! (`Intents::committed`) tells which jobs those are, and under a backlog (jobs that waited in
//! the queue longer than a commit's delay) most jobs skip the write.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::state::{StateDir, open_private};

/// The journal files' names: this, then the generation.
const PREFIX: &str = "intents.";

/// The journal of a running server.
#[derive(Debug)]
pub(crate) struct Intents {
    dir: PathBuf,
    live: Mutex<Live>,
    /// The manifest's last committed sequence number: every change numbered up to it is held.
    committed: AtomicU64,
}

#[derive(Debug)]
struct Live {
    generation: u64,
    /// The oldest generation whose file may still exist.
    oldest: u64,
    /// `None` when the file could not be made; records then only count as lost.
    file: Option<File>,
    /// A write failed and was logged; the next failure is not.
    failing: bool,
}

impl Intents {
    /// Opens the journal in `state`: returns it, with the paths that earlier servers' sealed or
    /// live files still held (in no particular order, duplicates possible). Those files stay
    /// until [`Intents::restored`].
    ///
    /// # Errors
    /// If the state directory cannot be listed.
    pub(crate) fn open(state: &StateDir) -> io::Result<(Intents, Vec<PathBuf>)> {
        let dir = state.path().to_path_buf();
        let mut left = Vec::new();
        let mut newest = 0;
        let mut oldest = u64::MAX;
        for (generation, path) in generations(&dir)? {
            newest = newest.max(generation);
            oldest = oldest.min(generation);
            match fs::read(&path) {
                Ok(bytes) => left.extend(
                    bytes
                        .split(|&b| b == 0)
                        .filter(|p| !p.is_empty())
                        .map(|p| PathBuf::from(OsStr::from_bytes(p))),
                ),
                Err(e) => log::warn!("reading the intent journal {}: {e}", path.display()),
            }
        }
        let intents = Intents {
            live: Mutex::new(Live::start(&dir, newest + 1, oldest.min(newest + 1))),
            dir,
            committed: AtomicU64::new(0),
        };
        Ok((intents, left))
    }

    /// Notes that the manifest has committed every change numbered up to `seq`.
    pub(crate) fn committed(&self, seq: u64) {
        self.committed.fetch_max(seq, Ordering::Release);
    }

    /// Whether a job of the change numbered `seq` needs no entry, the manifest holding its
    /// path already. A change not numbered yet (`None`) is not held.
    pub(crate) fn held(&self, seq: Option<u64>) -> bool {
        seq.is_some_and(|seq| seq <= self.committed.load(Ordering::Acquire))
    }

    /// Records that a job on `path` starts. A failure (a full disk) is logged once per spell
    /// and otherwise survived: the job runs, with the window the journal closes open again.
    pub(crate) fn record(&self, path: &Path) {
        self.record_all(std::slice::from_ref(&path));
    }

    /// [`Intents::record`] for the paths of one batch run, in one write instead of one each.
    pub(crate) fn record_all(&self, paths: &[impl AsRef<Path>]) {
        let len = paths.iter().map(|p| p.as_ref().as_os_str().len() + 1).sum();
        let mut entry = Vec::with_capacity(len);
        for path in paths {
            entry.extend_from_slice(path.as_ref().as_os_str().as_bytes());
            entry.push(0);
        }
        let mut live = self.live.lock();
        let Some(file) = live.file.as_mut() else {
            return;
        };
        // One write: the entries are whole or, after a kill mid-write, a torn tail that names
        // no real path and is harmless.
        match file.write_all(&entry) {
            Ok(()) => live.failing = false,
            Err(e) => {
                if !std::mem::replace(&mut live.failing, true) {
                    log::warn!(
                        "cannot write the intent journal (a job killed before the manifest's next commit may go untold if its file is then removed): {e}"
                    );
                }
            }
        }
    }

    /// Re-records the paths an earlier server left, once the jobs that tell their removals are
    /// queued (so that their queueing is what the next seal covers), and deletes the old files.
    pub(crate) fn restored(&self, paths: &[PathBuf]) {
        for path in paths {
            self.record(path);
        }
        let live = self.live.lock().generation;
        self.delete_through(live - 1);
    }

    /// Starts the next file and returns the generation sealed: what the manifest writer calls
    /// before it takes a batch of updates.
    pub(crate) fn seal(&self) -> u64 {
        let mut live = self.live.lock();
        let sealed = live.generation;
        *live = Live::start(&self.dir, sealed + 1, live.oldest);
        sealed
    }

    /// Deletes the files up to generation `sealed`: a commit that took its batch after that
    /// seal succeeded.
    pub(crate) fn delete_through(&self, sealed: u64) {
        let oldest = {
            let mut live = self.live.lock();
            let oldest = live.oldest;
            live.oldest = live.oldest.max(sealed + 1);
            oldest
        };
        for generation in oldest..=sealed {
            let path = self.dir.join(format!("{PREFIX}{generation}"));
            if let Err(e) = fs::remove_file(&path)
                && e.kind() != io::ErrorKind::NotFound
            {
                log::warn!("removing the intent journal {}: {e}", path.display());
            }
        }
    }
}

impl Live {
    fn start(dir: &Path, generation: u64, oldest: u64) -> Live {
        let path = dir.join(format!("{PREFIX}{generation}"));
        let file = open_private(OpenOptions::new().create(true).append(true), &path);
        let failing = file.is_err();
        if let Err(e) = &file {
            log::warn!("cannot start the intent journal {}: {e}", path.display());
        }
        Live {
            generation,
            oldest,
            file: file.ok(),
            failing,
        }
    }
}

/// The journal files in `dir`, with their generations.
fn generations(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(generation) = name
            .to_str()
            .and_then(|n| n.strip_prefix(PREFIX))
            .and_then(|g| g.parse().ok())
        else {
            continue;
        };
        found.push((generation, entry.path()));
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_seal_covers_is_deleted_after_the_commit_and_the_rest_is_found_at_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(&dir.path().join("state")).unwrap();
        let (intents, left) = Intents::open(&state).unwrap();
        assert!(left.is_empty());
        intents.record(Path::new("/r/committed"));
        let sealed = intents.seal();
        intents.record(Path::new("/r/after the seal"));
        intents.delete_through(sealed);
        drop(intents);
        let (again, left) = Intents::open(&state).unwrap();
        assert_eq!(left, [PathBuf::from("/r/after the seal")]);
        again.restored(&left);
        drop(again);
        let (_, left) = Intents::open(&state).unwrap();
        assert_eq!(left, [PathBuf::from("/r/after the seal")], "re-recorded");
    }
}

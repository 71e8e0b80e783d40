//! What an injection may use of the run (ward, its config, the run's directories, the record of
//! changes, the ledger read so far, the files and directories to remove later, the count of
//! server restarts) and the bounded waits on the ledger. Not the schedule, not the verdict.

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::Options;
use super::config::ConfigFile;
use super::daemon::{Ward, wait_until};
use super::ledger::{self, Directive, Entry, Phase};
use super::run::INTERRUPTED;
use super::workload::WriteLog;

/// The ledger, read incrementally.
#[derive(Debug)]
pub struct LedgerTail {
    /// The ledger file.
    pub path: PathBuf,
    /// How far it has been read.
    pub offset: usize,
    /// Every entry read so far.
    pub entries: Vec<Entry>,
    /// Entries that did not parse.
    pub malformed: usize,
}

impl LedgerTail {
    /// A tail of the ledger at `path`, nothing read yet.
    pub fn new(path: PathBuf) -> LedgerTail {
        LedgerTail {
            path,
            offset: 0,
            entries: Vec::new(),
            malformed: 0,
        }
    }

    /// Reads what was appended since the last read.
    pub fn refresh(&mut self) {
        use std::io::{Seek, SeekFrom};
        // Only what was appended since the last read: the ledger of a long run is large.
        let mut bytes = Vec::new();
        let read = std::fs::File::open(&self.path).and_then(|mut f| {
            f.seek(SeekFrom::Start(self.offset as u64))?;
            f.read_to_end(&mut bytes)
        });
        if read.is_err() || bytes.is_empty() {
            return;
        }
        let (entries, used, malformed) = ledger::parse(&bytes);
        self.offset += used;
        self.entries.extend(entries);
        self.malformed += malformed;
    }

    /// The first entry of `phase` for this content of `path`.
    pub fn find(&self, path: &str, hash: u64, phase: Phase) -> Option<&Entry> {
        self.entries
            .iter()
            .find(|e| e.phase == phase && e.path == path && e.hash == Some(hash))
    }

    /// Waits (at most `limit`) for a ledger entry of `phase` for this content.
    pub fn await_entry(
        &mut self,
        path: &Path,
        hash: u64,
        phase: Phase,
        limit: Duration,
    ) -> Option<Entry> {
        let path = path.to_string_lossy().into_owned();
        let mut found = None;
        wait_until(limit, || {
            self.refresh();
            found = self.find(&path, hash, phase).cloned();
            found.is_some() || INTERRUPTED.load(Ordering::Relaxed)
        });
        found
    }

    /// Waits (at most `limit`) until every one of `files` (path, content hash) has been handled;
    /// returns those that were not. Each entry is looked at once, however long the wait.
    pub fn await_handled(&mut self, files: &[(PathBuf, u64)], limit: Duration) -> Vec<PathBuf> {
        let mut left: HashSet<(String, u64)> = files
            .iter()
            .map(|(p, h)| (p.to_string_lossy().into_owned(), *h))
            .collect();
        let mut next = 0;
        wait_until(limit, || {
            self.refresh();
            for e in &self.entries[next..] {
                if let (true, Some(h)) = (e.handled(), e.hash) {
                    left.remove(&(e.path.clone(), h));
                }
            }
            next = self.entries.len();
            left.is_empty() || INTERRUPTED.load(Ordering::Relaxed)
        });
        let mut missing: Vec<PathBuf> = left.into_iter().map(|(p, _)| p.into()).collect();
        missing.sort();
        missing
    }
}

/// What one injection may use of the run.
pub struct Scene<'a> {
    /// The command line.
    pub opts: &'a Options,
    /// ward under test.
    pub ward: &'a Ward,
    /// Its config file.
    pub config: &'a ConfigFile,
    /// The run's temporary directory (the tree, the state and the ledger are inside).
    pub dir: &'a Path,
    /// The watched tree.
    pub tree: &'a Path,
    /// Every change the harness makes to the tree is recorded here.
    pub log: &'a WriteLog,
    /// The jobs' ledger.
    pub ledger: &'a mut LedgerTail,
    /// Directories of the tree to remove (each file recorded) once their time has come.
    pub removals: &'a mut Vec<(PathBuf, Instant)>,
    /// Files that ask for a death, to remove once their crash reports are in.
    pub pending: &'a mut Vec<PendingRemoval>,
    /// The server's restarts, counted and expected.
    pub restarts: &'a mut Restarts,
    /// The NATS server and `ward work` of the `nats` trigger, if the run has them.
    pub nats: Option<&'a mut super::nats::NatsSide>,
}

/// Files that ask for a death, removed once their reports are in (or a deadline passes), so that
/// a restarted server does not run them again and the tree ends without them.
#[derive(Debug)]
pub struct PendingRemoval {
    /// The files.
    pub files: Vec<PathBuf>,
    /// When they go whether reported or not.
    pub deadline: Instant,
}

/// The keeper's restarts of the server, against the server kills that call for them.
#[derive(Debug, Default)]
pub struct Restarts {
    /// Restarts counted by keepers that are gone (a keeper's count dies with it); the run adds
    /// the last keeper's at the end.
    pub counted: u64,
    /// Server kills the harness made, each to be answered by one restart.
    pub expected: u64,
}

/// How long a fault's directory stays after the fault: long enough for its last jobs.
const REMOVE_AFTER: Duration = Duration::from_secs(10);

impl Scene<'_> {
    /// Removes `dir` (a directory of the tree a fault filled) a while from now, so that the
    /// tree and ward's memory stay bounded in a long run.
    pub fn remove_later(&mut self, dir: PathBuf) {
        self.removals.push((dir, Instant::now() + REMOVE_AFTER));
    }

    /// Removes `files` (which ask for a death) once a crash report names each, or at `deadline`.
    pub fn remove_once_reported(&mut self, files: Vec<PathBuf>, deadline: Instant) {
        self.pending.push(PendingRemoval { files, deadline });
    }

    /// The file of fault `kind` number `n`, in the tree of the worker trigger or (`exec`) of the
    /// exec trigger.
    pub fn fault_file(&self, kind: &str, n: usize, exec: bool) -> PathBuf {
        let base = if exec {
            self.tree.join("exec/faults")
        } else {
            self.tree.join("faults")
        };
        base.join(format!("{kind}-{n}.txt"))
    }

    /// Writes a file that tells its job to do as `directive` says, through the record of
    /// changes; its content hash, or `None` (said on stderr) if it could not be written.
    pub fn write_directive(&self, path: &Path, directive: Directive, n: usize) -> Option<u64> {
        let content = format!("{}fault {n} seq {}\n", directive.line(), self.log.seq());
        match self.log.write(path, content.as_bytes(), "fault") {
            Ok(h) => Some(h),
            Err(e) => {
                eprintln!("\nstress: writing {}: {e}", path.display());
                None
            }
        }
    }

    /// Writes `count` files named `{stem}-{i}.{ext}` into `dir` through the record of changes,
    /// `exts` taken in turn; returns each path with its hash, and the errors.
    pub fn write_files(
        &self,
        dir: &Path,
        stem: &str,
        exts: &[&str],
        count: usize,
        workload: &'static str,
    ) -> (Vec<(PathBuf, u64)>, Vec<String>) {
        self.write_files_with(dir, stem, exts, count, workload, Directive::Plain)
    }

    /// As [`Scene::write_files`], each file telling its job to do as `directive` says.
    pub fn write_files_with(
        &self,
        dir: &Path,
        stem: &str,
        exts: &[&str],
        count: usize,
        workload: &'static str,
        directive: Directive,
    ) -> (Vec<(PathBuf, u64)>, Vec<String>) {
        let first = match directive {
            Directive::Plain => String::new(),
            other => other.line(),
        };
        let mut files = Vec::with_capacity(count);
        let mut errors = Vec::new();
        for i in 0..count {
            let path = dir.join(format!("{stem}-{i}.{}", exts[i % exts.len()]));
            let content = format!("{first}{workload} {}\n", self.log.seq());
            match self.log.write(&path, content.as_bytes(), workload) {
                Ok(hash) => files.push((path, hash)),
                Err(e) => errors.push(format!("writing {}: {e}", path.display())),
            }
        }
        (files, errors)
    }
}

/// Whether the run was interrupted (Ctrl-C, SIGTERM): a wait gives up at once then.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

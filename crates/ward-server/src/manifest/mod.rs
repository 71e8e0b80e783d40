//! The manifest: what ward last processed, persisted in the state directory so that nothing is
//! lost across stops, crashes and restarts.
//!
//! It lives in a [redb](https://docs.rs/redb) database (`manifest.redb`): an embedded, pure-Rust,
//! crash-safe (copy-on-write B-trees, atomic commits) key-value store, chosen over SQLite because it
//! needs no C toolchain and ward only needs ordered maps. Its tables:
//!
//! - `records`: a path → the metadata (size, mtime and ctime in ns, inode, device) of the version
//!   last processed successfully, the outcome of the last attempt, the last change seen and its
//!   sequence number. A removed path keeps a tombstone so that `ward changes --since` reports its
//!   removal; a path renamed away gets its removal as a change of its own when the rename is
//!   queued. A path's key is its directory's number and its name (`keys`).
//! - `dirs` and `dir_paths`: each directory as its parent's number and its name → its number,
//!   and back, so that no part of a path is stored twice.
//! - `pending`: path → the job queued or running for it, until its outcome is recorded. An entry
//!   is held back from the store for up to a second (`deferred`): most jobs finish sooner, and
//!   then never reach it.
//! - `changes`: sequence number → the key of the path whose latest change it numbers, one entry
//!   per path, so a since-query is a range scan bounded by the number of paths, not by history
//!   (in buckets of 64 numbers: `changes`).
//! - `failures`: path → what failed when a job gave up, and on which version (`failures`).
//! - `meta`: the current sequence number.
//!
//! Writes are grouped by the server (one commit per flush, not one fsync per file). After a crash
//! at most the unflushed group is missing, and startup reconciliation redoes it: a file whose
//! metadata differs from its last successful version is processed again.
//!
//! [`Manifest::reconcile`] is that comparison, for a root at startup and for a subtree on a
//! rescan or a directory change. A subtree's records are read in the byte order of their paths
//! (`ordered`), the order [`ward_watch::walk_files`] walks in: the diff is one merge of the two
//! streams, with no map of either side, and its cost stays close to that of the walk and its
//! `stat` per file.
//!
//! This file holds the module's face: the types its callers see and the [`Manifest`] handle. The
//! database, its tables, opening and reads are in `store`; a record's key in `keys` and its bytes
//! in `record`; the since-index in `changes`; writing a group of updates in `apply`, holding pending entries back in `deferred`; the comparison with the disk in
//! `reconcile`, reading the records it compares in `ordered`. When a group is
//! committed is not the manifest's business: the server's writer thread decides
//! (`tracker::writer`).

// redb's error type is large; it lives only inside the read closures and is boxed into
// `Error::Store` right there.
#![allow(clippy::result_large_err)]

use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use redb::Database;

use crate::jobs::Event;

mod apply;
mod changes;
mod deferred;
mod failures;
mod keys;
mod migrate;
mod ordered;
mod reconcile;
mod record;
mod store;

pub use failures::Failure;
pub use reconcile::{Reconciled, Threads};

/// The identity and metadata of one version of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileMeta {
    /// Size in bytes.
    pub size: u64,
    /// Modification time, ns since the epoch.
    pub mtime_ns: i64,
    /// Status change time, ns since the epoch.
    pub ctime_ns: i64,
    /// Inode number.
    pub ino: u64,
    /// Device number.
    pub dev: u64,
}

impl From<ward_watch::FileStat> for FileMeta {
    fn from(st: ward_watch::FileStat) -> FileMeta {
        FileMeta {
            size: st.size,
            mtime_ns: st.mtime_ns,
            ctime_ns: st.ctime_ns,
            ino: st.ino,
            dev: st.dev,
        }
    }
}

impl FileMeta {
    /// The metadata of `meta`, as stat returned it.
    pub fn of(meta: &Metadata) -> FileMeta {
        FileMeta {
            size: meta.size(),
            mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
            ctime_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
            ino: meta.ino(),
            dev: meta.dev(),
        }
    }

    /// Stats `path` without following a symlink; `None` if it is gone.
    pub fn read(path: &Path) -> Option<FileMeta> {
        std::fs::symlink_metadata(path)
            .ok()
            .map(|m| FileMeta::of(&m))
    }
}

/// What the manifest knows of one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The version last processed successfully (`None`: never, or its removal was processed).
    pub processed: Option<FileMeta>,
    /// Whether the last attempt succeeded.
    pub last_ok: bool,
    /// The last change seen.
    pub event: Event,
    /// Its sequence number.
    pub seq: u64,
}

/// A change to record, from the server's loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// A change was seen and its job queued.
    Queued {
        /// The path.
        path: PathBuf,
        /// What happened.
        event: Event,
        /// The previous path of a rename.
        old_path: Option<PathBuf>,
        /// The change's sequence number, given when the job was made (the number its message
        /// and its consumer see), the rename's removal of its old path numbered one less;
        /// `None`: the next one, given by `Manifest::apply`.
        seq: Option<u64>,
    },
    /// A job finished: `processed` is the version it ran on when it succeeded (`None` for a
    /// processed removal).
    Finished {
        /// The path.
        path: PathBuf,
        /// What the job told its consumer: only a `Removed` job (or the old path of a rename)
        /// processes a removal, even if the file was already gone when another job ran.
        event: Event,
        /// Whether it succeeded.
        ok: bool,
        /// The version it processed, when it succeeded and the file exists.
        processed: Option<FileMeta>,
        /// The old path of a rename's job. Its removal is recorded by an update of its own; this
        /// tells which rename finished when several were queued for the path.
        old_path: Option<PathBuf>,
        /// The number its job's change was given, if any: the path's change if it has no record
        /// yet (else, as `Queued`'s `None`, the next one).
        seq: Option<u64>,
    },
    /// A job failed its last attempt: recorded in the `failures` table (its `Finished`, not ok,
    /// follows).
    GaveUp {
        /// The path.
        path: PathBuf,
        /// What failed, on which version, and how (boxed: every update in a queue is the size
        /// of the largest, and give-ups are rare).
        failure: Box<Failure>,
    },
    /// A job that succeeded here (a publish) gave up where it was handed on (its last delivery
    /// to a remote worker failed): recorded in `failures` like a give-up, and the version it
    /// gave up on is no longer processed, so that `ward retry` owes its job again.
    GaveUpRemotely {
        /// The path.
        path: PathBuf,
        /// What failed, on which version (the one recorded as processed), and how.
        failure: Box<Failure>,
    },
    /// `ward retry`: the give-ups of a path and every path below it are forgotten, so that the
    /// next comparison of that subtree owes their jobs again.
    Retried {
        /// The path, a file or a directory.
        path: PathBuf,
    },
}

impl Update {
    /// The path the update is about.
    pub fn path(&self) -> &Path {
        match self {
            Update::Queued { path, .. }
            | Update::Finished { path, .. }
            | Update::GaveUp { path, .. }
            | Update::GaveUpRemotely { path, .. }
            | Update::Retried { path } => path,
        }
    }
}

/// One line of `ward changes --since`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeEntry {
    /// Its sequence number.
    pub seq: u64,
    /// The path.
    pub path: PathBuf,
    /// What happened last.
    pub event: Event,
}

/// How the manifest was opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    /// It was there and intact.
    Existing,
    /// There was none: every file will be processed once.
    Fresh,
    /// It was unreadable or corrupt; it was moved to `moved_to` and rebuilt empty, so every file
    /// will be processed once.
    Rebuilt {
        /// Where the damaged store now is.
        moved_to: PathBuf,
        /// What was wrong.
        reason: String,
    },
}

/// The open manifest.
#[derive(Debug)]
pub struct Manifest {
    /// `None` after a failed write until [`Manifest::reopen`] succeeds: redb refuses further use of
    /// a database that saw an I/O error until it is opened again.
    db: Option<Database>,
    path: PathBuf,
    seq: u64,
    /// Pending entries not written yet (`deferred`).
    deferred: deferred::Deferred,
}

/// What the tests of every file of the module build their manifests from.
#[cfg(test)]
mod fixtures {
    use super::{FileMeta, Update};
    use crate::jobs::Event;

    pub(super) fn meta(size: u64) -> FileMeta {
        FileMeta {
            size,
            mtime_ns: 1,
            ctime_ns: 2,
            ino: 3,
            dev: 4,
        }
    }

    pub(super) fn queued(path: &str, event: Event) -> Update {
        Update::Queued {
            path: path.into(),
            event,
            old_path: None,
            seq: None,
        }
    }

    pub(super) fn finished(path: &str, event: Event, processed: Option<FileMeta>) -> Update {
        Update::Finished {
            path: path.into(),
            event,
            ok: true,
            processed,
            old_path: None,
            seq: None,
        }
    }
}

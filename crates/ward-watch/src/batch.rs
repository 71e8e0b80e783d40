//! What the watcher delivers: batches of coalesced changes, rescans and reported errors.

use std::path::{Path, PathBuf};

use crate::Error;

/// One delivery from the watcher: items in the order a consumer should apply them.
///
/// The order matters only where items depend on each other (a rename before a later change at its
/// old path, a directory before its contents); a consumer that applies items one by one, in order,
/// and resolves each [`Rescan`] with [`Snapshot::rescan`](crate::Snapshot::rescan) converges to the
/// state of the disk.
#[derive(Debug, Default)]
pub struct Batch {
    /// The items, oldest first.
    pub items: Vec<Item>,
}

impl Batch {
    /// The changes of this batch, in order.
    pub fn changes(&self) -> impl Iterator<Item = &Change> {
        self.items.iter().filter_map(|i| match i {
            Item::Change(c) => Some(c),
            _ => None,
        })
    }

    /// The rescans of this batch, in order.
    pub fn rescans(&self) -> impl Iterator<Item = &Rescan> {
        self.items.iter().filter_map(|i| match i {
            Item::Rescan(r) => Some(r),
            _ => None,
        })
    }

    /// The errors the watcher reported and survived.
    pub fn errors(&self) -> impl Iterator<Item = &Error> {
        self.items.iter().filter_map(|i| match i {
            Item::Error(e) => Some(e),
            _ => None,
        })
    }
}

/// One element of a [`Batch`].
#[derive(Debug)]
#[non_exhaustive]
pub enum Item {
    /// A coalesced change of one path.
    Change(Change),
    /// A subtree whose individual changes were not kept: compare it with the disk.
    Rescan(Rescan),
    /// Something went wrong that the watcher survived (a missing root, no inotify watches left, ...).
    Error(Error),
}

/// A coalesced change of one path, after every rule of the pending set has been applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// The path as it is now (for a rename, the new path).
    pub path: PathBuf,
    /// What happened to it.
    pub kind: ChangeKind,
    /// Whether the path is (or, for a removal, was) a directory. Symlinks are never directories here:
    /// they are not followed.
    pub is_dir: bool,
}

impl Change {
    /// A change of `kind` at `path`.
    pub fn new(path: impl Into<PathBuf>, kind: ChangeKind, is_dir: bool) -> Self {
        Change {
            path: path.into(),
            kind,
            is_dir,
        }
    }
}

/// What happened to a path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    /// The path did not exist and now does.
    Created,
    /// The path's content or metadata changed (including an editor's atomic save over it).
    Modified,
    /// The path existed and is gone; for a directory, with everything under it.
    Removed,
    /// The path was moved here from `from` (which no longer exists); for a directory, with its contents.
    Renamed {
        /// The old path.
        from: PathBuf,
    },
}

impl ChangeKind {
    /// A short lower-case name: `created`, `modified`, `removed` or `renamed`.
    pub fn name(&self) -> &'static str {
        match self {
            ChangeKind::Created => "created",
            ChangeKind::Modified => "modified",
            ChangeKind::Removed => "removed",
            ChangeKind::Renamed { .. } => "renamed",
        }
    }
}

/// A subtree whose individual changes were not kept: the consumer must compare it with the disk,
/// for example with [`Snapshot::rescan`](crate::Snapshot::rescan).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rescan {
    /// The subtree's root (itself included in the comparison).
    pub path: PathBuf,
    /// Why the watcher could not keep the individual changes.
    pub reason: RescanReason,
}

impl Rescan {
    /// Whether `path` lies in this rescan's subtree.
    pub fn covers(&self, path: &Path) -> bool {
        path.starts_with(&self.path)
    }
}

/// Why a [`Rescan`] was emitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RescanReason {
    /// More paths were pending than the cap allows; this was the busiest subtree.
    PendingCap,
    /// The kernel's event queue overflowed (inotify `IN_Q_OVERFLOW`): events were lost.
    KernelOverflow,
    /// The watcher's own event buffer was full: events were dropped before being coalesced.
    EventBufferFull,
    /// A root appeared (it was missing at start, or came back after it disappeared).
    RootAppeared,
    /// A root switched to polling (out of inotify watches); events were lost during the switch.
    BackendChanged,
    /// An ignore file changed: paths may have become ignored or visible.
    IgnoreRulesChanged,
    /// A file system was mounted or unmounted here: what the watches saw is hidden or uncovered.
    MountsChanged,
    /// A directory that could not be watched (unreadable) had its permissions changed.
    PermissionsChanged,
}

impl RescanReason {
    /// A short kebab-case name, e.g. `pending-cap`.
    pub fn name(&self) -> &'static str {
        match self {
            RescanReason::PendingCap => "pending-cap",
            RescanReason::KernelOverflow => "kernel-overflow",
            RescanReason::EventBufferFull => "event-buffer-full",
            RescanReason::RootAppeared => "root-appeared",
            RescanReason::BackendChanged => "backend-changed",
            RescanReason::IgnoreRulesChanged => "ignore-rules-changed",
            RescanReason::MountsChanged => "mounts-changed",
            RescanReason::PermissionsChanged => "permissions-changed",
        }
    }
}

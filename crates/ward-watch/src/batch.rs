//! What the watcher delivers: batches of coalesced changes, rescans and reported errors.

use std::fmt;
use std::path::{self, Path, PathBuf};

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
///
/// Its `Display` is one line for people: the kind's [name](ChangeKind::name), then the path; a
/// rename shows the old path, an arrow and the new one; a directory's paths end in `/`.
/// Paths are shown with [`Path::display`], so a name that is not UTF-8 is shown lossily: read the
/// fields for the exact paths.
///
/// ```
/// use ward_watch::{Change, ChangeKind};
///
/// let created = Change::new("src/a.rs", ChangeKind::Created, false);
/// assert_eq!(created.to_string(), "created src/a.rs");
///
/// let renamed = Change::new("src/b.rs", ChangeKind::Renamed { from: "src/a.rs".into() }, false);
/// assert_eq!(renamed.to_string(), "renamed src/a.rs -> src/b.rs");
/// assert_eq!(renamed.kind.to_string(), "renamed from src/a.rs");
///
/// let removed = Change::new("build", ChangeKind::Removed, true);
/// assert_eq!(removed.to_string(), "removed build/");
/// ```
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
///
/// Its `Display` is its [name](ChangeKind::name), and for a rename the old path as well:
/// `created`, `modified`, `removed`, `renamed from src/a.rs`. [`Change`]'s `Display` shows the
/// whole change.
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

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = ShownPath(&self.path, self.is_dir);
        match &self.kind {
            ChangeKind::Renamed { from } => {
                write!(f, "renamed {} -> {path}", ShownPath(from, self.is_dir))
            }
            kind => write!(f, "{} {path}", kind.name()),
        }
    }
}

impl fmt::Display for ChangeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChangeKind::Renamed { from } => write!(f, "renamed from {}", from.display()),
            kind => f.write_str(kind.name()),
        }
    }
}

/// A path as a [`Change`] shows it: a directory's ends in `/` (`build/`), as `ls -F` shows one,
/// unless it already ends in a separator.
struct ShownPath<'a>(&'a Path, bool);

impl fmt::Display for ShownPath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ShownPath(path, is_dir) = *self;
        write!(f, "{}", path.display())?;
        let ends_in_separator = path
            .as_os_str()
            .as_encoded_bytes()
            .last()
            .is_some_and(|&b| path::is_separator(char::from(b)));
        if is_dir && !ends_in_separator {
            f.write_str("/")?;
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn renamed(from: &str) -> ChangeKind {
        ChangeKind::Renamed { from: from.into() }
    }

    #[test]
    fn a_change_displays_as_its_kind_then_its_path() {
        let cases = [
            (
                Change::new("src/a.rs", ChangeKind::Created, false),
                "created src/a.rs",
            ),
            (
                Change::new("src/a.rs", ChangeKind::Modified, false),
                "modified src/a.rs",
            ),
            (
                Change::new("src/a.rs", ChangeKind::Removed, false),
                "removed src/a.rs",
            ),
            (
                Change::new("/abs/b", renamed("/abs/a"), false),
                "renamed /abs/a -> /abs/b",
            ),
            (
                Change::new("src", ChangeKind::Created, true),
                "created src/",
            ),
            (
                Change::new("build", ChangeKind::Removed, true),
                "removed build/",
            ),
            (
                Change::new("new", renamed("old"), true),
                "renamed old/ -> new/",
            ),
            (
                Change::new("dir/", ChangeKind::Modified, true),
                "modified dir/",
            ),
        ];
        for (change, want) in cases {
            assert_eq!(change.to_string(), want, "{change:?}");
        }
    }

    #[test]
    fn a_change_kind_displays_as_its_name_and_a_renames_old_path() {
        assert_eq!(ChangeKind::Created.to_string(), "created");
        assert_eq!(ChangeKind::Modified.to_string(), "modified");
        assert_eq!(ChangeKind::Removed.to_string(), "removed");
        assert_eq!(renamed("src/a.rs").to_string(), "renamed from src/a.rs");
    }

    #[cfg(unix)]
    #[test]
    fn a_name_that_is_not_utf8_is_displayed_lossily() {
        use std::ffi::OsStr;
        use std::os::unix::ffi::OsStrExt;

        let path = Path::new(OsStr::from_bytes(b"caf\xe9.txt"));
        let change = Change::new(path, ChangeKind::Created, false);
        assert_eq!(change.to_string(), "created caf\u{fffd}.txt");
    }
}

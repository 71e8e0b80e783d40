//! How the watcher's thread turns one notify event into pending changes: creations,
//! modifications, removals, renames (pairing their two halves) and permission changes. Not here:
//! events that were lost or that the watches cannot see (`rescan`), and installing watches
//! (`worker`, `watches`).

use std::path::Path;
use std::time::{Duration, Instant};

use notify::event::{CreateKind, ModifyKind, RemoveKind, RenameMode};
use notify::{Event, EventKind};

use super::DIRECTORY;
use super::worker::Worker;
use crate::pending::Op;
use crate::{Error, RescanReason};

/// How long a rename's first half (`IN_MOVED_FROM`) waits for its second before it counts as a
/// move out of the watched tree.
pub(super) const RENAME_PAIRING: Duration = Duration::from_millis(2);

impl Worker {
    /// Handles one raw event, received by notify's thread at `at`.
    pub(super) fn handle(&mut self, ev: notify::Result<Event>, at: Instant) {
        let now = self.now(at);
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => return self.notice(Error::Backend(e)),
        };
        if ev.need_rescan() {
            log::warn!("ward-watch: the kernel's event queue overflowed; rescanning the roots");
            return self.overflow(RescanReason::KernelOverflow);
        }
        if let EventKind::Modify(ModifyKind::Name(RenameMode::To)) = ev.kind
            && let (Some((from, tracker, _)), Some(to)) = (&self.held_from, ev.paths.first())
            && ev.tracker() == Some(*tracker)
        {
            let (from, to) = (from.clone(), to.clone());
            self.held_from = None;
            return self.renamed(&from, &to, now);
        }
        self.flush_held_from(now, true);
        for path in &ev.paths {
            match ev.kind {
                EventKind::Create(kind) => {
                    let is_dir = match kind {
                        CreateKind::Folder => true,
                        CreateKind::File => false,
                        _ => match seen(path) {
                            Seen::Hidden => continue,
                            seen => seen == Seen::Dir,
                        },
                    };
                    // fanotify sees what is made in a new directory: nothing to list.
                    if is_dir && self.watches.sees_everything() {
                        self.created_empty(path, now);
                    } else {
                        self.created(path, is_dir, now);
                    }
                }
                EventKind::Modify(ModifyKind::Name(RenameMode::From)) => match ev.tracker() {
                    Some(t) => self.held_from = Some((path.clone(), t, now)),
                    // A watched directory moved (IN_MOVE_SELF): its parent reports the move,
                    // unless it is a root.
                    None if self.is_root(path) => self.root_gone(path, now),
                    None => {}
                },
                EventKind::Modify(ModifyKind::Name(RenameMode::To)) => match seen(path) {
                    Seen::Hidden => {}
                    seen => self.created(path, seen == Seen::Dir, now),
                },
                EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => {}
                EventKind::Modify(ModifyKind::Name(_)) => match seen(path) {
                    Seen::Hidden => {}
                    Seen::Gone => {
                        let is_dir = self.watches.watched.contains_key(path.as_path());
                        self.removed(path, is_dir, now);
                    }
                    seen => self.created(path, seen == Seen::Dir, now),
                },
                EventKind::Modify(ModifyKind::Metadata(_)) if self.watches.sees_everything() => {
                    self.changed_seen(path, ev.info() == Some(DIRECTORY), now);
                }
                EventKind::Modify(ModifyKind::Metadata(_)) => self.metadata_changed(path, now),
                EventKind::Modify(_) => self.modified(path, now),
                EventKind::Remove(kind) => {
                    let is_dir = kind == RemoveKind::Folder
                        || self.watches.watched.contains_key(path.as_path());
                    self.removed(path, is_dir, now);
                }
                EventKind::Access(_) | EventKind::Any | EventKind::Other => {}
            }
        }
    }

    /// A rename's first half that found no second half is a move out of the watched tree.
    pub(super) fn flush_held_from(&mut self, now: Instant, force: bool) {
        if let Some((from, _, t)) = &self.held_from
            && (force || now >= *t + RENAME_PAIRING)
        {
            let from = from.clone();
            self.held_from = None;
            let is_dir = self.watches.watched.contains_key(from.as_path());
            self.removed(&from, is_dir, now);
        }
    }

    fn created(&mut self, path: &Path, is_dir: bool, now: Instant) {
        if self.rules.is_ignored(path, is_dir) {
            return;
        }
        if self.rules.is_ignore_file(path) {
            self.ignore_file_changed(path, now);
        }
        if self.is_root(path) {
            return;
        }
        self.pending.record(path, Op::Create, is_dir, now);
        if is_dir {
            self.watch_tree(path, true, now, None);
        }
    }

    /// A directory was made, empty: what comes in it has events of its own (fanotify).
    fn created_empty(&mut self, path: &Path, now: Instant) {
        if self.rules.is_ignored(path, true) || self.is_root(path) {
            return;
        }
        self.pending.record(path, Op::Create, true, now);
    }

    /// `path`'s metadata changed, seen by a backend that tells whether it is a directory and
    /// needs no watch to be installed for one (fanotify).
    fn changed_seen(&mut self, path: &Path, is_dir: bool, now: Instant) {
        if self.rules.is_ignored(path, is_dir) || self.is_root(path) {
            return;
        }
        if self.rules.is_ignore_file(path) {
            self.ignore_file_changed(path, now);
        }
        self.pending.record(path, Op::Modify, is_dir, now);
    }

    /// New content was moved onto `path` from a place the watcher does not see.
    fn replaced(&mut self, path: &Path, now: Instant) {
        if self.rules.is_ignore_file(path) {
            self.ignore_file_changed(path, now);
        }
        self.pending.record(path, Op::Replace, false, now);
    }

    fn modified(&mut self, path: &Path, now: Instant) {
        let mut is_dir = self.watches.watched.contains_key(path);
        // An ignored directory has no watch, so only the disk can say a rule like `build/` applies.
        if !is_dir && self.rules.is_ignored(path, true) && !self.rules.is_ignored(path, false) {
            is_dir = is_dir_now(path);
        }
        if self.rules.is_ignored(path, is_dir) || self.is_root(path) {
            return;
        }
        if self.rules.is_ignore_file(path) {
            self.ignore_file_changed(path, now);
        }
        self.pending.record(path, Op::Modify, is_dir, now);
    }

    /// A path's metadata changed. A directory whose permissions changed may have become
    /// readable: one that had no watch (it could not be read when it was found) is watched and
    /// listed now, and one that had is compared again with what lies under it.
    fn metadata_changed(&mut self, path: &Path, now: Instant) {
        let watched = self.watches.watched.contains_key(path);
        if watched && !self.is_root(path) {
            // Its subdirectories that could not be watched may be readable now.
            self.resync(path, now);
        } else if !watched {
            match seen(path) {
                Seen::Dir if !self.rules.is_ignored(path, true) => {
                    self.watch_tree(path, false, now, None);
                    self.pending
                        .rescan(path, RescanReason::PermissionsChanged, now);
                    return;
                }
                // In a directory that cannot be searched: not even its kind is known. That
                // directory's own permission change rescans it.
                Seen::Hidden => return,
                _ => {}
            }
        }
        self.modified(path, now);
    }

    fn removed(&mut self, path: &Path, is_dir: bool, now: Instant) {
        if self.is_root(path) {
            return self.root_gone(path, now);
        }
        if is_dir {
            self.watches.forget_subtree(path);
            self.rules.forget_subtree(path);
        }
        if self.rules.is_ignored(path, is_dir) {
            return;
        }
        if self.rules.is_ignore_file(path) {
            self.ignore_file_changed(path, now);
        }
        self.pending.record(path, Op::Remove, is_dir, now);
    }

    fn renamed(&mut self, from: &Path, to: &Path, now: Instant) {
        let is_dir = self.watches.watched.contains_key(from) || is_dir_now(to);
        match (
            self.rules.is_ignored(from, is_dir),
            self.rules.is_ignored(to, is_dir),
        ) {
            (true, true) => return,
            // Typically an editor's temporary file (ignored) renamed over its target.
            (true, false) if !is_dir => return self.replaced(to, now),
            (true, false) => return self.created(to, is_dir, now),
            (false, true) => return self.removed(from, is_dir, now),
            (false, false) => {}
        }
        if self.is_root(from) {
            self.root_gone(from, now);
            return self.created(to, is_dir, now);
        }
        if self.rules.is_ignore_file(from) || self.rules.is_ignore_file(to) {
            self.ignore_file_changed(from, now);
            self.ignore_file_changed(to, now);
        }
        self.pending.record_rename(from, to, is_dir, now);
        if is_dir {
            // The moved directory's watches still name its old paths: replace them, then record
            // its contents, which may have changed while no watch covered them.
            self.watches.forget_subtree(from);
            self.rules.forget_subtree(from);
            self.watch_tree(to, true, now, None);
        }
    }
}

pub(super) fn is_dir_now(path: &Path) -> bool {
    path.symlink_metadata().is_ok_and(|m| m.is_dir())
}

/// What the disk says a path is now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seen {
    Dir,
    /// A file, a symlink, anything but a directory.
    Other,
    Gone,
    /// It cannot be looked at: a directory above it is not searchable (`EACCES`). Neither its
    /// kind nor whether it exists is known, so no change is made of it.
    Hidden,
}

fn seen(path: &Path) -> Seen {
    match path.symlink_metadata() {
        Ok(m) if m.is_dir() => Seen::Dir,
        Ok(_) => Seen::Other,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Seen::Hidden,
        Err(_) => Seen::Gone,
    }
}

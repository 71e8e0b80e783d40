//! What the watches can no longer see, each ending in a rescan: lost events, roots that go and
//! come back, mounts, changed ignore files, running out of inotify watches. Not here: the
//! everyday events (`events`) and the backends (`watches`).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use super::events::is_dir_now;
use super::watches::WatchFailure;
use super::worker::Worker;
use crate::mounts;
use crate::pending::Op;
use crate::snapshot::walk;
use crate::{Error, RescanReason};

/// Past this many directories whose watches wait to be checked, the roots' are checked instead.
const RESYNC_DIRS_MAX: usize = 1024;

impl Worker {
    /// The kernel refused a watch under `root`: say so with numbers, and poll it if allowed.
    pub(super) fn out_of_watches(&mut self, root: &Path, now: Instant) {
        let Some(i) = self.roots.iter().position(|r| r.path == root) else {
            return;
        };
        if self.watches.polled_roots.contains(root) {
            return;
        }
        let mut needed = 0;
        walk(
            &self.rules.clone(),
            root,
            |_| {
                needed += 1;
                true
            },
            |_, _| {},
        );
        let polling = self.poll_fallback;
        if !self.roots[i].reported_limit || polling {
            self.roots[i].reported_limit = true;
            self.notice(Error::TooManyWatches {
                root: root.to_path_buf(),
                needed,
                limit: max_user_watches(),
                polling,
            });
        }
        if polling {
            self.watches.forget_subtree(root);
            self.watches.polled_roots.insert(root.to_path_buf());
            self.watch_tree(root, false, now, None);
            self.pending.rescan(root, RescanReason::BackendChanged, now);
        }
    }

    /// Events were lost: every root is rescanned, and its watches are checked against the disk
    /// before that rescan is delivered (once per delivery, however long the storm lasts).
    pub(super) fn overflow(&mut self, reason: RescanReason) {
        let roots = self.present_roots();
        self.overflow_in(roots, reason);
    }

    /// Events were lost in `dirs`: each is rescanned, and its watches checked against the disk
    /// before the next delivery. A directory above a root (an event at the root itself) rescans
    /// that root; one in no root, nothing.
    pub(super) fn overflow_in(&mut self, dirs: Vec<PathBuf>, reason: RescanReason) {
        let now = self.now(Instant::now());
        self.held_from = None;
        let roots = self.present_roots();
        for dir in dirs {
            let scope = if roots.iter().any(|r| dir.starts_with(r)) {
                vec![dir]
            } else {
                roots
                    .iter()
                    .filter(|r| r.starts_with(&dir))
                    .cloned()
                    .collect()
            };
            for path in scope {
                self.pending.rescan(&path, reason, now);
                self.resync_dirs.insert(path);
            }
        }
        // A storm of scattered losses between two deliveries checks the roots' watches once.
        if self.resync_dirs.len() > RESYNC_DIRS_MAX {
            self.resync_dirs = roots.into_iter().collect();
        }
    }

    /// The roots that exist now.
    pub(super) fn present_roots(&self) -> Vec<PathBuf> {
        self.roots
            .iter()
            .filter(|r| r.present)
            .map(|r| r.path.clone())
            .collect()
    }

    /// Brings the watches under `dir` in line with the disk and the rules.
    pub(super) fn resync(&mut self, dir: &Path, now: Instant) {
        if self.watches.sees_everything() {
            return;
        }
        let mut seen = HashSet::new();
        self.watch_tree(dir, false, now, Some(&mut seen));
        let stale: Vec<Arc<Path>> = self
            .watches
            .watched
            .range::<Path, _>((std::ops::Bound::Included(dir), std::ops::Bound::Unbounded))
            .map(|(p, _)| p)
            .take_while(|p| p.starts_with(dir))
            .filter(|p| !seen.contains::<Path>(p))
            .cloned()
            .collect();
        for p in stale {
            self.watches.unwatch(&p);
        }
    }

    pub(super) fn check_roots(&mut self, now: Instant) {
        if now < self.next_root_check || self.roots.iter().all(|r| r.present) {
            return;
        }
        self.next_root_check = now + self.root_check_every;
        for i in 0..self.roots.len() {
            let root = self.roots[i].path.clone();
            if !self.roots[i].present && root.is_dir() {
                log::info!("ward-watch: root {} appeared", root.display());
                self.roots[i].present = true;
                self.watch_anew(&root, now);
                self.pending.rescan(&root, RescanReason::RootAppeared, now);
            }
        }
    }

    pub(super) fn root_gone(&mut self, root: &Path, now: Instant) {
        let Some(i) = self.roots.iter().position(|r| r.path == root) else {
            return;
        };
        if !self.roots[i].present {
            return;
        }
        self.roots[i].present = false;
        self.next_root_check = now + self.root_check_every;
        self.watches.forget_subtree(root);
        self.rules.forget_subtree(root);
        self.pending.record(root, Op::Remove, true, now);
        self.notice(Error::RootGone {
            path: root.to_path_buf(),
        });
    }

    /// The mount table changed: each mount point inside a root that appeared or disappeared
    /// hides or uncovers what the watches there saw, so its subtree is watched anew and rescanned.
    pub(super) fn mounts_changed(&mut self, now: Instant) {
        let after = match mounts::current() {
            Ok(after) => after,
            Err(e) => {
                log::warn!("ward-watch: reading the mount table: {e}");
                return;
            }
        };
        let roots: Vec<PathBuf> = self.roots.iter().map(|r| r.path.clone()).collect();
        let changed = mounts::changed_under(&self.mounts, &after, &roots);
        self.mounts = after;
        for point in changed {
            if self.rules.is_ignored(&point, true) {
                continue;
            }
            log::info!(
                "ward-watch: a file system was mounted or unmounted at {}; rescanning it",
                point.display()
            );
            self.watches.forget_subtree(&point);
            self.rules.forget_subtree(&point);
            if is_dir_now(&point) {
                self.watch_anew(&point, now);
            }
            self.pending
                .rescan(&point, RescanReason::MountsChanged, now);
        }
    }

    /// Watches `dir` and what is below it, as found now: with fanotify, marks its file system
    /// (a new mount's) and walks nothing.
    pub(super) fn watch_anew(&mut self, dir: &Path, now: Instant) {
        if !self.watches.sees_everything() {
            self.watch_tree(dir, false, now, None);
            return;
        }
        let Some(root) = self.rules.root_of(dir).map(Path::to_path_buf) else {
            return;
        };
        if let Err(WatchFailure::Other(e)) = self.watches.watch(dir, &root) {
            self.notice(Error::Watch {
                path: dir.to_path_buf(),
                source: e,
            });
        }
    }

    /// An ignore file changed: its directory's rules are re-read and the directory rescanned.
    pub(super) fn ignore_file_changed(&mut self, file: &Path, now: Instant) {
        let Some(dir) = file.parent() else { return };
        if let Err(e) = self.rules.load_dir(dir) {
            self.notice(e);
        }
        let dir = dir.to_path_buf();
        self.resync(&dir, now);
        self.pending
            .rescan(&dir, RescanReason::IgnoreRulesChanged, now);
    }
}

/// The inotify watch limit that applies: the system's, or the user namespace's own where that is
/// lower (a container's).
#[cfg(target_os = "linux")]
fn max_user_watches() -> Option<u64> {
    let read =
        |path: &str| -> Option<u64> { std::fs::read_to_string(path).ok()?.trim().parse().ok() };
    match (
        read("/proc/sys/fs/inotify/max_user_watches"),
        read("/proc/sys/user/max_inotify_watches"),
    ) {
        (Some(system), Some(namespace)) => Some(system.min(namespace)),
        (one, other) => one.or(other),
    }
}

#[cfg(not(target_os = "linux"))]
fn max_user_watches() -> Option<u64> {
    None
}

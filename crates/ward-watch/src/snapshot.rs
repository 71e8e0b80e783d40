//! The snapshot-and-diff helper: what a consumer keeps of the tree, kept in step with delivered
//! changes, and the walk that turns a [`Rescan`](crate::Rescan) into concrete changes.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::ops::{Bound, ControlFlow};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use crate::listing::{Entry, FileStat, Listing};
use crate::{Batch, Change, ChangeKind, IgnoreRules, Item};

/// What a snapshot remembers of one path: enough to tell a modified file from an unchanged one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Meta {
    is_dir: bool,
    len: u64,
    mtime: Option<SystemTime>,
    inode: u64,
}

impl Meta {
    /// A directory's own size and times change with its entries, which are reported themselves.
    const DIR: Meta = Meta {
        is_dir: true,
        len: 0,
        mtime: None,
        inode: 0,
    };

    fn of(m: &fs::Metadata) -> Meta {
        if m.is_dir() {
            return Meta::DIR;
        }
        Meta {
            is_dir: false,
            len: m.len(),
            mtime: m.modified().ok(),
            inode: inode(m),
        }
    }
}

#[cfg(unix)]
fn inode(m: &fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    m.ino()
}

#[cfg(not(unix))]
fn inode(_: &fs::Metadata) -> u64 {
    0
}

/// A consumer's picture of the watched tree, kept in step with delivered changes, that turns each
/// [`Rescan`](crate::Rescan) into the concrete changes between the picture and the disk.
///
/// Feed every batch to [`Snapshot::apply_batch`] (or each change to [`Snapshot::apply`] and each
/// rescan to [`Snapshot::rescan`]) and the snapshot converges to the disk, whatever the watcher had
/// to collapse. It walks with the watcher's [`IgnoreRules`], never follows symlinks, and holds one
/// small entry per path: its memory is the consumer's, proportional to the tree.
#[derive(Debug)]
pub struct Snapshot {
    rules: Arc<IgnoreRules>,
    entries: BTreeMap<PathBuf, Meta>,
}

impl Snapshot {
    /// An empty snapshot using `rules` (take them from [`Watcher::ignore_rules`](crate::Watcher::ignore_rules)).
    pub fn new(rules: Arc<IgnoreRules>) -> Self {
        Snapshot {
            rules,
            entries: BTreeMap::new(),
        }
    }

    /// A snapshot of every root of `rules`, as on disk now.
    pub fn of_roots(rules: Arc<IgnoreRules>) -> Self {
        let mut s = Snapshot::new(rules);
        let roots = s.rules.roots().to_vec();
        for root in roots {
            s.rescan(&root);
        }
        s
    }

    /// How many paths the snapshot holds (roots included).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the snapshot holds nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether the snapshot holds `path`.
    pub fn contains(&self, path: &Path) -> bool {
        self.entries.contains_key(path)
    }

    /// Every path in the snapshot, in order (a directory before its contents).
    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.entries.keys().map(PathBuf::as_path)
    }

    /// Applies every item of `batch` in order and returns the concrete changes: the batch's own
    /// changes, and each rescan resolved into the changes it hid.
    pub fn apply_batch(&mut self, batch: &Batch) -> Vec<Change> {
        let mut out = Vec::new();
        for item in &batch.items {
            match item {
                Item::Change(c) => {
                    self.apply(c);
                    out.push(c.clone());
                }
                Item::Rescan(r) => out.extend(self.rescan(&r.path)),
                Item::Error(_) => {}
            }
        }
        out
    }

    /// Brings the snapshot in step with one delivered change.
    pub fn apply(&mut self, change: &Change) {
        match &change.kind {
            ChangeKind::Removed => self.remove_subtree(&change.path),
            ChangeKind::Renamed { from } => {
                let moved = self.take_subtree(from);
                self.remove_subtree(&change.path);
                for (p, m) in moved {
                    let rest = p
                        .strip_prefix(from)
                        .map(Path::to_path_buf)
                        .unwrap_or_default();
                    let to = if rest.as_os_str().is_empty() {
                        change.path.clone()
                    } else {
                        change.path.join(rest)
                    };
                    self.entries.insert(to, m);
                }
                self.refresh(&change.path);
            }
            ChangeKind::Created | ChangeKind::Modified => self.refresh(&change.path),
        }
    }

    /// Compares `path`'s subtree (itself included) with the disk, updates the snapshot, and returns
    /// the differences: `Removed` for the topmost path of each vanished subtree, `Created` for each
    /// new path (a directory before its contents), `Modified` for each file whose size, time or
    /// inode changed. A path whose kind changed (file ↔ directory) is removed then created.
    pub fn rescan(&mut self, path: &Path) -> Vec<Change> {
        let mut disk = BTreeMap::new();
        if let Ok(m) = fs::symlink_metadata(path)
            && !self.rules.is_ignored(path, m.is_dir())
            && self.rules.root_of(path).is_some()
        {
            disk.insert(path.to_path_buf(), Meta::of(&m));
            if m.is_dir() {
                walk(
                    &self.rules,
                    path,
                    |_| true,
                    |p, is_dir| {
                        let meta = if is_dir {
                            Meta::DIR
                        } else {
                            match fs::symlink_metadata(p) {
                                Ok(m) => Meta::of(&m),
                                // Gone since it was listed.
                                Err(_) => return,
                            }
                        };
                        disk.insert(p.to_path_buf(), meta);
                    },
                );
            }
        }
        let old = self.take_subtree(path);
        let mut changes = Vec::new();
        let mut removed_dir: Option<PathBuf> = None;
        for (p, m) in &old {
            if removed_dir.as_ref().is_some_and(|d| p.starts_with(d)) {
                continue;
            }
            match disk.get(p) {
                None => {
                    changes.push(Change::new(p.clone(), ChangeKind::Removed, m.is_dir));
                    if m.is_dir {
                        removed_dir = Some(p.clone());
                    }
                }
                Some(d) if d.is_dir != m.is_dir => {
                    changes.push(Change::new(p.clone(), ChangeKind::Removed, m.is_dir));
                    if m.is_dir {
                        removed_dir = Some(p.clone());
                    }
                }
                Some(d) if d != m => {
                    changes.push(Change::new(p.clone(), ChangeKind::Modified, false))
                }
                Some(_) => {}
            }
        }
        for (p, d) in &disk {
            let known = old.get(p).is_some_and(|m| m.is_dir == d.is_dir);
            if !known {
                changes.push(Change::new(p.clone(), ChangeKind::Created, d.is_dir));
            }
        }
        self.entries.extend(disk);
        changes
    }

    fn refresh(&mut self, path: &Path) {
        match fs::symlink_metadata(path) {
            Ok(m) if !self.rules.is_ignored(path, m.is_dir()) => {
                let meta = Meta::of(&m);
                if let Some(old) = self.entries.insert(path.to_path_buf(), meta)
                    && old.is_dir
                    && !meta.is_dir
                {
                    self.remove_children(path);
                }
            }
            // Gone (or ignored) by now: a later change says so; until then, mirror the disk.
            _ => self.remove_subtree(path),
        }
    }

    fn remove_subtree(&mut self, path: &Path) {
        self.take_subtree(path);
    }

    fn remove_children(&mut self, dir: &Path) {
        let keys = self.child_keys(dir);
        for k in keys {
            self.entries.remove(&k);
        }
    }

    fn take_subtree(&mut self, path: &Path) -> BTreeMap<PathBuf, Meta> {
        let mut out = BTreeMap::new();
        for k in self.child_keys(path) {
            if let Some(m) = self.entries.remove(&k) {
                out.insert(k, m);
            }
        }
        if let Some(m) = self.entries.remove(path) {
            out.insert(path.to_path_buf(), m);
        }
        out
    }

    fn child_keys(&self, dir: &Path) -> Vec<PathBuf> {
        self.entries
            .range::<Path, _>((Bound::Excluded(dir), Bound::Unbounded))
            .map(|(p, _)| p)
            .take_while(|p| p.starts_with(dir))
            .cloned()
            .collect()
    }
}

/// Walks the directory `top` depth-first without following symlinks, skipping ignored paths and
/// loading ignore files on the way. `enter` is called for each directory (top included) before it
/// is listed, and may refuse it; `visit` is called for each entry below `top`, with whether it is
/// a directory (from the directory listing: no `stat` per entry).
///
/// This is the walk [`Snapshot`] and the watcher use, for consumers that keep their own picture of
/// the tree (ward's manifest) and must see exactly the same paths.
pub fn walk(
    rules: &IgnoreRules,
    top: &Path,
    mut enter: impl FnMut(&Path) -> bool,
    mut visit: impl FnMut(&Path, bool),
) {
    let mut stack = vec![top.to_path_buf()];
    while let Some(dir) = stack.pop() {
        if !enter(&dir) {
            continue;
        }
        if let Err(e) = rules.load_dir(&dir) {
            log::warn!("{e}");
        }
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) => {
                log_walk_error(&dir, &e);
                continue;
            }
        };
        for entry in entries {
            let (path, kind) = match entry.and_then(|e| Ok((e.path(), e.file_type()?))) {
                Ok(x) => x,
                Err(e) => {
                    log_walk_error(&dir, &e);
                    continue;
                }
            };
            let is_dir = kind.is_dir();
            if rules.is_ignored(&path, is_dir) {
                continue;
            }
            visit(&path, is_dir);
            if is_dir {
                stack.push(path);
            }
        }
    }
}

/// Walks the directory `top` like [`walk`] (the same paths: ignore rules and ignore files applied
/// the same way, symlinks not followed) but visits only the entries that are not directories, in
/// the byte order of their paths, each with its [`FileStat`].
///
/// The order is that of a sorted map keyed by the paths' bytes (`a-b` < `a.b` < `a/b` < `a0`),
/// so a consumer can merge the walk with such a map in one pass, without collecting either side.
/// Each file is stat-ed (without following a symlink) relative to its directory when the walk
/// reaches it, which is cheaper than a `stat` of its full path; one that vanishes before is
/// skipped. A directory's listing (its names, a few bytes each besides) waits, sorted, while its
/// subdirectories are walked.
pub fn walk_files(rules: &IgnoreRules, top: &Path, mut visit: impl FnMut(&Path, FileStat)) {
    walk_files_after(rules, top, None, |path, stat| {
        visit(path, stat);
        ControlFlow::Continue(())
    });
}

/// [`walk_files`] from the first file whose path sorts after `after` (the whole walk without it),
/// until `visit` breaks: a consumer that stopped at a file resumes after it. What sorts before
/// `after` is neither stat-ed nor kept, except the directories on the way to it, and nothing is
/// stat-ed past the file where `visit` breaks.
pub fn walk_files_after(
    rules: &IgnoreRules,
    top: &Path,
    after: Option<&Path>,
    mut visit: impl FnMut(&Path, FileStat) -> ControlFlow<()>,
) {
    let after = after.map(|a| a.as_os_str().as_encoded_bytes());
    let mut path = top.to_path_buf();
    // The listings of `path` and its ancestors below `top`: what is left of each.
    let mut listings = vec![Listing::read(rules, &path, after)];
    while let Some(listing) = listings.last_mut() {
        match listing.pop_into(&mut path) {
            Some(Entry::File(stat)) => {
                let flow = stat.map(|stat| visit(&path, stat));
                path.pop();
                if flow.is_some_and(|f| f.is_break()) {
                    return;
                }
            }
            Some(Entry::Dir) => listings.push(Listing::read(rules, &path, after)),
            None => {
                listings.pop();
                if !listings.is_empty() {
                    path.pop();
                }
            }
        }
    }
}

/// The order of two siblings' paths and their subtrees' paths, by bytes: a directory's subtree
/// sorts as its name followed by `/` (no name holds a `/`, so one comparison decides for the whole
/// subtree).
pub(crate) fn path_order(a: &[u8], a_dir: bool, b: &[u8], b_dir: bool) -> std::cmp::Ordering {
    let common = a.len().min(b.len());
    let after = |name: &[u8], dir: bool| match name.get(common) {
        Some(&byte) => Some(byte),
        None => dir.then_some(b'/'),
    };
    a[..common]
        .cmp(&b[..common])
        .then_with(|| after(a, a_dir).cmp(&after(b, b_dir)))
}

pub(crate) fn log_walk_error(dir: &Path, e: &io::Error) {
    if e.kind() == io::ErrorKind::NotFound {
        // Removed while walked: its removal is an event of its own.
        log::debug!("walking {}: {e}", dir.display());
    } else {
        log::warn!("cannot list {}: {e}", dir.display());
    }
}

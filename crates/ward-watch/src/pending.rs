//! The pending set: per-path coalescing rules, the quiet window and maximum wait, and the cap that
//! collapses the busiest subtree into a rescan. Pure data: time is passed in, nothing here blocks
//! or touches the disk.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::path_key::{Key, KeyBuf};
use crate::{Change, ChangeKind, Item, Rescan, RescanReason};

/// What one raw event says about one path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Create,
    Modify,
    Remove,
    /// A file moved onto the path from where the watcher does not look (an ignored temporary
    /// file): the path's content was replaced, whether or not it existed before.
    Replace,
}

/// The coalesced state of one pending path, relative to what the consumer last saw.
#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    /// Did not exist, exists now.
    Created,
    /// Existed, changed.
    Modified,
    /// Existed, gone.
    Removed,
    /// Existed, was removed, exists again (a file: modified; a directory: removed then created).
    Replaced,
    /// Moved here from `from`; `modified` if its content changed after the move.
    Renamed { from: PathBuf, modified: bool },
    /// This subtree (itself included) is to be compared with the disk.
    Rescan(RescanReason),
}

#[derive(Debug)]
struct Entry {
    state: State,
    is_dir: bool,
    /// Position in the order of delivery: a later entry never has to be applied before an earlier one.
    seq: u64,
    /// First event of this entry (for the maximum wait).
    first: Instant,
    /// Latest event of this entry (for the quiet window).
    last: Instant,
}

/// Per-path coalescing with a quiet window, a maximum wait and a cap on the number of paths.
///
/// Delivery order: every entry has a sequence number; when some entries are due, every entry up to
/// the highest due sequence number is delivered with them, in sequence order, so a consumer never
/// sees a change before one it depends on (a rename before a later change at its old path, a
/// directory's creation before its contents).
#[derive(Debug)]
pub(crate) struct Pending {
    entries: BTreeMap<KeyBuf, Entry>,
    order: BTreeMap<u64, PathBuf>,
    due: BTreeSet<(Instant, u64)>,
    /// Origin of each pending rename → the path of its `Renamed` entry.
    origins: HashMap<PathBuf, PathBuf>,
    rescans: usize,
    next_seq: u64,
    quiet: Duration,
    max_wait: Duration,
    cap: usize,
    roots: Vec<PathBuf>,
    collapses: u64,
}

impl Pending {
    pub(crate) fn new(
        quiet: Duration,
        max_wait: Duration,
        cap: usize,
        roots: Vec<PathBuf>,
    ) -> Self {
        Pending {
            entries: BTreeMap::new(),
            order: BTreeMap::new(),
            due: BTreeSet::new(),
            origins: HashMap::new(),
            rescans: 0,
            next_seq: 0,
            quiet,
            max_wait: max_wait.max(quiet),
            cap: cap.max(1),
            roots,
            collapses: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// How many times the cap collapsed a subtree into a rescan.
    pub(crate) fn collapses(&self) -> u64 {
        self.collapses
    }

    /// When the next entry becomes due, if any is pending.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.due.first().map(|(t, _)| *t)
    }

    /// Whether some entry is due at `now`.
    pub(crate) fn has_due(&self, now: Instant) -> bool {
        self.next_due().is_some_and(|t| t <= now)
    }

    /// Records one event at `path`.
    pub(crate) fn record(&mut self, path: &Path, op: Op, is_dir: bool, now: Instant) {
        if self.absorbed(path, now) {
            return;
        }
        let old = self.entries.get(Key::new(path)).map(|e| e.state.clone());
        let new = match (op, old) {
            (Op::Create, None) => Some(State::Created),
            (Op::Create, Some(State::Removed)) => Some(State::Replaced),
            (Op::Create, Some(s)) => Some(s),
            (Op::Modify, None) => Some(State::Modified),
            (Op::Modify, Some(State::Renamed { from, .. })) => Some(State::Renamed {
                from,
                modified: true,
            }),
            (Op::Modify, Some(s)) => Some(s),
            (Op::Replace, None | Some(State::Modified)) => Some(State::Modified),
            (Op::Replace, Some(State::Removed | State::Replaced)) => Some(State::Replaced),
            (Op::Replace, Some(State::Created)) => Some(State::Created),
            (Op::Replace, Some(State::Renamed { from, .. })) => {
                self.remove_entry(path);
                self.earlier_removal(&from, is_dir, now);
                Some(State::Modified)
            }
            (Op::Replace, Some(s @ State::Rescan(_))) => Some(s),
            (Op::Remove, old) => {
                if is_dir {
                    self.cancel_children(path, now);
                }
                match old {
                    None | Some(State::Modified | State::Removed | State::Replaced) => {
                        Some(State::Removed)
                    }
                    Some(State::Created) => None,
                    Some(State::Renamed { from, .. }) => {
                        self.remove_entry(path);
                        self.earlier_removal(&from, is_dir, now);
                        return;
                    }
                    Some(State::Rescan(_)) => unreachable!("a pending rescan absorbs its own path"),
                }
            }
        };
        match new {
            Some(state) => self.set(path, state, is_dir, now, None),
            None => {
                self.remove_entry(path);
            }
        }
        self.enforce_cap(now);
    }

    /// Records a rename of `from` to `to` (both inside the watched tree and not ignored).
    pub(crate) fn record_rename(&mut self, from: &Path, to: &Path, is_dir: bool, now: Instant) {
        match (self.absorbed(from, now), self.absorbed(to, now)) {
            (true, true) => return,
            (true, false) => return self.record(to, Op::Create, is_dir, now),
            (false, true) => return self.record(from, Op::Remove, is_dir, now),
            (false, false) => {}
        }
        if from == to {
            return self.record(to, Op::Modify, is_dir, now);
        }
        let src = self.remove_entry(from);
        let dst = self.remove_entry(to);
        if let Some(State::Renamed {
            from: overwritten, ..
        }) = dst.as_ref().map(|e| &e.state)
        {
            // The content that had moved to `to` is gone: its origin is simply removed.
            let overwritten = overwritten.clone();
            self.earlier_removal(&overwritten, is_dir, now);
        }
        let dst_state = dst.map(|e| e.state);
        let first = src.as_ref().map_or(now, |e| e.first);
        // A chain keeps the sequence number of its first rename: that is when the origin vanished.
        let mut keep_seq = None;
        let state = match src.map(|e| (e.state, e.seq)) {
            None | Some((State::Removed, _)) => State::Renamed {
                from: from.to_path_buf(),
                modified: false,
            },
            Some((State::Modified, _)) => State::Renamed {
                from: from.to_path_buf(),
                modified: true,
            },
            Some((
                State::Renamed {
                    from: origin,
                    modified,
                },
                seq,
            )) => {
                keep_seq = Some(seq);
                if origin == to {
                    State::Modified
                } else {
                    State::Renamed {
                        from: origin,
                        modified,
                    }
                }
            }
            Some((s @ (State::Created | State::Replaced), _)) => {
                if s == State::Replaced {
                    self.earlier_removal(from, is_dir, now);
                }
                if is_dir || dst_state == Some(State::Created) {
                    State::Created
                } else {
                    // An editor's atomic save: a new file renamed over the target is the target modified.
                    State::Modified
                }
            }
            Some((State::Rescan(_), _)) => unreachable!("a pending rescan absorbs its own path"),
        };
        let seq = keep_seq.unwrap_or_else(|| self.take_seq());
        if let State::Renamed { from: origin, .. } = &state {
            self.origins.insert(origin.clone(), to.to_path_buf());
        }
        self.insert(
            to,
            Entry {
                state,
                is_dir,
                seq,
                first,
                last: now,
            },
        );
        if is_dir {
            self.rekey_children(from, to, now);
        }
        self.enforce_cap(now);
    }

    /// Replaces everything pending in `path`'s subtree (itself included) with one rescan.
    pub(crate) fn rescan(&mut self, path: &Path, reason: RescanReason, now: Instant) {
        if self.absorbed(path, now) {
            return;
        }
        let mut dropped = self.remove_subtree(path);
        if let Some(e) = self.remove_entry(path) {
            dropped.push((path.to_path_buf(), e));
        }
        for (_, e) in dropped {
            if let State::Renamed { from, .. } = e.state
                && !from.starts_with(path)
            {
                self.earlier_removal(&from, e.is_dir, now);
            }
        }
        let seq = self.take_seq();
        self.insert(
            path,
            Entry {
                state: State::Rescan(reason),
                is_dir: true,
                seq,
                first: now,
                last: now,
            },
        );
        self.enforce_cap(now);
    }

    /// Takes the entries due at `now`, with every entry that must be applied before them, at
    /// most `max` (at least one), oldest first: the rest stay due and come next time, in order.
    pub(crate) fn take_due(&mut self, now: Instant, max: usize) -> Vec<Item> {
        let Some(max_seq) = self
            .due
            .iter()
            .take_while(|(t, _)| *t <= now)
            .map(|(_, s)| *s)
            .max()
        else {
            return Vec::new();
        };
        let seqs: Vec<u64> = self
            .order
            .range(..=max_seq)
            .take(max.max(1))
            .map(|(s, _)| *s)
            .collect();
        self.take_seqs(seqs)
    }

    fn take_seqs(&mut self, seqs: Vec<u64>) -> Vec<Item> {
        let mut items = Vec::with_capacity(seqs.len());
        for seq in seqs {
            let path = self.order[&seq].clone();
            let Some(entry) = self.remove_entry(&path) else {
                continue;
            };
            let is_dir = entry.is_dir;
            let change = |kind| {
                Item::Change(Change {
                    path: path.clone(),
                    kind,
                    is_dir,
                })
            };
            match entry.state {
                State::Created => items.push(change(ChangeKind::Created)),
                State::Modified => items.push(change(ChangeKind::Modified)),
                State::Removed => items.push(change(ChangeKind::Removed)),
                State::Replaced if is_dir => {
                    items.push(change(ChangeKind::Removed));
                    items.push(change(ChangeKind::Created));
                }
                State::Replaced => items.push(change(ChangeKind::Modified)),
                State::Renamed { from, modified } => {
                    items.push(change(ChangeKind::Renamed { from }));
                    if modified && !is_dir {
                        items.push(change(ChangeKind::Modified));
                    }
                }
                State::Rescan(reason) => items.push(Item::Rescan(Rescan {
                    path: path.clone(),
                    reason,
                })),
            }
        }
        items
    }

    /// If a pending rescan covers `path`, the event is part of it: it only delays the rescan.
    fn absorbed(&mut self, path: &Path, now: Instant) -> bool {
        if self.rescans == 0 {
            return false;
        }
        let covering = path
            .ancestors()
            .find(|a| {
                matches!(
                    self.entries.get(Key::new(a)),
                    Some(Entry {
                        state: State::Rescan(_),
                        ..
                    })
                )
            })
            .map(Path::to_path_buf);
        match covering {
            Some(r) => {
                self.touch(&r, now);
                true
            }
            None => false,
        }
    }

    /// The content that had been moved away from `origin` is gone: `origin` is removed, before
    /// whatever is pending at it now.
    fn earlier_removal(&mut self, origin: &Path, is_dir: bool, now: Instant) {
        if self
            .origins
            .get(origin)
            .is_some_and(|p| !self.entries.contains_key(Key::new(p)))
        {
            self.origins.remove(origin);
        }
        if self.absorbed(origin, now) {
            return;
        }
        let state = match self.entries.get(Key::new(origin)).map(|e| &e.state) {
            None => State::Removed,
            Some(State::Created | State::Modified) => State::Replaced,
            Some(s) => s.clone(),
        };
        self.set(origin, state, is_dir, now, None);
    }

    /// A directory was removed: what was pending inside it no longer matters.
    fn cancel_children(&mut self, dir: &Path, now: Instant) {
        for (_, e) in self.remove_subtree(dir) {
            if let State::Renamed { from, .. } = e.state
                && !from.starts_with(dir)
            {
                self.earlier_removal(&from, e.is_dir, now);
            }
        }
    }

    /// A directory moved: its pending children move with it, after it in delivery order.
    fn rekey_children(&mut self, from: &Path, to: &Path, now: Instant) {
        let moved = self.remove_subtree(from);
        let rebase = |p: &Path| match p.strip_prefix(from) {
            Ok(rest) => to.join(rest),
            Err(_) => p.to_path_buf(),
        };
        for (path, mut e) in moved {
            let new_path = rebase(&path);
            if let State::Renamed { from: origin, .. } = &mut e.state {
                *origin = rebase(origin);
                self.origins.insert(origin.clone(), new_path.clone());
            }
            e.seq = self.take_seq();
            e.last = now;
            self.insert(&new_path, e);
        }
    }

    /// Keeps memory bounded: past the cap, the busiest subtree becomes one rescan.
    fn enforce_cap(&mut self, now: Instant) {
        while self.entries.len() > self.cap {
            let Some(target) = self.busiest_subtree() else {
                return;
            };
            log::debug!(
                "pending cap {} reached: {} becomes a rescan",
                self.cap,
                target.display()
            );
            self.collapses += 1;
            self.rescan(&target, RescanReason::PendingCap, now);
        }
    }

    /// The deepest directory holding at least half the pending paths (a root at worst).
    fn busiest_subtree(&self) -> Option<PathBuf> {
        let mut counts: HashMap<&Path, usize> = HashMap::new();
        for path in self.entries.keys().map(KeyBuf::as_path) {
            let root = self
                .roots
                .iter()
                .filter(|r| path.starts_with(r))
                .max_by_key(|r| r.as_os_str().len());
            for a in path.ancestors().skip(1) {
                if root.is_some_and(|r| !a.starts_with(r)) || a.as_os_str().is_empty() {
                    break;
                }
                *counts.entry(a).or_default() += 1;
                if root.is_some_and(|r| a == r) {
                    break;
                }
            }
        }
        let half = self.entries.len().div_ceil(2);
        let deepest_busy = counts
            .iter()
            .filter(|(_, n)| **n >= half)
            .max_by_key(|(p, n)| (p.components().count(), **n))
            .map(|(p, _)| p.to_path_buf());
        deepest_busy.or_else(|| {
            counts
                .iter()
                .max_by_key(|(_, n)| **n)
                .map(|(p, _)| p.to_path_buf())
        })
    }

    /// Sets the state of `path`, creating its entry (with a new sequence number) if needed.
    fn set(&mut self, path: &Path, state: State, is_dir: bool, now: Instant, seq: Option<u64>) {
        if let Some(e) = self.entries.get_mut(Key::new(path)) {
            let old_due = due_of(e, self.quiet, self.max_wait);
            e.state = state;
            e.is_dir = is_dir;
            e.last = now;
            let new_due = due_of(e, self.quiet, self.max_wait);
            let seq = e.seq;
            self.due.remove(&(old_due, seq));
            self.due.insert((new_due, seq));
        } else {
            let seq = seq.unwrap_or_else(|| self.take_seq());
            self.insert(
                path,
                Entry {
                    state,
                    is_dir,
                    seq,
                    first: now,
                    last: now,
                },
            );
        }
    }

    fn touch(&mut self, path: &Path, now: Instant) {
        if let Some(e) = self.entries.get_mut(Key::new(path)) {
            let old_due = due_of(e, self.quiet, self.max_wait);
            e.last = now;
            let new_due = due_of(e, self.quiet, self.max_wait);
            self.due.remove(&(old_due, e.seq));
            self.due.insert((new_due, e.seq));
        }
    }

    fn take_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    fn insert(&mut self, path: &Path, entry: Entry) {
        if let Some(old) = self.remove_entry(path) {
            log::trace!(
                "replacing pending entry {:?} at {}",
                old.state,
                path.display()
            );
        }
        if matches!(entry.state, State::Rescan(_)) {
            self.rescans += 1;
        }
        self.order.insert(entry.seq, path.to_path_buf());
        self.due
            .insert((due_of(&entry, self.quiet, self.max_wait), entry.seq));
        self.entries.insert(KeyBuf::new(path.to_path_buf()), entry);
    }

    fn remove_entry(&mut self, path: &Path) -> Option<Entry> {
        let e = self.entries.remove(Key::new(path))?;
        self.order.remove(&e.seq);
        self.due
            .remove(&(due_of(&e, self.quiet, self.max_wait), e.seq));
        match &e.state {
            State::Rescan(_) => self.rescans -= 1,
            State::Renamed { from, .. } if self.origins.get(from).is_some_and(|p| p == path) => {
                self.origins.remove(from);
            }
            _ => {}
        }
        Some(e)
    }

    /// Removes and returns every entry strictly inside `dir`.
    fn remove_subtree(&mut self, dir: &Path) -> Vec<(PathBuf, Entry)> {
        // Keys sort as their components do, so a directory's descendants follow it contiguously.
        let keys: Vec<PathBuf> = self
            .entries
            .range::<Key, _>((Bound::Excluded(Key::new(dir)), Bound::Unbounded))
            .map(|(p, _)| p.as_path())
            .take_while(|p| p.starts_with(dir))
            .map(Path::to_path_buf)
            .collect();
        keys.into_iter()
            .filter_map(|k| {
                let e = self.remove_entry(&k)?;
                Some((k, e))
            })
            .collect()
    }
}

fn due_of(e: &Entry, quiet: Duration, max_wait: Duration) -> Instant {
    (e.last + quiet).min(e.first + max_wait)
}

#[cfg(test)]
mod tests;

//! Events dropped because the raw buffer was full, kept as what must be compared with the disk
//! instead: the directories they happened in, up to [`DIRS_MAX`], else every root. A burst in one
//! corner of a large tree then costs a comparison of that corner, not of the whole tree. Not
//! here: the rescans themselves (`rescan.rs`).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use notify::Event;
use parking_lot::Mutex;

/// Past this many directories, lost events rescan the roots: a bound on the memory that losing
/// events costs, and a storm that wide is better compared at once.
const DIRS_MAX: usize = 256;

/// What lost events leave to rescan.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Scope {
    /// Every root, for the kernel's own overflow, whose notice was lost with the events after
    /// it: said as the kernel's, not as the buffer's.
    KernelOverflow,
    /// Every root: an event with no path (an error) was lost, or too many directories.
    Roots,
    /// The directories the lost events happened in (for an event at a root, the root's parent:
    /// the worker keeps a rescan inside the roots).
    Dirs(Vec<PathBuf>),
}

/// Shared by the backends' threads, which drop events, and the watcher's, which rescans.
#[derive(Debug, Default)]
pub(super) struct Lost {
    /// Set after each loss is noted: the watcher's thread looks at nothing else until it is.
    any: AtomicBool,
    noted: Mutex<Noted>,
}

#[derive(Debug, Default)]
struct Noted {
    dirs: HashSet<PathBuf>,
    roots: bool,
    kernel: bool,
}

impl Noted {
    fn note(&mut self, event: &notify::Result<Event>) {
        self.kernel |= matches!(event, Ok(e) if e.need_rescan());
        let paths = match event {
            Ok(e) if !e.need_rescan() && !e.paths.is_empty() => e.paths.as_slice(),
            _ => &[],
        };
        if paths.is_empty() {
            self.roots = true;
        }
        if !self.roots {
            for dir in paths.iter().filter_map(|p| p.parent()) {
                if self.dirs.contains(dir) {
                    continue;
                }
                if self.dirs.len() >= DIRS_MAX {
                    self.roots = true;
                    break;
                }
                self.dirs.insert(dir.to_path_buf());
            }
        }
        if self.roots {
            self.dirs = HashSet::new();
        }
    }
}

impl Lost {
    /// Notes that `events` were dropped.
    pub(super) fn add(&self, events: &[notify::Result<Event>]) {
        {
            let mut noted = self.noted.lock();
            for event in events {
                noted.note(event);
            }
        }
        self.any.store(true, Ordering::Release);
    }

    /// What the events lost since the last call leave to rescan, if any were lost.
    pub(super) fn take(&self) -> Option<Scope> {
        if !self.any.swap(false, Ordering::AcqRel) {
            return None;
        }
        let noted = std::mem::take(&mut *self.noted.lock());
        if noted.kernel {
            return Some(Scope::KernelOverflow);
        }
        if noted.roots {
            return Some(Scope::Roots);
        }
        let mut dirs: Vec<PathBuf> = noted.dirs.into_iter().collect();
        dirs.sort();
        // A directory inside another one lost is covered by that one's rescan.
        dirs.dedup_by(|inner, outer| inner.starts_with(&*outer));
        Some(Scope::Dirs(dirs))
    }
}

#[cfg(test)]
mod tests {
    use notify::EventKind;

    use super::*;

    fn at(paths: &[&str]) -> notify::Result<Event> {
        let mut e = Event::new(EventKind::Any);
        for p in paths {
            e = e.add_path(PathBuf::from(p));
        }
        Ok(e)
    }

    #[test]
    fn lost_events_leave_their_directories_or_past_a_bound_the_roots() {
        let lost = Lost::default();
        assert_eq!(lost.take(), None, "nothing lost");
        lost.add(&[at(&["/r/a/f1"])]);
        lost.add(&[at(&["/r/a/f2"])]);
        lost.add(&[at(&["/r/b/c/f", "/r/d/g"])]);
        lost.add(&[at(&["/r/b/h"])]);
        assert_eq!(
            lost.take(),
            Some(Scope::Dirs(vec![
                PathBuf::from("/r/a"),
                PathBuf::from("/r/b"),
                PathBuf::from("/r/d")
            ])),
            "each directory once, one inside another covered by it"
        );
        assert_eq!(lost.take(), None, "taken");
        lost.add(&[at(&["/r/a/f"])]);
        lost.add(&[Err(notify::Error::generic("lost"))]);
        assert_eq!(lost.take(), Some(Scope::Roots), "an event with no path");
        lost.add(&[at(&["/r/a/f"])]);
        lost.add(&[Ok(
            Event::new(EventKind::Other).set_flag(notify::event::Flag::Rescan)
        )]);
        assert_eq!(
            lost.take(),
            Some(Scope::KernelOverflow),
            "the kernel's overflow, lost in turn, is still said"
        );
        for i in 0..=DIRS_MAX {
            lost.add(&[at(&[&format!("/r/d{i}/f")])]);
        }
        assert_eq!(lost.take(), Some(Scope::Roots), "too many directories");
        lost.add(&[at(&["/r/a/f"])]);
        assert_eq!(
            lost.take(),
            Some(Scope::Dirs(vec![PathBuf::from("/r/a")])),
            "the bound starts over"
        );
    }
}

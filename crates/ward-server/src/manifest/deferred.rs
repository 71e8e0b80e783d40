//! Pending entries held back from the store for a while: most jobs finish within a second of
//! their queueing, and a job whose queueing and outcome land in different commits would otherwise
//! insert its `pending` entry in one and remove it in the next. In a burst that churn was about
//! two fifths of the writer's work (each insert into a redb leaf rewrites the offsets of every
//! entry after it). Not how a group's updates fold (`apply`), nor the store's tables (`store`).
//!
//! An entry held here is written to the store once it has waited [`DEFER`] (the writer wakes
//! for it), when more than [`DEFER_MAX`] wait, and at the writer's last commit. A server killed
//! meanwhile loses only what the entry adds to the record the same commit wrote: the next
//! start's comparison owes the job again from the record (a file whose version differs from
//! the one processed, or a recorded path that is gone), as a creation, modification or removal
//! rather than the rename or the event it was.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long an entry is held back before it is written.
pub(super) const DEFER: Duration = Duration::from_secs(1);
/// Past this many entries held back, a commit writes them all: the memory they take stays
/// bounded (about 100 bytes each, the path's bytes included) whatever the backlog. A published
/// burst's jobs finish about 0.3 s after their queueing at about 20,000 a second, so some 6,000
/// wait at a time; a backlog of exec jobs, which wait longer than `DEFER`, reaches the bound and
/// gains nothing from holding.
pub(super) const DEFER_MAX: usize = 8_192;

/// The held-back entries: a path's key in `pending` → its entry.
#[derive(Debug, Default)]
pub(super) struct Deferred {
    jobs: HashMap<Box<[u8]>, Held>,
}

/// A job as the table's value (its event byte, and a rename's old path), and when it was first
/// held back: a few bytes, as thousands are held at once.
#[derive(Debug)]
pub(super) struct Held {
    event: u8,
    old_path: Option<Box<[u8]>>,
    since: Instant,
}

impl Held {
    /// The job, as the table's value.
    pub(super) fn job(&self) -> Vec<u8> {
        let old = self.old_path.as_deref().unwrap_or_default();
        let mut job = Vec::with_capacity(1 + old.len());
        job.push(self.event);
        job.extend_from_slice(old);
        job
    }
}

/// Where a path's pending job was before a group: the store, held back here, or nowhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin {
    Absent,
    Stored,
    Deferred,
}

/// What a commit changes among the held-back entries, applied only once it is committed.
#[derive(Debug, Default)]
pub(super) struct Moves<'k> {
    /// Held back from now on (or still, with a new job).
    pub(super) hold: Vec<(&'k [u8], Vec<u8>)>,
    /// No longer held back: finished, or written to the store.
    pub(super) release: Vec<Box<[u8]>>,
}

impl Deferred {
    /// The job held back for `key`, if any.
    pub(super) fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.jobs.get(key).map(Held::job)
    }

    pub(super) fn len(&self) -> usize {
        self.jobs.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// Every entry held back, with whether it has waited `DEFER` at `now`.
    pub(super) fn iter(&self, now: Instant) -> impl Iterator<Item = (&[u8], &Held, bool)> {
        self.jobs
            .iter()
            .map(move |(key, held)| (&key[..], held, now >= held.since + DEFER))
    }

    /// Whether any entry has waited `DEFER` at `now`.
    pub(super) fn any_due(&self, now: Instant) -> bool {
        self.due().is_some_and(|due| now >= due)
    }

    /// When the oldest entry will have waited `DEFER`.
    pub(super) fn due(&self) -> Option<Instant> {
        Some(self.jobs.values().map(|held| held.since).min()? + DEFER)
    }

    /// Applies a committed group's `moves` at `now`; an entry held back again keeps its age.
    pub(super) fn apply(&mut self, moves: Moves<'_>, now: Instant) {
        for key in moves.release {
            self.jobs.remove(&key);
        }
        for (key, job) in moves.hold {
            let Some((&event, old)) = job.split_first() else {
                continue;
            };
            let old_path = (!old.is_empty()).then(|| old.into());
            match self.jobs.get_mut(key) {
                Some(held) => {
                    held.event = event;
                    held.old_path = old_path;
                }
                None => {
                    let held = Held {
                        event,
                        old_path,
                        since: now,
                    };
                    self.jobs.insert(key.into(), held);
                }
            }
        }
    }
}

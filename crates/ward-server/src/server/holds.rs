//! What holds job starts back: memory running short (`[jobs] min_available_mb`) and the holds a
//! user asked for by name (`ward hold NAME`, around a `git checkout`), which also hold back
//! subscription deliveries. The pool starts no job, and no batch run starts, while either is in
//! place; changes meanwhile are coalesced per path (the pool's queue, a batch runner's owed
//! paths and the manifest keep the latest of each) and come once after the last release. Not
//! here: why memory is short (`pressure`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::job::JobPool;

use crate::feed::Feed;

/// The longest a hold may last; one asked without a timeout lasts [`DEFAULT_HOLD`].
pub(crate) const MAX_HOLD: Duration = Duration::from_secs(3600);
/// How long a hold lasts unless its asker says otherwise: it ends on its own if the asker dies
/// before it releases it.
pub(crate) const DEFAULT_HOLD: Duration = Duration::from_secs(60);

/// Holds in place; the pool's hold and the feed's follow them.
#[derive(Debug, Default)]
pub(super) struct Holds {
    /// Each named hold and when it ends on its own.
    named: BTreeMap<String, Instant>,
    /// Why memory is short, while it is.
    memory: Option<String>,
}

impl Holds {
    /// Places (or renews) hold `name` for `timeout`; returns the holds now in place.
    pub(super) fn hold(
        &mut self,
        name: &str,
        timeout: Duration,
        pool: &JobPool,
        feed: &Feed,
    ) -> Vec<String> {
        let held = self.pool_held();
        let timeout = timeout.min(MAX_HOLD);
        log::info!(
            "hold {name}: no job starts and no change is delivered until it is released, at most {timeout:?}"
        );
        self.named.insert(name.to_owned(), Instant::now() + timeout);
        self.apply(held, pool, feed);
        self.names()
    }

    /// Ends hold `name`; returns the holds still in place.
    ///
    /// # Errors
    /// If there is no such hold (it timed out, or was never placed): said, naming those there
    /// are.
    pub(super) fn release(
        &mut self,
        name: &str,
        pool: &JobPool,
        feed: &Feed,
    ) -> Result<Vec<String>, String> {
        let held = self.pool_held();
        if self.named.remove(name).is_none() {
            return Err(if self.named.is_empty() {
                format!("no hold {name:?}: none is in place (it may have timed out)")
            } else {
                format!(
                    "no hold {name:?}: the holds are {}",
                    self.names().join(", ")
                )
            });
        }
        log::info!("hold {name} released");
        self.apply(held, pool, feed);
        Ok(self.names())
    }

    /// Memory is short (`Some(why)`) or back (`None`).
    pub(super) fn memory(&mut self, short: Option<String>, pool: &JobPool, feed: &Feed) {
        let held = self.pool_held();
        self.memory = short;
        self.apply(held, pool, feed);
    }

    /// Ends the holds whose time is over at `now`, each said in the log.
    pub(super) fn expire(&mut self, now: Instant, pool: &JobPool, feed: &Feed) {
        let held = self.pool_held();
        let before = self.named.len();
        self.named.retain(|name, until| {
            let keep = *until > now;
            if !keep {
                log::warn!("hold {name} timed out: jobs start and changes are delivered again");
            }
            keep
        });
        if self.named.len() != before {
            self.apply(held, pool, feed);
        }
    }

    /// When the next hold ends on its own.
    pub(super) fn next_end(&self) -> Option<Instant> {
        self.named.values().min().copied()
    }

    /// Why no job starts, for `ward status`; `None` when jobs start.
    pub(super) fn why(&self) -> Option<String> {
        let named =
            (!self.named.is_empty()).then(|| format!("held by {}", self.names().join(", ")));
        match (&self.memory, named) {
            (Some(memory), Some(named)) => Some(format!("{memory}; {named}")),
            (Some(memory), None) => Some(memory.clone()),
            (None, named) => named,
        }
    }

    fn names(&self) -> Vec<String> {
        self.named.keys().cloned().collect()
    }

    /// Whether job starts are held back now (memory, or a named hold).
    pub(super) fn jobs_held(&self) -> bool {
        self.pool_held()
    }

    fn pool_held(&self) -> bool {
        self.memory.is_some() || !self.named.is_empty()
    }

    /// Brings the pool and the feed in line, the pool's hold having been `was`.
    fn apply(&self, was: bool, pool: &JobPool, feed: &Feed) {
        match (was, self.pool_held()) {
            (false, true) => pool.hold(),
            (true, false) => pool.release(),
            _ => {}
        }
        feed.set_held(!self.named.is_empty());
    }
}

//! The change feed: the manifest's changes as they are committed, for subscribers
//! (`ward changes --follow`, the control socket's `subscribe`). Not here: the connection that
//! carries them (`server::subscribe`), or the manifest itself.
//!
//! # Theory of operation
//! A subscriber holds no queue of its own: it holds the sequence number it has delivered up to,
//! waits until the manifest's writer says a commit went past it, and reads what follows from the
//! manifest a page at a time, at its own pace. The manifest keeps one change per path (the
//! latest, under a new sequence number), so a subscriber that reads slowly gets each path once,
//! at its latest; nothing it misses is lost, and ward's memory does not grow with how far it is
//! behind. That is also what a hold (`ward hold`) does for free: while one is in place nothing is
//! delivered, and what changed meanwhile comes once per path after the release.
//!
//! A line can come no sooner than the commit of its change. The writer gathers updates for up to
//! 50 ms before a commit, which costs nobody anything while nobody subscribes; while a
//! subscription is open ([`Feed::watched`]) it gathers them for a few milliseconds only.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::Error;
use crate::manifest::{ChangeEntry, Manifest};

/// The feed; cheap to clone, one per subscriber.
#[derive(Clone)]
pub(crate) struct Feed {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Feed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feed")
            .field("state", &*self.inner.state.lock())
            .finish_non_exhaustive()
    }
}

struct Inner {
    state: Mutex<State>,
    changed: Condvar,
    manifest: Arc<Mutex<Manifest>>,
    /// Subscriptions open now: while there is one, the writer commits sooner.
    subscribers: AtomicUsize,
}

/// An open subscription, counted while it lives ([`Feed::watch`]).
pub(crate) struct Watching {
    inner: Arc<Inner>,
}

impl Drop for Watching {
    fn drop(&mut self) {
        self.inner.subscribers.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Debug, Clone, Copy)]
struct State {
    /// The manifest's sequence number after its last commit.
    committed: u64,
    /// Deliveries are deferred (`ward hold`).
    held: bool,
    /// The server is stopping: subscribers end.
    stopping: bool,
}

/// Why [`Feed::wait`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wake {
    /// Changes past the subscriber's sequence number are committed, and no hold is in place:
    /// the committed sequence number.
    Changes(u64),
    /// Nothing new within the wait.
    Quiet,
    /// The server is stopping.
    Stopping,
}

impl Feed {
    /// The feed of `manifest`, whose sequence number is `committed` now.
    pub(crate) fn new(manifest: Arc<Mutex<Manifest>>, committed: u64) -> Feed {
        Feed {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    committed,
                    held: false,
                    stopping: false,
                }),
                changed: Condvar::new(),
                manifest,
                subscribers: AtomicUsize::new(0),
            }),
        }
    }

    /// Counts a subscription for as long as the returned guard lives.
    pub(crate) fn watch(&self) -> Watching {
        self.inner.subscribers.fetch_add(1, Ordering::Relaxed);
        Watching {
            inner: Arc::clone(&self.inner),
        }
    }

    /// Whether a subscription is open: then a change is worth committing sooner.
    pub(crate) fn watched(&self) -> bool {
        self.inner.subscribers.load(Ordering::Relaxed) > 0
    }

    /// The manifest's writer committed up to `seq`.
    pub(crate) fn committed(&self, seq: u64) {
        let mut state = self.inner.state.lock();
        if seq > state.committed {
            state.committed = seq;
            drop(state);
            self.inner.changed.notify_all();
        }
    }

    /// Deliveries are deferred while `held`.
    pub(crate) fn set_held(&self, held: bool) {
        let mut state = self.inner.state.lock();
        if state.held != held {
            state.held = held;
            drop(state);
            self.inner.changed.notify_all();
        }
    }

    /// The server is stopping: every subscriber is woken, and ends.
    pub(crate) fn stop(&self) {
        self.inner.state.lock().stopping = true;
        self.inner.changed.notify_all();
    }

    /// The sequence number committed last.
    pub(crate) fn seq(&self) -> u64 {
        self.inner.state.lock().committed
    }

    /// Waits, at most `timeout`, until changes past `since` are committed and no hold is in
    /// place.
    pub(crate) fn wait(&self, since: u64, timeout: Duration) -> Wake {
        let deadline = Instant::now() + timeout;
        let mut state = self.inner.state.lock();
        loop {
            if state.stopping {
                return Wake::Stopping;
            }
            if state.committed > since && !state.held {
                return Wake::Changes(state.committed);
            }
            if self
                .inner
                .changed
                .wait_until(&mut state, deadline)
                .timed_out()
            {
                return if state.stopping {
                    Wake::Stopping
                } else {
                    Wake::Quiet
                };
            }
        }
    }

    /// The changes after `since`, oldest first, at most `limit`.
    ///
    /// # Errors
    /// If the manifest cannot be read.
    pub(crate) fn page(&self, since: u64, limit: usize) -> Result<Vec<ChangeEntry>, Error> {
        self.inner.manifest.lock().changes_since(since, limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed() -> (tempfile::TempDir, Feed) {
        let dir = tempfile::tempdir().unwrap();
        let (manifest, _) = Manifest::open(&dir.path().join("m.redb")).unwrap();
        (dir, Feed::new(Arc::new(Mutex::new(manifest)), 5))
    }

    #[test]
    fn a_wait_ends_on_a_commit_past_the_subscriber_unless_held() {
        let (_dir, feed) = feed();
        assert_eq!(feed.wait(5, Duration::ZERO), Wake::Quiet);
        assert_eq!(feed.wait(4, Duration::ZERO), Wake::Changes(5));
        feed.set_held(true);
        assert_eq!(feed.wait(4, Duration::ZERO), Wake::Quiet, "held");
        let waiter = {
            let feed = feed.clone();
            std::thread::spawn(move || feed.wait(5, Duration::from_secs(30)))
        };
        feed.committed(7);
        feed.set_held(false);
        assert_eq!(waiter.join().unwrap(), Wake::Changes(7));
        feed.stop();
        assert_eq!(feed.wait(0, Duration::from_secs(30)), Wake::Stopping);
    }

    #[test]
    fn the_feed_is_watched_while_a_subscription_lives() {
        let (_dir, feed) = feed();
        assert!(!feed.watched());
        let one = feed.watch();
        let two = feed.watch();
        assert!(feed.watched());
        drop(one);
        assert!(feed.watched());
        drop(two);
        assert!(!feed.watched());
    }
}

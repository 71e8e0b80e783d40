//! The watcher's public face: [`WatcherBuilder`], the [`Watcher`] handle that owns the
//! watcher's thread, and [`WatchStats`]. Not here: that thread's state and loop (`worker`), how it
//! turns notify's events into pending changes (`events`), what makes it rescan (`rescan`), and the
//! notify backends with their watches (`watches`).

mod events;
#[cfg(target_os = "linux")]
mod fanotify;
#[cfg(target_os = "linux")]
mod inotify;
mod lost;
mod raw;
mod rescan;
mod watches;
mod worker;

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use notify::Event;

use crate::{Batch, Error, IgnoreRules};

/// Which backend watches the roots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// fanotify where it can start (Linux 5.17, `CAP_SYS_ADMIN`, file systems with file handles),
    /// else [`Backend::Recommended`]; the reason is logged and given by
    /// [`Watcher::backend`].
    Auto,
    /// fanotify: one mark per file system holding a root, no watch per directory. Where it
    /// cannot start the watcher says why (a warning) and falls back as [`Backend::Auto`] does.
    Fanotify,
    /// The operating system's recommended watcher (inotify on Linux). Where it cannot start, the
    /// watcher logs why and polls instead.
    Recommended,
    /// Poll every watched directory at this interval.
    Poll(Duration),
}

/// The backend a watcher uses, and why not the one asked for ([`Watcher::backend`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ActiveBackend {
    /// `fanotify`, `inotify` (the recommended watcher, on Linux) or `poll`.
    pub name: &'static str,
    /// Why the backend asked for is not the one used, if it is not.
    pub fallback: Option<String>,
}

/// Said in an event's `info` by the fanotify backend when it is about a directory (`FAN_ONDIR`,
/// which notify's kinds carry only for creations and removals).
const DIRECTORY: &str = "directory";

/// An event as a backend hands it on.
type RawEvent = notify::Result<Event>;

/// The events of one read of a backend and when it received them: a path's quiet window starts
/// then, not when the watcher's thread gets to it.
type Raw = (Instant, Vec<RawEvent>);

/// Configures and starts a [`Watcher`].
///
/// ```no_run
/// # fn main() -> Result<(), ward_watch::Error> {
/// use std::time::Duration;
/// let watcher = ward_watch::Watcher::builder()
///     .root("sample")
///     .ignore_file(".wardignore")
///     .ignore_glob("**/*.swp")
///     .quiet(Duration::from_millis(50))
///     .build()?;
/// for batch in watcher.batches() {
///     for change in batch.changes() {
///         println!("{change}"); // e.g. `created /home/me/sample/a.rs`
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct WatcherBuilder {
    roots: Vec<PathBuf>,
    ignore_globs: Vec<String>,
    ignore_file: Option<OsString>,
    quiet: Duration,
    max_wait: Duration,
    pending_cap: usize,
    batch_max: usize,
    channel_capacity: usize,
    event_buffer: usize,
    backend: Backend,
    poll_interval: Duration,
    poll_fallback: bool,
    native_watch_limit: Option<usize>,
}

impl Default for WatcherBuilder {
    fn default() -> Self {
        WatcherBuilder {
            roots: Vec::new(),
            ignore_globs: Vec::new(),
            ignore_file: None,
            quiet: Duration::from_millis(50),
            max_wait: Duration::from_secs(1),
            pending_cap: 10_000,
            batch_max: 1_024,
            channel_capacity: 16,
            event_buffer: 8_192,
            backend: Backend::Recommended,
            poll_interval: Duration::from_millis(500),
            poll_fallback: true,
            native_watch_limit: None,
        }
    }
}

impl WatcherBuilder {
    /// A builder with the defaults: 50 ms quiet window, 1 s maximum wait, 10,000 pending paths,
    /// 16 batches in the channel, the recommended backend with polling as its fallback.
    pub fn new() -> Self {
        WatcherBuilder::default()
    }

    /// Adds a directory to watch, recursively. It may not exist yet: it is reported as
    /// [`Error::RootMissing`] and watched when it appears.
    pub fn root(mut self, path: impl Into<PathBuf>) -> Self {
        self.roots.push(path.into());
        self
    }

    /// Adds several roots.
    pub fn roots<P: Into<PathBuf>>(mut self, paths: impl IntoIterator<Item = P>) -> Self {
        self.roots.extend(paths.into_iter().map(Into::into));
        self
    }

    /// Ignores paths matching `glob`, relative to their root (see [`IgnoreRules`]).
    pub fn ignore_glob(mut self, glob: impl Into<String>) -> Self {
        self.ignore_globs.push(glob.into());
        self
    }

    /// Reads gitignore-style ignore files of this name (e.g. `.wardignore`) in every watched directory.
    pub fn ignore_file(mut self, name: impl Into<OsString>) -> Self {
        self.ignore_file = Some(name.into());
        self
    }

    /// How long a path must see no event before its change is delivered (default 50 ms).
    pub fn quiet(mut self, window: Duration) -> Self {
        self.quiet = window;
        self
    }

    /// The longest a change waits for its path to go quiet (default 1 s); never less than the
    /// quiet window.
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = max_wait;
        self
    }

    /// The most paths kept pending (default 10,000); past it the busiest subtree becomes one
    /// [`Rescan`](crate::Rescan). This, with the channel's capacity, bounds the watcher's memory.
    pub fn pending_cap(mut self, cap: usize) -> Self {
        self.pending_cap = cap.max(1);
        self
    }

    /// The most changes one batch holds (default 1,024; counted by path, and a path may make
    /// two: a directory replaced, a renamed file then modified); the rest of those due come in
    /// the next batches, in order. With the channel's capacity, it bounds what waits for the consumer:
    /// a batch of every change due let a slow consumer's channel hold sixteen pending sets.
    pub fn batch_max(mut self, changes: usize) -> Self {
        self.batch_max = changes.max(1);
        self
    }

    /// How many batches the output channel holds (default 16). While it is full, changes keep
    /// coalescing in the pending set.
    pub fn channel_capacity(mut self, capacity: usize) -> Self {
        self.channel_capacity = capacity.max(1);
        self
    }

    /// How many raw events may wait between the backends' threads and the watcher's (default
    /// 8,192). Past it events are dropped and the directories they happened in rescanned (the
    /// roots, past 256 directories or for an event with no path)
    /// ([`RescanReason::EventBufferFull`](crate::RescanReason::EventBufferFull)). A rescan of
    /// the directory costs less than the events it replaces hold: `cargo xtask bench --only
    /// burst` peaked 2.6 to 7 MB lower at 8,192 than at 32,768, and as fast.
    pub fn event_buffer(mut self, events: usize) -> Self {
        self.event_buffer = events.max(1);
        self
    }

    /// The backend (default [`Backend::Recommended`]).
    pub fn backend(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self
    }

    /// Whether a root that runs out of inotify watches is polled instead (default true), and at
    /// which interval (default 500 ms; also used when native watching cannot start at all).
    pub fn poll_fallback(mut self, enabled: bool, interval: Duration) -> Self {
        self.poll_fallback = enabled;
        self.poll_interval = interval;
        self
    }

    /// Pretends the kernel refuses more than `n` native watches, to exercise the out-of-watches
    /// path without touching `fs.inotify.max_user_watches`. For tests.
    #[doc(hidden)]
    pub fn native_watch_limit(mut self, n: usize) -> Self {
        self.native_watch_limit = Some(n);
        self
    }

    /// Starts the watcher. When it returns, every root that exists is watched.
    ///
    /// # Errors
    /// [`Error::NoRoots`] without a root, [`Error::Glob`] for a bad glob, [`Error::Spawn`] if the
    /// thread cannot start. Problems with the roots themselves are reported in batches instead.
    pub fn build(self) -> Result<Watcher, Error> {
        if self.roots.is_empty() {
            return Err(Error::NoRoots);
        }
        let roots: Vec<PathBuf> = self
            .roots
            .iter()
            .map(|r| std::path::absolute(r).unwrap_or_else(|_| r.clone()))
            .collect();
        let rules = Arc::new(IgnoreRules::new(
            roots.clone(),
            &self.ignore_globs,
            self.ignore_file.clone(),
        )?);
        let (raw_tx, raw_rx) = raw::channel(self.event_buffer);
        let (out_tx, out_rx) = crossbeam_channel::bounded(self.channel_capacity);
        let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
        let (ready_tx, ready_rx) = crossbeam_channel::bounded::<()>(1);
        let stats = Arc::new(Counters::default());
        let worker = self.worker(&roots, rules.clone(), raw_tx, stats.clone());
        let backend = self.backend;
        let thread = std::thread::Builder::new()
            .name("ward-watch".into())
            .spawn(move || worker.run(backend, raw_rx, out_tx, stop_rx, ready_tx))
            .map_err(Error::Spawn)?;
        // The thread says when its initial watches are in place (or it died trying).
        let _ = ready_rx.recv();
        Ok(Watcher {
            batches: out_rx,
            rules,
            stats,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }
}

/// A running watcher: owns its thread and the notify backend; dropping it stops and joins both.
///
/// See [`WatcherBuilder`] for an example, and the crate docs for the rules it follows.
#[derive(Debug)]
pub struct Watcher {
    batches: Receiver<Batch>,
    rules: Arc<IgnoreRules>,
    stats: Arc<Counters>,
    /// Dropping this sender is what tells the thread to stop.
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Watcher {
    /// A builder with the defaults.
    pub fn builder() -> WatcherBuilder {
        WatcherBuilder::new()
    }

    /// The batches, oldest first. The channel is bounded; it disconnects when the watcher is dropped.
    pub fn batches(&self) -> &Receiver<Batch> {
        &self.batches
    }

    /// The ignore rules in force, to build a [`Snapshot`](crate::Snapshot) that sees the same tree.
    pub fn ignore_rules(&self) -> Arc<IgnoreRules> {
        self.rules.clone()
    }

    /// The backend in use, and why not the one asked for if it is not.
    pub fn backend(&self) -> ActiveBackend {
        self.stats.backend.lock().clone()
    }

    /// Counters of the watcher's work so far.
    pub fn stats(&self) -> WatchStats {
        let c = &self.stats;
        WatchStats {
            events: c.events.load(Ordering::Relaxed),
            dropped_events: c.dropped.load(Ordering::Relaxed),
            pending: c.pending.load(Ordering::Relaxed),
            peak_pending: c.peak_pending.load(Ordering::Relaxed),
            collapses: c.collapses.load(Ordering::Relaxed),
            watches: c.watches.load(Ordering::Relaxed),
            batches: c.batches.load(Ordering::Relaxed),
            failed_watches: c.failed_watches.load(Ordering::Relaxed),
            polled_roots: c.polled_roots.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            log::error!("the ward-watch thread panicked");
        }
    }
}

/// Counters of a watcher's work, from [`Watcher::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WatchStats {
    /// Raw events received from the backend.
    pub events: u64,
    /// Raw events dropped because the event buffer was full (each led to a rescan).
    pub dropped_events: u64,
    /// Paths pending now.
    pub pending: usize,
    /// The most paths ever pending at once (never above the cap).
    pub peak_pending: usize,
    /// How often the cap turned a subtree into a rescan.
    pub collapses: u64,
    /// Directories watched now.
    pub watches: usize,
    /// Batches delivered.
    pub batches: u64,
    /// Directories that could not be watched (an unreadable one, say), ever; each is watched
    /// once its permissions change.
    pub failed_watches: u64,
    /// Roots polled instead of watched natively (the watch limit was reached).
    pub polled_roots: usize,
}

#[derive(Debug, Default)]
struct Counters {
    events: AtomicU64,
    dropped: AtomicU64,
    pending: AtomicUsize,
    peak_pending: AtomicUsize,
    collapses: AtomicU64,
    watches: AtomicUsize,
    batches: AtomicU64,
    failed_watches: AtomicU64,
    polled_roots: AtomicUsize,
    backend: parking_lot::Mutex<ActiveBackend>,
}

#[cfg(test)]
mod tests;

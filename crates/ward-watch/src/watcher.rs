//! The watcher: its builder, the handle that owns its thread, and that thread, which turns notify
//! events into pending changes, installs and removes watches, and delivers batches.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Select, Sender, TrySendError};
use notify::event::{CreateKind, ModifyKind, RemoveKind, RenameMode};
use notify::{Event, EventKind, PollWatcher, RecommendedWatcher, RecursiveMode, Watcher as _};

use crate::mounts::{self, MountWatch};
use crate::pending::{Op, Pending};
use crate::snapshot::walk;
use crate::{Batch, Error, IgnoreRules, Item, RescanReason};

/// Which notify backend watches the roots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The operating system's recommended watcher (inotify on Linux). Where it cannot start, the
    /// watcher logs why and polls instead.
    Recommended,
    /// Poll every watched directory at this interval.
    Poll(Duration),
}

/// How long a rename's first half (`IN_MOVED_FROM`) waits for its second before it counts as a
/// move out of the watched tree.
const RENAME_PAIRING: Duration = Duration::from_millis(2);
/// How many raw events are handled before the thread looks at its output again.
const DRAIN: usize = 4096;
/// Errors waiting for delivery beyond this are logged and dropped, so they too stay bounded.
const MAX_NOTICES: usize = 256;

/// A raw event and when notify's thread received it: a path's quiet window starts then, not when
/// the watcher's thread gets to it.
type Raw = (Instant, notify::Result<Event>);

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
///         println!("{} {}", change.kind.name(), change.path.display());
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
            channel_capacity: 16,
            event_buffer: 32_768,
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

    /// How many batches the output channel holds (default 16). While it is full, changes keep
    /// coalescing in the pending set.
    pub fn channel_capacity(mut self, capacity: usize) -> Self {
        self.channel_capacity = capacity.max(1);
        self
    }

    /// How many raw events may wait between notify's thread and the watcher's (default 32,768).
    /// Past it events are dropped and their roots rescanned ([`RescanReason::EventBufferFull`]).
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
        let (raw_tx, raw_rx) = crossbeam_channel::bounded(self.event_buffer);
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

    /// The watcher's thread state, before its backends start.
    fn worker(
        &self,
        roots: &[PathBuf],
        rules: Arc<IgnoreRules>,
        raw_tx: Sender<Raw>,
        stats: Arc<Counters>,
    ) -> Worker {
        let lost = Arc::new(AtomicBool::new(false));
        Worker {
            pending: Pending::new(self.quiet, self.max_wait, self.pending_cap, roots.to_vec()),
            watches: Watches {
                native: None,
                poll: None,
                watched: BTreeMap::new(),
                native_count: 0,
                native_limit: self.native_watch_limit,
                polled_roots: HashSet::new(),
                poll_interval: self.poll_interval,
                handler: Handler {
                    tx: raw_tx,
                    lost: lost.clone(),
                    stats: stats.clone(),
                },
            },
            roots: roots
                .iter()
                .map(|p| RootState {
                    path: p.clone(),
                    present: true,
                    reported_limit: false,
                })
                .collect(),
            rules,
            lost,
            held_from: None,
            clock: Instant::now(),
            notices: Vec::new(),
            resync_roots: false,
            poll_fallback: self.poll_fallback,
            next_root_check: Instant::now(),
            root_check_every: self.max_wait.max(Duration::from_millis(100)),
            mounts: BTreeSet::new(),
            stats,
        }
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
}

/// What runs on notify's thread: a non-blocking push, nothing else.
#[derive(Clone, Debug)]
struct Handler {
    tx: Sender<Raw>,
    lost: Arc<AtomicBool>,
    stats: Arc<Counters>,
}

impl Handler {
    fn handle(&self, ev: notify::Result<Event>) {
        if let Ok(Event {
            kind: EventKind::Access(_),
            ..
        }) = ev
        {
            // Opens and closes change nothing; keep them out of the buffer.
            return;
        }
        self.stats.events.fetch_add(1, Ordering::Relaxed);
        match self.tx.try_send((Instant::now(), ev)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                self.lost.store(true, Ordering::Release);
            }
            // The watcher is stopping.
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

#[derive(Debug)]
struct RootState {
    path: PathBuf,
    present: bool,
    reported_limit: bool,
}

/// Why a directory could not be watched.
enum WatchFailure {
    /// The kernel (or the test limit) refuses more native watches.
    Limit,
    Other(notify::Error),
}

/// The backends and the directories they watch. Every watch is non-recursive: the watcher decides
/// which directories are watched, so that ignored ones never get a watch.
struct Watches {
    native: Option<RecommendedWatcher>,
    poll: Option<PollWatcher>,
    /// Watched directories, and whether by the native backend.
    watched: BTreeMap<PathBuf, bool>,
    native_count: usize,
    native_limit: Option<usize>,
    polled_roots: HashSet<PathBuf>,
    poll_interval: Duration,
    handler: Handler,
}

impl Watches {
    fn watch(&mut self, dir: &Path, root: &Path) -> Result<(), WatchFailure> {
        if self.watched.contains_key(dir) {
            return Ok(());
        }
        let native = self.native.is_some() && !self.polled_roots.contains(root);
        if native {
            if self.native_limit.is_some_and(|n| self.native_count >= n) {
                return Err(WatchFailure::Limit);
            }
            let w = self.native.as_mut().expect("checked above");
            match w.watch(dir, RecursiveMode::NonRecursive) {
                Ok(()) => self.native_count += 1,
                Err(e) if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) => {
                    return Err(WatchFailure::Limit);
                }
                Err(e) if is_enospc(&e) => return Err(WatchFailure::Limit),
                Err(e) => return Err(WatchFailure::Other(e)),
            }
        } else {
            if self.poll.is_none() {
                let h = self.handler.clone();
                let config = notify::Config::default().with_poll_interval(self.poll_interval);
                let w = PollWatcher::new(move |ev| h.handle(ev), config)
                    .map_err(WatchFailure::Other)?;
                self.poll = Some(w);
            }
            let w = self.poll.as_mut().expect("created above");
            w.watch(dir, RecursiveMode::NonRecursive)
                .map_err(WatchFailure::Other)?;
        }
        self.watched.insert(dir.to_path_buf(), native);
        Ok(())
    }

    /// Stops watching `dir` and everything under it.
    fn forget_subtree(&mut self, dir: &Path) {
        let keys: Vec<PathBuf> = self
            .watched
            .range::<Path, _>((std::ops::Bound::Included(dir), std::ops::Bound::Unbounded))
            .map(|(p, _)| p)
            .take_while(|p| p.starts_with(dir))
            .cloned()
            .collect();
        for k in keys {
            self.unwatch(&k);
        }
    }

    fn unwatch(&mut self, dir: &Path) {
        let Some(native) = self.watched.remove(dir) else {
            return;
        };
        let result = if native {
            self.native_count -= 1;
            self.native.as_mut().map(|w| w.unwatch(dir))
        } else {
            self.poll.as_mut().map(|w| w.unwatch(dir))
        };
        if let Some(Err(e)) = result {
            // The kernel drops the watch of a deleted or moved directory by itself.
            log::debug!("unwatching {}: {e}", dir.display());
        }
    }
}

impl std::fmt::Debug for Watches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watches")
            .field("watched", &self.watched.len())
            .field("native", &self.native_count)
            .finish()
    }
}

fn is_enospc(e: &notify::Error) -> bool {
    matches!(&e.kind, notify::ErrorKind::Io(io) if io.raw_os_error() == Some(28))
}

/// The watcher's thread: owns the pending set and the backends.
#[derive(Debug)]
struct Worker {
    pending: Pending,
    watches: Watches,
    roots: Vec<RootState>,
    rules: Arc<IgnoreRules>,
    lost: Arc<AtomicBool>,
    /// The first half of a rename, waiting for its second.
    held_from: Option<(PathBuf, usize, Instant)>,
    /// The latest time given to the pending set: it never goes back, although events from two
    /// backends, or received before the loop last looked at the clock, can be older.
    clock: Instant,
    notices: Vec<Error>,
    /// Events were lost: the roots' watches must be checked before the next delivery.
    resync_roots: bool,
    poll_fallback: bool,
    next_root_check: Instant,
    root_check_every: Duration,
    /// The mount points of the process's namespace as last read: a change inside a root means
    /// watches that no longer see what is at their paths.
    mounts: BTreeSet<PathBuf>,
    stats: Arc<Counters>,
}

impl Worker {
    fn run(
        mut self,
        backend: Backend,
        raw: Receiver<Raw>,
        out: Sender<Batch>,
        stop: Receiver<()>,
        ready: Sender<()>,
    ) {
        precise_timers();
        // Started before the roots are walked, so that no mount is missed between the two.
        let (_mount_watch, mount_changes) = match MountWatch::start() {
            Ok((watch, now, changes)) => {
                self.mounts = now;
                (Some(watch), changes)
            }
            Err(e) => {
                log::warn!(
                    "ward-watch: file systems mounted inside the roots after start are not followed: {e}"
                );
                (None, crossbeam_channel::never())
            }
        };
        self.start(backend);
        let _ = ready.send(());
        drop(ready);
        loop {
            let now = self.now(Instant::now());
            self.flush_held_from(now, false);
            self.check_roots(now);
            let has_output = !self.notices.is_empty() || self.pending.has_due(now);
            let mut deadlines = vec![];
            if !has_output {
                deadlines.extend(self.pending.next_due());
            }
            if let Some((_, _, t)) = &self.held_from {
                deadlines.push(*t + RENAME_PAIRING);
            }
            if self.roots.iter().any(|r| !r.present) {
                deadlines.push(self.next_root_check);
            }
            let timeout = deadlines
                .into_iter()
                .min()
                .map_or(Duration::from_secs(3600), |d| {
                    d.saturating_duration_since(now)
                });

            let mut sel = Select::new();
            let i_raw = sel.recv(&raw);
            let i_stop = sel.recv(&stop);
            let i_mounts = sel.recv(&mount_changes);
            let i_out = has_output.then(|| sel.send(&out));
            let Ok(op) = sel.select_timeout(timeout) else {
                continue;
            };
            match op.index() {
                i if i == i_raw => {
                    let Ok((at, ev)) = op.recv(&raw) else { return };
                    self.handle(ev, at);
                    for (at, ev) in raw.try_iter().take(DRAIN) {
                        self.handle(ev, at);
                    }
                }
                i if i == i_stop => {
                    let _ = op.recv(&stop);
                    return;
                }
                i if i == i_mounts => {
                    let _ = op.recv(&mount_changes);
                    let now = self.now(Instant::now());
                    self.mounts_changed(now);
                }
                _ => {
                    debug_assert_eq!(Some(op.index()), i_out);
                    let now = self.now(Instant::now());
                    let batch = self.take_batch(now);
                    if op.send(&out, batch).is_err() {
                        // Nobody listens any more; the owner will stop us.
                        log::debug!("ward-watch: batch receiver dropped");
                    }
                    self.stats.batches.fetch_add(1, Ordering::Relaxed);
                }
            }
            if self.lost.swap(false, Ordering::AcqRel) {
                log::warn!("ward-watch: event buffer full, events dropped; rescanning the roots");
                self.overflow(RescanReason::EventBufferFull);
            }
            self.update_stats();
        }
    }

    /// `at`, or the latest time already used if that is later.
    fn now(&mut self, at: Instant) -> Instant {
        self.clock = self.clock.max(at);
        self.clock
    }

    fn update_stats(&self) {
        let n = self.pending.len();
        self.stats.pending.store(n, Ordering::Relaxed);
        self.stats.peak_pending.fetch_max(n, Ordering::Relaxed);
        self.stats
            .collapses
            .store(self.pending.collapses(), Ordering::Relaxed);
        self.stats
            .watches
            .store(self.watches.watched.len(), Ordering::Relaxed);
        self.stats
            .polled_roots
            .store(self.watches.polled_roots.len(), Ordering::Relaxed);
    }

    fn take_batch(&mut self, now: Instant) -> Batch {
        if std::mem::take(&mut self.resync_roots) {
            // Directories whose creation was among the lost events get their watches now, before
            // the consumer walks them for the rescan.
            let roots: Vec<PathBuf> = self
                .roots
                .iter()
                .filter(|r| r.present)
                .map(|r| r.path.clone())
                .collect();
            for root in roots {
                self.resync(&root, now);
            }
        }
        let mut items: Vec<Item> = self.notices.drain(..).map(Item::Error).collect();
        items.extend(self.pending.take_due(now));
        for item in &items {
            log::trace!("delivering {item:?}");
        }
        Batch { items }
    }

    fn notice(&mut self, e: Error) {
        log::warn!("ward-watch: {e}");
        if self.notices.len() < MAX_NOTICES {
            self.notices.push(e);
        }
    }

    fn start(&mut self, backend: Backend) {
        match backend {
            Backend::Recommended => {
                let h = self.watches.handler.clone();
                match RecommendedWatcher::new(move |ev| h.handle(ev), notify::Config::default()) {
                    Ok(w) => self.watches.native = Some(w),
                    Err(e) => log::warn!(
                        "ward-watch: native watching unavailable ({e}); polling every {:?} instead",
                        self.watches.poll_interval
                    ),
                }
            }
            Backend::Poll(interval) => self.watches.poll_interval = interval,
        }
        for i in 0..self.roots.len() {
            let root = self.roots[i].path.clone();
            if root.is_dir() {
                self.watch_tree(&root, false, Instant::now());
            } else {
                self.roots[i].present = false;
                self.notice(Error::RootMissing { path: root });
            }
        }
        self.update_stats();
    }

    /// Watches `top` and every directory under it that is not ignored, each before it is listed,
    /// so that nothing created in it is missed; with `record`, everything found is recorded as
    /// created. Returns the directories it watched.
    fn watch_tree(&mut self, top: &Path, record: bool, now: Instant) -> HashSet<PathBuf> {
        let Some(root) = self.rules.root_of(top).map(Path::to_path_buf) else {
            return HashSet::new();
        };
        let mut limit_hit = false;
        let mut failed_watches = 0;
        let mut failures = Vec::new();
        let mut seen = HashSet::new();
        let rules = self.rules.clone();
        let watches = &mut self.watches;
        let pending = &mut self.pending;
        walk(
            &rules,
            top,
            |dir| match watches.watch(dir, &root) {
                Ok(()) => {
                    seen.insert(dir.to_path_buf());
                    true
                }
                Err(WatchFailure::Limit) => {
                    limit_hit = true;
                    false
                }
                Err(WatchFailure::Other(e)) => {
                    if !matches!(&e.kind, notify::ErrorKind::PathNotFound)
                        && !matches!(&e.kind, notify::ErrorKind::Io(io) if io.kind() == std::io::ErrorKind::NotFound)
                    {
                        // Watched later, when its permissions change (see `metadata_changed`).
                        failed_watches += 1;
                        failures.push(Error::Watch {
                            path: dir.to_path_buf(),
                            source: e,
                        });
                    }
                    // Still listed: what is in it now is reported, even if later changes cannot be.
                    true
                }
            },
            |path, is_dir| {
                if record {
                    pending.record(path, Op::Create, is_dir, now);
                }
            },
        );
        self.stats
            .failed_watches
            .fetch_add(failed_watches, Ordering::Relaxed);
        for f in failures {
            self.notice(f);
        }
        if limit_hit {
            self.out_of_watches(&root, now);
        }
        seen
    }

    /// The kernel refused a watch under `root`: say so with numbers, and poll it if allowed.
    fn out_of_watches(&mut self, root: &Path, now: Instant) {
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
            self.watch_tree(root, false, now);
            self.pending.rescan(root, RescanReason::BackendChanged, now);
        }
    }

    /// Events were lost: every root is rescanned, and its watches are checked against the disk
    /// before that rescan is delivered (once per delivery, however long the storm lasts).
    fn overflow(&mut self, reason: RescanReason) {
        let now = self.now(Instant::now());
        self.held_from = None;
        let roots: Vec<PathBuf> = self
            .roots
            .iter()
            .filter(|r| r.present)
            .map(|r| r.path.clone())
            .collect();
        for root in roots {
            self.pending.rescan(&root, reason, now);
        }
        self.resync_roots = true;
    }

    /// Brings the watches under `dir` in line with the disk and the rules.
    fn resync(&mut self, dir: &Path, now: Instant) {
        let seen = self.watch_tree(dir, false, now);
        let stale: Vec<PathBuf> = self
            .watches
            .watched
            .range::<Path, _>((std::ops::Bound::Included(dir), std::ops::Bound::Unbounded))
            .map(|(p, _)| p)
            .take_while(|p| p.starts_with(dir))
            .filter(|p| !seen.contains(*p))
            .cloned()
            .collect();
        for p in stale {
            self.watches.unwatch(&p);
        }
    }

    fn check_roots(&mut self, now: Instant) {
        if now < self.next_root_check || self.roots.iter().all(|r| r.present) {
            return;
        }
        self.next_root_check = now + self.root_check_every;
        for i in 0..self.roots.len() {
            let root = self.roots[i].path.clone();
            if !self.roots[i].present && root.is_dir() {
                log::info!("ward-watch: root {} appeared", root.display());
                self.roots[i].present = true;
                self.watch_tree(&root, false, now);
                self.pending.rescan(&root, RescanReason::RootAppeared, now);
            }
        }
    }

    fn root_gone(&mut self, root: &Path, now: Instant) {
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

    fn is_root(&self, path: &Path) -> bool {
        self.roots.iter().any(|r| r.path == path)
    }

    /// Handles one raw event, received by notify's thread at `at`.
    fn handle(&mut self, ev: notify::Result<Event>, at: Instant) {
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
                    self.created(path, is_dir, now);
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
                    Seen::Gone => self.removed(path, self.watches.watched.contains_key(path), now),
                    seen => self.created(path, seen == Seen::Dir, now),
                },
                EventKind::Modify(ModifyKind::Metadata(_)) => self.metadata_changed(path, now),
                EventKind::Modify(_) => self.modified(path, now),
                EventKind::Remove(kind) => {
                    let is_dir =
                        kind == RemoveKind::Folder || self.watches.watched.contains_key(path);
                    self.removed(path, is_dir, now);
                }
                EventKind::Access(_) | EventKind::Any | EventKind::Other => {}
            }
        }
    }

    /// A rename's first half that found no second half is a move out of the watched tree.
    fn flush_held_from(&mut self, now: Instant, force: bool) {
        if let Some((from, _, t)) = &self.held_from
            && (force || now >= *t + RENAME_PAIRING)
        {
            let from = from.clone();
            self.held_from = None;
            let is_dir = self.watches.watched.contains_key(&from);
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
            self.watch_tree(path, true, now);
        }
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
                    self.watch_tree(path, false, now);
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

    /// The mount table changed: each mount point inside a root that appeared or disappeared
    /// hides or uncovers what the watches there saw, so its subtree is watched anew and rescanned.
    fn mounts_changed(&mut self, now: Instant) {
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
                self.watch_tree(&point, false, now);
            }
            self.pending
                .rescan(&point, RescanReason::MountsChanged, now);
        }
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
            self.watch_tree(to, true, now);
        }
    }

    /// An ignore file changed: its directory's rules are re-read and the directory rescanned.
    fn ignore_file_changed(&mut self, file: &Path, now: Instant) {
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

/// Wakes this thread on time: timer slack (50 µs by default on Linux) lets the kernel delay a
/// timed wakeup to batch it with others, and here every timed wakeup is a window that ended.
#[cfg(target_os = "linux")]
fn precise_timers() {
    // SAFETY: PR_SET_TIMERSLACK only changes the calling thread's timer slack; 1 ns is the least
    // it takes (0 means the process default).
    if unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0) } != 0 {
        log::debug!(
            "ward-watch: cannot set the timer slack: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn precise_timers() {}

fn is_dir_now(path: &Path) -> bool {
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

#[cfg(test)]
mod tests;

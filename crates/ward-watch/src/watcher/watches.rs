//! The notify backends and the directories they watch, and the `Handler` that runs on notify's
//! thread (a non-blocking push, nothing else). Not here: which directories are watched (the
//! ignore rules, and `worker`'s walk of a tree).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::TrySendError;
use notify::{Event, EventKind, PollWatcher, RecursiveMode, Watcher as _};

use super::Counters;
use super::lost::Lost;
use super::raw::RawSender;

/// What runs on notify's thread: a non-blocking push, nothing else.
#[derive(Clone, Debug)]
pub(super) struct Handler {
    pub(super) tx: RawSender,
    pub(super) lost: Arc<Lost>,
    pub(super) stats: Arc<Counters>,
}

impl Handler {
    pub(super) fn handle(&self, ev: notify::Result<Event>) {
        self.handle_all(vec![ev]);
    }

    /// Hands on the events of one read together (one wake-up of the watcher's thread).
    pub(super) fn handle_all(&self, mut events: Vec<notify::Result<Event>>) {
        // Opens and closes change nothing; keep them out of the buffer.
        events.retain(|ev| {
            !matches!(
                ev,
                Ok(Event {
                    kind: EventKind::Access(_),
                    ..
                })
            )
        });
        if events.is_empty() {
            return;
        }
        self.stats
            .events
            .fetch_add(events.len() as u64, Ordering::Relaxed);
        match self.tx.try_send(Instant::now(), events) {
            Ok(()) => {}
            Err(TrySendError::Full(rest)) => {
                self.stats
                    .dropped
                    .fetch_add(rest.len() as u64, Ordering::Relaxed);
                self.lost.add(&rest);
            }
            // The watcher is stopping.
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

/// The native backend: ward's own inotify watcher on Linux (see `inotify.rs` for why not
/// notify's), notify's elsewhere.
#[cfg(target_os = "linux")]
pub(super) type Native = super::inotify::Inotify;
#[cfg(not(target_os = "linux"))]
pub(super) type Native = notify::RecommendedWatcher;

/// What the native backend hands back for a watch, to remove it with: inotify's descriptor.
#[cfg(target_os = "linux")]
pub(super) type NativeWatch = super::inotify::Wd;
#[cfg(not(target_os = "linux"))]
pub(super) type NativeWatch = ();

/// How a directory is watched.
#[derive(Debug)]
pub(super) enum Watch {
    Native(NativeWatch),
    Polled,
}

/// Starts the native backend, whose events go to `handler`.
///
/// # Errors
/// If the kernel gives no inotify instance (out of instances or descriptors).
pub(super) fn start_native(handler: Handler) -> notify::Result<Native> {
    #[cfg(target_os = "linux")]
    return super::inotify::Inotify::start(handler).map_err(notify::Error::io);
    #[cfg(not(target_os = "linux"))]
    notify::RecommendedWatcher::new(move |ev| handler.handle(ev), notify::Config::default())
}

#[cfg(target_os = "linux")]
fn watch_natively(native: &mut Native, dir: &Arc<Path>) -> notify::Result<NativeWatch> {
    native.watch(dir)
}

#[cfg(not(target_os = "linux"))]
fn watch_natively(native: &mut Native, dir: &Arc<Path>) -> notify::Result<NativeWatch> {
    native.watch(dir, RecursiveMode::NonRecursive)
}

#[cfg(target_os = "linux")]
fn unwatch_natively(native: &mut Native, dir: &Path, watch: NativeWatch) -> notify::Result<()> {
    native.unwatch(dir, watch)
}

#[cfg(not(target_os = "linux"))]
fn unwatch_natively(native: &mut Native, dir: &Path, _: NativeWatch) -> notify::Result<()> {
    native.unwatch(dir)
}

/// Why a directory could not be watched.
pub(super) enum WatchFailure {
    /// The kernel (or the test limit) refuses more native watches.
    Limit,
    Other(notify::Error),
}

/// The backends and the directories they watch. Every watch is non-recursive: the watcher decides
/// which directories are watched, so that ignored ones never get a watch.
pub(super) struct Watches {
    /// fanotify, when it started: it sees every directory of the file systems it marked, and
    /// then no directory gets a watch of its own.
    #[cfg(target_os = "linux")]
    pub(super) fanotify: Option<super::fanotify::Fanotify>,
    pub(super) native: Option<Native>,
    pub(super) poll: Option<PollWatcher>,
    /// Watched directories, and how. The native backend names its events with the same paths
    /// (one allocation each, shared).
    pub(super) watched: BTreeMap<Arc<Path>, Watch>,
    pub(super) native_count: usize,
    pub(super) native_limit: Option<usize>,
    pub(super) polled_roots: HashSet<PathBuf>,
    pub(super) poll_interval: Duration,
    pub(super) handler: Handler,
}

impl Watches {
    pub(super) fn watch(&mut self, dir: &Path, root: &Path) -> Result<(), WatchFailure> {
        #[cfg(target_os = "linux")]
        if let Some(fanotify) = &self.fanotify {
            // Its file system is marked already, unless it is a mount of another.
            return fanotify
                .mark(dir)
                .map_err(|e| WatchFailure::Other(notify::Error::io(e).add_path(dir.into())));
        }
        if self.watched.contains_key(dir) {
            return Ok(());
        }
        let dir: Arc<Path> = Arc::from(dir);
        let native = self
            .native
            .as_mut()
            .filter(|_| !self.polled_roots.contains(root));
        let how = if let Some(w) = native {
            if self.native_limit.is_some_and(|n| self.native_count >= n) {
                return Err(WatchFailure::Limit);
            }
            match watch_natively(w, &dir) {
                Ok(watch) => {
                    self.native_count += 1;
                    Watch::Native(watch)
                }
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
            w.watch(&dir, RecursiveMode::NonRecursive)
                .map_err(WatchFailure::Other)?;
            Watch::Polled
        };
        self.watched.insert(dir, how);
        Ok(())
    }

    /// Stops watching `dir` and everything under it.
    pub(super) fn forget_subtree(&mut self, dir: &Path) {
        let keys: Vec<Arc<Path>> = self
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

    pub(super) fn unwatch(&mut self, dir: &Path) {
        let Some(how) = self.watched.remove(dir) else {
            return;
        };
        let result = match how {
            Watch::Native(watch) => {
                self.native_count -= 1;
                self.native
                    .as_mut()
                    .map(|w| unwatch_natively(w, dir, watch))
            }
            Watch::Polled => self.poll.as_mut().map(|w| w.unwatch(dir)),
        };
        if let Some(Err(e)) = result {
            // The kernel drops the watch of a deleted or moved directory by itself.
            log::debug!("unwatching {}: {e}", dir.display());
        }
    }
}

impl Watches {
    /// Whether every directory of the roots is seen without a watch of its own (fanotify): no
    /// walk installs watches, none is resynced, and a new directory need not be listed.
    pub(super) fn sees_everything(&self) -> bool {
        #[cfg(target_os = "linux")]
        return self.fanotify.is_some();
        #[cfg(not(target_os = "linux"))]
        false
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

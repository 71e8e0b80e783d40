//! The watcher's thread: its state, its loop, the delivery of batches, and the watching of a
//! tree directory by directory. Not here: what one notify event does (`events`), what makes the
//! thread rescan (`rescan`), and the backends themselves (`watches`).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Select, Sender};

use super::events::RENAME_PAIRING;
use super::lost::{Lost, Scope};
use super::raw::{RawReceiver, RawSender};
use super::watches::{Handler, WatchFailure, Watches};
use super::{Backend, Counters, WatcherBuilder};
use crate::mounts::MountWatch;
use crate::pending::{Op, Pending};
use crate::snapshot::walk;
use crate::{Batch, Error, IgnoreRules, Item, RescanReason};

/// How many raw events are handled before the thread looks at its output again.
const DRAIN: usize = 4096;
/// Errors waiting for delivery beyond this are logged and dropped, so they too stay bounded.
const MAX_NOTICES: usize = 256;

#[derive(Debug)]
pub(super) struct RootState {
    pub(super) path: PathBuf,
    pub(super) present: bool,
    pub(super) reported_limit: bool,
}

/// The watcher's thread: owns the pending set and the backends.
#[derive(Debug)]
pub(super) struct Worker {
    pub(super) pending: Pending,
    /// The most changes one batch holds.
    pub(super) batch_max: usize,
    pub(super) watches: Watches,
    pub(super) roots: Vec<RootState>,
    pub(super) rules: Arc<IgnoreRules>,
    pub(super) lost: Arc<Lost>,
    /// The first half of a rename, waiting for its second.
    pub(super) held_from: Option<(PathBuf, usize, Instant)>,
    /// The latest time given to the pending set: it never goes back, although events from two
    /// backends, or received before the loop last looked at the clock, can be older.
    pub(super) clock: Instant,
    pub(super) notices: Vec<Error>,
    /// Events were lost in these directories (the roots, at worst): their watches must be
    /// checked before the next delivery, once however many losses came meanwhile.
    pub(super) resync_dirs: BTreeSet<PathBuf>,
    pub(super) poll_fallback: bool,
    pub(super) next_root_check: Instant,
    pub(super) root_check_every: Duration,
    /// The mount points of the process's namespace as last read: a change inside a root means
    /// watches that no longer see what is at their paths.
    pub(super) mounts: BTreeSet<PathBuf>,
    pub(super) stats: Arc<Counters>,
}

impl WatcherBuilder {
    /// The watcher's thread state, before its backends start.
    pub(super) fn worker(
        &self,
        roots: &[PathBuf],
        rules: Arc<IgnoreRules>,
        raw_tx: RawSender,
        stats: Arc<Counters>,
    ) -> Worker {
        let lost = Arc::new(Lost::default());
        Worker {
            pending: Pending::new(self.quiet, self.max_wait, self.pending_cap, roots.to_vec()),
            batch_max: self.batch_max,
            watches: Watches {
                #[cfg(target_os = "linux")]
                fanotify: None,
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
            resync_dirs: BTreeSet::new(),
            poll_fallback: self.poll_fallback,
            next_root_check: Instant::now(),
            root_check_every: self.max_wait.max(Duration::from_millis(100)),
            mounts: BTreeSet::new(),
            stats,
        }
    }
}

impl Worker {
    pub(super) fn run(
        mut self,
        backend: Backend,
        raw: RawReceiver,
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
            let i_raw = sel.recv(raw.channel());
            let i_stop = sel.recv(&stop);
            let i_mounts = sel.recv(&mount_changes);
            let i_out = has_output.then(|| sel.send(&out));
            let Ok(op) = sel.select_timeout(timeout) else {
                continue;
            };
            match op.index() {
                i if i == i_raw => {
                    let Ok((at, events)) = op.recv(raw.channel()) else {
                        return;
                    };
                    let mut handled = events.len();
                    raw.took(handled);
                    for ev in events {
                        self.handle(ev, at);
                    }
                    while handled < DRAIN
                        && let Ok((at, events)) = raw.channel().try_recv()
                    {
                        handled += events.len();
                        raw.took(events.len());
                        for ev in events {
                            self.handle(ev, at);
                        }
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
            match self.lost.take() {
                None => {}
                Some(Scope::KernelOverflow) => {
                    log::warn!(
                        "ward-watch: the kernel's event queue overflowed (its notice came with the event buffer full); rescanning the roots"
                    );
                    self.overflow(RescanReason::KernelOverflow);
                }
                Some(Scope::Roots) => {
                    log::warn!(
                        "ward-watch: event buffer full, events dropped; rescanning the roots"
                    );
                    self.overflow(RescanReason::EventBufferFull);
                }
                Some(Scope::Dirs(dirs)) => {
                    log::warn!(
                        "ward-watch: event buffer full, events dropped in {} director{}; rescanning {}",
                        dirs.len(),
                        if dirs.len() == 1 { "y" } else { "ies" },
                        if dirs.len() == 1 { "it" } else { "them" }
                    );
                    self.overflow_in(dirs, RescanReason::EventBufferFull);
                }
            }
            self.update_stats();
        }
    }

    /// `at`, or the latest time already used if that is later.
    pub(super) fn now(&mut self, at: Instant) -> Instant {
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

    pub(super) fn take_batch(&mut self, now: Instant) -> Batch {
        // Directories whose creation was among the lost events get their watches now, before
        // the consumer walks them for the rescan. In path order a directory comes before those
        // inside it, which its resync covers.
        let mut last: Option<PathBuf> = None;
        for dir in std::mem::take(&mut self.resync_dirs) {
            if last.as_ref().is_some_and(|l| dir.starts_with(l)) {
                continue;
            }
            self.resync(&dir, now);
            last = Some(dir);
        }
        let mut items: Vec<Item> = self.notices.drain(..).map(Item::Error).collect();
        items.extend(self.pending.take_due(now, self.batch_max));
        for item in &items {
            log::trace!("delivering {item:?}");
        }
        Batch { items }
    }

    pub(super) fn notice(&mut self, e: Error) {
        log::warn!("ward-watch: {e}");
        if self.notices.len() < MAX_NOTICES {
            self.notices.push(e);
        }
    }

    pub(super) fn start(&mut self, backend: Backend) {
        let mut fallback = None;
        if matches!(backend, Backend::Auto | Backend::Fanotify)
            && let Err(e) = self.start_fanotify()
        {
            let say = format!("ward-watch: fanotify cannot watch the roots ({e}); inotify instead");
            if backend == Backend::Fanotify {
                log::warn!("{say}");
            } else {
                log::info!("{say}");
            }
            fallback = Some(format!("fanotify: {e}"));
        }
        let name = match backend {
            _ if self.watches.sees_everything() => "fanotify",
            Backend::Poll(interval) => {
                self.watches.poll_interval = interval;
                "poll"
            }
            Backend::Auto | Backend::Fanotify | Backend::Recommended => {
                let h = self.watches.handler.clone();
                match super::watches::start_native(h) {
                    Ok(w) => {
                        self.watches.native = Some(w);
                        "inotify"
                    }
                    Err(e) => {
                        log::warn!(
                            "ward-watch: native watching unavailable ({e}); polling every {:?} instead",
                            self.watches.poll_interval
                        );
                        let before = fallback.map(|f| format!("{f}; ")).unwrap_or_default();
                        fallback = Some(format!("{before}native watching: {e}"));
                        "poll"
                    }
                }
            }
        };
        *self.stats.backend.lock() = super::ActiveBackend { name, fallback };
        for i in 0..self.roots.len() {
            let root = self.roots[i].path.clone();
            if root.is_dir() {
                // fanotify marked the root's file system: nothing to walk.
                if !self.watches.sees_everything() {
                    self.watch_tree(&root, false, Instant::now(), None);
                }
            } else {
                self.roots[i].present = false;
                self.notice(Error::RootMissing { path: root });
            }
        }
        self.update_stats();
    }

    /// Starts fanotify on the roots and the file systems mounted inside them.
    #[cfg(target_os = "linux")]
    fn start_fanotify(&mut self) -> std::io::Result<()> {
        let fanotify =
            super::fanotify::Fanotify::start(self.rules.clone(), self.watches.handler.clone())?;
        for point in &self.mounts {
            if self.rules.root_of(point).is_some() && !self.rules.is_ignored(point, true) {
                fanotify.mark(point)?;
            }
        }
        self.watches.fanotify = Some(fanotify);
        Ok(())
    }

    #[cfg(not(target_os = "linux"))]
    fn start_fanotify(&mut self) -> std::io::Result<()> {
        Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "fanotify is Linux's",
        ))
    }

    /// Watches `top` and every directory under it that is not ignored, each before it is listed,
    /// so that nothing created in it is missed; with `record`, everything found is recorded as
    /// created. Adds the directories it watched to `seen`, if it is given (a tree's worth of
    /// paths: only a resync needs them).
    pub(super) fn watch_tree(
        &mut self,
        top: &Path,
        record: bool,
        now: Instant,
        mut seen: Option<&mut HashSet<PathBuf>>,
    ) {
        let Some(root) = self.rules.root_of(top).map(Path::to_path_buf) else {
            return;
        };
        let mut limit_hit = false;
        let mut failed_watches = 0;
        let mut failures = Vec::new();
        let rules = self.rules.clone();
        let watches = &mut self.watches;
        let pending = &mut self.pending;
        walk(
            &rules,
            top,
            |dir| match watches.watch(dir, &root) {
                Ok(()) => {
                    if let Some(seen) = seen.as_deref_mut() {
                        seen.insert(dir.to_path_buf());
                    }
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
    }

    pub(super) fn is_root(&self, path: &Path) -> bool {
        self.roots.iter().any(|r| r.path == path)
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

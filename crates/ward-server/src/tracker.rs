//! The server's bookkeeping of changes and jobs against the [`Manifest`]: what to run at startup,
//! what a rescan or a directory change means, and the grouped, retried writes of every queued and
//! finished job.
//!
//! The writes are the manifest writer thread's (`ward-manifest`): the server's loop only adds
//! updates to a list, and the writer commits what gathered once the oldest has waited
//! `FLUSH_EVERY`. A commit waits for the disk (`fdatasync`), and on a slow disk that is long; the
//! loop never waits for it, except where it must read what it wrote: a comparison with the
//! manifest, a since-query and the end of the server ([`Tracker::flush`]).
//!
//! One mechanism decides what needs processing, whatever the occasion (first start, restart after
//! a crash, start after a stop, a watcher `Rescan`, a directory created, removed or renamed): walk
//! the subtree with the watcher's ignore rules, compare it with the manifest, and queue exactly
//! what was created, modified or removed since its last successful processing.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};
use ward_watch::IgnoreRules;

use crate::Error;
use crate::intents::Intents;
use crate::jobs::{CompiledTrigger, Event, Job, Triggers};
use crate::manifest::{ChangeEntry, Manifest, Opened, Reconciled, Update};
use crate::state::{StateDir, names};

/// Writes wait at most this long to be grouped into one commit.
pub(crate) const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// Retry delay while the store cannot be written (a full disk).
const RETRY_EVERY: Duration = Duration::from_secs(2);
/// How often `flush`, waiting for the writer, checks that the writer thread still runs.
const WRITER_CHECK: Duration = Duration::from_secs(1);
/// Above this many unflushed updates, they are compacted to the last ones per path.
const COMPACT_ABOVE: usize = 100_000;

/// The manifest and the updates not yet committed to it.
#[derive(Debug)]
pub(crate) struct Tracker {
    /// Read here, written by the writer thread.
    manifest: Arc<Mutex<Manifest>>,
    rules: Arc<IgnoreRules>,
    /// Stopped and joined when the tracker is dropped. It holds handles of its own on the manifest
    /// and the intent journal, so it may go before or after the fields beside it.
    writer: Writer,
    /// Paths with a job queued or running: the event and old path of the latest job queued for
    /// each, from `queue` until that job's `Finished` (the earlier ones are replaced by it, or
    /// finish before it).
    in_flight: HashMap<PathBuf, (Event, Option<PathBuf>)>,
    /// Paths of jobs that started, until the manifest holds their queueing.
    intents: Arc<Intents>,
    /// What the intent journal held at the start, until [`Tracker::untold_removals`] takes it.
    left_intents: Vec<PathBuf>,
}

/// What the tracker and its writer thread share: the updates not yet committed.
#[derive(Debug)]
struct Writes {
    state: Mutex<Unflushed>,
    /// The writer waits here for updates or a `flush`, and `flush` for the writer's answer.
    changed: Condvar,
}

#[derive(Debug)]
struct Unflushed {
    updates: Vec<Update>,
    /// When the writer commits `updates`: `FLUSH_EVERY` after the oldest, or a retry's time.
    due: Option<Instant>,
    /// How many updates the writer is committing now.
    writing: usize,
    /// `FLUSH_EVERY`; shorter or longer in tests.
    flush_every: Duration,
    /// Compact the unflushed updates when they pass this many: `COMPACT_ABOVE`, or twice what the
    /// last compaction left, so that compacting stays amortized O(1) per update even when more
    /// distinct paths wait than `COMPACT_ABOVE` (a first start on a large tree).
    compact_at: usize,
    /// The least `compact_at` can be (`COMPACT_ABOVE`; smaller in tests).
    compact_floor: usize,
    /// Compactions so far (tests check they stay few).
    compactions: u64,
    /// `flush` calls so far, and the last of them the writer has answered: an answer follows an
    /// attempt to commit everything added before the call.
    asked: u64,
    answered: u64,
    /// The last write error while writes fail, for `ward status`.
    failing: Option<String>,
    /// Paths known and the sequence number after the last commit, for `ward status`, which so
    /// need not wait for a commit in progress.
    committed: (u64, u64),
    /// The tracker is dropped: one last attempt, then the writer ends.
    quit: bool,
}

impl Tracker {
    /// Opens the manifest in `state`, rebuilding it (with a log line saying so) when damaged.
    ///
    /// # Errors
    /// If no usable store can be opened or created.
    pub(crate) fn open(state: &StateDir, rules: Arc<IgnoreRules>) -> Result<Tracker, Error> {
        let path = state.join(names::MANIFEST);
        let (manifest, opened) = Manifest::open(&path)?;
        match opened {
            Opened::Existing => {
                log::info!(
                    "manifest: {} path(s), sequence {}",
                    manifest.paths()?,
                    manifest.seq()
                );
            }
            Opened::Fresh => log::info!("manifest: none yet, so every file will be processed once"),
            Opened::Rebuilt { moved_to, reason } => log::error!(
                "manifest was damaged ({reason}); moved it to {} and rebuilt it: every file will be processed once",
                moved_to.display()
            ),
        }
        let committed = (manifest.paths()?, manifest.seq());
        let (intents, left_intents) = Intents::open(state).map_err(|e| Error::Io {
            context: format!("reading the intent journal in {}", state.path().display()),
            source: e,
        })?;
        let intents = Arc::new(intents);
        let manifest = Arc::new(Mutex::new(manifest));
        let writer = Writer::start(Arc::clone(&manifest), Arc::clone(&intents), committed)?;
        Ok(Tracker {
            manifest,
            rules,
            writer,
            in_flight: HashMap::new(),
            intents,
            left_intents,
        })
    }

    /// The intent journal, for the job threads: each records its path before its job runs.
    pub(crate) fn intents(&self) -> Arc<Intents> {
        Arc::clone(&self.intents)
    }

    /// The removals owed for jobs an earlier server ran but was killed before recording: each
    /// path of the intent journal it left that is gone and unknown to the manifest (a known path
    /// is the comparison's to settle). They are recorded as queued, and the journal renewed.
    pub(crate) fn untold_removals(&mut self, triggers: &Triggers) -> Vec<Job> {
        let mut left = std::mem::take(&mut self.left_intents);
        left.sort();
        left.dedup();
        let mut owed = Vec::new();
        for path in left {
            if path.symlink_metadata().is_ok() {
                continue;
            }
            match self.manifest.lock().knows(&path) {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => {
                    log::error!(
                        "cannot tell whether {} is known; its removal is told to be safe: {e}",
                        path.display()
                    );
                }
            }
            let Some(trigger) = self.trigger_for(&path, triggers) else {
                continue;
            };
            owed.push(Job {
                trigger: Arc::clone(trigger),
                path,
                event: Event::Removed,
                old_path: None,
            });
        }
        if !owed.is_empty() {
            log::info!(
                "{} file(s) processed just before the previous server was killed are gone: telling their removal",
                owed.len()
            );
        }
        let mut jobs = Vec::with_capacity(owed.len());
        for job in owed {
            jobs.extend(self.queue(job, triggers));
        }
        let paths: Vec<PathBuf> = jobs.iter().map(|j| j.path.clone()).collect();
        self.intents.restored(&paths);
        jobs
    }

    /// The jobs that were queued or running when the previous server ended (a removal where the
    /// file is gone now). The server then compares every root with the manifest.
    pub(crate) fn pending_jobs(&mut self, triggers: &Triggers) -> Result<Vec<Job>, Error> {
        let started = Instant::now();
        let mut jobs = Vec::new();
        let pending = self.manifest.lock().pending()?;
        for (path, event, old_path) in pending {
            let Some(trigger) = self.trigger_for(&path, triggers) else {
                continue;
            };
            let event = if path.symlink_metadata().is_err() {
                Event::Removed
            } else {
                event
            };
            jobs.push(Job {
                trigger: Arc::clone(trigger),
                path,
                event,
                old_path,
            });
        }
        log::info!(
            "{} job(s) left queued by the previous server (read in {:?}); the roots are compared with the manifest next",
            jobs.len(),
            started.elapsed()
        );
        Ok(jobs)
    }

    /// At most `limit` jobs of `path`'s subtree diff, from the paths that sort after `after` on,
    /// and, when the jobs filled `limit`, the path to resume after.
    ///
    /// A path with a job queued or running still gets one: that job may have read the file
    /// before the change the comparison found (whose event was lost: that is why it compares),
    /// and would record the older version as processed. The backlog and the pool coalesce the
    /// two while the first waits; only a running one is followed by a second run.
    pub(crate) fn subtree_jobs(
        &mut self,
        path: &Path,
        after: Option<&Path>,
        triggers: &Triggers,
        limit: usize,
    ) -> Result<(Vec<Job>, Option<PathBuf>), Error> {
        self.flush();
        let (changed, resume) =
            self.manifest
                .lock()
                .reconcile_some(&self.rules, path, after, limit, |p, _| {
                    self.trigger_for(p, triggers).is_some()
                })?;
        Ok((self.jobs_of(changed, triggers), resume))
    }

    fn jobs_of(&self, changed: Vec<Reconciled>, triggers: &Triggers) -> Vec<Job> {
        changed
            .into_iter()
            .filter_map(|r| {
                let trigger = self.trigger_for(&r.path, triggers)?;
                Some(Job {
                    trigger: Arc::clone(trigger),
                    path: r.path,
                    event: r.event,
                    old_path: None,
                })
            })
            .collect()
    }

    /// The watch root `path` lies in, if any.
    pub(crate) fn root_of(&self, path: &Path) -> Option<&Path> {
        self.rules.root_of(path)
    }

    /// The trigger that handles `path`, if it lies in a root, is not ignored, and one matches.
    pub(crate) fn trigger_for<'t>(
        &self,
        path: &Path,
        triggers: &'t Triggers,
    ) -> Option<&'t Arc<CompiledTrigger>> {
        let root = self.rules.root_of(path)?;
        if self.rules.is_ignored(path, false) {
            return None;
        }
        triggers.find(root, path)
    }

    /// Whether a job for `path` is queued or running.
    pub(crate) fn in_flight(&self, path: &Path) -> bool {
        self.in_flight.contains_key(path)
    }

    /// Records `job` as queued and returns what to queue for it: `job`, or `job` and the removals
    /// of rename origins it would otherwise lose.
    ///
    /// The backlog and the pool keep one job per path, the latest. A rename's job is the only one
    /// that tells the consumer its old path is gone, so a job replacing it while it waits (the
    /// renamed file then modified, removed or renamed over) must carry that on: a creation or
    /// modification becomes the rename (which reads the file as it is when it runs), and anything
    /// else comes with a removal of the old path under that path's own key.
    pub(crate) fn queue(&mut self, job: Job, triggers: &Triggers) -> Vec<Job> {
        let mut out = Vec::with_capacity(1);
        let mut next = Some(job);
        while let Some(mut job) = next.take() {
            // An old path that exists again has a job of its own, and is not gone.
            let origin = match self.in_flight.get(&job.path) {
                Some((Event::Renamed, Some(origin))) if origin.symlink_metadata().is_err() => {
                    Some(origin.clone())
                }
                _ => None,
            };
            match (job.event, origin) {
                (Event::Created | Event::Modified, Some(origin)) => {
                    job.event = Event::Renamed;
                    job.old_path = Some(origin);
                }
                (_, Some(origin)) if job.old_path.as_ref() != Some(&origin) => {
                    next = self.trigger_for(&origin, triggers).map(|trigger| Job {
                        trigger: Arc::clone(trigger),
                        path: origin,
                        event: Event::Removed,
                        old_path: None,
                    });
                }
                _ => {}
            }
            log::trace!("queued {:?} {}", job.event, job.path.display());
            self.in_flight
                .insert(job.path.clone(), (job.event, job.old_path.clone()));
            self.writer.push(Update::Queued {
                path: job.path.clone(),
                event: job.event,
                old_path: job.old_path.clone(),
            });
            out.push(job);
        }
        out
    }

    /// Records a finished job.
    pub(crate) fn finished(&mut self, update: Update) {
        log::trace!("finished {update:?}");
        if let Update::Finished {
            path,
            event,
            old_path,
            ..
        } = &update
            && self
                .in_flight
                .get(path)
                .is_some_and(|(e, o)| e == event && o == old_path)
        {
            // The latest job for the path is done (a rename's old path told gone, or failed:
            // a restart's comparison owes that then). An earlier one leaves the path in flight.
            self.in_flight.remove(path);
        }
        self.writer.push(update);
    }

    /// Returns once the writer has tried to commit every update added so far: what must read
    /// the manifest as the loop knows it calls this first. A failure is logged by the writer and
    /// retried later; nothing is dropped.
    pub(crate) fn flush(&self) {
        self.writer.flush();
    }

    /// Paths known and the sequence number as of the last commit, for `ward status`.
    pub(crate) fn stats(&self) -> (u64, u64) {
        self.writer.stats()
    }

    /// Updates waiting to be written, and the error that keeps them waiting, if any.
    pub(crate) fn backlog(&self) -> (usize, Option<String>) {
        self.writer.backlog()
    }

    /// For `ward changes --since`.
    pub(crate) fn changes_since(
        &self,
        since: u64,
        limit: usize,
    ) -> Result<Vec<ChangeEntry>, Error> {
        self.manifest.lock().changes_since(since, limit)
    }
}

/// The handle of the manifest writer thread (`ward-manifest`), which commits what the tracker
/// pushes. Dropping it ends the thread after one last attempt to commit what waits, and joins it.
#[derive(Debug)]
struct Writer {
    writes: Arc<Writes>,
    /// `None` only while `drop` joins it.
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    /// Starts the thread that commits into `manifest`, sealing `intents` before it takes each
    /// batch; `committed` is what `stats` says until the first commit.
    fn start(
        manifest: Arc<Mutex<Manifest>>,
        intents: Arc<Intents>,
        committed: (u64, u64),
    ) -> Result<Writer, Error> {
        let writes = Arc::new(Writes {
            state: Mutex::new(Unflushed {
                updates: Vec::new(),
                due: None,
                writing: 0,
                flush_every: FLUSH_EVERY,
                compact_at: COMPACT_ABOVE,
                compact_floor: COMPACT_ABOVE,
                compactions: 0,
                asked: 0,
                answered: 0,
                failing: None,
                committed,
                quit: false,
            }),
            changed: Condvar::new(),
        });
        let thread = {
            let writes = Arc::clone(&writes);
            std::thread::Builder::new()
                .name("ward-manifest".into())
                .spawn(move || writer_main(&writes, &manifest, &intents))
                .map_err(|e| Error::Io {
                    context: "starting the manifest writer thread".into(),
                    source: e,
                })?
        };
        Ok(Writer {
            writes,
            thread: Some(thread),
        })
    }

    /// Adds `update` to what the next commit writes.
    fn push(&self, update: Update) {
        let mut state = self.writes.state.lock();
        state.updates.push(update);
        if state.due.is_none() {
            state.due = Some(Instant::now() + state.flush_every);
            self.writes.changed.notify_all();
        }
        if state.updates.len() > state.compact_at {
            compact(&mut state.updates);
            state.compactions += 1;
            state.compact_at = state.compact_floor.max(2 * state.updates.len());
        }
        // Far behind a commit that takes long (a slow disk): wait for it to end, so that what
        // waits stays within `COMPACT_ABOVE` updates plus the commit's own.
        while state.writing > 0 && state.updates.len() > state.compact_floor {
            self.writes.changed.wait(&mut state);
        }
    }

    /// Returns once the thread has tried to commit every update pushed so far.
    fn flush(&self) {
        let mut state = self.writes.state.lock();
        if state.updates.is_empty() && state.writing == 0 {
            return; // Everything added so far is committed.
        }
        state.asked += 1;
        let ticket = state.asked;
        self.writes.changed.notify_all();
        while state.answered < ticket {
            self.writes.changed.wait_for(&mut state, WRITER_CHECK);
            if self.thread.as_ref().is_none_or(JoinHandle::is_finished) {
                log::error!(
                    "the manifest writer thread has ended: {} update(s) are not recorded",
                    state.updates.len() + state.writing
                );
                return;
            }
        }
    }

    /// Paths known and the sequence number as of the last commit.
    fn stats(&self) -> (u64, u64) {
        self.writes.state.lock().committed
    }

    /// Updates waiting to be written, and the error that keeps them waiting, if any.
    fn backlog(&self) -> (usize, Option<String>) {
        let state = self.writes.state.lock();
        (state.updates.len() + state.writing, state.failing.clone())
    }
}

/// The writer thread ends after one last attempt to commit what waits.
impl Drop for Writer {
    fn drop(&mut self) {
        self.writes.state.lock().quit = true;
        self.writes.changed.notify_all();
        if let Some(writer) = self.thread.take()
            && writer.join().is_err()
        {
            log::error!("the manifest writer thread panicked");
        }
    }
}

/// The writer thread: commits the updates once the oldest is due, or at once when `flush` asks,
/// and answers `flush` after each attempt. A failed commit keeps its updates, ahead of the newer
/// ones, for a retry after `RETRY_EVERY`.
fn writer_main(writes: &Writes, manifest: &Mutex<Manifest>, intents: &Intents) {
    let mut state = writes.state.lock();
    loop {
        let asked = state.asked;
        let due = state.quit
            || asked > state.answered
            || state.due.is_some_and(|at| Instant::now() >= at);
        if !due {
            match state.due {
                Some(at) => {
                    writes.changed.wait_until(&mut state, at);
                }
                None => writes.changed.wait(&mut state),
            }
            continue;
        }
        if !state.updates.is_empty() {
            write(&mut state, manifest, intents);
        }
        state.answered = asked;
        writes.changed.notify_all();
        if state.quit {
            if !state.updates.is_empty() {
                log::error!(
                    "{} update(s) could not be recorded in the manifest before the server ended; the next start's comparison redoes their jobs",
                    state.updates.len()
                );
            }
            return;
        }
    }
}

/// One attempt to commit what waits in `state`, whose lock is released meanwhile.
fn write(state: &mut MutexGuard<'_, Unflushed>, manifest: &Mutex<Manifest>, intents: &Intents) {
    // Sealed first: every path in the sealed files was queued before the batch is taken.
    let sealed = intents.seal();
    let batch = std::mem::take(&mut state.updates);
    state.writing = batch.len();
    state.due = None;
    let result = MutexGuard::unlocked(state, || {
        // redb panics on some kinds of damage: that is a failed write, not a lost writer.
        catch_unwind(AssertUnwindSafe(|| {
            let mut manifest = manifest.lock();
            manifest.apply(&batch)?;
            // Committed: a count that cannot be read must not make it look failed.
            let paths = manifest
                .paths()
                .inspect_err(|e| {
                    log::warn!("cannot count the manifest's paths after a commit; `ward status` shows the last count: {e}");
                })
                .ok();
            Ok((paths, manifest.seq()))
        }))
        .unwrap_or_else(|_| {
            Err(Error::Store(
                "the store panicked while writing (damaged?)".into(),
            ))
        })
    });
    state.writing = 0;
    match result {
        Ok((paths, seq)) => {
            intents.delete_through(sealed);
            state.committed = (paths.unwrap_or(state.committed.0), seq);
            // What waits now came after the batch: compaction starts over with it.
            state.compact_at = state.compact_floor.max(2 * state.updates.len());
            if state.failing.take().is_some() {
                log::info!(
                    "manifest writable again: {} update(s) recorded",
                    batch.len()
                );
            }
        }
        Err(e) => {
            if state.failing.is_none() {
                log::error!(
                    "cannot record {} update(s) in the manifest, keeping them and retrying every {RETRY_EVERY:?}: {e}",
                    batch.len()
                );
            }
            state.failing = Some(e.to_string());
            let newer = std::mem::replace(&mut state.updates, batch);
            state.updates.extend(newer);
            state.due = Some(Instant::now() + RETRY_EVERY);
            let reopened = MutexGuard::unlocked(state, || manifest.lock().reopen());
            if let Err(e) = reopened {
                log::debug!("reopening the manifest after a failed write: {e}");
            }
        }
    }
}

/// Keeps, per path, its last `Queued` and last `Finished` update in their order: what the
/// manifest would hold after applying them all, with a sequence number per kept change.
fn compact(updates: &mut Vec<Update>) {
    let mut last: HashMap<(PathBuf, bool), usize> = HashMap::new();
    for (i, update) in updates.iter().enumerate() {
        last.insert(
            (
                update.path().to_path_buf(),
                matches!(update, Update::Queued { .. }),
            ),
            i,
        );
    }
    let mut keep: Vec<usize> = last.into_values().collect();
    keep.sort_unstable();
    let mut kept = Vec::with_capacity(keep.len());
    for i in keep {
        kept.push(updates[i].clone());
    }
    *updates = kept;
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::{Handler, Trigger};

    /// The one trigger of [`tracker_of`]: every file.
    fn every_file() -> Trigger {
        Trigger {
            name: "t".into(),
            globs: Vec::new(),
            handler: Handler::Exec {
                argv: vec!["true".into()],
            },
        }
    }

    /// A tracker with its state beside `root`, and one trigger for every file.
    pub(crate) fn tracker_of(dir: &tempfile::TempDir, root: &Path) -> (Tracker, Triggers) {
        let state = StateDir::open(&dir.path().join("state")).unwrap();
        let rules = Arc::new(IgnoreRules::new(vec![root.to_path_buf()], &[], None).unwrap());
        (
            Tracker::open(&state, rules).unwrap(),
            Triggers::new(&[every_file()]).unwrap(),
        )
    }

    /// A job of [`tracker_of`]'s trigger.
    pub(crate) fn job(path: &Path, event: Event, old_path: Option<&Path>) -> Job {
        Job {
            trigger: Arc::new(CompiledTrigger::new(&every_file()).unwrap()),
            path: path.to_path_buf(),
            event,
            old_path: old_path.map(Path::to_path_buf),
        }
    }

    fn done(job: &Job) -> Update {
        Update::Finished {
            path: job.path.clone(),
            event: job.event,
            ok: true,
            processed: None,
            old_path: job.old_path.clone(),
        }
    }

    #[test]
    fn a_job_replacing_a_waiting_rename_still_tells_its_old_path_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let (mut tracker, triggers) = tracker_of(&dir, &root);
        let (a, b, p) = (root.join("a"), root.join("b"), root.join("p"));
        let renamed = |from: &Path| job(&p, Event::Renamed, Some(from));

        // `a` moved to `p`, then `p` modified before the rename's job ran: the backlog and the
        // pool keep only the later job, so it must be the rename.
        assert_eq!(tracker.queue(renamed(&a), &triggers), [renamed(&a)]);
        assert_eq!(
            tracker.queue(job(&p, Event::Modified, None), &triggers),
            [renamed(&a)]
        );
        // Then `b` moved over `p`: the new rename, and `a`'s removal under its own key.
        assert_eq!(
            tracker.queue(renamed(&b), &triggers),
            [renamed(&b), job(&a, Event::Removed, None)]
        );
        // Then `p` removed: `b` is gone too.
        assert_eq!(
            tracker.queue(job(&p, Event::Removed, None), &triggers),
            [job(&p, Event::Removed, None), job(&b, Event::Removed, None)]
        );
        // Nothing is owed any more.
        assert_eq!(
            tracker.queue(job(&p, Event::Created, None), &triggers),
            [job(&p, Event::Created, None)]
        );
    }

    #[test]
    fn an_old_path_that_exists_again_is_not_reported_gone_by_a_later_job() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let (mut tracker, triggers) = tracker_of(&dir, &root);
        let (a, p) = (root.join("a"), root.join("p"));
        tracker.queue(job(&p, Event::Renamed, Some(&a)), &triggers);
        // `a` was created again before the rename's job ran: it is there, with a job of its own.
        std::fs::write(&a, "new").unwrap();
        assert_eq!(
            tracker.queue(job(&p, Event::Removed, None), &triggers),
            [job(&p, Event::Removed, None)]
        );
    }

    #[test]
    fn only_the_rename_that_finished_stops_being_carried_on() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let (mut tracker, triggers) = tracker_of(&dir, &root);
        let (a, b, p) = (root.join("a"), root.join("b"), root.join("p"));
        let first = job(&p, Event::Renamed, Some(&a));
        let second = job(&p, Event::Renamed, Some(&b));
        tracker.queue(first.clone(), &triggers);
        // `b` moved over `p` while the first rename's job ran.
        tracker.queue(second.clone(), &triggers);
        tracker.finished(done(&first));
        assert_eq!(
            tracker.queue(job(&p, Event::Modified, None), &triggers),
            std::slice::from_ref(&second),
            "the second rename still waits: a modification must not drop it"
        );
        tracker.finished(done(&second));
        assert_eq!(
            tracker.queue(job(&p, Event::Modified, None), &triggers),
            [job(&p, Event::Modified, None)]
        );
    }

    #[test]
    fn a_comparison_queues_a_changed_file_even_while_a_job_for_it_is_in_flight() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("tree");
        std::fs::create_dir_all(&root).unwrap();
        let (mut tracker, triggers) = tracker_of(&dir, &root);
        let p = root.join("p");
        std::fs::write(&p, "1").unwrap();
        // A job for `p` is running and has read version 1; version 2 follows, its event lost.
        tracker.queue(job(&p, Event::Created, None), &triggers);
        std::fs::write(&p, "22").unwrap();
        let (jobs, _) = tracker.subtree_jobs(&root, None, &triggers, 10).unwrap();
        assert_eq!(
            jobs.iter().map(|j| &j.path).collect::<Vec<_>>(),
            [&p],
            "the running job may record version 1 as processed: version 2 needs a job"
        );
    }

    #[test]
    fn a_path_stays_in_flight_until_its_latest_job_finishes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let (mut tracker, triggers) = tracker_of(&dir, &root);
        let p = root.join("p");
        let (created, modified) = (
            job(&p, Event::Created, None),
            job(&p, Event::Modified, None),
        );
        tracker.queue(created.clone(), &triggers);
        tracker.queue(modified.clone(), &triggers);
        tracker.finished(done(&created));
        assert!(
            tracker.in_flight(&p),
            "the modification's job still waits after the creation's finished"
        );
        tracker.finished(done(&modified));
        assert!(!tracker.in_flight(&p));
    }

    /// A writer of a fresh manifest in `dir`, and that manifest: a test that locks it makes a
    /// commit wait as long as it wants.
    fn writer_of(dir: &tempfile::TempDir) -> (Writer, Arc<Mutex<Manifest>>) {
        let state = StateDir::open(&dir.path().join("state")).unwrap();
        let (manifest, _) = Manifest::open(&state.join(names::MANIFEST)).unwrap();
        let (intents, _) = Intents::open(&state).unwrap();
        let manifest = Arc::new(Mutex::new(manifest));
        let writer = Writer::start(Arc::clone(&manifest), Arc::new(intents), (0, 0)).unwrap();
        (writer, manifest)
    }

    /// The queueing of a creation's job for `path`.
    fn queued(path: &Path) -> Update {
        Update::Queued {
            path: path.to_path_buf(),
            event: Event::Created,
            old_path: None,
        }
    }

    /// The successful outcome of [`queued`]'s job.
    fn finished(path: &Path) -> Update {
        Update::Finished {
            path: path.to_path_buf(),
            event: Event::Created,
            ok: true,
            processed: None,
            old_path: None,
        }
    }

    /// Compacts past `updates` waiting, and commits only when asked (`flush`, or a `due` set
    /// by the test).
    fn compact_above(writer: &Writer, updates: usize) {
        let mut state = writer.writes.state.lock();
        state.compact_floor = updates;
        state.compact_at = updates;
        state.flush_every = Duration::from_secs(3600);
    }

    #[test]
    fn many_distinct_waiting_paths_are_compacted_a_logarithmic_number_of_times() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let (writer, _manifest) = writer_of(&dir);
        // Nothing is written until `flush` below.
        compact_above(&writer, 1_000);
        // Ten times more distinct paths than the threshold, none flushed (a first start on a
        // large tree): compacting after every push past the threshold would be quadratic.
        let paths = 10_000;
        for i in 0..paths {
            writer.push(queued(&root.join(format!("f{i}"))));
        }
        let compactions = writer.writes.state.lock().compactions;
        assert!(
            compactions <= 5,
            "{compactions} compactions for {paths} paths"
        );
        assert_eq!(
            writer.backlog().0,
            paths,
            "compaction dropped updates of distinct paths"
        );
        writer.flush();
        assert_eq!(writer.backlog().0, 0);
        assert_eq!(writer.stats().0, paths as u64);
    }

    /// Polls `condition` every millisecond for at most 10 s.
    fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
        let until = Instant::now() + Duration::from_secs(10);
        while !condition() {
            assert!(Instant::now() < until, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn the_writer_thread_commits_while_the_loop_goes_on_adding() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let (writer, manifest) = writer_of(&dir);
        // Nothing is due until the test says so.
        writer.writes.state.lock().flush_every = Duration::from_secs(3600);
        let queue_and_finish = |writer: &Writer, name: &str| {
            let path = root.join(name);
            writer.push(queued(&path));
            writer.push(finished(&path));
        };
        // A commit that takes as long as the test wants: the store is busy until `busy` goes.
        let busy = manifest.lock();
        for i in 0..10 {
            queue_and_finish(&writer, &format!("a{i}"));
        }
        {
            let mut state = writer.writes.state.lock();
            state.flush_every = Duration::from_millis(1);
            state.due = Some(Instant::now());
        }
        writer.writes.changed.notify_all();
        wait_for("the writer to take the first updates", || {
            writer.writes.state.lock().writing == 20
        });
        // The loop adds more and reads its backlog and stats while the commit waits for the store.
        for i in 0..5 {
            queue_and_finish(&writer, &format!("b{i}"));
        }
        assert_eq!(writer.backlog(), (30, None));
        assert_eq!(writer.stats(), (0, 0), "`ward status` waits for no commit");
        drop(busy);
        // Nobody calls `flush`: the writer commits both groups on its own.
        wait_for("every update to be committed", || writer.backlog().0 == 0);
        assert_eq!(writer.stats().0, 15);
    }

    #[test]
    fn far_behind_a_slow_commit_the_loop_waits_for_it_instead_of_piling_up_updates() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let (writer, manifest) = writer_of(&dir);
        compact_above(&writer, 10);
        let writes = Arc::clone(&writer.writes);
        let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        // Declared before `busy`, so that a failing test lets the store go before it drops the
        // writer (which waits for the store).
        let pushing;
        // A commit that takes as long as the test wants, holding one update.
        let busy = manifest.lock();
        writer.push(queued(&root.join("first")));
        writes.state.lock().due = Some(Instant::now());
        writes.changed.notify_all();
        wait_for("the writer to take the first update", || {
            writes.state.lock().writing == 1
        });
        pushing = {
            let done = Arc::clone(&done);
            std::thread::spawn(move || {
                // Distinct paths: compaction cannot shrink them.
                for i in 0..100 {
                    writer.push(queued(&root.join(format!("f{i}"))));
                    done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                writer
            })
        };
        wait_for("the updates to reach the bound", || {
            writes.state.lock().updates.len() >= 11
        });
        let waiting = writes.state.lock().updates.len();
        let pushed = done.load(std::sync::atomic::Ordering::SeqCst);
        assert!(
            waiting == 11 && pushed <= 11,
            "{waiting} updates piled up behind the commit ({pushed} pushes returned)"
        );
        drop(busy);
        let writer = pushing.join().unwrap();
        writer.flush();
        assert_eq!(writer.stats().0, 101);
        assert_eq!(writer.backlog(), (0, None));
    }

    #[test]
    fn flush_returns_after_the_commit_of_everything_added_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let (writer, _manifest) = writer_of(&dir);
        // Only `flush` can make the writer commit.
        writer.writes.state.lock().flush_every = Duration::from_secs(3600);
        let a = root.join("a");
        writer.push(queued(&a));
        writer.push(finished(&a));
        assert_eq!(writer.backlog().0, 2);
        writer.flush();
        assert_eq!(writer.backlog(), (0, None));
        assert_eq!(writer.stats().0, 1);
    }
}

//! The server's bookkeeping of changes and jobs against the [`Manifest`]: what to run at startup,
//! what a rescan or a directory change means, and which paths have a job in flight. Not the
//! writes of every queued and finished job: the tracker hands them to the manifest writer thread
//! (`writer`), which groups, commits and retries them, so that the loop never waits for the disk
//! except where it must read what it wrote ([`Tracker::flush`]).
//!
//! One mechanism decides what needs processing, whatever the occasion (first start, restart after
//! a crash, start after a stop, a watcher `Rescan`, a directory created, removed or renamed): walk
//! the subtree with the watcher's ignore rules, compare it with the manifest, and queue exactly
//! what was created, modified or removed since its last successful processing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use ward_watch::IgnoreRules;

use crate::Error;
use crate::feed::Feed;
use crate::intents::Intents;
use crate::jobs::{CompiledTrigger, Event, Job, Triggers};
use crate::manifest::{ChangeEntry, Failure, Manifest, Opened, Update};
use crate::state::{StateDir, names};
use writer::Writer;

mod writer;

/// The manifest and the updates not yet committed to it.
#[derive(Debug)]
pub(crate) struct Tracker {
    /// Read here, written by the writer thread.
    manifest: Arc<Mutex<Manifest>>,
    rules: Arc<IgnoreRules>,
    /// What paths are matched against; replaced on a reload.
    triggers: Triggers,
    /// Stopped and joined when the tracker is dropped. It holds handles of its own on the manifest
    /// and the intent journal, so it may go before or after the fields beside it.
    writer: Writer,
    /// The manifest's changes for subscribers, told of each commit by the writer.
    feed: Feed,
    /// Paths with a job queued or running: the event and old path of the latest job queued for
    /// each, from `queue` until that job's `Finished` (the earlier ones are replaced by it, or
    /// finish before it).
    in_flight: HashMap<Arc<Path>, (Event, Option<PathBuf>)>,
    /// Paths of jobs that started, until the manifest holds their queueing.
    intents: Arc<Intents>,
    /// What the intent journal held at the start, until [`Tracker::untold_removals`] takes it.
    left_intents: Vec<PathBuf>,
    /// The last change sequence number given (`queue` numbers each job as it queues it, so
    /// that its message can carry the number the manifest files it under).
    seq: u64,
}

impl Tracker {
    /// Opens the manifest in `state`, rebuilding it (with a log line saying so) when damaged.
    ///
    /// # Errors
    /// If no usable store can be opened or created.
    pub(crate) fn open(
        state: &StateDir,
        rules: Arc<IgnoreRules>,
        triggers: Triggers,
    ) -> Result<Tracker, Error> {
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
        let (intents, left_intents) = Intents::open(state).map_err(|e| {
            Error::io(
                format!("reading the intent journal in {}", state.path().display()),
                e,
            )
        })?;
        let intents = Arc::new(intents);
        let manifest = Arc::new(Mutex::new(manifest));
        let feed = Feed::new(Arc::clone(&manifest), committed.1);
        let writer = Writer::start(
            Arc::clone(&manifest),
            Arc::clone(&intents),
            committed,
            feed.clone(),
        )?;
        Ok(Tracker {
            manifest,
            feed,
            rules,
            triggers,
            writer,
            in_flight: HashMap::new(),
            intents,
            left_intents,
            seq: committed.1,
        })
    }

    /// The change feed, for subscribers.
    pub(crate) fn feed(&self) -> Feed {
        self.feed.clone()
    }

    /// The intent journal, for the job threads: each records its path before its job runs.
    pub(crate) fn intents(&self) -> Arc<Intents> {
        Arc::clone(&self.intents)
    }

    /// The removals owed for jobs an earlier server ran but was killed before recording: each
    /// path of the intent journal it left that is gone and unknown to the manifest (a known path
    /// is the comparison's to settle). They are recorded as queued, and the journal renewed.
    pub(crate) fn untold_removals(&mut self) -> Vec<Job> {
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
            let Some(trigger) = self.trigger_for(&path) else {
                continue;
            };
            owed.push(Job {
                trigger: Arc::clone(trigger),
                path: path.into(),
                event: Event::Removed,
                old_path: None,
                seq: None,
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
            jobs.extend(self.queue(job));
        }
        let paths: Vec<PathBuf> = jobs.iter().map(|j| j.path.to_path_buf()).collect();
        self.intents.restored(&paths);
        jobs
    }

    /// The jobs that were queued or running when the previous server ended (a removal where the
    /// file is gone now). The server then compares every root with the manifest.
    pub(crate) fn pending_jobs(&mut self) -> Result<Vec<Job>, Error> {
        let started = Instant::now();
        let mut jobs = Vec::new();
        let pending = self.manifest.lock().pending()?;
        for (path, event, old_path) in pending {
            let Some(trigger) = self.trigger_for(&path) else {
                continue;
            };
            let event = if path.symlink_metadata().is_err() {
                Event::Removed
            } else {
                event
            };
            jobs.push(Job {
                trigger: Arc::clone(trigger),
                path: path.into(),
                event,
                old_path,
                seq: None,
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
        limit: usize,
    ) -> Result<(Vec<Job>, Option<PathBuf>), Error> {
        self.flush();
        // Each path is matched once, by the comparison's filter, which hands its trigger on.
        let (changed, resume) =
            self.manifest
                .lock()
                .reconcile_some(&self.rules, path, after, limit, |p, _| {
                    self.trigger_for(p).map(Arc::clone)
                })?;
        let jobs = changed
            .into_iter()
            .map(|r| Job {
                trigger: r.matched,
                path: r.path.into(),
                event: r.event,
                old_path: None,
                seq: None,
            })
            .collect();
        Ok((jobs, resume))
    }

    /// The watch root `path` lies in, if any.
    pub(crate) fn root_of(&self, path: &Path) -> Option<&Path> {
        self.rules.root_of(path)
    }

    /// The trigger that handles `path`, if it lies in a root, is not ignored, and one matches.
    pub(crate) fn trigger_for(&self, path: &Path) -> Option<&Arc<CompiledTrigger>> {
        let root = self.rules.root_of(path)?;
        if self.rules.is_ignored(path, false) {
            return None;
        }
        self.triggers.find(root, path)
    }

    /// Matches the paths of jobs made from now on against `triggers` (a reload); jobs already
    /// made keep the trigger that matched them.
    pub(crate) fn set_triggers(&mut self, triggers: Triggers) {
        self.triggers = triggers;
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
    pub(crate) fn queue(&mut self, job: Job) -> Vec<Job> {
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
                    next = self.trigger_for(&origin).map(|trigger| Job {
                        trigger: Arc::clone(trigger),
                        path: origin.into(),
                        event: Event::Removed,
                        old_path: None,
                        seq: None,
                    });
                }
                _ => {}
            }
            log::trace!("queued {:?} {}", job.event, job.path.display());
            self.in_flight
                .insert(Arc::clone(&job.path), (job.event, job.old_path.clone()));
            // A rename's removal of its old path is numbered just before it.
            self.seq += if job.old_path.is_some() { 2 } else { 1 };
            job.seq = Some(self.seq);
            self.writer.push(Update::Queued {
                path: job.path.to_path_buf(),
                event: job.event,
                old_path: job.old_path.clone(),
                seq: job.seq,
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
                .get(path.as_path())
                .is_some_and(|(e, o)| e == event && o == old_path)
        {
            // The latest job for the path is done (a rename's old path told gone, or failed:
            // a restart's comparison owes that then). An earlier one leaves the path in flight.
            self.in_flight.remove(path.as_path());
        }
        self.writer.push(update);
    }

    /// Returns once the writer has tried to commit every update added so far: what must read
    /// the manifest as the loop knows it calls this first. A failure is logged by the writer and
    /// retried later; nothing is dropped.
    pub(crate) fn flush(&self) {
        self.writer.flush();
    }

    /// Compacts the manifest's file if it holds much more than its pages use; for the server's
    /// end, after the last flush, when nothing else reads the manifest.
    pub(crate) fn compact_manifest(&self) {
        let started = Instant::now();
        match self.manifest.lock().compact() {
            Ok(Some((before, after))) => log::info!(
                "manifest: compacted from {:.1} MB to {:.1} MB in {:?}",
                before as f64 / 1e6,
                after as f64 / 1e6,
                started.elapsed()
            ),
            Ok(None) => {}
            Err(e) => log::warn!("manifest: not compacted: {e}"),
        }
    }

    /// Paths known and the sequence number as of the last commit, for `ward status`.
    pub(crate) fn stats(&self) -> (u64, u64) {
        self.writer.stats()
    }

    /// Updates waiting to be written, and the error that keeps them waiting, if any.
    pub(crate) fn backlog(&self) -> (usize, Option<String>) {
        self.writer.backlog()
    }

    /// How many paths gave up, as of the last commit (`ward status`); 0, logged, when the store
    /// cannot be read.
    pub(crate) fn gave_up(&self) -> u64 {
        self.manifest.lock().gave_up().unwrap_or_else(|e| {
            log::warn!("cannot count the paths that gave up: {e}");
            0
        })
    }

    /// How many paths gave up, and the first `limit` of them (`ward failures`).
    pub(crate) fn failures(&self, limit: usize) -> Result<(u64, Vec<(PathBuf, Failure)>), Error> {
        self.flush();
        let manifest = self.manifest.lock();
        Ok((manifest.gave_up()?, manifest.failures(None, limit)?))
    }

    /// Forgets the give-ups of `path` and every path below it (`ward retry`), and returns how
    /// many there were; a comparison of `path` then owes their jobs again.
    pub(crate) fn retry(&mut self, path: &Path) -> Result<u64, Error> {
        self.flush();
        let n = self.manifest.lock().gave_up_under(path)?;
        if n > 0 {
            self.writer.push(Update::Retried {
                path: path.to_path_buf(),
            });
        }
        Ok(n)
    }

    /// Records that the job of `path` gave up on a remote worker, on the version `version`
    /// (size, mtime, inode; none for a removal). Recorded as a give-up only if that version is
    /// the one recorded as processed here: a later version has a job (and a result) of its own.
    #[cfg(feature = "nats")]
    pub(crate) fn gave_up_remotely(
        &mut self,
        path: &Path,
        mut failure: Failure,
        version: Option<(u64, i64, u64)>,
    ) {
        self.flush();
        let error = failure.error.clone();
        let processed = match self.manifest.lock().record(path) {
            Ok(record) => record.and_then(|r| r.processed),
            Err(e) => {
                log::error!(
                    "a remote give-up of {} is not recorded: {e}",
                    path.display()
                );
                return;
            }
        };
        let update = match (version, processed) {
            (Some((size, mtime_ns, ino)), Some(done))
                if (done.size, done.mtime_ns, done.ino) == (size, mtime_ns, ino) =>
            {
                failure.version = Some(done);
                Update::GaveUpRemotely {
                    path: path.to_path_buf(),
                    failure: Box::new(failure),
                }
            }
            (None, None) => Update::GaveUp {
                path: path.to_path_buf(),
                failure: Box::new(failure),
            },
            _ => {
                log::info!(
                    "{}: a remote worker gave up on a version since replaced; the new one has its own job",
                    path.display()
                );
                return;
            }
        };
        log::error!(
            "{}: gave up {error}: `ward failures` lists it",
            path.display()
        );
        self.writer.push(update);
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::Trigger;

    /// The one trigger of [`tracker_of`]: every file.
    fn every_file() -> Trigger {
        Trigger::exec_true("t", &[])
    }

    /// Polls `condition` every millisecond for at most 10 s: the tests' wait for what other
    /// threads (the manifest writer, a batch runner) do.
    pub(crate) fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
        let until = Instant::now() + std::time::Duration::from_secs(10);
        while !condition() {
            assert!(Instant::now() < until, "timed out waiting for {what}");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// A tracker with its state beside `root`, and one trigger for every file.
    pub(crate) fn tracker_of(dir: &tempfile::TempDir, root: &Path) -> Tracker {
        let state = StateDir::open(&dir.path().join("state")).unwrap();
        let rules = Arc::new(IgnoreRules::new(vec![root.to_path_buf()], &[], None).unwrap());
        let triggers = Triggers::new(&[every_file()]).unwrap();
        Tracker::open(&state, rules, triggers).unwrap()
    }

    /// A job of [`tracker_of`]'s trigger.
    pub(crate) fn job(path: &Path, event: Event, old_path: Option<&Path>) -> Job {
        Job {
            trigger: Arc::new(CompiledTrigger::new(&every_file()).unwrap()),
            path: path.into(),
            event,
            old_path: old_path.map(Path::to_path_buf),
            seq: None,
        }
    }

    /// `jobs` as if not numbered: what a test compares when the numbers are not its concern.
    pub(crate) fn unnumbered(jobs: Vec<Job>) -> Vec<Job> {
        jobs.into_iter()
            .map(|job| Job { seq: None, ..job })
            .collect()
    }

    fn done(job: &Job) -> Update {
        Update::Finished {
            path: job.path.to_path_buf(),
            event: job.event,
            ok: true,
            processed: None,
            old_path: job.old_path.clone(),
            seq: None,
        }
    }

    #[test]
    fn a_job_replacing_a_waiting_rename_still_tells_its_old_path_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let mut tracker = tracker_of(&dir, &root);
        let (a, b, p) = (root.join("a"), root.join("b"), root.join("p"));
        let renamed = |from: &Path| job(&p, Event::Renamed, Some(from));

        // `a` moved to `p`, then `p` modified before the rename's job ran: the backlog and the
        // pool keep only the later job, so it must be the rename.
        assert_eq!(unnumbered(tracker.queue(renamed(&a))), [renamed(&a)]);
        assert_eq!(
            unnumbered(tracker.queue(job(&p, Event::Modified, None))),
            [renamed(&a)]
        );
        // Then `b` moved over `p`: the new rename, and `a`'s removal under its own key.
        assert_eq!(
            unnumbered(tracker.queue(renamed(&b))),
            [renamed(&b), job(&a, Event::Removed, None)]
        );
        // Then `p` removed: `b` is gone too.
        assert_eq!(
            unnumbered(tracker.queue(job(&p, Event::Removed, None))),
            [job(&p, Event::Removed, None), job(&b, Event::Removed, None)]
        );
        // Nothing is owed any more.
        assert_eq!(
            unnumbered(tracker.queue(job(&p, Event::Created, None))),
            [job(&p, Event::Created, None)]
        );
    }

    #[test]
    fn an_old_path_that_exists_again_is_not_reported_gone_by_a_later_job() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let mut tracker = tracker_of(&dir, &root);
        let (a, p) = (root.join("a"), root.join("p"));
        tracker.queue(job(&p, Event::Renamed, Some(&a)));
        // `a` was created again before the rename's job ran: it is there, with a job of its own.
        std::fs::write(&a, "new").unwrap();
        assert_eq!(
            unnumbered(tracker.queue(job(&p, Event::Removed, None))),
            [job(&p, Event::Removed, None)]
        );
    }

    #[test]
    fn only_the_rename_that_finished_stops_being_carried_on() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let mut tracker = tracker_of(&dir, &root);
        let (a, b, p) = (root.join("a"), root.join("b"), root.join("p"));
        let first = job(&p, Event::Renamed, Some(&a));
        let second = job(&p, Event::Renamed, Some(&b));
        tracker.queue(first.clone());
        // `b` moved over `p` while the first rename's job ran.
        tracker.queue(second.clone());
        tracker.finished(done(&first));
        assert_eq!(
            unnumbered(tracker.queue(job(&p, Event::Modified, None))),
            std::slice::from_ref(&second),
            "the second rename still waits: a modification must not drop it"
        );
        tracker.finished(done(&second));
        assert_eq!(
            unnumbered(tracker.queue(job(&p, Event::Modified, None))),
            [job(&p, Event::Modified, None)]
        );
    }

    #[test]
    fn a_comparison_queues_a_changed_file_even_while_a_job_for_it_is_in_flight() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("tree");
        std::fs::create_dir_all(&root).unwrap();
        let mut tracker = tracker_of(&dir, &root);
        let p = root.join("p");
        std::fs::write(&p, "1").unwrap();
        // A job for `p` is running and has read version 1; version 2 follows, its event lost.
        tracker.queue(job(&p, Event::Created, None));
        std::fs::write(&p, "22").unwrap();
        let (jobs, _) = tracker.subtree_jobs(&root, None, 10).unwrap();
        assert_eq!(
            jobs.iter().map(|j| &*j.path).collect::<Vec<_>>(),
            [p.as_path()],
            "the running job may record version 1 as processed: version 2 needs a job"
        );
    }

    #[test]
    fn a_path_stays_in_flight_until_its_latest_job_finishes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let mut tracker = tracker_of(&dir, &root);
        let p = root.join("p");
        let (created, modified) = (
            job(&p, Event::Created, None),
            job(&p, Event::Modified, None),
        );
        tracker.queue(created.clone());
        tracker.queue(modified.clone());
        tracker.finished(done(&created));
        assert!(
            tracker.in_flight(&p),
            "the modification's job still waits after the creation's finished"
        );
        tracker.finished(done(&modified));
        assert!(!tracker.in_flight(&p));
    }

    #[test]
    fn each_job_carries_the_number_the_manifest_files_its_change_under() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let (a, b, p) = (root.join("a"), root.join("b"), root.join("p"));
        let numbers = |tracker: &Tracker| {
            tracker.flush();
            let manifest = tracker.manifest.lock();
            let changes = manifest.changes_since(0, 100).unwrap();
            (
                changes
                    .into_iter()
                    .map(|c| (c.seq, c.path))
                    .collect::<Vec<_>>(),
                manifest.seq(),
            )
        };
        let mut tracker = tracker_of(&dir, &root);
        let [created] = &tracker.queue(job(&a, Event::Created, None))[..] else {
            panic!("one job")
        };
        let [renamed] = &tracker.queue(job(&p, Event::Renamed, Some(&b)))[..] else {
            panic!("one job")
        };
        assert_eq!((created.seq, renamed.seq), (Some(1), Some(3)));
        // The rename's job and its old path's removal finish: no number of their own.
        tracker.finished(done(renamed));
        tracker.finished(Update::Finished {
            path: b.clone(),
            event: Event::Removed,
            ok: true,
            processed: None,
            old_path: None,
            seq: Some(2),
        });
        assert_eq!(
            numbers(&tracker),
            (vec![(1, a.clone()), (2, b.clone()), (3, p.clone())], 3),
            "as the jobs were numbered, the old path just before its rename"
        );
        // A later server numbers on from what the manifest holds.
        drop(tracker);
        let mut tracker = tracker_of(&dir, &root);
        let [modified] = &tracker.queue(job(&a, Event::Modified, None))[..] else {
            panic!("one job")
        };
        assert_eq!(modified.seq, Some(4));
        assert_eq!(numbers(&tracker).1, 4);
    }
}

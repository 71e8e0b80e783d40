//! The loop's backlog: jobs waiting for room in the pool's queue, and subtrees waiting to be
//! compared with the manifest; and how a watcher batch becomes jobs. Not the loop itself.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ward_queue::Error as QueueError;

use super::job::JobPool;
use ward_watch::{Batch, ChangeKind, Item};

use crate::jobs::{CompiledTrigger, Event, Job};
use crate::metrics::METRICS;
use crate::tracker::Tracker;

use super::batch::Batches;
use super::list;

/// How often the loop retries its backlog while the pool's queue is full.
pub(super) const BACKLOG_POLL: std::time::Duration = std::time::Duration::from_millis(20);

/// The backlog's high-water mark: past it the loop takes no watcher batch and runs no rescan, so
/// that an event storm or a large first start waits in bounded memory (a job and its path each)
/// instead of one job per file of the tree.
const BACKLOG_HIGH: usize = 8192;

/// Past this many subtrees waiting for a comparison, they are replaced by their roots: a storm of
/// directory changes waits in bounded memory, and a comparison covers it all at once.
const RESCANS_MAX: usize = 1024;

/// Jobs waiting for room in the pool's queue, one per path (the latest wins), in arrival order,
/// and the subtrees still to compare with the manifest (rescans, directory changes and startup
/// reconciliation), whose jobs are made as room allows. It lets the loop keep answering signals and requests
/// while a large reconciliation or burst drains.
#[derive(Debug)]
pub(super) struct Backlog {
    order: VecDeque<Arc<Path>>,
    jobs: HashMap<Arc<Path>, Job>,
    /// The paths of jobs held back because their trigger had as many jobs in the pool as its
    /// `concurrency` allows, per trigger, in arrival order: they wait here, not in the pool's
    /// queue, so that the other triggers' jobs pass them.
    held: Vec<(Arc<CompiledTrigger>, VecDeque<Arc<Path>>)>,
    /// Subtrees to compare with the manifest, oldest first, each with the path its comparison
    /// resumes after, once it has been compared in part.
    pub(super) rescans: Vec<(PathBuf, Option<PathBuf>)>,
    /// The high-water mark ([`BACKLOG_HIGH`]; smaller in tests).
    pub(super) high: usize,
    /// The runners of batch triggers, which take those triggers' jobs instead of the pool; the
    /// paths they owe count against the high-water mark.
    pub(super) batches: Batches,
    /// The publishers of publish triggers, which take those triggers' jobs instead of the pool;
    /// the jobs they owe count against the high-water mark.
    #[cfg(feature = "nats")]
    pub(super) publishing: super::publishing::Publishing,
}

impl Default for Backlog {
    fn default() -> Self {
        Backlog {
            order: VecDeque::new(),
            jobs: HashMap::new(),
            held: Vec::new(),
            rescans: Vec::new(),
            high: BACKLOG_HIGH,
            batches: Batches::default(),
            #[cfg(feature = "nats")]
            publishing: super::publishing::Publishing::default(),
        }
    }
}

impl Backlog {
    /// Queues a comparison of `path`'s subtree with the manifest, unless a waiting one covers it
    /// and has not yet passed it. Past [`RESCANS_MAX`] waiting, every one is replaced by its
    /// watch root.
    pub(super) fn rescan(&mut self, path: PathBuf, tracker: &Tracker) {
        let bytes = |p: &Path| p.as_os_str().as_encoded_bytes().to_vec();
        let covered = self.rescans.iter().any(|(r, after)| {
            path.starts_with(r) && after.as_deref().is_none_or(|a| bytes(&path) > bytes(a))
        });
        if covered {
            return;
        }
        self.rescans.retain(|(r, _)| !r.starts_with(&path));
        self.rescans.push((path, None));
        if self.rescans.len() > RESCANS_MAX {
            let mut roots: Vec<PathBuf> = Vec::new();
            for (r, _) in std::mem::take(&mut self.rescans) {
                let root = tracker.root_of(&r).map_or(r.clone(), Path::to_path_buf);
                if !roots.contains(&root) {
                    roots.push(root);
                }
            }
            log::info!(
                "more than {RESCANS_MAX} subtrees changed: comparing {} with the manifest instead",
                list(&roots)
            );
            self.rescans = roots.into_iter().map(|r| (r, None)).collect();
        }
    }

    /// Makes the jobs of waiting rescans while the backlog is under its high-water mark. A
    /// comparison stops when its jobs fill the room, and the next round resumes after its last
    /// job's path.
    pub(super) fn refill(&mut self, tracker: &mut Tracker) {
        if !self.compares_next() {
            return;
        }
        while self.len() < self.high
            && let Some((path, after)) = self.rescans.first().cloned()
        {
            let room = self.high - self.len();
            let (jobs, resume) = match tracker.subtree_jobs(&path, after.as_deref(), room) {
                Ok(found) => found,
                Err(e) => {
                    log::error!("cannot compare {} with the manifest: {e}", path.display());
                    self.rescans.remove(0);
                    continue;
                }
            };
            for job in jobs {
                for job in tracker.queue(job) {
                    self.push(job);
                }
            }
            match resume {
                None => {
                    self.rescans.remove(0);
                }
                Some(resume) => {
                    if after.is_none() {
                        log::info!(
                            "rescan of {} continues as the backlog has room",
                            path.display()
                        );
                    }
                    self.rescans[0].1 = Some(resume);
                    break;
                }
            }
        }
    }

    /// Whether the next `refill` compares a subtree with the manifest: one waits, and the backlog
    /// is at most half full (a few jobs at a time would cost a comparison's setup each).
    pub(super) fn compares_next(&self) -> bool {
        !self.rescans.is_empty() && self.len() <= self.high / 2
    }

    pub(super) fn push(&mut self, job: Job) {
        if job.trigger.batch().is_some() {
            self.batches.offer(job);
            return;
        }
        #[cfg(feature = "nats")]
        if matches!(job.trigger.handler(), crate::config::Handler::Publish(_)) {
            self.publishing.offer(job);
            return;
        }
        let path = Arc::clone(&job.path);
        if self.jobs.insert(Arc::clone(&path), job).is_none() {
            self.order.push_back(path);
        }
    }

    /// Jobs waiting, for the pool, in a batch trigger's next run, or to be published.
    pub(super) fn len(&self) -> usize {
        let len = self.jobs.len() + self.batches.owed();
        #[cfg(feature = "nats")]
        let len = len + self.publishing.owed();
        len
    }

    /// Hands jobs to the pool until its queue is full: first those held for a trigger that has
    /// room again, then the rest in arrival order, holding back each whose trigger is at its
    /// `concurrency`.
    pub(super) fn submit(&mut self, pool: &JobPool) {
        for (trigger, paths) in &mut self.held {
            while trigger.has_room()
                && let Some(path) = paths.pop_front()
            {
                let Some(job) = self.jobs.remove(&path) else {
                    continue;
                };
                if !Arc::ptr_eq(&job.trigger, trigger) {
                    // A later change of the path went to another trigger (a reload): it takes
                    // the path's turn in arrival order.
                    self.jobs.insert(path.clone(), job);
                    self.order.push_front(path);
                    continue;
                }
                if let Err(path) = hand_over(pool, &mut self.jobs, path, job) {
                    paths.push_front(path);
                    return;
                }
            }
        }
        self.held.retain(|(_, paths)| !paths.is_empty());
        while let Some(path) = self.order.pop_front() {
            let Some(job) = self.jobs.remove(&path) else {
                continue;
            };
            if !job.trigger.has_room() {
                let trigger = Arc::clone(&job.trigger);
                self.jobs.insert(path.clone(), job);
                match self.held.iter_mut().find(|(t, _)| Arc::ptr_eq(t, &trigger)) {
                    Some((_, paths)) => paths.push_back(path),
                    None => self.held.push((trigger, VecDeque::from([path]))),
                }
                continue;
            }
            if let Err(path) = hand_over(pool, &mut self.jobs, path, job) {
                self.order.push_front(path);
                return;
            }
        }
    }
}

/// Submits `job` to the pool, counting it in its trigger's jobs there; when the pool's queue is
/// full (or closed), puts it back in `jobs` and returns its path.
fn hand_over(
    pool: &JobPool,
    jobs: &mut HashMap<Arc<Path>, Job>,
    path: Arc<Path>,
    job: Job,
) -> Result<(), Arc<Path>> {
    let trigger = Arc::clone(&job.trigger);
    trigger.entered_pool();
    match pool.submit_keyed(path.clone(), job) {
        Ok(_) => Ok(()),
        Err(e) => {
            trigger.left_pool();
            let full = matches!(e, QueueError::Full(_) | QueueError::Paused(_));
            if !full {
                log::error!(
                    "cannot queue the job for {}: the pool is closed",
                    path.display()
                );
            }
            if let Some(job) = e.into_job() {
                jobs.insert(path.clone(), job);
            }
            Err(path)
        }
    }
}

/// The jobs a batch of watcher items asks for. A rescan or a directory change (but a creation)
/// joins the backlog's rescans, whose comparisons with the manifest make jobs as room allows; a
/// file change becomes one job.
pub(super) fn jobs_of_batch(
    batch: Batch,
    tracker: &mut Tracker,
    backlog: &mut Backlog,
) -> Vec<Job> {
    let mut jobs = Vec::new();
    // Each job is recorded as queued as soon as it is made, so that the comparison of a directory
    // changed in the same batch (removed right after a file in it was created) sees it.
    let add = |job: Job, tracker: &mut Tracker, jobs: &mut Vec<Job>| {
        jobs.extend(tracker.queue(job));
    };
    // The batch is consumed: each changed path moves into its job, never copied.
    for item in batch.items {
        match item {
            Item::Error(e) => log::warn!("watcher: {e}"),
            Item::Rescan(rescan) => {
                METRICS.rescanned(rescan.reason.name());
                log::info!(
                    "rescanning {} ({})",
                    rescan.path.display(),
                    rescan.reason.name()
                );
                backlog.rescan(rescan.path, tracker);
            }
            // The watcher reports what a new directory holds, file by file (it lists it, or
            // its backend sees every directory): comparing it too would run a job twice for a
            // file the comparison found before the watcher's change of it came.
            Item::Change(change) if change.is_dir && change.kind == ChangeKind::Created => {
                METRICS.changed(change.kind.name());
            }
            Item::Change(change) if change.is_dir => {
                METRICS.changed(change.kind.name());
                backlog.rescan(change.path, tracker);
                if let ChangeKind::Renamed { from } = change.kind {
                    backlog.rescan(from, tracker);
                }
            }
            Item::Change(change) => {
                METRICS.changed(change.kind.name());
                let Some(trigger) = tracker.trigger_for(&change.path) else {
                    continue;
                };
                let trigger = Arc::clone(trigger);
                let (event, old_path) = match change.kind {
                    ChangeKind::Created => (Event::Created, None),
                    ChangeKind::Modified => (Event::Modified, None),
                    ChangeKind::Removed => (Event::Removed, None),
                    ChangeKind::Renamed { from } => (Event::Renamed, Some(from)),
                };
                // A job still queued or running for the old path of a rename runs under that
                // path's key, so nothing orders it before the rename's job: it could run last and
                // leave its consumer believing the old path exists. A removal under the same key
                // is ordered after it.
                if let Some(from) = &old_path
                    && tracker.in_flight(from)
                    && let Some(trigger) = tracker.trigger_for(from)
                {
                    let removal = Job {
                        trigger: Arc::clone(trigger),
                        path: from.as_path().into(),
                        event: Event::Removed,
                        old_path: None,
                        seq: None,
                    };
                    add(removal, tracker, &mut jobs);
                }
                let job = Job {
                    trigger,
                    path: change.path.into(),
                    event,
                    old_path,
                    seq: None,
                };
                add(job, tracker, &mut jobs);
            }
            _ => {}
        }
    }
    jobs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{FileMeta, Update};
    use crate::tracker::tests::tracker_of;
    use ward_watch::Change;

    /// A temporary directory with an empty watched root, `tree`, in it.
    fn tree() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("tree");
        std::fs::create_dir_all(&root).unwrap();
        (dir, root)
    }

    #[test]
    fn a_directory_removed_in_the_batch_that_created_a_file_in_it_removes_the_file_too() {
        let (dir, root) = tree();
        let mut tracker = tracker_of(&dir, &root);
        // The file's creation and its directory's removal, delivered together; neither exists now.
        let file = root.join("d/f");
        let batch = Batch {
            items: vec![
                Item::Change(Change::new(root.join("d"), ChangeKind::Created, true)),
                Item::Change(Change::new(file.clone(), ChangeKind::Created, false)),
                Item::Change(Change::new(root.join("d"), ChangeKind::Removed, true)),
            ],
        };
        let mut backlog = Backlog::default();
        let jobs = jobs_of_batch(batch, &mut tracker, &mut backlog);
        assert_eq!(
            jobs.iter().map(|j| (&*j.path, j.event)).collect::<Vec<_>>(),
            [(file.as_path(), Event::Created)]
        );
        for job in jobs {
            backlog.push(job);
        }
        assert_eq!(
            backlog.rescans,
            [(root.join("d"), None)],
            "the directory waits for room"
        );
        backlog.refill(&mut tracker);
        assert_eq!(
            backlog.jobs.get(file.as_path()).map(|j| j.event),
            Some(Event::Removed),
            "the file's last job must be its removal"
        );
    }

    #[test]
    fn a_storm_of_directory_changes_waits_as_one_comparison_of_the_root() {
        let (dir, root) = tree();
        let tracker = tracker_of(&dir, &root);
        let mut backlog = Backlog::default();
        for i in 0..RESCANS_MAX {
            backlog.rescan(root.join(format!("d{i}")), &tracker);
        }
        assert_eq!(backlog.rescans.len(), RESCANS_MAX);
        backlog.rescan(root.join("one-more"), &tracker);
        assert_eq!(backlog.rescans, [(root, None)]);
    }

    #[test]
    fn a_directory_changed_behind_a_resumed_rescan_is_compared_again() {
        let (dir, root) = tree();
        let tracker = tracker_of(&dir, &root);
        let mut backlog = Backlog {
            rescans: vec![(root.clone(), Some(root.join("d1/f5")))],
            ..Backlog::default()
        };
        backlog.rescan(root.join("d2"), &tracker);
        assert_eq!(
            backlog.rescans.len(),
            1,
            "d2 lies ahead of the rescan: covered"
        );
        backlog.rescan(root.join("d0"), &tracker);
        backlog.rescan(root.join("d1"), &tracker);
        assert_eq!(
            backlog.rescans,
            [
                (root.clone(), Some(root.join("d1/f5"))),
                (root.join("d0"), None),
                (root.join("d1"), None),
            ],
            "what the rescan has passed is compared again"
        );
    }

    #[test]
    fn a_file_renamed_then_modified_in_one_batch_is_one_rename_job() {
        let (dir, root) = tree();
        let mut tracker = tracker_of(&dir, &root);
        let (from, to) = (root.join("a"), root.join("b"));
        // What the watcher delivers for `mv a b; echo x >> b` within one window.
        let batch = Batch {
            items: vec![
                Item::Change(Change::new(
                    to.clone(),
                    ChangeKind::Renamed { from: from.clone() },
                    false,
                )),
                Item::Change(Change::new(to.clone(), ChangeKind::Modified, false)),
            ],
        };
        let mut backlog = Backlog::default();
        for job in jobs_of_batch(batch, &mut tracker, &mut backlog) {
            backlog.push(job);
        }
        let waiting = crate::tracker::tests::unnumbered(backlog.jobs.values().cloned().collect());
        assert_eq!(
            waiting,
            [crate::tracker::tests::job(&to, Event::Renamed, Some(&from))],
            "the modification must not drop the rename, the only job that tells `a` is gone"
        );
    }

    #[test]
    fn a_rescan_larger_than_the_backlog_queues_each_file_once_as_room_allows() {
        let (dir, root) = tree();
        for i in 0..25 {
            let sub = root.join(format!("d{}", i % 3));
            std::fs::create_dir_all(&sub).unwrap();
            std::fs::write(sub.join(format!("f{i}")), "x").unwrap();
        }
        let mut tracker = tracker_of(&dir, &root);
        let mut backlog = Backlog {
            high: 10,
            ..Backlog::default()
        };
        backlog.rescan(root.join("d1"), &tracker);
        backlog.rescan(root.clone(), &tracker); // covers d1: one rescan left
        assert_eq!(backlog.rescans, [(root.clone(), None)]);

        let mut ran = Vec::new();
        for _round in 0..10 {
            backlog.refill(&mut tracker);
            assert!(backlog.len() <= 10, "{} jobs held", backlog.len());
            if backlog.len() == 0 {
                break;
            }
            // Run six of them: the next round resumes after the last path it queued.
            for _ in 0..6 {
                let Some(path) = backlog.order.pop_front() else {
                    break;
                };
                let job = backlog.jobs.remove(&path).unwrap();
                tracker.finished(Update::Finished {
                    path: job.path.to_path_buf(),
                    event: job.event,
                    ok: true,
                    processed: FileMeta::read(&job.path),
                    old_path: job.old_path.clone(),
                    seq: None,
                });
                ran.push(job.path.to_path_buf());
            }
        }
        assert!(backlog.rescans.is_empty(), "the rescan must end");
        let mut distinct = ran.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), 25, "every file once: {ran:?}");
        assert_eq!(ran.len(), 25, "no file twice: {ran:?}");
    }
}

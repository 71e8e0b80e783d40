//! What remote workers did with the jobs this ward published: a thread per NATS server its
//! publish triggers use pulls this ward's results (`ward.results.ORIGIN`, from a durable consumer,
//! so results sent while the server was down are taken at its next start), counts them for
//! `ward status` and the metrics, and hands a job that gave up to the main loop, which records
//! it where `ward failures` lists it. A result is acknowledged once counted (and, for a give-up,
//! recorded); the workers' side is `commands/work.rs`.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::Sender;
use parking_lot::Mutex;
use ward_nats::{ConsumerSpec, Puller, StreamSpec};

use crate::config::{Config, Handler};
use crate::manifest::Failure;
use crate::metrics::METRICS;
use crate::protocol::RemoteStatus;
use crate::remote::{
    JobResult, RESULTS_MAX_AGE, RESULTS_PREFIX, RESULTS_STREAM, RemoteOutcome, hostname, origin_id,
    results_subject,
};
use crate::state::StateDir;

/// How long one pull waits before the stop flag is looked at again, and the wait between two
/// attempts to connect.
const PULL_WAIT: Duration = Duration::from_secs(1);
/// How long a give-up waits for the main loop to record it before its result is left to be
/// delivered again.
const RECORD_WAIT: Duration = Duration::from_secs(10);
/// Distinct trigger names counted at most: a result names its trigger, and a label's values stay
/// bounded whatever a worker sends.
const TRIGGERS_MAX: usize = 64;

/// A job that gave up on a remote worker, for the main loop to record.
#[derive(Debug)]
pub(super) struct GaveUpRemotely {
    /// Its path on this host.
    pub(super) path: PathBuf,
    /// What failed; its version is filled in by the tracker, from the version recorded.
    pub(super) failure: Failure,
    /// The version the job carried: (size, mtime, inode), none for a removal.
    pub(super) version: Option<(u64, i64, u64)>,
    /// Told once it is recorded.
    pub(super) recorded: Sender<()>,
}

/// The result threads and their counts.
#[derive(Debug)]
pub(super) struct RemoteResults {
    origin: String,
    stop: Arc<AtomicBool>,
    counts: Arc<Mutex<BTreeMap<String, RemoteStatus>>>,
    /// One per NATS server, by its URL.
    threads: Vec<(String, JoinHandle<()>)>,
    to_loop: Sender<GaveUpRemotely>,
}

impl RemoteResults {
    /// Starts a thread for each NATS server `config`'s publish triggers use.
    pub(super) fn start(
        config: &Config,
        state: &StateDir,
        to_loop: Sender<GaveUpRemotely>,
    ) -> RemoteResults {
        let mut results = RemoteResults {
            origin: origin_id(&hostname(), state.path()),
            stop: Arc::new(AtomicBool::new(false)),
            counts: Arc::new(Mutex::new(BTreeMap::new())),
            threads: Vec::new(),
            to_loop,
        };
        results.apply(config);
        results
    }

    /// After a reload: a thread for each server a publish trigger now uses that has none (the
    /// threads of servers no longer used go on: results of jobs published before may come).
    pub(super) fn apply(&mut self, config: &Config) {
        for trigger in &config.triggers {
            let Handler::Publish(target) = &trigger.handler else {
                continue;
            };
            if self.threads.iter().any(|(url, _)| *url == target.url) {
                continue;
            }
            let taker = Taker {
                url: target.url.clone(),
                origin: self.origin.clone(),
                roots: config.roots.clone(),
                stop: Arc::clone(&self.stop),
                counts: Arc::clone(&self.counts),
                to_loop: self.to_loop.clone(),
            };
            match std::thread::Builder::new()
                .name("ward-results".into())
                .spawn(move || taker.run())
            {
                Ok(thread) => self.threads.push((target.url.clone(), thread)),
                Err(e) => log::error!(
                    "cannot start the thread taking the results from {}: remote workers' outcomes are not shown: {e}",
                    target.url
                ),
            }
        }
    }

    /// For `ward status`: each trigger's counts.
    pub(super) fn status(&self) -> Vec<RemoteStatus> {
        self.counts.lock().values().cloned().collect()
    }
}

impl Drop for RemoteResults {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for (url, thread) in self.threads.drain(..) {
            if thread.join().is_err() {
                log::error!("the thread taking the results from {url} panicked");
            }
        }
    }
}

/// One thread's share.
struct Taker {
    url: String,
    origin: String,
    roots: Vec<PathBuf>,
    stop: Arc<AtomicBool>,
    counts: Arc<Mutex<BTreeMap<String, RemoteStatus>>>,
    to_loop: Sender<GaveUpRemotely>,
}

impl Taker {
    fn run(self) {
        let stream = StreamSpec {
            max_age: RESULTS_MAX_AGE,
            ..StreamSpec::work_queue(RESULTS_STREAM, &format!("{RESULTS_PREFIX}.>"))
        };
        let consumer = ConsumerSpec::new(
            &format!("origin-{}", self.origin),
            &results_subject(&self.origin),
        );
        // Said once per outage, and its end said too.
        let mut failing = false;
        let mut puller = None;
        while !self.stop.load(Ordering::Relaxed) {
            let Some(connected) = &puller else {
                match Puller::connect(&self.url, &stream, &consumer) {
                    Ok(p) => {
                        if std::mem::take(&mut failing) {
                            log::info!("taking remote workers' results from {} again", self.url);
                        }
                        puller = Some(p);
                    }
                    Err(e) => {
                        if !std::mem::replace(&mut failing, true) {
                            log::warn!(
                                "remote workers' results: {e}; trying again every {PULL_WAIT:?}"
                            );
                        }
                        std::thread::sleep(PULL_WAIT);
                    }
                }
                continue;
            };
            match connected.next(PULL_WAIT) {
                Ok(None) => {}
                Ok(Some(delivery)) => {
                    if std::mem::take(&mut failing) {
                        log::info!("taking remote workers' results from {} again", self.url);
                    }
                    let settled = match serde_json::from_slice::<JobResult>(delivery.payload()) {
                        Ok(result) => {
                            if self.take(result) {
                                delivery.ack()
                            } else {
                                delivery.nak(PULL_WAIT)
                            }
                        }
                        Err(e) => {
                            log::warn!(
                                "{}: not a ward job's result ({e}): dropped",
                                delivery.subject()
                            );
                            delivery.term()
                        }
                    };
                    if let Err(e) = settled {
                        // Unsettled, it comes back after its ack wait, and is counted again.
                        log::warn!("a remote result was not settled: {e}");
                    }
                }
                Err(e) => {
                    if !std::mem::replace(&mut failing, true) {
                        log::warn!(
                            "remote workers' results: {e}; pulling again every {PULL_WAIT:?}"
                        );
                    }
                    // The client reconnects by itself; this thread waits for it.
                    std::thread::sleep(PULL_WAIT);
                }
            }
        }
    }

    /// Counts `result` and, for a give-up, has it recorded; false if it could not be recorded
    /// (it is then delivered again).
    fn take(&self, result: JobResult) -> bool {
        let trigger = {
            let mut counts = self.counts.lock();
            let name = if counts.contains_key(&result.job.trigger) || counts.len() < TRIGGERS_MAX {
                result.job.trigger.clone()
            } else {
                "other".to_owned()
            };
            let count = counts.entry(name.clone()).or_insert_with(|| RemoteStatus {
                trigger: name.clone(),
                ..RemoteStatus::default()
            });
            match result.outcome {
                RemoteOutcome::Succeeded => count.succeeded += 1,
                RemoteOutcome::Retried => count.retried += 1,
                RemoteOutcome::GaveUp => count.gave_up += 1,
                RemoteOutcome::Superseded => count.superseded += 1,
            }
            if let Some(error) = result.error.as_ref().filter(|_| result.outcome.failed()) {
                count.last_error = Some(format!("on {}: {error}", result.worker));
            }
            name
        };
        METRICS.remote_job(&trigger, result.outcome.as_str());
        if result.outcome != RemoteOutcome::GaveUp {
            return true;
        }
        let Some(path) = self.local_path(&result) else {
            log::warn!(
                "a remote give-up names {} under {}, which is not a path under this ward's roots: only counted",
                result.job.path.display(),
                result.job.root.display()
            );
            return true;
        };
        let job = &result.job;
        let version = match (job.size, job.mtime_ns, job.ino) {
            (Some(size), Some(mtime), Some(ino)) => Some((size, mtime, ino)),
            _ => None,
        };
        let (recorded, told) = crossbeam_channel::bounded(1);
        let gave_up = GaveUpRemotely {
            path,
            failure: Failure {
                trigger: job.trigger.clone(),
                event: job.event,
                attempts: u32::try_from(result.delivery).unwrap_or(u32::MAX),
                error: format!(
                    "on worker {}: {}",
                    result.worker,
                    result.error.as_deref().unwrap_or("gave up")
                ),
                at: crate::state::unix_now(),
                report: None,
                version: None,
            },
            version,
            recorded,
        };
        if self.to_loop.send(gave_up).is_err() {
            return false;
        }
        told.recv_timeout(RECORD_WAIT).is_ok()
    }

    /// The path on this host of the job `result` is about: its root must be one of this ward's,
    /// and its path stay under it.
    fn local_path(&self, result: &JobResult) -> Option<PathBuf> {
        let root = self.roots.iter().find(|r| **r == result.job.root)?;
        let relative: &Path = &result.job.path;
        let plain = relative
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
        (plain && relative.components().next().is_some()).then(|| root.join(relative))
    }
}

//! Publish triggers' runners (the `nats` feature): one thread per NATS server and stream, which
//! publishes the jobs it owes a window at a time (the whole window sent, then its
//! acknowledgements awaited together) instead of a job thread per publish, each waiting for its
//! own. Not what goes in a message (`crate::publish`, `crate::remote`).
//!
//! The loop hands each job of a publish trigger to its target's runner ([`Publishing::offer`])
//! instead of the pool. A runner keeps the jobs it owes in arrival order, one per path (the
//! latest wins); a window takes at most the trigger's `max_unacked` of them, so a path is in one
//! window at a time and its next job goes in a later one. Each job's outcome goes through the
//! pool's [`OutcomeSender`], as a pool job's does: succeeded once the stream acknowledged it,
//! retried after the trigger's backoff when not, given up after its retries. The jobs owed and
//! waiting for a retry count in `Backlog::len`, so past the high-water mark the loop takes no
//! watcher batch: a NATS server away costs bounded memory. At ward's stop a runner publishes
//! what it owes until the drain's end; what is left stays pending in the manifest for the next
//! start.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::config::{Handler, Publish};
use crate::intents::Intents;
use crate::jobs::{Event, Job};
use crate::manifest::{Failure, FileMeta};
use crate::metrics::{JobOutcome, METRICS};
use crate::outcomes::OutcomeSender;
use crate::protocol::PublishStatus;
use crate::publish::{Failed, Publishers, ToPublish};

use super::runners;

/// What every runner needs, from the server.
#[derive(Debug)]
pub(super) struct Context {
    pub roots: Vec<PathBuf>,
    pub publishers: Publishers,
    pub done: OutcomeSender,
    pub intents: Arc<Intents>,
    /// No window starts while set (`ward hold`, memory short): see [`Publishing::set_held`].
    pub held: AtomicBool,
    /// The paths `ward retry` asked for again within the stream's duplicate window: see
    /// [`Publishing::retried`].
    pub retried: Retried,
}

/// The subtrees `ward retry` asked for again lately, each with when (ns since the epoch): a job
/// under one, published within the stream's duplicate window after it, gets a message id of its
/// own. Its version's first message gave up on a worker (dead-lettered, gone from the stream),
/// and the stream would drop a republish with the same id as a duplicate. Bounded: the oldest go
/// past [`RETRIED_MAX`] (a retry then within the window is dropped as before).
#[derive(Debug, Default)]
pub(super) struct Retried(Mutex<VecDeque<(PathBuf, Instant, u64)>>);

const RETRIED_MAX: usize = 1024;

impl Retried {
    fn add(&self, path: PathBuf) {
        let now_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let mut retried = self.0.lock();
        if retried.len() == RETRIED_MAX {
            retried.pop_front();
        }
        retried.push_back((path, Instant::now(), now_ns));
    }

    /// When the latest retry covering `path` was asked for, if within the duplicate window.
    fn of(&self, path: &std::path::Path) -> Option<u64> {
        let mut retried = self.0.lock();
        while retried
            .front()
            .is_some_and(|(_, at, _)| at.elapsed() > ward_nats::DUPLICATE_WINDOW)
        {
            retried.pop_front();
        }
        retried
            .iter()
            .rev()
            .find(|(under, _, _)| path.starts_with(under))
            .map(|(_, _, ns)| *ns)
    }
}

/// A runner's target: a NATS server's address and a stream.
pub(super) type Target = (String, String);

/// The runners, made as their target's first job comes. Dropping it stops them at once and
/// joins their threads; `runners.stop_at` and `runners.join` drain first.
#[derive(Debug, Default)]
pub(super) struct Publishing {
    /// `None` in the backlog's tests, which publish nothing.
    context: Option<Arc<Context>>,
    pub(super) runners: runners::Runners<Target, Owed>,
}

/// A publisher: its server and stream, the state it shares with the loop, its thread.
type Runner = runners::Runner<Target, Owed>;
type Shared = runners::Shared<Owed>;

/// What a runner owes and has done, shared with the loop.
#[derive(Debug, Default)]
pub(super) struct Owed {
    /// The paths owed, in arrival order; each has its job in `jobs`.
    order: VecDeque<PathBuf>,
    jobs: HashMap<PathBuf, Job>,
    /// Jobs of the window under way: sent, not yet acknowledged.
    unacked: usize,
    /// Jobs waiting for their retry (the runner's own, counted here for the loop).
    retrying: usize,
    /// ward's stop (no window starts after its instant, nor once nothing is owed) and whether
    /// the thread has ended.
    life: runners::Life,
    published: u64,
    retried: u64,
    gave_up: u64,
    last_error: Option<String>,
    /// The server did not answer the last window: the runner waits for it, the jobs owed.
    away: bool,
}

/// A job waiting for its next attempt.
#[derive(Debug)]
struct Retry {
    job: Job,
    /// Failed attempts so far.
    failures: u32,
    at: Instant,
}

impl Publishing {
    pub(super) fn new(context: Context) -> Publishing {
        Publishing {
            context: Some(Arc::new(context)),
            runners: runners::Runners::default(),
        }
    }

    /// Gives `job` (of a publish trigger) to its target's runner, starting one if it has none.
    pub(super) fn offer(&mut self, job: Job) {
        let Some(target) = target_of(&job).map(|t| (t.url.clone(), t.stream.clone())) else {
            log::error!(
                "{}: its trigger {} does not publish; it stays pending until the next start",
                job.path.display(),
                job.trigger.name()
            );
            return;
        };
        let mut job = Some(job);
        if let Some(runner) = self.runners.iter().find(|r| r.key == target) {
            let mut owed = runner.shared.state.lock();
            if !owed.life.ended
                && let Some(job) = job.take()
            {
                let path = job.path.clone();
                if owed.jobs.insert(path.clone(), job).is_none() {
                    owed.order.push_back(path);
                }
                drop(owed);
                runner.shared.wake.notify_one();
                return;
            }
        }
        self.runners.reap_ended();
        let (Some(context), Some(job)) = (&self.context, job) else {
            return;
        };
        match start_runner(target, Arc::clone(context)) {
            Ok(runner) => {
                self.runners.push(runner);
                self.offer(job);
            }
            Err(e) => log::error!(
                "cannot start the publisher of trigger {}: {e}; {} stays pending until the next start",
                job.trigger.name(),
                job.path.display()
            ),
        }
    }

    /// Jobs owed and waiting for a retry: they count against the backlog's high-water mark.
    pub(super) fn owed(&self) -> usize {
        self.runners
            .iter()
            .map(|r| {
                let owed = r.shared.state.lock();
                owed.jobs.len() + owed.retrying
            })
            .sum()
    }

    /// What `ward status` shows of each runner whose thread has not ended.
    pub(super) fn status(&self) -> Vec<PublishStatus> {
        self.runners
            .iter()
            .filter_map(|r| {
                let owed = r.shared.state.lock();
                (!owed.life.ended).then(|| PublishStatus {
                    url: r.key.0.clone(),
                    stream: r.key.1.clone(),
                    owed: owed.jobs.len(),
                    unacked: owed.unacked,
                    retrying: owed.retrying,
                    published: owed.published,
                    retried: owed.retried,
                    gave_up: owed.gave_up,
                    last_error: owed.last_error.clone(),
                    waiting_for_server: owed.away,
                })
            })
            .collect()
    }

    /// `ward retry` asked for the paths under `path` again: their next publishes get ids of
    /// their own (see [`Retried`]).
    pub(super) fn retried(&self, path: &std::path::Path) {
        if let Some(cx) = &self.context {
            cx.retried.add(path.to_path_buf());
        }
    }

    /// No window starts while `held` (one under way finishes); what comes meanwhile is owed.
    pub(super) fn set_held(&self, held: bool) {
        let Some(cx) = &self.context else { return };
        if cx.held.swap(held, Ordering::Relaxed) == held {
            return;
        }
        self.runners.wake_all();
    }
}

impl runners::RunnerState for Owed {
    fn life(&mut self) -> &mut runners::Life {
        &mut self.life
    }
}

/// Starts the publisher to `target`.
fn start_runner(target: Target, context: Arc<Context>) -> std::io::Result<Runner> {
    Runner::start(target, "ward-publish".into(), move |shared| {
        RunnerThread {
            shared,
            cx: context,
            retries: HashMap::new(),
            away: None,
        }
        .run();
    })
}

/// A runner's own state, on its thread.
struct RunnerThread<'a> {
    shared: &'a Shared,
    cx: Arc<Context>,
    /// Jobs whose last attempt failed, or went unanswered, by path.
    retries: HashMap<PathBuf, Retry>,
    /// The server did not answer: since when, and when to try again.
    away: Option<Away>,
}

/// A server that does not answer: the jobs stay owed, and a window is tried again after a delay
/// that doubles from [`AWAY_FIRST`] up to [`AWAY_MAX`], said once in the log as it begins and
/// once as it ends.
#[derive(Debug, Clone, Copy)]
struct Away {
    since: Instant,
    delay: Duration,
    next_try: Instant,
}

const AWAY_FIRST: Duration = Duration::from_millis(500);
const AWAY_MAX: Duration = Duration::from_secs(5);

impl RunnerThread<'_> {
    fn run(mut self) {
        loop {
            let (window, stop_at) = {
                let mut owed = self.shared.state.lock();
                loop {
                    let now = Instant::now();
                    let held = self.cx.held.load(Ordering::Relaxed);
                    let stopping = owed.life.stop_at;
                    // Stopping: no window past the drain's end, nor one only for retries.
                    if stopping.is_some_and(|at| now >= at)
                        || (stopping.is_some() && (held || owed.jobs.is_empty()))
                    {
                        owed.life.ended = true;
                        return;
                    }
                    let due = self.retries.values().map(|r| r.at).min();
                    let next_try = self.away.map(|a| a.next_try);
                    let may_try = next_try.is_none_or(|at| at <= now);
                    if !held
                        && may_try
                        && (!owed.jobs.is_empty() || due.is_some_and(|at| at <= now))
                    {
                        break;
                    }
                    // Woken by an offer, a release or the stop; else at the first of these.
                    let wake = [due.filter(|_| !held), next_try.filter(|_| !held), stopping]
                        .into_iter()
                        .flatten()
                        .min();
                    match wake {
                        Some(at) => {
                            self.shared.wake.wait_until(&mut owed, at);
                        }
                        None => self.shared.wake.wait(&mut owed),
                    }
                }
                let window = self.take_window(&mut owed);
                owed.unacked = window.len();
                owed.retrying = self.retries.len();
                (window, owed.life.stop_at)
            };
            self.publish(window, stop_at);
        }
    }

    /// The next window: the retries due, then the jobs owed in arrival order, at most the first
    /// one's trigger's `max_unacked`. A path owed anew drops its retry: a new change's attempts
    /// start over.
    fn take_window(&mut self, owed: &mut Owed) -> Vec<(Job, u32)> {
        let now = Instant::now();
        self.retries.retain(|path, _| !owed.jobs.contains_key(path));
        let mut due: Vec<PathBuf> = self
            .retries
            .iter()
            .filter(|(_, r)| r.at <= now)
            .map(|(path, _)| path.clone())
            .collect();
        due.sort_by_key(|path| self.retries[path].at);
        let mut window: Vec<(Job, u32)> = Vec::new();
        let mut limit = usize::MAX;
        let retried = due
            .into_iter()
            .filter_map(|path| self.retries.remove(&path));
        let retried = retried.map(|r| (r.job, r.failures));
        let owed_jobs = std::iter::from_fn(|| {
            let path = owed.order.pop_front()?;
            Some(owed.jobs.remove(&path).map(|job| (job, 0)))
        })
        .flatten();
        for (job, failures) in retried.chain(owed_jobs) {
            if window.is_empty() {
                limit = target_of(&job).map_or(1, |t| t.max_unacked);
            }
            window.push((job, failures));
            if window.len() >= limit {
                break;
            }
        }
        // Retries past the window's end wait for the next one.
        window
    }

    /// Publishes `window` and hands each job's outcome to the loop.
    fn publish(&mut self, window: Vec<(Job, u32)>, stop_at: Option<Instant>) {
        let target = window
            .first()
            .and_then(|(job, _)| target_of(job))
            .map(|t| format!("{} stream {}", t.url, t.stream))
            .unwrap_or_default();
        let versions: Vec<Option<FileMeta>> = window
            .iter()
            .map(|(job, _)| {
                if job.event == Event::Removed {
                    None
                } else {
                    FileMeta::read(&job.path)
                }
            })
            .collect();
        let mut sent = Vec::new();
        let mut to_publish = Vec::new();
        for ((job, _), version) in window.iter().zip(&versions) {
            if job.trigger.receives(job.event) {
                sent.push(job.path.as_path());
                to_publish.push(ToPublish {
                    job,
                    version: *version,
                    retried_at_ns: self.cx.retried.of(&job.path),
                });
            }
        }
        let mut results = Vec::with_capacity(window.len());
        // Before the stream can tell a worker anything: a killed server's next start still
        // knows of each path.
        self.cx.intents.record_all(&sent);
        let timeout = stop_at.map_or(ward_nats::PUBLISH_TIMEOUT, |at| {
            at.saturating_duration_since(Instant::now())
                .clamp(Duration::from_millis(100), ward_nats::PUBLISH_TIMEOUT)
        });
        let began = Instant::now();
        let mut acks = if to_publish.is_empty() {
            Vec::new()
        } else {
            self.cx
                .publishers
                .publish_all(&to_publish, &self.cx.roots, timeout)
        }
        .into_iter();
        for (job, _) in &window {
            results.push(if job.trigger.receives(job.event) {
                acks.next().unwrap_or(Err(Failed::Unanswered(
                    "publish: no acknowledgement".into(),
                )))
            } else {
                Ok(())
            });
        }
        let took = began.elapsed();
        let stopped = stop_at.is_some_and(|at| Instant::now() >= at);
        let (mut published, mut retried, mut gave_up) = (0, 0, 0);
        let mut first_error = None;
        let mut next_retry: Option<Duration> = None;
        let mut unanswered: Option<String> = None;
        for (((job, failures), version), result) in window.into_iter().zip(versions).zip(results) {
            let name = job.trigger.name().to_owned();
            let error = match result {
                Ok(()) => {
                    METRICS.job_ran(&name, took);
                    METRICS.job_ended(&name, JobOutcome::Succeeded);
                    self.cx.done.succeeded(&job, version);
                    published += 1;
                    continue;
                }
                // Cut short by ward's stop: no failure of the job; it stays pending in the
                // manifest for the next start.
                Err(_) if stopped => continue,
                // No failure of the job either: it waits, owed, for the server.
                Err(Failed::Unanswered(reason)) => {
                    unanswered.get_or_insert(reason);
                    self.retry_later(job, failures, Instant::now());
                    continue;
                }
                Err(Failed::Refused(e)) => e.to_string(),
            };
            METRICS.job_ran(&name, took);
            let failures = failures + 1;
            let retry = job.trigger.retry();
            if failures > retry.retries {
                METRICS.job_ended(&name, JobOutcome::GaveUp);
                log::error!(
                    "publishing {} (trigger {name}) failed after {failures} attempt(s): {error}",
                    job.path.display()
                );
                let failure = Failure::of(&job, failures, error.clone(), None);
                self.cx.done.failed(&job, Some(failure));
                gave_up += 1;
            } else {
                METRICS.job_ended(&name, JobOutcome::Retried);
                let delay = retry.backoff_after(failures);
                next_retry = Some(next_retry.map_or(delay, |d| d.min(delay)));
                self.retry_later(job, failures, Instant::now() + delay);
                retried += 1;
            }
            first_error.get_or_insert(error);
        }
        if let (Some(error), Some(delay)) = (&first_error, next_retry) {
            // Once per window, not per job: a refusal tends to strike every job of it alike.
            log::warn!("{retried} publish(es) refused ({error}); retried from {delay:?} on");
        }
        self.server_answered(
            &target,
            unanswered.as_deref(),
            published > 0 || first_error.is_some(),
        );
        let mut owed = self.shared.state.lock();
        owed.unacked = 0;
        owed.retrying = self.retries.len();
        owed.published += published;
        owed.retried += retried;
        owed.gave_up += gave_up;
        owed.away = self.away.is_some();
        if let Some(error) = first_error.or(unanswered) {
            owed.last_error = Some(error);
        }
    }

    /// `job` (`failures` attempts failed so far) tried again at `at`, unless a newer job of its
    /// path comes first.
    fn retry_later(&mut self, job: Job, failures: u32, at: Instant) {
        let path = job.path.clone();
        self.retries.insert(path, Retry { job, failures, at });
    }

    /// After a window: whether the server left some of it `unanswered` (why), and whether it
    /// answered any of it. Keeps [`Away`] and says its beginning and end once each.
    fn server_answered(&mut self, target: &str, unanswered: Option<&str>, answered: bool) {
        let now = Instant::now();
        let away = self.away;
        match unanswered {
            // It answers, if not every job in time: the rest are tried again at once.
            None => self.back(target),
            Some(_) if answered => self.back(target),
            Some(reason) => {
                let delay = away.map_or(AWAY_FIRST, |a| (a.delay * 2).min(AWAY_MAX));
                if away.is_none() {
                    log::warn!(
                        "publishing to {target}: no answer ({reason}); its jobs stay owed and are published once it answers (tried again every {AWAY_MAX:?} at most)"
                    );
                }
                self.away = Some(Away {
                    since: away.map_or(now, |a| a.since),
                    delay,
                    next_try: now + delay,
                });
                // The unanswered jobs wait for that try, not only their own retry time.
                for retry in self.retries.values_mut() {
                    retry.at = retry.at.max(now + delay);
                }
            }
        }
    }

    fn back(&mut self, target: &str) {
        if let Some(away) = self.away.take() {
            log::info!(
                "publishing to {target}: the NATS server answers again after {:.1} s",
                away.since.elapsed().as_secs_f64()
            );
        }
    }
}

fn target_of(job: &Job) -> Option<&Publish> {
    match job.trigger.handler() {
        Handler::Publish(target) => Some(target),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::{RETRIED_MAX, Retried};

    #[test]
    fn a_retry_marks_the_paths_under_it_with_its_time_and_the_oldest_go_past_the_bound() {
        let retried = Retried::default();
        assert_eq!(retried.of(Path::new("/t/a")), None);
        retried.add("/t".into());
        let first = retried.of(Path::new("/t/a")).expect("under /t");
        assert_eq!(retried.of(Path::new("/other/a")), None);
        retried.add("/t/a".into());
        let second = retried.of(Path::new("/t/a")).expect("under /t/a");
        assert!(second >= first, "the latest retry covering it wins");
        assert_eq!(retried.of(Path::new("/t/b")), Some(first));
        for i in 0..RETRIED_MAX {
            retried.add(format!("/u/{i}").into());
        }
        assert_eq!(retried.of(Path::new("/t/b")), None, "bounded");
    }
}

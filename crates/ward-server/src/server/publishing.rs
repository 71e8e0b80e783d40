//! Publish triggers' runners (the `nats` feature): one thread per NATS server and stream, which
//! keeps up to `max_unacked` of the jobs it owes sent and unacknowledged, sending one more as
//! each acknowledgement comes (a window that slides), instead of a job thread per publish, each
//! waiting for its own. Not what goes in a message (`crate::publish`, `crate::remote`).
//!
//! The loop hands each job of a publish trigger to its target's runner ([`Publishing::offer`])
//! instead of the pool. A runner keeps the jobs it owes in arrival order, one per path (the
//! latest wins); a job owed is sent once fewer than its trigger's `max_unacked` are in flight,
//! and once its path's previous job, if any, is answered: a path's outcomes stay in order. Each
//! job's outcome goes through the pool's [`OutcomeSender`], as a pool job's
//! does: succeeded once the stream acknowledged it, retried after the trigger's backoff when
//! not, given up after its retries. The jobs owed and waiting for a retry count in
//! `Backlog::len`, so past the high-water mark the loop takes no watcher batch: a NATS server
//! away costs bounded memory. At ward's stop a runner publishes what it owes until the drain's
//! end; what is left stays pending in the manifest for the next start.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ward_nats::{InFlight, Publisher};

use crate::config::{Handler, Publish};
use crate::intents::Intents;
use crate::jobs::{Event, Job};
use crate::manifest::{Failure, FileMeta};
use crate::metrics::{JobOutcome, METRICS};
use crate::outcomes::OutcomeSender;
use crate::protocol::PublishStatus;
use crate::publish::{self, Failed, Publishers, ToPublish};

use super::runners;

/// What every runner needs, from the server.
#[derive(Debug)]
pub(super) struct Context {
    pub roots: Vec<PathBuf>,
    pub publishers: Publishers,
    pub done: OutcomeSender,
    pub intents: Arc<Intents>,
    /// Nothing is sent while set (`ward hold`, memory short): see [`Publishing::set_held`].
    pub held: AtomicBool,
    /// The paths `ward retry` asked for again within the stream's duplicate window: see
    /// [`Publishing::retried`].
    pub retried: crate::retried::Retried,
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
    order: VecDeque<Arc<Path>>,
    jobs: HashMap<Arc<Path>, Job>,
    /// Jobs sent, not yet acknowledged.
    unacked: usize,
    /// Jobs waiting for their retry (the runner's own, counted here for the loop).
    retrying: usize,
    /// ward's stop (nothing is sent after its instant, nor once nothing is owed) and whether
    /// the thread has ended.
    life: runners::Life,
    published: u64,
    retried: u64,
    gave_up: u64,
    last_error: Option<String>,
    /// The server did not answer the last publishes: the runner waits for it, the jobs owed.
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
                let path = Arc::clone(&job.path);
                if owed.jobs.insert(Arc::clone(&path), job).is_none() {
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
    pub(super) fn retried(&self, path: &Path) {
        if let Some(cx) = &self.context {
            cx.retried.add(path);
        }
    }

    /// Nothing is sent while `held` (what is in flight is answered); what comes meanwhile is
    /// owed.
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
            publisher: None,
            in_flight: InFlight::default(),
            sending: HashSet::new(),
            limit: 1,
        }
        .run();
    })
}

/// A runner's own state, on its thread.
struct RunnerThread<'a> {
    shared: &'a Shared,
    cx: Arc<Context>,
    /// Jobs whose last attempt failed, or went unanswered, by path.
    retries: HashMap<Arc<Path>, Retry>,
    /// The server did not answer: since when, and when to try again.
    away: Option<Away>,
    /// The connection, made at the first send.
    publisher: Option<Arc<Publisher>>,
    /// The jobs sent and not answered yet, and their paths.
    in_flight: InFlight<Sent>,
    sending: HashSet<Arc<Path>>,
    /// At most this many in flight: the `max_unacked` of the trigger of the job taken last.
    limit: usize,
}

/// A job sent: the attempts that failed before this one, the version it carries, when it went.
struct Sent {
    job: Job,
    failures: u32,
    version: Option<FileMeta>,
    at: Instant,
}

/// How long the thread waits for an acknowledgement before it looks for jobs to send again:
/// what a job offered while the window is not full may wait at most, when acks are slow.
const ACK_POLL: Duration = Duration::from_millis(20);

/// A server that does not answer: the jobs stay owed, and sending is tried again after a delay
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
    /// Sends jobs while fewer than `limit` are in flight, taking their answers as they come: a
    /// window that slides, so the server always has work while jobs are owed.
    fn run(mut self) {
        loop {
            let (jobs, stop_at) = {
                let mut owed = self.shared.state.lock();
                // Whether jobs may be sent now; else it only awaits the answers of those in
                // flight.
                let may_send = loop {
                    let now = Instant::now();
                    let held = self.cx.held.load(Ordering::Relaxed);
                    let stopping = owed.life.stop_at;
                    // Stopping: nothing sent past the drain's end, nor only for retries.
                    if stopping.is_some_and(|at| now >= at)
                        || (stopping.is_some()
                            && self.in_flight.is_empty()
                            && (held || owed.jobs.is_empty()))
                    {
                        owed.life.ended = true;
                        return;
                    }
                    let due = self.retries.values().map(|r| r.at).min();
                    let next_try = self.away.map(|a| a.next_try);
                    let may_try = next_try.is_none_or(|at| at <= now);
                    if !held
                        && may_try
                        && self.in_flight.len() < self.limit
                        && (!owed.jobs.is_empty() || due.is_some_and(|at| at <= now))
                    {
                        break true;
                    }
                    if !self.in_flight.is_empty() {
                        break false;
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
                };
                let jobs = if may_send {
                    self.take(&mut owed)
                } else {
                    Vec::new()
                };
                owed.unacked = self.in_flight.len() + jobs.len();
                owed.retrying = self.retries.len();
                (jobs, owed.life.stop_at)
            };
            if !jobs.is_empty() {
                self.send(jobs, stop_at);
            }
            if !self.in_flight.is_empty() {
                self.await_answers(stop_at);
            }
        }
    }

    /// The next jobs to send: the retries due, then the jobs owed in arrival order, while fewer
    /// than `limit` are in flight (the limit of each job's trigger). A path owed anew drops its
    /// retry: a new change's attempts start over. A path in flight keeps its place owed.
    fn take(&mut self, owed: &mut Owed) -> Vec<(Job, u32)> {
        let now = Instant::now();
        self.retries.retain(|path, _| !owed.jobs.contains_key(path));
        let mut due: Vec<Arc<Path>> = self
            .retries
            .iter()
            .filter(|(_, r)| r.at <= now)
            .map(|(path, _)| path.clone())
            .collect();
        due.sort_by_key(|path| self.retries[path].at);
        let mut jobs: Vec<(Job, u32)> = Vec::new();
        let retried = due
            .into_iter()
            .filter_map(|path| self.retries.remove(&path));
        let retried = retried.map(|r| (r.job, r.failures));
        // At most `limit` of them are in flight, so as many are passed over at most.
        let mut passed_over = Vec::new();
        let sending = &self.sending;
        let owed_jobs = std::iter::from_fn(|| {
            loop {
                let path = owed.order.pop_front()?;
                if sending.contains(&path) {
                    passed_over.push(path);
                    continue;
                }
                return Some(owed.jobs.remove(&path).map(|job| (job, 0)));
            }
        })
        .flatten();
        for (job, failures) in retried.chain(owed_jobs) {
            self.limit = target_of(&job).map_or(1, |t| t.max_unacked);
            jobs.push((job, failures));
            if self.in_flight.len() + jobs.len() >= self.limit {
                break;
            }
        }
        for path in passed_over.into_iter().rev() {
            owed.order.push_front(path);
        }
        self.sending
            .extend(jobs.iter().map(|(job, _)| Arc::clone(&job.path)));
        // Retries past the limit wait for the next room.
        jobs
    }

    /// Sends `jobs`; those that cannot be sent (a job its trigger does not receive, a message
    /// that cannot be made, no connection) are answered at once.
    fn send(&mut self, jobs: Vec<(Job, u32)>, stop_at: Option<Instant>) {
        let mut answered = Vec::new();
        let mut messages = Vec::with_capacity(jobs.len());
        for (job, failures) in jobs {
            let version = if job.event == Event::Removed {
                None
            } else {
                FileMeta::read(&job.path)
            };
            let sent = Sent {
                job,
                failures,
                version,
                at: Instant::now(),
            };
            if !sent.job.trigger.receives(sent.job.event) {
                answered.push((sent, Ok(())));
                continue;
            }
            let message = publish::target_of(&sent.job).and_then(|target| {
                let one = ToPublish {
                    job: &sent.job,
                    version,
                    retried_at_ns: self.cx.retried.of(&sent.job.path),
                };
                self.cx.publishers.message(target, &one, &self.cx.roots)
            });
            match message {
                Ok(message) => messages.push((sent, message)),
                Err(e) => answered.push((sent, Err(Failed::Refused(e)))),
            }
        }
        if !messages.is_empty() {
            // Before the stream can tell a worker anything: a killed server's next start still
            // knows of each path.
            let paths: Vec<&Path> = messages
                .iter()
                .filter(|(sent, _)| !self.cx.intents.held(sent.job.seq))
                .map(|(sent, _)| &*sent.job.path)
                .collect();
            if !paths.is_empty() {
                self.cx.intents.record_all(&paths);
            }
            match self.publisher(&messages[0].0.job) {
                Ok(publisher) => {
                    let timeout = stop_at.map_or(ward_nats::PUBLISH_TIMEOUT, |at| {
                        at.saturating_duration_since(Instant::now())
                            .clamp(Duration::from_millis(100), ward_nats::PUBLISH_TIMEOUT)
                    });
                    publisher.send(&mut self.in_flight, messages, timeout);
                }
                Err(failed) => answered.extend(
                    messages
                        .into_iter()
                        .map(|(sent, _)| (sent, Err(failed.clone()))),
                ),
            }
        }
        if !answered.is_empty() {
            self.answered(answered, stop_at);
        }
    }

    /// The connection to `job`'s server and stream, made at the first send.
    fn publisher(&mut self, job: &Job) -> Result<Arc<Publisher>, Failed> {
        if let Some(publisher) = &self.publisher {
            return Ok(Arc::clone(publisher));
        }
        let target = publish::target_of(job).map_err(Failed::Refused)?;
        let publisher = self.cx.publishers.publisher(target)?;
        self.publisher = Some(Arc::clone(&publisher));
        Ok(publisher)
    }

    /// Waits a little for answers of the jobs in flight, and takes those that came.
    fn await_answers(&mut self, stop_at: Option<Instant>) {
        let Some(publisher) = self.publisher.clone() else {
            return;
        };
        let wait = stop_at.map_or(ACK_POLL, |at| {
            at.saturating_duration_since(Instant::now()).min(ACK_POLL)
        });
        let answered: Vec<(Sent, Result<(), Failed>)> = publisher
            .acknowledged(&mut self.in_flight, wait)
            .into_iter()
            .map(|(sent, result)| {
                let result = result
                    .map(|ack| publish::log_ack(&sent.job, ack))
                    .map_err(|e| Failed::of(&e));
                (sent, result)
            })
            .collect();
        if !answered.is_empty() {
            self.answered(answered, stop_at);
        }
    }

    /// Hands each answered job's outcome to the loop.
    fn answered(&mut self, answered: Vec<(Sent, Result<(), Failed>)>, stop_at: Option<Instant>) {
        let target = answered
            .first()
            .and_then(|(sent, _)| target_of(&sent.job))
            .map(|t| format!("{} stream {}", t.url, t.stream))
            .unwrap_or_default();
        let stopped = stop_at.is_some_and(|at| Instant::now() >= at);
        let (mut published, mut retried, mut gave_up) = (0, 0, 0);
        let mut first_error = None;
        let mut next_retry: Option<Duration> = None;
        let mut unanswered: Option<String> = None;
        for (sent, result) in answered {
            let Sent {
                job,
                failures,
                version,
                at,
            } = sent;
            self.sending.remove(&job.path);
            let name = job.trigger.name().to_owned();
            let error = match result {
                Ok(()) => {
                    METRICS.job_ran(&name, at.elapsed());
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
            METRICS.job_ran(&name, at.elapsed());
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
            // Once per answer taken, not per job: a refusal tends to strike every job alike.
            log::warn!("{retried} publish(es) refused ({error}); retried from {delay:?} on");
        }
        self.server_answered(
            &target,
            unanswered.as_deref(),
            published > 0 || first_error.is_some(),
        );
        let mut owed = self.shared.state.lock();
        owed.unacked = self.in_flight.len();
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
        let path = Arc::clone(&job.path);
        self.retries.insert(path, Retry { job, failures, at });
    }

    /// After answers: whether the server left some `unanswered` (why), and whether it answered
    /// any. Keeps [`Away`] and says its beginning and end once each.
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

//! The job body the pool runs (the intent recorded, the dispatcher run, the outcome sent to the
//! loop), and how outcomes are logged and recorded. Not how a job reaches its handler: that is
//! the dispatcher's.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use ward_queue::{Event as QueueEvent, JobError as QueueError, Policy, Pool};

use crate::Error;
use crate::config::Config;
use crate::dispatch::{Dispatcher, JobError};
use crate::intents::Intents;
use crate::jobs::{Event, Job};
use crate::manifest::{Failure, FileMeta};
use crate::metrics::{JobOutcome, METRICS};
use crate::outcomes::{OutcomeSender, Outcomes};
use crate::tracker::Tracker;

/// The pool's timeout for `config`: a backstop for a job thread stuck anyway, since the dispatcher
/// stops a job's process at its trigger's deadline. The pool has one timeout for all jobs, fixed
/// when it is built, so it outlasts the slowest trigger's.
pub(super) fn backstop(config: &Config) -> Duration {
    config
        .triggers
        .iter()
        .map(|t| longest_job(t.process.timeout, t.process.stop_grace))
        .fold(
            longest_job(config.job_timeout, config.stop_grace),
            Duration::max,
        )
}

/// The triggers of `config` whose jobs a pool built with `backstop` would give up on before the
/// dispatcher has stopped them.
pub(super) fn past_backstop(config: &Config, backstop: Duration) -> Vec<&str> {
    config
        .triggers
        .iter()
        .filter(|t| longest_job(t.process.timeout, t.process.stop_grace) > backstop)
        .map(|t| t.name.as_str())
        .collect()
}

/// The longest one job with this timeout and stop grace keeps its thread: the timeout, the
/// dump signal's wait, the stop (grace, then SIGKILL and the reap) with room to spare.
fn longest_job(timeout: Duration, grace: Duration) -> Duration {
    timeout + crate::dispatch::DUMP_WAIT + grace * 2 + Duration::from_secs(5)
}

/// The pool of jobs, each keyed by its path: one job per path waits, the latest.
pub(crate) type JobPool = Pool<Job, Arc<Path>>;

pub(super) fn build_pool(
    config: &Config,
    dispatcher: Arc<RwLock<Arc<Dispatcher>>>,
    done: OutcomeSender,
    intents: Arc<Intents>,
) -> Result<JobPool, Error> {
    let finished = done.clone();
    Pool::builder()
        .workers(config.workers)
        .capacity(config.queue_capacity)
        // The loop keeps what does not fit in its backlog: it must never block on the pool.
        .policy(Policy::Reject)
        // Each trigger's own: a job carries the trigger that matched it.
        .retry_with(|job: &Job| job.trigger.retry_policy())
        .timeout(backstop(config))
        .thread_name("ward-job")
        .on_event(move |event: QueueEvent<Job>| {
            // Its last attempt ended, or it was dropped: a place for another of its trigger's.
            if let QueueEvent::Completed { job, .. }
            | QueueEvent::Dead { job, .. }
            | QueueEvent::Dropped { job, .. } = &event
            {
                job.trigger.left_pool();
            }
            match &event {
                QueueEvent::Completed { job, .. } => {
                    METRICS.job_ended(job.trigger.name(), JobOutcome::Succeeded);
                }
                QueueEvent::Retrying { job, .. } => {
                    METRICS.job_ended(job.trigger.name(), JobOutcome::Retried);
                }
                QueueEvent::Dead { job, .. } => {
                    METRICS.job_ended(job.trigger.name(), JobOutcome::GaveUp);
                }
                QueueEvent::Dropped { job, .. } => {
                    METRICS.job_ended(job.trigger.name(), JobOutcome::Dropped);
                }
                _ => {}
            }
            if let QueueEvent::Dead { job, failures, .. } = &event {
                done.failed(job, gave_up(job, failures));
            }
            log_outcome(event);
        })
        .build(move |job: &Job| {
            // The version this attempt processes; recorded as processed only if it succeeds.
            let version = if job.event == Event::Removed {
                None
            } else {
                FileMeta::read(&job.path)
            };
            // Before the job can tell its consumer anything: if the server is killed before the
            // manifest holds the job's queueing, the next start still knows of the path.
            if !intents.held(job.seq) {
                intents.record(&job.path);
            }
            let current = Arc::clone(&dispatcher.read());
            let began = Instant::now();
            let ran = current.run(job);
            METRICS.job_ran(job.trigger.name(), began.elapsed());
            ran.map_err(|e| Box::new(e) as QueueError)?;
            finished.succeeded(job, version);
            Ok(())
        })
        .map_err(Error::from)
}

/// What to record of `job` giving up after `failures`; `None` when it was stopped by ward's
/// own shutdown, which is no failure of the job (the next start runs it again).
fn gave_up(job: &Job, failures: &[ward_queue::Failure]) -> Option<Failure> {
    let last = failures.last()?;
    let dispatched = match last {
        ward_queue::Failure::Error(e) => e.downcast_ref::<JobError>(),
        _ => None,
    };
    if let Some(JobError::Stopped) = dispatched {
        return None;
    }
    let report = match dispatched {
        Some(JobError::Died { report, .. }) => report.as_ref().map(PathBuf::from),
        _ => None,
    };
    let attempts = u32::try_from(failures.len()).unwrap_or(u32::MAX);
    Some(Failure::of(job, attempts, last.to_string(), report))
}

/// Records every outcome waiting.
pub(super) fn record_outcomes(done: &Outcomes, tracker: &mut Tracker) {
    for update in done.take() {
        tracker.finished(update);
    }
}

fn log_outcome(event: QueueEvent<Job>) {
    match event {
        QueueEvent::Completed { job, attempts, .. } if attempts > 1 => {
            log::info!(
                "job on {} succeeded on attempt {attempts}",
                job.path.display()
            );
        }
        QueueEvent::Completed { job, .. } => log::debug!("job on {} done", job.path.display()),
        QueueEvent::Retrying {
            job,
            attempt,
            failure,
            delay,
            ..
        } => {
            log::warn!(
                "job on {} (trigger {}) failed on attempt {attempt} ({failure}); retrying in {delay:?}",
                job.path.display(),
                job.trigger.name()
            );
        }
        QueueEvent::Dead { job, failures, .. } => {
            let last = failures.last().map(ToString::to_string).unwrap_or_default();
            log::error!(
                "job on {} failed after {} attempt(s): {last}",
                job.path.display(),
                failures.len()
            );
        }
        other => log::debug!("queue: {other:?}"),
    }
}

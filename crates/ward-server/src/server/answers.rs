//! The server's answers to control requests: what it reports, and how a request reaches the loop
//! that owns the state it reports. The wire form is `protocol`'s, the transport `control`'s.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::job::JobPool;
use signal_hook::consts::SIGTERM;
use ward_watch::Watcher;

use super::backlog::Backlog;
use crate::dispatch::Dispatcher;
use crate::metrics::METRICS;
use crate::protocol::{
    Accepted, CHANGES_PAGE, ChangeLine, ChangesPage, FAILURES_PAGE, FailureLine, FailuresPage,
    ManifestStatus, MetricsText, QueueStatus, Reply, Request, Retried, ServerStatus, WatchStatus,
};
use crate::state::{KeeperState, StateDir};
use crate::tracker::Tracker;

/// A request the main loop answers, and where its answer goes.
pub(super) struct Asked {
    pub request: Request,
    pub reply: crossbeam_channel::Sender<Result<Reply, String>>,
}

/// What the loop owns that requests ask about.
pub(super) struct Sources<'a> {
    pub pool: &'a JobPool,
    pub watcher: &'a Watcher,
    pub backlog: &'a Backlog,
    pub dispatcher: &'a Dispatcher,
    pub started: Instant,
    /// Why no job starts, while memory is short or a hold is in place.
    pub held: Option<String>,
    /// The services, for their status.
    pub services: &'a super::Services,
    /// The state directory, for the keeper's count of restarts.
    pub state: &'a StateDir,
    /// What remote workers reported of the published jobs.
    pub remote: Vec<crate::protocol::RemoteStatus>,
}

/// The loop's answer to `request`.
pub(super) fn answer(
    request: &Request,
    tracker: &mut Tracker,
    from: &Sources<'_>,
) -> Result<Reply, String> {
    match *request {
        Request::Status => Ok(Reply::Status(Box::new(status(tracker, from)))),
        Request::Metrics => {
            let status = status(tracker, from);
            let keeper_restarts = KeeperState::read(from.state).map(|k| k.restarts);
            Ok(Reply::Metrics(MetricsText {
                metrics: METRICS.render(&status, keeper_restarts),
            }))
        }
        Request::Changes { since, limit } => {
            let since = since.unwrap_or(0);
            let limit = limit.map_or(CHANGES_PAGE, |l| l.min(CHANGES_PAGE as u64) as usize);
            // A since-query must see every change already seen, written or not.
            tracker.flush();
            let changes = tracker
                .changes_since(since, limit)
                .map_err(|e| e.to_string())?;
            Ok(Reply::Changes(ChangesPage {
                seq: tracker.stats().1,
                changes: changes.iter().map(ChangeLine::of).collect(),
            }))
        }
        Request::Failures { limit } => {
            let limit = limit.map_or(FAILURES_PAGE, |l| l.min(FAILURES_PAGE as u64) as usize);
            let (gave_up, failures) = tracker.failures(limit).map_err(|e| e.to_string())?;
            Ok(Reply::Failures(FailuresPage {
                gave_up,
                failures: failures
                    .iter()
                    .map(|(path, failure)| FailureLine::of(path, failure))
                    .collect(),
            }))
        }
        // Stop and service are answered by the control thread itself, subscribe by the stream,
        // reload by the loop's `reload`, retry by `retry`, which needs the backlog, hold and
        // release by the loop's holds.
        Request::Stop
        | Request::Reload
        | Request::Retry { .. }
        | Request::Service { .. }
        | Request::Subscribe { .. }
        | Request::Hold { .. }
        | Request::Release { .. } => Err(format!("{request:?} is not answered here")),
    }
}

/// `ward retry`: forgets the give-ups under each path (every root's for `all`) and compares
/// those paths with the disk again, which owes their jobs.
pub(super) fn retry(
    paths: &[PathBuf],
    all: bool,
    roots: &[PathBuf],
    tracker: &mut Tracker,
    backlog: &mut Backlog,
) -> Result<Reply, String> {
    let mut retried = 0;
    let mut not_failed = Vec::new();
    for path in if all { roots } else { paths } {
        if !path.is_absolute() {
            return Err(format!(
                "{}: a path to retry must be absolute",
                path.display()
            ));
        }
        let n = tracker.retry(path).map_err(|e| e.to_string())?;
        if n == 0 {
            if !all {
                not_failed.push(path.display().to_string());
            }
            continue;
        }
        log::info!("retrying {n} path(s) that gave up under {}", path.display());
        retried += n;
        #[cfg(feature = "nats")]
        backlog.publishing.retried(path);
        backlog.rescan(path.clone(), tracker);
    }
    Ok(Reply::Retried(Retried {
        retried,
        not_failed,
    }))
}

fn status(tracker: &Tracker, from: &Sources<'_>) -> ServerStatus {
    let m = from.pool.metrics();
    let w = from.watcher.stats();
    let backend = from.watcher.backend();
    let (paths, seq) = tracker.stats();
    let (unrecorded, write_error) = tracker.backlog();
    let (batches, batches_running) = from.backlog.batches.status();
    #[cfg(feature = "nats")]
    let publishing = from.backlog.publishing.status();
    #[cfg(not(feature = "nats"))]
    let publishing: Vec<crate::protocol::PublishStatus> = Vec::new();
    // A publisher's jobs count as the pool's do: unacknowledged ones run, acknowledged ones
    // completed, and so on.
    let sum = |count: fn(&crate::protocol::PublishStatus) -> u64| -> u64 {
        publishing.iter().map(count).sum()
    };
    ServerStatus {
        server_pid: std::process::id(),
        uptime_s: from.started.elapsed().as_secs(),
        queue: QueueStatus {
            queued: m.queued,
            running: m.running + batches_running + sum(|p| p.unacked as u64) as usize,
            completed: m.completed + sum(|p| p.published),
            failed: m.failed + sum(|p| p.retried + p.gave_up),
            retried: m.retried + sum(|p| p.retried),
            coalesced: m.coalesced,
            rejected: m.rejected,
            dead: m.dead + sum(|p| p.gave_up),
            paused: from.pool.is_paused(),
            held: from.held.clone(),
            backlog: from.backlog.len(),
        },
        watch: WatchStatus {
            events: w.events,
            pending: w.pending,
            peak_pending: w.peak_pending,
            watches: w.watches,
            batches: w.batches,
            dropped_events: w.dropped_events,
            failed_watches: w.failed_watches,
            polled_roots: w.polled_roots,
            backend: backend.name.to_owned(),
            backend_fallback: backend.fallback,
        },
        manifest: ManifestStatus {
            paths,
            seq,
            unrecorded,
            write_error,
            gave_up: tracker.gave_up(),
        },
        workers_idle: from.dispatcher.idle_workers(),
        batches,
        services: from.services.status(),
        remote: from.remote.clone(),
        publishing,
        work: None,
    }
}

/// How long the control thread waits for the main loop's answer.
const REQUEST_WAIT: Duration = Duration::from_secs(2);
/// How long the control thread waits for the main loop to take a reload request and for the
/// reload's result; `ward reload` waits longer than this.
const RELOAD_WAIT: Duration = Duration::from_secs(10);

/// Answers `request` on a control thread: stop by signal, a service's start, stop or restart
/// by asking the services' loop (which may take a stop's grace and a start's readiness, and
/// never holds up the main loop), the rest by asking the main loop.
pub(super) fn control(
    request: Request,
    main_loop: &crossbeam_channel::Sender<Asked>,
    services: &super::services::Requests,
    service_wait: Duration,
) -> Result<Reply, String> {
    match request {
        Request::Service { name, action } => {
            services.act(name, action, service_wait).map(Reply::Service)
        }
        Request::Stop => {
            // The keeper owns the tree; it stops the server, which drains first.
            // SAFETY: getppid and kill have no memory-safety preconditions.
            let rc = unsafe { libc::kill(libc::getppid(), SIGTERM) };
            if rc == 0 {
                Ok(Reply::Accepted(Accepted {}))
            } else {
                Err(std::io::Error::last_os_error().to_string())
            }
        }
        request => {
            // A reload is answered once it was applied or refused: a longer wait, which the
            // loop, reading one file and compiling its globs, keeps well within.
            let wait = if request == Request::Reload {
                RELOAD_WAIT
            } else {
                REQUEST_WAIT
            };
            ask_loop(request, main_loop, wait)
        }
    }
}

/// Hands `request` to the main loop and waits for its answer, at most `wait` for each.
pub(super) fn ask_loop(
    request: Request,
    main_loop: &crossbeam_channel::Sender<Asked>,
    wait: Duration,
) -> Result<Reply, String> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    main_loop
        .send_timeout(Asked { request, reply: tx }, wait)
        .map_err(|_| "the server's main loop is busy".to_owned())?;
    rx.recv_timeout(wait)
        .map_err(|_| "the server's main loop did not answer in time".to_owned())?
}

/// How long a scrape waits for the main loop: less than Prometheus's default scrape timeout
/// (10 s), so a busy loop is said as such rather than as a timeout.
pub(super) const METRICS_WAIT: Duration = REQUEST_WAIT;

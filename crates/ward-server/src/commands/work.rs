//! `ward work`: a worker for jobs published by other wards' publish triggers. It pulls them from
//! a durable JetStream consumer and runs each with the trigger of this host's config that
//! handles it, through the same dispatcher (supervision, crash reports) as `ward run`. What goes
//! on the wire is `remote.rs`'s; the connections are ward-nats's.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use ward_nats::{ConsumerSpec, Delivery, Publisher, Puller, StreamSpec};

use crate::control::ControlSocket;
use crate::dispatch::{Dispatcher, JobError};
use crate::jobs::Job;
use crate::protocol::{
    Accepted, ManifestStatus, QueueStatus, Reply, Request, ServerStatus, WatchStatus, WorkStatus,
};
pub use crate::remote::WorkOptions;
use crate::remote::{
    DeadLetter, JobMessage, JobResult, RESULTS_MAX_AGE, RESULTS_PREFIX, RESULTS_STREAM,
    RemoteOutcome, hostname,
};
use crate::state::{StateDir, names};
use crate::{Error, Launch, Outcome};

/// The subjects `ward work` takes: those of every publish trigger's default subject.
pub const JOB_SUBJECTS: &str = "ward.jobs.>";
/// Where a job goes after its last failed delivery, its trigger's name last.
pub const DEAD_PREFIX: &str = "ward.dead";
/// The stream that keeps the dead letters, for a person (or a test) to read.
pub const DEAD_STREAM: &str = "WARD_DEAD";
/// How long one pull waits for a message before it looks at the stop flag again.
const PULL_WAIT: Duration = Duration::from_secs(1);

/// Runs `ward work` in the foreground until SIGTERM or SIGINT; the job in hand is finished
/// (and settled) first.
pub fn work(launch: &Launch, options: &WorkOptions) -> Outcome {
    let run = || {
        crate::logging::init("work", crate::logging::Sink::Stderr);
        let config = launch.config()?;
        let state = launch.open_state_dir()?;
        run(config, &state, options, false)
    };
    run().into()
}

/// `ward work --detach`: as `ward start`, a keeper in the background whose server process runs
/// the work (restarted if it dies, its deaths reported); `ward status` and `ward stop` with the
/// same state directory see and stop it.
pub fn start_work(launch: &Launch, options: &WorkOptions) -> Outcome {
    super::start_daemon(launch, Some(options.clone())).into()
}

/// The server process of a `ward work --detach`: the work, with a control socket that answers
/// `status` and `stop`, ready once connected.
pub(crate) fn serve(
    config: crate::Config,
    state: &StateDir,
    options: &WorkOptions,
) -> Result<(), Error> {
    run(config, state, options, true)
}

/// What the work threads count, for `ward status`.
#[derive(Debug, Default)]
struct Counts {
    running: AtomicU64,
    succeeded: AtomicU64,
    /// Jobs not run because their file changed since.
    superseded: AtomicU64,
    retried: AtomicU64,
    dead_lettered: AtomicU64,
    /// The last pull failed (the server is away).
    failing: AtomicBool,
}

impl Counts {
    fn status(&self, options: &WorkOptions, threads: usize, started: Instant) -> ServerStatus {
        let get = |n: &AtomicU64| n.load(Ordering::Relaxed);
        ServerStatus {
            server_pid: std::process::id(),
            uptime_s: started.elapsed().as_secs(),
            queue: QueueStatus {
                running: get(&self.running) as usize,
                completed: get(&self.succeeded),
                failed: get(&self.retried) + get(&self.dead_lettered),
                retried: get(&self.retried),
                dead: get(&self.dead_lettered),
                ..QueueStatus::default()
            },
            watch: WatchStatus::default(),
            manifest: ManifestStatus::default(),
            workers_idle: threads.saturating_sub(get(&self.running) as usize),
            batches: Vec::new(),
            services: Vec::new(),
            remote: Vec::new(),
            publishing: Vec::new(),
            work: Some(WorkStatus {
                url: options.url.clone(),
                stream: options.stream.clone(),
                consumer: options.consumer.clone(),
                threads,
                pulling: !self.failing.load(Ordering::Relaxed),
                succeeded: get(&self.succeeded),
                superseded: get(&self.superseded),
                retried: get(&self.retried),
                dead_lettered: get(&self.dead_lettered),
            }),
        }
    }
}

/// Pulls and runs jobs until SIGTERM or SIGINT (or, `kept` by a keeper, its death); `kept`
/// also serves the control socket and tells the keeper when it is ready.
fn run(
    config: crate::Config,
    state: &StateDir,
    options: &WorkOptions,
    kept: bool,
) -> Result<(), Error> {
    let started = Instant::now();
    let workers = options.workers.unwrap_or(config.workers).max(1);
    // A job in hand is stopped within its grace when ward work stops.
    let grace = config.stop_grace + Duration::from_secs(5);
    let scratch = state.join("work");
    std::fs::create_dir_all(&scratch)
        .map_err(|e| Error::io(format!("creating {}", scratch.display()), e))?;
    let dispatcher = Dispatcher::new(config, state.clone())?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut signals = vec![libc::SIGTERM, libc::SIGINT];
    if kept {
        // The keeper's death: stop as for SIGTERM, settling the jobs in hand, killed by the
        // alarm it sets if that takes longer than the jobs' grace.
        if let Err(e) = crate::server::keeper_gone::watch(grace) {
            log::warn!(
                "cannot watch for the keeper's death ({e}): if it dies, the work stops only when its jobs do"
            );
        }
        signals.push(crate::server::keeper_gone::KEEPER_GONE);
    }
    for signal in signals {
        signal_hook::flag::register(signal, stop.clone())
            .map_err(|e| Error::io("installing the signal handlers", e))?;
    }
    let counts = Arc::new(Counts {
        failing: AtomicBool::new(true),
        ..Counts::default()
    });
    // Kept by a keeper, it is ready (and answers `ward status`) before it reaches the NATS
    // server, which may come later (started after it, restarting): meanwhile it says it does not
    // pull, and tries again.
    let _socket = if kept {
        let (counts, options) = (Arc::clone(&counts), options.clone());
        let socket = ControlSocket::bind(
            &state.join(names::SOCKET),
            Arc::new(move |request| match request {
                Request::Status => Ok(Reply::Status(Box::new(
                    counts.status(&options, workers, started),
                ))),
                Request::Stop => {
                    // The keeper stops this process, which settles its jobs first.
                    // SAFETY: getppid and kill have no memory-safety preconditions.
                    if unsafe { libc::kill(libc::getppid(), libc::SIGTERM) } == 0 {
                        Ok(Reply::Accepted(Accepted {}))
                    } else {
                        Err(std::io::Error::last_os_error().to_string())
                    }
                }
                _ => Err("ward work answers status and stop only".to_owned()),
            }),
        )?;
        crate::server::announce_ready();
        Some(socket)
    } else {
        None
    };
    let mut said = false;
    let (puller, reports) = loop {
        match connect(options) {
            Ok(connected) => break connected,
            Err(e) if !stop.load(Ordering::Relaxed) => {
                if !std::mem::replace(&mut said, true) {
                    log::warn!("{e}; trying again every {PULL_WAIT:?}");
                }
                std::thread::sleep(PULL_WAIT);
            }
            Err(_) => {
                log::info!("stopped before the NATS server could be reached");
                return Ok(());
            }
        }
    };
    counts.failing.store(false, Ordering::Relaxed);
    log::info!(
        "working: {} stream {} consumer {}, {workers} at once, {} deliveries each at most",
        options.url,
        options.stream,
        options.consumer,
        options.max_deliver
    );
    let worker = Worker {
        dispatcher: &dispatcher,
        options,
        host: hostname(),
        scratch: &scratch,
        reports: &reports,
        counts: &counts,
    };
    std::thread::scope(|scope| {
        let spawned = (0..workers).try_for_each(|n| {
            let (worker, puller, stop) = (&worker, &puller, &stop);
            std::thread::Builder::new()
                .name(format!("ward-work-{n}"))
                .spawn_scoped(scope, move || {
                    // Said once per outage, not once per pull, and its end said too.
                    let mut failing = false;
                    while !stop.load(Ordering::Relaxed) {
                        match puller.next(PULL_WAIT) {
                            Ok(pulled) => {
                                if std::mem::take(&mut failing) {
                                    worker.counts.failing.store(false, Ordering::Relaxed);
                                    log::info!("pulling jobs again");
                                }
                                if let Some(delivery) = pulled {
                                    worker.handle(&delivery, n);
                                }
                            }
                            Err(e) => {
                                if !std::mem::replace(&mut failing, true) {
                                    worker.counts.failing.store(true, Ordering::Relaxed);
                                    log::warn!("{e}; pulling again every {PULL_WAIT:?}");
                                }
                                // The client reconnects by itself; this thread waits for it.
                                std::thread::sleep(PULL_WAIT);
                            }
                        }
                    }
                })
                .map(drop)
                .map_err(|e| Error::io("starting a work thread", e))
        });
        if spawned.is_err() {
            // The threads started stop too: the scope waits for them.
            stop.store(true, Ordering::Relaxed);
        }
        spawned
    })?;
    dispatcher.stop_workers();
    log::info!("stopped");
    Ok(())
}

/// Connects to the jobs' consumer and to where dead letters and results go, making the streams
/// and the consumer if they are missing.
fn connect(options: &WorkOptions) -> Result<(Puller, Publisher), Error> {
    let jobs = StreamSpec::work_queue(&options.stream, JOB_SUBJECTS);
    // The server redelivers without limit: a delivery past `max_deliver` is dead-lettered here
    // (see `Worker::handle`). A server that stopped at the limit would keep such a job in the
    // stream, delivered to no one, when its earlier deliveries were never settled.
    let consumer = ConsumerSpec {
        max_deliver: -1,
        ack_wait: options.ack_wait,
        ..ConsumerSpec::new(&options.consumer, JOB_SUBJECTS)
    };
    let puller = Puller::connect(&options.url, &jobs, &consumer)?;
    // Dead letters are kept (not a work queue): they are read, by a person, not consumed.
    let reports = Publisher::connect(
        &options.url,
        &StreamSpec::kept(DEAD_STREAM, &format!("{DEAD_PREFIX}.>")),
    )?;
    // Results wait for their origin, each origin's consumer on its own subject.
    reports.ensure_stream(&StreamSpec {
        max_age: RESULTS_MAX_AGE,
        ..StreamSpec::work_queue(RESULTS_STREAM, &format!("{RESULTS_PREFIX}.>"))
    })?;
    Ok((puller, reports))
}

/// What every work thread shares.
struct Worker<'a> {
    dispatcher: &'a Dispatcher,
    options: &'a WorkOptions,
    host: String,
    scratch: &'a Path,
    /// Dead letters and results.
    reports: &'a Publisher,
    counts: &'a Counts,
}

/// Why a message was not run.
enum Unrunnable {
    /// It can never run here: it is dead-lettered at once.
    Never(String),
}

impl Worker<'_> {
    fn handle(&self, delivery: &Delivery, thread: usize) {
        let message = match serde_json::from_slice::<JobMessage>(delivery.payload()) {
            Ok(message) => message,
            Err(e) => {
                log::error!("{}: not a ward job ({e}): terminated", delivery.subject());
                settle(delivery.term(), "term");
                return;
            }
        };
        let outcome = match self.job_of(&message, delivery.subject(), thread) {
            Ok((job, scratch)) => {
                let outcome = self.run(&message, &job, scratch.is_none(), delivery);
                if let Some(file) = scratch {
                    let _ = std::fs::remove_file(file);
                }
                outcome
            }
            Err(Unrunnable::Never(why)) => Err(Failure::Final(why)),
        };
        self.settle_outcome(delivery, message, outcome);
    }

    /// Runs `job`, unless its file under `--root` (`on_disk`) was modified since (a later
    /// change, with a job of its own) or its delivery is past the maximum.
    fn run(
        &self,
        message: &JobMessage,
        job: &Job,
        on_disk: bool,
        delivery: &Delivery,
    ) -> Result<Ran, Failure> {
        if let Some(why) = on_disk.then(|| superseded(message, &job.path)).flatten() {
            return Ok(Ran::Superseded(why));
        }
        if delivery.delivered() as i64 > self.options.max_deliver {
            // Its earlier deliveries were never settled: the worker holding it died, or its
            // settlement was lost with the server. Not run again: a job that kills its worker
            // would otherwise do so forever.
            return Err(Failure::Final(format!(
                "delivered {} times, more than its {}: a delivery was never settled (a worker \
                 died holding it, or the NATS server lost its settlement)",
                delivery.delivered(),
                self.options.max_deliver
            )));
        }
        self.counts.running.fetch_add(1, Ordering::Relaxed);
        let outcome = self.run_with_progress(job, delivery);
        self.counts.running.fetch_sub(1, Ordering::Relaxed);
        outcome.map(|()| Ran::Ran).map_err(|e| Failure::Retry {
            error: e.to_string(),
            backoff: job.trigger.retry().backoff,
        })
    }

    /// Acks, nak-s or dead-letters `delivery` as `outcome` says.
    fn settle_outcome(
        &self,
        delivery: &Delivery,
        message: JobMessage,
        outcome: Result<Ran, Failure>,
    ) {
        match outcome {
            Ok(Ran::Ran) => {
                self.counts.succeeded.fetch_add(1, Ordering::Relaxed);
                self.report(&message, RemoteOutcome::Succeeded, None, delivery);
                settle(delivery.ack(), "ack");
            }
            Ok(Ran::Superseded(why)) => {
                log::debug!("{}: not run: {why}", message.path.display());
                self.counts.superseded.fetch_add(1, Ordering::Relaxed);
                self.report(&message, RemoteOutcome::Superseded, Some(why), delivery);
                settle(delivery.ack(), "ack");
            }
            Err(Failure::Retry {
                error,
                backoff: first,
            }) if (delivery.delivered() as i64) < self.options.max_deliver => {
                let delay = backoff(first, delivery.delivered());
                log::warn!(
                    "{} (delivery {}): {error}; again in {delay:?}",
                    message.path.display(),
                    delivery.delivered()
                );
                self.counts.retried.fetch_add(1, Ordering::Relaxed);
                self.report(&message, RemoteOutcome::Retried, Some(error), delivery);
                settle(delivery.nak(delay), "nak");
            }
            Err(Failure::Retry { error, .. } | Failure::Final(error)) => {
                self.dead_letter(delivery, message, error);
            }
        }
    }

    /// Publishes the job to the dead-letter subject, then terminates it; if the dead letter
    /// cannot be published, the job is nak-ed instead, so that it is not lost.
    fn dead_letter(&self, delivery: &Delivery, job: JobMessage, error: String) {
        let subject = format!("{DEAD_PREFIX}.{}", job.trigger);
        let path = job.path.display().to_string();
        let letter = DeadLetter {
            job,
            error,
            deliveries: delivery.delivered(),
            worker: self.host.clone(),
        };
        let body = serde_json::to_vec(&letter).unwrap_or_default();
        let id = format!("dead:{}:{}", letter.job.message_id(), letter.deliveries);
        match self.reports.publish(&subject, &id, body) {
            Ok(_) => {
                self.counts.dead_lettered.fetch_add(1, Ordering::Relaxed);
                log::error!(
                    "{path}: gave up after {} deliveries ({}): dead-lettered on {subject}",
                    letter.deliveries,
                    letter.error
                );
                self.report(
                    &letter.job,
                    RemoteOutcome::GaveUp,
                    Some(letter.error.clone()),
                    delivery,
                );
                settle(delivery.term(), "term");
            }
            Err(e) => {
                log::error!("{path}: cannot dead-letter ({e}): delivered again later");
                settle(delivery.nak(self.options.ack_wait), "nak");
            }
        }
    }

    /// Tells the job's origin how this delivery ended, before the delivery is settled. A result
    /// that cannot be sent is logged and the delivery settled all the same: what is lost is the
    /// origin's view of it, not the job.
    fn report(
        &self,
        job: &JobMessage,
        outcome: RemoteOutcome,
        error: Option<String>,
        delivery: &Delivery,
    ) {
        if job.origin.is_empty() {
            return;
        }
        let result = JobResult {
            job: JobMessage {
                content: None,
                ..job.clone()
            },
            outcome,
            error,
            delivery: delivery.delivered(),
            worker: self.host.clone(),
        };
        let body = match serde_json::to_vec(&result) {
            Ok(body) => body,
            Err(e) => {
                log::error!("{}: cannot encode its result: {e}", job.path.display());
                return;
            }
        };
        if let Err(e) = self
            .reports
            .publish(&result.subject(), &result.message_id(), body)
        {
            log::warn!(
                "{}: its result ({}) is not sent to its origin {}: {e}",
                job.path.display(),
                outcome.as_str(),
                job.origin
            );
        }
    }

    /// The job `message` asks for here, and the scratch file holding its content if it carried
    /// it.
    fn job_of(
        &self,
        message: &JobMessage,
        subject: &str,
        thread: usize,
    ) -> Result<(Job, Option<PathBuf>), Unrunnable> {
        let triggers = self.dispatcher.triggers();
        // The trigger named in the message (its subject's last token by default), else the first
        // whose globs match the relative path.
        let trigger = triggers
            .named(&message.trigger)
            .or_else(|| subject.rsplit('.').next().and_then(|t| triggers.named(t)))
            .or_else(|| triggers.find(Path::new(""), &message.path))
            .ok_or_else(|| {
                Unrunnable::Never(format!(
                    "no trigger of this worker's config handles {} (trigger {:?})",
                    message.path.display(),
                    message.trigger
                ))
            })?
            .clone();
        if message.path.is_absolute()
            || message
                .path
                .components()
                .any(|c| c == std::path::Component::ParentDir)
        {
            return Err(Unrunnable::Never(format!(
                "path {} leaves its root",
                message.path.display()
            )));
        }
        let (path, scratch) = match (&message.content, &self.options.root) {
            (Some(content), _) => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(content)
                    .map_err(|e| Unrunnable::Never(format!("content is not base64: {e}")))?;
                // Its own directory per thread, the file's own name: globs and extensions still
                // mean what they meant at the origin.
                let dir = self.scratch.join(thread.to_string());
                let name = message.path.file_name().unwrap_or("content".as_ref());
                let file = dir.join(name);
                std::fs::create_dir_all(&dir)
                    .and_then(|()| std::fs::write(&file, bytes))
                    .map_err(|e| {
                        Unrunnable::Never(format!("cannot write {}: {e}", file.display()))
                    })?;
                (file.clone(), Some(file))
            }
            (None, Some(root)) => (root.join(&message.path), None),
            (None, None) => {
                return Err(Unrunnable::Never(
                    "the job carries no content and ward work has no --root to find it under"
                        .into(),
                ));
            }
        };
        let old_path = match (&message.old_path, &self.options.root) {
            (Some(old), Some(root)) => Some(root.join(old)),
            (Some(old), None) => Some(old.clone()),
            (None, _) => None,
        };
        Ok((
            Job {
                trigger,
                path: path.into(),
                event: message.event,
                old_path,
                seq: message.seq,
            },
            scratch,
        ))
    }

    /// Runs `job`, marking the delivery in progress every half ack wait meanwhile, so that it is
    /// not redelivered while it runs.
    fn run_with_progress(&self, job: &Job, delivery: &Delivery) -> Result<(), JobError> {
        let (done, finished) = crossbeam_channel::bounded::<()>(0);
        let every = self.options.ack_wait / 2;
        std::thread::scope(|scope| {
            scope.spawn(|| {
                while let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
                    finished.recv_timeout(every)
                {
                    settle(delivery.progress(), "progress");
                }
            });
            let outcome = self.dispatcher.run(job);
            drop(done);
            outcome
        })
    }
}

/// How a job that did not fail ended.
enum Ran {
    /// It ran and succeeded.
    Ran,
    /// It was not run: its file changed since it was published (why).
    Superseded(String),
}

/// Why the file under `--root` at `path` is no longer the version `message` was published for,
/// in a way that is surely a later change: there, modified later. Such a job is not run: the
/// later change's own job is (or was) delivered, and running this one after it, as a
/// redelivery may, runs on what the later job already saw.
///
/// Anything less sure runs, as before this check: a job of a removal (no version), the same
/// version, a version not later, and a file that is not there. A shared tree may show a new
/// file late (an NFS client's cached lookup), and a job skipped for that would be lost.
fn superseded(message: &JobMessage, path: &Path) -> Option<String> {
    let (size, mtime_ns) = (message.size?, message.mtime_ns?);
    let now = crate::manifest::FileMeta::read(path)?;
    (now.mtime_ns > mtime_ns).then(|| {
        format!(
            "the file changed since ({} bytes, mtime {} ns, against {size} bytes, mtime \
             {mtime_ns} ns published): that change is a job of its own",
            now.size, now.mtime_ns
        )
    })
}

/// How a job failed.
enum Failure {
    /// Its run failed: deliver it again after `backoff` (the first delay of its trigger's retry
    /// policy), unless this was its last delivery.
    Retry { error: String, backoff: Duration },
    /// It cannot run here at all.
    Final(String),
}

/// The delay before delivery `delivered + 1`: `first` doubled for each delivery after the first,
/// at most a minute.
fn backoff(first: Duration, delivered: u64) -> Duration {
    let doublings = delivered.saturating_sub(1).min(16) as u32;
    first
        .saturating_mul(1 << doublings)
        .min(Duration::from_secs(60))
}

fn settle(result: Result<(), ward_nats::Error>, what: &str) {
    if let Err(e) = result {
        // Unsettled, the message comes back after its ack wait: nothing is lost.
        log::warn!("{what} not sent: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_file_modified_later_supersedes_its_job() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.txt");
        std::fs::write(&path, "1").unwrap();
        let now = crate::manifest::FileMeta::read(&path).unwrap();
        let published = |mtime_ns: i64| JobMessage {
            host: "h".into(),
            origin: String::new(),
            root: dir.path().into(),
            path: "a.txt".into(),
            trigger: "t".into(),
            event: crate::jobs::Event::Modified,
            old_path: None,
            size: Some(now.size),
            mtime_ns: Some(mtime_ns),
            ino: Some(now.ino),
            content: None,
            gone_at_ns: None,
            retried_at_ns: None,
            seq: None,
        };
        assert_eq!(superseded(&published(now.mtime_ns), &path), None);
        // A version from after the one here: a tree behind the origin's still runs it.
        assert_eq!(superseded(&published(now.mtime_ns + 1), &path), None);
        let why = superseded(&published(now.mtime_ns - 1), &path).unwrap();
        assert!(why.contains("changed since"), "{why}");
        // Gone, or a removal (no version): run.
        assert_eq!(superseded(&published(0), &dir.path().join("gone")), None);
        let removal = JobMessage {
            size: None,
            mtime_ns: None,
            ino: None,
            ..published(0)
        };
        assert_eq!(superseded(&removal, &path), None);
    }

    #[test]
    fn the_backoff_doubles_per_delivery_up_to_a_minute() {
        let first = Duration::from_millis(100);
        assert_eq!(backoff(first, 1), first);
        assert_eq!(backoff(first, 3), Duration::from_millis(400));
        assert_eq!(backoff(first, 40), Duration::from_secs(60));
    }
}

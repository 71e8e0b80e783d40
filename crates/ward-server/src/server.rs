//! The server: watcher → queue → jobs, the control socket, and the graceful stop.
//!
//! It runs as a child of the keeper (`ward __server`), logs to its stderr (which the keeper writes
//! into the log file), prints [`READY_LINE`](crate::keeper::READY_LINE) once its watches are in
//! place and its socket listens, and on SIGTERM stops in the order the log shows: stop watching,
//! stop intake and drain, stop workers, end the loop.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::select;
use parking_lot::RwLock;
use serde_json::{Value, json};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use ward_queue::{Error as QueueError, Event as QueueEvent, JobError, Policy, Pool, RetryPolicy};
use ward_watch::{Batch, ChangeKind, Item, Watcher};

use crate::config::Config;
use crate::control::ControlSocket;
use crate::dispatch::Dispatcher;
use crate::intents::Intents;
use crate::jobs::{Event, Job, Triggers};
use crate::keeper::READY_LINE;
use crate::launch::Launch;
use crate::logging::{self, Sink};
use crate::manifest::{FileMeta, Update};
use crate::outcomes::{self, OutcomeSender, Outcomes};
use crate::state::{StateDir, names};
use crate::tracker::Tracker;
use crate::{Error, deaths};

/// Runs the server until SIGTERM/SIGINT (or a `stop` request), then stops gracefully.
///
/// # Errors
/// If the config, watcher, pool or socket cannot be set up, or the watcher dies.
pub fn serve(launch: &Launch) -> Result<(), Error> {
    logging::init("server", Sink::Stderr);
    limit_malloc_arenas();
    let state = launch.open_state_dir()?;
    let config = launch.config_with_missing_roots()?;
    let _capture = deaths::install_capture("server", &state, &config)?;
    let started = Instant::now();
    log::info!("server starting: watching {}", list(&config.roots));

    let (signal_tx, signals) = crossbeam_channel::bounded(16);
    let mut signal_source = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .map_err(|e| Error::Io {
            context: "installing signal handlers".into(),
            source: e,
        })?;
    let signal_handle = signal_source.handle();
    let signal_thread = std::thread::Builder::new()
        .name("ward-signals".into())
        .spawn(move || {
            for signal in signal_source.forever() {
                if signal_tx.send(signal).is_err() {
                    break;
                }
            }
        })
        .map_err(|e| Error::Io {
            context: "starting signal thread".into(),
            source: e,
        })?;

    let dispatcher = Arc::new(RwLock::new(Arc::new(Dispatcher::new(
        config.clone(),
        state.clone(),
    )?)));
    // Outcomes gather for a moment before the loop takes them, instead of waking it once per job;
    // the doorbell rings at least twice per queue's worth, so the queue is refilled in time.
    let (done_tx, done) = outcomes::channel(config.queue_capacity / 2);
    // Watching starts before the manifest walk, so no change slips between them.
    let watcher = build_watcher(&config, &state)?;
    let mut tracker = Tracker::open(&state, watcher.ignore_rules())?;
    let pool = build_pool(&config, Arc::clone(&dispatcher), done_tx, tracker.intents())?;
    // The control thread hands requests to this loop instead of sharing its state: nothing is
    // computed, and nothing wakes up, unless somebody asks.
    let (request_tx, requests) = crossbeam_channel::bounded::<Request>(1);
    let socket = ControlSocket::bind(
        &state.join(names::SOCKET),
        Arc::new(move |cmd: &str, request: &Value| control(cmd, request, &request_tx)),
    )?;
    announce_ready();
    log::info!(
        "server ready: {} watch root(s), {} trigger(s), {} worker thread(s)",
        config.roots.len(),
        config.triggers.len(),
        config.workers
    );
    let mut backlog = Backlog::default();
    match tracker.pending_jobs(dispatcher.read().triggers()) {
        Ok(jobs) => {
            for job in jobs {
                for job in tracker.queue(job, dispatcher.read().triggers()) {
                    backlog.push(job);
                }
            }
        }
        Err(e) => log::error!("cannot read the jobs the previous server left queued: {e}"),
    }
    for job in tracker.untold_removals(dispatcher.read().triggers()) {
        backlog.push(job);
    }
    // Startup reconciliation: every root is diffed against the manifest, as room allows.
    for root in &config.roots {
        backlog.rescan(root.clone(), &tracker);
    }

    let mut config = config;
    // Take the outcomes waiting at the next turn of the loop: false only while they gather after
    // the doorbell rang, until `gather_until`.
    let mut take_outcomes = true;
    let mut gather_until: Option<Instant> = None;
    let result = loop {
        // A comparison must see the finished jobs' outcomes: without them it would queue their
        // paths again.
        if take_outcomes || backlog.compares_next() {
            // First, so that whatever the loop does next sees every job finished so far as such.
            record_outcomes(&done, &mut tracker);
            gather_until = None;
        }
        take_outcomes = true;
        backlog.submit(&pool);
        backlog.refill(&mut tracker, dispatcher.read().triggers());
        backlog.submit(&pool);
        let gather_timer =
            gather_until.map_or_else(crossbeam_channel::never, crossbeam_channel::at);
        // A slot freed by an attempt that failed into a retry sends no event; poll for room while
        // jobs wait, and only then.
        let backlog_timer = if backlog.len() == 0 {
            crossbeam_channel::never()
        } else {
            crossbeam_channel::after(BACKLOG_POLL)
        };
        // Past the high-water mark the loop stops taking batches: the watcher keeps what follows
        // in its own bounded pending set, which turns into rescans when it overflows.
        // Crash reports a full disk kept from being written are retried while any wait.
        let unwritten_timer = if deaths::unwritten() > 0 {
            crossbeam_channel::after(UNWRITTEN_RETRY)
        } else {
            crossbeam_channel::never()
        };
        let batches = if backlog.len() < backlog.high {
            watcher.batches().clone()
        } else {
            crossbeam_channel::never()
        };
        select! {
            recv(requests) -> request => {
                if let Ok(request) = request {
                    record_outcomes(&done, &mut tracker);
                    let answer = answer(&request, &pool, &watcher, &mut tracker, &backlog, &dispatcher.read(), started);
                    // The asker may have given up waiting; nothing to do then.
                    let _ = request.reply.try_send(answer);
                }
            }
            recv(batches) -> batch => {
                let Ok(batch) = batch else { break Err(Error::Protocol("the watcher stopped unexpectedly".into())) };
                // A path whose job has finished is no longer in flight for the batch's changes.
                record_outcomes(&done, &mut tracker);
                let triggers = Arc::clone(&dispatcher.read());
                for job in jobs_of_batch(&batch, &mut tracker, triggers.triggers(), &mut backlog) {
                    backlog.push(job);
                }
            }
            recv(done.bell()) -> _ => {
                // The first outcome since the last take: let more gather, unless enough wait
                // that the pool's queue needs refilling.
                if !done.many_waiting() {
                    take_outcomes = false;
                    gather_until.get_or_insert_with(|| Instant::now() + outcomes::GATHER_FOR);
                }
            }
            recv(gather_timer) -> _ => {}
            recv(backlog_timer) -> _ => {}
            recv(unwritten_timer) -> _ => {
                deaths::write_unwritten(&config);
            }
            recv(signals) -> signal => match signal {
                Ok(SIGHUP) => config = reload(launch, &state, config, &dispatcher),
                Ok(signal) => {
                    log::info!("received signal {signal}: stop watching, drain the queue, stop workers, exit");
                    break Ok(());
                }
                Err(_) => break Err(Error::Protocol("signal thread ended".into())),
            },
        }
    };

    log::info!("stop watching");
    drop(watcher);
    log::info!(
        "stop intake; drain the queue for up to {:?}",
        config.drain_timeout
    );
    dispatcher
        .read()
        .stop_running_at(Instant::now() + config.drain_timeout);
    let left = pool.shutdown(config.drain_timeout);
    record_outcomes(&done, &mut tracker);
    let not_run = left.len() + backlog.len();
    if !backlog.rescans.is_empty() {
        log::info!(
            "{} rescan(s) not done; the next start reconciles every root anyway",
            backlog.rescans.len()
        );
    }
    if not_run == 0 {
        log::info!("drained: every queued job ran");
    } else {
        let sample: Vec<String> = left
            .iter()
            .take(10)
            .map(|j| j.path.display().to_string())
            .collect();
        log::warn!(
            "{not_run} queued job(s) did not run before the drain timeout (kept in the manifest for the next start): {}",
            sample.join(", ")
        );
    }
    tracker.flush();
    dispatcher.read().stop_workers();
    let unwritten = deaths::write_unwritten(&config);
    if unwritten > 0 {
        log::error!("{unwritten} crash report(s) could not be written before the server ended");
    }
    // Requests still waiting for the loop are refused now and later ones fail at once, so the
    // control threads the socket joins are not waiting out `REQUEST_WAIT` for an answer.
    for request in requests.try_iter() {
        let _ = request
            .reply
            .try_send(Err("the server is stopping".to_owned()));
    }
    drop(requests);
    drop(socket);
    signal_handle.close();
    if signal_thread.join().is_err() {
        log::error!("signal thread panicked");
    }
    log::info!("server loop ended after {:?}", started.elapsed());
    result
}

/// How often crash reports that could not be written are retried, while any wait.
const UNWRITTEN_RETRY: std::time::Duration = std::time::Duration::from_secs(2);

/// How often the loop retries its backlog while the pool's queue is full.
const BACKLOG_POLL: std::time::Duration = std::time::Duration::from_millis(20);

/// The backlog's high-water mark: past it the loop takes no watcher batch and runs no rescan, so
/// that an event storm or a large first start waits in bounded memory (about 0.5 KB per job
/// here) instead of one job per file of the tree.
const BACKLOG_HIGH: usize = 8192;

/// Past this many subtrees waiting for a comparison, they are replaced by their roots: a storm of
/// directory changes waits in bounded memory, and a comparison covers it all at once.
const RESCANS_MAX: usize = 1024;

/// Jobs waiting for room in the pool's queue, one per path (the latest wins), in arrival order,
/// and the subtrees still to compare with the manifest (rescans, directory changes and startup
/// reconciliation), whose jobs are made as room allows. It lets the loop keep answering signals and requests
/// while a large reconciliation or burst drains.
#[derive(Debug)]
struct Backlog {
    order: VecDeque<PathBuf>,
    jobs: HashMap<PathBuf, Job>,
    /// Subtrees to compare with the manifest, oldest first, each with the path its comparison
    /// resumes after, once it has been compared in part.
    rescans: Vec<(PathBuf, Option<PathBuf>)>,
    /// The high-water mark ([`BACKLOG_HIGH`]; smaller in tests).
    high: usize,
}

impl Default for Backlog {
    fn default() -> Self {
        Backlog {
            order: VecDeque::new(),
            jobs: HashMap::new(),
            rescans: Vec::new(),
            high: BACKLOG_HIGH,
        }
    }
}

impl Backlog {
    /// Queues a comparison of `path`'s subtree with the manifest, unless a waiting one covers it
    /// and has not yet passed it. Past [`RESCANS_MAX`] waiting, every one is replaced by its
    /// watch root.
    fn rescan(&mut self, path: PathBuf, tracker: &Tracker) {
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
    fn refill(&mut self, tracker: &mut Tracker, triggers: &Triggers) {
        if !self.compares_next() {
            return;
        }
        while self.jobs.len() < self.high
            && let Some((path, after)) = self.rescans.first().cloned()
        {
            let room = self.high - self.jobs.len();
            let (jobs, resume) = match tracker.subtree_jobs(&path, after.as_deref(), triggers, room)
            {
                Ok(found) => found,
                Err(e) => {
                    log::error!("cannot compare {} with the manifest: {e}", path.display());
                    self.rescans.remove(0);
                    continue;
                }
            };
            for job in jobs {
                for job in tracker.queue(job, triggers) {
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
    fn compares_next(&self) -> bool {
        !self.rescans.is_empty() && self.jobs.len() <= self.high / 2
    }

    fn push(&mut self, job: Job) {
        if self.jobs.insert(job.path.clone(), job.clone()).is_none() {
            self.order.push_back(job.path);
        }
    }

    fn len(&self) -> usize {
        self.jobs.len()
    }

    /// Hands jobs to the pool until its queue is full.
    fn submit(&mut self, pool: &Pool<Job, PathBuf>) {
        while let Some(path) = self.order.pop_front() {
            let Some(job) = self.jobs.remove(&path) else {
                continue;
            };
            match pool.submit_keyed(path.clone(), job) {
                Ok(_) => {}
                Err(e) => {
                    let full = matches!(e, QueueError::Full(_) | QueueError::Paused(_));
                    let Some(job) = e.into_job() else { return };
                    if !full {
                        log::error!(
                            "cannot queue the job for {}: the pool is closed",
                            path.display()
                        );
                    }
                    self.jobs.insert(path.clone(), job);
                    self.order.push_front(path);
                    return;
                }
            }
        }
    }
}

/// The jobs a batch of watcher items asks for. A rescan or a directory change joins the backlog's
/// rescans, whose comparisons with the manifest make jobs as room allows; a file change becomes
/// one job.
fn jobs_of_batch(
    batch: &Batch,
    tracker: &mut Tracker,
    triggers: &Triggers,
    backlog: &mut Backlog,
) -> Vec<Job> {
    let mut jobs = Vec::new();
    // Each job is recorded as queued as soon as it is made, so that the comparison of a directory
    // changed in the same batch (removed right after a file in it was created) sees it.
    let add = |job: Job, tracker: &mut Tracker, jobs: &mut Vec<Job>| {
        jobs.extend(tracker.queue(job, triggers));
    };
    for item in &batch.items {
        match item {
            Item::Error(e) => log::warn!("watcher: {e}"),
            Item::Rescan(rescan) => {
                log::info!(
                    "rescanning {} ({})",
                    rescan.path.display(),
                    rescan.reason.name()
                );
                backlog.rescan(rescan.path.clone(), tracker);
            }
            Item::Change(change) if change.is_dir => {
                backlog.rescan(change.path.clone(), tracker);
                if let ChangeKind::Renamed { from } = &change.kind {
                    backlog.rescan(from.clone(), tracker);
                }
            }
            Item::Change(change) => {
                let Some(trigger) = tracker.trigger_for(&change.path, triggers) else {
                    continue;
                };
                let trigger = Arc::clone(trigger);
                let (event, old_path) = match &change.kind {
                    ChangeKind::Created => (Event::Created, None),
                    ChangeKind::Modified => (Event::Modified, None),
                    ChangeKind::Removed => (Event::Removed, None),
                    ChangeKind::Renamed { from } => (Event::Renamed, Some(from.clone())),
                };
                // A job still queued or running for the old path of a rename runs under that
                // path's key, so nothing orders it before the rename's job: it could run last and
                // leave its consumer believing the old path exists. A removal under the same key
                // is ordered after it.
                if let Some(from) = &old_path
                    && tracker.in_flight(from)
                    && let Some(trigger) = tracker.trigger_for(from, triggers)
                {
                    let removal = Job {
                        trigger: Arc::clone(trigger),
                        path: from.clone(),
                        event: Event::Removed,
                        old_path: None,
                    };
                    add(removal, tracker, &mut jobs);
                }
                let job = Job {
                    trigger,
                    path: change.path.clone(),
                    event,
                    old_path,
                };
                add(job, tracker, &mut jobs);
            }
            _ => {}
        }
    }
    jobs
}

fn announce_ready() {
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = writeln!(stdout, "{READY_LINE}").and_then(|()| stdout.flush()) {
        log::error!("cannot tell the keeper that the server is ready: {e}");
    }
}

fn build_pool(
    config: &Config,
    dispatcher: Arc<RwLock<Arc<Dispatcher>>>,
    done: OutcomeSender,
    intents: Arc<Intents>,
) -> Result<Pool<Job, PathBuf>, Error> {
    let finished = done.clone();
    Pool::builder()
        .workers(config.workers)
        .capacity(config.queue_capacity)
        // The loop keeps what does not fit in its backlog: it must never block on the pool.
        .policy(Policy::Reject)
        .retry(RetryPolicy::attempts(config.retries + 1))
        // The dispatcher stops a job's process at its deadline; this is the backstop for a
        // thread stuck anyway.
        .timeout(config.job_timeout + config.stop_grace * 2 + std::time::Duration::from_secs(5))
        .thread_name("ward-job")
        .on_event(move |event: QueueEvent<Job>| {
            if let QueueEvent::Dead { job, .. } = &event {
                send_done(
                    &done,
                    Update::Finished {
                        path: job.path.clone(),
                        event: job.event,
                        ok: false,
                        processed: None,
                        old_path: job.old_path.clone(),
                    },
                );
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
            intents.record(&job.path);
            let current = Arc::clone(&dispatcher.read());
            current.run(job).map_err(|e| Box::new(e) as JobError)?;
            send_done(
                &finished,
                Update::Finished {
                    path: job.path.clone(),
                    event: job.event,
                    ok: true,
                    processed: version,
                    old_path: job.old_path.clone(),
                },
            );
            if let Some(old) = &job.old_path {
                send_done(
                    &finished,
                    Update::Finished {
                        path: old.clone(),
                        // A rename tells the consumer its old path is gone.
                        event: Event::Removed,
                        ok: true,
                        processed: None,
                        old_path: None,
                    },
                );
            }
            Ok(())
        })
        .map_err(|e| Error::Protocol(format!("starting the worker pool: {e}")))
}

/// glibc gives threads their own malloc arenas, up to eight per core, and each keeps what it
/// once held: a burst that ran through a dozen short-lived child-watching threads left the
/// server 30 MB above what it used. Two arenas bound that; contention stays low because the loop
/// thread does most of the allocating. Called before the server starts any thread.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes allocator tuning; no other thread runs yet.
        if unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) } != 1 {
            log::warn!("could not limit malloc arenas; memory after bursts may stay higher");
        }
    }
}

/// Records every outcome waiting.
fn record_outcomes(done: &Outcomes, tracker: &mut Tracker) {
    for update in done.take() {
        tracker.finished(update);
    }
}

fn send_done(done: &OutcomeSender, update: Update) {
    if let Err(update) = done.send(update) {
        log::warn!(
            "outcome of {} not recorded (it will be redone after a restart): the server is ending",
            update.path().display()
        );
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
            attempt,
            failure,
            delay,
            ..
        } => {
            log::warn!("job attempt {attempt} failed ({failure}); retrying in {delay:?}");
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

fn build_watcher(config: &Config, state: &StateDir) -> Result<Watcher, Error> {
    let mut builder = Watcher::builder()
        .roots(config.roots.iter().cloned())
        .ignore_file(config.ignore_file.clone())
        .quiet(config.debounce)
        .max_wait(config.max_wait);
    for glob in &config.ignore {
        builder = builder.ignore_glob(glob.clone());
    }
    // ward's own state (log, crash reports, socket) changes as jobs run: watching it would make
    // every job trigger more jobs.
    for root in &config.roots {
        if let Ok(inside) = state.path().strip_prefix(root) {
            builder = builder.ignore_glob(globset::escape(&inside.to_string_lossy()));
        }
    }
    builder
        .build()
        .map_err(|e| Error::Protocol(format!("starting the watcher: {e}")))
}

fn reload(
    launch: &Launch,
    state: &StateDir,
    old: Config,
    dispatcher: &RwLock<Arc<Dispatcher>>,
) -> Config {
    log::info!("received SIGHUP: reloading the configuration");
    let new = match launch.config_with_missing_roots() {
        Ok(new) => new,
        Err(e) => {
            log::error!("reload refused, keeping the running configuration: {e}");
            return old;
        }
    };
    let fresh = match Dispatcher::reloaded(new.clone(), state.clone(), Some(&dispatcher.read())) {
        Ok(d) => Arc::new(d),
        Err(e) => {
            log::error!("reload refused, keeping the running configuration: {e}");
            return old;
        }
    };
    if new.roots != old.roots
        || new.ignore != old.ignore
        || new.debounce != old.debounce
        || new.workers != old.workers
    {
        log::warn!(
            "reload: watch roots, ignores, debounce and worker count apply only after `ward restart`"
        );
    }
    let previous = std::mem::replace(&mut *dispatcher.write(), fresh);
    previous.stop_workers();
    // Queued jobs keep the trigger that matched them: a removed or changed trigger still runs
    // its queued jobs as it was configured when they were queued.
    log::info!(
        "reload: {} trigger(s) now active; jobs already queued run with the trigger that matched them",
        new.triggers.len()
    );
    // Settings that need a restart stay as they run.
    Config {
        roots: old.roots,
        ignore: old.ignore,
        debounce: old.debounce,
        max_wait: old.max_wait,
        workers: old.workers,
        ..new
    }
}

/// A control request the main loop answers.
struct Request {
    cmd: String,
    args: Value,
    reply: crossbeam_channel::Sender<Result<Value, String>>,
}

/// Longest page of `changes` one request returns.
const CHANGES_PAGE: usize = 10_000;

fn answer(
    request: &Request,
    pool: &Pool<Job, PathBuf>,
    watcher: &Watcher,
    tracker: &mut Tracker,
    backlog: &Backlog,
    dispatcher: &Dispatcher,
    started: Instant,
) -> Result<Value, String> {
    match request.cmd.as_str() {
        "status" | "metrics" => {
            let m = pool.metrics();
            let w = watcher.stats();
            let (paths, seq) = tracker.stats();
            let (unrecorded, write_error) = tracker.backlog();
            Ok(json!({
                "server_pid": std::process::id(),
                "uptime_s": started.elapsed().as_secs(),
                "queue": {
                    "queued": m.queued, "running": m.running, "completed": m.completed, "failed": m.failed,
                    "retried": m.retried, "coalesced": m.coalesced, "rejected": m.rejected, "dead": m.dead,
                    "paused": pool.is_paused(), "backlog": backlog.len(),
                },
                "watch": {
                    "events": w.events, "pending": w.pending, "peak_pending": w.peak_pending, "watches": w.watches,
                    "batches": w.batches, "dropped_events": w.dropped_events,
                    "failed_watches": w.failed_watches, "polled_roots": w.polled_roots,
                },
                "manifest": { "paths": paths, "seq": seq, "unrecorded": unrecorded, "write_error": write_error },
                "workers_idle": dispatcher.idle_workers(),
            }))
        }
        "changes" => {
            let since = count_arg(&request.args, "since")?.unwrap_or(0);
            let limit = count_arg(&request.args, "limit")?
                .map_or(CHANGES_PAGE, |l| l.min(CHANGES_PAGE as u64) as usize);
            // A since-query must see every change already seen, written or not.
            tracker.flush();
            let changes = tracker
                .changes_since(since, limit)
                .map_err(|e| e.to_string())?;
            Ok(
                json!({ "seq": tracker.stats().1, "changes": changes.iter().map(crate::commands::change_json).collect::<Vec<_>>() }),
            )
        }
        other => Err(format!(
            "unknown command {other:?}: try status, metrics, changes, stop or reload"
        )),
    }
}

/// The request's `field`, if given: a count or sequence number, so a non-negative integer. Anything
/// else is refused rather than read as 0, which would answer a question nobody asked.
fn count_arg(args: &Value, field: &str) -> Result<Option<u64>, String> {
    match args.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value
            .as_u64()
            .map(Some)
            .ok_or_else(|| format!("{field:?} must be a non-negative integer, got {value}")),
    }
}

/// How long the control thread waits for the main loop's answer.
const REQUEST_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

fn control(
    cmd: &str,
    args: &Value,
    main_loop: &crossbeam_channel::Sender<Request>,
) -> Result<Value, String> {
    match cmd {
        "stop" => {
            // The keeper owns the tree; it stops the server, which drains first.
            // SAFETY: getppid and kill have no memory-safety preconditions.
            let rc = unsafe { libc::kill(libc::getppid(), SIGTERM) };
            if rc == 0 {
                Ok(json!({ "stopping": true }))
            } else {
                Err(std::io::Error::last_os_error().to_string())
            }
        }
        "reload" => {
            // SAFETY: raising a signal this process handles (SIGHUP, by the signal thread).
            let rc = unsafe { libc::raise(SIGHUP) };
            if rc == 0 {
                Ok(json!({ "reloading": true }))
            } else {
                Err("cannot signal the server".into())
            }
        }
        cmd => {
            let (tx, rx) = crossbeam_channel::bounded(1);
            let request = Request {
                cmd: cmd.to_owned(),
                args: args.clone(),
                reply: tx,
            };
            main_loop
                .send_timeout(request, REQUEST_WAIT)
                .map_err(|_| "the server's main loop is busy".to_owned())?;
            rx.recv_timeout(REQUEST_WAIT)
                .map_err(|_| "the server's main loop did not answer in time".to_owned())?
        }
    }
}

fn list(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
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
    fn changes_since_and_limit_must_be_non_negative_integers() {
        for (args, want) in [
            (json!({}), Ok(None)),
            (json!({ "since": null }), Ok(None)),
            (json!({ "since": 0 }), Ok(Some(0))),
            (json!({ "since": u64::MAX }), Ok(Some(u64::MAX))),
            (
                json!({ "since": -1 }),
                Err("\"since\" must be a non-negative integer, got -1"),
            ),
            (
                json!({ "since": "x" }),
                Err("\"since\" must be a non-negative integer, got \"x\""),
            ),
            (
                json!({ "since": 1e308 }),
                Err("\"since\" must be a non-negative integer, got 1e+308"),
            ),
            (
                json!({ "since": 3.0 }),
                Err("\"since\" must be a non-negative integer, got 3.0"),
            ),
            (
                json!({ "since": [1] }),
                Err("\"since\" must be a non-negative integer, got [1]"),
            ),
        ] {
            assert_eq!(
                count_arg(&args, "since"),
                want.map_err(str::to_owned),
                "{args}"
            );
        }
        assert_eq!(
            count_arg(&json!({ "limit": -5 }), "limit"),
            Err("\"limit\" must be a non-negative integer, got -5".to_owned())
        );
    }

    #[test]
    fn a_directory_removed_in_the_batch_that_created_a_file_in_it_removes_the_file_too() {
        let (dir, root) = tree();
        let (mut tracker, triggers) = tracker_of(&dir, &root);
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
        let jobs = jobs_of_batch(&batch, &mut tracker, &triggers, &mut backlog);
        assert_eq!(
            jobs.iter().map(|j| (&j.path, j.event)).collect::<Vec<_>>(),
            [(&file, Event::Created)]
        );
        for job in jobs {
            backlog.push(job);
        }
        assert_eq!(
            backlog.rescans,
            [(root.join("d"), None)],
            "the directory waits for room"
        );
        backlog.refill(&mut tracker, &triggers);
        assert_eq!(
            backlog.jobs.get(&file).map(|j| j.event),
            Some(Event::Removed),
            "the file's last job must be its removal"
        );
    }

    #[test]
    fn a_storm_of_directory_changes_waits_as_one_comparison_of_the_root() {
        let (dir, root) = tree();
        let (tracker, _) = tracker_of(&dir, &root);
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
        let (tracker, _) = tracker_of(&dir, &root);
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
        let (mut tracker, triggers) = tracker_of(&dir, &root);
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
        for job in jobs_of_batch(&batch, &mut tracker, &triggers, &mut backlog) {
            backlog.push(job);
        }
        let waiting: Vec<_> = backlog.jobs.values().cloned().collect();
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
        let (mut tracker, triggers) = tracker_of(&dir, &root);
        let mut backlog = Backlog {
            high: 10,
            ..Backlog::default()
        };
        backlog.rescan(root.join("d1"), &tracker);
        backlog.rescan(root.clone(), &tracker); // covers d1: one rescan left
        assert_eq!(backlog.rescans, [(root.clone(), None)]);

        let mut ran = Vec::new();
        for _round in 0..10 {
            backlog.refill(&mut tracker, &triggers);
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
                    path: job.path.clone(),
                    event: job.event,
                    ok: true,
                    processed: FileMeta::read(&job.path),
                    old_path: job.old_path.clone(),
                });
                ran.push(job.path);
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

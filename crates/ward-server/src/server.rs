//! The server: watcher → queue → jobs, the control socket, and the graceful stop.
//!
//! It runs as a child of the keeper (`ward __server`), logs to its stderr (which the keeper writes
//! into the log file), prints [`READY_LINE`](crate::keeper::READY_LINE) once its watches are in
//! place and its socket listens, and on SIGTERM stops in the order the log shows: stop watching,
//! stop intake and drain, stop workers, end the loop.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::select;
use parking_lot::RwLock;
use serde_json::{Value, json};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use ward_queue::{Event as QueueEvent, JobError, Policy, Pool, RetryPolicy};
use ward_watch::{ChangeKind, Item, Snapshot, Watcher};

use crate::config::Config;
use crate::control::ControlSocket;
use crate::dispatch::Dispatcher;
use crate::jobs::{Event, Job};
use crate::keeper::READY_LINE;
use crate::launch::Launch;
use crate::logging::{self, Sink};
use crate::state::{StateDir, names};
use crate::{Error, deaths};

/// Runs the server until SIGTERM/SIGINT (or a `stop` request), then stops gracefully.
///
/// # Errors
/// If the config, watcher, pool or socket cannot be set up, or the watcher dies.
pub fn serve(launch: &Launch) -> Result<(), Error> {
    logging::init("server", Sink::Stderr);
    let state = launch.open_state_dir()?;
    let config = launch.config()?;
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
    let pool = build_pool(&config, Arc::clone(&dispatcher))?;
    let watcher = build_watcher(&config, &state)?;
    let mut snapshot = Snapshot::of_roots(watcher.ignore_rules());
    // The control thread asks the main loop for figures instead of sharing its state: nothing
    // is computed, and nothing wakes up, unless somebody asks.
    let (status_tx, status_requests) =
        crossbeam_channel::bounded::<crossbeam_channel::Sender<Value>>(1);
    let socket = ControlSocket::bind(
        &state.join(names::SOCKET),
        Arc::new(move |cmd: &str, _request: &Value| control(cmd, &status_tx)),
    )?;
    announce_ready();
    log::info!(
        "server ready: {} watch root(s), {} trigger(s), {} worker thread(s)",
        config.roots.len(),
        config.triggers.len(),
        config.workers
    );

    let mut config = config;
    let result = loop {
        select! {
            recv(status_requests) -> reply => {
                if let Ok(reply) = reply {
                    let mut status = pool_status(&pool, &watcher, &snapshot, &dispatcher.read());
                    status["server_pid"] = json!(std::process::id());
                    status["uptime_s"] = json!(started.elapsed().as_secs());
                    // The asker may have given up waiting; nothing to do then.
                    let _ = reply.try_send(status);
                }
            }
            recv(watcher.batches()) -> batch => {
                let Ok(batch) = batch else { break Err(Error::Protocol("the watcher stopped unexpectedly".into())) };
                for item in &batch.items {
                    if let Item::Error(e) = item {
                        log::warn!("watcher: {e}");
                    }
                }
                for change in snapshot.apply_batch(&batch) {
                    if change.is_dir {
                        continue;
                    }
                    submit(&pool, &dispatcher.read(), &config, change.path, &change.kind);
                }
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
    let left = pool.shutdown(config.drain_timeout);
    if left.is_empty() {
        log::info!("drained: every queued job ran");
    } else {
        let sample: Vec<String> = left
            .iter()
            .take(10)
            .map(|j| j.path.display().to_string())
            .collect();
        log::warn!(
            "{} queued job(s) did not run before the drain timeout: {}",
            left.len(),
            sample.join(", ")
        );
    }
    dispatcher.read().stop_workers();
    drop(socket);
    signal_handle.close();
    if signal_thread.join().is_err() {
        log::error!("signal thread panicked");
    }
    log::info!("server loop ended after {:?}", started.elapsed());
    result
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
) -> Result<Pool<Job, PathBuf>, Error> {
    Pool::builder()
        .workers(config.workers)
        .capacity(config.queue_capacity)
        .policy(Policy::Block { timeout: None })
        .retry(RetryPolicy::attempts(config.retries + 1))
        // The dispatcher stops a job's process at its deadline; this is the backstop for a
        // thread stuck anyway.
        .timeout(config.job_timeout + config.stop_grace * 2 + std::time::Duration::from_secs(5))
        .thread_name("ward-job")
        .on_event(log_outcome)
        .build(move |job: &Job| {
            let current = Arc::clone(&dispatcher.read());
            current.run(job).map_err(|e| Box::new(e) as JobError)
        })
        .map_err(|e| Error::Protocol(format!("starting the worker pool: {e}")))
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

/// Queues the job for one changed path, keyed by the path so that a file changed many times while
/// queued is processed once, with its final content.
fn submit(
    pool: &Pool<Job, PathBuf>,
    dispatcher: &Dispatcher,
    config: &Config,
    path: PathBuf,
    kind: &ChangeKind,
) {
    let root = config
        .roots
        .iter()
        .filter(|r| path.starts_with(r))
        .max_by_key(|r| r.as_os_str().len());
    let Some(trigger) = dispatcher
        .triggers()
        .find(root.map_or(Path::new(""), PathBuf::as_path), &path)
    else {
        return;
    };
    let (event, old_path) = match kind {
        ChangeKind::Created => (Event::Created, None),
        ChangeKind::Modified => (Event::Modified, None),
        ChangeKind::Removed => (Event::Removed, None),
        ChangeKind::Renamed { from } => (Event::Renamed, Some(from.clone())),
    };
    let job = Job {
        trigger,
        path: path.clone(),
        event,
        old_path,
    };
    if let Err(e) = pool.submit_keyed(path.clone(), job) {
        log::error!("cannot queue the job for {}: {e}", path.display());
    }
}

fn reload(
    launch: &Launch,
    state: &StateDir,
    old: Config,
    dispatcher: &RwLock<Arc<Dispatcher>>,
) -> Config {
    log::info!("received SIGHUP: reloading the configuration");
    let new = match launch.config() {
        Ok(new) => new,
        Err(e) => {
            log::error!("reload refused, keeping the running configuration: {e}");
            return old;
        }
    };
    let fresh = match Dispatcher::new(new.clone(), state.clone()) {
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
    log::info!("reload: {} trigger(s) now active", new.triggers.len());
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

fn pool_status(
    pool: &Pool<Job, PathBuf>,
    watcher: &Watcher,
    snapshot: &Snapshot,
    dispatcher: &Dispatcher,
) -> Value {
    let m = pool.metrics();
    let w = watcher.stats();
    json!({
        "queue": {
            "queued": m.queued, "running": m.running, "completed": m.completed, "failed": m.failed,
            "retried": m.retried, "coalesced": m.coalesced, "rejected": m.rejected, "dead": m.dead,
            "paused": pool.is_paused(),
        },
        "watch": {
            "events": w.events, "pending": w.pending, "peak_pending": w.peak_pending, "watches": w.watches,
            "batches": w.batches, "dropped_events": w.dropped_events, "known_paths": snapshot.len(),
        },
        "workers_idle": dispatcher.idle_workers(),
    })
}

/// How long the control thread waits for the main loop's figures.
const STATUS_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

fn control(
    cmd: &str,
    main_loop: &crossbeam_channel::Sender<crossbeam_channel::Sender<Value>>,
) -> Result<Value, String> {
    match cmd {
        "status" | "metrics" => {
            let (tx, rx) = crossbeam_channel::bounded(1);
            main_loop
                .send_timeout(tx, STATUS_WAIT)
                .map_err(|_| "the server's main loop is busy".to_owned())?;
            rx.recv_timeout(STATUS_WAIT)
                .map_err(|_| "the server's main loop did not answer in time".to_owned())
        }
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
        other => Err(format!(
            "unknown command {other:?}: try status, metrics, stop or reload"
        )),
    }
}

fn list(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

//! The server: watcher → queue → jobs, the control socket, and the graceful stop.
//!
//! It runs as a child of the keeper (`ward __server`), logs to its stderr (which the keeper writes
//! into the log file), prints [`READY_LINE`](crate::keeper::READY_LINE) once its watches are in
//! place and its socket listens, and on SIGTERM stops in the order the log shows: stop watching,
//! stop intake and drain, stop workers, end the loop.

mod answers;
mod backlog;
mod batch;
mod holds;
mod job;
// `ward work --detach` watches for the keeper's death as the server does.
pub(crate) mod keeper_gone;
use keeper_gone::KEEPER_GONE;
mod metrics_http;
#[cfg(feature = "nats")]
mod publishing;
mod reload;
#[cfg(feature = "nats")]
mod remote_results;
mod runners;
mod services;
mod subscribe;

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::select;
use job::JobPool;
use parking_lot::RwLock;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use ward_watch::Watcher;

use crate::config::Config;
use crate::control::ControlSocket;
use crate::dispatch::Dispatcher;
use crate::handover::Handover;
use crate::hooks::DeathHooks;
use crate::keeper::READY_LINE;
use crate::launch::Launch;
use crate::logging::{self, Sink};
use crate::outcomes;
use crate::pressure::{self, Pressure, Turn};
use crate::protocol::{Holding, Reply, Request};
use crate::state::{StateDir, names};
use crate::tracker::Tracker;
use crate::{Error, deaths};

use answers::Asked;
use backlog::{BACKLOG_POLL, Backlog, jobs_of_batch};
use job::{build_pool, record_outcomes};
use services::Services;

/// Runs the server until SIGTERM/SIGINT (or a `stop` request), then stops gracefully.
///
/// # Errors
/// If the config, watcher, pool or socket cannot be set up, or the watcher dies.
pub fn serve(launch: &Launch) -> Result<(), Error> {
    // A failure before the server is ready that waiting will not heal (all but a short machine,
    // see `Error::may_heal`) is said as such (`Error::CannotStart`): the keeper does not
    // restart the server over it.
    let cannot_start = |e: Error| {
        if e.may_heal() {
            e
        } else {
            Error::CannotStart(Box::new(e))
        }
    };
    logging::init("server", Sink::Stderr);
    tune_malloc();
    let state = launch.open_state_dir().map_err(cannot_start)?;
    let mut handover = Handover::read(&state).map_err(cannot_start)?;
    let config = handover.config.clone();
    handover.apply_umask();
    let _capture = deaths::install_capture("server", &state, &config).map_err(cannot_start)?;
    // Before anything that can die: every death reported from here on tells the hooks.
    let hooks = DeathHooks::start(&config.on_death, || {})
        .map_err(|e| Error::io("starting the on_death hook thread", e))
        .map_err(cannot_start)?;
    hooks.install();
    // `ward work --detach`: the keeper's server process runs the work instead.
    if let Some(options) = &handover.work {
        #[cfg(feature = "nats")]
        return crate::commands::serve_work(config, &state, options);
        #[cfg(not(feature = "nats"))]
        return Err(Error::CannotStart(Box::new(Error::Refused(format!(
            "this ward was built without its `nats` feature: it cannot run `ward work` ({})",
            options.url
        )))));
    }
    let started = Instant::now();
    log::info!("server starting: watching {}", list(&config.roots));

    let (signal_tx, signals) = crossbeam_channel::bounded(16);
    let mut signal_source =
        signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP, KEEPER_GONE])
            .map_err(|e| Error::io("installing signal handlers", e))
            .map_err(cannot_start)?;
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
        .map_err(|e| Error::io("starting signal thread", e))
        .map_err(cannot_start)?;

    // Services stop within their grace; the rest of the stop is quick when nothing drains.
    let keeper_gone_deadline = services::act_wait(&config);
    if let Err(e) = keeper_gone::watch(keeper_gone_deadline) {
        log::warn!(
            "cannot watch for the keeper's death ({e}): if it dies, the server dies with it at once, and a service's processes that left its group may live on"
        );
    }
    let mut keeper_died = false;

    let dispatcher = Arc::new(RwLock::new(Arc::new(
        Dispatcher::new(config.clone(), state.clone()).map_err(cannot_start)?,
    )));
    // Outcomes gather for a moment before the loop takes them, instead of waking it once per job;
    // the doorbell rings at least twice per queue's worth, so the queue is refilled in time.
    let (done_tx, done) = outcomes::channel(config.queue_capacity / 2);
    // Watching starts before the manifest walk, so no change slips between them.
    let watcher = build_watcher(&config, &state).map_err(cannot_start)?;
    let triggers = dispatcher.read().triggers().clone();
    let mut tracker =
        Tracker::open(&state, watcher.ignore_rules(), triggers).map_err(cannot_start)?;
    let batch_context = batch::Context {
        config: config.clone(),
        state: state.clone(),
        done: done_tx.clone(),
        intents: tracker.intents(),
        env: ward_supervisor::Environment::current(),
        held: std::sync::atomic::AtomicBool::new(false),
    };
    #[cfg(feature = "nats")]
    let publishing_context = publishing::Context {
        roots: config.roots.clone(),
        publishers: crate::publish::Publishers::new(state.path()),
        done: done_tx.clone(),
        intents: tracker.intents(),
        held: std::sync::atomic::AtomicBool::new(false),
        retried: crate::retried::Retried::open(&state),
    };
    let pool = build_pool(&config, Arc::clone(&dispatcher), done_tx, tracker.intents())
        .map_err(cannot_start)?;
    let backstop = job::backstop(&config);
    // The control thread hands requests to this loop instead of sharing its state: nothing is
    // computed, and nothing wakes up, unless somebody asks.
    let (request_tx, requests) = crossbeam_channel::bounded::<Asked>(1);
    let request_tx_metrics = request_tx.clone();
    let (service_requests, service_inbox) = services::requests();
    let service_wait = services::act_wait(&config);
    let feed = tracker.feed();
    let subscriptions: Arc<crate::control::Streamer> = {
        let (feed, roots) = (feed.clone(), config.roots.clone());
        Arc::new(move |request, out: &mut dyn crate::control::Emit| {
            subscribe::serve(request, &feed, &roots, out);
        })
    };
    let socket = ControlSocket::bind_streaming(
        &state.join(names::SOCKET),
        Arc::new(move |request| {
            answers::control(request, &request_tx, &service_requests, service_wait)
        }),
        Some(subscriptions),
    )
    .map_err(cannot_start)?;
    // Scrapes are answered by the loop, as `ward metrics` is; a port that cannot be had is an
    // error at the start, as a control socket would be.
    let metrics_endpoint = match config.metrics_listen {
        Some(address) => Some(
            metrics_http::MetricsEndpoint::start(address, request_tx_metrics.clone())
                .map_err(cannot_start)?,
        ),
        None => None,
    };
    // Before the ready line: `ward start` returns with the services' first processes spawned.
    let mut services = Services::start(&config, &state, service_inbox).map_err(cannot_start)?;
    // What remote workers did with the jobs published; a give-up comes to the loop to be
    // recorded. (Without the `nats` feature no trigger publishes.)
    #[cfg(feature = "nats")]
    let (remote_tx, remote_rx) = crossbeam_channel::bounded(16);
    #[cfg(feature = "nats")]
    let mut remote = remote_results::RemoteResults::start(&config, &state, remote_tx);
    #[cfg(not(feature = "nats"))]
    let remote_rx = crossbeam_channel::never::<std::convert::Infallible>();
    announce_ready();
    log::info!(
        "server ready: {} watch root(s), {} trigger(s), {} service(s), {} worker thread(s)",
        config.roots.len(),
        config.triggers.len(),
        config.services.len(),
        config.workers
    );
    let mut backlog = Backlog::default();
    backlog.batches = batch::Batches::new(batch_context);
    #[cfg(feature = "nats")]
    {
        backlog.publishing = publishing::Publishing::new(publishing_context);
    }
    match tracker.pending_jobs() {
        Ok(jobs) => {
            for job in jobs {
                for job in tracker.queue(job) {
                    backlog.push(job);
                }
            }
        }
        Err(e) => log::error!("cannot read the jobs the previous server left queued: {e}"),
    }
    for job in tracker.untold_removals() {
        backlog.push(job);
    }
    // Startup reconciliation: every root is diffed against the manifest, as room allows.
    for root in &config.roots {
        backlog.rescan(root.clone(), &tracker);
    }

    let mut config = config;
    // Memory is read every `PRESSURE_POLL` when a floor is set (`[jobs] min_available_mb`).
    let mut pressure = config.min_available_mb.map(Pressure::new);
    let mut next_probe = Instant::now();
    // Take the outcomes waiting at the next turn of the loop: false only while they gather after
    // the doorbell rang, until `gather_until`.
    let mut take_outcomes = true;
    let mut holds = holds::Holds::default();
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
        if let Some(p) = &mut pressure
            && Instant::now() >= next_probe
        {
            next_probe = Instant::now() + PRESSURE_POLL;
            match p.update(pressure::probe()) {
                Some(Turn::Pause(why)) => {
                    log::warn!("memory is short: starting no job until it is back ({why})");
                    holds.memory(p.paused().map(str::to_owned), &pool, &feed);
                }
                Some(Turn::Resume(why)) => {
                    log::info!("starting jobs again: {why}");
                    holds.memory(None, &pool, &feed);
                }
                None => {}
            }
        }
        // Batch runs are held as the pool's jobs are; a no-op unless that changed.
        backlog.batches.set_held(holds.jobs_held());
        #[cfg(feature = "nats")]
        backlog.publishing.set_held(holds.jobs_held());
        backlog.submit(&pool);
        backlog.refill(&mut tracker);
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
        let pressure_timer = match pressure {
            Some(_) => crossbeam_channel::at(next_probe),
            None => crossbeam_channel::never(),
        };
        let hold_timer = holds
            .next_end()
            .map_or_else(crossbeam_channel::never, crossbeam_channel::at);
        let batches = if backlog.len() < backlog.high {
            watcher.batches().clone()
        } else {
            crossbeam_channel::never()
        };
        select! {
            recv(requests) -> asked => {
                if let Ok(asked) = asked {
                    record_outcomes(&done, &mut tracker);
                    if asked.request == Request::Reload {
                        let reload = reload::reload("reload asked on the control socket", &mut handover, &state, config, &dispatcher, &mut tracker, backstop);
                        // Answered before the old workers are stopped, which may take their grace.
                        let _ = asked.reply.try_send(Ok(Reply::Reloaded(reload.outcome.clone())));
                        config = reload.finish();
                        services.apply(&config);
                        #[cfg(feature = "nats")]
                        remote.apply(&config);
                        set_hooks(&hooks, &config);
                        backlog.batches.retire_gone(dispatcher.read().triggers());
                        renew_pressure(&mut pressure, &config, &mut holds, &pool, &feed);
                    } else {
                        let answer = if let Request::Retry { paths, all } = &asked.request {
                            answers::retry(paths, *all, &config.roots, &mut tracker, &mut backlog)
                        } else if let Request::Hold { name, timeout_s } = &asked.request {
                            let timeout = timeout_s.map_or(holds::DEFAULT_HOLD, Duration::from_secs);
                            Ok(Reply::Holding(Holding { holds: holds.hold(name, timeout, &pool, &feed) }))
                        } else if let Request::Release { name } = &asked.request {
                            holds.release(name, &pool, &feed).map(|holds| Reply::Holding(Holding { holds }))
                        } else {
                            let dispatcher = dispatcher.read();
                            #[cfg(feature = "nats")]
                            let remote = remote.status();
                            #[cfg(not(feature = "nats"))]
                            let remote = Vec::new();
                            let sources = answers::Sources { pool: &pool, watcher: &watcher, backlog: &backlog, dispatcher: &dispatcher, started, held: holds.why(), services: &services, state: &state, remote };
                            answers::answer(&asked.request, &mut tracker, &sources)
                        };
                        // The asker may have given up waiting; nothing to do then.
                        let _ = asked.reply.try_send(answer);
                    }
                }
            }
            recv(batches) -> batch => {
                let Ok(batch) = batch else { break Err(Error::ThreadEnded("watcher")) };
                services.changed(&batch);
                // A path whose job has finished is no longer in flight for the batch's changes.
                record_outcomes(&done, &mut tracker);
                for job in jobs_of_batch(batch, &mut tracker, &mut backlog) {
                    backlog.push(job);
                }
            }
            recv(remote_rx) -> gave_up => {
                if let Ok(gave_up) = gave_up {
                    record_outcomes(&done, &mut tracker);
                    record_remote_give_up(&mut tracker, gave_up);
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
            recv(pressure_timer) -> _ => {}
            recv(hold_timer) -> _ => holds.expire(Instant::now(), &pool, &feed),
            recv(unwritten_timer) -> _ => {
                deaths::write_unwritten(&config);
            }
            recv(signals) -> signal => match signal {
                Ok(SIGHUP) => {
                    config = reload::reload("received SIGHUP", &mut handover, &state, config, &dispatcher, &mut tracker, backstop).finish();
                    services.apply(&config);
                    #[cfg(feature = "nats")]
                    remote.apply(&config);
                    set_hooks(&hooks, &config);
                    backlog.batches.retire_gone(dispatcher.read().triggers());
                    renew_pressure(&mut pressure, &config, &mut holds, &pool, &feed);
                }
                Ok(KEEPER_GONE) => {
                    log::error!("the keeper died (the server's parent-death signal): stopping the services and exiting, without draining the queue");
                    keeper_died = true;
                    break Ok(());
                }
                Ok(signal) => {
                    log::info!("received signal {signal}: stop watching, drain the queue, stop workers, exit");
                    break Ok(());
                }
                Err(_) => break Err(Error::ThreadEnded("signal")),
            },
        }
    };

    // Give-ups still on their way are delivered again to the next server; the threads end.
    drop(remote_rx);
    #[cfg(feature = "nats")]
    drop(remote);
    // Nobody is left to restart the server: the services go first, then no drain.
    let drain_timeout = if keeper_died {
        services.stop();
        Duration::ZERO
    } else {
        config.drain_timeout
    };
    log::info!("stop watching");
    drop(watcher);
    log::info!("stop intake; drain the queue for up to {drain_timeout:?}");
    let drain_end = Instant::now() + drain_timeout;
    dispatcher.read().stop_running_at(drain_end);
    // A running batch finishes within the drain too; no new one starts.
    backlog.batches.runners.stop_at(drain_end);
    #[cfg(feature = "nats")]
    backlog.publishing.runners.stop_at(drain_end);
    let left = pool.shutdown(drain_timeout);
    backlog.batches.runners.join();
    #[cfg(feature = "nats")]
    backlog.publishing.runners.join();
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
    // After intake and the drain: the jobs that ran until now may have needed them.
    services.stop();
    let unwritten = deaths::write_unwritten(&config);
    if unwritten > 0 {
        log::error!("{unwritten} crash report(s) could not be written before the server ended");
    }
    // Last of what can report a death: the hooks still running or owed get their grace.
    drop(hooks);
    // Requests still waiting for the loop are refused now and later ones fail at once, so the
    // control threads the socket joins are not waiting out `REQUEST_WAIT` for an answer.
    for asked in requests.try_iter() {
        let _ = asked
            .reply
            .try_send(Err("the server is stopping".to_owned()));
    }
    drop(requests);
    drop(metrics_endpoint);
    // Subscriptions end at once, rather than when their connections are shut down.
    feed.stop();
    drop(socket);
    signal_handle.close();
    if signal_thread.join().is_err() {
        log::error!("signal thread panicked");
    }
    // Last: readers are gone (the subscriptions and the socket's requests), and the stop waits
    // for it.
    tracker.compact_manifest();
    log::info!("server loop ended after {:?}", started.elapsed());
    result
}

/// Records a job that gave up on a remote worker, and tells its result's thread, which then
/// acknowledges the result.
#[cfg(feature = "nats")]
fn record_remote_give_up(tracker: &mut Tracker, gave_up: remote_results::GaveUpRemotely) {
    tracker.gave_up_remotely(&gave_up.path, gave_up.failure, gave_up.version);
    let _ = gave_up.recorded.send(());
}

#[cfg(not(feature = "nats"))]
fn record_remote_give_up(_: &mut Tracker, gave_up: std::convert::Infallible) {
    match gave_up {}
}

/// How often crash reports that could not be written are retried, while any wait.
const UNWRITTEN_RETRY: Duration = Duration::from_secs(2);

/// How often available memory is read while a floor is set.
const PRESSURE_POLL: Duration = Duration::from_millis(500);

/// After a reload: the hooks of the configuration now running.
fn set_hooks(hooks: &DeathHooks, config: &Config) {
    if let Err(e) = hooks.set(&config.on_death) {
        log::error!("reload: cannot start the on_death hook thread; no hook runs: {e}");
    }
}

/// After a reload: a changed memory floor starts over, released.
fn renew_pressure(
    pressure: &mut Option<Pressure>,
    config: &Config,
    holds: &mut holds::Holds,
    pool: &JobPool,
    feed: &crate::feed::Feed,
) {
    let floor = config.min_available_mb;
    if pressure.as_ref().map(Pressure::floor_mb) == floor {
        return;
    }
    if pressure.as_ref().is_some_and(|p| p.paused().is_some()) {
        log::info!("starting jobs again: the reload changed min_available_mb");
        holds.memory(None, pool, feed);
    }
    *pressure = floor.map(Pressure::new);
}

pub(crate) fn announce_ready() {
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = writeln!(stdout, "{READY_LINE}").and_then(|()| stdout.flush()) {
        log::error!("cannot tell the keeper that the server is ready: {e}");
    }
}

/// glibc's malloc keeps what the server once held; two settings bound that. Called before the
/// server starts any thread.
///
/// - Threads get arenas of their own, up to eight per core, and each keeps its free memory: a
///   burst that runs through many short-lived child-watching threads left the server far above
///   what it uses. Two arenas bound that; contention stays low because the loop thread does
///   most of the allocating.
/// - A block of 128 KiB or more (the tables of the backlog, the watcher's pending set and the
///   held-back manifest entries, grown by doubling in a burst) is mapped on its own and given
///   back when freed, but glibc raises that threshold to the size of each such block freed, so
///   that from the first table that grew, the next ones were carved from the arena and their
///   free space stayed there. Fixed at 128 KiB, a 200,000-file burst ended with 17.5 to 21.9
///   MB of anonymous memory instead of 26.4 to 38.4 MB (`cargo xtask bench --only burst` shows
///   the peak).
fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes allocator tuning; no other thread runs yet.
        if unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) } != 1 {
            log::warn!("could not limit malloc arenas; memory after bursts may stay higher");
        }
        // SAFETY: as above.
        if unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024) } != 1 {
            log::warn!(
                "could not fix malloc's mmap threshold; memory after bursts may stay higher"
            );
        }
    }
}

fn build_watcher(config: &Config, state: &StateDir) -> Result<Watcher, Error> {
    let mut builder = Watcher::builder()
        .roots(config.roots.iter().cloned())
        .ignore_file(config.ignore_file.clone())
        .quiet(config.debounce)
        .max_wait(config.max_wait)
        .backend(config.backend.watcher_backend());
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
    builder.build().map_err(Error::from)
}

pub(crate) fn list(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

//! The keeper: the small, long-lived root of the process tree.
//!
//! It holds the pidfile lock for its whole life, owns the log file, and supervises the server
//! process with a restart policy. Every death of the server is turned into a crash report here.
//! It does as little as possible so that it almost never dies itself; if it is killed anyway, the
//! server's parent-death signal takes the tree down and the next start explains the death from
//! what was left on disk.
//!
//! Its resident memory is mostly the pages of code it ever ran, and the kernel maps code around
//! each page touched (64 KiB at a time): in the `ward` binary the keeper's functions lie among the
//! server's and the command line's. So `ward start` and `ward run` exec [`KEEPER_BIN`], a binary
//! beside `ward` that links only the keeper, which reads the configuration the command line
//! resolved (the `handover`): it parses no config file. Without that binary the keeper runs in
//! the `ward` process, as before.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, select};
use parking_lot::Mutex;
use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGTERM};
use ward_crashdiag::OomCounters;
use ward_supervisor::{
    Backoff, ChildSpec, Decision, Exit, Intensity, RestartPolicy, RestartTracker, Stream,
    SystemClock,
};

use crate::deaths::Reported;
use crate::handover::KeeperView;
use crate::hooks::DeathHooks;
use crate::logging::{self, LogFile, Sink};
use crate::state::{KeeperState, Phase, Pidfile, PidfileState, StateDir, names, unix_now};
use crate::{Config, Error, sd_notify};
use crate::{deaths, orphans};

/// The line a server prints on its stdout once its watches are installed and its socket listens.
pub(crate) const READY_LINE: &str = "WARD-READY";

/// The start of the line a server prints on its stdout, before it exits, when it cannot start
/// and waiting would not help; the reason follows.
const CANNOT_START_LINE: &str = "WARD-CANNOT-START ";

/// Tells the keeper (the server's stdout is its pipe) that the server cannot start, and why.
pub(crate) fn tell_cannot_start(reason: &str) {
    use std::io::Write as _;
    let reason = reason.replace('\n', " ");
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = writeln!(stdout, "{CANNOT_START_LINE}{reason}").and_then(|()| stdout.flush()) {
        log::error!("cannot tell the keeper why the server cannot start: {e}");
    }
}

/// The file name of the keeper's own binary, looked for beside the `ward` binary.
pub const KEEPER_BIN: &str = "ward-keeper";

/// The command that starts the server: the `ward` binary and its `__server` arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServerCommand {
    pub exe: PathBuf,
    pub args: Vec<OsString>,
}

impl ServerCommand {
    /// `ward __server --state-dir DIR`: the server finds the rest in the handover there.
    fn new(exe: &Path, state: &StateDir) -> ServerCommand {
        ServerCommand {
            exe: exe.to_path_buf(),
            args: vec!["__server".into(), "--state-dir".into(), state.path().into()],
        }
    }
}

/// The `ward-keeper` binary: runs the keeper with the handover `ward start` or `ward run` offered
/// it, whose path is its only argument.
///
/// # Errors
/// Bad arguments, an unreadable handover, or what the keeper returns (see `ward start`).
pub fn keeper_process(args: impl IntoIterator<Item = OsString>) -> Result<(), Error> {
    let mut args = args.into_iter();
    let (Some(offer), None) = (args.next(), args.next()) else {
        return Err(Error::Handover {
            path: "<arguments>".into(),
            problem: "ward-keeper takes one argument, the handover file `ward start` offers".into(),
        });
    };
    let offer = Path::new(&offer);
    let view = KeeperView::of_offer(offer).inspect_err(|_| KeeperView::withdraw(offer))?;
    let Some(state) = view.state_dir() else {
        KeeperView::withdraw(offer);
        return Err(Error::Handover {
            path: offer.to_path_buf(),
            problem: "it names no state directory".into(),
        });
    };
    let state = StateDir::open(state).inspect_err(|_| KeeperView::withdraw(offer))?;
    keeper_main(&state, &view, offer)
}

enum Event {
    Signal(i32),
    ServerReady(u32),
    ServerExited(Exit),
}

/// Runs the keeper until it is told to stop or its policy gives up. `foreground` echoes the log
/// to stderr (`ward run`).
///
/// # Errors
/// If the pidfile is held by another keeper, or the log, crash directory or first server cannot be
/// set up. Once the server has run, deaths are reported and survived, not returned.
pub(crate) fn keeper_main(state: &StateDir, view: &KeeperView, offer: &Path) -> Result<(), Error> {
    let config = &view.config();
    let foreground = view.foreground;
    let server = &ServerCommand::new(&view.server_exe, state);
    let vanished = match Pidfile::inspect(state)? {
        PidfileState::Stale(_) => deaths::post_mortem_of_vanished(state, Some(config)),
        _ => None,
    };
    let pidfile = Pidfile::acquire(state).inspect_err(|_| KeeperView::withdraw(offer))?;
    // Only the keeper holding the lock may say what the daemon runs.
    KeeperView::settle(offer, state)?;
    let log_path = state.join(names::LOG);
    let log = LogFile::open(&log_path, config.log_max_bytes)
        .map_err(|e| Error::io(format!("opening log {}", log_path.display()), e))?;
    let log = Arc::new(Mutex::new(log));
    logging::init(
        "keeper",
        Sink::File {
            file: Arc::clone(&log),
            echo: foreground,
        },
    );
    let _capture = deaths::install_capture("keeper", state, config)?;
    log::info!(
        "keeper started for {} (pid {})",
        state.path().display(),
        std::process::id()
    );
    if let Some(explained) = vanished {
        log::warn!("{explained}");
    }
    if let Err(e) = orphans::become_subreaper() {
        log::warn!(
            "cannot become the subreaper of the tree; a dead job's own children may outlive it: {e}"
        );
    }

    let (tx, rx) = crossbeam_channel::bounded::<Event>(64);
    // SIGCHLD rings a doorbell that holds one ring: however many children exit meanwhile, the
    // loop wakes once and reaps them all, and the signal thread never waits for the loop.
    let (exited_tx, exited) = crossbeam_channel::bounded::<()>(1);
    // The hooks for the server's deaths. Their process is a child of the keeper the orphan
    // reaper leaves alone (`Keeper::reap_exited_orphans`): once its handle has reaped it, the
    // doorbell rings for the orphans that exited behind it.
    let hooks = {
        let exited_tx = exited_tx.clone();
        DeathHooks::start(&config.on_death, move || {
            let _ = exited_tx.try_send(());
        })
        .map_err(|e| Error::io("starting the on_death hook thread", e))?
    };
    hooks.install();
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP, SIGCHLD])
        .map_err(|e| Error::io("installing signal handlers", e))?;
    let signal_handle = signals.handle();
    let signal_thread = {
        let (tx, exited_tx) = (tx.clone(), exited_tx.clone());
        std::thread::Builder::new()
            .name("ward-signals".into())
            .spawn(move || {
                for signal in signals.forever() {
                    if signal == SIGCHLD {
                        let _ = exited_tx.try_send(());
                        continue;
                    }
                    if tx.send(Event::Signal(signal)).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| Error::io("starting signal thread", e))?
    };

    let mut keeper = Keeper {
        server,
        state,
        config,
        log,
        echo: foreground,
        tx,
        exited,
        exited_tx,
        adopted: orphans::Adopted::default(),
        status: KeeperState {
            keeper_pid: std::process::id(),
            started_at: unix_now(),
            state: Phase::Starting,
            ..KeeperState::default()
        },
        status_owed: false,
        cannot_start: Arc::default(),
        tracker: RestartTracker::new(server_policy(), SystemClock),
        hooks: &hooks,
    };
    let result = keeper.supervise(&rx);
    // A hook for the server's last death gets its grace, then whatever it left is swept: no
    // process of the tree outlives the pidfile's lock.
    drop(hooks);
    orphans::sweep(None);

    signal_handle.close();
    if signal_thread.join().is_err() {
        log::error!("signal thread panicked");
    }
    let _ = sd_notify::notify("STOPPING=1");
    match &result {
        Ok(()) => log::info!("keeper exiting after a graceful stop"),
        Err(e) => log::error!("keeper exiting: {e}"),
    }
    pidfile.release();
    result
}

/// The server's restart policy: on failure, 100 ms doubling to 30 s, reset after a minute up,
/// give up after 5 restarts within a minute (systemd's intensity, Kubernetes' backoff shape).
fn server_policy() -> RestartPolicy {
    let mut policy = RestartPolicy::systemd();
    policy.backoff = Backoff {
        initial: Duration::from_millis(100),
        factor: 2.0,
        max: Duration::from_secs(30),
        jitter: 0.1,
    };
    policy.reset_after = Some(Duration::from_secs(60));
    policy.intensity = Some(Intensity {
        max_restarts: 5,
        window: Duration::from_secs(60),
    });
    policy
}

struct Keeper<'a> {
    server: &'a ServerCommand,
    state: &'a StateDir,
    config: &'a Config,
    log: Arc<Mutex<LogFile>>,
    echo: bool,
    tx: Sender<Event>,
    /// Rung on SIGCHLD (and by the loop itself when a round of reaping left more to do).
    exited: Receiver<()>,
    exited_tx: Sender<()>,
    adopted: orphans::Adopted,
    status: KeeperState,
    /// `keeper.json` could not be written with `status`.
    status_owed: bool,
    /// Why the current server cannot start, once it said so (set by its output's thread).
    cannot_start: Arc<Mutex<Option<String>>>,
    tracker: RestartTracker<SystemClock>,
    /// The `on_death` hooks, run for the server's deaths.
    hooks: &'a DeathHooks,
}

/// How often a write that failed (a full disk) is retried; only while one is owed, so an idle
/// keeper with nothing owed never wakes for it.
const OWED_RETRY: Duration = Duration::from_secs(1);

impl Keeper<'_> {
    fn set_state(&mut self, state: Phase) {
        self.status.state = state;
        self.write_status();
    }

    /// Writes `keeper.json`; one that cannot be written (a full disk) is owed, and written by
    /// [`Keeper::write_owed`] once there is room, so that `ward status` never reads a stale state
    /// for longer than that.
    fn write_status(&mut self) {
        match self.status.write(self.state) {
            Ok(()) => {
                if std::mem::take(&mut self.status_owed) {
                    log::info!("keeper state recorded again ({})", self.status.state);
                }
            }
            Err(e) => {
                if !std::mem::replace(&mut self.status_owed, true) {
                    log::warn!(
                        "cannot record keeper state ({}); retrying every {OWED_RETRY:?}: {e}",
                        self.status.state
                    );
                }
            }
        }
    }

    /// Whether a write is owed: the keeper state or a crash report that could not be written.
    fn owes_writes(&self) -> bool {
        self.status_owed || deaths::unwritten() > 0
    }

    /// Retries the writes owed.
    fn write_owed(&mut self) {
        if self.status_owed {
            self.write_status();
        }
        deaths::write_unwritten(self.config);
    }

    /// Reaps the children that exited but for the server `pid` and a hook's process: orphans
    /// that jobs left behind.
    fn reap_exited_orphans(&mut self, server: u32) {
        // Held for the round: no hook is spawned meanwhile, and the one running stays its
        // handle's to reap.
        let hook = self.hooks.hold_child();
        if self.adopted.reap_exited(&[Some(server), *hook]) == orphans::Round::More {
            let _ = self.exited_tx.try_send(());
        }
    }

    /// Kills and reaps every child but a hook's process; call it only once the server has been
    /// reaped.
    fn sweep_orphans(&mut self) {
        self.adopted.report(Instant::now());
        let hook = self.hooks.hold_child();
        orphans::sweep(*hook);
    }

    /// Reports the server's death `exit`, running the hooks the daemon's configuration names
    /// now (a reload since the start may have changed them).
    fn report_server_death(&self, exit: &Exit, oom_before: OomCounters) -> Option<Reported> {
        if let Some(now) = KeeperView::hooks_now(self.state)
            && let Err(e) = self.hooks.set(&now)
        {
            log::error!("cannot start the on_death hook thread; no hook runs: {e}");
        }
        deaths::report(
            self.state,
            self.config,
            "server",
            exit,
            None,
            Some(oom_before),
        )
    }

    fn spawn_server(&self) -> Result<ward_supervisor::Child, Error> {
        let (log, echo, tx) = (Arc::clone(&self.log), self.echo, self.tx.clone());
        let cannot_start = Arc::clone(&self.cannot_start);
        let spec = ChildSpec::new(&self.server.exe)
            .name("server")
            .args(&self.server.args)
            .stop_grace(self.config.drain_timeout + self.config.stop_grace + Duration::from_secs(2))
            .capture(move |line| {
                if line.stream == Stream::Stdout && line.text == READY_LINE {
                    let _ = tx.send(Event::ServerReady(line.pid));
                } else if line.stream == Stream::Stdout
                    && let Some(reason) = line.text.strip_prefix(CANNOT_START_LINE)
                {
                    *cannot_start.lock() = Some(reason.to_owned());
                } else {
                    logging::append_captured(&log, echo, line.pid, "server", line.text.as_bytes());
                }
            });
        ward_supervisor::Child::spawn(&spec).map_err(|source| Error::Supervisor {
            what: "server",
            source,
        })
    }

    fn supervise(&mut self, rx: &Receiver<Event>) -> Result<(), Error> {
        let watchdog = sd_notify::watchdog_interval().map(crossbeam_channel::tick);
        let exited = self.exited.clone();
        loop {
            let oom_before = OomCounters::read(None);
            let child = Arc::new(self.spawn_server()?);
            let pid = child.id();
            self.status.server_pid = Some(pid);
            self.set_state(Phase::Starting);
            log::info!("server started (pid {pid})");
            let waiter = {
                let (child, tx) = (Arc::clone(&child), self.tx.clone());
                std::thread::Builder::new()
                    .name("ward-server-wait".into())
                    .spawn(move || {
                        let _ = tx.send(Event::ServerExited(child.wait()));
                    })
                    .map_err(|e| Error::io("starting server waiter", e))?
            };
            let exit = loop {
                let never = crossbeam_channel::never();
                let tick = watchdog.as_ref().unwrap_or(&never);
                let retry = if self.owes_writes() {
                    crossbeam_channel::after(OWED_RETRY)
                } else {
                    crossbeam_channel::never()
                };
                let event = select! {
                    recv(rx) -> event => event.expect("the keeper holds a sender"),
                    recv(exited) -> _ => {
                        self.reap_exited_orphans(pid);
                        continue;
                    }
                    recv(tick) -> _ => {
                        if self.status.state == Phase::Running {
                            let _ = sd_notify::notify("WATCHDOG=1");
                        }
                        continue;
                    }
                    recv(retry) -> _ => {
                        self.write_owed();
                        continue;
                    }
                };
                match event {
                    Event::ServerReady(ready_pid) if ready_pid == pid => {
                        self.set_state(Phase::Running);
                        log::info!("server ready (pid {pid})");
                        if let Err(e) = sd_notify::notify("READY=1") {
                            log::warn!("cannot notify systemd: {e}");
                        }
                    }
                    Event::ServerReady(_) => {}
                    Event::Signal(SIGHUP) => {
                        log::info!("received SIGHUP: asking the server to reload its config");
                        if let Err(e) = child.signal(SIGHUP) {
                            log::warn!("cannot forward SIGHUP to server: {e}");
                        }
                    }
                    Event::Signal(signal) => {
                        log::info!("received signal {signal}: stopping the server, then exiting");
                        self.set_state(Phase::Stopping);
                        let _ = sd_notify::notify("STOPPING=1");
                        let exit = child.stop(self.config.drain_timeout + self.config.stop_grace);
                        let _ = waiter.join();
                        // The waiter's exit event is still queued; the stop's result is the same.
                        let _ = rx.try_recv();
                        match exit {
                            Ok(exit) if exit.is_clean() => log::info!("server stopped cleanly"),
                            Ok(exit) => {
                                log::warn!("server did not stop cleanly: {}", exit.termination);
                                self.report_server_death(&exit, oom_before);
                            }
                            Err(e) => log::error!("stopping the server: {e}"),
                        }
                        self.status.server_pid = None;
                        self.sweep_orphans();
                        self.set_state(Phase::Stopped);
                        return Ok(());
                    }
                    Event::ServerExited(exit) => break exit,
                }
            };
            let _ = waiter.join();
            // The last handle: dropping it waits until the server's output is read, so a line
            // saying why it cannot start is in.
            drop(child);
            self.status.server_pid = None;
            self.sweep_orphans();
            let cannot_start = self.cannot_start.lock().take();
            if let Some(reason) = cannot_start {
                log::error!(
                    "the server cannot start: {reason}; not restarting it, since waiting would not help"
                );
                self.status.last_cause = Some(format!("cannot start: {reason}"));
                self.set_state(Phase::GaveUp);
                return Err(Error::GaveUp(format!("the server cannot start: {reason}")));
            }
            let report = self.report_server_death(&exit, oom_before);
            self.status.last_cause = report.as_ref().map(|r| r.cause.clone());
            self.status.last_report = report.and_then(|r| r.path);
            match self.tracker.next(&exit) {
                Decision::Restart { after, attempt } => {
                    self.status.restarts += 1;
                    log::warn!(
                        "server died ({}); restart {attempt} in {after:?}",
                        exit.termination
                    );
                    self.set_state(Phase::BackingOff);
                    let deadline = Instant::now() + after;
                    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
                        match rx.recv_timeout(left) {
                            Ok(Event::Signal(SIGHUP))
                            | Ok(Event::ServerReady(_))
                            | Ok(Event::ServerExited(_)) => {}
                            Ok(Event::Signal(signal)) => {
                                log::info!("received signal {signal} while backing off: exiting");
                                self.set_state(Phase::Stopped);
                                return Ok(());
                            }
                            Err(_) => break,
                        }
                    }
                }
                Decision::GiveUp(give_up) => {
                    self.set_state(Phase::GaveUp);
                    return Err(Error::GaveUp(format!("server keeps dying: {give_up}")));
                }
                Decision::Stop(reason) => {
                    log::info!(
                        "server exited ({}); not restarting: {reason:?}",
                        exit.termination
                    );
                    self.set_state(Phase::Stopped);
                    return Ok(());
                }
            }
        }
    }
}

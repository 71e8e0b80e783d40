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
//! server's and the command line's, and its pages count 2.5 MB. So `ward start` and `ward run`
//! exec [`KEEPER_BIN`], a binary beside `ward` that links only the keeper, with what it needs on
//! its command line ([`KeeperArgs`]): it parses no config file. Without that binary the keeper
//! runs in the `ward` process, as before.

use std::ffi::OsString;
use std::path::PathBuf;
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

use crate::logging::{self, LogFile, Sink};
use crate::state::{KeeperState, Pidfile, PidfileState, StateDir, names, unix_now};
use crate::{Config, Error, sd_notify};
use crate::{deaths, orphans};

/// The line a server prints on its stdout once its watches are installed and its socket listens.
pub(crate) const READY_LINE: &str = "WARD-READY";

/// The file name of the keeper's own binary, looked for beside the `ward` binary.
pub const KEEPER_BIN: &str = "ward-keeper";

/// The version `ward` and `ward-keeper` must share: the keeper's arguments are theirs alone.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The command that starts the server: the `ward` binary and its `__server` arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServerCommand {
    pub exe: PathBuf,
    pub args: Vec<OsString>,
}

/// Everything a keeper needs, as the `ward-keeper` binary receives it on its command line: the
/// state directory, the server's command, and the few settings of the config the keeper uses.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct KeeperArgs {
    pub state_dir: PathBuf,
    pub foreground: bool,
    pub server: ServerCommand,
    pub log_max_bytes: u64,
    pub drain_timeout: Duration,
    pub stop_grace: Duration,
    pub heartbeat_log: Duration,
    pub keep_reports: usize,
}

impl KeeperArgs {
    pub(crate) fn new(
        state: &StateDir,
        config: &Config,
        server: ServerCommand,
        foreground: bool,
    ) -> Self {
        KeeperArgs {
            state_dir: state.path().to_path_buf(),
            foreground,
            server,
            log_max_bytes: config.log_max_bytes,
            drain_timeout: config.drain_timeout,
            stop_grace: config.stop_grace,
            heartbeat_log: config.heartbeat_log,
            keep_reports: config.keep_reports,
        }
    }

    /// The arguments of `ward-keeper`; [`KeeperArgs::parse`] reads them back.
    pub(crate) fn to_args(&self) -> Vec<OsString> {
        let nanos = |d: Duration| OsString::from(d.as_nanos().to_string());
        let mut args: Vec<OsString> = vec![
            // First, so that a keeper of another version says so before anything else fails.
            "--version".into(),
            VERSION.into(),
            "--state-dir".into(),
            self.state_dir.clone().into(),
            "--server".into(),
            self.server.exe.clone().into(),
            "--log-max-bytes".into(),
            self.log_max_bytes.to_string().into(),
            "--drain-ns".into(),
            nanos(self.drain_timeout),
            "--grace-ns".into(),
            nanos(self.stop_grace),
            "--heartbeat-log-ns".into(),
            nanos(self.heartbeat_log),
            "--keep-reports".into(),
            self.keep_reports.to_string().into(),
        ];
        if self.foreground {
            args.push("--foreground".into());
        }
        args.push("--".into());
        args.extend(self.server.args.iter().cloned());
        args
    }

    /// Reads the arguments [`KeeperArgs::to_args`] wrote (without the program name).
    pub(crate) fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Self, String> {
        let mut args = args.into_iter();
        let (mut state_dir, mut exe, mut foreground) = (None, None, false);
        let mut numbers = [None; 5];
        let names = [
            "--log-max-bytes",
            "--drain-ns",
            "--grace-ns",
            "--heartbeat-log-ns",
            "--keep-reports",
        ];
        while let Some(arg) = args.next() {
            let flag = arg.to_string_lossy().into_owned();
            if flag == "--" {
                break;
            }
            if flag == "--foreground" {
                foreground = true;
                continue;
            }
            let value = args.next().ok_or(format!("{flag} needs a value"))?;
            match flag.as_str() {
                "--version" if value != VERSION => {
                    return Err(format!(
                        "this ward-keeper is version {VERSION} but was started by ward {}: install both from one build",
                        value.to_string_lossy()
                    ));
                }
                "--version" => {}
                "--state-dir" => state_dir = Some(PathBuf::from(value)),
                "--server" => exe = Some(PathBuf::from(value)),
                _ => {
                    let i = names
                        .iter()
                        .position(|n| *n == flag)
                        .ok_or(format!("unknown argument {flag}"))?;
                    let n: u64 = value
                        .to_str()
                        .and_then(|v| v.parse().ok())
                        .ok_or(format!("{flag}: not a number: {}", value.to_string_lossy()))?;
                    numbers[i] = Some(n);
                }
            }
        }
        let number = |i: usize| numbers[i].ok_or(format!("{} is missing", names[i]));
        Ok(KeeperArgs {
            state_dir: state_dir.ok_or("--state-dir is missing")?,
            foreground,
            server: ServerCommand {
                exe: exe.ok_or("--server is missing")?,
                args: args.collect(),
            },
            log_max_bytes: number(0)?,
            drain_timeout: Duration::from_nanos(number(1)?),
            stop_grace: Duration::from_nanos(number(2)?),
            heartbeat_log: Duration::from_nanos(number(3)?),
            keep_reports: usize::try_from(number(4)?).map_err(|e| e.to_string())?,
        })
    }

    /// The config the keeper runs with: defaults, but for the settings it was given.
    fn config(&self) -> Config {
        Config {
            log_max_bytes: self.log_max_bytes,
            drain_timeout: self.drain_timeout,
            stop_grace: self.stop_grace,
            heartbeat_log: self.heartbeat_log,
            keep_reports: self.keep_reports,
            ..Config::defaults(self.state_dir.clone())
        }
    }
}

/// The `ward-keeper` binary: runs the keeper from the arguments `ward start` or `ward run` gave it.
///
/// # Errors
/// Bad arguments, or what the keeper returns (see `ward start`).
pub fn keeper_process(args: impl IntoIterator<Item = OsString>) -> Result<(), Error> {
    let args = KeeperArgs::parse(args).map_err(|e| Error::Spawn {
        what: "keeper".into(),
        reason: format!("bad arguments: {e}"),
    })?;
    let state = StateDir::open(&args.state_dir)?;
    keeper_main(&state, &args.config(), &args.server, args.foreground)
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
pub(crate) fn keeper_main(
    state: &StateDir,
    config: &Config,
    server: &ServerCommand,
    foreground: bool,
) -> Result<(), Error> {
    let vanished = match Pidfile::inspect(state)? {
        PidfileState::Stale(_) => deaths::post_mortem_of_vanished(state, Some(config)),
        _ => None,
    };
    let pidfile = Pidfile::acquire(state)?;
    let log_path = state.join(names::LOG);
    let log = LogFile::open(&log_path, config.log_max_bytes).map_err(|e| Error::Io {
        context: format!("opening log {}", log_path.display()),
        source: e,
    })?;
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
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP, SIGCHLD])
        .map_err(|e| Error::Io {
            context: "installing signal handlers".into(),
            source: e,
        })?;
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
            .map_err(|e| Error::Io {
                context: "starting signal thread".into(),
                source: e,
            })?
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
            state: "starting".into(),
            ..KeeperState::default()
        },
        status_owed: false,
        tracker: RestartTracker::new(server_policy(), SystemClock),
    };
    let result = keeper.supervise(&rx);

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
    tracker: RestartTracker<SystemClock>,
}

/// How often a write that failed (a full disk) is retried; only while one is owed, so an idle
/// keeper with nothing owed never wakes for it.
const OWED_RETRY: Duration = Duration::from_secs(1);

impl Keeper<'_> {
    fn set_state(&mut self, state: &str) {
        self.status.state = state.into();
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

    /// Reaps the children that exited but for the server `pid`: orphans that jobs left behind.
    fn reap_exited_orphans(&mut self, server: u32) {
        if self.adopted.reap_exited(Some(server)) == orphans::Round::More {
            let _ = self.exited_tx.try_send(());
        }
    }

    /// Kills and reaps every child; call it only once the server has been reaped.
    fn sweep_orphans(&mut self) {
        self.adopted.report(Instant::now());
        orphans::sweep();
    }

    fn spawn_server(&self) -> Result<ward_supervisor::Child, Error> {
        let (log, echo, tx) = (Arc::clone(&self.log), self.echo, self.tx.clone());
        let spec = ChildSpec::new(&self.server.exe)
            .name("server")
            .args(&self.server.args)
            .stop_grace(self.config.drain_timeout + self.config.stop_grace + Duration::from_secs(2))
            .capture(move |line| {
                if line.stream == Stream::Stdout && line.text == READY_LINE {
                    let _ = tx.send(Event::ServerReady(line.pid));
                } else {
                    logging::append_captured(&log, echo, line.pid, "server", line.text.as_bytes());
                }
            });
        ward_supervisor::Child::spawn(&spec).map_err(|e| Error::Spawn {
            what: "server".into(),
            reason: e.to_string(),
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
            self.set_state("starting");
            log::info!("server started (pid {pid})");
            let waiter = {
                let (child, tx) = (Arc::clone(&child), self.tx.clone());
                std::thread::Builder::new()
                    .name("ward-server-wait".into())
                    .spawn(move || {
                        let _ = tx.send(Event::ServerExited(child.wait()));
                    })
                    .map_err(|e| Error::Io {
                        context: "starting server waiter".into(),
                        source: e,
                    })?
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
                        if self.status.state == "running" {
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
                        self.set_state("running");
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
                        self.set_state("stopping");
                        let _ = sd_notify::notify("STOPPING=1");
                        let exit = child.stop(self.config.drain_timeout + self.config.stop_grace);
                        let _ = waiter.join();
                        // The waiter's exit event is still queued; the stop's result is the same.
                        let _ = rx.try_recv();
                        match exit {
                            Ok(exit) if exit.is_clean() => log::info!("server stopped cleanly"),
                            Ok(exit) => {
                                log::warn!("server did not stop cleanly: {}", exit.termination);
                                deaths::report(
                                    self.state,
                                    self.config,
                                    "server",
                                    &exit,
                                    None,
                                    Some(oom_before),
                                );
                            }
                            Err(e) => log::error!("stopping the server: {e}"),
                        }
                        self.status.server_pid = None;
                        self.sweep_orphans();
                        self.set_state("stopped");
                        return Ok(());
                    }
                    Event::ServerExited(exit) => break exit,
                }
            };
            let _ = waiter.join();
            self.status.server_pid = None;
            self.sweep_orphans();
            let report = deaths::report(
                self.state,
                self.config,
                "server",
                &exit,
                None,
                Some(oom_before),
            );
            self.status.last_cause = report.as_ref().map(|r| r.cause.clone());
            self.status.last_report = report.and_then(|r| r.path);
            match self.tracker.next(&exit) {
                Decision::Restart { after, attempt } => {
                    self.status.restarts += 1;
                    log::warn!(
                        "server died ({}); restart {attempt} in {after:?}",
                        exit.termination
                    );
                    self.set_state("backing-off");
                    let deadline = Instant::now() + after;
                    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
                        match rx.recv_timeout(left) {
                            Ok(Event::Signal(SIGHUP))
                            | Ok(Event::ServerReady(_))
                            | Ok(Event::ServerExited(_)) => {}
                            Ok(Event::Signal(signal)) => {
                                log::info!("received signal {signal} while backing off: exiting");
                                self.set_state("stopped");
                                return Ok(());
                            }
                            Err(_) => break,
                        }
                    }
                }
                Decision::GiveUp(give_up) => {
                    self.set_state("gave-up");
                    return Err(Error::GaveUp(format!("server keeps dying: {give_up}")));
                }
                Decision::Stop(reason) => {
                    log::info!(
                        "server exited ({}); not restarting: {reason:?}",
                        exit.termination
                    );
                    self.set_state("stopped");
                    return Ok(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeper_args_read_back_what_they_wrote() {
        let args = KeeperArgs {
            state_dir: "/state dir".into(),
            foreground: true,
            server: ServerCommand {
                exe: "/bin/ward".into(),
                args: vec!["__server".into(), "--".into(), "--foreground".into()],
            },
            log_max_bytes: 10 << 20,
            drain_timeout: Duration::from_millis(10_500),
            stop_grace: Duration::from_nanos(1),
            heartbeat_log: Duration::from_secs(3600),
            keep_reports: 50,
        };
        assert_eq!(KeeperArgs::parse(args.to_args()), Ok(args.clone()));
        let background = KeeperArgs {
            foreground: false,
            ..args
        };
        assert_eq!(KeeperArgs::parse(background.to_args()), Ok(background));
    }

    #[test]
    fn keeper_args_refuse_what_is_missing_or_unknown() {
        let missing = ["--state-dir", "/s", "--server", "/w", "--"].map(OsString::from);
        assert!(
            KeeperArgs::parse(missing)
                .unwrap_err()
                .contains("--log-max-bytes")
        );
        let unknown = ["--colour", "red"].map(OsString::from);
        assert!(KeeperArgs::parse(unknown).unwrap_err().contains("--colour"));
    }

    #[test]
    fn a_keeper_of_another_version_says_so_first() {
        let args = ["--version", "0.0.1-other", "--from-the-future", "x"].map(OsString::from);
        let e = KeeperArgs::parse(args).unwrap_err();
        assert!(e.contains("0.0.1-other") && e.contains(VERSION), "{e}");
    }
}

//! The subcommands, as the `ward` binary calls them: each takes a [`Launch`] and returns an
//! [`Outcome`] for the exit code. Human output goes to stdout; errors are returned, not printed.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

#[cfg(feature = "nats")]
pub(crate) use work::serve as serve_work;
#[cfg(feature = "nats")]
pub use work::{start_work, work};

use crate::handover::{Handover, KeeperView};
use crate::jobs::{Event, Events};
use crate::keeper::{KEEPER_BIN, keeper_main};
use crate::protocol::{
    BatchStatus, ChangeLine, ChangesPage, ManifestStatus, PublishStatus, QueueStatus, RemoteStatus,
    Request, ServerStatus, ServiceStatus, WatchStatus, WorkStatus,
};
use crate::state::{KeeperState, Phase, Pidfile, PidfileState, StateDir, names, unix_now};
use crate::{Error, Launch, Outcome, control};

mod failures;
mod follow;
mod hold;
mod logs;
mod metrics;
mod reload;
mod service;
#[cfg(feature = "nats")]
mod work;

pub use failures::{failures, retry};
pub use follow::follow;
pub use hold::{hold, release};
pub use logs::logs;
pub use metrics::metrics;
pub use reload::reload;
pub use service::service;

/// How long `ward start` waits for the server to be ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `ward status` waits for the server's answer.
pub(crate) const STATUS_TIMEOUT: Duration = Duration::from_secs(3);

/// `ward run`: the keeper in the foreground, logging to stderr too.
pub fn run_foreground(launch: &Launch) -> Outcome {
    let result = launch.config().and_then(|config| {
        let state = launch.open_state_dir()?;
        become_keeper(launch, &state, config, true, None)
    });
    result.into()
}

/// Turns this process into the keeper: execs the lean `ward-keeper` beside this binary (see the
/// `keeper` module for why), or, if there is none or it cannot be run, runs the keeper here.
fn become_keeper(
    launch: &Launch,
    state: &StateDir,
    config: crate::Config,
    foreground: bool,
    work: Option<crate::remote::WorkOptions>,
) -> Result<(), Error> {
    use std::os::unix::process::CommandExt;

    let mut handover = Handover::new(launch, config, foreground)?;
    handover.work = work;
    let lean = handover.server_exe.with_file_name(KEEPER_BIN);
    let offer = handover.offer(state)?;
    if lean.is_file() {
        // Returns only if the exec failed.
        let e = std::process::Command::new(&lean).arg(&offer).exec();
        log::warn!(
            "cannot run {} ({e}); the keeper runs in the ward process",
            lean.display()
        );
    }
    let view = KeeperView::of_offer(&offer).inspect_err(|_| KeeperView::withdraw(&offer))?;
    keeper_main(state, &view, &offer)
}

/// `ward __server`: the server process.
pub fn server_main(launch: &Launch) -> Outcome {
    let result = crate::server::serve(launch);
    if let Err(e) = &result {
        log::error!("server exiting: {e}");
        if let Error::CannotStart(why) = e {
            crate::keeper::tell_cannot_start(&why.to_string());
        }
    }
    result.into()
}

/// `ward start`: daemonizes a keeper and returns once its server is ready.
pub fn start(launch: &Launch) -> Outcome {
    start_daemon(launch, None).into()
}

/// Daemonizes a keeper whose server runs the watcher, or `work` (`ward work --detach`), and
/// returns once it is ready.
fn start_daemon(launch: &Launch, work: Option<crate::remote::WorkOptions>) -> Result<(), Error> {
    let what = if work.is_some() { "ward work" } else { "ward" };
    let config = launch.config()?;
    let state = launch.open_state_dir()?;
    if let PidfileState::Running(pid) = Pidfile::inspect(&state)? {
        return Err(Error::AlreadyRunning {
            pid,
            state_dir: state.path().to_path_buf(),
        });
    }
    let cwd = std::env::current_dir().map_err(|e| Error::io("current directory", e))?;
    let log_path = state.join(names::LOG);
    // The daemon's stderr: what bypasses the logger (a crash handler's dump) still lands in the log.
    let stderr = crate::state::open_private(
        std::fs::OpenOptions::new().create(true).append(true),
        &log_path,
    )
    .map_err(|e| Error::io(format!("opening {}", log_path.display()), e))?;
    let requested = unix_now();
    // The daemon keeps the umask it was started with, as `ward run` does, so a job writes files
    // with the same modes however ward was started; ward's own files are made 0600 one by one,
    // in a 0700 directory.
    let daemon = daemonize::Daemonize::new()
        .working_directory(&cwd)
        .umask(crate::umask::current())
        .stdout(daemonize::Stdio::devnull())
        .stderr(stderr);
    match daemon.execute() {
        daemonize::Outcome::Parent(Ok(_)) => {
            let (keeper, server) = wait_ready(&state, requested)?;
            println!(
                "{what} started: keeper pid {keeper}, server pid {server}, state dir {}",
                state.path().display()
            );
            Ok(())
        }
        daemonize::Outcome::Parent(Err(e)) => Err(Error::from(e)),
        daemonize::Outcome::Child(Ok(_)) => {
            let code = match become_keeper(launch, &state, config, false, work) {
                Ok(()) => 0,
                Err(e) => {
                    // stderr is the log file here: on a full disk this write fails, which
                    // must not turn into a panic.
                    let _ = writeln!(std::io::stderr(), "ward keeper: {e}");
                    1
                }
            };
            std::process::exit(code)
        }
        daemonize::Outcome::Child(Err(e)) => {
            let _ = writeln!(std::io::stderr(), "ward: daemonizing failed: {e}");
            std::process::exit(1)
        }
    }
}

/// Waits until a keeper started at or after `requested` reports its server ready.
fn wait_ready(state: &StateDir, requested: u64) -> Result<(u32, u32), Error> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut seen_running = false;
    loop {
        let pidfile = Pidfile::inspect(state)?;
        let keeper = KeeperState::read(state).filter(|k| k.started_at + 1 >= requested);
        match (&pidfile, &keeper) {
            (PidfileState::Running(pid), Some(k)) if k.keeper_pid == *pid => {
                seen_running = true;
                if let (Phase::Running, Some(server)) = (k.state, k.server_pid) {
                    return Ok((*pid, server));
                }
            }
            (PidfileState::Running(_), _) => seen_running = true,
            // A keeper that gave up between two looks (a server refused at once, before the
            // first look saw the pidfile held) said why all the same.
            _ if seen_running || keeper.as_ref().is_some_and(|k| k.state == Phase::GaveUp) => {
                let cause = keeper
                    .and_then(|k| k.last_cause)
                    .unwrap_or_else(|| "no cause recorded".into());
                return Err(Error::NotReady {
                    cause,
                    log: state.join(names::LOG),
                });
            }
            _ => {}
        }
        if Instant::now() >= deadline {
            return Err(Error::Timeout(format!(
                "ward did not become ready within {READY_TIMEOUT:?}; see {}",
                state.join(names::LOG).display()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `ward stop`: asks the keeper to stop (SIGTERM) and waits until it has released the pidfile,
/// which it does only after the server and every worker have exited.
pub fn stop(launch: &Launch, timeout: Duration) -> Outcome {
    match stop_daemon(launch, timeout) {
        Ok(Some(pid)) => {
            println!("ward stopped (keeper pid {pid})");
            Outcome::Success
        }
        Ok(None) => {
            println!(
                "ward is not running (state dir {}: {})",
                launch
                    .state_dir_path()
                    .map_or_else(|e| e.to_string(), |p| p.display().to_string()),
                launch.origin.hint()
            );
            Outcome::Success
        }
        Err(e) => Outcome::Failed(e),
    }
}

fn stop_daemon(launch: &Launch, timeout: Duration) -> Result<Option<u32>, Error> {
    let Some(state) = existing_state_dir(launch)? else {
        return Ok(None);
    };
    let PidfileState::Running(pid) = Pidfile::inspect(&state)? else {
        return Ok(None);
    };
    send(pid, libc::SIGTERM)?;
    let deadline = Instant::now() + timeout;
    while matches!(Pidfile::inspect(&state)?, PidfileState::Running(_)) {
        if Instant::now() >= deadline {
            // Killing the keeper takes the server and workers with it (parent-death signals).
            let _ = send(pid, libc::SIGKILL);
            return Err(Error::Timeout(format!(
                "ward (keeper pid {pid}) did not stop within {timeout:?}; killed it"
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // The keeper releases the lock as its last act; wait until it has really exited too.
    while ward_sys::is_alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(Some(pid))
}

/// `ward restart`: stop if running, then start. Without a config file or flags it restarts the
/// daemon as it was launched (the launch recorded in its state directory); either way the
/// configuration is checked before anything is stopped, so a typo never leaves ward down.
pub fn restart(launch: &Launch) -> Outcome {
    restart_daemon(launch).into()
}

fn restart_daemon(launch: &Launch) -> Result<(), Error> {
    let launch = if launch.asks_nothing() {
        let recorded = launch.state_dir_path()?.join(names::HANDOVER);
        if !recorded.exists() {
            return Err(Error::Handover {
                path: recorded,
                problem: format!(
                    "no launch recorded here to restart: give --config FILE or flags, or the \
                     --state-dir of a ward started before ({})",
                    launch.origin.hint()
                ),
            });
        }
        // Unreadable, or of another version of ward: its error says which.
        let state = launch.open_state_dir()?;
        Handover::read(&state)?.launch
    } else {
        launch.clone()
    };
    launch.config()?;
    stop_daemon(&launch, Duration::from_secs(60))?;
    start_daemon(&launch, None)
}

/// `ward status`: exit 0 while running, 3 when not (saying why, if known).
pub fn status(launch: &Launch, as_json: bool) -> Outcome {
    let report = match status_report(launch) {
        Ok(r) => r,
        Err(e) => return Outcome::Failed(e),
    };
    if as_json {
        println!("{}", serde_json::to_string(&report).unwrap_or_default());
    } else {
        print_status(&report);
    }
    if report.state == NOT_RUNNING {
        Outcome::NotRunning
    } else {
        Outcome::Success
    }
}

/// What `ward status` reports of a daemon that is not running.
const NOT_RUNNING: &str = "not-running";

/// What `ward status` reports; `--json` prints it as it is.
#[derive(Debug, Default, PartialEq, Serialize)]
struct StatusReport {
    /// The keeper's phase (`running`, `backing-off`, ...), or `not-running`.
    state: &'static str,
    state_dir: PathBuf,
    /// Why it is not running.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    /// The keeper's pid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    server_pid: Option<u32>,
    /// Seconds since the keeper started.
    #[serde(skip_serializing_if = "Option::is_none")]
    uptime_s: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    restarts: Option<u32>,
    last_cause: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_report: Option<PathBuf>,
    /// The server's own account, when it answered.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    server: Option<ServerPart>,
    /// Why the server did not answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    server_error: Option<String>,
}

/// The server's answer as `ward status` shows it: its uptime renamed beside the keeper's.
#[derive(Debug, PartialEq, Serialize)]
struct ServerPart {
    server_uptime_s: u64,
    queue: QueueStatus,
    watch: WatchStatus,
    manifest: ManifestStatus,
    workers_idle: usize,
    batches: Vec<BatchStatus>,
    services: Vec<ServiceStatus>,
    remote: Vec<RemoteStatus>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    publishing: Vec<PublishStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    work: Option<WorkStatus>,
}

fn status_report(launch: &Launch) -> Result<StatusReport, Error> {
    let path = launch.state_dir_path()?;
    let Some(state) = existing_state_dir(launch)? else {
        return Ok(StatusReport {
            state: NOT_RUNNING,
            reason: Some(format!(
                "never started here: no state directory {} ({})",
                path.display(),
                launch.origin.hint()
            )),
            state_dir: path,
            ..StatusReport::default()
        });
    };
    let keeper = KeeperState::read(&state);
    let not_running = |reason: String| StatusReport {
        state: NOT_RUNNING,
        state_dir: state.path().to_path_buf(),
        reason: Some(reason),
        last_cause: keeper.as_ref().and_then(|k| k.last_cause.clone()),
        ..StatusReport::default()
    };
    match Pidfile::inspect(&state)? {
        PidfileState::Running(pid) => {
            let mut report = StatusReport {
                state: Phase::Running.as_str(),
                state_dir: state.path().to_path_buf(),
                pid: Some(pid),
                ..StatusReport::default()
            };
            if let Some(k) = keeper.filter(|k| k.keeper_pid == pid) {
                report.state = k.state.as_str();
                report.server_pid = k.server_pid;
                report.uptime_s = Some(unix_now().saturating_sub(k.started_at));
                report.restarts = Some(k.restarts);
                report.last_cause = k.last_cause;
                report.last_report = k.last_report;
            }
            let reply = control::ask(&state.join(names::SOCKET), &Request::Status, STATUS_TIMEOUT);
            add_server_status(&mut report, reply);
            Ok(report)
        }
        PidfileState::Stale(pid) => {
            let explained = crate::deaths::post_mortem_of_vanished(&state, None)
                .unwrap_or_else(|| format!("the keeper (pid {pid}) died without stopping cleanly"));
            Ok(not_running(explained))
        }
        PidfileState::Absent => {
            let reason = match &keeper {
                Some(k) if k.state == Phase::GaveUp => {
                    format!(
                        "gave up restarting the server; last cause: {}",
                        k.last_cause.as_deref().unwrap_or("unknown")
                    )
                }
                Some(k) => format!(
                    "stopped (keeper pid {} ended in state {})",
                    k.keeper_pid, k.state
                ),
                None => "not started".into(),
            };
            Ok(not_running(reason))
        }
    }
}

/// Adds the server's answer to a status request to `report`, or why there is none: an error
/// reply (the socket full, the loop busy) is said as such, not dropped.
fn add_server_status(report: &mut StatusReport, reply: Result<ServerStatus, Error>) {
    match reply {
        Ok(server) => {
            report.server = Some(ServerPart {
                server_uptime_s: server.uptime_s,
                queue: server.queue,
                watch: server.watch,
                manifest: server.manifest,
                workers_idle: server.workers_idle,
                batches: server.batches,
                services: server.services,
                remote: server.remote,
                publishing: server.publishing,
                work: server.work,
            });
        }
        Err(Error::Refused(reason)) => report.server_error = Some(reason),
        Err(e) => report.server_error = Some(e.to_string()),
    }
}

fn print_status(report: &StatusReport) {
    let shown = |n: Option<u64>| n.map_or_else(|| "?".to_owned(), |n| n.to_string());
    if report.state == NOT_RUNNING {
        println!(
            "ward is not running: {}",
            report.reason.as_deref().unwrap_or("unknown")
        );
        return;
    }
    println!(
        "ward is {}: keeper pid {}, server pid {}",
        report.state,
        shown(report.pid.map(u64::from)),
        shown(report.server_pid.map(u64::from))
    );
    println!("  state dir  {}", report.state_dir.display());
    println!(
        "  uptime     {} s, {} restart(s)",
        shown(report.uptime_s),
        shown(report.restarts.map(u64::from))
    );
    if let Some(cause) = &report.last_cause {
        println!("  last death {cause}");
    }
    // A `ward work --detach`: what it pulls and did; it has no watcher, queue or manifest.
    if let Some(w) = report.server.as_ref().and_then(|s| s.work.as_ref()) {
        println!(
            "  work       {} stream {} consumer {}: {}, {} at once",
            w.url,
            w.stream,
            w.consumer,
            if w.pulling {
                "pulling"
            } else {
                "not pulling: the NATS server is away"
            },
            w.threads
        );
        println!(
            "  jobs       {} succeeded, {} superseded, {} retried, {} dead-lettered",
            w.succeeded, w.superseded, w.retried, w.dead_lettered
        );
    }
    if let Some(server) = report.server.as_ref().filter(|s| s.work.is_none()) {
        let q = &server.queue;
        println!(
            "  jobs       {} queued, {} running, {} completed, {} attempt(s) failed, {} coalesced",
            q.queued, q.running, q.completed, q.failed, q.coalesced
        );
        if let Some(why) = &q.held {
            println!("  jobs       none starts while memory is short: {why}");
        }
        for b in &server.batches {
            let now = if b.running {
                format!("running for {} path(s)", b.running_paths)
            } else {
                "not running".to_owned()
            };
            let retired = if b.retired {
                ", retired by a reload: ends once it owes nothing"
            } else {
                ""
            };
            println!(
                "  batch      {}: {now}, {} path(s) owed, {} run(s){retired}",
                b.trigger, b.owed, b.runs
            );
        }
        for s in &server.services {
            let pid = s.pid.map_or_else(String::new, |pid| format!(", pid {pid}"));
            let up = if s.pid.is_some() {
                format!(", up {} s", s.uptime_s)
            } else {
                String::new()
            };
            let cause = s
                .last_cause
                .as_ref()
                .map_or_else(String::new, |c| format!(", last: {c}"));
            println!(
                "  service    {}: {}{pid}{up}, {} restart(s){cause}",
                s.name,
                s.state.as_str(),
                s.restarts
            );
        }
        for p in &server.publishing {
            let last = p
                .last_error
                .as_ref()
                .map_or_else(String::new, |e| format!(", last error {e}"));
            println!(
                "  publish    {} stream {}: {} owed, {} unacknowledged, {} waiting for a retry; {} published, {} retried, {} gave up{last}",
                p.url, p.stream, p.owed, p.unacked, p.retrying, p.published, p.retried, p.gave_up
            );
        }
        for r in &server.remote {
            let last = r
                .last_error
                .as_ref()
                .map_or_else(String::new, |e| format!(", last error {e}"));
            println!(
                "  remote     {}: {} succeeded, {} superseded, {} retried, {} gave up{last}",
                r.trigger, r.succeeded, r.superseded, r.retried, r.gave_up
            );
        }
        let m = &server.manifest;
        println!("  manifest   {} paths, sequence {}", m.paths, m.seq);
        if m.gave_up > 0 {
            println!(
                "  gave up    {} path(s): `ward failures` lists them, `ward retry` runs them again",
                m.gave_up
            );
        }
        if let Some(e) = &m.write_error {
            println!(
                "  manifest   {} update(s) not yet recorded: {e}",
                m.unrecorded
            );
        }
        let w = &server.watch;
        if w.backend == "fanotify" {
            println!(
                "  watching   with fanotify (no watch per directory), {} paths pending",
                w.pending
            );
        } else {
            println!(
                "  watching   {} directories with {}, {} paths pending",
                w.watches,
                if w.backend.is_empty() {
                    "inotify"
                } else {
                    &w.backend
                },
                w.pending
            );
        }
        if let Some(why) = &w.backend_fallback {
            println!("  watching   not with the backend asked for: {why}");
        }
        if w.polled_roots > 0 {
            println!(
                "  watching   {} root(s) by polling: the inotify watch limit was reached (see the log)",
                w.polled_roots
            );
        }
        if w.failed_watches > 0 {
            println!(
                "  watching   {} directory watch(es) failed (unreadable?); each is retried when its permissions change",
                w.failed_watches
            );
        }
    }
    if let Some(e) = &report.server_error {
        println!("  server     not answering: {e}");
    }
}

/// `ward diagnose`: a summary of the deaths on record, one line each, then their crash reports,
/// newest first (`last`: only the newest so many), and the post-mortem of a vanished keeper.
pub fn diagnose(launch: &Launch, as_json: bool, last: Option<usize>) -> Outcome {
    diagnose_reports(launch, as_json, last).into()
}

fn diagnose_reports(launch: &Launch, as_json: bool, last: Option<usize>) -> Result<(), Error> {
    let Some(state) = existing_state_dir(launch)? else {
        return if as_json {
            print_out("[]\n")
        } else {
            print_out(&format!(
                "no state directory {}: ward never ran here ({})\n",
                launch.state_dir_path()?.display(),
                launch.origin.hint()
            ))
        };
    };
    let crash_dir = state.join(names::CRASH_DIR);
    if let PidfileState::Stale(_) = Pidfile::inspect(&state)? {
        // Writes the reconstruction once; later calls find it as already reported.
        if let Some(explained) = crate::deaths::post_mortem_of_vanished(
            &state,
            Some(&crate::Config::defaults(state.path().into())),
        ) {
            log::debug!("{explained}");
        }
    }
    let summaries = ward_crashdiag::list_reports(&crash_dir)?;
    let mut reports = Vec::new();
    for summary in &summaries {
        if last.is_some_and(|n| reports.len() >= n) {
            break;
        }
        match ward_crashdiag::read_report(&summary.json) {
            Ok(report) => reports.push((summary, report)),
            Err(e) => eprintln!(
                "ward: skipping unreadable report {}: {e}",
                summary.json.display()
            ),
        }
    }
    let mut out = String::new();
    if as_json {
        let list: Vec<Value> = reports
            .iter()
            .map(|(summary, report)| {
                let mut v = serde_json::to_value(report).unwrap_or(Value::Null);
                v["report_path"] = json!(summary.json);
                v["cause"] = json!(report.verdict.cause.describe());
                v
            })
            .collect();
        out.push_str(&Value::Array(list).to_string());
        out.push('\n');
    } else if reports.is_empty() {
        out.push_str(&format!("no crash reports in {}\n", crash_dir.display()));
    } else {
        let shown = if reports.len() < summaries.len() {
            format!("the {} newest of {}", reports.len(), summaries.len())
        } else {
            reports.len().to_string()
        };
        out.push_str(&format!(
            "{shown} death(s) on record in {}, newest first:\n",
            crash_dir.display()
        ));
        for (summary, report) in &reports {
            out.push_str(&summary_line(summary, report));
            out.push('\n');
        }
        for (summary, report) in &reports {
            out.push_str(&format!("\n==== {} ====\n", summary.text.display()));
            out.push_str(&report.to_text());
            out.push('\n');
        }
    }
    print_out(&out)
}

/// One death in `ward diagnose`'s summary: when, what died (its role and pid), why, and where
/// its report is.
fn summary_line(
    summary: &ward_crashdiag::ReportSummary,
    report: &ward_crashdiag::CrashReport,
) -> String {
    format!(
        "  {}  {} (pid {}): {}  {}",
        ward_sys::UtcTime::from_unix_ms(report.written_wall_ms),
        report.role,
        report.pid,
        report.verdict.cause.describe(),
        summary.text.display()
    )
}

/// Prints `text` on stdout; a closed stdout (`ward diagnose | head`) is the reader's choice, not
/// an error.
fn print_out(text: &str) -> Result<(), Error> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(Error::io("writing to stdout", e))
        }
        _ => Ok(()),
    }
}

/// The state directory if it exists (`status`, `stop` and `diagnose` never create one).
pub(crate) fn existing_state_dir(launch: &Launch) -> Result<Option<StateDir>, Error> {
    let path = launch.state_dir_path()?;
    if !Path::new(&path).exists() {
        return Ok(None);
    }
    StateDir::open(&path).map(Some)
}

fn send(pid: u32, signal: i32) -> Result<(), Error> {
    // SAFETY: kill has no memory-safety preconditions; the pid is the lock holder's.
    if unsafe { libc::kill(pid as libc::pid_t, signal) } == 0 {
        Ok(())
    } else {
        Err(Error::io(
            format!("signalling keeper pid {pid}"),
            std::io::Error::last_os_error(),
        ))
    }
}

/// `ward check`: validates the configuration and prints a summary of it.
pub fn check(launch: &Launch) -> Outcome {
    let result = launch.config().map(|config| {
        let source = config
            .source
            .as_ref()
            .map_or_else(|| "<command line>".into(), |s| s.display().to_string());
        println!("{source}: ok");
        for root in &config.roots {
            println!("  watch   {}", root.display());
        }
        let defaults = config.default_process();
        for trigger in &config.triggers {
            let globs = if trigger.globs.is_empty() {
                "every file".to_owned()
            } else {
                trigger.globs.join(", ")
            };
            let events = if trigger.events == Events::ALL {
                String::new()
            } else {
                let names: Vec<&str> = trigger.events.iter().map(Event::as_str).collect();
                format!(", on {}", names.join(", "))
            };
            let batch = trigger.batch.map_or_else(String::new, |b| {
                format!(", batch (on_busy {})", b.on_busy.as_str())
            });
            println!("  trigger {} ({globs}{events}{batch})", trigger.name);
            // What its processes get that a trigger setting nothing would not.
            let mut settings = trigger.process.differences(&defaults);
            let retry = trigger.retry;
            if retry != config.retry {
                settings.push(format!(
                    "retries = {}, backoff_s = {}, backoff_max_s = {}",
                    retry.retries,
                    retry.backoff.as_secs_f64(),
                    retry.backoff_max.as_secs_f64()
                ));
            }
            if let Some(most) = trigger.concurrency {
                settings.push(format!("concurrency = {most}"));
            }
            if let crate::config::Handler::Publish(to) = &trigger.handler {
                settings.push(format!(
                    "publish to {} stream {} subject {}{}",
                    to.url,
                    to.stream,
                    to.subject,
                    if to.content_max_bytes > 0 {
                        format!(" with content up to {} KiB", to.content_max_bytes / 1024)
                    } else {
                        String::new()
                    }
                ));
            }
            if !settings.is_empty() {
                println!("          {}", settings.join(", "));
            }
        }
        for service in &config.services {
            println!(
                "  service {} ({}, policy {})",
                service.name,
                service.command.join(" "),
                service.policy.as_str()
            );
            let mut settings = service.process.differences(&defaults);
            if let Some((max, window)) = service.intensity {
                settings.push(format!(
                    "restart_max = {max}, restart_window_s = {}",
                    window.as_secs_f64()
                ));
            }
            if !service.depends_on.is_empty() {
                settings.push(format!("depends_on = {:?}", service.depends_on));
            }
            if let Some(ready) = &service.ready {
                let check = match &ready.probe {
                    crate::config::Probe::Tcp(address) => format!("tcp {address}"),
                    crate::config::Probe::File(path) => format!("file {}", path.display()),
                    crate::config::Probe::Command(argv) => format!("command {}", argv.join(" ")),
                    crate::config::Probe::Notify => "notify".to_owned(),
                };
                settings.push(format!(
                    "ready: {check} within {} s",
                    ready.timeout.as_secs_f64()
                ));
            }
            if let Some(watchdog) = &service.watchdog {
                settings.push(match &watchdog.file {
                    Some(file) => format!(
                        "watchdog: {} touched every {} s",
                        file.display(),
                        watchdog.timeout.as_secs_f64()
                    ),
                    None => format!(
                        "watchdog: WATCHDOG=1 every {} s",
                        watchdog.timeout.as_secs_f64()
                    ),
                });
            }
            if !service.restart_on.is_empty() {
                settings.push(format!("restart_on = {:?}", service.restart_on));
            }
            if !settings.is_empty() {
                println!("          {}", settings.join(", "));
            }
        }
        // A hook's timeout is its own default, not a job's: said only when it is not that.
        let hook_defaults = crate::config::ProcessSettings {
            timeout: crate::config::DEFAULT_HOOK_TIMEOUT,
            ..defaults.clone()
        };
        for hook in &config.on_death {
            let roles = if hook.roles.is_empty() {
                "every death".to_owned()
            } else {
                let names: Vec<&str> = hook.roles.iter().map(|r| r.as_str()).collect();
                format!("deaths of {}", names.join(", "))
            };
            println!(
                "  on_death {} ({roles}, timeout {} s)",
                hook.command.join(" "),
                hook.process.timeout.as_secs_f64()
            );
            let mut settings = hook.process.differences(&hook_defaults);
            settings.retain(|s| !s.starts_with("timeout_s = "));
            if !settings.is_empty() {
                println!("          {}", settings.join(", "));
            }
        }
        for warning in unreachable_triggers(&config.triggers) {
            println!("  warning: {warning}");
        }
        // The server refuses to start over it; said here too, so that it is no surprise then.
        if let Some(limited) = config
            .triggers
            .iter()
            .find(|t| t.process.memory_max.is_some())
            && let Err(e) = ward_supervisor::probe_memory_cgroup()
        {
            println!(
                "  warning: trigger {:?}: memory_max_mb needs a memory cgroup per job, and none \
                 can be made here ({e}): ward will not start with it",
                limited.name
            );
        }
    });
    result.into()
}

/// The triggers no path can reach: the first match wins, so nothing gets past a trigger
/// without globs (it takes every file).
fn unreachable_triggers(triggers: &[crate::config::Trigger]) -> Vec<String> {
    let Some(first) = triggers.iter().position(|t| t.globs.is_empty()) else {
        return Vec::new();
    };
    triggers[first + 1..]
        .iter()
        .map(|t| {
            format!(
                "trigger {:?} never runs: trigger {:?} before it takes every file",
                t.name, triggers[first].name
            )
        })
        .collect()
}

/// `ward changes --since SEQ`: the paths changed after `SEQ`, one JSON line each, oldest first,
/// each with its latest change, like watchman's since-queries. A rename is two changes numbered
/// apart: the old path's `removed`, then the new path's `renamed`; so a client that has read up
/// to the old path's last change learns that it is gone. Asks the running server, or reads the
/// manifest itself when ward is stopped.
pub fn changes(launch: &Launch, since: u64) -> Outcome {
    changes_since(launch, since).into()
}

fn changes_since(launch: &Launch, mut since: u64) -> Result<(), Error> {
    use std::io::Write;
    let Some(state) = existing_state_dir(launch)? else {
        // Nothing on stdout, which a client reads as JSON lines: no change is known.
        eprintln!(
            "ward: no state directory {}, so no change known ({})",
            launch.state_dir_path()?.display(),
            launch.origin.hint()
        );
        return Ok(());
    };
    let mut out = std::io::stdout().lock();
    let mut print = |line: &ChangeLine| {
        let text = serde_json::to_string(line).unwrap_or_default();
        writeln!(out, "{text}").map_err(|e| Error::io("writing to stdout", e))
    };
    if let PidfileState::Running(_) = Pidfile::inspect(&state)? {
        loop {
            let request = Request::Changes {
                since: Some(since),
                limit: None,
            };
            let page: ChangesPage =
                control::ask(&state.join(names::SOCKET), &request, STATUS_TIMEOUT)?;
            for change in &page.changes {
                print(change)?;
                since = since.max(change.seq);
            }
            if page.changes.is_empty() {
                return Ok(());
            }
        }
    }
    let path = state.join(names::MANIFEST);
    if !path.exists() {
        return Ok(());
    }
    let (manifest, _) = crate::manifest::Manifest::open(&path)?;
    loop {
        let page = manifest.changes_since(since, 10_000)?;
        for change in &page {
            print(&ChangeLine::of(change))?;
            since = change.seq;
        }
        if page.is_empty() {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trigger_after_a_catch_all_is_said_to_never_run() {
        let trigger = crate::config::Trigger::exec_true;
        let ordered = [trigger("md", &["*.md"]), trigger("all", &[])];
        assert!(unreachable_triggers(&ordered).is_empty());
        let shadowed = [trigger("all", &[]), trigger("md", &["*.md"])];
        assert_eq!(
            unreachable_triggers(&shadowed),
            ["trigger \"md\" never runs: trigger \"all\" before it takes every file"]
        );
    }

    #[test]
    fn status_says_why_the_server_refused_to_answer() {
        let mut report = StatusReport::default();
        let refused = Err(Error::Refused(
            "too many control connections (32 open)".into(),
        ));
        add_server_status(&mut report, refused);
        assert_eq!(
            report.server_error.as_deref(),
            Some("too many control connections (32 open)")
        );
        assert_eq!(report.server, None);
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(
            json["server_error"],
            "too many control connections (32 open)"
        );
    }
}

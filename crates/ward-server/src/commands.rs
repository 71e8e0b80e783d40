//! The subcommands, as the `ward` binary calls them: each takes a [`Launch`] and returns an
//! [`Outcome`] for the exit code. Human output goes to stdout; errors are returned, not printed.

use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::keeper::{KEEPER_BIN, KeeperArgs, ServerCommand, keeper_main};
use crate::state::{KeeperState, Pidfile, PidfileState, StateDir, names, unix_now};
use crate::{Error, Launch, Outcome, control};

/// How long `ward start` waits for the server to be ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `ward status` waits for the server's answer.
const STATUS_TIMEOUT: Duration = Duration::from_secs(3);

/// `ward run`: the keeper in the foreground, logging to stderr too.
pub fn run_foreground(launch: &Launch) -> Outcome {
    let result = launch.config().and_then(|config| {
        let state = launch.open_state_dir()?;
        become_keeper(launch, &state, &config, true)
    });
    result.into()
}

/// Turns this process into the keeper: execs the lean `ward-keeper` beside this binary (see the
/// `keeper` module for why), or, if there is none or it cannot be run, runs the keeper here.
fn become_keeper(
    launch: &Launch,
    state: &StateDir,
    config: &crate::Config,
    foreground: bool,
) -> Result<(), Error> {
    use std::os::unix::process::CommandExt;

    let exe = std::env::current_exe().map_err(|e| Error::Io {
        context: "locating the ward binary".into(),
        source: e,
    })?;
    let lean = exe.with_file_name(KEEPER_BIN);
    let server = ServerCommand {
        args: launch.server_args(state.path()),
        exe,
    };
    if lean.is_file() {
        let args = KeeperArgs::new(state, config, server.clone(), foreground).to_args();
        // Returns only if the exec failed.
        let e = std::process::Command::new(&lean).args(args).exec();
        eprintln!(
            "ward: cannot run {} ({e}); the keeper runs in the ward process",
            lean.display()
        );
    }
    keeper_main(state, config, &server, foreground)
}

/// `ward __server`: the server process.
pub fn server_main(launch: &Launch) -> Outcome {
    let result = crate::server::serve(launch);
    if let Err(e) = &result {
        log::error!("server exiting: {e}");
    }
    result.into()
}

/// `ward start`: daemonizes a keeper and returns once its server is ready.
pub fn start(launch: &Launch) -> Outcome {
    start_daemon(launch).into()
}

fn start_daemon(launch: &Launch) -> Result<(), Error> {
    let config = launch.config()?;
    let state = launch.open_state_dir()?;
    if let PidfileState::Running(pid) = Pidfile::inspect(&state)? {
        return Err(Error::AlreadyRunning {
            pid,
            state_dir: state.path().to_path_buf(),
        });
    }
    let cwd = std::env::current_dir().map_err(|e| Error::Io {
        context: "current directory".into(),
        source: e,
    })?;
    let log_path = state.join(names::LOG);
    // The daemon's stderr: what bypasses the logger (a crash handler's dump) still lands in the log.
    let stderr = crate::state::open_private(
        std::fs::OpenOptions::new().create(true).append(true),
        &log_path,
    )
    .map_err(|e| Error::Io {
        context: format!("opening {}", log_path.display()),
        source: e,
    })?;
    let requested = unix_now();
    let daemon = daemonize::Daemonize::new()
        .working_directory(&cwd)
        .umask(0o077)
        .stdout(daemonize::Stdio::devnull())
        .stderr(stderr);
    match daemon.execute() {
        daemonize::Outcome::Parent(Ok(_)) => {
            let (keeper, server) = wait_ready(&state, requested)?;
            println!(
                "ward started: keeper pid {keeper}, server pid {server}, state dir {}",
                state.path().display()
            );
            Ok(())
        }
        daemonize::Outcome::Parent(Err(e)) => Err(Error::Spawn {
            what: "daemon".into(),
            reason: e.to_string(),
        }),
        daemonize::Outcome::Child(Ok(_)) => {
            let code = match become_keeper(launch, &state, &config, false) {
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
                if let ("running", Some(server)) = (k.state.as_str(), k.server_pid) {
                    return Ok((*pid, server));
                }
            }
            (PidfileState::Running(_), _) => seen_running = true,
            _ if seen_running => {
                let why = keeper
                    .and_then(|k| k.last_cause)
                    .unwrap_or_else(|| "no cause recorded".into());
                return Err(Error::Spawn {
                    what: "ward".into(),
                    reason: format!(
                        "the daemon exited before it was ready ({why}); see {}",
                        state.join(names::LOG).display()
                    ),
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
            println!("ward is not running");
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

/// `ward restart`: stop if running, then start.
pub fn restart(launch: &Launch) -> Outcome {
    if let Err(e) = stop_daemon(launch, Duration::from_secs(60)) {
        return Outcome::Failed(e);
    }
    start(launch)
}

/// `ward status`: exit 0 while running, 3 when not (saying why, if known).
pub fn status(launch: &Launch, as_json: bool) -> Outcome {
    let report = match status_report(launch) {
        Ok(r) => r,
        Err(e) => return Outcome::Failed(e),
    };
    let running = report["state"] != "not-running";
    if as_json {
        println!("{report}");
    } else {
        print_status(&report);
    }
    if running {
        Outcome::Success
    } else {
        Outcome::NotRunning
    }
}

fn status_report(launch: &Launch) -> Result<Value, Error> {
    let path = launch.state_dir_path()?;
    let Some(state) = existing_state_dir(launch)? else {
        return Ok(json!({
            "state": "not-running",
            "state_dir": path,
            "reason": format!("never started here: no state directory {}", path.display()),
        }));
    };
    let keeper = KeeperState::read(&state);
    match Pidfile::inspect(&state)? {
        PidfileState::Running(pid) => {
            let mut report = json!({ "state": "running", "pid": pid, "state_dir": state.path() });
            if let Some(k) = keeper.filter(|k| k.keeper_pid == pid) {
                if k.state != "running" {
                    report["state"] = json!(k.state);
                }
                report["server_pid"] = json!(k.server_pid);
                report["uptime_s"] = json!(unix_now().saturating_sub(k.started_at));
                report["restarts"] = json!(k.restarts);
                report["last_cause"] = json!(k.last_cause);
                report["last_report"] = json!(k.last_report);
            }
            let reply = control::request(
                &state.join(names::SOCKET),
                &json!({ "cmd": "status" }),
                STATUS_TIMEOUT,
            );
            add_server_status(&mut report, reply);
            Ok(report)
        }
        PidfileState::Stale(pid) => {
            let explained = crate::deaths::post_mortem_of_vanished(&state, None)
                .unwrap_or_else(|| format!("the keeper (pid {pid}) died without stopping cleanly"));
            Ok(
                json!({ "state": "not-running", "state_dir": state.path(), "reason": explained, "last_cause": keeper.and_then(|k| k.last_cause) }),
            )
        }
        PidfileState::Absent => {
            let reason = match &keeper {
                Some(k) if k.state == "gave-up" => {
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
            Ok(
                json!({ "state": "not-running", "state_dir": state.path(), "reason": reason, "last_cause": keeper.and_then(|k| k.last_cause) }),
            )
        }
    }
}

/// Adds the server's answer to a status request to `report`, or why there is none: an error
/// reply (the socket full, the loop busy) is said as such, not dropped.
fn add_server_status(report: &mut Value, reply: Result<Value, Error>) {
    match reply {
        Ok(Value::Object(server)) if server.get("ok") == Some(&Value::Bool(true)) => {
            for key in ["queue", "watch", "manifest", "workers_idle"] {
                if let Some(v) = server.get(key) {
                    report[key] = v.clone();
                }
            }
            report["server_uptime_s"] = server.get("uptime_s").cloned().unwrap_or(Value::Null);
        }
        Ok(Value::Object(server)) => {
            report["server_error"] = match server.get("error") {
                Some(Value::String(e)) => json!(e),
                _ => json!("refused without a reason"),
            };
        }
        Ok(_) => report["server_error"] = json!("unexpected reply"),
        Err(e) => report["server_error"] = json!(e.to_string()),
    }
}

fn print_status(report: &Value) {
    let state = report["state"].as_str().unwrap_or("unknown");
    if state == "not-running" {
        println!(
            "ward is not running: {}",
            report["reason"].as_str().unwrap_or("unknown")
        );
        return;
    }
    println!(
        "ward is {state}: keeper pid {}, server pid {}",
        report["pid"], report["server_pid"]
    );
    println!(
        "  state dir  {}",
        report["state_dir"].as_str().unwrap_or("")
    );
    println!(
        "  uptime     {} s, {} restart(s)",
        report["uptime_s"], report["restarts"]
    );
    if let Some(cause) = report["last_cause"].as_str() {
        println!("  last death {cause}");
    }
    if let Some(q) = report.get("queue") {
        println!(
            "  jobs       {} queued, {} running, {} completed, {} failed, {} coalesced",
            q["queued"], q["running"], q["completed"], q["failed"], q["coalesced"]
        );
    }
    if let Some(m) = report.get("manifest") {
        println!("  manifest   {} paths, sequence {}", m["paths"], m["seq"]);
        if let Some(e) = m["write_error"].as_str() {
            println!(
                "  manifest   {} update(s) not yet recorded: {e}",
                m["unrecorded"]
            );
        }
    }
    if let Some(w) = report.get("watch") {
        println!(
            "  watching   {} directories, {} paths pending",
            w["watches"], w["pending"]
        );
        if w["polled_roots"].as_u64().is_some_and(|n| n > 0) {
            println!(
                "  watching   {} root(s) by polling: the inotify watch limit was reached (see the log)",
                w["polled_roots"]
            );
        }
        if w["failed_watches"].as_u64().is_some_and(|n| n > 0) {
            println!(
                "  watching   {} directory watch(es) failed (unreadable?); each is retried when its permissions change",
                w["failed_watches"]
            );
        }
    }
    if let Some(e) = report["server_error"].as_str() {
        println!("  server     not answering: {e}");
    }
}

/// `ward diagnose`: every crash report, newest last, and the post-mortem of a vanished keeper.
pub fn diagnose(launch: &Launch, as_json: bool) -> Outcome {
    diagnose_reports(launch, as_json).into()
}

fn diagnose_reports(launch: &Launch, as_json: bool) -> Result<(), Error> {
    let Some(state) = existing_state_dir(launch)? else {
        println!(
            "{}",
            if as_json {
                "[]"
            } else {
                "no state directory: ward never ran here"
            }
        );
        return Ok(());
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
    let crash_error =
        |e: ward_crashdiag::Error| Error::Protocol(format!("reading crash reports: {e}"));
    let summaries = ward_crashdiag::list_reports(&crash_dir).map_err(crash_error)?;
    let mut reports = Vec::new();
    for summary in &summaries {
        match ward_crashdiag::read_report(&summary.json) {
            Ok(report) => reports.push((summary, report)),
            Err(e) => eprintln!(
                "ward: skipping unreadable report {}: {e}",
                summary.json.display()
            ),
        }
    }
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
        println!("{}", Value::Array(list));
    } else if reports.is_empty() {
        println!("no crash reports in {}", crash_dir.display());
    } else {
        for (summary, report) in &reports {
            println!("==== {} ====", summary.text.display());
            println!("{}", report.to_text());
        }
    }
    Ok(())
}

/// The state directory if it exists (`status`, `stop` and `diagnose` never create one).
fn existing_state_dir(launch: &Launch) -> Result<Option<StateDir>, Error> {
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
        Err(Error::Io {
            context: format!("signalling keeper pid {pid}"),
            source: std::io::Error::last_os_error(),
        })
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
        for trigger in &config.triggers {
            let globs = if trigger.globs.is_empty() {
                "every file".to_owned()
            } else {
                trigger.globs.join(", ")
            };
            println!("  trigger {} ({globs})", trigger.name);
        }
    });
    result.into()
}

/// One `ward changes` line: `{"seq","path","event"}`, with `path_hex` for a path that is not UTF-8.
pub(crate) fn change_json(change: &crate::manifest::ChangeEntry) -> Value {
    let mut v = json!({ "seq": change.seq, "path": change.path.to_string_lossy(), "event": change.event.as_str() });
    if change.path.to_str().is_none() {
        v["path_hex"] = json!(crate::jobs::hex(change.path.as_os_str()));
    }
    v
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
        return Ok(());
    };
    let mut out = std::io::stdout().lock();
    let mut print = |v: &Value| {
        writeln!(out, "{v}").map_err(|e| Error::Io {
            context: "writing to stdout".into(),
            source: e,
        })
    };
    if let PidfileState::Running(_) = Pidfile::inspect(&state)? {
        loop {
            let reply = control::request(
                &state.join(names::SOCKET),
                &json!({ "cmd": "changes", "since": since }),
                STATUS_TIMEOUT,
            )?;
            if reply["ok"] != true {
                return Err(Error::Protocol(
                    reply["error"]
                        .as_str()
                        .unwrap_or("changes refused")
                        .to_owned(),
                ));
            }
            let page = reply["changes"].as_array().cloned().unwrap_or_default();
            for change in &page {
                print(change)?;
                since = since.max(change["seq"].as_u64().unwrap_or(since));
            }
            if page.is_empty() {
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
            print(&change_json(change))?;
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
    fn status_says_why_the_server_refused_to_answer() {
        let mut report = json!({ "state": "running" });
        let refused = json!({ "ok": false, "error": "too many control connections (32 open)" });
        add_server_status(&mut report, Ok(refused));
        assert_eq!(
            report,
            json!({ "state": "running", "server_error": "too many control connections (32 open)" })
        );
        let mut report = json!({ "state": "running" });
        let answered = json!({ "ok": true, "uptime_s": 3, "queue": { "queued": 0 } });
        add_server_status(&mut report, Ok(answered));
        assert_eq!(
            report,
            json!({ "state": "running", "server_uptime_s": 3, "queue": { "queued": 0 } })
        );
    }
}

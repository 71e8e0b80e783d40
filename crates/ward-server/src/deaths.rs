//! Where the daemon meets `ward-crashdiag`: crash capture in each ward process, and a crash
//! report for every death a ward process witnesses (the server's, a job's, a worker's) or finds
//! traces of (a keeper that vanished).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::Duration;

use ward_crashdiag::{
    CaptureConfig, CaptureGuard, Cause, CrashReport, Evidence, OomCounters, PostMortem,
    PostMortemInput, ReportOptions,
};
use ward_supervisor::Exit;

use crate::hooks::{self, Death};
use crate::state::{StateDir, names};
use crate::{Config, Error};

/// Interval of the heartbeat file's updates.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// The heartbeat file of a ward process playing `role` (`keeper` or `server`).
pub(crate) fn heartbeat_file(state: &StateDir, role: &str) -> PathBuf {
    state
        .join(names::HEARTBEAT_DIR)
        .join(format!("{role}.json"))
}

/// Installs the panic hook, fatal-signal handler and heartbeat for this process.
///
/// # Errors
/// If the crash directory or heartbeat file cannot be created, or the handlers not installed.
pub(crate) fn install_capture(
    role: &str,
    state: &StateDir,
    config: &Config,
) -> Result<CaptureGuard, Error> {
    let capture = CaptureConfig::new(role, state.join(names::CRASH_DIR)).heartbeat(
        heartbeat_file(state, role),
        HEARTBEAT,
        Some(config.heartbeat_log),
    );
    ward_crashdiag::install(capture).map_err(Error::from)
}

/// A written report, in short.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reported {
    /// The verdict, in words.
    pub cause: String,
    /// The JSON report, if it could be written.
    pub path: Option<PathBuf>,
}

/// Writes the crash report of `what` (a role such as `server`, or `job NAME on PATH`), which
/// died as `exit` says, with the last lines it wrote; logs the verdict once and tells this
/// process's `on_death` hooks ([`hooks::tell`], which never waits for them). `None` for a clean
/// exit, which needs no report. `oom_before` are the OOM counters read when it was spawned; the
/// rest of the evidence comes from the `exit` ([`Evidence::from_exit`]), and a verdict of OOM
/// kill names the memory cgroup's limit.
pub(crate) fn report(
    state: &StateDir,
    config: &Config,
    what: &str,
    exit: &Exit,
    stderr_tail: Option<&str>,
    oom_before: Option<OomCounters>,
) -> Option<Reported> {
    if exit.is_clean() {
        return None;
    }
    let mut evidence = Evidence::from_exit(exit, what, state.join(names::CRASH_DIR), oom_before);
    if what == "server" {
        // Ward's own process: it installed the capture (a job's command or a worker did not).
        evidence.crash_capture = true;
        evidence.heartbeat_file = Some(heartbeat_file(state, "server"));
        evidence.log_file = Some(state.join(names::LOG));
    } else if ward_crashdiag::record_path(&evidence.crash_dir, exit.pid).exists() {
        // A service that links ward-crashdiag and installed its capture where
        // `WARD_CRASH_DIR` said.
        evidence.crash_capture = true;
    }
    evidence.stderr_tail = stderr_tail.map(str::to_owned);
    let cgroup = exit.memory_cgroup.as_ref();
    let report = ward_crashdiag::collect(&evidence);
    crate::metrics::METRICS.died(what, report.verdict.cause.kind());
    let options = ReportOptions::new(config.keep_reports);
    // The limit a job ran into, in the words its error and the log give.
    let at_limit = |report: &CrashReport| match cgroup.and_then(|c| c.limit_bytes) {
        Some(limit) if report.verdict.cause == Cause::OomKill => {
            format!(
                "{} at its memory limit of {} MiB",
                report.verdict.cause.describe(),
                limit / (1024 * 1024)
            )
        }
        _ => report.verdict.cause.describe(),
    };
    let death = |cause: &str, kind, paths: Option<&ward_crashdiag::ReportSummary>| Death {
        what: what.to_owned(),
        pid: exit.pid,
        cause: cause.to_owned(),
        kind,
        report: paths.map(|p| p.json.clone()),
        report_text: paths.map(|p| p.text.clone()),
    };
    match ward_crashdiag::write_death(report, &evidence, &options) {
        Ok(written) => {
            let cause = at_limit(&written.report);
            log::warn!(
                "{what} (pid {}) {cause}; report {}",
                exit.pid,
                written.paths.text.display()
            );
            let kind = written.report.verdict.cause.kind();
            hooks::tell(&death(&cause, kind, Some(&written.paths)));
            Some(Reported {
                cause,
                path: Some(written.paths.json),
            })
        }
        Err((report, e)) => {
            let cause = at_limit(&report);
            log::error!(
                "{what} (pid {}) {cause}; its crash report cannot be written yet ({e}): it is kept and written once there is room",
                exit.pid
            );
            hooks::tell(&death(&cause, report.verdict.cause.kind(), None));
            keep_unwritten(report, evidence);
            Some(Reported { cause, path: None })
        }
    }
}

/// Crash reports that could not be written (a full disk), oldest first, with the evidence their
/// writing needs: kept in memory and written by [`write_unwritten`] once there is room, instead
/// of lost.
static UNWRITTEN: parking_lot::Mutex<VecDeque<(Box<CrashReport>, Evidence)>> =
    parking_lot::const_mutex(VecDeque::new());

/// Unwritten reports kept at most; past it the oldest is dropped, and said so.
const UNWRITTEN_MAX: usize = 32;

fn keep_unwritten(report: Box<CrashReport>, evidence: Evidence) {
    let mut unwritten = UNWRITTEN.lock();
    if unwritten.len() == UNWRITTEN_MAX
        && let Some((dropped, _)) = unwritten.pop_front()
    {
        log::error!(
            "dropping the unwritten crash report of {} (pid {}): more than {UNWRITTEN_MAX} wait for room",
            dropped.role,
            dropped.pid
        );
    }
    unwritten.push_back((report, evidence));
}

/// How many crash reports wait to be written.
pub(crate) fn unwritten() -> usize {
    UNWRITTEN.lock().len()
}

/// Writes the crash reports that could not be written before, oldest first, stopping at the
/// first that still cannot be; returns how many still wait.
pub(crate) fn write_unwritten(config: &Config) -> usize {
    let mut unwritten = UNWRITTEN.lock();
    let options = ReportOptions::new(config.keep_reports);
    while let Some((report, evidence)) = unwritten.pop_front() {
        match ward_crashdiag::write_death(*report, &evidence, &options) {
            Ok(written) => log::info!(
                "crash report of {} (pid {}) written now: {}",
                written.report.role,
                written.report.pid,
                written.paths.text.display()
            ),
            Err((report, _)) => {
                unwritten.push_front((report, evidence));
                break;
            }
        }
    }
    unwritten.len()
}

/// Explains the death of a keeper that left a stale pidfile, in one sentence; `None` when the
/// post-mortem has nothing to say.
///
/// With a `write` config, a death reconstructed now is written into the crash directory
/// (keeping `keep_reports`), so that later post-mortems find it already reported: the keeper,
/// before it takes the pidfile over, and `ward diagnose`. Without, nothing is written: `ward
/// status` only looks.
pub(crate) fn post_mortem_of_vanished(state: &StateDir, write: Option<&Config>) -> Option<String> {
    let input = PostMortemInput::new(
        "keeper",
        state.join(names::PIDFILE),
        state.join(names::CRASH_DIR),
    )
    .heartbeat_file(heartbeat_file(state, "keeper"))
    .log_file(state.join(names::LOG));
    let died = |pid: u32| format!("the keeper (pid {pid}) died without stopping cleanly");
    match ward_crashdiag::post_mortem(&input) {
        Ok(PostMortem::Reconstructed(report)) => {
            let said = format!("{}: {}", died(report.pid), report.verdict.cause.describe());
            let Some(config) = write else {
                return Some(said);
            };
            Some(
                match ward_crashdiag::write_report(
                    &report,
                    &state.join(names::CRASH_DIR),
                    config.keep_reports,
                ) {
                    Ok(written) => format!("{said}; post-mortem {}", written.text.display()),
                    Err(e) => format!("{said}; post-mortem not written: {e}"),
                },
            )
        }
        Ok(PostMortem::AlreadyReported(summary)) => Some(format!(
            "{}; see {}",
            died(summary.pid),
            summary.text.display()
        )),
        Ok(PostMortem::StillRunning { pid }) => Some(format!(
            "pid {pid} from the stale pidfile is alive but holds no lock"
        )),
        Ok(_) => None,
        Err(e) => Some(format!(
            "the keeper of the stale pidfile died without stopping cleanly; cannot say why: {e}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A state directory whose pidfile names `pid`, a keeper that is gone.
    fn stale(pid: u32) -> (tempfile::TempDir, StateDir) {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(&dir.path().join("state")).unwrap();
        std::fs::write(state.join(names::PIDFILE), format!("{pid}\n")).unwrap();
        (dir, state)
    }

    fn dead_pid() -> u32 {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        child.wait().unwrap();
        child.id()
    }

    fn reports(state: &StateDir) -> usize {
        ward_crashdiag::list_reports(&state.join(names::CRASH_DIR))
            .unwrap()
            .len()
    }

    #[test]
    fn a_vanished_keeper_is_explained_and_its_report_written_once() {
        let pid = dead_pid();
        let (_dir, state) = stale(pid);
        let config = Config::defaults(state.path().into());
        let died = format!("the keeper (pid {pid}) died without stopping cleanly: ");

        // Looking writes nothing.
        let said = post_mortem_of_vanished(&state, None).unwrap();
        assert!(said.starts_with(&died), "{said}");
        assert!(!said.contains("post-mortem"), "{said}");
        assert_eq!(reports(&state), 0);

        let said = post_mortem_of_vanished(&state, Some(&config)).unwrap();
        assert!(said.starts_with(&died), "{said}");
        assert!(said.contains("; post-mortem "), "{said}");
        assert_eq!(reports(&state), 1);

        // Found, not written again, by a look and by a writer alike.
        for write in [None, Some(&config)] {
            let said = post_mortem_of_vanished(&state, write).unwrap();
            assert!(
                said.starts_with(&format!(
                    "the keeper (pid {pid}) died without stopping cleanly; see "
                )),
                "{said}"
            );
        }
        assert_eq!(reports(&state), 1);
    }

    #[test]
    fn a_live_process_in_a_stale_pidfile_is_said_to_hold_no_lock() {
        let (_dir, state) = stale(std::process::id());
        assert_eq!(
            post_mortem_of_vanished(&state, None),
            Some(format!(
                "pid {} from the stale pidfile is alive but holds no lock",
                std::process::id()
            ))
        );
        assert_eq!(reports(&state), 0);
    }

    #[test]
    fn a_pidfile_without_a_pid_is_said_to_leave_the_death_unexplained() {
        let (_dir, state) = stale(0);
        std::fs::write(state.join(names::PIDFILE), "garbage\n").unwrap();
        let said = post_mortem_of_vanished(&state, None).unwrap();
        assert!(said.contains("cannot say why"), "{said}");
    }
}

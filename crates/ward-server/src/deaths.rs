//! Where the daemon meets `ward-crashdiag`: crash capture in each ward process, and a crash
//! report for every death a ward process witnesses (the server's, a job's, a worker's) or finds
//! traces of (a keeper that vanished).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::Duration;

use ward_crashdiag::{
    CaptureConfig, CaptureGuard, CrashReport, Evidence, OomCounters, PostMortem, PostMortemInput,
    ReportOptions, WaitOutcome,
};
use ward_supervisor::{Exit, Termination};

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
/// died as `exit` says, with the last lines it wrote; logs the verdict once. `None` for a clean
/// exit, which needs no report.
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
    let mut evidence = Evidence::new(exit.pid, what, state.join(names::CRASH_DIR));
    evidence.wait_status = Some(match exit.termination {
        Termination::Exited { code } => WaitOutcome::Exited { code },
        Termination::Signaled {
            signal,
            core_dumped,
        } => WaitOutcome::Signaled {
            signal,
            core_dumped,
        },
    });
    evidence.max_rss_kib = Some(exit.max_rss_bytes / 1024);
    evidence.run_time = Some(exit.run_time);
    evidence.stop_requested = exit.stop_requested;
    evidence.watchdog_fired = exit.hung;
    if what == "server" {
        evidence.heartbeat_file = Some(heartbeat_file(state, "server"));
        evidence.log_file = Some(state.join(names::LOG));
    }
    evidence.stderr_tail = stderr_tail.map(str::to_owned);
    let cgroup = exit.memory_cgroup.as_ref().map(|c| c.path.clone());
    evidence.oom_after = oom_before.map(|_| OomCounters::read(cgroup.as_deref()));
    evidence.memory_cgroup = cgroup;
    evidence.oom_before = oom_before;
    let report = ward_crashdiag::collect(&evidence);
    let options = ReportOptions::new(config.keep_reports);
    match ward_crashdiag::write_death(report, &evidence, &options) {
        Ok(written) => {
            let cause = written.report.verdict.cause.describe();
            log::warn!(
                "{what} (pid {}) {cause}; report {}",
                exit.pid,
                written.paths.text.display()
            );
            Some(Reported {
                cause,
                path: Some(written.paths.json),
            })
        }
        Err((report, e)) => {
            let cause = report.verdict.cause.describe();
            log::error!(
                "{what} (pid {}) {cause}; its crash report cannot be written yet ({e}): it is kept and written once there is room",
                exit.pid
            );
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

/// Reconstructs the death of a keeper that left a stale pidfile and no report, before the new
/// keeper takes the pidfile over; returns what to log once logging is up.
pub(crate) fn post_mortem_of_vanished(state: &StateDir, config: &Config) -> Option<String> {
    let input = PostMortemInput::new(
        "keeper",
        state.join(names::PIDFILE),
        state.join(names::CRASH_DIR),
    )
    .heartbeat_file(heartbeat_file(state, "keeper"))
    .log_file(state.join(names::LOG));
    match ward_crashdiag::post_mortem(&input) {
        Ok(PostMortem::Reconstructed(report)) => {
            let cause = report.verdict.cause.describe();
            match ward_crashdiag::write_report(
                &report,
                &state.join(names::CRASH_DIR),
                config.keep_reports,
            ) {
                Ok(written) => Some(format!(
                    "the previous keeper (pid {}) {cause}; post-mortem {}",
                    report.pid,
                    written.text.display()
                )),
                Err(e) => Some(format!(
                    "the previous keeper (pid {}) {cause}; post-mortem not written: {e}",
                    report.pid
                )),
            }
        }
        Ok(PostMortem::AlreadyReported(summary)) => Some(format!(
            "the previous keeper (pid {}) died; see {}",
            summary.pid,
            summary.text.display()
        )),
        Ok(PostMortem::StillRunning { pid }) => Some(format!(
            "pid {pid} from the stale pidfile is alive but holds no lock"
        )),
        Ok(_) => None,
        Err(e) => Some(format!("cannot explain the previous keeper's death: {e}")),
    }
}

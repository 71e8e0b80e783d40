//! The on-crash hook: a user command run after each report, with the report's paths in its
//! environment, bounded in time.

use std::fmt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::report::{CrashReport, ReportSummary};

/// A command to run after a crash report is written. It gets `WARD_CRASH_REPORT` (the JSON
/// path), `WARD_CRASH_REPORT_TEXT`, `WARD_CRASH_PID`, `WARD_CRASH_ROLE` and `WARD_CRASH_CAUSE`
/// (e.g. `oom_kill`) in its environment, no stdin, and is killed after `timeout`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct OnCrashHook {
    /// The program.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// How long it may run.
    pub timeout: Duration,
}

/// How the hook ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HookOutcome {
    /// It exited with this code.
    Exited(i32),
    /// A signal killed it.
    Signaled(i32),
    /// It ran past its timeout and was killed.
    TimedOut,
    /// It could not be started or waited for.
    Failed(String),
}

impl HookOutcome {
    /// Exited with code 0.
    pub fn succeeded(&self) -> bool {
        *self == HookOutcome::Exited(0)
    }
}

impl fmt::Display for HookOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HookOutcome::Exited(code) => write!(f, "exited with code {code}"),
            HookOutcome::Signaled(sig) => write!(f, "killed by signal {sig}"),
            HookOutcome::TimedOut => write!(f, "timed out and was killed"),
            HookOutcome::Failed(why) => write!(f, "failed: {why}"),
        }
    }
}

impl OnCrashHook {
    /// Runs `program` with `args`, for at most 30 seconds.
    pub fn new(program: impl Into<PathBuf>, args: Vec<String>) -> Self {
        OnCrashHook {
            program: program.into(),
            args,
            timeout: Duration::from_secs(30),
        }
    }

    /// Sets the time limit.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Runs the hook for `report`, written at `paths`, and waits for it (bounded by the
    /// timeout). The child is always reaped.
    pub fn run(&self, report: &CrashReport, paths: &ReportSummary) -> HookOutcome {
        use std::os::unix::process::ExitStatusExt;

        let spawned = Command::new(&self.program)
            .args(&self.args)
            .env("WARD_CRASH_REPORT", &paths.json)
            .env("WARD_CRASH_REPORT_TEXT", &paths.text)
            .env("WARD_CRASH_PID", report.pid.to_string())
            .env("WARD_CRASH_ROLE", &report.role)
            .env("WARD_CRASH_CAUSE", report.verdict.cause.kind())
            .stdin(Stdio::null())
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) => return HookOutcome::Failed(format!("{}: {e}", self.program.display())),
        };
        let deadline = Instant::now() + self.timeout;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    return match (status.code(), status.signal()) {
                        (Some(code), _) => HookOutcome::Exited(code),
                        (None, Some(sig)) => HookOutcome::Signaled(sig),
                        (None, None) => HookOutcome::Failed(format!("{status}")),
                    };
                }
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
                Ok(None) => {
                    // Kill and reap; a failure here means it already ended on its own.
                    let _ = child.kill();
                    let _ = child.wait();
                    return HookOutcome::TimedOut;
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return HookOutcome::Failed(format!("waiting: {e}"));
                }
            }
        }
    }
}

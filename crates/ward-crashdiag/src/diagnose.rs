//! The post-mortem of a daemon that vanished with no parent to witness it: the automated
//! version of "read the pidfile, the last heartbeat, the log's end and the kernel log".

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use ward_sys::ProcStat;

use crate::heartbeat::read_heartbeat;
use crate::report::{CrashReport, ReportSummary, collect, list_reports};
use crate::{Evidence, time};

/// Where a vanished daemon left its traces.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PostMortemInput {
    /// Its role in the report (`keeper`, `server`).
    pub role: String,
    /// The pidfile it held.
    pub pidfile: PathBuf,
    /// Its crash directory (crash record, earlier reports).
    pub crash_dir: PathBuf,
    /// Its heartbeat file.
    pub heartbeat_file: Option<PathBuf>,
    /// Its log file (which also holds its stderr when daemonized).
    pub log_file: Option<PathBuf>,
}

impl PostMortemInput {
    /// A post-mortem of the `role` process named by `pidfile`, with its crash directory.
    pub fn new(
        role: impl Into<String>,
        pidfile: impl Into<PathBuf>,
        crash_dir: impl Into<PathBuf>,
    ) -> Self {
        PostMortemInput {
            role: role.into(),
            pidfile: pidfile.into(),
            crash_dir: crash_dir.into(),
            heartbeat_file: None,
            log_file: None,
        }
    }

    /// Adds the heartbeat file.
    pub fn heartbeat_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.heartbeat_file = Some(path.into());
        self
    }

    /// Adds the log file.
    pub fn log_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.log_file = Some(path.into());
        self
    }
}

/// What [`post_mortem`] found.
#[derive(Debug)]
#[non_exhaustive]
pub enum PostMortem {
    /// The pid in the pidfile is alive and is the process that wrote the heartbeat (or there
    /// is no heartbeat to tell otherwise): nothing to explain.
    StillRunning {
        /// Its pid.
        pid: u32,
    },
    /// A parent already wrote a report about this pid.
    AlreadyReported(ReportSummary),
    /// A report built from what was left on disk (not yet written: see
    /// [`write_report`](crate::write_report)).
    Reconstructed(Box<CrashReport>),
}

/// Explains the death of the daemon named by a pidfile, from its heartbeat, crash record, log
/// tail and the kernel log. Use it when the pidfile is stale and no parent saw the death.
///
/// # Errors
/// [`Error::Io`] if the pidfile cannot be read, [`Error::Malformed`] if it holds no pid, and
/// [`Error::Io`] if the crash directory cannot be listed.
pub fn post_mortem(input: &PostMortemInput) -> Result<PostMortem> {
    let text =
        fs::read_to_string(&input.pidfile).map_err(|e| Error::io("reading", &input.pidfile, e))?;
    let pid: u32 = text
        .split_whitespace()
        .next()
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| Error::Malformed {
            what: "pidfile",
            path: input.pidfile.clone(),
            detail: format!("no pid in {:?}", text.trim()),
        })?;
    let heartbeat = input
        .heartbeat_file
        .as_deref()
        .and_then(|p| read_heartbeat(p).ok())
        .filter(|hb| hb.pid == pid);
    if is_alive(pid, heartbeat.as_ref().and_then(|hb| hb.start_ticks)) {
        return Ok(PostMortem::StillRunning { pid });
    }
    if let Some(existing) = list_reports(&input.crash_dir)?
        .into_iter()
        .find(|r| r.pid == pid)
    {
        return Ok(PostMortem::AlreadyReported(existing));
    }
    let mut evidence = Evidence::new(pid, input.role.clone(), &input.crash_dir);
    // A daemon whose crash directory and heartbeat are known ran the capture that fills them.
    evidence.crash_capture = true;
    evidence.heartbeat_file = input.heartbeat_file.clone();
    evidence.log_file = input.log_file.clone();
    let mut report = collect(&evidence);
    report.notes.push(format!(
        "reconstructed at {} from the pidfile {} (no parent saw the death)",
        time::human(report.written_wall_ms),
        input.pidfile.display()
    ));
    Ok(PostMortem::Reconstructed(Box::new(report)))
}

/// Whether `pid` runs (and is not a zombie), and, when the heartbeat recorded its writer's
/// start time, is that same process rather than a later one that reused the pid.
fn is_alive(pid: u32, expected_start_ticks: Option<u64>) -> bool {
    // A zombie (or a process being removed after its reap) is dead: it runs no more code.
    let Ok(stat) = ProcStat::read(pid) else {
        return false;
    };
    !stat.is_dead() && expected_start_ticks.is_none_or(|expected| stat.start_ticks == expected)
}

/// Whether a pidfile's process is gone; for callers deciding whether to run a post-mortem.
///
/// # Errors
/// As [`post_mortem`] for the pidfile.
pub fn pidfile_is_stale(pidfile: &Path) -> Result<bool> {
    let text = fs::read_to_string(pidfile).map_err(|e| Error::io("reading", pidfile, e))?;
    let pid: u32 = text
        .split_whitespace()
        .next()
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| Error::Malformed {
            what: "pidfile",
            path: pidfile.to_owned(),
            detail: format!("no pid in {:?}", text.trim()),
        })?;
    Ok(!is_alive(pid, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_reaped_child_is_not() {
        assert!(is_alive(std::process::id(), None));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(!is_alive(pid, None));
    }

    #[test]
    fn an_unreaped_child_is_dead() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while ProcStat::read(pid).is_ok_and(|s| !s.is_zombie()) {
            assert!(std::time::Instant::now() < deadline, "never a zombie");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(!is_alive(pid, None));
        child.wait().unwrap();
    }

    #[test]
    fn a_pid_with_another_start_time_is_a_reuse() {
        let me = std::process::id();
        let mine = crate::heartbeat::start_ticks(me).unwrap();
        assert!(is_alive(me, Some(mine)));
        assert!(!is_alive(me, Some(mine + 1)));
    }

    #[test]
    fn a_pidfile_without_a_pid_is_malformed() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("ward.pid");
        fs::write(&pidfile, "garbage\n").unwrap();
        let input = PostMortemInput::new("keeper", &pidfile, dir.path());
        assert!(matches!(
            post_mortem(&input),
            Err(Error::Malformed {
                what: "pidfile",
                ..
            })
        ));
    }
}

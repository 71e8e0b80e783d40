//! How a child ended: the wait status, peak memory and run time, and nothing about *why*.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// The wait status of a child, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Termination {
    /// The child called `exit` (or returned from `main`) with this code.
    Exited {
        /// The exit code, 0..=255.
        code: i32,
    },
    /// The child was killed by a signal.
    Signaled {
        /// The signal number (`libc::SIGKILL`, `libc::SIGSEGV`...).
        signal: i32,
        /// Whether the kernel wrote a core dump.
        core_dumped: bool,
    },
}

impl Termination {
    /// Decodes a raw `wait` status.
    pub fn from_raw(status: i32) -> Termination {
        if libc::WIFSIGNALED(status) {
            Termination::Signaled {
                signal: libc::WTERMSIG(status),
                core_dumped: libc::WCOREDUMP(status),
            }
        } else {
            Termination::Exited {
                code: libc::WEXITSTATUS(status),
            }
        }
    }

    /// The signal that killed the child, if one did.
    pub fn signal(&self) -> Option<i32> {
        match *self {
            Termination::Signaled { signal, .. } => Some(signal),
            Termination::Exited { .. } => None,
        }
    }

    /// The exit code, if the child exited on its own.
    pub fn code(&self) -> Option<i32> {
        match *self {
            Termination::Exited { code } => Some(code),
            Termination::Signaled { .. } => None,
        }
    }
}

impl fmt::Display for Termination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Termination::Exited { code } => write!(f, "exited with code {code}"),
            Termination::Signaled {
                signal,
                core_dumped,
            } => {
                write!(f, "killed by signal {signal}")?;
                if let Some(name) = ward_sys::signal::name(signal) {
                    write!(f, " ({name})")?;
                }
                if core_dumped {
                    write!(f, ", core dumped")?;
                }
                Ok(())
            }
        }
    }
}

/// What the child's memory cgroup recorded, read just after the child was reaped.
///
/// This is evidence, not a verdict: a child killed by SIGKILL while `oom_kills` went up was very
/// probably killed by the cgroup OOM killer, but deciding that is `ward-crashdiag`'s job.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CgroupEvidence {
    /// The cgroup directory. It is removed when the [`Child`](crate::Child) handle is dropped:
    /// under a [`Supervisor`](crate::Supervisor), right after the `Exited` event, so read what
    /// you need from here rather than from the directory.
    pub path: PathBuf,
    /// The limit that was set, in bytes; `None` for a cgroup made only to contain the child
    /// ([`ChildSpec::own_cgroup`](crate::ChildSpec::own_cgroup)).
    pub limit_bytes: Option<u64>,
    /// The cgroup's `oom_kill` counter (`memory.events` on v2, `memory.oom_control` on v1), if
    /// the kernel reports one.
    pub oom_kills: Option<u64>,
    /// Peak memory charged to the cgroup (`memory.peak` on v2, `memory.max_usage_in_bytes` on v1).
    pub peak_bytes: Option<u64>,
}

/// Everything known about one finished run of a child.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Exit {
    /// The process id the child had (0 for a synthetic exit built with [`Exit::new`]).
    pub pid: u32,
    /// The decoded wait status.
    pub termination: Termination,
    /// The child was found hung: the heartbeat watchdog fired (the child went silent and was sent
    /// SIGABRT, then SIGKILL if it survived the grace), or its caller stopped it past a deadline
    /// with [`Child::stop_hung`](crate::Child::stop_hung). A hung child is always a failure,
    /// whatever its wait status says.
    pub hung: bool,
    /// The signal [`Child::stop_hung`](crate::Child::stop_hung) sent the hung child's group to
    /// make it print its stack before it was stopped: a wait status of that signal is this
    /// request's doing, not a crash of its own.
    pub dump_signal: Option<i32>,
    /// The exit followed a stop we asked for (SIGTERM, then SIGKILL after the grace).
    pub stop_requested: bool,
    /// Peak resident set size from `wait4`'s rusage (the child and the descendants it reaped), in
    /// bytes.
    pub max_rss_bytes: u64,
    /// From spawn to reap.
    pub run_time: Duration,
    /// The memory cgroup's counters, when the child ran under a memory limit.
    pub memory_cgroup: Option<CgroupEvidence>,
}

impl Exit {
    /// An exit with no process behind it: for driving a [`RestartTracker`](crate::RestartTracker)
    /// in tests or from another source of exits.
    pub fn new(termination: Termination, run_time: Duration) -> Exit {
        Exit {
            pid: 0,
            termination,
            hung: false,
            dump_signal: None,
            stop_requested: false,
            max_rss_bytes: 0,
            run_time,
            memory_cgroup: None,
        }
    }

    /// Marks the exit as the watchdog's doing (see [`Exit::hung`]).
    pub fn with_hung(mut self, hung: bool) -> Exit {
        self.hung = hung;
        self
    }

    /// Exit code 0 and not hung.
    pub fn is_clean(&self) -> bool {
        !self.hung && self.termination == Termination::Exited { code: 0 }
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.hung {
            write!(f, "hung, ")?;
        }
        write!(
            f,
            "{} after {:.3}s, max RSS {} KiB",
            self.termination,
            self.run_time.as_secs_f64(),
            self.max_rss_bytes / 1024
        )?;
        if let Some(signal) = self.dump_signal {
            let name = ward_sys::signal::name(signal).unwrap_or("a signal");
            write!(f, ", sent {name} for its stack")?;
        }
        if self.stop_requested {
            write!(f, ", stop requested")?;
        }
        Ok(())
    }
}

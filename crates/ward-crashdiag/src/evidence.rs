//! The evidence a parent hands to the collector, and the readers for the kernel's side of it:
//! memory-cgroup and `/proc/vmstat` OOM counters, a pid's memory cgroup, kernel log lines.

use std::fs::{self, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use ward_sys::{Hierarchy, Mount, cgroup_dir};

use crate::error::{Error, Result};

/// How a child ended, as `wait4` reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WaitOutcome {
    /// It called `exit` (or returned from `main`) with this code.
    Exited {
        /// The exit code.
        code: i32,
    },
    /// A signal killed it.
    Signaled {
        /// The signal number.
        signal: i32,
        /// Whether the kernel wrote a core dump.
        core_dumped: bool,
    },
}

impl WaitOutcome {
    /// Decodes a raw `wait`/`wait4` status; `None` for a stop or continue notification.
    pub fn from_raw(status: libc::c_int) -> Option<Self> {
        if libc::WIFEXITED(status) {
            Some(WaitOutcome::Exited {
                code: libc::WEXITSTATUS(status),
            })
        } else if libc::WIFSIGNALED(status) {
            Some(WaitOutcome::Signaled {
                signal: libc::WTERMSIG(status),
                core_dumped: libc::WCOREDUMP(status),
            })
        } else {
            None
        }
    }

    /// The killing signal, if a signal killed it.
    pub fn signal(&self) -> Option<i32> {
        match *self {
            WaitOutcome::Signaled { signal, .. } => Some(signal),
            WaitOutcome::Exited { .. } => None,
        }
    }
}

/// OOM-kill counters at one moment. Read them when a child is spawned and again after it dies;
/// a rise is evidence of an OOM kill.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OomCounters {
    /// `oom_kill` of the child's memory cgroup (v1 `memory.oom_control` or v2
    /// `memory.events`); `None` if unreadable.
    pub cgroup_oom_kill: Option<u64>,
    /// `oom_kill` of `/proc/vmstat`, system-wide; `None` if unreadable.
    pub vmstat_oom_kill: Option<u64>,
}

impl OomCounters {
    /// Reads both counters; one that cannot be read is `None` (and logged at debug level), as
    /// the collector then lists it as missing evidence.
    pub fn read(memory_cgroup: Option<&Path>) -> Self {
        let cgroup_oom_kill = memory_cgroup.and_then(|dir| {
            read_cgroup_oom_kill(dir)
                .inspect_err(|e| log::debug!("OOM counters: {e}"))
                .ok()
        });
        let vmstat_oom_kill = read_vmstat_oom_kill()
            .inspect_err(|e| log::debug!("OOM counters: {e}"))
            .ok();
        OomCounters {
            cgroup_oom_kill,
            vmstat_oom_kill,
        }
    }
}

/// What a parent knows about a dead child. Fill in what you have: every field but `pid`,
/// `role` and `crash_dir` is optional, and the report lists what was missing.
#[derive(Debug, Clone, Default)]
pub struct Evidence {
    /// The dead process.
    pub pid: u32,
    /// Its role (`server`, `worker`...).
    pub role: String,
    /// Where its crash record is and where the report goes.
    pub crash_dir: PathBuf,
    /// `wait4`'s status; `None` if no parent saw the death.
    pub wait_status: Option<WaitOutcome>,
    /// `wait4`'s `ru_maxrss`, in KiB: the only peak-memory figure left after death.
    pub max_rss_kib: Option<u64>,
    /// How long it ran.
    pub run_time: Option<Duration>,
    /// The parent itself asked it to stop (SIGTERM, then perhaps SIGKILL).
    pub stop_requested: bool,
    /// A watchdog killed it because it stopped making progress.
    pub watchdog_fired: bool,
    /// The signal its parent sent it to make it print its stack before stopping it as hung
    /// (SIGABRT to a Python `faulthandler`, SIGQUIT to a JVM): its wait status may be that
    /// signal's, which then says nothing of a crash, and what it printed is in `stderr_tail`.
    pub dump_signal: Option<i32>,
    /// It ran this crate's capture ([`install`](crate::install)), so a crash record it did not
    /// leave says something too (its handler saw no fatal signal, or could not write). A process
    /// that never installed it (a foreign worker, a job's command) has no record to miss, and
    /// its report says nothing of a handler it never had. `false` unless set.
    pub crash_capture: bool,
    /// Its heartbeat file.
    pub heartbeat_file: Option<PathBuf>,
    /// The log file it wrote to.
    pub log_file: Option<PathBuf>,
    /// The end of its captured stderr.
    pub stderr_tail: Option<String>,
    /// Its memory cgroup directory (see [`memory_cgroup_of`]).
    pub memory_cgroup: Option<PathBuf>,
    /// The limit of that memory cgroup, in bytes, when its parent set one for it: an OOM kill's
    /// report then says which limit it ran into.
    pub memory_limit_bytes: Option<u64>,
    /// OOM counters read when it was spawned.
    pub oom_before: Option<OomCounters>,
    /// OOM counters read after it died.
    pub oom_after: Option<OomCounters>,
}

impl Evidence {
    /// Evidence about `pid`, playing `role`, whose crash directory is `crash_dir`; nothing else
    /// known yet.
    pub fn new(pid: u32, role: impl Into<String>, crash_dir: impl Into<PathBuf>) -> Self {
        Evidence {
            pid,
            role: role.into(),
            crash_dir: crash_dir.into(),
            ..Evidence::default()
        }
    }
}

/// With the `supervisor` feature: the evidence a [`ward_supervisor`] parent holds.
#[cfg(feature = "supervisor")]
impl Evidence {
    /// The evidence of the death of a child that [`ward_supervisor`] reaped, in one call: its
    /// wait status, peak RSS (`wait4`'s `ru_maxrss`), run time, whether its parent asked it to
    /// stop, whether it was stopped as hung (and the dump signal it was sent then), and its
    /// memory cgroup (path, limit, and the `oom_kill` count read at the reap) when it ran under
    /// a memory limit. Call it as soon as the child is reaped: it reads the OOM counters after
    /// the death here.
    ///
    /// `oom_before` are the counters read when the child was spawned
    /// ([`OomCounters::read`]`(None)` for the system-wide count); without them the system-wide
    /// counter is not compared, but a child with a memory cgroup of its own still is, since a
    /// cgroup made for one run starts at 0. What only the caller knows is left for it to set:
    /// [`crash_capture`](Evidence::crash_capture) if the child ran [`install`](crate::install),
    /// its heartbeat and log files, its stderr tail.
    ///
    /// ```
    /// use ward_crashdiag::{Cause, Evidence, OomCounters, WaitOutcome, collect};
    /// use ward_supervisor::{Child, ChildSpec, Output};
    ///
    /// let crash_dir = tempfile::tempdir()?;
    /// let oom_before = OomCounters::read(None);
    /// let child = Child::spawn(
    ///     &ChildSpec::new("sh")
    ///         .args(["-c", "kill -SEGV $$"])
    ///         .output(Output::Null),
    /// )?;
    /// let exit = child.wait();
    ///
    /// let evidence = Evidence::from_exit(&exit, "worker", crash_dir.path(), Some(oom_before));
    /// assert!(matches!(
    ///     evidence.wait_status,
    ///     Some(WaitOutcome::Signaled { signal: libc::SIGSEGV, .. })
    /// ));
    /// assert!(evidence.max_rss_kib.is_some_and(|kib| kib > 0));
    /// let report = collect(&evidence);
    /// assert!(matches!(
    ///     report.verdict.cause,
    ///     Cause::NativeCrash { signal: libc::SIGSEGV, .. }
    /// ));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_exit(
        exit: &ward_supervisor::Exit,
        role: impl Into<String>,
        crash_dir: impl Into<PathBuf>,
        oom_before: Option<OomCounters>,
    ) -> Evidence {
        let mut evidence = Evidence::new(exit.pid, role, crash_dir);
        evidence.wait_status = Some(exit.termination.into());
        evidence.max_rss_kib = Some(exit.max_rss_bytes / 1024);
        evidence.run_time = Some(exit.run_time);
        evidence.stop_requested = exit.stop_requested;
        evidence.watchdog_fired = exit.hung;
        evidence.dump_signal = exit.dump_signal;
        let cgroup = exit.memory_cgroup.as_ref();
        // A cgroup made for this run started at 0; without one, nothing to compare without a
        // reading from the spawn.
        let before = match (oom_before, cgroup) {
            (Some(before), Some(_)) => Some(OomCounters {
                cgroup_oom_kill: before.cgroup_oom_kill.or(Some(0)),
                ..before
            }),
            (None, Some(_)) => Some(OomCounters {
                cgroup_oom_kill: Some(0),
                vmstat_oom_kill: None,
            }),
            (before, None) => before,
        };
        evidence.oom_after = before.map(|before| OomCounters {
            // The child's own cgroup is gone by now: its counter was read at the reap.
            cgroup_oom_kill: match cgroup {
                Some(c) => c.oom_kills,
                None => None,
            },
            vmstat_oom_kill: before.vmstat_oom_kill.and_then(|_| {
                read_vmstat_oom_kill()
                    .inspect_err(|e| log::debug!("OOM counters: {e}"))
                    .ok()
            }),
        });
        evidence.oom_before = before;
        evidence.memory_cgroup = cgroup.map(|c| c.path.clone());
        evidence.memory_limit_bytes = cgroup.and_then(|c| c.limit_bytes);
        evidence
    }
}

#[cfg(feature = "supervisor")]
impl From<ward_supervisor::Termination> for WaitOutcome {
    fn from(termination: ward_supervisor::Termination) -> Self {
        match termination {
            ward_supervisor::Termination::Exited { code } => WaitOutcome::Exited { code },
            ward_supervisor::Termination::Signaled {
                signal,
                core_dumped,
            } => WaitOutcome::Signaled {
                signal,
                core_dumped,
            },
        }
    }
}

/// The `oom_kill` count of a memory cgroup directory: v2's `memory.events`, else v1's
/// `memory.oom_control`.
///
/// # Errors
/// [`Error::Io`] if neither file can be read, [`Error::Malformed`] if the one read has no
/// `oom_kill` line (a kernel older than 4.13).
pub fn read_cgroup_oom_kill(dir: &Path) -> Result<u64> {
    let v2 = dir.join("memory.events");
    let path = if v2.is_file() {
        v2
    } else {
        dir.join("memory.oom_control")
    };
    read_counter(&path, "oom_kill")
}

/// The system-wide `oom_kill` count of `/proc/vmstat` (readable without root).
///
/// # Errors
/// [`Error::Io`] if it cannot be read, [`Error::Malformed`] if it has no `oom_kill` line.
pub fn read_vmstat_oom_kill() -> Result<u64> {
    read_counter(Path::new("/proc/vmstat"), "oom_kill")
}

fn read_counter(path: &Path, key: &str) -> Result<u64> {
    let text = fs::read_to_string(path).map_err(|e| Error::io("reading", path, e))?;
    parse_counter(&text, key).ok_or_else(|| Error::Malformed {
        what: "counter file",
        path: path.to_owned(),
        detail: format!("no `{key}` line"),
    })
}

fn parse_counter(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

/// The memory cgroup directory of process `pid`: its v1 `memory` controller path, or its v2
/// path when that cgroup has a `memory.events` file. `Ok(None)` when it has neither.
///
/// # Errors
/// [`Error::Io`] if `/proc/<pid>/cgroup` or `/proc/self/mountinfo` cannot be read (the process
/// is gone, or `/proc` is not mounted).
pub fn memory_cgroup_of(pid: u32) -> Result<Option<PathBuf>> {
    let cgroup_path = PathBuf::from(format!("/proc/{pid}/cgroup"));
    let cgroups =
        fs::read_to_string(&cgroup_path).map_err(|e| Error::io("reading", &cgroup_path, e))?;
    let mountinfo_path = Path::new("/proc/self/mountinfo");
    let mountinfo =
        fs::read(mountinfo_path).map_err(|e| Error::io("reading", mountinfo_path, e))?;
    Ok(memory_cgroup_from(&cgroups, &mountinfo, |p| p.is_dir()))
}

/// [`memory_cgroup_of`] on given file contents; `exists` checks a candidate directory (for a
/// v2 path, its `memory.events` file). The v1 `memory` hierarchy first: on a hybrid system the
/// v2 hierarchy exists too, without the memory controller.
fn memory_cgroup_from(
    cgroups: &str,
    mountinfo: &[u8],
    exists: impl Fn(&Path) -> bool,
) -> Option<PathBuf> {
    let mounts: Vec<Mount> = ward_sys::parse_mountinfo(mountinfo).collect();
    let dir = |hierarchy| cgroup_dir(cgroups, &mounts, hierarchy).and_then(|place| place.dir);
    if let Some(v1) = dir(Hierarchy::V1("memory"))
        && exists(&v1)
    {
        return Some(v1);
    }
    dir(Hierarchy::Unified).filter(|v2| exists(&v2.join("memory.events")))
}

/// Kernel log lines about `pid` (OOM kills, segfault reports) logged at or after `since` on
/// the kernel's monotonic clock, read from `/dev/kmsg` (root, or `dmesg_restrict=0`).
///
/// # Errors
/// [`Error::Io`] if `/dev/kmsg` cannot be opened or read (often: permission denied).
pub fn kernel_lines_about(pid: u32, since: Option<Duration>) -> Result<Vec<String>> {
    let path = Path::new("/dev/kmsg");
    let mut kmsg = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| Error::io("opening", path, e))?;
    let patterns = [
        format!("process {pid} "),
        format!("pid={pid},"),
        format!("[{pid}]:"),
    ];
    let mut lines = Vec::new();
    // One read returns one record; records are under 8 KiB. The ring buffer is finite, so the
    // loop ends at EAGAIN.
    let mut buf = vec![0u8; 8192];
    loop {
        match kmsg.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let record = String::from_utf8_lossy(&buf[..n]);
                // "priority,sequence,microseconds,flags;message"
                let Some((header, message)) = record.split_once(';') else {
                    continue;
                };
                let usec: u64 = header
                    .split(',')
                    .nth(2)
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(0);
                if since.is_some_and(|s| Duration::from_micros(usec) < s) {
                    continue;
                }
                let message = message.lines().next().unwrap_or("").trim_end();
                if patterns.iter().any(|p| message.contains(p.as_str())) {
                    lines.push(format!("[{:>12.6}] {message}", usec as f64 / 1e6));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            // EPIPE: the record we were at was overwritten; the next read resumes.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io("reading", path, e)),
        }
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_parse_from_v1_v2_and_vmstat_formats() {
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        let v2 = "low 0\nhigh 0\nmax 12\noom 2\noom_kill 2\noom_group_kill 0\n";
        let vmstat = "pgfault 100\noom_kill 7\nunevictable_pgs_culled 0\n";
        assert_eq!(parse_counter(v1, "oom_kill"), Some(3));
        assert_eq!(parse_counter(v2, "oom_kill"), Some(2));
        assert_eq!(parse_counter(vmstat, "oom_kill"), Some(7));
        assert_eq!(parse_counter("oom 1\n", "oom_kill"), None);
    }

    #[test]
    fn cgroup_files_are_read_v2_first() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("memory.oom_control"), "oom_kill 4\n").unwrap();
        assert_eq!(read_cgroup_oom_kill(dir.path()).unwrap(), 4);
        fs::write(dir.path().join("memory.events"), "oom 9\noom_kill 9\n").unwrap();
        assert_eq!(read_cgroup_oom_kill(dir.path()).unwrap(), 9);
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(
            read_cgroup_oom_kill(empty.path()),
            Err(Error::Io { .. })
        ));
    }

    /// A hybrid host: a v1 memory hierarchy beside a v2 one.
    const HYBRID: &[u8] = b"\
30 25 0:26 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
35 25 0:31 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 25 0:32 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
";

    #[test]
    fn the_v1_memory_cgroup_comes_before_the_v2_one() {
        let cgroups = "5:pids:/\n4:memory:/process_api/abc\n0::/user.slice\n";
        let dir = memory_cgroup_from(cgroups, HYBRID, |_| true);
        assert_eq!(
            dir,
            Some(PathBuf::from("/sys/fs/cgroup/memory/process_api/abc"))
        );
        // Without the v1 directory, the v2 one, which has `memory.events` here.
        let dir = memory_cgroup_from(cgroups, HYBRID, |p| p.ends_with("memory.events"));
        assert_eq!(
            dir,
            Some(PathBuf::from("/sys/fs/cgroup/unified/user.slice"))
        );
    }

    #[test]
    fn v2_path_needs_a_memory_events_file() {
        let mountinfo = b"30 25 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let cgroups = "0::/system.slice/ward.service\n";
        let with = memory_cgroup_from(cgroups, mountinfo, |p| p.ends_with("memory.events"));
        assert_eq!(
            with,
            Some(PathBuf::from("/sys/fs/cgroup/system.slice/ward.service"))
        );
        assert_eq!(memory_cgroup_from(cgroups, mountinfo, |_| false), None);
    }

    #[test]
    fn a_cgroup_outside_the_mount_root_is_not_guessed() {
        // Another pod's cgroup, seen through a mount of this pod's subtree: joining its whole
        // path under the mount would name a directory of this pod's, or none.
        let mountinfo = b"30 25 0:26 /kubepods/pod1 /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let cgroups = "0::/kubepods/pod10/ctr\n";
        assert_eq!(memory_cgroup_from(cgroups, mountinfo, |_| true), None);
    }

    #[test]
    fn this_process_has_readable_counters_or_a_reason() {
        // vmstat is world-readable on every Linux this crate supports.
        assert!(read_vmstat_oom_kill().is_ok());
        match memory_cgroup_of(std::process::id()) {
            Ok(Some(dir)) => assert!(dir.is_dir(), "{}", dir.display()),
            Ok(None) => {}
            Err(e) => panic!("reading our own cgroup: {e}"),
        }
    }

    #[test]
    fn wait_statuses_decode() {
        assert_eq!(
            WaitOutcome::from_raw(3 << 8),
            Some(WaitOutcome::Exited { code: 3 })
        );
        assert_eq!(
            WaitOutcome::from_raw(libc::SIGKILL),
            Some(WaitOutcome::Signaled {
                signal: libc::SIGKILL,
                core_dumped: false
            })
        );
        assert_eq!(
            WaitOutcome::from_raw(libc::SIGSEGV | 0x80),
            Some(WaitOutcome::Signaled {
                signal: libc::SIGSEGV,
                core_dumped: true
            })
        );
        // A stopped child (0x7f in the low byte) is not an outcome.
        assert_eq!(WaitOutcome::from_raw((libc::SIGSTOP << 8) | 0x7f), None);
    }
}

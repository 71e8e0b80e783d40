//! Linux: spawning (in `spawn`: clone with vfork semantics, then parent-death signal, resource
//! limits, descriptor hygiene, joining a memory cgroup, exec) and memory cgroups (v2
//! `memory.max`, v1 `memory.limit_in_bytes`).

use std::fs;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ward_sys::{CgroupDir, Hierarchy, Mount, cgroup_dir};

use crate::{CgroupEvidence, Error, Result};

mod spawn;
pub(crate) use spawn::spawn;

/// `CLOSE_RANGE_CLOEXEC` from `<linux/close_range.h>` (not in the libc crate).
const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
/// When `close_range` is missing (kernels before 5.11), descriptors up to this are marked by hand.
const FALLBACK_FD_SCAN: libc::c_int = 65_536;

/// `ru_maxrss` is in KiB on Linux.
pub(crate) const MAXRSS_UNIT: u64 = 1024;

/// The highest signal number (the last real-time signal).
pub(crate) fn max_signal() -> i32 {
    libc::SIGRTMAX()
}

/// A close-on-exec pipe: (read end, write end).
pub(crate) fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(Error::os("pipe2"));
    }
    // SAFETY: pipe2 succeeded, so both are fresh descriptors that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

#[cfg(target_env = "gnu")]
type Resource = libc::__rlimit_resource_t;
#[cfg(not(target_env = "gnu"))]
type Resource = libc::c_int;

/// # Safety
/// Async-signal-safe; callable between clone and exec.
unsafe fn set_limit(resource: Resource, value: Option<u64>) -> io::Result<()> {
    let Some(value) = value else { return Ok(()) };
    let limit = libc::rlimit {
        rlim_cur: value as libc::rlim_t,
        rlim_max: value as libc::rlim_t,
    };
    // SAFETY: `limit` is a valid rlimit for the duration of the call.
    if unsafe { libc::setrlimit(resource, &limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Marks every descriptor above stderr close-on-exec except `keep` (sorted, all > 2): whatever
/// this process leaked (a library's descriptor opened without `O_CLOEXEC`) stays out of the child.
///
/// # Safety
/// Async-signal-safe; callable between clone and exec.
unsafe fn cloexec_all_but(keep: &[RawFd]) {
    let mut first: libc::c_uint = 3;
    for &fd in keep.iter().chain(std::iter::once(&-1)) {
        let last = if fd < 0 {
            libc::c_uint::MAX
        } else {
            fd as libc::c_uint - 1
        };
        if first <= last {
            // SAFETY: close_range with the CLOEXEC flag only changes descriptor flags.
            let done =
                unsafe { libc::syscall(libc::SYS_close_range, first, last, CLOSE_RANGE_CLOEXEC) }
                    == 0;
            if !done {
                let stop = (last as u64).min(FALLBACK_FD_SCAN as u64) as libc::c_int;
                for each in first as libc::c_int..=stop {
                    // SAFETY: fcntl on a descriptor that may not exist just fails with EBADF.
                    unsafe {
                        let flags = libc::fcntl(each, libc::F_GETFD);
                        if flags >= 0 {
                            libc::fcntl(each, libc::F_SETFD, flags | libc::FD_CLOEXEC);
                        }
                    }
                }
            }
        }
        if fd >= 0 {
            first = fd as libc::c_uint + 1;
        }
    }
}

/// How long [`Cgroup::kill_all`] waits for the cgroup to empty.
const CGROUP_EMPTY_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CgroupVersion {
    V1,
    V2,
}

/// A memory cgroup made for one child. Removed by [`Cgroup::remove`] once the child is gone.
#[derive(Debug)]
pub(crate) struct Cgroup {
    dir: PathBuf,
    version: CgroupVersion,
    /// `None`: made only to contain the child's processes.
    limit: Option<u64>,
}

impl Cgroup {
    pub(crate) fn path(&self) -> &Path {
        &self.dir
    }

    /// Reads the counters ward-crashdiag needs to tell an OOM kill from another SIGKILL.
    pub(crate) fn evidence(&self) -> CgroupEvidence {
        let (events, key, peak) = match self.version {
            CgroupVersion::V2 => ("memory.events", "oom_kill", "memory.peak"),
            CgroupVersion::V1 => (
                "memory.oom_control",
                "oom_kill",
                "memory.max_usage_in_bytes",
            ),
        };
        let oom_kills = fs::read_to_string(self.dir.join(events))
            .ok()
            .and_then(|text| {
                text.lines().find_map(|line| {
                    let (name, value) = line.split_once(' ')?;
                    (name == key).then(|| value.trim().parse().ok())?
                })
            });
        let peak_bytes = fs::read_to_string(self.dir.join(peak))
            .ok()
            .and_then(|text| text.trim().parse().ok());
        CgroupEvidence {
            path: self.dir.clone(),
            limit_bytes: self.limit,
            oom_kills,
            peak_bytes,
        }
    }

    /// SIGKILLs every process in the cgroup, including any that left the child's process group
    /// (`setsid`): the cgroup is the one container they cannot leave. Waits, for a bounded time,
    /// until the cgroup is empty: under cgroup v1 each listed process is killed in turn, and one
    /// that forked meanwhile left a new process to kill in the next round.
    pub(crate) fn kill_all(&self) {
        let kill_file = self.dir.join("cgroup.kill");
        let v2_kill = self.version == CgroupVersion::V2 && kill_file.exists();
        let procs = self.dir.join("cgroup.procs");
        let own = std::process::id();
        let deadline = Instant::now() + CGROUP_EMPTY_WAIT;
        loop {
            let text = match fs::read_to_string(&procs) {
                Ok(text) => text,
                Err(err) => {
                    log::warn!("cannot read {}: {err}", procs.display());
                    return;
                }
            };
            let members: Vec<u32> = text
                .lines()
                .filter_map(|line| line.trim().parse::<u32>().ok())
                .filter(|&pid| pid != own)
                .collect();
            if members.is_empty() {
                return;
            }
            if Instant::now() >= deadline {
                log::warn!(
                    "cgroup {} still holds {} process(es) after SIGKILL",
                    self.dir.display(),
                    members.len()
                );
                return;
            }
            if v2_kill {
                if let Err(err) = fs::write(&kill_file, "1") {
                    log::warn!("cannot kill the cgroup {}: {err}", self.dir.display());
                    return;
                }
            } else {
                for pid in members {
                    // SAFETY: kill has no memory-safety preconditions. The pid was just listed
                    // as a member of a cgroup only our child's descendants can be in.
                    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                }
            }
            // Killed processes leave the cgroup as they exit, which takes a moment.
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Removes the directory; a cgroup still holding a process (one that escaped its process
    /// group) cannot be removed, which is logged.
    pub(crate) fn remove(&self) {
        if let Err(err) = fs::remove_dir(&self.dir) {
            log::warn!("cannot remove memory cgroup {}: {err}", self.dir.display());
        }
    }
}

/// Where new memory cgroups go: the directory of our own memory cgroup, v2 first.
fn memory_cgroup_parent() -> Result<(PathBuf, CgroupVersion)> {
    let own = fs::read_to_string("/proc/self/cgroup").map_err(|source| Error::Cgroup {
        path: "/proc/self/cgroup".into(),
        source,
    })?;
    let mountinfo = fs::read("/proc/self/mountinfo").map_err(|source| Error::Cgroup {
        path: "/proc/self/mountinfo".into(),
        source,
    })?;
    let mounts: Vec<Mount> = ward_sys::parse_mountinfo(&mountinfo).collect();
    let mut reasons = Vec::new();
    match cgroup_dir(&own, &mounts, Hierarchy::Unified) {
        Some(CgroupDir { dir: Some(dir), .. }) => {
            let control =
                fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
            if control.split_whitespace().any(|c| c == "memory") {
                return Ok((dir, CgroupVersion::V2));
            }
            reasons.push(format!(
                "cgroup v2 at {} does not delegate the memory controller to sub-groups",
                dir.display()
            ));
        }
        Some(CgroupDir { mount_point, .. }) => reasons.push(format!(
            "the cgroup v2 hierarchy at {} does not show our cgroup",
            mount_point.display()
        )),
        None => reasons.push("no cgroup v2 hierarchy".to_owned()),
    }
    match cgroup_dir(&own, &mounts, Hierarchy::V1("memory")) {
        Some(place) => {
            // Where no mount shows our cgroup, or it is not there: the hierarchy's root.
            let dir = place
                .dir
                .filter(|dir| dir.is_dir())
                .unwrap_or(place.mount_point);
            Ok((dir, CgroupVersion::V1))
        }
        None => {
            reasons.push("no cgroup v1 memory hierarchy".to_owned());
            Err(Error::NoMemoryCgroup {
                reason: reasons.join("; "),
            })
        }
    }
}

/// Where memory cgroups go, once one has been made there, limited and removed: a hierarchy we
/// may not write to (a non-root process under cgroup v1) is no place for them.
pub(crate) fn probe_memory_cgroup() -> Result<PathBuf> {
    let (parent, _) = memory_cgroup_parent()?;
    create_memory_cgroup(Some(1 << 30))?.remove();
    Ok(parent)
}

/// Creates a fresh memory cgroup, limited to `limit` bytes if there is one.
pub(crate) fn create_memory_cgroup(limit: Option<u64>) -> Result<Cgroup> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let (parent, version) = memory_cgroup_parent()?;
    let name = format!(
        "ward-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let dir = parent.join(name);
    fs::create_dir(&dir).map_err(|source| Error::Cgroup {
        path: dir.clone(),
        source,
    })?;
    let cgroup = Cgroup {
        dir,
        version,
        limit,
    };
    let Some(limit) = limit else {
        return Ok(cgroup);
    };
    let file = match version {
        CgroupVersion::V2 => "memory.max",
        CgroupVersion::V1 => "memory.limit_in_bytes",
    };
    let path = cgroup.dir.join(file);
    if let Err(source) = fs::write(&path, limit.to_string()) {
        cgroup.remove();
        return Err(Error::Cgroup { path, source });
    }
    if version == CgroupVersion::V2 {
        // No swap either, or the limit only slows the child down instead of stopping it.
        let swap = cgroup.dir.join("memory.swap.max");
        if swap.exists()
            && let Err(err) = fs::write(&swap, "0")
        {
            log::warn!("cannot disable swap in {}: {err}", swap.display());
        }
    }
    Ok(cgroup)
}

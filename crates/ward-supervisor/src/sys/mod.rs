//! Platform code: starting a child (everything between clone and exec), and memory cgroups.
//! Linux is implemented; every other platform builds and answers
//! [`Error::Unsupported`](crate::Error).

use std::os::fd::OwnedFd;

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
pub(crate) use linux::*;

#[cfg(not(target_os = "linux"))]
mod unsupported;
#[cfg(not(target_os = "linux"))]
pub(crate) use unsupported::*;

/// A started child: its pid (also its process group id), its pidfd and the parent's ends of the
/// pipes the spec asked for. Reaping it is the caller's job.
#[derive(Debug)]
pub(crate) struct Spawned {
    pub(crate) pid: libc::pid_t,
    /// Polls readable once the child has exited (close-on-exec); `None` on kernels without
    /// pollable pidfds (before 5.3), where the caller checks for the exit with `waitid(WNOHANG)`
    /// instead.
    pub(crate) pidfd: Option<OwnedFd>,
    pub(crate) stdin: Option<OwnedFd>,
    pub(crate) stdout: Option<OwnedFd>,
    pub(crate) stderr: Option<OwnedFd>,
}

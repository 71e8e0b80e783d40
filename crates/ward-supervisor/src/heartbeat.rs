//! The child's side of the heartbeat watchdog: find the descriptor ward passed and write to it.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::spec::HEARTBEAT_FD_ENV;

/// The write end of the heartbeat pipe, in a child started with a
/// [`Watchdog`](crate::Watchdog).
#[derive(Debug)]
pub struct Heartbeat {
    fd: OwnedFd,
}

impl Heartbeat {
    /// Takes the heartbeat descriptor named by [`HEARTBEAT_FD_ENV`], if there is one and it is
    /// an open pipe. Call it once: the descriptor is owned (and closed) by the returned value.
    pub fn from_env() -> Option<Heartbeat> {
        let fd: RawFd = std::env::var(HEARTBEAT_FD_ENV).ok()?.parse().ok()?;
        if fd <= 2 {
            return None;
        }
        // SAFETY: fstat on any integer is memory-safe; an all-zero stat is a valid out value.
        let mut stat: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `stat` is valid for writes.
        if unsafe { libc::fstat(fd, &mut stat) } != 0
            || stat.st_mode & libc::S_IFMT != libc::S_IFIFO
        {
            return None;
        }
        // SAFETY: the descriptor is open (fstat succeeded) and was passed to this process for
        // exactly this use; taking ownership of it once is the documented contract.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // Never block on a full pipe: a pending beat is as good as a new one. The flag is also
        // close-on-exec, so the beat does not leak into this process's own children.
        // SAFETY: fcntl on our open descriptor.
        unsafe {
            let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
            libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC);
        }
        Some(Heartbeat { fd })
    }

    /// Signals "still alive".
    ///
    /// # Errors
    /// The write error, except a full pipe (which already holds beats the parent will read).
    pub fn beat(&self) -> io::Result<()> {
        // SAFETY: writing one byte from a static buffer to our open descriptor.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), b"\n".as_ptr().cast(), 1) };
        if n == 1 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::WouldBlock {
            return Ok(());
        }
        Err(err)
    }
}

//! The pipe a thread asleep in `poll(2)` is woken by: its owner closes the write end, and the
//! read end turns readable (end of file). The mount table's thread and the fanotify and inotify
//! readers use it.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// A pipe, both ends close-on-exec: (read end, write end).
///
/// # Errors
/// If the process is out of descriptors.
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array it is given.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just made by pipe2 and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Sleeps until `fd` is readable (`Ok(true)`) or the write end of the pipe whose read end is
/// `wake` is closed (`Ok(false)`: stop).
///
/// # Errors
/// What `poll(2)` fails with, but an interruption (it sleeps again).
pub(crate) fn readable_or_woken(fd: RawFd, wake: &OwnedFd) -> io::Result<bool> {
    loop {
        let mut fds = [fd, wake.as_raw_fd()].map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        });
        // SAFETY: two initialized pollfd whose descriptors stay open through the call.
        if unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) } < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        return Ok(fds[1].revents == 0);
    }
}

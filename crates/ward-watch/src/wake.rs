//! The pipe a thread asleep in `poll(2)` is woken by: its owner closes the write end, and the
//! read end turns readable (end of file). The mount table's thread and fanotify's use it.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

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

//! The pipe a thread asleep in `poll(2)` is woken by: its owner closes the write end, and the
//! read end turns readable (end of file). The mount table's thread and the fanotify and inotify
//! readers use it; and the readers' pace in a burst ([`Gather`]).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

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
fn readable_or_woken(fd: RawFd, wake: &OwnedFd) -> io::Result<bool> {
    poll_both(fd, wake, -1).map(|woken| !woken)
}

/// Whether the write end of `wake`'s pipe was closed, at once or within `timeout`: a sleep its
/// owner cuts short.
///
/// # Errors
/// What `poll(2)` fails with, but an interruption (it sleeps again, the whole `timeout`).
fn woken_within(wake: &OwnedFd, timeout: Duration) -> io::Result<bool> {
    let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as i32;
    poll_both(-1, wake, ms)
}

/// Polls `fd` (none if negative) and `wake` for reading, at most `ms` milliseconds (-1: no limit);
/// whether `wake` turned readable.
fn poll_both(fd: RawFd, wake: &OwnedFd, ms: i32) -> io::Result<bool> {
    loop {
        let mut fds = [fd, wake.as_raw_fd()].map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        });
        // SAFETY: two initialized pollfd whose descriptors stay open through the call (poll
        // skips a negative one).
        if unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) } < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        return Ok(fds[1].revents != 0);
    }
}

/// A reader's pace: woken again within [`Gather::BURST`] of its last read, it is in a burst,
/// and waits [`Gather::PAUSE`] before it reads, so that one read takes what came meanwhile.
///
/// Woken for every event, a reader read one at a time in a burst and handed each on alone,
/// waking the watcher's thread for each: two wake-ups and four context switches per event,
/// most of both threads' time in a `perf record` of the server during
/// `cargo xtask bench --only nats`. The first event after a quiet spell is read at once; in a
/// burst an event waits at most the pause more, far less than any quiet window.
#[derive(Debug, Default)]
pub(crate) struct Gather {
    last_read: Option<Instant>,
}

impl Gather {
    const BURST: Duration = Duration::from_millis(2);
    const PAUSE: Duration = Duration::from_millis(1);

    /// Sleeps until `fd` is readable and, in a burst, for the pause after: `Ok(false)` if the
    /// owner asked to stop meanwhile.
    ///
    /// # Errors
    /// What `poll(2)` fails with while waiting for `fd` (a failed pause is logged, and the
    /// reader reads at once: the pause only saves time).
    pub(crate) fn wait(&self, fd: RawFd, wake: &OwnedFd) -> io::Result<bool> {
        if !readable_or_woken(fd, wake)? {
            return Ok(false);
        }
        if self.last_read.is_some_and(|at| at.elapsed() < Self::BURST) {
            match woken_within(wake, Self::PAUSE) {
                Ok(woken) => return Ok(!woken),
                Err(e) => log::warn!("ward-watch: poll for a pause before reading: {e}"),
            }
        }
        Ok(true)
    }

    /// Called once the reads have emptied the queue.
    pub(crate) fn read(&mut self) {
        self.last_read = Some(Instant::now());
    }
}

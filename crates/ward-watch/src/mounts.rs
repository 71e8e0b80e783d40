//! The mount table: which file systems are mounted inside the roots, and a thread that says when
//! that changes. Not the watching itself, which stays the watcher's.
//!
//! A watch belongs to a directory's inode: a file system mounted on a watched directory hides that
//! inode, so nothing inside the mount reports an event, and after `umount` the watches of the
//! mount's directories are gone. The kernel flags `/proc/self/mountinfo` (`POLLPRI`) whenever the
//! mount table of the process's namespace changes; the watcher then re-watches each mount point
//! that appeared or disappeared inside a root, and rescans it.

use std::collections::BTreeSet;
use std::path::PathBuf;

/// The mount points listed in a `mountinfo` text, unescaped (see [`ward_sys::Mount`]).
pub(crate) fn mount_points(mountinfo: &[u8]) -> BTreeSet<PathBuf> {
    ward_sys::parse_mountinfo(mountinfo)
        .map(|mount| mount.mount_point)
        .collect()
}

/// The mount points that appeared or disappeared between `before` and `after`, inside one of
/// `roots` (a root itself included).
pub(crate) fn changed_under(
    before: &BTreeSet<PathBuf>,
    after: &BTreeSet<PathBuf>,
    roots: &[PathBuf],
) -> Vec<PathBuf> {
    before
        .symmetric_difference(after)
        .filter(|p| roots.iter().any(|r| p.starts_with(r)))
        .cloned()
        .collect()
}

#[cfg(target_os = "linux")]
pub(crate) use linux::MountWatch;

#[cfg(target_os = "linux")]
mod linux {
    use std::collections::BTreeSet;
    use std::fs::File;
    use std::io;
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::path::PathBuf;
    use std::thread::JoinHandle;

    use crossbeam_channel::{Receiver, Sender, TrySendError};

    /// A thread that blocks in `poll(2)` on `/proc/self/mountinfo` and sends `()` each time the
    /// mount table changes. Dropping it wakes the thread through a pipe and joins it.
    ///
    /// poll(2) by hand: neither notify nor std watches the mount table, and the thread must sleep
    /// until the kernel or its owner wakes it, never on a timer.
    #[derive(Debug)]
    pub(crate) struct MountWatch {
        // Written to (by dropping it) to wake the thread; closed before the thread is joined.
        wake: Option<OwnedFd>,
        thread: Option<JoinHandle<()>>,
    }

    impl MountWatch {
        /// Starts the thread; returns it, the mount table as it is now, and the channel of
        /// changes (at most one waits: several changes before the watcher looks are one).
        ///
        /// # Errors
        /// If `/proc/self/mountinfo` cannot be read or the pipe or thread cannot be made.
        pub(crate) fn start() -> io::Result<(MountWatch, BTreeSet<PathBuf>, Receiver<()>)> {
            let table = File::open("/proc/self/mountinfo")?;
            let now = super::current()?;
            let (read_end, write_end) = crate::wake::pipe()?;
            let (tx, rx) = crossbeam_channel::bounded(1);
            let thread = std::thread::Builder::new()
                .name("ward-mounts".into())
                .spawn(move || watch(table, read_end, tx))?;
            Ok((
                MountWatch {
                    wake: Some(write_end),
                    thread: Some(thread),
                },
                now,
                rx,
            ))
        }
    }

    impl Drop for MountWatch {
        fn drop(&mut self) {
            // Closing the write end makes the read end readable (end of file): the thread wakes.
            drop(self.wake.take());
            if let Some(thread) = self.thread.take()
                && thread.join().is_err()
            {
                log::error!("ward-watch: the mount table thread panicked");
            }
        }
    }

    fn watch(table: File, wake: OwnedFd, changes: Sender<()>) {
        let mut fds = [
            libc::pollfd {
                fd: table.as_raw_fd(),
                events: libc::POLLPRI,
                revents: 0,
            },
            libc::pollfd {
                fd: wake.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        loop {
            // SAFETY: `fds` is an array of two initialized pollfd whose descriptors stay open
            // for the whole call (owned by this function).
            let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                log::warn!(
                    "ward-watch: watching the mount table: {e}; mounts are no longer followed"
                );
                return;
            }
            if fds[1].revents != 0 {
                return;
            }
            // The kernel lowers the flag in the poll call that reports it: no read is needed.
            if fds[0].revents & (libc::POLLPRI | libc::POLLERR) != 0 {
                match changes.try_send(()) {
                    // A change already waits: the watcher will read the whole table anyway.
                    Ok(()) | Err(TrySendError::Full(())) => {}
                    Err(TrySendError::Disconnected(())) => return,
                }
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
#[derive(Debug)]
pub(crate) struct MountWatch;

#[cfg(not(target_os = "linux"))]
impl MountWatch {
    /// Mounts are not followed on this platform.
    pub(crate) fn start() -> std::io::Result<(
        MountWatch,
        BTreeSet<PathBuf>,
        crossbeam_channel::Receiver<()>,
    )> {
        Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "following mounts needs Linux's /proc/self/mountinfo",
        ))
    }
}

/// Reads the mount table now, for the watcher's comparison after a change.
pub(crate) fn current() -> std::io::Result<BTreeSet<PathBuf>> {
    let text = std::fs::read("/proc/self/mountinfo")?;
    Ok(mount_points(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_are_collected_unescaped() {
        // The parsing itself, escapes and all, is ward-sys's and tested there.
        let text = b"22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda rw\n\
            40 22 0:35 / /tmp/a\\040b rw - tmpfs tmpfs rw\n\
            41 22 0:36 / /tmp/a\\040b rw - tmpfs tmpfs rw\n";
        let points: Vec<PathBuf> = mount_points(text).into_iter().collect();
        assert_eq!(points, [PathBuf::from("/"), PathBuf::from("/tmp/a b")]);
    }

    #[test]
    fn only_changes_inside_a_root_count() {
        let before: BTreeSet<PathBuf> = ["/", "/r/old"].iter().map(PathBuf::from).collect();
        let after: BTreeSet<PathBuf> = ["/", "/r/new", "/elsewhere"]
            .iter()
            .map(PathBuf::from)
            .collect();
        let mut changed = changed_under(&before, &after, &[PathBuf::from("/r")]);
        changed.sort();
        assert_eq!(changed, [PathBuf::from("/r/new"), PathBuf::from("/r/old")]);
    }
}

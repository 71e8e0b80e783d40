//! A service's notify socket: the `$NOTIFY_SOCKET` ward gives a service whose readiness or
//! watchdog is told the systemd way (`READY=1`, `WATCHDOG=1`), and the thread that reads it.
//! Not here: what the messages change (`run`).
//!
//! One socket per service, in the state directory (closed to other users), so a message's
//! socket names its service and nobody else can send one.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::Sender;

/// What a service said on its socket that ward acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Notice {
    /// The service, by its place in the config.
    pub unit: usize,
    /// `READY=1`.
    pub ready: bool,
    /// `WATCHDOG=1`.
    pub alive: bool,
}

/// The longest message read; systemd's own limit is a page too, and the keys ward reads are a
/// few bytes.
const MESSAGE_MAX: usize = 4096;

/// How often the reader looks at its stop flag while no message comes.
const STOP_POLL: Duration = Duration::from_millis(250);

/// A bound notify socket and its reader thread. Dropping it stops and joins the thread and
/// removes the socket file.
#[derive(Debug)]
pub(super) struct NotifySocket {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
}

impl NotifySocket {
    /// Binds `path` (replacing a socket file a dead server left there) and reads it on a thread
    /// of its own, sending what unit `unit` says to `notices`.
    ///
    /// # Errors
    /// If the socket cannot be bound (the path is too long for a socket address, say) or the
    /// thread cannot be started.
    pub(super) fn bind(
        path: &Path,
        unit: usize,
        notices: Sender<Notice>,
    ) -> io::Result<NotifySocket> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let socket = UnixDatagram::bind(path)?;
        socket.set_read_timeout(Some(STOP_POLL))?;
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("ward-notify".into())
                .spawn(move || read(&socket, unit, &notices, &stop))?
        };
        Ok(NotifySocket {
            path: path.to_owned(),
            stop,
            reader: Some(reader),
        })
    }

    /// Its path, for `$NOTIFY_SOCKET`.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(reader) = self.reader.take()
            && reader.join().is_err()
        {
            log::error!("the reader of {} panicked", self.path.display());
        }
        if let Err(e) = std::fs::remove_file(&self.path)
            && e.kind() != io::ErrorKind::NotFound
        {
            log::warn!("cannot remove {}: {e}", self.path.display());
        }
    }
}

fn read(socket: &UnixDatagram, unit: usize, notices: &Sender<Notice>, stop: &AtomicBool) {
    let mut buf = vec![0u8; MESSAGE_MAX];
    while !stop.load(Ordering::Relaxed) {
        let len = match socket.recv(&mut buf) {
            Ok(len) => len,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::error!(
                    "reading a service's notify socket: {e}; its messages are not read any more"
                );
                return;
            }
        };
        let notice = parse(unit, &buf[..len]);
        // The loop may be gone (stopping): then nobody needs the notice.
        if (notice.ready || notice.alive) && notices.send(notice).is_err() {
            return;
        }
    }
}

/// The keys of one message ward acts on; others (`STATUS=`, `STOPPING=1`, ...) are ignored.
fn parse(unit: usize, message: &[u8]) -> Notice {
    let mut notice = Notice {
        unit,
        ready: false,
        alive: false,
    };
    for line in message.split(|&b| b == b'\n') {
        match line {
            b"READY=1" => notice.ready = true,
            b"WATCHDOG=1" => notice.alive = true,
            _ => {}
        }
    }
    notice
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_may_hold_several_keys_and_others_are_ignored() {
        let n = parse(3, b"STATUS=warming up\nREADY=1\nWATCHDOG=1\n");
        assert_eq!(
            n,
            Notice {
                unit: 3,
                ready: true,
                alive: true
            }
        );
        let n = parse(0, b"READY=0\nWATCHDOG=trigger");
        assert!(!n.ready && !n.alive);
    }

    #[test]
    fn a_datagram_on_the_socket_reaches_the_channel_and_the_drop_removes_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s").join("0.notify");
        let (tx, rx) = crossbeam_channel::unbounded();
        let socket = NotifySocket::bind(&path, 7, tx).unwrap();
        let client = UnixDatagram::unbound().unwrap();
        client.send_to(b"READY=1", socket.path()).unwrap();
        let notice = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!((notice.unit, notice.ready), (7, true));
        drop(socket);
        assert!(!path.exists());
    }
}

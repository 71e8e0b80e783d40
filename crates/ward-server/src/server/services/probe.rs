//! Waiting for a started service to be ready: its check (`ready = { tcp | file | command }`)
//! tried again and again, more often at first, until it passes or the timeout is over. Not
//! here: `ready = { notify = true }`, which is a message on the notify socket (`notify`), nor
//! what follows readiness (`run`).

use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::config::Probe;

/// How long one connection attempt of a tcp check may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(200);

/// The wait before the next try, `since` the service started: a service is often ready within
/// milliseconds, and a restart's latency is what this wait adds to it (`cargo xtask bench
/// --only services` measures it); a slow starter is then asked less often.
fn interval(since: Duration) -> Duration {
    if since < Duration::from_millis(100) {
        Duration::from_millis(2)
    } else if since < Duration::from_secs(1) {
        Duration::from_millis(10)
    } else if since < Duration::from_secs(10) {
        Duration::from_millis(50)
    } else {
        Duration::from_millis(250)
    }
}

/// One service's wait for readiness, from its start until its check passes or the deadline.
/// Dropping it kills a check command still running.
#[derive(Debug)]
pub(super) struct Probing {
    started: Instant,
    deadline: Instant,
    next_at: Instant,
    /// A `command` check in flight: at most one runs at a time.
    running: Option<std::process::Child>,
}

impl Probing {
    /// A wait that began `now` and may last `timeout`.
    pub(super) fn new(now: Instant, timeout: Duration) -> Probing {
        Probing {
            started: now,
            deadline: now + timeout,
            next_at: now,
            running: None,
        }
    }

    /// When the loop must look again: the next try, or the deadline for a check that only
    /// waits for a message.
    pub(super) fn wake_at(&self, probe: &Probe) -> Instant {
        match probe {
            Probe::Notify => self.deadline,
            _ => self.next_at.min(self.deadline),
        }
    }

    /// Whether the deadline is over.
    pub(super) fn expired(&self, now: Instant) -> bool {
        now >= self.deadline
    }

    /// Tries the check if it is time to; `true` once it passed. `cwd` is where a check command
    /// runs.
    pub(super) fn try_now(&mut self, probe: &Probe, cwd: &Path, now: Instant) -> bool {
        if now < self.next_at {
            return false;
        }
        self.next_at = now + interval(now.duration_since(self.started));
        match probe {
            Probe::Notify => false,
            Probe::File(path) => path.exists(),
            Probe::Tcp(address) => accepts(address),
            Probe::Command(argv) => self.command(argv, cwd),
        }
    }

    /// A check command: started if none runs, looked at if one does; `true` when it exited
    /// with 0.
    fn command(&mut self, argv: &[String], cwd: &Path) -> bool {
        if let Some(child) = &mut self.running {
            return match child.try_wait() {
                Ok(None) => false,
                Ok(Some(status)) => {
                    self.running = None;
                    status.success()
                }
                Err(e) => {
                    log::warn!("readiness check {:?}: {e}", argv[0]);
                    self.running = None;
                    false
                }
            };
        }
        let spawned = Command::new(&argv[0])
            .args(&argv[1..])
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own group: a check that hangs is killed with whatever it started.
            .process_group(0)
            .spawn();
        match spawned {
            Ok(child) => self.running = Some(child),
            // Said once per try: a check that cannot run at all fills the log at the try's
            // pace, which slows to one line every 250 ms after 10 s.
            Err(e) => log::warn!("readiness check {:?} cannot run: {e}", argv[0]),
        }
        false
    }
}

impl Drop for Probing {
    fn drop(&mut self) {
        if let Some(mut child) = self.running.take() {
            // SAFETY: kill has no memory-safety preconditions; the group is the check's own
            // (`process_group(0)`), and the child is not reaped yet, so its id is still ours.
            unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
            if let Err(e) = child.wait() {
                log::warn!("reaping a readiness check: {e}");
            }
        }
    }
}

/// Whether something accepts a connection at `address` (`host:port`, each address the name
/// resolves to tried in turn).
fn accepts(address: &str) -> bool {
    let Ok(addresses) = address.to_socket_addrs() else {
        return false;
    };
    addresses
        .into_iter()
        .any(|a| TcpStream::connect_timeout(&a, CONNECT_TIMEOUT).is_ok())
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    #[test]
    fn a_tcp_check_passes_while_a_listener_is_there_and_not_before_its_interval() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let probe = Probe::Tcp(listener.local_addr().unwrap().to_string());
        let now = Instant::now();
        let mut probing = Probing::new(now, Duration::from_secs(60));
        assert!(probing.try_now(&probe, Path::new("/"), now));
        // Nobody listens any more: refused. (The port is not bound again in between: binding
        // a port just released could race another test's connect for it.)
        drop(listener);
        let mut probing = Probing::new(now, Duration::from_secs(60));
        assert!(!probing.try_now(&probe, Path::new("/"), now));
        // The next try waits for its interval, whatever would come of it.
        assert!(!probing.try_now(&probe, Path::new("/"), now + Duration::from_millis(1)));
        assert_eq!(probing.next_at, now + Duration::from_millis(2));
    }

    #[test]
    fn a_command_check_passes_when_the_command_exits_with_0() {
        let dir = tempfile::tempdir().unwrap();
        let probe = Probe::Command(vec!["test".into(), "-e".into(), "flag".into()]);
        let mut probing = Probing::new(Instant::now(), Duration::from_secs(60));
        // One try starts the command, the next reads how it exited.
        let tries = |probing: &mut Probing| {
            probing.next_at = Instant::now();
            assert!(!probing.try_now(&probe, dir.path(), Instant::now()));
            let running = probing.running.as_mut().expect("the check runs");
            running.wait().unwrap();
            probing.next_at = Instant::now();
            probing.try_now(&probe, dir.path(), Instant::now())
        };
        assert!(!tries(&mut probing), "no flag yet");
        std::fs::write(dir.path().join("flag"), "").unwrap();
        assert!(tries(&mut probing));
    }

    #[test]
    fn the_deadline_is_the_wakeup_of_a_notify_check() {
        let now = Instant::now();
        let probing = Probing::new(now, Duration::from_secs(5));
        assert_eq!(
            probing.wake_at(&Probe::Notify),
            now + Duration::from_secs(5)
        );
        assert_eq!(probing.wake_at(&Probe::File("/x".into())), now);
        assert!(!probing.expired(now));
        assert!(probing.expired(now + Duration::from_secs(5)));
    }
}

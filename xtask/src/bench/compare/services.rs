//! The `services` part: a SIGKILL of a service → its replacement ready, ward (`restart =
//! "always"`, zero backoff, a tcp readiness check) against the same loop done by hand: kill,
//! reap, spawn the same server again, poll its port. The service is `ward-bench-probe listen`,
//! which listens first thing, so that the figures are the restart and the readiness check, not
//! a program's start.
//!
//! What "ready" is on each side, and why the two compare:
//! - ward: the `status` request (what `ward status` asks, on one control connection kept open)
//!   says the service is `running`, its tcp check passed, with a pid other than the killed one's;
//!   asked every 1 ms, so the look adds up to 1 ms and a round trip that the plain loop does not
//!   pay.
//! - the plain loop: its own connect to the port succeeds, tried at once after the spawn and then
//!   every 2 ms, the schedule of ward's check during a service's first 100 ms (`probe.rs` in
//!   ward-server): the same polling on both sides. ward's first try comes after the start's
//!   event has reached its services' loop, late enough that this listener is often up already,
//!   while the plain loop's try right after the spawn never finds it up: ward's figure is
//!   bimodal (ready at the first try, or 2 ms later) and can come out below the plain loop's.
//!   The part prints, from ward's log, at which try its check passed.
//!
//! A second row leaves the check out: kill → the replacement accepts on its port, tried by the
//! bench every 1 ms on both sides (ward's restart path alone against kill, wait and spawn).
//! Rounds alternate ward and the plain loops, so that a change of the machine's load hits both.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::super::debug_duration_ms;
use super::super::report::Row;
use super::{Owned, Tools, Ward, percentile};

/// ward's readiness tries during a service's first second (`interval` in ward-server's
/// `probe.rs`); the plain loop tries its port on the same schedule.
const CHECK_INTERVAL: Duration = Duration::from_millis(2);

/// How often the bench itself looks: at a port, at ward's status.
const LOOK_INTERVAL: Duration = Duration::from_millis(1);

/// The bound of every wait.
const LIMIT: Duration = Duration::from_secs(20);

/// The service's name in ward's config.
const NAME: &str = "listener";

/// Two loopback addresses with ports free now (both held while the second is found, so that
/// they differ).
fn free_addresses() -> Result<(SocketAddr, SocketAddr)> {
    let a = TcpListener::bind("127.0.0.1:0")?;
    let b = TcpListener::bind("127.0.0.1:0")?;
    Ok((a.local_addr()?, b.local_addr()?))
}

/// Whether something accepts a connection at `address` (refused at once when nothing listens).
fn accepts(address: SocketAddr) -> bool {
    TcpStream::connect(address).is_ok()
}

fn ms_since(t0: Instant) -> f64 {
    t0.elapsed().as_secs_f64() * 1e3
}

/// Median and 90th percentile.
fn p50_p90(mut values: Vec<f64>) -> Vec<f64> {
    values.sort_by(f64::total_cmp);
    vec![percentile(&values, 0.5), percentile(&values, 0.9)]
}

/// ward's control socket, one connection kept across requests (a new one after an error).
struct Control {
    socket: PathBuf,
    conn: Option<BufReader<UnixStream>>,
}

impl Control {
    fn new(state: &Path) -> Control {
        Control {
            socket: state.join("ward.sock"),
            conn: None,
        }
    }

    fn ask_status(&mut self) -> Result<Value> {
        if self.conn.is_none() {
            self.conn = Some(BufReader::new(UnixStream::connect(&self.socket)?));
        }
        let conn = self.conn.as_mut().context("no control connection")?;
        conn.get_mut()
            .write_all(b"{\"cmd\":\"status\",\"v\":1}\n")?;
        let mut line = String::new();
        if conn.read_line(&mut line)? == 0 {
            bail!("ward closed the control connection");
        }
        let reply: Value = serde_json::from_str(&line)?;
        if reply["ok"] != true {
            bail!("status refused: {line}");
        }
        Ok(reply)
    }

    /// The service's state and pid, as `ward status` shows them.
    fn service(&mut self) -> Result<(String, Option<u32>)> {
        let reply = match self.ask_status() {
            Ok(reply) => reply,
            // A connection closed while idle (5 s) is not an error: ask again on a new one.
            Err(_) => {
                self.conn = None;
                self.ask_status()?
            }
        };
        let service = &reply["services"][0];
        let state = service["state"]
            .as_str()
            .with_context(|| format!("no service in ward's status: {reply}"))?;
        Ok((state.to_owned(), service["pid"].as_u64().map(|p| p as u32)))
    }

    /// Waits (bounded) until the service runs, its check passed; its pid.
    fn wait_running(&mut self) -> Result<u32> {
        let t0 = Instant::now();
        loop {
            let (state, pid) = self.service()?;
            if state == "running"
                && let Some(pid) = pid
            {
                return Ok(pid);
            }
            if t0.elapsed() > LIMIT {
                bail!("service {NAME} not running after {LIMIT:?}");
            }
            sleep(LOOK_INTERVAL);
        }
    }
}

/// A process's pidfd: its kill reaches that process and no other, and its death can be waited
/// for without polling.
struct Pidfd(OwnedFd);

impl Pidfd {
    fn open(pid: u32) -> Result<Pidfd> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("pidfd_open");
        }
        // SAFETY: the descriptor was just made and nothing else owns it.
        Ok(Pidfd(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
    }

    fn kill(&self) -> Result<()> {
        // SAFETY: a pidfd we own, a signal number, no siginfo, no flags.
        let sent = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.0.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if sent != 0 {
            return Err(std::io::Error::last_os_error()).context("pidfd_send_signal");
        }
        Ok(())
    }

    /// Waits (at most `limit`) until the process is dead, its descriptors (its listening socket)
    /// closed.
    fn wait_dead(&self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let mut fds = libc::pollfd {
                fd: self.0.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let left = deadline.saturating_duration_since(Instant::now());
            // SAFETY: one valid pollfd, its count, a timeout.
            let ready = unsafe { libc::poll(&mut fds, 1, left.as_millis() as libc::c_int) };
            match ready {
                1 => return Ok(()),
                0 => bail!("the killed service is still alive after {limit:?}"),
                _ => {
                    let e = std::io::Error::last_os_error();
                    if e.kind() != std::io::ErrorKind::Interrupted {
                        return Err(e).context("poll on a pidfd");
                    }
                }
            }
        }
    }
}

/// One ward round: SIGKILL of the service's process; (kill → the replacement accepts, kill →
/// ward says it runs), in ms.
fn ward_round(control: &mut Control, address: SocketAddr) -> Result<(f64, f64)> {
    let old = control.wait_running()?;
    let pidfd = Pidfd::open(old)?;
    let t0 = Instant::now();
    pidfd.kill()?;
    // Until the killed one is gone, a connection could be its.
    pidfd.wait_dead(LIMIT)?;
    let (mut accepted, mut running) = (None, None);
    loop {
        if accepted.is_none() && accepts(address) {
            accepted = Some(ms_since(t0));
        }
        if running.is_none() {
            let (state, pid) = control.service()?;
            if state == "running" && pid.is_some_and(|p| p != old) {
                running = Some(ms_since(t0));
            }
        }
        if let (Some(accepted), Some(running)) = (accepted, running) {
            return Ok((accepted, running));
        }
        if t0.elapsed() > LIMIT {
            bail!("no replacement of service {NAME} ready {LIMIT:?} after its kill");
        }
        sleep(LOOK_INTERVAL);
    }
}

/// The same server run by hand: SIGKILLed, reaped and spawned again, its port polled.
struct PlainLoop {
    probe: PathBuf,
    address: SocketAddr,
    child: Option<Owned>,
}

impl PlainLoop {
    /// Starts the server and waits until it accepts.
    fn start(tools: &Tools, address: SocketAddr) -> Result<PlainLoop> {
        let mut plain = PlainLoop {
            probe: tools.probe.clone(),
            address,
            child: None,
        };
        plain.round(LOOK_INTERVAL)?;
        Ok(plain)
    }

    /// Kill (of the running one, if any) → the replacement accepts, its port tried at once after
    /// the spawn and then every `interval`; in ms.
    fn round(&mut self, interval: Duration) -> Result<f64> {
        let mut cmd = Command::new(&self.probe);
        cmd.arg("listen")
            .arg(self.address.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let t0 = Instant::now();
        // Owned's drop: SIGKILL, then wait.
        drop(self.child.take());
        self.child = Some(Owned::start(&mut cmd)?);
        loop {
            if accepts(self.address) {
                return Ok(ms_since(t0));
            }
            if t0.elapsed() > LIMIT {
                bail!("the plain loop's server does not accept after {LIMIT:?}");
            }
            sleep(interval);
        }
    }
}

/// ward's own start → ready of each start of the service, from its log's "is ready, X after its
/// start" lines, in ms.
fn ready_after_start(state: &Path) -> Vec<f64> {
    let log = std::fs::read_to_string(state.join("ward.log")).unwrap_or_default();
    let marker = format!("service {NAME} is ready, ");
    log.lines()
        .filter_map(|line| {
            let rest = &line[line.find(&marker)? + marker.len()..];
            debug_duration_ms(rest.split_whitespace().next()?.trim_end_matches(','))
        })
        .collect()
}

/// Measures a service's crash → replacement ready in ward and in a plain loop, round by round,
/// and adds their rows.
pub(crate) fn run(tools: &Tools, rows: &mut Vec<Row>) -> Result<()> {
    let rounds = if tools.quick { 15 } else { 50 };
    let dir = tools.dir("services")?;
    let (ward_address, plain_address) = free_addresses()?;
    let ward = Ward::new(
        tools,
        &dir,
        &format!(
            "\n[[service]]\nname = \"{NAME}\"\ncommand = [{:?}, \"listen\", \"{ward_address}\"]\n\
             ready = {{ tcp = \"{ward_address}\", timeout_s = 30 }}\n\
             policy = \"pm2\"\nrestart = \"always\"\nbackoff_s = 0\n",
            tools.probe(),
        ),
    )?;
    ward.start()?;
    let mut control = Control::new(&dir.join("state"));
    let mut plain = PlainLoop::start(tools, plain_address)?;
    println!(
        "services: {rounds} rounds of SIGKILL → replacement ready, ward and a plain loop in turn ..."
    );
    // ward: kill → accepts, kill → status running; plain: its check every 2 ms, every 1 ms.
    let mut figures: [Vec<f64>; 4] = Default::default();
    for round in 0..rounds {
        if round % 2 == 1 {
            figures[2].push(plain.round(CHECK_INTERVAL)?);
            figures[3].push(plain.round(LOOK_INTERVAL)?);
        }
        let (accepted, running) = ward_round(&mut control, ward_address)?;
        figures[0].push(accepted);
        figures[1].push(running);
        if round % 2 == 0 {
            figures[2].push(plain.round(CHECK_INTERVAL)?);
            figures[3].push(plain.round(LOOK_INTERVAL)?);
        }
    }
    control.wait_running()?;
    ward.stop()?;
    drop(plain);
    // The first is the service's first start, not a replacement's.
    let checks: Vec<f64> = ready_after_start(&dir.join("state"))
        .into_iter()
        .skip(1)
        .collect();
    let at_first_try = checks
        .iter()
        .filter(|&&ms| ms < CHECK_INTERVAL.as_secs_f64() * 1e3 / 2.0)
        .count();
    let restarts = checks.len();
    let checks = p50_p90(checks);
    let [ward_accepts, ward_ready, plain_ready, plain_accepts] = figures.map(p50_p90);
    let met = ward_ready[0] <= 1.5 * plain_ready[0];
    println!(
        "services: kill → ready p50/p90: ward {:.2}/{:.2} ms (by its log, its check passed {:.2}/{:.2} ms after the replacement's start, at its first try in {at_first_try} of {restarts}), plain loop {:.2}/{:.2} ms: {:.2}× (goal ≤ 1.5×: {})",
        ward_ready[0],
        ward_ready[1],
        checks[0],
        checks[1],
        plain_ready[0],
        plain_ready[1],
        ward_ready[0] / plain_ready[0],
        if met { "met" } else { "NOT met" }
    );
    println!(
        "services: kill → accepts p50/p90: ward {:.2}/{:.2} ms, plain loop {:.2}/{:.2} ms",
        ward_accepts[0], ward_accepts[1], plain_accepts[0], plain_accepts[1]
    );
    rows.push(
        Row::new(
            "services",
            format!(
                "service SIGKILL → replacement ready (tcp check), zero backoff, p50/p90 of {rounds}"
            ),
            "ms",
        )
        .ward(ward_ready)
        .anchor(
            "plain kill+wait+spawn loop, port tried at once then every 2 ms as ward's check",
            plain_ready,
        )
        .target("≤ 1.5×", met),
    );
    rows.push(
        Row::new(
            "services",
            format!(
                "service SIGKILL → replacement accepts (tried every 1 ms), p50/p90 of {rounds}"
            ),
            "ms",
        )
        .ward(ward_accepts)
        .anchor("plain kill+wait+spawn loop", plain_accepts),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_lines_of_the_log_are_read_in_ms() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("ward.log"),
            "2026-12-06T11:19:52.938Z INFO  [10230 server] service listener started, pid 10247\n\
             2026-12-06T11:19:52.938Z INFO  [10230 server] service listener is ready, 30.395µs after its start\n\
             2026-12-06T11:19:52.950Z INFO  [10230 server] service other is ready, 1s after its start\n\
             2026-12-06T11:19:52.964Z INFO  [10230 server] service listener is ready, 10.011722ms after its start\n",
        )
        .unwrap();
        let ready = ready_after_start(dir.path());
        assert_eq!(ready.len(), 2, "{ready:?}");
        assert!((ready[0] - 0.030395).abs() < 1e-9);
        assert!((ready[1] - 10.011722).abs() < 1e-9);
        assert_eq!(p50_p90(vec![3.0, 1.0, 2.0]), vec![2.0, 3.0]);
    }
}

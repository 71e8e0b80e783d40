//! The control socket: JSON lines over a Unix socket in the state directory.
//!
//! One request per line, one reply per request: `{"cmd":"status"}` → `{"ok":true,...}`. A malformed,
//! unknown or oversized request gets `{"ok":false,"error":"..."}` and the connection stays usable;
//! nothing a client sends can hurt the server. Connections are served one at a time by one thread:
//! requests are tiny, and a bound on threads is worth more than concurrency here.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{Value, json};

use crate::Error;

/// Longest request line accepted; longer ones are answered with an error and skipped.
pub const MAX_REQUEST: usize = 64 * 1024;
/// A client that sends nothing for this long is disconnected.
const IDLE_TIMEOUT: Duration = Duration::from_secs(5);

/// Answers one parsed request; returns the reply object (without `ok`, which is added).
pub type Handler = dyn Fn(&str, &Value) -> Result<Value, String> + Send + Sync;

/// A listening control socket and the thread that serves it; dropping it stops the thread,
/// joins it and removes the socket file.
#[derive(Debug)]
pub struct ControlSocket {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    /// The listening socket's descriptor, owned by the thread; `Drop` shuts it down to wake the
    /// thread's blocking `accept` (valid until the thread is joined).
    listener_fd: RawFd,
    thread: Option<JoinHandle<()>>,
}

impl ControlSocket {
    /// Binds `path` (mode 0600), replacing a socket file left by a dead server, and serves it.
    ///
    /// # Errors
    /// If the socket cannot be bound.
    pub fn bind(path: &Path, handler: Arc<Handler>) -> Result<ControlSocket, Error> {
        let io = |e: io::Error| Error::Io {
            context: format!("control socket {}", path.display()),
            source: e,
        };
        // Only one server runs per state dir (the keeper's pidfile lock says so), so a socket
        // file that exists here was left by a dead one.
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io(e)),
            _ => {}
        }
        let listener = UnixListener::bind(path).map_err(io)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        let listener_fd = listener.as_raw_fd();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("ward-control".into())
                .spawn(move || serve(&listener, &stop, &*handler))
                .map_err(io)?
        };
        Ok(ControlSocket {
            path: path.to_path_buf(),
            stop,
            listener_fd,
            thread: Some(thread),
        })
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // On Linux, shutting a listening socket down makes a blocked accept() return at once.
        // SAFETY: the descriptor is the listener's, which the thread keeps open until it is
        // joined just below; shutdown touches no memory.
        unsafe { libc::shutdown(self.listener_fd, libc::SHUT_RDWR) };
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            log::error!("control socket thread panicked");
        }
        if let Err(e) = std::fs::remove_file(&self.path)
            && e.kind() != io::ErrorKind::NotFound
        {
            log::warn!("cannot remove control socket {}: {e}", self.path.display());
        }
    }
}

fn serve(listener: &UnixListener, stop: &AtomicBool, handler: &Handler) {
    // A blocking accept: an idle server must not wake up for nobody. `Drop` wakes it.
    while !stop.load(Ordering::Acquire) {
        match listener.accept() {
            Ok((stream, _)) => {
                if let Err(e) = serve_connection(stream, stop, handler) {
                    log::debug!("control connection ended: {e}");
                }
            }
            Err(_) if stop.load(Ordering::Acquire) => break,
            Err(e) => {
                log::warn!("control socket accept failed: {e}");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

fn serve_connection(stream: UnixStream, stop: &AtomicBool, handler: &Handler) -> io::Result<()> {
    stream.set_read_timeout(Some(IDLE_TIMEOUT))?;
    stream.set_write_timeout(Some(IDLE_TIMEOUT))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    while !stop.load(Ordering::Acquire) {
        line.clear();
        let n = (&mut reader)
            .take(MAX_REQUEST as u64 + 1)
            .read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(());
        }
        let reply = if line.len() > MAX_REQUEST && !line.ends_with(b"\n") {
            skip_line(&mut reader)?;
            error_reply(format!("request longer than {MAX_REQUEST} bytes"))
        } else {
            answer(&line, handler)
        };
        let mut out = serde_json::to_vec(&reply).unwrap_or_else(|_| b"{\"ok\":false}".to_vec());
        out.push(b'\n');
        writer.write_all(&out)?;
    }
    Ok(())
}

/// Reads and discards the rest of an oversized line.
fn skip_line(reader: &mut impl BufRead) -> io::Result<()> {
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok(());
        }
        if let Some(nl) = buf.iter().position(|&b| b == b'\n') {
            reader.consume(nl + 1);
            return Ok(());
        }
        let len = buf.len();
        reader.consume(len);
    }
}

fn answer(line: &[u8], handler: &Handler) -> Value {
    let request: Value = match serde_json::from_slice(line) {
        Ok(v) => v,
        Err(e) => return error_reply(format!("malformed request: {e}")),
    };
    let Some(cmd) = request.get("cmd").and_then(Value::as_str) else {
        return error_reply("request has no \"cmd\" string".into());
    };
    match handler(cmd, &request) {
        Ok(Value::Object(mut map)) => {
            map.insert("ok".into(), Value::Bool(true));
            Value::Object(map)
        }
        Ok(other) => json!({ "ok": true, "result": other }),
        Err(e) => error_reply(e),
    }
}

fn error_reply(error: String) -> Value {
    json!({ "ok": false, "error": error })
}

/// Sends one request to the control socket at `path` and returns the reply.
///
/// # Errors
/// If the socket cannot be reached, the reply does not come within `timeout`, or it is not JSON.
pub fn request(path: &Path, request: &Value, timeout: Duration) -> Result<Value, Error> {
    let io = |e: io::Error| Error::Io {
        context: format!("control socket {}", path.display()),
        source: e,
    };
    let mut stream = UnixStream::connect(path).map_err(io)?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let mut line = serde_json::to_vec(request).map_err(|e| Error::Protocol(e.to_string()))?;
    line.push(b'\n');
    stream.write_all(&line).map_err(io)?;
    let mut reply = Vec::new();
    BufReader::new(stream)
        .take(16 * 1024 * 1024)
        .read_until(b'\n', &mut reply)
        .map_err(io)?;
    serde_json::from_slice(&reply)
        .map_err(|e| Error::Protocol(format!("reply from {}: {e}", path.display())))
}

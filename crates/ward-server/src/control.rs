//! The control socket's transport: JSON lines over a Unix socket in the state directory.
//!
//! One request per line, one reply per request: `{"cmd":"status"}` → `{"ok":true,...}`; the
//! requests and replies are the types of [`crate::protocol`]. A malformed, unknown or oversized
//! request gets `{"ok":false,"error":"..."}` and the connection stays usable; nothing a client
//! sends can hurt the server or hold up another client.
//!
//! # Theory of operation
//! One thread accepts connections (a blocking `accept`: an idle server does not wake up for
//! nobody) and each connection is served by a thread of its own, so an idle or slow client delays
//! nobody else. What a client can hold is bounded (`Limits::DEFAULT` has the figures): the
//! connections open at once (one more is told so in an error line and closed), the time a
//! connection may sit idle between requests, and the time a request line has to arrive whole
//! from its first byte, however steadily it trickles in (its reply must be taken as quickly).
//! A request that keeps its connection (`subscribe`, [`Request::is_stream`]) is handed to the
//! [`Streamer`] given at the bind, on the connection's thread, which writes its lines until it is
//! done; the connection then closes. Its lines have [`STREAM_STALL`] to be taken, not the
//! request bound: a subscriber reads at its own pace.
//! The socket owns the accepting thread, which owns the connections' threads: dropping
//! [`ControlSocket`] shuts every connection down, which ends their blocking reads and writes at
//! once, and joins every thread.
//!
//! It deliberately does not multiplex connections on one thread: requests are small and rare, and
//! a bounded number of threads blocked in `read` is simpler than a poll loop that must also keep
//! each client's partial request, pending reply and deadlines.
//!
//! A socket address holds a path of at most 107 bytes, and a state directory can be deeper than
//! that. The socket stays at its path, where the 0700 directory guards it and clients look for
//! it; a path too long is bound and reached through `/proc/self/fd/<fd>/ward.sock`, `fd` the
//! directory opened with `O_PATH`, which the kernel resolves to that very directory (the private
//! `SocketAddress`). A socket elsewhere (`$XDG_RUNTIME_DIR`, found through a pointer file) would
//! depend on an environment that a shell, a cron job and a service do not share, and be a second
//! file to guard and clean up; an abstract socket would have no file permissions at all.

use std::fs::OpenOptions;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use crate::Error;
use crate::protocol::{self, Reply, Request};

/// Longest request line accepted; longer ones are answered with an error and skipped.
pub const MAX_REQUEST: usize = 64 * 1024;

/// Answers one request: its reply, or why it is refused.
pub type Handler = dyn Fn(Request) -> Result<Reply, String> + Send + Sync;

/// Serves a request that keeps its connection ([`Request::is_stream`]: `subscribe`): writes its
/// lines through the [`Emit`] until it is done, the client is gone or the server stops; the
/// connection is closed after it.
pub type Streamer = dyn Fn(Request, &mut dyn Emit) + Send + Sync;

/// Where a [`Streamer`] writes.
pub trait Emit {
    /// Writes `line` (newline included). Fails once the client is gone, or has taken nothing
    /// for [`STREAM_STALL`].
    ///
    /// # Errors
    /// As said: the stream must end.
    fn line(&mut self, line: &[u8]) -> io::Result<()>;
    /// Whether the client has closed its end or the server is stopping.
    fn gone(&mut self) -> bool;
}

/// How long a subscriber may take nothing of a line before its connection is closed: a reader
/// that is slow is served at its pace, one that is stuck holds a connection no longer than this.
pub const STREAM_STALL: Duration = Duration::from_secs(60);

/// What a connection's requests are handed to.
struct Handlers {
    answer: Arc<Handler>,
    stream: Option<Arc<Streamer>>,
}

/// What the control socket lets its clients hold.
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// Connections open at once; one more is refused with an error line.
    connections: usize,
    /// A connection with no request under way is closed after this long.
    idle: Duration,
    /// A request line must be complete this long after its first byte, and a reply taken by
    /// the client within as long.
    request: Duration,
}

impl Limits {
    /// Requests are a line of JSON from a local client, answered in well under a second.
    const DEFAULT: Limits = Limits {
        connections: 32,
        idle: Duration::from_secs(5),
        request: Duration::from_secs(5),
    };
}

/// The longest path a socket address holds, with the NUL that ends it (`sun_path`'s size).
const SUN_PATH: usize = size_of::<libc::sockaddr_un>() - size_of::<libc::sa_family_t>();

/// The path a socket file is bound and reached by: its own when a socket address holds it, else
/// an alias through its directory, held open while the alias is used.
#[derive(Debug)]
struct SocketAddress {
    /// The directory `/proc/self/fd/<fd>/` names; the alias means nothing once it is closed.
    _dir: Option<OwnedFd>,
    path: PathBuf,
}

impl SocketAddress {
    /// The address of the socket file at `path`: `path` itself if it is short enough, else
    /// `/proc/self/fd/<fd>/<file name>`, `fd` the directory opened with `O_PATH` (no read
    /// permission needed, and closed on exec: the server's children never see it).
    fn of(path: &Path) -> io::Result<SocketAddress> {
        let direct = || SocketAddress {
            _dir: None,
            path: path.to_path_buf(),
        };
        if path.as_os_str().len() < SUN_PATH {
            return Ok(direct());
        }
        let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
            // Nothing shorter to say; binding or connecting says why it fails.
            return Ok(direct());
        };
        let dir = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
            .open(dir)?;
        let alias = Path::new("/proc/self/fd")
            .join(dir.as_raw_fd().to_string())
            .join(name);
        Ok(SocketAddress {
            _dir: Some(dir.into()),
            path: alias,
        })
    }

    fn as_path(&self) -> &Path {
        &self.path
    }
}

/// A listening control socket and the thread that serves it; dropping it stops every thread of
/// the socket, joins them and removes the socket file.
#[derive(Debug)]
pub struct ControlSocket {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    /// The listening socket's descriptor, owned by the thread; `Drop` shuts it down to wake the
    /// thread's blocking `accept` (valid until the thread is joined).
    listener_fd: RawFd,
    /// The accepting thread, which owns the connections' threads and joins them as it ends.
    thread: Option<JoinHandle<()>>,
}

impl ControlSocket {
    /// Binds `path` (mode 0600), replacing a socket file left by a dead server, and serves it.
    ///
    /// # Errors
    /// If the socket cannot be bound.
    pub fn bind(path: &Path, handler: Arc<Handler>) -> Result<ControlSocket, Error> {
        ControlSocket::bind_streaming(path, handler, None)
    }

    /// [`bind`](Self::bind), with `stream` serving the requests that keep their connection
    /// (without it they are refused).
    ///
    /// # Errors
    /// If the socket cannot be bound.
    pub fn bind_streaming(
        path: &Path,
        handler: Arc<Handler>,
        stream: Option<Arc<Streamer>>,
    ) -> Result<ControlSocket, Error> {
        let handlers = Handlers {
            answer: handler,
            stream,
        };
        ControlSocket::bind_with(path, Arc::new(handlers), Limits::DEFAULT)
    }

    fn bind_with(
        path: &Path,
        handler: Arc<Handlers>,
        limits: Limits,
    ) -> Result<ControlSocket, Error> {
        let io = |e: io::Error| Error::io(format!("control socket {}", path.display()), e);
        // Replaced, bound and closed to others in the one directory the address names.
        let address = SocketAddress::of(path).map_err(io)?;
        // Only one server runs per state dir (the keeper's pidfile lock says so), so a socket
        // file that exists here was left by a dead one.
        match std::fs::remove_file(address.as_path()) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io(e)),
            _ => {}
        }
        let listener = UnixListener::bind(address.as_path()).map_err(io)?;
        std::fs::set_permissions(address.as_path(), std::fs::Permissions::from_mode(0o600))
            .map_err(io)?;
        drop(address);
        let listener_fd = listener.as_raw_fd();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("ward-control".into())
                .spawn(move || serve(&listener, &stop, &handler, limits))
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
        // The accepting thread shuts its connections down and joins them before it ends.
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            log::error!("control socket thread panicked");
        }
        // Only a socket address is short; unlink takes a path of any length.
        if let Err(e) = std::fs::remove_file(&self.path)
            && e.kind() != io::ErrorKind::NotFound
        {
            log::warn!("cannot remove control socket {}: {e}", self.path.display());
        }
    }
}

/// The accepting thread's loop: it owns the connections it accepted, and ends them all when the
/// socket is dropped.
fn serve(listener: &UnixListener, stop: &Arc<AtomicBool>, handler: &Arc<Handlers>, limits: Limits) {
    let mut connections: Vec<Connection> = Vec::with_capacity(limits.connections);
    // Connections refused since the bound was last hit, while a burst lasts (see `refuse`).
    let mut refused: Option<u64> = None;
    // Failed accepts in a row: the first is logged, and the count once one succeeds.
    let mut failed: u64 = 0;
    // A blocking accept: an idle server must not wake up for nobody. `Drop` wakes it.
    while !stop.load(Ordering::Acquire) {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(_) if stop.load(Ordering::Acquire) => break,
            Err(e) => {
                if failed == 0 {
                    log::warn!("control socket accept failed: {e}");
                }
                failed += 1;
                // Out of descriptors, most likely: give the open connections time to end.
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
        };
        if failed > 0 {
            log::info!("control socket accepting again after {failed} failed accept(s)");
            failed = 0;
        }
        // Finished connections are reaped here, at the next accept: until then at most the bound
        // of them wait, each with a descriptor and its thread's stack. Dropping one joins its
        // thread, which is done already.
        connections.retain(|c| !c.is_finished());
        let open = connections.len();
        if open >= limits.connections {
            refuse(stream, open, &mut refused);
            continue;
        }
        // A burst ends once the open connections are down to half the bound, so that clients
        // churning at the bound make one warning, not one per slot freed.
        if let Some(count) = refused
            && open <= limits.connections / 2
        {
            log::info!(
                "control socket: {count} connection(s) refused while {} were open",
                limits.connections
            );
            refused = None;
        }
        match Connection::spawn(stream, stop, handler, limits) {
            Ok(connection) => connections.push(connection),
            Err(e) => log::warn!("cannot serve a control connection: {e}"),
        }
    }
    // Shut every connection down first, so that their threads end together, then join them.
    for connection in &connections {
        connection.shut_down();
    }
    drop(connections);
}

/// Tells a client past the bound why it is turned away, and closes its connection; the first
/// refusal of a burst is logged, the others are counted in `refused`.
fn refuse(stream: UnixStream, open: usize, refused: &mut Option<u64>) {
    let error = format!("too many control connections ({open} open)");
    let line = protocol::refusal_line(error.clone());
    // A new connection's send buffer is empty, so this line fits; never wait for the client.
    let _ = stream
        .set_nonblocking(true)
        .and_then(|()| (&stream).write_all(&line));
    match refused {
        Some(count) => *count += 1,
        None => {
            log::warn!("control socket: {error}; refusing new connections until some close");
            *refused = Some(1);
        }
    }
}

/// A connection being served and the thread serving it; dropping it shuts the connection down
/// and joins the thread.
struct Connection {
    /// A second handle on the connection's socket: shutting it down ends the thread's blocking
    /// read or write at once.
    socket: UnixStream,
    thread: Option<JoinHandle<()>>,
}

impl Connection {
    /// Serves `stream` on a thread of its own.
    fn spawn(
        stream: UnixStream,
        stop: &Arc<AtomicBool>,
        handler: &Arc<Handlers>,
        limits: Limits,
    ) -> io::Result<Connection> {
        let socket = stream.try_clone()?;
        let (stop, handler) = (Arc::clone(stop), Arc::clone(handler));
        let thread = std::thread::Builder::new()
            .name("ward-control-conn".into())
            .spawn(move || {
                if let Err(e) = serve_connection(&stream, &stop, &handler, limits) {
                    log::debug!("control connection ended: {e}");
                }
                // The client sees the end now, not when the accepting thread drops the socket's
                // other handle.
                let _ = stream.shutdown(Shutdown::Both);
            })?;
        Ok(Connection {
            socket,
            thread: Some(thread),
        })
    }

    fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Ends the connection; its thread then finishes the request it is answering, if any.
    fn shut_down(&self) {
        // It fails only if the client is gone already, which is as good.
        let _ = self.socket.shutdown(Shutdown::Both);
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.shut_down();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            log::error!("control connection thread panicked");
        }
    }
}

/// What a connection's next request line turned out to be.
#[derive(Debug, PartialEq)]
enum Incoming {
    /// A complete line (without its newline), or what came before the client closed its end.
    Line,
    /// A line longer than [`MAX_REQUEST`], read through its end and discarded.
    TooLong,
    /// The client closed its end between requests.
    Closed,
    /// No request began within the idle timeout.
    Idle,
    /// A request began but was not complete by its deadline.
    Late,
}

fn serve_connection(
    stream: &UnixStream,
    stop: &AtomicBool,
    handler: &Handlers,
    limits: Limits,
) -> io::Result<()> {
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    while !stop.load(Ordering::Acquire) {
        let reply = match read_request(&mut reader, &mut line, limits)? {
            Incoming::Line => match Request::from_line(&line) {
                Ok(request) if request.is_stream() => {
                    let Some(streamer) = &handler.stream else {
                        let refusal = protocol::refusal_line(format!(
                            "{} is not served on this socket",
                            request.name()
                        ));
                        write_reply(stream, &refusal, limits.request)?;
                        continue;
                    };
                    let mut out = StreamOut { stream, stop };
                    let what = request.name();
                    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        streamer(request, &mut out);
                    }))
                    .is_err()
                    {
                        log::error!(
                            "a {what} stream panicked (see the log); its connection is closed"
                        );
                    }
                    return Ok(());
                }
                Ok(request) => answer(request, &*handler.answer),
                Err(e) => protocol::refusal_line(e),
            },
            Incoming::TooLong => {
                protocol::refusal_line(format!("request longer than {MAX_REQUEST} bytes"))
            }
            Incoming::Closed | Incoming::Idle => return Ok(()),
            Incoming::Late => {
                let error = format!("request not complete within {:?}", limits.request);
                return write_reply(stream, &protocol::refusal_line(error), limits.request);
            }
        };
        write_reply(stream, &reply, limits.request)?;
    }
    Ok(())
}

/// Writes the `reply` line, which the client must take within `limit`, however steadily it
/// reads: a client that does not read its replies holds a connection no longer than one that
/// does not finish its requests.
fn write_reply(mut stream: &UnixStream, out: &[u8], limit: Duration) -> io::Result<()> {
    let deadline = Instant::now() + limit;
    let mut rest = out;
    while !rest.is_empty() {
        let wait = deadline.saturating_duration_since(Instant::now());
        if wait.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("reply not taken within {limit:?}"),
            ));
        }
        stream.set_write_timeout(Some(wait))?;
        match stream.write(rest) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => rest = &rest[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads the next request line into `line` (cleared first, at most [`MAX_REQUEST`] bytes kept).
///
/// Until its first byte the connection is idle and waits up to `limits.idle`; from that byte on,
/// the line must be complete within `limits.request`, whatever the pace of what follows.
fn read_request(
    reader: &mut BufReader<&UnixStream>,
    line: &mut Vec<u8>,
    limits: Limits,
) -> io::Result<Incoming> {
    line.clear();
    let mut deadline: Option<Instant> = None;
    let mut too_long = false;
    loop {
        // Only a read of the socket waits; each gets what is left of the current bound.
        if reader.buffer().is_empty() {
            let wait = match deadline {
                None => limits.idle,
                Some(deadline) => deadline.saturating_duration_since(Instant::now()),
            };
            if wait.is_zero() {
                return Ok(Incoming::Late);
            }
            reader.get_ref().set_read_timeout(Some(wait))?;
        }
        let buf = match reader.fill_buf() {
            Ok(buf) => buf,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(if deadline.is_some() {
                    Incoming::Late
                } else {
                    Incoming::Idle
                });
            }
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            // The client closed its end: what it sent before is a request of its own.
            return Ok(match deadline {
                None => Incoming::Closed,
                Some(_) if too_long => Incoming::TooLong,
                Some(_) => Incoming::Line,
            });
        }
        deadline.get_or_insert_with(|| Instant::now() + limits.request);
        let (content, used, complete) = match buf.iter().position(|&b| b == b'\n') {
            Some(nl) => (&buf[..nl], nl + 1, true),
            None => (buf, buf.len(), false),
        };
        // Past the bound the rest of the line is read and dropped, never kept.
        if !too_long && line.len() + content.len() > MAX_REQUEST {
            too_long = true;
            line.clear();
        }
        if !too_long {
            line.extend_from_slice(content);
        }
        reader.consume(used);
        if complete {
            return Ok(if too_long {
                Incoming::TooLong
            } else {
                Incoming::Line
            });
        }
    }
}

/// A stream's end of its connection.
struct StreamOut<'a> {
    stream: &'a UnixStream,
    stop: &'a AtomicBool,
}

impl Emit for StreamOut<'_> {
    fn line(&mut self, line: &[u8]) -> io::Result<()> {
        write_reply(self.stream, line, STREAM_STALL)
    }

    fn gone(&mut self) -> bool {
        if self.stop.load(Ordering::Acquire) {
            return true;
        }
        let mut byte = 0u8;
        // SAFETY: recv into one valid byte, without waiting and without taking it off the
        // socket; the descriptor is the connection's, open for the stream's whole life.
        let n = unsafe {
            libc::recv(
                self.stream.as_raw_fd(),
                (&raw mut byte).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        match n {
            // The client closed its end.
            0 => true,
            // Something was sent, which a stream does not read: the client is there.
            1.. => false,
            _ => {
                let e = io::Error::last_os_error();
                !matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                )
            }
        }
    }
}

fn answer(request: Request, handler: &Handler) -> Vec<u8> {
    // A panic answering one request must not end the connection's thread unanswered; the panic
    // hook has recorded it by the time it is caught.
    let what = format!("{request:?}");
    let answered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler(request)))
        .unwrap_or_else(|_| {
            Err(format!(
                "the server failed answering {what} (a panic; see the log)"
            ))
        });
    protocol::reply_line(&answered)
}

/// Connects to the control socket at `path` and sends `request`, one that keeps its connection
/// ([`Request::is_stream`]); the lines that follow are the caller's to read, as they come.
///
/// # Errors
/// [`Error::Io`] if the socket cannot be reached or the request not sent.
pub fn open_stream(path: &Path, request: &Request) -> Result<BufReader<UnixStream>, Error> {
    let io = |e: io::Error| Error::io(format!("control socket {}", path.display()), e);
    let address = SocketAddress::of(path).map_err(io)?;
    let mut stream = UnixStream::connect(address.as_path()).map_err(io)?;
    drop(address);
    stream.write_all(&request.to_line()).map_err(io)?;
    Ok(BufReader::new(stream))
}

/// Sends `request` to the control socket at `path` and reads its reply as `R`, the request's
/// reply type ([`protocol::ServerStatus`] for `status`, and so on). A `path` too long for a
/// socket address is reached through its directory, as the server bound it.
///
/// # Errors
/// [`Error::Io`] if the socket cannot be reached or the reply does not come within `timeout`;
/// [`Error::Refused`] with the server's reason; [`Error::Control`] for a reply that is not `R`.
pub fn ask<R: DeserializeOwned>(
    path: &Path,
    request: &Request,
    timeout: Duration,
) -> Result<R, Error> {
    let io = |e: io::Error| Error::io(format!("control socket {}", path.display()), e);
    let address = SocketAddress::of(path).map_err(io)?;
    // The connection needs the directory's descriptor no longer than `connect` does.
    let mut stream = UnixStream::connect(address.as_path()).map_err(io)?;
    drop(address);
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    stream.write_all(&request.to_line()).map_err(io)?;
    let mut reply = Vec::new();
    BufReader::new(stream)
        .take(16 * 1024 * 1024)
        .read_until(b'\n', &mut reply)
        .map_err(io)?;
    protocol::read_reply(&reply).map_err(|e| match e {
        protocol::ReplyError::Refused(reason) => Error::Refused(reason),
        malformed => Error::Control {
            socket: path.to_path_buf(),
            problem: malformed.to_string(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Accepted;
    use serde_json::{Value, json};
    use std::os::unix::fs::FileTypeExt;
    use std::sync::mpsc;
    use std::time::Instant;

    /// Long enough for a loaded machine to answer a status request, and shorter than the idle
    /// timeout: an answer within it was not held up behind an idle client.
    const ANSWER_WITHIN: Duration = Duration::from_secs(3);

    /// A control socket in a temporary directory that answers `status` with `{"status":"fine"}`.
    fn serve() -> (tempfile::TempDir, PathBuf, ControlSocket) {
        serve_with(Limits::DEFAULT)
    }

    fn serve_with(limits: Limits) -> (tempfile::TempDir, PathBuf, ControlSocket) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ward.sock");
        // Status is answered, reload panics, the rest is refused.
        let handler = |request: Request| match request {
            Request::Status => Ok(Reply::Accepted(Accepted {})),
            Request::Reload => panic!("asked to"),
            other => Err(format!("not here: {other:?}")),
        };
        let handlers = Handlers {
            answer: Arc::new(handler),
            stream: None,
        };
        let socket = ControlSocket::bind_with(&path, Arc::new(handlers), limits).unwrap();
        (dir, path, socket)
    }

    /// A status request on a new connection; its reply, or why there was none in time.
    fn status(path: &Path) -> Result<Accepted, Error> {
        ask(path, &Request::Status, ANSWER_WITHIN)
    }

    fn assert_answered(path: &Path) {
        match status(path) {
            Ok(reply) => assert_eq!(reply, Accepted {}),
            Err(e) => panic!("status not answered within {ANSWER_WITHIN:?}: {e}"),
        }
    }

    /// Reads one line from `stream`, waiting at most [`ANSWER_WITHIN`]; empty at end of stream.
    fn read_line(stream: &UnixStream) -> io::Result<String> {
        stream.set_read_timeout(Some(ANSWER_WITHIN))?;
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line)?;
        Ok(line)
    }

    /// Waits up to [`ANSWER_WITHIN`] for the server to close `stream`: true if it did.
    fn closed_by_server(stream: &UnixStream) -> bool {
        stream.set_read_timeout(Some(ANSWER_WITHIN)).unwrap();
        let mut buf = [0; 256];
        // An error line may come first; the end of the stream follows it.
        loop {
            match (&*stream).read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }

    #[test]
    fn a_socket_path_is_aliased_through_its_directory_only_when_an_address_cannot_hold_it() {
        let tmp = tempfile::tempdir().unwrap();
        for (len, aliased) in [(SUN_PATH - 1, false), (SUN_PATH, true)] {
            let name = "d".repeat(len - tmp.path().as_os_str().len() - "//ward.sock".len());
            let dir = tmp.path().join(name);
            std::fs::create_dir(&dir).unwrap();
            let path = dir.join("ward.sock");
            assert_eq!(path.as_os_str().len(), len);
            let address = SocketAddress::of(&path).unwrap();
            assert_eq!(address.as_path().starts_with("/proc/self/fd"), aliased);
            assert!(address.as_path().as_os_str().len() < SUN_PATH);
            UnixListener::bind(address.as_path()).unwrap();
            assert!(path.exists(), "not bound in its directory: {address:?}");
        }
    }

    #[test]
    fn a_socket_path_longer_than_a_socket_address_is_bound_and_asked_through_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        let mut deep = dir.path().to_path_buf();
        while deep.as_os_str().len() < 200 {
            deep.push("nested-directory");
        }
        std::fs::create_dir_all(&deep).unwrap();
        let path = deep.join("ward.sock");
        let handler = |_: Request| Ok(Reply::Accepted(Accepted {}));
        let socket = ControlSocket::bind(&path, Arc::new(handler)).unwrap();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_socket(), "{meta:?}");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{meta:?}");
        assert_answered(&path);
        drop(socket);
        assert!(!path.exists(), "socket file left behind");
    }

    #[test]
    fn twenty_idle_clients_do_not_delay_a_status_request() {
        let (_dir, path, _socket) = serve();
        let idle: Vec<UnixStream> = (0..20)
            .map(|_| UnixStream::connect(&path).unwrap())
            .collect();
        assert_answered(&path);
        drop(idle);
    }

    #[test]
    fn a_slow_loris_client_is_cut_off_and_never_blocks_others() {
        let (_dir, path, _socket) = serve();
        let request = b"{\"cmd\":\"status\"}\n";
        let mut slow = UnixStream::connect(&path).unwrap();
        slow.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = [0; 256];
        // One byte every 2 s (the pause is a wait for the server to close the connection),
        // which would take half a minute to finish the request.
        for (sent, byte) in request.iter().enumerate() {
            assert!(
                sent + 1 < request.len(),
                "the whole request went through: the slow client was never cut off"
            );
            if slow.write_all(&[*byte]).is_err() {
                break;
            }
            assert_answered(&path);
            match slow.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let reply: Value = serde_json::from_slice(&buf[..n]).unwrap();
                    assert_eq!(reply["error"], "request not complete within 5s", "{reply}");
                    assert!(
                        closed_by_server(&slow),
                        "cut off, but the connection stays open"
                    );
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("reading the slow client's socket: {e}"),
            }
        }
        assert_answered(&path);
    }

    #[test]
    fn connections_past_the_bound_are_refused_with_an_error_line() {
        // Held connections must stay open however slow the machine is today.
        let (_dir, path, _socket) = serve_with(Limits {
            idle: Duration::from_secs(600),
            ..Limits::DEFAULT
        });
        let held: Vec<UnixStream> = (0..32)
            .map(|_| UnixStream::connect(&path).unwrap())
            .collect();
        let refused = UnixStream::connect(&path).unwrap();
        let line = read_line(&refused).unwrap();
        let reply: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("no JSON error line ({e}): {line:?}"));
        assert_eq!(
            reply,
            json!({ "v": 1, "ok": false, "error": "too many control connections (32 open)" })
        );
        assert!(
            closed_by_server(&refused),
            "a refused connection stays open"
        );
        // The connections already open are still served.
        let mut held = held;
        let mut first = held.remove(0);
        first.write_all(b"{\"cmd\":\"status\"}\n").unwrap();
        assert!(read_line(&first).unwrap().contains("\"ok\":true"));
        // Once some close, a new connection is served again.
        drop(held);
        let deadline = Instant::now() + ANSWER_WITHIN;
        while status(&path).is_err() {
            assert!(
                Instant::now() < deadline,
                "no connection served after some closed"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn dropping_the_socket_with_idle_clients_connected_returns_promptly() {
        let (_dir, path, socket) = serve();
        // One idle client that was surely accepted (it was answered), more that may not be, and
        // one in the middle of a request.
        let mut answered = UnixStream::connect(&path).unwrap();
        answered.write_all(b"{\"cmd\":\"status\"}\n").unwrap();
        assert!(read_line(&answered).unwrap().contains("\"ok\":true"));
        let mut idle: Vec<UnixStream> = (0..5)
            .map(|_| UnixStream::connect(&path).unwrap())
            .collect();
        let mut partial = UnixStream::connect(&path).unwrap();
        partial.write_all(b"{\"cmd\":").unwrap();
        idle.push(partial);
        let (dropped_tx, dropped) = mpsc::channel();
        std::thread::spawn(move || {
            drop(socket);
            let _ = dropped_tx.send(());
        });
        dropped.recv_timeout(ANSWER_WITHIN).unwrap_or_else(|_| {
            panic!("dropping the socket took more than {ANSWER_WITHIN:?} with idle clients")
        });
        assert!(!path.exists(), "socket file left behind");
        assert!(closed_by_server(&answered), "a client left connected");
        drop(idle);
    }

    #[test]
    fn an_idle_connection_is_closed_after_its_idle_timeout() {
        let (_dir, path, _socket) = serve_with(Limits {
            idle: Duration::from_millis(100),
            ..Limits::DEFAULT
        });
        let mut client = UnixStream::connect(&path).unwrap();
        client.write_all(b"{\"cmd\":\"status\"}\n").unwrap();
        assert!(read_line(&client).unwrap().contains("\"ok\":true"));
        assert!(closed_by_server(&client), "an idle client kept open");
    }

    #[test]
    fn garbage_gets_error_lines_and_the_connection_stays_usable() {
        let (_dir, path, _socket) = serve();
        let mut client = UnixStream::connect(&path).unwrap();
        let mut huge = vec![b'x'; 200_000];
        huge.push(b'\n');
        for (garbage, error) in [
            (&b"not json\n"[..], "malformed request"),
            (b"{\"cmd\":42}\n", "request has no \"cmd\" string"),
            (b"{\"cmd\":\"launch\"}\n", "unknown command \"launch\""),
            (&huge, "request longer than 65536 bytes"),
            (b"\xff\xfe\n", "malformed request"),
        ] {
            client.write_all(garbage).unwrap();
            let reply: Value = serde_json::from_str(&read_line(&client).unwrap()).unwrap();
            assert_eq!(reply["ok"], false, "{reply}");
            assert!(
                reply["error"].as_str().unwrap().starts_with(error),
                "{reply}"
            );
        }
        // A request in pieces is one request; one cut short by the client's end is answered.
        client.write_all(b"{\"cmd\":").unwrap();
        client.write_all(b"\"status\"}\n").unwrap();
        assert!(read_line(&client).unwrap().contains("\"ok\":true"));
        client.write_all(b"{\"cmd\":\"status\"}").unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        assert!(read_line(&client).unwrap().contains("\"ok\":true"));
        assert!(closed_by_server(&client));
    }

    #[test]
    fn a_request_whose_answer_panics_gets_an_error_and_the_connection_stays_usable() {
        let (_dir, path, _socket) = serve();
        let mut client = UnixStream::connect(&path).unwrap();
        client.write_all(b"{\"cmd\":\"reload\"}\n").unwrap();
        let reply: Value = serde_json::from_str(&read_line(&client).unwrap()).unwrap();
        assert_eq!(reply["ok"], false, "{reply}");
        assert!(
            reply["error"].as_str().unwrap().contains("panic"),
            "{reply}"
        );
        client.write_all(b"{\"cmd\":\"status\"}\n").unwrap();
        assert!(read_line(&client).unwrap().contains("\"ok\":true"));
    }

    #[test]
    fn a_reply_the_client_does_not_take_ends_the_connection_in_time() {
        let (server, _client) = UnixStream::pair().unwrap();
        let (written_tx, written) = mpsc::channel();
        std::thread::spawn(move || {
            // Far more than a socket buffer holds.
            let reply = vec![b'x'; 16 * 1024 * 1024];
            let _ = written_tx.send(write_reply(&server, &reply, Duration::from_millis(100)));
        });
        let result = written
            .recv_timeout(ANSWER_WITHIN)
            .expect("writing a reply nobody reads never gave up");
        assert!(result.is_err(), "a reply nobody reads was written whole");
    }
}

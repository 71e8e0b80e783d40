//! `[metrics] listen`: the metrics served over HTTP for Prometheus, `GET /metrics`. Not here:
//! what is counted (`metrics`), or the answer itself, which the main loop gives as it gives
//! `ward metrics`.
//!
//! The HTTP is tiny_http's, a small synchronous server (no async runtime in the daemon): one
//! thread of ours takes its requests one at a time and answers each by asking the main loop.
//! Anything but `GET` or `HEAD` of `/metrics` is answered 404 or 405, without asking the loop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::Sender;
use tiny_http::{Header, Method, Response, Server};

use super::answers::{Asked, METRICS_WAIT, ask_loop};
use crate::Error;
use crate::metrics::CONTENT_TYPE;
use crate::protocol::{Reply, Request};

/// The HTTP endpoint and its thread. Dropping it stops the server and joins the thread.
pub(super) struct MetricsEndpoint {
    server: Arc<Server>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsEndpoint {
    /// Listens on `address` and answers scrapes by asking the main loop through `main_loop`.
    ///
    /// # Errors
    /// If the address cannot be listened on (taken, not ours) or the thread not started.
    pub(super) fn start(
        address: SocketAddr,
        main_loop: Sender<Asked>,
    ) -> Result<MetricsEndpoint, Error> {
        let what = || format!("serving metrics on {address} ([metrics] listen)");
        let listener = std::net::TcpListener::bind(address).map_err(|e| Error::io(what(), e))?;
        no_delay(&listener).map_err(|e| Error::io(what(), e))?;
        let server = Server::from_listener(listener, None)
            .map_err(|e| Error::io(what(), std::io::Error::other(e.to_string())))?;
        let server = Arc::new(server);
        let thread = {
            let server = Arc::clone(&server);
            std::thread::Builder::new()
                .name("ward-metrics".into())
                .spawn(move || serve(&server, &main_loop))
                .map_err(|e| Error::io("starting the metrics thread", e))?
        };
        log::info!("metrics served on http://{address}/metrics");
        Ok(MetricsEndpoint {
            server,
            thread: Some(thread),
        })
    }
}

impl Drop for MetricsEndpoint {
    fn drop(&mut self) {
        // Ends `incoming_requests` in the thread.
        self.server.unblock();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            log::error!("the metrics thread panicked");
        }
    }
}

fn serve(server: &Server, main_loop: &Sender<Asked>) {
    for request in server.incoming_requests() {
        let path = request.url().split('?').next().unwrap_or_default();
        let response = if path != "/metrics" {
            text(404, "not found: ward serves /metrics\n".into())
        } else if !matches!(request.method(), Method::Get | Method::Head) {
            text(405, "method not allowed: GET /metrics\n".into())
        } else {
            match ask_loop(Request::Metrics, main_loop, METRICS_WAIT) {
                Ok(Reply::Metrics(m)) => text(200, m.metrics),
                Ok(_) => text(500, "unexpected answer from the server's loop\n".into()),
                Err(e) => text(503, format!("{e}\n")),
            }
        };
        if let Err(e) = request.respond(response) {
            // The scraper went away; the next scrape is another request.
            log::debug!("answering a metrics request: {e}");
        }
    }
}

/// Sets `TCP_NODELAY` on the listening socket, which the connections it accepts inherit (Linux):
/// the last small write of a chunked body (tiny_http chunks past 32 KiB, and an exposition with
/// 100 triggers is more) otherwise waits for the scraper's delayed acknowledgement, up to 40 ms
/// (`cargo xtask bench --only subscribe` measures the scrape).
fn no_delay(listener: &std::net::TcpListener) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: setsockopt on a socket we own, reading one c_int that lives for the call.
    let rc = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&raw const on).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn text(status: u16, body: String) -> Response<std::io::Cursor<Vec<u8>>> {
    let response = Response::from_string(body).with_status_code(status);
    match Header::from_bytes(&b"Content-Type"[..], CONTENT_TYPE.as_bytes()) {
        Ok(header) => response.with_header(header),
        Err(()) => response,
    }
}

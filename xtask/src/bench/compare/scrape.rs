//! The `subscribe` part's second measure (#24): a scrape of `[metrics] listen`'s `/metrics` with
//! 100 triggers, each of which has run jobs, so that its families have series; against a `GET`
//! of another path on the same server and connection, which tiny_http answers 404 without asking
//! the server's main loop: the HTTP round trip alone. Scrapes alternate the two, on one
//! keep-alive HTTP/1.1 connection, as Prometheus scrapes.
//!
//! The goal (≤ 5 ms) is judged on p99. An exposition over 32 kB goes chunked (tiny_http's
//! threshold); before the endpoint's listener had `TCP_NODELAY`, its last small write waited
//! under Nagle's algorithm for the client's delayed ACK, up to 40 ms, in about one scrape of ten
//! (p99 47 ms). The bench acks as Prometheus does, and still prints how many scrapes stalled so.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::super::report::Row;
use super::subscribe::p50_p99;
use super::{Tools, Ward, wait_lines};

/// Triggers in the config, each with a glob of its own.
const TRIGGERS: usize = 100;

/// Files written per trigger's directory before the scrapes.
const FILES_EACH: usize = 2;

/// The goal of the issue, in ms, for p99.
const GOAL_MS: f64 = 5.0;

/// A scrape this long waited for a delayed ACK (40 ms on Linux), not for ward.
const STALL_MS: f64 = 35.0;

/// One HTTP/1.1 connection kept alive across requests.
struct Connection {
    reader: BufReader<TcpStream>,
}

impl Connection {
    fn open(address: SocketAddr) -> Result<Connection> {
        let stream = TcpStream::connect(address)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(Connection {
            reader: BufReader::new(stream),
        })
    }

    /// `GET path`: the status and the body.
    fn get(&mut self, path: &str) -> Result<(u16, Vec<u8>)> {
        write!(
            self.reader.get_mut(),
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        )?;
        read_response(&mut self.reader)
    }
}

/// One response from `reader`: its status and its body, whole (by `Content-Length`, or chunked).
fn read_response(reader: &mut impl BufRead) -> Result<(u16, Vec<u8>)> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("not an HTTP status line: {line:?}"))?;
    let (mut length, mut chunked) = (None, false);
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            bail!("the connection closed within a response's headers");
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let Some((name, value)) = header.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<usize>()?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            reader.read_line(&mut line)?;
            let size = line.trim_end().split(';').next().unwrap_or_default();
            let size = usize::from_str_radix(size, 16)
                .with_context(|| format!("not a chunk size: {line:?}"))?;
            let start = body.len();
            body.resize(start + size, 0);
            reader.read_exact(&mut body[start..])?;
            line.clear();
            reader.read_line(&mut line)?; // the chunk's CRLF, or the trailer's end
            if size == 0 {
                break;
            }
        }
    } else {
        let length = length.context("a response with neither a length nor chunks")?;
        body.resize(length, 0);
        reader.read_exact(&mut body)?;
    }
    Ok((status, body))
}

/// A loopback address with a port free now.
fn free_address() -> Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// The series in an exposition: its lines that are not comments.
fn series(text: &str) -> usize {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .count()
}

/// Times `scrapes` GETs of `/metrics` and of a 404 path, alternated, and adds the row.
pub(super) fn run(tools: &Tools, rows: &mut Vec<Row>) -> Result<()> {
    let scrapes = if tools.quick { 100 } else { 500 };
    let dir = tools.dir("scrape")?;
    let log = dir.join("stamps");
    let address = free_address()?;
    let mut body = format!("debounce_ms = 1\n\n[metrics]\nlisten = \"{address}\"\n");
    for t in 0..TRIGGERS {
        fs::create_dir(dir.join(format!("tree/dir-{t}")))?;
        body.push_str(&format!(
            "\n[[trigger]]\nname = \"t{t}\"\nglob = [\"dir-{t}/**\"]\nexec = [{:?}, \"stamp\", {:?}, \"{{path}}\"]\n",
            tools.probe(),
            log.to_str().unwrap_or_default()
        ));
    }
    let ward = Ward::new(tools, &dir, &body)?;
    ward.start()?;
    println!(
        "scrape: {TRIGGERS} triggers, {} jobs, then {scrapes} GETs of /metrics and of /other alternated on one keep-alive connection ...",
        TRIGGERS * FILES_EACH
    );
    for t in 0..TRIGGERS {
        for f in 0..FILES_EACH {
            fs::write(dir.join(format!("tree/dir-{t}/f{f}")), "x")?;
        }
    }
    wait_lines(&log, TRIGGERS * FILES_EACH, Duration::from_secs(60))?;
    let mut conn = Connection::open(address)?;
    // Until every job's end is counted: the last trigger's series are there.
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let (status, text) = conn.get("/metrics")?;
        let text = String::from_utf8(text)?;
        if status != 200 {
            bail!("GET /metrics answered {status}: {text}");
        }
        if text.contains(&format!("trigger=\"t{}\"", TRIGGERS - 1)) {
            break text;
        }
        if Instant::now() > deadline {
            bail!("no series of trigger t{} in /metrics", TRIGGERS - 1);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (mut metrics, mut other) = (Vec::new(), Vec::new());
    for i in 0..scrapes {
        // Alternated, the first of each pair swapped every time, so that neither always follows
        // the other.
        for ask_metrics in [i % 2 == 0, i % 2 == 1] {
            let (path, want, times) = if ask_metrics {
                ("/metrics", 200, &mut metrics)
            } else {
                ("/other", 404, &mut other)
            };
            let t0 = Instant::now();
            let (status, _) = conn.get(path)?;
            times.push(t0.elapsed().as_secs_f64() * 1e3);
            if status != want {
                bail!("GET {path} answered {status}, not {want}");
            }
        }
    }
    drop(conn);
    ward.stop()?;
    let over = |limit: f64| metrics.iter().filter(|&&ms| ms > limit).count();
    let (over_goal, stalled) = (over(GOAL_MS), over(STALL_MS));
    let (metrics, other) = (p50_p99(metrics), p50_p99(other));
    let met = metrics[1] <= GOAL_MS;
    println!(
        "scrape: /metrics ({} series, {:.1} kB) p50/p99 {:.3}/{:.3} ms ({over_goal} of {scrapes} over {GOAL_MS} ms, {stalled} over {STALL_MS} ms: a delayed ACK), /other (404) {:.3}/{:.3} ms: goal p99 ≤ {GOAL_MS} ms {}",
        series(&text),
        text.len() as f64 / 1e3,
        metrics[0],
        metrics[1],
        other[0],
        other[1],
        if met { "met" } else { "NOT met" }
    );
    rows.push(
        Row::new(
            "subscribe",
            format!(
                "GET /metrics, {TRIGGERS} triggers ({} series, {:.0} kB), keep-alive, p50/p99 of {scrapes}",
                series(&text),
                text.len() as f64 / 1e3
            ),
            "ms",
        )
        .ward(metrics)
        .anchor("GET /other (404, no main loop), same server and connection", other)
        .target(format!("p99 ≤ {GOAL_MS} ms"), met),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_read_by_length_and_by_chunks() {
        let wire = b"HTTP/1.1 404 Not Found\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nnope\n\
HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n# a\n\r\n6;x=y\r\nb 1\nc \r\n0\r\n\r\n\
HTTP/1.1 200 OK\r\n";
        let mut reader = BufReader::new(&wire[..]);
        assert_eq!(
            read_response(&mut reader).unwrap(),
            (404, b"nope\n".to_vec())
        );
        let (status, body) = read_response(&mut reader).unwrap();
        assert_eq!((status, body.as_slice()), (200, &b"# a\nb 1\nc "[..]));
        assert!(read_response(&mut reader).is_err(), "headers cut short");
        assert_eq!(series("# HELP x\n# TYPE x counter\nx 1\ny{a=\"b\"} 2\n"), 2);
    }
}

//! End-to-end tests of the metrics: `ward metrics`, `[metrics] listen` scraped by a real
//! Prometheus server (the distribution's `prometheus` package), checked by `promtool`.
//!
//! Without `prometheus` and `promtool` installed, the tests that need them say so and are
//! skipped, unless `WARD_TEST_REQUIRE_TOOLS` is set (CI sets it, after installing the package):
//! then they fail, saying why (see `have_tool`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ward_e2e::{Fixture, free_port, have_tool, wait_for};

const LONG: Duration = Duration::from_secs(60);
/// The job program built with these tests (see `bin/ward-test-job.rs`).
const JOB: &str = env!("CARGO_BIN_EXE_ward-test-job");

/// The status and body of `GET path` on `127.0.0.1:port` (HTTP/1.0: the server closes the
/// connection after the answer, so the body is what follows the headers).
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

fn fixture(port: u16) -> Fixture {
    Fixture::new(
        JOB,
        &format!(
            "[metrics]\nlisten = \"127.0.0.1:{port}\"\n\n\
             [[trigger]]\nname = \"crash\"\nglob = [\"*.crash\"]\nretries = 0\nexec = [\"{{job}}\", \"segv\"]\n\
             [[trigger]]\nname = \"record\"\nexec = [\"{{job}}\", \"record\", \"{{ledger}}\"]\n"
        ),
    )
}

/// The sum of `ward_jobs_total{trigger="record"}` in `text`.
fn record_jobs(text: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with("ward_jobs_total{") && l.contains("trigger=\"record\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn metrics_count_jobs_and_deaths_and_are_served_over_http_and_the_socket() {
    let port = free_port();
    let f = fixture(port);
    f.start();
    for i in 0..3 {
        std::fs::write(f.tree.join(format!("f{i}.txt")), "x").unwrap();
    }
    std::fs::write(f.tree.join("bad.crash"), "x").unwrap();
    wait_for("three jobs counted", LONG, || {
        get(port, "/metrics").is_some_and(|(_, body)| record_jobs(&body) == 3)
    });
    let (status, body) = get(port, "/metrics").unwrap();
    assert_eq!(status, 200);
    wait_for("the crash counted", LONG, || {
        get(port, "/metrics").is_some_and(|(_, body)| {
            body.contains("ward_process_deaths_total{role=\"job\",cause=\"native_crash\"} 1")
        })
    });
    for name in [
        "ward_job_duration_seconds_bucket{trigger=\"record\"",
        "ward_changes_total{event=\"created\"}",
        "ward_queue_depth ",
        "ward_jobs_running ",
        "ward_watches ",
        "ward_manifest_seq ",
        "ward_resident_memory_bytes{process=\"server\"}",
        "ward_resident_memory_bytes{process=\"keeper\"}",
    ] {
        assert!(body.contains(name), "{name} missing from:\n{body}");
    }
    // No label holds a path.
    assert!(!body.contains(f.tree.to_str().unwrap()), "{body}");
    // The same exposition through the control socket.
    let out = f.run(&["metrics"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(record_jobs(&text), 3, "{text}");
    // Anything but /metrics is refused, and the endpoint survives garbage.
    assert_eq!(get(port, "/other").unwrap().0, 404);
    let mut garbage = TcpStream::connect(("127.0.0.1", port)).unwrap();
    garbage
        .write_all(b"\x00\x01 not http at all\r\n\r\n")
        .unwrap();
    drop(garbage);
    assert_eq!(get(port, "/metrics").unwrap().0, 200);
    f.stop();
    assert!(
        get(port, "/metrics").is_none(),
        "still served after the stop"
    );
}

#[test]
fn a_taken_metrics_port_is_an_error_at_the_start() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let f = fixture(port);
    let out = f.run(&["start"]);
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{out:?}");
    assert!(said.contains(&format!("127.0.0.1:{port}")), "{said}");
}

#[test]
fn promtool_accepts_the_exposition() {
    if !have_tool("promtool", "prometheus") {
        return;
    }
    let port = free_port();
    let f = fixture(port);
    f.start();
    std::fs::write(f.tree.join("a.txt"), "x").unwrap();
    wait_for("a job counted", LONG, || {
        get(port, "/metrics").is_some_and(|(_, body)| record_jobs(&body) == 1)
    });
    let out = f.run(&["metrics"]);
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(&out.stdout)
        .unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    f.stop();
}

/// A Prometheus server, killed with its handle.
struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn prometheus(dir: &Path, target: u16, port: u16) -> Prometheus {
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: ward\n    static_configs:\n      - targets: ['127.0.0.1:{target}']\n"
        ),
    )
    .unwrap();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus");
    Prometheus(child)
}

/// What Prometheus's HTTP API answers to the instant query `query`: the sum of its values.
fn query(port: u16, query: &str) -> Option<f64> {
    let encoded: String = query
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
            b => format!("%{b:02X}"),
        })
        .collect();
    let (status, body) = get(port, &format!("/api/v1/query?query={encoded}"))?;
    if status != 200 {
        return None;
    }
    let value: serde_json::Value = serde_json::from_str(&body).ok()?;
    let results = value["data"]["result"].as_array()?;
    if results.is_empty() {
        return None;
    }
    Some(
        results
            .iter()
            .filter_map(|r| r["value"][1].as_str()?.parse::<f64>().ok())
            .sum(),
    )
}

#[test]
fn a_real_prometheus_scrapes_ward_and_sees_jobs_rise() {
    if !have_tool("prometheus", "prometheus") {
        return;
    }
    let port = free_port();
    let f = fixture(port);
    f.start();
    let prom_port = free_port();
    let _prometheus = prometheus(f.dir.path(), port, prom_port);
    wait_for("Prometheus scraping ward", LONG, || {
        query(prom_port, "up{job=\"ward\"}") == Some(1.0)
    });
    let before = query(prom_port, "sum(ward_jobs_total)").unwrap_or(0.0);
    for i in 0..5 {
        std::fs::write(f.tree.join(format!("p{i}.txt")), "x").unwrap();
    }
    wait_for("ward_jobs_total risen by 5 in Prometheus", LONG, || {
        query(prom_port, "sum(ward_jobs_total{trigger=\"record\"})").unwrap_or(0.0) >= before + 5.0
    });
    f.stop();
}

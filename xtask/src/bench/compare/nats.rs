//! The `nats` part (#25): ward's publish trigger against raw async-nats, both against one real
//! `nats-server -js` started here on its file storage.
//!
//! - Throughput: a burst of files written into a tree `ward start` watches, each published by a
//!   publish trigger (at most `max_unacked` unacknowledged), timed from the first write to the
//!   last acknowledged publish; the same files written before the start instead (owed at the
//!   first start: the publishing without the watcher); against async-nats publishing as many
//!   messages of the same size with as many acknowledgements awaited at once, from one tokio
//!   runtime on one thread as ward-nats has, to a stream of its own. The three are run in turn,
//!   [`NATS_ROUNDS`] times (the machine's pace drifts by a third within minutes), and the table
//!   takes each one's median.
//! - Latency: write → the job started by `ward work` on the other side, over single writes,
//!   against ward's own write → job started (an exec trigger) in the same run.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use async_nats::jetstream::{self, stream};
use futures_util::future::join_all;

use super::super::procs::{LogTail, now_ns, usage};
use super::super::report::Row;
use super::dispatch::median;
use super::subscribe::p50_p99;
use super::{Owned, Tools, Ward, stamp_of};

/// Publishes unacknowledged at once, at most: ward's `max_unacked` (its default) and the raw
/// publisher's acknowledgements awaited at once.
const IN_FLIGHT: usize = 64;
/// The debounce of the latency rounds, the latency part's first window.
const WINDOW_MS: u64 = 50;
/// First writes of a latency round left out.
const WARMUP: usize = 5;
/// Rounds of the throughput measures (one with `--quick`).
const NATS_ROUNDS: usize = 3;

/// `nats-server -js` on a free loopback port, its storage in `dir`, killed on drop.
struct NatsServer {
    _child: Owned,
    url: String,
}

impl NatsServer {
    fn start(dir: &Path) -> Result<NatsServer> {
        let program = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .context("no nats-server: apt-get install nats-server")?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Owned::spawn(
            Command::new(program)
                .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
                .arg(dir.join("nats")),
            dir,
        )?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("nats-server did not listen on {port} within 10 s");
            }
            sleep(Duration::from_millis(20));
        }
        Ok(NatsServer {
            _child: child,
            url: format!("nats://127.0.0.1:{port}"),
        })
    }
}

/// Publishes `n` messages of `size` bytes to a work-queue stream of file storage, with
/// [`IN_FLIGHT`] acknowledgements awaited at once, each with a message id; returns the seconds
/// it took (connecting and making the stream not counted).
fn raw_publish(url: &str, n: usize, size: usize) -> Result<f64> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let client = async_nats::connect(url).await?;
        let js = jetstream::new(client);
        js.get_or_create_stream(stream::Config {
            name: "RAW".into(),
            subjects: vec!["raw.>".into()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("making the stream RAW: {e}"))?;
        let body = bytes::Bytes::from(vec![b'x'; size]);
        let started = Instant::now();
        let lanes = (0..IN_FLIGHT).map(|lane| {
            let (js, body) = (js.clone(), body.clone());
            async move {
                for i in (lane..n).step_by(IN_FLIGHT) {
                    let publish = jetstream::context::Publish::build()
                        .message_id(format!("raw-{i}"))
                        .payload(body.clone());
                    js.send_publish("raw.jobs", publish)
                        .await
                        .map_err(|e| anyhow::anyhow!("publish {i}: {e}"))?
                        .await
                        .map_err(|e| anyhow::anyhow!("ack {i}: {e}"))?;
                }
                Ok::<_, anyhow::Error>(())
            }
        });
        for lane in join_all(lanes).await {
            lane?;
        }
        let took = started.elapsed().as_secs_f64();
        // The next round's ids are the same: within the duplicate window the server would drop
        // them unstored.
        js.delete_stream("RAW")
            .await
            .map_err(|e| anyhow::anyhow!("deleting the stream RAW: {e}"))?;
        Ok(took)
    })
}

/// The publish trigger of the ward side, to `stream`.
fn publish_trigger(url: &str, stream: &str) -> String {
    format!(
        "[[trigger]]\nname = \"publish\"\nglob = [\"*\"]\n\
         publish = {{ url = \"{url}\", stream = \"{stream}\", subject = \"ward.jobs.{{trigger}}\", max_unacked = {IN_FLIGHT} }}\n"
    )
}

/// When a burst's files are written.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Burst {
    /// While ward watches: each is seen by the watcher.
    Watched,
    /// Before ward starts: each is owed at its first start, found by its comparison with the
    /// (empty) manifest, no watcher event at all.
    Owed,
}

/// ward publishing a burst of `n` files: seconds from the first write (or, for files owed at the
/// start, from `ward start`) to the last publish acknowledged (`completed` in `ward status`).
fn ward_burst(tools: &Tools, url: &str, n: usize, burst: Burst) -> Result<f64> {
    let dir = tools.dir(if burst == Burst::Owed {
        "nats-owed"
    } else {
        "nats-burst"
    })?;
    let ward = Ward::new(
        tools,
        &dir,
        &format!(
            "debounce_ms = 20\n\n[jobs]\nretries = 5\n\n{}",
            publish_trigger(url, "BURST")
        ),
    )?;
    let tree = dir.join("tree");
    let write = || -> Result<()> {
        for i in 0..n {
            fs::write(tree.join(format!("f{i:06}")), "x")?;
        }
        Ok(())
    };
    if burst == Burst::Owed {
        write()?;
    }
    let started = Instant::now();
    ward.start()?;
    let (_, server) = ward.pids()?;
    let before = usage(server).context("the server's CPU time")?;
    let started = if burst == Burst::Watched {
        let now = Instant::now();
        write()?;
        now
    } else {
        started
    };
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let status = ward.status()?;
        let done = status["queue"]["completed"].as_u64().unwrap_or(0);
        if done >= n as u64 {
            break;
        }
        if Instant::now() > deadline {
            bail!("ward published {done} of {n} within 600 s: {status}");
        }
        sleep(Duration::from_millis(20));
    }
    let took = started.elapsed();
    if let Some(after) = usage(server) {
        let (cpu_s, switches) = after.since(&before);
        println!(
            "nats: ward's server used {cpu_s:.2} s of CPU in {:.2} s ({:.0} µs and {:.1} context switches per publish)",
            took.as_secs_f64(),
            cpu_s * 1e6 / n as f64,
            switches as f64 / n as f64
        );
    }
    let gave_up = ward.status()?["manifest"]["gave_up"].as_u64().unwrap_or(0);
    ward.stop()?;
    if gave_up > 0 {
        bail!("{gave_up} publish(es) gave up");
    }
    // Its subjects (`ward.jobs.>`, what `ward work` takes) go to the next round's stream.
    delete_stream(url, "BURST")?;
    Ok(took.as_secs_f64())
}

fn delete_stream(url: &str, name: &str) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let js = jetstream::new(async_nats::connect(url).await?);
        js.delete_stream(name)
            .await
            .map_err(|e| anyhow::anyhow!("deleting the stream {name}: {e}"))?;
        Ok(())
    })
}

/// Single writes one at a time under `tree`: per write, ms from just before it to its stamp in
/// `log`.
fn latency(tree: &Path, log: &Path, n: usize) -> Result<Vec<f64>> {
    let mut tail = LogTail::new(log);
    let mut samples = Vec::with_capacity(n);
    for i in 0..WARMUP + n {
        sleep(Duration::from_millis(15));
        let key = tree.join(format!("lat{i}"));
        let t0 = now_ns();
        fs::write(&key, "x")?;
        let key = key.to_string_lossy().into_owned();
        let deadline = Instant::now() + Duration::from_secs(5);
        let started = loop {
            if let Some(ns) = tail.lines().iter().find_map(|l| {
                let (_, path) = l.split_once(' ')?;
                (path == key).then(|| stamp_of(l)).flatten()
            }) {
                break ns;
            }
            if Instant::now() > deadline {
                bail!("no job started within 5 s of write {i}");
            }
            sleep(Duration::from_micros(200));
        };
        if i >= WARMUP {
            samples.push(started.saturating_sub(t0) as f64 / 1e6);
        }
    }
    Ok(samples)
}

/// Write → job started by `ward work` on the far side of a publish trigger.
fn remote_latency(tools: &Tools, url: &str, n: usize) -> Result<Vec<f64>> {
    let dir = tools.dir("nats-remote")?;
    let log = dir.join("stamps");
    let ward = Ward::new(
        tools,
        &dir,
        &format!(
            "debounce_ms = {WINDOW_MS}\n\n{}",
            publish_trigger(url, "REMOTE")
        ),
    )?;
    let worker_config = dir.join("worker.toml");
    fs::write(
        &worker_config,
        format!(
            "[[trigger]]\nname = \"publish\"\nexec = [{:?}, \"stamp\", {:?}, \"{{path}}\"]\n",
            tools.probe(),
            log.to_str().unwrap_or_default()
        ),
    )?;
    ward.start()?;
    let work_log = dir.join("work.log");
    let _work = Owned::start(
        Command::new(&tools.ward)
            .arg("--config")
            .arg(&worker_config)
            .arg("--state-dir")
            .arg(dir.join("work-state"))
            .args(["work", "--nats", url, "--stream", "REMOTE"])
            .args(["--consumer", "bench", "--root"])
            .arg(dir.join("tree"))
            .stdout(Stdio::null())
            .stderr(fs::File::create(&work_log)?),
    )?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !fs::read_to_string(&work_log).is_ok_and(|t| t.contains("working: ")) {
        if Instant::now() > deadline {
            bail!(
                "ward work did not start pulling within 30 s: {}",
                fs::read_to_string(&work_log).unwrap_or_default()
            );
        }
        sleep(Duration::from_millis(20));
    }
    let samples = latency(&dir.join("tree"), &log, n);
    ward.stop()?;
    samples
}

/// Write → job started by ward's own exec trigger, the same writes.
fn local_latency(tools: &Tools, n: usize) -> Result<Vec<f64>> {
    let dir = tools.dir("nats-local")?;
    let log = dir.join("stamps");
    let ward = Ward::new(
        tools,
        &dir,
        &format!(
            "debounce_ms = {WINDOW_MS}\n\n[[trigger]]\nname = \"stamp\"\nglob = [\"*\"]\n\
             exec = [{:?}, \"stamp\", {:?}, \"{{path}}\"]\n",
            tools.probe(),
            log.to_str().unwrap_or_default()
        ),
    )?;
    ward.start()?;
    let samples = latency(&dir.join("tree"), &log, n);
    ward.stop()?;
    samples
}

/// Runs both measures and adds their rows.
pub(crate) fn run(tools: &Tools, rows: &mut Vec<Row>) -> Result<()> {
    let dir = tools.dir("nats")?;
    let nats = NatsServer::start(&dir)?;
    let n = if tools.quick { 10_000 } else { 50_000 };
    // Interleaved, so that what slows the machine for a while slows each alike; the medians go
    // in the table.
    let rounds = if tools.quick { 1 } else { NATS_ROUNDS };
    // A ward message: host, root, relative path, trigger, event, size, mtime, inode, origin.
    let size = 230;
    let rate = |s: f64| n as f64 / s;
    let (mut watched, mut owed, mut raw) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        println!(
            "nats: round {round} of {rounds}: a burst of {n} files published by ward, at most {IN_FLIGHT} unacknowledged ..."
        );
        let ward_s = ward_burst(tools, &nats.url, n, Burst::Watched)?;
        println!("nats: {n} files owed at ward's first start, published ...");
        let owed_s = ward_burst(tools, &nats.url, n, Burst::Owed)?;
        println!(
            "nats: {n} messages of {size} bytes published by async-nats, {IN_FLIGHT} acks awaited at once ..."
        );
        let raw_s = raw_publish(&nats.url, n, size)?;
        println!(
            "nats: round {round}: ward {:.0} publishes/s ({ward_s:.2} s) of a watched burst, {:.0}/s ({owed_s:.2} s) of files owed at the start; async-nats {:.0}/s ({raw_s:.2} s): {:.2}x and {:.2}x",
            rate(ward_s),
            rate(owed_s),
            rate(raw_s),
            raw_s / ward_s,
            raw_s / owed_s
        );
        watched.push(rate(ward_s));
        owed.push(rate(owed_s));
        raw.push(rate(raw_s));
    }
    let (watched, owed, raw_rate) = (median(watched), median(owed), median(raw));
    println!(
        "nats: medians of {rounds}: ward {watched:.0}/s watched, {owed:.0}/s owed; async-nats {raw_rate:.0}/s: {:.2}x and {:.2}x",
        watched / raw_rate,
        owed / raw_rate
    );
    let anchor = format!("async-nats, {n} messages, {IN_FLIGHT} acks awaited at once");
    rows.push(
        Row::new(
            "nats",
            format!(
                "publish trigger, {n}-file burst → every publish acknowledged, median of {rounds}"
            ),
            "/s",
        )
        .ward(vec![watched])
        .anchor(anchor.clone(), vec![raw_rate])
        .target("≥ 0.8x", watched >= 0.8 * raw_rate),
    );
    rows.push(
        Row::new(
            "nats",
            format!(
                "publish trigger, {n} files owed at the first start → every publish acknowledged, median of {rounds}"
            ),
            "/s",
        )
        .ward(vec![owed])
        .anchor(anchor, vec![raw_rate]),
    );
    let samples = if tools.quick { 30 } else { 100 };
    println!("nats: {samples} single writes, each run by ward work behind a publish trigger ...");
    let remote = p50_p99(remote_latency(tools, &nats.url, samples)?);
    println!("nats: the same writes, run by ward's own exec trigger ...");
    let local = p50_p99(local_latency(tools, samples)?);
    println!(
        "nats: write → remote job started {:.2}/{:.2} ms, write → local job started {:.2}/{:.2} ms (p50/p99)",
        remote[0], remote[1], local[0], local[1]
    );
    rows.push(
        Row::new(
            "nats",
            format!("write → job started by ward work p50/p99 of {samples}, {WINDOW_MS} ms window"),
            "ms",
        )
        .ward(remote)
        .anchor("write → ward's own job started, same writes", local),
    );
    Ok(())
}

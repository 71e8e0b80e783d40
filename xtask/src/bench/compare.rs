//! The cross-tool comparisons: the real `ward` daemon (release build) against what people would
//! use instead, each pair measured in the same run. The job program is `ward-bench-probe` for
//! every tool, so "job started" means the same thing everywhere (statically linked where it can
//! be: see `build_probe`).
//!
//! Scratch trees live in `/dev/shm` when there is one, so that writing 200k files measures the
//! watchers and not the disk.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::procs::{self, LogTail, file_index, now_ns};
use super::report::Row;

/// What every comparison needs: the binaries under test and a scratch directory.
#[derive(Debug)]
pub(crate) struct Tools {
    pub ward: PathBuf,
    pub probe: PathBuf,
    pub watchexec: Option<PathBuf>,
    pub scratch: PathBuf,
    pub quick: bool,
    pub idle_secs: u64,
}

impl Tools {
    /// A fresh directory for one scenario, with an empty `tree/` in it.
    fn dir(&self, name: &str) -> Result<PathBuf> {
        let dir = self.scratch.join(name);
        if dir.exists() {
            fs::remove_dir_all(&dir)?;
        }
        fs::create_dir_all(dir.join("tree"))?;
        Ok(dir)
    }

    fn probe(&self) -> &str {
        self.probe.to_str().expect("UTF-8 probe path")
    }
}

/// What an interrupted bench must clean up: the daemons it started (ward binary, scenario dir) and
/// the pids of the tools it runs. Daemons are in their own session, so a Ctrl-C does not reach
/// them; `interrupted` stops them.
static RUNNING: Mutex<Running> = Mutex::new(Running {
    daemons: Vec::new(),
    pids: Vec::new(),
});

#[derive(Debug, Clone)]
struct Running {
    daemons: Vec<(PathBuf, PathBuf)>,
    pids: Vec<u32>,
}

/// Stops every daemon and tool the bench still runs (from the Ctrl-C / SIGTERM handler).
pub(crate) fn interrupted() {
    let Running { daemons, pids } = match RUNNING.lock() {
        Ok(running) => running.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    };
    for pid in pids {
        // SAFETY: kill has no memory-safety preconditions; the pid is a child this bench started
        // and has not reaped yet (it leaves the list before it is reaped).
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    }
    for (bin, dir) in daemons {
        let _ = Ward { bin, dir }.stop();
    }
}

/// A `ward` daemon in a scratch directory (`ward.toml`, `tree/`, `state/`), stopped on drop.
#[derive(Debug)]
struct Ward {
    bin: PathBuf,
    dir: PathBuf,
}

impl Ward {
    fn new(tools: &Tools, dir: &Path, body: &str) -> Result<Ward> {
        let config = format!("[watch]\nroots = [\"tree\"]\n{body}");
        fs::write(dir.join("ward.toml"), config)?;
        if let Ok(mut running) = RUNNING.lock() {
            running
                .daemons
                .push((tools.ward.clone(), dir.to_path_buf()));
        }
        Ok(Ward {
            bin: tools.ward.clone(),
            dir: dir.to_path_buf(),
        })
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--config")
            .arg(self.dir.join("ward.toml"))
            .arg("--state-dir")
            .arg(self.dir.join("state"))
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    /// `ward start`; returns how long it took to return (it returns once the server is ready).
    fn start(&self) -> Result<Duration> {
        let t0 = Instant::now();
        let out = self.cmd(&["start"]).output()?;
        let took = t0.elapsed();
        if !out.status.success() {
            bail!(
                "ward start failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(took)
    }

    fn status(&self) -> Result<Value> {
        let out = self.cmd(&["status", "--json"]).output()?;
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    fn pids(&self) -> Result<(u32, u32)> {
        let s = self.status()?;
        let pid = |k: &str| s[k].as_u64().map(|p| p as u32);
        match (pid("pid"), pid("server_pid")) {
            (Some(k), Some(s)) => Ok((k, s)),
            _ => bail!("ward status has no pids: {s}"),
        }
    }

    fn stop(&self) -> Result<()> {
        let out = self.cmd(&["stop", "--timeout", "30"]).output()?;
        if !out.status.success() {
            bail!("ward stop failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }
}

impl Drop for Ward {
    fn drop(&mut self) {
        // Harmless when it already stopped ("not running").
        let _ = self.cmd(&["stop", "--timeout", "30"]).output();
        if let Ok(mut running) = RUNNING.lock() {
            running.daemons.retain(|(_, dir)| *dir != self.dir);
        }
    }
}

/// A process this bench started (a watcher under comparison), killed and reaped on drop.
#[derive(Debug)]
struct Owned(Child);

impl Owned {
    /// Starts `cmd` with its output in `dir/output` (kept for a look when a figure is odd).
    fn spawn(cmd: &mut Command, dir: &Path) -> Result<Owned> {
        let output = fs::File::create(dir.join("output"))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(output.try_clone()?)
            .stderr(output)
            .spawn()?;
        if let Ok(mut running) = RUNNING.lock() {
            running.pids.push(child.id());
        }
        Ok(Owned(child))
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        if let Ok(mut running) = RUNNING.lock() {
            running.pids.retain(|&pid| pid != self.0.id());
        }
        let _ = self.0.wait();
    }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn p50_95_99(mut samples: Vec<f64>) -> Vec<f64> {
    samples.sort_by(f64::total_cmp);
    vec![
        percentile(&samples, 0.5),
        percentile(&samples, 0.95),
        percentile(&samples, 0.99),
    ]
}

fn stamp_of(line: &str) -> Option<u64> {
    line.split_whitespace().next()?.parse().ok()
}

// ---------------------------------------------------------------------------------------------
// 1. Watch latency

const LATENCY_SAMPLES: usize = 200;
const LATENCY_WARMUP: usize = 10;

/// Writes single new files one at a time under `tree` and returns, per write, the milliseconds
/// from just before the write to the first job stamp in `log` taken after it.
fn latency_samples(tree: &Path, log: &Path) -> Result<Vec<f64>> {
    let mut tail = LogTail::new(log);
    let mut samples = Vec::with_capacity(LATENCY_SAMPLES);
    for i in 0..LATENCY_WARMUP + LATENCY_SAMPLES {
        // Let any straggling run of the previous sample end before the next write.
        sleep(Duration::from_millis(15));
        tail.lines();
        let t0 = now_ns();
        fs::write(tree.join(format!("lat{i}")), "x")?;
        let deadline = Instant::now() + Duration::from_secs(5);
        let started = loop {
            if let Some(s) = tail
                .lines()
                .iter()
                .filter_map(|l| stamp_of(l))
                .find(|&s| s >= t0)
            {
                break s;
            }
            if Instant::now() > deadline {
                bail!("no job started within 5 s of write {i}");
            }
            sleep(Duration::from_micros(200));
        };
        if i >= LATENCY_WARMUP {
            samples.push((started - t0) as f64 / 1e6);
        }
    }
    Ok(samples)
}

fn ward_latency(tools: &Tools, window_ms: u64) -> Result<Vec<f64>> {
    let dir = tools.dir(&format!("latency-ward-{window_ms}"))?;
    let log = dir.join("stamps");
    let ward = Ward::new(
        tools,
        &dir,
        &format!(
            "debounce_ms = {window_ms}\n\n[[trigger]]\nname = \"stamp\"\nglob = [\"*\"]\nexec = [{:?}, \"stamp\", {:?}, \"{{path}}\"]\n",
            tools.probe(),
            log.to_str().unwrap_or_default()
        ),
    )?;
    ward.start()?;
    let samples = latency_samples(&dir.join("tree"), &log);
    ward.stop()?;
    samples
}

fn debouncer_latency(tools: &Tools, window_ms: u64) -> Result<Vec<f64>> {
    let dir = tools.dir(&format!("latency-debouncer-{window_ms}"))?;
    let log = dir.join("stamps");
    let _probe = Owned::spawn(
        Command::new(&tools.probe).args([
            "debouncer",
            dir.join("tree").to_str().unwrap_or_default(),
            &window_ms.to_string(),
            "--",
            tools.probe(),
            "stamp",
            log.to_str().unwrap_or_default(),
        ]),
        &dir,
    )?;
    sleep(Duration::from_millis(300));
    latency_samples(&dir.join("tree"), &log)
}

/// watchexec running the stamp job, without a shell, not at startup, queueing runs while busy.
fn watchexec_command(
    watchexec: &Path,
    tree: &Path,
    window_ms: u64,
    extra: &[&str],
    job: &[&str],
) -> Command {
    let mut cmd = Command::new(watchexec);
    cmd.arg("--watch")
        .arg(tree)
        .args([
            "--debounce",
            &format!("{window_ms}ms"),
            "--postpone",
            "--shell=none",
            "--on-busy-update=queue",
            "--no-discover-ignore",
            "--quiet",
        ])
        .args(extra)
        .arg("--")
        .args(job)
        .current_dir(tree);
    cmd
}

fn watchexec_latency(tools: &Tools, watchexec: &Path, window_ms: u64) -> Result<Vec<f64>> {
    let dir = tools.dir(&format!("latency-watchexec-{window_ms}"))?;
    let log = dir.join("stamps");
    let tree = dir.join("tree");
    let _w = Owned::spawn(
        &mut watchexec_command(
            watchexec,
            &tree,
            window_ms,
            &[],
            &[tools.probe(), "stamp", log.to_str().unwrap_or_default()],
        ),
        &dir,
    )?;
    sleep(Duration::from_millis(500));
    latency_samples(&tree, &log)
}

pub(crate) fn latency(tools: &Tools, rows: &mut Vec<Row>) -> Result<()> {
    let mut measured = Vec::new();
    for window in [50, 1] {
        println!("latency: ward at {window} ms ...");
        let ward = p50_95_99(ward_latency(tools, window)?);
        println!("latency: notify-debouncer-full at {window} ms ...");
        let debouncer = p50_95_99(debouncer_latency(tools, window)?);
        let watchexec = match &tools.watchexec {
            Some(w) => {
                println!("latency: watchexec at {window} ms ...");
                match watchexec_latency(tools, w, window) {
                    Ok(s) => Some(p50_95_99(s)),
                    Err(e) => {
                        eprintln!("latency: watchexec at {window} ms failed: {e:#}");
                        None
                    }
                }
            }
            None => None,
        };
        measured.push((window, ward, debouncer, watchexec));
    }
    let measure = |w: u64| format!("write → job started p50/p95/p99, {w} ms window");
    for (window, ward, debouncer, watchexec) in measured {
        let bound = window as f64 + 2.0;
        rows.push(
            Row::new("latency", measure(window), "ms")
                .ward(ward.clone())
                .anchor(
                    format!("notify-debouncer-full {window} ms + spawn"),
                    debouncer,
                )
                .target(format!("p50 ≤ {bound} ms"), ward[0] <= bound),
        );
        if let Some(wx) = watchexec {
            let mut row = Row::new("latency", measure(window), "ms")
                .ward(ward.clone())
                .anchor(format!("watchexec {window} ms"), wx.clone());
            if window == 1 {
                row = row.target("p50 ≤ watchexec's", ward[0] <= wx[0]);
            }
            rows.push(row);
        }
    }
    if tools.watchexec.is_none() {
        rows.push(Row::new("latency", "watchexec: not installed, skipped", ""));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 2. Bursts through the whole daemon

/// What one burst gave.
#[derive(Debug)]
struct Burst {
    write_s: f64,
    /// From the first write until every path was accounted for (or the run gave up).
    done_s: f64,
    share: f64,
    /// The highest RSS of the watching process seen during the burst (sampled every ~20 ms):
    /// unlike `VmHWM`, not inflated by whatever the process touched while starting.
    peak_rss_mb: f64,
}

/// Writes `n` new files `d{i % 50}/f{i}` as fast as it can and waits until `log` accounts for
/// every index, `limit` passes after the last write, or nothing moves for 30 s, sampling the RSS
/// of `watcher` all along.
fn burst_files(tree: &Path, log: &Path, n: usize, limit: Duration, watcher: u32) -> Result<Burst> {
    let mut tail = LogTail::new(log);
    let mut seen = vec![false; n];
    let mut accounted = 0;
    let mut account = |tail: &mut LogTail| {
        for line in tail.lines() {
            for word in line.split_whitespace().skip(1) {
                if let Some(i) = file_index(word).filter(|&i| i < n)
                    && !seen[i]
                {
                    seen[i] = true;
                    accounted += 1;
                }
            }
        }
        accounted
    };
    let mut peak_rss_mb = 0.0f64;
    let mut sample = || {
        if let Some(rss) = procs::status_mb(watcher, "VmRSS") {
            peak_rss_mb = peak_rss_mb.max(rss);
        }
    };
    let t0 = Instant::now();
    for i in 0..n {
        fs::write(tree.join(format!("d{}/f{i}", i % 50)), "x")?;
        if i % 1000 == 0 {
            sample();
        }
    }
    let write_s = t0.elapsed().as_secs_f64();
    let written = Instant::now();
    let mut last = account(&mut tail);
    let mut last_progress = Instant::now();
    while last < n && written.elapsed() < limit {
        sleep(Duration::from_millis(20));
        sample();
        let now = account(&mut tail);
        if now > last {
            last_progress = Instant::now();
        } else if last_progress.elapsed() > Duration::from_secs(30) {
            eprintln!("burst: no progress for 30 s at {now}/{n}; giving up");
            break;
        }
        last = now;
    }
    sample();
    Ok(Burst {
        write_s,
        done_s: t0.elapsed().as_secs_f64(),
        share: last as f64 / n as f64,
        peak_rss_mb,
    })
}

fn make_dirs(tree: &Path) -> Result<()> {
    for d in 0..50 {
        fs::create_dir_all(tree.join(format!("d{d}")))?;
    }
    Ok(())
}

pub(crate) fn burst(tools: &Tools, rows: &mut Vec<Row>) -> Result<()> {
    let sizes: &[usize] = if tools.quick {
        &[50_000]
    } else {
        &[50_000, 200_000]
    };
    for &n in sizes {
        let limit = Duration::from_secs(60 + n as u64 / 1000);
        println!("burst: ward, {n} files ...");
        let dir = tools.dir(&format!("burst-ward-{n}"))?;
        let log = dir.join("worker-log");
        make_dirs(&dir.join("tree"))?;
        let ward = Ward::new(
            tools,
            &dir,
            &format!(
                "\n[jobs]\nqueue_capacity = 1024\n\n[[trigger]]\nname = \"record\"\nglob = [\"*\"]\nworker = [{:?}, \"worker\", {:?}]\n",
                tools.probe(),
                log.to_str().unwrap_or_default()
            ),
        )?;
        ward.start()?;
        let (keeper, server) = ward.pids()?;
        let b = burst_files(&dir.join("tree"), &log, n, limit, server)?;
        let (write_s, done_s, share, server_peak) = (b.write_s, b.done_s, b.share, b.peak_rss_mb);
        let server_hwm = procs::status_mb(server, "VmHWM").unwrap_or(f64::NAN);
        let keeper_peak = procs::status_mb(keeper, "VmHWM").unwrap_or(f64::NAN);
        let status = ward.status().unwrap_or_default();
        ward.stop()?;
        println!(
            "burst: ward {n}: written in {write_s:.2} s, {:.2}% processed after {done_s:.2} s, server RSS peak {server_peak:.1} MB (VmHWM {server_hwm:.1} MB), keeper VmHWM {keeper_peak:.1} MB; watch {}",
            share * 100.0,
            status["watch"]
        );

        let mut wx = None;
        if let Some(watchexec) = &tools.watchexec {
            println!("burst: watchexec, {n} files ...");
            match watchexec_burst(tools, watchexec, n, limit) {
                Ok(r) => wx = Some(r),
                Err(e) => eprintln!("burst: watchexec {n} failed: {e:#}"),
            }
        }
        let mut time = Row::new(
            "burst",
            format!("{n} new files: first write → all processed"),
            "s",
        )
        .ward(vec![done_s]);
        let mut accounted = Row::new("burst", format!("{n} new files: paths processed"), "%")
            .ward(vec![share * 100.0])
            .target("100%", share >= 1.0);
        let mut rss = Row::new(
            "burst",
            format!("{n} new files: peak RSS of the watching process during the burst / its VmHWM"),
            "MB",
        )
        .ward(vec![server_peak, server_hwm]);
        if n == 200_000 {
            rss = rss.target("≤ 64 MB", server_peak <= 64.0);
        }
        if let Some((wx_done, wx_share, wx_peak)) = wx {
            time = time.anchor("watchexec (1 run per batch)", vec![wx_done]);
            accounted = accounted.anchor("watchexec", vec![wx_share * 100.0]);
            rss = rss.anchor("watchexec", wx_peak);
        }
        rows.extend([time, accounted, rss]);
    }
    rows.push(Row::new(
        "burst",
        "watcher alone vs notify-debouncer-full, slow consumer: see `--only watch`",
        "",
    ));
    Ok(())
}

/// watchexec on a burst: its job is the stamp program with the paths of each batch on the
/// command line (`--emit-events-to=file` would hide them in a file). Returns (until done s,
/// share, watchexec's peak RSS MB).
fn watchexec_burst(
    tools: &Tools,
    watchexec: &Path,
    n: usize,
    limit: Duration,
) -> Result<(f64, f64, Vec<f64>)> {
    let dir = tools.dir(&format!("burst-watchexec-{n}"))?;
    let tree = dir.join("tree");
    let log = dir.join("events-log");
    make_dirs(&tree)?;
    let job = [tools.probe(), "events", log.to_str().unwrap_or_default()];
    // Each run gets the batch's events as JSON lines on its stdin.
    let extra = ["--emit-events-to=json-stdio"];
    let w = Owned::spawn(
        &mut watchexec_command(watchexec, &tree, 50, &extra, &job),
        &dir,
    )?;
    sleep(Duration::from_millis(500));
    let b = burst_files(&tree, &log, n, limit, w.pid())?;
    let hwm = procs::status_mb(w.pid(), "VmHWM").unwrap_or(f64::NAN);
    Ok((b.done_s, b.share, vec![b.peak_rss_mb, hwm]))
}

// ---------------------------------------------------------------------------------------------
// 4. Dispatch

/// Median gap between consecutive stamps (first field) in `log`, in microseconds.
fn median_gap_us(log: &Path) -> Result<f64> {
    let text = fs::read_to_string(log)?;
    let mut stamps: Vec<u64> = text.lines().filter_map(stamp_of).collect();
    stamps.sort_unstable();
    let mut gaps: Vec<f64> = stamps
        .windows(2)
        .map(|w| (w[1] - w[0]) as f64 / 1e3)
        .collect();
    gaps.sort_by(f64::total_cmp);
    Ok(percentile(&gaps, 0.5))
}

fn wait_lines(log: &Path, n: usize, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let lines = fs::read_to_string(log).map_or(0, |t| t.lines().count());
        if lines >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{} has {lines} of {n} lines after {limit:?}", log.display());
        }
        sleep(Duration::from_millis(20));
    }
}

/// Rounds of each dispatch measurement. Each round measures ward and its anchor back to back, in
/// alternating order, so that a change of the machine's load (other builds and benchmarks share
/// its two cores) hits both alike; each figure is the median of its rounds' medians.
const DISPATCH_ROUNDS: usize = 7;

/// Exec: one worker and a backlog of jobs; the gap between consecutive job starts is the cost of
/// one job (spawn, run, exit, reap, bookkeeping). Returns the median gap in µs.
fn ward_exec_round(tools: &Tools, jobs: usize, round: usize) -> Result<f64> {
    let dir = tools.dir(&format!("dispatch-exec-{round}"))?;
    let log = dir.join("stamps");
    let ward = Ward::new(
        tools,
        &dir,
        &format!(
            "debounce_ms = 1\n\n[jobs]\nworkers = 1\n\n[[trigger]]\nname = \"stamp\"\nglob = [\"*\"]\nexec = [{:?}, \"stamp\", {:?}, \"{{path}}\"]\n",
            tools.probe(),
            log.to_str().unwrap_or_default()
        ),
    )?;
    ward.start()?;
    for i in 0..jobs {
        fs::write(dir.join(format!("tree/f{i}")), "x")?;
    }
    wait_lines(&log, jobs, Duration::from_secs(120))?;
    ward.stop()?;
    median_gap_us(&log)
}

/// The same job in a plain spawn+wait loop.
fn plain_exec_round(tools: &Tools, jobs: usize, round: usize) -> Result<f64> {
    let dir = tools.dir(&format!("dispatch-plain-{round}"))?;
    let log = dir.join("stamps");
    let status = Command::new(&tools.probe)
        .args([
            "spawn-loop",
            &jobs.to_string(),
            "--",
            tools.probe(),
            "stamp",
            log.to_str().unwrap_or_default(),
        ])
        .status()?;
    if !status.success() {
        bail!("spawn-loop failed: {status}");
    }
    median_gap_us(&log)
}

/// Worker: the gap between consecutive requests seen by one persistent worker under a backlog.
fn ward_worker_round(tools: &Tools, jobs: usize, round: usize) -> Result<f64> {
    let dir = tools.dir(&format!("dispatch-worker-{round}"))?;
    let log = dir.join("worker-log");
    let ward = Ward::new(
        tools,
        &dir,
        &format!(
            "debounce_ms = 1\n\n[jobs]\nworkers = 1\n\n[[trigger]]\nname = \"record\"\nglob = [\"*\"]\nworker = [{:?}, \"worker\", {:?}]\n",
            tools.probe(),
            log.to_str().unwrap_or_default()
        ),
    )?;
    ward.start()?;
    for i in 0..jobs {
        fs::write(dir.join(format!("tree/f{i}")), "x")?;
    }
    wait_lines(&log, jobs, Duration::from_secs(120))?;
    ward.stop()?;
    median_gap_us(&log)
}

/// The same worker, fed one request at a time over a raw pipe by a release-built client: the
/// same number of requests, each the same bytes ward sends for the same file of `ward_tree`
/// (only the path is in the request; the file need not exist).
///
/// With `same_cpu`, the client and the worker share one CPU. Left to the scheduler, the round
/// trip is bimodal: 7–10 µs when both ends run on one CPU, 40–55 µs when they run on two and
/// each wake-up has to bring an idle virtual CPU back, and which mode a round gets depends on
/// the machine's other load. Pinned, the anchor is the fast mode every time: stable, and the
/// harder target.
fn raw_pipe_round(
    tools: &Tools,
    jobs: usize,
    round: usize,
    ward_tree: &Path,
    same_cpu: bool,
) -> Result<f64> {
    let dir = tools.dir(&format!("dispatch-pipe-{round}"))?;
    let log = dir.join("worker-log");
    let jobs = jobs.to_string();
    let mut args = vec!["pipe-client", &jobs, ward_tree.to_str().unwrap_or_default()];
    if same_cpu {
        args.push("--same-cpu");
    }
    args.extend([
        "--",
        tools.probe(),
        "worker",
        log.to_str().unwrap_or_default(),
    ]);
    let out = Command::new(&tools.probe).args(args).output()?;
    if !out.status.success() {
        bail!(
            "pipe-client failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    median_gap_us(&log)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    percentile(&values, 0.5)
}

pub(crate) fn dispatch(tools: &Tools, rows: &mut Vec<Row>) -> Result<()> {
    let (exec_jobs, worker_jobs) = if tools.quick {
        (300, 2_000)
    } else {
        (1_000, 5_000)
    };
    // ward exec, plain spawns, ward worker, raw pipe on one CPU, raw pipe left to the scheduler.
    let mut figures: [Vec<f64>; 5] = Default::default();
    for round in 0..DISPATCH_ROUNDS {
        println!(
            "dispatch: round {}/{DISPATCH_ROUNDS}: ward exec ({exec_jobs} jobs) and plain spawns, ward worker ({worker_jobs} jobs) and raw pipe ...",
            round + 1
        );
        // The worker round's tree, whose paths the raw pipe's requests name too.
        let ward_tree = tools.scratch.join(format!("dispatch-worker-{round}/tree"));
        if round % 2 == 0 {
            figures[0].push(ward_exec_round(tools, exec_jobs, round)?);
            figures[1].push(plain_exec_round(tools, exec_jobs, round)?);
            figures[2].push(ward_worker_round(tools, worker_jobs, round)?);
            figures[3].push(raw_pipe_round(tools, worker_jobs, round, &ward_tree, true)?);
        } else {
            figures[1].push(plain_exec_round(tools, exec_jobs, round)?);
            figures[0].push(ward_exec_round(tools, exec_jobs, round)?);
            figures[3].push(raw_pipe_round(tools, worker_jobs, round, &ward_tree, true)?);
            figures[2].push(ward_worker_round(tools, worker_jobs, round)?);
        }
        figures[4].push(raw_pipe_round(
            tools,
            worker_jobs,
            round,
            &ward_tree,
            false,
        )?);
    }
    println!(
        "dispatch: per-round medians (µs): ward exec {:.1?}, plain {:.1?}, ward worker {:.1?}, raw pipe one CPU {:.1?}, raw pipe unpinned {:.1?}",
        figures[0], figures[1], figures[2], figures[3], figures[4]
    );
    let ratios = |ward: &[f64], anchor: &[f64]| {
        median(ward.iter().zip(anchor).map(|(w, a)| w / a).collect())
    };
    println!(
        "dispatch: median of per-round ratios: exec {:.2}×, worker {:.2}× (unpinned pipe {:.2}×)",
        ratios(&figures[0], &figures[1]),
        ratios(&figures[2], &figures[3]),
        ratios(&figures[2], &figures[4])
    );
    let [ward_exec, plain_exec, ward_worker, raw_worker, _] = figures.map(median);
    rows.push(
        Row::new(
            "dispatch",
            "exec job → next exec job, 1 worker, backlog (median of rounds)",
            "µs",
        )
        .ward(vec![ward_exec])
        .anchor("plain fork+exec+wait loop", vec![plain_exec])
        .target("≤ 1.2×", ward_exec <= 1.2 * plain_exec),
    );
    rows.push(
        Row::new(
            "dispatch",
            "worker request → next request, 1 worker, backlog (median of rounds)",
            "µs",
        )
        .ward(vec![ward_worker])
        .anchor(
            "raw pipe round trip, same worker, one CPU",
            vec![raw_worker],
        )
        .target("≤ 2×", ward_worker <= 2.0 * raw_worker),
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 5. Supervision: the daemon's start, and its server's replacement

fn make_tree(tree: &Path, files: usize) -> Result<()> {
    for i in 0..files {
        let sub = tree.join(format!("d{:03}", i / 500));
        if i % 500 == 0 {
            fs::create_dir_all(&sub)?;
        }
        fs::write(sub.join(format!("f{i}")), "x")?;
    }
    Ok(())
}

fn walk_s(tools: &Tools, tree: &Path) -> Result<f64> {
    let out = Command::new(&tools.probe).arg("walk").arg(tree).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let ns: f64 = text
        .split_whitespace()
        .skip_while(|w| *w != "walk_ns")
        .nth(1)
        .context("walk printed no time")?
        .parse()?;
    Ok(ns / 1e9)
}

pub(crate) fn startup(tools: &Tools, rows: &mut Vec<Row>) -> Result<()> {
    let sizes: &[usize] = if tools.quick {
        &[1_000, 20_000]
    } else {
        &[1_000, 100_000]
    };
    for &n in sizes {
        println!("startup: tree of {n} files ...");
        let dir = tools.dir(&format!("startup-{n}"))?;
        let tree = dir.join("tree");
        let log = dir.join("worker-log");
        make_tree(&tree, n)?;
        let walk = walk_s(tools, &tree)?;
        let ward = Ward::new(
            tools,
            &dir,
            &format!(
                "\n[[trigger]]\nname = \"record\"\nglob = [\"*\"]\nworker = [{:?}, \"worker\", {:?}]\n",
                tools.probe(),
                log.to_str().unwrap_or_default()
            ),
        )?;
        let t0 = Instant::now();
        let first = ward.start()?.as_secs_f64();
        wait_lines(&log, n, Duration::from_secs(300))?;
        let processed = t0.elapsed().as_secs_f64();
        ward.stop()?;
        let again = ward.start()?.as_secs_f64();
        ward.stop()?;
        rows.push(
            Row::new(
                "startup",
                format!("`ward start` → ready, {n} files, first start"),
                "s",
            )
            .ward(vec![first])
            .anchor("plain walk of the tree", vec![walk]),
        );
        rows.push(
            Row::new(
                "startup",
                format!("`ward start` → every file processed once, {n} files"),
                "s",
            )
            .ward(vec![processed]),
        );
        rows.push(
            Row::new(
                "startup",
                format!("`ward start` → ready, {n} files, manifest up to date"),
                "s",
            )
            .ward(vec![again])
            .anchor("plain walk of the tree", vec![walk]),
        );
    }
    Ok(())
}

/// SIGKILL of the server → the keeper's replacement ready (server pid changed and status
/// answers), three times (the keeper gives up after five restarts within a minute).
pub(crate) fn server_restart(tools: &Tools, rows: &mut Vec<Row>) -> Result<()> {
    println!("supervision: SIGKILL of ward's server → replacement ready ...");
    let dir = tools.dir("server-restart")?;
    let log = dir.join("stamps");
    let ward = Ward::new(
        tools,
        &dir,
        &format!(
            "\n[[trigger]]\nname = \"stamp\"\nglob = [\"*\"]\nexec = [{:?}, \"stamp\", {:?}, \"{{path}}\"]\n",
            tools.probe(),
            log.to_str().unwrap_or_default()
        ),
    )?;
    ward.start()?;
    let mut samples = Vec::new();
    for _ in 0..3 {
        let (_, server) = ward.pids()?;
        let t0 = Instant::now();
        // SAFETY: kill has no memory-safety preconditions; the pid is the server of the daemon
        // this bench started, alive as status just said.
        unsafe { libc::kill(server as libc::pid_t, libc::SIGKILL) };
        loop {
            if let Ok((_, next)) = ward.pids()
                && next != server
                && procs::is_alive(next)
            {
                break;
            }
            if t0.elapsed() > Duration::from_secs(20) {
                bail!("no replacement server within 20 s");
            }
            sleep(Duration::from_millis(2));
        }
        samples.push(t0.elapsed().as_secs_f64() * 1e3);
        sleep(Duration::from_millis(300));
    }
    ward.stop()?;
    rows.push(
        Row::new(
            "supervision",
            "daemon: SIGKILL of the server → replacement ready, 3 crashes in a row (keeper backoff 100/200/400 ms included)",
            "ms",
        )
        .ward(samples),
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 6. Idle cost

pub(crate) fn idle(tools: &Tools, rows: &mut Vec<Row>) -> Result<()> {
    let secs = tools.idle_secs;
    println!("idle: keeper, server, worker, watchexec and the debouncer probe for {secs} s ...");
    let dir = tools.dir("idle-ward")?;
    let log = dir.join("worker-log");
    let ward = Ward::new(
        tools,
        &dir,
        &format!(
            "\n[[trigger]]\nname = \"record\"\nglob = [\"*\"]\nworker = [{:?}, \"worker\", {:?}]\n",
            tools.probe(),
            log.to_str().unwrap_or_default()
        ),
    )?;
    ward.start()?;
    // One job, so that a worker exists and is idle.
    fs::write(dir.join("tree/f0"), "x")?;
    wait_lines(&log, 1, Duration::from_secs(10))?;
    let (keeper, server) = ward.pids()?;
    let probe_name = tools.probe.to_string_lossy().into_owned();
    let worker = procs::children(server)
        .into_iter()
        .find(|&p| procs::cmdline(p).contains(&probe_name))
        .context("no idle worker among the server's children")?;

    let other = tools.dir("idle-debouncer")?;
    let stamp_log = other.join("stamps");
    let debouncer = Owned::spawn(
        Command::new(&tools.probe).args([
            "debouncer",
            other.join("tree").to_str().unwrap_or_default(),
            "50",
            "--",
            tools.probe(),
            "stamp",
            stamp_log.to_str().unwrap_or_default(),
        ]),
        &other,
    )?;
    let other = tools.dir("idle-watchexec")?;
    let watchexec = match &tools.watchexec {
        Some(w) => Some(Owned::spawn(
            &mut watchexec_command(
                w,
                &other.join("tree"),
                50,
                &[],
                &[
                    tools.probe(),
                    "stamp",
                    stamp_log.to_str().unwrap_or_default(),
                ],
            ),
            &other,
        )?),
        None => None,
    };
    // Let start-up settle before measuring.
    sleep(Duration::from_secs(2));
    let mut subjects: Vec<(String, u32)> = vec![
        ("ward keeper".into(), keeper),
        ("ward server".into(), server),
        ("ward idle worker (ward-bench-probe)".into(), worker),
        ("notify-debouncer-full probe".into(), debouncer.pid()),
    ];
    if let Some(w) = &watchexec {
        subjects.push(("watchexec".into(), w.pid()));
    }
    let before: Vec<_> = subjects.iter().map(|(_, p)| procs::usage(*p)).collect();
    let t0 = Instant::now();
    sleep(Duration::from_secs(secs));
    let elapsed = t0.elapsed().as_secs_f64();
    let mut figures = Vec::new();
    for ((name, pid), before) in subjects.iter().zip(before) {
        let after = procs::usage(*pid);
        let rss = procs::status_mb(*pid, "VmRSS").unwrap_or(f64::NAN);
        let anon = procs::status_mb(*pid, "RssAnon").unwrap_or(f64::NAN);
        let (cpu_ms, wakeups) = match (before, after) {
            (Some(b), Some(a)) => {
                let (cpu_s, switches) = a.since(&b);
                (cpu_s * 1e3, switches as f64 / elapsed)
            }
            _ => (f64::NAN, f64::NAN),
        };
        figures.push((name.clone(), cpu_ms, wakeups, rss, anon));
    }
    ward.stop()?;
    drop(watchexec);
    drop(debouncer);

    let anchor = figures.iter().find(|f| f.0 == "watchexec").cloned();
    for (name, cpu_ms, wakeups, rss, anon) in &figures {
        if !name.starts_with("ward") {
            continue;
        }
        let with_anchor = |row: Row, value: f64| match &anchor {
            Some((a, ..)) => row.anchor(a.clone(), vec![value]),
            None => row,
        };
        let (rss_limit, wake_limit) = match name.as_str() {
            "ward keeper" => (Some(4.0), 1.2),
            "ward server" => (Some(16.0), 1.2),
            _ => (None, 0.1),
        };
        rows.push(with_anchor(
            Row::new("idle", format!("{name}: CPU over {secs} s"), "ms").ward(vec![*cpu_ms]),
            anchor.as_ref().map_or(f64::NAN, |a| a.1),
        ));
        rows.push(with_anchor(
            Row::new("idle", format!("{name}: wakeups (context switches)"), "/s")
                .ward(vec![*wakeups])
                .target(
                    if wake_limit > 1.0 {
                        "≤ 1 heartbeat/s"
                    } else {
                        "none"
                    },
                    *wakeups <= wake_limit,
                ),
            anchor.as_ref().map_or(f64::NAN, |a| a.2),
        ));
        let mut rss_row =
            Row::new("idle", format!("{name}: RSS total/anonymous"), "MB").ward(vec![*rss, *anon]);
        if let Some(a) = &anchor {
            rss_row = rss_row.anchor(a.0.clone(), vec![a.3, a.4]);
        }
        if let Some(limit) = rss_limit {
            rss_row = rss_row.target(format!("≤ {limit} MB"), *rss <= limit);
        }
        rows.push(rss_row);
    }
    if let Some((name, cpu_ms, wakeups, rss, _)) =
        figures.iter().find(|f| f.0.starts_with("notify"))
    {
        rows.push(Row::new(
            "idle",
            format!("{name}, 50 ms window: CPU {cpu_ms:.1} ms, {wakeups:.1} wakeups/s, RSS {rss:.1} MB (not ward)"),
            "",
        ));
    }
    Ok(())
}

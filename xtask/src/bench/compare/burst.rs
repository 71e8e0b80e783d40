//! The `burst` part: tens of thousands of new files at once through the whole daemon (a
//! persistent worker), until every path is processed, with the peak RSS of the watching process;
//! the same for watchexec.

use std::fs;
use std::path::Path;
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::Result;

use super::super::procs::{self, LogTail, file_index};
use super::super::report::Row;
use super::{Owned, Tools, Ward, watchexec_command};

/// What one burst gave.
#[derive(Debug)]
pub(super) struct Burst {
    pub write_s: f64,
    /// From the first write until every path was accounted for (or the run gave up).
    pub done_s: f64,
    pub share: f64,
    /// The highest RSS of the watching process seen during the burst (sampled every ~20 ms):
    /// unlike `VmHWM`, not inflated by whatever the process touched while starting.
    pub peak_rss_mb: f64,
    /// The lines of the log (for the `batch` part: the command's runs).
    pub lines: usize,
    /// From the first write to the latest stamp a log line starts with (for the `batch` part:
    /// the end of the last run), in seconds.
    pub last_stamp_s: f64,
}

/// Writes `n` new files `d{i % 50}/f{i}` as fast as it can and waits until `log` accounts for
/// every index, `limit` passes after the last write, or nothing moves for 30 s, sampling the RSS
/// of `watcher` all along.
pub(super) fn burst_files(
    tree: &Path,
    log: &Path,
    n: usize,
    limit: Duration,
    watcher: u32,
) -> Result<Burst> {
    let mut tail = LogTail::new(log);
    let mut seen = vec![false; n];
    let mut accounted = 0;
    let (mut lines, mut last_stamp) = (0, 0);
    let mut account = |tail: &mut LogTail| {
        for line in tail.lines() {
            lines += 1;
            let mut words = line.split_whitespace();
            if let Some(stamp) = words.next().and_then(|w| w.parse::<u64>().ok()) {
                last_stamp = last_stamp.max(stamp);
            }
            for word in words {
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
    let t0_ns = procs::now_ns();
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
    let done_s = t0.elapsed().as_secs_f64();
    // What was appended since the loop's last read; the closure's borrows end here.
    let last = account(&mut tail);
    Ok(Burst {
        write_s,
        done_s,
        share: last as f64 / n as f64,
        peak_rss_mb,
        lines,
        last_stamp_s: last_stamp.saturating_sub(t0_ns) as f64 / 1e9,
    })
}

pub(super) fn make_dirs(tree: &Path) -> Result<()> {
    for d in 0..50 {
        fs::create_dir_all(tree.join(format!("d{d}")))?;
    }
    Ok(())
}

/// Measures ward's bursts (50k files; 200k too in a full run) and watchexec's, and adds their rows.
pub(crate) fn run(tools: &Tools, rows: &mut Vec<Row>) -> Result<()> {
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
                "\n[jobs]\nqueue_capacity = 1024\n\n{}",
                tools.record_trigger(&log)
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

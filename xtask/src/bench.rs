//! `cargo xtask bench`: ward against what people would use instead, side by side, in one run.
//!
//! Two kinds of parts. Each crate's own benchmark example (`watch`, `queue`, `supervisor`,
//! `crashdiag`, `server`) runs in release and prints its own tables; the figures of `queue`,
//! `supervisor` and `server` are also collected into the summary. The cross-tool comparisons
//! (`latency`, `burst`, `batch`, `dispatch`, `startup`, `services`, `subscribe`, `nats`, `scale`, `idle`,
//! in `compare`) drive the real `ward` daemon and its alternatives: watchexec,
//! notify-debouncer-full, plain spawns and pipes, raw async-nats against a real nats-server, or a
//! baseline of ward's own from the same run. At the end one
//! table shows every figure beside its anchor from the same run; `--json FILE` writes it as JSON.

mod compare;
mod procs;
mod report;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde_json::json;

use crate::workspace_root;
use compare::Tools;
use report::Row;

/// Each crate's benchmark example, by part name and package.
const CRATE_BENCHES: [(&str, &str); 5] = [
    ("watch", "ward-watch"),
    ("queue", "ward-queue"),
    ("supervisor", "ward-supervisor"),
    ("crashdiag", "ward-crashdiag"),
    ("server", "ward-server"),
];

/// The comparisons that drive the `ward` binary.
const COMPARISONS: [&str; 10] = [
    "latency",
    "burst",
    "batch",
    "dispatch",
    "startup",
    "services",
    "subscribe",
    "nats",
    "scale",
    "idle",
];

/// The order of a full run: comparisons and the crate benches they lean on, then the rest.
const ORDER: [&str; 15] = [
    "latency",
    "burst",
    "batch",
    "queue",
    "dispatch",
    "supervisor",
    "startup",
    "services",
    "subscribe",
    "nats",
    "scale",
    "idle",
    "watch",
    "crashdiag",
    "server",
];

const USAGE: &str = "usage: cargo xtask bench [--only NAME] [--json FILE] [--quick] [--idle-secs N] [--scale-files N] [--backend NAME] [--no-install] [--keep-scratch]\n\
parts: latency, burst, batch, queue, dispatch, supervisor, startup, services, subscribe, nats, scale, idle, watch, crashdiag, server\n\
--scale-files N: the scale part's tree (default 1000000; --quick 20000)\n\
--backend NAME: ward's watch.backend in every part but scale, which measures each (default: ward's own, auto)";

#[derive(Debug)]
struct Options {
    only: Option<String>,
    json: Option<PathBuf>,
    quick: bool,
    idle_secs: Option<u64>,
    scale_files: Option<usize>,
    backend: Option<String>,
    install: bool,
    keep: bool,
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut options = Options {
        only: None,
        json: None,
        quick: false,
        idle_secs: None,
        scale_files: None,
        backend: None,
        install: true,
        keep: false,
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = || args.next().cloned().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--only" => options.only = Some(value()?),
            "--json" => options.json = Some(PathBuf::from(value()?)),
            "--quick" => options.quick = true,
            "--no-install" => options.install = false,
            "--keep-scratch" => options.keep = true,
            "--scale-files" => {
                let v = value()?;
                let n = v.parse().ok().filter(|n| *n > 0);
                options.scale_files = Some(n.ok_or(format!("bad --scale-files {v}"))?);
            }
            "--backend" => {
                let v = value()?;
                if !["auto", "fanotify", "inotify", "poll"].contains(&v.as_str()) {
                    return Err(format!(
                        "bad --backend {v}: auto, fanotify, inotify or poll"
                    ));
                }
                options.backend = Some(v);
            }
            "--idle-secs" => {
                let v = value()?;
                options.idle_secs = Some(v.parse().map_err(|_| format!("bad --idle-secs {v}"))?);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if let Some(only) = &options.only
        && !ORDER.contains(&only.as_str())
    {
        return Err(format!("no part named {only:?}"));
    }
    Ok(options)
}

pub(crate) fn run(args: &[String]) -> ExitCode {
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let options = match parse(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("bench: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let started = Instant::now();
    let parts: Vec<&str> = ORDER
        .iter()
        .copied()
        .filter(|p| options.only.as_deref().is_none_or(|o| o == *p))
        .collect();
    let mut tools = None;
    if parts.iter().any(|p| COMPARISONS.contains(p)) {
        match prepare(&options) {
            Ok(t) => {
                let scratch = t.scratch.clone();
                // The daemons run in their own sessions: a Ctrl-C must stop them on the way out.
                if let Err(e) = ctrlc::set_handler(move || {
                    compare::interrupted();
                    let _ = std::fs::remove_dir_all(&scratch);
                    eprintln!("bench: interrupted; the daemons it started are stopped");
                    std::process::exit(130);
                }) {
                    eprintln!(
                        "bench: cannot handle Ctrl-C ({e}); an interrupted run may leave daemons"
                    );
                }
                tools = Some(t);
            }
            Err(e) => {
                eprintln!("bench: {e:#}");
                return ExitCode::FAILURE;
            }
        }
    }
    let mut rows = Vec::new();
    let mut failed = Vec::new();
    for part in &parts {
        println!("==== bench {part} ====");
        // The burst part leaves a quarter of a million new files' dirty pages behind: written
        // back now, not by kernel threads taking the CPU during the next part's measurements.
        // SAFETY: sync has no preconditions.
        unsafe { libc::sync() };
        // A panicking part (a bug of the bench) costs that part, not the run's table.
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match (*part, &tools) {
                ("latency", Some(t)) => compare::latency::run(t, &mut rows),
                ("burst", Some(t)) => compare::burst::run(t, &mut rows),
                ("batch", Some(t)) => compare::batch::run(t, &mut rows),
                ("dispatch", Some(t)) => compare::dispatch::run(t, &mut rows),
                ("startup", Some(t)) => compare::startup::run(t, &mut rows)
                    .and_then(|()| compare::startup::server_restart(t, &mut rows)),
                ("services", Some(t)) => compare::services::run(t, &mut rows),
                ("subscribe", Some(t)) => compare::subscribe::run(t, &mut rows),
                ("nats", Some(t)) => compare::nats::run(t, &mut rows),
                ("scale", Some(t)) => compare::scale::run(t, &mut rows),
                ("idle", Some(t)) => compare::idle::run(t, &mut rows),
                (name, _) => crate_bench(name, &mut rows),
            }))
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the bench panicked")));
        if let Err(e) = result {
            eprintln!("bench {part}: {e:#}");
            failed.push(format!("{part}: {e:#}"));
        }
    }
    if let Some(t) = &tools {
        if options.keep {
            println!("bench: scratch trees kept in {}", t.scratch.display());
        } else {
            let _ = std::fs::remove_dir_all(&t.scratch);
        }
    }
    let command = format!("cargo xtask bench {}", args.join(" "));
    println!("\n==== summary: `{}` ====\n", command.trim_end());
    print!("{}", report::table(&rows));
    println!("(took {:.0} s)", started.elapsed().as_secs_f64());
    if let Some(path) = &options.json {
        let doc = json!({
            "command": command.trim_end(),
            "unix_time": std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
            "watchexec": tools.as_ref().and_then(|t| t.watchexec.as_ref()).map(|w| version(w)),
            "seconds": started.elapsed().as_secs_f64(),
            "rows": rows.iter().map(Row::to_json).collect::<Vec<_>>(),
            "failed": failed,
        });
        if let Err(e) = std::fs::write(path, format!("{doc:#}\n")) {
            eprintln!("bench: writing {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!("bench: failed: {}", failed.join("; "));
        ExitCode::FAILURE
    }
}

pub(crate) fn cargo() -> std::ffi::OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

pub(crate) fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}

/// Builds `ward` and the probe in release, finds (or installs) watchexec, makes a scratch dir.
fn prepare(options: &Options) -> Result<Tools> {
    println!("bench: building ward and ward-bench-probe in release ...");
    let status = Command::new(cargo())
        .current_dir(workspace_root())
        .args(["build", "--release", "--quiet", "-p", "ward"])
        .args(["--bin", "ward", "--bin", "ward-keeper"])
        .status()?;
    if !status.success() {
        bail!("building ward failed: {status}");
    }
    build_probe()?;
    let release = target_dir().join("release");
    let scratch_base = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let scratch = scratch_base.join(format!("ward-bench-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let watchexec = find_watchexec(options.install);
    match &watchexec {
        Some(w) => println!("bench: comparing with {}", version(w)),
        None => println!("bench: watchexec is not available; its comparisons are skipped"),
    }
    Ok(Tools {
        ward: release.join("ward"),
        probe: release.join("ward-bench-probe"),
        watchexec,
        scratch,
        quick: options.quick,
        idle_secs: options
            .idle_secs
            .unwrap_or(if options.quick { 10 } else { 60 }),
        scale_files: options
            .scale_files
            .unwrap_or(if options.quick { 20_000 } else { 1_000_000 }),
        backend: options.backend.clone(),
    })
}

/// Builds `ward-bench-probe` statically linked, so that the job every tool runs starts without
/// the dynamic loader: "job started" then measures the watcher and its spawn, not ld.so mapping
/// libraries (about 0.3 ms of each start on the 2-core machine). Where no static C library is
/// installed it says so and builds the probe dynamically: the ratios still hold, as every tool
/// runs the same program, but the absolute latencies include the loader.
fn build_probe() -> Result<()> {
    let build = |static_link: bool| {
        let mut cmd = Command::new(cargo());
        cmd.current_dir(workspace_root()).args([
            "rustc",
            "--release",
            "--quiet",
            "-p",
            "xtask",
            "--bin",
            "ward-bench-probe",
        ]);
        if static_link {
            // `cargo rustc` hands this to the probe's own compilation (its link) alone.
            cmd.args(["--", "-C", "target-feature=+crt-static"]);
        }
        cmd.status()
    };
    let status = build(true)?;
    if status.success() {
        return Ok(());
    }
    println!(
        "bench: linking ward-bench-probe statically failed ({status}); building it dynamically, \
         so the latencies below include the dynamic loader's start of the job"
    );
    let status = build(false)?;
    if !status.success() {
        bail!("building ward-bench-probe failed: {status}");
    }
    Ok(())
}

/// watchexec on the PATH, else in the cache under `target/bench-tools`, else installed there
/// with `cargo install` (once: a build of several minutes).
fn find_watchexec(install: bool) -> Option<PathBuf> {
    let works = |p: &Path| {
        Command::new(p)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if works(Path::new("watchexec")) {
        return Some(PathBuf::from("watchexec"));
    }
    let root = workspace_root().join("target/bench-tools");
    let cached = root.join("bin/watchexec");
    if works(&cached) {
        return Some(cached);
    }
    if !install {
        return None;
    }
    println!(
        "bench: installing watchexec-cli into {} (once; this takes minutes) ...",
        root.display()
    );
    let status = Command::new(cargo())
        .args(["install", "watchexec-cli", "--locked", "--root"])
        .arg(&root)
        .status();
    match status {
        Ok(s) if s.success() && works(&cached) => Some(cached),
        Ok(s) => {
            eprintln!("bench: cargo install watchexec-cli failed: {s}");
            None
        }
        Err(e) => {
            eprintln!("bench: could not run cargo install: {e}");
            None
        }
    }
}

fn version(program: &Path) -> String {
    Command::new(program)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Runs a crate's benchmark example in release, echoing its output, and collects the figures
/// the summary quotes.
fn crate_bench(name: &str, rows: &mut Vec<Row>) -> Result<()> {
    let package = CRATE_BENCHES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, p)| *p)
        .context("unknown part")?;
    let mut child = Command::new(cargo())
        .current_dir(workspace_root())
        .args(["run", "--release", "--quiet", "--package", package])
        .args(["--example", "bench"])
        .stdout(Stdio::piped())
        .spawn()
        .context("running cargo")?;
    let mut output = Vec::new();
    for line in BufReader::new(child.stdout.take().context("no stdout")?).lines() {
        let line = line?;
        println!("{line}");
        output.push(line);
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("{package}'s bench failed: {status}");
    }
    match name {
        "queue" => queue_rows(&output, rows),
        "supervisor" => supervisor_rows(&output, rows),
        "watch" => rows.push(Row::new(
            "watch",
            "ward-watch vs notify-debouncer-full in process: its own tables above",
            "",
        )),
        "crashdiag" => rows.push(Row::new(
            "crashdiag",
            "heartbeat's idle cost in process: its own table above",
            "",
        )),
        _ => server_rows(&output, rows),
    }
    Ok(())
}

/// The numbers after `name` on the line of `output` that starts with it.
fn figures_after<'a>(output: &'a [String], name: &str) -> Option<Vec<&'a str>> {
    let line = output.iter().find(|l| l.starts_with(name))?;
    Some(line[name.len()..].split_whitespace().collect())
}

/// ward-queue's throughput table: `name  time  M jobs/s  ratio  range`. The targets are judged
/// on the ratio column, the median of per-round ratios to the raw channel (see the bench).
fn queue_rows(output: &[String], rows: &mut Vec<Row>) {
    let rate = |name: &str| -> f64 {
        figures_after(output, name)
            .and_then(|f| f.get(1)?.parse().ok())
            .unwrap_or(f64::NAN)
    };
    let ratio = |name: &str| -> f64 {
        figures_after(output, name)
            .and_then(|f| f.get(2)?.strip_suffix('x')?.parse().ok())
            .unwrap_or(f64::NAN)
    };
    let raw = rate("raw crossbeam bounded (boxed jobs)");
    let unkeyed = rate("ward-queue unkeyed ");
    let keyed = rate("ward-queue keyed (distinct keys)");
    rows.push(
        Row::new("queue", "no-op jobs, unkeyed, 2 workers", "M jobs/s")
            .ward(vec![unkeyed])
            .anchor("raw crossbeam bounded (boxed)", vec![raw])
            .target("≥ 0.8×", ratio("ward-queue unkeyed ") >= 0.8),
    );
    rows.push(
        Row::new(
            "queue",
            "no-op jobs, keyed (distinct keys), 2 workers",
            "M jobs/s",
        )
        .ward(vec![keyed])
        .anchor("raw crossbeam bounded (boxed)", vec![raw])
        .target("≥ 0.5×", ratio("ward-queue keyed (distinct keys)") >= 0.5),
    );
    for anchor in ["rayon spawn (unbounded)", "threadpool execute (unbounded)"] {
        rows.push(
            Row::new("queue", "no-op jobs, unkeyed, 2 workers", "M jobs/s")
                .ward(vec![unkeyed])
                .anchor(anchor, vec![rate(anchor)]),
        );
    }
}

/// A `Debug`-printed duration (`1.234ms`, `812.345µs`, `1.2s`) in milliseconds.
fn debug_duration_ms(text: &str) -> Option<f64> {
    let units = [("ns", 1e-6), ("µs", 1e-3), ("ms", 1.0), ("s", 1e3)];
    units.iter().find_map(|(suffix, scale)| {
        text.strip_suffix(suffix)?
            .parse::<f64>()
            .ok()
            .map(|v| v * scale)
    })
}

/// ward-supervisor's table: `name  median  p99  max  ratio`.
fn supervisor_rows(output: &[String], rows: &mut Vec<Row>) {
    let median = |name: &str| -> f64 {
        figures_after(output, name)
            .and_then(|f| debug_duration_ms(f.first()?))
            .unwrap_or(f64::NAN)
    };
    let ward = median("ward Supervisor, zero backoff");
    rows.push(
        Row::new(
            "supervision",
            "child SIGKILL → replacement running (median)",
            "ms",
        )
        .ward(vec![ward])
        .anchor(
            "std spawn+kill+wait",
            vec![median("baseline std spawn+kill+wait")],
        )
        .target("≤ 5 ms", ward <= 5.0),
    );
}

/// ward-server's reconciliation table: `name  time  ratio  ratio`. The target is judged against
/// the walk that stats every file (the least a reconciliation can do); the readdir-only walk is
/// shown beside it without one.
fn server_rows(output: &[String], rows: &mut Vec<Row>) {
    let time = |name: &str| -> f64 {
        figures_after(output, name)
            .and_then(|f| debug_duration_ms(f.first()?))
            .unwrap_or(f64::NAN)
    };
    let ward = time("ward reconcile: walk in a 2nd thread (server)");
    let stat_walk = time("plain walk: readdir + lstat of every file");
    let measure = "reconcile an unchanged 100k-file tree";
    rows.push(
        Row::new("server", measure, "ms")
            .ward(vec![ward])
            .anchor("plain walk + lstat per file", vec![stat_walk])
            .target("≤ 2×", ward <= 2.0 * stat_walk),
    );
    rows.push(Row::new("server", measure, "ms").ward(vec![ward]).anchor(
        "plain walk, readdir only",
        vec![time("plain walk: readdir only")],
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse_and_reject() {
        let args = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
        let o = parse(&args("--only idle --idle-secs 5 --json out.json --quick")).unwrap();
        assert_eq!(o.only.as_deref(), Some("idle"));
        assert_eq!(o.idle_secs, Some(5));
        assert!(o.quick && o.install);
        assert!(parse(&args("--only nope")).is_err());
        assert!(parse(&args("--idle-secs")).is_err());
        assert!(parse(&args("--frobnicate")).is_err());
        let o = parse(&args("--only scale --scale-files 200000")).unwrap();
        assert_eq!(o.scale_files, Some(200_000));
        assert!(parse(&args("--scale-files 0")).is_err());
        assert!(parse(&args("--scale-files many")).is_err());
        let o = parse(&args("--only burst --backend inotify")).unwrap();
        assert_eq!(o.backend.as_deref(), Some("inotify"));
        assert!(parse(&args("--backend kqueue")).is_err());
    }

    #[test]
    fn crate_bench_figures_are_collected() {
        let out: Vec<String> = [
            "raw crossbeam bounded (boxed jobs)          120ms       8.33        1.00x  1.00-1.00",
            "ward-queue unkeyed                          130ms       7.69        0.92x  0.61-1.40",
            "ward-queue keyed (distinct keys)            300ms       3.33        0.40x  0.22-0.81",
            "ward Supervisor, zero backoff             1.234ms    2.5ms",
            "baseline std spawn+kill+wait            812.5µs    1ms",
            "plain walk: readdir only                             35.7ms        1.00x        0.21x",
            "plain walk: readdir + lstat of every file           167.0ms        4.68x        1.00x",
            "ward reconcile: walk in a 2nd thread (server)       195.2ms        5.47x        1.17x",
        ]
        .map(String::from)
        .to_vec();
        let mut rows = Vec::new();
        queue_rows(&out, &mut rows);
        supervisor_rows(&out, &mut rows);
        assert_eq!(rows[0].ward, vec![7.69]);
        assert_eq!(rows[0].anchor.as_ref().unwrap().1, vec![8.33]);
        assert_eq!(rows[1].ward, vec![3.33]);
        // Judged on the median of per-round ratios, not on the two rates.
        assert!(rows[0].target.as_ref().unwrap().1);
        assert!(!rows[1].target.as_ref().unwrap().1);
        let sup = rows.last().unwrap();
        assert_eq!(sup.ward, vec![1.234]);
        assert_eq!(sup.anchor.as_ref().unwrap().1, vec![0.8125]);
        server_rows(&out, &mut rows);
        let [.., stat, readdir] = rows.as_slice() else {
            panic!("no server rows")
        };
        assert_eq!(stat.ward, vec![195.2]);
        assert_eq!(stat.anchor.as_ref().unwrap().1, vec![167.0]);
        assert!(stat.target.as_ref().unwrap().1);
        assert_eq!(readdir.anchor.as_ref().unwrap().1, vec![35.7]);
        assert!(readdir.target.is_none());
    }
}

//! `cargo xtask stress`: ward against workloads and seeded faults, with a verdict.
//!
//! It builds `ward` and `ward-stress-worker` in release, starts ward as a daemon in a temporary
//! directory, and while steady, churn, editor and burst workloads write into the watched tree it
//! injects faults on a seeded schedule (see [`faults`]). At the end it judges what the ledger,
//! the crash reports and /proc say against what it did ([`verdict`], with [`check`]'s
//! arithmetic), prints the verdict table, and writes `stress.json`, `stress.svg` and ward's log
//! into `--out` ([`outputs`]).

mod changes;
mod check;
mod config;
mod daemon;
mod failures;
mod faults;
mod follow;
mod host;
mod ledger;
mod nats;
mod outputs;
mod plot;
mod run;
mod sampler;
mod scene;
mod verdict;
mod workload;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::Ordering;
use std::time::Duration;

use faults::FaultKind;

const USAGE: &str = "usage: cargo xtask stress [--quick] [--duration D] [--rate R] [--faults LIST] [--seed N] [--backend NAME] [--out DIR] [--keep]
  --quick        a short run (about two minutes after the build) with every fault once
  --duration D   how long workloads and faults run: 600, 90s, 10m, 1h (default 10m; quick 75s)
  --rate R       multiplies the workloads' rates (default 1: the seed's 3 jobs per 40 s)
  --faults LIST  all (default), none, or some of: kill-worker, kill-server, stop-server, panic,
                 segv, abort, hog, hang, exit, mem-limit, full-queue, kill-keeper, reload,
                 state-disk-full, mount, chmod, socket-idle, orphans (state-disk-full and mount
                 mount file systems: without root, all leaves them out; as root, chmod runs a
                 ward of its own as a throwaway user, removed at the end), kill-nats (SIGKILL
                 and restart, then SIGSTOP and SIGCONT; needs nats-server: without it, all
                 leaves it out unless WARD_TEST_REQUIRE_TOOLS=1),
                 kill-work (the same)
  --seed N       the schedule's and the workloads' seed (default: from the clock, printed)
  --backend NAME the watch backend ward is asked for: auto (default: fanotify as root),
                 fanotify, inotify or poll
  --out DIR      where the report goes (default target/stress)
  --keep         keep the temporary directory (tree, ledger, state) for inspection
WARD_LOG goes to ward as it is: WARD_LOG=info,ward_watch=trace,ward_server=trace logs every change
delivered and every job queued and finished (in ward.log, beside the report).";

/// What the command line asked for.
#[derive(Debug, Clone)]
pub struct Options {
    /// The short run.
    pub quick: bool,
    /// How long workloads and faults run.
    pub duration: Duration,
    /// Workload rate multiplier.
    pub rate: f64,
    /// The faults to inject.
    pub faults: Vec<FaultKind>,
    /// The seed.
    pub seed: u64,
    /// The report directory.
    pub out: PathBuf,
    /// Keep the temporary directory.
    pub keep: bool,
    /// The watch backend ward is asked for; `None`: ward's default.
    pub backend: Option<String>,
}

/// Parses `90`, `90s`, `10m`, `1h`.
fn parse_duration(text: &str) -> Option<Duration> {
    let (number, unit) = match text.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => text.split_at(i),
        None => (text, "s"),
    };
    let n: f64 = number
        .parse()
        .ok()
        .filter(|n: &f64| n.is_finite() && *n > 0.0)?;
    let scale = match unit {
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return None,
    };
    Some(Duration::from_secs_f64(n * scale))
}

fn parse(args: &[String], root: &Path) -> Result<Options, String> {
    let mut quick = false;
    let mut duration = None;
    let mut rate = 1.0;
    let mut faults = faults::ALL.to_vec();
    let mut seed = None;
    let mut out = root.join("target/stress");
    let mut keep = false;
    let mut backend = None;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--quick" => quick = true,
            "--keep" => keep = true,
            "--duration" => {
                let v = value()?;
                duration = Some(parse_duration(v).ok_or_else(|| format!("bad duration {v:?}"))?);
            }
            "--rate" => {
                let v = value()?;
                rate = v
                    .parse()
                    .ok()
                    .filter(|r: &f64| r.is_finite() && *r > 0.0 && *r <= 1000.0)
                    .ok_or_else(|| format!("bad rate {v:?}: a number in (0, 1000]"))?;
            }
            "--faults" => faults = faults::parse_list(value()?)?,
            "--seed" => {
                let v = value()?;
                seed = Some(v.parse().map_err(|_| format!("bad seed {v:?}"))?);
            }
            "--out" => out = PathBuf::from(value()?),
            "--backend" => {
                let v = value()?;
                if !["auto", "fanotify", "inotify", "poll"].contains(&v.as_str()) {
                    return Err(format!(
                        "bad backend {v:?}: auto, fanotify, inotify or poll"
                    ));
                }
                backend = Some(v.clone());
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let duration = duration.unwrap_or(Duration::from_secs(if quick { 75 } else { 600 }));
    let seed = seed.unwrap_or_else(|| workload::now_ms() % 1_000_000);
    Ok(Options {
        quick,
        duration,
        rate,
        faults,
        seed,
        out,
        keep,
        backend,
    })
}

/// `cargo xtask stress ARGS`.
pub fn main(args: &[String], root: &Path) -> ExitCode {
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let mut opts = match parse(args, root) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("stress: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if !host::is_root() && opts.faults.iter().any(|k| k.needs_root()) {
        let names: Vec<&str> = opts
            .faults
            .iter()
            .filter(|k| k.needs_root())
            .map(|k| k.name())
            .collect();
        // Asked for by name, they are refused; left out of the default list, said so.
        if args.iter().any(|a| a == "--faults") {
            eprintln!(
                "stress: {} need root: they mount file systems",
                names.join(" and ")
            );
            return ExitCode::from(2);
        }
        println!(
            "stress: not root, so leaving out {}, which mount file systems",
            names.join(" and ")
        );
        opts.faults.retain(|k| !k.needs_root());
    }
    if nats::server_binary().is_none() && opts.faults.iter().any(|k| k.needs_nats()) {
        // Asked for by name, or by CI (which installs nats-server), it is refused.
        let required = std::env::var_os("WARD_TEST_REQUIRE_TOOLS").is_some_and(|v| v == "1");
        if required || args.iter().any(|a| a == "--faults") {
            eprintln!(
                "stress: kill-nats and kill-work need nats-server (apt-get install nats-server)"
            );
            return ExitCode::from(2);
        }
        println!("stress: no nats-server, so leaving out kill-nats and kill-work");
        opts.faults.retain(|k| !k.needs_nats());
    }
    let (ward, worker) = match build(root) {
        Ok(bins) => bins,
        Err(e) => {
            eprintln!("stress: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = ctrlc::set_handler(|| run::INTERRUPTED.store(true, Ordering::Relaxed)) {
        eprintln!("stress: cannot handle Ctrl-C ({e}); an interrupted run may leave ward running");
    }
    println!(
        "stress: {} run of {:.0} s, rate x{}, faults: {}; reproduce with --seed {}",
        if opts.quick { "quick" } else { "full" },
        opts.duration.as_secs_f64(),
        opts.rate,
        if opts.faults.is_empty() {
            "none".to_owned()
        } else {
            opts.faults
                .iter()
                .map(|k| k.name())
                .collect::<Vec<_>>()
                .join(",")
        },
        opts.seed
    );
    match run::run(&opts, &ward, &worker) {
        Ok(true) => {
            println!("stress: PASS");
            ExitCode::SUCCESS
        }
        Ok(false) => {
            println!("stress: FAIL");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("stress: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Builds `ward` and `ward-stress-worker` in release into the target directory this xtask was
/// built in, and returns their paths.
fn build(root: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    // This executable is <target>/<profile>/xtask.
    let exe = std::env::current_exe()?;
    let target = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| anyhow::anyhow!("no target directory above {}", exe.display()))?
        .to_path_buf();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    println!("stress: building ward and ward-stress-worker in release");
    let status = Command::new(cargo)
        .current_dir(root)
        .args([
            "build",
            "--release",
            "--package",
            "ward",
            "--bin",
            "ward",
            "--bin",
            "ward-keeper",
            "--package",
            "xtask",
            "--bin",
            "ward-stress-worker",
        ])
        .arg("--target-dir")
        .arg(&target)
        .status()?;
    anyhow::ensure!(status.success(), "cargo build failed: {status}");
    let release = target.join("release");
    Ok((release.join("ward"), release.join("ward-stress-worker")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_a_unit_or_mean_seconds() {
        assert_eq!(parse_duration("90"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("10m"), Some(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1.5m"), Some(Duration::from_secs(90)));
        for bad in ["", "m", "10x", "-5", "0", "1h30m"] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn options_default_by_mode_and_refuse_nonsense() {
        let args = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let root = Path::new("/w");
        let quick = parse(&args(&["--quick", "--seed", "5"]), root).unwrap();
        assert_eq!(quick.duration, Duration::from_secs(75));
        assert_eq!((quick.seed, quick.faults.len()), (5, faults::ALL.len()));
        assert_eq!(quick.out, Path::new("/w/target/stress"));
        assert_eq!(quick.backend, None);
        let inotify = parse(&args(&["--quick", "--backend", "inotify"]), root).unwrap();
        assert_eq!(inotify.backend.as_deref(), Some("inotify"));
        let full = parse(
            &args(&["--duration", "1h", "--faults", "segv,hang", "--rate", "2"]),
            root,
        )
        .unwrap();
        assert_eq!(full.duration, Duration::from_secs(3600));
        assert_eq!(full.faults.len(), 2);
        assert!(!full.quick);
        for bad in [
            &["--rate", "0"][..],
            &["--faults", "nuke"],
            &["--seed"],
            &["--bogus"],
            &["--backend", "kqueue"],
        ] {
            assert!(parse(&args(bad), root).is_err(), "{bad:?}");
        }
    }
}

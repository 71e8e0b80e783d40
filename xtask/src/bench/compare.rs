//! The cross-tool comparisons: the real `ward` daemon (release build) against what people would
//! use instead, each pair measured in the same run. The job program is `ward-bench-probe` for
//! every tool, so "job started" means the same thing everywhere (statically linked where it can
//! be: see `build_probe`).
//!
//! Scratch trees live in `/dev/shm` when there is one, so that writing 200k files measures the
//! watchers and not the disk.
//!
//! Each part is a module below; this file holds what they share: the tools, the daemons and
//! processes they start (stopped on drop, and by [`interrupted`]), and the reading of stamp logs.

pub(crate) mod batch;
pub(crate) mod burst;
pub(crate) mod dispatch;
pub(crate) mod idle;
pub(crate) mod latency;
pub(crate) mod nats;
pub(crate) mod scale;
mod scrape;
pub(crate) mod services;
pub(crate) mod startup;
pub(crate) mod subscribe;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde_json::Value;

/// What every comparison needs: the binaries under test and a scratch directory.
#[derive(Debug)]
pub(crate) struct Tools {
    pub ward: PathBuf,
    pub probe: PathBuf,
    pub watchexec: Option<PathBuf>,
    pub scratch: PathBuf,
    pub quick: bool,
    pub idle_secs: u64,
    /// The `scale` part's files.
    pub scale_files: usize,
    /// `--backend`: ward's `watch.backend` (the `scale` part measures each instead).
    pub backend: Option<String>,
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

    /// A trigger `record` on every file whose persistent worker (the probe) writes a line per
    /// job to `log`.
    fn record_trigger(&self, log: &Path) -> String {
        format!(
            "[[trigger]]\nname = \"record\"\nglob = [\"*\"]\nworker = [{:?}, \"worker\", {:?}]\n",
            self.probe(),
            log.to_str().unwrap_or_default()
        )
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
        // A body that names its backend (the scale part's) keeps it.
        let backend = match &tools.backend {
            Some(b) if !body.contains("backend = ") => format!("backend = \"{b}\"\n"),
            _ => String::new(),
        };
        let config = format!("[watch]\nroots = [\"tree\"]\n{backend}{body}");
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
        Owned::start(cmd.stdout(output.try_clone()?).stderr(output))
    }

    /// Starts `cmd` with the output it was given (stdin null), and nothing else in between.
    fn start(cmd: &mut Command) -> Result<Owned> {
        let child = cmd.stdin(Stdio::null()).spawn()?;
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

fn stamp_of(line: &str) -> Option<u64> {
    line.split_whitespace().next()?.parse().ok()
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

/// Waits (at most `limit`) until `log` has `n` lines.
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

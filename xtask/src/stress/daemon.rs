//! The ward daemon under test, seen from outside: its commands with deadlines, its pids from the
//! state directory, /proc readings, signals, and the sweep that leaves no process behind.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ward_sys::ProcStatus;

/// One ward setup in the harness's temporary directory.
#[derive(Debug, Clone)]
pub struct Ward {
    /// The release `ward` binary.
    pub bin: PathBuf,
    /// The config file.
    pub config: PathBuf,
    /// The state directory.
    pub state: PathBuf,
    /// The user (uid, gid) its commands run as, when not the harness's own.
    pub user: Option<(u32, u32)>,
}

/// What a bounded command did.
#[derive(Debug)]
pub struct Ran {
    /// Exit code; `None` if it was killed (by a signal, or for its deadline).
    pub code: Option<i32>,
    /// Its stdout.
    pub stdout: String,
    /// Its stderr.
    pub stderr: String,
    /// Whether the deadline killed it.
    pub timed_out: bool,
}

impl Ward {
    /// Runs `ward --config C --state-dir S ARGS`, killed if it is not done within `limit`.
    ///
    /// # Errors
    /// If it cannot be spawned.
    pub fn run(&self, args: &[&str], limit: Duration) -> anyhow::Result<Ran> {
        let mut command = Command::new(&self.bin);
        command
            .arg("--config")
            .arg(&self.config)
            .arg("--state-dir")
            .arg(&self.state)
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some((uid, gid)) = self.user {
            // std drops the supplementary groups too when it changes the uid; the harness's
            // home is not the user's to read.
            command.uid(uid).gid(gid);
            if let Some(home) = self.config.parent() {
                command.env("HOME", home);
            }
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("running {} {}", self.bin.display(), args.join(" ")))?;
        // Read in threads: a chatty command must not block on a full pipe while we wait.
        let drain = |pipe: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut text = String::new();
                if let Some(mut p) = pipe {
                    let mut bytes = Vec::new();
                    let _ = p.read_to_end(&mut bytes);
                    text = String::from_utf8_lossy(&bytes).into_owned();
                }
                text
            })
        };
        let out = drain(
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        let err = drain(
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        let deadline = Instant::now() + limit;
        let mut timed_out = false;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() >= deadline {
                timed_out = true;
                let _ = child.kill();
                break child.wait()?;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Ok(Ran {
            code: status.code(),
            stdout: out.join().unwrap_or_default(),
            stderr: err.join().unwrap_or_default(),
            timed_out,
        })
    }

    /// `ward start`, which returns once the server is ready.
    ///
    /// # Errors
    /// If it fails or takes more than 60 s.
    pub fn start(&self) -> anyhow::Result<()> {
        let ran = self.run(&["start"], Duration::from_secs(60))?;
        if ran.code != Some(0) {
            bail!(
                "ward start failed ({:?}{}): {}{}",
                ran.code,
                if ran.timed_out { ", timed out" } else { "" },
                ran.stdout,
                ran.stderr
            );
        }
        Ok(())
    }

    /// `ward status --json`, if it answers with JSON within 8 s.
    pub fn status(&self) -> Option<serde_json::Value> {
        let ran = self
            .run(&["status", "--json"], Duration::from_secs(8))
            .ok()?;
        serde_json::from_str(&ran.stdout).ok()
    }

    /// The keeper's pid, from the pidfile.
    pub fn keeper_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.state.join("ward.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// The keeper's account of the tree (`keeper.json`), read without asking anybody, so that it
    /// works while the server is stopped.
    pub fn keeper_state(&self) -> Option<serde_json::Value> {
        let text = std::fs::read(self.state.join("keeper.json")).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// The server's pid, if the keeper says one is running.
    pub fn server_pid(&self) -> Option<u32> {
        let k = self.keeper_state()?;
        if k["state"] != "running" {
            return None;
        }
        k["server_pid"].as_u64().map(|p| p as u32)
    }

    /// The server restarts the current keeper has counted.
    pub fn restarts(&self) -> u64 {
        self.keeper_state()
            .and_then(|k| k["restarts"].as_u64())
            .unwrap_or(0)
    }

    /// Waits (at most `limit`) until ward answers and has nothing queued, running, retrying or
    /// pending in its watcher; the other workloads keep writing, so this is a moment, not a
    /// lasting calm.
    pub fn await_idle(&self, limit: Duration) -> bool {
        wait_until(limit, || {
            super::scene::interrupted() || self.status().is_some_and(|s| idle(&s))
        })
    }

    /// Lines of ward's log (rotated files included) that contain `needle`.
    pub fn log_lines_with(&self, needle: &str) -> usize {
        ["ward.log", "ward.log.1", "ward.log.2", "ward.log.3"]
            .iter()
            .filter_map(|f| std::fs::read(self.state.join(f)).ok())
            .map(|bytes| {
                String::from_utf8_lossy(&bytes)
                    .lines()
                    .filter(|l| l.contains(needle))
                    .count()
            })
            .sum()
    }
}

/// Whether a `ward status` says the server has nothing queued, running, retrying or pending.
pub fn idle(s: &serde_json::Value) -> bool {
    let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    s["state"] == "running"
        && n(&s["queue"]["queued"]) + n(&s["queue"]["running"]) + n(&s["queue"]["backlog"]) == 0
        && n(&s["watch"]["pending"]) == 0
}

/// Polls `condition` every 50 ms until it holds or `limit` passes; whether it held.
pub fn wait_until(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether `pid` exists and has not died (a zombie or a reaped process is dead).
pub use ward_sys::is_alive;

/// Resident set of `pid` and its high-water mark since the process started, KiB.
pub fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let status = ProcStatus::read(pid).ok()?;
    Some((status.kib("VmRSS")?, status.kib("VmHWM")?))
}

/// The zombies whose parent is `pid`: children it has not reaped.
pub fn zombies_of(pid: u32) -> usize {
    ward_sys::processes()
        .into_iter()
        .filter(|(_, s)| s.is_zombie() && s.ppid == pid)
        .count()
}

/// Every live descendant of `pid`.
pub fn descendants(pid: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = ward_sys::processes()
        .into_iter()
        .filter_map(|(p, stat)| (!stat.is_dead()).then_some((p, stat.ppid)))
        .collect();
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    found.remove(0);
    found
}

/// Live processes (zombies excluded, this one too) whose command line mentions `needle`: ward's
/// processes carry the state directory in theirs, the workers and jobs the ledger's path.
pub fn processes_mentioning(needle: &Path) -> Vec<(u32, String)> {
    let needle = needle.as_os_str().as_encoded_bytes();
    let me = std::process::id();
    ward_sys::processes()
        .into_iter()
        .filter(|(p, stat)| *p != me && !stat.is_dead())
        .filter_map(|(p, _)| {
            let cmdline = std::fs::read(format!("/proc/{p}/cmdline")).ok()?;
            cmdline
                .windows(needle.len())
                .any(|w| w == needle)
                .then(|| (p, String::from_utf8_lossy(&cmdline).replace('\0', " ")))
        })
        .collect()
}

/// Sends `signal` to `pid`; whether it was delivered.
pub fn signal(pid: u32, signal: i32) -> bool {
    // SAFETY: kill has no memory-safety preconditions; the pid comes from ward's state files or
    // /proc, and at worst names a process that is already gone.
    unsafe { libc::kill(pid as libc::pid_t, signal) == 0 }
}

/// Kills every process mentioning `needle`, until none is left (at most 5 s);
/// returns what it found the first time.
pub fn sweep(needle: &Path) -> Vec<(u32, String)> {
    let found = processes_mentioning(needle);
    wait_until(Duration::from_secs(5), || {
        let left = processes_mentioning(needle);
        for (pid, _) in &left {
            signal(*pid, libc::SIGKILL);
        }
        left.is_empty()
    });
    found
}

//! The state directory and the pidfile: who owns the directory, and which keeper runs for it.
//!
//! A keeper is "running" exactly while it holds an exclusive `flock` on `ward.pid`; the kernel
//! drops the lock when the process dies however it dies, so a stale pidfile is recognized by the
//! lock being free, never by `kill -0` on a pid that may have been reused.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::Error;

/// File names inside the state directory.
pub mod names {
    /// The keeper's pidfile, locked for the keeper's whole life.
    pub const PIDFILE: &str = "ward.pid";
    /// The control socket.
    pub const SOCKET: &str = "ward.sock";
    /// The log file.
    pub const LOG: &str = "ward.log";
    /// The keeper's view of the tree, rewritten on each change (JSON).
    pub const KEEPER_STATE: &str = "keeper.json";
    /// The manifest of processed files (redb).
    pub const MANIFEST: &str = "manifest.redb";
    /// Crash reports.
    pub const CRASH_DIR: &str = "crashes";
    /// Heartbeat files of the ward processes.
    pub const HEARTBEAT_DIR: &str = "heartbeat";
    /// What the command line handed to the running daemon (JSON).
    pub const HANDOVER: &str = "launch.json";
    /// The paths `ward retry` asked for again within the NATS duplicate window (`retried.rs`).
    pub const RETRIED: &str = "retried";
}

/// A state directory that exists, belongs to this user and is closed to everyone else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateDir {
    path: PathBuf,
}

impl StateDir {
    /// Opens the state directory at `path`, creating it with mode 0700 when missing.
    ///
    /// # Errors
    /// If it cannot be created, is not a directory, belongs to another user, or is writable by
    /// group or others (anyone who can write there could replace the socket or the pidfile).
    pub fn open(path: &Path) -> Result<StateDir, Error> {
        let io = |e: io::Error| Error::StateDir {
            path: path.to_path_buf(),
            reason: e.to_string(),
        };
        match fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
        {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io(e)),
        }
        let meta = fs::metadata(path).map_err(io)?;
        let refuse = |reason: String| {
            Err(Error::StateDir {
                path: path.to_path_buf(),
                reason,
            })
        };
        if !meta.is_dir() {
            return refuse("not a directory".into());
        }
        // SAFETY: geteuid has no preconditions and cannot fail.
        let me = unsafe { libc::geteuid() };
        if meta.uid() != me {
            return refuse(format!(
                "owned by uid {}, not by this user (uid {me})",
                meta.uid()
            ));
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o022 != 0 {
            return refuse(format!(
                "mode {mode:o} lets group or others write to it; use chmod 700"
            ));
        }
        // Readable by others, it would show them job output (the log) and the tree's paths (the
        // manifest): it is ours, so it is closed as ward would have made it.
        if mode & 0o077 != 0 {
            fs::set_permissions(path, fs::Permissions::from_mode(0o700)).map_err(io)?;
        }
        let path = fs::canonicalize(path).map_err(io)?;
        for sub in [names::CRASH_DIR, names::HEARTBEAT_DIR] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(path.join(sub))
                .map_err(io)?;
        }
        Ok(StateDir { path })
    }

    /// The directory itself (canonical).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A file inside the directory.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

/// What the pidfile says when nobody holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PidfileState {
    /// A keeper holds the lock: it runs, with this pid.
    Running(u32),
    /// Nobody holds the lock, but a pid was left behind: that keeper died without cleaning up.
    Stale(u32),
    /// No pidfile, or an empty one: no keeper ran or it stopped cleanly.
    Absent,
}

/// The keeper's exclusive hold on `ward.pid`; released when dropped or when the process dies.
#[derive(Debug)]
pub struct Pidfile {
    file: File,
    path: PathBuf,
}

impl Pidfile {
    /// Takes the lock and writes this process's pid.
    ///
    /// # Errors
    /// [`Error::AlreadyRunning`] if another keeper holds it; I/O errors otherwise.
    pub fn acquire(state: &StateDir) -> Result<Pidfile, Error> {
        let path = state.join(names::PIDFILE);
        let io = |e: io::Error| Error::io(format!("pidfile {}", path.display()), e);
        // std opens with O_CLOEXEC, so no child inherits the descriptor and with it the lock.
        let mut file = open_private(
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                // Not truncated before the lock is ours: it may hold a running keeper's pid.
                .truncate(false),
            &path,
        )
        .map_err(io)?;
        if !try_lock(&file).map_err(io)? {
            let pid = read_pid(&mut file).unwrap_or(0);
            return Err(Error::AlreadyRunning {
                pid,
                state_dir: state.path().to_path_buf(),
            });
        }
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        file.sync_all().map_err(io)?;
        Ok(Pidfile { file, path })
    }

    /// Reads the pidfile's state without taking it. A keeper whose process is exiting (gone or a
    /// zombie, its other threads still ending) is waited for, up to 2 s, before it counts as
    /// running.
    ///
    /// # Errors
    /// I/O errors other than the file not existing.
    pub fn inspect(state: &StateDir) -> Result<PidfileState, Error> {
        let path = state.join(names::PIDFILE);
        let mut file = match open_private(OpenOptions::new().read(true).write(true), &path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(PidfileState::Absent),
            Err(e) => {
                return Err(Error::io(format!("pidfile {}", path.display()), e));
            }
        };
        let pid = read_pid(&mut file);
        let lock =
            || try_lock(&file).map_err(|e| Error::io(format!("locking {}", path.display()), e));
        let mut locked_by_other = !lock()?;
        // A keeper killed a moment ago holds the lock until its last thread has exited, while its
        // main thread already shows as a zombie: `kill -9` then `ward start` must not find it
        // running. The wait is bounded.
        if locked_by_other && pid.is_some_and(exiting) {
            let deadline = Instant::now() + EXITING_KEEPER_WAIT;
            while locked_by_other && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
                locked_by_other = !lock()?;
            }
        }
        // Our probe lock, if we got it, goes away when `file` is dropped here.
        Ok(match (locked_by_other, pid) {
            (true, pid) => PidfileState::Running(pid.unwrap_or(0)),
            (false, Some(pid)) => PidfileState::Stale(pid),
            (false, None) => PidfileState::Absent,
        })
    }

    /// Empties and removes the pidfile while still holding the lock, then releases it.
    pub fn release(self) {
        if let Err(e) = self.file.set_len(0) {
            log::warn!("cannot empty pidfile {}: {e}", self.path.display());
        }
        if let Err(e) = fs::remove_file(&self.path) {
            log::warn!("cannot remove pidfile {}: {e}", self.path.display());
        }
    }
}

/// How long [`Pidfile::inspect`] waits for the lock of a keeper whose process is exiting.
const EXITING_KEEPER_WAIT: Duration = Duration::from_secs(2);

/// Whether `pid` is gone or a zombie (its other threads may still be exiting), as far as
/// `/proc` tells; without `/proc`, never.
fn exiting(pid: u32) -> bool {
    match ward_sys::ProcStat::read(pid) {
        Ok(stat) => stat.is_dead(),
        Err(_) => Path::new("/proc/self/stat").exists(),
    }
}

fn try_lock(file: &File) -> io::Result<bool> {
    // SAFETY: flock on a descriptor we own; no memory is passed.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(err)
    }
}

fn read_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.rewind().ok()?;
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

/// The keeper's account of the tree, rewritten atomically on every change so that `ward status`
/// can read it while the keeper runs and after it is gone.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct KeeperState {
    /// The keeper's pid.
    pub keeper_pid: u32,
    /// When the keeper started (seconds since the Unix epoch).
    pub started_at: u64,
    /// Where the keeper is in its life.
    pub state: Phase,
    /// The current server's pid, while one runs.
    pub server_pid: Option<u32>,
    /// Server restarts since the keeper started.
    pub restarts: u32,
    /// Cause of the server's last death, in words, if it died.
    pub last_cause: Option<String>,
    /// Path of the last crash report, if any.
    pub last_report: Option<PathBuf>,
}

/// Where a keeper is in its life, as `keeper.json` records it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Starting the server.
    #[default]
    Starting,
    /// The server is ready.
    Running,
    /// Waiting out the backoff before restarting the server.
    BackingOff,
    /// Stopping the server on request.
    Stopping,
    /// Stopped; the keeper has ended or is ending.
    Stopped,
    /// The restart policy gave up on the server; the keeper has ended.
    GaveUp,
}

impl Phase {
    /// The phase as `keeper.json` and `ward status` name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Running => "running",
            Phase::BackingOff => "backing-off",
            Phase::Stopping => "stopping",
            Phase::Stopped => "stopped",
            Phase::GaveUp => "gave-up",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl KeeperState {
    /// Reads the keeper state file, if there is one.
    pub fn read(state: &StateDir) -> Option<KeeperState> {
        let text = fs::read(state.join(names::KEEPER_STATE)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Writes the keeper state file atomically (temporary file, then rename).
    ///
    /// # Errors
    /// If the file cannot be written.
    pub fn write(&self, state: &StateDir) -> Result<(), Error> {
        let path = state.join(names::KEEPER_STATE);
        let tmp = state.join(".keeper.json.tmp");
        let io = |e: io::Error| Error::io(format!("writing {}", path.display()), e);
        // A struct of numbers, strings and paths always serializes.
        let text = serde_json::to_vec_pretty(self).unwrap_or_default();
        let written = open_private(
            OpenOptions::new().write(true).create(true).truncate(true),
            &tmp,
        )
        .and_then(|mut file| file.write_all(&text))
        .and_then(|()| fs::rename(&tmp, &path));
        if written.is_err() {
            // A full disk leaves a partial file; the next write starts over.
            let _ = fs::remove_file(&tmp);
        }
        written.map_err(io)
    }
}

/// Opens a file of the state directory as `options` say, never through a symlink (one planted
/// as `ward.pid` or `ward.log` would make ward write wherever it points), created with mode 0600
/// and closed to 0600 if it was made wider before.
///
/// # Errors
/// The open's, `ELOOP` for a symlink, or the mode change's.
pub(crate) fn open_private(options: &mut OpenOptions, path: &Path) -> io::Result<File> {
    let file = options
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    let meta = file.metadata()?;
    if meta.permissions().mode() & 0o077 != 0 {
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
    }
    Ok(file)
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

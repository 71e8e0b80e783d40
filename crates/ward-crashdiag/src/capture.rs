//! In-process capture: [`install`] sets up the crash record, the chained panic hook, the
//! fatal-signal handler and the heartbeat; the [`CaptureGuard`] owns the heartbeat thread.

use std::backtrace::Backtrace;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::heartbeat::{Beater, HeartbeatThread, SystemClock};
use crate::record::PanicEntry;
use crate::{signal, time};

/// What [`install`] sets up; built with [`CaptureConfig::new`] and [`CaptureConfig::heartbeat`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CaptureConfig {
    /// The process's role in reports and log lines (`keeper`, `server`, `worker`...).
    pub role: String,
    /// Where the crash record goes; the directory is created if missing.
    pub crash_dir: PathBuf,
    /// The heartbeat, if any.
    pub heartbeat: Option<HeartbeatConfig>,
}

/// The heartbeat file and its rhythm.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HeartbeatConfig {
    /// The file rewritten at every beat.
    pub path: PathBuf,
    /// Time between beats (ward uses one second).
    pub interval: Duration,
    /// Time between heartbeat log lines (`log::info!`); `None` for none. The seed used 60 s.
    pub log_interval: Option<Duration>,
}

impl CaptureConfig {
    /// Crash capture for a process playing `role`, with its crash record in `crash_dir` and no
    /// heartbeat.
    pub fn new(role: impl Into<String>, crash_dir: impl Into<PathBuf>) -> Self {
        CaptureConfig {
            role: role.into(),
            crash_dir: crash_dir.into(),
            heartbeat: None,
        }
    }

    /// Crash capture into the crash directory the supervising ward names in
    /// [`CRASH_DIR_ENV`] (ward gives it to the services it runs), so that the report of this
    /// process's death holds its crash record; `None` when that variable is not set (not run by
    /// ward).
    ///
    /// ```no_run
    /// // In a service's `main`, before anything can crash:
    /// let _capture = match ward_crashdiag::CaptureConfig::from_env("web") {
    ///     Some(config) => Some(ward_crashdiag::install(config)?),
    ///     None => None,
    /// };
    /// # Ok::<(), ward_crashdiag::Error>(())
    /// ```
    pub fn from_env(role: impl Into<String>) -> Option<Self> {
        let dir = std::env::var_os(CRASH_DIR_ENV).filter(|d| !d.is_empty())?;
        Some(CaptureConfig::new(role, PathBuf::from(dir)))
    }

    /// Adds a heartbeat written to `path` every `interval`, logging a line every
    /// `log_interval`.
    pub fn heartbeat(
        mut self,
        path: impl Into<PathBuf>,
        interval: Duration,
        log_interval: Option<Duration>,
    ) -> Self {
        self.heartbeat = Some(HeartbeatConfig {
            path: path.into(),
            interval,
            log_interval,
        });
        self
    }
}

/// Keeps the heartbeat running. Dropping it stops and joins the heartbeat thread (which writes a
/// final `stopped` beat, the sign of an orderly shutdown) and deletes the crash record if it
/// is empty. The panic hook and the signal handler stay installed until the process ends.
#[derive(Debug)]
#[must_use = "dropping the guard stops the heartbeat"]
pub struct CaptureGuard {
    // Only one field owns a thread; `HeartbeatThread`'s own `Drop` sends the stop signal
    // before joining, so no ordering between fields matters here.
    heartbeat: Option<HeartbeatThread>,
    record_path: PathBuf,
}

impl CaptureGuard {
    /// The crash record this process writes to.
    pub fn record_path(&self) -> &Path {
        &self.record_path
    }
}

impl Drop for CaptureGuard {
    fn drop(&mut self) {
        drop(self.heartbeat.take());
        // Nothing was recorded: leave no file behind. The descriptor stays open (the handlers
        // still write to it, now into an unlinked file; stderr still gets the report).
        if fs::metadata(&self.record_path).is_ok_and(|m| m.len() == 0)
            && let Err(e) = fs::remove_file(&self.record_path)
        {
            log::warn!(
                "crash capture: removing empty {}: {e}",
                self.record_path.display()
            );
        }
    }
}

/// The environment variable in which a supervising ward names the crash directory of the
/// processes it runs: see [`CaptureConfig::from_env`].
pub const CRASH_DIR_ENV: &str = "WARD_CRASH_DIR";

/// The crash record of process `pid` in `crash_dir`: `<crash_dir>/<pid>.record`.
pub fn record_path(crash_dir: &Path, pid: u32) -> PathBuf {
    crash_dir.join(format!("{pid}.record"))
}

/// The record file, shared by the panic hook (through the mutex) and the signal handler
/// (through its raw descriptor, copied at install).
static RECORD: OnceLock<Mutex<File>> = OnceLock::new();
static PANICS: AtomicU64 = AtomicU64::new(0);

/// Installs crash capture in this process: opens the crash record, chains the panic hook,
/// installs the fatal-signal handler (with an alternate stack for the calling thread, so call
/// it from `main`) and starts the heartbeat. Keep the returned guard alive for as long as the
/// process should beat.
///
/// # Errors
/// [`Error::AlreadyInstalled`] on a second call; [`Error::Io`] if the crash directory, record
/// or heartbeat file cannot be created; [`Error::Sys`] if a signal call fails;
/// [`Error::Unsupported`] off Linux.
pub fn install(config: CaptureConfig) -> Result<CaptureGuard> {
    if RECORD.get().is_some() {
        return Err(Error::AlreadyInstalled);
    }
    fs::create_dir_all(&config.crash_dir)
        .map_err(|e| Error::io("creating crash directory", &config.crash_dir, e))?;
    let path = record_path(&config.crash_dir, std::process::id());
    // O_APPEND: the signal handler appends with plain write(2); the panic hook truncates first.
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        // std refuses truncate with append, but O_APPEND after O_TRUNC is what we want.
        .custom_flags(libc::O_CLOEXEC | libc::O_APPEND)
        .open(&path)
        .map_err(|e| Error::io("creating crash record", &path, e))?;
    let fd = file.as_raw_fd();
    RECORD
        .set(Mutex::new(file))
        .map_err(|_| Error::AlreadyInstalled)?;
    signal::install(fd)?;
    install_panic_hook(config.role.clone());
    let heartbeat = match &config.heartbeat {
        Some(hb) => {
            let beater = Beater::create(
                &hb.path,
                &config.role,
                hb.interval,
                hb.log_interval,
                SystemClock,
            )?;
            Some(HeartbeatThread::spawn(beater, hb.interval)?)
        }
        None => None,
    };
    Ok(CaptureGuard {
        heartbeat,
        record_path: path,
    })
}

/// Chains a hook that logs the panic and rewrites the crash record with it, then hands over to
/// the hook that was there before (by default, std's, which prints to stderr).
fn install_panic_hook(role: String) {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let count = PANICS.fetch_add(1, Ordering::SeqCst) + 1;
        let current = std::thread::current();
        let thread = current.name().unwrap_or("<unnamed>").to_owned();
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "<non-string panic payload>".to_owned());
        let location = info
            .location()
            .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
            .unwrap_or_default();
        // SAFETY: gettid takes no arguments and cannot fail.
        let tid = unsafe { libc::syscall(libc::SYS_gettid) } as u32;
        // Naming frames loads the executable's debug info into memory for good (tens of MB,
        // never returned). A panic off the main thread is caught (a pool's job) or ends only its
        // thread, so it keeps raw addresses, which `addr2line` names later if ever needed; the
        // main thread's panic ends the process and is worth the names.
        let backtrace = if tid == std::process::id() {
            Backtrace::force_capture().to_string()
        } else {
            let frames = signal::raw_frames();
            format!(
                "raw return addresses (not named, to keep memory): {}",
                frames.join(" ")
            )
        };
        log::error!(
            "{role} pid={} thread '{thread}' panicked at {location}: {message}\n{backtrace}",
            std::process::id()
        );
        let entry = PanicEntry {
            pid: std::process::id(),
            tid,
            thread,
            count,
            wall_ms: time::wall_ms_now(),
            location,
            message,
            backtrace: backtrace.lines().map(str::to_owned).collect(),
            complete: true,
        };
        if let Some(record) = RECORD.get() {
            // A panic while the record is locked (a panic in this hook) must not deadlock:
            // skip the record rather than wait.
            if let Ok(mut file) = record.try_lock() {
                // Keep only the latest panic: earlier ones were caught, or we would not be here.
                let written = file
                    .set_len(0)
                    .and_then(|()| file.write_all(entry.to_record().as_bytes()));
                if let Err(e) = written {
                    log::error!("crash capture: writing the panic to the crash record: {e}");
                }
            }
        }
        previous(info);
    }));
}

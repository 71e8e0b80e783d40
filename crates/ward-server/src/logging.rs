//! Logging: one log file per state directory, written by the keeper alone.
//!
//! Every line carries time, level, pid and role. The server and the workers log to their stderr,
//! which their parent captures line by line and appends here (lines that did not come from a ward
//! logger, such as a crash handler's dump, are wrapped with the writer's pid and role), so the
//! file has a single writer and size-based rotation is safe: past `max_bytes` the file moves to
//! `ward.log.1` (the older one to `.2`, `.3`; three are kept).
//!
//! No logging path may panic or wait for itself: a log write that fails (a full disk) is counted
//! and said in the log once writes succeed again; nothing is printed while the log file's lock is
//! held; and a record logged from inside the logger on the same thread (a panic hook's, when
//! something in the logger panicked) goes to standard error instead of waiting for the locks that
//! thread already holds.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

/// Rotated files kept beside the live one.
pub(crate) const KEEP_ROTATED: u32 = 3;

/// The log file, rotated by size.
#[derive(Debug)]
pub struct LogFile {
    path: PathBuf,
    file: File,
    written: u64,
    max_bytes: u64,
    /// Lines that could not be written since the last one that could, and why the last failed.
    lost: u64,
    last_error: Option<io::Error>,
    /// Lines lost since the file was opened.
    lost_total: u64,
}

impl LogFile {
    /// Opens (appending) the log file at `path`.
    ///
    /// # Errors
    /// If the file cannot be opened.
    pub fn open(path: &Path, max_bytes: u64) -> io::Result<LogFile> {
        let file = open_append(path)?;
        let written = file.metadata()?.len();
        Ok(LogFile {
            path: path.to_path_buf(),
            file,
            written,
            max_bytes,
            lost: 0,
            last_error: None,
            lost_total: 0,
        })
    }

    /// Appends one line (a newline is added when missing), rotating first if the file is full.
    /// A line that cannot be written is counted; the next line that can be is preceded by one
    /// saying how many were lost and why.
    ///
    /// # Errors
    /// If the write fails (the line is then counted as lost).
    pub fn append(&mut self, line: &[u8]) -> io::Result<()> {
        let result = self.try_append(line);
        if let Err(e) = &result {
            self.lost += 1;
            self.lost_total += 1;
            self.last_error = Some(io::Error::new(e.kind(), e.to_string()));
        }
        result
    }

    /// Lines that could not be written since the file was opened.
    pub fn lost_lines(&self) -> u64 {
        self.lost_total
    }

    fn try_append(&mut self, line: &[u8]) -> io::Result<()> {
        if self.written >= self.max_bytes {
            self.rotate()?;
        }
        if self.lost > 0 {
            let why = self
                .last_error
                .as_ref()
                .map_or_else(String::new, |e| format!(": {e}"));
            // The failed write may have left half a line: the note starts a line of its own.
            let note = format!(
                "\n{} WARN  [{} log] {} log line(s) could not be written{why}\n",
                humantime_now(),
                std::process::id(),
                self.lost
            );
            self.write_whole(note.as_bytes())?;
            self.lost = 0;
            self.last_error = None;
        }
        self.write_whole(line)?;
        if !line.ends_with(b"\n") {
            self.write_whole(b"\n")?;
        }
        Ok(())
    }

    fn write_whole(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        for n in (1..KEEP_ROTATED).rev() {
            let from = rotated(&self.path, n);
            if from.exists() {
                fs::rename(&from, rotated(&self.path, n + 1))?;
            }
        }
        fs::rename(&self.path, rotated(&self.path, 1))?;
        self.file = open_append(&self.path)?;
        self.written = 0;
        Ok(())
    }
}

/// The `n`th rotated file of the log at `path` (`ward.log.1` is the newest of them).
pub(crate) fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

fn open_append(path: &Path) -> io::Result<File> {
    crate::state::open_private(OpenOptions::new().create(true).append(true), path)
}

/// Where a process's own log records go.
#[derive(Debug, Clone)]
pub enum Sink {
    /// Standard error only (server and workers: their parent captures it).
    Stderr,
    /// The log file, and standard error too when `echo` is set (the keeper; `ward run` echoes).
    File {
        /// The shared log file.
        file: Arc<Mutex<LogFile>>,
        /// Also write to standard error.
        echo: bool,
    },
}

struct SinkWriter(Sink);

impl Write for SinkWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &self.0 {
            Sink::Stderr => io::stderr().write_all(buf)?,
            Sink::File { file, echo } => {
                if *echo {
                    // A closed terminal must not stop the log file from being written.
                    let _ = io::stderr().write_all(buf);
                }
                // A failed write is counted by the file and said there once writes succeed.
                let _ = file.lock().append(buf);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Installs the process's logger: `WARD_LOG` (env_logger syntax) filters, `info` by default.
///
/// notify's inotify backend logs only that it could not remove the watch of a deleted
/// directory, which the kernel had removed already: a warning on every `rm -r`, with nothing
/// to act on. It logs errors only, unless `WARD_LOG` names `notify::inotify`.
pub fn init(role: &str, sink: Sink) {
    let role = role.to_owned();
    let pid = std::process::id();
    let logger = env_logger::Builder::new()
        .filter_level(log::LevelFilter::Info)
        .filter_module("notify::inotify", log::LevelFilter::Error)
        .parse_env("WARD_LOG")
        .format(move |buf, record| {
            writeln!(
                buf,
                "{} {:<5} [{pid} {role}] {}",
                buf.timestamp_millis(),
                record.level(),
                record.args()
            )
        })
        .target(env_logger::Target::Pipe(Box::new(SinkWriter(sink))))
        .build();
    let max_level = logger.filter();
    match log::set_boxed_logger(Box::new(Reentrant(logger))) {
        Ok(()) => log::set_max_level(max_level),
        Err(e) => {
            let _ = writeln!(io::stderr(), "ward: logger already installed: {e}");
        }
    }
}

thread_local! {
    /// Set while this thread is inside the logger.
    static LOGGING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The logger, guarded against itself: a record logged while the same thread is already inside
/// the logger (a panic hook's record, when a write panicked with env_logger's and the log file's
/// locks held) would wait forever for those locks. It goes to standard error instead.
struct Reentrant(env_logger::Logger);

/// Clears [`LOGGING`] when the outer call ends, by return or by unwinding.
struct Inside;

impl Drop for Inside {
    fn drop(&mut self) {
        LOGGING.with(|l| l.set(false));
    }
}

impl log::Log for Reentrant {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        self.0.enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.0.matches(record) {
            return;
        }
        // `try_with`: a thread being torn down has no thread-locals left; it logs to stderr.
        let nested = LOGGING.try_with(|l| l.replace(true)).unwrap_or(true);
        if nested {
            let _ = writeln!(
                io::stderr(),
                "{} {:<5} [{}] (logged from inside the logger) {}",
                humantime_now(),
                record.level(),
                std::process::id(),
                record.args()
            );
            return;
        }
        let _inside = Inside;
        self.0.log(record);
    }

    fn flush(&self) {
        self.0.flush();
    }
}

/// Writes a line captured from a child's stderr into the log: a line that a ward logger already
/// formatted goes in as it is; anything else is wrapped with the child's pid and role.
pub fn append_captured(file: &Mutex<LogFile>, echo: bool, pid: u32, role: &str, line: &[u8]) {
    let formatted = is_formatted(line);
    let mut out = Vec::with_capacity(line.len() + 64);
    if !formatted {
        let now = humantime_now();
        out.extend_from_slice(format!("{now} INFO  [{pid} {role}] ").as_bytes());
    }
    out.extend_from_slice(line);
    if !out.ends_with(b"\n") {
        out.push(b'\n');
    }
    if echo {
        let _ = io::stderr().write_all(&out);
    }
    // A failed write is counted by the file and said there once writes succeed; printing it here
    // could only fail the same way (under `ward start` stderr is the log file). Marked as inside
    // the logger: a record logged on this thread meanwhile must not wait for the lock it holds.
    let outer = LOGGING.try_with(|l| !l.replace(true)).unwrap_or(false);
    let _inside = outer.then_some(Inside);
    let _ = file.lock().append(&out);
}

/// A ward log line starts with an RFC 3339 timestamp such as `2026-11-23T11:40:00.123Z`.
fn is_formatted(line: &[u8]) -> bool {
    line.len() > 24 && line[4] == b'-' && line[7] == b'-' && line[10] == b'T' && line[23] == b'Z'
}

/// Now, in the RFC 3339 form that starts each ward log line.
fn humantime_now() -> String {
    ward_sys::UtcTime::now().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_keeps_three_old_files_and_loses_no_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ward.log");
        let mut log = LogFile::open(&path, 100).unwrap();
        for i in 0..50 {
            log.append(format!("line {i:02} padding padding").as_bytes())
                .unwrap();
        }
        let live = fs::read_to_string(&path).unwrap();
        let last = fs::read_to_string(rotated(&path, 1)).unwrap();
        assert!(live.ends_with("line 49 padding padding\n"), "{live}");
        assert!(last.lines().count() >= 3, "{last}");
        assert!(rotated(&path, 3).exists());
        assert!(!rotated(&path, 4).exists());
    }

    /// Regression: on a full disk a failed log write was printed to stderr, which is the same
    /// full disk under `ward start`, and the print panicked with the log's lock held.
    #[test]
    fn failed_log_writes_are_counted_survived_and_said_once_writes_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ward.log");
        let mut log = LogFile::open(&path, 1 << 20).unwrap();
        // /dev/full fails every write with ENOSPC, as a full disk does.
        log.file = OpenOptions::new().append(true).open("/dev/full").unwrap();
        let log = Mutex::new(log);
        for i in 0..3 {
            append_captured(&log, false, 42, "server", format!("lost {i}").as_bytes());
        }
        assert_eq!(log.lock().lost_lines(), 3);
        log.lock().file = open_append(&path).unwrap();
        append_captured(&log, false, 42, "server", b"kept");
        let text = fs::read_to_string(&path).unwrap();
        let lines: Vec<_> = text.lines().filter(|l| !l.is_empty()).collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            lines[0].contains("3 log line(s) could not be written: No space left on device"),
            "{}",
            lines[0]
        );
        assert!(lines[1].ends_with("kept"), "{}", lines[1]);
    }

    /// A writer that logs through the logger it belongs to, as a panic hook does when something
    /// in the logger panics with its locks held.
    struct LogsFromInside {
        logger: Arc<std::sync::OnceLock<Reentrant>>,
        written: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for LogsFromInside {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let mut written = self.written.lock();
            if let Some(logger) = self.logger.get() {
                log::Log::log(
                    logger,
                    &log::Record::builder()
                        .args(format_args!("from inside"))
                        .level(log::Level::Error)
                        .build(),
                );
            }
            written.extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_record_logged_from_inside_the_logger_does_not_wait_for_its_locks() {
        let cell = Arc::new(std::sync::OnceLock::new());
        let written = Arc::new(Mutex::new(Vec::new()));
        let writer = LogsFromInside {
            logger: Arc::clone(&cell),
            written: Arc::clone(&written),
        };
        let logger = env_logger::Builder::new()
            .filter_level(log::LevelFilter::Info)
            .target(env_logger::Target::Pipe(Box::new(writer)))
            .build();
        assert!(cell.set(Reentrant(logger)).is_ok());
        let (done_tx, done) = crossbeam_channel::bounded(1);
        let logging = std::thread::spawn(move || {
            log::Log::log(
                cell.get().unwrap(),
                &log::Record::builder()
                    .args(format_args!("outer"))
                    .level(log::Level::Info)
                    .build(),
            );
            let _ = done_tx.send(());
        });
        assert!(
            done.recv_timeout(std::time::Duration::from_secs(10))
                .is_ok(),
            "the nested record waited for the locks its own thread held"
        );
        logging.join().unwrap();
        assert!(String::from_utf8_lossy(&written.lock()).contains("outer"));
    }

    #[test]
    fn captured_lines_are_wrapped_unless_already_formatted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ward.log");
        let log = Mutex::new(LogFile::open(&path, 1 << 20).unwrap());
        append_captured(&log, false, 42, "worker 1", b"Segmentation fault");
        append_captured(
            &log,
            false,
            42,
            "server",
            b"2026-11-23T11:40:00.123Z INFO  [42 server] ready",
        );
        let text = fs::read_to_string(&path).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert!(
            lines[0].ends_with(" INFO  [42 worker 1] Segmentation fault"),
            "{}",
            lines[0]
        );
        assert!(is_formatted(lines[0].as_bytes()), "{}", lines[0]);
        assert_eq!(lines[1], "2026-11-23T11:40:00.123Z INFO  [42 server] ready");
    }
}

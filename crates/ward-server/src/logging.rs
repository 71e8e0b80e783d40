//! Logging: one log file per state directory, written by the keeper alone.
//!
//! Every line carries time, level, pid and role. The server and the workers log to their stderr,
//! which their parent captures line by line and appends here (lines that did not come from a ward
//! logger, such as a crash handler's dump, are wrapped with the writer's pid and role), so the
//! file has a single writer and size-based rotation is safe: past `max_bytes` the file moves to
//! `ward.log.1` (the older one to `.2`, `.3`; three are kept).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

/// Rotated files kept beside the live one.
const KEEP_ROTATED: u32 = 3;

/// The log file, rotated by size.
#[derive(Debug)]
pub struct LogFile {
    path: PathBuf,
    file: File,
    written: u64,
    max_bytes: u64,
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
        })
    }

    /// Appends one line (a newline is added when missing), rotating first if the file is full.
    ///
    /// # Errors
    /// If the write fails.
    pub fn append(&mut self, line: &[u8]) -> io::Result<()> {
        if self.written >= self.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(line)?;
        self.written += line.len() as u64;
        if !line.ends_with(b"\n") {
            self.file.write_all(b"\n")?;
            self.written += 1;
        }
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

fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
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
                file.lock().append(buf)?;
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
    let result = env_logger::Builder::new()
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
        .try_init();
    if let Err(e) = result {
        eprintln!("ward: logger already installed: {e}");
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
    if let Err(e) = file.lock().append(&out) {
        eprintln!("ward: cannot write log file: {e}");
    }
}

/// A ward log line starts with an RFC 3339 timestamp such as `2026-11-23T11:40:00.123Z`.
fn is_formatted(line: &[u8]) -> bool {
    line.len() > 24 && line[4] == b'-' && line[7] == b'-' && line[10] == b'T' && line[23] == b'Z'
}

fn humantime_now() -> String {
    // RFC 3339 UTC with milliseconds, computed without a date crate: days since the epoch to a
    // civil date (Howard Hinnant's algorithm).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        now.subsec_millis()
    )
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

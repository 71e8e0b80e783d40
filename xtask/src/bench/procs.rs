//! What the comparisons need from the outside of processes: the monotonic clock, `/proc` figures
//! (CPU time, context switches summed over threads, RSS, children), and a log file read as it
//! grows. Nothing here starts or stops a process.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use ward_sys::{ProcStat, ProcStatus};

/// `CLOCK_MONOTONIC` in nanoseconds: the clock `ward-bench-probe` stamps with.
pub(crate) fn now_ns() -> u64 {
    // SAFETY: a zeroed timespec is valid; clock_gettime only writes through the valid pointer.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: `ts` is a valid out pointer and CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A `kB` field of `/proc/PID/status` (`VmRSS`, `VmHWM`), in MB.
pub(crate) fn status_mb(pid: u32, field: &str) -> Option<f64> {
    let kib = ProcStatus::read(pid).ok()?.kib(field)?;
    Some(kib as f64 / 1024.0)
}

/// CPU time and context switches (voluntary + involuntary) of a process, per live thread, so that
/// a difference counts threads that started or ended in between right: a new thread from zero,
/// an ended one with what it had at the first reading (its last moments are lost, which for idle
/// processes is nothing).
#[derive(Clone, Debug)]
pub(crate) struct Usage {
    /// utime + stime of the whole process, in seconds (clock ticks: coarse).
    ticks_s: f64,
    /// Per thread id: nanoseconds on the CPU (schedstat, when the kernel keeps it) and switches.
    threads: BTreeMap<u32, (Option<u64>, u64)>,
}

impl Usage {
    /// (CPU seconds, context switches) from `before` to `self`.
    pub(crate) fn since(&self, before: &Usage) -> (f64, u64) {
        let mut cpu_ns = Some(0u64);
        let mut switches = 0;
        for (tid, (ns, sw)) in &self.threads {
            let (ns0, sw0) = before.threads.get(tid).copied().unwrap_or((Some(0), 0));
            switches += sw.saturating_sub(sw0);
            cpu_ns = match (cpu_ns, ns, ns0) {
                (Some(total), Some(ns), Some(ns0)) => Some(total + ns.saturating_sub(ns0)),
                _ => None,
            };
        }
        let cpu_s = cpu_ns.map_or((self.ticks_s - before.ticks_s).max(0.0), |ns| {
            ns as f64 / 1e9
        });
        (cpu_s, switches)
    }
}

pub(crate) fn usage(pid: u32) -> Option<Usage> {
    let stat = ProcStat::read(pid).ok()?;
    let ticks = stat.utime_ticks + stat.stime_ticks;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut threads = BTreeMap::new();
    for task in fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
        let Some(tid) = task
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<u32>().ok())
        else {
            continue;
        };
        let ns = fs::read_to_string(task.path().join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok());
        let Ok(status) = fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        let mut switches = 0;
        for line in status.lines() {
            if let Some(v) = line
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                switches += v.trim().parse::<u64>().unwrap_or(0);
            }
        }
        threads.insert(tid, (ns, switches));
    }
    Some(Usage {
        ticks_s: ticks as f64 / hz,
        threads,
    })
}

/// The children of a process, over all its threads.
pub(crate) fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// The command line of a process, its arguments joined by spaces.
pub(crate) fn cmdline(pid: u32) -> String {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// Whether a process exists and has not died: a zombie counts as gone, its parent only has to
/// reap it.
pub(crate) use ward_sys::is_alive;

/// A log file appended to by other processes, read line by line as it grows.
#[derive(Debug)]
pub(crate) struct LogTail {
    path: PathBuf,
    offset: u64,
    partial: String,
}

impl LogTail {
    pub(crate) fn new(path: &Path) -> LogTail {
        LogTail {
            path: path.to_path_buf(),
            offset: 0,
            partial: String::new(),
        }
    }

    /// The complete lines appended since the last call.
    pub(crate) fn lines(&mut self) -> Vec<String> {
        let Ok(mut file) = fs::File::open(&self.path) else {
            return Vec::new();
        };
        if file.seek(SeekFrom::Start(self.offset)).is_err() {
            return Vec::new();
        }
        let mut bytes = Vec::new();
        if file.read_to_end(&mut bytes).is_err() {
            return Vec::new();
        }
        self.offset += bytes.len() as u64;
        self.partial.push_str(&String::from_utf8_lossy(&bytes));
        let Some(end) = self.partial.rfind('\n') else {
            return Vec::new();
        };
        let complete: String = self.partial.drain(..=end).collect();
        complete.lines().map(str::to_owned).collect()
    }
}

/// The index `i` of a path whose file name is `f{i}`.
pub(crate) fn file_index(path: &str) -> Option<usize> {
    path.rsplit('/').next()?.strip_prefix('f')?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_tail_returns_only_complete_lines_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut tail = LogTail::new(&path);
        assert!(tail.lines().is_empty());
        fs::write(&path, "1 a\n2 b").unwrap();
        assert_eq!(tail.lines(), vec!["1 a"]);
        let mut f = fs::OpenOptions::new().append(true).open(&path).unwrap();
        std::io::Write::write_all(&mut f, b"c\n3 d\n").unwrap();
        assert_eq!(tail.lines(), vec!["2 bc", "3 d"]);
        assert!(tail.lines().is_empty());
    }

    #[test]
    fn file_index_reads_the_last_component() {
        assert_eq!(file_index("/x/d3/f123"), Some(123));
        assert_eq!(file_index("f7"), Some(7));
        assert_eq!(file_index("/x/f/g"), None);
    }

    #[test]
    fn usage_of_this_process_is_readable() {
        let before = usage(std::process::id()).unwrap();
        // A thread that starts and ends in between must not make the difference negative.
        std::thread::spawn(|| std::thread::sleep(std::time::Duration::from_millis(5)))
            .join()
            .unwrap();
        let after = usage(std::process::id()).unwrap();
        let (cpu_s, _) = after.since(&before);
        assert!(cpu_s >= 0.0);
        assert!(after.threads.values().map(|t| t.1).sum::<u64>() > 0);
        assert!(status_mb(std::process::id(), "VmRSS").unwrap() > 0.0);
    }
}

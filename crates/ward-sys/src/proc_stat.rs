//! `/proc/<pid>/stat`: a process's state, parent and times, parsed the one safe way. Not the
//! other `/proc` files (see [`crate::proc_status`] for `status`).

use std::fs;
use std::io;

/// The fields of `/proc/<pid>/stat` that ward reads.
///
/// The line is `pid (comm) state ppid ...`. The command name is whatever the process called
/// itself (at most 15 bytes, any byte but NUL: spaces, `)`, newlines, invalid UTF-8), so the
/// fields resume after the *last* `)` of the line, and the line is read as bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProcStat {
    /// The state letter (field 3): `R`, `S`, `D`, `Z`, `T`, `X`... Prefer
    /// [`is_dead`](ProcStat::is_dead) and [`is_zombie`](ProcStat::is_zombie) to comparing it.
    pub state: char,
    /// The parent's pid (field 4); 0 for a process the kernel started or whose parent is outside
    /// its pid namespace.
    pub ppid: u32,
    /// User-mode CPU time in clock ticks (field 14); `sysconf(_SC_CLK_TCK)` ticks a second.
    pub utime_ticks: u64,
    /// Kernel-mode CPU time in clock ticks (field 15).
    pub stime_ticks: u64,
    /// When the process started, in clock ticks since boot (field 22). With the pid, it names
    /// one process: a later one that reuses the pid starts later.
    pub start_ticks: u64,
}

impl ProcStat {
    /// Reads `/proc/<pid>/stat`.
    ///
    /// # Errors
    /// [`io::ErrorKind::NotFound`] when there is no such process (also when it vanished between
    /// the open and the read, which the kernel reports as `ESRCH`, and where `/proc` is not
    /// mounted); [`io::ErrorKind::InvalidData`] if the line does not parse; any other error of
    /// the read.
    pub fn read(pid: u32) -> io::Result<ProcStat> {
        let bytes = fs::read(format!("/proc/{pid}/stat")).map_err(|e| {
            if e.raw_os_error() == Some(libc::ESRCH) {
                io::Error::new(io::ErrorKind::NotFound, e)
            } else {
                e
            }
        })?;
        ProcStat::parse(&bytes).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "/proc/{pid}/stat: unexpected line {:?}",
                    String::from_utf8_lossy(&bytes)
                ),
            )
        })
    }

    /// Parses the text of a `/proc/<pid>/stat` file; `None` if it is not one.
    pub fn parse(line: &[u8]) -> Option<ProcStat> {
        // The command name may hold ") " itself: only the last ')' ends it.
        let close = line.iter().rposition(|&b| b == b')')?;
        let rest = std::str::from_utf8(line.get(close + 1..)?).ok()?;
        // After the name every field is a number or the one-letter state, separated by spaces.
        let mut fields = rest.strip_prefix(' ')?.split_ascii_whitespace();
        let mut state = fields.next()?.chars();
        let (Some(letter), None) = (state.next(), state.next()) else {
            return None;
        };
        let ppid = fields.next()?.parse().ok()?;
        // Fields 5 to 13 (pgrp .. cmajflt), then utime and stime.
        let utime_ticks = fields.nth(9)?.parse().ok()?;
        let stime_ticks = fields.next()?.parse().ok()?;
        // Fields 16 to 21 (cutime .. itrealvalue), then starttime.
        let start_ticks = fields.nth(6)?.parse().ok()?;
        Some(ProcStat {
            state: letter,
            ppid,
            utime_ticks,
            stime_ticks,
            start_ticks,
        })
    }

    /// Whether the process has died: a zombie (`Z`, waiting to be reaped) or dead (`X`, being
    /// removed after the reap; `x` on kernels 2.6.33 to 3.13). Its pid still shows in `/proc`,
    /// but it runs no more code and holds no lock.
    pub fn is_dead(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }

    /// Whether the process is a zombie: dead, and not yet reaped by its parent. (A process in
    /// state `X` is dead too but already reaped: nobody owes it a `wait`.)
    pub fn is_zombie(&self) -> bool {
        self.state == 'Z'
    }
}

/// Every process `/proc` lists, with its stat, read one after the other (one that exits
/// meanwhile is left out); empty where `/proc` cannot be read.
pub fn processes() -> Vec<(u32, ProcStat)> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            Some((pid, ProcStat::read(pid).ok()?))
        })
        .collect()
}

/// Whether process `pid` exists and has not died ([`ProcStat::is_dead`]), as `/proc` tells;
/// `false` where `/proc` cannot be read.
pub fn is_alive(pid: u32) -> bool {
    ProcStat::read(pid).is_ok_and(|stat| !stat.is_dead())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_process_is_listed_with_its_stat_this_one_among_them() {
        let all = processes();
        let me = all
            .iter()
            .find(|(pid, _)| *pid == std::process::id())
            .expect("this process is listed");
        // SAFETY: getppid cannot fail.
        assert_eq!(me.1.ppid, unsafe { libc::getppid() } as u32);
        assert!(
            all.iter().any(|(pid, _)| *pid == 1),
            "no init among {} processes",
            all.len()
        );
    }

    /// A real line of a shell (`bash`), whose fields after the name are all present.
    const BASH: &[u8] = b"4242 (bash) S 4100 4242 4242 34816 4300 4194304 1234 5678 9 10 \
        57 31 12 3 20 0 1 0 8812345 8400896 1350 18446744073709551615 1 1 0 0 0 0 65536 \
        3686404 1266761467 0 0 0 17 2 0 0 0 0 0 0 0 0 0 0 0 0 0\n";

    /// The fields a test expects: state, ppid, utime, stime, start time.
    fn stat(state: char, ppid: u32, utime: u64, stime: u64, start: u64) -> ProcStat {
        ProcStat {
            state,
            ppid,
            utime_ticks: utime,
            stime_ticks: stime,
            start_ticks: start,
        }
    }

    #[test]
    fn fields_are_read_after_the_last_parenthesis() {
        let cases: &[(&[u8], ProcStat)] = &[
            (BASH, stat('S', 4100, 57, 31, 8_812_345)),
            // A name with ") " and spaces inside: the first ')' is not the end of it.
            (
                b"77 (a) Z 1 (b) R 9 9 9 0 -1 0 0 0 0 0 4 5 0 0 20 0 1 0 600 0 0\n",
                stat('R', 9, 4, 5, 600),
            ),
            // A name that is only parentheses and a newline.
            (
                b"78 ())\n)) X 1 0 0 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 7 0 0\n",
                stat('X', 1, 0, 0, 7),
            ),
            // A name that is not UTF-8 (any byte but NUL is allowed).
            (
                b"79 (\xff\xfe) t 3 0 0 0 -1 0 0 0 0 0 1 2 0 0 20 0 1 0 8 0 0\n",
                stat('t', 3, 1, 2, 8),
            ),
        ];
        for &(line, want) in cases {
            assert_eq!(
                ProcStat::parse(line),
                Some(want),
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn what_is_not_a_stat_line_is_refused() {
        let cases: &[&[u8]] = &[
            b"",
            b"12 (no closing paren S 1 2 3",
            // Cut short before the start time.
            b"12 (x) S 1 2 3 4 5 6 7 8 9 10 11 12\n",
            // A state of two letters.
            b"12 (x) SS 1 0 0 0 -1 0 0 0 0 0 1 2 0 0 20 0 1 0 8 0 0\n",
            // No space after the name.
            b"12 (x)S 1 0 0 0 -1 0 0 0 0 0 1 2 0 0 20 0 1 0 8 0 0\n",
            // A parent that is not a number.
            b"12 (x) S one 0 0 0 -1 0 0 0 0 0 1 2 0 0 20 0 1 0 8 0 0\n",
        ];
        for &line in cases {
            assert_eq!(
                ProcStat::parse(line),
                None,
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn zombies_and_the_reaped_are_dead_only_zombies_are_owed_a_wait() {
        // (state, dead, zombie)
        let cases = [
            ('R', false, false),
            ('S', false, false),
            ('D', false, false),
            ('T', false, false),
            ('t', false, false),
            ('I', false, false),
            ('Z', true, true),
            ('X', true, false),
            ('x', true, false),
        ];
        for (state, dead, zombie) in cases {
            let stat = ProcStat {
                state,
                ..ProcStat::parse(BASH).unwrap()
            };
            assert_eq!(
                (stat.is_dead(), stat.is_zombie()),
                (dead, zombie),
                "{state}"
            );
        }
    }

    #[test]
    fn this_process_is_alive_and_its_parent_is_known() {
        let me = ProcStat::read(std::process::id()).unwrap();
        assert!(!me.is_dead());
        // SAFETY: getppid has no preconditions and cannot fail.
        assert_eq!(me.ppid, unsafe { libc::getppid() } as u32);
        assert!(me.start_ticks > 0 || me.ppid == 0);
        assert!(is_alive(std::process::id()));
    }

    #[test]
    fn a_reaped_child_is_not_found() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert_eq!(
            ProcStat::read(pid).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        assert!(!is_alive(pid));
    }
}

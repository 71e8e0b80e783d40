//! The crash record: the line format the panic hook and the signal handler write, and its parser.
//!
//! The format is `key=value` lines between `== <kind>` and `== end`, simple enough to produce
//! from a signal handler without allocating. An entry cut short by the death still parses, with
//! `complete: false`.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// Opens an entry; followed by its kind.
pub(crate) const BEGIN: &str = "== ";
/// Closes an entry.
pub(crate) const END: &str = "== end";

/// Everything a dead process wrote to its crash record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrashRecord {
    /// The entries in the order they were written (the panic hook keeps only its latest panic).
    pub entries: Vec<RecordEntry>,
}

/// One entry of a crash record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RecordEntry {
    /// Written by the panic hook.
    Panic(PanicEntry),
    /// Written by the fatal-signal handler.
    Signal(SignalEntry),
}

/// A panic, as the panic hook saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PanicEntry {
    /// Process id.
    pub pid: u32,
    /// Kernel thread id of the panicking thread.
    pub tid: u32,
    /// The thread's name, `<unnamed>` if it has none.
    pub thread: String,
    /// How many panics this process had seen, this one included (earlier ones were caught).
    pub count: u64,
    /// When, milliseconds since the Unix epoch.
    pub wall_ms: u64,
    /// `file:line:column`.
    pub location: String,
    /// The panic message.
    pub message: String,
    /// The captured backtrace, one frame line per element.
    pub backtrace: Vec<String>,
    /// Whether the entry was written to its end.
    pub complete: bool,
}

/// A fatal signal, as the handler saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignalEntry {
    /// Signal number.
    pub signal: i32,
    /// Signal name, e.g. `SIGSEGV`.
    pub name: String,
    /// `si_code`: for SIGSEGV, 1 is an unmapped address and 2 a protection fault; 0 or
    /// negative means sent by a process (`kill`, `raise`, `abort`).
    pub code: i32,
    /// The faulting address (`si_addr`), for SIGSEGV, SIGBUS, SIGILL and SIGFPE.
    pub address: Option<String>,
    /// Process id.
    pub pid: u32,
    /// Kernel thread id of the thread that received the signal.
    pub tid: u32,
    /// Path of the executable.
    pub exe: String,
    /// Where the executable is mapped (0 for a non-PIE executable), hexadecimal.
    pub exe_base: String,
    /// End of the executable's last mapping, hexadecimal.
    pub exe_end: String,
    /// Raw return addresses, innermost first, hexadecimal.
    pub frames: Vec<String>,
    /// Whether the entry was written to its end.
    pub complete: bool,
}

impl CrashRecord {
    /// Parses a crash record; lines it does not understand are skipped.
    pub fn parse(text: &str) -> CrashRecord {
        let mut entries = Vec::new();
        let mut current: Option<RecordEntry> = None;
        for line in text.lines() {
            if line == END {
                if let Some(mut entry) = current.take() {
                    match &mut entry {
                        RecordEntry::Panic(p) => p.complete = true,
                        RecordEntry::Signal(s) => s.complete = true,
                    }
                    entries.push(entry);
                }
                continue;
            }
            if let Some(kind) = line.strip_prefix(BEGIN) {
                entries.extend(current.take());
                current = match kind {
                    "panic" => Some(RecordEntry::Panic(PanicEntry::default())),
                    "signal" => Some(RecordEntry::Signal(SignalEntry::default())),
                    _ => None,
                };
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            match &mut current {
                Some(RecordEntry::Panic(p)) => p.set(key, value),
                Some(RecordEntry::Signal(s)) => s.set(key, value),
                None => {}
            }
        }
        entries.extend(current);
        CrashRecord { entries }
    }

    /// The last panic entry, if any.
    pub fn last_panic(&self) -> Option<&PanicEntry> {
        self.entries.iter().rev().find_map(|e| match e {
            RecordEntry::Panic(p) => Some(p),
            RecordEntry::Signal(_) => None,
        })
    }

    /// The signal entries, in the order they were written.
    pub fn signals(&self) -> impl Iterator<Item = &SignalEntry> {
        self.entries.iter().filter_map(|e| match e {
            RecordEntry::Signal(s) => Some(s),
            RecordEntry::Panic(_) => None,
        })
    }
}

impl PanicEntry {
    fn set(&mut self, key: &str, value: &str) {
        match key {
            "pid" => self.pid = value.parse().unwrap_or_default(),
            "tid" => self.tid = value.parse().unwrap_or_default(),
            "thread" => self.thread = value.to_owned(),
            "count" => self.count = value.parse().unwrap_or_default(),
            "wall_ms" => self.wall_ms = value.parse().unwrap_or_default(),
            "location" => self.location = value.to_owned(),
            "message" => self.message = unescape(value),
            "backtrace" => self.backtrace.push(value.to_owned()),
            _ => {}
        }
    }

    /// The entry in record format.
    pub(crate) fn to_record(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = writeln!(out, "{BEGIN}panic");
        let _ = writeln!(out, "pid={}\ntid={}", self.pid, self.tid);
        let _ = writeln!(out, "thread={}", escape(&self.thread));
        let _ = writeln!(out, "count={}\nwall_ms={}", self.count, self.wall_ms);
        let _ = writeln!(out, "location={}", escape(&self.location));
        let _ = writeln!(out, "message={}", escape(&self.message));
        for line in &self.backtrace {
            let _ = writeln!(out, "backtrace={}", escape(line));
        }
        let _ = writeln!(out, "{END}");
        out
    }
}

impl SignalEntry {
    fn set(&mut self, key: &str, value: &str) {
        match key {
            "signal" => self.signal = value.parse().unwrap_or_default(),
            "name" => self.name = value.to_owned(),
            "code" => self.code = value.parse().unwrap_or_default(),
            "addr" => self.address = Some(value.to_owned()),
            "pid" => self.pid = value.parse().unwrap_or_default(),
            "tid" => self.tid = value.parse().unwrap_or_default(),
            "exe" => self.exe = value.to_owned(),
            "exe_base" => self.exe_base = value.to_owned(),
            "exe_end" => self.exe_end = value.to_owned(),
            "frame" => self.frames.push(value.to_owned()),
            _ => {}
        }
    }

    /// Offsets of the frames that lie inside the executable, as `addr2line` wants them.
    pub fn exe_offsets(&self) -> Vec<String> {
        let (Some(base), Some(end)) = (parse_hex(&self.exe_base), parse_hex(&self.exe_end)) else {
            return Vec::new();
        };
        self.frames
            .iter()
            .filter_map(|f| parse_hex(f))
            .filter(|&a| a >= base && a < end.max(base + 1))
            .map(|a| format!("{:#x}", a - base))
            .collect()
    }
}

/// Parses `0x1a2b` (or `1a2b`).
pub(crate) fn parse_hex(s: &str) -> Option<u64> {
    u64::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok()
}

/// One line per value: newlines and backslashes are escaped.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('\n', "\\n")
        .replace('\r', "\\r")
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_entry_round_trips_with_awkward_characters() {
        let panic = PanicEntry {
            pid: 7,
            tid: 8,
            thread: "main".into(),
            count: 2,
            wall_ms: 1234,
            location: "src/main.rs:3:5".into(),
            message: "two\nlines with a \\ and = sign".into(),
            backtrace: vec!["0: main".into(), "1: start".into()],
            complete: true,
        };
        let parsed = CrashRecord::parse(&panic.to_record());
        assert_eq!(parsed.entries, vec![RecordEntry::Panic(panic)]);
    }

    #[test]
    fn a_signal_entry_cut_short_still_parses_as_incomplete() {
        let text = "== signal\nsignal=11\nname=SIGSEGV\ncode=1\naddr=0x1000\npid=5\ntid=6\n\
                    exe=/bin/x\nexe_base=0x1000\nexe_end=0x5000\nframe=0x1234\nframe=0x7fff0000\nfra";
        let record = CrashRecord::parse(text);
        let signals: Vec<_> = record.signals().collect();
        assert_eq!(signals.len(), 1);
        let s = signals[0];
        assert_eq!((s.signal, s.name.as_str(), s.code), (11, "SIGSEGV", 1));
        assert_eq!(s.address.as_deref(), Some("0x1000"));
        assert!(!s.complete);
        assert_eq!(s.frames.len(), 2);
        // Only the frame inside the executable gets an offset.
        assert_eq!(s.exe_offsets(), vec!["0x234".to_owned()]);
        assert!(record.last_panic().is_none());
    }

    #[test]
    fn entries_keep_their_order() {
        let text = "== panic\nmessage=boom\n== end\n== signal\nsignal=6\n== end\n";
        let record = CrashRecord::parse(text);
        assert_eq!(record.last_panic().unwrap().message, "boom");
        assert_eq!(record.signals().next().unwrap().signal, 6);
        assert!(matches!(record.entries[0], RecordEntry::Panic(_)));
    }
}

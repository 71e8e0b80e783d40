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
    /// Raw return addresses, innermost first, hexadecimal. Those before the one equal to `pc`
    /// are the crash handler's own.
    pub frames: Vec<String>,
    /// The address of the instruction the signal interrupted (the faulting one for a fault),
    /// hexadecimal; `None` where the handler cannot read it (an architecture other than x86-64
    /// and AArch64, or a C library other than glibc).
    #[serde(default)]
    pub pc: Option<String>,
    /// The executable and the shared libraries loaded when [`install`](crate::install) ran,
    /// the executable first.
    #[serde(default)]
    pub objects: Vec<MappedObject>,
    /// Whether the entry was written to its end.
    pub complete: bool,
}

/// An object file mapped into the crashed process (its executable or a shared library), as
/// [`install`](crate::install) found it: enough for the parent to name the frames inside it
/// later, and to tell whether its file changed since.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MappedObject {
    /// The path of its file.
    pub path: String,
    /// Its load bias, hexadecimal: an address in the process minus this is the address in the
    /// file (0 for an executable that is not position-independent).
    pub bias: String,
    /// The lowest address of its loaded segments, hexadecimal.
    pub start: String,
    /// The end of its loaded segments, hexadecimal.
    pub end: String,
    /// Its GNU build-id, hexadecimal, read from its notes in memory.
    pub build_id: Option<String>,
    /// Its file's identity when it was loaded: `device:inode:size:mtime_ns`.
    pub file_id: Option<String>,
}

impl MappedObject {
    /// Whether `address` lies inside its loaded segments.
    pub fn contains(&self, address: u64) -> bool {
        matches!(
            (parse_hex(&self.start), parse_hex(&self.end)),
            (Some(start), Some(end)) if address >= start && address < end
        )
    }

    /// The record line's value: `bias start end build-id file-id path`, `-` for what is
    /// unknown; the path last, so that it may hold spaces.
    pub(crate) fn to_record_value(&self) -> String {
        format!(
            "{} {} {} {} {} {}",
            self.bias,
            self.start,
            self.end,
            self.build_id.as_deref().unwrap_or("-"),
            self.file_id.as_deref().unwrap_or("-"),
            self.path
        )
    }

    fn from_record_value(value: &str) -> Option<MappedObject> {
        let mut fields = value.splitn(6, ' ');
        let mut next = || fields.next().filter(|f| !f.is_empty());
        let known = |f: &str| (f != "-").then(|| f.to_owned());
        Some(MappedObject {
            bias: next()?.to_owned(),
            start: next()?.to_owned(),
            end: next()?.to_owned(),
            build_id: known(next()?),
            file_id: known(next()?),
            path: next()?.to_owned(),
        })
    }
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
            "pc" => self.pc = Some(value.to_owned()),
            "object" => self.objects.extend(MappedObject::from_record_value(value)),
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
    fn mapped_objects_round_trip_with_spaces_in_the_path_and_unknown_ids() {
        let objects = [
            MappedObject {
                path: "/opt/my app/bin/server".into(),
                bias: "0x5555".into(),
                start: "0x5555".into(),
                end: "0x9999".into(),
                build_id: Some("0a1b2c".into()),
                file_id: Some("2049:1234:4096:1700000000000000000".into()),
            },
            MappedObject {
                path: "/lib/libc.so.6".into(),
                bias: "0x7f00".into(),
                start: "0x7f00".into(),
                end: "0x8f00".into(),
                build_id: None,
                file_id: None,
            },
        ];
        let mut text = String::from("== signal\nsignal=11\npc=0x5600\n");
        for o in &objects {
            text.push_str(&format!("object={}\n", o.to_record_value()));
        }
        text.push_str("object=garbage\n== end\n");
        let record = CrashRecord::parse(&text);
        let s = record.signals().next().unwrap();
        assert_eq!(s.objects, objects, "the garbage line is skipped");
        assert_eq!(s.pc.as_deref(), Some("0x5600"));
        assert!(objects[0].contains(0x5600));
        assert!(!objects[0].contains(0x9999));
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

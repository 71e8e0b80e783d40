//! The stress ledger, shared by the harness and `ward-stress-worker`: the content hash, the
//! directives a file's first line can carry, and the entries the worker appends for each job.
//!
//! An entry is one `write` to a file opened with `O_APPEND`, so entries from concurrent workers
//! stay whole; each ends with a NUL, fields are separated by tabs (the harness names its files, so
//! no path it writes holds a tab or a NUL).

/// What a file's first line starts with when it asks the worker to misbehave.
pub const DIRECTIVE_PREFIX: &str = "#!stress ";

/// FNV-1a, 64 bits: the harness and the worker must agree on it, and it needs no dependency.
pub fn content_hash(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// What a file asks the worker to do with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Directive {
    /// Nothing special: record and reply.
    Plain,
    /// `panic!`.
    Panic,
    /// A real write through a null pointer.
    Segv,
    /// `std::process::abort`.
    Abort,
    /// Allocate until an allocation fails (under the worker's `RLIMIT_AS`).
    Hog,
    /// Never reply.
    Hang,
    /// Exit with this code.
    Exit(i32),
    /// Sleep this many milliseconds, then carry on.
    Sleep(u64),
    /// Allocate and touch this many MiB, keep them, carry on.
    Grow(u64),
    /// Write this many lines to stderr (which ward keeps in its log), then carry on.
    Say(u64),
}

impl Directive {
    /// The directive on `content`'s first line, [`Directive::Plain`] if there is none.
    pub fn parse(content: &[u8]) -> Directive {
        let first = content.split(|&b| b == b'\n').next().unwrap_or_default();
        let Some(rest) = std::str::from_utf8(first)
            .ok()
            .and_then(|l| l.strip_prefix(DIRECTIVE_PREFIX))
        else {
            return Directive::Plain;
        };
        let mut words = rest.split_whitespace();
        let number = |w: Option<&str>| w.and_then(|n| n.parse::<u64>().ok());
        match words.next() {
            Some("panic") => Directive::Panic,
            Some("segv") => Directive::Segv,
            Some("abort") => Directive::Abort,
            Some("hog") => Directive::Hog,
            Some("hang") => Directive::Hang,
            Some("exit") => Directive::Exit(words.next().and_then(|n| n.parse().ok()).unwrap_or(1)),
            Some("sleep") => number(words.next()).map_or(Directive::Plain, Directive::Sleep),
            Some("grow") => number(words.next()).map_or(Directive::Plain, Directive::Grow),
            Some("say") => number(words.next()).map_or(Directive::Plain, Directive::Say),
            _ => Directive::Plain,
        }
    }

    /// Whether the job never completes normally: its `start` entry is all a ledger can show.
    pub fn is_deadly(self) -> bool {
        matches!(
            self,
            Directive::Panic
                | Directive::Segv
                | Directive::Abort
                | Directive::Hog
                | Directive::Hang
                | Directive::Exit(_)
        )
    }

    /// Its name in a ledger entry and in its file's first line.
    pub fn name(self) -> String {
        match self {
            Directive::Plain => "-".into(),
            Directive::Panic => "panic".into(),
            Directive::Segv => "segv".into(),
            Directive::Abort => "abort".into(),
            Directive::Hog => "hog".into(),
            Directive::Hang => "hang".into(),
            Directive::Exit(code) => format!("exit {code}"),
            Directive::Sleep(ms) => format!("sleep {ms}"),
            Directive::Grow(mib) => format!("grow {mib}"),
            Directive::Say(lines) => format!("say {lines}"),
        }
    }

    /// The first line of a file that carries this directive.
    pub fn line(self) -> String {
        format!("{DIRECTIVE_PREFIX}{}\n", self.name())
    }
}

/// When in a job an entry was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The worker has read the file and is about to act on it.
    Start,
    /// It acted and is about to reply "ok".
    Done,
}

/// One line of the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Start or done.
    pub phase: Phase,
    /// Wall clock, milliseconds since the Unix epoch.
    pub t_ms: u64,
    /// The worker's (or exec job's) pid.
    pub pid: u32,
    /// `created`, `modified`, `removed` or `renamed`, as ward sent it.
    pub event: String,
    /// The hash of the content read; `None` when there was none (removed, or gone before read).
    pub hash: Option<u64>,
    /// The directive's name (`-` for none).
    pub directive: String,
    /// The trigger that ran the job, as its command line names it (`-` when it does not).
    pub trigger: String,
    /// The path ward gave.
    pub path: String,
    /// The old path of a rename.
    pub old_path: Option<String>,
}

impl Entry {
    /// The bytes appended to the ledger, NUL included.
    // Only the worker writes entries; the harness, which includes this file too, only reads.
    #[allow(dead_code)]
    pub fn encode(&self) -> Vec<u8> {
        let phase = match self.phase {
            Phase::Start => 'S',
            Phase::Done => 'D',
        };
        let hash = self
            .hash
            .map_or_else(|| "-".to_owned(), |h| format!("{h:016x}"));
        let mut out = format!(
            "{phase}\t{}\t{}\t{}\t{hash}\t{}\t{}\t{}\t{}",
            self.t_ms,
            self.pid,
            self.event,
            self.directive,
            self.trigger,
            self.path,
            self.old_path.as_deref().unwrap_or("")
        )
        .into_bytes();
        out.push(0);
        out
    }

    /// Parses one entry without its NUL; `None` if it is malformed.
    pub fn decode(bytes: &[u8]) -> Option<Entry> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut f = text.split('\t');
        let phase = match f.next()? {
            "S" => Phase::Start,
            "D" => Phase::Done,
            _ => return None,
        };
        let t_ms = f.next()?.parse().ok()?;
        let pid = f.next()?.parse().ok()?;
        let event = f.next()?.to_owned();
        let hash = match f.next()? {
            "-" => None,
            h => Some(u64::from_str_radix(h, 16).ok()?),
        };
        let directive = f.next()?.to_owned();
        let trigger = f.next()?.to_owned();
        let path = f.next()?.to_owned();
        let old_path = Some(f.next()?).filter(|p| !p.is_empty()).map(str::to_owned);
        if f.next().is_some() {
            return None;
        }
        Some(Entry {
            phase,
            t_ms,
            pid,
            event,
            hash,
            directive,
            trigger,
            path,
            old_path,
        })
    }

    /// Whether this entry shows the content it names reached a job and was handled: a `done`
    /// entry, or the `start` of a job whose directive never lets it finish.
    pub fn handled(&self) -> bool {
        self.phase == Phase::Done
            || Directive::parse(format!("{DIRECTIVE_PREFIX}{}", self.directive).as_bytes())
                .is_deadly()
    }
}

/// The complete entries in `bytes` and how many bytes they took; a trailing partial entry (a
/// write in progress) is left for the next read. Malformed entries are counted, not returned.
pub fn parse(bytes: &[u8]) -> (Vec<Entry>, usize, usize) {
    let mut entries = Vec::new();
    let mut malformed = 0;
    let mut used = 0;
    while let Some(end) = bytes[used..].iter().position(|&b| b == 0) {
        match Entry::decode(&bytes[used..used + end]) {
            Some(e) => entries.push(e),
            None => malformed += 1,
        }
        used += end + 1;
    }
    (entries, used, malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_published_vectors() {
        assert_eq!(content_hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(content_hash(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(content_hash(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn directives_round_trip_through_their_line() {
        for d in [
            Directive::Panic,
            Directive::Segv,
            Directive::Abort,
            Directive::Hog,
            Directive::Hang,
            Directive::Exit(7),
            Directive::Sleep(1500),
            Directive::Grow(192),
            Directive::Say(100),
        ] {
            let content = format!("{}seq 12\n", d.line());
            assert_eq!(Directive::parse(content.as_bytes()), d, "{content:?}");
        }
        assert_eq!(
            Directive::parse(b"plain text\n#!stress panic"),
            Directive::Plain
        );
        assert_eq!(Directive::parse(b"#!stress sleep soon"), Directive::Plain);
        assert_eq!(Directive::parse(b"\xff\xfe"), Directive::Plain);
        assert!(Directive::Exit(0).is_deadly() && !Directive::Grow(1).is_deadly());
    }

    #[test]
    fn entries_round_trip_and_a_partial_tail_waits() {
        let a = Entry {
            phase: Phase::Start,
            t_ms: 1_795_000_000_123,
            pid: 42,
            event: "renamed".into(),
            hash: Some(0xdead_beef),
            directive: "sleep 10".into(),
            trigger: "reload-g1-any".into(),
            path: "/t/tree/new name".into(),
            old_path: Some("/t/tree/old".into()),
        };
        let b = Entry {
            phase: Phase::Done,
            hash: None,
            old_path: None,
            event: "removed".into(),
            directive: "-".into(),
            ..a.clone()
        };
        let mut bytes = a.encode();
        bytes.extend(b.encode());
        bytes.extend(b"S\t12\tgarbage\0");
        bytes.extend(&a.encode()[..10]);
        let (entries, used, malformed) = parse(&bytes);
        assert_eq!(entries, [a.clone(), b.clone()]);
        assert_eq!(malformed, 1);
        assert_eq!(used, a.encode().len() + b.encode().len() + 13);
        assert!(!a.handled(), "a sleeping job has not finished at its start");
        assert!(b.handled());
        let deadly = Entry {
            directive: "exit 3".into(),
            ..a
        };
        assert!(
            deadly.handled(),
            "a job told to exit never gets further than its start"
        );
    }
}

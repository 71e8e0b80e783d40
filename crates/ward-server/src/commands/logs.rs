//! `ward logs`: the last lines of the daemon's log, and with `-f` every line written to it from
//! then on, through its rotations (see `logging`: past its size the log moves to `ward.log.1`,
//! the older ones to `.2` and `.3`). Whether ward runs or not, it only reads the files.
//!
//! # Theory of operation
//! Memory stays bounded whatever the files' sizes: the last lines are found by reading backwards
//! from the end in blocks, counting newlines, and reaching into `ward.log.1` (and older) when the
//! live file has fewer; what is printed is copied a block at a time from an offset.
//!
//! Following keeps the file it reads open and polls (every [`FOLLOW_POLL`]): it prints what was
//! appended since its offset, then looks whether `ward.log` is still that file (device and
//! inode). When it is not, the keeper has rotated it: it writes to a file only before renaming
//! it, so the open file is read to its end, then the files rotated after it (more than one
//! rotation between two polls), then the new `ward.log` from its start. Nothing is read twice
//! and nothing is skipped, unless the log rotated more than three times between two polls (the
//! oldest file is then deleted before it was read, and that is said on stderr).
//!
//! It ends on Ctrl-C (the default action of SIGINT) or once its output is closed: a write that
//! fails with a broken pipe, or, while nothing is written, `poll` on stdout reporting that its
//! reader has gone (`ward logs -f | head -1` ends as soon as `head` does), quietly and with exit 0.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::logging::{KEEP_ROTATED, rotated};
use crate::state::names;
use crate::{Error, Launch, Outcome};

/// How often `ward logs -f` looks for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(200);
/// How much is read at a time.
const BLOCK: usize = 64 * 1024;

/// `ward logs [-n LINES] [-f] [--service NAME]`: prints the last `lines` lines of the log
/// (reaching into the rotated files when the live one has fewer) and, with `follow`, what is
/// written from then on; with `service`, only the lines about that service (its output, its
/// starts, deaths and restarts).
pub fn logs(launch: &Launch, lines: usize, follow: bool, service: Option<&str>) -> Outcome {
    match print_log(launch, lines, follow, service) {
        Ok(()) | Err(Stop::OutputClosed) => Outcome::Success,
        Err(Stop::Failed(e)) => Outcome::Failed(e),
    }
}

/// Why printing ended before it was done.
#[derive(Debug)]
enum Stop {
    /// Standard output was closed (`ward logs -f | head`): the end, and no error.
    OutputClosed,
    /// Reading or writing failed.
    Failed(Error),
}

impl From<Error> for Stop {
    fn from(e: Error) -> Stop {
        Stop::Failed(e)
    }
}

fn print_log(
    launch: &Launch,
    lines: usize,
    follow: bool,
    service: Option<&str>,
) -> Result<(), Stop> {
    let Some(state) = super::existing_state_dir(launch)? else {
        return Err(Error::StateDir {
            path: launch.state_dir_path()?,
            reason: format!(
                "none here, so no log: ward never ran with it ({})",
                launch.origin.hint()
            ),
        }
        .into());
    };
    let path = state.join(names::LOG);
    // A service's lines are found by reading every line kept: its last ones may be anywhere.
    let tail = Tail::of(&path, if service.is_some() { usize::MAX } else { lines })?;
    if tail.live.is_none() && !follow {
        return Err(Error::io(
            format!("reading {}", path.display()),
            io::Error::from_raw_os_error(libc::ENOENT),
        )
        .into());
    }
    let mut out = io::stdout().lock();
    match service {
        None => {
            for segment in &tail.segments {
                copy(&segment.file, segment.start, Some(segment.end), &mut out)?;
            }
        }
        Some(name) => {
            let mut last = Filtered::new(name, LastLines::new(lines));
            for segment in &tail.segments {
                copy(&segment.file, segment.start, Some(segment.end), &mut last)?;
            }
            for line in &last.inner.lines {
                write(&mut out, line)?;
            }
        }
    }
    flush(&mut out)?;
    if !follow {
        return Ok(());
    }
    let mut follower = Follower {
        path,
        current: tail.live,
    };
    let mut filtered = service.map(|name| Filtered::new(name, io::stdout()));
    loop {
        match &mut filtered {
            Some(filtered) => follower.step(filtered)?,
            None => follower.step(&mut out)?,
        }
        if output_closed_within(FOLLOW_POLL) {
            return Err(Stop::OutputClosed);
        }
    }
}

/// Whether a log line is about service `name`: its output (`service NAME [PID]: ...`) or what
/// ward says of it (`service NAME started`, `service NAME: restarting`, `stopping service NAME`).
fn is_about(line: &[u8], name: &str) -> bool {
    let needle = format!("service {name}");
    line.windows(needle.len()).enumerate().any(|(at, w)| {
        w == needle.as_bytes()
            && matches!(
                line.get(at + needle.len()),
                None | Some(b' ' | b':' | b'\n' | b',' | b';')
            )
    })
}

/// Passes on the whole lines written to it that are about one service, and drops the others.
/// A line is held until its newline comes; a line longer than [`BLOCK`] is judged by its start.
struct Filtered<W> {
    name: String,
    partial: Vec<u8>,
    inner: W,
}

impl<W: Write> Filtered<W> {
    fn new(name: &str, inner: W) -> Filtered<W> {
        Filtered {
            name: name.to_owned(),
            partial: Vec::new(),
            inner,
        }
    }
}

impl<W: Write> Write for Filtered<W> {
    fn write(&mut self, mut bytes: &[u8]) -> io::Result<usize> {
        let written = bytes.len();
        while let Some(end) = bytes.iter().position(|&b| b == b'\n') {
            let line = if self.partial.is_empty() {
                &bytes[..=end]
            } else {
                self.partial.extend_from_slice(&bytes[..=end]);
                &self.partial[..]
            };
            if is_about(line, &self.name) {
                self.inner.write_all(line)?;
            }
            self.partial.clear();
            bytes = &bytes[end + 1..];
        }
        // Memory stays bounded: past a block, the rest of the line is not kept.
        let room = BLOCK.saturating_sub(self.partial.len());
        self.partial
            .extend_from_slice(&bytes[..bytes.len().min(room)]);
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Keeps the last `max` lines written to it (each write one whole line).
struct LastLines {
    max: usize,
    lines: std::collections::VecDeque<Vec<u8>>,
}

impl LastLines {
    fn new(max: usize) -> LastLines {
        LastLines {
            max,
            lines: std::collections::VecDeque::new(),
        }
    }
}

impl Write for LastLines {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        if self.max > 0 {
            if self.lines.len() == self.max {
                self.lines.pop_front();
            }
            self.lines.push_back(line.to_vec());
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What identifies a file across renames.
type FileId = (u64, u64);

fn id_of(metadata: &std::fs::Metadata) -> FileId {
    (metadata.dev(), metadata.ino())
}

/// The file at `path` opened, with its identity and length then; `None` if there is none.
fn open(path: &Path) -> Result<Option<(File, FileId, u64)>, Error> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("opening {}", path.display()), e)),
    };
    let metadata = file
        .metadata()
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    Ok(Some((file, id_of(&metadata), metadata.len())))
}

/// A stretch of a log file to print.
struct Segment {
    file: File,
    start: u64,
    end: u64,
}

/// The last lines of the log, oldest first, and the live file to follow from their end.
struct Tail {
    segments: Vec<Segment>,
    live: Option<Followed>,
}

impl Tail {
    /// Finds where the last `lines` lines of the log at `path` begin, reaching back into the
    /// rotated files while the newer ones hold fewer.
    fn of(path: &Path, lines: usize) -> Result<Tail, Error> {
        // A rotation between opening the live file and the rotated ones would show the same
        // lines twice: the live file must still be `path` once the others are open. The keeper
        // rotates once per `max_size_mb` of log, so a second try succeeds.
        let mut tries = 0;
        loop {
            tries += 1;
            let tail = Tail::try_of(path, lines)?;
            let current = std::fs::metadata(path).ok().map(|m| id_of(&m));
            if tries == 3 || current == tail.live.as_ref().map(|f| f.id) {
                return Ok(tail);
            }
        }
    }

    fn try_of(path: &Path, lines: usize) -> Result<Tail, Error> {
        let mut segments = Vec::new();
        let mut live = None;
        let mut wanted = lines;
        if let Some((file, id, len)) = open(path)? {
            let (start, found) = start_of_last_lines(&file, len, wanted, path)?;
            wanted -= found;
            segments.push(Segment {
                file: file
                    .try_clone()
                    .map_err(|e| Error::io(format!("reading {}", path.display()), e))?,
                start,
                end: len,
            });
            live = Some(Followed {
                file,
                id,
                offset: len,
            });
        }
        for n in 1..=KEEP_ROTATED {
            if wanted == 0 {
                break;
            }
            let older = rotated(path, n);
            let Some((file, _, len)) = open(&older)? else {
                break;
            };
            let (start, found) = start_of_last_lines(&file, len, wanted, &older)?;
            wanted -= found;
            segments.insert(
                0,
                Segment {
                    file,
                    start,
                    end: len,
                },
            );
        }
        Ok(Tail { segments, live })
    }
}

/// Where the last `lines` lines of the first `len` bytes of `file` begin, and how many lines that
/// is (fewer when the file has fewer: it then begins at 0). A newline ends a line; the last line
/// may lack one. Reads backwards a block at a time.
fn start_of_last_lines(
    file: &File,
    len: u64,
    lines: usize,
    path: &Path,
) -> Result<(u64, usize), Error> {
    if lines == 0 || len == 0 {
        return Ok((len, 0));
    }
    let mut buf = vec![0; BLOCK];
    let mut pos = len;
    // Newlines seen before the last byte: each ends a line and begins the one after it.
    let mut found = 0;
    while pos > 0 {
        let size = BLOCK.min(pos as usize);
        pos -= size as u64;
        file.read_exact_at(&mut buf[..size], pos)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        for (i, &byte) in buf[..size].iter().enumerate().rev() {
            let at = pos + i as u64;
            if byte != b'\n' || at == len - 1 {
                continue;
            }
            found += 1;
            if found == lines {
                return Ok((at + 1, lines));
            }
        }
    }
    Ok((0, found + 1))
}

/// Copies `file` from `offset` to `end` (to its current end if `None`) onto `out`, a block at a
/// time; returns the offset reached.
fn copy(file: &File, mut offset: u64, end: Option<u64>, out: &mut impl Write) -> Result<u64, Stop> {
    let mut buf = vec![0; BLOCK];
    loop {
        let want = end.map_or(BLOCK, |end| BLOCK.min(end.saturating_sub(offset) as usize));
        if want == 0 {
            return Ok(offset);
        }
        let n = match file.read_at(&mut buf[..want], offset) {
            Ok(0) => return Ok(offset),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io("reading the log", e).into()),
        };
        write(out, &buf[..n])?;
        offset += n as u64;
    }
}

fn write(out: &mut impl Write, bytes: &[u8]) -> Result<(), Stop> {
    out.write_all(bytes).map_err(output_error)
}

fn flush(out: &mut impl Write) -> Result<(), Stop> {
    out.flush().map_err(output_error)
}

fn output_error(e: io::Error) -> Stop {
    if e.kind() == io::ErrorKind::BrokenPipe {
        Stop::OutputClosed
    } else {
        Stop::Failed(Error::io("writing to stdout", e))
    }
}

/// The log file being followed: open, who it is, and how far it was printed.
#[derive(Debug)]
struct Followed {
    file: File,
    id: FileId,
    offset: u64,
}

/// Follows the log at `path` through its rotations.
#[derive(Debug)]
struct Follower {
    path: PathBuf,
    /// The file printed so far; `None` until there is one.
    current: Option<Followed>,
}

impl Follower {
    /// Prints what was written to the log since the last step, through any rotation since.
    fn step(&mut self, out: &mut impl Write) -> Result<(), Stop> {
        if let Some(current) = &mut self.current {
            current.offset = copy(&current.file, current.offset, None, out)?;
        }
        // Most steps find the same file: a stat tells, without opening it.
        if let (Some(current), Ok(metadata)) = (&mut self.current, std::fs::metadata(&self.path))
            && id_of(&metadata) == current.id
        {
            if metadata.len() < current.offset {
                // Truncated in place (by a tool; ward never does): what is there is new.
                current.offset = copy(&current.file, 0, None, out)?;
            }
            return flush(out);
        }
        let Some((file, id, _)) = open(&self.path)? else {
            // Renamed, and its successor not created yet: the next step looks again.
            return flush(out);
        };
        match self.current.take() {
            // The stat failed (a moment without the file?) but the open found the same one.
            Some(current) if current.id == id => self.current = Some(current),
            Some(old) => {
                // The keeper wrote to the old file only before renaming it: finish it, then
                // the files rotated after it, then the new one from its start.
                copy(&old.file, old.offset, None, out)?;
                self.print_rotated_after(old.id, id, out)?;
                let offset = copy(&file, 0, None, out)?;
                self.current = Some(Followed { file, id, offset });
            }
            None => {
                let offset = copy(&file, 0, None, out)?;
                self.current = Some(Followed { file, id, offset });
            }
        }
        flush(out)
    }

    /// Prints whole the rotated files newer than the one that was `old` (when the log rotated
    /// more than once since the last step), oldest first; not `live`, the one printed next,
    /// should it have been rotated too meanwhile.
    fn print_rotated_after(
        &self,
        old: FileId,
        live: FileId,
        out: &mut impl Write,
    ) -> Result<(), Stop> {
        let mut newer = Vec::new();
        for n in 1..=KEEP_ROTATED {
            match open(&rotated(&self.path, n))? {
                Some((_, id, _)) if id == live => {}
                Some((_, id, _)) if id == old => {
                    for file in newer.iter().rev() {
                        copy(file, 0, None, out)?;
                    }
                    return Ok(());
                }
                Some((file, _, _)) => newer.push(file),
                None => break,
            }
        }
        // The file followed was deleted before it could be found among the rotated ones.
        flush(out)?;
        eprintln!(
            "ward: the log rotated more than {KEEP_ROTATED} times within {FOLLOW_POLL:?}; lines between were not shown"
        );
        for file in newer.iter().rev() {
            copy(file, 0, None, out)?;
        }
        Ok(())
    }
}

/// Waits up to `wait`, or less if standard output's reader has gone (a pipe whose read end is
/// closed reports `POLLERR`, a closed socket or terminal `POLLHUP`): true if it has. Asking for
/// no event, it waits the whole time on an open terminal, pipe or file.
fn output_closed_within(wait: Duration) -> bool {
    let mut stdout = libc::pollfd {
        fd: libc::STDOUT_FILENO,
        events: 0,
        revents: 0,
    };
    let millis = i32::try_from(wait.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one valid, writable pollfd, and its count.
    let ready = unsafe { libc::poll(&mut stdout, 1, millis) };
    ready > 0 && stdout.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_services_lines_are_those_that_name_it_whole() {
        for line in [
            "2026 INFO server: service web [12]: GET /\n",
            "2026 INFO server: service web started, pid 12\n",
            "2026 INFO server: service web: restarting in 100ms (attempt 1)\n",
            "2026 INFO server: stopping service web\n",
            "2026 WARN server: service web (pid 12) killed by SIGKILL from outside; report x\n",
        ] {
            assert!(is_about(line.as_bytes(), "web"), "{line}");
        }
        for line in [
            "2026 INFO server: service webber [12]: GET /\n",
            "2026 INFO server: job web on /t/a ran\n",
        ] {
            assert!(!is_about(line.as_bytes(), "web"), "{line}");
        }
    }

    #[test]
    fn the_filter_passes_whole_matching_lines_split_across_writes() {
        let mut last = Filtered::new("db", LastLines::new(2));
        last.write_all(b"a service db [1]: one\nb service web [2]: x\nc serv")
            .unwrap();
        last.write_all(b"ice db [1]: two\nd service db [1]: three\n")
            .unwrap();
        let lines: Vec<&[u8]> = last.inner.lines.iter().map(Vec::as_slice).collect();
        assert_eq!(
            lines,
            [
                &b"c service db [1]: two\n"[..],
                &b"d service db [1]: three\n"[..]
            ]
        );
    }

    use super::*;
    use crate::logging::LogFile;

    fn lines_of(text: &str) -> (File, u64) {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        (file, text.len() as u64)
    }

    #[test]
    fn the_last_lines_start_after_the_right_newline() {
        let path = Path::new("t");
        for (text, lines, expected) in [
            ("a\nb\nc\n", 2, (2, 2)),
            ("a\nb\nc\n", 3, (0, 3)),
            ("a\nb\nc\n", 5, (0, 3)),
            ("a\nb\nc", 1, (4, 1)),
            ("a\nb\nc", 2, (2, 2)),
            ("\n", 1, (0, 1)),
            ("\n\n", 1, (1, 1)),
            ("", 3, (0, 0)),
            ("a\n", 0, (2, 0)),
        ] {
            let (file, len) = lines_of(text);
            assert_eq!(
                start_of_last_lines(&file, len, lines, path).unwrap(),
                expected,
                "{text:?}, {lines} line(s)"
            );
        }
        // Across blocks.
        let long: String = (0..30_000).map(|i| format!("line {i}\n")).collect();
        let (file, len) = lines_of(&long);
        let (start, found) = start_of_last_lines(&file, len, 20_000, path).unwrap();
        assert_eq!(found, 20_000);
        assert!(long[start as usize..].starts_with("line 10000\n"));
    }

    fn text_of(tail: &Tail) -> String {
        let mut out = Vec::new();
        for s in &tail.segments {
            assert!(copy(&s.file, s.start, Some(s.end), &mut out).is_ok());
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_last_lines_reach_back_into_the_rotated_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ward.log");
        std::fs::write(rotated(&path, 2), "o1\no2\n").unwrap();
        std::fs::write(rotated(&path, 1), "r1\nr2\nr3\n").unwrap();
        std::fs::write(&path, "l1\nl2\n").unwrap();
        assert_eq!(text_of(&Tail::of(&path, 1).unwrap()), "l2\n");
        assert_eq!(text_of(&Tail::of(&path, 4).unwrap()), "r2\nr3\nl1\nl2\n");
        assert_eq!(
            text_of(&Tail::of(&path, 99).unwrap()),
            "o1\no2\nr1\nr2\nr3\nl1\nl2\n"
        );
        assert_eq!(text_of(&Tail::of(&path, 0).unwrap()), "");
        std::fs::remove_file(&path).unwrap();
        let tail = Tail::of(&path, 2).unwrap();
        assert!(tail.live.is_none());
        assert_eq!(text_of(&tail), "r2\nr3\n");
    }

    #[test]
    fn following_loses_and_repeats_no_line_through_rotations() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ward.log");
        let mut log = LogFile::open(&path, 200).unwrap();
        log.append(b"before").unwrap();
        let tail = Tail::of(&path, 0).unwrap();
        let mut follower = Follower {
            path: path.clone(),
            current: tail.live,
        };
        let mut out = Vec::new();
        let mut expected = String::new();
        let mut n = 0;
        // 0 to 2 rotations between two steps (each line is 40 bytes, 5 lines a file).
        for burst in [1, 3, 7, 0, 12, 5, 9, 1] {
            for _ in 0..burst {
                let line = format!("line {n:04} ..............................");
                log.append(line.as_bytes()).unwrap();
                expected.push_str(&line);
                expected.push('\n');
                n += 1;
            }
            assert!(follower.step(&mut out).is_ok());
            assert_eq!(String::from_utf8_lossy(&out), expected);
        }
        assert!(rotated(&path, 3).exists(), "the log never rotated");
    }

    #[test]
    fn a_log_truncated_in_place_is_followed_from_its_new_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ward.log");
        std::fs::write(&path, "one\ntwo\n").unwrap();
        let mut follower = Follower {
            path: path.clone(),
            current: Tail::of(&path, 1).unwrap().live,
        };
        let mut out = Vec::new();
        std::fs::write(&path, "new\n").unwrap();
        assert!(follower.step(&mut out).is_ok());
        assert_eq!(out, b"new\n");
    }

    #[test]
    fn a_follower_started_before_the_log_exists_prints_it_from_its_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ward.log");
        let mut follower = Follower {
            path: path.clone(),
            current: None,
        };
        let mut out = Vec::new();
        assert!(follower.step(&mut out).is_ok());
        assert!(out.is_empty());
        std::fs::write(&path, "first\n").unwrap();
        assert!(follower.step(&mut out).is_ok());
        assert_eq!(out, b"first\n");
    }
}

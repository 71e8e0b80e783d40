//! The crash report: gathering the findings ([`collect`]), writing them as JSON and text with a
//! retention limit ([`write_report`], [`report_death`]), and reading them back.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::capture::record_path;
use crate::error::{Error, Result};
use crate::evidence::{OomCounters, WaitOutcome, kernel_lines_about};
use crate::heartbeat::{Heartbeat, SystemClock, boot_id, read_heartbeat};
use crate::hook::{HookOutcome, OnCrashHook};
use crate::record::CrashRecord;
use crate::symbolize::{NativeFrame, symbolize};
use crate::verdict::{Findings, Verdict, classify};
use crate::{Evidence, time};

/// The version of the report format; bumped when a field changes meaning. 2: the symbolized
/// frames are `native_frames`, one structured entry per recorded address (1 had
/// `symbolized_frames`, lines of `addr2line` output).
const FORMAT_VERSION: u32 = 2;
/// How much of a log file's end is read.
const LOG_TAIL_BYTES: u64 = 64 * 1024;
/// How many lines of a log or stderr tail a report keeps.
const TAIL_LINES: usize = 40;
const PREFIX: &str = "crash-";

/// Everything known about one death, and the verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrashReport {
    /// Report format version.
    pub version: u32,
    /// The dead process.
    pub pid: u32,
    /// Its role.
    pub role: String,
    /// When the report was made, milliseconds since the Unix epoch.
    pub written_wall_ms: u64,
    /// The cause, confidence and evidence.
    pub verdict: Verdict,
    /// `wait4`'s status, if a parent saw the death.
    pub wait_status: Option<WaitOutcome>,
    /// Peak resident memory (`ru_maxrss`), KiB.
    pub max_rss_kib: Option<u64>,
    /// How long it ran, milliseconds.
    pub run_time_ms: Option<u64>,
    /// What the process recorded itself.
    pub crash_record: Option<CrashRecord>,
    /// Its last heartbeat.
    pub heartbeat: Option<Heartbeat>,
    /// The end of its log file.
    pub log_tail: Vec<String>,
    /// The end of its stderr.
    pub stderr_tail: Vec<String>,
    /// Kernel log lines about it; `None` if the kernel log was unreadable.
    pub kernel_lines: Option<Vec<String>>,
    /// OOM counters at spawn.
    pub oom_before: Option<OomCounters>,
    /// OOM counters after death.
    pub oom_after: Option<OomCounters>,
    /// How to symbolize the raw addresses inside the executable later (`addr2line -e ...`),
    /// when none could be named as the report was made.
    pub symbolize_hint: Option<String>,
    /// The native crash's recorded addresses, innermost first, each with its object and, where
    /// its debug info allowed when the report was made, its function and `file:line`
    /// ([`symbolize`](crate::symbolize)); what could not be named is said in `notes`.
    #[serde(default)]
    pub native_frames: Vec<NativeFrame>,
    /// What could not be read while gathering, and why.
    pub notes: Vec<String>,
}

/// A report on disk, as [`list_reports`] finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportSummary {
    /// The JSON report.
    pub json: PathBuf,
    /// The text report beside it.
    pub text: PathBuf,
    /// The dead process's pid, from the name.
    pub pid: u32,
    /// The time stamp in the name (`20261123T114500.123Z`).
    pub stamp: String,
}

/// How [`report_death`] writes.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ReportOptions {
    /// Reports kept in the crash directory; older ones are deleted. At least 1.
    pub keep: usize,
    /// A command to run once the report is written.
    pub on_crash: Option<OnCrashHook>,
}

impl Default for ReportOptions {
    fn default() -> Self {
        ReportOptions {
            keep: 50,
            on_crash: None,
        }
    }
}

impl ReportOptions {
    /// Keep `keep` reports, run no hook.
    pub fn new(keep: usize) -> Self {
        ReportOptions {
            keep,
            on_crash: None,
        }
    }

    /// Runs `hook` after each report.
    pub fn on_crash(mut self, hook: OnCrashHook) -> Self {
        self.on_crash = Some(hook);
        self
    }
}

/// What [`report_death`] did.
#[derive(Debug)]
pub struct WrittenReport {
    /// The report.
    pub report: CrashReport,
    /// Where it was written.
    pub paths: ReportSummary,
    /// How the on-crash hook ended, if one ran.
    pub hook: Option<HookOutcome>,
}

/// Gathers the findings for `evidence` (crash record, heartbeat, log tail, kernel log) and
/// decides the verdict. Never fails: what cannot be read is listed in the report's `notes` and
/// weighs as missing evidence.
pub fn collect(evidence: &Evidence) -> CrashReport {
    let mut notes = Vec::new();
    let record_file = record_path(&evidence.crash_dir, evidence.pid);
    let crash_record = match fs::read_to_string(&record_file) {
        Ok(text) => Some(CrashRecord::parse(&text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            notes.push(format!("reading {}: {e}", record_file.display()));
            None
        }
    };
    let heartbeat = evidence
        .heartbeat_file
        .as_deref()
        .and_then(|p| match read_heartbeat(p) {
            Ok(hb) if hb.pid == evidence.pid => Some(hb),
            Ok(hb) => {
                notes.push(format!(
                    "{} belongs to pid {}, not {}",
                    p.display(),
                    hb.pid,
                    evidence.pid
                ));
                None
            }
            Err(e) => {
                notes.push(e.to_string());
                None
            }
        });
    let heartbeat_age = heartbeat
        .as_ref()
        .map(|hb| hb.age(&SystemClock, &boot_id()));
    let log_tail = match evidence.log_file.as_deref().map(tail_lines) {
        Some(Ok(lines)) => lines,
        Some(Err(e)) => {
            notes.push(e.to_string());
            Vec::new()
        }
        None => Vec::new(),
    };
    // Kernel lines only from this process's lifetime, so a reused pid's old lines do not count.
    // The kernel's clock and CLOCK_MONOTONIC may differ slightly: allow a second.
    let since = heartbeat
        .as_ref()
        .filter(|hb| hb.boot_id == boot_id())
        .map(|hb| Duration::from_millis(hb.started_mono_ms).saturating_sub(Duration::from_secs(1)))
        .or_else(|| {
            let run = evidence.run_time?;
            Some(time::monotonic_now().saturating_sub(run + Duration::from_secs(1)))
        });
    let kernel_lines = match kernel_lines_about(evidence.pid, since) {
        Ok(lines) => Some(lines),
        Err(e) => {
            notes.push(format!("kernel log: {e}"));
            None
        }
    };
    let verdict = classify(&Findings {
        evidence,
        record: crash_record.as_ref(),
        heartbeat: heartbeat.as_ref(),
        heartbeat_age,
        kernel_lines: kernel_lines.as_deref(),
        log_tail: &log_tail,
    });
    let first_signal = crash_record.as_ref().and_then(|r| r.signals().next());
    let native_frames = match first_signal {
        Some(signal) => {
            let symbolized = symbolize(signal);
            notes.extend(
                symbolized
                    .notes
                    .into_iter()
                    .map(|n| format!("symbolizer: {n}")),
            );
            symbolized.frames
        }
        None => Vec::new(),
    };
    // Offsets to name later, with the right executable, when none could be named now.
    let symbolize_hint = first_signal.and_then(|s| {
        let offsets = s.exe_offsets();
        let named = native_frames
            .iter()
            .any(|f| f.object.as_deref() == Some(s.exe.as_str()) && !f.symbols.is_empty());
        (!offsets.is_empty() && !named)
            .then(|| format!("addr2line -C -f -i -e {} {}", s.exe, offsets.join(" ")))
    });
    let stderr_tail = evidence
        .stderr_tail
        .as_deref()
        .map(last_lines)
        .unwrap_or_default();
    CrashReport {
        version: FORMAT_VERSION,
        pid: evidence.pid,
        role: evidence.role.clone(),
        written_wall_ms: time::wall_ms_now(),
        verdict,
        wait_status: evidence.wait_status,
        max_rss_kib: evidence.max_rss_kib,
        run_time_ms: evidence.run_time.map(|d| d.as_millis() as u64),
        crash_record,
        heartbeat,
        log_tail,
        stderr_tail,
        kernel_lines,
        oom_before: evidence.oom_before,
        oom_after: evidence.oom_after,
        symbolize_hint,
        native_frames,
        notes,
    }
}

fn last_lines(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(TAIL_LINES);
    lines[from..].iter().map(|l| (*l).to_owned()).collect()
}

/// The last lines of a (possibly large) file, reading only its end.
fn tail_lines(path: &Path) -> Result<Vec<String>> {
    let mut file = File::open(path).map_err(|e| Error::io("opening log", path, e))?;
    let len = file
        .metadata()
        .map_err(|e| Error::io("reading log", path, e))?
        .len();
    let start = len.saturating_sub(LOG_TAIL_BYTES);
    file.seek(SeekFrom::Start(start))
        .map_err(|e| Error::io("reading log", path, e))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(|e| Error::io("reading log", path, e))?;
    let text = String::from_utf8_lossy(&bytes);
    // A tail that starts mid-file starts mid-line: drop the partial first line.
    let text = if start > 0 {
        text.split_once('\n').map_or("", |(_, rest)| rest)
    } else {
        &text
    };
    Ok(last_lines(text))
}

/// Collects, writes the report, deletes the crash record it consumed, prunes old reports and
/// runs the on-crash hook. What a parent calls after a child's death.
///
/// # Errors
/// [`Error::Io`] or [`Error::Serialize`] if the report cannot be written; the hook's failure is
/// not an error but its [`HookOutcome`].
pub fn report_death(evidence: &Evidence, options: &ReportOptions) -> Result<WrittenReport> {
    write_death(collect(evidence), evidence, options).map_err(|(_, e)| e)
}

/// [`report_death`] for a report already collected from `evidence`: writes it, deletes the
/// crash record it consumed, prunes old reports and runs the on-crash hook.
///
/// # Errors
/// As [`report_death`], with the report given back, so that a caller can keep it and try again
/// (a full disk) instead of losing it.
pub fn write_death(
    report: CrashReport,
    evidence: &Evidence,
    options: &ReportOptions,
) -> std::result::Result<WrittenReport, (Box<CrashReport>, Error)> {
    let paths = match write_report(&report, &evidence.crash_dir, options.keep) {
        Ok(paths) => paths,
        Err(e) => return Err((Box::new(report), e)),
    };
    let record = record_path(&evidence.crash_dir, evidence.pid);
    // Its content is in the report now; a later process with this pid starts clean.
    if report.crash_record.is_some()
        && let Err(e) = fs::remove_file(&record)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        log::warn!("crash report: removing {}: {e}", record.display());
    }
    let hook = options
        .on_crash
        .as_ref()
        .map(|hook| hook.run(&report, &paths));
    if let Some(outcome) = &hook
        && !outcome.succeeded()
    {
        log::warn!("on-crash hook for {}: {outcome}", paths.json.display());
    }
    Ok(WrittenReport {
        report,
        paths,
        hook,
    })
}

/// Writes `report` into `dir` as `crash-<time>-<pid>.json` and `.txt`, then deletes the oldest
/// reports beyond `keep` (at least the new one is kept).
///
/// # Errors
/// [`Error::Io`] if the directory or a file cannot be written, [`Error::Serialize`] if the
/// report cannot be serialized.
pub fn write_report(report: &CrashReport, dir: &Path, keep: usize) -> Result<ReportSummary> {
    fs::create_dir_all(dir).map_err(|e| Error::io("creating crash directory", dir, e))?;
    let stamp = time::file_stamp(report.written_wall_ms);
    let base = format!("{PREFIX}{stamp}-{}", report.pid);
    let json = dir.join(format!("{base}.json"));
    let text = dir.join(format!("{base}.txt"));
    // Text first: a listing keys on the JSON, so it never shows a half-written pair.
    write_atomically(&text, report.to_text().as_bytes())?;
    write_atomically(&json, &serde_json::to_vec_pretty(report)?)?;
    prune(dir, keep.max(1))?;
    Ok(ReportSummary {
        json,
        text,
        pid: report.pid,
        stamp,
    })
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let written = fs::write(&tmp, bytes)
        .map_err(|e| Error::io("writing", &tmp, e))
        .and_then(|()| {
            fs::rename(&tmp, path).map_err(|e| Error::io("renaming into place", path, e))
        });
    if written.is_err() {
        // A full disk leaves a partial (often empty) temporary file: it holds nothing a reader
        // could use, and a later attempt writes the whole report again.
        let _ = fs::remove_file(&tmp);
    }
    written
}

fn prune(dir: &Path, keep: usize) -> Result<()> {
    for old in list_reports(dir)?.into_iter().skip(keep) {
        for path in [&old.json, &old.text] {
            match fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("deleting old report", path, e)),
            }
        }
    }
    Ok(())
}

/// The reports in `dir`, newest first. A missing directory has none.
///
/// # Errors
/// [`Error::Io`] if the directory exists but cannot be listed.
pub fn list_reports(dir: &Path) -> Result<Vec<ReportSummary>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("listing", dir, e)),
    };
    let mut reports = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("listing", dir, e))?;
        let name = entry.file_name();
        let Some(base) = name
            .to_str()
            .and_then(|n| n.strip_prefix(PREFIX))
            .and_then(|n| n.strip_suffix(".json"))
        else {
            continue;
        };
        let Some((stamp, pid)) = base.rsplit_once('-') else {
            continue;
        };
        let Ok(pid) = pid.parse() else {
            continue;
        };
        reports.push(ReportSummary {
            json: entry.path(),
            text: entry.path().with_extension("txt"),
            pid,
            stamp: stamp.to_owned(),
        });
    }
    reports.sort_by(|a, b| b.stamp.cmp(&a.stamp).then(b.pid.cmp(&a.pid)));
    Ok(reports)
}

/// Reads a JSON report.
///
/// # Errors
/// [`Error::Io`] if it cannot be read, [`Error::Malformed`] if it is not a report.
pub fn read_report(path: &Path) -> Result<CrashReport> {
    let text = fs::read_to_string(path).map_err(|e| Error::io("reading", path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Malformed {
        what: "crash report",
        path: path.to_owned(),
        detail: e.to_string(),
    })
}

impl CrashReport {
    /// The report for people: verdict first, then the evidence and what was found.
    pub fn to_text(&self) -> String {
        let mut t = String::new();
        // Writing to a String cannot fail.
        let _ = writeln!(
            t,
            "ward crash report: {} pid {} {}",
            self.role,
            self.pid,
            self.verdict.cause.describe()
        );
        let _ = writeln!(t, "written:    {}", time::human(self.written_wall_ms));
        let _ = writeln!(t, "cause:      {}", self.verdict.cause.kind());
        let _ = writeln!(t, "confidence: {:?}", self.verdict.confidence);
        if let Some(ms) = self.run_time_ms {
            let _ = writeln!(t, "ran for:    {:.1}s", ms as f64 / 1000.0);
        }
        if let Some(kib) = self.max_rss_kib {
            let _ = writeln!(t, "peak RSS:   {} MiB", kib / 1024);
        }
        let _ = writeln!(t, "\nevidence:");
        for e in &self.verdict.evidence {
            let _ = writeln!(t, "  - {e}");
        }
        if let Some(p) = self.crash_record.as_ref().and_then(CrashRecord::last_panic) {
            let _ = writeln!(
                t,
                "\npanic in thread '{}' at {}:\n  {}",
                p.thread, p.location, p.message
            );
            for line in p.backtrace.iter().take(60) {
                let _ = writeln!(t, "  {line}");
            }
        }
        for (i, s) in self
            .crash_record
            .iter()
            .flat_map(|r| r.signals())
            .enumerate()
        {
            let _ = writeln!(
                t,
                "\nfatal signal {} ({}) code {} address {} in tid {}{}",
                s.signal,
                s.name,
                s.code,
                s.address.as_deref().unwrap_or("-"),
                s.tid,
                if s.complete {
                    ""
                } else {
                    " (record cut short)"
                }
            );
            let _ = writeln!(t, "  executable {} loaded at {}", s.exe, s.exe_base);
            // The report's frames are the first entry's, named.
            if i == 0 && self.native_frames.len() == s.frames.len() {
                write_native_frames(&mut t, &self.native_frames, s);
            } else {
                for f in &s.frames {
                    let _ = writeln!(t, "  {f}");
                }
            }
        }
        if let Some(hint) = &self.symbolize_hint {
            let _ = writeln!(t, "\nsymbolize with:\n  {hint}");
        }
        if let Some(hb) = &self.heartbeat {
            let _ = writeln!(
                t,
                "\nlast heartbeat: seq {} at {} ({:?})",
                hb.seq,
                time::human(hb.wall_ms),
                hb.state
            );
        }
        let sections = [
            ("kernel log", self.kernel_lines.clone().unwrap_or_default()),
            ("stderr tail", self.stderr_tail.clone()),
            ("log tail", self.log_tail.clone()),
            ("notes", self.notes.clone()),
        ];
        for (title, lines) in sections {
            if !lines.is_empty() {
                let _ = writeln!(t, "\n{title}:");
                for line in lines {
                    let _ = writeln!(t, "  {line}");
                }
            }
        }
        t
    }
}

/// The frames innermost first, one line each with its function and `file:line` where named and
/// a line for each call inlined there; the crash handler's own frames (those before the
/// interrupted instruction) are counted, not listed.
fn write_native_frames(t: &mut String, frames: &[NativeFrame], signal: &crate::SignalEntry) {
    let handler = signal
        .pc
        .as_deref()
        .and_then(|pc| frames.iter().position(|f| f.address == pc))
        .unwrap_or(0);
    // Writing to a String cannot fail.
    if handler > 0 {
        let _ = writeln!(t, "  ({handler} frames of the crash handler left out)");
    }
    for (n, frame) in frames.iter().enumerate().skip(handler) {
        let library = frame
            .object
            .as_deref()
            .filter(|o| *o != signal.exe)
            .map(|o| {
                Path::new(o)
                    .file_name()
                    .map_or(o.into(), |n| n.to_string_lossy())
            });
        let mut symbols = frame.symbols.iter();
        match symbols.next() {
            Some(innermost) => {
                let _ = write!(t, "  #{n:<2} {} {innermost}", frame.address);
                if let Some(library) = library {
                    let _ = write!(t, " ({library})");
                }
                let _ = writeln!(t);
                for caller in symbols {
                    let _ = writeln!(t, "        inlined into {caller}");
                }
            }
            None => {
                let _ = write!(t, "  #{n:<2} {}", frame.address);
                match (library, &frame.offset) {
                    (Some(library), Some(offset)) => {
                        let _ = write!(t, " ({library} +{offset})");
                    }
                    (None, Some(offset)) => {
                        let _ = write!(t, " (executable +{offset})");
                    }
                    _ => {}
                }
                let _ = writeln!(t);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(pid: u32, wall_ms: u64) -> CrashReport {
        let mut evidence = Evidence::new(pid, "worker", "/nonexistent");
        evidence.wait_status = Some(WaitOutcome::Exited { code: 2 });
        let mut r = collect(&evidence);
        r.written_wall_ms = wall_ms;
        r
    }

    #[test]
    fn reports_round_trip_and_list_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let first = report(10, 1_000);
        let a = write_report(&first, dir.path(), 10).unwrap();
        let b = write_report(&report(11, 2_000), dir.path(), 10).unwrap();
        let listed = list_reports(dir.path()).unwrap();
        assert_eq!(listed, vec![b.clone(), a.clone()]);
        assert_eq!(read_report(&a.json).unwrap(), first);
        assert!(
            fs::read_to_string(&b.text)
                .unwrap()
                .contains("exited with code 2")
        );
    }

    #[test]
    fn retention_keeps_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..5u64 {
            write_report(&report(100 + i as u32, 1_000 * (i + 1)), dir.path(), 3).unwrap();
        }
        let pids: Vec<u32> = list_reports(dir.path())
            .unwrap()
            .iter()
            .map(|r| r.pid)
            .collect();
        assert_eq!(pids, vec![104, 103, 102]);
        let files = fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(files, 6, "three json and three text files");
    }

    /// Regression: on a full disk a report was lost and left behind as an empty `.tmp`.
    #[test]
    fn a_report_that_cannot_be_written_leaves_no_temporary_file_and_is_given_back() {
        let dir = tempfile::tempdir().unwrap();
        let lost = report(12, 3_000);
        // A non-empty directory where the text file goes: the rename into place fails.
        let stamp = time::file_stamp(lost.written_wall_ms);
        let blocked = dir.path().join(format!("{PREFIX}{stamp}-12.txt"));
        fs::create_dir_all(blocked.join("in-the-way")).unwrap();
        let mut evidence = Evidence::new(12, "worker", dir.path());
        evidence.wait_status = Some(WaitOutcome::Exited { code: 2 });
        let (back, _) = write_death(lost.clone(), &evidence, &ReportOptions::new(10)).unwrap_err();
        assert_eq!(*back, lost, "the report comes back whole");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(
            !names.iter().any(|n| n.to_string_lossy().ends_with(".tmp")),
            "{names:?}"
        );
        fs::remove_dir_all(&blocked).unwrap();
        let written = write_death(*back, &evidence, &ReportOptions::new(10)).unwrap();
        assert_eq!(read_report(&written.paths.json).unwrap(), lost);
    }

    #[test]
    fn a_missing_directory_has_no_reports_and_other_files_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        assert!(list_reports(&dir.path().join("nope")).unwrap().is_empty());
        fs::write(dir.path().join("123.record"), "").unwrap();
        fs::write(dir.path().join("crash-x.json"), "").unwrap();
        assert!(list_reports(dir.path()).unwrap().is_empty());
    }

    #[test]
    fn log_tails_skip_the_partial_first_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut text = String::new();
        for i in 0..20_000 {
            text.push_str(&format!("line {i}\n"));
        }
        fs::write(&path, &text).unwrap();
        let tail = tail_lines(&path).unwrap();
        assert_eq!(tail.len(), TAIL_LINES);
        assert_eq!(tail.last().unwrap(), "line 19999");
        assert!(tail.iter().all(|l| l.starts_with("line ")));
    }
}

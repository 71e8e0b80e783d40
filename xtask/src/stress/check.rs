//! The verdict's arithmetic: pure functions from what the harness wrote, what the ledger and the
//! crash reports say and what /proc showed, to PASS/FAIL lines. No I/O here, so it is unit-tested.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::ledger::{Entry, Phase};

/// What the harness did to one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    /// The path now has content with this hash (a write, or the target of a rename).
    Wrote(u64),
    /// The path is gone (a delete, or the source of a rename).
    Removed,
}

/// One change the harness made, with when and by which workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteOp {
    /// Wall clock, milliseconds since the Unix epoch.
    pub t_ms: u64,
    /// The absolute path.
    pub path: String,
    /// What happened to it.
    pub kind: OpKind,
    /// `steady`, `churn`, `edit`, `burst`, `fault`...
    pub workload: &'static str,
}

/// A stretch of time during which a fault kept ward from seeing or processing changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// The fault, e.g. `kill-server #1`.
    pub label: String,
    /// When it was injected.
    pub start_ms: u64,
    /// When ward was back (server ready, process continued).
    pub end_ms: u64,
}

/// How a change was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LostKind {
    /// The file exists at the end and no job ever saw it.
    NeverProcessed,
    /// The file exists at the end, jobs saw it, but none its final content.
    StaleContent,
    /// The file is gone at the end, jobs saw it, and its removal was never processed.
    RemovalNotProcessed,
}

impl LostKind {
    /// In words, for the table and the JSON report.
    pub fn describe(self) -> &'static str {
        match self {
            LostKind::NeverProcessed => "never processed",
            LostKind::StaleContent => "final content never processed",
            LostKind::RemovalNotProcessed => "removal never processed",
        }
    }
}

/// One lost change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lost {
    /// The path.
    pub path: String,
    /// How.
    pub kind: LostKind,
    /// The harness's last change to it, milliseconds since the epoch.
    pub last_change_ms: Option<u64>,
    /// The index of the fault window that explains it, if one does.
    pub window: Option<usize>,
}

/// Every lost change: each file on disk at the end must have its final content hash handled in
/// the ledger, and each file jobs saw that is gone at the end must have had its removal (or its
/// rename away) processed last. A file that came and went before any job saw it is not a loss:
/// ward coalesces a create and a delete into nothing.
///
/// A loss is attributed to the first window that overlaps `[last change, last change +
/// pending_ms]`: the change was made during the fault, or was still pending when it hit.
pub fn lost_changes(
    final_files: &BTreeMap<String, u64>,
    ledger: &[Entry],
    writes: &[WriteOp],
    windows: &[Window],
    pending_ms: u64,
) -> Vec<Lost> {
    let mut handled: HashSet<(&str, u64)> = HashSet::new();
    let mut seen: HashSet<&str> = HashSet::new();
    // For each path, whether the last entry that mentions it says it is gone.
    let mut gone_last: HashMap<&str, bool> = HashMap::new();
    // The last removal of each path that the `nats` trigger's jobs processed.
    let mut nats_removed: HashMap<&str, u64> = HashMap::new();
    for e in ledger {
        seen.insert(&e.path);
        if let (true, Some(h)) = (e.handled(), e.hash) {
            handled.insert((&e.path, h));
        }
        gone_last.insert(&e.path, e.event == "removed");
        if e.trigger == "nats" && e.event == "removed" && e.handled() {
            nats_removed.insert(&e.path, e.t_ms);
        }
        if let Some(old) = &e.old_path {
            seen.insert(old);
            gone_last.insert(old, true);
        }
    }
    let mut last_change: HashMap<&str, u64> = HashMap::new();
    for w in writes {
        let t = last_change.entry(&w.path).or_insert(0);
        *t = (*t).max(w.t_ms);
    }
    let mut lost = Vec::new();
    for (path, &hash) in final_files {
        if handled.contains(&(path.as_str(), hash)) {
            continue;
        }
        let kind = if seen.contains(path.as_str()) {
            LostKind::StaleContent
        } else {
            LostKind::NeverProcessed
        };
        lost.push((path.as_str(), kind));
    }
    let mut deleted: Vec<&str> = last_change
        .keys()
        .copied()
        .filter(|p| !final_files.contains_key(*p))
        .collect();
    deleted.sort_unstable();
    for path in deleted {
        // Jobs through NATS are delivered at least once, in no promised order: a delivery
        // whose ack was lost (its server killed) comes again after the ack wait, and may run
        // after the removal that followed it. Its removal is processed if it ran after the
        // path's last change, whatever ran after it.
        let removal_ran = nats_removed
            .get(path)
            .is_some_and(|&t| last_change.get(path).is_some_and(|&c| t >= c));
        if gone_last.get(path) == Some(&false) && !removal_ran {
            lost.push((path, LostKind::RemovalNotProcessed));
        }
    }
    lost.into_iter()
        .map(|(path, kind)| {
            let last_change_ms = last_change.get(path).copied();
            let window = last_change_ms.and_then(|t| {
                windows
                    .iter()
                    .enumerate()
                    .filter(|(_, w)| w.end_ms >= t && w.start_ms <= t + pending_ms)
                    .min_by_key(|(_, w)| w.start_ms)
                    .map(|(i, _)| i)
            });
            Lost {
                path: path.to_owned(),
                kind,
                last_change_ms,
                window,
            }
        })
        .collect()
}

/// A death the harness caused and expects a crash report for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedDeath {
    /// The fault, e.g. `segv #1`.
    pub fault: String,
    /// What the report's role must contain: `server`, `keeper`, or the job's path.
    pub role_contains: String,
    /// The pid, when the harness knows it.
    pub pid: Option<u32>,
    /// Acceptable causes, as [`cause_label`] gives them.
    pub causes: Vec<String>,
}

/// A crash report, reduced to what the verdict needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Its file name.
    pub file: String,
    /// The dead process.
    pub pid: u32,
    /// `server`, `keeper`, `worker NAME#N during PATH`, `job NAME on PATH`.
    pub role: String,
    /// [`cause_label`] of its verdict.
    pub cause: String,
    /// The verdict's confidence: `low`, `medium`, `high`.
    pub confidence: String,
    /// When it was written (`written_wall_ms`), milliseconds since the epoch: the plot's time
    /// of the death.
    pub written_ms: Option<u64>,
}

/// A report's cause as one comparable label: the kind, plus the signal for signal deaths and
/// the code for exits (`native_crash SIGSEGV`, `killed_by_signal SIGKILL`, `exited 3`, `panic`).
pub fn cause_label(cause: &serde_json::Value) -> String {
    let kind = cause["kind"].as_str().unwrap_or("?");
    match kind {
        "native_crash" | "killed_by_signal" => {
            format!("{kind} {}", cause["signal_name"].as_str().unwrap_or("?"))
        }
        "exited" => format!("exited {}", cause["code"]),
        _ => kind.to_owned(),
    }
}

/// What became of one expected death.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeathOutcome {
    /// A report names it with an expected cause (the report's file).
    Reported(String),
    /// Reports name it, with other causes (each with its confidence).
    WrongCause(Vec<String>),
    /// No report names it.
    Missing,
}

/// Matches expected deaths with reports; returns each expectation's outcome and the reports no
/// expectation explains (deaths the harness did not cause).
pub fn match_deaths(
    expected: &[ExpectedDeath],
    reports: &[Report],
) -> (Vec<DeathOutcome>, Vec<Report>) {
    let about = |e: &ExpectedDeath, r: &Report| {
        r.role.contains(&e.role_contains) && e.pid.is_none_or(|p| p == r.pid)
    };
    let outcomes = expected
        .iter()
        .map(|e| {
            let mine: Vec<&Report> = reports.iter().filter(|r| about(e, r)).collect();
            if let Some(r) = mine.iter().find(|r| e.causes.contains(&r.cause)) {
                DeathOutcome::Reported(r.file.clone())
            } else if mine.is_empty() {
                DeathOutcome::Missing
            } else {
                DeathOutcome::WrongCause(
                    mine.iter()
                        .map(|r| format!("{} ({} confidence)", r.cause, r.confidence))
                        .collect(),
                )
            }
        })
        .collect();
    let unexplained = reports
        .iter()
        .filter(|r| !expected.iter().any(|e| about(e, r)))
        .cloned()
        .collect();
    (outcomes, unexplained)
}

/// One RSS reading.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RssSample {
    /// Seconds since the run began.
    pub t_s: f64,
    /// The process read.
    pub pid: u32,
    /// Its resident set, KiB.
    pub rss_kib: u64,
    /// The highest its resident set has been since it started (`VmHWM`), KiB: a peak between
    /// two readings is not missed.
    pub hwm_kib: u64,
}

/// Memory figures of one role (keeper or server).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RssFigures {
    /// Highest resident set of any of its processes, high-water marks (`VmHWM`) included.
    pub peak_kib: u64,
    /// Least-squares slope over the judged stretch, KiB per minute.
    pub slope_kib_per_min: f64,
    /// Median of the judged stretch's last quarter minus that of its first quarter.
    pub growth_kib: i64,
    /// Length of the judged stretch: the longest life of one pid, after its warm-up.
    pub judged_s: f64,
    /// Whether the growth is sustained: a rising slope and a real difference between the thirds.
    pub sustained: bool,
}

/// Judging needs at least this long a stretch of one process's life.
pub const MIN_JUDGED_S: f64 = 20.0;

/// Peak and growth of one role's memory. The stretch judged is the longest life of one pid
/// (a restarted process starts afresh), without its first `warmup_s`. Growth is sustained when
/// the median of each quarter of the stretch is above the one before (a rise that goes on, where
/// a burst's one-off step or allocator noise lifts one quarter only), the slope passes 1 MiB/min,
/// and the last quarter exceeds the first by more than 8 MiB and 25 %.
pub fn rss_figures(samples: &[RssSample], warmup_s: f64) -> Option<RssFigures> {
    let peak_kib = samples.iter().map(|s| s.rss_kib.max(s.hwm_kib)).max()?;
    let mut segments: Vec<&[RssSample]> = Vec::new();
    let mut start = 0;
    for i in 1..=samples.len() {
        if i == samples.len() || samples[i].pid != samples[start].pid {
            segments.push(&samples[start..i]);
            start = i;
        }
    }
    let span = |s: &[RssSample]| s.last().map_or(0.0, |l| l.t_s) - s.first().map_or(0.0, |f| f.t_s);
    let longest = segments
        .into_iter()
        .max_by(|a, b| span(a).total_cmp(&span(b)))?;
    let from = longest[0].t_s + warmup_s;
    let judged: Vec<RssSample> = longest.iter().copied().filter(|s| s.t_s >= from).collect();
    let judged_s = span(&judged);
    let (mut slope, mut growth, mut rising) = (0.0, 0, false);
    if judged.len() >= 8 && judged_s > 0.0 {
        let n = judged.len() as f64;
        let mean_t = judged.iter().map(|s| s.t_s).sum::<f64>() / n;
        let mean_r = judged.iter().map(|s| s.rss_kib as f64).sum::<f64>() / n;
        let cov: f64 = judged
            .iter()
            .map(|s| (s.t_s - mean_t) * (s.rss_kib as f64 - mean_r))
            .sum();
        let var: f64 = judged.iter().map(|s| (s.t_s - mean_t).powi(2)).sum();
        slope = if var > 0.0 { cov / var * 60.0 } else { 0.0 };
        let quarter = judged.len() / 4;
        let medians: Vec<u64> = (0..4)
            .map(|q| {
                median(
                    judged[q * quarter..(q + 1) * quarter]
                        .iter()
                        .map(|s| s.rss_kib)
                        .collect(),
                )
            })
            .collect();
        growth = medians[3] as i64 - medians[0] as i64;
        // Each quarter above the one before by a margin, so that allocator noise on a plateau
        // does not count as a rise.
        let margin = (medians[0] / 50).max(512);
        rising = medians.windows(2).all(|w| w[1] > w[0] + margin)
            && growth > 8 * 1024
            && growth as f64 > 0.25 * medians[0] as f64;
    }
    let sustained = judged_s >= MIN_JUDGED_S && slope > 1024.0 && rising;
    Some(RssFigures {
        peak_kib,
        slope_kib_per_min: slope,
        growth_kib: growth,
        judged_s,
        sustained,
    })
}

fn median(mut v: Vec<u64>) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    v[v.len() / 2]
}

/// Write→job-start latencies: for each (path, content) the harness wrote, the first job that
/// read exactly that content, in milliseconds, with the workload that wrote it. Content no job
/// read (superseded, coalesced) has no latency.
pub fn latencies(writes: &[WriteOp], ledger: &[Entry]) -> Vec<(&'static str, u64)> {
    let mut written: HashMap<(&str, u64), (u64, &'static str)> = HashMap::new();
    for w in writes {
        if let OpKind::Wrote(h) = w.kind {
            written.insert((&w.path, h), (w.t_ms, w.workload));
        }
    }
    let mut out = Vec::new();
    for e in ledger.iter().filter(|e| e.phase == Phase::Start) {
        let Some(h) = e.hash else { continue };
        if let Some((t, workload)) = written.remove(&(e.path.as_str(), h)) {
            out.push((workload, e.t_ms.saturating_sub(t)));
        }
    }
    out
}

/// The `q`-quantile (0..=1) of sorted values, nearest rank.
pub fn percentile(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// One line of the verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// What is checked.
    pub check: String,
    /// PASS or FAIL.
    pub pass: bool,
    /// The figure, in a few words.
    pub figure: String,
    /// Explanations printed under a FAIL (and kept in the JSON report).
    pub details: Vec<String>,
}

impl Line {
    /// A line; `details` are printed under it when it fails.
    pub fn new(check: &str, pass: bool, figure: String, details: Vec<String>) -> Line {
        Line {
            check: check.to_owned(),
            pass,
            figure,
            details,
        }
    }
}

/// The table as printed: one line per check, failing lines followed by up to `max_details` of
/// their details.
pub fn table(lines: &[Line], max_details: usize) -> String {
    let width = lines.iter().map(|l| l.check.len()).max().unwrap_or(0);
    let mut out = String::new();
    for l in lines {
        let verdict = if l.pass { "PASS" } else { "FAIL" };
        out.push_str(&format!("{verdict}  {:width$}  {}\n", l.check, l.figure));
        if !l.pass {
            for d in l.details.iter().take(max_details) {
                out.push_str(&format!("        {d}\n"));
            }
            if l.details.len() > max_details {
                out.push_str(&format!(
                    "        ... and {} more (see the JSON report)\n",
                    l.details.len() - max_details
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(phase: Phase, path: &str, event: &str, hash: Option<u64>) -> Entry {
        Entry {
            phase,
            t_ms: 1000,
            pid: 7,
            event: event.into(),
            hash,
            directive: "-".into(),
            trigger: "stress".into(),
            path: path.into(),
            old_path: None,
        }
    }

    fn wrote(t_ms: u64, path: &str, hash: u64) -> WriteOp {
        WriteOp {
            t_ms,
            path: path.into(),
            kind: OpKind::Wrote(hash),
            workload: "churn",
        }
    }

    fn removed(t_ms: u64, path: &str) -> WriteOp {
        WriteOp {
            kind: OpKind::Removed,
            ..wrote(t_ms, path, 0)
        }
    }

    #[test]
    fn final_content_must_be_done_and_each_miss_says_how() {
        let files: BTreeMap<String, u64> = [
            ("/a".into(), 1),
            ("/b".into(), 2),
            ("/c".into(), 3),
            ("/d".into(), 4),
        ]
        .into();
        let ledger = vec![
            entry(Phase::Start, "/a", "created", Some(1)),
            entry(Phase::Done, "/a", "created", Some(1)),
            // /b: its final content only started (a killed worker), an older one finished.
            entry(Phase::Done, "/b", "created", Some(9)),
            entry(Phase::Start, "/b", "modified", Some(2)),
            // /d: a job told to exit never writes its done entry; its start is enough.
            Entry {
                directive: "exit 3".into(),
                ..entry(Phase::Start, "/d", "created", Some(4))
            },
        ];
        let writes = vec![wrote(10, "/a", 1), wrote(20, "/b", 2), wrote(30, "/c", 3)];
        let lost = lost_changes(&files, &ledger, &writes, &[], 5000);
        let got: Vec<_> = lost.iter().map(|l| (l.path.as_str(), l.kind)).collect();
        assert_eq!(
            got,
            [
                ("/b", LostKind::StaleContent),
                ("/c", LostKind::NeverProcessed)
            ]
        );
        assert_eq!(lost[1].last_change_ms, Some(30));
    }

    #[test]
    fn a_deleted_file_needs_its_removal_last_unless_no_job_ever_saw_it() {
        let files = BTreeMap::new();
        let mut renamed = entry(Phase::Done, "/new", "renamed", Some(5));
        renamed.old_path = Some("/moved".into());
        let ledger = vec![
            entry(Phase::Done, "/gone", "created", Some(1)),
            entry(Phase::Done, "/gone", "removed", None),
            entry(Phase::Done, "/kept-seen", "created", Some(2)),
            entry(Phase::Done, "/moved", "created", Some(3)),
            renamed,
            entry(Phase::Done, "/new", "removed", None),
            // Removed, then re-created and seen, then removed again without a job.
            entry(Phase::Done, "/again", "removed", None),
            entry(Phase::Done, "/again", "created", Some(6)),
        ];
        let writes = vec![
            wrote(1, "/gone", 1),
            removed(2, "/gone"),
            wrote(3, "/kept-seen", 2),
            removed(4, "/kept-seen"),
            wrote(5, "/moved", 3),
            removed(6, "/moved"),
            wrote(6, "/new", 5),
            removed(7, "/new"),
            wrote(8, "/never-seen", 4),
            removed(9, "/never-seen"),
            wrote(10, "/again", 6),
            removed(11, "/again"),
        ];
        let lost = lost_changes(&files, &ledger, &writes, &[], 5000);
        let got: Vec<_> = lost.iter().map(|l| (l.path.as_str(), l.kind)).collect();
        assert_eq!(
            got,
            [
                ("/again", LostKind::RemovalNotProcessed),
                ("/kept-seen", LostKind::RemovalNotProcessed)
            ]
        );
    }

    #[test]
    fn a_nats_job_redelivered_after_its_removal_does_not_hide_that_the_removal_ran() {
        let files = BTreeMap::new();
        let nats = |t_ms, path: &str, event: &str, hash| Entry {
            t_ms,
            trigger: "nats".into(),
            ..entry(Phase::Done, path, event, hash)
        };
        let ledger = vec![
            nats(100, "/n/a", "created", Some(1)),
            nats(300, "/n/a", "removed", None),
            // Its ack lost: the creation delivered again after the removal ran.
            nats(900, "/n/a", "created", None),
            // Its removal ran before the last change: lost.
            nats(100, "/n/b", "created", Some(2)),
            nats(150, "/n/b", "removed", None),
            nats(900, "/n/b", "created", None),
            // Not through NATS: the removal must still come last.
            entry(Phase::Done, "/c", "removed", None),
            entry(Phase::Done, "/c", "created", Some(3)),
        ];
        let writes = vec![
            wrote(50, "/n/a", 1),
            removed(200, "/n/a"),
            wrote(50, "/n/b", 2),
            removed(200, "/n/b"),
            wrote(50, "/c", 3),
            removed(200, "/c"),
        ];
        let lost = lost_changes(&files, &ledger, &writes, &[], 5000);
        let got: Vec<_> = lost.iter().map(|l| (l.path.as_str(), l.kind)).collect();
        assert_eq!(
            got,
            [
                ("/c", LostKind::RemovalNotProcessed),
                ("/n/b", LostKind::RemovalNotProcessed)
            ]
        );
    }

    #[test]
    fn a_loss_is_blamed_on_the_fault_window_it_fell_into_or_was_pending_at() {
        let files: BTreeMap<String, u64> = [
            ("/during".into(), 1),
            ("/just-before".into(), 2),
            ("/long-before".into(), 3),
            ("/after".into(), 4),
        ]
        .into();
        let writes = vec![
            wrote(10_500, "/during", 1),
            wrote(8_000, "/just-before", 2),
            wrote(1_000, "/long-before", 3),
            wrote(30_000, "/after", 4),
        ];
        let windows = vec![
            Window {
                label: "stop-server #1".into(),
                start_ms: 20_000,
                end_ms: 23_000,
            },
            Window {
                label: "kill-server #1".into(),
                start_ms: 10_000,
                end_ms: 11_000,
            },
        ];
        let lost = lost_changes(&files, &[], &writes, &windows, 5000);
        let blame: BTreeMap<&str, Option<usize>> =
            lost.iter().map(|l| (l.path.as_str(), l.window)).collect();
        assert_eq!(blame["/during"], Some(1));
        assert_eq!(blame["/just-before"], Some(1));
        assert_eq!(
            blame["/long-before"], None,
            "not pending when the fault hit"
        );
        assert_eq!(
            blame["/after"], None,
            "a loss outside every window is ward's bug"
        );
    }

    fn report(pid: u32, role: &str, cause: &str) -> Report {
        Report {
            file: format!("crash-{pid}.json"),
            pid,
            role: role.into(),
            cause: cause.into(),
            confidence: "high".into(),
            written_ms: None,
        }
    }

    #[test]
    fn deaths_are_matched_by_role_and_pid_and_strays_are_unexplained() {
        let expect = |fault: &str, role: &str, pid, cause: &str| ExpectedDeath {
            fault: fault.into(),
            role_contains: role.into(),
            pid,
            causes: vec![cause.into()],
        };
        let expected = vec![
            expect(
                "kill-server #1",
                "server",
                Some(10),
                "killed_by_signal SIGKILL",
            ),
            expect("segv #1", "/t/faults/segv-1", None, "native_crash SIGSEGV"),
            expect("hang #1", "/t/faults/hang-1", None, "hung"),
            expect("exit #1", "/t/faults/exit-1", None, "exited 3"),
        ];
        let reports = vec![
            report(10, "server", "killed_by_signal SIGKILL"),
            report(11, "server", "native_crash SIGSEGV"),
            report(
                20,
                "worker stress#2 during /t/faults/segv-1",
                "native_crash SIGSEGV",
            ),
            report(
                21,
                "worker stress#3 during /t/faults/segv-1",
                "native_crash SIGSEGV",
            ),
            report(30, "job exec on /t/faults/exit-1", "exited 4"),
        ];
        let (outcomes, unexplained) = match_deaths(&expected, &reports);
        assert_eq!(
            outcomes,
            [
                DeathOutcome::Reported("crash-10.json".into()),
                DeathOutcome::Reported("crash-20.json".into()),
                DeathOutcome::Missing,
                DeathOutcome::WrongCause(vec!["exited 4 (high confidence)".into()]),
            ]
        );
        assert_eq!(unexplained, [reports[1].clone()]);
    }

    #[test]
    fn cause_labels_carry_the_signal_or_the_code() {
        let label = |v: serde_json::Value| cause_label(&v);
        assert_eq!(
            label(
                serde_json::json!({"kind": "native_crash", "signal": 11, "signal_name": "SIGSEGV"})
            ),
            "native_crash SIGSEGV"
        );
        assert_eq!(
            label(serde_json::json!({"kind": "exited", "code": 3})),
            "exited 3"
        );
        assert_eq!(
            label(serde_json::json!({"kind": "panic", "message": "x"})),
            "panic"
        );
    }

    fn series(pid: u32, from: f64, secs: usize, kib: impl Fn(f64) -> f64) -> Vec<RssSample> {
        (0..secs)
            .map(|i| {
                let t = from + i as f64;
                RssSample {
                    t_s: t,
                    pid,
                    rss_kib: kib(t) as u64,
                    hwm_kib: 0,
                }
            })
            .collect()
    }

    #[test]
    fn steady_memory_passes_and_a_leak_fails() {
        let flat = series(1, 0.0, 120, |t| 20_000.0 + (t * 7.0) % 300.0);
        let f = rss_figures(&flat, 10.0).unwrap();
        assert!(!f.sustained, "{f:?}");
        assert!((f.judged_s - 109.0).abs() < 1e-9);
        let leak = series(1, 0.0, 120, |t| 20_000.0 + t * 300.0);
        let f = rss_figures(&leak, 10.0).unwrap();
        assert!(f.sustained, "{f:?}");
        assert!((f.slope_kib_per_min - 18_000.0).abs() < 1.0, "{f:?}");
        assert_eq!(f.peak_kib, 20_000 + 119 * 300);
    }

    #[test]
    fn a_one_off_step_is_not_a_leak_and_a_restart_starts_afresh() {
        let step = series(1, 0.0, 120, |t| if t < 15.0 { 20_000.0 } else { 40_000.0 });
        assert!(!rss_figures(&step, 10.0).unwrap().sustained);
        // A leaking process killed early, then a flat one for longer: the longest life is judged.
        let mut restarted = series(1, 0.0, 30, |t| 20_000.0 + t * 2000.0);
        restarted.extend(series(2, 30.0, 90, |_| 21_000.0));
        let f = rss_figures(&restarted, 5.0).unwrap();
        assert!(!f.sustained, "{f:?}");
        assert_eq!(f.peak_kib, 20_000 + 29 * 2000);
        // Two bursts grow the tree twice: steps, not a leak.
        let steps = series(1, 0.0, 120, |t| {
            20_000.0 + if t > 40.0 { 10_000.0 } else { 0.0 } + if t > 70.0 { 10_000.0 } else { 0.0 }
        });
        assert!(!rss_figures(&steps, 10.0).unwrap().sustained);
        let short = series(1, 0.0, 15, |t| 20_000.0 + t * 5000.0);
        assert!(
            !rss_figures(&short, 0.0).unwrap().sustained,
            "too short to judge"
        );
        assert!(rss_figures(&[], 0.0).is_none());
    }

    #[test]
    fn latency_is_from_a_write_to_the_first_job_that_read_that_content() {
        let writes = vec![
            wrote(1_000, "/a", 1),
            wrote(1_010, "/a", 2),
            wrote(1_000, "/b", 3),
        ];
        let mut ledger = vec![
            entry(Phase::Start, "/a", "modified", Some(2)),
            entry(Phase::Start, "/a", "modified", Some(2)),
            entry(Phase::Start, "/b", "created", Some(3)),
            entry(Phase::Start, "/c", "created", Some(4)),
        ];
        ledger[0].t_ms = 1_060;
        ledger[1].t_ms = 5_000;
        ledger[2].t_ms = 1_200;
        let got = latencies(&writes, &ledger);
        assert_eq!(got, [("churn", 50), ("churn", 200)]);
        let sorted = [10, 20, 30, 40, 50, 60, 70, 80, 90, 100];
        assert_eq!(percentile(&sorted, 0.5), Some(50));
        assert_eq!(percentile(&sorted, 0.99), Some(100));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn the_table_shows_details_only_under_failures() {
        let lines = vec![
            Line::new(
                "no change lost",
                false,
                "2 lost".into(),
                vec!["a".into(), "b".into(), "c".into()],
            ),
            Line::new("restarts", true, "1 of 1".into(), vec!["hidden".into()]),
        ];
        let text = table(&lines, 2);
        assert!(text.contains("FAIL  no change lost  2 lost\n        a\n        b\n"));
        assert!(text.contains("... and 1 more"));
        assert!(text.contains("PASS  restarts        1 of 1\n"));
        assert!(!text.contains("hidden"));
    }
}

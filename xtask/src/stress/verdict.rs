//! The verdict of a run: what the run gathered ([`Evidence`]) judged against each promise ward
//! makes, one function per PASS/FAIL line, composed in their printed order by [`lines`]. The
//! arithmetic is `check.rs`'s; the faults with a line of their own write it in `faults/`.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Instant;

use serde_json::Value;

use super::check::{self, DeathOutcome, ExpectedDeath, Line, Report, WriteOp};
use super::daemon::{Ran, Ward};
use super::faults::{self, FaultKind, Findings, Injected};
use super::ledger::Phase;
use super::run::{Burst, Reports};
use super::sampler::Samples;
use super::scene::{LedgerTail, Restarts};
use super::workload::{lock, now_ms};
use super::{Options, changes, failures};

/// A quick run's memory bounds: the keeper holds no per-file state; the server's includes the
/// manifest's page cache and per-directory watches, and 64 MiB is what the 200k-file burst of
/// `cargo xtask bench` must stay under.
const QUICK_KEEPER_CAP_MIB: f64 = 8.0;
const QUICK_SERVER_CAP_MIB: f64 = 64.0;
/// A change this long before a fault may still have been pending when it hit.
const PENDING_MS: u64 = 5000;
/// The lost paths listed under each fault window.
const LOST_LISTED: usize = 8;

/// Everything the verdict judges, gathered by the run once it has stopped ward.
pub struct Evidence<'a> {
    /// The command line.
    pub opts: &'a Options,
    /// ward under test: its log says what it saw.
    pub ward: &'a Ward,
    /// The watched tree.
    pub tree: &'a Path,
    /// When the run started.
    pub started: Instant,
    /// Every fault injected, in order.
    pub injected: &'a [Injected],
    /// How many faults of each kind were injected, by name.
    pub counts: &'a BTreeMap<&'static str, usize>,
    /// What the faults with a verdict line of their own found.
    pub findings: &'a Findings,
    /// Every change the harness made to the tree.
    pub writes: &'a [WriteOp],
    /// The jobs' ledger, read to its end.
    pub ledger: &'a LedgerTail,
    /// ward's crash reports.
    pub reports: &'a Reports,
    /// The keeper's and the server's memory, and how `ward status` answered.
    pub samples: &'a Samples,
    /// The burst, if it ran.
    pub burst: Option<&'a Burst>,
    /// The server's restarts, counted and expected.
    pub restarts: &'a Restarts,
    /// ward's since-queries after the run.
    pub reading: &'a changes::Reading,
    /// What the run's subscriber heard, how often it followed again after it ended, and how
    /// its runs that failed ended.
    pub heard: (&'a [changes::Change], usize, &'a [String]),
    /// `ward failures` after the run, and the disk's deadly files.
    pub gave_up: &'a failures::Reading,
    /// Every regular file on disk at the end, with its content hash.
    pub final_files: &'a BTreeMap<String, u64>,
    /// Whether ward went idle after the workloads stopped.
    pub settled: bool,
    /// What kept it busy last while it settled.
    pub busy: Option<&'a str>,
    /// How long settling took.
    pub settle_s: f64,
    /// How long the run took, settling included.
    pub run_s: f64,
    /// `ward status` after settling.
    pub status: Option<&'a Value>,
    /// What `ward stop` did.
    pub stopped: &'a anyhow::Result<Ran>,
    /// Processes still mentioning the run's directory after `ward stop` (pid, command line).
    pub left: &'a [(u32, String)],
    /// The state files `ward stop` left behind.
    pub stale: &'a [&'a str],
    /// What went wrong in the workloads themselves.
    pub writer_errors: &'a [String],
}

impl Evidence<'_> {
    /// Seconds from the run's start to `t_ms` (milliseconds since the epoch).
    pub fn since_start(&self, t_ms: u64) -> f64 {
        let start_ms = now_ms().saturating_sub(self.started.elapsed().as_millis() as u64);
        (t_ms as f64 - start_ms as f64) / 1000.0
    }

    /// `path` with the tree's own path shortened to `tree`.
    pub fn short(&self, path: &str) -> String {
        let root = self.tree.to_string_lossy();
        path.replace(root.as_ref(), "tree")
    }
}

/// Every verdict line, in the order printed.
pub fn lines(e: &Evidence<'_>) -> Vec<Line> {
    let windows = fault_windows(e);
    let lost = lost_changes(e, &windows);
    let expected: Vec<ExpectedDeath> = e.injected.iter().flat_map(|f| f.expected.clone()).collect();
    let (outcomes, unexplained) = check::match_deaths(&expected, &e.reports.list);
    let mut lines = vec![
        no_change_lost(e, &windows, &lost),
        deaths_reported(e, &expected, &outcomes),
        no_unexplained_death(e, &unexplained),
        faults_survived(e),
        rss(e, "keeper"),
        rss(e, "server"),
        latency(e),
        throughput(e),
        restarts(e),
        settled(e),
        no_orphan(e),
        no_stale_pidfile(e),
    ];
    lines.extend(harness(e));
    let losses = losses_by_fault(e, &windows, &lost);
    lines.extend(
        e.findings
            .lines(&e.opts.faults, &e.ledger.entries, e.tree, &losses),
    );
    let root = format!("{}/", e.tree.display());
    lines.push(changes::line(
        e.reading,
        e.final_files,
        e.writes,
        &e.ledger.entries,
        &root,
        |t| e.short(t),
    ));
    lines.push(super::follow::line(
        e.heard.0,
        &e.reading.all,
        e.heard.1,
        e.heard.2,
    ));
    lines.push(failures::line(e.gave_up, |t| e.short(t)));
    lines
}

/// The windows of the faults that have one (see [`FaultKind::has_window`]), each with its
/// fault's place in `e.injected`.
fn fault_windows(e: &Evidence<'_>) -> Vec<(usize, check::Window)> {
    e.injected
        .iter()
        .enumerate()
        .filter(|(_, f)| f.kind.has_window())
        .map(|(i, f)| {
            (
                i,
                check::Window {
                    label: f.label.clone(),
                    start_ms: f.start_ms,
                    end_ms: f.end_ms,
                },
            )
        })
        .collect()
}

/// The changes lost (see [`check::lost_changes`]), each with the index of its window in
/// `windows`, if it fell into one.
fn lost_changes(e: &Evidence<'_>, windows: &[(usize, check::Window)]) -> Vec<check::Lost> {
    let plain: Vec<check::Window> = windows.iter().map(|(_, w)| w.clone()).collect();
    check::lost_changes(
        e.final_files,
        &e.ledger.entries,
        e.writes,
        &plain,
        PENDING_MS,
    )
}

/// The changes lost in each fault's window, by its label, for the faults that judge their own.
fn losses_by_fault(
    e: &Evidence<'_>,
    windows: &[(usize, check::Window)],
    lost: &[check::Lost],
) -> BTreeMap<String, Vec<String>> {
    let mut by: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for l in lost {
        if let Some(w) = l.window {
            by.entry(windows[w].1.label.clone())
                .or_default()
                .push(format!("{} ({})", e.short(&l.path), l.kind.describe()));
        }
    }
    by
}

/// No change lost, each loss blamed on the window it fell into.
fn no_change_lost(
    e: &Evidence<'_>,
    windows: &[(usize, check::Window)],
    lost: &[check::Lost],
) -> Line {
    let deleted = {
        let mut paths: HashSet<&str> = e.writes.iter().map(|w| w.path.as_str()).collect();
        paths.retain(|p| !e.final_files.contains_key(*p));
        paths.len()
    };
    let mut groups: BTreeMap<Option<usize>, Vec<&check::Lost>> = BTreeMap::new();
    for l in lost {
        groups.entry(l.window).or_default().push(l);
    }
    let mut details = Vec::new();
    for (window, group) in &groups {
        let fault = window.map(|w| &e.injected[windows[w].0]);
        details.push(loss_head(fault, group.len()));
        for l in group.iter().take(LOST_LISTED) {
            let when = l
                .last_change_ms
                .map(|t| format!(", last change at +{:.2}s", e.since_start(t)))
                .unwrap_or_default();
            details.push(format!(
                "  {} ({}{when})",
                e.short(&l.path),
                l.kind.describe()
            ));
        }
        if group.len() > LOST_LISTED {
            details.push(format!("  ... {} more", group.len() - LOST_LISTED));
        }
    }
    Line::new(
        "no change lost",
        lost.is_empty(),
        format!(
            "{} files on disk, {} deleted, {} changes made; {} lost",
            e.final_files.len(),
            deleted,
            e.writes.len(),
            lost.len()
        ),
        details,
    )
}

/// The line that heads the `count` changes lost in `fault`'s window (or in none), saying whom
/// to blame.
fn loss_head(fault: Option<&Injected>, count: usize) -> String {
    match fault {
        Some(f) => {
            let why = if f.kind.server_gone() {
                "the server was down: no reconciliation on start (issue 8)?"
            } else {
                "ward kept running: a ward bug (\"nothing lost while running\")"
            };
            format!(
                "{} at +{:.1}s (window {:.2}s), {why}: {count} lost",
                f.label,
                f.at_s,
                (f.end_ms - f.start_ms) as f64 / 1000.0,
            )
        }
        None => format!("outside every fault window (a ward bug): {count} lost"),
    }
}

/// Every injected death reported, with the expected cause.
fn deaths_reported(
    e: &Evidence<'_>,
    expected: &[ExpectedDeath],
    outcomes: &[DeathOutcome],
) -> Line {
    let mut details = Vec::new();
    let mut ok = 0;
    for (x, o) in expected.iter().zip(outcomes) {
        match o {
            DeathOutcome::Reported(_) => ok += 1,
            DeathOutcome::Missing => details.push(format!(
                "{}: no report names {}{} (expected {})",
                x.fault,
                e.short(&x.role_contains),
                x.pid.map(|p| format!(" pid {p}")).unwrap_or_default(),
                x.causes.join(" or ")
            )),
            DeathOutcome::WrongCause(found) => details.push(format!(
                "{}: reported as {} (expected {})",
                x.fault,
                found.join(", "),
                x.causes.join(" or ")
            )),
        }
    }
    let by_cause = {
        let mut m: BTreeMap<&str, usize> = BTreeMap::new();
        for r in &e.reports.list {
            *m.entry(r.cause.as_str()).or_default() += 1;
        }
        m.iter()
            .map(|(c, n)| format!("{n} {c}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    Line::new(
        "every injected death reported",
        ok == expected.len(),
        format!(
            "{ok}/{} with the expected cause; {} reports: {by_cause}",
            expected.len(),
            e.reports.list.len()
        ),
        details,
    )
}

/// No crash report the harness did not cause (`unexplained`), and none unreadable.
fn no_unexplained_death(e: &Evidence<'_>, unexplained: &[Report]) -> Line {
    Line::new(
        "no unexplained death",
        unexplained.is_empty() && e.reports.unreadable.is_empty(),
        format!(
            "{} report(s) not caused by a fault",
            unexplained.len() + e.reports.unreadable.len()
        ),
        unexplained
            .iter()
            .map(|r| {
                format!(
                    "{}: {} pid {} died: {}",
                    r.file,
                    e.short(&r.role),
                    r.pid,
                    r.cause
                )
            })
            .chain(
                e.reports
                    .unreadable
                    .iter()
                    .map(|f| format!("{f}: no pid or role")),
            )
            .collect(),
    )
}

/// Faults went in as planned, and ward did right by each at once.
fn faults_survived(e: &Evidence<'_>) -> Line {
    let mut details: Vec<String> = e
        .injected
        .iter()
        .flat_map(|f| f.problems.iter().map(move |p| format!("{}: {p}", f.label)))
        .collect();
    let kinds: HashSet<FaultKind> = e.injected.iter().map(|f| f.kind).collect();
    let missing: Vec<&str> = e
        .opts
        .faults
        .iter()
        .filter(|k| !kinds.contains(k))
        .map(|k| k.name())
        .collect();
    let overflows = e.ward.log_lines_with(faults::OVERFLOWED);
    let stops = e.counts.get("stop-server").copied().unwrap_or(0);
    if stops > 0 && overflows == 0 {
        details.push(format!(
            "stop-server: {stops} SIGSTOP(s), but the kernel's event queue never overflowed: \
             the fault did not test the overflow path"
        ));
    }
    if !missing.is_empty() {
        details.push(format!(
            "never injected (run too short or interrupted): {}",
            missing.join(", ")
        ));
    }
    Line::new(
        "faults injected and survived",
        details.is_empty(),
        format!(
            "{} injected ({} kinds of {} asked for); kernel queue overflows logged: {overflows}",
            e.injected.len(),
            kinds.len(),
            e.opts.faults.len()
        ),
        details,
    )
}

/// The memory of `role` (`keeper` or `server`): within its bound in a quick run, without
/// sustained growth in longer ones.
fn rss(e: &Evidence<'_>, role: &str) -> Line {
    let samples = if role == "keeper" {
        &e.samples.keeper
    } else {
        &e.samples.server
    };
    let samples = lock(samples).clone();
    let warmup = if e.opts.quick { 5.0 } else { 30.0 };
    match check::rss_figures(&samples, warmup) {
        // Half a minute of one server's life, with the tree still growing and the manifest's
        // cache filling, cannot tell a leak from a warm-up (some seeds grow that way by several
        // MiB): a quick run checks the bound, longer runs the slope.
        Some(r) if e.opts.quick => rss_bounded(role, &r),
        Some(r) => rss_no_growth(role, &r, samples.len()),
        None => Line::new(
            &format!("{role} RSS: no sustained growth"),
            false,
            "no sample".into(),
            Vec::new(),
        ),
    }
}

/// A quick run's memory line: the peak within the role's bound.
fn rss_bounded(role: &str, r: &check::RssFigures) -> Line {
    let cap_mib = if role == "keeper" {
        QUICK_KEEPER_CAP_MIB
    } else {
        QUICK_SERVER_CAP_MIB
    };
    let peak_mib = r.peak_kib as f64 / 1024.0;
    let within = peak_mib <= cap_mib;
    let sign = if within { '≤' } else { '>' };
    Line::new(
        &format!("{role} RSS: bounded (quick run)"),
        within,
        format!(
            "peak {peak_mib:.1} MiB {sign} {cap_mib} MiB; slope {:+.2} MiB/min over {:.0} s, judged only in runs of minutes",
            r.slope_kib_per_min / 1024.0,
            r.judged_s
        ),
        vec![format!("see rss.svg; the {role}'s memory passed its bound")],
    )
}

/// A longer run's memory line: no sustained growth over the longest life of one pid.
fn rss_no_growth(role: &str, r: &check::RssFigures, samples: usize) -> Line {
    let judged = if r.judged_s >= check::MIN_JUDGED_S {
        format!(
            "slope {:+.2} MiB/min, growth {:+.1} MiB over {:.0} s of one pid",
            r.slope_kib_per_min / 1024.0,
            r.growth_kib as f64 / 1024.0,
            r.judged_s
        )
    } else {
        format!(
            "growth not judged: longest life of one pid {:.0} s",
            r.judged_s
        )
    };
    Line::new(
        &format!("{role} RSS: no sustained growth"),
        !r.sustained && r.judged_s >= check::MIN_JUDGED_S,
        format!(
            "peak {:.1} MiB, {judged} ({samples} samples)",
            r.peak_kib as f64 / 1024.0,
        ),
        vec![format!(
            "see rss.svg; the {role}'s memory rose steadily or could not be judged"
        )],
    )
}

/// Latency from a write to its job's start: p50 of single changes within a second.
fn latency(e: &Evidence<'_>) -> Line {
    let lat = check::latencies(e.writes, &e.ledger.entries);
    let mut everything: Vec<u64> = lat.iter().map(|(_, ms)| *ms).collect();
    everything.sort_unstable();
    let mut single: Vec<u64> = lat
        .iter()
        .filter(|(w, _)| matches!(*w, "steady" | "edit" | "churn"))
        .map(|(_, ms)| *ms)
        .collect();
    single.sort_unstable();
    let pct =
        |v: &[u64], q| check::percentile(v, q).map_or("-".to_owned(), |ms| format!("{ms} ms"));
    let p50 = check::percentile(&single, 0.5);
    Line::new(
        "latency write→job start: p50 ≤ 1 s",
        p50.is_some_and(|ms| ms <= 1000),
        format!(
            "single changes p50 {}, p99 {} (n={}); all p50 {}, p99 {} (n={})",
            pct(&single, 0.5),
            pct(&single, 0.99),
            single.len(),
            pct(&everything, 0.5),
            pct(&everything, 0.99),
            everything.len()
        ),
        vec!["single changes: the steady, editor and churn workloads; all: bursts and fault files too".into()],
    )
}

/// Throughput: the burst drains at 50 jobs a second or more.
fn throughput(e: &Evidence<'_>) -> Line {
    let done = e
        .ledger
        .entries
        .iter()
        .filter(|x| x.phase == Phase::Done)
        .count();
    let (burst_ok, burst_text) = match e.burst.map(|b| burst_drain(e, b)) {
        Some((n, seen, secs)) => {
            let rate = seen as f64 / secs.max(0.001);
            (
                seen == n && rate >= 50.0,
                format!("burst of {n}: {seen} processed in {secs:.1} s ({rate:.0}/s)"),
            )
        }
        None => (false, "no burst ran".into()),
    };
    Line::new(
        "throughput: the burst drains at ≥ 50 jobs/s",
        burst_ok,
        format!(
            "{done} jobs done in {:.0} s ({:.1}/s); {burst_text}",
            e.run_s,
            done as f64 / e.run_s.max(1.0)
        ),
        vec![burst_text.clone()],
    )
}

/// The burst's files, how many of them jobs processed, and the seconds from its first write to
/// the last of those jobs (or to its last write).
fn burst_drain(e: &Evidence<'_>, b: &Burst) -> (usize, usize, f64) {
    let want: HashSet<String> = b
        .files
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let mut seen = HashSet::new();
    let mut last = b.written_ms.1;
    for x in e.ledger.entries.iter().filter(|x| x.phase == Phase::Done) {
        if want.contains(&x.path) && seen.insert(x.path.as_str()) {
            last = last.max(x.t_ms);
        }
    }
    let secs = (last.saturating_sub(b.written_ms.0)) as f64 / 1000.0;
    (b.files.len(), seen.len(), secs)
}

/// The keeper restarted the server once per server kill, no more.
fn restarts(e: &Evidence<'_>) -> Line {
    let restarts = e.restarts.counted;
    let expected = e.restarts.expected;
    Line::new(
        "restarts: one per server kill",
        restarts == expected,
        format!("{restarts} server restart(s) for {expected} server kill(s)"),
        vec![format!(
            "the keeper restarted the server {restarts} time(s); the harness killed it {expected} time(s)"
        )],
    )
}

/// ward went idle once the workloads stopped.
fn settled(e: &Evidence<'_>) -> Line {
    let final_queue = e
        .status
        .map(|s| s["queue"].to_string())
        .unwrap_or_else(|| "no status".into());
    Line::new(
        "settled after the run",
        e.settled,
        format!(
            "{} in {:.1} s; peak queued seen {}, status unanswered {} time(s)",
            if e.settled { "idle" } else { "still busy" },
            e.settle_s,
            e.samples.peak_queued.load(Ordering::Relaxed),
            e.samples.status_failures.load(Ordering::Relaxed)
        ),
        std::iter::once(format!("queue at the end: {final_queue}"))
            .chain(
                e.busy
                    .filter(|_| !e.settled)
                    .map(|b| format!("busy last with: {b}")),
            )
            .collect(),
    )
}

/// `ward stop` succeeded and left no process of the run behind.
fn no_orphan(e: &Evidence<'_>) -> Line {
    let stop_ok = matches!(e.stopped, Ok(r) if r.code == Some(0));
    let stop_text = match e.stopped {
        Ok(r) => format!(
            "ward stop: exit {:?}{} {}",
            r.code,
            if r.timed_out { " (timed out)" } else { "" },
            r.stderr.trim()
        ),
        Err(err) => format!("ward stop: {err:#}"),
    };
    Line::new(
        "no orphan process after stop",
        e.left.is_empty() && stop_ok,
        format!("{} left; {stop_text}", e.left.len()),
        e.left
            .iter()
            .map(|(p, c)| format!("pid {p}: {c}"))
            .chain([stop_text.clone()])
            .collect(),
    )
}

/// `ward stop` removed the pidfile and the socket.
fn no_stale_pidfile(e: &Evidence<'_>) -> Line {
    Line::new(
        "no stale pidfile",
        e.stale.is_empty(),
        if e.stale.is_empty() {
            "ward.pid and ward.sock removed".into()
        } else {
            format!("left: {}", e.stale.join(", "))
        },
        Vec::new(),
    )
}

/// The harness's own problems (a workload's error, a malformed ledger entry), a failing line
/// only when there are some.
fn harness(e: &Evidence<'_>) -> Option<Line> {
    if e.writer_errors.is_empty() && e.ledger.malformed == 0 {
        return None;
    }
    let mut details = e.writer_errors.to_vec();
    if e.ledger.malformed > 0 {
        details.push(format!("{} malformed ledger entries", e.ledger.malformed));
    }
    Some(Line::new(
        "harness: workloads ran cleanly",
        false,
        format!("{} problem(s)", details.len()),
        details,
    ))
}

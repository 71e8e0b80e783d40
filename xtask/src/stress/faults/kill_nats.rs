//! The `kill-nats` fault: the NATS server of the `nats` trigger SIGKILLed while ward publishes a
//! burst of files there, more files written while it is gone, then the server restarted on its
//! file storage. ward keeps what is owed and publishes it once the server is back. Then the
//! server stopped (SIGSTOP) while more files are written, and continued (SIGCONT): its
//! connections stay up and it answers nothing meanwhile, as a server that lost a consumer's way
//! to its clients does (nats-server 2.9 was seen to), so `ward work` finds its pulls unanswered
//! and makes its consumer anew. The verdict: every file's version is run by `ward work` (into
//! the ledger), and `ward work` ends cleanly at the run's end. ward's own jobs elsewhere in the
//! tree are judged by the common lines.

use std::time::{Duration, Instant};

use super::super::check::Line;
use super::super::config::NATS_DIR;
use super::super::daemon::wait_until;
use super::super::nats::NatsSide;
use super::super::scene::{Scene, interrupted};
use super::super::workload::now_ms;
use super::{Injected, not_injected};

/// How long the files have, after the restart, to be run by `ward work`: a publish the kill cut
/// short fails at ward-nats' publish timeout (10 s), then waits for its retry; a job whose
/// worker was killed comes again after the ack wait (5 s).
pub(super) const PROCESSED_WITHIN: Duration = Duration::from_secs(60);

/// How long the server stays stopped: long enough for `ward work` to find two pulls in a row
/// unanswered (each at most a second and ward-nats' four seconds of grace), which has its
/// consumer made anew.
const STOPPED_FOR: Duration = Duration::from_secs(12);

/// What one kill-nats fault found.
#[derive(Debug)]
pub struct Record {
    label: String,
    files: usize,
    down_s: f64,
    /// Seconds from the restart until every file was run (`None`: not all were).
    caught_up_s: Option<f64>,
    stopped_s: f64,
    /// Seconds from SIGCONT until every file written while stopped was run.
    continued_caught_up_s: Option<f64>,
    problems: Vec<String>,
}

/// Injects kill-nats number `n`.
pub fn inject(scene: &mut Scene<'_>, f: &mut Injected, n: usize) -> Record {
    let half = if scene.opts.quick { 150 } else { 1000 };
    let mut record = Record {
        label: f.label.clone(),
        files: 3 * half,
        down_s: 0.0,
        caught_up_s: None,
        stopped_s: 0.0,
        continued_caught_up_s: None,
        problems: Vec::new(),
    };
    // Taken for the fault, given back at its end.
    let Some(nats) = scene.nats.take() else {
        record.problems.push("the run has no NATS server".into());
        return record;
    };
    let dir = scene.tree.join(format!("{NATS_DIR}/kill-{n}"));
    f.start_ms = now_ms();
    let (mut files, errors) = scene.write_files(&dir, "before", &["txt"], half, "nats");
    record.problems.extend(errors);
    // Mid-burst: some published and run, some in flight, some still owed.
    nats.kill();
    let down = Instant::now();
    let (during, errors) = scene.write_files(&dir, "during", &["txt"], half, "nats");
    record.problems.extend(errors);
    files.extend(during);
    // Gone long enough for ward's publishes to fail and owe, not only to wait (cut short only
    // by an interrupted run).
    wait_until(Duration::from_millis(1500), interrupted);
    let restarted = nats.restart();
    record.down_s = down.elapsed().as_secs_f64();
    if let Err(e) = restarted {
        record
            .problems
            .push(format!("restarting nats-server: {e:#}"));
    }
    let back = Instant::now();
    match caught_up(scene, &files, back, "the restart") {
        Ok(s) => record.caught_up_s = Some(s),
        Err(problem) => record.problems.push(problem),
    }
    match stopped(scene, nats, &dir, half, &mut record) {
        Ok(s) => record.continued_caught_up_s = Some(s),
        Err(problem) => record.problems.push(problem),
    }
    f.end_ms = now_ms();
    f.note = format!(
        "SIGKILL nats-server mid-burst of {} files, restarted {:.1} s later on its storage; \
         then SIGSTOP for {:.1} s while {half} more were written",
        2 * half,
        record.down_s,
        record.stopped_s
    );
    scene.nats = Some(nats);
    scene.remove_later(dir);
    record
}

/// Stops the server, writes `half` files while it is stopped, continues it after
/// [`STOPPED_FOR`]: seconds from SIGCONT until `ward work` ran them all, or what went wrong.
fn stopped(
    scene: &mut Scene<'_>,
    nats: &NatsSide,
    dir: &std::path::Path,
    half: usize,
    record: &mut Record,
) -> Result<f64, String> {
    nats.signal(libc::SIGSTOP).map_err(|e| format!("{e:#}"))?;
    let stopped = Instant::now();
    let (files, errors) = scene.write_files(dir, "stopped", &["txt"], half, "nats");
    record.problems.extend(errors);
    wait_until(STOPPED_FOR.saturating_sub(stopped.elapsed()), interrupted);
    let continued = nats.signal(libc::SIGCONT);
    record.stopped_s = stopped.elapsed().as_secs_f64();
    continued.map_err(|e| format!("{e:#}"))?;
    caught_up(scene, &files, Instant::now(), "SIGCONT")
}

/// Seconds from `since` until `ward work` ran every one of `files`; what is missing after
/// [`PROCESSED_WITHIN`] of `since_what` otherwise.
pub(super) fn caught_up(
    scene: &mut Scene<'_>,
    files: &[(std::path::PathBuf, u64)],
    since: Instant,
    since_what: &str,
) -> Result<f64, String> {
    let missing = scene.ledger.await_handled(files, PROCESSED_WITHIN);
    if missing.is_empty() {
        return Ok(since.elapsed().as_secs_f64());
    }
    let sample: Vec<String> = missing
        .iter()
        .take(5)
        .map(|p| p.display().to_string())
        .collect();
    Err(format!(
        "{} of {} file(s) not run by ward work within {} s of {since_what}: {}",
        missing.len(),
        files.len(),
        PROCESSED_WITHIN.as_secs(),
        sample.join(", ")
    ))
}

/// The verdict line: every file of every kill-nats run by `ward work`, which ended cleanly.
pub fn line(records: &[Record], work_end: Option<&str>) -> Line {
    let check = "a killed or stopped NATS server loses no published job";
    if records.is_empty() {
        return not_injected(check);
    }
    let mut details: Vec<String> = records
        .iter()
        .flat_map(|r| r.problems.iter().map(move |p| format!("{}: {p}", r.label)))
        .collect();
    details.extend(work_end.map(str::to_owned));
    let slowest = records
        .iter()
        .flat_map(|r| [r.caught_up_s, r.continued_caught_up_s])
        .flatten()
        .fold(0.0, f64::max);
    Line::new(
        check,
        details.is_empty(),
        format!(
            "{} file(s) around {} kill(s) of nats-server, each down about {:.1} s, and as many stops of {:.1} s; all run by ward work at most {slowest:.1} s after its restart or SIGCONT",
            records.iter().map(|r| r.files).sum::<usize>(),
            records.len(),
            records.iter().map(|r| r.down_s).fold(0.0, f64::max),
            records.iter().map(|r| r.stopped_s).fold(0.0, f64::max)
        ),
        details,
    )
}

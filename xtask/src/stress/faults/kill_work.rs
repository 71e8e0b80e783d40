//! The `kill-work` fault: the run's `ward work` SIGKILLed with jobs in hand, in the middle of a
//! burst of files for the `nats` trigger, and started again. The jobs it held die with it
//! (their parent-death signal), are delivered again after the consumer's ack wait and run;
//! its verdict: every file's version is run by `ward work`, and no job outlives its worker.

use std::time::{Duration, Instant};

use super::super::check::Line;
use super::super::config::NATS_DIR;
use super::super::daemon::wait_until;
use super::super::ledger::Directive;
use super::super::scene::{Scene, interrupted};
use super::super::workload::now_ms;
use super::{Injected, not_injected};

/// How long the kill waits for `ward work` to hold a job: the burst's first publishes.
const HOLD_WITHIN: Duration = Duration::from_secs(15);
/// How long each job of the burst before the kill sleeps: ward work runs two at once, so the
/// burst keeps it busy for about `half × HELD_MS / 2` (2.5 s in a quick run).
const HELD_MS: u64 = 50;

/// What one kill-work fault found.
#[derive(Debug)]
pub struct Record {
    label: String,
    files: usize,
    /// Jobs `ward work` ran (its children) when it was killed.
    in_hand: usize,
    /// Of those, the ones whose path could be read (exec-ed), each required to run again.
    redelivered: usize,
    /// Seconds from the restart until every file was run (`None`: not all were).
    caught_up_s: Option<f64>,
    problems: Vec<String>,
}

/// `at` in the ledger's clock: wall milliseconds.
fn now_ms_at(at: Instant) -> u64 {
    now_ms().saturating_sub(at.elapsed().as_millis() as u64)
}

/// The path of the job process `pid` (its `WARD_PATH`), if it has one.
fn job_path(pid: u32) -> Option<String> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    environ
        .split(|&b| b == 0)
        .find_map(|var| var.strip_prefix(b"WARD_PATH="))
        .map(|path| String::from_utf8_lossy(path).into_owned())
}

/// `pid`'s live children.
fn children(pid: u32) -> Vec<u32> {
    ward_sys::processes()
        .into_iter()
        .filter(|(_, stat)| stat.ppid == pid && !stat.is_dead())
        .map(|(p, _)| p)
        .collect()
}

/// Injects kill-work number `n`.
pub fn inject(scene: &mut Scene<'_>, f: &mut Injected, n: usize) -> Record {
    let half = if scene.opts.quick { 100 } else { 500 };
    let mut record = Record {
        label: f.label.clone(),
        files: 2 * half,
        in_hand: 0,
        redelivered: 0,
        caught_up_s: None,
        problems: Vec::new(),
    };
    let Some(nats) = scene.nats.take() else {
        record.problems.push("the run has no NATS server".into());
        return record;
    };
    let dir = scene.tree.join(format!("{NATS_DIR}/work-kill-{n}"));
    f.start_ms = now_ms();
    // Each job of the burst takes a while: a job of the stress worker alone ends within a
    // millisecond or two, and the kill then often found ward work between jobs.
    let (mut files, errors) = scene.write_files_with(
        &dir,
        "before",
        &["txt"],
        half,
        "nats",
        Directive::Sleep(HELD_MS),
    );
    record.problems.extend(errors);
    let pid = nats.work_pid();
    let mut held = Vec::new();
    if let Some(pid) = pid {
        wait_until(HOLD_WITHIN, || {
            held = children(pid);
            !held.is_empty() || interrupted()
        });
    }
    record.in_hand = held.len();
    // The paths of the jobs in hand, read before the kill: a job that has not exec-ed yet has
    // ward work's environment, without one.
    let held_paths: Vec<String> = held.iter().filter_map(|p| job_path(*p)).collect();
    if held.is_empty() {
        record.problems.push(format!(
            "ward work held no job within {} s of the burst: killed idle",
            HOLD_WITHIN.as_secs()
        ));
    }
    let restarted = nats.restart_work();
    if let Err(e) = restarted {
        record.problems.push(format!("restarting ward work: {e:#}"));
    }
    let back = Instant::now();
    // Its jobs die with it: a job left running would run on beside its redelivery.
    let mut left = Vec::new();
    let gone = wait_until(Duration::from_secs(5), || {
        left = held
            .iter()
            .copied()
            .filter(|p| ward_sys::is_alive(*p))
            .collect();
        left.is_empty()
    });
    if !gone {
        record.problems.push(format!(
            "job(s) {left:?} outlived their killed ward work by 5 s"
        ));
    }
    let (after, errors) = scene.write_files(&dir, "after", &["txt"], half, "nats");
    record.problems.extend(errors);
    files.extend(after);
    match super::kill_nats::caught_up(scene, &files, back, "its restart") {
        Ok(s) => record.caught_up_s = Some(s),
        Err(problem) => record.problems.push(problem),
    }
    // Only a run after the kill, by another process, shows that a held job's delivery came
    // again (a job may have run already, at an earlier version or before it was killed).
    let killed_ms = now_ms_at(back);
    record.redelivered = held_paths.len();
    for path in held_paths {
        let ran_again = wait_until(super::kill_nats::PROCESSED_WITHIN, || {
            scene.ledger.refresh();
            scene.ledger.entries.iter().any(|e| {
                e.path == path && e.handled() && e.t_ms >= killed_ms && !held.contains(&e.pid)
            }) || interrupted()
        });
        if !ran_again {
            record.problems.push(format!(
                "{path}, in hand at the kill, did not run again within {} s",
                super::kill_nats::PROCESSED_WITHIN.as_secs()
            ));
        }
    }
    f.end_ms = now_ms();
    f.note = format!(
        "SIGKILL ward work with {} job(s) in hand mid-burst of {} files, started again",
        record.in_hand,
        files.len()
    );
    scene.nats = Some(nats);
    scene.remove_later(dir);
    record
}

/// The verdict line: every file of every kill-work run, and no job left behind its worker.
pub fn line(records: &[Record]) -> Line {
    let check = "a killed ward work loses no job";
    if records.is_empty() {
        return not_injected(check);
    }
    let details: Vec<String> = records
        .iter()
        .flat_map(|r| r.problems.iter().map(move |p| format!("{}: {p}", r.label)))
        .collect();
    let slowest = records
        .iter()
        .filter_map(|r| r.caught_up_s)
        .fold(0.0, f64::max);
    Line::new(
        check,
        details.is_empty(),
        format!(
            "{} file(s) around {} kill(s) of ward work holding {} job(s), {} of them seen to run again after it; all run at most {slowest:.1} s after its restart",
            records.iter().map(|r| r.files).sum::<usize>(),
            records.len(),
            records.iter().map(|r| r.in_hand).sum::<usize>(),
            records.iter().map(|r| r.redelivered).sum::<usize>(),
        ),
        details,
    )
}

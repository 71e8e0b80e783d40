//! The `orphans` fault: hundreds of jobs that each leave a child behind (the orphans' trigger in
//! `config.rs`: `sleep & exec` the stress worker). The children are re-parented to the keeper,
//! ward's subreaper. Its verdict: once they have ended, the zombies under the keeper stay within
//! [`ZOMBIE_BOUND`]: the keeper reaps what it adopts.

use std::time::{Duration, Instant};

use super::super::check::Line;
use super::super::daemon::{self, wait_until};
use super::super::scene::{Scene, interrupted};
use super::super::workload::now_ms;
use super::{Injected, not_injected};

/// Zombies the keeper may have a few seconds after the jobs ended.
pub const ZOMBIE_BOUND: usize = 20;
/// How long after the jobs ended their children have to end and be reaped.
const REAP_WITHIN: Duration = Duration::from_secs(5);

/// What one orphans fault found.
#[derive(Debug)]
pub struct Record {
    label: String,
    jobs: usize,
    /// Zombies under the keeper once the children had ended (or the wait ran out).
    zombies: Option<usize>,
    peak: usize,
    problems: Vec<String>,
}

/// Live `sleep` processes below `pid`: the children the jobs left, not yet ended.
fn sleepers_below(pid: u32) -> usize {
    daemon::descendants(pid)
        .into_iter()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "sleep")
        })
        .count()
}

/// Injects orphans fault number `n`.
pub fn inject(scene: &mut Scene<'_>, f: &mut Injected, n: usize) -> Record {
    let count = if scene.opts.quick { 200 } else { 400 };
    let mut record = Record {
        label: f.label.clone(),
        jobs: count,
        zombies: None,
        peak: 0,
        problems: Vec::new(),
    };
    let Some(keeper) = scene.ward.keeper_pid() else {
        record.problems.push("no keeper pid".into());
        return record;
    };
    let before = daemon::zombies_of(keeper);
    let dir = scene.tree.join(format!("orphans-{n}"));
    f.start_ms = now_ms();
    let (files, errors) = scene.write_files(&dir, "f", &["txt"], count, "orphans");
    record.problems.extend(errors);
    let missing = scene.ledger.await_handled(&files, Duration::from_secs(60));
    if !missing.is_empty() {
        record.problems.push(format!(
            "{} of {count} jobs not done within 60 s",
            missing.len()
        ));
    }
    let ended = Instant::now();
    let mut zombies = 0;
    wait_until(REAP_WITHIN, || {
        zombies = daemon::zombies_of(keeper);
        record.peak = record.peak.max(zombies);
        interrupted() || (sleepers_below(keeper) == 0 && zombies <= ZOMBIE_BOUND)
    });
    record.zombies = Some(zombies);
    f.end_ms = now_ms();
    f.note = format!(
        "{count} jobs each left a child behind; {:.1} s after they ended the keeper (pid {keeper}) had {zombies} zombie(s) (peak {}, {before} before)",
        ended.elapsed().as_secs_f64(),
        record.peak
    );
    scene.remove_later(dir);
    record
}

/// The verdict line of every orphans fault injected.
pub fn line(records: &[Record]) -> Line {
    let check = "orphans: zombies under the keeper bounded";
    if records.is_empty() {
        return not_injected(check);
    }
    let mut details = Vec::new();
    for r in records {
        match r.zombies {
            Some(z) if z > ZOMBIE_BOUND => details.push(format!(
                "{}: {z} zombie(s) under the keeper {} s after {} jobs ended (bound {ZOMBIE_BOUND}): it does not reap what it adopts",
                r.label,
                REAP_WITHIN.as_secs(),
                r.jobs
            )),
            Some(_) => {}
            None => details.push(format!("{}: not measured", r.label)),
        }
        details.extend(r.problems.iter().map(|p| format!("{}: {p}", r.label)));
    }
    let worst = records.iter().filter_map(|r| r.zombies).max().unwrap_or(0);
    let peak = records.iter().map(|r| r.peak).max().unwrap_or(0);
    Line::new(
        check,
        details.is_empty(),
        format!(
            "{} job(s) left children; at most {worst} zombie(s) after (bound {ZOMBIE_BOUND}), peak {peak}",
            records.iter().map(|r| r.jobs).sum::<usize>()
        ),
        details,
    )
}

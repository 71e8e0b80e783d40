//! The `full-queue` fault: every job thread held busy, then four times the queue's capacity of
//! files written. Its window lasts until the queue has drained; judged by the verdict's common
//! lines (`verdict.rs`).

use std::time::Duration;

use super::super::config::{QUEUE_CAPACITY, WORKERS};
use super::super::ledger::Directive;
use super::super::scene::Scene;
use super::super::workload::{self, now_ms};
use super::{BLOCKER_MS, Injected};

/// Injects full-queue number `n`.
pub fn inject(scene: &mut Scene<'_>, f: &mut Injected, n: usize) {
    let server = scene.ward.server_pid();
    for k in 0..WORKERS {
        let path = scene.tree.join(format!("full-{n}/blocker-{k}.txt"));
        scene.write_directive(&path, Directive::Sleep(BLOCKER_MS), n);
    }
    let count = QUEUE_CAPACITY * 4;
    if let Err(e) = workload::burst(
        scene.log,
        &scene.tree.join(format!("full-{n}/files")),
        count,
        "full-queue",
    ) {
        f.problems.push(format!("writing the files: {e}"));
    }
    // The window lasts until the queue has drained: until then intake is blocked.
    let drained = scene.ward.await_idle(Duration::from_secs(60));
    f.end_ms = now_ms();
    if !drained {
        f.problems
            .push("the queue had not drained 60 s later".into());
    }
    if scene.ward.server_pid() != server {
        f.problems
            .push("the server changed while its queue was full".into());
    }
    f.note = format!(
        "{WORKERS} job threads busy {BLOCKER_MS} ms, then {count} files for a queue of {QUEUE_CAPACITY}; drained after {:.1} s",
        (f.end_ms - f.start_ms) as f64 / 1000.0
    );
    let dir = scene.tree.join(format!("full-{n}"));
    scene.remove_later(dir);
}

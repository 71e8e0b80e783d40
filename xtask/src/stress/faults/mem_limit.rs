//! The `mem-limit` fault: a job that grows its worker past the trigger's `max_rss_mb`, which ward
//! must then recycle. Judged by the verdict's common lines (`verdict.rs`): a worker still alive
//! is a problem of the fault.

use std::time::Duration;

use super::super::config::MAX_RSS_MB;
use super::super::daemon::{self, wait_until};
use super::super::ledger::{Directive, Phase};
use super::super::scene::Scene;
use super::super::workload::now_ms;
use super::Injected;

/// How far a `grow` job passes the trigger's worker memory limit (`max_rss_mb`).
const GROW_MB: u64 = 192;

/// Injects mem-limit number `n`.
pub fn inject(scene: &mut Scene<'_>, f: &mut Injected, n: usize) {
    let path = scene.fault_file("mem-limit", n, false);
    let Some(hash) = scene.write_directive(&path, Directive::Grow(GROW_MB), n) else {
        f.problems.push("could not write its file".into());
        return;
    };
    let Some(done) = scene
        .ledger
        .await_entry(&path, hash, Phase::Done, Duration::from_secs(20))
    else {
        f.problems
            .push(format!("the {GROW_MB} MiB job did not finish within 20 s"));
        return;
    };
    let gone = wait_until(Duration::from_secs(10), || !daemon::is_alive(done.pid));
    f.end_ms = now_ms();
    f.note = format!(
        "worker pid {} grew by {GROW_MB} MiB past max_rss_mb = {MAX_RSS_MB}: {}",
        done.pid,
        if gone {
            "recycled"
        } else {
            "still running 10 s later"
        }
    );
    if !gone {
        f.problems.push(f.note.clone());
    }
}

//! The `stop-server` fault: the server SIGSTOPped for seconds while thousands of files are written
//! into watched directories, so that the kernel's event queue overflows, then SIGCONT. Its window
//! lasts until ward has caught up; it is judged by the verdict's common lines (`verdict.rs`),
//! which also check that the overflow happened.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::super::daemon::{signal, wait_until};
use super::super::ledger::Phase;
use super::super::scene::Scene;
use super::super::workload::{self, now_ms};
use super::Injected;

/// What ward logs when the kernel's event queue overflowed.
pub const OVERFLOWED: &str = "the kernel's event queue overflowed";

/// Injects stop-server number `n`.
pub fn inject(scene: &mut Scene<'_>, f: &mut Injected, n: usize) {
    let Some(server) = scene.ward.server_pid() else {
        f.problems.push("no server pid in keeper.json".into());
        return;
    };
    let hold = if scene.opts.quick { 3.0 } else { 8.0 };
    // Past the kernel's queue (`max_queued_events`, 16384 by default). inotify queues about two
    // events a file here; fanotify merges a file's creation and write into one, so the files
    // alone must pass its queue.
    let queue = queue_limit();
    let count: usize = if scene.opts.quick {
        queue + queue / 8
    } else {
        30_000.max(queue * 2)
    };
    let dir = scene.tree.join(format!("overflow-{n}"));
    watch_directories(scene, f, &dir, count);
    let overflows = scene.ward.log_lines_with(OVERFLOWED);
    f.start_ms = now_ms();
    signal(server, libc::SIGSTOP);
    let began = Instant::now();
    if let Err(e) = workload::burst(scene.log, &dir, count, "overflow") {
        f.problems.push(format!("writing the overflow files: {e}"));
    }
    while began.elapsed().as_secs_f64() < hold {
        std::thread::sleep(Duration::from_millis(50));
    }
    signal(server, libc::SIGCONT);
    let held = began.elapsed().as_secs_f64();
    await_catch_up(scene, f, overflows);
    f.end_ms = now_ms();
    if scene.ward.server_pid() != Some(server) {
        f.problems.push(format!(
            "server pid {server} did not survive SIGSTOP/SIGCONT"
        ));
    }
    f.note = format!(
        "SIGSTOP server pid {server} for {held:.1} s while {count} files were written; caught up {:.1} s after SIGCONT",
        began.elapsed().as_secs_f64() - held
    );
    scene.remove_later(dir);
}

/// Creates the directories the `count` files will go into (500 each), with a seed file in each,
/// and waits until ward has processed the seeds. A directory created while the server is stopped
/// has no watch yet, so files written into it would raise no events.
fn watch_directories(scene: &mut Scene<'_>, f: &mut Injected, dir: &Path, count: usize) {
    let mut seeds: Vec<(PathBuf, u64)> = Vec::new();
    for d in 0..count.div_ceil(500) {
        let seed = dir.join(format!("d{d:03}/seed.txt"));
        let content = format!("seed {}\n", scene.log.seq());
        match scene.log.write(&seed, content.as_bytes(), "overflow") {
            Ok(hash) => seeds.push((seed, hash)),
            Err(e) => f.problems.push(format!("writing {}: {e}", seed.display())),
        }
    }
    for (seed, hash) in &seeds {
        if scene
            .ledger
            .await_entry(seed, *hash, Phase::Done, Duration::from_secs(20))
            .is_none()
        {
            f.problems
                .push(format!("{} not processed within 20 s", seed.display()));
            break;
        }
    }
}

/// Waits after SIGCONT until ward has logged the overflow (there were `overflows` such lines
/// before) and caught up with it.
fn await_catch_up(scene: &Scene<'_>, f: &mut Injected, overflows: usize) {
    // Until the server has read the overflow, it looks idle: wait for it first, so that "caught
    // up" means its rescan ran, and a fault injected next does not kill it before it could say so.
    if !wait_until(Duration::from_secs(20), || {
        scene.ward.log_lines_with(OVERFLOWED) > overflows
    }) {
        f.problems
            .push("no kernel queue overflow logged within 20 s of SIGCONT".into());
    }
    // The window lasts until ward has caught up (its rescan run, its queue empty): a change lost
    // meanwhile is the fault's.
    if !scene.ward.await_idle(Duration::from_secs(60)) {
        f.problems.push("not caught up 60 s after SIGCONT".into());
    }
}

/// The larger of the kernel's inotify and fanotify event queue lengths (16384 unless set).
fn queue_limit() -> usize {
    [
        "/proc/sys/fs/inotify/max_queued_events",
        "/proc/sys/fs/fanotify/max_queued_events",
    ]
    .iter()
    .filter_map(|p| {
        std::fs::read_to_string(p)
            .ok()?
            .trim()
            .parse::<usize>()
            .ok()
    })
    .max()
    .unwrap_or(16_384)
}

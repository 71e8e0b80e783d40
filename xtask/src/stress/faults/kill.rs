//! The faults that SIGKILL one of ward's processes: `kill-worker` (a worker in the middle of a
//! job), `kill-server` (the keeper must start a new one) and `kill-keeper` (its whole tree goes
//! with it; the harness runs `ward start` again). Each death is expected in a crash report; they
//! are judged by the verdict's common lines (`verdict.rs`), not by a line of their own.

use std::time::Duration;

use super::super::check::ExpectedDeath;
use super::super::daemon::{self, signal, wait_until};
use super::super::ledger::{Directive, Phase};
use super::super::scene::Scene;
use super::super::workload::now_ms;
use super::{BLOCKER_MS, Injected};

/// Injects kill-worker number `n`: a job that holds its worker, killed once it has started.
pub fn worker(scene: &mut Scene<'_>, f: &mut Injected, n: usize) {
    let path = scene.fault_file("kill-worker", n, false);
    let Some(hash) = scene.write_directive(&path, Directive::Sleep(BLOCKER_MS), n) else {
        f.problems.push("could not write its file".into());
        return;
    };
    let Some(entry) = scene
        .ledger
        .await_entry(&path, hash, Phase::Start, Duration::from_secs(20))
    else {
        f.problems.push(format!(
            "no worker started the job on {} within 20 s",
            path.display()
        ));
        return;
    };
    f.start_ms = now_ms();
    if !signal(entry.pid, libc::SIGKILL) {
        f.problems
            .push(format!("worker pid {} was gone before SIGKILL", entry.pid));
    }
    f.end_ms = now_ms();
    f.note = format!("SIGKILL worker pid {} during a job", entry.pid);
    f.expected.push(ExpectedDeath {
        fault: f.label.clone(),
        role_contains: path.to_string_lossy().into_owned(),
        pid: Some(entry.pid),
        causes: f.kind.expected_causes(),
    });
}

/// Injects a kill-server: its window lasts until the keeper's new server is ready.
pub fn server(scene: &mut Scene<'_>, f: &mut Injected) {
    let Some(server) = scene.ward.server_pid() else {
        f.problems.push("no server pid in keeper.json".into());
        return;
    };
    f.start_ms = now_ms();
    signal(server, libc::SIGKILL);
    scene.restarts.expected += 1;
    let back = wait_until(Duration::from_secs(30), || {
        scene.ward.server_pid().is_some_and(|p| p != server)
    });
    f.end_ms = now_ms();
    if !back {
        f.problems.push("no new server within 30 s".into());
    }
    f.note = format!(
        "SIGKILL server pid {server}; a new one was ready after {:.2} s",
        (f.end_ms - f.start_ms) as f64 / 1000.0
    );
    f.expected.push(ExpectedDeath {
        fault: f.label.clone(),
        role_contains: "server".into(),
        pid: Some(server),
        causes: f.kind.expected_causes(),
    });
}

/// Injects a kill-keeper: its window lasts until `ward start` has brought a new tree up.
pub fn keeper(scene: &mut Scene<'_>, f: &mut Injected) {
    let (Some(keeper), Some(server)) = (scene.ward.keeper_pid(), scene.ward.server_pid()) else {
        f.problems.push("no keeper or server pid".into());
        return;
    };
    let tree = {
        let mut t = daemon::descendants(keeper);
        t.sort_unstable();
        t
    };
    // The keeper counts its restarts of the server, and takes the count with it.
    scene.restarts.counted += scene.ward.restarts();
    f.start_ms = now_ms();
    signal(keeper, libc::SIGKILL);
    let gone = wait_until(Duration::from_secs(10), || {
        !daemon::is_alive(keeper) && tree.iter().all(|p| !daemon::is_alive(*p))
    });
    if !gone {
        let left: Vec<u32> = tree
            .iter()
            .copied()
            .filter(|p| daemon::is_alive(*p))
            .collect();
        f.problems.push(format!(
            "orphans: {left:?} of the killed keeper's tree still alive 10 s later"
        ));
        for p in left {
            signal(p, libc::SIGKILL);
        }
    }
    if let Err(e) = scene.ward.start() {
        f.problems.push(format!("ward start after the kill: {e:#}"));
    }
    f.end_ms = now_ms();
    f.note = format!(
        "SIGKILL keeper pid {keeper} (server {server}, {} process(es) under it); started again after {:.2} s",
        tree.len(),
        (f.end_ms - f.start_ms) as f64 / 1000.0
    );
    f.expected.push(ExpectedDeath {
        fault: f.label.clone(),
        role_contains: "keeper".into(),
        pid: Some(keeper),
        causes: f.kind.expected_causes(),
    });
}

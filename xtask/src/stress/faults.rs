//! The faults `cargo xtask stress` can inject, their names for `--faults`, the seeded schedule
//! that places them (with the bursts) on the run's timeline, and [`inject`], which hands each to
//! its module below. The faults judged by a verdict line of their own keep what they found in
//! [`Findings`] and write that line themselves; the others are judged by the verdict's common
//! lines (`verdict.rs`).

mod chmod;
mod crash;
mod disk_full;
mod full_queue;
mod kill;
mod kill_nats;
mod kill_work;
mod mem_limit;
mod mount;
mod orphans;
mod reload;
mod socket;
mod stop_server;

pub use disk_full::prepare as prepare_state_disk;
pub use stop_server::OVERFLOWED;

use std::collections::BTreeMap;

use super::check::{ExpectedDeath, Line};
use super::ledger::{Directive, Entry};
use super::scene::Scene;
use super::workload::Rng;

/// One kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// SIGKILL a worker in the middle of a job.
    KillWorker,
    /// SIGKILL the server; the keeper restarts it.
    KillServer,
    /// SIGSTOP the server for seconds while files are written, so the kernel's queue overflows.
    StopServer,
    /// A job that dies as the directive says, once through the worker and once through exec.
    Crash(Directive),
    /// A job that grows its worker past the trigger's `max_rss_mb`: ward must recycle it.
    MemLimit,
    /// Every job thread busy and far more files than the queue holds.
    FullQueue,
    /// SIGKILL the keeper (the tree follows it), then `ward start`.
    KillKeeper,
    /// The config's triggers renamed and reordered and the keeper sent SIGHUP, while a full
    /// queue waits: queued jobs keep the trigger that matched them, later ones get the new.
    Reload,
    /// The state directory's filesystem (a tmpfs of its own for the run) filled for seconds
    /// while files change, then freed.
    StateDiskFull,
    /// A tmpfs and a bind mount inside the tree, written into, then unmounted.
    Mount,
    /// A directory made unreadable (mode 000) while files are added under it, then readable
    /// again, in a small ward of its own that runs as a throwaway user when the harness is root.
    Chmod,
    /// Idle and slow clients held on the control socket while `ward status` must answer.
    SocketIdle,
    /// Jobs that leave a child behind: re-parented to the keeper, it must be reaped.
    Orphans,
    /// The NATS server of the `nats` trigger SIGKILLed mid-burst and restarted on its storage:
    /// every file must still be run by `ward work`.
    KillNats,
    /// `ward work` SIGKILLed with jobs in hand mid-burst and started again: its jobs die with
    /// it, are delivered again and run.
    KillWork,
}

/// The code a job told to exit exits with.
pub const EXIT_CODE: i32 = 3;

/// How long a job holds its thread to fill the queue, or a worker for `kill-worker`: well inside
/// the timeout, so that only the faults meant to time out do.
pub const BLOCKER_MS: u64 = 2000;

/// Every fault, in the order `--faults` lists them.
pub const ALL: [FaultKind; 20] = [
    FaultKind::KillWorker,
    FaultKind::KillServer,
    FaultKind::StopServer,
    FaultKind::Crash(Directive::Panic),
    FaultKind::Crash(Directive::Segv),
    FaultKind::Crash(Directive::Abort),
    FaultKind::Crash(Directive::Hog),
    FaultKind::Crash(Directive::Hang),
    FaultKind::Crash(Directive::Exit(EXIT_CODE)),
    FaultKind::MemLimit,
    FaultKind::FullQueue,
    FaultKind::KillKeeper,
    FaultKind::Reload,
    FaultKind::StateDiskFull,
    FaultKind::Mount,
    FaultKind::Chmod,
    FaultKind::SocketIdle,
    FaultKind::Orphans,
    FaultKind::KillNats,
    FaultKind::KillWork,
];

impl FaultKind {
    /// Its name on the command line and in the report.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::KillWorker => "kill-worker",
            FaultKind::KillServer => "kill-server",
            FaultKind::StopServer => "stop-server",
            FaultKind::Crash(Directive::Panic) => "panic",
            FaultKind::Crash(Directive::Segv) => "segv",
            FaultKind::Crash(Directive::Abort) => "abort",
            FaultKind::Crash(Directive::Hog) => "hog",
            FaultKind::Crash(Directive::Hang) => "hang",
            FaultKind::Crash(Directive::Exit(_)) => "exit",
            FaultKind::Crash(_) => "crash",
            FaultKind::MemLimit => "mem-limit",
            FaultKind::FullQueue => "full-queue",
            FaultKind::KillKeeper => "kill-keeper",
            FaultKind::Reload => "reload",
            FaultKind::StateDiskFull => "state-disk-full",
            FaultKind::Mount => "mount",
            FaultKind::Chmod => "chmod",
            FaultKind::SocketIdle => "socket-idle",
            FaultKind::Orphans => "orphans",
            FaultKind::KillNats => "kill-nats",
            FaultKind::KillWork => "kill-work",
        }
    }

    /// Whether it keeps ward from seeing or processing changes for a while, so that a loss
    /// around it is blamed on it: the verdict gives each loss the window it fell into.
    pub fn has_window(self) -> bool {
        matches!(
            self,
            FaultKind::KillServer
                | FaultKind::KillKeeper
                | FaultKind::StopServer
                | FaultKind::FullQueue
                | FaultKind::Reload
                | FaultKind::StateDiskFull
                | FaultKind::Mount
        )
    }

    /// Whether ward's server is gone during its window: what changes then is only seen again if
    /// ward reconciles with the disk on start (persisted state, issue 8). Otherwise ward keeps
    /// running through the window and promises to lose nothing.
    pub fn server_gone(self) -> bool {
        matches!(self, FaultKind::KillServer | FaultKind::KillKeeper)
    }

    /// Whether it mounts file systems, which only root may.
    pub fn needs_root(self) -> bool {
        matches!(self, FaultKind::StateDiskFull | FaultKind::Mount)
    }

    /// Whether it needs a nats-server on the machine.
    pub fn needs_nats(self) -> bool {
        matches!(self, FaultKind::KillNats | FaultKind::KillWork)
    }

    /// The causes a crash report may give for the death this fault causes.
    pub fn expected_causes(self) -> Vec<String> {
        let causes: &[&str] = match self {
            FaultKind::Crash(Directive::Panic) => &["panic"],
            FaultKind::Crash(Directive::Segv) => &["native_crash SIGSEGV"],
            FaultKind::Crash(Directive::Abort) => &["native_crash SIGABRT"],
            FaultKind::Crash(Directive::Hog) => &["allocation_failure"],
            FaultKind::Crash(Directive::Hang) => &["hung"],
            FaultKind::Crash(Directive::Exit(_)) => &["exited 3"],
            FaultKind::KillWorker | FaultKind::KillServer => &["killed_by_signal SIGKILL"],
            // Nobody alive saw the keeper die: the next start reconstructs it from what it left.
            FaultKind::KillKeeper => &["vanished", "killed_by_signal SIGKILL"],
            _ => &[],
        };
        causes.iter().map(|c| (*c).to_owned()).collect()
    }
}

/// Parses `--faults`: `all`, `none`, or names separated by commas.
///
/// # Errors
/// An unknown name, with the known ones.
pub fn parse_list(list: &str) -> Result<Vec<FaultKind>, String> {
    match list {
        "all" => return Ok(ALL.to_vec()),
        "none" | "" => return Ok(Vec::new()),
        _ => {}
    }
    let mut kinds = Vec::new();
    for name in list.split(',').map(str::trim) {
        let Some(kind) = ALL.iter().find(|k| k.name() == name) else {
            let names: Vec<&str> = ALL.iter().map(|k| k.name()).collect();
            return Err(format!(
                "no fault named {name:?}; there are: {} (or all, none)",
                names.join(", ")
            ));
        };
        if !kinds.contains(kind) {
            kinds.push(*kind);
        }
    }
    Ok(kinds)
}

/// One injected fault and what came of it.
#[derive(Debug, Clone)]
pub struct Injected {
    /// `kind #n`.
    pub label: String,
    /// What it was.
    pub kind: FaultKind,
    /// When, in seconds since the run started.
    pub at_s: f64,
    /// Its window, milliseconds since the epoch (see [`FaultKind::has_window`]).
    pub start_ms: u64,
    /// The window's end.
    pub end_ms: u64,
    /// The deaths it caused, each to be reported.
    pub expected: Vec<ExpectedDeath>,
    /// What went wrong injecting it, or with what ward did right after.
    pub problems: Vec<String>,
    /// What it did, in words.
    pub note: String,
}

/// What the faults with a verdict line of their own found, kept for that line.
#[derive(Debug, Default)]
pub struct Findings {
    reload: Vec<reload::Record>,
    disk_full: Vec<disk_full::Record>,
    mount: Vec<mount::Record>,
    chmod: Vec<chmod::Record>,
    socket: Vec<socket::Record>,
    orphans: Vec<orphans::Record>,
    nats: Vec<kill_nats::Record>,
    work: Vec<kill_work::Record>,
    /// How the run's `ward work` ended, if not cleanly.
    pub nats_end: Option<String>,
}

impl Findings {
    /// The verdict line of each of these kinds in `asked`, judged against the whole ledger
    /// (`tree`: the watched tree, which `entries` name paths in) and the changes lost in each
    /// fault's window (`losses`, by the fault's label).
    pub fn lines(
        &self,
        asked: &[FaultKind],
        entries: &[Entry],
        tree: &std::path::Path,
        losses: &BTreeMap<String, Vec<String>>,
    ) -> Vec<Line> {
        let mut lines = Vec::new();
        for kind in asked {
            lines.push(match kind {
                FaultKind::Reload => reload::line(&self.reload, entries, tree),
                FaultKind::StateDiskFull => disk_full::line(&self.disk_full, entries, losses),
                FaultKind::Mount => mount::line(&self.mount),
                FaultKind::Chmod => chmod::line(&self.chmod),
                FaultKind::SocketIdle => socket::line(&self.socket),
                FaultKind::Orphans => orphans::line(&self.orphans),
                FaultKind::KillNats => kill_nats::line(&self.nats, self.nats_end.as_deref()),
                FaultKind::KillWork => kill_work::line(&self.work),
                _ => continue,
            });
        }
        lines
    }
}

/// Injects `f` (`n`: its number among its kind); what a fault with a verdict line of its own
/// found goes into `findings`.
pub fn inject(scene: &mut Scene<'_>, findings: &mut Findings, f: &mut Injected, n: usize) {
    match f.kind {
        FaultKind::KillWorker => kill::worker(scene, f, n),
        FaultKind::KillServer => kill::server(scene, f),
        FaultKind::StopServer => stop_server::inject(scene, f, n),
        FaultKind::Crash(directive) => crash::inject(scene, f, directive, n),
        FaultKind::MemLimit => mem_limit::inject(scene, f, n),
        FaultKind::FullQueue => full_queue::inject(scene, f, n),
        FaultKind::KillKeeper => kill::keeper(scene, f),
        FaultKind::Reload => findings.reload.push(reload::inject(scene, f, n)),
        FaultKind::StateDiskFull => findings.disk_full.push(disk_full::inject(scene, f, n)),
        FaultKind::Mount => findings.mount.push(mount::inject(scene, f, n)),
        FaultKind::Chmod => findings.chmod.push(chmod::inject(scene, f, n)),
        FaultKind::SocketIdle => findings.socket.push(socket::inject(scene, f, n)),
        FaultKind::Orphans => findings.orphans.push(orphans::inject(scene, f, n)),
        FaultKind::KillNats => findings.nats.push(kill_nats::inject(scene, f, n)),
        FaultKind::KillWork => findings.work.push(kill_work::inject(scene, f, n)),
    }
}

/// The line of a fault asked for but never injected (the run was cut short): no evidence is no
/// pass.
fn not_injected(check: &str) -> Line {
    Line::new(
        check,
        false,
        "never injected".into(),
        vec!["the run ended (or was interrupted) before this fault's turn".into()],
    )
}

/// What happens at one point of the timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Many files at once.
    Burst,
    /// Half the burst's directories removed at once.
    BurstDelete,
    /// A fault.
    Fault(FaultKind),
}

/// The timeline of a run of `run_s` seconds: the burst early, its deletion mid-run, and the
/// faults in rounds (each round every chosen kind once, in a seeded order) spread over the run
/// between a warm-up and a quiet tail. Within a round the faults that take the tree down come
/// last, so the longest life of one server, which the memory verdict judges, comes first.
pub fn schedule(kinds: &[FaultKind], run_s: f64, quick: bool, seed: u64) -> Vec<(f64, Step)> {
    let mut rng = Rng::new(seed, 4);
    let (warmup, tail, interval) = if quick {
        (4.0, 8.0, 3.0)
    } else {
        (20.0, 30.0, 20.0)
    };
    let mut steps = vec![
        (if quick { 2.0 } else { run_s * 0.1 }, Step::Burst),
        (run_s * if quick { 0.45 } else { 0.6 }, Step::BurstDelete),
    ];
    if !kinds.is_empty() {
        let span = (run_s - warmup - tail).max(1.0);
        // A quick run has every fault once; a longer one as many rounds as the interval allows.
        let slots = if quick {
            kinds.len()
        } else {
            kinds.len().max((span / interval) as usize)
        };
        let mut order = Vec::with_capacity(slots);
        while order.len() < slots {
            let mut round = kinds.to_vec();
            rng.shuffle(&mut round);
            round.sort_by_key(|k| matches!(k, FaultKind::KillServer | FaultKind::KillKeeper));
            order.extend(round);
        }
        order.truncate(slots);
        let gap = span / slots as f64;
        for (i, kind) in order.into_iter().enumerate() {
            let at = warmup + gap * (i as f64 + 0.3 * rng.unit());
            steps.push((at, Step::Fault(kind)));
        }
    }
    steps.sort_by(|a, b| a.0.total_cmp(&b.0));
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_names_parse_back_and_unknown_ones_are_refused() {
        assert_eq!(parse_list("all").unwrap(), ALL);
        assert!(parse_list("none").unwrap().is_empty());
        assert_eq!(
            parse_list("segv, kill-server,segv").unwrap(),
            [FaultKind::Crash(Directive::Segv), FaultKind::KillServer]
        );
        let err = parse_list("kill-everything").unwrap_err();
        assert!(
            err.contains("kill-everything") && err.contains("stop-server"),
            "{err}"
        );
        for kind in ALL {
            assert_eq!(parse_list(kind.name()).unwrap(), [kind]);
            if !matches!(
                kind,
                FaultKind::StopServer
                    | FaultKind::MemLimit
                    | FaultKind::FullQueue
                    | FaultKind::Reload
                    | FaultKind::StateDiskFull
                    | FaultKind::Mount
                    | FaultKind::Chmod
                    | FaultKind::SocketIdle
                    | FaultKind::Orphans
                    | FaultKind::KillNats
                    | FaultKind::KillWork
            ) {
                assert!(
                    !kind.expected_causes().is_empty(),
                    "{kind:?} kills something"
                );
            }
        }
    }

    #[test]
    fn a_quick_schedule_has_every_fault_once_inside_the_run_and_is_reproducible() {
        let steps = schedule(&ALL, 55.0, true, 7);
        let faults: Vec<FaultKind> = steps
            .iter()
            .filter_map(|(_, s)| match s {
                Step::Fault(k) => Some(*k),
                _ => None,
            })
            .collect();
        let mut sorted = faults.clone();
        sorted.sort();
        let mut all = ALL.to_vec();
        all.sort();
        assert_eq!(sorted, all);
        assert!(steps.windows(2).all(|w| w[0].0 <= w[1].0));
        assert!(steps.iter().all(|(t, _)| *t >= 2.0 && *t <= 55.0 - 8.0));
        let tail = ALL.len() - 2;
        assert_eq!(faults[tail..].len(), 2);
        assert!(
            faults[tail..]
                .iter()
                .all(|k| matches!(k, FaultKind::KillServer | FaultKind::KillKeeper))
        );
        assert_eq!(schedule(&ALL, 55.0, true, 7), steps);
        assert_ne!(schedule(&ALL, 55.0, true, 8), steps);
    }

    #[test]
    fn a_long_schedule_repeats_the_rounds_and_never_lists_a_fault_not_asked_for() {
        let kinds = [FaultKind::KillWorker, FaultKind::StopServer];
        let steps = schedule(&kinds, 3600.0, false, 1);
        let faults = steps
            .iter()
            .filter(|(_, s)| matches!(s, Step::Fault(_)))
            .count();
        assert_eq!(faults, ((3600.0 - 50.0) / 20.0) as usize);
        assert!(steps.iter().all(|(_, s)| match s {
            Step::Fault(k) => kinds.contains(k),
            _ => true,
        }));
        assert_eq!(schedule(&[], 600.0, false, 1).len(), 2, "bursts only");
    }
}

//! The keeper as a child subreaper: whatever is orphaned below it is re-parented to it, reaped
//! when it exits, and killed and reaped when the server dies, so that no process of the tree
//! outlives a server that died and none lingers as a zombie while it runs.
//!
//! A job's own children (a shell's background command, a build tool's compilers) get no
//! parent-death signal of their own. If the server is killed, the job dies with it (its
//! parent-death signal), but its children would live on, re-parented to init, and keep writing to
//! the log: seed 004's symptom. With `PR_SET_CHILD_SUBREAPER` they are re-parented to the keeper
//! instead, which sweeps them after each death of the server and before it exits.
//!
//! While the server runs, a job that leaves a background child behind (`sleep 1 & exit 0`) hands
//! the keeper a child that exits on its own. Unreaped, each would stay a zombie until the server's
//! next death, and a busy tree would run the machine out of pids. So on each SIGCHLD the keeper
//! reaps the children that have exited ([`Adopted::reap_exited`]), all but the server, whose
//! `ward_supervisor::Child` sees its exit through its pidfd and reaps it (ward-supervisor's
//! invariant: nothing else reaps a child it supervises). An exited child is found with
//! `waitid(P_ALL, WNOWAIT)`, which reaps nothing, and reaped by its pid.

use std::io;
use std::time::{Duration, Instant};

/// Makes this process the subreaper of its descendants.
///
/// # Errors
/// If `prctl` fails (the kernel is older than 3.4).
pub(crate) fn become_subreaper() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only; no memory is passed.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// At most this many children are reaped per round, so that a burst of exits does not keep the
/// keeper's loop from its signals and the server's events; the rest are the next round's.
const REAPED_PER_ROUND: usize = 256;

/// How often at most the log says how many exited orphans were reaped (each is logged at debug):
/// a busy tree whose jobs all leave a background child must not write a line per job.
const REPORT_EVERY: Duration = Duration::from_secs(60);

/// The keeper's account of the children it adopted and reaped as they exited.
#[derive(Debug, Default)]
pub(crate) struct Adopted {
    /// Reaped since the last line in the log.
    unreported: u64,
    /// When that line was written; `None` before the first.
    reported_at: Option<Instant>,
}

/// What a round of [`Adopted::reap_exited`] left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Round {
    /// No other child has exited (or the next one found is the server, left to its handle).
    Done,
    /// The round reaped as many as it may: call again, after the loop's other events.
    More,
}

impl Adopted {
    /// Reaps up to [`REAPED_PER_ROUND`] children that have exited, never those in `owned` (the
    /// pid of the supervised server, if one runs, and of an `on_death` hook's process, whose
    /// handles reap them), and says whether more may be waiting.
    ///
    /// Call it from the thread that spawns the server, after SIGCHLD, holding the hooks' child
    /// ([`DeathHooks::hold_child`](crate::hooks::DeathHooks::hold_child)): then no server nor
    /// hook can be spawned while the round runs, so `owned` are the only children this must
    /// leave alone. (A child started and waited for by pid on that thread, such as `addr2line`
    /// while a crash report is made, is reaped before the round can run.) One found exited ends
    /// the round: its handle reaps it, and its owner rings for the next round.
    pub(crate) fn reap_exited(&mut self, owned: &[Option<u32>]) -> Round {
        let mut reaped = 0;
        let round = loop {
            if reaped == REAPED_PER_ROUND {
                break Round::More;
            }
            let Some(pid) = an_exited_child() else {
                break Round::Done;
            };
            // The server's exit is its handle's to see and reap, and its death sweeps the rest;
            // a hook's too, and the keeper is told when it has been reaped.
            if owned.contains(&Some(pid)) {
                break Round::Done;
            }
            let mut status = 0;
            // SAFETY: waitpid on a child of ours that has exited; nothing else in the process
            // reaps children it did not start itself, so the pid is still that child's.
            let rc = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, libc::WNOHANG) };
            if rc as u32 != pid {
                // Not reaped: looking again would find it again. The next SIGCHLD, or the sweep
                // at the server's death, tries again.
                log::warn!(
                    "cannot reap exited orphan {pid}: {}",
                    io::Error::last_os_error()
                );
                break Round::Done;
            }
            log::debug!("reaped orphaned process {pid} (wait status {status:#x})");
            reaped += 1;
        };
        self.count(reaped as u64, Instant::now());
        round
    }

    /// Adds `reaped` to the count, and logs it if a line is due at `now`.
    fn count(&mut self, reaped: u64, now: Instant) {
        self.unreported += reaped;
        let due = self
            .reported_at
            .is_none_or(|at| now.duration_since(at) >= REPORT_EVERY);
        if due {
            self.report(now);
        }
    }

    /// Logs how many exited orphans were reaped since the last line, if any were.
    pub(crate) fn report(&mut self, now: Instant) {
        if self.unreported == 0 {
            return;
        }
        log::info!(
            "reaped {} exited process(es) that jobs left behind{}",
            self.unreported,
            if self.reported_at.is_some() {
                " since the last such line"
            } else {
                ""
            }
        );
        self.unreported = 0;
        self.reported_at = Some(now);
    }
}

/// The pid of a child of ours that has exited, left unreaped (`WNOWAIT`): any one, the server
/// included. `None` if there is none (or no child at all).
fn an_exited_child() -> Option<u32> {
    for _ in 0..3 {
        // SAFETY: an all-zero siginfo_t is a valid value to be overwritten by waitid.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is valid for writes. WNOWAIT leaves the child waitable: this reaps
        // nothing, so it takes no exit status from a child's own handle.
        let rc = unsafe {
            libc::waitid(
                libc::P_ALL,
                0,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        if rc == 0 {
            // SAFETY: waitid filled `info` in; with WNOHANG and no exited child, si_pid stays 0.
            let pid = unsafe { info.si_pid() };
            return (pid > 0).then_some(pid as u32);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::ECHILD) => return None,
            _ => {
                log::error!("looking for exited children: {err}");
                return None;
            }
        }
    }
    None
}

/// Kills and reaps every child of this process but `hook` (an `on_death` hook's process, which
/// its handle stops and reaps; call it when no server runs, holding
/// [`DeathHooks::hold_child`](crate::hooks::DeathHooks::hold_child)), repeating while killing
/// them orphans more (their own children come to us in turn). Returns how many it swept.
pub(crate) fn sweep(hook: Option<u32>) -> usize {
    let me = std::process::id();
    let mut swept = 0;
    // Each round takes one generation; a tree deeper than this is swept at the next death.
    for _ in 0..32 {
        let mut orphans = children_of(me);
        orphans.retain(|&pid| Some(pid) != hook);
        if orphans.is_empty() {
            break;
        }
        for pid in orphans {
            // SAFETY: kill and waitpid on a child of ours: it cannot be reaped by anyone else, so
            // the pid cannot have been reused before we wait for it.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
                let mut status = 0;
                libc::waitpid(pid as libc::pid_t, &mut status, 0);
            }
            log::warn!("killed orphaned process {pid} left behind by a dead server or job");
            swept += 1;
        }
    }
    swept
}

/// The pids whose parent is `parent`, from /proc.
fn children_of(parent: u32) -> Vec<u32> {
    ward_sys::processes()
        .into_iter()
        .filter_map(|(pid, stat)| (stat.ppid == parent).then_some(pid))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reaped_orphans_are_logged_at_most_once_a_minute_with_their_count() {
        let start = Instant::now();
        let mut adopted = Adopted::default();
        // The first is told at once, so that the log shows that it happens.
        adopted.count(1, start);
        assert_eq!((adopted.unreported, adopted.reported_at), (0, Some(start)));
        // Then they are counted until a minute has passed.
        adopted.count(300, start + Duration::from_secs(1));
        adopted.count(0, start + Duration::from_secs(59));
        assert_eq!(
            (adopted.unreported, adopted.reported_at),
            (300, Some(start))
        );
        let later = start + REPORT_EVERY;
        adopted.count(2, later);
        assert_eq!((adopted.unreported, adopted.reported_at), (0, Some(later)));
        // A report with nothing to tell keeps the last line's time.
        adopted.report(later + REPORT_EVERY);
        assert_eq!(adopted.reported_at, Some(later));
    }
}

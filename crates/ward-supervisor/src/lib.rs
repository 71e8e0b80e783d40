//! Restart policy as a pure state machine, and supervision of child processes that never leaves
//! an orphan.
//!
//! `ward-supervisor` decides when a dead child is restarted ([`RestartPolicy`]: exponential
//! backoff, reset after a stable run, give-up by intensity) and runs children so that none is
//! ever orphaned ([`Child`], [`Supervisor`]): each in its own process group with a parent-death
//! signal, stopped with SIGTERM (or its own [`ChildSpec::stop_signal`]) then SIGKILL, every exit
//! classified with its peak memory and run time ([`Exit`]), optionally watched by a heartbeat
//! watchdog, optionally limited (memory cgroup, rlimits, nice value) and run as another user.
//!
//! ```
//! use std::time::Duration;
//! use ward_supervisor::{ChildSpec, EventKind, RestartPolicy, Supervisor, Termination};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let (supervisor, events) = Supervisor::with_channel()?;
//! // A child that fails: restarted twice, then the policy gives up.
//! let mut policy = RestartPolicy::immediate();
//! policy.intensity = Some(ward_supervisor::Intensity { max_restarts: 2, window: Duration::from_secs(60) });
//! supervisor.add(ChildSpec::new("sh").args(["-c", "exit 3"]), policy)?;
//! let mut exits = 0;
//! loop {
//!     match events.recv_timeout(Duration::from_secs(10))?.kind {
//!         EventKind::Exited(exit) => {
//!             assert_eq!(exit.termination, Termination::Exited { code: 3 });
//!             exits += 1;
//!         }
//!         EventKind::GaveUp(_) => break,
//!         _ => {}
//!     }
//! }
//! assert_eq!(exits, 3);
//! supervisor.shutdown()?;
//! # Ok(())
//! # }
//! ```
//!
//! # Crate features
//! None. Linux is the supported platform; see *Known problems* for the others.
//!
//! # Which piece to use
//! - [`RestartTracker`] alone, to drive restarts of something else (it only needs [`Exit`]s).
//! - [`Child`] to run one process with full control (spawn, signal, [`Child::stop`], wait).
//! - [`Reaper`] to run many short ones that way: children spawned through one reaper are all
//!   watched by its one thread, so a spawn starts no thread.
//! - [`Child::spawn_inline`] when the spawning thread waits for the child from start to end: no
//!   reaper thread at all, the waiting thread reaps it and reads its output.
//! - [`Supervisor`] to keep N children running under their [`RestartPolicy`], with [`Event`]s
//!   on a callback or a channel. Its callbacks run on its own threads: an event callback or an
//!   output sink must not call the `Supervisor` and wait for the answer (that would deadlock);
//!   hand the event to another thread instead.
//!
//! # Theory of operation
//! - **Spawning.** [`Child::spawn`] does not use `std::process::Command`: any `pre_exec` hook
//!   makes std `fork`, and copying the page tables, the copy-on-write faults and tearing the copy
//!   down at exec cost more than a short job itself. It clones the child with
//!   `CLONE_VM | CLONE_VFORK` (as `posix_spawn` does), after preparing everything that allocates:
//!   argv, the environment (this process's, an [`Environment`] captured earlier with
//!   [`ChildSpec::env_base`], or empty with [`ChildSpec::env_clear`], then the
//!   spec's changes), the paths `execvp` would try (in the *child's* `PATH`, as std does), the
//!   working directory and the stdio descriptors (`/dev/null` is opened once per process; the
//!   child's small stack is mapped once per spawning thread and reused). The calling thread
//!   blocks every signal around the clone and is suspended until the child execs or exits. The
//!   child, on the parent's memory and its own small stack, makes only async-signal-safe system
//!   calls: it resets every handled signal to its default (so no handler of this process runs in
//!   it), leads a process group of its own, puts its stdio in place, joins the memory cgroup,
//!   applies `setrlimit` and the nice value ([`ChildSpec::nice`]), becomes the user
//!   [`ChildSpec::user`] names (with the raw system calls: glibc's wrappers would signal the
//!   parent's threads), sets `prctl(PR_SET_PDEATHSIG, SIGKILL)` (after the change of user, which
//!   clears it) then checks `getppid()` (the parent may have died before the `prctl`), changes
//!   directory (as the new user), marks every descriptor above stderr close-on-exec except
//!   those passed with [`ChildSpec::pass_fd`] (so even a descriptor some library leaked without
//!   `O_CLOEXEC` stays out), clears its signal mask, sets SIGPIPE back to default, and execs. A step that fails is written to memory the parent reads once it
//!   resumes; the parent reaps the child and returns [`Error::Spawn`] naming the step.
//! - **The parent-death signal is per thread.** Linux sends it when the *thread* that cloned the
//!   child exits. A [`Supervisor`] spawns every child from its own long-lived thread; if you use
//!   [`Child`] directly, spawn from a thread that outlives the child.
//! - **Reaping.** A [`Reaper`]'s thread waits in one `epoll` set for the exit of each of its
//!   children (a pidfd from `clone(CLONE_PIDFD)`; before Linux 5.3, `waitid(WNOHANG | WNOWAIT)`
//!   every 10 ms), their output pipes and their heartbeats. [`Child::spawn`] makes a reaper for the
//!   one child; a [`Supervisor`] keeps one for all of its children; [`Reaper::spawn`] shares one,
//!   so that spawning a job creates no thread and none has to be scheduled and joined before the
//!   job counts as done. [`Child::spawn_inline`] makes a reaper without a thread, whose loop the
//!   threads waiting for the child turn, one at a time: the exit then wakes the waiting thread
//!   itself instead of a reaper thread that would wake it in turn. The exited child stays a zombie
//!   that pins its pid and group id until the reaper has SIGKILLed what it left in its group (see
//!   [`ChildSpec::kill_group_on_exit`]); then it is reaped with `wait4` for the rusage. Signals are
//!   only ever sent while the child is unreaped, so they never hit a recycled pid. Dropping a
//!   reaper SIGKILLs the groups of the children it still watches, reaps them and joins its thread.
//! - **Output.** The reaper reads captured stdout/stderr into lines and queues them (bounded)
//!   for a thread per child that calls the sink, started with the first line, so a child that
//!   writes nothing costs no thread of its own. The child never waits for the sink: when the
//!   queue is full, lines are dropped and counted ([`Line::dropped_before`]). After the exit,
//!   output still in the pipes is read until they reach their end, for at most 200 ms after a
//!   clean exit or a stop that was asked for, and 2 s after a death (a descendant that left the
//!   group may hold them open; what it writes just after a death belongs in the crash report).
//!   Dropping the [`Child`] waits for that and joins the sink's thread: read a dead child's
//!   output tail after the drop, not after the exit.
//!   [`ChildSpec::stdout_piped`] hands stdout to the caller instead, for a request/reply worker
//!   whose answers should reach the waiting thread directly.
//! - **Memory cgroup.** [`ChildSpec::memory_max`] creates a cgroup per run under this
//!   process's own memory cgroup (v2 if the memory controller is delegated there, else v1), the
//!   child moves itself in before exec, and the cgroup's OOM counter is read into the [`Exit`]
//!   when the child is reaped. When the child exits, every process left in its cgroup is killed
//!   too, even one that left the process group.
//! - **Liveness.** With a [`Watchdog`], the child writes to the descriptor named by
//!   [`HEARTBEAT_FD_ENV`] ([`Heartbeat`] does it); silence longer than the timeout earns a
//!   SIGABRT, then SIGKILL to the group after the grace, and the [`Exit`] says `hung`. A caller
//!   with a deadline of its own stops a child past it with [`Child::stop_hung`]: a dump signal
//!   to the group first (a stack printed on stderr is the hang's evidence), a bounded wait,
//!   then the usual stop.
//!
//! # Known problems
//! - A descendant that leaves the child's process group (`setsid`, `setpgid`) escapes the group
//!   kill; only its memory cgroup (if any) still holds it.
//! - Descendants orphaned by the child are reparented to init (or the nearest subreaper), which
//!   reaps them; where init does not reap, they stay zombies (dead, but listed in `/proc`).
//! - Only Linux is implemented. Elsewhere the crate builds, the policy works, and spawning
//!   returns [`Error::Unsupported`].
//!
//! # What it deliberately does not do
//! It does not decide *why* a child died beyond the wait status; that verdict is
//! `ward-crashdiag`'s, from the evidence in [`Exit`] (signal, core dump, peak RSS, the memory
//! cgroup's OOM counter).

#![warn(missing_docs)]

mod child;
mod error;
mod exit;
mod heartbeat;
mod policy;
mod reaper;
mod spec;
mod supervisor;
mod sys;
mod tail;

pub use child::Child;
pub use error::{Error, Result};
pub use exit::{CgroupEvidence, Exit, Termination};
pub use heartbeat::Heartbeat;
pub use policy::{
    Backoff, Clock, Decision, FailureRule, GiveUp, Intensity, ManualClock, RestartMode,
    RestartPolicy, RestartTracker, StopReason, SystemClock,
};
pub use reaper::Reaper;
pub use spec::{
    ChildSpec, Environment, HEARTBEAT_FD_ENV, Input, Line, Output, OutputSink, ResourceLimits,
    Stream, Watchdog,
};
pub use supervisor::{ChildId, ChildState, ChildStatus, Event, EventKind, Supervisor};
pub use tail::OutputTail;

/// Where a memory-limited child's cgroup would be created (the parent directory), or why none
/// can be: lets a caller check its configuration before spawning anything. To be sure, it makes
/// a cgroup there, sets its limit and removes it.
///
/// # Errors
/// [`Error::NoMemoryCgroup`] when neither cgroup v2 (with the memory controller delegated) nor a
/// cgroup v1 memory hierarchy is available, [`Error::Cgroup`] when one is but no cgroup can be
/// made or limited there (no permission), [`Error::Unsupported`] off Linux.
pub fn probe_memory_cgroup() -> Result<std::path::PathBuf> {
    sys::probe_memory_cgroup()
}

//! A running child: spawning it in its own process group, handing it to the [`Reaper`] that
//! reaps it, reads its output and watches its heartbeat (plus the thread that feeds its output
//! sink, once it writes), signalling it, and stopping it with its stop signal (SIGTERM unless
//! the spec names another) then SIGKILL.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::panic::{self, AssertUnwindSafe};
use std::path::Path;
use std::process::{ChildStdin, ChildStdout};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::reaper::{Reaper, Watch};
use crate::spec::{HEARTBEAT_FD_ENV, Line, Output, OutputSink, Stream};
use crate::sys::{self, Cgroup, Spawned};
use crate::{ChildSpec, Error, Exit, Result, Termination};

/// Lines queued between the reader and a slow sink before new lines are dropped.
const LINE_QUEUE: usize = 1024;
/// Longer lines are delivered in pieces of this size, so one endless line cannot grow memory.
const MAX_LINE: usize = 16 * 1024;
/// How long a SIGKILLed child may take to be reaped before we report it as unkillable.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// How long a dropped handle waits for the reaper to finish reading what the reaped child wrote
/// (its drain is bounded by 2 s at most; this only guards against a reaper that died).
const DRAIN_WAIT: Duration = Duration::from_secs(10);

/// Called on the reaper's thread once the child is reaped.
pub(crate) type OnExit = Box<dyn FnOnce(&Exit) + Send>;

#[derive(Debug, Default)]
pub(crate) struct State {
    /// Set under the lock right after `wait4` reaped the child: from then on its pid may belong
    /// to another process, so no signal is sent to it.
    pub(crate) reaped: bool,
    exit: Option<Exit>,
    pub(crate) hung: bool,
    /// The signal `stop_hung` sent for a stack dump, if it sent one.
    dump_signal: Option<i32>,
    pub(crate) stop_requested: bool,
    /// Set by the reaper once it is done with the child: reaped, and its pipes drained.
    pub(crate) drained: bool,
    /// Handed over by the reaper with `drained`: the handle's drop joins their sink thread.
    pub(crate) lines: Option<Lines>,
    /// Threads waiting on `exited`: nobody needs a wake-up (a futex call) without them.
    waiters: usize,
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) pid: libc::pid_t,
    state: Mutex<State>,
    /// Notified when the child is reaped, when the reaper is done with it, and when a thread that
    /// turned an inline reaper stops doing so.
    pub(crate) exited: Condvar,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wakes the threads waiting for a change of the state, if any.
    pub(crate) fn notify(&self, state: MutexGuard<'_, State>) {
        let waiting = state.waiters > 0;
        drop(state);
        if waiting {
            self.exited.notify_all();
        }
    }

    /// Signals the child's group (or just the child) unless it has been reaped already.
    pub(crate) fn signal(&self, state: &State, signal: i32, group: bool) -> Result<()> {
        if state.reaped {
            return Ok(());
        }
        let target = if group { -self.pid } else { self.pid };
        // SAFETY: kill has no memory-safety preconditions; the pid (or group, whose id is the
        // leader's pid) is still ours because the leader has not been reaped.
        if unsafe { libc::kill(target, signal) } != 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::ESRCH) {
                return Err(Error::Os {
                    what: "kill",
                    source: err,
                });
            }
        }
        Ok(())
    }
}

/// A running (or finished, not yet dropped) child process.
///
/// Dropping it kills the child's group if the child is still running, waits for the reap and
/// for its output to be delivered: a `Child` never leaves a zombie or an orphan behind.
///
/// The parent-death signal is tied to the thread that called [`Child::spawn`]: Linux sends it
/// when that *thread* exits, not the process. Spawn from a thread that lives as long as the child
/// should (the [`Supervisor`](crate::Supervisor) has one).
#[derive(Debug)]
pub struct Child {
    shared: Arc<Shared>,
    started: Instant,
    stdin: Option<ChildStdin>,
    /// The read end of stdout, when the spec asked for it piped to the caller.
    stdout: Option<ChildStdout>,
    cgroup: Option<Arc<Cgroup>>,
    /// What [`begin_stop`](Self::begin_stop) sends ([`ChildSpec::stop_signal`]).
    stop_signal: i32,
    /// Output lines dropped because the sink fell behind, in total.
    dropped_lines: Arc<AtomicU64>,
    /// The reaper made for this child alone by [`Child::spawn`] or [`Child::spawn_inline`];
    /// `None` when the child was spawned through a shared [`Reaper`]. Dropped last, once the
    /// reaper is done with the child.
    own_reaper: Option<Reaper>,
}

impl Child {
    /// Starts the child described by `spec`.
    ///
    /// # Errors
    /// [`Error::Spawn`] if the program cannot be started or a limit, the nice value or the user
    /// cannot be applied, [`Error::NoMemoryCgroup`] / [`Error::Cgroup`] if a memory limit was
    /// asked for and cannot be set up, [`Error::Config`] for a stop signal or nice value out of
    /// range, [`Error::Unsupported`] off Linux, [`Error::Os`] if a pipe or thread cannot be made.
    pub fn spawn(spec: &ChildSpec) -> Result<Child> {
        let reaper = Reaper::new()?;
        let mut child = Child::spawn_in(spec, &reaper, None)?;
        child.own_reaper = Some(reaper);
        Ok(child)
    }

    /// Starts the child described by `spec` with no thread to watch it: the threads that wait
    /// for it ([`wait`](Self::wait), [`wait_timeout`](Self::wait_timeout), [`stop`](Self::stop),
    /// the drop) reap it, read its output and run its watchdog while they wait.
    ///
    /// For a caller that waits for the child from its start to its end, as a job runner does:
    /// the child's exit wakes the waiting thread itself, not a reaper thread that then wakes it.
    /// While nobody waits, nothing reads the child's output, so a child that fills its pipe
    /// (64 KiB) blocks until someone waits again, and its watchdog does not run.
    /// [`try_wait`](Self::try_wait) looks without waiting, and reaps the child if it has exited.
    ///
    /// # Errors
    /// As [`Child::spawn`].
    pub fn spawn_inline(spec: &ChildSpec) -> Result<Child> {
        let reaper = Reaper::inline()?;
        let mut child = Child::spawn_in(spec, &reaper, None)?;
        child.own_reaper = Some(reaper);
        Ok(child)
    }

    pub(crate) fn spawn_in(
        spec: &ChildSpec,
        reaper: &Reaper,
        on_exit: Option<OnExit>,
    ) -> Result<Child> {
        spec.check()?;
        let cgroup = if spec.memory_max.is_some() || spec.own_cgroup {
            Some(Arc::new(sys::create_memory_cgroup(spec.memory_max)?))
        } else {
            None
        };
        let spawned = spawn_process(spec, cgroup.as_deref());
        let (process, heartbeat) = match spawned {
            Ok(spawned) => spawned,
            Err(err) => {
                if let Some(cgroup) = &cgroup {
                    cgroup.remove();
                }
                return Err(err);
            }
        };
        Ok(Child::adopt(
            spec, process, heartbeat, cgroup, on_exit, reaper,
        ))
    }

    fn adopt(
        spec: &ChildSpec,
        process: Spawned,
        heartbeat: Option<OwnedFd>,
        cgroup: Option<Arc<Cgroup>>,
        on_exit: Option<OnExit>,
        reaper: &Reaper,
    ) -> Child {
        let started = Instant::now();
        let shared = Arc::new(Shared {
            pid: process.pid,
            state: Mutex::new(State::default()),
            exited: Condvar::new(),
        });
        let dropped_lines = Arc::new(AtomicU64::new(0));
        let (stdout, read_stdout) = if spec.stdout_piped {
            (process.stdout.map(ChildStdout::from), None)
        } else {
            (None, process.stdout)
        };
        let child = Child {
            shared: Arc::clone(&shared),
            started,
            stdin: process.stdin.map(ChildStdin::from),
            stdout,
            cgroup: cgroup.clone(),
            stop_signal: spec.stop_signal,
            dropped_lines: Arc::clone(&dropped_lines),
            own_reaper: None,
        };
        let sink = match &spec.output {
            Output::Capture(sink) => Some(Arc::clone(sink)),
            Output::Inherit | Output::Null => None,
        };
        let watch = Watch::new(
            Arc::clone(&shared),
            started,
            spec.kill_group_on_exit,
            cgroup,
            on_exit,
            process.pidfd,
            [
                read_stdout.map(|fd| (fd, Stream::Stdout)),
                process.stderr.map(|fd| (fd, Stream::Stderr)),
            ],
            spec.watchdog.zip(heartbeat),
            Lines {
                pid: process.pid as u32,
                sink,
                delivery: None,
                dropped: 0,
                dropped_total: dropped_lines,
            },
        );
        if let Err(mut watch) = reaper.watch(watch) {
            // Nothing would reap the child: kill and reap it here.
            log::error!("child {}: its reaper has stopped", shared.pid);
            let state = shared.lock();
            if let Err(err) = shared.signal(&state, libc::SIGKILL, true) {
                log::error!("child {}: {err}", shared.pid);
            }
            drop(state);
            let exit = reap(&shared, started, watch.kill_group, watch.cgroup.take());
            if let Some(on_exit) = watch.on_exit.take() {
                on_exit(&exit);
            }
            let mut state = shared.lock();
            state.drained = true;
            shared.notify(state);
        }
        child
    }

    /// The child's process id, which is also its process group id.
    pub fn id(&self) -> u32 {
        self.shared.pid as u32
    }

    /// When it was spawned.
    pub fn started_at(&self) -> Instant {
        self.started
    }

    /// The write end of the child's stdin, if [`Input::Piped`](crate::Input::Piped) was asked for (once).
    pub fn take_stdin(&mut self) -> Option<ChildStdin> {
        self.stdin.take()
    }

    /// The read end of the child's stdout, if [`ChildSpec::stdout_piped`] was asked for (once).
    /// Read it: the child blocks once the pipe is full.
    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.stdout.take()
    }

    /// The child's memory cgroup directory, if it runs under a memory limit: the caller can read
    /// its OOM counters there while this handle lives.
    pub fn cgroup_path(&self) -> Option<&Path> {
        self.cgroup.as_deref().map(Cgroup::path)
    }

    /// Output lines dropped so far because the sink fell behind (the child is never made to
    /// wait). Lines dropped after the last one queued are counted here only.
    pub fn dropped_lines(&self) -> u64 {
        self.dropped_lines.load(Ordering::Relaxed)
    }

    /// Sends `signal` to the child's whole process group (nothing once it has been reaped).
    ///
    /// # Errors
    /// [`Error::Os`] if `kill` fails for another reason than the group being gone.
    pub fn signal_group(&self, signal: i32) -> Result<()> {
        let state = self.shared.lock();
        self.shared.signal(&state, signal, true)
    }

    /// Sends `signal` to the child alone (nothing once it has been reaped).
    ///
    /// # Errors
    /// [`Error::Os`] if `kill` fails for another reason than the child being gone.
    pub fn signal(&self, signal: i32) -> Result<()> {
        let state = self.shared.lock();
        self.shared.signal(&state, signal, false)
    }

    /// The exit, if the child has been reaped.
    pub fn try_wait(&self) -> Option<Exit> {
        // Not waiting: a deadline already reached (an inline reaper still takes one quick turn).
        self.wait_until(Some(Instant::now()))
    }

    /// Waits for the child to exit.
    pub fn wait(&self) -> Exit {
        match self.wait_until(None) {
            Some(exit) => exit,
            None => unreachable!("waiting without a deadline returns only with an exit"),
        }
    }

    /// Waits at most `timeout` for the child to exit.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<Exit> {
        self.wait_until(Some(Instant::now() + timeout))
    }

    fn wait_until(&self, deadline: Option<Instant>) -> Option<Exit> {
        let mut exit = None;
        self.wait_for(deadline, |state| {
            exit.clone_from(&state.exit);
            exit.is_some()
        });
        exit
    }

    /// Waits until `done` holds of the state (true) or `deadline` passes (false). The reaper's
    /// thread changes the state; an inline reaper is turned here, by one waiting thread at a
    /// time, while the others wait for it as they would for a reaper's thread.
    fn wait_for(&self, deadline: Option<Instant>, mut done: impl FnMut(&State) -> bool) -> bool {
        let inline = self.own_reaper.as_ref().filter(|reaper| reaper.is_inline());
        let mut state = self.shared.lock();
        let mut drove = false;
        loop {
            let left = deadline.map(|at| at.saturating_duration_since(Instant::now()));
            let expired = left.is_some_and(|left| left.is_zero());
            let result = if done(&state) {
                Some(true)
            } else if expired && (drove || inline.is_none()) {
                Some(false)
            } else {
                None
            };
            if let Some(result) = result {
                if drove && state.waiters > 0 {
                    // A thread found the loop taken and waits: it takes the loop over.
                    self.shared.exited.notify_all();
                }
                return result;
            }
            // An inline reaper gets at least one turn, without waiting once the deadline is
            // past: `try_wait` sees an exit that happened while nobody waited.
            if let Some(reaper) = inline
                && let Some(mut turns) = reaper.try_drive()
            {
                drop(state);
                reaper.turn(&mut turns, deadline);
                drop(turns);
                drove = true;
                state = self.shared.lock();
                continue;
            }
            if expired {
                return false;
            }
            state.waiters += 1;
            state = match left {
                None => self
                    .shared
                    .exited
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner),
                Some(left) => {
                    self.shared
                        .exited
                        .wait_timeout(state, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
            state.waiters -= 1;
        }
    }

    /// Stops the child: its stop signal ([`ChildSpec::stop_signal`], SIGTERM by default) to its
    /// group, up to `grace` for it to exit, then SIGKILL to the group, and waits for the reap.
    ///
    /// # Errors
    /// [`Error::Os`] if a signal cannot be sent, [`Error::Unkillable`] if the child is still not
    /// reaped 10 s after SIGKILL (stuck in the kernel).
    pub fn stop(&self, grace: Duration) -> Result<Exit> {
        self.begin_stop()?;
        self.finish_stop(Instant::now() + grace)
    }

    /// Stops a child found hung (past a deadline of the caller's): its [`Exit`] says `hung`, as
    /// after the watchdog. With a `dump` signal, the child's group gets it first, and up to
    /// `dump_wait` to exit on it: a runtime that prints its stacks on a signal (Python's
    /// `faulthandler` on SIGABRT, the JVM on SIGQUIT) leaves that evidence in the child's output
    /// before it is stopped. Then [`stop`](Self::stop), which has nothing left to do if the dump
    /// signal ended the child. A child that had exited already is not marked hung.
    ///
    /// The whole group gets the dump signal: the stack that explains a hang may be any of its
    /// processes', and all of them are about to be stopped anyway.
    ///
    /// # Errors
    /// As [`stop`](Self::stop). A dump signal that cannot be sent is logged, and the child
    /// stopped all the same.
    pub fn stop_hung(
        &self,
        dump: Option<i32>,
        dump_wait: Duration,
        grace: Duration,
    ) -> Result<Exit> {
        let dumping = self.begin_hung_stop(dump);
        if dumping {
            // Returns as soon as it exits: a dump is usually followed by death by that signal.
            self.wait_timeout(dump_wait);
        }
        self.stop(grace)
    }

    /// The first half of [`stop_hung`](Self::stop_hung), for a caller that waits on its own
    /// timers (a [`Supervisor`](crate::Supervisor)): marks the child hung and sends `dump`, if
    /// any, to its group. Returns whether the dump signal was sent; the caller then gives the
    /// child time to print its stacks and exit before it SIGKILLs the group. A child that had
    /// exited already is not marked hung.
    pub fn begin_hung_stop(&self, dump: Option<i32>) -> bool {
        // An inline child that exited while nobody waited is reaped first: it did not hang.
        self.try_wait();
        let mut state = self.shared.lock();
        if state.reaped {
            return false;
        }
        state.hung = true;
        let Some(signal) = dump else { return false };
        match self.shared.signal(&state, signal, true) {
            Ok(()) => {
                state.dump_signal = Some(signal);
                true
            }
            Err(err) => {
                log::warn!(
                    "child {}: cannot ask it for its stack: {err}",
                    self.shared.pid
                );
                false
            }
        }
    }

    /// The first half of [`stop`](Self::stop): marks the stop as requested and sends the stop
    /// signal to the group. Lets a caller stop many children in parallel.
    ///
    /// # Errors
    /// [`Error::Os`] if the signal cannot be sent.
    pub fn begin_stop(&self) -> Result<()> {
        // An inline child that exited while nobody waited is reaped first: its exit was not
        // asked for.
        self.try_wait();
        let mut state = self.shared.lock();
        if !state.reaped {
            state.stop_requested = true;
        }
        self.shared.signal(&state, self.stop_signal, true)
    }

    /// The second half of [`stop`](Self::stop): waits until `deadline`, then SIGKILLs the group
    /// and waits for the reap.
    ///
    /// # Errors
    /// As [`stop`](Self::stop).
    pub fn finish_stop(&self, deadline: Instant) -> Result<Exit> {
        if let Some(exit) = self.wait_until(Some(deadline)) {
            return Ok(exit);
        }
        self.kill_and_wait()
    }

    /// Called only right after a look at the child (`finish_stop`'s wait, the drop's
    /// `try_wait`), so an inline child's exit is known here if it happened.
    fn kill_and_wait(&self) -> Result<Exit> {
        {
            let mut state = self.shared.lock();
            if !state.reaped {
                state.stop_requested = true;
            }
            self.shared.signal(&state, libc::SIGKILL, true)?;
        }
        self.wait_until(Some(Instant::now() + KILL_WAIT))
            .ok_or(Error::Unkillable {
                pid: self.id(),
                waited: KILL_WAIT,
            })
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        // Closing stdin first lets a well-behaved worker see EOF.
        self.stdin = None;
        let reaped = match self.try_wait() {
            Some(_) => true,
            None => match self.kill_and_wait() {
                Ok(_) => true,
                Err(err) => {
                    log::error!("dropping child {}: {err}", self.id());
                    false
                }
            },
        };
        if reaped {
            // The reaper drains the pipes for a bounded time after the reap; once it is done,
            // the lines it read are delivered by the sink thread, which is joined here.
            if !self.wait_for(Some(Instant::now() + DRAIN_WAIT), |state| state.drained) {
                log::error!("child {}: its reaper never finished with it", self.id());
            }
            let lines = self.shared.lock().lines.take();
            if let Some(mut lines) = lines {
                lines.finish();
            }
        }
        if let Some(cgroup) = &self.cgroup {
            cgroup.remove();
        }
        // Last: it SIGKILLs whatever it still watches and reaps it, and a reaper's thread is
        // joined here.
        drop(self.own_reaper.take());
    }
}

/// Spawns the process; returns it with the parent's end of the heartbeat pipe.
fn spawn_process(spec: &ChildSpec, cgroup: Option<&Cgroup>) -> Result<(Spawned, Option<OwnedFd>)> {
    let mut keep: Vec<RawFd> = spec.pass_fds.iter().map(|fd| fd.as_raw_fd()).collect();
    let mut extra_env = Vec::new();
    let mut heartbeat = None;
    // The child's end lives only until spawn returns: dropping it then leaves the child the only
    // writer, so the pipe reports EOF when the child (and what it passed the fd to) is gone.
    let mut _child_end = None;
    if spec.watchdog.is_some() {
        let (read, write) = sys::pipe()?;
        extra_env.push((
            OsString::from(HEARTBEAT_FD_ENV),
            OsString::from(write.as_raw_fd().to_string()),
        ));
        keep.push(write.as_raw_fd());
        heartbeat = Some(read);
        _child_end = Some(write);
    }
    let process = sys::spawn(spec, &extra_env, keep, cgroup)?;
    Ok((process, heartbeat))
}

/// Whether our child `pid` has exited (it stays a zombie: `WNOWAIT`). An error other than
/// `EINTR` (`ECHILD`: someone else reaped it) counts as exited, so that [`reap`] reports it.
pub(crate) fn has_exited(pid: libc::pid_t) -> bool {
    // SAFETY: an all-zero siginfo_t is a valid value to be overwritten by waitid.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is valid for writes; the pid is our unreaped child.
    let rc = unsafe {
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOWAIT | libc::WNOHANG,
        )
    };
    if rc != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EINTR) {
            return false;
        }
        log::error!("waitid on child {pid}: {err}");
        return true;
    }
    // SAFETY: waitid filled `info` in; with WNOHANG and no exited child, si_pid stays 0.
    unsafe { info.si_pid() != 0 }
}

/// Reaps the child once it has exited (or, called right after a SIGKILL, waits for that): kills
/// what it left in its group while its pid still pins the group id, then reaps it with `wait4`
/// for the rusage, records the [`Exit`] and returns it. The caller wakes the waiters on
/// `shared.exited`: the reaper does so only once it has also read what is left in the pipes, so
/// that a waiting job thread wakes once, not twice.
pub(crate) fn reap(
    shared: &Shared,
    started: Instant,
    kill_group: bool,
    cgroup: Option<Arc<Cgroup>>,
) -> Exit {
    let pid = shared.pid;
    let mut state = shared.lock();
    if kill_group {
        // The leader is a zombie now, which keeps its group id from being reused: whatever it
        // left running in its group is killed before it is reaped.
        if let Err(err) = shared.signal(&state, libc::SIGKILL, true) {
            log::error!("killing what child {pid} left in its group: {err}");
        }
        if let Some(cgroup) = &cgroup {
            cgroup.kill_all();
        }
    }
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value to be overwritten by wait4.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let termination = loop {
        // SAFETY: `status` and `usage` are valid for writes; the pid is our child.
        let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if rc == pid {
            break Termination::from_raw(status);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            // ECHILD: someone else reaped it (a SIGCHLD set to SIG_IGN, a stray waitpid(-1)).
            log::error!("wait4 on child {pid}: {err}; its exit status is lost");
            break Termination::Signaled {
                signal: 0,
                core_dumped: false,
            };
        }
    };
    state.reaped = true;
    let exit = Exit {
        pid: pid as u32,
        termination,
        hung: state.hung,
        dump_signal: state.dump_signal,
        stop_requested: state.stop_requested,
        max_rss_bytes: (usage.ru_maxrss.max(0) as u64).saturating_mul(sys::MAXRSS_UNIT),
        run_time: started.elapsed(),
        memory_cgroup: cgroup.map(|cgroup| cgroup.evidence()),
    };
    state.exit = Some(exit.clone());
    exit
}

/// Where a child's output lines go: a bounded queue to a thread that calls the sink, started
/// with the first line, so a job that writes nothing costs no thread for it.
pub(crate) struct Lines {
    pid: u32,
    /// `None`: nothing wants the lines (or the delivery thread could not start); output is
    /// still read, so that the child never blocks on a full pipe.
    sink: Option<OutputSink>,
    delivery: Option<(Sender<Line>, JoinHandle<()>)>,
    /// Dropped since the last line that was queued.
    dropped: u64,
    dropped_total: Arc<AtomicU64>,
}

impl std::fmt::Debug for Lines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lines")
            .field("pid", &self.pid)
            .field("sink", &self.sink.is_some())
            .field("delivering", &self.delivery.is_some())
            .field("dropped", &self.dropped)
            .finish()
    }
}

impl Lines {
    /// Appends `bytes` read from `stream` to its `partial` line and emits every line completed
    /// (and pieces of [`MAX_LINE`] bytes of one too long).
    pub(crate) fn split(&mut self, stream: Stream, partial: &mut Vec<u8>, bytes: &[u8]) {
        partial.extend_from_slice(bytes);
        let mut start = 0;
        while let Some(pos) = partial[start..].iter().position(|&b| b == b'\n') {
            self.emit(stream, &partial[start..start + pos]);
            start += pos + 1;
        }
        partial.drain(..start);
        while partial.len() >= MAX_LINE {
            self.emit(stream, &partial[..MAX_LINE]);
            partial.drain(..MAX_LINE);
        }
    }

    pub(crate) fn emit(&mut self, stream: Stream, bytes: &[u8]) {
        let Some(sink) = &self.sink else { return };
        if self.delivery.is_none() {
            let (tx, rx) = crossbeam_channel::bounded::<Line>(LINE_QUEUE);
            let sink = Arc::clone(sink);
            match thread::Builder::new()
                .name(format!("ward-sink-{}", self.pid))
                .spawn(move || deliver(&rx, &sink))
            {
                Ok(handle) => self.delivery = Some((tx, handle)),
                Err(err) => {
                    log::error!("child {}: no output thread: {err}", self.pid);
                    self.sink = None;
                    return;
                }
            }
        }
        let Some((lines, _)) = &self.delivery else {
            return;
        };
        let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        let line = Line {
            pid: self.pid,
            stream,
            text: String::from_utf8_lossy(bytes).into_owned(),
            dropped_before: self.dropped,
        };
        match lines.try_send(line) {
            Ok(()) => self.dropped = 0,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped += 1;
                self.dropped_total.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Closes the queue and waits until the sink has had every queued line.
    fn finish(&mut self) {
        if let Some((lines, handle)) = self.delivery.take() {
            drop(lines);
            if handle.join().is_err() {
                log::error!("the output thread of child {} panicked", self.pid);
            }
        }
        let dropped = self.dropped_total.load(Ordering::Relaxed);
        if dropped > 0 {
            log::warn!(
                "child {}: {dropped} output lines dropped, the sink was too slow",
                self.pid
            );
        }
    }
}

/// Calls the sink for each line; a panicking sink loses that line, not the thread.
fn deliver(lines: &Receiver<Line>, sink: &OutputSink) {
    for line in lines {
        if panic::catch_unwind(AssertUnwindSafe(|| sink(&line))).is_err() {
            log::error!("the output sink of child {} panicked", line.pid);
        }
    }
}

pub(crate) fn read_fd(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is valid for writes of its length; `fd` is an open descriptor we own.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

//! A running child: spawning it in its own process group, the threads that reap it, read its
//! output and watch its heartbeat, signalling it, and stopping it with SIGTERM then SIGKILL.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::panic::{self, AssertUnwindSafe};
use std::path::Path;
use std::process::ChildStdin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::spec::{HEARTBEAT_FD_ENV, Line, Output, OutputSink, Stream, Watchdog};
use crate::sys::{self, Cgroup, Spawned};
use crate::{ChildSpec, Error, Exit, Result, Termination};

/// Lines queued between the reader and a slow sink before new lines are dropped.
const LINE_QUEUE: usize = 1024;
/// Longer lines are delivered in pieces of this size, so one endless line cannot grow memory.
const MAX_LINE: usize = 16 * 1024;
/// After the child is reaped, output still buffered in the pipes is read for at most this long
/// (a descendant that escaped the group could keep a pipe open forever).
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(200);
/// How long a SIGKILLed child may take to be reaped before we report it as unkillable.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// Called on the reaper thread once the child is reaped.
pub(crate) type OnExit = Box<dyn FnOnce(&Exit) + Send>;

#[derive(Debug, Default)]
struct State {
    /// Set under the lock right after `wait4` reaped the child: from then on its pid may belong
    /// to another process, so no signal is sent to it.
    reaped: bool,
    exit: Option<Exit>,
    hung: bool,
    stop_requested: bool,
}

#[derive(Debug)]
struct Shared {
    pid: libc::pid_t,
    state: Mutex<State>,
    exited: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Signals the child's group (or just the child) unless it has been reaped already.
    fn signal(&self, state: &State, signal: i32, group: bool) -> Result<()> {
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

    fn wait_until(&self, deadline: Option<Instant>) -> Option<Exit> {
        let mut state = self.lock();
        loop {
            if let Some(exit) = &state.exit {
                return Some(exit.clone());
            }
            match deadline {
                None => {
                    state = self
                        .exited
                        .wait(state)
                        .unwrap_or_else(PoisonError::into_inner)
                }
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return None;
                    }
                    state = self
                        .exited
                        .wait_timeout(state, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
            }
        }
    }
}

/// A running (or finished, not yet dropped) child process.
///
/// Dropping it kills the child's group if the child is still running, waits for the reap and
/// joins its threads: a `Child` never leaves a zombie or an orphan behind.
///
/// The parent-death signal is tied to the thread that called [`Child::spawn`]: Linux sends it
/// when that *thread* exits, not the process. Spawn from a thread that lives as long as the child
/// should (the [`Supervisor`](crate::Supervisor) has one).
#[derive(Debug)]
pub struct Child {
    shared: Arc<Shared>,
    started: Instant,
    stdin: Option<ChildStdin>,
    cgroup: Option<Arc<Cgroup>>,
    /// Output lines dropped because the sink fell behind, in total.
    dropped_lines: Arc<AtomicU64>,
    reaper: Option<JoinHandle<()>>,
    reader: Option<JoinHandle<()>>,
    delivery: Option<JoinHandle<()>>,
}

impl Child {
    /// Starts the child described by `spec`.
    ///
    /// # Errors
    /// [`Error::Spawn`] if the program cannot be started or a limit cannot be applied,
    /// [`Error::NoMemoryCgroup`] / [`Error::Cgroup`] if a memory limit was asked for and cannot be
    /// set up, [`Error::Unsupported`] off Linux, [`Error::Os`] if a pipe or thread cannot be made.
    pub fn spawn(spec: &ChildSpec) -> Result<Child> {
        Child::spawn_notify(spec, None)
    }

    pub(crate) fn spawn_notify(spec: &ChildSpec, on_exit: Option<OnExit>) -> Result<Child> {
        let cgroup = spec
            .memory_max
            .map(sys::create_memory_cgroup)
            .transpose()?
            .map(Arc::new);
        // The reaper wakes the reader through this pipe once the child is gone; made before the
        // spawn so that failing to make it fails the spawn instead of losing output.
        let needs_reader = matches!(spec.output, Output::Capture(_)) || spec.watchdog.is_some();
        let wake = match needs_reader.then(sys::pipe).transpose() {
            Ok(wake) => wake,
            Err(err) => {
                if let Some(cgroup) = &cgroup {
                    cgroup.remove();
                }
                return Err(err);
            }
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
            spec, process, heartbeat, wake, cgroup, on_exit,
        ))
    }

    fn adopt(
        spec: &ChildSpec,
        process: Spawned,
        heartbeat: Option<OwnedFd>,
        wake: Option<(OwnedFd, OwnedFd)>,
        cgroup: Option<Arc<Cgroup>>,
        on_exit: Option<OnExit>,
    ) -> Child {
        let started = Instant::now();
        let shared = Arc::new(Shared {
            pid: process.pid,
            state: Mutex::new(State::default()),
            exited: Condvar::new(),
        });
        let stdin = process.stdin.map(ChildStdin::from);
        let (stdout, stderr) = (process.stdout, process.stderr);

        let mut child = Child {
            shared: Arc::clone(&shared),
            started,
            stdin,
            cgroup: cgroup.clone(),
            dropped_lines: Arc::new(AtomicU64::new(0)),
            reaper: None,
            reader: None,
            delivery: None,
        };
        let sink = match &spec.output {
            Output::Capture(sink) => Some(Arc::clone(sink)),
            Output::Inherit | Output::Null => None,
        };
        let watchdog = spec.watchdog.zip(heartbeat);
        let (wake_read, wake_write) = match wake {
            Some((r, w)) => (Some(r), Some(w)),
            None => (None, None),
        };

        let reaper_shared = Arc::clone(&shared);
        let kill_group = spec.kill_group_on_exit;
        let reaper = thread::Builder::new()
            .name(format!("ward-reap-{}", shared.pid))
            .spawn(move || {
                reap(
                    &reaper_shared,
                    started,
                    kill_group,
                    cgroup,
                    wake_write,
                    on_exit,
                )
            });
        match reaper {
            Ok(handle) => child.reaper = Some(handle),
            Err(err) => {
                // Without a reaper the child would become a zombie: kill and reap it right here.
                log::error!(
                    "child {}: cannot start the reaper thread: {err}",
                    shared.pid
                );
                let state = shared.lock();
                if let Err(err) = shared.signal(&state, libc::SIGKILL, true) {
                    log::error!("child {}: {err}", shared.pid);
                }
                drop(state);
                reap(&shared, started, kill_group, None, None, None);
                return child;
            }
        }

        if let Some(wake_read) = wake_read {
            let (tx, rx) = crossbeam_channel::bounded::<Line>(LINE_QUEUE);
            if let Some(sink) = sink {
                match thread::Builder::new()
                    .name(format!("ward-sink-{}", shared.pid))
                    .spawn(move || deliver(&rx, &sink))
                {
                    Ok(handle) => child.delivery = Some(handle),
                    Err(err) => log::error!("child {}: no output thread: {err}", shared.pid),
                }
            }
            let reader_shared = Arc::clone(&shared);
            let reader = Reader {
                shared: reader_shared,
                lines: tx,
                streams: [
                    stdout.map(|fd| (fd, Stream::Stdout, Vec::new())),
                    stderr.map(|fd| (fd, Stream::Stderr, Vec::new())),
                ],
                watchdog,
                wake: wake_read,
                dropped: 0,
                dropped_total: Arc::clone(&child.dropped_lines),
            };
            match thread::Builder::new()
                .name(format!("ward-read-{}", shared.pid))
                .spawn(move || reader.run(started))
            {
                Ok(handle) => child.reader = Some(handle),
                Err(err) => log::error!("child {}: no reader thread: {err}", shared.pid),
            }
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
        self.shared.lock().exit.clone()
    }

    /// Waits for the child to exit.
    pub fn wait(&self) -> Exit {
        match self.shared.wait_until(None) {
            Some(exit) => exit,
            None => unreachable!("waiting without a deadline returns only with an exit"),
        }
    }

    /// Waits at most `timeout` for the child to exit.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<Exit> {
        self.shared.wait_until(Some(Instant::now() + timeout))
    }

    /// Stops the child: SIGTERM to its group, up to `grace` for it to exit, then SIGKILL to the
    /// group, and waits for the reap.
    ///
    /// # Errors
    /// [`Error::Os`] if a signal cannot be sent, [`Error::Unkillable`] if the child is still not
    /// reaped 10 s after SIGKILL (stuck in the kernel).
    pub fn stop(&self, grace: Duration) -> Result<Exit> {
        self.begin_stop()?;
        self.finish_stop(Instant::now() + grace)
    }

    /// The first half of [`stop`](Self::stop): marks the stop as requested and sends SIGTERM to
    /// the group. Lets a caller stop many children in parallel.
    ///
    /// # Errors
    /// [`Error::Os`] if the signal cannot be sent.
    pub fn begin_stop(&self) -> Result<()> {
        let mut state = self.shared.lock();
        if !state.reaped {
            state.stop_requested = true;
        }
        self.shared.signal(&state, libc::SIGTERM, true)
    }

    /// The second half of [`stop`](Self::stop): waits until `deadline`, then SIGKILLs the group
    /// and waits for the reap.
    ///
    /// # Errors
    /// As [`stop`](Self::stop).
    pub fn finish_stop(&self, deadline: Instant) -> Result<Exit> {
        if let Some(exit) = self.shared.wait_until(Some(deadline)) {
            return Ok(exit);
        }
        self.kill_and_wait()
    }

    fn kill_and_wait(&self) -> Result<Exit> {
        {
            let mut state = self.shared.lock();
            if !state.reaped {
                state.stop_requested = true;
            }
            self.shared.signal(&state, libc::SIGKILL, true)?;
        }
        self.shared
            .wait_until(Some(Instant::now() + KILL_WAIT))
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
                    log::error!(
                        "dropping child {}: {err}; leaving its threads behind",
                        self.id()
                    );
                    false
                }
            },
        };
        if reaped {
            for handle in [self.reaper.take(), self.reader.take(), self.delivery.take()]
                .into_iter()
                .flatten()
            {
                if handle.join().is_err() {
                    log::error!("a thread of child {} panicked", self.id());
                }
            }
        }
        if let Some(cgroup) = &self.cgroup {
            cgroup.remove();
        }
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

/// The reaper thread: waits for the child to exit *without* reaping it (so its pid and group id
/// stay ours), kills what it left in its group, then reaps it with `wait4` for the rusage.
fn reap(
    shared: &Shared,
    started: Instant,
    kill_group: bool,
    cgroup: Option<Arc<Cgroup>>,
    wake: Option<OwnedFd>,
    on_exit: Option<OnExit>,
) {
    let pid = shared.pid;
    loop {
        // SAFETY: an all-zero siginfo_t is a valid value to be overwritten by waitid.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is valid for writes; the pid is our unreaped child.
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if rc == 0 {
            break;
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            // Fall through to wait4, which blocks as well; nothing better to do.
            log::error!("waitid on child {pid}: {err}");
            break;
        }
    }
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
        stop_requested: state.stop_requested,
        max_rss_bytes: (usage.ru_maxrss.max(0) as u64).saturating_mul(sys::MAXRSS_UNIT),
        run_time: started.elapsed(),
        memory_cgroup: cgroup.map(|cgroup| cgroup.evidence()),
    };
    state.exit = Some(exit.clone());
    drop(state);
    shared.exited.notify_all();
    if let Some(wake) = wake
        && let Err(err) = File::from(wake).write_all(b"x")
    {
        log::error!("waking the reader of child {pid}: {err}");
    }
    if let Some(on_exit) = on_exit {
        on_exit(&exit);
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

/// The reader thread: reads stdout and stderr into lines, drains heartbeats and enforces the
/// watchdog, until the child is reaped and its pipes are drained.
struct Reader {
    shared: Arc<Shared>,
    lines: Sender<Line>,
    /// Open streams with their partial line.
    streams: [Option<(OwnedFd, Stream, Vec<u8>)>; 2],
    watchdog: Option<(Watchdog, OwnedFd)>,
    wake: OwnedFd,
    /// Dropped since the last line that was queued.
    dropped: u64,
    dropped_total: Arc<AtomicU64>,
}

impl Reader {
    fn run(mut self, started: Instant) {
        let mut last_beat = started;
        let mut aborted_at: Option<Instant> = None;
        let mut killed = false;
        let mut heartbeat_open = self.watchdog.is_some();
        let mut drain_until: Option<Instant> = None;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let now = Instant::now();
            if drain_until.is_some_and(|until| now >= until) {
                self.final_drain(&mut buf);
                break;
            }
            // Watchdog: silence → SIGABRT to the child, grace → SIGKILL to the group.
            let mut timeout: Option<Duration> = drain_until.map(|until| until - now);
            if let (Some((dog, _)), None) = (&self.watchdog, drain_until) {
                let dog = *dog;
                if let Some(at) = aborted_at {
                    if !killed && now >= at + dog.abort_grace {
                        let state = self.shared.lock();
                        if let Err(err) = self.shared.signal(&state, libc::SIGKILL, true) {
                            log::error!("watchdog kill of child {}: {err}", self.shared.pid);
                        }
                        killed = true;
                    } else if !killed {
                        timeout = Some(at + dog.abort_grace - now);
                    }
                } else if now >= last_beat + dog.timeout {
                    let mut state = self.shared.lock();
                    if !state.reaped {
                        state.hung = true;
                        log::warn!(
                            "child {} sent no heartbeat for {:?}: SIGABRT",
                            self.shared.pid,
                            dog.timeout
                        );
                    }
                    if let Err(err) = self.shared.signal(&state, libc::SIGABRT, false) {
                        log::error!("watchdog abort of child {}: {err}", self.shared.pid);
                    }
                    aborted_at = Some(now);
                    timeout = Some(dog.abort_grace);
                } else {
                    timeout = Some(last_beat + dog.timeout - now);
                }
            }

            let mut fds = Vec::with_capacity(4);
            fds.push(pollfd(if drain_until.is_some() {
                -1
            } else {
                self.wake.as_raw_fd()
            }));
            for stream in &self.streams {
                fds.push(pollfd(
                    stream.as_ref().map_or(-1, |(fd, _, _)| fd.as_raw_fd()),
                ));
            }
            let beat_fd = match &self.watchdog {
                Some((_, fd)) if heartbeat_open => fd.as_raw_fd(),
                _ => -1,
            };
            fds.push(pollfd(beat_fd));
            if fds.iter().all(|p| p.fd < 0) {
                break;
            }
            let millis = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as i32 + 1);
            // SAFETY: `fds` is a valid array of pollfd of the given length.
            let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, millis) };
            if ready < 0 {
                let err = io::Error::last_os_error();
                if err.raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                log::error!("poll on child {} output: {err}", self.shared.pid);
                break;
            }
            if fds[0].revents != 0 {
                drain_until = Some(Instant::now() + DRAIN_AFTER_EXIT);
            }
            for i in 0..2 {
                if fds[i + 1].revents != 0 {
                    self.read_stream(i, &mut buf);
                }
            }
            if fds[3].revents != 0
                && let Some((_, fd)) = &self.watchdog
            {
                match read_fd(fd.as_raw_fd(), &mut buf) {
                    // EOF: nothing will write heartbeats any more; silence runs its course.
                    Ok(0) | Err(_) => heartbeat_open = false,
                    Ok(_) => last_beat = Instant::now(),
                }
            }
            if drain_until.is_some() && self.streams.iter().all(Option::is_none) {
                break;
            }
        }
        for i in 0..2 {
            self.flush_partial(i);
        }
        let dropped = self.dropped_total.load(Ordering::Relaxed);
        if dropped > 0 {
            log::warn!(
                "child {}: {dropped} output lines dropped, the sink was too slow",
                self.shared.pid
            );
        }
    }

    /// Reads what is already in the pipes without waiting for more: a descendant that escaped
    /// the group may hold them open, but output written before the exit must not be lost just
    /// because this thread was scheduled late.
    fn final_drain(&mut self, buf: &mut [u8]) {
        // Bounded, since such a descendant may also keep writing.
        for _ in 0..64 {
            let mut fds: Vec<libc::pollfd> = self
                .streams
                .iter()
                .map(|s| pollfd(s.as_ref().map_or(-1, |(fd, _, _)| fd.as_raw_fd())))
                .collect();
            // SAFETY: `fds` is a valid array of pollfd of the given length.
            let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 0) };
            if ready <= 0 {
                return;
            }
            for (i, fd) in fds.iter().enumerate() {
                if fd.revents != 0 {
                    self.read_stream(i, buf);
                }
            }
        }
    }

    fn read_stream(&mut self, i: usize, buf: &mut [u8]) {
        let Some((fd, _, _)) = &self.streams[i] else {
            return;
        };
        match read_fd(fd.as_raw_fd(), buf) {
            Ok(0) | Err(_) => {
                self.flush_partial(i);
                self.streams[i] = None;
            }
            Ok(n) => {
                let mut emitted = Vec::new();
                if let Some((_, stream, partial)) = &mut self.streams[i] {
                    partial.extend_from_slice(&buf[..n]);
                    let mut start = 0;
                    while let Some(pos) = partial[start..].iter().position(|&b| b == b'\n') {
                        emitted.push((*stream, partial[start..start + pos].to_vec()));
                        start += pos + 1;
                    }
                    partial.drain(..start);
                    while partial.len() >= MAX_LINE {
                        emitted.push((*stream, partial.drain(..MAX_LINE).collect()));
                    }
                }
                for (stream, bytes) in emitted {
                    self.emit(stream, &bytes);
                }
            }
        }
    }

    fn flush_partial(&mut self, i: usize) {
        if let Some((_, stream, partial)) = &mut self.streams[i]
            && !partial.is_empty()
        {
            let (stream, bytes) = (*stream, std::mem::take(partial));
            self.emit(stream, &bytes);
        }
    }

    fn emit(&mut self, stream: Stream, bytes: &[u8]) {
        let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        let line = Line {
            pid: self.shared.pid as u32,
            stream,
            text: String::from_utf8_lossy(bytes).into_owned(),
            dropped_before: self.dropped,
        };
        match self.lines.try_send(line) {
            Ok(()) => self.dropped = 0,
            Err(TrySendError::Full(_)) => {
                self.dropped += 1;
                self.dropped_total.fetch_add(1, Ordering::Relaxed);
            }
            // No sink thread: output is read only so the child never blocks on a full pipe.
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

fn pollfd(fd: RawFd) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

fn read_fd(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
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

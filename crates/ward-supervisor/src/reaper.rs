//! The [`Reaper`]: one thread that watches any number of children in a single `epoll` set (each
//! child's exit through its pidfd, its output pipes, its heartbeats), reaps each as soon as it
//! exits, and reads its output into lines. An inline reaper has no thread and watches one child,
//! whose descriptors the thread waiting for it `poll`s. Spawning through a reaper starts no thread;
//! what spawning is, and the [`Child`] handle, live in `child`.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::child::{self, Child, Lines, OnExit, Shared};
use crate::spec::{Stream, Watchdog};
use crate::sys::Cgroup;
use crate::{ChildSpec, Error, Exit, Result};

/// After the child is reaped, output still buffered in the pipes is read for at most this long
/// (a descendant that escaped the group could keep a pipe open forever).
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(200);
/// The same after a death (an exit that is not clean, nor a stop that was asked for): its last
/// words, which a crash report is made from, matter more than the time.
const DRAIN_AFTER_DEATH: Duration = Duration::from_secs(2);
/// Without a pidfd (kernels before 5.3), how often the reaper checks whether a child exited.
const EXIT_CHECK: Duration = Duration::from_millis(10);
/// Once the reaper is dropped, how long its SIGKILLed children may take to be reaped before it
/// gives up on them and ends anyway.
const STOP_WAIT: Duration = Duration::from_secs(10);
/// The epoll token of the wake-up eventfd; children's tokens are `id << 2 | what`.
const WAKE: u64 = u64::MAX;
/// What a child's descriptor is, in the low two bits of its epoll token.
const EXIT: u64 = 0;
const STDOUT: u64 = 1;
const STDERR: u64 = 2;
const BEAT: u64 = 3;

/// Watches and reaps children on one thread of its own.
///
/// [`Reaper::spawn`] starts a child whose exit, output and heartbeats this reaper's thread
/// watches, together with every other child it has: spawning one starts no thread (a child that
/// writes output still gets one that feeds its sink). [`Child::spawn`] makes a reaper for each
/// child; a caller that runs many short children (a job dispatcher, a [`Supervisor`]) keeps one.
///
/// Dropping the reaper SIGKILLs the group of every child still running (the [`Exit`] says
/// `stop_requested`), reaps them and joins the thread: drop the [`Child`] handles first to stop
/// children gently.
///
/// [`Supervisor`]: crate::Supervisor
#[derive(Debug)]
pub struct Reaper {
    inner: Arc<Inner>,
    /// The thread that turns the loop; `None` for an inline reaper.
    thread: Option<JoinHandle<()>>,
    /// An inline reaper's scratch space: whichever thread holds it turns the loop.
    inline: Option<Mutex<Turns>>,
}

#[derive(Debug)]
struct Inner {
    /// The set the thread waits in, and an eventfd in it, written to wake the thread (a new
    /// deadline, the stop). An inline reaper has neither: it watches one child, whose few
    /// descriptors the turning thread `poll`s, and that thread knows the deadlines.
    epoll: Option<(OwnedFd, OwnedFd)>,
    watched: Mutex<Watched>,
}

#[derive(Debug, Default)]
struct Watched {
    children: HashMap<u64, Watch>,
    next_id: u64,
    /// Set by the drop: kill what runs, reap it, end.
    stopping: bool,
    /// Cleared when the thread ends (even by a panic): nothing could reap a child added then.
    running: bool,
}

impl Inner {
    fn new(threaded: bool) -> Result<Arc<Inner>> {
        let epoll = if threaded {
            // SAFETY: epoll_create1 takes flags and returns a new descriptor or -1.
            let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
            if epoll < 0 {
                return Err(Error::os("epoll_create1"));
            }
            // SAFETY: epoll_create1 succeeded: a fresh descriptor nothing else owns.
            let epoll = unsafe { OwnedFd::from_raw_fd(epoll) };
            // SAFETY: eventfd takes an initial value and flags and returns a new descriptor or -1.
            let wake = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
            if wake < 0 {
                return Err(Error::os("eventfd"));
            }
            // SAFETY: eventfd succeeded: a fresh descriptor nothing else owns.
            Some((epoll, unsafe { OwnedFd::from_raw_fd(wake) }))
        } else {
            None
        };
        let inner = Arc::new(Inner {
            epoll,
            watched: Mutex::new(Watched {
                running: true,
                ..Watched::default()
            }),
        });
        if let Some((_, wake)) = &inner.epoll {
            inner
                .control(libc::EPOLL_CTL_ADD, wake.as_raw_fd(), WAKE)
                .map_err(|source| Error::Os {
                    what: "epoll_ctl",
                    source,
                })?;
        }
        Ok(inner)
    }

    fn lock(&self) -> MutexGuard<'_, Watched> {
        self.watched.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wake(&self) {
        let Some((_, wake)) = &self.epoll else { return };
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a valid buffer to our eventfd. It can only fail when the
        // counter is about to overflow, and then the thread has a wake-up pending anyway.
        unsafe { libc::write(wake.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    }

    /// Adds a descriptor to the epoll set or takes one out (nothing to do inline).
    fn control(&self, op: libc::c_int, fd: RawFd, token: u64) -> io::Result<()> {
        let Some((epoll, _)) = &self.epoll else {
            return Ok(());
        };
        let mut event = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: `event` is valid for the call; both descriptors are open.
        if unsafe { libc::epoll_ctl(epoll.as_raw_fd(), op, fd, &mut event) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn forget(&self, fd: &OwnedFd) {
        if let Err(err) = self.control(libc::EPOLL_CTL_DEL, fd.as_raw_fd(), 0) {
            log::error!(
                "removing descriptor {} from the reaper: {err}",
                fd.as_raw_fd()
            );
        }
    }
}

impl Reaper {
    /// Starts the reaper's thread.
    ///
    /// # Errors
    /// [`Error::Os`] if the epoll set, its eventfd or the thread cannot be made.
    pub fn new() -> Result<Reaper> {
        let inner = Inner::new(true)?;
        let thread = {
            let inner = Arc::clone(&inner);
            thread::Builder::new()
                .name("ward-reaper".into())
                .spawn(move || {
                    let _running = Running(&inner);
                    let mut turns = Turns::new(64 * 1024, 64);
                    while !turn(&inner, &mut turns, None) {}
                })
                .map_err(|source| Error::Os {
                    what: "spawning the reaper thread",
                    source,
                })?
        };
        Ok(Reaper {
            inner,
            thread: Some(thread),
            inline: None,
        })
    }

    /// A reaper without a thread for one child: the threads that wait for it turn its loop while
    /// they wait (see [`Child::spawn_inline`]).
    pub(crate) fn inline() -> Result<Reaper> {
        Ok(Reaper {
            inner: Inner::new(false)?,
            thread: None,
            // One child, usually quiet: a small buffer, quick to allocate for each child.
            inline: Some(Mutex::new(Turns::new(4 * 1024, 8))),
        })
    }

    /// An inline reaper's loop, if no other thread is turning it right now.
    pub(crate) fn try_drive(&self) -> Option<MutexGuard<'_, Turns>> {
        match self.inline.as_ref()?.try_lock() {
            Ok(turns) => Some(turns),
            // A turn that panicked (in a sink or a callback, on a waiting thread) must not leave
            // the child with nobody to reap it: its scratch space is still sound.
            Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    /// One turn of an inline reaper's loop, waiting at most until `until` for something to do.
    pub(crate) fn turn(&self, turns: &mut Turns, until: Option<Instant>) {
        turn(&self.inner, turns, until);
    }

    /// Whether the threads that wait turn this reaper's loop.
    pub(crate) fn is_inline(&self) -> bool {
        self.inline.is_some()
    }

    /// Starts the child described by `spec`, watched by this reaper.
    ///
    /// As with [`Child::spawn`], the parent-death signal is tied to the *calling* thread.
    ///
    /// # Errors
    /// As [`Child::spawn`].
    pub fn spawn(&self, spec: &ChildSpec) -> Result<Child> {
        Child::spawn_in(spec, self, None)
    }

    pub(crate) fn spawn_notify(&self, spec: &ChildSpec, on_exit: Option<OnExit>) -> Result<Child> {
        Child::spawn_in(spec, self, on_exit)
    }

    /// Children this reaper is watching right now (running, or exited with output still being
    /// drained).
    pub fn watched(&self) -> usize {
        self.inner.lock().children.len()
    }

    /// Hands a freshly spawned child to the thread; gives it back if the thread has ended.
    pub(crate) fn watch(&self, mut watch: Watch) -> std::result::Result<(), Box<Watch>> {
        let inner = &self.inner;
        let mut watched = inner.lock();
        if !watched.running || watched.stopping {
            return Err(Box::new(watch));
        }
        let id = watched.next_id;
        watched.next_id += 1;
        watch.id = id;
        // Registered in the set under the lock, so that no event arrives for an unknown child.
        // An inline reaper has no set: its one child's descriptors are polled at each turn.
        let mut fds = Vec::new();
        if inner.epoll.is_some() {
            watch.descriptors(&mut fds);
        }
        let mut added: Vec<RawFd> = Vec::new();
        let mut result = Ok(());
        for (fd, token) in fds {
            result = inner.control(libc::EPOLL_CTL_ADD, fd.fd, token);
            if result.is_err() {
                break;
            }
            added.push(fd.fd);
        }
        if let Err(err) = result {
            log::error!("child {}: cannot watch it: {err}", watch.shared.pid);
            for fd in added {
                let _ = inner.control(libc::EPOLL_CTL_DEL, fd, 0);
            }
            return Err(Box::new(watch));
        }
        let wake = watch.deadline(Instant::now()).is_some();
        watched.children.insert(id, watch);
        drop(watched);
        if wake {
            // The thread may be waiting with a longer timeout than this child's first deadline.
            inner.wake();
        }
        Ok(())
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        self.inner.lock().stopping = true;
        self.inner.wake();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            log::error!("the reaper thread panicked");
        }
        if let Some(turns) = &mut self.inline {
            let turns = turns.get_mut().unwrap_or_else(PoisonError::into_inner);
            while !turn(&self.inner, turns, None) {}
            drop(Running(&self.inner));
        }
    }
}

/// Marks the reaper as ended when its thread returns or unwinds.
struct Running<'a>(&'a Inner);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let mut watched = self.0.lock();
        watched.running = false;
        if !watched.children.is_empty() {
            log::error!(
                "the reaper ends with {} child(ren) it could not reap",
                watched.children.len()
            );
        }
    }
}

/// Scratch space of a reaper's loop.
pub(crate) struct Turns {
    buf: Vec<u8>,
    /// What is ready, as epoll reports it (an inline reaper's `poll` results are copied here).
    events: Vec<libc::epoll_event>,
    /// Inline: the descriptors to `poll`, with their tokens.
    polled: Vec<(libc::pollfd, u64)>,
    exited: Vec<(OnExit, Exit)>,
    /// Once the reaper is dropped: when it stops waiting for children that will not die.
    give_up_at: Option<Instant>,
}

impl std::fmt::Debug for Turns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Turns")
            .field("exited", &self.exited.len())
            .field("give_up_at", &self.give_up_at)
            .finish_non_exhaustive()
    }
}

impl Turns {
    fn new(buf: usize, events: usize) -> Turns {
        Turns {
            buf: vec![0; buf],
            events: vec![libc::epoll_event { events: 0, u64: 0 }; events],
            polled: Vec::new(),
            exited: Vec::new(),
            give_up_at: None,
        }
    }
}

/// One turn of the loop: waits (at most until `until`) for exits, output, heartbeats and
/// deadlines, and handles them. Returns whether the reaper is done: dropped, and every child
/// reaped or given up on.
fn turn(inner: &Inner, turns: &mut Turns, until: Option<Instant>) -> bool {
    let Turns {
        buf,
        events,
        polled,
        exited,
        give_up_at,
    } = turns;
    let timeout = {
        let watched = inner.lock();
        if inner.epoll.is_none() {
            polled.clear();
            for watch in watched.children.values() {
                watch.descriptors(polled);
            }
        }
        let now = Instant::now();
        // Dropped: kill what runs at once, or end at once if nothing does.
        let stop_now = watched.stopping && (give_up_at.is_none() || watched.children.is_empty());
        watched
            .children
            .values()
            .filter_map(|watch| watch.deadline(now))
            .chain(*give_up_at)
            .chain(until)
            .chain(stop_now.then_some(now))
            .min()
            .map_or(-1, |at| {
                let left = at.saturating_duration_since(now);
                if left.is_zero() {
                    return 0;
                }
                // Rounded up: waking a little late is fine, spinning before a deadline is not.
                left.as_millis().min(i32::MAX as u128 - 1) as i32 + 1
            })
    };
    let ready = match &inner.epoll {
        // SAFETY: `events` is valid for writes of its length.
        Some((epoll, _)) => unsafe {
            libc::epoll_wait(
                epoll.as_raw_fd(),
                events.as_mut_ptr(),
                events.len() as libc::c_int,
                timeout,
            )
        },
        None => poll(polled, events, timeout),
    };
    let ready = if ready < 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            log::error!("waiting for children in the reaper: {err}");
            // Not a busy loop: the next wait has the same bounded timeout.
            thread::sleep(EXIT_CHECK);
        }
        &[][..]
    } else {
        &events[..ready as usize]
    };

    let mut watched = inner.lock();
    // Exits first: the exit is published as soon as it happens, and the group kill closes
    // the pipes a descendant may still hold, before their output is read.
    for pass in [Pass::Exits, Pass::Rest] {
        for event in ready {
            let token = event.u64;
            if token == WAKE {
                if pass == Pass::Exits
                    && let Some((_, wake)) = &inner.epoll
                {
                    drain_eventfd(wake);
                }
                continue;
            }
            let (id, what) = (token >> 2, token & 3);
            if (what == EXIT) != (pass == Pass::Exits) {
                continue;
            }
            // Events of a child finished earlier in this batch are stale.
            let Some(watch) = watched.children.get_mut(&id) else {
                continue;
            };
            match what {
                EXIT => watch.exit_ready(inner, exited, buf),
                STDOUT => watch.read_stream(inner, 0, buf),
                STDERR => watch.read_stream(inner, 1, buf),
                _ => watch.read_heartbeat(inner, buf),
            }
        }
    }
    let now = Instant::now();
    for watch in watched.children.values_mut() {
        watch.tick(inner, now, exited, buf);
    }
    if watched.stopping && give_up_at.is_none() {
        *give_up_at = Some(now + STOP_WAIT);
        for watch in watched.children.values() {
            watch.kill_for_stop();
        }
    }
    watched.children.retain(|_, watch| {
        if !watch.finished() {
            return true;
        }
        watch.hand_over();
        false
    });
    let stop =
        watched.stopping && (watched.children.is_empty() || give_up_at.is_some_and(|at| now >= at));
    drop(watched);
    // Outside the lock: a callback may spawn through this reaper.
    for (on_exit, exit) in exited.drain(..) {
        if panic::catch_unwind(AssertUnwindSafe(|| on_exit(&exit))).is_err() {
            log::error!("the exit callback of child {} panicked", exit.pid);
        }
    }
    stop
}

/// An inline reaper's wait: `poll` on the descriptors of `polled`, whose ready ones are written
/// to `events` as epoll would have reported them. Returns their number, or -1 with errno set.
fn poll(
    polled: &mut [(libc::pollfd, u64)],
    events: &mut Vec<libc::epoll_event>,
    timeout: libc::c_int,
) -> libc::c_int {
    debug_assert!(polled.len() <= 4, "an inline reaper watches one child");
    let mut fds: [libc::pollfd; 4] = [libc::pollfd {
        fd: -1,
        events: 0,
        revents: 0,
    }; 4];
    let n = polled.len().min(fds.len());
    for (slot, (fd, _)) in fds.iter_mut().zip(polled.iter()) {
        *slot = *fd;
    }
    // SAFETY: `fds` is valid for reads and writes of `n` entries.
    let ready = unsafe { libc::poll(fds.as_mut_ptr(), n as libc::nfds_t, timeout) };
    if ready <= 0 {
        return ready;
    }
    events.clear();
    for (fd, (_, token)) in fds[..n].iter().zip(polled.iter()) {
        if fd.revents != 0 {
            events.push(libc::epoll_event {
                events: fd.revents as u32,
                u64: *token,
            });
        }
    }
    events.len() as libc::c_int
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pass {
    Exits,
    Rest,
}

fn drain_eventfd(fd: &OwnedFd) {
    let mut value = [0u8; 8];
    // SAFETY: reads 8 bytes into a valid buffer from our nonblocking eventfd.
    unsafe { libc::read(fd.as_raw_fd(), value.as_mut_ptr().cast(), value.len()) };
}

/// One child as the reaper sees it: its exit, its streams with their partial lines, its
/// heartbeat and the watchdog's progress.
pub(crate) struct Watch {
    id: u64,
    pub(crate) shared: Arc<Shared>,
    started: Instant,
    /// Readable once the child has exited; `None` without pidfds (then checked every
    /// [`EXIT_CHECK`]).
    exit_fd: Option<OwnedFd>,
    pub(crate) kill_group: bool,
    pub(crate) cgroup: Option<Arc<Cgroup>>,
    pub(crate) on_exit: Option<OnExit>,
    /// Open streams with their partial line.
    streams: [Option<(OwnedFd, Stream, Vec<u8>)>; 2],
    watchdog: Option<Watchdog>,
    /// The parent's end of the heartbeat pipe, while it is open and the child runs.
    heartbeat: Option<OwnedFd>,
    lines: Option<Lines>,
    last_beat: Instant,
    aborted_at: Option<Instant>,
    killed: bool,
    /// Set once the child is reaped: until then, output still in the pipes is read.
    drain_until: Option<Instant>,
    /// Set once nothing is left to watch.
    done: bool,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("pid", &self.shared.pid)
            .field("running", &self.running())
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl Watch {
    #[allow(clippy::too_many_arguments)] // One per part of a freshly spawned child.
    pub(crate) fn new(
        shared: Arc<Shared>,
        started: Instant,
        kill_group: bool,
        cgroup: Option<Arc<Cgroup>>,
        on_exit: Option<OnExit>,
        exit_fd: Option<OwnedFd>,
        streams: [Option<(OwnedFd, Stream)>; 2],
        watchdog: Option<(Watchdog, OwnedFd)>,
        lines: Lines,
    ) -> Watch {
        let (watchdog, heartbeat) = watchdog.unzip();
        Watch {
            id: 0,
            exit_fd,
            shared,
            started,
            kill_group,
            cgroup,
            on_exit,
            streams: streams.map(|s| s.map(|(fd, stream)| (fd, stream, Vec::new()))),
            watchdog,
            heartbeat,
            lines: Some(lines),
            last_beat: started,
            aborted_at: None,
            killed: false,
            drain_until: None,
            done: false,
        }
    }

    /// The descriptors to wait on (at most four), each with its token.
    fn descriptors(&self, out: &mut Vec<(libc::pollfd, u64)>) {
        let fds = [
            self.exit_fd.as_ref().map(|fd| (fd, EXIT)),
            self.streams[0].as_ref().map(|(fd, _, _)| (fd, STDOUT)),
            self.streams[1].as_ref().map(|(fd, _, _)| (fd, STDERR)),
            self.heartbeat.as_ref().map(|fd| (fd, BEAT)),
        ];
        for (fd, what) in fds.into_iter().flatten() {
            let pollfd = libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            out.push((pollfd, self.id << 2 | what));
        }
    }

    fn running(&self) -> bool {
        self.drain_until.is_none()
    }

    /// When [`tick`](Self::tick) has something to do next.
    fn deadline(&self, now: Instant) -> Option<Instant> {
        if self.done {
            return None;
        }
        if let Some(until) = self.drain_until {
            return Some(until);
        }
        let mut at = self.exit_fd.is_none().then(|| now + EXIT_CHECK);
        if let Some(dog) = &self.watchdog {
            let next = match self.aborted_at {
                Some(_) if self.killed => None,
                Some(aborted) => Some(aborted + dog.abort_grace),
                None => Some(self.last_beat + dog.timeout),
            };
            at = at.into_iter().chain(next).min();
        }
        at
    }

    /// The pidfd is readable: reap the child.
    fn exit_ready(&mut self, inner: &Inner, exited: &mut Vec<(OnExit, Exit)>, buf: &mut [u8]) {
        if self.running() && child::has_exited(self.shared.pid) {
            self.reap(inner, exited, buf);
        }
    }

    fn reap(&mut self, inner: &Inner, exited: &mut Vec<(OnExit, Exit)>, buf: &mut [u8]) {
        let exit = child::reap(
            &self.shared,
            self.started,
            self.kill_group,
            self.cgroup.take(),
        );
        let died = !exit.is_clean() && (exit.hung || !exit.stop_requested);
        let drain = if died {
            DRAIN_AFTER_DEATH
        } else {
            DRAIN_AFTER_EXIT
        };
        if let Some(on_exit) = self.on_exit.take() {
            exited.push((on_exit, exit));
        }
        // Readable for good now, and nothing will beat any more: out of the set.
        if let Some(fd) = self.exit_fd.take() {
            inner.forget(&fd);
        }
        if let Some(fd) = self.heartbeat.take() {
            inner.forget(&fd);
        }
        self.drain_until = Some(Instant::now() + drain);
        // Usually the pipes have nothing left but their end: read it now, so that the child is
        // done in this same pass and its waiters wake once, to both the exit and the output.
        self.drain_ready(inner, buf);
        self.done = self.streams.iter().all(Option::is_none);
        if !self.done {
            // Something still holds a pipe open: publish the exit now, the output once drained.
            self.shared.notify(self.shared.lock());
        }
    }

    /// Watchdog, exit checks without a pidfd, and the end of the drain.
    fn tick(
        &mut self,
        inner: &Inner,
        now: Instant,
        exited: &mut Vec<(OnExit, Exit)>,
        buf: &mut [u8],
    ) {
        if self.done {
            return;
        }
        if let Some(until) = self.drain_until {
            if now >= until {
                self.final_drain(inner, buf);
                self.done = true;
            }
            return;
        }
        if self.exit_fd.is_none() && child::has_exited(self.shared.pid) {
            self.reap(inner, exited, buf);
            return;
        }
        // Watchdog: silence → SIGABRT to the child, grace → SIGKILL to the group.
        let Some(dog) = self.watchdog else {
            return;
        };
        match self.aborted_at {
            Some(at) if !self.killed && now >= at + dog.abort_grace => {
                let state = self.shared.lock();
                if let Err(err) = self.shared.signal(&state, libc::SIGKILL, true) {
                    log::error!("watchdog kill of child {}: {err}", self.shared.pid);
                }
                self.killed = true;
            }
            Some(_) => {}
            None if now >= self.last_beat + dog.timeout => {
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
                self.aborted_at = Some(now);
            }
            None => {}
        }
    }

    /// The reaper is being dropped: SIGKILL the group of a child still running.
    fn kill_for_stop(&self) {
        let mut state = self.shared.lock();
        if state.reaped {
            return;
        }
        state.stop_requested = true;
        if let Err(err) = self.shared.signal(&state, libc::SIGKILL, true) {
            log::error!("stopping child {}: {err}", self.shared.pid);
        }
    }

    fn read_heartbeat(&mut self, inner: &Inner, buf: &mut [u8]) {
        let Some(fd) = &self.heartbeat else {
            return;
        };
        match child::read_fd(fd.as_raw_fd(), buf) {
            // EOF: nothing will write heartbeats any more; silence runs its course.
            Ok(0) | Err(_) => {
                if let Some(fd) = self.heartbeat.take() {
                    inner.forget(&fd);
                }
            }
            Ok(_) => self.last_beat = Instant::now(),
        }
    }

    /// Reads what is already in the pipes without waiting for more: a descendant that escaped
    /// the group may hold them open, but output written before the exit must not be lost just
    /// because the reaper got to it late.
    fn final_drain(&mut self, inner: &Inner, buf: &mut [u8]) {
        self.drain_ready(inner, buf);
        for i in 0..2 {
            self.close_stream(inner, i);
        }
    }

    /// Reads what the pipes hold right now, and their ends, without waiting.
    fn drain_ready(&mut self, inner: &Inner, buf: &mut [u8]) {
        // Bounded, since a descendant may keep writing.
        for _ in 0..64 {
            if self.streams.iter().all(Option::is_none) {
                break;
            }
            let mut fds = self.streams.each_ref().map(|s| libc::pollfd {
                fd: s.as_ref().map_or(-1, |(fd, _, _)| fd.as_raw_fd()),
                events: libc::POLLIN,
                revents: 0,
            });
            // SAFETY: `fds` is a valid array of pollfd of the given length (negative descriptors
            // are ignored by poll).
            let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 0) };
            if ready <= 0 {
                break;
            }
            for (i, fd) in fds.iter().enumerate() {
                if fd.revents != 0 {
                    self.read_stream(inner, i, buf);
                }
            }
        }
    }

    fn read_stream(&mut self, inner: &Inner, i: usize, buf: &mut [u8]) {
        let Some((fd, _, _)) = &self.streams[i] else {
            return;
        };
        match child::read_fd(fd.as_raw_fd(), buf) {
            // Readable a moment ago, emptied since by another read: nothing to do until the
            // next readiness.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Ok(0) | Err(_) => self.close_stream(inner, i),
            Ok(n) => {
                let (Some((_, stream, partial)), Some(lines)) =
                    (&mut self.streams[i], &mut self.lines)
                else {
                    return;
                };
                lines.split(*stream, partial, &buf[..n]);
            }
        }
        if !self.running() && self.streams.iter().all(Option::is_none) {
            self.done = true;
        }
    }

    fn close_stream(&mut self, inner: &Inner, i: usize) {
        if let Some((fd, stream, partial)) = self.streams[i].take() {
            if let Some(lines) = &mut self.lines
                && !partial.is_empty()
            {
                lines.emit(stream, &partial);
            }
            inner.forget(&fd);
        }
    }

    fn finished(&self) -> bool {
        self.done
    }

    /// Gives the lines (and the thread that feeds the sink) to the [`Child`], whose drop joins it,
    /// and tells it the reaper is done with it.
    fn hand_over(&mut self) {
        let mut state = self.shared.lock();
        state.lines = self.lines.take();
        state.drained = true;
        self.shared.notify(state);
    }
}

//! The [`Supervisor`]: one long-lived thread that spawns, watches, restarts and stops any number
//! of children, each under its own [`RestartPolicy`], and reports what happens as [`Event`]s.

use std::collections::BTreeMap;
use std::fmt;
use std::panic::{self, AssertUnwindSafe};
use std::process::ChildStdin;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};

use crate::child::Child;
use crate::reaper::Reaper;
use crate::{
    ChildSpec, Decision, Error, Exit, GiveUp, RestartPolicy, RestartTracker, Result, StopReason,
    SystemClock, Termination,
};

/// Identifies a child within its supervisor.
pub type ChildId = u64;

/// Where a supervised child is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChildState {
    /// Running, but not yet for the policy's stable-run time (`reset_after`).
    Starting,
    /// Running for at least the stable-run time (or the policy has none).
    Running,
    /// Dead, waiting out the backoff before the next start.
    BackingOff,
    /// Dead for good: stopped on request, or the policy does not restart after this exit.
    Stopped,
    /// Dead for good: restarts came faster than the policy's intensity allows.
    GaveUp,
}

/// A snapshot of one supervised child.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ChildStatus {
    /// Its id.
    pub id: ChildId,
    /// Its name (from [`ChildSpec::name`]).
    pub name: String,
    /// Where it is.
    pub state: ChildState,
    /// The current process id, while one runs.
    pub pid: Option<u32>,
    /// Restarts so far (spawns after the first).
    pub restarts: u32,
    /// How the last run ended.
    pub last_exit: Option<Exit>,
}

/// Something that happened to a supervised child.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Event {
    /// Which child.
    pub child: ChildId,
    /// Its name.
    pub name: String,
    /// What happened.
    pub kind: EventKind,
}

/// What happened.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum EventKind {
    /// A process was started.
    Started {
        /// Its process id.
        pid: u32,
    },
    /// A process ended, with its classification.
    Exited(Exit),
    /// The policy said to restart; the next start comes after this delay.
    Restarting {
        /// The backoff delay.
        after: Duration,
        /// Consecutive restarts since the policy's last reset, this one included.
        attempt: u32,
    },
    /// A restart failed to spawn (it counts as a failed run with exit code 127).
    SpawnFailed(String),
    /// The policy gave up.
    GaveUp(GiveUp),
    /// The child will not run again.
    Stopped(StopReason),
    /// Everything the process `pid` wrote has reached its output sink: what a crash report
    /// quotes of its output is complete only from here. Follows its [`EventKind::Exited`] (after
    /// a restart's [`EventKind::Started`], which it never delays).
    OutputDone {
        /// The process that exited.
        pid: u32,
    },
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (#{}): ", self.name, self.child)?;
        match &self.kind {
            EventKind::Started { pid } => write!(f, "started, pid {pid}"),
            EventKind::Exited(exit) => write!(f, "{exit}"),
            EventKind::Restarting { after, attempt } => {
                write!(f, "restarting in {after:?} (attempt {attempt})")
            }
            EventKind::SpawnFailed(err) => write!(f, "spawn failed: {err}"),
            EventKind::GaveUp(why) => write!(f, "{why}"),
            EventKind::Stopped(why) => write!(f, "stopped: {why}"),
            EventKind::OutputDone { pid } => write!(f, "output of pid {pid} delivered"),
        }
    }
}

enum Msg {
    Add(Box<(ChildSpec, RestartPolicy)>, Sender<Result<ChildId>>),
    Stop(ChildId, Sender<Result<()>>),
    Restart(ChildId, Sender<Result<()>>),
    Start(ChildId, Sender<Result<()>>),
    Hung(ChildId, Option<i32>, Duration, Sender<Result<()>>),
    Remove(ChildId, Sender<Result<()>>),
    Status(Sender<Vec<ChildStatus>>),
    TakeStdin(ChildId, Sender<Result<Option<(u32, ChildStdin)>>>),
    Shutdown(Sender<()>),
    Exited(ChildId, u64),
}

/// Supervises children on a thread of its own.
///
/// All children are spawned by that one thread, which lives until [`shutdown`](Self::shutdown)
/// (or drop): Linux sends the parent-death signal when the *thread* that spawned a child exits,
/// so a child spawned from a short-lived thread would be killed with it.
///
/// Dropping the supervisor shuts it down: every child gets its stop signal, then SIGKILL after
/// its stop grace, and is reaped before the thread is joined.
#[derive(Debug)]
pub struct Supervisor {
    commands: Sender<Msg>,
    thread: Option<JoinHandle<()>>,
}

impl fmt::Debug for Msg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Msg::Add(..) => "Add",
            Msg::Stop(..) => "Stop",
            Msg::Restart(..) => "Restart",
            Msg::Start(..) => "Start",
            Msg::Hung(..) => "Hung",
            Msg::Remove(..) => "Remove",
            Msg::Status(..) => "Status",
            Msg::TakeStdin(..) => "TakeStdin",
            Msg::Shutdown(..) => "Shutdown",
            Msg::Exited(..) => "Exited",
        })
    }
}

impl Supervisor {
    /// Starts the supervisor thread; `on_event` is called on it for every [`Event`] (keep it
    /// quick: it delays restarts).
    ///
    /// # Errors
    /// [`Error::Os`] if the thread cannot be started.
    pub fn new(on_event: impl FnMut(&Event) + Send + 'static) -> Result<Supervisor> {
        let (commands, inbox) = crossbeam_channel::unbounded();
        let own = commands.clone();
        let reaper = Reaper::new()?;
        let thread = thread::Builder::new()
            .name("ward-supervisor".into())
            .spawn(move || {
                Runner {
                    inbox,
                    own,
                    on_event: Box::new(on_event),
                    slots: BTreeMap::new(),
                    next_id: 1,
                    retired: Vec::new(),
                    reaper,
                }
                .run()
            })
            .map_err(|source| Error::Os {
                what: "spawning the supervisor thread",
                source,
            })?;
        Ok(Supervisor {
            commands,
            thread: Some(thread),
        })
    }

    /// Starts a supervisor whose events arrive on the returned (unbounded) channel.
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn with_channel() -> Result<(Supervisor, Receiver<Event>)> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let supervisor = Supervisor::new(move |event| {
            // The receiver may have been dropped: then nobody wants events.
            let _ignored = tx.send(event.clone());
        })?;
        Ok((supervisor, rx))
    }

    /// Spawns a child and supervises it under `policy`.
    ///
    /// # Errors
    /// The spawn error if the first start fails (the child is then not supervised);
    /// [`Error::SupervisorGone`] if the supervisor thread has stopped.
    pub fn add(&self, spec: ChildSpec, policy: RestartPolicy) -> Result<ChildId> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.send(Msg::Add(Box::new((spec, policy)), tx))?;
        rx.recv().map_err(|_| Error::SupervisorGone)?
    }

    /// Stops a child for good (its stop signal, its stop grace, SIGKILL) and waits until it is
    /// reaped.
    /// The child's status stays queryable, as [`ChildState::Stopped`].
    ///
    /// # Errors
    /// [`Error::NoSuchChild`], [`Error::SupervisorGone`], or a signal error.
    pub fn stop_child(&self, id: ChildId) -> Result<()> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.send(Msg::Stop(id, tx))?;
        rx.recv().map_err(|_| Error::SupervisorGone)?
    }

    /// Restarts a child on request: its current process, if one runs, is stopped as
    /// [`stop_child`](Self::stop_child) stops it, and a new one is started at once, with the
    /// restart policy's state (backoff, intensity) reset. Works on a child that was stopped or
    /// gave up too. Returns once the new process is started.
    ///
    /// # Errors
    /// [`Error::NoSuchChild`], [`Error::SupervisorGone`], a signal error, or the spawn error if
    /// the new process cannot be started (the child is then left to its policy, as after any
    /// failed restart).
    pub fn restart_child(&self, id: ChildId) -> Result<()> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.send(Msg::Restart(id, tx))?;
        rx.recv().map_err(|_| Error::SupervisorGone)?
    }

    /// Starts a child that was stopped or gave up, or is backing off, at once and with its
    /// restart policy's state reset; does nothing to a child that runs.
    ///
    /// # Errors
    /// As [`restart_child`](Self::restart_child).
    pub fn start_child(&self, id: ChildId) -> Result<()> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.send(Msg::Start(id, tx))?;
        rx.recv().map_err(|_| Error::SupervisorGone)?
    }

    /// Ends a child the caller found hung (its own liveness check failed: a readiness deadline,
    /// a watchdog): the child is marked hung, its group gets `dump` (a signal on which its
    /// runtime prints its stacks, if any) and `dump_wait` to exit on it, then SIGKILL. Its
    /// [`Exit`] says `hung`, and goes through its restart policy as a failure. Returns at once;
    /// does nothing to a child with no running process.
    ///
    /// # Errors
    /// [`Error::NoSuchChild`] or [`Error::SupervisorGone`].
    pub fn kill_hung(&self, id: ChildId, dump: Option<i32>, dump_wait: Duration) -> Result<()> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.send(Msg::Hung(id, dump, dump_wait, tx))?;
        rx.recv().map_err(|_| Error::SupervisorGone)?
    }

    /// Forgets a child that has no process running (stopped, gave up, or stopped with
    /// [`stop_child`](Self::stop_child) first): its status is no longer kept, and its id is no
    /// longer valid. For a caller that replaces children over time (a reload), so that what the
    /// supervisor keeps stays bounded by the children it has.
    ///
    /// # Errors
    /// [`Error::NoSuchChild`], [`Error::SupervisorGone`], or [`Error::Config`] if a process of
    /// the child runs or a restart is due.
    pub fn remove_child(&self, id: ChildId) -> Result<()> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.send(Msg::Remove(id, tx))?;
        rx.recv().map_err(|_| Error::SupervisorGone)?
    }

    /// Takes the stdin pipe of the child's current run (spawned with
    /// [`Input::Piped`](crate::Input::Piped)), with the pid it belongs to. Each run has its own
    /// pipe: take it again after every [`EventKind::Started`].
    ///
    /// # Errors
    /// [`Error::NoSuchChild`] or [`Error::SupervisorGone`].
    pub fn take_stdin(&self, id: ChildId) -> Result<Option<(u32, ChildStdin)>> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.send(Msg::TakeStdin(id, tx))?;
        rx.recv().map_err(|_| Error::SupervisorGone)?
    }

    /// A snapshot of every child.
    ///
    /// # Errors
    /// [`Error::SupervisorGone`] if the supervisor thread has stopped.
    pub fn statuses(&self) -> Result<Vec<ChildStatus>> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.send(Msg::Status(tx))?;
        rx.recv().map_err(|_| Error::SupervisorGone)
    }

    /// A snapshot of one child.
    ///
    /// # Errors
    /// [`Error::NoSuchChild`] or [`Error::SupervisorGone`].
    pub fn status(&self, id: ChildId) -> Result<ChildStatus> {
        self.statuses()?
            .into_iter()
            .find(|s| s.id == id)
            .ok_or(Error::NoSuchChild(id))
    }

    /// Stops every child (in parallel: each its stop signal, then SIGKILL to each after its grace),
    /// reaps them all and joins the supervisor thread.
    ///
    /// # Errors
    /// [`Error::SupervisorGone`] if the thread had already died (it panicked).
    pub fn shutdown(mut self) -> Result<()> {
        self.shutdown_inner()
    }

    fn shutdown_inner(&mut self) -> Result<()> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        let (tx, rx) = crossbeam_channel::bounded(1);
        let sent = self.commands.send(Msg::Shutdown(tx)).is_ok() && rx.recv().is_ok();
        let joined = thread.join().is_ok();
        if sent && joined {
            Ok(())
        } else {
            Err(Error::SupervisorGone)
        }
    }

    fn send(&self, msg: Msg) -> Result<()> {
        self.commands.send(msg).map_err(|_| Error::SupervisorGone)
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        if let Err(err) = self.shutdown_inner() {
            log::error!("supervisor shutdown: {err}");
        }
    }
}

struct Slot {
    spec: ChildSpec,
    tracker: RestartTracker<SystemClock>,
    child: Option<Child>,
    /// Bumped at each spawn, so a late exit notice of an earlier run is recognised.
    generation: u64,
    state: ChildState,
    restarts: u32,
    restart_at: Option<Instant>,
    /// When a requested stop escalates to SIGKILL.
    kill_at: Option<Instant>,
    stopping: Vec<Sender<Result<()>>>,
    /// Waiting for a restart on request: answered once the new process is started.
    restarting: Vec<Sender<Result<()>>>,
    last_exit: Option<Exit>,
}

impl Slot {
    /// Answers the restarts on request that a stop, or the policy giving up, overtook.
    fn restarts_lost(&mut self) {
        for waiter in self.restarting.drain(..) {
            let _ignored = waiter.send(Err(Error::NotRestarted(
                "it was stopped, or its policy gave up, first".into(),
            )));
        }
    }
}

struct Runner {
    inbox: Receiver<Msg>,
    /// For the reaper's exit notices.
    own: Sender<Msg>,
    on_event: Box<dyn FnMut(&Event) + Send>,
    slots: BTreeMap<ChildId, Slot>,
    next_id: ChildId,
    /// Handles of exited runs, dropped (sink threads joined) after restarts are done.
    retired: Vec<(ChildId, Child)>,
    /// Watches and reaps every child. Last: the children above are dropped (stopped, reaped)
    /// before it, whose drop would SIGKILL what still runs.
    reaper: Reaper,
}

impl Runner {
    fn run(mut self) {
        loop {
            let deadline = self
                .slots
                .values()
                .flat_map(|s| [s.restart_at, s.kill_at])
                .flatten()
                .min();
            // A deadline already past (a restart with no backoff that keeps failing to spawn)
            // must not starve the inbox: take what is there without waiting, then do the work.
            let msg = match deadline {
                Some(deadline) if deadline <= Instant::now() => {
                    self.inbox.try_recv().map_err(|err| match err {
                        TryRecvError::Empty => RecvTimeoutError::Timeout,
                        TryRecvError::Disconnected => RecvTimeoutError::Disconnected,
                    })
                }
                Some(deadline) => self.inbox.recv_deadline(deadline),
                None => self
                    .inbox
                    .recv()
                    .map_err(|_| RecvTimeoutError::Disconnected),
            };
            match msg {
                Ok(Msg::Add(job, reply)) => {
                    let (spec, policy) = *job;
                    let result = self.add(spec, policy);
                    // The caller may have given up waiting; nothing else to do then.
                    let _ignored = reply.send(result);
                }
                Ok(Msg::Stop(id, reply)) => self.request_stop(id, reply),
                Ok(Msg::Restart(id, reply)) => self.request_restart(id, reply, true),
                Ok(Msg::Start(id, reply)) => self.request_restart(id, reply, false),
                Ok(Msg::Hung(id, dump, dump_wait, reply)) => {
                    let _ignored = reply.send(self.hung(id, dump, dump_wait));
                }
                Ok(Msg::Remove(id, reply)) => {
                    let removed = match self.slots.get(&id) {
                        None => Err(Error::NoSuchChild(id)),
                        Some(slot) if slot.child.is_some() || slot.restart_at.is_some() => Err(
                            Error::Config(format!("child {id} runs: stop it before removing it")),
                        ),
                        Some(_) => {
                            self.slots.remove(&id);
                            Ok(())
                        }
                    };
                    let _ignored = reply.send(removed);
                }
                Ok(Msg::Status(reply)) => {
                    let _ignored = reply.send(self.statuses());
                }
                Ok(Msg::TakeStdin(id, reply)) => {
                    let stdin = match self.slots.get_mut(&id) {
                        Some(slot) => Ok(slot
                            .child
                            .as_mut()
                            .and_then(|child| Some((child.id(), child.take_stdin()?)))),
                        None => Err(Error::NoSuchChild(id)),
                    };
                    let _ignored = reply.send(stdin);
                }
                Ok(Msg::Exited(id, generation)) => self.exited(id, generation),
                Ok(Msg::Shutdown(reply)) => {
                    self.stop_all();
                    let _ignored = reply.send(());
                    return;
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    self.stop_all();
                    return;
                }
            }
            self.due();
            self.retire();
        }
    }

    /// Drops the handles of exited runs, which waits for their output to be delivered, and
    /// says so for each.
    fn retire(&mut self) {
        for (id, child) in std::mem::take(&mut self.retired) {
            let pid = child.id();
            drop(child);
            self.emit(id, EventKind::OutputDone { pid });
        }
    }

    fn emit(&mut self, child: ChildId, kind: EventKind) {
        let name = self
            .slots
            .get(&child)
            .map(|s| s.spec.get_name().to_owned())
            .unwrap_or_default();
        let event = Event { child, name, kind };
        log::debug!("{event}");
        let on_event = &mut self.on_event;
        if panic::catch_unwind(AssertUnwindSafe(|| on_event(&event))).is_err() {
            log::error!("the supervisor's event callback panicked on: {event}");
        }
    }

    fn add(&mut self, spec: ChildSpec, policy: RestartPolicy) -> Result<ChildId> {
        let id = self.next_id;
        let seed = id ^ u64::from(std::process::id()) << 32;
        let slot = Slot {
            spec,
            tracker: RestartTracker::new(policy, SystemClock).with_seed(seed),
            child: None,
            generation: 0,
            state: ChildState::Starting,
            restarts: 0,
            restart_at: None,
            kill_at: None,
            stopping: Vec::new(),
            restarting: Vec::new(),
            last_exit: None,
        };
        let child = self.spawn(id, &slot.spec, 1)?;
        self.next_id += 1;
        let pid = child.id();
        self.slots.insert(
            id,
            Slot {
                child: Some(child),
                generation: 1,
                ..slot
            },
        );
        self.emit(id, EventKind::Started { pid });
        Ok(id)
    }

    fn spawn(&self, id: ChildId, spec: &ChildSpec, generation: u64) -> Result<Child> {
        let notify = self.own.clone();
        self.reaper.spawn_notify(
            spec,
            Some(Box::new(move |_exit: &Exit| {
                // The supervisor may be gone (shutting down): then nobody needs the notice.
                let _ignored = notify.send(Msg::Exited(id, generation));
            })),
        )
    }

    fn exited(&mut self, id: ChildId, generation: u64) {
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        if slot.generation != generation {
            return;
        }
        let Some(old) = slot.child.take() else { return };
        let Some(exit) = old.try_wait() else {
            // Cannot happen: the notice is sent after the reap. Keep the child rather than lose it.
            log::error!("exit notice for child {id} before its reap");
            slot.child = Some(old);
            return;
        };
        slot.last_exit = Some(exit.clone());
        slot.kill_at = None;
        let decision = if !slot.stopping.is_empty() {
            Decision::Stop(StopReason::Requested)
        } else if !slot.restarting.is_empty() {
            slot.tracker.reset();
            Decision::Restart {
                after: Duration::ZERO,
                attempt: 0,
            }
        } else {
            slot.tracker.next(&exit)
        };
        self.emit(id, EventKind::Exited(exit));
        self.decide(id, decision);
        // Dropped once the replacement is spawned: joining its threads (the reader may drain
        // for a moment, the sink may be slow) must not delay the restart.
        self.retired.push((id, old));
    }

    fn decide(&mut self, id: ChildId, decision: Decision) {
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        match decision {
            Decision::Restart { after, attempt } => {
                slot.state = ChildState::BackingOff;
                // Restarted by `due` at the end of this turn of the loop when there is no delay:
                // never recursively from here, where a spawn failing forever would recurse
                // forever.
                slot.restart_at = Some(Instant::now() + after);
                self.emit(id, EventKind::Restarting { after, attempt });
            }
            Decision::GiveUp(why) => {
                slot.state = ChildState::GaveUp;
                slot.restarts_lost();
                self.emit(id, EventKind::GaveUp(why));
            }
            Decision::Stop(why) => {
                slot.state = ChildState::Stopped;
                slot.restarts_lost();
                for waiter in slot.stopping.drain(..) {
                    let _ignored = waiter.send(Ok(()));
                }
                self.emit(id, EventKind::Stopped(why));
            }
        }
    }

    fn restart(&mut self, id: ChildId) {
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        slot.restart_at = None;
        let generation = slot.generation + 1;
        match self.spawn(id, &self.slots[&id].spec, generation) {
            Ok(child) => {
                let pid = child.id();
                let slot = self.slots.get_mut(&id).expect("slot checked above");
                slot.generation = generation;
                slot.child = Some(child);
                slot.state = ChildState::Starting;
                slot.restarts += 1;
                let waiters: Vec<_> = slot.restarting.drain(..).collect();
                self.emit(id, EventKind::Started { pid });
                for waiter in waiters {
                    let _ignored = waiter.send(Ok(()));
                }
            }
            Err(err) => {
                let message = err.to_string();
                if let Some(slot) = self.slots.get_mut(&id) {
                    for waiter in slot.restarting.drain(..) {
                        let _ignored = waiter
                            .send(Err(Error::NotRestarted(format!("cannot start: {message}"))));
                    }
                }
                self.emit(id, EventKind::SpawnFailed(message));
                let failed = Exit::new(Termination::Exited { code: 127 }, Duration::ZERO);
                let slot = self.slots.get_mut(&id).expect("slot checked above");
                slot.restarts += 1;
                let decision = slot.tracker.next(&failed);
                self.decide(id, decision);
            }
        }
    }

    /// Restarts whose backoff is over, stops whose grace is over.
    fn due(&mut self) {
        let now = Instant::now();
        let any_due = self
            .slots
            .values()
            .flat_map(|s| [s.restart_at, s.kill_at])
            .flatten()
            .any(|at| at <= now);
        if !any_due {
            return;
        }
        let ids: Vec<ChildId> = self.slots.keys().copied().collect();
        for id in ids {
            let slot = &self.slots[&id];
            if slot.restart_at.is_some_and(|at| at <= now) {
                self.restart(id);
            }
            let slot = self.slots.get_mut(&id).expect("ids are from the map");
            if slot.kill_at.is_some_and(|at| at <= now) {
                slot.kill_at = None;
                if let Some(child) = &slot.child
                    && let Err(err) = child.signal_group(libc::SIGKILL)
                {
                    log::error!("stopping child {id}: {err}");
                }
            }
        }
    }

    fn request_stop(&mut self, id: ChildId, reply: Sender<Result<()>>) {
        let Some(slot) = self.slots.get_mut(&id) else {
            let _ignored = reply.send(Err(Error::NoSuchChild(id)));
            return;
        };
        let Some(child) = &slot.child else {
            // Backing off, stopped or gave up: nothing runs.
            slot.restart_at = None;
            let was = slot.state;
            slot.state = match was {
                ChildState::GaveUp => ChildState::GaveUp,
                _ => ChildState::Stopped,
            };
            let _ignored = reply.send(Ok(()));
            if was == ChildState::BackingOff {
                self.emit(id, EventKind::Stopped(StopReason::Requested));
            }
            return;
        };
        if let Err(err) = child.begin_stop() {
            let _ignored = reply.send(Err(err));
            return;
        }
        slot.kill_at = Some(Instant::now() + slot.spec.get_stop_grace());
        slot.stopping.push(reply);
    }

    /// A restart (`again`) or a start on request.
    fn request_restart(&mut self, id: ChildId, reply: Sender<Result<()>>, again: bool) {
        let Some(slot) = self.slots.get_mut(&id) else {
            let _ignored = reply.send(Err(Error::NoSuchChild(id)));
            return;
        };
        match &slot.child {
            Some(_) if !again => {
                let _ignored = reply.send(Ok(()));
            }
            Some(child) => {
                if let Err(err) = child.begin_stop() {
                    let _ignored = reply.send(Err(err));
                    return;
                }
                // A restart asked during a stop on request replaces that stop.
                for waiter in slot.stopping.drain(..) {
                    let _ignored = waiter.send(Ok(()));
                }
                slot.kill_at = Some(Instant::now() + slot.spec.get_stop_grace());
                slot.restarting.push(reply);
            }
            None => {
                slot.tracker.reset();
                slot.restarting.push(reply);
                self.restart(id);
            }
        }
    }

    /// Marks the child hung and sends its dump signal; SIGKILL follows after `dump_wait`.
    fn hung(&mut self, id: ChildId, dump: Option<i32>, dump_wait: Duration) -> Result<()> {
        let slot = self.slots.get_mut(&id).ok_or(Error::NoSuchChild(id))?;
        let Some(child) = &slot.child else {
            return Ok(());
        };
        let wait = if child.begin_hung_stop(dump) {
            dump_wait
        } else {
            Duration::ZERO
        };
        let at = Instant::now() + wait;
        slot.kill_at = Some(slot.kill_at.map_or(at, |k| k.min(at)));
        Ok(())
    }

    fn statuses(&self) -> Vec<ChildStatus> {
        let now = Instant::now();
        self.slots
            .iter()
            .map(|(&id, slot)| {
                let pid = slot.child.as_ref().map(Child::id);
                let state = match (slot.state, &slot.child) {
                    (ChildState::Starting, Some(child)) => {
                        let stable = slot.tracker.policy().reset_after.unwrap_or(Duration::ZERO);
                        if now.duration_since(child.started_at()) >= stable {
                            ChildState::Running
                        } else {
                            ChildState::Starting
                        }
                    }
                    (state, _) => state,
                };
                ChildStatus {
                    id,
                    name: slot.spec.get_name().to_owned(),
                    state,
                    pid,
                    restarts: slot.restarts,
                    last_exit: slot.last_exit.clone(),
                }
            })
            .collect()
    }

    fn stop_all(&mut self) {
        self.retire();
        let mut stopping = Vec::new();
        let mut backing_off = Vec::new();
        for (&id, slot) in &mut self.slots {
            if slot.restart_at.take().is_some() {
                slot.state = ChildState::Stopped;
                backing_off.push(id);
            }
            if let Some(child) = slot.child.take() {
                if let Err(err) = child.begin_stop() {
                    log::error!("stopping child {id}: {err}");
                }
                stopping.push((id, child, Instant::now() + slot.spec.get_stop_grace()));
            }
        }
        for id in backing_off {
            self.emit(id, EventKind::Stopped(StopReason::Requested));
        }
        for (id, child, deadline) in stopping {
            match child.finish_stop(deadline) {
                Ok(exit) => {
                    if let Some(slot) = self.slots.get_mut(&id) {
                        slot.last_exit = Some(exit.clone());
                        slot.state = ChildState::Stopped;
                        for waiter in slot.stopping.drain(..) {
                            let _ignored = waiter.send(Ok(()));
                        }
                    }
                    self.emit(id, EventKind::Exited(exit));
                    self.emit(id, EventKind::Stopped(StopReason::Requested));
                }
                Err(err) => log::error!("stopping child {id}: {err}"),
            }
            let pid = child.id();
            drop(child);
            self.emit(id, EventKind::OutputDone { pid });
        }
    }
}

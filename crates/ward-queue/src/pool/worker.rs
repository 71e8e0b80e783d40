//! The worker threads: their loop, one attempt of a job inside `catch_unwind`, and the settling
//! of its outcome (reported, retried or dead). Not here: scheduling a retry and replacing a stuck
//! worker (`overseer`), or how a job got into the queue (`submit`).

use std::any::Any;
use std::hash::Hash;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, MutexGuard};

use super::overseer::Schedule;
use super::task::{Envelope, Task, recv, try_recv};
use super::{Crew, Shared};
use crate::keys::SlotId;
use crate::metrics::Stats;
use crate::retry::mix;
use crate::{DropReason, Event, Failure, JobError, JobId};

/// One running attempt of a supervised worker, for the overseer's timeout check.
pub(super) struct Running {
    pub(super) id: JobId,
    pub(super) attempt: u32,
    pub(super) started: Instant,
    /// Set by the overseer when it gives up on the attempt.
    pub(super) abandoned: Option<Duration>,
}

/// What a worker shares with the overseer and the metrics.
pub(super) struct WorkerCell {
    pub(super) stats: Stats,
    pub(super) current: Mutex<Option<Running>>,
    /// The overseer replaced this worker: it exits once its current job returns.
    pub(super) abandoned: AtomicBool,
    /// Only one thread ever updates `stats` (a worker's own cell, not the callers' shared one),
    /// so counting needs no locked instruction on the hot path.
    exclusive: bool,
}

impl WorkerCell {
    pub(super) fn new(exclusive: bool) -> Self {
        WorkerCell {
            stats: Stats::new(),
            current: Mutex::new(None),
            abandoned: AtomicBool::new(false),
            exclusive,
        }
    }

    #[inline]
    fn count(&self, counter: &AtomicU64) {
        if self.exclusive {
            counter.store(counter.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        } else {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[inline]
    fn set_running(&self, running: bool) {
        let gauge = &self.stats.running;
        match (self.exclusive, running) {
            (true, _) => gauge.store(usize::from(running), Ordering::Relaxed),
            (false, true) => {
                gauge.fetch_add(1, Ordering::Relaxed);
            }
            (false, false) => {
                gauge.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

impl<J, K> Shared<J, K>
where
    J: Send + 'static,
    K: Eq + Hash + Clone + Send + 'static,
{
    /// Runs `task` of `key` (already marked running), then each job deferred to this key, until
    /// the key is released or held by a scheduled retry.
    pub(super) fn run_keyed(
        &self,
        cell: &WorkerCell,
        supervised: bool,
        slot: SlotId,
        mut task: Task<J>,
    ) {
        loop {
            let result = self.attempt(cell, supervised, &mut task);
            if self.settle(cell, task, result, Some(slot)) {
                return;
            }
            let next = self
                .keys
                .by_slot(slot)
                .lock()
                .release(slot, self.stop.load(Ordering::SeqCst));
            match next {
                Some(next) => task = next,
                None => return,
            }
        }
    }

    /// Waits while the pool is held; false if it was stopped meanwhile. Wakes at least every
    /// 100 ms to see a stop, which `shutdown` sets without knowing of holds.
    fn wait_while_held(&self) -> bool {
        if self.held.load(Ordering::Acquire) {
            self.waiting_in_hold.fetch_add(1, Ordering::Relaxed);
            let mut guard = self.hold_lock.lock();
            while self.held.load(Ordering::SeqCst) && !self.stop.load(Ordering::SeqCst) {
                self.hold_cv
                    .wait_for(&mut guard, Duration::from_millis(100));
            }
            self.waiting_in_hold.fetch_sub(1, Ordering::Relaxed);
        }
        !self.stop.load(Ordering::SeqCst)
    }

    /// A worker that saw `stop` keeps what it received for `close` and lets go of its keys,
    /// leaving the jobs deferred to them for the drain.
    fn stop_worker(&self, envelope: Option<Envelope<J, SlotId>>, mut held: Held) {
        while let Some(slot) = held.pop_front() {
            self.keys.by_slot(slot).lock().release(slot, true);
        }
        if let Some((task, _)) = envelope.and_then(Envelope::into_parts) {
            self.stash.lock().push(task);
        }
    }

    /// One attempt: runs the handler inside `catch_unwind`, under the overseer's watch if
    /// `supervised` and a timeout is set.
    #[inline]
    pub(super) fn attempt(
        &self,
        cell: &WorkerCell,
        supervised: bool,
        task: &mut Task<J>,
    ) -> Result<(), Failure> {
        // Most attempts are first attempts, not sampled, without a timeout: those only run the
        // handler, in code small enough to inline into the worker's loop.
        if self.config.timeout.is_none() && task.extra.is_none() {
            cell.set_running(true);
            let outcome = catch_unwind(AssertUnwindSafe(|| (self.handler)(&task.job)));
            cell.set_running(false);
            return match outcome {
                Ok(Ok(())) => Ok(()),
                Ok(Err(error)) => Err(failure_of(Ok(Err(error)))),
                Err(payload) => Err(failure_of(Err(payload))),
            };
        }
        self.attempt_watched(cell, supervised, task)
    }

    /// `attempt` for an attempt that is timed, sampled or a retry.
    #[inline(never)]
    fn attempt_watched(
        &self,
        cell: &WorkerCell,
        supervised: bool,
        task: &mut Task<J>,
    ) -> Result<(), Failure> {
        let attempt = task.failed_attempts() + 1;
        let timeout = self
            .config
            .timeout
            .filter(|_| supervised && !cell.abandoned.load(Ordering::Acquire));
        let enqueued = task.take_enqueued();
        let sampled = enqueued.is_some();
        let started = (sampled || timeout.is_some()).then(Instant::now);
        if let (Some(enqueued), Some(started)) = (enqueued, started) {
            cell.stats
                .wait
                .record(started.saturating_duration_since(enqueued));
        }
        if let (Some(_), Some(started)) = (timeout, started) {
            *cell.current.lock() = Some(Running {
                id: task.id,
                attempt,
                started,
                abandoned: None,
            });
        }
        cell.set_running(true);
        let outcome = catch_unwind(AssertUnwindSafe(|| (self.handler)(&task.job)));
        cell.set_running(false);
        let timed_out = match timeout {
            Some(_) => cell
                .current
                .lock()
                .take()
                .and_then(|running| running.abandoned),
            None => None,
        };
        if let (true, Some(started)) = (sampled, started) {
            cell.stats.run.record(started.elapsed());
        }
        if let Some(after) = timed_out {
            return Err(Failure::TimedOut(after));
        }
        match outcome {
            Ok(Ok(())) => Ok(()),
            outcome => Err(failure_of(outcome)),
        }
    }

    /// Reports an attempt's outcome and schedules a retry if one is due. True if a retry was
    /// scheduled (a keyed job then keeps its key).
    #[inline(always)]
    pub(super) fn settle(
        &self,
        cell: &WorkerCell,
        task: Task<J>,
        result: Result<(), Failure>,
        slot: Option<SlotId>,
    ) -> bool {
        // A success nobody listens to is only counted.
        if result.is_ok() && self.listener.is_none() {
            cell.count(&cell.stats.completed);
            return false;
        }
        self.settle_reported(cell, task, result, slot)
    }

    /// `settle` for an outcome that is reported.
    #[inline(never)]
    fn settle_reported(
        &self,
        cell: &WorkerCell,
        mut task: Task<J>,
        result: Result<(), Failure>,
        slot: Option<SlotId>,
    ) -> bool {
        let stats = &cell.stats;
        let failure = match result {
            Ok(()) => {
                cell.count(&stats.completed);
                if self.listener.is_some() {
                    let attempts = task.failed_attempts() + 1;
                    self.emit(Event::Completed {
                        id: task.id,
                        job: task.job,
                        attempts,
                    });
                }
                return false;
            }
            Err(failure) => failure,
        };
        cell.count(&stats.failed);
        if matches!(failure, Failure::Panic(_)) {
            cell.count(&stats.panicked);
        }
        task.push_failure(failure.clone());
        let attempt = task.failed_attempts();
        let policy = match self.retry_of {
            None => Some(self.config.retry),
            Some(policy_of) => catch_unwind(AssertUnwindSafe(|| policy_of(&task.job)))
                .inspect_err(|_| {
                    log::error!("ward-queue: the retry policy of {} panicked", task.id);
                })
                .ok(),
        };
        if let Some(clone_job) = self.clone_job
            && let Some(policy) = policy
            && attempt < policy.max_attempts()
        {
            let random = mix(self.seed ^ task.id.0.rotate_left(20) ^ u64::from(attempt));
            let delay = policy.delay(attempt, random);
            // Reserve the retry's place first, so that `Retrying` is only reported for a retry
            // that will happen, and before that retry can possibly run.
            match self.reserve_retry() {
                Schedule::Scheduled => {
                    cell.count(&stats.retried);
                    // The event gets a copy: the pool keeps the job to run it again. A `Clone`
                    // that panics costs the event, not the worker.
                    match catch_unwind(AssertUnwindSafe(|| clone_job(&task.job))) {
                        Ok(job) => self.emit(Event::Retrying {
                            id: task.id,
                            job,
                            attempt,
                            failure,
                            delay,
                        }),
                        Err(_) => log::error!(
                            "ward-queue: copying {} for its Retrying event panicked; that event \
                             is lost",
                            task.id
                        ),
                    }
                    return self.schedule(task, slot, delay);
                }
                Schedule::Sealed => {
                    self.drop_task(task, DropReason::Shutdown);
                    return false;
                }
                Schedule::BacklogFull => log::warn!(
                    "ward-queue: {} retries already wait; {} goes to the dead letters",
                    self.config.capacity,
                    task.id
                ),
            }
        }
        cell.count(&stats.dead);
        let (id, job, failures) = task.into_failures();
        self.emit(Event::Dead { id, job, failures });
        false
    }
}

/// The failure of an attempt that did not return `Ok`.
#[cold]
fn failure_of(outcome: thread::Result<Result<(), JobError>>) -> Failure {
    match outcome {
        Ok(Err(error)) => Failure::Error(Arc::from(error)),
        Err(payload) => Failure::Panic(panic_message(payload.as_ref())),
        // Not called for a success; should it be, it is the error-free failure it describes.
        Ok(Ok(())) => Failure::Panic("the job succeeded".to_owned()),
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(message) = payload.downcast_ref::<&str>() {
        (*message).to_owned()
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message.clone()
    } else {
        "panic with a non-string payload".to_owned()
    }
}

/// The keys a worker holds: their run on it ended and they are still marked running, oldest
/// first. A worker holds at most two (see `worker_main`), so they live inline: this is touched
/// on every keyed job.
#[derive(Default)]
struct Held {
    slots: [SlotId; 2],
    len: usize,
}

impl Held {
    fn len(&self) -> usize {
        self.len
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// # Panics
    /// If two keys are held already, which `worker_main` never lets happen.
    fn push_back(&mut self, slot: SlotId) {
        self.slots[self.len] = slot;
        self.len += 1;
    }

    fn pop_front(&mut self) -> Option<SlotId> {
        let first = self.slots[..self.len].first().copied()?;
        self.slots[0] = self.slots[1];
        self.len -= 1;
        Some(first)
    }

    /// Keeps the keys `keep` says to, in their order.
    fn retain(&mut self, mut keep: impl FnMut(SlotId) -> bool) {
        let mut kept = 0;
        for i in 0..self.len {
            let slot = self.slots[i];
            if keep(slot) {
                self.slots[kept] = slot;
                kept += 1;
            }
        }
        self.len = kept;
    }
}

/// Starts one worker.
pub(super) fn spawn_worker<J, K>(shared: &Arc<Shared<J, K>>) -> std::io::Result<()>
where
    J: Send + 'static,
    K: Eq + Hash + Clone + Send + 'static,
{
    let mut crew = shared.crew.lock();
    spawn_into(shared, &mut crew)
}

pub(super) fn spawn_into<J, K>(
    shared: &Arc<Shared<J, K>>,
    crew: &mut MutexGuard<'_, Crew>,
) -> std::io::Result<()>
where
    J: Send + 'static,
    K: Eq + Hash + Clone + Send + 'static,
{
    let cell = Arc::new(WorkerCell::new(true));
    let name = format!("{}-{}", shared.config.name, crew.spawned);
    let handle = {
        let shared = Arc::clone(shared);
        let cell = Arc::clone(&cell);
        thread::Builder::new()
            .name(name)
            .spawn(move || worker_main(&shared, &cell))?
    };
    crew.spawned += 1;
    crew.workers.push((cell, handle));
    Ok(())
}

fn worker_main<J, K>(shared: &Shared<J, K>, cell: &WorkerCell)
where
    J: Send + 'static,
    K: Eq + Hash + Clone + Send + 'static,
{
    // Keys whose run on this worker ended and that are still marked running, oldest first.
    // A key is released when the worker has its next envelope, and the table locked for that
    // stays locked if the envelope's slot is in it too. A held key with a job deferred to it
    // stays held, and its job stays in the table, until this worker runs that job: the
    // envelope in hand runs first. At most two keys are held, since no envelope is taken while
    // two are; their deferred jobs then take turns, so neither an envelope nor a busy key waits
    // behind the other for more than one run.
    let mut held = Held::default();
    loop {
        let envelope = if held.len() >= 2 || cell.abandoned.load(Ordering::Acquire) {
            None
        } else if held.is_empty() {
            match recv(&shared.rx) {
                Some(envelope) => Some(envelope),
                None => break,
            }
        } else {
            try_recv(&shared.rx)
        };
        if envelope.is_some() {
            shared.wake_room();
        }
        if envelope.is_none() && held.is_empty() {
            break; // Replaced after a timeout, with nothing of its keys left to run.
        }
        if shared.stop.load(Ordering::SeqCst) {
            shared.stop_worker(envelope, held);
            break;
        }
        let mut superseded = None;
        let work = match envelope {
            // An unkeyed job with no key to release needs no lock.
            Some(Envelope::Job(task)) if held.is_empty() => Some((None, task)),
            envelope => {
                let mut keys = shared.keys.locker();
                held.retain(|slot| !keys.lock(slot).release_unless_deferred(slot));
                match envelope {
                    Some(Envelope::Job(task)) => Some((None, task)),
                    Some(Envelope::Key(slot)) => keys
                        .lock(slot)
                        .take_for_token(slot)
                        .map(|task| (Some(slot), task)),
                    Some(Envelope::Retry(retry)) => {
                        let (retry, slot) = *retry;
                        match keys.lock(slot).take_superseding(slot) {
                            Some(newer) => {
                                superseded = Some(retry);
                                Some((Some(slot), newer))
                            }
                            None => Some((Some(slot), retry)),
                        }
                    }
                    // Run the oldest held key's deferred job; the key stays running.
                    None => held.pop_front().and_then(|slot| {
                        keys.lock(slot)
                            .release(slot, false)
                            .map(|task| (Some(slot), task))
                    }),
                }
            }
        };
        if let Some(retry) = superseded {
            shared.drop_task(retry, DropReason::Superseded);
        }
        let Some((slot, mut task)) = work else {
            continue;
        };
        if !shared.wait_while_held() {
            // Stopped while held: the job was not started, and goes back like one received
            // after the stop.
            shared.stash.lock().push(task);
            if let Some(slot) = slot {
                held.push_back(slot);
            }
            shared.stop_worker(None, held);
            break;
        }
        let result = shared.attempt(cell, true, &mut task);
        // A scheduled retry keeps the key; otherwise this worker releases it next round.
        if !shared.settle(cell, task, result, slot)
            && let Some(slot) = slot
        {
            held.push_back(slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panic_messages_are_recovered_from_both_payload_kinds() {
        let s: Box<dyn Any + Send> = Box::new("static");
        let owned: Box<dyn Any + Send> = Box::new(String::from("owned"));
        let other: Box<dyn Any + Send> = Box::new(7_u8);
        assert_eq!(panic_message(s.as_ref()), "static");
        assert_eq!(panic_message(owned.as_ref()), "owned");
        assert_eq!(
            panic_message(other.as_ref()),
            "panic with a non-string payload"
        );
    }
}

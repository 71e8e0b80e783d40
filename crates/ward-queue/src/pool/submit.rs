//! The submit paths: a job's way into the queue or the key table under each `Policy`, the
//! waits for room and for resume, eviction under `DropOldest` and runs in the caller. Not here:
//! the public `Pool::submit`/`submit_keyed` (`mod.rs`), which call these, and what happens to a
//! job once a worker has it (`worker`).

use std::hash::Hash;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{SendTimeoutError, Sender, TrySendError};

use super::task::{Envelope, Queued, Task, send_until, try_recv, try_send};
use super::{Policy, Shared, WAIT_SLICE};
use crate::keys::{Offer, SlotId};
use crate::{DropReason, Error, JobId};

/// How long a submitter under `Block` waits for a full queue to drain to half before it takes
/// the first slot that frees instead.
const ROOM_SLICE: Duration = Duration::from_millis(2);
/// How many times that submitter yields to the workers before it parks.
const ROOM_YIELDS: u32 = 64;

/// One job in `SAMPLE_EVERY` has its wait and run latency measured (a power of two).
const SAMPLE_EVERY: u64 = 64;

impl<J, K> Shared<J, K>
where
    J: Send + 'static,
    K: Eq + Hash + Clone + Send + 'static,
{
    #[inline]
    pub(super) fn new_task(&self, job: J) -> Task<J> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let sampled = id & (SAMPLE_EVERY - 1) == 0;
        Task::new(JobId(id), job, sampled.then(Instant::now))
    }

    fn reject(&self, error: fn(J) -> Error<J>, task: Task<J>) -> Result<(), Error<J>> {
        self.intake_stats.rejected.fetch_add(1, Ordering::Relaxed);
        Err(error(task.job))
    }

    fn refuse_closed(&self, job: J) -> Result<(), Error<J>> {
        self.intake_stats.closed.fetch_add(1, Ordering::SeqCst);
        Err(Error::Closed(job))
    }

    pub(super) fn submit_unkeyed(
        &self,
        tx: Option<&Sender<Queued<J>>>,
        task: Task<J>,
    ) -> Result<(), Error<J>> {
        let Some(tx) = tx else {
            return self.refuse_closed(task.job);
        };
        let mut envelope = Envelope::Job(task);
        let mut until = None;
        loop {
            let paused = self.paused.load(Ordering::SeqCst);
            if !paused {
                match try_send(tx, envelope) {
                    Ok(()) => return Ok(()),
                    Err(TrySendError::Full(back)) => envelope = back,
                    Err(TrySendError::Disconnected(back)) => {
                        return self.refuse_closed(back.into_unkeyed().job);
                    }
                }
            }
            match self.config.policy {
                Policy::Reject if paused => {
                    return self.reject(Error::Paused, envelope.into_unkeyed());
                }
                Policy::DropOldest if paused => {
                    return self.reject(Error::Paused, envelope.into_unkeyed());
                }
                Policy::Reject => return self.reject(Error::Full, envelope.into_unkeyed()),
                Policy::DropOldest => {
                    let evicted = self.evict_oldest(tx);
                    if let Some(task) = evicted {
                        self.drop_task(task, DropReason::Evicted);
                    }
                }
                Policy::CallerRuns => {
                    self.run_in_caller(envelope.into_unkeyed());
                    return Ok(());
                }
                Policy::Block { timeout } => {
                    let until = *until.get_or_insert_with(|| deadline_after(timeout));
                    if paused {
                        if !self.wait_gate(until) {
                            return self.reject(Error::Timeout, envelope.into_unkeyed());
                        }
                        continue;
                    }
                    if self.wait_for_room(until) {
                        continue;
                    }
                    return match send_until(tx, envelope, until) {
                        Ok(()) => Ok(()),
                        Err(SendTimeoutError::Timeout(back)) => {
                            self.reject(Error::Timeout, back.into_unkeyed())
                        }
                        Err(SendTimeoutError::Disconnected(back)) => {
                            self.refuse_closed(back.into_unkeyed().job)
                        }
                    };
                }
            }
        }
    }

    pub(super) fn submit_keyed(
        &self,
        tx: Option<&Sender<Queued<J>>>,
        mut key: K,
        mut task: Task<J>,
    ) -> Result<(), Error<J>> {
        let Some(tx) = tx else {
            return self.refuse_closed(task.job);
        };
        let mut until = None;
        loop {
            let paused = self.paused.load(Ordering::SeqCst);
            let id = task.id;
            let mut unsent = None;
            let hash = self.keys.hash(&key);
            let mut keys = self.keys.by_hash(hash).lock();
            let offer = if let (Policy::Block { .. }, false) = (self.config.policy, paused) {
                // Record the job as queued and send its token after the lock, waiting for room
                // if need be. No worker can take the job before the token is sent; a newer job
                // of this key replaces it meanwhile and counts on this token.
                keys.offer_hashed(hash, key, task, |slot| {
                    unsent = Some(slot);
                    true
                })
            } else {
                // The other policies decide by whether the token fits, so it is sent (never
                // blocking) under the lock, where the worker receiving it finds the job recorded.
                keys.offer_hashed(hash, key, task, |slot| {
                    !paused && try_send(tx, Envelope::Key(slot)).is_ok()
                })
            };
            drop(keys);
            match offer {
                Offer::Coalesced(old) => {
                    self.drop_task(old, DropReason::Coalesced);
                    return Ok(());
                }
                Offer::Deferred => return Ok(()),
                Offer::Queued => {
                    return match (unsent, self.config.policy) {
                        (Some(slot), Policy::Block { timeout }) => {
                            self.send_token(tx, slot, id, || {
                                *until.get_or_insert_with(|| deadline_after(timeout))
                            })
                        }
                        _ => Ok(()),
                    };
                }
                Offer::Full(back_key, back_task) => (key, task) = (back_key, back_task),
            }
            match self.config.policy {
                Policy::Reject | Policy::DropOldest if paused => {
                    return self.reject(Error::Paused, task);
                }
                Policy::Reject => return self.reject(Error::Full, task),
                Policy::DropOldest => {
                    let evicted = self.evict_oldest(tx);
                    if let Some(task) = evicted {
                        self.drop_task(task, DropReason::Evicted);
                    }
                }
                Policy::CallerRuns => {
                    let claimed = self.keys.by_hash(self.keys.hash(&key)).lock().claim(&key);
                    if let Some(slot) = claimed {
                        self.run_keyed(&self.caller, false, slot, task);
                        return Ok(());
                    }
                    // Someone queued this key meanwhile: admit again, which now coalesces.
                }
                Policy::Block { timeout } => {
                    // Only reached while paused.
                    let until = *until.get_or_insert_with(|| deadline_after(timeout));
                    if !self.wait_gate(until) {
                        return self.reject(Error::Timeout, task);
                    }
                }
            }
        }
    }

    /// Sends the token of job `id`, already recorded as queued in `slot`, waiting for room if
    /// the queue is full. At the deadline (`until`, asked only then) the job is withdrawn and
    /// refused, unless a newer job of the key has replaced it: that one was accepted and is owed
    /// this token, so the wait goes on.
    fn send_token(
        &self,
        tx: &Sender<Queued<J>>,
        slot: SlotId,
        id: JobId,
        until: impl FnOnce() -> Option<Instant>,
    ) -> Result<(), Error<J>> {
        let is_ours = |task: &Task<J>| task.id == id;
        let mut until = match try_send(tx, Envelope::Key(slot)) {
            Ok(()) => return Ok(()),
            Err(TrySendError::Full(_)) => until(),
            Err(TrySendError::Disconnected(_)) => None, // The send below says so at once.
        };
        if self.wait_for_room(until) && try_send(tx, Envelope::Key(slot)).is_ok() {
            return Ok(());
        }
        loop {
            match send_until(tx, Envelope::Key(slot), until) {
                Ok(()) => return Ok(()),
                Err(SendTimeoutError::Timeout(_)) => {
                    let withdrawn = self.keys.by_slot(slot).lock().withdraw(slot, is_ours);
                    match withdrawn {
                        Some(task) => return self.reject(Error::Timeout, task),
                        None => until = None,
                    }
                }
                Err(SendTimeoutError::Disconnected(_)) => {
                    let withdrawn = self.keys.by_slot(slot).lock().withdraw(slot, is_ours);
                    return withdrawn.map_or(Ok(()), |task| self.refuse_closed(task.job));
                }
            }
        }
    }

    /// Waits for resume, a slice at a time; false once `until` has passed.
    fn wait_gate(&self, until: Option<Instant>) -> bool {
        {
            let mut gate = self.gate.lock();
            let slice = Instant::now() + WAIT_SLICE;
            let limit = until.map_or(slice, |until| until.min(slice));
            self.gate_cv.wait_until(&mut gate, limit);
        }
        until.is_none_or(|until| Instant::now() < until)
    }

    pub(super) fn wake_gate(&self) {
        let _gate = self.gate.lock();
        self.gate_cv.notify_all();
    }

    /// Waits for the workers to drain a full queue to half its capacity, at most `ROOM_SLICE`
    /// and until `until`; true if it got there. A submitter faster than its workers that took
    /// each slot as it freed would be woken once per job, and its sends would fight the workers
    /// for the queue's cache lines on every job; filling half the queue at a time costs one
    /// wake-up per half. Past the slice the caller takes the next free slot as before, so a
    /// submit under slow jobs returns at most one slice later than a slot frees.
    fn wait_for_room(&self, until: Option<Instant>) -> bool {
        let half = self.config.capacity / 2;
        let end = Instant::now() + ROOM_SLICE;
        let end = until.map_or(end, |until| until.min(end));
        // Fast workers drain half a queue in microseconds, quicker than a parked thread wakes
        // up: yield to them a while before parking, so that they never run dry meanwhile.
        for _ in 0..ROOM_YIELDS {
            if self.rx.len() <= half {
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
            thread::yield_now();
        }
        let mut room = self.room.lock();
        self.room_waiters.fetch_add(1, Ordering::SeqCst);
        // Counted as waiting before looking: a worker that drains the queue to half after this
        // look sees the count and wakes us (it takes `room` first, so not before we wait).
        while self.rx.len() > half {
            if self.room_cv.wait_until(&mut room, end).timed_out() {
                break;
            }
        }
        self.room_waiters.fetch_sub(1, Ordering::SeqCst);
        self.rx.len() <= half
    }

    /// Called by a worker after it took an envelope: wakes submitters waiting for room once the
    /// queue is down to half. A single atomic load when nobody waits.
    #[inline]
    pub(super) fn wake_room(&self) {
        if self.room_waiters.load(Ordering::SeqCst) > 0 && self.rx.len() <= self.config.capacity / 2
        {
            let _room = self.room.lock();
            self.room_cv.notify_all();
        }
    }

    /// Makes room under `DropOldest`: takes the oldest queued item out and returns its job, for
    /// the caller to report.
    fn evict_oldest(&self, tx: &Sender<Queued<J>>) -> Option<Task<J>> {
        let Some(oldest) = try_recv(&self.rx) else {
            return None; // The workers emptied it meanwhile.
        };
        match oldest {
            Envelope::Job(task) => Some(task),
            Envelope::Key(slot) => self.keys.by_slot(slot).lock().evict_token(slot),
            Envelope::Retry(retry) => {
                let (task, slot) = *retry;
                let mut keys = self.keys.by_slot(slot).lock();
                if let Some(next) = keys.release(slot, false) {
                    // The key was held by the evicted retry and a newer job waits on it: that
                    // job now needs a token of its own. Record it first, then send without the
                    // lock; a full queue drains, since workers never wait on a submitter.
                    keys.requeue(slot, next);
                    drop(keys);
                    if send_until(tx, Envelope::Key(slot), None).is_err() {
                        log::error!("ward-queue: queue disconnected while requeueing a key");
                    }
                }
                Some(task)
            }
        }
    }

    fn run_in_caller(&self, mut task: Task<J>) {
        let result = self.attempt(&self.caller, false, &mut task);
        self.settle(&self.caller, task, result, None);
    }
}

fn deadline_after(timeout: Option<Duration>) -> Option<Instant> {
    timeout.and_then(|timeout| Instant::now().checked_add(timeout))
}

//! The overseer thread and its retry heap: a failed attempt waits here for its backoff, not on a
//! worker, and is sent back through the queue when due; workers stuck past the job timeout are
//! replaced. Not here: deciding that an attempt is retried (`worker`), or running it.

use std::collections::BinaryHeap;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use parking_lot::MutexGuard;

use super::Shared;
use super::task::{Envelope, Queued, Task, try_send};
use super::worker::spawn_into;
use crate::keys::SlotId;
use crate::{DropReason, Event};

/// How long a due retry waits before the overseer tries again when the queue is full.
const RETRY_REQUEUE: Duration = Duration::from_millis(2);

/// A retry waiting for its time, in the overseer's heap (earliest first).
pub(super) struct Delayed<J, K> {
    due: Instant,
    seq: u64,
    pub(super) task: Task<J>,
    key: Option<K>,
}

impl<J, K> PartialEq for Delayed<J, K> {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl<J, K> Eq for Delayed<J, K> {}
impl<J, K> PartialOrd for Delayed<J, K> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<J, K> Ord for Delayed<J, K> {
    // Reversed: `BinaryHeap` is a max-heap and the earliest retry must come out first.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.due, other.seq).cmp(&(self.due, self.seq))
    }
}

pub(super) struct Timer<J> {
    pub(super) heap: BinaryHeap<Delayed<J, SlotId>>,
    pub(super) seq: u64,
    /// Taken away when shutdown starts: retries are then kept for `close` to return.
    pub(super) tx: Option<Sender<Queued<J>>>,
    /// Set once `close` has emptied the heap: a retry scheduled later is dropped and reported.
    pub(super) sealed: bool,
    /// Places taken by retries about to be pushed.
    pub(super) reserved: usize,
    pub(super) quit: bool,
}

pub(super) enum Schedule {
    Scheduled,
    BacklogFull,
    Sealed,
}

impl<J, K> Shared<J, K>
where
    J: Send + 'static,
    K: Eq + Hash + Clone + Send + 'static,
{
    /// Takes a place in the retry backlog (at most `capacity` retries wait at once).
    pub(super) fn reserve_retry(&self) -> Schedule {
        let mut timer = self.timer.lock();
        if timer.sealed {
            Schedule::Sealed
        } else if timer.heap.len() + timer.reserved >= self.config.capacity {
            Schedule::BacklogFull
        } else {
            timer.reserved += 1;
            Schedule::Scheduled
        }
    }

    /// Puts a retry with a reserved place into the heap. True if it is there (a keyed job then
    /// keeps its key); false if shutdown sealed the heap meanwhile and the job was reported.
    pub(super) fn schedule(&self, task: Task<J>, slot: Option<SlotId>, delay: Duration) -> bool {
        let mut timer = self.timer.lock();
        timer.reserved -= 1;
        if timer.sealed {
            drop(timer);
            self.drop_task(task, DropReason::Shutdown);
            return false;
        }
        timer.seq += 1;
        let seq = timer.seq;
        timer.heap.push(Delayed {
            due: Instant::now() + delay,
            seq,
            task,
            key: slot,
        });
        self.timer_cv.notify_all();
        true
    }
}

/// The overseer: sends retries when they come due and replaces workers stuck past the timeout.
pub(super) fn overseer_main<J, K>(shared: &Arc<Shared<J, K>>)
where
    J: Send + 'static,
    K: Eq + Hash + Clone + Send + 'static,
{
    let mut timer = shared.timer.lock();
    while !timer.quit {
        let now = Instant::now();
        send_due_retries(&mut timer, now);
        let mut next = timer.heap.peek().map(|delayed| delayed.due);
        if let Some(timeout) = shared.config.timeout {
            // Wake at the earliest running attempt's deadline; with none running, one timeout
            // from now: an attempt that starts meanwhile cannot be overdue before then. An idle
            // pool thus wakes once per timeout, not on a fixed tick.
            let deadline =
                MutexGuard::unlocked(&mut timer, || replace_overdue_workers(shared, now, timeout));
            let check = deadline.unwrap_or(now + timeout);
            next = Some(next.map_or(check, |due| due.min(check)));
        }
        if timer.quit {
            break;
        }
        match next {
            Some(next) => {
                shared.timer_cv.wait_until(&mut timer, next);
            }
            None => shared.timer_cv.wait(&mut timer),
        }
    }
}

fn send_due_retries<J>(timer: &mut Timer<J>, now: Instant) {
    let Timer { heap, seq, tx, .. } = timer;
    let Some(tx) = tx.as_ref() else {
        return; // Shutting down: retries stay for `close` to return.
    };
    while heap.peek().is_some_and(|delayed| delayed.due <= now) {
        let Some(delayed) = heap.pop() else { break };
        let envelope = match delayed.key {
            Some(key) => Envelope::Retry(Box::new((delayed.task, key))),
            None => Envelope::Job(delayed.task),
        };
        if let Err(full) = try_send(tx, envelope) {
            // Queue full: try again shortly rather than block the timeout checks.
            if let Some((task, key)) = full.into_inner().into_parts() {
                *seq += 1;
                heap.push(Delayed {
                    due: now + RETRY_REQUEUE,
                    seq: *seq,
                    task,
                    key,
                });
            }
            break;
        }
    }
}

/// Replaces the workers whose attempt ran past `timeout`, and returns the earliest deadline of
/// the attempts still within it.
fn replace_overdue_workers<J, K>(
    shared: &Arc<Shared<J, K>>,
    now: Instant,
    timeout: Duration,
) -> Option<Instant>
where
    J: Send + 'static,
    K: Eq + Hash + Clone + Send + 'static,
{
    let mut overdue = Vec::new();
    let mut earliest: Option<Instant> = None;
    {
        let mut crew = shared.crew.lock();
        let mut i = 0;
        while i < crew.workers.len() {
            let expired = {
                let cell = &crew.workers[i].0;
                let mut current = cell.current.lock();
                match current.as_mut() {
                    Some(running)
                        if running.abandoned.is_none()
                            && running_for(running.started, now) >= timeout =>
                    {
                        let after = running_for(running.started, now);
                        running.abandoned = Some(after);
                        cell.abandoned.store(true, Ordering::Release);
                        Some((running.id, running.attempt, after))
                    }
                    Some(running) if running.abandoned.is_none() => {
                        let due = running.started + timeout;
                        earliest = Some(earliest.map_or(due, |e| e.min(due)));
                        None
                    }
                    _ => None,
                }
            };
            let Some(expired) = expired else {
                i += 1;
                continue;
            };
            let worker = crew.workers.swap_remove(i);
            crew.abandoned.push(worker);
            overdue.push(expired);
            if let Err(err) = spawn_into(shared, &mut crew) {
                log::error!(
                    "ward-queue: cannot replace a timed-out worker, capacity shrinks: {err}"
                );
            }
        }
    }
    for (id, attempt, after) in overdue {
        shared
            .intake_stats
            .timed_out
            .fetch_add(1, Ordering::Relaxed);
        shared.emit(Event::TimedOut { id, attempt, after });
    }
    earliest
}

/// How long an attempt started at `started` has run at `now`: a pure function of the two
/// instants, so the timeout rule is tested without sleeping.
fn running_for(started: Instant, now: Instant) -> Duration {
    now.saturating_duration_since(started)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::JobId;

    #[test]
    fn retries_come_out_of_the_heap_earliest_first() {
        let t0 = Instant::now();
        let mut heap = BinaryHeap::new();
        for (seq, ms) in [(1, 30), (2, 10), (3, 20), (4, 10)] {
            heap.push(Delayed::<u32, ()> {
                due: t0 + Duration::from_millis(ms),
                seq,
                task: Task::new(JobId(seq), 0, None),
                key: None,
            });
        }
        let order: Vec<u64> = std::iter::from_fn(|| heap.pop().map(|d| d.seq)).collect();
        assert_eq!(order, [2, 4, 3, 1]);
    }

    #[test]
    fn an_attempt_is_overdue_only_once_it_has_run_the_whole_timeout() {
        let started = Instant::now();
        let timeout = Duration::from_millis(50);
        assert!(running_for(started, started + Duration::from_millis(49)) < timeout);
        assert!(running_for(started, started + timeout) >= timeout);
        assert_eq!(running_for(started + timeout, started), Duration::ZERO);
    }
}

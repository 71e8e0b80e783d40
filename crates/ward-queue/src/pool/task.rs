//! What travels through the queue: a `Task` (a job with its bookkeeping), the `Envelope`
//! that carries it or a key's token, and the only functions that put envelopes into the queue and
//! take them out. Not here: what is done with an envelope once taken (`worker`, `submit`).

use std::mem::ManuallyDrop;
use std::time::Instant;

use crossbeam_channel::{Receiver, SendTimeoutError, Sender, TryRecvError, TrySendError};

use crate::keys::SlotId;
use crate::{Failure, JobId};

/// A job with its bookkeeping, kept small because it is copied through the queue: what most
/// jobs never need lives behind one optional box.
pub(super) struct Task<J> {
    pub(super) id: JobId,
    pub(super) job: J,
    pub(super) extra: Option<Box<Extra>>,
}

#[derive(Default)]
pub(super) struct Extra {
    /// When a sampled job was submitted, until its first attempt starts.
    enqueued: Option<Instant>,
    /// One per failed attempt, oldest first.
    failures: Vec<Failure>,
}

impl<J> Task<J> {
    pub(super) fn new(id: JobId, job: J, enqueued: Option<Instant>) -> Self {
        let extra = enqueued.map(|enqueued| {
            Box::new(Extra {
                enqueued: Some(enqueued),
                failures: Vec::new(),
            })
        });
        Task { id, job, extra }
    }

    /// How many attempts have failed; the running attempt is this plus one.
    pub(super) fn failed_attempts(&self) -> u32 {
        self.extra.as_ref().map_or(0, |extra| {
            u32::try_from(extra.failures.len()).unwrap_or(u32::MAX)
        })
    }

    pub(super) fn take_enqueued(&mut self) -> Option<Instant> {
        self.extra.as_mut().and_then(|extra| extra.enqueued.take())
    }

    pub(super) fn push_failure(&mut self, failure: Failure) {
        self.extra
            .get_or_insert_with(Box::default)
            .failures
            .push(failure);
    }

    pub(super) fn into_failures(self) -> (JobId, J, Vec<Failure>) {
        let failures = self.extra.map(|extra| extra.failures).unwrap_or_default();
        (self.id, self.job, failures)
    }
}

/// What travels through the queue.
pub(super) enum Envelope<J, K> {
    /// An unkeyed job (first attempt or retry).
    Job(Task<J>),
    /// A token: the job waiting for this key in the key table is ready to run.
    Key(K),
    /// A due retry of a keyed job; the key has stayed running since the failed attempt. Boxed:
    /// rare, and it would make every slot of the queue bigger.
    Retry(Box<(Task<J>, K)>),
}

impl<J, K> Envelope<J, K> {
    pub(super) fn into_parts(self) -> Option<(Task<J>, Option<K>)> {
        match self {
            Envelope::Job(task) => Some((task, None)),
            Envelope::Retry(retry) => {
                let (task, key) = *retry;
                Some((task, Some(key)))
            }
            Envelope::Key(_) => None,
        }
    }

    /// The task of an envelope built as `Envelope::Job` on the unkeyed submit path.
    pub(super) fn into_unkeyed(self) -> Task<J> {
        match self {
            Envelope::Job(task) => task,
            // The unkeyed path only ever builds `Job`, and gets back what it sent.
            Envelope::Key(_) | Envelope::Retry(..) => {
                unreachable!("the unkeyed submit path got back an envelope it did not send")
            }
        }
    }
}

/// An envelope as it sits in the queue. `ManuallyDrop` because crossbeam-channel's send and
/// receive compile to markedly slower code for a message type with drop glue (the queue rows of
/// `cargo xtask bench` show it). Nothing leaks for it: messages
/// only enter and leave the queue through the functions below, which wrap and unwrap them, and
/// `Pool::close` empties the queue before it can be dropped.
pub(super) type Queued<J> = ManuallyDrop<Envelope<J, SlotId>>;

pub(super) fn try_send<J>(
    tx: &Sender<Queued<J>>,
    envelope: Envelope<J, SlotId>,
) -> Result<(), TrySendError<Envelope<J, SlotId>>> {
    tx.try_send(ManuallyDrop::new(envelope))
        .map_err(|err| match err {
            TrySendError::Full(back) => TrySendError::Full(ManuallyDrop::into_inner(back)),
            TrySendError::Disconnected(back) => {
                TrySendError::Disconnected(ManuallyDrop::into_inner(back))
            }
        })
}

/// A blocking send, bounded by `until` if given. Nothing can close the queue meanwhile (closing
/// needs the pool exclusively), so waiting in one piece is safe.
#[inline]
pub(super) fn send_until<J>(
    tx: &Sender<Queued<J>>,
    envelope: Envelope<J, SlotId>,
    until: Option<Instant>,
) -> Result<(), SendTimeoutError<Envelope<J, SlotId>>> {
    let queued = ManuallyDrop::new(envelope);
    let sent = match until {
        Some(until) => tx.send_deadline(queued, until),
        None => tx
            .send(queued)
            .map_err(|err| SendTimeoutError::Disconnected(err.into_inner())),
    };
    sent.map_err(|err| match err {
        SendTimeoutError::Timeout(back) => {
            SendTimeoutError::Timeout(ManuallyDrop::into_inner(back))
        }
        SendTimeoutError::Disconnected(back) => {
            SendTimeoutError::Disconnected(ManuallyDrop::into_inner(back))
        }
    })
}

/// The next envelope, waiting for one; `None` once the queue is empty and disconnected.
#[inline]
pub(super) fn recv<J>(rx: &Receiver<Queued<J>>) -> Option<Envelope<J, SlotId>> {
    rx.recv().ok().map(ManuallyDrop::into_inner)
}

/// The next envelope if one is queued.
#[inline]
pub(super) fn try_recv<J>(rx: &Receiver<Queued<J>>) -> Option<Envelope<J, SlotId>> {
    match rx.try_recv() {
        Ok(queued) => Some(ManuallyDrop::into_inner(queued)),
        Err(TryRecvError::Empty | TryRecvError::Disconnected) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_slots_stay_small() {
        // One word for the job number, one for the job, one for the optional extras, one tag.
        assert!(size_of::<Envelope<u64, u64>>() <= 32);
        assert!(size_of::<Envelope<u64, String>>() <= 32);
    }
}

//! The buffer between the backends' threads and the watcher's thread: bounded by a count of
//! the events waiting, not by an array made up front. A backend hands on the events of one read
//! of the kernel's queue as one message, which wakes the watcher's thread once (see
//! `wake::Gather` for why). crossbeam's bounded channel allocates and
//! writes every slot when it is made, so 32,768 events' worth cost 2.6 MB of resident memory for
//! a buffer that is nearly always empty; its unbounded channel grows by blocks of slots as
//! events wait and frees them as they are taken. Not here: what an event that does not fit
//! becomes (a rescan, `watches.rs` and the worker).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, TrySendError};

use super::{Raw, RawEvent};

/// A buffer of at most `cap` events.
pub(super) fn channel(cap: usize) -> (RawSender, RawReceiver) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let queued = Arc::new(AtomicUsize::new(0));
    (
        RawSender {
            tx,
            queued: queued.clone(),
            cap,
        },
        RawReceiver { rx, queued },
    )
}

/// The backends' end.
#[derive(Clone, Debug)]
pub(super) struct RawSender {
    tx: Sender<Raw>,
    /// Events sent and not yet taken.
    queued: Arc<AtomicUsize>,
    cap: usize,
}

impl RawSender {
    /// Queues as many of `events` (received `at`) as there is room for, in one message,
    /// without blocking: `Full` gives back those past `cap` events waiting (the first ones were
    /// queued), `Disconnected` all of them if the watcher's thread is gone.
    pub(super) fn try_send(
        &self,
        at: Instant,
        mut events: Vec<RawEvent>,
    ) -> Result<(), TrySendError<Vec<RawEvent>>> {
        let mut queued = self.queued.load(Ordering::Acquire);
        let fits = loop {
            let fits = self.cap.saturating_sub(queued).min(events.len());
            match self.queued.compare_exchange_weak(
                queued,
                queued + fits,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break fits,
                Err(now) => queued = now,
            }
        };
        let rest = events.split_off(fits);
        if !events.is_empty()
            && let Err(e) = self.tx.send((at, events))
        {
            self.queued.fetch_sub(fits, Ordering::AcqRel);
            let mut all = e.into_inner().1;
            all.extend(rest);
            return Err(TrySendError::Disconnected(all));
        }
        if rest.is_empty() {
            Ok(())
        } else {
            Err(TrySendError::Full(rest))
        }
    }
}

/// The watcher's end: receive from [`RawReceiver::channel`], then say how many were taken.
#[derive(Debug)]
pub(super) struct RawReceiver {
    rx: Receiver<Raw>,
    queued: Arc<AtomicUsize>,
}

impl RawReceiver {
    /// The channel, to select on and receive from.
    pub(super) fn channel(&self) -> &Receiver<Raw> {
        &self.rx
    }

    /// `n` events were received (counted in events, not messages): room for as many more.
    pub(super) fn took(&self, n: usize) {
        self.queued.fetch_sub(n, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    fn events(n: usize) -> Vec<RawEvent> {
        (0..n)
            .map(|i| Err(notify::Error::generic(&i.to_string())))
            .collect()
    }

    fn count(result: Result<(), TrySendError<Vec<RawEvent>>>) -> Result<(), (bool, usize)> {
        result.map_err(|e| match e {
            TrySendError::Full(rest) => (true, rest.len()),
            TrySendError::Disconnected(all) => (false, all.len()),
        })
    }

    #[test]
    fn at_most_cap_events_wait_and_each_taken_makes_room() {
        let (tx, rx) = channel(3);
        let now = Instant::now();
        assert_eq!(count(tx.try_send(now, events(1))), Ok(()));
        // Two of three fit: the first two are queued, the third given back.
        assert_eq!(count(tx.clone().try_send(now, events(3))), Err((true, 1)));
        assert_eq!(count(tx.try_send(now, events(1))), Err((true, 1)));
        let (_, first) = rx.channel().try_recv().unwrap();
        assert_eq!(first.len(), 1);
        rx.took(first.len());
        assert_eq!(count(tx.try_send(now, events(2))), Err((true, 1)));
        let sizes: Vec<usize> = rx.channel().try_iter().map(|(_, e)| e.len()).collect();
        assert_eq!(sizes, [2, 1], "one message per send, in order");
        rx.took(3);
        drop(rx);
        assert_eq!(count(tx.try_send(now, events(2))), Err((false, 2)));
    }
}

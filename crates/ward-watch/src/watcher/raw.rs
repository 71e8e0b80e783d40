//! The buffer between the backends' threads and the watcher's thread: bounded by a count of
//! the events waiting, not by an array made up front. crossbeam's bounded channel allocates and
//! writes every slot when it is made, so 32,768 events' worth cost 2.6 MB of resident memory for
//! a buffer that is nearly always empty; its unbounded channel grows by blocks of slots as
//! events wait and frees them as they are taken. Not here: what an event that does not fit
//! becomes (a rescan, `watches.rs` and the worker).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use super::Raw;

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
    /// Queues `raw` without blocking: `Full` if `cap` events wait already, `Disconnected` if the
    /// watcher's thread is gone.
    pub(super) fn try_send(&self, raw: Raw) -> Result<(), TrySendError<Raw>> {
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.cap {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(TrySendError::Full(raw));
        }
        self.tx.send(raw).map_err(|e| {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            TrySendError::Disconnected(e.into_inner())
        })
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

    /// `n` events were received: room for as many more.
    pub(super) fn took(&self, n: usize) {
        self.queued.fetch_sub(n, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    fn raw() -> Raw {
        (Instant::now(), Err(notify::Error::generic("test")))
    }

    #[test]
    fn at_most_cap_events_wait_and_each_taken_makes_room() {
        let (tx, rx) = channel(2);
        assert!(tx.try_send(raw()).is_ok());
        assert!(tx.clone().try_send(raw()).is_ok());
        assert!(matches!(tx.try_send(raw()), Err(TrySendError::Full(_))));
        assert!(rx.channel().try_recv().is_ok());
        rx.took(1);
        assert!(tx.try_send(raw()).is_ok());
        assert!(matches!(tx.try_send(raw()), Err(TrySendError::Full(_))));
        assert_eq!(rx.channel().try_iter().count(), 2);
        rx.took(2);
        drop(rx);
        assert!(matches!(
            tx.try_send(raw()),
            Err(TrySendError::Disconnected(_))
        ));
    }
}

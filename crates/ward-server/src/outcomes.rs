//! Finished jobs' outcomes on their way from the job threads to the server's loop, which records
//! them in groups instead of waking up for each one. Not the recording itself (`tracker`).
//!
//! A job thread sends its outcome and rings a doorbell only for the first outcome the loop has
//! not taken yet, and again every `ring_every` outcomes. The first ring makes the loop set a timer
//! of [`GATHER_FOR`]; it takes every waiting outcome when that fires, or sooner when it wakes for
//! anything else (a batch, a request, a full doorbell). Under a steady stream of jobs the loop
//! wakes a few times per [`GATHER_FOR`] instead of once per job, and no outcome waits longer than
//! that: nothing that depends on it (a path's in-flight state, the backlog's refill) lags more.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use crate::jobs::{Event, Job};
use crate::manifest::{Failure, FileMeta, Update};

/// How long the loop lets outcomes gather once the first rings.
pub(crate) const GATHER_FOR: Duration = Duration::from_millis(2);

/// The most outcomes between two rings of the doorbell.
const RING_EVERY_MAX: usize = 256;

/// The job threads' end: cheap to clone, one per pool callback.
#[derive(Debug, Clone)]
pub(crate) struct OutcomeSender {
    updates: Sender<Update>,
    /// Outcomes sent since the loop last took them (an upper bound: see [`Outcomes::take`]).
    waiting: Arc<AtomicUsize>,
    bell: Sender<()>,
    ring_every: usize,
    counts: Arc<Counts>,
}

/// The loop's end.
#[derive(Debug)]
pub(crate) struct Outcomes {
    updates: Receiver<Update>,
    waiting: Arc<AtomicUsize>,
    bell: Receiver<()>,
    ring_every: usize,
    counts: Arc<Counts>,
}

/// Outcomes sent and taken since the channel was made, so that a sender can tell whether the
/// loop (and so every comparison with the manifest it makes from then on) knows of its outcomes:
/// see [`OutcomeSender::sent`].
#[derive(Debug, Default)]
struct Counts {
    /// Counted before each send.
    sent: AtomicU64,
    /// Counted by the loop as it takes each.
    taken: AtomicU64,
}

/// A channel of outcomes whose doorbell rings at the first waiting outcome and every `ring_every`
/// (at least 1, at most 256). The server passes half its pool's queue capacity, so that the loop
/// refills the queue before the job threads empty it.
pub(crate) fn channel(ring_every: usize) -> (OutcomeSender, Outcomes) {
    let ring_every = ring_every.clamp(1, RING_EVERY_MAX);
    // Unbounded: each accepted job ends in one outcome (two for a rename), and only jobs the loop
    // handed to the pool finish, so what waits is bounded by what the pool holds. A bounded
    // channel dropped outcomes while the loop compared a large subtree.
    let (updates_tx, updates) = crossbeam_channel::unbounded();
    // One pending ring is enough to wake the loop; more would say nothing new.
    let (bell_tx, bell) = crossbeam_channel::bounded(1);
    let waiting = Arc::new(AtomicUsize::new(0));
    let counts = Arc::new(Counts::default());
    (
        OutcomeSender {
            updates: updates_tx,
            waiting: Arc::clone(&waiting),
            bell: bell_tx,
            ring_every,
            counts: Arc::clone(&counts),
        },
        Outcomes {
            updates,
            waiting,
            bell,
            ring_every,
            counts,
        },
    )
}

impl OutcomeSender {
    /// Hands `update` to the loop.
    ///
    /// # Errors
    /// Gives the update back when the loop's end is gone (the server is ending).
    pub(crate) fn send(&self, update: Update) -> Result<(), Update> {
        self.counts.sent.fetch_add(1, Ordering::AcqRel);
        self.updates.send(update).map_err(|e| e.into_inner())?;
        // Counted after the send: a count the loop has reset (in `take`) is then either seen
        // here as zero, so this rings, or it was reset after this update was in the channel,
        // which the loop's `take` then reads.
        let waiting = self.waiting.fetch_add(1, Ordering::AcqRel) + 1;
        if waiting == 1 || waiting.is_multiple_of(self.ring_every) {
            // Full: a ring already waits, which is all the loop needs.
            let _ = self.bell.try_send(());
        }
        Ok(())
    }

    /// A count that the loop's [`OutcomeSender::taken`] reaches only once it has taken every
    /// outcome this thread sent so far. Each send is counted before it is in the channel, so
    /// whatever is in the channel ahead of this thread's last outcome was counted before it.
    pub(crate) fn sent(&self) -> u64 {
        self.counts.sent.load(Ordering::Acquire)
    }

    /// Outcomes the loop has taken: a comparison with the manifest it makes from now on knows of
    /// each of them (they are recorded before it compares).
    pub(crate) fn taken(&self) -> u64 {
        self.counts.taken.load(Ordering::Acquire)
    }

    /// Hands `update` to the loop, or says once that it is lost with the server's end.
    pub(crate) fn tell(&self, update: Update) {
        if let Err(update) = self.send(update) {
            log::warn!(
                "outcome of {} not recorded (it will be redone after a restart): the server is ending",
                update.path().display()
            );
        }
    }

    /// `job` succeeded on the version `processed` (`None`: the file was gone): its path's
    /// outcome and, for a rename, the removal of its old path.
    pub(crate) fn succeeded(&self, job: &Job, processed: Option<FileMeta>) {
        self.tell(Update::Finished {
            path: job.path.to_path_buf(),
            event: job.event,
            ok: true,
            processed,
            old_path: job.old_path.clone(),
            seq: job.seq,
        });
        if let Some(old) = &job.old_path {
            self.tell(Update::Finished {
                path: old.clone(),
                // A rename tells the consumer its old path is gone.
                event: Event::Removed,
                ok: true,
                processed: None,
                old_path: None,
                // The number the rename's queueing gave that removal.
                seq: job.seq.map(|seq| seq - 1),
            });
        }
    }

    /// `job` ended without success: its failure, when it gave up (`None`: ward's own stop ended
    /// it, no failure of the job), then its end.
    pub(crate) fn failed(&self, job: &Job, failure: Option<Failure>) {
        if let Some(failure) = failure {
            self.tell(Update::GaveUp {
                path: job.path.to_path_buf(),
                failure: Box::new(failure),
            });
        }
        self.tell(Update::Finished {
            path: job.path.to_path_buf(),
            event: job.event,
            ok: false,
            processed: None,
            old_path: job.old_path.clone(),
            seq: job.seq,
        });
    }
}

impl Outcomes {
    /// The doorbell, for the loop's `select!`.
    pub(crate) fn bell(&self) -> &Receiver<()> {
        &self.bell
    }

    /// Whether enough outcomes wait that the loop should take them now rather than let more
    /// gather (the pool's queue may be running low).
    pub(crate) fn many_waiting(&self) -> bool {
        self.waiting.load(Ordering::Acquire) >= self.ring_every
    }

    /// Every outcome waiting, oldest first.
    pub(crate) fn take(&self) -> impl Iterator<Item = Update> + '_ {
        // Reset before reading: an outcome counted after this reset rings again; one sent but
        // counted before it is in the channel already and read below. The count may run ahead of
        // what is read (an outcome read here but counted after the reset): a ring for nothing.
        self.waiting.store(0, Ordering::Release);
        // A ring for outcomes read now would wake the loop for nothing.
        while self.bell.try_recv().is_ok() {}
        self.updates.try_iter().inspect(|_| {
            self.counts.taken.fetch_add(1, Ordering::AcqRel);
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::jobs::Event;

    fn done(i: usize) -> Update {
        Update::Finished {
            path: PathBuf::from(format!("/t/f{i}")),
            event: Event::Modified,
            ok: true,
            processed: None,
            old_path: None,
            seq: None,
        }
    }

    #[test]
    fn the_bell_rings_for_the_first_waiting_outcome_and_every_ring_every_after() {
        let (tx, rx) = channel(4);
        tx.send(done(0)).unwrap();
        assert!(rx.bell().try_recv().is_ok(), "the first outcome rings");
        for i in 1..3 {
            tx.send(done(i)).unwrap();
            assert!(rx.bell().try_recv().is_err(), "outcome {i} gathers quietly");
        }
        assert!(!rx.many_waiting());
        tx.send(done(3)).unwrap();
        assert!(rx.bell().try_recv().is_ok(), "the fourth rings again");
        assert!(rx.many_waiting());
        assert_eq!(rx.take().count(), 4);
        assert!(!rx.many_waiting());
        tx.send(done(4)).unwrap();
        assert!(
            rx.bell().try_recv().is_ok(),
            "the first outcome after a take rings"
        );
    }

    #[test]
    fn taking_clears_a_ring_for_what_it_took() {
        let (tx, rx) = channel(4);
        tx.send(done(0)).unwrap();
        assert_eq!(rx.take().count(), 1);
        assert!(rx.bell().try_recv().is_err());
    }

    /// Whatever the interleaving of sends and takes, every outcome is taken once, and the loop,
    /// waiting on the bell whenever it finds nothing, never waits with outcomes left behind.
    #[test]
    fn no_outcome_is_left_waiting_without_a_ring() {
        let (tx, rx) = channel(8);
        let senders = 4;
        let each = 20_000;
        let threads: Vec<_> = (0..senders)
            .map(|s| {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    for i in 0..each {
                        tx.send(done(s * each + i)).unwrap();
                    }
                })
            })
            .collect();
        drop(tx);
        let mut taken = 0;
        while taken < senders * each {
            let n = rx.take().count();
            taken += n;
            if n == 0 && taken < senders * each {
                rx.bell()
                    .recv_timeout(Duration::from_secs(10))
                    .expect("outcomes wait and the bell did not ring");
            }
        }
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(taken, senders * each);
        assert_eq!(rx.take().count(), 0);
    }
}

//! The per-key state machine behind keyed submits: which key is running, which job waits for it,
//! and whether that job has a token in the queue. Pure data, no threads: the pool holds it under
//! one mutex and never blocks while holding it.
//!
//! A key's waiting job reaches a worker in one of two ways. If the key was idle, a token naming
//! the key goes through the queue and the worker that receives it takes the job (`queued`). If
//! the key was running, nothing is queued: the worker running the key takes the job itself when
//! its run ends (the job is *deferred*). Either way there is at most one waiting job per key, and
//! a newer submit replaces it.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::Hash;

struct Slot<T> {
    /// A job of this key is running, or is between attempts (a retry holds its key).
    running: bool,
    /// The next job of this key: latest wins.
    waiting: Option<T>,
    /// A token for `waiting` is in the queue. Only ever set while `running` is false.
    queued: bool,
}

/// What [`KeyTable::offer`] did with a job.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Offer<K, T> {
    /// It replaced this older waiting job.
    Coalesced(T),
    /// Its key is running; the runner will take it when its run ends.
    Deferred,
    /// Its key was idle and its token went into the queue.
    Queued,
    /// Its key is idle but there was no room for a token: the job and key come back.
    Full(K, T),
}

pub(crate) struct KeyTable<K, T> {
    slots: HashMap<K, Slot<T>>,
    deferred: usize,
}

impl<K: Eq + Hash + Clone, T> KeyTable<K, T> {
    pub(crate) fn new() -> Self {
        KeyTable {
            slots: HashMap::new(),
            deferred: 0,
        }
    }

    /// Jobs waiting without a token (their key is running).
    pub(crate) fn deferred(&self) -> usize {
        self.deferred
    }

    /// Offers `job` for `key` with one hash lookup: it replaces the waiting job, waits for
    /// the running key, or, if the key is idle and `send_token` manages to queue a token (it is
    /// called under the caller's lock and must not block), waits for that token.
    pub(crate) fn offer(
        &mut self,
        key: K,
        job: T,
        send_token: impl FnOnce(&K) -> bool,
    ) -> Offer<K, T> {
        match self.slots.entry(key) {
            Entry::Occupied(mut entry) => {
                let slot = entry.get_mut();
                if let Some(waiting) = slot.waiting.as_mut() {
                    return Offer::Coalesced(std::mem::replace(waiting, job));
                }
                if slot.running {
                    slot.waiting = Some(job);
                    self.deferred += 1;
                    return Offer::Deferred;
                }
                // An idle, empty slot is normally removed at once; treat it as absent.
                if send_token(entry.key()) {
                    let slot = entry.get_mut();
                    slot.waiting = Some(job);
                    slot.queued = true;
                    Offer::Queued
                } else {
                    let (key, _) = entry.remove_entry();
                    Offer::Full(key, job)
                }
            }
            Entry::Vacant(entry) => {
                if send_token(entry.key()) {
                    entry.insert(Slot {
                        running: false,
                        waiting: Some(job),
                        queued: true,
                    });
                    Offer::Queued
                } else {
                    Offer::Full(entry.into_key(), job)
                }
            }
        }
    }

    /// Records `job` as queued for idle `key` (per `offer`) before its token is sent.
    pub(crate) fn queue(&mut self, key: K, job: T) {
        let slot = self.slots.entry(key).or_insert(Slot {
            running: false,
            waiting: None,
            queued: false,
        });
        slot.waiting = Some(job);
        slot.queued = true;
    }

    /// Marks an idle key as running for a caller that runs its job itself; false if it is not
    /// idle (then `offer` again).
    pub(crate) fn claim(&mut self, key: &K) -> bool {
        match self.slots.get_mut(key) {
            None => {
                self.slots.insert(
                    key.clone(),
                    Slot {
                        running: true,
                        waiting: None,
                        queued: false,
                    },
                );
                true
            }
            Some(slot) if !slot.running && slot.waiting.is_none() => {
                slot.running = true;
                true
            }
            Some(_) => false,
        }
    }

    /// A worker received `key`'s token: the job to run now, the key then running.
    pub(crate) fn take_for_token(&mut self, key: &K) -> Option<T> {
        let slot = self.slots.get_mut(key)?;
        if !slot.queued {
            log::error!("ward-queue: a key token arrived that no job was waiting for");
            return None;
        }
        slot.queued = false;
        if slot.running {
            // Cannot happen (a queued key is idle), but if it did the runner must take the job.
            if slot.waiting.is_some() {
                self.deferred += 1;
            }
            return None;
        }
        let job = slot.waiting.take();
        if job.is_some() {
            slot.running = true;
        } else {
            self.slots.remove(key);
        }
        job
    }

    /// A submitter evicted `key`'s token from the queue: the job it stood for.
    pub(crate) fn evict_token(&mut self, key: &K) -> Option<T> {
        let slot = self.slots.get_mut(key)?;
        if !slot.queued {
            return None;
        }
        slot.queued = false;
        let job = slot.waiting.take();
        self.remove_if_idle(key);
        job
    }

    /// Takes back the queued job of `key` whose token could not be sent, if it is still the one
    /// waiting (`is_ours`); a newer job that replaced it stays.
    pub(crate) fn withdraw(&mut self, key: &K, is_ours: impl Fn(&T) -> bool) -> Option<T> {
        let slot = self.slots.get_mut(key)?;
        if !slot.queued || !slot.waiting.as_ref().is_some_and(is_ours) {
            return None;
        }
        slot.queued = false;
        let job = slot.waiting.take();
        self.remove_if_idle(key);
        job
    }

    /// A run of `key` ended. Returns the deferred job to run next (the key stays running), or
    /// releases the key. With `stop` set the deferred job is left for shutdown to collect.
    pub(crate) fn release(&mut self, key: &K, stop: bool) -> Option<T> {
        let slot = self.slots.get_mut(key)?;
        if !stop
            && !slot.queued
            && let Some(job) = slot.waiting.take()
        {
            self.deferred -= 1;
            return Some(job);
        }
        slot.running = false;
        if slot.waiting.is_some() && !slot.queued {
            // Left for shutdown; no longer waits on a runner.
            self.deferred -= 1;
        } else if slot.waiting.is_none() && !slot.queued {
            self.slots.remove(key);
        }
        None
    }

    /// A retry of `key` came due: the newer deferred job that supersedes it, if any (the key stays
    /// running either way).
    pub(crate) fn take_superseding(&mut self, key: &K) -> Option<T> {
        let slot = self.slots.get_mut(key)?;
        if slot.queued {
            return None;
        }
        let job = slot.waiting.take();
        if job.is_some() {
            self.deferred -= 1;
        }
        job
    }

    /// Takes every waiting job out, leaving an empty table.
    pub(crate) fn drain(&mut self) -> Vec<T> {
        self.deferred = 0;
        self.slots
            .drain()
            .filter_map(|(_, slot)| slot.waiting)
            .collect()
    }

    fn remove_if_idle(&mut self, key: &K) {
        if let Some(slot) = self.slots.get(key)
            && !slot.running
            && slot.waiting.is_none()
            && !slot.queued
        {
            self.slots.remove(key);
        }
    }

    #[cfg(test)]
    fn admit(&mut self, key: &K, job: T) -> Offer<K, T> {
        self.offer(key.clone(), job, |_| false)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.slots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> KeyTable<&'static str, u32> {
        KeyTable::new()
    }

    #[test]
    fn an_idle_key_queues_its_token_only_if_there_is_room() {
        let mut t = table();
        assert_eq!(t.offer("a", 1, |_| true), Offer::Queued);
        assert_eq!(
            t.offer("a", 2, |_| panic!("no second token")),
            Offer::Coalesced(1)
        );
        assert_eq!(t.offer("b", 3, |_| false), Offer::Full("b", 3));
        assert_eq!(t.len(), 1, "a full offer leaves no slot behind");
        assert_eq!(t.take_for_token(&"a"), Some(2));
    }

    #[test]
    fn an_idle_key_queues_then_runs_when_its_token_arrives() {
        let mut t = table();
        assert_eq!(t.admit(&"a", 1), Offer::Full("a", 1));
        t.queue("a", 1);
        assert_eq!(t.admit(&"a", 2), Offer::Coalesced(1));
        assert_eq!(t.take_for_token(&"a"), Some(2));
        assert_eq!(t.release(&"a", false), None);
        assert_eq!(t.len(), 0, "an idle key leaves no slot behind");
    }

    #[test]
    fn a_job_for_a_running_key_is_deferred_to_the_runner_and_coalesces() {
        let mut t = table();
        t.queue("a", 1);
        assert_eq!(t.take_for_token(&"a"), Some(1));
        assert_eq!(t.admit(&"a", 2), Offer::Deferred);
        assert_eq!(t.admit(&"a", 3), Offer::Coalesced(2));
        assert_eq!(t.deferred(), 1);
        assert_eq!(
            t.release(&"a", false),
            Some(3),
            "the runner takes the latest"
        );
        assert_eq!(t.deferred(), 0);
        assert_eq!(t.admit(&"a", 4), Offer::Deferred, "still running job 3");
        assert_eq!(t.release(&"a", false), Some(4));
        assert_eq!(t.release(&"a", false), None);
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn stop_leaves_deferred_jobs_for_the_drain() {
        let mut t = table();
        assert!(t.claim(&"a"));
        assert!(!t.claim(&"a"));
        assert_eq!(t.admit(&"a", 1), Offer::Deferred);
        assert_eq!(t.release(&"a", true), None);
        assert_eq!(t.deferred(), 0);
        t.queue("b", 2);
        let mut left = t.drain();
        left.sort();
        assert_eq!(left, [1, 2]);
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn evicting_a_token_gives_back_its_job_and_frees_the_key() {
        let mut t = table();
        t.queue("a", 1);
        assert_eq!(t.evict_token(&"a"), Some(1));
        assert_eq!(t.len(), 0);
        assert_eq!(t.take_for_token(&"a"), None, "a stale token finds nothing");
        assert_eq!(t.evict_token(&"b"), None);
    }

    #[test]
    fn withdrawing_takes_back_only_the_submitters_own_job() {
        let mut t = table();
        t.queue("a", 1);
        assert_eq!(t.withdraw(&"a", |&j| j == 1), Some(1));
        assert_eq!(t.len(), 0);
        t.queue("a", 2);
        assert_eq!(t.admit(&"a", 3), Offer::Coalesced(2));
        assert_eq!(
            t.withdraw(&"a", |&j| j == 2),
            None,
            "job 3 replaced it and stays"
        );
        assert_eq!(t.take_for_token(&"a"), Some(3));
    }

    #[test]
    fn a_newer_job_supersedes_a_pending_retry() {
        let mut t = table();
        t.queue("a", 1);
        assert_eq!(t.take_for_token(&"a"), Some(1));
        // Job 1 failed and waits for its retry, still holding the key.
        assert_eq!(t.admit(&"a", 2), Offer::Deferred);
        assert_eq!(t.take_superseding(&"a"), Some(2));
        assert_eq!(t.take_superseding(&"a"), None);
        assert_eq!(t.release(&"a", false), None);
        assert_eq!(t.len(), 0);
    }
}

//! The per-key state machine behind keyed submits: which key is running, which job waits for it,
//! and whether that job has a token in the queue. Pure data, no threads: the pool holds each
//! table under a mutex and never blocks while holding it.
//!
//! A key's waiting job reaches a worker in one of two ways. If the key was idle, a token naming
//! the key's slot goes through the queue and the worker that receives it takes the job
//! (`queued`). If the key was running, nothing is queued: the worker running the key takes the
//! job itself when its run ends (the job is *deferred*). Either way there is at most one waiting
//! job per key, and a newer submit replaces it.
//!
//! Keys are hashed once per submit: the slot found (or made) gets a number, and tokens, retries
//! and runners refer to the slot by that number. A slot is freed, and its key forgotten, once
//! its key is idle with nothing waiting; no token or retry can refer to it then, so a number is
//! never reused while something still holds it.
//!
//! The pool splits its keys over several tables by key hash, each under its own lock, so that a
//! submitter and the workers seldom wait for each other. A table is one *shard* of `2^shift`:
//! its slot numbers carry the shard in their low `shift` bits, so a token or a retry names its
//! table as well as its slot.

use std::hash::{BuildHasher, Hash};

use hashbrown::hash_table::Entry;
use hashbrown::{DefaultHashBuilder, HashTable};

/// The number of a key's slot, valid while the key is running, queued or waiting.
pub(crate) type SlotId = usize;

struct Slot<K, T> {
    key: K,
    /// `key`'s hash, kept so that freeing the slot finds its index entry without hashing again.
    hash: u64,
    /// A job of this key is running, or is between attempts (a retry holds its key).
    running: bool,
    /// The next job of this key: latest wins.
    waiting: Option<T>,
    /// A token for `waiting` is in the queue (or about to be). Only set while `running` is false.
    queued: bool,
}

/// What [`KeyTable::offer`] did with a job.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Offer<K, T> {
    /// It replaced this older waiting job.
    Coalesced(T),
    /// Its key is running; the runner will take it when its run ends.
    Deferred,
    /// Its key was idle and it waits for its token, which `send_token` sent (or took on to
    /// send once the lock is released).
    Queued,
    /// Its key is idle but there was no room for a token: the job and key come back.
    Full(K, T),
}

pub(crate) struct KeyTable<K, T> {
    /// A fast keyed hash (foldhash, seeded per pool): every keyed job hashes its key once,
    /// before its submitter takes the lock the workers also take. A pool's tables share one
    /// seed, since the hash also chooses the key's table.
    hasher: DefaultHashBuilder,
    /// Local slot numbers by their key's hash. The key itself is kept once, in its slot.
    index: HashTable<usize>,
    /// By local number: a slot's number without its shard bits.
    slots: Vec<Option<Slot<K, T>>>,
    free: Vec<usize>,
    deferred: usize,
    /// This table's shard, and the number of bits the shard takes in a slot number.
    shard: usize,
    shift: u32,
}

impl<K: Eq + Hash + Clone, T> KeyTable<K, T> {
    /// A table on its own: slot numbers are local numbers.
    #[cfg(test)]
    pub(crate) fn new() -> Self {
        Self::shard(DefaultHashBuilder::default(), 0, 0)
    }

    /// Shard `shard` of `2^shift` tables that share `hasher`.
    pub(crate) fn shard(hasher: DefaultHashBuilder, shard: usize, shift: u32) -> Self {
        debug_assert!(shard < 1 << shift);
        KeyTable {
            hasher,
            index: HashTable::new(),
            slots: Vec::new(),
            free: Vec::new(),
            deferred: 0,
            shard,
            shift,
        }
    }

    /// The slot number of this table's local number `at`.
    fn id(&self, at: usize) -> SlotId {
        at << self.shift | self.shard
    }

    /// The local number of slot `id`, one of this table's.
    fn at(&self, id: SlotId) -> usize {
        debug_assert_eq!(
            id & ((1 << self.shift) - 1),
            self.shard,
            "slot of another shard"
        );
        id >> self.shift
    }

    /// Jobs waiting without a token (their key is running).
    pub(crate) fn deferred(&self) -> usize {
        self.deferred
    }

    #[cfg(test)]
    fn offer(&mut self, key: K, job: T, send_token: impl FnOnce(SlotId) -> bool) -> Offer<K, T> {
        self.offer_hashed(self.hasher.hash_one(&key), key, job, send_token)
    }

    /// Offers `job` for `key`, whose hash (by `hasher`) is `hash`: it replaces the waiting job,
    /// waits for the running key, or, if the key is idle and `send_token` accepts the slot
    /// number it is given (it is called under the caller's lock and must not block: it queues a
    /// token for the slot, or takes on to queue one after the lock), waits for that token.
    #[inline]
    pub(crate) fn offer_hashed(
        &mut self,
        hash: u64,
        key: K,
        job: T,
        send_token: impl FnOnce(SlotId) -> bool,
    ) -> Offer<K, T> {
        let (shard, shift) = (self.shard, self.shift);
        let Self {
            index,
            slots,
            free,
            deferred,
            ..
        } = self;
        // One probe finds the key or the place its index entry goes.
        let entry = index.entry(
            hash,
            |&id| slots[id].as_ref().is_some_and(|slot| slot.key == key),
            |&id| slots[id].as_ref().map_or(0, |slot| slot.hash),
        );
        let entry = match entry {
            Entry::Vacant(entry) => entry,
            Entry::Occupied(entry) => {
                let at = *entry.get();
                return match slots[at].as_mut() {
                    Some(slot) => {
                        if let Some(waiting) = slot.waiting.as_mut() {
                            Offer::Coalesced(std::mem::replace(waiting, job))
                        } else if slot.running {
                            slot.waiting = Some(job);
                            *deferred += 1;
                            Offer::Deferred
                        } else if send_token(at << shift | shard) {
                            // An idle, empty slot is freed at once; should one exist, treat it
                            // as new.
                            slot.waiting = Some(job);
                            slot.queued = true;
                            Offer::Queued
                        } else {
                            self.free_if_idle(at);
                            Offer::Full(key, job)
                        }
                    }
                    None => Offer::Full(key, job), // The index only names live slots.
                };
            }
        };
        let at = free.last().copied().unwrap_or(slots.len());
        if !send_token(at << shift | shard) {
            return Offer::Full(key, job);
        }
        entry.insert(at);
        let slot = Some(Slot {
            key,
            hash,
            running: false,
            waiting: Some(job),
            queued: true,
        });
        if at < slots.len() {
            free.pop();
            slots[at] = slot;
        } else {
            slots.push(slot);
        }
        Offer::Queued
    }

    /// Marks an idle key as running for a caller that runs its job itself; `None` if it is not
    /// idle (then `offer` again).
    pub(crate) fn claim(&mut self, key: &K) -> Option<SlotId> {
        let hash = self.hasher.hash_one(key);
        if let Some(at) = self.find(hash, key) {
            let slot = self.slots[at].as_mut()?;
            if slot.running || slot.waiting.is_some() {
                return None;
            }
            slot.running = true;
            return Some(self.id(at));
        }
        let at = self.make_slot(key.clone(), true);
        Some(self.id(at))
    }

    /// A worker received slot `id`'s token: the job to run now, the key then running.
    #[inline]
    pub(crate) fn take_for_token(&mut self, id: SlotId) -> Option<T> {
        let id = self.at(id);
        let slot = self.slots.get_mut(id)?.as_mut()?;
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
            self.free_if_idle(id);
        }
        job
    }

    /// A submitter evicted slot `id`'s token from the queue: the job it stood for.
    pub(crate) fn evict_token(&mut self, id: SlotId) -> Option<T> {
        let id = self.at(id);
        let slot = self.slots.get_mut(id)?.as_mut()?;
        if !slot.queued {
            return None;
        }
        slot.queued = false;
        let job = slot.waiting.take();
        self.free_if_idle(id);
        job
    }

    /// Takes back the queued job of slot `id` whose token could not be sent, if it is still the
    /// one waiting (`is_ours`); a newer job that replaced it stays.
    pub(crate) fn withdraw(&mut self, id: SlotId, is_ours: impl Fn(&T) -> bool) -> Option<T> {
        let id = self.at(id);
        let slot = self.slots.get_mut(id)?.as_mut()?;
        if !slot.queued || !slot.waiting.as_ref().is_some_and(is_ours) {
            return None;
        }
        slot.queued = false;
        let job = slot.waiting.take();
        self.free_if_idle(id);
        job
    }

    /// A run of slot `id`'s key ended. Returns the deferred job to run next (the key stays
    /// running), or releases the key. With `stop` set the deferred job is left for the drain.
    pub(crate) fn release(&mut self, id: SlotId, stop: bool) -> Option<T> {
        let id = self.at(id);
        let slot = self.slots.get_mut(id)?.as_mut()?;
        if !stop
            && !slot.queued
            && let Some(job) = slot.waiting.take()
        {
            self.deferred -= 1;
            return Some(job);
        }
        slot.running = false;
        if slot.waiting.is_some() && !slot.queued {
            // Left for the drain; no longer waits on a runner.
            self.deferred -= 1;
        }
        self.free_if_idle(id);
        None
    }

    /// A run of slot `id`'s key ended: releases the key, unless a job is deferred to it. Then
    /// the key stays running and false comes back; the runner takes that job with `release`.
    /// Looks the slot up once: every keyed job on a worker ends here.
    #[inline]
    pub(crate) fn release_unless_deferred(&mut self, id: SlotId) -> bool {
        let id = self.at(id);
        let Some(slot) = self.slots.get_mut(id).and_then(Option::as_mut) else {
            return true;
        };
        match (&slot.waiting, slot.queued) {
            (Some(_), false) => false,
            (Some(_), true) => {
                slot.running = false;
                true
            }
            (None, queued) => {
                slot.running = false;
                if !queued {
                    self.free(id);
                }
                true
            }
        }
    }

    /// Hands slot `id`, whose key a job held until now, to `job` with a token about to be sent:
    /// for a deferred job whose runner went away (its retry was evicted).
    pub(crate) fn requeue(&mut self, id: SlotId, job: T) {
        let id = self.at(id);
        if let Some(slot) = self.slots.get_mut(id).and_then(Option::as_mut) {
            slot.running = false;
            slot.waiting = Some(job);
            slot.queued = true;
        }
    }

    /// A retry of slot `id`'s key came due: the newer deferred job that supersedes it, if any
    /// (the key stays running either way).
    pub(crate) fn take_superseding(&mut self, id: SlotId) -> Option<T> {
        let id = self.at(id);
        let slot = self.slots.get_mut(id)?.as_mut()?;
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
        self.index.clear();
        self.free.clear();
        self.slots
            .drain(..)
            .flatten()
            .filter_map(|slot| slot.waiting)
            .collect()
    }

    /// The local number of the live slot holding `key`, whose hash is `hash`.
    fn find(&self, hash: u64, key: &K) -> Option<usize> {
        let slots = &self.slots;
        self.index
            .find(hash, |&id| {
                slots[id].as_ref().is_some_and(|slot| slot.key == *key)
            })
            .copied()
    }

    /// The local number the next new slot gets: the last one freed, or a new one.
    fn next_id(&self) -> usize {
        self.free.last().copied().unwrap_or(self.slots.len())
    }

    fn make_slot(&mut self, key: K, running: bool) -> usize {
        let hash = self.hasher.hash_one(&key);
        let id = self.next_id();
        self.put(
            id,
            Slot {
                key,
                hash,
                running,
                waiting: None,
                queued: false,
            },
        );
        id
    }

    /// Stores `slot` at local number `id`, the last free one or the next new one, and indexes it.
    fn put(&mut self, id: usize, slot: Slot<K, T>) {
        let hash = slot.hash;
        if self.free.last() == Some(&id) {
            self.free.pop();
            self.slots[id] = Some(slot);
        } else {
            self.slots.push(Some(slot));
        }
        let Self { index, slots, .. } = self;
        index.insert_unique(hash, id, |&other| {
            slots[other].as_ref().map_or(0, |slot| slot.hash)
        });
    }

    fn free_if_idle(&mut self, id: usize) {
        let idle = self.slots[id]
            .as_ref()
            .is_some_and(|slot| !slot.running && slot.waiting.is_none() && !slot.queued);
        if idle {
            self.free(id);
        }
    }

    /// Frees the slot at local number `id`, which is idle, and forgets its key.
    fn free(&mut self, id: usize) {
        if let Some(slot) = self.slots[id].take() {
            if let Ok(entry) = self.index.find_entry(slot.hash, |&other| other == id) {
                entry.remove();
            }
            self.free.push(id);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.index.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> KeyTable<&'static str, u32> {
        KeyTable::new()
    }

    /// Offers with room for a token; returns the slot the token named.
    fn queue_with_room(t: &mut KeyTable<&'static str, u32>, key: &'static str, job: u32) -> SlotId {
        let mut named = None;
        let offer = t.offer(key, job, |id| {
            named = Some(id);
            true
        });
        assert_eq!(offer, Offer::Queued);
        named.unwrap()
    }

    #[test]
    fn an_idle_key_queues_its_token_only_if_there_is_room() {
        let mut t = table();
        let a = queue_with_room(&mut t, "a", 1);
        assert_eq!(
            t.offer("a", 2, |_| panic!("no second token")),
            Offer::Coalesced(1)
        );
        assert_eq!(t.offer("b", 3, |_| false), Offer::Full("b", 3));
        assert_eq!(t.len(), 1, "a full offer leaves no slot behind");
        assert_eq!(t.take_for_token(a), Some(2));
    }

    #[test]
    fn an_idle_key_queues_then_runs_when_its_token_arrives() {
        let mut t = table();
        let a = queue_with_room(&mut t, "a", 1);
        assert_eq!(t.take_for_token(a), Some(1));
        assert_eq!(t.release(a, false), None);
        assert_eq!(t.len(), 0, "an idle key leaves no slot behind");
        let b = queue_with_room(&mut t, "b", 2);
        assert_eq!(b, a, "the freed number is reused");
    }

    #[test]
    fn a_job_for_a_running_key_is_deferred_to_the_runner_and_coalesces() {
        let mut t = table();
        let a = queue_with_room(&mut t, "a", 1);
        assert_eq!(t.take_for_token(a), Some(1));
        assert_eq!(t.offer("a", 2, |_| true), Offer::Deferred);
        assert_eq!(t.offer("a", 3, |_| true), Offer::Coalesced(2));
        assert_eq!(t.deferred(), 1);
        assert_eq!(t.release(a, false), Some(3), "the runner takes the latest");
        assert_eq!(t.deferred(), 0);
        assert_eq!(
            t.offer("a", 4, |_| true),
            Offer::Deferred,
            "still running job 3"
        );
        assert_eq!(t.release(a, false), Some(4));
        assert_eq!(t.release(a, false), None);
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn stop_leaves_deferred_jobs_for_the_drain() {
        let mut t = table();
        let a = t.claim(&"a").unwrap();
        assert_eq!(t.claim(&"a"), None);
        assert_eq!(t.offer("a", 1, |_| true), Offer::Deferred);
        assert_eq!(t.release(a, true), None);
        assert_eq!(t.deferred(), 0);
        queue_with_room(&mut t, "b", 2);
        let mut left = t.drain();
        left.sort();
        assert_eq!(left, [1, 2]);
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn evicting_a_token_gives_back_its_job_and_frees_the_key() {
        let mut t = table();
        let a = queue_with_room(&mut t, "a", 1);
        assert_eq!(t.evict_token(a), Some(1));
        assert_eq!(t.len(), 0);
        assert_eq!(t.take_for_token(a), None, "a stale token finds nothing");
        assert_eq!(t.evict_token(7), None);
    }

    #[test]
    fn withdrawing_takes_back_only_the_submitters_own_job() {
        let mut t = table();
        let a = queue_with_room(&mut t, "a", 1);
        assert_eq!(t.withdraw(a, |&j| j == 1), Some(1));
        assert_eq!(t.len(), 0);
        let a = queue_with_room(&mut t, "a", 2);
        assert_eq!(
            t.offer("a", 3, |_| panic!("already queued")),
            Offer::Coalesced(2)
        );
        assert_eq!(
            t.withdraw(a, |&j| j == 2),
            None,
            "job 3 replaced it and stays"
        );
        assert_eq!(t.take_for_token(a), Some(3));
    }

    #[test]
    fn a_newer_job_supersedes_a_pending_retry() {
        let mut t = table();
        let a = queue_with_room(&mut t, "a", 1);
        assert_eq!(t.take_for_token(a), Some(1));
        // Job 1 failed and waits for its retry, still holding the key.
        assert_eq!(t.offer("a", 2, |_| true), Offer::Deferred);
        assert_eq!(t.take_superseding(a), Some(2));
        assert_eq!(t.take_superseding(a), None);
        assert_eq!(t.release(a, false), None);
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn keys_stay_found_while_the_index_grows_and_shrinks() {
        let mut t: KeyTable<String, u32> = KeyTable::new();
        let mut slots = Vec::new();
        for n in 0..1000 {
            let mut named = None;
            let offer = t.offer(n.to_string(), n, |id| {
                named = Some(id);
                true
            });
            assert_eq!(offer, Offer::Queued);
            slots.push(named.unwrap());
        }
        // Run and release every even key: their slots are freed and their index entries go.
        for n in (0..1000).step_by(2) {
            assert_eq!(t.take_for_token(slots[n]), Some(n as u32));
            assert_eq!(t.release(slots[n], false), None);
        }
        assert_eq!(t.len(), 500);
        for n in 0..1000_u32 {
            let offer = t.offer(n.to_string(), n + 1000, |_| true);
            if n % 2 == 0 {
                assert_eq!(offer, Offer::Queued, "key {n} was freed");
            } else {
                assert_eq!(offer, Offer::Coalesced(n), "key {n} still waits");
            }
        }
        assert_eq!(t.len(), 1000);
    }

    #[test]
    fn a_shards_slot_numbers_carry_the_shard_and_find_their_slot() {
        let mut t: KeyTable<u32, u32> = KeyTable::shard(DefaultHashBuilder::default(), 5, 3);
        let mut slots = Vec::new();
        for n in 0..100 {
            let mut named = None;
            let offer = t.offer(n, n, |id| {
                named = Some(id);
                true
            });
            assert_eq!(offer, Offer::Queued);
            let id = named.unwrap();
            assert_eq!(id & 0b111, 5, "slot {id} does not name shard 5");
            assert!(!slots.contains(&id), "two keys got slot {id}");
            slots.push(id);
        }
        // A claimed key's number works the same way.
        let claimed = t.claim(&1000).unwrap();
        assert_eq!(claimed & 0b111, 5);
        assert_eq!(
            t.offer(1000, 7, |_| panic!("the key runs")),
            Offer::Deferred
        );
        assert_eq!(t.release(claimed, false), Some(7));
        assert_eq!(t.release(claimed, false), None);
        // Each token's number finds its own key's job, then its slot is freed.
        for (n, &id) in slots.iter().enumerate() {
            assert_eq!(t.take_for_token(id), Some(n as u32));
            assert_eq!(t.release(id, false), None);
        }
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn a_deferred_job_whose_runner_went_away_is_requeued() {
        let mut t = table();
        let a = t.claim(&"a").unwrap();
        assert_eq!(t.offer("a", 1, |_| true), Offer::Deferred);
        // The evicted retry's key passes to job 1, which gets a token of its own.
        assert_eq!(t.release(a, false), Some(1));
        t.requeue(a, 1);
        assert_eq!(
            t.offer("a", 2, |_| panic!("already queued")),
            Offer::Coalesced(1)
        );
        assert_eq!(t.take_for_token(a), Some(2));
    }
}

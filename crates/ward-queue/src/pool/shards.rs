//! The key table split into shards by key hash, each under a lock of its own, and the `Locker`
//! a worker uses to keep one shard locked across several slots. Not here: what a table does with
//! a key (the state machine is `crate::keys`) or when it is called (`submit`, `worker`).

use std::hash::{BuildHasher, Hash};

use hashbrown::DefaultHashBuilder;
use parking_lot::{Mutex, MutexGuard};

use super::Padded;
use crate::keys::{KeyTable, SlotId};

/// How many tables the keys are split over (a power of two): enough that the submitter and
/// two workers, each locking one per keyed job, seldom meet at the same lock.
const KEY_SHARD_BITS: u32 = 4;

/// The key table, split by key hash into tables with locks of their own. With one table, the
/// waits at its lock were the largest cost of a keyed job (`examples/bench.rs`).
pub(super) struct KeyShards<K, T> {
    hasher: DefaultHashBuilder,
    shards: Box<[Shard<K, T>]>,
}

/// One of the tables, on cache lines of its own.
type Shard<K, T> = Padded<Mutex<KeyTable<K, T>>>;

impl<K: Eq + Hash + Clone, T> KeyShards<K, T> {
    pub(super) fn new() -> Self {
        let hasher = DefaultHashBuilder::default();
        let shards = (0..1 << KEY_SHARD_BITS)
            .map(|shard| {
                Padded(Mutex::new(KeyTable::shard(
                    hasher.clone(),
                    shard,
                    KEY_SHARD_BITS,
                )))
            })
            .collect();
        KeyShards { hasher, shards }
    }

    /// `key`'s hash, for `by_hash`; computed before any lock is taken.
    #[inline]
    pub(super) fn hash(&self, key: &K) -> u64 {
        self.hasher.hash_one(key)
    }

    /// The table of keys with this hash. Bits 32 and up choose it: the tables' own probing
    /// uses the low bits and the top seven.
    #[inline]
    pub(super) fn by_hash(&self, hash: u64) -> &Mutex<KeyTable<K, T>> {
        &self.shards[(hash >> 32) as usize & ((1 << KEY_SHARD_BITS) - 1)]
    }

    /// The table of slot `slot`: a slot number carries its table in its low bits.
    #[inline]
    pub(super) fn by_slot(&self, slot: SlotId) -> &Mutex<KeyTable<K, T>> {
        &self.shards[slot & ((1 << KEY_SHARD_BITS) - 1)]
    }

    /// Keeps the last table it locked locked, for a worker touching several slots in a row.
    #[inline]
    pub(super) fn locker(&self) -> Locker<'_, K, T> {
        Locker {
            keys: self,
            held: None,
        }
    }

    /// Jobs waiting without a token, over every table.
    pub(super) fn deferred(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.lock().deferred())
            .sum()
    }

    /// Takes every waiting job out of every table.
    pub(super) fn drain(&self) -> Vec<T> {
        self.shards
            .iter()
            .flat_map(|shard| shard.lock().drain())
            .collect()
    }
}

/// See [`KeyShards::locker`].
pub(super) struct Locker<'a, K, T> {
    keys: &'a KeyShards<K, T>,
    held: Option<(usize, MutexGuard<'a, KeyTable<K, T>>)>,
}

impl<K: Eq + Hash + Clone, T> Locker<'_, K, T> {
    /// The table of `slot`, locked; the one locked before is unlocked if it is another.
    #[inline]
    pub(super) fn lock(&mut self, slot: SlotId) -> &mut KeyTable<K, T> {
        let shard = slot & ((1 << KEY_SHARD_BITS) - 1);
        if self.held.as_ref().is_some_and(|(held, _)| *held != shard) {
            self.held = None; // Unlocked before the next is locked: no two at once.
        }
        let keys = self.keys;
        &mut self
            .held
            .get_or_insert_with(|| (shard, keys.by_slot(slot).lock()))
            .1
    }
}

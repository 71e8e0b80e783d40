//! The since-index: the path whose latest change each sequence number is, kept in buckets of 128
//! numbers (`changes`: a bucket → its entries). One entry a number would cost redb a key, its
//! bookkeeping and, as numbers only grow and a full page is split in two, half a page's room;
//! a bucket shares them among 128, and two buckets fill three quarters of a page where five
//! smaller ones filled half of it. Consecutive numbers are mostly files of one directory, so
//! each entry's key is stored as what it shares with the one before it and the rest. Not the
//! records (`store`, `apply`).

use std::collections::BTreeMap;
use std::ops::ControlFlow;

use redb::{ReadableTable, TableDefinition};

use super::keys::{put_varint, take_varint};

/// A bucket (a sequence number shifted right by [`BUCKET_BITS`]) → its entries in the order of
/// the numbers, each the number's low bits (one byte), how many leading bytes its record's key
/// shares with the entry's before it and how many follow (LEB128), and those.
pub(super) const CHANGES: TableDefinition<u64, &[u8]> = TableDefinition::new("changes");
pub(super) const BUCKET_BITS: u32 = 7;
const LOW: u64 = (1 << BUCKET_BITS) - 1;

/// The entries of a bucket's bytes, in order; `None` if they are damaged.
fn entries(mut bytes: &[u8]) -> Option<Vec<(u8, Vec<u8>)>> {
    let mut out: Vec<(u8, Vec<u8>)> = Vec::new();
    while let Some((&low, rest)) = bytes.split_first() {
        let (shared, rest) = take_varint(rest)?;
        let (len, rest) = take_varint(rest)?;
        let (shared, len) = (usize::try_from(shared).ok()?, usize::try_from(len).ok()?);
        let before = out.last().map_or(&[][..], |(_, key)| key.as_slice());
        let (own, rest) = rest.split_at_checked(len)?;
        let mut key = before.get(..shared)?.to_vec();
        key.extend_from_slice(own);
        out.push((low, key));
        bytes = rest;
    }
    Some(out)
}

/// A bucket's bytes for `entries`, in the order given.
fn encode<'k>(entries: impl IntoIterator<Item = (u8, &'k [u8])>) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut before: &[u8] = &[];
    for (low, key) in entries {
        let shared = before.iter().zip(key).take_while(|(a, b)| a == b).count();
        bytes.push(low);
        put_varint(&mut bytes, shared as u64);
        put_varint(&mut bytes, (key.len() - shared) as u64);
        bytes.extend_from_slice(&key[shared..]);
        before = key;
    }
    bytes
}

/// The changes of one write, grouped by bucket so that each bucket is read and written once.
#[derive(Debug, Default)]
pub(super) struct Edits {
    buckets: BTreeMap<u64, Edit>,
}

#[derive(Debug, Default)]
struct Edit {
    removed: Vec<u8>,
    added: Vec<(u8, Vec<u8>)>,
}

impl Edits {
    /// The path whose latest change `seq` was has changed again.
    pub(super) fn remove(&mut self, seq: u64) {
        let edit = self.buckets.entry(seq >> BUCKET_BITS).or_default();
        let low = (seq & LOW) as u8;
        edit.added.retain(|(l, _)| *l != low);
        edit.removed.push(low);
    }

    /// `seq` is the latest change of the record keyed `key`.
    pub(super) fn insert(&mut self, seq: u64, key: &[u8]) {
        let edit = self.buckets.entry(seq >> BUCKET_BITS).or_default();
        edit.added.push(((seq & LOW) as u8, key.to_vec()));
    }

    /// Writes every edited bucket. A bucket whose bytes are damaged is rewritten with what this
    /// write adds: its lost entries are paths a since-query no longer lists until they change.
    pub(super) fn write(
        self,
        table: &mut redb::Table<'_, u64, &'static [u8]>,
    ) -> Result<(), redb::StorageError> {
        for (bucket, edit) in self.buckets {
            let stored = table.get(bucket)?.map(|v| v.value().to_vec());
            let mut kept: Vec<(u8, Vec<u8>)> =
                stored.as_deref().and_then(entries).unwrap_or_else(|| {
                    if stored.is_some() {
                        log::error!(
                            "manifest: the since-index's bucket {bucket} is damaged; rewritten"
                        );
                    }
                    Vec::new()
                });
            kept.retain(|(low, _)| !edit.removed.contains(low));
            kept.retain(|(low, _)| !edit.added.iter().any(|(l, _)| l == low));
            kept.extend(edit.added);
            kept.sort_unstable_by_key(|&(low, _)| low);
            if kept.is_empty() {
                table.remove(bucket)?;
                continue;
            }
            let bytes = encode(kept.iter().map(|(low, key)| (*low, key.as_slice())));
            table.insert(bucket, bytes.as_slice())?;
        }
        Ok(())
    }
}

/// Shows `visit` each change after `since`, in order, until it breaks.
pub(super) fn since(
    table: &impl ReadableTable<u64, &'static [u8]>,
    since: u64,
    mut visit: impl FnMut(u64, &[u8]) -> Result<ControlFlow<()>, redb::StorageError>,
) -> Result<(), redb::StorageError> {
    let first = since.saturating_add(1);
    for bucket in table.range(first >> BUCKET_BITS..)? {
        let (bucket, bytes) = bucket?;
        let Some(entries) = entries(bytes.value()) else {
            log::error!(
                "manifest: the since-index's bucket {} is damaged; its changes are not listed",
                bucket.value()
            );
            continue;
        };
        for (low, key) in entries {
            let seq = (bucket.value() << BUCKET_BITS) | u64::from(low);
            if seq >= first && visit(seq, &key)?.is_break() {
                return Ok(());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use redb::ReadableTableMetadata;

    use super::*;

    fn listed(db: &redb::Database, after: u64) -> Vec<(u64, Vec<u8>)> {
        let txn = db.begin_read().unwrap();
        let table = txn.open_table(CHANGES).unwrap();
        let mut out = Vec::new();
        since(&table, after, |seq, key| {
            out.push((seq, key.to_vec()));
            Ok(ControlFlow::Continue(()))
        })
        .unwrap();
        out
    }

    fn write(db: &redb::Database, edit: impl FnOnce(&mut Edits)) {
        let txn = db.begin_write().unwrap();
        let mut edits = Edits::default();
        edit(&mut edits);
        edits.write(&mut txn.open_table(CHANGES).unwrap()).unwrap();
        txn.commit().unwrap();
    }

    /// Numbers across buckets, some moved on (removed) in later writes, one bucket emptied:
    /// a since-query lists exactly the numbers still standing, in order, from any point.
    #[test]
    fn the_since_index_lists_what_stands_in_order_from_any_point() {
        let dir = tempfile::tempdir().unwrap();
        let db = redb::Database::create(dir.path().join("c.redb")).unwrap();
        let key = |seq: u64| format!("key {seq}").into_bytes();
        // Bucket 1, emptied by the second write.
        let size = 1 << BUCKET_BITS;
        let emptied = size..2 * size;
        let last = 3 * size + 8;
        // Written out of order, as a group's paths are.
        write(&db, |e| {
            for seq in (1..last).rev() {
                e.insert(seq, &key(seq));
            }
        });
        write(&db, |e| {
            for seq in (1..last).filter(|s| s % 3 == 0 || emptied.contains(s)) {
                e.remove(seq);
            }
            e.insert(last, &key(last));
        });
        let standing: Vec<(u64, Vec<u8>)> = (1..=last)
            .filter(|s| s % 3 != 0 && !emptied.contains(s))
            .map(|s| (s, key(s)))
            .collect();
        for after in [
            0,
            1,
            size - 2,
            size - 1,
            size,
            size + 36,
            2 * size + 2,
            last - 1,
            last,
        ] {
            let expected: Vec<_> = standing
                .iter()
                .filter(|(s, _)| *s > after)
                .cloned()
                .collect();
            assert_eq!(listed(&db, after), expected, "after {after}");
        }
        let txn = db.begin_read().unwrap();
        let buckets = txn.open_table(CHANGES).unwrap();
        assert!(
            buckets.get(1).unwrap().is_none(),
            "an emptied bucket is removed"
        );
        assert_eq!(buckets.len().unwrap(), 3);
    }

    #[test]
    fn damaged_bucket_bytes_are_no_entries() {
        assert_eq!(entries(&[5, 0, 3, b'a']), None, "a key cut short");
        assert_eq!(entries(&[5, 0, 0x80]), None, "a length cut short");
        assert_eq!(
            entries(&[5, 1, 0]),
            None,
            "more shared than the key before has"
        );
        assert_eq!(
            entries(&[5, 0, 2, b'a', b'b', 9, 1, 1, b'c', 10, 0, 0]),
            Some(vec![
                (5, b"ab".to_vec()),
                (9, b"ac".to_vec()),
                (10, Vec::new())
            ])
        );
    }

    /// Keys of one directory share their start: each entry stores only what differs from the
    /// one before it, and reads back whole.
    #[test]
    fn an_entry_stores_only_what_its_key_does_not_share_with_the_one_before() {
        let mut keys: Vec<Vec<u8>> = (100_000..100_010)
            .map(|i| format!("\x05f{i}").into_bytes())
            .collect();
        keys.extend([b"\x06a".to_vec(), b"\x06a".to_vec(), Vec::new()]);
        let bytes = encode((0u8..).zip(keys.iter().map(Vec::as_slice)));
        // Three bytes each (the number's, the shared length, the own length) and what is not
        // shared: the first whole, the next nine their last digit, then `\x06a` whole, again
        // nothing, and the empty key.
        assert_eq!(bytes.len(), (3 + 8) + 9 * (3 + 1) + (3 + 2) + 3 + 3);
        let read: Vec<Vec<u8>> = entries(&bytes)
            .unwrap()
            .into_iter()
            .map(|(_, k)| k)
            .collect();
        assert_eq!(read, keys);
    }
}

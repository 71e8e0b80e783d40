//! The since-index: the path whose latest change each sequence number is, kept in buckets of 64
//! numbers (`changes`: a bucket → its entries). One entry a number would cost redb a key, its
//! bookkeeping and, as numbers only grow and a full page is split in two, half a page's room;
//! a bucket shares them among 64. Not the records (`store`, `apply`).

use std::collections::BTreeMap;
use std::ops::ControlFlow;

use redb::{ReadableTable, TableDefinition};

use super::keys::{put_varint, take_varint};

/// A bucket (a sequence number shifted right by [`BUCKET_BITS`]) → its entries, each the
/// number's low bits (one byte), the length of a record's key (LEB128) and the key, in the
/// order of the numbers.
pub(super) const CHANGES: TableDefinition<u64, &[u8]> = TableDefinition::new("changes");
const BUCKET_BITS: u32 = 6;
const LOW: u64 = (1 << BUCKET_BITS) - 1;

/// The entries of a bucket's bytes, in order; `None` if they are damaged.
fn entries(mut bytes: &[u8]) -> Option<Vec<(u8, &[u8])>> {
    let mut out = Vec::new();
    while let Some((&low, rest)) = bytes.split_first() {
        let (len, rest) = take_varint(rest)?;
        let len = usize::try_from(len).ok()?;
        if rest.len() < len {
            return None;
        }
        let (key, rest) = rest.split_at(len);
        out.push((low, key));
        bytes = rest;
    }
    Some(out)
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
            let mut kept: Vec<(u8, &[u8])> =
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
            kept.extend(edit.added.iter().map(|(low, key)| (*low, key.as_slice())));
            kept.sort_unstable_by_key(|&(low, _)| low);
            if kept.is_empty() {
                table.remove(bucket)?;
                continue;
            }
            let mut bytes = Vec::with_capacity(kept.iter().map(|(_, k)| k.len() + 3).sum());
            for (low, key) in kept {
                bytes.push(low);
                put_varint(&mut bytes, key.len() as u64);
                bytes.extend_from_slice(key);
            }
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
            if seq >= first && visit(seq, key)?.is_break() {
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
        // Written out of order, as a group's paths are.
        write(&db, |e| {
            for seq in (1..200).rev() {
                e.insert(seq, &key(seq));
            }
        });
        write(&db, |e| {
            for seq in (1..200).filter(|s| s % 3 == 0 || (64..128).contains(s)) {
                e.remove(seq);
            }
            e.insert(200, &key(200));
        });
        let standing: Vec<(u64, Vec<u8>)> = (1..=200)
            .filter(|s| s % 3 != 0 && !(64..128).contains(s))
            .map(|s| (s, key(s)))
            .collect();
        for after in [0, 1, 62, 63, 64, 100, 130, 199, 200] {
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
        assert_eq!(entries(&[5, 3, b'a']), None, "a key cut short");
        assert_eq!(entries(&[5, 0x80]), None, "a length cut short");
        assert_eq!(
            entries(&[5, 1, b'a', 9, 0]),
            Some(vec![(5, &b"a"[..]), (9, &b""[..])])
        );
    }
}

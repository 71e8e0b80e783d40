//! Moving a store of an older layout to the present one when it is opened, so that an upgrade
//! keeps what was processed: the first layout (a path → its record) and the third (directory
//! numbers in keys as LEB128, since-index buckets of 64 whole keys). Not the present layout's
//! reads and writes (`store`, `apply`, `keys`, `changes`).

use redb::{ReadableTable, TableDefinition, WriteTransaction};

use super::changes::{BUCKET_BITS, CHANGES, Edits};
use super::keys::{self, DIR_PATHS, DIRS, Numbers, take_varint};
use super::record::{decode_first_record, encode_record};
use super::store::RECORDS;

/// The first layout's tables: path → record, and sequence number → path.
pub(super) const FIRST_FILES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("files");
pub(super) const FIRST_BY_SEQ: TableDefinition<u64, &[u8]> = TableDefinition::new("by_seq");

/// The third layout's tables, under the names they are moved to while their entries are copied.
const OLD_RECORDS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("records.layout3");
const OLD_DIRS: TableDefinition<&[u8], u64> = TableDefinition::new("dirs.layout3");
const OLD_DIR_PATHS: TableDefinition<u64, &[u8]> = TableDefinition::new("dir_paths.layout3");
const OLD_CHANGES: TableDefinition<u64, &[u8]> = TableDefinition::new("changes.layout3");
/// The third layout's buckets held 64 numbers.
const OLD_BUCKET_BITS: u32 = 6;

/// Moves a store of the first layout's records into the present tables, and drops its tables.
pub(super) fn from_first(txn: &WriteTransaction) -> Result<(), redb::Error> {
    let mut moved = 0u64;
    {
        let first = txn.open_table(FIRST_FILES)?;
        let mut records = txn.open_table(RECORDS)?;
        let mut changes = txn.open_table(CHANGES)?;
        let mut dirs = txn.open_table(DIRS)?;
        let mut dir_paths = txn.open_table(DIR_PATHS)?;
        let mut numbers = Numbers::default();
        let mut edits = Edits::default();
        for entry in first.iter()? {
            let (path, value) = entry?;
            let Some(record) = decode_first_record(value.value()) else {
                continue;
            };
            let key = keys::make(&mut dirs, &mut dir_paths, &mut numbers, path.value())?;
            records.insert(key.as_slice(), encode_record(&record).as_slice())?;
            edits.insert(record.seq, &key);
            moved += 1;
        }
        edits.write(&mut changes)?;
    }
    txn.delete_table(FIRST_FILES)?;
    txn.delete_table(FIRST_BY_SEQ)?;
    log::info!("manifest: {moved} records moved to the layout that stores each directory once");
    Ok(())
}

/// A key of the third layout (a LEB128 directory number, then a name) in the present encoding;
/// `None` if it is damaged.
fn rekey(old: &[u8]) -> Option<Vec<u8>> {
    let (dir, name) = take_varint(old)?;
    Some(keys::file_key(dir, name))
}

/// Moves a store of the third layout to the present one: every key's directory number in the
/// encoding that sorts as the numbers do, and the since-index in buckets of 128 that share
/// their keys' common starts. Entries stream from the old tables to the new ones (no table is
/// held in memory), and a damaged key is dropped with its entry, as a damaged record is when
/// read: its path is then processed again.
pub(super) fn from_third(txn: &WriteTransaction) -> Result<(), redb::Error> {
    txn.rename_table(RECORDS, OLD_RECORDS)?;
    txn.rename_table(DIRS, OLD_DIRS)?;
    txn.rename_table(DIR_PATHS, OLD_DIR_PATHS)?;
    txn.rename_table(CHANGES, OLD_CHANGES)?;
    let mut dropped = 0u64;
    let moved = {
        let mut dirs = txn.open_table(DIRS)?;
        let mut dir_paths = txn.open_table(DIR_PATHS)?;
        for entry in txn.open_table(OLD_DIRS)?.iter()? {
            let (key, number) = entry?;
            match rekey(key.value()) {
                Some(key) => {
                    dirs.insert(key.as_slice(), number.value())?;
                    dir_paths.insert(number.value(), key.as_slice())?;
                }
                None => dropped += 1,
            }
        }
        let mut records = txn.open_table(RECORDS)?;
        let mut moved = 0u64;
        for entry in txn.open_table(OLD_RECORDS)?.iter()? {
            let (key, record) = entry?;
            match rekey(key.value()) {
                Some(key) => {
                    records.insert(key.as_slice(), record.value())?;
                    moved += 1;
                }
                None => dropped += 1,
            }
        }
        // The old buckets in order of their numbers: each new bucket's entries come one after
        // the other, and each is written once they are all read, so that no more than one
        // bucket's entries are held.
        let mut changes = txn.open_table(CHANGES)?;
        let mut edits = Edits::default();
        let mut bucket = None;
        for entry in txn.open_table(OLD_CHANGES)?.iter()? {
            let (old_bucket, bytes) = entry?;
            let Some(entries) = old_bucket_entries(bytes.value()) else {
                log::error!(
                    "manifest: the since-index's bucket {} is damaged; its changes are not moved",
                    old_bucket.value()
                );
                continue;
            };
            for (low, key) in entries {
                // A number outside its bucket would break the order the new buckets are made in.
                let rekeyed = (u32::from(low) < 1 << OLD_BUCKET_BITS).then(|| rekey(key));
                let Some(Some(key)) = rekeyed else {
                    dropped += 1;
                    continue;
                };
                let seq = (old_bucket.value() << OLD_BUCKET_BITS) | u64::from(low);
                if bucket.replace(seq >> BUCKET_BITS) != Some(seq >> BUCKET_BITS) {
                    std::mem::take(&mut edits).write(&mut changes)?;
                }
                edits.insert(seq, &key);
            }
        }
        edits.write(&mut changes)?;
        moved
    };
    txn.delete_table(OLD_RECORDS)?;
    txn.delete_table(OLD_DIRS)?;
    txn.delete_table(OLD_DIR_PATHS)?;
    txn.delete_table(OLD_CHANGES)?;
    if dropped > 0 {
        log::error!("manifest: {dropped} damaged entries dropped while moving to the new layout");
    }
    log::info!(
        "manifest: {moved} records moved to the layout whose keys sort as their directories' numbers"
    );
    Ok(())
}

/// The entries of a third-layout bucket: each the number's low bits, the key's length (LEB128)
/// and the key; `None` if they are damaged.
fn old_bucket_entries(mut bytes: &[u8]) -> Option<Vec<(u8, &[u8])>> {
    let mut out = Vec::new();
    while let Some((&low, rest)) = bytes.split_first() {
        let (len, rest) = take_varint(rest)?;
        let (key, rest) = rest.split_at_checked(usize::try_from(len).ok()?)?;
        out.push((low, key));
        bytes = rest;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use redb::Database;

    use super::*;
    use crate::jobs::Event;
    use crate::manifest::fixtures::{finished, meta, queued};
    use crate::manifest::keys::put_varint;
    use crate::manifest::store::{META, SEQ_KEY};
    use crate::manifest::{Manifest, Opened, Record};

    /// The store at `path`, opened as one that exists and needs no move.
    fn opened(path: &Path) -> Manifest {
        let (m, opened) = Manifest::open(path).unwrap();
        assert_eq!(opened, Opened::Existing);
        m
    }

    /// The changes after `after` (at most 1000), as numbers and paths.
    fn listed(m: &Manifest, after: u64) -> Vec<(u64, PathBuf)> {
        m.changes_since(after, 1000)
            .unwrap()
            .into_iter()
            .map(|c| (c.seq, c.path))
            .collect()
    }

    /// A record of the first layout: version, flags, event, then fixed-width numbers.
    fn first_layout_record(
        processed: Option<crate::manifest::FileMeta>,
        event: u8,
        seq: u64,
    ) -> Vec<u8> {
        let mut out = vec![1, u8::from(processed.is_some()) | 2, event];
        out.extend_from_slice(&seq.to_le_bytes());
        if let Some(m) = processed {
            for word in [m.size, m.mtime_ns as u64, m.ctime_ns as u64, m.ino, m.dev] {
                out.extend_from_slice(&word.to_le_bytes());
            }
        }
        out
    }

    /// An upgrade keeps what was processed: a store of the first layout is moved to the present
    /// one when it is opened, its records, since-index and sequence number intact.
    #[test]
    fn a_store_of_the_first_layout_keeps_its_records_when_opened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manifest.redb");
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut files = txn.open_table(FIRST_FILES).unwrap();
                let mut by_seq = txn.open_table(FIRST_BY_SEQ).unwrap();
                files
                    .insert(
                        &b"/r/a/x"[..],
                        &first_layout_record(Some(meta(5)), 0, 2)[..],
                    )
                    .unwrap();
                files
                    .insert(&b"/r/gone"[..], &first_layout_record(None, 2, 3)[..])
                    .unwrap();
                files.insert(&b"/r/damaged"[..], &[9u8, 9][..]).unwrap();
                by_seq.insert(2, &b"/r/a/x"[..]).unwrap();
                by_seq.insert(3, &b"/r/gone"[..]).unwrap();
                txn.open_table(META).unwrap().insert(SEQ_KEY, 3).unwrap();
            }
            txn.commit().unwrap();
        }
        let m = opened(&path);
        assert_eq!(m.seq(), 3);
        let records = m.records().unwrap();
        assert_eq!(
            records.len(),
            2,
            "the damaged record is dropped: {records:?}"
        );
        assert_eq!(records[Path::new("/r/a/x")].processed, Some(meta(5)));
        assert_eq!(records[Path::new("/r/gone")].event, Event::Removed);
        assert_eq!(listed(&m, 0), [(2, "/r/a/x".into()), (3, "/r/gone".into())]);
        drop(m);
        // Opened again: nothing left to move.
        assert_eq!(opened(&path).records().unwrap(), records);
    }

    /// A key of the third layout: the directory's number in LEB128, then the name.
    fn third_layout_key(dir: u64, name: &str) -> Vec<u8> {
        let mut key = Vec::new();
        put_varint(&mut key, dir);
        key.extend_from_slice(name.as_bytes());
        key
    }

    /// An upgrade keeps what was processed: a store of the third layout, written here as that
    /// layout's ward wrote it (LEB128 directory numbers in keys, buckets of 64 whole keys), with
    /// enough directories that their numbers take two bytes, is moved to the present one when
    /// opened: every record, directory and change intact, the since-index in order, and the
    /// store written to afterwards as any other.
    #[test]
    fn a_store_of_the_third_layout_keeps_its_records_when_opened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manifest.redb");
        // `/` is 1 under number 0, `r/` is 2 under it, and `d{i}/` is 3 + i under `r/`, each
        // holding one file `f`, changed as number i + 1.
        let dirs = 300u64;
        let record = |i: u64| Record {
            processed: Some(meta(i)),
            last_ok: true,
            event: Event::Created,
            seq: i + 1,
        };
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                // The third layout's tables had the present one's names and types.
                let mut dir_table = txn.open_table(DIRS).unwrap();
                let mut dir_paths = txn.open_table(DIR_PATHS).unwrap();
                let mut records = txn.open_table(RECORDS).unwrap();
                let mut changes = txn.open_table(CHANGES).unwrap();
                let mut numbered = vec![
                    (third_layout_key(0, "/"), 1),
                    (third_layout_key(1, "r/"), 2),
                ];
                numbered.extend((0..dirs).map(|i| (third_layout_key(2, &format!("d{i}/")), 3 + i)));
                for (key, number) in &numbered {
                    dir_table.insert(key.as_slice(), number).unwrap();
                    dir_paths.insert(number, key.as_slice()).unwrap();
                }
                let mut buckets: std::collections::BTreeMap<u64, Vec<u8>> = Default::default();
                for i in 0..dirs {
                    let key = third_layout_key(3 + i, "f");
                    records
                        .insert(key.as_slice(), encode_record(&record(i)).as_slice())
                        .unwrap();
                    let seq = i + 1;
                    let bucket = buckets.entry(seq >> OLD_BUCKET_BITS).or_default();
                    bucket.push((seq & 63) as u8);
                    put_varint(bucket, key.len() as u64);
                    bucket.extend_from_slice(&key);
                }
                for (number, bytes) in &buckets {
                    changes.insert(number, bytes.as_slice()).unwrap();
                }
                let mut meta_table = txn.open_table(META).unwrap();
                meta_table.insert(SEQ_KEY, dirs).unwrap();
                meta_table.insert("layout", 3).unwrap();
            }
            txn.commit().unwrap();
        }
        let file = |i: u64| PathBuf::from(format!("/r/d{i}/f"));
        let mut m = opened(&path);
        assert_eq!(m.seq(), dirs);
        let records = m.records().unwrap();
        assert_eq!(records.len(), dirs as usize);
        for i in 0..dirs {
            assert_eq!(
                records.get(&file(i)),
                Some(&record(i)),
                "{}",
                file(i).display()
            );
        }
        let expected: Vec<(u64, PathBuf)> = (0..dirs).map(|i| (i + 1, file(i))).collect();
        assert_eq!(listed(&m, 0), expected);
        // Written to afterwards: a file in an old directory and one in a new directory, numbered
        // after the old ones; and a file changed again leaves its old number.
        m.apply(&[
            queued("/r/d200/g", Event::Created),
            queued("/r/new/h", Event::Created),
            queued("/r/d7/f", Event::Modified),
        ])
        .unwrap();
        m.apply(&[finished("/r/new/h", Event::Created, Some(meta(1)))])
            .unwrap();
        assert_eq!(
            listed(&m, dirs - 1),
            [
                (dirs, file(dirs - 1)),
                (dirs + 1, "/r/d200/g".into()),
                (dirs + 2, "/r/new/h".into()),
                (dirs + 3, "/r/d7/f".into()),
            ]
        );
        assert!(!listed(&m, 0).iter().any(|(seq, _)| *seq == 8));
        assert_eq!(m.paths().unwrap(), dirs + 2);
        assert_eq!(
            m.record(Path::new("/r/new/h")).unwrap().unwrap().processed,
            Some(meta(1))
        );
        drop(m);
        // Opened again: nothing left to move.
        assert_eq!(opened(&path).paths().unwrap(), dirs + 2);
    }
}

//! The store: the redb database and its tables, opening it (a damaged one moved aside and
//! rebuilt, one of an older layout migrated by `migrate`), reopening it after a write error, and every read
//! but the comparison's (counts, records, pending jobs, since-queries). Not the layout of a
//! record (`record`) or of its key (`keys`), nor writes (`apply`), nor the comparison with the
//! disk (`reconcile`).

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition, TableHandle};

use super::changes::{self, CHANGES};
use super::keys::{self, DIR_PATHS, DIRS, Numbers, Paths};
use super::record::{decode_event, decode_record, path_of};
use super::{ChangeEntry, Manifest, Opened, Record};
use crate::Error;
use crate::jobs::Event;

/// A file's key (`keys`) → its record.
pub(super) const RECORDS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("records");
/// A path → its pending job.
pub(super) const PENDING: TableDefinition<&[u8], &[u8]> = TableDefinition::new("pending");
pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub(super) const SEQ_KEY: &str = "seq";
/// The file's size after the last compaction.
const COMPACTED_KEY: &str = "compacted";
/// Which layout the tables have: the first (without this key) and the third are migrated when
/// opened (`migrate`); one this ward does not know is a store it cannot read, moved aside and
/// rebuilt.
const LAYOUT_KEY: &str = "layout";
/// Each directory one entry under its parent, records of LEB128 numbers, keys whose directory
/// numbers sort as the numbers do, the since-index in buckets that share their keys' starts.
/// The third layout (LEB128 numbers in keys, whole keys in smaller buckets) is migrated.
const LAYOUT: u64 = 4;
/// redb's page cache. Its default would let the server's memory grow with every page of the
/// manifest it ever touched; a long-running process needs a bound. Its size trades a burst's
/// peak memory against the time to process it: `cargo xtask bench --only burst` and `--only
/// scale` measure both. From 16 MiB to 4, then 2, the 200k burst's peak went from 47.4 to 41.2,
/// then 37.1 MB, and a million files' first start with inotify peaked at 47.1 MB instead of 49;
/// the times stayed within the runs' own spread (a 200k burst: 9.4 to 11.3 s at 4 MiB, 10.7 and
/// 11.1 s at 2).
const CACHE_BYTES: usize = 2 * 1024 * 1024;

pub(super) fn store_error(doing: &'static str, e: impl Into<redb::Error>) -> Error {
    Error::Store {
        doing,
        source: Box::new(e.into()),
    }
}

impl Manifest {
    /// Opens the manifest at `path`, creating it when missing; a corrupt or unreadable one is
    /// moved aside and rebuilt.
    ///
    /// # Errors
    /// If a fresh store cannot be created either (the directory is not writable, the disk full).
    pub fn open(path: &Path) -> Result<(Manifest, Opened), Error> {
        let existed = path.exists();
        match Self::try_open(path) {
            Ok(manifest) => Ok((
                manifest,
                if existed {
                    Opened::Existing
                } else {
                    Opened::Fresh
                },
            )),
            Err(reason) if existed => {
                let mut moved_to = path.as_os_str().to_owned();
                moved_to.push(format!(".corrupt-{}", crate::state::unix_now()));
                let moved_to = PathBuf::from(moved_to);
                std::fs::rename(path, &moved_to).map_err(|e| {
                    Error::io(
                        format!("moving the damaged manifest {} aside", path.display()),
                        e,
                    )
                })?;
                let manifest = Self::try_open(path).map_err(Error::StoreUnusable)?;
                Ok((manifest, Opened::Rebuilt { moved_to, reason }))
            }
            Err(reason) => Err(Error::StoreUnusable(reason)),
        }
    }

    fn try_open(path: &Path) -> Result<Manifest, String> {
        // redb panics on some kinds of damage instead of returning an error; either way the store
        // is unusable and gets rebuilt.
        let opened = std::panic::catch_unwind(|| -> Result<Manifest, String> {
            let mut db = redb::Builder::new()
                .set_cache_size(CACHE_BYTES)
                .create(path)
                .map_err(|e| format!("opening {}: {e}", path.display()))?;
            if !db
                .check_integrity()
                .map_err(|e| format!("checking {}: {e}", path.display()))?
            {
                return Err(format!("{} failed its integrity check", path.display()));
            }
            let txn = db.begin_write().map_err(|e| e.to_string())?;
            let seq = {
                let tables: Vec<String> = txn
                    .list_tables()
                    .map_err(|e| e.to_string())?
                    .map(|table| table.name().to_owned())
                    .collect();
                let has = |table: &str| tables.iter().any(|name| name == table);
                let first_layout = has(super::migrate::FIRST_FILES.name());
                let mut meta = txn.open_table(META).map_err(|e| e.to_string())?;
                let layout = meta
                    .get(LAYOUT_KEY)
                    .map_err(|e| e.to_string())?
                    .map(|v| v.value());
                match layout {
                    Some(LAYOUT) => {}
                    Some(3) => {
                        super::migrate::from_third(&txn)
                            .map_err(|e| format!("migrating {}: {e}", path.display()))?;
                        meta.insert(LAYOUT_KEY, LAYOUT).map_err(|e| e.to_string())?;
                    }
                    None if first_layout || !has(RECORDS.name()) => {
                        meta.insert(LAYOUT_KEY, LAYOUT).map_err(|e| e.to_string())?;
                    }
                    other => {
                        return Err(format!(
                            "{} has a layout this ward does not read ({}; it reads {LAYOUT})",
                            path.display(),
                            other.map_or_else(|| "none".to_owned(), |n| n.to_string())
                        ));
                    }
                }
                txn.open_table(RECORDS).map_err(|e| e.to_string())?;
                txn.open_table(PENDING).map_err(|e| e.to_string())?;
                txn.open_table(CHANGES).map_err(|e| e.to_string())?;
                txn.open_table(DIRS).map_err(|e| e.to_string())?;
                txn.open_table(DIR_PATHS).map_err(|e| e.to_string())?;
                if first_layout {
                    super::migrate::from_first(&txn)
                        .map_err(|e| format!("migrating {}: {e}", path.display()))?;
                }
                txn.open_table(super::failures::FAILURES)
                    .map_err(|e| e.to_string())?;
                meta.get(SEQ_KEY)
                    .map_err(|e| e.to_string())?
                    .map_or(0, |v| v.value())
            };
            txn.commit().map_err(|e| e.to_string())?;
            Ok(Manifest {
                db: Some(db),
                path: path.to_path_buf(),
                seq,
                deferred: super::deferred::Deferred::default(),
            })
        });
        opened.unwrap_or_else(|_| {
            Err(format!(
                "{} is damaged (the store panicked reading it)",
                path.display()
            ))
        })
    }

    pub(super) fn db(&self) -> Result<&Database, Error> {
        self.db.as_ref().ok_or_else(|| {
            Error::StoreUnusable("the store is closed after a write error; reopening it".into())
        })
    }

    /// Closes and opens the store again, as redb requires after an I/O error (a full disk).
    ///
    /// # Errors
    /// If it cannot be opened yet; call again later.
    pub fn reopen(&mut self) -> Result<(), Error> {
        self.db = None;
        let fresh = Self::try_open(&self.path).map_err(Error::StoreUnusable)?;
        self.db = fresh.db;
        Ok(())
    }

    /// Gives the disk back the space the store's file holds beyond what its pages use: redb
    /// doubles its file as it grows and reuses freed pages inside it, but gives back only a free
    /// tail of at least half the file. So it compacts only a file at least twice its pages' size
    /// (below that, compacting moves pages and gives back nothing), that has grown by a quarter
    /// since the last compaction (whose leftover slack compacting again would not win), and
    /// would give back more than 16 MiB. Meant for the end of a server (no reader is running
    /// then); it takes about a second a million paths. Returns the file's size before and after,
    /// or `None` if the file was not worth compacting.
    ///
    /// # Errors
    /// If the store cannot be read or compacted; it is left as it was, and usable.
    pub fn compact(&mut self) -> Result<Option<(u64, u64)>, Error> {
        /// Below this much space to win, compacting costs more than it brings.
        const WORTH: u64 = 16 * 1024 * 1024;
        self.compact_beyond(WORTH)
    }

    /// [`Manifest::compact`], if it would give back more than `worth` bytes.
    fn compact_beyond(&mut self, worth: u64) -> Result<Option<(u64, u64)>, Error> {
        let file = |path: &Path| std::fs::metadata(path).map_or(0, |m| m.len());
        let before = file(&self.path);
        let (used, last) = {
            let txn = self
                .db()?
                .begin_write()
                .map_err(|e| store_error("measuring", e))?;
            let stats = txn.stats().map_err(|e| store_error("measuring", e))?;
            let last = txn
                .open_table(META)
                .and_then(|meta| Ok(meta.get(COMPACTED_KEY)?.map(|v| v.value())))
                .map_err(|e| store_error("measuring", e))?;
            txn.abort().map_err(|e| store_error("measuring", e))?;
            (stats.allocated_pages() * stats.page_size() as u64, last)
        };
        let sparse = before >= 2 * used;
        let grown = last.is_none_or(|last| 4 * before >= 5 * last);
        if !sparse || !grown || before.saturating_sub(used) < worth {
            return Ok(None);
        }
        let db = self.db.as_mut().ok_or_else(|| {
            Error::StoreUnusable("the store is closed after a write error; reopening it".into())
        })?;
        db.compact().map_err(|e| Error::Store {
            doing: "compacting",
            source: Box::new(e.into()),
        })?;
        let after = file(&self.path);
        let txn = db.begin_write().map_err(|e| store_error("writing", e))?;
        txn.open_table(META)
            .map_err(|e| store_error("writing", e))?
            .insert(COMPACTED_KEY, after)
            .map_err(|e| store_error("writing", e))?;
        txn.commit().map_err(|e| store_error("committing", e))?;
        Ok(Some((before, after)))
    }

    /// Runs `read` in a read transaction; whatever redb error it meets becomes one [`Error::Store`].
    pub(super) fn read<T>(
        &self,
        read: impl FnOnce(&redb::ReadTransaction) -> Result<T, redb::Error>,
    ) -> Result<T, Error> {
        let txn = self
            .db()?
            .begin_read()
            .map_err(|e| store_error("reading", e))?;
        read(&txn).map_err(|e| store_error("reading", e))
    }

    /// The current sequence number (that of the latest change).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// How many paths the manifest knows (tombstones included).
    ///
    /// # Errors
    /// If the store cannot be read.
    pub fn paths(&self) -> Result<u64, Error> {
        self.read(|txn| Ok(txn.open_table(RECORDS)?.len()?))
    }

    /// Whether the manifest has a record of `path` (a tombstone counts).
    ///
    /// # Errors
    /// If the store cannot be read.
    pub fn knows(&self, path: &Path) -> Result<bool, Error> {
        self.read(|txn| Ok(stored(txn, path)?.is_some()))
    }

    /// The record of `path`, if the manifest has one.
    ///
    /// # Errors
    /// If the store cannot be read.
    pub fn record(&self, path: &Path) -> Result<Option<Record>, Error> {
        self.read(|txn| Ok(stored(txn, path)?.and_then(|value| decode_record(&value))))
    }

    /// Every record, collected (tests and diagnostics; reconciliation streams them instead).
    ///
    /// # Errors
    /// If the store cannot be read.
    pub fn records(&self) -> Result<HashMap<PathBuf, Record>, Error> {
        self.read(|txn| {
            let dir_paths = txn.open_table(DIR_PATHS)?;
            let mut paths = Paths::default();
            let mut out = HashMap::new();
            for entry in txn.open_table(RECORDS)?.iter()? {
                let (key, value) = entry?;
                if let (Some(path), Some(record)) = (
                    paths.of(&dir_paths, key.value())?,
                    decode_record(value.value()),
                ) {
                    out.insert(path, record);
                }
            }
            Ok(out)
        })
    }

    /// Jobs that were queued or running when the previous server ended.
    ///
    /// # Errors
    /// If the store cannot be read.
    /// Those held back from the store (`deferred`) come last.
    pub fn pending(&self) -> Result<Vec<(PathBuf, Event, Option<PathBuf>)>, Error> {
        let mut out = self.read(|txn| {
            let mut out = Vec::new();
            for entry in txn.open_table(PENDING)?.iter()? {
                let (key, value) = entry?;
                out.extend(pending_job(key.value(), value.value()));
            }
            Ok(out)
        })?;
        let now = std::time::Instant::now();
        out.extend(
            self.deferred
                .iter(now)
                .filter_map(|(key, held, _)| pending_job(key, &held.job())),
        );
        Ok(out)
    }

    /// Up to `limit` paths changed after `since`, oldest first, each with its latest change.
    ///
    /// # Errors
    /// If the store cannot be read.
    pub fn changes_since(&self, since: u64, limit: usize) -> Result<Vec<ChangeEntry>, Error> {
        self.read(|txn| {
            let records = txn.open_table(RECORDS)?;
            let dir_paths = txn.open_table(DIR_PATHS)?;
            let mut paths = Paths::default();
            let mut out = Vec::new();
            changes::since(&txn.open_table(CHANGES)?, since, |seq, key| {
                if out.len() >= limit {
                    return Ok(ControlFlow::Break(()));
                }
                let record = records.get(key)?.and_then(|r| decode_record(r.value()));
                if let (Some(record), Some(path)) = (record, paths.of(&dir_paths, key)?) {
                    out.push(ChangeEntry {
                        seq,
                        path,
                        event: record.event,
                    });
                }
                Ok(ControlFlow::Continue(()))
            })?;
            Ok(out)
        })
    }
}

/// The stored record of `path`, as bytes.
fn stored(txn: &redb::ReadTransaction, path: &Path) -> Result<Option<Vec<u8>>, redb::Error> {
    let dirs = txn.open_table(DIRS)?;
    let Some(key) = keys::existing(&dirs, &mut Numbers::default(), path.as_os_str().as_bytes())?
    else {
        return Ok(None);
    };
    Ok(txn
        .open_table(RECORDS)?
        .get(key.as_slice())?
        .map(|value| value.value().to_vec()))
}

/// Moves the records of a store of the first layout (each path whole in `files` and `by_seq`)
/// into `records`, `changes` and the directories' tables, in the transaction that opens it: one
/// upgrade owes no file a job again. A record it cannot read is dropped, as a damaged one is:
/// the comparison then owes its path's job.
/// A `pending` entry as a job: its path, event and a rename's old path; `None` if empty.
fn pending_job(key: &[u8], job: &[u8]) -> Option<(PathBuf, Event, Option<PathBuf>)> {
    let (&event, old) = job.split_first()?;
    let old_path = (!old.is_empty()).then(|| path_of(old));
    let path = path_of(key);
    // A job owed all the same: as a modification, which a gone file turns into its removal
    // when the job is made.
    let event = decode_event(event).unwrap_or_else(|| {
        log::warn!(
            "manifest: the pending job of {} has an unknown event ({event}); it runs as a modification",
            path.display()
        );
        Event::Modified
    });
    Some((path, event, old_path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Update;
    use crate::manifest::fixtures::{finished, meta, queued};

    #[test]
    fn records_survive_reopening_with_their_sequence() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manifest.redb");
        {
            let (mut m, opened) = Manifest::open(&path).unwrap();
            assert_eq!(opened, Opened::Fresh);
            m.apply(&[
                queued("/r/a", Event::Created),
                queued("/r/b", Event::Created),
            ])
            .unwrap();
            // The server's last commit: the pending job held back is written too.
            m.apply_last(&[finished("/r/a", Event::Created, Some(meta(5)))])
                .unwrap();
        }
        let (m, opened) = Manifest::open(&path).unwrap();
        assert_eq!(opened, Opened::Existing);
        assert_eq!(m.seq(), 2);
        let records = m.records().unwrap();
        assert_eq!(records[Path::new("/r/a")].processed, Some(meta(5)));
        assert_eq!(records[Path::new("/r/b")].processed, None);
        let pending = m.pending().unwrap();
        assert_eq!(pending, [(PathBuf::from("/r/b"), Event::Created, None)]);
    }

    #[test]
    fn since_queries_give_each_path_once_with_its_latest_change() {
        let dir = tempfile::tempdir().unwrap();
        let (mut m, _) = Manifest::open(&dir.path().join("m.redb")).unwrap();
        m.apply(&[
            queued("/r/a", Event::Created),
            queued("/r/b", Event::Created),
        ])
        .unwrap();
        m.apply(&[queued("/r/a", Event::Modified)]).unwrap();
        m.apply(&[queued("/r/b", Event::Removed)]).unwrap();
        let all: Vec<_> = m
            .changes_since(0, 100)
            .unwrap()
            .into_iter()
            .map(|c| (c.seq, c.path, c.event))
            .collect();
        assert_eq!(
            all,
            [
                (3, "/r/a".into(), Event::Modified),
                (4, "/r/b".into(), Event::Removed)
            ]
        );
        assert_eq!(m.changes_since(3, 100).unwrap().len(), 1);
        assert_eq!(m.changes_since(0, 1).unwrap().len(), 1);
    }

    /// A burst of new files in many new directories, each group queued in one commit and
    /// finished in the next, as the server writes them: the records fill most of the pages they
    /// take. With directory numbers whose encoding did not sort as the numbers (LEB128), each new
    /// directory's records were inserted all over the table and its pages stayed half empty.
    #[test]
    fn records_of_new_directories_fill_most_of_their_pages() {
        let dir = tempfile::tempdir().unwrap();
        let (mut m, _) = Manifest::open(&dir.path().join("manifest.redb")).unwrap();
        let paths: Vec<String> = (0..30_000)
            .map(|i| format!("/r/p{}/d{}/f{i}", i / 1000, (i / 10) % 100))
            .collect();
        let mut finishing: Vec<Update> = Vec::new();
        for group in paths.chunks(1000) {
            let mut updates: Vec<Update> =
                group.iter().map(|p| queued(p, Event::Created)).collect();
            updates.append(&mut finishing);
            m.apply(&updates).unwrap();
            finishing = group
                .iter()
                .map(|p| finished(p, Event::Created, Some(meta(1))))
                .collect();
        }
        m.apply_last(&finishing).unwrap();
        let txn = m.db().unwrap().begin_read().unwrap();
        let stats = txn.open_table(RECORDS).unwrap().stats().unwrap();
        let used = stats.stored_bytes() + stats.metadata_bytes();
        // redb's pages are 4 KiB.
        let pages = (stats.leaf_pages() + stats.branch_pages()) * 4096;
        assert!(
            used * 10 >= pages * 7,
            "records use {used} bytes of {pages} in their pages"
        );
    }

    #[test]
    fn a_compacted_store_is_smaller_and_keeps_its_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manifest.redb");
        let (mut m, _) = Manifest::open(&path).unwrap();
        let paths: Vec<String> = (0..4000).map(|i| format!("/r/d{}/f{i}", i / 10)).collect();
        for chunk in paths.chunks(200) {
            let queued: Vec<_> = chunk.iter().map(|p| queued(p, Event::Created)).collect();
            m.apply(&queued).unwrap();
            let done: Vec<_> = chunk
                .iter()
                .map(|p| finished(p, Event::Created, Some(meta(1))))
                .collect();
            m.apply(&done).unwrap();
        }
        let records = m.records().unwrap();
        let (before, after) = m
            .compact_beyond(0)
            .unwrap()
            .expect("a store grown by doubling holds more than twice what it uses");
        assert!(after < before, "compacted from {before} to {after} bytes");
        assert_eq!(
            m.compact_beyond(0).unwrap(),
            None,
            "not compacted again before the file grows"
        );
        assert_eq!(m.records().unwrap(), records);
        drop(m);
        let (m, _) = Manifest::open(&path).unwrap();
        assert_eq!(m.records().unwrap(), records);
        assert_eq!(m.changes_since(0, 5000).unwrap().len(), 4000);
    }

    #[test]
    fn a_store_of_a_layout_it_does_not_know_is_moved_aside_and_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manifest.redb");
        {
            let (mut m, _) = Manifest::open(&path).unwrap();
            m.apply(&[queued("/r/a", Event::Created)]).unwrap();
            let txn = m.db().unwrap().begin_write().unwrap();
            txn.open_table(META)
                .unwrap()
                .insert(LAYOUT_KEY, LAYOUT + 1)
                .unwrap();
            txn.commit().unwrap();
        }
        let (m, opened) = Manifest::open(&path).unwrap();
        let Opened::Rebuilt { moved_to, reason } = opened else {
            panic!("not rebuilt: {opened:?}")
        };
        assert!(reason.contains("layout"), "{reason}");
        assert!(moved_to.exists());
        assert_eq!(m.paths().unwrap(), 0);
    }

    #[test]
    fn a_corrupt_store_is_moved_aside_and_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manifest.redb");
        std::fs::write(&path, vec![0xAB; 64 * 1024]).unwrap();
        let (m, opened) = Manifest::open(&path).unwrap();
        let Opened::Rebuilt { moved_to, .. } = opened else {
            panic!("not rebuilt: {opened:?}")
        };
        assert!(moved_to.exists());
        assert_eq!(m.paths().unwrap(), 0);
    }
}

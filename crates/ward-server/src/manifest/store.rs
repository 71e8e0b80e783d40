//! The store: the redb database and its tables, opening it (a damaged one moved aside and
//! rebuilt), reopening it after a write error, and every read but the comparison's (counts,
//! records, pending jobs, since-queries). Not the layout of a record (`record`), nor writes
//! (`apply`), nor the comparison with the disk (`reconcile`).

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::record::{decode_event, decode_record, path_of};
use super::{ChangeEntry, Manifest, Opened, Record};
use crate::Error;
use crate::jobs::Event;

pub(super) const FILES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("files");
pub(super) const PENDING: TableDefinition<&[u8], &[u8]> = TableDefinition::new("pending");
pub(super) const BY_SEQ: TableDefinition<u64, &[u8]> = TableDefinition::new("by_seq");
pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub(super) const SEQ_KEY: &str = "seq";
/// redb's page cache. Its default would let the server's memory grow with every page of the
/// manifest it ever touched; a long-running process needs a bound. Its size trades a burst's
/// peak memory against the time to process it: `cargo xtask bench --only burst` measures both.
const CACHE_BYTES: usize = 16 * 1024 * 1024;

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
                txn.open_table(FILES).map_err(|e| e.to_string())?;
                txn.open_table(PENDING).map_err(|e| e.to_string())?;
                txn.open_table(BY_SEQ).map_err(|e| e.to_string())?;
                txn.open_table(super::failures::FAILURES)
                    .map_err(|e| e.to_string())?;
                let meta = txn.open_table(META).map_err(|e| e.to_string())?;
                meta.get(SEQ_KEY)
                    .map_err(|e| e.to_string())?
                    .map_or(0, |v| v.value())
            };
            txn.commit().map_err(|e| e.to_string())?;
            Ok(Manifest {
                db: Some(db),
                path: path.to_path_buf(),
                seq,
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
        self.read(|txn| Ok(txn.open_table(FILES)?.len()?))
    }

    /// Whether the manifest has a record of `path` (a tombstone counts).
    ///
    /// # Errors
    /// If the store cannot be read.
    pub fn knows(&self, path: &Path) -> Result<bool, Error> {
        self.read(|txn| {
            Ok(txn
                .open_table(FILES)?
                .get(path.as_os_str().as_bytes())?
                .is_some())
        })
    }

    /// The record of `path`, if the manifest has one.
    ///
    /// # Errors
    /// If the store cannot be read.
    pub fn record(&self, path: &Path) -> Result<Option<Record>, Error> {
        self.read(|txn| {
            Ok(txn
                .open_table(FILES)?
                .get(path.as_os_str().as_bytes())?
                .and_then(|value| decode_record(value.value())))
        })
    }

    /// Every record, collected (tests and diagnostics; reconciliation streams them instead).
    ///
    /// # Errors
    /// If the store cannot be read.
    pub fn records(&self) -> Result<HashMap<PathBuf, Record>, Error> {
        self.read(|txn| {
            let mut out = HashMap::new();
            for entry in txn.open_table(FILES)?.iter()? {
                let (key, value) = entry?;
                if let Some(record) = decode_record(value.value()) {
                    out.insert(path_of(key.value()), record);
                }
            }
            Ok(out)
        })
    }

    /// Jobs that were queued or running when the previous server ended.
    ///
    /// # Errors
    /// If the store cannot be read.
    pub fn pending(&self) -> Result<Vec<(PathBuf, Event, Option<PathBuf>)>, Error> {
        self.read(|txn| {
            let mut out = Vec::new();
            for entry in txn.open_table(PENDING)?.iter()? {
                let (key, value) = entry?;
                let Some((&event, old)) = value.value().split_first() else {
                    continue;
                };
                let old_path = (!old.is_empty()).then(|| path_of(old));
                let path = path_of(key.value());
                // A job owed all the same: as a modification, which a gone file turns into its
                // removal when the job is made.
                let event = decode_event(event).unwrap_or_else(|| {
                    log::warn!(
                        "manifest: the pending job of {} has an unknown event ({event}); it runs as a modification",
                        path.display()
                    );
                    Event::Modified
                });
                out.push((path, event, old_path));
            }
            Ok(out)
        })
    }

    /// Up to `limit` paths changed after `since`, oldest first, each with its latest change.
    ///
    /// # Errors
    /// If the store cannot be read.
    pub fn changes_since(&self, since: u64, limit: usize) -> Result<Vec<ChangeEntry>, Error> {
        self.read(|txn| {
            let by_seq = txn.open_table(BY_SEQ)?;
            let files = txn.open_table(FILES)?;
            let mut out = Vec::new();
            for entry in by_seq.range(since.saturating_add(1)..)? {
                if out.len() >= limit {
                    break;
                }
                let (seq, path) = entry?;
                let Some(record) = files
                    .get(path.value())?
                    .and_then(|r| decode_record(r.value()))
                else {
                    continue;
                };
                out.push(ChangeEntry {
                    seq: seq.value(),
                    path: path_of(path.value()),
                    event: record.event,
                });
            }
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
            m.apply(&[finished("/r/a", Event::Created, Some(meta(5)))])
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

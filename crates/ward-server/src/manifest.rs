//! The manifest: what ward last processed, persisted in the state directory so that nothing is
//! lost across stops, crashes and restarts.
//!
//! It lives in a [redb](https://docs.rs/redb) database (`manifest.redb`): an embedded, pure-Rust,
//! crash-safe (copy-on-write B-trees, atomic commits) key-value store, chosen over SQLite because it
//! needs no C toolchain and ward only needs ordered maps. Four tables:
//!
//! - `files`: path → the metadata (size, mtime and ctime in ns, inode, device) of the version last
//!   processed successfully, the outcome of the last attempt, the last change seen and its sequence
//!   number. A removed path keeps a tombstone so that `ward changes --since` reports its removal.
//! - `pending`: path → the job queued or running for it, until its outcome is recorded.
//! - `by_seq`: sequence number → path, one entry per path (its latest change), so a since-query is
//!   a range scan bounded by the number of paths, not by history.
//! - `meta`: the current sequence number.
//!
//! Writes are grouped by the server (one commit per flush, not one fsync per file). After a crash
//! at most the unflushed group is missing, and startup reconciliation redoes it: a file whose
//! metadata differs from its last successful version is processed again.

// redb's error type is large (160 bytes); it lives only inside the read closures and is turned
// into one small `Error::Store` right there, so boxing it would buy nothing.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::Metadata;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use ward_watch::IgnoreRules;

use crate::Error;
use crate::jobs::Event;

const FILES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("files");
const PENDING: TableDefinition<&[u8], &[u8]> = TableDefinition::new("pending");
const BY_SEQ: TableDefinition<u64, &[u8]> = TableDefinition::new("by_seq");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const SEQ_KEY: &str = "seq";
const RECORD_VERSION: u8 = 1;
/// redb's page cache. Its default (1 GiB) would let the server's memory grow with every page of
/// the manifest it ever touched; a long-running process needs a bound.
const CACHE_BYTES: usize = 32 * 1024 * 1024;

/// The identity and metadata of one version of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileMeta {
    /// Size in bytes.
    pub size: u64,
    /// Modification time, ns since the epoch.
    pub mtime_ns: i64,
    /// Status change time, ns since the epoch.
    pub ctime_ns: i64,
    /// Inode number.
    pub ino: u64,
    /// Device number.
    pub dev: u64,
}

impl FileMeta {
    /// The metadata of `meta`, as stat returned it.
    pub fn of(meta: &Metadata) -> FileMeta {
        FileMeta {
            size: meta.size(),
            mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
            ctime_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
            ino: meta.ino(),
            dev: meta.dev(),
        }
    }

    /// Stats `path` without following a symlink; `None` if it is gone.
    pub fn read(path: &Path) -> Option<FileMeta> {
        std::fs::symlink_metadata(path)
            .ok()
            .map(|m| FileMeta::of(&m))
    }
}

/// What the manifest knows of one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The version last processed successfully (`None`: never, or its removal was processed).
    pub processed: Option<FileMeta>,
    /// Whether the last attempt succeeded.
    pub last_ok: bool,
    /// The last change seen.
    pub event: Event,
    /// Its sequence number.
    pub seq: u64,
}

/// A change to record, from the server's loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// A change was seen and its job queued.
    Queued {
        /// The path.
        path: PathBuf,
        /// What happened.
        event: Event,
        /// The previous path of a rename.
        old_path: Option<PathBuf>,
    },
    /// A job finished: `processed` is the version it ran on when it succeeded (`None` for a
    /// processed removal).
    Finished {
        /// The path.
        path: PathBuf,
        /// Whether it succeeded.
        ok: bool,
        /// The version it processed, when it succeeded and the file exists.
        processed: Option<FileMeta>,
    },
}

impl Update {
    /// The path the update is about.
    pub fn path(&self) -> &Path {
        match self {
            Update::Queued { path, .. } | Update::Finished { path, .. } => path,
        }
    }
}

/// One line of `ward changes --since`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeEntry {
    /// Its sequence number.
    pub seq: u64,
    /// The path.
    pub path: PathBuf,
    /// What happened last.
    pub event: Event,
}

/// How the manifest was opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    /// It was there and intact.
    Existing,
    /// There was none: every file will be processed once.
    Fresh,
    /// It was unreadable or corrupt; it was moved to `moved_to` and rebuilt empty, so every file
    /// will be processed once.
    Rebuilt {
        /// Where the damaged store now is.
        moved_to: PathBuf,
        /// What was wrong.
        reason: String,
    },
}

/// The open manifest.
#[derive(Debug)]
pub struct Manifest {
    /// `None` after a failed write until [`Manifest::reopen`] succeeds: redb refuses further use of
    /// a database that saw an I/O error until it is opened again.
    db: Option<Database>,
    path: PathBuf,
    seq: u64,
}

fn store_error(context: &str, e: impl std::fmt::Display) -> Error {
    Error::Store(format!("{context}: {e}"))
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
                std::fs::rename(path, &moved_to).map_err(|e| Error::Io {
                    context: format!("moving the damaged manifest {} aside", path.display()),
                    source: e,
                })?;
                let manifest = Self::try_open(path).map_err(Error::Store)?;
                Ok((manifest, Opened::Rebuilt { moved_to, reason }))
            }
            Err(reason) => Err(Error::Store(reason)),
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

    fn db(&self) -> Result<&Database, Error> {
        self.db.as_ref().ok_or_else(|| {
            Error::Store("the store is closed after a write error; reopening it".into())
        })
    }

    /// Closes and opens the store again, as redb requires after an I/O error (a full disk).
    ///
    /// # Errors
    /// If it cannot be opened yet; call again later.
    pub fn reopen(&mut self) -> Result<(), Error> {
        self.db = None;
        let fresh = Self::try_open(&self.path).map_err(Error::Store)?;
        self.db = fresh.db;
        Ok(())
    }

    /// Runs `read` in a read transaction; whatever redb error it meets becomes one [`Error::Store`].
    fn read<T>(
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

    /// Every record, for startup reconciliation (one small entry per path).
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

    /// The records of `prefix` and every path below it (a range scan: paths sort by their bytes,
    /// so a subtree is contiguous once its root is).
    ///
    /// # Errors
    /// If the store cannot be read.
    pub fn records_under(&self, prefix: &Path) -> Result<Vec<(PathBuf, Record)>, Error> {
        let start = prefix.as_os_str().as_bytes();
        self.read(|txn| {
            let mut out = Vec::new();
            for entry in txn.open_table(FILES)?.range(start..)? {
                let (key, value) = entry?;
                // `/a/b` is followed by `/a/b c` before `/a/b/x`; stop only past the prefix's bytes.
                if !key.value().starts_with(start) {
                    break;
                }
                let path = path_of(key.value());
                if path.starts_with(prefix)
                    && let Some(record) = decode_record(value.value())
                {
                    out.push((path, record));
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
                out.push((path_of(key.value()), decode_event(event), old_path));
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

    /// Records `updates` in one transaction (one fsync). On failure nothing of it is recorded and
    /// the caller keeps the updates to try again.
    ///
    /// # Errors
    /// If the store cannot be written (a full disk, an I/O error).
    pub fn apply(&mut self, updates: &[Update]) -> Result<(), Error> {
        if updates.is_empty() {
            return Ok(());
        }
        let txn = self
            .db()?
            .begin_write()
            .map_err(|e| store_error("writing", e))?;
        let mut seq = self.seq;
        {
            let mut files = txn
                .open_table(FILES)
                .map_err(|e| store_error("writing", e))?;
            let mut pending = txn
                .open_table(PENDING)
                .map_err(|e| store_error("writing", e))?;
            let mut by_seq = txn
                .open_table(BY_SEQ)
                .map_err(|e| store_error("writing", e))?;
            for update in updates {
                let key = update.path().as_os_str().as_bytes();
                let old = files
                    .get(key)
                    .map_err(|e| store_error("writing", e))?
                    .and_then(|v| decode_record(v.value()));
                let record = match update {
                    Update::Queued {
                        event, old_path, ..
                    } => {
                        seq += 1;
                        if let Some(old) = &old {
                            by_seq
                                .remove(old.seq)
                                .map_err(|e| store_error("writing", e))?;
                        }
                        by_seq
                            .insert(seq, key)
                            .map_err(|e| store_error("writing", e))?;
                        let mut job = vec![encode_event(*event)];
                        if let Some(old_path) = old_path {
                            job.extend_from_slice(old_path.as_os_str().as_bytes());
                        }
                        pending
                            .insert(key, job.as_slice())
                            .map_err(|e| store_error("writing", e))?;
                        Record {
                            processed: old.as_ref().and_then(|o| o.processed),
                            last_ok: old.as_ref().is_none_or(|o| o.last_ok),
                            event: *event,
                            seq,
                        }
                    }
                    Update::Finished { ok, processed, .. } => {
                        pending.remove(key).map_err(|e| store_error("writing", e))?;
                        let Some(old) = old else {
                            // Finished without a recorded change: record it as seen now.
                            seq += 1;
                            by_seq
                                .insert(seq, key)
                                .map_err(|e| store_error("writing", e))?;
                            let event = if processed.is_some() {
                                Event::Created
                            } else {
                                Event::Removed
                            };
                            let record = Record {
                                processed: *processed,
                                last_ok: *ok,
                                event,
                                seq,
                            };
                            files
                                .insert(key, encode_record(&record).as_slice())
                                .map_err(|e| store_error("writing", e))?;
                            continue;
                        };
                        Record {
                            processed: if *ok { *processed } else { old.processed },
                            last_ok: *ok,
                            // A job that succeeded on a path that is gone has processed its
                            // removal (the old path of a rename, a file deleted before its job).
                            event: if *ok && processed.is_none() {
                                Event::Removed
                            } else {
                                old.event
                            },
                            ..old
                        }
                    }
                };
                files
                    .insert(key, encode_record(&record).as_slice())
                    .map_err(|e| store_error("writing", e))?;
            }
            let mut meta = txn
                .open_table(META)
                .map_err(|e| store_error("writing", e))?;
            meta.insert(SEQ_KEY, seq)
                .map_err(|e| store_error("writing", e))?;
        }
        txn.commit().map_err(|e| store_error("committing", e))?;
        self.seq = seq;
        Ok(())
    }
}

fn path_of(bytes: &[u8]) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(bytes))
}

fn encode_event(event: Event) -> u8 {
    match event {
        Event::Created => 0,
        Event::Modified => 1,
        Event::Removed => 2,
        Event::Renamed => 3,
    }
}

fn decode_event(byte: u8) -> Event {
    match byte {
        0 => Event::Created,
        2 => Event::Removed,
        3 => Event::Renamed,
        _ => Event::Modified,
    }
}

fn encode_record(r: &Record) -> Vec<u8> {
    let mut out = Vec::with_capacity(52);
    out.push(RECORD_VERSION);
    out.push(u8::from(r.processed.is_some()) | (u8::from(r.last_ok) << 1));
    out.push(encode_event(r.event));
    out.extend_from_slice(&r.seq.to_le_bytes());
    if let Some(m) = r.processed {
        out.extend_from_slice(&m.size.to_le_bytes());
        out.extend_from_slice(&m.mtime_ns.to_le_bytes());
        out.extend_from_slice(&m.ctime_ns.to_le_bytes());
        out.extend_from_slice(&m.ino.to_le_bytes());
        out.extend_from_slice(&m.dev.to_le_bytes());
    }
    out
}

fn decode_record(b: &[u8]) -> Option<Record> {
    let (&version, rest) = b.split_first()?;
    if version != RECORD_VERSION || rest.len() < 10 {
        return None;
    }
    let flags = rest[0];
    let event = decode_event(rest[1]);
    let word = |i: usize| {
        rest.get(i..i + 8)
            .map(|s| u64::from_le_bytes(s.try_into().expect("8 bytes")))
    };
    let seq = word(2)?;
    let processed = if flags & 1 != 0 {
        Some(FileMeta {
            size: word(10)?,
            mtime_ns: word(18)? as i64,
            ctime_ns: word(26)? as i64,
            ino: word(34)?,
            dev: word(42)?,
        })
    } else {
        None
    };
    Some(Record {
        processed,
        last_ok: flags & 2 != 0,
        event,
        seq,
    })
}

/// The files of `path`'s subtree (itself included) as on disk now, walked with `rules` (the
/// watcher's ignore rules), keeping those `include` accepts: the disk side of [`reconcile`].
pub fn scan(
    rules: &Arc<IgnoreRules>,
    path: &Path,
    include: impl Fn(&Path) -> bool,
) -> HashMap<PathBuf, FileMeta> {
    let mut on_disk = HashMap::new();
    let mut consider = |p: &Path| {
        if include(p)
            && let Some(meta) = FileMeta::read(p)
        {
            on_disk.insert(p.to_path_buf(), meta);
        }
    };
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => ward_watch::walk(
            rules,
            path,
            |_| true,
            |p, is_dir| {
                if !is_dir {
                    consider(p);
                }
            },
        ),
        Ok(_) if rules.root_of(path).is_some() && !rules.is_ignored(path, false) => consider(path),
        _ => {}
    }
    on_disk
}

/// What startup reconciliation decided for one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reconciled {
    /// The path.
    pub path: PathBuf,
    /// The change it needs processed.
    pub event: Event,
}

/// Compares the files on disk (`on_disk`: path → current metadata) with the manifest's records
/// and returns exactly the paths created, modified or removed since their last successful
/// processing (a path seen but never processed that is now gone counts as removed), in path
/// order for stable output.
pub fn reconcile(
    records: &HashMap<PathBuf, Record>,
    on_disk: &HashMap<PathBuf, FileMeta>,
) -> Vec<Reconciled> {
    let mut out = Vec::new();
    for (path, meta) in on_disk {
        let event = match records.get(path).and_then(|r| r.processed) {
            None => Some(Event::Created),
            Some(done) if done != *meta => Some(Event::Modified),
            Some(_) => None,
        };
        if let Some(event) = event {
            out.push(Reconciled {
                path: path.clone(),
                event,
            });
        }
    }
    for (path, record) in records {
        // Gone, and either processed in some version or seen and not yet processed (its job
        // queued, running or failed): a consumer may know of it, so its removal is due. Only a
        // processed removal (a tombstone) needs nothing.
        let known = record.processed.is_some() || record.event != Event::Removed;
        if known && !on_disk.contains_key(path) {
            out.push(Reconciled {
                path: path.clone(),
                event: Event::Removed,
            });
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(size: u64) -> FileMeta {
        FileMeta {
            size,
            mtime_ns: 1,
            ctime_ns: 2,
            ino: 3,
            dev: 4,
        }
    }

    fn queued(path: &str, event: Event) -> Update {
        Update::Queued {
            path: path.into(),
            event,
            old_path: None,
        }
    }

    fn finished(path: &str, processed: Option<FileMeta>) -> Update {
        Update::Finished {
            path: path.into(),
            ok: true,
            processed,
        }
    }

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
            m.apply(&[finished("/r/a", Some(meta(5)))]).unwrap();
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

    #[test]
    fn reconciliation_finds_exactly_what_changed_since_the_last_success() {
        let mut records = HashMap::new();
        let rec = |processed| Record {
            processed,
            last_ok: true,
            event: Event::Modified,
            seq: 1,
        };
        records.insert(PathBuf::from("/same"), rec(Some(meta(1))));
        records.insert(PathBuf::from("/changed"), rec(Some(meta(1))));
        records.insert(PathBuf::from("/gone"), rec(Some(meta(1))));
        records.insert(PathBuf::from("/never-done"), rec(None));
        records.insert(PathBuf::from("/queued-then-gone"), rec(None));
        let tombstone = Record {
            event: Event::Removed,
            ..rec(None)
        };
        records.insert(PathBuf::from("/tombstone"), tombstone);
        let on_disk: HashMap<_, _> = [
            ("/same", meta(1)),
            ("/changed", meta(2)),
            ("/never-done", meta(1)),
            ("/new", meta(1)),
        ]
        .into_iter()
        .map(|(p, m)| (PathBuf::from(p), m))
        .collect();
        let got: Vec<_> = reconcile(&records, &on_disk)
            .into_iter()
            .map(|r| (r.path, r.event))
            .collect();
        assert_eq!(
            got,
            [
                ("/changed".into(), Event::Modified),
                ("/gone".into(), Event::Removed),
                ("/never-done".into(), Event::Created),
                ("/new".into(), Event::Created),
                ("/queued-then-gone".into(), Event::Removed),
            ]
        );
    }
}

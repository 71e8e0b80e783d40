//! Reconciliation: the one diff of a subtree on disk against the manifest, a sorted merge of the
//! walk with a range scan of `files`, in the caller's thread or with the walk in a second one.
//! Not what the server makes of its results (jobs, resumed parts: the tracker's), nor how the
//! records it reads are laid out (`record`).

use std::ffi::OsStr;
use std::ops::ControlFlow;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use redb::ReadableTableMetadata;
use ward_watch::IgnoreRules;

use super::failures::{FAILURES, gave_up_on};
use super::ordered::Ordered;
use super::record::decode_record;
use super::{FileMeta, Manifest};
use crate::Error;
use crate::jobs::Event;

/// What reconciliation decided for one path, with what the caller's filter made of it (its
/// trigger, for the server: matched once, where the path is first looked at).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reconciled<T = ()> {
    /// The path.
    pub path: PathBuf,
    /// The change it needs processed.
    pub event: Event,
    /// What the filter returned for it.
    pub matched: T,
}

impl Manifest {
    /// Compares `path`'s subtree (itself included) on disk, walked with `rules` (the watcher's
    /// ignore rules), with the manifest, and returns exactly the paths among those `include`
    /// accepts that were created, modified or removed since their last successful processing (a
    /// path seen but never processed that is now gone counts as removed), in the byte order of
    /// their paths.
    ///
    /// This is startup reconciliation (one call per root) and the diff behind every rescan and
    /// directory change. It is one sorted merge: the walk lists each directory sorted, so its
    /// files come in the order of the manifest's keys, and a range scan of `files` is read
    /// alongside. Neither side is collected, and only the paths that need a job are allocated or
    /// shown to `include`. When the manifest is large (4096 paths or more), the walk (with its
    /// `stat` per file, which dominates) runs on a second thread while this one reads the manifest
    /// and merges.
    ///
    /// # Errors
    /// If the store cannot be read.
    pub fn reconcile(
        &self,
        rules: &IgnoreRules,
        path: &Path,
        mut include: impl FnMut(&Path) -> bool,
    ) -> Result<Vec<Reconciled>, Error> {
        let threads = self.threads()?;
        let (out, _) = self.merge(threads, rules, path, None, usize::MAX, |p, _| {
            include(p).then_some(())
        })?;
        Ok(out)
    }

    /// [`Manifest::reconcile`] of the paths that sort after `after` (all of them without it),
    /// which stops at `limit` of the paths `include` accepts (it is shown each path with the
    /// change it needs, and accepts it by returning what the result carries for it) and then
    /// returns the last one kept, to resume after: a caller with room
    /// for a few thousand jobs compares a large subtree a part at a time, without walking what
    /// it has compared again or holding a result per file. A `limit` of 0 counts as 1.
    ///
    /// # Errors
    /// If the store cannot be read.
    pub fn reconcile_some<T>(
        &self,
        rules: &IgnoreRules,
        path: &Path,
        after: Option<&Path>,
        limit: usize,
        include: impl FnMut(&Path, Event) -> Option<T>,
    ) -> Result<(Vec<Reconciled<T>>, Option<PathBuf>), Error> {
        let threads = self.threads()?;
        self.merge(threads, rules, path, after, limit.max(1), include)
    }

    fn threads(&self) -> Result<Threads, Error> {
        Ok(if self.paths()? >= THREADED_ABOVE {
            Threads::Two
        } else {
            Threads::One
        })
    }

    /// [`Manifest::reconcile`] with the walk in the calling thread or in a second one, whatever
    /// the manifest's size.
    ///
    /// # Errors
    /// If the store cannot be read.
    pub fn reconcile_with(
        &self,
        threads: Threads,
        rules: &IgnoreRules,
        path: &Path,
        mut include: impl FnMut(&Path) -> bool,
    ) -> Result<Vec<Reconciled>, Error> {
        let (out, _) = self.merge(threads, rules, path, None, usize::MAX, |p, _| {
            include(p).then_some(())
        })?;
        Ok(out)
    }

    fn merge<T>(
        &self,
        threads: Threads,
        rules: &IgnoreRules,
        path: &Path,
        after: Option<&Path>,
        limit: usize,
        include: impl FnMut(&Path, Event) -> Option<T>,
    ) -> Result<(Vec<Reconciled<T>>, Option<PathBuf>), Error> {
        self.read(|txn| {
            // A subtree's records in the order of their paths; `/a/b c` is not among those of
            // `/a/b`, nor is anything else the walk would not list.
            let records = Ordered::new(
                txn,
                path.as_os_str().as_bytes(),
                after.map(|a| a.as_os_str().as_bytes()),
            )?;
            // Read only when some path gave up: most comparisons look nothing up.
            let failures = txn.open_table(FAILURES)?;
            let failures = (!failures.is_empty()?).then_some(failures);
            let mut diff = Diff::new(path, records, limit, include, failures);
            match threads {
                Threads::One => merge_walked_here(rules, path, after, &mut diff)?,
                Threads::Two => merge_walked_in_a_thread(rules, path, after, limit, &mut diff)?,
            }
            Ok(diff.finish()?)
        })
    }
}

/// Where a reconciliation walks the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threads {
    /// The walk and the merge in the caller's thread.
    One,
    /// The walk in a thread of its own, handing files over in chunks.
    Two,
}

/// From how many known paths (the manifest's size, known without a walk) a reconciliation walks
/// in a second thread: below it, starting a thread costs more than the overlap brings. A small
/// subtree of a large manifest gets a thread too, for some tens of microseconds.
const THREADED_ABOVE: u64 = 4096;
/// Files handed from the walking thread to the merging one at a time, at most.
const CHUNK: usize = 1024;
/// Chunks the walking thread may have ready while the merge works.
const CHUNKS_AHEAD: usize = 4;

/// A chunk of walked files: their paths' bytes end to end, and where each ends.
#[derive(Debug, Default)]
struct Walked {
    bytes: Vec<u8>,
    files: Vec<(usize, FileMeta)>,
}

/// Walks `path` in this thread, merging each file into `diff` as it is found.
fn merge_walked_here<I, G, F, T>(
    rules: &IgnoreRules,
    path: &Path,
    after: Option<&Path>,
    diff: &mut Diff<'_, I, F, T>,
) -> Result<(), redb::StorageError>
where
    I: Iterator<Item = Result<(G, G), redb::StorageError>>,
    G: Bytes,
    F: FnMut(&Path, Event) -> Option<T>,
{
    let mut failed = Ok(());
    on_disk(rules, path, after, |p, meta| {
        failed = diff.file(p, meta);
        if failed.is_err() || diff.full {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    });
    failed
}

/// Walks `path` in a scoped thread and merges what it hands over into `diff`.
///
/// The walk runs ahead of the merge by at most `CHUNKS_AHEAD + 1` chunks, stat-ing files the merge
/// may never take once `limit` changes are found; a chunk is a sixteenth of `limit` (within 64 and
/// [`CHUNK`]), so that a comparison resumed a few thousand files at a time in a large directory
/// does not stat several thousand more each time.
fn merge_walked_in_a_thread<I, G, F, T>(
    rules: &IgnoreRules,
    path: &Path,
    after: Option<&Path>,
    limit: usize,
    diff: &mut Diff<'_, I, F, T>,
) -> Result<(), redb::StorageError>
where
    I: Iterator<Item = Result<(G, G), redb::StorageError>>,
    G: Bytes,
    F: FnMut(&Path, Event) -> Option<T>,
{
    std::thread::scope(|scope| {
        let chunk_len = (limit / 16).clamp(64, CHUNK);
        let (tx, rx) = crossbeam_channel::bounded::<Walked>(CHUNKS_AHEAD);
        let walker = std::thread::Builder::new()
            .name("ward-reconcile".into())
            .spawn_scoped(scope, move || {
                let mut chunk = Walked::default();
                on_disk(rules, path, after, |p, meta| {
                    chunk.bytes.extend_from_slice(p.as_os_str().as_bytes());
                    chunk.files.push((chunk.bytes.len(), meta));
                    if chunk.files.len() == chunk_len
                        && tx.send(std::mem::take(&mut chunk)).is_err()
                    {
                        // The merge is done (full, or failed): the rest of the walk is not needed.
                        return ControlFlow::Break(());
                    }
                    ControlFlow::Continue(())
                });
                // Nobody listens if the merge is done; then there is nothing to send.
                let _ = tx.send(chunk);
            });
        if let Err(e) = walker {
            log::warn!("reconciling without a walking thread: {e}");
            return merge_walked_here(rules, path, after, diff);
        }
        // Leaving the loop drops the receiver, which stops the walk at its next chunk.
        for chunk in rx {
            let mut start = 0;
            for &(end, meta) in &chunk.files {
                diff.file(Path::new(OsStr::from_bytes(&chunk.bytes[start..end])), meta)?;
                if diff.full {
                    return Ok(());
                }
                start = end;
            }
        }
        Ok(())
    })
}

/// The files of `path`'s subtree (itself included) that sort after `after`, as on disk now, in
/// the byte order of their paths, walked with `rules`, until `visit` breaks.
fn on_disk(
    rules: &IgnoreRules,
    path: &Path,
    after: Option<&Path>,
    mut visit: impl FnMut(&Path, FileMeta) -> ControlFlow<()>,
) {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => ward_watch::walk_files_after(rules, path, after, |p, stat| {
            visit(p, FileMeta::from(stat))
        }),
        Ok(m)
            if rules.root_of(path).is_some()
                && !rules.is_ignored(path, false)
                && after.is_none_or(|a| path.as_os_str().as_bytes() > a.as_os_str().as_bytes()) =>
        {
            let _ = visit(path, FileMeta::of(&m));
        }
        _ => {}
    }
}

/// The bytes of a stored key or value.
trait Bytes {
    fn bytes(&self) -> &[u8];
}

impl Bytes for Vec<u8> {
    fn bytes(&self) -> &[u8] {
        self
    }
}

/// The merge of the disk, pushed one file at a time in the byte order of the paths, with the
/// records of the same subtree, pulled in key order (the same order).
struct Diff<'a, I: Iterator, F, T> {
    prefix: &'a Path,
    records: std::iter::Peekable<I>,
    include: F,
    out: Vec<Reconciled<T>>,
    /// How many results `out` may hold; `full` says that one more was found, and that the merge
    /// stops there (the walk and the records, read no further, are compared later).
    limit: usize,
    full: bool,
    /// The `failures` table, when it has entries: a path whose state is the one its job gave up
    /// on is not owed again.
    failures: Option<redb::ReadOnlyTable<&'static [u8], &'static [u8]>>,
}

impl<'a, I, G, F, T> Diff<'a, I, F, T>
where
    I: Iterator<Item = Result<(G, G), redb::StorageError>>,
    G: Bytes,
    F: FnMut(&Path, Event) -> Option<T>,
{
    fn new(
        prefix: &'a Path,
        records: I,
        limit: usize,
        include: F,
        failures: Option<redb::ReadOnlyTable<&'static [u8], &'static [u8]>>,
    ) -> Self {
        Diff {
            prefix,
            records: records.peekable(),
            include,
            out: Vec::new(),
            limit,
            full: false,
            failures,
        }
    }

    /// Whether `key`'s job gave up on `state` (a version, or `None`: the file gone).
    fn gave_up_on(&self, key: &[u8], state: Option<FileMeta>) -> bool {
        self.failures
            .as_ref()
            .and_then(|f| gave_up_on(f, key))
            .is_some_and(|version| version == state)
    }

    fn keep(&mut self, path: &Path, event: Event) {
        if self.full {
            return;
        }
        let Some(matched) = (self.include)(path, event) else {
            return;
        };
        if self.out.len() < self.limit {
            self.out.push(Reconciled {
                path: path.to_path_buf(),
                event,
                matched,
            });
        } else {
            self.full = true;
        }
    }

    /// The file `path` is on disk with `meta`; every record before it is of a path gone.
    fn file(&mut self, path: &Path, meta: FileMeta) -> Result<(), redb::StorageError> {
        let key = path.as_os_str().as_bytes();
        let processed = loop {
            if self.full {
                return Ok(());
            }
            let order = match self.records.peek() {
                None => break None,
                Some(Ok((k, _))) => k.bytes().cmp(key),
                Some(Err(_)) => std::cmp::Ordering::Less,
            };
            match order {
                std::cmp::Ordering::Greater => break None,
                std::cmp::Ordering::Equal => {
                    let (_, value) = self.records.next().expect("peeked")?;
                    break decode_record(value.bytes()).and_then(|r| r.processed);
                }
                std::cmp::Ordering::Less => {
                    let (k, value) = self.records.next().expect("peeked")?;
                    self.gone(k.bytes(), value.bytes());
                }
            }
        };
        let event = match processed {
            None => Event::Created,
            Some(done) if done != meta => Event::Modified,
            Some(_) => return Ok(()),
        };
        if self.gave_up_on(key, Some(meta)) {
            return Ok(());
        }
        self.keep(path, event);
        Ok(())
    }

    /// The recorded `key` is not on disk.
    fn gone(&mut self, key: &[u8], value: &[u8]) {
        let path = Path::new(OsStr::from_bytes(key));
        // `/a/b c` lies in the key range of `/a/b` but not in its subtree.
        if !path.starts_with(self.prefix) {
            return;
        }
        let Some(record) = decode_record(value) else {
            return;
        };
        // Gone, and either processed in some version or seen and not yet processed (its job
        // queued, running or failed): a consumer may know of it, so its removal is due. Only a
        // processed removal (a tombstone) needs nothing.
        let known = record.processed.is_some() || record.event != Event::Removed;
        if known && !self.gave_up_on(key, None) {
            self.keep(path, Event::Removed);
        }
    }

    /// The walk is over (or the results full): every record left is of a path gone. Returns the
    /// results and, when full, the last one's path, to resume after.
    fn finish(mut self) -> Result<(Vec<Reconciled<T>>, Option<PathBuf>), redb::StorageError> {
        while !self.full
            && let Some(entry) = self.records.next()
        {
            let (k, value) = entry?;
            self.gone(k.bytes(), value.bytes());
        }
        let resume = if self.full {
            self.out.last().map(|r| r.path.clone())
        } else {
            None
        };
        Ok((self.out, resume))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::manifest::fixtures::meta;
    use crate::manifest::{Record, Update};

    /// What the manifest says of a path in a reconciliation case.
    #[derive(Debug, Clone, Copy)]
    enum Known {
        /// Processed in the version on disk now (or in some version, if it is not on disk).
        Done,
        /// Processed in another version than the one on disk.
        Stale,
        /// Its change was seen and its job queued, never finished.
        Seen,
        /// Its last attempt failed, and no version was ever processed.
        Failed,
        /// Its removal was processed.
        Tombstone,
    }

    /// One reconciliation case: a tree (files, and empty directories ending in `/`), an ignore
    /// file, the manifest, the subtree compared (relative to the root), and the expected result
    /// (in the byte order of the paths).
    struct Case {
        name: &'static str,
        disk: &'static [&'static [u8]],
        wardignore: &'static str,
        known: &'static [(&'static [u8], Known)],
        subtree: &'static [u8],
        expect: &'static [(&'static [u8], Event)],
    }

    use Known::{Done, Failed, Seen, Stale, Tombstone};

    const CASES: &[Case] = &[
        Case {
            name: "an unchanged nested tree needs nothing",
            disk: &[b"a/b/c/f", b"a/b/g", b"a/h", b"i", b"empty/"],
            wardignore: "",
            known: &[
                (b"a/b/c/f", Done),
                (b"a/b/g", Done),
                (b"a/h", Done),
                (b"i", Done),
            ],
            subtree: b"",
            expect: &[],
        },
        Case {
            name: "created, modified, removed, at every depth",
            disk: &[b"a/b/new", b"a/b/same", b"a/changed", b"top-new", b"z/same"],
            wardignore: "",
            known: &[
                (b"a/b/gone", Done),
                (b"a/b/same", Done),
                (b"a/changed", Stale),
                (b"gone-dir/x/y", Done),
                (b"z/same", Done),
                (b"zz-gone", Done),
            ],
            subtree: b"",
            expect: &[
                (b"a/b/gone", Event::Removed),
                (b"a/b/new", Event::Created),
                (b"a/changed", Event::Modified),
                (b"gone-dir/x/y", Event::Removed),
                (b"top-new", Event::Created),
                (b"zz-gone", Event::Removed),
            ],
        },
        Case {
            name: "a file replaced by a directory",
            disk: &[b"x/inner", b"x/deeper/f"],
            wardignore: "",
            known: &[(b"x", Done)],
            subtree: b"",
            expect: &[
                (b"x", Event::Removed),
                (b"x/deeper/f", Event::Created),
                (b"x/inner", Event::Created),
            ],
        },
        Case {
            name: "a directory replaced by a file",
            disk: &[b"x"],
            wardignore: "",
            known: &[(b"x/a", Done), (b"x/b/c", Done)],
            subtree: b"",
            expect: &[
                (b"x", Event::Created),
                (b"x/a", Event::Removed),
                (b"x/b/c", Event::Removed),
            ],
        },
        Case {
            // Byte order: ' ' < '-' < '.' < '/' < '0', so the files of directory `a` come
            // between `a.b` and `a0`, whatever order the components would give.
            name: "names whose byte order differs from component order",
            disk: &[
                b"a/b", b"a/c/d", b"a b", b"a-b", b"a.b", b"a0", b"a/-", b"a-/x",
            ],
            wardignore: "",
            known: &[
                (b"a b", Done),
                (b"a-b", Stale),
                (b"a-c", Done),
                (b"a.b", Done),
                (b"a/b", Done),
                (b"a/bb", Done),
                (b"a/c/d", Stale),
                (b"a0", Done),
                (b"a-/x", Done),
            ],
            subtree: b"",
            expect: &[
                (b"a-b", Event::Modified),
                (b"a-c", Event::Removed),
                (b"a/-", Event::Created),
                (b"a/bb", Event::Removed),
                (b"a/c/d", Event::Modified),
            ],
        },
        Case {
            name: "unicode and non-UTF-8 names",
            disk: &[
                "é/ü".as_bytes(),
                "日本/語".as_bytes(),
                b"bad\xff/x",
                b"bad\xfe",
                "e\u{301}".as_bytes(),
            ],
            wardignore: "",
            known: &[
                ("é/ü".as_bytes(), Done),
                ("日本/語".as_bytes(), Stale),
                (b"bad\xff/gone", Done),
                (b"bad\xff/x", Done),
                ("Ω".as_bytes(), Done),
            ],
            subtree: b"",
            expect: &[
                (b"bad\xfe", Event::Created),
                (b"bad\xff/gone", Event::Removed),
                ("e\u{301}".as_bytes(), Event::Created),
                ("Ω".as_bytes(), Event::Removed),
                ("日本/語".as_bytes(), Event::Modified),
            ],
        },
        Case {
            name: "seen but never processed, failed, and tombstones",
            disk: &[b"failed-here", b"seen-here"],
            wardignore: "",
            known: &[
                (b"failed-gone", Failed),
                (b"failed-here", Failed),
                (b"seen-gone", Seen),
                (b"seen-here", Seen),
                (b"tombstone", Tombstone),
            ],
            subtree: b"",
            expect: &[
                (b"failed-gone", Event::Removed),
                (b"failed-here", Event::Created),
                (b"seen-gone", Event::Removed),
                (b"seen-here", Event::Created),
            ],
        },
        Case {
            // What an ignored directory holds is neither walked nor asked about; a recorded file
            // under it is not ignored as a file, so it counts as gone (as it always has).
            name: "ignore rules",
            disk: &[
                b"build/out",
                b"keep",
                b"new.tmp",
                b"src/kept.log",
                b"src/x.tmp",
            ],
            wardignore: "*.tmp\nbuild/\n",
            known: &[
                (b"build/out", Done),
                (b"keep", Stale),
                (b"old.tmp", Done),
                (b"src/x.tmp", Stale),
            ],
            subtree: b"",
            expect: &[
                // The ignore file is a file like any other, unless it ignores itself.
                (b".wardignore", Event::Created),
                (b"build/out", Event::Removed),
                (b"keep", Event::Modified),
                (b"src/kept.log", Event::Created),
            ],
        },
        Case {
            name: "a subtree is compared alone, not its byte-order neighbours",
            disk: &[b"d/f", b"d-x", b"d.x", b"d0", b"dd"],
            wardignore: "",
            known: &[
                (b"d/f", Stale),
                (b"d/gone", Done),
                (b"d-gone", Done),
                (b"d.x", Stale),
                (b"d0/gone", Done),
            ],
            subtree: b"d",
            expect: &[(b"d/f", Event::Modified), (b"d/gone", Event::Removed)],
        },
        Case {
            name: "a subtree that is a file now",
            disk: &[b"x", b"x y"],
            wardignore: "",
            known: &[(b"x", Stale), (b"x y", Stale), (b"x/old", Done)],
            subtree: b"x",
            expect: &[(b"x", Event::Modified), (b"x/old", Event::Removed)],
        },
        Case {
            name: "a subtree that is gone",
            disk: &[b"other"],
            wardignore: "",
            known: &[
                (b"d/a", Done),
                (b"d/b/c", Seen),
                (b"d-2", Done),
                (b"d/t", Tombstone),
            ],
            subtree: b"d",
            expect: &[(b"d/a", Event::Removed), (b"d/b/c", Event::Removed)],
        },
    ];

    fn os(bytes: &[u8]) -> &Path {
        Path::new(OsStr::from_bytes(bytes))
    }

    /// Builds `case`'s tree and manifest under `dir`; returns the root, the rules and the manifest.
    fn set_up(dir: &Path, case: &Case) -> (PathBuf, IgnoreRules, Manifest) {
        let root = dir.join("root");
        std::fs::create_dir(&root).unwrap();
        for rel in case.disk {
            let path = root.join(os(rel));
            if rel.ends_with(b"/") {
                std::fs::create_dir_all(&path).unwrap();
            } else {
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, rel).unwrap();
            }
        }
        if !case.wardignore.is_empty() {
            std::fs::write(root.join(".wardignore"), case.wardignore).unwrap();
        }
        let rules = IgnoreRules::new(vec![root.clone()], &[], Some(".wardignore".into())).unwrap();
        let (mut manifest, _) = Manifest::open(&dir.join("manifest.redb")).unwrap();
        for (rel, known) in case.known {
            let path = root.join(os(rel));
            let now = FileMeta::read(&path).unwrap_or(meta(7));
            let queued = Update::Queued {
                path: path.clone(),
                event: Event::Created,
                old_path: None,
                seq: None,
            };
            let finished = |ok: bool, processed: Option<FileMeta>| Update::Finished {
                path: path.clone(),
                // A success on nothing is a processed removal (a tombstone); the rest ran jobs
                // of its creation.
                event: if ok && processed.is_none() {
                    Event::Removed
                } else {
                    Event::Created
                },
                ok,
                processed,
                old_path: None,
                seq: None,
            };
            let updates = match known {
                Done => vec![finished(true, Some(now))],
                Stale => vec![finished(
                    true,
                    Some(FileMeta {
                        size: now.size + 1,
                        ..now
                    }),
                )],
                Seen => vec![queued.clone()],
                Failed => vec![queued.clone(), finished(false, None)],
                Tombstone => vec![finished(true, None)],
            };
            manifest.apply(&updates).unwrap();
        }
        (root, rules, manifest)
    }

    /// The server's filter: in a root and not ignored as a file.
    fn handled(rules: &IgnoreRules) -> impl FnMut(&Path) -> bool + '_ {
        |p| rules.root_of(p).is_some() && !rules.is_ignored(p, false)
    }

    /// The reconciliation this module had before the sorted merge, kept as an oracle: the whole
    /// disk and every record in hash maps, compared both ways.
    fn reconcile_by_hash_maps(
        manifest: &Manifest,
        rules: &IgnoreRules,
        path: &Path,
    ) -> Vec<(PathBuf, Event)> {
        let mut include = handled(rules);
        let mut on_disk = HashMap::new();
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() => ward_watch::walk(
                rules,
                path,
                |_| true,
                |p, is_dir| {
                    if !is_dir
                        && include(p)
                        && let Some(meta) = FileMeta::read(p)
                    {
                        on_disk.insert(p.to_path_buf(), meta);
                    }
                },
            ),
            Ok(m) if include(path) => {
                on_disk.insert(path.to_path_buf(), FileMeta::of(&m));
            }
            _ => {}
        }
        let records: HashMap<PathBuf, Record> = manifest
            .records()
            .unwrap()
            .into_iter()
            .filter(|(p, _)| p.starts_with(path) && include(p))
            .collect();
        let mut out = Vec::new();
        for (p, meta) in &on_disk {
            match records.get(p).and_then(|r| r.processed) {
                None => out.push((p.clone(), Event::Created)),
                Some(done) if done != *meta => out.push((p.clone(), Event::Modified)),
                Some(_) => {}
            }
        }
        for (p, r) in &records {
            if (r.processed.is_some() || r.event != Event::Removed) && !on_disk.contains_key(p) {
                out.push((p.clone(), Event::Removed));
            }
        }
        out.sort_by(|a, b| a.0.as_os_str().as_bytes().cmp(b.0.as_os_str().as_bytes()));
        out
    }

    #[test]
    fn reconciliation_finds_exactly_what_changed_since_the_last_success() {
        for case in CASES {
            for threads in [Threads::One, Threads::Two] {
                let dir = tempfile::tempdir().unwrap();
                let (root, rules, manifest) = set_up(dir.path(), case);
                let subtree = if case.subtree.is_empty() {
                    root.clone()
                } else {
                    root.join(os(case.subtree))
                };
                let mut asked = Vec::new();
                let got: Vec<(PathBuf, Event)> = manifest
                    .reconcile_with(threads, &rules, &subtree, |p| {
                        asked.push(p.to_path_buf());
                        handled(&rules)(p)
                    })
                    .unwrap()
                    .into_iter()
                    .map(|r| (r.path, r.event))
                    .collect();
                let expect: Vec<(PathBuf, Event)> = case
                    .expect
                    .iter()
                    .map(|(rel, event)| (root.join(os(rel)), *event))
                    .collect();
                assert_eq!(got, expect, "{} ({threads:?})", case.name);
                assert_eq!(
                    reconcile_by_hash_maps(&manifest, &rules, &subtree),
                    expect,
                    "{}: the oracle disagrees with the case table",
                    case.name
                );
                // Only candidates for a job are shown to the filter: never an unchanged file.
                for (rel, known) in case.known {
                    let path = root.join(os(rel));
                    let unchanged = matches!(known, Done)
                        && path.is_file()
                        && !case.expect.iter().any(|(changed, _)| changed == rel);
                    if unchanged {
                        assert!(
                            !asked.contains(&path),
                            "{}: asked about {path:?}",
                            case.name
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn reconciliation_of_many_files_in_a_thread_matches_the_hash_map_diff() {
        // Enough files for several hand-overs between the threads, with changes spread over
        // them: one in seven modified, one in eleven removed, one in thirteen new.
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let (mut manifest, _) = Manifest::open(&dir.path().join("manifest.redb")).unwrap();
        let mut updates = Vec::new();
        for i in 0..5000 {
            let path = root.join(format!("d{}/f{i}", i % 37));
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, "x").unwrap();
            let mut now = FileMeta::read(&path).unwrap();
            if i % 7 == 0 {
                now.mtime_ns += 1;
            }
            if i % 13 != 0 {
                updates.push(Update::Finished {
                    path: path.clone(),
                    event: Event::Created,
                    ok: true,
                    processed: Some(now),
                    old_path: None,
                    seq: None,
                });
            }
            if i % 11 == 0 {
                std::fs::remove_file(&path).unwrap();
            }
        }
        manifest.apply(&updates).unwrap();
        let rules = IgnoreRules::new(vec![root.clone()], &[], None).unwrap();
        let expect = reconcile_by_hash_maps(&manifest, &rules, &root);
        assert!(expect.len() > 1000, "{} changes", expect.len());
        for threads in [Threads::One, Threads::Two] {
            let got: Vec<(PathBuf, Event)> = manifest
                .reconcile_with(threads, &rules, &root, handled(&rules))
                .unwrap()
                .into_iter()
                .map(|r| (r.path, r.event))
                .collect();
            assert_eq!(got, expect, "{threads:?}");
        }
        // In parts (the manifest is large enough for the walking thread), resuming each after
        // the last path of the one before: the same, each path once, and no part above its limit.
        assert_eq!(manifest.threads().unwrap(), Threads::Two);
        assert_eq!(in_parts(&manifest, &rules, &root, 97), expect);
    }

    /// [`Manifest::reconcile_some`] called until done, resuming each time where it stopped.
    fn in_parts(
        manifest: &Manifest,
        rules: &IgnoreRules,
        subtree: &Path,
        limit: usize,
    ) -> Vec<(PathBuf, Event)> {
        let mut all = Vec::new();
        let mut after = None;
        loop {
            let (part, resume) = manifest
                .reconcile_some(rules, subtree, after.as_deref(), limit, |p, _| {
                    handled(rules)(p).then_some(())
                })
                .unwrap();
            assert!(
                part.len() <= limit,
                "{} results for a limit of {limit}",
                part.len()
            );
            all.extend(part.into_iter().map(|r| (r.path, r.event)));
            match resume {
                Some(resume) => after = Some(resume),
                None => return all,
            }
        }
    }

    #[test]
    fn reconciliation_in_parts_finds_what_one_pass_finds() {
        for case in CASES {
            let dir = tempfile::tempdir().unwrap();
            let (root, rules, manifest) = set_up(dir.path(), case);
            let subtree = if case.subtree.is_empty() {
                root.clone()
            } else {
                root.join(os(case.subtree))
            };
            let expect = reconcile_by_hash_maps(&manifest, &rules, &subtree);
            for limit in [1, 2, 3, 1000] {
                assert_eq!(
                    in_parts(&manifest, &rules, &subtree, limit),
                    expect,
                    "{} (limit {limit})",
                    case.name
                );
            }
        }
    }
}

//! Applying updates: one group of queueings and outcomes folded per path and committed in one
//! transaction, with the sequence numbers and the since-index kept right. Not opening or reading
//! the store (`store`), nor the record's layout (`record`), nor when a group is committed (the
//! server's writer thread).

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::time::Instant;

use redb::{ReadableTable, ReadableTableMetadata};

use super::changes::{CHANGES, Edits};
use super::deferred::{DEFER_MAX, Moves, Origin};
use super::failures::{FAILURES, forget_under};
use super::keys::{self, DIR_PATHS, DIRS, Numbers};
use super::record::{decode_record, encode_event, encode_record};
use super::store::{META, PENDING, RECORDS, SEQ_KEY, store_error};
use super::{Manifest, Record, Update};
use crate::Error;
use crate::jobs::Event;

impl Manifest {
    /// Records `updates` in one transaction (one fsync). On failure nothing of it is recorded and
    /// the caller keeps the updates to try again.
    ///
    /// The updates are applied in order to what the store holds, but each path's entries are
    /// read once and written once per call, however many updates name it: a job's queueing and
    /// its outcome usually land in the same group, and its pending entry then never reaches the
    /// store. A rename's queueing is also a change of its old path: its removal, numbered just
    /// before the rename.
    ///
    /// # Errors
    /// If the store cannot be written (a full disk, an I/O error).
    pub fn apply(&mut self, updates: &[Update]) -> Result<(), Error> {
        self.commit(updates, false)
    }

    /// [`Manifest::apply`] for the last commit of a server: it also writes every pending entry
    /// held back (`deferred`), so that the next start finds each job still owed as it was.
    ///
    /// # Errors
    /// If the store cannot be written.
    pub fn apply_last(&mut self, updates: &[Update]) -> Result<(), Error> {
        self.commit(updates, true)
    }

    /// When the oldest pending entry held back is due to be written, if any is held back.
    pub fn deferred_due(&self) -> Option<Instant> {
        self.deferred.due()
    }

    /// [`Manifest::apply`], writing every pending entry held back when `force`, else those due.
    fn commit(&mut self, updates: &[Update], force: bool) -> Result<(), Error> {
        let now = Instant::now();
        let held_to_write = (force && !self.deferred.is_empty()) || self.deferred.any_due(now);
        if updates.is_empty() && !held_to_write {
            return Ok(());
        }
        // Past the bound, this commit writes every entry held back and holds none.
        let force = force || self.deferred.len() > DEFER_MAX;
        let mut moves = Moves::default();
        let txn = self
            .db()?
            .begin_write()
            .map_err(|e| store_error("writing", e))?;
        let mut seq = self.seq;
        {
            let mut records = txn
                .open_table(RECORDS)
                .map_err(|e| store_error("writing", e))?;
            let mut pending = txn
                .open_table(PENDING)
                .map_err(|e| store_error("writing", e))?;
            let mut changes = txn
                .open_table(CHANGES)
                .map_err(|e| store_error("writing", e))?;
            let mut dirs = txn
                .open_table(DIRS)
                .map_err(|e| store_error("writing", e))?;
            let mut dir_paths = txn
                .open_table(DIR_PATHS)
                .map_err(|e| store_error("writing", e))?;
            let mut failures = txn
                .open_table(FAILURES)
                .map_err(|e| store_error("writing", e))?;
            // Most groups have no give-up to clear: an empty table costs no lookup per success.
            let mut any_failures = !failures.is_empty().map_err(|e| store_error("writing", e))?;
            // Each path once, in a list sorted below, with its place in the list by path: one
            // copy of the group's entries, not a map and then the sorted list made of it (a
            // commit of a burst's group held both, a megabyte or two of the server's peak).
            let mut touched: Vec<(&[u8], Touched)> = Vec::new();
            let mut places: HashMap<&[u8], usize> = HashMap::new();
            let mut numbers = Numbers::default();
            for update in updates {
                let key = update.path().as_os_str().as_bytes();
                match update {
                    Update::GaveUp { failure, .. } => {
                        failures
                            .insert(key, failure.encode().as_slice())
                            .map_err(|e| store_error("writing", e))?;
                        any_failures = true;
                        continue;
                    }
                    Update::GaveUpRemotely { failure, .. } => {
                        failures
                            .insert(key, failure.encode().as_slice())
                            .map_err(|e| store_error("writing", e))?;
                        any_failures = true;
                    }
                    Update::Retried { path } => {
                        forget_under(&mut failures, path).map_err(|e| store_error("writing", e))?;
                        continue;
                    }
                    Update::Finished { ok: true, .. } if any_failures => {
                        failures
                            .remove(key)
                            .map_err(|e| store_error("writing", e))?;
                    }
                    _ => {}
                }
                // A rename tells its old path's removal first, under a number of its own: a
                // since-query after the old path's last change must learn that it is gone.
                if let Update::Queued {
                    old_path: Some(old_path),
                    seq: given,
                    ..
                } = update
                {
                    touch(
                        &mut touched,
                        &mut places,
                        &records,
                        &dirs,
                        &mut numbers,
                        old_path.as_os_str().as_bytes(),
                    )?
                    .renamed_away(next_seq(&mut seq, given.map(|s| s - 1)));
                }
                let path = touch(
                    &mut touched,
                    &mut places,
                    &records,
                    &dirs,
                    &mut numbers,
                    key,
                )?;
                let deferred = &self.deferred;
                path.apply(update, &mut seq, || {
                    if let Some(job) = deferred.get(key) {
                        return Ok((Some(job), Origin::Deferred));
                    }
                    let stored = pending
                        .get(key)
                        .map_err(|e| store_error("writing", e))?
                        .map(|job| job.value().to_vec());
                    let origin = if stored.is_some() {
                        Origin::Stored
                    } else {
                        Origin::Absent
                    };
                    Ok((stored, origin))
                })?;
            }
            // The entries held back that this group left alone, once due: to the store.
            for (key, job, due) in self.deferred.iter(now) {
                let decided = places
                    .get(key)
                    .is_some_and(|&place| touched[place].1.pending.is_some());
                if (due || force) && !decided {
                    pending
                        .insert(key, job.job().as_slice())
                        .map_err(|e| store_error("writing", e))?;
                    moves.release.push(key.into());
                }
            }
            // In key order: neighbours in the B-trees are written one after the other.
            drop(places);
            touched.sort_unstable_by(|a, b| a.0.cmp(b.0));
            let mut edits = Edits::default();
            for (key, path) in touched {
                let Some(record) = path.record else {
                    continue;
                };
                let record_key = match path.key {
                    Some(record_key) => record_key,
                    None => keys::make(&mut dirs, &mut dir_paths, &mut numbers, key)
                        .map_err(|e| store_error("writing", e))?,
                };
                if path.stored_seq != Some(record.seq) {
                    if let Some(stored) = path.stored_seq {
                        edits.remove(stored);
                    }
                    edits.insert(record.seq, &record_key);
                }
                records
                    .insert(record_key.as_slice(), encode_record(&record).as_slice())
                    .map_err(|e| store_error("writing", e))?;
                let Some(PendingJob {
                    job,
                    origin,
                    changed,
                }) = path.pending
                else {
                    continue;
                };
                match job {
                    // A job that was in the store stays there until it finishes.
                    Some(job) if force || origin == Origin::Stored => {
                        if changed || origin != Origin::Stored {
                            pending
                                .insert(key, job.as_slice())
                                .map_err(|e| store_error("writing", e))?;
                        }
                        if origin == Origin::Deferred {
                            moves.release.push(key.into());
                        }
                    }
                    // Held back, or held still (keeping its age).
                    Some(job) => {
                        if changed {
                            moves.hold.push((key, job));
                        }
                    }
                    None => match origin {
                        Origin::Stored => {
                            pending.remove(key).map_err(|e| store_error("writing", e))?;
                        }
                        Origin::Deferred => moves.release.push(key.into()),
                        Origin::Absent => {}
                    },
                }
            }
            edits
                .write(&mut changes)
                .map_err(|e| store_error("writing", e))?;
            let mut meta = txn
                .open_table(META)
                .map_err(|e| store_error("writing", e))?;
            meta.insert(SEQ_KEY, seq)
                .map_err(|e| store_error("writing", e))?;
        }
        txn.commit().map_err(|e| store_error("committing", e))?;
        self.seq = seq;
        self.deferred.apply(moves, now);
        Ok(())
    }
}

/// The number of a change: `given` (by the tracker, when it made the job), else the one after
/// the last; `last` becomes the greatest so far either way.
fn next_seq(last: &mut u64, given: Option<u64>) -> u64 {
    let seq = given.unwrap_or(*last + 1);
    *last = (*last).max(seq);
    seq
}

/// `path`'s entries in `touched` (at its place in `places`), read from `records` the first time
/// a group's update names it.
fn touch<'t, 'k>(
    touched: &'t mut Vec<(&'k [u8], Touched)>,
    places: &mut HashMap<&'k [u8], usize>,
    records: &redb::Table<&'static [u8], &'static [u8]>,
    dirs: &redb::Table<&'static [u8], u64>,
    numbers: &mut Numbers,
    path: &'k [u8],
) -> Result<&'t mut Touched, Error> {
    let place = match places.entry(path) {
        std::collections::hash_map::Entry::Occupied(e) => *e.get(),
        std::collections::hash_map::Entry::Vacant(e) => {
            let key = keys::existing(dirs, numbers, path).map_err(|e| store_error("writing", e))?;
            let stored = match &key {
                Some(key) => records
                    .get(key.as_slice())
                    .map_err(|e| store_error("writing", e))?
                    .and_then(|v| decode_record(v.value())),
                None => None,
            };
            touched.push((
                path,
                Touched {
                    key,
                    stored_seq: stored.as_ref().map(|r| r.seq),
                    record: stored,
                    pending: None,
                },
            ));
            *e.insert(touched.len() - 1)
        }
    };
    Ok(&mut touched[place].1)
}

/// One path's entries while [`Manifest::apply`] folds its updates: read once, written once.
#[derive(Debug)]
struct Touched {
    /// The key of its record, if its directory is numbered (else numbered when it is written).
    key: Option<Vec<u8>>,
    /// The sequence number of the record in the store, whose `changes` entry a new one replaces.
    stored_seq: Option<u64>,
    /// The record as the updates so far leave it.
    record: Option<Record>,
    /// The pending job as the updates so far leave it; `None` until an update needs it.
    pending: Option<PendingJob>,
}

/// A path's entry in `pending`: the job's event byte and the old path of a rename.
#[derive(Debug)]
struct PendingJob {
    job: Option<Vec<u8>>,
    /// Where the job was before the group: in the store, held back, or nowhere.
    origin: Origin,
    /// Whether an update of the group changed it.
    changed: bool,
}

impl Touched {
    /// The path was renamed away (a rename to another path was queued): its last change is now
    /// its removal, numbered `seq`. The version last processed stays, and so does
    /// its pending job: the removal is processed only by the rename's job (its outcome for this
    /// path), so until then a diff still owes it.
    fn renamed_away(&mut self, seq: u64) {
        let old = self.record.take();
        self.record = Some(Record {
            processed: old.as_ref().and_then(|o| o.processed),
            last_ok: old.as_ref().is_none_or(|o| o.last_ok),
            event: Event::Removed,
            seq,
        });
    }

    /// Applies one update, numbering a new change with its given number or the one after `seq`;
    /// `stored_pending` reads the path's pending job and where it is, when it is needed and not
    /// known yet.
    fn apply(
        &mut self,
        update: &Update,
        seq: &mut u64,
        stored_pending: impl FnOnce() -> Result<(Option<Vec<u8>>, Origin), Error>,
    ) -> Result<(), Error> {
        let old = self.record.take();
        let record = match update {
            Update::Queued {
                event,
                old_path,
                seq: given,
                ..
            } => {
                let seq = next_seq(seq, *given);
                let mut job = vec![encode_event(*event)];
                if let Some(old_path) = old_path {
                    job.extend_from_slice(old_path.as_os_str().as_bytes());
                }
                let origin = match &self.pending {
                    Some(known) => known.origin,
                    None => stored_pending()?.1,
                };
                self.pending = Some(PendingJob {
                    job: Some(job),
                    origin,
                    changed: true,
                });
                Record {
                    processed: old.as_ref().and_then(|o| o.processed),
                    last_ok: old.as_ref().is_none_or(|o| o.last_ok),
                    event: *event,
                    seq,
                }
            }
            Update::Finished {
                event,
                ok,
                processed,
                seq: given,
                ..
            } => {
                if self.pending.is_none() {
                    let (job, origin) = stored_pending()?;
                    self.pending = Some(PendingJob {
                        job,
                        origin,
                        changed: false,
                    });
                }
                // Only the job the pending entry names is done: a later one queued for the path
                // while this one ran (a removal after a modification) stays.
                if let Some(entry) = &mut self.pending
                    && entry
                        .job
                        .as_ref()
                        .is_some_and(|job| job.first() == Some(&encode_event(*event)))
                {
                    entry.job = None;
                    entry.changed = true;
                }
                let removal_done = *ok && *event == Event::Removed;
                match old {
                    // Finished without a recorded change: record it as seen now.
                    None => Record {
                        processed: *processed,
                        last_ok: *ok,
                        event: if processed.is_some() {
                            Event::Created
                        } else {
                            *event
                        },
                        seq: next_seq(seq, *given),
                    },
                    // A job other than a removal that found its file gone processed nothing:
                    // the version its consumer last saw stays recorded, so a diff still owes
                    // that consumer the removal.
                    Some(old) => Record {
                        processed: match processed {
                            _ if removal_done => None,
                            Some(version) if *ok => Some(*version),
                            _ => old.processed,
                        },
                        last_ok: *ok,
                        event: if removal_done {
                            Event::Removed
                        } else {
                            old.event
                        },
                        ..old
                    },
                }
            }
            // The failure went to `failures`; what was processed no longer is.
            Update::GaveUpRemotely { .. } => match old {
                Some(old) => Record {
                    processed: None,
                    last_ok: false,
                    ..old
                },
                None => return Ok(()),
            },
            // Not folded into the record: `Manifest::apply` writes them to `failures`.
            Update::GaveUp { .. } | Update::Retried { .. } => {
                self.record = old;
                return Ok(());
            }
        };
        self.record = Some(record);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use ward_watch::IgnoreRules;

    use super::*;
    use crate::manifest::fixtures::{finished, meta, queued};
    use crate::manifest::{ChangeEntry, Reconciled};

    /// A manifest in a temporary directory, with an empty tree: every path it records is gone.
    fn manifest_of_a_vanished_tree() -> (tempfile::TempDir, Manifest, IgnoreRules, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("tree");
        std::fs::create_dir(&root).unwrap();
        let rules = IgnoreRules::new(vec![root.clone()], &[], None).unwrap();
        let (m, _) = Manifest::open(&dir.path().join("m.redb")).unwrap();
        (dir, m, rules, root)
    }

    #[test]
    fn a_job_that_finds_its_file_gone_does_not_count_as_its_removal() {
        let (_dir, mut m, rules, root) = manifest_of_a_vanished_tree();
        let a = root.join("a");
        let a = a.to_str().unwrap();
        m.apply(&[queued(a, Event::Created)]).unwrap();
        m.apply(&[finished(a, Event::Created, Some(meta(1)))])
            .unwrap();
        // Modified, then deleted before the job read it: the job ran on nothing.
        m.apply(&[queued(a, Event::Modified)]).unwrap();
        m.apply(&[finished(a, Event::Modified, None)]).unwrap();
        let removal = Reconciled {
            path: a.into(),
            event: Event::Removed,
            matched: (),
        };
        let diff = |m: &Manifest| m.reconcile(&rules, &root, |_| true).unwrap();
        assert_eq!(diff(&m), [removal]);
        m.apply(&[queued(a, Event::Removed)]).unwrap();
        m.apply(&[finished(a, Event::Removed, None)]).unwrap();
        assert_eq!(diff(&m), []);
    }

    #[test]
    fn a_job_finishing_keeps_the_later_one_queued_for_its_path_pending() {
        let (_dir, mut m, _, root) = manifest_of_a_vanished_tree();
        let a = root.join("a");
        let a = a.to_str().unwrap();
        m.apply(&[queued(a, Event::Modified)]).unwrap();
        m.apply(&[queued(a, Event::Removed)]).unwrap();
        m.apply(&[finished(a, Event::Modified, None)]).unwrap();
        assert_eq!(m.pending().unwrap(), [(a.into(), Event::Removed, None)]);
        m.apply(&[finished(a, Event::Removed, None)]).unwrap();
        assert_eq!(m.pending().unwrap(), []);
    }

    /// The paths in the store's `pending` table, without the entries held back.
    fn stored_pending(m: &Manifest) -> Vec<PathBuf> {
        m.read(|txn| {
            let mut out = Vec::new();
            for entry in txn.open_table(PENDING)?.iter()? {
                out.push(PathBuf::from(std::ffi::OsStr::from_bytes(entry?.0.value())));
            }
            Ok(out)
        })
        .unwrap()
    }

    #[test]
    fn a_pending_job_is_held_back_from_the_store_until_it_has_waited_or_the_last_commit() {
        let (_dir, mut m, _, root) = manifest_of_a_vanished_tree();
        let (a, b, c) = (root.join("a"), root.join("b"), root.join("c"));
        let (a, b, c) = (
            a.to_str().unwrap(),
            b.to_str().unwrap(),
            c.to_str().unwrap(),
        );
        // Queued and finished in different commits: the store's table never holds it.
        m.apply(&[queued(a, Event::Created)]).unwrap();
        assert_eq!(m.pending().unwrap(), [(a.into(), Event::Created, None)]);
        assert_eq!(stored_pending(&m), Vec::<PathBuf>::new());
        assert!(m.deferred_due().is_some());
        m.apply(&[finished(a, Event::Created, Some(meta(1)))])
            .unwrap();
        assert_eq!(m.pending().unwrap(), []);
        assert_eq!(m.deferred_due(), None);
        // One that waits is written once due, by a commit with nothing else to write.
        m.apply(&[queued(b, Event::Created)]).unwrap();
        let due = m.deferred_due().unwrap();
        assert!(due > Instant::now());
        crate::tracker::tests::wait_for("the held-back entry to be written", || {
            m.apply(&[]).unwrap();
            !stored_pending(&m).is_empty()
        });
        assert_eq!(stored_pending(&m), [PathBuf::from(b)]);
        assert!(Instant::now() >= due, "written before it was due");
        assert_eq!(m.deferred_due(), None);
        // Its outcome removes it from the store.
        m.apply(&[finished(b, Event::Created, Some(meta(1)))])
            .unwrap();
        assert_eq!(stored_pending(&m), Vec::<PathBuf>::new());
        // The last commit writes what is held back.
        m.apply(&[queued(c, Event::Modified)]).unwrap();
        m.apply_last(&[]).unwrap();
        assert_eq!(stored_pending(&m), [PathBuf::from(c)]);
        assert_eq!(m.pending().unwrap(), [(c.into(), Event::Modified, None)]);
    }

    #[test]
    fn a_rename_files_its_old_paths_removal_under_a_new_sequence_number() {
        let (_dir, mut m, rules, root) = manifest_of_a_vanished_tree();
        let (old, new) = (root.join("old"), root.join("new"));
        let (old_str, new_str) = (old.to_str().unwrap(), new.to_str().unwrap());
        m.apply(&[queued(old_str, Event::Created)]).unwrap();
        m.apply(&[finished(old_str, Event::Created, Some(meta(1)))])
            .unwrap();
        // A client has read everything up to here, `old` included.
        let read_up_to = m.seq();
        m.apply(&[Update::Queued {
            path: new.clone(),
            event: Event::Renamed,
            old_path: Some(old.clone()),
            seq: None,
        }])
        .unwrap();
        let since = |m: &Manifest| -> Vec<(u64, PathBuf, Event)> {
            m.changes_since(read_up_to, 100)
                .unwrap()
                .into_iter()
                .map(|c| (c.seq, c.path, c.event))
                .collect()
        };
        let told = [
            (read_up_to + 1, old.clone(), Event::Removed),
            (read_up_to + 2, new.clone(), Event::Renamed),
        ];
        assert_eq!(since(&m), told);
        // Told, not yet processed: until the rename's job has run, the old path's removal is
        // still owed (only that job makes its tombstone).
        let owed = |m: &Manifest| {
            m.reconcile(&rules, &root, |p| p == old)
                .unwrap()
                .into_iter()
                .map(|r| r.event)
                .collect::<Vec<_>>()
        };
        assert_eq!(owed(&m), [Event::Removed]);
        assert_eq!(m.records().unwrap()[&old].processed, Some(meta(1)));
        // The rename's job tells its consumer; its outcome keeps both sequence numbers.
        m.apply(&[
            Update::Finished {
                path: new.clone(),
                event: Event::Renamed,
                ok: true,
                processed: Some(meta(1)),
                old_path: Some(old.clone()),
                seq: None,
            },
            finished(old_str, Event::Removed, None),
        ])
        .unwrap();
        assert_eq!(since(&m), told);
        assert_eq!(owed(&m), []);
        assert_eq!(
            m.records().unwrap()[Path::new(new_str)].event,
            Event::Renamed
        );
    }

    /// Everything a reader can see of the store: the sequence number, the records, the pending
    /// jobs and the since-index.
    #[derive(Debug, PartialEq)]
    struct Contents {
        seq: u64,
        records: Vec<(PathBuf, Record)>,
        pending: Vec<(PathBuf, Event, Option<PathBuf>)>,
        changes: Vec<ChangeEntry>,
    }

    fn contents(m: &Manifest) -> Contents {
        let mut records: Vec<_> = m.records().unwrap().into_iter().collect();
        records.sort_by(|a, b| a.0.cmp(&b.0));
        let mut pending = m.pending().unwrap();
        pending.sort_by(|a, b| a.0.cmp(&b.0));
        Contents {
            seq: m.seq(),
            records,
            pending,
            changes: m.changes_since(0, usize::MAX).unwrap(),
        }
    }

    /// `apply` folds each path's updates of a group into one read and one write per table: the
    /// store must end up exactly as if every update had been applied on its own, whatever the
    /// mix of paths, queueings and outcomes (including outcomes of jobs queued in an earlier
    /// group, or never queued).
    #[test]
    fn a_group_of_updates_leaves_the_store_as_applying_them_one_by_one_does() {
        // Hundreds of commits, each synced: in memory where there is such a file system.
        let dir = tempfile::tempdir_in("/dev/shm")
            .or_else(|_| tempfile::tempdir())
            .unwrap();
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move |n: u64| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) % n
        };
        let events = [
            Event::Created,
            Event::Modified,
            Event::Removed,
            Event::Renamed,
        ];
        for case in 0..8 {
            let (mut grouped, _) =
                Manifest::open(&dir.path().join(format!("g{case}.redb"))).unwrap();
            let (mut single, _) =
                Manifest::open(&dir.path().join(format!("s{case}.redb"))).unwrap();
            for _group in 0..6 {
                let updates: Vec<Update> = (0..next(30))
                    .map(|_| {
                        let path = PathBuf::from(format!("/r/{}", next(5)));
                        let event = events[next(4) as usize];
                        // Old paths among the paths too: a rename's removal of its old path
                        // folds into that path's other updates of the group.
                        let old_path = (event == Event::Renamed)
                            .then(|| PathBuf::from(format!("/r/{}", next(7))));
                        if next(2) == 0 {
                            Update::Queued {
                                path,
                                event,
                                old_path,
                                seq: None,
                            }
                        } else {
                            Update::Finished {
                                path,
                                event,
                                ok: next(4) != 0,
                                processed: (next(3) != 0).then(|| meta(next(100))),
                                old_path,
                                seq: None,
                            }
                        }
                    })
                    .collect();
                grouped.apply(&updates).unwrap();
                for update in &updates {
                    single.apply(std::slice::from_ref(update)).unwrap();
                }
                assert_eq!(
                    contents(&grouped),
                    contents(&single),
                    "case {case}: after {updates:?}"
                );
            }
        }
    }
}

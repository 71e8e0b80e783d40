//! The manifest writer thread (`ward-manifest`): the grouped, retried commits of the updates the
//! tracker pushes, and the handle that owns the thread. Not what an update means (the tracker's),
//! nor how a group is applied to the store (the manifest's `apply`).
//!
//! The server's loop only adds updates to a list, and the writer commits what gathered once the
//! oldest has waited `FLUSH_EVERY`. A commit waits for the disk (`fdatasync`), and on a slow disk
//! that is long; the loop never waits for it, except where it must read what it wrote: a
//! comparison with the manifest, a since-query and the end of the server (`Tracker::flush`).

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};

use crate::Error;
use crate::feed::Feed;
use crate::intents::Intents;
use crate::manifest::{Manifest, Update};

/// Writes wait at most this long to be grouped into one commit.
pub(crate) const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// How long they wait while a subscription is open: its lines come one commit after their
/// changes (`cargo xtask bench --only subscribe` measures it), and a commit still groups what
/// arrives meanwhile.
const FLUSH_SUBSCRIBED: Duration = Duration::from_millis(2);
/// Retry delay while the store cannot be written (a full disk).
const RETRY_EVERY: Duration = Duration::from_secs(2);
/// How often `flush`, waiting for the writer, checks that the writer thread still runs.
const WRITER_CHECK: Duration = Duration::from_secs(1);
/// Above this many unflushed updates, they are compacted to the last ones per path.
const COMPACT_ABOVE: usize = 100_000;

/// What the handle and its thread share: the updates not yet committed.
#[derive(Debug)]
struct Writes {
    state: Mutex<Unflushed>,
    /// The writer waits here for updates or a `flush`, and `flush` for the writer's answer.
    changed: Condvar,
}

#[derive(Debug)]
struct Unflushed {
    updates: Vec<Update>,
    /// When the writer commits `updates`: `FLUSH_EVERY` after the oldest, or a retry's time.
    due: Option<Instant>,
    /// When the manifest's oldest pending entry held back is due to be written (its
    /// `deferred_due`), so that it is written even if no update comes.
    deferred_due: Option<Instant>,
    /// How many updates the writer is committing now.
    writing: usize,
    /// `FLUSH_EVERY`; shorter or longer in tests.
    flush_every: Duration,
    /// Compact the unflushed updates when they pass this many: `COMPACT_ABOVE`, or twice what the
    /// last compaction left, so that compacting stays amortized O(1) per update even when more
    /// distinct paths wait than `COMPACT_ABOVE` (a first start on a large tree).
    compact_at: usize,
    /// The least `compact_at` can be (`COMPACT_ABOVE`; smaller in tests).
    compact_floor: usize,
    /// Compactions so far (tests check they stay few).
    compactions: u64,
    /// `flush` calls so far, and the last of them the writer has answered: an answer follows an
    /// attempt to commit everything added before the call.
    asked: u64,
    answered: u64,
    /// The last write error while writes fail, for `ward status`.
    failing: Option<String>,
    /// Paths known and the sequence number after the last commit, for `ward status`, which so
    /// need not wait for a commit in progress.
    committed: (u64, u64),
    /// The handle is dropped: one last attempt, then the writer ends.
    quit: bool,
}

/// The handle of the manifest writer thread (`ward-manifest`), which commits what the tracker
/// pushes. Dropping it ends the thread after one last attempt to commit what waits, and joins it.
#[derive(Debug)]
pub(super) struct Writer {
    writes: Arc<Writes>,
    /// Whether a subscription waits for the commits.
    feed: Feed,
    /// `None` only while `drop` joins it.
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    /// Starts the thread that commits into `manifest`, sealing `intents` before it takes each
    /// batch; `committed` is what `stats` says until the first commit.
    pub(super) fn start(
        manifest: Arc<Mutex<Manifest>>,
        intents: Arc<Intents>,
        committed: (u64, u64),
        feed: Feed,
    ) -> Result<Writer, Error> {
        intents.committed(committed.1);
        let writes = Arc::new(Writes {
            state: Mutex::new(Unflushed {
                updates: Vec::new(),
                due: None,
                deferred_due: None,
                writing: 0,
                flush_every: FLUSH_EVERY,
                compact_at: COMPACT_ABOVE,
                compact_floor: COMPACT_ABOVE,
                compactions: 0,
                asked: 0,
                answered: 0,
                failing: None,
                committed,
                quit: false,
            }),
            changed: Condvar::new(),
        });
        let thread = {
            let writes = Arc::clone(&writes);
            std::thread::Builder::new()
                .name("ward-manifest".into())
                .spawn({
                    let feed = feed.clone();
                    move || writer_main(&writes, &manifest, &intents, &feed)
                })
                .map_err(|e| Error::io("starting the manifest writer thread", e))?
        };
        Ok(Writer {
            writes,
            feed,
            thread: Some(thread),
        })
    }

    /// Adds `update` to what the next commit writes.
    pub(super) fn push(&self, update: Update) {
        let mut state = self.writes.state.lock();
        state.updates.push(update);
        if state.due.is_none() {
            let wait = if self.feed.watched() {
                state.flush_every.min(FLUSH_SUBSCRIBED)
            } else {
                state.flush_every
            };
            state.due = Some(Instant::now() + wait);
            self.writes.changed.notify_all();
        }
        if state.updates.len() > state.compact_at {
            compact(&mut state.updates);
            state.compactions += 1;
            state.compact_at = state.compact_floor.max(2 * state.updates.len());
        }
        // Far behind a commit that takes long (a slow disk): wait for it to end, so that what
        // waits stays within `COMPACT_ABOVE` updates plus the commit's own.
        while state.writing > 0 && state.updates.len() > state.compact_floor {
            self.writes.changed.wait(&mut state);
        }
    }

    /// Returns once the thread has tried to commit every update pushed so far.
    pub(super) fn flush(&self) {
        let mut state = self.writes.state.lock();
        if state.updates.is_empty() && state.writing == 0 {
            return; // Everything added so far is committed.
        }
        state.asked += 1;
        let ticket = state.asked;
        self.writes.changed.notify_all();
        while state.answered < ticket {
            self.writes.changed.wait_for(&mut state, WRITER_CHECK);
            if self.thread.as_ref().is_none_or(JoinHandle::is_finished) {
                log::error!(
                    "the manifest writer thread has ended: {} update(s) are not recorded",
                    state.updates.len() + state.writing
                );
                return;
            }
        }
    }

    /// Paths known and the sequence number as of the last commit.
    pub(super) fn stats(&self) -> (u64, u64) {
        self.writes.state.lock().committed
    }

    /// Updates waiting to be written, and the error that keeps them waiting, if any.
    pub(super) fn backlog(&self) -> (usize, Option<String>) {
        let state = self.writes.state.lock();
        (state.updates.len() + state.writing, state.failing.clone())
    }
}

/// The writer thread ends after one last attempt to commit what waits.
impl Drop for Writer {
    fn drop(&mut self) {
        self.writes.state.lock().quit = true;
        self.writes.changed.notify_all();
        if let Some(writer) = self.thread.take()
            && writer.join().is_err()
        {
            log::error!("the manifest writer thread panicked");
        }
    }
}

/// The writer thread: commits the updates once the oldest is due, or at once when `flush` asks,
/// and answers `flush` after each attempt. A failed commit keeps its updates, ahead of the newer
/// ones, for a retry after `RETRY_EVERY`.
fn writer_main(writes: &Writes, manifest: &Mutex<Manifest>, intents: &Intents, feed: &Feed) {
    let mut state = writes.state.lock();
    loop {
        let asked = state.asked;
        let now = Instant::now();
        let deferred_due = state.deferred_due.is_some_and(|at| now >= at);
        let due = state.quit
            || asked > state.answered
            || deferred_due
            || state.due.is_some_and(|at| now >= at);
        if !due {
            match state.due.into_iter().chain(state.deferred_due).min() {
                Some(at) => {
                    writes.changed.wait_until(&mut state, at);
                }
                None => writes.changed.wait(&mut state),
            }
            continue;
        }
        // The last attempt also writes the pending entries held back.
        if !state.updates.is_empty() || deferred_due || (state.quit && state.deferred_due.is_some())
        {
            write(&mut state, manifest, intents, feed);
        }
        state.answered = asked;
        writes.changed.notify_all();
        if state.quit {
            if !state.updates.is_empty() {
                log::error!(
                    "{} update(s) could not be recorded in the manifest before the server ended; the next start's comparison redoes their jobs",
                    state.updates.len()
                );
            }
            return;
        }
    }
}

/// One attempt to commit what waits in `state`, whose lock is released meanwhile.
fn write(
    state: &mut MutexGuard<'_, Unflushed>,
    manifest: &Mutex<Manifest>,
    intents: &Intents,
    feed: &Feed,
) {
    // Sealed first: every path in the sealed files was queued before the batch is taken.
    let sealed = intents.seal();
    let batch = std::mem::take(&mut state.updates);
    let quit = state.quit;
    state.writing = batch.len();
    state.due = None;
    let result = MutexGuard::unlocked(state, || {
        // redb panics on some kinds of damage: that is a failed write, not a lost writer.
        catch_unwind(AssertUnwindSafe(|| {
            let mut manifest = manifest.lock();
            if quit {
                manifest.apply_last(&batch)?;
            } else {
                manifest.apply(&batch)?;
            }
            let deferred_due = manifest.deferred_due();
            // Committed: a count that cannot be read must not make it look failed.
            let paths = manifest
                .paths()
                .inspect_err(|e| {
                    log::warn!("cannot count the manifest's paths after a commit; `ward status` shows the last count: {e}");
                })
                .ok();
            Ok((paths, manifest.seq(), deferred_due))
        }))
        .unwrap_or_else(|_| {
            Err(Error::StoreUnusable(
                "the store panicked while writing (damaged?)".into(),
            ))
        })
    });
    state.writing = 0;
    match result {
        Ok((paths, seq, deferred_due)) => {
            state.deferred_due = deferred_due;
            intents.delete_through(sealed);
            intents.committed(seq);
            state.committed = (paths.unwrap_or(state.committed.0), seq);
            feed.committed(seq);
            // What waits now came after the batch: compaction starts over with it.
            state.compact_at = state.compact_floor.max(2 * state.updates.len());
            if state.failing.take().is_some() {
                log::info!(
                    "manifest writable again: {} update(s) recorded",
                    batch.len()
                );
            }
        }
        Err(e) => {
            crate::metrics::METRICS.manifest_write_failed();
            if state.failing.is_none() {
                log::error!(
                    "cannot record {} update(s) in the manifest, keeping them and retrying every {RETRY_EVERY:?}: {e}",
                    batch.len()
                );
            }
            state.failing = Some(e.to_string());
            let newer = std::mem::replace(&mut state.updates, batch);
            state.updates.extend(newer);
            state.due = Some(Instant::now() + RETRY_EVERY);
            // Held-back entries wait for the retry too, not a write attempt per turn of the loop.
            state.deferred_due = state.deferred_due.map(|_| Instant::now() + RETRY_EVERY);
            let reopened = MutexGuard::unlocked(state, || manifest.lock().reopen());
            if let Err(e) = reopened {
                log::debug!("reopening the manifest after a failed write: {e}");
            }
        }
    }
}

/// Keeps, per path, its last `Queued` and last `Finished` update in their order: what the
/// manifest would hold after applying them all, with a sequence number per kept change.
fn compact(updates: &mut Vec<Update>) {
    let mut last: HashMap<(PathBuf, bool), usize> = HashMap::new();
    for (i, update) in updates.iter().enumerate() {
        last.insert(
            (
                update.path().to_path_buf(),
                matches!(update, Update::Queued { .. }),
            ),
            i,
        );
    }
    let mut keep: Vec<usize> = last.into_values().collect();
    keep.sort_unstable();
    let mut kept = Vec::with_capacity(keep.len());
    for i in keep {
        kept.push(updates[i].clone());
    }
    *updates = kept;
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::jobs::Event;
    use crate::state::{StateDir, names};
    use crate::tracker::tests::wait_for;

    /// A writer of a fresh manifest in `dir`, and that manifest: a test that locks it makes a
    /// commit wait as long as it wants.
    fn writer_of(dir: &tempfile::TempDir) -> (Writer, Arc<Mutex<Manifest>>, Arc<Intents>) {
        let state = StateDir::open(&dir.path().join("state")).unwrap();
        let (manifest, _) = Manifest::open(&state.join(names::MANIFEST)).unwrap();
        let (intents, _) = Intents::open(&state).unwrap();
        let (manifest, intents) = (Arc::new(Mutex::new(manifest)), Arc::new(intents));
        let feed = Feed::new(Arc::clone(&manifest), 0);
        let writer =
            Writer::start(Arc::clone(&manifest), Arc::clone(&intents), (0, 0), feed).unwrap();
        (writer, manifest, intents)
    }

    /// The queueing of a creation's job for `path`.
    fn queued(path: &Path) -> Update {
        Update::Queued {
            path: path.to_path_buf(),
            event: Event::Created,
            old_path: None,
            seq: None,
        }
    }

    /// The successful outcome of [`queued`]'s job.
    fn finished(path: &Path) -> Update {
        Update::Finished {
            path: path.to_path_buf(),
            event: Event::Created,
            ok: true,
            processed: None,
            old_path: None,
            seq: None,
        }
    }

    /// Compacts past `updates` waiting, and commits only when asked (`flush`, or a `due` set
    /// by the test).
    fn compact_above(writer: &Writer, updates: usize) {
        let mut state = writer.writes.state.lock();
        state.compact_floor = updates;
        state.compact_at = updates;
        state.flush_every = Duration::from_secs(3600);
    }

    #[test]
    fn many_distinct_waiting_paths_are_compacted_a_logarithmic_number_of_times() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let (writer, _manifest, _) = writer_of(&dir);
        // Nothing is written until `flush` below.
        compact_above(&writer, 1_000);
        // Ten times more distinct paths than the threshold, none flushed (a first start on a
        // large tree): compacting after every push past the threshold would be quadratic.
        let paths = 10_000;
        for i in 0..paths {
            writer.push(queued(&root.join(format!("f{i}"))));
        }
        let compactions = writer.writes.state.lock().compactions;
        assert!(
            compactions <= 5,
            "{compactions} compactions for {paths} paths"
        );
        assert_eq!(
            writer.backlog().0,
            paths,
            "compaction dropped updates of distinct paths"
        );
        writer.flush();
        assert_eq!(writer.backlog().0, 0);
        assert_eq!(writer.stats().0, paths as u64);
    }

    #[test]
    fn a_held_back_pending_entry_is_written_once_due_and_by_the_last_commit_without_updates() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, manifest, _) = writer_of(&dir);
        writer.push(queued(&dir.path().join("a")));
        writer.flush();
        assert!(manifest.lock().deferred_due().is_some(), "held back");
        // No update comes to carry it: the writer wakes for it.
        wait_for("the held-back entry to be written", || {
            manifest.lock().deferred_due().is_none()
        });
        writer.push(queued(&dir.path().join("b")));
        writer.flush();
        assert!(manifest.lock().deferred_due().is_some(), "held back");
        drop(writer);
        assert_eq!(manifest.lock().deferred_due(), None, "left held back");
        assert_eq!(manifest.lock().pending().unwrap().len(), 2);
    }

    #[test]
    fn a_change_is_held_for_the_intent_journal_once_its_commit_ends_not_before() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, manifest, intents) = writer_of(&dir);
        writer.writes.state.lock().flush_every = Duration::from_secs(3600);
        writer.push(Update::Queued {
            path: dir.path().join("a"),
            event: Event::Created,
            old_path: None,
            seq: Some(1),
        });
        // A commit that takes as long as the test wants: the store is busy until `busy` goes.
        let busy = manifest.lock();
        writer.writes.state.lock().due = Some(Instant::now());
        writer.writes.changed.notify_all();
        wait_for("the writer to take the update", || {
            writer.writes.state.lock().writing == 1
        });
        assert!(!intents.held(Some(1)), "held while its commit waits");
        drop(busy);
        wait_for("the commit to be noted", || intents.held(Some(1)));
        assert!(!intents.held(Some(2)), "a later change is not held");
        assert!(!intents.held(None), "a change not numbered is not held");
    }

    #[test]
    fn the_writer_thread_commits_while_the_loop_goes_on_adding() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let (writer, manifest, _) = writer_of(&dir);
        // Nothing is due until the test says so.
        writer.writes.state.lock().flush_every = Duration::from_secs(3600);
        let queue_and_finish = |writer: &Writer, name: &str| {
            let path = root.join(name);
            writer.push(queued(&path));
            writer.push(finished(&path));
        };
        // A commit that takes as long as the test wants: the store is busy until `busy` goes.
        let busy = manifest.lock();
        for i in 0..10 {
            queue_and_finish(&writer, &format!("a{i}"));
        }
        {
            let mut state = writer.writes.state.lock();
            state.flush_every = Duration::from_millis(1);
            state.due = Some(Instant::now());
        }
        writer.writes.changed.notify_all();
        wait_for("the writer to take the first updates", || {
            writer.writes.state.lock().writing == 20
        });
        // The loop adds more and reads its backlog and stats while the commit waits for the store.
        for i in 0..5 {
            queue_and_finish(&writer, &format!("b{i}"));
        }
        assert_eq!(writer.backlog(), (30, None));
        assert_eq!(writer.stats(), (0, 0), "`ward status` waits for no commit");
        drop(busy);
        // Nobody calls `flush`: the writer commits both groups on its own.
        wait_for("every update to be committed", || writer.backlog().0 == 0);
        assert_eq!(writer.stats().0, 15);
    }

    #[test]
    fn far_behind_a_slow_commit_the_loop_waits_for_it_instead_of_piling_up_updates() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let (writer, manifest, _) = writer_of(&dir);
        compact_above(&writer, 10);
        let writes = Arc::clone(&writer.writes);
        let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        // Declared before `busy`, so that a failing test lets the store go before it drops the
        // writer (which waits for the store).
        let pushing;
        // A commit that takes as long as the test wants, holding one update.
        let busy = manifest.lock();
        writer.push(queued(&root.join("first")));
        writes.state.lock().due = Some(Instant::now());
        writes.changed.notify_all();
        wait_for("the writer to take the first update", || {
            writes.state.lock().writing == 1
        });
        pushing = {
            let done = Arc::clone(&done);
            std::thread::spawn(move || {
                // Distinct paths: compaction cannot shrink them.
                for i in 0..100 {
                    writer.push(queued(&root.join(format!("f{i}"))));
                    done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                writer
            })
        };
        wait_for("the updates to reach the bound", || {
            writes.state.lock().updates.len() >= 11
        });
        let waiting = writes.state.lock().updates.len();
        let pushed = done.load(std::sync::atomic::Ordering::SeqCst);
        assert!(
            waiting == 11 && pushed <= 11,
            "{waiting} updates piled up behind the commit ({pushed} pushes returned)"
        );
        drop(busy);
        let writer = pushing.join().unwrap();
        writer.flush();
        assert_eq!(writer.stats().0, 101);
        assert_eq!(writer.backlog(), (0, None));
    }

    #[test]
    fn flush_returns_after_the_commit_of_everything_added_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let (writer, _manifest, _) = writer_of(&dir);
        // Only `flush` can make the writer commit.
        writer.writes.state.lock().flush_every = Duration::from_secs(3600);
        let a = root.join("a");
        writer.push(queued(&a));
        writer.push(finished(&a));
        assert_eq!(writer.backlog().0, 2);
        writer.flush();
        assert_eq!(writer.backlog(), (0, None));
        assert_eq!(writer.stats().0, 1);
    }
}

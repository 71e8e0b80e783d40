//! Unit tests of the watcher's thread state for branches real files cannot force on demand (a
//! kernel queue overflow), and for its use of time, with the times passed in.

use std::path::Path;

use notify::EventKind;
use notify::event::{Flag, ModifyKind};

use super::worker::Worker;
use super::*;
use crate::RescanReason;
use crate::pending::Op;

#[test]
fn a_kernel_overflow_rescans_every_root_and_watches_what_the_lost_events_created() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    std::fs::create_dir(root.join("known")).unwrap();
    let builder = WatcherBuilder::new().root(&root);
    let rules = Arc::new(IgnoreRules::new(vec![root.clone()], &[], None).unwrap());
    let (raw_tx, _raw_rx) = raw::channel(16);
    let mut worker = builder.worker(std::slice::from_ref(&root), rules, raw_tx, Arc::default());
    worker.start(Backend::Recommended);
    assert_eq!(worker.watches.watched.len(), 2);
    worker
        .pending
        .record(&root.join("known/f"), Op::Create, false, Instant::now());

    // A directory whose creation event is among those the kernel dropped.
    std::fs::create_dir_all(root.join("lost/deeper")).unwrap();
    worker.handle(
        Ok(Event::new(EventKind::Other).set_flag(Flag::Rescan)),
        Instant::now(),
    );
    let batch = worker.take_batch(Instant::now() + Duration::from_secs(5));

    let rescans: Vec<_> = batch.rescans().cloned().collect();
    assert_eq!(
        rescans,
        vec![crate::Rescan {
            path: root.clone(),
            reason: RescanReason::KernelOverflow
        }]
    );
    assert_eq!(
        batch.changes().count(),
        0,
        "the rescan covers the pending change"
    );
    assert!(
        worker
            .watches
            .watched
            .contains_key(root.join("lost/deeper").as_path()),
        "watched before the rescan went out"
    );
}

/// A worker on a fresh root with a 50 ms quiet window, and a file path under it.
fn quiet_worker() -> (tempfile::TempDir, Worker, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let builder = WatcherBuilder::new()
        .root(&root)
        .quiet(Duration::from_millis(50));
    let rules = Arc::new(IgnoreRules::new(vec![root.clone()], &[], None).unwrap());
    let (raw_tx, _raw_rx) = raw::channel(16);
    let worker = builder.worker(std::slice::from_ref(&root), rules, raw_tx, Arc::default());
    (dir, worker, root.join("f"))
}

fn modified(path: &Path) -> notify::Result<Event> {
    Ok(Event::new(EventKind::Modify(ModifyKind::Data(
        notify::event::DataChange::Any,
    )))
    .add_path(path.to_path_buf()))
}

#[test]
fn the_quiet_window_starts_when_notify_received_the_event_not_when_it_was_handled() {
    let (_dir, mut worker, file) = quiet_worker();
    // However late after its receipt the watcher's thread handles it, the window counts from
    // `received` (a window counted from its handling would end after `received` + 50 ms).
    let received = Instant::now();
    worker.handle(modified(&file), received);
    let ms = Duration::from_millis;
    assert!(
        worker.take_batch(received + ms(49)).items.is_empty(),
        "not before the window has passed"
    );
    let batch = worker.take_batch(received + ms(50));
    assert_eq!(batch.changes().count(), 1, "due 50 ms after its receipt");
}

#[test]
fn an_event_older_than_the_clock_restarts_the_window_from_the_clock() {
    let (_dir, mut worker, file) = quiet_worker();
    let t0 = Instant::now();
    let ms = Duration::from_millis;
    // The loop looked at the clock at t0 + 20 ms, then handled an event received at t0 + 10 ms:
    // the window may not end before t0 + 70 ms, or a path would be delivered early.
    assert_eq!(worker.now(t0 + ms(20)), t0 + ms(20));
    worker.handle(modified(&file), t0 + ms(10));
    assert!(worker.take_batch(t0 + ms(69)).items.is_empty());
    assert_eq!(worker.take_batch(t0 + ms(70)).changes().count(), 1);
}

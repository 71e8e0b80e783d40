//! Unit tests of the watcher's thread state for branches real files cannot force on demand:
//! a kernel queue overflow.

use super::*;
use notify::event::Flag;

#[test]
fn a_kernel_overflow_rescans_every_root_and_watches_what_the_lost_events_created() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    std::fs::create_dir(root.join("known")).unwrap();
    let builder = WatcherBuilder::new().root(&root);
    let rules = Arc::new(IgnoreRules::new(vec![root.clone()], &[], None).unwrap());
    let (raw_tx, _raw_rx) = crossbeam_channel::bounded(16);
    let mut worker = builder.worker(std::slice::from_ref(&root), rules, raw_tx, Arc::default());
    worker.start(Backend::Recommended);
    assert_eq!(worker.watches.watched.len(), 2);
    worker
        .pending
        .record(&root.join("known/f"), Op::Create, false, Instant::now());

    // A directory whose creation event is among those the kernel dropped.
    std::fs::create_dir_all(root.join("lost/deeper")).unwrap();
    worker.handle(Ok(Event::new(EventKind::Other).set_flag(Flag::Rescan)));
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
            .contains_key(&root.join("lost/deeper")),
        "watched before the rescan went out"
    );
}

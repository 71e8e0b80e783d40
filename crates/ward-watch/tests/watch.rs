//! Integration tests of the watcher on real files and inotify, in temporary directories.

#[path = "watch/support.rs"]
mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use support::{Consumer, builder, disk_paths, each_backend, ms, plain, watches, write};
use ward_watch::{Backend, ChangeKind, Rescan, RescanReason, Snapshot};

fn setup() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    fs::create_dir(&root).unwrap();
    (dir, root)
}

#[test]
fn create_then_modify_is_created() {
    each_backend(|| {
        let (_t, root) = setup();
        let mut c = Consumer::new(builder(&root).build().unwrap());
        let f = root.join("f");
        write(&f, "one");
        fs::write(&f, "two").unwrap();
        c.sentinel(&root);
        assert_eq!(c.kinds(&f), vec![ChangeKind::Created]);
    });
}

#[test]
fn create_then_remove_is_nothing() {
    each_backend(|| {
        let (_t, root) = setup();
        let mut c = Consumer::new(builder(&root).build().unwrap());
        let f = root.join("f");
        write(&f, "one");
        fs::remove_file(&f).unwrap();
        c.sentinel(&root);
        assert_eq!(c.mentions(&f), vec![]);
    });
}

#[test]
fn modify_then_remove_is_removed() {
    each_backend(|| {
        let (_t, root) = setup();
        let f = root.join("f");
        write(&f, "old");
        let mut c = Consumer::new(builder(&root).build().unwrap());
        fs::write(&f, "new").unwrap();
        fs::remove_file(&f).unwrap();
        c.sentinel(&root);
        assert_eq!(c.kinds(&f), vec![ChangeKind::Removed]);
    });
}

#[test]
fn rename_chain_collapses_into_one_rename() {
    each_backend(|| {
        let (_t, root) = setup();
        let (a, b, z) = (root.join("a"), root.join("b"), root.join("z"));
        write(&a, "a");
        let mut c = Consumer::new(builder(&root).build().unwrap());
        fs::rename(&a, &b).unwrap();
        fs::rename(&b, &z).unwrap();
        c.sentinel(&root);
        assert_eq!(
            c.mentions(&a),
            vec![ward_watch::Change::new(
                &z,
                ChangeKind::Renamed { from: a.clone() },
                false
            )]
        );
        assert_eq!(c.mentions(&b), vec![]);
        assert!(c.converged());
    });
}

#[test]
fn removing_a_directory_cancels_its_childrens_changes() {
    each_backend(|| {
        let (_t, root) = setup();
        let d = root.join("d");
        write(d.join("x"), "x");
        let mut c = Consumer::new(builder(&root).build().unwrap());
        fs::write(d.join("x"), "changed").unwrap();
        write(d.join("y"), "new");
        write(d.join("sub/z"), "new");
        fs::remove_dir_all(&d).unwrap();
        c.sentinel(&root);
        let under_d: Vec<_> = c
            .changes
            .iter()
            .filter(|ch| ch.path.starts_with(&d))
            .cloned()
            .collect();
        assert_eq!(
            under_d,
            vec![ward_watch::Change::new(&d, ChangeKind::Removed, true)]
        );
        assert!(c.converged());
    });
}

#[test]
fn an_atomic_save_is_a_modification_of_the_target() {
    each_backend(|| {
        let (_t, root) = setup();
        let target = root.join("notes.txt");
        write(&target, "v1");
        let mut c = Consumer::new(builder(&root).build().unwrap());
        let tmp = root.join(".notes.txt.tmp123");
        write(&tmp, "v2");
        fs::rename(&tmp, &target).unwrap();
        c.sentinel(&root);
        assert_eq!(c.kinds(&target), vec![ChangeKind::Modified]);
        assert_eq!(c.mentions(&tmp), vec![]);
        assert!(c.converged());
    });
}

#[test]
fn an_atomic_save_through_an_ignored_temporary_file_is_a_modification() {
    each_backend(|| {
        let (_t, root) = setup();
        write(root.join(".wardignore"), "*.tmp\n");
        let target = root.join("notes.txt");
        write(&target, "v1");
        let mut c = Consumer::new(builder(&root).build().unwrap());
        let tmp = root.join("notes.txt.tmp");
        write(&tmp, "v2");
        fs::rename(&tmp, &target).unwrap();
        c.sentinel(&root);
        assert_eq!(c.kinds(&target), vec![ChangeKind::Modified]);
        assert_eq!(c.mentions(&tmp), vec![]);
    });
}

#[test]
fn a_file_written_continuously_is_still_emitted_within_the_maximum_wait() {
    each_backend(|| {
        let (_t, root) = setup();
        let w = plain()
            .root(&root)
            .quiet(ms(200))
            .max_wait(ms(600))
            .build()
            .unwrap();
        let mut c = Consumer::new(w);
        let f = root.join("log");
        write(&f, "");
        // Never quiet for 200 ms: written every 20 ms until the watcher reports it.
        let deadline = std::time::Instant::now() + support::DEADLINE;
        let mut n = 0;
        while c.kinds(&f).is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "never reported while being written"
            );
            n += 1;
            fs::write(&f, format!("{n}")).unwrap();
            c.pump(ms(20));
        }
    });
}

#[test]
fn nested_directories_created_quickly_are_all_seen() {
    each_backend(|| {
        let (_t, root) = setup();
        let mut c = Consumer::new(plain().root(&root).build().unwrap());
        let mut expected = vec![];
        for i in 0..30 {
            let deep = root.join(format!("r{i}/a/b/c"));
            fs::create_dir_all(&deep).unwrap();
            for j in 0..5 {
                let f = deep.join(format!("f{j}"));
                write(&f, "x");
                expected.push(f);
            }
        }
        c.until("every file in the new directories", |c| {
            expected.iter().all(|f| c.snapshot.contains(f))
        });
        for f in &expected {
            let seen = c.changes.iter().any(|ch| &ch.path == f)
                || c.resolved.iter().any(|ch| &ch.path == f);
            assert!(seen, "{} never reported", f.display());
        }
    });
}

#[test]
fn ignored_directories_get_no_watch_and_report_nothing() {
    each_backend(|| {
        let (_t, root) = setup();
        write(root.join(".wardignore"), "build/\n*.tmp\n");
        write(root.join("build/out/deep/x"), "x");
        write(root.join("node_modules/pkg/y"), "y");
        write(root.join("src/lib.rs"), "z");
        let w = builder(&root).ignore_glob("node_modules").build().unwrap();
        // root and src: nothing under build/ or node_modules/.
        assert_eq!(w.stats().watches, watches(2));
        let mut c = Consumer::new(w);
        write(root.join("build/out/deep/new"), "x");
        write(root.join("node_modules/pkg/new"), "x");
        write(root.join("src/scratch.tmp"), "x");
        fs::create_dir(root.join("build/fresh")).unwrap();
        write(root.join("src/main.rs"), "x");
        c.sentinel(&root);
        let paths: Vec<_> = c.changes.iter().map(|ch| ch.path.clone()).collect();
        assert!(paths.contains(&root.join("src/main.rs")));
        for p in &paths {
            assert!(
                !p.starts_with(root.join("build")) && !p.starts_with(root.join("node_modules")),
                "{}",
                p.display()
            );
            assert!(p.extension().is_none_or(|e| e != "tmp"), "{}", p.display());
        }
        assert_eq!(c.watcher.stats().watches, watches(2));
        assert!(!c.snapshot.contains(&root.join("build")));
    });
}

#[test]
fn new_directories_made_while_the_consumer_is_away_are_watched() {
    each_backend(|| {
        let (_t, root) = setup();
        let mut c = Consumer::new(plain().root(&root).quiet(ms(20)).build().unwrap());
        fs::create_dir_all(root.join("a/b")).unwrap();
        c.until("a/b", |c| c.snapshot.contains(&root.join("a/b")));
        assert_eq!(c.watcher.stats().watches, watches(3));
        write(root.join("a/b/late"), "x");
        c.until("a/b/late", |c| {
            c.kinds(&root.join("a/b/late")) == vec![ChangeKind::Created]
        });
    });
}

#[test]
fn a_moved_directory_is_a_rename_and_stays_watched() {
    each_backend(|| {
        let (_t, root) = setup();
        write(root.join("d/sub/x"), "x");
        let mut c = Consumer::new(builder(&root).quiet(ms(50)).build().unwrap());
        fs::rename(root.join("d"), root.join("e")).unwrap();
        c.until("the rename", |c| {
            c.kinds(&root.join("e"))
                == vec![ChangeKind::Renamed {
                    from: root.join("d"),
                }]
        });
        write(root.join("e/sub/y"), "y");
        c.until("a file in the moved directory", |c| {
            !c.kinds(&root.join("e/sub/y")).is_empty()
        });
        assert!(c.mentions(&root.join("d/sub/y")).is_empty());
        assert!(c.converged());
    });
}

#[test]
fn a_batch_holds_at_most_batch_max_changes_and_the_rest_follow() {
    each_backend(|| {
        let (_t, root) = setup();
        let w = builder(&root).batch_max(3).build().unwrap();
        // Written before anything is taken: all twenty are due at once.
        let files: Vec<PathBuf> = (0..20).map(|i| root.join(format!("f{i}"))).collect();
        for f in &files {
            write(f, "x");
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let mut seen = Vec::new();
        while seen.len() < files.len() {
            assert!(
                std::time::Instant::now() < deadline,
                "only {seen:?} of the files came"
            );
            let Ok(batch) = w.batches().recv_timeout(ms(50)) else {
                continue;
            };
            assert!(batch.items.len() <= 3, "a batch of {}", batch.items.len());
            for item in batch.items {
                if let ward_watch::Item::Change(c) = item {
                    seen.push(c.path);
                }
            }
        }
        seen.sort();
        let mut want = files.clone();
        want.sort();
        assert_eq!(seen, want, "each file once, none lost");
    });
}

#[test]
fn a_flood_with_no_consumer_ends_in_a_rescan_and_convergence() {
    each_backend(|| {
        let (_t, root) = setup();
        let w = plain()
            .root(&root)
            .quiet(ms(10))
            .pending_cap(200)
            .channel_capacity(1)
            .event_buffer(256)
            .build()
            .unwrap();
        // Nobody consumes while 5,000 files land in 10 directories.
        let mut c = Consumer::new(w);
        for d in 0..10 {
            for i in 0..500 {
                write(root.join(format!("d{d}/f{i}")), "x");
            }
        }
        let stats = c.watcher.stats();
        assert!(stats.peak_pending <= 200, "{stats:?}");
        c.until("convergence", |c| c.converged());
        assert!(
            !c.rescans.is_empty(),
            "a flood past the cap must end in a rescan"
        );
        assert!(c.watcher.stats().peak_pending <= 200);
        assert_eq!(c.snapshot.paths().count(), disk_paths(&root).len() + 1);
    });
}

/// Regression: any event dropped for a full buffer rescanned every root, so a burst in one
/// corner of a large tree cost a comparison of the whole tree.
#[test]
fn events_dropped_for_a_full_buffer_rescan_their_directory_not_the_root() {
    each_backend(|| {
        let (_t, root) = setup();
        fs::create_dir(root.join("hot")).unwrap();
        let w = plain()
            .root(&root)
            .quiet(ms(10))
            .event_buffer(1)
            .build()
            .unwrap();
        let mut c = Consumer::new(w);
        for i in 0..2_000 {
            write(root.join(format!("hot/f{i}")), "x");
        }
        c.until("convergence after a rescan for a full buffer", |c| {
            c.converged()
                && c.rescans
                    .iter()
                    .any(|r| r.reason == RescanReason::EventBufferFull)
        });
        let full: Vec<&Rescan> = c
            .rescans
            .iter()
            .filter(|r| r.reason == RescanReason::EventBufferFull)
            .collect();
        assert!(full.iter().all(|r| r.path == root.join("hot")), "{full:?}");
        assert!(c.watcher.stats().dropped_events > 0);
    });
}

#[test]
fn a_burst_of_50k_files_with_a_slow_consumer_is_fully_accounted_for() {
    each_backend(|| {
        let (_t, root) = setup();
        const CAP: usize = 2_000;
        let w = plain()
            .root(&root)
            .pending_cap(CAP)
            .channel_capacity(2)
            .build()
            .unwrap();
        let c = Consumer::new(w);
        let written = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let expected: Vec<PathBuf> = (0..50_000)
            .map(|i| root.join(format!("d{}/f{i}", i % 50)))
            .collect();
        // The consumer is away for the first half of the burst, so the pending set must reach its
        // cap, then slow: it sleeps between batches.
        let consumer = {
            let expected = expected.clone();
            let written = written.clone();
            std::thread::spawn(move || {
                let mut c = c;
                let deadline = std::time::Instant::now() + support::DEADLINE;
                while written.load(std::sync::atomic::Ordering::Acquire) < 25_000 {
                    assert!(std::time::Instant::now() < deadline, "the writer is stuck");
                    std::thread::sleep(ms(5));
                }
                c.until("every file of the burst", |c| {
                    std::thread::sleep(ms(5));
                    written.load(std::sync::atomic::Ordering::Acquire) == expected.len()
                        && expected.iter().all(|f| c.snapshot.contains(f))
                });
                c
            })
        };
        for d in 0..50 {
            fs::create_dir(root.join(format!("d{d}"))).unwrap();
        }
        for (i, f) in expected.iter().enumerate() {
            fs::write(f, "x").unwrap();
            written.store(i + 1, std::sync::atomic::Ordering::Release);
        }
        let c = consumer.join().unwrap();
        let stats = c.watcher.stats();
        assert!(stats.peak_pending <= CAP, "{stats:?}");
        assert!(
            stats.collapses > 0,
            "the burst never reached the cap: {stats:?}"
        );
        assert!(!c.rescans.is_empty());
        let reported: std::collections::HashSet<&PathBuf> = c
            .changes
            .iter()
            .chain(&c.resolved)
            .map(|ch| &ch.path)
            .collect();
        for f in &expected {
            assert!(reported.contains(f), "{} never reported", f.display());
        }
        assert!(c.converged());
    });
}

#[test]
fn a_missing_root_is_reported_then_watched_when_it_appears() {
    each_backend(|| {
        let (t, _) = setup();
        let late = t.path().join("late");
        let mut c = Consumer::new(
            plain()
                .root(&late)
                .quiet(ms(20))
                .max_wait(ms(200))
                .build()
                .unwrap(),
        );
        c.until("the missing root error", |c| {
            c.errors.iter().any(|e| e.contains("does not exist"))
        });
        write(late.join("f"), "x");
        c.until("the root's rescan", |c| {
            c.rescans
                .iter()
                .any(|r| r.path == late && r.reason == RescanReason::RootAppeared)
        });
        assert!(c.snapshot.contains(&late.join("f")));
        write(late.join("g"), "x");
        c.until("a change in the appeared root", |c| {
            !c.kinds(&late.join("g")).is_empty()
        });
    });
}

#[test]
fn a_root_that_disappears_is_reported() {
    each_backend(|| {
        let (_t, root) = setup();
        write(root.join("f"), "x");
        let mut c = Consumer::new(plain().root(&root).quiet(ms(20)).build().unwrap());
        fs::remove_dir_all(&root).unwrap();
        c.until("the root gone error", |c| {
            c.errors.iter().any(|e| e.contains("disappeared"))
        });
        c.until("the root removed", |c| {
            c.kinds(&root).contains(&ChangeKind::Removed)
        });
    });
}

#[test]
fn running_out_of_inotify_watches_names_the_sysctl_and_falls_back_to_polling() {
    let (_t, root) = setup();
    for d in ["a", "b", "c", "d/e"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    let w = plain()
        .root(&root)
        .quiet(ms(20))
        .native_watch_limit(2)
        .poll_fallback(true, ms(50))
        .build()
        .unwrap();
    let mut c = Consumer::new(w);
    c.until("the out-of-watches error", |c| !c.errors.is_empty());
    let e = &c.errors[0];
    assert!(
        e.contains("fs.inotify.max_user_watches") && e.contains("6 directories"),
        "{e}"
    );
    write(root.join("d/e/f"), "x");
    c.until("a change seen by polling", |c| {
        c.snapshot.contains(&root.join("d/e/f"))
    });
}

#[test]
fn polling_backend_reports_changes() {
    let (_t, root) = setup();
    let mut c = Consumer::new(
        plain()
            .root(&root)
            .backend(Backend::Poll(ms(50)))
            .quiet(ms(20))
            .build()
            .unwrap(),
    );
    write(root.join("sub/f"), "x");
    c.until("the file", |c| c.snapshot.contains(&root.join("sub/f")));
    fs::remove_dir_all(root.join("sub")).unwrap();
    c.until("the removal", |c| !c.snapshot.contains(&root.join("sub")));
    assert!(c.converged());
}

#[cfg(unix)]
#[test]
fn non_utf8_names_are_carried_exactly_and_symlinks_are_not_followed() {
    each_backend(|| {
        use std::os::unix::ffi::OsStrExt;
        let (_t, root) = setup();
        fs::create_dir(root.join("d")).unwrap();
        // A loop: following it would never end.
        std::os::unix::fs::symlink(&root, root.join("d/loop")).unwrap();
        let w = plain().root(&root).quiet(ms(20)).build().unwrap();
        assert_eq!(w.stats().watches, watches(2));
        let mut c = Consumer::new(w);
        let odd = root.join(std::ffi::OsStr::from_bytes(b"caf\xe9"));
        write(&odd, "x");
        c.until("the non-UTF-8 name", |c| {
            c.kinds(&odd) == vec![ChangeKind::Created]
        });
        assert!(c.snapshot.contains(&root.join("d/loop")));
        assert!(!c.snapshot.contains(&root.join("d/loop/d")));
    });
}

#[test]
fn dropping_the_watcher_stops_its_thread_and_disconnects_the_channel() {
    each_backend(|| {
        let (_t, root) = setup();
        let w = plain().root(&root).build().unwrap();
        let rx = w.batches().clone();
        drop(w);
        assert!(matches!(
            rx.recv_timeout(Duration::from_secs(10)),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected)
        ));
    });
}

#[test]
fn a_snapshot_rescan_reports_the_differences_with_the_disk() {
    let (_t, root) = setup();
    write(root.join("keep"), "k");
    write(root.join("change"), "c");
    write(root.join("gone/x"), "x");
    let rules =
        std::sync::Arc::new(ward_watch::IgnoreRules::new(vec![root.clone()], &[], None).unwrap());
    let mut s = Snapshot::of_roots(rules);
    fs::write(root.join("change"), "changed").unwrap();
    fs::remove_dir_all(root.join("gone")).unwrap();
    write(root.join("new/y"), "y");
    let mut got: Vec<(String, PathBuf)> = s
        .rescan(&root)
        .into_iter()
        .map(|c| (c.kind.name().to_string(), c.path))
        .collect();
    got.sort();
    let p = |s: &str| root.join(s);
    assert_eq!(
        got,
        vec![
            ("created".into(), p("new")),
            ("created".into(), p("new/y")),
            ("modified".into(), p("change")),
            ("removed".into(), p("gone")),
        ]
    );
    assert!(
        s.rescan(&root).is_empty(),
        "a second rescan finds nothing new"
    );
    let _ = Path::new("");
}

#[test]
fn moves_across_the_roots_edge_are_creations_and_removals() {
    each_backend(|| {
        let (t, root) = setup();
        let outside = t.path().join("outside");
        write(&outside, "o");
        write(root.join("leaving"), "l");
        let mut c = Consumer::new(builder(&root).quiet(ms(50)).build().unwrap());
        fs::rename(&outside, root.join("arrived")).unwrap();
        fs::rename(root.join("leaving"), t.path().join("left")).unwrap();
        c.until("both moves", |c| {
            !c.kinds(&root.join("arrived")).is_empty() && !c.kinds(&root.join("leaving")).is_empty()
        });
        assert_eq!(c.kinds(&root.join("arrived")), vec![ChangeKind::Created]);
        assert_eq!(c.kinds(&root.join("leaving")), vec![ChangeKind::Removed]);
        assert!(c.converged());
    });
}

/// Writes the watcher drops (outside the roots, or in an ignored directory) are dropped by
/// fanotify's kernel side once seen; a directory moved into a root from there, or no longer
/// ignored, has its files' writes seen again.
#[test]
fn writes_in_a_directory_moved_in_or_no_longer_ignored_are_seen() {
    each_backend(|| {
        let (t, root) = setup();
        let away = t.path().join("away");
        write(away.join("f"), "1");
        write(root.join(".wardignore"), "build/\n");
        write(root.join("build/g"), "1");
        let mut c = Consumer::new(builder(&root).quiet(ms(20)).build().unwrap());
        // Writes the watcher drops: once seen, fanotify asks the kernel to drop their like.
        for round in 0..3 {
            write(away.join("f"), &format!("{round}"));
            write(root.join("build/g"), &format!("{round}"));
            c.sentinel(&root);
        }
        assert!(c.kinds(&root.join("build/g")).is_empty());
        fs::rename(&away, root.join("away")).unwrap();
        c.until("the directory moved in", |c| {
            c.snapshot.contains(&root.join("away/f"))
        });
        write(root.join("away/f"), "moved in, then written");
        c.until("a write in the directory moved in", |c| {
            c.kinds(&root.join("away/f"))
                .contains(&ChangeKind::Modified)
        });
        write(root.join(".wardignore"), "other/\n");
        c.until("build/ no longer ignored", |c| {
            c.snapshot.contains(&root.join("build/g"))
        });
        write(root.join("build/g"), "no longer ignored, then written");
        c.until("a write in the directory no longer ignored", |c| {
            c.kinds(&root.join("build/g"))
                .contains(&ChangeKind::Modified)
        });
    });
}

#[test]
fn editing_the_ignore_file_rescans_and_applies_the_new_rules() {
    each_backend(|| {
        let (_t, root) = setup();
        write(root.join("gen/old"), "x");
        let mut c = Consumer::new(builder(&root).quiet(ms(50)).build().unwrap());
        assert_eq!(c.watcher.stats().watches, watches(2));
        write(root.join(".wardignore"), "gen/\n");
        c.until("the rules' rescan", |c| {
            c.rescans
                .iter()
                .any(|r| r.reason == RescanReason::IgnoreRulesChanged)
        });
        assert_eq!(
            c.watcher.stats().watches,
            watches(1),
            "the newly ignored directory lost its watch"
        );
        assert!(
            !c.snapshot.contains(&root.join("gen")),
            "the rescan drops the newly ignored paths"
        );
        write(root.join("gen/new"), "x");
        c.sentinel(&root);
        assert!(c.mentions(&root.join("gen/new")).is_empty());
    });
}

#[cfg(unix)]
#[test]
fn walk_files_visits_the_files_walk_visits_in_the_byte_order_of_their_paths() {
    use std::os::unix::ffi::OsStrExt;
    let (_t, root) = setup();
    // Names whose byte order differs from their component order (' ' < '-' < '.' < '/' < '0'),
    // a file and a directory of the same prefix, non-UTF-8 and unicode names, a symlink to a
    // directory (a file, not followed), an ignored directory and ignored files.
    for rel in [
        "a/b",
        "a/c/d",
        "a b",
        "a-b",
        "a.b",
        "a0",
        "a-/x",
        "é/ü",
        "日本/語",
        "keep.log",
        "ig/x",
        "sub/y.tmp",
        "sub/z",
    ] {
        write(root.join(rel), "x");
    }
    write(root.join(std::ffi::OsStr::from_bytes(b"bad\xff/x")), "x");
    fs::create_dir_all(root.join("empty/deeper")).unwrap();
    std::os::unix::fs::symlink(root.join("a"), root.join("link")).unwrap();
    write(root.join(".wardignore"), "ig/\n*.tmp\n");
    let rules =
        ward_watch::IgnoreRules::new(vec![root.clone()], &[], Some(".wardignore".into())).unwrap();

    let mut walked = Vec::new();
    ward_watch::walk(
        &rules,
        &root,
        |_| true,
        |p, is_dir| {
            if !is_dir {
                walked.push(p.to_path_buf());
            }
        },
    );
    let mut visited = Vec::new();
    ward_watch::walk_files(&rules, &root, |p, stat| {
        assert_eq!(
            stat.size,
            fs::symlink_metadata(p).unwrap().len(),
            "{}",
            p.display()
        );
        visited.push(p.to_path_buf());
    });

    let bytes = |p: &PathBuf| p.as_os_str().as_bytes().to_vec();
    let mut in_byte_order = visited.clone();
    in_byte_order.sort_by_key(bytes);
    assert_eq!(visited, in_byte_order, "not in byte order");
    walked.sort_by_key(bytes);
    assert_eq!(visited, walked, "not the files walk visits");
    let rel: Vec<_> = visited
        .iter()
        .map(|p| {
            p.strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(
        rel,
        [
            ".wardignore",
            "a b",
            "a-/x",
            "a-b",
            "a.b",
            "a/b",
            "a/c/d",
            "a0",
            "bad\u{fffd}/x",
            "keep.log",
            "link",
            "sub/z",
            "é/ü",
            "日本/語",
        ]
    );

    // Resuming after any path, a file or not, gives exactly the rest of the walk; a break stops it.
    let mut afters = visited.clone();
    afters.extend(["a", "a/c", "a/bz", "a.a", "bad", "zzz", "0"].map(|r| root.join(r)));
    for after in &afters {
        let mut rest = Vec::new();
        ward_watch::walk_files_after(&rules, &root, Some(after), |p, _| {
            rest.push(p.to_path_buf());
            std::ops::ControlFlow::Continue(())
        });
        let expected: Vec<_> = visited
            .iter()
            .filter(|p| bytes(p) > bytes(after))
            .cloned()
            .collect();
        assert_eq!(rest, expected, "after {}", after.display());
    }
    let mut first_three = Vec::new();
    ward_watch::walk_files_after(&rules, &root, None, |p, _| {
        first_three.push(p.to_path_buf());
        if first_three.len() == 3 {
            std::ops::ControlFlow::Break(())
        } else {
            std::ops::ControlFlow::Continue(())
        }
    });
    assert_eq!(first_three, visited[..3]);
}

/// A file is stat-ed when the walk reaches it, not when its directory is listed: what the walk
/// says of a file is its state at the visit, and a file removed after the listing, before the
/// walk reached it, is not visited. (A resumed walk then stats only what it visits, not the
/// rest of a large directory each time.)
#[test]
fn walk_files_stats_each_file_when_it_reaches_it() {
    let (_t, root) = setup();
    for rel in ["a", "b/x", "c", "d"] {
        write(root.join(rel), "x");
    }
    let rules = ward_watch::IgnoreRules::new(vec![root.clone()], &[], None).unwrap();
    let mut visited = Vec::new();
    ward_watch::walk_files(&rules, &root, |p, stat| {
        if p == root.join("a") {
            // After `root` was listed; `c` comes after the walk went below `b`.
            write(root.join("c"), "grown");
            fs::remove_file(root.join("d")).unwrap();
        }
        let rel = p
            .strip_prefix(&root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        visited.push((rel, stat.size));
    });
    assert_eq!(
        visited,
        [("a".into(), 1), ("b/x".into(), 1), ("c".into(), 5)],
        "sizes as the walk reached each file, the removed one left out"
    );
}

/// Whether this process runs as root.
fn is_root() -> bool {
    // SAFETY: geteuid takes no arguments and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Runs the test `name` of this binary again as `nobody`, and asserts that it passes.
fn passes_as_nobody(name: &str) {
    use std::os::unix::process::CommandExt;
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture"])
        .uid(65534)
        .gid(65534)
        .env("TMPDIR", "/tmp")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "as nobody: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn has(c: &Consumer, path: &Path) -> bool {
    c.snapshot.paths().any(|p| p == path)
}

/// Detaches a test's mount if the test fails before it unmounts.
struct Unmount(Option<PathBuf>);

impl Drop for Unmount {
    fn drop(&mut self) {
        if let Some(point) = &self.0 {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(point)
                .status();
        }
    }
}

/// Regression: a file system mounted on a watched directory hid it from its watch, so nothing
/// written in the mount was seen; after `umount`, neither the mount's files going away nor new
/// files in that directory were.
#[test]
fn a_file_system_mounted_inside_a_root_is_followed_in_and_out() {
    each_backend(|| {
        if !is_root() {
            eprintln!("skipped: mounting a tmpfs needs root");
            return;
        }
        let (_t, root) = setup();
        let mnt = root.join("mnt");
        write(mnt.join("underneath"), "u");
        let mut c = Consumer::new(builder(&root).quiet(ms(20)).build().unwrap());
        let mount = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
            .arg(&mnt)
            .status()
            .unwrap();
        assert!(mount.success(), "mount: {mount}");
        let mut mounted = Unmount(Some(mnt.clone()));
        let inside = mnt.join("inside");
        write(&inside, "i");
        c.until("the file written inside the mount", |c| has(c, &inside));
        let umount = std::process::Command::new("umount")
            .arg(&mnt)
            .status()
            .unwrap();
        assert!(umount.success(), "umount: {umount}");
        mounted.0 = None;
        let later = mnt.join("later");
        write(&later, "l");
        c.until("the unmount's effect and a file written after it", |c| {
            has(c, &later) && !has(c, &inside) && has(c, &mnt.join("underneath"))
        });
        assert!(c.converged(), "the snapshot matches the disk");
        assert!(
            c.rescans
                .iter()
                .any(|r| r.path == mnt && r.reason == RescanReason::MountsChanged),
            "{:?}",
            c.rescans
        );
    });
}

/// Regression: a directory unreadable when the watcher found it got no watch, and when it was
/// made readable its files were never seen, while the directory itself was reported as a
/// modified file. Root reads every directory, so as root this test runs itself as `nobody`.
#[test]
fn an_unreadable_directory_made_readable_is_watched_and_listed() {
    each_backend(|| {
        const NAME: &str = "an_unreadable_directory_made_readable_is_watched_and_listed";
        if is_root() {
            return passes_as_nobody(NAME);
        }
        use std::os::unix::fs::PermissionsExt;
        let (_t, root) = setup();
        let locked = root.join("locked");
        write(locked.join("before"), "b");
        fs::set_permissions(&locked, fs::Permissions::from_mode(0o000)).unwrap();
        let mut c = Consumer::new(builder(&root).quiet(ms(20)).build().unwrap());
        assert_eq!(c.watcher.stats().failed_watches, 1);
        fs::set_permissions(&locked, fs::Permissions::from_mode(0o755)).unwrap();
        c.until("the directory listed once readable", |c| {
            has(c, &locked.join("before"))
        });
        let after = locked.join("after");
        write(&after, "a");
        c.until("a file written in it afterwards", |c| has(c, &after));
        assert!(
            c.changes.iter().all(|ch| ch.path != locked || ch.is_dir),
            "the directory was reported as a file: {:#?}",
            c.changes
        );
    });
}

/// fanotify is used where it starts (as root here), with no watch per directory; elsewhere (as
/// nobody: no `CAP_SYS_ADMIN`) the watcher falls back to inotify and says why.
#[test]
fn fanotify_is_used_where_permitted_and_the_fallback_says_why() {
    const NAME: &str = "fanotify_is_used_where_permitted_and_the_fallback_says_why";
    let (_t, root) = setup();
    fs::create_dir_all(root.join("a/b")).unwrap();
    let inotify = plain()
        .root(&root)
        .backend(Backend::Recommended)
        .build()
        .unwrap();
    assert_eq!(inotify.backend().name, "inotify");
    assert_eq!(inotify.backend().fallback, None);
    let w = plain()
        .root(&root)
        .backend(Backend::Fanotify)
        .build()
        .unwrap();
    let active = w.backend();
    if is_root() {
        assert_eq!(active.name, "fanotify", "{active:?}");
        assert_eq!(active.fallback, None);
        assert_eq!(w.stats().watches, 0, "no watch per directory");
        let mut c = Consumer::new(w);
        write(root.join("a/b/new"), "x");
        c.until("a file in a directory no watch covers", |c| {
            c.snapshot.contains(&root.join("a/b/new"))
        });
        // The same test as nobody, without CAP_SYS_ADMIN.
        passes_as_nobody(NAME);
    } else {
        assert_eq!(active.name, "inotify", "{active:?}");
        let why = active.fallback.unwrap_or_default();
        assert!(why.contains("CAP_SYS_ADMIN"), "{why}");
        assert_eq!(w.stats().watches, 3);
    }
}

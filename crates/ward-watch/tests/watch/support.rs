//! Test support: a consumer that applies batches to a snapshot and waits for conditions with deadlines.

use std::cell::Cell;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ward_watch::{Backend, Change, ChangeKind, Item, Rescan, Snapshot, Watcher, WatcherBuilder};

/// Generous: the machine running the tests may be busy.
pub const DEADLINE: Duration = Duration::from_secs(30);

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

thread_local! {
    /// The backend the test running on this thread watches with (see [`each_backend`]).
    static BACKEND: Cell<Backend> = const { Cell::new(Backend::Recommended) };
}

/// The backends this machine runs: inotify, and fanotify where it starts (root, Linux 5.17).
pub fn backends() -> &'static [Backend] {
    static BACKENDS: OnceLock<Vec<Backend>> = OnceLock::new();
    BACKENDS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let probe = Watcher::builder()
            .root(dir.path())
            .backend(Backend::Fanotify)
            .build()
            .unwrap();
        match probe.backend().fallback {
            None => vec![Backend::Recommended, Backend::Fanotify],
            Some(why) => {
                eprintln!("the watcher tests run on inotify only: {why}");
                vec![Backend::Recommended]
            }
        }
    })
}

/// Runs `test` once with each backend of [`backends`]: [`plain`] and [`builder`] use it.
pub fn each_backend(test: impl Fn()) {
    for &backend in backends() {
        BACKEND.with(|b| b.set(backend));
        eprintln!("-- with the {backend:?} backend");
        test();
    }
}

/// Whether the test runs with fanotify, which installs no watch per directory.
pub fn fanotify() -> bool {
    BACKEND.with(Cell::get) == Backend::Fanotify
}

/// The directories watched when `n` need a watch each: none with fanotify.
pub fn watches(n: usize) -> usize {
    if fanotify() { 0 } else { n }
}

/// A builder of the test's backend and nothing else.
pub fn plain() -> WatcherBuilder {
    Watcher::builder().backend(BACKEND.with(Cell::get))
}

/// A builder with a long quiet window, so that a test's few syscalls always fall in one window.
pub fn builder(root: &Path) -> WatcherBuilder {
    plain()
        .root(root)
        .ignore_file(".wardignore")
        .quiet(ms(300))
        .max_wait(Duration::from_secs(10))
}

pub fn write(path: impl AsRef<Path>, content: &str) {
    let path = path.as_ref();
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).unwrap();
    }
    fs::write(path, content).unwrap();
}

/// A consumer: keeps every change and rescan it received, and a snapshot kept in step.
pub struct Consumer {
    pub watcher: Watcher,
    pub changes: Vec<Change>,
    pub rescans: Vec<Rescan>,
    pub errors: Vec<String>,
    /// Changes the snapshot produced when resolving rescans.
    pub resolved: Vec<Change>,
    pub snapshot: Snapshot,
    sentinels: u32,
}

impl Consumer {
    pub fn new(watcher: Watcher) -> Self {
        let snapshot = Snapshot::of_roots(watcher.ignore_rules());
        Consumer {
            watcher,
            changes: vec![],
            rescans: vec![],
            errors: vec![],
            resolved: vec![],
            snapshot,
            sentinels: 0,
        }
    }

    /// Receives and applies one batch, if one comes within `timeout`.
    pub fn pump(&mut self, timeout: Duration) -> bool {
        let Ok(batch) = self.watcher.batches().recv_timeout(timeout) else {
            return false;
        };
        for item in batch.items {
            match item {
                Item::Change(c) => {
                    self.snapshot.apply(&c);
                    self.changes.push(c);
                }
                Item::Rescan(r) => {
                    self.resolved.extend(self.snapshot.rescan(&r.path));
                    self.rescans.push(r);
                }
                Item::Error(e) => self.errors.push(e.to_string()),
                _ => {}
            }
        }
        true
    }

    /// Pumps until `cond` holds; panics with `what` after the deadline.
    pub fn until(&mut self, what: &str, mut cond: impl FnMut(&Consumer) -> bool) {
        let deadline = Instant::now() + DEADLINE;
        while !cond(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; changes: {:#?}; rescans: {:?}",
                self.changes,
                self.rescans
            );
            self.pump(ms(20));
        }
    }

    /// Writes a new file in `dir` and waits for it: every event that happened before has then
    /// been delivered (delivery follows the order of events).
    pub fn sentinel(&mut self, dir: &Path) {
        self.sentinels += 1;
        let path = dir.join(format!("sentinel-{}", self.sentinels));
        write(&path, "s");
        self.until("the sentinel", |c| {
            c.changes.iter().any(|ch| ch.path == path) || c.rescans.iter().any(|r| r.covers(&path))
        });
    }

    /// The kinds of change delivered for `path`, in order.
    pub fn kinds(&self, path: &Path) -> Vec<ChangeKind> {
        self.changes
            .iter()
            .filter(|c| c.path == path)
            .map(|c| c.kind.clone())
            .collect()
    }

    /// Every change that mentions `path` (as its path or a rename's origin).
    pub fn mentions(&self, path: &Path) -> Vec<Change> {
        self.changes
            .iter()
            .filter(|c| {
                c.path == path || matches!(&c.kind, ChangeKind::Renamed { from } if from == path)
            })
            .cloned()
            .collect()
    }

    /// Whether the snapshot equals a fresh walk of the disk.
    pub fn converged(&self) -> bool {
        let fresh = Snapshot::of_roots(self.watcher.ignore_rules());
        fresh.paths().eq(self.snapshot.paths())
    }
}

/// Every path under `root` (not following symlinks), sorted.
pub fn disk_paths(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
            out.push(e.path());
        }
    }
    out.sort();
    out
}

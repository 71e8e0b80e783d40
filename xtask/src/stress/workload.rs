//! The workloads: a seeded random source, the log of every change the harness makes, and the
//! writers (steady rate, churn, editor-style saves, bursts) that make them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use std::sync::{Mutex, MutexGuard, PoisonError};

use super::check::{OpKind, WriteOp};
use super::ledger::content_hash;

/// Locks `m` even if poisoned: a writer that panicked has already failed the run, and what it
/// recorded is still the best account of what it did.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Milliseconds since the Unix epoch: the worker stamps its ledger with the same clock.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// SplitMix64: small, seedable, good enough to pick files and times reproducibly.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`; `stream` separates the workloads that share a seed.
    pub fn new(seed: u64, stream: u64) -> Rng {
        let mut r = Rng(seed ^ stream.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        r.next();
        r
    }

    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// Uniform in `0.0..1.0`.
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Shuffles `items` in place (Fisher–Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

/// Every change the harness made, shared by the writer threads.
#[derive(Debug, Default)]
pub struct WriteLog {
    ops: Mutex<Vec<WriteOp>>,
    seq: AtomicU64,
}

impl WriteLog {
    /// A fresh sequence number: every content the harness writes is unique.
    pub fn seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    fn record(&self, path: &Path, kind: OpKind, workload: &'static str) {
        lock(&self.ops).push(WriteOp {
            t_ms: now_ms(),
            path: path.to_string_lossy().into_owned(),
            kind,
            workload,
        });
    }

    /// Writes `content` to `path` (creating its directory) and records it; returns its hash.
    ///
    /// # Errors
    /// If the file cannot be written.
    pub fn write(
        &self,
        path: &Path,
        content: &[u8],
        workload: &'static str,
    ) -> std::io::Result<u64> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, content)?;
        let hash = content_hash(content);
        self.record(path, OpKind::Wrote(hash), workload);
        Ok(hash)
    }

    /// Removes the file `path` and records it.
    ///
    /// # Errors
    /// If it cannot be removed.
    pub fn remove(&self, path: &Path, workload: &'static str) -> std::io::Result<()> {
        std::fs::remove_file(path)?;
        self.record(path, OpKind::Removed, workload);
        Ok(())
    }

    /// Renames `from` to `to` and records both ends for each file moved: `files` maps the paths
    /// under `from` (or `from` itself) to their hashes.
    ///
    /// # Errors
    /// If the rename fails.
    pub fn rename(
        &self,
        from: &Path,
        to: &Path,
        files: &[(PathBuf, u64)],
        workload: &'static str,
    ) -> std::io::Result<()> {
        std::fs::rename(from, to)?;
        for (path, hash) in files {
            let moved = to.join(path.strip_prefix(from).unwrap_or(Path::new("")));
            let moved = if path == from {
                to.to_path_buf()
            } else {
                moved
            };
            self.record(path, OpKind::Removed, workload);
            self.record(&moved, OpKind::Wrote(*hash), workload);
        }
        Ok(())
    }

    /// Removes the directory `dir` and everything under it, recording each of `files`.
    ///
    /// # Errors
    /// If it cannot be removed.
    pub fn remove_tree(
        &self,
        dir: &Path,
        files: &[PathBuf],
        workload: &'static str,
    ) -> std::io::Result<()> {
        std::fs::remove_dir_all(dir)?;
        for f in files {
            self.record(f, OpKind::Removed, workload);
        }
        Ok(())
    }

    /// Records that `path` appeared in the tree with content `hash` without a write there (a
    /// mount brought it in).
    pub fn appeared(&self, path: &Path, hash: u64, workload: &'static str) {
        self.record(path, OpKind::Wrote(hash), workload);
    }

    /// Records that `path` left the tree without a removal (an unmount took it away).
    pub fn vanished(&self, path: &Path, workload: &'static str) {
        self.record(path, OpKind::Removed, workload);
    }

    /// Every change so far.
    pub fn snapshot(&self) -> Vec<WriteOp> {
        lock(&self.ops).clone()
    }
}

/// What the background writers share.
#[derive(Debug, Clone)]
pub struct Writers {
    /// The watched tree.
    pub tree: PathBuf,
    /// Where changes are recorded.
    pub log: Arc<WriteLog>,
    /// Set to stop them.
    pub stop: Arc<AtomicBool>,
    /// Multiplies every workload's rate.
    pub rate: f64,
    /// The run's seed.
    pub seed: u64,
    /// Errors the writers met (a full disk, say), kept for the report.
    pub errors: Arc<Mutex<Vec<String>>>,
}

impl Writers {
    fn note(&self, what: &str, e: &std::io::Error) {
        let mut errors = lock(&self.errors);
        if errors.len() < 100 {
            errors.push(format!("{what}: {e}"));
        }
    }

    /// Sleeps `secs` in short slices; false once told to stop.
    fn pause(&self, secs: f64) -> bool {
        let until = Instant::now() + Duration::from_secs_f64(secs.max(0.0));
        while Instant::now() < until {
            if self.stop.load(Ordering::Relaxed) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20).min(until - Instant::now()));
        }
        !self.stop.load(Ordering::Relaxed)
    }

    /// The seed's scenario: 3 jobs every 40 s (times `rate`), each a rewrite of one of 30 files.
    pub fn steady(&self) {
        let mut rng = Rng::new(self.seed, 1);
        let interval = 40.0 / 3.0 / self.rate;
        while self.pause(interval * (0.5 + rng.unit())) {
            let n = self.log.seq();
            let path = self.tree.join(format!("steady/s-{:02}.txt", rng.below(30)));
            if let Err(e) = self
                .log
                .write(&path, format!("steady {n}\n").as_bytes(), "steady")
            {
                self.note("steady write", &e);
            }
        }
    }

    /// Editor-style saves, two a second (times `rate`) over ten documents: half write a temporary
    /// file and rename it over the document, half move the document to a backup, write it anew
    /// and remove the backup (vim's way).
    pub fn editor(&self) {
        let mut rng = Rng::new(self.seed, 2);
        let dir = self.tree.join("edit");
        let mut docs: BTreeMap<PathBuf, u64> = BTreeMap::new();
        while self.pause(0.5 / self.rate * (0.5 + rng.unit())) {
            let n = self.log.seq();
            let doc = dir.join(format!("doc-{}.md", rng.below(10)));
            let content = format!("# document\nsaved {n}\n");
            let result = if rng.below(2) == 0 || !docs.contains_key(&doc) {
                let tmp = dir.join(format!(
                    ".{}.tmp{n}",
                    doc.file_name()
                        .map(|f| f.to_string_lossy())
                        .unwrap_or_default()
                ));
                self.log
                    .write(&tmp, content.as_bytes(), "edit")
                    .and_then(|hash| {
                        self.log
                            .rename(&tmp, &doc, &[(tmp.clone(), hash)], "edit")?;
                        docs.insert(doc.clone(), hash);
                        Ok(())
                    })
            } else {
                let backup = doc.with_extension("md~");
                let old = docs[&doc];
                self.log
                    .rename(&doc, &backup, &[(doc.clone(), old)], "edit")
                    .and_then(|()| self.log.write(&doc, content.as_bytes(), "edit"))
                    .and_then(|hash| {
                        docs.insert(doc.clone(), hash);
                        self.log.remove(&backup, "edit")
                    })
            };
            if let Err(e) = result {
                self.note("editor save", &e);
            }
        }
    }

    /// Random creates, modifies, renames and deletes of files and directories, deep `mkdir -p`
    /// trees, ten operations a second (times `rate`); some trees go under `exec/`, which an exec
    /// trigger handles, and under `batch/`, which a batch trigger handles.
    pub fn churn(&self) {
        let mut rng = Rng::new(self.seed, 3);
        let mut model = Churn::default();
        let roots = [
            self.tree.join("churn"),
            self.tree.join("exec/churn"),
            self.tree.join("batch/churn"),
        ];
        for root in &roots {
            if let Err(e) = std::fs::create_dir_all(root) {
                self.note("churn: creating its root", &e);
            }
            model.dirs.push(root.clone());
        }
        while self.pause(0.1 / self.rate * (0.5 + rng.unit())) {
            if let Err(e) = model.step(&mut rng, &self.log, &roots) {
                self.note("churn", &e);
                model.resync(&roots);
            }
        }
    }
}

/// What churn believes is on disk under its roots.
#[derive(Debug, Default)]
struct Churn {
    files: BTreeMap<PathBuf, u64>,
    dirs: Vec<PathBuf>,
    next_dir: u64,
}

impl Churn {
    fn pick_file(&self, rng: &mut Rng) -> Option<PathBuf> {
        let n = self.files.len() as u64;
        (n > 0).then(|| self.files.keys().nth(rng.below(n) as usize).cloned())?
    }

    fn under(&self, dir: &Path) -> Vec<(PathBuf, u64)> {
        self.files
            .iter()
            .filter(|(p, _)| p.starts_with(dir))
            .map(|(p, h)| (p.clone(), *h))
            .collect()
    }

    fn step(&mut self, rng: &mut Rng, log: &WriteLog, roots: &[PathBuf]) -> std::io::Result<()> {
        let roll = rng.below(100);
        // Past a few thousand files churn deletes more than it creates, so the tree stays bounded.
        let crowded = self.files.len() > 3000;
        match roll {
            0..=24 if !crowded => {
                let dir = self.dirs[rng.below(self.dirs.len() as u64) as usize].clone();
                let n = log.seq();
                let path = dir.join(format!("f-{n}.txt"));
                let hash = log.write(&path, format!("churn {n}\n").as_bytes(), "churn")?;
                self.files.insert(path, hash);
            }
            0..=54 => {
                if let Some(path) = self.pick_file(rng) {
                    let n = log.seq();
                    let hash = log.write(&path, format!("churn {n}\n").as_bytes(), "churn")?;
                    self.files.insert(path, hash);
                }
            }
            55..=69 => {
                if let Some(from) = self.pick_file(rng) {
                    let dir = self.dirs[rng.below(self.dirs.len() as u64) as usize].clone();
                    let to = dir.join(format!("r-{}.txt", log.seq()));
                    let hash = self.files[&from];
                    log.rename(&from, &to, &[(from.clone(), hash)], "churn")?;
                    self.files.remove(&from);
                    self.files.insert(to, hash);
                }
            }
            70..=84 => {
                if let Some(path) = self.pick_file(rng) {
                    log.remove(&path, "churn")?;
                    self.files.remove(&path);
                }
            }
            85..=89 => {
                // A whole directory moves: every file under it is removed here and created there.
                let candidates: Vec<PathBuf> = self
                    .dirs
                    .iter()
                    .filter(|d| !roots.contains(d))
                    .cloned()
                    .collect();
                if candidates.is_empty() {
                    return Ok(());
                }
                let from = candidates[rng.below(candidates.len() as u64) as usize].clone();
                let to = from.with_file_name(format!("moved-{}", log.seq()));
                let moved = self.under(&from);
                log.rename(&from, &to, &moved, "churn")?;
                for (p, h) in moved {
                    let rest = p.strip_prefix(&from).unwrap_or(Path::new("")).to_path_buf();
                    self.files.remove(&p);
                    self.files.insert(to.join(rest), h);
                }
                for d in &mut self.dirs {
                    if let Ok(rest) = d.strip_prefix(&from) {
                        *d = to.join(rest);
                    }
                }
            }
            90..=94 => {
                let candidates: Vec<PathBuf> = self
                    .dirs
                    .iter()
                    .filter(|d| !roots.contains(d))
                    .cloned()
                    .collect();
                if candidates.is_empty() {
                    return Ok(());
                }
                let dir = candidates[rng.below(candidates.len() as u64) as usize].clone();
                let gone: Vec<PathBuf> = self.under(&dir).into_iter().map(|(p, _)| p).collect();
                log.remove_tree(&dir, &gone, "churn")?;
                for p in gone {
                    self.files.remove(&p);
                }
                self.dirs.retain(|d| !d.starts_with(&dir));
            }
            _ => {
                // `mkdir -p` of a deep tree with a few files in its deepest directory.
                // One tree in ten under each of the other roots.
                let root = match rng.below(10) {
                    1 => &roots[1],
                    2 => &roots[roots.len() - 1],
                    _ => &roots[0],
                };
                let mut dir = root.clone();
                self.next_dir += 1;
                for level in 0..(2 + rng.below(7)) {
                    dir = dir.join(format!("d{}-{level}", self.next_dir));
                }
                std::fs::create_dir_all(&dir)?;
                self.dirs.push(dir.clone());
                for _ in 0..3 {
                    let n = log.seq();
                    let path = dir.join(format!("deep-{n}.txt"));
                    let hash = log.write(&path, format!("churn {n}\n").as_bytes(), "churn")?;
                    self.files.insert(path, hash);
                }
            }
        }
        Ok(())
    }

    /// After a failed step, believe the disk again (its record of changes stays as it was).
    fn resync(&mut self, roots: &[PathBuf]) {
        self.files.retain(|p, _| p.is_file());
        self.dirs.retain(|d| d.is_dir());
        for root in roots {
            if !self.dirs.contains(root) {
                let _ = std::fs::create_dir_all(root);
                self.dirs.push(root.clone());
            }
        }
    }
}

/// Writes `count` files at once under `dir`, 500 to a directory; returns their paths.
///
/// # Errors
/// If a file cannot be written.
pub fn burst(
    log: &WriteLog,
    dir: &Path,
    count: usize,
    workload: &'static str,
) -> std::io::Result<Vec<PathBuf>> {
    let mut paths = Vec::with_capacity(count);
    for i in 0..count {
        let n = log.seq();
        let path = dir.join(format!("d{:03}/f-{i}.txt", i / 500));
        log.write(&path, format!("{workload} {n}\n").as_bytes(), workload)?;
        paths.push(path);
    }
    Ok(paths)
}

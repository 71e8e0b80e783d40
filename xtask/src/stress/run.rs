//! One stress run: sets up ward in a temporary directory, runs the workloads and the schedule of
//! faults against `ward start`, samples memory, then settles, checks, stops and sweeps.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};

use super::check::{self, ExpectedDeath, Line, Report, RssSample, Window};
use super::config::ConfigFile;
use super::daemon::{self, Ward, signal, wait_until};
use super::faults::{self, FaultKind, Findings, Injected, Step};
use super::ledger::{self, Phase};
use super::sampler::{self, Samples};
use super::scene::{LedgerTail, PendingRemoval, Restarts, Scene};
use super::workload::{self, WriteLog, Writers, lock, now_ms};
use super::{Options, changes, host, plot};

/// Set by Ctrl-C, SIGTERM or SIGHUP: every loop of the run checks it and goes to the orderly end.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// A quick run's memory bounds: the keeper holds no per-file state; the server's includes the
/// manifest's 32 MiB cache and per-directory watches, and 64 MiB is what the 200k-file burst of
/// `cargo xtask bench` must stay under.
const QUICK_KEEPER_CAP_MIB: f64 = 8.0;
const QUICK_SERVER_CAP_MIB: f64 = 64.0;
/// The least time between the end of one step of the schedule and the start of the next.
const STEP_GAP_S: f64 = 2.0;
/// A change this long before a fault may still have been pending when it hit.
const PENDING_MS: u64 = 5000;

/// Releases what the run took on every way out, panics included: the temporary directory's
/// processes, then its mounts, then the run's throwaway user.
struct Sweeper {
    dir: PathBuf,
}

impl Drop for Sweeper {
    fn drop(&mut self) {
        let left = release(&self.dir, std::process::id());
        if !left.is_empty() {
            eprintln!("stress: {left}");
        }
    }
}

/// Stops what the run of harness `pid` in `dir` started and took: its processes (those mounts
/// and the user could be busy with), its mounts (deepest first), its user. What it did, in words
/// (empty if there was nothing left).
fn release(dir: &Path, pid: u32) -> String {
    let mut done = Vec::new();
    let left = daemon::sweep(dir);
    if !left.is_empty() {
        done.push(format!("killed {} process(es) left running", left.len()));
    }
    let (unmounted, failed) = host::release_mounts(dir);
    if !unmounted.is_empty() {
        done.push(format!("unmounted {} mount(s)", unmounted.len()));
    }
    done.extend(failed.into_iter().map(|f| format!("could not unmount {f}")));
    match host::remove_user(pid) {
        Ok(true) => done.push(format!("removed the user {}", host::user_name(pid))),
        Ok(false) => {}
        Err(e) => done.push(format!(
            "could not remove the user {}: {e:#}",
            host::user_name(pid)
        )),
    }
    done.join("; ")
}

/// The crash reports in the state directory, read incrementally.
#[derive(Debug, Default)]
struct Reports {
    seen: HashSet<String>,
    list: Vec<Report>,
    unreadable: Vec<String>,
}

impl Reports {
    fn refresh(&mut self, state: &Path) {
        let Ok(dir) = std::fs::read_dir(state.join("crashes")) else {
            return;
        };
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !(name.starts_with("crash-") && name.ends_with(".json")) || self.seen.contains(&name)
            {
                continue;
            }
            // A report being written may not parse yet; it is read again next time.
            let Ok(text) = std::fs::read(entry.path()) else {
                continue;
            };
            let Ok(v) = serde_json::from_slice::<Value>(&text) else {
                continue;
            };
            self.seen.insert(name.clone());
            match (v["pid"].as_u64(), v["role"].as_str()) {
                (Some(pid), Some(role)) => self.list.push(Report {
                    file: name,
                    pid: pid as u32,
                    role: role.to_owned(),
                    cause: check::cause_label(&v["verdict"]["cause"]),
                    confidence: v["verdict"]["confidence"]
                        .as_str()
                        .unwrap_or("?")
                        .to_owned(),
                }),
                _ => self.unreadable.push(name),
            }
        }
    }

    fn about(&self, needle: &str) -> usize {
        self.list.iter().filter(|r| r.role.contains(needle)).count()
    }
}

/// Everything one run holds.
struct Run<'a> {
    opts: &'a Options,
    ward: Ward,
    config: ConfigFile,
    dir: PathBuf,
    tree: PathBuf,
    log: Arc<WriteLog>,
    ledger: LedgerTail,
    reports: Reports,
    samples: Arc<Samples>,
    injected: Vec<Injected>,
    pending: Vec<PendingRemoval>,
    /// Directories a fault filled, removed (with a record of each file) once their deadline
    /// passes, so that the tree and the server's memory stay bounded in a long run.
    removals: Vec<(PathBuf, Instant)>,
    counts: BTreeMap<&'static str, usize>,
    started: Instant,
    restarts: Restarts,
    burst: Option<Burst>,
    /// What the faults with a verdict line of their own found.
    findings: Findings,
}

#[derive(Debug, Clone)]
struct Burst {
    dir: PathBuf,
    files: Vec<PathBuf>,
    written_ms: (u64, u64),
}

/// Runs the stress against the `ward` binary and the worker given; whether every check passed.
///
/// # Errors
/// If the run cannot be set up (a temp dir, `ward start`), or its report cannot be written.
pub fn run(opts: &Options, ward_bin: &Path, worker_bin: &Path) -> anyhow::Result<bool> {
    sweep_abandoned();
    sweep_abandoned_users();
    let dir =
        std::env::temp_dir().join(format!("ward-stress-{}-{}", std::process::id(), opts.seed));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let _sweeper = Sweeper { dir: dir.clone() };
    let tree = dir.join("tree");
    std::fs::create_dir_all(&tree)?;
    std::fs::create_dir_all(dir.join("out"))?;
    let ledger_path = dir.join("out/ledger");
    let config = ConfigFile {
        path: dir.join("ward.toml"),
        worker: worker_bin.to_path_buf(),
        ledger: ledger_path.clone(),
    };
    config.write(0)?;
    let ward = Ward {
        bin: ward_bin.to_path_buf(),
        config: config.path.clone(),
        state: dir.join("state"),
        user: None,
    };
    if opts.faults.contains(&FaultKind::StateDiskFull) {
        faults::prepare_state_disk(&ward.state, opts.quick)?;
    }
    println!("stress: ward in {} (seed {})", dir.display(), opts.seed);
    let mut run = Run {
        opts,
        ward: ward.clone(),
        config,
        dir: dir.clone(),
        tree: tree.clone(),
        log: Arc::new(WriteLog::default()),
        ledger: LedgerTail::new(ledger_path),
        reports: Reports::default(),
        samples: Arc::new(Samples::default()),
        injected: Vec::new(),
        pending: Vec::new(),
        removals: Vec::new(),
        counts: BTreeMap::new(),
        started: Instant::now(),
        restarts: Restarts::default(),
        burst: None,
        findings: Findings::default(),
    };
    ward.start()?;
    run.started = Instant::now();

    let sampling = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (ward, samples, stop, started) = (
            ward.clone(),
            Arc::clone(&run.samples),
            Arc::clone(&sampling),
            run.started,
        );
        let total = opts.duration.as_secs_f64();
        std::thread::spawn(move || sampler::run(&ward, &samples, &stop, started, total))
    };
    let writers = Writers {
        tree: tree.clone(),
        log: Arc::clone(&run.log),
        stop: Arc::new(AtomicBool::new(false)),
        rate: opts.rate,
        seed: opts.seed,
        errors: Arc::default(),
    };
    let threads: Vec<_> = [Writers::steady, Writers::editor, Writers::churn]
        .into_iter()
        .map(|body| {
            let w = writers.clone();
            std::thread::spawn(move || body(&w))
        })
        .collect();

    let steps = faults::schedule(
        &opts.faults,
        opts.duration.as_secs_f64(),
        opts.quick,
        opts.seed,
    );
    let mut next = 0;
    // A step that overran its slot delays the next ones, which must not then pile up.
    let mut calm_until = 0.0;
    // What a since-query client has read up to, mid-run: it must hear of what changes after.
    let mut mark = None;
    while !INTERRUPTED.load(Ordering::Relaxed) {
        let now = run.started.elapsed().as_secs_f64();
        run.tidy_pending(false);
        if mark.is_none() && now >= opts.duration.as_secs_f64() * 0.4 {
            mark = changes::mark(&ward);
        }
        if let Some(&(at, step)) = steps.get(next) {
            if now >= at.max(calm_until) {
                next += 1;
                run.step(step);
                calm_until = run.elapsed_s() + STEP_GAP_S;
                continue;
            }
        } else if now >= opts.duration.as_secs_f64() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    run.samples.set_phase("settling");
    writers.stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    run.tidy_pending(true);
    let settle = Instant::now();
    let settled = run.settle(if opts.quick { 20 } else { 120 });
    let settle_s = settle.elapsed().as_secs_f64();
    let run_s = run.started.elapsed().as_secs_f64();
    run.ledger.refresh();
    run.reports.refresh(&ward.state);
    run.restarts.counted += ward.restarts();
    let final_files = walk(&tree);
    let status = ward.status();
    let reading = changes::Reading {
        all: changes::fetch(&ward, 0, Duration::from_secs(60)),
        since_mark: mark.map(|(seq, at_ms)| {
            (
                seq,
                at_ms,
                changes::fetch(&ward, seq, Duration::from_secs(60)),
            )
        }),
    };
    sampling.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    eprintln!();

    // The orderly end: continue anything stopped, `ward stop`, then look for what is left.
    if let Some(server) = ward.server_pid() {
        signal(server, libc::SIGCONT);
    }
    let stopped = ward.run(&["stop", "--timeout", "30"], Duration::from_secs(60));
    let left = {
        let mut left = Vec::new();
        wait_until(Duration::from_secs(5), || {
            left = daemon::processes_mentioning(&dir);
            left.is_empty()
        });
        left
    };
    let stale: Vec<&str> = ["ward.pid", "ward.sock"]
        .into_iter()
        .filter(|f| ward.state.join(f).exists())
        .collect();

    let writer_errors = lock(&writers.errors).clone();
    let mut lines = run.verdict(&Verdict {
        final_files: &final_files,
        settled,
        settle_s,
        run_s,
        status: status.as_ref(),
        stopped: &stopped,
        left: &left,
        stale: &stale,
        writer_errors: &writer_errors,
    });
    let losses = run.losses_by_fault(&final_files);
    lines.extend(
        run.findings
            .lines(&opts.faults, &run.ledger.entries, &tree, &losses),
    );
    let root = format!("{}/", tree.display());
    lines.push(changes::line(
        &reading,
        &final_files,
        &run.log.snapshot(),
        &run.ledger.entries,
        &root,
        |t| run.short(t),
    ));
    let all_pass = lines.iter().all(|l| l.pass);
    println!("\n{}", check::table(&lines, 12));
    run.write_outputs(&lines, &dir)?;
    if INTERRUPTED.load(Ordering::Relaxed) {
        println!("stress: interrupted; the verdict covers the part that ran");
    }
    if opts.keep {
        let mut tsv = String::new();
        for w in run.log.snapshot() {
            let what = match w.kind {
                check::OpKind::Wrote(h) => format!("wrote {h:016x}"),
                check::OpKind::Removed => "removed".to_owned(),
            };
            tsv.push_str(&format!("{}\t{}\t{what}\t{}\n", w.t_ms, w.workload, w.path));
        }
        std::fs::write(dir.join("out/writes.tsv"), tsv)?;
        // A state directory on a tmpfs of its own goes with its unmount: keep a copy.
        if host::is_mount_point(&ward.state) {
            copy_tree(&ward.state, &dir.join("out/state"))?;
        }
        std::fs::write(dir.join(KEPT), "kept by cargo xtask stress --keep\n")?;
        println!(
            "stress: kept {} (out/ledger is the workers' account, out/writes.tsv the harness's)",
            dir.display()
        );
    }
    let released = release(&dir, std::process::id());
    if !released.is_empty() {
        println!("stress: at the end, {released}");
    }
    if opts.keep {
        // Kept for whoever asked.
    } else if let Err(e) = std::fs::remove_dir_all(&dir) {
        println!("stress: could not remove {}: {e}", dir.display());
    }
    Ok(all_pass && !INTERRUPTED.load(Ordering::Relaxed))
}

/// What marks a temporary directory kept with `--keep`: it is left for whoever asked for it.
const KEPT: &str = "KEPT";

/// Copies the directory `from` to `to`, files and directories only.
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name()))?;
        }
    }
    Ok(())
}

/// Cleans up after runs that could not (a harness killed with SIGKILL): any process still
/// mentioning the temporary directory of a run whose harness is gone, its mounts, its user, and
/// the directory itself unless it was kept on purpose.
fn sweep_abandoned() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("ward-stress-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if daemon::is_alive(pid) {
            continue;
        }
        let released = release(&entry.path(), pid);
        if !released.is_empty() {
            println!(
                "stress: an earlier, killed run in {}: {released}",
                entry.path().display()
            );
        }
        if !entry.path().join(KEPT).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Removes the throwaway users of killed runs whose directory is gone (after
/// [`sweep_abandoned`], which stops what they ran).
fn sweep_abandoned_users() {
    for pid in host::abandoned_users(daemon::is_alive) {
        let name = host::user_name(pid);
        match host::remove_user(pid) {
            Ok(_) => println!("stress: removed the user {name} an earlier, killed run left"),
            Err(e) => println!("stress: an earlier, killed run's user is left: {e:#}"),
        }
    }
}

/// Every regular file under `dir` with its content hash.
fn walk(dir: &Path) -> BTreeMap<String, u64> {
    let mut files = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(kind) = e.file_type() else { continue };
            if kind.is_dir() {
                stack.push(e.path());
            } else if kind.is_file()
                && let Ok(bytes) = std::fs::read(e.path())
            {
                files.insert(
                    e.path().to_string_lossy().into_owned(),
                    ledger::content_hash(&bytes),
                );
            }
        }
    }
    files
}

/// Per workload: how many, p50, p99, max, and the log2-bucket histogram the plot draws.
fn latency_summary(lat: &[(&'static str, u64)]) -> Value {
    let mut by: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for (w, ms) in lat {
        by.entry(w).or_default().push(*ms);
        by.entry("all").or_default().push(*ms);
    }
    let mut out = serde_json::Map::new();
    for (w, mut v) in by {
        v.sort_unstable();
        out.insert(
            w.to_owned(),
            json!({
                "n": v.len(),
                "p50": check::percentile(&v, 0.5),
                "p99": check::percentile(&v, 0.99),
                "max": v.last(),
                "log2_buckets": plot::buckets(&v),
            }),
        );
    }
    Value::Object(out)
}

/// What the verdict needs besides the run's own state.
struct Verdict<'a> {
    final_files: &'a BTreeMap<String, u64>,
    settled: bool,
    settle_s: f64,
    run_s: f64,
    status: Option<&'a Value>,
    stopped: &'a anyhow::Result<daemon::Ran>,
    left: &'a [(u32, String)],
    stale: &'a [&'a str],
    writer_errors: &'a [String],
}

impl Run<'_> {
    /// The changes lost in each fault's window (see [`check::lost_changes`]), by its label.
    fn losses_by_fault(
        &self,
        final_files: &BTreeMap<String, u64>,
    ) -> BTreeMap<String, Vec<String>> {
        let faults: Vec<&Injected> = self
            .injected
            .iter()
            .filter(|f| f.kind.has_window())
            .collect();
        let windows: Vec<Window> = faults
            .iter()
            .map(|f| Window {
                label: f.label.clone(),
                start_ms: f.start_ms,
                end_ms: f.end_ms,
            })
            .collect();
        let writes = self.log.snapshot();
        let lost = check::lost_changes(
            final_files,
            &self.ledger.entries,
            &writes,
            &windows,
            PENDING_MS,
        );
        let mut by: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for l in lost {
            if let Some(w) = l.window {
                by.entry(faults[w].label.clone()).or_default().push(format!(
                    "{} ({})",
                    self.short(&l.path),
                    l.kind.describe()
                ));
            }
        }
        by
    }

    fn elapsed_s(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    fn step(&mut self, step: Step) {
        match step {
            Step::Burst => self.burst(),
            Step::BurstDelete => self.burst_delete(),
            Step::Fault(kind) => {
                let n = {
                    let c = self.counts.entry(kind.name()).or_insert(0);
                    *c += 1;
                    *c
                };
                let label = format!("{} #{n}", kind.name());
                self.samples.set_phase(&format!("fault {label}"));
                let at_s = self.elapsed_s();
                let mut f = Injected {
                    label,
                    kind,
                    at_s,
                    start_ms: now_ms(),
                    end_ms: now_ms(),
                    expected: Vec::new(),
                    problems: Vec::new(),
                    note: String::new(),
                };
                let mut scene = Scene {
                    opts: self.opts,
                    ward: &self.ward,
                    config: &self.config,
                    dir: &self.dir,
                    tree: &self.tree,
                    log: &self.log,
                    ledger: &mut self.ledger,
                    removals: &mut self.removals,
                    pending: &mut self.pending,
                    restarts: &mut self.restarts,
                };
                faults::inject(&mut scene, &mut self.findings, &mut f, n);
                if f.end_ms < f.start_ms {
                    f.end_ms = f.start_ms;
                }
                self.injected.push(f);
                self.samples.set_phase("running");
            }
        }
    }

    fn burst(&mut self) {
        let count = if self.opts.quick { 2_000 } else { 50_000 };
        self.samples.set_phase(&format!("burst of {count} files"));
        let dir = self.tree.join("burst");
        let from = now_ms();
        match workload::burst(&self.log, &dir, count, "burst") {
            Ok(files) => {
                self.burst = Some(Burst {
                    dir,
                    files,
                    written_ms: (from, now_ms()),
                });
            }
            Err(e) => eprintln!("\nstress: burst failed: {e}"),
        }
        self.samples.set_phase("running");
    }

    fn burst_delete(&mut self) {
        let Some(burst) = &self.burst else { return };
        self.samples.set_phase("deleting half the burst");
        let Ok(entries) = std::fs::read_dir(&burst.dir) else {
            return;
        };
        let mut dirs: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        dirs.sort();
        for d in dirs.iter().step_by(2) {
            let gone: Vec<PathBuf> = burst
                .files
                .iter()
                .filter(|f| f.starts_with(d))
                .cloned()
                .collect();
            if let Err(e) = self.log.remove_tree(d, &gone, "burst") {
                eprintln!("\nstress: removing {}: {e}", d.display());
            }
        }
        self.samples.set_phase("running");
    }

    /// Removes the directories faults filled once their time has come, and the death-asking
    /// files whose reports are in or whose deadline passed (`all`: everything now, waiting for
    /// each death-asking file's reports up to its deadline, for the end of the run).
    fn tidy_pending(&mut self, all: bool) {
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.removals)
            .into_iter()
            .partition(|(_, at)| all || *at <= now);
        self.removals = later;
        for (dir, _) in due {
            let files: Vec<PathBuf> = walk(&dir).into_keys().map(PathBuf::from).collect();
            if let Err(e) = self.log.remove_tree(&dir, &files, "fault") {
                eprintln!("\nstress: removing {}: {e}", dir.display());
            }
        }
        if self.pending.is_empty() {
            return;
        }
        self.reports.refresh(&self.ward.state);
        let mut keep = Vec::new();
        for p in std::mem::take(&mut self.pending) {
            let mut reported = || {
                self.reports.refresh(&self.ward.state);
                p.files
                    .iter()
                    .all(|f| self.reports.about(&f.to_string_lossy()) > 0)
            };
            let ready = if all {
                let left = p.deadline.saturating_duration_since(Instant::now());
                wait_until(left, || reported() || INTERRUPTED.load(Ordering::Relaxed))
            } else {
                reported() || Instant::now() >= p.deadline
            };
            if ready || all {
                for f in &p.files {
                    if let Err(e) = self.log.remove(f, "fault") {
                        eprintln!("\nstress: removing {}: {e}", f.display());
                    }
                }
            } else {
                keep.push(p);
            }
        }
        self.pending = keep;
    }

    /// Waits until ward is idle: nothing queued, running, retrying or pending in the watcher,
    /// and the ledger unchanged, twice a second apart.
    fn settle(&mut self, limit_s: u64) -> bool {
        let mut quiet_since: Option<(Instant, usize)> = None;
        wait_until(Duration::from_secs(limit_s), || {
            if INTERRUPTED.load(Ordering::Relaxed) {
                return true;
            }
            let Some(s) = self.ward.status() else {
                quiet_since = None;
                return false;
            };
            let idle = daemon::idle(&s);
            self.ledger.refresh();
            let len = self.ledger.offset;
            match (idle, quiet_since) {
                (false, _) => {
                    quiet_since = None;
                    false
                }
                (true, Some((since, l))) if l == len => since.elapsed() >= Duration::from_secs(1),
                (true, _) => {
                    quiet_since = Some((Instant::now(), len));
                    false
                }
            }
        }) && !INTERRUPTED.load(Ordering::Relaxed)
    }

    fn verdict(&self, v: &Verdict<'_>) -> Vec<Line> {
        let writes = self.log.snapshot();
        let entries = &self.ledger.entries;
        let mut lines = Vec::new();

        // No change lost, each loss blamed on the window it fell into.
        let windows: Vec<(usize, Window)> = self
            .injected
            .iter()
            .enumerate()
            .filter(|(_, f)| f.kind.has_window())
            .map(|(i, f)| {
                (
                    i,
                    Window {
                        label: f.label.clone(),
                        start_ms: f.start_ms,
                        end_ms: f.end_ms,
                    },
                )
            })
            .collect();
        let plain: Vec<Window> = windows.iter().map(|(_, w)| w.clone()).collect();
        let lost = check::lost_changes(v.final_files, entries, &writes, &plain, PENDING_MS);
        let deleted = {
            let mut paths: HashSet<&str> = writes.iter().map(|w| w.path.as_str()).collect();
            paths.retain(|p| !v.final_files.contains_key(*p));
            paths.len()
        };
        let mut details = Vec::new();
        let mut groups: BTreeMap<Option<usize>, Vec<&check::Lost>> = BTreeMap::new();
        for l in &lost {
            groups.entry(l.window).or_default().push(l);
        }
        for (window, group) in &groups {
            let head = match window {
                Some(w) => {
                    let f = &self.injected[windows[*w].0];
                    let why = if f.kind.server_gone() {
                        "the server was down: no reconciliation on start (issue 8)?"
                    } else {
                        "ward kept running: a ward bug (\"nothing lost while running\")"
                    };
                    format!(
                        "{} at +{:.1}s (window {:.2}s), {why}: {} lost",
                        f.label,
                        f.at_s,
                        (f.end_ms - f.start_ms) as f64 / 1000.0,
                        group.len()
                    )
                }
                None => format!(
                    "outside every fault window (a ward bug): {} lost",
                    group.len()
                ),
            };
            details.push(head);
            for l in group.iter().take(8) {
                let when = l
                    .last_change_ms
                    .map(|t| format!(", last change at +{:.2}s", self.since_start(t)))
                    .unwrap_or_default();
                details.push(format!(
                    "  {} ({}{when})",
                    self.short(&l.path),
                    l.kind.describe()
                ));
            }
            if group.len() > 8 {
                details.push(format!("  ... {} more", group.len() - 8));
            }
        }
        lines.push(Line::new(
            "no change lost",
            lost.is_empty(),
            format!(
                "{} files on disk, {} deleted, {} changes made; {} lost",
                v.final_files.len(),
                deleted,
                writes.len(),
                lost.len()
            ),
            details,
        ));

        // Every injected death reported, with the expected cause.
        let expected: Vec<ExpectedDeath> = self
            .injected
            .iter()
            .flat_map(|f| f.expected.clone())
            .collect();
        let (outcomes, unexplained) = check::match_deaths(&expected, &self.reports.list);
        let mut details = Vec::new();
        let mut ok = 0;
        for (e, o) in expected.iter().zip(&outcomes) {
            match o {
                check::DeathOutcome::Reported(_) => ok += 1,
                check::DeathOutcome::Missing => details.push(format!(
                    "{}: no report names {}{} (expected {})",
                    e.fault,
                    self.short(&e.role_contains),
                    e.pid.map(|p| format!(" pid {p}")).unwrap_or_default(),
                    e.causes.join(" or ")
                )),
                check::DeathOutcome::WrongCause(found) => details.push(format!(
                    "{}: reported as {} (expected {})",
                    e.fault,
                    found.join(", "),
                    e.causes.join(" or ")
                )),
            }
        }
        let by_cause = {
            let mut m: BTreeMap<&str, usize> = BTreeMap::new();
            for r in &self.reports.list {
                *m.entry(r.cause.as_str()).or_default() += 1;
            }
            m.iter()
                .map(|(c, n)| format!("{n} {c}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        lines.push(Line::new(
            "every injected death reported",
            ok == expected.len(),
            format!(
                "{ok}/{} with the expected cause; {} reports: {by_cause}",
                expected.len(),
                self.reports.list.len()
            ),
            details,
        ));
        lines.push(Line::new(
            "no unexplained death",
            unexplained.is_empty() && self.reports.unreadable.is_empty(),
            format!(
                "{} report(s) not caused by a fault",
                unexplained.len() + self.reports.unreadable.len()
            ),
            unexplained
                .iter()
                .map(|r| {
                    format!(
                        "{}: {} pid {} died: {}",
                        r.file,
                        self.short(&r.role),
                        r.pid,
                        r.cause
                    )
                })
                .chain(
                    self.reports
                        .unreadable
                        .iter()
                        .map(|f| format!("{f}: no pid or role")),
                )
                .collect(),
        ));

        // Faults went in as planned, and ward did right by each at once.
        let problems: Vec<String> = self
            .injected
            .iter()
            .flat_map(|f| f.problems.iter().map(move |p| format!("{}: {p}", f.label)))
            .collect();
        let kinds: HashSet<FaultKind> = self.injected.iter().map(|f| f.kind).collect();
        let missing: Vec<&str> = self
            .opts
            .faults
            .iter()
            .filter(|k| !kinds.contains(k))
            .map(|k| k.name())
            .collect();
        let mut details = problems.clone();
        let overflows = self.log_lines_with(faults::OVERFLOWED);
        let stops = self.counts.get("stop-server").copied().unwrap_or(0);
        if stops > 0 && overflows == 0 {
            details.push(format!(
                "stop-server: {stops} SIGSTOP(s), but the kernel's event queue never overflowed: \
                 the fault did not test the overflow path"
            ));
        }
        if !missing.is_empty() {
            details.push(format!(
                "never injected (run too short or interrupted): {}",
                missing.join(", ")
            ));
        }
        lines.push(Line::new(
            "faults injected and survived",
            details.is_empty(),
            format!(
                "{} injected ({} kinds of {} asked for); kernel queue overflows logged: {overflows}",
                self.injected.len(),
                kinds.len(),
                self.opts.faults.len()
            ),
            details,
        ));

        // Memory.
        for (role, samples) in [
            ("keeper", &self.samples.keeper),
            ("server", &self.samples.server),
        ] {
            let samples = lock(samples).clone();
            let warmup = if self.opts.quick { 5.0 } else { 30.0 };
            let line = match check::rss_figures(&samples, warmup) {
                // Half a minute of one server's life, with the tree still growing and the
                // manifest's cache filling, cannot tell a leak from a warm-up (seeds 48 and 49
                // grew 14-18 MiB that way): a quick run checks the bound, longer runs the slope.
                Some(r) if self.opts.quick => {
                    let cap_mib = if role == "keeper" {
                        QUICK_KEEPER_CAP_MIB
                    } else {
                        QUICK_SERVER_CAP_MIB
                    };
                    let peak_mib = r.peak_kib as f64 / 1024.0;
                    let within = peak_mib <= cap_mib;
                    let sign = if within { '≤' } else { '>' };
                    Line::new(
                        &format!("{role} RSS: bounded (quick run)"),
                        within,
                        format!(
                            "peak {peak_mib:.1} MiB {sign} {cap_mib} MiB; slope {:+.2} MiB/min over {:.0} s, judged only in runs of minutes",
                            r.slope_kib_per_min / 1024.0,
                            r.judged_s
                        ),
                        vec![format!("see rss.svg; the {role}'s memory passed its bound")],
                    )
                }
                Some(r) => {
                    let judged = if r.judged_s >= check::MIN_JUDGED_S {
                        format!(
                            "slope {:+.2} MiB/min, growth {:+.1} MiB over {:.0} s of one pid",
                            r.slope_kib_per_min / 1024.0,
                            r.growth_kib as f64 / 1024.0,
                            r.judged_s
                        )
                    } else {
                        format!(
                            "growth not judged: longest life of one pid {:.0} s",
                            r.judged_s
                        )
                    };
                    Line::new(
                        &format!("{role} RSS: no sustained growth"),
                        !r.sustained && r.judged_s >= check::MIN_JUDGED_S,
                        format!(
                            "peak {:.1} MiB, {judged} ({} samples)",
                            r.peak_kib as f64 / 1024.0,
                            samples.len()
                        ),
                        vec![format!(
                            "see rss.svg; the {role}'s memory rose steadily or could not be judged"
                        )],
                    )
                }
                None => Line::new(
                    &format!("{role} RSS: no sustained growth"),
                    false,
                    "no sample".into(),
                    Vec::new(),
                ),
            };
            lines.push(line);
        }

        // Latency and throughput.
        let lat = check::latencies(&writes, entries);
        let mut everything: Vec<u64> = lat.iter().map(|(_, ms)| *ms).collect();
        everything.sort_unstable();
        let mut single: Vec<u64> = lat
            .iter()
            .filter(|(w, _)| matches!(*w, "steady" | "edit" | "churn"))
            .map(|(_, ms)| *ms)
            .collect();
        single.sort_unstable();
        let pct =
            |v: &[u64], q| check::percentile(v, q).map_or("-".to_owned(), |ms| format!("{ms} ms"));
        let p50 = check::percentile(&single, 0.5);
        lines.push(Line::new(
            "latency write→job start: p50 ≤ 1 s",
            p50.is_some_and(|ms| ms <= 1000),
            format!(
                "single changes p50 {}, p99 {} (n={}); all p50 {}, p99 {} (n={})",
                pct(&single, 0.5),
                pct(&single, 0.99),
                single.len(),
                pct(&everything, 0.5),
                pct(&everything, 0.99),
                everything.len()
            ),
            vec!["single changes: the steady, editor and churn workloads; all: bursts and fault files too".into()],
        ));
        let done = entries.iter().filter(|e| e.phase == Phase::Done).count();
        let burst = self.burst.as_ref().map(|b| {
            let want: HashSet<String> = b
                .files
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect();
            let mut seen = HashSet::new();
            let mut last = b.written_ms.1;
            for e in entries.iter().filter(|e| e.phase == Phase::Done) {
                if want.contains(&e.path) && seen.insert(e.path.as_str()) {
                    last = last.max(e.t_ms);
                }
            }
            let secs = (last.saturating_sub(b.written_ms.0)) as f64 / 1000.0;
            (b.files.len(), seen.len(), secs)
        });
        let (burst_ok, burst_text) = match burst {
            Some((n, seen, secs)) => {
                let rate = seen as f64 / secs.max(0.001);
                (
                    seen == n && rate >= 50.0,
                    format!("burst of {n}: {seen} processed in {secs:.1} s ({rate:.0}/s)"),
                )
            }
            None => (false, "no burst ran".into()),
        };
        lines.push(Line::new(
            "throughput: the burst drains at ≥ 50 jobs/s",
            burst_ok,
            format!(
                "{done} jobs done in {:.0} s ({:.1}/s); {burst_text}",
                v.run_s,
                done as f64 / v.run_s.max(1.0)
            ),
            vec![burst_text.clone()],
        ));

        let restarts = self.restarts.counted;
        lines.push(Line::new(
            "restarts: one per server kill",
            restarts == self.restarts.expected,
            format!("{restarts} server restart(s) for {} server kill(s)", self.restarts.expected),
            vec![format!(
                "the keeper restarted the server {restarts} time(s); the harness killed it {} time(s)",
                self.restarts.expected
            )],
        ));

        let final_queue = v
            .status
            .map(|s| s["queue"].to_string())
            .unwrap_or_else(|| "no status".into());
        lines.push(Line::new(
            "settled after the run",
            v.settled,
            format!(
                "{} in {:.1} s; peak queued seen {}, status unanswered {} time(s)",
                if v.settled { "idle" } else { "still busy" },
                v.settle_s,
                self.samples.peak_queued.load(Ordering::Relaxed),
                self.samples.status_failures.load(Ordering::Relaxed)
            ),
            vec![format!("queue at the end: {final_queue}")],
        ));

        let stop_ok = matches!(v.stopped, Ok(r) if r.code == Some(0));
        let stop_text = match v.stopped {
            Ok(r) => format!(
                "ward stop: exit {:?}{} {}",
                r.code,
                if r.timed_out { " (timed out)" } else { "" },
                r.stderr.trim()
            ),
            Err(e) => format!("ward stop: {e:#}"),
        };
        lines.push(Line::new(
            "no orphan process after stop",
            v.left.is_empty() && stop_ok,
            format!("{} left; {stop_text}", v.left.len()),
            v.left
                .iter()
                .map(|(p, c)| format!("pid {p}: {c}"))
                .chain([stop_text.clone()])
                .collect(),
        ));
        lines.push(Line::new(
            "no stale pidfile",
            v.stale.is_empty(),
            if v.stale.is_empty() {
                "ward.pid and ward.sock removed".into()
            } else {
                format!("left: {}", v.stale.join(", "))
            },
            Vec::new(),
        ));
        if !v.writer_errors.is_empty() || self.ledger.malformed > 0 {
            let mut details = v.writer_errors.to_vec();
            if self.ledger.malformed > 0 {
                details.push(format!(
                    "{} malformed ledger entries",
                    self.ledger.malformed
                ));
            }
            lines.push(Line::new(
                "harness: workloads ran cleanly",
                false,
                format!("{} problem(s)", details.len()),
                details,
            ));
        }
        lines
    }

    /// Lines of ward's log (rotated files included) that contain `needle`.
    fn log_lines_with(&self, needle: &str) -> usize {
        self.ward.log_lines_with(needle)
    }

    fn since_start(&self, t_ms: u64) -> f64 {
        let start_ms = now_ms().saturating_sub(self.started.elapsed().as_millis() as u64);
        (t_ms as f64 - start_ms as f64) / 1000.0
    }

    fn short(&self, path: &str) -> String {
        let root = self.tree.to_string_lossy();
        path.replace(root.as_ref(), "tree")
    }

    fn write_outputs(&self, lines: &[Line], dir: &Path) -> anyhow::Result<()> {
        let out = &self.opts.out;
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        let writes = self.log.snapshot();
        let lat = check::latencies(&writes, &self.ledger.entries);
        let keeper = lock(&self.samples.keeper).clone();
        let server = lock(&self.samples.server).clone();
        let windows: Vec<(f64, f64, String)> = self
            .injected
            .iter()
            .map(|f| {
                let start = self.since_start(f.start_ms);
                (
                    start,
                    start + (f.end_ms - f.start_ms) as f64 / 1000.0,
                    f.label.clone(),
                )
            })
            .collect();
        let svg = plot::svg(
            &keeper,
            &server,
            &windows,
            &lat.iter().map(|(_, ms)| *ms).collect::<Vec<_>>(),
        );
        std::fs::write(out.join("stress.svg"), svg)?;
        let rss = |s: &[RssSample]| -> Vec<Value> {
            s.iter()
                .map(|s| json!([(s.t_s * 10.0).round() / 10.0, s.pid, s.rss_kib]))
                .collect()
        };
        let report = json!({
            "options": {
                "quick": self.opts.quick,
                "duration_s": self.opts.duration.as_secs_f64(),
                "rate": self.opts.rate,
                "faults": self.opts.faults.iter().map(|k| k.name()).collect::<Vec<_>>(),
                "seed": self.opts.seed,
            },
            "pass": lines.iter().all(|l| l.pass),
            "verdict": lines.iter().map(|l| json!({
                "check": l.check, "pass": l.pass, "figure": l.figure, "details": l.details,
            })).collect::<Vec<_>>(),
            "faults": self.injected.iter().map(|f| json!({
                "label": f.label, "at_s": (f.at_s * 10.0).round() / 10.0,
                "window_ms": f.end_ms - f.start_ms, "note": f.note, "problems": f.problems,
                "expected_deaths": f.expected.iter().map(|e| json!({
                    "role_contains": e.role_contains, "pid": e.pid, "causes": e.causes,
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "reports": self.reports.list.iter().map(|r| json!({
                "file": r.file, "pid": r.pid, "role": r.role, "cause": r.cause,
            })).collect::<Vec<_>>(),
            "changes_made": writes.len(),
            "ledger_entries": self.ledger.entries.len(),
            "latency_ms": latency_summary(&lat),
            "rss_kib": { "columns": ["t_s", "pid", "rss_kib"], "keeper": rss(&keeper), "server": rss(&server) },
        });
        std::fs::write(out.join("stress.json"), serde_json::to_vec_pretty(&report)?)?;
        // ward's own account, for whoever reads a FAIL.
        let log = self.ward.state.join("ward.log");
        if log.exists() {
            std::fs::copy(&log, out.join("ward.log"))?;
        }
        println!(
            "stress: report {}, plot {}, ward's log {}{}",
            out.join("stress.json").display(),
            out.join("stress.svg").display(),
            out.join("ward.log").display(),
            if self.opts.keep {
                String::new()
            } else {
                format!(" ({} is removed)", dir.display())
            }
        );
        Ok(())
    }
}

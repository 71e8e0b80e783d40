//! One stress run: sets up ward in a temporary directory, runs the workloads and the schedule of
//! faults against `ward start`, then settles, gathers the evidence, has it judged, stops ward and
//! sweeps; and the cleanup after runs killed before they could. The faults (`faults/`), the
//! sampler, the verdict and the report files live in modules of their own.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::Value;

use super::check::{self, Report};
use super::config::ConfigFile;
use super::daemon::{self, Ward, signal, wait_until};
use super::faults::{self, FaultKind, Findings, Injected, Step};
use super::follow::Follower;
use super::ledger;
use super::nats::NatsSide;
use super::outputs;
use super::sampler::{self, Samples};
use super::scene::{LedgerTail, PendingRemoval, Restarts, Scene};
use super::verdict::{self, Evidence};
use super::workload::{self, WriteLog, Writers, lock, now_ms};
use super::{Options, changes, failures, host};

/// Set by Ctrl-C, SIGTERM or SIGHUP: every loop of the run checks it and goes to the orderly end.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// The least time between the end of one step of the schedule and the start of the next.
const STEP_GAP_S: f64 = 2.0;

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
pub struct Reports {
    seen: HashSet<String>,
    /// The reports read.
    pub list: Vec<Report>,
    /// The files of reports without a pid or a role.
    pub unreadable: Vec<String>,
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
                    written_ms: v["written_wall_ms"].as_u64(),
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
    /// A subscriber through the whole run (`ward changes --follow`).
    follower: Option<Follower>,
    /// The NATS server and `ward work` of the `nats` trigger, when `kill-nats` or `kill-work`
    /// is asked for.
    nats: Option<NatsSide>,
}

/// The burst of new files, once written.
#[derive(Debug, Clone)]
pub struct Burst {
    dir: PathBuf,
    /// Its files.
    pub files: Vec<PathBuf>,
    /// When its first and its last file were written, milliseconds since the epoch.
    pub written_ms: (u64, u64),
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
    let nats = if opts.faults.iter().any(|k| k.needs_nats()) {
        Some(NatsSide::start_server(&dir)?)
    } else {
        None
    };
    let config = ConfigFile {
        path: dir.join("ward.toml"),
        worker: worker_bin.to_path_buf(),
        ledger: ledger_path.clone(),
        nats: nats.as_ref().map(NatsSide::url),
        backend: opts.backend.clone(),
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
        follower: None,
        nats,
    };
    ward.start()?;
    let watching = ward
        .status()
        .and_then(|s| s["watch"]["backend"].as_str().map(str::to_owned))
        .unwrap_or_default();
    println!("stress: ward watches with {watching}");
    if let Some(asked) = opts.backend.as_deref().filter(|b| *b != "auto")
        && watching != asked
    {
        let _ = ward.run(&["stop"], Duration::from_secs(30));
        anyhow::bail!("asked ward to watch with {asked}, and it watches with {watching:?}");
    }
    if let Some(nats) = &mut run.nats {
        let work_config = dir.join("work.toml");
        std::fs::write(&work_config, run.config.work_text())?;
        nats.start_work(ward_bin, &work_config, &dir.join("work-state"), &tree)?;
    }
    run.started = Instant::now();
    run.follower = Some(Follower::start(&ward, &dir));

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

    let mark = run.follow_schedule();
    run.samples.set_phase("settling");
    writers.stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    run.tidy_pending(true);
    let settle = Instant::now();
    let (settled, busy) = run.settle(if opts.quick { 20 } else { 120 });
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
    let gave_up = failures::fetch(&ward, status.as_ref(), final_files.keys());
    let committed = status
        .as_ref()
        .and_then(|s| s["manifest"]["seq"].as_u64())
        .unwrap_or(0);
    let (heard, follows, follow_errors) = match run.follower.take() {
        Some(follower) => {
            let restarts = follower.restarts;
            let (heard, errors) = follower.finish(committed, Duration::from_secs(60));
            (heard, restarts, errors)
        }
        None => (Vec::new(), 0, Vec::new()),
    };
    sampling.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    eprintln!();

    // Before ward's stop: nothing of the run may be left once it returns.
    if let Some(nats) = &mut run.nats {
        run.findings.nats_end = nats.stop().map(|problem| {
            let log = std::fs::read_to_string(&nats.work_log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            format!("{problem}; its last lines: {}", tail.join(" | "))
        });
    }
    let (stopped, left, stale) = stop(&ward, &dir);

    let writer_errors = lock(&writers.errors).clone();
    let writes = run.log.snapshot();
    let evidence = Evidence {
        opts,
        ward: &run.ward,
        tree: &run.tree,
        started: run.started,
        injected: &run.injected,
        counts: &run.counts,
        findings: &run.findings,
        writes: &writes,
        ledger: &run.ledger,
        reports: &run.reports,
        samples: &run.samples,
        burst: run.burst.as_ref(),
        restarts: &run.restarts,
        reading: &reading,
        heard: (&heard, follows, &follow_errors),
        gave_up: &gave_up,
        final_files: &final_files,
        settled,
        busy: busy.as_deref(),
        settle_s,
        run_s,
        status: status.as_ref(),
        stopped: &stopped,
        left: &left,
        stale: &stale,
        writer_errors: &writer_errors,
    };
    let lines = verdict::lines(&evidence);
    let all_pass = lines.iter().all(|l| l.pass);
    println!("\n{}", check::table(&lines, 12));
    outputs::write(&evidence, &lines, &dir)?;
    if INTERRUPTED.load(Ordering::Relaxed) {
        println!("stress: interrupted; the verdict covers the part that ran");
    }
    if opts.keep {
        outputs::keep(&dir, &writes, &ward.state)?;
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

/// The orderly end: continues a server left stopped, runs `ward stop`, then looks for what is
/// left: what `ward stop` did, the processes still mentioning `dir` (pid, command line), and the
/// state files left behind.
fn stop(
    ward: &Ward,
    dir: &Path,
) -> (
    anyhow::Result<daemon::Ran>,
    Vec<(u32, String)>,
    Vec<&'static str>,
) {
    if let Some(server) = ward.server_pid() {
        signal(server, libc::SIGCONT);
    }
    let stopped = ward.run(&["stop", "--timeout", "30"], Duration::from_secs(60));
    let left = {
        let mut left = Vec::new();
        wait_until(Duration::from_secs(5), || {
            left = daemon::processes_mentioning(dir);
            left.is_empty()
        });
        left
    };
    let stale: Vec<&str> = ["ward.pid", "ward.sock"]
        .into_iter()
        .filter(|f| ward.state.join(f).exists())
        .collect();
    (stopped, left, stale)
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
        if !entry.path().join(outputs::KEPT).exists() {
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

impl Run<'_> {
    /// Takes the schedule's steps in turn, each once its time has come and the last has had its
    /// gap, until the schedule and the run's duration are through (or the run is interrupted);
    /// tidies the tree meanwhile. Returns ward's sequence number and the wall clock read at 40 %
    /// of the run, if ward answered.
    fn follow_schedule(&mut self) -> Option<(u64, u64)> {
        let opts = self.opts;
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
            let now = self.started.elapsed().as_secs_f64();
            self.tidy_pending(false);
            if let Some(follower) = &mut self.follower {
                follower.ensure();
            }
            if mark.is_none() && now >= opts.duration.as_secs_f64() * 0.4 {
                mark = changes::mark(&self.ward);
            }
            if let Some(&(at, step)) = steps.get(next) {
                if now >= at.max(calm_until) {
                    next += 1;
                    self.step(step);
                    calm_until = self.elapsed_s() + STEP_GAP_S;
                    continue;
                }
            } else if now >= opts.duration.as_secs_f64() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        mark
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
                    nats: self.nats.as_mut(),
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
    /// Waits up to `limit_s` for ward to go idle and stay so for a second; whether it did, and
    /// what kept it busy last (for the verdict: a queue, the watcher's pending paths, jobs left
    /// owed by the NATS consumer, or the ledger still growing).
    fn settle(&mut self, limit_s: u64) -> (bool, Option<String>) {
        let mut quiet_since: Option<(Instant, usize)> = None;
        let mut busy = None;
        let settled = wait_until(Duration::from_secs(limit_s), || {
            if INTERRUPTED.load(Ordering::Relaxed) {
                return true;
            }
            let Some(s) = self.ward.status() else {
                quiet_since = None;
                busy = Some("ward status unanswered".to_owned());
                return false;
            };
            // The jobs published are run once the consumer owes none: each delivered and
            // settled by `ward work`.
            let owed = self.nats.as_ref().map(NatsSide::owed);
            let idle = daemon::idle(&s) && owed.is_none_or(|o| o.is_some_and(|o| o.none()));
            self.ledger.refresh();
            let len = self.ledger.offset;
            match (idle, quiet_since) {
                (false, _) => {
                    quiet_since = None;
                    busy = Some(format!(
                        "state {}, queue {}, watch pending {}, NATS consumer: {}",
                        s["state"],
                        s["queue"],
                        s["watch"]["pending"],
                        match owed {
                            None => "(no NATS)".to_owned(),
                            Some(None) => "unknown (no answer)".to_owned(),
                            Some(Some(o)) => o.to_string(),
                        }
                    ));
                    false
                }
                (true, Some((since, l))) if l == len => since.elapsed() >= Duration::from_secs(1),
                (true, _) => {
                    quiet_since = Some((Instant::now(), len));
                    busy = Some("the ledger still growing".to_owned());
                    false
                }
            }
        }) && !INTERRUPTED.load(Ordering::Relaxed);
        (settled, busy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_are_read_once_with_their_cause_and_time() {
        let state = tempfile::tempdir().unwrap();
        let crashes = state.path().join("crashes");
        std::fs::create_dir(&crashes).unwrap();
        let report = serde_json::json!({
            "pid": 42, "role": "job exec on /t/a", "written_wall_ms": 1_700_000_000_123u64,
            "verdict": { "cause": { "kind": "native_crash", "signal_name": "SIGSEGV" },
                         "confidence": "high" },
        });
        std::fs::write(crashes.join("crash-1-42.json"), report.to_string()).unwrap();
        // Still being written: read on a later refresh.
        std::fs::write(crashes.join("crash-2-43.json"), "{\"pid\": 4").unwrap();
        std::fs::write(crashes.join("crash-1-42.txt"), "not a report").unwrap();
        let mut reports = Reports::default();
        reports.refresh(state.path());
        reports.refresh(state.path());
        assert_eq!(
            reports.list,
            [Report {
                file: "crash-1-42.json".into(),
                pid: 42,
                role: "job exec on /t/a".into(),
                cause: "native_crash SIGSEGV".into(),
                confidence: "high".into(),
                written_ms: Some(1_700_000_000_123),
            }]
        );
        assert!(reports.unreadable.is_empty());
    }
}

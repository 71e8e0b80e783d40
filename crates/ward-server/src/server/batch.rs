//! Batch triggers' runners: one thread per batch trigger, owning at most one running command,
//! which gets every path the trigger owes in one run. Not the settings nor how paths are encoded
//! (`crate::batch`), nor the per-path jobs (the pool's).
//!
//! The loop hands each job of a batch trigger to its runner ([`Batches::offer`]) instead of the
//! pool. The runner keeps the paths it owes as a set (one job per path, the latest wins), starts
//! a run once they settle (no new path for the settle window, or the longest wait since the
//! first), applies the trigger's `on_busy` to paths that arrive during a run, and sends each
//! path's outcome through the pool's [`OutcomeSender`], so the loop records them as it records
//! jobs'. A failed run is retried with the trigger's backoff; a path that failed as many times
//! as its retries allow gives up as a job does. A run stopped by ward's own stop records
//! nothing: its paths stay pending in the manifest and come back at the next start.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ward_supervisor::{Child, ChildSpec, Environment, Input, OutputTail};

use crate::batch::{BatchSettings, OnBusy, batch_argv, encode_paths};
use crate::config::{Config, Handler};
use crate::deaths::{self, Reported};
use crate::dispatch::{DUMP_WAIT, JobError, oom_before, with_settings};
use crate::intents::Intents;
use crate::jobs::{CompiledTrigger, Event, Job, Triggers};
use crate::manifest::{Failure, FileMeta};
use crate::metrics::{JobOutcome, METRICS};
use crate::outcomes::OutcomeSender;
use crate::output::{JOB_SHARE, LogShare, log_sink};
use crate::protocol::BatchStatus;
use crate::state::StateDir;

use super::runners;

/// The shortest settle window: a burst's paths reach the loop in many watcher batches, a few
/// milliseconds apart; a window shorter than their gaps would split the burst into many runs.
const MIN_SETTLE: Duration = Duration::from_millis(50);

/// How often a runner looks at its running command's exit, new paths and ward's stop.
const POLL: Duration = Duration::from_millis(50);

/// Lines of a run's output kept for its crash report.
const TAIL_LINES: usize = 40;

/// The prefix of the files named by `WARD_PATHS_FILE`, in the state directory.
const PATHS_FILE: &str = "batch-paths.";

/// What every runner needs, from the server.
#[derive(Debug)]
pub(super) struct Context {
    pub config: Config,
    pub state: StateDir,
    pub done: OutcomeSender,
    pub intents: Arc<Intents>,
    pub env: Environment,
    /// No run starts while set (`ward hold`, memory short): see [`Batches::set_held`].
    pub held: std::sync::atomic::AtomicBool,
}

/// The batch triggers' runners, made as their first job comes. Dropping it stops every run at
/// once and joins the threads; `runners.stop_at` and `runners.join` drain first.
#[derive(Debug, Default)]
pub(super) struct Batches {
    /// `None` in the backlog's tests, which have no batch trigger.
    context: Option<Arc<Context>>,
    pub(super) runners: runners::Runners<Arc<CompiledTrigger>, Owed>,
}

/// A batch trigger's runner: its trigger, the state it shares with the loop, its thread.
type Runner = runners::Runner<Arc<CompiledTrigger>, Owed>;
type Shared = runners::Shared<Owed>;

/// What a runner owes and has been told, shared with the loop.
#[derive(Debug, Default)]
pub(super) struct Owed {
    /// The paths not yet in a run, one job each (the latest).
    jobs: HashMap<PathBuf, Job>,
    /// Jobs offered so far: a run that sees the count rise has new paths waiting.
    arrivals: u64,
    first_arrival: Option<Instant>,
    last_arrival: Option<Instant>,
    /// The outcomes the loop had taken when the oldest of `jobs` was offered: that job may come
    /// from a comparison that knew of no later outcome (see [`RunnerThread::done`]).
    taken_at_oldest: Option<u64>,
    /// Whether the owed paths may start a run: `on_busy = "ignore"` clears it when a run ends,
    /// so that what came during the run waits for a later change (or the next start).
    woken: bool,
    /// ward's stop (a running command is stopped at its instant, and no run starts) and
    /// whether the thread has ended.
    life: runners::Life,
    /// A reload removed or changed the trigger: the runner ends once it owes nothing.
    retired: bool,
    /// The paths of the running command (0: none runs), for `ward status`.
    running: usize,
    /// Paths the runner holds for its next attempt (a failed run's, a restarted run's), not in
    /// `jobs`.
    held: usize,
    /// Runs started, retries included.
    runs: u64,
}

impl Batches {
    pub(super) fn new(context: Context) -> Batches {
        remove_stale_paths_files(&context.state);
        Batches {
            context: Some(Arc::new(context)),
            runners: runners::Runners::default(),
        }
    }

    /// Gives `job` to its trigger's runner, starting one if it has none.
    pub(super) fn offer(&mut self, job: Job) {
        let mut job = Some(job);
        for runner in self.runners.iter() {
            let Some(j) = job.take() else { return };
            if !Arc::ptr_eq(&runner.key, &j.trigger) {
                job = Some(j);
                continue;
            }
            let mut owed = runner.shared.state.lock();
            if owed.life.ended {
                job = Some(j);
                continue;
            }
            let now = Instant::now();
            if let Some(cx) = &self.context {
                // On the loop's thread, which takes outcomes: none is taken between a
                // comparison and the offer of its jobs.
                owed.taken_at_oldest.get_or_insert_with(|| cx.done.taken());
            }
            owed.arrivals += 1;
            owed.first_arrival.get_or_insert(now);
            owed.last_arrival = Some(now);
            owed.woken = true;
            owed.jobs.insert(j.path.to_path_buf(), j);
            drop(owed);
            runner.shared.wake.notify_one();
        }
        let Some(job) = job else { return };
        self.runners.reap_ended();
        let Some(context) = &self.context else {
            log::error!(
                "no batch runner for {}: it stays pending until the next start",
                job.path.display()
            );
            return;
        };
        match start_runner(Arc::clone(&job.trigger), Arc::clone(context)) {
            Ok(runner) => {
                self.runners.push(runner);
                self.offer(job);
            }
            Err(e) => log::error!(
                "cannot start the batch runner of trigger {}: {e}; {} stays pending until the next start",
                job.trigger.name(),
                job.path.display()
            ),
        }
    }

    /// Paths owed and not yet in a run: they count against the backlog's high-water mark, so
    /// that past it the loop takes no more watcher batches.
    pub(super) fn owed(&self) -> usize {
        self.runners
            .iter()
            .map(|r| r.shared.state.lock().jobs.len())
            .sum()
    }

    /// What `ward status` shows of each runner whose thread has not ended, and how many of
    /// them run their command now.
    pub(super) fn status(&self) -> (Vec<BatchStatus>, usize) {
        let mut running = 0;
        let shown = self
            .runners
            .iter()
            .filter_map(|r| {
                let owed = r.shared.state.lock();
                if owed.life.ended {
                    return None;
                }
                running += usize::from(owed.running > 0);
                Some(BatchStatus {
                    trigger: r.key.name().to_owned(),
                    running: owed.running > 0,
                    running_paths: owed.running,
                    owed: owed.jobs.len() + owed.held,
                    runs: owed.runs,
                    retired: owed.retired,
                })
            })
            .collect();
        (shown, running)
    }

    /// After a reload: the runners of triggers no longer in `triggers` run what they owe, then
    /// end.
    pub(super) fn retire_gone(&mut self, triggers: &Triggers) {
        for runner in self.runners.iter() {
            if triggers.position(&runner.key).is_none() {
                runner.shared.state.lock().retired = true;
                runner.shared.wake.notify_one();
            }
        }
        self.runners.reap_ended();
    }

    /// No run starts while `held` (a running one finishes); what comes meanwhile is owed, one
    /// job per path, and runs after.
    pub(super) fn set_held(&self, held: bool) {
        let Some(cx) = &self.context else { return };
        if cx.held.swap(held, Ordering::Relaxed) == held {
            return;
        }
        self.runners.wake_all();
    }
}

impl runners::RunnerState for Owed {
    fn life(&mut self) -> &mut runners::Life {
        &mut self.life
    }
}

/// Starts the runner of `trigger`.
fn start_runner(trigger: Arc<CompiledTrigger>, context: Arc<Context>) -> std::io::Result<Runner> {
    let name = format!("ward-batch-{}", trigger.name());
    Runner::start(Arc::clone(&trigger), name, move |shared| {
        RunnerThread::new(trigger, shared, context).run();
    })
}

/// How one attempt of a run ended.
enum Ran {
    Ok,
    Failed(JobError),
    /// ward is stopping: nothing to record.
    Stopped,
    /// `on_busy = "restart"` stopped it for new paths.
    Restarted,
}

/// A runner's own state, on its thread.
struct RunnerThread<'a> {
    trigger: Arc<CompiledTrigger>,
    settings: BatchSettings,
    shared: &'a Shared,
    cx: Arc<Context>,
    /// The paths of the next attempt (kept across a failure or a restart).
    run: HashMap<PathBuf, Job>,
    /// Failed attempts per path of `run`.
    failed: HashMap<PathBuf, u32>,
    retry_at: Option<Instant>,
    /// The versions successful runs processed, each with the count of outcomes sent once its
    /// run's were ([`OutcomeSender::sent`]). A job for one of them, offered again unchanged by a
    /// comparison with the manifest that knew nothing of that run's outcome yet, is recorded with
    /// that run rather than run again. A version is kept until the loop has taken its outcome
    /// and no job offered before that waits: no later comparison can miss it. Several runs can
    /// end while a comparison (or the loop) is busy, so more than the last run's are kept.
    done: HashMap<PathBuf, (FileMeta, u64)>,
}

impl<'a> RunnerThread<'a> {
    fn new(trigger: Arc<CompiledTrigger>, shared: &'a Shared, cx: Arc<Context>) -> Self {
        let settings = trigger.batch().copied().unwrap_or_default();
        RunnerThread {
            trigger,
            settings,
            shared,
            cx,
            run: HashMap::new(),
            failed: HashMap::new(),
            retry_at: None,
            done: HashMap::new(),
        }
    }

    fn run(mut self) {
        let settle = self.cx.config.debounce.max(MIN_SETTLE);
        let longest = self.cx.config.max_wait.max(settle);
        loop {
            let seen = {
                let mut owed = self.shared.state.lock();
                loop {
                    if owed.life.stop_at.is_some() {
                        owed.life.ended = true;
                        return;
                    }
                    let now = Instant::now();
                    let settled = match (owed.first_arrival, owed.last_arrival) {
                        (Some(first), Some(last))
                            if !owed.jobs.is_empty() && (owed.woken || owed.retired) =>
                        {
                            Some((last + settle).min(first + longest))
                        }
                        _ => None,
                    };
                    let retry = self.retry_at.filter(|_| !self.run.is_empty());
                    let next = match (retry, settled) {
                        (Some(r), Some(s)) => Some(r.min(s)),
                        (r, s) => r.or(s),
                    };
                    // A restarted run waits for its new paths to settle, and only for them.
                    let next = next.or((!self.run.is_empty()).then_some(now));
                    match next {
                        // Held: woken by the release (or a stop).
                        Some(at) if at <= now && self.cx.held.load(Ordering::Relaxed) => {
                            self.shared.wake.wait(&mut owed);
                        }
                        Some(at) if at <= now => break,
                        Some(at) => {
                            self.shared.wake.wait_until(&mut owed, at);
                        }
                        None if owed.retired => {
                            owed.life.ended = true;
                            return;
                        }
                        None => self.shared.wake.wait(&mut owed),
                    }
                }
                for (path, job) in owed.jobs.drain() {
                    if self.recorded_unchanged(&path, &job) {
                        continue;
                    }
                    // A new change of a path is a new job: its attempts start over.
                    self.failed.remove(&path);
                    self.run.insert(path, job);
                }
                owed.held = self.run.len();
                owed.first_arrival = None;
                owed.last_arrival = None;
                self.forget_known(&mut owed);
                owed.arrivals
            };
            self.retry_at = None;
            let versions = self.versions();
            let began = Instant::now();
            let ran = self.attempt(seen);
            let name = self.trigger.name();
            if matches!(ran, Ran::Ok | Ran::Failed(_)) {
                METRICS.job_ran(name, began.elapsed());
            }
            let ran_ok = matches!(ran, Ran::Ok);
            match ran {
                Ran::Ok => {
                    METRICS.job_ended(name, JobOutcome::Succeeded);
                    self.succeeded(&versions);
                }
                Ran::Failed(error) => {
                    let gave_up = self.failed(&error);
                    let outcome = if gave_up {
                        JobOutcome::GaveUp
                    } else {
                        JobOutcome::Retried
                    };
                    METRICS.job_ended(self.trigger.name(), outcome);
                }
                Ran::Stopped => {
                    self.shared.state.lock().life.ended = true;
                    return;
                }
                Ran::Restarted => {}
            }
            // One lock: `ward status` never sees the run over while an ignored change is still
            // free to start the next one.
            let mut owed = self.shared.state.lock();
            if ran_ok {
                // After its outcomes are sent: the count covers them.
                let sent = self.cx.done.sent();
                for (path, version) in versions {
                    if let Some(version) = version {
                        self.done.insert(path, (version, sent));
                    }
                }
                owed.jobs
                    .retain(|path, job| !self.recorded_unchanged(path, job));
                if owed.jobs.is_empty() {
                    owed.first_arrival = None;
                    owed.last_arrival = None;
                }
                self.forget_known(&mut owed);
            }
            if self.settings.on_busy == OnBusy::Ignore {
                owed.woken = false;
            }
            owed.running = 0;
            owed.held = self.run.len();
        }
    }

    /// Whether `job` asks for a version of `path` that a successful run already processed (in
    /// `done`, the versions it read) and the file still is: then it is recorded as processed
    /// with it, not run. Such a job comes from a comparison with the manifest that ran before
    /// the run's outcome was recorded (a rescan, a start): it is no change, and would cost a
    /// run (or, with `on_busy = "ignore"`, stay owed until some later change). A version an
    /// earlier run processed is never the file's again once it changed (its ctime moved), so
    /// a real change always runs.
    fn recorded_unchanged(&self, path: &Path, job: &Job) -> bool {
        let Some((version, _)) = self.done.get(path) else {
            return false;
        };
        if job.event == Event::Removed
            || job.old_path.is_some()
            || FileMeta::read(path).as_ref() != Some(version)
        {
            return false;
        }
        self.cx.done.succeeded(job, Some(*version));
        true
    }

    /// Forgets the versions no job can still be a stale offer of: those whose outcomes the loop
    /// had taken before the oldest job owed was offered (or, none owed, by now; a job offered
    /// later comes from a comparison that knew them). Under the runner's lock, after the jobs
    /// owed were checked against them.
    fn forget_known(&mut self, owed: &mut Owed) {
        if owed.jobs.is_empty() {
            owed.taken_at_oldest = None;
        }
        let known = owed.taken_at_oldest.unwrap_or_else(|| self.cx.done.taken());
        self.done.retain(|_, (_, sent)| *sent > known);
    }

    /// The version of each path the run processes, read before it runs: what a success records.
    fn versions(&self) -> HashMap<PathBuf, Option<FileMeta>> {
        self.run
            .values()
            .map(|job| {
                let version = if job.event == Event::Removed {
                    None
                } else {
                    FileMeta::read(&job.path)
                };
                (job.path.to_path_buf(), version)
            })
            .collect()
    }

    /// Runs the command once for the paths of `run`; `seen` is the count of arrivals it owes
    /// nothing for.
    fn attempt(&self, mut seen: u64) -> Ran {
        let name = self.trigger.name();
        let Handler::Exec { argv } = self.trigger.handler() else {
            // Refused by the config: a worker trigger is never a batch trigger.
            return Ran::Failed(JobError::Spawn(
                "a batch trigger needs an exec command".into(),
            ));
        };
        let mut paths: Vec<PathBuf> = Vec::with_capacity(self.run.len());
        for job in self.run.values() {
            if !self.trigger.receives(job.event) {
                continue;
            }
            paths.push(job.path.to_path_buf());
            paths.extend(job.old_path.clone());
        }
        if paths.is_empty() {
            // Only events the trigger does not receive: recorded without a run.
            return Ran::Ok;
        }
        paths.sort();
        paths.dedup();
        // Before the command can tell its consumer anything: a killed server's next start still
        // knows of each path.
        self.cx.intents.record_all(&paths);
        let bytes = encode_paths(&paths, self.settings.paths_nul);
        // A copy for the command's convenience: the paths are on its stdin in any case, so a
        // state directory that cannot take the file (a full disk) costs the copy, not the run.
        // A command run as another user could not read a file in ward's own (0700) state
        // directory: it has its paths on stdin only.
        let as_another_user = self.trigger.process().user.is_some();
        let written = (!as_another_user).then(|| PathsFile::write(&self.cx.state, &bytes));
        let file = match written {
            None => None,
            Some(Ok(file)) => Some(file),
            Some(Err(e)) => {
                log::warn!(
                    "batch {name}: cannot write its paths file ({e}); WARD_PATHS_FILE is not set for this run, the paths are on its stdin"
                );
                None
            }
        };
        let (argv, fits) = batch_argv(argv, &paths);
        if !fits {
            log::info!(
                "batch {name}: {} path(s) do not fit in the command line: {{paths}} dropped, the paths are on stdin and in WARD_PATHS_FILE",
                paths.len()
            );
        }
        log::info!("batch {name}: running for {} path(s)", paths.len());
        let tail = OutputTail::new(TAIL_LINES);
        let share = LogShare::new(JOB_SHARE);
        // The trigger's settings, as its per-path jobs would get them.
        let process = self.trigger.process();
        let spec = ChildSpec::new(&argv[0])
            .name(name)
            .args(&argv[1..])
            .env_base(&self.cx.env);
        let mut spec = with_settings(spec, process)
            .stdin(Input::Piped)
            .env("WARD_EVENT", "batch")
            .env("WARD_PATHS_COUNT", paths.len().to_string());
        if let Some(file) = &file {
            spec = spec.env("WARD_PATHS_FILE", &file.0);
        }
        let spec = spec.capture_merged(log_sink(&tail, &share, "batch", name));
        let oom_before = oom_before(process);
        {
            let mut owed = self.shared.state.lock();
            owed.runs += 1;
            owed.running = paths.len();
            owed.held = 0;
        }
        let mut child = match Child::spawn_inline(&spec) {
            Ok(child) => child,
            Err(e) => {
                return Ran::Failed(JobError::Spawn(format!(
                    "{}: {e}",
                    argv[0].to_string_lossy()
                )));
            }
        };
        // A command that does not read its stdin must not hold the runner: the paths are
        // written by a thread of their own, which a broken pipe ends.
        let feeder = child.take_stdin().and_then(|mut stdin| {
            std::thread::Builder::new()
                .name("ward-batch-stdin".into())
                .spawn(move || {
                    let _ = stdin.write_all(&bytes);
                })
                .ok()
        });
        let timeout_at = Instant::now() + process.timeout;
        let exit = loop {
            if let Some(exit) = child.wait_timeout(POLL) {
                break exit;
            }
            let (stop_at, arrivals) = {
                let owed = self.shared.state.lock();
                (owed.life.stop_at, owed.arrivals)
            };
            let now = Instant::now();
            if stop_at.is_some_and(|at| now >= at) {
                log::warn!(
                    "stopping batch {name}: ward is stopping; its paths run at the next start"
                );
                if let Err(e) = child.stop(process.stop_grace) {
                    log::error!("stopping batch {name}: {e}");
                }
                drop(child);
                finish(feeder, &share, name);
                return Ran::Stopped;
            }
            if now >= timeout_at {
                log::warn!("stopping batch {name}: it timed out");
                match child.stop_hung(self.trigger.dump_signal(), DUMP_WAIT, process.stop_grace) {
                    Ok(exit) => break exit,
                    Err(e) => {
                        log::error!("stopping batch {name}: {e}");
                        drop(child);
                        finish(feeder, &share, name);
                        return Ran::Failed(JobError::TimedOut(process.timeout));
                    }
                }
            }
            if arrivals == seen {
                continue;
            }
            seen = arrivals;
            match self.settings.on_busy {
                OnBusy::Restart => {
                    log::info!("batch {name}: new paths; restarting it");
                    if let Err(e) = child.stop(process.stop_grace) {
                        log::error!("stopping batch {name} for a restart: {e}");
                    }
                    drop(child);
                    finish(feeder, &share, name);
                    return Ran::Restarted;
                }
                OnBusy::Signal => {
                    let signal = self.settings.signal;
                    log::info!(
                        "batch {name}: new paths; sending it {}",
                        ward_sys::signal::name(signal).unwrap_or("its signal")
                    );
                    if let Err(e) = child.signal_group(signal) {
                        log::warn!("signalling batch {name}: {e}");
                    }
                }
                OnBusy::Queue | OnBusy::Ignore => {}
            }
        };
        // Waits for the output to be read: the tail is complete.
        drop(child);
        finish(feeder, &share, name);
        drop(file);
        if exit.is_clean() {
            return Ran::Ok;
        }
        let what = format!("batch {name} ({} path(s))", paths.len());
        let Reported { cause, path } = deaths::report(
            &self.cx.state,
            &self.cx.config,
            &what,
            &exit,
            Some(&tail_text(&tail)),
            oom_before,
        )
        .unwrap_or_else(|| Reported {
            cause: exit.termination.to_string(),
            path: None,
        });
        Ran::Failed(JobError::Died {
            what,
            cause,
            report: path.map(|p| p.display().to_string()),
        })
    }

    fn succeeded(&mut self, versions: &HashMap<PathBuf, Option<FileMeta>>) {
        for (path, job) in self.run.drain() {
            self.failed.remove(&path);
            self.cx
                .done
                .succeeded(&job, versions.get(&path).copied().flatten());
        }
    }

    /// Counts the failure against each path of the run; those out of retries give up, the rest
    /// are tried again after the backoff, with whatever arrives meanwhile. Returns whether no
    /// path is left to try again.
    fn failed(&mut self, error: &JobError) -> bool {
        let retry = self.trigger.retry();
        let name = self.trigger.name().to_owned();
        let mut most = 0;
        let mut gave_up = 0;
        let paths: Vec<PathBuf> = self.run.keys().cloned().collect();
        for path in paths {
            let count = self.failed.entry(path.clone()).or_insert(0);
            *count += 1;
            let attempts = *count;
            if attempts <= retry.retries {
                most = most.max(attempts);
                continue;
            }
            self.failed.remove(&path);
            let Some(job) = self.run.remove(&path) else {
                continue;
            };
            gave_up += 1;
            self.cx
                .done
                .failed(&job, Some(failure(&job, attempts, error)));
        }
        if gave_up > 0 {
            log::error!("batch {name} failed ({error}): {gave_up} path(s) gave up");
        }
        if !self.run.is_empty() {
            let delay = retry.backoff_after(most);
            log::warn!(
                "batch {name} failed ({error}); {} path(s) retried in {delay:?}",
                self.run.len()
            );
            self.retry_at = Some(Instant::now() + delay);
        }
        self.run.is_empty()
    }
}

/// What a path that gave up records: as a job's give-up does.
fn failure(job: &Job, attempts: u32, error: &JobError) -> Failure {
    let report = match error {
        JobError::Died { report, .. } => report.as_ref().map(PathBuf::from),
        _ => None,
    };
    Failure::of(job, attempts, error.to_string(), report)
}

/// After the command's handle is dropped: the stdin feeder joined (the pipe is closed by now),
/// and what its share of the log held back said.
fn finish(feeder: Option<JoinHandle<()>>, share: &LogShare, name: &str) {
    if let Some(feeder) = feeder
        && feeder.join().is_err()
    {
        log::error!("batch {name}: the stdin feeder panicked");
    }
    if let Some(held) = share.take_held(0) {
        log::warn!("batch {name}: {held}");
    }
}

fn tail_text(tail: &OutputTail) -> String {
    tail.lines()
        .iter()
        .map(|l| l.text.as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The file named by `WARD_PATHS_FILE`, removed when dropped.
struct PathsFile(PathBuf);

impl PathsFile {
    fn write(state: &StateDir, bytes: &[u8]) -> std::io::Result<PathsFile> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = state.join(&format!("{PATHS_FILE}{}.{n}", std::process::id()));
        std::fs::write(&path, bytes).inspect_err(|_| {
            // A full disk leaves a part of it.
            let _ = std::fs::remove_file(&path);
        })?;
        Ok(PathsFile(path))
    }
}

impl Drop for PathsFile {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.0) {
            log::warn!("cannot remove {}: {e}", self.0.display());
        }
    }
}

/// Paths files a killed server left behind.
fn remove_stale_paths_files(state: &StateDir) {
    let Ok(entries) = std::fs::read_dir(state.path()) else {
        return;
    };
    for entry in entries.flatten() {
        if entry
            .file_name()
            .as_encoded_bytes()
            .starts_with(PATHS_FILE.as_bytes())
        {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcomes;
    use crate::tracker::tests::wait_for;

    /// Runs done, and nothing owed or running: the runner has decided on every job offered.
    fn settled_after(batches: &Batches, runs: u64) {
        wait_for(&format!("run {runs} to end with nothing owed"), || {
            let (shown, _) = batches.status();
            shown
                .first()
                .is_some_and(|s| s.runs == runs && !s.running && s.owed == 0)
        });
    }

    /// Regression: a runner remembered only the last successful run's versions. A comparison
    /// with the manifest made before the loop took an earlier run's outcome offers that run's
    /// path again, unchanged; once a second run had ended in between, the path was given to a
    /// third run (seen as paths given twice in a 50,000-file burst). The loop takes no outcome
    /// here, so every offer is such a comparison's.
    #[test]
    fn a_path_offered_again_unchanged_after_later_runs_is_recorded_not_run_again() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir(&tree).unwrap();
        let given = dir.path().join("given");
        let text = format!(
            "[watch]\nroots = [\"tree\"]\ndebounce_ms = 10\n\n[[trigger]]\nname = \"b\"\nbatch = true\n\
             exec = [\"sh\", \"-c\", \"cat >> {}\"]\n",
            given.display()
        );
        let config = Config::parse(&text, Path::new("ward.toml"), dir.path()).unwrap();
        let trigger = Arc::new(CompiledTrigger::new(&config.triggers[0]).unwrap());
        let state = StateDir::open(&dir.path().join("state")).unwrap();
        let (intents, _) = Intents::open(&state).unwrap();
        let (done_tx, done) = outcomes::channel(8);
        let mut batches = Batches::new(Context {
            config,
            state,
            done: done_tx,
            intents: Arc::new(intents),
            env: Environment::current(),
            held: std::sync::atomic::AtomicBool::new(false),
        });
        let job = |name: &str| {
            let path = tree.join(name);
            std::fs::write(&path, name).unwrap();
            Job {
                trigger: Arc::clone(&trigger),
                path: path.into(),
                event: Event::Created,
                old_path: None,
                seq: None,
            }
        };
        let (p, q) = (job("p"), job("q"));
        batches.offer(p.clone());
        settled_after(&batches, 1);
        batches.offer(q);
        settled_after(&batches, 2);
        // p's first run is two runs back, and its outcome is still not taken.
        let again = Job {
            event: Event::Modified,
            ..p.clone()
        };
        batches.offer(again);
        wait_for("the offer to be decided", || {
            let (shown, _) = batches.status();
            shown[0].owed == 0 && !shown[0].running
        });
        let p_line = p.path.display().to_string();
        let given_lines = std::fs::read_to_string(&given).unwrap();
        assert_eq!(
            given_lines.lines().filter(|l| *l == p_line).count(),
            1,
            "given: {given_lines}"
        );
        assert_eq!(batches.status().0[0].runs, 2);
        let p_outcomes = done.take().filter(|u| u.path() == &*p.path).count();
        assert_eq!(p_outcomes, 2, "the offer again is recorded, with its run");
        drop(batches);
    }
}

//! Running one job: an exec trigger's command, or a request to a persistent JSON-lines worker.
//!
//! Every process a job starts is a `ward_supervisor::Child` (own process group, parent-death
//! signal, reaped by its handle), its output is captured into the log, and every death other than
//! a clean exit is turned into a crash report naming the cause.

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::process::ChildStdout;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use ward_crashdiag::OomCounters;
use ward_supervisor::{Child, ChildSpec, Environment, Exit, Input, OutputTail};

use crate::Config;
use crate::config::{Handler, ProcessSettings};
use crate::deaths::{self, Reported};
use crate::jobs::{self, Job, Reply, Triggers};
use crate::output::{JOB_SHARE, LogShare, log_sink};
use crate::state::StateDir;

/// Lines of a job's output kept for its crash report.
const TAIL_LINES: usize = 40;
/// How long a job or worker past its timeout has, after its trigger's dump signal, to print its
/// stack (and usually die of the signal) before it is stopped.
pub(crate) const DUMP_WAIT: Duration = Duration::from_secs(2);
/// The longest reply line a worker may write; a longer one is a protocol violation.
const MAX_REPLY: usize = 1 << 20;

/// Why a job did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// The command or the worker said it failed.
    #[error("{0}")]
    Failed(String),
    /// The process died; `cause` is the crash report's verdict.
    #[error("{what} died: {cause}{}", report.as_ref().map(|r| format!(" (report {r})")).unwrap_or_default())]
    Died {
        /// Which process.
        what: String,
        /// The verdict.
        cause: String,
        /// Where the report is.
        report: Option<String>,
    },
    /// It ran past its deadline and was stopped.
    #[error("timed out after {0:?}")]
    TimedOut(Duration),
    /// It could not be started.
    #[error("cannot start: {0}")]
    Spawn(String),
    /// ward is stopping and the drain deadline passed while it ran; it was stopped and will run
    /// again at the next start.
    #[error("stopped: ward is shutting down")]
    Stopped,
    /// A worker broke the protocol; it has been replaced.
    #[error("worker protocol: {0}")]
    Protocol(String),
}

/// The text of the last lines a process wrote, for its crash report.
fn tail_text(tail: &OutputTail) -> String {
    tail.lines()
        .iter()
        .map(|l| l.text.as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

/// How a log line says that a hung process gets `dump` before it is stopped.
fn dump_first(dump: Option<i32>) -> String {
    match dump {
        Some(signal) => format!(
            " ({} first, for its stack)",
            ward_sys::signal::name(signal).unwrap_or("a dump signal")
        ),
        None => String::new(),
    }
}

/// `spec` with a trigger's process settings: its working directory, environment, nice value,
/// memory limit, user, and how it is stopped.
pub(crate) fn with_settings(spec: ChildSpec, process: &ProcessSettings) -> ChildSpec {
    let mut spec = spec
        .current_dir(&process.cwd)
        .stop_signal(process.stop_signal)
        .stop_grace(process.stop_grace);
    for name in &process.env_remove {
        spec = spec.env_remove(name);
    }
    for (name, value) in &process.env {
        spec = spec.env(name, value);
    }
    if let Some(nice) = process.nice {
        spec = spec.nice(nice);
    }
    if let Some(bytes) = process.memory_max {
        spec = spec.memory_max(bytes);
    }
    if let Some(who) = &process.user {
        spec = spec.user(who.uid, who.gid, who.groups.iter().copied());
    }
    spec
}

/// The OOM counters to compare a death with, read before the spawn of a process that gets a
/// memory cgroup of its own (whose counter starts at 0): its report can then tell a kill by the
/// cgroup's OOM killer from another SIGKILL. `None` for a process without a limit, whose report
/// goes by the kernel log alone, as before (reading `/proc/vmstat` for every job would cost each
/// one a file read).
pub(crate) fn oom_before(process: &ProcessSettings) -> Option<OomCounters> {
    process.memory_max.map(|_| OomCounters {
        cgroup_oom_kill: Some(0),
        ..OomCounters::read(None)
    })
}

/// A spawn request for the [`Spawner`]'s thread, with where to send the child.
type SpawnRequest = (
    ChildSpec,
    crossbeam_channel::Sender<ward_supervisor::Result<Child>>,
);

/// A thread that only spawns persistent workers. Linux sends a child's parent-death signal when
/// the *thread* that forked it exits; a worker outlives the job thread that first needed it (the
/// pool joins its threads while draining), so workers are forked here, by a thread that lives as
/// long as the dispatcher, and stop only when told to.
#[derive(Debug)]
struct Spawner {
    // Dropped (closing the channel) before the thread is joined in `Drop`.
    requests: Option<crossbeam_channel::Sender<SpawnRequest>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Spawner {
    fn start() -> io::Result<Spawner> {
        let (tx, rx) = crossbeam_channel::bounded::<SpawnRequest>(1);
        let thread = std::thread::Builder::new()
            .name("ward-spawner".into())
            .spawn(move || {
                for (spec, reply) in rx {
                    // The requester may have given up; the child is then dropped, which reaps it.
                    let _ = reply.send(Child::spawn(&spec));
                }
            })?;
        Ok(Spawner {
            requests: Some(tx),
            thread: Some(thread),
        })
    }

    fn spawn(&self, spec: ChildSpec) -> Result<Child, String> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let requests = self.requests.as_ref().ok_or("the spawner is stopped")?;
        requests
            .send((spec, tx))
            .map_err(|_| "the spawner thread is gone".to_owned())?;
        rx.recv()
            .map_err(|_| "the spawner thread is gone".to_owned())?
            .map_err(|e| e.to_string())
    }
}

impl Drop for Spawner {
    fn drop(&mut self) {
        drop(self.requests.take());
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            log::error!("the worker spawner thread panicked");
        }
    }
}

/// Runs jobs for the server: owns the idle persistent workers of each trigger.
#[derive(Debug)]
pub struct Dispatcher {
    triggers: Triggers,
    config: Config,
    state: StateDir,
    idle: Mutex<Vec<Vec<Worker>>>,
    next_worker: std::sync::atomic::AtomicU64,
    /// Set when ward stops: running jobs past it are stopped.
    stop_at: Mutex<Option<Instant>>,
    /// The server's environment, captured once: an exec job copies only its `WARD_*` variables.
    env: Environment,
    /// The connections of the publish triggers.
    #[cfg(feature = "nats")]
    publishers: crate::publish::Publishers,
    // Last: its thread is the parent of every worker in `idle`, so it must outlive them.
    spawner: Spawner,
}

impl Dispatcher {
    /// A dispatcher for `config`'s triggers.
    ///
    /// # Errors
    /// If a trigger's globs do not compile, or the spawner thread cannot be started.
    pub fn new(config: Config, state: StateDir) -> Result<Dispatcher, crate::Error> {
        Dispatcher::reloaded(config, state, None)
    }

    /// A dispatcher for `config`'s triggers that replaces `previous` (a reload): the triggers
    /// whose configuration did not change are taken over, so that their queued jobs are still
    /// theirs; jobs queued for a trigger the reload removed or changed run with the trigger as it
    /// was when they were queued.
    ///
    /// # Errors
    /// As [`Dispatcher::new`]; [`Error::MemoryLimit`](crate::Error::MemoryLimit) if a trigger
    /// has a memory limit and no memory cgroup can be made to enforce it.
    pub fn reloaded(
        config: Config,
        state: StateDir,
        previous: Option<&Dispatcher>,
    ) -> Result<Dispatcher, crate::Error> {
        // Refused here, at start (or reload), rather than job by job.
        if let Some(limited) = config
            .triggers
            .iter()
            .find(|t| t.process.memory_max.is_some())
            && let Err(source) = ward_supervisor::probe_memory_cgroup()
        {
            return Err(crate::Error::MemoryLimit {
                trigger: limited.name.clone(),
                source,
            });
        }
        let triggers = Triggers::reloaded(&config.triggers, previous.map(|p| &p.triggers))?;
        let idle = Mutex::new((0..triggers.len()).map(|_| Vec::new()).collect());
        let spawner = Spawner::start()
            .map_err(|e| crate::Error::io("starting the worker spawner thread", e))?;
        #[cfg(feature = "nats")]
        let publishers = crate::publish::Publishers::new(state.path());
        Ok(Dispatcher {
            triggers,
            config,
            state,
            idle,
            next_worker: 0.into(),
            stop_at: Mutex::new(None),
            env: Environment::current(),
            #[cfg(feature = "nats")]
            publishers,
            spawner,
        })
    }

    /// The compiled triggers.
    pub fn triggers(&self) -> &Triggers {
        &self.triggers
    }

    /// Persistent workers idle right now.
    pub fn idle_workers(&self) -> usize {
        self.idle.lock().iter().map(Vec::len).sum()
    }

    /// Runs `job` to completion on the calling thread (a pool thread, which lives as long as the
    /// processes it spawns need their parent-death signal tied to it).
    ///
    /// # Errors
    /// Why the job did not succeed.
    pub fn run(&self, job: &Job) -> Result<(), JobError> {
        if !job.trigger.receives(job.event) {
            log::debug!(
                "trigger {} does not receive {} events: {} recorded without a run",
                job.trigger.name(),
                job.event.as_str(),
                job.path.display()
            );
            return Ok(());
        }
        match job.trigger.handler() {
            Handler::Exec { argv } => self.run_exec(argv, job),
            Handler::Worker {
                argv,
                recycle_after,
                max_rss_bytes,
            } => self.run_on_worker(argv, *recycle_after, *max_rss_bytes, job),
            #[cfg(feature = "nats")]
            Handler::Publish(_) => self.publishers.publish(job, &self.config.roots),
            // Refused by the config loader of a build without the feature.
            #[cfg(not(feature = "nats"))]
            Handler::Publish(_) => Err(JobError::Spawn(
                "this ward was built without its `nats` feature".into(),
            )),
        }
    }

    fn run_exec(&self, argv: &[String], job: &Job) -> Result<(), JobError> {
        let name = job.trigger.name();
        let process = job.trigger.process();
        let (timeout, grace) = (process.timeout, process.stop_grace);
        let argv = jobs::exec_argv(argv, job);
        let tail = OutputTail::new(TAIL_LINES);
        // In the trigger's directory, the config file's unless it says otherwise, as a worker: a
        // relative path in the command means that directory.
        let spec = ChildSpec::new(&argv[0])
            .name(name)
            .args(&argv[1..])
            .env_base(&self.env);
        // The job's own variables last: no trigger setting replaces them.
        let mut spec = with_settings(spec, process);
        for (key, value) in jobs::job_env(job) {
            spec = spec.env(key, value);
        }
        let share = LogShare::new(JOB_SHARE);
        // One pipe: the log shows stdout and stderr in the order the job wrote them.
        let spec = spec.capture_merged(log_sink(&tail, &share, "job", name));
        let oom_before = oom_before(process);
        // The job thread waits for the job from start to end, so it reaps it too: the exit wakes
        // this thread, not a reaper thread that would then wake it.
        let child = Child::spawn_inline(&spec)
            .map_err(|e| JobError::Spawn(format!("{}: {e}", argv[0].to_string_lossy())))?;
        let timeout_at = Instant::now() + timeout;
        let exit = loop {
            // Slices, so that a shutdown's deadline set while the job runs is seen.
            let slice = timeout_at
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(100));
            if let Some(exit) = child.wait_timeout(slice) {
                break exit;
            }
            let stopping = self.stop_at.lock().is_some_and(|at| Instant::now() >= at);
            if stopping || Instant::now() >= timeout_at {
                let why = if stopping {
                    "ward is stopping".to_owned()
                } else {
                    format!("it timed out{}", dump_first(job.trigger.dump_signal()))
                };
                log::warn!("stopping job {name} on {}: {why}", job.path.display());
                // Past its deadline it is hung, not stopped on request: asked for its stack
                // first, and reported as hung.
                let stopped = if stopping {
                    child.stop(grace)
                } else {
                    child.stop_hung(job.trigger.dump_signal(), DUMP_WAIT, grace)
                };
                match stopped {
                    Ok(exit) if !stopping => break exit,
                    stopped => {
                        drop(child);
                        if let Some(held) = share.take_held(0) {
                            log::warn!("job {name} on {}: {held}", job.path.display());
                        }
                        return Err(match stopped {
                            Err(e) => {
                                log::error!("stopping job {name}: {e}");
                                JobError::TimedOut(timeout)
                            }
                            Ok(_) => JobError::Stopped,
                        });
                    }
                }
            }
        };
        drop(child); // waits for the output to be read and joins the sink thread: the tail is complete
        if let Some(held) = share.take_held(0) {
            log::warn!("job {name} on {}: {held}", job.path.display());
        }
        if exit.is_clean() {
            return Ok(());
        }
        let what = if exit.hung {
            format!(
                "job {name} on {} (timed out after {timeout:?})",
                job.path.display(),
            )
        } else {
            format!("job {name} on {}", job.path.display())
        };
        Err(self.died(&what, &exit, &tail_text(&tail), oom_before))
    }

    fn died(
        &self,
        what: &str,
        exit: &Exit,
        tail: &str,
        oom_before: Option<OomCounters>,
    ) -> JobError {
        let Reported { cause, path } = deaths::report(
            &self.state,
            &self.config,
            what,
            exit,
            Some(tail),
            oom_before,
        )
        .unwrap_or_else(|| Reported {
            cause: exit.termination.to_string(),
            path: None,
        });
        JobError::Died {
            what: what.to_owned(),
            cause,
            report: path.map(|p| p.display().to_string()),
        }
    }

    fn run_on_worker(
        &self,
        argv: &[String],
        recycle_after: u64,
        max_rss: u64,
        job: &Job,
    ) -> Result<(), JobError> {
        // A job queued before a reload for a trigger the reload removed or changed has no idle
        // list here: it gets a worker of its own, retired after it.
        let slot = self.triggers.position(&job.trigger);
        let checked_out = slot.and_then(|slot| self.idle.lock()[slot].pop());
        let mut worker = match checked_out {
            Some(w) => w,
            None => self.spawn_worker(argv, job.trigger.name(), job.trigger.process())?,
        };
        let timeout = job.trigger.process().timeout;
        let result = worker.request(job, timeout, &self.stop_at);
        // Its stderr is read by another thread: lines of this request may still come, and count
        // against the next one's share.
        if let Some(held) = worker.share.take_held(JOB_SHARE) {
            log::warn!(
                "worker {} during {}: {held}",
                worker.label,
                job.path.display()
            );
        }
        match result {
            Ok(reply) => {
                worker.jobs_done += 1;
                let worn = recycle_after > 0 && worker.jobs_done >= recycle_after;
                let fat = max_rss > 0 && worker.rss() > max_rss;
                match slot {
                    Some(slot) if !worn && !fat => self.idle.lock()[slot].push(worker),
                    Some(_) => {
                        log::info!(
                            "recycling worker {} after {} jobs (rss {} bytes)",
                            worker.label,
                            worker.jobs_done,
                            worker.rss()
                        );
                        worker.retire();
                    }
                    None => {
                        log::info!(
                            "retiring worker {}: a reload replaced its trigger",
                            worker.label
                        );
                        worker.retire();
                    }
                }
                match reply {
                    Reply::Ok => Ok(()),
                    Reply::Failed(error) => Err(JobError::Failed(error)),
                }
            }
            Err(WorkerTrouble::Died(exit)) => {
                let what = format!("worker {} during {}", worker.label, job.path.display());
                let (tail, oom_before) = (worker.tail.clone(), worker.oom_before);
                // Its last lines may still be in the pipe, or on their way to the tail: the
                // drop waits until the pipes are drained and every line is in.
                drop(worker);
                Err(self.died(&what, &exit, &tail_text(&tail), oom_before))
            }
            Err(WorkerTrouble::Protocol(problem)) => {
                log::warn!(
                    "worker {} broke the protocol ({problem}); replacing it",
                    worker.label
                );
                worker.retire();
                Err(JobError::Protocol(problem))
            }
            Err(WorkerTrouble::TimedOut) => {
                log::warn!(
                    "worker {} gave no reply within {timeout:?}; replacing it{}",
                    worker.label,
                    dump_first(job.trigger.dump_signal())
                );
                let what = format!(
                    "worker {} during {} (no reply within {timeout:?})",
                    worker.label,
                    job.path.display(),
                );
                let (tail, oom_before) = (worker.tail.clone(), worker.oom_before);
                // Past its deadline it is hung, not stopped on request: asked for its stack
                // first, and reported as hung once its output (the stack) is drained.
                match worker.retire_hung(job.trigger.dump_signal()) {
                    Some(exit) if exit.is_clean() => Err(JobError::TimedOut(timeout)),
                    Some(exit) => Err(self.died(&what, &exit, &tail_text(&tail), oom_before)),
                    None => Err(JobError::TimedOut(timeout)),
                }
            }
            Err(WorkerTrouble::Stopped) => {
                log::warn!("stopping worker {} mid-job: ward is stopping", worker.label);
                worker.retire();
                Err(JobError::Stopped)
            }
        }
    }

    fn spawn_worker(
        &self,
        argv: &[String],
        name: &str,
        process: &ProcessSettings,
    ) -> Result<Worker, JobError> {
        let number = self
            .next_worker
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        let label = format!("{name}#{number}");
        let tail = OutputTail::new(TAIL_LINES);
        let share = LogShare::new(JOB_SHARE);
        // Replies are read from stdout by the job thread itself: through the child's reaper and
        // an output sink they would cost two more thread wake-ups per request.
        let spec = ChildSpec::new(&argv[0])
            .name(label.clone())
            .args(&argv[1..]);
        let spec = with_settings(spec, process)
            .stdin(Input::Piped)
            .stdout_piped()
            .capture(log_sink(&tail, &share, "worker", &label));
        let oom_before = oom_before(process);
        let mut child = self
            .spawner
            .spawn(spec)
            .map_err(|e| JobError::Spawn(format!("worker {label}: {e}")))?;
        let stdin = child
            .take_stdin()
            .ok_or_else(|| JobError::Spawn(format!("worker {label}: no stdin pipe")))?;
        let stdout = child
            .take_stdout()
            .ok_or_else(|| JobError::Spawn(format!("worker {label}: no stdout pipe")))?;
        log::info!("worker {label} started (pid {})", child.id());
        Ok(Worker {
            label,
            child,
            stdin,
            replies: Replies::new(stdout),
            tail,
            share,
            jobs_done: 0,
            next_id: 0,
            stop_grace: process.stop_grace,
            oom_before,
        })
    }

    /// Jobs still running at `at` are stopped (their trigger's stop signal, then KILL after its
    /// grace): the end of the drain when ward stops.
    pub fn stop_running_at(&self, at: Instant) {
        *self.stop_at.lock() = Some(at);
    }

    /// Stops every idle worker (its trigger's stop signal, then KILL after its grace), in
    /// parallel.
    pub fn stop_workers(&self) {
        let workers: Vec<Worker> = self
            .idle
            .lock()
            .iter_mut()
            .flat_map(std::mem::take)
            .collect();
        if workers.is_empty() {
            return;
        }
        log::info!("stopping {} worker(s)", workers.len());
        let asked = Instant::now();
        for w in &workers {
            if let Err(e) = w.child.begin_stop() {
                log::warn!("stopping worker {}: {e}", w.label);
            }
        }
        for w in workers {
            match w.child.finish_stop(asked + w.stop_grace) {
                Ok(exit) => log::info!("worker {} exited: {}", w.label, exit.termination),
                Err(e) => log::error!("worker {} did not stop: {e}", w.label),
            }
        }
    }
}

/// How long a worker whose stdout closed may take to exit before it counts as alive.
const STDOUT_CLOSED_WAIT: Duration = Duration::from_secs(1);

/// Why no more replies can be read.
enum StdoutTrouble {
    /// EOF, or a read error.
    Closed(Option<io::Error>),
    TooLong,
}

/// A worker's stdout read as reply lines, on the thread waiting for the reply.
#[derive(Debug)]
struct Replies {
    stdout: ChildStdout,
    /// Bytes read past the last complete line.
    pending: Vec<u8>,
}

impl Replies {
    fn new(stdout: ChildStdout) -> Replies {
        Replies {
            stdout,
            pending: Vec::new(),
        }
    }

    /// A whole reply line already read, if there is one.
    fn buffered(&mut self) -> Option<String> {
        let end = self.pending.iter().position(|&b| b == b'\n')?;
        let line: Vec<u8> = self.pending.drain(..=end).collect();
        let line = line.strip_suffix(b"\n").unwrap_or(&line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        Some(String::from_utf8_lossy(line).into_owned())
    }

    /// The next reply line, waiting at most `timeout` for it (`None`: none yet).
    fn next(&mut self, timeout: Duration) -> Result<Option<String>, StdoutTrouble> {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        loop {
            if let Some(line) = self.buffered() {
                return Ok(Some(line));
            }
            if self.pending.len() > MAX_REPLY {
                return Err(StdoutTrouble::TooLong);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let mut fd = libc::pollfd {
                fd: self.stdout.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let millis = if left.is_zero() {
                0
            } else {
                // Rounded up, so a short wait is a wait and not a spin.
                left.as_millis().min(i32::MAX as u128 - 1) as i32 + 1
            };
            // SAFETY: one valid pollfd for a descriptor this worker owns.
            let ready = unsafe { libc::poll(&mut fd, 1, millis) };
            if ready < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(StdoutTrouble::Closed(Some(err)));
            }
            if ready == 0 {
                return Ok(None);
            }
            match self.stdout.read(&mut buf) {
                Ok(0) => return Err(StdoutTrouble::Closed(None)),
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(StdoutTrouble::Closed(Some(err))),
            }
        }
    }
}

enum WorkerTrouble {
    Died(Exit),
    Protocol(String),
    TimedOut,
    Stopped,
}

/// One persistent worker process and its side of the protocol.
#[derive(Debug)]
struct Worker {
    label: String,
    child: Child,
    stdin: std::process::ChildStdin,
    replies: Replies,
    tail: OutputTail,
    /// Its share of the log, renewed at each request.
    share: LogShare,
    jobs_done: u64,
    next_id: u64,
    /// Its trigger's, from the stop signal to SIGKILL.
    stop_grace: Duration,
    /// The OOM counters at its spawn, when it has a memory cgroup of its own.
    oom_before: Option<OomCounters>,
}

impl Worker {
    fn request(
        &mut self,
        job: &Job,
        timeout: Duration,
        stop_at: &Mutex<Option<Instant>>,
    ) -> Result<Reply, WorkerTrouble> {
        self.next_id += 1;
        let id = self.next_id;
        // A reply left over from before this request is a protocol violation too. One read
        // with the last reply is checked here; one still in the pipe is read as this request's
        // reply and refused for its id. (Polling the pipe here cost every job a system call.)
        if let Some(stale) = self.replies.buffered() {
            return Err(WorkerTrouble::Protocol(format!(
                "unrequested reply {stale:?}"
            )));
        }
        if self
            .stdin
            .write_all(&jobs::worker_request(id, job))
            .and_then(|()| self.stdin.flush())
            .is_err()
        {
            // A broken pipe means the worker is gone: wait for its exit to say why.
            return Err(WorkerTrouble::Died(self.child.wait()));
        }
        let deadline = Instant::now() + timeout;
        loop {
            // Short slices so a worker that dies without replying is noticed promptly.
            let slice = deadline
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(100));
            match self.replies.next(slice) {
                Ok(Some(line)) => {
                    return jobs::parse_reply(line.as_bytes(), id).map_err(WorkerTrouble::Protocol);
                }
                Ok(None) => {
                    if let Some(exit) = self.child.try_wait() {
                        return Err(WorkerTrouble::Died(exit));
                    }
                    if Instant::now() >= deadline {
                        return Err(WorkerTrouble::TimedOut);
                    }
                    if stop_at.lock().is_some_and(|at| Instant::now() >= at) {
                        return Err(WorkerTrouble::Stopped);
                    }
                }
                Err(trouble) => return Err(self.stdout_trouble(trouble)),
            }
        }
    }

    /// What a closed or broken stdout means: the worker died (its exit says how), or it closed
    /// its stdout and lives on, which breaks the protocol.
    fn stdout_trouble(&self, trouble: StdoutTrouble) -> WorkerTrouble {
        match trouble {
            StdoutTrouble::TooLong => {
                WorkerTrouble::Protocol(format!("a reply longer than {MAX_REPLY} bytes"))
            }
            StdoutTrouble::Closed(err) => match self.child.wait_timeout(STDOUT_CLOSED_WAIT) {
                Some(exit) => WorkerTrouble::Died(exit),
                None => WorkerTrouble::Protocol(match err {
                    Some(err) => format!("reading its stdout: {err}"),
                    None => "it closed its stdout".to_owned(),
                }),
            },
        }
    }

    fn rss(&self) -> u64 {
        ward_sys::ProcStatus::read(self.child.id())
            .ok()
            .and_then(|status| status.kib("VmRSS"))
            .map_or(0, |kib| kib * 1024)
    }

    /// Stops the worker (its stop signal, then KILL after its grace); its exit, if it could be
    /// stopped.
    fn retire(self) -> Option<Exit> {
        self.child
            .stop(self.stop_grace)
            .inspect_err(|e| log::error!("stopping worker {}: {e}", self.label))
            .ok()
    }

    /// Stops a worker past the job timeout: `dump` first, for its stack, then as
    /// [`retire`](Self::retire). Returns once its output is drained into its tail.
    fn retire_hung(self, dump: Option<i32>) -> Option<Exit> {
        self.child
            .stop_hung(dump, DUMP_WAIT, self.stop_grace)
            .inspect_err(|e| log::error!("stopping worker {}: {e}", self.label))
            .ok()
    }
}

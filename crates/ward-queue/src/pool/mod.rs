//! The pool's public face: [`Builder`], [`Pool`] and [`Policy`], the state its threads share,
//! how outcomes are reported, and the shutdown sequence. Not here: the submit paths (`submit`),
//! the worker threads (`worker`), the retry heap and the overseer thread (`overseer`), what
//! travels through the queue (`task`), and the key table's shards (`shards`; one table's state
//! machine is `crate::keys`).
//!
//! Where a job can be, so that none is lost: in the queue (a crossbeam bounded channel), waiting
//! in the key table, in the overseer's retry heap, running, or (after shutdown stopped the
//! workers) in the stash. `Pool::close` empties all of them after every pool thread has stopped.

mod overseer;
mod shards;
mod submit;
mod task;
mod worker;

use std::collections::BinaryHeap;
use std::fmt;
use std::hash::Hash;
use std::marker::PhantomData;
use std::mem::ManuallyDrop;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::{Condvar, Mutex};

use crate::metrics::{IntakeStats, Latency, Metrics, Stats, empty_counts};
use crate::retry::{RetryPolicy, mix};
use crate::{DropReason, Error, Event, JobError, JobId};

use overseer::{Timer, overseer_main};
use shards::KeyShards;
use task::{Queued, Task};
use worker::{WorkerCell, spawn_worker};

/// How long a submitter waiting out a pause, or shutdown waiting for the drain, sleeps at most
/// before looking again; `resume` wakes the former sooner.
const WAIT_SLICE: Duration = Duration::from_millis(2);

/// What a submit does when the queue is full (or intake paused).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Policy {
    /// Wait for room (or for intake to resume), at most `timeout` if given, then fail with
    /// [`Error::Timeout`]. A submitter that finds the queue full first gives the workers up to
    /// 2 ms to drain it to half, then takes the first slot that frees: a producer faster than
    /// its workers thus fills the queue by halves rather than waking once per job. One exception: a keyed job already replaced by a newer job of its key
    /// while its submitter waited has been accepted (and reported coalesced), so that submit
    /// keeps waiting past the timeout to queue the newer job's token, then returns `Ok`.
    Block {
        /// The longest wait; `None` waits as long as it takes.
        timeout: Option<Duration>,
    },
    /// Fail at once with [`Error::Full`] (or [`Error::Paused`]), the job inside.
    Reject,
    /// Evict the oldest queued job, reported as [`Event::Dropped`] with
    /// [`DropReason::Evicted`], and queue the new one. While intake is paused it rejects with
    /// [`Error::Paused`] instead, since evicting would not relieve the pressure.
    DropOldest,
    /// Run the job in the submitting thread, which slows the submitter down to the pool's pace.
    /// Such runs have no timeout (only pool workers can be replaced).
    CallerRuns,
}

impl Default for Policy {
    /// `Block` without a timeout.
    fn default() -> Self {
        Policy::Block { timeout: None }
    }
}

type Handler<J> = Box<dyn Fn(&J) -> Result<(), JobError> + Send + Sync>;
type Listener<J> = Box<dyn Fn(Event<J>) + Send + Sync>;

/// Keeps what one thread writes on every job off the cache lines (128 bytes: adjacent-line
/// prefetchers pair them) that other threads read on every job, such as the handler and `stop`.
#[repr(align(128))]
struct Padded<T>(T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

struct Crew {
    workers: Vec<(Arc<WorkerCell>, JoinHandle<()>)>,
    /// Workers given up on after a timeout; joined at shutdown if their job has returned.
    abandoned: Vec<(Arc<WorkerCell>, JoinHandle<()>)>,
    spawned: usize,
}

struct Config {
    workers: usize,
    capacity: usize,
    policy: Policy,
    retry: RetryPolicy,
    timeout: Option<Duration>,
    name: String,
}

struct Shared<J, K> {
    config: Config,
    handler: Handler<J>,
    /// `None`: failures are logged, the rest discarded (and `Completed` not even built).
    listener: Option<Listener<J>>,
    /// Copies a job for its `Retrying` event; set by `Builder::retry`, without which no job is
    /// retried.
    clone_job: Option<fn(&J) -> J>,
    /// Each job's own policy, when `Builder::retry_with` set it (else `config.retry`).
    retry_of: Option<fn(&J) -> RetryPolicy>,
    rx: Receiver<Queued<J>>,
    paused: AtomicBool,
    /// Submitters blocked by a pause wait here for resume or close.
    gate: Mutex<()>,
    gate_cv: Condvar,
    /// Submitters under `Block` waiting in `wait_for_room`; the workers wake them through
    /// `room_cv` once the queue is down to half.
    room_waiters: AtomicUsize,
    room: Mutex<()>,
    room_cv: Condvar,
    keys: KeyShards<K, Task<J>>,
    timer: Mutex<Timer<J>>,
    timer_cv: Condvar,
    /// Jobs workers received after `stop`, kept for `close` to return.
    stash: Mutex<Vec<Task<J>>>,
    /// Workers stop taking jobs (shutdown's deadline has passed).
    stop: AtomicBool,
    /// Workers start no attempt while it is set (`Pool::hold`): they wait on `hold_cv`. An
    /// atomic, so that a worker reads it without a lock before every attempt.
    held: AtomicBool,
    hold_lock: Mutex<()>,
    hold_cv: Condvar,
    /// Jobs a worker took from the queue and holds unstarted: still queued, for the metrics.
    waiting_in_hold: AtomicUsize,
    crew: Mutex<Crew>,
    next_id: Padded<AtomicU64>,
    seed: u64,
    intake_stats: IntakeStats,
    /// Stats of jobs run by submitters under `CallerRuns`.
    caller: WorkerCell,
}

/// Configures and starts a [`Pool`]; from [`Pool::builder`].
pub struct Builder<J, K = String> {
    config: Config,
    listener: Option<Listener<J>>,
    clone_job: Option<fn(&J) -> J>,
    retry_of: Option<fn(&J) -> RetryPolicy>,
    _key: PhantomData<fn() -> K>,
}

impl<J, K> fmt::Debug for Builder<J, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("workers", &self.config.workers)
            .field("capacity", &self.config.capacity)
            .field("policy", &self.config.policy)
            .field("retry", &self.config.retry)
            .field("timeout", &self.config.timeout)
            .field("name", &self.config.name)
            .finish_non_exhaustive()
    }
}

impl<J, K> Builder<J, K>
where
    J: Send + 'static,
    K: Eq + Hash + Clone + Send + 'static,
{
    /// Number of worker threads (default 2).
    pub fn workers(mut self, workers: usize) -> Self {
        self.config.workers = workers;
        self
    }

    /// How many jobs the queue holds before the submit policy applies (default 1024). The pool
    /// holds at most this many queued jobs, plus one deferred job per running key, plus this many
    /// jobs waiting for a retry.
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.config.capacity = capacity;
        self
    }

    /// What a submit does when the queue is full (default: block without timeout).
    pub fn policy(mut self, policy: Policy) -> Self {
        self.config.policy = policy;
        self
    }

    /// How failed jobs are retried (default: never).
    ///
    /// Retries need `J: Clone` because each [`Event::Retrying`] carries a copy of its job (the
    /// pool keeps the original to run again); the copy is made only when an attempt fails and
    /// is retried, never on the way to a first attempt.
    ///
    /// ```
    /// use std::sync::mpsc;
    /// use std::time::Duration;
    /// use ward_queue::{Event, JobError, Pool, RetryPolicy};
    ///
    /// let (events, outcomes) = mpsc::channel();
    /// let pool: Pool<String> = Pool::builder()
    ///     .retry(RetryPolicy::attempts(2).base_delay(Duration::from_millis(1)))
    ///     .on_event(move |event| events.send(event).unwrap())
    ///     .build(|_path: &String| Err(JobError::from("disk full")))?;
    /// pool.submit("src/lib.rs".to_owned())?;
    /// assert!(pool.shutdown(Duration::from_secs(10)).is_empty());
    ///
    /// let events: Vec<_> = outcomes.try_iter().collect();
    /// let Event::Retrying { job, attempt, failure, .. } = &events[0] else {
    ///     panic!("{:?}", events[0]);
    /// };
    /// assert_eq!((job.as_str(), *attempt), ("src/lib.rs", 1));
    /// assert_eq!(failure.to_string(), "error: disk full");
    /// assert!(matches!(&events[1], Event::Dead { job, .. } if job == "src/lib.rs"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn retry(mut self, retry: RetryPolicy) -> Self
    where
        J: Clone,
    {
        self.config.retry = retry;
        self.clone_job = Some(J::clone);
        self
    }

    /// Like [`Builder::retry`], with each job's policy read from the job: for jobs that carry
    /// their own settings (a job of a kind that may be retried five times beside one that must
    /// not be). `policy_of` runs on the worker thread after a failed attempt; a panic in it
    /// counts as "no retry".
    ///
    /// ```
    /// use std::time::Duration;
    /// use ward_queue::{Event, JobError, Pool, RetryPolicy};
    ///
    /// let (events, outcomes) = crossbeam_channel::unbounded();
    /// let pool = Pool::<u32, ()>::builder()
    ///     // A job's number is how many attempts it gets.
    ///     .retry_with(|n: &u32| RetryPolicy::attempts(*n).base_delay(Duration::from_millis(1)))
    ///     .on_event(move |event| events.send(event).unwrap())
    ///     .build(|_: &u32| Err(JobError::from("no")))?;
    /// pool.submit(3)?;
    /// assert!(pool.shutdown(Duration::from_secs(10)).is_empty());
    /// let dead = outcomes.try_iter().find_map(|e| match e {
    ///     Event::Dead { failures, .. } => Some(failures.len()),
    ///     _ => None,
    /// });
    /// assert_eq!(dead, Some(3));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn retry_with(mut self, policy_of: fn(&J) -> RetryPolicy) -> Self
    where
        J: Clone,
    {
        self.retry_of = Some(policy_of);
        self.clone_job = Some(J::clone);
        self
    }

    /// The longest one attempt may run on a worker before it is reported as timed out and the
    /// worker replaced (default: no limit). The stuck thread itself cannot be killed: see the
    /// crate docs.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.config.timeout = Some(timeout);
        self
    }

    /// Prefix of the pool's thread names (default `ward-queue`).
    pub fn thread_name(mut self, name: impl Into<String>) -> Self {
        self.config.name = name.into();
        self
    }

    /// Where outcomes go. The callback runs on whichever thread produced the event (a worker, a
    /// submitter, the overseer, or the thread dropping the pool), so it should be quick: sending
    /// into a channel is the usual choice. A panic in it is caught and logged. Without one,
    /// failures are logged and other events discarded.
    pub fn on_event(mut self, listener: impl Fn(Event<J>) + Send + Sync + 'static) -> Self {
        self.listener = Some(Box::new(listener));
        self
    }

    /// Starts the pool's threads; every job runs through `handler`. A job is handed to the
    /// handler by reference so that it can be retried, and given back in its final event. The
    /// handler fails an attempt by returning a [`JobError`]: any error converts into one with
    /// `?`, and a message with `JobError::from("...")` or `.into()` (see [`JobError`]).
    ///
    /// # Errors
    /// [`Error::Config`] for zero workers or zero capacity; [`Error::Spawn`] if a thread cannot
    /// be started (the threads already started are stopped and joined first).
    pub fn build<H>(self, handler: H) -> Result<Pool<J, K>, Error<J>>
    where
        H: Fn(&J) -> Result<(), JobError> + Send + Sync + 'static,
    {
        let config = self.config;
        if config.workers == 0 {
            return Err(Error::Config("a pool needs at least one worker"));
        }
        if config.capacity == 0 {
            return Err(Error::Config("a pool needs a capacity of at least one job"));
        }
        let (tx, rx) = crossbeam_channel::bounded(config.capacity);
        let seed = mix(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64));
        let workers = config.workers;
        let shared = Arc::new(Shared {
            handler: Box::new(handler),
            listener: self.listener,
            clone_job: self.clone_job,
            retry_of: self.retry_of,
            rx,
            paused: AtomicBool::new(false),
            gate: Mutex::new(()),
            gate_cv: Condvar::new(),
            room_waiters: AtomicUsize::new(0),
            room: Mutex::new(()),
            room_cv: Condvar::new(),
            keys: KeyShards::new(),
            timer: Mutex::new(Timer {
                heap: BinaryHeap::new(),
                seq: 0,
                tx: Some(tx.clone()),
                sealed: false,
                reserved: 0,
                quit: false,
            }),
            timer_cv: Condvar::new(),
            stash: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            held: AtomicBool::new(false),
            hold_lock: Mutex::new(()),
            hold_cv: Condvar::new(),
            waiting_in_hold: AtomicUsize::new(0),
            crew: Mutex::new(Crew {
                workers: Vec::new(),
                abandoned: Vec::new(),
                spawned: 0,
            }),
            next_id: Padded(AtomicU64::new(0)),
            seed,
            intake_stats: IntakeStats::default(),
            caller: WorkerCell::new(false),
            config,
        });
        let mut pool = Pool {
            tx: Some(tx),
            overseer: None,
            closed: false,
            shared,
        };
        let started = (0..workers)
            .try_for_each(|_| spawn_worker(&pool.shared))
            .and_then(|()| {
                let shared = Arc::clone(&pool.shared);
                thread::Builder::new()
                    .name(format!("{}-overseer", pool.shared.config.name))
                    .spawn(move || overseer_main(&shared))
            });
        match started {
            Ok(overseer) => {
                pool.overseer = Some(overseer);
                Ok(pool)
            }
            Err(err) => {
                pool.close(Duration::ZERO);
                Err(Error::Spawn(err))
            }
        }
    }
}

/// A bounded pool of worker threads running jobs of type `J`, optionally keyed by `K`.
///
/// The type names the job first and the key second, `Pool<J, K>`, with `K = String` when left
/// out. [`Pool::submit_keyed`] takes them the other way round, `submit_keyed(key, job)`: the
/// key first, as `HashMap::insert(key, value)` takes it.
///
/// ```
/// use std::time::Duration;
/// use ward_queue::Pool;
///
/// // Jobs are numbers, keyed by name: job type first, key type second.
/// let pool: Pool<u64, &'static str> = Pool::builder().build(|_n: &u64| Ok(()))?;
/// let first = pool.submit_keyed("alpha", 1)?; // key first, then the job
/// let second = pool.submit(2)?; // an unkeyed job of the same pool
/// assert!(first < second);
/// assert!(pool.shutdown(Duration::from_secs(10)).is_empty());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// See the [crate docs](crate) for the guarantees and a fuller example.
pub struct Pool<J, K = String>
where
    J: Send + 'static,
    K: Eq + Hash + Clone + Send + 'static,
{
    // `Drop` calls `close`, which stops and joins the overseer and every worker before any field
    // is dropped; `shared` comes last so that nothing the threads used goes away before them.
    /// The queue's sender. Submits borrow the pool and `close` needs it exclusively, so no
    /// submit can be under way when `close` drops this: the borrow checker closes intake, with
    /// no lock on the submit path. Without it (and the overseer's clone) the queue disconnects
    /// once empty, which is how idle workers learn to exit.
    tx: Option<Sender<Queued<J>>>,
    overseer: Option<JoinHandle<()>>,
    closed: bool,
    shared: Arc<Shared<J, K>>,
}

impl<J, K> fmt::Debug for Pool<J, K>
where
    J: Send + 'static,
    K: Eq + Hash + Clone + Send + 'static,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("name", &self.shared.config.name)
            .field("workers", &self.shared.config.workers)
            .field("capacity", &self.shared.config.capacity)
            .field("policy", &self.shared.config.policy)
            .field("paused", &self.is_paused())
            .finish_non_exhaustive()
    }
}

impl<J, K> Pool<J, K>
where
    J: Send + 'static,
    K: Eq + Hash + Clone + Send + 'static,
{
    /// A builder with the defaults: 2 workers, capacity 1024, `Policy::Block` without timeout,
    /// no retries, no job timeout.
    pub fn builder() -> Builder<J, K> {
        Builder {
            config: Config {
                workers: 2,
                capacity: 1024,
                policy: Policy::default(),
                retry: RetryPolicy::default(),
                timeout: None,
                name: "ward-queue".to_owned(),
            },
            listener: None,
            clone_job: None,
            retry_of: None,
            _key: PhantomData,
        }
    }

    /// Queues `job`, applying the pool's [`Policy`] if the queue is full or intake paused.
    ///
    /// # Errors
    /// The job comes back inside the error: [`Error::Full`] (reject), [`Error::Timeout`] (block
    /// with a timeout), [`Error::Paused`] (intake paused under reject or drop-oldest),
    /// [`Error::Closed`] (shutting down).
    pub fn submit(&self, job: J) -> Result<JobId, Error<J>> {
        let task = self.shared.new_task(job);
        let id = task.id;
        self.shared
            .submit_unkeyed(self.tx.as_ref(), task)
            .map(|()| id)
    }

    /// Queues `job` under `key`, the key first (the pool's type names them the other way round,
    /// `Pool<J, K>`: see [`Pool`]): it replaces a job of that key still waiting (latest wins; the
    /// replaced one is reported as [`DropReason::Coalesced`]), and waits for a running job of
    /// that key to end before it runs. Two jobs of one key never run at once, and the last one
    /// submitted for a key runs after its submission. Replacing or waiting behind a running
    /// key needs no room in the queue, so it succeeds even when the queue is full or paused.
    ///
    /// # Errors
    /// As [`Pool::submit`].
    pub fn submit_keyed(&self, key: K, job: J) -> Result<JobId, Error<J>> {
        let task = self.shared.new_task(job);
        let id = task.id;
        self.shared
            .submit_keyed(self.tx.as_ref(), key, task)
            .map(|()| id)
    }

    /// Pauses intake: submitters feel backpressure per the policy (block waits, reject and
    /// drop-oldest get [`Error::Paused`], caller-runs runs the job itself). Workers keep
    /// draining the queue.
    pub fn pause(&self) {
        self.shared.paused.store(true, Ordering::SeqCst);
    }

    /// Holds the workers: attempts already running go on, but no worker starts another (a first
    /// attempt or a retry) until [`Pool::release`]. Intake is not paused: jobs queue up to the
    /// capacity, and the policy applies past it. For a caller that must start nothing for a
    /// while (memory runs short) without losing what waits. Shutdown ends a hold: the jobs held
    /// are returned by [`Pool::shutdown`] like any not started. Jobs run by submitters under
    /// [`Policy::CallerRuns`] are not held.
    pub fn hold(&self) {
        self.shared.held.store(true, Ordering::SeqCst);
    }

    /// Ends a hold: the workers start attempts again.
    pub fn release(&self) {
        // Under the lock: a worker between its check and its wait would miss the notification.
        let _guard = self.shared.hold_lock.lock();
        self.shared.held.store(false, Ordering::SeqCst);
        self.shared.hold_cv.notify_all();
    }

    /// Whether the workers are held.
    pub fn is_held(&self) -> bool {
        self.shared.held.load(Ordering::SeqCst)
    }

    /// Resumes intake and wakes blocked submitters.
    pub fn resume(&self) {
        self.shared.paused.store(false, Ordering::SeqCst);
        self.shared.wake_gate();
    }

    /// Whether intake is paused.
    pub fn is_paused(&self) -> bool {
        self.shared.paused.load(Ordering::SeqCst)
    }

    /// A snapshot of counters and latencies: atomic loads and short locks, one of them per key
    /// table.
    pub fn metrics(&self) -> Metrics {
        let shared = &self.shared;
        let mut metrics = Metrics::default();
        let mut wait = empty_counts();
        let mut run = empty_counts();
        let mut add = |stats: &Stats| {
            let load = |n: &AtomicU64| n.load(Ordering::Relaxed);
            metrics.running += stats.running.load(Ordering::Relaxed);
            metrics.completed += load(&stats.completed);
            metrics.failed += load(&stats.failed);
            metrics.panicked += load(&stats.panicked);
            metrics.retried += load(&stats.retried);
            metrics.dead += load(&stats.dead);
            stats.wait.add_to(&mut wait);
            stats.run.add_to(&mut run);
        };
        {
            let crew = shared.crew.lock();
            for (cell, _) in crew.workers.iter().chain(&crew.abandoned) {
                add(&cell.stats);
            }
        }
        add(&shared.caller.stats);
        let queued = shared.rx.len()
            + shared.keys.deferred()
            + shared.timer.lock().heap.len()
            + shared.waiting_in_hold.load(Ordering::Relaxed);
        let intake = &shared.intake_stats;
        Metrics {
            queued,
            coalesced: intake.coalesced.load(Ordering::Relaxed),
            rejected: intake.rejected.load(Ordering::Relaxed),
            dropped: intake.dropped.load(Ordering::Relaxed),
            timed_out: intake.timed_out.load(Ordering::Relaxed),
            wait: Latency::from_counts(&wait),
            run: Latency::from_counts(&run),
            ..metrics
        }
    }

    /// Stops intake (later submits get [`Error::Closed`]), lets the pool work until every
    /// accepted job has an outcome or `grace` has passed (retries that come due meanwhile are
    /// run), then stops the workers and returns, in submission order, every job that did not
    /// reach an outcome: still queued, waiting on a key, or waiting for a retry. Each accepted
    /// job is thus either reported by exactly one final event or returned here, never both.
    ///
    /// Jobs already running when the grace ends are let finish (a thread cannot be
    /// interrupted) and report their outcome as events before this returns; a thread stuck past
    /// the job timeout is not waited for, and its job's outcome comes later as an event if ever.
    /// Every other pool thread has been joined when this returns.
    pub fn shutdown(mut self, grace: Duration) -> Vec<J> {
        self.close(grace).into_iter().map(|task| task.job).collect()
    }

    /// Accepted jobs without a final outcome yet (queued, waiting, retrying or running).
    fn outstanding(&self) -> u64 {
        let shared = &self.shared;
        let issued = shared.next_id.load(Ordering::SeqCst);
        let refused = shared.intake_stats.rejected.load(Ordering::SeqCst)
            + shared.intake_stats.closed.load(Ordering::SeqCst);
        let m = self.metrics();
        let settled = m.completed + m.dead + m.dropped + m.coalesced;
        issued.saturating_sub(refused).saturating_sub(settled)
    }

    /// The shutdown sequence, shared by `shutdown`, `Drop` and a failed `build`.
    fn close(&mut self, grace: Duration) -> Vec<Task<J>> {
        self.closed = true;
        let shared = &self.shared;
        let end = Instant::now().checked_add(grace);
        // 1. No more submits (none can be under way: this borrows the pool exclusively).
        self.tx = None;
        // 2. Drain: workers run what is queued, the overseer still sends retries that come due,
        //    until no accepted job lacks an outcome or the grace is over.
        while self.outstanding() > 0 && end.is_none_or(|end| Instant::now() < end) {
            let mut timer = shared.timer.lock();
            let slice = Instant::now() + WAIT_SLICE / 2;
            shared
                .timer_cv
                .wait_until(&mut timer, end.map_or(slice, |end| end.min(slice)));
        }
        // 3. Stop: workers finish the job in hand and stash what they receive after it; with
        //    the overseer's sender gone too, idle workers see the queue disconnect and exit.
        //    The overseer is joined first so that it starts no replacement worker behind us.
        shared.stop.store(true, Ordering::SeqCst);
        {
            let mut timer = shared.timer.lock();
            timer.tx = None;
            timer.quit = true;
        }
        shared.timer_cv.notify_all();
        if let Some(overseer) = self.overseer.take()
            && overseer.join().is_err()
        {
            log::error!("ward-queue: the overseer thread panicked");
        }
        let (workers, abandoned) = {
            let mut crew = shared.crew.lock();
            (
                std::mem::take(&mut crew.workers),
                std::mem::take(&mut crew.abandoned),
            )
        };
        for (_, worker) in workers {
            if worker.join().is_err() {
                log::error!("ward-queue: a worker thread panicked outside a job");
            }
        }
        for (_, worker) in abandoned {
            if worker.is_finished() {
                if worker.join().is_err() {
                    log::error!("ward-queue: a replaced worker thread panicked outside a job");
                }
            } else {
                log::warn!(
                    "ward-queue: a worker is still stuck in a timed-out job; its thread is left \
                     running (a thread cannot be killed)"
                );
            }
        }
        // 4. Every pool thread has stopped (bar stuck ones): collect what did not run.
        let mut left = std::mem::take(&mut *shared.stash.lock());
        left.extend(
            shared
                .rx
                .try_iter()
                .filter_map(|queued| ManuallyDrop::into_inner(queued).into_parts())
                .map(|(task, _)| task),
        );
        left.extend(shared.keys.drain());
        {
            let mut timer = shared.timer.lock();
            timer.sealed = true;
            left.extend(timer.heap.drain().map(|delayed| delayed.task));
        }
        left.sort_by_key(|task| task.id);
        left
    }
}

impl<J, K> Drop for Pool<J, K>
where
    J: Send + 'static,
    K: Eq + Hash + Clone + Send + 'static,
{
    /// Stops intake and the workers at once (running jobs finish), joins the threads, and
    /// reports every job that did not run as [`DropReason::Shutdown`].
    fn drop(&mut self) {
        if self.closed {
            return;
        }
        for task in self.close(Duration::ZERO) {
            self.shared.drop_task(task, DropReason::Shutdown);
        }
    }
}

impl<J, K> Shared<J, K>
where
    J: Send + 'static,
    K: Eq + Hash + Clone + Send + 'static,
{
    fn drop_task(&self, task: Task<J>, reason: DropReason) {
        let counter = match reason {
            DropReason::Coalesced => &self.intake_stats.coalesced,
            _ => &self.intake_stats.dropped,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.emit(Event::Dropped {
            id: task.id,
            job: task.job,
            reason,
        });
    }

    fn emit(&self, event: Event<J>) {
        let Some(listener) = &self.listener else {
            log_event(event);
            return;
        };
        if catch_unwind(AssertUnwindSafe(|| listener(event))).is_err() {
            log::error!("ward-queue: the event callback panicked; that event is lost");
        }
    }
}

fn log_event<J>(event: Event<J>) {
    match event {
        Event::Dead { id, failures, .. } => match failures.last() {
            Some(last) => log::warn!(
                "ward-queue: {id} is dead after {} attempts: {last}",
                failures.len()
            ),
            None => log::warn!("ward-queue: {id} is dead"),
        },
        Event::TimedOut { id, after, .. } => {
            log::warn!("ward-queue: {id} timed out after {after:?}")
        }
        Event::Retrying {
            id, failure, delay, ..
        } => {
            log::info!("ward-queue: {id} failed ({failure}); retrying in {delay:?}");
        }
        Event::Dropped { id, reason, .. } => log::debug!("ward-queue: {id} dropped: {reason:?}"),
        Event::Completed { .. } => {}
    }
}

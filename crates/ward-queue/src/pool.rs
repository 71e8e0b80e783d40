//! The pool itself: [`Builder`], [`Pool`] and [`Policy`], the submit paths, the worker threads and
//! the overseer thread that sends due retries and replaces workers stuck past the job timeout.
//!
//! Where a job can be, so that none is lost: in the queue (a crossbeam bounded channel), waiting
//! in the key table, in the overseer's retry heap, running, or (after shutdown stopped the
//! workers) in the stash. `Pool::close` empties all of them after every pool thread has stopped.

use std::any::Any;
use std::collections::BinaryHeap;
use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::marker::PhantomData;
use std::mem::ManuallyDrop;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, SendTimeoutError, Sender, TryRecvError, TrySendError};
use hashbrown::DefaultHashBuilder;
use parking_lot::{Condvar, Mutex, MutexGuard};

use crate::keys::{KeyTable, Offer, SlotId};
use crate::metrics::{IntakeStats, Latency, Metrics, Stats, empty_counts};
use crate::retry::{RetryPolicy, mix};
use crate::{DropReason, Error, Event, Failure, JobError, JobId};

/// How long a submitter waiting out a pause, or shutdown waiting for the drain, sleeps at most
/// before looking again; `resume` wakes the former sooner.
const WAIT_SLICE: Duration = Duration::from_millis(2);
/// How long a submitter under `Block` waits for a full queue to drain to half before it takes
/// the first slot that frees instead.
const ROOM_SLICE: Duration = Duration::from_millis(2);
/// How many times that submitter yields to the workers before it parks.
const ROOM_YIELDS: u32 = 64;
/// How long a due retry waits before the overseer tries again when the queue is full.
const RETRY_REQUEUE: Duration = Duration::from_millis(2);
/// One job in `SAMPLE_EVERY` has its wait and run latency measured (a power of two).
const SAMPLE_EVERY: u64 = 64;

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

/// A job with its bookkeeping, kept small because it is copied through the queue: what most
/// jobs never need lives behind one optional box.
pub(crate) struct Task<J> {
    id: JobId,
    job: J,
    extra: Option<Box<Extra>>,
}

#[derive(Default)]
struct Extra {
    /// When a sampled job was submitted, until its first attempt starts.
    enqueued: Option<Instant>,
    /// One per failed attempt, oldest first.
    failures: Vec<Failure>,
}

impl<J> Task<J> {
    fn new(id: JobId, job: J, enqueued: Option<Instant>) -> Self {
        let extra = enqueued.map(|enqueued| {
            Box::new(Extra {
                enqueued: Some(enqueued),
                failures: Vec::new(),
            })
        });
        Task { id, job, extra }
    }

    /// How many attempts have failed; the running attempt is this plus one.
    fn failed_attempts(&self) -> u32 {
        self.extra.as_ref().map_or(0, |extra| {
            u32::try_from(extra.failures.len()).unwrap_or(u32::MAX)
        })
    }

    fn take_enqueued(&mut self) -> Option<Instant> {
        self.extra.as_mut().and_then(|extra| extra.enqueued.take())
    }

    fn push_failure(&mut self, failure: Failure) {
        self.extra
            .get_or_insert_with(Box::default)
            .failures
            .push(failure);
    }

    fn into_failures(self) -> (JobId, J, Vec<Failure>) {
        let failures = self.extra.map(|extra| extra.failures).unwrap_or_default();
        (self.id, self.job, failures)
    }
}

/// What travels through the queue.
enum Envelope<J, K> {
    /// An unkeyed job (first attempt or retry).
    Job(Task<J>),
    /// A token: the job waiting for this key in the key table is ready to run.
    Key(K),
    /// A due retry of a keyed job; the key has stayed running since the failed attempt. Boxed:
    /// rare, and it would make every slot of the queue bigger.
    Retry(Box<(Task<J>, K)>),
}

impl<J, K> Envelope<J, K> {
    fn into_parts(self) -> Option<(Task<J>, Option<K>)> {
        match self {
            Envelope::Job(task) => Some((task, None)),
            Envelope::Retry(retry) => {
                let (task, key) = *retry;
                Some((task, Some(key)))
            }
            Envelope::Key(_) => None,
        }
    }

    /// The task of an envelope built as `Envelope::Job` on the unkeyed submit path.
    fn into_unkeyed(self) -> Task<J> {
        match self {
            Envelope::Job(task) => task,
            // The unkeyed path only ever builds `Job`, and gets back what it sent.
            Envelope::Key(_) | Envelope::Retry(..) => {
                unreachable!("the unkeyed submit path got back an envelope it did not send")
            }
        }
    }
}

/// An envelope as it sits in the queue. `ManuallyDrop` because crossbeam-channel's send and
/// receive compile to markedly slower code for a message type with drop glue (a no-op job took
/// about 15 ns longer with two workers, a quarter of its cost). Nothing leaks for it: messages
/// only enter and leave the queue through the functions below, which wrap and unwrap them, and
/// `Pool::close` empties the queue before it can be dropped.
type Queued<J> = ManuallyDrop<Envelope<J, SlotId>>;

/// A retry waiting for its time, in the overseer's heap (earliest first).
struct Delayed<J, K> {
    due: Instant,
    seq: u64,
    task: Task<J>,
    key: Option<K>,
}

impl<J, K> PartialEq for Delayed<J, K> {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl<J, K> Eq for Delayed<J, K> {}
impl<J, K> PartialOrd for Delayed<J, K> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<J, K> Ord for Delayed<J, K> {
    // Reversed: `BinaryHeap` is a max-heap and the earliest retry must come out first.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.due, other.seq).cmp(&(self.due, self.seq))
    }
}

struct Timer<J> {
    heap: BinaryHeap<Delayed<J, SlotId>>,
    seq: u64,
    /// Taken away when shutdown starts: retries are then kept for `close` to return.
    tx: Option<Sender<Queued<J>>>,
    /// Set once `close` has emptied the heap: a retry scheduled later is dropped and reported.
    sealed: bool,
    /// Places taken by retries about to be pushed.
    reserved: usize,
    quit: bool,
}

enum Schedule {
    Scheduled,
    BacklogFull,
    Sealed,
}

/// One running attempt of a supervised worker, for the overseer's timeout check.
struct Running {
    id: JobId,
    attempt: u32,
    started: Instant,
    /// Set by the overseer when it gives up on the attempt.
    abandoned: Option<Duration>,
}

/// What a worker shares with the overseer and the metrics.
struct WorkerCell {
    stats: Stats,
    current: Mutex<Option<Running>>,
    /// The overseer replaced this worker: it exits once its current job returns.
    abandoned: AtomicBool,
    /// Only one thread ever updates `stats` (a worker's own cell, not the callers' shared one),
    /// so counting needs no locked instruction on the hot path.
    exclusive: bool,
}

impl WorkerCell {
    fn new(exclusive: bool) -> Self {
        WorkerCell {
            stats: Stats::new(),
            current: Mutex::new(None),
            abandoned: AtomicBool::new(false),
            exclusive,
        }
    }

    #[inline]
    fn count(&self, counter: &AtomicU64) {
        if self.exclusive {
            counter.store(counter.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        } else {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[inline]
    fn set_running(&self, running: bool) {
        let gauge = &self.stats.running;
        match (self.exclusive, running) {
            (true, _) => gauge.store(usize::from(running), Ordering::Relaxed),
            (false, true) => {
                gauge.fetch_add(1, Ordering::Relaxed);
            }
            (false, false) => {
                gauge.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

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

/// How many tables the keys are split over (a power of two): enough that the submitter and
/// two workers, each locking one per keyed job, seldom meet at the same lock.
const KEY_SHARD_BITS: u32 = 4;

/// The key table, split by key hash into tables with locks of their own. With one table, the
/// waits at its lock were the largest cost of a keyed job (`examples/bench.rs`).
struct KeyShards<K, T> {
    hasher: DefaultHashBuilder,
    shards: Box<[Shard<K, T>]>,
}

/// One of the tables, on cache lines of its own.
type Shard<K, T> = Padded<Mutex<KeyTable<K, T>>>;

impl<K: Eq + Hash + Clone, T> KeyShards<K, T> {
    fn new() -> Self {
        let hasher = DefaultHashBuilder::default();
        let shards = (0..1 << KEY_SHARD_BITS)
            .map(|shard| {
                Padded(Mutex::new(KeyTable::shard(
                    hasher.clone(),
                    shard,
                    KEY_SHARD_BITS,
                )))
            })
            .collect();
        KeyShards { hasher, shards }
    }

    /// `key`'s hash, for `by_hash`; computed before any lock is taken.
    fn hash(&self, key: &K) -> u64 {
        self.hasher.hash_one(key)
    }

    /// The table of keys with this hash. Bits 32 and up choose it: the tables' own probing
    /// uses the low bits and the top seven.
    fn by_hash(&self, hash: u64) -> &Mutex<KeyTable<K, T>> {
        &self.shards[(hash >> 32) as usize & ((1 << KEY_SHARD_BITS) - 1)]
    }

    /// The table of slot `slot`: a slot number carries its table in its low bits.
    fn by_slot(&self, slot: SlotId) -> &Mutex<KeyTable<K, T>> {
        &self.shards[slot & ((1 << KEY_SHARD_BITS) - 1)]
    }

    /// Keeps the last table it locked locked, for a worker touching several slots in a row.
    fn locker(&self) -> Locker<'_, K, T> {
        Locker {
            keys: self,
            held: None,
        }
    }

    /// Jobs waiting without a token, over every table.
    fn deferred(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.lock().deferred())
            .sum()
    }

    /// Takes every waiting job out of every table.
    fn drain(&self) -> Vec<T> {
        self.shards
            .iter()
            .flat_map(|shard| shard.lock().drain())
            .collect()
    }
}

/// See [`KeyShards::locker`].
struct Locker<'a, K, T> {
    keys: &'a KeyShards<K, T>,
    held: Option<(usize, MutexGuard<'a, KeyTable<K, T>>)>,
}

impl<K: Eq + Hash + Clone, T> Locker<'_, K, T> {
    /// The table of `slot`, locked; the one locked before is unlocked if it is another.
    fn lock(&mut self, slot: SlotId) -> &mut KeyTable<K, T> {
        let shard = slot & ((1 << KEY_SHARD_BITS) - 1);
        if self.held.as_ref().is_some_and(|(held, _)| *held != shard) {
            self.held = None; // Unlocked before the next is locked: no two at once.
        }
        let keys = self.keys;
        &mut self
            .held
            .get_or_insert_with(|| (shard, keys.by_slot(slot).lock()))
            .1
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
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.config.retry = retry;
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
    /// handler by reference so that it can be retried, and given back in its final event.
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
/// See the [crate docs](crate) for the guarantees and an example.
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

    /// Queues `job` under `key`: it replaces a job of that key still waiting (latest wins; the
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
        let queued = shared.rx.len() + shared.keys.deferred() + shared.timer.lock().heap.len();
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
    #[inline]
    fn new_task(&self, job: J) -> Task<J> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let sampled = id & (SAMPLE_EVERY - 1) == 0;
        Task::new(JobId(id), job, sampled.then(Instant::now))
    }

    fn reject(&self, error: fn(J) -> Error<J>, task: Task<J>) -> Result<(), Error<J>> {
        self.intake_stats.rejected.fetch_add(1, Ordering::Relaxed);
        Err(error(task.job))
    }

    fn refuse_closed(&self, job: J) -> Result<(), Error<J>> {
        self.intake_stats.closed.fetch_add(1, Ordering::SeqCst);
        Err(Error::Closed(job))
    }

    fn submit_unkeyed(
        &self,
        tx: Option<&Sender<Queued<J>>>,
        task: Task<J>,
    ) -> Result<(), Error<J>> {
        let Some(tx) = tx else {
            return self.refuse_closed(task.job);
        };
        let mut envelope = Envelope::Job(task);
        let mut until = None;
        loop {
            let paused = self.paused.load(Ordering::SeqCst);
            if !paused {
                match try_send(tx, envelope) {
                    Ok(()) => return Ok(()),
                    Err(TrySendError::Full(back)) => envelope = back,
                    Err(TrySendError::Disconnected(back)) => {
                        return self.refuse_closed(back.into_unkeyed().job);
                    }
                }
            }
            match self.config.policy {
                Policy::Reject if paused => {
                    return self.reject(Error::Paused, envelope.into_unkeyed());
                }
                Policy::DropOldest if paused => {
                    return self.reject(Error::Paused, envelope.into_unkeyed());
                }
                Policy::Reject => return self.reject(Error::Full, envelope.into_unkeyed()),
                Policy::DropOldest => {
                    let evicted = self.evict_oldest(tx);
                    if let Some(task) = evicted {
                        self.drop_task(task, DropReason::Evicted);
                    }
                }
                Policy::CallerRuns => {
                    self.run_in_caller(envelope.into_unkeyed());
                    return Ok(());
                }
                Policy::Block { timeout } => {
                    let until = *until.get_or_insert_with(|| deadline_after(timeout));
                    if paused {
                        if !self.wait_gate(until) {
                            return self.reject(Error::Timeout, envelope.into_unkeyed());
                        }
                        continue;
                    }
                    if self.wait_for_room(until) {
                        continue;
                    }
                    return match send_until(tx, envelope, until) {
                        Ok(()) => Ok(()),
                        Err(SendTimeoutError::Timeout(back)) => {
                            self.reject(Error::Timeout, back.into_unkeyed())
                        }
                        Err(SendTimeoutError::Disconnected(back)) => {
                            self.refuse_closed(back.into_unkeyed().job)
                        }
                    };
                }
            }
        }
    }

    fn submit_keyed(
        &self,
        tx: Option<&Sender<Queued<J>>>,
        mut key: K,
        mut task: Task<J>,
    ) -> Result<(), Error<J>> {
        let Some(tx) = tx else {
            return self.refuse_closed(task.job);
        };
        let mut until = None;
        loop {
            let paused = self.paused.load(Ordering::SeqCst);
            let id = task.id;
            let mut unsent = None;
            let hash = self.keys.hash(&key);
            let mut keys = self.keys.by_hash(hash).lock();
            let offer = if let (Policy::Block { .. }, false) = (self.config.policy, paused) {
                // Record the job as queued and send its token after the lock, waiting for room
                // if need be. No worker can take the job before the token is sent; a newer job
                // of this key replaces it meanwhile and counts on this token.
                keys.offer_hashed(hash, key, task, |slot| {
                    unsent = Some(slot);
                    true
                })
            } else {
                // The other policies decide by whether the token fits, so it is sent (never
                // blocking) under the lock, where the worker receiving it finds the job recorded.
                keys.offer_hashed(hash, key, task, |slot| {
                    !paused && try_send(tx, Envelope::Key(slot)).is_ok()
                })
            };
            drop(keys);
            match offer {
                Offer::Coalesced(old) => {
                    self.drop_task(old, DropReason::Coalesced);
                    return Ok(());
                }
                Offer::Deferred => return Ok(()),
                Offer::Queued => {
                    return match (unsent, self.config.policy) {
                        (Some(slot), Policy::Block { timeout }) => {
                            self.send_token(tx, slot, id, || {
                                *until.get_or_insert_with(|| deadline_after(timeout))
                            })
                        }
                        _ => Ok(()),
                    };
                }
                Offer::Full(back_key, back_task) => (key, task) = (back_key, back_task),
            }
            match self.config.policy {
                Policy::Reject | Policy::DropOldest if paused => {
                    return self.reject(Error::Paused, task);
                }
                Policy::Reject => return self.reject(Error::Full, task),
                Policy::DropOldest => {
                    let evicted = self.evict_oldest(tx);
                    if let Some(task) = evicted {
                        self.drop_task(task, DropReason::Evicted);
                    }
                }
                Policy::CallerRuns => {
                    let claimed = self.keys.by_hash(self.keys.hash(&key)).lock().claim(&key);
                    if let Some(slot) = claimed {
                        self.run_keyed(&self.caller, false, slot, task);
                        return Ok(());
                    }
                    // Someone queued this key meanwhile: admit again, which now coalesces.
                }
                Policy::Block { timeout } => {
                    // Only reached while paused.
                    let until = *until.get_or_insert_with(|| deadline_after(timeout));
                    if !self.wait_gate(until) {
                        return self.reject(Error::Timeout, task);
                    }
                }
            }
        }
    }

    /// Sends the token of job `id`, already recorded as queued in `slot`, waiting for room if
    /// the queue is full. At the deadline (`until`, asked only then) the job is withdrawn and
    /// refused, unless a newer job of the key has replaced it: that one was accepted and is owed
    /// this token, so the wait goes on.
    fn send_token(
        &self,
        tx: &Sender<Queued<J>>,
        slot: SlotId,
        id: JobId,
        until: impl FnOnce() -> Option<Instant>,
    ) -> Result<(), Error<J>> {
        let is_ours = |task: &Task<J>| task.id == id;
        let mut until = match try_send(tx, Envelope::Key(slot)) {
            Ok(()) => return Ok(()),
            Err(TrySendError::Full(_)) => until(),
            Err(TrySendError::Disconnected(_)) => None, // The send below says so at once.
        };
        if self.wait_for_room(until) && try_send(tx, Envelope::Key(slot)).is_ok() {
            return Ok(());
        }
        loop {
            match send_until(tx, Envelope::Key(slot), until) {
                Ok(()) => return Ok(()),
                Err(SendTimeoutError::Timeout(_)) => {
                    let withdrawn = self.keys.by_slot(slot).lock().withdraw(slot, is_ours);
                    match withdrawn {
                        Some(task) => return self.reject(Error::Timeout, task),
                        None => until = None,
                    }
                }
                Err(SendTimeoutError::Disconnected(_)) => {
                    let withdrawn = self.keys.by_slot(slot).lock().withdraw(slot, is_ours);
                    return withdrawn.map_or(Ok(()), |task| self.refuse_closed(task.job));
                }
            }
        }
    }

    /// Waits for resume, a slice at a time; false once `until` has passed.
    fn wait_gate(&self, until: Option<Instant>) -> bool {
        {
            let mut gate = self.gate.lock();
            let slice = Instant::now() + WAIT_SLICE;
            let limit = until.map_or(slice, |until| until.min(slice));
            self.gate_cv.wait_until(&mut gate, limit);
        }
        until.is_none_or(|until| Instant::now() < until)
    }

    fn wake_gate(&self) {
        let _gate = self.gate.lock();
        self.gate_cv.notify_all();
    }

    /// Waits for the workers to drain a full queue to half its capacity, at most `ROOM_SLICE`
    /// and until `until`; true if it got there. A submitter faster than its workers that took
    /// each slot as it freed would be woken once per job, and its sends would fight the workers
    /// for the queue's cache lines on every job; filling half the queue at a time costs one
    /// wake-up per half. Past the slice the caller takes the next free slot as before, so a
    /// submit under slow jobs returns at most one slice later than a slot frees.
    fn wait_for_room(&self, until: Option<Instant>) -> bool {
        let half = self.config.capacity / 2;
        let end = Instant::now() + ROOM_SLICE;
        let end = until.map_or(end, |until| until.min(end));
        // Fast workers drain half a queue in microseconds, quicker than a parked thread wakes
        // up: yield to them a while before parking, so that they never run dry meanwhile.
        for _ in 0..ROOM_YIELDS {
            if self.rx.len() <= half {
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
            thread::yield_now();
        }
        let mut room = self.room.lock();
        self.room_waiters.fetch_add(1, Ordering::SeqCst);
        // Counted as waiting before looking: a worker that drains the queue to half after this
        // look sees the count and wakes us (it takes `room` first, so not before we wait).
        while self.rx.len() > half {
            if self.room_cv.wait_until(&mut room, end).timed_out() {
                break;
            }
        }
        self.room_waiters.fetch_sub(1, Ordering::SeqCst);
        self.rx.len() <= half
    }

    /// Called by a worker after it took an envelope: wakes submitters waiting for room once the
    /// queue is down to half. A single atomic load when nobody waits.
    fn wake_room(&self) {
        if self.room_waiters.load(Ordering::SeqCst) > 0 && self.rx.len() <= self.config.capacity / 2
        {
            let _room = self.room.lock();
            self.room_cv.notify_all();
        }
    }

    /// Makes room under `DropOldest`: takes the oldest queued item out and returns its job, for
    /// the caller to report.
    fn evict_oldest(&self, tx: &Sender<Queued<J>>) -> Option<Task<J>> {
        let Some(oldest) = try_recv(&self.rx) else {
            return None; // The workers emptied it meanwhile.
        };
        match oldest {
            Envelope::Job(task) => Some(task),
            Envelope::Key(slot) => self.keys.by_slot(slot).lock().evict_token(slot),
            Envelope::Retry(retry) => {
                let (task, slot) = *retry;
                let mut keys = self.keys.by_slot(slot).lock();
                if let Some(next) = keys.release(slot, false) {
                    // The key was held by the evicted retry and a newer job waits on it: that
                    // job now needs a token of its own. Record it first, then send without the
                    // lock; a full queue drains, since workers never wait on a submitter.
                    keys.requeue(slot, next);
                    drop(keys);
                    if send_until(tx, Envelope::Key(slot), None).is_err() {
                        log::error!("ward-queue: queue disconnected while requeueing a key");
                    }
                }
                Some(task)
            }
        }
    }

    fn run_in_caller(&self, mut task: Task<J>) {
        let result = self.attempt(&self.caller, false, &mut task);
        self.settle(&self.caller, task, result, None);
    }

    /// Runs `task` of `key` (already marked running), then each job deferred to this key, until
    /// the key is released or held by a scheduled retry.
    fn run_keyed(&self, cell: &WorkerCell, supervised: bool, slot: SlotId, mut task: Task<J>) {
        loop {
            let result = self.attempt(cell, supervised, &mut task);
            if self.settle(cell, task, result, Some(slot)) {
                return;
            }
            let next = self
                .keys
                .by_slot(slot)
                .lock()
                .release(slot, self.stop.load(Ordering::SeqCst));
            match next {
                Some(next) => task = next,
                None => return,
            }
        }
    }

    /// A worker that saw `stop` keeps what it received for `close` and lets go of its keys,
    /// leaving the jobs deferred to them for the drain.
    fn stop_worker(&self, envelope: Option<Envelope<J, SlotId>>, mut held: Held) {
        while let Some(slot) = held.pop_front() {
            self.keys.by_slot(slot).lock().release(slot, true);
        }
        if let Some((task, _)) = envelope.and_then(Envelope::into_parts) {
            self.stash.lock().push(task);
        }
    }

    /// One attempt: runs the handler inside `catch_unwind`, under the overseer's watch if
    /// `supervised` and a timeout is set.
    #[inline]
    fn attempt(
        &self,
        cell: &WorkerCell,
        supervised: bool,
        task: &mut Task<J>,
    ) -> Result<(), Failure> {
        // Most attempts are first attempts, not sampled, without a timeout: those only run the
        // handler, in code small enough to inline into the worker's loop.
        if self.config.timeout.is_none() && task.extra.is_none() {
            cell.set_running(true);
            let outcome = catch_unwind(AssertUnwindSafe(|| (self.handler)(&task.job)));
            cell.set_running(false);
            return match outcome {
                Ok(Ok(())) => Ok(()),
                Ok(Err(error)) => Err(failure_of(Ok(Err(error)))),
                Err(payload) => Err(failure_of(Err(payload))),
            };
        }
        self.attempt_watched(cell, supervised, task)
    }

    /// `attempt` for an attempt that is timed, sampled or a retry.
    #[inline(never)]
    fn attempt_watched(
        &self,
        cell: &WorkerCell,
        supervised: bool,
        task: &mut Task<J>,
    ) -> Result<(), Failure> {
        let attempt = task.failed_attempts() + 1;
        let timeout = self
            .config
            .timeout
            .filter(|_| supervised && !cell.abandoned.load(Ordering::Acquire));
        let enqueued = task.take_enqueued();
        let sampled = enqueued.is_some();
        let started = (sampled || timeout.is_some()).then(Instant::now);
        if let (Some(enqueued), Some(started)) = (enqueued, started) {
            cell.stats
                .wait
                .record(started.saturating_duration_since(enqueued));
        }
        if let (Some(_), Some(started)) = (timeout, started) {
            *cell.current.lock() = Some(Running {
                id: task.id,
                attempt,
                started,
                abandoned: None,
            });
        }
        cell.set_running(true);
        let outcome = catch_unwind(AssertUnwindSafe(|| (self.handler)(&task.job)));
        cell.set_running(false);
        let timed_out = match timeout {
            Some(_) => cell
                .current
                .lock()
                .take()
                .and_then(|running| running.abandoned),
            None => None,
        };
        if let (true, Some(started)) = (sampled, started) {
            cell.stats.run.record(started.elapsed());
        }
        if let Some(after) = timed_out {
            return Err(Failure::TimedOut(after));
        }
        match outcome {
            Ok(Ok(())) => Ok(()),
            outcome => Err(failure_of(outcome)),
        }
    }

    /// Reports an attempt's outcome and schedules a retry if one is due. True if a retry was
    /// scheduled (a keyed job then keeps its key).
    #[inline(always)]
    fn settle(
        &self,
        cell: &WorkerCell,
        task: Task<J>,
        result: Result<(), Failure>,
        slot: Option<SlotId>,
    ) -> bool {
        // A success nobody listens to is only counted.
        if result.is_ok() && self.listener.is_none() {
            cell.count(&cell.stats.completed);
            return false;
        }
        self.settle_reported(cell, task, result, slot)
    }

    /// `settle` for an outcome that is reported.
    #[inline(never)]
    fn settle_reported(
        &self,
        cell: &WorkerCell,
        mut task: Task<J>,
        result: Result<(), Failure>,
        slot: Option<SlotId>,
    ) -> bool {
        let stats = &cell.stats;
        let failure = match result {
            Ok(()) => {
                cell.count(&stats.completed);
                if self.listener.is_some() {
                    let attempts = task.failed_attempts() + 1;
                    self.emit(Event::Completed {
                        id: task.id,
                        job: task.job,
                        attempts,
                    });
                }
                return false;
            }
            Err(failure) => failure,
        };
        cell.count(&stats.failed);
        if matches!(failure, Failure::Panic(_)) {
            cell.count(&stats.panicked);
        }
        task.push_failure(failure.clone());
        let attempt = task.failed_attempts();
        if attempt < self.config.retry.max_attempts() {
            let random = mix(self.seed ^ task.id.0.rotate_left(20) ^ u64::from(attempt));
            let delay = self.config.retry.delay(attempt, random);
            // Reserve the retry's place first, so that `Retrying` is only reported for a retry
            // that will happen, and before that retry can possibly run.
            match self.reserve_retry() {
                Schedule::Scheduled => {
                    cell.count(&stats.retried);
                    self.emit(Event::Retrying {
                        id: task.id,
                        attempt,
                        failure,
                        delay,
                    });
                    return self.schedule(task, slot, delay);
                }
                Schedule::Sealed => {
                    self.drop_task(task, DropReason::Shutdown);
                    return false;
                }
                Schedule::BacklogFull => log::warn!(
                    "ward-queue: {} retries already wait; {} goes to the dead letters",
                    self.config.capacity,
                    task.id
                ),
            }
        }
        cell.count(&stats.dead);
        let (id, job, failures) = task.into_failures();
        self.emit(Event::Dead { id, job, failures });
        false
    }

    /// Takes a place in the retry backlog (at most `capacity` retries wait at once).
    fn reserve_retry(&self) -> Schedule {
        let mut timer = self.timer.lock();
        if timer.sealed {
            Schedule::Sealed
        } else if timer.heap.len() + timer.reserved >= self.config.capacity {
            Schedule::BacklogFull
        } else {
            timer.reserved += 1;
            Schedule::Scheduled
        }
    }

    /// Puts a retry with a reserved place into the heap. True if it is there (a keyed job then
    /// keeps its key); false if shutdown sealed the heap meanwhile and the job was reported.
    fn schedule(&self, task: Task<J>, slot: Option<SlotId>, delay: Duration) -> bool {
        let mut timer = self.timer.lock();
        timer.reserved -= 1;
        if timer.sealed {
            drop(timer);
            self.drop_task(task, DropReason::Shutdown);
            return false;
        }
        timer.seq += 1;
        let seq = timer.seq;
        timer.heap.push(Delayed {
            due: Instant::now() + delay,
            seq,
            task,
            key: slot,
        });
        self.timer_cv.notify_all();
        true
    }

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

fn try_send<J>(
    tx: &Sender<Queued<J>>,
    envelope: Envelope<J, SlotId>,
) -> Result<(), TrySendError<Envelope<J, SlotId>>> {
    tx.try_send(ManuallyDrop::new(envelope))
        .map_err(|err| match err {
            TrySendError::Full(back) => TrySendError::Full(ManuallyDrop::into_inner(back)),
            TrySendError::Disconnected(back) => {
                TrySendError::Disconnected(ManuallyDrop::into_inner(back))
            }
        })
}

/// A blocking send, bounded by `until` if given. Nothing can close the queue meanwhile (closing
/// needs the pool exclusively), so waiting in one piece is safe.
fn send_until<J>(
    tx: &Sender<Queued<J>>,
    envelope: Envelope<J, SlotId>,
    until: Option<Instant>,
) -> Result<(), SendTimeoutError<Envelope<J, SlotId>>> {
    let queued = ManuallyDrop::new(envelope);
    let sent = match until {
        Some(until) => tx.send_deadline(queued, until),
        None => tx
            .send(queued)
            .map_err(|err| SendTimeoutError::Disconnected(err.into_inner())),
    };
    sent.map_err(|err| match err {
        SendTimeoutError::Timeout(back) => {
            SendTimeoutError::Timeout(ManuallyDrop::into_inner(back))
        }
        SendTimeoutError::Disconnected(back) => {
            SendTimeoutError::Disconnected(ManuallyDrop::into_inner(back))
        }
    })
}

/// The next envelope, waiting for one; `None` once the queue is empty and disconnected.
fn recv<J>(rx: &Receiver<Queued<J>>) -> Option<Envelope<J, SlotId>> {
    rx.recv().ok().map(ManuallyDrop::into_inner)
}

/// The next envelope if one is queued.
fn try_recv<J>(rx: &Receiver<Queued<J>>) -> Option<Envelope<J, SlotId>> {
    match rx.try_recv() {
        Ok(queued) => Some(ManuallyDrop::into_inner(queued)),
        Err(TryRecvError::Empty | TryRecvError::Disconnected) => None,
    }
}

fn deadline_after(timeout: Option<Duration>) -> Option<Instant> {
    timeout.and_then(|timeout| Instant::now().checked_add(timeout))
}

/// The failure of an attempt that did not return `Ok`.
#[cold]
fn failure_of(outcome: thread::Result<Result<(), JobError>>) -> Failure {
    match outcome {
        Ok(Err(error)) => Failure::Error(Arc::from(error)),
        Err(payload) => Failure::Panic(panic_message(payload.as_ref())),
        // Not called for a success; should it be, it is the error-free failure it describes.
        Ok(Ok(())) => Failure::Panic("the job succeeded".to_owned()),
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(message) = payload.downcast_ref::<&str>() {
        (*message).to_owned()
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message.clone()
    } else {
        "panic with a non-string payload".to_owned()
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

/// The keys a worker holds: their run on it ended and they are still marked running, oldest
/// first. A worker holds at most two (see `worker_main`), so they live inline: this is touched
/// on every keyed job.
#[derive(Default)]
struct Held {
    slots: [SlotId; 2],
    len: usize,
}

impl Held {
    fn len(&self) -> usize {
        self.len
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// # Panics
    /// If two keys are held already, which `worker_main` never lets happen.
    fn push_back(&mut self, slot: SlotId) {
        self.slots[self.len] = slot;
        self.len += 1;
    }

    fn pop_front(&mut self) -> Option<SlotId> {
        let first = self.slots[..self.len].first().copied()?;
        self.slots[0] = self.slots[1];
        self.len -= 1;
        Some(first)
    }

    /// Keeps the keys `keep` says to, in their order.
    fn retain(&mut self, mut keep: impl FnMut(SlotId) -> bool) {
        let mut kept = 0;
        for i in 0..self.len {
            let slot = self.slots[i];
            if keep(slot) {
                self.slots[kept] = slot;
                kept += 1;
            }
        }
        self.len = kept;
    }
}

/// Starts one worker.
fn spawn_worker<J, K>(shared: &Arc<Shared<J, K>>) -> std::io::Result<()>
where
    J: Send + 'static,
    K: Eq + Hash + Clone + Send + 'static,
{
    let mut crew = shared.crew.lock();
    spawn_into(shared, &mut crew)
}

fn spawn_into<J, K>(
    shared: &Arc<Shared<J, K>>,
    crew: &mut MutexGuard<'_, Crew>,
) -> std::io::Result<()>
where
    J: Send + 'static,
    K: Eq + Hash + Clone + Send + 'static,
{
    let cell = Arc::new(WorkerCell::new(true));
    let name = format!("{}-{}", shared.config.name, crew.spawned);
    let handle = {
        let shared = Arc::clone(shared);
        let cell = Arc::clone(&cell);
        thread::Builder::new()
            .name(name)
            .spawn(move || worker_main(&shared, &cell))?
    };
    crew.spawned += 1;
    crew.workers.push((cell, handle));
    Ok(())
}

fn worker_main<J, K>(shared: &Shared<J, K>, cell: &WorkerCell)
where
    J: Send + 'static,
    K: Eq + Hash + Clone + Send + 'static,
{
    // Keys whose run on this worker ended and that are still marked running, oldest first.
    // A key is released when the worker has its next envelope, and the table locked for that
    // stays locked if the envelope's slot is in it too. A held key with a job deferred to it
    // stays held, and its job stays in the table, until this worker runs that job: the
    // envelope in hand runs first. At most two keys are held, since no envelope is taken while
    // two are; their deferred jobs then take turns, so neither an envelope nor a busy key waits
    // behind the other for more than one run.
    let mut held = Held::default();
    loop {
        let envelope = if held.len() >= 2 || cell.abandoned.load(Ordering::Acquire) {
            None
        } else if held.is_empty() {
            match recv(&shared.rx) {
                Some(envelope) => Some(envelope),
                None => break,
            }
        } else {
            try_recv(&shared.rx)
        };
        if envelope.is_some() {
            shared.wake_room();
        }
        if envelope.is_none() && held.is_empty() {
            break; // Replaced after a timeout, with nothing of its keys left to run.
        }
        if shared.stop.load(Ordering::SeqCst) {
            shared.stop_worker(envelope, held);
            break;
        }
        let mut superseded = None;
        let work = match envelope {
            // An unkeyed job with no key to release needs no lock.
            Some(Envelope::Job(task)) if held.is_empty() => Some((None, task)),
            envelope => {
                let mut keys = shared.keys.locker();
                held.retain(|slot| !keys.lock(slot).release_unless_deferred(slot));
                match envelope {
                    Some(Envelope::Job(task)) => Some((None, task)),
                    Some(Envelope::Key(slot)) => keys
                        .lock(slot)
                        .take_for_token(slot)
                        .map(|task| (Some(slot), task)),
                    Some(Envelope::Retry(retry)) => {
                        let (retry, slot) = *retry;
                        match keys.lock(slot).take_superseding(slot) {
                            Some(newer) => {
                                superseded = Some(retry);
                                Some((Some(slot), newer))
                            }
                            None => Some((Some(slot), retry)),
                        }
                    }
                    // Run the oldest held key's deferred job; the key stays running.
                    None => held.pop_front().and_then(|slot| {
                        keys.lock(slot)
                            .release(slot, false)
                            .map(|task| (Some(slot), task))
                    }),
                }
            }
        };
        if let Some(retry) = superseded {
            shared.drop_task(retry, DropReason::Superseded);
        }
        let Some((slot, mut task)) = work else {
            continue;
        };
        let result = shared.attempt(cell, true, &mut task);
        // A scheduled retry keeps the key; otherwise this worker releases it next round.
        if !shared.settle(cell, task, result, slot)
            && let Some(slot) = slot
        {
            held.push_back(slot);
        }
    }
}

/// The overseer: sends retries when they come due and replaces workers stuck past the timeout.
fn overseer_main<J, K>(shared: &Arc<Shared<J, K>>)
where
    J: Send + 'static,
    K: Eq + Hash + Clone + Send + 'static,
{
    let mut timer = shared.timer.lock();
    while !timer.quit {
        let now = Instant::now();
        send_due_retries(&mut timer, now);
        let mut next = timer.heap.peek().map(|delayed| delayed.due);
        if let Some(timeout) = shared.config.timeout {
            // Wake at the earliest running attempt's deadline; with none running, one timeout
            // from now: an attempt that starts meanwhile cannot be overdue before then. An idle
            // pool thus wakes once per timeout, not on a fixed tick.
            let deadline =
                MutexGuard::unlocked(&mut timer, || replace_overdue_workers(shared, now, timeout));
            let check = deadline.unwrap_or(now + timeout);
            next = Some(next.map_or(check, |due| due.min(check)));
        }
        if timer.quit {
            break;
        }
        match next {
            Some(next) => {
                shared.timer_cv.wait_until(&mut timer, next);
            }
            None => shared.timer_cv.wait(&mut timer),
        }
    }
}

fn send_due_retries<J>(timer: &mut Timer<J>, now: Instant) {
    let Timer { heap, seq, tx, .. } = timer;
    let Some(tx) = tx.as_ref() else {
        return; // Shutting down: retries stay for `close` to return.
    };
    while heap.peek().is_some_and(|delayed| delayed.due <= now) {
        let Some(delayed) = heap.pop() else { break };
        let envelope = match delayed.key {
            Some(key) => Envelope::Retry(Box::new((delayed.task, key))),
            None => Envelope::Job(delayed.task),
        };
        if let Err(full) = try_send(tx, envelope) {
            // Queue full: try again shortly rather than block the timeout checks.
            if let Some((task, key)) = full.into_inner().into_parts() {
                *seq += 1;
                heap.push(Delayed {
                    due: now + RETRY_REQUEUE,
                    seq: *seq,
                    task,
                    key,
                });
            }
            break;
        }
    }
}

/// Replaces the workers whose attempt ran past `timeout`, and returns the earliest deadline of
/// the attempts still within it.
fn replace_overdue_workers<J, K>(
    shared: &Arc<Shared<J, K>>,
    now: Instant,
    timeout: Duration,
) -> Option<Instant>
where
    J: Send + 'static,
    K: Eq + Hash + Clone + Send + 'static,
{
    let mut overdue = Vec::new();
    let mut earliest: Option<Instant> = None;
    {
        let mut crew = shared.crew.lock();
        let mut i = 0;
        while i < crew.workers.len() {
            let expired = {
                let cell = &crew.workers[i].0;
                let mut current = cell.current.lock();
                match current.as_mut() {
                    Some(running)
                        if running.abandoned.is_none()
                            && running_for(running.started, now) >= timeout =>
                    {
                        let after = running_for(running.started, now);
                        running.abandoned = Some(after);
                        cell.abandoned.store(true, Ordering::Release);
                        Some((running.id, running.attempt, after))
                    }
                    Some(running) if running.abandoned.is_none() => {
                        let due = running.started + timeout;
                        earliest = Some(earliest.map_or(due, |e| e.min(due)));
                        None
                    }
                    _ => None,
                }
            };
            let Some(expired) = expired else {
                i += 1;
                continue;
            };
            let worker = crew.workers.swap_remove(i);
            crew.abandoned.push(worker);
            overdue.push(expired);
            if let Err(err) = spawn_into(shared, &mut crew) {
                log::error!(
                    "ward-queue: cannot replace a timed-out worker, capacity shrinks: {err}"
                );
            }
        }
    }
    for (id, attempt, after) in overdue {
        shared
            .intake_stats
            .timed_out
            .fetch_add(1, Ordering::Relaxed);
        shared.emit(Event::TimedOut { id, attempt, after });
    }
    earliest
}

/// How long an attempt started at `started` has run at `now`: a pure function of the two
/// instants, so the timeout rule is tested without sleeping.
fn running_for(started: Instant, now: Instant) -> Duration {
    now.saturating_duration_since(started)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_come_out_of_the_heap_earliest_first() {
        let t0 = Instant::now();
        let mut heap = BinaryHeap::new();
        for (seq, ms) in [(1, 30), (2, 10), (3, 20), (4, 10)] {
            heap.push(Delayed::<u32, ()> {
                due: t0 + Duration::from_millis(ms),
                seq,
                task: Task::new(JobId(seq), 0, None),
                key: None,
            });
        }
        let order: Vec<u64> = std::iter::from_fn(|| heap.pop().map(|d| d.seq)).collect();
        assert_eq!(order, [2, 4, 3, 1]);
    }

    #[test]
    fn queue_slots_stay_small() {
        // One word for the job number, one for the job, one for the optional extras, one tag.
        assert!(size_of::<Envelope<u64, u64>>() <= 32);
        assert!(size_of::<Envelope<u64, String>>() <= 32);
    }

    #[test]
    fn an_attempt_is_overdue_only_once_it_has_run_the_whole_timeout() {
        let started = Instant::now();
        let timeout = Duration::from_millis(50);
        assert!(running_for(started, started + Duration::from_millis(49)) < timeout);
        assert!(running_for(started, started + timeout) >= timeout);
        assert_eq!(running_for(started + timeout, started), Duration::ZERO);
    }

    #[test]
    fn panic_messages_are_recovered_from_both_payload_kinds() {
        let s: Box<dyn Any + Send> = Box::new("static");
        let owned: Box<dyn Any + Send> = Box::new(String::from("owned"));
        let other: Box<dyn Any + Send> = Box::new(7_u8);
        assert_eq!(panic_message(s.as_ref()), "static");
        assert_eq!(panic_message(owned.as_ref()), "owned");
        assert_eq!(
            panic_message(other.as_ref()),
            "panic with a non-string payload"
        );
    }
}

//! Integration tests of `ward-queue` with real threads, real panics and real timeouts.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use ward_queue::{DropReason, Error, Event, Policy, Pool, RetryPolicy};

/// Generous: the machine is small and shared.
const PATIENCE: Duration = Duration::from_secs(20);

/// Polls `condition` every few milliseconds until it holds; panics with `what` after `PATIENCE`.
fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(2));
    }
}

/// A latch the test opens to let blocked jobs go.
#[derive(Clone, Default)]
struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    fn open(&self) {
        *self.0.0.lock().unwrap() = true;
        self.0.1.notify_all();
    }
    /// Waits until opened (at most `PATIENCE`, so that a broken test fails instead of hanging).
    fn wait(&self) {
        let guard = self.0.0.lock().unwrap();
        let (guard, _) = self
            .0
            .1
            .wait_timeout_while(guard, PATIENCE, |open| !*open)
            .unwrap();
        assert!(*guard, "gate never opened");
    }
}

/// Collects every event the pool reports, by kind, with the job's number.
#[derive(Clone, Default)]
struct Outcomes(Arc<Mutex<Vec<Seen>>>);

#[derive(Clone, Debug, PartialEq)]
enum Seen {
    Completed(u32, u32),
    Retrying(u32, String),
    Dead(u32, Vec<String>),
    TimedOut(u64),
    Dropped(u32, DropReason),
}

impl Outcomes {
    fn listener(&self) -> impl Fn(Event<u32>) + Send + Sync + 'static {
        let seen = Arc::clone(&self.0);
        move |event| {
            let item = match event {
                Event::Completed { job, attempts, .. } => Seen::Completed(job, attempts),
                Event::Retrying { id, failure, .. } => {
                    Seen::Retrying(id.get() as u32, failure.to_string())
                }
                Event::Dead { job, failures, .. } => {
                    Seen::Dead(job, failures.iter().map(ToString::to_string).collect())
                }
                Event::TimedOut { id, .. } => Seen::TimedOut(id.get()),
                Event::Dropped { job, reason, .. } => Seen::Dropped(job, reason),
                _ => return,
            };
            seen.lock().unwrap().push(item);
        }
    }
    fn all(&self) -> Vec<Seen> {
        self.0.lock().unwrap().clone()
    }
    fn completed(&self) -> Vec<u32> {
        let mut done: Vec<u32> = self
            .all()
            .into_iter()
            .filter_map(|s| match s {
                Seen::Completed(job, _) => Some(job),
                _ => None,
            })
            .collect();
        done.sort_unstable();
        done
    }
    fn count(&self, matches: impl Fn(&Seen) -> bool) -> usize {
        self.all().iter().filter(|s| matches(s)).count()
    }
}

/// A pool of `u32` jobs where job `BLOCKER` waits on `gate` and announces that it started.
const BLOCKER: u32 = 1000;

fn blocking_pool(
    workers: usize,
    capacity: usize,
    policy: Policy,
    gate: &Gate,
    started: &Arc<AtomicUsize>,
    outcomes: &Outcomes,
) -> Pool<u32, u32> {
    let (gate, started) = (gate.clone(), Arc::clone(started));
    Pool::builder()
        .workers(workers)
        .capacity(capacity)
        .policy(policy)
        .on_event(outcomes.listener())
        .build(move |job: &u32| {
            if *job >= BLOCKER {
                started.fetch_add(1, Ordering::SeqCst);
                gate.wait();
            }
            Ok(())
        })
        .unwrap()
}

/// Fills a one-worker pool: the blocker runs, `queued` jobs wait in the queue.
fn fill(pool: &Pool<u32, u32>, started: &AtomicUsize, queued: std::ops::Range<u32>) {
    pool.submit(BLOCKER).unwrap();
    wait_for("the blocker to start", || {
        started.load(Ordering::SeqCst) == 1
    });
    for job in queued {
        pool.submit(job).unwrap();
    }
}

#[test]
fn reject_gives_the_job_back_when_full() {
    let (gate, started, outcomes) = (Gate::default(), Arc::default(), Outcomes::default());
    let pool = blocking_pool(1, 2, Policy::Reject, &gate, &started, &outcomes);
    fill(&pool, &started, 1..3);
    match pool.submit(3) {
        Err(Error::Full(job)) => assert_eq!(job, 3),
        other => panic!("expected Full(3), got {other:?}"),
    }
    assert_eq!(pool.metrics().rejected, 1);
    assert_eq!(pool.metrics().queued, 2);
    gate.open();
    assert!(pool.shutdown(PATIENCE).is_empty());
    assert_eq!(outcomes.completed(), [1, 2, BLOCKER]);
}

#[test]
fn block_waits_for_room_or_gives_up_at_its_timeout() {
    let (gate, started, outcomes) = (Gate::default(), Arc::default(), Outcomes::default());
    let timeout = Duration::from_millis(50);
    let pool = blocking_pool(
        1,
        1,
        Policy::Block {
            timeout: Some(timeout),
        },
        &gate,
        &started,
        &outcomes,
    );
    fill(&pool, &started, 1..2);
    let before = Instant::now();
    match pool.submit(2) {
        Err(Error::Timeout(job)) => assert_eq!(job, 2),
        other => panic!("expected Timeout(2), got {other:?}"),
    }
    assert!(before.elapsed() >= timeout, "gave up before its timeout");
    // A submit that blocks succeeds once the worker makes room.
    let pool = Arc::new(pool);
    let submitter = {
        let pool = Arc::clone(&pool);
        thread::spawn(move || {
            loop {
                match pool.submit(3) {
                    Ok(_) => return,
                    Err(Error::Timeout(_)) => continue,
                    Err(other) => panic!("unexpected {other:?}"),
                }
            }
        })
    };
    gate.open();
    submitter.join().unwrap();
    let pool = Arc::into_inner(pool).unwrap();
    assert!(pool.shutdown(PATIENCE).is_empty());
    assert_eq!(outcomes.completed(), [1, 3, BLOCKER]);
}

#[test]
fn a_keyed_submit_that_times_out_is_withdrawn_and_never_runs() {
    let (gate, started, outcomes) = (Gate::default(), Arc::default(), Outcomes::default());
    let block = Policy::Block {
        timeout: Some(Duration::from_millis(50)),
    };
    let pool = blocking_pool(1, 1, block, &gate, &started, &outcomes);
    fill(&pool, &started, 1..2);
    match pool.submit_keyed(5, 2) {
        Err(Error::Timeout(job)) => assert_eq!(job, 2),
        other => panic!("expected Timeout(2), got {other:?}"),
    }
    assert_eq!(pool.metrics().queued, 1, "job 2 was taken back");
    gate.open();
    assert!(pool.shutdown(PATIENCE).is_empty());
    assert_eq!(outcomes.completed(), [1, BLOCKER]);
}

#[test]
fn drop_oldest_evicts_and_reports_the_oldest_queued_job() {
    let (gate, started, outcomes) = (Gate::default(), Arc::default(), Outcomes::default());
    let pool = blocking_pool(1, 2, Policy::DropOldest, &gate, &started, &outcomes);
    fill(&pool, &started, 1..3);
    pool.submit(3).unwrap();
    pool.submit(4).unwrap();
    assert_eq!(
        outcomes.all(),
        [
            Seen::Dropped(1, DropReason::Evicted),
            Seen::Dropped(2, DropReason::Evicted)
        ]
    );
    gate.open();
    assert!(pool.shutdown(PATIENCE).is_empty());
    assert_eq!(outcomes.completed(), [3, 4, BLOCKER]);
    assert_eq!(outcomes.count(|s| matches!(s, Seen::Dropped(..))), 2);
}

#[test]
fn caller_runs_runs_the_job_in_the_submitting_thread() {
    let gate = Gate::default();
    let started = Arc::new(AtomicUsize::new(0));
    let ran_on = Arc::new(Mutex::new(HashMap::new()));
    let pool: Pool<u32, u32> = {
        let (gate, started, ran_on) = (gate.clone(), Arc::clone(&started), Arc::clone(&ran_on));
        Pool::builder()
            .workers(1)
            .capacity(1)
            .policy(Policy::CallerRuns)
            .build(move |job: &u32| {
                ran_on.lock().unwrap().insert(*job, thread::current().id());
                if *job == BLOCKER {
                    started.fetch_add(1, Ordering::SeqCst);
                    gate.wait();
                }
                Ok(())
            })
            .unwrap()
    };
    fill(&pool, &started, 1..2);
    pool.submit(2).unwrap();
    assert_eq!(ran_on.lock().unwrap()[&2], thread::current().id());
    pool.submit_keyed(7, 3).unwrap();
    assert_eq!(ran_on.lock().unwrap()[&3], thread::current().id());
    gate.open();
    assert!(pool.shutdown(PATIENCE).is_empty());
    let ran_on = ran_on.lock().unwrap();
    assert_ne!(ran_on[&1], thread::current().id());
    assert_eq!(ran_on.len(), 4);
}

#[test]
fn paused_intake_pushes_back_per_policy_and_resume_lets_blocked_submitters_in() {
    let outcomes = Outcomes::default();
    let reject: Pool<u32, u32> = Pool::builder()
        .policy(Policy::Reject)
        .build(|_: &u32| Ok(()))
        .unwrap();
    reject.pause();
    assert!(matches!(reject.submit(1), Err(Error::Paused(1))));
    assert!(matches!(reject.submit_keyed(1, 2), Err(Error::Paused(2))));
    reject.resume();
    reject.submit(3).unwrap();
    assert!(reject.shutdown(PATIENCE).is_empty());

    let pool: Pool<u32, u32> = Pool::builder()
        .policy(Policy::Block { timeout: None })
        .on_event(outcomes.listener())
        .build(|_: &u32| Ok(()))
        .unwrap();
    pool.pause();
    assert!(pool.is_paused());
    let pool = Arc::new(pool);
    let returned = Arc::new(AtomicBool::new(false));
    let submitter = {
        let (pool, returned) = (Arc::clone(&pool), Arc::clone(&returned));
        thread::spawn(move || {
            pool.submit(4).unwrap();
            returned.store(true, Ordering::SeqCst);
        })
    };
    // It must still be blocked a good while later; then resume must release it.
    let deadline = Instant::now() + Duration::from_millis(100);
    while Instant::now() < deadline {
        assert!(
            !returned.load(Ordering::SeqCst),
            "submit went through while paused"
        );
        thread::sleep(Duration::from_millis(5));
    }
    pool.resume();
    submitter.join().unwrap();
    let pool = Arc::into_inner(pool).unwrap();
    assert!(pool.shutdown(PATIENCE).is_empty());
    assert_eq!(outcomes.completed(), [4]);
}

#[test]
fn a_job_for_a_running_key_waits_and_the_latest_waiting_one_wins() {
    let (gate, started, outcomes) = (Gate::default(), Arc::default(), Outcomes::default());
    let pool = blocking_pool(2, 4, Policy::Reject, &gate, &started, &outcomes);
    pool.submit_keyed(9, BLOCKER).unwrap();
    wait_for("the blocker to start", || {
        started.load(Ordering::SeqCst) == 1
    });
    // Key 9 is running: these wait, each replacing the previous, and need no queue room.
    for job in 1..=5 {
        pool.submit_keyed(9, job).unwrap();
    }
    // The other worker is free, but must not start key 9.
    pool.submit_keyed(8, 6).unwrap();
    wait_for("job 6 on the free worker", || outcomes.completed() == [6]);
    assert_eq!(pool.metrics().coalesced, 4);
    assert_eq!(pool.metrics().queued, 1);
    gate.open();
    assert!(pool.shutdown(PATIENCE).is_empty());
    assert_eq!(outcomes.completed(), [5, 6, BLOCKER]);
    let dropped: Vec<u32> = outcomes
        .all()
        .into_iter()
        .filter_map(|s| match s {
            Seen::Dropped(job, DropReason::Coalesced) => Some(job),
            _ => None,
        })
        .collect();
    assert_eq!(dropped, [1, 2, 3, 4]);
}

#[test]
fn a_queued_job_does_not_wait_behind_the_jobs_deferred_to_a_busy_key() {
    let (gate, started, outcomes) = (Gate::default(), Arc::default(), Outcomes::default());
    let pool = blocking_pool(1, 4, Policy::Reject, &gate, &started, &outcomes);
    pool.submit_keyed(9, BLOCKER).unwrap();
    wait_for("the blocker to start", || {
        started.load(Ordering::SeqCst) == 1
    });
    pool.submit_keyed(9, 1).unwrap(); // Deferred to the worker running key 9.
    pool.submit_keyed(8, 2).unwrap(); // Queued.
    gate.open();
    assert!(pool.shutdown(PATIENCE).is_empty());
    // The only worker took job 2 from the queue as key 9's run ended, and runs it before
    // job 1: a key resubmitted while it runs cannot keep the queue waiting behind it.
    let order: Vec<u32> = outcomes
        .all()
        .into_iter()
        .filter_map(|s| match s {
            Seen::Completed(job, _) => Some(job),
            _ => None,
        })
        .collect();
    assert_eq!(order, [BLOCKER, 2, 1]);
}

#[test]
fn a_thousand_jobs_with_many_panics_on_two_workers_all_reported_none_lost() {
    let outcomes = Outcomes::default();
    let pool: Pool<u32, u32> = Pool::builder()
        .workers(2)
        .capacity(64)
        .on_event(outcomes.listener())
        .build(|job: &u32| {
            if job.is_multiple_of(3) {
                panic!("job {job} panics on purpose");
            }
            Ok(())
        })
        .unwrap();
    quiet_intended_panics();
    for job in 0..1000 {
        pool.submit(job).unwrap();
    }
    wait_for("all outcomes", || outcomes.all().len() == 1000);
    let metrics = pool.metrics();
    assert!(pool.shutdown(PATIENCE).is_empty());
    let expected_done: Vec<u32> = (0..1000).filter(|j| j % 3 != 0).collect();
    assert_eq!(outcomes.completed(), expected_done);
    let mut dead = Vec::new();
    for seen in outcomes.all() {
        if let Seen::Dead(job, failures) = seen {
            assert_eq!(failures, [format!("panicked: job {job} panics on purpose")]);
            dead.push(job);
        }
    }
    dead.sort_unstable();
    assert_eq!(dead, (0..1000).filter(|j| j % 3 == 0).collect::<Vec<_>>());
    assert_eq!(
        (metrics.completed, metrics.panicked, metrics.dead),
        (666, 334, 334)
    );
}

#[test]
fn both_workers_survive_panics() {
    let both = Arc::new(std::sync::Barrier::new(2));
    let outcomes = Outcomes::default();
    let pool: Pool<u32, u32> = {
        let both = Arc::clone(&both);
        Pool::builder()
            .workers(2)
            .on_event(outcomes.listener())
            .build(move |job: &u32| {
                if *job < 100 {
                    panic!("boom {job}");
                }
                // Only completes if the other worker is alive to meet it.
                both.wait();
                Ok(())
            })
            .unwrap()
    };
    quiet_intended_panics();
    for job in 0..100 {
        pool.submit(job).unwrap();
    }
    wait_for("the panics", || outcomes.all().len() == 100);
    pool.submit(100).unwrap();
    pool.submit(101).unwrap();
    wait_for("two jobs that need two live workers", || {
        outcomes.completed() == [100, 101]
    });
    assert!(pool.shutdown(PATIENCE).is_empty());
}

/// Keeps the panics the tests cause on purpose (their messages say "on purpose" or "boom") out
/// of the output. Installed once and chained: every other panic goes to the previous hook.
fn quiet_intended_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let message = info.to_string();
            if !message.contains("on purpose") && !message.contains("boom") {
                previous(info);
            }
        }));
    });
}

#[test]
fn shutdown_returns_exactly_the_jobs_that_did_not_run() {
    let (gate, started, outcomes) = (
        Gate::default(),
        Arc::new(AtomicUsize::new(0)),
        Outcomes::default(),
    );
    let pool: Pool<u32, u32> = {
        let (gate, started) = (gate.clone(), Arc::clone(&started));
        Pool::builder()
            .workers(1)
            .capacity(100)
            .thread_name("shutq")
            .on_event(outcomes.listener())
            .build(move |job: &u32| {
                if *job == BLOCKER {
                    started.fetch_add(1, Ordering::SeqCst);
                    gate.wait();
                }
                Ok(())
            })
            .unwrap()
    };
    pool.submit_keyed(5, BLOCKER).unwrap();
    wait_for("the blocker to start", || {
        started.load(Ordering::SeqCst) == 1
    });
    for job in 1..=40 {
        match job % 4 {
            0 => pool.submit(job).unwrap(),
            1 => pool.submit_keyed(5, job).unwrap(), // waits on the running key, coalescing
            _ => pool.submit_keyed(job % 4 + 10, job).unwrap(), // queued keys, coalescing
        };
    }
    // Let the blocker go only once shutdown has stopped the pool: the overseer thread is the
    // first to go, after intake closed and the (zero) grace ran out.
    let release = {
        let gate = gate.clone();
        after_thread_exits("shutq-overseer", move || gate.open())
    };
    let returned = pool.shutdown(Duration::ZERO);
    release.join().unwrap();
    assert_eq!(outcomes.completed(), [BLOCKER]);
    let coalesced: BTreeSet<u32> = outcomes
        .all()
        .into_iter()
        .filter_map(|s| match s {
            Seen::Dropped(job, DropReason::Coalesced) => Some(job),
            _ => None,
        })
        .collect();
    // Unkeyed jobs all wait; of each key, only the last submitted.
    let mut expected: Vec<u32> = (1..=40).filter(|j| j % 4 == 0).collect();
    expected.extend([37, 38, 39]);
    expected.sort_unstable();
    assert_eq!(
        returned, expected,
        "returned in submission order, nothing else"
    );
    let all: BTreeSet<u32> = returned
        .iter()
        .copied()
        .chain(coalesced.iter().copied())
        .collect();
    assert_eq!(
        all,
        (1..=40).collect(),
        "every job is returned or was reported coalesced"
    );
    assert_eq!(
        returned.len() + coalesced.len(),
        40,
        "no job both returned and dropped"
    );
}

#[test]
fn shutdown_with_enough_grace_drains_everything_and_later_submits_are_refused() {
    let outcomes = Outcomes::default();
    let pool: Pool<u32, u32> = Pool::builder()
        .workers(2)
        .capacity(500)
        .on_event(outcomes.listener())
        .build(|_: &u32| Ok(()))
        .unwrap();
    for job in 0..500 {
        pool.submit_keyed(job % 7, job).unwrap();
    }
    assert!(pool.shutdown(PATIENCE).is_empty());
    let done = outcomes.completed().len();
    let coalesced = outcomes.count(|s| matches!(s, Seen::Dropped(_, DropReason::Coalesced)));
    assert_eq!(done + coalesced, 500);
}

#[test]
fn several_producers_share_the_pool_and_hand_it_back_for_shutdown() {
    fn is_send_sync<T: Send + Sync>() {}
    // A job needs to be `Send` only.
    is_send_sync::<Pool<std::cell::Cell<u8>, String>>();
    let outcomes = Outcomes::default();
    let pool: Arc<Pool<u32, u32>> = Arc::new(
        Pool::builder()
            .workers(2)
            .capacity(16)
            .on_event(outcomes.listener())
            .build(|_: &u32| Ok(()))
            .unwrap(),
    );
    let producers: Vec<_> = (0..4)
        .map(|p| {
            let pool = Arc::clone(&pool);
            thread::spawn(move || {
                for n in 0..250 {
                    let job = p * 1000 + n;
                    if n % 2 == 0 {
                        pool.submit(job).unwrap();
                    } else {
                        pool.submit_keyed(job % 8, job).unwrap();
                    }
                }
            })
        })
        .collect();
    for producer in producers {
        producer.join().unwrap();
    }
    let pool = Arc::into_inner(pool).expect("every producer is done with the pool");
    assert!(pool.shutdown(PATIENCE).is_empty());
    let finals = outcomes.count(|s| matches!(s, Seen::Completed(..) | Seen::Dropped(..)));
    assert_eq!(finals, 1000, "every job has exactly one final outcome");
    assert_eq!(
        outcomes.completed().len()
            + outcomes.count(|s| matches!(s, Seen::Dropped(_, DropReason::Coalesced))),
        1000
    );
}

#[test]
fn dropping_the_pool_reports_unrun_jobs_and_joins_every_thread() {
    let (gate, started, outcomes) = (
        Gate::default(),
        Arc::new(AtomicUsize::new(0)),
        Outcomes::default(),
    );
    let pool: Pool<u32, u32> = {
        let (gate, started) = (gate.clone(), Arc::clone(&started));
        Pool::builder()
            .workers(3)
            .thread_name("dropq")
            .timeout(Duration::from_secs(60))
            .on_event(outcomes.listener())
            .build(move |job: &u32| {
                if *job == BLOCKER {
                    started.fetch_add(1, Ordering::SeqCst);
                    gate.wait();
                }
                Ok(())
            })
            .unwrap()
    };
    wait_for("three workers and the overseer", || ours("dropq") == 4);
    for _ in 0..3 {
        pool.submit(BLOCKER).unwrap();
    }
    wait_for("the blockers to start", || {
        started.load(Ordering::SeqCst) == 3
    });
    pool.submit(1).unwrap();
    pool.submit(2).unwrap();
    let opener = {
        let gate = gate.clone();
        after_thread_exits("dropq-overseer", move || gate.open())
    };
    drop(pool);
    opener.join().unwrap();
    assert_no_thread_left("dropq");
    assert_eq!(outcomes.completed(), [BLOCKER; 3]);
    let dropped: Vec<_> = outcomes
        .all()
        .into_iter()
        .filter(|s| matches!(s, Seen::Dropped(_, DropReason::Shutdown)))
        .collect();
    assert_eq!(
        dropped,
        [
            Seen::Dropped(1, DropReason::Shutdown),
            Seen::Dropped(2, DropReason::Shutdown)
        ]
    );
}

/// Names of this process's threads.
fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim_end().to_owned())
        .collect()
}

/// How many of this process's threads carry the `prefix-` name.
fn ours(prefix: &str) -> usize {
    let prefix = format!("{prefix}-");
    thread_names()
        .iter()
        .filter(|n| n.starts_with(&prefix))
        .count()
}

/// Waits until no thread carries the `prefix-` name: a thread joined a moment ago may linger in
/// /proc briefly, one that outlives its pool stays for good and fails the test.
fn assert_no_thread_left(prefix: &str) {
    wait_for(&format!("every {prefix}- thread to be gone"), || {
        ours(prefix) == 0
    });
}

/// Runs `then` on another thread once the thread named `name`, which must exist now, has exited.
fn after_thread_exits(
    name: &'static str,
    then: impl FnOnce() + Send + 'static,
) -> thread::JoinHandle<()> {
    let present = move || thread_names().iter().any(|n| n == name);
    // Thread names are set by the threads themselves, a moment after they start.
    wait_for(&format!("{name} to start"), present);
    thread::spawn(move || {
        wait_for(&format!("{name} to exit"), || !present());
        then();
    })
}

/// An error with a cause, to check that dead letters keep the whole chain.
#[derive(Debug)]
struct Outer(std::io::Error);
impl fmt::Display for Outer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("indexing failed")
    }
}
impl std::error::Error for Outer {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

#[test]
fn failed_attempts_are_retried_and_the_last_failure_goes_to_the_dead_letters() {
    let outcomes = Outcomes::default();
    let attempts = Arc::new(Mutex::new(HashMap::<u32, u32>::new()));
    let pool: Pool<u32, u32> = {
        let attempts = Arc::clone(&attempts);
        Pool::builder()
            .workers(1)
            .retry(RetryPolicy::attempts(3).base_delay(Duration::from_millis(1)))
            .on_event(outcomes.listener())
            .build(move |job: &u32| {
                let mut attempts = attempts.lock().unwrap();
                let n = attempts.entry(*job).or_default();
                *n += 1;
                // Job 1 succeeds on its third attempt; job 2 never does.
                if *job == 2 || *n < 3 {
                    return Err(Box::new(Outer(std::io::Error::other("disk on fire"))));
                }
                Ok(())
            })
            .unwrap()
    };
    pool.submit(1).unwrap();
    pool.submit(2).unwrap();
    wait_for("both outcomes", || {
        outcomes.count(|s| matches!(s, Seen::Completed(..) | Seen::Dead(..))) == 2
    });
    let metrics = pool.metrics();
    assert!(pool.shutdown(PATIENCE).is_empty());
    let all = outcomes.all();
    assert!(all.contains(&Seen::Completed(1, 3)), "{all:?}");
    let chain = "error: indexing failed: disk on fire".to_owned();
    assert!(
        all.contains(&Seen::Dead(2, vec![chain.clone(), chain.clone(), chain])),
        "{all:?}"
    );
    assert_eq!(outcomes.count(|s| matches!(s, Seen::Retrying(..))), 4);
    assert_eq!(
        (
            metrics.failed,
            metrics.retried,
            metrics.dead,
            metrics.completed
        ),
        (5, 4, 1, 1)
    );
}

#[test]
fn a_full_retry_backlog_sends_failures_to_the_dead_letters_and_shutdown_returns_pending_retries() {
    let outcomes = Outcomes::default();
    let pool: Pool<u32, u32> = Pool::builder()
        .workers(1)
        .capacity(1)
        .retry(
            RetryPolicy::attempts(2)
                .base_delay(Duration::from_secs(600))
                .jitter(false),
        )
        .on_event(outcomes.listener())
        .build(|_: &u32| Err("always fails".into()))
        .unwrap();
    pool.submit(1).unwrap();
    wait_for("job 1's retry to be scheduled", || {
        outcomes.count(|s| matches!(s, Seen::Retrying(..))) == 1
    });
    // The backlog (capacity 1) is full: job 2 goes straight to the dead letters, unretried.
    pool.submit(2).unwrap();
    wait_for("job 2's dead letter", || {
        outcomes.count(|s| matches!(s, Seen::Dead(2, _))) == 1
    });
    assert_eq!(pool.metrics().queued, 1, "job 1 waits for its retry");
    // Job 1's retry is ten minutes away: shutdown gives it back instead of waiting.
    assert_eq!(pool.shutdown(Duration::ZERO), [1]);
    assert_eq!(outcomes.count(|s| matches!(s, Seen::Retrying(..))), 1);
    assert_eq!(
        outcomes.all().last(),
        Some(&Seen::Dead(2, vec!["error: always fails".to_owned()]))
    );
}

#[test]
fn a_job_waiting_for_its_retry_does_not_hold_a_worker() {
    let outcomes = Outcomes::default();
    let failed_once = Arc::new(AtomicBool::new(false));
    let pool: Pool<u32, u32> = {
        let failed_once = Arc::clone(&failed_once);
        Pool::builder()
            .workers(1)
            .retry(
                RetryPolicy::attempts(2)
                    .base_delay(Duration::from_millis(300))
                    .jitter(false),
            )
            .on_event(outcomes.listener())
            .build(move |job: &u32| {
                if *job == 1 && !failed_once.swap(true, Ordering::SeqCst) {
                    return Err("first try fails".into());
                }
                Ok(())
            })
            .unwrap()
    };
    pool.submit(1).unwrap();
    wait_for("the first failure", || failed_once.load(Ordering::SeqCst));
    pool.submit(2).unwrap();
    wait_for("both to complete", || outcomes.completed() == [1, 2]);
    let order: Vec<Seen> = outcomes
        .all()
        .into_iter()
        .filter(|s| matches!(s, Seen::Completed(..)))
        .collect();
    assert_eq!(
        order,
        [Seen::Completed(2, 1), Seen::Completed(1, 2)],
        "job 2 ran during job 1's backoff"
    );
    assert!(pool.shutdown(PATIENCE).is_empty());
}

#[test]
fn a_stuck_job_times_out_its_worker_is_replaced_and_its_key_stays_held() {
    let (gate, started, outcomes) = (
        Gate::default(),
        Arc::new(AtomicUsize::new(0)),
        Outcomes::default(),
    );
    let pool: Pool<u32, u32> = {
        let (gate, started) = (gate.clone(), Arc::clone(&started));
        Pool::builder()
            .workers(1)
            .thread_name("stuckq")
            .timeout(Duration::from_millis(100))
            .on_event(outcomes.listener())
            .build(move |job: &u32| {
                if *job == BLOCKER {
                    started.fetch_add(1, Ordering::SeqCst);
                    gate.wait();
                }
                Ok(())
            })
            .unwrap()
    };
    pool.submit_keyed(1, BLOCKER).unwrap();
    wait_for("the stuck job's timeout", || {
        outcomes.count(|s| matches!(s, Seen::TimedOut(0))) == 1
    });
    // The replacement worker runs other work while the stuck one is still stuck...
    pool.submit(2).unwrap();
    pool.submit_keyed(1, 3).unwrap();
    wait_for("job 2 on the replacement worker", || {
        outcomes.completed() == [2]
    });
    assert_eq!(pool.metrics().timed_out, 1);
    assert_eq!(pool.metrics().queued, 1, "job 3 waits for its key");
    // ...but not job 3, whose key the stuck job still holds, until that job returns.
    gate.open();
    wait_for("job 3 after the stuck job returned", || {
        outcomes.completed() == [2, 3]
    });
    let timed_out = outcomes
        .all()
        .into_iter()
        .find(|s| matches!(s, Seen::Dead(BLOCKER, _)));
    match timed_out {
        Some(Seen::Dead(_, failures)) => {
            assert!(failures[0].starts_with("timed out after"), "{failures:?}")
        }
        other => panic!("expected the stuck job as a dead letter, got {other:?}"),
    }
    assert!(pool.shutdown(PATIENCE).is_empty());
    assert_no_thread_left("stuckq");
}

#[test]
fn metrics_show_queue_running_and_latencies() {
    let (gate, started, outcomes) = (Gate::default(), Arc::default(), Outcomes::default());
    let pool = blocking_pool(
        1,
        256,
        Policy::Block { timeout: None },
        &gate,
        &started,
        &outcomes,
    );
    fill(&pool, &started, 0..129);
    let busy = pool.metrics();
    assert_eq!((busy.running, busy.queued, busy.completed), (1, 129, 0));
    gate.open();
    wait_for("the queue to drain", || pool.metrics().completed == 130);
    let done = pool.metrics();
    assert_eq!((done.running, done.queued), (0, 0));
    // One job in 64 is sampled: the blocker (job number 0), then 64 and 128, which waited
    // behind it.
    assert_eq!(done.wait.samples, 3);
    assert!(done.wait.max >= done.wait.p50 && done.wait.p50 > Duration::ZERO);
    assert!(done.run.samples >= 3);
    assert!(pool.shutdown(PATIENCE).is_empty());
}

#[test]
fn a_panicking_event_callback_costs_neither_the_worker_nor_later_jobs() {
    let completed = Arc::new(AtomicUsize::new(0));
    let pool: Pool<u32, u32> = {
        let completed = Arc::clone(&completed);
        Pool::builder()
            .workers(1)
            .on_event(move |event| {
                if let Event::Completed { job: 0, .. } = event {
                    panic!("callback boom on purpose");
                }
                completed.fetch_add(1, Ordering::SeqCst);
            })
            .build(|_: &u32| Ok(()))
            .unwrap()
    };
    quiet_intended_panics();
    pool.submit(0).unwrap();
    pool.submit(1).unwrap();
    wait_for("job 1", || completed.load(Ordering::SeqCst) == 1);
    assert_eq!(pool.metrics().completed, 2);
    assert!(pool.shutdown(PATIENCE).is_empty());
}

#[test]
fn impossible_configurations_are_refused() {
    let no_workers = Pool::<u32>::builder().workers(0).build(|_: &u32| Ok(()));
    assert!(matches!(no_workers, Err(Error::Config(_))));
    let no_room = Pool::<u32>::builder().capacity(0).build(|_: &u32| Ok(()));
    assert!(matches!(no_room, Err(Error::Config(_))));
}

/// The property test's stand-in key for unkeyed submits.
const UNKEYED: u8 = 4;

/// What the property test's handler saw: per key, the job numbers in the order they started.
#[derive(Default)]
struct KeyLog {
    running: HashMap<u8, u32>,
    started: HashMap<u8, Vec<u32>>,
    overlaps: Vec<(u8, u32, u32)>,
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    /// Random submit sequences over few keys (key 4 stands for unkeyed jobs), some jobs failing
    /// once and retried, under the three policies that accept every job: no two jobs of one key
    /// overlap, jobs of a key start in submission order, the last job submitted for each key
    /// runs to completion (or, under drop-oldest, is reported evicted), and every job has
    /// exactly one final outcome.
    #[test]
    fn keyed_jobs_never_overlap_keep_order_and_the_last_one_runs(
        ops in prop::collection::vec((0u8..5, any::<bool>(), 0u8..3), 1..120),
        workers in 1usize..4,
        policy in prop::sample::select(vec![
            Policy::Block { timeout: None },
            Policy::CallerRuns,
            Policy::DropOldest,
        ]),
    ) {
        let log = Arc::new(Mutex::new(KeyLog::default()));
        let failing: Arc<Mutex<BTreeSet<u32>>> = Arc::default();
        let outcomes = Outcomes::default();
        let submitted: Arc<Mutex<HashMap<u32, Instant>>> = Arc::default();
        let pool: Pool<u32, u8> = {
            let (log, failing, submitted) = (Arc::clone(&log), Arc::clone(&failing), Arc::clone(&submitted));
            Pool::builder()
                .workers(workers)
                .capacity(8)
                .policy(policy)
                .retry(RetryPolicy::attempts(2).base_delay(Duration::from_millis(1)))
                .on_event(outcomes.listener())
                .build(move |job: &u32| {
                    let key = (job >> 16) as u8;
                    if key != UNKEYED {
                        let mut log = log.lock().unwrap();
                        if let Some(other) = log.running.insert(key, *job) {
                            log.overlaps.push((key, other, *job));
                        }
                        log.started.entry(key).or_default().push(*job);
                        assert!(submitted.lock().unwrap().contains_key(job), "ran before submit");
                    }
                    let spin = job % 3;
                    for _ in 0..spin * 50 { thread::yield_now(); }
                    if key != UNKEYED {
                        log.lock().unwrap().running.remove(&key);
                    }
                    if failing.lock().unwrap().remove(job) {
                        return Err("fails once".into());
                    }
                    Ok(())
                })
                .unwrap()
        };
        let mut last = HashMap::new();
        for (seq, &(key, fails, pause)) in ops.iter().enumerate() {
            let job = (u32::from(key) << 16) | seq as u32;
            if fails { failing.lock().unwrap().insert(job); }
            submitted.lock().unwrap().insert(job, Instant::now());
            if key == UNKEYED {
                pool.submit(job).unwrap();
            } else {
                pool.submit_keyed(key, job).unwrap();
                last.insert(key, job);
            }
            for _ in 0..pause { thread::yield_now(); }
        }
        prop_assert!(pool.shutdown(PATIENCE).is_empty());
        let log = log.lock().unwrap();
        prop_assert!(log.overlaps.is_empty(), "overlapping runs: {:?}", log.overlaps);
        for (key, started) in &log.started {
            // Retries repeat a number; a number never comes back after a newer one started.
            prop_assert!(started.windows(2).all(|w| w[0] <= w[1]), "key {} out of order: {:?}", key, started);
        }
        // The spec's words: the last job submitted for a key runs (an attempt starts) after
        // its submission; under drop-oldest it may instead be evicted, and reported so.
        let all = outcomes.all();
        for (key, job) in last {
            let ran = log.started.get(&key).is_some_and(|started| started.contains(&job));
            let evicted = policy == Policy::DropOldest
                && all.contains(&Seen::Dropped(job, DropReason::Evicted));
            prop_assert!(ran || evicted, "last job {} of key {} never ran under {:?}", job, key, policy);
        }
        // Every job has exactly one final outcome.
        let finals = outcomes.count(|s| matches!(s, Seen::Completed(..) | Seen::Dead(..) | Seen::Dropped(..)));
        prop_assert_eq!(finals, ops.len());
    }
}

/// A held pool lets a running attempt finish but starts nothing more, and starts the rest once
/// released; shutdown during a hold returns what was not started.
#[test]
fn a_held_pool_starts_no_attempt_until_released() {
    let (started_tx, started) = crossbeam_channel::unbounded();
    let gate = Gate::default();
    let pool = {
        let gate = gate.clone();
        Pool::<u32, ()>::builder()
            .workers(1)
            .build(move |n: &u32| {
                started_tx.send(*n).unwrap();
                if *n == 0 {
                    gate.wait();
                }
                Ok(())
            })
            .unwrap()
    };
    pool.submit(0).unwrap();
    assert_eq!(started.recv_timeout(PATIENCE), Ok(0));
    pool.hold();
    assert!(pool.is_held());
    pool.submit(1).unwrap();
    pool.submit(2).unwrap();
    gate.open();
    wait_for("the running attempt to end", || {
        pool.metrics().completed >= 1
    });
    // The one worker is free and two jobs wait: unheld, it would start one at once.
    assert_eq!(
        started.recv_timeout(Duration::from_millis(300)),
        Err(crossbeam_channel::RecvTimeoutError::Timeout),
        "an attempt started while the pool was held"
    );
    assert_eq!(pool.metrics().queued, 2, "held jobs count as queued");
    pool.release();
    assert_eq!(started.recv_timeout(PATIENCE), Ok(1));
    assert_eq!(started.recv_timeout(PATIENCE), Ok(2));

    pool.hold();
    pool.submit(3).unwrap();
    let left = pool.shutdown(Duration::from_millis(50));
    assert_eq!(left, [3], "a job held at shutdown is returned, not run");
    assert!(started.try_recv().is_err());
}

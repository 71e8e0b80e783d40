//! A bounded worker pool with backpressure policies, per-key coalescing and panic isolation.
//!
//! `ward-queue` runs jobs on a fixed number of worker threads behind a bounded queue. Submitters
//! choose what happens when it is full (block, reject, drop the oldest, run in the caller); jobs
//! with the same key coalesce so a file changed many times while queued is processed once; a
//! panicking job is caught and reported, never taking a worker with it.
//!
//! ```
//! use std::sync::mpsc;
//! use ward_queue::{Event, Pool};
//!
//! let (events, outcomes) = mpsc::channel();
//! let pool: Pool<u32> = Pool::builder()
//!     .workers(2)
//!     .capacity(16)
//!     .on_event(move |event| events.send(event).unwrap())
//!     .build(|n: &u32| {
//!         if *n == 3 {
//!             panic!("three is unlucky");
//!         }
//!         Ok(())
//!     })
//!     .unwrap();
//! for n in 0..5 {
//!     pool.submit(n).unwrap();
//! }
//! assert!(pool.shutdown(std::time::Duration::from_secs(10)).is_empty());
//! let mut completed = 0;
//! let mut dead = Vec::new();
//! for event in outcomes.try_iter() {
//!     match event {
//!         Event::Completed { .. } => completed += 1,
//!         Event::Dead { job, failures, .. } => dead.push((job, failures[0].to_string())),
//!         _ => {}
//!     }
//! }
//! assert_eq!(completed, 4);
//! assert_eq!(dead, [(3, "panicked: three is unlucky".to_owned())]);
//! ```
//!
//! # Jobs, keys and errors
//! A [`Pool<J, K>`](Pool) runs jobs of type `J`; `K` is the type of the keys that coalesce them
//! (`String` unless said otherwise). [`Pool::submit_keyed`] takes the key first and the job
//! second, as `HashMap::insert` takes the key before the value. A handler fails an attempt by
//! returning a [`JobError`], into which any error converts with `?`, and a message with
//! `JobError::from("...")` or `.into()`:
//!
//! ```
//! use std::path::PathBuf;
//! use std::sync::mpsc;
//! use std::time::Duration;
//! use ward_queue::{Event, JobError, Pool};
//!
//! /// The job: compile one revision of a file.
//! struct Compile {
//!     path: PathBuf,
//!     revision: u32,
//! }
//!
//! let (events, outcomes) = mpsc::channel();
//! // The job type first, the key type second: `Compile` jobs, keyed by path.
//! let pool: Pool<Compile, PathBuf> = Pool::builder()
//!     .on_event(move |event| events.send(event).unwrap())
//!     .build(|job: &Compile| {
//!         if job.revision == 0 {
//!             let message = format!("{}: nothing to compile", job.path.display());
//!             return Err(JobError::from(message));
//!         }
//!         Ok(())
//!     })?;
//! for (name, revision) in [("a.rs", 0), ("b.rs", 1)] {
//!     let path = PathBuf::from(name);
//!     // The key first, then the job.
//!     pool.submit_keyed(path.clone(), Compile { path, revision })?;
//! }
//! assert!(pool.shutdown(Duration::from_secs(10)).is_empty());
//!
//! let mut dead = Vec::new();
//! for event in outcomes.try_iter() {
//!     if let Event::Dead { job, failures, .. } = event {
//!         dead.push((job.path, failures[0].to_string()));
//!     }
//! }
//! let message = "error: a.rs: nothing to compile".to_owned();
//! assert_eq!(dead, [(PathBuf::from("a.rs"), message)]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Crate features
//! None.
//!
//! # Theory of operation
//! The queue is a crossbeam bounded channel. An unkeyed job travels through it as itself; a
//! keyed job waits in a key table (one waiting job per key, latest wins) and a token naming its
//! key's slot travels through the queue. A job whose key is running is not queued at all: the
//! worker running the key runs it once that run ends (after at most one job of another key that
//! it had already taken from the queue, so that a busy key cannot hold the queue up). That is how
//! two jobs of one key never run at once and the last one submitted always runs after its
//! submission. The key table is split by key hash into sixteen tables, each under its own lock,
//! so the submitter and the workers seldom wait for one another's lock. A failed attempt goes to
//! the overseer thread's retry heap with its backoff and comes back through the queue when due;
//! a keyed job keeps its key meanwhile, and a newer job of that key supersedes the retry.
//!
//! Every accepted job ends in exactly one [`Event::Completed`], [`Event::Dead`] or
//! [`Event::Dropped`], or is returned by [`Pool::shutdown`].
//!
//! Submitting borrows the pool and shutting down consumes it, so no submit can race the
//! shutdown and the submit path takes no lock for it. To submit from several threads, share an
//! `Arc<Pool>` and take the pool back with `Arc::into_inner` to shut it down.
//!
//! The pool owns its threads: `shutdown` and `Drop` stop and join the workers and the overseer.
//! Events are delivered on the thread that produced them, so the callback should be quick (a
//! channel send); a handler that submits to its own pool under `Policy::Block` can deadlock it
//! when the queue is full, as with any bounded pool.
//!
//! # Known problems
//! A thread cannot be killed. A job that runs past the timeout is reported
//! ([`Event::TimedOut`]) and its worker replaced, so the pool keeps its capacity, but the stuck
//! thread runs on until the handler returns, keeps the job's key (jobs of that key wait for it,
//! then run on that thread before it exits), and is left running (not joined) if the pool shuts
//! down first. Jobs that must be killable run in supervised child
//! processes, which `ward-server` builds from this pool and `ward-supervisor`.
//!
//! `CallerRuns` runs jobs in the submitter's thread, where no timeout applies.

#![warn(missing_docs)]

mod error;
mod event;
mod keys;
mod metrics;
mod pool;
mod retry;

pub use error::Error;
pub use event::{DropReason, Event, Failure, JobError, JobId};
pub use metrics::{Latency, Metrics};
pub use pool::{Builder, Policy, Pool};
pub use retry::RetryPolicy;

//! What the pool tells its owner about each job: [`Event`], [`Failure`], [`DropReason`], [`JobId`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// The error a handler returns for a failed attempt.
///
/// Any error type converts into it with `?`, and so does a message: `JobError::from("...")`,
/// or `.into()` on a `&str` or a `String` (`Err("disk full".into())`,
/// `Err(format!("{path}: disk full").into())`), through the standard library's conversions
/// into a boxed error. Its `Display` is the message; the [`Failure::Error`] it becomes shows it
/// after `error: `, followed by its `source()` chain.
///
/// ```
/// use ward_queue::JobError;
///
/// fn check(size: &str) -> Result<(), JobError> {
///     let size: u64 = size.parse()?; // any `std::error::Error` converts with `?`
///     if size == 0 {
///         return Err("empty file".into()); // a `&str` with `.into()`
///     }
///     if size > 1024 {
///         return Err(format!("{size} bytes is over the limit").into()); // a `String`
///     }
///     Ok(())
/// }
///
/// assert!(check("10").is_ok());
/// assert_eq!(check("0").unwrap_err().to_string(), "empty file");
/// assert_eq!(check("2048").unwrap_err().to_string(), "2048 bytes is over the limit");
/// assert_eq!(check("ten").unwrap_err().to_string(), "invalid digit found in string");
/// assert_eq!(JobError::from("disk full").to_string(), "disk full");
/// ```
pub type JobError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The pool's number for one submitted job, unique within the pool and increasing in submission
/// order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(pub(crate) u64);

impl JobId {
    /// The number itself.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "job#{}", self.0)
    }
}

/// Why one attempt of a job failed.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Failure {
    /// The handler returned an error; `Display` shows its whole `source()` chain.
    Error(Arc<dyn std::error::Error + Send + Sync + 'static>),
    /// The handler panicked with this message.
    Panic(String),
    /// The attempt ran past the pool's job timeout; the value is how long it had run when the
    /// pool gave up on it.
    TimedOut(Duration),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Error(err) => {
                write!(f, "error: {err}")?;
                let mut source = err.source();
                while let Some(cause) = source {
                    write!(f, ": {cause}")?;
                    source = cause.source();
                }
                Ok(())
            }
            Failure::Panic(message) => write!(f, "panicked: {message}"),
            Failure::TimedOut(after) => write!(f, "timed out after {after:?}"),
        }
    }
}

/// Why a job was let go without running to an outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DropReason {
    /// A newer job with the same key replaced it while it waited (latest wins).
    Coalesced,
    /// It was the oldest queued job when the queue was full under
    /// [`Policy::DropOldest`](crate::Policy::DropOldest).
    Evicted,
    /// It was waiting to be retried when a newer job with its key arrived.
    Superseded,
    /// The pool was dropped (not shut down) while it waited; [`Pool::shutdown`](crate::Pool::shutdown)
    /// returns such jobs instead.
    Shutdown,
}

/// An outcome, reported to the callback given to
/// [`Builder::on_event`](crate::Builder::on_event). Every accepted job ends in exactly one
/// `Completed`, `Dead` or `Dropped` event, or is returned by [`Pool::shutdown`](crate::Pool::shutdown).
#[derive(Debug)]
#[non_exhaustive]
pub enum Event<J> {
    /// The handler returned `Ok` on attempt number `attempts`.
    Completed {
        /// The job's number.
        id: JobId,
        /// The job, given back.
        job: J,
        /// How many attempts it took (1 when the first one succeeded).
        attempts: u32,
    },
    /// An attempt failed and the job will be tried again after `delay`, without holding a worker
    /// meanwhile. Not an end: the job's `Completed`, `Dead` or `Dropped` event follows.
    Retrying {
        /// The job's number.
        id: JobId,
        /// A copy of the job, made for this event (the pool keeps the original to retry it,
        /// which is why [`Builder::retry`](crate::Builder::retry) needs `J: Clone`).
        job: J,
        /// The attempt that failed (1 for the first).
        attempt: u32,
        /// Why it failed.
        failure: Failure,
        /// The backoff before the next attempt.
        delay: Duration,
    },
    /// The job failed its last allowed attempt: the dead letter, with every attempt's failure in
    /// order.
    Dead {
        /// The job's number.
        id: JobId,
        /// The job, given back.
        job: J,
        /// One failure per attempt, oldest first; never empty.
        failures: Vec<Failure>,
    },
    /// An attempt ran past the job timeout. Its thread cannot be killed: the pool has started a
    /// replacement worker, and the job's `Retrying`/`Dead` event follows if the handler ever
    /// returns.
    TimedOut {
        /// The job's number.
        id: JobId,
        /// The attempt that overran.
        attempt: u32,
        /// How long it had run when the pool gave up on it.
        after: Duration,
    },
    /// The job was let go without running to an outcome.
    Dropped {
        /// The job's number.
        id: JobId,
        /// The job, given back.
        job: J,
        /// Why it was let go.
        reason: DropReason,
    },
}

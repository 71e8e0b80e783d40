//! The crate's error type: why a job was refused (with the job given back) or a pool not built.

use std::fmt;

/// Why a submission was refused or a pool could not be built.
///
/// A refused job always comes back inside the error (like crossbeam's `TrySendError::Full(T)`),
/// so the caller can keep it, retry it later or report it: [`Error::into_job`] takes it out.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum Error<J> {
    /// The queue was full and the policy is [`Policy::Reject`](crate::Policy::Reject).
    #[error("the queue is full")]
    Full(J),
    /// The queue stayed full (or intake paused) for the whole timeout of
    /// [`Policy::Block`](crate::Policy::Block).
    #[error("the queue stayed full until the submit timeout")]
    Timeout(J),
    /// Intake is paused (see [`Pool::pause`](crate::Pool::pause)) and the policy does not wait.
    #[error("intake is paused")]
    Paused(J),
    /// The pool is shutting down and takes no more jobs.
    #[error("the pool is shutting down")]
    Closed(J),
    /// The builder was given an impossible setting.
    #[error("invalid pool configuration: {0}")]
    Config(&'static str),
    /// A worker or overseer thread could not be started.
    #[error("could not start a pool thread")]
    Spawn(#[source] std::io::Error),
}

impl<J> Error<J> {
    /// The refused job, if this error carries one.
    pub fn into_job(self) -> Option<J> {
        match self {
            Error::Full(job) | Error::Timeout(job) | Error::Paused(job) | Error::Closed(job) => {
                Some(job)
            }
            Error::Config(_) | Error::Spawn(_) => None,
        }
    }
}

// By hand so that `J` need not be `Debug` (crossbeam's errors do the same).
impl<J> fmt::Debug for Error<J> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Full(_) => f.write_str("Full(..)"),
            Error::Timeout(_) => f.write_str("Timeout(..)"),
            Error::Paused(_) => f.write_str("Paused(..)"),
            Error::Closed(_) => f.write_str("Closed(..)"),
            Error::Config(what) => f.debug_tuple("Config").field(what).finish(),
            Error::Spawn(err) => f.debug_tuple("Spawn").field(err).finish(),
        }
    }
}

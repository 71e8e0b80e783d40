//! The crate's one error type.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while spawning, signalling, waiting for or supervising a child.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Process supervision is implemented for Linux only; this platform builds but cannot spawn.
    #[error("process supervision is not supported on this platform ({0}); only Linux is")]
    Unsupported(&'static str),
    /// The program could not be started (not found, not executable, a limit could not be set...).
    #[error("cannot spawn {program:?}: {source}")]
    Spawn {
        /// The program that was to be run.
        program: String,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// A memory limit was asked for but no memory cgroup can be created here.
    #[error("memory cgroup limit unavailable: {reason}")]
    NoMemoryCgroup {
        /// Why neither cgroup v2 nor cgroup v1 can be used.
        reason: String,
    },
    /// A memory cgroup exists but could not be created, configured or read.
    #[error("memory cgroup {path}: {source}")]
    Cgroup {
        /// The cgroup file or directory involved.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// A system call on a running child failed (signal, wait, pipe).
    #[error("{what}: {source}")]
    Os {
        /// The operation that failed.
        what: &'static str,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// A child did not exit even after SIGKILL within the time allowed (stuck in the kernel).
    #[error("child {pid} still not reaped {waited:?} after SIGKILL")]
    Unkillable {
        /// The child's process id.
        pid: u32,
        /// How long we waited after SIGKILL.
        waited: std::time::Duration,
    },
    /// The supervisor has no child with this id.
    #[error("no child with id {0}")]
    NoSuchChild(u64),
    /// A restart or start on request did not happen: the new process could not be spawned, or
    /// a stop asked meanwhile won.
    #[error("not restarted: {0}")]
    NotRestarted(String),
    /// The supervisor thread is gone (it was shut down, or it panicked).
    #[error("the supervisor thread has stopped")]
    SupervisorGone,
    /// The configuration is inconsistent.
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    // Only the Linux platform code makes system calls that fail this way.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub(crate) fn os(what: &'static str) -> Error {
        Error::Os {
            what,
            source: io::Error::last_os_error(),
        }
    }
}

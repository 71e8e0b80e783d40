//! The crate's error type: everything that can go wrong while capturing, collecting or reporting.

use std::io;
use std::path::PathBuf;

/// Why an operation of this crate failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done (`"reading"`, `"writing"`, ...).
        action: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// A system call failed.
    #[error("{call} failed: {source}")]
    Sys {
        /// The call that failed, e.g. `"sigaction(SIGSEGV)"`.
        call: &'static str,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// [`install`](crate::install) was called a second time in this process.
    #[error("crash capture is already installed in this process")]
    AlreadyInstalled,
    /// A file did not hold what it should.
    #[error("malformed {what} in {}: {detail}", path.display())]
    Malformed {
        /// What the file should have held (`"heartbeat"`, `"report"`, `"pidfile"`, ...).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
    /// A report could not be serialized.
    #[error("serializing the report: {0}")]
    Serialize(#[from] serde_json::Error),
    /// The operation needs Linux.
    #[error("{0} is only supported on Linux")]
    Unsupported(&'static str),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn last_os(call: &'static str) -> Self {
        Error::Sys {
            call,
            source: io::Error::last_os_error(),
        }
    }
}

//! The daemon's error type: a variant for each source of failure, so that a caller can tell a bad
//! configuration from a refused request from a full disk without reading a message.

use std::path::PathBuf;

use crate::ConfigError;
use crate::jobs::Job;

/// Everything that can go wrong in the daemon's own machinery.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is invalid.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// The state directory cannot be used.
    #[error("state directory {}: {reason}", path.display())]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// Why it is refused.
        reason: String,
    },
    /// A keeper already runs for this state directory.
    #[error("ward is already running for {} (keeper pid {pid})", state_dir.display())]
    AlreadyRunning {
        /// The running keeper's pid.
        pid: u32,
        /// The state directory.
        state_dir: PathBuf,
    },
    /// ward is not running for this state directory.
    #[error("ward is not running for {}", .0.display())]
    NotRunning(PathBuf),
    /// Crash capture could not be installed, or crash reports could not be read.
    #[error("crash diagnosis: {0}")]
    Crashdiag(#[from] ward_crashdiag::Error),
    /// A supervised process could not be started.
    #[error("cannot start the {what}: {source}")]
    Supervisor {
        /// Which process.
        what: &'static str,
        /// Why.
        #[source]
        source: ward_supervisor::Error,
    },
    /// A trigger asks for a memory limit, and no memory cgroup can be made to enforce it (no
    /// memory controller, or none ward may use): the limit is refused, never ignored.
    #[error(
        "trigger {trigger:?}: memory_max_mb needs a memory cgroup per job, and none can be made here: {source}"
    )]
    MemoryLimit {
        /// The trigger.
        trigger: String,
        /// Why no memory cgroup can be made.
        #[source]
        source: ward_supervisor::Error,
    },
    /// The daemon could not detach from the terminal.
    #[error("cannot start the daemon: {0}")]
    Daemonize(#[from] daemonize::Error),
    /// The daemon exited before it was ready.
    #[error("the daemon exited before it was ready ({cause}); see {}", log.display())]
    NotReady {
        /// The cause of its death, as the keeper recorded it.
        cause: String,
        /// The log that tells more.
        log: PathBuf,
    },
    /// The watcher could not be started.
    #[error("cannot start the watcher: {0}")]
    Watch(#[from] ward_watch::Error),
    /// The worker pool could not be started.
    #[error("cannot start the worker pool: {0}")]
    Pool(#[from] ward_queue::Error<Job>),
    /// The server failed to set itself up, before it was ready: bad input it was handed, its
    /// state directory or socket unusable. Restarting it would fail the same way.
    #[error("cannot start: {0}")]
    CannotStart(#[source] Box<Error>),
    /// One of the server's own threads ended while the server still needed it.
    #[error("the {0} thread ended unexpectedly")]
    ThreadEnded(&'static str),
    /// The keeper's restart policy gave up on the server.
    #[error("gave up: {0}")]
    GaveUp(String),
    /// The daemon did not become ready, or did not stop, in time.
    #[error("{0}")]
    Timeout(String),
    /// The manifest store failed.
    #[error("manifest: {doing}: {source}")]
    Store {
        /// What was being done: `reading`, `writing`, `committing`.
        doing: &'static str,
        /// The store's error (boxed: redb's is large, and errors travel in every `Result`).
        #[source]
        source: Box<redb::Error>,
    },
    /// The manifest cannot be used now: damaged beyond opening, or closed after a write error.
    #[error("manifest: {0}")]
    StoreUnusable(String),
    /// The command line asks for something that cannot be done as asked (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The server refused a control request, saying why.
    #[error("the server refused: {0}")]
    Refused(String),
    /// A control-socket reply was not what the request's reply is.
    #[error("control socket {}: {problem}", socket.display())]
    Control {
        /// The socket.
        socket: PathBuf,
        /// What was wrong with the reply.
        problem: String,
    },
    /// The state handed from the command line to the daemon could not be read.
    #[error("{}: {problem}", path.display())]
    Handover {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// The server refused to reload its configuration; it runs the one it ran before.
    #[error("reload refused, the running configuration is kept: {reason}")]
    ReloadRefused {
        /// Why, as the server said it (for an invalid file, with its line and column).
        reason: String,
        /// Whether the configuration itself is at fault (the CLI exits 2, as `ward check` does).
        invalid_config: bool,
    },
    /// A NATS server could not be used (`ward work`).
    #[cfg(feature = "nats")]
    #[error("nats: {0}")]
    Nats(#[from] ward_nats::Error),
    /// An I/O operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// An [`Error::Io`] saying what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// Whether waiting may make the same step succeed: the machine short of space, memory,
    /// descriptors or processes, or the manifest's store failing (its disk full, most often).
    pub fn may_heal(&self) -> bool {
        match self {
            Error::Io { source, .. } => matches!(
                source.raw_os_error(),
                Some(
                    libc::ENOSPC
                        | libc::EDQUOT
                        | libc::ENOMEM
                        | libc::EAGAIN
                        | libc::EMFILE
                        | libc::ENFILE
                        | libc::EINTR
                )
            ),
            Error::Store { .. } | Error::StoreUnusable(_) => true,
            Error::CannotStart(inner) => inner.may_heal(),
            _ => false,
        }
    }

    /// Whether the error is the user's input (config, flags): the CLI exits 2 for those.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            Error::Config(_)
                | Error::Usage(_)
                | Error::ReloadRefused {
                    invalid_config: true,
                    ..
                }
        )
    }
}

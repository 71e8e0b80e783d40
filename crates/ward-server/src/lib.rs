//! The ward daemon: configuration, lifecycle, control socket and the keeper → server → worker tree.
//!
//! `ward-server` wires `ward-watch`, `ward-queue`, `ward-supervisor` and `ward-crashdiag` into one
//! daemon: a keeper process holding a locked pidfile supervises the server, which watches the
//! configured trees and runs jobs in supervised workers.
//!
//! # What it deliberately does not do
//! It has no command-line parsing; the `ward` binary owns that.

#![warn(missing_docs)]

pub mod commands;
pub mod config;
pub mod control;
mod deaths;
mod dispatch;
mod intents;
pub mod jobs;
mod keeper;
pub mod launch;
pub mod logging;
pub mod manifest;
mod orphans;
mod outcomes;
mod output;
pub mod sd_notify;
mod server;
pub mod state;
mod tracker;

use std::path::PathBuf;

pub use commands::{
    changes, check, diagnose, restart, run_foreground, server_main, start, status, stop,
};
pub use config::{Config, ConfigError};
pub use keeper::{KEEPER_BIN, keeper_process};
pub use launch::Launch;

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
    /// Crash capture could not be installed.
    #[error("crash capture: {0}")]
    Capture(String),
    /// A process could not be started.
    #[error("cannot start {what}: {reason}")]
    Spawn {
        /// Which process.
        what: String,
        /// Why.
        reason: String,
    },
    /// The keeper's restart policy gave up on the server.
    #[error("gave up: {0}")]
    GaveUp(String),
    /// The daemon did not become ready, or did not stop, in time.
    #[error("{0}")]
    Timeout(String),
    /// ward is not running for this state directory.
    #[error("ward is not running for {}", .0.display())]
    NotRunning(PathBuf),
    /// The manifest store failed.
    #[error("manifest: {0}")]
    Store(String),
    /// A control-socket exchange went wrong.
    #[error("control protocol: {0}")]
    Protocol(String),
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
    /// Whether the error is the user's input (config, flags): the CLI exits 2 for those.
    pub fn is_usage(&self) -> bool {
        matches!(self, Error::Config(_))
    }
}

/// How a subcommand ended, for the CLI's exit code.
#[derive(Debug)]
pub enum Outcome {
    /// It did what was asked.
    Success,
    /// `status`: ward is not running (LSB exit 3).
    NotRunning,
    /// It failed.
    Failed(Error),
}

impl From<Result<(), Error>> for Outcome {
    fn from(result: Result<(), Error>) -> Outcome {
        match result {
            Ok(()) => Outcome::Success,
            Err(e) => Outcome::Failed(e),
        }
    }
}

//! The ward daemon: configuration, lifecycle, control socket and the keeper → server → worker tree.
//!
//! `ward-server` wires `ward-watch`, `ward-queue`, `ward-supervisor` and `ward-crashdiag` into one
//! daemon: a keeper process holding a locked pidfile supervises the server, which watches the
//! configured trees and runs jobs in supervised workers.
//!
//! # Crate features
//! - `nats` (off by default here, on in the `ward` binary): publish triggers and `work`
//!   (`ward work`), jobs handed to NATS JetStream through `ward-nats`, which brings tokio and
//!   async-nats. Without it a config with a publish trigger is refused, saying so.
//!
//! # What it deliberately does not do
//! It has no command-line parsing; the `ward` binary owns that.

#![warn(missing_docs)]

pub mod batch;
pub mod commands;
pub mod config;
pub mod control;
mod deaths;
pub mod discover;
mod dispatch;
mod error;
mod feed;
mod handover;
mod hooks;
mod intents;
pub mod jobs;
mod keeper;
pub mod launch;
pub mod logging;
pub mod manifest;
mod metrics;
mod orphans;
mod outcomes;
mod output;
mod pressure;
pub mod protocol;
#[cfg(feature = "nats")]
mod publish;
pub mod remote;
#[cfg(feature = "nats")]
mod retried;
pub mod sd_notify;
mod server;
pub mod state;
mod tracker;
mod umask;

pub use commands::{
    changes, check, diagnose, failures, follow, hold, logs, metrics, release, reload, restart,
    retry, run_foreground, server_main, service, start, status, stop,
};
#[cfg(feature = "nats")]
pub use commands::{start_work, work};
pub use config::{Config, ConfigError};
pub use error::Error;
pub use keeper::{KEEPER_BIN, keeper_process};
pub use launch::Launch;
pub use remote::WorkOptions;

/// How a subcommand ended, for the CLI's exit code.
#[derive(Debug)]
pub enum Outcome {
    /// It did what was asked.
    Success,
    /// `status`: ward is not running (LSB exit 3).
    NotRunning,
    /// It failed.
    Failed(Error),
    /// A command it ran for the user (`ward hold -- CMD`) ended with this exit code, which is
    /// ward's.
    Exit(i32),
}

impl From<Result<(), Error>> for Outcome {
    fn from(result: Result<(), Error>) -> Outcome {
        match result {
            Ok(()) => Outcome::Success,
            Err(e) => Outcome::Failed(e),
        }
    }
}

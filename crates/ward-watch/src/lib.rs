//! A debounced, recursive file watcher on `notify` whose memory stays bounded under any event storm.
#![warn(missing_docs)]

mod batch;
mod error;
mod pending;
mod rules;
mod snapshot;
mod watcher;

pub use batch::{Batch, Change, ChangeKind, Item, Rescan, RescanReason};
pub use error::Error;
pub use rules::IgnoreRules;
pub use snapshot::Snapshot;
pub use watcher::{Backend, WatchStats, Watcher, WatcherBuilder};

//! A debounced, recursive file watcher on `notify` whose memory stays bounded under any event storm.
#![warn(missing_docs)]

mod batch;
mod error;
mod pending;

pub use batch::{Batch, Change, ChangeKind, Item, Rescan, RescanReason};
pub use error::Error;

//! A debounced, recursive file watcher on `notify` whose memory stays bounded under any event storm.
//!
//! `ward-watch` turns the operating system's file events into batches of coalesced changes,
//! delivered over a bounded `crossbeam_channel`. When it cannot keep every event (the kernel queue
//! overflowed, or more paths are pending than the cap allows) it says so with an explicit rescan
//! item instead of dropping changes silently.
//!
//! # What it deliberately does not do
//! It does not run jobs (that is `ward-queue`), follow symlinks, or persist anything across restarts.
//!
//! # Status
//! Not implemented yet: this crate is an empty shell until its issue lands.

#![warn(missing_docs)]

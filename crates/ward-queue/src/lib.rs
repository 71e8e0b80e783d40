//! A bounded worker pool with backpressure policies, per-key coalescing and panic isolation.
//!
//! `ward-queue` runs jobs on a fixed number of worker threads behind a bounded queue. Submitters
//! choose what happens when it is full (block, reject, drop the oldest, run in the caller); jobs
//! with the same key coalesce so a file changed many times while queued is processed once; a
//! panicking job is caught and reported, never taking a worker with it.
//!
//! # What it deliberately does not do
//! It cannot kill a stuck thread: jobs that must be killable run in child processes, which
//! `ward-server` builds from this pool and `ward-supervisor`.
//!
//! # Status
//! Not implemented yet: this crate is an empty shell until its issue lands.

#![warn(missing_docs)]

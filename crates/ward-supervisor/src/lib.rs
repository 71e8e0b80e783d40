//! Restart policy as a pure state machine, and supervision of child processes.
//!
//! `ward-supervisor` decides when a dead child is restarted (exponential backoff, reset after a
//! stable run, give-up by intensity) and runs children so that none is ever orphaned: each in its
//! own process group with a parent-death signal, stopped with SIGTERM then SIGKILL, every exit
//! classified with its peak memory and run time.
//!
//! # What it deliberately does not do
//! It does not decide *why* a child died beyond the wait status; that verdict is `ward-crashdiag`'s.
//!
//! # Status
//! Not implemented yet: this crate is an empty shell until its issue lands.

#![warn(missing_docs)]

//! Crash capture inside every ward process, and the post-mortem that explains each death.
//!
//! `ward-crashdiag` installs a chained panic hook, an async-signal-safe fatal-signal handler in
//! the spirit of Python's faulthandler, and a heartbeat file; after a death, its collector weighs
//! the evidence (wait status, crash record, heartbeat, logs, cgroup and kernel OOM counters) and
//! writes a report naming the cause: graceful stop, exit code, panic, native crash, OOM kill,
//! allocation failure, outside signal, hang, or vanished.
//!
//! # What it deliberately does not do
//! It does not restart anything (that is `ward-supervisor`) and never writes core dumps.
//!
//! # Status
//! Not implemented yet: this crate is an empty shell until its issue lands.

#![warn(missing_docs)]

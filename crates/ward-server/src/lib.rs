//! The ward daemon: configuration, lifecycle, control socket and the keeper → server → worker tree.
//!
//! `ward-server` wires `ward-watch`, `ward-queue`, `ward-supervisor` and `ward-crashdiag` into one
//! daemon: a keeper process holding a locked pidfile supervises the server, which watches the
//! configured trees and runs jobs in supervised workers.
//!
//! # What it deliberately does not do
//! It has no command-line parsing; the `ward` binary owns that.
//!
//! # Status
//! Not implemented yet: this crate is an empty shell until its issue lands.

#![warn(missing_docs)]

//! A debounced, recursive file watcher on `notify` whose memory stays bounded under any event storm.
//!
//! `ward-watch` turns the operating system's file events into [`Batch`]es of coalesced
//! [`Change`]s, delivered over a bounded [`crossbeam_channel::Receiver`]. When it cannot keep every
//! event (the kernel's queue overflowed, or more paths are pending than the cap allows) it says
//! so with an explicit [`Rescan`] instead of dropping changes, and [`Snapshot`] turns each rescan
//! into the concrete changes, so a consumer always converges to the disk.
//!
//! ```
//! use std::time::Duration;
//! use ward_watch::{ChangeKind, Snapshot, Watcher};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let watcher = Watcher::builder()
//!     .root(dir.path())
//!     .ignore_file(".wardignore")
//!     .quiet(Duration::from_millis(20))
//!     .build()?;
//! // The consumer's picture of the tree, to resolve rescans.
//! let mut snapshot = Snapshot::of_roots(watcher.ignore_rules());
//!
//! let file = dir.path().join("hello.txt");
//! std::fs::write(&file, "hello")?; // create + modify: one `Created`
//!
//! let batch = watcher.batches().recv_timeout(Duration::from_secs(10))?;
//! let changes = snapshot.apply_batch(&batch); // applies changes, resolves rescans
//! assert_eq!(changes[0].path, file);
//! assert_eq!(changes[0].kind, ChangeKind::Created);
//! assert!(snapshot.contains(&file));
//! # Ok(()) }
//! ```
//!
//! # Coalescing rules
//! Changes are kept per path until the path has been quiet for the quiet window (default 50 ms),
//! or for at most the maximum wait (default 1 s) if it never goes quiet. Both count from when
//! the backend's thread received the events, not from when the watcher's thread got to them, so a busy
//! watcher does not stretch the window. Within that time:
//!
//! | events at a path | delivered |
//! |---|---|
//! | created, then modified | `Created` |
//! | created, then removed | nothing |
//! | modified, then removed | `Removed` |
//! | removed, then created | `Modified` (a directory: `Removed` then `Created`) |
//! | renamed a → b → c | one `Renamed { from: a }` at c; a → b → a is `Modified` at a |
//! | renamed a → b, then b removed | `Removed` at a |
//! | a directory removed | `Removed` for it; its children's pending changes are dropped |
//! | a directory renamed | `Renamed`, then `Created` for what it holds (its paths are new) |
//! | a new file renamed over a path (an editor's atomic save, the temporary file possibly ignored) | `Modified` at the target; nothing for the temporary file |
//! | rename target → backup, write target, remove backup | `Modified` at the target |
//!
//! A file moved into the tree from outside is `Created`; moved out, `Removed`. The watcher cannot
//! tell whether the target of an atomic save existed before, so a brand-new file written that
//! way is also reported `Modified`: read `Modified` as "this path has new content".
//!
//! # Delivery order
//! Items in a batch, and batches, come in an order a consumer can apply one by one: when some
//! changes are due, every change that happened before them goes out too, so a rename is never
//! delivered after a later change at its old path, nor a directory after its contents.
//!
//! # Bounded memory, nothing lost
//! - The notify callback only does a `try_send` into a bounded buffer ([`WatcherBuilder::event_buffer`]).
//!   If it is full, the event is dropped and the directory it happened in gets a [`Rescan`] with
//!   [`RescanReason::EventBufferFull`] (every root does, past 256 such directories or for an
//!   event with no path); the OS event thread never blocks.
//! - The watcher's thread owns the pending set. Past [`WatcherBuilder::pending_cap`] paths, the
//!   deepest directory holding at least half of them becomes one `Rescan`
//!   ([`RescanReason::PendingCap`]), and later events inside it only delay that rescan.
//! - Batches go out only when the channel has room, each with at most
//!   [`WatcherBuilder::batch_max`] changes: a slow consumer makes the pending set coalesce more,
//!   not grow. Memory is at most about `channel_capacity × batch_max + pending_cap` changes plus
//!   the event buffer, whatever the storm.
//! - A kernel queue overflow (`IN_Q_OVERFLOW`) is a `Rescan` of every root
//!   ([`RescanReason::KernelOverflow`]); the watches are checked against the disk before it is
//!   delivered.
//!
//! - A file system mounted or unmounted inside a root hides or uncovers what the watches there
//!   saw: the mount point is watched anew and rescanned ([`RescanReason::MountsChanged`]).
//! - A directory that could not be watched (unreadable) is counted
//!   ([`WatchStats::failed_watches`]) and, when its permissions change, watched and rescanned
//!   ([`RescanReason::PermissionsChanged`]).
//!
//! # Backends
//! [`Backend::Auto`] and [`Backend::Fanotify`] use fanotify where it starts (Linux 5.17,
//! `CAP_SYS_ADMIN`, file systems with file handles): one mark per file system holding a root, no
//! watch per directory, so nothing is walked at the start and nothing runs out; events outside
//! the roots or in ignored directories are dropped on its thread, a queue overflow is a rescan.
//! Elsewhere they fall back to inotify ([`Backend::Recommended`]), and [`Watcher::backend`] says
//! why. Every rule below holds for each backend; the integration tests run against each one the
//! machine allows.
//!
//! # Theory of operation
//! Three threads: notify's (inotify, or polling) or `ward-fanotify`, whose callback only pushes
//! into the bounded event buffer; `ward-mounts`, asleep in `poll(2)` on `/proc/self/mountinfo` until the mount
//! table changes; and the watcher's own, which owns the pending set and the backends. Watches
//! are non-recursive and installed by the watcher's thread itself: the ignore rules
//! ([`IgnoreRules`]: globs and gitignore-style ignore files such as `.wardignore`) are applied
//! before a directory is watched, so an ignored directory never costs a watch. A new directory
//! is watched first and listed second, and what the listing finds is recorded as created, so
//! nothing created inside it before its watch existed is missed. Symlinks are never followed;
//! paths are `PathBuf`s end to end, never converted lossily. Dropping the [`Watcher`] stops and
//! joins its thread, which drops the backends (each stops and joins its reader; notify's poll
//! backend stops its own thread).
//!
//! Errors the watcher survives (a missing root, a root that disappears, no inotify watches left
//! — naming `fs.inotify.max_user_watches` and how many were needed — a directory that cannot be
//! watched) arrive as [`Item::Error`]; a missing root is watched when it appears. A root that runs
//! out of inotify watches falls back to polling if [`WatcherBuilder::poll_fallback`] allows it.
//!
//! # Crate features
//! None.
//!
//! # Known problems
//! - A directory renamed with more entries than the cap becomes `Removed` at its old path and a
//!   `Rescan` of its new one, not a `Renamed`.
//! - A directory's own metadata changes (`chmod`) are delivered as `Modified` directories.
//! - Mounts are followed in the watcher's own mount namespace, on Linux only.
//! - notify's poll thread is told to stop when the watcher is dropped but notify does not join it.
//! - fanotify names an event's directory by asking the kernel where it is now: a change made just
//!   before its directory was renamed is reported at the new path (the rename's listing of the
//!   directory reports it too); one in a directory removed since is dropped (the directory's
//!   removal covers it). A file system mounted at two places inside the roots is reported under
//!   one of them.
//!
//! # What it deliberately does not do
//! It does not run jobs (that is `ward-queue`), follow symlinks, or persist anything across restarts.

#![warn(missing_docs)]

mod batch;
mod error;
mod listing;
mod mounts;
mod path_key;
mod pending;
mod rules;
mod snapshot;
#[cfg(target_os = "linux")]
mod wake;
mod watcher;

pub use batch::{Batch, Change, ChangeKind, Item, Rescan, RescanReason};
pub use error::Error;
pub use listing::FileStat;
pub use rules::IgnoreRules;
pub use snapshot::{Snapshot, walk, walk_files, walk_files_after};
pub use watcher::{ActiveBackend, Backend, WatchStats, Watcher, WatcherBuilder};

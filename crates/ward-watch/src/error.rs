//! The crate's one error type: what can stop a build, and what a running watcher reports and survives.

use std::path::PathBuf;

/// Everything that can go wrong in `ward-watch`.
///
/// [`WatcherBuilder::build`](crate::WatcherBuilder::build) returns the variants that stop a watcher
/// from starting (a bad glob, no root, a thread that cannot be spawned). A running watcher reports
/// the others inside a [`Batch`](crate::Batch) as [`Item::Error`](crate::Item::Error) and keeps
/// going.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The builder was given no root to watch.
    #[error("no root to watch: give the builder at least one directory")]
    NoRoots,
    /// An ignore glob does not parse.
    #[error("invalid ignore glob {glob:?}: {source}")]
    Glob {
        /// The glob as given.
        glob: String,
        /// Why it does not parse.
        source: globset::Error,
    },
    /// An ignore file exists but cannot be read or parsed; the rules that did parse still apply.
    #[error("ignore file {path}: {source}")]
    IgnoreFile {
        /// The ignore file.
        path: PathBuf,
        /// What is wrong with it.
        source: ignore::Error,
    },
    /// A root does not exist (or is not a directory). It is watched as soon as it appears,
    /// announced by a [`Rescan`](crate::Rescan) with [`RescanReason::RootAppeared`](crate::RescanReason::RootAppeared).
    #[error("root {path} does not exist or is not a directory; it will be watched when it appears")]
    RootMissing {
        /// The root.
        path: PathBuf,
    },
    /// A root was removed or moved away while watched. It is watched again if it reappears.
    #[error("root {path} disappeared while watched; it will be watched again if it reappears")]
    RootGone {
        /// The root.
        path: PathBuf,
    },
    /// The kernel refused another inotify watch.
    #[error(
        "out of inotify watches under {root}: {needed} directories need a watch{limit}; raise \
         fs.inotify.max_user_watches (e.g. `sysctl fs.inotify.max_user_watches=524288`){fallback}",
        limit = match limit { Some(l) => format!(", the limit (fs.inotify.max_user_watches) is {l}"), None => String::new() },
        fallback = if *polling { "; this root is polled instead meanwhile" } else { "; changes under this root are not watched" },
    )]
    TooManyWatches {
        /// The root whose tree needs the watches.
        root: PathBuf,
        /// How many directories under the root (not ignored) need a watch.
        needed: usize,
        /// The current value of `fs.inotify.max_user_watches`, when it can be read.
        limit: Option<u64>,
        /// Whether the root fell back to polling.
        polling: bool,
    },
    /// A directory could not be watched or listed; it is left out, its parent still watched.
    #[error("cannot watch {path}: {source}")]
    Watch {
        /// The directory.
        path: PathBuf,
        /// The backend's error.
        source: notify::Error,
    },
    /// The backend reported an error of its own.
    #[error("watch backend error: {0}")]
    Backend(notify::Error),
    /// The watcher's thread could not be started.
    #[error("cannot start the watcher thread: {0}")]
    Spawn(std::io::Error),
}

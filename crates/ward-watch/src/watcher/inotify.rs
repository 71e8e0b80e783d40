//! The inotify backend: a watch per directory, added and removed by the watcher's thread itself
//! (`inotify_add_watch` is one system call), and a thread of its own (`ward-inotify`) that reads
//! the events and hands them to the [`Handler`] as notify events.
//!
//! notify's inotify watcher sends each watch to its own thread and waits for the answer: a
//! million files in a hundred thousand directories took that many round trips between threads
//! before ward was ready, and notify kept two maps of every directory's path beside ward's own.
//! Here the descriptor → path map, behind a lock the reader takes once per read, shares its
//! paths with the watcher's map of watched directories, which keeps each one's descriptor.
//!
//! The events are notify's, made as notify makes them (a rename's halves carry the kernel's
//! cookie as their tracker, a watched directory moved is a rename's first half with none, a
//! queue overflow is a rescan), so the watcher's thread treats them alike.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use inotify::{EventMask, WatchMask};
use notify::event::{CreateKind, DataChange, MetadataKind, ModifyKind, RemoveKind, RenameMode};
use notify::{Event, EventKind};
use parking_lot::Mutex;

use super::watches::Handler;

/// What each directory is watched for: entries made, removed and renamed, files written and
/// their metadata changed, and the directory itself removed or moved. Not a symlink's target.
fn mask() -> WatchMask {
    WatchMask::CREATE
        | WatchMask::DELETE
        | WatchMask::MOVED_FROM
        | WatchMask::MOVED_TO
        | WatchMask::MODIFY
        | WatchMask::ATTRIB
        | WatchMask::DELETE_SELF
        | WatchMask::MOVE_SELF
        | WatchMask::DONT_FOLLOW
}

/// A watch: the kernel's watch descriptor.
pub(super) type Wd = i32;

/// The directories watched, by descriptor: what the reader names events with. A B-tree, not a
/// hash map: a hundred thousand directories would leave a hash map's table half empty after it
/// doubled.
type Paths = Arc<Mutex<BTreeMap<Wd, Arc<Path>>>>;

/// The inotify instance, its watches, and the thread that reads it. Dropping it wakes the
/// thread and joins it.
pub(super) struct Inotify {
    /// Keeps the instance's descriptor open while this handle lives (the reader owns the
    /// instance, and may end first).
    watches: inotify::Watches,
    /// That descriptor, to remove a watch by its number: the crate removes one only by its
    /// `WatchDescriptor`, twice the size and holding a reference to the instance, which a
    /// hundred thousand directories would each keep.
    fd: RawFd,
    paths: Paths,
    // Closed (dropped) to wake the thread.
    wake: Option<OwnedFd>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Inotify {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inotify")
            .field("watches", &self.paths.lock().len())
            .finish()
    }
}

impl Inotify {
    /// Starts the instance and its thread, with no watch yet.
    ///
    /// # Errors
    /// If the process or user is out of inotify instances or descriptors.
    pub(super) fn start(handler: Handler) -> io::Result<Inotify> {
        let inotify = inotify::Inotify::init()?;
        let paths: Paths = Arc::default();
        let (read_end, write_end) = crate::wake::pipe()?;
        let reader = Reader {
            paths: Arc::clone(&paths),
            handler,
        };
        let watches = inotify.watches();
        let fd = inotify.as_raw_fd();
        let thread = std::thread::Builder::new()
            .name("ward-inotify".into())
            .spawn(move || reader.run(inotify, &read_end))?;
        Ok(Inotify {
            watches,
            fd,
            paths,
            wake: Some(write_end),
            thread: Some(thread),
        })
    }

    /// Watches the directory `dir`, not its subdirectories, and names its events with `dir`
    /// (shared with the caller). Returns the watch, to remove it with.
    ///
    /// # Errors
    /// notify's errors: `MaxFilesWatch` when the user's watches are used up, else the I/O error
    /// (a directory gone, unreadable).
    pub(super) fn watch(&mut self, dir: &Arc<Path>) -> notify::Result<Wd> {
        let wd = self
            .watches
            .add(dir, mask())
            .map_err(|e| {
                if e.raw_os_error() == Some(libc::ENOSPC) {
                    notify::Error::new(notify::ErrorKind::MaxFilesWatch).add_path(dir.to_path_buf())
                } else {
                    notify::Error::io(e).add_path(dir.to_path_buf())
                }
            })?
            .get_watch_descriptor_id();
        // A directory watched again (the same inode) keeps its descriptor: its events are named
        // with its latest path.
        self.paths.lock().insert(wd, Arc::clone(dir));
        Ok(wd)
    }

    /// Removes the watch `wd` of `dir`.
    ///
    /// # Errors
    /// If the kernel refuses to remove the watch.
    pub(super) fn unwatch(&mut self, dir: &Path, wd: Wd) -> notify::Result<()> {
        {
            let mut paths = self.paths.lock();
            // Another path may hold the descriptor now (the directory moved and was watched
            // again at its new path: the same inode, the same watch), or none (the kernel
            // dropped the watch): then the watch is not this path's to remove.
            if paths.get(&wd).is_none_or(|p| **p != *dir) {
                return Ok(());
            }
            paths.remove(&wd);
        }
        // SAFETY: `self.fd` is the instance's descriptor, kept open by `self.watches`;
        // inotify_rm_watch takes two integers.
        if unsafe { libc::inotify_rm_watch(self.fd, wd) } != 0 {
            let e = io::Error::last_os_error();
            return Err(notify::Error::io(e).add_path(dir.into()));
        }
        Ok(())
    }
}

impl Drop for Inotify {
    fn drop(&mut self) {
        drop(self.wake.take());
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            log::error!("ward-watch: the inotify thread panicked");
        }
    }
}

/// The reader thread's state.
struct Reader {
    paths: Paths,
    handler: Handler,
}

impl Reader {
    fn run(self, mut inotify: inotify::Inotify, wake: &OwnedFd) {
        // Room for a few hundred events of long names (an event is 16 bytes and its name).
        let mut buffer = vec![0u8; 64 * 1024];
        let mut events = Vec::new();
        let mut gather = crate::wake::Gather::default();
        loop {
            match gather.wait(inotify.as_raw_fd(), wake) {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    log::error!("ward-watch: inotify: poll: {e}; no more events are read");
                    return;
                }
            }
            loop {
                match inotify.read_events(&mut buffer) {
                    Ok(read) => {
                        // Named under the lock, handed on without it: the watcher's thread
                        // takes it to add a watch.
                        {
                            let mut paths = self.paths.lock();
                            for event in read {
                                self.name(&mut paths, &event, &mut events);
                            }
                        }
                        if events.is_empty() {
                            break;
                        }
                        self.handler.handle_all(events.drain(..).map(Ok).collect());
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        log::error!("ward-watch: inotify: read: {e}; no more events are read");
                        self.handler.handle(Err(notify::Error::io(e)));
                        return;
                    }
                }
            }
            gather.read();
        }
    }

    /// The notify events `event` makes, pushed to `out`.
    fn name(
        &self,
        paths: &mut BTreeMap<Wd, Arc<Path>>,
        event: &inotify::Event<&std::ffi::OsStr>,
        out: &mut Vec<Event>,
    ) {
        let mask = event.mask;
        if mask.contains(EventMask::Q_OVERFLOW) {
            out.push(Event::new(EventKind::Other).set_flag(notify::event::Flag::Rescan));
            return;
        }
        if mask.contains(EventMask::IGNORED) {
            // The kernel dropped the watch (its directory is gone, or it was removed).
            paths.remove(&event.wd.get_watch_descriptor_id());
            return;
        }
        let Some(dir) = paths.get(&event.wd.get_watch_descriptor_id()) else {
            return;
        };
        let path: PathBuf = match event.name {
            Some(name) => dir.join(name),
            None => dir.to_path_buf(),
        };
        let is_dir = mask.contains(EventMask::ISDIR);
        let with = |kind: EventKind| Event::new(kind).add_path(path.clone());
        let cookie = event.cookie as usize;
        if mask.contains(EventMask::MOVED_FROM) {
            out.push(
                with(EventKind::Modify(ModifyKind::Name(RenameMode::From))).set_tracker(cookie),
            );
        }
        if mask.contains(EventMask::MOVED_TO) {
            out.push(with(EventKind::Modify(ModifyKind::Name(RenameMode::To))).set_tracker(cookie));
        }
        if mask.contains(EventMask::MOVE_SELF) {
            out.push(with(EventKind::Modify(ModifyKind::Name(RenameMode::From))));
        }
        if mask.contains(EventMask::CREATE) {
            out.push(with(EventKind::Create(if is_dir {
                CreateKind::Folder
            } else {
                CreateKind::File
            })));
        }
        if mask.contains(EventMask::DELETE) {
            out.push(with(EventKind::Remove(if is_dir {
                RemoveKind::Folder
            } else {
                RemoveKind::File
            })));
        }
        if mask.contains(EventMask::DELETE_SELF) {
            out.push(with(EventKind::Remove(RemoveKind::Folder)));
        }
        if mask.contains(EventMask::MODIFY) {
            out.push(with(EventKind::Modify(ModifyKind::Data(DataChange::Any))));
        }
        if mask.contains(EventMask::ATTRIB) {
            out.push(with(EventKind::Modify(ModifyKind::Metadata(
                MetadataKind::Any,
            ))));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::raw::{self, RawReceiver};
    use super::*;

    fn started() -> (Inotify, RawReceiver) {
        let (tx, rx) = raw::channel(usize::MAX);
        let handler = Handler {
            tx,
            lost: Arc::default(),
            stats: Arc::default(),
        };
        (Inotify::start(handler).unwrap(), rx)
    }

    /// Waits (bounded) for an event of `kind` on `path`.
    fn wait_for(rx: &RawReceiver, path: &Path, kind: EventKind) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while let Ok((_, events)) = rx.channel().recv_deadline(deadline) {
            for ev in events {
                let ev = ev.unwrap();
                if ev.kind == kind && ev.paths.iter().any(|p| p == path) {
                    return;
                }
            }
        }
        panic!("no {kind:?} on {} within 10 s", path.display());
    }

    /// A directory moved keeps its inode, and so its watch: watched again at its new path before
    /// its old path is unwatched (the order a rename's two halves may come in), it is the same
    /// watch, which unwatching the old path must not remove.
    #[test]
    fn a_directory_watched_again_after_a_move_stays_watched_when_its_old_path_is_unwatched() {
        let dir = tempfile::tempdir().unwrap();
        let (old, new): (Arc<Path>, Arc<Path>) = (
            Arc::from(dir.path().join("old")),
            Arc::from(dir.path().join("new")),
        );
        std::fs::create_dir(&old).unwrap();
        let (mut inotify, rx) = started();
        let old_watch = inotify.watch(&old).unwrap();
        std::fs::write(old.join("a"), "1").unwrap();
        wait_for(&rx, &old.join("a"), EventKind::Create(CreateKind::File));
        std::fs::rename(&old, &new).unwrap();
        let new_watch = inotify.watch(&new).unwrap();
        assert_eq!(old_watch, new_watch, "one inode, one watch");
        inotify.unwatch(&old, old_watch).unwrap();
        std::fs::write(new.join("b"), "1").unwrap();
        wait_for(&rx, &new.join("b"), EventKind::Create(CreateKind::File));
        inotify.unwatch(&new, new_watch).unwrap();
        assert!(
            inotify.unwatch(&new, new_watch).is_ok(),
            "a watch removed already is not removed again"
        );
        assert_eq!(inotify.paths.lock().len(), 0);
    }

    /// In a burst the reader pauses before it reads, and hands on each read's events in one
    /// message: a message per event woke the watcher's thread for every one.
    #[test]
    fn a_bursts_events_go_to_the_watchers_thread_many_to_a_message() {
        let dir = tempfile::tempdir().unwrap();
        let (mut inotify, rx) = started();
        inotify.watch(&Arc::from(dir.path())).unwrap();
        const FILES: usize = 2000;
        for i in 0..FILES {
            std::fs::write(dir.path().join(format!("f{i}")), "x").unwrap();
        }
        let last = dir.path().join(format!("f{}", FILES - 1));
        let (mut messages, mut events) = (0, 0);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let Ok((_, batch)) = rx.channel().recv_deadline(deadline) else {
                panic!("the last file's creation not seen within 10 s");
            };
            messages += 1;
            events += batch.len();
            let created = |ev: &notify::Result<Event>| {
                ev.as_ref().is_ok_and(|ev| {
                    ev.kind == EventKind::Create(CreateKind::File) && ev.paths == [last.clone()]
                })
            };
            if batch.iter().any(created) {
                break;
            }
        }
        assert!(events >= FILES, "{events} events for {FILES} files");
        assert!(
            messages * 4 <= events,
            "{events} events came in {messages} messages"
        );
    }
}

//! The fanotify backend: one mark per file system holding a root (`FAN_MARK_FILESYSTEM`), events
//! named by their directory's file handle and the entry's name (`FAN_REPORT_DFID_NAME`), a rename
//! as one event with both ends (`FAN_RENAME`). No watch per directory, so nothing to install at
//! the start nor to run out of; it needs `CAP_SYS_ADMIN` and Linux 5.17.
//!
//! A thread of its own (`ward-fanotify`) reads the events, names each event's directory (an
//! `open_by_handle_at` and a `readlink` of the descriptor, remembered in a bounded cache), drops
//! those outside the roots, and hands the rest to the same [`Handler`] the notify backends use,
//! as notify events: the watcher's thread treats them alike. A queue overflow (`FAN_Q_OVERFLOW`)
//! becomes notify's rescan event.
//!
//! By hand, against `libc`: notify declined a fanotify backend (notify-rs/notify#497), and nix's
//! fanotify reads no file handle records.

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use notify::event::{
    CreateKind, DataChange, EventAttributes, MetadataKind, ModifyKind, RemoveKind, RenameMode,
};
use notify::{Event, EventKind};
use parking_lot::Mutex;

use super::DIRECTORY;
use super::watches::Handler;
use crate::IgnoreRules;

/// What the mark asks for: entries created, deleted, renamed, files written, metadata changed,
/// directories included.
const MASK: u64 = libc::FAN_CREATE
    | libc::FAN_DELETE
    | libc::FAN_RENAME
    | libc::FAN_MODIFY
    | libc::FAN_ATTRIB
    | libc::FAN_ONDIR;

/// Directories named at most: past it the cache starts over (a directory's name is then asked of
/// the kernel again).
const CACHE_MAX: usize = 16_384;

/// A file system's id, as `statfs` and the events give it.
type Fsid = [u8; 8];

/// The file systems marked, each with a directory on it (a root, a mount point), which
/// `open_by_handle_at` needs opened to name a directory of that file system. Opened when needed,
/// not kept open: an open descriptor would keep a file system mounted inside a root busy.
type Marked = Arc<Mutex<HashMap<Fsid, PathBuf>>>;

/// The fanotify group, and the thread that reads it. Dropping it wakes the thread and joins it.
pub(super) struct Fanotify {
    group: Arc<OwnedFd>,
    marked: Marked,
    // Closed (dropped) to wake the thread.
    wake: Option<OwnedFd>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Fanotify {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fanotify")
            .field("file_systems", &self.marked.lock().len())
            .finish()
    }
}

impl Fanotify {
    /// Starts the group and its thread, and marks the file systems of the roots of `rules` that
    /// exist; events outside the roots, or in a directory the rules ignore, are dropped.
    ///
    /// # Errors
    /// Why fanotify cannot be used: no `CAP_SYS_ADMIN` (`EPERM`), a kernel without
    /// `FAN_REPORT_DFID_NAME` or `FAN_RENAME` (`EINVAL`), a root's file system without file
    /// handles (`EOPNOTSUPP`, `ENODEV`, `EXDEV`).
    pub(super) fn start(rules: Arc<IgnoreRules>, handler: Handler) -> io::Result<Fanotify> {
        // SAFETY: fanotify_init takes flags only and returns a new descriptor or -1.
        let fd = unsafe {
            libc::fanotify_init(
                libc::FAN_CLASS_NOTIF
                    | libc::FAN_CLOEXEC
                    | libc::FAN_NONBLOCK
                    | libc::FAN_REPORT_DFID_NAME,
                (libc::O_RDONLY | libc::O_CLOEXEC) as libc::c_uint,
            )
        };
        if fd < 0 {
            return Err(explain(io::Error::last_os_error(), "fanotify_init"));
        }
        // SAFETY: `fd` was just made and is owned by nobody else.
        let group = Arc::new(unsafe { OwnedFd::from_raw_fd(fd) });
        let marked: Marked = Arc::default();
        let mut fanotify = Fanotify {
            group,
            marked,
            wake: None,
            thread: None,
        };
        for root in rules.roots().iter().filter(|r| r.is_dir()) {
            fanotify.mark(root)?;
        }
        let (read_end, write_end) = crate::wake::pipe()?;
        let reader = Reader {
            group: Arc::clone(&fanotify.group),
            marked: Arc::clone(&fanotify.marked),
            rules,
            handler,
            names: HashMap::new(),
            renames: 0,
            may_ignore: true,
            ignored_dirs: 0,
            ignored_generation: 0,
        };
        fanotify.thread = Some(
            std::thread::Builder::new()
                .name("ward-fanotify".into())
                .spawn(move || reader.run(&read_end))?,
        );
        fanotify.wake = Some(write_end);
        Ok(fanotify)
    }

    /// Marks the file system `dir` is on, unless it is marked already.
    ///
    /// # Errors
    /// If `dir` cannot be opened, or its file system cannot be marked.
    pub(super) fn mark(&self, dir: &Path) -> io::Result<()> {
        let opened = std::fs::File::open(dir)?;
        let fsid = fsid_of(&opened)?;
        if self.marked.lock().contains_key(&fsid) {
            return Ok(());
        }
        let path = CString::new(dir.as_os_str().as_bytes())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: the group's descriptor is open, `path` is a NUL-terminated string that lives
        // through the call.
        let marked = unsafe {
            libc::fanotify_mark(
                self.group.as_raw_fd(),
                libc::FAN_MARK_ADD | libc::FAN_MARK_FILESYSTEM,
                MASK,
                libc::AT_FDCWD,
                path.as_ptr(),
            )
        };
        if marked != 0 {
            let e = io::Error::last_os_error();
            return Err(explain(
                e,
                &format!("marking the file system of {}", dir.display()),
            ));
        }
        log::debug!(
            "ward-watch: fanotify marks the file system of {}",
            dir.display()
        );
        self.marked.lock().insert(fsid, dir.to_path_buf());
        Ok(())
    }
}

impl Drop for Fanotify {
    fn drop(&mut self) {
        drop(self.wake.take());
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            log::error!("ward-watch: the fanotify thread panicked");
        }
    }
}

/// The reader thread's state.
struct Reader {
    group: Arc<OwnedFd>,
    marked: Marked,
    rules: Arc<IgnoreRules>,
    handler: Handler,
    /// Directories named so far, by file system and handle: `None` when outside the roots (or
    /// gone). Emptied when a directory is renamed, which changes the names below it.
    names: HashMap<Vec<u8>, Option<Dir>>,
    /// Renames so far: the tracker that pairs a rename's two halves.
    renames: usize,
    /// Whether the kernel takes ignore marks (`FAN_MARK_IGNORE`, Linux 6.0).
    may_ignore: bool,
    /// Directories with an ignore mark, and the rules' generation when the first was placed.
    ignored_dirs: usize,
    ignored_generation: u64,
}

impl Reader {
    fn run(mut self, wake: &OwnedFd) {
        // u64s: the events' records are read in place, and their fields are at most 8 bytes.
        let mut buffer = vec![0u64; 8192];
        let mut gather = crate::wake::Gather::default();
        loop {
            match gather.wait(self.group.as_raw_fd(), wake) {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    log::error!("ward-watch: fanotify: poll: {e}; no more events are read");
                    return;
                }
            }
            loop {
                let bytes = buffer.len() * 8;
                // SAFETY: reads at most `bytes` into the buffer, which holds that many.
                let n = unsafe {
                    libc::read(self.group.as_raw_fd(), buffer.as_mut_ptr().cast(), bytes)
                };
                if n < 0 {
                    let e = io::Error::last_os_error();
                    match e.kind() {
                        io::ErrorKind::WouldBlock => break,
                        io::ErrorKind::Interrupted => continue,
                        _ => {
                            log::error!("ward-watch: fanotify: read: {e}; no more events are read");
                            return;
                        }
                    }
                }
                // SAFETY: the kernel wrote `n` bytes, within the buffer.
                let read =
                    unsafe { std::slice::from_raw_parts(buffer.as_ptr().cast::<u8>(), n as usize) };
                let mut out = Vec::new();
                for event in events(read) {
                    self.hand_on(&event, &mut out);
                }
                if !out.is_empty() {
                    self.handler.handle_all(out);
                }
            }
            gather.read();
        }
    }

    /// Adds `event` to `out` as notify events, if it is about a path inside a root.
    fn hand_on(&mut self, event: &RawEvent<'_>, out: &mut Vec<notify::Result<Event>>) {
        if event.mask & libc::FAN_Q_OVERFLOW != 0 {
            let rescan = Event::new(EventKind::Other).set_flag(notify::event::Flag::Rescan);
            return out.push(Ok(rescan));
        }
        let is_dir = event.mask & libc::FAN_ONDIR != 0;
        if event.mask & libc::FAN_RENAME != 0 {
            let from = event.named(libc::FAN_EVENT_INFO_TYPE_OLD_DFID_NAME);
            let to = event.named(libc::FAN_EVENT_INFO_TYPE_NEW_DFID_NAME);
            let from = from.and_then(|(dir, name)| self.path_of(dir, name));
            let to = to.and_then(|(dir, name)| self.path_of(dir, name));
            if is_dir {
                // The names cached below either end are wrong now, and a directory moved into a
                // root must not keep the ignore mark it had outside.
                self.names.clear();
                if to.is_some() {
                    self.flush_ignores();
                }
            }
            self.renames += 1;
            for (path, mode) in [(from, RenameMode::From), (to, RenameMode::To)] {
                if let Some(path) = path {
                    let half = Event::new(EventKind::Modify(ModifyKind::Name(mode)))
                        .add_path(path)
                        .set_tracker(self.renames);
                    out.push(Ok(half));
                }
            }
            return;
        }
        let Some(path) = event
            .named(libc::FAN_EVENT_INFO_TYPE_DFID_NAME)
            .and_then(|(dir, name)| self.path_of(dir, name))
        else {
            return;
        };
        for kind in kinds_of(event.mask) {
            let mut attrs = EventAttributes::new();
            if is_dir {
                attrs.set_info(DIRECTORY);
            }
            let ev = Event {
                kind,
                paths: vec![path.clone()],
                attrs,
            };
            out.push(Ok(ev));
        }
    }

    /// The path of the entry `name` in the directory `dir` (file system id and handle), if it is
    /// inside a root and not in an ignored directory; `.` names the directory itself.
    fn path_of(&mut self, dir: &[u8], name: &OsStr) -> Option<PathBuf> {
        let generation = self.rules.generation();
        if generation != self.ignored_generation {
            // A directory ignored until now may not be any more.
            self.flush_ignores();
        }
        let known = match self.names.get_mut(dir) {
            Some(known) => known.as_mut()?,
            None => {
                let named = match self.name_dir(dir) {
                    Some(Named::Relevant(path)) => {
                        self.load_rules(&path);
                        let ignored = self.ignores(&path);
                        // Above a root, the files are outside it (a log beside the tree): only
                        // the entries, a root's own removal or rename among them, matter there.
                        if ignored || self.rules.root_of(&path).is_none() {
                            self.ignore_writes_in(&path);
                        }
                        Some(Dir {
                            ignored,
                            path,
                            generation: self.rules.generation(),
                        })
                    }
                    Some(Named::Outside(path)) => {
                        self.ignore_writes_in(&path);
                        None
                    }
                    None => None,
                };
                if self.names.len() >= CACHE_MAX {
                    self.names.clear();
                }
                self.names.entry(dir.to_vec()).or_insert(named).as_mut()?
            }
        };
        if known.generation != generation {
            known.ignored = self.rules.root_of(&known.path).is_some()
                && self.rules.is_ignored_within(&known.path);
            known.generation = generation;
        }
        if known.ignored {
            return None;
        }
        let path = if name == "." {
            known.path.clone()
        } else {
            known.path.join(name)
        };
        self.rules.root_of(&path).is_some().then_some(path)
    }

    /// Whether the rules ignore what is in `dir`: never for a directory above a root (a root's
    /// own removal or rename is told there).
    fn ignores(&self, dir: &Path) -> bool {
        self.rules.root_of(dir).is_some() && self.rules.is_ignored_within(dir)
    }

    /// Reads the ignore files of `dir` and the directories above it up to its root, as a walk
    /// would have (fanotify walks nothing): the first time an event names a directory.
    fn load_rules(&self, dir: &Path) {
        let Some(root) = self.rules.root_of(dir) else {
            return;
        };
        for d in dir.ancestors() {
            if let Err(e) = self.rules.load_dir(d) {
                log::warn!("ward-watch: {e}");
            }
            if d == root {
                break;
            }
        }
    }

    /// Asks the kernel where a directory is (`dir`: its file system id and file handle): `None`
    /// if it is gone or on a file system not marked.
    fn name_dir(&self, dir: &[u8]) -> Option<Named> {
        let (fsid, handle) = dir.split_at_checked(8)?;
        let on = self
            .marked
            .lock()
            .get(<&Fsid>::try_from(fsid).ok()?)?
            .clone();
        // The directory may be gone (a root removed): one above it is on the same file system,
        // unless it was a mount point, which cannot be removed.
        let mount = on
            .ancestors()
            .find_map(|dir| std::fs::File::open(dir).ok())?;
        // An aligned copy of the `struct file_handle`.
        let mut aligned = vec![0u64; handle.len().div_ceil(8)];
        // SAFETY: `aligned` holds at least `handle.len()` bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(
                handle.as_ptr(),
                aligned.as_mut_ptr().cast(),
                handle.len(),
            );
        }
        // SAFETY: `aligned` holds a whole file_handle as the kernel wrote it (its byte count
        // included), and the mount descriptor is open.
        let fd = unsafe {
            libc::open_by_handle_at(
                mount.as_raw_fd(),
                aligned.as_mut_ptr().cast(),
                libc::O_PATH | libc::O_CLOEXEC,
            )
        };
        drop(mount);
        if fd < 0 {
            // ESTALE: removed since.
            return None;
        }
        // SAFETY: just opened, owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let path = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()?;
        // Unlinked since the event: its children's events are moot, its own removal is told
        // by its parent's event.
        if path.as_os_str().as_bytes().ends_with(b" (deleted)") {
            return None;
        }
        let relevant = self
            .rules
            .roots()
            .iter()
            .any(|root| path.starts_with(root) || root.starts_with(&path));
        Some(if relevant {
            Named::Relevant(path)
        } else {
            Named::Outside(path)
        })
    }

    /// Asks the kernel to drop, before they are queued, the writes and metadata changes of the
    /// files in `dir`, whose events this thread would drop anyway (outside the roots, or
    /// ignored): the writes of a build or a log beside the tree cost neither the kernel's queue
    /// nor this thread. Entries made, removed or renamed there still come (a directory moved
    /// into a root is told by them). Past [`IGNORED_MAX`] directories, or once the rules
    /// change, the marks start over; a kernel without `FAN_MARK_IGNORE` (6.0) gets none.
    fn ignore_writes_in(&mut self, dir: &Path) {
        if !self.may_ignore {
            return;
        }
        if self.ignored_dirs >= IGNORED_MAX || self.ignored_generation != self.rules.generation() {
            self.flush_ignores();
        }
        let Ok(path) = CString::new(dir.as_os_str().as_bytes()) else {
            return;
        };
        // SAFETY: the group's descriptor is open, `path` is NUL-terminated and outlives the call.
        let marked = unsafe {
            libc::fanotify_mark(
                self.group.as_raw_fd(),
                libc::FAN_MARK_ADD | libc::FAN_MARK_IGNORE_SURV,
                libc::FAN_MODIFY | libc::FAN_ATTRIB | libc::FAN_EVENT_ON_CHILD,
                libc::AT_FDCWD,
                path.as_ptr(),
            )
        };
        if marked == 0 {
            self.ignored_dirs += 1;
            return;
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EINVAL) {
            log::debug!("ward-watch: fanotify: no ignore marks on this kernel ({e})");
            self.may_ignore = false;
        } else {
            log::debug!(
                "ward-watch: fanotify: ignoring writes in {}: {e}",
                dir.display()
            );
        }
    }

    /// Drops every ignore mark (directory marks; the file systems' marks stay).
    fn flush_ignores(&mut self) {
        self.ignored_generation = self.rules.generation();
        if self.ignored_dirs == 0 {
            return;
        }
        self.ignored_dirs = 0;
        // SAFETY: the group's descriptor is open; a flush takes no path.
        let flushed = unsafe {
            libc::fanotify_mark(
                self.group.as_raw_fd(),
                libc::FAN_MARK_FLUSH,
                0,
                libc::AT_FDCWD,
                std::ptr::null(),
            )
        };
        if flushed != 0 {
            log::warn!(
                "ward-watch: fanotify: dropping ignore marks: {}; writes in directories moved into a root may go unseen until a rescan",
                io::Error::last_os_error()
            );
        }
    }
}

/// What a directory an event named is to the watcher.
enum Named {
    /// Inside a root, or above one.
    Relevant(PathBuf),
    /// Elsewhere on a marked file system.
    Outside(PathBuf),
}

/// Directories whose files' writes the kernel is asked to drop, at most.
const IGNORED_MAX: usize = 4096;

/// A directory an event named: where it is, and whether the rules ignore it (or one above it),
/// as of the rules' `generation`.
struct Dir {
    path: PathBuf,
    ignored: bool,
    generation: u64,
}

/// One event as read: its mask and its info records.
struct RawEvent<'a> {
    mask: u64,
    records: Vec<Record<'a>>,
}

/// An info record naming an entry: its type, its directory (file system id and handle, as one
/// key) and the entry's name.
struct Record<'a> {
    kind: u8,
    dir: &'a [u8],
    name: &'a OsStr,
}

impl RawEvent<'_> {
    fn named(&self, kind: u8) -> Option<(&[u8], &OsStr)> {
        self.records
            .iter()
            .find(|r| r.kind == kind)
            .map(|r| (r.dir, r.name))
    }
}

/// The kinds of change an event's `mask` says, in the order they happen in (the kernel merges
/// an entry's events while they wait unread).
///
/// A file's creation merged with writes is its creation alone: the watcher's pending set makes a
/// creation and the writes after it one creation, so the writes would cost the watcher's thread
/// an event and say nothing. (Without a removal in the mask, the writes came after the creation:
/// a name is made only where none is.) A file written as it is made is one event, not two.
fn kinds_of(mask: u64) -> impl Iterator<Item = EventKind> {
    let is_dir = mask & libc::FAN_ONDIR != 0;
    let creation_written =
        !is_dir && mask & (libc::FAN_CREATE | libc::FAN_DELETE) == libc::FAN_CREATE;
    [
        (
            libc::FAN_CREATE,
            EventKind::Create(if is_dir {
                CreateKind::Folder
            } else {
                CreateKind::File
            }),
        ),
        (
            libc::FAN_MODIFY,
            EventKind::Modify(ModifyKind::Data(DataChange::Any)),
        ),
        (
            libc::FAN_ATTRIB,
            EventKind::Modify(ModifyKind::Metadata(MetadataKind::Any)),
        ),
        (
            libc::FAN_DELETE,
            EventKind::Remove(if is_dir {
                RemoveKind::Folder
            } else {
                RemoveKind::File
            }),
        ),
    ]
    .into_iter()
    .filter(move |&(bit, _)| mask & bit != 0 && !(creation_written && bit == libc::FAN_MODIFY))
    .map(|(_, kind)| kind)
}

/// The events in `buf`, as `read(2)` of a fanotify group gives them. A record too short for what
/// it says it holds ends the parse of its event.
fn events(buf: &[u8]) -> Vec<RawEvent<'_>> {
    const META: usize = size_of::<libc::fanotify_event_metadata>();
    let mut out = Vec::new();
    let mut at = 0;
    while buf.len() >= at + META {
        let event_len = u32_at(buf, at) as usize;
        let metadata_len = u16_at(buf, at + 6) as usize;
        if event_len < META || at + event_len > buf.len() {
            break;
        }
        let mask = u64::from_ne_bytes(buf[at + 8..at + 16].try_into().expect("8 bytes"));
        let mut records = Vec::new();
        let mut r = at + metadata_len;
        while r + 4 <= at + event_len {
            let kind = buf[r];
            let len = u16_at(buf, r + 2) as usize;
            if len < 4 || r + len > at + event_len {
                break;
            }
            if let Some(record) = record(kind, &buf[r + 4..r + len]) {
                records.push(record);
            }
            r += len;
        }
        out.push(RawEvent { mask, records });
        at += event_len;
    }
    out
}

/// A record of a type that names an entry: `body` is the file system id (8 bytes), the
/// `struct file_handle` (its byte count, type and bytes), then the name, NUL-terminated.
fn record(kind: u8, body: &[u8]) -> Option<Record<'_>> {
    if ![
        libc::FAN_EVENT_INFO_TYPE_DFID_NAME,
        libc::FAN_EVENT_INFO_TYPE_OLD_DFID_NAME,
        libc::FAN_EVENT_INFO_TYPE_NEW_DFID_NAME,
    ]
    .contains(&kind)
    {
        return None;
    }
    let handle_bytes = u32_at(body, 8) as usize;
    let dir_end = 8 + 8 + handle_bytes;
    let rest = body.get(dir_end..)?;
    let name = &rest[..rest.iter().position(|&b| b == 0)?];
    Some(Record {
        kind,
        dir: &body[..dir_end],
        name: OsStr::from_bytes(name),
    })
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    buf.get(at..at + 4)
        .map_or(0, |b| u32::from_ne_bytes(b.try_into().expect("4 bytes")))
}

fn u16_at(buf: &[u8], at: usize) -> u16 {
    buf.get(at..at + 2)
        .map_or(0, |b| u16::from_ne_bytes(b.try_into().expect("2 bytes")))
}

/// The id of the file system `file` is on, as fanotify's records give it.
fn fsid_of(file: &std::fs::File) -> io::Result<Fsid> {
    let mut stat = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: fstatfs fills the struct it is given for an open descriptor.
    if unsafe { libc::fstatfs(file.as_raw_fd(), stat.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstatfs succeeded, so the struct is initialized.
    let stat = unsafe { stat.assume_init() };
    // SAFETY: `f_fsid` is two c_ints, 8 bytes, in the layout the records use.
    Ok(unsafe { std::mem::transmute::<libc::fsid_t, Fsid>(stat.f_fsid) })
}

/// `e` with what was being done, and what it likely means.
fn explain(e: io::Error, doing: &str) -> io::Error {
    let meaning = match e.raw_os_error() {
        Some(libc::EPERM) => "fanotify needs CAP_SYS_ADMIN (root)",
        Some(libc::EINVAL) => "the kernel lacks FAN_REPORT_DFID_NAME or FAN_RENAME (Linux 5.17)",
        Some(libc::ENODEV | libc::EOPNOTSUPP | libc::EXDEV) => {
            "the file system has no file handles or no fsid for fanotify"
        }
        Some(libc::ENOSYS) => "the kernel has no fanotify",
        _ => "",
    };
    let text = if meaning.is_empty() {
        format!("{doing}: {e}")
    } else {
        format!("{doing}: {e}: {meaning}")
    };
    io::Error::new(e.kind(), text)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An event as the kernel lays it out: metadata, then one record per (type, handle, name).
    fn event(mask: u64, records: &[(u8, &[u8], &str)]) -> Vec<u8> {
        let mut body = Vec::new();
        for (kind, handle, name) in records {
            let mut record = vec![*kind, 0, 0, 0];
            record.extend_from_slice(&[7; 8]); // fsid
            record.extend_from_slice(&(handle.len() as u32).to_ne_bytes());
            record.extend_from_slice(&1i32.to_ne_bytes()); // handle type
            record.extend_from_slice(handle);
            record.extend_from_slice(name.as_bytes());
            record.push(0);
            while record.len() % 4 != 0 {
                record.push(0);
            }
            let len = record.len() as u16;
            record[2..4].copy_from_slice(&len.to_ne_bytes());
            body.extend(record);
        }
        let meta = size_of::<libc::fanotify_event_metadata>();
        let mut out = Vec::new();
        out.extend_from_slice(&((meta + body.len()) as u32).to_ne_bytes());
        out.extend_from_slice(&[3, 0]);
        out.extend_from_slice(&(meta as u16).to_ne_bytes());
        out.extend_from_slice(&mask.to_ne_bytes());
        out.extend_from_slice(&libc::FAN_NOFD.to_ne_bytes());
        out.extend_from_slice(&0i32.to_ne_bytes());
        out.extend(body);
        out
    }

    #[test]
    fn events_are_read_with_their_directory_and_name_and_a_torn_one_ends_the_read() {
        let rename = event(
            libc::FAN_RENAME | libc::FAN_ONDIR,
            &[
                (libc::FAN_EVENT_INFO_TYPE_OLD_DFID_NAME, b"dir-a", "from"),
                (libc::FAN_EVENT_INFO_TYPE_NEW_DFID_NAME, b"dir-b", "to"),
            ],
        );
        let created = event(
            libc::FAN_CREATE,
            &[(libc::FAN_EVENT_INFO_TYPE_DFID_NAME, b"dir-a", "caf\u{e9}")],
        );
        let mut buf = [rename, created.clone()].concat();
        // A third event cut short: not read, and nothing after it either.
        buf.extend_from_slice(&created[..created.len() - 3]);
        let read = events(&buf);
        assert_eq!(read.len(), 2);
        assert_eq!(read[0].mask, libc::FAN_RENAME | libc::FAN_ONDIR);
        let (from_dir, from) = read[0]
            .named(libc::FAN_EVENT_INFO_TYPE_OLD_DFID_NAME)
            .unwrap();
        let (to_dir, to) = read[0]
            .named(libc::FAN_EVENT_INFO_TYPE_NEW_DFID_NAME)
            .unwrap();
        assert_eq!((from, to), (OsStr::new("from"), OsStr::new("to")));
        assert_ne!(from_dir, to_dir, "the handles key the directories");
        assert!(from_dir.ends_with(b"dir-a") && from_dir.starts_with(&[7; 8]));
        let (dir, name) = read[1].named(libc::FAN_EVENT_INFO_TYPE_DFID_NAME).unwrap();
        assert_eq!((dir, name), (from_dir, OsStr::new("caf\u{e9}")));
        // An overflow has no record.
        let overflow = event(libc::FAN_Q_OVERFLOW, &[]);
        assert!(events(&overflow)[0].records.is_empty());
    }

    #[test]
    fn a_files_creation_merged_with_its_writes_is_its_creation_alone() {
        use libc::{FAN_ATTRIB, FAN_CREATE, FAN_DELETE, FAN_MODIFY, FAN_ONDIR};
        let file = EventKind::Create(CreateKind::File);
        let write = EventKind::Modify(ModifyKind::Data(DataChange::Any));
        let attrib = EventKind::Modify(ModifyKind::Metadata(MetadataKind::Any));
        let gone = EventKind::Remove(RemoveKind::File);
        assert_eq!(
            kinds_of(FAN_CREATE | FAN_MODIFY).collect::<Vec<_>>(),
            [file]
        );
        assert_eq!(
            kinds_of(FAN_CREATE | FAN_MODIFY | FAN_ATTRIB).collect::<Vec<_>>(),
            [file, attrib]
        );
        // Everything else as the mask says.
        assert_eq!(kinds_of(FAN_MODIFY).collect::<Vec<_>>(), [write]);
        assert_eq!(kinds_of(FAN_CREATE).collect::<Vec<_>>(), [file]);
        assert_eq!(
            kinds_of(FAN_CREATE | FAN_MODIFY | FAN_DELETE).collect::<Vec<_>>(),
            [file, write, gone]
        );
        assert_eq!(
            kinds_of(FAN_CREATE | FAN_MODIFY | FAN_ONDIR).collect::<Vec<_>>(),
            [EventKind::Create(CreateKind::Folder), write]
        );
    }
}

//! One directory's listing for the sorted walk ([`crate::walk_files`]): the names of its entries
//! that are not ignored, end to end in one buffer, sorted, each file stat-ed relative to the
//! directory only when the walk reaches it. Not the walk itself (`snapshot`).
//!
//! Why libc and not `std::fs::read_dir`: std allocates a name twice per entry and cannot stat a
//! name relative to a directory it keeps open, and a listing that stat-ed every file as it was
//! read paid for the whole directory each time a walk resumed in it (a rescan of a large
//! directory is compared a few thousand files at a time, each part listing it again).

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::IgnoreRules;

/// What a `stat` of a file (not following a symlink) says, as the walk hands it on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStat {
    /// Size in bytes.
    pub size: u64,
    /// Modification time, ns since the epoch.
    pub mtime_ns: i64,
    /// Status change time, ns since the epoch.
    pub ctime_ns: i64,
    /// Inode number.
    pub ino: u64,
    /// Device number.
    pub dev: u64,
}

/// What [`Listing::pop_into`] found next.
pub(crate) enum Entry {
    /// A file (anything but a directory), and its stat; `None` if it is gone or cannot be
    /// stat-ed (its removal is an event of its own; a stat of its path would skip it too).
    File(Option<FileStat>),
    /// A directory, to be listed in turn.
    Dir,
}

/// A directory's entries still to walk.
pub(crate) struct Listing {
    /// The directory, open, to stat its files relative to it; closed while the walk is below
    /// it (so that a deep walk holds one descriptor, not one per level) and opened again when a
    /// file is left to stat.
    dir: Option<OwnedFd>,
    /// The names, end to end, each followed by a NUL.
    names: Vec<u8>,
    /// Each entry's name in `names` (start, end: its NUL) and whether it is a directory, in the reverse
    /// byte order of their paths (popped from the end).
    entries: Vec<(u32, u32, bool)>,
}

impl Listing {
    /// Lists `dir`'s entries that `rules` does not ignore and, if `after` is given, those whose
    /// path (or for a directory, some path below it) sorts after it. Nothing is stat-ed but an
    /// entry whose type the listing does not say. A directory that cannot be listed has an
    /// empty listing, and the reason is logged.
    pub(crate) fn read(rules: &IgnoreRules, dir: &Path, after: Option<&[u8]>) -> Listing {
        if let Err(e) = rules.load_dir(dir) {
            log::warn!("{e}");
        }
        let mut listing = Listing {
            dir: None,
            names: Vec::new(),
            entries: Vec::new(),
        };
        let fd = match open_dir(dir) {
            Ok(fd) => fd,
            Err(e) => {
                super::snapshot::log_walk_error(dir, &e);
                return listing;
            }
        };
        let dir_rules = rules.in_dir(dir);
        let dir_bytes = dir.as_os_str().as_bytes();
        let mut full = Vec::new();
        let read = read_entries(&fd, |name, is_dir| {
            let is_dir = match is_dir {
                Some(is_dir) => is_dir,
                None => match stat_at(&fd, name) {
                    Ok(st) => st.st_mode & libc::S_IFMT == libc::S_IFDIR,
                    // Gone since it was listed: its removal is an event of its own.
                    Err(_) => return,
                },
            };
            let name = name.to_bytes();
            if dir_rules.is_ignored(dir, OsStr::from_bytes(name), is_dir)
                || after
                    .is_some_and(|after| !reaches_past(&mut full, dir_bytes, name, is_dir, after))
            {
                return;
            }
            let start = listing.names.len();
            listing.names.extend_from_slice(name);
            // A directory's names stay far below 4 GiB: a name is at most 255 bytes.
            listing
                .entries
                .push((start as u32, listing.names.len() as u32, is_dir));
            // NUL-terminated, to be stat-ed as it is.
            listing.names.push(0);
        });
        if let Err(e) = read {
            super::snapshot::log_walk_error(dir, &e);
        }
        let names = &listing.names;
        listing
            .entries
            .sort_unstable_by(|&(a0, a1, a_dir), &(b0, b1, b_dir)| {
                super::snapshot::path_order(
                    &names[b0 as usize..b1 as usize],
                    b_dir,
                    &names[a0 as usize..a1 as usize],
                    a_dir,
                )
            });
        if listing.entries.iter().any(|&(_, _, is_dir)| !is_dir) {
            listing.dir = Some(fd);
        }
        listing
    }

    /// Takes the next entry in path order and pushes its name onto `path` (this listing's
    /// directory), stat-ing it if it is a file; `None` once every entry has been taken.
    pub(crate) fn pop_into(&mut self, path: &mut std::path::PathBuf) -> Option<Entry> {
        let (start, end, is_dir) = self.entries.pop()?;
        // Each name is followed by a NUL in `names`.
        let name = &self.names[start as usize..=end as usize];
        path.push(OsStr::from_bytes(&name[..name.len() - 1]));
        if is_dir {
            // The walk goes below: one descriptor open at a time.
            self.dir = None;
            return Some(Entry::Dir);
        }
        if self.dir.is_none() {
            self.dir = path.parent().and_then(|dir| open_dir(dir).ok());
        }
        let stat = match (&self.dir, CStr::from_bytes_with_nul(name)) {
            (Some(fd), Ok(name)) => stat_at(fd, name).ok().map(|st| FileStat {
                size: st.st_size as u64,
                mtime_ns: st.st_mtime * 1_000_000_000 + st.st_mtime_nsec,
                ctime_ns: st.st_ctime * 1_000_000_000 + st.st_ctime_nsec,
                ino: st.st_ino,
                dev: st.st_dev,
            }),
            // The directory cannot be opened again: the file's path then.
            _ => std::fs::symlink_metadata(&path).ok().map(|m| FileStat {
                size: m.size(),
                mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
                ctime_ns: m.ctime() * 1_000_000_000 + m.ctime_nsec(),
                ino: m.ino(),
                dev: m.dev(),
            }),
        };
        Some(Entry::File(stat))
    }
}

/// Whether the entry `name` of `dir`, or for a directory some path below it, sorts after
/// `after`; `full` is scratch space, kept between calls.
fn reaches_past(full: &mut Vec<u8>, dir: &[u8], name: &[u8], is_dir: bool, after: &[u8]) -> bool {
    full.clear();
    full.extend_from_slice(dir);
    if !dir.ends_with(b"/") {
        full.push(b'/');
    }
    full.extend_from_slice(name);
    if !is_dir {
        return full.as_slice() > after;
    }
    // Every path below sorts as `full/...`: all after `after`, or, if `after` lies below, some.
    full.push(b'/');
    full.as_slice() > after || after.starts_with(full)
}

fn open_dir(dir: &Path) -> io::Result<OwnedFd> {
    let path = CString::new(dir.as_os_str().as_bytes())?;
    // SAFETY: `path` is a NUL-terminated string that outlives the call.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Calls `each` with every entry of the directory `fd` but `.` and `..`, with whether it is a
/// directory when the listing says (`None`: unknown, the file system does not tell).
fn read_entries(fd: &OwnedFd, mut each: impl FnMut(&CStr, Option<bool>)) -> io::Result<()> {
    // `fdopendir` takes the descriptor it is given, and `closedir` closes it: a copy of ours.
    let copy = fd.try_clone()?.into_raw_fd();
    // SAFETY: `copy` is an open directory descriptor that nothing else owns.
    let stream = unsafe { libc::fdopendir(copy) };
    if stream.is_null() {
        let e = io::Error::last_os_error();
        // SAFETY: `fdopendir` failed, so `copy` is still ours to close.
        unsafe { libc::close(copy) };
        return Err(e);
    }
    let result = loop {
        // SAFETY: errno is this thread's; `readdir64` says an error only through it.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: `stream` is open until the `closedir` below, and only this thread reads it.
        let entry = unsafe { libc::readdir64(stream) };
        if entry.is_null() {
            let e = io::Error::last_os_error();
            break if e.raw_os_error() == Some(0) {
                Ok(())
            } else {
                Err(e)
            };
        }
        // SAFETY: a non-null entry stays valid until the next `readdir64` on the stream, and its
        // name is NUL-terminated.
        let (name, kind) = unsafe { (CStr::from_ptr((*entry).d_name.as_ptr()), (*entry).d_type) };
        if name.to_bytes() == b"." || name.to_bytes() == b".." {
            continue;
        }
        let is_dir = match kind {
            libc::DT_UNKNOWN => None,
            kind => Some(kind == libc::DT_DIR),
        };
        each(name, is_dir);
    };
    // SAFETY: `stream` is open and not used after this.
    unsafe { libc::closedir(stream) };
    result
}

/// `fstatat` of `name` in the directory `fd`, not following a symlink.
fn stat_at(fd: &OwnedFd, name: &CStr) -> io::Result<libc::stat64> {
    let mut st = MaybeUninit::<libc::stat64>::uninit();
    // SAFETY: `name` is NUL-terminated and `st` is large enough for what the call writes.
    let r = unsafe {
        libc::fstatat64(
            fd.as_raw_fd(),
            name.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the call succeeded, so it filled `st`.
    Ok(unsafe { st.assume_init() })
}

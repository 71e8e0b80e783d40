//! What a stress run takes from the machine besides processes: mounts (the state directory's
//! tmpfs, the mounts inside the tree); and their release, on every way out and after a run that was killed before it could
//! release them. Processes are `daemon.rs`'s.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::daemon::wait_until;

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path with a NUL"))
}

/// Mounts a tmpfs of `size_mib` MiB on `target` (an existing directory), its root with `mode`.
///
/// # Errors
/// If mount(2) fails (not root, no tmpfs).
pub fn mount_tmpfs(target: &Path, size_mib: u64, mode: u32) -> io::Result<()> {
    let target_c = c_path(target)?;
    let options = CString::new(format!("size={size_mib}m,mode={mode:o}"))
        .map_err(|_| io::Error::other("mount options"))?;
    // SAFETY: every pointer is a NUL-terminated string that outlives the call.
    let rc = unsafe {
        libc::mount(
            c"tmpfs".as_ptr(),
            target_c.as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            options.as_ptr().cast(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Bind-mounts the directory `source` on `target` (`mount --bind`).
///
/// # Errors
/// If mount(2) fails.
pub fn bind(source: &Path, target: &Path) -> io::Result<()> {
    let (source_c, target_c) = (c_path(source)?, c_path(target)?);
    // SAFETY: as in `mount_tmpfs`; a bind mount reads no type and no data.
    let rc = unsafe {
        libc::mount(
            source_c.as_ptr(),
            target_c.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Unmounts `target`: a plain umount, retried for a second while something has a file open in
/// it (a job reading), then detached (the kernel finishes it once the last file is closed).
///
/// # Errors
/// If it is not a mount point, or even a detach fails.
pub fn unmount(target: &Path) -> io::Result<()> {
    let target_c = c_path(target)?;
    let umount = |flags| {
        // SAFETY: a NUL-terminated path that outlives the call.
        if unsafe { libc::umount2(target_c.as_ptr(), flags) } == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    };
    let busy = |r: &io::Result<()>| matches!(r, Err(e) if e.raw_os_error() == Some(libc::EBUSY));
    let mut result = umount(0);
    wait_until(Duration::from_secs(1), || {
        if busy(&result) {
            result = umount(0);
        }
        !busy(&result)
    });
    if busy(&result) {
        umount(libc::MNT_DETACH)
    } else {
        result
    }
}

/// The mount points at or under `dir` in a `/proc/self/mountinfo` text, deepest first (the
/// order to unmount them in). Its fifth field is the mount point, with space, tab, newline and
/// backslash escaped as octal.
pub fn mounts_under(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape_octal(field)))
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

fn unescape_octal(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let code = bytes
            .get(i + 1..i + 4)
            .filter(|_| bytes[i] == b'\\')
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u8::from_str_radix(d, 8).ok());
        match code {
            Some(b) => {
                out.push(b);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `path` is a mount point.
pub fn is_mount_point(path: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .is_ok_and(|info| mounts_under(&info, path).iter().any(|m| m == path))
}

/// Unmounts everything mounted at or under `dir`, deepest first; returns what it unmounted and
/// what it could not.
pub fn release_mounts(dir: &Path) -> (Vec<PathBuf>, Vec<String>) {
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return (Vec::new(), Vec::new());
    };
    let mut done = Vec::new();
    let mut failed = Vec::new();
    for target in mounts_under(&mountinfo, dir) {
        match unmount(&target) {
            Ok(()) => done.push(target),
            Err(e) => failed.push(format!("{}: {e}", target.display())),
        }
    }
    (done, failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_under_a_directory_come_deepest_first_and_unescaped() {
        let info = "\
22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda rw
40 22 0:35 / /tmp/ward-stress-7-1/state rw,nosuid,nodev - tmpfs tmpfs rw,size=65536k,mode=700
41 22 0:36 / /tmp/ward-stress-7-1/tree/mnt-1/tmpfs rw - tmpfs tmpfs rw
42 41 0:37 /x /tmp/ward-stress-7-1/tree/mnt-1/tmpfs/deep\\040dir rw - tmpfs tmpfs rw
43 22 0:38 / /tmp/ward-stress-7-10/state rw - tmpfs tmpfs rw
";
        let found = mounts_under(info, Path::new("/tmp/ward-stress-7-1"));
        assert_eq!(
            found,
            [
                PathBuf::from("/tmp/ward-stress-7-1/tree/mnt-1/tmpfs/deep dir"),
                PathBuf::from("/tmp/ward-stress-7-1/tree/mnt-1/tmpfs"),
                PathBuf::from("/tmp/ward-stress-7-1/state"),
            ]
        );
        assert!(mounts_under(info, Path::new("/nowhere")).is_empty());
    }
}

//! What a stress run takes from the machine besides processes: mounts (the state directory's
//! tmpfs, the mounts inside the tree) and a throwaway user; and their release, on every way out
//! and after a run that was killed before it could release them. Processes are `daemon.rs`'s.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

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

/// Resizes the tmpfs mounted on `target` to `size_kib` KiB (`mount -o remount,size=`); it cannot
/// shrink below what its files use.
///
/// # Errors
/// If mount(2) refuses.
pub fn resize_tmpfs(target: &Path, size_kib: u64) -> io::Result<()> {
    let target_c = c_path(target)?;
    let options =
        CString::new(format!("size={size_kib}k")).map_err(|_| io::Error::other("mount options"))?;
    // SAFETY: as in `mount_tmpfs`; a remount reads no source.
    let rc = unsafe {
        libc::mount(
            std::ptr::null(),
            target_c.as_ptr(),
            std::ptr::null(),
            libc::MS_REMOUNT | libc::MS_NOSUID | libc::MS_NODEV,
            options.as_ptr().cast(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Bytes in use on the filesystem that holds `path`.
///
/// # Errors
/// If statvfs(2) fails.
pub fn used_bytes(path: &Path) -> io::Result<u64> {
    let path_c = c_path(path)?;
    // SAFETY: statvfs is plain data, for which all zeroes is a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a struct we own, which statvfs fills.
    if unsafe { libc::statvfs(path_c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((st.f_blocks - st.f_bfree) * st.f_frsize)
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
/// order to unmount them in), unescaped. Read as bytes: one mount point anywhere that is not
/// UTF-8 must not hide the harness's own.
pub fn mounts_under(mountinfo: &[u8], dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = ward_sys::parse_mountinfo(mountinfo)
        .map(|m| m.mount_point)
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

/// Whether `path` is a mount point.
pub fn is_mount_point(path: &Path) -> bool {
    std::fs::read("/proc/self/mountinfo")
        .is_ok_and(|info| mounts_under(&info, path).iter().any(|m| m == path))
}

/// Unmounts everything mounted at or under `dir`, deepest first; returns what it unmounted and
/// what it could not.
pub fn release_mounts(dir: &Path) -> (Vec<PathBuf>, Vec<String>) {
    let Ok(mountinfo) = std::fs::read("/proc/self/mountinfo") else {
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

/// The throwaway user of the harness whose pid is `pid`: its name says whose it is, so that a
/// later run removes it if that harness was killed before it could.
pub fn user_name(pid: u32) -> String {
    format!("ward-stress-{pid}")
}

/// The harness pid a throwaway user's name carries.
pub fn user_owner(name: &str) -> Option<u32> {
    name.strip_prefix("ward-stress-")?.parse().ok()
}

/// A user account: name, uid, gid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Its login name.
    pub name: String,
    /// Its uid.
    pub uid: u32,
    /// Its primary gid.
    pub gid: u32,
}

/// The accounts of an `/etc/passwd` text.
pub fn users(passwd: &str) -> Vec<User> {
    passwd
        .lines()
        .filter_map(|line| {
            let mut f = line.split(':');
            let name = f.next()?.to_owned();
            let uid = f.nth(1)?.parse().ok()?;
            let gid = f.next()?.parse().ok()?;
            Some(User { name, uid, gid })
        })
        .collect()
}

fn find_user(name: &str) -> Option<User> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    users(&passwd).into_iter().find(|u| u.name == name)
}

fn quiet(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Creates this harness's throwaway system user (no home, no login), or returns it if it exists.
///
/// # Errors
/// If `useradd` fails or the account cannot be read back.
pub fn create_user() -> anyhow::Result<User> {
    let name = user_name(std::process::id());
    if let Some(user) = find_user(&name) {
        return Ok(user);
    }
    quiet(
        "useradd",
        &[
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            "--user-group",
            &name,
        ],
    )?;
    find_user(&name).with_context(|| format!("{name} is not in /etc/passwd after useradd"))
}

/// Removes the throwaway user of the harness `pid`, if there is one (its processes must be gone).
///
/// # Errors
/// If `userdel` fails.
pub fn remove_user(pid: u32) -> anyhow::Result<bool> {
    let name = user_name(pid);
    if find_user(&name).is_none() {
        return Ok(false);
    }
    quiet("userdel", &[&name])?;
    Ok(true)
}

/// The throwaway users of harnesses that are gone: a run killed with SIGKILL left them.
pub fn abandoned_users(alive: impl Fn(u32) -> bool) -> Vec<u32> {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    users(&passwd)
        .iter()
        .filter_map(|u| user_owner(&u.name))
        .filter(|&pid| !alive(pid))
        .collect()
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Gives `path` and everything under it to `uid`:`gid` (symlinks are not followed).
///
/// # Errors
/// The first chown that fails.
pub fn chown_tree(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
    if path.symlink_metadata()?.is_dir() {
        for entry in std::fs::read_dir(path)? {
            chown_tree(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_under_a_directory_come_deepest_first_and_unescaped() {
        let info = b"\
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

    #[test]
    fn throwaway_users_are_found_by_the_pid_in_their_name() {
        let passwd = "\
root:x:0:0:root:/root:/bin/bash
ward-stress-4242:x:998:998::/nonexistent:/usr/sbin/nologin
ward-stress-nope:x:997:997::/:/bin/false
";
        let all = users(passwd);
        assert_eq!(
            all[1],
            User {
                name: "ward-stress-4242".into(),
                uid: 998,
                gid: 998
            }
        );
        let owners: Vec<u32> = all.iter().filter_map(|u| user_owner(&u.name)).collect();
        assert_eq!(owners, [4242]);
        assert_eq!(user_owner(&user_name(17)), Some(17));
    }
}

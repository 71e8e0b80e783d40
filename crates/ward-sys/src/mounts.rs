//! `/proc/<pid>/mountinfo`: one [`Mount`] per line, its paths unescaped. Which cgroup lives where
//! is [`crate::cgroup`]'s; following changes of the table is the watcher's.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

/// One line of a `mountinfo` file:
/// `id parent major:minor root mount-point options [optional...] - fstype source super-options`.
///
/// The kernel writes a space, tab, newline or backslash inside a path or name as an octal
/// escape (`\040`, `\011`, `\012`, `\134`); here they are undone, so the paths are the real ones.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Mount {
    /// The directory of the file system that is mounted (field 4): `/` for the whole of it, a
    /// subdirectory for a bind mount or a cgroup namespace's view.
    pub root: PathBuf,
    /// Where it is mounted (field 5).
    pub mount_point: PathBuf,
    /// The file-system type (`ext4`, `tmpfs`, `cgroup2`).
    pub fs_type: String,
    /// The source (`/dev/vda1`, `tmpfs`), as the file system names it.
    pub source: OsString,
    /// The per-superblock options (`rw,memory` for a v1 memory cgroup).
    pub super_options: String,
}

impl Mount {
    /// Parses one line; `None` if it is not a mountinfo line.
    pub fn parse(line: &[u8]) -> Option<Mount> {
        let mut fields = line
            .strip_suffix(b"\n")
            .unwrap_or(line)
            .split(|&b| b == b' ');
        let root = fields.nth(3)?;
        let mount_point = fields.next()?;
        let _options = fields.next()?;
        // Optional fields (`shared:1`, `master:3`), none or several, up to a lone `-`.
        fields.by_ref().find(|f| *f == b"-")?;
        let fs_type = fields.next()?;
        let source = fields.next()?;
        let super_options = fields.next()?;
        if root.is_empty() || mount_point.is_empty() || fs_type.is_empty() {
            return None;
        }
        let text = |field: &[u8]| String::from_utf8_lossy(&unescape(field)).into_owned();
        Some(Mount {
            root: PathBuf::from(OsString::from_vec(unescape(root))),
            mount_point: PathBuf::from(OsString::from_vec(unescape(mount_point))),
            fs_type: text(fs_type),
            source: OsString::from_vec(unescape(source)),
            super_options: text(super_options),
        })
    }
}

/// The mounts of a `mountinfo` text, in its order (the order they were mounted); lines that do
/// not parse are skipped.
pub fn parse_mountinfo(text: &[u8]) -> impl Iterator<Item = Mount> + '_ {
    text.split(|&b| b == b'\n').filter_map(Mount::parse)
}

/// Reads `/proc/self/mountinfo`: the mounts this process sees.
///
/// # Errors
/// Any error reading it (`NotFound` where `/proc` is not mounted).
pub fn read_mountinfo() -> std::io::Result<Vec<Mount>> {
    let text = std::fs::read("/proc/self/mountinfo")?;
    Ok(parse_mountinfo(&text).collect())
}

/// Undoes the kernel's octal escapes (`\NNN`, three octal digits) in a mountinfo field. A
/// backslash not followed by three octal digits is kept as it is.
pub fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        // At most \377: one byte.
        let code = field.get(i + 1..i + 4).filter(|d| {
            field[i] == b'\\'
                && (b'0'..=b'3').contains(&d[0])
                && d.iter().all(|c| (b'0'..=b'7').contains(c))
        });
        match code {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(field[i]);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Real lines: the root file system with an optional field, tmpfs mounts whose points hold a
    /// space, a backslash, a tab and a newline, a bind mount of a subdirectory, cgroups.
    const MOUNTINFO: &[u8] = b"\
22 1 252:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw,errors=remount-ro
40 22 0:35 / /tmp/a\\040b rw,nosuid,nodev - tmpfs tmpfs rw,size=1024k
41 22 0:36 / /tmp/back\\134slash rw - tmpfs tmpfs rw
42 22 0:37 / /tmp/tab\\011and\\012newline rw - tmpfs my\\040source rw
43 22 252:1 /srv/data\\040set /mnt/data rw,relatime shared:1 master:3 - ext4 /dev/vda1 rw
30 25 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
35 25 0:31 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,memory
";

    #[test]
    fn each_line_is_one_mount_with_its_paths_unescaped() {
        let mounts: Vec<Mount> = parse_mountinfo(MOUNTINFO).collect();
        // (root, mount point, fs type, source, super options)
        let expected: &[(&str, &str, &str, &str, &str)] = &[
            ("/", "/", "ext4", "/dev/vda1", "rw,errors=remount-ro"),
            ("/", "/tmp/a b", "tmpfs", "tmpfs", "rw,size=1024k"),
            ("/", "/tmp/back\\slash", "tmpfs", "tmpfs", "rw"),
            ("/", "/tmp/tab\tand\nnewline", "tmpfs", "my source", "rw"),
            ("/srv/data set", "/mnt/data", "ext4", "/dev/vda1", "rw"),
            (
                "/",
                "/sys/fs/cgroup",
                "cgroup2",
                "cgroup2",
                "rw,nsdelegate,memory_recursiveprot",
            ),
            (
                "/",
                "/sys/fs/cgroup/memory",
                "cgroup",
                "cgroup",
                "rw,memory",
            ),
        ];
        assert_eq!(mounts.len(), expected.len());
        for (mount, &(root, point, fs_type, source, options)) in mounts.iter().zip(expected) {
            assert_eq!(
                (
                    mount.root.to_str().unwrap(),
                    mount.mount_point.to_str().unwrap(),
                    mount.fs_type.as_str(),
                    mount.source.to_str().unwrap(),
                    mount.super_options.as_str()
                ),
                (root, point, fs_type, source, options)
            );
        }
    }

    #[test]
    fn what_is_not_a_mountinfo_line_is_skipped() {
        let cases: &[&[u8]] = &[
            b"",
            b"22 1 252:1 / /",
            // No separator before the file-system type.
            b"22 1 252:1 / / rw ext4 /dev/vda1 rw",
            // Nothing after the separator.
            b"22 1 252:1 / / rw -",
        ];
        for &line in cases {
            assert_eq!(
                Mount::parse(line),
                None,
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn only_three_octal_digits_make_an_escape() {
        // (field, unescaped)
        let cases: &[(&[u8], &[u8])] = &[
            (b"/a\\040b", b"/a b"),
            (b"\\134\\134", b"\\\\"),
            (b"/x\\011\\012", b"/x\t\n"),
            // Not escapes: too few digits, a digit that is not octal, a value above 255.
            (b"/a\\04", b"/a\\04"),
            (b"/a\\089", b"/a\\089"),
            (b"/a\\777", b"/a\\777"),
            (b"/trailing\\", b"/trailing\\"),
            // Bytes that are not UTF-8 pass through.
            (b"/\xff\\040", b"/\xff "),
        ];
        for &(field, want) in cases {
            assert_eq!(
                unescape(field),
                want,
                "{:?}",
                String::from_utf8_lossy(field)
            );
        }
    }

    #[test]
    fn this_process_sees_a_root_mount() {
        let mounts = read_mountinfo().unwrap();
        assert!(
            mounts
                .iter()
                .any(|m| m.mount_point == std::path::Path::new("/")),
            "{mounts:#?}"
        );
    }
}

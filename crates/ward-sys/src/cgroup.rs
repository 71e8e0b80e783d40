//! `/proc/<pid>/cgroup` and where each of a process's cgroups is in the file system, for cgroup v1
//! and v2. Not the reading or writing of a cgroup's own files (limits, counters), which belong to
//! the crate that needs them.

use std::path::{Component, Path, PathBuf};

use crate::mounts::Mount;

/// A cgroup hierarchy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hierarchy<'a> {
    /// The unified hierarchy of cgroup v2: the `0::` line of `/proc/<pid>/cgroup`, mounted with
    /// file-system type `cgroup2`.
    Unified,
    /// The cgroup v1 hierarchy that a controller (`memory`, `pids`) or a name (`name=systemd`)
    /// is attached to, mounted with file-system type `cgroup` and the controller among its
    /// options.
    V1(&'a str),
}

/// One line of `/proc/<pid>/cgroup`: `hierarchy-id:controllers:path`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Membership {
    /// The hierarchy's number; 0 for the unified (v2) hierarchy.
    pub hierarchy_id: u32,
    /// The controllers attached to the hierarchy (`cpu,cpuacct`, `name=systemd`); empty for v2.
    pub controllers: Vec<String>,
    /// The cgroup's path from the hierarchy's root, as seen from the reader's cgroup namespace
    /// (a path outside it starts with `/..`).
    pub path: PathBuf,
}

impl Membership {
    /// Whether this line is the process's cgroup in `hierarchy`.
    pub fn is_in(&self, hierarchy: Hierarchy<'_>) -> bool {
        match hierarchy {
            Hierarchy::Unified => self.hierarchy_id == 0 && self.controllers.is_empty(),
            Hierarchy::V1(controller) => {
                self.hierarchy_id != 0 && self.controllers.iter().any(|c| c == controller)
            }
        }
    }
}

/// The lines of a `/proc/<pid>/cgroup` text; lines that do not parse are skipped.
pub fn parse_cgroups(text: &str) -> impl Iterator<Item = Membership> + '_ {
    text.lines().filter_map(|line| {
        // The path is last and may itself hold ':'.
        let mut parts = line.splitn(3, ':');
        let hierarchy_id = parts.next()?.parse().ok()?;
        let controllers = parts.next()?;
        let path = parts.next()?;
        if !path.starts_with('/') {
            return None;
        }
        Some(Membership {
            hierarchy_id,
            controllers: controllers
                .split(',')
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect(),
            path: PathBuf::from(path),
        })
    })
}

/// A process's cgroup in one hierarchy, placed in the file system of the reader of `mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CgroupDir {
    /// The mount point of the hierarchy: the mount that shows the cgroup, or the first mount of
    /// the hierarchy when none does.
    pub mount_point: PathBuf,
    /// The cgroup's directory: the mount point joined with the cgroup's path *relative to the
    /// mount's root* (a bind mount or a cgroup namespace shows a subtree of the hierarchy).
    /// `None` when the process has no cgroup in the hierarchy or no mount shows it (its path is
    /// outside every mount's root, or leaves the reader's namespace with `..`).
    pub dir: Option<PathBuf>,
}

/// Where the cgroup in `hierarchy` of the process whose `/proc/<pid>/cgroup` text is `cgroups`
/// is, given the reader's mounts (`/proc/self/mountinfo`); `None` when the hierarchy is not
/// mounted. Of several mounts of the hierarchy, the first that shows the cgroup is taken.
pub fn cgroup_dir(cgroups: &str, mounts: &[Mount], hierarchy: Hierarchy<'_>) -> Option<CgroupDir> {
    let of_hierarchy = |m: &&Mount| match hierarchy {
        Hierarchy::Unified => m.fs_type == "cgroup2",
        Hierarchy::V1(controller) => {
            m.fs_type == "cgroup" && m.super_options.split(',').any(|o| o == controller)
        }
    };
    let first = mounts.iter().find(of_hierarchy)?;
    let path = parse_cgroups(cgroups)
        .find(|m| m.is_in(hierarchy))
        .map(|m| m.path);
    let placed = path.as_deref().and_then(|path| {
        mounts
            .iter()
            .filter(of_hierarchy)
            .find_map(|m| Some((m, below(path, &m.root)?)))
    });
    Some(match placed {
        Some((mount, relative)) => CgroupDir {
            mount_point: mount.mount_point.clone(),
            dir: Some(mount.mount_point.join(relative)),
        },
        None => CgroupDir {
            mount_point: first.mount_point.clone(),
            dir: None,
        },
    })
}

/// `path` relative to `root`, if it is `root` or below it (whole components: `/a/bc` is not
/// below `/a/b`) and does not climb out with `..`.
fn below<'p>(path: &'p Path, root: &Path) -> Option<&'p Path> {
    let relative = path.strip_prefix(root).ok()?;
    relative
        .components()
        .all(|c| matches!(c, Component::Normal(_)))
        .then_some(relative)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mounts::parse_mountinfo;

    fn mounts(text: &str) -> Vec<Mount> {
        parse_mountinfo(text.as_bytes()).collect()
    }

    /// A hybrid host (systemd's default before v2 only): v1 controllers beside a v2 hierarchy
    /// that holds none.
    const HYBRID: &str = "\
25 22 0:22 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
30 25 0:26 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
31 25 0:27 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd
35 25 0:31 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,memory
36 25 0:32 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
37 25 0:33 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
";

    /// A v2-only host.
    const UNIFIED: &str = "30 25 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n";

    #[test]
    fn cgroup_lines_parse_for_v1_and_v2() {
        let text = "12:memory:/user.slice/a:b\n4:cpu,cpuacct:/\n1:name=systemd:/init.scope\n\
            0::/user.slice/user-1000.slice/session-2.scope\nbroken\n5:pids:relative\n";
        let lines: Vec<(u32, Vec<String>, PathBuf)> = parse_cgroups(text)
            .map(|m| (m.hierarchy_id, m.controllers, m.path))
            .collect();
        let s = |v: &[&str]| v.iter().map(|c| (*c).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            lines,
            [
                (12, s(&["memory"]), PathBuf::from("/user.slice/a:b")),
                (4, s(&["cpu", "cpuacct"]), PathBuf::from("/")),
                (1, s(&["name=systemd"]), PathBuf::from("/init.scope")),
                (
                    0,
                    s(&[]),
                    PathBuf::from("/user.slice/user-1000.slice/session-2.scope")
                ),
            ]
        );
    }

    #[test]
    fn each_hierarchy_is_found_under_its_mount() {
        let cgroups = "5:pids:/user.slice\n4:memory:/process_api/abc\n3:cpu,cpuacct:/cg\n\
            1:name=systemd:/init.scope\n0::/system.slice/ward.service\n";
        // (mountinfo, hierarchy, mount point, directory)
        let cases: &[(&str, Hierarchy<'_>, &str, &str)] = &[
            (
                HYBRID,
                Hierarchy::V1("memory"),
                "/sys/fs/cgroup/memory",
                "/sys/fs/cgroup/memory/process_api/abc",
            ),
            (
                HYBRID,
                Hierarchy::V1("cpuacct"),
                "/sys/fs/cgroup/cpu,cpuacct",
                "/sys/fs/cgroup/cpu,cpuacct/cg",
            ),
            (
                HYBRID,
                Hierarchy::V1("name=systemd"),
                "/sys/fs/cgroup/systemd",
                "/sys/fs/cgroup/systemd/init.scope",
            ),
            (
                HYBRID,
                Hierarchy::Unified,
                "/sys/fs/cgroup/unified",
                "/sys/fs/cgroup/unified/system.slice/ward.service",
            ),
            (
                UNIFIED,
                Hierarchy::Unified,
                "/sys/fs/cgroup",
                "/sys/fs/cgroup/system.slice/ward.service",
            ),
        ];
        for &(mountinfo, hierarchy, point, dir) in cases {
            let found = cgroup_dir(cgroups, &mounts(mountinfo), hierarchy);
            assert_eq!(
                found,
                Some(CgroupDir {
                    mount_point: PathBuf::from(point),
                    dir: Some(PathBuf::from(dir)),
                }),
                "{hierarchy:?}"
            );
        }
        assert_eq!(
            cgroup_dir(cgroups, &mounts(UNIFIED), Hierarchy::V1("memory")),
            None
        );
        assert_eq!(
            cgroup_dir(cgroups, &mounts(HYBRID), Hierarchy::V1("hugetlb")),
            None
        );
    }

    #[test]
    fn a_mount_root_is_stripped_whole_components_only() {
        // (mount root, cgroup path, directory)
        let cases: &[(&str, &str, Option<&str>)] = &[
            // A cgroup namespace, or a container's view without one (Docker on cgroup v1).
            (
                "/kubepods/pod1",
                "/kubepods/pod1/ctr",
                Some("/sys/fs/cgroup/ctr"),
            ),
            ("/docker/abc", "/docker/abc", Some("/sys/fs/cgroup")),
            ("/", "/", Some("/sys/fs/cgroup")),
            // A sibling whose name only starts like the root is not below it.
            ("/kubepods/pod1", "/kubepods/pod10/ctr", None),
            ("/kubepods/pod1", "/other", None),
            // A process outside the reader's cgroup namespace.
            ("/", "/../../system.slice/x", None),
            // The root escapes a space; the cgroup file does not.
            ("/my\\040pod", "/my pod/ctr", Some("/sys/fs/cgroup/ctr")),
        ];
        for &(root, path, dir) in cases {
            let mountinfo = format!("30 25 0:26 {root} /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n");
            let cgroups = format!("0::{path}\n");
            let found = cgroup_dir(&cgroups, &mounts(&mountinfo), Hierarchy::Unified).unwrap();
            assert_eq!(found.dir, dir.map(PathBuf::from), "{root} {path}");
            assert_eq!(found.mount_point, Path::new("/sys/fs/cgroup"));
        }
    }

    #[test]
    fn of_several_mounts_the_first_that_shows_the_cgroup_is_taken() {
        let mountinfo = "\
35 25 0:31 /other /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
36 25 0:31 / /mnt/memory rw - cgroup cgroup rw,memory
37 25 0:31 / /mnt/again rw - cgroup cgroup rw,memory
";
        let found = cgroup_dir(
            "4:memory:/job\n",
            &mounts(mountinfo),
            Hierarchy::V1("memory"),
        );
        assert_eq!(
            found,
            Some(CgroupDir {
                mount_point: PathBuf::from("/mnt/memory"),
                dir: Some(PathBuf::from("/mnt/memory/job")),
            })
        );
        // Without a membership in the hierarchy, the first mount is still named.
        let found = cgroup_dir("0::/\n", &mounts(mountinfo), Hierarchy::V1("memory"));
        assert_eq!(
            found,
            Some(CgroupDir {
                mount_point: PathBuf::from("/sys/fs/cgroup/memory"),
                dir: None,
            })
        );
    }

    #[test]
    fn this_process_is_in_a_cgroup_that_exists() {
        let cgroups = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let mounts = crate::mounts::read_mountinfo().unwrap();
        for hierarchy in [Hierarchy::Unified, Hierarchy::V1("memory")] {
            if let Some(CgroupDir { dir: Some(dir), .. }) = cgroup_dir(&cgroups, &mounts, hierarchy)
            {
                assert!(dir.is_dir(), "{hierarchy:?}: {}", dir.display());
            }
        }
    }
}

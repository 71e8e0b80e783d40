//! Memory pressure, seed 000's second remedy: a watcher that died of memory exhaustion should
//! have stopped taking work instead. Below `[jobs] min_available_mb` of available memory the
//! server starts no new job (the pool is held: running jobs finish, the rest wait, owed in the
//! manifest) and starts them again once memory is back above the floor plus a margin, so that it
//! does not flap at the threshold.
//!
//! Available memory is the least of `MemAvailable` (`/proc/meminfo`) and, for the server's own
//! memory cgroup and each cgroup above it that has a limit, the limit less the usage: a daemon in
//! a container or a systemd slice runs short long before the machine does.

use std::path::{Path, PathBuf};

use ward_sys::cgroup::{Hierarchy, cgroup_dir};

const MIB: u64 = 1024 * 1024;

/// Memory available now, and where that figure comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Available {
    /// Bytes.
    pub bytes: u64,
    /// `MemAvailable`, or the cgroup whose limit is closest.
    pub source: String,
}

/// The pause state: when to pause and resume, and why it is paused.
#[derive(Debug)]
pub(crate) struct Pressure {
    floor: u64,
    resume_at: u64,
    paused: Option<String>,
}

/// What an update changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Turn {
    /// Memory fell below the floor: start nothing (the reason).
    Pause(String),
    /// Memory is back above the floor and its margin: start jobs again (the reason).
    Resume(String),
}

impl Pressure {
    /// Pauses below `floor_mb`; resumes at `floor_mb` plus a quarter of it (at least 16 MiB).
    pub(crate) fn new(floor_mb: u64) -> Pressure {
        let floor = floor_mb.saturating_mul(MIB);
        Pressure {
            floor,
            resume_at: floor.saturating_add((floor / 4).max(16 * MIB)),
            paused: None,
        }
    }

    /// The floor, in MiB.
    pub(crate) fn floor_mb(&self) -> u64 {
        self.floor / MIB
    }

    /// Why jobs are paused, while they are.
    pub(crate) fn paused(&self) -> Option<&str> {
        self.paused.as_deref()
    }

    /// Takes a reading of available memory; `None` (nothing could be read) changes nothing.
    pub(crate) fn update(&mut self, available: Option<Available>) -> Option<Turn> {
        let available = available?;
        let mb = |bytes: u64| bytes / MIB;
        match &self.paused {
            None if available.bytes < self.floor => {
                let reason = format!(
                    "available memory {} MiB ({}) is below min_available_mb {}",
                    mb(available.bytes),
                    available.source,
                    mb(self.floor)
                );
                self.paused = Some(reason.clone());
                Some(Turn::Pause(reason))
            }
            Some(_) if available.bytes >= self.resume_at => {
                self.paused = None;
                Some(Turn::Resume(format!(
                    "available memory {} MiB ({}) is back above {} MiB",
                    mb(available.bytes),
                    available.source,
                    mb(self.resume_at)
                )))
            }
            _ => None,
        }
    }
}

/// Memory available to this process now; `None` if not even `/proc/meminfo` can be read.
pub(crate) fn probe() -> Option<Available> {
    let machine = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| mem_available(&text))
        .map(|bytes| Available {
            bytes,
            source: "MemAvailable".into(),
        });
    let cgroup = own_cgroup_headroom();
    match (machine, cgroup) {
        (Some(m), Some(c)) => Some(if c.bytes < m.bytes { c } else { m }),
        (m, c) => m.or(c),
    }
}

/// `MemAvailable` of a `/proc/meminfo` text, in bytes.
fn mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb.saturating_mul(1024))
}

/// The least headroom (limit less usage) of this process's memory cgroup and those above it,
/// v2 or v1; `None` when none has a limit.
fn own_cgroup_headroom() -> Option<Available> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let mounts = ward_sys::mounts::read_mountinfo().ok()?;
    let mut least: Option<Available> = None;
    for (hierarchy, limit, usage) in [
        (Hierarchy::Unified, "memory.max", "memory.current"),
        (
            Hierarchy::V1("memory"),
            "memory.limit_in_bytes",
            "memory.usage_in_bytes",
        ),
    ] {
        let Some(place) = cgroup_dir(&own, &mounts, hierarchy) else {
            continue;
        };
        let Some(mut dir) = place.dir else { continue };
        loop {
            if let Some(headroom) = headroom(&dir, limit, usage)
                && least.as_ref().is_none_or(|l| headroom < l.bytes)
            {
                least = Some(Available {
                    bytes: headroom,
                    source: format!("cgroup {}", dir.display()),
                });
            }
            if dir == place.mount_point || !dir.pop() || !dir.starts_with(&place.mount_point) {
                break;
            }
        }
    }
    least
}

/// `limit` less `usage` in the cgroup `dir`, when it has a limit.
fn headroom(dir: &Path, limit: &str, usage: &str) -> Option<u64> {
    let read = |name: &str| -> Option<u64> {
        let path: PathBuf = dir.join(name);
        std::fs::read_to_string(path).ok()?.trim().parse().ok()
    };
    // v2 says "max"; v1 says a number near 2^63 (rounded to the page size): no limit.
    let limit = read(limit).filter(|&l| l < 1 << 60)?;
    Some(limit.saturating_sub(read(usage)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mib(n: u64, source: &str) -> Option<Available> {
        Some(Available {
            bytes: n * MIB,
            source: source.into(),
        })
    }

    #[test]
    fn it_pauses_below_the_floor_and_resumes_only_past_its_margin() {
        let mut p = Pressure::new(100);
        assert_eq!(p.update(mib(150, "MemAvailable")), None);
        assert_eq!(p.update(None), None, "no reading changes nothing");
        let Some(Turn::Pause(why)) = p.update(mib(90, "cgroup /sys/fs/cgroup/memory/x")) else {
            panic!("not paused below the floor");
        };
        assert_eq!(
            why,
            "available memory 90 MiB (cgroup /sys/fs/cgroup/memory/x) is below min_available_mb 100"
        );
        assert_eq!(p.paused(), Some(why.as_str()));
        // Above the floor but within the margin (100 + 25): still paused, no flapping.
        assert_eq!(p.update(mib(110, "MemAvailable")), None);
        assert_eq!(p.update(mib(80, "MemAvailable")), None, "paused once");
        assert!(matches!(
            p.update(mib(125, "MemAvailable")),
            Some(Turn::Resume(_))
        ));
        assert_eq!(p.paused(), None);
        // A small floor still has a margin of 16 MiB.
        let mut small = Pressure::new(8);
        assert!(matches!(small.update(mib(7, "m")), Some(Turn::Pause(_))));
        assert_eq!(small.update(mib(20, "m")), None);
        assert!(matches!(small.update(mib(24, "m")), Some(Turn::Resume(_))));
    }

    #[test]
    fn mem_available_is_read_from_meminfo() {
        let text = "MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   2048 kB\n";
        assert_eq!(mem_available(text), Some(2048 * 1024));
        assert_eq!(mem_available("MemTotal: 1 kB\n"), None);
        assert!(
            probe().is_some_and(|a| a.bytes > 0),
            "this machine has /proc/meminfo"
        );
    }
}

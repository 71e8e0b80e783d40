//! The facts of Linux that several ward crates read, each parsed once and strictly: a process's
//! `/proc/<pid>/stat` and `status`, the mount table, cgroup membership, signal names, and UTC
//! timestamps.
//!
//! ward's libraries must not depend on each other where the layering forbids it
//! (`ward-supervisor` and `ward-crashdiag` are independent), yet each needs to know whether a
//! process is dead, where a memory cgroup is, what a signal is called. Copies of those few
//! parsers drifted apart (one counted state `X` as dead, one did not; one stripped a mount's root,
//! none undid mountinfo's escapes); this crate is the one copy they all call.
//!
//! ```
//! use ward_sys::{Hierarchy, ProcStat, UtcTime, cgroup_dir, parse_mountinfo, signal};
//!
//! // The command name may hold ") ": fields resume after the last ')'.
//! let stat = ProcStat::parse(b"7 (a) Z (b) X 1 0 0 0 -1 0 0 0 0 0 4 5 0 0 20 0 1 0 600 0 0\n")
//!     .unwrap();
//! assert!(stat.is_dead() && !stat.is_zombie());
//! assert_eq!((stat.ppid, stat.start_ticks), (1, 600));
//!
//! // Mount paths are unescaped, and a mount's root is stripped from a cgroup's path.
//! let mountinfo = b"30 25 0:26 /pod\\0401 /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
//! let mounts: Vec<_> = parse_mountinfo(mountinfo).collect();
//! let place = cgroup_dir("0::/pod 1/job\n", &mounts, Hierarchy::Unified).unwrap();
//! assert_eq!(place.dir.unwrap(), std::path::Path::new("/sys/fs/cgroup/job"));
//!
//! assert_eq!(signal::name(libc::SIGCHLD), Some("SIGCHLD"));
//! assert_eq!(UtcTime::from_unix_ms(951_868_799_999).to_string(), "2000-02-29T23:59:59.999Z");
//! ```
//!
//! # Crate features
//! None. The parsers are plain text and build anywhere; the readers of `/proc` need Linux and
//! report `NotFound` elsewhere.
//!
//! # Theory of operation
//! - **`/proc/<pid>/stat`** ([`ProcStat`]) is read as bytes, not UTF-8: the command name is any
//!   15 bytes a process chose, so it may hold `)`, spaces, newlines or invalid UTF-8. The fields
//!   resume after the *last* `)`. A process is dead once it is a zombie (`Z`) or being removed
//!   (`X`, `x` on old kernels); only a zombie is still owed a `wait`.
//! - **mountinfo** ([`Mount`]) escapes space, tab, newline and backslash in its paths as
//!   `\040`, `\011`, `\012`, `\134`; they are undone before a path is compared or joined. Optional
//!   fields are skipped up to the lone `-`.
//! - **cgroups** ([`cgroup_dir`]): `/proc/<pid>/cgroup` gives a path from the hierarchy's root,
//!   but a mount may show only a subtree (its root, field 4 of mountinfo: a bind mount, a cgroup
//!   namespace, a container): the cgroup's directory is the mount point joined with the path
//!   *below that root*, compared by whole components. A path no mount shows is said as such,
//!   not guessed.
//! - **Signal names** ([`signal::name`]) are one `match` and a static table: no allocation, no
//!   lock, so a fatal-signal handler may call it.
//! - **Time** ([`UtcTime`]): civil date from days since the epoch (Howard Hinnant's algorithm);
//!   its `Display` is RFC 3339 UTC with milliseconds, the form of ward's log lines.
//!
//! # What it deliberately does not do
//! - No policy: whether a cgroup without `memory.events` counts, where new cgroups go, what to do
//!   with a dead process are the callers' decisions.
//! - No caching and no watching: each reader reads the file when called.
//! - No other `/proc` files than those ward reads, and only the fields it uses.
//! - No time zones, no parsing of dates, no clock but the wall clock's reading.
//! - No dependency but `libc`, so that any ward crate, and the dev tooling, may use it.
//!
//! # Known problems
//! - Real-time signals are named from the C library's `SIGRTMIN` of *this* process; a child
//!   built on another C library (musl's starts one later than glibc's) counts them from its own.
//! - A cgroup whose name holds a newline cannot be told apart in `/proc/<pid>/cgroup`, which
//!   does not escape it.

#![warn(missing_docs)]

pub mod cgroup;
pub mod mounts;
pub mod proc_stat;
pub mod proc_status;
pub mod signal;
pub mod time;

pub use cgroup::{CgroupDir, Hierarchy, Membership, cgroup_dir, parse_cgroups};
pub use mounts::{Mount, parse_mountinfo, read_mountinfo};
pub use proc_stat::{ProcStat, is_alive, processes};
pub use proc_status::ProcStatus;
pub use time::UtcTime;

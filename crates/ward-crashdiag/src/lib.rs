//! Crash capture inside every ward process, and the post-mortem that explains each death.
//!
//! `ward-crashdiag` has two halves. Inside a process, [`install`] sets up a chained panic hook, an
//! async-signal-safe fatal-signal handler in the spirit of Python's faulthandler, and a heartbeat
//! file. After a death, its parent fills in an [`Evidence`] (wait status, rusage, whether it asked
//! for the stop, OOM counters before and after) and [`report_death`] weighs it together with what
//! the dead process left on disk (crash record, heartbeat, log tail, kernel log) and writes a
//! [`CrashReport`] naming the [`Cause`]: graceful stop, exit code, panic, native crash, stack
//! overflow, OOM kill, allocation failure, outside signal, hang, or vanished, each with the
//! evidence it rests on and a [`Confidence`].
//!
//! ```
//! use std::time::Duration;
//! use ward_crashdiag::{collect, Cause, Confidence, Evidence, WaitOutcome};
//!
//! let crash_dir = tempfile::tempdir()?;
//! let mut evidence = Evidence::new(4242, "worker", crash_dir.path());
//! evidence.wait_status = Some(WaitOutcome::Exited { code: 3 });
//! evidence.run_time = Some(Duration::from_secs(5));
//!
//! let report = collect(&evidence);
//! assert_eq!(report.verdict.cause, Cause::Exited { code: 3 });
//! assert_eq!(report.verdict.confidence, Confidence::High);
//! assert!(report.to_text().contains("exited with code 3"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Crate features
//! - `symbolize` (default): names a native crash's frames (function, `file:line`, inlined
//!   calls) from the debug info of the executable and its shared libraries as the report is
//!   made ([`symbolize`]), with the `addr2line` and `object` crates. Without it the report
//!   keeps raw addresses, each with its object and offset, and an `addr2line` command line to
//!   run later.
//! - `supervisor`: `Evidence::from_exit`, the evidence of a `ward_supervisor` child's death
//!   in one call (and `WaitOutcome: From<ward_supervisor::Termination>`). ward-supervisor does
//!   not depend on this crate; each is usable without the other.
//!
//! Linux only: the signal handler, `/proc` and cgroup readers have no portable equivalent; on
//! other systems [`install`] returns [`Error::Unsupported`].
//!
//! # Theory of operation
//! - **Crash record.** [`install`] opens `<crash dir>/<pid>.record` (see [`record_path`]) and
//!   keeps the descriptor for the life of the process. The panic hook rewrites it with the latest
//!   panic; the signal handler appends to it with `write(2)` only. The collector parses it
//!   ([`CrashRecord`]) and deletes it once a report holds its content.
//! - **Signal handler.** Runs on an alternate stack (64 KiB for the installing thread; other
//!   threads use the one the Rust runtime gives them), formats with no allocation and no locks,
//!   writes signal, fault address, the interrupted instruction's address, pid, thread id, raw
//!   return addresses and the objects loaded at [`install`] (executable and shared libraries:
//!   load bias, build-id, file identity; found then with `dl_iterate_phdr`) to the record, and
//!   the addresses to stderr, chains to the previous handler (so Rust's own "has overflowed its
//!   stack" report still appears), then restores the default action and re-raises, so the
//!   parent sees the true signal and a core is dumped where enabled.
//! - **Symbolization.** Addresses are named in the parent, never in the dying process: the
//!   collector finds each address's object, checks that the object's file is still the one
//!   the process had loaded (build-id, else inode, size and modification time), reads its DWARF
//!   (or, for a library, the split-off file under `/usr/lib/debug/.build-id/`) and names the
//!   function, file and line of each frame and of the calls inlined there; without debug info,
//!   the symbol table names the function alone. The interrupted instruction is looked up as it
//!   is, return addresses one byte back (inside their call). The file is read, not mapped, at
//!   most 256 MiB of debug sections from one object; naming stops after ten seconds.
//! - **Heartbeat.** A thread owned by the [`CaptureGuard`] rewrites a small fixed-size JSON file
//!   ([`Heartbeat`]) every interval with wall and monotonic time, pid and sequence, and logs a
//!   heartbeat line at a slower interval. One wakeup per interval; `examples/bench.rs` measures it.
//! - **Verdict.** Kernel and cgroup evidence outrank exit codes: SIGKILL alone never means OOM
//!   (as in Kubernetes), and an OOM kill is named only from a cgroup `oom_kill` rise or a kernel
//!   log line about the pid; a system-wide `/proc/vmstat` rise alone only lowers the confidence
//!   that the kill came from outside.
//!
//! # Known problems
//! - glibc's `backtrace()` is not on the async-signal-safe list: its first call loads libgcc,
//!   which [`install`] does ahead of time. It still takes the dynamic loader's lock while
//!   unwinding, so a crash while another thread is inside `dlopen` could hang; the parent's
//!   watchdog then reports a hang rather than a native crash.
//! - Frames are named from the files on disk when the report is made. An object replaced since
//!   (another build-id, or without one another inode, size or modification time) keeps its
//!   frames raw, with a note; the report then keeps an `addr2line -e <exe> <offsets>` line to
//!   run against the right executable. A record from before objects were recorded is named
//!   without that check, and says so.
//! - Libraries loaded with `dlopen` after [`install`] are not in the record: their frames stay
//!   raw. So do frames in an object whose debug info is compressed (`SHF_COMPRESSED`, as
//!   Debian's `-dbg` packages ship it) or over 256 MiB: those get function names from the
//!   symbol table only, without lines. Split DWARF (`.dwo`, `.dwp`) is not read.
//! - The handler reads the interrupted instruction's address only on x86-64 and AArch64 with
//!   glibc; elsewhere the crash site's frame is looked up as a return address (one byte back),
//!   which can name the line before it.
//! - Naming a crash's frames holds each object's debug sections in the collector's memory for
//!   the time it takes (as much as their size, at most 256 MiB an object). The limit is on the
//!   sections a well-formed file names: the headers of a corrupt file are read as they claim,
//!   up to the file's size.
//! - After the [`CaptureGuard`] is dropped, an empty crash record is deleted but its descriptor
//!   stays open: a crash during the rest of the shutdown reaches stderr only.
//! - Without a run time or a heartbeat, kernel log lines are matched by pid alone, so a line
//!   about an earlier process with the same pid could be taken for this one's.
//! - Threads other than the one that called [`install`] run the handler on the Rust runtime's
//!   alternate stack (a few KiB); the handler keeps its own frame small, and a backtrace of at
//!   most 64 frames, for that reason.

#![warn(missing_docs)]

mod capture;
mod diagnose;
mod error;
mod evidence;
mod heartbeat;
mod hook;
mod objects;
mod record;
mod report;
mod signal;
mod symbolize;
mod time;
mod verdict;

pub use capture::{
    CRASH_DIR_ENV, CaptureConfig, CaptureGuard, HeartbeatConfig, install, record_path,
};
pub use diagnose::{PostMortem, PostMortemInput, pidfile_is_stale, post_mortem};
pub use error::{Error, Result};
pub use evidence::{
    Evidence, OomCounters, WaitOutcome, kernel_lines_about, memory_cgroup_of, read_cgroup_oom_kill,
    read_vmstat_oom_kill,
};
pub use heartbeat::{Clock, Heartbeat, HeartbeatState, SystemClock, boot_id, read_heartbeat};
pub use hook::{HookOutcome, OnCrashHook};
pub use record::{CrashRecord, MappedObject, PanicEntry, RecordEntry, SignalEntry};
pub use report::{
    CrashReport, ReportOptions, ReportSummary, WrittenReport, collect, list_reports, read_report,
    report_death, write_death, write_report,
};
pub use symbolize::{NativeFrame, SourceFrame, Symbolization, symbolize};
pub use verdict::{Cause, Confidence, Verdict};

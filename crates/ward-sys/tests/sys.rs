//! ward-sys against the real system: a process with the strangest name it may have, and signal
//! names that must not allocate.
#![cfg(target_os = "linux")]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use ward_sys::{ProcStat, signal};

/// The system allocator, counting the allocations of a thread that asks it to.
struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every call is passed on to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCATIONS.with(|n| n.set(n.get() + 1));
        }
        // SAFETY: the caller's guarantees for `layout` are the system allocator's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[test]
fn signal_names_never_allocate() {
    COUNTING.with(|c| c.set(true));
    let mut named = 0;
    for number in -1..=libc::SIGRTMAX() + 1 {
        named += usize::from(signal::name(number).is_some());
    }
    COUNTING.with(|c| c.set(false));
    assert_eq!(ALLOCATIONS.with(Cell::get), 0);
    assert!(named > 31, "{named}");
}

fn poll(within: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while !condition() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

#[test]
fn a_process_named_with_a_parenthesis_and_bad_utf8_is_seen_until_reaped() {
    // A process's name is the last component of the path it was executed by: a symlink to
    // `sleep` whose name holds ") ", a space and a byte that is not UTF-8.
    let dir = tempfile::tempdir().unwrap();
    let odd = std::ffi::OsStr::from_bytes(b"a) R 1 \xff");
    let link = dir.path().join(odd);
    let sleep = ["/bin/sleep", "/usr/bin/sleep"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("a sleep binary");
    std::os::unix::fs::symlink(sleep, &link).unwrap();
    // argv[0] stays `sleep`, for a multi-call binary that looks at it.
    let mut child = Command::new(&link).arg0("sleep").arg("30").spawn().unwrap();
    let pid = child.id();
    let comm = std::fs::read(format!("/proc/{pid}/comm")).unwrap();
    assert_eq!(comm, b"a) R 1 \xff\n", "the name this test is about");

    let stat = ProcStat::read(pid).unwrap();
    assert_eq!(stat.ppid, std::process::id());
    assert!(!stat.is_dead(), "{stat:?}");
    assert!(ward_sys::is_alive(pid));

    child.kill().unwrap();
    assert!(
        poll(Duration::from_secs(10), || ProcStat::read(pid)
            .is_ok_and(|s| s.is_zombie())),
        "never a zombie"
    );
    assert!(!ward_sys::is_alive(pid));
    child.wait().unwrap();
    assert_eq!(
        ProcStat::read(pid).unwrap_err().kind(),
        std::io::ErrorKind::NotFound
    );
}

//! The child side: install crash capture, then die in the way the mode names.

use std::hint::black_box;
use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::Duration;

use ward_crashdiag::{CaptureConfig, install};

use super::{ALLOCATOR_STALLED, BEAT, DIR_VAR, STALL_NEXT_ALLOCATION, heartbeat_path};

/// Runs the child in `mode`; never returns normally for a mode that dies.
pub fn run(mode: &str) {
    let dir = PathBuf::from(std::env::var_os(DIR_VAR).expect("child needs its directory"));
    // The deaths below would otherwise drop core files into the crate directory on machines
    // with cores enabled.
    let no_core = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `no_core` is a valid rlimit.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_CORE, &no_core) }, 0);
    let guard = install(CaptureConfig::new("worker", &dir).heartbeat(
        heartbeat_path(&dir),
        BEAT,
        Some(Duration::from_secs(1)),
    ))
    .expect("installing crash capture");
    match mode {
        "panic" => panic!("deliberate panic from the test child"),
        "segfault" => segfault(),
        "null_field" => {
            black_box(read_field_through_null());
        }
        "segfault_in_thread" => {
            // A thread std spawned: the handler runs on the runtime's small alternate stack.
            let crasher = thread::Builder::new()
                .name("crasher".into())
                .spawn(segfault)
                .expect("spawning");
            // Never returns: the segfault kills the process.
            let _ = crasher.join();
            idle();
        }
        "abort" => std::process::abort(),
        "panic_in_thread" => {
            // A panic that ends only its thread, as a caught job's does: the process lives on.
            let panicked = thread::Builder::new()
                .name("panicker".into())
                .spawn(|| panic!("deliberate panic in a thread"))
                .expect("spawning")
                .join();
            assert!(panicked.is_err());
            std::process::exit(3);
        }
        "stack_overflow" => {
            black_box(recurse(black_box(1)));
        }
        "rlimit_as" => {
            // The heartbeat thread must be running (its stacks mapped) before the cap, or its
            // own start-up is what fails.
            let path = heartbeat_path(&dir);
            super::poll(Duration::from_secs(20), "the second beat", || {
                ward_crashdiag::read_heartbeat(&path).is_ok_and(|b| b.seq >= 2)
            });
            exhaust_address_space();
        }
        "idle" => idle(),
        "hang" => {
            // Let the heartbeat beat a few times, then freeze the whole process, as a process
            // stuck in the kernel would be.
            thread::sleep(BEAT * 3);
            // SAFETY: raise has no memory preconditions.
            unsafe { libc::raise(libc::SIGSTOP) };
            idle();
        }
        "oom" => {
            wait_for_go();
            touch_memory(1 << 30);
            // Still alive past the cgroup limit: the test fails on this exit code.
            std::process::exit(3);
        }
        "crash_in_allocator" => crash_while_allocator_is_held(),
        "graceful" => {
            drop(guard);
            std::process::exit(0);
        }
        other => panic!("unknown child mode {other}"),
    }
    drop(guard);
}

fn idle() -> ! {
    loop {
        thread::sleep(Duration::from_secs(1));
    }
}

fn wait_for_go() {
    let mut byte = [0u8; 1];
    std::io::stdin()
        .read_exact(&mut byte)
        .expect("reading the go byte");
}

#[inline(never)]
fn segfault() {
    // SAFETY: not safe at all: a deliberate invalid write, below the lowest address Linux maps.
    unsafe { std::ptr::write_volatile(black_box(0x1000 as *mut u8), 1) };
}

/// Reads the second field of a struct through a null pointer, as code using an object that is
/// not there does: the fault is at the field's offset, 0x8. (A read of address 0 itself is not
/// a segfault in a debug build: its null-pointer check panics first.)
#[inline(never)]
fn read_field_through_null() -> u64 {
    let pair: *const [u64; 2] = black_box(std::ptr::null());
    let second = pair.cast::<u64>().wrapping_add(1);
    // SAFETY: not safe at all: a deliberate read through a null struct pointer.
    unsafe { *black_box(second) } // the null read: the test looks for this line
}

#[inline(never)]
fn recurse(n: u64) -> u64 {
    let frame = black_box([n; 64]);
    if n == u64::MAX {
        return 0;
    }
    recurse(n + 1).wrapping_add(frame[0])
}

/// Caps the address space a little above what is mapped now, then asks for a gigabyte.
fn exhaust_address_space() {
    let vm_kib = ward_sys::ProcStatus::read(std::process::id())
        .expect("reading status")
        .kib("VmSize")
        .expect("VmSize");
    let limit = (vm_kib + 64 * 1024) * 1024;
    let rlim = libc::rlimit {
        rlim_cur: limit,
        rlim_max: limit,
    };
    // SAFETY: `rlim` is a valid rlimit.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_AS, &rlim) }, 0);
    let v = vec![1u8; 1 << 30];
    black_box(v);
}

/// Allocates and writes `bytes` in 1 MiB pieces, so every page is really charged.
fn touch_memory(bytes: usize) {
    let mut kept: Vec<Vec<u8>> = Vec::new();
    for _ in 0..bytes / (1 << 20) {
        kept.push(vec![0x5a; 1 << 20]);
        black_box(&kept);
    }
}

/// Two threads churn the allocator, a third takes its lock and never lets go; then this thread
/// segfaults. A handler that allocated would wait for the lock forever.
fn crash_while_allocator_is_held() {
    // The handles are kept, not dropped: from the stall on, this thread must not touch the heap.
    let churn: Vec<_> = (0..2)
        .map(|_| {
            thread::spawn(|| {
                loop {
                    let v: Vec<u64> = (0..black_box(64)).collect();
                    black_box(v);
                }
            })
        })
        .collect();
    let staller = thread::spawn(|| {
        STALL_NEXT_ALLOCATION.store(true, Ordering::SeqCst);
        black_box(Box::new(1u64));
    });
    while !ALLOCATOR_STALLED.load(Ordering::SeqCst) {
        std::hint::spin_loop();
    }
    segfault();
    black_box((churn, staller));
}

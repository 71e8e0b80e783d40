//! Test support: starting this test binary as a child that dies on purpose, reaping it with
//! `wait4`, and an allocator whose lock a child can hold forever.

pub mod child;

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use ward_crashdiag::{Evidence, WaitOutcome};
use ward_supervisor::{ChildSpec, Exit, OutputTail};

/// Selects what the child does; unset in the parent.
pub const MODE_VAR: &str = "WARD_CRASHDIAG_TEST_CHILD";
/// The child's crash directory.
pub const DIR_VAR: &str = "WARD_CRASHDIAG_TEST_DIR";
/// The heartbeat interval children use: short, so that the tests stay quick.
pub const BEAT: Duration = Duration::from_millis(100);

/// The allocator of this whole test binary: the system allocator behind one lock, so that a
/// child can hold "the allocator" forever and prove the signal handler never needs it.
pub struct LockingAllocator;

static ALLOC_LOCK: Mutex<()> = Mutex::new(());
/// The next allocation takes the lock and never gives it back.
pub static STALL_NEXT_ALLOCATION: AtomicBool = AtomicBool::new(false);
/// Set once an allocation is stuck holding the lock.
pub static ALLOCATOR_STALLED: AtomicBool = AtomicBool::new(false);

// SAFETY: every call is forwarded to `System` unchanged; the lock only serializes them.
unsafe impl GlobalAlloc for LockingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let guard = ALLOC_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        if STALL_NEXT_ALLOCATION.swap(false, Ordering::SeqCst) {
            ALLOCATOR_STALLED.store(true, Ordering::SeqCst);
            loop {
                // SAFETY: pause only waits for a signal.
                unsafe { libc::pause() };
            }
        }
        // SAFETY: forwarded with the caller's layout.
        let p = unsafe { System.alloc(layout) };
        drop(guard);
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let _guard = ALLOC_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: forwarded with the caller's pointer and layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// One child process of this test binary. Dropping it kills and reaps it if it still runs.
pub struct Child {
    pub pid: u32,
    pub dir: PathBuf,
    started: Instant,
    stdin: Option<std::process::ChildStdin>,
    stderr: Option<JoinHandle<String>>,
    reaped: bool,
}

/// How a child ended.
pub struct Death {
    pub status: WaitOutcome,
    pub max_rss_kib: u64,
    pub run_time: Duration,
    pub stderr: String,
}

/// The arguments that make this test binary run only the `child_process` entry point.
const CHILD_ARGS: [&str; 4] = [
    "child_process",
    "--exact",
    "--nocapture",
    "--test-threads=1",
];

/// Runs this test binary as a child in `mode` the way a ward parent does, under a
/// `ward_supervisor::Child` with its output captured, and returns its exit and its output's
/// last lines once it is dead and drained; panics if it still runs after `limit`.
pub fn run_supervised(mode: &str, dir: &Path, limit: Duration) -> (Exit, String) {
    let exe = std::env::current_exe().expect("current_exe");
    let tail = OutputTail::new(200);
    let sink = tail.clone();
    let spec = ChildSpec::new(exe)
        .args(CHILD_ARGS)
        .env(MODE_VAR, mode)
        .env(DIR_VAR, dir)
        .capture(move |line| sink.push(line));
    let child = ward_supervisor::Child::spawn(&spec).expect("spawning the child");
    let exit = child.wait_timeout(limit);
    // Dropping it kills one still running, and waits until its output is read to the end.
    drop(child);
    let lines: Vec<String> = tail.lines().into_iter().map(|l| l.text).collect();
    let output = lines.join("\n");
    let exit = exit.unwrap_or_else(|| panic!("child still alive after {limit:?}:\n{output}"));
    (exit, output)
}

/// Starts this test binary running only the `child_process` entry point in `mode`, with its
/// crash directory (and heartbeat file) in `dir`.
pub fn spawn(mode: &str, dir: &Path) -> Child {
    let exe = std::env::current_exe().expect("current_exe");
    #[allow(
        clippy::zombie_processes,
        reason = "reaped by pid with wait4 (for its rusage) in `Child::wait` or `Drop`"
    )]
    let mut child = Command::new(exe)
        .args(CHILD_ARGS)
        .env(MODE_VAR, mode)
        .env(DIR_VAR, dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning the child");
    let mut stderr = child.stderr.take().expect("stderr piped");
    let reader = thread::spawn(move || {
        let mut bytes = Vec::new();
        // A read error only shortens the captured tail.
        let _ = stderr.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    });
    Child {
        pid: child.id(),
        dir: dir.to_owned(),
        started: Instant::now(),
        stdin: child.stdin.take(),
        stderr: Some(reader),
        reaped: false,
    }
}

impl Child {
    /// Writes one byte to the child's stdin (its "go" signal).
    pub fn go(&mut self) {
        use std::io::Write;
        let stdin = self.stdin.as_mut().expect("stdin");
        stdin.write_all(b"g").expect("writing to the child");
        stdin.flush().expect("flushing to the child");
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill has no memory preconditions; the pid is our unreaped child.
        assert_eq!(unsafe { libc::kill(self.pid as i32, sig) }, 0, "kill {sig}");
    }

    /// Reaps the child with `wait4`, waiting at most `limit`; panics (after killing and
    /// reaping it) if it is still alive then.
    pub fn wait(mut self, limit: Duration) -> Death {
        let deadline = Instant::now() + limit;
        loop {
            let mut status = 0;
            // SAFETY: zeroed rusage is valid to overwrite.
            let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
            // SAFETY: valid out pointers; WNOHANG polls.
            let r = unsafe { libc::wait4(self.pid as i32, &mut status, libc::WNOHANG, &mut usage) };
            assert!(r >= 0, "wait4: {}", std::io::Error::last_os_error());
            if r == self.pid as i32 {
                self.reaped = true;
                drop(self.stdin.take());
                let stderr = self.stderr.take().unwrap().join().unwrap();
                return Death {
                    status: WaitOutcome::from_raw(status).expect("a final status"),
                    max_rss_kib: usage.ru_maxrss as u64,
                    run_time: self.started.elapsed(),
                    stderr,
                };
            }
            if Instant::now() > deadline {
                self.kill_and_reap();
                let stderr = self.stderr.take().unwrap().join().unwrap_or_default();
                panic!(
                    "child {} still alive after {limit:?}; stderr:\n{stderr}",
                    self.pid
                );
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    fn kill_and_reap(&mut self) {
        if self.reaped {
            return;
        }
        // SAFETY: as in `signal`; errors mean it is already dead, and we still reap it.
        unsafe {
            libc::kill(self.pid as i32, libc::SIGKILL);
            let mut status = 0;
            libc::waitpid(self.pid as i32, &mut status, 0);
        }
        self.reaped = true;
    }

    pub fn heartbeat_path(&self) -> PathBuf {
        heartbeat_path(&self.dir)
    }

    /// Waits until the child's heartbeat reaches `seq`.
    pub fn wait_for_beat(&self, seq: u64) {
        let path = self.heartbeat_path();
        poll(Duration::from_secs(20), "the child's heartbeat", || {
            ward_crashdiag::read_heartbeat(&path).is_ok_and(|b| b.pid == self.pid && b.seq >= seq)
        });
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.kill_and_reap();
    }
}

pub fn heartbeat_path(dir: &Path) -> PathBuf {
    dir.join("heartbeat.json")
}

/// The evidence a parent has after `death` of `child`.
pub fn evidence(pid: u32, dir: &Path, death: &Death) -> Evidence {
    let mut e = Evidence::new(pid, "worker", dir);
    e.wait_status = Some(death.status);
    e.max_rss_kib = Some(death.max_rss_kib);
    e.run_time = Some(death.run_time);
    e.heartbeat_file = Some(heartbeat_path(dir));
    e.stderr_tail = Some(death.stderr.clone());
    e
}

/// Polls `condition` every few milliseconds until it holds; panics after `limit`.
pub fn poll(limit: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

//! Real processes dying real deaths. Each test starts this test binary again as a child that
//! installs crash capture and dies in one way; the parent reaps it with `wait4`, fills in the
//! `Evidence` a ward parent would, and checks the cause, the confidence and the evidence.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use support::{BEAT, Death, evidence, poll, spawn};
use ward_crashdiag::{
    Cause, Confidence, Evidence, HookOutcome, OnCrashHook, OomCounters, PostMortem,
    PostMortemInput, ReportOptions, SystemClock, WaitOutcome, boot_id, collect, list_reports,
    memory_cgroup_of, read_heartbeat, read_report, record_path, report_death, symbolize,
    write_report,
};

#[global_allocator]
static ALLOCATOR: support::LockingAllocator = support::LockingAllocator;

/// Tests that read OOM counters run one at a time, so that one test's OOM kill never lands in
/// another's before/after window.
static OOM_COUNTERS: Mutex<()> = Mutex::new(());

const DEATH: Duration = Duration::from_secs(30);

/// Not a test of its own: the entry point of the children the other tests start (it does
/// nothing unless the child-mode variable is set).
#[test]
fn child_process() {
    if let Ok(mode) = std::env::var(support::MODE_VAR) {
        support::child::run(&mode);
    }
}

fn signaled(signal: i32) -> WaitOutcome {
    WaitOutcome::Signaled {
        signal,
        core_dumped: false,
    }
}

/// Compares the status ignoring the core flag, which depends on the machine's core limit.
fn assert_killed_by(death: &Death, signal: i32) {
    match death.status {
        WaitOutcome::Signaled { signal: s, .. } => {
            assert_eq!(s, signal, "stderr:\n{}", death.stderr)
        }
        other => panic!(
            "expected death by signal {signal}, got {other:?}; stderr:\n{}",
            death.stderr
        ),
    }
}

fn die(mode: &str) -> (tempfile::TempDir, u32, Death) {
    let dir = tempfile::tempdir().unwrap();
    let child = spawn(mode, dir.path());
    let pid = child.pid;
    let death = child.wait(DEATH);
    (dir, pid, death)
}

#[test]
fn panic_is_recorded_and_the_previous_hook_still_runs() {
    let (dir, pid, death) = die("panic");
    assert_eq!(death.status, WaitOutcome::Exited { code: 101 });
    // std's own hook, chained after ours, still printed the message.
    assert!(
        death
            .stderr
            .contains("deliberate panic from the test child"),
        "{}",
        death.stderr
    );
    let report = collect(&evidence(pid, dir.path(), &death));
    let Cause::Panic {
        message, location, ..
    } = &report.verdict.cause
    else {
        panic!("expected a panic: {:#?}", report.verdict);
    };
    assert_eq!(message, "deliberate panic from the test child");
    assert!(location.contains("child.rs"), "{location}");
    assert_eq!(report.verdict.confidence, Confidence::High);
    let panic = report.crash_record.as_ref().unwrap().last_panic().unwrap();
    assert!(!panic.backtrace.is_empty());
    assert_eq!(panic.pid, pid);
}

/// Regression: every caught panic built a named backtrace, which loads the executable's debug
/// info into memory for good (about 80 MB in the server).
#[test]
fn a_panic_off_the_main_thread_keeps_raw_addresses() {
    let (dir, pid, death) = die("panic_in_thread");
    assert_eq!(death.status, WaitOutcome::Exited { code: 3 });
    let report = collect(&evidence(pid, dir.path(), &death));
    let panic = report.crash_record.as_ref().unwrap().last_panic().unwrap();
    assert_eq!(panic.message, "deliberate panic in a thread");
    assert_eq!(panic.thread, "panicker");
    let frames = panic.backtrace.join("\n");
    assert!(frames.starts_with("raw return addresses"), "{frames}");
    assert!(frames.contains("0x"), "{frames}");
}

#[test]
fn segfault_is_a_native_crash_with_address_and_backtrace() {
    let (dir, pid, death) = die("segfault");
    assert_killed_by(&death, libc::SIGSEGV);
    assert!(
        death
            .stderr
            .contains("fatal signal 11 (SIGSEGV) at address 0x1000"),
        "{}",
        death.stderr
    );
    let written =
        report_death(&evidence(pid, dir.path(), &death), &ReportOptions::new(10)).unwrap();
    let report = &written.report;
    let Cause::NativeCrash {
        signal,
        address,
        frames,
        ..
    } = &report.verdict.cause
    else {
        panic!("expected a native crash: {:#?}", report.verdict);
    };
    assert_eq!(*signal, libc::SIGSEGV);
    assert_eq!(address.as_deref(), Some("0x1000"));
    assert!(frames.len() >= 3, "{frames:?}");
    assert_eq!(report.verdict.confidence, Confidence::High);

    // The report is on disk, the record it consumed is gone.
    assert_eq!(
        list_reports(dir.path()).unwrap(),
        vec![written.paths.clone()]
    );
    assert_eq!(read_report(&written.paths.json).unwrap(), *report);
    assert!(
        fs::read_to_string(&written.paths.text)
            .unwrap()
            .contains("crashed with SIGSEGV at address 0x1000")
    );
    assert!(!record_path(dir.path(), pid).exists());

    // The raw addresses were named as the report was made: the function that wrote through the
    // bad pointer is among them, and nothing is left to symbolize by hand.
    let signal = report
        .crash_record
        .as_ref()
        .unwrap()
        .signals()
        .next()
        .unwrap();
    assert_eq!(symbolize(signal).frames, report.native_frames);
    if !cfg!(feature = "symbolize") {
        assert!(report.symbolize_hint.is_some());
        return;
    }
    let mut named = report
        .native_frames
        .iter()
        .flat_map(|f| &f.symbols)
        .filter_map(|s| s.function.as_deref());
    assert!(
        named.any(|f| f.ends_with("::segfault")),
        "{}",
        report.to_text()
    );
    assert_eq!(report.symbolize_hint, None);
}

/// The line of `support/child.rs` that holds `marker`.
fn child_source_line(marker: &str) -> u32 {
    let index = include_str!("support/child.rs")
        .lines()
        .position(|l| l.contains(marker))
        .expect("the marker is in child.rs");
    index as u32 + 1
}

/// A native crash of a program that installed the capture, reaped by a ward-supervisor parent
/// and explained through `Evidence::from_exit`, as a library user would: the report names the
/// function that read through the null pointer and the line it did so on, from the
/// executable's own debug info (no binutils needed).
#[test]
fn a_null_read_under_a_supervisor_is_named_down_to_its_function_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let (exit, output) = support::run_supervised("null_field", dir.path(), DEATH);
    let mut evidence = Evidence::from_exit(&exit, "worker", dir.path(), None);
    evidence.crash_capture = true;
    evidence.stderr_tail = Some(output);
    assert!(evidence.max_rss_kib.is_some_and(|kib| kib > 0));
    let report = collect(&evidence);
    let text = report.to_text();

    let Cause::NativeCrash {
        signal, address, ..
    } = &report.verdict.cause
    else {
        panic!("expected a native crash: {text}");
    };
    assert_eq!(*signal, libc::SIGSEGV, "{text}");
    assert_eq!(address.as_deref(), Some("0x8"), "{text}");
    assert_eq!(report.verdict.confidence, Confidence::High, "{text}");
    if !cfg!(feature = "symbolize") {
        return;
    }

    // The interrupted instruction's frame is the null read itself, named with file and line.
    let recorded = report
        .crash_record
        .as_ref()
        .unwrap()
        .signals()
        .next()
        .unwrap();
    let pc = recorded
        .pc
        .as_deref()
        .expect("the handler records the faulting instruction");
    let crash_site = report
        .native_frames
        .iter()
        .find(|f| f.address == pc)
        .unwrap_or_else(|| panic!("no frame at the faulting instruction: {text}"));
    let innermost = crash_site
        .symbols
        .first()
        .unwrap_or_else(|| panic!("the crash site is not named: {text}"));
    assert!(
        innermost
            .function
            .as_deref()
            .is_some_and(|f| f.ends_with("::read_field_through_null")),
        "{text}"
    );
    assert!(
        innermost
            .file
            .as_deref()
            .is_some_and(|f| f.ends_with("tests/support/child.rs")),
        "{text}"
    );
    let line = child_source_line("// the null read");
    assert_eq!(innermost.line, Some(line), "{text}");
    assert!(
        text.contains(&format!("support/child.rs:{line}")),
        "the text report names the line too: {text}"
    );
    assert_eq!(report.symbolize_hint, None, "{text}");
}

#[test]
fn a_segfault_in_a_spawned_thread_is_recorded_from_the_runtimes_alternate_stack() {
    let (dir, pid, death) = die("segfault_in_thread");
    assert_killed_by(&death, libc::SIGSEGV);
    let report = collect(&evidence(pid, dir.path(), &death));
    let Cause::NativeCrash {
        address, frames, ..
    } = &report.verdict.cause
    else {
        panic!("expected a native crash: {:#?}", report.verdict);
    };
    assert_eq!(address.as_deref(), Some("0x1000"));
    assert!(!frames.is_empty());
    let record = report.crash_record.as_ref().unwrap();
    let signal = record.signals().next().unwrap();
    assert!(signal.complete, "{signal:#?}");
    assert_ne!(
        signal.tid, pid,
        "the crashing thread is not the main thread"
    );
}

#[test]
fn abort_is_a_native_crash_and_runs_the_on_crash_hook() {
    let (dir, pid, death) = die("abort");
    assert_killed_by(&death, libc::SIGABRT);
    let out = dir.path().join("hook-output");
    let hook = OnCrashHook::new(
        "sh",
        vec![
            "-c".into(),
            r#"echo "$WARD_CRASH_CAUSE $WARD_CRASH_PID $WARD_CRASH_ROLE" > "$0"; cp "$WARD_CRASH_REPORT" "$0.json""#.into(),
            out.display().to_string(),
        ],
    );
    let written = report_death(
        &evidence(pid, dir.path(), &death),
        &ReportOptions::new(10).on_crash(hook),
    )
    .unwrap();
    assert!(matches!(
        written.report.verdict.cause,
        Cause::NativeCrash {
            signal: libc::SIGABRT,
            ..
        }
    ));
    assert_eq!(written.hook, Some(HookOutcome::Exited(0)));
    assert_eq!(
        fs::read_to_string(&out).unwrap().trim(),
        format!("native_crash {pid} worker")
    );
    let copied = read_report(&out.with_extension("json")).unwrap();
    assert_eq!(copied, written.report);

    // A hook that outlives its time limit is killed and reaped, and says so.
    let slow = OnCrashHook::new("sleep", vec!["30".into()]).timeout(Duration::from_millis(100));
    assert_eq!(
        slow.run(&written.report, &written.paths),
        HookOutcome::TimedOut
    );
}

#[test]
fn stack_overflow_keeps_rusts_report_and_is_named() {
    let (dir, pid, death) = die("stack_overflow");
    assert_killed_by(&death, libc::SIGABRT);
    assert!(
        death.stderr.contains("has overflowed its stack"),
        "Rust's own report must still appear:\n{}",
        death.stderr
    );
    let report = collect(&evidence(pid, dir.path(), &death));
    assert!(
        matches!(
            report.verdict.cause,
            Cause::StackOverflow { thread: Some(_) }
        ),
        "{:#?}",
        report.verdict
    );
    assert_eq!(report.verdict.confidence, Confidence::High);
    // Our handler ran first, on the alternate stack, and recorded the overflow's fault.
    let signals: Vec<i32> = report
        .crash_record
        .as_ref()
        .unwrap()
        .signals()
        .map(|s| s.signal)
        .collect();
    assert_eq!(signals.first(), Some(&libc::SIGSEGV), "{signals:?}");
}

#[test]
fn rlimit_as_exhaustion_is_an_allocation_failure_not_an_oom_kill() {
    let _serial = OOM_COUNTERS.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let cgroup = memory_cgroup_of(std::process::id()).unwrap();
    let before = OomCounters::read(cgroup.as_deref());
    let child = spawn("rlimit_as", dir.path());
    let pid = child.pid;
    let death = child.wait(DEATH);
    // Rust prints the failed size and aborts: SIGABRT, never the OOM killer's SIGKILL.
    assert_killed_by(&death, libc::SIGABRT);
    assert!(
        death
            .stderr
            .contains("memory allocation of 1073741824 bytes failed"),
        "{}",
        death.stderr
    );
    let mut e = evidence(pid, dir.path(), &death);
    e.memory_cgroup = cgroup.clone();
    e.oom_before = Some(before);
    e.oom_after = Some(OomCounters::read(cgroup.as_deref()));
    let report = collect(&e);
    assert_eq!(
        report.verdict.cause,
        Cause::AllocationFailure {
            bytes: Some(1 << 30)
        },
        "{:#?}",
        report.verdict
    );
    assert_eq!(report.verdict.confidence, Confidence::High);
}

#[test]
fn sigkill_from_outside_without_oom_evidence_is_a_kill() {
    let _serial = OOM_COUNTERS.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let child = spawn("idle", dir.path());
    child.wait_for_beat(2);
    let cgroup = memory_cgroup_of(child.pid).unwrap();
    let before = OomCounters::read(cgroup.as_deref());
    let pid = child.pid;
    child.signal(libc::SIGKILL);
    let death = child.wait(DEATH);
    assert_eq!(death.status, signaled(libc::SIGKILL));
    let mut e = evidence(pid, dir.path(), &death);
    e.memory_cgroup = cgroup.clone();
    e.oom_before = Some(before);
    e.oom_after = Some(OomCounters::read(cgroup.as_deref()));
    let report = collect(&e);
    assert_eq!(
        report.verdict.cause,
        Cause::KilledBySignal {
            signal: libc::SIGKILL,
            signal_name: "SIGKILL".into()
        },
        "{:#?}",
        report.verdict
    );
    if cgroup.is_some() {
        assert_eq!(report.verdict.confidence, Confidence::High);
        assert!(
            report
                .verdict
                .evidence
                .iter()
                .any(|l| l.contains("memory cgroup oom_kill rose by 0")),
            "{:#?}",
            report.verdict
        );
    }
}

#[test]
fn a_hang_caught_by_a_heartbeat_watchdog_is_hung() {
    let dir = tempfile::tempdir().unwrap();
    let child = spawn("hang", dir.path());
    child.wait_for_beat(2);
    // The watchdog: a heartbeat older than ten intervals means the process is frozen.
    let path = child.heartbeat_path();
    let boot = boot_id();
    poll(Duration::from_secs(20), "a stale heartbeat", || {
        read_heartbeat(&path).is_ok_and(|b| b.age(&SystemClock, &boot) > BEAT * 10)
    });
    child.signal(libc::SIGKILL);
    let pid = child.pid;
    let death = child.wait(DEATH);
    assert_eq!(death.status, signaled(libc::SIGKILL));
    let mut e = evidence(pid, dir.path(), &death);
    e.watchdog_fired = true;
    let report = collect(&e);
    assert_eq!(report.verdict.cause, Cause::Hung, "{:#?}", report.verdict);
    let beat = report
        .heartbeat
        .as_ref()
        .expect("the report keeps the last beat");
    assert!(beat.seq >= 2);
    assert!(
        report
            .verdict
            .evidence
            .iter()
            .any(|l| l.starts_with("last heartbeat")),
        "{:#?}",
        report.verdict
    );
}

#[test]
fn a_crash_while_another_thread_holds_the_allocator_does_not_deadlock() {
    // If the handler allocated, it would wait for the allocator lock forever and `wait` would
    // time out.
    let (dir, pid, death) = die("crash_in_allocator");
    assert_killed_by(&death, libc::SIGSEGV);
    let report = collect(&evidence(pid, dir.path(), &death));
    let Cause::NativeCrash { frames, .. } = &report.verdict.cause else {
        panic!("expected a native crash: {:#?}", report.verdict);
    };
    assert!(!frames.is_empty());
    let record = report.crash_record.as_ref().unwrap();
    assert!(record.signals().all(|s| s.complete), "{record:#?}");
}

/// A memory cgroup made for one test, removed when dropped.
struct TestCgroup {
    dir: PathBuf,
}

impl TestCgroup {
    /// A child of this process's memory cgroup limited to `limit` bytes (swap included), or
    /// why that is not possible here.
    fn create(limit: u64) -> Result<TestCgroup, String> {
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root: cannot create a memory cgroup".into());
        }
        let parent = memory_cgroup_of(std::process::id())
            .map_err(|e| format!("reading our cgroup: {e}"))?
            .ok_or("no v1 or v2 memory controller for this process")?;
        let dir = parent.join(format!("ward-crashdiag-test-{}", std::process::id()));
        let v1 = parent.join("memory.limit_in_bytes").exists();
        if !v1 {
            // v2: the controller must be enabled for children of our cgroup.
            let control = parent.join("cgroup.subtree_control");
            let enabled = fs::read_to_string(&control).unwrap_or_default();
            if !enabled.split_whitespace().any(|c| c == "memory") {
                fs::write(&control, "+memory").map_err(|e| {
                    format!(
                        "enabling the v2 memory controller in {}: {e}",
                        control.display()
                    )
                })?;
            }
        }
        fs::create_dir(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let cgroup = TestCgroup { dir };
        let limit = limit.to_string();
        let files: &[&str] = if v1 {
            &["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"]
        } else {
            &["memory.max", "memory.swap.max"]
        };
        for (i, file) in files.iter().enumerate() {
            let path = cgroup.dir.join(file);
            let value = if !v1 && i == 1 { "0" } else { limit.as_str() };
            // The first file is the limit itself; the swap file exists only with swap accounting.
            if i == 0 || path.exists() {
                fs::write(&path, value).map_err(|e| format!("writing {}: {e}", path.display()))?;
            }
        }
        Ok(cgroup)
    }

    fn adopt(&self, pid: u32) {
        fs::write(self.dir.join("cgroup.procs"), pid.to_string()).expect("moving the child");
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // The dead child's charges take a moment to leave; rmdir fails with EBUSY until then.
        let dir = self.dir.clone();
        let removed = std::panic::catch_unwind(|| {
            poll(Duration::from_secs(10), "the test cgroup to empty", || {
                fs::remove_dir(&dir).is_ok() || !dir.exists()
            })
        });
        if removed.is_err() {
            eprintln!("could not remove {}", self.dir.display());
        }
    }
}

#[test]
fn a_real_oom_kill_in_a_small_memory_cgroup_is_named_oom_kill() {
    let _serial = OOM_COUNTERS.lock().unwrap_or_else(|e| e.into_inner());
    let cgroup = match TestCgroup::create(32 << 20) {
        Ok(c) => c,
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let mut child = spawn("oom", dir.path());
    child.wait_for_beat(1);
    cgroup.adopt(child.pid);
    assert_eq!(
        memory_cgroup_of(child.pid).unwrap().as_deref(),
        Some(cgroup.dir.as_path())
    );
    let before = OomCounters::read(Some(&cgroup.dir));
    assert!(before.cgroup_oom_kill.is_some(), "{before:?}");
    let pid = child.pid;
    child.go();
    let death = child.wait(DEATH);
    let after = OomCounters::read(Some(&cgroup.dir));
    assert_eq!(death.status, signaled(libc::SIGKILL), "{}", death.stderr);

    let mut e = evidence(pid, dir.path(), &death);
    e.memory_cgroup = Some(cgroup.dir.clone());
    e.oom_before = Some(before);
    e.oom_after = Some(after);
    let report = collect(&e);
    assert_eq!(
        report.verdict.cause,
        Cause::OomKill,
        "{:#?}",
        report.verdict
    );
    assert_eq!(report.verdict.confidence, Confidence::High);
    assert!(
        report
            .verdict
            .evidence
            .iter()
            .any(|l| l.contains("memory cgroup oom_kill rose by 1")),
        "{:#?}",
        report.verdict
    );
}

fn write_pidfile(dir: &Path, pid: u32) -> PathBuf {
    let pidfile = dir.join("ward.pid");
    fs::write(&pidfile, format!("{pid}\n")).unwrap();
    pidfile
}

#[test]
fn a_vanished_daemon_is_reconstructed_from_its_pidfile_heartbeat_and_log() {
    let dir = tempfile::tempdir().unwrap();
    let child = spawn("idle", dir.path());
    child.wait_for_beat(3);
    let pid = child.pid;
    let log = dir.path().join("ward.log");
    fs::write(&log, format!("INFO heartbeat: server pid={pid} seq=3\n")).unwrap();
    let input = PostMortemInput::new("server", write_pidfile(dir.path(), pid), dir.path())
        .heartbeat_file(child.heartbeat_path())
        .log_file(&log);
    assert!(matches!(
        post_mortem(&input),
        PostMortem::StillRunning { pid: p } if p == pid
    ));

    // Its parent is gone too: only what it left on disk speaks.
    child.signal(libc::SIGKILL);
    child.wait(DEATH);
    let last_beat = read_heartbeat(&dir.path().join("heartbeat.json")).unwrap();
    let PostMortem::Reconstructed(report) = post_mortem(&input) else {
        panic!("expected a reconstruction");
    };
    assert_eq!(
        report.verdict.cause,
        Cause::Vanished {
            last_alive_wall_ms: Some(last_beat.wall_ms)
        },
        "{:#?}",
        report.verdict
    );
    assert_eq!(report.verdict.confidence, Confidence::Low);
    assert_eq!(report.log_tail.len(), 1);
    assert!(report.to_text().contains("vanished; last alive at"));

    // Once written, it is not reconstructed again.
    let written = write_report(&report, dir.path(), 10).unwrap();
    match post_mortem(&input) {
        PostMortem::AlreadyReported(summary) => assert_eq!(summary, written),
        other => panic!("expected the written report: {other:?}"),
    }
}

#[test]
fn a_daemon_that_stopped_in_order_is_a_graceful_stop_and_leaves_no_record() {
    let (dir, pid, death) = die("graceful");
    assert_eq!(death.status, WaitOutcome::Exited { code: 0 });
    assert!(
        !record_path(dir.path(), pid).exists(),
        "an empty record is removed"
    );
    let input = PostMortemInput::new("server", write_pidfile(dir.path(), pid), dir.path())
        .heartbeat_file(support::heartbeat_path(dir.path()));
    let PostMortem::Reconstructed(report) = post_mortem(&input) else {
        panic!("expected a reconstruction");
    };
    assert_eq!(
        report.verdict.cause,
        Cause::GracefulStop,
        "{:#?}",
        report.verdict
    );
}

fn post_mortem(input: &PostMortemInput) -> PostMortem {
    ward_crashdiag::post_mortem(input).unwrap()
}

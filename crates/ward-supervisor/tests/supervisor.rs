//! Integration tests with real processes and real signals: classification, stop, descriptors,
//! output capture, the watchdog, parent death, and the `Supervisor`'s restarts and shutdown.

mod support;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{
    helper, is_dead, live_descendants, nice_of, open_fds, poll, proc_limit, status_field,
};
use ward_supervisor::{
    Backoff, Child, ChildSpec, ChildState, Environment, Error, Event, EventKind, Input, Intensity,
    Line, Reaper, ResourceLimits, RestartMode, RestartPolicy, StopReason, Stream, Supervisor,
    Termination, Watchdog,
};

const LONG: Duration = Duration::from_secs(20);

fn signaled(signal: i32) -> Termination {
    Termination::Signaled {
        signal,
        core_dumped: false,
    }
}

/// A shell leaving sleeps in the background, its output not the harness's: if a test failed to
/// kill them, they would otherwise hold the harness's stdout open and hang the whole run.
fn background_sleeps(script: &str) -> ChildSpec {
    ChildSpec::new("sh")
        .args(["-c", script])
        .output(ward_supervisor::Output::Null)
}

fn run(spec: &ChildSpec) -> ward_supervisor::Exit {
    let child = Child::spawn(spec).expect("spawn");
    child.wait_timeout(LONG).expect("the child exits")
}

/// Runs `spec` with a reaper thread and inline, and checks that both exit the same way.
fn run_both_ways(spec: &ChildSpec) -> ward_supervisor::Exit {
    let exit = run(spec);
    let child = Child::spawn_inline(spec).expect("spawn inline");
    let inline = child.wait_timeout(LONG).expect("the inline child exits");
    assert_eq!(
        (&inline.termination, inline.hung, inline.stop_requested),
        (&exit.termination, exit.hung, exit.stop_requested),
        "inline: {inline}, with a reaper thread: {exit}"
    );
    exit
}

/// Also the entry point of the helper modes: a child re-running this binary lands here.
#[test]
fn helper_exits_with_the_code_it_is_given() {
    if let Ok(mode) = std::env::var(support::HELPER_ENV) {
        support::run_helper(&mode);
    }
    let dir = tempfile::tempdir().unwrap();
    let exit = run(&helper("exit:7", dir.path()));
    assert_eq!(exit.termination, Termination::Exited { code: 7 });
    assert!(exit.max_rss_bytes > 0, "wait4 reports a peak RSS: {exit:?}");
    assert!(exit.run_time > Duration::ZERO);
    assert!(!exit.hung && !exit.stop_requested);
}

#[test]
fn handles_can_be_shared_between_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Supervisor>();
    send_sync::<Child>();
    send_sync::<Event>();
    send_sync::<ChildSpec>();
    send_sync::<Error>();
}

#[test]
fn a_panic_is_exit_code_101() {
    let dir = tempfile::tempdir().unwrap();
    let exit = run(&helper("panic", dir.path()));
    assert_eq!(exit.termination, Termination::Exited { code: 101 });
}

#[test]
fn an_abort_is_sigabrt() {
    let dir = tempfile::tempdir().unwrap();
    let exit = run(&helper("abort", dir.path()));
    assert_eq!(exit.termination, signaled(libc::SIGABRT));
    assert_eq!(exit.termination.to_string(), "killed by signal 6 (SIGABRT)");
}

#[test]
fn a_null_write_is_sigsegv() {
    let dir = tempfile::tempdir().unwrap();
    let exit = run(&helper("segv", dir.path()));
    assert_eq!(exit.termination, signaled(libc::SIGSEGV));
}

#[test]
fn a_core_dump_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    // As large a core as this process may allow (raising the hard limit needs privilege).
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is valid for writes.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_CORE, &mut limit) }, 0);
    let spec = helper("abort", dir.path()).limits(ResourceLimits {
        core_size: Some(limit.rlim_max),
        ..ResourceLimits::default()
    });
    let exit = run(&spec);
    let core_pattern = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap_or_default();
    // With a plain file pattern, the kernel writes the core into the child's cwd (the temp dir).
    let dumps = core_pattern.starts_with("core") && limit.rlim_max >= 64 << 20;
    assert_eq!(
        exit.termination,
        Termination::Signaled {
            signal: libc::SIGABRT,
            core_dumped: dumps,
        },
        "core_pattern {core_pattern:?}, hard limit {}",
        limit.rlim_max
    );
}

#[test]
fn address_space_exhaustion_aborts_with_sigabrt() {
    let dir = tempfile::tempdir().unwrap();
    let spec = helper("alloc", dir.path()).limits(ResourceLimits {
        address_space: Some(512 << 20),
        core_size: Some(0),
        ..ResourceLimits::default()
    });
    let exit = run(&spec);
    assert_eq!(exit.termination, signaled(libc::SIGABRT));
}

/// Provokes SIGKILL from the cgroup OOM killer: the child allocates past its `memory_max`.
/// Where no memory cgroup can be made, the limit must be refused, not ignored.
#[test]
fn memory_max_provokes_sigkill_from_the_cgroup_oom_killer() {
    let dir = tempfile::tempdir().unwrap();
    let spec = helper("alloc", dir.path())
        .memory_max(64 << 20)
        // A backstop: if the cgroup limit did not apply, this aborts instead of eating 2 GiB.
        .limits(ResourceLimits {
            address_space: Some(3 << 30),
            core_size: Some(0),
            ..ResourceLimits::default()
        });
    match ward_supervisor::probe_memory_cgroup() {
        Err(_) => {
            let err = Child::spawn(&spec).expect_err("no memory cgroup: the limit is refused");
            assert!(matches!(err, Error::NoMemoryCgroup { .. }), "{err}");
        }
        Ok(_) => {
            let child = Child::spawn(&spec).expect("spawn under a memory cgroup");
            let path = child.cgroup_path().expect("a cgroup was made").to_owned();
            assert!(path.is_dir());
            let exit = child.wait_timeout(LONG).expect("the child exits");
            assert_eq!(exit.termination, signaled(libc::SIGKILL), "{exit}");
            let evidence = exit.memory_cgroup.expect("cgroup evidence");
            assert_eq!(evidence.limit_bytes, Some(64 << 20));
            assert!(evidence.oom_kills.unwrap_or(0) >= 1, "{evidence:?}");
            drop(child);
            assert!(!path.exists(), "the cgroup is removed with the handle");
        }
    }
}

#[test]
fn a_descendant_that_left_the_group_dies_with_the_memory_cgroup() {
    let dir = tempfile::tempdir().unwrap();
    let spec = ChildSpec::new("sh")
        .args([
            "-c",
            "setsid sleep 1000 & echo $! > escaped.tmp; mv escaped.tmp escaped; sleep 0.1; exit 0",
        ])
        .current_dir(dir.path())
        // Not the harness's stdout: an escapee holding it would hang the test run.
        .output(ward_supervisor::Output::Null)
        .memory_max(256 << 20);
    if ward_supervisor::probe_memory_cgroup().is_err() {
        let err = Child::spawn(&spec).expect_err("no memory cgroup: the limit is refused");
        assert!(matches!(err, Error::NoMemoryCgroup { .. }), "{err}");
        return;
    }
    let child = Child::spawn(&spec).unwrap();
    let exit = child.wait_timeout(LONG).expect("the shell exits");
    assert_eq!(exit.termination, Termination::Exited { code: 0 });
    let pidfile = dir.path().join("escaped");
    assert!(poll(LONG, || pidfile.exists()));
    let escaped: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let died = poll(LONG, || is_dead(escaped));
    if !died {
        // Do not leave it behind even when the test fails.
        // SAFETY: kill has no memory-safety preconditions; the pid is our escaped descendant.
        unsafe { libc::kill(escaped as libc::pid_t, libc::SIGKILL) };
    }
    assert!(died, "the setsid sleep {escaped} outlived its cgroup");
}

#[test]
fn stop_sends_sigterm_first() {
    let child = Child::spawn(&ChildSpec::new("sleep").arg("1000")).unwrap();
    let exit = child.stop(LONG).unwrap();
    assert_eq!(exit.termination, signaled(libc::SIGTERM));
    assert!(exit.stop_requested);
}

#[test]
fn stop_sends_the_specs_stop_signal_first() {
    let spec = ChildSpec::new("sleep")
        .arg("1000")
        .stop_signal(libc::SIGUSR1);
    assert_eq!(spec.get_stop_signal(), libc::SIGUSR1);
    let exit = Child::spawn(&spec).unwrap().stop(LONG).unwrap();
    assert_eq!(exit.termination, signaled(libc::SIGUSR1));
    assert!(exit.stop_requested);
    // The supervisor stops its children the same way.
    let (supervisor, _events) = Supervisor::with_channel().unwrap();
    let id = supervisor.add(spec, RestartPolicy::immediate()).unwrap();
    supervisor.stop_child(id).unwrap();
    let exit = supervisor.status(id).unwrap().last_exit.unwrap();
    assert_eq!(exit.termination, signaled(libc::SIGUSR1));
    supervisor.shutdown().unwrap();
}

#[test]
fn a_stop_signal_or_nice_value_out_of_range_is_refused_at_the_spawn() {
    for spec in [
        ChildSpec::new("true").stop_signal(0),
        ChildSpec::new("true").stop_signal(1000),
        ChildSpec::new("true").nice(20),
        ChildSpec::new("true").nice(-21),
    ] {
        let err = Child::spawn(&spec).expect_err("refused");
        assert!(matches!(err, Error::Config(_)), "{spec:?}: {err}");
    }
}

#[test]
fn the_nice_value_applies_in_the_child() {
    let sleeping = |nice: i32| {
        let child = Child::spawn(&ChildSpec::new("sleep").arg("1000").nice(nice))?;
        let pid = child.id();
        assert!(poll(LONG, || support::cmdline(pid).starts_with("sleep")));
        let seen = nice_of(pid);
        child.stop(LONG).unwrap();
        Ok::<_, Error>(seen)
    };
    assert_eq!(sleeping(7).unwrap(), Some(7));
    // Below our own value takes privilege: root has it, anyone else is refused naming the value.
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        assert_eq!(sleeping(-3).unwrap(), Some(-3));
    } else {
        let err = sleeping(-3).expect_err("no privilege to lower the nice value");
        assert!(err.to_string().contains("nice value -3"), "{err}");
    }
}

/// The ids of `/proc/<pid>/status`'s `field` (`Uid`, `Gid`, `Groups`), sorted.
fn ids(pid: u32, field: &str) -> Vec<u32> {
    let mut ids: Vec<u32> = status_field(pid, field)
        .unwrap_or_default()
        .split_whitespace()
        .map(|id| id.parse().unwrap())
        .collect();
    ids.sort_unstable();
    ids
}

#[test]
fn a_child_runs_as_the_user_and_groups_it_is_given() {
    let spec = ChildSpec::new("sleep")
        .arg("1000")
        .user(65534, 65533, [4242, 65533]);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        let err = Child::spawn(&spec).expect_err("only root changes users");
        assert!(err.to_string().contains("setgroups"), "{err}");
        return;
    }
    let child = Child::spawn(&spec).unwrap();
    let pid = child.id();
    assert!(poll(LONG, || support::cmdline(pid).starts_with("sleep")));
    // Real, effective, saved and file-system ids alike.
    assert_eq!(ids(pid, "Uid"), [65534; 4]);
    assert_eq!(ids(pid, "Gid"), [65533; 4]);
    assert_eq!(ids(pid, "Groups"), [4242, 65533]);
    child.stop(LONG).unwrap();

    // The working directory is entered as the new user: one only root may enter is refused.
    let private = tempfile::tempdir().unwrap();
    std::fs::set_permissions(private.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let err = Child::spawn(&spec.clone().current_dir(private.path())).expect_err("no entry");
    assert!(
        err.to_string().contains("chdir") && err.to_string().contains("ermission denied"),
        "{err}"
    );
    // ...and one it may enter is its working directory.
    std::fs::set_permissions(private.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let child = Child::spawn(&spec.current_dir(private.path())).unwrap();
    let pid = child.id();
    assert!(poll(LONG, || support::cmdline(pid).starts_with("sleep")));
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap(),
        private.path()
    );
    child.stop(LONG).unwrap();
}

/// Regression guard: a change of credentials clears the parent-death signal, so it must be set
/// after the change of user, or a job run as another user outlives a killed parent.
#[test]
fn a_child_run_as_another_user_still_dies_when_the_thread_that_spawned_it_exits() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return;
    }
    let child = std::thread::spawn(|| {
        Child::spawn(&ChildSpec::new("sleep").arg("1000").user(65534, 65534, [])).unwrap()
    })
    .join()
    .unwrap();
    let exit = child
        .wait_timeout(LONG)
        .expect("the parent-death signal kills it");
    assert_eq!(exit.termination, signaled(libc::SIGKILL));
}

#[test]
fn stop_sends_sigkill_after_the_grace_when_sigterm_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = crossbeam_channel::unbounded();
    let spec = helper("ignore-term", dir.path()).capture(move |line: &Line| {
        let _ = tx.send(line.text.clone());
    });
    let child = Child::spawn(&spec).unwrap();
    // Wait until SIGTERM is really ignored before stopping.
    loop {
        let line = rx.recv_timeout(LONG).expect("the helper says ready");
        if line == "ready" {
            break;
        }
    }
    let exit = child.stop(Duration::from_millis(200)).unwrap();
    assert_eq!(exit.termination, signaled(libc::SIGKILL));
    assert!(exit.stop_requested);
}

#[test]
fn stop_kills_the_whole_process_group() {
    let child = Child::spawn(&background_sleeps("sleep 1000 & sleep 1000 & wait")).unwrap();
    let mut grandchildren = BTreeSet::new();
    assert!(poll(LONG, || {
        grandchildren = live_descendants(child.id());
        grandchildren.len() == 2
    }));
    child.stop(LONG).unwrap();
    assert!(poll(LONG, || grandchildren.iter().all(|&pid| is_dead(pid))));
}

#[test]
fn a_child_exiting_takes_its_group_with_it() {
    let dir = tempfile::tempdir().unwrap();
    // The shell leaves two sleeps behind in its group and exits once told to.
    let child = Child::spawn(
        &background_sleeps(
            "sleep 1000 & sleep 1000 & while [ ! -e go ]; do sleep 0.01; done; exit 4",
        )
        .current_dir(dir.path()),
    )
    .unwrap();
    let mut left = BTreeSet::new();
    assert!(poll(LONG, || {
        left = live_descendants(child.id())
            .into_iter()
            .filter(|&pid| support::cmdline(pid).contains("1000"))
            .collect();
        left.len() == 2
    }));
    std::fs::write(dir.path().join("go"), "").unwrap();
    let exit = child.wait_timeout(LONG).unwrap();
    assert_eq!(exit.termination, Termination::Exited { code: 4 });
    assert!(poll(LONG, || left.iter().all(|&pid| is_dead(pid))));
}

#[test]
fn the_child_gets_only_stdio_and_the_descriptors_passed() {
    // A descriptor without O_CLOEXEC, as a careless library would leave one.
    // SAFETY: dup of stderr returns a fresh descriptor we then own.
    let leaked = unsafe { libc::dup(2) };
    assert!(leaked > 2);
    // SAFETY: `leaked` is a fresh descriptor owned by nothing else.
    let leaked = unsafe { OwnedFd::from_raw_fd(leaked) };
    let (_read, write) = std::io::pipe().unwrap();
    let passed: OwnedFd = write.into();
    let passed_no = std::os::fd::AsRawFd::as_raw_fd(&passed);

    let plain = Child::spawn(&ChildSpec::new("sleep").arg("1000")).unwrap();
    let with_fd = Child::spawn(&ChildSpec::new("sleep").arg("1000").pass_fd(passed)).unwrap();
    // Right after exec the dynamic loader briefly has files open (ld.so.cache, libc): wait for
    // the table to settle. A leaked descriptor never goes away, so the poll then fails.
    let expect_plain = BTreeSet::from([0, 1, 2]);
    let expect_with_fd = BTreeSet::from([0, 1, 2, passed_no]);
    let (mut seen_plain, mut seen_with_fd) = (BTreeSet::new(), BTreeSet::new());
    let settled = poll(Duration::from_secs(5), || {
        seen_plain = open_fds(plain.id());
        seen_with_fd = open_fds(with_fd.id());
        seen_plain == expect_plain && seen_with_fd == expect_with_fd
    });
    assert!(
        settled,
        "plain child has {seen_plain:?}, the other {seen_with_fd:?}"
    );
    plain.stop(LONG).unwrap();
    with_fd.stop(LONG).unwrap();
    drop(leaked);
}

#[test]
fn output_is_captured_line_by_line() {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&lines);
    let spec = ChildSpec::new("sh")
        .args([
            "-c",
            "echo one; echo two >&2; printf 'three\\r\\nno newline'",
        ])
        .capture(move |line: &Line| sink.lock().unwrap().push((line.stream, line.text.clone())));
    let child = Child::spawn(&spec).unwrap();
    child.wait_timeout(LONG).unwrap();
    drop(child); // joins the watcher and the sink thread
    let mut lines = lines.lock().unwrap().clone();
    lines.sort();
    assert_eq!(
        lines,
        vec![
            (Stream::Stdout, "no newline".to_owned()),
            (Stream::Stdout, "one".to_owned()),
            (Stream::Stdout, "three".to_owned()),
            (Stream::Stderr, "two".to_owned()),
        ]
    );
}

#[test]
fn merged_output_keeps_the_order_stdout_and_stderr_were_written_in() {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&lines);
    // Each line written after the previous one was: over two pipes, their order would be lost.
    let spec = ChildSpec::new("sh")
        .args([
            "-c",
            "echo 1; echo 2 >&2; echo 3; echo 4 >&2; echo 5 >&2; echo 6",
        ])
        .capture_merged(move |line: &Line| {
            sink.lock().unwrap().push((line.stream, line.text.clone()))
        });
    let child = Child::spawn(&spec).unwrap();
    assert!(child.wait_timeout(LONG).unwrap().is_clean());
    drop(child); // joins the watcher and the sink thread
    let expected: Vec<_> = (1..=6).map(|i| (Stream::Stdout, i.to_string())).collect();
    assert_eq!(*lines.lock().unwrap(), expected);
}

#[test]
fn a_stuck_sink_never_blocks_the_child() {
    let gate = Arc::new(Mutex::new(()));
    let held = gate.lock().unwrap();
    let seen = Arc::new(Mutex::new((0u64, 0u64)));
    let (sink_gate, sink_seen) = (Arc::clone(&gate), Arc::clone(&seen));
    let spec = ChildSpec::new("seq")
        .args(["1", "200000"])
        .capture(move |line: &Line| {
            let _wait = sink_gate.lock().unwrap();
            let mut seen = sink_seen.lock().unwrap();
            seen.0 += 1;
            seen.1 += line.dropped_before;
        });
    let child = Child::spawn(&spec).unwrap();
    // 200 000 lines cannot fit in the pipe and the queue: the child finishes only because
    // lines are dropped instead of waiting for the sink.
    let exit = child
        .wait_timeout(LONG)
        .expect("the child is never blocked by the sink");
    assert_eq!(exit.termination, Termination::Exited { code: 0 });
    assert!(child.dropped_lines() > 0, "lines were dropped and counted");
    drop(held);
    // Every line is delivered or counted once the reader and the sink are done.
    assert!(poll(LONG, || seen.lock().unwrap().0
        + child.dropped_lines()
        == 200_000));
    let (delivered, dropped_in_band) = *seen.lock().unwrap();
    assert!(dropped_in_band <= child.dropped_lines());
    assert!(
        delivered >= 1024,
        "the queue was delivered after the sink was unblocked"
    );
}

/// The lines each sink received, by child.
type Seen = Arc<Mutex<Vec<(Stream, String)>>>;

fn collecting(spec: ChildSpec) -> (ChildSpec, Seen) {
    let seen: Seen = Arc::default();
    let sink = Arc::clone(&seen);
    let spec = spec
        .capture(move |line: &Line| sink.lock().unwrap().push((line.stream, line.text.clone())));
    (spec, seen)
}

#[test]
fn many_concurrent_children_are_all_reaped_with_their_own_status_and_output() {
    // Every other child inline: its output (21 KB, several reads; fewer lines than the sink's
    // queue holds, so none is dropped) waits in its pipe until it is waited for.
    let children: Vec<_> = (0..40)
        .map(|i| {
            let script = format!("seq -f %020g 1 1000; echo err{i} >&2; exit {}", i % 7);
            let (spec, seen) = collecting(ChildSpec::new("sh").args(["-c", &script]));
            let child = if i % 2 == 0 {
                Child::spawn(&spec)
            } else {
                Child::spawn_inline(&spec)
            };
            (i, child.unwrap(), seen)
        })
        .collect();
    let expected: Vec<String> = (1..=1000).map(|n| format!("{n:020}")).collect();
    for (i, child, seen) in children {
        let exit = child.wait_timeout(LONG).expect("every child is reaped");
        assert_eq!(exit.termination, Termination::Exited { code: i % 7 });
        assert_eq!(exit.pid, child.id());
        drop(child); // joins its threads: every line has reached the sink
        let seen = seen.lock().unwrap();
        let stdout: Vec<String> = seen
            .iter()
            .filter(|(stream, _)| *stream == Stream::Stdout)
            .map(|(_, text)| text.clone())
            .collect();
        assert_eq!(stdout, expected, "child {i}: stdout complete and in order");
        assert!(seen.contains(&(Stream::Stderr, format!("err{i}"))));
    }
}

#[test]
fn a_child_that_closes_stdout_early_is_still_read_and_reaped() {
    let (spec, seen) = collecting(ChildSpec::new("sh").args([
        "-c",
        "echo early; exec 1>&-; sleep 0.1; echo late >&2; exit 5",
    ]));
    let child = Child::spawn(&spec).unwrap();
    let exit = child.wait_timeout(LONG).expect("the child is reaped");
    assert_eq!(exit.termination, Termination::Exited { code: 5 });
    drop(child);
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            (Stream::Stdout, "early".to_owned()),
            (Stream::Stderr, "late".to_owned())
        ]
    );
}

#[test]
fn a_grandchild_holding_the_pipe_dies_with_the_group() {
    let (spec, seen) = collecting(ChildSpec::new("sh").args(["-c", "sleep 1000 & echo $!"]));
    let child = Child::spawn(&spec).unwrap();
    let exit = child.wait_timeout(LONG).expect("the leader exits at once");
    assert_eq!(exit.termination, Termination::Exited { code: 0 });
    drop(child); // returns although the grandchild had the pipes: the group kill closed them
    let grandchild: u32 = seen.lock().unwrap()[0].1.parse().unwrap();
    assert!(poll(LONG, || is_dead(grandchild)));
}

#[test]
fn a_descendant_that_escaped_the_group_cannot_hold_the_drop_forever() {
    // setsid takes the sleep out of the group, so nothing kills it and it keeps the pipes open:
    // the drain after the exit is bounded, and output written before the exit is kept.
    let (spec, seen) =
        collecting(ChildSpec::new("sh").args(["-c", "setsid sleep 1000 & echo $!; echo bye >&2"]));
    let child = Child::spawn(&spec).unwrap();
    let exit = child.wait_timeout(LONG).expect("the leader exits at once");
    assert_eq!(exit.termination, Termination::Exited { code: 0 });
    drop(child);
    let seen = seen.lock().unwrap().clone();
    let escaped: i32 = seen
        .iter()
        .find(|(stream, _)| *stream == Stream::Stdout)
        .expect("the pid line")
        .1
        .parse()
        .unwrap();
    assert!(
        seen.contains(&(Stream::Stderr, "bye".to_owned())),
        "{seen:?}"
    );
    // SAFETY: kill has no memory-safety preconditions; the pid was just printed by its parent
    // and is not reaped by anyone in this process.
    unsafe { libc::kill(escaped, libc::SIGKILL) };
}

/// Regression: after a death the pipes were read for 200 ms only, so a crash report could miss
/// what a descendant holding the dead child's stderr wrote just after the death.
#[test]
fn output_written_just_after_a_death_reaches_the_sink_before_the_drop_returns() {
    // The descendant leaves the group (killed at the death), says so on the pipe the leader
    // waits on, and writes to the leader's stderr half a second after the leader aborted.
    let script = "setsid sh -c 'echo escaped; exec >&-; sleep 0.5; echo late >&2' \
                  | { read -r line; kill -ABRT $$; }";
    for inline in [false, true] {
        let (spec, seen) = collecting(ChildSpec::new("sh").args(["-c", script]).limits(
            ResourceLimits {
                core_size: Some(0),
                ..ResourceLimits::default()
            },
        ));
        let child = if inline {
            Child::spawn_inline(&spec)
        } else {
            Child::spawn(&spec)
        }
        .unwrap();
        let exit = child.wait_timeout(LONG).expect("the leader aborts at once");
        assert_eq!(exit.termination, signaled(libc::SIGABRT), "{exit}");
        drop(child);
        let seen = seen.lock().unwrap().clone();
        assert!(
            seen.contains(&(Stream::Stderr, "late".to_owned())),
            "inline {inline}: {seen:?}"
        );
    }
}

/// A shell that prints a line on the dump signal (its `sleep` dies of it, which wakes the shell)
/// and exits with 7, once it says it is ready.
const DUMPS_ON_ABRT: &str =
    "trap 'echo stack of the hang >&2; exit 7' ABRT; echo ready; while :; do sleep 1; done";

/// Spawns `script` (inline or not) with its output collected, and waits until it said `ready`.
fn spawn_ready(script: &str, inline: bool) -> (Child, Seen) {
    let (spec, seen) = collecting(ChildSpec::new("sh").args(["-c", script]).limits(
        ResourceLimits {
            core_size: Some(0),
            ..ResourceLimits::default()
        },
    ));
    let child = if inline {
        Child::spawn_inline(&spec)
    } else {
        Child::spawn(&spec)
    }
    .unwrap();
    // An inline child's output is read only while someone waits.
    assert!(poll(LONG, || {
        child.wait_timeout(Duration::from_millis(10));
        seen.lock()
            .unwrap()
            .contains(&(Stream::Stdout, "ready".to_owned()))
    }));
    (child, seen)
}

#[test]
fn a_hung_child_is_asked_for_its_stack_and_not_stopped_once_it_printed_it() {
    for inline in [false, true] {
        let (child, seen) = spawn_ready(DUMPS_ON_ABRT, inline);
        // Long waits: the dump alone must end it, or the stop's SIGTERM would show.
        let exit = child.stop_hung(Some(libc::SIGABRT), LONG, LONG).unwrap();
        assert_eq!(exit.termination, Termination::Exited { code: 7 }, "{exit}");
        assert!(exit.hung, "{exit}");
        assert_eq!(exit.dump_signal, Some(libc::SIGABRT));
        assert!(!exit.stop_requested, "{exit}");
        drop(child);
        assert!(
            seen.lock()
                .unwrap()
                .contains(&(Stream::Stderr, "stack of the hang".to_owned())),
            "inline {inline}"
        );
    }
}

#[test]
fn a_hung_child_that_lives_on_after_the_dump_signal_is_stopped_after_the_wait() {
    for inline in [false, true] {
        // An ignored signal stays ignored across exec: the sleeps ignore it too.
        let (child, _) = spawn_ready(
            "trap '' ABRT; echo ready; while :; do sleep 1; done",
            inline,
        );
        let exit = child
            .stop_hung(Some(libc::SIGABRT), Duration::from_millis(100), LONG)
            .unwrap();
        assert_eq!(exit.termination, signaled(libc::SIGTERM), "{exit}");
        assert!(exit.hung && exit.stop_requested, "{exit}");
        assert_eq!(exit.dump_signal, Some(libc::SIGABRT));
    }
}

#[test]
fn a_hung_child_with_no_dump_signal_is_only_stopped() {
    for inline in [false, true] {
        let (child, seen) = spawn_ready(DUMPS_ON_ABRT, inline);
        let exit = child.stop_hung(None, LONG, LONG).unwrap();
        assert_eq!(exit.termination, signaled(libc::SIGTERM), "{exit}");
        assert!(exit.hung && exit.stop_requested, "{exit}");
        assert_eq!(exit.dump_signal, None);
        drop(child);
        assert!(
            !seen
                .lock()
                .unwrap()
                .iter()
                .any(|(_, text)| text == "stack of the hang"),
            "inline {inline}"
        );
    }
}

#[test]
fn a_child_that_exited_before_stop_hung_is_not_called_hung() {
    let child = Child::spawn_inline(&ChildSpec::new("true")).unwrap();
    // Nobody waits: it exits and stays a zombie until it is looked at.
    assert!(poll(LONG, || is_dead(child.id())));
    let exit = child.stop_hung(Some(libc::SIGABRT), LONG, LONG).unwrap();
    assert!(exit.is_clean(), "{exit}");
    assert_eq!(exit.dump_signal, None);
    assert!(!exit.stop_requested, "{exit}");
}

#[test]
fn a_child_costs_one_thread_plus_one_once_it_writes_and_none_after_drop() {
    let dir = tempfile::tempdir().unwrap();
    let exit = run(&helper("threads", dir.path()));
    assert_eq!(exit.termination, Termination::Exited { code: 0 });
}

#[test]
fn a_child_nobody_waits_for_is_reaped_by_its_watcher() {
    let child = Child::spawn(&ChildSpec::new("sh").args(["-c", "exit 6"])).unwrap();
    // Only try_wait, which never reaps: the exit can come only from the watcher thread.
    let mut exit = None;
    assert!(poll(LONG, || {
        exit = child.try_wait();
        exit.is_some()
    }));
    assert_eq!(exit.unwrap().termination, Termination::Exited { code: 6 });
    assert!(
        support::children_of(std::process::id())
            .iter()
            .all(|&pid| pid != child.id())
    );
}

#[test]
fn a_shared_reaper_reaps_children_nobody_waits_for() {
    let reaper = Reaper::new().unwrap();
    let children: Vec<_> = (0..8)
        .map(|code| {
            let spec = ChildSpec::new("sh").args(["-c", &format!("exit {code}")]);
            (code, reaper.spawn(&spec).unwrap())
        })
        .collect();
    // Only try_wait, which never reaps: every exit must come from the reaper's thread.
    for (code, child) in &children {
        let mut exit = None;
        assert!(poll(LONG, || {
            exit = child.try_wait();
            exit.is_some()
        }));
        assert_eq!(
            exit.unwrap().termination,
            Termination::Exited { code: *code }
        );
    }
    let left = support::children_of(std::process::id());
    assert!(
        children
            .iter()
            .all(|(_, child)| !left.contains(&child.id()))
    );
    assert!(poll(LONG, || reaper.watched() == 0));
}

#[test]
fn dropping_the_reaper_kills_and_reaps_what_it_still_watches() {
    let reaper = Reaper::new().unwrap();
    let child = reaper
        .spawn(&background_sleeps("sleep 1000 & sleep 1000 & wait"))
        .unwrap();
    let mut grandchildren = BTreeSet::new();
    assert!(poll(LONG, || {
        grandchildren = live_descendants(child.id());
        grandchildren.len() == 2
    }));
    drop(reaper);
    // Reaped by the reaper before its thread was joined: the exit is there without waiting.
    let exit = child
        .try_wait()
        .expect("reaped when the reaper was dropped");
    assert_eq!(exit.termination, signaled(libc::SIGKILL));
    assert!(exit.stop_requested);
    assert!(!support::children_of(std::process::id()).contains(&child.id()));
    assert!(poll(LONG, || grandchildren.iter().all(|&pid| is_dead(pid))));
}

#[test]
fn a_shared_reaper_keeps_each_childs_output_and_timeouts_apart() {
    let dir = tempfile::tempdir().unwrap();
    let reaper = Reaper::new().unwrap();
    let (talk, seen) = collecting(ChildSpec::new("sh").args(["-c", "echo one; echo two >&2"]));
    let talker = reaper.spawn(&talk).unwrap();
    let (tx, rx) = crossbeam_channel::unbounded();
    let stubborn = reaper
        .spawn(
            &helper("ignore-term", dir.path()).capture(move |line: &Line| {
                let _ = tx.send(line.text.clone());
            }),
        )
        .unwrap();
    while rx.recv_timeout(LONG).expect("the helper says ready") != "ready" {}
    // SIGTERM ignored: the grace runs out and SIGKILL goes to the group.
    let exit = stubborn.stop(Duration::from_millis(100)).unwrap();
    assert_eq!(exit.termination, signaled(libc::SIGKILL));
    assert!(exit.stop_requested);
    let exit = talker.wait_timeout(LONG).unwrap();
    assert_eq!(exit.termination, Termination::Exited { code: 0 });
    drop(talker); // waits for the reaper to drain its pipes and joins the sink thread
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(
        seen.contains(&(Stream::Stdout, "one".to_owned())),
        "{seen:?}"
    );
    assert!(
        seen.contains(&(Stream::Stderr, "two".to_owned())),
        "{seen:?}"
    );
    drop(stubborn);
    assert!(poll(LONG, || reaper.watched() == 0));
}

#[test]
fn spawning_through_a_reaper_starts_no_thread_and_its_drop_joins_one() {
    let dir = tempfile::tempdir().unwrap();
    let exit = run(&helper("reaper-threads", dir.path()));
    assert_eq!(exit.termination, Termination::Exited { code: 0 });
}

#[test]
fn an_inline_child_is_reaped_by_whoever_waits_and_starts_no_thread() {
    let dir = tempfile::tempdir().unwrap();
    let exit = run(&helper("inline-threads", dir.path()));
    assert_eq!(exit.termination, Termination::Exited { code: 0 });
}

#[test]
fn an_inline_child_waited_for_by_two_threads_wakes_both() {
    let (spec, seen) =
        collecting(ChildSpec::new("sh").args(["-c", "read line; echo got $line; exit 9"]));
    let mut child = Child::spawn_inline(&spec.stdin(Input::Piped)).unwrap();
    let mut stdin = child.take_stdin().unwrap();
    let child = Arc::new(child);
    let (tx, rx) = crossbeam_channel::bounded(1);
    let waiter = {
        let child = Arc::clone(&child);
        std::thread::spawn(move || tx.send(child.wait()).unwrap())
    };
    // Short waits here, each turning the reaper or waiting for the other thread to: whichever
    // returns first hands the reaper over, and the child exits only after the last of them.
    for _ in 0..20 {
        assert!(child.wait_timeout(Duration::from_millis(2)).is_none());
    }
    stdin.write_all(b"x\n").unwrap();
    drop(stdin);
    let exit = rx
        .recv_timeout(LONG)
        .expect("the other waiter sees the exit");
    assert_eq!(exit.termination, Termination::Exited { code: 9 });
    assert_eq!(child.wait_timeout(LONG), Some(exit));
    waiter.join().unwrap();
    drop(Arc::into_inner(child).unwrap());
    assert_eq!(
        *seen.lock().unwrap(),
        vec![(Stream::Stdout, "got x".to_owned())]
    );
}

#[test]
fn an_inline_child_that_exited_while_nobody_waited_is_seen_by_try_wait_and_not_killed() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("sleep.pid");
    // Its group is left alone at its exit: the background sleep must survive the drop too.
    let script = format!("sleep 1000 & echo $! > {}", pidfile.display());
    let child = Child::spawn_inline(&background_sleeps(&script).kill_group_on_exit(false)).unwrap();
    let leader = child.id();
    // Nobody waits: the leader exits and stays a zombie until the child is looked at.
    assert!(poll(LONG, || is_dead(leader)));
    let exit = child.try_wait().expect("try_wait reaps the exited child");
    assert_eq!(exit.termination, Termination::Exited { code: 0 });
    assert!(!exit.stop_requested, "{exit:?}");
    drop(child);
    let sleep: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        !is_dead(sleep as u32),
        "the drop killed the group of an exited child"
    );
    // SAFETY: kill has no memory-safety preconditions; the sleep is not ours to reap (its
    // parent, the shell, is gone) and is alive, so its pid is still its own.
    unsafe { libc::kill(sleep, libc::SIGKILL) };
}

#[test]
fn an_inline_child_is_stopped_and_its_group_killed() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = crossbeam_channel::unbounded();
    let stubborn = Child::spawn_inline(&helper("ignore-term", dir.path()).capture(
        move |line: &Line| {
            let _ = tx.send(line.text.clone());
        },
    ))
    .unwrap();
    // Its output is read only while someone waits.
    let mut ready = false;
    assert!(poll(LONG, || {
        stubborn.wait_timeout(Duration::from_millis(10));
        ready = ready || rx.try_iter().any(|text| text == "ready");
        ready
    }));
    let exit = stubborn.stop(Duration::from_millis(100)).unwrap();
    assert_eq!(exit.termination, signaled(libc::SIGKILL));
    assert!(exit.stop_requested);
    let sleeper =
        Child::spawn_inline(&background_sleeps("sleep 1000 & sleep 1000 & wait")).unwrap();
    let mut grandchildren = BTreeSet::new();
    assert!(poll(LONG, || {
        grandchildren = live_descendants(sleeper.id());
        grandchildren.len() == 2
    }));
    let pid = sleeper.id();
    drop(sleeper); // kills the group and reaps the leader: no zombie, no orphan
    assert!(!support::children_of(std::process::id()).contains(&pid));
    assert!(poll(LONG, || grandchildren.iter().all(|&pid| is_dead(pid))));
}

#[test]
fn repeated_spawns_leave_no_descriptor_behind() {
    let dir = tempfile::tempdir().unwrap();
    let exit = run(&helper("fds", dir.path()));
    assert_eq!(exit.termination, Termination::Exited { code: 0 });
}

#[test]
fn stdin_can_be_piped() {
    let (tx, rx) = crossbeam_channel::unbounded();
    let spec = ChildSpec::new("sh")
        .args(["-c", "read line; echo \"got $line\""])
        .stdin(Input::Piped)
        .capture(move |line: &Line| {
            let _ = tx.send(line.text.clone());
        });
    let mut child = Child::spawn(&spec).unwrap();
    let mut stdin = child.take_stdin().expect("stdin is piped");
    writeln!(stdin, "{{\"job\":1}}").unwrap();
    drop(stdin);
    assert_eq!(rx.recv_timeout(LONG).unwrap(), "got {\"job\":1}");
    assert_eq!(
        child.wait_timeout(LONG).unwrap().termination,
        Termination::Exited { code: 0 }
    );
}

#[test]
fn piped_stdout_goes_to_the_caller_and_stderr_to_the_sink() {
    let (spec, seen) = collecting(
        ChildSpec::new("sh")
            .args(["-c", "read line; echo \"got $line\"; echo note >&2"])
            .stdin(Input::Piped)
            .stdout_piped(),
    );
    let mut child = Child::spawn(&spec).unwrap();
    let mut stdin = child.take_stdin().unwrap();
    let mut stdout = child.take_stdout().expect("stdout is piped");
    assert!(child.take_stdout().is_none());
    stdin.write_all(b"ping\n").unwrap();
    let mut text = String::new();
    stdout.read_to_string(&mut text).unwrap();
    assert_eq!(text, "got ping\n");
    let exit = child.wait_timeout(LONG).unwrap();
    assert_eq!(exit.termination, Termination::Exited { code: 0 });
    drop(child);
    assert_eq!(*seen.lock().unwrap(), [(Stream::Stderr, "note".to_owned())]);
}

#[test]
fn a_silent_child_gets_sigabrt_and_is_classified_hung() {
    let dir = tempfile::tempdir().unwrap();
    let spec = helper("heartbeat:5", dir.path()).watchdog(Watchdog {
        timeout: Duration::from_millis(300),
        abort_grace: LONG,
    });
    let exit = run_both_ways(&spec);
    assert_eq!(exit.termination, signaled(libc::SIGABRT), "{exit}");
    assert!(exit.hung);
}

#[test]
fn a_child_ignoring_sigabrt_gets_sigkill_after_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    let spec = helper("ignore-abort", dir.path()).watchdog(Watchdog {
        timeout: Duration::from_millis(200),
        abort_grace: Duration::from_millis(200),
    });
    let exit = run_both_ways(&spec);
    assert_eq!(exit.termination, signaled(libc::SIGKILL), "{exit}");
    assert!(exit.hung);
}

#[test]
fn a_beating_child_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    // Beats every 10 ms for 1.5 s against a 1 s timeout: the timeout is only ever reached if the
    // beats are not seen.
    let spec = helper("beat-then-exit:1500", dir.path()).watchdog(Watchdog {
        timeout: Duration::from_secs(1),
        abort_grace: LONG,
    });
    let exit = run_both_ways(&spec);
    assert_eq!(exit.termination, Termination::Exited { code: 0 }, "{exit}");
    assert!(!exit.hung);
}

#[test]
fn sigkill_of_the_supervising_process_kills_its_children() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("grandchild.pid");
    let mode = format!("supervise:{}", pidfile.display());
    let intermediate = Child::spawn(&helper(&mode, dir.path())).unwrap();
    assert!(poll(LONG, || pidfile.exists()));
    let grandchild: u32 = std::fs::read_to_string(&pidfile).unwrap().parse().unwrap();
    assert!(!is_dead(grandchild));
    // Only the intermediate process: the grandchild is in a group of its own anyway.
    intermediate.signal(libc::SIGKILL).unwrap();
    let exit = intermediate.wait_timeout(LONG).unwrap();
    assert_eq!(exit.termination, signaled(libc::SIGKILL));
    assert!(
        poll(LONG, || is_dead(grandchild)),
        "the parent-death signal killed the grandchild"
    );
}

#[test]
fn spawning_a_missing_program_fails_clearly() {
    let err = Child::spawn(&ChildSpec::new("/nonexistent/ward-test")).unwrap_err();
    assert!(matches!(err, Error::Spawn { .. }), "{err}");
}

/// Runs `spec` to its exit, capturing its stdout; returns the exit code and the lines.
fn stdout_of(spec: ChildSpec) -> (Termination, Vec<String>) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&lines);
    let child = Child::spawn(&spec.capture(move |line: &Line| {
        if line.stream == Stream::Stdout {
            sink.lock().unwrap().push(line.text.clone());
        }
    }))
    .expect("spawn");
    let exit = child.wait_timeout(LONG).expect("the child exits");
    drop(child); // joins the watcher and the sink thread
    let lines = lines.lock().unwrap().clone();
    (exit.termination, lines)
}

fn write_script(path: &Path, text: &str, mode: u32) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Exit code of helper `spawn-fails:<program>`: 0 when the spawn failed naming the program and
/// left no child behind, not even a zombie.
fn spawn_fails_cleanly(program: &str) -> Termination {
    let dir = tempfile::tempdir().unwrap();
    run(&helper(&format!("spawn-fails:{program}"), dir.path())).termination
}

#[test]
fn a_program_not_found_fails_naming_it_and_leaves_no_zombie() {
    for program in ["ward-test-no-such-program", "/nonexistent/ward-test"] {
        let err = Child::spawn(&ChildSpec::new(program)).unwrap_err();
        let Error::Spawn {
            program: named,
            source,
        } = &err
        else {
            panic!("not a spawn error: {err}");
        };
        assert_eq!(named, program);
        assert_eq!(source.kind(), std::io::ErrorKind::NotFound, "{err}");
        assert!(err.to_string().contains(program), "{err}");
        assert_eq!(
            spawn_fails_cleanly(program),
            Termination::Exited { code: 0 },
            "{program}"
        );
    }
}

#[test]
fn a_program_not_executable_fails_naming_it_and_leaves_no_zombie() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("not-executable");
    write_script(&script, "#!/bin/sh\nexit 0\n", 0o644);
    let program = script.to_str().unwrap();
    let err = Child::spawn(&ChildSpec::new(program)).unwrap_err();
    assert!(
        matches!(&err, Error::Spawn { program: p, .. } if p == program),
        "{err}"
    );
    let Error::Spawn { source, .. } = &err else {
        unreachable!()
    };
    assert_eq!(source.kind(), std::io::ErrorKind::PermissionDenied, "{err}");
    assert!(err.to_string().contains(program), "{err}");
    assert_eq!(
        spawn_fails_cleanly(program),
        Termination::Exited { code: 0 }
    );

    // Through PATH, as execvp: a non-executable match is EACCES, not "not found".
    let err = Child::spawn(
        &ChildSpec::new("not-executable")
            .env("PATH", format!("/nonexistent:{}", dir.path().display())),
    )
    .unwrap_err();
    let Error::Spawn { source, .. } = &err else {
        panic!("not a spawn error: {err}");
    };
    assert_eq!(source.kind(), std::io::ErrorKind::PermissionDenied, "{err}");
}

#[test]
fn a_failed_setup_step_is_named_in_the_error() {
    let err =
        Child::spawn(&ChildSpec::new("true").current_dir("/nonexistent/ward-test")).unwrap_err();
    assert!(matches!(err, Error::Spawn { .. }), "{err}");
    assert!(
        err.to_string().contains("chdir to /nonexistent/ward-test"),
        "{err}"
    );
    // No hard limit on open files can be infinite.
    let err = Child::spawn(&ChildSpec::new("true").limits(ResourceLimits {
        open_files: Some(u64::MAX),
        ..ResourceLimits::default()
    }))
    .unwrap_err();
    assert!(err.to_string().contains("RLIMIT_NOFILE"), "{err}");
}

#[test]
fn the_program_is_looked_up_in_the_childs_path() {
    let dir = tempfile::tempdir().unwrap();
    write_script(
        &dir.path().join("ward-test-tool"),
        "#!/bin/sh\necho found\n",
        0o755,
    );
    // A script without `#!` runs with /bin/sh, as execvp does.
    write_script(&dir.path().join("ward-test-bare"), "echo bare\n", 0o755);
    let path = format!("/nonexistent:{}", dir.path().display());
    let (end, lines) = stdout_of(ChildSpec::new("ward-test-tool").env("PATH", &path));
    assert_eq!(
        (end, lines),
        (Termination::Exited { code: 0 }, vec!["found".to_owned()])
    );
    let (end, lines) = stdout_of(ChildSpec::new("ward-test-bare").env("PATH", &path));
    assert_eq!(
        (end, lines),
        (Termination::Exited { code: 0 }, vec!["bare".to_owned()])
    );
}

#[test]
fn environment_changes_and_cwd_reach_the_child() {
    let dir = tempfile::tempdir().unwrap();
    // A variable of this process, to see it inherited, and gone after env_clear.
    let (key, value) = std::env::vars()
        .find(|(k, v)| k != "PATH" && !k.starts_with("WARD") && !v.contains('\n') && !v.is_empty())
        .expect("the test runs with some environment");
    let script = format!(
        "echo \"foo=${{FOO-unset}}\"; echo \"gone=${{GONE-unset}}\"; echo \"inherited=${{{key}-unset}}\"; pwd"
    );
    let cwd = dir.path().canonicalize().unwrap().display().to_string();
    let (end, lines) = stdout_of(
        ChildSpec::new("sh")
            .args(["-c", &script])
            .env("FOO", "first")
            .env("GONE", "x")
            .env_remove("GONE")
            .env("FOO", "bar")
            .current_dir(dir.path()),
    );
    assert_eq!(end, Termination::Exited { code: 0 });
    assert_eq!(
        lines,
        [
            "foo=bar".to_owned(),
            "gone=unset".to_owned(),
            format!("inherited={value}"),
            cwd.clone(),
        ]
    );
    // From an empty environment: no PATH either, so `sh` is found in execvp's default path.
    let (end, lines) = stdout_of(
        ChildSpec::new("sh")
            .args(["-c", &script])
            .env_clear()
            .env("FOO", "only")
            .current_dir(dir.path()),
    );
    assert_eq!(end, Termination::Exited { code: 0 });
    assert_eq!(
        lines,
        [
            "foo=only".to_owned(),
            "gone=unset".to_owned(),
            "inherited=unset".to_owned(),
            cwd,
        ]
    );
}

#[test]
fn a_captured_environment_is_the_base_and_the_specs_changes_apply_on_top() {
    let dir = tempfile::tempdir().unwrap();
    write_script(
        &dir.path().join("ward-test-tool"),
        "#!/bin/sh\necho found\n",
        0o755,
    );
    let base = Environment::current();
    assert_eq!(base.len(), std::env::vars_os().count());
    let (key, value) = std::env::vars()
        .find(|(k, v)| k != "PATH" && !k.starts_with("WARD") && !v.contains('\n') && !v.is_empty())
        .expect("the test runs with some environment");
    let (other, _) = std::env::vars()
        .find(|(k, _)| k != "PATH" && *k != key)
        .expect("two variables at least");
    // `env` lists each variable once: a changed one is not also there with its base value.
    let script = format!(
        "echo \"inherited=${{{key}-unset}}\"; echo \"removed=${{{other}-unset}}\"; env | grep -c '^{key}='; ward-test-tool"
    );
    // Found in the changed PATH, not the base's.
    let path = format!("/nonexistent:{}:/usr/bin:/bin", dir.path().display());
    let (end, lines) = stdout_of(
        ChildSpec::new("ward-test-tool")
            .env_base(&base)
            .env("PATH", &path),
    );
    assert_eq!(
        (end, lines),
        (Termination::Exited { code: 0 }, vec!["found".to_owned()])
    );
    let (end, lines) = stdout_of(
        ChildSpec::new("sh")
            .args(["-c", &script])
            .env_base(&base)
            .env(&key, "changed")
            .env_remove(&other)
            .env("PATH", &path),
    );
    assert_eq!(end, Termination::Exited { code: 0 }, "{lines:?}");
    assert_eq!(
        lines,
        [
            "inherited=changed".to_owned(),
            "removed=unset".to_owned(),
            "1".to_owned(),
            "found".to_owned(),
        ]
    );
    // Unchanged, the base reaches the child as it was captured.
    let (end, lines) = stdout_of(
        ChildSpec::new("sh")
            .args(["-c", &format!("echo \"${{{key}-unset}}\"")])
            .env_base(&base),
    );
    assert_eq!((end, lines), (Termination::Exited { code: 0 }, vec![value]));
    // An empty base: nothing inherited, and execvp's default path finds `sh`.
    let (end, lines) = stdout_of(
        ChildSpec::new("sh")
            .args(["-c", &format!("echo \"${{{key}-unset}}\"")])
            .env_base(&Environment::default()),
    );
    assert_eq!(
        (end, lines),
        (Termination::Exited { code: 0 }, vec!["unset".to_owned()])
    );
}

#[test]
fn the_child_starts_with_no_blocked_signal_and_sigpipe_default() {
    // The mask is per thread: block signals in a thread of our own, and spawn from it (the child
    // must not outlive it, the parent-death signal is tied to it).
    let (blocked, ignored) = std::thread::spawn(|| {
        // SAFETY: an all-zero sigset_t is valid to fill; the calls only change this thread's mask.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGUSR1, libc::SIGCHLD] {
                libc::sigaddset(&mut set, signal);
            }
            assert_eq!(
                libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()),
                0
            );
        }
        let child = Child::spawn(&ChildSpec::new("sleep").arg("1000")).unwrap();
        let pid = child.id();
        // Right after the clone, /proc may still show the pre-exec state; wait for the exec.
        assert!(poll(LONG, || support::cmdline(pid).starts_with("sleep")));
        let fields = (status_field(pid, "SigBlk"), status_field(pid, "SigIgn"));
        child.stop(LONG).unwrap();
        fields
    })
    .join()
    .unwrap();
    assert_eq!(blocked.as_deref(), Some("0000000000000000"));
    // This process ignores SIGPIPE (Rust's runtime does); the child must not.
    let ignored = u64::from_str_radix(&ignored.expect("SigIgn"), 16).unwrap();
    assert_eq!(
        ignored & (1 << (libc::SIGPIPE - 1)),
        0,
        "SigIgn {ignored:x}"
    );
}

#[test]
fn limits_and_passed_descriptors_apply_in_the_child() {
    let child = Child::spawn(&ChildSpec::new("sleep").arg("1000").limits(ResourceLimits {
        address_space: Some(1 << 30),
        open_files: Some(64),
        core_size: Some(0),
    }))
    .unwrap();
    let pid = child.id();
    assert!(poll(LONG, || support::cmdline(pid).starts_with("sleep")));
    let (size, files) = ("1073741824".to_owned(), "64".to_owned());
    assert_eq!(
        proc_limit(pid, "Max address space"),
        Some((size.clone(), size))
    );
    assert_eq!(
        proc_limit(pid, "Max open files"),
        Some((files.clone(), files))
    );
    assert_eq!(
        proc_limit(pid, "Max core file size"),
        Some(("0".into(), "0".into()))
    );
    child.stop(LONG).unwrap();

    // A passed descriptor is open and usable at its own number (through /dev/fd: dash's `>&N`
    // takes single digits only, and the number depends on what the test process has open).
    let (mut read, write) = std::io::pipe().unwrap();
    let write: OwnedFd = write.into();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&write);
    let exit = run(&ChildSpec::new("sh")
        .args(["-c", &format!("echo passed >/dev/fd/{fd}")])
        .pass_fd(write));
    assert_eq!(exit.termination, Termination::Exited { code: 0 });
    let mut text = String::new();
    read.read_to_string(&mut text).unwrap();
    assert_eq!(text, "passed\n");
}

#[test]
fn the_child_dies_when_the_thread_that_spawned_it_exits() {
    let child = std::thread::spawn(|| Child::spawn(&ChildSpec::new("sleep").arg("1000")).unwrap())
        .join()
        .unwrap();
    let exit = child
        .wait_timeout(LONG)
        .expect("the parent-death signal kills it");
    assert_eq!(exit.termination, signaled(libc::SIGKILL));
}

fn next_event(events: &crossbeam_channel::Receiver<Event>) -> Event {
    events.recv_timeout(LONG).expect("an event")
}

#[test]
fn supervisor_waits_out_the_backoff_before_restarting() {
    // Events are timestamped as they are emitted, on the supervisor thread, so a test thread
    // scheduled late cannot shorten the measured wait.
    let (tx, events) = crossbeam_channel::unbounded();
    let supervisor = Supervisor::new(move |event: &Event| {
        let _ = tx.send((Instant::now(), event.clone()));
    })
    .unwrap();
    let policy = RestartPolicy {
        backoff: Backoff::constant(Duration::from_millis(300)),
        ..RestartPolicy::immediate()
    };
    let id = supervisor
        .add(ChildSpec::new("sh").args(["-c", "exit 1"]), policy)
        .unwrap();
    let mut exited_at = None;
    let mut starts = 0;
    loop {
        let (at, event) = events.recv_timeout(LONG).expect("an event");
        assert_eq!(event.child, id);
        match event.kind {
            EventKind::Started { .. } => {
                starts += 1;
                if let Some(exited_at) = exited_at {
                    let waited = at.duration_since(exited_at);
                    assert!(waited >= Duration::from_millis(300), "{waited:?}");
                    break;
                }
            }
            EventKind::Exited(exit) => {
                assert_eq!(exit.termination, Termination::Exited { code: 1 });
                exited_at = Some(at);
            }
            EventKind::Restarting { after, attempt } => {
                assert_eq!((after, attempt), (Duration::from_millis(300), 1));
            }
            // The exited run's output, delivered once its handle is retired.
            EventKind::OutputDone { .. } => assert!(exited_at.is_some()),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(starts, 2);
    supervisor.shutdown().unwrap();
}

#[test]
fn supervisor_gives_up_after_the_intensity() {
    let (supervisor, events) = Supervisor::with_channel().unwrap();
    let policy = RestartPolicy {
        intensity: Some(Intensity {
            max_restarts: 3,
            window: Duration::from_secs(60),
        }),
        ..RestartPolicy::immediate()
    };
    let id = supervisor
        .add(ChildSpec::new("sh").args(["-c", "kill -SEGV $$"]), policy)
        .unwrap();
    let mut exits = 0;
    loop {
        match next_event(&events).kind {
            EventKind::Exited(exit) => {
                assert_eq!(exit.termination.signal(), Some(libc::SIGSEGV));
                exits += 1;
            }
            EventKind::GaveUp(why) => {
                assert_eq!(why.restarts, 3);
                break;
            }
            _ => {}
        }
    }
    assert_eq!(exits, 4, "the first run and 3 restarts");
    let status = supervisor.status(id).unwrap();
    assert_eq!(
        (status.state, status.restarts, status.pid),
        (ChildState::GaveUp, 3, None)
    );
    supervisor.shutdown().unwrap();
}

#[test]
fn a_program_that_vanishes_is_retried_without_recursing() {
    // The script deletes itself: the first start works, every restart fails to spawn. With no
    // backoff and no intensity, the supervisor must keep trying without recursing and stay
    // responsive to the shutdown.
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("vanish.sh");
    std::fs::write(&script, "#!/bin/sh\nrm \"$0\"\nexit 1\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (supervisor, events) = Supervisor::with_channel().unwrap();
    let id = supervisor
        .add(ChildSpec::new(&script), RestartPolicy::immediate())
        .unwrap();
    let mut failures = 0;
    while failures < 1000 {
        if let EventKind::SpawnFailed(why) = next_event(&events).kind {
            assert!(why.contains("vanish.sh"), "{why}");
            failures += 1;
        }
    }
    assert!(supervisor.status(id).unwrap().restarts >= 1000);
    supervisor.shutdown().unwrap();
}

#[test]
fn supervisor_does_not_restart_a_clean_exit_on_failure_mode() {
    let (supervisor, events) = Supervisor::with_channel().unwrap();
    let policy = RestartPolicy {
        mode: RestartMode::OnFailure,
        ..RestartPolicy::immediate()
    };
    let id = supervisor.add(ChildSpec::new("true"), policy).unwrap();
    loop {
        if let EventKind::Stopped(why) = next_event(&events).kind {
            assert_eq!(why, StopReason::Succeeded);
            break;
        }
    }
    assert_eq!(supervisor.status(id).unwrap().state, ChildState::Stopped);
    supervisor.shutdown().unwrap();
}

#[test]
fn supervisor_stop_child_is_final() {
    let (supervisor, events) = Supervisor::with_channel().unwrap();
    let id = supervisor
        .add(
            ChildSpec::new("sleep").arg("1000"),
            RestartPolicy::immediate(),
        )
        .unwrap();
    supervisor.stop_child(id).unwrap();
    let status = supervisor.status(id).unwrap();
    assert_eq!((status.state, status.pid), (ChildState::Stopped, None));
    let exit = status.last_exit.unwrap();
    assert!(exit.stop_requested);
    assert_eq!(exit.termination, signaled(libc::SIGTERM));
    let mut kinds: Vec<EventKind> = events.try_iter().map(|e| e.kind).collect();
    // The run's output is delivered after it ended; that may be said before or after the
    // supervisor's answer.
    let pid = exit.pid;
    if !kinds.contains(&EventKind::OutputDone { pid }) {
        kinds.push(next_event(&events).kind);
    }
    assert_eq!(
        kinds.last(),
        Some(&EventKind::OutputDone { pid }),
        "{kinds:?}"
    );
    kinds.pop();
    assert!(
        matches!(
            kinds.last(),
            Some(EventKind::Stopped(StopReason::Requested))
        ),
        "{kinds:?}"
    );
    assert_eq!(
        kinds
            .iter()
            .filter(|k| matches!(k, EventKind::Started { .. }))
            .count(),
        1
    );
    supervisor.shutdown().unwrap();
}

#[test]
fn supervisor_hands_out_the_stdin_of_a_json_lines_worker() {
    let (lines_tx, lines) = crossbeam_channel::unbounded();
    let (supervisor, _events) = Supervisor::with_channel().unwrap();
    let spec = ChildSpec::new("sh")
        .args(["-c", "while read job; do echo \"done $job\"; done"])
        .stdin(Input::Piped)
        .capture(move |line: &Line| {
            let _ = lines_tx.send(line.text.clone());
        });
    let id = supervisor.add(spec, RestartPolicy::default()).unwrap();
    let (pid, mut stdin) = supervisor.take_stdin(id).unwrap().expect("stdin is piped");
    assert_eq!(Some(pid), supervisor.status(id).unwrap().pid);
    assert!(
        supervisor.take_stdin(id).unwrap().is_none(),
        "taken once per run"
    );
    writeln!(stdin, "{{\"n\":1}}").unwrap();
    writeln!(stdin, "{{\"n\":2}}").unwrap();
    assert_eq!(lines.recv_timeout(LONG).unwrap(), "done {\"n\":1}");
    assert_eq!(lines.recv_timeout(LONG).unwrap(), "done {\"n\":2}");
    supervisor.stop_child(id).unwrap();
    assert!(matches!(
        supervisor.take_stdin(999).unwrap_err(),
        Error::NoSuchChild(999)
    ));
    supervisor.shutdown().unwrap();
}

#[test]
fn supervisor_stop_escalates_to_sigkill_after_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    let (ready_tx, ready) = crossbeam_channel::unbounded();
    let spec = helper("ignore-term", dir.path())
        .stop_grace(Duration::from_millis(200))
        .capture(move |line: &Line| {
            let _ = ready_tx.send(line.text.clone());
        });
    let (supervisor, _events) = Supervisor::with_channel().unwrap();
    let id = supervisor.add(spec, RestartPolicy::immediate()).unwrap();
    while ready.recv_timeout(LONG).expect("the helper says ready") != "ready" {}
    supervisor.stop_child(id).unwrap();
    let status = supervisor.status(id).unwrap();
    assert_eq!(status.state, ChildState::Stopped);
    let exit = status.last_exit.unwrap();
    assert_eq!(exit.termination, signaled(libc::SIGKILL));
    assert!(exit.stop_requested);
    assert_eq!(status.restarts, 0);
    supervisor.shutdown().unwrap();
}

#[test]
fn stopping_a_supervisor_of_20_children_leaves_no_descendant() {
    let (supervisor, _events) = Supervisor::with_channel().unwrap();
    let mut pids = Vec::new();
    for i in 0..20 {
        let spec = background_sleeps("sleep 1000 & sleep 1000 & wait")
            .name(format!("child-{i}"))
            .stop_grace(Duration::from_secs(5));
        let id = supervisor.add(spec, RestartPolicy::default()).unwrap();
        pids.push(supervisor.status(id).unwrap().pid.unwrap());
    }
    // Every shell and both of its sleeps.
    let mut tree = BTreeSet::new();
    assert!(poll(LONG, || {
        tree = pids
            .iter()
            .flat_map(|&pid| live_descendants(pid).into_iter().chain([pid]))
            .collect();
        tree.len() == 60
    }));
    supervisor.shutdown().unwrap();
    assert!(
        poll(LONG, || tree.iter().all(|&pid| is_dead(pid))),
        "still alive: {:?}",
        tree.iter()
            .filter(|&&pid| !is_dead(pid))
            .collect::<Vec<_>>()
    );
}

#[test]
fn supervisor_restart_child_replaces_the_process_whatever_the_policy() {
    let (supervisor, events) = Supervisor::with_channel().unwrap();
    // `never`: a restart on request is not the policy's to refuse.
    let id = supervisor
        .add(ChildSpec::new("sleep").arg("1000"), RestartPolicy::never())
        .unwrap();
    let first = supervisor.status(id).unwrap().pid.unwrap();
    supervisor.restart_child(id).unwrap();
    let status = supervisor.status(id).unwrap();
    let second = status
        .pid
        .expect("a new process runs once restart_child returns");
    assert_ne!(first, second);
    assert!(is_dead(first));
    let exit = status.last_exit.unwrap();
    assert!(exit.stop_requested, "{exit}");
    assert_eq!(exit.termination, signaled(libc::SIGTERM));
    // Stopped for good, then started again on request.
    supervisor.stop_child(id).unwrap();
    assert_eq!(supervisor.status(id).unwrap().state, ChildState::Stopped);
    supervisor.start_child(id).unwrap();
    let third = supervisor.status(id).unwrap().pid.expect("started again");
    // A start of a running child changes nothing.
    supervisor.start_child(id).unwrap();
    assert_eq!(supervisor.status(id).unwrap().pid, Some(third));
    let started = events
        .try_iter()
        .filter(|e| matches!(e.kind, EventKind::Started { .. }))
        .count();
    assert_eq!(started, 3);
    // A running child is not forgotten; a stopped one is.
    assert!(matches!(supervisor.remove_child(id), Err(Error::Config(_))));
    supervisor.stop_child(id).unwrap();
    supervisor.remove_child(id).unwrap();
    assert!(matches!(supervisor.status(id), Err(Error::NoSuchChild(_))));
    supervisor.shutdown().unwrap();
}

#[test]
fn supervisor_kill_hung_dumps_then_kills_and_the_policy_restarts_it() {
    let dir = tempfile::tempdir().unwrap();
    let (supervisor, events) = Supervisor::with_channel().unwrap();
    // SIGUSR1 is ignored here: only the SIGKILL after the dump wait ends it.
    let spec = ChildSpec::new("sh")
        .args(["-c", "trap '' USR1; echo $$ > pid; exec sleep 1000"])
        .current_dir(dir.path());
    let id = supervisor.add(spec, RestartPolicy::immediate()).unwrap();
    let first = supervisor.status(id).unwrap().pid.unwrap();
    // Written once the trap is set: a SIGUSR1 before it would end the shell.
    assert!(poll(LONG, || dir.path().join("pid").exists()));
    supervisor
        .kill_hung(id, Some(libc::SIGUSR1), Duration::from_millis(100))
        .unwrap();
    let exit = loop {
        if let EventKind::Exited(exit) = next_event(&events).kind {
            break exit;
        }
    };
    assert!(exit.hung, "{exit}");
    assert!(!exit.stop_requested, "{exit}");
    assert_eq!(exit.dump_signal, Some(libc::SIGUSR1));
    assert_eq!(exit.termination, signaled(libc::SIGKILL));
    assert!(poll(LONG, || supervisor
        .status(id)
        .unwrap()
        .pid
        .is_some_and(|pid| pid != first)));
    supervisor.shutdown().unwrap();
}

#[test]
fn supervisor_own_cgroup_takes_a_setsid_descendant_down_with_a_stop() {
    let dir = tempfile::tempdir().unwrap();
    let spec = ChildSpec::new("sh")
        .args([
            "-c",
            "setsid sh -c 'sleep 1000 & echo $! > escaped.tmp; mv escaped.tmp escaped; wait' & exec sleep 1000",
        ])
        .current_dir(dir.path())
        .output(ward_supervisor::Output::Null)
        .own_cgroup();
    let (supervisor, _events) = Supervisor::with_channel().unwrap();
    if ward_supervisor::probe_memory_cgroup().is_err() {
        let err = supervisor
            .add(spec, RestartPolicy::never())
            .expect_err("no cgroup can be made: refused");
        assert!(matches!(err, Error::NoMemoryCgroup { .. }), "{err}");
        return;
    }
    let id = supervisor.add(spec, RestartPolicy::never()).unwrap();
    let pidfile = dir.path().join("escaped");
    assert!(poll(LONG, || pidfile.exists()));
    let escaped: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(!is_dead(escaped));
    supervisor.stop_child(id).unwrap();
    let died = poll(LONG, || is_dead(escaped));
    if !died {
        // SAFETY: kill has no memory-safety preconditions; the pid is our escaped descendant.
        unsafe { libc::kill(escaped as libc::pid_t, libc::SIGKILL) };
    }
    assert!(
        died,
        "the setsid sleep {escaped} outlived the stop of its cgroup"
    );
    let status = supervisor.status(id).unwrap();
    assert_eq!(
        status.last_exit.unwrap().memory_cgroup.unwrap().limit_bytes,
        None
    );
    supervisor.shutdown().unwrap();
}

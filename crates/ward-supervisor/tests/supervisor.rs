//! Integration tests with real processes and real signals: classification, stop, descriptors,
//! output capture, the watchdog, parent death, and the `Supervisor`'s restarts and shutdown.

mod support;

use std::collections::BTreeSet;
use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{helper, is_dead, live_descendants, open_fds, poll};
use ward_supervisor::{
    Backoff, Child, ChildSpec, ChildState, Error, Event, EventKind, Input, Intensity, Line,
    ResourceLimits, RestartMode, RestartPolicy, StopReason, Stream, Supervisor, Termination,
    Watchdog,
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
            assert_eq!(evidence.limit_bytes, 64 << 20);
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
    drop(child); // joins the reader and the sink thread
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
fn a_silent_child_gets_sigabrt_and_is_classified_hung() {
    let dir = tempfile::tempdir().unwrap();
    let spec = helper("heartbeat:5", dir.path()).watchdog(Watchdog {
        timeout: Duration::from_millis(300),
        abort_grace: LONG,
    });
    let exit = run(&spec);
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
    let exit = run(&spec);
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
    let exit = run(&spec);
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
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
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
    let kinds: Vec<EventKind> = events.try_iter().map(|e| e.kind).collect();
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

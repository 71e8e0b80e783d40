//! End-to-end tests of the daemon's life: start, jobs, stop, crashes, and what is left behind.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use ward_e2e::{Fixture, connect_control, is_alive, wait_for};

const LONG: Duration = Duration::from_secs(30);
/// The job program built with these tests (see `bin/ward-test-job.rs`).
const JOB: &str = env!("CARGO_BIN_EXE_ward-test-job");

fn record_all() -> &'static str {
    "[[trigger]]\nname = \"record\"\nexec = [\"{job}\", \"record\", \"{ledger}\"]\n"
}

fn pid_of(status: &serde_json::Value, key: &str) -> u32 {
    status[key]
        .as_u64()
        .unwrap_or_else(|| panic!("status has no {key}: {status}")) as u32
}

fn kill(pid: u32, signal: i32) {
    // SAFETY: kill with a pid of a process this test started (through ward).
    let rc = unsafe { libc::kill(pid as libc::pid_t, signal) };
    assert_eq!(rc, 0, "kill {pid} with {signal}");
}

#[test]
fn start_runs_jobs_and_stop_leaves_nothing_behind() {
    let f = Fixture::new(JOB, record_all());
    f.start();
    let (code, status) = f.status();
    assert_eq!(code, Some(0), "{status}");
    assert_eq!(status["state"], "running", "{status}");
    for name in ["a.txt", "b.txt", "c.txt"] {
        std::fs::write(f.tree.join(name), name).unwrap();
    }
    wait_for("three jobs in the ledger", LONG, || {
        ["a.txt", "b.txt", "c.txt"].iter().all(|n| f.saw(n))
    });
    assert!(f.state.join("ward.sock").exists());
    f.stop();
    f.assert_nothing_left();
    assert!(!f.state.join("ward.pid").exists(), "pidfile left behind");
    assert!(!f.state.join("ward.sock").exists(), "socket left behind");
    let (code, status) = f.status();
    assert_eq!(code, Some(3), "{status}");
    let log = f.log();
    for step in [
        "stop watching",
        "drain",
        "server loop ended",
        "keeper exiting",
    ] {
        assert!(log.contains(step), "log lacks {step:?}:\n{log}");
    }
}

#[test]
fn an_exec_job_gets_the_environment_ward_was_started_with_and_its_own_variables() {
    let f = Fixture::new(
        JOB,
        "[[trigger]]\nname = \"env\"\nexec = [\"{job}\", \"env\", \"{ledger}\", \"WARD_E2E_MARK\"]\n",
    );
    let out = f
        .ward(&["start"])
        .env("WARD_E2E_MARK", "given-to-start")
        .output()
        .expect("running ward start");
    assert!(out.status.success(), "{out:?}\nlog:\n{}", f.log());
    std::fs::write(f.tree.join("a.txt"), "a").unwrap();
    wait_for("the job on a.txt", LONG, || f.saw("a.txt"));
    let path = f.tree.join("a.txt");
    assert_eq!(
        f.ledger_entries(),
        [(
            "env-given-to-start".to_owned(),
            path.as_os_str().as_bytes().to_vec()
        )]
    );
    f.stop();
    f.assert_nothing_left();
}

#[test]
fn a_second_start_is_refused_and_says_why() {
    let f = Fixture::new(JOB, record_all());
    f.start();
    let out = f.run(&["start"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already running"),
        "{out:?}"
    );
    f.stop();
}

#[test]
fn a_killed_server_is_restarted_and_diagnosed_as_killed_by_sigkill() {
    let f = Fixture::new(JOB, record_all());
    f.start();
    let (_, status) = f.status();
    let first = pid_of(&status, "server_pid");
    kill(first, libc::SIGKILL);
    wait_for("a new server", LONG, || {
        let (_, s) = f.status();
        s["state"] == "running" && s["server_pid"].as_u64().is_some_and(|p| p as u32 != first)
    });
    let (_, status) = f.status();
    assert_eq!(status["restarts"], 1, "{status}");
    let out = f.run(&["diagnose", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let reports: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let text = reports.to_string();
    assert!(
        text.contains(&first.to_string()) && text.contains("SIGKILL"),
        "{text}"
    );
    // Jobs still run after the restart.
    std::fs::write(f.tree.join("after.txt"), "x").unwrap();
    wait_for("a job after the restart", LONG, || f.saw("after.txt"));
    f.stop();
    f.assert_nothing_left();
}

#[test]
fn a_killed_keeper_takes_the_tree_down_and_the_next_start_works() {
    let f = Fixture::new(JOB, record_all());
    f.start();
    let (_, status) = f.status();
    let (keeper, server) = (pid_of(&status, "pid"), pid_of(&status, "server_pid"));
    kill(keeper, libc::SIGKILL);
    wait_for("no process left after SIGKILL of the keeper", LONG, || {
        !is_alive(keeper) && !is_alive(server) && f.processes().is_empty()
    });
    let (code, status) = f.status();
    assert_eq!(code, Some(3), "{status}");
    let why = status["reason"].as_str().unwrap_or_default();
    assert!(
        why.contains(&keeper.to_string()),
        "status does not say why: {status}"
    );
    f.start();
    std::fs::write(f.tree.join("again.txt"), "x").unwrap();
    wait_for("a job after the new start", LONG, || f.saw("again.txt"));
    f.stop();
}

#[test]
fn crashing_jobs_get_reports_with_their_cause_and_other_jobs_run() {
    let f = Fixture::new(
        JOB,
        concat!(
            "[[trigger]]\nname = \"segv\"\nglob = [\"*.segv\"]\nexec = [\"{job}\", \"segv\"]\n",
            "[[trigger]]\nname = \"panic\"\nglob = [\"*.panic\"]\nexec = [\"{job}\", \"panic\"]\n",
            "[[trigger]]\nname = \"fail\"\nglob = [\"*.fail\"]\nexec = [\"{job}\", \"exit\", \"1\"]\n",
            "[[trigger]]\nname = \"record\"\nexec = [\"{job}\", \"record\", \"{ledger}\"]\n",
        ),
    );
    f.start();
    for name in ["x.segv", "x.panic", "x.fail", "fine.txt"] {
        std::fs::write(f.tree.join(name), name).unwrap();
    }
    wait_for("the healthy job", LONG, || f.saw("fine.txt"));
    let causes = |f: &Fixture| {
        let out = f.run(&["diagnose", "--json"]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .map(|v| v.to_string())
            .unwrap_or_default()
    };
    wait_for("reports of the three failed jobs", LONG, || {
        let text = causes(&f);
        text.contains("x.segv") && text.contains("x.panic") && text.contains("x.fail")
    });
    let text = causes(&f);
    assert!(text.contains("SIGSEGV"), "{text}");
    assert!(text.contains("panic"), "{text}");
    assert!(
        text.contains("exited with code 1") || text.contains("\"code\":1"),
        "{text}"
    );
    let (_, status) = f.status();
    assert_eq!(status["state"], "running", "{status}");
    f.stop();
}

#[test]
fn diagnose_opens_with_a_line_per_death_and_last_keeps_the_newest() {
    let f = Fixture::new(
        JOB,
        "[[trigger]]\nname = \"segv\"\nexec = [\"{job}\", \"segv\"]\n",
    );
    f.edit_config("[jobs]\n", "[jobs]\nretries = 0\n");
    f.start();
    let reports = || -> Vec<serde_json::Value> {
        let out = f.run(&["diagnose", "--json"]);
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    };
    // One after the other, so that their reports are in this order.
    for (i, name) in ["one", "two", "three"].into_iter().enumerate() {
        std::fs::write(f.tree.join(name), "x").unwrap();
        wait_for("the job's crash report", LONG, || reports().len() > i);
    }
    let out = f.run(&["diagnose"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("3 death(s) on record in"), "{text}");
    for (line, name) in lines[1..4].iter().zip(["three", "two", "one"]) {
        let what = format!("job segv on {}", f.tree.join(name).display());
        assert!(
            line.contains(&what) && line.contains("(pid ") && line.contains("SIGSEGV"),
            "{line}"
        );
        assert!(line.trim_end().ends_with(".txt"), "no report path: {line}");
        let path = line.rsplit(' ').next().unwrap();
        assert!(std::path::Path::new(path).is_file(), "{path}");
    }
    assert_eq!(text.matches("\n==== ").count(), 3, "{text}");
    let out = f.run(&["diagnose", "--last", "2"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("the 2 newest of 3 death(s) on record"),
        "{text}"
    );
    assert_eq!(text.matches("\n==== ").count(), 2, "{text}");
    assert!(text.contains("/tree/three") && text.contains("/tree/two"));
    assert!(!text.contains("/tree/one"), "{text}");
    let out = f.run(&["diagnose", "--json", "--last", "1"]);
    let newest: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(newest.len(), 1);
    assert!(newest[0]["role"].as_str().unwrap().ends_with("/tree/three"));
    f.stop();
}

#[test]
fn hostile_file_names_reach_the_job_intact_and_run_nothing() {
    let f = Fixture::new(JOB, record_all());
    f.start();
    let names: Vec<&[u8]> = vec![
        b"with space.txt",
        b"new\nline.txt",
        b"$(touch pwned).txt",
        b"`touch pwned2`",
        b"caf\xe9.txt",
    ];
    for name in &names {
        std::fs::write(f.tree.join(OsStr::from_bytes(name)), "x").unwrap();
    }
    wait_for("every hostile name in the ledger", LONG, || {
        names.iter().all(|n| {
            let want = f.tree.join(OsStr::from_bytes(n));
            f.ledger_entries()
                .iter()
                .any(|(_, p)| p == want.as_os_str().as_bytes())
        })
    });
    f.stop();
    for leftover in ["pwned", "pwned2"] {
        assert!(
            !f.tree.join(leftover).exists() && !PathBuf::from(leftover).exists(),
            "a name was run as code"
        );
    }
}

#[test]
fn a_malformed_config_is_exit_2_with_file_and_line() {
    let f = Fixture::new(JOB, "[[trigger]]\nexec = [\"true\"]\nbogus = 1\n");
    let out = f.run(&["check"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let expected = format!("{}:", f.config.display());
    assert!(
        stderr.contains(&expected) && stderr.contains("bogus"),
        "{stderr}"
    );
    let line = stderr
        .split(&expected)
        .nth(1)
        .and_then(|rest| rest.split(':').next())
        .unwrap_or_default();
    assert!(line.parse::<u32>().is_ok(), "no line number in {stderr}");
    let out = f.run(&["start"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "start with a bad config: {out:?}"
    );
    f.assert_nothing_left();
}

#[test]
fn garbage_on_the_control_socket_gets_an_error_reply_and_the_server_lives() {
    let f = Fixture::new(JOB, record_all());
    f.start();
    let stream = UnixStream::connect(f.state.join("ward.sock")).unwrap();
    stream.set_read_timeout(Some(LONG)).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let mut huge = vec![b'x'; 200_000];
    huge.push(b'\n');
    for garbage in [
        &b"not json\n"[..],
        b"{\"cmd\":42}\n",
        b"{\"cmd\":\"launch-missiles\"}\n",
        &huge,
        b"\xff\xfe\n",
    ] {
        writer.write_all(garbage).unwrap();
        let mut reply = String::new();
        reader.read_line(&mut reply).unwrap();
        let reply: serde_json::Value = serde_json::from_str(&reply).unwrap();
        assert_eq!(reply["ok"], false, "{reply}");
        assert!(
            reply["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{reply}"
        );
    }
    writer.write_all(b"{\"cmd\":\"status\"}\n").unwrap();
    let mut reply = String::new();
    reader.read_line(&mut reply).unwrap();
    assert!(reply.contains("\"ok\":true"), "{reply}");
    let (code, _) = f.status();
    assert_eq!(code, Some(0));
    f.stop();
}

/// Sends `request` as one line on `stream` and returns the parsed reply.
fn ask(stream: &UnixStream, request: &str) -> serde_json::Value {
    (&*stream)
        .write_all(format!("{request}\n").as_bytes())
        .unwrap();
    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply).unwrap();
    serde_json::from_str(&reply).unwrap_or_else(|e| panic!("reply to {request} ({e}): {reply:?}"))
}

#[test]
fn changes_refuses_a_since_or_limit_that_is_not_a_non_negative_integer() {
    let f = Fixture::new(JOB, record_all());
    f.start();
    std::fs::write(f.tree.join("a.txt"), "a").unwrap();
    wait_for("a.txt recorded", LONG, || f.saw("a.txt"));
    let stream = UnixStream::connect(f.state.join("ward.sock")).unwrap();
    stream.set_read_timeout(Some(LONG)).unwrap();
    for (field, value) in [
        ("since", "-1"),
        ("since", "\"x\""),
        ("since", "1e308"),
        ("since", "1.5"),
        ("limit", "-5"),
        ("limit", "\"10\""),
    ] {
        let reply = ask(
            &stream,
            &format!("{{\"cmd\":\"changes\",\"{field}\":{value}}}"),
        );
        assert_eq!(reply["ok"], false, "{field}={value}: {reply}");
        // The value as JSON prints it (1e308 comes back as 1e+308).
        let shown: serde_json::Value = serde_json::from_str(value).unwrap();
        assert_eq!(
            reply["error"],
            format!("\"{field}\" must be a non-negative integer, got {shown}"),
            "{reply}"
        );
    }
    // A missing `since` is 0: everything known.
    let reply = ask(&stream, "{\"cmd\":\"changes\"}");
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(
        reply["changes"].as_array().map(Vec::len),
        Some(1),
        "{reply}"
    );
    // The command line's `--since` still gets through.
    let out = f.run(&["changes", "--since", "0"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("a.txt"),
        "{out:?}"
    );
    f.stop();
}

/// Without `--config` or `--state-dir`, every command finds the project as git finds its
/// repository: the nearest `ward.toml` (or `.ward`) from the current directory up; the
/// environment can name either; a command that finds nothing says where it looked.
#[test]
fn commands_find_the_project_from_any_directory_below_it() {
    let f = Fixture::new(JOB, record_all());
    let deep = f.tree.join("src/deep");
    std::fs::create_dir_all(&deep).unwrap();
    let state = f.dir.path().join(".ward");
    let in_dir = |dir: &std::path::Path, args: &[&str]| {
        ward_e2e::ward()
            .current_dir(dir)
            .args(args)
            .output()
            .expect("running ward")
    };
    let out = in_dir(&deep, &["check"]);
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains(&format!("{}: ok", f.config.display())),
        "{said}"
    );

    let out = in_dir(&deep, &["start"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        state.join("ward.pid").exists(),
        "state dir beside the found file"
    );
    let out = in_dir(&f.tree, &["status"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    std::fs::write(f.tree.join("found.txt"), "x").unwrap();
    wait_for("a job of the found config", LONG, || f.saw("found.txt"));

    let elsewhere = tempfile::tempdir().unwrap();
    let out = in_dir(elsewhere.path(), &["status"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains(&format!(
            "no ward.toml or .ward in {} or any parent",
            elsewhere.path().display()
        )) && said.contains("WARD_STATE_DIR"),
        "{said}"
    );
    // Every answer that finds no daemon says where it looked.
    for command in [
        "stop", "logs", "reload", "diagnose", "changes", "retry", "restart",
    ] {
        let args: &[&str] = if command == "retry" {
            &["retry", "--all"]
        } else {
            &[command]
        };
        let out = in_dir(elsewhere.path(), args);
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            said.contains("no ward.toml or .ward in"),
            "`ward {command}` does not say where it looked: {said}"
        );
    }
    let out = ward_e2e::ward()
        .current_dir(elsewhere.path())
        .env("WARD_STATE_DIR", &state)
        .arg("status")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "WARD_STATE_DIR is honoured: {out:?}"
    );
    let out = ward_e2e::ward()
        .current_dir(elsewhere.path())
        .env("WARD_CONFIG", &f.config)
        .arg("stop")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("ward stopped"),
        "WARD_CONFIG is honoured: {out:?}"
    );
}

#[test]
fn a_state_dir_too_deep_for_a_socket_address_still_serves_its_clients() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let f = Fixture::with_long_state_dir(JOB, record_all(), 300);
    let socket = f.state.join("ward.sock");
    assert!(f.state.as_os_str().len() >= 300, "{}", f.state.display());
    f.start();
    let (code, status) = f.status();
    assert_eq!(code, Some(0), "{status}");
    assert_eq!(status["state"], "running", "{status}");
    assert!(status["server_error"].is_null(), "{status}");
    assert!(
        status["queue"]["completed"].is_u64(),
        "no counters from the server: {status}"
    );
    std::fs::write(f.tree.join("a.txt"), "a").unwrap();
    wait_for("a.txt recorded", LONG, || f.saw("a.txt"));
    wait_for("the server to count the job", LONG, || {
        f.status().1["queue"]["completed"] == 1
    });
    let out = f.run(&["changes", "--since", "0"]);
    assert!(out.status.success(), "{out:?}");
    let path = f.tree.join("a.txt");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(path.to_str().unwrap()),
        "{out:?}"
    );
    // The socket is where PROTOCOL.md says, as private as ever, and a client of the protocol
    // reaches it the way PROTOCOL.md tells it to.
    let meta = std::fs::symlink_metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket(), "{meta:?}");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{meta:?}");
    let stream = connect_control(&f.state).unwrap();
    stream.set_read_timeout(Some(LONG)).unwrap();
    let reply = ask(&stream, "{\"cmd\":\"status\"}");
    assert_eq!(reply["ok"], true, "{reply}");
    drop(stream);
    f.stop();
    f.assert_nothing_left();
    assert!(!socket.exists(), "socket left behind");
    let log = f.log();
    assert!(log.contains("server stopped cleanly"), "{log}");
}

#[test]
fn stop_is_clean_while_a_slow_client_dribbles_on_the_control_socket() {
    use std::io::Read;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let f = Fixture::new(JOB, record_all());
    f.start();
    // A slow-loris client: one byte a second of a request that never ends, connecting again
    // whenever it is cut off, until the socket is gone.
    let socket = f.state.join("ward.sock");
    let done = Arc::new(AtomicBool::new(false));
    let dribbling = Arc::new(AtomicBool::new(false));
    let client = {
        let (done, dribbling) = (Arc::clone(&done), Arc::clone(&dribbling));
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                let Ok(mut stream) = UnixStream::connect(&socket) else {
                    return;
                };
                stream
                    .set_read_timeout(Some(Duration::from_secs(1)))
                    .unwrap();
                let mut buf = [0; 256];
                loop {
                    if stream.write_all(b" ").is_err() {
                        break;
                    }
                    dribbling.store(true, Ordering::Relaxed);
                    // The pause between bytes is a wait for the server to cut the client off.
                    match stream.read(&mut buf) {
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        _ => break,
                    }
                }
            }
        })
    };
    wait_for("the slow client's first byte", LONG, || {
        dribbling.load(Ordering::Relaxed)
    });
    f.stop();
    done.store(true, Ordering::Relaxed);
    client.join().unwrap();
    let log = f.log();
    assert!(log.contains("server stopped cleanly"), "{log}");
    assert!(!log.contains("did not stop cleanly"), "{log}");
    f.assert_nothing_left();
}

#[test]
fn a_persistent_worker_runs_jobs_and_is_replaced_when_it_dies_or_babbles() {
    let f = Fixture::new(
        JOB,
        "[[trigger]]\nname = \"w\"\nworker = [\"{job}\", \"worker\", \"{ledger}\"]\nrecycle_after = 3\n",
    );
    // One job thread, so that which worker ran what is deterministic.
    f.edit_config("[jobs]\n", "[jobs]\nworkers = 1\n");
    f.start();
    let gave_up_on = |f: &Fixture, name: &str| {
        let line = format!("{} failed after 3 attempt(s)", f.tree.join(name).display());
        f.log().contains(&line)
    };
    let worker_saw = |f: &Fixture, name: &str| {
        let want = f.tree.join(name);
        f.ledger_entries()
            .iter()
            .any(|(event, p)| event.starts_with("worker-") && p == want.as_os_str().as_bytes())
    };
    for name in ["a.txt", "b.txt"] {
        std::fs::write(f.tree.join(name), name).unwrap();
    }
    wait_for("two jobs through the worker", LONG, || {
        worker_saw(&f, "a.txt") && worker_saw(&f, "b.txt")
    });
    std::fs::write(f.tree.join("x.die"), "x").unwrap();
    wait_for("a report of the worker that died mid-job", LONG, || {
        let out = f.run(&["diagnose", "--json"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.contains("x.die") && text.contains("SIGABRT")
    });
    wait_for("the last retry of the dying job", LONG, || {
        gave_up_on(&f, "x.die")
    });
    std::fs::write(f.tree.join("y.garbage"), "x").unwrap();
    wait_for("the protocol violation in the log", LONG, || {
        f.log().contains("broke the protocol")
    });
    wait_for("the last retry of the babbling job", LONG, || {
        gave_up_on(&f, "y.garbage")
    });
    for name in ["c.txt", "d.txt", "e.txt", "f.txt"] {
        std::fs::write(f.tree.join(name), name).unwrap();
    }
    wait_for("jobs after the replacements", LONG, || {
        ["c.txt", "d.txt", "e.txt", "f.txt"]
            .iter()
            .all(|n| worker_saw(&f, n))
    });
    assert!(
        f.log().contains("recycling worker"),
        "no recycling after 3 jobs:\n{}",
        f.log()
    );
    f.stop();
    f.assert_nothing_left();
}

/// A reply the worker was not asked for (here, its last reply again, a moment later) is a
/// protocol violation whenever it is read: the worker is replaced, and the job that read it runs
/// again on the new one.
#[test]
fn a_worker_that_replies_twice_is_replaced_and_the_next_job_runs() {
    let f = Fixture::new(
        JOB,
        "[[trigger]]\nname = \"w\"\nworker = [\"{job}\", \"worker\", \"{ledger}\"]\n",
    );
    f.edit_config("[jobs]\n", "[jobs]\nworkers = 1\n");
    f.start();
    let worker_saw = |f: &Fixture, name: &str| {
        let want = f.tree.join(name);
        f.ledger_entries()
            .iter()
            .filter(|(event, p)| event.starts_with("worker-") && p == want.as_os_str().as_bytes())
            .count()
    };
    std::fs::write(f.tree.join("a.twice"), "a").unwrap();
    wait_for("the job that replies twice", LONG, || {
        worker_saw(&f, "a.twice") == 1
    });
    std::fs::write(f.tree.join("b.txt"), "b").unwrap();
    wait_for("the second reply refused", LONG, || {
        f.log().contains("broke the protocol")
    });
    let log = f.log();
    assert!(
        log.contains("reply is for id 1, expected 2") || log.contains("unrequested reply"),
        "{log}"
    );
    std::fs::write(f.tree.join("c.txt"), "c").unwrap();
    wait_for("the jobs after it run by the new worker", LONG, || {
        worker_saw(&f, "b.txt") >= 1 && worker_saw(&f, "c.txt") >= 1
    });
    f.stop();
    assert!(!f.log().contains("b.txt failed after"), "{}", f.log());
    f.assert_nothing_left();
}

#[test]
fn a_file_changed_many_times_while_queued_is_processed_once_with_its_final_content() {
    let f = Fixture::new(
        JOB,
        "[[trigger]]\nname = \"gated\"\nexec = [\"{job}\", \"gated\", \"{ledger}\", \"{ledger}.gate\"]\n",
    );
    // One job at a time, so the target waits in the queue behind the blocker.
    f.edit_config("[jobs]\n", "[jobs]\nworkers = 1\n");
    f.start();
    std::fs::write(f.tree.join("blocker"), "b").unwrap();
    wait_for("the blocker to start", LONG, || {
        f.status().1["queue"]["running"] == 1
    });
    // Each write waits until the watcher has delivered the previous one, so each version reaches
    // the queue on its own and is coalesced there, not in the watcher.
    let batches = |f: &Fixture| f.status().1["watch"]["batches"].as_u64().unwrap_or(0);
    for version in 0..30 {
        let before = batches(&f);
        std::fs::write(f.tree.join("target"), format!("v{version}")).unwrap();
        wait_for("the watcher to deliver the write", LONG, || {
            batches(&f) > before
        });
    }
    std::fs::write(f.dir.path().join("out/ledger.gate"), "").unwrap();
    wait_for("the target's job", LONG, || f.saw("target"));
    f.stop();
    let want = f.tree.join("target");
    let runs: Vec<String> = f
        .ledger_entries()
        .into_iter()
        .filter(|(_, p)| p == want.as_os_str().as_bytes())
        .map(|(event, _)| event)
        .collect();
    assert_eq!(
        runs,
        ["gated-v29"],
        "the target ran more than once, or not with its final content"
    );
    let out = f.run(&["diagnose", "--json"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "[]",
        "no job failed"
    );
}

#[test]
fn ward_run_in_the_foreground_with_quick_flags_stops_gracefully_on_sigint() {
    let f = Fixture::new(JOB, "");
    let mut child = ward_e2e::ward()
        .arg("--state-dir")
        .arg(&f.state)
        .arg("run")
        .arg("--watch")
        .arg(&f.tree)
        .args(["--debounce", "10", "--workers", "1", "--"])
        .args([JOB, "record"])
        .arg(&f.ledger)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the server to be ready", LONG, || {
        f.log().contains("server ready")
    });
    std::fs::write(f.tree.join("quick.txt"), "x").unwrap();
    wait_for("the quick-flag command to run", LONG, || f.saw("quick.txt"));
    kill(child.id(), libc::SIGINT);
    let status = child.wait().unwrap();
    assert!(status.success(), "ward run after SIGINT: {status:?}");
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(
        stderr.contains("server loop ended"),
        "the log is echoed on stderr:\n{stderr}"
    );
    f.assert_nothing_left();
}

#[test]
fn sighup_reloads_the_triggers_without_a_restart() {
    let f = Fixture::new(JOB, record_all());
    f.start();
    let (_, before) = f.status();
    let second = f.dir.path().join("out/second");
    f.edit_config(f.ledger.to_str().unwrap(), second.to_str().unwrap());
    kill(pid_of(&before, "pid"), libc::SIGHUP);
    wait_for("the reload in the log", LONG, || {
        f.log().contains("trigger(s) now active")
    });
    std::fs::write(f.tree.join("late.txt"), "x").unwrap();
    wait_for("the reloaded trigger to run", LONG, || second.exists());
    let (_, after) = f.status();
    assert_eq!(
        before["server_pid"], after["server_pid"],
        "the server was restarted, not reloaded"
    );
    // A broken config is refused and the running one kept.
    std::fs::write(&f.config, "[[trigger]]\nexec = 5\n").unwrap();
    kill(pid_of(&before, "pid"), libc::SIGHUP);
    wait_for("the refusal in the log", LONG, || {
        f.log().contains("reload refused")
    });
    let (code, _) = f.status();
    assert_eq!(code, Some(0));
    f.stop();
}

#[test]
fn reload_answers_with_the_result_and_a_broken_config_keeps_the_running_one() {
    let f = Fixture::new(JOB, record_all());
    f.start();
    let (_, before) = f.status();
    let second = f.dir.path().join("out/second");
    f.edit_config(f.ledger.to_str().unwrap(), second.to_str().unwrap());
    let out = f.run(&["reload"]);
    assert!(out.status.success(), "{out:?}\nlog:\n{}", f.log());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("1 trigger(s) active"), "{stdout}");
    // Answered once applied: the very next change goes to the new trigger.
    std::fs::write(f.tree.join("late.txt"), "x").unwrap();
    wait_for("the reloaded trigger to run", LONG, || second.exists());
    // A broken config is refused on the terminal, with its line and column, and exit 2.
    std::fs::write(
        &f.config,
        "[watch]\nroots = [\"tree\"]\n[[trigger]]\nexec = 5\n",
    )
    .unwrap();
    let out = f.run(&["reload"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let at = format!("{}:4:8", f.config.display());
    assert!(
        stderr.contains("reload refused") && stderr.contains(&at),
        "no {at} in {stderr}"
    );
    // The running configuration is kept: changes still go to the second ledger, by the same
    // server.
    std::fs::remove_file(&second).unwrap();
    std::fs::write(f.tree.join("later.txt"), "x").unwrap();
    wait_for("the kept trigger to run", LONG, || second.exists());
    let (code, after) = f.status();
    assert_eq!(code, Some(0), "{after}");
    assert_eq!(before["server_pid"], after["server_pid"]);
    f.stop();
    let out = f.run(&["reload"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not running"),
        "{out:?}"
    );
}

#[test]
fn logs_follow_prints_every_line_once_through_the_logs_rotations() {
    // Each job prints 2000 lines, pausing every 200 so that ward drops few of them (it drops what
    // its log cannot take as fast): with ward's prefix, about 270 KB of log a job, so that eight
    // rotate a log of 1 MiB once or twice (even if ward dropped half), and the three rotated
    // files keep all they wrote.
    let f = Fixture::new(
        JOB,
        concat!(
            "[log]\nmax_size_mb = 1\n\n[[trigger]]\nname = \"flood\"\n",
            "exec = [\"sh\", \"flood.sh\"]\n",
        ),
    );
    f.edit_config("[jobs]\n", "[jobs]\nworkers = 1\n");
    // By its absolute path: where exec jobs run is not this test's concern.
    let script = f.dir.path().join("flood.sh");
    f.edit_config(
        "\"flood.sh\"",
        &format!("{:?}", script.display().to_string()),
    );
    std::fs::write(
        &script,
        concat!(
            "name=$(basename \"$WARD_PATH\"); i=0\n",
            "while [ $i -lt 2000 ]; do i=$((i+1)); [ $((i % 200)) -eq 0 ] && sleep 0.02; ",
            "echo \"flood $name $i ..........................................................\"; done\n",
        ),
    )
    .unwrap();
    f.start();
    let mut follower = f
        .ward(&["logs", "-f", "-n", "1"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        let (stdout, seen) = (follower.stdout.take().unwrap(), seen.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let mut seen = seen.lock().unwrap();
                seen.push_str(&line);
                seen.push('\n');
            }
        })
    };
    // Its first line (the log's last one) says it is following: every line after is its to see.
    wait_for("the follower's first line", LONG, || {
        !seen.lock().unwrap().is_empty()
    });
    for i in 0..8 {
        std::fs::write(f.tree.join(format!("f{i}")), "x").unwrap();
    }
    wait_for("the eight jobs to run", LONG, || {
        f.status().1["queue"]["completed"] == 8
    });
    wait_for("the follower to catch up with the log", LONG, || {
        let log = f.log();
        let last_line = log.trim_end().lines().last().unwrap_or_default();
        !last_line.is_empty() && seen.lock().unwrap().ends_with(&format!("{last_line}\n"))
    });
    kill(follower.id(), libc::SIGINT);
    follower.wait().unwrap();
    reader.join().unwrap();
    let seen = seen.lock().unwrap();
    let rotated = std::fs::read_to_string(f.state.join("ward.log.1")).unwrap_or_default();
    assert!(
        rotated.contains("flood f") && seen.contains("flood f7 "),
        "the log did not rotate during the floods"
    );
    let mut history = String::new();
    for name in ["ward.log.3", "ward.log.2", "ward.log.1", "ward.log"] {
        history.push_str(&std::fs::read_to_string(f.state.join(name)).unwrap_or_default());
    }
    // All the log said from the follower's start on, each line once, in order.
    assert!(
        seen.lines().count() > 1000 && history.contains(seen.as_str()),
        "the follower lost or repeated lines ({} seen)",
        seen.lines().count()
    );
    f.stop();
}

/// Regression: a queued job kept an index into the trigger list, which a reload replaced: jobs ran
/// another trigger's command, or panicked on an index past the new list's end.
#[test]
fn a_reload_with_jobs_queued_runs_each_with_the_trigger_that_matched_it() {
    let trigger = |name: &str, glob: &str| {
        format!(
            "[[trigger]]\nname = \"{name}\"\nglob = [\"{glob}\"]\nexec = [\"{{job}}\", \"record\", \"{{ledger}}.{name}\"]\n"
        )
    };
    let blocker = concat!(
        "[[trigger]]\nname = \"blocker\"\nglob = [\"blocker\"]\n",
        "exec = [\"{job}\", \"gated\", \"{ledger}\", \"{ledger}.gate\"]\n",
    );
    let slow = trigger("slow", "*.a");
    let config = [
        blocker.to_owned(),
        slow.clone(),
        trigger("bee", "*.b"),
        trigger("cee", "*.c"),
    ]
    .concat();
    let f = Fixture::new(JOB, &config);
    f.edit_config("[jobs]\n", "[jobs]\nworkers = 1\n");
    f.start();
    f.hold();
    for i in 0..20 {
        for ext in ["a", "b", "c"] {
            std::fs::write(f.tree.join(format!("f{i}.{ext}")), "x").unwrap();
        }
    }
    wait_for("60 jobs queued behind the blocker", LONG, || {
        let q = &f.status().1["queue"];
        q["queued"].as_u64().unwrap_or(0) + q["backlog"].as_u64().unwrap_or(0) == 60
    });
    // `slow` is deleted: `bee` and `cee` move up a place.
    f.edit_config(
        &slow
            .replace("{job}", JOB)
            .replace("{ledger}", f.ledger.to_str().unwrap()),
        "",
    );
    let (_, status) = f.status();
    kill(pid_of(&status, "pid"), libc::SIGHUP);
    wait_for("the reload in the log", LONG, || {
        f.log().contains("trigger(s) now active")
    });
    // After the reload, `*.a` matches nothing and `*.c` is still `cee`'s.
    std::fs::write(f.tree.join("late.a"), "x").unwrap();
    std::fs::write(f.tree.join("late.c"), "x").unwrap();
    f.release();
    f.wait_idle();
    let ran = |name: &str| -> Vec<String> {
        let bytes = std::fs::read(format!("{}.{name}", f.ledger.display())).unwrap_or_default();
        let mut names: Vec<String> = bytes
            .split(|&b| b == 0)
            .filter(|e| !e.is_empty())
            .map(|e| {
                let path = &e[e.iter().position(|&b| b == b'\t').unwrap() + 1..];
                let path = std::path::Path::new(OsStr::from_bytes(path));
                path.file_name().unwrap().to_string_lossy().into_owned()
            })
            .collect();
        names.sort();
        names
    };
    let expected = |ext: &str, late: bool| -> Vec<String> {
        let mut names: Vec<String> = (0..20).map(|i| format!("f{i}.{ext}")).collect();
        if late {
            names.push(format!("late.{ext}"));
        }
        names.sort();
        names
    };
    assert_eq!(
        ran("slow"),
        expected("a", false),
        "queued before the reload: slow's jobs"
    );
    assert_eq!(ran("bee"), expected("b", false));
    assert_eq!(ran("cee"), expected("c", true));
    let log = f.log();
    assert!(!log.contains("panicked"), "a job panicked:\n{log}");
    assert!(!log.contains("failed after"), "a job failed:\n{log}");
    f.stop();
}

/// Every trigger moves in a reload while 50 jobs of each wait: each queued path is still handled by
/// a trigger whose globs match it, and so is each path changed after the reload.
#[test]
fn a_reload_that_reorders_every_trigger_runs_each_queued_path_by_a_trigger_that_matches_it() {
    let exts = ["a", "b", "c", "d"];
    let trigger = |ext: &str| {
        format!(
            "[[trigger]]\nname = \"t{ext}\"\nglob = [\"*.{ext}\"]\nexec = [\"{{job}}\", \"record\", \"{{ledger}}.{ext}\"]\n"
        )
    };
    let blocker = concat!(
        "[[trigger]]\nname = \"blocker\"\nglob = [\"blocker\"]\n",
        "exec = [\"{job}\", \"gated\", \"{ledger}\", \"{ledger}.gate\"]\n",
    );
    let in_order: String = exts.iter().map(|e| trigger(e)).collect();
    let f = Fixture::new(JOB, &format!("{blocker}{in_order}"));
    f.edit_config("[jobs]\n", "[jobs]\nworkers = 1\n");
    f.start();
    f.hold();
    for i in 0..50 {
        for ext in exts {
            std::fs::write(f.tree.join(format!("f{i}.{ext}")), "x").unwrap();
        }
    }
    wait_for("200 jobs queued behind the blocker", LONG, || {
        let q = &f.status().1["queue"];
        q["queued"].as_u64().unwrap_or(0) + q["backlog"].as_u64().unwrap_or(0) == 200
    });
    // Every trigger changes place: d, c, b, a, then the blocker last.
    let fill = |text: String| {
        text.replace("{job}", JOB)
            .replace("{ledger}", f.ledger.to_str().unwrap())
    };
    let reversed: String = exts.iter().rev().map(|e| trigger(e)).collect();
    f.edit_config(
        &fill(format!("{blocker}{in_order}")),
        &fill(format!("{reversed}{blocker}")),
    );
    let (_, status) = f.status();
    kill(pid_of(&status, "pid"), libc::SIGHUP);
    wait_for("the reload in the log", LONG, || {
        f.log().contains("trigger(s) now active")
    });
    for ext in exts {
        std::fs::write(f.tree.join(format!("late.{ext}")), "x").unwrap();
    }
    f.release();
    f.wait_idle();
    for ext in exts {
        let bytes = std::fs::read(format!("{}.{ext}", f.ledger.display())).unwrap_or_default();
        let mut ran: Vec<String> = bytes
            .split(|&b| b == 0)
            .filter(|e| !e.is_empty())
            .map(|e| {
                let path = &e[e.iter().position(|&b| b == b'\t').unwrap() + 1..];
                let path = std::path::Path::new(OsStr::from_bytes(path));
                path.file_name().unwrap().to_string_lossy().into_owned()
            })
            .collect();
        ran.sort();
        let mut expected: Vec<String> = (0..50).map(|i| format!("f{i}.{ext}")).collect();
        expected.push(format!("late.{ext}"));
        expected.sort();
        assert_eq!(
            ran, expected,
            "trigger t{ext} ran paths its glob does not match, or missed some"
        );
    }
    let log = f.log();
    assert!(!log.contains("panicked"), "a job panicked:\n{log}");
    assert!(!log.contains("failed after"), "a job failed:\n{log}");
    f.stop();
}

/// The configuration crosses to the server whole, once per start or reload: a server the keeper
/// restarts after a crash runs what was last loaded, not what the file has said since.
#[test]
fn a_server_restarted_after_a_crash_runs_the_configuration_last_loaded() {
    let ledger_of = |name: &str| format!("\"{{ledger}}.{name}\"]");
    let f = Fixture::new(
        JOB,
        "[[trigger]]\nname = \"record\"\nexec = [\"{job}\", \"record\", \"{ledger}.started\"]\n",
    );
    let fill = |text: String| text.replace("{ledger}", f.ledger.to_str().unwrap());
    f.start();
    f.edit_config(&fill(ledger_of("started")), &fill(ledger_of("reloaded")));
    let (_, status) = f.status();
    kill(pid_of(&status, "pid"), libc::SIGHUP);
    wait_for("the reload in the log", LONG, || {
        f.log().contains("trigger(s) now active")
    });
    // Edited again, without a reload: not what ward runs.
    f.edit_config(
        &fill(ledger_of("reloaded")),
        &fill(ledger_of("never-loaded")),
    );
    let first = pid_of(&status, "server_pid");
    kill(first, libc::SIGKILL);
    wait_for("a new server", LONG, || {
        let (_, s) = f.status();
        s["state"] == "running" && s["server_pid"].as_u64().is_some_and(|p| p as u32 != first)
    });
    std::fs::write(f.tree.join("after.txt"), "x").unwrap();
    let reloaded = PathBuf::from(format!("{}.reloaded", f.ledger.display()));
    wait_for("the job after the restart", LONG, || {
        std::fs::read(&reloaded).is_ok_and(|b| b.windows(9).any(|w| w == b"after.txt"))
    });
    f.wait_idle();
    for other in ["started", "never-loaded"] {
        let path = format!("{}.{other}", f.ledger.display());
        let ran = std::fs::read(&path).unwrap_or_default();
        assert!(
            !ran.windows(9).any(|w| w == b"after.txt"),
            "after.txt ran with the {other} configuration"
        );
    }
    f.stop();
}

/// A tmpfs mounted for a test, detached when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (mount's syntax) with mode 0700 on `at`; `None` when not root.
    fn mount(at: &std::path::Path, size: &str) -> Option<Tmpfs> {
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: mounting a tmpfs needs root");
            return None;
        }
        std::fs::create_dir_all(at).unwrap();
        let status = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .status()
            .expect("running mount");
        assert!(
            status.success(),
            "mount -t tmpfs on {}: {status}",
            at.display()
        );
        Some(Tmpfs(at.to_path_buf()))
    }

    /// Writes zeros into `name` until the file system is full.
    fn fill(&self, name: &str) {
        let mut file = std::fs::File::create(self.0.join(name)).unwrap();
        let block = vec![0u8; 64 * 1024];
        loop {
            if let Err(e) = file.write_all(&block) {
                assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
                return;
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let path = std::ffi::CString::new(self.0.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid C string; a lazy unmount detaches even while files are open.
        unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
    }
}

/// Regression: on a full state disk the keeper's write of a job's output into the log failed,
/// printing that failure panicked with the log's lock held, and the panic hook's own log line
/// waited for that lock forever: the keeper never restarted a killed server again, while
/// `ward status` said it was running.
#[test]
fn a_full_state_disk_is_survived_and_a_killed_server_still_restarted() {
    let f = Fixture::new(
        JOB,
        "[[trigger]]\nname = \"chatty\"\nexec = [\"seq\", \"1\", \"500\"]\n",
    );
    let Some(disk) = Tmpfs::mount(&f.state, "2m") else {
        return;
    };
    f.start();
    f.wait_idle();
    disk.fill("filler");
    for i in 0..5 {
        std::fs::write(f.tree.join(format!("f{i}")), "x").unwrap();
    }
    wait_for("the jobs to run on the full disk", LONG, || {
        f.status().1["queue"]["completed"].as_u64() >= Some(5)
    });
    std::fs::remove_file(f.state.join("filler")).unwrap();
    let (_, before) = f.status();
    kill(pid_of(&before, "server_pid"), libc::SIGKILL);
    wait_for("a new server", LONG, || {
        let (code, now) = f.status();
        code == Some(0)
            && now["server_pid"]
                .as_u64()
                .is_some_and(|p| p != before["server_pid"])
    });
    std::fs::write(f.tree.join("after"), "x").unwrap();
    wait_for("the lost lines said in the log", LONG, || {
        f.log().contains("log line(s) could not be written")
    });
    f.stop();
    f.assert_nothing_left();
    drop(disk);
}

/// Regression: changes inside a file system mounted in the tree got no job, and after `umount`
/// its files were never reported gone.
#[test]
fn a_file_system_mounted_in_the_tree_gets_jobs_and_its_unmount_removals() {
    let f = Fixture::new(JOB, record_all());
    std::fs::create_dir(f.tree.join("mnt")).unwrap();
    f.start();
    let Some(disk) = Tmpfs::mount(&f.tree.join("mnt"), "1m") else {
        return;
    };
    std::fs::write(f.tree.join("mnt/inside"), "x").unwrap();
    let inside = f.tree.join("mnt/inside");
    let events_of = |path: &std::path::Path| -> Vec<String> {
        f.ledger_entries()
            .into_iter()
            .filter(|(_, p)| p == path.as_os_str().as_bytes())
            .map(|(event, _)| event)
            .collect()
    };
    wait_for("a job for the file in the mount", LONG, || {
        !events_of(&inside).is_empty()
    });
    drop(disk);
    wait_for("its removal after the unmount", LONG, || {
        events_of(&inside).last().is_some_and(|e| e == "removed")
    });
    f.stop();
}

/// Regression: a root missing when the keeper restarted the server made the server exit at
/// once, five times in a few seconds, and the keeper gave up.
#[test]
fn a_server_restarted_while_a_root_is_missing_waits_for_it() {
    let f = Fixture::new(JOB, record_all());
    f.start();
    let away = f.dir.path().join("tree.away");
    std::fs::rename(&f.tree, &away).unwrap();
    let (_, before) = f.status();
    kill(pid_of(&before, "server_pid"), libc::SIGKILL);
    wait_for("a new server, waiting for its root", LONG, || {
        let (code, now) = f.status();
        code == Some(0)
            && now["state"] == "running"
            && now["server_pid"]
                .as_u64()
                .is_some_and(|p| p != before["server_pid"])
    });
    std::fs::rename(&away, &f.tree).unwrap();
    std::fs::write(f.tree.join("back"), "x").unwrap();
    wait_for("a job once the root is back", LONG, || f.saw("back"));
    let (code, status) = f.status();
    assert_eq!(code, Some(0), "{status}");
    assert_eq!(status["restarts"], 1, "{status}");
    f.stop();
}

/// Regression: one job printing megabytes rotated the whole log history away, ward's own lines
/// (the ones that explain a death) with it.
#[test]
fn a_job_flooding_its_output_keeps_to_its_share_of_the_log() {
    let f = Fixture::new(
        JOB,
        concat!(
            "[log]\nmax_size_mb = 1\n\n[[trigger]]\nname = \"flood\"\n",
            "exec = [\"sh\", \"-c\", \"head -c 6000000 /dev/zero | tr '\\\\0' x | fold -w 100\"]\n",
        ),
    );
    f.start();
    std::fs::write(f.tree.join("go"), "x").unwrap();
    wait_for("the flood's held-back lines said", LONG, || {
        f.log().contains("not logged")
    });
    f.stop();
    let mut history = String::new();
    for name in ["ward.log.3", "ward.log.2", "ward.log.1", "ward.log"] {
        history.push_str(&std::fs::read_to_string(f.state.join(name)).unwrap_or_default());
    }
    assert!(
        history.contains("keeper started"),
        "ward's first lines were rotated away"
    );
}

#[test]
fn restart_replaces_the_whole_tree() {
    let f = Fixture::new(JOB, record_all());
    f.start();
    let (_, before) = f.status();
    let out = f.run(&["restart"]);
    assert!(out.status.success(), "{out:?}");
    let (code, after) = f.status();
    assert_eq!(code, Some(0), "{after}");
    assert_ne!(before["pid"], after["pid"]);
    assert!(!is_alive(pid_of(&before, "pid")) && !is_alive(pid_of(&before, "server_pid")));
    f.stop();
}

/// Regression: `ward restart` without the flags it was started with stopped the daemon, then
/// refused to start it ("nothing to run") and left it down.
#[test]
fn restart_without_arguments_restarts_the_daemon_as_it_was_launched() {
    let f = Fixture::new(JOB, record_all());
    f.start();
    let (_, before) = f.status();
    // Neither --config nor flags, from another directory: only the state directory.
    let out = ward_e2e::ward()
        .current_dir(f.dir.path().join("out"))
        .arg("--state-dir")
        .arg(&f.state)
        .arg("restart")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}\nlog:\n{}", f.log());
    let (code, after) = f.status();
    assert_eq!(code, Some(0), "{after}");
    assert_ne!(before["pid"], after["pid"], "not restarted");
    std::fs::write(f.tree.join("after.txt"), "x").unwrap();
    wait_for("a job after the restart", LONG, || f.saw("after.txt"));
    f.stop();
}

/// A restart with arguments checks them before it stops anything.
#[test]
fn restart_with_bad_arguments_refuses_them_and_leaves_the_daemon_running() {
    let f = Fixture::new(JOB, record_all());
    f.start();
    let (_, before) = f.status();
    let out = f.run(&["restart", "--workers", "0"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--workers 0: must be between 1 and 256"),
        "{out:?}"
    );
    let (code, after) = f.status();
    assert_eq!(code, Some(0), "{after}");
    assert_eq!(before["pid"], after["pid"], "stopped for nothing");
    f.stop();
}

/// Where nothing was ever started, a bare restart says what it needs instead of guessing.
#[test]
fn restart_without_arguments_where_nothing_ran_says_what_it_needs() {
    let dir = tempfile::tempdir().unwrap();
    let out = ward_e2e::ward()
        .current_dir(dir.path())
        .arg("restart")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no launch recorded here to restart"),
        "{out:?}"
    );
}

/// Regression: exec jobs ran in the directory `ward start` was run from, though the README says
/// jobs and workers run in the config file's directory (workers did).
#[test]
fn exec_jobs_run_in_the_config_files_directory() {
    let f = Fixture::new(
        JOB,
        "[[trigger]]\nname = \"pwd\"\nexec = [\"sh\", \"-c\", \"pwd > {ledger}.pwd\"]\n",
    );
    let elsewhere = tempfile::tempdir().unwrap();
    let out = f
        .ward(&["start"])
        .current_dir(elsewhere.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    std::fs::write(f.tree.join("a"), "x").unwrap();
    let seen = PathBuf::from(format!("{}.pwd", f.ledger.display()));
    wait_for("the job", LONG, || {
        std::fs::read_to_string(&seen).is_ok_and(|s| s.ends_with('\n'))
    });
    f.stop();
    assert_eq!(
        std::fs::read_to_string(&seen).unwrap().trim(),
        f.dir.path().to_str().unwrap()
    );
}

/// Regression: jobs got umask 077 under `ward start` (daemonized) and the user's under `ward run`,
/// so the same job wrote files with other modes depending on how ward was started.
#[test]
fn jobs_get_the_umask_ward_was_started_with_under_start_and_run() {
    let f = Fixture::new(
        JOB,
        "[[trigger]]\nname = \"umask\"\nexec = [\"sh\", \"-c\", \"umask >> {ledger}.umask\"]\n",
    );
    let seen = PathBuf::from(format!("{}.umask", f.ledger.display()));
    // ward as a shell with umask 027 starts it.
    let with_umask = |args: &[&str]| {
        let mut cmd = std::process::Command::new("sh");
        cmd.args(["-c", "umask 027 && exec \"$0\" \"$@\""])
            .arg(ward_e2e::ward_bin())
            .arg("--config")
            .arg(&f.config)
            .arg("--state-dir")
            .arg(&f.state)
            .args(args)
            .env_remove("RUST_LOG");
        cmd
    };
    let out = with_umask(&["start"]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    std::fs::write(f.tree.join("started.txt"), "x").unwrap();
    wait_for("the job under ward start", LONG, || {
        std::fs::read_to_string(&seen).is_ok_and(|s| s.lines().count() >= 1)
    });
    f.stop();
    let mut run = with_umask(&["run"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::fs::write(f.tree.join("ran.txt"), "x").unwrap();
    wait_for("the job under ward run", LONG, || {
        std::fs::read_to_string(&seen).is_ok_and(|s| s.lines().count() >= 2)
    });
    f.stop();
    assert!(run.wait().unwrap().success());
    let masks = std::fs::read_to_string(&seen).unwrap();
    assert!(
        masks.lines().all(|m| m.trim() == "0027"),
        "jobs ran with other umasks: {masks:?}"
    );
    // A configured umask wins over the one ward was started with.
    f.edit_config("[jobs]\n", "[jobs]\numask = \"002\"\n");
    let out = with_umask(&["start"]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    std::fs::write(f.tree.join("configured.txt"), "x").unwrap();
    wait_for("the job with a configured umask", LONG, || {
        std::fs::read_to_string(&seen).is_ok_and(|s| s.lines().count() >= 3)
    });
    f.stop();
    let masks = std::fs::read_to_string(&seen).unwrap();
    assert_eq!(
        masks.lines().nth(2).map(str::trim),
        Some("0002"),
        "{masks:?}"
    );
}

/// Regression: a server that could never start (here its socket cannot be bound: a directory
/// holds its name) was restarted five times, leaving a crash report each, and `ward start` only
/// said it exited before it was ready. It now says why, once, and the keeper gives up at once.
#[test]
fn a_server_that_cannot_start_is_reported_once_with_its_reason_and_not_restarted() {
    let f = Fixture::new(JOB, record_all());
    std::fs::create_dir_all(f.state.join("ward.sock/in-the-way")).unwrap();
    std::fs::set_permissions(
        &f.state,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let out = f.run(&["start"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot start") && stderr.contains("ward.sock"),
        "the reason is not on the terminal: {stderr}"
    );
    let log = f.log();
    assert_eq!(
        log.matches("server started").count(),
        1,
        "the server was restarted:\n{log}"
    );
    assert!(log.contains("not restarting it"), "{log}");
    let reports = std::fs::read_dir(f.state.join("crashes"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(reports, 0, "a failure to start is not a crash:\n{log}");
    let (code, status) = f.status();
    assert_eq!(code, Some(3), "{status}");
    assert!(
        status["reason"]
            .as_str()
            .is_some_and(|r| r.contains("cannot start")),
        "{status}"
    );
}

#[test]
fn a_state_dir_open_to_others_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let f = Fixture::new(JOB, record_all());
    std::fs::create_dir_all(&f.state).unwrap();
    std::fs::set_permissions(&f.state, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = f.run(&["start"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("state directory") && stderr.contains("chmod 700"),
        "{stderr}"
    );
    f.assert_nothing_left();
}

/// Regression: a 0755 state directory was accepted as it was, `ward start` made `ward.log` 0644
/// (job output readable by others), and symlinks planted as `ward.pid` or `ward.log` were followed.
#[test]
fn state_files_are_private_and_planted_symlinks_are_refused() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let f = Fixture::new(JOB, record_all());
    std::fs::create_dir_all(&f.state).unwrap();
    std::fs::set_permissions(&f.state, std::fs::Permissions::from_mode(0o755)).unwrap();
    f.start();
    let mode = |path: &std::path::Path| std::fs::metadata(path).unwrap().mode() & 0o777;
    assert_eq!(mode(&f.state), 0o700);
    for name in ["ward.log", "ward.pid", "keeper.json"] {
        assert_eq!(mode(&f.state.join(name)), 0o600, "{name}");
    }
    f.stop();
    let elsewhere = f.dir.path().join("elsewhere");
    for name in ["ward.pid", "ward.log"] {
        let planted = f.state.join(name);
        let _ = std::fs::remove_file(&planted);
        std::os::unix::fs::symlink(&elsewhere, &planted).unwrap();
        let out = f.run(&["start"]);
        assert!(!out.status.success(), "{name}: {out:?}");
        assert!(!elsewhere.exists(), "{name} was followed");
        std::fs::remove_file(&planted).unwrap();
    }
    f.assert_nothing_left();
}

#[test]
fn a_state_dir_inside_the_watched_tree_triggers_no_jobs() {
    let f = Fixture::new(
        JOB,
        concat!(
            "[[trigger]]\nname = \"fail\"\nglob = [\"*.fail\"]\nexec = [\"{job}\", \"exit\", \"3\"]\n",
            "[[trigger]]\nname = \"record\"\nexec = [\"{job}\", \"record\", \"{ledger}\"]\n",
        ),
    );
    let state = f.tree.join(".ward");
    let ward = |args: &[&str]| {
        ward_e2e::ward()
            .arg("--config")
            .arg(&f.config)
            .arg("--state-dir")
            .arg(&state)
            .args(args)
            .output()
            .unwrap()
    };
    assert!(ward(&["start"]).status.success());
    // A failing job writes a crash report (and log lines) into the state dir.
    std::fs::write(f.tree.join("x.fail"), "x").unwrap();
    wait_for("a crash report in the state dir", LONG, || {
        std::fs::read_dir(state.join("crashes")).is_ok_and(|d| {
            d.flatten()
                .any(|e| e.path().extension().is_some_and(|x| x == "json"))
        })
    });
    std::fs::write(f.tree.join("sentinel.txt"), "x").unwrap();
    wait_for("the sentinel's job", LONG, || f.saw("sentinel.txt"));
    assert!(ward(&["stop"]).status.success());
    let own: Vec<_> = f
        .ledger_entries()
        .into_iter()
        .filter(|(_, p)| p.starts_with(state.as_os_str().as_bytes()))
        .collect();
    assert!(own.is_empty(), "jobs ran on ward's own state: {own:?}");
}

#[test]
fn an_idle_worker_is_stopped_with_sigterm_not_killed_with_its_job_thread() {
    let f = Fixture::new(
        JOB,
        "[[trigger]]\nworker = [\"{job}\", \"worker\", \"{ledger}\"]\n",
    );
    f.start();
    std::fs::write(f.tree.join("one.txt"), "1").unwrap();
    wait_for("the worker's job", LONG, || f.saw("one.txt"));
    f.stop();
    // The pool joins its job threads while draining; a worker forked by one of them would die
    // of its parent-death signal (SIGKILL) then, before the server could stop it gracefully.
    let log = f.log();
    assert!(
        log.contains("exited: killed by signal 15 (SIGTERM)"),
        "worker not stopped gracefully:\n{log}"
    );
}

#[test]
fn a_jobs_own_children_do_not_outlive_a_killed_server() {
    // The job's shell starts `sleep` in the background and waits: when the server is SIGKILLed the
    // shell dies of its parent-death signal, and `sleep`, which has none, is orphaned.
    let f = Fixture::new(
        JOB,
        "[[trigger]]\nexec = [\"sh\", \"-c\", \"sleep 300 & echo $! > \\\"$0\\\"; wait\", \"{ledger}.orphan\"]\n",
    );
    f.start();
    std::fs::write(f.tree.join("go"), "x").unwrap();
    let marker = f.dir.path().join("out/ledger.orphan");
    let mut orphan = 0;
    wait_for("the job's background child", LONG, || {
        orphan = std::fs::read_to_string(&marker)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        orphan != 0 && is_alive(orphan)
    });
    let (_, status) = f.status();
    kill(pid_of(&status, "server_pid"), libc::SIGKILL);
    wait_for("the orphaned child to be killed", LONG, || {
        !is_alive(orphan)
    });
    // The keeper says so once it has killed it: the test may see it dead first.
    let said = format!("killed orphaned process {orphan}");
    wait_for("the keeper to say it killed the orphan", LONG, || {
        f.log().contains(&said)
    });
    f.stop();
}

#[test]
fn a_job_still_running_at_the_drain_deadline_is_stopped_and_kept_for_the_next_start() {
    let f = Fixture::new(
        JOB,
        "[[trigger]]\nexec = [\"{job}\", \"gated\", \"{ledger}\", \"{ledger}.gate\"]\n",
    );
    f.edit_config("drain_timeout_s = 5", "drain_timeout_s = 1");
    f.start();
    std::fs::write(f.tree.join("slow"), "v1").unwrap();
    wait_for("the job to run", LONG, || {
        f.status().1["queue"]["running"] == 1
    });
    f.stop();
    let log = f.log();
    assert!(
        log.contains("ward is stopping") && log.contains("server stopped cleanly"),
        "{log}"
    );
    assert!(!f.saw("slow"));
    // The job that was stopped runs again at the next start.
    std::fs::write(f.dir.path().join("out/ledger.gate"), "").unwrap();
    f.start();
    wait_for("the kept job", LONG, || f.saw("slow"));
    f.stop();
}

#[test]
fn a_job_past_its_timeout_is_stopped_and_reported_as_hung() {
    let f = Fixture::new(
        JOB,
        "[[trigger]]\nexec = [\"{job}\", \"gated\", \"{ledger}\", \"{ledger}.gate\"]\n",
    );
    f.edit_config("[jobs]\n", "[jobs]\ntimeout_s = 1\nretries = 0\n");
    f.start();
    std::fs::write(f.tree.join("stuck"), "x").unwrap();
    wait_for("a report of the hung job", LONG, || {
        let out = f.run(&["diagnose", "--json"]);
        let reports: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        reports.as_array().is_some_and(|all| {
            all.iter().any(|r| {
                r["role"]
                    .as_str()
                    .is_some_and(|role| role.contains("stuck"))
                    && r["verdict"]["cause"]["kind"] == "hung"
            })
        })
    });
    f.stop();
}

#[test]
fn a_file_renamed_while_its_job_waits_is_not_left_looking_present() {
    // The one job thread is held, so jobs wait in the queue while files change under them.
    let f = Fixture::held(JOB);
    std::fs::write(f.tree.join("old"), "1").unwrap();
    wait_for("the new file's job queued", LONG, || {
        let q = &f.status().1["queue"];
        q["queued"].as_u64().unwrap_or(0) + q["backlog"].as_u64().unwrap_or(0) >= 1
    });
    std::fs::rename(f.tree.join("old"), f.tree.join("new")).unwrap();
    wait_for("the rename seen", LONG, || {
        let out = f.run(&["changes", "--since", "0"]);
        String::from_utf8_lossy(&out.stdout).contains("\"renamed\"")
    });
    f.release();
    f.wait_idle();
    let old = f.tree.join("old");
    let last_for_old = f
        .ledger_entries()
        .into_iter()
        .rfind(|(_, p)| p == old.as_os_str().as_bytes());
    assert_eq!(
        last_for_old.map(|(e, _)| e),
        Some("removed".to_owned()),
        "the old path's last job must say it is gone: {:?}",
        f.ledger_entries()
    );
    assert!(f.saw("new"));
    f.stop();
}

#[test]
fn start_right_after_the_keeper_is_killed_waits_for_its_last_thread_to_let_go() {
    use std::os::unix::fs::DirBuilderExt;
    let f = Fixture::new(
        JOB,
        "[[trigger]]\nexec = [\"{job}\", \"record\", \"{ledger}\"]\n",
    );
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&f.state)
        .unwrap();
    ward_e2e::ward_bin(); // built now, not while the lock is held
    // A keeper SIGKILLed a moment ago: its main thread is a zombie, another thread still exits,
    // and the pidfile's lock goes only with that one.
    let mut dying = std::process::Command::new(JOB)
        .arg("hold-lock")
        .arg(f.state.join("ward.pid"))
        .arg("1500")
        .spawn()
        .unwrap();
    wait_for("its main thread to end", LONG, || !is_alive(dying.id()));
    assert!(
        std::fs::read_dir(format!("/proc/{}/task", dying.id()))
            .is_ok_and(|threads| threads.count() == 2),
        "the lock holder ended before ward was started: the test proves nothing"
    );
    f.start();
    assert!(dying.wait().unwrap().success());
    f.stop();
}

#[test]
fn the_keeper_runs_as_ward_keeper_and_inside_ward_when_that_binary_is_missing() {
    let f = Fixture::new(
        JOB,
        "[[trigger]]\nexec = [\"{job}\", \"record\", \"{ledger}\"]\n",
    );
    let keeper_exe = |f: &Fixture| {
        let pid = f.status().1["pid"].as_u64().expect("keeper pid");
        std::fs::read_link(format!("/proc/{pid}/exe")).unwrap()
    };
    f.start();
    assert_eq!(
        keeper_exe(&f).file_name(),
        Some(OsStr::new("ward-keeper")),
        "the lean keeper binary beside ward must be used"
    );
    f.stop();

    // A `ward` copied alone: the keeper runs in the ward process, and still works.
    let alone = f.dir.path().join("bin/ward");
    std::fs::create_dir_all(alone.parent().unwrap()).unwrap();
    std::fs::copy(ward_e2e::ward_bin(), &alone).unwrap();
    let ward_alone = |args: &[&str]| {
        std::process::Command::new(&alone)
            .arg("--config")
            .arg(&f.config)
            .arg("--state-dir")
            .arg(&f.state)
            .args(args)
            .output()
            .unwrap()
    };
    let out = ward_alone(&["start"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(keeper_exe(&f), alone);
    std::fs::write(f.tree.join("seen"), "x").unwrap();
    wait_for("the file processed", LONG, || f.saw("seen"));
    assert!(ward_alone(&["stop"]).status.success());
}

#[test]
fn removing_a_watched_directory_logs_its_files_gone_and_no_warning() {
    let f = Fixture::new(JOB, record_all());
    std::fs::create_dir_all(f.tree.join("sub/deeper")).unwrap();
    f.start();
    std::fs::write(f.tree.join("sub/deeper/file"), "x").unwrap();
    wait_for("the file's job", LONG, || f.saw("sub/deeper/file"));
    std::fs::remove_dir_all(f.tree.join("sub")).unwrap();
    let gone = f.tree.join("sub/deeper/file");
    wait_for("the file's removal job", LONG, || {
        f.ledger_entries()
            .iter()
            .any(|(e, p)| e == "removed" && p == gone.as_os_str().as_bytes())
    });
    f.stop();
    // The kernel drops a deleted directory's watch itself; that notify then fails to remove it
    // is nothing a user should be warned about on every `rm -r`.
    let log = f.log();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect();
    assert!(warnings.is_empty(), "warnings in the log: {warnings:#?}");
}

/// The pids of `parent`'s children that have exited and not been reaped (zombies), from /proc.
fn zombie_children(parent: u32) -> Vec<u32> {
    ward_sys::processes()
        .into_iter()
        .filter_map(|(pid, stat)| (stat.ppid == parent && stat.is_zombie()).then_some(pid))
        .collect()
}

#[test]
fn background_children_of_jobs_are_reaped_as_they_exit_not_left_as_zombies() {
    // Each job's shell leaves `sleep` running in the background and exits. The sleep is orphaned
    // to the keeper, the tree's subreaper, which must reap it once it exits while the server runs:
    // left to the next death of the server, such zombies pile up until the machine has no pids.
    const FILES: usize = 50;
    let f = Fixture::new(
        JOB,
        "[[trigger]]\nexec = [\"sh\", \"-c\", \"sleep 0.1 & echo x >> \\\"$0\\\"\", \"{ledger}.done\"]\n",
    );
    f.start();
    for i in 0..FILES {
        std::fs::write(f.tree.join(format!("f{i}")), "x").unwrap();
    }
    let done = f.dir.path().join("out/ledger.done");
    wait_for("every file's job", LONG, || {
        std::fs::read_to_string(&done).is_ok_and(|s| s.lines().count() >= FILES)
    });
    f.wait_idle();
    let keeper = pid_of(&f.status().1, "pid");
    let deadline = std::time::Instant::now() + LONG;
    let mut zombies = zombie_children(keeper);
    while !zombies.is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        zombies = zombie_children(keeper);
    }
    assert!(
        zombies.is_empty(),
        "{} zombies still under the keeper (pid {keeper}) after {LONG:?}: {zombies:?}",
        zombies.len()
    );
    assert!(
        f.status().1["server_pid"]
            .as_u64()
            .is_some_and(|p| is_alive(p as u32))
    );
    f.stop();
    f.assert_nothing_left();
}

/// A trigger's `concurrency` caps its jobs in the pool, so that its slow jobs never take every
/// worker: here three gated jobs of `slow` wait while `fast` files are processed on the other
/// worker. Without the cap the two workers both hold a gated job and `fast` waits for the gate.
#[test]
fn a_trigger_at_its_concurrency_never_holds_back_another_triggers_jobs() {
    let f = Fixture::new(
        JOB,
        concat!(
            "[[trigger]]\nname = \"slow\"\nglob = [\"*.slow\"]\nconcurrency = 1\n",
            "exec = [\"{job}\", \"gated\", \"{ledger}\", \"{ledger}.gate\"]\n",
            "[[trigger]]\nname = \"fast\"\nexec = [\"{job}\", \"record\", \"{ledger}\"]\n",
        ),
    );
    f.edit_config("[jobs]\n", "[jobs]\nworkers = 2\n");
    f.start();
    for i in 0..3 {
        std::fs::write(f.tree.join(format!("{i}.slow")), "s").unwrap();
    }
    wait_for("a slow job to run", LONG, || {
        f.status().1["queue"]["running"].as_u64() >= Some(1)
    });
    for i in 0..5 {
        std::fs::write(f.tree.join(format!("{i}.fast")), "f").unwrap();
    }
    wait_for("the fast jobs while the slow ones wait", LONG, || {
        (0..5).all(|i| f.saw(&format!("{i}.fast")))
    });
    let (_, status) = f.status();
    assert_eq!(
        status["queue"]["running"], 1,
        "one slow job at a time: {status}"
    );
    f.release();
    wait_for("every slow job after the gate opens", LONG, || {
        (0..3).all(|i| f.saw(&format!("{i}.slow")))
    });
    f.stop();
}

/// Each trigger's `retries` and backoff override `[jobs]`'s: one trigger's failing job is tried
/// once, another's four times.
#[test]
fn each_trigger_retries_its_failed_jobs_as_it_says() {
    let f = Fixture::new(
        JOB,
        concat!(
            "[[trigger]]\nname = \"once\"\nglob = [\"*.once\"]\nretries = 0\n",
            "exec = [\"sh\", \"-c\", \"echo \\\"$WARD_PATH\\\" >> {ledger}.tries; exit 1\"]\n",
            "[[trigger]]\nname = \"four\"\nglob = [\"*.four\"]\nretries = 3\n",
            "backoff_s = 0.01\nbackoff_max_s = 0.05\n",
            "exec = [\"sh\", \"-c\", \"echo \\\"$WARD_PATH\\\" >> {ledger}.tries; exit 1\"]\n",
        ),
    );
    f.edit_config("[jobs]\n", "[jobs]\nretries = 1\n");
    // Written before the start, so that only the start's comparison owes their jobs: a file
    // written just after ready may be found by that comparison and reported by the watcher
    // too, and each would run its job (at least once allows it; this test counts attempts).
    std::fs::write(f.tree.join("a.once"), "x").unwrap();
    std::fs::write(f.tree.join("b.four"), "x").unwrap();
    f.start();
    wait_for("both to give up", LONG, || {
        f.status().1["manifest"]["gave_up"] == 2
    });
    f.stop();
    let tries = std::fs::read_to_string(format!("{}.tries", f.ledger.display())).unwrap();
    let count = |suffix: &str| tries.lines().filter(|l| l.ends_with(suffix)).count();
    assert_eq!((count(".once"), count(".four")), (1, 4), "{tries}");
}

/// The daemon in a v1 memory cgroup of its own (this machine's memory controller is v1): with
/// the cgroup's limit brought down to its usage plus 64 MiB, less than `min_available_mb`, no
/// job starts and `ward status` says why; with the limit raised again, the job waiting runs.
/// Nothing is killed here: the limit always stays above the usage.
#[test]
fn jobs_pause_while_memory_is_short_in_a_real_cgroup_and_resume_when_it_is_back() {
    let f = Fixture::new(JOB, record_all());
    f.edit_config("[jobs]\n", "[jobs]\nmin_available_mb = 128\n");
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let path = own
        .lines()
        .find_map(|l| l.split_once(":memory:").map(|(_, p)| p.to_owned()))
        .expect("this test needs the v1 memory controller this machine has");
    let cgroup = PathBuf::from(format!(
        "/sys/fs/cgroup/memory{}/ward-pressure-{}",
        path.trim_end_matches('/'),
        std::process::id()
    ));
    std::fs::create_dir(&cgroup).expect("making a memory cgroup (as root)");
    let set_limit = |bytes: u64| {
        std::fs::write(cgroup.join("memory.limit_in_bytes"), bytes.to_string()).unwrap();
    };
    set_limit(4 << 30);
    let out = std::process::Command::new("sh")
        .args([
            "-c",
            "echo $$ > \"$0/cgroup.procs\" && shift && exec \"$@\"",
        ])
        .arg(&cgroup)
        .arg("-")
        .arg(ward_e2e::ward_bin())
        .arg("--config")
        .arg(&f.config)
        .arg("--state-dir")
        .arg(&f.state)
        .arg("start")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    std::fs::write(f.tree.join("before.txt"), "x").unwrap();
    wait_for("a job with memory to spare", LONG, || f.saw("before.txt"));

    let usage: u64 = std::fs::read_to_string(cgroup.join("memory.usage_in_bytes"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    set_limit(usage + (64 << 20));
    wait_for("ward status to say jobs are held", LONG, || {
        f.status().1["queue"]["held"]
            .as_str()
            .is_some_and(|why| why.contains("below min_available_mb 128"))
    });
    std::fs::write(f.tree.join("short.txt"), "x").unwrap();
    wait_for("the job to wait", LONG, || {
        let q = &f.status().1["queue"];
        q["queued"].as_u64() >= Some(1) || q["backlog"].as_u64() >= Some(1)
    });
    assert!(!f.saw("short.txt"), "a job started while memory was short");
    let text = f.run(&["status"]);
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("none starts while memory is short"),
        "{text:?}"
    );

    set_limit(4 << 30);
    wait_for("the job once memory is back", LONG, || f.saw("short.txt"));
    assert_eq!(f.status().1["queue"]["held"], serde_json::Value::Null);
    assert!(f.log().contains("memory is short"), "{}", f.log());
    f.stop();
    wait_for("the cgroup to empty", LONG, || {
        std::fs::read_to_string(cgroup.join("cgroup.procs")).is_ok_and(|p| p.trim().is_empty())
    });
    std::fs::remove_dir(&cgroup).unwrap();
}

/// `watch.backend = "auto"` (the default) watches with fanotify where it may (root here) and
/// says so in `ward status`; a backend named is used, and a change is seen either way.
#[test]
fn ward_status_says_which_backend_watches_and_each_one_sees_changes() {
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    for (setting, want) in [
        ("", if root { "fanotify" } else { "inotify" }),
        ("backend = \"inotify\"\n", "inotify"),
        (
            "backend = \"fanotify\"\n",
            if root { "fanotify" } else { "inotify" },
        ),
    ] {
        let f = Fixture::new(JOB, record_all());
        f.edit_config(
            "debounce_ms = 20\n",
            &format!("debounce_ms = 20\n{setting}"),
        );
        f.start();
        let watch = f.status().1["watch"].clone();
        assert_eq!(watch["backend"], want, "{setting}: {watch}");
        // Asked for and not had: the reason is said.
        assert_eq!(
            watch["backend_fallback"].is_string(),
            setting.contains("fanotify") && !root,
            "{watch}"
        );
        std::fs::create_dir_all(f.tree.join("d/e")).unwrap();
        std::fs::write(f.tree.join("d/e/new.txt"), "x").unwrap();
        wait_for("the new file's job", LONG, || f.saw("d/e/new.txt"));
        f.wait_idle();
        // Once: the new directories' contents come from the watcher alone (a comparison of the
        // new directory with the manifest, racing its file's change, ran the job twice).
        let new = f.tree.join("d/e/new.txt");
        let runs = f
            .ledger_entries()
            .iter()
            .filter(|(_, p)| p == new.as_os_str().as_bytes())
            .count();
        assert_eq!(runs, 1, "{setting}");
        let text = f.run(&["status"]);
        let text = String::from_utf8_lossy(&text.stdout);
        assert!(text.contains(&format!("with {want}")), "{text}");
        f.stop();
    }
}

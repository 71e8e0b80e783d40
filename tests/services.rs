//! End-to-end tests of services (`[[service]]`): kept running under their restart policy, each
//! death reported, shown by `ward status`, and gone, with every process of their group, after
//! `ward stop`.

use std::path::Path;
use std::time::Duration;

use ward_e2e::{Fixture, free_port, have_tool, is_alive, wait_for};

const LONG: Duration = Duration::from_secs(30);
/// The job program built with these tests (see `bin/ward-test-job.rs`).
const JOB: &str = env!("CARGO_BIN_EXE_ward-test-job");

/// The status of service `name` in `ward status --json`.
fn service(f: &Fixture, name: &str) -> serde_json::Value {
    let (_, status) = f.status();
    status["services"]
        .as_array()
        .and_then(|all| all.iter().find(|s| s["name"] == name).cloned())
        .unwrap_or_else(|| panic!("no service {name} in {status}"))
}

fn pid_in(path: &Path) -> u32 {
    wait_for(&format!("a pid in {}", path.display()), LONG, || {
        std::fs::read_to_string(path).is_ok_and(|s| s.ends_with('\n'))
    });
    std::fs::read_to_string(path)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn a_service_killed_from_outside_is_restarted_and_its_death_reported() {
    let f = Fixture::new(
        JOB,
        "[[service]]\nname = \"web\"\ncommand = [\"sh\", \"-c\", \"echo started; exec sleep 1000\"]\n",
    );
    f.start();
    wait_for("the service to run", LONG, || {
        service(&f, "web")["pid"].is_u64()
    });
    let first = service(&f, "web");
    let pid = u32::try_from(first["pid"].as_u64().unwrap()).unwrap();
    assert!(is_alive(pid));
    assert_eq!(first["restarts"], 0, "{first}");
    // Its output is in ward's log under its name.
    wait_for("its output in the log", LONG, || {
        f.log().contains("service web [") && f.log().contains("]: started")
    });

    // SAFETY: kill with the service's pid, alive a moment ago and unreaped by its parent.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    wait_for("a new process of the service", LONG, || {
        let s = service(&f, "web");
        s["pid"].as_u64().is_some_and(|p| p != u64::from(pid))
    });
    let now = service(&f, "web");
    assert_eq!(now["restarts"], 1, "{now}");
    wait_for("the report of its death", LONG, || {
        !f.reports_about("service web").is_empty()
    });
    let report = &f.reports_about("service web")[0];
    assert_eq!(report["wait_status"]["signal"], libc::SIGKILL, "{report}");
    assert!(
        now["last_cause"]
            .as_str()
            .is_some_and(|c| c.contains("SIGKILL")),
        "{now}"
    );
    let text = String::from_utf8_lossy(&f.run(&["status"]).stdout).into_owned();
    assert!(text.contains("service    web: "), "{text}");
    f.stop();
    f.assert_nothing_left();
}

#[test]
fn ward_stop_leaves_no_process_of_a_service_s_group_behind() {
    let f = Fixture::new(
        JOB,
        "[[service]]\nname = \"forker\"\ncommand = [\"sh\", \"-c\", \"sleep 1000 & echo $! > {ledger}.child; echo $$ > {ledger}.main; wait\"]\n",
    );
    f.start();
    let main = pid_in(Path::new(&format!("{}.main", f.ledger.display())));
    let child = pid_in(Path::new(&format!("{}.child", f.ledger.display())));
    assert!(is_alive(main) && is_alive(child));
    f.stop();
    assert!(!is_alive(main), "the service outlived ward stop");
    assert!(!is_alive(child), "the service's child outlived ward stop");
    assert!(f.log().contains("stopping service forker"), "{}", f.log());
}

#[test]
fn a_service_that_keeps_failing_gives_up_and_triggers_still_run() {
    let f = Fixture::new(
        JOB,
        concat!(
            "[[service]]\nname = \"broken\"\ncommand = [\"sh\", \"-c\", \"exit 1\"]\n",
            "restart_max = 1\nrestart_window_s = 60\n",
            "[[trigger]]\nname = \"record\"\nexec = [\"{job}\", \"record\", \"{ledger}\"]\n",
        ),
    );
    f.start();
    wait_for("the service to give up", LONG, || {
        service(&f, "broken")["state"] == "gave-up"
    });
    let s = service(&f, "broken");
    assert_eq!(s["restarts"], 1, "{s}");
    assert!(s["pid"].is_null(), "{s}");
    assert!(f.log().contains("service broken gave up"), "{}", f.log());
    let text = String::from_utf8_lossy(&f.run(&["status"]).stdout).into_owned();
    assert!(text.contains("service    broken: gave-up"), "{text}");
    std::fs::write(f.tree.join("after"), "x").unwrap();
    wait_for("the trigger's job", LONG, || f.saw("after"));
    // A reload that changes the service starts it again under its new policy.
    f.edit_config("restart_max = 1", "restart_max = 2");
    let out = f.run(&["reload"]);
    assert!(out.status.success(), "{out:?}");
    wait_for(
        "the changed service to give up again, after 2 restarts",
        LONG,
        || {
            let s = service(&f, "broken");
            s["state"] == "gave-up" && s["restarts"] == 2
        },
    );
    assert!(
        f.log().contains("reload: service broken changed"),
        "{}",
        f.log()
    );
    f.stop();
}

#[test]
fn ward_check_lists_services() {
    let f = Fixture::new(
        JOB,
        "[[service]]\nname = \"web\"\ncommand = [\"python3\", \"-m\", \"http.server\"]\npolicy = \"pm2\"\n\
         ready = { tcp = \"127.0.0.1:8000\", timeout_s = 5 }\nwatchdog_s = 3\n",
    );
    let out = f.run(&["check"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{out:?}");
    assert!(
        text.contains("service web (python3 -m http.server, policy pm2)"),
        "{text}"
    );
    assert!(
        text.contains("ready: tcp 127.0.0.1:8000 within 5 s, watchdog: WATCHDOG=1 every 3 s"),
        "{text}"
    );
}

/// A service that prints a flood logs at most its share (256 KiB a minute): it cannot rotate
/// ward's own history out of `ward.log`.
#[test]
fn a_service_printing_a_flood_logs_only_its_share() {
    let f = Fixture::new(
        JOB,
        concat!(
            "[[service]]\nname = \"loud\"\ncommand = [\"sh\", \"-c\", ",
            "\"for i in $(seq 400); do printf 'flood-line-of-a-loud-service %02000d\\n' $i; ",
            "[ $((i % 20)) = 0 ] && sleep 0.02; done; echo done >> {ledger}.done; exec sleep 1000\"]\n",
        ),
    );
    f.start();
    wait_for("the flood to be written", LONG, || {
        std::fs::read_to_string(format!("{}.done", f.ledger.display())).is_ok()
    });
    f.stop();
    // 400 lines of 2 KiB: 800 KiB printed, slowly enough for the log to keep up.
    let line = "flood-line-of-a-loud-service";
    let logged = f.log().lines().filter(|l| l.contains(line)).count() * (line.len() + 2002);
    assert!(
        logged > 0 && logged <= 256 * 1024,
        "{logged} bytes of the flood logged"
    );
}

fn accepts(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

fn pid_of(value: &serde_json::Value) -> Option<u32> {
    value["pid"].as_u64().and_then(|p| u32::try_from(p).ok())
}

/// Python's `http.server` as a service with tcp readiness: `running` only once the port
/// accepts; SIGKILLed from outside, it is restarted and ready again, and its report says the
/// kill came from outside.
#[test]
fn an_http_server_is_ready_on_its_port_and_restarted_after_a_kill_from_outside() {
    if !have_tool("python3", "python3") {
        return;
    }
    let port = free_port();
    let f = Fixture::new(
        JOB,
        &format!(
            "[[service]]\nname = \"web\"\ncommand = [\"python3\", \"-m\", \"http.server\", \"--bind\", \"127.0.0.1\", \"{port}\"]\n\
             ready = {{ tcp = \"127.0.0.1:{port}\", timeout_s = 30 }}\n"
        ),
    );
    f.start();
    wait_for("the service to be ready", LONG, || {
        service(&f, "web")["state"] == "running"
    });
    assert!(accepts(port), "running before its port accepts");
    assert!(f.log().contains("service web is ready"), "{}", f.log());
    let first = pid_of(&service(&f, "web")).unwrap();
    // SAFETY: kill with the service's pid, alive a moment ago and unreaped by its parent.
    unsafe { libc::kill(first as libc::pid_t, libc::SIGKILL) };
    wait_for("a new process, ready", LONG, || {
        let s = service(&f, "web");
        pid_of(&s).is_some_and(|p| p != first) && s["state"] == "running"
    });
    assert!(accepts(port));
    wait_for("the report of its death", LONG, || {
        !f.reports_about("service web").is_empty()
    });
    let report = &f.reports_about("service web")[0];
    assert_eq!(
        report["verdict"]["cause"]["kind"], "killed_by_signal",
        "{report:#}"
    );
    assert!(
        f.log().contains("killed from outside by SIGKILL"),
        "{}",
        f.log()
    );
    f.stop();
    f.assert_nothing_left();
}

/// A service past its memory limit is killed by its cgroup's OOM killer (SIGKILL, not an
/// allocation failure): its report names the OOM kill and the limit.
#[test]
fn a_service_killed_by_its_memory_cgroup_is_reported_as_an_oom_kill_with_its_limit() {
    if !have_tool("python3", "python3") {
        return;
    }
    let f = Fixture::new(
        JOB,
        "[[service]]\nname = \"hog\"\nrestart = \"never\"\nmemory_max_mb = 64\n\
         command = [\"python3\", \"-c\", \"import time\\nb = []\\nwhile True: b.append(bytearray(8 << 20))\"]\n",
    );
    if ward_supervisor::probe_memory_cgroup().is_err() {
        // No memory cgroup here: the service cannot start, and says why.
        f.start();
        wait_for("the refusal", LONG, || {
            service(&f, "hog")["state"] == "gave-up"
        });
        let s = service(&f, "hog");
        assert!(s["last_cause"].as_str().unwrap().contains("cgroup"), "{s}");
        f.stop();
        return;
    }
    f.start();
    wait_for("the report of its death", LONG, || {
        !f.reports_about("service hog").is_empty()
    });
    let report = &f.reports_about("service hog")[0];
    assert_eq!(report["verdict"]["cause"]["kind"], "oom_kill", "{report:#}");
    assert_eq!(report["wait_status"]["signal"], libc::SIGKILL, "{report}");
    let s = service(&f, "hog");
    assert!(
        s["last_cause"]
            .as_str()
            .is_some_and(|c| c.contains("memory limit of 64 MiB")),
        "{s}"
    );
    f.stop();
}

/// Python segfaulting through ctypes with faulthandler on: a native crash (SIGSEGV), and
/// Python's own traceback, which faulthandler printed on stderr, is in the report.
#[test]
fn a_python_service_segfaulting_through_ctypes_leaves_its_traceback_in_the_report() {
    if !have_tool("python3", "python3") {
        return;
    }
    let f = Fixture::new(
        JOB,
        "[[service]]\nname = \"crashy\"\nrestart = \"never\"\n\
         command = [\"python3\", \"-X\", \"faulthandler\", \"-c\", \"import ctypes\\ndef deep():\\n    ctypes.string_at(0)\\ndeep()\"]\n",
    );
    f.start();
    wait_for("the report of its death", LONG, || {
        !f.reports_about("service crashy").is_empty()
    });
    let report = &f.reports_about("service crashy")[0];
    assert_eq!(
        report["verdict"]["cause"]["kind"], "native_crash",
        "{report:#}"
    );
    assert_eq!(report["wait_status"]["signal"], libc::SIGSEGV, "{report}");
    let text = report.to_string();
    assert!(
        text.contains("Fatal Python error: Segmentation fault"),
        "{report:#}"
    );
    assert!(text.contains("in deep"), "{report:#}");
    f.stop();
}

/// A service whose worker double-forks and calls setsid, leaving the service's process group:
/// its cgroup takes it down on `ward service stop`, on `ward stop`, and when the keeper is
/// SIGKILLed.
#[test]
fn a_services_setsid_workers_never_outlive_it() {
    let f = Fixture::new(
        JOB,
        "[[service]]\nname = \"spawner\"\n\
         command = [\"sh\", \"-c\", \"setsid sh -c 'sleep 1000 & echo $! >> {ledger}.workers' & exec sleep 1000\"]\n",
    );
    let workers = std::path::PathBuf::from(format!("{}.workers", f.ledger.display()));
    let count = || {
        std::fs::read_to_string(&workers)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    let last_worker = || {
        std::fs::read_to_string(&workers)
            .unwrap()
            .lines()
            .last()
            .unwrap()
            .parse::<u32>()
            .unwrap()
    };
    let cgroups = ward_supervisor::probe_memory_cgroup().is_ok();
    f.start();
    wait_for("a worker", LONG, || count() == 1);
    let worker = last_worker();
    assert!(is_alive(worker));
    let out = f.run(&["service", "stop", "spawner"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(service(&f, "spawner")["state"], "stopped");
    if !cgroups {
        // Said at the start: the fallback is the process group, which a setsid worker left.
        assert!(
            f.log()
                .contains("services run without a cgroup of their own")
        );
        f.stop();
        return;
    }
    wait_for("the worker gone with the stop", LONG, || !is_alive(worker));

    let out = f.run(&["service", "start", "spawner"]);
    assert!(out.status.success(), "{out:?}");
    wait_for("a second worker", LONG, || count() == 2);
    let worker = last_worker();
    f.stop();
    assert!(!is_alive(worker), "the worker outlived ward stop");

    f.start();
    wait_for("a third worker", LONG, || count() == 3);
    let worker = last_worker();
    let (_, status) = f.status();
    let keeper = u32::try_from(status["pid"].as_u64().unwrap()).unwrap();
    // SAFETY: kill with the keeper's pid from its status, alive a moment ago.
    unsafe { libc::kill(keeper as libc::pid_t, libc::SIGKILL) };
    wait_for("the worker gone with the keeper", LONG, || {
        !is_alive(worker)
    });
    wait_for("nothing of the tree left", LONG, || {
        f.processes().is_empty()
    });
}

/// `depends_on`: a service starts once what it depends on is ready, and stops before it; a
/// cycle is refused with its place in the file.
#[test]
fn a_service_starts_after_its_dependency_is_ready_and_stops_before_it() {
    let f = Fixture::new(
        JOB,
        "[[service]]\nname = \"web\"\ndepends_on = [\"db\"]\n\
         command = [\"sh\", \"-c\", \"test -e {ledger}.db-ready && echo yes > {ledger}.web-saw-db; exec sleep 1000\"]\n\
         [[service]]\nname = \"db\"\nready = { file = \"out/ledger.db-ready\" }\n\
         command = [\"sh\", \"-c\", \"sleep 0.3; touch {ledger}.db-ready; exec sleep 1000\"]\n",
    );
    f.start();
    assert_eq!(service(&f, "web")["state"], "waiting", "{}", f.status().1);
    wait_for("web to start after db is ready", LONG, || {
        std::fs::read_to_string(format!("{}.web-saw-db", f.ledger.display())).is_ok()
    });
    f.stop();
    let log = f.log();
    let web = log.find("stopping service web").expect("web stopped");
    let db = log.find("stopping service db").expect("db stopped");
    assert!(web < db, "{log}");

    let cycle = Fixture::new(
        JOB,
        "[[service]]\nname = \"a\"\ncommand = [\"true\"]\ndepends_on = [\"b\"]\n\
         [[service]]\nname = \"b\"\ncommand = [\"true\"]\ndepends_on = [\"a\"]\n",
    );
    let out = cycle.run(&["check"]);
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        said.contains("ward.toml:16:15") && said.contains("b → a → b"),
        "{said}"
    );
}

/// `restart_on`: a burst of edits to matched files restarts the service once; another edit
/// after the settle window, once more; an unmatched file, never.
#[test]
fn restart_on_restarts_a_service_once_per_settle_window() {
    let f = Fixture::new(
        JOB,
        "[[service]]\nname = \"dev\"\nrestart_on = [\"src/**/*.py\"]\n\
         command = [\"sh\", \"-c\", \"echo $$ >> {ledger}.starts; exec sleep 1000\"]\n",
    );
    let starts = std::path::PathBuf::from(format!("{}.starts", f.ledger.display()));
    let count = || {
        std::fs::read_to_string(&starts)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    std::fs::create_dir_all(f.tree.join("src/app")).unwrap();
    f.start();
    wait_for("the first start", LONG, || count() == 1);
    for i in 0..5 {
        std::fs::write(f.tree.join("src/app/main.py"), format!("v{i}")).unwrap();
        std::fs::write(f.tree.join(format!("src/m{i}.py")), "x").unwrap();
    }
    std::fs::write(f.tree.join("notes.txt"), "not a source").unwrap();
    wait_for("the restart", LONG, || count() == 2);
    wait_for("the restart's log line", LONG, || {
        f.log().contains("changed: restarting it")
    });
    std::fs::write(f.tree.join("src/app/main.py"), "again").unwrap();
    wait_for("the second restart", LONG, || count() == 3);
    // Had the burst restarted it more than once, there would be more starts by now.
    assert_eq!(service(&f, "dev")["restarts"], 2, "{}", f.status().1);
    f.stop();
    f.assert_nothing_left();
}

/// The watchdog: a service that pings `WATCHDOG=1` and then goes silent gets its dump signal
/// (SIGABRT: faulthandler prints its stack), is killed and restarted; its report says hung,
/// with the stack.
#[test]
fn a_silent_service_is_ended_as_hung_with_its_stack_and_restarted() {
    if !have_tool("python3", "python3") {
        return;
    }
    let f = Fixture::new(
        JOB,
        concat!(
            "[[service]]\nname = \"quiet\"\nwatchdog_s = 1\nready = { notify = true, timeout_s = 20 }\n",
            "command = [\"python3\", \"-X\", \"faulthandler\", \"-c\", \"",
            "import os, socket, time\\n",
            "s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\\n",
            "s.sendto(b'READY=1', os.environ['NOTIFY_SOCKET'])\\n",
            "for _ in range(3):\\n    time.sleep(0.3)\\n    s.sendto(b'WATCHDOG=1', os.environ['NOTIFY_SOCKET'])\\n",
            "def stuck():\\n    time.sleep(1000)\\n",
            "stuck()\\n\"]\n",
        ),
    );
    f.start();
    wait_for("ready by notify", LONG, || {
        service(&f, "quiet")["state"] == "running"
    });
    let first = pid_of(&service(&f, "quiet")).unwrap();
    wait_for("the report of the hang", LONG, || {
        !f.reports_about("service quiet").is_empty()
    });
    let report = &f.reports_about("service quiet")[0];
    assert_eq!(report["verdict"]["cause"]["kind"], "hung", "{report:#}");
    assert!(report.to_string().contains("in stuck"), "{report:#}");
    assert!(f.log().contains("showed no sign of life"), "{}", f.log());
    wait_for("a new process", LONG, || {
        pid_of(&service(&f, "quiet")).is_some_and(|p| p != first)
    });
    f.stop();
}

/// `ward service restart` answers once the new process is ready; `ward logs --service` shows
/// that service's lines only; an unknown name is refused with the names there are.
#[test]
fn ward_service_restart_answers_once_ready_and_logs_show_one_service() {
    let f = Fixture::new(
        JOB,
        "[[service]]\nname = \"one\"\ncommand = [\"sh\", \"-c\", \"echo one-says-hi; exec sleep 1000\"]\n\
         [[service]]\nname = \"two\"\ncommand = [\"sh\", \"-c\", \"echo two-says-hi; exec sleep 1000\"]\n",
    );
    f.start();
    wait_for("both running", LONG, || {
        service(&f, "one")["state"] == "running" && service(&f, "two")["state"] == "running"
    });
    let first = pid_of(&service(&f, "one")).unwrap();
    let out = f.run(&["service", "restart", "one"]);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{out:?}");
    let now = pid_of(&service(&f, "one")).unwrap();
    assert_ne!(now, first);
    assert!(said.contains(&format!("pid {now}")), "{said}");
    assert!(!is_alive(first));
    wait_for("both greetings logged", LONG, || {
        f.log().matches("one-says-hi").count() == 2 && f.log().contains("two-says-hi")
    });
    let out = f.run(&["logs", "--service", "one", "-n", "100"]);
    let lines = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(lines.matches("one-says-hi").count(), 2, "{lines}");
    assert!(!lines.contains("two-says-hi"), "{lines}");
    assert!(lines.contains("restart on request"), "{lines}");

    let out = f.run(&["service", "stop", "nosuch"]);
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        said.contains("no service \"nosuch\": the services are one, two"),
        "{said}"
    );
    f.stop();
    f.assert_nothing_left();
}

/// A Rust service that links ward-crashdiag installs its capture where `WARD_CRASH_DIR` says:
/// its native crash report holds its crash record, with the function that read through null
/// and its `file:line`, named by ward from the binary's debug info.
#[test]
fn a_rust_service_linking_crashdiag_is_named_down_to_function_and_line() {
    let f = Fixture::new(
        JOB,
        "[[service]]\nname = \"native\"\nrestart = \"never\"\ncommand = [\"{job}\", \"captured-segv\"]\n",
    );
    f.start();
    wait_for("the report of its death", LONG, || {
        !f.reports_about("service native").is_empty()
    });
    let report = &f.reports_about("service native")[0];
    assert_eq!(
        report["verdict"]["cause"]["kind"], "native_crash",
        "{report:#}"
    );
    assert!(
        !report["crash_record"].is_null(),
        "its record was read: {report:#}"
    );
    let source =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/bin/ward-test-job.rs"))
            .unwrap();
    let line = source
        .lines()
        .position(|l| l.contains("// the null read"))
        .unwrap()
        + 1;
    let text = report.to_string();
    assert!(text.contains("read_field_through_null"), "{report:#}");
    assert!(
        text.contains(&format!("ward-test-job.rs:{line}"))
            || text.contains(&format!("\"line\":{line}")),
        "{report:#}"
    );
    f.stop();
}

/// A reload applies the services: a changed one is restarted as it is now, a removed one is
/// stopped and leaves the status, a new one is started; the unchanged one runs on untouched.
#[test]
fn a_reload_restarts_changed_services_stops_removed_ones_and_starts_new_ones() {
    let f = Fixture::new(
        JOB,
        concat!(
            "[[service]]\nname = \"same\"\ncommand = [\"sleep\", \"1000\"]\n",
            "[[service]]\nname = \"changed\"\ncommand = [\"sleep\", \"1001\"]\n",
            "[[service]]\nname = \"removed\"\ncommand = [\"sleep\", \"1002\"]\n",
        ),
    );
    f.start();
    wait_for("three running", LONG, || {
        ["same", "changed", "removed"]
            .iter()
            .all(|n| service(&f, n)["state"] == "running")
    });
    let pid = |name| pid_of(&service(&f, name)).unwrap();
    let (same, changed, removed) = (pid("same"), pid("changed"), pid("removed"));
    f.edit_config("1001", "1003");
    f.edit_config(
        "[[service]]\nname = \"removed\"\ncommand = [\"sleep\", \"1002\"]\n",
        "[[service]]\nname = \"added\"\ncommand = [\"sleep\", \"1004\"]\n",
    );
    let out = f.run(&["reload"]);
    assert!(out.status.success(), "{out:?}");
    wait_for(
        "the changed one restarted and the new one running",
        LONG,
        || {
            let c = service(&f, "changed");
            pid_of(&c).is_some_and(|p| p != changed)
                && c["state"] == "running"
                && f.status().1["services"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|s| s["name"] == "added" && s["state"] == "running")
        },
    );
    wait_for("the removed one gone", LONG, || !is_alive(removed));
    assert!(!is_alive(changed));
    let names: Vec<String> = f.status().1["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["same", "changed", "added"]);
    assert_eq!(pid("same"), same, "the unchanged service was left running");
    assert!(
        ward_e2e_cmdline(pid("changed")).contains("1003"),
        "runs as it is now"
    );
    f.stop();
    f.assert_nothing_left();
}

/// The command line of process `pid`, its arguments joined by spaces.
fn ward_e2e_cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

//! End-to-end tests of services (`[[service]]`): kept running under their restart policy, each
//! death reported, shown by `ward status`, and gone, with every process of their group, after
//! `ward stop`.

use std::path::Path;
use std::time::Duration;

use ward_e2e::{Fixture, is_alive, wait_for};

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
    // A reload does not touch the services yet, and says so.
    f.edit_config("restart_max = 1", "restart_max = 2");
    let out = f.run(&["reload"]);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success() && said.contains("service"), "{out:?}");
    assert_eq!(service(&f, "broken")["state"], "gave-up");
    f.stop();
}

#[test]
fn ward_check_lists_services() {
    let f = Fixture::new(
        JOB,
        "[[service]]\nname = \"web\"\ncommand = [\"python3\", \"-m\", \"http.server\"]\npolicy = \"pm2\"\n",
    );
    let out = f.run(&["check"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{out:?}");
    assert!(
        text.contains("service web (python3 -m http.server, policy pm2)"),
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

//! End-to-end tests of `[[on_death]]` hooks: a command run for each crash report with the death
//! in its environment, one run at a time, deaths during a run folded into the next; for a job's
//! death (run by the server), a service's, and the server's own (run by the keeper).

use std::path::{Path, PathBuf};
use std::time::Duration;

use ward_e2e::{Fixture, is_alive, wait_for};

const LONG: Duration = Duration::from_secs(60);
/// The job program built with these tests (see `bin/ward-test-job.rs`).
const JOB: &str = env!("CARGO_BIN_EXE_ward-test-job");

/// A hook's shell command that appends its variables to the file `{ledger}.NAME`, one line a
/// run: `kind|role|coalesced|report|report_text|pid|what|cause`.
fn record(name: &str) -> String {
    format!(
        "printf '%s|%s|%s|%s|%s|%s|%s|%s\\n' \"$WARD_CAUSE_KIND\" \"$WARD_ROLE\" \"$WARD_COALESCED\" \"$WARD_REPORT\" \"$WARD_REPORT_TEXT\" \"$WARD_PID\" \"$WARD_WHAT\" \"$WARD_CAUSE\" >> {{ledger}}.{name}"
    )
}

/// One hook run, as [`record`] wrote it.
#[derive(Debug)]
struct Run {
    kind: String,
    role: String,
    coalesced: u64,
    report: PathBuf,
    report_text: PathBuf,
    pid: u32,
    what: String,
    cause: String,
}

/// The runs recorded in `{ledger}.NAME`.
fn runs(f: &Fixture, name: &str) -> Vec<Run> {
    let path = format!("{}.{name}", f.ledger.display());
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| {
            let v: Vec<&str> = line.splitn(8, '|').collect();
            assert_eq!(v.len(), 8, "{line}");
            Run {
                kind: v[0].into(),
                role: v[1].into(),
                coalesced: v[2].parse().unwrap(),
                report: v[3].into(),
                report_text: v[4].into(),
                pid: v[5].parse().unwrap(),
                what: v[6].into(),
                cause: v[7].into(),
            }
        })
        .collect()
}

/// Waits until `{ledger}.NAME` has `n` runs, and returns them.
fn wait_runs(f: &Fixture, name: &str, n: usize) -> Vec<Run> {
    wait_for(&format!("{n} run(s) of hook {name}"), LONG, || {
        runs(f, name).len() >= n
    });
    runs(f, name)
}

/// A config with a trigger whose jobs die of SIGSEGV on `*.crash` (no retries: one death per
/// file), then `extra`.
fn crashing(extra: &str) -> Fixture {
    let f = Fixture::new(
        JOB,
        &format!(
            "[[trigger]]\nname = \"crash\"\nglob = [\"*.crash\"]\nretries = 0\nexec = [\"{{job}}\", \"segv\"]\n{extra}"
        ),
    );
    f.edit_config("[jobs]\n", "[jobs]\nworkers = 1\n");
    f
}

#[test]
fn a_crashed_jobs_hook_gets_its_report_cause_and_role() {
    let f = crashing(&format!(
        "[[on_death]]\ncommand = [\"sh\", \"-c\", '''{}; echo \"paged about $WARD_PID\"''']\n",
        record("all")
    ));
    f.start();
    std::fs::write(f.tree.join("x.crash"), "x").unwrap();
    let run = wait_runs(&f, "all", 1).remove(0);
    assert_eq!(run.kind, "native_crash", "{run:?}");
    assert_eq!(run.role, "job", "{run:?}");
    assert_eq!(run.coalesced, 0, "{run:?}");
    let path = f.tree.join("x.crash");
    assert_eq!(
        run.what,
        format!("job crash on {}", path.display()),
        "{run:?}"
    );
    assert!(run.cause.contains("SIGSEGV"), "{run:?}");
    assert!(
        run.report.starts_with(f.state.join("crashes")) && run.report.is_file(),
        "{run:?}"
    );
    assert!(run.report_text.is_file(), "{run:?}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&run.report).unwrap()).unwrap();
    assert_eq!(report["pid"], run.pid, "{report:#}");
    assert_eq!(report["verdict"]["cause"]["kind"], "native_crash");
    // Its output is in ward's log, under the hook's name and pid.
    wait_for("the hook's output in the log", LONG, || {
        f.log().lines().any(|l| {
            l.contains("on_death [") && l.ends_with(&format!("]: paged about {}", run.pid))
        })
    });
    f.stop();
    f.assert_nothing_left();
}

#[test]
fn deaths_while_a_hook_runs_are_folded_into_one_run_with_the_latest() {
    // The hook says it started, then waits for the gate before it records the death.
    let f = crashing(&format!(
        "[[on_death]]\ncommand = [\"sh\", \"-c\", '''echo \"$WARD_PID\" >> {{ledger}}.started; while [ ! -e {{ledger}}.gate ]; do sleep 0.02; done; {}''']\ntimeout_s = 120\n",
        record("slow")
    ));
    f.start();
    let started = PathBuf::from(format!("{}.started", f.ledger.display()));
    let crash = |name: &str| {
        std::fs::write(f.tree.join(name), name).unwrap();
        // Its report is written before the hooks are told: the deaths come one after the other.
        wait_for(&format!("the report of {name}"), LONG, || {
            !f.reports_about(&f.tree.join(name).display().to_string())
                .is_empty()
        });
    };
    crash("0.crash");
    wait_for("the first hook run to start", LONG, || started.exists());
    const MORE: usize = 5;
    for i in 1..=MORE {
        crash(&format!("{i}.crash"));
    }
    std::fs::write(format!("{}.gate", f.ledger.display()), "").unwrap();
    let runs = wait_runs(&f, "slow", 2);
    assert!(
        runs[0].what.ends_with("/0.crash") && runs[0].coalesced == 0,
        "{runs:?}"
    );
    let last = &runs[1];
    assert!(
        last.what.ends_with(&format!("/{MORE}.crash")),
        "the folded run is the latest death's: {runs:?}"
    );
    assert_eq!(last.coalesced, MORE as u64 - 1, "{runs:?}");
    assert!(last.report.is_file(), "{runs:?}");
    // Nothing else was owed: one more death gets a run of its own, next.
    crash("again.crash");
    let runs = wait_runs(&f, "slow", 3);
    assert!(
        runs.len() == 3 && runs[2].what.ends_with("/again.crash") && runs[2].coalesced == 0,
        "{runs:?}"
    );
    f.stop();
    f.assert_nothing_left();
}

#[test]
fn a_service_death_runs_the_hooks_for_services_and_not_those_for_jobs() {
    let f = Fixture::new(
        JOB,
        &format!(
            "[[service]]\nname = \"web\"\ncommand = [\"sh\", \"-c\", \"exit 3\"]\nrestart = \"never\"\n\
             [[on_death]]\ncommand = [\"sh\", \"-c\", '''{}''']\nroles = [\"job\", \"worker\"]\n\
             [[on_death]]\ncommand = [\"sh\", \"-c\", '''{}''']\nroles = [\"service\"]\n",
            record("jobs"),
            record("services")
        ),
    );
    f.start();
    let run = wait_runs(&f, "services", 1).remove(0);
    assert_eq!(
        (run.kind.as_str(), run.role.as_str(), run.what.as_str()),
        ("exited", "service", "service web"),
        "{run:?}"
    );
    assert!(run.cause.contains("code 3"), "{run:?}");
    assert!(run.report.is_file(), "{run:?}");
    // After the stop, whatever was owed has run.
    f.stop();
    assert!(runs(&f, "jobs").is_empty(), "{:?}", runs(&f, "jobs"));
    assert_eq!(runs(&f, "services").len(), 1);
    f.assert_nothing_left();
}

/// Regression guard: the keeper kills every child of its own but the server after each death of
/// the server (orphans the jobs left); a hook still running for the previous death is the
/// keeper's child too, and must be left to finish.
#[test]
fn the_keeper_runs_the_hooks_for_a_killed_server_and_its_next_death_spares_the_running_one() {
    let f = Fixture::new(
        JOB,
        &format!(
            "[[trigger]]\nexec = [\"{{job}}\", \"record\", \"{{ledger}}\"]\n\
             [[on_death]]\ncommand = [\"sh\", \"-c\", '''echo \"$WARD_PID\" >> {{ledger}}.started; while [ ! -e {{ledger}}.gate ]; do sleep 0.02; done; {}''']\n\
             roles = [\"server\"]\ntimeout_s = 120\n",
            record("server")
        ),
    );
    f.start();
    let running_server = |not: u32| {
        wait_for("a server running", LONG, || {
            let (_, s) = f.status();
            s["state"] == "running" && s["server_pid"].as_u64().is_some_and(|p| p as u32 != not)
        });
        u32::try_from(f.status().1["server_pid"].as_u64().unwrap()).unwrap()
    };
    let kill = |pid: u32| {
        // SAFETY: kill with the server's pid, alive a moment ago and unreaped by the keeper.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    };
    let first = running_server(0);
    kill(first);
    let started = PathBuf::from(format!("{}.started", f.ledger.display()));
    wait_for("the hook to start", LONG, || started.exists());
    // The second death sweeps the keeper's children while the first death's hook runs.
    let second = running_server(first);
    kill(second);
    wait_for("the report of the second death", LONG, || {
        f.reports_about("server").len() == 2
    });
    std::fs::write(format!("{}.gate", f.ledger.display()), "").unwrap();
    let runs = wait_runs(&f, "server", 2);
    assert_eq!(
        (runs[0].kind.as_str(), runs[0].role.as_str(), runs[0].pid),
        ("killed_by_signal", "server", first),
        "{runs:?}"
    );
    assert!(runs[0].report.is_file(), "{runs:?}");
    assert_eq!((runs[1].pid, runs[1].coalesced), (second, 0), "{runs:?}");
    // The keeper's orphan reaper left the hooks to their handle, which found nothing amiss.
    let log = f.log();
    assert!(
        !log.contains("on_death hook") && !log.contains("cannot reap"),
        "{log}"
    );
    running_server(second);
    f.stop();
    f.assert_nothing_left();
}

#[test]
fn a_hook_past_its_timeout_is_stopped_and_its_failure_said_once() {
    let f = crashing(
        "[[on_death]]\ncommand = [\"sh\", \"-c\", \"echo $$ > {ledger}.hung; exec sleep 1000\"]\ntimeout_s = 0.5\nstop_grace_s = 0.5\n",
    );
    f.start();
    std::fs::write(f.tree.join("x.crash"), "x").unwrap();
    let said = "failed: still running after its timeout of 500ms";
    wait_for("the hook's timeout in the log", LONG, || {
        f.log().contains(said)
    });
    let pid: u32 = std::fs::read_to_string(format!("{}.hung", f.ledger.display()))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(!is_alive(pid), "the hung hook still runs");
    assert_eq!(f.log().matches(said).count(), 1, "{}", f.log());
    f.stop();
    f.assert_nothing_left();
}

#[test]
fn ward_check_lists_hooks_and_refuses_a_bad_one_at_its_place() {
    let f = Fixture::new(
        JOB,
        "[[trigger]]\nexec = [\"true\"]\n[[on_death]]\ncommand = [\"page\", \"ops\"]\nroles = [\"service\", \"daemon\"]\n",
    );
    let out = f.run(&["check"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ward.toml:13:21:") && err.contains("on_death #1: unknown role \"daemon\""),
        "{err}"
    );
    f.edit_config("\"daemon\"", "\"server\"");
    std::fs::write(
        &f.config,
        std::fs::read_to_string(&f.config).unwrap()
            + "[[on_death]]\ncommand = [\"mail\"]\ntimeout_s = 5\ncwd = \"out\"\n",
    )
    .unwrap();
    let out = f.run(&["check"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("on_death page ops (deaths of service, server, timeout 30 s)"),
        "{text}"
    );
    assert!(
        text.contains("on_death mail (every death, timeout 5 s)"),
        "{text}"
    );
    let out_dir = f.dir.path().join("out");
    assert!(
        text.contains(&format!("cwd = {}", Path::new(&out_dir).display())),
        "{text}"
    );
}

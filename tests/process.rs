//! End-to-end tests of a trigger's process settings: what its jobs and workers see (environment,
//! working directory, nice value, user), how they are stopped (timeout, stop signal, grace), their
//! memory limit, and how `ward check` shows and refuses the settings.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ward_e2e::{Fixture, wait_for};

const LONG: Duration = Duration::from_secs(30);
/// The job program built with these tests (see `bin/ward-test-job.rs`).
const JOB: &str = env!("CARGO_BIN_EXE_ward-test-job");

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// `path`'s content once it holds a whole line.
fn line_of(path: &Path) -> String {
    wait_for(&format!("a line in {}", path.display()), LONG, || {
        std::fs::read_to_string(path).is_ok_and(|s| s.ends_with('\n'))
    });
    std::fs::read_to_string(path).unwrap().trim_end().to_owned()
}

/// A shell command printing what a job or worker sees, as a TOML string's content:
/// `$A|$HOME|$WARD_PATH|pwd|nice`.
const SEEN: &str = r#"echo \"$A|${HOME-unset}|${WARD_PATH-none}|$(pwd)|$(nice)\""#;

/// This process's nice value, which ward and its jobs inherit unless told otherwise.
fn own_nice() -> i32 {
    // SAFETY: getpriority has no memory-safety preconditions.
    unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }
}

#[test]
fn env_cwd_and_nice_of_a_trigger_reach_its_exec_jobs_and_its_worker() {
    // The worker is a shell speaking the protocol: it says what it sees once, at its start, then
    // answers each request with its id (`?` for the quotes around "id": dash takes no quotes in
    // a pattern there).
    let config = r#"[[trigger]]
name = "exec"
glob = ["*.exec"]
exec = ["sh", "-c", "{seen} > {ledger}.exec"]
env = { A = "a b", UNUSED = "x" }
env_remove = ["HOME"]
cwd = "sub"
nice = 7

[[trigger]]
name = "worker"
glob = ["*.work"]
worker = ["sh", "-c", "{seen} > {ledger}.worker; while read -r line; do id=${line#*?id?:}; echo \"{\\\"id\\\":${id%%,*},\\\"ok\\\":true}\"; done"]
env = { A = "from the worker's trigger" }
cwd = "tree"
nice = 3

[[trigger]]
name = "plain"
exec = ["sh", "-c", "{seen} > {ledger}.plain"]
"#;
    let f = Fixture::new(JOB, &config.replace("{seen}", SEEN));
    std::fs::create_dir(f.dir.path().join("sub")).unwrap();
    f.start();
    std::fs::write(f.tree.join("a.exec"), "x").unwrap();
    std::fs::write(f.tree.join("a.work"), "x").unwrap();
    std::fs::write(f.tree.join("a.plain"), "x").unwrap();
    let out = |suffix: &str| PathBuf::from(format!("{}.{suffix}", f.ledger.display()));
    let dir = f.dir.path();
    let home = std::env::var("HOME").unwrap_or_else(|_| "unset".into());
    assert_eq!(
        line_of(&out("exec")),
        format!(
            "a b|unset|{}|{}|7",
            f.tree.join("a.exec").display(),
            dir.join("sub").display()
        )
    );
    assert_eq!(
        line_of(&out("worker")),
        format!(
            "from the worker's trigger|{home}|none|{}|3",
            f.tree.display()
        )
    );
    // A trigger that sets nothing runs as before: ward's environment, directory and priority.
    assert_eq!(
        line_of(&out("plain")),
        format!(
            "|{home}|{}|{}|{}",
            f.tree.join("a.plain").display(),
            dir.display(),
            own_nice()
        )
    );
    f.wait_idle();
    let (_, status) = f.status();
    assert_eq!(
        status["queue"]["failed"], 0,
        "the worker answered: {status}"
    );
    f.stop();
    f.assert_nothing_left();
}

#[test]
fn a_job_runs_as_the_user_and_group_of_its_trigger_and_ward_keeps_its_state() {
    let f = Fixture::new(
        JOB,
        concat!(
            "[[trigger]]\nname = \"as-nobody\"\nglob = [\"*.user\"]\nuser = \"nobody\"\n",
            "exec = [\"sh\", \"-c\", \"echo $(id -u) $(id -g) $(id -G) > {ledger}.d/user; touch {ledger}.d/made\"]\n",
            "[[trigger]]\nname = \"as-nogroup\"\nglob = [\"*.group\"]\ngroup = \"nogroup\"\n",
            "exec = [\"sh\", \"-c\", \"echo $(id -u) $(id -g) $(id -G) > {ledger}.d/group\"]\n",
        ),
    );
    if !is_root() {
        // Only root may run jobs as another user: the configuration is refused at the key.
        let out = f.run(&["check"]);
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("ward.toml:12:8: ") && stderr.contains("only root"),
            "{stderr}"
        );
        return;
    }
    // The job, as nobody, must reach its directory (the config file's) and write its output.
    std::fs::set_permissions(f.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = f.dir.path().join("out/ledger.d");
    std::fs::create_dir(&out).unwrap();
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o777)).unwrap();
    f.start();
    std::fs::write(f.tree.join("a.user"), "x").unwrap();
    std::fs::write(f.tree.join("a.group"), "x").unwrap();
    let nobody = "65534";
    assert_eq!(
        line_of(&out.join("user")),
        format!("{nobody} {nobody} {nobody}")
    );
    // The job writes `user`, then `made`: the first may be read before the second exists.
    wait_for("the job's file", LONG, || out.join("made").exists());
    assert_eq!(std::fs::metadata(out.join("made")).unwrap().uid(), 65534);
    // A group alone: the user stays root, with that group and no other.
    assert_eq!(line_of(&out.join("group")), format!("0 {nobody} {nobody}"));
    // ward's own state is still ward's.
    let state = std::fs::metadata(&f.state).unwrap();
    assert_eq!((state.uid(), state.mode() & 0o777), (0, 0o700));
    f.stop();
}

#[test]
fn a_trigger_stops_its_jobs_with_its_own_timeout_stop_signal_and_grace() {
    // [jobs] would let them run 300 s and give a stubborn one 60 s after SIGTERM; each trigger
    // stops its job after 1 s, with its own signal, and the stubborn one is killed 0.5 s later.
    let f = Fixture::new(
        JOB,
        concat!(
            "[[trigger]]\nname = \"polite\"\nglob = [\"*.polite\"]\n",
            "timeout_s = 1\nstop_signal = \"SIGUSR1\"\ndump_signal = \"none\"\n",
            "exec = [\"sh\", \"-c\", \"trap 'echo USR1 > $0; exit 0' USR1; trap 'echo TERM > $0; exit 0' TERM; sleep 60 & wait\", \"{ledger}.polite\"]\n",
            "[[trigger]]\nname = \"stubborn\"\nglob = [\"*.stubborn\"]\n",
            "timeout_s = 1\nstop_signal = \"usr2\"\nstop_grace_s = 0.5\ndump_signal = \"none\"\n",
            "exec = [\"sh\", \"-c\", \"trap 'echo USR2 >> $0' USR2; while :; do sleep 0.1; done\", \"{ledger}.stubborn\"]\n",
        ),
    );
    f.edit_config("stop_grace_s = 2", "stop_grace_s = 60\nretries = 0");
    f.start();
    std::fs::write(f.tree.join("a.polite"), "x").unwrap();
    std::fs::write(f.tree.join("a.stubborn"), "x").unwrap();
    let polite = PathBuf::from(format!("{}.polite", f.ledger.display()));
    assert_eq!(line_of(&polite), "USR1");
    wait_for("the stubborn job's report", LONG, || {
        !f.reports_about("stubborn").is_empty()
    });
    let report = &f.reports_about("stubborn")[0];
    assert_eq!(report["verdict"]["cause"]["kind"], "hung", "{report}");
    assert!(
        report["role"]
            .as_str()
            .is_some_and(|r| r.contains("timed out after 1s")),
        "{report}"
    );
    let stubborn = PathBuf::from(format!("{}.stubborn", f.ledger.display()));
    assert_eq!(line_of(&stubborn), "USR2", "the stop signal came once");
    // SIGKILL ended it: its wait status says so.
    assert_eq!(report["wait_status"]["signal"], libc::SIGKILL, "{report}");
    f.stop();
}

/// Provokes a kill by the memory cgroup's OOM killer (SIGKILL), not an `RLIMIT_AS` abort: the job
/// touches 512 MiB under a 32 MiB `memory_max_mb`, and ward has set no rlimit.
#[test]
fn a_job_past_its_memory_limit_is_oom_killed_reported_with_the_limit_and_retried() {
    let f = Fixture::new(
        JOB,
        "[[trigger]]\nname = \"hog\"\nexec = [\"{job}\", \"grow\", \"512\"]\nmemory_max_mb = 32\n",
    );
    f.edit_config("[jobs]\n", "[jobs]\nretries = 1\n");
    f.start();
    std::fs::write(f.tree.join("big"), "x").unwrap();
    let mut failure = serde_json::Value::Null;
    wait_for("the job to give up", LONG, || {
        let out = f.run(&["failures", "--json"]);
        failure = serde_json::from_slice(&out.stdout).unwrap_or_default();
        failure.is_object()
    });
    assert_eq!(
        failure["attempts"], 2,
        "retried like any failure: {failure}"
    );
    let error = failure["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("killed by the kernel's OOM killer at its memory limit of 32 MiB"),
        "{failure}"
    );
    let reports = f.reports_about("hog");
    assert_eq!(reports.len(), 2, "a report per attempt");
    for report in &reports {
        assert_eq!(report["verdict"]["cause"]["kind"], "oom_kill", "{report}");
        assert_eq!(report["wait_status"]["signal"], libc::SIGKILL, "{report}");
        let evidence = report["verdict"]["evidence"].to_string();
        assert!(
            evidence.contains("its memory cgroup was limited to 32 MiB"),
            "{report}"
        );
    }
    f.stop();
    f.assert_nothing_left();
}

/// `ward ARGS` for `f` in a mount namespace of its own without the cgroup file systems: no memory
/// controller to be found there, v2 or v1.
fn without_cgroups(f: &Fixture, args: &[&str]) -> std::process::Output {
    let script = concat!(
        "for m in $(awk '{for (i = 7; i <= NF; i++) if ($i == \"-\") {",
        " if ($(i + 1) == \"cgroup\" || $(i + 1) == \"cgroup2\") print $5; break }}'",
        " /proc/self/mountinfo); do umount -l \"$m\" || exit 90; done; exec \"$0\" \"$@\""
    );
    let out = std::process::Command::new("unshare")
        .args(["-m", "sh", "-c", script])
        .arg(ward_e2e::ward_bin())
        .arg("--config")
        .arg(&f.config)
        .arg("--state-dir")
        .arg(&f.state)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("running unshare");
    assert_ne!(out.status.code(), Some(90), "cannot unmount: {out:?}");
    out
}

#[test]
fn a_memory_limit_where_no_memory_cgroup_can_be_made_is_refused_at_start_with_the_reason() {
    let f = Fixture::new(
        JOB,
        "[[trigger]]\nname = \"hog\"\nexec = [\"true\"]\nmemory_max_mb = 32\n",
    );
    let why =
        "trigger \"hog\": memory_max_mb needs a memory cgroup per job, and none can be made here";
    let out = without_cgroups(&f, &["check"]);
    assert!(out.status.success(), "a warning, not an error: {out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&format!("warning: {why}")), "{stdout}");
    let out = without_cgroups(&f, &["start"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}\n{}", f.log());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot start")
            && stderr.contains(why)
            && stderr.contains("no cgroup v1 memory hierarchy"),
        "the reason is not on the terminal: {stderr}"
    );
    assert!(f.log().contains("not restarting it"), "{}", f.log());
}

#[test]
fn check_shows_each_triggers_settings_and_refuses_a_bad_one_at_its_place() {
    let f = Fixture::new(
        JOB,
        concat!(
            "[[trigger]]\nname = \"plain\"\nglob = [\"*.a\"]\nexec = [\"true\"]\n",
            "[[trigger]]\nname = \"tuned\"\nexec = [\"true\"]\n",
            "env = { TOKEN = \"hunter2\" }\ntimeout_s = 5\nstop_signal = \"SIGINT\"\n",
            "retries = 4\nconcurrency = 1\nnice = 10\n",
        ),
    );
    let out = f.run(&["check"]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    let tuned = lines
        .iter()
        .position(|l| l.starts_with("  trigger tuned"))
        .expect("the tuned trigger is listed");
    assert_eq!(
        lines[tuned + 1].trim(),
        "env = TOKEN (values not shown), timeout_s = 5, stop_signal = SIGINT, nice = 10, \
         retries = 4, backoff_s = 0.1, backoff_max_s = 30, concurrency = 1",
        "{stdout}"
    );
    let plain = lines
        .iter()
        .position(|l| l.starts_with("  trigger plain"))
        .expect("the plain trigger is listed");
    assert!(lines[plain + 1].starts_with("  trigger "), "{stdout}");
    assert!(!stdout.contains("hunter2"), "{stdout}");

    f.edit_config("nice = 10", "nice = 10\ncwd = \"nowhere\"");
    let out = f.run(&["check"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "ward.toml:22:7: trigger \"tuned\": cwd = \"nowhere\": {} is not a directory",
            f.dir.path().join("nowhere").display()
        )),
        "{stderr}"
    );
}

//! End-to-end tests of batch triggers (`batch = true`): one run for many paths, on_busy modes,
//! and the manifest's guarantee across failures and a killed server.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ward_e2e::{Fixture, wait_for};

const LONG: Duration = Duration::from_secs(60);
const JOB: &str = env!("CARGO_BIN_EXE_ward-test-job");

/// The lines of `path` (none if it does not exist).
fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// `{ledger}.SUFFIX`.
fn beside(f: &Fixture, suffix: &str) -> PathBuf {
    PathBuf::from(format!("{}.{suffix}", f.ledger.display()))
}

/// How many times each line occurs.
fn counts(lines: &[String]) -> BTreeMap<&str, usize> {
    let mut counts = BTreeMap::new();
    for line in lines {
        *counts.entry(line.as_str()).or_insert(0) += 1;
    }
    counts
}

/// Live processes (zombies excluded) in process group `pgid`.
fn group_members(pgid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(close) = stat.iter().rposition(|&b| b == b')') else {
            continue;
        };
        let rest = String::from_utf8_lossy(&stat[close + 1..]).into_owned();
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let dead = matches!(fields.first(), Some(&"Z" | &"X" | &"x"));
        if !dead && fields.get(2).and_then(|g| g.parse::<u32>().ok()) == Some(pgid) {
            found.push(pid);
        }
    }
    found
}

fn server_pid(f: &Fixture) -> u32 {
    let (_, status) = f.status();
    status["server_pid"]
        .as_u64()
        .unwrap_or_else(|| panic!("status has no server_pid: {status}")) as u32
}

#[test]
fn a_burst_of_fifty_thousand_files_is_a_handful_of_runs_that_get_every_path_once() {
    let f = Fixture::new(
        JOB,
        "[[trigger]]\nname = \"build\"\nbatch = true\n\
         exec = [\"sh\", \"-c\", 'cat >> {ledger}; echo \"$WARD_EVENT $WARD_PATHS_COUNT\" >> {ledger}.runs']\n",
    );
    // A run starts when the burst settles, not every `max_wait_ms` (1 s) while it lasts: on a
    // loaded machine writing the files takes longer than 8 s, which made more than 8 runs.
    f.edit_config(
        "debounce_ms = 20",
        "debounce_ms = 300\nmax_wait_ms = 120000",
    );
    f.start();
    const N: usize = 50_000;
    // Each file comes into the tree whole, by a rename: its creation and its write must reach
    // ward as one change. Written in place, a stall between the two on a loaded machine (longer
    // than the debounce), or a rescan after the kernel's queue overflowed between them, made two
    // versions, which at least once rightly gives to two runs (seen with two builds running).
    let stage = f.dir.path().join("stage");
    std::fs::create_dir(&stage).unwrap();
    for i in 0..N {
        let staged = stage.join(format!("f{i}"));
        std::fs::write(&staged, "x").unwrap();
        std::fs::rename(&staged, f.tree.join(format!("f{i}"))).unwrap();
    }
    wait_for("every path to be given to a run", LONG * 2, || {
        lines(&f.ledger).len() >= N
    });
    f.wait_idle();
    f.stop();
    let given = lines(&f.ledger);
    let counted = counts(&given);
    assert_eq!(counted.len(), N, "distinct paths given");
    let twice: Vec<_> = counted.iter().filter(|(_, n)| **n > 1).collect();
    let runs = lines(&beside(&f, "runs"));
    // Seen once in CI and not reproduced since: the failure says which runs and which rescans
    // the server saw, so that the next one tells how a path came to two runs.
    assert!(
        twice.is_empty(),
        "{} path(s) given more than once, the first {:?}; runs {runs:?}; the server's log on runs and rescans:\n{}",
        twice.len(),
        &twice[..twice.len().min(5)],
        f.log()
            .lines()
            .filter(|l| ["batch build", "rescan", "overflow", "buffer"]
                .iter()
                .any(|w| l.contains(w)))
            .take(60)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        !runs.is_empty() && runs.len() <= 8,
        "{} runs: {runs:?}",
        runs.len()
    );
    let total: usize = runs
        .iter()
        .map(|r| {
            let (event, count) = r.split_once(' ').unwrap();
            assert_eq!(event, "batch");
            count.parse::<usize>().unwrap()
        })
        .sum();
    assert_eq!(total, N, "WARD_PATHS_COUNT adds up: {runs:?}");
    f.assert_nothing_left();
}

#[test]
fn restart_mode_stops_the_whole_old_run_before_the_new_one_which_gets_its_paths_too() {
    let f = Fixture::new(
        JOB,
        "[[trigger]]\nname = \"serve\"\nbatch = true\non_busy = \"restart\"\n\
         exec = [\"sh\", \"-c\", 'echo $$ >> {ledger}.pids; cat > {ledger}.run.$$; sleep 1000']\n",
    );
    f.start();
    let pids = beside(&f, "pids");
    let run_of = |pid: &str| lines(&beside(&f, &format!("run.{pid}")));
    let a = f.tree.join("a").display().to_string();
    let b = f.tree.join("b").display().to_string();
    std::fs::write(f.tree.join("a"), "1").unwrap();
    wait_for("the first run to read its paths", LONG, || {
        lines(&pids)
            .first()
            .is_some_and(|p| run_of(p) == [a.clone()])
    });
    let first: u32 = lines(&pids)[0].parse().unwrap();
    // Its sh and its sleep.
    wait_for("the first run's sleep", LONG, || {
        group_members(first).len() == 2
    });

    std::fs::write(f.tree.join("b"), "1").unwrap();
    wait_for("the second run to start", LONG, || lines(&pids).len() == 2);
    assert_eq!(
        group_members(first),
        Vec::<u32>::new(),
        "a process of the old run is alive after the new one started"
    );
    let second = lines(&pids)[1].clone();
    wait_for("the second run to read its paths", LONG, || {
        run_of(&second).len() == 2
    });
    assert_eq!(run_of(&second), [a, b], "the old run's path comes again");
    assert!(f.log().contains("new paths; restarting it"), "{}", f.log());
    f.stop();
    f.assert_nothing_left();
}

#[test]
fn queue_mode_runs_once_more_with_everything_written_during_a_run() {
    let f = Fixture::new(
        JOB,
        "[[trigger]]\nname = \"gated\"\nbatch = true\npaths_nul = true\n\
         exec = [\"sh\", \"-c\", 'cat >> {ledger}; echo run >> {ledger}.runs; \
                 while [ ! -e {ledger}.gate ]; do sleep 0.02; done']\n",
    );
    f.start();
    let nul_entries = || -> Vec<Vec<u8>> {
        std::fs::read(&f.ledger)
            .unwrap_or_default()
            .split(|&b| b == 0)
            .filter(|e| !e.is_empty())
            .map(<[u8]>::to_vec)
            .collect()
    };
    std::fs::write(f.tree.join("first"), "1").unwrap();
    wait_for("the first run to be held at its gate", LONG, || {
        nul_entries().len() == 1
    });
    // Names with a newline reach the command whole: its paths are NUL-separated.
    let names: Vec<String> = (0..10).map(|i| format!("during\n{i}")).collect();
    for name in &names {
        std::fs::write(f.tree.join(name), "2").unwrap();
    }
    wait_for("the changes to be owed to the next run", LONG, || {
        f.status().1["queue"]["backlog"] == 10
    });
    assert_eq!(lines(&beside(&f, "runs")).len(), 1, "a second run started");
    std::fs::write(beside(&f, "gate"), "").unwrap();
    wait_for("the second run", LONG, || nul_entries().len() == 11);
    f.wait_idle();
    f.stop();
    let mut got = nul_entries();
    got.sort();
    let mut want: Vec<Vec<u8>> = std::iter::once("first")
        .chain(names.iter().map(String::as_str))
        .map(|n| f.tree.join(n).display().to_string().into_bytes())
        .collect();
    want.sort();
    assert_eq!(got, want);
    assert_eq!(lines(&beside(&f, "runs")).len(), 2);
}

#[test]
fn a_batch_run_killed_with_the_server_is_run_again_with_its_paths_after_the_restart() {
    let f = Fixture::new(
        JOB,
        "[[trigger]]\nname = \"once\"\nbatch = true\n\
         exec = [\"sh\", \"-c\", 'if [ -e {ledger}.hang ]; then cat >> {ledger}; \
                 else touch {ledger}.hang; cat > /dev/null; sleep 1000; fi']\n",
    );
    f.start();
    for name in ["a", "b", "c"] {
        std::fs::write(f.tree.join(name), name).unwrap();
    }
    wait_for("the first run to hang", LONG, || {
        beside(&f, "hang").exists()
    });
    let first = server_pid(&f);
    // SAFETY: kill with the pid of the server ward reported.
    let killed = unsafe { libc::kill(first as libc::pid_t, libc::SIGKILL) };
    assert_eq!(killed, 0);
    wait_for("a new server", LONG, || {
        let (_, s) = f.status();
        s["state"] == "running" && s["server_pid"].as_u64().is_some_and(|p| p as u32 != first)
    });
    wait_for("the paths to run again", LONG, || {
        lines(&f.ledger).len() >= 3
    });
    f.wait_idle();
    f.stop();
    let given = lines(&f.ledger);
    let counted = counts(&given);
    let want: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|n| f.tree.join(n).display().to_string())
        .collect();
    assert_eq!(
        counted.keys().map(|k| k.to_string()).collect::<Vec<_>>(),
        want,
        "{given:?}"
    );
    assert!(
        f.log().contains("batch once: running for 3 path(s)"),
        "they ran as one batch after the restart:\n{}",
        f.log()
    );
}

#[test]
fn a_failing_batch_gives_up_per_path_after_its_retries_and_failures_lists_each() {
    let f = Fixture::new(
        JOB,
        "[[trigger]]\nname = \"fails\"\nbatch = true\nretries = 1\nbackoff_s = 0.1\n\
         exec = [\"sh\", \"-c\", 'cat >> {ledger}.attempts; exit 3']\n",
    );
    std::fs::write(f.tree.join("a"), "1").unwrap();
    std::fs::write(f.tree.join("b"), "1").unwrap();
    f.start();
    wait_for("both paths to give up", LONG, || {
        f.status().1["manifest"]["gave_up"].as_u64() == Some(2)
    });
    let attempts = lines(&beside(&f, "attempts"));
    let counted = counts(&attempts);
    assert_eq!(
        counted.values().copied().collect::<Vec<_>>(),
        [2, 2],
        "{attempts:?}"
    );
    let listed = f.failures();
    assert_eq!(listed.len(), 2, "{listed:?}");
    for (entry, name) in listed.iter().zip(["a", "b"]) {
        assert_eq!(entry["path"], f.tree.join(name).to_str().unwrap());
        assert_eq!(entry["trigger"], "fails");
        assert_eq!(entry["attempts"], 2);
    }
    // A restart runs neither again: they gave up on these versions.
    f.stop();
    f.start();
    f.wait_idle();
    assert_eq!(lines(&beside(&f, "attempts")).len(), 4);
    f.stop();
}

#[test]
fn paths_too_long_for_the_command_line_still_reach_the_command_on_stdin_and_in_the_file() {
    let f = Fixture::new(
        JOB,
        "[[trigger]]\nname = \"many\"\nbatch = true\n\
         exec = [\"sh\", \"-c\", 'cat >> {ledger}; cat \"$WARD_PATHS_FILE\" >> {ledger}.file; \
                 echo \"$# $WARD_PATHS_FILE\" >> {ledger}.argc', \"sh\", \"{paths}\"]\n",
    );
    // 3000 paths of over 100 bytes: far more than 128 KiB of arguments.
    let long = "n".repeat(100);
    let names: Vec<String> = (0..3000).map(|i| format!("{long}{i}")).collect();
    for name in &names {
        std::fs::write(f.tree.join(name), "x").unwrap();
    }
    f.start();
    wait_for("every path to reach the command", LONG, || {
        lines(&f.ledger).len() >= names.len()
    });
    f.wait_idle();
    let runs = lines(&beside(&f, "argc"));
    assert!(
        runs.iter().any(|r| r.starts_with("0 ")),
        "no run went without its arguments: {runs:?}"
    );
    assert!(
        f.log().contains("do not fit in the command line"),
        "{}",
        f.log()
    );
    let mut given = lines(&f.ledger);
    given.sort();
    let mut in_file = lines(&beside(&f, "file"));
    in_file.sort();
    assert_eq!(
        given, in_file,
        "stdin and WARD_PATHS_FILE hold the same paths"
    );
    assert_eq!(counts(&given).len(), names.len());
    for run in &runs {
        let file = run.split_once(' ').unwrap().1;
        assert!(!Path::new(file).exists(), "{file} left behind");
    }

    // A run that fits gets its paths as arguments too.
    std::fs::write(f.tree.join("small"), "x").unwrap();
    wait_for("the small run", LONG, || {
        lines(&beside(&f, "argc")).len() > runs.len()
    });
    assert!(lines(&beside(&f, "argc")).last().unwrap().starts_with("1 "));
    f.stop();
}

#[test]
fn batch_settings_are_checked_with_their_place_and_shown_by_check() {
    let f = Fixture::new(
        JOB,
        "[[trigger]]\nname = \"w\"\nworker = [\"w\"]\nbatch = true\n",
    );
    let out = f.run(&["check"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ward.toml:12:9:") && err.contains("needs an exec trigger"),
        "{err}"
    );
    std::fs::write(
        &f.config,
        "[[trigger]]\nname = \"b\"\nexec = [\"true\"]\nbatch = true\non_busy = \"sometimes\"\n",
    )
    .unwrap();
    let out = f.run(&["check"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ward.toml:5:11:") && err.contains("unknown mode"),
        "{err}"
    );
    std::fs::write(
        &f.config,
        "[[trigger]]\nname = \"b\"\nexec = [\"true\"]\nbatch = true\non_busy = \"restart\"\n",
    )
    .unwrap();
    let out = f.run(&["check"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("trigger b (every file, batch (on_busy restart))"),
        "{text}"
    );
}

/// A batch run gets its trigger's process settings as a per-path job does: here its
/// environment and working directory.
#[test]
fn a_batch_run_gets_its_triggers_env_and_cwd() {
    let f = Fixture::new(
        JOB,
        concat!(
            "[[trigger]]\nname = \"b\"\nbatch = true\nenv = { BATCH_ENV = \"yes\" }\n",
            "cwd = \"out\"\n",
            "exec = [\"sh\", \"-c\", \"echo \\\"$BATCH_ENV $(pwd)\\\" >> {ledger}.env\"]\n",
        ),
    );
    f.start();
    std::fs::write(f.tree.join("a"), "x").unwrap();
    let seen = beside(&f, "env");
    wait_for("the batch run", LONG, || !lines(&seen).is_empty());
    f.stop();
    assert_eq!(
        lines(&seen)[0],
        format!("yes {}", f.dir.path().join("out").display())
    );
}

/// The status entry of batch trigger `name`, if its runner is there.
fn batch_status(f: &Fixture, name: &str) -> Option<serde_json::Value> {
    let (_, status) = f.status();
    status["batches"]
        .as_array()?
        .iter()
        .find(|b| b["trigger"] == name)
        .cloned()
}

/// A command held at `{ledger}.gate` that appends its paths to `{ledger}` and its pid to
/// `{ledger}.runs`; with `trap`, it records each SIGUSR1 in `{ledger}.signals` and keeps going.
fn gated(trap: bool) -> String {
    let trap = if trap {
        "trap \"echo got >> {ledger}.signals\" USR1; "
    } else {
        ""
    };
    format!(
        "exec = [\"sh\", \"-c\", '{trap}cat >> {{ledger}}; echo $$ >> {{ledger}}.runs; \
         while [ ! -e {{ledger}}.gate ]; do sleep 0.02; done; exit 0']\n"
    )
}

#[test]
fn signal_mode_signals_the_running_command_which_keeps_running_and_the_new_paths_run_next() {
    let f = Fixture::new(
        JOB,
        &format!(
            "[[trigger]]\nname = \"sig\"\nbatch = true\non_busy = \"signal\"\nsignal = \"SIGUSR1\"\n{}",
            gated(true)
        ),
    );
    f.start();
    let path = |n: &str| f.tree.join(n).display().to_string();
    std::fs::write(f.tree.join("first"), "1").unwrap();
    wait_for("the first run to be held at its gate", LONG, || {
        lines(&f.ledger) == [path("first")] && lines(&beside(&f, "runs")).len() == 1
    });
    std::fs::write(f.tree.join("second"), "2").unwrap();
    wait_for("the running command to get the signal", LONG, || {
        !lines(&beside(&f, "signals")).is_empty()
    });
    // It trapped the signal and runs on, the new path owed to the next run.
    let b = batch_status(&f, "sig").expect("a status entry for the runner");
    assert_eq!(b["running"], true, "{b}");
    assert_eq!(b["running_paths"], 1, "{b}");
    assert_eq!(b["runs"], 1, "{b}");
    wait_for("the new path to be owed", LONG, || {
        batch_status(&f, "sig").is_some_and(|b| b["owed"] == 1)
    });
    // `ward status` counts the run among the running jobs, and says what it runs and owes.
    let (_, status) = f.status();
    assert_eq!(status["queue"]["running"], 1, "{status}");
    assert_eq!(status["queue"]["backlog"], 1, "{status}");
    let out = f.run(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("1 running,")
            && text.contains("batch      sig: running for 1 path(s), 1 path(s) owed, 1 run(s)"),
        "{text}"
    );
    assert_eq!(lines(&beside(&f, "runs")).len(), 1, "a second run started");
    assert!(
        f.log().contains("new paths; sending it SIGUSR1"),
        "{}",
        f.log()
    );
    std::fs::write(beside(&f, "gate"), "").unwrap();
    wait_for("the next run", LONG, || lines(&f.ledger).len() == 2);
    f.wait_idle();
    f.stop();
    assert_eq!(lines(&f.ledger), [path("first"), path("second")]);
    assert_eq!(lines(&beside(&f, "runs")).len(), 2);
    f.assert_nothing_left();
}

#[test]
fn ignore_mode_starts_nothing_for_changes_during_a_run_but_owes_them_to_the_next_run_or_start() {
    let f = Fixture::new(
        JOB,
        &format!(
            "[[trigger]]\nname = \"ign\"\nbatch = true\non_busy = \"ignore\"\n{}",
            gated(false)
        ),
    );
    f.start();
    let path = |n: &str| f.tree.join(n).display().to_string();
    let runs = || lines(&beside(&f, "runs")).len();
    std::fs::write(f.tree.join("first"), "1").unwrap();
    wait_for("the first run to be held at its gate", LONG, || {
        lines(&f.ledger).len() == 1 && runs() == 1
    });
    for name in ["d1", "d2", "d3"] {
        std::fs::write(f.tree.join(name), "2").unwrap();
    }
    wait_for("the changes to be owed", LONG, || {
        batch_status(&f, "ign").is_some_and(|b| b["owed"] == 3)
    });
    std::fs::write(beside(&f, "gate"), "").unwrap();
    // The run is over and what came during it is still owed: no run started for it.
    wait_for("the first run to end, its followers owed", LONG, || {
        batch_status(&f, "ign").is_some_and(|b| b["running"] == false && b["owed"] == 3)
    });
    assert_eq!(runs(), 1, "a run started for changes made during a run");
    assert_eq!(f.status().1["queue"]["backlog"], 3);

    // A later change starts the next run, which gets them all.
    std::fs::write(f.tree.join("later"), "3").unwrap();
    wait_for("the next run", LONG, || lines(&f.ledger).len() == 5);
    wait_for("nothing owed", LONG, || {
        batch_status(&f, "ign").is_some_and(|b| b["running"] == false && b["owed"] == 0)
    });
    assert_eq!(runs(), 2, "{:?}", lines(&f.ledger));
    let mut second = lines(&f.ledger)[1..].to_vec();
    second.sort();
    assert_eq!(second, [path("d1"), path("d2"), path("d3"), path("later")]);

    // Owed when ward stops, they run at the next start.
    std::fs::remove_file(beside(&f, "gate")).unwrap();
    std::fs::write(f.tree.join("again"), "4").unwrap();
    wait_for("a third run held at its gate", LONG, || runs() == 3);
    std::fs::write(f.tree.join("owed"), "5").unwrap();
    wait_for("the change to be owed", LONG, || {
        batch_status(&f, "ign").is_some_and(|b| b["owed"] == 1)
    });
    std::fs::write(beside(&f, "gate"), "").unwrap();
    wait_for("the third run to end", LONG, || {
        batch_status(&f, "ign").is_some_and(|b| b["running"] == false)
    });
    f.stop();
    assert_eq!(runs(), 3);
    f.start();
    wait_for("the owed path to run at the start", LONG, || {
        lines(&f.ledger).last() == Some(&path("owed"))
    });
    f.wait_idle();
    f.stop();
    assert_eq!(counts(&lines(&f.ledger)).len(), 7, "{:?}", lines(&f.ledger));
    assert_eq!(runs(), 4);
}

/// A comparison with the manifest while a run holds a path (here a directory's attributes
/// changed, at a start the startup rescan) offers that path again unchanged: that is no change
/// made during the run, and `ignore` does not leave it owed until some later change.
#[test]
fn ignore_mode_owes_nothing_for_a_path_offered_again_unchanged_during_its_run() {
    let f = Fixture::new(
        JOB,
        &format!(
            "[[trigger]]\nname = \"ign\"\nbatch = true\non_busy = \"ignore\"\n{}",
            gated(false)
        ),
    );
    let sub = f.tree.join("sub");
    std::fs::create_dir(&sub).unwrap();
    f.start();
    std::fs::write(sub.join("first"), "1").unwrap();
    wait_for("the run to be held at its gate", LONG, || {
        lines(&f.ledger).len() == 1 && lines(&beside(&f, "runs")).len() == 1
    });
    // The directory's comparison offers `first` again: its run has recorded nothing yet.
    std::fs::set_permissions(&sub, std::os::unix::fs::PermissionsExt::from_mode(0o750)).unwrap();
    wait_for("the path to be offered again", LONG, || {
        batch_status(&f, "ign").is_some_and(|b| b["owed"] == 1)
    });
    std::fs::write(beside(&f, "gate"), "").unwrap();
    f.wait_idle();
    f.stop();
    assert_eq!(lines(&f.ledger), [sub.join("first").display().to_string()]);
    assert_eq!(lines(&beside(&f, "runs")).len(), 1);
}

/// Threads of process `pid` named `name`.
fn threads_named(pid: u32, name: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks
                .flatten()
                .filter(|t| {
                    std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == name)
                })
                .count()
        })
        .unwrap_or(0)
}

/// Holds a run of batch trigger `b` (writing to `{ledger}.old`) with a path owed, reloads with
/// `replacement` instead of it (its command writes to `{ledger}.new`), and checks that the owed
/// path runs with the old command, the runner then ends, and a later change goes to the new one.
fn owed_paths_survive_a_reload_to(replacement: &str, new_name: &str) {
    let old = "[[trigger]]\nname = \"b\"\nbatch = true\n\
               exec = [\"sh\", \"-c\", 'cat >> {ledger}.old; \
               while [ ! -e {ledger}.gate ]; do sleep 0.02; done']\n";
    let f = Fixture::new(JOB, old);
    f.start();
    let path = |n: &str| f.tree.join(n).display().to_string();
    let (old_ledger, new_ledger) = (beside(&f, "old"), beside(&f, "new"));
    std::fs::write(f.tree.join("first"), "1").unwrap();
    wait_for("the first run to be held at its gate", LONG, || {
        lines(&old_ledger).len() == 1
    });
    std::fs::write(f.tree.join("owed"), "2").unwrap();
    wait_for("the change to be owed", LONG, || {
        batch_status(&f, "b").is_some_and(|b| b["owed"] == 1)
    });
    let config = std::fs::read_to_string(&f.config).unwrap();
    let start = config.find("[[trigger]]").unwrap();
    std::fs::write(
        &f.config,
        format!(
            "{}{}",
            &config[..start],
            replacement.replace("{ledger}", f.ledger.to_str().unwrap())
        ),
    )
    .unwrap();
    let out = f.run(&["reload"]);
    assert!(out.status.success(), "{out:?}\n{}", f.log());
    let b = batch_status(&f, "b").expect("the retired runner is still there");
    assert_eq!(b["retired"], true, "{b}");
    assert_eq!(b["owed"], 1, "{b}");
    let server = server_pid(&f);
    assert_eq!(threads_named(server, "ward-batch-b"), 1);

    std::fs::write(beside(&f, "gate"), "").unwrap();
    wait_for(
        "the owed path to run with the trigger that matched it",
        LONG,
        || lines(&old_ledger) == [path("first"), path("owed")],
    );
    wait_for("the retired runner to end", LONG, || {
        threads_named(server, "ward-batch-b") == 0
    });
    assert_eq!(lines(&new_ledger), Vec::<String>::new());
    std::fs::write(f.tree.join("after"), "3").unwrap();
    wait_for("the new trigger's run", LONG, || {
        lines(&new_ledger) == [path("after")]
    });
    f.wait_idle();
    assert!(
        batch_status(&f, new_name).is_some_and(|b| b["retired"] == false),
        "{}",
        f.status().1
    );
    f.stop();
    assert_eq!(lines(&old_ledger), [path("first"), path("owed")]);
    f.assert_nothing_left();
}

#[test]
fn paths_owed_to_a_batch_trigger_a_reload_changes_run_with_the_trigger_that_matched_them() {
    owed_paths_survive_a_reload_to(
        "[[trigger]]\nname = \"b\"\nbatch = true\nexec = [\"sh\", \"-c\", 'cat >> {ledger}.new']\n",
        "b",
    );
}

#[test]
fn paths_owed_to_a_batch_trigger_a_reload_removes_run_with_the_trigger_that_matched_them() {
    owed_paths_survive_a_reload_to(
        "[[trigger]]\nname = \"other\"\nbatch = true\nexec = [\"sh\", \"-c\", 'cat >> {ledger}.new']\n",
        "other",
    );
}

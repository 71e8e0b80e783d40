//! End-to-end tests of subscriptions (`ward changes --follow`, the socket's `subscribe`) and
//! holds (`ward hold`, `ward release`).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use ward_e2e::{Fixture, connect_control, wait_for};

const LONG: Duration = Duration::from_secs(60);
/// The job program built with these tests (see `bin/ward-test-job.rs`).
const JOB: &str = env!("CARGO_BIN_EXE_ward-test-job");

fn recording() -> Fixture {
    Fixture::new(
        JOB,
        "[[trigger]]\nname = \"record\"\nexec = [\"{job}\", \"record\", \"{ledger}\"]\n",
    )
}

/// `ward changes --follow ARGS`, its lines read on a thread into a channel.
struct Follower {
    child: Child,
    lines: mpsc::Receiver<serde_json::Value>,
    /// What it said on stderr, for a failure's message.
    stderr: tempfile::NamedTempFile,
}

impl Follower {
    fn start(f: &Fixture, args: &[&str]) -> Follower {
        let mut all = vec!["changes", "--follow"];
        all.extend_from_slice(args);
        let stderr = tempfile::NamedTempFile::new().unwrap();
        let mut child = f
            .ward(&all)
            .stdout(Stdio::piped())
            .stderr(stderr.reopen().unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                let value = serde_json::from_str(&line).expect("a JSON line");
                if tx.send(value).is_err() {
                    return;
                }
            }
        });
        Follower {
            child,
            lines,
            stderr,
        }
    }

    /// Lines until `done` says enough, each within `LONG`.
    fn until(&self, mut done: impl FnMut(&[serde_json::Value]) -> bool) -> Vec<serde_json::Value> {
        let mut seen = Vec::new();
        while !done(&seen) {
            match self.lines.recv_timeout(LONG) {
                Ok(line) => seen.push(line),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("no line within {LONG:?}; so far {seen:?}")
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => panic!(
                    "the follower's output ended; so far {seen:?}; its stderr: {}",
                    std::fs::read_to_string(self.stderr.path()).unwrap_or_default()
                ),
            }
        }
        seen
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn file_names(lines: &[serde_json::Value]) -> Vec<String> {
    lines
        .iter()
        .filter_map(|l| l["path"].as_str())
        .map(|p| p.rsplit('/').next().unwrap().to_owned())
        .collect()
}

#[test]
fn a_follower_gets_changes_as_recorded_and_resumes_from_its_last_seq_without_gap() {
    let f = recording();
    f.start();
    let follower = Follower::start(&f, &["--glob", "*.txt"]);
    for i in 0..5 {
        std::fs::write(f.tree.join(format!("a{i}.txt")), "x").unwrap();
    }
    std::fs::write(f.tree.join("skipped.dat"), "x").unwrap();
    let first = follower.until(|seen| seen.len() == 5);
    let mut names = file_names(&first);
    names.sort();
    assert_eq!(names, ["a0.txt", "a1.txt", "a2.txt", "a3.txt", "a4.txt"]);
    let last = first
        .iter()
        .filter_map(|l| l["seq"].as_u64())
        .max()
        .unwrap();
    drop(follower);

    // Changes made while nobody follows, then a follower from the last seq seen.
    f.wait_idle();
    for i in 0..3 {
        std::fs::write(f.tree.join(format!("b{i}.txt")), "x").unwrap();
    }
    let since = last.to_string();
    let again = Follower::start(&f, &["--since", &since, "--glob", "*.txt"]);
    let second = again.until(|seen| seen.len() == 3);
    let mut names = file_names(&second);
    names.sort();
    assert_eq!(names, ["b0.txt", "b1.txt", "b2.txt"], "{second:?}");
    assert!(second.iter().all(|l| l["seq"].as_u64().unwrap() > last));
    f.stop();
}

#[test]
fn a_follower_goes_on_through_a_server_restart() {
    let f = recording();
    f.start();
    let follower = Follower::start(&f, &[]);
    std::fs::write(f.tree.join("before.txt"), "x").unwrap();
    follower.until(|seen| file_names(seen).contains(&"before.txt".to_owned()));
    let (_, status) = f.status();
    let server = u32::try_from(status["server_pid"].as_u64().unwrap()).unwrap();
    // SAFETY: kill with the server's pid from its status, alive a moment ago.
    unsafe { libc::kill(server as libc::pid_t, libc::SIGKILL) };
    wait_for("a new server", LONG, || {
        let (code, s) = f.status();
        code == Some(0)
            && s["server_pid"]
                .as_u64()
                .is_some_and(|p| p != u64::from(server))
    });
    std::fs::write(f.tree.join("after.txt"), "x").unwrap();
    let lines = follower.until(|seen| file_names(seen).contains(&"after.txt".to_owned()));
    let names = file_names(&lines);
    assert_eq!(
        names.iter().filter(|n| *n == "after.txt").count(),
        1,
        "{lines:?}"
    );
    f.stop();
}

/// The server's resident memory, from /proc.
fn rss_kib(pid: u32) -> u64 {
    ward_sys::ProcStatus::read(pid)
        .ok()
        .and_then(|s| s.kib("VmRSS"))
        .unwrap_or(0)
}

#[test]
fn a_stalled_subscriber_costs_no_memory_gets_resync_and_misses_nothing() {
    let f = recording();
    f.start();
    let (_, status) = f.status();
    let server = u32::try_from(status["server_pid"].as_u64().unwrap()).unwrap();
    // A raw subscription whose reader does not read while 20,000 files change.
    let mut stream: UnixStream = connect_control(&f.state).unwrap();
    stream
        .write_all(b"{\"v\":1,\"cmd\":\"subscribe\",\"since\":0}\n")
        .unwrap();
    let dir = f.tree.join("burst");
    std::fs::create_dir(&dir).unwrap();
    for i in 0..20_000 {
        std::fs::write(dir.join(format!("f{i:05}")), "x").unwrap();
    }
    let mut peak = 0;
    wait_for("all 20,000 processed", Duration::from_secs(600), || {
        peak = peak.max(rss_kib(server));
        let (_, s) = f.status();
        s["manifest"]["paths"].as_u64() == Some(20_000)
            && s["queue"]["queued"] == 0
            && s["queue"]["running"] == 0
            && s["queue"]["backlog"] == 0
    });
    assert!(peak < 96 * 1024, "server RSS peaked at {peak} KiB");
    // Now read it all.
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let first: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(first["ok"], true, "{line}");
    let mut delivered: BTreeMap<String, u64> = BTreeMap::new();
    let mut resync = false;
    let committed = f.status().1["manifest"]["seq"].as_u64().unwrap();
    let mut last = 0;
    while last < committed {
        line.clear();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "closed at seq {last}"
        );
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        if value.get("resync_from").is_some() {
            resync = true;
            continue;
        }
        let seq = value["seq"].as_u64().unwrap();
        assert!(seq > last, "out of order: {seq} after {last}");
        last = seq;
        delivered.insert(value["path"].as_str().unwrap().to_owned(), seq);
    }
    assert!(resync, "a subscriber 20,000 changes behind was not told");
    // The union of what was delivered is the manifest's changes.
    let out = f.run(&["changes"]);
    let manifest: BTreeSet<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["path"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let got: BTreeSet<String> = delivered.keys().cloned().collect();
    assert_eq!(manifest.len(), 20_000);
    assert_eq!(got, manifest);
    f.stop();
}

#[test]
fn a_hold_defers_jobs_and_deliveries_and_each_path_comes_once_after_the_release() {
    let f = recording();
    f.start();
    let follower = Follower::start(&f, &[]);
    let out = f.run(&["hold", "checkout", "--timeout", "120"]);
    assert!(out.status.success(), "{out:?}");
    let (_, status) = f.status();
    assert!(
        status["queue"]["held"]
            .as_str()
            .is_some_and(|h| h.contains("checkout")),
        "{status}"
    );
    for round in 0..3 {
        for i in 0..20 {
            std::fs::write(f.tree.join(format!("h{i:02}.txt")), format!("v{round}")).unwrap();
        }
    }
    // Every change is in ward's hands (queued), and none has run.
    wait_for("the burst queued", LONG, || {
        let (_, s) = f.status();
        s["watch"]["pending"] == 0
            && s["queue"]["queued"].as_u64().unwrap_or(0)
                + s["queue"]["backlog"].as_u64().unwrap_or(0)
                >= 20
    });
    assert!(f.ledger_entries().is_empty(), "a job ran during the hold");
    assert!(
        follower.lines.try_recv().is_err(),
        "a change was delivered during the hold"
    );
    let out = f.run(&["release", "checkout"]);
    assert!(out.status.success(), "{out:?}");
    let lines = follower.until(|seen| seen.len() == 20);
    let names: BTreeSet<String> = file_names(&lines).into_iter().collect();
    assert_eq!(names.len(), 20, "each path once: {lines:?}");
    f.wait_idle();
    let mut runs: BTreeMap<Vec<u8>, usize> = BTreeMap::new();
    for (_, path) in f.ledger_entries() {
        *runs.entry(path).or_default() += 1;
    }
    assert_eq!(runs.len(), 20);
    assert!(runs.values().all(|&n| n == 1), "{runs:?}");
    // A command run under a hold: its exit status is ward's, and the hold is gone after it.
    let out = f.run(&["hold", "co", "--", "sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    assert!(f.status().1["queue"]["held"].is_null());
    let out = f.run(&["release", "nosuch"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    f.stop();
}

/// The Python client in `contrib/` (standard library only) subscribes and receives the changes
/// made after it subscribed; its `status` reads the socket too.
#[test]
fn the_python_client_follows_changes() {
    if !ward_e2e::have_tool("python3", "python3") {
        return;
    }
    let f = recording();
    f.start();
    let client = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../contrib/python/ward_client.py"
    );
    let status = std::process::Command::new("python3")
        .args([client, "--state-dir"])
        .arg(&f.state)
        .arg("status")
        .output()
        .unwrap();
    assert!(status.status.success(), "{status:?}");
    let value: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert!(value["server_pid"].is_u64(), "{value}");

    let mut child = std::process::Command::new("python3")
        .args([client, "--state-dir"])
        .arg(&f.state)
        .args(["follow", "--glob", "*.py"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    // Subscribed once a first change comes through: written until one does.
    let mut line = String::new();
    let mut n = 0;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    if tx.send(line.clone()).is_err() {
                        return;
                    }
                }
            }
        }
    });
    std::fs::write(f.tree.join("not-matched.txt"), "x").unwrap();
    let got = loop {
        std::fs::write(f.tree.join(format!("m{n}.py")), "x").unwrap();
        n += 1;
        if let Ok(line) = rx.recv_timeout(Duration::from_secs(2)) {
            break line;
        }
        assert!(n < 30, "the Python client printed nothing");
    };
    let change: serde_json::Value = serde_json::from_str(&got).unwrap();
    assert!(
        change["path"].as_str().unwrap().ends_with(".py"),
        "{change}"
    );
    assert!(
        change["seq"].is_u64() && change["event"].is_string(),
        "{change}"
    );
    let _ = child.kill();
    let _ = child.wait();
    f.stop();
}

/// A hold holds batch runs back too: nothing runs while held, one run gets every path after.
#[test]
fn a_hold_defers_batch_runs_and_one_run_follows_the_release() {
    let f = Fixture::new(
        JOB,
        "[[trigger]]\nname = \"build\"\nbatch = true\n\
         exec = [\"sh\", \"-c\", 'cat >> {ledger}; echo run >> {ledger}.runs']\n",
    );
    f.start();
    let out = f.run(&["hold", "co"]);
    assert!(out.status.success(), "{out:?}");
    for i in 0..10 {
        std::fs::write(f.tree.join(format!("b{i}")), "x").unwrap();
    }
    let runs = || {
        std::fs::read_to_string(format!("{}.runs", f.ledger.display()))
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    wait_for("the paths owed to the batch", LONG, || {
        f.status().1["queue"]["backlog"].as_u64().unwrap_or(0) >= 10
    });
    assert_eq!(runs(), 0, "a batch ran during the hold");
    let out = f.run(&["release", "co"]);
    assert!(out.status.success(), "{out:?}");
    wait_for("one run after the release", LONG, || runs() == 1);
    f.wait_idle();
    assert_eq!(runs(), 1);
    let given = std::fs::read_to_string(&f.ledger).unwrap();
    assert_eq!(given.lines().count(), 10, "{given}");
    f.stop();
}

//! Jobs handed to NATS JetStream: `ward start` with a publish trigger on one side, `ward work`
//! processes on the other, and a real `nats-server` (with JetStream and file storage) between
//! them, started by each test on a free port.

use std::collections::HashSet;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ward_e2e::{Fixture, free_port, have_tool, holds_within, wait_for};

const JOB: &str = env!("CARGO_BIN_EXE_ward-test-job");
/// Given to [`Work::start`]: no `--root`, the jobs must carry their content.
const CARRIED: &str = "<carried>";

/// A `nats-server -js` on a free port with its storage in `dir`, killed on drop.
struct NatsServer {
    child: Child,
    url: String,
}

impl NatsServer {
    /// On a port the server picks itself: a port picked here and released could be taken by a
    /// concurrent test's server before this one binds it, and the test would then talk to that
    /// one (seen in CI as a client waiting on a peer that never answered).
    fn start(dir: &Path) -> NatsServer {
        NatsServer::start_with(dir, "-1")
    }

    /// On `port` (a restart on the port its clients know).
    fn start_on(dir: &Path, port: u16) -> NatsServer {
        NatsServer::start_with(dir, &port.to_string())
    }

    /// Started, and its client URL read from the ports file it writes once it listens: a server
    /// that could not bind its port never writes one, and says why in its log.
    fn start_with(dir: &Path, port: &str) -> NatsServer {
        let ports = dir.join("nats-ports");
        std::fs::create_dir_all(&ports).unwrap();
        let log = dir.join("nats-server.log");
        let mut child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", port, "-sd"])
            .arg(dir.join("nats"))
            .arg("--ports_file_dir")
            .arg(&ports)
            .arg("-l")
            .arg(&log)
            .stdout(Stdio::null())
            // What it says outside its log (a Go panic, a goroutine dump on SIGQUIT).
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(dir.join("nats-server.stderr"))
                    .unwrap(),
            )
            .spawn()
            .expect("starting nats-server");
        let file = ports.join(format!("nats-server_{}.ports", child.id()));
        let mut url = None;
        wait_for("nats-server to listen", Duration::from_secs(10), || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "nats-server on port {port} ended ({status}): {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            url = std::fs::read_to_string(&file)
                .ok()
                .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
                .and_then(|v| v["nats"][0].as_str().map(str::to_owned));
            url.is_some()
        });
        NatsServer {
            child,
            url: url.expect("the ports file's URL"),
        }
    }

    fn port(&self) -> u16 {
        self.url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("a port in the URL")
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `ward work` process, killed on drop (a test that passed has stopped it with SIGTERM).
struct Work {
    child: Child,
    ledger: PathBuf,
    log: PathBuf,
}

impl Work {
    /// Waits until it pulls: connected, its stream and consumer made.
    fn wait_ready(&self) {
        wait_for("ward work to pull", Duration::from_secs(60), || {
            self.log().contains("working: ")
        });
    }

    /// `ward work` #`n` of fixture `f`, its config's one trigger `name` running `exec` (TOML
    /// array text, `{ledger}` its own ledger), paths resolved under the fixture's tree.
    fn start(
        f: &Fixture,
        nats: &NatsServer,
        n: usize,
        name: &str,
        exec: &str,
        extra: &[&str],
    ) -> Work {
        let dir = f.dir.path().join(format!("work{n}"));
        std::fs::create_dir_all(&dir).unwrap();
        let ledger = dir.join("ledger");
        let config = dir.join("worker.toml");
        std::fs::write(
            &config,
            format!(
                "[jobs]\nretries = 0\nbackoff_s = 0.05\n\n[[trigger]]\nname = \"{name}\"\nexec = {}\n",
                exec.replace("{ledger}", ledger.to_str().unwrap())
                    .replace("{job}", JOB)
            ),
        )
        .unwrap();
        let log = dir.join("work.log");
        let child = ward_e2e::ward()
            .arg("--config")
            .arg(&config)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .args(["work", "--nats", &nats.url, "--consumer", "workers"])
            .args(if extra.contains(&CARRIED) {
                Vec::new()
            } else {
                vec!["--root".as_ref(), f.tree.as_os_str()]
            })
            .args(extra.iter().filter(|a| **a != CARRIED))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("starting ward work");
        Work { child, ledger, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The paths its jobs recorded.
    fn paths(&self) -> Vec<Vec<u8>> {
        self.entries().into_iter().map(|(_, path)| path).collect()
    }

    /// What its jobs recorded: (event, path).
    fn entries(&self) -> Vec<(String, Vec<u8>)> {
        let Ok(bytes) = std::fs::read(&self.ledger) else {
            return Vec::new();
        };
        bytes
            .split(|&b| b == 0)
            .filter(|e| !e.is_empty())
            .filter_map(|e| {
                let tab = e.iter().position(|&b| b == b'\t')?;
                Some((
                    String::from_utf8_lossy(&e[..tab]).into_owned(),
                    e[tab + 1..].to_vec(),
                ))
            })
            .collect()
    }

    /// SIGTERM, and its exit status.
    fn stop(mut self) -> std::process::ExitStatus {
        // SAFETY: kill with the pid of our own child, not reaped yet.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        std::mem::forget(self);
        status
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn publish_trigger(name: &str, nats: &NatsServer) -> String {
    publish_trigger_to(name, &nats.url)
}

fn publish_trigger_to(name: &str, url: &str) -> String {
    format!(
        "[[trigger]]\nname = \"{name}\"\npublish = {{ url = \"{url}\", stream = \"WARD\", subject = \"ward.jobs.{{trigger}}\" }}\n"
    )
}

fn append_trigger(f: &Fixture, trigger: &str) {
    let config = std::fs::read_to_string(&f.config).unwrap();
    std::fs::write(&f.config, format!("{config}\n{trigger}")).unwrap();
}

/// A fixture whose config has a publish trigger `name` to a nats-server of its own; `None` (the
/// test skipped, said by [`have_tool`]) without nats-server.
fn origin(name: &str) -> Option<(Fixture, NatsServer)> {
    if !have_tool("nats-server", "nats-server") {
        return None;
    }
    let f = Fixture::new(JOB, "");
    let nats = NatsServer::start(f.dir.path());
    append_trigger(&f, &publish_trigger(name, &nats));
    Some((f, nats))
}

/// Two `ward work` processes that record the jobs of trigger `name` in their ledgers (`extra`:
/// flags for both), each pulling before this returns.
fn two_recorders(f: &Fixture, nats: &NatsServer, name: &str, extra: &[&str]) -> [Work; 2] {
    let record = "[\"{job}\", \"record\", \"{ledger}\"]";
    let workers = [1, 2].map(|n| Work::start(f, nats, n, name, record, extra));
    for w in &workers {
        w.wait_ready();
    }
    workers
}

/// Brings `content` into the tree at `path` whole, by a rename from beside the tree, with
/// `modified` as its mtime if given. Written in place, a stall between a new file's creation and
/// its write longer than the debounce, on a loaded machine, makes two versions of it and two jobs
/// (seen in CI), where a test counts one.
fn place(f: &Fixture, path: &Path, content: &str, modified: Option<std::time::SystemTime>) {
    let staged = f.dir.path().join("staged");
    std::fs::write(&staged, content).unwrap();
    if let Some(time) = modified {
        let file = std::fs::File::options().write(true).open(&staged).unwrap();
        file.set_modified(time).unwrap();
    }
    std::fs::rename(&staged, path).unwrap();
}

/// Every path the workers' jobs recorded, once per job.
fn recorded(workers: &[Work]) -> Vec<Vec<u8>> {
    workers.iter().flat_map(Work::paths).collect()
}

/// The first `n` lines of `log` that are not INFO.
fn not_info(log: &str, n: usize) -> String {
    log.lines()
        .filter(|l| !l.contains(" INFO "))
        .take(n)
        .collect::<Vec<_>>()
        .join("\n")
}

/// SIGTERMs each worker; each must exit cleanly.
fn stop_all(workers: [Work; 2]) {
    for w in workers {
        let log = w.log();
        let status = w.stop();
        assert!(status.success(), "ward work: {status}\n{log}");
    }
}

/// How many files the burst has (`WARD_TEST_NATS_BURST` to try another size).
fn burst() -> usize {
    std::env::var("WARD_TEST_NATS_BURST")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2_000)
}

#[test]
fn a_burst_published_by_ward_start_is_processed_by_two_workers_and_none_is_lost() {
    let Some((f, nats)) = origin("index") else {
        return;
    };
    f.edit_config("[jobs]\n", "[jobs]\nworkers = 8\n");
    // Both pull before the burst, so that both take a share of it.
    let workers = two_recorders(&f, &nats, "index", &[]);
    f.start();
    let files = burst();
    let mut want = HashSet::new();
    for i in 0..files {
        let dir = f.tree.join(format!("d{}", i % 20));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("f{i}.txt"));
        std::fs::write(&path, format!("version 1 of {i}")).unwrap();
        want.insert(path.as_os_str().as_bytes().to_vec());
    }
    // The final version of a few, rewritten while the first ones are in flight.
    for i in (0..files).step_by(97) {
        let path = f.tree.join(format!("d{}/f{i}.txt", i % 20));
        std::fs::write(&path, format!("version 2 of {i}")).unwrap();
    }
    let started = std::time::Instant::now();
    let mut missing = Vec::new();
    let all_seen = holds_within(Duration::from_secs(240), || {
        let seen: HashSet<Vec<u8>> = recorded(&workers).into_iter().collect();
        missing = want
            .iter()
            .filter(|p| !seen.contains(*p))
            .cloned()
            .collect();
        missing.is_empty()
    });
    if !all_seen {
        missing.sort();
        panic!(
            "after 240 s, {} of {files} files not processed by a worker, among them:\n{}\n\
             origin's status: {}\norigin's log (not INFO):\n{}\nworkers' logs (not INFO):\n{}\n\
             nats-server's log, its end:\n{}",
            missing.len(),
            missing
                .iter()
                .take(10)
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .collect::<Vec<_>>()
                .join("\n"),
            f.status().1,
            not_info(&f.log(), 40),
            workers
                .iter()
                .map(|w| not_info(&w.log(), 20))
                .collect::<Vec<_>>()
                .join("\n--\n"),
            {
                let log = std::fs::read_to_string(f.dir.path().join("nats-server.log"))
                    .unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                lines[lines.len().saturating_sub(20)..].join("\n")
            },
        );
    }
    eprintln!(
        "{files} files processed by two workers in {:?}",
        started.elapsed()
    );
    // The origin counts them processed: nothing owed, nothing failed.
    f.wait_idle();
    let failures = f.run(&["failures", "--json"]);
    assert!(
        failures.stdout.is_empty(),
        "{failures:?}\nlog:\n{}",
        f.log()
    );
    let per_worker: Vec<usize> = workers.iter().map(|w| w.paths().len()).collect();
    assert!(
        per_worker.iter().all(|&n| n > 0),
        "both workers should have taken jobs: {per_worker:?}"
    );
    // And hears back from the workers: a success for every job they ran.
    // Jobs still running on the workers when the origin went idle (its publishes acknowledged)
    // are counted as their results come.
    let (mut heard, mut ran) = (None, 0);
    holds_within(Duration::from_secs(60), || {
        heard = f.status().1["remote"][0]["succeeded"].as_u64();
        ran = recorded(&workers).len() as u64;
        heard == Some(ran)
    });
    assert_eq!(
        heard,
        Some(ran),
        "successes heard by the origin, of {ran} jobs run; the workers said:\n{}",
        workers
            .iter()
            .map(|w| not_info(&w.log(), 20))
            .collect::<Vec<_>>()
            .join("\n--\n")
    );
    f.stop();
    stop_all(workers);
}

#[test]
fn a_poison_job_is_dead_lettered_after_its_maximum_deliveries() {
    let Some((f, nats)) = origin("poison") else {
        return;
    };
    // Exits 1 every time, after recording that it ran.
    let poison = "[\"{job}\", \"fail\", \"{ledger}\"]";
    // The origin first: the stream it makes must leave `ward.dead.>` to the dead letters'.
    f.start();
    place(&f, &f.tree.join("bad.txt"), "x", None);
    wait_for("the publish", Duration::from_secs(30), || {
        f.status().1["queue"]["completed"] == 1
    });
    let work = Work::start(&f, &nats, 1, "poison", poison, &["--max-deliver", "3"]);
    let want = f.tree.join("bad.txt");
    wait_for("the dead letter", Duration::from_secs(60), || {
        work.log().contains("dead-lettered on ward.dead.poison")
    });
    // Three deliveries, no more.
    let runs = work
        .paths()
        .iter()
        .filter(|p| p.as_slice() == want.as_os_str().as_bytes())
        .count();
    assert_eq!(runs, 3, "{}", work.log());
    let publisher = ward_nats::Publisher::connect(
        &nats.url,
        &ward_nats::StreamSpec::kept("WARD_DEAD", "ward.dead.>"),
    )
    .unwrap();
    let letters = publisher
        .read_all("WARD_DEAD", 10, Duration::from_secs(1))
        .unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    let (subject, body) = &letters[0];
    assert_eq!(subject, "ward.dead.poison");
    let letter: serde_json::Value = serde_json::from_slice(body).unwrap();
    assert_eq!(letter["job"]["path"], "bad.txt", "{letter}");
    assert_eq!(letter["deliveries"], 3, "{letter}");
    assert!(
        letter["error"].as_str().unwrap().contains("exit"),
        "{letter}"
    );

    // The origin learns what became of it: counted, and listed as a path that gave up.
    let remote = |f: &Fixture| f.status().1["remote"].clone();
    wait_for(
        "the origin to hear of the give-up",
        Duration::from_secs(30),
        || remote(&f)[0]["gave_up"] == 1,
    );
    let shown = remote(&f);
    assert_eq!(shown[0]["trigger"], "poison", "{shown}");
    assert_eq!(shown[0]["retried"], 2, "{shown}");
    assert_eq!(shown[0]["succeeded"], 0, "{shown}");
    assert!(
        shown[0]["last_error"].as_str().unwrap().contains("exit"),
        "{shown}"
    );
    let listed = f.failures();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["path"], want.to_str().unwrap(), "{listed:?}");
    assert_eq!(listed[0]["attempts"], 3, "{listed:?}");
    assert!(
        listed[0]["error"].as_str().unwrap().contains("on worker"),
        "{listed:?}"
    );
    let metrics = f.run(&["metrics"]);
    let text = String::from_utf8_lossy(&metrics.stdout);
    for line in [
        "ward_remote_jobs_total{trigger=\"poison\",outcome=\"gave_up\"} 1",
        "ward_remote_jobs_total{trigger=\"poison\",outcome=\"retried\"} 2",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line} in:\n{text}");
    }
    // A restart neither forgets it nor publishes it again: it gave up on this version.
    f.stop();
    f.start();
    f.wait_idle();
    assert_eq!(f.status().1["manifest"]["gave_up"], 1);
    assert_eq!(f.status().1["queue"]["completed"], 0);
    // `ward retry` owes it again: published once more, within the stream's duplicate window of
    // its first publish, and delivered to the worker again (not dropped as a duplicate of the
    // message that gave up), so that it gives up a second time.
    let retried = f.run(&["retry", want.to_str().unwrap()]);
    assert!(retried.status.success(), "{retried:?}");
    wait_for("the retried publish", Duration::from_secs(30), || {
        f.status().1["queue"]["completed"] == 1
    });
    wait_for(
        "the retried job to reach the worker and give up again",
        Duration::from_secs(60),
        || remote(&f)[0]["gave_up"] == 1,
    );
    wait_for(
        "the second give-up recorded",
        Duration::from_secs(30),
        || f.status().1["manifest"]["gave_up"] == 1,
    );
    assert!(
        !f.log().contains("published again"),
        "the retry was dropped as a duplicate:\n{}",
        f.log()
    );
    // A retry made while ward is stopped, still within that window: the next start publishes
    // the job with an id of its own too, and the worker gets it a third time.
    f.stop();
    let retried = f.run(&["retry", want.to_str().unwrap()]);
    assert!(retried.status.success(), "{retried:?}");
    f.start();
    wait_for(
        "the job retried while stopped to reach the worker and give up again",
        Duration::from_secs(60),
        || remote(&f)[0]["gave_up"] == 1,
    );
    assert!(
        !f.log().contains("published again"),
        "the stopped retry was dropped as a duplicate:\n{}",
        f.log()
    );
    let runs = work
        .paths()
        .iter()
        .filter(|p| p.as_slice() == want.as_os_str().as_bytes())
        .count();
    assert_eq!(
        runs,
        9,
        "three deliveries of each of three publishes: {}",
        work.log()
    );
    f.stop();
    let log = work.log();
    assert!(work.stop().success(), "{log}");
}

#[test]
fn a_job_published_while_the_server_is_down_stays_owed_and_is_published_once_it_answers() {
    if !have_tool("nats-server", "nats-server") {
        return;
    }
    let f = Fixture::new(JOB, "");
    let port = free_port();
    // One retry a tenth of a second apart: a server away is no failure of the job, which would
    // otherwise give up at once.
    append_trigger(
        &f,
        &format!(
            "{}retries = 1\nbackoff_s = 0.1\n",
            publish_trigger_to("index", &format!("nats://127.0.0.1:{port}"))
        ),
    );
    f.start();
    std::fs::write(f.tree.join("a.txt"), "1").unwrap();
    let publisher = |f: &Fixture| f.status().1["publishing"][0].clone();
    wait_for(
        "the publisher to wait for its server",
        Duration::from_secs(30),
        || publisher(&f)["waiting_for_server"] == true,
    );
    assert!(
        holds_within(Duration::from_secs(2), || {
            f.status().1["manifest"]["gave_up"] == 0 && f.status().1["queue"]["backlog"] == 1
        }),
        "{}\n{}",
        f.status().1,
        f.log()
    );
    assert!(
        publisher(&f)["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("cannot connect")),
        "{}",
        publisher(&f)
    );
    assert!(f.log().contains("its jobs stay owed"), "{}", f.log());
    // The server comes: the job owed is published and run by a worker, with no retry asked.
    let nats = NatsServer::start_on(f.dir.path(), port);
    let work = Work::start(
        &f,
        &nats,
        1,
        "index",
        "[\"{job}\", \"record\", \"{ledger}\"]",
        &[],
    );
    let want = f.tree.join("a.txt");
    wait_for("the worker to run it", Duration::from_secs(60), || {
        work.paths()
            .iter()
            .any(|p| p.as_slice() == want.as_os_str().as_bytes())
    });
    f.wait_idle();
    assert_eq!(publisher(&f)["waiting_for_server"], false);
    assert_eq!(f.status().1["manifest"]["gave_up"], 0, "{}", f.log());
    assert!(f.log().contains("answers again"), "{}", f.log());
    f.stop();
    let log = work.log();
    assert!(work.stop().success(), "{log}");
}

#[test]
fn a_worker_without_the_files_runs_on_the_content_the_message_carries() {
    if !have_tool("nats-server", "nats-server") {
        return;
    }
    let f = Fixture::new(JOB, "");
    let nats = NatsServer::start(f.dir.path());
    let trigger = publish_trigger("carry", &nats).replace(" }\n", ", content_max_kb = 1 }\n");
    append_trigger(&f, &trigger);
    let copy = "[\"sh\", \"-c\", \"cat \\\"$WARD_PATH\\\" >> {ledger}.content; echo >> {ledger}.content\"]";
    let work = Work::start(&f, &nats, 1, "carry", copy, &[CARRIED]);
    f.start();
    std::fs::write(f.tree.join("small.txt"), "carried across").unwrap();
    // Past the limit: nothing carried, and without a root the worker cannot run it.
    std::fs::write(f.tree.join("big.txt"), vec![b'x'; 2048]).unwrap();
    let content = work.ledger.with_extension("content");
    // The job writes the content, then a newline: wait for both, not for the first write.
    wait_for("the carried content", Duration::from_secs(60), || {
        std::fs::read_to_string(&content).is_ok_and(|c| c == "carried across\n")
    });
    wait_for(
        "the file too big to carry to be dead-lettered",
        Duration::from_secs(60),
        || work.log().contains("big.txt: gave up after 1 deliveries"),
    );
    assert!(work.log().contains("no --root"), "{}", work.log());
    assert_eq!(
        std::fs::read_to_string(&content).unwrap(),
        "carried across\n"
    );
    f.stop();
    let log = work.log();
    assert!(work.stop().success(), "{log}");
}

#[test]
fn a_job_whose_worker_is_killed_mid_job_is_delivered_to_the_other_worker() {
    let Some((f, nats)) = origin("slow") else {
        return;
    };
    // The first worker's job waits for a gate that never opens; the second's records at once.
    let never = f.dir.path().join("never");
    let gated = format!(
        "[\"{{job}}\", \"gated\", \"{{ledger}}\", \"{}\"]",
        never.display()
    );
    let ack_wait = ["--ack-wait", "2"];
    let first = Work::start(&f, &nats, 1, "slow", &gated, &ack_wait);
    f.start();
    place(&f, &f.tree.join("a.txt"), "1", None);
    wait_for(
        "the first worker's job to run",
        Duration::from_secs(60),
        || !ward_e2e::processes_mentioning(&never).is_empty(),
    );
    let mut first = first;
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    wait_for("its job to die with it", Duration::from_secs(10), || {
        ward_e2e::processes_mentioning(&never).is_empty()
    });
    let second = Work::start(
        &f,
        &nats,
        2,
        "slow",
        "[\"{job}\", \"record\", \"{ledger}\"]",
        &ack_wait,
    );
    let want = f.tree.join("a.txt");
    wait_for(
        "the second worker to run it",
        Duration::from_secs(60),
        || {
            second
                .paths()
                .iter()
                .any(|p| p.as_slice() == want.as_os_str().as_bytes())
        },
    );
    assert!(first.paths().is_empty());
    f.stop();
    let log = second.log();
    assert!(second.stop().success(), "{log}");
}

#[test]
fn a_job_whose_file_was_modified_since_is_not_run_and_its_later_version_is() {
    let Some((f, nats)) = origin("stale") else {
        return;
    };
    f.start();
    // Two versions of one file, each published before the next is written, while no worker
    // pulls: the first one's job is stale by the time a worker gets it.
    let path = f.tree.join("a.txt");
    place(&f, &path, "1", None);
    let published = |n: u64| {
        let mut seen = serde_json::Value::Null;
        let held = holds_within(Duration::from_secs(30), || {
            seen = f.status().1["queue"]["completed"].clone();
            seen == n
        });
        assert!(
            held,
            "waited 30 s for publish {n}; completed jobs: {seen}; the server's log:\n{}",
            f.log()
        );
    };
    published(1);
    // Later than the first version's mtime whatever the clock's grain.
    let later = std::time::SystemTime::now() + Duration::from_secs(2);
    place(&f, &path, "22", Some(later));
    published(2);
    let work = Work::start(
        &f,
        &nats,
        1,
        "stale",
        "[\"{job}\", \"record\", \"{ledger}\"]",
        &[],
    );
    let remote = |f: &Fixture| f.status().1["remote"][0].clone();
    wait_for(
        "both results at the origin",
        Duration::from_secs(60),
        || {
            let r = remote(&f);
            r["succeeded"].as_u64().unwrap_or(0) + r["superseded"].as_u64().unwrap_or(0) == 2
        },
    );
    let shown = remote(&f);
    assert_eq!(
        (&shown["succeeded"], &shown["superseded"]),
        (&1.into(), &1.into()),
        "{shown}\n{}",
        work.log()
    );
    assert_eq!(
        work.paths(),
        [path.as_os_str().as_bytes()],
        "the stale version ran too: {}",
        work.log()
    );
    let metrics = f.run(&["metrics"]);
    let text = String::from_utf8_lossy(&metrics.stdout);
    let line = "ward_remote_jobs_total{trigger=\"stale\",outcome=\"superseded\"} 1";
    assert!(text.lines().any(|l| l == line), "no {line} in:\n{text}");
    f.stop();
    let log = work.log();
    assert!(work.stop().success(), "{log}");
}

#[test]
fn a_job_whose_workers_die_holding_it_past_its_maximum_is_dead_lettered_not_parked() {
    let Some((f, nats)) = origin("lost") else {
        return;
    };
    // Each worker's job waits for a gate that never opens; each worker is SIGKILLed with it
    // in hand, so that no delivery is ever settled.
    let never = f.dir.path().join("never");
    let gated = format!(
        "[\"{{job}}\", \"gated\", \"{{ledger}}\", \"{}\"]",
        never.display()
    );
    let flags = ["--ack-wait", "2", "--max-deliver", "2"];
    f.start();
    place(&f, &f.tree.join("a.txt"), "1", None);
    for n in 1..=2 {
        let mut work = Work::start(&f, &nats, n, "lost", &gated, &flags);
        wait_for(
            &format!("delivery {n} to run"),
            Duration::from_secs(60),
            || !ward_e2e::processes_mentioning(&never).is_empty(),
        );
        work.child.kill().unwrap();
        work.child.wait().unwrap();
        wait_for("its job to die with it", Duration::from_secs(10), || {
            ward_e2e::processes_mentioning(&never).is_empty()
        });
    }
    // The third delivery, past the maximum: dead-lettered, not run, and shown at the origin.
    // A consumer whose server stopped at two deliveries would keep the job in the stream,
    // delivered to no one.
    let third = Work::start(
        &f,
        &nats,
        3,
        "lost",
        "[\"{job}\", \"record\", \"{ledger}\"]",
        &flags,
    );
    wait_for("the dead letter", Duration::from_secs(60), || {
        third.log().contains("dead-lettered on ward.dead.lost")
    });
    assert!(third.paths().is_empty(), "run again: {}", third.log());
    wait_for("the origin to list it", Duration::from_secs(30), || {
        f.failures().len() == 1
    });
    let listed = f.failures();
    let want = f.tree.join("a.txt");
    assert_eq!(listed[0]["path"], want.to_str().unwrap(), "{listed:?}");
    assert!(
        listed[0]["error"]
            .as_str()
            .unwrap()
            .contains("delivered 3 times, more than its 2"),
        "{listed:?}"
    );
    f.stop();
    let log = third.log();
    assert!(third.stop().success(), "{log}");
}

#[test]
fn nats_server_killed_mid_burst_and_restarted_on_its_storage_loses_nothing() {
    /// Files written while nats-server is away.
    const AWAY: usize = 10_000;
    if !have_tool("nats-server", "nats-server") {
        return;
    }
    let f = Fixture::new(JOB, "");
    let mut nats = NatsServer::start(f.dir.path());
    let port = nats.port();
    f.edit_config("[jobs]\n", "[jobs]\nworkers = 4\n");
    // The trigger's default retries (2): a server away is no failure of its jobs.
    append_trigger(&f, &publish_trigger("index", &nats));
    let workers = two_recorders(&f, &nats, "index", &["--ack-wait", "2"]);
    f.start();
    let files = 1_000;
    let mut want = HashSet::new();
    for i in 0..files {
        let path = f.tree.join(format!("f{i}.txt"));
        std::fs::write(&path, i.to_string()).unwrap();
        want.insert(path.as_os_str().as_bytes().to_vec());
    }
    let seen = || -> HashSet<Vec<u8>> { recorded(&workers).into_iter().collect() };
    wait_for(
        "the first jobs to be processed",
        Duration::from_secs(60),
        || seen().len() >= 50,
    );
    nats.child.kill().unwrap();
    nats.child.wait().unwrap();
    let during = seen().len();
    // Files changed while it is away are owed, and published once it is back.
    for i in 0..100 {
        std::fs::write(f.tree.join(format!("f{i}.txt")), format!("{i} again")).unwrap();
    }
    wait_for(
        "the publisher to wait for its server",
        Duration::from_secs(60),
        || f.status().1["publishing"][0]["waiting_for_server"] == true,
    );
    // What comes meanwhile waits in the manifest, not in the server's memory.
    for i in files..files + AWAY {
        let path = f.tree.join(format!("f{i}.txt"));
        std::fs::write(&path, i.to_string()).unwrap();
        want.insert(path.as_os_str().as_bytes().to_vec());
    }
    let server = f.status().1["server_pid"].as_u64().unwrap();
    let _restarted = NatsServer::start_on(f.dir.path(), port);
    wait_for(
        "every file to be processed after the restart",
        Duration::from_secs(120),
        || {
            let seen = seen();
            want.iter().all(|p| seen.contains(p))
        },
    );
    eprintln!("{during} of {files} processed when nats-server was killed");
    f.wait_idle();
    // The server's peak, its absence and the catching up included.
    assert_eq!(f.status().1["server_pid"].as_u64(), Some(server));
    let peak_kib = std::fs::read_to_string(format!("/proc/{server}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap();
    eprintln!(
        "server peak RSS {} MiB, {AWAY} files written while nats-server was away",
        peak_kib / 1024
    );
    assert!(
        peak_kib <= 64 * 1024,
        "the server's peak RSS reached {peak_kib} KiB"
    );
    assert_eq!(
        f.status().1["manifest"]["gave_up"].as_u64(),
        Some(0),
        "{}",
        f.log()
    );
    f.stop();
    stop_all(workers);
}

/// The origin's server SIGKILLed mid-burst: jobs published but not yet recorded as such are
/// published again by the restarted server (the keeper restarts it), and the stream drops those
/// republishes by their message ids, so that every file is processed exactly once.
#[test]
fn the_origin_killed_between_publish_and_record_publishes_again_and_the_stream_keeps_one() {
    let Some((f, nats)) = origin("index") else {
        return;
    };
    f.edit_config("[jobs]\n", "[jobs]\nworkers = 8\n");
    let workers = two_recorders(&f, &nats, "index", &[]);
    // Written before the start, which publishes them: each has one version (written while
    // watched, a file could be published empty and then again with its content).
    let files = 2_000;
    let mut want = HashSet::new();
    for i in 0..files {
        let path = f.tree.join(format!("f{i}.txt"));
        std::fs::write(&path, i.to_string()).unwrap();
        want.insert(path.as_os_str().as_bytes().to_vec());
    }
    f.start();
    let first_server = f.status().1["server_pid"].as_u64().unwrap();
    let runs = || recorded(&workers);
    // Killed while it publishes: some acknowledged publishes are not recorded yet.
    wait_for(
        "the first jobs to be processed",
        Duration::from_secs(60),
        || runs().len() >= 100,
    );
    // SAFETY: kill with the pid the status gave, the fixture's own server.
    unsafe { libc::kill(first_server as libc::pid_t, libc::SIGKILL) };
    wait_for(
        "the keeper to restart the server",
        Duration::from_secs(60),
        || {
            let (_, status) = f.status();
            status["server_pid"]
                .as_u64()
                .is_some_and(|p| p != first_server)
        },
    );
    wait_for(
        "every file to be processed after the restart",
        Duration::from_secs(120),
        || {
            let seen: HashSet<Vec<u8>> = runs().into_iter().collect();
            want.iter().all(|p| seen.contains(p))
        },
    );
    f.wait_idle();
    let all = runs();
    let mut once = HashSet::new();
    let twice: Vec<String> = all
        .iter()
        .filter(|p| !once.insert(p.as_slice()))
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    let republished = f
        .log()
        .matches("dropped by the stream as a duplicate")
        .count();
    eprintln!("{republished} publish(es) dropped as duplicates after the restart");
    assert!(twice.is_empty(), "processed twice: {twice:?}");
    assert_eq!(all.len(), files);
    f.stop();
    stop_all(workers);
}

/// A path removed, made again and removed again within the stream's duplicate window: both
/// removals reach the worker (a removal has no version; its id must still differ).
#[test]
fn a_path_removed_twice_within_the_duplicate_window_is_delivered_twice() {
    let Some((f, nats)) = origin("index") else {
        return;
    };
    let record = "[\"{job}\", \"record\", \"{ledger}\"]";
    let work = Work::start(&f, &nats, 1, "index", record, &[]);
    work.wait_ready();
    f.start();
    let path = f.tree.join("a.txt");
    let events = || -> Vec<String> {
        work.entries()
            .into_iter()
            .filter(|(_, p)| p.as_slice() == path.as_os_str().as_bytes())
            .map(|(event, _)| event)
            .collect()
    };
    for (round, content) in ["one", "two"].into_iter().enumerate() {
        std::fs::write(&path, content).unwrap();
        wait_for("the file's job", Duration::from_secs(30), || {
            events().iter().filter(|e| *e != "removed").count() > round
        });
        std::fs::remove_file(&path).unwrap();
        wait_for("its removal's job", Duration::from_secs(30), || {
            events().iter().filter(|e| *e == "removed").count() == round + 1
        });
    }
    f.stop();
    let log = work.log();
    assert!(work.stop().success(), "{log}");
}

/// Each message carries its change's sequence number in the origin's manifest: the job on the
/// worker gets it as `WARD_SEQ`, and it is the number the origin's `ward changes` gives the path
/// (a rename's old path one less), growing with each change of a path.
#[test]
fn a_remote_job_gets_the_sequence_number_the_origin_gives_its_change() {
    let Some((f, nats)) = origin("index") else {
        return;
    };
    let record =
        "[\"sh\", \"-c\", \"echo \\\"$WARD_SEQ $WARD_EVENT $WARD_PATH\\\" >> {ledger}.seq\"]";
    let work = Work::start(&f, &nats, 1, "index", record, &[]);
    work.wait_ready();
    f.start();
    let seqs = work.ledger.with_extension("seq");
    let lines = || std::fs::read_to_string(&seqs).unwrap_or_default();
    let (a, b, c) = (
        f.tree.join("a.txt"),
        f.tree.join("b.txt"),
        f.tree.join("c.txt"),
    );
    let ran = |event: &str, path: &Path| {
        lines()
            .lines()
            .filter(|l| l.ends_with(&format!(" {event} {}", path.display())))
            .count()
    };
    place(&f, &a, "one", None);
    wait_for("a's creation", Duration::from_secs(30), || {
        ran("created", &a) == 1
    });
    std::fs::write(&a, "two").unwrap();
    wait_for("a's modification", Duration::from_secs(30), || {
        ran("modified", &a) == 1
    });
    place(&f, &b, "b", None);
    wait_for("b's creation", Duration::from_secs(30), || {
        ran("created", &b) == 1
    });
    std::fs::rename(&b, &c).unwrap();
    wait_for("the rename", Duration::from_secs(30), || {
        ran("renamed", &c) == 1
    });
    f.wait_idle();
    // What the worker's jobs got, per path, in the order they ran.
    let mut got: Vec<(PathBuf, u64)> = Vec::new();
    for line in lines().lines() {
        let mut words = line.splitn(3, ' ');
        let (Some(seq), Some(_), Some(path)) = (words.next(), words.next(), words.next()) else {
            panic!("a job without its number: {line:?}\n{}", lines());
        };
        let seq = seq
            .parse()
            .unwrap_or_else(|_| panic!("WARD_SEQ {seq:?}\n{}", lines()));
        got.push((PathBuf::from(path), seq));
    }
    let of = |path: &Path| -> Vec<u64> {
        got.iter()
            .filter(|(p, _)| p == path)
            .map(|(_, s)| *s)
            .collect()
    };
    let [first, second] = of(&a)[..] else {
        panic!("two jobs of a.txt: {got:?}")
    };
    assert!(first < second, "a later change, a greater number: {got:?}");
    let out = f.run(&["changes", "--since", "0"]);
    assert!(out.status.success(), "{out:?}");
    let known: Vec<(PathBuf, u64)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| {
            let change: serde_json::Value = serde_json::from_str(line).unwrap();
            (
                PathBuf::from(change["path"].as_str().unwrap()),
                change["seq"].as_u64().unwrap(),
            )
        })
        .collect();
    let renamed = of(&c)[0];
    let mut want = vec![
        (a.clone(), second),
        (b.clone(), renamed - 1),
        (c.clone(), renamed),
    ];
    want.sort_by_key(|(_, seq)| *seq);
    assert_eq!(known, want, "the origin's numbers; the worker's: {got:?}");
    f.stop();
    let log = work.log();
    assert!(work.stop().success(), "{log}");
}

/// `ward work --detach` is a daemon like `ward start`'s: `ward status` shows what it pulls and
/// did, a SIGKILLed worker process is restarted by its keeper (and its death reported), and
/// `ward stop` stops it with nothing left behind.
#[test]
fn ward_work_detached_is_kept_shown_by_status_and_stopped_by_stop() {
    if !have_tool("nats-server", "nats-server") {
        return;
    }
    let f = Fixture::new(JOB, "");
    // The worker starts before the NATS server: it is ready all the same, says it does not pull,
    // and pulls once the server is there.
    let port = free_port();
    let url = format!("nats://127.0.0.1:{port}");
    append_trigger(&f, &publish_trigger_to("index", &url));
    let dir = f.dir.path().join("worker");
    std::fs::create_dir_all(&dir).unwrap();
    let ledger = dir.join("ledger");
    let config = dir.join("worker.toml");
    std::fs::write(
        &config,
        format!(
            "[[trigger]]\nname = \"index\"\nexec = [\"{JOB}\", \"record\", \"{}\"]\n",
            ledger.display()
        ),
    )
    .unwrap();
    let state = dir.join("state");
    let worker = |args: &[&str]| {
        ward_e2e::ward()
            .arg("--config")
            .arg(&config)
            .arg("--state-dir")
            .arg(&state)
            .args(args)
            .output()
            .unwrap()
    };
    let status = || -> serde_json::Value {
        serde_json::from_slice(&worker(&["status", "--json"]).stdout).unwrap_or_default()
    };
    let root = f.tree.to_str().unwrap();
    let started = worker(&[
        "work",
        "--nats",
        &url,
        "--consumer",
        "workers",
        "--root",
        root,
        "--detach",
    ]);
    assert!(started.status.success(), "{started:?}");
    assert!(
        String::from_utf8_lossy(&started.stdout).starts_with("ward work started: keeper pid"),
        "{started:?}"
    );
    let shown = status();
    assert_eq!(shown["state"], "running", "{shown}");
    assert_eq!(shown["work"]["consumer"], "workers", "{shown}");
    assert_eq!(shown["work"]["pulling"], false, "{shown}");
    let _nats = NatsServer::start_on(f.dir.path(), port);
    wait_for("the worker to pull", Duration::from_secs(30), || {
        status()["work"]["pulling"] == true
    });
    f.start();
    let done = |name: &str| {
        let want = f.tree.join(name);
        std::fs::read(&ledger).is_ok_and(|bytes| {
            bytes
                .split(|&b| b == 0)
                .any(|e| e.ends_with(want.as_os_str().as_bytes()))
        })
    };
    std::fs::write(f.tree.join("one.txt"), "1").unwrap();
    wait_for("the first job", Duration::from_secs(30), || done("one.txt"));
    wait_for("status to count it", Duration::from_secs(10), || {
        status()["work"]["succeeded"] == 1
    });

    // Its process killed, the keeper starts another, which goes on pulling.
    let first = status()["server_pid"].as_u64().unwrap();
    // SAFETY: kill with the pid its status gave, a process of this test's worker.
    unsafe { libc::kill(first as libc::pid_t, libc::SIGKILL) };
    wait_for("a new worker process", Duration::from_secs(60), || {
        let s = status();
        s["server_pid"].as_u64().is_some_and(|p| p != first) && s["work"]["pulling"] == true
    });
    let shown = status();
    assert_eq!(shown["restarts"], 1, "{shown}");
    assert!(
        shown["last_cause"]
            .as_str()
            .unwrap_or_default()
            .contains("SIGKILL"),
        "{shown}"
    );
    std::fs::write(f.tree.join("two.txt"), "2").unwrap();
    wait_for("the second job", Duration::from_secs(30), || {
        done("two.txt")
    });

    let stopped = worker(&["stop"]);
    assert!(stopped.status.success(), "{stopped:?}");
    assert_eq!(status()["state"], "not-running");
    assert!(
        ward_e2e::processes_mentioning(&state).is_empty(),
        "{:?}",
        ward_e2e::processes_mentioning(&state)
    );
    f.stop();
}

/// A publish trigger keeps at most `max_unacked` jobs unacknowledged: the rest wait, owed, in
/// ward (counted in its backlog, so that intake pauses past the high-water mark). A hold starts
/// no publish. A server that stops answering (SIGSTOP) holds `max_unacked` jobs; once it answers
/// again every job is published, none failed.
#[test]
fn publishes_keep_at_most_max_unacked_unacknowledged_and_none_start_during_a_hold() {
    let Some((f, nats)) = origin("index") else {
        return;
    };
    f.edit_config(
        "subject = \"ward.jobs.{trigger}\" }",
        "subject = \"ward.jobs.{trigger}\", max_unacked = 5 }",
    );
    f.start();
    let publisher = |f: &Fixture| f.status().1["publishing"][0].clone();
    let count = |p: &serde_json::Value, what: &str| p[what].as_u64().unwrap_or(0);
    // Connected first: a publisher connects at its first publish.
    std::fs::write(f.tree.join("warm"), "x").unwrap();
    wait_for("the first publish", Duration::from_secs(30), || {
        count(&publisher(&f), "published") == 1
    });
    let out = f.run(&["hold", "co"]);
    assert!(out.status.success(), "{out:?}");
    for i in 0..40 {
        std::fs::write(f.tree.join(format!("f{i:02}")), "x").unwrap();
    }
    wait_for(
        "40 jobs owed during the hold",
        Duration::from_secs(30),
        || count(&publisher(&f), "owed") == 40,
    );
    assert!(
        holds_within(Duration::from_millis(500), || count(
            &publisher(&f),
            "published"
        ) == 1),
        "published during a hold: {}",
        publisher(&f)
    );
    // SAFETY: a signal to our own child, not reaped yet.
    unsafe { libc::kill(nats.child.id() as libc::pid_t, libc::SIGSTOP) };
    let out = f.run(&["release", "co"]);
    assert!(out.status.success(), "{out:?}");
    wait_for(
        "max_unacked sent and unacknowledged",
        Duration::from_secs(30),
        || {
            let p = publisher(&f);
            count(&p, "unacked") == 5 && count(&p, "owed") == 35
        },
    );
    assert_eq!(f.status().1["queue"]["running"], 5, "{}", f.status().1);
    assert!(
        holds_within(Duration::from_secs(1), || {
            let p = publisher(&f);
            count(&p, "unacked") <= 5 && count(&p, "published") == 1
        }),
        "{}",
        publisher(&f)
    );
    // SAFETY: as above.
    unsafe { libc::kill(nats.child.id() as libc::pid_t, libc::SIGCONT) };
    wait_for("every job published", Duration::from_secs(60), || {
        let p = publisher(&f);
        count(&p, "published") == 41 && count(&p, "owed") + count(&p, "unacked") == 0
    });
    f.wait_idle();
    assert_eq!(f.status().1["manifest"]["gave_up"], 0);
    f.stop();
}

//! End-to-end tests of what a crash report holds: the last words of a process that died, the
//! stack of one stopped as hung, and nothing said about a crash handler a job never had.

use std::time::Duration;

use ward_e2e::{Fixture, wait_for};

const LONG: Duration = Duration::from_secs(60);
/// The job program built with these tests (see `bin/ward-test-job.rs`).
const JOB: &str = env!("CARGO_BIN_EXE_ward-test-job");

/// The crash reports in the state directory, as JSON.
fn reports(f: &Fixture) -> Vec<serde_json::Value> {
    let Ok(entries) = std::fs::read_dir(f.state.join("crashes")) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .filter_map(|p| std::fs::read(p).ok())
        .filter_map(|bytes| serde_json::from_slice(&bytes).ok())
        .collect()
}

/// The reports whose role names the file `tree/NAME`.
fn reports_on(f: &Fixture, name: &str) -> Vec<serde_json::Value> {
    let path = f.tree.join(name);
    let path = path.to_str().unwrap();
    reports(f)
        .into_iter()
        .filter(|r| r["role"].as_str().is_some_and(|role| role.contains(path)))
        .collect()
}

/// A report's stderr tail, one string.
fn stderr_tail(report: &serde_json::Value) -> String {
    report["stderr_tail"]
        .as_array()
        .map(|lines| {
            lines
                .iter()
                .filter_map(|l| l.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

/// A fixture with `triggers`, no retries (one death, one report) and `timeout_s`.
fn fixture(timeout_s: f64, triggers: &str) -> Fixture {
    let f = Fixture::new(JOB, triggers);
    f.edit_config(
        "[jobs]\n",
        &format!("[jobs]\nretries = 0\ntimeout_s = {timeout_s}\n"),
    );
    f
}

fn write(f: &Fixture, name: &str) {
    std::fs::write(f.tree.join(name), name).unwrap();
}

/// Regression: a worker's report was made from its stderr tail before the thread that feeds the
/// tail had the lines the reaper read after the death, so the line a worker wrote just before it
/// aborted was missing from its report now and then. Many deaths, each report checked.
#[test]
fn a_dead_workers_report_has_the_line_it_wrote_just_before_it_aborted() {
    let f = fixture(
        30.0,
        concat!(
            "[[trigger]]\nname = \"last-words\"\n",
            "worker = ['sh', '-c', 'read -r request; echo \"LAST-WORDS of $$\" >&2; kill -ABRT $$']\n",
        ),
    );
    f.start();
    const DEATHS: usize = 16;
    let names: Vec<String> = (0..DEATHS).map(|i| format!("w{i}.txt")).collect();
    for name in &names {
        write(&f, name);
    }
    wait_for("a report of each dead worker", LONG, || {
        names.iter().all(|n| !reports_on(&f, n).is_empty())
    });
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| {
            reports_on(&f, n)
                .iter()
                .any(|r| !stderr_tail(r).contains("LAST-WORDS of "))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {DEATHS} reports lack the worker's last words: {missing:?}",
        missing.len()
    );
    f.stop();
}

/// Regression: output still arriving after a death was read for 200 ms only, so a report could
/// miss what a descendant holding the job's stderr wrote just after the job aborted.
#[test]
fn a_report_waits_for_stderr_written_just_after_the_death() {
    // The descendant leaves the job's process group (which is killed when the job dies), says so
    // on the pipe the job waits on, and writes to the job's stderr half a second after the job
    // aborted.
    let f = fixture(
        30.0,
        concat!(
            "[[trigger]]\nname = \"late\"\n",
            "exec = ['sh', '-c', 'setsid sh -c \"echo escaped; exec >&-; sleep 0.5; echo LATE-WORDS >&2\" | { read -r line; kill -ABRT $$; }']\n",
        ),
    );
    f.start();
    write(&f, "late.txt");
    wait_for("the report of the aborted job", LONG, || {
        !reports_on(&f, "late.txt").is_empty()
    });
    let report = &reports_on(&f, "late.txt")[0];
    assert_eq!(report["wait_status"]["signal"], libc::SIGABRT, "{report:#}");
    assert!(
        stderr_tail(report).contains("LATE-WORDS"),
        "the report lacks what was written after the death:\n{report:#}"
    );
    f.stop();
}

/// Regression: the report of a job's command, which never installed ward's crash handler, said
/// "the signal handler recorded nothing (not installed, or could not write)", ward's handler
/// being taken for the job's.
#[test]
fn a_jobs_report_says_nothing_of_a_crash_handler_it_never_had() {
    let f = fixture(
        30.0,
        "[[trigger]]\nname = \"abort\"\nexec = [\"{job}\", \"abort\"]\n",
    );
    f.start();
    write(&f, "x.abort");
    wait_for("the report of the aborted job", LONG, || {
        !reports_on(&f, "x.abort").is_empty()
    });
    let report = &reports_on(&f, "x.abort")[0];
    assert_eq!(
        report["verdict"]["cause"]["kind"], "native_crash",
        "{report:#}"
    );
    let evidence = report["verdict"]["evidence"].to_string();
    assert!(evidence.contains("SIGABRT"), "{evidence}");
    assert!(!evidence.contains("handler"), "{evidence}");
    assert!(!evidence.contains("crash record"), "{evidence}");
    let text_path = f
        .state
        .join("crashes")
        .read_dir()
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "txt"))
        .expect("the text report");
    let text = std::fs::read_to_string(text_path).unwrap();
    assert!(!text.contains("handler"), "{text}");
    f.stop();
}

/// A Python program with `faulthandler` on: as a worker (`hang.py worker`) it answers requests
/// and hangs on a path ending in `.hang`; as a job (`hang.py job`) it hangs at once. Either way
/// it hangs inside a function whose name a stack dump shows.
const HANG_PY: &str = r#"import faulthandler, json, sys, time

faulthandler.enable()

def hang_here_for_ward_to_find():
    while True:
        time.sleep(60)

if sys.argv[1] == "job":
    hang_here_for_ward_to_find()
for line in sys.stdin:
    request = json.loads(line)
    if request["path"].endswith(".hang"):
        hang_here_for_ward_to_find()
    print(json.dumps({"id": request["id"], "ok": True}), flush=True)
"#;

/// A fixture with a one-second timeout, `hang.py` beside its config, and `triggers`, in which
/// `hang.py` is made the script's absolute path.
fn hanging(triggers: &str) -> Fixture {
    let f = fixture(1.0, triggers);
    let script = f.dir.path().join("hang.py");
    std::fs::write(&script, HANG_PY).unwrap();
    f.edit_config("hang.py", script.to_str().unwrap());
    f
}

/// The report of the job on `tree/NAME`, once there is one.
fn report_on(f: &Fixture, name: &str) -> serde_json::Value {
    wait_for(&format!("the report of the job on {name}"), LONG, || {
        !reports_on(f, name).is_empty()
    });
    reports_on(f, name).remove(0)
}

/// Asserts that `report` is a hang's, with the stack `hang.py` printed on the dump signal.
fn assert_hung_with_its_stack(report: &serde_json::Value) {
    assert_eq!(report["verdict"]["cause"]["kind"], "hung", "{report:#}");
    assert_eq!(
        report["wait_status"]["signal"],
        libc::SIGABRT,
        "it died of the dump signal: {report:#}"
    );
    let tail = stderr_tail(report);
    assert!(
        tail.contains("Fatal Python error: Aborted")
            && tail.contains("in hang_here_for_ward_to_find"),
        "no stack in the stderr tail:\n{report:#}"
    );
    let evidence = report["verdict"]["evidence"].to_string();
    assert!(
        evidence.contains("sent SIGABRT for it to print its stack"),
        "{evidence}"
    );
}

#[test]
fn a_hung_worker_is_asked_for_its_stack_and_its_report_has_it() {
    let f =
        hanging("[[trigger]]\nname = \"py\"\nworker = [\"python3\", \"hang.py\", \"worker\"]\n");
    f.start();
    write(&f, "x.hang");
    let report = report_on(&f, "x.hang");
    assert!(
        report["role"].as_str().unwrap().contains("no reply within"),
        "{report:#}"
    );
    assert_hung_with_its_stack(&report);
    f.stop();
}

#[test]
fn a_hung_exec_job_is_asked_for_its_stack_and_its_report_has_it() {
    let f = hanging("[[trigger]]\nname = \"py\"\nexec = [\"python3\", \"hang.py\", \"job\"]\n");
    f.start();
    write(&f, "x.txt");
    let report = report_on(&f, "x.txt");
    assert!(
        report["role"].as_str().unwrap().contains("timed out after"),
        "{report:#}"
    );
    assert_hung_with_its_stack(&report);
    f.stop();
}

#[test]
fn a_trigger_with_dump_signal_none_stops_a_hung_worker_without_a_dump() {
    let f = hanging(concat!(
        "[[trigger]]\nname = \"py\"\nworker = [\"python3\", \"hang.py\", \"worker\"]\n",
        "dump_signal = \"none\"\n",
    ));
    f.start();
    write(&f, "x.hang");
    let report = report_on(&f, "x.hang");
    assert_eq!(report["verdict"]["cause"]["kind"], "hung", "{report:#}");
    assert_eq!(
        report["wait_status"]["signal"],
        libc::SIGTERM,
        "stopped as before: {report:#}"
    );
    let text = report.to_string();
    assert!(
        !text.contains("hang_here_for_ward_to_find") && !text.contains("print its stack"),
        "{report:#}"
    );
    f.stop();
}

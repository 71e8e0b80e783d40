//! End-to-end tests of what survives stops, crashes and restarts: the manifest and startup
//! reconciliation (nothing lost, nothing redone without a change), and `ward changes --since`.

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

use ward_e2e::{Fixture, wait_for};

const LONG: Duration = Duration::from_secs(60);
/// The job program built with these tests (see `bin/ward-test-job.rs`).
const JOB: &str = env!("CARGO_BIN_EXE_ward-test-job");

fn recorder() -> Fixture {
    Fixture::new(
        JOB,
        "[[trigger]]\nname = \"record\"\nexec = [\"{job}\", \"record\", \"{ledger}\"]\n",
    )
}

/// Ledger entries for files of the tree, by name, in order.
fn runs(f: &Fixture) -> Vec<(String, String)> {
    let root = f.tree.as_os_str().as_bytes();
    f.ledger_entries()
        .into_iter()
        .filter_map(|(event, path)| {
            let name = path.strip_prefix(root)?.strip_prefix(b"/")?;
            Some((event, String::from_utf8_lossy(name).into_owned()))
        })
        .collect()
}

fn changes(f: &Fixture, since: u64) -> Vec<serde_json::Value> {
    let out = f.run(&["changes", "--since", &since.to_string()]);
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn changes_made_while_stopped_are_processed_exactly_once_at_the_next_start() {
    let f = recorder();
    for name in ["a", "b", "c"] {
        std::fs::write(f.tree.join(name), "1").unwrap();
    }
    // The first start processes what is already there, once.
    f.start();
    f.wait_idle();
    let mut first = runs(&f);
    first.sort();
    assert_eq!(
        first,
        [
            ("created".into(), "a".into()),
            ("created".into(), "b".into()),
            ("created".into(), "c".into())
        ]
    );
    f.stop();

    std::fs::write(f.tree.join("a"), "22").unwrap();
    std::fs::remove_file(f.tree.join("b")).unwrap();
    std::fs::write(f.tree.join("d"), "1").unwrap();
    f.start();
    f.wait_idle();
    let mut second: Vec<_> = runs(&f).split_off(3);
    second.sort();
    assert_eq!(
        second,
        [
            ("created".into(), "d".into()),
            ("modified".into(), "a".into()),
            ("removed".into(), "b".into())
        ],
        "exactly what changed while ward was stopped"
    );

    // A restart with nothing changed runs nothing.
    f.stop();
    f.start();
    f.wait_idle();
    assert_eq!(
        runs(&f).len(),
        6,
        "a restart without changes ran jobs: {:?}",
        runs(&f)
    );
    let (_, status) = f.status();
    assert!(
        status["manifest"]["paths"].as_u64().unwrap() >= 4,
        "{status}"
    );
    f.stop();
}

#[test]
fn changes_since_lists_each_path_once_across_restarts() {
    let f = recorder();
    f.start();
    std::fs::write(f.tree.join("one"), "1").unwrap();
    wait_for("one processed", LONG, || f.saw("one"));
    let all = changes(&f, 0);
    let seq = all.last().expect("a change")["seq"].as_u64().unwrap();
    f.stop();
    std::fs::write(f.tree.join("two"), "2").unwrap();
    std::fs::remove_file(f.tree.join("one")).unwrap();
    f.start();
    f.wait_idle();
    let later: Vec<_> = changes(&f, seq)
        .into_iter()
        .map(|c| {
            (
                c["path"]
                    .as_str()
                    .unwrap()
                    .rsplit('/')
                    .next()
                    .unwrap()
                    .to_owned(),
                c["event"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let mut later = later;
    later.sort();
    assert_eq!(
        later,
        [
            ("one".to_owned(), "removed".to_owned()),
            ("two".to_owned(), "created".to_owned())
        ]
    );
    f.stop();
    // Stopped: the manifest is read directly.
    assert_eq!(changes(&f, seq).len(), 2);
}

#[test]
fn a_server_killed_mid_burst_loses_no_file_final_content() {
    let f = Fixture::new(
        JOB,
        "[[trigger]]\nname = \"w\"\nworker = [\"{job}\", \"worker\", \"{ledger}\"]\n",
    );
    f.start();
    let (_, status) = f.status();
    let server = status["server_pid"].as_u64().unwrap() as i32;
    const FILES: usize = 20_000;
    let mut killed = false;
    for i in 0..FILES {
        let dir = f.tree.join(format!("d{}", i % 50));
        if i < 50 {
            std::fs::create_dir_all(&dir).unwrap();
        }
        std::fs::write(dir.join(format!("f{i}")), format!("v{i}")).unwrap();
        if i == FILES / 2 {
            // SAFETY: kill with the pid of the server this test started (through ward).
            assert_eq!(unsafe { libc::kill(server, libc::SIGKILL) }, 0);
            killed = true;
        }
    }
    assert!(killed);
    wait_for("the keeper to restart the server", LONG, || {
        let (_, s) = f.status();
        s["state"] == "running" && s["server_pid"].as_u64().is_some_and(|p| p as i32 != server)
    });
    f.wait_idle();
    // Every file's final content is in the ledger.
    let mut seen: HashMap<Vec<u8>, Vec<String>> = HashMap::new();
    for (event, path) in f.ledger_entries() {
        seen.entry(path).or_default().push(event);
    }
    let mut lost = Vec::new();
    for i in 0..FILES {
        let path = f.tree.join(format!("d{}", i % 50)).join(format!("f{i}"));
        let want = format!("v{i}");
        let ok = seen.get(path.as_os_str().as_bytes()).is_some_and(|events| {
            events
                .iter()
                .any(|e| e.rsplit(':').next() == Some(want.as_str()))
        });
        if !ok {
            lost.push(path);
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {FILES} files never processed with their final content, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    let out = f.run(&["diagnose", "--json"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("SIGKILL"),
        "the kill is diagnosed"
    );
    f.stop();
}

#[test]
fn a_corrupt_manifest_is_moved_aside_and_rebuilt_by_a_full_scan() {
    let f = recorder();
    for name in ["a", "b"] {
        std::fs::write(f.tree.join(name), "1").unwrap();
    }
    f.start();
    f.wait_idle();
    f.stop();
    let manifest = f.state.join("manifest.redb");
    let len = std::fs::metadata(&manifest).unwrap().len() as usize;
    std::fs::write(&manifest, vec![0x5a; len.max(4096)]).unwrap();
    f.start();
    f.wait_idle();
    assert!(f.log().contains("manifest was damaged"), "{}", f.log());
    let moved = std::fs::read_dir(&f.state).unwrap().flatten().any(|e| {
        e.file_name()
            .to_string_lossy()
            .starts_with("manifest.redb.corrupt-")
    });
    assert!(moved, "the damaged store was not kept aside");
    let mut again = runs(&f).split_off(2);
    again.sort();
    assert_eq!(
        again,
        [
            ("created".into(), "a".into()),
            ("created".into(), "b".into())
        ],
        "every file once more"
    );
    f.stop();
}

/// A tmpfs mounted over the fixture's state directory, unmounted (lazily) when dropped.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    /// Mounts a `size`-byte tmpfs at `at`, or says why it cannot (not root, no mount rights).
    fn mount(at: &std::path::Path, size: u64) -> Result<SmallDisk, String> {
        std::fs::create_dir_all(at).map_err(|e| e.to_string())?;
        let out = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(SmallDisk(at.to_path_buf()))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn a_full_disk_is_reported_and_survived_and_nothing_recorded_is_lost() {
    let f = recorder();
    // Needs root (or mount rights) for a small tmpfs; elsewhere this says why and checks nothing.
    let disk = match SmallDisk::mount(&f.state, 4 << 20) {
        Ok(disk) => disk,
        Err(why) => {
            eprintln!("skipped: a full disk needs a small filesystem to fill: {why}");
            return;
        }
    };
    f.start();
    std::fs::write(f.tree.join("before"), "1").unwrap();
    wait_for("a job before the disk fills", LONG, || f.saw("before"));
    f.wait_idle();
    // Fill the state directory's filesystem.
    let filler = f.state.join("filler");
    let mut file = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    while std::io::Write::write_all(&mut file, &chunk).is_ok() {}
    drop(file);
    for name in ["x1", "x2", "x3"] {
        std::fs::write(f.tree.join(name), "1").unwrap();
    }
    wait_for(
        "the jobs to run although nothing can be recorded",
        LONG,
        || ["x1", "x2", "x3"].iter().all(|n| f.saw(n)),
    );
    wait_for("status to report the write error", LONG, || {
        let (code, s) = f.status();
        code == Some(0) && s["manifest"]["write_error"].is_string()
    });
    std::fs::remove_file(&filler).unwrap();
    wait_for("the manifest to catch up", LONG, || {
        let (_, s) = f.status();
        s["manifest"]["write_error"].is_null() && s["manifest"]["unrecorded"] == 0
    });
    f.stop();
    // What was recorded after the disk came back is not redone.
    f.start();
    f.wait_idle();
    assert_eq!(
        runs(&f).len(),
        4,
        "jobs redone after the restart: {:?}",
        runs(&f)
    );
    f.stop();
    drop(disk);
}

#[test]
fn files_queued_in_a_directory_removed_before_their_jobs_ran_get_their_removal() {
    // The one job thread is held, so jobs wait in the queue while files change under them.
    let f = Fixture::held(JOB);
    let dir = f.tree.join("a/b/c");
    std::fs::create_dir_all(&dir).unwrap();
    for name in ["f1", "f2", "f3"] {
        std::fs::write(dir.join(name), "1").unwrap();
    }
    wait_for("the three jobs queued", LONG, || {
        let q = &f.status().1["queue"];
        q["queued"].as_u64().unwrap_or(0) + q["backlog"].as_u64().unwrap_or(0) >= 3
    });
    std::fs::remove_dir_all(f.tree.join("a/b")).unwrap();
    // Wait until the removal reached the server: its diff queues the removals.
    wait_for("the removal seen", LONG, || {
        let out = f.run(&["changes", "--since", "0"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("\"removed\""))
            .count()
            >= 3
    });
    f.release();
    f.wait_idle();
    for name in ["f1", "f2", "f3"] {
        let last = runs(&f)
            .into_iter()
            .rfind(|(_, n)| n == &format!("a/b/c/{name}"));
        assert_eq!(
            last.map(|(e, _)| e),
            Some("removed".to_owned()),
            "{name}: {:?}",
            runs(&f)
        );
    }
    f.stop();
}

#[test]
fn a_file_renamed_then_modified_while_its_job_waits_is_still_reported_gone_at_its_old_path() {
    let f = Fixture::holdable(JOB);
    let (old, new) = (f.tree.join("old"), f.tree.join("new"));
    std::fs::write(&old, "1").unwrap();
    wait_for("the file processed", LONG, || f.saw("old"));
    f.hold();
    std::fs::rename(&old, &new).unwrap();
    let seq_of = |name: &std::path::Path| {
        changes(&f, 0)
            .iter()
            .find(|c| c["path"] == name.to_str().unwrap())
            .and_then(|c| c["seq"].as_u64())
    };
    wait_for("the rename queued", LONG, || seq_of(&new).is_some());
    let renamed_at = seq_of(&new).unwrap();
    // A second job for `new` while the rename's waits: the pool keeps only the latest per path.
    std::fs::write(&new, "2").unwrap();
    wait_for("the modification queued", LONG, || {
        seq_of(&new).is_some_and(|seq| seq > renamed_at)
    });
    f.release();
    f.wait_idle();
    let last = |name: &std::path::Path| {
        changes(&f, 0)
            .into_iter()
            .find(|c| c["path"] == name.to_str().unwrap())
            .map(|c| c["event"].as_str().unwrap_or_default().to_owned())
    };
    assert_eq!(
        last(&old).as_deref(),
        Some("removed"),
        "the consumer was never told `old` is gone; ran: {:?}",
        f.ledger_entries()
    );
    assert_eq!(last(&new).as_deref(), Some("renamed"));
    f.stop();
}

#[test]
fn a_since_query_after_a_files_creation_tells_its_rename_away_as_a_removal() {
    let f = recorder();
    f.start();
    let (old, new) = (f.tree.join("old"), f.tree.join("new"));
    std::fs::write(&old, "hi\n").unwrap();
    wait_for("old processed", LONG, || f.saw("old"));
    f.wait_idle();
    // A client that has read everything up to the creation of `old`.
    let read_up_to = changes(&f, 0)
        .iter()
        .find(|c| c["path"] == old.to_str().unwrap())
        .and_then(|c| c["seq"].as_u64())
        .expect("old's change");
    std::fs::rename(&old, &new).unwrap();
    wait_for("the rename processed", LONG, || f.saw("new"));
    f.wait_idle();
    let told = |f: &Fixture| -> Vec<(String, String)> {
        changes(f, read_up_to)
            .into_iter()
            .map(|c| {
                (
                    c["path"].as_str().unwrap().to_owned(),
                    c["event"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let expected = [
        (old.to_str().unwrap().to_owned(), "removed".to_owned()),
        (new.to_str().unwrap().to_owned(), "renamed".to_owned()),
    ];
    assert_eq!(told(&f), expected, "a client reading after {read_up_to}");
    f.stop();
    // Stopped: the manifest, read directly, tells the same.
    assert_eq!(told(&f), expected);
}

/// Regression: a job that ran within the manifest's group-commit delay before the server was
/// killed left no trace: its queueing was not written yet, so a removal of its file while the
/// server was down was never told.
#[test]
fn a_file_processed_just_before_a_kill_and_removed_while_down_is_told_gone() {
    let f = recorder();
    f.start();
    f.wait_idle();
    let path = f.tree.join("short-lived");
    std::fs::write(&path, "x").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !f.saw("short-lived") {
        assert!(std::time::Instant::now() < deadline, "the job never ran");
        std::thread::sleep(Duration::from_millis(1));
    }
    let (_, status) = f.status();
    let server = status["server_pid"].as_u64().unwrap() as libc::pid_t;
    // SAFETY: kill with the pid of the server this test started.
    assert_eq!(unsafe { libc::kill(server, libc::SIGKILL) }, 0);
    std::fs::remove_file(&path).unwrap();
    wait_for("the removal told", Duration::from_secs(30), || {
        f.ledger_entries()
            .iter()
            .any(|(event, p)| event == "removed" && p == path.as_os_str().as_bytes())
    });
    f.stop();
}

/// The manifest holds a job's pending entry back from its store for up to a second: a server
/// killed while a removal's job runs, just after its queueing, must still owe that removal at
/// the next start (the record the same commit wrote says so), and tell it again.
#[test]
fn a_removal_whose_job_runs_when_the_server_is_killed_is_told_again_after_the_restart() {
    let f = Fixture::new(
        JOB,
        "[[trigger]]\nname = \"told\"\n\
         exec = [\"sh\", \"-c\", 'echo \"$WARD_EVENT $WARD_PATH\" >> {ledger}.told; \
                 if [ \"$WARD_EVENT\" = removed ] && [ ! -e {ledger}.hung ]; then \
                 touch {ledger}.hung; sleep 1000; fi']\n",
    );
    let path = f.tree.join("a");
    std::fs::write(&path, "x").unwrap();
    f.start();
    let told = |event: &str| {
        let want = format!("{event} {}", path.display());
        let all = std::fs::read_to_string(format!("{}.told", f.ledger.display()));
        let all = all.unwrap_or_default();
        all.lines().filter(|l| *l == want).count()
    };
    wait_for("its creation told", LONG, || told("created") == 1);
    std::fs::remove_file(&path).unwrap();
    let hung = std::path::PathBuf::from(format!("{}.hung", f.ledger.display()));
    wait_for("the removal's job to run", LONG, || hung.exists());
    let (_, status) = f.status();
    let server = status["server_pid"].as_u64().unwrap() as libc::pid_t;
    // SAFETY: kill with the pid of the server this test started.
    assert_eq!(unsafe { libc::kill(server, libc::SIGKILL) }, 0);
    wait_for("the removal told again by the next server", LONG, || {
        told("removed") == 2
    });
    f.wait_idle();
    f.stop();
    assert_eq!((told("created"), told("removed")), (1, 2), "{}", f.log());
}

/// A trigger that does not receive removals runs nothing for one, and yet the removal is
/// recorded: `ward changes` reports it, and no later start runs or compares it again.
#[test]
fn events_a_trigger_does_not_receive_run_nothing_and_are_still_recorded() {
    let f = Fixture::new(
        JOB,
        "[[trigger]]\nname = \"record\"\nevents = [\"created\", \"modified\", \"renamed\"]\n\
         exec = [\"{job}\", \"record\", \"{ledger}\"]\n",
    );
    std::fs::write(f.tree.join("gone"), "1").unwrap();
    f.start();
    wait_for("the first file's job", LONG, || {
        runs(&f).contains(&("created".into(), "gone".into()))
    });
    std::fs::remove_file(f.tree.join("gone")).unwrap();
    // A file written after the removal: once its job ran, the removal's turn has passed.
    std::fs::write(f.tree.join("after"), "1").unwrap();
    wait_for("the later file's job", LONG, || {
        runs(&f).contains(&("created".into(), "after".into()))
    });
    f.wait_idle();
    f.stop();
    f.start();
    f.wait_idle();
    f.stop();
    assert_eq!(
        runs(&f),
        [
            ("created".into(), "gone".into()),
            ("created".into(), "after".into())
        ],
        "a removal ran the trigger, or a start redid a job"
    );
    let removed: Vec<_> = changes(&f, 0)
        .into_iter()
        .filter(|c| c["path"].as_str().is_some_and(|p| p.ends_with("/gone")))
        .map(|c| c["event"].clone())
        .collect();
    assert_eq!(removed, ["removed"], "the removal is not recorded");
    let (_, status) = f.status();
    assert_eq!(status["last_cause"], serde_json::Value::Null, "{status}");
}

/// Regression: a job that could never succeed failed again at every start, crash reports and
/// all, and nothing listed the paths or let a user run them again. A path that gave up runs again
/// only when its file changes or when `ward retry` asks; `ward failures` lists it, and `ward
/// status` counts it apart from the attempts that failed.
#[test]
fn a_path_that_gave_up_is_listed_and_runs_again_only_when_changed_or_retried() {
    let f = Fixture::new(
        JOB,
        "[[trigger]]\nname = \"fails\"\n\
         exec = [\"sh\", \"-c\", \"echo \\\"$WARD_PATH\\\" >> {ledger}.attempts; exit 3\"]\n",
    );
    let attempts_log = std::path::PathBuf::from(format!("{}.attempts", f.ledger.display()));
    let attempts = |name: &str| {
        let want = f.tree.join(name);
        std::fs::read_to_string(&attempts_log)
            .unwrap_or_default()
            .lines()
            .filter(|l| std::path::Path::new(l) == want)
            .count()
    };
    let gave_up = |f: &Fixture| f.status().1["manifest"]["gave_up"].as_u64();
    f.edit_config("[jobs]\n", "[jobs]\nretries = 1\n");
    std::fs::write(f.tree.join("a"), "1").unwrap();
    std::fs::write(f.tree.join("b"), "1").unwrap();
    f.start();
    wait_for("both paths to give up", LONG, || gave_up(&f) == Some(2));
    assert_eq!((attempts("a"), attempts("b")), (2, 2));
    let (_, status) = f.status();
    assert_eq!(status["queue"]["failed"], 4, "attempts: {status}");

    let listed = f.failures();
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert_eq!(listed[0]["path"], f.tree.join("a").to_str().unwrap());
    assert_eq!(listed[0]["trigger"], "fails");
    assert_eq!(listed[0]["event"], "created");
    assert_eq!(listed[0]["attempts"], 2);
    assert!(
        listed[0]["error"].as_str().unwrap().contains("3"),
        "{listed:?}"
    );
    let text = f.run(&["failures"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("2 path(s) gave up") && text.contains("trigger fails"),
        "{text}"
    );

    // A restart runs neither again.
    f.stop();
    f.start();
    f.wait_idle();
    assert_eq!(
        (attempts("a"), attempts("b")),
        (2, 2),
        "a restart ran them again"
    );
    assert_eq!(gave_up(&f), Some(2));

    // A change runs its path again; a retry runs the other.
    std::fs::write(f.tree.join("a"), "22").unwrap();
    wait_for("the changed path to run again", LONG, || attempts("a") == 4);
    let out = f.run(&["retry", f.tree.join("b").to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    wait_for("the retried path to run again", LONG, || attempts("b") == 4);
    wait_for("both to give up again", LONG, || gave_up(&f) == Some(2));
    let out = f.run(&["retry", f.tree.to_str().unwrap(), "--all"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "paths and --all conflict: {out:?}"
    );
    let out = f.run(&["retry", f.dir.path().join("out").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "nothing gave up there: {out:?}");

    // While stopped, a retry is owed at the next start.
    f.stop();
    let out = f.run(&["retry", "--all"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("2 path(s) to run again at the next start"),
        "{out:?}"
    );
    f.start();
    wait_for("both to run at the start after a retry", LONG, || {
        attempts("a") == 6 && attempts("b") == 6
    });
    wait_for("both to give up once more", LONG, || gave_up(&f) == Some(2));
    f.stop();
}

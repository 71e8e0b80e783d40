//! The `reload` fault: while a full queue waits, the config's reload triggers are renamed and
//! reordered (see `config.rs`) and the keeper is sent SIGHUP. Its verdict: every job ran through
//! the trigger that matched its path when it was queued, the old one for what was queued before
//! the reload and the new one for what changed after it.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::super::changes;
use super::super::check::Line;
use super::super::config::{QUEUE_CAPACITY, WORKERS, trigger_for};
use super::super::daemon::{signal, wait_until};
use super::super::ledger::{Directive, Entry, Phase};
use super::super::scene::{Scene, interrupted};
use super::super::workload::now_ms;
use super::{BLOCKER_MS, Injected, not_injected};

/// What ward logs once a reload has taken effect.
const RELOADED: &str = "trigger(s) now active";

/// One file the fault wrote, and the triggers that may run it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    /// The file.
    pub path: String,
    /// The content written.
    pub hash: u64,
    /// The triggers that may run it: one, or both generations' when the harness could not
    /// confirm ward had queued it before the reload.
    pub triggers: Vec<String>,
}

/// What one reload left for the verdict.
#[derive(Debug)]
pub struct Record {
    label: String,
    expected: Vec<Expected>,
    problems: Vec<String>,
}

/// Injects reload number `n`: the config goes from generation `n - 1` to `n`.
pub fn inject(scene: &mut Scene<'_>, f: &mut Injected, n: usize) -> Record {
    let generation = n as u32;
    let mut problems = Vec::new();
    let dir = scene.tree.join(format!("reload-{n}/files"));
    let tree = scene.tree;
    let trigger = |path: &Path, g: u32| trigger_for(path.strip_prefix(tree).unwrap_or(path), g);

    // The directory exists and is watched first: its files then each raise an event of their
    // own, queued as it comes, not found later by a comparison of a new directory.
    let (mut before, errors) = scene.write_files(&dir, "seed", &["txt"], 1, "reload");
    problems.extend(errors);
    if !scene
        .ledger
        .await_handled(&before, Duration::from_secs(20))
        .is_empty()
    {
        problems.push("its directory's first file was not processed within 20 s".into());
    }
    // Every job thread busy, so that what comes next waits in the queue across the reload.
    for k in 0..WORKERS {
        let path = dir.join(format!("blocker-{k}.txt"));
        let content = format!(
            "{}reload {n} seq {}\n",
            Directive::Sleep(BLOCKER_MS).line(),
            scene.log.seq()
        );
        match scene.log.write(&path, content.as_bytes(), "reload") {
            Ok(hash) => {
                if scene
                    .ledger
                    .await_entry(&path, hash, Phase::Start, Duration::from_secs(20))
                    .is_none()
                {
                    problems.push(format!("{} did not start within 20 s", path.display()));
                }
                before.push((path, hash));
            }
            Err(e) => problems.push(format!("writing {}: {e}", path.display())),
        }
    }
    let since = scene
        .ward
        .status()
        .and_then(|s| s["manifest"]["seq"].as_u64())
        .unwrap_or(0);
    let count = QUEUE_CAPACITY + QUEUE_CAPACITY / 2;
    let (queued, errors) = scene.write_files(&dir, "a", &["txt", "dat"], count, "reload");
    problems.extend(errors);
    // Queued is what the manifest has numbered as a change: ward's account, not a guess.
    let unconfirmed = await_queued(scene, &queued, since, Duration::from_secs(10));
    if !unconfirmed.is_empty() {
        problems.push(format!(
            "{} of {} files not listed by `ward changes --since {since}` within 10 s: either trigger may run them",
            unconfirmed.len(),
            queued.len()
        ));
    }
    let waiting = scene.ward.status().map_or(0, |s| {
        s["queue"]["queued"].as_u64().unwrap_or(0) + s["queue"]["backlog"].as_u64().unwrap_or(0)
    });

    let reloads = scene.ward.log_lines_with(RELOADED);
    f.start_ms = now_ms();
    if let Err(e) = scene.config.write(generation) {
        problems.push(format!(
            "writing the config of generation {generation}: {e}"
        ));
    }
    match scene.ward.keeper_pid() {
        Some(keeper) if signal(keeper, libc::SIGHUP) => {}
        _ => problems.push("no keeper to send SIGHUP to".into()),
    }
    let began = Instant::now();
    if !wait_until(Duration::from_secs(10), || {
        interrupted() || scene.ward.log_lines_with(RELOADED) > reloads
    }) {
        problems.push("no reload logged within 10 s of SIGHUP".into());
    }
    let reload_s = began.elapsed().as_secs_f64();
    let (after, errors) =
        scene.write_files(&dir, "b", &["txt", "dat"], QUEUE_CAPACITY / 2, "reload");
    problems.extend(errors);
    if !scene.ward.await_idle(Duration::from_secs(60)) {
        problems.push("not caught up 60 s after the reload".into());
    }
    f.end_ms = now_ms();
    f.note = format!(
        "reload triggers renamed and reordered (generation {} → {generation}), SIGHUP with {waiting} job(s) waiting, logged after {reload_s:.2} s; {} files before, {} after",
        generation - 1,
        before.len() + queued.len(),
        after.len()
    );
    scene.remove_later(tree.join(format!("reload-{n}")));

    let old = |p: &Path| vec![trigger(p, generation - 1)];
    let mut expected: Vec<Expected> = Vec::new();
    for (path, hash) in before.iter().chain(&queued) {
        let mut triggers = old(path);
        if unconfirmed.contains(path) {
            triggers.push(trigger(path, generation));
        }
        expected.push(Expected {
            path: path.to_string_lossy().into_owned(),
            hash: *hash,
            triggers,
        });
    }
    for (path, hash) in &after {
        expected.push(Expected {
            path: path.to_string_lossy().into_owned(),
            hash: *hash,
            triggers: vec![trigger(path, generation)],
        });
    }
    Record {
        label: f.label.clone(),
        expected,
        problems,
    }
}

/// Waits (at most `limit`) until `ward changes --since SINCE` lists every one of `files`;
/// returns those it did not.
fn await_queued(
    scene: &Scene<'_>,
    files: &[(PathBuf, u64)],
    since: u64,
    limit: Duration,
) -> HashSet<PathBuf> {
    let mut left: HashSet<PathBuf> = files.iter().map(|(p, _)| p.clone()).collect();
    wait_until(limit, || {
        if let Ok(listed) = changes::fetch(scene.ward, since, Duration::from_secs(5)) {
            for c in listed {
                left.remove(Path::new(&c.path));
            }
        }
        left.is_empty() || interrupted()
    });
    left
}

/// What the ledger says of the triggers that ran jobs.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Judgement {
    /// Jobs of the fault's files.
    pub ran: usize,
    /// A fault's file run through a trigger it should not have been: path, trigger, expected.
    pub wrong: Vec<String>,
    /// A fault's file no job ran.
    pub missing: Vec<String>,
    /// Jobs of every other file under the tree.
    pub others: usize,
    /// Another file run through a trigger its path does not match.
    pub others_wrong: Vec<String>,
}

/// Judges every job of the ledger: the fault's files against what was expected of each, every
/// other file under `tree` against the trigger the (unchanging) rest of the config gives it.
/// Removals are judged only outside the fault's directories: they come after the fault.
pub fn judge(expected: &[Expected], entries: &[Entry], tree: &Path) -> Judgement {
    let mut j = Judgement::default();
    let by_version: HashMap<(&str, u64), &Expected> = expected
        .iter()
        .map(|e| (e.path.as_str(), e.hash))
        .zip(expected)
        .collect();
    let fault_dirs: HashSet<&Path> = expected
        .iter()
        .filter_map(|e| Path::new(&e.path).parent())
        .collect();
    let mut seen: HashSet<(&str, u64)> = HashSet::new();
    for e in entries.iter().filter(|e| e.phase == Phase::Start) {
        if let Some(want) = e.hash.and_then(|h| by_version.get(&(e.path.as_str(), h))) {
            j.ran += 1;
            seen.insert((&want.path, want.hash));
            if !want.triggers.contains(&e.trigger) {
                j.wrong.push(format!(
                    "{}: ran through {}, matched {}",
                    e.path,
                    e.trigger,
                    want.triggers.join(" or ")
                ));
            }
            continue;
        }
        let path = Path::new(&e.path);
        let Ok(relative) = path.strip_prefix(tree) else {
            continue;
        };
        if path.parent().is_some_and(|d| fault_dirs.contains(d)) {
            continue;
        }
        j.others += 1;
        let want = trigger_for(relative, 0);
        // The reload directories' triggers change with the generation; their other jobs are
        // removals after the fault, and whichever generation ran them matched then.
        let reload_dir = want.starts_with("reload-g");
        // A batch run lists the old path of a rename into its tree as a path gone, whichever
        // trigger that path had (as a rename's job tells its consumer the old path is gone):
        // the worker records it as a removal of its own.
        let renamed_into_batch = e.trigger == "batch" && e.event == "removed";
        if !reload_dir && !renamed_into_batch && e.trigger != want {
            j.others_wrong.push(format!(
                "{}: ran through {}, matched {want}",
                e.path, e.trigger
            ));
        }
    }
    j.missing = expected
        .iter()
        .filter(|e| !seen.contains(&(e.path.as_str(), e.hash)))
        .map(|e| e.path.clone())
        .collect();
    j
}

/// The verdict line of every reload injected.
pub fn line(records: &[Record], entries: &[Entry], tree: &Path) -> Line {
    let check = "reload: each job ran through the trigger that matched it";
    if records.is_empty() {
        return not_injected(check);
    }
    let expected: Vec<Expected> = records.iter().flat_map(|r| r.expected.clone()).collect();
    let j = judge(&expected, entries, tree);
    let problems: Vec<String> = records
        .iter()
        .flat_map(|r| r.problems.iter().map(move |p| format!("{}: {p}", r.label)))
        .collect();
    let short = |p: &String| p.replace(&*tree.to_string_lossy(), "tree");
    let mut details: Vec<String> = Vec::new();
    for (what, list) in [
        ("ran through another trigger", &j.wrong),
        ("never ran", &j.missing),
        (
            "outside the reload: ran through a trigger its path does not match",
            &j.others_wrong,
        ),
    ] {
        if !list.is_empty() {
            details.push(format!("{} {what}:", list.len()));
            details.extend(list.iter().take(6).map(|l| format!("  {}", short(l))));
        }
    }
    details.extend(problems.iter().cloned());
    Line::new(
        check,
        j.wrong.is_empty() && j.missing.is_empty() && j.others_wrong.is_empty(),
        format!(
            "{} reload(s): {} job(s) of {} files, {} through another trigger, {} never ran; {} of {} other job(s) mismatched",
            records.len(),
            j.ran,
            expected.len(),
            j.wrong.len(),
            j.missing.len(),
            j.others_wrong.len(),
            j.others
        ),
        details,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(path: &str, hash: Option<u64>, trigger: &str) -> Entry {
        Entry {
            phase: Phase::Start,
            t_ms: 1,
            pid: 1,
            event: if hash.is_some() { "created" } else { "removed" }.into(),
            hash,
            directive: "-".into(),
            trigger: trigger.into(),
            path: path.into(),
            old_path: None,
        }
    }

    fn expect(path: &str, hash: u64, triggers: &[&str]) -> Expected {
        Expected {
            path: path.into(),
            hash,
            triggers: triggers.iter().map(|t| (*t).to_owned()).collect(),
        }
    }

    #[test]
    fn a_job_is_judged_by_the_trigger_that_matched_its_version() {
        let tree = Path::new("/t/tree");
        let expected = [
            expect("/t/tree/reload-1/files/a-0.txt", 10, &["reload-g0-txt"]),
            expect(
                "/t/tree/reload-1/files/a-1.dat",
                11,
                &["reload-g0-any", "reload-g1-any"],
            ),
            expect("/t/tree/reload-1/files/b-0.txt", 12, &["reload-g1-any"]),
            expect("/t/tree/reload-1/files/b-1.dat", 13, &["reload-g1-any"]),
        ];
        let entries = [
            start("/t/tree/reload-1/files/a-0.txt", Some(10), "reload-g0-txt"),
            Entry {
                phase: Phase::Done,
                ..start("/t/tree/reload-1/files/a-0.txt", Some(10), "reload-g0-txt")
            },
            start("/t/tree/reload-1/files/a-1.dat", Some(11), "reload-g1-any"),
            // The queued job ran with the trigger the reload put in its place.
            start("/t/tree/reload-1/files/b-0.txt", Some(12), "reload-g0-txt"),
            // Removed after the fault: not the fault's to judge.
            start("/t/tree/reload-1/files/a-0.txt", None, "reload-g1-any"),
            start("/t/tree/exec/churn/f-1.txt", Some(1), "exec"),
            start("/t/tree/steady/s-01.txt", Some(2), "exec"),
            start("/t/tree/reload-2/files/x.txt", None, "reload-g2-any"),
            start("/elsewhere/f", Some(3), "whatever"),
        ];
        let j = judge(&expected, &entries, tree);
        assert_eq!(j.ran, 3);
        assert_eq!(
            j.wrong,
            ["/t/tree/reload-1/files/b-0.txt: ran through reload-g0-txt, matched reload-g1-any"]
        );
        assert_eq!(j.missing, ["/t/tree/reload-1/files/b-1.dat"]);
        assert_eq!(j.others, 3);
        assert_eq!(
            j.others_wrong,
            ["/t/tree/steady/s-01.txt: ran through exec, matched stress"]
        );
    }
}

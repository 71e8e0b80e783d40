//! Test support: the helper modes this test binary runs when it re-executes itself as a child,
//! and `/proc` helpers to find descendants and tell whether a process is dead.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use ward_supervisor::{ChildSpec, Heartbeat, ResourceLimits};
use ward_sys::{ProcStat, ProcStatus};

/// Names the helper mode; set only in children.
pub const HELPER_ENV: &str = "WARD_SUPERVISOR_TEST_HELPER";
/// The test that runs the helper when `HELPER_ENV` is set.
pub const HELPER_TEST: &str = "helper_exits_with_the_code_it_is_given";

/// A spec that re-runs this test binary in helper `mode`, without core dumps, in `dir`.
pub fn helper(mode: &str, dir: &Path) -> ChildSpec {
    let exe = std::env::current_exe().expect("the test binary knows its path");
    ChildSpec::new(exe)
        .name(mode)
        .args([
            HELPER_TEST,
            "--exact",
            "--nocapture",
            "--test-threads=1",
            "-q",
        ])
        .env(HELPER_ENV, mode)
        .current_dir(dir)
        .limits(ResourceLimits {
            core_size: Some(0),
            ..ResourceLimits::default()
        })
        .output(ward_supervisor::Output::Null)
}

/// Runs helper `mode` and never returns.
pub fn run_helper(mode: &str) -> ! {
    let (name, arg) = mode.split_once(':').unwrap_or((mode, ""));
    match name {
        "exit" => std::process::exit(arg.parse().expect("exit:N")),
        "panic" => panic!("helper asked to panic"),
        "abort" => std::process::abort(),
        "segv" => {
            // SAFETY: not safe at all, on purpose: the helper exists to die of SIGSEGV.
            unsafe { std::ptr::null_mut::<u8>().write_volatile(1) };
            unreachable!("a null write faults")
        }
        "hang" => sleep_forever(),
        "ignore-term" => {
            // SAFETY: setting a signal disposition to SIG_IGN has no memory-safety requirement.
            unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
            println!("ready");
            sleep_forever()
        }
        "ignore-abort" => {
            // SAFETY: as above.
            unsafe { libc::signal(libc::SIGABRT, libc::SIG_IGN) };
            sleep_forever()
        }
        "alloc" => {
            // Touch every page so the memory is really charged; stop at 2 GiB in case no limit
            // applies, so a broken limit fails the test instead of the machine.
            let mut blocks = Vec::new();
            for _ in 0..2048 {
                blocks.push(vec![1u8; 1 << 20]);
            }
            std::process::exit(0)
        }
        "heartbeat" => {
            // Beats `arg` times every 10 ms (forever if arg is empty), then goes silent.
            let beat = Heartbeat::from_env().expect("a heartbeat descriptor is passed");
            let count: u64 = arg.parse().unwrap_or(u64::MAX);
            for _ in 0..count {
                beat.beat().expect("heartbeat write");
                thread::sleep(Duration::from_millis(10));
            }
            sleep_forever()
        }
        "beat-then-exit" => {
            // Beats every 10 ms for `arg` ms, then exits 0.
            let beat = Heartbeat::from_env().expect("a heartbeat descriptor is passed");
            let until = Instant::now() + Duration::from_millis(arg.parse().expect("ms"));
            while Instant::now() < until {
                beat.beat().expect("heartbeat write");
                thread::sleep(Duration::from_millis(10));
            }
            std::process::exit(0)
        }
        "supervise" => {
            // An intermediate supervisor: spawns `sleep` (from this long-lived main thread),
            // writes its pid to the file `arg`, then waits to be killed.
            let child = ward_supervisor::Child::spawn(&ChildSpec::new("sleep").arg("1000"))
                .expect("spawn the grandchild");
            let tmp = format!("{arg}.tmp");
            fs::write(&tmp, child.id().to_string()).expect("write pid");
            fs::rename(&tmp, arg).expect("publish pid");
            let _ = child.wait();
            std::process::exit(0)
        }
        "spawn-fails" => {
            // Spawns `arg`, which must fail; then this process must have no child at all, not
            // even a zombie: the failed child was reaped before `spawn` returned.
            match ward_supervisor::Child::spawn(&ChildSpec::new(arg)) {
                Ok(_) => std::process::exit(2),
                Err(ward_supervisor::Error::Spawn { program, .. }) if program == arg => {}
                Err(_) => std::process::exit(3),
            }
            let children = children_of(std::process::id());
            std::process::exit(if children.is_empty() { 0 } else { 4 })
        }
        "threads" => {
            // A silent child costs exactly one thread while it runs, one that writes costs a
            // second for its sink, and none is left once the handles are dropped. Counted in a
            // process of its own, where no other test starts threads meanwhile.
            let before = threads();
            let silent =
                ward_supervisor::Child::spawn(&ChildSpec::new("sleep").arg("1000").capture(|_| {}))
                    .expect("spawn sleep");
            check(threads() == before + 1, 10);
            let talker = ward_supervisor::Child::spawn(
                &ChildSpec::new("sh")
                    .args(["-c", "echo hello; exec sleep 1000"])
                    .capture(|_| {}),
            )
            .expect("spawn sh");
            check(
                poll(Duration::from_secs(20), || threads() == before + 3),
                11,
            );
            drop(silent);
            drop(talker);
            let many: Vec<_> = (0..20)
                .map(|i| {
                    ward_supervisor::Child::spawn(
                        &ChildSpec::new("sh")
                            .args(["-c", &format!("echo {i}; exit {i}")])
                            .capture(|_| {}),
                    )
                    .expect("spawn sh")
                })
                .collect();
            for child in &many {
                child.wait_timeout(Duration::from_secs(20)).expect("exits");
            }
            drop(many);
            // Joined, not just finished: the count is back right after the drops.
            check(threads() == before, 12);
            check(children_of(std::process::id()).is_empty(), 13);
            std::process::exit(0)
        }
        "reaper-threads" => {
            // One reaper is one thread, whatever the number of children it watches, and its
            // drop joins it. Counted in a process of its own, as "threads" is.
            let before = threads();
            let reaper = ward_supervisor::Reaper::new().expect("reaper");
            check(threads() == before + 1, 30);
            let many: Vec<_> = (0..20)
                .map(|i| {
                    reaper
                        .spawn(&ChildSpec::new("sh").args(["-c", &format!("exit {i}")]))
                        .expect("spawn sh")
                })
                .collect();
            check(threads() == before + 1, 31);
            for (i, child) in many.iter().enumerate() {
                let exit = child.wait_timeout(Duration::from_secs(20)).expect("exits");
                let code = ward_supervisor::Termination::Exited { code: i as i32 };
                check(exit.termination == code, 32);
            }
            drop(many);
            check(poll(Duration::from_secs(20), || reaper.watched() == 0), 33);
            check(children_of(std::process::id()).is_empty(), 34);
            let sleeper = reaper
                .spawn(&ChildSpec::new("sleep").arg("1000"))
                .expect("spawn sleep");
            drop(reaper);
            check(threads() == before, 35);
            check(sleeper.try_wait().is_some(), 36);
            check(children_of(std::process::id()).is_empty(), 37);
            drop(sleeper);
            // A handle outliving its reaper drops cleanly, and spawning needs a live reaper.
            check(threads() == before, 38);
            std::process::exit(0)
        }
        "inline-threads" => {
            // An inline child costs no thread while it runs: whoever waits reaps it. One that
            // writes costs a thread for its sink once its output is read, none after the drop.
            let before = threads();
            let silent = ward_supervisor::Child::spawn_inline(
                &ChildSpec::new("sleep").arg("1000").capture(|_| {}),
            )
            .expect("spawn sleep");
            check(threads() == before, 40);
            check(silent.wait_timeout(Duration::from_millis(20)).is_none(), 41);
            check(threads() == before, 42);
            let (tx, rx) = crossbeam_channel::unbounded();
            let talker = ward_supervisor::Child::spawn_inline(
                &ChildSpec::new("sh")
                    .args(["-c", "echo hello; exit 4"])
                    .capture(move |line| {
                        let _ = tx.send(line.text.clone());
                    }),
            )
            .expect("spawn sh");
            let exit = talker.wait_timeout(Duration::from_secs(20)).expect("exits");
            check(
                exit.termination == ward_supervisor::Termination::Exited { code: 4 },
                43,
            );
            drop(talker);
            check(rx.try_iter().collect::<Vec<_>>() == ["hello"], 44);
            drop(silent);
            check(threads() == before, 45);
            check(children_of(std::process::id()).is_empty(), 46);
            std::process::exit(0)
        }
        "fds" => {
            // Spawns reuse this thread's child stack and the shared /dev/null: after the first
            // (which makes them), each spawn, inline or not, leaves the descriptor table as it
            // found it.
            let null = || {
                ChildSpec::new("sh")
                    .args(["-c", "[ -r /dev/stdin ] && echo x >&2 && exit 3"])
                    .output(ward_supervisor::Output::Null)
            };
            let run = |spec: &ChildSpec, inline: bool| {
                let child = if inline {
                    ward_supervisor::Child::spawn_inline(spec)
                } else {
                    ward_supervisor::Child::spawn(spec)
                };
                child
                    .expect("spawn")
                    .wait_timeout(Duration::from_secs(20))
                    .expect("exits")
                    .termination
            };
            let three = ward_supervisor::Termination::Exited { code: 3 };
            check(run(&null(), false) == three, 20);
            let before = open_fds(std::process::id());
            for i in 0..50 {
                let spec = if i % 2 == 0 {
                    null()
                } else {
                    ChildSpec::new("sh")
                        .args(["-c", "echo out; echo err >&2; exit 3"])
                        .capture(|_| {})
                };
                check(run(&spec, i % 4 < 2) == three, 21);
            }
            check(open_fds(std::process::id()) == before, 22);
            std::process::exit(0)
        }
        other => panic!("unknown helper mode {other:?}"),
    }
}

/// The threads of this process.
fn threads() -> usize {
    fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .count()
}

/// Exits with `code` unless `ok`.
fn check(ok: bool, code: i32) {
    if !ok {
        std::process::exit(code);
    }
}

fn sleep_forever() -> ! {
    loop {
        thread::sleep(Duration::from_secs(1000));
    }
}

/// Polls `condition` every 5 ms until it holds or `within` has passed.
pub fn poll(within: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// `/proc/<pid>/stat` of `pid`, while it exists.
fn stat(pid: u32) -> Option<ProcStat> {
    ProcStat::read(pid).ok()
}

/// Gone, or a zombie (dead; this machine's init does not reap orphans).
pub fn is_dead(pid: u32) -> bool {
    stat(pid).is_none_or(|stat| stat.is_dead())
}

/// Every child of `parent`, zombies included.
pub fn children_of(parent: u32) -> BTreeSet<u32> {
    ward_sys::processes()
        .into_iter()
        .filter_map(|(pid, stat)| (stat.ppid == parent).then_some(pid))
        .collect()
}

/// Every live descendant of `root`.
pub fn live_descendants(root: u32) -> BTreeSet<u32> {
    let mut children: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for (pid, stat) in ward_sys::processes() {
        if !stat.is_dead() {
            children.entry(stat.ppid).or_default().push(pid);
        }
    }
    let mut found = BTreeSet::new();
    let mut stack = vec![root];
    while let Some(pid) = stack.pop() {
        for &child in children.get(&pid).map(Vec::as_slice).unwrap_or(&[]) {
            if found.insert(child) {
                stack.push(child);
            }
        }
    }
    found
}

/// The open descriptor numbers of `pid`.
pub fn open_fds(pid: u32) -> BTreeSet<i32> {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc/<pid>/fd")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// The value of `field` in `/proc/<pid>/status` (e.g. `SigBlk`), trimmed.
pub fn status_field(pid: u32, field: &str) -> Option<String> {
    let status = ProcStatus::read(pid).ok()?;
    status.field(field).map(str::to_owned)
}

/// The soft and hard values of the limit named `name` in `/proc/<pid>/limits`
/// (e.g. `Max open files`).
pub fn proc_limit(pid: u32, name: &str) -> Option<(String, String)> {
    let text = fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = text.lines().find(|line| line.starts_with(name))?;
    let mut values = line[name.len()..].split_whitespace();
    Some((values.next()?.to_owned(), values.next()?.to_owned()))
}

/// The command line of `pid`, arguments separated by spaces (empty once it is gone).
pub fn cmdline(pid: u32) -> String {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|bytes| String::from_utf8_lossy(&bytes).replace('\0', " "))
        .unwrap_or_default()
}

/// The nice value of `pid`, from `/proc/<pid>/stat` (the 19th field, the 17th after the
/// command's closing parenthesis).
pub fn nice_of(pid: u32) -> Option<i32> {
    let stat = fs::read(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.iter().rposition(|&b| b == b')')?;
    let rest = String::from_utf8_lossy(&stat[after + 1..]).into_owned();
    rest.split_whitespace().nth(16)?.parse().ok()
}

//! `[[on_death]]` hooks at run time: for each crash report a ward process writes, the user's
//! commands run with the death in their environment, one run at a time in that process, deaths
//! that come meanwhile folded into the next run. Not here: the reports (`deaths`, which tells
//! the hooks), the config section (`config::on_death`).
//!
//! # Theory of operation
//! Each ward process that reports deaths (the server for its jobs, workers, batch runs and
//! services; the keeper for the server) owns one [`DeathHooks`], which owns one thread. A death
//! is handed over in a slot per hook that holds at most one pending death: the caller of
//! [`tell`] (a job or supervisor thread) only takes a lock and replaces what the slot holds, so
//! it never waits for a hook, and memory stays one death per hook whatever the death rate. The
//! thread takes the slots in turn and runs their hook for the death each holds, with
//! `WARD_COALESCED` saying how many earlier deaths were replaced while it waited.
//!
//! A run is a supervised child spawned by the thread, which waits for it from start to end
//! (`Child::spawn_inline`): past its `timeout_s` it gets its stop signal, then SIGKILL after its
//! stop grace, and every failure (an exit other than 0, a timeout, a spawn that fails) is said
//! once in the log. Its output goes into the log as `on_death [pid]: line`, at most
//! [`HOOK_SHARE`] of it per run.
//!
//! In the keeper, which reaps the orphans of the tree, the hook's child is not an orphan: while
//! a hook is spawned or runs, [`DeathHooks::hold_child`] names its pid for the orphan reaper to
//! leave alone, and the keeper is told when it has been reaped.
//!
//! # Known problems
//! A hook run by the server dies with it if the server is killed (its parent-death signal); the
//! keeper's hooks still run for the server's death. A report that could not be written yet (a
//! full disk) runs its hooks with an empty `WARD_REPORT`.

use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};
use ward_supervisor::{Child, ChildSpec, Environment, Exit, Line};

use crate::config::{OnDeath, Role};
use crate::dispatch::with_settings;
use crate::output::LogShare;

/// The most of one hook run's output written into the log.
pub(crate) const HOOK_SHARE: u64 = 64 * 1024;

/// How often a running hook's wait looks whether ward is stopping.
const STOP_POLL: Duration = Duration::from_millis(100);

/// One death, as the hooks are told of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Death {
    /// What died, as its crash report calls it (`job NAME on PATH`, `service NAME`, `server`).
    pub what: String,
    /// Its pid.
    pub pid: u32,
    /// The verdict, in words.
    pub cause: String,
    /// The verdict's machine name ([`ward_crashdiag::Cause::kind`]).
    pub kind: &'static str,
    /// The JSON report, if it could be written.
    pub report: Option<PathBuf>,
    /// The text report, if it could be written.
    pub report_text: Option<PathBuf>,
}

impl Death {
    /// The variables a hook run for it gets, `coalesced` the earlier deaths folded into it.
    fn variables(&self, coalesced: u64) -> [(&'static str, String); 8] {
        let path = |p: &Option<PathBuf>| {
            p.as_ref()
                .map_or_else(String::new, |p| p.display().to_string())
        };
        [
            ("WARD_REPORT", path(&self.report)),
            ("WARD_REPORT_TEXT", path(&self.report_text)),
            ("WARD_CAUSE", self.cause.clone()),
            ("WARD_CAUSE_KIND", self.kind.to_owned()),
            (
                "WARD_ROLE",
                self.what.split(' ').next().unwrap_or_default().to_owned(),
            ),
            ("WARD_WHAT", self.what.clone()),
            ("WARD_PID", self.pid.to_string()),
            ("WARD_COALESCED", coalesced.to_string()),
        ]
    }
}

/// The death a hook owes a run, and how many earlier ones it replaced.
#[derive(Debug)]
struct Pending {
    death: Death,
    coalesced: u64,
}

/// A hook and the run it owes.
#[derive(Debug)]
struct Slot {
    hook: Arc<OnDeath>,
    pending: Option<Pending>,
}

#[derive(Debug, Default)]
struct State {
    slots: Vec<Slot>,
    /// The slot served first next time: slots take turns, so a hook whose deaths keep coming
    /// does not starve another.
    next: usize,
    /// Set when the owner stops: what is running or pending may finish until then.
    finish_by: Option<Instant>,
}

impl State {
    /// The next slot's pending run, taken out of it.
    fn take_next(&mut self) -> Option<(Arc<OnDeath>, Pending)> {
        let (n, first) = (self.slots.len(), self.next);
        (0..n).map(|k| (first + k) % n).find_map(|i| {
            let slot = &mut self.slots[i];
            let pending = slot.pending.take()?;
            self.next = i + 1;
            Some((Arc::clone(&slot.hook), pending))
        })
    }
}

/// What the handle and its thread share.
struct Shared {
    state: Mutex<State>,
    /// Rung when a death is pending, and when the owner stops.
    wake: Condvar,
    /// The pid of the hook process while one is spawned or runs (see
    /// [`DeathHooks::hold_child`]).
    child: Mutex<Option<u32>>,
    /// The environment hooks start from, captured once.
    env: Environment,
    /// Called once a hook's process has been reaped.
    after_reap: Box<dyn Fn() + Send + Sync>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("state", &self.state)
            .field("child", &self.child)
            .finish_non_exhaustive()
    }
}

/// The `on_death` hooks of one ward process, and the thread that runs them.
///
/// Dropping it stops the thread: what runs or is pending then may still finish within the
/// longest hook's stop grace ([`finish_window`]), so that the death that ends ward (the server
/// giving up) is still told; past it the running hook gets its stop signal, then SIGKILL after
/// its grace, and what is still pending is said not to run.
#[derive(Debug)]
pub(crate) struct DeathHooks {
    shared: Arc<Shared>,
    /// Started with the first hook: a process without hooks has no thread for them.
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// The hooks that [`tell`] hands deaths to: the installed [`DeathHooks`]' of this process.
static INSTALLED: Mutex<Option<Arc<Shared>>> = parking_lot::const_mutex(None);

/// Hands `death` to this process's hooks, if any are installed; never waits for a hook.
pub(crate) fn tell(death: &Death) {
    let installed = INSTALLED.lock().clone();
    if let Some(shared) = installed {
        shared.tell(death);
    }
}

/// How long hooks still running or pending may finish once their owner stops: the longest stop
/// grace among them.
pub(crate) fn finish_window(hooks: &[OnDeath]) -> Duration {
    hooks
        .iter()
        .map(|h| h.process.stop_grace)
        .max()
        .unwrap_or_default()
}

impl DeathHooks {
    /// The hooks `hooks`, their thread started if there is one; `after_reap` is called on that
    /// thread each time a hook's process has been reaped.
    ///
    /// # Errors
    /// If the thread cannot be started.
    pub(crate) fn start(
        hooks: &[OnDeath],
        after_reap: impl Fn() + Send + Sync + 'static,
    ) -> std::io::Result<DeathHooks> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            child: Mutex::new(None),
            env: Environment::current(),
            after_reap: Box::new(after_reap),
        });
        let this = DeathHooks {
            shared,
            thread: Mutex::new(None),
        };
        this.set(hooks)?;
        Ok(this)
    }

    /// Makes these the hooks [`tell`] hands deaths to, until they are dropped.
    pub(crate) fn install(&self) {
        *INSTALLED.lock() = Some(Arc::clone(&self.shared));
    }

    /// Replaces the hooks (a reload): a hook that stays keeps its pending run, a removed one's is
    /// dropped; a run in progress finishes.
    ///
    /// # Errors
    /// If the thread is needed and cannot be started (the hooks are set all the same).
    pub(crate) fn set(&self, hooks: &[OnDeath]) -> std::io::Result<()> {
        {
            let mut state = self.shared.state.lock();
            let mut old = std::mem::take(&mut state.slots);
            state.slots = hooks
                .iter()
                .map(|hook| {
                    let kept = old.iter().position(|s| *s.hook == *hook);
                    match kept {
                        Some(at) => old.swap_remove(at),
                        None => Slot {
                            hook: Arc::new(hook.clone()),
                            pending: None,
                        },
                    }
                })
                .collect();
            state.next = 0;
        }
        if hooks.is_empty() {
            return Ok(());
        }
        let mut thread = self.thread.lock();
        if thread.is_none() {
            let shared = Arc::clone(&self.shared);
            *thread = Some(
                std::thread::Builder::new()
                    .name("ward-on-death".into())
                    .spawn(move || shared.serve())?,
            );
        }
        Ok(())
    }

    /// Hands `death` to these hooks (what [`tell`] does for the installed ones).
    #[cfg(test)]
    pub(crate) fn tell(&self, death: &Death) {
        self.shared.tell(death);
    }

    /// The pid of the hook process spawned or running, if any; while the guard lives no hook
    /// is spawned and the pid stays the running one's. The keeper's orphan reaper leaves that
    /// child alone, for its own handle to reap.
    pub(crate) fn hold_child(&self) -> MutexGuard<'_, Option<u32>> {
        self.shared.child.lock()
    }
}

impl Drop for DeathHooks {
    fn drop(&mut self) {
        {
            let mut installed = INSTALLED.lock();
            if installed
                .as_ref()
                .is_some_and(|s| Arc::ptr_eq(s, &self.shared))
            {
                *installed = None;
            }
        }
        {
            let mut state = self.shared.state.lock();
            let hooks: Vec<OnDeath> = state.slots.iter().map(|s| (*s.hook).clone()).collect();
            state.finish_by = Some(Instant::now() + finish_window(&hooks));
        }
        self.shared.wake.notify_all();
        if let Some(thread) = self.thread.get_mut().take()
            && thread.join().is_err()
        {
            log::error!("the on_death hook thread panicked");
        }
    }
}

impl Shared {
    fn tell(&self, death: &Death) {
        let role = Role::of(&death.what);
        let mut state = self.state.lock();
        if state.finish_by.is_some() {
            if state.slots.iter().any(|s| s.hook.runs_for(role)) {
                log::warn!(
                    "on_death: no hook runs for {} (pid {}): ward is stopping",
                    death.what,
                    death.pid
                );
            }
            return;
        }
        let mut told = false;
        for slot in state.slots.iter_mut().filter(|s| s.hook.runs_for(role)) {
            told = true;
            match &mut slot.pending {
                Some(pending) => {
                    pending.death.clone_from(death);
                    pending.coalesced += 1;
                }
                None => {
                    slot.pending = Some(Pending {
                        death: death.clone(),
                        coalesced: 0,
                    });
                }
            }
        }
        drop(state);
        if told {
            self.wake.notify_one();
        }
    }

    /// The thread: runs what is pending, one run at a time, until the owner stops and what was
    /// owed then is done (or its time is up).
    fn serve(&self) {
        loop {
            let (hook, pending) = {
                let mut state = self.state.lock();
                loop {
                    if let Some(finish_by) = state.finish_by
                        && Instant::now() >= finish_by
                    {
                        let owed = state.slots.iter().filter(|s| s.pending.is_some()).count();
                        if owed > 0 {
                            log::warn!("on_death: {owed} hook run(s) not made: ward is stopping");
                        }
                        return;
                    }
                    if let Some(next) = state.take_next() {
                        break next;
                    }
                    if state.finish_by.is_some() {
                        return;
                    }
                    self.wake.wait(&mut state);
                }
            };
            // A panic in a run (none is known) costs that run, not the thread.
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.run(&hook, &pending);
            }));
            if ran.is_err() {
                *self.child.lock() = None;
                log::error!(
                    "on_death hook {}: panicked while running for {}",
                    shown(&hook),
                    pending.death.what
                );
            }
        }
    }

    /// Runs `hook` for `pending`, waits for it within its timeout, and says how it failed, if it
    /// did.
    fn run(&self, hook: &OnDeath, pending: &Pending) {
        let death = &pending.death;
        let name = shown(hook);
        let spec = ChildSpec::new(&hook.command[0])
            .name("on_death")
            .args(&hook.command[1..])
            .env_base(&self.env)
            // ward's own systemd protocol is not the hook's to speak.
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID");
        // The death's variables last: no setting of the hook replaces them.
        let mut spec = with_settings(spec, &hook.process);
        for (key, value) in death.variables(pending.coalesced) {
            spec = spec.env(key, value);
        }
        let share = LogShare::new(HOOK_SHARE);
        let spec = spec.capture_merged({
            let share = share.clone();
            move |line: &Line| {
                if share.admit(&line.text, line.dropped_before) {
                    log::info!("on_death [{}]: {}", line.pid, line.text);
                }
            }
        });
        let for_death = || {
            let folded = match pending.coalesced {
                0 => String::new(),
                n => format!(", {n} earlier death(s) folded in"),
            };
            format!("{} (pid {}){folded}", death.what, death.pid)
        };
        let spawned = {
            let mut child = self.child.lock();
            Child::spawn_inline(&spec).inspect(|c| *child = Some(c.id()))
        };
        let child = match spawned {
            Ok(child) => child,
            Err(e) => {
                log::error!(
                    "on_death hook {name} for {}: cannot start: {e}",
                    for_death()
                );
                return;
            }
        };
        let pid = child.id();
        let (timeout, grace) = (hook.process.timeout, hook.process.stop_grace);
        let timeout_at = Instant::now() + timeout;
        let ended = loop {
            let slice = timeout_at
                .saturating_duration_since(Instant::now())
                .min(STOP_POLL);
            if let Some(exit) = child.wait_timeout(slice) {
                break Ended::Exited(exit);
            }
            let stopping = self
                .state
                .lock()
                .finish_by
                .is_some_and(|at| Instant::now() >= at);
            if stopping {
                break Ended::Stopped(child.stop(grace));
            }
            if Instant::now() >= timeout_at {
                break Ended::TimedOut(child.stop(grace));
            }
        };
        // Waits until its output is read: the lines are in the log before the verdict.
        drop(child);
        *self.child.lock() = None;
        (self.after_reap)();
        let held = share.take_held(0);
        if let Some(held) = held {
            log::warn!(
                "on_death [{pid}]: {} more line(s) of output not logged: a hook run logs at most {} KiB{}",
                held.lines,
                HOOK_SHARE / 1024,
                match held.lost {
                    0 => String::new(),
                    n => format!(" ({n} more dropped: the log fell behind)"),
                }
            );
        }
        match ended {
            Ended::Exited(exit) if exit.is_clean() => {
                log::debug!("on_death hook {name} [{pid}] ran for {}", for_death());
            }
            Ended::Exited(exit) => log::warn!(
                "on_death hook {name} [{pid}] for {} failed: {}",
                for_death(),
                exit.termination
            ),
            Ended::TimedOut(stopped) => log::warn!(
                "on_death hook {name} [{pid}] for {} failed: still running after its timeout of {timeout:?}; {}",
                for_death(),
                said_stopped(&stopped)
            ),
            Ended::Stopped(stopped) => log::warn!(
                "on_death hook {name} [{pid}] for {}: ward is stopping; {}",
                for_death(),
                said_stopped(&stopped)
            ),
        }
    }
}

/// How a hook's run ended.
enum Ended {
    /// On its own.
    Exited(Exit),
    /// Stopped past its timeout.
    TimedOut(ward_supervisor::Result<Exit>),
    /// Stopped because ward stops.
    Stopped(ward_supervisor::Result<Exit>),
}

fn said_stopped(stopped: &ward_supervisor::Result<Exit>) -> String {
    match stopped {
        Ok(exit) => format!("stopped ({})", exit.termination),
        Err(e) => format!("cannot stop it: {e}"),
    }
}

/// A hook as the log names it: its command, shortened.
fn shown(hook: &OnDeath) -> String {
    let mut text = format!("{:?}", hook.command.join(" "));
    if text.len() > 80 {
        let mut cut = 77;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("...");
    }
    text
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::config::{DEFAULT_HOOK_TIMEOUT, ProcessSettings};

    /// A hook running `sh -c script` in `dir`, with `timeout` and a stop grace of 100 ms.
    fn hook(dir: &Path, script: &str, roles: &[Role], timeout: Duration) -> OnDeath {
        OnDeath {
            command: vec!["sh".into(), "-c".into(), script.into()],
            roles: roles.to_vec(),
            process: ProcessSettings {
                cwd: dir.to_path_buf(),
                timeout,
                stop_grace: Duration::from_millis(100),
                ..ProcessSettings::default()
            },
        }
    }

    fn death(what: &str, pid: u32) -> Death {
        Death {
            what: what.into(),
            pid,
            cause: "crashed (SIGSEGV)".into(),
            kind: "native_crash",
            report: Some(PathBuf::from(format!("/crashes/{pid}.json"))),
            report_text: None,
        }
    }

    /// The lines of `file`, none if it does not exist.
    fn lines(file: &Path) -> Vec<String> {
        std::fs::read_to_string(file)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Polls until `file` has `n` lines (a minute at most), and returns them.
    fn wait_lines(file: &Path, n: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let found = lines(file);
            if found.len() >= n {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "{file:?} has {found:?}, not {n} lines"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    const RECORD: &str = r#"printf '%s|%s|%s|%s|%s|%s|%s|%s\n' "$WARD_ROLE" "$WARD_WHAT" "$WARD_PID" "$WARD_CAUSE" "$WARD_CAUSE_KIND" "$WARD_REPORT" "$WARD_REPORT_TEXT" "$WARD_COALESCED" >> "#;

    #[test]
    fn each_hook_runs_with_the_death_in_its_environment_if_its_roles_name_it() {
        let dir = tempfile::tempdir().unwrap();
        let (all, services) = (dir.path().join("all"), dir.path().join("services"));
        let reaped = Arc::new(AtomicUsize::new(0));
        let hooks = DeathHooks::start(
            &[
                hook(dir.path(), &format!("{RECORD}all"), &[], DEFAULT),
                hook(
                    dir.path(),
                    &format!("{RECORD}services"),
                    &[Role::Service],
                    DEFAULT,
                ),
            ],
            {
                let reaped = Arc::clone(&reaped);
                move || {
                    reaped.fetch_add(1, Ordering::SeqCst);
                }
            },
        )
        .unwrap();
        hooks.tell(&death("job record on /tree/a b", 41));
        assert_eq!(
            wait_lines(&all, 1),
            ["job|job record on /tree/a b|41|crashed (SIGSEGV)|native_crash|/crashes/41.json||0"]
        );
        hooks.tell(&death("service web", 42));
        assert_eq!(
            wait_lines(&services, 1)[0],
            "service|service web|42|crashed (SIGSEGV)|native_crash|/crashes/42.json||0"
        );
        assert_eq!(wait_lines(&all, 2).len(), 2);
        drop(hooks);
        assert_eq!(
            lines(&services).len(),
            1,
            "the job's death is not a service's"
        );
        assert_eq!(reaped.load(Ordering::SeqCst), 3, "one call per reaped run");
    }

    const DEFAULT: Duration = DEFAULT_HOOK_TIMEOUT;

    #[test]
    fn deaths_while_a_hook_runs_fold_into_one_run_with_the_latest() {
        let dir = tempfile::tempdir().unwrap();
        let (started, gate, ledger) = (
            dir.path().join("started"),
            dir.path().join("gate"),
            dir.path().join("ledger"),
        );
        let script = format!(
            "echo \"$WARD_PID\" >> started; while [ ! -e gate ]; do sleep 0.01; done; {RECORD}ledger"
        );
        let hooks = DeathHooks::start(&[hook(dir.path(), &script, &[], DEFAULT)], || {}).unwrap();
        hooks.tell(&death("job a on /t/0", 100));
        wait_lines(&started, 1);
        for pid in 101..=110 {
            hooks.tell(&death(&format!("job a on /t/{pid}"), pid));
        }
        std::fs::write(&gate, "").unwrap();
        let runs = wait_lines(&ledger, 2);
        assert!(
            runs[0].ends_with("|100|crashed (SIGSEGV)|native_crash|/crashes/100.json||0"),
            "{runs:?}"
        );
        assert_eq!(
            runs[1], "job|job a on /t/110|110|crashed (SIGSEGV)|native_crash|/crashes/110.json||9",
            "the latest death, the 9 before it folded in"
        );
        // Nothing else was owed: the next death's run comes next, alone.
        hooks.tell(&death("job a on /t/111", 111));
        let runs = wait_lines(&ledger, 3);
        assert!(
            runs[2].contains("|111|") && runs[2].ends_with("|0"),
            "{runs:?}"
        );
        assert_eq!(runs.len(), 3, "{runs:?}");
    }

    #[test]
    fn a_hook_past_its_timeout_is_stopped_and_the_next_death_runs() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = dir.path().join("ledger");
        // The first run hangs; the others return at once.
        let script =
            "echo \"$WARD_PID $$\" >> ledger; [ \"$WARD_PID\" = 1 ] && exec sleep 1000; true";
        let hooks = DeathHooks::start(
            &[hook(dir.path(), script, &[], Duration::from_millis(200))],
            || {},
        )
        .unwrap();
        hooks.tell(&death("service s", 1));
        let hung: u32 = wait_lines(&ledger, 1)[0]
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        hooks.tell(&death("service s", 2));
        let runs = wait_lines(&ledger, 2);
        assert!(runs[1].starts_with("2 "), "{runs:?}");
        assert!(!ward_sys::is_alive(hung), "the hung hook was stopped");
    }

    #[test]
    fn dropping_the_hooks_stops_the_running_one_and_names_its_pid_until_then() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = dir.path().join("ledger");
        let hooks = DeathHooks::start(
            &[hook(
                dir.path(),
                "echo $$ >> ledger; exec sleep 1000",
                &[],
                DEFAULT,
            )],
            || {},
        )
        .unwrap();
        assert_eq!(*hooks.hold_child(), None);
        hooks.tell(&death("server", 7));
        let pid: u32 = wait_lines(&ledger, 1)[0].parse().unwrap();
        assert_eq!(*hooks.hold_child(), Some(pid));
        drop(hooks);
        assert!(!ward_sys::is_alive(pid), "the hook outlived its owner");
    }

    #[test]
    fn hooks_set_later_run_for_later_deaths_and_start_their_thread_then() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = dir.path().join("ledger");
        let hooks = DeathHooks::start(&[], || {}).unwrap();
        assert!(hooks.thread.lock().is_none(), "no hook, no thread");
        hooks.tell(&death("job a on /t/1", 1));
        let kept = hook(dir.path(), &format!("{RECORD}ledger"), &[], DEFAULT);
        hooks.set(std::slice::from_ref(&kept)).unwrap();
        hooks.tell(&death("job a on /t/2", 2));
        assert!(
            wait_lines(&ledger, 1)[0].contains("|2|"),
            "a death before the hook existed runs nothing"
        );
        hooks
            .set(&[hook(dir.path(), "true", &[], DEFAULT), kept])
            .unwrap();
        hooks.tell(&death("job a on /t/3", 3));
        assert!(wait_lines(&ledger, 2)[1].contains("|3|"));
    }
}

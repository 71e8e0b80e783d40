//! What to run: [`ChildSpec`] (program, arguments, environment, descriptors, limits, priority,
//! identity, output sink, watchdog, how it is stopped) and its small parts. Nothing here touches
//! a process.

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr, OsString};
use std::fmt;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Which of the child's output streams a [`Line`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// One line of a child's output, without its line terminator.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Line {
    /// The child that wrote it.
    pub pid: u32,
    /// Which stream.
    pub stream: Stream,
    /// The text (invalid UTF-8 replaced); a line longer than 16 KiB arrives in several pieces.
    pub text: String,
    /// Lines lost just before this one because the sink fell behind (the child is never made to
    /// wait for the sink; lines are dropped instead). Losses after the last delivered line are
    /// only in [`Child::dropped_lines`](crate::Child::dropped_lines) and the log.
    pub dropped_before: u64,
}

/// Receives captured output, on a thread of its own per child. It may be slow without ever
/// blocking the child: lines that cannot be queued are counted in [`Line::dropped_before`].
pub type OutputSink = Arc<dyn Fn(&Line) + Send + Sync>;

/// The child's standard input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Input {
    /// `/dev/null` (the default).
    #[default]
    Null,
    /// A pipe; take its write end with [`Child::take_stdin`](crate::Child::take_stdin) (for
    /// JSON-lines workers).
    Piped,
    /// This process's own stdin.
    Inherit,
}

/// Where the child's stdout and stderr go.
#[derive(Clone, Default)]
pub enum Output {
    /// This process's own stdout and stderr (the default).
    #[default]
    Inherit,
    /// `/dev/null`.
    Null,
    /// Pipes read line by line into the sink.
    Capture(OutputSink),
}

impl fmt::Debug for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Output::Inherit => f.write_str("Inherit"),
            Output::Null => f.write_str("Null"),
            Output::Capture(_) => f.write_str("Capture(..)"),
        }
    }
}

/// Resource limits set with `setrlimit` in the child before exec (soft and hard alike).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ResourceLimits {
    /// `RLIMIT_AS`, in bytes. A Rust child that hits it aborts (SIGABRT) on allocation failure.
    pub address_space: Option<u64>,
    /// `RLIMIT_NOFILE`.
    pub open_files: Option<u64>,
    /// `RLIMIT_CORE`, in bytes (0 disables core dumps).
    pub core_size: Option<u64>,
}

/// The heartbeat watchdog: the child writes to the descriptor named in [`HEARTBEAT_FD_ENV`] (see
/// [`Heartbeat`](crate::Heartbeat)); after `timeout` without a write it gets SIGABRT, so its crash
/// handler can dump state, and `abort_grace` later its whole group gets SIGKILL. Its [`Exit`]
/// says `hung`.
///
/// [`Exit`]: crate::Exit
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watchdog {
    /// Silence allowed, counted from spawn and then from each heartbeat.
    pub timeout: Duration,
    /// Time between SIGABRT and SIGKILL.
    pub abort_grace: Duration,
}

/// Who a child runs as ([`ChildSpec::user`]): ids, resolved from names by the caller before the
/// spawn (a lookup in the user database allocates and may take locks, which the child must not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Credentials {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) groups: Vec<u32>,
}

/// The environment variable telling a child which descriptor to write its heartbeats to.
pub const HEARTBEAT_FD_ENV: &str = "WARD_HEARTBEAT_FD";

/// An environment captured once to start many children from ([`ChildSpec::env_base`]): each
/// spawn then copies only the variables its spec changes, not the whole environment.
#[derive(Clone, Default)]
pub struct Environment {
    /// `KEY=VALUE` each, as `execve` takes them; no key twice.
    pub(crate) vars: Arc<[CString]>,
}

/// The names only: values may be secrets, and a spec is logged with `{:?}`.
impl fmt::Debug for Environment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = self.vars.iter().map(|var| {
            let bytes = var.to_bytes();
            let end = bytes
                .iter()
                .skip(1)
                .position(|&b| b == b'=')
                .map_or(bytes.len(), |at| at + 1);
            String::from_utf8_lossy(&bytes[..end]).into_owned()
        });
        f.debug_struct("Environment")
            .field("names", &names.collect::<Vec<_>>())
            .finish()
    }
}

impl Environment {
    /// This process's environment as it is now (a later `set_var` is not seen in it). A name
    /// the process's environment has twice keeps its last value.
    pub fn current() -> Environment {
        let vars: BTreeMap<OsString, OsString> = std::env::vars_os().collect();
        let vars = vars
            .into_iter()
            .filter_map(|(key, value)| {
                let mut pair = key.into_vec();
                pair.push(b'=');
                pair.extend_from_slice(value.as_bytes());
                // The environment holds C strings: no NUL can be inside one.
                CString::new(pair).ok()
            })
            .collect();
        Environment { vars }
    }

    /// The number of variables.
    pub fn len(&self) -> usize {
        self.vars.len()
    }

    /// Whether it has no variable.
    pub fn is_empty(&self) -> bool {
        self.vars.is_empty()
    }
}

/// A spec's changes to its environment, in order: a name and its new value, or `None` to remove
/// it.
#[derive(Clone, Default)]
pub(crate) struct EnvChanges(pub(crate) Vec<(OsString, Option<OsString>)>);

/// The names only, as with [`Environment`]: a job's `env` may hold secrets.
impl fmt::Debug for EnvChanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(name, value)| {
                let change = if value.is_some() { "set" } else { "removed" };
                (name, change)
            }))
            .finish()
    }
}

/// A child to run: program, arguments, environment and everything about how it is contained.
#[derive(Debug, Clone)]
pub struct ChildSpec {
    pub(crate) name: String,
    pub(crate) program: OsString,
    pub(crate) args: Vec<OsString>,
    /// What the environment starts from: `None` for this process's at the spawn.
    pub(crate) env_base: Option<Environment>,
    /// Changes to it, in order.
    pub(crate) env: EnvChanges,
    pub(crate) cwd: Option<PathBuf>,
    pub(crate) stdin: Input,
    pub(crate) output: Output,
    pub(crate) stdout_piped: bool,
    /// With [`Output::Capture`]: stderr goes into stdout's pipe.
    pub(crate) merge_stderr: bool,
    pub(crate) pass_fds: Vec<Arc<OwnedFd>>,
    pub(crate) limits: ResourceLimits,
    pub(crate) memory_max: Option<u64>,
    /// A cgroup of its own even without a memory limit ([`ChildSpec::own_cgroup`]).
    pub(crate) own_cgroup: bool,
    pub(crate) watchdog: Option<Watchdog>,
    pub(crate) stop_grace: Duration,
    pub(crate) stop_signal: i32,
    pub(crate) nice: Option<i32>,
    pub(crate) user: Option<Credentials>,
    pub(crate) kill_group_on_exit: bool,
}

impl ChildSpec {
    /// Runs `program` (looked up in `PATH` if it has no slash), named after it.
    pub fn new(program: impl AsRef<OsStr>) -> ChildSpec {
        let program = program.as_ref().to_owned();
        ChildSpec {
            name: program.to_string_lossy().into_owned(),
            program,
            args: Vec::new(),
            env_base: None,
            env: EnvChanges::default(),
            cwd: None,
            stdin: Input::Null,
            output: Output::Inherit,
            stdout_piped: false,
            merge_stderr: false,
            pass_fds: Vec::new(),
            limits: ResourceLimits::default(),
            memory_max: None,
            own_cgroup: false,
            watchdog: None,
            stop_grace: Duration::from_secs(5),
            stop_signal: libc::SIGTERM,
            nice: None,
            user: None,
            kill_group_on_exit: true,
        }
    }

    /// The name used in events and logs.
    pub fn name(mut self, name: impl Into<String>) -> ChildSpec {
        self.name = name.into();
        self
    }

    /// Adds one argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> ChildSpec {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Adds arguments.
    pub fn args<I, S>(mut self, args: I) -> ChildSpec
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets an environment variable.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> ChildSpec {
        self.env
            .0
            .push((key.as_ref().to_owned(), Some(value.as_ref().to_owned())));
        self
    }

    /// Removes an environment variable.
    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> ChildSpec {
        self.env.0.push((key.as_ref().to_owned(), None));
        self
    }

    /// Starts from an empty environment instead of this process's.
    pub fn env_clear(mut self) -> ChildSpec {
        self.env_base = Some(Environment::default());
        self.env.0.clear();
        self
    }

    /// Starts from `base` instead of this process's environment at the spawn; the changes made
    /// with [`env`](Self::env) and [`env_remove`](Self::env_remove), before or after, apply on
    /// top. For many spawns with the same environment: each copies only what it changes.
    pub fn env_base(mut self, base: &Environment) -> ChildSpec {
        self.env_base = Some(base.clone());
        self
    }

    /// The working directory.
    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> ChildSpec {
        self.cwd = Some(dir.as_ref().to_owned());
        self
    }

    /// Standard input (default `/dev/null`).
    pub fn stdin(mut self, input: Input) -> ChildSpec {
        self.stdin = input;
        self
    }

    /// Standard output and error (default: inherited).
    pub fn output(mut self, output: Output) -> ChildSpec {
        self.output = output;
        self
    }

    /// Captures stdout and stderr line by line into `sink`.
    pub fn capture(self, sink: impl Fn(&Line) + Send + Sync + 'static) -> ChildSpec {
        self.output(Output::Capture(Arc::new(sink)))
    }

    /// Captures stdout and stderr line by line into `sink` through one pipe, as `2>&1` does:
    /// the lines keep the order the child wrote them in, and all come as [`Stream::Stdout`].
    /// One pipe also costs each spawn less than two.
    ///
    /// [`Stream::Stdout`]: crate::Stream::Stdout
    pub fn capture_merged(mut self, sink: impl Fn(&Line) + Send + Sync + 'static) -> ChildSpec {
        self.merge_stderr = true;
        self.capture(sink)
    }

    /// Standard output goes to a pipe whose read end the caller takes with
    /// [`Child::take_stdout`](crate::Child::take_stdout) and reads itself (stderr still goes
    /// where [`output`](Self::output) says): a request/reply worker's answers then reach the
    /// thread waiting for them without passing through the reaper and a sink. Unlike captured
    /// output, a child whose pipe nobody reads blocks once the pipe is full.
    pub fn stdout_piped(mut self) -> ChildSpec {
        self.stdout_piped = true;
        self
    }

    /// Gives the child this descriptor, at the same number. Every other descriptor above stderr
    /// is closed on exec, whether or not it was opened close-on-exec.
    pub fn pass_fd(mut self, fd: impl Into<OwnedFd>) -> ChildSpec {
        self.pass_fds.push(Arc::new(fd.into()));
        self
    }

    /// The descriptor numbers passed with [`pass_fd`](Self::pass_fd).
    pub fn passed_fds(&self) -> Vec<i32> {
        self.pass_fds.iter().map(|fd| fd.as_raw_fd()).collect()
    }

    /// Resource limits.
    pub fn limits(mut self, limits: ResourceLimits) -> ChildSpec {
        self.limits = limits;
        self
    }

    /// Runs the child in a memory cgroup of its own limited to `bytes` (cgroup v2 `memory.max`,
    /// or v1 `memory.limit_in_bytes`). Spawning fails with [`Error::NoMemoryCgroup`] where no
    /// memory cgroup can be created: the limit is never silently ignored.
    ///
    /// [`Error::NoMemoryCgroup`]: crate::Error::NoMemoryCgroup
    pub fn memory_max(mut self, bytes: u64) -> ChildSpec {
        self.memory_max = Some(bytes);
        self
    }

    /// Runs the child in a cgroup of its own (in the memory hierarchy, as
    /// [`memory_max`](Self::memory_max) does, with no limit unless that sets one), so that the
    /// processes it starts stay in it even when they leave its process group (`setsid`, a
    /// double fork): when the child exits or is stopped, everything in the cgroup is killed
    /// with it, as systemd's `KillMode=control-group` does. Spawning fails with
    /// [`Error::NoMemoryCgroup`] where no cgroup can be created; [`probe_memory_cgroup`]
    /// tells in advance.
    ///
    /// [`Error::NoMemoryCgroup`]: crate::Error::NoMemoryCgroup
    /// [`probe_memory_cgroup`]: crate::probe_memory_cgroup
    pub fn own_cgroup(mut self) -> ChildSpec {
        self.own_cgroup = true;
        self
    }

    /// Enables the heartbeat watchdog.
    pub fn watchdog(mut self, watchdog: Watchdog) -> ChildSpec {
        self.watchdog = Some(watchdog);
        self
    }

    /// Time between the stop signal and SIGKILL when the child is stopped (default 5 s).
    pub fn stop_grace(mut self, grace: Duration) -> ChildSpec {
        self.stop_grace = grace;
        self
    }

    /// The signal that asks the child to stop (default SIGTERM): [`Child::stop`] and
    /// [`Child::begin_stop`] send it to the child's whole process group, and SIGKILL follows
    /// after the grace; a [`Supervisor`] stops its children with it too. For a program that
    /// stops cleanly on another signal: SIGINT for many development servers, SIGQUIT for nginx's
    /// graceful stop, SIGHUP for a shell's job. A number that is no signal is refused at the spawn
    /// with [`Error::Config`].
    ///
    /// [`Child::stop`]: crate::Child::stop
    /// [`Child::begin_stop`]: crate::Child::begin_stop
    /// [`Supervisor`]: crate::Supervisor
    /// [`Error::Config`]: crate::Error::Config
    pub fn stop_signal(mut self, signal: i32) -> ChildSpec {
        self.stop_signal = signal;
        self
    }

    /// The child's nice value, from -20 (most favoured) to 19 (least), set with `setpriority`
    /// before exec (default: this process's). Going below this process's own value needs
    /// `CAP_SYS_NICE` (root) or a high enough `RLIMIT_NICE`: without it the spawn fails with
    /// [`Error::Spawn`] naming the nice value. A value out of range is refused at the spawn with
    /// [`Error::Config`].
    ///
    /// [`Error::Spawn`]: crate::Error::Spawn
    /// [`Error::Config`]: crate::Error::Config
    pub fn nice(mut self, nice: i32) -> ChildSpec {
        self.nice = Some(nice);
        self
    }

    /// Runs the child as user `uid` and group `gid` with the supplementary `groups` (empty for
    /// none): `setgroups`, then `setresgid`, then `setresuid` in the child before exec, real,
    /// effective and saved ids alike, so the program cannot take the old ones back. Needs
    /// `CAP_SETUID` and `CAP_SETGID` (root); without them the spawn fails with [`Error::Spawn`]
    /// naming the step. Resolve names to ids before (`getpwnam`, `getgrouplist`): the child can
    /// look nothing up.
    ///
    /// The privileged steps come first in the child (joining the memory cgroup, resource limits,
    /// the nice value), the parent-death signal after (a change of credentials clears it), and
    /// the change of directory last, as the new user: a child never starts in a directory its
    /// user could not enter.
    ///
    /// [`Error::Spawn`]: crate::Error::Spawn
    pub fn user(mut self, uid: u32, gid: u32, groups: impl IntoIterator<Item = u32>) -> ChildSpec {
        self.user = Some(Credentials {
            uid,
            gid,
            groups: groups.into_iter().collect(),
        });
        self
    }

    /// Whether the child's whole process group is killed when the child itself exits (default
    /// true, like systemd's `KillMode=control-group`): what it left running would be orphans.
    pub fn kill_group_on_exit(mut self, kill: bool) -> ChildSpec {
        self.kill_group_on_exit = kill;
        self
    }

    /// The name used in events and logs.
    pub fn get_name(&self) -> &str {
        &self.name
    }

    /// The stop grace.
    pub fn get_stop_grace(&self) -> Duration {
        self.stop_grace
    }

    /// The stop signal.
    pub fn get_stop_signal(&self) -> i32 {
        self.stop_signal
    }

    /// Refuses what no spawn could honour: a stop signal that is no signal, a nice value out of
    /// range.
    pub(crate) fn check(&self) -> crate::Result<()> {
        if !(1..=crate::sys::max_signal()).contains(&self.stop_signal) {
            return Err(crate::Error::Config(format!(
                "stop signal {} is not a signal",
                self.stop_signal
            )));
        }
        if let Some(nice) = self.nice
            && !(-20..=19).contains(&nice)
        {
            return Err(crate::Error::Config(format!(
                "nice value {nice} is out of range (-20 to 19)"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_environment_shows_its_names_but_never_its_values() {
        let env = Environment {
            vars: Arc::from([
                CString::new("API_TOKEN=hunter2").unwrap(),
                CString::new("=C:=weird").unwrap(),
            ]),
        };
        let shown = format!("{:?}", ChildSpec::new("true").env_base(&env));
        assert!(shown.contains("\"API_TOKEN\""), "{shown}");
        assert!(shown.contains("\"=C:\""), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn a_specs_own_environment_changes_show_their_names_but_never_their_values() {
        let spec = ChildSpec::new("true")
            .env("API_TOKEN", "hunter2")
            .env_remove("HOME");
        let shown = format!("{spec:?}");
        assert!(shown.contains("(\"API_TOKEN\", \"set\")"), "{shown}");
        assert!(shown.contains("(\"HOME\", \"removed\")"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}

//! The daemon's configuration: the TOML file format, its defaults, and validation with precise errors.
//!
//! Every error names the file and, where the problem is at one place in it, the line and column.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::batch::{BatchSettings, OnBusy};
use crate::jobs::{Event, Events};

mod identity;
mod on_death;
mod process;
mod service;

use identity::NameOrId;
pub use on_death::{DEFAULT_HOOK_TIMEOUT, HOOK_VARIABLES, OnDeath, Role};
use process::Privileges;
pub use process::{DEFAULT_STOP_SIGNAL, Identity, ProcessSettings};
pub use service::{
    Liveness, ModeName, PolicyName, PolicyOverrides, Probe, Readiness, Service, start_order,
};

/// Where in a config file a problem is, and what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The config file (or `<command line>` for flags).
    pub file: PathBuf,
    /// 1-based line and column, when the problem is at one place.
    pub position: Option<(usize, usize)>,
    /// What is wrong, in words.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some((line, col)) => write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                line,
                col,
                self.message
            ),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// What errors about command-line flags name as their file.
const COMMAND_LINE: &str = "<command line>";

/// Settings given as flags (`ward run --watch DIR -- cmd`): they take precedence over the file's
/// and are validated by the same code, under the flag's name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flags {
    /// `--watch DIR`, repeatable: replaces the file's roots (relative to the current directory).
    pub watch: Vec<PathBuf>,
    /// `--ignore GLOB`, repeatable: added to the file's ignores.
    pub ignore: Vec<String>,
    /// `--workers N`: `jobs.workers`.
    pub workers: Option<usize>,
    /// `--debounce MS`: `watch.debounce_ms`.
    pub debounce_ms: Option<u64>,
    /// `-- COMMAND ARGS...`: an exec trigger for every file, tried before the file's triggers.
    pub command: Vec<String>,
}

impl Flags {
    /// Puts the flags' numbers into the file's sections; returns the keys they set, each with
    /// its flag.
    fn overlay(&self, file: &mut File) -> Vec<(&'static str, &'static str)> {
        let mut flagged = Vec::new();
        if let Some(n) = self.workers {
            file.jobs.workers = Some(Spanned::new(0..0, n as u64));
            flagged.push(("workers", "--workers"));
        }
        if let Some(ms) = self.debounce_ms {
            file.watch.debounce_ms = Some(Spanned::new(0..0, ms));
            flagged.push(("debounce_ms", "--debounce"));
        }
        flagged
    }
}

/// `watch.backend`: which backend watches the roots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WatchBackend {
    /// fanotify where it starts (root, Linux 5.17), else inotify: the default.
    Auto,
    /// fanotify; where it cannot start, inotify, with a warning saying why.
    Fanotify,
    /// inotify: one watch per directory (polling a root past `fs.inotify.max_user_watches`).
    Inotify,
    /// Polling every directory twice a second.
    Poll,
}

impl WatchBackend {
    /// The watcher's backend for this setting.
    pub fn watcher_backend(self) -> ward_watch::Backend {
        match self {
            WatchBackend::Auto => ward_watch::Backend::Auto,
            WatchBackend::Fanotify => ward_watch::Backend::Fanotify,
            WatchBackend::Inotify => ward_watch::Backend::Recommended,
            WatchBackend::Poll => ward_watch::Backend::Poll(Duration::from_millis(500)),
        }
    }
}

/// A validated configuration with every path made absolute and every default filled in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// Where the configuration came from (`None` for command-line flags only).
    pub source: Option<PathBuf>,
    /// The config file's directory (else the current one): relative roots and a trigger's `cwd`
    /// are resolved against it, and jobs and workers run in it unless their trigger says
    /// otherwise.
    pub base: PathBuf,
    /// Roots to watch, absolute.
    pub roots: Vec<PathBuf>,
    /// Ignore globs, matched against paths relative to their root, applied before watching.
    pub ignore: Vec<String>,
    /// Name of the per-directory ignore file (gitignore syntax).
    pub ignore_file: String,
    /// Which backend watches the roots.
    pub backend: WatchBackend,
    /// Quiet window per path.
    pub debounce: Duration,
    /// Longest a path that never goes quiet waits before it is emitted.
    pub max_wait: Duration,
    /// Job-running threads.
    pub workers: usize,
    /// Jobs that may wait in the queue.
    pub queue_capacity: usize,
    /// How a failed job is tried again, unless its trigger says otherwise.
    pub retry: Retry,
    /// Deadline of one job, for a trigger that sets none ([`ProcessSettings::timeout`]).
    pub job_timeout: Duration,
    /// Grace between the stop signal and SIGKILL when stopping a child, for a trigger that sets
    /// none ([`ProcessSettings::stop_grace`]).
    pub stop_grace: Duration,
    /// How long `ward stop` lets queued jobs drain.
    pub drain_timeout: Duration,
    /// The jobs' umask; `None`: the one ward was started with.
    #[serde(default)]
    pub umask: Option<u32>,
    /// Below this much available memory, in MiB, no job starts (`None`: no floor).
    #[serde(default)]
    pub min_available_mb: Option<u64>,
    /// Interval of the heartbeat log line.
    pub heartbeat_log: Duration,
    /// Rotate the log file past this size.
    pub log_max_bytes: u64,
    /// Crash reports kept.
    pub keep_reports: usize,
    /// Where Prometheus metrics are served over HTTP (`[metrics] listen`); `None`: not served
    /// (`ward metrics` still prints them).
    #[serde(default)]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// What runs on a change, first match wins.
    pub triggers: Vec<Trigger>,
    /// Long-running programs ward keeps running, in the order declared (`[[service]]`).
    #[serde(default)]
    pub services: Vec<Service>,
    /// Commands run for each crash report, in the order declared (`[[on_death]]`).
    #[serde(default)]
    pub on_death: Vec<OnDeath>,
}

/// A mapping from path globs to the handler that processes matching changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trigger {
    /// Name used in logs and reports.
    pub name: String,
    /// Globs matched against the path relative to its watch root; empty means every file.
    pub globs: Vec<String>,
    /// What to run.
    pub handler: Handler,
    /// The events it receives; others of its paths are recorded as processed without a run.
    #[serde(default)]
    pub events: Events,
    /// The signal a job or worker past its timeout gets before it is stopped, so that it can
    /// print its stack on stderr for the crash report (`None`: stopped at once).
    #[serde(default = "default_dump_signal")]
    pub dump_signal: Option<i32>,
    /// How its failed jobs are tried again (`[jobs]`'s unless it says otherwise).
    #[serde(default)]
    pub retry: Retry,
    /// Most of its jobs queued in the pool or running at once; `None`: as many as the workers.
    #[serde(default)]
    pub concurrency: Option<usize>,
    /// How its jobs' (or its worker's) processes are started and stopped, `[jobs]`'s defaults
    /// filled in. A launch recorded before these settings existed has none: see
    /// [`Config::with_unrecorded_settings`].
    #[serde(default)]
    pub process: ProcessSettings,
    /// `batch = true`: one run of its command for all the paths that changed in a settle
    /// window, instead of one per path (exec triggers only).
    #[serde(default)]
    pub batch: Option<BatchSettings>,
}

#[cfg(test)]
impl Trigger {
    /// A trigger running `true` for the paths `globs` match (every path when empty), with every
    /// other setting at its default: what the tests of other modules match paths against.
    pub(crate) fn exec_true(name: &str, globs: &[&str]) -> Trigger {
        Trigger {
            name: name.into(),
            globs: globs.iter().map(|g| (*g).to_owned()).collect(),
            handler: Handler::Exec {
                argv: vec!["true".into()],
            },
            events: Events::ALL,
            dump_signal: None,
            retry: Retry::default(),
            concurrency: None,
            process: ProcessSettings::default(),
            batch: None,
        }
    }
}

/// The dump signal of a trigger that names none: Python's `faulthandler`, glibc's `abort`
/// handlers and most runtimes print a stack on it, and it is a crash if nothing catches it.
pub const DEFAULT_DUMP_SIGNAL: i32 = libc::SIGABRT;

/// How often a failed job is tried again, and how long it waits in between: the delay doubles
/// from `backoff` up to `backoff_max`, with jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retry {
    /// Extra attempts after the first.
    pub retries: u32,
    /// The delay before the first retry.
    pub backoff: Duration,
    /// The longest delay between two attempts.
    pub backoff_max: Duration,
}

impl Retry {
    /// The delay before the attempt that follows the `failures`-th failure: `backoff` doubled
    /// per failure after the first, at most `backoff_max`.
    pub fn backoff_after(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(30);
        self.backoff
            .saturating_mul(1 << doublings)
            .min(self.backoff_max)
    }
}

impl Default for Retry {
    fn default() -> Retry {
        Retry {
            retries: 2,
            backoff: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
        }
    }
}

fn default_dump_signal() -> Option<i32> {
    Some(DEFAULT_DUMP_SIGNAL)
}

/// How a trigger processes one change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Handler {
    /// Run `argv` once per changed path, without a shell.
    Exec {
        /// Program and arguments; a whole argument `{path}` becomes the path.
        argv: Vec<String>,
    },
    /// Send each change to a persistent process speaking JSON lines.
    Worker {
        /// Program and arguments of the worker process.
        argv: Vec<String>,
        /// Recycle the worker after this many jobs (0: never).
        recycle_after: u64,
        /// Recycle the worker when its RSS passes this many bytes (0: never).
        max_rss_bytes: u64,
    },
    /// Publish each change to a NATS JetStream stream, for `ward work` to run elsewhere; the job
    /// succeeds when the stream acknowledges it.
    Publish(Publish),
}

/// Where a publish trigger sends its jobs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publish {
    /// The NATS server, such as `nats://127.0.0.1:4222`.
    pub url: String,
    /// The stream, made (work queue, file storage) if missing.
    pub stream: String,
    /// The subject, the trigger's name in place of `{trigger}`.
    pub subject: String,
    /// Files up to this many bytes travel in the message (base64); 0: none do.
    pub content_max_bytes: u64,
    /// Publishes sent and not yet acknowledged, at most (a window, sent at once).
    pub max_unacked: usize,
}

/// The default of `max_unacked`: a window large enough that a burst costs one round trip per
/// window, not per job, and small enough that a server away times out little at once.
pub const DEFAULT_MAX_UNACKED: usize = 64;
/// The largest `max_unacked`.
const MAX_UNACKED: usize = 10_000;

/// The default stream of a publish trigger.
pub const DEFAULT_STREAM: &str = "WARD";
/// The default subject of a publish trigger; `ward work` takes `ward.jobs.>`.
pub const DEFAULT_SUBJECT: &str = "ward.jobs.{trigger}";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishSection {
    url: At<String>,
    stream: Option<At<String>>,
    subject: Option<At<String>>,
    content_max_kb: Option<At<u64>>,
    max_unacked: Option<At<usize>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    watch: WatchSection,
    #[serde(default)]
    jobs: JobsSection,
    #[serde(default)]
    log: LogSection,
    #[serde(default)]
    metrics: MetricsSection,
    #[serde(default, rename = "trigger")]
    triggers: Vec<At<TriggerSection>>,
    #[serde(default, rename = "service")]
    services: Vec<At<service::ServiceSection>>,
    #[serde(default)]
    on_death: Vec<At<on_death::OnDeathSection>>,
}

/// A value of the file with the place it was read from, so that an error found after parsing
/// points at the value at fault (a value set by a flag has an empty span).
type At<T> = Spanned<T>;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WatchSection {
    roots: Option<At<Vec<PathBuf>>>,
    #[serde(default)]
    ignore: Vec<At<String>>,
    ignore_file: Option<At<String>>,
    debounce_ms: Option<At<u64>>,
    max_wait_ms: Option<At<u64>>,
    backend: Option<At<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct JobsSection {
    workers: Option<At<u64>>,
    queue_capacity: Option<At<u64>>,
    retries: Option<At<u64>>,
    backoff_s: Option<At<f64>>,
    backoff_max_s: Option<At<f64>>,
    timeout_s: Option<At<f64>>,
    stop_grace_s: Option<At<f64>>,
    drain_timeout_s: Option<At<f64>>,
    umask: Option<At<String>>,
    min_available_mb: Option<At<u64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogSection {
    heartbeat_s: Option<At<f64>>,
    max_size_mb: Option<At<u64>>,
    keep_reports: Option<At<u64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricsSection {
    listen: Option<At<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TriggerSection {
    name: Option<At<String>>,
    #[serde(default)]
    glob: Vec<At<String>>,
    exec: Option<At<Vec<String>>>,
    worker: Option<At<Vec<String>>>,
    publish: Option<At<PublishSection>>,
    recycle_after: Option<At<u64>>,
    max_rss_mb: Option<At<u64>>,
    events: Option<At<Vec<At<String>>>>,
    dump_signal: Option<At<String>>,
    retries: Option<At<u64>>,
    backoff_s: Option<At<f64>>,
    backoff_max_s: Option<At<f64>>,
    concurrency: Option<At<u64>>,
    // The process settings (`process.rs`).
    env: Option<At<std::collections::BTreeMap<At<String>, At<String>>>>,
    env_remove: Option<At<Vec<At<String>>>>,
    cwd: Option<At<PathBuf>>,
    timeout_s: Option<At<f64>>,
    stop_signal: Option<At<String>>,
    stop_grace_s: Option<At<f64>>,
    nice: Option<At<i64>>,
    memory_max_mb: Option<At<u64>>,
    user: Option<At<NameOrId>>,
    group: Option<At<NameOrId>>,
    batch: Option<At<bool>>,
    on_busy: Option<At<String>>,
    signal: Option<At<String>>,
    paths_nul: Option<At<bool>>,
}

impl Config {
    /// Reads and validates the config file at `path`; relative roots are relative to its directory.
    ///
    /// # Errors
    /// If the file cannot be read, is not valid TOML, has unknown keys or values out of range.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::resolve(Some(path), &Flags::default(), Path::new("."))
    }

    /// The configuration a command line asks for: the file at `file` (if any) with `flags` on
    /// top, validated once, whichever of the two a setting came from. Relative roots of the file
    /// are relative to its directory, those of the flags to `cwd`.
    ///
    /// # Errors
    /// As [`Config::load`]; a flag's bad value is reported against `<command line>` and the flag.
    pub fn resolve(file: Option<&Path>, flags: &Flags, cwd: &Path) -> Result<Config, ConfigError> {
        let Some(path) = file else {
            return Config::parse_with("", None, cwd, flags, cwd);
        };
        let path = cwd.join(path);
        let text = std::fs::read_to_string(&path).map_err(|e| ConfigError {
            file: path.clone(),
            position: None,
            message: format!("cannot read config: {e}"),
        })?;
        let base = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        Config::parse_with(&text, Some(&path), &base, flags, cwd)
    }

    /// Parses config `text` as if read from `file`, resolving relative roots against `base`.
    ///
    /// # Errors
    /// As [`Config::load`], without the read.
    pub fn parse(text: &str, file: &Path, base: &Path) -> Result<Config, ConfigError> {
        Config::parse_with(text, Some(file), base, &Flags::default(), base)
    }

    fn parse_with(
        text: &str,
        file: Option<&Path>,
        base: &Path,
        flags: &Flags,
        cwd: &Path,
    ) -> Result<Config, ConfigError> {
        let command_line = Path::new(COMMAND_LINE);
        let error = |position, message: String| ConfigError {
            file: file.unwrap_or(command_line).to_path_buf(),
            position,
            message,
        };
        let mut parsed: File = toml::from_str(text).map_err(|e| {
            let position = e.span().map(|span| line_col(text, span.start));
            error(position, e.message().trim().to_owned())
        })?;
        // The flags' values go through the same checks as the file's; an error names the flag.
        let flagged = flags.overlay(&mut parsed);
        let flag_of = |key: &str| flagged.iter().find(|(k, _)| *k == key).map(|(_, f)| *f);
        let base = absolute(base)
            .map_err(|e| error(None, format!("cannot resolve {}: {e}", base.display())))?;
        let mut config = Config::defaults(base.clone());
        config.source = file.map(Path::to_path_buf);
        // Where a value read from the file is, as the error's position.
        let at = |span: &std::ops::Range<usize>| Some(line_col(text, span.start));
        // An error about the value of `key`: at its place in the file, or against the flag that
        // set it.
        let refuse =
            |key: &str, span: &std::ops::Range<usize>, value: &dyn fmt::Display, problem: &str| {
                match flag_of(key) {
                    Some(flag) => ConfigError {
                        file: command_line.to_path_buf(),
                        position: None,
                        message: format!("{flag} {value}: {problem}"),
                    },
                    None => error(at(span), format!("{key} = {value}: {problem}")),
                }
            };
        if !flags.watch.is_empty() {
            config.roots = flags
                .watch
                .iter()
                .map(|w| normalize(&cwd.join(w)))
                .collect();
        } else if let Some(roots) = parsed.watch.roots {
            if roots.get_ref().is_empty() {
                return Err(error(
                    at(&roots.span()),
                    "watch.roots is empty: name at least one directory".into(),
                ));
            }
            config.roots = roots
                .into_inner()
                .into_iter()
                .map(|r| normalize(&base.join(r)))
                .collect();
        }
        // The watcher compiles them as the triggers' globs are: a bad one refused here never makes
        // the server fail at start.
        for glob in &parsed.watch.ignore {
            if let Err(e) = check_glob(glob.get_ref()) {
                return Err(error(
                    at(&glob.span()),
                    format!("bad ignore glob {:?}: {e}", glob.get_ref()),
                ));
            }
        }
        config.ignore = parsed
            .watch
            .ignore
            .into_iter()
            .map(Spanned::into_inner)
            .collect();
        if let Some(name) = parsed.watch.ignore_file {
            if name.get_ref().is_empty() || name.get_ref().contains('/') {
                return Err(error(
                    at(&name.span()),
                    format!("ignore_file {:?} must be a plain file name", name.get_ref()),
                ));
            }
            config.ignore_file = name.into_inner();
        }
        // Every number has a range checked here: a value that passes `ward check` must not make
        // the server fail at start (a queue of 10^11 slots aborted on allocation, five times).
        let within = |value: &At<u64>, key: &str, range: std::ops::RangeInclusive<u64>| {
            let n = *value.get_ref();
            if range.contains(&n) {
                Ok(n)
            } else {
                let problem = format!("must be between {} and {}", range.start(), range.end());
                Err(refuse(key, &value.span(), &n, &problem))
            }
        };
        if let Some(ms) = &parsed.watch.debounce_ms {
            config.debounce = Duration::from_millis(within(ms, "debounce_ms", 0..=60_000)?);
        }
        if let Some(backend) = &parsed.watch.backend {
            config.backend = match backend.get_ref().as_str() {
                "auto" => WatchBackend::Auto,
                "fanotify" => WatchBackend::Fanotify,
                "inotify" => WatchBackend::Inotify,
                "poll" => WatchBackend::Poll,
                other => {
                    return Err(error(
                        at(&backend.span()),
                        format!(
                            "watch.backend = {other:?}: must be \"auto\", \"fanotify\", \"inotify\" or \"poll\""
                        ),
                    ));
                }
            };
        }
        // Unless it is given, the longest wait follows a debounce longer than its default.
        config.max_wait = match &parsed.watch.max_wait_ms {
            Some(ms) => Duration::from_millis(within(ms, "max_wait_ms", 0..=3_600_000)?),
            None => config.max_wait.max(config.debounce),
        };
        if config.max_wait < config.debounce {
            let debounce = match flag_of("debounce_ms") {
                Some(flag) => format!("{flag} {}", config.debounce.as_millis()),
                None => "watch.debounce_ms".into(),
            };
            let place = parsed
                .watch
                .max_wait_ms
                .as_ref()
                .and_then(|m| at(&m.span()));
            return Err(error(
                place,
                format!("watch.max_wait_ms is shorter than {debounce}"),
            ));
        }
        let jobs = parsed.jobs;
        if let Some(n) = &jobs.workers {
            config.workers = within(n, "workers", 1..=256)? as usize;
        }
        if let Some(n) = &jobs.queue_capacity {
            config.queue_capacity = within(n, "queue_capacity", 1..=1_000_000)? as usize;
        }
        let seconds = |value: &Option<At<f64>>, key: &str, max: f64, default: Duration| {
            let Some(value) = value else {
                return Ok(default);
            };
            match *value.get_ref() {
                s if s.is_finite() && s > 0.0 && s <= max => Ok(Duration::from_secs_f64(s)),
                s => Err(error(
                    at(&value.span()),
                    format!("{key} = {s}: must be a number of seconds above 0 and at most {max}"),
                )),
            }
        };
        const DAY: f64 = 86_400.0;
        config.job_timeout = seconds(
            &jobs.timeout_s,
            "timeout_s",
            process::MAX_TIMEOUT_S,
            config.job_timeout,
        )?;
        // A trigger's retry settings override `[jobs]`'s one by one.
        let retry = |retries: &Option<At<u64>>,
                     backoff_s: &Option<At<f64>>,
                     backoff_max_s: &Option<At<f64>>,
                     default: Retry| {
            let retry = Retry {
                retries: match retries {
                    Some(n) => within(n, "retries", 0..=100)? as u32,
                    None => default.retries,
                },
                backoff: seconds(backoff_s, "backoff_s", 3600.0, default.backoff)?,
                backoff_max: seconds(backoff_max_s, "backoff_max_s", DAY, default.backoff_max)?,
            };
            if retry.backoff_max < retry.backoff {
                let place = backoff_max_s.as_ref().or(backoff_s.as_ref());
                return Err(error(
                    place.and_then(|v| at(&v.span())),
                    format!(
                        "backoff_max_s ({} s) is shorter than backoff_s ({} s)",
                        retry.backoff_max.as_secs_f64(),
                        retry.backoff.as_secs_f64()
                    ),
                ));
            }
            Ok(retry)
        };
        config.retry = retry(
            &jobs.retries,
            &jobs.backoff_s,
            &jobs.backoff_max_s,
            config.retry,
        )?;
        config.stop_grace = seconds(
            &jobs.stop_grace_s,
            "stop_grace_s",
            process::MAX_STOP_GRACE_S,
            config.stop_grace,
        )?;
        config.drain_timeout = seconds(
            &jobs.drain_timeout_s,
            "drain_timeout_s",
            DAY,
            config.drain_timeout,
        )?;
        if let Some(mb) = &jobs.min_available_mb {
            config.min_available_mb = Some(within(mb, "min_available_mb", 1..=1 << 30)?);
        }
        if let Some(mask) = &jobs.umask {
            config.umask = Some(octal_mask(mask.get_ref()).ok_or_else(|| {
                error(
                    at(&mask.span()),
                    format!(
                        "umask = {:?}: must be three or four octal digits, like \"022\"",
                        mask.get_ref()
                    ),
                )
            })?);
        }
        config.heartbeat_log = seconds(
            &parsed.log.heartbeat_s,
            "heartbeat_s",
            DAY,
            config.heartbeat_log,
        )?;
        if let Some(mb) = &parsed.log.max_size_mb {
            config.log_max_bytes = within(mb, "max_size_mb", 1..=1_000_000)? * 1024 * 1024;
        }
        if let Some(n) = &parsed.log.keep_reports {
            config.keep_reports = within(n, "keep_reports", 1..=100_000)? as usize;
        }
        if let Some(listen) = &parsed.metrics.listen {
            config.metrics_listen = Some(listen.get_ref().parse().map_err(|_| {
                error(
                    at(&listen.span()),
                    format!(
                        "metrics.listen = {:?}: must be an IP address and port, such as \"127.0.0.1:9464\"",
                        listen.get_ref()
                    ),
                )
            })?);
        }
        for glob in &flags.ignore {
            if let Err(e) = check_glob(glob) {
                return Err(ConfigError {
                    file: command_line.to_path_buf(),
                    position: None,
                    message: format!("--ignore {glob:?}: bad glob: {e}"),
                });
            }
        }
        config.ignore.extend(flags.ignore.iter().cloned());
        config.triggers = Vec::with_capacity(parsed.triggers.len() + 1);
        let process_defaults = config.default_process();
        let privileges = Privileges::of_this_process();
        let refuse_at = |span: &std::ops::Range<usize>, message: String| error(at(span), message);
        if !flags.command.is_empty() {
            config.triggers.push(Trigger {
                name: "command".into(),
                globs: Vec::new(),
                handler: Handler::Exec {
                    argv: flags.command.clone(),
                },
                events: Events::ALL,
                dump_signal: default_dump_signal(),
                retry: config.retry,
                concurrency: None,
                process: process_defaults.clone(),
                batch: None,
            });
        }
        for (i, section) in parsed.triggers.into_iter().enumerate() {
            let table = section.span();
            let t = section.into_inner();
            let name = t
                .name
                .as_ref()
                .map_or_else(|| format!("trigger{}", i + 1), |n| n.get_ref().clone());
            // A name is how logs, reports and the ledger tell triggers apart.
            if let Some(earlier) = config.triggers.iter().find(|e| e.name == name) {
                let place = t.name.as_ref().map_or(table.clone(), |n| n.span());
                let what = if earlier.name == "command" && !flags.command.is_empty() {
                    "the trigger of the command given after `--`"
                } else {
                    "an earlier trigger"
                };
                return Err(error(
                    at(&place),
                    format!("trigger name {name:?} is taken by {what}: names must differ"),
                ));
            }
            let command = |argv: &At<Vec<String>>| {
                let v = argv.get_ref();
                if v.is_empty() || v[0].is_empty() {
                    Err(error(
                        at(&argv.span()),
                        format!("trigger {name:?}: the command is empty"),
                    ))
                } else {
                    Ok(v.clone())
                }
            };
            let handlers = [
                t.exec.as_ref().map(|a| a.span()),
                t.worker.as_ref().map(|a| a.span()),
                t.publish.as_ref().map(|a| a.span()),
            ];
            if let Some(second) = handlers.iter().flatten().nth(1) {
                return Err(error(
                    at(second),
                    format!(
                        "trigger {name:?} has more than one of exec, worker and publish: pick one"
                    ),
                ));
            }
            let handler = match (&t.exec, &t.worker) {
                (None, None) if t.publish.is_some() => {
                    let section = t.publish.as_ref().expect("checked just above");
                    Handler::Publish(
                        publish_of(section, &name)
                            .map_err(|(span, message)| error(at(&span), message))?,
                    )
                }
                (Some(argv), None) => Handler::Exec {
                    argv: command(argv)?,
                },
                (None, Some(argv)) => Handler::Worker {
                    argv: command(argv)?,
                    recycle_after: t.recycle_after.as_ref().map_or(0, |n| *n.get_ref()),
                    max_rss_bytes: match &t.max_rss_mb {
                        Some(mb) => within(mb, "max_rss_mb", 0..=1 << 30)? * 1024 * 1024,
                        None => 0,
                    },
                },
                (Some(_), Some(worker)) => {
                    return Err(error(
                        at(&worker.span()),
                        format!(
                            "trigger {name:?} has more than one of exec, worker and publish: pick one"
                        ),
                    ));
                }
                (None, None) => {
                    return Err(error(
                        at(&table),
                        format!("trigger {name:?} has none of exec, worker and publish"),
                    ));
                }
            };
            for glob in &t.glob {
                if let Err(e) = check_glob(glob.get_ref()) {
                    return Err(error(
                        at(&glob.span()),
                        format!("trigger {name:?}: bad glob {:?}: {e}", glob.get_ref()),
                    ));
                }
            }
            let events = match &t.events {
                None => Events::ALL,
                Some(list) => {
                    events_of(list, &name).map_err(|(span, message)| error(at(&span), message))?
                }
            };
            let dump_signal = match &t.dump_signal {
                None => default_dump_signal(),
                Some(value) => dump_signal(value.get_ref()).map_err(|problem| {
                    error(
                        at(&value.span()),
                        format!(
                            "trigger {name:?}: dump_signal = {:?}: {problem}",
                            value.get_ref()
                        ),
                    )
                })?,
            };
            let retry = retry(&t.retries, &t.backoff_s, &t.backoff_max_s, config.retry)?;
            let concurrency = match &t.concurrency {
                Some(n) => Some(within(n, "concurrency", 1..=256)? as usize),
                None => None,
            };
            let process = ProcessSettings::resolve(
                t.process_keys(),
                &format!("trigger {name:?}"),
                &process_defaults,
                &base,
                privileges,
                &refuse_at,
            )?;
            let batch = batch_of(&t, &name).map_err(|(span, message)| error(at(&span), message))?;
            config.triggers.push(Trigger {
                name,
                globs: t.glob.into_iter().map(Spanned::into_inner).collect(),
                handler,
                events,
                dump_signal,
                retry,
                concurrency,
                process,
                batch,
            });
        }
        config.services = service::resolve_all(
            parsed.services,
            &process_defaults,
            &base,
            privileges,
            &refuse_at,
        )?;
        config.on_death = on_death::resolve_all(
            parsed.on_death,
            &process_defaults,
            &base,
            privileges,
            &refuse_at,
        )?;
        // A service is something to run too: a config may only keep programs running.
        if config.triggers.is_empty() && config.services.is_empty() {
            return Err(error(
                None,
                "nothing to run: give a command after `--`, or [[trigger]] or [[service]] sections in a config file"
                    .into(),
            ));
        }
        Ok(config)
    }

    /// The process settings of a trigger that sets none: `[jobs]`'s timeout and stop grace, the
    /// config file's directory, and ward's own environment, priority and user.
    pub fn default_process(&self) -> ProcessSettings {
        ProcessSettings::defaults(self.base.clone(), self.job_timeout, self.stop_grace)
    }

    /// This configuration with the process settings of a launch recorded before they existed
    /// filled in: such a trigger's settings read as [`ProcessSettings::default`], whose empty
    /// `cwd` no resolved configuration has, and become [`default_process`](Self::default_process),
    /// which is what its jobs got then.
    pub fn with_unrecorded_settings(mut self) -> Config {
        let defaults = self.default_process();
        for trigger in &mut self.triggers {
            if trigger.process.cwd.as_os_str().is_empty() {
                trigger.process = defaults.clone();
            }
        }
        self
    }

    /// The configuration used when no file is given: watch `base`, no triggers.
    pub fn defaults(base: PathBuf) -> Config {
        Config {
            source: None,
            roots: vec![normalize(&base)],
            base,
            ignore: Vec::new(),
            ignore_file: ".wardignore".into(),
            backend: WatchBackend::Auto,
            debounce: Duration::from_millis(50),
            max_wait: Duration::from_secs(1),
            workers: 2,
            queue_capacity: 1024,
            retry: Retry::default(),
            job_timeout: Duration::from_secs(300),
            stop_grace: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(10),
            umask: None,
            min_available_mb: None,
            heartbeat_log: Duration::from_secs(60),
            log_max_bytes: 10 * 1024 * 1024,
            keep_reports: 50,
            metrics_listen: None,
            triggers: Vec::new(),
            services: Vec::new(),
            on_death: Vec::new(),
        }
    }
}

/// The signal `text` names: its name with or without its `SIG` (`"SIGABRT"`, `"QUIT"`), in any
/// case.
fn signal_number(text: &str) -> Option<i32> {
    let upper = text.to_ascii_uppercase();
    let wanted = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    (1..=libc::SIGRTMAX()).find(|&n| ward_sys::signal::name(n) == Some(wanted.as_str()))
}

/// A trigger's `dump_signal`: `"none"`, or a signal's name with or without its `SIG`
/// (`"SIGABRT"`, `"QUIT"`), in any case.
fn dump_signal(text: &str) -> Result<Option<i32>, String> {
    if text.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    let number = signal_number(text)
        .ok_or("not a signal name (such as \"SIGABRT\" or \"SIGQUIT\"), nor \"none\"")?;
    // No dump can follow these: the process cannot catch them to print anything.
    if number == libc::SIGKILL || number == libc::SIGSTOP {
        let name = ward_sys::signal::name(number).unwrap_or("it");
        return Err(format!(
            "{name} cannot be caught, so nothing could print a stack on it: use another signal, or \"none\""
        ));
    }
    Ok(Some(number))
}

/// Checks a glob the way triggers will compile it, so a bad one is refused at load time.
/// A publish trigger's settings, or the place and text of what is wrong with them.
fn publish_of(
    section: &At<PublishSection>,
    trigger: &str,
) -> Result<Publish, (std::ops::Range<usize>, String)> {
    let p = section.get_ref();
    let url = p.url.get_ref();
    if !(url.starts_with("nats://") || url.starts_with("tls://")) || url.len() <= "nats://".len() {
        return Err((
            p.url.span(),
            format!(
                "trigger {trigger:?}: publish url {url:?} must be a nats:// (or tls://) address"
            ),
        ));
    }
    let stream = p.stream.as_ref().map_or(DEFAULT_STREAM, |s| s.get_ref());
    // JetStream's own rule for a stream name.
    if stream.is_empty() || stream.contains(|c: char| c.is_whitespace() || ".*>/\\".contains(c)) {
        let span = p.stream.as_ref().map_or(section.span(), |s| s.span());
        return Err((
            span,
            format!(
                "trigger {trigger:?}: publish stream {stream:?} must be a name without spaces, '.', '*', '>' or slashes"
            ),
        ));
    }
    let subject = p
        .subject
        .as_ref()
        .map_or(DEFAULT_SUBJECT, |s| s.get_ref())
        .replace("{trigger}", trigger);
    if subject.is_empty()
        || subject.contains(char::is_whitespace)
        || subject
            .split('.')
            .any(|token| token.is_empty() || token == "*" || token == ">")
    {
        let span = p.subject.as_ref().map_or(section.span(), |s| s.span());
        return Err((
            span,
            format!(
                "trigger {trigger:?}: publish subject {subject:?} must be dot-separated tokens without spaces or wildcards"
            ),
        ));
    }
    let content_max_bytes = match &p.content_max_kb {
        None => 0,
        Some(kb) if *kb.get_ref() <= 64 * 1024 => kb.get_ref() * 1024,
        Some(kb) => {
            return Err((
                kb.span(),
                format!(
                    "trigger {trigger:?}: content_max_kb = {}: must be between 0 and 65536 (the server's message limit is smaller still: 1 MiB by default)",
                    kb.get_ref()
                ),
            ));
        }
    };
    let max_unacked = match &p.max_unacked {
        None => DEFAULT_MAX_UNACKED,
        Some(n) if (1..=MAX_UNACKED).contains(n.get_ref()) => *n.get_ref(),
        Some(n) => {
            return Err((
                n.span(),
                format!(
                    "trigger {trigger:?}: max_unacked = {}: must be between 1 and {MAX_UNACKED}",
                    n.get_ref()
                ),
            ));
        }
    };
    if cfg!(not(feature = "nats")) {
        return Err((
            section.span(),
            format!(
                "trigger {trigger:?}: this ward was built without its `nats` feature, so it cannot publish"
            ),
        ));
    }
    Ok(Publish {
        url: url.clone(),
        stream: stream.to_owned(),
        subject,
        content_max_bytes,
        max_unacked,
    })
}

fn check_glob(glob: &str) -> Result<(), String> {
    globset::Glob::new(glob)
        .map(drop)
        .map_err(|e| e.kind().to_string())
}

/// 1-based line and column of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, col)
}

/// `path` without `.` and `..` components and with symlinks resolved when it exists, so that
/// the watcher's paths and the roots compare equal.
pub(crate) fn normalize(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| {
        let mut out = PathBuf::new();
        for part in path.components() {
            match part {
                std::path::Component::CurDir => {}
                std::path::Component::ParentDir => {
                    out.pop();
                }
                other => out.push(other),
            }
        }
        out
    })
}

fn absolute(path: &Path) -> std::io::Result<PathBuf> {
    if path.is_absolute() {
        Ok(path.to_path_buf())
    } else {
        Ok(std::env::current_dir()?.join(path))
    }
}

/// A trigger's `events` list as a set, or the span and words of what is wrong with it.
fn events_of(
    list: &At<Vec<At<String>>>,
    trigger: &str,
) -> Result<Events, (std::ops::Range<usize>, String)> {
    let mut events = Vec::with_capacity(list.get_ref().len());
    for name in list.get_ref() {
        let event = match name.get_ref().as_str() {
            "created" => Event::Created,
            "modified" => Event::Modified,
            "removed" => Event::Removed,
            "renamed" => Event::Renamed,
            other => {
                return Err((
                    name.span(),
                    format!(
                        "trigger {trigger:?}: unknown event {other:?}: events are \"created\", \
                         \"modified\", \"removed\" and \"renamed\""
                    ),
                ));
            }
        };
        events.push(event);
    }
    if events.is_empty() {
        return Err((
            list.span(),
            format!("trigger {trigger:?}: events is empty: the trigger would never run"),
        ));
    }
    Ok(Events::of(&events))
}

/// A trigger's batch settings (`None` unless `batch = true`), or the span and words of what is
/// wrong with them: batch on a worker trigger, an unknown `on_busy` or `signal`, or a batch
/// setting without `batch = true`.
fn batch_of(
    t: &TriggerSection,
    trigger: &str,
) -> Result<Option<BatchSettings>, (std::ops::Range<usize>, String)> {
    let on = t.batch.as_ref().filter(|b| *b.get_ref());
    let Some(on) = on else {
        let stray = [
            ("on_busy", t.on_busy.as_ref().map(Spanned::span)),
            ("signal", t.signal.as_ref().map(Spanned::span)),
            ("paths_nul", t.paths_nul.as_ref().map(Spanned::span)),
        ];
        if let Some((key, Some(span))) = stray.into_iter().find(|(_, s)| s.is_some()) {
            return Err((
                span,
                format!(
                    "trigger {trigger:?}: {key} is a setting of batch triggers: add batch = true"
                ),
            ));
        }
        return Ok(None);
    };
    if t.worker.is_some() || t.publish.is_some() {
        return Err((
            on.span(),
            format!(
                "trigger {trigger:?}: batch = true needs an exec trigger: a worker or a publish takes one path at a time"
            ),
        ));
    }
    let mut settings = BatchSettings::default();
    if let Some(mode) = &t.on_busy {
        settings.on_busy = OnBusy::parse(mode.get_ref()).map_err(|problem| {
            (
                mode.span(),
                format!(
                    "trigger {trigger:?}: on_busy = {:?}: {problem}",
                    mode.get_ref()
                ),
            )
        })?;
    }
    if let Some(signal) = &t.signal {
        settings.signal = crate::batch::signal_named(signal.get_ref()).map_err(|problem| {
            (
                signal.span(),
                format!(
                    "trigger {trigger:?}: signal = {:?}: {problem}",
                    signal.get_ref()
                ),
            )
        })?;
    }
    settings.paths_nul = t.paths_nul.as_ref().is_some_and(|n| *n.get_ref());
    Ok(Some(settings))
}

/// A umask written as octal digits ("022", "0027"); `None` if it is not one.
fn octal_mask(text: &str) -> Option<u32> {
    let digits = (3..=4).contains(&text.len()) && text.bytes().all(|b| (b'0'..=b'7').contains(&b));
    digits
        .then(|| u32::from_str_radix(text, 8).ok())
        .flatten()
        .filter(|&m| m <= 0o777)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("ward.toml"), Path::new("/base"))
    }

    #[test]
    fn a_full_config_is_read_with_defaults_filled_in() {
        let config = parse(
            r#"
[watch]
roots = ["src", "/abs"]
ignore = ["*.tmp"]
debounce_ms = 20

[jobs]
workers = 4

[[trigger]]
name = "count"
glob = ["**/*.txt"]
exec = ["wc", "-l", "{path}"]

[[trigger]]
worker = ["python3", "worker.py"]
recycle_after = 100
"#,
        )
        .unwrap();
        assert_eq!(
            config.roots,
            [PathBuf::from("/base/src"), PathBuf::from("/abs")]
        );
        assert_eq!(config.debounce, Duration::from_millis(20));
        assert_eq!(config.max_wait, Duration::from_secs(1));
        assert_eq!(config.workers, 4);
        assert_eq!(config.triggers.len(), 2);
        assert_eq!(config.triggers[1].name, "trigger2");
        assert!(matches!(
            config.triggers[1].handler,
            Handler::Worker {
                recycle_after: 100,
                ..
            }
        ));
    }

    #[test]
    fn syntax_and_type_errors_name_line_and_column() {
        let err = parse("[watch]\ndebounce_ms = \"fast\"\n").unwrap_err();
        assert_eq!(err.position, Some((2, 15)), "{err}");
        assert!(err.to_string().starts_with("ward.toml:2:15: "), "{err}");
        let err = parse("[watch]\nroots = [\n").unwrap_err();
        assert!(err.position.is_some(), "{err}");
    }

    #[cfg(feature = "nats")]
    #[test]
    fn a_publish_trigger_names_its_subject_after_itself_and_refuses_a_second_handler() {
        let config = parse(
            "[[trigger]]\nname = \"index\"\npublish = { url = \"nats://127.0.0.1:4222\", content_max_kb = 4 }\n",
        )
        .unwrap();
        assert_eq!(
            config.triggers[0].handler,
            Handler::Publish(Publish {
                url: "nats://127.0.0.1:4222".into(),
                stream: "WARD".into(),
                subject: "ward.jobs.index".into(),
                content_max_bytes: 4096,
                max_unacked: DEFAULT_MAX_UNACKED,
            })
        );
        let err = parse(
            "[[trigger]]\nname = \"index\"\npublish = { url = \"nats://h:1\", max_unacked = 0 }\n",
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("max_unacked = 0: must be between 1 and 10000"),
            "{err}"
        );
        let err = parse("[[trigger]]\nexec = [\"true\"]\npublish = { url = \"nats://h:1\" }\n")
            .unwrap_err();
        assert_eq!(err.position, Some((3, 11)), "{err}");
        assert!(err.message.contains("pick one"), "{err}");
        let err = parse("[[trigger]]\npublish = { url = \"http://h:1\" }\n").unwrap_err();
        assert_eq!(err.position, Some((2, 19)), "{err}");
        let err = parse("[[trigger]]\npublish = { url = \"nats://h:1\", subject = \"a.*\" }\n")
            .unwrap_err();
        assert!(err.message.contains("wildcards"), "{err}");
        let err =
            parse("[[trigger]]\npublish = { url = \"nats://h:1\" }\nbatch = true\n").unwrap_err();
        assert!(err.message.contains("needs an exec trigger"), "{err}");
    }

    #[cfg(not(feature = "nats"))]
    #[test]
    fn a_publish_trigger_is_refused_by_a_build_without_nats() {
        let err = parse("[[trigger]]\npublish = { url = \"nats://h:1\" }\n").unwrap_err();
        assert!(err.message.contains("without its `nats` feature"), "{err}");
    }

    #[test]
    fn unknown_keys_are_refused_not_ignored() {
        let err = parse("[jobs]\nworkerz = 3\n").unwrap_err();
        assert_eq!(err.position.map(|p| p.0), Some(2), "{err}");
        assert!(err.message.contains("workerz"), "{err}");
    }

    #[test]
    fn invalid_values_are_refused_with_their_place() {
        let err = parse("[jobs]\nworkers = 0\n").unwrap_err();
        assert_eq!(err.position, Some((2, 11)), "{err}");
        let err = parse("[[trigger]]\nexec = [\"a\"]\nworker = [\"b\"]\n").unwrap_err();
        assert!(
            err.message
                .contains("more than one of exec, worker and publish"),
            "{err}"
        );
        let err = parse("[[trigger]]\nglob = [\"a/[b\"]\nexec = [\"a\"]\n").unwrap_err();
        assert_eq!(err.position.map(|p| p.0), Some(2), "{err}");
        let err = parse("[watch]\ndebounce_ms = 500\nmax_wait_ms = 100\n").unwrap_err();
        assert_eq!(err.position.map(|p| p.0), Some(3), "{err}");
        let err = parse("[watch]\nbackend = \"kqueue\"\n").unwrap_err();
        assert_eq!(err.position, Some((2, 11)), "{err}");
        assert!(err.message.contains("\"auto\", \"fanotify\""), "{err}");
    }

    #[test]
    fn the_watch_backend_is_auto_unless_named() {
        let trigger = "[[trigger]]\nexec = [\"true\"]\n";
        assert_eq!(parse(trigger).unwrap().backend, WatchBackend::Auto);
        for (name, backend) in [
            ("auto", WatchBackend::Auto),
            ("fanotify", WatchBackend::Fanotify),
            ("inotify", WatchBackend::Inotify),
            ("poll", WatchBackend::Poll),
        ] {
            let config = parse(&format!("[watch]\nbackend = \"{name}\"\n{trigger}")).unwrap();
            assert_eq!(config.backend, backend, "{name}");
        }
    }

    /// Regression: `queue_capacity = 100000000000` passed `ward check`, then the server aborted
    /// on allocation at every start until the keeper gave up.
    #[test]
    fn every_number_out_of_its_range_is_refused_at_load() {
        for (text, key) in [
            ("[jobs]\nqueue_capacity = 100000000000\n", "queue_capacity"),
            ("[jobs]\nretries = 1000000\n", "retries"),
            ("[jobs]\ntimeout_s = 1e12\n", "timeout_s"),
            ("[jobs]\nstop_grace_s = 86400\n", "stop_grace_s"),
            ("[watch]\ndebounce_ms = 86400000\n", "debounce_ms"),
            ("[log]\nmax_size_mb = 18446744073709551615\n", "max_size_mb"),
            ("[log]\nmax_size_mb = 0\n", "max_size_mb"),
            ("[log]\nkeep_reports = 0\n", "keep_reports"),
            (
                "[[trigger]]\nworker = [\"w\"]\nmax_rss_mb = 18446744073709551615\n",
                "max_rss_mb",
            ),
        ] {
            let err = parse(text).unwrap_err();
            assert!(
                err.message.starts_with(&format!("{key} = ")) && err.message.contains("must be"),
                "{text}: {err}"
            );
            assert!(err.position.is_some(), "{text}: {err}");
        }
        let fine =
            parse("[jobs]\nqueue_capacity = 1000000\nretries = 100\n[[trigger]]\nexec = [\"a\"]\n")
                .unwrap();
        assert_eq!(fine.queue_capacity, 1_000_000);
        for (mask, want) in [
            ("022", Some(0o22)),
            ("0027", Some(0o27)),
            ("777", Some(0o777)),
        ] {
            assert_eq!(octal_mask(mask), want, "{mask}");
        }
        for bad in ["22", "0o22", "1777", "088", "", "abc"] {
            assert_eq!(octal_mask(bad), None, "{bad}");
        }
    }

    /// Regression: positions came from searching the text for the key, so `timeout_s = 0` was
    /// reported inside `drain_timeout_s` a line above, "more than one of exec, worker and publish" at `workers = 2`,
    /// and every trigger error without a key at the first `[[trigger]]`. Each kind of error now
    /// points at the value at fault, from the parser's spans.
    #[test]
    fn every_validation_error_points_at_the_value_at_fault() {
        let t = |name: &str| format!("[[trigger]]\nname = \"{name}\"\nexec = [\"a\"]\n");
        let cases: Vec<(String, (usize, usize), &str)> =
            vec![
            (
                format!("[jobs]\ndrain_timeout_s = 5\ntimeout_s = 0\n{}", t("a")),
                (3, 13),
                "timeout_s = 0",
            ),
            (
                format!(
                    "[jobs]\nworkers = 2\n{}{}[[trigger]]\nexec = [\"x\"]\nworker = [\"w\"]\n",
                    t("a"),
                    t("b")
                ),
                (11, 10),
                "has more than one of exec, worker and publish",
            ),
            (
                format!(
                    "{}{}[[trigger]]\nname = \"c\"\nglob = [\"*\"]\n",
                    t("a"),
                    t("b")
                ),
                (7, 1),
                "none of exec, worker and publish",
            ),
            (
                format!("{}{}", t("a"), t("a")),
                (5, 8),
                "trigger name \"a\" is taken",
            ),
            (
                format!(
                    "{}[[trigger]]\nglob = [\"ok\", \"a/[b\"]\nexec = [\"a\"]\n",
                    t("a")
                ),
                (5, 15),
                "bad glob",
            ),
            (
                format!("{}[[trigger]]\nexec = []\n", t("a")),
                (5, 8),
                "the command is empty",
            ),
            (
                format!("[watch]\nroots = []\n{}", t("a")),
                (2, 9),
                "watch.roots is empty",
            ),
            (
                format!("[watch]\nignore = [\"ok\", \"a/[b\"]\n{}", t("a")),
                (2, 17),
                "bad ignore glob \"a/[b\"",
            ),
            (
                format!("[watch]\nignore_file = \"a/b\"\n{}", t("a")),
                (2, 15),
                "must be a plain file name",
            ),
            (
                format!("[watch]\ndebounce_ms = 500\nmax_wait_ms = 100\n{}", t("a")),
                (3, 15),
                "shorter than watch.debounce_ms",
            ),
            (
                format!("[log]\nheartbeat_s = 0\nkeep_reports = 0\n{}", t("a")),
                (2, 15),
                "heartbeat_s = 0",
            ),
            (
                "[[trigger]]\nname = \"w\"\nworker = [\"w\"]\nmax_rss_mb = 18446744073709551615\n"
                    .to_owned(),
                (4, 14),
                "max_rss_mb = ",
            ),
            (
                format!("[jobs]\nworkers = 2\numask = \"0o22\"\n{}", t("a")),
                (3, 9),
                "must be three or four octal digits",
            ),
            (
                format!("{}events = [\"created\", \"deleted\"]\n", t("a")),
                (4, 22),
                "unknown event \"deleted\"",
            ),
            (
                format!("{}events = []\n", t("a")),
                (4, 10),
                "events is empty",
            ),
            (
                format!("{}backoff_s = 2\nbackoff_max_s = 1\n", t("a")),
                (5, 17),
                "backoff_max_s (1 s) is shorter than backoff_s (2 s)",
            ),
            (
                format!("[jobs]\nbackoff_s = 60\n{}", t("a")),
                (2, 13),
                "backoff_max_s (30 s) is shorter than backoff_s (60 s)",
            ),
            (format!("{}concurrency = 0\n", t("a")), (4, 15), "concurrency = 0"),
            (
                format!("{}env = {{ OK = \"1\", \"A=B\" = \"x\" }}\n", t("a")),
                (4, 19),
                "trigger \"a\": env name \"A=B\" contains '='",
            ),
            (
                format!("{}env = {{ \"\" = \"x\" }}\n", t("a")),
                (4, 9),
                "env name \"\" is empty",
            ),
            (
                format!("{}env = {{ WARD_PATH = \"x\" }}\n", t("a")),
                (4, 9),
                "env name \"WARD_PATH\" is set by ward for each job",
            ),
            (
                format!("{}env = {{ A = \"1\\u0000\" }}\n", t("a")),
                (4, 13),
                "env A = \"1\\0\": contains a NUL byte",
            ),
            (
                format!("{}env = {{ A = \"1\" }}\nenv_remove = [\"B\", \"A\"]\n", t("a")),
                (5, 20),
                "env_remove name \"A\" is also set in env",
            ),
            (
                format!("{}env_remove = [\"B=\"]\n", t("a")),
                (4, 15),
                "env_remove name \"B=\" contains '='",
            ),
            (
                format!("{}cwd = \"no-such-dir\"\n", t("a")),
                (4, 7),
                "cwd = \"no-such-dir\": /base/no-such-dir is not a directory",
            ),
            (
                format!("{}timeout_s = 0\n", t("a")),
                (4, 13),
                "trigger \"a\": timeout_s = 0: must be a number of seconds above 0",
            ),
            (
                format!("{}stop_signal = \"SIGFOO\"\n", t("a")),
                (4, 15),
                "stop_signal = \"SIGFOO\": not a signal name",
            ),
            (
                format!("{}stop_signal = \"stop\"\n", t("a")),
                (4, 15),
                "SIGSTOP suspends the process",
            ),
            (
                format!("{}stop_grace_s = 7200\n", t("a")),
                (4, 16),
                "stop_grace_s = 7200: must be a number of seconds above 0 and at most 3600",
            ),
            (
                format!("{}nice = 25\n", t("a")),
                (4, 8),
                "nice = 25: must be between -20 and 19",
            ),
            (
                format!("{}memory_max_mb = 0\n", t("a")),
                (4, 17),
                "memory_max_mb = 0: must be between 1 and",
            ),
            (
                // Refused as unknown when ward runs as root, as not allowed otherwise.
                format!("{}user = \"no-such-user-of-ward\"\n", t("a")),
                (4, 8),
                "user = \"no-such-user-of-ward\": ",
            ),
            (
                format!("{}group = \"no-such-group-of-ward\"\n", t("a")),
                (4, 9),
                "group = \"no-such-group-of-ward\": ",
            ),
            // Services: name, command, policy and its intensity, at the value at fault.
            (
                "[[service]]\nname = \"db\"\ncommand = [\"a\"]\n[[service]]\nname = \"db\"\ncommand = [\"b\"]\n".into(),
                (5, 8),
                "service name \"db\" is taken",
            ),
            (
                "[[service]]\nname = \"db\"\ncommand = []\n".into(),
                (3, 11),
                "service \"db\": the command is empty",
            ),
            (
                "[[service]]\nname = \"db\"\ncommand = [\"a\"]\npolicy = \"forever\"\n".into(),
                (4, 10),
                "policy = \"forever\": must be",
            ),
            (
                "[[service]]\nname = \"db\"\ncommand = [\"a\"]\nrestart_max = 0\n".into(),
                (4, 15),
                "restart_max = 0",
            ),
            (
                "[[service]]\nname = \"db\"\ncommand = [\"a\"]\nnice = 40\n".into(),
                (4, 8),
                "service \"db\": nice = 40",
            ),
            (
                "[[service]]\nname = \"a\"\ncommand = [\"a\"]\ndepends_on = [\"b\"]\n\
                 [[service]]\nname = \"b\"\ncommand = [\"b\"]\ndepends_on = [\"c\"]\n\
                 [[service]]\nname = \"c\"\ncommand = [\"c\"]\ndepends_on = [\"a\"]\n"
                    .into(),
                (12, 15),
                "service \"c\": depends_on makes a cycle: c → a → b → c",
            ),
            (
                "[[service]]\nname = \"a\"\ncommand = [\"a\"]\ndepends_on = [\"a\"]\n".into(),
                (4, 15),
                "service \"a\" depends on itself",
            ),
            (
                "[[service]]\nname = \"a\"\ncommand = [\"a\"]\ndepends_on = [\"db\"]\n".into(),
                (4, 15),
                "depends_on \"db\": no service has that name",
            ),
            (
                "[[service]]\nname = \"a\"\ncommand = [\"a\"]\nready = { tcp = \"8000\" }\n".into(),
                (4, 17),
                "ready.tcp = \"8000\": must be host:port",
            ),
            (
                "[[service]]\nname = \"a\"\ncommand = [\"a\"]\nready = { file = \"f\", notify = true }\n"
                    .into(),
                (4, 9),
                "ready must name exactly one check",
            ),
            (
                "[[service]]\nname = \"a\"\ncommand = [\"a\"]\nwatchdog_file = \"hb\"\n".into(),
                (4, 17),
                "watchdog_file needs watchdog_s",
            ),
            (
                "[[service]]\nname = \"a\"\ncommand = [\"a\"]\nready = { file = \"f\", timeout_s = 0 }\n"
                    .into(),
                (4, 35),
                "service \"a\": ready.timeout_s = 0: must be a number of seconds above 0",
            ),
            (
                "[[service]]\nname = \"a\"\ncommand = [\"a\"]\nbackoff_s = -1\n".into(),
                (4, 13),
                "service \"a\": backoff_s = -1: must be a number of seconds from 0",
            ),
            (
                "[[service]]\nname = \"a\"\ncommand = [\"a\"]\nrestart = \"sometimes\"\n".into(),
                (4, 11),
                "restart = \"sometimes\": must be",
            ),
            (
                "[[service]]\nname = \"a\"\ncommand = [\"a\"]\nrestart_on = [\"src/[\"]\n".into(),
                (4, 15),
                "restart_on glob \"src/[\"",
            ),
        ];
        for (text, position, message) in cases {
            let err = parse(&text).unwrap_err();
            assert!(err.message.contains(message), "{text}\n{err}");
            assert_eq!(err.position, Some(position), "{text}\n{err}");
        }
    }

    #[test]
    fn on_death_hooks_are_read_with_their_defaults_and_roles() {
        let config = parse(
            "[jobs]\nstop_grace_s = 3\n[[trigger]]\nexec = [\"a\"]\n\
             [[on_death]]\ncommand = [\"page\", \"--team\", \"ops\"]\n\
             [[on_death]]\ncommand = [\"mail\"]\nroles = [\"service\", \"server\", \"service\"]\n\
             timeout_s = 5\nstop_signal = \"INT\"\nstop_grace_s = 1\nenv = { TO = \"ops@example.com\" }\n",
        )
        .unwrap();
        let [page, mail] = &config.on_death[..] else {
            panic!("{:?}", config.on_death)
        };
        assert_eq!(page.command, ["page", "--team", "ops"]);
        assert!(page.roles.is_empty());
        assert_eq!(page.process.timeout, DEFAULT_HOOK_TIMEOUT);
        assert_eq!(page.process.stop_grace, Duration::from_secs(3), "[jobs]'s");
        assert_eq!(page.process.cwd, config.base);
        assert!(page.runs_for(Some(Role::Job)) && page.runs_for(None));
        assert_eq!(mail.roles, [Role::Service, Role::Server], "once each");
        assert!(mail.runs_for(Some(Role::Server)));
        assert!(!mail.runs_for(Some(Role::Job)) && !mail.runs_for(None));
        assert_eq!(
            (
                mail.process.timeout,
                mail.process.stop_signal,
                mail.process.stop_grace
            ),
            (Duration::from_secs(5), libc::SIGINT, Duration::from_secs(1))
        );
        assert_eq!(mail.process.env["TO"], "ops@example.com");
        assert_eq!(Role::of("job record on /t/a"), Some(Role::Job));
        assert_eq!(Role::of("batch b (3 path(s))"), Some(Role::Batch));
        assert_eq!(Role::of("keeper"), None);
        // A launch recorded before hooks existed has none.
        let mut json = serde_json::to_value(&config).unwrap();
        json.as_object_mut().unwrap().remove("on_death");
        let old: Config = serde_json::from_value(json).unwrap();
        assert!(old.on_death.is_empty());
    }

    #[test]
    fn bad_on_death_hooks_are_refused_at_the_value_at_fault() {
        let t = "[[trigger]]\nexec = [\"a\"]\n";
        for (text, position, message) in [
            (
                "[[on_death]]\ncommand = []\n",
                (2, 11),
                "on_death #1: the command is empty",
            ),
            (
                "[[on_death]]\ncommand = [\"a\"]\n[[on_death]]\ncommand = [\"\"]\n",
                (4, 11),
                "on_death #2: the command is empty",
            ),
            (
                "[[on_death]]\ncommand = [\"a\"]\nroles = [\"job\", \"jobs\"]\n",
                (3, 17),
                "on_death #1: unknown role \"jobs\": roles are \"job\", \"worker\"",
            ),
            (
                "[[on_death]]\ncommand = [\"a\"]\nroles = []\n",
                (3, 9),
                "roles is empty",
            ),
            (
                "[[on_death]]\ncommand = [\"a\"]\ntimeout_s = 0\n",
                (3, 13),
                "on_death #1: timeout_s = 0: must be a number of seconds",
            ),
            (
                "[[on_death]]\ncommand = [\"a\"]\nenv = { WARD_CAUSE = \"x\" }\n",
                (3, 9),
                "WARD_CAUSE is set by ward for each hook run",
            ),
            (
                "[[on_death]]\ncommand = [\"a\"]\nenv_remove = [\"WARD_REPORT\"]\n",
                (3, 15),
                "WARD_REPORT is set by ward",
            ),
            (
                "[[on_death]]\ncommand = [\"a\"]\nnice = 5\n",
                (3, 1),
                "unknown field `nice`",
            ),
            (
                "[[on_death]]\nroles = [\"job\"]\n",
                (1, 1),
                "missing field `command`",
            ),
        ] {
            let text = format!("{t}{text}");
            let err = parse(&text).unwrap_err();
            assert!(err.message.contains(message), "{text}\n{err}");
            let (line, col) = position;
            assert_eq!(err.position, Some((line + 2, col)), "{text}\n{err}");
        }
    }

    #[test]
    fn services_alone_are_something_to_run_and_read_with_their_policy() {
        let config = parse(
            "[[service]]\nname = \"web\"\ncommand = [\"srv\", \"-p\"]\n\
             [[service]]\nname = \"db\"\ncommand = [\"db\"]\npolicy = \"pm2\"\nrestart_max = 2\nrestart_window_s = 5\nstop_signal = \"INT\"\n",
        )
        .unwrap();
        assert!(config.triggers.is_empty());
        let [web, db] = &config.services[..] else {
            panic!("{:?}", config.services)
        };
        assert_eq!(web.command, ["srv", "-p"]);
        assert_eq!(web.policy, PolicyName::Systemd, "systemd is the default");
        assert_eq!(
            web.restart_policy(),
            ward_supervisor::RestartPolicy::systemd()
        );
        assert_eq!(db.process.stop_signal, libc::SIGINT);
        let policy = db.restart_policy();
        assert_eq!(policy.mode, ward_supervisor::RestartPolicy::pm2().mode);
        assert_eq!(
            policy.intensity,
            Some(ward_supervisor::Intensity {
                max_restarts: 2,
                window: Duration::from_secs(5)
            })
        );
        // A launch recorded before services existed has none.
        let mut json = serde_json::to_value(&config).unwrap();
        json.as_object_mut().unwrap().remove("services");
        let old: Config = serde_json::from_value(json).unwrap();
        assert!(old.services.is_empty());
    }

    #[test]
    fn a_services_readiness_liveness_dependencies_and_policy_changes_are_read() {
        let config = parse(
            "[[service]]\nname = \"web\"\ncommand = [\"srv\"]\ndepends_on = [\"db\", \"cache\"]\n\
             ready = { tcp = \"127.0.0.1:8000\", timeout_s = 5 }\nwatchdog_s = 2\nrestart_on = [\"src/**/*.py\"]\n\
             restart = \"always\"\nbackoff_s = 0\n\
             [[service]]\nname = \"db\"\ncommand = [\"db\"]\nready = { notify = true }\n\
             watchdog_s = 1.5\nwatchdog_file = \"hb\"\ndump_signal = \"none\"\n\
             [[service]]\nname = \"cache\"\ncommand = [\"c\"]\nready = { command = [\"check\"] }\n",
        )
        .unwrap();
        let [web, db, cache] = &config.services[..] else {
            panic!("{:?}", config.services)
        };
        assert_eq!(
            web.ready,
            Some(Readiness {
                probe: Probe::Tcp("127.0.0.1:8000".into()),
                timeout: Duration::from_secs(5)
            })
        );
        assert_eq!(web.depends_on, ["db", "cache"]);
        assert_eq!(web.restart_on, ["src/**/*.py"]);
        assert!(
            web.uses_notify(),
            "its watchdog is told on the notify socket"
        );
        assert_eq!(web.dump_signal, Some(libc::SIGABRT));
        let policy = web.restart_policy();
        assert_eq!(policy.mode, ward_supervisor::RestartMode::Always);
        assert_eq!(
            policy.backoff.delay(5),
            Duration::ZERO,
            "backoff_s = 0 stays 0"
        );
        assert_eq!(db.ready.as_ref().unwrap().probe, Probe::Notify);
        assert_eq!(
            db.ready.as_ref().unwrap().timeout,
            service::DEFAULT_READY_TIMEOUT
        );
        assert_eq!(
            db.watchdog,
            Some(Liveness {
                timeout: Duration::from_millis(1500),
                file: Some(PathBuf::from("/base/hb"))
            })
        );
        assert_eq!(db.dump_signal, None);
        assert_eq!(
            cache.ready.as_ref().unwrap().probe,
            Probe::Command(vec!["check".into()])
        );
        assert!(!cache.uses_notify());
        // Dependencies first, otherwise as declared; the stop is the reverse.
        assert_eq!(start_order(&config.services), [1, 2, 0]);
    }

    #[test]
    fn batch_settings_are_read_with_defaults_and_refused_with_their_place() {
        let config = parse(
            "[[trigger]]\nexec = [\"a\"]\nbatch = true\n\
             [[trigger]]\nexec = [\"b\"]\nbatch = true\non_busy = \"signal\"\nsignal = \"USR1\"\npaths_nul = true\n\
             [[trigger]]\nexec = [\"c\"]\n",
        )
        .unwrap();
        assert_eq!(config.triggers[0].batch, Some(BatchSettings::default()));
        assert_eq!(
            config.triggers[0].batch.unwrap().on_busy,
            OnBusy::Queue,
            "queue is the default"
        );
        assert_eq!(
            config.triggers[1].batch,
            Some(BatchSettings {
                on_busy: OnBusy::Signal,
                signal: libc::SIGUSR1,
                paths_nul: true,
            })
        );
        assert_eq!(config.triggers[2].batch, None);
        for (text, position, message) in [
            (
                "[[trigger]]\nworker = [\"w\"]\nbatch = true\n",
                (3, 9),
                "batch = true needs an exec trigger",
            ),
            (
                "[[trigger]]\nexec = [\"a\"]\nbatch = true\non_busy = \"do-nothing\"\n",
                (4, 11),
                "on_busy = \"do-nothing\": unknown mode",
            ),
            (
                "[[trigger]]\nexec = [\"a\"]\nbatch = true\nsignal = \"SIGFOO\"\n",
                (4, 10),
                "signal = \"SIGFOO\": not a signal name",
            ),
            (
                "[[trigger]]\nexec = [\"a\"]\non_busy = \"restart\"\n",
                (3, 11),
                "on_busy is a setting of batch triggers",
            ),
            (
                "[[trigger]]\nexec = [\"a\"]\nbatch = false\npaths_nul = true\n",
                (4, 13),
                "paths_nul is a setting of batch triggers",
            ),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.message.contains(message), "{text}\n{err}");
            assert_eq!(err.position, Some(position), "{text}\n{err}");
        }
        // A launch recorded before the key existed has no batch triggers.
        let mut json =
            serde_json::to_value(parse("[[trigger]]\nexec = [\"a\"]\n").unwrap()).unwrap();
        json["triggers"][0].as_object_mut().unwrap().remove("batch");
        let config: Config = serde_json::from_value(json).unwrap();
        assert_eq!(config.triggers[0].batch, None);
    }

    #[test]
    fn dump_signal_is_a_signal_name_or_none_and_defaults_to_sigabrt() {
        let dump = |value: Option<&str>| {
            let key = value.map_or_else(String::new, |v| format!("dump_signal = \"{v}\"\n"));
            parse(&format!("[[trigger]]\nexec = [\"a\"]\n{key}"))
                .map(|config| config.triggers[0].dump_signal)
        };
        assert_eq!(dump(None), Ok(Some(libc::SIGABRT)));
        for (text, signal) in [
            ("SIGABRT", Some(libc::SIGABRT)),
            ("ABRT", Some(libc::SIGABRT)),
            ("SIGQUIT", Some(libc::SIGQUIT)),
            ("quit", Some(libc::SIGQUIT)),
            ("SIGUSR1", Some(libc::SIGUSR1)),
            ("none", None),
            ("NONE", None),
        ] {
            assert_eq!(dump(Some(text)), Ok(signal), "{text}");
        }
        for (text, problem) in [
            ("SIGFOO", "not a signal name"),
            ("6", "not a signal name"),
            ("", "not a signal name"),
            ("SIGKILL", "SIGKILL cannot be caught"),
            ("stop", "SIGSTOP cannot be caught"),
        ] {
            let err = dump(Some(text)).unwrap_err();
            assert_eq!(err.position, Some((3, 15)), "{text}: {err}");
            assert!(
                err.message
                    .starts_with(&format!("trigger \"trigger1\": dump_signal = \"{text}\": "))
                    && err.message.contains(problem),
                "{text}: {err}"
            );
        }
        // A launch recorded before the key existed still gets the default.
        let mut json =
            serde_json::to_value(parse("[[trigger]]\nexec = [\"a\"]\n").unwrap()).unwrap();
        json["triggers"][0]
            .as_object_mut()
            .unwrap()
            .remove("dump_signal");
        let config: Config = serde_json::from_value(json).unwrap();
        assert_eq!(config.triggers[0].dump_signal, Some(libc::SIGABRT));
    }

    #[test]
    fn a_triggers_process_settings_override_the_jobs_section_and_default_to_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let text = r#"
[jobs]
timeout_s = 60
stop_grace_s = 3

[[trigger]]
name = "plain"
exec = ["a"]

[[trigger]]
name = "tuned"
exec = ["b"]
env = { A = "1", B = "two words" }
env_remove = ["HOME", "HOME"]
cwd = "sub"
timeout_s = 5
stop_signal = "int"
stop_grace_s = 0.5
nice = 10
memory_max_mb = 64
"#;
        let config = Config::parse(text, Path::new("ward.toml"), dir.path()).unwrap();
        let plain = &config.triggers[0].process;
        assert_eq!(plain, &config.default_process());
        assert_eq!(
            (plain.timeout, plain.stop_grace, plain.stop_signal),
            (
                Duration::from_secs(60),
                Duration::from_secs(3),
                libc::SIGTERM
            )
        );
        assert_eq!(plain.cwd, config.base);
        let tuned = &config.triggers[1].process;
        let env: Vec<(&str, &str)> = tuned
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(env, [("A", "1"), ("B", "two words")]);
        assert_eq!(tuned.env_remove, ["HOME"]);
        assert_eq!(tuned.cwd, normalize(&dir.path().join("sub")));
        assert_eq!(
            (tuned.timeout, tuned.stop_grace, tuned.stop_signal),
            (
                Duration::from_secs(5),
                Duration::from_millis(500),
                libc::SIGINT
            )
        );
        assert_eq!((tuned.nice, tuned.memory_max), (Some(10), Some(64 << 20)));
        assert_eq!(tuned.user, None);

        // A launch recorded before the settings existed runs its triggers with `[jobs]`'s.
        let mut json = serde_json::to_value(&config).unwrap();
        for trigger in json["triggers"].as_array_mut().unwrap() {
            trigger.as_object_mut().unwrap().remove("process");
        }
        let old: Config = serde_json::from_value(json).unwrap();
        let old = old.with_unrecorded_settings();
        for trigger in &old.triggers {
            assert_eq!(
                trigger.process,
                config.default_process(),
                "{}",
                trigger.name
            );
        }
    }

    /// A flag's value goes through the file's checks and, when refused, is named as the flag.
    #[test]
    fn flags_are_checked_by_the_same_rules_as_the_file_and_named_as_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ward.toml");
        let resolve = |text: &str, flags: &Flags| {
            std::fs::write(&file, text).unwrap();
            Config::resolve(Some(&file), flags, dir.path())
        };
        let trigger = "[[trigger]]\nexec = [\"a\"]\n";
        let workers = |n| Flags {
            workers: Some(n),
            ..Flags::default()
        };
        let err = resolve(trigger, &workers(0)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "<command line>: --workers 0: must be between 1 and 256"
        );
        let err = resolve(
            &format!("[jobs]\nworkers = 0\n{trigger}"),
            &Flags::default(),
        )
        .unwrap_err();
        assert_eq!(err.message, "workers = 0: must be between 1 and 256");
        assert_eq!(err.position, Some((2, 11)));
        assert_eq!(resolve(trigger, &workers(256)).unwrap().workers, 256);

        // max_wait follows a longer debounce unless it is given; given shorter, it is refused,
        // whether the debounce came from the file or a flag.
        let debounce = Flags {
            debounce_ms: Some(2000),
            ..Flags::default()
        };
        let config = resolve(trigger, &debounce).unwrap();
        assert_eq!(config.max_wait, Duration::from_secs(2));
        let config = resolve(
            &format!("[watch]\ndebounce_ms = 3000\n{trigger}"),
            &Flags::default(),
        )
        .unwrap();
        assert_eq!(config.max_wait, Duration::from_secs(3));
        let err =
            resolve(&format!("[watch]\nmax_wait_ms = 100\n{trigger}"), &debounce).unwrap_err();
        assert_eq!(
            err.message, "watch.max_wait_ms is shorter than --debounce 2000",
            "{err}"
        );
        let err = resolve(
            trigger,
            &Flags {
                debounce_ms: Some(70_000),
                ..Flags::default()
            },
        )
        .unwrap_err();
        assert_eq!(err.message, "--debounce 70000: must be between 0 and 60000");

        // No file: the flags alone, and a command is needed.
        let err = Config::resolve(None, &Flags::default(), dir.path()).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("<command line>: nothing to run"),
            "{err}"
        );
        let command = Flags {
            command: vec!["true".into()],
            watch: vec!["sub".into()],
            ..Flags::default()
        };
        let config = Config::resolve(None, &command, dir.path()).unwrap();
        assert_eq!(config.roots, [dir.path().join("sub")]);
        assert_eq!(config.triggers[0].name, "command");
    }

    #[test]
    fn a_retry_s_backoff_doubles_from_the_base_up_to_the_max() {
        let retry = |max| Retry {
            retries: 2,
            backoff: Duration::from_millis(100),
            backoff_max: max,
        };
        let short = retry(Duration::from_secs(1));
        let delays: Vec<Duration> = (1..=6).map(|n| short.backoff_after(n)).collect();
        assert_eq!(
            delays,
            [100, 200, 400, 800, 1000, 1000].map(Duration::from_millis)
        );
        assert_eq!(short.backoff_after(0), Duration::from_millis(100));
        assert_eq!(
            retry(Duration::from_secs(30)).backoff_after(u32::MAX),
            Duration::from_secs(30)
        );
    }
}

//! The control socket's protocol: every request a client may send and every reply it gets, as
//! the types both ends use. `PROTOCOL.md` at the repository root describes the wire form for
//! programs written in other languages.
//!
//! A request is one line of JSON, `{"v":1,"cmd":"changes","since":41}`; its reply is one line,
//! `{"v":1,"ok":true,...}` with the fields of the command's reply type, or
//! `{"v":1,"ok":false,"error":"..."}`. The transport (threads, limits, deadlines) is in `control`;
//! what each command does is in the server's `answers`.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use crate::jobs::Event;

/// The protocol version this build speaks. A request without `v` is read as version 1; a request
/// of a newer version is refused, so that a client learns it is talking to an older server.
pub const VERSION: u64 = 1;

/// A request to the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    /// The server's counters: [`ServerStatus`].
    Status,
    /// The paths changed after a sequence number, oldest first: [`ChangesPage`].
    Changes {
        /// The last sequence number already seen; none or 0 for everything known.
        #[serde(
            default,
            deserialize_with = "since",
            skip_serializing_if = "Option::is_none"
        )]
        since: Option<u64>,
        /// Most changes in the reply (the server caps it at [`CHANGES_PAGE`]).
        #[serde(
            default,
            deserialize_with = "limit",
            skip_serializing_if = "Option::is_none"
        )]
        limit: Option<u64>,
    },
    /// Stop gracefully (the keeper stops the server, which drains first): [`Accepted`].
    Stop,
    /// Read the configuration again, as SIGHUP does, and say whether it was taken:
    /// [`Reloaded`], once it was applied or refused.
    Reload,
    /// The paths whose jobs gave up, in path order: [`FailuresPage`].
    Failures {
        /// Most paths in the reply (the server caps it at [`FAILURES_PAGE`]).
        #[serde(
            default,
            deserialize_with = "limit",
            skip_serializing_if = "Option::is_none"
        )]
        limit: Option<u64>,
    },
    /// Forget the give-ups of these paths and everything below them, and run their jobs again:
    /// [`Retried`].
    Retry {
        /// Absolute paths, files or directories.
        #[serde(default)]
        paths: Vec<std::path::PathBuf>,
        /// Every path that gave up, whatever `paths` says.
        #[serde(default)]
        all: bool,
    },
    /// The server's metrics in the Prometheus text format: [`MetricsText`].
    Metrics,
    /// Hold job starts and subscription deliveries back until [`Request::Release`] of the same
    /// name, or `timeout_s` (60 s unless given, at most an hour): [`Holding`]. Changes meanwhile
    /// come once per path after the release. Asking again renews the hold.
    Hold {
        /// The hold's name.
        name: String,
        /// Seconds it lasts unless released first.
        #[serde(
            default,
            deserialize_with = "limit",
            skip_serializing_if = "Option::is_none"
        )]
        timeout_s: Option<u64>,
    },
    /// End the hold of this name: [`Holding`].
    Release {
        /// The hold's name.
        name: String,
    },
    /// Keep the connection and receive the changes recorded after `since`, as they are
    /// recorded: first a [`Subscribed`] line, then one [`ChangeLine`] per change (and a
    /// [`Resync`] line when the subscriber has fallen far behind), until the client closes it.
    Subscribe {
        /// The last sequence number already seen; none or 0 for everything known.
        #[serde(
            default,
            deserialize_with = "since",
            skip_serializing_if = "Option::is_none"
        )]
        since: Option<u64>,
        /// Only paths these globs match (relative to their watch root, as a trigger's); none for
        /// every path.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        globs: Vec<String>,
    },
    /// Start, stop or restart one service: [`ServiceDone`], once it is stopped, or started and
    /// ready.
    Service {
        /// The service's name.
        name: String,
        /// What to do.
        action: ServiceAction,
    },
}

/// What `ward service` does to a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceAction {
    /// Start it if it is not running (stopped, given up, backing off), with its policy's count
    /// of restarts reset.
    Start,
    /// Stop it for good (until started again), through its stop signal and grace.
    Stop,
    /// Stop it if it runs and start it again at once, its policy's count reset.
    Restart,
}

impl ServiceAction {
    /// Its name, as the JSON and the command line say it.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceAction::Start => "start",
            ServiceAction::Stop => "stop",
            ServiceAction::Restart => "restart",
        }
    }
}

/// The reply to [`Request::Service`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceDone {
    /// The service.
    pub service: String,
    /// What was done.
    pub done: ServiceAction,
    /// Its process now, if one runs.
    #[serde(default)]
    pub pid: Option<u32>,
}

/// Longest page of failures one request returns.
pub const FAILURES_PAGE: usize = 10_000;

/// Longest page of changes one request returns.
pub const CHANGES_PAGE: usize = 10_000;

impl Request {
    /// The commands a client may send, as `cmd` names them.
    pub const COMMANDS: [&str; 11] = [
        "status",
        "changes",
        "stop",
        "reload",
        "failures",
        "retry",
        "service",
        "metrics",
        "subscribe",
        "hold",
        "release",
    ];

    /// Whether the request keeps its connection for a stream of lines, instead of one reply.
    pub fn is_stream(&self) -> bool {
        matches!(self, Request::Subscribe { .. })
    }

    /// Its command's name, as `cmd` says it.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Status => "status",
            Request::Changes { .. } => "changes",
            Request::Stop => "stop",
            Request::Reload => "reload",
            Request::Failures { .. } => "failures",
            Request::Retry { .. } => "retry",
            Request::Metrics => "metrics",
            Request::Subscribe { .. } => "subscribe",
            Request::Hold { .. } => "hold",
            Request::Release { .. } => "release",
            Request::Service { .. } => "service",
        }
    }

    /// The request as one line of the wire form, newline included.
    pub fn to_line(&self) -> Vec<u8> {
        let mut line = versioned(self);
        line.push(b'\n');
        line
    }

    /// Reads one request line (without its newline).
    ///
    /// # Errors
    /// The message to send back: not JSON, no `cmd`, an unknown command, a newer protocol
    /// version, or a field of the wrong type (named, with the value given).
    pub fn from_line(line: &[u8]) -> Result<Request, String> {
        let value: Value =
            serde_json::from_slice(line).map_err(|e| format!("malformed request: {e}"))?;
        let Value::Object(mut fields) = value else {
            return Err("a request must be a JSON object".into());
        };
        check_version(fields.remove("v"))?;
        let Some(cmd) = fields.get("cmd").and_then(Value::as_str) else {
            return Err("request has no \"cmd\" string".into());
        };
        if !Request::COMMANDS.contains(&cmd) {
            return Err(format!(
                "unknown command {cmd:?}: try {}",
                Request::COMMANDS.join(", ")
            ));
        }
        serde_json::from_value(Value::Object(fields)).map_err(|e| e.to_string())
    }
}

fn check_version(v: Option<Value>) -> Result<(), String> {
    match v {
        None => Ok(()),
        Some(v) => match v.as_u64() {
            Some(n) if (1..=VERSION).contains(&n) => Ok(()),
            Some(n) if n > VERSION => Err(format!(
                "protocol version {n} is newer than this server's ({VERSION})"
            )),
            _ => Err(format!("\"v\" must be a protocol version from 1, got {v}")),
        },
    }
}

/// `value` serialized with the protocol version added (`value` must serialize to an object).
fn versioned(value: &impl Serialize) -> Vec<u8> {
    let mut object = match serde_json::to_value(value) {
        Ok(Value::Object(map)) => map,
        // Every request and reply type is a struct or a tagged enum: an object.
        _ => Map::new(),
    };
    object.insert("v".into(), VERSION.into());
    serde_json::to_vec(&Value::Object(object)).unwrap_or_default()
}

fn since<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    count(d, "since")
}

fn limit<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    count(d, "limit")
}

/// A count or sequence number, so a non-negative integer: anything else is refused rather than
/// read as 0, which would answer a question nobody asked.
fn count<'de, D: Deserializer<'de>>(d: D, field: &str) -> Result<Option<u64>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        value => value.as_u64().map(Some).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "{field:?} must be a non-negative integer, got {value}"
            ))
        }),
    }
}

/// What the server answers to a request, one variant per reply type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Reply {
    /// To [`Request::Status`].
    Status(Box<ServerStatus>),
    /// To [`Request::Changes`].
    Changes(ChangesPage),
    /// To [`Request::Stop`].
    Accepted(Accepted),
    /// To [`Request::Failures`].
    Failures(FailuresPage),
    /// To [`Request::Retry`].
    Retried(Retried),
    /// To [`Request::Reload`].
    Reloaded(Reloaded),
    /// To [`Request::Service`].
    Service(ServiceDone),
    /// To [`Request::Metrics`].
    Metrics(MetricsText),
    /// The first line of a [`Request::Subscribe`] stream.
    Subscribed(Subscribed),
    /// To [`Request::Hold`] and [`Request::Release`].
    Holding(Holding),
}

/// The reply to [`Request::Hold`] and [`Request::Release`]: the holds in place now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holding {
    /// Their names, in order.
    pub holds: Vec<String>,
}

/// The first line of a subscription: the manifest's sequence number when it began. Changes
/// follow as [`ChangeLine`]s, oldest first, each path at most once per line's sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscribed {
    /// The sequence number committed when the subscription began.
    pub subscribed: u64,
}

/// A line of a subscription saying that the subscriber fell far behind: what follows is read
/// from the manifest, which keeps each path's latest change only, from after `resync_from`.
/// Nothing is lost; a path changed several times meanwhile comes once, at its latest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resync {
    /// The sequence number delivered last.
    pub resync_from: u64,
}

/// The reply to [`Request::Metrics`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetricsText {
    /// The exposition, as `/metrics` serves it (Prometheus text format 0.0.4).
    pub metrics: String,
}

/// The line that answers a request: `ok` and the version added to the reply's fields, or the
/// error that refused it. Newline included.
pub fn reply_line(answer: &Result<Reply, String>) -> Vec<u8> {
    let mut line = match answer {
        Ok(reply) => {
            let mut object = match serde_json::to_value(reply) {
                Ok(Value::Object(map)) => map,
                // Every reply type is a struct: an object.
                _ => Map::new(),
            };
            object.insert("ok".into(), true.into());
            object.insert("v".into(), VERSION.into());
            serde_json::to_vec(&Value::Object(object)).unwrap_or_default()
        }
        Err(error) => versioned(&Refusal {
            ok: false,
            error: error.clone(),
        }),
    };
    line.push(b'\n');
    line
}

/// The line that refuses a request with `error`. Newline included.
pub fn refusal_line(error: String) -> Vec<u8> {
    reply_line(&Err(error))
}

/// The reply to a request the server refused or could not answer.
#[derive(Debug, Serialize)]
struct Refusal {
    ok: bool,
    error: String,
}

/// Reads a reply line into the reply type `R` of the request that was sent.
///
/// # Errors
/// The server's refusal ([`ReplyError::Refused`]) or a reply that is not of type `R`
/// ([`ReplyError::Malformed`]).
pub fn read_reply<R: DeserializeOwned>(line: &[u8]) -> Result<R, ReplyError> {
    let value: Value =
        serde_json::from_slice(line).map_err(|e| ReplyError::Malformed(e.to_string()))?;
    match value.get("ok") {
        Some(Value::Bool(true)) => {
            serde_json::from_value(value).map_err(|e| ReplyError::Malformed(e.to_string()))
        }
        Some(Value::Bool(false)) => Err(ReplyError::Refused(
            value
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("refused without a reason")
                .to_owned(),
        )),
        _ => Err(ReplyError::Malformed("no \"ok\" field".into())),
    }
}

/// Why a reply did not give what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// The server answered with an error.
    #[error("{0}")]
    Refused(String),
    /// The reply is not JSON, or not the shape the request's reply has.
    #[error("malformed reply: {0}")]
    Malformed(String),
}

/// The reply to [`Request::Status`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerStatus {
    /// The server's pid.
    pub server_pid: u32,
    /// Seconds since the server started.
    pub uptime_s: u64,
    /// The job queue.
    pub queue: QueueStatus,
    /// The watcher.
    pub watch: WatchStatus,
    /// The manifest.
    pub manifest: ManifestStatus,
    /// Worker processes waiting for a job.
    pub workers_idle: usize,
    /// Each batch trigger's runner (one per trigger that had a path since the server started).
    #[serde(default)]
    pub batches: Vec<BatchStatus>,
    /// Each service (`[[service]]`), in the order declared.
    #[serde(default)]
    pub services: Vec<ServiceStatus>,
    /// What remote workers reported of each publish trigger's jobs since the server started.
    #[serde(default)]
    pub remote: Vec<RemoteStatus>,
    /// Each publisher (one per NATS server and stream its publish triggers use).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publishing: Vec<PublishStatus>,
    /// Set when the daemon is a `ward work --detach`: where it pulls from and what it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub work: Option<WorkStatus>,
}

/// A `ward work` daemon's side of [`ServerStatus`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkStatus {
    /// The NATS server.
    pub url: String,
    /// The stream it pulls from.
    pub stream: String,
    /// Its durable consumer.
    pub consumer: String,
    /// Jobs it runs at once at most.
    pub threads: usize,
    /// Whether its last pull succeeded (false while the NATS server is away).
    pub pulling: bool,
    /// Deliveries that succeeded (acked).
    pub succeeded: u64,
    /// Jobs not run because their file changed since they were published (acked: the change
    /// is a job of its own).
    #[serde(default)]
    pub superseded: u64,
    /// Deliveries that failed and were given back to be delivered again (nak-ed).
    pub retried: u64,
    /// Jobs dead-lettered after their last delivery.
    pub dead_lettered: u64,
}

/// What remote workers (`ward work`) did with one publish trigger's jobs, in
/// [`ServerStatus::remote`]: counted from the results they send back.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteStatus {
    /// The trigger that published the jobs.
    pub trigger: String,
    /// Deliveries that succeeded.
    pub succeeded: u64,
    /// Jobs not run because their file changed since they were published.
    #[serde(default)]
    pub superseded: u64,
    /// Deliveries that failed and were delivered again.
    pub retried: u64,
    /// Jobs that gave up (dead-lettered): `ward failures` lists them.
    pub gave_up: u64,
    /// The last failure's error, with the worker's host.
    #[serde(default)]
    pub last_error: Option<String>,
}

/// A publisher, in [`ServerStatus::publishing`]: the jobs of the publish triggers to one NATS
/// server and stream, since the server started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishStatus {
    /// The server's address.
    pub url: String,
    /// The stream.
    pub stream: String,
    /// Jobs waiting to be published.
    pub owed: usize,
    /// Jobs published and not yet acknowledged.
    pub unacked: usize,
    /// Jobs whose publish failed, waiting for their retry.
    pub retrying: usize,
    /// Jobs the stream acknowledged.
    pub published: u64,
    /// Publishes that failed and were retried.
    pub retried: u64,
    /// Jobs that failed every attempt: `ward failures` lists them.
    pub gave_up: u64,
    /// The last failure's error.
    #[serde(default)]
    pub last_error: Option<String>,
    /// The server did not answer the last window: the jobs stay owed until it does.
    #[serde(default)]
    pub waiting_for_server: bool,
}

/// A service, in [`ServerStatus::services`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// Its name.
    pub name: String,
    /// Where it is in its life.
    pub state: ServiceState,
    /// The pid of its process, while one runs.
    #[serde(default)]
    pub pid: Option<u32>,
    /// Seconds its current process has run (0 when none runs).
    #[serde(default)]
    pub uptime_s: u64,
    /// Restarts since the server started.
    #[serde(default)]
    pub restarts: u32,
    /// How its last process ended, in words (the crash report's verdict for a death).
    #[serde(default)]
    pub last_cause: Option<String>,
}

/// Where a service is, in [`ServiceStatus::state`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceState {
    /// Not started yet: it waits for the services it depends on to be ready.
    Waiting,
    /// Running, but not ready yet (its `ready` check has not passed).
    Starting,
    /// Running, and ready.
    Running,
    /// Dead, waiting out the backoff before it is started again.
    BackingOff,
    /// Dead for good: it died faster than its policy's intensity allows, or could not start.
    GaveUp,
    /// Dead for good: stopped, or its policy does not restart it after that exit.
    Stopped,
}

impl ServiceState {
    /// Its name, as the JSON says it.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceState::Waiting => "waiting",
            ServiceState::Starting => "starting",
            ServiceState::Running => "running",
            ServiceState::BackingOff => "backing-off",
            ServiceState::GaveUp => "gave-up",
            ServiceState::Stopped => "stopped",
        }
    }
}

/// A batch trigger's runner, in [`ServerStatus::batches`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchStatus {
    /// The trigger's name.
    pub trigger: String,
    /// Whether its command runs now.
    #[serde(default)]
    pub running: bool,
    /// The paths given to the run going on (0 when none runs).
    #[serde(default)]
    pub running_paths: usize,
    /// Paths owed to a later run: changed since the last run started, or kept for a failed
    /// run's retry.
    #[serde(default)]
    pub owed: usize,
    /// Runs started since the server started, retries included.
    #[serde(default)]
    pub runs: u64,
    /// A reload removed or changed its trigger: it runs what it owes with it, then ends.
    #[serde(default)]
    pub retired: bool,
}

/// The job queue's counters, since the server started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStatus {
    /// Jobs waiting for a worker.
    pub queued: usize,
    /// Jobs running now, each running batch run counting one.
    pub running: usize,
    /// Jobs that succeeded.
    pub completed: u64,
    /// Attempts that failed (a job retried twice and failed counts 3).
    pub failed: u64,
    /// Attempts retried.
    pub retried: u64,
    /// Jobs merged into one already queued for the same path.
    pub coalesced: u64,
    /// Jobs refused by a full queue (they wait in the backlog).
    pub rejected: u64,
    /// Jobs that failed every attempt.
    pub dead: u64,
    /// Whether intake is paused.
    pub paused: bool,
    /// Why no job starts, while memory is below `min_available_mb`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<String>,
    /// Changes waiting for room in the queue, or owed to a batch trigger's next run.
    pub backlog: usize,
}

/// The watcher's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchStatus {
    /// Events read from the kernel.
    pub events: u64,
    /// Paths waiting for their quiet window.
    pub pending: usize,
    /// Most paths ever pending at once.
    pub peak_pending: usize,
    /// Directories watched.
    pub watches: usize,
    /// Batches emitted.
    pub batches: u64,
    /// Events dropped (each one turned into a rescan).
    pub dropped_events: u64,
    /// Directory watches that failed (unreadable directories).
    pub failed_watches: u64,
    /// Roots watched by polling, the watch limit having been reached.
    pub polled_roots: usize,
    /// The backend watching the roots: `fanotify`, `inotify` or `poll` (empty from a server of
    /// an older version).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub backend: String,
    /// Why it is not the one `watch.backend` asked for, if it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_fallback: Option<String>,
}

/// The manifest's state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestStatus {
    /// Paths recorded.
    pub paths: u64,
    /// The last change's sequence number.
    pub seq: u64,
    /// Updates not yet written.
    pub unrecorded: usize,
    /// Why they are not written, while writing fails.
    pub write_error: Option<String>,
    /// Paths whose jobs gave up (`ward failures` lists them).
    #[serde(default)]
    pub gave_up: u64,
}

/// The reply to [`Request::Changes`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangesPage {
    /// The last change's sequence number when the page was read.
    pub seq: u64,
    /// The changes after the request's `since`, oldest first; empty when there are no more.
    pub changes: Vec<ChangeLine>,
}

/// One changed path with its latest change: a line of `ward changes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeLine {
    /// The change's sequence number.
    pub seq: u64,
    /// The path (absolute); a name that is not UTF-8 has its bad bytes replaced here.
    pub path: String,
    /// The path's bytes in hex, only when it is not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_hex: Option<String>,
    /// What happened to it last.
    pub event: Event,
}

impl ChangeLine {
    /// The line for a manifest entry.
    pub fn of(change: &crate::manifest::ChangeEntry) -> ChangeLine {
        ChangeLine {
            seq: change.seq,
            path: change.path.to_string_lossy().into_owned(),
            path_hex: change
                .path
                .to_str()
                .is_none()
                .then(|| crate::jobs::hex(change.path.as_os_str())),
            event: change.event,
        }
    }
}

/// The reply to [`Request::Failures`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailuresPage {
    /// How many paths gave up in all (more than `failures` holds past the page's limit).
    pub gave_up: u64,
    /// The first of them, in path order.
    pub failures: Vec<FailureLine>,
}

/// One path whose job gave up: a line of `ward failures`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureLine {
    /// The path (absolute); a name that is not UTF-8 has its bad bytes replaced here.
    pub path: String,
    /// The path's bytes in hex, only when it is not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_hex: Option<String>,
    /// The trigger whose job gave up.
    pub trigger: String,
    /// The change it processed.
    pub event: Event,
    /// Attempts made.
    pub attempts: u32,
    /// The last attempt's error.
    pub error: String,
    /// When it gave up, seconds since the epoch.
    pub at: u64,
    /// The last attempt's crash report, when its process died.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<String>,
}

impl FailureLine {
    /// The line for a path that gave up.
    pub fn of(path: &std::path::Path, failure: &crate::manifest::Failure) -> FailureLine {
        FailureLine {
            path: path.to_string_lossy().into_owned(),
            path_hex: path
                .to_str()
                .is_none()
                .then(|| crate::jobs::hex(path.as_os_str())),
            trigger: failure.trigger.clone(),
            event: failure.event,
            attempts: failure.attempts,
            error: failure.error.clone(),
            at: failure.at,
            report: failure.report.as_ref().map(|r| r.display().to_string()),
        }
    }
}

/// The reply to [`Request::Retry`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retried {
    /// Give-ups forgotten: their jobs run again (those of files now matched by no trigger
    /// excepted).
    pub retried: u64,
    /// Paths asked for under which nothing gave up.
    pub not_failed: Vec<String>,
}

/// The reply to [`Request::Stop`]: the server has begun.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {}

/// The reply to [`Request::Reload`], sent once the new configuration runs or was refused: `ok`
/// says the request was answered, `reload` what became of the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reload", rename_all = "lowercase")]
pub enum Reloaded {
    /// The new configuration runs: its triggers take the changes seen from now on (jobs already
    /// queued keep the trigger that matched them).
    Applied {
        /// Triggers now active.
        triggers: usize,
        /// Settings that differ in the new configuration but apply only after `ward restart`,
        /// as the config file names them (`watch.roots`, `jobs.workers`, ...).
        #[serde(default)]
        after_restart: Vec<String>,
    },
    /// The configuration is invalid; the running one is kept. The error names the file, line
    /// and column, as `ward check` does.
    Invalid {
        /// What is wrong, and where.
        error: String,
    },
    /// The configuration is valid but could not be put in place (the system refused a
    /// thread, say); the running one is kept.
    Failed {
        /// Why.
        error: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_reads_back_as_it_was_written() {
        for request in [
            Request::Status,
            Request::Changes {
                since: Some(41),
                limit: None,
            },
            Request::Changes {
                since: None,
                limit: Some(5),
            },
            Request::Stop,
            Request::Reload,
            Request::Failures { limit: Some(10) },
            Request::Retry {
                paths: vec!["/t/a".into()],
                all: false,
            },
            Request::Retry {
                paths: Vec::new(),
                all: true,
            },
            Request::Service {
                name: "web".into(),
                action: ServiceAction::Restart,
            },
            Request::Metrics,
            Request::Subscribe {
                since: Some(3),
                globs: vec!["*.rs".into()],
            },
            Request::Hold {
                name: "checkout".into(),
                timeout_s: Some(30),
            },
            Request::Release {
                name: "checkout".into(),
            },
        ] {
            let line = request.to_line();
            assert_eq!(line.last(), Some(&b'\n'));
            let text = std::str::from_utf8(&line).unwrap();
            assert!(text.contains("\"v\":1"), "{text}");
            assert_eq!(Request::from_line(&line[..line.len() - 1]), Ok(request));
        }
    }

    #[test]
    fn bad_requests_are_refused_with_what_is_wrong() {
        for (line, error) in [
            ("not json", "malformed request"),
            ("[1]", "a request must be a JSON object"),
            ("{\"cmd\":42}", "request has no \"cmd\" string"),
            (
                "{\"cmd\":\"launch\"}",
                "unknown command \"launch\": try status, changes, stop, reload, failures, retry",
            ),
            (
                "{\"v\":2,\"cmd\":\"status\"}",
                "protocol version 2 is newer than this server's (1)",
            ),
            (
                "{\"v\":0,\"cmd\":\"status\"}",
                "\"v\" must be a protocol version from 1, got 0",
            ),
            (
                "{\"cmd\":\"changes\",\"since\":-1}",
                "\"since\" must be a non-negative integer, got -1",
            ),
            (
                "{\"cmd\":\"changes\",\"limit\":\"10\"}",
                "\"limit\" must be a non-negative integer, got \"10\"",
            ),
            (
                "{\"cmd\":\"changes\",\"since\":1e308}",
                "\"since\" must be a non-negative integer, got 1e+308",
            ),
            (
                "{\"cmd\":\"changes\",\"since\":3.0}",
                "\"since\" must be a non-negative integer, got 3.0",
            ),
        ] {
            let got = Request::from_line(line.as_bytes()).unwrap_err();
            assert!(got.starts_with(error), "{line}: {got}");
        }
        assert_eq!(
            Request::from_line(b"{\"cmd\":\"changes\",\"since\":null}"),
            Ok(Request::Changes {
                since: None,
                limit: None
            })
        );
    }

    #[test]
    fn a_reply_is_read_as_its_type_or_as_the_refusal_it_is() {
        let page = ChangesPage {
            seq: 3,
            changes: vec![ChangeLine {
                seq: 3,
                path: "/t/a".into(),
                path_hex: None,
                event: Event::Renamed,
            }],
        };
        let line = reply_line(&Ok(Reply::Changes(page.clone())));
        let text = std::str::from_utf8(&line).unwrap();
        assert!(text.contains("\"ok\":true") && text.contains("\"event\":\"renamed\""));
        assert_eq!(read_reply::<ChangesPage>(&line), Ok(page));
        let refused = refusal_line("the server's main loop is busy".into());
        assert_eq!(
            read_reply::<Accepted>(&refused),
            Err(ReplyError::Refused("the server's main loop is busy".into()))
        );
        assert!(matches!(
            read_reply::<ServerStatus>(b"{\"ok\":true}"),
            Err(ReplyError::Malformed(_))
        ));
    }

    #[test]
    fn a_status_without_batches_from_an_older_server_reads_as_none() {
        let old = br#"{"v":1,"ok":true,"server_pid":7,"uptime_s":1,
            "queue":{"queued":0,"running":0,"completed":0,"failed":0,"retried":0,"coalesced":0,
                     "rejected":0,"dead":0,"paused":false,"backlog":0},
            "watch":{"events":0,"pending":0,"peak_pending":0,"watches":1,"batches":0,
                     "dropped_events":0,"failed_watches":0,"polled_roots":0},
            "manifest":{"paths":0,"seq":0,"unrecorded":0,"write_error":null,"gave_up":0},
            "workers_idle":0}"#;
        let old: Vec<u8> = old.iter().copied().filter(|&b| b != b'\n').collect();
        let status = read_reply::<ServerStatus>(&old).unwrap();
        assert_eq!(status.batches, []);
        let mut now = status.clone();
        now.batches.push(BatchStatus {
            trigger: "build".into(),
            running: true,
            running_paths: 12,
            owed: 3,
            runs: 5,
            retired: false,
        });
        let line = reply_line(&Ok(Reply::Status(Box::new(now.clone()))));
        assert!(
            std::str::from_utf8(&line).unwrap().contains(
                r#""batches":[{"owed":3,"retired":false,"running":true,"running_paths":12,"runs":5,"trigger":"build"}]"#
            ),
            "{}",
            String::from_utf8_lossy(&line)
        );
        assert_eq!(read_reply::<ServerStatus>(&line), Ok(now.clone()));
        // Services too: none from an older server, and their state in kebab case.
        assert_eq!(status.services, []);
        now.services.push(ServiceStatus {
            name: "web".into(),
            state: ServiceState::BackingOff,
            pid: None,
            uptime_s: 0,
            restarts: 2,
            last_cause: Some("killed by signal SIGKILL".into()),
        });
        let line = reply_line(&Ok(Reply::Status(Box::new(now.clone()))));
        assert!(
            String::from_utf8_lossy(&line).contains(r#""state":"backing-off""#),
            "{}",
            String::from_utf8_lossy(&line)
        );
        assert_eq!(read_reply::<ServerStatus>(&line), Ok(now));
    }

    #[test]
    fn a_reload_reply_says_what_became_of_the_configuration() {
        for (reloaded, wire) in [
            (
                Reloaded::Applied {
                    triggers: 2,
                    after_restart: vec!["jobs.workers".into()],
                },
                r#"{"after_restart":["jobs.workers"],"ok":true,"reload":"applied","triggers":2,"v":1}"#,
            ),
            (
                Reloaded::Invalid {
                    error: "/w/ward.toml:3:8: expected an array".into(),
                },
                r#"{"error":"/w/ward.toml:3:8: expected an array","ok":true,"reload":"invalid","v":1}"#,
            ),
        ] {
            let line = reply_line(&Ok(Reply::Reloaded(reloaded.clone())));
            let text = std::str::from_utf8(&line).unwrap();
            assert_eq!(text.trim_end(), wire);
            assert_eq!(read_reply::<Reloaded>(&line), Ok(reloaded));
        }
    }
}

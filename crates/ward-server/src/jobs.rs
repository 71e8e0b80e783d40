//! Jobs: which trigger handles a changed path, and how a job is put to its handler (the exec
//! command line and environment, and the JSON-lines worker protocol).
//!
//! Paths travel as `OsStr` from the watcher to the job's argv and environment, so a name with
//! spaces, newlines, `$(...)` or bytes that are not UTF-8 reaches the job exactly as it is on
//! disk, and nothing is ever interpolated into a shell string.

use std::borrow::Cow;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use globset::{Glob, GlobSet, GlobSetBuilder};
use serde_json::Value;

use crate::config::{ConfigError, Handler, ProcessSettings, Trigger};

/// What happened to a path, as a job sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Event {
    /// The file appeared.
    Created,
    /// Its content or metadata changed.
    Modified,
    /// It is gone.
    Removed,
    /// It was renamed from `old_path`.
    Renamed,
}

impl Event {
    /// The name used in `WARD_EVENT` and the worker protocol.
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Created => "created",
            Event::Modified => "modified",
            Event::Removed => "removed",
            Event::Renamed => "renamed",
        }
    }
}

/// The events a trigger receives (`events = [...]` in its section; default all).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Events(u8);

impl Events {
    /// Every event: a trigger's default.
    pub const ALL: Events = Events(0b1111);

    /// The set of `events`.
    pub fn of(events: &[Event]) -> Events {
        Events(events.iter().fold(0, |set, &e| set | Events::bit(e)))
    }

    /// Whether `event` is in the set.
    pub fn contains(self, event: Event) -> bool {
        self.0 & Events::bit(event) != 0
    }

    /// The events of the set, in their order of declaration.
    pub fn iter(self) -> impl Iterator<Item = Event> {
        [
            Event::Created,
            Event::Modified,
            Event::Removed,
            Event::Renamed,
        ]
        .into_iter()
        .filter(move |&e| self.contains(e))
    }

    fn bit(event: Event) -> u8 {
        1 << (event as u8)
    }
}

impl Default for Events {
    fn default() -> Events {
        Events::ALL
    }
}

/// One unit of work: a changed path and the trigger that handles it.
///
/// The job holds its trigger, not a position in the configuration: a job queued before a reload
/// runs with the trigger that matched it then, whatever the reload removed, changed or reordered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// The trigger that matched the path when the job was made.
    pub trigger: Arc<CompiledTrigger>,
    /// The changed path (absolute), shared by the job's copies: the backlog, the pool's key and
    /// the tracker's paths in flight each hold one while thousands of jobs wait.
    pub path: Arc<Path>,
    /// What happened to it.
    pub event: Event,
    /// The previous path of a rename.
    pub old_path: Option<PathBuf>,
    /// Its change's sequence number in the manifest, given as it is queued (`None` before).
    pub seq: Option<u64>,
}

/// One configured trigger with its globs compiled.
#[derive(Debug)]
pub struct CompiledTrigger {
    config: Trigger,
    globs: Option<GlobSet>,
    /// Its jobs the pool holds (queued or running), for its `concurrency`.
    in_pool: AtomicUsize,
}

/// Two compiled triggers are equal when their configurations are: the globs are compiled from it.
impl PartialEq for CompiledTrigger {
    fn eq(&self, other: &Self) -> bool {
        self.config == other.config
    }
}

impl Eq for CompiledTrigger {}

impl CompiledTrigger {
    /// Compiles `trigger`'s globs.
    ///
    /// # Errors
    /// If a glob does not compile (the config loader already refuses those, so this is a bug guard).
    pub fn new(trigger: &Trigger) -> Result<CompiledTrigger, ConfigError> {
        let refused = |message: String| ConfigError {
            file: "<config>".into(),
            position: None,
            message,
        };
        let globs = if trigger.globs.is_empty() {
            None
        } else {
            let mut builder = GlobSetBuilder::new();
            for g in &trigger.globs {
                let glob = Glob::new(g).map_err(|e| {
                    refused(format!("trigger {:?}: bad glob {g:?}: {e}", trigger.name))
                })?;
                builder.add(glob);
            }
            let set = builder
                .build()
                .map_err(|e| refused(format!("trigger {:?}: {e}", trigger.name)))?;
            Some(set)
        };
        Ok(CompiledTrigger {
            config: trigger.clone(),
            globs,
            in_pool: AtomicUsize::new(0),
        })
    }

    /// The trigger's name, for logs and reports.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// What it runs.
    pub fn handler(&self) -> &Handler {
        &self.config.handler
    }

    /// Whether it receives `event`. A job whose event its trigger does not receive still flows
    /// through the queue (it replaces an older job for its path, and the manifest records its
    /// change as processed, a removal as a tombstone), but runs nothing.
    pub fn receives(&self, event: Event) -> bool {
        self.config.events.contains(event)
    }

    /// The signal its jobs and workers get before they are stopped past the timeout, for a
    /// stack dump.
    pub fn dump_signal(&self) -> Option<i32> {
        self.config.dump_signal
    }

    /// Whether the pool may take one more of its jobs: fewer than its `concurrency` are queued
    /// or running there.
    pub fn has_room(&self) -> bool {
        self.config
            .concurrency
            .is_none_or(|most| self.in_pool.load(Ordering::Acquire) < most)
    }

    /// One of its jobs entered the pool.
    pub fn entered_pool(&self) {
        self.in_pool.fetch_add(1, Ordering::AcqRel);
    }

    /// One of its jobs left the pool (its last attempt ended, or it was dropped).
    pub fn left_pool(&self) {
        // Never below zero, whatever the order of events: a count that wrapped would hold the
        // trigger's jobs forever.
        let _ = self
            .in_pool
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    /// Its batch settings, when it is a batch trigger (`batch = true`): its jobs go to its batch
    /// runner, not to the pool.
    pub fn batch(&self) -> Option<&crate::batch::BatchSettings> {
        self.config.batch.as_ref()
    }

    /// Its retry settings, as configured.
    pub fn retry(&self) -> crate::config::Retry {
        self.config.retry
    }

    /// How its failed jobs are tried again.
    pub fn retry_policy(&self) -> ward_queue::RetryPolicy {
        let retry = self.config.retry;
        ward_queue::RetryPolicy::attempts(retry.retries.saturating_add(1))
            .base_delay(retry.backoff)
            .max_delay(retry.backoff_max)
    }

    /// How its jobs' (or its worker's) processes are started and stopped.
    pub fn process(&self) -> &ProcessSettings {
        &self.config.process
    }

    /// Whether it handles `relative`, a path relative to its watch root.
    fn matches(&self, relative: &Path) -> bool {
        match &self.globs {
            None => true,
            // A glob without a slash matches the file name anywhere, as in .gitignore.
            Some(set) => {
                set.is_match(relative)
                    || relative.file_name().is_some_and(|name| set.is_match(name))
            }
        }
    }
}

/// The configured triggers, compiled: the first whose globs match a path handles it.
/// Cloning shares the compiled triggers.
#[derive(Debug, Clone)]
pub struct Triggers {
    triggers: Vec<Arc<CompiledTrigger>>,
}

impl Triggers {
    /// Compiles the triggers' globs.
    ///
    /// # Errors
    /// If a glob does not compile (the config loader already refuses those, so this is a bug guard).
    pub fn new(triggers: &[Trigger]) -> Result<Triggers, ConfigError> {
        Triggers::reloaded(triggers, None)
    }

    /// Compiles `triggers`, taking over from `previous` each trigger whose configuration did not
    /// change: the jobs queued for it keep running with the trigger of the running set, and its
    /// idle workers are found under it.
    ///
    /// # Errors
    /// As [`Triggers::new`].
    pub fn reloaded(
        triggers: &[Trigger],
        previous: Option<&Triggers>,
    ) -> Result<Triggers, ConfigError> {
        let mut compiled = Vec::with_capacity(triggers.len());
        for t in triggers {
            let kept = previous.and_then(|p| p.triggers.iter().find(|c| c.config == *t));
            compiled.push(match kept {
                Some(same) => Arc::clone(same),
                None => Arc::new(CompiledTrigger::new(t)?),
            });
        }
        Ok(Triggers { triggers: compiled })
    }

    /// The trigger that handles `path` (relative to its watch root `root`).
    pub fn find(&self, root: &Path, path: &Path) -> Option<&Arc<CompiledTrigger>> {
        let relative = path.strip_prefix(root).unwrap_or(path);
        self.triggers.iter().find(|t| t.matches(relative))
    }

    /// The trigger named `name`.
    pub fn named(&self, name: &str) -> Option<&Arc<CompiledTrigger>> {
        self.triggers.iter().find(|t| t.name() == name)
    }

    /// Where `trigger` is in this set, if it belongs to it (and not to a configuration a reload
    /// replaced).
    pub fn position(&self, trigger: &Arc<CompiledTrigger>) -> Option<usize> {
        self.triggers.iter().position(|t| Arc::ptr_eq(t, trigger))
    }

    /// How many triggers there are.
    pub fn len(&self) -> usize {
        self.triggers.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.triggers.is_empty()
    }
}

/// The argv of an exec trigger for `job`: every argument that is exactly `{path}` becomes the path.
pub fn exec_argv(argv: &[String], job: &Job) -> Vec<OsString> {
    argv.iter()
        .map(|arg| {
            if arg == "{path}" {
                job.path.as_os_str().to_owned()
            } else {
                OsString::from(arg)
            }
        })
        .collect()
}

/// The environment a job's process gets on top of ward's own.
pub fn job_env(job: &Job) -> Vec<(&'static str, OsString)> {
    let mut env = vec![
        ("WARD_PATH", job.path.as_os_str().to_owned()),
        ("WARD_EVENT", job.event.as_str().into()),
    ];
    if let Some(old) = &job.old_path {
        env.push(("WARD_OLD_PATH", old.clone().into_os_string()));
    }
    if let Some(seq) = job.seq {
        env.push(("WARD_SEQ", seq.to_string().into()));
    }
    env
}

/// The worker-protocol request for `job`, as one JSON line (with its newline).
///
/// `path` and `old_path` are strings; a path that is not valid UTF-8 is given lossily there and
/// exactly, as hex of its bytes, in `path_hex` / `old_path_hex`.
pub fn worker_request(id: u64, job: &Job) -> Vec<u8> {
    let (path, path_hex) = text_of(&job.path);
    let (old_path, old_path_hex) = match &job.old_path {
        Some(old) => {
            let (text, hex) = text_of(old);
            (Some(text), hex)
        }
        None => (None, None),
    };
    let request = Request {
        event: job.event.as_str(),
        id,
        old_path,
        old_path_hex,
        path,
        path_hex,
        seq: job.seq,
    };
    let mut line = Vec::with_capacity(64 + job.path.as_os_str().len());
    // Serializing borrowed strings and an integer into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut line, &request);
    line.push(b'\n');
    line
}

/// One request line. Built per job on the way to the worker, so it borrows what it can instead
/// of building a map; its fields are in the keys' byte order, the order a JSON map gives them,
/// so the line is the same as a map's.
#[derive(serde::Serialize)]
struct Request<'a> {
    event: &'a str,
    id: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    old_path: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    old_path_hex: Option<String>,
    path: Cow<'a, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    path_hex: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
}

/// A path as the protocol's string, and its bytes in hex when that string is lossy.
fn text_of(path: &Path) -> (Cow<'_, str>, Option<String>) {
    let os: &OsStr = path.as_os_str();
    match os.to_str() {
        Some(text) => (Cow::Borrowed(text), None),
        None => (os.to_string_lossy(), Some(hex(os))),
    }
}

/// The bytes of `os` in lower-case hex: how a path that is not UTF-8 travels in JSON, exactly.
pub(crate) fn hex(os: &OsStr) -> String {
    os.as_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

/// A worker's answer to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The job succeeded.
    Ok,
    /// The worker says the job failed, with its reason.
    Failed(String),
}

/// Parses a worker's reply line to request `id`.
///
/// # Errors
/// A description of what is wrong with the line: not JSON, another id, no `ok` boolean.
pub fn parse_reply(line: &[u8], id: u64) -> Result<Reply, String> {
    // Each violation quotes the reply, so that the worker's author sees what was wrong with it.
    let quoted = || quote(line);
    let value: Value = serde_json::from_slice(line)
        .map_err(|e| format!("reply is not JSON ({e}): {}", quoted()))?;
    match value.get("id").and_then(Value::as_u64) {
        Some(got) if got == id => {}
        Some(got) => {
            return Err(format!(
                "reply is for id {got}, expected {id}: {}",
                quoted()
            ));
        }
        None => return Err(format!("reply has no numeric \"id\": {}", quoted())),
    }
    match value.get("ok").and_then(Value::as_bool) {
        Some(true) => Ok(Reply::Ok),
        Some(false) => {
            let error = value
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("worker reported failure");
            Ok(Reply::Failed(error.to_owned()))
        }
        None => Err(format!("reply has no boolean \"ok\": {}", quoted())),
    }
}

/// Longest part of a bad reply quoted in the log.
const QUOTED: usize = 200;

/// `line` as a quoted string, cut after [`QUOTED`] bytes (and said so).
fn quote(line: &[u8]) -> String {
    let shown = String::from_utf8_lossy(&line[..line.len().min(QUOTED)]);
    if line.len() > QUOTED {
        format!("{shown:?} (first {QUOTED} of {} bytes)", line.len())
    } else {
        format!("{shown:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: a protocol violation said what was wrong but not what the worker sent.
    #[test]
    fn a_bad_reply_is_quoted_up_to_two_hundred_bytes() {
        let err = parse_reply(b"{\"id\":1,\"okay\":true}", 1).unwrap_err();
        assert_eq!(
            err,
            "reply has no boolean \"ok\": \"{\\\"id\\\":1,\\\"okay\\\":true}\""
        );
        let long = format!("not json {}", "x".repeat(500));
        let err = parse_reply(long.as_bytes(), 1).unwrap_err();
        assert!(err.contains("(first 200 of 509 bytes)"), "{err}");
        assert!(
            !err.contains(&"x".repeat(200)),
            "more than 200 bytes quoted: {err}"
        );
    }

    fn trigger(name: &str, globs: &[&str]) -> Trigger {
        Trigger::exec_true(name, globs)
    }

    #[test]
    fn the_first_matching_trigger_wins_and_bare_globs_match_names_anywhere() {
        let t = Triggers::new(&[
            trigger("docs", &["docs/**"]),
            trigger("text", &["*.txt"]),
            trigger("all", &[]),
        ])
        .unwrap();
        let root = Path::new("/r");
        let name = |path: &str| t.find(root, Path::new(path)).map(|t| t.name().to_owned());
        assert_eq!(name("/r/docs/a.txt").as_deref(), Some("docs"));
        assert_eq!(name("/r/src/deep/b.txt").as_deref(), Some("text"));
        assert_eq!(name("/r/src/c.rs").as_deref(), Some("all"));
        let only_text = Triggers::new(&[trigger("text", &["*.txt"])]).unwrap();
        assert!(only_text.find(root, Path::new("/r/c.rs")).is_none());
    }

    #[test]
    fn a_reload_keeps_unchanged_triggers_and_a_job_keeps_the_trigger_that_matched_it() {
        let before = Triggers::new(&[
            trigger("slow", &["*.a"]),
            trigger("bee", &["*.b"]),
            trigger("cee", &["*.c"]),
        ])
        .unwrap();
        let root = Path::new("/r");
        let queued: Vec<Arc<CompiledTrigger>> = ["/r/x.a", "/r/x.b", "/r/x.c"]
            .iter()
            .map(|p| Arc::clone(before.find(root, Path::new(p)).unwrap()))
            .collect();
        // `slow` deleted, the others reordered, `cee` changed.
        let mut cee = trigger("cee", &["*.c"]);
        cee.handler = Handler::Exec {
            argv: vec!["false".into()],
        };
        let after = Triggers::reloaded(&[cee, trigger("bee", &["*.b"])], Some(&before)).unwrap();
        drop(before);
        let names: Vec<&str> = queued.iter().map(|t| t.name()).collect();
        assert_eq!(
            names,
            ["slow", "bee", "cee"],
            "a queued job's trigger never changes"
        );
        assert_eq!(after.position(&queued[0]), None, "slow is gone");
        assert_eq!(
            after.position(&queued[1]),
            Some(1),
            "bee is the same trigger"
        );
        assert_eq!(after.position(&queued[2]), None, "cee is a new trigger");
        assert_eq!(
            queued[2].handler(),
            &Handler::Exec {
                argv: vec!["true".into()]
            }
        );
        assert!(after.find(root, Path::new("/r/y.a")).is_none());
    }

    /// A worker is kept across a reload only by a trigger that compares equal: one whose
    /// process settings changed (here its nice value) must get a new one.
    #[test]
    fn a_reload_replaces_a_trigger_whose_process_settings_changed() {
        let before = Triggers::new(&[trigger("bee", &["*.b"])]).unwrap();
        let mut nicer = trigger("bee", &["*.b"]);
        nicer.process.nice = Some(10);
        let same = Triggers::reloaded(&[trigger("bee", &["*.b"])], Some(&before)).unwrap();
        let changed = Triggers::reloaded(&[nicer], Some(&before)).unwrap();
        let kept = &before.triggers[0];
        assert_eq!(same.position(kept), Some(0));
        assert_eq!(changed.position(kept), None);
    }

    fn any_trigger() -> Arc<CompiledTrigger> {
        Arc::new(CompiledTrigger::new(&trigger("all", &[])).unwrap())
    }

    #[test]
    fn path_placeholder_is_replaced_only_as_a_whole_argument() {
        let job = Job {
            trigger: any_trigger(),
            path: Path::new("/r/a b$(x).txt").into(),
            event: Event::Modified,
            old_path: None,
            seq: None,
        };
        let argv = exec_argv(&["wc".into(), "{path}".into(), "x{path}".into()], &job);
        assert_eq!(
            argv,
            [
                OsString::from("wc"),
                OsString::from("/r/a b$(x).txt"),
                OsString::from("x{path}")
            ]
        );
    }

    #[test]
    fn non_utf8_paths_travel_exactly_as_hex() {
        let path = PathBuf::from(OsStr::from_bytes(b"/r/caf\xe9.txt"));
        let job = Job {
            trigger: any_trigger(),
            path: path.into(),
            event: Event::Renamed,
            old_path: Some("/r/old".into()),
            seq: None,
        };
        let request: Value = serde_json::from_slice(&worker_request(7, &job)).unwrap();
        assert_eq!(request["id"], 7);
        assert_eq!(request["event"], "renamed");
        assert_eq!(request["path_hex"], "2f722f636166e92e747874");
        assert_eq!(request["old_path"], "/r/old");
        assert!(request.get("old_path_hex").is_none());
    }

    /// The request as a JSON map of its keys gives it: what workers have been sent all along.
    fn request_as_a_map(id: u64, job: &Job) -> Vec<u8> {
        let mut request = serde_json::json!({ "id": id, "event": job.event.as_str() });
        for (key, path) in [
            ("path", Some(&*job.path)),
            ("old_path", job.old_path.as_deref()),
        ] {
            let Some(path) = path else { continue };
            let os = path.as_os_str();
            request[key] = Value::String(os.to_string_lossy().into_owned());
            if os.to_str().is_none() {
                request[format!("{key}_hex")] = Value::String(hex(os));
            }
        }
        if let Some(seq) = job.seq {
            request["seq"] = seq.into();
        }
        let mut line = serde_json::to_vec(&request).unwrap();
        line.push(b'\n');
        line
    }

    #[test]
    fn a_request_line_is_byte_for_byte_the_map_it_always_was() {
        let odd = PathBuf::from(OsStr::from_bytes(b"/r/caf\xe9 \"q\"\\.txt"));
        let plain = PathBuf::from("/r/a b/\u{e9}t\u{e9}\n.txt");
        for (path, old_path) in [
            (plain.clone(), None),
            (odd.clone(), None),
            (plain.clone(), Some(odd.clone())),
            (odd.clone(), Some(plain.clone())),
            (odd.clone(), Some(odd.clone())),
        ] {
            for (event, seq) in [
                (Event::Created, None),
                (Event::Modified, Some(1)),
                (Event::Removed, Some(u64::MAX)),
                (Event::Renamed, Some(42)),
            ] {
                let job = Job {
                    trigger: any_trigger(),
                    path: path.as_path().into(),
                    event,
                    old_path: old_path.clone(),
                    seq,
                };
                assert_eq!(
                    worker_request(u64::MAX, &job),
                    request_as_a_map(u64::MAX, &job),
                    "{job:?}"
                );
            }
        }
    }

    #[test]
    fn replies_are_checked_for_id_and_ok() {
        assert_eq!(parse_reply(br#"{"id":3,"ok":true}"#, 3), Ok(Reply::Ok));
        assert_eq!(
            parse_reply(br#"{"id":3,"ok":false,"error":"bad"}"#, 3),
            Ok(Reply::Failed("bad".into()))
        );
        assert!(
            parse_reply(br#"{"id":4,"ok":true}"#, 3)
                .unwrap_err()
                .contains("id 4")
        );
        assert!(parse_reply(b"garbage", 3).unwrap_err().contains("not JSON"));
        assert!(parse_reply(br#"{"id":3}"#, 3).unwrap_err().contains("ok"));
    }
}

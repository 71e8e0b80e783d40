//! What a publish trigger sends and `ward work` reads: the one type both sides of the wire use,
//! and the message id that lets the stream drop a republish. The connections live in
//! `publish.rs` and `commands/work.rs`, not here.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::jobs::{Event, Job};
use crate::manifest::FileMeta;

/// Where workers report what became of the jobs: `ward.results.ORIGIN`, kept in
/// [`RESULTS_STREAM`] until the origin's server takes them.
pub const RESULTS_PREFIX: &str = "ward.results";
/// The stream of the results: a work queue (a result is deleted once its origin has it), each
/// origin's durable consumer filtered on its own subject.
pub const RESULTS_STREAM: &str = "WARD_RESULTS";
/// How long a result waits for an origin that does not come back.
pub const RESULTS_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// What `ward work` is told on its command line; kept in the handover when it runs as a daemon
/// (`--detach`), so that the keeper's restarts run it the same.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkOptions {
    /// The NATS server.
    pub url: String,
    /// The stream the jobs are in.
    pub stream: String,
    /// The durable consumer's name: workers with the same name share the jobs.
    pub consumer: String,
    /// Where the messages' relative paths are resolved (a shared or replicated tree); without
    /// it only jobs that carry their content can run.
    pub root: Option<PathBuf>,
    /// Jobs run at once (default: the config's `workers`).
    pub workers: Option<usize>,
    /// Deliveries of a job before it is dead-lettered.
    pub max_deliver: i64,
    /// How long a job may go without an ack or a progress mark before it is redelivered.
    pub ack_wait: std::time::Duration,
}

/// One job on the wire: a change of a file under a watched root, as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobMessage {
    /// The host that saw the change.
    pub host: String,
    /// The ward that published it ([`origin_id`]): where its result goes. Empty from a ward
    /// that takes no results.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub origin: String,
    /// The watched root the path is under, as that host names it.
    pub root: PathBuf,
    /// The path, relative to `root`.
    pub path: PathBuf,
    /// The trigger that published it.
    pub trigger: String,
    /// What happened.
    pub event: Event,
    /// The change's sequence number in the origin's manifest: what `ward changes --since` and
    /// `ward subscribe` there number it, and, for one path, later changes have greater numbers.
    /// Absent from a job not numbered (made by a ward before it numbered them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// The previous path of a rename, relative to `root`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_path: Option<PathBuf>,
    /// The file's size when published (none if it is gone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Its modification time, ns since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime_ns: Option<i64>,
    /// Its inode number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ino: Option<u64>,
    /// Its content, base64, when the trigger carries content and the file fits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// When a job without a version (the file is gone) was published, ns since the epoch: what
    /// tells two removals of one path apart in their message ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gone_at_ns: Option<u64>,
    /// When `ward retry` asked for this path again, ns since the epoch, for a job published
    /// within the stream's duplicate window after it: its id differs from the give-up's, which
    /// the stream would drop as a duplicate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retried_at_ns: Option<u64>,
}

impl JobMessage {
    /// The message for `job` (whose path is under one of `roots`) seen on `host`, its file's
    /// version `meta` (stat-ed just before: the version published is the one on disk, which is
    /// the latest; `None` if it is gone).
    pub fn of(
        job: &Job,
        meta: Option<FileMeta>,
        roots: &[PathBuf],
        host: &str,
        origin: &str,
    ) -> JobMessage {
        // The longest root the path is under: roots may nest.
        let root = roots
            .iter()
            .filter(|r| job.path.starts_with(r))
            .max_by_key(|r| r.as_os_str().len())
            .cloned()
            .unwrap_or_else(|| {
                job.path
                    .parent()
                    .map_or_else(PathBuf::new, Path::to_path_buf)
            });
        let relative = |p: &Path| p.strip_prefix(&root).unwrap_or(p).to_path_buf();
        JobMessage {
            host: host.to_owned(),
            origin: origin.to_owned(),
            path: relative(&job.path),
            old_path: job.old_path.as_deref().map(relative),
            trigger: job.trigger.name().to_owned(),
            event: job.event,
            seq: job.seq,
            size: meta.map(|m| m.size),
            mtime_ns: meta.map(|m| m.mtime_ns),
            ino: meta.map(|m| m.ino),
            content: None,
            retried_at_ns: None,
            gone_at_ns: meta.is_none().then(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64)
            }),
            root,
        }
    }

    /// Its `Nats-Msg-Id`: host, root and path (hashed, so that any path makes a valid header),
    /// and the version (size, mtime, inode). A republish of the same version carries the same
    /// id, and the stream drops it within its duplicate window.
    ///
    /// A file that is gone has no version: its id has the event and the time it was published
    /// instead, so that a second removal of the path (after it came back) is never dropped as a
    /// duplicate of the first. The price: a removal published again after a crash is delivered
    /// twice (at least once, as every job).
    pub fn message_id(&self) -> String {
        let mut hash = Fnv::default();
        hash.write(self.root.as_os_str().as_encoded_bytes());
        hash.write(&[0]);
        hash.write(self.path.as_os_str().as_encoded_bytes());
        let version = match (self.size, self.mtime_ns, self.ino) {
            (Some(size), Some(mtime), Some(ino)) => format!("{size}.{mtime}.{ino}"),
            _ => format!(
                "{}@{}",
                self.event.as_str(),
                self.gone_at_ns.unwrap_or_default()
            ),
        };
        match self.retried_at_ns {
            Some(at) => format!("{}:{:016x}:{version}:retry@{at}", self.host, hash.0),
            None => format!("{}:{:016x}:{version}", self.host, hash.0),
        }
    }
}

/// What `ward work` publishes on the dead-letter subject when a job has failed its last delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The job, as it was delivered.
    pub job: JobMessage,
    /// Why its last attempt failed.
    pub error: String,
    /// How many times it was delivered.
    pub deliveries: u64,
    /// The host of the worker that gave up.
    pub worker: String,
}

/// What became of a job on a worker, sent back to its origin on `ward.results.ORIGIN`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobResult {
    /// The job, as it was delivered (without its content).
    pub job: JobMessage,
    /// How its delivery ended.
    pub outcome: RemoteOutcome,
    /// Why it failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Which delivery this was (1 the first time).
    pub delivery: u64,
    /// The host of the worker.
    pub worker: String,
}

/// How one delivery of a job ended on a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RemoteOutcome {
    /// It ran and succeeded: acknowledged.
    Succeeded,
    /// It failed and is delivered again later.
    Retried,
    /// It failed its last delivery (or can never run there): dead-lettered.
    GaveUp,
    /// It was not run: its file changed since it was published, and that change is a job of
    /// its own. Acknowledged.
    Superseded,
}

impl RemoteOutcome {
    /// Whether the delivery failed (its error is the last error shown).
    pub fn failed(self) -> bool {
        matches!(self, RemoteOutcome::Retried | RemoteOutcome::GaveUp)
    }

    /// Its name, as in metrics' labels and the protocol.
    pub fn as_str(self) -> &'static str {
        match self {
            RemoteOutcome::Succeeded => "succeeded",
            RemoteOutcome::Retried => "retried",
            RemoteOutcome::GaveUp => "gave_up",
            RemoteOutcome::Superseded => "superseded",
        }
    }
}

impl JobResult {
    /// Its subject: the origin's own.
    pub fn subject(&self) -> String {
        results_subject(&self.job.origin)
    }

    /// Its `Nats-Msg-Id`: a worker that reports the same delivery twice is dropped.
    pub fn message_id(&self) -> String {
        format!(
            "result:{}:{}:{}",
            self.job.message_id(),
            self.delivery,
            self.outcome.as_str()
        )
    }
}

/// The subject the results of `origin`'s jobs go to.
pub fn results_subject(origin: &str) -> String {
    format!("{RESULTS_PREFIX}.{origin}")
}

/// The identity of a ward that publishes jobs: its host and its state directory (several wards
/// may run on one host), made of what a subject token and a consumer name may hold.
pub fn origin_id(host: &str, state_dir: &Path) -> String {
    let mut hash = Fnv::default();
    hash.write(state_dir.as_os_str().as_encoded_bytes());
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{host}-{:08x}", hash.0 as u32)
}

/// FNV-1a, 64 bits: stable across builds and versions, unlike std's hasher, so that a restarted
/// (or upgraded) ward computes the ids it computed before.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// This host's name, for the messages it publishes.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length, and gethostname writes at most that much.
    let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if r != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(size: Option<u64>) -> JobMessage {
        JobMessage {
            host: "h".into(),
            origin: String::new(),
            root: "/src".into(),
            path: "a/b.rs".into(),
            trigger: "t".into(),
            event: Event::Modified,
            old_path: None,
            size,
            mtime_ns: size.map(|_| 5),
            ino: size.map(|_| 7),
            content: None,
            gone_at_ns: None,
            retried_at_ns: None,
            seq: None,
        }
    }

    #[test]
    fn the_same_version_has_the_same_id_and_another_version_another() {
        assert_eq!(message(Some(1)).message_id(), message(Some(1)).message_id());
        assert_ne!(message(Some(1)).message_id(), message(Some(2)).message_id());
        assert!(message(Some(1)).message_id().ends_with(":1.5.7"));
        assert!(message(None).message_id().ends_with(":modified@0"));
        // Two removals of one path, published at different times, are two messages.
        let (mut first, mut second) = (message(None), message(None));
        first.gone_at_ns = Some(1);
        second.gone_at_ns = Some(2);
        assert_ne!(first.message_id(), second.message_id());
        let mut other = message(Some(1));
        other.path = "a/c.rs".into();
        assert_ne!(other.message_id(), message(Some(1)).message_id());
        // A version asked for again by `ward retry` is another message than its first.
        let mut retried = message(Some(1));
        retried.retried_at_ns = Some(9);
        assert_ne!(retried.message_id(), message(Some(1)).message_id());
        assert!(retried.message_id().ends_with(":1.5.7:retry@9"));
    }

    #[test]
    fn an_origin_is_a_valid_subject_token_and_differs_per_state_directory() {
        let a = origin_id("build.example.com", Path::new("/srv/a/.ward"));
        assert!(a.starts_with("build_example_com-"), "{a}");
        assert!(!a.contains(['.', '*', '>', ' ']), "{a}");
        assert_ne!(a, origin_id("build.example.com", Path::new("/srv/b/.ward")));
        assert_eq!(a, origin_id("build.example.com", Path::new("/srv/a/.ward")));
    }

    #[test]
    fn a_message_reads_back_as_it_was_written() {
        let m = message(Some(1));
        let text = serde_json::to_string(&m).unwrap();
        assert!(!text.contains("content"), "{text}");
        assert_eq!(serde_json::from_str::<JobMessage>(&text).unwrap(), m);
    }
}

//! What a publish trigger sends and `ward work` reads: the one type both sides of the wire use,
//! and the message id that lets the stream drop a republish. The connections live in
//! `publish.rs` and `commands/work.rs`, not here.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::jobs::{Event, Job};
use crate::manifest::FileMeta;

/// One job on the wire: a change of a file under a watched root, as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobMessage {
    /// The host that saw the change.
    pub host: String,
    /// The watched root the path is under, as that host names it.
    pub root: PathBuf,
    /// The path, relative to `root`.
    pub path: PathBuf,
    /// The trigger that published it.
    pub trigger: String,
    /// What happened.
    pub event: Event,
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
}

impl JobMessage {
    /// The message for `job` (whose path is under one of `roots`) seen on `host`. The file is
    /// stat-ed now: the version published is the one on disk, which is the latest.
    pub fn of(job: &Job, roots: &[PathBuf], host: &str) -> JobMessage {
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
        let meta = FileMeta::read(&job.path);
        JobMessage {
            host: host.to_owned(),
            path: relative(&job.path),
            old_path: job.old_path.as_deref().map(relative),
            trigger: job.trigger.name().to_owned(),
            event: job.event,
            size: meta.map(|m| m.size),
            mtime_ns: meta.map(|m| m.mtime_ns),
            ino: meta.map(|m| m.ino),
            content: None,
            root,
        }
    }

    /// Its `Nats-Msg-Id`: host, root and path (hashed, so that any path makes a valid header),
    /// and the version (size, mtime, inode) or the event when there is none. A republish of the
    /// same version carries the same id, and the stream drops it within its duplicate window.
    ///
    /// A removed file has no version: its id ends with the event's name, so a second removal of
    /// the same path within the window is dropped too (known problem).
    pub fn message_id(&self) -> String {
        let mut hash = Fnv::default();
        hash.write(self.root.as_os_str().as_encoded_bytes());
        hash.write(&[0]);
        hash.write(self.path.as_os_str().as_encoded_bytes());
        let version = match (self.size, self.mtime_ns, self.ino) {
            (Some(size), Some(mtime), Some(ino)) => format!("{size}.{mtime}.{ino}"),
            _ => self.event.as_str().to_owned(),
        };
        format!("{}:{:016x}:{version}", self.host, hash.0)
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
            root: "/src".into(),
            path: "a/b.rs".into(),
            trigger: "t".into(),
            event: Event::Modified,
            old_path: None,
            size,
            mtime_ns: size.map(|_| 5),
            ino: size.map(|_| 7),
            content: None,
        }
    }

    #[test]
    fn the_same_version_has_the_same_id_and_another_version_another() {
        assert_eq!(message(Some(1)).message_id(), message(Some(1)).message_id());
        assert_ne!(message(Some(1)).message_id(), message(Some(2)).message_id());
        assert!(message(Some(1)).message_id().ends_with(":1.5.7"));
        assert!(message(None).message_id().ends_with(":modified"));
        let mut other = message(Some(1));
        other.path = "a/c.rs".into();
        assert_ne!(other.message_id(), message(Some(1)).message_id());
    }

    #[test]
    fn a_message_reads_back_as_it_was_written() {
        let m = message(Some(1));
        let text = serde_json::to_string(&m).unwrap();
        assert!(!text.contains("content"), "{text}");
        assert_eq!(serde_json::from_str::<JobMessage>(&text).unwrap(), m);
    }
}

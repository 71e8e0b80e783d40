//! Publish triggers: a job becomes one JetStream message, and succeeds when the stream
//! acknowledges it (until then it stays owed in the manifest, like any job that has not
//! succeeded). What goes in the message is `remote.rs`'s.

use std::collections::HashMap;
use std::io::Read;
use std::sync::Arc;

use base64::Engine;
use parking_lot::Mutex;
use ward_nats::{Ack, Outgoing, Publisher, StreamSpec};

use crate::config::Publish;
use crate::dispatch::JobError;
use crate::jobs::Job;
use crate::manifest::FileMeta;
use crate::remote::{JobMessage, hostname, origin_id};

/// The connections of the publish triggers, one per server and stream, made at a trigger's first
/// job: a server that is down fails that job (which ward retries), not ward's start.
#[derive(Debug)]
pub(crate) struct Publishers {
    host: String,
    /// Where the workers send what became of the jobs: this ward's own results subject.
    origin: String,
    open: Mutex<HashMap<(String, String), Arc<Publisher>>>,
}

impl Publishers {
    pub(crate) fn new(state_dir: &std::path::Path) -> Publishers {
        let host = hostname();
        Publishers {
            origin: origin_id(&host, state_dir),
            host,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// The connection to `target`'s server and stream, made (and the stream if missing) at its
    /// first use.
    pub(crate) fn publisher(&self, target: &Publish) -> Result<Arc<Publisher>, Failed> {
        let key = (target.url.clone(), target.stream.clone());
        if let Some(open) = self.open.lock().get(&key) {
            return Ok(open.clone());
        }
        // Connected outside the lock: a server that does not answer holds up only this job.
        let subjects = stream_subjects(&target.subject);
        let publisher = Publisher::connect(
            &target.url,
            &StreamSpec::work_queue(&target.stream, &subjects),
        )
        .map_err(|e| match Failed::of(&e) {
            Failed::Unanswered(reason) => Failed::Unanswered(format!("publish: {reason}")),
            Failed::Refused(_) => Failed::Refused(JobError::Failed(format!("publish: {e}"))),
        })?;
        Ok(self
            .open
            .lock()
            .entry(key)
            .or_insert_with(|| Arc::new(publisher))
            .clone())
    }

    /// Publishes `job` and waits for the stream's acknowledgement.
    pub(crate) fn publish(&self, job: &Job, roots: &[std::path::PathBuf]) -> Result<(), JobError> {
        let one = ToPublish {
            job,
            version: FileMeta::read(&job.path),
            retried_at_ns: None,
        };
        let target = target_of(job)?;
        let message = self.message(target, &one, roots)?;
        let publisher = self.publisher(target).map_err(Failed::into_job_error)?;
        match publisher.publish(&message.subject, &message.id, message.payload) {
            Ok(ack) => {
                log_ack(job, ack);
                Ok(())
            }
            Err(e) => Err(Failed::of(&e).into_job_error()),
        }
    }

    /// The message of `one`: its subject, id and body.
    pub(crate) fn message(
        &self,
        target: &Publish,
        one: &ToPublish<'_>,
        roots: &[std::path::PathBuf],
    ) -> Result<Outgoing, JobError> {
        let job = one.job;
        let mut message = JobMessage::of(job, one.version, roots, &self.host, &self.origin);
        message.retried_at_ns = one.retried_at_ns;
        if target.content_max_bytes > 0
            && message
                .size
                .is_some_and(|size| size <= target.content_max_bytes)
        {
            message.content = read_at_most(&job.path, target.content_max_bytes)
                .map(|bytes| base64::engine::general_purpose::STANDARD.encode(bytes));
        }
        let payload = serde_json::to_vec(&message)
            .map_err(|e| JobError::Failed(format!("publish: cannot encode the message: {e}")))?;
        Ok(Outgoing {
            subject: target.subject.clone(),
            id: message.message_id(),
            payload,
        })
    }
}

/// Where `job`'s trigger publishes.
pub(crate) fn target_of(job: &Job) -> Result<&Publish, JobError> {
    match job.trigger.handler() {
        crate::config::Handler::Publish(target) => Ok(target),
        _ => Err(JobError::Failed(format!(
            "trigger {} does not publish",
            job.trigger.name()
        ))),
    }
}

/// Says what the stream made of `job`'s message.
pub(crate) fn log_ack(job: &Job, ack: Ack) {
    if ack.duplicate {
        // A republish of a job whose record was lost (a crash), or a version published again
        // within the duplicate window: said, as it is rare and explains a job not delivered.
        log::info!(
            "{} published again: dropped by the stream as a duplicate of #{}",
            job.path.display(),
            ack.sequence
        );
    } else {
        log::debug!("published {} as #{}", job.path.display(), ack.sequence);
    }
}

/// A job to publish.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ToPublish<'a> {
    pub job: &'a Job,
    /// Its file's version, stat-ed just before (`None`: gone).
    pub version: Option<FileMeta>,
    /// When `ward retry` asked for its path again, if that was within the stream's duplicate
    /// window: see [`JobMessage::retried_at_ns`].
    pub retried_at_ns: Option<u64>,
}

/// Why a publish did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failed {
    /// The server did not answer (unreachable, down, too slow): no failure of the job, which
    /// stays owed until it answers.
    Unanswered(String),
    /// The server refused it, or ward could not make the message: a failed attempt of the job.
    Refused(JobError),
}

impl Failed {
    /// What a publish's error means for its job.
    pub(crate) fn of(e: &ward_nats::Error) -> Failed {
        if e.is_unanswered() {
            Failed::Unanswered(e.to_string())
        } else {
            Failed::Refused(JobError::Failed(e.to_string()))
        }
    }

    /// As a job's error, for a caller that runs one job at a time (`ward work` relaying).
    pub(crate) fn into_job_error(self) -> JobError {
        match self {
            Failed::Unanswered(reason) => JobError::Failed(reason),
            Failed::Refused(e) => e,
        }
    }
}

/// The subjects of the stream a publish trigger makes when it is missing: its subject's siblings
/// (`ward.jobs.index` → `ward.jobs.>`), so that the triggers publishing to one stream share it and
/// `ward.dead.>` stays free for the dead letters' stream.
fn stream_subjects(subject: &str) -> String {
    match subject.rsplit_once('.') {
        Some((parent, _)) => format!("{parent}.>"),
        None => subject.to_owned(),
    }
}

/// The file's bytes if it still fits in `max` (it may have grown since it was stat-ed).
fn read_at_most(path: &std::path::Path, max: u64) -> Option<Vec<u8>> {
    let file = std::fs::File::open(path).ok()?;
    let mut bytes = Vec::new();
    file.take(max + 1).read_to_end(&mut bytes).ok()?;
    (bytes.len() as u64 <= max).then_some(bytes)
}

#[cfg(test)]
mod tests {
    use super::stream_subjects;

    #[test]
    fn a_stream_made_by_a_publish_trigger_takes_its_subject_and_siblings_only() {
        assert_eq!(stream_subjects("ward.jobs.index"), "ward.jobs.>");
        assert_eq!(stream_subjects("jobs"), "jobs");
    }
}

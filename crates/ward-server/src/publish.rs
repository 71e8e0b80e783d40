//! Publish triggers: a job becomes one JetStream message, and succeeds when the stream
//! acknowledges it (until then it stays owed in the manifest, like any job that has not
//! succeeded). What goes in the message is `remote.rs`'s.

use std::collections::HashMap;
use std::io::Read;
use std::sync::Arc;

use base64::Engine;
use parking_lot::Mutex;
use ward_nats::{Publisher, StreamSpec};

use crate::config::Publish;
use crate::dispatch::JobError;
use crate::jobs::Job;
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

    fn publisher(&self, target: &Publish) -> Result<Arc<Publisher>, JobError> {
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
        .map_err(|e| JobError::Failed(format!("publish: {e}")))?;
        Ok(self
            .open
            .lock()
            .entry(key)
            .or_insert_with(|| Arc::new(publisher))
            .clone())
    }

    /// Publishes `job` to `target` and waits for the stream's acknowledgement.
    pub(crate) fn publish(
        &self,
        target: &Publish,
        job: &Job,
        roots: &[std::path::PathBuf],
    ) -> Result<(), JobError> {
        let mut message = JobMessage::of(job, roots, &self.host, &self.origin);
        if target.content_max_bytes > 0
            && message
                .size
                .is_some_and(|size| size <= target.content_max_bytes)
        {
            message.content = read_at_most(&job.path, target.content_max_bytes)
                .map(|bytes| base64::engine::general_purpose::STANDARD.encode(bytes));
        }
        let body = serde_json::to_vec(&message)
            .map_err(|e| JobError::Failed(format!("publish: cannot encode the message: {e}")))?;
        let publisher = self.publisher(target)?;
        let ack = publisher
            .publish(&target.subject, &message.message_id(), body)
            .map_err(|e| JobError::Failed(e.to_string()))?;
        if ack.duplicate {
            // A republish of a job whose record was lost (a crash), or a version published again
            // within the duplicate window: said, as it is rare and explains a job not delivered.
            log::info!(
                "{} published again: dropped by the stream as a duplicate of #{}",
                job.path.display(),
                ack.sequence
            );
        } else {
            log::debug!(
                "published {} as {} #{}",
                job.path.display(),
                target.stream,
                ack.sequence
            );
        }
        Ok(())
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

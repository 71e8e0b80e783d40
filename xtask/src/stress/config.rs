//! The ward config the harness writes: its settings and its triggers, each of which names itself
//! on the job's command line, so that the ledger says which one ran a job.

use std::path::PathBuf;

/// The trigger's worker memory limit (`max_rss_mb`).
pub const MAX_RSS_MB: u64 = 128;
/// The address-space limit of the stress workers, which a `hog` runs into.
pub const WORKER_AS_MB: u64 = 512;
/// The job timeout: a `hang` costs three of them.
pub const JOB_TIMEOUT_S: u64 = 3;
/// Job threads.
pub const WORKERS: usize = 3;
/// Jobs that may wait in ward's queue.
pub const QUEUE_CAPACITY: usize = 256;

/// The config file of one ward setup.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    /// Where it is.
    pub path: PathBuf,
    /// The job program (`ward-stress-worker`).
    pub worker: PathBuf,
    /// The ledger the jobs append to.
    pub ledger: PathBuf,
}

impl ConfigFile {
    /// Writes the config in place of the file, whole (a reload must never read half of it).
    ///
    /// # Errors
    /// If it cannot be written.
    pub fn write(&self) -> std::io::Result<()> {
        let tmp = self.path.with_extension("toml.new");
        std::fs::write(&tmp, self.text())?;
        std::fs::rename(&tmp, &self.path)
    }

    /// The config text.
    pub fn text(&self) -> String {
        let (w, l) = (self.worker.display(), self.ledger.display());
        format!(
            r#"# Written by `cargo xtask stress`.
[watch]
roots = ["tree"]
debounce_ms = 50
max_wait_ms = 1000

[jobs]
workers = {WORKERS}
queue_capacity = {QUEUE_CAPACITY}
retries = 2
timeout_s = {JOB_TIMEOUT_S}
stop_grace_s = 2
drain_timeout_s = 10

[log]
heartbeat_s = 30
# Every injected death is looked for among the reports: keep them all.
keep_reports = 1000000

[[trigger]]
name = "exec"
glob = ["exec/**"]
exec = ["{w}", "exec", "{l}", "{WORKER_AS_MB}", "exec"]

[[trigger]]
name = "stress"
worker = ["{w}", "worker", "{l}", "{WORKER_AS_MB}", "stress"]
max_rss_mb = {MAX_RSS_MB}
"#
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_trigger_names_itself_last_on_its_command_line() {
        let config = ConfigFile {
            path: "/r/ward.toml".into(),
            worker: "/r/w".into(),
            ledger: "/r/ledger".into(),
        };
        let value: toml::Value = toml::from_str(&config.text()).expect("valid TOML");
        let triggers = value["trigger"].as_array().unwrap();
        let names: Vec<&str> = triggers
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["exec", "stress"]);
        for t in triggers {
            let argv = t.get("exec").or_else(|| t.get("worker")).unwrap();
            let last = argv.as_array().unwrap().last().unwrap().as_str().unwrap();
            assert_eq!(last, t["name"].as_str().unwrap());
        }
    }
}

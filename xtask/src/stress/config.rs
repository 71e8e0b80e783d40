//! The ward config the harness writes: its settings, its triggers (each names itself on the job's
//! command line, so the ledger says which one ran a job), and the generations of triggers the
//! `reload` fault steps through. What the config says a path goes to is [`trigger_for`].

use std::path::{Path, PathBuf};

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
/// ward's quiet window: changes at a path closer together than this are coalesced.
pub const DEBOUNCE_MS: u64 = 50;

/// The directories (children of the tree) whose names start with these go to the orphans'
/// trigger and to the reload fault's triggers.
pub const ORPHANS_PREFIX: &str = "orphans-";
pub const RELOAD_PREFIX: &str = "reload-";
/// The directory (a child of the tree) of the `nats` trigger, published and run by `ward work`.
pub const NATS_DIR: &str = "nats";

/// How long a job of the orphans' trigger leaves its background child running.
pub const ORPHAN_SLEEP: &str = "0.3";

/// The config file of one ward setup.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    /// Where it is.
    pub path: PathBuf,
    /// The job program (`ward-stress-worker`).
    pub worker: PathBuf,
    /// The ledger the jobs append to.
    pub ledger: PathBuf,
    /// The NATS server the `nats` trigger publishes to, when the run has one (`kill-nats`).
    pub nats: Option<String>,
    /// The watch backend asked for (`--backend`); ward's default (`auto`) without it.
    pub backend: Option<String>,
}

impl ConfigFile {
    /// Writes the config of reload generation `generation` in place of the file, whole (a
    /// reload must never read half of it).
    ///
    /// # Errors
    /// If it cannot be written.
    pub fn write(&self, generation: u32) -> std::io::Result<()> {
        let tmp = self.path.with_extension("toml.new");
        std::fs::write(&tmp, self.text(generation))?;
        std::fs::rename(&tmp, &self.path)
    }

    /// The config text of reload generation `generation`.
    pub fn text(&self, generation: u32) -> String {
        let (w, l) = (self.worker.display(), self.ledger.display());
        let reload = reload_triggers(generation)
            .iter()
            .map(|(name, glob, exec)| {
                let (key, mode) = if *exec {
                    ("exec", "exec")
                } else {
                    ("worker", "worker")
                };
                format!(
                    "[[trigger]]\nname = \"{name}\"\nglob = [\"{glob}\"]\n{key} = [\"{w}\", \"{mode}\", \"{l}\", \"{WORKER_AS_MB}\", \"{name}\"]\n"
                )
            })
            .collect::<Vec<_>>()
            .join("\n");
        let escaper_backoff = 0.5 + f64::from(generation % 2) / 10.0;
        // Published, and run by the run's `ward work` (`work_text`) into the same ledger. A
        // small window, so that a killed server fails few publishes at once.
        let nats = self.nats.as_ref().map_or_else(String::new, |url| {
            format!(
                "[[trigger]]\nname = \"nats\"\nglob = [\"{NATS_DIR}/**\"]\n\
                 publish = {{ url = \"{url}\", stream = \"{}\", max_unacked = 16 }}\n",
                super::nats::STREAM
            )
        });
        let backend = self
            .backend
            .as_ref()
            .map_or_else(String::new, |b| format!("backend = \"{b}\"\n"));
        format!(
            r#"# Written by `cargo xtask stress` (reload generation {generation}).
[watch]
roots = ["tree"]
debounce_ms = {DEBOUNCE_MS}
max_wait_ms = 1000
{backend}
[jobs]
workers = {WORKERS}
queue_capacity = {QUEUE_CAPACITY}
retries = 2
timeout_s = {JOB_TIMEOUT_S}
stop_grace_s = 2
drain_timeout_s = 10

[log]
heartbeat_s = 30
# Every injected death is looked for among the reports: keep them all (ward's most).
keep_reports = 100000

[[trigger]]
name = "exec"
glob = ["exec/**"]
exec = ["{w}", "exec", "{l}", "{WORKER_AS_MB}", "exec"]

# One run for every path that changed under batch/ in a settle window, the paths on stdin.
[[trigger]]
name = "batch"
glob = ["batch/**"]
batch = true
exec = ["{w}", "batch", "{l}", "{WORKER_AS_MB}", "batch"]

# A job that leaves a child behind: the job's process becomes the stress worker, and the
# `sleep` it started outlives it, re-parented to ward's keeper.
[[trigger]]
name = "orphans"
glob = ["{ORPHANS_PREFIX}*/**"]
exec = ["/bin/sh", "-c", "sleep {ORPHAN_SLEEP} >/dev/null 2>&1 & exec \"$0\" exec \"$1\" {WORKER_AS_MB} orphans", "{w}", "{l}"]

{reload}
{nats}
# A service whose worker leaves its process group (setsid) and is orphaned (its parent
# exits): only the service's cgroup holds it. `kill-keeper` then finds it alive unless the
# server, told of the keeper's death, stopped the service with everything in its cgroup. Each
# reload generation changes its backoff, so a `reload` replaces it: its old worker must go too.
[[service]]
name = "escaper"
# The worker's name (its $0) is in the run's directory, so the check that nothing of ward is
# left after the stop sees it.
command = ["/bin/sh", "-c", "setsid /bin/sh -c 'while :; do sleep 1; done' {l}.escaper-worker </dev/null >/dev/null 2>&1 & exec sleep 100000"]
restart = "always"
backoff_s = {escaper_backoff}

[[trigger]]
name = "stress"
worker = ["{w}", "worker", "{l}", "{WORKER_AS_MB}", "stress"]
max_rss_mb = {MAX_RSS_MB}
"#
        )
    }
}

impl ConfigFile {
    /// The config of the run's `ward work`: the `nats` trigger's jobs, run by the stress worker.
    pub fn work_text(&self) -> String {
        let (w, l) = (self.worker.display(), self.ledger.display());
        format!(
            "# Written by `cargo xtask stress`: the jobs of ward's `nats` trigger.\n\
             [jobs]\nretries = 2\nbackoff_s = 0.2\ntimeout_s = {JOB_TIMEOUT_S}\n\n\
             [[trigger]]\nname = \"nats\"\nexec = [\"{w}\", \"exec\", \"{l}\", \"{WORKER_AS_MB}\", \"nats\"]\n"
        )
    }
}

/// The reload fault's triggers in generation `generation`: (name, glob, whether exec rather than
/// a worker). Each generation renames both (a trigger removed and another added), and odd ones
/// put the catch-all first, so that it takes the `.txt` files its twin takes in even ones.
fn reload_triggers(generation: u32) -> [(String, String, bool); 2] {
    let txt = (
        format!("reload-g{generation}-txt"),
        format!("{RELOAD_PREFIX}*/**/*.txt"),
        false,
    );
    let any = (
        format!("reload-g{generation}-any"),
        format!("{RELOAD_PREFIX}*/**"),
        true,
    );
    if generation.is_multiple_of(2) {
        [txt, any]
    } else {
        [any, txt]
    }
}

/// The trigger the config of `generation` gives `relative`, a file's path relative to the tree.
pub fn trigger_for(relative: &Path, generation: u32) -> String {
    let first = relative
        .components()
        .next()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .unwrap_or_default();
    let nested = relative.components().count() > 1;
    if first == "exec" && nested {
        "exec".into()
    } else if first == "batch" && nested {
        "batch".into()
    } else if first == NATS_DIR && nested {
        "nats".into()
    } else if first.starts_with(ORPHANS_PREFIX) && nested {
        "orphans".into()
    } else if first.starts_with(RELOAD_PREFIX) && nested {
        let txt = relative.extension().is_some_and(|e| e == "txt");
        if txt && generation.is_multiple_of(2) {
            format!("reload-g{generation}-txt")
        } else {
            format!("reload-g{generation}-any")
        }
    } else {
        "stress".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trigger_of_a_path_follows_the_generation_in_the_reload_directories_only() {
        let t = |p: &str, g| trigger_for(Path::new(p), g);
        assert_eq!(t("exec/churn/f-1.txt", 0), "exec");
        assert_eq!(t("exec", 0), "stress", "a file named exec is no directory");
        assert_eq!(t("batch/churn/d1/f-2.txt", 1), "batch");
        assert_eq!(t("orphans-2/d000/f-1.txt", 5), "orphans");
        assert_eq!(t("steady/s-01.txt", 3), "stress");
        assert_eq!(t("reload-1/files/a-1.txt", 0), "reload-g0-txt");
        assert_eq!(t("reload-1/files/a-2.dat", 0), "reload-g0-any");
        assert_eq!(t("reload-1/files/a-1.txt", 1), "reload-g1-any");
        assert_eq!(t("reload-1/a-1.txt", 2), "reload-g2-txt");
        assert_eq!(t("nats/kill-1/before-3.txt", 1), "nats");
    }

    #[test]
    fn each_generation_renames_the_reload_triggers_and_odd_ones_reorder_them() {
        let config = ConfigFile {
            path: "/r/ward.toml".into(),
            worker: "/r/w".into(),
            ledger: "/r/ledger".into(),
            nats: Some("nats://127.0.0.1:4222".into()),
            backend: Some("inotify".into()),
        };
        for g in 0..4 {
            let text = config.text(g);
            let value: toml::Value = toml::from_str(&text).expect("valid TOML");
            let names: Vec<&str> = value["trigger"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["name"].as_str().unwrap())
                .collect();
            let (first, second) = if g % 2 == 0 {
                ("txt", "any")
            } else {
                ("any", "txt")
            };
            assert_eq!(
                names,
                [
                    "exec".to_owned(),
                    "batch".into(),
                    "orphans".into(),
                    format!("reload-g{g}-{first}"),
                    format!("reload-g{g}-{second}"),
                    "nats".into(),
                    "stress".into()
                ]
            );
            // Each names itself last on its command line, where the worker takes it from.
            for t in value["trigger"].as_array().unwrap() {
                let Some(argv) = t.get("exec").or_else(|| t.get("worker")) else {
                    assert!(t.get("publish").is_some(), "{t}");
                    continue;
                };
                let name = t["name"].as_str().unwrap();
                let named = argv.as_array().unwrap().iter().any(|a| {
                    a.as_str()
                        .is_some_and(|a| a == name || a.ends_with(&format!(" {name}")))
                });
                assert!(named, "{name}: {argv}");
            }
        }
    }
}

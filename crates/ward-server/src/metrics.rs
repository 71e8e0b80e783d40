//! What the server counts for Prometheus, and the text exposition of it. Not here: serving it
//! over HTTP (`server::metrics_http`), or the control socket's `metrics` command (`answers`).
//!
//! Counters are counted where things happen (a job's end, a death's report, a rescan, a change)
//! in one registry for the process, [`METRICS`]; values the server keeps anyway (queue depth,
//! watches, the manifest's sequence, memory, services) are copied into gauges when asked for,
//! from the same [`ServerStatus`] `ward status` shows, so the two never disagree.
//!
//! Every label's values are bounded: trigger and service names come from the config, roles,
//! outcomes, causes, reasons and events from closed lists; no label holds a path.

use std::sync::LazyLock;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::protocol::{ServerStatus, ServiceState};

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The process's metrics.
pub(crate) static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// How a job ended, in `ward_jobs_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JobOutcome {
    /// It succeeded (on its first attempt or a retry).
    Succeeded,
    /// An attempt failed and another follows.
    Retried,
    /// Its last attempt failed: it gave up.
    GaveUp,
    /// It was dropped unrun (a newer job of its path replaced it, or the server stopped).
    Dropped,
}

impl JobOutcome {
    fn as_str(self) -> &'static str {
        match self {
            JobOutcome::Succeeded => "succeeded",
            JobOutcome::Retried => "retried",
            JobOutcome::GaveUp => "gave_up",
            JobOutcome::Dropped => "dropped",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    trigger: String,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TriggerLabel {
    trigger: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeathLabels {
    role: String,
    cause: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RestartLabels {
    role: &'static str,
    name: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabel {
    event: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProcessLabel {
    process: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    service: String,
    state: &'static str,
}

/// A job duration histogram's buckets: 1 ms to about 4 minutes, each 2.5 times the last.
fn job_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.5, 14))
}

/// The registry and the handles to each metric in it.
pub(crate) struct Metrics {
    registry: Registry,
    jobs: Family<JobLabels, Counter>,
    remote_jobs: Family<JobLabels, Counter>,
    job_seconds: Family<TriggerLabel, Histogram, fn() -> Histogram>,
    deaths: Family<DeathLabels, Counter>,
    restarts: Family<RestartLabels, Counter>,
    rescans: Family<ReasonLabel, Counter>,
    changes: Family<EventLabel, Counter>,
    manifest_write_errors: Counter,
    queue_depth: Gauge,
    jobs_running: Gauge,
    watches: Gauge,
    inotify_limit: Gauge,
    manifest_seq: Gauge<u64, AtomicU64>,
    paused: Gauge,
    resident: Family<ProcessLabel, Gauge>,
    services: Family<ServiceLabels, Gauge>,
    /// The keeper's count of the server's restarts, as last copied into `restarts`.
    server_restarts_seen: parking_lot::Mutex<u32>,
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("ward");
        let m = Metrics {
            jobs: Family::default(),
            remote_jobs: Family::default(),
            job_seconds: Family::new_with_constructor(job_buckets),
            deaths: Family::default(),
            restarts: Family::default(),
            rescans: Family::default(),
            changes: Family::default(),
            manifest_write_errors: Counter::default(),
            queue_depth: Gauge::default(),
            jobs_running: Gauge::default(),
            watches: Gauge::default(),
            inotify_limit: Gauge::default(),
            manifest_seq: Gauge::default(),
            paused: Gauge::default(),
            resident: Family::default(),
            services: Family::default(),
            server_restarts_seen: parking_lot::Mutex::new(0),
            registry: Registry::default(),
        };
        registry.register(
            "jobs",
            "Jobs ended, by trigger and outcome (retried counts each failed attempt that is tried again)",
            m.jobs.clone(),
        );
        registry.register(
            "remote_jobs",
            "Deliveries of published jobs that remote workers (ward work) reported, by trigger and outcome",
            m.remote_jobs.clone(),
        );
        registry.register(
            "job_duration_seconds",
            "Time one attempt of a job ran, by trigger",
            m.job_seconds.clone(),
        );
        registry.register(
            "process_deaths",
            "Deaths the server witnessed (jobs, workers, batch runs, services), by role and cause",
            m.deaths.clone(),
        );
        registry.register(
            "restarts",
            "Restarts of the server (by the keeper) and of each service",
            m.restarts.clone(),
        );
        registry.register(
            "rescans",
            "Subtrees compared with the disk instead of watched change by change, by reason",
            m.rescans.clone(),
        );
        registry.register(
            "changes",
            "Changes of files taken from the watcher, by event",
            m.changes.clone(),
        );
        registry.register(
            "manifest_write_errors",
            "Writes to the manifest that failed (each is tried again)",
            m.manifest_write_errors.clone(),
        );
        registry.register(
            "queue_depth",
            "Jobs waiting: in the pool's queue and in the server's backlog",
            m.queue_depth.clone(),
        );
        registry.register("jobs_running", "Jobs running now", m.jobs_running.clone());
        registry.register(
            "watches",
            "Directories watched with inotify",
            m.watches.clone(),
        );
        registry.register(
            "inotify_max_user_watches",
            "The system's limit of inotify watches per user (fs.inotify.max_user_watches)",
            m.inotify_limit.clone(),
        );
        registry.register(
            "manifest_seq",
            "The manifest's change sequence number",
            m.manifest_seq.clone(),
        );
        registry.register(
            "paused",
            "1 while no job starts because memory is short ([jobs] min_available_mb)",
            m.paused.clone(),
        );
        registry.register_with_unit(
            "resident_memory",
            "Resident memory of ward's own processes",
            prometheus_client::registry::Unit::Bytes,
            m.resident.clone(),
        );
        registry.register(
            "service_state",
            "1 for each service's current state, 0 for the others",
            m.services.clone(),
        );
        Metrics { registry, ..m }
    }

    /// A job's attempt that ran for `took` ended as `outcome`.
    pub(crate) fn job_ended(&self, trigger: &str, outcome: JobOutcome) {
        self.jobs
            .get_or_create(&JobLabels {
                trigger: trigger.to_owned(),
                outcome: outcome.as_str(),
            })
            .inc();
    }

    /// A remote worker reported a delivery of a job `trigger` published as `outcome`
    /// (`succeeded`, `superseded`, `retried` or `gave_up`).
    #[cfg(feature = "nats")]
    pub(crate) fn remote_job(&self, trigger: &str, outcome: &'static str) {
        self.remote_jobs
            .get_or_create(&JobLabels {
                trigger: trigger.to_owned(),
                outcome,
            })
            .inc();
    }

    /// One attempt of a job of `trigger` ran for `took`.
    pub(crate) fn job_ran(&self, trigger: &str, took: Duration) {
        self.job_seconds
            .get_or_create(&TriggerLabel {
                trigger: trigger.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    /// A process playing `what` (`job NAME on PATH`, `service NAME`...) died of `cause` (a
    /// [`ward_crashdiag::Cause::kind`]): counted under the first word of `what`.
    pub(crate) fn died(&self, what: &str, cause: &'static str) {
        let role = what.split_whitespace().next().unwrap_or("unknown");
        self.deaths
            .get_or_create(&DeathLabels {
                role: role.to_owned(),
                cause,
            })
            .inc();
    }

    /// Service `name` was restarted.
    pub(crate) fn service_restarted(&self, name: &str) {
        self.restarts
            .get_or_create(&RestartLabels {
                role: "service",
                name: name.to_owned(),
            })
            .inc();
    }

    /// The watcher asked for a rescan for `reason`.
    pub(crate) fn rescanned(&self, reason: &'static str) {
        self.rescans.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// A change of kind `event` came from the watcher.
    pub(crate) fn changed(&self, event: &'static str) {
        self.changes.get_or_create(&EventLabel { event }).inc();
    }

    /// A write to the manifest failed.
    pub(crate) fn manifest_write_failed(&self) {
        self.manifest_write_errors.inc();
    }

    /// The text exposition of every metric, its gauges set from `status` first, and the
    /// server's restarts from the keeper's count (`keeper_restarts`), memory from `/proc`.
    pub(crate) fn render(&self, status: &ServerStatus, keeper_restarts: Option<u32>) -> String {
        let q = &status.queue;
        self.queue_depth
            .set(i64::try_from(q.queued + q.backlog).unwrap_or(i64::MAX));
        self.jobs_running
            .set(i64::try_from(q.running).unwrap_or(i64::MAX));
        self.watches
            .set(i64::try_from(status.watch.watches).unwrap_or(i64::MAX));
        if let Some(limit) = inotify_limit() {
            self.inotify_limit.set(limit);
        }
        self.manifest_seq.set(status.manifest.seq);
        self.paused.set(i64::from(q.held.is_some() || q.paused));
        for (process, pid) in [
            ("server", Some(std::process::id())),
            // The server's parent is its keeper.
            ("keeper", parent_pid()),
        ] {
            if let Some(bytes) = pid.and_then(resident_bytes) {
                self.resident
                    .get_or_create(&ProcessLabel { process })
                    .set(i64::try_from(bytes).unwrap_or(i64::MAX));
            }
        }
        if let Some(restarts) = keeper_restarts {
            let mut seen = self.server_restarts_seen.lock();
            let counter = self.restarts.get_or_create(&RestartLabels {
                role: "server",
                name: "server".into(),
            });
            if restarts > *seen {
                counter.inc_by(u64::from(restarts - *seen));
                *seen = restarts;
            }
        }
        for service in &status.services {
            for state in ALL_STATES {
                self.services
                    .get_or_create(&ServiceLabels {
                        service: service.name.clone(),
                        state: state.as_str(),
                    })
                    .set(i64::from(service.state == state));
            }
        }
        let mut text = String::new();
        if let Err(e) =
            prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)
        {
            // Writing into a String fails only if a metric's own encoding does: said, and what
            // was written is served.
            log::error!("encoding the metrics: {e}");
        }
        text
    }
}

const ALL_STATES: [ServiceState; 6] = [
    ServiceState::Waiting,
    ServiceState::Starting,
    ServiceState::Running,
    ServiceState::BackingOff,
    ServiceState::GaveUp,
    ServiceState::Stopped,
];

fn inotify_limit() -> Option<i64> {
    std::fs::read_to_string("/proc/sys/fs/inotify/max_user_watches")
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn parent_pid() -> Option<u32> {
    // SAFETY: getppid has no preconditions and cannot fail.
    let ppid = unsafe { libc::getppid() };
    u32::try_from(ppid).ok().filter(|&p| p > 1)
}

/// `VmRSS` of process `pid`, in bytes.
fn resident_bytes(pid: u32) -> Option<u64> {
    let kib = ward_sys::ProcStatus::read(pid).ok()?.kib("VmRSS")?;
    Some(kib * 1024)
}

//! The server's services (`[[service]]`): started with the server, kept running under their
//! restart policies, each death reported, stopped after intake in reverse order of declaration.
//! Not here: what a service is (`config::service`), or jobs (`dispatch`).
//!
//! The services run under one ward-supervisor [`Supervisor`], rather than a `Child` and
//! `RestartTracker` per service driven from the server's loop: the supervisor's thread is the
//! parent of every service process for as long as the server runs (the parent-death signal
//! follows the thread that forked), reaps them and restarts them on its own timers, so the
//! server's loop, which may be busy reloading or draining, never delays a restart; the loop only
//! asks it for a status. Its event callback (on the supervisor's thread) writes the crash
//! reports and keeps what the status needs that the supervisor does not know (start time, last
//! cause).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use ward_crashdiag::OomCounters;
use ward_supervisor::{
    ChildId, ChildSpec, ChildState, EventKind, OutputTail, StopReason, Supervisor,
};

use crate::config::{Config, Service};
use crate::deaths::{self, Reported};
use crate::dispatch::{oom_before, with_settings};
use crate::output::{JOB_SHARE, LogShare};
use crate::protocol::{ServiceState, ServiceStatus};
use crate::state::StateDir;

/// Lines of a service's output kept for its crash report.
const TAIL_LINES: usize = 40;

/// What the status needs of a service that the supervisor does not keep.
#[derive(Debug, Default)]
struct Record {
    /// When its current process started.
    started: Option<Instant>,
    /// How its last process ended, in words.
    last_cause: Option<String>,
    /// The OOM counters read at its last start, for the report of its death.
    oom_before: Option<OomCounters>,
}

/// The running services.
///
/// **Invariant:** once [`stop`](Self::stop) returns (or the value is dropped), no process of any
/// service is alive: each was stopped through its group, and the supervisor's reaper SIGKILLs
/// what a leader leaves in its group.
#[derive(Debug)]
pub(crate) struct Services {
    /// Each service with its id in the supervisor, in the order declared; `Err` holds why it
    /// could not be started at all.
    declared: Vec<(String, Result<ChildId, String>)>,
    records: Arc<Mutex<BTreeMap<String, Record>>>,
    // Last: dropping it stops whatever still runs.
    supervisor: Option<Supervisor>,
}

impl Services {
    /// Starts `config`'s services, in order. A service that cannot be started is logged and
    /// shown as given up; the others and the rest of ward run on.
    ///
    /// # Errors
    /// If there are services and the supervisor's thread cannot be started.
    pub(crate) fn start(config: &Config, state: &StateDir) -> Result<Services, crate::Error> {
        let records: Arc<Mutex<BTreeMap<String, Record>>> = Arc::default();
        if config.services.is_empty() {
            return Ok(Services {
                declared: Vec::new(),
                records,
                supervisor: None,
            });
        }
        let tails: BTreeMap<String, OutputTail> = config
            .services
            .iter()
            .map(|s| (s.name.clone(), OutputTail::new(TAIL_LINES)))
            .collect();
        let settings: BTreeMap<String, Service> = config
            .services
            .iter()
            .map(|s| (s.name.clone(), s.clone()))
            .collect();
        let on_event = {
            let (records, tails) = (Arc::clone(&records), tails.clone());
            let (config, state) = (config.clone(), state.clone());
            move |event: &ward_supervisor::Event| {
                on_event(event, &records, &tails, &settings, &config, &state);
            }
        };
        let supervisor = Supervisor::new(on_event).map_err(|source| crate::Error::Supervisor {
            what: "services' supervisor",
            source,
        })?;
        let mut declared = Vec::with_capacity(config.services.len());
        for service in &config.services {
            let tail = tails[&service.name].clone();
            let added = supervisor
                .add(spec(service, tail), service.restart_policy())
                .map_err(|e| {
                    let why = format!("cannot start: {e}");
                    log::error!("service {}: {why}; ward runs on without it", service.name);
                    records
                        .lock()
                        .entry(service.name.clone())
                        .or_default()
                        .last_cause = Some(why.clone());
                    why
                });
            declared.push((service.name.clone(), added));
        }
        Ok(Services {
            declared,
            records,
            supervisor: Some(supervisor),
        })
    }

    /// Each service's status, in the order declared.
    pub(crate) fn status(&self) -> Vec<ServiceStatus> {
        let Some(supervisor) = &self.supervisor else {
            return Vec::new();
        };
        let children = supervisor.statuses().unwrap_or_default();
        let records = self.records.lock();
        self.declared
            .iter()
            .map(|(name, id)| {
                let record = records.get(name);
                let last_cause = record.and_then(|r| r.last_cause.clone());
                let child = id
                    .as_ref()
                    .ok()
                    .and_then(|id| children.iter().find(|c| c.id == *id));
                let Some(child) = child else {
                    return ServiceStatus {
                        name: name.clone(),
                        state: ServiceState::GaveUp,
                        pid: None,
                        uptime_s: 0,
                        restarts: 0,
                        last_cause,
                    };
                };
                let uptime_s = match (child.pid, record.and_then(|r| r.started)) {
                    (Some(_), Some(started)) => started.elapsed().as_secs(),
                    _ => 0,
                };
                ServiceStatus {
                    name: name.clone(),
                    state: match child.state {
                        ChildState::Starting => ServiceState::Starting,
                        ChildState::Running => ServiceState::Running,
                        ChildState::BackingOff => ServiceState::BackingOff,
                        ChildState::GaveUp => ServiceState::GaveUp,
                        _ => ServiceState::Stopped,
                    },
                    pid: child.pid,
                    uptime_s,
                    restarts: child.restarts,
                    last_cause,
                }
            })
            .collect()
    }

    /// Stops every service, in reverse order of declaration, each through its stop signal to its
    /// group and SIGKILL after its grace, and waits until all are reaped.
    pub(crate) fn stop(mut self) {
        let Some(supervisor) = self.supervisor.take() else {
            return;
        };
        for (name, id) in self.declared.iter().rev() {
            let Ok(id) = id else { continue };
            log::info!("stopping service {name}");
            if let Err(e) = supervisor.stop_child(*id) {
                log::error!("stopping service {name}: {e}");
            }
        }
        if let Err(e) = supervisor.shutdown() {
            log::error!("stopping the services' supervisor: {e}");
        }
    }
}

/// The child spec of `service`: its command and settings, its output into the log under its name
/// and into `tail`.
fn spec(service: &Service, tail: OutputTail) -> ChildSpec {
    let spec = ChildSpec::new(&service.command[0])
        .name(service.name.clone())
        .args(&service.command[1..]);
    let name = service.name.clone();
    // A share of the log per minute, as a job has one per run (a service's run may last for
    // weeks): a service printing a flood must not rotate ward's own history away.
    let share = LogShare::new(JOB_SHARE);
    let renewed = Mutex::new(Instant::now());
    // One pipe: the log shows stdout and stderr in the order the service wrote them.
    with_settings(spec, &service.process).capture_merged(move |line| {
        tail.push(line);
        {
            let mut at = renewed.lock();
            if at.elapsed() >= SHARE_WINDOW {
                *at = Instant::now();
                if let Some(held) = share.take_held(JOB_SHARE) {
                    log::warn!(
                        "service {name}: {} line(s) of output ({} bytes) not logged, {} lost: a service logs at most {} KiB a minute",
                        held.lines,
                        held.bytes,
                        held.lost,
                        JOB_SHARE / 1024
                    );
                }
            }
        }
        if share.admit(&line.text, line.dropped_before) {
            log::info!("service {name} [{}]: {}", line.pid, line.text);
        }
    })
}

/// How often a service's share of the log is renewed.
const SHARE_WINDOW: Duration = Duration::from_secs(60);

/// What the server does on each of the supervisor's events: keeps the status' records, logs, and
/// writes the crash report of every death.
fn on_event(
    event: &ward_supervisor::Event,
    records: &Mutex<BTreeMap<String, Record>>,
    tails: &BTreeMap<String, OutputTail>,
    settings: &BTreeMap<String, Service>,
    config: &Config,
    state: &StateDir,
) {
    let name = &event.name;
    match &event.kind {
        EventKind::Started { pid } => {
            log::info!("service {name} started, pid {pid}");
            let oom = settings.get(name).and_then(|s| oom_before(&s.process));
            let mut records = records.lock();
            let record = records.entry(name.clone()).or_default();
            record.started = Some(Instant::now());
            record.oom_before = oom;
        }
        EventKind::Exited(exit) => {
            let oom = {
                let mut records = records.lock();
                let record = records.entry(name.clone()).or_default();
                record.started = None;
                record.oom_before.take()
            };
            let cause = if exit.is_clean() || exit.stop_requested {
                log::info!("service {name} (pid {}) {}", exit.pid, exit.termination);
                exit.termination.to_string()
            } else {
                let tail = tails.get(name).map(|t| {
                    t.lines()
                        .iter()
                        .map(|l| l.text.as_str())
                        .collect::<Vec<_>>()
                        .join("\n")
                });
                // Logs the verdict with the report's place.
                let what = format!("service {name}");
                deaths::report(state, config, &what, exit, tail.as_deref(), oom)
                    .map_or_else(|| exit.termination.to_string(), |r: Reported| r.cause)
            };
            records.lock().entry(name.clone()).or_default().last_cause = Some(cause);
        }
        EventKind::Restarting { after, attempt } => {
            log::info!("service {name}: restarting in {after:?} (attempt {attempt})");
        }
        EventKind::SpawnFailed(e) => {
            log::error!("service {name}: cannot start again: {e}");
            records.lock().entry(name.clone()).or_default().last_cause =
                Some(format!("cannot start: {e}"));
        }
        EventKind::GaveUp(why) => {
            log::error!(
                "service {name} gave up: {why}; it stays down until ward restarts, the rest of ward runs on"
            );
        }
        EventKind::Stopped(StopReason::Requested) => log::info!("service {name} stopped"),
        EventKind::Stopped(why) => log::info!("service {name} stopped: {why}"),
        _ => {}
    }
}

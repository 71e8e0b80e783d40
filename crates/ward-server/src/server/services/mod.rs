//! The server's services (`[[service]]`): started with the server (each once what it depends on
//! is ready), kept running under their restart policies, ready and alive as their checks say,
//! restarted when their sources change or on request, each death reported, stopped after intake
//! in reverse order. Not here: what a service is (`config::service`), or jobs (`dispatch`).
//!
//! The processes run under one ward-supervisor [`Supervisor`](ward_supervisor::Supervisor): its
//! thread is the parent of every service process for as long as the server runs (the
//! parent-death signal follows the thread that forked), reaps them and restarts them on its own
//! timers, so a restart never waits for anything else. Around it, one thread of this module's
//! ([`run`]) turns the supervisor's events, the services' notify messages, changed files and
//! requests into what services need beyond a policy: order, readiness, watchdogs, crash reports.
//! The server's loop only hands it changes and reads the status it keeps.

mod notify;
mod output;
mod probe;
mod run;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use globset::{Glob, GlobSet, GlobSetBuilder};
use parking_lot::Mutex;
use ward_supervisor::Supervisor;
use ward_watch::Batch;

use crate::config::Config;
use crate::protocol::{ServiceAction, ServiceDone, ServiceStatus};
use crate::state::StateDir;
use run::{Input, Loop, Shown};

/// The directory of the services' notify sockets, in the state directory.
const NOTIFY_DIR: &str = "services";

/// How long a request waits beyond what the action itself may take (a stop's grace, a start's
/// readiness timeout).
const ACT_MARGIN: Duration = Duration::from_secs(10);

/// Where requests for the services go: made before the control socket (which hands requests
/// over) and before the services start (which then read them).
pub(crate) fn requests() -> (Requests, Inbox) {
    let (tx, rx) = crossbeam_channel::bounded(16);
    let shown: Arc<Mutex<Vec<Shown>>> = Arc::default();
    (
        Requests {
            inputs: tx.clone(),
            shown: Arc::clone(&shown),
        },
        Inbox { tx, rx, shown },
    )
}

/// The services' end of [`requests`].
pub(crate) struct Inbox {
    tx: Sender<Input>,
    rx: Receiver<Input>,
    shown: Arc<Mutex<Vec<Shown>>>,
}

/// Asks the services' loop to start, stop or restart a service; cheap to clone, one per control
/// thread.
#[derive(Clone)]
pub(crate) struct Requests {
    inputs: Sender<Input>,
    /// The services there are, to refuse an unknown name at once (the loop may not run at all).
    shown: Arc<Mutex<Vec<Shown>>>,
}

impl Requests {
    /// Does `action` to service `name` and answers once it is done: stopped, or started and
    /// ready. Waits at most `wait`.
    ///
    /// # Errors
    /// The message to send back: no such service, the action failed, it ended before it was
    /// ready, or it took longer than `wait`.
    pub(crate) fn act(
        &self,
        name: String,
        action: ServiceAction,
        wait: Duration,
    ) -> Result<ServiceDone, String> {
        let known: Vec<String> = self
            .shown
            .lock()
            .iter()
            .filter(|s| !s.removed)
            .map(|s| s.name.clone())
            .collect();
        if !known.contains(&name) {
            return Err(if known.is_empty() {
                format!("no service {name:?}: the config has none")
            } else {
                format!("no service {name:?}: the services are {}", known.join(", "))
            });
        }
        let (reply, answer) = crossbeam_channel::bounded(1);
        self.inputs
            .send_timeout(
                Input::Act {
                    name,
                    action,
                    reply,
                },
                wait,
            )
            .map_err(|_| "the services' loop is busy or gone".to_owned())?;
        answer
            .recv_timeout(wait)
            .map_err(|_| format!("no answer within {wait:?}: see ward status and ward logs"))?
    }
}

/// The longest a service request may need: the longest stop grace, plus the longest readiness
/// timeout, plus a margin.
pub(crate) fn act_wait(config: &Config) -> Duration {
    let grace = config
        .services
        .iter()
        .map(|s| s.process.stop_grace)
        .max()
        .unwrap_or_default();
    let ready = config
        .services
        .iter()
        .filter_map(|s| s.ready.as_ref().map(|r| r.timeout))
        .max()
        .unwrap_or_default();
    grace + ready + ACT_MARGIN
}

/// The running services.
///
/// **Invariant:** once [`stop`](Self::stop) returns (or the value is dropped), no process of any
/// service is alive: each was stopped through its group (and, where one could be made, its
/// cgroup, which also holds what left the group), and the supervisor SIGKILLs what a leader
/// leaves behind.
pub(crate) struct Services {
    shown: Arc<Mutex<Vec<Shown>>>,
    inputs: Sender<Input>,
    /// Each service with `restart_on`: its name and its globs.
    sources: Vec<(String, GlobSet)>,
    roots: Vec<PathBuf>,
    /// What starting the loop needs, until it is started (no service yet; a reload may add
    /// some).
    unstarted: Option<(Receiver<Input>, Config, StateDir)>,
    // Last: joined by `stop`, or by the drop.
    thread: Option<JoinHandle<()>>,
}

impl Services {
    /// Starts `config`'s services, each once its dependencies are ready. A service that cannot
    /// be started is logged and shown as given up; the others and the rest of ward run on.
    ///
    /// # Errors
    /// If there are services and the supervisor's thread or the loop's cannot be started.
    pub(crate) fn start(
        config: &Config,
        state: &StateDir,
        inbox: Inbox,
    ) -> Result<Services, crate::Error> {
        let mut services = Services {
            shown: inbox.shown,
            inputs: inbox.tx,
            sources: sources(config),
            roots: config.roots.clone(),
            unstarted: Some((inbox.rx, config.clone(), state.clone())),
            thread: None,
        };
        if !config.services.is_empty() {
            services.start_loop()?;
        }
        Ok(services)
    }

    fn start_loop(&mut self) -> Result<(), crate::Error> {
        let Some((rx, config, state)) = self.unstarted.take() else {
            return Ok(());
        };
        let cgroups = match ward_supervisor::probe_memory_cgroup() {
            Ok(_) => true,
            Err(e) => {
                log::warn!(
                    "services run without a cgroup of their own ({e}): stopping one stops its process group, but a process it started that left the group (setsid, a double fork) lives on"
                );
                false
            }
        };
        let (supervisor, events) =
            Supervisor::with_channel().map_err(|source| crate::Error::Supervisor {
                what: "services' supervisor",
                source,
            })?;
        let looped = Loop::new(
            &config,
            &state,
            supervisor,
            events,
            (self.inputs.clone(), rx),
            Arc::clone(&self.shown),
            cgroups,
        );
        let thread = std::thread::Builder::new()
            .name("ward-services".into())
            .spawn(move || looped.run())
            .map_err(|e| crate::Error::io("starting the services' thread", e))?;
        self.thread = Some(thread);
        Ok(())
    }

    /// A reload's `config`: its services replace the running ones (the removed stopped, the
    /// changed restarted as they are now, the new started), and its `restart_on` globs apply.
    pub(crate) fn apply(&mut self, config: &Config) {
        self.sources = sources(config);
        if self.thread.is_none() {
            if config.services.is_empty() {
                return;
            }
            if let Some((_, started_with, _)) = &mut self.unstarted {
                // Started as this config says, with nothing to replace.
                *started_with = config.clone();
            }
            if let Err(e) = self.start_loop() {
                log::error!("reload: the services cannot be started: {e}");
            }
            return;
        }
        if self
            .inputs
            .send_timeout(Input::Apply(config.services.clone()), APPLY_WAIT)
            .is_err()
        {
            log::error!(
                "reload: the services' loop did not take the new services; they run as before"
            );
        }
    }

    /// Each service's status, in the order declared.
    pub(crate) fn status(&self) -> Vec<ServiceStatus> {
        self.shown
            .lock()
            .iter()
            .filter(|s| !s.removed)
            .map(|s| ServiceStatus {
                name: s.name.clone(),
                state: s.state,
                pid: s.pid,
                uptime_s: s.started.map_or(0, |t| t.elapsed().as_secs()),
                restarts: s.restarts,
                last_cause: s.last_cause.clone(),
            })
            .collect()
    }

    /// Hands the changes of `batch` that a service's `restart_on` matches to the services'
    /// loop, which restarts each such service once per settle window.
    pub(crate) fn changed(&self, batch: &Batch) {
        if self.sources.is_empty() {
            return;
        }
        for change in batch.changes() {
            let Some(relative) = self
                .roots
                .iter()
                .find_map(|root| change.path.strip_prefix(root).ok())
            else {
                continue;
            };
            for (name, globs) in &self.sources {
                if matches(globs, relative) {
                    // Full: the loop is behind on these already; the restart they ask for
                    // is asked anyway by those it has.
                    let _ = self.inputs.try_send(Input::Changed {
                        name: name.clone(),
                        path: change.path.clone(),
                    });
                }
            }
        }
    }

    /// Stops every service, dependents first, each through its stop signal to its group and
    /// SIGKILL after its grace, and waits until all are reaped. Once is enough: later calls
    /// find nothing to stop.
    pub(crate) fn stop(&mut self) {
        self.join();
    }

    fn join(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        if self.inputs.send(Input::Stop).is_err() {
            log::error!("the services' loop ended before it was asked to");
        }
        if thread.join().is_err() {
            log::error!("the services' loop panicked");
        }
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        self.join();
    }
}

/// How long a reload waits for the services' loop to take the new services.
const APPLY_WAIT: Duration = Duration::from_secs(5);

/// The `restart_on` globs of `config`'s services, compiled, by service name.
fn sources(config: &Config) -> Vec<(String, GlobSet)> {
    config
        .services
        .iter()
        .filter_map(|s| Some((s.name.clone(), compile(&s.restart_on)?)))
        .collect()
}

/// The globs of a `restart_on` (checked when the config was read), compiled; `None` when there
/// are none.
fn compile(globs: &[String]) -> Option<GlobSet> {
    if globs.is_empty() {
        return None;
    }
    let mut builder = GlobSetBuilder::new();
    for glob in globs {
        match Glob::new(glob) {
            Ok(glob) => {
                builder.add(glob);
            }
            Err(e) => log::error!("restart_on glob {glob:?}: {e}"),
        }
    }
    builder
        .build()
        .map_err(|e| log::error!("restart_on globs: {e}"))
        .ok()
}

/// Whether `relative` (a path relative to its watch root) matches, as a trigger's globs do: a
/// glob without a slash matches the file name anywhere.
fn matches(globs: &GlobSet, relative: &Path) -> bool {
    globs.is_match(relative) || relative.file_name().is_some_and(|n| globs.is_match(n))
}

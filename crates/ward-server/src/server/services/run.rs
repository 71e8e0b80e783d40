//! The services' loop: one thread that starts each service once what it depends on is ready,
//! waits for it to be ready, watches that it stays alive, restarts it when its sources change
//! or on request, writes the crash report of each death, and stops them all in reverse order.
//! Not here: the processes themselves, which ward-supervisor's [`Supervisor`] spawns, reaps and
//! restarts by policy; the readiness checks (`probe`) and the notify socket (`notify`).

use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, Sender, select};
use parking_lot::Mutex;
use ward_crashdiag::OomCounters;
use ward_supervisor::{
    ChildId, ChildSpec, Event, EventKind, Exit, OutputTail, StopReason, Supervisor,
};

use super::notify::{Notice, NotifySocket};
use super::output;
use super::probe::Probing;
use crate::config::{Config, Probe, Service};
use crate::deaths::{self, Reported};
use crate::dispatch::{DUMP_WAIT, oom_before};
use crate::protocol::{ServiceAction, ServiceDone, ServiceState};
use crate::state::StateDir;

/// Lines of a service's output kept for its crash report.
const TAIL_LINES: usize = 40;

/// What the loop is asked from outside.
pub(super) enum Input {
    /// `ward service start|stop|restart NAME`; the answer goes to `reply`.
    Act {
        name: String,
        action: ServiceAction,
        reply: Sender<Result<ServiceDone, String>>,
    },
    /// A file matched by the `restart_on` of service `name` changed.
    Changed { name: String, path: PathBuf },
    /// A reload's services.
    Apply(Vec<Service>),
    /// The old process of unit `unit`, which a reload changed or removed, is gone.
    Replaced { unit: usize },
    /// A blocking action, done on a thread of its own, ended.
    Acted {
        unit: usize,
        action: ServiceAction,
        result: Result<(), String>,
        reply: Sender<Result<ServiceDone, String>>,
    },
    /// Stop every service, in reverse order, and end the loop.
    Stop,
}

/// What `ward status` shows of a service, kept up to date by the loop.
#[derive(Debug, Clone)]
pub(super) struct Shown {
    pub name: String,
    pub state: ServiceState,
    pub pid: Option<u32>,
    pub started: Option<Instant>,
    pub restarts: u32,
    pub last_cause: Option<String>,
    /// Removed by a reload: not shown.
    pub removed: bool,
}

/// One service as the loop keeps it.
struct Unit {
    service: Service,
    /// Its id in the supervisor, once it was started the first time.
    id: Option<ChildId>,
    /// Stopped on request, or not startable: its dependencies being ready does not start it.
    held: bool,
    /// Removed by a reload: it never runs again, and the status no longer shows it.
    retired: bool,
    /// What a reload changed it to, taken once its old process is gone.
    replacing: Option<Service>,
    /// The current process, while one runs.
    pid: Option<u32>,
    started: Option<Instant>,
    ready: bool,
    probing: Option<Probing>,
    /// When its watchdog fires unless it shows life.
    alive_by: Option<Instant>,
    /// The heartbeat file's last modification seen.
    heartbeat_seen: Option<SystemTime>,
    /// When the restart its changed sources asked for is due, and what changed.
    restart_at: Option<(Instant, PathBuf, usize)>,
    /// Restarts on request or by change in flight (on a thread of their own).
    acting: bool,
    /// Processes started so far: each after the first is a restart.
    starts: u32,
    /// Who waits for it to be ready (`ward service start|restart`).
    ready_waiters: Vec<(ServiceAction, Sender<Result<ServiceDone, String>>)>,
    oom_before: Option<OomCounters>,
    /// Deaths whose report waits for the last of their output.
    unreported: Vec<(Exit, Option<OomCounters>)>,
    tail: OutputTail,
    notify: Option<NotifySocket>,
}

/// The loop's state; [`run`](Self::run) is the loop.
pub(super) struct Loop {
    units: Vec<Unit>,
    /// Indexes into `units`, dependencies first.
    order: Vec<usize>,
    /// Taken at the stop, to shut it down.
    supervisor: Option<Arc<Supervisor>>,
    events: Receiver<Event>,
    notices: Receiver<Notice>,
    /// For the notify sockets of services a reload adds.
    notice_tx: Sender<Notice>,
    inputs: Receiver<Input>,
    /// For the threads that do blocking actions to report back.
    own: Sender<Input>,
    shown: Arc<Mutex<Vec<Shown>>>,
    config: Config,
    state: StateDir,
    /// Whether each service gets a cgroup of its own.
    cgroups: bool,
    /// How long changes to a service's sources gather before the one restart they cause.
    settle: Duration,
    /// Threads doing blocking actions; joined as they end and before the loop does.
    helpers: Vec<JoinHandle<()>>,
}

impl Loop {
    /// The loop over `config`'s services; nothing runs until [`run`](Self::run).
    #[allow(clippy::too_many_arguments)] // The loop's channels and what it reports to, once.
    pub(super) fn new(
        config: &Config,
        state: &StateDir,
        supervisor: Supervisor,
        events: Receiver<Event>,
        inputs: (Sender<Input>, Receiver<Input>),
        shown: Arc<Mutex<Vec<Shown>>>,
        cgroups: bool,
    ) -> Loop {
        let (notice_tx, notices) = crossbeam_channel::bounded(64);
        let mut looped = Loop {
            order: Vec::new(),
            units: Vec::new(),
            supervisor: Some(Arc::new(supervisor)),
            events,
            notices,
            notice_tx,
            inputs: inputs.1,
            own: inputs.0,
            shown,
            config: config.clone(),
            state: state.clone(),
            cgroups,
            settle: config.debounce.max(Duration::from_millis(100)),
            helpers: Vec::new(),
        };
        for service in &config.services {
            looped.push(service.clone());
        }
        looped.reorder();
        looped
    }

    /// Adds a unit for `service` (not started yet), with its notify socket if it needs one.
    fn push(&mut self, service: Service) {
        let i = self.units.len();
        let notify = self.notify_socket(i, &service);
        self.shown.lock().push(Shown {
            name: service.name.clone(),
            state: ServiceState::Waiting,
            pid: None,
            started: None,
            restarts: 0,
            last_cause: None,
            removed: false,
        });
        self.units.push(Unit {
            service,
            id: None,
            held: false,
            retired: false,
            replacing: None,
            pid: None,
            started: None,
            ready: false,
            probing: None,
            alive_by: None,
            heartbeat_seen: None,
            restart_at: None,
            acting: false,
            starts: 0,
            ready_waiters: Vec::new(),
            oom_before: None,
            unreported: Vec::new(),
            tail: OutputTail::new(TAIL_LINES),
            notify,
        });
    }

    /// The notify socket of unit `i` running `service`, if it needs one.
    fn notify_socket(&self, i: usize, service: &Service) -> Option<NotifySocket> {
        if !service.uses_notify() {
            return None;
        }
        let path = self
            .state
            .join(super::NOTIFY_DIR)
            .join(format!("{i}.notify"));
        match NotifySocket::bind(&path, i, self.notice_tx.clone()) {
            Ok(socket) => Some(socket),
            Err(e) => {
                log::error!(
                    "service {}: cannot make its notify socket {}: {e}; it can never be ready or show life",
                    service.name,
                    path.display()
                );
                None
            }
        }
    }

    /// The start order of the units that are not retired.
    fn reorder(&mut self) {
        let live: Vec<usize> = (0..self.units.len())
            .filter(|&i| !self.units[i].retired)
            .collect();
        let services: Vec<Service> = live
            .iter()
            .map(|&i| self.units[i].service.clone())
            .collect();
        self.order = crate::config::start_order(&services)
            .into_iter()
            .map(|k| live[k])
            .collect();
    }

    /// A reload's services: the removed stopped (and forgotten), the changed stopped and started
    /// again as they are now, the new started, each once what it depends on is ready; the
    /// unchanged left running.
    fn apply(&mut self, services: Vec<Service>) {
        for i in 0..self.units.len() {
            if self.units[i].retired {
                continue;
            }
            let name = self.units[i].service.name.clone();
            match services.iter().find(|s| s.name == name) {
                Some(s) if *s == self.units[i].service => {}
                Some(s) => {
                    log::info!("reload: service {name} changed: restarting it as it is now");
                    self.replace(i, Some(s.clone()));
                }
                None => {
                    log::info!("reload: service {name} removed: stopping it");
                    self.replace(i, None);
                }
            }
        }
        for service in services {
            if !self
                .units
                .iter()
                .any(|u| !u.retired && u.service.name == service.name)
            {
                log::info!("reload: service {} added", service.name);
                self.push(service);
            }
        }
        self.reorder();
        self.start_ready_ones();
    }

    /// Unit `i`'s process is stopped and its child forgotten; then the unit runs `with`, or is
    /// retired for good without it.
    fn replace(&mut self, i: usize, with: Option<Service>) {
        let unit = &mut self.units[i];
        unit.held = true;
        unit.probing = None;
        unit.restart_at = None;
        match with {
            None => unit.retired = true,
            Some(service) => unit.replacing = Some(service),
        }
        let (Some(id), Some(supervisor)) = (unit.id, self.supervisor.clone()) else {
            self.replaced(i);
            return;
        };
        let own = self.own.clone();
        let name = unit.service.name.clone();
        let thread = std::thread::Builder::new()
            .name("ward-service-act".into())
            .spawn(move || {
                if let Err(e) = supervisor
                    .stop_child(id)
                    .and_then(|()| supervisor.remove_child(id))
                {
                    log::error!("reload: stopping service {name}: {e}");
                }
                let _ = own.send(Input::Replaced { unit: i });
            });
        match thread {
            Ok(thread) => self.helpers.push(thread),
            Err(e) => log::error!("reload: cannot start a thread to stop a service: {e}"),
        }
    }

    /// Unit `i`'s old process is gone: it takes its new settings and is started once what it
    /// depends on is ready, or, retired, leaves the status.
    fn replaced(&mut self, i: usize) {
        let unit = &mut self.units[i];
        unit.id = None;
        unit.pid = None;
        unit.started = None;
        unit.ready = false;
        unit.alive_by = None;
        for (_, waiter) in unit.ready_waiters.drain(..) {
            let _ = waiter.send(Err("the service was changed by a reload meanwhile".into()));
        }
        if unit.retired {
            unit.notify = None;
            self.show(i, |s| s.removed = true);
            return;
        }
        if let Some(service) = unit.replacing.take() {
            unit.service = service;
            unit.held = false;
            unit.starts = 0;
            unit.notify = None;
            let notify = self.notify_socket(i, &self.units[i].service.clone());
            self.units[i].notify = notify;
            self.show(i, |s| {
                s.state = ServiceState::Waiting;
                s.restarts = 0;
            });
            self.reorder();
            self.start_ready_ones();
        }
    }

    /// Starts the services whose dependencies are ready (at first, those without any).
    pub(super) fn start_ready_ones(&mut self) {
        for i in self.order.clone() {
            let unit = &self.units[i];
            if unit.id.is_some() || unit.held {
                continue;
            }
            let deps_ready = unit
                .service
                .depends_on
                .iter()
                .all(|dep| self.units.iter().any(|u| u.service.name == *dep && u.ready));
            if deps_ready {
                self.add(i);
            }
        }
    }

    /// Starts unit `i` the first time.
    fn add(&mut self, i: usize) {
        let spec = self.spec(i);
        let Some(supervisor) = &self.supervisor else {
            return;
        };
        let unit = &mut self.units[i];
        unit.oom_before = oom_before(&unit.service.process);
        match supervisor.add(spec, unit.service.restart_policy()) {
            Ok(id) => unit.id = Some(id),
            Err(e) => {
                let why = format!("cannot start: {e}");
                log::error!(
                    "service {}: {why}; ward runs on without it",
                    unit.service.name
                );
                unit.held = true;
                self.show(i, |s| {
                    s.state = ServiceState::GaveUp;
                    s.last_cause = Some(why);
                });
            }
        }
    }

    /// The child spec of unit `i`: its command and settings, its output into the log under its
    /// name and into its tail, its notify socket.
    fn spec(&self, i: usize) -> ChildSpec {
        let unit = &self.units[i];
        let service = &unit.service;
        let mut spec = output::spec(service, unit.tail.clone())
            // Ward's own, if it runs under systemd, are not the service's to use.
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID");
        if let Some(socket) = &unit.notify {
            spec = spec.env("NOTIFY_SOCKET", socket.path());
        }
        if let Some(watchdog) = &service.watchdog
            && watchdog.file.is_none()
        {
            spec = spec.env("WATCHDOG_USEC", watchdog.timeout.as_micros().to_string());
        }
        if self.cgroups {
            spec = spec.own_cgroup();
        }
        // A service that links ward-crashdiag puts its crash record where its report is made.
        spec = spec.env(
            ward_crashdiag::CRASH_DIR_ENV,
            self.state.join(crate::state::names::CRASH_DIR),
        );
        spec
    }

    fn show(&self, i: usize, change: impl FnOnce(&mut Shown)) {
        if let Some(shown) = self.shown.lock().get_mut(i) {
            change(shown);
        }
    }

    /// Runs until asked to stop (or every sender is gone), then stops every service.
    pub(super) fn run(mut self) {
        self.start_ready_ones();
        loop {
            let wake = self.wake_at();
            let timer = wake.map_or_else(crossbeam_channel::never, crossbeam_channel::at);
            select! {
                recv(self.events) -> event => match event {
                    Ok(event) => self.on_event(&event),
                    Err(_) => break,
                },
                recv(self.notices) -> notice => {
                    if let Ok(notice) = notice {
                        self.on_notice(notice);
                    }
                }
                recv(self.inputs) -> input => match input {
                    Ok(Input::Stop) | Err(_) => break,
                    Ok(input) => self.on_input(input),
                },
                recv(timer) -> _ => {}
            }
            self.due(Instant::now());
            self.helpers.retain(|h| !h.is_finished());
        }
        self.stop_all();
    }

    /// The earliest of the loop's timers: readiness tries and deadlines, watchdogs, restarts
    /// by change.
    fn wake_at(&self) -> Option<Instant> {
        self.units
            .iter()
            .flat_map(|u| {
                let probe = u
                    .probing
                    .as_ref()
                    .zip(u.service.ready.as_ref())
                    .map(|(p, r)| p.wake_at(&r.probe));
                [probe, u.alive_by, u.restart_at.as_ref().map(|r| r.0)]
            })
            .flatten()
            .min()
    }

    /// What is due at `now`: readiness tries, readiness deadlines, watchdogs, restarts by change.
    fn due(&mut self, now: Instant) {
        for i in 0..self.units.len() {
            self.check_ready(i, now);
            self.check_alive(i, now);
            if self.units[i]
                .restart_at
                .as_ref()
                .is_some_and(|r| r.0 <= now)
            {
                let (_, path, more) = self.units[i].restart_at.take().expect("checked");
                let unit = &self.units[i];
                if unit.pid.is_some() && !unit.acting {
                    log::info!(
                        "service {}: {}{} changed: restarting it",
                        unit.service.name,
                        path.display(),
                        if more > 0 {
                            format!(" and {more} more path(s)")
                        } else {
                            String::new()
                        }
                    );
                    let (reply, _ignored) = crossbeam_channel::bounded(1);
                    self.act(i, ServiceAction::Restart, reply);
                }
            }
        }
    }

    fn check_ready(&mut self, i: usize, now: Instant) {
        let unit = &mut self.units[i];
        let (Some(probing), Some(ready)) = (&mut unit.probing, &unit.service.ready) else {
            return;
        };
        if probing.try_now(&ready.probe, &unit.service.process.cwd, now) {
            self.became_ready(i, now);
        } else if probing.expired(now) {
            let timeout = ready.timeout;
            unit.probing = None;
            let name = unit.service.name.clone();
            log::error!(
                "service {name} is not ready {timeout:?} after its start: ending it as hung, its policy decides what follows"
            );
            self.end_hung(i);
        }
    }

    fn check_alive(&mut self, i: usize, now: Instant) {
        let unit = &mut self.units[i];
        let (Some(alive_by), Some(watchdog)) = (unit.alive_by, &unit.service.watchdog) else {
            return;
        };
        if now < alive_by {
            return;
        }
        // A heartbeat file touched since the last look renews the deadline from its touch.
        if let Some(file) = &watchdog.file {
            let touched = std::fs::metadata(file).and_then(|m| m.modified()).ok();
            if touched.is_some() && touched != unit.heartbeat_seen {
                unit.heartbeat_seen = touched;
                let age = touched
                    .and_then(|t| SystemTime::now().duration_since(t).ok())
                    .unwrap_or_default();
                if age < watchdog.timeout {
                    unit.alive_by = Some(now + (watchdog.timeout - age));
                    return;
                }
            }
        }
        let timeout = watchdog.timeout;
        unit.alive_by = None;
        let name = unit.service.name.clone();
        log::error!(
            "service {name} showed no sign of life for {timeout:?} (watchdog): ending it as hung, its policy decides what follows"
        );
        self.end_hung(i);
    }

    /// Ends unit `i`'s process as hung: its dump signal, time to print its stacks, SIGKILL.
    fn end_hung(&mut self, i: usize) {
        let unit = &self.units[i];
        let (Some(id), Some(supervisor)) = (unit.id, &self.supervisor) else {
            return;
        };
        if let Err(e) = supervisor.kill_hung(id, unit.service.dump_signal, DUMP_WAIT) {
            log::error!("service {}: cannot end it: {e}", unit.service.name);
        }
    }

    fn became_ready(&mut self, i: usize, now: Instant) {
        let unit = &mut self.units[i];
        unit.probing = None;
        unit.ready = true;
        let after = unit
            .started
            .map(|s| now.duration_since(s))
            .unwrap_or_default();
        if unit.service.ready.is_some() {
            log::info!(
                "service {} is ready, {after:?} after its start",
                unit.service.name
            );
        }
        if let Some(watchdog) = &unit.service.watchdog {
            unit.alive_by = Some(now + watchdog.timeout);
            unit.heartbeat_seen = watchdog
                .file
                .as_ref()
                .and_then(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok());
        }
        let pid = unit.pid;
        let name = unit.service.name.clone();
        for (action, waiter) in unit.ready_waiters.drain(..) {
            let _ = waiter.send(Ok(ServiceDone {
                service: name.clone(),
                done: action,
                pid,
            }));
        }
        self.show(i, |s| s.state = ServiceState::Running);
        self.start_ready_ones();
    }

    fn on_notice(&mut self, notice: Notice) {
        let now = Instant::now();
        let Some(unit) = self.units.get_mut(notice.unit) else {
            return;
        };
        if unit.pid.is_none() {
            return;
        }
        if notice.alive
            && let Some(watchdog) = &unit.service.watchdog
            && unit.alive_by.is_some()
        {
            unit.alive_by = Some(now + watchdog.timeout);
        }
        let waits_for_it = matches!(
            unit.service.ready.as_ref().map(|r| &r.probe),
            Some(Probe::Notify)
        );
        if notice.ready && waits_for_it && !unit.ready {
            self.became_ready(notice.unit, now);
        }
    }

    fn on_input(&mut self, input: Input) {
        match input {
            Input::Act {
                name,
                action,
                reply,
            } => match self
                .units
                .iter()
                .position(|u| !u.retired && u.service.name == name)
            {
                None => {
                    let known: Vec<&str> = self
                        .units
                        .iter()
                        .filter(|u| !u.retired)
                        .map(|u| u.service.name.as_str())
                        .collect();
                    let _ = reply.send(Err(if known.is_empty() {
                        format!("no service {name:?}: the config has none")
                    } else {
                        format!("no service {name:?}: the services are {}", known.join(", "))
                    }));
                }
                Some(i) => self.act(i, action, reply),
            },
            Input::Changed { name, path } => {
                let settle = self.settle;
                if let Some(u) = self
                    .units
                    .iter_mut()
                    .find(|u| !u.retired && u.service.name == name)
                    && u.pid.is_some()
                {
                    match &mut u.restart_at {
                        Some((_, _, more)) => *more += 1,
                        None => u.restart_at = Some((Instant::now() + settle, path, 0)),
                    }
                }
            }
            Input::Apply(services) => self.apply(services),
            Input::Replaced { unit } => self.replaced(unit),
            Input::Acted {
                unit,
                action,
                result,
                reply,
            } => {
                let u = &mut self.units[unit];
                u.acting = false;
                let done = ServiceDone {
                    service: u.service.name.clone(),
                    done: action,
                    pid: u.pid,
                };
                match result {
                    Err(e) => {
                        let _ = reply.send(Err(format!("service {}: {e}", u.service.name)));
                    }
                    // Answered once it is ready (or dies first).
                    Ok(()) if action != ServiceAction::Stop && !u.ready => {
                        u.ready_waiters.push((action, reply));
                    }
                    Ok(()) => {
                        let _ = reply.send(Ok(done));
                    }
                }
            }
            Input::Stop => {}
        }
    }

    /// Starts, stops or restarts unit `i` on request; the blocking part runs on a thread of its
    /// own, which reports back with [`Input::Acted`].
    fn act(&mut self, i: usize, action: ServiceAction, reply: Sender<Result<ServiceDone, String>>) {
        let unit = &mut self.units[i];
        let name = unit.service.name.clone();
        unit.held = action == ServiceAction::Stop;
        let Some(id) = unit.id else {
            // Never started: waiting for its dependencies, or it could not start.
            if action == ServiceAction::Stop {
                let _ = reply.send(Ok(ServiceDone {
                    service: name,
                    done: action,
                    pid: None,
                }));
                self.show(i, |s| s.state = ServiceState::Stopped);
                return;
            }
            self.start_ready_ones();
            let unit = &mut self.units[i];
            if unit.id.is_none() {
                let waiting: Vec<&str> =
                    unit.service.depends_on.iter().map(String::as_str).collect();
                let _ = reply.send(Err(format!(
                    "service {name} is not started: it waits for {} to be ready, or cannot start (see ward status)",
                    waiting.join(", ")
                )));
            } else {
                unit.ready_waiters.push((action, reply));
            }
            return;
        };
        log::info!("service {name}: {} on request", action.as_str());
        unit.acting = true;
        let Some(supervisor) = self.supervisor.clone() else {
            let _ = reply.send(Err("the services are stopping".into()));
            return;
        };
        let own = self.own.clone();
        let thread = std::thread::Builder::new()
            .name("ward-service-act".into())
            .spawn(move || {
                let result = match action {
                    ServiceAction::Start => supervisor.start_child(id),
                    ServiceAction::Stop => supervisor.stop_child(id),
                    ServiceAction::Restart => supervisor.restart_child(id),
                };
                let _ = own.send(Input::Acted {
                    unit: i,
                    action,
                    result: result.map_err(|e| e.to_string()),
                    reply,
                });
            });
        match thread {
            Ok(thread) => self.helpers.push(thread),
            Err(e) => {
                self.units[i].acting = false;
                log::error!(
                    "service {name}: cannot start a thread to {}: {e}",
                    action.as_str()
                );
            }
        }
    }

    fn on_event(&mut self, event: &Event) {
        let Some(i) = self.units.iter().position(|u| u.id == Some(event.child)) else {
            return;
        };
        let now = Instant::now();
        let name = self.units[i].service.name.clone();
        match &event.kind {
            EventKind::Started { pid } => {
                log::info!("service {name} started, pid {pid}");
                let unit = &mut self.units[i];
                let restarted = unit.starts > 0;
                unit.starts += 1;
                if restarted {
                    crate::metrics::METRICS.service_restarted(&name);
                }
                unit.pid = Some(*pid);
                unit.started = Some(now);
                unit.ready = false;
                unit.alive_by = None;
                unit.restart_at = None;
                if unit.oom_before.is_none() {
                    unit.oom_before = oom_before(&unit.service.process);
                }
                let waits = unit.service.ready.as_ref().map(|r| r.timeout);
                let pid = *pid;
                self.show(i, |s| {
                    s.state = ServiceState::Starting;
                    s.pid = Some(pid);
                    s.started = Some(now);
                    if restarted {
                        s.restarts += 1;
                    }
                });
                match waits {
                    Some(timeout) => self.units[i].probing = Some(Probing::new(now, timeout)),
                    None => self.became_ready(i, now),
                }
            }
            EventKind::Exited(exit) => {
                let unit = &mut self.units[i];
                unit.pid = None;
                unit.started = None;
                unit.ready = false;
                unit.probing = None;
                unit.alive_by = None;
                let oom = unit.oom_before.take();
                let cause = exit.termination.to_string();
                if exit.is_clean() || exit.stop_requested {
                    log::info!("service {name} (pid {}) {cause}", exit.pid);
                } else {
                    // Reported once its last output is in: `OutputDone` follows.
                    unit.unreported.push((exit.clone(), oom));
                }
                // A restart on request waits on: a new process follows.
                if !unit.acting {
                    for (_, waiter) in unit.ready_waiters.drain(..) {
                        let _ = waiter.send(Err(format!(
                            "service {name} ended before it was ready: {cause}"
                        )));
                    }
                }
                self.show(i, |s| {
                    s.pid = None;
                    s.started = None;
                    s.state = ServiceState::Stopped;
                    s.last_cause = Some(cause);
                });
            }
            EventKind::OutputDone { pid } => {
                let unit = &mut self.units[i];
                let Some(at) = unit.unreported.iter().position(|(e, _)| e.pid == *pid) else {
                    return;
                };
                let (exit, oom) = unit.unreported.remove(at);
                let lines = unit.tail.lines();
                let text = lines
                    .iter()
                    .filter(|l| l.pid == *pid)
                    .map(|l| l.text.as_str())
                    .collect::<Vec<_>>()
                    .join("\n");
                // Logs the verdict with the report's place.
                let what = format!("service {name}");
                let cause =
                    deaths::report(&self.state, &self.config, &what, &exit, Some(&text), oom)
                        .map_or_else(|| exit.termination.to_string(), |r: Reported| r.cause);
                let current = self.units[i].pid.is_none();
                self.show(i, |s| {
                    // Unless a later death has been said since.
                    if current || s.last_cause.as_deref() == Some(&exit.termination.to_string()) {
                        s.last_cause = Some(cause);
                    }
                });
            }
            EventKind::Restarting { after, attempt } => {
                log::info!("service {name}: restarting in {after:?} (attempt {attempt})");
                self.show(i, |s| s.state = ServiceState::BackingOff);
            }
            EventKind::SpawnFailed(e) => {
                log::error!("service {name}: cannot start again: {e}");
                self.show(i, |s| {
                    s.restarts += 1;
                    s.last_cause = Some(format!("cannot start: {e}"));
                });
            }
            EventKind::GaveUp(why) => {
                log::error!(
                    "service {name} gave up: {why}; it stays down until `ward service start {name}`, the rest of ward runs on"
                );
                self.show(i, |s| s.state = ServiceState::GaveUp);
            }
            EventKind::Stopped(why) => {
                match why {
                    StopReason::Requested => log::info!("service {name} stopped"),
                    why => log::info!("service {name} stopped: {why}"),
                }
                self.show(i, |s| s.state = ServiceState::Stopped);
            }
            _ => {}
        }
    }

    /// Stops every service, dependents before what they depend on, each through its stop
    /// signal to its group (and cgroup) and SIGKILL after its grace; then the supervisor.
    fn stop_all(mut self) {
        for helper in self.helpers.drain(..) {
            if helper.join().is_err() {
                log::error!("a thread acting on a service panicked");
            }
        }
        for &i in self.order.iter().rev() {
            let unit = &mut self.units[i];
            unit.probing = None;
            let Some(id) = unit.id else { continue };
            if unit.pid.is_some() {
                log::info!("stopping service {}", unit.service.name);
            }
            let Some(supervisor) = &self.supervisor else {
                break;
            };
            if let Err(e) = supervisor.stop_child(id) {
                log::error!("stopping service {}: {e}", unit.service.name);
            }
        }
        match self.supervisor.take().map(Arc::try_unwrap) {
            None => {}
            Some(Ok(supervisor)) => {
                if let Err(e) = supervisor.shutdown() {
                    log::error!("stopping the services' supervisor: {e}");
                }
            }
            // Cannot happen once the helpers are joined; dropping it shuts it down all the same.
            Some(Err(_)) => log::error!("the services' supervisor is still shared at the stop"),
        }
        // The events of the stops, and the last outputs delivered: exits are logged and
        // shown, and a death just before the stop is reported.
        for event in self.events.try_iter().collect::<Vec<_>>() {
            self.on_event(&event);
        }
    }
}

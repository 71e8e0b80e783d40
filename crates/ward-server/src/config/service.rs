//! `[[service]]` sections: long-running programs ward keeps running, each with its command, the
//! process settings that apply to it (those of a trigger but `timeout_s`), its restart policy,
//! how ward knows it is ready and alive, what it depends on and which changes restart it.
//! Not here: running them, which is `server::services`'.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use ward_supervisor::{Backoff, Intensity, RestartMode, RestartPolicy};

use super::identity::NameOrId;
use super::process::{Privileges, ProcessKeys};
use super::{At, ConfigError, ProcessSettings};

/// The longest `restart_window_s`, `backoff_max_s`, `watchdog_s` or readiness `timeout_s`: a
/// day.
const MAX_WINDOW_S: f64 = 86_400.0;

/// How long a service has to become ready when its `ready` names no `timeout_s`.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A service with its settings resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Service {
    /// Its name, unique among services: how the log, reports and `ward status` name it.
    pub name: String,
    /// What it runs (argv, no shell).
    pub command: Vec<String>,
    /// How its processes are started and stopped (`timeout` does not apply).
    pub process: ProcessSettings,
    /// The restart policy's preset.
    pub policy: PolicyName,
    /// `restart_max` within `restart_window_s`, replacing the preset's intensity.
    #[serde(default)]
    pub intensity: Option<(u32, Duration)>,
    /// The preset's mode and backoff as the section changed them.
    #[serde(default)]
    pub overrides: PolicyOverrides,
    /// How ward knows it is ready; `None`: as soon as it is started.
    #[serde(default)]
    pub ready: Option<Readiness>,
    /// The services that must be ready before it starts (and stop after it).
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// Its liveness check, if it has one.
    #[serde(default)]
    pub watchdog: Option<Liveness>,
    /// Globs of paths whose changes restart it (relative to a watch root, matched as a
    /// trigger's).
    #[serde(default)]
    pub restart_on: Vec<String>,
    /// The signal it gets, to print its stacks, before it is killed as hung (`None`: killed at
    /// once).
    #[serde(default = "super::default_dump_signal")]
    pub dump_signal: Option<i32>,
}

/// What a service's section changes of its preset's policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct PolicyOverrides {
    /// `restart = "always" | "on-failure" | "never"`.
    pub mode: Option<ModeName>,
    /// `backoff_s`: the first restart's delay.
    pub backoff: Option<Duration>,
    /// `backoff_factor`: how the delay grows with each consecutive restart.
    pub backoff_factor: Option<f64>,
    /// `backoff_max_s`: the longest delay.
    pub backoff_max: Option<Duration>,
    /// `reset_after_s`: a run this long resets the backoff.
    pub reset_after: Option<Duration>,
}

/// A restart mode, by the name a config gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModeName {
    /// [`RestartMode::Always`].
    Always,
    /// [`RestartMode::OnFailure`].
    OnFailure,
    /// [`RestartMode::Never`].
    Never,
}

/// How ward knows a service is ready to serve.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Readiness {
    /// The check.
    pub probe: Probe,
    /// How long it may take; past it the service is ended as hung and restarted by its policy.
    pub timeout: Duration,
}

/// A readiness check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Probe {
    /// `tcp = "host:port"`: a connection is accepted there.
    Tcp(String),
    /// `file = "path"`: the file exists (absolute).
    File(PathBuf),
    /// `command = [...]`: the command exits with 0 (run in the service's directory, again after
    /// each failure).
    Command(Vec<String>),
    /// `notify = true`: the service sends `READY=1` to `$NOTIFY_SOCKET`, as under systemd's
    /// `Type=notify`.
    Notify,
}

/// A service's liveness check: it must show life at least every `timeout`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Liveness {
    /// `watchdog_s`.
    pub timeout: Duration,
    /// `watchdog_file`: a file it touches (absolute); `None`: it sends `WATCHDOG=1` to
    /// `$NOTIFY_SOCKET`, as under systemd's `WatchdogSec=`.
    pub file: Option<PathBuf>,
}

impl Service {
    /// Its restart policy: the preset, with what the section changed.
    pub fn restart_policy(&self) -> RestartPolicy {
        let mut policy = match self.policy {
            PolicyName::Systemd => RestartPolicy::systemd(),
            PolicyName::Kubernetes => RestartPolicy::kubernetes(),
            PolicyName::Pm2 => RestartPolicy::pm2(),
        };
        if let Some((max_restarts, window)) = self.intensity {
            policy.intensity = Some(Intensity {
                max_restarts,
                window,
            });
        }
        let o = &self.overrides;
        if let Some(mode) = o.mode {
            policy.mode = match mode {
                ModeName::Always => RestartMode::Always,
                ModeName::OnFailure => RestartMode::OnFailure,
                ModeName::Never => RestartMode::Never,
            };
        }
        if let Some(initial) = o.backoff {
            policy.backoff.initial = initial;
            // A delay set alone stays what it says, unless a maximum or factor is set too.
            if o.backoff_max.is_none() && o.backoff_factor.is_none() {
                policy.backoff = Backoff::constant(initial);
            }
        }
        if let Some(factor) = o.backoff_factor {
            policy.backoff.factor = factor;
        }
        if let Some(max) = o.backoff_max {
            policy.backoff.max = max;
        }
        if o.reset_after.is_some() {
            policy.reset_after = o.reset_after;
        }
        policy
    }

    /// Whether it is given `$NOTIFY_SOCKET`: its readiness or its watchdog is told there.
    pub fn uses_notify(&self) -> bool {
        matches!(
            self.ready,
            Some(Readiness {
                probe: Probe::Notify,
                ..
            })
        ) || self.watchdog.as_ref().is_some_and(|w| w.file.is_none())
    }
}

/// A restart policy preset of ward-supervisor, by the name a config gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyName {
    /// [`RestartPolicy::systemd`]: on failure, 100 ms apart, gives up after 4 restarts in 10 s.
    Systemd,
    /// [`RestartPolicy::kubernetes`]: always, 10 s doubling to 300 s, never gives up.
    Kubernetes,
    /// [`RestartPolicy::pm2`]: always, 100 ms growing ×1.5 to 15 s, never gives up.
    Pm2,
}

impl PolicyName {
    /// Its name in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyName::Systemd => "systemd",
            PolicyName::Kubernetes => "kubernetes",
            PolicyName::Pm2 => "pm2",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ServiceSection {
    name: At<String>,
    command: At<Vec<String>>,
    policy: Option<At<String>>,
    restart: Option<At<String>>,
    backoff_s: Option<At<f64>>,
    backoff_factor: Option<At<f64>>,
    backoff_max_s: Option<At<f64>>,
    reset_after_s: Option<At<f64>>,
    restart_max: Option<At<u64>>,
    restart_window_s: Option<At<f64>>,
    ready: Option<At<ReadySection>>,
    depends_on: Option<At<Vec<At<String>>>>,
    watchdog_s: Option<At<f64>>,
    watchdog_file: Option<At<PathBuf>>,
    restart_on: Option<At<Vec<At<String>>>>,
    dump_signal: Option<At<String>>,
    // The process settings (`process.rs`), but `timeout_s`: a service has no deadline.
    env: Option<At<BTreeMap<At<String>, At<String>>>>,
    env_remove: Option<At<Vec<At<String>>>>,
    cwd: Option<At<PathBuf>>,
    stop_signal: Option<At<String>>,
    stop_grace_s: Option<At<f64>>,
    nice: Option<At<i64>>,
    memory_max_mb: Option<At<u64>>,
    user: Option<At<NameOrId>>,
    group: Option<At<NameOrId>>,
}

/// `ready = { ... }`: one check and its timeout.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ReadySection {
    tcp: Option<At<String>>,
    file: Option<At<PathBuf>>,
    command: Option<At<Vec<String>>>,
    notify: Option<At<bool>>,
    timeout_s: Option<At<f64>>,
}

/// The services of the `[[service]]` sections, in their order, checked: names unique, commands
/// not empty, policies known, process settings as a trigger's, dependencies known and without a
/// cycle.
pub(super) fn resolve_all(
    sections: Vec<At<ServiceSection>>,
    defaults: &ProcessSettings,
    base: &Path,
    privileges: Privileges,
    error: &dyn Fn(&Range<usize>, String) -> ConfigError,
) -> Result<Vec<Service>, ConfigError> {
    let mut services: Vec<Service> = Vec::with_capacity(sections.len());
    // Where each service's `depends_on` entries are, for the errors about them.
    let mut depends_spans: Vec<Vec<Range<usize>>> = Vec::with_capacity(sections.len());
    for section in sections {
        let s = section.into_inner();
        let name = s.name.get_ref().clone();
        if name.is_empty() {
            return Err(error(&s.name.span(), "service name is empty".into()));
        }
        if services.iter().any(|e| e.name == name) {
            return Err(error(
                &s.name.span(),
                format!("service name {name:?} is taken by an earlier service: names must differ"),
            ));
        }
        let argv = s.command.get_ref();
        if argv.is_empty() || argv[0].is_empty() {
            return Err(error(
                &s.command.span(),
                format!("service {name:?}: the command is empty"),
            ));
        }
        // A duration key of this service.
        let seconds = |value: &At<f64>, key: &str, zero_ok: bool| {
            seconds_of(value, zero_ok).map_err(|problem| {
                error(
                    &value.span(),
                    format!("service {name:?}: {key} = {problem}"),
                )
            })
        };
        let policy = match &s.policy {
            None => PolicyName::Systemd,
            Some(p) => match p.get_ref().as_str() {
                "systemd" => PolicyName::Systemd,
                "kubernetes" => PolicyName::Kubernetes,
                "pm2" => PolicyName::Pm2,
                other => {
                    return Err(error(
                        &p.span(),
                        format!(
                            "service {name:?}: policy = {other:?}: must be \"systemd\", \"kubernetes\" or \"pm2\""
                        ),
                    ));
                }
            },
        };
        let mode = match &s.restart {
            None => None,
            Some(m) => Some(match m.get_ref().as_str() {
                "always" => ModeName::Always,
                "on-failure" => ModeName::OnFailure,
                "never" => ModeName::Never,
                other => {
                    return Err(error(
                        &m.span(),
                        format!(
                            "service {name:?}: restart = {other:?}: must be \"always\", \"on-failure\" or \"never\""
                        ),
                    ));
                }
            }),
        };
        let backoff_factor = match &s.backoff_factor {
            None => None,
            Some(f) => match *f.get_ref() {
                v if v.is_finite() && (1.0..=100.0).contains(&v) => Some(v),
                v => {
                    return Err(error(
                        &f.span(),
                        format!("service {name:?}: backoff_factor = {v}: must be from 1 to 100"),
                    ));
                }
            },
        };
        let overrides = PolicyOverrides {
            mode,
            backoff: s
                .backoff_s
                .as_ref()
                .map(|v| seconds(v, "backoff_s", true))
                .transpose()?,
            backoff_factor,
            backoff_max: s
                .backoff_max_s
                .as_ref()
                .map(|v| seconds(v, "backoff_max_s", true))
                .transpose()?,
            reset_after: s
                .reset_after_s
                .as_ref()
                .map(|v| seconds(v, "reset_after_s", false))
                .transpose()?,
        };
        let intensity = match (&s.restart_max, &s.restart_window_s) {
            (None, None) => None,
            (Some(max), window) => {
                let n = *max.get_ref();
                if !(1..=1000).contains(&n) {
                    return Err(error(
                        &max.span(),
                        format!("service {name:?}: restart_max = {n}: must be between 1 and 1000"),
                    ));
                }
                let window = match window {
                    None => Duration::from_secs(10),
                    Some(w) => seconds(w, "restart_window_s", false)?,
                };
                Some((u32::try_from(n).unwrap_or(u32::MAX), window))
            }
            (None, Some(w)) => {
                return Err(error(
                    &w.span(),
                    format!("service {name:?}: restart_window_s needs restart_max"),
                ));
            }
        };
        let ready = match &s.ready {
            None => None,
            Some(section) => Some(readiness(section, &name, base, error)?),
        };
        let watchdog = match (&s.watchdog_s, &s.watchdog_file) {
            (None, None) => None,
            (Some(timeout), file) => Some(Liveness {
                timeout: seconds(timeout, "watchdog_s", false)?,
                file: file.as_ref().map(|f| base.join(f.get_ref())),
            }),
            (None, Some(file)) => {
                return Err(error(
                    &file.span(),
                    format!(
                        "service {name:?}: watchdog_file needs watchdog_s, how long the file may stay untouched"
                    ),
                ));
            }
        };
        let mut restart_on = Vec::new();
        for glob in s.restart_on.iter().flat_map(|g| g.get_ref()) {
            super::check_glob(glob.get_ref()).map_err(|problem| {
                error(
                    &glob.span(),
                    format!(
                        "service {name:?}: restart_on glob {:?}: {problem}",
                        glob.get_ref()
                    ),
                )
            })?;
            restart_on.push(glob.get_ref().clone());
        }
        let dump_signal = match &s.dump_signal {
            None => super::default_dump_signal(),
            Some(value) => super::dump_signal(value.get_ref()).map_err(|problem| {
                error(
                    &value.span(),
                    format!(
                        "service {name:?}: dump_signal = {:?}: {problem}",
                        value.get_ref()
                    ),
                )
            })?,
        };
        let depends: Vec<&At<String>> = s.depends_on.iter().flat_map(|d| d.get_ref()).collect();
        depends_spans.push(depends.iter().map(|d| d.span()).collect());
        let none = None;
        let keys = ProcessKeys {
            env: &s.env,
            env_remove: &s.env_remove,
            cwd: &s.cwd,
            timeout_s: &none,
            stop_signal: &s.stop_signal,
            stop_grace_s: &s.stop_grace_s,
            nice: &s.nice,
            memory_max_mb: &s.memory_max_mb,
            user: &s.user,
            group: &s.group,
        };
        let process = ProcessSettings::resolve(
            keys,
            &format!("service {name:?}"),
            defaults,
            base,
            privileges,
            error,
        )?;
        services.push(Service {
            name,
            command: argv.clone(),
            process,
            policy,
            intensity,
            overrides,
            ready,
            depends_on: depends.iter().map(|d| d.get_ref().clone()).collect(),
            watchdog,
            restart_on,
            dump_signal,
        });
    }
    check_dependencies(&services, &depends_spans, error)?;
    Ok(services)
}

/// A duration of a service's section: a number of seconds above 0 (or 0 too, `zero_ok`) and
/// at most [`MAX_WINDOW_S`]; otherwise the value and the problem, in words.
fn seconds_of(value: &At<f64>, zero_ok: bool) -> Result<Duration, String> {
    match *value.get_ref() {
        v if v.is_finite() && (v > 0.0 || zero_ok && v == 0.0) && v <= MAX_WINDOW_S => {
            Ok(Duration::from_secs_f64(v))
        }
        v => Err(format!(
            "{v}: must be a number of seconds {} and at most {MAX_WINDOW_S}",
            if zero_ok { "from 0" } else { "above 0" }
        )),
    }
}

/// A `ready = { ... }` table: exactly one check, and its timeout.
fn readiness(
    section: &At<ReadySection>,
    name: &str,
    base: &Path,
    error: &dyn Fn(&Range<usize>, String) -> ConfigError,
) -> Result<Readiness, ConfigError> {
    let r = section.get_ref();
    let mut probes = Vec::new();
    if let Some(tcp) = &r.tcp {
        let address = tcp.get_ref();
        let port = address.rsplit_once(':').and_then(|(host, port)| {
            (!host.is_empty()).then_some(())?;
            port.parse::<u16>().ok().filter(|&p| p != 0)
        });
        if port.is_none() {
            return Err(error(
                &tcp.span(),
                format!(
                    "service {name:?}: ready.tcp = {address:?}: must be host:port, such as \"127.0.0.1:8000\""
                ),
            ));
        }
        probes.push(Probe::Tcp(address.clone()));
    }
    if let Some(file) = &r.file {
        probes.push(Probe::File(base.join(file.get_ref())));
    }
    if let Some(command) = &r.command {
        if command.get_ref().first().is_none_or(String::is_empty) {
            return Err(error(
                &command.span(),
                format!("service {name:?}: ready.command is empty"),
            ));
        }
        probes.push(Probe::Command(command.get_ref().clone()));
    }
    if let Some(notify) = &r.notify {
        if !*notify.get_ref() {
            return Err(error(
                &notify.span(),
                format!(
                    "service {name:?}: ready.notify = false: leave it out instead, or name another check"
                ),
            ));
        }
        probes.push(Probe::Notify);
    }
    if probes.len() != 1 {
        return Err(error(
            &section.span(),
            format!(
                "service {name:?}: ready must name exactly one check of tcp, file, command and notify ({} given)",
                probes.len()
            ),
        ));
    }
    let timeout = match &r.timeout_s {
        None => DEFAULT_READY_TIMEOUT,
        Some(t) => seconds_of(t, false).map_err(|problem| {
            error(
                &t.span(),
                format!("service {name:?}: ready.timeout_s = {problem}"),
            )
        })?,
    };
    Ok(Readiness {
        probe: probes.remove(0),
        timeout,
    })
}

/// Every `depends_on` names another service, and following them never comes back to where it
/// started; an error names the entry, with its place, and the cycle.
fn check_dependencies(
    services: &[Service],
    spans: &[Vec<Range<usize>>],
    error: &dyn Fn(&Range<usize>, String) -> ConfigError,
) -> Result<(), ConfigError> {
    let index = |name: &str| services.iter().position(|s| s.name == name);
    for (i, service) in services.iter().enumerate() {
        for (dep, span) in service.depends_on.iter().zip(&spans[i]) {
            if *dep == service.name {
                return Err(error(
                    span,
                    format!("service {:?} depends on itself", service.name),
                ));
            }
            if index(dep).is_none() {
                return Err(error(
                    span,
                    format!(
                        "service {:?}: depends_on {dep:?}: no service has that name",
                        service.name
                    ),
                ));
            }
        }
    }
    // Depth-first from each service; a service met again on the current path closes a cycle.
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    let mut marks = vec![Mark::New; services.len()];
    let mut path: Vec<(usize, usize)> = Vec::new();
    for start in 0..services.len() {
        if marks[start] != Mark::New {
            continue;
        }
        marks[start] = Mark::OnPath;
        path.push((start, 0));
        while let Some(&mut (at, ref mut next)) = path.last_mut() {
            let Some(dep) = services[at].depends_on.get(*next) else {
                marks[at] = Mark::Done;
                path.pop();
                continue;
            };
            let entry = *next;
            *next += 1;
            let to = index(dep).expect("checked above");
            match marks[to] {
                Mark::Done => {}
                Mark::New => {
                    marks[to] = Mark::OnPath;
                    path.push((to, 0));
                }
                Mark::OnPath => {
                    let from = path
                        .iter()
                        .position(|&(s, _)| s == to)
                        .expect("on the path");
                    // Told from the entry that closes it: `at` → `to` → ... → `at`.
                    let mut names = vec![services[at].name.as_str()];
                    names.extend(path[from..].iter().map(|&(s, _)| services[s].name.as_str()));
                    return Err(error(
                        &spans[at][entry],
                        format!(
                            "service {:?}: depends_on makes a cycle: {}",
                            services[at].name,
                            names.join(" → ")
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// The services in the order they start: each after the services it depends on, otherwise in
/// the order declared. They stop in the reverse order.
pub fn start_order(services: &[Service]) -> Vec<usize> {
    let mut order: Vec<usize> = Vec::with_capacity(services.len());
    while order.len() < services.len() {
        let before = order.len();
        for (i, service) in services.iter().enumerate() {
            if order.contains(&i) {
                continue;
            }
            let deps_placed = service
                .depends_on
                .iter()
                .all(|dep| order.iter().any(|&o| services[o].name == *dep));
            if deps_placed {
                order.push(i);
                break;
            }
        }
        if order.len() == before {
            // A cycle, which the loader refuses: the rest in the order declared.
            order.extend(
                (0..services.len())
                    .filter(|i| !order.contains(i))
                    .collect::<Vec<_>>(),
            );
        }
    }
    order
}

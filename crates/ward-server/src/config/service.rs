//! `[[service]]` sections: long-running programs ward keeps running, each with its command, the
//! process settings that apply to it (those of a trigger but `timeout_s`) and its restart policy.
//! Not here: running them, which is `server::services`'.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use ward_supervisor::{Intensity, RestartPolicy};

use super::identity::NameOrId;
use super::process::{Privileges, ProcessKeys};
use super::{At, ConfigError, ProcessSettings};

/// The longest `restart_window_s`, a day.
const MAX_WINDOW_S: f64 = 86_400.0;

/// A service with its settings resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
}

impl Service {
    /// Its restart policy: the preset, with the intensity the section gave.
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
        policy
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
    restart_max: Option<At<u64>>,
    restart_window_s: Option<At<f64>>,
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

/// The services of the `[[service]]` sections, in their order, checked: names unique, commands
/// not empty, policies known, process settings as a trigger's.
pub(super) fn resolve_all(
    sections: Vec<At<ServiceSection>>,
    defaults: &ProcessSettings,
    base: &Path,
    privileges: Privileges,
    error: &dyn Fn(&Range<usize>, String) -> ConfigError,
) -> Result<Vec<Service>, ConfigError> {
    let mut services: Vec<Service> = Vec::with_capacity(sections.len());
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
                    Some(w) => match *w.get_ref() {
                        s if s.is_finite() && s > 0.0 && s <= MAX_WINDOW_S => {
                            Duration::from_secs_f64(s)
                        }
                        s => {
                            return Err(error(
                                &w.span(),
                                format!(
                                    "service {name:?}: restart_window_s = {s}: must be a number of seconds above 0 and at most {MAX_WINDOW_S}"
                                ),
                            ));
                        }
                    },
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
        });
    }
    Ok(services)
}

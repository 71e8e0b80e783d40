//! `[[on_death]]` sections: commands run for each crash report, so that a user can page, mail or
//! post to a chat when something dies. Each has its command, the deaths it runs for (`roles`),
//! and the process settings that make sense for a short command: environment, directory,
//! timeout, how it is stopped. Not here: running them, which is `hooks`'.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::process::{Privileges, ProcessKeys};
use super::{At, ConfigError, ProcessSettings};

/// How long a hook may run when its section names no `timeout_s`.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(30);

/// The variables ward sets for each hook run: a section's `env` cannot set or remove them.
pub const HOOK_VARIABLES: [&str; 8] = [
    "WARD_REPORT",
    "WARD_REPORT_TEXT",
    "WARD_CAUSE",
    "WARD_CAUSE_KIND",
    "WARD_ROLE",
    "WARD_WHAT",
    "WARD_PID",
    "WARD_COALESCED",
];

/// A command run for each crash report (`[[on_death]]`), resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OnDeath {
    /// What it runs (argv, no shell).
    pub command: Vec<String>,
    /// The kinds of process whose deaths it runs for; empty: every death.
    #[serde(default)]
    pub roles: Vec<Role>,
    /// Its environment, directory, timeout (default [`DEFAULT_HOOK_TIMEOUT`]) and how it is
    /// stopped; no nice value, memory limit or user.
    pub process: ProcessSettings,
}

impl OnDeath {
    /// Whether it runs for the death of a process of `role` (`None`: a role ward does not know,
    /// which only a hook for every death runs for).
    pub fn runs_for(&self, role: Option<Role>) -> bool {
        self.roles.is_empty() || role.is_some_and(|r| self.roles.contains(&r))
    }
}

/// What kind of process died: the first word of a crash report's role (`job NAME on PATH`,
/// `service NAME`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// An exec job's command.
    Job,
    /// A persistent worker.
    Worker,
    /// A batch trigger's run.
    Batch,
    /// A `[[service]]`'s process.
    Service,
    /// ward's own server, reported by the keeper.
    Server,
}

impl Role {
    /// Every role, in the order the config's errors list them.
    pub const ALL: [Role; 5] = [
        Role::Job,
        Role::Worker,
        Role::Batch,
        Role::Service,
        Role::Server,
    ];

    /// Its name in the config and in `WARD_ROLE`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Job => "job",
            Role::Worker => "worker",
            Role::Batch => "batch",
            Role::Service => "service",
            Role::Server => "server",
        }
    }

    /// The role named `name`.
    pub fn named(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == name)
    }

    /// The role of the process a crash report calls `what`: its first word.
    pub fn of(what: &str) -> Option<Role> {
        Role::named(what.split(' ').next().unwrap_or_default())
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct OnDeathSection {
    command: At<Vec<String>>,
    roles: Option<At<Vec<At<String>>>>,
    // The process settings (`process.rs`) that fit a short command run for a report.
    timeout_s: Option<At<f64>>,
    env: Option<At<BTreeMap<At<String>, At<String>>>>,
    env_remove: Option<At<Vec<At<String>>>>,
    cwd: Option<At<PathBuf>>,
    stop_signal: Option<At<String>>,
    stop_grace_s: Option<At<f64>>,
}

/// The hooks of the `[[on_death]]` sections, in their order, checked: commands not empty, roles
/// known, process settings as a trigger's, none of ward's own variables set or removed. `defaults`
/// are a trigger's, whose timeout becomes [`DEFAULT_HOOK_TIMEOUT`].
pub(super) fn resolve_all(
    sections: Vec<At<OnDeathSection>>,
    defaults: &ProcessSettings,
    base: &Path,
    privileges: Privileges,
    error: &dyn Fn(&Range<usize>, String) -> ConfigError,
) -> Result<Vec<OnDeath>, ConfigError> {
    let defaults = ProcessSettings {
        timeout: DEFAULT_HOOK_TIMEOUT,
        ..defaults.clone()
    };
    let mut hooks = Vec::with_capacity(sections.len());
    for (i, section) in sections.into_iter().enumerate() {
        let owner = format!("on_death #{}", i + 1);
        let s = section.into_inner();
        let argv = s.command.get_ref();
        if argv.first().is_none_or(String::is_empty) {
            return Err(error(
                &s.command.span(),
                format!("{owner}: the command is empty"),
            ));
        }
        let mut roles = Vec::new();
        if let Some(list) = &s.roles {
            if list.get_ref().is_empty() {
                return Err(error(
                    &list.span(),
                    format!(
                        "{owner}: roles is empty: the hook would never run (leave it out to run it for every death)"
                    ),
                ));
            }
            for name in list.get_ref() {
                let role = Role::named(name.get_ref()).ok_or_else(|| {
                    let known: Vec<String> = Role::ALL
                        .iter()
                        .map(|r| format!("{:?}", r.as_str()))
                        .collect();
                    error(
                        &name.span(),
                        format!(
                            "{owner}: unknown role {:?}: roles are {}",
                            name.get_ref(),
                            known.join(", ")
                        ),
                    )
                })?;
                if !roles.contains(&role) {
                    roles.push(role);
                }
            }
        }
        let named = s
            .env
            .iter()
            .flat_map(|env| env.get_ref().keys())
            .chain(s.env_remove.iter().flat_map(|names| names.get_ref()));
        for name in named {
            if HOOK_VARIABLES.contains(&name.get_ref().as_str()) {
                return Err(error(
                    &name.span(),
                    format!(
                        "{owner}: {} is set by ward for each hook run: it cannot be set or removed",
                        name.get_ref()
                    ),
                ));
            }
        }
        let keys = ProcessKeys {
            env: &s.env,
            env_remove: &s.env_remove,
            cwd: &s.cwd,
            timeout_s: &s.timeout_s,
            stop_signal: &s.stop_signal,
            stop_grace_s: &s.stop_grace_s,
            nice: &None,
            memory_max_mb: &None,
            user: &None,
            group: &None,
        };
        let process = ProcessSettings::resolve(keys, &owner, &defaults, base, privileges, error)?;
        hooks.push(OnDeath {
            command: argv.clone(),
            roles,
            process,
        });
    }
    Ok(hooks)
}

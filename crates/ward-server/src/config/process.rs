//! A trigger's process settings: the environment, working directory and timeout of its jobs, how
//! they are stopped, their nice value, memory limit and user. Each `[[trigger]]` may set them;
//! what it does not set comes from `[jobs]`, or is ward's own (its environment, priority, user).
//! They apply to exec jobs and workers alike. Not here: what a trigger runs and when (its
//! handler, globs and events), which is `config`'s.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::identity::{self, NameOrId};
use super::{At, ConfigError, TriggerSection};

/// The process keys of a section (`[[trigger]]` or `[[service]]`), as read, with their places.
/// Both sections resolve them with [`ProcessSettings::resolve`]; a section without a key (a
/// service has no `timeout_s`) gives `&None`.
#[derive(Debug, Clone, Copy)]
pub(super) struct ProcessKeys<'a> {
    pub(super) env: &'a Option<At<BTreeMap<At<String>, At<String>>>>,
    pub(super) env_remove: &'a Option<At<Vec<At<String>>>>,
    pub(super) cwd: &'a Option<At<PathBuf>>,
    pub(super) timeout_s: &'a Option<At<f64>>,
    pub(super) stop_signal: &'a Option<At<String>>,
    pub(super) stop_grace_s: &'a Option<At<f64>>,
    pub(super) nice: &'a Option<At<i64>>,
    pub(super) memory_max_mb: &'a Option<At<u64>>,
    pub(super) user: &'a Option<At<NameOrId>>,
    pub(super) group: &'a Option<At<NameOrId>>,
}

impl TriggerSection {
    /// Its process keys.
    pub(super) fn process_keys(&self) -> ProcessKeys<'_> {
        ProcessKeys {
            env: &self.env,
            env_remove: &self.env_remove,
            cwd: &self.cwd,
            timeout_s: &self.timeout_s,
            stop_signal: &self.stop_signal,
            stop_grace_s: &self.stop_grace_s,
            nice: &self.nice,
            memory_max_mb: &self.memory_max_mb,
            user: &self.user,
            group: &self.group,
        }
    }
}

/// How a trigger's processes are started and stopped, with the defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessSettings {
    /// Variables set in the environment, on top of ward's own (values may be secrets: never
    /// logged).
    pub env: BTreeMap<String, String>,
    /// Variables of ward's environment the processes do not get.
    pub env_remove: Vec<String>,
    /// The working directory, absolute (default: the config file's directory).
    pub cwd: PathBuf,
    /// The deadline of one job (default `[jobs] timeout_s`).
    pub timeout: Duration,
    /// The signal that asks a job or worker to stop (default SIGTERM); SIGKILL follows after
    /// `stop_grace`.
    pub stop_signal: i32,
    /// Time between the stop signal and SIGKILL (default `[jobs] stop_grace_s`).
    pub stop_grace: Duration,
    /// The nice value; `None`: ward's own.
    pub nice: Option<i32>,
    /// The memory limit in bytes, enforced by a memory cgroup per job or worker; `None`: none.
    pub memory_max: Option<u64>,
    /// Who the processes run as; `None`: ward's user.
    pub user: Option<Identity>,
}

/// Who a trigger's processes run as, resolved from the user and group databases once, when the
/// configuration is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The user's name; `None` when only `group` is set (the user stays ward's).
    pub user: Option<String>,
    /// The user id.
    pub uid: u32,
    /// The group's name.
    pub group: String,
    /// The group id.
    pub gid: u32,
    /// The supplementary groups: the user's (`gid` among them), none when only `group` is set.
    pub groups: Vec<u32>,
}

/// The default stop signal.
pub const DEFAULT_STOP_SIGNAL: i32 = libc::SIGTERM;

/// The longest `timeout_s`, a week, as in `[jobs]`.
pub(super) const MAX_TIMEOUT_S: f64 = 7.0 * 86_400.0;
/// The longest `stop_grace_s`, an hour, as in `[jobs]`.
pub(super) const MAX_STOP_GRACE_S: f64 = 3600.0;
/// The largest `memory_max_mb`, a pebibyte's worth of mebibytes.
const MAX_MEMORY_MB: u64 = 1 << 30;
/// The variables ward sets for each job: a trigger cannot set or remove them.
const JOB_VARIABLES: [&str; 4] = ["WARD_PATH", "WARD_EVENT", "WARD_OLD_PATH", "WARD_SEQ"];

/// What resolving the settings needs to know of ward's own process: whether it may change users,
/// and how low it may set a nice value. A value of its own so that a test can be someone else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Privileges {
    pub(super) euid: u32,
    /// The lowest nice value a child may be given: -20 for root, else ward's own or what
    /// `RLIMIT_NICE` allows, whichever is lower.
    pub(super) lowest_nice: i32,
}

impl Privileges {
    /// This process's.
    pub(super) fn of_this_process() -> Privileges {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        if euid == 0 {
            return Privileges {
                euid,
                lowest_nice: -20,
            };
        }
        // SAFETY: getpriority has no memory-safety preconditions (-1 is a valid value as well as
        // the error return; an error here is impossible for the calling process).
        let own = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
        // SAFETY: an all-zero rlimit is a valid value for getrlimit to overwrite.
        let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
        // SAFETY: `limit` is valid for writes.
        let allowed = if unsafe { libc::getrlimit(libc::RLIMIT_NICE, &mut limit) } == 0 {
            // RLIMIT_NICE's ceiling is 20 - nice, so the lowest nice value is 20 - ceiling.
            if limit.rlim_cur == libc::RLIM_INFINITY {
                -20
            } else {
                20 - i32::try_from(limit.rlim_cur.min(40)).unwrap_or(0)
            }
        } else {
            own
        };
        Privileges {
            euid,
            lowest_nice: own.min(allowed).clamp(-20, 19),
        }
    }
}

/// What a launch recorded before these settings existed reads as: ward's defaults and an empty
/// `cwd`, which no resolved configuration has, so that
/// [`Config::with_unrecorded_settings`](super::Config::with_unrecorded_settings) can tell and put
/// the `[jobs]` settings of that launch in.
impl Default for ProcessSettings {
    fn default() -> Self {
        ProcessSettings::defaults(
            PathBuf::new(),
            Duration::from_secs(300),
            Duration::from_secs(5),
        )
    }
}

impl ProcessSettings {
    /// What a trigger that sets none of the keys gets.
    pub(super) fn defaults(cwd: PathBuf, timeout: Duration, stop_grace: Duration) -> Self {
        ProcessSettings {
            env: BTreeMap::new(),
            env_remove: Vec::new(),
            cwd,
            timeout,
            stop_signal: DEFAULT_STOP_SIGNAL,
            stop_grace,
            nice: None,
            memory_max: None,
            user: None,
        }
    }

    /// The settings of the section `t` of `owner` (`trigger "name"`, `service "name"`): its keys
    /// checked, resolved against `base` (the config file's directory) and ward's `privileges`,
    /// and `defaults` for the rest. `error` makes the error about the value at a span.
    pub(super) fn resolve(
        t: ProcessKeys<'_>,
        owner: &str,
        defaults: &ProcessSettings,
        base: &Path,
        privileges: Privileges,
        error: &dyn Fn(&Range<usize>, String) -> ConfigError,
    ) -> Result<ProcessSettings, ConfigError> {
        let refuse = |span: &Range<usize>, what: String| error(span, format!("{owner}: {what}"));
        let mut settings = defaults.clone();
        if let Some(env) = &t.env {
            for (key, value) in env.get_ref() {
                variable_name(key.get_ref()).map_err(|problem| {
                    refuse(
                        &key.span(),
                        format!("env name {:?} {problem}", key.get_ref()),
                    )
                })?;
                if value.get_ref().contains('\0') {
                    return Err(refuse(
                        &value.span(),
                        format!(
                            "env {} = {:?}: contains a NUL byte",
                            key.get_ref(),
                            value.get_ref()
                        ),
                    ));
                }
                settings
                    .env
                    .insert(key.get_ref().clone(), value.get_ref().clone());
            }
        }
        if let Some(names) = &t.env_remove {
            for key in names.get_ref() {
                let text = key.get_ref();
                variable_name(text).map_err(|problem| {
                    refuse(&key.span(), format!("env_remove name {text:?} {problem}"))
                })?;
                if settings.env.contains_key(text) {
                    return Err(refuse(
                        &key.span(),
                        format!(
                            "env_remove name {text:?} is also set in env: keep it in one of them"
                        ),
                    ));
                }
                if !settings.env_remove.contains(text) {
                    settings.env_remove.push(text.clone());
                }
            }
        }
        if let Some(cwd) = &t.cwd {
            let dir = super::normalize(&base.join(cwd.get_ref()));
            if !dir.is_dir() {
                return Err(refuse(
                    &cwd.span(),
                    format!(
                        "cwd = {:?}: {} is not a directory",
                        cwd.get_ref(),
                        dir.display()
                    ),
                ));
            }
            settings.cwd = dir;
        }
        let seconds = |value: &Option<At<f64>>, key: &str, max: f64, default: Duration| {
            let Some(value) = value else {
                return Ok(default);
            };
            match *value.get_ref() {
                s if s.is_finite() && s > 0.0 && s <= max => Ok(Duration::from_secs_f64(s)),
                s => Err(refuse(
                    &value.span(),
                    format!("{key} = {s}: must be a number of seconds above 0 and at most {max}"),
                )),
            }
        };
        settings.timeout = seconds(t.timeout_s, "timeout_s", MAX_TIMEOUT_S, defaults.timeout)?;
        settings.stop_grace = seconds(
            t.stop_grace_s,
            "stop_grace_s",
            MAX_STOP_GRACE_S,
            defaults.stop_grace,
        )?;
        if let Some(signal) = &t.stop_signal {
            settings.stop_signal = stop_signal(signal.get_ref()).map_err(|problem| {
                refuse(
                    &signal.span(),
                    format!("stop_signal = {:?}: {problem}", signal.get_ref()),
                )
            })?;
        }
        if let Some(nice) = &t.nice {
            let n = *nice.get_ref();
            let problem = if !(-20..=19).contains(&n) {
                Some("must be between -20 and 19".to_owned())
            } else if n < i64::from(privileges.lowest_nice) {
                Some(format!(
                    "ward runs as uid {} and may not set a nice value below {}: lowering it takes \
                     root (or a higher RLIMIT_NICE)",
                    privileges.euid, privileges.lowest_nice
                ))
            } else {
                None
            };
            if let Some(problem) = problem {
                return Err(refuse(&nice.span(), format!("nice = {n}: {problem}")));
            }
            settings.nice = i32::try_from(n).ok();
        }
        if let Some(mb) = &t.memory_max_mb {
            let n = *mb.get_ref();
            if !(1..=MAX_MEMORY_MB).contains(&n) {
                return Err(refuse(
                    &mb.span(),
                    format!("memory_max_mb = {n}: must be between 1 and {MAX_MEMORY_MB}"),
                ));
            }
            settings.memory_max = Some(n * 1024 * 1024);
        }
        settings.user = identity_of(t.user.as_ref(), t.group.as_ref(), privileges.euid, &refuse)?;
        Ok(settings)
    }

    /// The settings that differ from `defaults`, each as `key = value` in the config's words,
    /// for `ward check`; empty when none does. Environment values are not shown: they may be
    /// secrets.
    pub fn differences(&self, defaults: &ProcessSettings) -> Vec<String> {
        let mut said = Vec::new();
        if !self.env.is_empty() {
            let names: Vec<&str> = self.env.keys().map(String::as_str).collect();
            said.push(format!("env = {} (values not shown)", names.join(" ")));
        }
        if !self.env_remove.is_empty() {
            said.push(format!("env_remove = {}", self.env_remove.join(" ")));
        }
        if self.cwd != defaults.cwd {
            said.push(format!("cwd = {}", self.cwd.display()));
        }
        if self.timeout != defaults.timeout {
            said.push(format!("timeout_s = {}", self.timeout.as_secs_f64()));
        }
        if self.stop_signal != defaults.stop_signal {
            let name = ward_sys::signal::name(self.stop_signal).unwrap_or("?");
            said.push(format!("stop_signal = {name}"));
        }
        if self.stop_grace != defaults.stop_grace {
            said.push(format!("stop_grace_s = {}", self.stop_grace.as_secs_f64()));
        }
        if let Some(nice) = self.nice {
            said.push(format!("nice = {nice}"));
        }
        if let Some(bytes) = self.memory_max {
            said.push(format!("memory_max_mb = {}", bytes / (1024 * 1024)));
        }
        if let Some(who) = &self.user {
            if let Some(user) = &who.user {
                said.push(format!("user = {user} (uid {})", who.uid));
            }
            let groups: Vec<String> = who.groups.iter().map(u32::to_string).collect();
            said.push(format!(
                "group = {} (gid {}, groups [{}])",
                who.group,
                who.gid,
                groups.join(", ")
            ));
        }
        said
    }
}

/// Why `name` cannot be an environment variable's name, if it cannot.
fn variable_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        Err("is empty")
    } else if name.contains('=') {
        Err("contains '='")
    } else if name.contains('\0') {
        Err("contains a NUL byte")
    } else if JOB_VARIABLES.contains(&name) {
        Err("is set by ward for each job")
    } else {
        Ok(())
    }
}

/// A trigger's `stop_signal`: a signal's name, with or without `SIG`, in any case.
fn stop_signal(text: &str) -> Result<i32, String> {
    let number = super::signal_number(text)
        .ok_or("not a signal name (such as \"SIGTERM\", \"SIGINT\" or \"SIGQUIT\")")?;
    // A stopped process stays stopped until SIGKILL ends it after the grace: that is a kill
    // with a delay, not a request to stop.
    if number == libc::SIGSTOP {
        return Err(
            "SIGSTOP suspends the process instead of asking it to end: use SIGKILL to kill it at once"
                .into(),
        );
    }
    Ok(number)
}

/// The identity `user` and `group` name, if they name one.
fn identity_of(
    user: Option<&At<NameOrId>>,
    group: Option<&At<NameOrId>>,
    euid: u32,
    refuse: &dyn Fn(&Range<usize>, String) -> ConfigError,
) -> Result<Option<Identity>, ConfigError> {
    let place = match (user, group) {
        (None, None) => return Ok(None),
        (Some(key), _) => ("user", key),
        (None, Some(key)) => ("group", key),
    };
    if euid != 0 {
        let (key, value) = place;
        return Err(refuse(
            &value.span(),
            format!(
                "{key} = {}: only root can run jobs as another user or group, and ward runs as uid {euid}",
                value.get_ref()
            ),
        ));
    }
    let group = group
        .map(|g| {
            identity::group(g.get_ref())
                .map_err(|problem| refuse(&g.span(), format!("group = {}: {problem}", g.get_ref())))
        })
        .transpose()?;
    let Some(user) = user else {
        // Only a group: the user stays ward's (root), with that group and no other.
        let (group, gid) = group.unwrap_or_default();
        return Ok(Some(Identity {
            user: None,
            uid: euid,
            group,
            gid,
            groups: Vec::new(),
        }));
    };
    let account = identity::user(user.get_ref()).map_err(|problem| {
        refuse(
            &user.span(),
            format!("user = {}: {problem}", user.get_ref()),
        )
    })?;
    let (group, gid) = match group {
        Some(group) => group,
        None => {
            let primary = identity::group(&NameOrId::Id(account.gid))
                .map_or_else(|_| account.gid.to_string(), |(name, _)| name);
            (primary, account.gid)
        }
    };
    let groups = identity::groups_of(&account, gid).map_err(|problem| {
        refuse(
            &user.span(),
            format!("user = {}: {problem}", user.get_ref()),
        )
    })?;
    Ok(Some(Identity {
        user: Some(account.name),
        uid: account.uid,
        group,
        gid,
        groups,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The settings of the first trigger of `text`, as `privileges` would have them.
    fn resolve(text: &str, privileges: Privileges) -> Result<ProcessSettings, ConfigError> {
        let section: TriggerSection = toml::from_str(text).unwrap();
        let defaults = ProcessSettings::defaults(
            "/base".into(),
            Duration::from_secs(300),
            Duration::from_secs(5),
        );
        let error = |span: &Range<usize>, message: String| ConfigError {
            file: "ward.toml".into(),
            position: Some(super::super::line_col(text, span.start)),
            message,
        };
        ProcessSettings::resolve(
            section.process_keys(),
            "trigger \"t\"",
            &defaults,
            Path::new("/base"),
            privileges,
            &error,
        )
    }

    const USER: Privileges = Privileges {
        euid: 1000,
        lowest_nice: 0,
    };
    const ROOT: Privileges = Privileges {
        euid: 0,
        lowest_nice: -20,
    };

    #[test]
    fn what_ward_may_not_do_as_an_ordinary_user_is_refused_at_the_value() {
        let err = resolve("exec = [\"a\"]\nuser = \"nobody\"\n", USER).unwrap_err();
        assert_eq!(err.position, Some((2, 8)), "{err}");
        assert!(
            err.message.contains("user = \"nobody\": only root")
                && err.message.contains("uid 1000"),
            "{err}"
        );
        let err = resolve("exec = [\"a\"]\ngroup = 65534\n", USER).unwrap_err();
        assert_eq!(err.position, Some((2, 9)), "{err}");
        let err = resolve("exec = [\"a\"]\nnice = -1\n", USER).unwrap_err();
        assert_eq!(err.position, Some((2, 8)), "{err}");
        assert!(
            err.message.contains("may not set a nice value below 0"),
            "{err}"
        );
        assert_eq!(
            resolve("exec = [\"a\"]\nnice = 5\n", USER).unwrap().nice,
            Some(5)
        );
        assert_eq!(
            resolve("exec = [\"a\"]\nnice = -5\n", ROOT).unwrap().nice,
            Some(-5)
        );
    }

    #[test]
    fn a_user_brings_its_groups_and_a_group_alone_replaces_them() {
        let who = |text: &str| resolve(text, ROOT).unwrap().user.unwrap();
        let nobody = who("exec = [\"a\"]\nuser = \"nobody\"\n");
        let account = identity::user(&NameOrId::Name("nobody".into())).unwrap();
        assert_eq!(nobody.user.as_deref(), Some("nobody"));
        assert_eq!((nobody.uid, nobody.gid), (account.uid, account.gid));
        assert!(nobody.groups.contains(&account.gid), "{nobody:?}");
        assert_eq!(
            who(&format!("exec = [\"a\"]\nuser = {}\n", account.uid)),
            nobody
        );
        let root_group = who("exec = [\"a\"]\nuser = \"nobody\"\ngroup = \"root\"\n");
        assert_eq!((root_group.gid, root_group.group.as_str()), (0, "root"));
        assert!(root_group.groups.contains(&0), "{root_group:?}");
        let group_only = who("exec = [\"a\"]\ngroup = 0\n");
        assert_eq!(
            group_only,
            Identity {
                user: None,
                uid: 0,
                group: "root".into(),
                gid: 0,
                groups: Vec::new()
            }
        );
    }

    #[test]
    fn only_the_settings_that_differ_are_shown_and_never_an_environment_value() {
        let defaults = ProcessSettings::defaults(
            "/base".into(),
            Duration::from_secs(300),
            Duration::from_secs(5),
        );
        assert!(defaults.differences(&defaults).is_empty());
        let mut settings = defaults.clone();
        settings.env.insert("TOKEN".into(), "hunter2".into());
        settings.env_remove.push("HOME".into());
        settings.timeout = Duration::from_millis(1500);
        settings.stop_signal = libc::SIGINT;
        settings.nice = Some(10);
        settings.memory_max = Some(64 << 20);
        let said = settings.differences(&defaults).join(", ");
        assert_eq!(
            said,
            "env = TOKEN (values not shown), env_remove = HOME, timeout_s = 1.5, \
             stop_signal = SIGINT, nice = 10, memory_max_mb = 64"
        );
    }
}

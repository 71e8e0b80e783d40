//! What the command line asked for, resolved into a [`Config`] and a [`StateDir`].

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::Error;
use crate::config::{Config, ConfigError, Handler, Trigger};
use crate::state::StateDir;

/// The inputs of every subcommand: a config file and/or quick flags, and a state directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Launch {
    /// `--config FILE`.
    pub config_file: Option<PathBuf>,
    /// `--state-dir DIR`.
    pub state_dir: Option<PathBuf>,
    /// `--watch DIR`, repeatable: replaces the config's roots.
    pub watch: Vec<PathBuf>,
    /// `--ignore GLOB`, repeatable: added to the config's ignores.
    pub ignore: Vec<String>,
    /// `--workers N`.
    pub workers: Option<usize>,
    /// `--debounce MS`.
    pub debounce_ms: Option<u64>,
    /// `-- COMMAND ARGS...`: an exec trigger for every file, tried before the config's triggers.
    pub command: Vec<String>,
}

impl Launch {
    /// The state directory to use: `--state-dir`, else `.ward` beside the config file, else
    /// `.ward` in the current directory. Relative paths are made absolute against the current
    /// directory, so a daemon that changes directory keeps using the same one.
    ///
    /// # Errors
    /// If the current directory cannot be read.
    pub fn state_dir_path(&self) -> Result<PathBuf, Error> {
        let cwd = std::env::current_dir().map_err(|e| Error::Io {
            context: "current directory".into(),
            source: e,
        })?;
        Ok(match (&self.state_dir, &self.config_file) {
            (Some(dir), _) => cwd.join(dir),
            (None, Some(file)) => cwd
                .join(file)
                .parent()
                .map_or_else(|| cwd.clone(), Path::to_path_buf)
                .join(".ward"),
            (None, None) => cwd.join(".ward"),
        })
    }

    /// Opens (creating when missing) the state directory.
    ///
    /// # Errors
    /// See [`StateDir::open`].
    pub fn open_state_dir(&self) -> Result<StateDir, Error> {
        StateDir::open(&self.state_dir_path()?)
    }

    /// Loads the config file (if any) and applies the quick flags on top; every watch root must
    /// be a directory (what `ward start`, `ward run` and `ward check` want: a typo is said at once).
    ///
    /// # Errors
    /// [`Error::Config`] naming the file (or `<command line>`) and the problem.
    pub fn config(&self) -> Result<Config, Error> {
        let config = self.config_with_missing_roots()?;
        for root in &config.roots {
            if !root.is_dir() {
                let source = config
                    .source
                    .clone()
                    .unwrap_or_else(|| "<command line>".into());
                let message = format!("watch root {} is not a directory", root.display());
                return Err(ConfigError {
                    file: source,
                    position: None,
                    message,
                }
                .into());
            }
        }
        Ok(config)
    }

    /// [`Launch::config`] where a root may be missing: the server restarted by the keeper, or
    /// reloading, waits for a root that went away (the watcher says so and watches it when it
    /// comes back) instead of exiting until the keeper gives up.
    ///
    /// # Errors
    /// As [`Launch::config`], but for the roots.
    pub fn config_with_missing_roots(&self) -> Result<Config, Error> {
        let cwd = std::env::current_dir().map_err(|e| Error::Io {
            context: "current directory".into(),
            source: e,
        })?;
        let mut config = match &self.config_file {
            Some(file) => Config::load(&cwd.join(file))?,
            None => Config::defaults(cwd.clone()),
        };
        let flag_error = |message: String| ConfigError {
            file: "<command line>".into(),
            position: None,
            message,
        };
        if !self.watch.is_empty() {
            config.roots = self
                .watch
                .iter()
                .map(|w| crate::config::normalize(&cwd.join(w)))
                .collect();
        }
        config.ignore.extend(self.ignore.iter().cloned());
        if let Some(n) = self.workers {
            if !(1..=256).contains(&n) {
                return Err(flag_error(format!("--workers {n}: must be between 1 and 256")).into());
            }
            config.workers = n;
        }
        if let Some(ms) = self.debounce_ms {
            if ms > 60_000 {
                return Err(flag_error(format!(
                    "--debounce {ms}: must be between 0 and 60000 (milliseconds)"
                ))
                .into());
            }
            config.debounce = Duration::from_millis(ms);
            config.max_wait = config.max_wait.max(config.debounce);
        }
        if !self.command.is_empty() {
            let handler = Handler::Exec {
                argv: self.command.clone(),
            };
            config.triggers.insert(
                0,
                Trigger {
                    name: "command".into(),
                    globs: Vec::new(),
                    handler,
                },
            );
        }
        if config.triggers.is_empty() {
            let message = "nothing to run: give a command after `--`, or [[trigger]] sections in a config file";
            return Err(match &config.source {
                Some(file) => ConfigError {
                    file: file.clone(),
                    position: None,
                    message: message.into(),
                },
                None => flag_error(message.into()),
            }
            .into());
        }
        Ok(config)
    }

    /// The arguments that make a `ward __server` process see the same launch.
    pub fn server_args(&self, state_dir: &Path) -> Vec<OsString> {
        let mut args: Vec<OsString> =
            vec!["__server".into(), "--state-dir".into(), state_dir.into()];
        let cwd = std::env::current_dir().unwrap_or_default();
        if let Some(file) = &self.config_file {
            args.extend(["--config".into(), cwd.join(file).into()]);
        }
        for w in &self.watch {
            args.extend(["--watch".into(), cwd.join(w).into()]);
        }
        for i in &self.ignore {
            args.extend(["--ignore".into(), i.into()]);
        }
        if let Some(n) = self.workers {
            args.extend(["--workers".into(), n.to_string().into()]);
        }
        if let Some(ms) = self.debounce_ms {
            args.extend(["--debounce".into(), ms.to_string().into()]);
        }
        if !self.command.is_empty() {
            args.push("--".into());
            args.extend(self.command.iter().map(OsString::from));
        }
        args
    }
}

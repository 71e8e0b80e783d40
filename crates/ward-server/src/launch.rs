//! What the command line asked for: a config file and/or flags, and a state directory; resolved
//! into a [`Config`] by [`Config::resolve`], the one place that validates settings.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::Error;
use crate::config::{Config, ConfigError, Flags};
use crate::discover::{Origin, STATE_DIR, discover};
use crate::state::StateDir;

/// The inputs of every subcommand: a config file and/or quick flags, and a state directory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Launch {
    /// `--config FILE`.
    pub config_file: Option<PathBuf>,
    /// `--state-dir DIR`.
    pub state_dir: Option<PathBuf>,
    /// The flags that describe a job without a config file, or change the file's settings.
    pub flags: Flags,
    /// How the config file or state directory was chosen (not recorded: a recorded launch is
    /// [`Origin::Given`] when read back).
    #[serde(skip)]
    pub origin: Origin,
}

impl Launch {
    /// This launch with its config file or state directory found by searching up from the
    /// current directory when it names neither (see [`discover`]).
    ///
    /// # Errors
    /// If the current directory cannot be read.
    pub fn discovered(self) -> Result<Launch, Error> {
        Ok(discover(self, &current_dir()?))
    }

    /// The state directory to use: `--state-dir`, else `.ward` beside the config file, else
    /// `.ward` in the current directory. Relative paths are made absolute against the current
    /// directory, so a daemon that changes directory keeps using the same one.
    ///
    /// # Errors
    /// If the current directory cannot be read.
    pub fn state_dir_path(&self) -> Result<PathBuf, Error> {
        let cwd = current_dir()?;
        Ok(match (&self.state_dir, &self.config_file) {
            (Some(dir), _) => cwd.join(dir),
            (None, Some(file)) => cwd
                .join(file)
                .parent()
                .map_or_else(|| cwd.clone(), Path::to_path_buf)
                .join(STATE_DIR),
            (None, None) => cwd.join(STATE_DIR),
        })
    }

    /// Whether it names neither a config file nor flags (`ward restart` then restarts what ran).
    pub fn asks_nothing(&self) -> bool {
        self.config_file.is_none() && self.flags == Flags::default()
    }

    /// Opens (creating when missing) the state directory.
    ///
    /// # Errors
    /// See [`StateDir::open`].
    pub fn open_state_dir(&self) -> Result<StateDir, Error> {
        StateDir::open(&self.state_dir_path()?)
    }

    /// The same launch with every path absolute, so that it means the same thing to a process
    /// in another directory (the daemon reads it again on a reload).
    ///
    /// # Errors
    /// If the current directory cannot be read.
    pub fn absolute(&self) -> Result<Launch, Error> {
        let cwd = current_dir()?;
        Ok(Launch {
            config_file: self.config_file.as_ref().map(|f| cwd.join(f)),
            state_dir: Some(self.state_dir_path()?),
            flags: Flags {
                watch: self.flags.watch.iter().map(|w| cwd.join(w)).collect(),
                ..self.flags.clone()
            },
            origin: self.origin.clone(),
        })
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

    /// [`Launch::config`] where a root may be missing: the server reloading waits for a root
    /// that went away (the watcher says so and watches it when it comes back) instead of
    /// refusing the whole configuration.
    ///
    /// # Errors
    /// As [`Launch::config`], but for the roots.
    pub fn config_with_missing_roots(&self) -> Result<Config, Error> {
        let cwd = current_dir()?;
        Config::resolve(self.config_file.as_deref(), &self.flags, &cwd).map_err(|mut e| {
            if self.config_file.is_none() && self.origin != Origin::Given {
                e.message = format!("{} ({})", e.message, self.origin.hint());
            }
            e.into()
        })
    }
}

fn current_dir() -> Result<PathBuf, Error> {
    std::env::current_dir().map_err(|e| Error::io("current directory", e))
}

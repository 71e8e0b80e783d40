//! What `ward start` and `ward run` hand to the daemon they start: the configuration they
//! resolved, the launch it came from (a reload resolves it again) and where the server binary is.
//!
//! It crosses the process boundary whole, as JSON in the state directory, never as argv parsed
//! again: the command line offers it in a file of its own (`launch.json.<pid>`) whose name is the
//! keeper's only argument; the keeper takes it, and once it holds the pidfile lock records it as
//! `launch.json`, which the server reads at every start. A second `ward start` racing the first
//! so never replaces the running daemon's configuration. The server records a reloaded
//! configuration there too, so that a server restarted after a crash runs what was last loaded.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::state::{StateDir, names, open_private};
use crate::{Config, Error, Launch};

/// The version the command line, the keeper and the server must share.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The daemon's inputs, resolved by the command line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Handover {
    /// The ward version that wrote it.
    pub version: String,
    /// The launch, every path absolute: what a reload resolves again.
    pub launch: Launch,
    /// The configuration resolved from it.
    pub config: Config,
    /// The binary the keeper runs the server from (`ward __server`).
    pub server_exe: PathBuf,
    /// Whether the keeper echoes its log to stderr (`ward run`).
    pub foreground: bool,
}

impl Handover {
    /// The handover of `config`, resolved from `launch` by this process.
    ///
    /// # Errors
    /// If the current directory or this binary cannot be found.
    pub fn new(launch: &Launch, config: Config, foreground: bool) -> Result<Handover, Error> {
        let server_exe =
            std::env::current_exe().map_err(|e| Error::io("locating the ward binary", e))?;
        Ok(Handover {
            version: VERSION.into(),
            launch: launch.absolute()?,
            config,
            server_exe,
            foreground,
        })
    }

    /// Writes the offer for a keeper to [`take`](Handover::take): returns its path.
    ///
    /// # Errors
    /// If the file cannot be written.
    pub fn offer(&self, state: &StateDir) -> Result<PathBuf, Error> {
        let path = state.join(&format!("{}.{}", names::HANDOVER, std::process::id()));
        self.write_to(&path)?;
        Ok(path)
    }

    /// Reads and removes an offer.
    ///
    /// # Errors
    /// If it cannot be read, is not a handover, or comes from another version of ward.
    pub fn take(offer: &Path) -> Result<Handover, Error> {
        let handover = Handover::read_from(offer);
        if let Err(e) = fs::remove_file(offer) {
            log::debug!("cannot remove the offer {}: {e}", offer.display());
        }
        handover
    }

    /// Records the handover as the running daemon's (the keeper, holding the pidfile lock).
    ///
    /// # Errors
    /// If it cannot be written.
    pub fn record(&self, state: &StateDir) -> Result<(), Error> {
        self.write_to(&state.join(names::HANDOVER))
    }

    /// The running daemon's handover (the server, at start).
    ///
    /// # Errors
    /// If there is none, or it is unreadable or from another version of ward.
    pub fn read(state: &StateDir) -> Result<Handover, Error> {
        Handover::read_from(&state.join(names::HANDOVER))
    }

    fn read_from(path: &Path) -> Result<Handover, Error> {
        let problem = |problem: String| Error::Handover {
            path: path.to_path_buf(),
            problem,
        };
        let text = fs::read(path).map_err(|e| problem(format!("cannot read: {e}")))?;
        let value: serde_json::Value =
            serde_json::from_slice(&text).map_err(|e| problem(format!("not JSON: {e}")))?;
        // The version first, so that another build says so rather than a field it lacks.
        let version = value.get("version").and_then(|v| v.as_str()).unwrap_or("");
        if version != VERSION {
            return Err(problem(format!(
                "written by ward {version:?}, read by ward {VERSION}: install ward and ward-keeper from one build"
            )));
        }
        serde_json::from_value(value).map_err(|e| problem(format!("not a handover: {e}")))
    }

    /// Writes atomically (a temporary file, then a rename), mode 0600.
    fn write_to(&self, path: &Path) -> Result<(), Error> {
        let tmp = path.with_extension("tmp");
        // A struct of strings, numbers and paths always serializes.
        let text = serde_json::to_vec_pretty(self).unwrap_or_default();
        let written = open_private(
            OpenOptions::new().write(true).create(true).truncate(true),
            &tmp,
        )
        .and_then(|mut file| file.write_all(&text))
        .and_then(|()| fs::rename(&tmp, path));
        if written.is_err() {
            // A full disk leaves a partial file; the next write starts over.
            let _ = fs::remove_file(&tmp);
        }
        written.map_err(|e| Error::io(format!("writing {}", path.display()), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Flags;

    fn handover(dir: &Path) -> Handover {
        let launch = Launch {
            config_file: None,
            state_dir: Some(dir.join("state")),
            flags: Flags {
                watch: vec![dir.to_path_buf()],
                workers: Some(3),
                command: vec!["true".into()],
                ..Flags::default()
            },
        };
        let config = launch.config().unwrap();
        Handover::new(&launch, config, true).unwrap()
    }

    #[test]
    fn an_offer_is_taken_whole_once_and_recorded_for_the_server() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(&dir.path().join("state")).unwrap();
        let sent = handover(dir.path());
        assert_eq!(sent.config.workers, 3);
        let offer = sent.offer(&state).unwrap();
        let taken = Handover::take(&offer).unwrap();
        assert_eq!(taken, sent);
        assert!(!offer.exists(), "an offer is left behind");
        assert!(Handover::take(&offer).is_err());
        taken.record(&state).unwrap();
        assert_eq!(Handover::read(&state).unwrap(), sent);
    }

    #[test]
    fn a_handover_of_another_version_is_refused_naming_both() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(&dir.path().join("state")).unwrap();
        let other = Handover {
            version: "0.0.1-other".into(),
            ..handover(dir.path())
        };
        other.record(&state).unwrap();
        let e = Handover::read(&state).unwrap_err().to_string();
        assert!(e.contains("0.0.1-other") && e.contains(VERSION), "{e}");
    }
}

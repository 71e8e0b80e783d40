//! What `ward start` and `ward run` hand to the daemon they start: the configuration they
//! resolved, the launch it came from (a reload resolves it again) and where the server binary is.
//!
//! It crosses the process boundary whole, as JSON in the state directory, never as argv parsed
//! again: the command line offers it in a file of its own (`launch.json.<pid>`) whose name is the
//! keeper's only argument. The keeper reads only the few settings it uses ([`KeeperView`]: the
//! code that decodes a whole configuration would stay in its resident memory for nothing), and
//! once it holds the pidfile lock renames the offer to `launch.json`, which the server reads at
//! every start. So a second `ward start` racing the first never replaces the running daemon's
//! configuration. The server records a reloaded configuration there too, so that a server
//! restarted after a crash runs what was last loaded.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::OnDeath;
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
    /// The umask `ward start` or `ward run` was given: the jobs' umask unless the configuration
    /// sets one (`[jobs] umask`).
    pub umask: u32,
    /// Set by `ward work --detach`: the server process runs the work, not the watcher.
    #[serde(default)]
    pub work: Option<crate::remote::WorkOptions>,
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
            umask: crate::umask::current(),
            work: None,
        })
    }

    /// Writes the offer a keeper reads with [`KeeperView::of_offer`]: returns its path.
    ///
    /// # Errors
    /// If the file cannot be written.
    pub fn offer(&self, state: &StateDir) -> Result<PathBuf, Error> {
        remove_stale_offers(state);
        let path = state.join(&format!("{}.{}", names::HANDOVER, std::process::id()));
        self.write_to(&path)?;
        Ok(path)
    }

    /// Gives this process (the server, whose children are the jobs and workers) the umask its
    /// configuration asks for, else the one ward was started with.
    pub fn apply_umask(&self) {
        crate::umask::set(self.config.umask.unwrap_or(self.umask));
    }

    /// Records the handover as the running daemon's (a reload).
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
        let mut handover: Handover = decode(&state.join(names::HANDOVER))?;
        handover.config = handover.config.with_unrecorded_settings();
        Ok(handover)
    }

    /// Writes atomically (a temporary file, then a rename), mode 0600.
    fn write_to(&self, path: &Path) -> Result<(), Error> {
        // Beside `path` under a name of its own: two `ward start`s offering at once, each its own
        // `launch.json.<pid>`, must not share one temporary file.
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
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

/// Removes the offers (and their temporary files) of processes that are gone: a command line
/// killed between writing its offer and a keeper taking it leaves one, which nothing else reads.
fn remove_stale_offers(state: &StateDir) {
    let Ok(entries) = fs::read_dir(state.path()) else {
        return;
    };
    let prefix = format!("{}.", names::HANDOVER);
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .map(|rest| rest.trim_end_matches(".tmp"))
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !ward_sys::is_alive(pid)
            && let Err(e) = fs::remove_file(entry.path())
        {
            log::warn!("removing the stale offer {}: {e}", entry.path().display());
        }
    }
}

/// What the keeper reads of an offer: the server's binary, whether to echo the log, and the
/// settings of the configuration it uses itself.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub(crate) struct KeeperView {
    /// The binary the keeper runs the server from.
    pub server_exe: PathBuf,
    /// Whether the keeper echoes its log to stderr.
    pub foreground: bool,
    /// The state directory, from the launch.
    launch: StateDirOnly,
    /// The settings the keeper uses.
    config: KeeperSettings,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
struct StateDirOnly {
    state_dir: Option<PathBuf>,
}

/// The settings of a [`Config`] the keeper uses; the rest is the server's.
#[derive(Debug, Clone, PartialEq, Deserialize)]
struct KeeperSettings {
    log_max_bytes: u64,
    drain_timeout: Duration,
    stop_grace: Duration,
    heartbeat_log: Duration,
    keep_reports: usize,
    /// Only for their stop graces: the server stopping lets each job and worker its own.
    #[serde(default)]
    triggers: Vec<TriggerGrace>,
    /// The keeper runs them for the server's deaths.
    #[serde(default)]
    on_death: Vec<OnDeath>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
struct TriggerGrace {
    #[serde(default)]
    process: Option<GraceOnly>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
struct GraceOnly {
    stop_grace: Duration,
}

impl KeeperView {
    /// Reads the keeper's view of an offer (which stays in place until [`settle`](Self::settle)).
    ///
    /// # Errors
    /// If it cannot be read, is not a handover, or comes from another version of ward.
    pub fn of_offer(offer: &Path) -> Result<KeeperView, Error> {
        decode(offer)
    }

    /// The state directory the offer is for.
    pub fn state_dir(&self) -> Option<&Path> {
        self.launch.state_dir.as_deref()
    }

    /// The configuration the keeper runs with: the defaults, but for the settings it uses. Its
    /// stop grace is the longest of `[jobs]`'s and the triggers': the server stopping gives a
    /// job running at the drain deadline its trigger's, and must not be killed meanwhile; plus
    /// what the server's `on_death` hooks may take at its end
    /// ([`DeathHooks`](crate::hooks::DeathHooks)' drop: twice the longest hook grace).
    pub fn config(&self) -> Config {
        let state_dir = self.state_dir().map(Path::to_path_buf).unwrap_or_default();
        let s = &self.config;
        let longest_grace = s
            .triggers
            .iter()
            .filter_map(|t| t.process.as_ref().map(|p| p.stop_grace))
            .fold(s.stop_grace, Duration::max);
        let hooks_end = crate::hooks::finish_window(&s.on_death) * 2;
        Config {
            log_max_bytes: s.log_max_bytes,
            drain_timeout: s.drain_timeout,
            stop_grace: longest_grace + hooks_end,
            heartbeat_log: s.heartbeat_log,
            keep_reports: s.keep_reports,
            on_death: s.on_death.clone(),
            ..Config::defaults(state_dir)
        }
    }

    /// The `on_death` hooks the running daemon's handover (`launch.json`) names now: a reload
    /// records its configuration there, so the keeper's hooks follow it. `None` if it cannot be
    /// read.
    pub fn hooks_now(state: &StateDir) -> Option<Vec<OnDeath>> {
        decode::<KeeperView>(&state.join(names::HANDOVER))
            .ok()
            .map(|view| view.config.on_death)
    }

    /// Makes the offer the running daemon's handover (`launch.json`): called by the keeper once
    /// it holds the pidfile lock, so that a keeper turned away never replaces it.
    ///
    /// # Errors
    /// If the offer cannot be moved.
    pub fn settle(offer: &Path, state: &StateDir) -> Result<(), Error> {
        let path = state.join(names::HANDOVER);
        fs::rename(offer, &path).map_err(|e| {
            Error::io(
                format!("moving {} to {}", offer.display(), path.display()),
                e,
            )
        })
    }

    /// Removes an offer no keeper will take.
    pub fn withdraw(offer: &Path) {
        if let Err(e) = fs::remove_file(offer)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            log::warn!("cannot remove the offer {}: {e}", offer.display());
        }
    }
}

/// Reads the handover file at `path` as `T`, the whole or the keeper's view.
fn decode<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, Error> {
    let problem = |problem: String| Error::Handover {
        path: path.to_path_buf(),
        problem,
    };
    #[derive(Deserialize)]
    struct Version {
        version: String,
    }
    let text = fs::read(path).map_err(|e| problem(format!("cannot read: {e}")))?;
    // The version first, so that another build says so rather than a field it lacks.
    let Version { version } =
        serde_json::from_slice(&text).map_err(|e| problem(format!("not a handover: {e}")))?;
    if version != VERSION {
        return Err(problem(format!(
            "written by ward {version:?}, read by ward {VERSION}: install ward and ward-keeper from one build"
        )));
    }
    serde_json::from_slice(&text).map_err(|e| problem(format!("not a handover: {e}")))
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
            ..Launch::default()
        };
        let config = launch.config().unwrap();
        Handover::new(&launch, config, true).unwrap()
    }

    #[test]
    fn an_offer_gives_the_keeper_its_settings_and_the_server_the_whole() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(&dir.path().join("state")).unwrap();
        let sent = handover(dir.path());
        assert_eq!(sent.config.workers, 3);
        let offer = sent.offer(&state).unwrap();
        let view = KeeperView::of_offer(&offer).unwrap();
        assert_eq!(view.state_dir(), Some(state.path()));
        assert_eq!(view.server_exe, sent.server_exe);
        let kept = view.config();
        assert_eq!(
            (
                kept.log_max_bytes,
                kept.drain_timeout,
                kept.stop_grace,
                kept.keep_reports
            ),
            (
                sent.config.log_max_bytes,
                sent.config.drain_timeout,
                sent.config.stop_grace,
                sent.config.keep_reports
            )
        );
        KeeperView::settle(&offer, &state).unwrap();
        assert!(!offer.exists(), "an offer is left behind");
        assert_eq!(Handover::read(&state).unwrap(), sent);
    }

    #[test]
    fn the_keeper_gives_the_server_the_longest_stop_grace_of_any_trigger() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(&dir.path().join("state")).unwrap();
        let mut sent = handover(dir.path());
        let mut slow = sent.config.triggers[0].clone();
        slow.name = "slow".into();
        slow.process.stop_grace = sent.config.stop_grace * 4;
        sent.config.triggers.push(slow);
        let view = KeeperView::of_offer(&sent.offer(&state).unwrap()).unwrap();
        assert_eq!(view.config().stop_grace, sent.config.stop_grace * 4);
    }

    #[test]
    fn the_keeper_gets_the_on_death_hooks_and_the_recorded_ones_after_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(&dir.path().join("state")).unwrap();
        let mut sent = handover(dir.path());
        let process = sent.config.default_process();
        let hook = |argv: &str| OnDeath {
            command: vec![argv.into()],
            roles: vec![crate::config::Role::Server],
            process: process.clone(),
        };
        sent.config.on_death = vec![hook("page")];
        let grace = sent.config.stop_grace;
        let offer = sent.offer(&state).unwrap();
        let view = KeeperView::of_offer(&offer).unwrap();
        let kept = view.config();
        assert_eq!(kept.on_death, sent.config.on_death);
        // The server's stop may take its hooks' end: twice their grace.
        assert_eq!(kept.stop_grace, grace * 3);
        KeeperView::settle(&offer, &state).unwrap();
        assert_eq!(KeeperView::hooks_now(&state), Some(vec![hook("page")]));
        // A reload records the configuration; the keeper's next look finds its hooks.
        sent.config.on_death = vec![hook("mail"), hook("page")];
        sent.record(&state).unwrap();
        assert_eq!(KeeperView::hooks_now(&state), Some(sent.config.on_death));
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

    /// Regression: an offer left by a command line killed before a keeper took it stayed in the
    /// state directory for good.
    #[test]
    fn an_offer_of_a_process_that_is_gone_is_removed_by_the_next_offer() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(&dir.path().join("state")).unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let gone = child.id();
        child.wait().unwrap();
        let stale = state.join(&format!("{}.{gone}", names::HANDOVER));
        let stale_tmp = state.join(&format!("{}.{gone}.tmp", names::HANDOVER));
        let live = state.join(&format!("{}.1", names::HANDOVER));
        for file in [&stale, &stale_tmp, &live] {
            fs::write(file, "{}").unwrap();
        }
        let mine = handover(dir.path()).offer(&state).unwrap();
        assert!(mine.exists());
        assert!(
            !stale.exists() && !stale_tmp.exists(),
            "a stale offer is left"
        );
        assert!(live.exists(), "pid 1's offer is not stale");
    }
}

//! `ward reload`: the running daemon reads its configuration again, as on SIGHUP, and this
//! command says whether it took it. What SIGHUP cannot: a refusal reaches the terminal (with the
//! file, line and column) and the exit code, not only the log.

use std::time::Duration;

use crate::protocol::{Reloaded, Request};
use crate::state::{Pidfile, PidfileState, names};
use crate::{Error, Launch, Outcome, control};

/// How long `ward reload` waits for the server's answer: longer than the server waits for its
/// own loop to take the request and reload (10 s), so that the server's "busy" is what is said.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(15);

/// `ward reload`: asks the running server to reload the configuration it was started with (the
/// config file it was launched with, read again; `--config` here only finds the state
/// directory). Exit 0 once it runs, 2 if the file is invalid, 1 if it could not be applied or
/// asked, 3 if ward is not running.
pub fn reload(launch: &Launch) -> Outcome {
    match ask_reload(launch) {
        Ok(Some(reloaded)) => said(reloaded),
        Ok(None) => {
            eprintln!(
                "ward is not running for {}: nothing to reload ({})",
                launch.state_dir_path().map_or_else(
                    |_| "this state directory".into(),
                    |p| p.display().to_string()
                ),
                launch.origin.hint()
            );
            Outcome::NotRunning
        }
        Err(e) => Outcome::Failed(e),
    }
}

/// The server's answer, or `None` if no keeper runs for the state directory.
fn ask_reload(launch: &Launch) -> Result<Option<Reloaded>, Error> {
    let Some(state) = super::existing_state_dir(launch)? else {
        return Ok(None);
    };
    let PidfileState::Running(_) = Pidfile::inspect(&state)? else {
        return Ok(None);
    };
    control::ask(&state.join(names::SOCKET), &Request::Reload, RELOAD_TIMEOUT).map(Some)
}

fn said(reloaded: Reloaded) -> Outcome {
    match reloaded {
        Reloaded::Applied {
            triggers,
            after_restart,
        } => {
            println!("ward reloaded its configuration: {triggers} trigger(s) active");
            if !after_restart.is_empty() {
                println!(
                    "  changed, and applied only after `ward restart`: {}",
                    after_restart.join(", ")
                );
            }
            Outcome::Success
        }
        Reloaded::Invalid { error } => Outcome::Failed(Error::ReloadRefused {
            reason: error,
            invalid_config: true,
        }),
        Reloaded::Failed { error } => Outcome::Failed(Error::ReloadRefused {
            reason: error,
            invalid_config: false,
        }),
    }
}

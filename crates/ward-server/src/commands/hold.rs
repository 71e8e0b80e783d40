//! `ward hold NAME [--timeout S] [-- CMD...]` and `ward release NAME`: job starts and
//! subscription deliveries held back while something changes many files at once (a `git
//! checkout`), then each changed path handled once. With a command, the hold lasts while it runs
//! and is released after it, whatever its exit; the command's exit status is ward's.

use std::time::Duration;

use crate::protocol::{Holding, Request};
use crate::state::{Pidfile, PidfileState, names};
use crate::{Error, Launch, Outcome, control};

/// How long the command waits for the server's answer.
const HOLD_TIMEOUT: Duration = Duration::from_secs(5);

fn ask(launch: &Launch, request: &Request) -> Result<Option<Holding>, Error> {
    let Some(state) = super::existing_state_dir(launch)? else {
        return Ok(None);
    };
    let PidfileState::Running(_) = Pidfile::inspect(&state)? else {
        return Ok(None);
    };
    control::ask(&state.join(names::SOCKET), request, HOLD_TIMEOUT).map(Some)
}

fn not_running(launch: &Launch) -> Outcome {
    eprintln!(
        "ward is not running: nothing to hold ({})",
        launch.origin.hint()
    );
    Outcome::NotRunning
}

/// `ward hold NAME [--timeout S] [-- CMD...]`.
pub fn hold(launch: &Launch, name: &str, timeout_s: Option<u64>, command: &[String]) -> Outcome {
    let request = Request::Hold {
        name: name.to_owned(),
        timeout_s,
    };
    match ask(launch, &request) {
        Ok(Some(holding)) if command.is_empty() => {
            println!("held: {}", holding.holds.join(", "));
            Outcome::Success
        }
        Ok(Some(_)) => {
            let status = std::process::Command::new(&command[0])
                .args(&command[1..])
                .status();
            // Released whatever became of the command: a hold left in place would hold every
            // job until its timeout.
            let released = release(launch, name);
            match status {
                Ok(status) if status.success() => released,
                Ok(status) => {
                    eprintln!("ward hold: {} {status}", command[0]);
                    Outcome::Exit(status.code().unwrap_or(1))
                }
                Err(e) => Outcome::Failed(Error::io(format!("running {}", command[0]), e)),
            }
        }
        Ok(None) => not_running(launch),
        Err(e) => Outcome::Failed(e),
    }
}

/// `ward release NAME`.
pub fn release(launch: &Launch, name: &str) -> Outcome {
    match ask(
        launch,
        &Request::Release {
            name: name.to_owned(),
        },
    ) {
        Ok(Some(holding)) if holding.holds.is_empty() => {
            println!("released {name}: no hold in place");
            Outcome::Success
        }
        Ok(Some(holding)) => {
            println!(
                "released {name}; still held by {}",
                holding.holds.join(", ")
            );
            Outcome::Success
        }
        Ok(None) => not_running(launch),
        Err(e) => Outcome::Failed(e),
    }
}

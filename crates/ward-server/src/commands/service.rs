//! `ward service start|stop|restart NAME`: one service of the running daemon started, stopped
//! or restarted, answered once it is done (stopped, or started and ready), as `systemctl` does.

use std::time::Duration;

use crate::protocol::{Request, ServiceAction, ServiceDone};
use crate::state::{Pidfile, PidfileState, names};
use crate::{Error, Launch, Outcome, control};

/// How long `ward service` waits for the answer at most. The server bounds its own wait by the
/// longest stop grace and readiness timeout of its config, which this command cannot know; a
/// server that dies meanwhile closes the connection, which ends the wait.
const SERVICE_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// `ward service ACTION NAME`: exit 0 once done, 1 if the server refused or it failed, 3 if ward
/// is not running.
pub fn service(launch: &Launch, action: ServiceAction, name: &str) -> Outcome {
    let asked = (|| -> Result<Option<ServiceDone>, Error> {
        let Some(state) = super::existing_state_dir(launch)? else {
            return Ok(None);
        };
        let PidfileState::Running(_) = Pidfile::inspect(&state)? else {
            return Ok(None);
        };
        let request = Request::Service {
            name: name.to_owned(),
            action,
        };
        control::ask::<ServiceDone>(&state.join(names::SOCKET), &request, SERVICE_TIMEOUT).map(Some)
    })();
    match asked {
        Ok(Some(done)) => {
            match (done.done, done.pid) {
                (ServiceAction::Stop, _) => println!("service {} stopped", done.service),
                (ServiceAction::Start, Some(pid)) => {
                    println!("service {} runs and is ready, pid {pid}", done.service);
                }
                (ServiceAction::Restart, Some(pid)) => {
                    println!("service {} restarted and ready, pid {pid}", done.service);
                }
                (action, None) => println!("service {}: {} done", done.service, action.as_str()),
            }
            Outcome::Success
        }
        Ok(None) => {
            eprintln!(
                "ward is not running: no service to {} ({})",
                action.as_str(),
                launch.origin.hint()
            );
            Outcome::NotRunning
        }
        Err(e) => Outcome::Failed(e),
    }
}

//! `ward metrics`: the running daemon's metrics in the Prometheus text format, as `/metrics`
//! serves them where `[metrics] listen` is set, here through the control socket.

use std::io::Write;
use std::time::Duration;

use crate::protocol::{MetricsText, Request};
use crate::state::{Pidfile, PidfileState, names};
use crate::{Error, Launch, Outcome, control};

/// How long `ward metrics` waits for the answer.
const METRICS_TIMEOUT: Duration = Duration::from_secs(5);

/// `ward metrics`: prints the exposition; exit 3 if ward is not running.
pub fn metrics(launch: &Launch) -> Outcome {
    let asked = (|| -> Result<Option<MetricsText>, Error> {
        let Some(state) = super::existing_state_dir(launch)? else {
            return Ok(None);
        };
        let PidfileState::Running(_) = Pidfile::inspect(&state)? else {
            return Ok(None);
        };
        control::ask(
            &state.join(names::SOCKET),
            &Request::Metrics,
            METRICS_TIMEOUT,
        )
        .map(Some)
    })();
    match asked {
        Ok(Some(text)) => {
            let mut out = std::io::stdout().lock();
            match out
                .write_all(text.metrics.as_bytes())
                .and_then(|()| out.flush())
            {
                Ok(()) => Outcome::Success,
                // `ward metrics | head`: the reader is gone, which is no failure.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Outcome::Success,
                Err(e) => Outcome::Failed(Error::io("writing the metrics", e)),
            }
        }
        Ok(None) => {
            eprintln!("ward is not running: no metrics ({})", launch.origin.hint());
            Outcome::NotRunning
        }
        Err(e) => Outcome::Failed(e),
    }
}

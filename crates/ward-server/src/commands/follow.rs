//! `ward changes --follow`: the changes recorded after a sequence number, printed as JSON lines
//! as they are recorded, through the server's restarts, until the daemon stops or the output is
//! closed.
//!
//! It subscribes on the control socket (`subscribe`), prints each line the server sends as it
//! comes, and remembers the last sequence number printed: when the connection ends while ward
//! still runs (the keeper is restarting the server), it subscribes again from there, so nothing
//! is lost and nothing is printed twice.

use std::io::{BufRead, Write};
use std::time::{Duration, Instant};

use crate::protocol::{self, Request, Subscribed};
use crate::state::{Pidfile, PidfileState, names};
use crate::{Error, Launch, Outcome, control};

/// How often it tries to subscribe again while the server restarts.
const RECONNECT_EVERY: Duration = Duration::from_millis(100);
/// How long a server may take to come back before the follower gives up.
const RECONNECT_FOR: Duration = Duration::from_secs(60);

/// `ward changes --follow [--since SEQ] [--glob G]...`.
pub fn follow(launch: &Launch, since: u64, globs: &[String]) -> Outcome {
    match follow_changes(launch, since, globs) {
        Ok(()) => Outcome::Success,
        Err(e) => Outcome::Failed(e),
    }
}

fn follow_changes(launch: &Launch, mut since: u64, globs: &[String]) -> Result<(), Error> {
    let Some(state) = super::existing_state_dir(launch)? else {
        return Err(Error::NotRunning(launch.state_dir_path()?));
    };
    let socket = state.join(names::SOCKET);
    let mut out = std::io::stdout().lock();
    let mut line = Vec::new();
    let mut lost_at: Option<Instant> = None;
    let mut subscribed = false;
    loop {
        let PidfileState::Running(_) = Pidfile::inspect(&state)? else {
            // Stopped since it was followed: every change it recorded was printed.
            return if subscribed {
                Ok(())
            } else {
                Err(Error::NotRunning(state.path().to_path_buf()))
            };
        };
        let request = Request::Subscribe {
            since: Some(since),
            globs: globs.to_vec(),
        };
        // Refused, reset or closed before it began: the server is going (or not yet serving
        // after a restart); tried again for a while.
        let began = control::open_stream(&socket, &request).and_then(|mut reader| {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) => Err(Error::io(
                    "reading the subscription",
                    std::io::ErrorKind::UnexpectedEof.into(),
                )),
                Ok(_) => Ok(reader),
                Err(e) => Err(Error::io("reading the subscription", e)),
            }
        });
        let mut reader = match began {
            Ok(reader) => reader,
            Err(e) => {
                let lost = *lost_at.get_or_insert_with(Instant::now);
                if lost.elapsed() > RECONNECT_FOR {
                    return Err(e);
                }
                std::thread::sleep(RECONNECT_EVERY);
                continue;
            }
        };
        protocol::read_reply::<Subscribed>(&line).map_err(|e| match e {
            protocol::ReplyError::Refused(reason) => Error::Refused(reason),
            malformed => Error::Control {
                socket: socket.clone(),
                problem: malformed.to_string(),
            },
        })?;
        lost_at = None;
        subscribed = true;
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            if let Some(seq) = seq_of(&line) {
                since = since.max(seq);
            }
            if let Err(e) = out.write_all(&line).and_then(|()| out.flush()) {
                if e.kind() == std::io::ErrorKind::BrokenPipe {
                    return Ok(());
                }
                return Err(Error::io("writing to stdout", e));
            }
        }
        lost_at.get_or_insert_with(Instant::now);
    }
}

/// The `seq` of a change line; `None` for another line (`resync_from`).
fn seq_of(line: &[u8]) -> Option<u64> {
    let value: serde_json::Value = serde_json::from_slice(line).ok()?;
    value.get("seq")?.as_u64()
}

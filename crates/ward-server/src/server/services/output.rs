//! A service's child spec: its command and process settings, its output into ward's log under
//! its name (a share of the log per minute) and into the tail its crash reports quote. Not here:
//! what the loop adds to it (notify socket, cgroup), which is `run`'s.

use std::time::{Duration, Instant};

use parking_lot::Mutex;
use ward_supervisor::{ChildSpec, OutputTail};

use crate::config::Service;
use crate::dispatch::with_settings;
use crate::output::{JOB_SHARE, LogShare};

/// How often a service's share of the log is renewed.
const SHARE_WINDOW: Duration = Duration::from_secs(60);

/// The child spec of `service`, its output logged and kept in `tail`.
pub(super) fn spec(service: &Service, tail: OutputTail) -> ChildSpec {
    let spec = ChildSpec::new(&service.command[0])
        .name(service.name.clone())
        .args(&service.command[1..]);
    let name = service.name.clone();
    // A share of the log per minute, as a job has one per run (a service's run may last for
    // weeks): a service printing a flood must not rotate ward's own history away.
    let share = LogShare::new(JOB_SHARE);
    let renewed = Mutex::new(Instant::now());
    // One pipe: the log shows stdout and stderr in the order the service wrote them.
    with_settings(spec, &service.process).capture_merged(move |line| {
        tail.push(line);
        {
            let mut at = renewed.lock();
            if at.elapsed() >= SHARE_WINDOW {
                *at = Instant::now();
                if let Some(held) = share.take_held(JOB_SHARE) {
                    log::warn!(
                        "service {name}: {} line(s) of output ({} bytes) not logged, {} lost: a service logs at most {} KiB a minute",
                        held.lines,
                        held.bytes,
                        held.lost,
                        JOB_SHARE / 1024
                    );
                }
            }
        }
        if share.admit(&line.text, line.dropped_before) {
            log::info!("service {name} [{}]: {}", line.pid, line.text);
        }
    })
}

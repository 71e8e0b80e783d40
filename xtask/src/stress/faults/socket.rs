//! The `socket-idle` fault: clients that connect to ward's control socket and say nothing, and
//! clients that send a request one byte every two seconds, held for seconds. Its verdict: every
//! `ward status` the harness asks meanwhile answers within [`STATUS_BOUND`].

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::super::check::Line;
use super::super::scene::{Scene, interrupted};
use super::super::workload::now_ms;
use super::{Injected, not_injected};

/// Connections that send nothing.
const IDLE: usize = 20;
/// Connections that send a request a byte at a time.
const SLOW: usize = 2;
const SLOW_GAP: Duration = Duration::from_secs(2);
/// How long each `ward status` may take.
pub const STATUS_BOUND: Duration = Duration::from_secs(3);

/// What one socket-idle fault found.
#[derive(Debug)]
pub struct Record {
    label: String,
    asked: usize,
    answered: usize,
    slowest_ms: u64,
    /// Each status that did not answer in time, when, in words.
    unanswered: Vec<String>,
    problems: Vec<String>,
}

/// A client that sends `{"cmd":"status"}` one byte per [`SLOW_GAP`] until told to stop.
fn slow_client(socket: std::path::PathBuf, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let Ok(mut stream) = UnixStream::connect(&socket) else {
            return;
        };
        let request = b"{\"cmd\":\"status\"}\n";
        let mut next = Instant::now();
        for byte in request.iter().cycle() {
            while Instant::now() < next {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            // ward may hang up on it: that is its right.
            if stream.write_all(&[*byte]).is_err() {
                return;
            }
            next += SLOW_GAP;
        }
    })
}

/// Asks `ward status` once, bounded; the time it took if it answered.
fn status_within(scene: &Scene<'_>) -> Result<Duration, String> {
    let asked = Instant::now();
    let ran = scene
        .ward
        .run(&["status", "--json"], STATUS_BOUND)
        .map_err(|e| format!("{e:#}"))?;
    let took = asked.elapsed();
    let parsed = serde_json::from_str::<serde_json::Value>(&ran.stdout).is_ok();
    match (ran.code, parsed, ran.timed_out) {
        (Some(0), true, false) => Ok(took),
        (_, _, true) => Err(format!("no answer within {STATUS_BOUND:?}")),
        (code, _, _) => Err(format!(
            "exit {code:?} after {:.1} s: {}",
            took.as_secs_f64(),
            ran.stderr.trim()
        )),
    }
}

/// Injects socket-idle fault number `n`.
pub fn inject(scene: &mut Scene<'_>, f: &mut Injected, _n: usize) -> Record {
    let hold = Duration::from_secs(if scene.opts.quick { 8 } else { 15 });
    let socket = scene.ward.state.join("ward.sock");
    let mut record = Record {
        label: f.label.clone(),
        asked: 0,
        answered: 0,
        slowest_ms: 0,
        unanswered: Vec::new(),
        problems: Vec::new(),
    };
    f.start_ms = now_ms();
    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        match UnixStream::connect(&socket) {
            Ok(s) => idle.push(s),
            Err(e) => {
                record
                    .problems
                    .push(format!("connecting to {}: {e}", socket.display()));
                break;
            }
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let slow: Vec<_> = (0..SLOW)
        .map(|_| slow_client(socket.clone(), Arc::clone(&stop)))
        .collect();
    let began = Instant::now();
    while began.elapsed() < hold && !interrupted() {
        record.asked += 1;
        let at = began.elapsed().as_secs_f64();
        match status_within(scene) {
            Ok(took) => {
                record.answered += 1;
                record.slowest_ms = record.slowest_ms.max(took.as_millis() as u64);
            }
            Err(e) => record.unanswered.push(format!("+{at:.1} s: {e}")),
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    stop.store(true, Ordering::Relaxed);
    drop(idle);
    for t in slow {
        let _ = t.join();
    }
    f.end_ms = now_ms();
    if let Err(e) = status_within(scene) {
        record
            .problems
            .push(format!("once the clients were gone, ward status: {e}"));
    }
    f.note = format!(
        "{IDLE} idle and {SLOW} slow clients on the control socket for {:.0} s: ward status answered {}/{} (slowest {} ms)",
        hold.as_secs_f64(),
        record.answered,
        record.asked,
        record.slowest_ms
    );
    record
}

/// The verdict line of every socket-idle fault injected.
pub fn line(records: &[Record]) -> Line {
    let check = "socket-idle: status answered with clients idle";
    if records.is_empty() {
        return not_injected(check);
    }
    let mut details = Vec::new();
    for r in records {
        details.extend(
            r.unanswered
                .iter()
                .map(|u| format!("{}: ward status {u}", r.label)),
        );
        details.extend(r.problems.iter().map(|p| format!("{}: {p}", r.label)));
    }
    let asked: usize = records.iter().map(|r| r.asked).sum();
    let answered: usize = records.iter().map(|r| r.answered).sum();
    let slowest = records.iter().map(|r| r.slowest_ms).max().unwrap_or(0);
    Line::new(
        check,
        details.is_empty() && asked > 0,
        format!(
            "{answered}/{asked} ward status answered within {} s (slowest {slowest} ms) with {IDLE} idle and {SLOW} slow clients",
            STATUS_BOUND.as_secs()
        ),
        details,
    )
}

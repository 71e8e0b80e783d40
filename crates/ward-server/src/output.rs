//! A job's share of the log: how much of a process's output goes into `ward.log` before the rest
//! is only counted. Not the capture itself (ward-supervisor's) nor the tail kept for a crash
//! report, which always holds the last lines.
//!
//! The log rotates by size and keeps three old files: without a share, one job printing a flood
//! would rotate ward's own history away, the lines that explain a death among them.

use std::sync::Arc;

use parking_lot::Mutex;
use ward_supervisor::{Line, OutputTail};

/// The capture of a process's output: each line into `tail` (for its crash report) and, within
/// `share`, into the log as `{what} {name} [pid]: line`.
pub(crate) fn log_sink(
    tail: &OutputTail,
    share: &LogShare,
    what: &'static str,
    name: &str,
) -> impl Fn(&Line) + Send + Sync + 'static {
    let (tail, share, name) = (tail.clone(), share.clone(), name.to_owned());
    move |line| {
        tail.push(line);
        if share.admit(&line.text, line.dropped_before) {
            log::info!("{what} {name} [{}]: {}", line.pid, line.text);
        }
    }
}

/// The most of one job's output (or of one worker's between two requests) written into the log.
pub(crate) const JOB_SHARE: u64 = 256 * 1024;

/// The output a process may still log, and what it wrote past that. Cloned into the capture
/// callback; the job thread reads what was held back once the output is drained.
#[derive(Debug, Clone)]
pub(crate) struct LogShare(Arc<Mutex<Share>>);

#[derive(Debug)]
struct Share {
    left: u64,
    held_lines: u64,
    held_bytes: u64,
    /// Lines the capture dropped because the log fell behind (they never reached the share).
    lost: u64,
}

/// What a share held back, as [`LogShare::take_held`] returns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Held {
    pub lines: u64,
    pub bytes: u64,
    pub lost: u64,
}

impl LogShare {
    /// A share of `bytes`.
    pub(crate) fn new(bytes: u64) -> LogShare {
        LogShare(Arc::new(Mutex::new(Share {
            left: bytes,
            held_lines: 0,
            held_bytes: 0,
            lost: 0,
        })))
    }

    /// Whether a captured line may go into the log; if not, it is counted. The lines the
    /// capture dropped before it (`dropped_before`: the log fell behind) are counted too: they
    /// are not logged either.
    pub(crate) fn admit(&self, text: &str, dropped_before: u64) -> bool {
        let mut share = self.0.lock();
        share.lost += dropped_before;
        let cost = text.len() as u64 + 1;
        if cost <= share.left {
            share.left -= cost;
            true
        } else {
            share.left = 0;
            share.held_lines += 1;
            share.held_bytes += cost;
            false
        }
    }

    /// What was held back since the last call, if anything, and a new share of `bytes`.
    pub(crate) fn take_held(&self, bytes: u64) -> Option<Held> {
        let mut share = self.0.lock();
        let held = Held {
            lines: share.held_lines,
            bytes: share.held_bytes,
            lost: share.lost,
        };
        *share = Share {
            left: bytes,
            held_lines: 0,
            held_bytes: 0,
            lost: 0,
        };
        (held.lines > 0 || held.lost > 0).then_some(held)
    }
}

impl std::fmt::Display for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.lines > 0 {
            write!(
                f,
                "{} more line(s) of output ({} bytes) not logged: a job logs at most {} KiB",
                self.lines,
                self.bytes,
                JOB_SHARE / 1024
            )?;
        }
        if self.lines > 0 && self.lost > 0 {
            f.write_str("; ")?;
        }
        if self.lost > 0 {
            write!(
                f,
                "{} line(s) of output not logged: the log fell behind the output",
                self.lost
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_past_the_share_is_counted_not_logged_and_the_share_renews() {
        let share = LogShare::new(10);
        assert!(share.admit("12345678", 0), "9 bytes with its newline");
        assert!(!share.admit("ab", 0), "3 more do not fit");
        assert!(!share.admit("", 0), "nothing more once the share is spent");
        let held = share.take_held(10).unwrap();
        assert_eq!(
            held,
            Held {
                lines: 2,
                bytes: 4,
                lost: 0
            }
        );
        assert!(share.admit("renewed", 0));
        assert_eq!(share.take_held(10), None);
    }

    /// Regression: lines the capture dropped while the log fell behind never reached the share,
    /// so a flood that the log could not keep up with was never said to be cut.
    #[test]
    fn lines_dropped_before_the_share_saw_them_are_said_not_logged_too() {
        let share = LogShare::new(1000);
        assert!(share.admit("after a gap", 40));
        let held = share
            .take_held(1000)
            .expect("the dropped lines are owed a word");
        assert_eq!(held.lost, 40);
        assert!(
            held.to_string().contains("40 line(s) of output not logged"),
            "{held}"
        );
    }
}

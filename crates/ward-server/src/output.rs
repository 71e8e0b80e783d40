//! A job's share of the log: how much of a process's output goes into `ward.log` before the rest
//! is only counted. Not the capture itself (ward-supervisor's) nor the tail kept for a crash
//! report, which always holds the last lines.
//!
//! The log rotates by size and keeps three old files: without a share, one job printing a flood
//! would rotate ward's own history away, the lines that explain a death among them.

use std::sync::Arc;

use parking_lot::Mutex;

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
}

/// What a share held back, as [`LogShare::take_held`] returns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Held {
    pub lines: u64,
    pub bytes: u64,
}

impl LogShare {
    /// A share of `bytes`.
    pub(crate) fn new(bytes: u64) -> LogShare {
        LogShare(Arc::new(Mutex::new(Share {
            left: bytes,
            held_lines: 0,
            held_bytes: 0,
        })))
    }

    /// Whether `text` may go into the log; if not, it is counted.
    pub(crate) fn admit(&self, text: &str) -> bool {
        let mut share = self.0.lock();
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
        };
        *share = Share {
            left: bytes,
            held_lines: 0,
            held_bytes: 0,
        };
        (held.lines > 0).then_some(held)
    }
}

impl std::fmt::Display for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} more line(s) of output ({} bytes) not logged: a job logs at most {} KiB",
            self.lines,
            self.bytes,
            JOB_SHARE / 1024
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_past_the_share_is_counted_not_logged_and_the_share_renews() {
        let share = LogShare::new(10);
        assert!(share.admit("12345678"), "9 bytes with its newline");
        assert!(!share.admit("ab"), "3 more do not fit");
        assert!(!share.admit(""), "nothing more once the share is spent");
        assert_eq!(share.take_held(10), Some(Held { lines: 2, bytes: 4 }));
        assert!(share.admit("renewed"));
        assert_eq!(share.take_held(10), None);
    }
}

//! [`OutputTail`]: the last lines a child wrote, kept for its crash report.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use crate::Line;

/// The last `capacity` lines of output, shared: clone it into a sink closure and read it when
/// the child dies (a crash report's "last words").
///
/// ```
/// use ward_supervisor::{ChildSpec, OutputTail};
///
/// let tail = OutputTail::new(100);
/// let sink_tail = tail.clone();
/// let spec = ChildSpec::new("my-worker").capture(move |line| {
///     sink_tail.push(line);
///     // ...and write it to the log.
/// });
/// # let _ = spec;
/// assert!(tail.lines().is_empty());
/// ```
#[derive(Debug, Clone)]
pub struct OutputTail {
    lines: Arc<Mutex<VecDeque<Line>>>,
    capacity: usize,
}

impl OutputTail {
    /// Keeps at most `capacity` lines (at least one).
    pub fn new(capacity: usize) -> OutputTail {
        let capacity = capacity.max(1);
        OutputTail {
            // Grown as lines come: most jobs write none.
            lines: Arc::new(Mutex::new(VecDeque::new())),
            capacity,
        }
    }

    /// Adds a line, forgetting the oldest beyond the capacity.
    pub fn push(&self, line: &Line) {
        let mut lines = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
        if lines.len() == self.capacity {
            lines.pop_front();
        }
        lines.push_back(line.clone());
    }

    /// The kept lines, oldest first.
    pub fn lines(&self) -> Vec<Line> {
        let lines = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
        lines.iter().cloned().collect()
    }

    /// Forgets every line (for the next run of the same child).
    pub fn clear(&self) {
        self.lines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Stream;

    #[test]
    fn keeps_the_last_lines_in_order() {
        let tail = OutputTail::new(3);
        for i in 0..5 {
            tail.push(&Line {
                pid: 1,
                stream: Stream::Stderr,
                text: i.to_string(),
                dropped_before: 0,
            });
        }
        let texts: Vec<String> = tail.lines().into_iter().map(|l| l.text).collect();
        assert_eq!(texts, ["2", "3", "4"]);
        tail.clear();
        assert!(tail.lines().is_empty());
    }
}

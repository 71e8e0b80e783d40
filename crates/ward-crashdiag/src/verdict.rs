//! The verdict: which cause the evidence points to, how sure it is, and what it rests on. A pure
//! function of the gathered findings, so every rule is table-tested.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::evidence::{Evidence, OomCounters, WaitOutcome};
use crate::heartbeat::{Heartbeat, HeartbeatState};
use crate::record::CrashRecord;
use crate::signal::signal_name;

/// Why a process died.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Cause {
    /// It stopped because it was asked to (or shut down in an orderly way on its own).
    GracefulStop,
    /// It was asked to stop, did not within its grace period, and was killed (SIGKILL): not a
    /// graceful stop, and worth a look at what it was doing.
    StopTimedOut,
    /// It exited with this code, not asked to and without a panic.
    Exited {
        /// The exit code.
        code: i32,
    },
    /// A Rust panic ended it.
    Panic {
        /// The panic message.
        message: String,
        /// `file:line:column`.
        location: String,
        /// The panicking thread's name.
        thread: String,
    },
    /// A fatal signal from its own code: SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT.
    NativeCrash {
        /// The signal number.
        signal: i32,
        /// Its name.
        signal_name: String,
        /// The faulting address, when the signal was a fault.
        address: Option<String>,
        /// Raw return addresses, innermost first.
        frames: Vec<String>,
    },
    /// A thread overflowed its stack (Rust reports it, then aborts).
    StackOverflow {
        /// The thread, as Rust's report names it.
        thread: Option<String>,
    },
    /// The kernel's OOM killer killed it.
    OomKill,
    /// An allocation failed (e.g. under `RLIMIT_AS`); Rust printed it and aborted.
    AllocationFailure {
        /// The size that could not be allocated.
        bytes: Option<u64>,
    },
    /// A signal from outside killed it (`kill -9`, a SIGTERM nobody handled...).
    KilledBySignal {
        /// The signal number.
        signal: i32,
        /// Its name.
        signal_name: String,
    },
    /// A watchdog killed it because it stopped making progress.
    Hung,
    /// No parent saw it die; the heartbeat says when it was last alive.
    Vanished {
        /// Wall-clock time of its last heartbeat, milliseconds since the Unix epoch.
        last_alive_wall_ms: Option<u64>,
    },
    /// The evidence does not decide; `missing` says what would have.
    Unknown {
        /// The evidence that was not available.
        missing: Vec<String>,
    },
}

/// How strongly the evidence supports the cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Confidence {
    /// Consistent with the evidence, but other causes are too.
    Low,
    /// One strong piece of evidence, or several weak ones, and nothing against.
    Medium,
    /// Direct evidence: the process's own record, or the kernel naming it.
    High,
}

/// A cause, the confidence in it and the evidence it rests on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    /// The cause.
    pub cause: Cause,
    /// How sure.
    pub confidence: Confidence,
    /// Each observation the verdict rests on, or that was missing, in words.
    pub evidence: Vec<String>,
}

/// Everything gathered about one death.
pub(crate) struct Findings<'a> {
    pub(crate) evidence: &'a Evidence,
    pub(crate) record: Option<&'a CrashRecord>,
    pub(crate) heartbeat: Option<&'a Heartbeat>,
    pub(crate) heartbeat_age: Option<Duration>,
    /// Kernel log lines about the pid; `None` if the kernel log could not be read.
    pub(crate) kernel_lines: Option<&'a [String]>,
    pub(crate) log_tail: &'a [String],
}

/// Parses `memory allocation of N bytes failed`.
fn allocation_failure(text: &str) -> Option<Option<u64>> {
    let at = text.find("memory allocation of ")?;
    let rest = &text[at + "memory allocation of ".len()..];
    let (n, tail) = rest.split_once(' ')?;
    tail.starts_with("bytes failed").then(|| n.parse().ok())
}

/// Parses `thread 'NAME' has overflowed its stack`.
fn stack_overflow(text: &str) -> Option<Option<String>> {
    let at = text.find("has overflowed its stack")?;
    let before = &text[..at];
    let line = before.rsplit('\n').next().unwrap_or("");
    let thread = line
        .split_once("thread '")
        .and_then(|(_, t)| t.split_once('\'').map(|(name, _)| name.to_owned()));
    Some(thread)
}

/// A memory size for people: whole MiB as such, anything else in bytes.
fn size(bytes: u64) -> String {
    const MIB: u64 = 1024 * 1024;
    if bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else {
        format!("{bytes} bytes")
    }
}

fn delta(before: Option<OomCounters>, after: Option<OomCounters>) -> (Option<u64>, Option<u64>) {
    let (Some(b), Some(a)) = (before, after) else {
        return (None, None);
    };
    let sub = |x: Option<u64>, y: Option<u64>| Some(y?.saturating_sub(x?));
    (
        sub(b.cgroup_oom_kill, a.cgroup_oom_kill),
        sub(b.vmstat_oom_kill, a.vmstat_oom_kill),
    )
}

/// Decides the cause. Kernel evidence first, then what the process itself recorded, then the
/// wait status; the heartbeat speaks only when nothing else does.
pub(crate) fn classify(f: &Findings<'_>) -> Verdict {
    let ev = f.evidence;
    let mut said: Vec<String> = Vec::new();
    let mut missing: Vec<String> = Vec::new();

    // What is known, in words, whatever the verdict.
    match ev.wait_status {
        Some(WaitOutcome::Exited { code }) => {
            said.push(format!("wait status: exited with code {code}"))
        }
        Some(WaitOutcome::Signaled {
            signal,
            core_dumped,
        }) => said.push(format!(
            "wait status: killed by signal {signal} ({}){}",
            signal_name(signal),
            if core_dumped { ", core dumped" } else { "" }
        )),
        None => missing.push("wait status (no parent saw the death)".into()),
    }
    if ev.stop_requested {
        said.push("the parent had asked it to stop".into());
    }
    let (cgroup_delta, vmstat_delta) = delta(ev.oom_before, ev.oom_after);
    match cgroup_delta {
        Some(d) => said.push(format!("memory cgroup oom_kill rose by {d} during its run")),
        None => missing.push("memory-cgroup OOM counter before and after".into()),
    }
    match vmstat_delta {
        Some(d) => said.push(format!("/proc/vmstat oom_kill rose by {d} during its run")),
        None => missing.push("/proc/vmstat OOM counter before and after".into()),
    }
    if let Some(limit) = ev.memory_limit_bytes {
        said.push(format!("its memory cgroup was limited to {}", size(limit)));
    }
    let kernel_oom = match f.kernel_lines {
        Some(lines) => {
            let oom = lines
                .iter()
                .find(|l| {
                    l.contains("Killed process")
                        || l.contains("oom-kill")
                        || l.contains("Out of memory")
                })
                .cloned();
            if lines.is_empty() {
                said.push("the kernel log has no line about the pid".into());
            } else {
                said.push(format!(
                    "the kernel log has {} line(s) about the pid",
                    lines.len()
                ));
            }
            oom
        }
        None => {
            missing.push("kernel log (unreadable)".into());
            None
        }
    };
    let panic = f.record.and_then(CrashRecord::last_panic);
    let signals: Vec<_> = f.record.map(|r| r.signals().collect()).unwrap_or_default();
    match f.record {
        Some(r) if !r.entries.is_empty() => said.push(format!(
            "crash record: {} panic(s) and {} fatal signal(s)",
            usize::from(panic.is_some()),
            signals.len()
        )),
        // A process that never installed the capture has no record to miss.
        _ if ev.crash_capture => said.push("no crash record".into()),
        _ => {}
    }
    let stderr = ev.stderr_tail.as_deref().unwrap_or("");
    let log_text = own_log_lines(f.log_tail, ev.pid);
    let alloc = allocation_failure(stderr).or_else(|| allocation_failure(&log_text));
    let overflow = stack_overflow(stderr).or_else(|| stack_overflow(&log_text));
    if let Some(hb) = f.heartbeat {
        let age = f
            .heartbeat_age
            .map(|a| format!(", {:.1}s ago", a.as_secs_f64()))
            .unwrap_or_default();
        said.push(format!(
            "last heartbeat: seq {} ({}){age}",
            hb.seq,
            match hb.state {
                HeartbeatState::Running => "running",
                HeartbeatState::Stopped => "stopped in an orderly way",
            }
        ));
    }

    let status = ev.wait_status;
    let signal = status.and_then(|s| s.signal());
    let verdict = |cause, confidence, mut said: Vec<String>, why: Option<String>| {
        if let Some(why) = why {
            said.insert(0, why);
        }
        Verdict {
            cause,
            confidence,
            evidence: said,
        }
    };

    if ev.watchdog_fired {
        if let Some(dump) = ev.dump_signal {
            let name = signal_name(dump);
            said.push(if signal == Some(dump) {
                format!(
                    "its parent sent {name} for it to print its stack before stopping it, and it \
                     died of that (not a crash of its own): what it printed is in the stderr tail"
                )
            } else {
                format!(
                    "its parent sent {name} for it to print its stack before stopping it: what it \
                     printed is in the stderr tail"
                )
            });
        }
        let why = "a watchdog killed it for not making progress".to_owned();
        return verdict(Cause::Hung, Confidence::High, said, Some(why));
    }
    if let Some(line) = kernel_oom {
        let why = format!("the kernel log says: {line}");
        return verdict(Cause::OomKill, Confidence::High, said, Some(why));
    }
    if signal == Some(libc::SIGKILL) && cgroup_delta.is_some_and(|d| d > 0) {
        let why = match ev.memory_limit_bytes {
            Some(limit) => format!(
                "SIGKILL while its memory cgroup, limited to {}, counted an OOM kill",
                size(limit)
            ),
            None => "SIGKILL while its memory cgroup counted an OOM kill".to_owned(),
        };
        return verdict(Cause::OomKill, Confidence::High, said, Some(why));
    }
    if ev.stop_requested {
        match status {
            Some(WaitOutcome::Exited { .. }) => {
                return verdict(Cause::GracefulStop, Confidence::High, said, None);
            }
            Some(WaitOutcome::Signaled {
                signal: libc::SIGTERM | libc::SIGINT,
                ..
            }) => {
                return verdict(Cause::GracefulStop, Confidence::High, said, None);
            }
            Some(WaitOutcome::Signaled {
                signal: libc::SIGKILL,
                ..
            }) => {
                let why = "it was asked to stop, did not in time, and was killed".to_owned();
                return verdict(Cause::StopTimedOut, Confidence::High, said, Some(why));
            }
            _ => {}
        }
    }
    let from_itself = matches!(signal, Some(libc::SIGABRT | libc::SIGSEGV | libc::SIGBUS));
    if let (Some(bytes), true) = (alloc, signal == Some(libc::SIGABRT) || status.is_none()) {
        let why = "it reported: memory allocation failed".to_owned();
        let confidence = if status.is_some() {
            Confidence::High
        } else {
            Confidence::Medium
        };
        return verdict(
            Cause::AllocationFailure { bytes },
            confidence,
            said,
            Some(why),
        );
    }
    if let (Some(thread), true) = (overflow.clone(), from_itself || status.is_none()) {
        let why = "Rust reported a stack overflow".to_owned();
        let confidence = if status.is_some() {
            Confidence::High
        } else {
            Confidence::Medium
        };
        return verdict(Cause::StackOverflow { thread }, confidence, said, Some(why));
    }
    if let Some(p) = panic {
        let consistent = matches!(status, Some(WaitOutcome::Exited { code: 101 }))
            || signal == Some(libc::SIGABRT);
        if consistent || status.is_none() {
            let cause = Cause::Panic {
                message: p.message.clone(),
                location: p.location.clone(),
                thread: p.thread.clone(),
            };
            let why = format!("the panic hook recorded a panic at {}", p.location);
            let confidence = if consistent {
                Confidence::High
            } else {
                Confidence::Medium
            };
            return verdict(cause, confidence, said, Some(why));
        }
    }
    if let Some(sig) = signal.filter(|s| crate::signal::FATAL_SIGNALS.contains(s)) {
        let recorded = signals.iter().find(|s| s.signal == sig);
        // Rust aborts after reporting an overflow: a SIGSEGV entry, then death by SIGABRT.
        if sig == libc::SIGABRT
            && recorded.is_none()
            && signals
                .iter()
                .any(|s| matches!(s.signal, libc::SIGSEGV | libc::SIGBUS))
        {
            let why = "a recorded SIGSEGV followed by an abort: Rust's overflow report".to_owned();
            return verdict(
                Cause::StackOverflow { thread: None },
                Confidence::Medium,
                said,
                Some(why),
            );
        }
        let cause = Cause::NativeCrash {
            signal: sig,
            signal_name: signal_name(sig),
            address: recorded.and_then(|s| s.address.clone()),
            frames: recorded.map(|s| s.frames.clone()).unwrap_or_default(),
        };
        return match recorded {
            Some(_) => {
                let why = "the signal handler recorded the signal".to_owned();
                verdict(cause, Confidence::High, said, Some(why))
            }
            None if ev.crash_capture => {
                said.push(
                    "its fatal-signal handler recorded nothing (the signal came before the \
                     handler was installed, or the record could not be written)"
                        .into(),
                );
                verdict(cause, Confidence::Medium, said, None)
            }
            // Not a process with our handler: the wait status is all there is, and a signal
            // sent from outside would look the same.
            None => {
                let why = format!(
                    "the wait status names {}, a signal a process's own code usually raises",
                    signal_name(sig)
                );
                verdict(cause, Confidence::Medium, said, Some(why))
            }
        };
    }
    if let Some(sig) = signal {
        let cause = Cause::KilledBySignal {
            signal: sig,
            signal_name: signal_name(sig),
        };
        if sig != libc::SIGKILL {
            return verdict(cause, Confidence::High, said, None);
        }
        // SIGKILL alone never means OOM; the counters decide how sure "from outside" is.
        return match (cgroup_delta, vmstat_delta) {
            (Some(0), _) => {
                let why = "its memory cgroup counted no OOM kill".to_owned();
                verdict(cause, Confidence::High, said, Some(why))
            }
            (None, Some(d)) if d > 0 => {
                // On a busy machine some process is OOM-killed now and then; a daemon that runs
                // for days would have every `kill -9` blamed on memory. Only its own cgroup's
                // counter or a kernel line naming it says OOM.
                let why = "a system-wide OOM kill happened during its run, but nothing ties it to this pid: \
                           killed from outside, unless its memory cgroup or the kernel log say otherwise"
                    .to_owned();
                verdict(cause, Confidence::Low, said, Some(why))
            }
            (None, Some(0)) => {
                let why = "no OOM kill anywhere on the system during its run".to_owned();
                verdict(cause, Confidence::High, said, Some(why))
            }
            _ => {
                said.extend(missing.iter().map(|m| format!("missing: {m}")));
                verdict(cause, Confidence::Medium, said, None)
            }
        };
    }
    if let Some(WaitOutcome::Exited { code }) = status {
        if code == 101 && stderr.contains("panicked at") {
            let cause = Cause::Panic {
                message: String::new(),
                location: String::new(),
                thread: String::new(),
            };
            let why = "exit code 101 and a panic message on stderr, but no crash record".to_owned();
            return verdict(cause, Confidence::Medium, said, Some(why));
        }
        return verdict(Cause::Exited { code }, Confidence::High, said, None);
    }

    // No parent saw it die: only what it left behind speaks.
    if let Some(s) = signals.first() {
        let cause = Cause::NativeCrash {
            signal: s.signal,
            signal_name: s.name.clone(),
            address: s.address.clone(),
            frames: s.frames.clone(),
        };
        let why = "the signal handler recorded a fatal signal".to_owned();
        return verdict(cause, Confidence::Medium, said, Some(why));
    }
    if let Some(hb) = f.heartbeat {
        if hb.state == HeartbeatState::Stopped {
            let why = "its last heartbeat says it stopped in an orderly way".to_owned();
            return verdict(Cause::GracefulStop, Confidence::Medium, said, Some(why));
        }
        said.push(
            "no crash record, no kernel OOM line, no orderly-stop heartbeat: SIGKILL from outside \
             or an OOM kill the kernel log no longer shows are the likely causes"
                .into(),
        );
        said.extend(missing.iter().map(|m| format!("missing: {m}")));
        let cause = Cause::Vanished {
            last_alive_wall_ms: Some(hb.wall_ms),
        };
        return verdict(cause, Confidence::Low, said, None);
    }
    missing.push("heartbeat".into());
    said.extend(missing.iter().map(|m| format!("missing: {m}")));
    verdict(Cause::Unknown { missing }, Confidence::Low, said, None)
}

/// The lines of a log tail that may speak of process `pid`: the lines a logger stamped with that
/// pid (`... [PID role] ...`, ward's format), and raw lines no logger stamped (what the process
/// wrote straight to its stderr, such as Rust's "memory allocation of N bytes failed"). Lines
/// stamped with another pid are other processes' evidence: a job's allocation failure logged by
/// the server must not explain the keeper's death.
fn own_log_lines(tail: &[String], pid: u32) -> String {
    let own = format!("[{pid} ");
    let stamped = |l: &str| {
        let b = l.as_bytes();
        b.len() > 24 && b[4] == b'-' && b[7] == b'-' && b[10] == b'T' && l.contains(" [")
    };
    tail.iter()
        .filter(|l| l.contains(&own) || !stamped(l))
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join("\n")
}

impl Cause {
    /// A short machine name: `oom_kill`, `panic`, `native_crash`...
    pub fn kind(&self) -> &'static str {
        match self {
            Cause::GracefulStop => "graceful_stop",
            Cause::StopTimedOut => "stop_timed_out",
            Cause::Exited { .. } => "exited",
            Cause::Panic { .. } => "panic",
            Cause::NativeCrash { .. } => "native_crash",
            Cause::StackOverflow { .. } => "stack_overflow",
            Cause::OomKill => "oom_kill",
            Cause::AllocationFailure { .. } => "allocation_failure",
            Cause::KilledBySignal { .. } => "killed_by_signal",
            Cause::Hung => "hung",
            Cause::Vanished { .. } => "vanished",
            Cause::Unknown { .. } => "unknown",
        }
    }

    /// One line for people.
    pub fn describe(&self) -> String {
        match self {
            Cause::GracefulStop => "stopped gracefully".into(),
            Cause::StopTimedOut => {
                "did not stop within its grace period after being asked to, and was killed (SIGKILL)"
                    .into()
            }
            Cause::Exited { code } => format!("exited with code {code}"),
            Cause::Panic {
                message,
                location,
                thread,
            } if !location.is_empty() => {
                format!("panicked in thread '{thread}' at {location}: {message}")
            }
            Cause::Panic { .. } => "panicked".into(),
            Cause::NativeCrash {
                signal_name,
                address,
                ..
            } => match address {
                Some(a) => format!("crashed with {signal_name} at address {a}"),
                None => format!("crashed with {signal_name}"),
            },
            Cause::StackOverflow { thread: Some(t) } => {
                format!("thread '{t}' overflowed its stack")
            }
            Cause::StackOverflow { thread: None } => "a thread overflowed its stack".into(),
            Cause::OomKill => "killed by the kernel's OOM killer".into(),
            Cause::AllocationFailure { bytes: Some(n) } => {
                format!("memory allocation of {n} bytes failed")
            }
            Cause::AllocationFailure { bytes: None } => "a memory allocation failed".into(),
            Cause::KilledBySignal { signal_name, .. } => {
                format!("killed from outside by {signal_name}")
            }
            Cause::Hung => "hung, killed by the watchdog".into(),
            Cause::Vanished {
                last_alive_wall_ms: Some(ms),
            } => {
                format!("vanished; last alive at {}", crate::time::human(*ms))
            }
            Cause::Vanished {
                last_alive_wall_ms: None,
            } => "vanished".into(),
            Cause::Unknown { .. } => "unknown".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{PanicEntry, RecordEntry, SignalEntry};

    fn signaled(signal: i32) -> Option<WaitOutcome> {
        Some(WaitOutcome::Signaled {
            signal,
            core_dumped: false,
        })
    }
    #[test]
    fn another_process_s_stamped_log_lines_are_not_evidence() {
        let tail = [
            "2026-11-23T12:00:00.000Z INFO  [20 server] job hog [30]: memory allocation of 8 bytes failed".to_owned(),
            "2026-11-23T12:00:01.000Z INFO  [10 keeper] heartbeat".to_owned(),
            "memory allocation of 16 bytes failed".to_owned(),
        ];
        let own = own_log_lines(&tail, 10);
        assert!(!own.contains("8 bytes"), "{own}");
        assert!(
            own.contains("[10 keeper]") && own.contains("16 bytes"),
            "{own}"
        );
        assert!(own_log_lines(&tail, 20).contains("8 bytes"));
    }

    fn counters(cgroup: Option<u64>, vmstat: Option<u64>) -> Option<OomCounters> {
        Some(OomCounters {
            cgroup_oom_kill: cgroup,
            vmstat_oom_kill: vmstat,
        })
    }
    fn panic_record() -> CrashRecord {
        CrashRecord {
            entries: vec![RecordEntry::Panic(PanicEntry {
                message: "boom".into(),
                location: "src/main.rs:1:1".into(),
                thread: "main".into(),
                ..PanicEntry::default()
            })],
        }
    }
    fn signal_record(signal: i32) -> CrashRecord {
        CrashRecord {
            entries: vec![RecordEntry::Signal(SignalEntry {
                signal,
                name: signal_name(signal),
                address: Some("0x10".into()),
                frames: vec!["0x1".into()],
                complete: true,
                ..SignalEntry::default()
            })],
        }
    }
    fn heartbeat(state: HeartbeatState) -> Heartbeat {
        Heartbeat {
            pid: 1,
            role: "server".into(),
            seq: 9,
            wall_ms: 1_000,
            mono_ms: 1_000,
            boot_id: String::new(),
            interval_ms: 1_000,
            started_wall_ms: 0,
            started_mono_ms: 0,
            start_ticks: None,
            state,
        }
    }

    /// One row: how the evidence is set up, what it must conclude.
    struct Case {
        name: &'static str,
        status: Option<WaitOutcome>,
        stop_requested: bool,
        watchdog: bool,
        before: Option<OomCounters>,
        after: Option<OomCounters>,
        record: Option<CrashRecord>,
        heartbeat: Option<Heartbeat>,
        kernel: Option<Vec<String>>,
        stderr: &'static str,
        memory_limit: Option<u64>,
        expect_kind: &'static str,
        expect_confidence: Confidence,
        /// Words the first line of the evidence (the why) must hold.
        expect_why: &'static str,
    }

    impl Default for Case {
        fn default() -> Self {
            Case {
                name: "",
                status: None,
                stop_requested: false,
                watchdog: false,
                before: None,
                after: None,
                record: None,
                heartbeat: None,
                kernel: Some(Vec::new()),
                stderr: "",
                memory_limit: None,
                expect_kind: "",
                expect_confidence: Confidence::High,
                expect_why: "",
            }
        }
    }

    #[test]
    fn verdicts_follow_the_evidence() {
        let cases = vec![
            Case {
                name: "clean exit 0 on request",
                status: Some(WaitOutcome::Exited { code: 0 }),
                stop_requested: true,
                expect_kind: "graceful_stop",
                ..Case::default()
            },
            Case {
                name: "SIGTERM on request",
                status: signaled(libc::SIGTERM),
                stop_requested: true,
                expect_kind: "graceful_stop",
                ..Case::default()
            },
            // Regression: a server SIGKILLed because a client held up its stop was reported as
            // stopped gracefully.
            Case {
                name: "SIGKILL after a stop request",
                status: signaled(libc::SIGKILL),
                stop_requested: true,
                expect_kind: "stop_timed_out",
                ..Case::default()
            },
            Case {
                name: "exit 3 unasked",
                status: Some(WaitOutcome::Exited { code: 3 }),
                expect_kind: "exited",
                ..Case::default()
            },
            Case {
                name: "panic: exit 101 with a record",
                status: Some(WaitOutcome::Exited { code: 101 }),
                record: Some(panic_record()),
                expect_kind: "panic",
                ..Case::default()
            },
            Case {
                name: "panic=abort: SIGABRT with a panic record",
                status: signaled(libc::SIGABRT),
                record: Some(panic_record()),
                expect_kind: "panic",
                ..Case::default()
            },
            Case {
                name: "exit 101 and stderr only",
                status: Some(WaitOutcome::Exited { code: 101 }),
                stderr: "thread 'main' panicked at src/x.rs:1:1:\nboom",
                expect_kind: "panic",
                expect_confidence: Confidence::Medium,
                ..Case::default()
            },
            Case {
                name: "caught panic then SIGKILL is not a panic",
                status: signaled(libc::SIGKILL),
                record: Some(panic_record()),
                before: counters(Some(0), Some(0)),
                after: counters(Some(0), Some(0)),
                expect_kind: "killed_by_signal",
                ..Case::default()
            },
            Case {
                name: "segfault with a record",
                status: signaled(libc::SIGSEGV),
                record: Some(signal_record(libc::SIGSEGV)),
                expect_kind: "native_crash",
                ..Case::default()
            },
            Case {
                name: "segfault without a record",
                status: signaled(libc::SIGSEGV),
                expect_kind: "native_crash",
                expect_confidence: Confidence::Medium,
                ..Case::default()
            },
            Case {
                name: "allocation failure beats the SIGABRT record",
                status: signaled(libc::SIGABRT),
                record: Some(signal_record(libc::SIGABRT)),
                stderr: "memory allocation of 1073741824 bytes failed\n",
                expect_kind: "allocation_failure",
                ..Case::default()
            },
            Case {
                name: "stack overflow from stderr",
                status: signaled(libc::SIGABRT),
                record: Some(signal_record(libc::SIGSEGV)),
                stderr: "\nthread 'main' has overflowed its stack\nfatal runtime error: stack overflow",
                expect_kind: "stack_overflow",
                ..Case::default()
            },
            Case {
                name: "stack overflow from the record pattern alone",
                status: signaled(libc::SIGABRT),
                record: Some(signal_record(libc::SIGSEGV)),
                expect_kind: "stack_overflow",
                expect_confidence: Confidence::Medium,
                ..Case::default()
            },
            Case {
                name: "cgroup OOM kill",
                status: signaled(libc::SIGKILL),
                before: counters(Some(1), Some(5)),
                after: counters(Some(2), Some(6)),
                expect_kind: "oom_kill",
                ..Case::default()
            },
            Case {
                name: "cgroup OOM kill at a limit its parent set",
                status: signaled(libc::SIGKILL),
                before: counters(Some(0), Some(5)),
                after: counters(Some(1), Some(6)),
                memory_limit: Some(64 << 20),
                expect_kind: "oom_kill",
                expect_why: "memory cgroup, limited to 64 MiB, counted an OOM kill",
                ..Case::default()
            },
            Case {
                name: "kernel line names the pid",
                status: signaled(libc::SIGKILL),
                kernel: Some(vec![
                    "Memory cgroup out of memory: Killed process 1234 (x)".into(),
                ]),
                expect_kind: "oom_kill",
                ..Case::default()
            },
            Case {
                name: "SIGKILL, cgroup unchanged though vmstat rose",
                status: signaled(libc::SIGKILL),
                before: counters(Some(0), Some(5)),
                after: counters(Some(0), Some(6)),
                expect_kind: "killed_by_signal",
                ..Case::default()
            },
            Case {
                name: "SIGKILL, only vmstat rose: not enough to say OOM",
                status: signaled(libc::SIGKILL),
                before: counters(None, Some(5)),
                after: counters(None, Some(6)),
                expect_kind: "killed_by_signal",
                expect_confidence: Confidence::Low,
                ..Case::default()
            },
            Case {
                name: "SIGKILL, no counters at all",
                status: signaled(libc::SIGKILL),
                kernel: None,
                expect_kind: "killed_by_signal",
                expect_confidence: Confidence::Medium,
                ..Case::default()
            },
            Case {
                name: "unhandled SIGTERM unasked",
                status: signaled(libc::SIGTERM),
                expect_kind: "killed_by_signal",
                ..Case::default()
            },
            Case {
                name: "watchdog",
                status: signaled(libc::SIGKILL),
                watchdog: true,
                heartbeat: Some(heartbeat(HeartbeatState::Running)),
                expect_kind: "hung",
                ..Case::default()
            },
            Case {
                name: "vanished with a running heartbeat",
                heartbeat: Some(heartbeat(HeartbeatState::Running)),
                expect_kind: "vanished",
                expect_confidence: Confidence::Low,
                ..Case::default()
            },
            Case {
                name: "vanished after an orderly stop",
                heartbeat: Some(heartbeat(HeartbeatState::Stopped)),
                expect_kind: "graceful_stop",
                expect_confidence: Confidence::Medium,
                ..Case::default()
            },
            Case {
                name: "vanished with a signal record",
                record: Some(signal_record(libc::SIGBUS)),
                heartbeat: Some(heartbeat(HeartbeatState::Running)),
                expect_kind: "native_crash",
                expect_confidence: Confidence::Medium,
                ..Case::default()
            },
            Case {
                name: "vanished with a kernel OOM line",
                heartbeat: Some(heartbeat(HeartbeatState::Running)),
                kernel: Some(vec!["Out of memory: Killed process 1234 (x)".into()]),
                expect_kind: "oom_kill",
                ..Case::default()
            },
            Case {
                name: "nothing at all",
                kernel: None,
                expect_kind: "unknown",
                expect_confidence: Confidence::Low,
                ..Case::default()
            },
        ];
        for case in cases {
            let mut evidence = Evidence::new(1234, "worker", "/nonexistent");
            evidence.wait_status = case.status;
            evidence.stop_requested = case.stop_requested;
            evidence.watchdog_fired = case.watchdog;
            evidence.oom_before = case.before;
            evidence.oom_after = case.after;
            evidence.stderr_tail = Some(case.stderr.to_owned());
            evidence.memory_limit_bytes = case.memory_limit;
            let findings = Findings {
                evidence: &evidence,
                record: case.record.as_ref(),
                heartbeat: case.heartbeat.as_ref(),
                heartbeat_age: None,
                kernel_lines: case.kernel.as_deref(),
                log_tail: &[],
            };
            let v = classify(&findings);
            assert_eq!(v.cause.kind(), case.expect_kind, "{}: {v:#?}", case.name);
            assert_eq!(
                v.confidence, case.expect_confidence,
                "{}: {v:#?}",
                case.name
            );
            assert!(
                !v.evidence.is_empty(),
                "{}: a verdict without evidence",
                case.name
            );
            assert!(
                v.evidence[0].contains(case.expect_why),
                "{}: {v:#?}",
                case.name
            );
            if let Some(limit) = case.memory_limit {
                let said = format!("its memory cgroup was limited to {}", size(limit));
                assert!(v.evidence.contains(&said), "{}: {v:#?}", case.name);
            }
        }
    }

    #[test]
    fn unknown_says_what_was_missing() {
        let evidence = Evidence::new(1, "server", "/nonexistent");
        let findings = Findings {
            evidence: &evidence,
            record: None,
            heartbeat: None,
            heartbeat_age: None,
            kernel_lines: None,
            log_tail: &[],
        };
        let Cause::Unknown { missing } = classify(&findings).cause else {
            panic!("expected unknown");
        };
        assert!(
            missing.iter().any(|m| m.contains("wait status")),
            "{missing:?}"
        );
        assert!(missing.iter().any(|m| m == "heartbeat"), "{missing:?}");
        assert!(
            missing.iter().any(|m| m.contains("kernel log")),
            "{missing:?}"
        );
    }

    fn classify_alone(evidence: &Evidence, record: Option<&CrashRecord>) -> Verdict {
        classify(&Findings {
            evidence,
            record,
            heartbeat: None,
            heartbeat_age: None,
            kernel_lines: Some(&[]),
            log_tail: &[],
        })
    }

    /// Regression: the report of a job's command, which never installed ward's handler, said
    /// "the signal handler recorded nothing (not installed, or could not write)" and "no crash
    /// record", as if a handler of its own had failed.
    #[test]
    fn only_a_process_that_installed_the_capture_is_said_to_lack_a_crash_record() {
        let mut evidence = Evidence::new(1234, "job x on /t/a", "/nonexistent");
        evidence.wait_status = signaled(libc::SIGABRT);
        let foreign = classify_alone(&evidence, None);
        assert_eq!(foreign.cause.kind(), "native_crash");
        assert_eq!(foreign.confidence, Confidence::Medium);
        let text = foreign.evidence.join("\n");
        assert!(!text.contains("handler"), "{text}");
        assert!(!text.contains("crash record"), "{text}");
        assert!(text.contains("SIGABRT"), "{text}");

        evidence.crash_capture = true;
        let own = classify_alone(&evidence, None);
        assert_eq!(own.cause.kind(), "native_crash");
        let text = own.evidence.join("\n");
        assert!(text.contains("no crash record"), "{text}");
        assert!(
            text.contains("its fatal-signal handler recorded nothing"),
            "{text}"
        );

        // A record, whoever left it, is evidence and said so.
        evidence.crash_capture = false;
        let record = signal_record(libc::SIGABRT);
        let recorded = classify_alone(&evidence, Some(&record));
        assert_eq!(recorded.confidence, Confidence::High);
        assert!(
            recorded
                .evidence
                .iter()
                .any(|e| e.starts_with("crash record:")),
            "{recorded:#?}"
        );
    }

    #[test]
    fn a_hung_process_that_died_of_its_dump_signal_is_hung_not_crashed() {
        let mut evidence = Evidence::new(1234, "worker", "/nonexistent");
        evidence.wait_status = signaled(libc::SIGABRT);
        evidence.watchdog_fired = true;
        evidence.dump_signal = Some(libc::SIGABRT);
        let v = classify_alone(&evidence, None);
        assert_eq!(v.cause, Cause::Hung);
        assert_eq!(v.confidence, Confidence::High);
        let text = v.evidence.join("\n");
        assert!(
            text.contains("its parent sent SIGABRT for it to print its stack")
                && text.contains("died of that (not a crash of its own)")
                && text.contains("stderr tail"),
            "{text}"
        );
        // It lived on after the dump signal and was stopped: the dump is still said.
        evidence.wait_status = signaled(libc::SIGTERM);
        let v = classify_alone(&evidence, None);
        assert_eq!(v.cause, Cause::Hung);
        let text = v.evidence.join("\n");
        assert!(text.contains("sent SIGABRT"), "{text}");
        assert!(!text.contains("died of that"), "{text}");
    }

    #[test]
    fn messages_are_parsed() {
        assert_eq!(
            allocation_failure("x\nmemory allocation of 4096 bytes failed\n"),
            Some(Some(4096))
        );
        assert_eq!(allocation_failure("memory allocation of many"), None);
        assert_eq!(
            stack_overflow("\nthread 'worker-1' has overflowed its stack\n"),
            Some(Some("worker-1".into()))
        );
    }
}

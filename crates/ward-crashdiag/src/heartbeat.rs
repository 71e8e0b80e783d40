//! The heartbeat: the file a live process rewrites every interval, the thread that does it, and
//! the reader a watchdog or a post-mortem uses.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::time;

/// The heartbeat file is rewritten in place with a record padded to this size, so that one
/// `pwrite` replaces it whole and the file never shrinks under a reader.
const RECORD_LEN: usize = 512;

/// Where time comes from, so that heartbeat ages and log schedules can be tested without sleeps.
pub trait Clock: Send + Sync + 'static {
    /// `CLOCK_MONOTONIC`: comparable between processes of one boot.
    fn monotonic(&self) -> Duration;
    /// Wall-clock time since the Unix epoch.
    fn wall(&self) -> Duration;
}

/// The real clocks.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn monotonic(&self) -> Duration {
        time::monotonic_now()
    }
    fn wall(&self) -> Duration {
        Duration::from_millis(time::wall_ms_now())
    }
}

/// Whether the process was still beating when it wrote the heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeartbeatState {
    /// Written by the running heartbeat thread.
    Running,
    /// Written once when the [`CaptureGuard`](crate::CaptureGuard) was dropped: the process
    /// was shutting down in an orderly way.
    Stopped,
}

/// One heartbeat, as stored in the heartbeat file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The beating process.
    pub pid: u32,
    /// Its role (`keeper`, `server`, `worker`...).
    pub role: String,
    /// 1 for the first beat, then +1 per beat.
    pub seq: u64,
    /// Wall-clock time of the beat, milliseconds since the Unix epoch.
    pub wall_ms: u64,
    /// `CLOCK_MONOTONIC` of the beat, milliseconds.
    pub mono_ms: u64,
    /// `/proc/sys/kernel/random/boot_id` at the beat: monotonic times compare only within a boot.
    pub boot_id: String,
    /// The interval between beats, milliseconds.
    pub interval_ms: u64,
    /// Wall-clock time the heartbeat started, milliseconds since the Unix epoch.
    pub started_wall_ms: u64,
    /// `CLOCK_MONOTONIC` when the heartbeat started, milliseconds.
    pub started_mono_ms: u64,
    /// The process's start time in clock ticks since boot (`/proc/<pid>/stat` field 22): with
    /// `pid`, it tells this process from a later one that reused the pid.
    #[serde(default)]
    pub start_ticks: Option<u64>,
    /// Running, or stopped by an orderly shutdown.
    pub state: HeartbeatState,
}

impl Heartbeat {
    /// How long ago this beat was written, by the monotonic clock when `boot_id` is today's
    /// boot and by the wall clock otherwise. Zero if the beat seems to be from the future.
    pub fn age(&self, clock: &dyn Clock, current_boot_id: &str) -> Duration {
        if !self.boot_id.is_empty() && self.boot_id == current_boot_id {
            clock
                .monotonic()
                .saturating_sub(Duration::from_millis(self.mono_ms))
        } else {
            clock
                .wall()
                .saturating_sub(Duration::from_millis(self.wall_ms))
        }
    }
}

/// The current boot's id (`/proc/sys/kernel/random/boot_id`), or an empty string where the
/// kernel does not say; the second argument of [`Heartbeat::age`].
pub fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// The start time of process `pid` in clock ticks since boot, from `/proc/<pid>/stat`; `None`
/// if it is gone (or `/proc` is missing).
pub(crate) fn start_ticks(pid: u32) -> Option<u64> {
    ward_sys::ProcStat::read(pid)
        .ok()
        .map(|stat| stat.start_ticks)
}

/// Reads the heartbeat file at `path`.
///
/// # Errors
/// [`Error::Io`] if it cannot be read, [`Error::Malformed`] if it does not hold a heartbeat
/// (a reader racing the writer is retried a few times first).
pub fn read_heartbeat(path: &Path) -> Result<Heartbeat> {
    let mut last = String::new();
    for _ in 0..3 {
        let text = fs::read_to_string(path).map_err(|e| Error::io("reading", path, e))?;
        match serde_json::from_str::<Heartbeat>(text.trim()) {
            Ok(beat) => return Ok(beat),
            Err(e) => last = e.to_string(),
        }
        thread::sleep(Duration::from_millis(5));
    }
    Err(Error::Malformed {
        what: "heartbeat",
        path: path.to_owned(),
        detail: last,
    })
}

/// When the next heartbeat log line is due: a pure schedule driven by monotonic readings.
#[derive(Debug)]
pub(crate) struct LogSchedule {
    every: Option<Duration>,
    next: Duration,
}

impl LogSchedule {
    /// The first line is due at `start`, then one every `every`; `None` never logs.
    pub(crate) fn new(every: Option<Duration>, start: Duration) -> Self {
        LogSchedule { every, next: start }
    }

    /// Whether a line is due at `now`; if so, schedules the next one. A late tick logs once,
    /// never a burst of catch-up lines.
    pub(crate) fn due(&mut self, now: Duration) -> bool {
        let Some(every) = self.every else {
            return false;
        };
        if now < self.next {
            return false;
        }
        self.next += every;
        if self.next <= now {
            self.next = now + every;
        }
        true
    }
}

/// Writes heartbeats into one file; the thread's body, separate so it can run on a fake clock.
pub(crate) struct Beater<C: Clock> {
    file: File,
    path: PathBuf,
    clock: C,
    beat: Heartbeat,
    log: LogSchedule,
}

impl<C: Clock> Beater<C> {
    /// Creates (or truncates) the heartbeat file.
    pub(crate) fn create(
        path: &Path,
        role: &str,
        interval: Duration,
        log_interval: Option<Duration>,
        clock: C,
    ) -> Result<Self> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|e| Error::io("creating heartbeat file", path, e))?;
        let mono = clock.monotonic();
        let wall = clock.wall();
        let beat = Heartbeat {
            pid: std::process::id(),
            // Bounded so that a beat always fits its fixed-size record.
            role: role.chars().take(64).collect(),
            seq: 0,
            wall_ms: wall.as_millis() as u64,
            mono_ms: mono.as_millis() as u64,
            boot_id: boot_id(),
            interval_ms: interval.as_millis() as u64,
            started_wall_ms: wall.as_millis() as u64,
            started_mono_ms: mono.as_millis() as u64,
            start_ticks: start_ticks(std::process::id()),
            state: HeartbeatState::Running,
        };
        Ok(Beater {
            file,
            path: path.to_owned(),
            log: LogSchedule::new(log_interval, mono),
            clock,
            beat,
        })
    }

    /// Writes the next beat; logs a heartbeat line when one is due.
    pub(crate) fn beat(&mut self, state: HeartbeatState) -> Result<()> {
        let mono = self.clock.monotonic();
        self.beat.seq += 1;
        self.beat.mono_ms = mono.as_millis() as u64;
        self.beat.wall_ms = self.clock.wall().as_millis() as u64;
        self.beat.state = state;
        let mut bytes = serde_json::to_vec(&self.beat)?;
        // Pad so that every record has the same length: a rewrite never leaves a stale tail.
        if bytes.len() < RECORD_LEN - 1 {
            bytes.resize(RECORD_LEN - 1, b' ');
        }
        bytes.push(b'\n');
        self.file
            .write_all_at(&bytes, 0)
            .map_err(|e| Error::io("writing heartbeat", &self.path, e))?;
        if state == HeartbeatState::Running && self.log.due(mono) {
            log::info!(
                "heartbeat: {} pid={} seq={} alive for {}s",
                self.beat.role,
                self.beat.pid,
                self.beat.seq,
                (self.beat.mono_ms - self.beat.started_mono_ms) / 1000
            );
        }
        Ok(())
    }
}

/// The heartbeat thread. Dropping it stops the thread, which writes a final `stopped` beat, and
/// joins it.
#[derive(Debug)]
pub(crate) struct HeartbeatThread {
    // Dropping the sender is the stop signal: `Drop` takes it out first, then joins `thread`.
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl HeartbeatThread {
    pub(crate) fn spawn<C: Clock>(mut beater: Beater<C>, interval: Duration) -> Result<Self> {
        // The first beat is written before `install` returns, so a watchdog never sees an empty
        // file from a live process.
        beater.beat(HeartbeatState::Running)?;
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = thread::Builder::new()
            .name("ward-heartbeat".into())
            .spawn(move || {
                let mut failures = 0u32;
                // Nothing is ever sent: the sender's drop (a disconnect) is the stop signal.
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                    if let Err(e) = beater.beat(HeartbeatState::Running) {
                        // Log the first failure and then every 60th, not one line a second.
                        if failures.is_multiple_of(60) {
                            log::warn!("heartbeat: {e}");
                        }
                        failures += 1;
                    }
                }
                if let Err(e) = beater.beat(HeartbeatState::Stopped) {
                    log::warn!("heartbeat: final beat: {e}");
                }
            })
            .map_err(|e| Error::Sys {
                call: "spawning the heartbeat thread",
                source: e,
            })?;
        Ok(HeartbeatThread {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for HeartbeatThread {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            log::error!("heartbeat: the heartbeat thread panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A clock that moves only when told to.
    #[derive(Clone, Default)]
    struct FakeClock {
        mono_ms: Arc<AtomicU64>,
        wall_ms: Arc<AtomicU64>,
    }

    impl FakeClock {
        fn advance(&self, ms: u64) {
            self.mono_ms.fetch_add(ms, Ordering::SeqCst);
            self.wall_ms.fetch_add(ms, Ordering::SeqCst);
        }
    }

    impl Clock for FakeClock {
        fn monotonic(&self) -> Duration {
            Duration::from_millis(self.mono_ms.load(Ordering::SeqCst))
        }
        fn wall(&self) -> Duration {
            Duration::from_millis(self.wall_ms.load(Ordering::SeqCst))
        }
    }

    #[test]
    fn log_schedule_logs_at_start_then_every_interval_without_bursts() {
        let s = Duration::from_secs;
        let mut log = LogSchedule::new(Some(s(60)), s(100));
        let ticks: Vec<bool> = [100, 101, 159, 160, 161, 219, 220, 500, 501, 560]
            .into_iter()
            .map(|t| log.due(s(t)))
            .collect();
        assert_eq!(
            ticks,
            [
                true, false, false, true, false, false, true, true, false, true
            ]
        );
        let mut never = LogSchedule::new(None, s(0));
        assert!(!never.due(s(1_000)));
    }

    #[test]
    fn beats_are_fixed_size_and_readable_with_age_from_the_fake_clock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hb");
        let clock = FakeClock::default();
        clock.advance(1_000_000);
        let mut beater =
            Beater::create(&path, "server", Duration::from_secs(1), None, clock.clone()).unwrap();
        beater.beat(HeartbeatState::Running).unwrap();
        clock.advance(1_000);
        beater.beat(HeartbeatState::Running).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().len(), RECORD_LEN as u64);

        let beat = read_heartbeat(&path).unwrap();
        assert_eq!(beat.seq, 2);
        assert_eq!(beat.role, "server");
        assert_eq!(beat.pid, std::process::id());
        assert_eq!(beat.state, HeartbeatState::Running);
        assert_eq!(beat.mono_ms - beat.started_mono_ms, 1_000);

        clock.advance(7_500);
        assert_eq!(
            beat.age(&clock, &beat.boot_id),
            Duration::from_millis(7_500)
        );
        // Another boot: only the wall clock is comparable.
        clock.wall_ms.fetch_add(10_000, Ordering::SeqCst);
        assert_eq!(
            beat.age(&clock, "other-boot"),
            Duration::from_millis(17_500)
        );

        beater.beat(HeartbeatState::Stopped).unwrap();
        assert_eq!(
            read_heartbeat(&path).unwrap().state,
            HeartbeatState::Stopped
        );
    }

    #[test]
    fn the_largest_beat_still_fits_its_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hb");
        let clock = FakeClock::default();
        clock.advance(u64::MAX / 4);
        let role = "r".repeat(10_000);
        let mut beater = Beater::create(&path, &role, Duration::from_secs(1), None, clock).unwrap();
        beater.beat.seq = u64::MAX - 1;
        beater.beat.start_ticks = Some(u64::MAX);
        beater.beat(HeartbeatState::Stopped).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().len(), RECORD_LEN as u64);
        assert_eq!(read_heartbeat(&path).unwrap().seq, u64::MAX);
    }

    #[test]
    fn garbage_is_reported_as_malformed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hb");
        fs::write(&path, "not json").unwrap();
        assert!(matches!(
            read_heartbeat(&path),
            Err(Error::Malformed {
                what: "heartbeat",
                ..
            })
        ));
    }

    #[test]
    fn dropping_the_thread_writes_a_stopped_beat_and_joins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hb");
        let beater = Beater::create(
            &path,
            "worker",
            Duration::from_secs(3600),
            Some(Duration::from_secs(60)),
            SystemClock,
        )
        .unwrap();
        let thread = HeartbeatThread::spawn(beater, Duration::from_secs(3600)).unwrap();
        assert_eq!(
            read_heartbeat(&path).unwrap().state,
            HeartbeatState::Running
        );
        // An hour-long interval: only the stop signal can end the wait before the test times out.
        drop(thread);
        let beat = read_heartbeat(&path).unwrap();
        assert_eq!(beat.state, HeartbeatState::Stopped);
        assert_eq!(beat.seq, 2);
    }
}

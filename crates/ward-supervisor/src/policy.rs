//! The restart policy: a pure state machine deciding what to do after each exit, with an
//! injectable clock. No processes, no threads, no sleeping here.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::Exit;

/// Where the restart machinery gets the time from; inject a [`ManualClock`] to test policies
/// without sleeping.
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current instant.
    fn now(&self) -> Instant;
}

/// The real monotonic clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that only moves when told to. Clones share the same time.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<Mutex<Instant>>,
}

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: Instant) -> ManualClock {
        ManualClock {
            now: Arc::new(Mutex::new(start)),
        }
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        let mut now = self.now.lock().unwrap_or_else(PoisonError::into_inner);
        *now += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// When a child that exited is started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartMode {
    /// After every exit (systemd `Restart=always`, Kubernetes `restartPolicy: Always`, pm2).
    Always,
    /// Only after an exit that [`FailureRule`] counts as a failure (systemd `Restart=on-failure`).
    OnFailure,
    /// Never; the first exit is final.
    Never,
}

/// Which exits count as success; everything else (and every hung child) is a failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureRule {
    /// Exit codes that mean success (systemd `SuccessExitStatus=`, default `[0]`).
    pub success_codes: Vec<i32>,
    /// Signals that mean a clean stop (systemd counts SIGHUP, SIGINT, SIGTERM and SIGPIPE).
    pub success_signals: Vec<i32>,
}

impl Default for FailureRule {
    /// Exit code 0 only; every signal is a failure.
    fn default() -> FailureRule {
        FailureRule {
            success_codes: vec![0],
            success_signals: Vec::new(),
        }
    }
}

impl FailureRule {
    /// systemd's rule: code 0, or death by SIGHUP, SIGINT, SIGTERM or SIGPIPE.
    pub fn systemd() -> FailureRule {
        FailureRule {
            success_codes: vec![0],
            success_signals: vec![libc::SIGHUP, libc::SIGINT, libc::SIGTERM, libc::SIGPIPE],
        }
    }

    /// Whether this exit is a failure.
    pub fn is_failure(&self, exit: &Exit) -> bool {
        if exit.hung {
            return true;
        }
        match exit.termination {
            crate::Termination::Exited { code } => !self.success_codes.contains(&code),
            crate::Termination::Signaled { signal, .. } => !self.success_signals.contains(&signal),
        }
    }
}

/// Exponential backoff: the n-th consecutive restart waits `initial × factor^n`, capped at `max`,
/// then spread by ±`jitter` (a fraction: 0.1 is ±10 %).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// Delay before the first restart.
    pub initial: Duration,
    /// Growth per consecutive restart (1.0 is a constant delay).
    pub factor: f64,
    /// Cap on the delay (before jitter).
    pub max: Duration,
    /// Random spread, as a fraction of the delay, in `0.0..=1.0`.
    pub jitter: f64,
}

impl Backoff {
    /// No delay at all.
    pub const ZERO: Backoff = Backoff {
        initial: Duration::ZERO,
        factor: 1.0,
        max: Duration::ZERO,
        jitter: 0.0,
    };

    /// The same delay every time.
    pub fn constant(delay: Duration) -> Backoff {
        Backoff {
            initial: delay,
            factor: 1.0,
            max: delay,
            jitter: 0.0,
        }
    }

    /// The delay before consecutive restart number `attempt` (0-based), without jitter.
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = if self.factor.is_finite() && self.factor >= 1.0 {
            self.factor
        } else {
            1.0
        };
        // powi saturates to infinity rather than overflowing; min() then caps it.
        let secs = self.initial.as_secs_f64() * factor.powi(attempt.min(i32::MAX as u32) as i32);
        let max = self.max.max(self.initial);
        if !secs.is_finite() || secs >= max.as_secs_f64() {
            max
        } else {
            Duration::from_secs_f64(secs)
        }
    }
}

/// Give up when more than `max_restarts` restarts would fall within `window` (Erlang/OTP's
/// supervisor intensity and period).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Intensity {
    /// Restarts allowed within the window.
    pub max_restarts: u32,
    /// The sliding window.
    pub window: Duration,
}

/// The whole restart configuration. Build one from a preset and adjust its public fields.
#[derive(Debug, Clone, PartialEq)]
pub struct RestartPolicy {
    /// When to restart at all.
    pub mode: RestartMode,
    /// What counts as failure for [`RestartMode::OnFailure`].
    pub failure: FailureRule,
    /// How long to wait before each restart.
    pub backoff: Backoff,
    /// A run at least this long resets the backoff to its initial delay (`None`: never reset).
    pub reset_after: Option<Duration>,
    /// Give up when restarts come too fast (`None`: never give up).
    pub intensity: Option<Intensity>,
}

impl Default for RestartPolicy {
    /// ward's own default: on failure, 100 ms doubling to 30 s with 10 % jitter, reset after a
    /// 60 s stable run, give up after 10 restarts within 60 s.
    fn default() -> RestartPolicy {
        RestartPolicy {
            mode: RestartMode::OnFailure,
            failure: FailureRule::default(),
            backoff: Backoff {
                initial: Duration::from_millis(100),
                factor: 2.0,
                max: Duration::from_secs(30),
                jitter: 0.1,
            },
            reset_after: Some(Duration::from_secs(60)),
            intensity: Some(Intensity {
                max_restarts: 10,
                window: Duration::from_secs(60),
            }),
        }
    }
}

impl RestartPolicy {
    /// systemd's defaults for `Restart=on-failure`: `RestartSec=100ms` (constant), clean signals
    /// SIGHUP/SIGINT/SIGTERM/SIGPIPE, `StartLimitBurst=5` within `StartLimitIntervalSec=10s`, no
    /// reset after a stable run.
    ///
    /// systemd's burst counts starts including the first one, so a unit crashing from a cold start
    /// gets 4 restarts; this preset allows 4 restarts within 10 s, which is the same crash loop.
    pub fn systemd() -> RestartPolicy {
        RestartPolicy {
            mode: RestartMode::OnFailure,
            failure: FailureRule::systemd(),
            backoff: Backoff::constant(Duration::from_millis(100)),
            reset_after: None,
            intensity: Some(Intensity {
                max_restarts: 4,
                window: Duration::from_secs(10),
            }),
        }
    }

    /// Kubernetes' `restartPolicy: Always`: 10 s doubling to 300 s, reset after 10 minutes of
    /// clean running, never gives up (CrashLoopBackOff keeps trying).
    pub fn kubernetes() -> RestartPolicy {
        RestartPolicy {
            mode: RestartMode::Always,
            failure: FailureRule::default(),
            backoff: Backoff {
                initial: Duration::from_secs(10),
                factor: 2.0,
                max: Duration::from_secs(300),
                jitter: 0.0,
            },
            reset_after: Some(Duration::from_secs(600)),
            intensity: None,
        }
    }

    /// pm2 with `exp_backoff_restart_delay: 100`: 100 ms growing ×1.5 to 15 s, reset after 30 s
    /// up, restarts after every exit, never gives up.
    pub fn pm2() -> RestartPolicy {
        RestartPolicy {
            mode: RestartMode::Always,
            failure: FailureRule::default(),
            backoff: Backoff {
                initial: Duration::from_millis(100),
                factor: 1.5,
                max: Duration::from_secs(15),
                jitter: 0.0,
            },
            reset_after: Some(Duration::from_secs(30)),
            intensity: None,
        }
    }

    /// Restart after every exit, immediately, forever (the benchmark's policy).
    pub fn immediate() -> RestartPolicy {
        RestartPolicy {
            mode: RestartMode::Always,
            failure: FailureRule::default(),
            backoff: Backoff::ZERO,
            reset_after: None,
            intensity: None,
        }
    }

    /// Never restart.
    pub fn never() -> RestartPolicy {
        RestartPolicy {
            mode: RestartMode::Never,
            ..RestartPolicy::immediate()
        }
    }
}

/// What to do after an exit.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Start the child again after this delay.
    Restart {
        /// How long to wait first.
        after: Duration,
        /// Consecutive restarts since the last reset, this one included (1 for the first).
        attempt: u32,
    },
    /// Restarts came too fast: stop trying.
    GiveUp(GiveUp),
    /// The policy does not restart after this exit.
    Stop(StopReason),
}

/// Why a policy gave up.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct GiveUp {
    /// Restarts already made within the window.
    pub restarts: u32,
    /// The configured limit.
    pub intensity: Intensity,
}

impl fmt::Display for GiveUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "gave up: {} restarts within {:?} already (limit {} per {:?})",
            self.restarts,
            self.intensity.window,
            self.intensity.max_restarts,
            self.intensity.window
        )
    }
}

/// Why a policy did not restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StopReason {
    /// The exit followed a stop that was asked for.
    Requested,
    /// The mode is [`RestartMode::Never`].
    Never,
    /// The mode is [`RestartMode::OnFailure`] and the exit was a success.
    Succeeded,
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StopReason::Requested => "stop requested",
            StopReason::Never => "restart mode is never",
            StopReason::Succeeded => "exited successfully and restarts are on failure only",
        })
    }
}

/// The state of one child's restarts under a [`RestartPolicy`]: consecutive restarts for the
/// backoff, recent restart times for the intensity.
///
/// ```
/// use std::time::{Duration, Instant};
/// use ward_supervisor::{Decision, Exit, ManualClock, RestartPolicy, RestartTracker, Termination};
///
/// let clock = ManualClock::new(Instant::now());
/// let mut tracker = RestartTracker::new(RestartPolicy::pm2(), clock.clone());
/// let crash = Exit::new(Termination::Exited { code: 1 }, Duration::from_secs(1));
/// assert_eq!(tracker.next(&crash), Decision::Restart { after: Duration::from_millis(100), attempt: 1 });
/// assert_eq!(tracker.next(&crash), Decision::Restart { after: Duration::from_millis(150), attempt: 2 });
/// ```
#[derive(Debug)]
pub struct RestartTracker<C: Clock = SystemClock> {
    policy: RestartPolicy,
    clock: C,
    /// Consecutive restarts since the last reset: the backoff exponent.
    consecutive: u32,
    /// When each recent restart happens (decision time plus delay), oldest first; at most
    /// `max_restarts + 1` entries.
    recent: VecDeque<Instant>,
    rng: u64,
}

impl<C: Clock> RestartTracker<C> {
    /// A fresh tracker (no restarts yet).
    pub fn new(policy: RestartPolicy, clock: C) -> RestartTracker<C> {
        RestartTracker {
            policy,
            clock,
            consecutive: 0,
            recent: VecDeque::new(),
            rng: 0x9E37_79B9_7F4A_7C15,
        }
    }

    /// Seeds the jitter's random sequence (deterministic by default).
    pub fn with_seed(mut self, seed: u64) -> RestartTracker<C> {
        self.rng = seed | 1;
        self
    }

    /// The policy this tracker follows.
    pub fn policy(&self) -> &RestartPolicy {
        &self.policy
    }

    /// Consecutive restarts since the last reset.
    pub fn consecutive_restarts(&self) -> u32 {
        self.consecutive
    }

    /// Forgets the restarts so far, as if the child had just been started for the first time
    /// (a restart on request).
    pub fn reset(&mut self) {
        self.consecutive = 0;
        self.recent.clear();
    }

    /// Decides what follows `exit`, and records a restart if it is one.
    pub fn next(&mut self, exit: &Exit) -> Decision {
        if exit.stop_requested {
            return Decision::Stop(StopReason::Requested);
        }
        match self.policy.mode {
            RestartMode::Never => return Decision::Stop(StopReason::Never),
            RestartMode::OnFailure if !self.policy.failure.is_failure(exit) => {
                return Decision::Stop(StopReason::Succeeded);
            }
            RestartMode::OnFailure | RestartMode::Always => {}
        }
        if self
            .policy
            .reset_after
            .is_some_and(|stable| exit.run_time >= stable)
        {
            self.consecutive = 0;
        }
        let after = self.jittered(self.policy.backoff.delay(self.consecutive));
        let start_at = self.clock.now() + after;
        if let Some(intensity) = self.policy.intensity {
            while self
                .recent
                .front()
                .is_some_and(|&t| start_at.saturating_duration_since(t) >= intensity.window)
            {
                self.recent.pop_front();
            }
            if self.recent.len() >= intensity.max_restarts as usize {
                return Decision::GiveUp(GiveUp {
                    restarts: self.recent.len() as u32,
                    intensity,
                });
            }
            self.recent.push_back(start_at);
        }
        self.consecutive = self.consecutive.saturating_add(1);
        Decision::Restart {
            after,
            attempt: self.consecutive,
        }
    }

    fn jittered(&mut self, delay: Duration) -> Duration {
        let jitter = self.policy.backoff.jitter.clamp(0.0, 1.0);
        if jitter == 0.0 || delay.is_zero() {
            return delay;
        }
        // xorshift64: plenty for spreading restarts, and reproducible under a seed.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let unit = (self.rng >> 11) as f64 / (1u64 << 53) as f64; // in [0, 1)
        delay.mul_f64(1.0 + jitter * (2.0 * unit - 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Termination;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn code(code: i32, ran: Duration) -> Exit {
        Exit::new(Termination::Exited { code }, ran)
    }

    fn signal(signal: i32, ran: Duration) -> Exit {
        Exit::new(
            Termination::Signaled {
                signal,
                core_dumped: false,
            },
            ran,
        )
    }

    fn restart(after: Duration, attempt: u32) -> Decision {
        Decision::Restart { after, attempt }
    }

    fn give_up(restarts: u32, max_restarts: u32, window: Duration) -> Decision {
        Decision::GiveUp(GiveUp {
            restarts,
            intensity: Intensity {
                max_restarts,
                window,
            },
        })
    }

    /// One scenario: a name, a policy, and each exit with the decision it must get.
    type Case = (&'static str, RestartPolicy, Vec<(Exit, Decision)>);

    /// Feeds the exits in order; between two, the clock moves by the decided delay plus the next
    /// run's length, as it would for a real child.
    fn check(name: &str, policy: RestartPolicy, steps: &[(Exit, Decision)]) {
        let clock = ManualClock::new(Instant::now());
        let mut tracker = RestartTracker::new(policy, clock.clone());
        let mut delay = Duration::ZERO;
        for (i, (exit, expected)) in steps.iter().enumerate() {
            clock.advance(delay + exit.run_time);
            let decision = tracker.next(exit);
            assert_eq!(&decision, expected, "{name}: step {i} ({exit})");
            delay = match decision {
                Decision::Restart { after, .. } => after,
                _ => Duration::ZERO,
            };
        }
    }

    #[test]
    fn presets_reproduce_their_anchors() {
        let crash = || code(1, Duration::ZERO);
        let cases: Vec<Case> = vec![
            (
                "systemd: 100 ms each time, the 5th restart within 10 s is refused",
                RestartPolicy::systemd(),
                vec![
                    (crash(), restart(ms(100), 1)),
                    (crash(), restart(ms(100), 2)),
                    (crash(), restart(ms(100), 3)),
                    (crash(), restart(ms(100), 4)),
                    (crash(), give_up(4, 4, secs(10))),
                ],
            ),
            (
                "systemd: crashes 3 s apart never hit the start limit",
                RestartPolicy::systemd(),
                (0..8)
                    .map(|i| (code(1, secs(3)), restart(ms(100), i + 1)))
                    .collect(),
            ),
            (
                "systemd: on-failure counts code 0 and SIGTERM as clean",
                RestartPolicy::systemd(),
                vec![(code(0, secs(1)), Decision::Stop(StopReason::Succeeded))],
            ),
            (
                "systemd: SIGTERM is clean",
                RestartPolicy::systemd(),
                vec![(
                    signal(libc::SIGTERM, secs(1)),
                    Decision::Stop(StopReason::Succeeded),
                )],
            ),
            (
                "systemd: SIGKILL, SIGSEGV and a hang are failures",
                RestartPolicy::systemd(),
                vec![
                    (signal(libc::SIGKILL, secs(5)), restart(ms(100), 1)),
                    (signal(libc::SIGSEGV, secs(5)), restart(ms(100), 2)),
                    (code(0, secs(5)).with_hung(true), restart(ms(100), 3)),
                ],
            ),
            (
                "kubernetes: 10 s doubling to 300 s, restarts clean exits too",
                RestartPolicy::kubernetes(),
                vec![
                    (crash(), restart(secs(10), 1)),
                    (crash(), restart(secs(20), 2)),
                    (code(0, Duration::ZERO), restart(secs(40), 3)),
                    (crash(), restart(secs(80), 4)),
                    (crash(), restart(secs(160), 5)),
                    (crash(), restart(secs(300), 6)),
                    (crash(), restart(secs(300), 7)),
                    // 10 minutes clean: back to 10 s.
                    (code(1, secs(600)), restart(secs(10), 1)),
                    (code(1, secs(599)), restart(secs(20), 2)),
                ],
            ),
            (
                "pm2: ×1.5 from 100 ms to 15 s, reset after 30 s up",
                RestartPolicy::pm2(),
                vec![
                    (crash(), restart(ms(100), 1)),
                    (crash(), restart(ms(150), 2)),
                    (crash(), restart(ms(225), 3)),
                    (crash(), restart(Duration::from_micros(337_500), 4)),
                    (
                        code(0, secs(29)),
                        restart(Duration::from_micros(506_250), 5),
                    ),
                    (code(0, secs(30)), restart(ms(100), 1)),
                ],
            ),
            (
                "never: the first exit is final",
                RestartPolicy::never(),
                vec![(crash(), Decision::Stop(StopReason::Never))],
            ),
            (
                "a requested stop is never restarted",
                RestartPolicy::immediate(),
                vec![(
                    Exit {
                        stop_requested: true,
                        ..crash()
                    },
                    Decision::Stop(StopReason::Requested),
                )],
            ),
            (
                "intensity counts restarts in a sliding window",
                RestartPolicy {
                    intensity: Some(Intensity {
                        max_restarts: 2,
                        window: secs(10),
                    }),
                    ..RestartPolicy::immediate()
                },
                vec![
                    (code(1, secs(1)), restart(Duration::ZERO, 1)),
                    (code(1, secs(1)), restart(Duration::ZERO, 2)),
                    (code(1, secs(1)), give_up(2, 2, secs(10))),
                ],
            ),
            (
                "old restarts leave the window",
                RestartPolicy {
                    intensity: Some(Intensity {
                        max_restarts: 2,
                        window: secs(10),
                    }),
                    ..RestartPolicy::immediate()
                },
                vec![
                    (code(1, secs(1)), restart(Duration::ZERO, 1)),
                    (code(1, secs(1)), restart(Duration::ZERO, 2)),
                    (code(1, secs(9)), restart(Duration::ZERO, 3)),
                    (code(1, secs(9)), restart(Duration::ZERO, 4)),
                ],
            ),
            (
                "on-failure with custom success codes and signals",
                RestartPolicy {
                    mode: RestartMode::OnFailure,
                    failure: FailureRule {
                        success_codes: vec![0, 3],
                        success_signals: vec![libc::SIGUSR1],
                    },
                    ..RestartPolicy::immediate()
                },
                vec![
                    (code(2, secs(1)), restart(Duration::ZERO, 1)),
                    (
                        signal(libc::SIGUSR1, secs(1)),
                        Decision::Stop(StopReason::Succeeded),
                    ),
                    (code(3, secs(1)), Decision::Stop(StopReason::Succeeded)),
                ],
            ),
        ];
        for (name, policy, steps) in cases {
            check(name, policy, &steps);
        }
    }

    #[test]
    fn backoff_saturates_at_its_max() {
        let backoff = Backoff {
            initial: ms(100),
            factor: 2.0,
            max: secs(30),
            jitter: 0.0,
        };
        let table = [
            (0, ms(100)),
            (1, ms(200)),
            (8, Duration::from_millis(25_600)),
            (9, secs(30)),
            (10_000, secs(30)),
            (u32::MAX, secs(30)),
        ];
        for (attempt, expected) in table {
            assert_eq!(backoff.delay(attempt), expected, "attempt {attempt}");
        }
        // A factor below 1 (or NaN) would shrink delays: it is treated as constant.
        let odd = Backoff {
            factor: f64::NAN,
            ..backoff
        };
        assert_eq!(odd.delay(5), ms(100));
    }

    #[test]
    fn jitter_spreads_delays_within_its_bounds() {
        let policy = RestartPolicy {
            backoff: Backoff {
                jitter: 0.5,
                ..Backoff::constant(secs(1))
            },
            ..RestartPolicy::immediate()
        };
        let mut tracker = RestartTracker::new(policy, ManualClock::new(Instant::now()));
        let delays: Vec<Duration> = (0..200)
            .map(|_| match tracker.next(&code(1, secs(1))) {
                Decision::Restart { after, .. } => after,
                other => panic!("{other:?}"),
            })
            .collect();
        assert!(delays.iter().all(|d| *d >= ms(500) && *d <= ms(1500)));
        let low = delays.iter().filter(|d| **d < secs(1)).count();
        assert!(
            (40..160).contains(&low),
            "spread both ways: {low} of 200 below 1 s"
        );
    }
}

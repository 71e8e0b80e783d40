//! Retry policy: how many attempts a job gets and the exponential backoff with jitter between them.

use std::time::Duration;

/// How often a failed job is tried again, and how long it waits in between.
///
/// The delay before attempt `n + 1` is `base × 2^(n-1)`, capped at `max_delay`; with jitter on
/// (the default) it is then drawn uniformly from the upper half of that value, so that jobs which
/// failed together do not all come back at the same instant. A job waiting for its retry does not
/// hold a worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    max_attempts: u32,
    base: Duration,
    max_delay: Duration,
    jitter: bool,
}

impl Default for RetryPolicy {
    /// One attempt, no retries.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 1,
            base: Duration::from_millis(100),
            max_delay: Duration::from_secs(30),
            jitter: true,
        }
    }
}

impl RetryPolicy {
    /// A policy allowing `max_attempts` attempts in all (1 means never retry; 0 is treated as 1),
    /// with a 100 ms base delay, a 30 s cap and jitter.
    pub fn attempts(max_attempts: u32) -> Self {
        RetryPolicy {
            max_attempts: max_attempts.max(1),
            ..RetryPolicy::default()
        }
    }

    /// Sets the delay before the second attempt; later ones double it.
    pub fn base_delay(mut self, base: Duration) -> Self {
        self.base = base;
        self
    }

    /// Sets the longest delay between two attempts.
    pub fn max_delay(mut self, max_delay: Duration) -> Self {
        self.max_delay = max_delay;
        self
    }

    /// Turns jitter on (the default) or off.
    pub fn jitter(mut self, jitter: bool) -> Self {
        self.jitter = jitter;
        self
    }

    /// How many attempts a job gets in all.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The delay after failed attempt number `attempt` (1 for the first), with `random` as the
    /// source of jitter: a pure function, so that backoff is tested without a clock.
    pub fn delay(&self, attempt: u32, random: u64) -> Duration {
        let doublings = attempt.saturating_sub(1).min(31);
        let full = self
            .base
            .checked_mul(1 << doublings)
            .unwrap_or(self.max_delay)
            .min(self.max_delay);
        if !self.jitter {
            return full;
        }
        let half = full / 2;
        let spread = u64::try_from((full - half).as_nanos()).unwrap_or(u64::MAX);
        let extra = if spread == 0 {
            0
        } else {
            random % (spread + 1)
        };
        half + Duration::from_nanos(extra)
    }
}

/// A small, fast, well-mixed hash (splitmix64), used to draw jitter from a job's number and
/// attempt without a random-number dependency.
pub(crate) fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn delays_double_up_to_the_cap_without_jitter() {
        let policy = RetryPolicy::attempts(10)
            .base_delay(10 * MS)
            .max_delay(50 * MS)
            .jitter(false);
        let delays: Vec<_> = (1..=5).map(|a| policy.delay(a, 0)).collect();
        assert_eq!(delays, [10 * MS, 20 * MS, 40 * MS, 50 * MS, 50 * MS]);
    }

    #[test]
    fn jitter_stays_in_the_upper_half_and_varies() {
        let policy = RetryPolicy::attempts(5).base_delay(100 * MS);
        let mut seen = std::collections::HashSet::new();
        for seed in 0..200 {
            let d = policy.delay(2, mix(seed));
            assert!(d >= 100 * MS && d <= 200 * MS, "{d:?}");
            seen.insert(d);
        }
        assert!(
            seen.len() > 100,
            "jitter barely varies: {} values",
            seen.len()
        );
        assert_eq!(policy.delay(2, 0), 100 * MS);
        assert_eq!(
            policy.delay(2, u64::MAX),
            policy.delay(2, u64::MAX % (100_000_001))
        );
    }

    #[test]
    fn huge_attempt_numbers_saturate_at_the_cap() {
        let policy = RetryPolicy::attempts(u32::MAX).jitter(false);
        assert_eq!(policy.delay(u32::MAX, 0), Duration::from_secs(30));
        assert_eq!(RetryPolicy::attempts(0).max_attempts(), 1);
    }
}

//! Counters and latency histograms the workers update without locks, and the [`Metrics`] snapshot.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

/// Four buckets per power of two of nanoseconds: at most 25 % error, 252 buckets in all.
const BUCKETS: usize = 252;

/// A log-scale histogram of durations with atomic buckets: recording is one relaxed add.
pub(crate) struct Histogram {
    buckets: [AtomicU64; BUCKETS],
}

impl Histogram {
    pub(crate) fn new() -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    pub(crate) fn record(&self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.buckets[bucket(nanos)].fetch_add(1, Relaxed);
    }

    /// Adds this histogram's counts into `into`.
    pub(crate) fn add_to(&self, into: &mut [u64; BUCKETS]) {
        for (sum, bucket) in into.iter_mut().zip(&self.buckets) {
            *sum += bucket.load(Relaxed);
        }
    }
}

fn bucket(nanos: u64) -> usize {
    if nanos < 4 {
        return nanos as usize;
    }
    let exponent = 63 - nanos.leading_zeros() as usize; // ≥ 2
    let sub = ((nanos >> (exponent - 2)) & 3) as usize;
    (exponent - 1) * 4 + sub
}

/// The largest value that falls in bucket `index`.
fn upper_bound(index: usize) -> u64 {
    if index < 4 {
        return index as u64;
    }
    let exponent = index / 4 + 1;
    let sub = (index % 4) as u128;
    let bound = ((4 + sub + 1) << (exponent - 2)) - 1;
    u64::try_from(bound).unwrap_or(u64::MAX)
}

/// Latency percentiles over the sampled jobs (upper bounds of log-scale buckets, so within 25 %).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Latency {
    /// How many jobs were sampled.
    pub samples: u64,
    /// Median.
    pub p50: Duration,
    /// 90th percentile.
    pub p90: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Largest sampled value.
    pub max: Duration,
}

impl Latency {
    pub(crate) fn from_counts(counts: &[u64; BUCKETS]) -> Self {
        let samples: u64 = counts.iter().sum();
        if samples == 0 {
            return Latency::default();
        }
        let at = |quantile: f64| {
            let rank = ((samples as f64) * quantile).ceil().max(1.0) as u64;
            let mut seen = 0;
            for (index, count) in counts.iter().enumerate() {
                seen += count;
                if seen >= rank {
                    return Duration::from_nanos(upper_bound(index));
                }
            }
            Duration::from_nanos(u64::MAX)
        };
        Latency {
            samples,
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max: at(1.0),
        }
    }
}

/// What one worker (or the callers running jobs themselves) has done. Each worker owns one, so
/// the hot path never shares a cache line with another worker.
#[repr(align(128))]
pub(crate) struct Stats {
    pub(crate) running: AtomicUsize,
    pub(crate) completed: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) panicked: AtomicU64,
    pub(crate) retried: AtomicU64,
    pub(crate) dead: AtomicU64,
    pub(crate) wait: Histogram,
    pub(crate) run: Histogram,
}

impl Stats {
    pub(crate) fn new() -> Self {
        Stats {
            running: AtomicUsize::new(0),
            completed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            panicked: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            dead: AtomicU64::new(0),
            wait: Histogram::new(),
            run: Histogram::new(),
        }
    }
}

/// Counters updated on the submit side and by the overseer.
#[repr(align(128))]
#[derive(Default)]
pub(crate) struct IntakeStats {
    pub(crate) coalesced: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) timed_out: AtomicU64,
    /// Submissions refused because the pool was closing (not a metric: shutdown's bookkeeping).
    pub(crate) closed: AtomicU64,
}

/// A snapshot of the pool's state and history, from [`Pool::metrics`](crate::Pool::metrics).
/// Counters count since the pool was built.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Metrics {
    /// Jobs accepted and not yet started: in the queue, waiting on a running key, or waiting for
    /// a retry.
    pub queued: usize,
    /// Jobs running now (including those running in a submitter under `CallerRuns`).
    pub running: usize,
    /// Jobs whose handler returned `Ok`.
    pub completed: u64,
    /// Failed attempts (errors, panics and timeouts), retried or not.
    pub failed: u64,
    /// Of the failed attempts, those that panicked.
    pub panicked: u64,
    /// Of the failed attempts, those that ran past the job timeout.
    pub timed_out: u64,
    /// Retries scheduled.
    pub retried: u64,
    /// Jobs replaced by a newer job with the same key.
    pub coalesced: u64,
    /// Submissions refused with an error (full, timed out, paused).
    pub rejected: u64,
    /// Jobs let go by eviction, supersession or a dropped pool.
    pub dropped: u64,
    /// Jobs that failed their last attempt (dead letters).
    pub dead: u64,
    /// Time from submission to the start of the first attempt, sampled.
    pub wait: Latency,
    /// Time one attempt ran, sampled.
    pub run: Latency,
}

pub(crate) fn empty_counts() -> [u64; BUCKETS] {
    [0; BUCKETS]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_lands_in_a_bucket_whose_bound_covers_it() {
        let mut values: Vec<u64> = (0..2000).collect();
        values.extend([1 << 20, (1 << 20) + 1, u64::MAX / 3, u64::MAX]);
        for v in values {
            let b = bucket(v);
            assert!(b < BUCKETS, "{v} -> {b}");
            assert!(upper_bound(b) >= v, "{v} above bound of bucket {b}");
            if b > 0 {
                assert!(
                    upper_bound(b - 1) < v,
                    "{v} belongs in an earlier bucket than {b}"
                );
            }
        }
    }

    #[test]
    fn percentiles_come_from_the_counts() {
        let h = Histogram::new();
        for _ in 0..99 {
            h.record(Duration::from_micros(1));
        }
        h.record(Duration::from_millis(5));
        let mut counts = empty_counts();
        h.add_to(&mut counts);
        let lat = Latency::from_counts(&counts);
        assert_eq!(lat.samples, 100);
        assert!(lat.p50 >= Duration::from_micros(1) && lat.p50 < Duration::from_micros(2));
        assert!(lat.p99 < Duration::from_micros(2), "{lat:?}");
        assert!(lat.max >= Duration::from_millis(5) && lat.max < Duration::from_millis(7));
        assert_eq!(Latency::from_counts(&empty_counts()), Latency::default());
    }
}

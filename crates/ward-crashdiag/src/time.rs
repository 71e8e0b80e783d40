//! Clock readings, and the two forms of a UTC time in crash reports (the calendar arithmetic is
//! `ward_sys::time`'s).

use std::time::{Duration, SystemTime};

use ward_sys::UtcTime;

/// Milliseconds since the Unix epoch; 0 if the clock is before 1970.
pub(crate) fn wall_ms_now() -> u64 {
    ward_sys::time::unix_ms(SystemTime::now())
}

/// `CLOCK_MONOTONIC`, comparable between processes of one boot (unlike `Instant`, which is
/// opaque).
pub(crate) fn monotonic_now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// `20261123T114500.123Z`: sorts in time order, safe in file names.
pub(crate) fn file_stamp(wall_ms: u64) -> String {
    let t = UtcTime::from_unix_ms(wall_ms);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}.{:03}Z",
        t.year, t.month, t.day, t.hour, t.minute, t.second, t.millisecond
    )
}

/// `2026-11-23 11:45:00.123 UTC`, for people.
pub(crate) fn human(wall_ms: u64) -> String {
    let t = UtcTime::from_unix_ms(wall_ms);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:03} UTC",
        t.year, t.month, t.day, t.hour, t.minute, t.second, t.millisecond
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(file_stamp(0), "19700101T000000.000Z");
        // 2000-02-29 23:59:59.999 UTC, a leap day at the end of a century leap year.
        assert_eq!(human(951_868_799_999), "2000-02-29 23:59:59.999 UTC");
        // 2026-11-23 11:45:00.123 UTC.
        assert_eq!(file_stamp(1_795_434_300_123), "20261123T114500.123Z");
    }

    #[test]
    fn monotonic_advances() {
        let a = monotonic_now();
        let b = monotonic_now();
        assert!(b >= a && a > Duration::ZERO);
    }
}

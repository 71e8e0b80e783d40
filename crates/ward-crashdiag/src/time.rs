//! Clock readings and UTC formatting without a date library.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch; 0 if the clock is before 1970.
pub(crate) fn wall_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
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

/// Year, month, day from days since 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

struct Utc {
    year: i64,
    month: u32,
    day: u32,
    hour: u64,
    minute: u64,
    second: u64,
    milli: u64,
}

fn utc(wall_ms: u64) -> Utc {
    let secs = wall_ms / 1000;
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let in_day = secs % 86_400;
    Utc {
        year,
        month,
        day,
        hour: in_day / 3600,
        minute: in_day / 60 % 60,
        second: in_day % 60,
        milli: wall_ms % 1000,
    }
}

/// `20261123T114500.123Z`: sorts in time order, safe in file names.
pub(crate) fn file_stamp(wall_ms: u64) -> String {
    let t = utc(wall_ms);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}.{:03}Z",
        t.year, t.month, t.day, t.hour, t.minute, t.second, t.milli
    )
}

/// `2026-11-23 11:45:00.123 UTC`, for people.
pub(crate) fn human(wall_ms: u64) -> String {
    let t = utc(wall_ms);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:03} UTC",
        t.year, t.month, t.day, t.hour, t.minute, t.second, t.milli
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

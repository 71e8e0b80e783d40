//! Wall-clock milliseconds as a UTC calendar time, and its RFC 3339 form, without a date
//! library. Not time zones, not parsing, not clocks other than the wall clock's reading.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

/// A UTC calendar time to the millisecond. Its [`Display`](fmt::Display) is RFC 3339 with
/// milliseconds and `Z`: `2026-11-23T11:45:00.123Z`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub struct UtcTime {
    /// The year (1970 and later; four digits until 9999).
    pub year: i64,
    /// 1 to 12.
    pub month: u8,
    /// 1 to 31.
    pub day: u8,
    /// 0 to 23.
    pub hour: u8,
    /// 0 to 59.
    pub minute: u8,
    /// 0 to 59 (Unix time has no leap seconds).
    pub second: u8,
    /// 0 to 999.
    pub millisecond: u16,
}

impl UtcTime {
    /// The calendar time `unix_ms` milliseconds after 1970-01-01T00:00:00Z.
    pub fn from_unix_ms(unix_ms: u64) -> UtcTime {
        let secs = unix_ms / 1000;
        let (year, month, day) = civil_from_days((secs / 86_400) as i64);
        let in_day = secs % 86_400;
        UtcTime {
            year,
            month,
            day,
            hour: (in_day / 3600) as u8,
            minute: (in_day / 60 % 60) as u8,
            second: (in_day % 60) as u8,
            millisecond: (unix_ms % 1000) as u16,
        }
    }

    /// The wall clock now; 1970-01-01 if it is set before that.
    pub fn now() -> UtcTime {
        UtcTime::from_unix_ms(unix_ms(SystemTime::now()))
    }
}

/// Milliseconds since the Unix epoch of `time`; 0 for a time before it, `u64::MAX` past
/// what a `u64` holds.
pub fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl fmt::Display for UtcTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            self.year, self.month, self.day, self.hour, self.minute, self.second, self.millisecond
        )
    }
}

/// Year, month, day from days since 1970-01-01 (Howard Hinnant's `civil_from_days`, exact for
/// every day a `u64` of milliseconds reaches).
fn civil_from_days(days: i64) -> (i64, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_instants_format_as_rfc_3339() {
        let cases = [
            (0, "1970-01-01T00:00:00.000Z"),
            (999, "1970-01-01T00:00:00.999Z"),
            // The last millisecond of a leap day in a century leap year.
            (951_868_799_999, "2000-02-29T23:59:59.999Z"),
            // The day after: March, not February 30.
            (951_868_800_000, "2000-03-01T00:00:00.000Z"),
            // 2100 is not a leap year.
            (4_107_456_000_000, "2100-02-28T00:00:00.000Z"),
            (4_107_542_400_000, "2100-03-01T00:00:00.000Z"),
            (1_795_434_300_123, "2026-11-23T11:45:00.123Z"),
            // The last millisecond of a year.
            (1_798_761_599_999, "2026-12-31T23:59:59.999Z"),
            (253_402_300_799_999, "9999-12-31T23:59:59.999Z"),
        ];
        for (ms, want) in cases {
            assert_eq!(UtcTime::from_unix_ms(ms).to_string(), want, "{ms}");
        }
    }

    #[test]
    fn every_day_follows_the_previous_one() {
        let leap = |y: i64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        let days_in = |y: i64, m: u8| match m {
            4 | 6 | 9 | 11 => 30,
            2 if leap(y) => 29,
            2 => 28,
            _ => 31,
        };
        // Each day from 1970 to 2200 is the one after the previous in the calendar.
        let mut previous = UtcTime::from_unix_ms(0);
        for day in 1..(230 * 366) {
            let t = UtcTime::from_unix_ms(day * 86_400_000);
            let (y, m, d) = (previous.year, previous.month, previous.day);
            let expected = if d < days_in(y, m) {
                (y, m, d + 1)
            } else if m < 12 {
                (y, m + 1, 1)
            } else {
                (y + 1, 1, 1)
            };
            assert_eq!((t.year, t.month, t.day), expected, "after {previous}");
            assert_eq!((t.hour, t.minute, t.second, t.millisecond), (0, 0, 0, 0));
            previous = t;
        }
    }

    #[test]
    fn the_clock_before_1970_reads_as_the_epoch() {
        let before = UNIX_EPOCH - std::time::Duration::from_secs(5);
        assert_eq!(unix_ms(before), 0);
        assert!(UtcTime::now().year >= 2024);
    }
}

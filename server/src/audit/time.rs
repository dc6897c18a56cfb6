//! The dates of `audit export --since/--until`: `YYYY-MM-DD` (midnight UTC; as
//! `--until`, the end of that day) or RFC 3339 with an offset.

use std::str::FromStr;

use jiff::Timestamp;
use jiff::civil::Date;
use jiff::tz::TimeZone;

/// Which end of a range a date bounds: a bare date as `--until` includes that day.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    Since,
    Until,
}

/// Unix seconds of `text`, or why it is not a date.
pub fn parse(text: &str, end: End) -> Result<u64, String> {
    let text = text.trim();
    // jiff reads a date out of a longer time too: only a bare date is one.
    let bare_date = (text.len() == 10)
        .then(|| Date::from_str(text).ok())
        .flatten();
    let seconds = if let Some(date) = bare_date {
        let day = if end == End::Until {
            date.tomorrow().map_err(|e| e.to_string())?
        } else {
            date
        };
        TimeZone::UTC
            .to_timestamp(day.to_datetime(jiff::civil::Time::midnight()))
            .map_err(|e| e.to_string())?
            .as_second()
    } else {
        Timestamp::from_str(text)
            .map_err(|e| {
                format!("{text:?} is neither a date (YYYY-MM-DD) nor an RFC 3339 time with an offset (2026-12-01T12:00:00Z): {e}")
            })?
            .as_second()
    };
    u64::try_from(seconds).map_err(|_| format!("{text:?} is before 1970"))
}

/// `seconds` as RFC 3339 UTC (`2026-12-01T12:00:00Z`).
pub fn utc(seconds: u64) -> String {
    i64::try_from(seconds)
        .ok()
        .and_then(|s| Timestamp::from_second(s).ok())
        .map_or_else(|| format!("@{seconds}"), |t| t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_times() {
        assert_eq!(parse("1970-01-02", End::Since), Ok(86_400));
        assert_eq!(parse("1970-01-02", End::Until), Ok(2 * 86_400));
        assert_eq!(parse("1970-01-01T01:00:00Z", End::Until), Ok(3600));
        assert_eq!(parse("1970-01-01T02:00:00+01:00", End::Since), Ok(3600));
        assert_eq!(utc(3600), "1970-01-01T01:00:00Z");
        for bad in [
            "yesterday",
            "2026-13-01",
            "2026-12-01T12:00:00",
            "1969-12-31",
        ] {
            assert!(parse(bad, End::Since).is_err(), "{bad}");
        }
    }
}

//! Human durations (`90s`, `15m`, `12h`, `7d`) as used by every ferry command line.

use std::time::Duration;

use crate::error::{FormatError, Result};

/// Parses a number followed by one unit: `s`, `m`, `h` or `d`. A unit is required so
/// that `--expires-in 7` cannot silently mean seven seconds.
pub fn parse_duration(s: &str) -> Result<Duration> {
    parse(s, false)
}

/// Like [`parse_duration`], also accepting milliseconds (`250ms`): for the few settings
/// finer than a second (the retry backoff's base delay).
pub fn parse_duration_ms(s: &str) -> Result<Duration> {
    parse(s, true)
}

fn parse(s: &str, millis: bool) -> Result<Duration> {
    let bad = || FormatError::BadDuration(s.to_string());
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| bad())?;
    if millis && unit == "ms" {
        return Ok(Duration::from_millis(n));
    }
    let secs = match unit {
        "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        "d" => n.checked_mul(86_400),
        _ => None,
    }
    .ok_or_else(bad)?;
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse_duration("90s").unwrap().as_secs(), 90);
        assert_eq!(parse_duration("15m").unwrap().as_secs(), 900);
        assert_eq!(parse_duration("12h").unwrap().as_secs(), 43_200);
        assert_eq!(parse_duration("7d").unwrap().as_secs(), 604_800);
        for s in [
            "7",
            "d",
            "",
            "1w",
            "-1s",
            "1.5h",
            "99999999999999999999d",
            "250ms",
        ] {
            assert!(parse_duration(s).is_err(), "{s:?}");
        }
    }

    #[test]
    fn milliseconds_only_where_asked_for() {
        assert_eq!(
            parse_duration_ms("250ms").unwrap(),
            Duration::from_millis(250)
        );
        assert_eq!(parse_duration_ms("0ms").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration_ms("20s").unwrap(), Duration::from_secs(20));
        assert_eq!(parse_duration_ms("2m").unwrap(), Duration::from_secs(120));
        for s in [
            "250",
            "ms",
            "1.5ms",
            "-1ms",
            "250 ms",
            "1us",
            "99999999999999999999ms",
        ] {
            assert!(parse_duration_ms(s).is_err(), "{s:?}");
        }
    }
}

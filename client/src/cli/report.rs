//! Human output helpers: sizes, UTC times, and where progress lines go.

use std::time::{SystemTime, UNIX_EPOCH};

/// Unix seconds now (0 if the clock is before 1970).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `181.2 KB`, decimal units.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KB", "MB", "GB", "TB", "PB"];
    if n < 1000 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1000.0;
    let mut unit = 0;
    while v >= 1000.0 && unit + 1 < UNITS.len() {
        v /= 1000.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// `2026-11-23T03:19:06Z` from unix seconds (proleptic Gregorian, UTC).
pub fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Where progress lines go: stdout normally, stderr when stdout carries JSON, the log
/// for `ferry agent` (a service's stdout is nobody's terminal), nowhere with `--quiet`.
#[derive(Clone, Copy, Debug)]
pub struct Out {
    pub json: bool,
    pub log: bool,
    pub quiet: bool,
}

impl Out {
    pub fn new(json: bool) -> Out {
        Out {
            json,
            log: false,
            quiet: false,
        }
    }

    /// Lines become `info` events of the log.
    pub fn log() -> Out {
        Out {
            json: false,
            log: true,
            quiet: false,
        }
    }

    /// Only errors are printed.
    pub fn quiet(self, quiet: bool) -> Out {
        Out { quiet, ..self }
    }

    /// Whether a progress bar may be drawn (it still needs stderr to be a terminal).
    pub fn bars(&self) -> bool {
        !(self.json || self.log || self.quiet)
    }

    pub fn info(&self, line: &str) {
        if self.quiet {
            return;
        }
        if self.log {
            tracing::info!("{line}");
        } else if self.json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_795_403_946), "2026-11-23T03:19:06Z");
        assert_eq!(bytes(999), "999 B");
        assert_eq!(bytes(181_200), "181.2 KB");
        assert_eq!(bytes(52_100_000), "52.1 MB");
    }
}

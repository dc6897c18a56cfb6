//! Update windows (`windows`, `timezone` in config.toml): when the agent may switch
//! `current`. A window is `DAYS HH:MM-HH:MM`, e.g. `Mon-Fri 02:00-04:00` or
//! `Sat,Sun 00:00-06:00`; DAYS is a comma list of days and day ranges (`Fri-Mon`
//! wraps over the week end) and may be left out for every day. An end at or before
//! the start closes the next day (`Fri 22:00-02:00` is Friday night), and `24:00`
//! is the end of the day. Times are in `timezone`: `local` (the system's, with its
//! daylight saving rules), `UTC`, or an IANA name such as `Europe/Berlin`.

use std::time::Duration;

use jiff::Timestamp;
use jiff::tz::TimeZone;

const DAY: u32 = 24 * 60;
const WEEK: u32 = 7 * DAY;
const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WindowError {
    #[error("window {window:?}: {reason} (expected e.g. \"Mon-Fri 02:00-04:00\")")]
    Window { window: String, reason: String },
    #[error("timezone {0:?} is not `local`, `UTC` or a time zone this system knows")]
    TimeZone(String),
}

/// When switches may happen.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// Minute-of-week spans `[start, end)` with Monday 00:00 = 0; `end` may pass
    /// [`WEEK`] for a window that wraps into Monday.
    spans: Vec<(u32, u32)>,
    tz: TimeZone,
    tz_name: String,
}

impl Schedule {
    /// Parses the configured windows; no windows means any time.
    pub fn parse(windows: &[String], timezone: Option<&str>) -> Result<Schedule, WindowError> {
        let tz_name = timezone.unwrap_or("local").to_string();
        let tz = match tz_name.to_ascii_lowercase().as_str() {
            "local" => TimeZone::system(),
            "utc" => TimeZone::UTC,
            _ => TimeZone::get(&tz_name).map_err(|_| WindowError::TimeZone(tz_name.clone()))?,
        };
        let mut spans = Vec::new();
        for w in windows {
            spans.extend(parse_window(w).map_err(|reason| WindowError::Window {
                window: w.clone(),
                reason,
            })?);
        }
        Ok(Schedule { spans, tz, tz_name })
    }

    /// Whether a switch may happen at `now`.
    pub fn is_open(&self, now: Timestamp) -> bool {
        if self.spans.is_empty() {
            return true;
        }
        let m = self.minute_of_week(now);
        self.spans
            .iter()
            .any(|&(s, e)| (s <= m && m < e) || (e > WEEK && m < e - WEEK))
    }

    /// How long until the next window opens (zero when one is open now; `None` when
    /// switches may happen at any time). Whole minutes, so a daylight saving change
    /// can make it an hour off: the agent checks again at its next wake-up anyway.
    pub fn until_open(&self, now: Timestamp) -> Option<Duration> {
        if self.spans.is_empty() {
            return None;
        }
        if self.is_open(now) {
            return Some(Duration::ZERO);
        }
        let m = self.minute_of_week(now);
        let secs_into_minute = u64::from(
            now.to_zoned_datetime(self.tz.clone())
                .time()
                .second()
                .unsigned_abs(),
        );
        let wait = self
            .spans
            .iter()
            .map(|&(s, _)| (s + WEEK - m) % WEEK)
            .min()
            .unwrap_or(0);
        Some(Duration::from_secs(
            (u64::from(wait) * 60).saturating_sub(secs_into_minute),
        ))
    }

    /// The windows as configured, for messages.
    pub fn describe(&self) -> String {
        if self.spans.is_empty() {
            return "any time".into();
        }
        format!("{} window(s), {}", self.spans.len(), self.tz_name)
    }

    fn minute_of_week(&self, now: Timestamp) -> u32 {
        let z = now.to_zoned_datetime(self.tz.clone());
        let day = z.weekday().to_monday_zero_offset().unsigned_abs() as u32;
        let t = z.time();
        day * DAY + t.hour().unsigned_abs() as u32 * 60 + t.minute().unsigned_abs() as u32
    }
}

/// One window as minute-of-week spans, one per day it opens on.
fn parse_window(text: &str) -> Result<Vec<(u32, u32)>, String> {
    let text = text.trim();
    let (days, times) = match text.rsplit_once(char::is_whitespace) {
        Some((d, t)) => (parse_days(d.trim())?, t),
        None => ([true; 7], text),
    };
    let (start, end) = times
        .split_once('-')
        .ok_or_else(|| format!("{times:?} is not a time span HH:MM-HH:MM"))?;
    let start = parse_time(start)?;
    let end = parse_time(end)?;
    if start == DAY {
        return Err("a window cannot start at 24:00".into());
    }
    let len = if end > start {
        end - start
    } else {
        end + DAY - start
    };
    Ok((0..7u32)
        .filter(|d| days[*d as usize])
        .map(|d| (d * DAY + start, d * DAY + start + len))
        .collect())
}

fn parse_days(text: &str) -> Result<[bool; 7], String> {
    let mut set = [false; 7];
    for part in text.split(',') {
        let part = part.trim();
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (a, b) = (day_index(a)?, day_index(b)?);
        let mut d = a;
        loop {
            set[d] = true;
            if d == b {
                break;
            }
            d = (d + 1) % 7;
        }
    }
    Ok(set)
}

fn day_index(name: &str) -> Result<usize, String> {
    let lower = name.trim().to_ascii_lowercase();
    DAYS.iter()
        .position(|d| lower.len() >= 3 && d.starts_with(&lower[..3]) && is_day_name(&lower))
        .ok_or_else(|| format!("{name:?} is not a day (Mon, Tue, ..., Sun)"))
}

/// `mon`, `monday`, `Mon` are days; `month` is not.
fn is_day_name(lower: &str) -> bool {
    const FULL: [&str; 7] = [
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
        "sunday",
    ];
    lower.len() == 3 || FULL.contains(&lower)
}

fn parse_time(text: &str) -> Result<u32, String> {
    let bad = || format!("{text:?} is not a time HH:MM (00:00 to 24:00)");
    let (h, m) = text.trim().split_once(':').ok_or_else(bad)?;
    if h.is_empty() || h.len() > 2 || m.len() != 2 {
        return Err(bad());
    }
    let h: u32 = h.parse().map_err(|_| bad())?;
    let m: u32 = m.parse().map_err(|_| bad())?;
    if m > 59 || h > 24 || (h == 24 && m != 0) {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(windows: &[&str]) -> Schedule {
        let w: Vec<String> = windows.iter().map(|s| s.to_string()).collect();
        Schedule::parse(&w, Some("UTC")).unwrap()
    }

    /// 2026-11-30 is a Monday.
    fn at(day_offset: i64, hh: i64, mm: i64) -> Timestamp {
        let monday: Timestamp = "2026-11-30T00:00:00Z".parse().unwrap();
        monday
            .checked_add(jiff::SignedDuration::from_secs(
                day_offset * 86_400 + hh * 3600 + mm * 60,
            ))
            .unwrap()
    }

    #[test]
    fn weekday_windows_open_and_close_on_the_minute() {
        let s = utc(&["Mon-Fri 02:00-04:00", "Sat,Sun 00:00-06:00"]);
        assert!(!s.is_open(at(0, 1, 59)));
        assert!(s.is_open(at(0, 2, 0)));
        assert!(s.is_open(at(4, 3, 59)));
        assert!(!s.is_open(at(4, 4, 0)));
        assert!(s.is_open(at(5, 5, 0)));
        assert!(!s.is_open(at(5, 12, 0)));
        assert!(s.is_open(at(6, 0, 0)));
        assert_eq!(s.until_open(at(0, 1, 0)), Some(Duration::from_secs(3600)));
        assert_eq!(s.until_open(at(0, 2, 30)), Some(Duration::ZERO));
        // Friday 04:00 → Saturday 00:00.
        assert_eq!(
            s.until_open(at(4, 4, 0)),
            Some(Duration::from_secs(20 * 3600))
        );
    }

    #[test]
    fn a_window_past_midnight_and_over_the_week_end_belongs_to_its_start() {
        let s = utc(&["Sun 22:00-02:00"]);
        assert!(s.is_open(at(6, 23, 0)));
        assert!(s.is_open(at(7, 1, 59)), "Monday 01:59 of the next week");
        assert!(s.is_open(at(0, 1, 0)), "Monday 01:00 wraps from Sunday");
        assert!(!s.is_open(at(0, 2, 0)));
        assert!(!s.is_open(at(5, 23, 0)));
        let fri_mon = utc(&["Fri-Mon 10:00-11:00"]);
        assert!(fri_mon.is_open(at(0, 10, 30)) && fri_mon.is_open(at(6, 10, 30)));
        assert!(!fri_mon.is_open(at(1, 10, 30)));
        let daily = utc(&["12:00-24:00"]);
        assert!(daily.is_open(at(2, 23, 59)) && !daily.is_open(at(2, 11, 59)));
    }

    #[test]
    fn no_windows_means_any_time() {
        let s = utc(&[]);
        assert!(s.is_open(at(3, 3, 3)));
        assert_eq!(s.until_open(at(3, 3, 3)), None);
    }

    #[test]
    fn bad_windows_and_zones_are_errors_naming_them() {
        for (w, needle) in [
            ("Mon-Fri 2-4", "not a time"),
            ("Mon-Fri 02:00", "time span"),
            ("Funday 02:00-03:00", "not a day"),
            ("Mon 25:00-26:00", "not a time"),
            ("Mon 24:00-01:00", "24:00"),
            ("Month 01:00-02:00", "not a day"),
        ] {
            let e = Schedule::parse(&[w.to_string()], Some("UTC")).unwrap_err();
            assert!(e.to_string().contains(needle), "{w}: {e}");
            assert!(e.to_string().contains(w), "{w}: {e}");
        }
        let e = Schedule::parse(&[], Some("Mars/Olympus")).unwrap_err();
        assert!(e.to_string().contains("Mars/Olympus"));
        assert!(Schedule::parse(&["Mon 01:00-02:00".into()], Some("local")).is_ok());
        assert!(Schedule::parse(&["Mon 01:00-02:00".into()], Some("Europe/Berlin")).is_ok());
    }

    #[test]
    fn a_named_zone_shifts_the_window() {
        let w = vec!["Mon 02:00-03:00".to_string()];
        let berlin = Schedule::parse(&w, Some("Europe/Berlin")).unwrap();
        // 02:30 in Berlin in winter is 01:30 UTC.
        assert!(berlin.is_open(at(0, 1, 30)));
        assert!(!berlin.is_open(at(0, 2, 30)));
    }
}

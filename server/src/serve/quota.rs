//! What one upload token may do per unit of time, so a stolen token cannot fill the
//! disk or keep the server busy: at most `--upload-bytes-per-hour` of object bytes
//! stored per hour (a fixed window starting with the first upload after the previous
//! one ended) and `--upload-requests-per-minute` uploads (a token bucket: that many at
//! once, refilled evenly over a minute). Past either, uploads are refused with
//! `429 Too Many Requests` and a `Retry-After` saying when the budget has room again;
//! an object larger than the whole hourly budget gets `413`, as waiting cannot help.
//!
//! The server has one upload token, so the budget is the token's.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Default `--upload-bytes-per-hour`: 16 GiB, four releases of the largest object.
pub const DEFAULT_BYTES_PER_HOUR: u64 = 16 << 30;
/// Default `--upload-requests-per-minute`; a publish makes about ten.
pub const DEFAULT_REQUESTS_PER_MINUTE: u32 = 600;

const HOUR: Duration = Duration::from_secs(3600);
const MINUTE: Duration = Duration::from_secs(60);

/// The configured limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub bytes_per_hour: u64,
    pub requests_per_minute: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            bytes_per_hour: DEFAULT_BYTES_PER_HOUR,
            requests_per_minute: DEFAULT_REQUESTS_PER_MINUTE,
        }
    }
}

/// Why an upload may not go ahead now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Over {
    /// Too many requests; room again after this long.
    Requests(Duration),
    /// The hour's bytes are spent; room again after this long.
    Bytes(Duration),
    /// The upload is larger than a whole hour's budget.
    Never,
}

/// The token's budget, shared by all connections.
pub struct Quota {
    limits: Limits,
    state: Mutex<State>,
}

struct State {
    /// Start of the current byte window; `None` before the first upload.
    window: Option<Instant>,
    /// Bytes charged in it, reservations of uploads in progress included.
    used: u64,
    /// Requests that may start now (fractions accumulate).
    tokens: f64,
    refilled: Instant,
}

impl Quota {
    pub fn new(limits: Limits) -> Quota {
        Quota::new_at(limits, Instant::now())
    }

    fn new_at(limits: Limits, now: Instant) -> Quota {
        Quota {
            limits,
            state: Mutex::new(State {
                window: None,
                used: 0,
                tokens: f64::from(limits.requests_per_minute),
                refilled: now,
            }),
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock only means a panic while it was held; the numbers are whole.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts one upload request.
    pub fn request(&self) -> Result<(), Over> {
        self.request_at(Instant::now())
    }

    fn request_at(&self, now: Instant) -> Result<(), Over> {
        let mut s = self.lock();
        let per_minute = f64::from(self.limits.requests_per_minute);
        let rate = per_minute / MINUTE.as_secs_f64();
        let elapsed = now.saturating_duration_since(s.refilled).as_secs_f64();
        s.tokens = (s.tokens + elapsed * rate).min(per_minute);
        s.refilled = now;
        if s.tokens >= 1.0 {
            s.tokens -= 1.0;
            return Ok(());
        }
        let wait = (1.0 - s.tokens) / rate;
        Err(Over::Requests(Duration::from_secs_f64(wait)))
    }

    /// Reserves `bytes` of the hour's budget for an object upload; give back what was
    /// not stored with [`Quota::settle`].
    pub fn reserve(&self, bytes: u64) -> Result<(), Over> {
        self.reserve_at(bytes, Instant::now())
    }

    fn reserve_at(&self, bytes: u64, now: Instant) -> Result<(), Over> {
        if bytes > self.limits.bytes_per_hour {
            return Err(Over::Never);
        }
        let mut s = self.lock();
        let start = match s.window {
            Some(start) if now.saturating_duration_since(start) < HOUR => start,
            _ => {
                s.used = 0;
                s.window = Some(now);
                now
            }
        };
        if s.used.saturating_add(bytes) > self.limits.bytes_per_hour {
            return Err(Over::Bytes(
                (start + HOUR)
                    .saturating_duration_since(now)
                    .max(Duration::from_secs(1)),
            ));
        }
        s.used += bytes;
        Ok(())
    }

    /// Settles a reservation of `reserved` bytes of which `stored` were stored.
    pub fn settle(&self, reserved: u64, stored: u64) {
        let mut s = self.lock();
        s.used = s.used.saturating_sub(reserved.saturating_sub(stored));
    }
}

/// A `Retry-After` value: whole seconds, rounded up.
pub fn retry_after_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_limited_per_minute_and_refill_evenly() {
        let t0 = Instant::now();
        let q = Quota::new_at(
            Limits {
                bytes_per_hour: 1,
                requests_per_minute: 3,
            },
            t0,
        );
        for _ in 0..3 {
            q.request_at(t0).unwrap();
        }
        // One request every 20 s comes back.
        assert_eq!(
            q.request_at(t0),
            Err(Over::Requests(Duration::from_secs(20)))
        );
        assert_eq!(
            q.request_at(t0 + Duration::from_secs(5)),
            Err(Over::Requests(Duration::from_secs(15)))
        );
        q.request_at(t0 + Duration::from_secs(20)).unwrap();
        assert!(q.request_at(t0 + Duration::from_secs(20)).is_err());
        // Idle time does not bank more than a minute's worth.
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..3 {
            q.request_at(later).unwrap();
        }
        assert!(q.request_at(later).is_err());
    }

    #[test]
    fn bytes_are_limited_per_hour_and_unstored_bytes_are_given_back() {
        let t0 = Instant::now();
        let q = Quota::new_at(
            Limits {
                bytes_per_hour: 100,
                requests_per_minute: 1,
            },
            t0,
        );
        assert_eq!(q.reserve_at(101, t0), Err(Over::Never));
        q.reserve_at(60, t0).unwrap();
        let ten = t0 + Duration::from_secs(600);
        assert_eq!(
            q.reserve_at(50, ten),
            Err(Over::Bytes(Duration::from_secs(3000))),
            "room again when the hour that began at the first upload ends"
        );
        // An upload that stored nothing (refused, broken off) costs nothing.
        q.settle(60, 0);
        q.reserve_at(50, ten).unwrap();
        q.reserve_at(50, ten).unwrap();
        assert!(q.reserve_at(1, ten).is_err());
        // A new hour, a new budget.
        q.reserve_at(100, t0 + HOUR).unwrap();
        assert_eq!(retry_after_secs(Duration::from_millis(1500)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(3)), 3);
    }
}

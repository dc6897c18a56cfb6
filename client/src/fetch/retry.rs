//! When and how long to wait before repeating a failed request.
//!
//! Every request the agent makes is a `GET`, which HTTP defines as idempotent: sending
//! it twice has the effect of sending it once, so a request that failed for a reason
//! that may pass (a connection reset, for example a pooled keep-alive connection the
//! server closed at the moment it was reused; a timeout; `429 Too Many Requests`; a
//! `5xx`) is sent again. Failures that will not pass (`404`, a rejected certificate, a
//! body that does not match its name) are not retried. Nor is the low-speed limit
//! ([`speed`](super::speed)): it is the defence against slow retrieval, so it ends the
//! update at once, and the next update continues from the bytes kept.
//!
//! The delay is exponential backoff with *full jitter*: before retry `n` the agent
//! waits a uniformly random time in `[0, min(MAX_DELAY, BASE * 2^(n-1))]`, so a fleet
//! of agents that failed together does not come back together. A server's
//! `Retry-After` (seconds or an HTTP date) replaces the random delay when it fits the
//! bounds; one that asks for more than the bounds allow ends the retries at once (the
//! error says how long the server asked for). Bounds: at most [`Policy::attempts`]
//! attempts in a row without progress, and at most [`Policy::budget`] of waiting in
//! all. The agent's servers ([`mirrors`](super::mirrors)) send a request at most twice
//! to one server before trying the next, and go around all of them again with this
//! backoff until `give_up_after`, so a dead network fails an update in bounded time
//! instead of never. `base` and `max_delay` are the config keys `retry_base` and
//! `retry_max_delay`.

use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, SystemTime};

/// The retry bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Attempts in a row (the first one included) before giving up.
    pub attempts: u32,
    /// The ceiling of the first random delay; doubled for every further retry.
    pub base: Duration,
    /// The largest single delay (random or from `Retry-After`).
    pub max_delay: Duration,
    /// The most time spent waiting between attempts, over all retries of one request.
    pub budget: Duration,
}

impl Policy {
    pub const DEFAULT: Policy = Policy {
        attempts: 6,
        base: Duration::from_millis(250),
        max_delay: Duration::from_secs(20),
        budget: Duration::from_secs(60),
    };

    /// The ceiling of the random delay before retry `retry` (1 for the first retry).
    pub fn ceiling(&self, retry: u32) -> Duration {
        let factor = 1u32 << retry.saturating_sub(1).min(20);
        self.base.saturating_mul(factor).min(self.max_delay)
    }

    /// How long to wait before the next attempt, after `failures` attempts in a row
    /// failed and `waited` was already spent waiting, or why not to try again.
    /// `retry_after` is the server's `Retry-After`; `random` any random number.
    pub fn next_delay(
        &self,
        failures: u32,
        waited: Duration,
        retry_after: Option<Duration>,
        random: u64,
    ) -> Result<Duration, GiveUp> {
        if failures >= self.attempts {
            return Err(GiveUp::Attempts(failures));
        }
        let left = self.budget.saturating_sub(waited);
        let delay = match retry_after {
            Some(asked) if asked > self.max_delay || asked > left => {
                return Err(GiveUp::RetryAfter(asked));
            }
            Some(asked) => asked,
            None => {
                let ceiling = self.ceiling(failures).as_millis() as u64;
                Duration::from_millis(random % (ceiling + 1))
            }
        };
        if delay > left {
            return Err(GiveUp::Budget(self.budget));
        }
        Ok(delay)
    }
}

impl Default for Policy {
    fn default() -> Self {
        Policy::DEFAULT
    }
}

/// Why a request is not tried again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GiveUp {
    #[error("gave up after {0} attempts")]
    Attempts(u32),
    #[error("the server asked to retry after {}s, longer than ferry waits", .0.as_secs())]
    RetryAfter(Duration),
    #[error("gave up after waiting {}s between attempts", .0.as_secs())]
    Budget(Duration),
}

/// Reads a `Retry-After` value: a number of seconds or an HTTP date (a date in the
/// past means now). `None` when it is neither.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Whether an HTTP status may pass by itself: `408`, `429` and the `5xx` family.
pub fn transient_status(status: u16) -> bool {
    matches!(status, 408 | 429) || (500..600).contains(&status)
}

/// Whether a body that failed with `e` may be fetched again, or continued from the
/// bytes received: the connection broke or the body ended early. Not: too large, a
/// wrong range, a write error, or the low-speed limit (see the module docs).
pub fn body_may_resume(e: &super::FetchError) -> bool {
    use super::FetchError;
    matches!(e, FetchError::Request { .. } | FetchError::Truncated { .. })
}

/// A random number for the jitter. The standard library's hasher keys are random per
/// process and advanced per instance, which is all the randomness jitter needs.
pub fn random() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    );
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Policy = Policy::DEFAULT;

    #[test]
    fn delays_grow_exponentially_with_full_jitter_and_stay_bounded() {
        assert_eq!(P.ceiling(1), Duration::from_millis(250));
        assert_eq!(P.ceiling(2), Duration::from_millis(500));
        assert_eq!(P.ceiling(4), Duration::from_secs(2));
        assert_eq!(P.ceiling(30), P.max_delay, "capped, no overflow");
        for failures in 1..P.attempts {
            let ceiling = P.ceiling(failures);
            for random in [0, 1, 7, 12_345, u64::MAX / 3, u64::MAX] {
                let d = P
                    .next_delay(failures, Duration::ZERO, None, random)
                    .unwrap();
                assert!(d <= ceiling, "{d:?} > {ceiling:?}");
            }
            // Full jitter: the whole range down to zero is used.
            assert_eq!(
                P.next_delay(failures, Duration::ZERO, None, 0).unwrap(),
                Duration::ZERO
            );
            let top = ceiling.as_millis() as u64;
            assert_eq!(
                P.next_delay(failures, Duration::ZERO, None, top).unwrap(),
                ceiling
            );
        }
        // Random numbers differ from call to call.
        let draws: std::collections::HashSet<u64> = (0..16).map(|_| random()).collect();
        assert!(draws.len() > 8, "{draws:?}");
    }

    #[test]
    fn attempts_and_waiting_time_are_bounded() {
        assert_eq!(
            P.next_delay(P.attempts, Duration::ZERO, None, 0),
            Err(GiveUp::Attempts(P.attempts))
        );
        // A delay that would exceed the budget is not taken.
        let waited = P.budget - Duration::from_millis(100);
        assert_eq!(
            P.next_delay(5, waited, None, u64::MAX - 1),
            Err(GiveUp::Budget(P.budget))
        );
        assert!(P.next_delay(5, waited, None, 50).is_ok());
        // The worst case in total: attempts - 1 waits, each within its ceiling.
        let worst: Duration = (1..P.attempts).map(|n| P.ceiling(n)).sum();
        assert!(worst <= P.budget, "{worst:?}");
    }

    #[test]
    fn retry_after_is_honoured_up_to_the_bounds() {
        let ten = Duration::from_secs(10);
        assert_eq!(P.next_delay(1, Duration::ZERO, Some(ten), 0), Ok(ten));
        // Longer than one delay may be, or than the waiting time left: give up now,
        // saying what the server asked for.
        let long = Duration::from_secs(3600);
        assert_eq!(
            P.next_delay(1, Duration::ZERO, Some(long), 0),
            Err(GiveUp::RetryAfter(long))
        );
        assert_eq!(
            P.next_delay(1, Duration::from_secs(55), Some(ten), 0),
            Err(GiveUp::RetryAfter(ten))
        );
        assert!(
            GiveUp::RetryAfter(long)
                .to_string()
                .contains("retry after 3600s")
        );
    }

    #[test]
    fn retry_after_parses_seconds_and_http_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::from_secs(0)));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO),
            "a date in the past means now"
        );
        for bad in ["", "-5", "soon", "1.5"] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
    }

    #[test]
    fn only_statuses_that_may_pass_are_retried() {
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(transient_status(s), "{s}");
        }
        for s in [200, 206, 304, 400, 401, 403, 404, 409, 413, 416] {
            assert!(!transient_status(s), "{s}");
        }
    }
}

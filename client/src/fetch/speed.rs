//! Low-speed limits: the defence against slow retrieval (TUF's "slow retrieval
//! attack", curl's `--speed-limit`/`--speed-time`).
//!
//! A fixed total timeout cannot tell a large download on a slow link from a server
//! feeding one byte a minute, and a per-read timeout is reset by every trickle of bytes.
//! Instead a transfer fails when fewer than [`LowSpeed::limit`] bytes per second
//! arrived over the last [`LowSpeed::time`]. [`Monitor`] keeps that sliding window; it
//! is pure (the caller passes the clock), so the rules are tested without sleeping.
//!
//! The window holds at most [`SLOTS`] + 1 samples: bytes arriving within one slot
//! (`time / SLOTS`) of a sample's first byte are added to it, and a sample leaves the
//! window when its *last* byte is older than `time`. Merged bytes therefore stay in
//! the window up to one slot longer than exactly, erring towards not aborting.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Samples per window; also how often a silent transfer is re-checked.
pub const SLOTS: u32 = 16;
/// Re-check a silent transfer at least this often, even for very long windows.
const MAX_TICK: Duration = Duration::from_secs(1);
/// ... and no more often than this, even for very short ones.
const MIN_TICK: Duration = Duration::from_millis(10);

/// A transfer fails when fewer than `limit` bytes per second arrive over `time`.
/// `limit == 0` or a zero `time` switches the check off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LowSpeed {
    /// Bytes per second.
    pub limit: u64,
    pub time: Duration,
}

impl LowSpeed {
    /// 1024 B/s over 30 s: far below any working link, well above a stalled one.
    pub const DEFAULT: LowSpeed = LowSpeed {
        limit: 1024,
        time: Duration::from_secs(30),
    };

    pub fn enabled(&self) -> bool {
        self.limit > 0 && !self.time.is_zero()
    }

    /// The bytes that must arrive within one window: `limit * time`.
    pub fn required(&self) -> u64 {
        let bytes = u128::from(self.limit).saturating_mul(self.time.as_millis()) / 1000;
        u64::try_from(bytes).unwrap_or(u64::MAX)
    }
}

impl Default for LowSpeed {
    fn default() -> Self {
        LowSpeed::DEFAULT
    }
}

/// The window held fewer bytes than the limit asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TooSlow {
    /// Bytes that arrived within the last `window`.
    pub bytes: u64,
    pub window: Duration,
    /// The limit in bytes per second.
    pub limit: u64,
}

#[derive(Clone, Copy, Debug)]
struct Sample {
    first: Instant,
    last: Instant,
    bytes: u64,
}

/// The sliding window of one transfer.
#[derive(Debug)]
pub struct Monitor {
    policy: LowSpeed,
    started: Instant,
    slot: Duration,
    samples: VecDeque<Sample>,
}

impl Monitor {
    /// Starts watching a transfer at `now` (when its response headers arrived).
    pub fn new(policy: LowSpeed, now: Instant) -> Monitor {
        Monitor {
            policy,
            started: now,
            slot: policy.time / SLOTS,
            samples: VecDeque::with_capacity(SLOTS as usize + 1),
        }
    }

    /// How long to wait for bytes before calling [`Monitor::check`] anyway.
    pub fn tick(&self) -> Duration {
        self.slot.clamp(MIN_TICK, MAX_TICK)
    }

    /// Counts `n` bytes received at `now`.
    pub fn record(&mut self, now: Instant, n: u64) {
        match self.samples.back_mut() {
            Some(s) if now.saturating_duration_since(s.first) < self.slot => {
                s.last = s.last.max(now);
                s.bytes = s.bytes.saturating_add(n);
            }
            _ => self.samples.push_back(Sample {
                first: now,
                last: now,
                bytes: n,
            }),
        }
        self.expire(now);
    }

    /// Fails once a whole window has passed since the start and the last window held
    /// fewer than `limit * time` bytes.
    pub fn check(&mut self, now: Instant) -> Result<(), TooSlow> {
        if !self.policy.enabled() {
            return Ok(());
        }
        self.expire(now);
        if now.saturating_duration_since(self.started) < self.policy.time {
            return Ok(());
        }
        let bytes = self.samples.iter().map(|s| s.bytes).sum::<u64>();
        if bytes < self.policy.required() {
            return Err(TooSlow {
                bytes,
                window: self.policy.time,
                limit: self.policy.limit,
            });
        }
        Ok(())
    }

    /// Drops samples whose last byte left the window `(now - time, now]`.
    fn expire(&mut self, now: Instant) {
        while let Some(s) = self.samples.front() {
            if now.saturating_duration_since(s.last) >= self.policy.time {
                self.samples.pop_front();
            } else {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: LowSpeed = LowSpeed {
        limit: 100,
        time: Duration::from_secs(10),
    };

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn nothing_fails_before_a_whole_window() {
        let t0 = Instant::now();
        let mut m = Monitor::new(POLICY, t0);
        assert!(m.check(at(t0, 9_999)).is_ok());
        let e = m.check(at(t0, 10_000)).unwrap_err();
        assert_eq!(
            e,
            TooSlow {
                bytes: 0,
                window: Duration::from_secs(10),
                limit: 100
            }
        );
    }

    #[test]
    fn exactly_the_limit_passes_one_byte_less_fails() {
        let t0 = Instant::now();
        let mut m = Monitor::new(POLICY, t0);
        m.record(at(t0, 5_000), 1_000);
        assert!(m.check(at(t0, 10_000)).is_ok());
        let mut m = Monitor::new(POLICY, t0);
        m.record(at(t0, 5_000), 999);
        assert_eq!(m.check(at(t0, 10_000)).unwrap_err().bytes, 999);
    }

    #[test]
    fn a_stall_after_fast_bytes_fails_one_window_later() {
        let t0 = Instant::now();
        let mut m = Monitor::new(POLICY, t0);
        // 1 MB in the first second, then silence.
        for ms in (0..1_000).step_by(10) {
            m.record(at(t0, ms), 10_000);
        }
        assert!(m.check(at(t0, 10_000)).is_ok());
        // The last bytes (at 990 ms, merged into the sample begun at 630 ms) leave
        // the window at 10.99 s.
        assert!(m.check(at(t0, 10_989)).is_ok());
        let e = m.check(at(t0, 10_990)).unwrap_err();
        assert_eq!(e.bytes, 0);
    }

    #[test]
    fn a_steady_trickle_below_the_limit_fails_and_above_passes() {
        let t0 = Instant::now();
        // 90 B/s against a 100 B/s limit.
        let mut m = Monitor::new(POLICY, t0);
        let mut failed = None;
        for s in 1..=60 {
            m.record(at(t0, s * 1000), 90);
            if let Err(e) = m.check(at(t0, s * 1000)) {
                failed = Some((s, e.bytes));
                break;
            }
        }
        assert_eq!(failed, Some((10, 900)));
        // 110 B/s: never fails, however long it runs.
        let mut m = Monitor::new(POLICY, t0);
        for s in 1..=600 {
            m.record(at(t0, s * 1000), 110);
            m.check(at(t0, s * 1000) + Duration::from_millis(999))
                .unwrap();
        }
        assert!(m.samples.len() <= SLOTS as usize + 1);
    }

    #[test]
    fn bursts_are_averaged_over_the_window() {
        let t0 = Instant::now();
        let mut m = Monitor::new(POLICY, t0);
        // 1000 bytes every 9 s: 111 B/s on average, silent for 9 s at a time.
        for k in 0..20 {
            let t = at(t0, k * 9_000);
            m.record(t, 1_000);
            m.check(t + Duration::from_millis(8_999)).unwrap();
        }
    }

    #[test]
    fn off_never_fails() {
        let t0 = Instant::now();
        for policy in [
            LowSpeed { limit: 0, ..POLICY },
            LowSpeed {
                time: Duration::ZERO,
                ..POLICY
            },
        ] {
            let mut m = Monitor::new(policy, t0);
            assert!(m.check(at(t0, 1_000_000)).is_ok());
            assert!(m.tick() >= MIN_TICK);
        }
        assert_eq!(LowSpeed::DEFAULT.required(), 30 * 1024);
        assert_eq!(
            LowSpeed {
                limit: u64::MAX,
                time: Duration::from_secs(u64::MAX / 1000)
            }
            .required(),
            u64::MAX
        );
    }
}

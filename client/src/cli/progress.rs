//! The download progress bar of `ferry update` (and rollbacks that download): bytes
//! against the plan's total, rate and time left, on stderr, only on a terminal and
//! never with `--json`, `--quiet` or in the agent's log (indicatif draws nothing when
//! stderr is not a terminal). It reads the transport's byte counter, so it shows what
//! arrived, retries included, and nothing else has to report to it.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use super::report::Out;
use crate::fetch::Counters;

/// How often the bar reads the counter.
const TICK: Duration = Duration::from_millis(100);
/// The rate is what arrived over this much of the recent past: a stalled transfer
/// shows as stalled within it, instead of keeping the rate of its last burst.
const WINDOW: Duration = Duration::from_secs(5);

/// The bar on screen, if any: log lines are written around it (see [`LogWriter`]).
static ACTIVE: Mutex<Option<ProgressBar>> = Mutex::new(None);

pub struct Download {
    bar: ProgressBar,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Download {
    /// A bar for `total` bytes still to come through `counters`; `None` when `out`
    /// wants none or there is nothing to download.
    pub fn start(counters: &Arc<Counters>, total: u64, out: Out) -> Option<Download> {
        if !out.bars() || total == 0 {
            return None;
        }
        let bar = ProgressBar::new(total);
        if bar.is_hidden() {
            return None;
        }
        // No colour codes: the template has none, whatever NO_COLOR says. Decimal
        // units, as the plan line and the summary print them; the rate and time left
        // are this module's own (see `Rate`).
        let style = ProgressStyle::with_template(
            "downloading [{bar:30}] {decimal_bytes}/{decimal_total_bytes} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        bar.set_style(style);
        let base = counters.bytes();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (bar, stop, counters) = (bar.clone(), stop.clone(), counters.clone());
            std::thread::spawn(move || {
                let mut rate = Rate::default();
                while !stop.load(Ordering::Relaxed) {
                    let done = counters.bytes().saturating_sub(base).min(total);
                    bar.set_position(done);
                    bar.set_message(rate.update(Instant::now(), done, total));
                    std::thread::sleep(TICK);
                }
            })
        };
        *ACTIVE.lock().unwrap_or_else(|e| e.into_inner()) = Some(bar.clone());
        Some(Download {
            bar,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Download {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        *ACTIVE.lock().unwrap_or_else(|e| e.into_inner()) = None;
        // The summary line that follows says what arrived.
        self.bar.finish_and_clear();
    }
}

/// Where log lines go: stderr, around the bar when one is drawn (cleared, the line
/// written, redrawn), so a retry warning during a download never leaves a stale bar
/// above it or glued to it.
#[derive(Clone, Copy, Debug, Default)]
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // tracing's fmt layer hands over one whole event per call.
        let bar = ACTIVE.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match bar {
            Some(bar) => bar.suspend(|| io::stderr().write_all(buf))?,
            None => io::stderr().write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

/// The rate over the last [`WINDOW`] and the time left at that rate.
#[derive(Default)]
struct Rate {
    samples: VecDeque<(Instant, u64)>,
    /// When the byte count last grew.
    moved: Option<(Instant, u64)>,
}

impl Rate {
    fn update(&mut self, now: Instant, done: u64, total: u64) -> String {
        self.samples.push_back((now, done));
        if self.moved.is_none_or(|(_, b)| done > b) {
            self.moved = Some((now, done));
        }
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > WINDOW)
        {
            self.samples.pop_front();
        }
        let (t0, b0) = self.samples[0];
        let secs = now.duration_since(t0).as_secs_f64();
        if secs < 0.5 {
            return String::new();
        }
        let per_sec = (done - b0) as f64 / secs;
        if per_sec < 1.0 {
            let since = self.moved.map_or(now, |(t, _)| t);
            return format!("stalled for {}s", now.duration_since(since).as_secs());
        }
        let left = (total - done) as f64 / per_sec;
        format!(
            "{}/s, {} left",
            super::report::bytes(per_sec as u64),
            clock(left as u64)
        )
    }
}

/// `42s`, `3m05s`, `1h02m`.
fn clock(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, secs / 60 % 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_is_the_recent_one_and_a_stall_says_so() {
        let start = Instant::now();
        let mut r = Rate::default();
        let at = |ms: u64| start + Duration::from_millis(ms);
        assert_eq!(r.update(at(0), 0, 10_000_000), "");
        // 1 MB/s for two seconds: 8 s left.
        assert_eq!(
            r.update(at(2000), 2_000_000, 10_000_000),
            "1.0 MB/s, 8s left"
        );
        // Then nothing for six seconds: the window only holds the stall.
        for ms in (2100..=8000).step_by(100) {
            r.update(at(ms), 2_000_000, 10_000_000);
        }
        assert_eq!(r.update(at(8100), 2_000_000, 10_000_000), "stalled for 6s");
        assert_eq!(clock(185), "3m05s");
        assert_eq!(clock(3720), "1h02m");
    }
}

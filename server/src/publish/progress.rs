//! The progress display of `ferry-server publish`, on stderr, only on a terminal and
//! never with `--json`: a file or pipe gets the summary on stdout and nothing else.
//!
//! The publish steps only bump counters ([`Progress`], atomics: a chunk costs two
//! relaxed additions); a thread of [`Display`] reads them ten times a second and draws
//! one line with indicatif, whose own rate limit bounds the terminal writes. So a
//! publish with no terminal pays nothing but those additions, and one with a terminal
//! is not slowed by drawing.
//!
//! The stages, in the order a publish goes through them:
//!
//! - *fetching* (a bucket or `--to`): the bytes of the releases this one builds on;
//! - *chunking*: files done of all, bytes chunked of all, bytes deduplicated (chunks
//!   the previous release or an earlier file already has), throughput and time left;
//! - *diffs*: the diff objects made so far (base and size), and the one in progress;
//! - *uploading* (a bucket or `--to`): bytes sent of all, rate and time left.
//!
//! Rates are over the last five seconds, as `ferry update` shows its own:
//! a stalled upload shows as stalled instead of keeping the rate of its last burst.
//! This module is the server's own copy of that idea; server and client share no code
//! but `ferry-format`, and a display has no business in the format crate.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use indicatif::{DecimalBytes, ProgressBar, ProgressStyle};

/// How often the display reads the counters.
const TICK: Duration = Duration::from_millis(100);
/// Rates are what moved over this much of the recent past.
const WINDOW: Duration = Duration::from_secs(5);
/// Width of the bar, in cells: with the counters beside it the line stays within a
/// 120-column terminal for sizes up to gigabytes.
const BAR: usize = 24;

/// What a publish is doing now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Stage {
    /// Checking keys, reading heads, listing the source: short, nothing to show.
    Idle = 0,
    Fetching = 1,
    Chunking = 2,
    Archive = 3,
    Diffs = 4,
    Uploading = 5,
    /// Compressing the diff from nothing (FORMAT.md §3.9).
    Fresh = 6,
}

impl Stage {
    fn from_u8(v: u8) -> Stage {
        match v {
            1 => Stage::Fetching,
            2 => Stage::Chunking,
            3 => Stage::Archive,
            4 => Stage::Diffs,
            5 => Stage::Uploading,
            6 => Stage::Fresh,
            _ => Stage::Idle,
        }
    }
}

/// The counters of one publish, as its steps report them. Cheap to clone (a shared
/// handle); the default reports to nobody, for publishes without a display (tests,
/// library callers, `--json`, no terminal).
#[derive(Clone, Debug, Default)]
pub struct Progress(Option<Arc<Counters>>);

#[derive(Debug, Default)]
struct Counters {
    stage: AtomicU8,
    /// Bumped by every stage start, so the display restarts its rate even when a
    /// stage runs again (a bucket publish overtaken by another writer runs again).
    epoch: AtomicU64,
    files_total: AtomicU64,
    files_done: AtomicU64,
    bytes_total: AtomicU64,
    bytes_chunked: AtomicU64,
    bytes_deduplicated: AtomicU64,
    fetched: AtomicU64,
    upload_total: AtomicU64,
    uploaded: AtomicU64,
    /// Per diff, not per byte: a mutex costs nothing at that rate.
    diffs: Mutex<Diffs>,
}

#[derive(Debug, Default)]
struct Diffs {
    /// Bases with an archive to diff from, in the order they are made.
    bases: usize,
    /// Bases done: version and the diff's size (`None`: no diff worth having).
    done: Vec<(String, Option<u64>)>,
    /// The diff being made: its base, the base's bytes, and since when.
    current: Option<(String, u64, Instant)>,
}

impl Progress {
    fn counters(&self) -> Option<&Counters> {
        self.0.as_deref()
    }

    fn begin(&self, stage: Stage) -> Option<&Counters> {
        let c = self.counters()?;
        c.stage.store(stage as u8, Ordering::Relaxed);
        c.epoch.fetch_add(1, Ordering::Relaxed);
        Some(c)
    }

    /// Downloading what the publish builds on (bucket or `--to`).
    pub fn fetching(&self) {
        if let Some(c) = self.begin(Stage::Fetching) {
            c.fetched.store(0, Ordering::Relaxed);
        }
    }

    /// `n` bytes of a download arrived.
    pub fn fetched(&self, n: u64) {
        if let Some(c) = self.counters() {
            c.fetched.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Chunking starts: `files` regular files of `bytes` bytes in all.
    pub fn chunking(&self, files: u64, bytes: u64) {
        if let Some(c) = self.counters() {
            c.files_total.store(files, Ordering::Relaxed);
            c.bytes_total.store(bytes, Ordering::Relaxed);
            c.files_done.store(0, Ordering::Relaxed);
            c.bytes_chunked.store(0, Ordering::Relaxed);
            c.bytes_deduplicated.store(0, Ordering::Relaxed);
            self.begin(Stage::Chunking);
        }
    }

    /// A chunk of `len` bytes is done: `deduplicated` (the release already has it,
    /// carried from the previous release or seen earlier in this one), or compressed.
    pub fn chunk(&self, len: u64, deduplicated: bool) {
        if let Some(c) = self.counters() {
            c.bytes_chunked.fetch_add(len, Ordering::Relaxed);
            if deduplicated {
                c.bytes_deduplicated.fetch_add(len, Ordering::Relaxed);
            }
        }
    }

    /// `n` more files are chunked: every chunk of theirs deduplicated or compressed.
    pub fn files_done(&self, n: u64) {
        if let Some(c) = self.counters() {
            c.files_done.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Counters that count without a display, for tests of the steps that report.
    #[cfg(test)]
    pub(crate) fn counting() -> Progress {
        Progress(Some(Arc::new(Counters::default())))
    }

    /// Files done, bytes chunked and bytes deduplicated so far.
    #[cfg(test)]
    pub(crate) fn chunked(&self) -> (u64, u64, u64) {
        let c = self.counters().expect("Progress::counting");
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        (
            get(&c.files_done),
            get(&c.bytes_chunked),
            get(&c.bytes_deduplicated),
        )
    }

    /// The archive is being written.
    pub fn archive(&self) {
        self.begin(Stage::Archive);
    }

    /// The diff from nothing is being made (FORMAT.md §3.9).
    pub fn fresh(&self) {
        self.begin(Stage::Fresh);
    }

    /// Diffs are made from `bases` releases.
    pub fn diffs(&self, bases: usize) {
        if let Some(c) = self.begin(Stage::Diffs) {
            *lock(&c.diffs) = Diffs {
                bases,
                ..Diffs::default()
            };
        }
    }

    /// The diff from `base` (`base_bytes` of files) is being made.
    pub fn diff_started(&self, base: &str, base_bytes: u64) {
        if let Some(c) = self.counters() {
            lock(&c.diffs).current = Some((base.to_string(), base_bytes, Instant::now()));
        }
    }

    /// The diff from `base` is done: `size` bytes, or `None` when there is none.
    pub fn diff_done(&self, base: &str, size: Option<u64>) {
        if let Some(c) = self.counters() {
            let mut d = lock(&c.diffs);
            d.current = None;
            d.done.push((base.to_string(), size));
        }
    }

    /// Uploading starts: `bytes` to send at most (objects the far side already has
    /// are taken off with [`Progress::upload_skipped`]).
    pub fn uploading(&self, bytes: u64) {
        if let Some(c) = self.counters() {
            c.upload_total.store(bytes, Ordering::Relaxed);
            c.uploaded.store(0, Ordering::Relaxed);
            self.begin(Stage::Uploading);
        }
    }

    /// `n` bytes went out.
    pub fn uploaded(&self, n: u64) {
        if let Some(c) = self.counters() {
            c.uploaded.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// An attempt that sent `n` bytes failed and will be made again: they count
    /// again when they are sent again, so the bar and the time left stay true.
    pub fn upload_failed(&self, n: u64) {
        if let Some(c) = self.counters() {
            // Never below zero, even if a report raced the reset of `uploading`.
            let _ = c
                .uploaded
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                    Some(v.saturating_sub(n))
                });
        }
    }

    /// An object of `n` bytes need not be sent: the far side has it.
    pub fn upload_skipped(&self, n: u64) {
        if let Some(c) = self.counters() {
            let _ = c
                .upload_total
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                    Some(v.saturating_sub(n))
                });
        }
    }
}

fn lock(m: &Mutex<Diffs>) -> std::sync::MutexGuard<'_, Diffs> {
    // A panic while holding it leaves counters for a display, never wrong data.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The bar of the running publish, if one is drawn: log lines go around it (see
/// [`LogWriter`]). Global because stderr is.
static ACTIVE: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// The display of one publish; cleared when dropped, so that what follows (the
/// summary, or the error) starts on a clean line.
pub struct Display {
    progress: Progress,
    drawn: Option<Drawn>,
}

struct Drawn {
    bar: ProgressBar,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Display {
    /// Draws on stderr when `wanted` and stderr is a terminal; otherwise draws
    /// nothing and its [`Progress`] reports to nobody.
    pub fn start(wanted: bool) -> Display {
        let none = Display {
            progress: Progress::default(),
            drawn: None,
        };
        if !wanted {
            return none;
        }
        // indicatif draws to stderr only when it is a terminal.
        let bar = ProgressBar::new(0);
        if bar.is_hidden() {
            return none;
        }
        let counters = Arc::new(Counters::default());
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (bar, stop, counters) = (bar.clone(), stop.clone(), counters.clone());
            std::thread::Builder::new()
                .name("publish-progress".into())
                .spawn(move || draw(&bar, &counters, &stop))
        };
        // Without its thread the display would stay blank: publish without one.
        let Ok(thread) = thread else {
            return none;
        };
        *ACTIVE.lock().unwrap_or_else(|e| e.into_inner()) = Some(bar.clone());
        Display {
            progress: Progress(Some(counters)),
            drawn: Some(Drawn {
                bar,
                stop,
                thread: Some(thread),
            }),
        }
    }

    /// The counters to hand to the publish steps.
    pub fn progress(&self) -> Progress {
        self.progress.clone()
    }
}

impl Drop for Display {
    fn drop(&mut self) {
        let Some(d) = &mut self.drawn else {
            return;
        };
        *ACTIVE.lock().unwrap_or_else(|e| e.into_inner()) = None;
        d.stop.store(true, Ordering::Relaxed);
        if let Some(t) = d.thread.take() {
            let _ = t.join();
        }
        // The summary that follows says what was published.
        d.bar.finish_and_clear();
    }
}

/// The display thread: one line for the current stage, redrawn every [`TICK`].
fn draw(bar: &ProgressBar, c: &Counters, stop: &AtomicBool) {
    // No colour codes in any template, whatever NO_COLOR says.
    let style = |template: &str| {
        ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ")
    };
    let plain = style("{msg}");
    let chunking = style(&format!("chunking [{{bar:{BAR}}}] {{msg}}"));
    let uploading = style(&format!("uploading [{{bar:{BAR}}}] {{msg}}"));
    let mut shown = (Stage::Idle, u64::MAX);
    let mut rate = Rate::default();
    bar.set_style(plain.clone());
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let stage = Stage::from_u8(c.stage.load(Ordering::Relaxed));
        let epoch = c.epoch.load(Ordering::Relaxed);
        if (stage, epoch) != shown {
            shown = (stage, epoch);
            rate = Rate::default();
            bar.set_style(match stage {
                Stage::Chunking => chunking.clone(),
                Stage::Uploading => uploading.clone(),
                _ => plain.clone(),
            });
        }
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let msg = match stage {
            Stage::Idle => String::new(),
            Stage::Fetching => {
                let done = get(&c.fetched);
                format!(
                    "fetching the releases this one builds on: {}{}",
                    DecimalBytes(done),
                    rate.update(now, done).text(None, done)
                )
            }
            Stage::Chunking => {
                let (total, done) = (get(&c.bytes_total), get(&c.bytes_chunked));
                // A file that grew while it was read must not overflow the bar.
                let total = total.max(done);
                bar.set_length(total);
                bar.set_position(done);
                format!(
                    "{}/{} files, {}/{}, {} deduplicated{}",
                    get(&c.files_done),
                    get(&c.files_total),
                    DecimalBytes(done),
                    DecimalBytes(total),
                    DecimalBytes(get(&c.bytes_deduplicated)),
                    rate.update(now, done).text(Some(total), done)
                )
            }
            Stage::Archive => "writing the archive".to_string(),
            Stage::Fresh => "compressing the release whole for fresh installs".to_string(),
            Stage::Diffs => diff_line(&lock(&c.diffs), now),
            Stage::Uploading => {
                let total = get(&c.upload_total);
                let done = get(&c.uploaded).min(total);
                bar.set_length(total);
                bar.set_position(done);
                format!(
                    "{}/{}{}",
                    DecimalBytes(done),
                    DecimalBytes(total),
                    rate.update(now, done).text(Some(total), done)
                )
            }
        };
        bar.set_message(msg);
        std::thread::sleep(TICK);
    }
}

/// `diffs: from 2.0.0 1.20 MB, from 1.0.0 none; making the one from 0.9.0 (3 of 3,
/// 40.00 MB base), 4s`: a large base is what makes a diff slow.
fn diff_line(d: &Diffs, now: Instant) -> String {
    let mut line = String::from("diffs:");
    for (i, (base, size)) in d.done.iter().enumerate() {
        let sep = if i == 0 { " " } else { ", " };
        let _ = match size {
            Some(n) => write!(line, "{sep}from {base} {}", DecimalBytes(*n)),
            None => write!(line, "{sep}from {base} none"),
        };
    }
    if let Some((base, base_bytes, since)) = &d.current {
        let sep = if d.done.is_empty() { " " } else { "; " };
        let _ = write!(
            line,
            "{sep}making the one from {base} ({} of {}, {} base), {}",
            d.done.len() + 1,
            d.bases,
            DecimalBytes(*base_bytes),
            clock(now.duration_since(*since).as_secs())
        );
    }
    line
}

/// What a rolling window says about a byte count.
enum Speed {
    /// Too early to tell.
    Unknown,
    /// Bytes per second over the window.
    Moving(f64),
    /// Nothing moved over the window, since this many seconds.
    Stalled(u64),
}

impl Speed {
    /// `, 8.40 MB/s, 12s left` (time left only with a `total`), `, stalled for 6s`.
    fn text(&self, total: Option<u64>, done: u64) -> String {
        // All of it counted: what is left is the far side confirming an upload, or
        // the next stage; a rate or a stall would say something untrue.
        if total.is_some_and(|t| done >= t) {
            return String::new();
        }
        match *self {
            Speed::Unknown => String::new(),
            Speed::Stalled(secs) => format!(", stalled for {secs}s"),
            Speed::Moving(per_sec) => {
                let mut s = format!(", {}/s", DecimalBytes(per_sec as u64));
                if let Some(total) = total {
                    // Rounded up: "0s left" is for when nothing is.
                    let left = total.saturating_sub(done) as f64 / per_sec;
                    let _ = write!(s, ", {} left", clock(left.ceil() as u64));
                }
                s
            }
        }
    }
}

/// The rate of a growing byte count over the last [`WINDOW`].
#[derive(Default)]
struct Rate {
    samples: VecDeque<(Instant, u64)>,
    /// When the count last grew.
    moved: Option<(Instant, u64)>,
}

impl Rate {
    fn update(&mut self, now: Instant, done: u64) -> Speed {
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
            return Speed::Unknown;
        }
        let per_sec = done.saturating_sub(b0) as f64 / secs;
        if per_sec < 1.0 {
            let since = self.moved.map_or(now, |(t, _)| t);
            return match now.duration_since(since).as_secs() {
                // Less than a second without progress is no stall worth naming.
                0 => Speed::Unknown,
                secs => Speed::Stalled(secs),
            };
        }
        Speed::Moving(per_sec)
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

/// Where log lines go: stderr, around the progress line when one is drawn (cleared,
/// the line written, redrawn), so a warning is never glued to the bar's text.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_is_the_recent_one_and_a_stall_says_so() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut r = Rate::default();
        let total = Some(10_000_000);
        assert_eq!(r.update(at(0), 0).text(total, 0), "");
        // 1 MB/s for two seconds: 8 s left.
        assert_eq!(
            r.update(at(2000), 2_000_000).text(total, 2_000_000),
            ", 1.00 MB/s, 8s left"
        );
        // Without a total there is no time left to tell.
        assert_eq!(
            r.update(at(2100), 2_100_000).text(None, 2_100_000),
            ", 1.00 MB/s"
        );
        // 7.9 s left shows as 8 s, not 7.
        assert_eq!(
            r.update(at(2100), 2_100_000).text(total, 2_100_000),
            ", 1.00 MB/s, 8s left"
        );
        // Then nothing for six seconds: the window only holds the stall.
        for ms in (2200..=8000).step_by(100) {
            r.update(at(ms), 2_100_000);
        }
        assert_eq!(
            r.update(at(8100), 2_100_000).text(total, 2_100_000),
            ", stalled for 6s"
        );
        // Everything counted: no rate, no stall, no time left.
        assert_eq!(
            r.update(at(8200), 2_100_000)
                .text(Some(2_100_000), 2_100_000),
            ""
        );
        assert_eq!(clock(185), "3m05s");
        assert_eq!(clock(3720), "1h02m");
    }

    #[test]
    fn the_diff_line_names_each_base_and_the_one_in_progress() {
        let now = Instant::now();
        let d = Diffs {
            bases: 3,
            done: vec![("2.0.0".into(), Some(1_200_000)), ("1.0.0".into(), None)],
            current: Some(("0.9.0".into(), 40_000_000, now - Duration::from_secs(4))),
        };
        assert_eq!(
            diff_line(&d, now),
            "diffs: from 2.0.0 1.20 MB, from 1.0.0 none; \
             making the one from 0.9.0 (3 of 3, 40.00 MB base), 4s"
        );
        let first = Diffs {
            bases: 1,
            done: vec![],
            current: Some(("1.0.0".into(), 1500, now)),
        };
        assert_eq!(
            diff_line(&first, now),
            "diffs: making the one from 1.0.0 (1 of 1, 1.50 kB base), 0s"
        );
    }

    #[test]
    fn a_progress_without_a_display_counts_nothing_and_costs_nothing() {
        let p = Progress::default();
        p.chunking(3, 100);
        p.chunk(10, true);
        p.uploading(5);
        p.upload_skipped(10);
        assert!(p.counters().is_none());
        // Display::start(false) never draws, terminal or not.
        let d = Display::start(false);
        assert!(d.drawn.is_none() && d.progress().counters().is_none());
    }

    #[test]
    fn uploads_skipped_and_retried_keep_the_counts_true() {
        let p = Progress::counting();
        p.uploading(300);
        p.upload_skipped(100);
        p.uploaded(150);
        p.upload_failed(150);
        p.uploaded(200);
        let c = p.counters().unwrap();
        assert_eq!(c.upload_total.load(Ordering::Relaxed), 200);
        assert_eq!(c.uploaded.load(Ordering::Relaxed), 200);
        assert_eq!(
            Stage::from_u8(c.stage.load(Ordering::Relaxed)),
            Stage::Uploading
        );
    }
}

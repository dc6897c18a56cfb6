//! `ferry agent`: checks the channel every `interval` (± `jitter`) and updates inside
//! the update windows, pre-staging outside them; `--once` does one check and exits,
//! for cron and tests.
//!
//! Between checks the agent holds nothing: the root's lock, the connection and its
//! runtime are released, so a person's `ferry rollback` or `status` never waits for a
//! sleeping agent, and the process sleeps in one `nanosleep` with no CPU use. Each
//! check re-reads config.toml, so an edit takes effect at the next check. A check
//! that fails (the server unreachable, a head that does not verify) keeps the active
//! release and waits with exponential backoff and full jitter, capped by the
//! interval, so an offline agent neither spins nor hammers a server that comes back.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;

use super::AgentArgs;
use super::fleet::{self, Reporter};
use super::report::Out;
use super::root::Root;
use super::update::{self, Attempt, Mode, Step};
use crate::agent::window::Schedule;
use crate::install::agent_id;
use crate::install::lock::LockMode;

/// The first delay after a failed check; doubled per failure in a row, up to the interval.
const FAILURE_BASE: Duration = Duration::from_secs(5);

pub fn run(args: &AgentArgs) -> Result<()> {
    let mut failures = 0u32;
    let mut reporter = Reporter::default();
    let own = std::env::current_exe().and_then(|e| e.canonicalize()).ok();
    loop {
        let (result, wait) = check(args, &mut failures, &mut reporter);
        if args.once {
            reporter.flush(fleet::ONCE_BUDGET);
            return result;
        }
        reporter.flush(fleet::FLUSH_BUDGET);
        if let Some(now) = own.as_deref().and_then(|own| replaced(&args.root, own)) {
            // The service manager starts the new program (Restart=always in
            // contrib/ferry-self.service); this one would keep running the old file.
            tracing::info!(
                "this agent's own release was replaced ({} is now {}): exiting so that the service manager starts the new one",
                own.as_deref()
                    .map_or(String::new(), |p| p.display().to_string()),
                now.display()
            );
            return Ok(());
        }
        match &result {
            Err(e) if crate::fetch::is_offline(e) => tracing::warn!(
                "offline: no server reachable; keeping the active release, next try in {}s",
                wait.as_secs()
            ),
            Err(e) => tracing::warn!("check failed: {e:#}; next try in {}s", wait.as_secs()),
            Ok(()) => {}
        }
        // An update's decoder threads leave freed buffers in their malloc arenas: an
        // agent idle until the next check gives them back.
        release_free_memory();
        // Heartbeats fall due while it waits for the next check.
        reporter.sleep(wait);
    }
}

/// Returns the allocator's free memory to the system (glibc keeps it per arena).
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    #[allow(unsafe_code)]
    unsafe {
        libc::malloc_trim(0);
    }
}

/// When this agent runs from a release of the root it updates (ferry updating itself
/// from its own channel) and `current` now holds another copy of its executable: that
/// copy. `own` is the canonical path of the running executable.
fn replaced(root: &Path, own: &Path) -> Option<PathBuf> {
    let versions = root.join("versions").canonicalize().ok()?;
    let inside = own.strip_prefix(&versions).ok()?;
    // versions/<folder>/<path in the release>
    let in_release: PathBuf = inside.components().skip(1).collect();
    let now = root.join("current").join(in_release).canonicalize().ok()?;
    (now != own).then_some(now)
}

/// One check: the result, and how long to sleep before the next.
fn check(args: &AgentArgs, failures: &mut u32, reporter: &mut Reporter) -> (Result<()>, Duration) {
    let mut root = match Root::open(&args.root, LockMode::Exclusive, &args.lock) {
        Ok(r) => r,
        Err(e) => {
            *failures += 1;
            return (
                Err(e),
                backoff(*failures, args.interval.unwrap_or(FAILURE_BASE * 12)),
            );
        }
    };
    let interval = args.interval.unwrap_or_else(|| root.config.interval());
    let schedule = match Schedule::parse(&root.config.windows, root.config.timezone.as_deref()) {
        Ok(s) => s,
        Err(e) => return (Err(e.into()), interval),
    };
    let reports = reporter.prepare(&root);
    let progress = |state, target: &str| reporter.progress(state, target);
    let mode = Mode {
        force: false,
        schedule: (!root.config.windows.is_empty()).then_some(&schedule),
        prestage: root.config.prestage(),
        progress: reports.then_some(&progress),
        plan: None,
    };
    let a = update::attempt(&mut root, &mode, Out::log());
    log_check(&root, &a);
    reporter.checked(&root, &a);
    let mut wait = jittered(interval, root.config.jitter());
    let result = match a.result {
        Ok(o) => {
            *failures = 0;
            if matches!(o.step, Step::Staged | Step::Waiting)
                && let Some(open) = schedule.until_open(jiff::Timestamp::now())
            {
                // Wake when the window opens rather than up to an interval later;
                // the random second spreads a fleet's switches a little.
                wait = wait.min(open + Duration::from_secs(1 + random() % 30));
            }
            Ok(())
        }
        Err(e) => {
            *failures += 1;
            wait = backoff(*failures, interval);
            Err(e)
        }
    };
    (result, wait)
}

/// One event per check with everything an operator filters on.
fn log_check(root: &Root, a: &Attempt) {
    let id = agent_id::load_or_create(&root.layout.agent_id())
        .map(|id| agent_id::hex(&id))
        .unwrap_or_default();
    let channel = root.config.channel.as_str();
    let from = a.from.as_deref().unwrap_or("");
    let target = a.target.as_deref().unwrap_or("");
    let duration_ms = (a.seconds * 1000.0) as u64;
    match &a.result {
        Ok(o) => tracing::info!(
            agent_id = id.as_str(),
            channel,
            from,
            to = o.to.as_deref().unwrap_or(""),
            target,
            bytes = a.bytes,
            bytes_reused = o.bytes_reused,
            requests = a.requests,
            duration_ms,
            result = o.step.name(),
            "check finished"
        ),
        Err(e) => tracing::error!(
            agent_id = id.as_str(),
            channel,
            from,
            to = from,
            target,
            bytes = a.bytes,
            requests = a.requests,
            duration_ms,
            result = "error",
            error = format!("{e:#}").as_str(),
            "check failed"
        ),
    }
}

/// `interval` moved by up to `percent` of it either way, at random.
fn jittered(interval: Duration, percent: u8) -> Duration {
    let span = interval.as_millis() as u64 * u64::from(percent.min(100)) / 100;
    if span == 0 {
        return interval;
    }
    let offset = random() % (2 * span + 1);
    let ms = (interval.as_millis() as u64 + offset).saturating_sub(span);
    Duration::from_millis(ms.max(100))
}

/// Full jitter over an exponential ceiling, capped by `cap`, never below a second.
fn backoff(failures: u32, cap: Duration) -> Duration {
    let ceiling = FAILURE_BASE
        .saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(cap)
        .max(Duration::from_secs(1));
    let ms = random() % (ceiling.as_millis() as u64 + 1);
    Duration::from_millis(ms.max(1000))
}

fn random() -> u64 {
    let mut b = [0u8; 8];
    // Only spreads timing: any value will do if the system source fails.
    let _ = getrandom::fill(&mut b);
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_its_share_of_the_interval() {
        let i = Duration::from_secs(900);
        for _ in 0..1000 {
            let w = jittered(i, 20);
            assert!(
                w >= Duration::from_secs(720) && w <= Duration::from_secs(1080),
                "{w:?}"
            );
        }
        assert_eq!(jittered(i, 0), i);
    }

    #[test]
    fn backoff_grows_and_stays_under_the_interval() {
        let cap = Duration::from_secs(60);
        for n in 1..40 {
            let w = backoff(n, cap);
            assert!(w >= Duration::from_secs(1) && w <= cap, "{n}: {w:?}");
        }
        let first: Vec<Duration> = (0..200).map(|_| backoff(1, cap)).collect();
        assert!(first.iter().all(|w| *w <= FAILURE_BASE));
    }
}

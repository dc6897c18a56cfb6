//! What `ferry agent` reports to the fleet server (client/src/report): one report per
//! check, built from its [`Attempt`] while the root is open and queued at once, then
//! delivered once the root's lock is released; between checks a heartbeat every
//! `heartbeat`, so a silent agent is seen to be offline. All of it only when the root
//! sets `token_file`. Delivery failures are warnings: reporting never changes what a
//! check does or its exit status.

use std::time::{Duration, Instant};

use anyhow::Result;
use ferry_format::report::{self, AgentState, REPORT_SCHEMA, Report, ReportKind};

use super::report::unix_now;
use super::root::Root;
use super::update::{Attempt, Outcome, Step};
use crate::install::agent_id;
use crate::install::choose::INCOMPATIBLE;
use crate::install::config::Config;
use crate::install::layout::Layout;
use crate::install::state::{HeldBack, State};
use crate::report::{Queue, SendError, Sender, send};

/// How long a flush may take after a check of a running agent or a heartbeat.
pub const FLUSH_BUDGET: Duration = Duration::from_secs(10);
/// How long `ferry agent --once` waits for the server before it exits.
pub const ONCE_BUDGET: Duration = Duration::from_secs(5);
/// How long a check waits to tell the server it started downloading or
/// health-checking: the report is worth less than the check it would delay.
pub const PROGRESS_BUDGET: Duration = Duration::from_secs(2);

/// Most bytes of an error text in a report (the format's limit is 4096).
const MAX_ERROR: usize = 2048;

/// The agent's reporting between checks.
#[derive(Default)]
pub struct Reporter {
    /// Where reports go, as the last check's configuration says; `None` when off.
    sink: Option<Sink>,
    /// The last report, repeated (with the state re-read) as the heartbeat.
    last: Option<Report>,
    next_heartbeat: Option<Instant>,
    /// The release active before the last switch this process saw.
    previous: Option<String>,
}

struct Sink {
    layout: Layout,
    config: Config,
}

impl Sink {
    fn queue(&self) -> Queue {
        Queue::new(self.layout.ferry_dir().join("reports"))
    }

    fn sender(&self) -> Result<Sender, SendError> {
        let token = self
            .config
            .token_path(&self.layout.ferry_dir())
            .unwrap_or_default();
        Sender::new(
            self.config.server(),
            &self.config.http_options(),
            token,
            send::credential_path(&self.layout.ferry_dir()),
        )
    }
}

/// The state, result word and error of a check, and the release a refusal is about.
pub fn state_of(
    result: &Result<Outcome>,
    held_back: &[HeldBack],
) -> (AgentState, String, Option<String>, Option<String>) {
    let o = match result {
        Err(e) => {
            return (
                AgentState::Failed,
                "error".into(),
                Some(format!("{e:#}")),
                None,
            );
        }
        Ok(o) => o,
    };
    let state = match &o.step {
        Step::SwitchedBack(reason) => {
            return (
                AgentState::RolledBack,
                o.step.name().into(),
                Some(reason.clone()),
                None,
            );
        }
        Step::Staged | Step::Waiting => AgentState::Staged,
        Step::Installed | Step::UpToDate | Step::NothingEligible | Step::Pinned => AgentState::Idle,
    };
    if state == AgentState::Idle
        && let Some(h) = held_back
            .iter()
            .find(|h| h.reason.starts_with(INCOMPATIBLE))
    {
        return (
            AgentState::Refused,
            o.step.name().into(),
            Some(h.reason.clone()),
            Some(h.version.clone()),
        );
    }
    (state, o.step.name().into(), None, None)
}

/// `text` cut to at most `max` bytes on a character boundary.
fn clip(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// Queues `report` in `sink` under the next sequence number; the report with its id.
fn push(sink: &Sink, mut report: Report) -> Option<Report> {
    report.report_id = format!("{}-0", report.agent_id);
    if let Err(e) = report.validate() {
        tracing::warn!("no report: {e}");
        return None;
    }
    let pushed = sink.queue().push(|seq| {
        let mut r = report.clone();
        r.report_id = format!("{}-{seq}", r.agent_id);
        // Validated above; a report never fails to encode.
        serde_json::to_vec(&r).unwrap_or_default()
    });
    match pushed {
        Ok((seq, _)) => report.report_id = format!("{}-{seq}", report.agent_id),
        Err(e) => tracing::warn!("queueing the report: {e}"),
    }
    Some(report)
}

/// The newest retained release other than the active one.
fn other_retained(state: &State) -> Option<String> {
    let active = state.active.as_deref();
    state
        .retained()
        .into_iter()
        .rev()
        .map(|v| v.to_string())
        .find(|v| Some(v.as_str()) != active)
}

impl Reporter {
    /// After a check, on its still-open root: builds the check's report and queues
    /// it (durably) when the root sets `token_file`.
    pub fn checked(&mut self, root: &Root, a: &Attempt) {
        if !self.prepare(root) {
            return;
        }
        let id = match agent_id::load_or_create(&root.layout.agent_id()) {
            Ok(id) => agent_id::hex(&id),
            Err(e) => {
                tracing::warn!("no report: {e:#}");
                return;
            }
        };
        let state = &root.state;
        let (agent_state, result, error, refused) = state_of(&a.result, &state.held_back);
        let outcome = a.result.as_ref().ok();
        match outcome.map(|o| &o.step) {
            Some(Step::SwitchedBack(_)) => self.previous = a.target.clone(),
            _ if state.active != a.from && a.from.is_some() => self.previous = a.from.clone(),
            _ => {}
        }
        let report = Report {
            schema: REPORT_SCHEMA,
            report_id: String::new(),
            agent_id: id,
            hostname: crate::report::hostname(),
            labels: root.config.label_map(),
            channel: root.config.channel.clone(),
            kind: ReportKind::Attempt,
            state: agent_state,
            time: unix_now(),
            active: state.active.clone(),
            previous: self.previous.clone().or_else(|| other_retained(state)),
            target: refused.or_else(|| a.target.clone()),
            result,
            error: error.map(|e| clip(e, MAX_ERROR)),
            last_check: state.last_check,
            bytes_downloaded: a.bytes,
            bytes_reused: outcome.map_or(0, |o| o.bytes_reused),
            bytes_full: outcome.map_or(0, |o| o.bytes_full),
            requests: a.requests,
            duration_ms: (a.seconds * 1000.0) as u64,
            held_back: state
                .held_back
                .iter()
                .map(|h| report::HeldBack {
                    version: h.version.clone(),
                    reason: clip(h.reason.clone(), MAX_ERROR),
                })
                .collect(),
            ferry_version: env!("CARGO_PKG_VERSION").into(),
        };
        self.queue(report);
    }

    /// Before a check (and by [`Reporter::checked`]): where this root's reports go, as
    /// its configuration says now; false when it sends none.
    pub fn prepare(&mut self, root: &Root) -> bool {
        if root.config.token_file.is_none() {
            self.sink = None;
            self.last = None;
            self.next_heartbeat = None;
            return false;
        }
        let server = root.config.server();
        if !(server.starts_with("http://") || server.starts_with("https://")) {
            // Nowhere to deliver: queueing would only fill the queue.
            tracing::warn!(
                "token_file is set but reports need an http:// or https:// first server, not {server}; no report"
            );
            self.sink = None;
            return false;
        }
        self.sink = Some(Sink {
            layout: root.layout.clone(),
            config: root.config.clone(),
        });
        true
    }

    /// Queues `report` under the next sequence number and remembers it for the
    /// heartbeat.
    fn queue(&mut self, report: Report) {
        let Some(sink) = &self.sink else { return };
        self.next_heartbeat = Some(Instant::now() + sink.config.heartbeat());
        if let Some(report) = push(sink, report) {
            self.last = Some(report);
        }
    }

    /// While a check runs, on entering a long stage for `target` (downloading it,
    /// `pre_switch`, its health check): a heartbeat in that state, sent at once
    /// within [`PROGRESS_BUDGET`], so the fleet view shows who is updating. Left
    /// queued when the server does not answer; the check's own report follows it in
    /// order. Needs [`Reporter::prepare`] before the check.
    pub fn progress(&self, state: AgentState, target: &str) {
        let Some(sink) = &self.sink else {
            return;
        };
        let id = match agent_id::load_or_create(&sink.layout.agent_id()) {
            Ok(id) => agent_id::hex(&id),
            Err(e) => {
                tracing::warn!("no report: {e:#}");
                return;
            }
        };
        // The lock is held by this very check; the state file is replaced atomically.
        let now = State::load(&sink.layout.state()).ok();
        let r = Report {
            schema: REPORT_SCHEMA,
            report_id: String::new(),
            agent_id: id,
            hostname: crate::report::hostname(),
            labels: sink.config.label_map(),
            channel: sink.config.channel.clone(),
            kind: ReportKind::Heartbeat,
            state,
            time: unix_now(),
            active: now.as_ref().and_then(|s| s.active.clone()),
            previous: self.previous.clone(),
            target: Some(target.to_string()),
            result: state.name().to_string(),
            error: None,
            last_check: now.as_ref().and_then(|s| s.last_check),
            bytes_downloaded: 0,
            bytes_reused: 0,
            bytes_full: 0,
            requests: 0,
            duration_ms: 0,
            held_back: vec![],
            ferry_version: env!("CARGO_PKG_VERSION").into(),
        };
        if push(sink, r).is_some() {
            self.flush(PROGRESS_BUDGET);
        }
    }

    /// Delivers the queued reports within `budget`; failing is a warning.
    pub fn flush(&self, budget: Duration) {
        let Some(sink) = &self.sink else { return };
        let sender = match sink.sender() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("reports are not sent: {e}");
                return;
            }
        };
        let (done, error) = sender.flush(&sink.queue(), budget);
        if let Some(e) = error {
            tracing::warn!(
                delivered = done.delivered,
                queued = done.left,
                "reports not delivered ({} queued for the next try): {e}",
                done.left
            );
        } else if done.delivered > 0 {
            tracing::debug!(delivered = done.delivered, "reports delivered");
        }
    }

    /// Sleeps `wait`, sending a heartbeat whenever one falls due meanwhile.
    pub fn sleep(&mut self, wait: Duration) {
        let until = Instant::now() + wait;
        loop {
            let now = Instant::now();
            if now >= until {
                return;
            }
            match self.next_heartbeat {
                Some(h) if h < until => {
                    std::thread::sleep(h.saturating_duration_since(now));
                    self.heartbeat();
                }
                _ => {
                    std::thread::sleep(until - now);
                    return;
                }
            }
        }
    }

    /// The last report again, as a heartbeat: now, what the state file says is
    /// active (read without the root's lock: it is replaced atomically), and none of
    /// the last check's costs.
    fn heartbeat(&mut self) {
        let (Some(sink), Some(last)) = (&self.sink, &self.last) else {
            self.next_heartbeat = None;
            return;
        };
        let mut r = last.clone();
        r.kind = ReportKind::Heartbeat;
        r.time = unix_now();
        (r.bytes_downloaded, r.bytes_reused, r.bytes_full) = (0, 0, 0);
        (r.requests, r.duration_ms) = (0, 0);
        if let Ok(state) = State::load(&sink.layout.state()) {
            if state.active != r.active {
                self.previous = r.active.clone();
                r.previous = r.active.take();
            }
            r.active = state.active;
            r.last_check = state.last_check;
        }
        self.queue(r);
        self.flush(FLUSH_BUDGET);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(step: Step) -> Result<Outcome> {
        Ok(Outcome {
            from: Some("1.0.0".into()),
            to: Some("1.0.0".into()),
            target: Some("2.0.0".into()),
            bytes_reused: 0,
            bytes_full: 0,
            recalled_from: None,
            step,
            route: None,
            hops: None,
        })
    }

    #[test]
    fn every_step_maps_to_its_state() {
        for (step, state) in [
            (Step::Installed, AgentState::Idle),
            (Step::UpToDate, AgentState::Idle),
            (Step::NothingEligible, AgentState::Idle),
            (Step::Pinned, AgentState::Idle),
            (Step::Staged, AgentState::Staged),
            (Step::Waiting, AgentState::Staged),
            (Step::SwitchedBack("x".into()), AgentState::RolledBack),
        ] {
            let name = step.name();
            let (s, result, _, refused) = state_of(&ok(step), &[]);
            assert_eq!((s, result.as_str(), refused), (state, name, None));
        }
        let (s, result, error, _) =
            state_of(&ok(Step::SwitchedBack("health check failed".into())), &[]);
        assert_eq!(s, AgentState::RolledBack);
        assert_eq!(result, "rolled-back");
        assert_eq!(error.as_deref(), Some("health check failed"));

        let failed: Result<Outcome> =
            Err(anyhow::anyhow!("server down").context("fetching the head"));
        let (s, result, error, _) = state_of(&failed, &[]);
        assert_eq!((s, result.as_str()), (AgentState::Failed, "error"));
        assert_eq!(error.as_deref(), Some("fetching the head: server down"));
    }

    #[test]
    fn a_release_refused_for_its_requirements_makes_an_idle_agent_refused() {
        let held = [
            HeldBack {
                version: "3.0.0".into(),
                reason: "not in the rollout (30%)".into(),
            },
            HeldBack {
                version: "2.0.0".into(),
                reason: format!("{INCOMPATIBLE}: arch=aarch64"),
            },
        ];
        let (s, result, error, refused) = state_of(&ok(Step::UpToDate), &held);
        assert_eq!(s, AgentState::Refused);
        assert_eq!(result, "up-to-date");
        assert!(error.unwrap().contains("arch=aarch64"));
        assert_eq!(refused.as_deref(), Some("2.0.0"));
        // Held back by the rollout only: idle.
        assert_eq!(
            state_of(&ok(Step::UpToDate), &held[..1]).0,
            AgentState::Idle
        );
        // A rollback is still a rollback.
        let back = state_of(&ok(Step::SwitchedBack("x".into())), &held);
        assert_eq!(back.0, AgentState::RolledBack);
    }

    #[test]
    fn long_errors_are_clipped_on_a_character_boundary() {
        let e = clip("é".repeat(3000), MAX_ERROR);
        assert!(e.len() <= MAX_ERROR && e.len() >= MAX_ERROR - 1);
        assert_eq!(clip("short".into(), MAX_ERROR), "short");
    }
}

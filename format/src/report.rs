//! Agent reports (FORMAT.md §10): the JSON an agent posts to `POST /v1/reports` after
//! every check and as a heartbeat, and what the server answers. JSON rather than the
//! binary body encoding because operators read these, and fleet tools consume them;
//! the encoding and its limits still live here alone, so agent and server cannot drift.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{FormatError, Result};

/// Most bytes of one report's JSON.
pub const MAX_REPORT_SIZE: usize = 64 * 1024;
/// The schema this crate writes; readers accept it and lower ones.
pub const REPORT_SCHEMA: u32 = 1;
/// Most bytes of an error text, a hostname, a label key or value, a version.
const MAX_TEXT: usize = 4096;
/// Most labels and held-back releases one report carries.
const MAX_ITEMS: usize = 64;

/// Where an agent is, as its operator would say it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AgentState {
    Idle,
    Downloading,
    Staged,
    Switching,
    HealthChecking,
    RolledBack,
    Failed,
    Refused,
}

impl AgentState {
    pub const ALL: [AgentState; 8] = [
        AgentState::Idle,
        AgentState::Downloading,
        AgentState::Staged,
        AgentState::Switching,
        AgentState::HealthChecking,
        AgentState::RolledBack,
        AgentState::Failed,
        AgentState::Refused,
    ];

    pub fn name(self) -> &'static str {
        match self {
            AgentState::Idle => "idle",
            AgentState::Downloading => "downloading",
            AgentState::Staged => "staged",
            AgentState::Switching => "switching",
            AgentState::HealthChecking => "health-checking",
            AgentState::RolledBack => "rolled-back",
            AgentState::Failed => "failed",
            AgentState::Refused => "refused",
        }
    }
}

/// Why a report was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReportKind {
    /// After a check that did something or failed.
    Attempt,
    /// Every `heartbeat` interval, also when nothing changed.
    Heartbeat,
}

/// A newer release the agent did not take, and why (rollout, bad mark, requirements).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldBack {
    pub version: String,
    pub reason: String,
}

/// One report. Unknown fields are ignored, so agents may add fields without a new
/// schema; a field's meaning never changes within a schema.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub schema: u32,
    /// Unique per agent and report (`<agent id>-<sequence>`): a report delivered twice
    /// from the agent's queue is stored once.
    pub report_id: String,
    /// 32 lowercase hex characters (`ROOT/.ferry/agent_id`).
    pub agent_id: String,
    pub hostname: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub channel: String,
    pub kind: ReportKind,
    pub state: AgentState,
    /// Unix seconds when the check (or heartbeat) happened.
    pub time: u64,
    pub active: Option<String>,
    pub previous: Option<String>,
    /// The release the check aimed at.
    #[serde(default)]
    pub target: Option<String>,
    /// The check's result word (`installed`, `up-to-date`, `staged`, `rolled-back`,
    /// `error`, ...).
    pub result: String,
    #[serde(default)]
    pub error: Option<String>,
    /// Unix seconds of the last check that reached the repository.
    #[serde(default)]
    pub last_check: Option<u64>,
    #[serde(default)]
    pub bytes_downloaded: u64,
    #[serde(default)]
    pub bytes_reused: u64,
    /// What downloading the whole release would have cost (its archive), for the
    /// bytes saved by deltas; 0 when unknown.
    #[serde(default)]
    pub bytes_full: u64,
    #[serde(default)]
    pub requests: u64,
    #[serde(default)]
    pub duration_ms: u64,
    #[serde(default)]
    pub held_back: Vec<HeldBack>,
    pub ferry_version: String,
}

/// The server's answer to a first report authenticated with the fleet token: the
/// credential this agent uses from then on, bound to its id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrolled {
    pub agent_id: String,
    pub credential: String,
}

fn bad(reason: String) -> FormatError {
    FormatError::Malformed {
        kind: "agent report",
        reason,
    }
}

fn text(name: &str, value: &str) -> Result<()> {
    if value.len() > MAX_TEXT {
        return Err(bad(format!(
            "{name} is {} bytes, at most {MAX_TEXT}",
            value.len()
        )));
    }
    Ok(())
}

/// Whether `id` is an agent id: 32 lowercase hex characters.
pub fn is_agent_id(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl Report {
    /// Decodes and checks a report's JSON (at most [`MAX_REPORT_SIZE`] bytes).
    pub fn from_json(bytes: &[u8]) -> Result<Report> {
        if bytes.len() > MAX_REPORT_SIZE {
            return Err(bad(format!(
                "{} bytes, at most {MAX_REPORT_SIZE}",
                bytes.len()
            )));
        }
        let report: Report =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("not a report: {e}")))?;
        report.validate()?;
        Ok(report)
    }

    /// The JSON an agent posts; fails for a report [`Report::from_json`] would refuse.
    pub fn to_json(&self) -> Result<Vec<u8>> {
        self.validate()?;
        let bytes = serde_json::to_vec(self).map_err(|e| bad(e.to_string()))?;
        if bytes.len() > MAX_REPORT_SIZE {
            return Err(bad(format!(
                "{} bytes, at most {MAX_REPORT_SIZE}",
                bytes.len()
            )));
        }
        Ok(bytes)
    }

    pub fn validate(&self) -> Result<()> {
        if self.schema == 0 || self.schema > REPORT_SCHEMA {
            return Err(bad(format!(
                "schema {} (this ferry reads up to {REPORT_SCHEMA})",
                self.schema
            )));
        }
        if !is_agent_id(&self.agent_id) {
            return Err(bad(format!(
                "agent_id {:?} is not 32 lowercase hex characters",
                self.agent_id
            )));
        }
        if self.labels.len() > MAX_ITEMS || self.held_back.len() > MAX_ITEMS {
            return Err(bad(format!(
                "more than {MAX_ITEMS} labels or held-back releases"
            )));
        }
        for (name, value) in [
            ("report_id", self.report_id.as_str()),
            ("hostname", &self.hostname),
            ("channel", &self.channel),
            ("result", &self.result),
            ("ferry_version", &self.ferry_version),
        ] {
            text(name, value)?;
        }
        for (name, value) in [
            ("active", &self.active),
            ("previous", &self.previous),
            ("target", &self.target),
            ("error", &self.error),
        ] {
            if let Some(v) = value {
                text(name, v)?;
            }
        }
        for (k, v) in &self.labels {
            text("label", k)?;
            text("label", v)?;
        }
        for h in &self.held_back {
            text("held_back", &h.version)?;
            text("held_back", &h.reason)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        Report {
            schema: REPORT_SCHEMA,
            report_id: "00112233445566778899aabbccddeeff-1".into(),
            agent_id: "00112233445566778899aabbccddeeff".into(),
            hostname: "edge-1".into(),
            labels: BTreeMap::from([("role".into(), "edge".into())]),
            channel: "stable".into(),
            kind: ReportKind::Attempt,
            state: AgentState::RolledBack,
            time: 1_790_000_000,
            active: Some("1.0.0".into()),
            previous: Some("2.0.0".into()),
            target: Some("2.0.0".into()),
            result: "rolled-back".into(),
            error: Some("health check failed".into()),
            last_check: Some(1_790_000_000),
            bytes_downloaded: 1000,
            bytes_reused: 9000,
            bytes_full: 8000,
            requests: 3,
            duration_ms: 1200,
            held_back: vec![],
            ferry_version: "0.1.0".into(),
        }
    }

    #[test]
    fn a_report_round_trips_and_states_are_kebab_case() {
        let r = report();
        let json = r.to_json().unwrap();
        let text = String::from_utf8(json.clone()).unwrap();
        assert!(text.contains("\"state\":\"rolled-back\""), "{text}");
        assert_eq!(Report::from_json(&json).unwrap(), r);
        for s in AgentState::ALL {
            let j = serde_json::to_string(&s).unwrap();
            assert_eq!(j, format!("\"{}\"", s.name()));
        }
    }

    #[test]
    fn unknown_fields_are_ignored_and_bad_reports_are_named() {
        let mut v: serde_json::Value =
            serde_json::from_slice(&report().to_json().unwrap()).unwrap();
        v["added_later"] = serde_json::json!(1);
        assert!(Report::from_json(&serde_json::to_vec(&v).unwrap()).is_ok());
        let mut bad_id = report();
        bad_id.agent_id = "../../etc".into();
        assert!(
            bad_id
                .to_json()
                .unwrap_err()
                .to_string()
                .contains("agent_id")
        );
        let mut future = report();
        future.schema = REPORT_SCHEMA + 1;
        assert!(future.to_json().unwrap_err().to_string().contains("schema"));
        let mut long = report();
        long.error = Some("x".repeat(MAX_TEXT + 1));
        assert!(long.to_json().unwrap_err().to_string().contains("error"));
        let huge = vec![b' '; MAX_REPORT_SIZE + 1];
        assert!(
            Report::from_json(&huge)
                .unwrap_err()
                .to_string()
                .contains("at most")
        );
        assert!(Report::from_json(b"{}").is_err());
    }
}

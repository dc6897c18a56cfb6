//! The fleet's HTTP endpoints (docs/FLEET.md, the contract in FLEET-API):
//! `POST /v1/reports` (agents), `GET /v1/agents` and `GET /v1/fleet` (operators).
//!
//! `POST /v1/reports`: 201 + `Enrolled` for a report authenticated by a fleet token
//! (enrollment: a new credential bound to the report's agent id replaces any earlier
//! one); 200 `{"stored": bool}` for one authenticated by the agent's credential
//! (false: a duplicate `report_id`); 401 unknown token or credential; 403 a credential
//! of another agent; 413 over 64 KiB; 400 not a report. Every 2xx follows the commit.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::Bytes;
use ferry_format::report::{AgentState, Enrolled, MAX_REPORT_SIZE, Report, ReportKind};
use http::header::{ALLOW, CONTENT_LENGTH, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use serde::Serialize;
use serde_json::{Value, json};

use super::auth::{bearer, credential_digest, new_credential};
use super::store::{Store, Stored};
use super::{Fleet, FleetError, halt, now};
use crate::serve::metrics::{FleetGauges, Metrics, ReportResult};
use crate::serve::routes::Body;

/// Whether the fleet API answers `path`.
pub fn owns(path: &str) -> bool {
    path.starts_with("/v1/")
}

/// Answers one request under `/v1/`.
pub async fn handle<B>(
    fleet: &Arc<Fleet>,
    metrics: &Metrics,
    req: &Request<()>,
    body: B,
) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let path = req.uri().path();
    let method = req.method();
    match (path, method) {
        ("/v1/reports", &Method::POST) => {
            let (resp, stored) = post_report(fleet, req, body).await;
            metrics.report_received(report_result(resp.status(), stored.is_some()));
            if let Some((report, halted)) = stored {
                metrics.observe_report(&report);
                if halted {
                    metrics.rollout_halted(&report.channel);
                }
            }
            resp
        }
        ("/v1/agents" | "/v1/fleet", &Method::GET | &Method::HEAD) => {
            match bearer(req.headers()) {
                Some(t) if fleet.operator_tokens.contains(t) => {}
                _ => return unauthorized("an operator token is required"),
            }
            let fleet2 = fleet.clone();
            let agents = path == "/v1/agents";
            let view = fleet
                .with_store(move |s| {
                    if agents {
                        agents_view(&fleet2, s)
                    } else {
                        fleet_view(&fleet2, s)
                    }
                })
                .await;
            match view {
                Ok(v) => json_response(StatusCode::OK, &v),
                Err(e) => internal(&e),
            }
        }
        ("/v1/reports", _) => not_allowed("POST"),
        ("/v1/agents" | "/v1/fleet", _) => not_allowed("GET, HEAD"),
        _ => error(StatusCode::NOT_FOUND, "not found"),
    }
}

/// The fleet gauges of `/metrics`, from the same views as `/v1/fleet` and `/v1/agents`.
pub async fn gauges(fleet: &Arc<Fleet>) -> Option<FleetGauges> {
    let fleet2 = fleet.clone();
    let views = fleet
        .with_store(move |s| Ok((fleet_view(&fleet2, s)?, agents_view(&fleet2, s)?)))
        .await;
    match views {
        Ok((f, a)) => Some(FleetGauges::from_views(&f, &a)),
        Err(e) => {
            tracing::warn!("fleet gauges for /metrics: {e}");
            None
        }
    }
}

/// What `/metrics` counts for an answer to `POST /v1/reports`.
fn report_result(status: StatusCode, new: bool) -> ReportResult {
    match status {
        StatusCode::CREATED => ReportResult::enrolled,
        StatusCode::OK if new => ReportResult::stored,
        StatusCode::OK => ReportResult::duplicate,
        StatusCode::UNAUTHORIZED => ReportResult::unauthorized,
        StatusCode::FORBIDDEN => ReportResult::forbidden,
        StatusCode::PAYLOAD_TOO_LARGE => ReportResult::too_large,
        StatusCode::BAD_REQUEST => ReportResult::invalid,
        _ => ReportResult::error,
    }
}

/// A newly stored report comes back with the response (and whether it halted a
/// rollout), for the metrics.
type NewReport = Option<(Report, bool)>;

async fn post_report<B>(
    fleet: &Arc<Fleet>,
    req: &Request<()>,
    body: B,
) -> (Response<Body>, NewReport)
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let mut new = None;
    let resp = receive_report(fleet, req, body, &mut new).await;
    (resp, new)
}

async fn receive_report<B>(
    fleet: &Arc<Fleet>,
    req: &Request<()>,
    body: B,
    new: &mut NewReport,
) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("a report is at most {MAX_REPORT_SIZE} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_REPORT_SIZE as u64) {
        return too_large();
    }
    let Some(token) = bearer(req.headers()).map(str::to_string) else {
        return unauthorized("a fleet token or an agent credential is required");
    };
    let bytes = match Limited::new(body, MAX_REPORT_SIZE).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            return too_large();
        }
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("cannot read the body: {e}"),
            );
        }
    };
    let enrolling = fleet.agent_tokens.contains(&token);
    let bound = if enrolling {
        None
    } else {
        let digest = credential_digest(&token);
        match fleet.with_store(move |s| s.agent_of(&digest)).await {
            Ok(Some(agent)) => Some(agent),
            Ok(None) => return unauthorized("unknown fleet token or agent credential"),
            Err(e) => return internal(&e),
        }
    };
    let report = match Report::from_json(&bytes) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    if let Some(agent) = &bound
        && *agent != report.agent_id
    {
        return error(
            StatusCode::FORBIDDEN,
            &format!(
                "this credential belongs to agent {agent}, not {}: an agent reports only for itself",
                report.agent_id
            ),
        );
    }
    let credential = if enrolling {
        match new_credential() {
            Ok(c) => Some(c),
            Err(e) => return internal(&e),
        }
    } else {
        None
    };
    let digest = credential.as_deref().map(credential_digest);
    // Stored as received (it validated), so the JSON kept is exactly what the agent sent.
    let json = String::from_utf8_lossy(&bytes).into_owned();
    let fleet2 = fleet.clone();
    let agent_id = report.agent_id.clone();
    let stored = fleet
        .with_store(move |s| {
            let stored = s.store(&report, &json, now(), digest.as_ref())?;
            let halted = stored == Stored::New && halt::after_report(&fleet2, s, &report.channel);
            // A refreshed heartbeat was recorded too (as the agent's last contact).
            Ok((
                stored != Stored::Duplicate,
                (stored == Stored::New).then_some((report, halted)),
            ))
        })
        .await;
    let stored = stored.map(|(stored, fresh)| {
        *new = fresh;
        stored
    });
    match (stored, credential) {
        (Err(e), _) => internal(&e),
        (Ok(_), Some(credential)) => {
            tracing::info!(agent = %agent_id, "agent enrolled");
            json_response(
                StatusCode::CREATED,
                &Enrolled {
                    agent_id,
                    credential,
                },
            )
        }
        (Ok(stored), None) => json_response(StatusCode::OK, &json!({ "stored": stored })),
    }
}

/// `GET /v1/agents`.
fn agents_view(fleet: &Fleet, s: &mut Store) -> Result<Value, FleetError> {
    let now = now();
    let offline_after = fleet.offline_after();
    let agents: Vec<Value> = s
        .agents()?
        .into_iter()
        .map(|a| {
            let r = a.report;
            json!({
                "agent_id": r.agent_id,
                "hostname": r.hostname,
                "labels": r.labels,
                "channel": r.channel,
                "active": r.active,
                "previous": r.previous,
                "state": r.state,
                "last_seen": a.last_seen,
                "offline": now.saturating_sub(a.last_seen) >= offline_after,
                "last_result": r.result,
                "last_error": r.error,
                "ferry_version": r.ferry_version,
            })
        })
        .collect();
    Ok(json!({ "generated_at": now, "agents": agents }))
}

#[derive(Default, Serialize)]
struct ReleaseCounts {
    version: String,
    agents: u64,
    updating: u64,
    staged: u64,
    failed: u64,
    rolled_back: u64,
    refused: u64,
    offline: u64,
}

#[derive(Serialize)]
struct Durations {
    median: u64,
    p95: u64,
    count: u64,
}

impl Durations {
    fn of(mut ms: Vec<u64>) -> Durations {
        ms.sort_unstable();
        // Nearest rank: the smallest value with at least p% of the samples at or below it.
        let rank = |p: usize| ms[(ms.len() * p).div_ceil(100).max(1) - 1];
        if ms.is_empty() {
            return Durations {
                median: 0,
                p95: 0,
                count: 0,
            };
        }
        Durations {
            median: rank(50),
            p95: rank(95),
            count: ms.len() as u64,
        }
    }
}

/// `GET /v1/fleet`.
fn fleet_view(fleet: &Fleet, s: &mut Store) -> Result<Value, FleetError> {
    let now = now();
    let offline_after = fleet.offline_after();
    let agents = s.agents()?;
    let mut channels: BTreeSet<String> = fleet.channels().into_iter().collect();
    channels.extend(agents.iter().map(|a| a.report.channel.clone()));
    let mut out = Vec::new();
    for channel in channels {
        // The view still answers with the database's side when the repository cannot
        // be read (`/healthz` reports that).
        let head = fleet.head(&channel).unwrap_or_else(|e| {
            tracing::warn!(channel, "cannot read the head for the fleet view: {e}");
            None
        });
        let rollout = halt::rollout_view(s, &channel, head.as_ref())?;
        let mut releases: BTreeMap<String, ReleaseCounts> = BTreeMap::new();
        let mut offline = Vec::new();
        for a in agents.iter().filter(|a| a.report.channel == channel) {
            let r = &a.report;
            let is_offline = now.saturating_sub(a.last_seen) >= offline_after;
            if is_offline {
                offline.push(json!({"agent_id": r.agent_id, "hostname": r.hostname, "last_seen": a.last_seen}));
            }
            if let Some(active) = &r.active {
                let e = entry(&mut releases, active);
                e.agents += 1;
                if is_offline {
                    e.offline += 1;
                }
            }
            if let Some(target) = &r.target {
                match r.state {
                    AgentState::Downloading
                    | AgentState::Switching
                    | AgentState::HealthChecking => {
                        entry(&mut releases, target).updating += 1;
                    }
                    AgentState::Staged => entry(&mut releases, target).staged += 1,
                    _ => {}
                }
            }
        }
        let mut failures = Vec::new();
        let mut refusals = Vec::new();
        for r in s.latest_per_target(&channel)? {
            let Some(target) = r.target.clone() else {
                continue;
            };
            match r.state {
                AgentState::Failed | AgentState::RolledBack => {
                    let e = entry(&mut releases, &target);
                    if r.state == AgentState::Failed {
                        e.failed += 1;
                    } else {
                        e.rolled_back += 1;
                    }
                    failures.push(json!({
                        "agent_id": r.agent_id, "hostname": r.hostname, "release": target,
                        "state": r.state, "error": r.error, "time": r.time,
                    }));
                }
                AgentState::Refused => {
                    entry(&mut releases, &target).refused += 1;
                    let reason = r.error.clone().or_else(|| {
                        r.held_back
                            .iter()
                            .find(|h| h.version == target)
                            .map(|h| h.reason.clone())
                    });
                    refusals.push(json!({
                        "agent_id": r.agent_id, "hostname": r.hostname, "release": target,
                        "reason": reason.unwrap_or_default(), "time": r.time,
                    }));
                }
                _ => {}
            }
        }
        let (mut downloaded, mut full, mut saved) = (0u64, 0u64, 0u64);
        let (mut updates, mut rollbacks) = (Vec::new(), Vec::new());
        let (mut succeeded, mut failed, mut checks_failed) = (0u64, 0u64, 0u64);
        for r in s.attempts(&channel)? {
            debug_assert_eq!(r.kind, ReportKind::Attempt);
            downloaded = downloaded.saturating_add(r.bytes_downloaded);
            if r.bytes_full > 0 {
                full = full.saturating_add(r.bytes_full);
                saved = saved.saturating_add(r.bytes_full.saturating_sub(r.bytes_downloaded));
            }
            match r.state {
                AgentState::RolledBack => {
                    rollbacks.push(r.duration_ms);
                    failed += 1;
                }
                // A check that failed before it chose a release (no server reachable,
                // say) tried no update.
                AgentState::Failed if r.target.is_none() => checks_failed += 1,
                AgentState::Failed => failed += 1,
                _ if r.result == "installed" => {
                    updates.push(r.duration_ms);
                    succeeded += 1;
                }
                _ => {}
            }
        }
        let order = release_order(head.as_ref());
        let mut listed: Vec<ReleaseCounts> = releases.into_values().collect();
        listed.sort_by_key(|r| {
            (
                order
                    .iter()
                    .position(|v| *v == r.version)
                    .unwrap_or(usize::MAX),
                std::cmp::Reverse(r.version.clone()),
            )
        });
        out.push(json!({
            "channel": channel,
            "rollout": rollout,
            "releases": listed,
            "failures": failures,
            "refusals": refusals,
            "offline": offline,
            "bytes_downloaded": downloaded,
            "bytes_full": full,
            "bytes_saved": saved,
            "update_duration_ms": Durations::of(updates),
            "rollback_duration_ms": Durations::of(rollbacks),
            "updates_succeeded": succeeded,
            "updates_failed": failed,
            "update_success_rate": (succeeded + failed > 0)
                .then(|| succeeded as f64 / (succeeded + failed) as f64),
            "checks_failed": checks_failed,
        }));
    }
    Ok(json!({ "generated_at": now, "channels": out }))
}

fn entry<'a>(releases: &'a mut BTreeMap<String, ReleaseCounts>, v: &str) -> &'a mut ReleaseCounts {
    releases
        .entry(v.to_string())
        .or_insert_with(|| ReleaseCounts {
            version: v.to_string(),
            ..ReleaseCounts::default()
        })
}

/// The channel head's releases, newest first (empty without a readable head).
fn release_order(head: Option<&ferry_format::head::ChannelHead>) -> Vec<String> {
    head.map(|h| {
        h.content
            .releases
            .iter()
            .map(|r| r.version.clone())
            .collect()
    })
    .unwrap_or_default()
}

fn json_response(status: StatusCode, value: &impl Serialize) -> Response<Body> {
    let mut bytes = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    bytes.push(b'\n');
    respond(status, "application/json", bytes)
}

fn respond(status: StatusCode, content_type: &'static str, bytes: Vec<u8>) -> Response<Body> {
    let len = bytes.len();
    let mut r = Response::new(
        Full::new(Bytes::from(bytes))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from(len));
    r
}

/// An error answer: `{"error": "..."}`.
fn error(status: StatusCode, message: &str) -> Response<Body> {
    json_response(status, &json!({ "error": message }))
}

fn unauthorized(message: &str) -> Response<Body> {
    let mut r = error(StatusCode::UNAUTHORIZED, message);
    r.headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

fn not_allowed(allow: &'static str) -> Response<Body> {
    let mut r = error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    r.headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    r
}

/// A store failure: 503 when the database is unreachable (the agent's queue keeps the
/// report and retries; a balancer may try another server), else 500.
fn internal(e: &FleetError) -> Response<Body> {
    if let FleetError::Unavailable { .. } = e {
        tracing::warn!("fleet API: {e}");
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the fleet database is unavailable; try again later",
        );
    }
    tracing::error!("fleet API: {}", super::chain(e));
    error(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::fleet::FleetOptions;
    use http::header::AUTHORIZATION;

    #[tokio::test]
    async fn a_body_without_a_length_is_cut_at_64_kib_and_bad_json_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        std::fs::create_dir(&repo).unwrap();
        std::fs::write(dir.path().join("agents"), "tok\n").unwrap();
        std::fs::write(dir.path().join("operators"), "op\n").unwrap();
        let fleet = Arc::new(
            Fleet::open(FleetOptions {
                repo: crate::store::Store::folder(repo),
                agent_tokens: dir.path().join("agents"),
                operator_tokens: dir.path().join("operators"),
                db: super::super::store::FleetDb::File(dir.path().join("fleet.db")),
                heartbeat: super::super::DEFAULT_HEARTBEAT,
                retention: std::time::Duration::from_secs(3600),
                halt: None,
            })
            .unwrap(),
        );
        let req = Request::post("/v1/reports")
            .header(AUTHORIZATION, "Bearer tok")
            .body(())
            .unwrap();
        let big = Full::new(Bytes::from(vec![b' '; MAX_REPORT_SIZE + 1]));
        assert_eq!(
            handle(&fleet, &Metrics::default(), &req, big)
                .await
                .status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
        let bad = Full::new(Bytes::from_static(b"{\"schema\": 1}"));
        let resp = handle(&fleet, &Metrics::default(), &req, bad).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(
            String::from_utf8_lossy(&body).contains("not a report"),
            "{body:?}"
        );
        let get = Request::get("/v1/fleet")
            .header(AUTHORIZATION, "Bearer tok")
            .body(())
            .unwrap();
        let empty = Full::new(Bytes::new());
        assert_eq!(
            handle(&fleet, &Metrics::default(), &get, empty)
                .await
                .status(),
            StatusCode::UNAUTHORIZED
        );
    }
}

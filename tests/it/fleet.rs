//! The fleet API of the real `ferry-server serve` (docs/FLEET.md): enrollment and
//! credentials bound to an agent id, durability across kill -9, `GET /v1/agents` and
//! `GET /v1/fleet`, and `--halt-when` pausing a failing rollout with the online key.
//! Reports are built with the format's own type and posted over loopback.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_format::head::inspect_head;
use ferry_format::report::{AgentState, REPORT_SCHEMA, Report, ReportKind};
use ferry_tests::{Publisher, Server, assert_ok};
use serde_json::Value;
use tempfile::TempDir;

use super::fixtures::{Sources, v};
use super::online::{key_file, publisher_with_online_role, server};

pub const AGENT_TOKEN: &str = "fleet-token-0123456789";
pub const OPERATOR_TOKEN: &str = "operator-token-9876543210";

/// One HTTP/1.1 request over loopback: (status, JSON body or Null).
pub fn http(url: &str, method: &str, path: &str, token: Option<&str>, body: &[u8]) -> (u16, Value) {
    let addr = url.strip_prefix("http://").expect("http URL");
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    // A server refusing early (413) may close before reading it all.
    let _ = s.write_all(body);
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let text = String::from_utf8_lossy(&resp);
    let status: u16 = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// `GET path` without a token: (status, body text).
pub fn get_text(url: &str, path: &str) -> (u16, String) {
    let addr = url.strip_prefix("http://").expect("http URL");
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let head = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(head.as_bytes()).unwrap();
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let text = String::from_utf8_lossy(&resp).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_string());
    (status, body)
}

/// The text of `GET /metrics`.
pub fn metrics_text(url: &str) -> String {
    get_text(url, "/metrics").1
}

/// A report of agent number `n` (its id is `n` in hex).
pub fn report(n: u64, seq: u64, state: AgentState, active: &str, target: Option<&str>) -> Report {
    let agent_id = format!("{n:032x}");
    Report {
        schema: REPORT_SCHEMA,
        report_id: format!("{agent_id}-{seq}"),
        agent_id,
        hostname: format!("host-{n}"),
        labels: BTreeMap::from([("role".to_string(), "edge".to_string())]),
        channel: "stable".into(),
        kind: ReportKind::Attempt,
        state,
        time: 1_790_000_000 + seq,
        active: Some(active.to_string()),
        previous: None,
        target: target.map(str::to_string),
        result: match state {
            AgentState::RolledBack => "rolled-back",
            AgentState::Failed | AgentState::Refused => "error",
            _ => "installed",
        }
        .into(),
        error: matches!(
            state,
            AgentState::RolledBack | AgentState::Failed | AgentState::Refused
        )
        .then(|| format!("agent {n}: health check failed")),
        last_check: None,
        bytes_downloaded: 100,
        bytes_reused: 900,
        bytes_full: 1000,
        requests: 2,
        duration_ms: 10 * (n + 1),
        held_back: vec![],
        ferry_version: "0.1.0".into(),
    }
}

/// A server with the fleet API on, its token files and database outside the repo.
pub struct FleetServer {
    pub srv: Server,
    pub dir: TempDir,
}

/// How a test starts its fleet server: on a SQLite file in `dir` (the default) or on
/// a shared PostgreSQL database (tests/it/fleet_pg.rs runs the same checks on it).
pub type Start<'a> = &'a dyn Fn(&Path, &[&str]) -> FleetServer;

/// The SQLite default.
pub fn on_sqlite(repo: &Path, extra: &[&str]) -> FleetServer {
    FleetServer::start(repo, extra)
}

pub fn fleet_args(dir: &Path) -> Vec<String> {
    fleet_args_on(dir, dir.join("fleet.db").to_str().unwrap())
}

/// The fleet flags with `--fleet-db db` (a path or a postgres:// URL).
pub fn fleet_args_on(dir: &Path, db: &str) -> Vec<String> {
    let agent = dir.join("agent-tokens");
    let operator = dir.join("operator-tokens");
    if !agent.exists() {
        std::fs::write(&agent, format!("# agents\nother-token\n{AGENT_TOKEN}\n")).unwrap();
        std::fs::write(&operator, format!("{OPERATOR_TOKEN}\n")).unwrap();
    }
    [
        "--agent-token-file",
        agent.to_str().unwrap(),
        "--operator-token-file",
        operator.to_str().unwrap(),
        "--fleet-db",
        db,
    ]
    .map(str::to_string)
    .to_vec()
}

impl FleetServer {
    pub fn start(repo: &Path, extra: &[&str]) -> FleetServer {
        let dir = tempfile::tempdir().unwrap();
        let srv = FleetServer::restart(repo, dir.path(), extra);
        FleetServer { srv, dir }
    }

    /// A server on the fleet database `db` (a path or a postgres:// URL).
    pub fn start_on(repo: &Path, db: &str, extra: &[&str]) -> FleetServer {
        let dir = tempfile::tempdir().unwrap();
        let srv = FleetServer::restart_on(repo, dir.path(), db, extra);
        FleetServer { srv, dir }
    }

    pub fn restart(repo: &Path, dir: &Path, extra: &[&str]) -> Server {
        FleetServer::restart_on(repo, dir, dir.join("fleet.db").to_str().unwrap(), extra)
    }

    pub fn restart_on(repo: &Path, dir: &Path, db: &str, extra: &[&str]) -> Server {
        let mut args = fleet_args_on(dir, db);
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Server::start_with(repo, &args)
    }

    pub fn post(&self, token: &str, r: &Report) -> (u16, Value) {
        http(
            &self.srv.url,
            "POST",
            "/v1/reports",
            Some(token),
            &r.to_json().unwrap(),
        )
    }

    /// Enrolls with the fleet token; returns the credential.
    pub fn enroll(&self, r: &Report) -> String {
        let (status, body) = self.post(AGENT_TOKEN, r);
        assert_eq!(status, 201, "enrollment: {body}");
        assert_eq!(body["agent_id"], r.agent_id.as_str());
        body["credential"].as_str().unwrap().to_string()
    }

    pub fn get(&self, path: &str) -> Value {
        let (status, body) = http(&self.srv.url, "GET", path, Some(OPERATOR_TOKEN), b"");
        assert_eq!(status, 200, "{path}: {body}");
        body
    }
}

pub fn published() -> (Publisher, Sources) {
    let sources = Sources::app(1);
    let p = Publisher::new("stable");
    p.publish(&v(1), &sources.release(1));
    (p, sources)
}

#[test]
fn reports_enroll_and_credentials_are_bound_to_their_agent() {
    check_enrollment_and_credentials(&on_sqlite);
}

/// 401/201/200/duplicate/403/400/413; re-enrollment replaces the credential; operator
/// and fleet tokens are not interchangeable.
pub fn check_enrollment_and_credentials(start: Start<'_>) {
    let (p, _sources) = published();
    let f = start(&p.repo(), &[]);
    let a = report(1, 1, AgentState::Idle, "1.0.0", None);
    let b = report(2, 1, AgentState::Idle, "1.0.0", None);
    let url = &f.srv.url;

    // No token, a wrong one, or the operator's: 401, and nothing is stored.
    let body = a.to_json().unwrap();
    assert_eq!(http(url, "POST", "/v1/reports", None, &body).0, 401);
    assert_eq!(f.post("wrong-token", &a).0, 401);
    assert_eq!(f.post(OPERATOR_TOKEN, &a).0, 401);
    assert_eq!(f.get("/v1/agents")["agents"], Value::Array(vec![]));

    // Enrollment with the fleet token stores the report and hands out a credential.
    let cred_a = f.enroll(&a);
    assert_eq!(cred_a.len(), 64);
    let cred_b = f.enroll(&b);
    assert_ne!(cred_a, cred_b);

    // Later reports with the credential; a duplicate report_id is acknowledged, not stored.
    let a2 = report(1, 2, AgentState::Idle, "1.0.0", None);
    assert_eq!(
        f.post(&cred_a, &a2),
        (200, serde_json::json!({"stored": true}))
    );
    assert_eq!(
        f.post(&cred_a, &a2),
        (200, serde_json::json!({"stored": false}))
    );

    // A's credential cannot report for B (nor forge B's failures): 403.
    let forged = report(2, 7, AgentState::RolledBack, "1.0.0", Some("1.0.0"));
    let (status, err) = f.post(&cred_a, &forged);
    assert_eq!(status, 403, "{err}");
    assert!(
        err["error"].as_str().unwrap().contains("belongs to agent"),
        "{err}"
    );

    // Bad input: named 400; over 64 KiB: 413.
    let (status, err) = http(url, "POST", "/v1/reports", Some(&cred_a), b"{\"schema\":1}");
    assert_eq!(status, 400);
    assert!(
        err["error"].as_str().unwrap().contains("not a report"),
        "{err}"
    );
    let mut big = report(1, 3, AgentState::Idle, "1.0.0", None);
    big.hostname = "h".repeat(4000);
    big.labels = (0..20)
        .map(|i| (format!("k{i}"), "v".repeat(4000)))
        .collect();
    let big = serde_json::to_vec(&big).unwrap();
    assert!(big.len() > 64 * 1024);
    assert_eq!(http(url, "POST", "/v1/reports", Some(&cred_a), &big).0, 413);

    // Re-enrolling (token renewal) replaces the credential: the old one is refused.
    let renewed = f.enroll(&report(1, 4, AgentState::Idle, "1.0.0", None));
    assert_eq!(
        f.post(&cred_a, &report(1, 5, AgentState::Idle, "1.0.0", None))
            .0,
        401
    );
    assert_eq!(
        f.post(&renewed, &report(1, 5, AgentState::Idle, "1.0.0", None))
            .0,
        200
    );

    // The operator endpoints need the operator token, not an agent's.
    assert_eq!(
        http(url, "GET", "/v1/agents", Some(AGENT_TOKEN), b"").0,
        401
    );
    assert_eq!(http(url, "GET", "/v1/fleet", Some(&renewed), b"").0, 401);
    let agents = f.get("/v1/agents");
    let list = agents["agents"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{agents}");
    assert_eq!(list[0]["agent_id"], a.agent_id.as_str());
    assert_eq!(list[0]["hostname"], "host-1");
    assert_eq!(list[0]["labels"]["role"], "edge");
    assert_eq!(list[0]["state"], "idle");
    assert_eq!(list[0]["offline"], false);
    assert_eq!(list[1]["agent_id"], b.agent_id.as_str());
}

#[test]
fn the_fleet_database_is_refused_inside_the_repository() {
    let (p, _sources) = published();
    let dir = tempfile::tempdir().unwrap();
    let mut args = fleet_args(dir.path());
    let db = p.repo().join("fleet.db");
    *args.last_mut().unwrap() = db.to_str().unwrap().to_string();
    let repo = p.repo();
    let mut all = vec![
        "serve",
        "--repo",
        repo.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ];
    all.extend(args.iter().map(String::as_str));
    let out = server(&all);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is inside the repository"), "{err}");
    assert!(!db.exists());
}

#[test]
fn acknowledged_reports_survive_kill_9_of_the_server() {
    let (p, _sources) = published();
    let dir = tempfile::tempdir().unwrap();
    let srv = FleetServer::restart(&p.repo(), dir.path(), &[]);
    let f = FleetServer { srv, dir };
    let mut sent = Vec::new();
    let cred = f.enroll(&report(1, 0, AgentState::Idle, "1.0.0", None));
    for seq in 1..=40 {
        let r = report(1, seq, AgentState::Idle, "1.0.0", Some("1.0.0"));
        assert_eq!(
            f.post(&cred, &r),
            (200, serde_json::json!({"stored": true}))
        );
        sent.push(r);
    }
    // Right after the last 2xx: SIGKILL (the harness kills with it on drop).
    let FleetServer { srv, dir } = f;
    drop(srv);
    let srv = FleetServer::restart(&p.repo(), dir.path(), &[]);
    let f = FleetServer { srv, dir };
    // Every acknowledged report is there: sent again, each is a duplicate; the
    // credential still works; the fleet counts all 41 installs (enrollment included).
    for r in &sent {
        assert_eq!(
            f.post(&cred, r),
            (200, serde_json::json!({"stored": false})),
            "{}",
            r.report_id
        );
    }
    let fleet = f.get("/v1/fleet");
    assert_eq!(fleet["channels"][0]["updates_succeeded"], 41, "{fleet}");
    assert_eq!(
        f.get("/v1/agents")["agents"][0]["agent_id"],
        sent[0].agent_id.as_str()
    );
}

#[test]
fn the_fleet_view_counts_releases_outcomes_and_offline_agents() {
    check_fleet_view_counts(&on_sqlite);
}

/// `/v1/fleet` and `/v1/agents` count releases, outcomes, durations and offline agents.
pub fn check_fleet_view_counts(start: Start<'_>) {
    let (p, _sources) = published();
    let f = start(&p.repo(), &["--heartbeat-interval", "1s"]);
    // Agent 9 reports once and then stays silent past 3 heartbeat intervals.
    f.enroll(&report(9, 1, AgentState::Idle, "1.0.0", None));
    std::thread::sleep(Duration::from_millis(3300));
    let cases = [
        (1, AgentState::Idle, "1.0.0", None),
        (2, AgentState::Idle, "2.0.0", Some("2.0.0")),
        (3, AgentState::RolledBack, "1.0.0", Some("2.0.0")),
        (4, AgentState::Failed, "1.0.0", Some("2.0.0")),
        (5, AgentState::Refused, "1.0.0", Some("3.0.0")),
        (6, AgentState::Downloading, "1.0.0", Some("2.0.0")),
        (7, AgentState::Staged, "1.0.0", Some("2.0.0")),
    ];
    for (n, state, active, target) in cases {
        f.enroll(&report(n, 1, state, active, target));
    }
    let agents = f.get("/v1/agents");
    let offline: Vec<_> = agents["agents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["offline"] == true)
        .map(|a| a["hostname"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(offline, ["host-9"], "{agents}");
    let fleet = f.get("/v1/fleet");
    let ch = &fleet["channels"][0];
    assert_eq!(ch["channel"], "stable");
    assert_eq!(ch["rollout"]["release"], "1.0.0", "{ch}");
    assert_eq!(ch["rollout"]["halted"], false);
    let release = |v: &str| {
        ch["releases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["version"] == v)
            .cloned()
            .unwrap_or_else(|| panic!("no release {v} in {ch}"))
    };
    let counts = |r: Value| {
        [
            "agents",
            "updating",
            "staged",
            "failed",
            "rolled_back",
            "refused",
            "offline",
        ]
        .map(|k| r[k].as_u64().unwrap())
    };
    assert_eq!(counts(release("1.0.0")), [7, 0, 0, 0, 0, 0, 1]);
    assert_eq!(counts(release("2.0.0")), [1, 1, 1, 1, 1, 0, 0]);
    assert_eq!(counts(release("3.0.0")), [0, 0, 0, 0, 0, 1, 0]);
    assert_eq!(ch["failures"].as_array().unwrap().len(), 2, "{ch}");
    assert_eq!(ch["refusals"][0]["reason"], "agent 5: health check failed");
    assert_eq!(ch["offline"][0]["hostname"], "host-9");
    // 8 attempt reports of 100 bytes each, 1000 full: 900 saved each.
    assert_eq!(
        (
            &ch["bytes_downloaded"],
            &ch["bytes_full"],
            &ch["bytes_saved"]
        ),
        (&Value::from(800), &Value::from(8000), &Value::from(7200))
    );
    // Installs: agents 9, 1, 2, 6, 7 report "installed" (durations 100, 20, 30, 70, 80).
    assert_eq!(ch["updates_succeeded"], 5);
    assert_eq!(ch["updates_failed"], 2);
    assert_eq!(ch["update_success_rate"], 5.0 / 7.0);
    assert_eq!(ch["checks_failed"], 0);
    assert_eq!(
        ch["update_duration_ms"],
        serde_json::json!({"median": 70, "p95": 100, "count": 5})
    );
    assert_eq!(
        ch["rollback_duration_ms"],
        serde_json::json!({"median": 40, "p95": 40, "count": 1})
    );
}

pub fn head_of(repo: &Path) -> ferry_format::head::ChannelHead {
    inspect_head(&std::fs::read(repo.join("channels/stable/head")).unwrap()).unwrap()
}

#[test]
fn a_rollout_halts_itself_when_failures_pass_the_threshold_until_resumed() {
    check_halt_until_resumed(&on_sqlite);
}

/// `--halt-when` pauses once at the threshold, not again per report, and after a
/// resume only failures reported after the halt count.
pub fn check_halt_until_resumed(start: Start<'_>) {
    let sources = Sources::app(2);
    let p = publisher_with_online_role(&sources, &[]);
    p.publish_with(&v(2), &sources.release(2), &["--rollout", "50"]);
    let repo: PathBuf = p.repo();
    let online = key_file(&p, "online.key");
    let f = start(
        &repo,
        &[
            "--timestamp-key",
            &online,
            "--halt-when",
            "failed>20%,min=5",
        ],
    );
    let halted = || f.get("/v1/fleet")["channels"][0]["rollout"].clone();
    // 4 install 2.0.0, 1 rolls back: 1 of 5 is not above 20%.
    let mut creds = BTreeMap::new();
    for n in 1..=4 {
        creds.insert(
            n,
            f.enroll(&report(n, 1, AgentState::Idle, "2.0.0", Some("2.0.0"))),
        );
    }
    let cred5 = f.enroll(&report(
        5,
        1,
        AgentState::RolledBack,
        "1.0.0",
        Some("2.0.0"),
    ));
    assert_eq!(head_of(&repo).rollout_of(&v(2)), 50);
    assert_eq!(halted()["halted"], false);
    // Agents on 1.0.0 that did not try 2.0.0 do not count.
    f.enroll(&report(20, 1, AgentState::Idle, "1.0.0", None));
    assert_eq!(head_of(&repo).rollout_of(&v(2)), 50);
    // A sixth that failed: 2 of 6 is: the head is paused by the online key.
    creds.insert(
        6,
        f.enroll(&report(6, 1, AgentState::Failed, "1.0.0", Some("2.0.0"))),
    );
    let head = head_of(&repo);
    assert_eq!(head.rollout_of(&v(2)), 0, "paused");
    assert_eq!(
        head.content.rollout_of(&v(2)),
        50,
        "the publisher's content is kept"
    );
    let r = halted();
    assert_eq!(
        (&r["halted"], &r["paused"], &r["percent"]),
        (&Value::from(true), &Value::from(true), &Value::from(0)),
        "{r}"
    );
    assert!(
        r["halt_reason"]
            .as_str()
            .unwrap()
            .contains("2 of 6 agents that tried 2.0.0"),
        "{r}"
    );
    let ls = server(&["ls", "--repo", repo.to_str().unwrap()]);
    assert_ok(&ls, "ls");
    // /metrics counts the reports, the halt and the agents the fleet view shows.
    let metrics = metrics_text(&f.srv.url);
    for line in [
        "ferry_rollout_halts_total{channel=\"stable\"} 1",
        "ferry_reports_received_total{result=\"enrolled\"} 7",
        "ferry_rollout_halted{channel=\"stable\"} 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} not in:\n{metrics}"
        );
    }
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("ferry_agents{") && l.contains("state=\"rolled-back\"")),
        "{metrics}"
    );
    // Halting again is idempotent: more failures do not re-sign the head.
    let sequence = head.sequence;
    f.enroll(&report(7, 1, AgentState::Failed, "1.0.0", Some("2.0.0")));
    assert_eq!(
        f.post(
            &cred5,
            &report(5, 2, AgentState::RolledBack, "1.0.0", Some("2.0.0"))
        )
        .0,
        200
    );
    assert_eq!(head_of(&repo).sequence, sequence);
    let again = halted()["halt_reason"].clone();
    assert_eq!(
        again, r["halt_reason"],
        "one halt recorded, not one per report"
    );

    // A publisher resumes: the halt is lifted, and the failures before it do not
    // halt again (only reports after the halt count, and min=5 of them).
    let key = p.key();
    assert_ok(
        &server(&[
            "rollout",
            "--repo",
            repo.to_str().unwrap(),
            "--channel",
            "stable",
            "--key",
            key.to_str().unwrap(),
            "--resume",
        ]),
        "rollout --resume",
    );
    assert_eq!(head_of(&repo).rollout_of(&v(2)), 50);
    assert_eq!(halted()["halted"], false);
    assert_eq!(
        f.post(
            &cred5,
            &report(5, 3, AgentState::RolledBack, "1.0.0", Some("2.0.0"))
        )
        .0,
        200
    );
    assert_eq!(
        head_of(&repo).rollout_of(&v(2)),
        50,
        "not halted again on old failures"
    );
    // Heartbeats repeating the state of before the halt (agent 6 still failed, 1-4 on
    // 2.0.0) are not new outcomes either.
    for (n, (state, active)) in [(6, (AgentState::Failed, "1.0.0"))]
        .into_iter()
        .chain((1..=4).map(|n| (n, (AgentState::Idle, "2.0.0"))))
    {
        let mut beat = report(n, 9, state, active, Some("2.0.0"));
        beat.kind = ReportKind::Heartbeat;
        assert_eq!(
            f.post(&creds[&n], &beat),
            (200, serde_json::json!({"stored": true}))
        );
    }
    assert_eq!(
        head_of(&repo).rollout_of(&v(2)),
        50,
        "not halted again by heartbeats"
    );
    assert_eq!(halted()["halted"], false);
    // New failures after the resume halt it again.
    for n in 30..34 {
        f.enroll(&report(
            n,
            1,
            AgentState::RolledBack,
            "1.0.0",
            Some("2.0.0"),
        ));
    }
    assert_eq!(head_of(&repo).rollout_of(&v(2)), 0);
    let r = halted();
    assert_eq!(r["halted"], true, "{r}");
    assert!(r["halt_reason"].as_str().unwrap().contains("5 of 5"), "{r}");
}

//! The agent's reports (docs/AGENT.md#reports) against the real `ferry-server serve
//! --agent-token-file --operator-token-file --fleet-db` on 127.0.0.1: `ferry agent
//! --once` delivers its report and the server lists the agent; reports wait on disk
//! while the fleet server is down and all arrive when it is back; a refused credential
//! makes the agent re-read its token file and enroll again; a running agent sends
//! heartbeats while idle.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ferry_tests::{Agent, Publisher, assert_ok, bin};
use serde_json::Value;

use super::fixtures::{Sources, v};

pub const OPERATOR: &str = "operator-secret-token";

/// `ferry-server serve` with the fleet API on, on a fixed address so it can be
/// stopped and started again where the agents expect it. Killed (-9) on drop.
pub struct Fleet {
    child: Child,
    pub url: String,
    access_log: PathBuf,
}

impl Fleet {
    /// `dir` holds the token files, the fleet database and the access log.
    pub fn start(repo: &Path, dir: &Path, listen: &str) -> Fleet {
        Fleet::start_with(repo, dir, listen, &[])
    }

    /// [`Fleet::start`] with more `serve` arguments (`--halt-when`, ...).
    pub fn start_with(repo: &Path, dir: &Path, listen: &str, extra: &[&str]) -> Fleet {
        std::fs::write(dir.join("operator-tokens"), format!("{OPERATOR}\n")).unwrap();
        let access_log = dir.join("access.log");
        let mut child = Command::new(bin("ferry-server"))
            .args(["serve", "--repo"])
            .arg(repo)
            .args(["--listen", listen, "--access-log"])
            .arg(&access_log)
            .arg("--agent-token-file")
            .arg(dir.join("agent-tokens"))
            .arg("--operator-token-file")
            .arg(dir.join("operator-tokens"))
            .arg("--fleet-db")
            .arg(dir.join("fleet.db"))
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning ferry-server serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("listening on ") {
                    let _ = tx.send(url.trim().to_string());
                }
            }
        });
        let url = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(url) => url,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("ferry-server did not print its address within 30 s");
            }
        };
        Fleet {
            child,
            url,
            access_log,
        }
    }

    pub fn addr(&self) -> String {
        self.url.trim_start_matches("http://").to_string()
    }

    pub fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Statuses of the `POST /v1/reports` the server logged, in order.
    fn report_posts(&self) -> Vec<u64> {
        let text = std::fs::read_to_string(&self.access_log).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["method"] == "POST" && v["path"] == "/v1/reports")
            .map(|v| v["status"].as_u64().unwrap_or_default())
            .collect()
    }

    /// `GET /v1/agents` with the operator token.
    pub fn agents(&self) -> Vec<Value> {
        let (status, body) = get(&self.addr(), "/v1/agents", OPERATOR);
        assert_eq!(status, 200, "GET /v1/agents: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        v["agents"].as_array().cloned().unwrap_or_default()
    }

    fn agent(&self, id: &str) -> Option<Value> {
        self.agents().into_iter().find(|a| a["agent_id"] == id)
    }
}

/// The report ids the fleet database stored for `agent`, in the order it stored them
/// (read-only, beside the running server: the database is in WAL mode).
pub fn stored_reports(db: &Path, agent: &str) -> Vec<String> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let mut stmt = conn
        .prepare("SELECT report_id FROM reports WHERE agent_id = ?1 ORDER BY id")
        .unwrap();
    stmt.query_map([agent], |r| r.get::<_, String>(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A GET with a bearer token, over HTTP/1.0 (no chunked body): (status, body).
pub fn get(addr: &str, path: &str, token: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, body.to_string())
}

/// Appends keys to the root's config.toml.
fn configure(agent: &Agent, lines: &[&str]) {
    let path = agent.root().join(".ferry/config.toml");
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    for l in lines {
        writeln!(f, "{l}").unwrap();
    }
}

/// Gives `agent` the fleet token `token` in `ROOT/.ferry/fleet-token` (a relative
/// `token_file`) and reports on.
fn enable_reports(agent: &Agent, token: &str, extra: &[&str]) {
    std::fs::write(
        agent.root().join(".ferry/fleet-token"),
        format!("{token}\n"),
    )
    .unwrap();
    let mut lines = vec!["token_file = \"fleet-token\""];
    lines.extend_from_slice(extra);
    configure(agent, &lines);
}

fn agent_id(agent: &Agent) -> String {
    agent.status()["agent_id"].as_str().unwrap().to_string()
}

pub fn queued(agent: &Agent) -> usize {
    std::fs::read_dir(agent.root().join(".ferry/reports"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                .count()
        })
        .unwrap_or(0)
}

fn credential(agent: &Agent) -> Value {
    serde_json::from_slice(&std::fs::read(agent.root().join(".ferry/credential")).unwrap()).unwrap()
}

fn once(agent: &Agent) -> Output {
    let out = agent.ferry("agent", &["--once"]);
    assert_ok(&out, "agent --once");
    out
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Waits (bounded) until `f` holds.
fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn agent_once_delivers_its_report_and_the_server_lists_the_agent() {
    let publisher = Publisher::new("stable");
    let sources = Sources::app(2);
    publisher.publish(&v(1), &sources.release(1));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("agent-tokens"), "fleet-token-1\n").unwrap();
    let fleet = Fleet::start(&publisher.repo(), dir.path(), "127.0.0.1:0");
    let agent = Agent::init(&fleet.url, "stable", &publisher.public_key(), &[]);
    enable_reports(&agent, "fleet-token-1", &["labels = [\"role=edge\"]"]);
    let id = agent_id(&agent);

    once(&agent);
    assert_eq!(agent.active().as_deref(), Some("1.0.0"));
    // Enrolled with the fleet token (201) by the report that it started downloading,
    // then the check's report with the credential; the credential kept private.
    assert_eq!(fleet.report_posts(), [201, 200]);
    assert_eq!(queued(&agent), 0);
    let cred = credential(&agent);
    assert_eq!(cred["agent_id"], id.as_str());
    let mode = std::fs::metadata(agent.root().join(".ferry/credential"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let a = fleet.agent(&id).expect("the agent in GET /v1/agents");
    assert_eq!(a["state"], "idle", "{a}");
    assert_eq!(a["active"], "1.0.0", "{a}");
    assert_eq!(a["channel"], "stable", "{a}");
    assert_eq!(a["last_result"], "installed", "{a}");
    assert_eq!(a["labels"]["role"], "edge", "{a}");
    assert_eq!(a["ferry_version"], env!("CARGO_PKG_VERSION"), "{a}");
    assert_eq!(a["offline"], false, "{a}");
    assert!(
        !a["hostname"].as_str().unwrap_or_default().is_empty(),
        "{a}"
    );

    // An idle check: one report, with the credential.
    once(&agent);
    assert_eq!(fleet.report_posts(), [201, 200, 200]);
    assert_eq!(fleet.agent(&id).unwrap()["last_result"], "up-to-date");
}

#[test]
fn reports_wait_on_disk_while_the_fleet_server_is_down_and_all_arrive_later() {
    let publisher = Publisher::new("stable");
    let sources = Sources::app(2);
    publisher.publish(&v(1), &sources.release(1));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("agent-tokens"), "fleet-token-1\n").unwrap();
    let fleet = Fleet::start(&publisher.repo(), dir.path(), "127.0.0.1:0");
    let addr = fleet.addr();
    // The repository is mirrored by a second server: with the fleet server down,
    // checks still succeed, only the reports cannot go out.
    let mirror = publisher.serve();
    let agent = Agent::init(
        &fleet.url,
        "stable",
        &publisher.public_key(),
        &["--server", &mirror.url],
    );
    enable_reports(&agent, "fleet-token-1", &["give_up_after = \"2s\""]);
    let id = agent_id(&agent);
    once(&agent);
    assert_eq!(fleet.report_posts(), [201, 200]);
    fleet.stop();

    // Three checks while it is down (one installs 2.0.0, reporting that it started
    // downloading first): each succeeds, warns that its reports wait, and leaves them
    // queued.
    let out = once(&agent);
    assert!(
        stderr(&out).contains("reports not delivered"),
        "{}",
        stderr(&out)
    );
    publisher.publish(&v(2), &sources.release(2));
    once(&agent);
    assert_eq!(agent.active().as_deref(), Some("2.0.0"));
    once(&agent);
    assert_eq!(queued(&agent), 4);

    // Back on the same address, with its database: the next run delivers the four
    // waiting reports and its own, in order, with the credential.
    let fleet = Fleet::start(&publisher.repo(), dir.path(), &addr);
    once(&agent);
    assert_eq!(queued(&agent), 0);
    assert_eq!(fleet.report_posts(), [201, 200, 200, 200, 200, 200, 200]);
    // Stored in the order they were made, none missing.
    let want: Vec<String> = (1..=7).map(|n| format!("{id}-{n}")).collect();
    assert_eq!(stored_reports(&dir.path().join("fleet.db"), &id), want);
    let a = fleet.agent(&id).unwrap();
    assert_eq!(a["active"], "2.0.0", "{a}");
    assert_eq!(a["previous"], "1.0.0", "{a}");
    assert_eq!(a["last_result"], "up-to-date", "{a}");
    // The download of 2.0.0, made while the server was down, is counted.
    let (status, body) = get(&fleet.addr(), "/v1/fleet", OPERATOR);
    assert_eq!(status, 200, "{body}");
    let f: Value = serde_json::from_str(&body).unwrap();
    let stable = &f["channels"][0];
    assert!(stable["bytes_downloaded"].as_u64().unwrap() > 0, "{f}");
    assert!(stable["bytes_full"].as_u64().unwrap() > 0, "{f}");
}

#[test]
fn a_refused_credential_makes_the_agent_reread_its_token_and_enroll_again() {
    let publisher = Publisher::new("stable");
    let sources = Sources::app(2);
    publisher.publish(&v(1), &sources.release(1));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("agent-tokens"), "old-token\n").unwrap();
    let fleet = Fleet::start(&publisher.repo(), dir.path(), "127.0.0.1:0");
    let addr = fleet.addr();
    let agent = Agent::init(&fleet.url, "stable", &publisher.public_key(), &[]);
    enable_reports(&agent, "old-token", &[]);
    let id = agent_id(&agent);
    once(&agent);
    let first = credential(&agent);
    fleet.stop();

    // The fleet's token is renewed and its credentials revoked (a new database).
    let renewed = tempfile::tempdir().unwrap();
    std::fs::write(renewed.path().join("agent-tokens"), "new-token\n").unwrap();
    let fleet = Fleet::start(&publisher.repo(), renewed.path(), &addr);
    // Still holding the old token: the credential is refused, so is the token; the
    // check itself succeeds and its report waits.
    let out = once(&agent);
    assert!(
        stderr(&out).contains("fleet token") && stderr(&out).contains("refused"),
        "{}",
        stderr(&out)
    );
    assert_eq!(fleet.report_posts(), [401, 401]);
    assert_eq!(queued(&agent), 1);
    assert!(fleet.agent(&id).is_none());

    // The operator drops the new token in place: no restart, no other change.
    std::fs::write(agent.root().join(".ferry/fleet-token"), "new-token\n").unwrap();
    once(&agent);
    assert_eq!(queued(&agent), 0);
    // 401 to the old credential, then enrolled with the token (201) for the queued
    // report; the run's own report goes with the new credential.
    assert_eq!(fleet.report_posts(), [401, 401, 401, 201, 200]);
    let second = credential(&agent);
    assert_eq!(second["agent_id"], id.as_str());
    assert_ne!(second["credential"], first["credential"]);
    assert_eq!(fleet.agent(&id).unwrap()["active"], "1.0.0");
}

#[test]
fn a_running_agent_sends_heartbeats_while_idle() {
    let publisher = Publisher::new("stable");
    let sources = Sources::app(2);
    publisher.publish(&v(1), &sources.release(1));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("agent-tokens"), "fleet-token-1\n").unwrap();
    let fleet = Fleet::start(&publisher.repo(), dir.path(), "127.0.0.1:0");
    let agent = Agent::init(&fleet.url, "stable", &publisher.public_key(), &[]);
    enable_reports(
        &agent,
        "fleet-token-1",
        &["heartbeat = \"1s\"", "interval = \"1h\""],
    );
    let id = agent_id(&agent);
    let log = dir.path().join("agent.log");
    let mut child = Command::new(bin("ferry"))
        .args(["agent", "--root", agent.root().to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_until("the first report", Duration::from_secs(30), || {
            !fleet.report_posts().is_empty()
        });
        let seen = fleet.agent(&id).unwrap()["last_seen"].as_u64().unwrap();
        // Heartbeats, one a second, with no check in between (the interval is an hour).
        wait_until("four heartbeats", Duration::from_secs(15), || {
            fleet.report_posts().len() >= 5
        });
        let posts = fleet.report_posts();
        assert!(posts[1..].iter().all(|s| *s == 200), "{posts:?}");
        let heads = std::fs::read_to_string(&fleet.access_log)
            .unwrap()
            .lines()
            .filter(|l| l.contains("/channels/stable/head"))
            .count();
        assert_eq!(heads, 1, "one check only");
        let a = fleet.agent(&id).unwrap();
        assert!(a["last_seen"].as_u64().unwrap() > seen, "{a}");
        assert_eq!(a["state"], "idle", "{a}");
        assert_eq!(a["active"], "1.0.0", "{a}");
    }));
    let _ = child.kill();
    let _ = child.wait();
    if let Err(e) = result {
        eprintln!("{}", std::fs::read_to_string(&log).unwrap_or_default());
        std::panic::resume_unwind(e);
    }
}

#[test]
fn a_release_refused_for_its_requirements_is_reported_with_its_reason() {
    let publisher = Publisher::new("stable");
    let sources = Sources::app(2);
    publisher.publish(&v(1), &sources.release(1));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("agent-tokens"), "fleet-token-1\n").unwrap();
    let fleet = Fleet::start(&publisher.repo(), dir.path(), "127.0.0.1:0");
    let agent = Agent::init(&fleet.url, "stable", &publisher.public_key(), &[]);
    enable_reports(&agent, "fleet-token-1", &["labels = [\"role=db\"]"]);
    let id = agent_id(&agent);
    once(&agent);
    publisher.publish_with(&v(2), &sources.release(2), &["--requires", "role=edge"]);
    once(&agent);
    assert_eq!(agent.active().as_deref(), Some("1.0.0"));

    let a = fleet.agent(&id).unwrap();
    assert_eq!(a["state"], "refused", "{a}");
    assert_eq!(a["active"], "1.0.0", "{a}");
    let (status, body) = get(&fleet.addr(), "/v1/fleet", OPERATOR);
    assert_eq!(status, 200, "{body}");
    let f: Value = serde_json::from_str(&body).unwrap();
    let refusals = &f["channels"][0]["refusals"];
    assert_eq!(refusals.as_array().map(Vec::len), Some(1), "{f}");
    assert_eq!(refusals[0]["agent_id"], id.as_str(), "{f}");
    assert_eq!(refusals[0]["release"], "2.0.0", "{f}");
    assert!(
        refusals[0]["reason"]
            .as_str()
            .unwrap()
            .contains("role=edge"),
        "{f}"
    );
}

#[test]
fn a_release_that_fails_its_health_check_is_reported_rolled_back() {
    let publisher = Publisher::new("stable");
    let sources = Sources::app(2);
    std::fs::write(sources.release(1).join("healthy"), "ok").unwrap();
    publisher.publish(&v(1), &sources.release(1));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("agent-tokens"), "fleet-token-1\n").unwrap();
    let fleet = Fleet::start(&publisher.repo(), dir.path(), "127.0.0.1:0");
    let agent = Agent::init(&fleet.url, "stable", &publisher.public_key(), &[]);
    enable_reports(
        &agent,
        "fleet-token-1",
        &[
            "health_check = \"test -f \\\"$FERRY_CURRENT/healthy\\\"\"",
            "health_retries = 1",
            "health_delay = \"0s\"",
        ],
    );
    let id = agent_id(&agent);
    once(&agent);
    // Release 2 ships without the file the health check looks for.
    publisher.publish(&v(2), &sources.release(2));
    once(&agent);
    assert_eq!(agent.active().as_deref(), Some("1.0.0"));

    let a = fleet.agent(&id).unwrap();
    assert_eq!(a["state"], "rolled-back", "{a}");
    assert_eq!(a["last_result"], "rolled-back", "{a}");
    assert_eq!(a["active"], "1.0.0", "{a}");
    assert_eq!(a["previous"], "2.0.0", "{a}");
    assert!(
        a["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("health check"),
        "{a}"
    );
    let (status, body) = get(&fleet.addr(), "/v1/fleet", OPERATOR);
    assert_eq!(status, 200, "{body}");
    let f: Value = serde_json::from_str(&body).unwrap();
    let stable = &f["channels"][0];
    let two = stable["releases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["version"] == "2.0.0")
        .cloned()
        .unwrap_or_default();
    assert_eq!(two["rolled_back"], 1, "{f}");
    assert_eq!(stable["failures"][0]["release"], "2.0.0", "{f}");
    assert_eq!(stable["failures"][0]["state"], "rolled-back", "{f}");
}

/// (kind, state, target) of every report the fleet database stored for `agent`.
fn stored_states(db: &Path, agent: &str) -> Vec<(String, String, String)> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT kind, state, coalesce(target, '') FROM reports WHERE agent_id = ?1 ORDER BY id",
        )
        .unwrap();
    stmt.query_map([agent], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn a_running_agent_reports_downloading_and_health_checking_while_it_updates() {
    let publisher = Publisher::new("stable");
    let sources = Sources::app(2);
    publisher.publish(&v(1), &sources.release(1));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("agent-tokens"), "fleet-token-1\n").unwrap();
    let fleet = Fleet::start(&publisher.repo(), dir.path(), "127.0.0.1:0");
    let agent = Agent::init(&fleet.url, "stable", &publisher.public_key(), &[]);
    // The health check of 2.0.0 waits until the test opens the gate.
    let gate = dir.path().join("gate");
    let check = format!(
        "health_check = \"test \\\"$FERRY_TO\\\" != 2.0.0 || while [ ! -e '{}' ]; do sleep 0.05; done\"",
        gate.display()
    );
    enable_reports(
        &agent,
        "fleet-token-1",
        &[
            "interval = \"1s\"",
            "heartbeat = \"1h\"",
            "health_retries = 1",
            "health_delay = \"0s\"",
            &check,
        ],
    );
    let id = agent_id(&agent);
    let db = dir.path().join("fleet.db");
    let mut running = super::agent::Running::start(&agent, &[]);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_until("1.0.0 reported", Duration::from_secs(30), || {
            fleet
                .agent(&id)
                .is_some_and(|a| a["active"] == "1.0.0" && a["last_result"] == "installed")
        });
        publisher.publish(&v(2), &sources.release(2));
        // While the health check waits: the agent is health-checking 2.0.0, and the
        // fleet counts it as updating to 2.0.0.
        wait_until("health-checking reported", Duration::from_secs(30), || {
            fleet
                .agent(&id)
                .is_some_and(|a| a["state"] == "health-checking")
        });
        let a = fleet.agent(&id).unwrap();
        assert_eq!(a["active"], "2.0.0", "{a}");
        let (status, body) = get(&fleet.addr(), "/v1/fleet", OPERATOR);
        assert_eq!(status, 200, "{body}");
        let f: Value = serde_json::from_str(&body).unwrap();
        let two = f["channels"][0]["releases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["version"] == "2.0.0")
            .cloned()
            .unwrap_or_default();
        assert_eq!(two["updating"], 1, "{f}");
        std::fs::write(&gate, "").unwrap();
        wait_until("2.0.0 installed", Duration::from_secs(30), || {
            fleet.agent(&id).is_some_and(|a| {
                a["state"] == "idle" && a["last_result"] == "installed" && a["active"] == "2.0.0"
            })
        });
        let states = stored_states(&db, &id);
        let from = states
            .iter()
            .position(|s| s.2 == "2.0.0")
            .expect("a report about 2.0.0");
        let s = |k: &str, st: &str| (k.to_string(), st.to_string(), "2.0.0".to_string());
        assert_eq!(
            states[from..],
            [
                s("heartbeat", "downloading"),
                s("heartbeat", "health-checking"),
                s("attempt", "idle"),
            ],
            "{states:?}"
        );
        // The first check (the install of 1.0.0) said it was downloading too.
        assert_eq!(
            states[0],
            ("heartbeat".into(), "downloading".into(), "1.0.0".into()),
            "{states:?}"
        );
    }));
    if let Err(e) = result {
        eprintln!("{}", running.log());
        running.kill();
        std::panic::resume_unwind(e);
    }
}

//! The fleet page (`GET /fleet`) in a real headless Chromium, driven through
//! chromedriver with fantoccini: the page loads without a token, asks for the operator
//! token once, shows the counts that the reports posted to the real `ferry-server`
//! imply, refreshes by itself, inserts agent-supplied text as text, and asks for the
//! token again after a 401. A screenshot is saved under target/test-output/.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use ferry_format::report::{AgentState, REPORT_SCHEMA, Report, ReportKind};
use ferry_tests::{Publisher, Server};
use serde_json::{Value, json};

use super::fixtures::{Sources, v};

const AGENT_TOKEN: &str = "fleet-agent-token-0123456789abcdef";
const OPERATOR_TOKEN: &str = "fleet-operator-token-fedcba9876543210";
/// What an agent could send as its hostname: it must show as text, never as markup.
const HOSTILE_HOST: &str = "<img src=x id=pwned onerror=alert(1)>";

/// `chromedriver --port=P` on loopback, in a process group of its own with the
/// Chromium it starts, and with its own TMPDIR and HOME (Chromium's
/// `org.chromium.Chromium.*` folders and crash database land there and go with it).
/// On drop the whole group is killed, so a failing test leaves no browser behind.
pub struct Driver {
    child: Child,
    port: u16,
    tmp: tempfile::TempDir,
}

impl Driver {
    pub fn start() -> Driver {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let tmp = tempfile::tempdir().unwrap();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .process_group(0)
            .env("TMPDIR", tmp.path())
            .env("HOME", tmp.path())
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("XDG_CACHE_HOME")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "chromedriver: {e}: install chromium and chromium-driver \
                     (`.ci/build-deps.sh --chromium`; .ci/run does)"
                )
            });
        let driver = Driver { child, port, tmp };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        driver
    }

    pub async fn session(&self) -> Client {
        let profile = self.tmp.path().join("profile");
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": "/usr/lib/chromium/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu",
                    "--disable-dev-shm-usage", "--disable-background-networking",
                    "--window-size=1280,1400",
                    format!("--user-data-dir={}", profile.display()),
                ],
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("WebDriver session")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The group's id is chromedriver's pid (process_group(0)).
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-9", "--", &group]).status();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request; the status and the body as JSON (Null when empty or not JSON).
fn request(url: &str, method: &str, path: &str, auth: &str, body: &[u8]) -> (u16, Value) {
    let addr = url.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Authorization: Bearer {auth}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&raw[..split]);
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (
        status,
        serde_json::from_slice(&raw[split..]).unwrap_or(Value::Null),
    )
}

/// A simulated agent: enrolls with the fleet token on its first report, then reports
/// with its credential, as `ferry agent` does.
struct SimAgent {
    id: String,
    host: String,
    credential: Option<String>,
    seq: u64,
    labels: BTreeMap<String, String>,
}

impl SimAgent {
    fn new(n: u64, host: &str) -> SimAgent {
        SimAgent {
            id: format!("{n:032x}"),
            host: host.to_string(),
            credential: None,
            seq: 0,
            labels: BTreeMap::new(),
        }
    }

    /// Posts one attempt report and checks it was stored.
    fn report(
        &mut self,
        url: &str,
        state: AgentState,
        active: &str,
        target: Option<&str>,
        result: &str,
        error: Option<&str>,
    ) {
        self.seq += 1;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let report = Report {
            schema: REPORT_SCHEMA,
            report_id: format!("{}-{}", self.id, self.seq),
            agent_id: self.id.clone(),
            hostname: self.host.clone(),
            labels: self.labels.clone(),
            channel: "stable".into(),
            kind: ReportKind::Attempt,
            state,
            time: now,
            active: Some(active.into()),
            previous: None,
            target: target.map(str::to_string),
            result: result.into(),
            error: error.map(str::to_string),
            last_check: Some(now),
            bytes_downloaded: 1_000,
            bytes_reused: 9_000,
            bytes_full: 10_000,
            requests: 3,
            duration_ms: 1_200,
            held_back: vec![],
            ferry_version: "0.1.0".into(),
        };
        let body = report.to_json().unwrap();
        let auth = self.credential.clone().unwrap_or(AGENT_TOKEN.to_string());
        let (status, answer) = request(url, "POST", "/v1/reports", &auth, &body);
        if self.credential.is_none() {
            assert_eq!(status, 201, "enrollment of {}: {answer}", self.id);
            self.credential = Some(answer["credential"].as_str().unwrap().to_string());
        } else {
            assert_eq!(status, 200, "report of {}: {answer}", self.id);
        }
    }
}

pub fn output_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    );
    target.join("test-output")
}

/// The text of the first element matching `css`, waited for up to `limit` to equal
/// `want` (the page polls the API every few seconds).
pub async fn wait_text(c: &Client, css: &str, want: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    let mut last = String::new();
    loop {
        if let Ok(e) = c.find(Locator::Css(css)).await {
            last = e.text().await.unwrap_or_default();
            if last == want {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{css}: {last:?}, expected {want:?} within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn attr(c: &Client, css: &str, name: &str) -> Option<String> {
    let e = c.find(Locator::Css(css)).await.unwrap();
    e.attr(name).await.unwrap()
}

pub async fn displayed(c: &Client, id: &str) -> bool {
    c.find(Locator::Id(id))
        .await
        .unwrap()
        .is_displayed()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_page_shows_the_reported_counts_in_chromium() {
    let started = Instant::now();
    let sources = Sources::app(2);
    let publisher = Publisher::new("stable");
    publisher.publish(&v(1), &sources.release(1));
    publisher.publish_with(&v(2), &sources.release(2), &["--rollout", "50"]);
    let secrets = tempfile::tempdir().unwrap();
    let agent_tokens = secrets.path().join("agents.tokens");
    std::fs::write(&agent_tokens, format!("{AGENT_TOKEN}\n")).unwrap();
    let operator_tokens = secrets.path().join("operators.tokens");
    std::fs::write(&operator_tokens, format!("{OPERATOR_TOKEN}\n")).unwrap();
    let db = secrets.path().join("fleet.db");
    let srv = Server::start_with(
        &publisher.repo(),
        &[
            "--agent-token-file",
            agent_tokens.to_str().unwrap(),
            "--operator-token-file",
            operator_tokens.to_str().unwrap(),
            "--fleet-db",
            db.to_str().unwrap(),
        ],
    );
    let url = srv.url.clone();

    // Four agents on 1.0.0 (one reporting a hostile hostname), two of them tried
    // 2.0.0: one rolled back after a failed health check, one refused it.
    let mut agents: Vec<SimAgent> = (1..=4)
        .map(|n| SimAgent::new(n, &format!("edge-{n}")))
        .collect();
    agents[3].host = HOSTILE_HOST.to_string();
    for a in &mut agents[..2] {
        a.report(
            &url,
            AgentState::Idle,
            &v(1),
            Some(&v(1)),
            "installed",
            None,
        );
    }
    agents[2].report(
        &url,
        AgentState::RolledBack,
        &v(1),
        Some(&v(2)),
        "rolled-back",
        Some("health check failed: exit status 3"),
    );
    agents[3].report(
        &url,
        AgentState::Refused,
        &v(1),
        Some(&v(2)),
        "refused",
        Some("requires glibc >= 2.40"),
    );

    let driver = Driver::start();
    let c = driver.session().await;
    let result = drive(&c, &url, &mut agents).await;
    let _ = c.close().await;
    drop(driver);
    result.unwrap_or_else(|e| panic!("{e}"));
    // /metrics of a server with the fleet API on is valid too.
    let (_, metrics) = super::metrics::get(&url, "/metrics");
    super::metrics::promtool_check(&metrics);
    let took = started.elapsed();
    eprintln!("fleet page test took {took:?}");
    assert!(took < Duration::from_secs(60), "took {took:?}");
}

async fn drive(c: &Client, url: &str, agents: &mut [SimAgent]) -> Result<(), String> {
    let fail = |e: fantoccini::error::CmdError| e.to_string();
    // The page loads without a token and asks for it.
    c.goto(&format!("{url}/fleet")).await.map_err(fail)?;
    c.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("#login:not([hidden])"))
        .await
        .map_err(fail)?;
    assert!(!displayed(c, "fleet").await, "no data before the token");
    let input = c.find(Locator::Id("token")).await.map_err(fail)?;
    input.send_keys(OPERATOR_TOKEN).await.map_err(fail)?;
    c.find(Locator::Id("login-submit"))
        .await
        .map_err(fail)?
        .click()
        .await
        .map_err(fail)?;

    let t = Duration::from_secs(10);
    let ch = r#"section[data-channel="stable"]"#;
    let r1 = format!(r#"{ch} tr[data-release="{}"]"#, v(1));
    let r2 = format!(r#"{ch} tr[data-release="{}"]"#, v(2));
    wait_text(c, &format!(r#"{r1} td[data-field="agents"]"#), "4", t).await;
    wait_text(c, &format!(r#"{r2} td[data-field="rolled_back"]"#), "1", t).await;
    wait_text(c, &format!(r#"{r2} td[data-field="refused"]"#), "1", t).await;
    wait_text(c, &format!(r#"{r2} td[data-field="failed"]"#), "0", t).await;
    wait_text(
        c,
        &format!(r#"{ch} [data-field="rollout-release"]"#),
        &v(2),
        t,
    )
    .await;
    wait_text(
        c,
        &format!(r#"{ch} [data-field="rollout-percent"]"#),
        "50",
        t,
    )
    .await;
    wait_text(c, "#total-agents", "4", t).await;
    // The form is gone once the data shows, and no badge claims a halt or a pause.
    assert!(!displayed(c, "login").await, "token form still shown");
    for badge in ["rollout-halted", "rollout-paused"] {
        let e = c
            .find(Locator::Css(&format!(r#"{ch} [data-field="{badge}"]"#)))
            .await
            .map_err(fail)?;
        assert!(!e.is_displayed().await.map_err(fail)?, "{badge} shown");
    }
    // Bytes saved: 4 reports of 10,000 full against 1,000 downloaded.
    let saved = attr(
        c,
        &format!(r#"{ch} [data-field="bytes-saved"]"#),
        "data-value",
    )
    .await;
    assert_eq!(saved.as_deref(), Some("36000"));
    // The failure and the refusal, with their errors.
    let row = |id: &str| format!(r#"{ch} table.failures tr[data-agent="{id}"]"#);
    wait_text(
        c,
        &format!("{} td.error", row(&agents[2].id)),
        "health check failed: exit status 3",
        t,
    )
    .await;
    wait_text(
        c,
        &format!("{} td.error", row(&agents[3].id)),
        "requires glibc >= 2.40",
        t,
    )
    .await;
    // The hostile hostname is text, not an element.
    wait_text(
        c,
        &format!("{} td:nth-child(2)", row(&agents[3].id)),
        HOSTILE_HOST,
        t,
    )
    .await;
    assert!(
        c.find(Locator::Id("pwned")).await.is_err(),
        "agent text became markup"
    );

    // The page refreshes by itself: a new failure shows up without a reload.
    agents[0].report(
        url,
        AgentState::RolledBack,
        &v(1),
        Some(&v(2)),
        "rolled-back",
        Some("health check timed out"),
    );
    wait_text(c, &format!(r#"{r2} td[data-field="rolled_back"]"#), "2", t).await;
    wait_text(c, "#total-failures", "2", t).await;

    let png = c.screenshot().await.map_err(fail)?;
    let dir = output_dir();
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let path = dir.join("fleet-page.png");
    std::fs::write(&path, &png).map_err(|e| e.to_string())?;
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    eprintln!("screenshot: {}", path.canonicalize().unwrap().display());

    // The token survives a reload (local storage) ...
    c.refresh().await.map_err(fail)?;
    wait_text(c, "#total-agents", "4", t).await;
    // ... and a refused one is asked for again.
    c.execute(
        "localStorage.setItem('ferry-operator-token', 'wrong-token'); return null;",
        vec![],
    )
    .await
    .map_err(fail)?;
    c.refresh().await.map_err(fail)?;
    c.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("#login:not([hidden])"))
        .await
        .map_err(fail)?;
    wait_text(
        c,
        "#login-error",
        "The server refused this token; enter it again.",
        t,
    )
    .await;
    Ok(())
}

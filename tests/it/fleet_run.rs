//! The fleet end to end: twenty real `ferry agent` processes (separate roots, 1 s
//! checks, 2 s heartbeats) against one real `ferry-server serve` with the fleet API,
//! `--timestamp-key` and `--halt-when`, all on 127.0.0.1.
//!
//! 1. Every agent installs 1.1.0; the publisher revokes it; every agent leaves it for
//!    1.0.0 by itself and records the recall.
//! 2. 2.0.0 rolls out to 10%: the two agents of that share try it; the one labelled
//!    `health=bad` fails its health check and switches back.
//! 3. The server is killed with -9 while the agents run, and started again on the same
//!    address: every report it had acknowledged is still there, and what the agents
//!    queued meanwhile arrives.
//! 4. The rollout is raised to 50%: eight more agents try 2.0.0, two of them bad. When
//!    the tenth agent that tried it has reported, 3 of 10 failed (> 20%, min 10): the
//!    server pauses the rollout with its online key, and no other agent takes 2.0.0.
//! 5. `GET /v1/fleet`, `/metrics` and the fleet page in headless Chromium (screenshot
//!    `target/test-output/fleet-run.png`) show the same counts: 7 agents on 2.0.0, 13 on
//!    1.0.0, 3 rolled back from 2.0.0, none on 1.1.0, the rollout halted at 0%.
//! 6. A signed audit export lists the revocation, the halt and the agents' outcomes and
//!    verifies; after an edit it does not.
//!
//! The agent ids are chosen (written into each root before its agent starts) so that
//! exactly those agents fall into the 10% and 50% shares of 2.0.0: the counts are
//! exact, not statistical.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use fantoccini::Locator;
use ferry_format::head::rollout_bucket;
use ferry_tests::{Agent, Publisher, assert_ok};
use serde_json::Value;

use super::agent::Running;
use super::fixtures::{Sources, tree_eq};
use super::fleet_page::{Driver, displayed, output_dir, wait_text};
use super::metrics::{promtool_check, sample};
use super::online::{key_file, publisher_with_online_role, server};
use super::reports::{Fleet, OPERATOR, get, queued, stored_reports};

const TOKEN: &str = "fleet-run-agent-token";
const BASE: &str = "1.0.0";
const REVOKED: &str = "1.1.0";
const NEW: &str = "2.0.0";
const HALT_RULE: &str = "failed>20%,min=10";

/// Which share of 2.0.0's rollout an agent's id falls into.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Share {
    /// Bucket below 10.
    Ten,
    /// Bucket from 10 to 49.
    Fifty,
    /// Bucket 50 or more: never offered 2.0.0 here.
    Rest,
}

struct Member {
    agent: Agent,
    id: String,
    share: Share,
    bad: bool,
}

/// Twenty agent ids: 2 in the 10% share (1 bad), 8 more in the 50% share (2 bad), 10
/// outside it (1 bad, which never tries 2.0.0).
fn chosen_ids() -> Vec<(String, Share, bool)> {
    let want = [
        (Share::Ten, 2, 1),
        (Share::Fifty, 8, 2),
        (Share::Rest, 10, 1),
    ];
    let mut out = Vec::new();
    for (share, count, bad) in want {
        let ids = (0u64..)
            .map(|n| {
                let mut id = [0x5au8; 16];
                id[..8].copy_from_slice(&n.to_le_bytes());
                id
            })
            .filter(|id| {
                let b = rollout_bucket(id, "stable", NEW);
                match share {
                    Share::Ten => b < 10,
                    Share::Fifty => (10..50).contains(&b),
                    Share::Rest => b >= 50,
                }
            })
            .take(count);
        for (i, id) in ids.enumerate() {
            let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
            out.push((hex, share, i < bad));
        }
    }
    out
}

/// A root for `id`, reporting to `url` with a 1 s interval and a 2 s heartbeat; a bad
/// one's health check fails on 2.0.0 only.
fn member(url: &str, p: &Publisher, id: &str, share: Share, bad: bool) -> Member {
    let agent = Agent::init(url, "stable", &p.public_key(), &[]);
    let dot = agent.root().join(".ferry");
    std::fs::write(dot.join("agent_id"), format!("{id}\n")).unwrap();
    let _ = std::fs::remove_file(dot.join("agent_id.machine"));
    std::fs::write(dot.join("fleet-token"), format!("{TOKEN}\n")).unwrap();
    let health = if bad {
        r#"health_check = "test \"$FERRY_TO\" != 2.0.0""#
    } else {
        r#"health_check = "test -d \"$FERRY_CURRENT/bin\"""#
    };
    let label = if bad { "health=bad" } else { "health=good" };
    let config = format!(
        "interval = \"1s\"\njitter = 20\nheartbeat = \"2s\"\ntoken_file = \"fleet-token\"\n\
         give_up_after = \"1s\"\nhealth_retries = 1\nhealth_delay = \"0s\"\n\
         labels = [\"{label}\", \"site=lab\"]\n{health}\n"
    );
    let path = dot.join("config.toml");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(&config);
    std::fs::write(&path, text).unwrap();
    assert_eq!(
        agent.status()["agent_id"],
        id,
        "the chosen id is the agent's"
    );
    Member {
        agent,
        id: id.to_string(),
        share,
        bad,
    }
}

/// Waits (bounded) until `f` holds, showing `state()` when it does not.
fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool, state: impl Fn() -> String) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < limit,
            "{what}: not within {limit:?}\n{}",
            state()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("{what}: {:.1} s", start.elapsed().as_secs_f64());
}

/// `GET /v1/agents` as a map from agent id to its entry.
fn agents(f: &Fleet) -> std::collections::BTreeMap<String, Value> {
    f.agents()
        .into_iter()
        .map(|a| (a["agent_id"].as_str().unwrap().to_string(), a))
        .collect()
}

fn fleet_view(f: &Fleet) -> Value {
    let (status, body) = get(&f.addr(), "/v1/fleet", OPERATOR);
    assert_eq!(status, 200, "GET /v1/fleet: {body}");
    serde_json::from_str(&body).unwrap()
}

/// The counts of `version` in a `/v1/fleet` channel: agents, updating, staged, failed,
/// rolled back, refused, offline (zeros when it is not listed).
fn counts(channel: &Value, version: &str) -> [u64; 7] {
    let r = channel["releases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["version"] == version)
        .cloned()
        .unwrap_or(Value::Null);
    [
        "agents",
        "updating",
        "staged",
        "failed",
        "rolled_back",
        "refused",
        "offline",
    ]
    .map(|k| r[k].as_u64().unwrap_or(0))
}

fn all_report_ids(db: &Path) -> BTreeSet<String> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let mut stmt = conn.prepare("SELECT report_id FROM reports").unwrap();
    stmt.query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn admin(p: &Publisher, args: &[&str]) {
    let repo = p.repo();
    let key = p.key();
    let mut all = vec![
        args[0],
        "--repo",
        repo.to_str().unwrap(),
        "--channel",
        "stable",
    ];
    all.extend_from_slice(&["--key", key.to_str().unwrap()]);
    all.extend_from_slice(&args[1..]);
    assert_ok(&server(&all), &format!("ferry-server {args:?}"));
}

#[test]
fn twenty_agents_leave_a_revoked_release_and_a_failing_rollout_halts_itself() {
    let started = Instant::now();
    let sources = Sources::app(3);
    let p = publisher_with_online_role(&sources, &[]);
    p.publish(REVOKED, &sources.release(2));
    let online = key_file(&p, "online.key");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("agent-tokens"), format!("{TOKEN}\n")).unwrap();
    let serve_args = [
        "--timestamp-key",
        online.as_str(),
        "--halt-when",
        HALT_RULE,
        "--heartbeat-interval",
        "5s",
    ];
    let mut fleet = Fleet::start_with(&p.repo(), dir.path(), "127.0.0.1:0", &serve_args);
    let addr = fleet.addr();
    let members: Vec<Member> = chosen_ids()
        .into_iter()
        .map(|(id, share, bad)| member(&fleet.url, &p, &id, share, bad))
        .collect();
    let mut running: Vec<Running> = members
        .iter()
        .map(|m| Running::start(&m.agent, &[]))
        .collect();
    let logs = |running: &[Running]| {
        running
            .iter()
            .map(|r| r.log().lines().rev().take(3).collect::<Vec<_>>().join("\n"))
            .collect::<Vec<_>>()
            .join("\n--\n")
    };

    // 1. All on 1.1.0, then the revocation sends every one of them back to 1.0.0.
    let on = |f: &Fleet, version: &str| {
        let a = agents(f);
        a.len() == 20 && a.values().all(|a| a["active"] == version)
    };
    wait_for(
        "20 agents report 1.1.0",
        Duration::from_secs(120),
        || on(&fleet, REVOKED),
        || format!("{:#?}\n{}", agents(&fleet), logs(&running)),
    );
    admin(&p, &["revoke", "--version", REVOKED]);
    wait_for(
        "20 agents left the revoked 1.1.0",
        Duration::from_secs(60),
        || on(&fleet, BASE),
        || format!("{:#?}\n{}", agents(&fleet), logs(&running)),
    );
    for m in &members {
        let recalls: Vec<Value> = m
            .agent
            .history()
            .into_iter()
            .filter(|e| e["event"] == "recall")
            .collect();
        assert_eq!(recalls.len(), 1, "{}: {recalls:?}", m.id);
    }

    // 2. 2.0.0 at 10%: the two agents of that share try it, the bad one switches back.
    p.publish_with(NEW, &sources.release(3), &["--rollout", "10"]);
    let tried = |f: &Fleet, share: Share| {
        let a = agents(f);
        members.iter().filter(|m| m.share == share).all(|m| {
            let e = &a[&m.id];
            // Done with it: a good one is on 2.0.0 past its health check.
            if m.bad {
                e["active"] == BASE && e["previous"] == NEW
            } else {
                e["active"] == NEW && e["state"] == "idle"
            }
        })
    };
    wait_for(
        "the 10% share tried 2.0.0",
        Duration::from_secs(60),
        || tried(&fleet, Share::Ten),
        || format!("{:#?}\n{}", agents(&fleet), logs(&running)),
    );
    let ch = &fleet_view(&fleet)["channels"][0];
    assert_eq!(counts(ch, NEW), [1, 0, 0, 0, 1, 0, 0], "{ch:#}");
    assert_eq!(
        ch["rollout"]["halted"], false,
        "1 of 2 is not min=10: {ch:#}"
    );

    // 3. kill -9 while the agents run; every acknowledged report survives the restart.
    let db = dir.path().join("fleet.db");
    let acknowledged = all_report_ids(&db);
    assert!(acknowledged.len() >= 60, "{} reports", acknowledged.len());
    fleet.stop();
    let down = Instant::now();
    wait_for(
        "agents queue reports while the server is down",
        Duration::from_secs(20),
        || members.iter().map(|m| queued(&m.agent)).sum::<usize>() >= 5,
        || logs(&running),
    );
    fleet = Fleet::start_with(&p.repo(), dir.path(), &addr, &serve_args);
    eprintln!("server down for {:.1} s", down.elapsed().as_secs_f64());
    let after = all_report_ids(&db);
    let lost: Vec<_> = acknowledged.difference(&after).collect();
    assert!(lost.is_empty(), "acknowledged reports lost: {lost:?}");
    wait_for(
        "the queued reports are delivered",
        Duration::from_secs(30),
        || members.iter().all(|m| queued(&m.agent) == 0),
        || logs(&running),
    );
    assert!(all_report_ids(&db).len() > after.len());

    // 4. 50%: eight more try it, two fail; with the tenth the rollout halts itself.
    admin(&p, &["rollout", "--percent", "50"]);
    wait_for(
        "the rollout halts itself",
        Duration::from_secs(60),
        || fleet_view(&fleet)["channels"][0]["rollout"]["halted"] == true,
        || format!("{:#}\n{}", fleet_view(&fleet), logs(&running)),
    );
    wait_for(
        "the 50% share tried 2.0.0",
        Duration::from_secs(30),
        || tried(&fleet, Share::Fifty),
        || format!("{:#?}\n{}", agents(&fleet), logs(&running)),
    );
    // Several more checks of every agent: nobody else takes the halted release.
    std::thread::sleep(Duration::from_secs(4));
    let a = agents(&fleet);
    for m in &members {
        let e = &a[&m.id];
        let want = if m.share != Share::Rest && !m.bad {
            NEW
        } else {
            BASE
        };
        assert_eq!(e["active"], want, "{}: {e}", m.id);
        assert_eq!(e["offline"], false, "{e}");
        if m.bad && m.share != Share::Rest {
            assert_eq!(e["previous"], NEW, "{e}");
        }
        assert_eq!(e["labels"]["site"], "lab", "{e}");
    }

    // 5. The same counts in /v1/fleet, /metrics and the page.
    let view = fleet_view(&fleet);
    let ch = &view["channels"][0];
    assert_eq!(counts(ch, NEW), [7, 0, 0, 0, 3, 0, 0], "{ch:#}");
    assert_eq!(counts(ch, BASE), [13, 0, 0, 0, 0, 0, 0], "{ch:#}");
    assert_eq!(counts(ch, REVOKED), [0; 7], "{ch:#}");
    let rollout = &ch["rollout"];
    assert_eq!(
        (&rollout["release"], &rollout["percent"], &rollout["paused"]),
        (&Value::from(NEW), &Value::from(0), &Value::from(true)),
        "{rollout}"
    );
    let reason = rollout["halt_reason"].as_str().unwrap();
    assert!(
        reason.contains("3 of 10 agents that tried 2.0.0"),
        "{reason}"
    );
    let failures: BTreeSet<&str> = ch["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["agent_id"].as_str().unwrap())
        .collect();
    let bad_tried: BTreeSet<&str> = members
        .iter()
        .filter(|m| m.bad && m.share != Share::Rest)
        .map(|m| m.id.as_str())
        .collect();
    assert_eq!(failures, bad_tried, "{ch:#}");
    assert!(ch["offline"].as_array().unwrap().is_empty(), "{ch:#}");
    // The rollbacks are the failed updates; the checks that found no server while it
    // was down tried no update.
    assert_eq!(ch["updates_failed"], 3, "{ch:#}");
    assert!(ch["checks_failed"].as_u64().unwrap() >= 1, "{ch:#}");
    let saved = ch["bytes_saved"].as_u64().unwrap();
    assert!(saved > 0, "{ch:#}");
    eprintln!("/v1/fleet stable channel: {ch:#}");

    let (_, metrics) = super::metrics::get(&fleet.url, "/metrics");
    promtool_check(&metrics);
    let gauge = |name: &str| sample(&metrics, name);
    for (name, want) in [
        (
            r#"ferry_agents{channel="stable",release="2.0.0",state="idle"}"#,
            7.0,
        ),
        (
            r#"ferry_agents{channel="stable",release="1.0.0",state="idle"}"#,
            13.0,
        ),
        (
            r#"ferry_release_agents{channel="stable",release="2.0.0",outcome="rolled_back"}"#,
            3.0,
        ),
        (
            r#"ferry_release_agents{channel="stable",release="2.0.0",outcome="failed"}"#,
            0.0,
        ),
        (
            r#"ferry_rollout_percent{channel="stable",release="2.0.0"}"#,
            0.0,
        ),
        (r#"ferry_rollout_halted{channel="stable"}"#, 1.0),
        (r#"ferry_rollout_paused{channel="stable"}"#, 1.0),
        (r#"ferry_rollout_halts_total{channel="stable"}"#, 1.0),
        (r#"ferry_agents_offline{channel="stable"}"#, 0.0),
        (r#"ferry_fleet_saved_bytes{channel="stable"}"#, saved as f64),
    ] {
        assert_eq!(gauge(name), want, "{name} in:\n{metrics}");
    }
    // The two failures after the restart went through the live counters too.
    assert_eq!(
        gauge(r#"ferry_update_outcomes_total{channel="stable",outcome="rolled_back"}"#),
        2.0,
        "{metrics}"
    );

    let screenshot = page(&fleet.url);
    eprintln!("screenshot: {}", screenshot.display());

    // 6. The audit: the revocation, the halt and the outcomes, signed; an edit fails it.
    let audit_dir = p.dir.path().join("keys");
    assert_ok(
        &server(&[
            "key",
            "gen",
            "--out",
            audit_dir.to_str().unwrap(),
            "--name",
            "audit",
        ]),
        "key gen audit",
    );
    let repo = p.repo();
    let out = server(&[
        "audit",
        "export",
        "--repo",
        repo.to_str().unwrap(),
        "--fleet-db",
        db.to_str().unwrap(),
        "--since",
        "2020-01-01",
        "--format",
        "json",
        "--sign",
        &key_file(&p, "audit.key"),
    ]);
    assert_ok(&out, "audit export --sign");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let body = if report["report"].is_object() {
        &report["report"]
    } else {
        &report
    };
    let c = &body["counts"];
    assert_eq!(c["revoked"], 1, "{c}");
    assert_eq!(c["halted"], 1, "{c}");
    assert_eq!(c["agent-rolled-back"], 3, "{c}");
    let signed = dir.path().join("audit.json");
    std::fs::write(&signed, &out.stdout).unwrap();
    let public = key_file(&p, "audit.pub");
    let verify = |file: &Path| {
        server(&[
            "audit",
            "verify",
            file.to_str().unwrap(),
            "--public-key",
            &public,
        ])
    };
    assert_ok(&verify(&signed), "audit verify");
    let text = String::from_utf8(out.stdout.clone()).unwrap();
    let tampered = text.replacen("\"agent-rolled-back\":3", "\"agent-rolled-back\":2", 1);
    assert_ne!(tampered, text, "the edit changes the report");
    let edited = dir.path().join("audit-edited.json");
    std::fs::write(&edited, tampered).unwrap();
    let out = verify(&edited);
    assert!(!out.status.success(), "an edited audit report verified");
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("changed after it was signed"), "{e}");

    // Every root runs a release that verifies and is the published tree.
    for r in &mut running {
        r.kill();
    }
    for m in &members {
        assert_ok(&m.agent.ferry("verify", &[]), "verify");
        let k = if m.agent.active().as_deref() == Some(NEW) {
            3
        } else {
            1
        };
        tree_eq(&m.agent.current(), &sources.release(k));
    }
    let stored = stored_reports(&db, &members[0].id);
    eprintln!(
        "fleet run took {:.1} s; {} reports stored, {} from agent {}",
        started.elapsed().as_secs_f64(),
        all_report_ids(&db).len(),
        stored.len(),
        members[0].id
    );
}

/// Loads `/fleet` in headless Chromium, waits for the run's counts and saves a
/// screenshot; returns its path.
fn page(url: &str) -> std::path::PathBuf {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let driver = Driver::start();
    let path = rt.block_on(async {
        let c = driver.session().await;
        let result = drive(&c, url).await;
        let _ = c.close().await;
        result
    });
    drop(driver);
    path.unwrap_or_else(|e| panic!("{e}"))
}

async fn drive(c: &fantoccini::Client, url: &str) -> Result<std::path::PathBuf, String> {
    let fail = |e: fantoccini::error::CmdError| e.to_string();
    c.goto(&format!("{url}/fleet")).await.map_err(fail)?;
    c.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css("#login:not([hidden])"))
        .await
        .map_err(fail)?;
    let input = c.find(Locator::Id("token")).await.map_err(fail)?;
    input.send_keys(OPERATOR).await.map_err(fail)?;
    c.find(Locator::Id("login-submit"))
        .await
        .map_err(fail)?
        .click()
        .await
        .map_err(fail)?;
    let t = Duration::from_secs(15);
    let ch = r#"section[data-channel="stable"]"#;
    let row = |v: &str| format!(r#"{ch} tr[data-release="{v}"]"#);
    wait_text(c, "#total-agents", "20", t).await;
    wait_text(c, "#total-offline", "0", t).await;
    wait_text(c, "#total-failures", "3", t).await;
    for (version, field, want) in [
        (NEW, "agents", "7"),
        (NEW, "rolled_back", "3"),
        (NEW, "failed", "0"),
        (BASE, "agents", "13"),
    ] {
        let css = format!(r#"{} td[data-field="{field}"]"#, row(version));
        wait_text(c, &css, want, t).await;
    }
    wait_text(c, &format!(r#"{ch} [data-field="updates-failed"]"#), "3", t).await;
    wait_text(
        c,
        &format!(r#"{ch} [data-field="rollout-release"]"#),
        NEW,
        t,
    )
    .await;
    wait_text(
        c,
        &format!(r#"{ch} [data-field="rollout-percent"]"#),
        "0",
        t,
    )
    .await;
    let halted = c
        .find(Locator::Css(&format!(
            r#"{ch} [data-field="rollout-halted"]"#
        )))
        .await
        .map_err(fail)?;
    assert!(
        halted.is_displayed().await.map_err(fail)?,
        "no halted badge"
    );
    assert!(!displayed(c, "login").await, "token form still shown");
    let png = c.screenshot().await.map_err(fail)?;
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    let dir = output_dir();
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let path = dir.join("fleet-run.png");
    std::fs::write(&path, &png).map_err(|e| e.to_string())?;
    Ok(path.canonicalize().unwrap())
}

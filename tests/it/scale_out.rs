//! Two `ferry-server` instances on one bucket and one PostgreSQL, as behind a load
//! balancer (docs/DEPLOY.md, "Object storage, N servers, PostgreSQL"): real agents
//! update through either and report to either, both show one fleet, and a failing
//! rollout halts once, in the bucket's head.

use ferry_tests::postgres::Postgres;
use ferry_tests::{Agent, Server};
use serde_json::Value;

use super::fixtures::{tree_eq, v};
use super::fleet::{AGENT_TOKEN, OPERATOR_TOKEN, fleet_args_on, get_text, http};
use super::s3::Bucket;

/// `GET path` with the operator token, without the moment it was computed.
fn view(srv: &Server, path: &str) -> Value {
    let (status, mut body) = http(&srv.url, "GET", path, Some(OPERATOR_TOKEN), b"");
    assert_eq!(status, 200, "{path}: {body}");
    body["generated_at"] = Value::Null;
    body
}

/// The counts of `version` in the channel's view: agents on it, rolled back from it.
fn counts(fleet: &Value, version: &str) -> (u64, u64) {
    let releases = fleet["channels"][0]["releases"].as_array().unwrap();
    let r = releases
        .iter()
        .find(|r| r["version"] == version)
        .cloned()
        .unwrap_or(Value::Null);
    (
        r["agents"].as_u64().unwrap_or(0),
        r["rolled_back"].as_u64().unwrap_or(0),
    )
}

/// An agent of `srv` that reports to it; a bad one's health check fails on 2.0.0.
fn agent(b: &Bucket, srv: &Server, bad: bool) -> Agent {
    let agent = Agent::init(&srv.url, "stable", &b.p.public_key(), &[]);
    let dot = agent.root().join(".ferry");
    std::fs::write(dot.join("fleet-token"), format!("{AGENT_TOKEN}\n")).unwrap();
    let health = if bad {
        r#"health_check = "test \"$FERRY_TO\" != 2.0.0""#
    } else {
        r#"health_check = "test -d \"$FERRY_CURRENT/bin\"""#
    };
    let path = dot.join("config.toml");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(&format!(
        "token_file = \"fleet-token\"\nhealth_retries = 1\nhealth_delay = \"0s\"\n{health}\n"
    ));
    std::fs::write(&path, text).unwrap();
    agent
}

/// `ferry agent --once`: one check, the update if any, the report delivered.
fn once(agent: &Agent) -> String {
    let out = agent.ferry("agent", &["--once"]);
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The sequence of the bucket's head, from `ls`.
fn head_sequence(b: &Bucket) -> u64 {
    let text = b.ls();
    let line = text.lines().next().unwrap_or_default().to_string();
    let mut words = line.split_whitespace().skip_while(|w| *w != "sequence");
    words
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{text}"))
}

#[test]
fn two_servers_on_one_bucket_and_one_database_are_one_fleet_and_halt_once() {
    let b = Bucket::new("fleet", 2);
    let pg = Postgres::start();
    let db = pg.database("fleet");

    // Key list 1 with an online role, written into the bucket: the servers' key.
    b.key_list_with_online_role();
    let key = |name: &str| b.key(name);
    b.publish(1);

    // Both servers read the bucket and write the same database, with the same tokens.
    let tokens = tempfile::tempdir().unwrap();
    let mut args = fleet_args_on(tokens.path(), &db);
    args.extend(
        [
            "--timestamp-key",
            &key("online.key"),
            "--halt-when",
            "failed>20%,min=4",
        ]
        .map(String::from),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (one, two) = (b.serve(&args), b.serve(&args));
    for srv in [&one, &two] {
        let (status, body) = get_text(&srv.url, "/healthz");
        assert_eq!(status, 200, "{body}");
    }

    // Agents 1 and 2 update through the first server and report to it, 3 and 4
    // through the second; 1 and 3 will fail their health check on 2.0.0.
    let fleet = [
        agent(&b, &one, true),
        agent(&b, &one, false),
        agent(&b, &two, true),
        agent(&b, &two, false),
    ];
    for a in &fleet {
        once(a);
        assert_eq!(a.active().as_deref(), Some(v(1).as_str()));
        tree_eq(&a.current(), &b.sources.release(1));
    }
    let seen = view(&one, "/v1/fleet");
    assert_eq!(counts(&seen, &v(1)), (4, 0), "{seen:#}");
    assert_eq!(seen, view(&two, "/v1/fleet"));
    assert_eq!(view(&one, "/v1/agents"), view(&two, "/v1/agents"));

    // Release 2 to everyone: after the fourth outcome, 2 of 4 failed (above 20%, at
    // least 4 tried) and the second server halts the rollout in the bucket's head.
    b.publish(2);
    let published = head_sequence(&b);
    for a in &fleet {
        let log = once(a);
        assert!(
            a.active().as_deref() == Some(v(1).as_str())
                || a.active().as_deref() == Some(v(2).as_str()),
            "{log}"
        );
    }
    let actives: Vec<_> = fleet.iter().map(|a| a.active().unwrap()).collect();
    assert_eq!(
        actives,
        [v(1), v(2), v(1), v(2)],
        "the bad agents rolled back"
    );
    tree_eq(&fleet[1].current(), &b.sources.release(2));
    assert_eq!(
        head_sequence(&b),
        published + 1,
        "one server re-signed the head once, pausing 2.0.0"
    );
    assert_eq!(pg.psql("fleet", "SELECT count(*) FROM halts"), "1");
    let seen = view(&two, "/v1/fleet");
    let rollout = &seen["channels"][0]["rollout"];
    assert_eq!(rollout["release"], v(2), "{seen:#}");
    assert_eq!(rollout["percent"], 0, "{seen:#}");
    assert_eq!(rollout["halted"], true, "{seen:#}");
    assert_eq!(counts(&seen, &v(2)), (2, 2), "{seen:#}");
    assert_eq!(counts(&seen, &v(1)), (2, 0), "{seen:#}");
    assert_eq!(seen, view(&one, "/v1/fleet"), "either server shows it");

    // An agent enrolled by the first server reports to the second with its
    // credential: its heartbeat lands in the one fleet.
    let agent_id = fleet[0].status()["agent_id"].as_str().unwrap().to_string();
    let last_seen = |srv: &Server| -> u64 {
        let agents = view(srv, "/v1/agents");
        agents["agents"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["agent_id"] == agent_id.as_str())
            .and_then(|a| a["last_seen"].as_u64())
            .unwrap_or_else(|| panic!("{agents:#}"))
    };
    let before = last_seen(&one);
    let config = fleet[0].root().join(".ferry/config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace(&one.url, &two.url)).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let log = once(&fleet[0]);
    assert!(
        !log.contains("enrolled with the fleet server"),
        "no second enrollment: {log}"
    );
    assert!(last_seen(&one) > before, "{log}");
    assert_eq!(fleet[0].active().as_deref(), Some(v(1).as_str()), "paused");
    one.terminate();
    two.terminate();
}

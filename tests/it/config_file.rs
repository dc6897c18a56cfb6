//! `ROOT/.ferry/config.toml`: what `ferry init` writes, what an operator may edit, and
//! the migration of a root made by an older ferry (`config.json`).

use ferry_tests::{Agent, Publisher, assert_ok};

use super::fixtures::{Sources, tree_eq, v};

fn read(agent: &Agent, name: &str) -> String {
    std::fs::read_to_string(agent.root().join(".ferry").join(name)).unwrap()
}

#[test]
fn a_root_with_the_old_config_json_is_migrated_on_first_use_and_keeps_working() {
    let p = Publisher::new("stable");
    let sources = Sources::app(2);
    p.publish(&v(1), &sources.release(1));
    let srv = p.serve();
    let agent = Agent::init(&srv.url, "stable", &p.public_key(), &[]);
    agent.update();
    assert_eq!(agent.active().as_deref(), Some("1.0.0"));

    // The root as an older ferry left it: config.json, no config.toml.
    let key = std::fs::read_to_string(p.public_key()).unwrap();
    let old = serde_json::json!({
        "schema": 1, "server": srv.url, "channel": "stable", "public_key": key.trim(),
        "keep": 2, "carry": ["logs/"], "max_clock_skew_secs": 300, "lock_timeout_secs": 30,
        "low_speed_time_secs": 90,
    });
    let json = agent.root().join(".ferry/config.json");
    let toml = agent.root().join(".ferry/config.toml");
    std::fs::remove_file(&toml).unwrap();
    std::fs::write(&json, serde_json::to_vec_pretty(&old).unwrap()).unwrap();
    p.publish(&v(2), &sources.release(2));

    let out = agent.ferry("status", &["--json"]);
    assert_ok(&out, "status");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("converted").count(), 1, "{err}");
    assert!(
        err.contains("config.json") && err.contains("config.toml"),
        "{err}"
    );
    assert!(!json.exists());
    let text = read(&agent, "config.toml");
    for line in [
        "channel = \"stable\"".to_string(),
        format!("servers = [\"{}\"]", srv.url),
        "keep = 2".into(),
        "max_clock_skew = \"5m\"".into(),
        "lock_timeout = \"30s\"".into(),
        "low_speed_time = \"90s\"".into(),
        "carry = [\"logs/\"]".into(),
        format!("public_key = \"{}\"", key.trim()),
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
    }
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["active"], "1.0.0");

    // Updates under the converted file, which is said once only.
    let out = agent.ferry("update", &[]);
    assert_ok(&out, "update");
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("converted"),
        "said twice"
    );
    assert_eq!(agent.active().as_deref(), Some("2.0.0"));
    tree_eq(&agent.root().join("current"), &sources.release(2));

    // A crash between writing config.toml and removing config.json: the toml wins
    // (here the json names another channel) and the leftover is removed silently.
    let mut stale = old.clone();
    stale["channel"] = "beta".into();
    std::fs::write(&json, serde_json::to_vec(&stale).unwrap()).unwrap();
    let out = agent.ferry("status", &["--json"]);
    assert_ok(&out, "status");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("converted"));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["channel"], "stable");
    assert!(!json.exists());
}

#[test]
fn init_writes_every_server_and_comments_the_unset_keys_and_a_mistyped_key_is_named() {
    let p = Publisher::new("stable");
    let sources = Sources::app(1);
    p.publish(&v(1), &sources.release(1));
    let srv = p.serve();
    // The second server is never asked: requests go to the first.
    let mirror = "http://127.0.0.1:9/mirror";
    let agent = Agent::init(
        &srv.url,
        "stable",
        &p.public_key(),
        &["--server", mirror, "--max-clock-skew", "2h"],
    );
    let text = read(&agent, "config.toml");
    let servers = format!("servers = [\"{}\", \"{mirror}\"]", srv.url);
    assert!(text.lines().any(|l| l == servers), "{text}");
    assert!(
        text.lines().any(|l| l == "max_clock_skew = \"2h\""),
        "{text}"
    );
    for key in [
        "lock_timeout",
        "ca_file",
        "proxy",
        "low_speed_limit",
        "low_speed_time",
        "carry",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(&format!("# {key} = "))),
            "{key} not listed:\n{text}"
        );
    }
    agent.update();
    tree_eq(&agent.root().join("current"), &sources.release(1));
    assert_eq!(agent.status()["servers"][1], mirror);

    // A typo is an error naming the key and the file, not a setting silently ignored.
    let path = agent.root().join(".ferry/config.toml");
    std::fs::write(&path, format!("{text}kep = 5\n")).unwrap();
    let err = agent.update_fails();
    assert!(err.contains("unknown field `kep`"), "{err}");
    assert!(err.contains("config.toml"), "{err}");
    std::fs::write(&path, &text).unwrap();
    assert_eq!(agent.status()["active"], "1.0.0");
}

//! Recall and label targeting against the real `ferry-server` and `ferry` (FORMAT.md
//! §5.3, §5.4): `ferry-server revoke` makes agents on the revoked release go back to
//! the newest release they may run that is not revoked (by hand and as `ferry agent
//! --once`), with the hooks and a `recall` history event, never reinstalling it, not
//! even with `--force`; a later release moves them forward again. A release published
//! with `--rollout-labels` reaches only agents with those labels, and `rollout
//! --labels` changes whom it reaches. Only publishing keys do either.

use std::io::Write;

use ferry_tests::{Agent, Publisher, assert_ok};
use serde_json::Value;

use super::fixtures::{Sources, tree_eq, v};
use super::online::{head, key_file, publisher_with_online_role, server};

/// Appends keys to the root's config.toml (every key is top-level).
fn configure(agent: &Agent, lines: &[&str]) {
    let path = agent.root().join(".ferry/config.toml");
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    for l in lines {
        writeln!(f, "{l}").unwrap();
    }
}

/// `ferry agent --once`, asserting success; returns the log.
fn once(agent: &Agent) -> String {
    let out = agent.ferry("agent", &["--once"]);
    assert_ok(&out, "agent --once");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `ferry-server SUBCOMMAND --repo R --channel stable ARGS`.
fn admin(p: &Publisher, subcommand: &str, args: &[&str]) -> std::process::Output {
    let repo = p.repo();
    let mut all = vec![
        subcommand,
        "--repo",
        repo.to_str().unwrap(),
        "--channel",
        "stable",
    ];
    all.extend_from_slice(args);
    server(&all)
}

fn admin_json(p: &Publisher, subcommand: &str, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let out = admin(p, subcommand, &all);
    assert_ok(&out, &format!("{subcommand} {args:?}"));
    serde_json::from_slice(&out.stdout).expect("--json prints JSON")
}

/// Runs a command that must be refused, leaving the head as it was; returns stderr.
fn refused(p: &Publisher, subcommand: &str, args: &[&str]) -> String {
    let before = std::fs::read(p.head_file()).unwrap();
    let out = admin(p, subcommand, args);
    assert!(
        !out.status.success(),
        "{subcommand} {args:?} should be refused: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        std::fs::read(p.head_file()).unwrap(),
        before,
        "a refused {subcommand} leaves the head as it was"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn events(agent: &Agent, kind: &str) -> Vec<Value> {
    agent
        .history()
        .into_iter()
        .filter(|e| e["event"] == kind)
        .collect()
}

fn held_back_reason(agent: &Agent, version: &str) -> String {
    let status = agent.status();
    status["held_back"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["version"] == version)
        .and_then(|h| h["reason"].as_str())
        .unwrap_or_else(|| panic!("{version} not held back: {status}"))
        .to_string()
}

#[test]
fn a_revoked_release_is_left_for_the_newest_one_not_revoked_and_never_reinstalled() {
    let sources = Sources::app(3);
    let p = publisher_with_online_role(&sources, &[]);
    p.publish(&v(2), &sources.release(2));
    let srv = p.serve();
    let key = p.key();
    let key = key.to_str().unwrap();
    let by_hand = Agent::init(&srv.url, "stable", &p.public_key(), &[]);
    let agent = Agent::init(&srv.url, "stable", &p.public_key(), &[]);
    configure(
        &agent,
        &["post_switch = \"echo \\\"$FERRY_FROM>$FERRY_TO\\\" >> hooks.log\""],
    );
    assert_eq!(by_hand.update()["to"], v(2));
    once(&agent);
    assert_eq!(agent.active(), Some(v(2)));

    // Refused: a version the channel does not list, and the online key.
    let e = refused(&p, "revoke", &["--key", key, "--version", "9.9.9"]);
    assert!(e.contains("lists no release 9.9.9"), "{e}");
    let online = key_file(&p, "online.key");
    let e = refused(&p, "revoke", &["--key", &online, "--version", &v(2)]);
    assert!(
        e.contains("is the repository's online key") && e.contains("needs publishing keys"),
        "{e}"
    );

    let before = head(&p);
    let report = admin_json(&p, "revoke", &["--key", key, "--version", &v(2)]);
    assert_eq!(report["revoked"], serde_json::json!([v(2)]), "{report}");
    assert_eq!(report["newest_not_revoked"], v(1));
    let after = head(&p);
    assert_eq!(after.content.sequence, before.content.sequence + 1);
    assert!(after.is_revoked(&v(2)) && !after.is_revoked(&v(1)));
    let content = after.content_bytes();
    assert_eq!(u16::from_le_bytes([content[4], content[5]]), 4);
    // Revoking it again, or the last release not revoked, is refused.
    // The audit trail has the revocation, with the key that signed it.
    let repo = p.repo();
    let audit = server(&[
        "audit",
        "export",
        "--repo",
        repo.to_str().unwrap(),
        "--since",
        "2000-01-01",
        "--format",
        "json",
    ]);
    assert_ok(&audit, "audit export");
    let audit: Value = serde_json::from_slice(&audit.stdout).unwrap();
    assert!(
        audit["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["event"] == "revoked" && e["release"] == v(2).as_str()),
        "{audit}"
    );
    let e = refused(&p, "revoke", &["--key", key, "--version", &v(2)]);
    assert!(e.contains("already revoked"), "{e}");
    let e = refused(&p, "revoke", &["--key", key, "--version", &v(1)]);
    assert!(e.contains("nothing to go to"), "{e}");
    let ls = server(&["ls", "--repo", p.repo().to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&ls.stdout).contains("REVOKED"),
        "{}",
        String::from_utf8_lossy(&ls.stdout)
    );

    // By hand: back to 1.0.0, intact, recorded as a recall.
    let out = by_hand.update();
    assert_eq!((&out["from"], &out["to"]), (&v(2).into(), &v(1).into()));
    assert_eq!(out["recalled_from"], v(2));
    assert_eq!(by_hand.active(), Some(v(1)));
    tree_eq(&by_hand.current(), &sources.release(1));
    assert_ok(&by_hand.ferry("verify", &[]), "verify");
    let recalls = events(&by_hand, "recall");
    assert_eq!(recalls.len(), 1, "{recalls:?}");
    assert_eq!(
        (&recalls[0]["from"], &recalls[0]["to"]),
        (&v(2).into(), &v(1).into())
    );

    // The agent: the same, with its hooks.
    let log = once(&agent);
    assert!(
        log.contains("2.0.0 was revoked by the publisher: recalling to 1.0.0"),
        "{log}"
    );
    assert_eq!(agent.active(), Some(v(1)));
    tree_eq(&agent.current(), &sources.release(1));
    assert_ok(&agent.ferry("verify", &[]), "verify");
    assert_eq!(events(&agent, "recall").len(), 1);
    let hooks = std::fs::read_to_string(agent.root().join("hooks.log")).unwrap();
    assert_eq!(
        hooks, ">2.0.0\n2.0.0>1.0.0\n",
        "post_switch runs for the recall"
    );

    // Never again, not even forced; status says why.
    for a in [&by_hand, &agent] {
        let out = a.update_with(&["--force"]);
        assert_eq!(out["to"], v(1), "{out}");
        once(a);
        assert_eq!(a.active(), Some(v(1)));
        assert_eq!(held_back_reason(a, &v(2)), "revoked by the publisher");
    }
    assert_eq!(events(&by_hand, "recall").len(), 1, "recorded once");

    // A new release moves them forward; the revocation stays while 2.0.0 is listed.
    p.publish(&v(3), &sources.release(3));
    assert!(head(&p).is_revoked(&v(2)));
    assert_eq!(by_hand.update()["to"], v(3));
    once(&agent);
    for a in [&by_hand, &agent] {
        assert_eq!(a.active(), Some(v(3)));
        tree_eq(&a.current(), &sources.release(3));
    }
}

#[test]
fn rollout_labels_offer_a_release_only_to_agents_with_them() {
    let sources = Sources::app(2);
    let p = publisher_with_online_role(&sources, &[]);
    let srv = p.serve();
    let key = p.key();
    let key = key.to_str().unwrap();
    let eu = Agent::init(&srv.url, "stable", &p.public_key(), &[]);
    let us = Agent::init(&srv.url, "stable", &p.public_key(), &[]);
    let plain = Agent::init(&srv.url, "stable", &p.public_key(), &[]);
    configure(&eu, &["labels = [\"region=eu\", \"tier=web\"]"]);
    configure(&us, &["labels = [\"region=us\"]"]);
    for a in [&eu, &us, &plain] {
        once(a);
        assert_eq!(a.active(), Some(v(1)));
    }

    let report = p.publish_with(
        &v(2),
        &sources.release(2),
        &["--rollout-labels", "region=eu"],
    );
    assert_eq!(report["rollout_labels"], serde_json::json!(["region=eu"]));
    assert_eq!(head(&p).rollout_labels_of(&v(2)).to_string(), "region=eu");
    once(&eu);
    assert_eq!(eu.active(), Some(v(2)));
    tree_eq(&eu.current(), &sources.release(2));
    let log = once(&us);
    assert_eq!(us.active(), Some(v(1)));
    assert!(
        log.contains("offered only to agents labelled region=eu"),
        "{log}"
    );
    assert_eq!(
        held_back_reason(&us, &v(2)),
        "offered only to agents labelled region=eu: requires label region=eu, this agent has region=us"
    );
    once(&plain);
    assert_eq!(plain.active(), Some(v(1)));
    assert!(
        held_back_reason(&plain, &v(2)).contains("this agent has no label region"),
        "{}",
        held_back_reason(&plain, &v(2))
    );
    // `--force` overrides bad marks, not the publisher's targeting.
    assert_eq!(us.update_with(&["--force"])["to"], v(1));

    // Only publishing keys retarget.
    let online = key_file(&p, "online.key");
    let e = refused(
        &p,
        "rollout",
        &["--timestamp-key", &online, "--labels", "region=us"],
    );
    assert!(e.contains("--labels needs publishing keys"), "{e}");
    let r = admin_json(&p, "rollout", &["--key", key, "--labels", "region=us"]);
    assert_eq!(r["labels"], serde_json::json!(["region=us"]), "{r}");
    assert_eq!(r["percent"], 100);
    once(&us);
    assert_eq!(us.active(), Some(v(2)));
    once(&plain);
    assert_eq!(plain.active(), Some(v(1)));
    // The eu agent keeps what it installed: targeting only decides who is offered it.
    once(&eu);
    assert_eq!(eu.active(), Some(v(2)));

    // Labels that are requirements' keys are refused; --every-agent drops the targeting.
    let e = refused(&p, "rollout", &["--key", key, "--labels", "os=linux"]);
    assert!(e.contains("not a label"), "{e}");
    let r = admin_json(&p, "rollout", &["--key", key, "--every-agent"]);
    assert_eq!(r["labels"], serde_json::json!([]), "{r}");
    once(&plain);
    assert_eq!(plain.active(), Some(v(2)));
    tree_eq(&plain.current(), &sources.release(2));
}

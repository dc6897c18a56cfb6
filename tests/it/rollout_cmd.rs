//! `ferry-server rollout` against the real agent: raising needs publishing keys,
//! pausing works with the online key, `--resume` needs publishing keys and restores
//! the percentage the publisher signed before the pause, whoever paused.

use ferry_tests::{Agent, Publisher, assert_ok};
use serde_json::Value;

use super::fixtures::{Sources, tree_eq, v};
use super::online::{head, key_file, publisher_with_online_role, server};

/// `ferry-server rollout --repo R --channel stable ARGS`.
fn rollout(p: &Publisher, args: &[&str]) -> std::process::Output {
    let repo = p.repo();
    let mut all = vec![
        "rollout",
        "--repo",
        repo.to_str().unwrap(),
        "--channel",
        "stable",
    ];
    all.extend_from_slice(args);
    server(&all)
}

fn rollout_ok(p: &Publisher, args: &[&str]) -> String {
    let out = rollout(p, args);
    assert_ok(&out, &format!("rollout {args:?}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn rollout_json(p: &Publisher, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    serde_json::from_str(&rollout_ok(p, &all)).expect("rollout --json prints JSON")
}

fn rollout_refused(p: &Publisher, args: &[&str]) -> String {
    let before = std::fs::read(p.head_file()).unwrap();
    let out = rollout(p, args);
    assert!(
        !out.status.success(),
        "rollout {args:?} should be refused: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        std::fs::read(p.head_file()).unwrap(),
        before,
        "a refused rollout leaves the head as it was"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn rollout_raises_with_publishing_keys_pauses_online_and_resumes_with_publishing_keys() {
    let sources = Sources::app(2);
    let p = publisher_with_online_role(&sources, &[]);
    let srv = p.serve();
    let key = p.key();
    let key = key.to_str().unwrap();
    let online = key_file(&p, "online.key");
    let early = Agent::init(&srv.url, "stable", &p.public_key(), &[]);
    assert_eq!(early.update()["to"], v(1));

    // Published at 0%: nobody moves.
    p.publish_with(&v(2), &sources.release(2), &["--rollout", "0"]);
    early.ferry("update", &[]);
    assert_eq!(early.active(), Some(v(1)));
    let fresh = Agent::init(&srv.url, "stable", &p.public_key(), &[]);
    fresh.ferry("update", &[]);
    assert_ne!(fresh.active(), Some(v(2)));

    // The online key cannot raise it; publishing keys can.
    let e = rollout_refused(&p, &["--timestamp-key", &online, "--percent", "50"]);
    assert!(
        e.contains("can only lower or pause") && e.contains("needs publishing keys (--key)"),
        "{e}"
    );
    let line = rollout_ok(&p, &["--key", key, "--percent", "100"]);
    assert!(line.starts_with("rollout stable: 2.0.0 at 100% "), "{line}");
    assert_eq!(head(&p).rollout_of(&v(2)), 100);
    assert_eq!(early.update()["to"], v(2));
    tree_eq(&early.current(), &sources.release(2));

    // Paused with the online key: a new agent is not selected.
    let r = rollout_json(&p, &["--timestamp-key", &online, "--pause"]);
    assert_eq!(
        (
            &r["release"],
            &r["percent"],
            &r["paused"],
            &r["signed_percent"]
        ),
        (
            &Value::from(v(2)),
            &Value::from(0),
            &Value::from(true),
            &Value::from(100)
        ),
        "{r}"
    );
    let publisher_sequence = r["publisher_sequence"].as_u64().unwrap();
    let late = Agent::init(&srv.url, "stable", &p.public_key(), &[]);
    late.ferry("update", &[]);
    assert_ne!(late.active(), Some(v(2)));

    // Resuming needs publishing keys...
    let e = rollout_refused(&p, &["--timestamp-key", &online, "--resume"]);
    assert!(
        e.contains("resuming 2.0.0 needs publishing keys (--key)"),
        "{e}"
    );
    // ...which restore the signed percentage in new content (the agent that saw the
    // pause accepts it: a new publisher sequence).
    let r = rollout_json(&p, &["--key", key, "--resume"]);
    assert_eq!(
        (&r["percent"], &r["paused"]),
        (&Value::from(100), &Value::from(false))
    );
    assert_eq!(
        r["publisher_sequence"].as_u64(),
        Some(publisher_sequence + 1)
    );
    assert_eq!(late.update()["to"], v(2));
    tree_eq(&late.current(), &sources.release(2));

    // Nothing to resume now; percentages stop at 100.
    let e = rollout_refused(&p, &["--key", key, "--resume"]);
    assert!(
        e.contains("2.0.0 of channel \"stable\" is not paused: it is at 100%"),
        "{e}"
    );
    let e = rollout_refused(&p, &["--key", key, "--percent", "101"]);
    assert!(e.contains("101") && e.contains("0..=100"), "{e}");
    let e = rollout_refused(&p, &["--key", key]);
    assert!(e.contains("--percent") && e.contains("--pause"), "{e}");
}

/// A pause signed by publishing keys is also only an override: the content keeps
/// the 40% it signed, the online key still cannot lift it, `--resume --key` does.
#[test]
fn a_pause_by_publishing_keys_resumes_to_the_signed_percentage() {
    let sources = Sources::app(2);
    let p = publisher_with_online_role(&sources, &[]);
    let key = p.key();
    let key = key.to_str().unwrap();
    let online = key_file(&p, "online.key");
    p.publish_with(&v(2), &sources.release(2), &["--rollout", "40"]);
    let r = rollout_json(&p, &["--key", key, "--pause"]);
    assert_eq!(
        (&r["percent"], &r["paused"], &r["signed_percent"]),
        (&Value::from(0), &Value::from(true), &Value::from(40)),
        "{r}"
    );
    let h = head(&p);
    assert_eq!((h.rollout_of(&v(2)), h.content.rollout_of(&v(2))), (0, 40));
    let line = rollout_ok(&p, &["--timestamp-key", &online, "--pause"]);
    assert!(
        line.contains("paused (0%; --resume restores 40%)"),
        "{line}"
    );
    let e = rollout_refused(&p, &["--timestamp-key", &online, "--resume"]);
    assert!(e.contains("needs publishing keys"), "{e}");
    let line = rollout_ok(&p, &["--key", key, "--resume"]);
    assert!(line.starts_with("rollout stable: 2.0.0 at 40% "), "{line}");
    let h = head(&p);
    assert_eq!((h.rollout_of(&v(2)), h.rollout.len()), (40, 0));
    // Lowering with the online key is an override; publishing keys sign a new value.
    rollout_ok(&p, &["--timestamp-key", &online, "--percent", "10"]);
    assert_eq!(head(&p).rollout_of(&v(2)), 10);
    let e = rollout_refused(&p, &["--key", key, "--resume"]);
    assert!(e.contains("is not paused: it is at 10%"), "{e}");
    rollout_ok(&p, &["--key", key, "--percent", "0"]);
    let e = rollout_refused(&p, &["--key", key, "--resume"]);
    assert!(e.contains("the publisher signed 0%"), "{e}");
}

//! `ferry init --force` over a root that already follows a channel: to another channel
//! (whose head sequences and versions are lower) and to another publisher's key.

use std::path::Path;

use ferry_tests::{Agent, Publisher, assert_ok, bin, run};

use super::fixtures::{Sources, tree_eq, v};

fn server(args: &[&str]) -> std::process::Output {
    run(bin("ferry-server"), args)
}

/// Publishes `source` as `version` on `channel` of `p`'s repository with `key`.
fn publish_on(p: &Publisher, channel: &str, version: &str, source: &Path, key: &Path) {
    let (repo, key) = (p.repo(), key.to_str().unwrap().to_string());
    let out = server(&[
        "publish",
        "--repo",
        repo.to_str().unwrap(),
        "--key",
        &key,
        "--channel",
        channel,
        "--version",
        version,
        "--zstd-level",
        "3",
        source.to_str().unwrap(),
    ]);
    assert_ok(&out, "publish");
}

fn reinit(agent: &Agent, url: &str, channel: &str, key: &Path) -> String {
    let out = run(
        bin("ferry"),
        &[
            "init",
            "--force",
            "--root",
            agent.root().to_str().unwrap(),
            "--server",
            url,
            "--channel",
            channel,
            "--public-key",
            key.to_str().unwrap(),
        ],
    );
    assert_ok(&out, "init --force");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn init_force_to_another_channel_forgets_the_old_channels_anti_rollback_memory() {
    let p = Publisher::new("stable");
    let sources = Sources::app(3);
    p.publish(&v(1), &sources.release(1));
    let srv = p.serve();
    let agent = Agent::init(&srv.url, "stable", &p.public_key(), &[]);
    for k in 1..=3 {
        if k > 1 {
            p.publish(&v(k), &sources.release(k));
        }
        assert_eq!(agent.update()["to"], v(k));
    }
    // beta is younger: its head sequence and its versions are below stable's.
    publish_on(&p, "beta", "1.5.0", &sources.release(3), &p.key());
    // A rollback leaves a pin too.
    assert_eq!(agent.rollback(&[])["to"], v(2));

    let said = reinit(&agent, &srv.url, "beta", &p.public_key());
    let u = agent.update();
    assert_eq!(
        (u["from"].as_str(), u["to"].as_str()),
        (Some("2.0.0"), Some("1.5.0"))
    );
    tree_eq(&agent.current(), &sources.release(3));
    // What init said it reset and kept.
    for part in [
        "channel stable -> beta",
        "head sequence ",
        "highest version 3.0.0",
        "pin on 2.0.0 (rolled back from 3.0.0)",
        "installed releases kept: 1.0.0, 2.0.0, 3.0.0 (active: 2.0.0)",
    ] {
        assert!(said.contains(part), "{part:?} missing from: {said}");
    }
    assert_eq!(agent.status()["channel"], "beta");
    assert_ok(&agent.ferry("verify", &[]), "verify on beta");

    // The stable releases stay usable: a rollback to one re-verifies its stored
    // manifest (signed for stable) and switches to it.
    assert_eq!(agent.rollback(&["--to", "2.0.0"])["to"], v(2));
    tree_eq(&agent.current(), &sources.release(2));
    assert_ok(&agent.ferry("verify", &[]), "verify the stable release");

    // Re-initialising to the same channel and key keeps the memory.
    let said = reinit(&agent, &srv.url, "beta", &p.public_key());
    assert!(!said.contains("anti-rollback"), "{said}");
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(agent.root().join(".ferry/state.json")).unwrap())
            .unwrap();
    assert_eq!(state["last_sequence"], 1, "{state}");
}

#[test]
fn init_force_with_another_key_drops_key_lists_the_new_key_does_not_continue() {
    let p = Publisher::new("stable");
    let sources = Sources::app(2);
    p.publish(&v(1), &sources.release(1));
    let keys = p.dir.path().join("keys");
    let key = |f: &str| keys.join(f).to_str().unwrap().to_string();
    for name in ["root1", "pub2"] {
        assert_ok(
            &server(&[
                "key",
                "gen",
                "--out",
                keys.to_str().unwrap(),
                "--name",
                name,
            ]),
            "key gen",
        );
    }
    let repo = p.repo();
    assert_ok(
        &server(&[
            "key",
            "new-list",
            "--repo",
            repo.to_str().unwrap(),
            "--root",
            &key("root1.pub"),
            "--publisher",
            &key("pub2.pub"),
            "--sign",
            &key("ferry.key"),
            "--sign",
            &key("root1.key"),
            "--previous-key",
            &key("ferry.pub"),
        ]),
        "key new-list",
    );
    publish_on(
        &p,
        "stable",
        &v(2),
        &sources.release(2),
        &keys.join("pub2.key"),
    );
    publish_on(
        &p,
        "beta",
        "1.5.0",
        &sources.release(1),
        &keys.join("pub2.key"),
    );
    let srv = p.serve();
    let agent = Agent::init(&srv.url, "stable", &p.public_key(), &[]);
    assert_eq!(agent.update()["to"], v(2));
    let list1 = agent.root().join(".ferry/keys/1");
    assert!(list1.exists(), "key list 1 accepted");

    // Same key, another channel of the same repository: list 1 continues the key's
    // chain and stays the trust root.
    let said = reinit(&agent, &srv.url, "beta", &p.public_key());
    assert!(!said.contains("removed key list"), "{said}");
    assert!(list1.exists());
    assert_eq!(agent.update()["to"], "1.5.0");

    // Another publisher on the same channel name: its key must be the trust root,
    // not list 1 of the old one, and the old head sequence and versions are forgotten.
    let other = Publisher::new("beta");
    other.publish("0.9.0", &sources.release(2));
    let other_srv = other.serve();
    let said = reinit(&agent, &other_srv.url, "beta", &other.public_key());
    assert_eq!(agent.update()["to"], "0.9.0");
    tree_eq(&agent.current(), &sources.release(2));
    for part in [
        "removed key list(s)",
        ".ferry/keys/1",
        "a new trust root: reset the anti-rollback memory",
        "highest version 1.5.0",
    ] {
        assert!(said.contains(part), "{part:?} missing from: {said}");
    }
    assert!(!list1.exists());
}

//! Key lists against the real server and agent: moving from one key to a key list,
//! root rotation followed across skipped versions, revoked and insufficient keys,
//! key-list rollback, and refreshing an expired head without a release.

use std::path::PathBuf;

use ferry_format::envelope::TrustedKeys;
use ferry_format::head::{ChannelHead, ReleaseRef};
use ferry_format::id::{Digest, ObjectRef};
use ferry_format::keylist::{TrustRoot, key_list_ref};
use ferry_format::keys::SecretKey;
use ferry_format::verified::{verify_own_head, verify_pinned_manifest};
use ferry_tests::{Agent, Publisher, assert_ok, bin, run};

use super::fixtures::{Scene, Sources, tree_eq, v};

fn keys_dir(p: &Publisher) -> PathBuf {
    p.dir.path().join("keys")
}

fn server(args: &[&str]) -> std::process::Output {
    run(bin("ferry-server"), args)
}

fn keygen(p: &Publisher, name: &str) {
    let dir = keys_dir(p);
    assert_ok(
        &server(&["key", "gen", "--out", dir.to_str().unwrap(), "--name", name]),
        "key gen",
    );
}

fn key(p: &Publisher, file: &str) -> String {
    keys_dir(p).join(file).to_str().unwrap().to_string()
}

fn new_list(p: &Publisher, args: &[&str]) -> std::process::Output {
    let repo = p.repo();
    let mut all = vec!["key", "new-list", "--repo", repo.to_str().unwrap()];
    all.extend_from_slice(args);
    server(&all)
}

fn publish_with_keys(
    p: &Publisher,
    version: &str,
    src: &std::path::Path,
    keys: &[&str],
) -> std::process::Output {
    let repo = p.repo();
    let mut all = vec![
        "publish",
        "--repo",
        repo.to_str().unwrap(),
        "--channel",
        "stable",
        "--version",
        version,
        "--zstd-level",
        "3",
    ];
    for k in keys {
        all.push("--key");
        all.push(k);
    }
    all.push(src.to_str().unwrap());
    server(&all)
}

fn secret(path: &str) -> SecretKey {
    SecretKey::from_text(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Re-signs the served head after `edit`: `read_with` decodes it, `signers` sign it.
fn rewrite_head(
    p: &Publisher,
    read_with: &TrustedKeys,
    signers: &[&SecretKey],
    edit: impl FnOnce(&mut ChannelHead),
) {
    let bytes = std::fs::read(p.head_file()).unwrap();
    let mut head = (*verify_own_head(&bytes, read_with).unwrap()).clone();
    edit(&mut head);
    head.resign_content(signers).unwrap();
    std::fs::write(p.head_file(), head.sign(signers).unwrap()).unwrap();
}

#[test]
fn agents_follow_key_rotations_and_refuse_revoked_keys() {
    let p = Publisher::new("stable");
    let sources = Sources::app(4);
    p.publish(&v(1), &sources.release(1));
    let srv = p.serve();
    let early = Agent::init(&srv.url, "stable", &p.public_key(), &[]);
    let agent = Agent::init(&srv.url, "stable", &p.public_key(), &[]);
    agent.update();
    early.update();

    // Key list 1: an offline root key and a new publishing key, signed by the old
    // single key (which agents trust today) and the new root.
    for name in ["root1", "pub2", "root2", "pub3", "pub4"] {
        keygen(&p, name);
    }
    let out = new_list(
        &p,
        &[
            "--root",
            &key(&p, "root1.pub"),
            "--publisher",
            &key(&p, "pub2.pub"),
            "--sign",
            &key(&p, "ferry.key"),
            "--sign",
            &key(&p, "root1.key"),
            "--previous-key",
            &key(&p, "ferry.pub"),
        ],
    );
    assert_ok(&out, "key new-list 1");
    assert_ok(
        &publish_with_keys(&p, &v(2), &sources.release(2), &[&key(&p, "pub2.key")]),
        "publish 2",
    );

    let before = srv.requests().len();
    assert_eq!(agent.update()["to"], v(2));
    tree_eq(&agent.current(), &sources.release(2));
    let paths: Vec<String> = srv.requests()[before..]
        .iter()
        .map(|r| r.path.clone())
        .collect();
    assert_eq!(
        paths.iter().filter(|p| p.as_str() == "/keys/1").count(),
        1,
        "{paths:?}"
    );
    // The key list is fetched only when the head names a new one.
    let before = srv.requests().len();
    assert_eq!(agent.update()["requests"], 1);
    assert!(
        srv.requests()[before..]
            .iter()
            .all(|r| !r.path.starts_with("/keys/"))
    );

    // A list signed only by the new root would be refused by agents: the tool refuses it.
    let out = new_list(
        &p,
        &[
            "--root",
            &key(&p, "root2.pub"),
            "--publisher",
            &key(&p, "pub3.pub"),
            "--sign",
            &key(&p, "root2.key"),
        ],
    );
    assert!(
        !out.status.success(),
        "a list not signed by the previous root is refused"
    );

    // Key list 2 rotates the root and revokes pub2 for a 2-of-2 of pub3 and pub4.
    let out = new_list(
        &p,
        &[
            "--root",
            &key(&p, "root2.pub"),
            "--publisher",
            &key(&p, "pub3.pub"),
            "--publisher",
            &key(&p, "pub4.pub"),
            "--threshold",
            "2",
            "--sign",
            &key(&p, "root1.key"),
            "--sign",
            &key(&p, "root2.key"),
        ],
    );
    assert_ok(&out, "key new-list 2");
    // The revoked key and a single key of a 2-of-2 cannot publish.
    let out = publish_with_keys(&p, &v(3), &sources.release(3), &[&key(&p, "pub2.key")]);
    assert!(!out.status.success());
    let out = publish_with_keys(&p, &v(3), &sources.release(3), &[&key(&p, "pub3.key")]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("2 required"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_ok(
        &publish_with_keys(
            &p,
            &v(3),
            &sources.release(3),
            &[&key(&p, "pub3.key"), &key(&p, "pub4.key")],
        ),
        "publish 3 with 2 of 2",
    );

    // The agent at key list 1 follows to 2; the agent still on the single key follows
    // both rotations in one update.
    assert_eq!(agent.update()["to"], v(3));
    tree_eq(&agent.current(), &sources.release(3));
    let r = early.update();
    assert_eq!(r["to"], v(3));
    tree_eq(&early.current(), &sources.release(3));
    assert!(agent.root().join(".ferry/keys/2").exists());

    // An attacker holding the revoked pub2 signs a head for a new release: refused.
    let list2 = TrustRoot::from_stored(&std::fs::read(p.repo().join("keys/2")).unwrap()).unwrap();
    let k2 = secret(&key(&p, "pub2.key"));
    rewrite_head(&p, &list2.publishers(), &[&k2], |h| h.sequence += 10);
    let err = agent.update_fails();
    assert!(err.contains("signature"), "{err}");
    assert_eq!(agent.active().as_deref(), Some("3.0.0"));

    // A head pointing back at key list 1 (whose publisher was pub2) is refused, and so
    // is a head that claims key list 1 while signed by the current publishers.
    let list1 = std::fs::read(p.repo().join("keys/1")).unwrap();
    let pub2_only = TrustedKeys::single(k2.public());
    rewrite_head(&p, &pub2_only, &[&k2], |h| {
        h.sequence += 1;
        h.key_list = Some(key_list_ref(&list1).unwrap());
    });
    let err = agent.update_fails();
    assert!(err.contains("signature"), "{err}");
    let (k3, k4) = (secret(&key(&p, "pub3.key")), secret(&key(&p, "pub4.key")));
    rewrite_head(&p, &pub2_only, &[&k3, &k4], |h| h.sequence += 1);
    let err = agent.update_fails();
    assert!(err.contains("names key list version 1"), "{err}");
    tree_eq(&agent.current(), &sources.release(3));
}

#[test]
fn refresh_head_revives_an_expired_channel_without_a_release() {
    let Scene {
        p,
        sources: _sources,
        srv: _srv,
        agent,
    } = Scene::installed(Sources::app(1), &[]);
    // The head's lifetime ran out (re-signed as issued long ago).
    let k = secret(p.key().to_str().unwrap());
    rewrite_head(&p, &TrustedKeys::single(k.public()), &[&k], |h| {
        h.sequence += 1;
        h.issued_at = 1_000;
        h.expires_at = 2_000;
    });
    let err = agent.update_fails();
    assert!(err.contains("expired"), "{err}");

    let repo = p.repo();
    let out = server(&[
        "refresh-head",
        "--repo",
        repo.to_str().unwrap(),
        "--channel",
        "stable",
        "--key",
        p.key().to_str().unwrap(),
        "--expires-in",
        "1d",
    ]);
    assert_ok(&out, "refresh-head");
    let r = agent.update();
    assert_eq!(r["to"], v(1));
    assert_eq!(agent.active().as_deref(), Some("1.0.0"));
}

/// TUF 5.3.11, fast-forward attack: a key later revoked signs a head (and a release)
/// with a sequence and version far ahead; the agent takes it. Once the root rotates
/// the key out and the real publisher publishes again, the agent drops the marks the
/// revoked key vouched for and updates, without being initialised again.
#[test]
fn fast_forward_attack_is_recovered_after_the_key_is_revoked() {
    let p = Publisher::new("stable");
    let sources = Sources::app(3);
    for name in ["root1", "stolen"] {
        keygen(&p, name);
    }
    let out = new_list(
        &p,
        &[
            "--root",
            &key(&p, "root1.pub"),
            "--publisher",
            &key(&p, "ferry.pub"),
            "--publisher",
            &key(&p, "stolen.pub"),
            "--sign",
            &key(&p, "ferry.key"),
            "--sign",
            &key(&p, "root1.key"),
            "--previous-key",
            &key(&p, "ferry.pub"),
        ],
    );
    assert_ok(&out, "key new-list 1");
    p.publish(&v(1), &sources.release(1));
    let srv = p.serve();
    let agent = Agent::init(&srv.url, "stable", &p.public_key(), &[]);
    assert_eq!(agent.update()["to"], v(1));
    let legit_head = std::fs::read(p.head_file()).unwrap();

    // The thief publishes 99.0.0 with the stolen key, then pushes both sequences far
    // ahead; the agent installs it.
    assert_ok(
        &publish_with_keys(&p, "99.0.0", &sources.release(3), &[&key(&p, "stolen.key")]),
        "publish with the stolen key",
    );
    let list1 = TrustRoot::from_stored(&std::fs::read(p.repo().join("keys/1")).unwrap()).unwrap();
    let stolen = secret(&key(&p, "stolen.key"));
    rewrite_head(&p, &list1.publishers(), &[&stolen], |h| {
        h.sequence += 1_000_000;
        h.content.sequence += 1_000_000;
    });
    assert_eq!(agent.update()["to"], "99.0.0");
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(agent.root().join(".ferry/state.json")).unwrap())
            .unwrap();
    assert!(
        state["last_sequence"].as_u64().unwrap() > 1_000_000,
        "{state}"
    );
    assert_eq!(state["highest_version"], "99.0.0");

    // The operator restores the repository's head, revokes the key in key list 2, and
    // publishes the next real release.
    std::fs::write(p.head_file(), &legit_head).unwrap();
    let out = new_list(
        &p,
        &[
            "--root",
            &key(&p, "root1.pub"),
            "--publisher",
            &key(&p, "ferry.pub"),
            "--sign",
            &key(&p, "root1.key"),
        ],
    );
    assert_ok(&out, "key new-list 2 revokes the stolen key");
    assert_ok(
        &publish_with_keys(&p, &v(2), &sources.release(2), &[&key(&p, "ferry.key")]),
        "publish 2",
    );

    let out = agent.ferry("update", &["--json"]);
    assert_ok(&out, "update after the rotation");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["to"], v(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("forgetting head sequence"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    tree_eq(&agent.current(), &sources.release(2));
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(agent.root().join(".ferry/state.json")).unwrap())
            .unwrap();
    assert_eq!(state["highest_version"], v(2));
    assert!(
        state["last_sequence"].as_u64().unwrap() < 1_000_000,
        "{state}"
    );
    // And the stolen key's head, served again, is refused now.
    std::fs::write(p.head_file(), &legit_head).unwrap();
    let err = agent.update_fails();
    assert!(err.contains("names key list version 1"), "{err}");
}

#[test]
fn agents_refuse_heads_and_manifests_signed_below_the_threshold() {
    let p = Publisher::new("stable");
    let sources = Sources::app(2);
    for name in ["root1", "pub3", "pub4"] {
        keygen(&p, name);
    }
    // Key list 1: publishing needs both pub3 and pub4.
    let out = new_list(
        &p,
        &[
            "--root",
            &key(&p, "root1.pub"),
            "--publisher",
            &key(&p, "pub3.pub"),
            "--publisher",
            &key(&p, "pub4.pub"),
            "--threshold",
            "2",
            "--sign",
            &key(&p, "ferry.key"),
            "--sign",
            &key(&p, "root1.key"),
            "--previous-key",
            &key(&p, "ferry.pub"),
        ],
    );
    assert_ok(&out, "key new-list 1");
    let both = [key(&p, "pub3.key"), key(&p, "pub4.key")];
    assert_ok(
        &publish_with_keys(&p, &v(1), &sources.release(1), &[&both[0], &both[1]]),
        "publish 1 with 2 of 2",
    );
    let srv = p.serve();
    let agent = Agent::init(&srv.url, "stable", &p.public_key(), &[]);
    assert_eq!(agent.update()["to"], v(1));

    let list1 = TrustRoot::from_stored(&std::fs::read(p.repo().join("keys/1")).unwrap()).unwrap();
    let (k3, k4) = (secret(&both[0]), secret(&both[1]));
    let original = std::fs::read(p.head_file()).unwrap();

    // A head signed by one current publishing key of two.
    rewrite_head(&p, &list1.publishers(), &[&k3], |h| h.sequence += 1);
    let err = agent.update_fails();
    assert!(
        err.contains("channel head: signed by 1 of the trusted keys, below the threshold of 2"),
        "{err}"
    );
    assert_eq!(agent.active().as_deref(), Some("1.0.0"));

    // A head signed by both that names a manifest signed by one: the manifest of
    // release 1 as release 2, re-signed by pub3 alone.
    std::fs::write(p.head_file(), &original).unwrap();
    let head = verify_own_head(&original, &list1.publishers()).unwrap();
    let bytes = std::fs::read(p.object_file(&head.current().manifest.hash.to_hex())).unwrap();
    let mut manifest = (*verify_pinned_manifest(&bytes, head.current(), "stable").unwrap()).clone();
    manifest.version = v(2);
    let one_signed = manifest.sign(&[&k3]).unwrap();
    let named = ObjectRef {
        hash: Digest::of(&one_signed),
        size: one_signed.len() as u64,
    };
    let path = p.object_file(&named.hash.to_hex());
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, &one_signed).unwrap();
    rewrite_head(&p, &list1.publishers(), &[&k3, &k4], |h| {
        h.sequence += 2;
        h.content.sequence += 1;
        h.content.manifest_diffs.clear();
        h.content.releases.push(ReleaseRef {
            version: v(2),
            manifest: named,
        });
    });
    let err = agent.update_fails();
    assert!(
        err.contains("manifest: signed by 1 of the trusted keys, below the threshold of 2"),
        "{err}"
    );
    assert_eq!(agent.active().as_deref(), Some("1.0.0"));
    tree_eq(&agent.current(), &sources.release(1));
}

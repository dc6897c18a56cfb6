//! The online role against the real server and agent: `serve --timestamp-key` keeps
//! heads fresh past their original expiry but never past the publisher's content
//! expiry; an online key alone cannot publish, change, raise, resume or revive; a
//! lowered or paused rollout keeps unselected agents on their release.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ferry_format::head::{ChannelHead, inspect_head, rollout_bucket};
use ferry_format::keys::SecretKey;
use ferry_format::test_support::sign_head_unchecked;
use ferry_tests::{Agent, Publisher, Server, assert_ok, bin, run};

use super::fixtures::{Sources, tree_eq, v};

pub fn key_file(p: &Publisher, name: &str) -> String {
    p.dir
        .path()
        .join("keys")
        .join(name)
        .to_str()
        .unwrap()
        .to_string()
}

pub fn server(args: &[&str]) -> std::process::Output {
    run(bin("ferry-server"), args)
}

fn secret(path: &str) -> SecretKey {
    SecretKey::from_text(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A publisher whose key list 1 has an offline root, the publisher's key and an
/// online key (`keys/online.key`); release 1 published with `extra` arguments.
pub fn publisher_with_online_role(sources: &Sources, extra: &[&str]) -> Publisher {
    let p = Publisher::new("stable");
    let dir = p.dir.path().join("keys");
    for name in ["root1", "online"] {
        assert_ok(
            &server(&["key", "gen", "--out", dir.to_str().unwrap(), "--name", name]),
            "key gen",
        );
    }
    let repo = p.repo();
    let out = server(&[
        "key",
        "new-list",
        "--repo",
        repo.to_str().unwrap(),
        "--root",
        &key_file(&p, "root1.pub"),
        "--publisher",
        &key_file(&p, "ferry.pub"),
        "--online",
        &key_file(&p, "online.pub"),
        "--sign",
        &key_file(&p, "ferry.key"),
        "--sign",
        &key_file(&p, "root1.key"),
        "--previous-key",
        &key_file(&p, "ferry.pub"),
    ]);
    assert_ok(&out, "key new-list --online");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("online:    1 of ["),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    p.publish_with(&v(1), &sources.release(1), extra);
    p
}

fn serve_online(p: &Publisher) -> Server {
    Server::start_with(&p.repo(), &["--timestamp-key", &key_file(p, "online.key")])
}

fn refresh(p: &Publisher, args: &[&str]) -> std::process::Output {
    let repo = p.repo();
    let mut all = vec![
        "refresh-head",
        "--repo",
        repo.to_str().unwrap(),
        "--channel",
        "stable",
    ];
    all.extend_from_slice(args);
    server(&all)
}

pub fn head(p: &Publisher) -> ChannelHead {
    inspect_head(&std::fs::read(p.head_file()).unwrap()).unwrap()
}

/// Writes a head whose freshness layer (and, if `edit_content` changed it, content)
/// is signed by the online key alone: what a thief of the server's key can do.
fn forge_online(
    p: &Publisher,
    base: &ChannelHead,
    edit: impl FnOnce(&mut ChannelHead),
    edit_content: bool,
) {
    let online = secret(&key_file(p, "online.key"));
    let mut h = base.clone();
    h.sequence = head(p).sequence + 1;
    edit(&mut h);
    if edit_content {
        h.resign_content(&[&online]).unwrap();
    }
    std::fs::write(p.head_file(), sign_head_unchecked(&h, &[&online])).unwrap();
}

fn wait_until(deadline: Instant) {
    if let Some(d) = deadline.checked_duration_since(Instant::now()) {
        std::thread::sleep(d);
    }
}

#[test]
fn the_server_keeps_heads_fresh_past_their_expiry_with_only_the_online_key() {
    let sources = Sources::app(2);
    let p = publisher_with_online_role(&sources, &["--expires-in", "4s"]);
    let srv = serve_online(&p);
    let agent = Agent::init(&srv.url, "stable", &p.public_key(), &[]);
    assert_eq!(agent.update()["to"], v(1));

    p.publish_with(&v(2), &sources.release(2), &["--expires-in", "4s"]);
    let published = head(&p);
    let original_expiry = published.expires_at;
    // Past the head's original expiry, with no publisher job: only `serve` runs.
    wait_until(Instant::now() + Duration::from_secs(6));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(now > original_expiry);
    let fresh = head(&p);
    assert!(fresh.sequence > published.sequence, "the server re-signed");
    assert!(fresh.expires_at > now);
    assert_eq!(fresh.content_bytes(), published.content_bytes());

    let r = agent.update();
    assert_eq!(r["to"], v(2));
    assert_eq!(r["requests"], 3, "head, manifest diff, diff object: {r}");
    tree_eq(&agent.current(), &sources.release(2));
}

#[test]
fn past_the_publishers_expiry_the_agent_refuses_whatever_the_online_key_signs() {
    let sources = Sources::app(1);
    let p = publisher_with_online_role(
        &sources,
        &["--expires-in", "2s", "--content-expires-in", "5s"],
    );
    let started = Instant::now();
    let srv = serve_online(&p);
    let agent = Agent::init(&srv.url, "stable", &p.public_key(), &[]);
    assert_eq!(agent.update()["to"], v(1));
    wait_until(started + Duration::from_secs(7));
    let err = agent.update_fails();
    assert!(err.contains("publisher's content"), "{err}");
    assert!(err.contains("expired"), "{err}");
    // Nor can the online key be made to extend it by hand.
    let out = refresh(&p, &["--timestamp-key", &key_file(&p, "online.key")]);
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("publisher content expired"), "{e}");
    // A publishing key can.
    assert_ok(
        &refresh(&p, &["--key", &key_file(&p, "ferry.key")]),
        "refresh-head --key",
    );
    assert_eq!(agent.update()["to"], v(1));
    assert_eq!(agent.active().as_deref(), Some("1.0.0"));
}

#[test]
fn an_online_key_alone_cannot_publish_change_raise_resume_or_revive() {
    let sources = Sources::app(3);
    let p = publisher_with_online_role(&sources, &[]);
    let srv = p.serve();
    let agent = Agent::init(&srv.url, "stable", &p.public_key(), &[]);
    assert_eq!(agent.update()["to"], v(1));
    let first = head(&p);
    p.publish_with(&v(2), &sources.release(2), &["--rollout", "50"]);
    let legit = std::fs::read(p.head_file()).unwrap();
    let second = head(&p);
    // Pin the agent into the 50%: the rules below are about the head, not luck.
    let id = (0u8..=255)
        .map(|n| [n; 16])
        .find(|id| rollout_bucket(id, "stable", &v(2)) < 50)
        .unwrap();
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(agent.root().join(".ferry/agent_id"), hex).unwrap();
    let restore = || std::fs::write(p.head_file(), &legit).unwrap();

    // Publish: the CLI refuses the online key as a publishing key, and a head whose
    // releases it signed is refused by the agent.
    let out = p_publish_with_key(&p, &sources, &key_file(&p, "online.key"));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("publishing keys"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    forge_online(
        &p,
        &second,
        |h| {
            h.content.sequence += 1;
            h.content.releases.push(ferry_format::head::ReleaseRef {
                version: v(3),
                manifest: second.current().manifest,
            });
        },
        true,
    );
    let err = agent.update_fails();
    assert!(
        err.contains("releases of a head must be signed by publishing keys"),
        "{err}"
    );
    // Change: the same release pointing at other bytes.
    forge_online(
        &p,
        &second,
        |h| {
            let last = h.content.releases.len() - 1;
            h.content.releases[last].manifest = first.current().manifest;
        },
        true,
    );
    let err = agent.update_fails();
    assert!(
        err.contains("releases of a head must be signed by publishing keys"),
        "{err}"
    );
    // Raise: an override above the publisher's 50%.
    forge_online(
        &p,
        &second,
        |h| {
            h.rollout = vec![ferry_format::head::Rollout {
                version: v(2),
                percent: 80,
            }];
        },
        false,
    );
    let err = agent.update_fails();
    assert!(err.contains("raised to 80%"), "{err}");
    restore();
    let out = refresh(
        &p,
        &[
            "--timestamp-key",
            &key_file(&p, "online.key"),
            "--rollout",
            "80",
        ],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("can only lower or pause"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Pause with the online key (allowed): the agent stays on 1.0.0 and says why.
    assert_ok(
        &refresh(
            &p,
            &[
                "--timestamp-key",
                &key_file(&p, "online.key"),
                "--rollout",
                "0",
            ],
        ),
        "online pause",
    );
    let paused = std::fs::read(p.head_file()).unwrap();
    let out = agent.ferry("update", &[]);
    assert_ok(&out, "paused update");
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("not selected for 2.0.0"), "{said}");
    assert!(said.contains("paused"), "{said}");
    assert_eq!(agent.active().as_deref(), Some("1.0.0"));
    // Resume: neither the CLI nor a forged head may raise it back.
    let out = refresh(
        &p,
        &[
            "--timestamp-key",
            &key_file(&p, "online.key"),
            "--rollout",
            "50",
        ],
    );
    assert!(!out.status.success());
    forge_online(&p, &second, |h| h.rollout.clear(), false);
    let err = agent.update_fails();
    assert!(err.contains("resumed"), "{err}");
    assert_eq!(agent.active().as_deref(), Some("1.0.0"));

    // Revive: release 1's publisher content in a fresh online-signed head.
    forge_online(&p, &first, |_| {}, false);
    let err = agent.update_fails();
    assert!(
        err.contains("publisher sequence 1 is lower than 2"),
        "{err}"
    );

    // A publishing key resumes the rollout; the agent (in the 50%) takes 2.0.0.
    std::fs::write(p.head_file(), &paused).unwrap();
    assert_ok(
        &refresh(
            &p,
            &["--key", &key_file(&p, "ferry.key"), "--rollout", "50"],
        ),
        "publisher resume",
    );
    assert_eq!(agent.update()["to"], v(2));
    tree_eq(&agent.current(), &sources.release(2));
}

fn p_publish_with_key(p: &Publisher, sources: &Sources, key: &str) -> std::process::Output {
    let repo = p.repo();
    server(&[
        "publish",
        "--repo",
        repo.to_str().unwrap(),
        "--key",
        key,
        "--channel",
        "stable",
        "--version",
        &v(3),
        "--zstd-level",
        "3",
        sources.release(3).to_str().unwrap(),
    ])
}

/// An agent id whose bucket for `version` is below (or at least) `percent`.
fn agent_id(version: &str, percent: u8, selected: bool) -> String {
    let id = (0u8..=255)
        .map(|n| [n; 16])
        .find(|id| (rollout_bucket(id, "stable", version) < percent) == selected)
        .unwrap();
    id.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn a_lowered_rollout_keeps_unselected_agents_on_their_release() {
    let sources = Sources::app(2);
    let p = publisher_with_online_role(&sources, &[]);
    let srv = serve_online(&p);
    let inside = Agent::init(&srv.url, "stable", &p.public_key(), &[]);
    let outside = Agent::init(&srv.url, "stable", &p.public_key(), &[]);
    for (a, selected) in [(&inside, true), (&outside, false)] {
        assert_eq!(a.update()["to"], v(1));
        let path: PathBuf = a.root().join(".ferry/agent_id");
        std::fs::write(path, agent_id(&v(2), 30, selected)).unwrap();
    }
    p.publish(&v(2), &sources.release(2));
    assert_ok(
        &refresh(
            &p,
            &[
                "--timestamp-key",
                &key_file(&p, "online.key"),
                "--rollout",
                "30",
            ],
        ),
        "online lowers to 30%",
    );
    assert_eq!(head(&p).rollout_of(&v(2)), 30);
    let repo = p.repo();
    let out = server(&[
        "ls",
        "--repo",
        repo.to_str().unwrap(),
        "--key",
        p.public_key().to_str().unwrap(),
    ]);
    assert_ok(&out, "ls");
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(listing.contains("(current)  (rollout 30%)"), "{listing}");
    assert!(listing.contains("publisher sequence 2"), "{listing}");
    let r = inside.update();
    assert_eq!(r["to"], v(2));
    assert_eq!(r["requests"], 3, "{r}");
    let out = outside.ferry("update", &[]);
    assert_ok(&out, "unselected update");
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("not selected for 2.0.0"), "{said}");
    assert!(said.contains("30%"), "{said}");
    assert_eq!(outside.active().as_deref(), Some("1.0.0"));
    tree_eq(&outside.current(), &sources.release(1));
}

//! Attacks and corruption: each is refused with a clear error, exit status 5
//! (verification), and the active release intact.

use ferry_format::envelope::TrustedKeys;
use ferry_format::head::ChannelHead;
use ferry_format::keys::SecretKey;
use ferry_format::verified::verify_own_head;
use ferry_tests::{Agent, Publisher};

use super::fixtures::{Sources, tree_eq, v};
use super::pipeline::NO_DIFFS;

/// Release 1 installed, release 2 published but not yet installed.
struct Scene {
    publisher: Publisher,
    sources: Sources,
    server: ferry_tests::Server,
    agent: Agent,
    second: serde_json::Value,
}

fn scene() -> Scene {
    let publisher = Publisher::new("stable");
    let sources = Sources::app(2);
    // The archive path: attacks on the manifest and archive must reach the agent
    // (diffs.rs attacks the diff objects).
    publisher.publish_with(&v(1), &sources.release(1), NO_DIFFS);
    let server = publisher.serve();
    let agent = Agent::init(&server.url, "stable", &publisher.public_key(), &[]);
    agent.update();
    let second = publisher.publish_with(&v(2), &sources.release(2), NO_DIFFS);
    Scene {
        publisher,
        sources,
        server,
        agent,
        second,
    }
}

impl Scene {
    fn assert_refused(&self, expect: &str) {
        let err = self.agent.update_fails_with(5);
        assert!(
            err.to_lowercase().contains(&expect.to_lowercase()),
            "error should mention {expect:?}: {err}"
        );
        assert_eq!(self.agent.active().as_deref(), Some("1.0.0"));
        tree_eq(&self.agent.current(), &self.sources.release(1));
        let last = &self.agent.history()[0];
        assert!(
            last["result"].as_str().unwrap().starts_with("error"),
            "failed update recorded in history: {last}"
        );
    }

    /// Re-signs the repository's head after `edit`, with the publisher's real key.
    fn rewrite_head(&self, edit: impl FnOnce(&mut ChannelHead)) {
        let key =
            SecretKey::from_text(&std::fs::read_to_string(self.publisher.key()).unwrap()).unwrap();
        let bytes = std::fs::read(self.publisher.head_file()).unwrap();
        let mut head =
            (*verify_own_head(&bytes, &TrustedKeys::single(key.public())).unwrap()).clone();
        edit(&mut head);
        head.resign_content(&[&key]).unwrap();
        std::fs::write(self.publisher.head_file(), head.sign(&[&key]).unwrap()).unwrap();
    }
}

fn flip_byte(path: &std::path::Path, from_end: usize) {
    let mut data = std::fs::read(path).unwrap();
    let i = data.len() - from_end;
    data[i] ^= 0x55;
    std::fs::write(path, data).unwrap();
}

#[test]
fn tampered_archive_byte_is_refused() {
    let s = scene();
    let archive = s
        .publisher
        .object_file(s.second["archive"].as_str().unwrap());
    // The tail holds release 2's new chunks: exactly what the agent downloads.
    flip_byte(&archive, 100);
    s.assert_refused("corrupt");
    assert!(!s.agent.root().join("versions/2.0.0").exists());
}

#[test]
fn tampered_manifest_is_refused() {
    let s = scene();
    let manifest = s
        .publisher
        .object_file(s.second["manifest"].as_str().unwrap());
    flip_byte(&manifest, 200);
    s.assert_refused("hash mismatch");
}

#[test]
fn head_signed_by_another_key_is_refused() {
    let s = scene();
    let intruder = Publisher::new("stable");
    let sources = Sources::app(1);
    // A fully valid repository of another publisher served at the same place.
    intruder.publish("9.0.0", &sources.release(1));
    std::fs::copy(intruder.head_file(), s.publisher.head_file()).unwrap();
    s.assert_refused("signature");
    drop(s.server);
}

#[test]
fn agent_with_the_wrong_public_key_installs_nothing() {
    let s = scene();
    let other = Publisher::new("stable");
    let agent = Agent::init(&s.server.url, "stable", &other.public_key(), &[]);
    let err = agent.update_fails();
    assert!(err.contains("not signed by a trusted key"), "{err}");
    assert!(agent.active().is_none());
}

#[test]
fn expired_head_is_refused() {
    let s = scene();
    s.rewrite_head(|h| {
        h.sequence += 1;
        h.issued_at = 1_000;
        h.expires_at = 2_000;
    });
    s.assert_refused("expired");
}

#[test]
fn head_for_another_channel_is_refused() {
    let s = scene();
    s.rewrite_head(|h| {
        h.sequence += 1;
        h.content.channel = "beta".into();
    });
    // Every head error names the channel; this one must say which channel it is for.
    s.assert_refused(r#"channel head is for channel "beta", expected channel "stable""#);
}

#[test]
fn replayed_older_head_is_refused() {
    let s = scene();
    // The agent has seen sequence 1; keep that head, let the agent see sequence 2.
    let old_head = std::fs::read(s.publisher.head_file()).unwrap();
    let sources3 = Sources::app(3);
    s.publisher.publish(&v(3), &sources3.release(3));
    let old_head_still = old_head.clone();
    // Agent moves to 3 (sequence 3), then a mirror replays sequence 2's head.
    let r = s.agent.update();
    assert_eq!(r["to"], v(3));
    std::fs::write(s.publisher.head_file(), &old_head_still).unwrap();
    let err = s.agent.update_fails_with(5);
    assert!(err.contains("replayed"), "{err}");
    assert_eq!(s.agent.active().as_deref(), Some("3.0.0"));
    tree_eq(&s.agent.current(), &sources3.release(3));
}

#[test]
fn clock_skew_is_tolerated_only_when_configured() {
    let s = scene();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // Expired 60 s ago: refused by default...
    s.rewrite_head(|h| {
        h.sequence += 1;
        h.issued_at = now - 3600;
        h.expires_at = now - 60;
    });
    s.assert_refused("expired");
    // ...accepted by an agent configured for 5 minutes of skew.
    let lenient = Agent::init(
        &s.server.url,
        "stable",
        &s.publisher.public_key(),
        &["--max-clock-skew", "5m"],
    );
    assert_eq!(lenient.update()["to"], v(2));
}

#[test]
fn mixed_and_matched_objects_are_refused() {
    let s = scene();
    // A mirror serves release 1's manifest bytes under release 2's manifest name.
    let first = s.publisher.object_file(
        &ferry_format::id::Digest::of(
            &std::fs::read(s.agent.root().join(".ferry/manifests/1.0.0")).unwrap(),
        )
        .to_hex(),
    );
    let second = s
        .publisher
        .object_file(s.second["manifest"].as_str().unwrap());
    std::fs::copy(&first, &second).unwrap();
    s.assert_refused("size mismatch");
}

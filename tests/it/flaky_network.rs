//! Requests that survive a busy network: connection resets injected by the fault
//! proxy between the real binaries and the real `ferry-server serve` do not stop a
//! remote publish or an update; idempotent requests are retried, a range download
//! continues from the bytes already received, and the head's compare-and-swap
//! recovers from a lost answer without mistaking itself for a lost race.

use std::path::{Path, PathBuf};
use std::process::Output;

use ferry_tests::proxy::{FaultProxy, Reset};
use ferry_tests::tree::{noise, put};
use ferry_tests::{Agent, Publisher, Server, assert_ok, bin, run};

use super::fixtures::{Sources, tree_eq, v};

const TOKEN: &str = "flaky-network-token-0123456789";

/// A repository served with uploads enabled, behind a fault proxy.
struct Remote {
    publisher: Publisher,
    _server: Server,
    proxy: FaultProxy,
    token_file: PathBuf,
}

impl Remote {
    fn start() -> Remote {
        let publisher = Publisher::new("stable");
        let repo = publisher.repo();
        std::fs::create_dir_all(&repo).unwrap();
        let token_file = publisher.dir.path().join("token");
        std::fs::write(&token_file, TOKEN).unwrap();
        let server = Server::start_with(
            &repo,
            &[
                "--upload-token-file",
                token_file.to_str().unwrap(),
                "--public-key",
                publisher.public_key().to_str().unwrap(),
            ],
        );
        let proxy = FaultProxy::start(&server.url);
        Remote {
            publisher,
            _server: server,
            proxy,
            token_file,
        }
    }

    /// `publish --to` through the proxy.
    fn publish(&self, version: &str, source: &Path) -> Output {
        let p = &self.publisher;
        run(
            bin("ferry-server"),
            &[
                "publish",
                "--to",
                &self.proxy.url,
                "--token-file",
                self.token_file.to_str().unwrap(),
                "--key",
                p.key().to_str().unwrap(),
                "--channel",
                &p.channel,
                "--version",
                version,
                "--zstd-level",
                "3",
                "--json",
                source.to_str().unwrap(),
            ],
        )
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn remote_publish_completes_through_connection_resets() {
    let r = Remote::start();
    let sources = Sources::app(3);

    // Every other request reset before it reaches the server, HEADs of objects
    // included (the failure first seen on a loaded machine).
    r.proxy.arm_resets(2, 4, "", Reset::BeforeForward);
    let out = r.publish(&v(1), &sources.release(1));
    assert_ok(&out, "publish --to through resets");
    let resets = r.proxy.resets();
    assert_eq!(resets.len(), 4, "{resets:?}");
    assert!(
        resets
            .iter()
            .any(|(line, _)| line.starts_with("HEAD /objects/")),
        "{resets:?}"
    );
    assert!(stderr(&out).contains("retrying"), "{}", stderr(&out));

    // The head's PUT handled by the server but its answer lost: the publisher must
    // find its own head on the server instead of sending it again into a 409.
    r.proxy
        .arm_resets(1, 1, "PUT /channels/stable/head", Reset::AfterForward);
    let out = r.publish(&v(2), &sources.release(2));
    assert_ok(&out, "publish --to with the head's answer lost");
    assert!(
        r.proxy
            .resets()
            .iter()
            .any(|(line, how)| line.starts_with("PUT /channels/") && *how == Reset::AfterForward),
        "{:?}",
        r.proxy.resets()
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["version"], "2.0.0", "{report}");

    // The head's PUT reset before the server saw it: sent again, still as a
    // compare-and-swap on the same sequence.
    r.proxy
        .arm_resets(1, 1, "PUT /channels/stable/head", Reset::BeforeForward);
    let out = r.publish(&v(3), &sources.release(3));
    assert_ok(&out, "publish --to with the head's PUT reset");
    let head_puts = r
        .proxy
        .requests()
        .iter()
        .filter(|l| l.starts_with("PUT /channels/stable/head"))
        .count();
    assert_eq!(head_puts, 4, "one each for v1 and v2, two for v3");

    // What was published is whole: an agent installs release 3.
    let agent = Agent::init(&r.proxy.url, "stable", &r.publisher.public_key(), &[]);
    let done = agent.update();
    assert_eq!(done["to"], "3.0.0", "{done}");
    tree_eq(&agent.current(), &sources.release(3));
}

#[test]
fn update_completes_through_connection_resets() {
    let p = Publisher::new("stable");
    let sources = Sources::app(2);
    // Release 2 brings a large new file, so it is fetched as archive ranges.
    put(
        &sources.release(2),
        "lib/big.so",
        &noise(91, 2_000_000),
        0o644,
    );
    p.publish(&v(1), &sources.release(1));
    let server = p.serve();
    let proxy = FaultProxy::start(&server.url);
    let agent = Agent::init(&proxy.url, "stable", &p.public_key(), &[]);

    // The first update: every other request reset before it reaches the server.
    proxy.arm_resets(2, 2, "GET ", Reset::BeforeForward);
    let done = agent.update();
    assert_eq!(done["to"], "1.0.0", "{done}");
    assert_eq!(proxy.resets().len(), 2, "{:?}", proxy.resets());
    tree_eq(&agent.current(), &sources.release(1));

    // The second: range downloads broken off half-way, twice; each is continued
    // from the bytes already received.
    p.publish(&v(2), &sources.release(2));
    let before = server.requests().len();
    proxy.arm_resets(1, 2, "range: bytes=", Reset::MidBody);
    let done = agent.update();
    assert_eq!(done["to"], "2.0.0", "{done}");
    let resets = proxy.resets();
    assert_eq!(resets.len(), 4, "{resets:?}");
    tree_eq(&agent.current(), &sources.release(2));
    // A continued range: the same object and end as an earlier request, a later start.
    let log = server.requests();
    let ranged: Vec<(String, u64, u64)> = log[before..]
        .iter()
        .filter_map(|r| {
            let (a, b) = r.range.as_ref()?.strip_prefix("bytes=")?.split_once('-')?;
            Some((r.path.clone(), a.parse().ok()?, b.parse().ok()?))
        })
        .collect();
    let continued = ranged.iter().enumerate().any(|(i, (path, start, end))| {
        ranged[..i]
            .iter()
            .any(|(p0, s0, e0)| p0 == path && e0 == end && s0 < start)
    });
    assert!(continued, "no range was continued: {ranged:?}");
}

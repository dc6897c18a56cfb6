//! kill -9 in the middle of a download, made deterministic by a proxy that stalls the
//! archive response at a known byte; the next update completes the job.

use std::process::{Command, Stdio};
use std::time::Duration;

use ferry_tests::proxy::FaultProxy;
use ferry_tests::tree::{noise, put};
use ferry_tests::{Agent, Publisher, bin};

use super::fixtures::{Sources, tree_eq, v};

#[test]
fn kill_9_mid_download_then_update_completes() {
    let publisher = Publisher::new("stable");
    let sources = Sources::app(2);
    // Make release 2 carry a large new file so its download is long.
    put(&sources.release(2), "lib/big.so", &noise(77, 3_000_000), 0o644);
    publisher.publish(&v(1), &sources.release(1));
    let server = publisher.serve();
    let proxy = FaultProxy::start(&server.url);
    let agent = Agent::init(&proxy.url, "stable", &publisher.public_key(), &[]);
    agent.update();
    publisher.publish(&v(2), &sources.release(2));

    proxy.arm_stall(1_000_000);
    let mut child = Command::new(bin("ferry"))
        .args(["update", "--root"])
        .arg(agent.root())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let sent = proxy.wait_stalled(Duration::from_secs(60));
    assert_eq!(sent, 1_000_000);
    // Child::kill sends SIGKILL on Unix: no handler, no cleanup.
    child.kill().unwrap();
    child.wait().unwrap();

    assert_eq!(agent.active().as_deref(), Some("1.0.0"));
    tree_eq(&agent.current(), &sources.release(1));
    ferry_tests::assert_ok(&agent.ferry("verify", &[]), "verify after kill -9");

    proxy.disarm();
    let r = agent.update();
    assert_eq!(r["to"], v(2));
    tree_eq(&agent.current(), &sources.release(2));
    // The megabyte that arrived before the kill is not downloaded again.
    let second = r["bytes_downloaded"].as_u64().unwrap();
    assert!(second < 2_500_000, "resumed update downloaded {second} bytes");
}

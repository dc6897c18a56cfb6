//! kill -9 in the middle of a download, made deterministic by a proxy that stalls the
//! archive response at a known byte; the next update completes the job.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ferry_tests::proxy::FaultProxy;
use ferry_tests::tree::{noise, put};
use ferry_tests::{Agent, Publisher, bin};

use super::fixtures::{Sources, tree_eq, v};

/// Release 1 installed through a fault-injecting proxy, release 2 published (with
/// `extra` bytes of new incompressible data when non-zero).
fn scene(extra: usize) -> (Publisher, Sources, ferry_tests::Server, FaultProxy, Agent) {
    let publisher = Publisher::new("stable");
    let sources = Sources::app(2);
    if extra > 0 {
        put(&sources.release(2), "lib/big.so", &noise(77, extra), 0o644);
    }
    publisher.publish(&v(1), &sources.release(1));
    let server = publisher.serve();
    let proxy = FaultProxy::start(&server.url);
    let agent = Agent::init(&proxy.url, "stable", &publisher.public_key(), &[]);
    agent.update();
    publisher.publish(&v(2), &sources.release(2));
    (publisher, sources, server, proxy, agent)
}

/// `ferry update` on the agent's root, running in the background.
fn spawn_update(agent: &Agent) -> std::process::Child {
    Command::new(bin("ferry"))
        .args(["update", "--root"])
        .arg(agent.root())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn kill_9_mid_download_then_update_completes() {
    // Release 2 carries a large new file so its download is long.
    let (_publisher, sources, _server, proxy, agent) = scene(3_000_000);
    proxy.arm_stall(1_000_000);
    let mut child = spawn_update(&agent);
    let sent = proxy.wait_stalled(Duration::from_secs(60));
    assert_eq!(sent, 1_000_000);
    // The proxy's write returning only means the bytes reached the socket: wait until
    // the agent has stored them, so the kill lands at a known point of the download.
    wait_for_part_file(agent.root(), sent);
    // A second update on the same root waits for the first: commands are serialized.
    proxy.disarm();
    let mut second = Command::new(bin("ferry"))
        .args(["update", "--json", "--root"])
        .arg(agent.root())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(second.stderr.take().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let waiting = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the second update reports that it waits");
    assert!(
        waiting.contains(&format!("waiting for ferry update (pid {})", child.id())),
        "{waiting}"
    );

    // Child::kill sends SIGKILL on Unix: no handler, no cleanup.
    child.kill().unwrap();
    child.wait().unwrap();
    let out = second.wait_with_output().unwrap();
    ferry_tests::assert_ok(&out, "update after kill -9");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["to"], v(2));
    tree_eq(&agent.current(), &sources.release(2));
    // The megabyte that arrived before the kill is not downloaded again.
    let bytes = r["bytes_downloaded"].as_u64().unwrap();
    assert!(bytes < 2_500_000, "resumed update downloaded {bytes} bytes");
}

#[test]
fn kill_9_leaves_the_active_release_intact() {
    let (_publisher, sources, _server, proxy, agent) = scene(0);
    proxy.arm_stall(1000);
    let mut child = spawn_update(&agent);
    proxy.wait_stalled(Duration::from_secs(60));
    wait_for_part_file(agent.root(), 1000);
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(agent.active().as_deref(), Some("1.0.0"));
    tree_eq(&agent.current(), &sources.release(1));
    ferry_tests::assert_ok(&agent.ferry("verify", &[]), "verify after kill -9");
    proxy.disarm();
    assert_eq!(agent.update()["to"], v(2));
    tree_eq(&agent.current(), &sources.release(2));
}

/// Waits (at most 30 s) until a partial range download of `len` bytes is on disk.
fn wait_for_part_file(root: &Path, len: u64) {
    let dir = root.join(".ferry/staging/downloads");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stored: u64 = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum();
        if stored >= len {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the agent stored {stored} of the {len} bytes it received"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

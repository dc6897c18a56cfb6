//! The real `ferry-server` binary.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ferry-server"))
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn keygen_publish_ls_serve() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let keys = t.join("keys");
    let out = run_ok(bin().args(["keygen", "--out"]).arg(&keys));
    assert!(out.contains("key id"), "{out}");
    // Refuses to overwrite, with a clear message and exit code 1.
    let again = bin().args(["keygen", "--out"]).arg(&keys).output().unwrap();
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));

    let src = t.join("src");
    make_tree(&src);
    let repo = t.join("repo");
    let publish = |version: &str| {
        let mut c = bin();
        c.args(["publish", "--repo"])
            .arg(&repo)
            .arg("--key")
            .arg(keys.join("ferry.key"))
            .args([
                "--channel",
                "stable",
                "--version",
                version,
                "--zstd-level",
                "3",
                "--json",
            ])
            .arg(&src);
        c
    };
    let json: serde_json::Value = serde_json::from_str(&run_ok(&mut publish("1.0.0"))).unwrap();
    for k in [
        "channel",
        "version",
        "sequence",
        "manifest",
        "manifest_size",
        "archive",
        "archive_size",
        "chunks_new",
        "chunks_carried",
        "bytes_total",
        "diffs",
        "manifest_diffs",
    ] {
        assert!(json.get(k).is_some(), "{k} missing from {json}");
    }
    assert_eq!(json["sequence"], 1);
    assert_eq!(json["version"], "1.0.0");
    assert_eq!(json["diffs"], serde_json::json!([]));
    assert_eq!(json["manifest_diffs"], 0);
    let failed = publish("0.9").output().unwrap();
    assert_eq!(failed.status.code(), Some(1));
    let err = String::from_utf8_lossy(&failed.stderr);
    assert!(err.contains("not greater"), "{err}");

    // A changed release gets a diff from 1.0.0, reported with its size and time.
    let mut app = std::fs::read(src.join("bin/app")).unwrap();
    app.splice(1000..1000, noise(42, 3000));
    std::fs::write(src.join("bin/app"), &app).unwrap();
    let json: serde_json::Value = serde_json::from_str(&run_ok(&mut publish("1.1.0"))).unwrap();
    let diffs = json["diffs"].as_array().unwrap();
    assert_eq!(diffs.len(), 1, "{json}");
    assert_eq!(diffs[0]["base"], "1.0.0");
    assert!(diffs[0]["size"].as_u64().unwrap() > 0, "{json}");
    assert!(diffs[0]["seconds"].as_f64().is_some(), "{json}");
    assert_eq!(json["manifest_diffs"], 1);
    let human = run_ok(
        bin()
            .args(["publish", "--repo"])
            .arg(&repo)
            .arg("--key")
            .arg(keys.join("ferry.key"))
            .args([
                "--channel",
                "stable",
                "--version",
                "1.2.0",
                "--zstd-level",
                "3",
                "--diff-depth",
                "0",
            ])
            .arg(&src),
    );
    assert!(
        human.contains("diffs:    none") && human.contains("manifest diffs: 0"),
        "{human}"
    );

    let listing = run_ok(
        bin()
            .args(["ls", "--repo"])
            .arg(&repo)
            .arg("--key")
            .arg(keys.join("ferry.pub")),
    );
    assert!(
        listing.contains("stable") && listing.contains("1.0.0"),
        "{listing}"
    );

    serve_until_sigterm(&repo);
}

fn serve_until_sigterm(repo: &Path) {
    let mut child = bin()
        .args(["serve", "--listen", "127.0.0.1:0", "--repo"])
        .arg(repo)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");

    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "exit status after SIGTERM: {status}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "server did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_second_publisher_waits_for_the_first_instead_of_losing_its_release() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let key_file = t.join("ferry.key");
    std::fs::write(&key_file, key().to_text()).unwrap();
    let src = t.join("src");
    make_tree(&src);
    let repo = t.join("repo");
    publish_at(&repo, &src, "stable", "1.0.0");

    // Another publisher of the channel is mid-way (it holds the channel's lock).
    let held = ferry_server::repo::Repo::new(&repo)
        .lock_channel("stable")
        .unwrap();
    let mut child = bin()
        .args(["publish", "--repo"])
        .arg(&repo)
        .arg("--key")
        .arg(&key_file)
        .args([
            "--channel",
            "stable",
            "--version",
            "2.0.0",
            "--zstd-level",
            "3",
        ])
        .arg(&src)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let waiting = std::iter::from_fn(|| rx.recv_timeout(Duration::from_secs(20)).ok())
        .find(|l| l.contains("waiting for it to finish"));
    assert!(waiting.is_some(), "the publisher says it waits");
    std::thread::sleep(Duration::from_millis(300));
    assert!(child.try_wait().unwrap().is_none(), "it waits, not fails");
    assert_eq!(
        read_head(&repo, "stable").sequence,
        1,
        "nothing written meanwhile"
    );

    drop(held);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("publish did not finish after the lock was released");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success());
    let head = read_head(&repo, "stable");
    assert_eq!(head.sequence, 2);
    let versions: Vec<&str> = head.releases().iter().map(|r| r.version.as_str()).collect();
    assert_eq!(versions, ["1.0.0", "2.0.0"]);
}

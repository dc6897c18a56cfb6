//! Publish → serve → update on the embedded server: single files, trees, successive
//! and skipped releases, and the number of HTTP requests each update takes.

use std::os::unix::fs::PermissionsExt;

use ferry_tests::process::LoggedRequest;
use ferry_tests::tree::{noise, put};
use ferry_tests::{Agent, Publisher};

use super::fixtures::{Sources, tree_eq, v};

#[test]
fn single_file_release_installs_and_updates_by_delta() {
    let publisher = Publisher::new("stable");
    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("tool");
    let mut data = noise(9, 700_000);
    put(src.path(), "tool", &data, 0o755);
    publisher.publish("1.0.0", &file);
    let server = publisher.serve();
    let agent = Agent::init(&server.url, "stable", &publisher.public_key(), &[]);

    let first = agent.update();
    assert_eq!(first["from"], serde_json::Value::Null);
    assert_eq!(first["to"], "1.0.0");
    let installed = agent.current().join("tool");
    assert_eq!(std::fs::read(&installed).unwrap(), data);
    // Executable as published, and read-only like every installed release file.
    assert_eq!(
        std::fs::metadata(&installed).unwrap().permissions().mode() & 0o777,
        0o555
    );

    data[350_000..350_100].copy_from_slice(&[7; 100]);
    put(src.path(), "tool", &data, 0o755);
    publisher.publish("1.1.0", &file);
    let second = agent.update();
    assert_eq!(second["from"], "1.0.0");
    assert_eq!(second["to"], "1.1.0");
    assert_eq!(std::fs::read(&installed).unwrap(), data);
    let downloaded = second["bytes_downloaded"].as_u64().unwrap();
    assert!(
        downloaded < 300_000,
        "a 100-byte change in a 700 KB file downloaded {downloaded} bytes"
    );
    assert!(second["bytes_reused"].as_u64().unwrap() > 300_000);
}

#[test]
fn directory_tree_three_successive_releases() {
    let publisher = Publisher::new("stable");
    let sources = Sources::app(3);
    publisher.publish(&v(1), &sources.release(1));
    let server = publisher.serve();
    let agent = Agent::init(&server.url, "stable", &publisher.public_key(), &[]);

    let r1 = agent.update();
    assert_eq!(r1["to"], v(1));
    tree_eq(&agent.current(), &sources.release(1));
    let full = r1["bytes_downloaded"].as_u64().unwrap();

    for k in 2..=3 {
        publisher.publish(&v(k), &sources.release(k));
        let r = agent.update();
        assert_eq!(r["from"], v(k - 1));
        assert_eq!(r["to"], v(k));
        tree_eq(&agent.current(), &sources.release(k));
        let delta = r["bytes_downloaded"].as_u64().unwrap();
        assert!(
            delta * 3 < full,
            "update {k} downloaded {delta} bytes, the full release took {full}"
        );
    }
    let status = agent.status();
    assert_eq!(status["active"], v(3));
    let retained: Vec<&str> = status["retained"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect();
    assert_eq!(retained, ["1.0.0", "2.0.0", "3.0.0"]);
    let verify = agent.ferry("verify", &[]);
    ferry_tests::assert_ok(&verify, "verify");

    // A second update with nothing new costs one request: the head.
    let again = agent.update();
    assert_eq!(again["requests"], 1);
    assert_eq!(agent.active().as_deref(), Some("3.0.0"));
}

#[test]
fn update_skipping_a_release() {
    let publisher = Publisher::new("stable");
    let sources = Sources::app(3);
    publisher.publish(&v(1), &sources.release(1));
    let server = publisher.serve();
    let agent = Agent::init(&server.url, "stable", &publisher.public_key(), &[]);
    agent.update();
    publisher.publish(&v(2), &sources.release(2));
    publisher.publish(&v(3), &sources.release(3));
    let r = agent.update();
    assert_eq!(
        (r["from"].as_str(), r["to"].as_str()),
        (Some("1.0.0"), Some("3.0.0"))
    );
    tree_eq(&agent.current(), &sources.release(3));
}

fn requests_since(all: &[LoggedRequest], before: usize) -> Vec<LoggedRequest> {
    all[before..].to_vec()
}

/// The repository path of an object named in `publish --json` output.
pub fn object_url_path(hex: &str) -> String {
    format!(
        "/{}",
        ferry_format::layout::object_path(&ferry_format::id::Digest::from_hex(hex).unwrap())
    )
}

/// Asserts an update was exactly: head, a manifest diff (not the whole manifest), and
/// one data object that is not the archive (so: a diff object), all by plain GET.
pub fn assert_diff_update(reqs: &[LoggedRequest], head_path: &str, published: &serde_json::Value) {
    let paths: Vec<&str> = reqs.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        reqs.len(),
        3,
        "expected head, manifest diff, diff object; got {paths:?}"
    );
    assert_eq!(reqs[0].path, head_path);
    let manifest = object_url_path(published["manifest"].as_str().unwrap());
    let archive = object_url_path(published["archive"].as_str().unwrap());
    assert!(
        reqs[1].path.starts_with("/objects/") && reqs[1].path != manifest,
        "{paths:?}"
    );
    assert!(
        reqs[2].path.starts_with("/objects/") && reqs[2].path != archive,
        "{paths:?}"
    );
    assert!(
        reqs.iter().all(|r| r.status == 200 || r.status == 206),
        "{reqs:?}"
    );
}

/// Publish without diff objects, to exercise the archive path.
pub const NO_DIFFS: &[&str] = &["--diff-depth", "0"];

/// Asserts an update was exactly: head, manifest, one ranged archive request.
pub fn assert_three_requests(reqs: &[LoggedRequest], head_path: &str) {
    let paths: Vec<&str> = reqs.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        reqs.len(),
        3,
        "expected head, manifest, one range; got {paths:?}"
    );
    assert_eq!(reqs[0].path, head_path);
    assert!(reqs[1].path.starts_with("/objects/") && reqs[1].range.is_none());
    assert!(reqs[2].path.starts_with("/objects/"));
    assert_eq!(reqs[2].status, 206, "archive fetched with a Range request");
    assert!(
        reqs[2]
            .range
            .as_deref()
            .is_some_and(|r| r.starts_with("bytes="))
    );
}

#[test]
fn one_archive_range_for_next_and_for_two_releases_back() {
    let publisher = Publisher::new("stable");
    let sources = Sources::app(4);
    publisher.publish_with(&v(1), &sources.release(1), NO_DIFFS);
    let server = publisher.serve();
    let agent = Agent::init(&server.url, "stable", &publisher.public_key(), &[]);
    agent.update();
    publisher.publish_with(&v(2), &sources.release(2), NO_DIFFS);

    // N -> N+1
    let before = server.requests().len();
    let r = agent.update();
    let reqs = requests_since(&server.requests(), before);
    assert_three_requests(&reqs, "/channels/stable/head");
    assert_eq!(r["requests"], 3);
    let logged: u64 = reqs.iter().map(|r| r.bytes).sum();
    assert_eq!(r["bytes_downloaded"].as_u64().unwrap(), logged);

    // N-2 -> N
    publisher.publish_with(&v(3), &sources.release(3), NO_DIFFS);
    publisher.publish_with(&v(4), &sources.release(4), NO_DIFFS);
    let before = server.requests().len();
    let r = agent.update();
    assert_eq!(r["to"], v(4));
    let reqs = requests_since(&server.requests(), before);
    assert_three_requests(&reqs, "/channels/stable/head");
    tree_eq(&agent.current(), &sources.release(4));
}

#[test]
fn damaged_local_release_is_repaired_from_the_archive() {
    let publisher = Publisher::new("stable");
    let sources = Sources::app(2);
    publisher.publish(&v(1), &sources.release(1));
    let server = publisher.serve();
    let agent = Agent::init(&server.url, "stable", &publisher.public_key(), &[]);
    agent.update();
    publisher.publish(&v(2), &sources.release(2));

    // Something outside ferry scribbles over two distant places of the installed binary.
    let bin = agent.root().join("versions/1.0.0/bin/app");
    let mut data = std::fs::read(&bin).unwrap();
    data[10_000] ^= 1;
    data[1_100_000] ^= 1;
    std::fs::write(&bin, &data).unwrap();
    let verify = agent.ferry("verify", &[]);
    assert!(!verify.status.success(), "verify notices the damage");

    // The plan re-hashes local chunks: the damaged ones are fetched, in extra ranges.
    let before = server.requests().len();
    let r = agent.update();
    assert_eq!(r["to"], v(2));
    tree_eq(&agent.current(), &sources.release(2));
    let ranges = server.requests()[before..]
        .iter()
        .filter(|r| r.status == 206)
        .count();
    assert!(
        ranges >= 2,
        "damaged chunks come from the archive ({ranges} ranges)"
    );
}

/// Logs and output go to files and pipes in fleets (journald, CI logs): with stderr
/// and stdout not a terminal, neither binary writes ANSI colour codes, even with
/// every log line switched on.
#[test]
fn output_has_no_colour_codes_when_not_a_terminal() {
    let publisher = Publisher::new("stable");
    let sources = Sources::app(2);
    let (repo, key) = (publisher.repo(), publisher.key());
    let verbose = [("FERRY_LOG", Some("debug"))];
    let mut outputs = Vec::new();
    for version in [v(1), v(2)] {
        let src = sources.release(if version == v(1) { 1 } else { 2 });
        let out = ferry_tests::process::run_env(
            ferry_tests::bin("ferry-server"),
            &[
                "publish",
                "--repo",
                repo.to_str().unwrap(),
                "--key",
                key.to_str().unwrap(),
                "--channel",
                "stable",
                "--version",
                &version,
                "--zstd-level",
                "3",
                src.to_str().unwrap(),
            ],
            &verbose,
        );
        ferry_tests::assert_ok(&out, "publish");
        outputs.push(("publish", out));
    }
    let server = publisher.serve();
    let agent = Agent::init(&server.url, "stable", &publisher.public_key(), &[]);
    let root = agent.root().to_str().unwrap().to_string();
    let out = ferry_tests::process::run_env(
        ferry_tests::bin("ferry"),
        &["update", "--root", &root],
        &verbose,
    );
    ferry_tests::assert_ok(&out, "update");
    outputs.push(("update", out));
    // The second publish logs its diffs, the update its requests.
    for (what, out) in &outputs[1..] {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.lines().count() > 1,
            "{what}: expected log lines at FERRY_LOG=debug, got {stderr:?}"
        );
    }
    for (what, out) in &outputs {
        for (stream, bytes) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
            assert!(
                !bytes.contains(&0x1b),
                "{what} wrote an escape code to its {stream}: {}",
                String::from_utf8_lossy(bytes)
            );
        }
    }
}

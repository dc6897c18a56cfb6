//! Multi-level rollback: instant local switches, `--to` an older release fetched as a
//! delta, the pin that keeps an operator's rollback in place, and the history.

use ferry_tests::{Agent, Publisher, assert_ok};

use super::fixtures::{Sources, tree_eq, v};

/// An agent that installed releases 1, 2 and 3 one after another.
fn agent_through_three(keep: &[&str]) -> (Publisher, Sources, ferry_tests::Server, Agent) {
    let publisher = Publisher::new("stable");
    let sources = Sources::app(4);
    publisher.publish(&v(1), &sources.release(1));
    let server = publisher.serve();
    let agent = Agent::init(&server.url, "stable", &publisher.public_key(), keep);
    agent.update();
    for k in 2..=3 {
        publisher.publish(&v(k), &sources.release(k));
        agent.update();
    }
    (publisher, sources, server, agent)
}

#[test]
fn rollback_by_one_and_two_steps_is_local_and_pins() {
    let (publisher, sources, server, agent) = agent_through_three(&[]);
    let before = server.requests().len();

    let r = agent.rollback(&[]);
    assert_eq!(
        (r["from"].as_str(), r["to"].as_str()),
        (Some("3.0.0"), Some("2.0.0"))
    );
    assert_eq!(r["bytes_downloaded"], 0);
    tree_eq(&agent.current(), &sources.release(2));

    // The pin: update does not move forward again to the release rolled back from.
    let u = agent.ferry("update", &[]);
    assert_ok(&u, "update while pinned");
    assert_eq!(agent.active().as_deref(), Some("2.0.0"));

    let r = agent.rollback(&["--steps", "1"]);
    assert_eq!(r["to"], "1.0.0");
    tree_eq(&agent.current(), &sources.release(1));
    // Rollbacks never touched the network; the pinned update only fetched the head.
    let reqs = &server.requests()[before..];
    assert!(
        reqs.iter().all(|r| r.path == "/channels/stable/head"),
        "{reqs:?}"
    );

    // From 3 down two levels in one command.
    agent.ferry("update", &["--force"]);
    assert_eq!(agent.active().as_deref(), Some("3.0.0"));
    let r = agent.rollback(&["--steps", "2"]);
    assert_eq!(
        (r["from"].as_str(), r["to"].as_str()),
        (Some("3.0.0"), Some("1.0.0"))
    );
    tree_eq(&agent.current(), &sources.release(1));

    // A release published after the one rolled back from is taken again.
    publisher.publish(&v(4), &sources.release(4));
    let u = agent.update();
    assert_eq!(u["to"], v(4));
    tree_eq(&agent.current(), &sources.release(4));

    let events: Vec<String> = agent
        .history()
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                e["event"].as_str().unwrap(),
                e["to"].as_str().unwrap_or("-")
            )
        })
        .collect();
    assert_eq!(
        events.first().map(String::as_str),
        Some("update 4.0.0"),
        "{events:?}"
    );
    assert!(events.contains(&"rollback 1.0.0".to_string()), "{events:?}");
    assert!(events.contains(&"rollback 2.0.0".to_string()), "{events:?}");
}

#[test]
fn update_force_overrides_the_pin() {
    let (_publisher, sources, _server, agent) = agent_through_three(&[]);
    agent.rollback(&[]);
    let r = agent.ferry("update", &["--force", "--json"]);
    assert_ok(&r, "update --force");
    assert_eq!(agent.active().as_deref(), Some("3.0.0"));
    tree_eq(&agent.current(), &sources.release(3));
}

#[test]
fn rollback_to_a_release_no_longer_retained_is_fetched_as_a_delta() {
    let (_publisher, sources, server, agent) = agent_through_three(&["--keep", "2"]);
    let status = agent.status();
    assert_eq!(status["retained"], serde_json::json!(["2.0.0", "3.0.0"]));
    assert!(
        !agent.root().join("versions/1.0.0").exists(),
        "pruned beyond --keep"
    );

    let before = server.requests().len();
    let r = agent.rollback(&["--to", "1.0.0"]);
    assert_eq!(r["to"], "1.0.0");
    tree_eq(&agent.current(), &sources.release(1));
    let downloaded = r["bytes_downloaded"].as_u64().unwrap();
    let reused = r["bytes_reused"].as_u64().unwrap();
    assert!(downloaded > 0 && reused > downloaded, "{r}");
    let archive_reqs = server.requests()[before..]
        .iter()
        .filter(|r| r.status == 206)
        .count();
    assert!(archive_reqs >= 1);

    // Going to a retained release with --to needs no server at all.
    drop(server);
    let r = agent.rollback(&["--to", "3.0.0"]);
    assert_eq!(r["to"], "3.0.0");
    tree_eq(&agent.current(), &sources.release(3));
}

#[test]
fn rollback_past_the_oldest_retained_release_is_refused() {
    let (_publisher, sources, _server, agent) = agent_through_three(&[]);
    let out = agent.ferry("rollback", &["--steps", "5"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("1.0.0"),
        "error should list retained versions: {err}"
    );
    tree_eq(&agent.current(), &sources.release(3));
}

/// Whether the filesystem holding `dir` clones files (FICLONE: btrfs, XFS): there ferry
/// shares unchanged files by reflink, a new inode, instead of a hard link.
fn clones_files(dir: &std::path::Path) -> bool {
    use std::os::fd::AsRawFd;
    let a = dir.join(".clone-probe-a");
    let b = dir.join(".clone-probe-b");
    std::fs::write(&a, b"probe").unwrap();
    let src = std::fs::File::open(&a).unwrap();
    let dst = std::fs::File::create(&b).unwrap();
    // SAFETY: FICLONE with two descriptors open for the duration of the call.
    #[allow(unsafe_code)]
    let ok = unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONE, src.as_raw_fd()) } == 0;
    let _ = std::fs::remove_file(&a);
    let _ = std::fs::remove_file(&b);
    ok
}

#[test]
fn unchanged_files_are_shared_read_only_and_one_edited_in_place_is_caught_before_a_rollback() {
    use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
    let (_publisher, sources, server, agent) = agent_through_three(&[]);
    let versions = agent.root().join("versions");
    let meta = |v: &str, f: &str| std::fs::metadata(versions.join(v).join(f)).unwrap();

    // lib/libcore.so is the same in every release: one copy on disk, read-only.
    let shared = "lib/libcore.so";
    if clones_files(&versions) {
        assert_ne!(meta("1.0.0", shared).ino(), meta("3.0.0", shared).ino());
    } else {
        assert_eq!(meta("1.0.0", shared).ino(), meta("3.0.0", shared).ino());
        assert_eq!(
            meta("3.0.0", shared).nlink(),
            3,
            "one inode for three releases"
        );
    }
    // bin/app changes in every release: its own file.
    assert_ne!(
        meta("2.0.0", "bin/app").ino(),
        meta("3.0.0", "bin/app").ino()
    );
    for f in [shared, "bin/app", "share/doc/README"] {
        let mode = meta("3.0.0", f).permissions().mode();
        assert_eq!(mode & 0o222, 0, "{f} is installed without write permission");
    }
    assert_eq!(meta("3.0.0", "bin/app").permissions().mode() & 0o777, 0o555);

    // The application edits its active copy in place (same size: only the content
    // tells): with a hard link, every release holding the file changed with it.
    let active = agent.current().join(shared);
    let mut perm = std::fs::metadata(&active).unwrap().permissions();
    perm.set_mode(0o644);
    std::fs::set_permissions(&active, perm).unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&active)
        .unwrap();
    f.write_all_at(b"edited in place", 1000).unwrap();
    drop(f);

    let before = server.requests().len();
    let out = agent.ferry("rollback", &["--json"]);
    assert_ok(&out, "rollback");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["to"], "2.0.0");
    let err = String::from_utf8_lossy(&out.stderr);
    if !clones_files(&versions) {
        assert!(
            err.contains("retained release 2.0.0 is damaged on disk")
                && err.contains("lib/libcore.so: content hash"),
            "the edit is named before switching: {err}"
        );
        assert!(r["bytes_downloaded"].as_u64().unwrap() > 0, "{r}");
        assert!(
            server.requests().len() > before,
            "the damaged file was fetched again"
        );
    }
    tree_eq(&agent.current(), &sources.release(2));
}

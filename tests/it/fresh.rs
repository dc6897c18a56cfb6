//! Fresh installs through the diff from nothing (FORMAT.md §3.9): an agent holding no
//! release takes the head's manifest diff from nothing and the whole release as one
//! long-window zstd stream, fewer bytes than the manifest and the per-chunk archive,
//! still three requests; anything wrong with them falls back to the manifest and the
//! archive; an agent holding a release never takes them.

use std::path::Path;

use ferry_tests::tree::{noise, put};
use ferry_tests::{Agent, Publisher};

use super::fixtures::{tree_eq, v};
use super::pipeline::object_url_path;

/// A release whose files repeat each other's text across chunk and file boundaries
/// (what chunks compressed one by one cannot share), a binary, a link and an empty
/// directory.
fn source_release(root: &Path, k: u64) {
    let text: String = (0..30_000)
        .map(|i| {
            format!(
                "pub fn item_{}() -> u64 {{ {} + {k} }}\n",
                i % 2_500,
                i % 11
            )
        })
        .collect();
    put(root, "src/lib.rs", text.as_bytes(), 0o644);
    put(root, "src/copy.rs", &text.as_bytes()[777..], 0o644);
    put(root, "bin/tool", &noise(k, 20_000), 0o755);
    std::fs::create_dir_all(root.join("var/empty")).unwrap();
    let _ = std::fs::remove_file(root.join("bin/tool-link"));
    std::os::unix::fs::symlink("tool", root.join("bin/tool-link")).unwrap();
}

fn update_json(out: &std::process::Output) -> serde_json::Value {
    ferry_tests::assert_ok(out, "update");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_fresh_install_takes_the_diff_from_nothing_in_three_requests_and_fewer_bytes() {
    let src = tempfile::tempdir().unwrap();
    source_release(src.path(), 1);
    let p = Publisher::new("stable");
    let published = p.publish(&v(1), src.path());
    let fresh = &published["fresh"];
    let (diff, manifest_diff) = (
        object_url_path(fresh["object"].as_str().expect("a diff from nothing")),
        object_url_path(fresh["manifest_diff"].as_str().unwrap()),
    );
    let srv = p.serve();
    let agent = Agent::init(&srv.url, "stable", &p.public_key(), &[]);

    // The dry run plans it, and prices it as the update spends it.
    let dry = agent.ferry("update", &["--dry-run", "--json"]);
    ferry_tests::assert_ok(&dry, "dry run");
    let dry: serde_json::Value = serde_json::from_slice(&dry.stdout).unwrap();
    assert_eq!(dry["via"], "diff", "{dry}");
    assert_eq!(dry["download_bytes"], fresh["size"], "{dry}");
    assert_eq!(dry["download_requests"], 1, "{dry}");
    let text = agent.ferry("update", &["--dry-run"]);
    let said =
        String::from_utf8_lossy(&text.stdout).to_string() + &String::from_utf8_lossy(&text.stderr);
    assert!(said.contains("download diff from nothing"), "{said}");

    let before = srv.requests().len();
    let out = agent.ferry("update", &["--json"]);
    let r = update_json(&out);
    tree_eq(&agent.current(), src.path());
    let reqs = srv.requests()[before..].to_vec();
    let paths: Vec<&str> = reqs.iter().map(|q| q.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/channels/stable/head",
            manifest_diff.as_str(),
            diff.as_str()
        ],
        "head, manifest diff from nothing, diff from nothing"
    );
    let logged: u64 = reqs.iter().map(|q| q.bytes).sum();
    assert_eq!(r["bytes_downloaded"].as_u64().unwrap(), logged);
    let archive_way =
        published["archive_size"].as_u64().unwrap() + published["manifest_size"].as_u64().unwrap();
    let data_way = fresh["size"].as_u64().unwrap() + fresh["manifest_diff_size"].as_u64().unwrap();
    assert_eq!(logged - reqs[0].bytes, data_way);
    assert!(
        data_way + 20_000 < archive_way,
        "{data_way} B instead of {archive_way} B of manifest and archive"
    );

    // What was installed is the signed release: verify passes, and the stored manifest
    // is the one the head names.
    ferry_tests::assert_ok(&agent.ferry("verify", &[]), "verify");
    let stored = std::fs::read(agent.root().join(".ferry/manifests/1.0.0")).unwrap();
    assert_eq!(
        ferry_format::id::Digest::of(&stored).to_hex(),
        published["manifest"].as_str().unwrap()
    );

    // The next release is an update like any other: a diff from release 1, never
    // the diff from nothing, which the agent holding a release ignores.
    let next = tempfile::tempdir().unwrap();
    source_release(next.path(), 2);
    let second = p.publish(&v(2), next.path());
    let before = srv.requests().len();
    agent.update();
    tree_eq(&agent.current(), next.path());
    let reqs = srv.requests()[before..].to_vec();
    let from_nothing = object_url_path(second["fresh"]["object"].as_str().unwrap());
    assert!(reqs.iter().all(|q| q.path != from_nothing), "{reqs:?}");
    super::pipeline::assert_diff_update(&reqs, "/channels/stable/head", &second);
}

#[test]
fn a_single_file_release_installs_from_nothing_into_its_file() {
    let src = tempfile::tempdir().unwrap();
    let text: String = (0..200_000)
        .map(|i| format!("record {} of a large single file {}\n", i % 9_000, i % 17))
        .collect();
    let file = src.path().join("data.bin");
    std::fs::write(&file, text.as_bytes()).unwrap();
    let p = Publisher::new("stable");
    let published = p.publish(&v(1), &file);
    assert!(published["fresh"]["size"].as_u64().is_some(), "{published}");
    let srv = p.serve();
    let agent = Agent::init(&srv.url, "stable", &p.public_key(), &[]);
    let r = agent.update();
    assert_eq!(r["to"], v(1));
    assert_eq!(
        std::fs::read(agent.current().join("data.bin")).unwrap(),
        text.as_bytes()
    );
    assert_eq!(r["via"], "diff", "{r}");
    assert!(
        r["bytes_downloaded"].as_u64().unwrap() < published["archive_size"].as_u64().unwrap(),
        "{r} vs {published}"
    );
    ferry_tests::assert_ok(&agent.ferry("verify", &[]), "verify");
}

#[test]
fn a_damaged_diff_from_nothing_falls_back_to_the_manifest_and_the_archive() {
    let src = tempfile::tempdir().unwrap();
    source_release(src.path(), 1);
    let p = Publisher::new("stable");
    let published = p.publish(&v(1), src.path());
    // A mirror flips one byte in the middle of the diff's zstd stream: the object no
    // longer has its pinned hash. The agent says so, installs from the manifest and the
    // archive, and does not ask for the damaged object twice.
    let hex = published["fresh"]["object"].as_str().unwrap();
    let path = p.object_file(hex);
    let mut data = std::fs::read(&path).unwrap();
    let n = data.len();
    data[n / 2] ^= 0x10;
    std::fs::write(&path, data).unwrap();
    let srv = p.serve();
    let agent = Agent::init(&srv.url, "stable", &p.public_key(), &[]);
    let before = srv.requests().len();
    let out = agent.ferry("update", &["--json"]);
    update_json(&out);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("mismatch"), "the fallback is explained: {err}");
    tree_eq(&agent.current(), src.path());
    let reqs = srv.requests()[before..].to_vec();
    let paths: Vec<&str> = reqs.iter().map(|q| q.path.as_str()).collect();
    let diff = object_url_path(hex);
    assert_eq!(paths.iter().filter(|q| **q == diff).count(), 1, "{paths:?}");
    for name in ["manifest", "archive"] {
        let want = object_url_path(published[name].as_str().unwrap());
        assert!(paths.contains(&want.as_str()), "{name}: {paths:?}");
    }
    ferry_tests::assert_ok(&agent.ferry("verify", &[]), "verify");
}

#[test]
fn a_release_published_with_no_fresh_installs_from_the_manifest_and_the_archive() {
    let src = tempfile::tempdir().unwrap();
    source_release(src.path(), 1);
    let p = Publisher::new("stable");
    let published = p.publish_with(&v(1), src.path(), &["--no-fresh"]);
    assert!(published["fresh"].is_null(), "{published}");
    let srv = p.serve();
    let agent = Agent::init(&srv.url, "stable", &p.public_key(), &[]);
    let before = srv.requests().len();
    agent.update();
    tree_eq(&agent.current(), src.path());
    super::pipeline::assert_three_requests(&srv.requests()[before..], "/channels/stable/head");
}

#[test]
fn real_programs_install_from_nothing_through_the_x86_filter_in_file_order() {
    // x86-64 programs of this machine, in a release whose successor carries most of
    // their chunks (which its table lists first) and changes one.
    let programs = [
        "/usr/bin/bash",
        "/usr/bin/tar",
        "/usr/bin/ls",
        "/usr/bin/cp",
    ];
    let release = |root: &Path, changed: bool| {
        for p in programs {
            let mut bytes = std::fs::read(p).unwrap();
            if changed && p.ends_with("tar") {
                let n = bytes.len();
                bytes[n / 3..n / 3 + 4096].fill(0x90);
            }
            put(root, &format!("bin/{}", &p[9..]), &bytes, 0o755);
        }
        put(root, "README", b"four programs\n", 0o644);
    };
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    release(one.path(), false);
    release(two.path(), true);
    let p = Publisher::new("stable");
    p.publish(&v(1), one.path());
    let published = p.publish(&v(2), two.path());
    assert!(
        published["chunks_carried"].as_u64().unwrap() > 0,
        "{published}"
    );
    let fresh = &published["fresh"];
    let object = std::fs::read(p.object_file(fresh["object"].as_str().unwrap())).unwrap();
    let (header, _) =
        ferry_format::delta::DiffHeader::decode_prefix(&object, object.len() as u64).unwrap();
    assert!(
        matches!(
            header.streams[2].codec,
            ferry_format::delta::StreamCodec::ZstdX86 { .. }
        ),
        "{:?}",
        header.streams[2]
    );

    let srv = p.serve();
    let agent = Agent::init(&srv.url, "stable", &p.public_key(), &[]);
    let r = agent.update();
    assert_eq!(
        (r["to"].as_str(), r["via"].as_str()),
        (Some(v(2).as_str()), Some("diff"))
    );
    tree_eq(&agent.current(), two.path());
    let data_way = fresh["size"].as_u64().unwrap() + fresh["manifest_diff_size"].as_u64().unwrap();
    let archive_way =
        published["archive_size"].as_u64().unwrap() + published["manifest_size"].as_u64().unwrap();
    assert!(data_way < archive_way, "{data_way} vs {archive_way}");
    ferry_tests::assert_ok(&agent.ferry("verify", &[]), "verify");
}

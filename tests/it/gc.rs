//! `ferry-server gc` on a folder repository: it deletes what no head names once it is
//! older than the grace period, keeps everything a head names and every young orphan
//! (a publish in progress), and agents still install and verify afterwards.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ferry_format::id::Digest;
use ferry_format::layout::object_path;
use ferry_tests::process::run_env;
use ferry_tests::seaweedfs::{BUCKET, SeaweedFs};
use ferry_tests::tree::{noise, put};
use ferry_tests::{Agent, Publisher, Server, assert_ok, bin, run};

use super::fixtures::{Sources, v};

fn gc(p: &Publisher, extra: &[&str]) -> String {
    let repo = p.repo();
    let mut args = vec!["gc", "--repo", repo.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = run(bin("ferry-server"), &args);
    assert_ok(&out, "gc");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every object file of the repository, as layout paths.
fn objects(repo: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for fan in std::fs::read_dir(repo.join("objects")).unwrap() {
        let fan = fan.unwrap();
        if !fan.path().is_dir() {
            continue;
        }
        for f in std::fs::read_dir(fan.path()).unwrap() {
            let f = f.unwrap();
            out.insert(format!(
                "objects/{}/{}",
                fan.file_name().to_string_lossy(),
                f.file_name().to_string_lossy()
            ));
        }
    }
    out
}

/// Writes `bytes` as a correctly named object no head references.
fn orphan(repo: &Path, bytes: &[u8]) -> String {
    let rel = object_path(&Digest::of(bytes));
    std::fs::create_dir_all(repo.join(&rel).parent().unwrap()).unwrap();
    std::fs::write(repo.join(&rel), bytes).unwrap();
    rel
}

/// Sets the file's modification time `ago` back (real `touch`, no extra crate).
fn age(path: &Path, ago: &str) {
    let out = Command::new("touch")
        .args(["-m", "-d", ago])
        .arg(path)
        .output()
        .expect("touch runs");
    assert_ok(&out, "touch -d");
}

fn obj(hex: &serde_json::Value) -> String {
    object_path(&Digest::from_hex(hex.as_str().expect("hex string")).unwrap())
}

/// The objects listed by "would delete"/"deleted" lines.
fn listed(text: &str, verb: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix(verb)?.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

#[test]
fn gc_deletes_old_unreferenced_objects_and_keeps_what_heads_name() {
    let sources = Sources::app(3);
    let p = Publisher::new("stable");
    let repo = p.repo();
    let r1 = p.publish_with(&v(1), &sources.release(1), &["--retain", "2"]);
    let r2 = p.publish_with(&v(2), &sources.release(2), &["--retain", "2"]);
    // An agent on release 2 when gc runs updates from it afterwards.
    let server = p.serve();
    let old_agent = Agent::init(&server.url, "stable", &p.public_key(), &[]);
    old_agent.update();
    assert_eq!(old_agent.active().as_deref(), Some(v(2).as_str()));
    let r3 = p.publish_with(&v(3), &sources.release(3), &["--retain", "2"]);
    // Release 1 has left the head; everything published is older than the grace.
    for o in objects(&repo) {
        age(&repo.join(o), "2 hours ago");
    }
    let old = orphan(&repo, &noise(7, 5000));
    age(&repo.join(&old), "3 hours ago");
    let fresh = orphan(&repo, &noise(8, 5000));
    let before = objects(&repo);

    let dry = gc(&p, &["--dry-run", "--grace", "1h"]);
    assert_eq!(objects(&repo), before, "--dry-run deletes nothing:\n{dry}");
    let would = listed(&dry, "would delete ");
    assert!(would.contains(&old), "{dry}");
    assert!(would.contains(&obj(&r1["archive"])), "{dry}");
    assert!(dry.contains("would free"), "{dry}");

    let done = gc(&p, &["--grace", "1h"]);
    let deleted = listed(&done, "deleted ");
    assert_eq!(deleted, would, "gc deletes what --dry-run listed:\n{done}");
    let after = objects(&repo);
    assert_eq!(
        after,
        before.difference(&deleted).cloned().collect(),
        "{done}"
    );
    assert!(!after.contains(&old) && !after.contains(&obj(&r1["archive"])));
    assert!(
        after.contains(&fresh),
        "a young orphan may be a publish under way"
    );
    for r in [&r2, &r3] {
        assert!(after.contains(&obj(&r["manifest"])), "{r}");
        assert!(after.contains(&obj(&r["archive"])), "{r}");
        // Absent from the report when the release has none.
        for d in r["manifest_diff_objects"].as_array().into_iter().flatten() {
            assert!(after.contains(&obj(&d["hash"])), "{d}");
        }
    }
    let bytes: u64 = deleted
        .iter()
        .map(|rel| before_size(&dry, rel))
        .sum::<u64>();
    assert!(
        done.contains(&format!("freed {} objects, {bytes} bytes", deleted.len())),
        "{done}"
    );

    // A second run finds nothing more to do.
    assert!(listed(&gc(&p, &["--grace", "1h"]), "deleted ").is_empty());

    // Agents on the current release and on the one before it are served in full.
    let fresh_agent = Agent::init(&server.url, "stable", &p.public_key(), &[]);
    fresh_agent.update();
    assert_eq!(fresh_agent.active().as_deref(), Some(v(3).as_str()));
    assert_ok(&fresh_agent.ferry("verify", &[]), "verify");
    old_agent.update();
    assert_eq!(old_agent.active().as_deref(), Some(v(3).as_str()));
    assert_ok(&old_agent.ferry("verify", &[]), "verify");
}

/// The size a `would delete REL (N bytes)` line gave.
fn before_size(text: &str, rel: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            let rest = l.strip_prefix("would delete ")?.strip_prefix(rel)?;
            rest.trim()
                .strip_prefix('(')?
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no size for {rel} in {text}"))
}

#[test]
fn gc_during_a_publish_keeps_the_release_being_published() {
    let sources = Sources::app(1);
    let p = Publisher::new("stable");
    let repo = p.repo();
    p.publish(&v(1), &sources.release(1));
    let old = orphan(&repo, &noise(9, 5000));
    age(&repo.join(&old), "3 days ago");

    // A large release, so its objects sit unreferenced for a while before its head.
    let big: PathBuf = p.dir.path().join("big");
    for i in 0..3 {
        put(
            &big,
            &format!("data/{i}.bin"),
            &noise(50 + i, 4 << 20),
            0o644,
        );
    }
    let key = p.key();
    let mut publish = Command::new(bin("ferry-server"));
    publish
        .args(["publish", "--repo", repo.to_str().unwrap()])
        .args(["--key", key.to_str().unwrap(), "--channel", "stable"])
        .args(["--version", &v(2), "--zstd-level", "3"])
        .arg(&big);
    let mut freed_old = false;
    gc_while_running(publish, || {
        let text = gc(&p, &[]);
        freed_old |= listed(&text, "deleted ").contains(&old);
    });
    assert!(freed_old, "gc still deleted the old orphan meanwhile");

    let server: Server = p.serve();
    let agent = Agent::init(&server.url, "stable", &p.public_key(), &[]);
    agent.update();
    assert_eq!(agent.active().as_deref(), Some(v(2).as_str()));
    assert_ok(&agent.ferry("verify", &[]), "verify");
}

/// `--keep-releases N` keeps the objects of the N newest releases each head retired
/// (found in the head log), and only those.
#[test]
fn gc_keep_releases_keeps_the_newest_retired_releases() {
    let sources = Sources::app(4);
    let p = Publisher::new("stable");
    let repo = p.repo();
    let r: Vec<_> = (1..=4)
        .map(|k| p.publish_with(&v(k), &sources.release(k), &["--retain", "2"]))
        .collect();
    for o in objects(&repo) {
        age(&repo.join(o), "2 hours ago");
    }
    let kept = gc(&p, &["--grace", "1h", "--keep-releases", "1"]);
    let after = objects(&repo);
    // 3 and 4 are in the head; 2 is the newest release it retired, 1 the older one.
    for k in [1, 2, 3] {
        assert!(after.contains(&obj(&r[k]["manifest"])), "{k}: {kept}");
        assert!(after.contains(&obj(&r[k]["archive"])), "{k}: {kept}");
    }
    // (1's manifest stays: 2's manifest diff is based on it.)
    assert!(!after.contains(&obj(&r[0]["archive"])), "{kept}");
    // Without the flag the retired release goes too.
    let done = gc(&p, &["--grace", "1h"]);
    assert!(
        listed(&done, "deleted ").contains(&obj(&r[1]["archive"])),
        "{done}"
    );
    assert!(objects(&repo).contains(&obj(&r[2]["archive"])), "{done}");
}

/// A publish that finds its object already stored (an old, unreferenced copy a
/// retired release left) renews its time: from then on gc treats it as a new upload
/// (young, kept through the grace period) until the new head names it, so a gc
/// running meanwhile cannot delete it from under that head.
#[test]
fn a_publish_reusing_an_old_object_renews_its_time_for_gc() {
    let p = Publisher::new("stable");
    let repo = p.repo();
    let big: PathBuf = p.dir.path().join("big");
    for i in 0..2 {
        put(
            &big,
            &format!("data/{i}.bin"),
            &noise(70 + i, 1 << 20),
            0o644,
        );
    }
    let small: PathBuf = p.dir.path().join("small");
    put(&small, "data/one.bin", &noise(90, 4096), 0o644);
    let r1 = p.publish_with(&v(1), &big, &["--retain", "1"]);
    p.publish_with(&v(2), &small, &["--retain", "1"]);
    let archive = repo.join(obj(&r1["archive"]));
    age(&archive, "3 days ago");
    let dry = gc(&p, &["--grace", "1h", "--dry-run"]);
    assert!(
        listed(&dry, "would delete ").contains(&obj(&r1["archive"])),
        "{dry}"
    );

    let r3 = p.publish_with(&v(3), &big, &["--retain", "1"]);
    assert_eq!(
        r3["archive"], r1["archive"],
        "the same archive object, reused"
    );
    let age = std::fs::metadata(&archive)
        .unwrap()
        .modified()
        .unwrap()
        .elapsed()
        .unwrap();
    assert!(
        age.as_secs() < 600,
        "the reused archive was renewed: {age:?}"
    );

    let done = gc(&p, &["--grace", "1h"]);
    assert!(archive.exists(), "{done}");
    let server: Server = p.serve();
    let agent = Agent::init(&server.url, "stable", &p.public_key(), &[]);
    agent.update();
    assert_eq!(agent.active().as_deref(), Some(v(3).as_str()));
    assert_ok(&agent.ferry("verify", &[]), "verify");
}

/// Starts `publish` and runs `gc` every 50 ms until it ends; asserts that it
/// succeeded and that gc ran at least once while it did.
fn gc_while_running(mut publish: Command, mut gc: impl FnMut()) {
    let mut child = publish
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("publish starts");
    let mut overlapped = 0;
    let status = loop {
        gc();
        match child.try_wait().expect("publish status") {
            Some(status) => break status,
            None => overlapped += 1,
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let out = child.wait_with_output().unwrap();
    assert!(
        status.success(),
        "publish failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(overlapped > 0, "gc never ran while the publish did");
}

/// `ferry-server ARGS` against the bucket of `s3`.
fn in_bucket(s3: &SeaweedFs, args: &[&str]) -> String {
    let env = s3.env();
    let env: Vec<(&str, Option<&str>)> = env.iter().map(|(k, v)| (*k, Some(v.as_str()))).collect();
    let out = run_env(bin("ferry-server"), args, &env);
    assert_ok(&out, &args[..2].join(" "));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn gc_in_a_bucket_uses_last_modified_and_keeps_what_heads_name() {
    let s3 = SeaweedFs::start();
    let repo = s3.repo("gc");
    let p = Publisher::new("stable");
    let sources = Sources::app(3);
    let key = p.key();
    let publish = |k: u64| -> serde_json::Value {
        let out = in_bucket(
            &s3,
            &[
                "publish",
                "--repo",
                &repo,
                "--key",
                key.to_str().unwrap(),
                "--channel",
                "stable",
                "--version",
                &v(k),
                "--zstd-level",
                "3",
                "--retain",
                "2",
                "--json",
                sources.release(k).to_str().unwrap(),
            ],
        );
        serde_json::from_str(&out).expect("publish --json prints JSON")
    };
    let r1 = publish(1);
    let r2 = publish(2);
    let r3 = publish(3);
    // Anonymous reads of the bucket tell whether an object is still there.
    let present = |r: &serde_json::Value, field: &str| {
        let got = s3
            .get(&format!("/{BUCKET}/gc/{}", obj(&r[field])))
            .unwrap_or_default();
        got.starts_with("HTTP/1.1 200")
    };
    assert!(present(&r1, "archive"));

    // Everything is younger than the default grace: nothing goes.
    let young = in_bucket(&s3, &["gc", "--repo", &repo]);
    assert!(young.contains("freed 0 objects"), "{young}");
    assert!(present(&r1, "archive"), "{young}");

    std::thread::sleep(std::time::Duration::from_secs(2));
    let dry = in_bucket(&s3, &["gc", "--repo", &repo, "--grace", "1s", "--dry-run"]);
    assert!(
        listed(&dry, "would delete ").contains(&obj(&r1["archive"])),
        "{dry}"
    );
    assert!(present(&r1, "archive"), "--dry-run deletes nothing");
    let done = in_bucket(&s3, &["gc", "--repo", &repo, "--grace", "1s"]);
    assert_eq!(listed(&done, "deleted "), listed(&dry, "would delete "));
    assert!(!present(&r1, "archive"), "{done}");
    for r in [&r2, &r3] {
        assert!(present(r, "manifest") && present(r, "archive"), "{done}");
    }

    let env = s3.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let server = Server::start_with_env(Path::new(&repo), &[], &env);
    let agent = Agent::init(&server.url, "stable", &p.public_key(), &[]);
    agent.update();
    assert_eq!(agent.active().as_deref(), Some(v(3).as_str()));
    assert_ok(&agent.ferry("verify", &[]), "verify");
}

/// gc runs over and over against the bucket while a large release is published into
/// it: the publish's uploads (younger than the grace period) are never deleted, the
/// head it swaps in names only objects that are there, and an agent installs it.
#[test]
fn gc_during_a_publish_into_a_bucket_keeps_the_release_being_published() {
    let s3 = SeaweedFs::start();
    let repo = s3.repo("gc-live");
    let p = Publisher::new("stable");
    let sources = Sources::app(1);
    let key = p.key();
    let key = key.to_str().unwrap();
    let publish_args = |version: &str, source: &Path| -> Vec<String> {
        [
            "publish",
            "--repo",
            &repo,
            "--key",
            key,
            "--channel",
            "stable",
            "--version",
            version,
            "--zstd-level",
            "3",
            "--json",
        ]
        .map(String::from)
        .into_iter()
        .chain([source.to_str().unwrap().to_string()])
        .collect()
    };
    let args = publish_args(&v(1), &sources.release(1));
    in_bucket(&s3, &args.iter().map(String::as_str).collect::<Vec<_>>());

    let big: PathBuf = p.dir.path().join("big");
    for i in 0..2 {
        put(
            &big,
            &format!("data/{i}.bin"),
            &noise(60 + i, 4 << 20),
            0o644,
        );
    }
    let mut publish = Command::new(bin("ferry-server"));
    publish.args(publish_args(&v(2), &big)).envs(s3.env());
    gc_while_running(publish, || {
        let text = in_bucket(&s3, &["gc", "--repo", &repo]);
        assert!(text.contains("freed 0 objects"), "{text}");
    });

    let env = s3.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let server = Server::start_with_env(Path::new(&repo), &[], &env);
    let agent = Agent::init(&server.url, "stable", &p.public_key(), &[]);
    agent.update();
    assert_eq!(agent.active().as_deref(), Some(v(2).as_str()));
    assert_ok(&agent.ferry("verify", &[]), "verify");
}

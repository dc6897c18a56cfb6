//! `ferry update --dry-run` against the real server: the plan and its bytes from the
//! head and the manifest alone (2 requests), nothing in the root changed (contents and
//! modification times), and the bytes and requests it announces are those the real
//! update then spends on release data — on the diff path and on the archive path.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::SystemTime;

use ferry_tests::assert_ok;
use serde_json::Value;

use super::fixtures::{Scene, Sources, v};
use super::pipeline::NO_DIFFS;

/// Every file and folder under `root` with its content and modification time, but
/// for `.ferry/lock`, which every command takes and names itself in.
fn state_of(root: &Path) -> BTreeMap<String, (String, SystemTime)> {
    ferry_tests::tree::snapshot(root)
        .into_iter()
        .filter(|(rel, _)| rel != ".ferry/lock")
        .map(|(rel, content)| {
            let mtime = std::fs::symlink_metadata(root.join(&rel))
                .unwrap()
                .modified()
                .unwrap();
            (rel, (content, mtime))
        })
        .collect()
}

fn dry_run(scene: &Scene) -> Value {
    let out = scene.agent.ferry("update", &["--dry-run", "--json"]);
    assert_ok(&out, "update --dry-run");
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

/// Publishes release 2 with `extra`, dry-runs, then updates: the dry run's figures
/// are the update's data requests (all but its head and manifest).
fn announced_equals_spent(extra: &[&str], via: &str) {
    let scene = Scene::installed(Sources::app(2), extra);
    scene
        .p
        .publish_with(&v(2), &scene.sources.release(2), extra);
    let before = state_of(scene.agent.root());
    let seen = scene.srv.requests().len();
    let dry = dry_run(&scene);
    let reqs = scene.srv.requests()[seen..].to_vec();
    assert_eq!(reqs.len(), 2, "head and manifest only: {reqs:?}");
    assert_eq!(reqs[0].path, "/channels/stable/head");
    assert!(reqs.iter().all(|r| r.range.is_none()), "{reqs:?}");
    assert_eq!(
        state_of(scene.agent.root()),
        before,
        "the dry run changed the root"
    );
    assert_eq!(dry["result"], "would-install", "{dry}");
    assert_eq!(
        (&dry["from"], &dry["to"]),
        (&Value::from(v(1)), &Value::from(v(2)))
    );
    assert_eq!(dry["via"], via, "{dry}");
    assert_eq!(dry["requests"], 2);
    let logged: u64 = reqs.iter().map(|r| r.bytes).sum();
    assert_eq!(dry["bytes_downloaded"], logged);

    let seen = scene.srv.requests().len();
    let real = scene.agent.update();
    assert_eq!(real["to"], v(2));
    let reqs = scene.srv.requests()[seen..].to_vec();
    let data = &reqs[2..];
    let data_bytes: u64 = data.iter().map(|r| r.bytes).sum();
    assert_eq!(dry["download_bytes"], data_bytes, "{dry} vs {reqs:?}");
    assert_eq!(
        dry["download_requests"],
        data.len() as u64,
        "{dry} vs {reqs:?}"
    );
    assert_eq!(dry["reuse_bytes"], real["bytes_reused"], "{dry} vs {real}");
}

#[test]
fn a_dry_run_on_the_diff_path_announces_what_the_update_spends() {
    announced_equals_spent(&[], "diff");
}

#[test]
fn a_dry_run_on_the_archive_path_announces_what_the_update_spends() {
    announced_equals_spent(NO_DIFFS, "archive");
}

#[test]
fn a_dry_run_says_up_to_date_and_refuses_over_the_budget_like_the_update() {
    let scene = Scene::installed(Sources::app(2), NO_DIFFS);
    let out = scene.agent.ferry("update", &["--dry-run"]);
    assert_ok(&out, "dry run, up to date");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("already up to date (1.0.0)"), "{text}");
    assert!(text.contains("dry run: up-to-date"), "{text}");

    scene
        .p
        .publish_with(&v(2), &scene.sources.release(2), NO_DIFFS);
    let before = state_of(scene.agent.root());
    let out = scene.agent.ferry("update", &["--dry-run"]);
    assert_ok(&out, "dry run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("plan: 1.0.0 -> 2.0.0: reuse"), "{text}");
    assert!(
        text.contains("dry run: updating 1.0.0 -> 2.0.0 would download")
            && text.contains("changed nothing"),
        "{text}"
    );
    // Over the budget: the plan, then the update's refusal and its exit status.
    let out = scene
        .agent
        .ferry("update", &["--dry-run", "--max-download", "1KiB"]);
    assert_eq!(out.status.code(), Some(6));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("download budget is 1.0 KB"), "{err}");
    assert_eq!(state_of(scene.agent.root()), before);
    assert_eq!(scene.agent.active().as_deref(), Some("1.0.0"));
}

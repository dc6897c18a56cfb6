//! Exit statuses by kind of failure (`ferry --help`, README "Exit status"): the kinds
//! not covered where their failures are tested (tamper.rs and static_host.rs: 5,
//! budget.rs: 6, limits.rs: 7 and 8, mirrors.rs: 3).

use ferry_tests::{bin, run};

use super::fixtures::{Scene, Sources, v};
use super::pipeline::NO_DIFFS;

#[test]
fn a_repository_missing_an_object_exits_4_and_changes_nothing() {
    let scene = Scene::installed(Sources::app(2), NO_DIFFS);
    let second = scene
        .p
        .publish_with(&v(2), &scene.sources.release(2), NO_DIFFS);
    let archive = scene.p.object_file(second["archive"].as_str().unwrap());
    std::fs::remove_file(&archive).unwrap();
    let err = scene.agent.update_fails_with(4);
    assert!(err.contains("404"), "{err}");
    assert_eq!(scene.agent.active().as_deref(), Some("1.0.0"));
}

#[test]
fn a_failed_health_check_exits_6_with_the_previous_release_active() {
    let scene = Scene::installed(Sources::app(2), &[]);
    let config = scene.agent.root().join(".ferry/config.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(
        "health_check = \"test \\\"$FERRY_TO\\\" != 2.0.0\"\nhealth_retries = 1\nhealth_delay = \"0s\"\n",
    );
    std::fs::write(&config, text).unwrap();
    scene.p.publish(&v(2), &scene.sources.release(2));
    let err = scene.agent.update_fails_with(6);
    assert!(
        err.contains("2.0.0 was installed but failed") && err.contains("1.0.0 is active again"),
        "{err}"
    );
    assert_eq!(scene.agent.active().as_deref(), Some("1.0.0"));
}

#[test]
fn help_lists_the_exit_statuses_and_a_usage_error_exits_2() {
    let out = run(bin("ferry"), &["--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    for line in [
        "3  offline",
        "4  network",
        "5  verification",
        "6  refused by policy",
        "7  disk",
        "8  lock",
    ] {
        assert!(help.contains(line), "{line:?} not in:\n{help}");
    }
    let out = run(bin("ferry"), &["update", "--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2));
    // Not a root: a plain error.
    let dir = tempfile::tempdir().unwrap();
    let out = run(
        bin("ferry"),
        &["status", "--root", dir.path().to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1));
}

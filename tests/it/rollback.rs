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

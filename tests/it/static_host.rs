//! The repository is plain static files: the same updates against real nginx, with
//! requests counted in nginx's own access log.

use ferry_tests::nginx::Nginx;
use ferry_tests::{Agent, Publisher};

use super::fixtures::{Sources, tree_eq, v};
use super::pipeline::{NO_DIFFS, assert_diff_update};

#[test]
fn updates_and_rollback_against_nginx() {
    let publisher = Publisher::new("stable");
    let sources = Sources::app(4);
    publisher.publish(&v(1), &sources.release(1));
    let nginx = Nginx::start(&publisher.repo());
    let agent = Agent::init(&nginx.url, "stable", &publisher.public_key(), &[]);
    assert_eq!(agent.update()["to"], v(1));
    tree_eq(&agent.current(), &sources.release(1));

    let second = publisher.publish(&v(2), &sources.release(2));
    let before = nginx.requests().len();
    let r = agent.update();
    assert_eq!(r["to"], v(2));
    let reqs = nginx.requests()[before..].to_vec();
    assert_diff_update(&reqs, "/channels/stable/head", &second);
    let logged: u64 = reqs.iter().map(|r| r.bytes).sum();
    assert_eq!(r["bytes_downloaded"].as_u64().unwrap(), logged);
    tree_eq(&agent.current(), &sources.release(2));

    publisher.publish(&v(3), &sources.release(3));
    let fourth = publisher.publish(&v(4), &sources.release(4));
    let before = nginx.requests().len();
    assert_eq!(agent.update()["to"], v(4));
    // N-2 -> N: the diff from two releases back.
    assert_diff_update(
        &nginx.requests()[before..],
        "/channels/stable/head",
        &fourth,
    );
    tree_eq(&agent.current(), &sources.release(4));

    let r = agent.rollback(&["--steps", "2"]);
    assert_eq!(r["to"], v(1));
    tree_eq(&agent.current(), &sources.release(1));
}

#[test]
fn corrupt_object_from_a_static_host_is_refused() {
    let publisher = Publisher::new("stable");
    let sources = Sources::app(2);
    publisher.publish_with(&v(1), &sources.release(1), NO_DIFFS);
    let nginx = Nginx::start(&publisher.repo());
    let agent = Agent::init(&nginx.url, "stable", &publisher.public_key(), &[]);
    agent.update();
    let second = publisher.publish_with(&v(2), &sources.release(2), NO_DIFFS);
    let archive = publisher.object_file(second["archive"].as_str().unwrap());
    let mut data = std::fs::read(&archive).unwrap();
    let n = data.len();
    data[n - 10] ^= 1;
    std::fs::write(&archive, data).unwrap();
    let err = agent.update_fails_with(5);
    assert!(err.contains("corrupt"), "{err}");
    tree_eq(&agent.current(), &sources.release(1));
}

#[test]
fn endless_metadata_from_a_static_host_is_cut_off() {
    let publisher = Publisher::new("stable");
    let sources = Sources::app(1);
    publisher.publish(&v(1), &sources.release(1));
    let nginx = Nginx::start(&publisher.repo());
    let agent = Agent::init(&nginx.url, "stable", &publisher.public_key(), &[]);
    // A compromised mirror serves a 64 MiB "head": the agent stops at the 1 MiB bound.
    std::fs::write(publisher.head_file(), vec![0u8; 64 << 20]).unwrap();
    let err = agent.update_fails_with(5);
    assert!(err.contains("larger than"), "{err}");
    let logged: u64 = nginx.requests().iter().map(|r| r.bytes).sum();
    assert!(
        logged < 16 << 20,
        "the agent read {logged} bytes of an endless head"
    );
    assert!(agent.active().is_none());
}

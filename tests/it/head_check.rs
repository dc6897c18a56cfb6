//! Conditional head checks: an agent keeps the ETag of the last verified head and
//! sends `If-None-Match`, so a check that finds nothing new is one 304 with no body,
//! measured on the wire in nginx's log; a 304 still re-checks the stored head's expiry.

use std::time::Duration;

use ferry_tests::nginx::Nginx;
use ferry_tests::{Agent, Publisher};

use super::fixtures::{Sources, tree_eq, v};

const HEAD: &str = "/channels/stable/head";

#[test]
fn an_update_with_nothing_new_is_one_304_under_1kb_through_nginx() {
    let publisher = Publisher::new("stable");
    let sources = Sources::app(2);
    publisher.publish(&v(1), &sources.release(1));
    let nginx = Nginx::start(&publisher.repo());
    let agent = Agent::init(&nginx.url, "stable", &publisher.public_key(), &[]);
    assert_eq!(agent.update()["to"], v(1));
    let ferry_dir = agent.root().join(".ferry");
    assert_eq!(
        std::fs::read(ferry_dir.join("head")).unwrap(),
        std::fs::read(publisher.head_file()).unwrap(),
        "the verified head is kept"
    );
    assert!(
        std::fs::read_to_string(ferry_dir.join("head.etag"))
            .unwrap()
            .starts_with('"')
    );

    // Separate runs (as from cron): the second sends If-None-Match and gets a 304.
    let before = nginx.wire().len();
    let r = agent.update();
    assert_eq!(r["to"], v(1));
    assert_eq!(r["requests"], 1);
    assert_eq!(r["bytes_downloaded"], 0);
    let check = nginx.wire()[before..].to_vec();
    assert_eq!(check.len(), 1, "{check:?}");
    assert_eq!((check[0].path.as_str(), check[0].status), (HEAD, 304));
    assert!(
        check[0].total() < 1024,
        "idle check costs {} bytes on the wire: {check:?}",
        check[0].total()
    );
    eprintln!("idle check on the wire: {check:?}");

    // nginx's ETag is the file's mtime in seconds and its size: a head rewritten
    // within the same second at the same size would look unchanged to it.
    std::thread::sleep(Duration::from_millis(1100));
    publisher.publish(&v(2), &sources.release(2));
    let before = nginx.wire().len();
    assert_eq!(agent.update()["to"], v(2));
    let run = nginx.wire()[before..].to_vec();
    assert_eq!(
        (run[0].path.as_str(), run[0].status),
        (HEAD, 200),
        "{run:?}"
    );
    tree_eq(&agent.current(), &sources.release(2));
    assert_eq!(
        std::fs::read(ferry_dir.join("head")).unwrap(),
        std::fs::read(publisher.head_file()).unwrap(),
        "the new head replaces the kept one"
    );

    // And the new head's tag is what the next check sends.
    let before = nginx.wire().len();
    assert_eq!(agent.update()["to"], v(2));
    let check = nginx.wire()[before..].to_vec();
    assert_eq!(check.len(), 1, "{check:?}");
    assert_eq!(check[0].status, 304);
}

#[test]
fn an_expired_head_answered_304_is_still_refused() {
    let publisher = Publisher::new("stable");
    let sources = Sources::app(1);
    publisher.publish_with(&v(1), &sources.release(1), &["--expires-in", "3s"]);
    let nginx = Nginx::start(&publisher.repo());
    let agent = Agent::init(&nginx.url, "stable", &publisher.public_key(), &[]);
    assert_eq!(agent.update()["to"], v(1));
    std::thread::sleep(Duration::from_secs(4));

    let before = nginx.wire().len();
    let err = agent.update_fails();
    assert!(err.contains("expired"), "{err}");
    let check = nginx.wire()[before..].to_vec();
    assert_eq!(check.len(), 1, "{check:?}");
    assert_eq!((check[0].path.as_str(), check[0].status), (HEAD, 304));
    assert_eq!(agent.active().as_deref(), Some("1.0.0"));
    tree_eq(&agent.current(), &sources.release(1));
}

#[test]
fn ferry_server_answers_the_head_check_with_304() {
    let publisher = Publisher::new("stable");
    let sources = Sources::app(2);
    publisher.publish(&v(1), &sources.release(1));
    let srv = publisher.serve();
    let agent = Agent::init(&srv.url, "stable", &publisher.public_key(), &[]);
    assert_eq!(agent.update()["to"], v(1));

    let before = srv.requests().len();
    let r = agent.update();
    assert_eq!(
        (r["requests"].as_u64(), r["bytes_downloaded"].as_u64()),
        (Some(1), Some(0))
    );
    let check = srv.requests()[before..].to_vec();
    assert_eq!(check.len(), 1, "{check:?}");
    assert_eq!((check[0].path.as_str(), check[0].status), (HEAD, 304));

    // ferry-server's ETag is the head's hash: a new head is fetched at once.
    publisher.publish(&v(2), &sources.release(2));
    assert_eq!(agent.update()["to"], v(2));
    tree_eq(&agent.current(), &sources.release(2));
}

#[test]
fn a_file_repository_has_no_etag_and_is_read_whole() {
    let publisher = Publisher::new("stable");
    let sources = Sources::app(1);
    publisher.publish(&v(1), &sources.release(1));
    let url = format!("file://{}", publisher.repo().display());
    let agent = Agent::init(&url, "stable", &publisher.public_key(), &[]);
    assert_eq!(agent.update()["to"], v(1));
    assert!(!agent.root().join(".ferry/head.etag").exists());
    let r = agent.update();
    assert_eq!(r["requests"], 1);
    assert!(r["bytes_downloaded"].as_u64().unwrap() > 0);
}

//! The data budget: `ferry update --max-download` refuses a plan that needs more
//! bytes, printing the plan, before anything beyond the metadata is downloaded.

use std::process::Output;

use ferry_tests::nginx::Nginx;
use ferry_tests::{Agent, Publisher};

use super::fixtures::{Sources, tree_eq, v};

fn refused(out: &Output) -> (String, String) {
    // 6: refused by policy (`ferry --help`).
    assert_eq!(
        out.status.code(),
        Some(6),
        "update should have been refused; stdout: {} stderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_plan_over_the_download_budget_is_refused_before_its_download() {
    let publisher = Publisher::new("stable");
    let sources = Sources::app(2);
    let first = publisher.publish(&v(1), &sources.release(1));
    let nginx = Nginx::start(&publisher.repo());
    let agent = Agent::init(&nginx.url, "stable", &publisher.public_key(), &[]);

    // A first install needs the whole archive (about 1.7 MiB of noise).
    let out = agent.ferry("update", &["--max-download", "100KiB"]);
    let (stdout, stderr) = refused(&out);
    assert!(stdout.contains("plan: none -> 1.0.0"), "{stdout}");
    assert!(
        stderr.contains("download budget is 102.4 KB (102400 bytes)"),
        "{stderr}"
    );
    let archive = super::pipeline::object_url_path(first["archive"].as_str().unwrap());
    let reqs = nginx.requests();
    assert!(reqs.iter().all(|r| r.path != archive), "{reqs:?}");
    let last = agent
        .history()
        .into_iter()
        .next()
        .expect("the refusal is recorded");
    assert!(
        last["result"].as_str().unwrap().contains("download budget"),
        "{last}"
    );
    assert!(
        last["bytes_downloaded"].as_u64().unwrap() < 20_000,
        "{last}"
    );
    assert!(agent.active().is_none());

    let r = agent.update_with(&["--max-download", "5MiB"]);
    assert_eq!(r["to"], v(1));
    tree_eq(&agent.current(), &sources.release(1));

    // An update by diff: refused over budget after the manifest diff, before the
    // data diff; the active release stays as it was.
    publisher.publish(&v(2), &sources.release(2));
    let before = nginx.requests().len();
    let (stdout, stderr) = refused(&agent.ferry("update", &["--max-download", "1KiB"]));
    assert!(stdout.contains("plan: 1.0.0 -> 2.0.0"), "{stdout}");
    assert!(
        stderr.contains("download budget is 1.0 KB (1024 bytes)"),
        "{stderr}"
    );
    let run = nginx.requests()[before..].to_vec();
    let bytes: u64 = run.iter().map(|r| r.bytes).sum();
    assert!(run.len() <= 2 && bytes < 20_000, "{run:?}");
    assert_eq!(agent.active().as_deref(), Some("1.0.0"));
    tree_eq(&agent.current(), &sources.release(1));

    let r = agent.update_with(&["--max-download", "5MiB"]);
    assert_eq!(r["to"], v(2));
    tree_eq(&agent.current(), &sources.release(2));
}

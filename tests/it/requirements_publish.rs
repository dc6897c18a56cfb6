//! `ferry-server publish --requires`: requirements are validated, signed into the
//! head content with their release (format 3 content), kept while the release is
//! retained, and listed by `ferry-server ls`. (What a format 2 agent does with such a
//! head is `format/src/head.rs`
//! `a_format_2_agent_reads_plain_heads_and_refuses_heads_with_requirements`.)

use ferry_format::envelope::{Envelope, ObjectKind};
use ferry_tests::{Publisher, Server, assert_ok, bin, run};

use super::fixtures::{Sources, v};
use super::online::head;

fn ls(p: &Publisher) -> String {
    let repo = p.repo();
    let out = run(
        bin("ferry-server"),
        &[
            "ls",
            "--repo",
            repo.to_str().unwrap(),
            "--key",
            p.public_key().to_str().unwrap(),
        ],
    );
    assert_ok(&out, "ls");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn content_format(p: &Publisher) -> u16 {
    Envelope::decode(ObjectKind::ChannelContent, head(p).content_bytes())
        .unwrap()
        .format
}

#[test]
fn requirements_are_signed_with_the_release_and_listed() {
    let sources = Sources::app(3);
    let p = Publisher::new("stable");
    p.publish(&v(1), &sources.release(1));
    assert_eq!(content_format(&p), 2, "no requirements: format 2 as before");
    let report = p.publish_with(
        &v(2),
        &sources.release(2),
        &[
            "--requires",
            "os=linux",
            "--requires",
            "arch=x86_64",
            "--requires",
            "min-agent=0.3.0",
            "--requires",
            "disk=500MiB",
            "--requires",
            "role=edge",
        ],
    );
    let all = "arch=x86_64 disk=500 MiB min-agent=0.3.0 os=linux role=edge";
    assert_eq!(report["requires"].as_array().unwrap().len(), 5, "{report}");
    assert_eq!(content_format(&p), 3);
    let h = head(&p);
    assert_eq!(h.requirements_of(&v(2)).to_string(), all);
    assert_eq!(
        h.requirements_of(&v(2)).get("disk").unwrap().value(),
        (500u64 << 20).to_string()
    );
    assert!(h.requirements_of(&v(1)).is_empty());
    let listing = ls(&p);
    assert!(listing.contains(&format!("requires {all}")), "{listing}");
    assert_eq!(listing.matches("requires").count(), 1, "{listing}");

    // A later release without requirements: 2.0.0 keeps its own.
    p.publish(&v(3), &sources.release(3));
    let listing = ls(&p);
    assert_eq!(listing.matches("requires").count(), 1, "{listing}");
    let h = head(&p);
    assert_eq!(h.requirements_of(&v(2)).to_string(), all);
    assert!(h.requirements_of(&v(3)).is_empty());
    // Retained no more: gone with the release, and the content is format 2 again.
    p.publish_with(&v(4), &sources.release(1), &["--retain", "1"]);
    assert!(head(&p).requirements().is_empty());
    assert_eq!(content_format(&p), 2);
    assert!(!ls(&p).contains("requires"));
}

#[test]
fn invalid_requirements_are_refused_with_the_reason() {
    let sources = Sources::app(1);
    let p = Publisher::new("stable");
    p.publish(&v(1), &sources.release(1));
    let before = std::fs::read(p.head_file()).unwrap();
    let (repo, key) = (p.repo(), p.key());
    let publish = |requires: &[&str]| {
        let mut args = vec![
            "publish",
            "--repo",
            repo.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            "--channel",
            "stable",
            "--version",
            "9.0.0",
        ];
        for r in requires {
            args.extend(["--requires", r]);
        }
        let source = sources.release(1);
        args.push(source.to_str().unwrap());
        let out = run(bin("ferry-server"), &args);
        assert!(!out.status.success(), "{requires:?} accepted");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    for (requires, says) in [
        (&["os"][..], "expected key=value"),
        (&["OS=linux"][..], "the key must be 1-32 of [a-z0-9_-]"),
        (&["role=a b"][..], "1-64 printable ASCII"),
        (&["min-agent=newest"][..], "min-agent must be a version"),
        (&["disk=lots"][..], "invalid size \"lots\""),
        (&["os=linux", "os=macos"][..], "the key os is given twice"),
    ] {
        let e = publish(requires);
        assert!(
            e.contains("invalid requirement") && e.contains(says),
            "{requires:?}: {e}"
        );
    }
    let many: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let e = publish(&many);
    assert!(
        e.contains("requirement count is 33, the limit is 32"),
        "{e}"
    );
    assert_eq!(
        std::fs::read(p.head_file()).unwrap(),
        before,
        "nothing published"
    );
}

/// `publish --to` carries them through the upload API, which verifies the format 3
/// content like any other, and the next remote publish keeps them.
#[test]
fn requirements_travel_through_the_upload_api() {
    let sources = Sources::app(2);
    let p = Publisher::new("stable");
    std::fs::create_dir_all(p.repo()).unwrap();
    let token = p.dir.path().join("token");
    std::fs::write(&token, "upload-token-requirements-0123456789\n").unwrap();
    let srv = Server::start_with(
        &p.repo(),
        &[
            "--upload-token-file",
            token.to_str().unwrap(),
            "--public-key",
            p.public_key().to_str().unwrap(),
        ],
    );
    let key = p.key();
    let publish = |version: &str, k: u64, extra: &[&str]| {
        let source = sources.release(k);
        let mut args = vec![
            "publish",
            "--to",
            &srv.url,
            "--token-file",
            token.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            "--channel",
            "stable",
            "--version",
            version,
            "--zstd-level",
            "3",
        ];
        args.extend_from_slice(extra);
        args.push(source.to_str().unwrap());
        assert_ok(&run(bin("ferry-server"), &args), "publish --to");
    };
    publish(
        &v(1),
        1,
        &["--requires", "arch=aarch64", "--requires", "role=edge"],
    );
    assert_eq!(
        head(&p).requirements_of(&v(1)).to_string(),
        "arch=aarch64 role=edge"
    );
    publish(&v(2), 2, &[]);
    let h = head(&p);
    assert_eq!(
        h.requirements_of(&v(1)).to_string(),
        "arch=aarch64 role=edge"
    );
    assert!(h.requirements_of(&v(2)).is_empty());
    assert!(ls(&p).contains("requires arch=aarch64 role=edge"));
}

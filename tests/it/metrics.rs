//! `GET /metrics` of the real `ferry-server serve`: requests and bytes by object kind
//! agree with the access log, and `promtool check metrics` (Debian's prometheus
//! package) accepts the whole text.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use ferry_tests::Publisher;

use super::fixtures::{Scene, Sources, v};

/// The body of a plain `GET path` (HTTP/1.1, `Connection: close`), and its headers.
pub fn get(url: &str, path: &str) -> (String, String) {
    let addr = url.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    (head.to_string(), body.to_string())
}

/// Runs `promtool check metrics` on `text` and panics with its complaints unless it
/// exits 0 (1 is a parse error, 3 a lint problem).
pub fn promtool_check(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("promtool: {e}: install it (`apt-get install -y prometheus`; .ci/run does)")
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}\n{}{}\n--- metrics:\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The value of the sample named exactly `name` (with its labels), 0 when absent.
pub fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

#[test]
fn metrics_count_requests_and_bytes_by_object_kind_and_pass_promtool() {
    let Scene {
        p,
        sources,
        srv,
        agent,
    } = Scene::installed(Sources::app(2), &[]);
    // 1 → 2 takes a manifest diff and a diff object.
    p.publish(&v(2), &sources.release(2));
    assert_eq!(agent.update()["to"], v(2));
    let logged = srv.requests();

    let (head, text) = get(&srv.url, "/metrics");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    promtool_check(&text);

    let count = |kind: &str| {
        sample(
            &text,
            &format!("ferry_requests_total{{kind=\"{kind}\",class=\"2xx\"}}"),
        )
    };
    let bytes = |kind: &str| {
        sample(
            &text,
            &format!("ferry_response_bytes_total{{kind=\"{kind}\"}}"),
        )
    };
    for kind in ["head", "manifest", "archive", "diff"] {
        assert!(count(kind) >= 1.0, "no {kind} request counted:\n{text}");
    }
    // The bytes by kind add up to what the access log recorded, and heads are the
    // `channels/` lines of it.
    let total: u64 = logged.iter().map(|r| r.bytes).sum();
    let kinds = ["head", "manifest", "archive", "diff", "key_list", "other"];
    let counted: f64 = kinds.iter().map(|k| bytes(k)).sum();
    assert_eq!(counted, total as f64, "{logged:?}\n{text}");
    let heads: u64 = logged
        .iter()
        .filter(|r| r.path.starts_with("/channels/"))
        .map(|r| r.bytes)
        .sum();
    assert_eq!(bytes("head"), heads as f64, "{text}");
    let requests: f64 = text
        .lines()
        .filter(|l| l.starts_with("ferry_requests_total{"))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap())
        .sum();
    assert_eq!(requests, logged.len() as f64, "{text}");
}

#[test]
fn metrics_with_uploads_enabled_pass_promtool() {
    let publisher = Publisher::new("stable");
    let repo = publisher.repo();
    std::fs::create_dir_all(&repo).unwrap();
    let token = publisher.dir.path().join("server.token");
    std::fs::write(&token, "metrics-upload-token-0123456789\n").unwrap();
    let srv = ferry_tests::Server::start_with(
        &repo,
        &[
            "--upload-token-file",
            token.to_str().unwrap(),
            "--public-key",
            publisher.public_key().to_str().unwrap(),
        ],
    );
    let (_, text) = get(&srv.url, "/metrics");
    promtool_check(&text);
    assert_eq!(sample(&text, "ferry_uploads_total{kind=\"object\"}"), 0.0);
    assert!(
        text.contains("ferry_upload_refused_total{reason=\"auth\"} 0\n"),
        "{text}"
    );
}

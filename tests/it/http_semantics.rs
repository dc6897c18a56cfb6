//! What a cache or CDN in front of `ferry-server serve` relies on: Range, ETag and
//! If-None-Match, immutable caching of objects, HEAD, /healthz, no path outside the
//! repository, and a graceful exit on SIGTERM.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use ferry_tests::Publisher;

use super::fixtures::{Sources, v};

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn request(url: &str, method: &str, path: &str, extra: &[(&str, &str)]) -> Response {
    let addr = url.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in extra {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Response {
        status,
        headers,
        body: raw[split..].to_vec(),
    }
}

#[test]
fn serve_speaks_http_caches_understand() {
    let publisher = Publisher::new("stable");
    let sources = Sources::app(1);
    let out = publisher.publish(&v(1), &sources.release(1));
    let archive_hex = out["archive"].as_str().unwrap().to_string();
    let archive_file = publisher.object_file(&archive_hex);
    let archive = std::fs::read(&archive_file).unwrap();
    let server = publisher.serve();
    let url = server.url.clone();
    let path = format!("/objects/{}/{}", &archive_hex[..2], archive_hex);

    let full = request(&url, "GET", &path, &[]);
    assert_eq!(full.status, 200);
    assert_eq!(full.body, archive);
    assert!(full.header("cache-control").unwrap().contains("immutable"));
    let etag = full.header("etag").unwrap().to_string();
    assert_eq!(etag, format!("\"{archive_hex}\""));

    let part = request(&url, "GET", &path, &[("Range", "bytes=10-19")]);
    assert_eq!(part.status, 206);
    assert_eq!(part.body, &archive[10..20]);
    assert_eq!(
        part.header("content-range").unwrap(),
        format!("bytes 10-19/{}", archive.len())
    );
    let suffix = request(&url, "GET", &path, &[("Range", "bytes=-5")]);
    assert_eq!(suffix.body, &archive[archive.len() - 5..]);
    let beyond = request(
        &url,
        "GET",
        &path,
        &[("Range", &format!("bytes={}-", archive.len() + 5))],
    );
    assert_eq!(beyond.status, 416);

    let cached = request(&url, "GET", &path, &[("If-None-Match", &etag)]);
    assert_eq!(cached.status, 304);
    assert!(cached.body.is_empty());

    let head = request(&url, "HEAD", &path, &[]);
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("content-length").unwrap(),
        archive.len().to_string()
    );
    assert!(head.body.is_empty());

    let ch = request(&url, "GET", "/channels/stable/head", &[]);
    assert_eq!(ch.status, 200);
    assert!(!ch.header("cache-control").unwrap().contains("immutable"));

    assert_eq!(request(&url, "GET", "/healthz", &[]).status, 200);
    for evil in [
        "/../../../../etc/passwd",
        "/objects/../../etc/passwd",
        "/channels/stable/../../keys/ferry.key",
        "/objects/%2e%2e/%2e%2e/keys/ferry.key",
        "/keys/ferry.key",
    ] {
        let r = request(&url, "GET", evil, &[]);
        assert!(
            r.status == 404 || r.status == 400,
            "{evil} answered {}",
            r.status
        );
        assert!(!String::from_utf8_lossy(&r.body).contains("ferry-secret-key"));
    }

    let status = server.terminate();
    assert!(status.success(), "SIGTERM ends serve cleanly: {status}");
}

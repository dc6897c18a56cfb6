//! The server in-process on 127.0.0.1:0, driven by raw HTTP/1.1 requests.

use std::fs;
use std::net::SocketAddr;
use std::path::Path;

use ferry_format::id::Digest;
use ferry_format::layout::{head_path, object_path};
use ferry_server::serve::{ServeOptions, Server};
use ferry_server::store::Store;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends one request with `Connection: close` and reads the whole reply.
async fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8(raw[..split].to_vec()).unwrap();
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
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.trim().to_string(), v.trim().to_string())
        })
        .collect();
    Reply {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

fn log_lines(path: &Path) -> Vec<serde_json::Value> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_the_repository_and_nothing_else() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, repo) = (tmp.path().join("src"), tmp.path().join("repo"));
    make_tree(&src);
    let rep = publish_at(&repo, &src, "stable", "1.0.0");
    let archive_hash = Digest::from_hex(&rep.archive).unwrap();
    let archive = fs::read(repo.join(object_path(&archive_hash))).unwrap();
    let archive_path = format!("/{}", object_path(&archive_hash));
    let log = tmp.path().join("access.log");

    let server = Server::bind(&ServeOptions {
        store: Store::folder(&repo),
        listen: "127.0.0.1:0".parse().unwrap(),
        max_connections: 4,
        access_log: Some(log.clone()),
    })
    .await
    .unwrap();
    let addr = server.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));

    let r = request(addr, "GET", "/healthz", &[]).await;
    assert_eq!((r.status, r.body.as_slice()), (200, &b"ok"[..]));

    // Whole object.
    let r = request(addr, "GET", &archive_path, &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, archive);
    let etag = format!("\"{}\"", rep.archive);
    assert_eq!(r.header("etag"), Some(etag.as_str()));
    assert_eq!(
        r.header("cache-control"),
        Some("public, max-age=31536000, immutable")
    );
    assert_eq!(r.header("accept-ranges"), Some("bytes"));
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    assert_eq!(
        r.header("content-length"),
        Some(archive.len().to_string().as_str())
    );

    // Single range, suffix range, unsatisfiable, multi-range.
    let r = request(addr, "GET", &archive_path, &[("Range", "bytes=10-109")]).await;
    assert_eq!(r.status, 206);
    assert_eq!(r.body, archive[10..110]);
    let cr = format!("bytes 10-109/{}", archive.len());
    assert_eq!(r.header("content-range"), Some(cr.as_str()));
    let r = request(addr, "GET", &archive_path, &[("Range", "bytes=-10")]).await;
    assert_eq!(
        (r.status, &r.body[..]),
        (206, &archive[archive.len() - 10..])
    );
    let far = format!("bytes={}-", archive.len());
    let r = request(addr, "GET", &archive_path, &[("Range", &far)]).await;
    assert_eq!(r.status, 416);
    let cr = format!("bytes */{}", archive.len());
    assert_eq!(r.header("content-range"), Some(cr.as_str()));
    let r = request(addr, "GET", &archive_path, &[("Range", "bytes=0-1,5-9")]).await;
    assert_eq!((r.status, r.body.len()), (200, archive.len()));

    // Conditional requests.
    let r = request(addr, "GET", &archive_path, &[("If-None-Match", &etag)]).await;
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
    assert_eq!(r.header("etag"), Some(etag.as_str()));
    let r = request(
        addr,
        "GET",
        &archive_path,
        &[("If-None-Match", "\"other\"")],
    )
    .await;
    assert_eq!(r.status, 200);

    // HEAD: headers, no body.
    let r = request(addr, "HEAD", &archive_path, &[]).await;
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    assert_eq!(
        r.header("content-length"),
        Some(archive.len().to_string().as_str())
    );

    // The channel head: short cache, ETag = blake3 of its bytes.
    let head_bytes = fs::read(repo.join(head_path("stable"))).unwrap();
    let r = request(addr, "GET", "/channels/stable/head", &[]).await;
    assert_eq!((r.status, &r.body), (200, &head_bytes));
    let head_etag = format!("\"{}\"", Digest::of(&head_bytes).to_hex());
    assert_eq!(r.header("etag"), Some(head_etag.as_str()));
    assert_eq!(
        r.header("cache-control"),
        Some("public, max-age=10, must-revalidate")
    );
    let r = request(
        addr,
        "GET",
        "/channels/stable/head",
        &[("If-None-Match", &head_etag)],
    )
    .await;
    assert_eq!(r.status, 304);

    // Nothing outside the layout.
    fs::write(repo.join("secret.txt"), b"no").unwrap();
    for bad in [
        "/../etc/passwd",
        "/objects/..%2F..%2Fetc%2Fpasswd",
        "/objects/../../etc/passwd",
        "/secret.txt",
        "/channels/stable/../../secret.txt",
        "/channels/nosuch/head",
        "/channels/%2e%2e/head",
        &format!("/objects/00/{}", Digest::of(b"missing").to_hex()),
        &format!("/{}", object_path(&Digest::of(b"missing"))),
        "/",
    ] {
        let r = request(addr, "GET", bad, &[]).await;
        assert_eq!(r.status, 404, "{bad}");
    }
    let r = request(addr, "POST", &archive_path, &[("Content-Length", "0")]).await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));

    let r = request(addr, "GET", "/metrics", &[]).await;
    let text = String::from_utf8(r.body).unwrap();
    // Requests are counted by object kind and status class.
    assert!(
        text.contains("ferry_requests_total{kind=\"archive\",class=\"2xx\"}"),
        "{text}"
    );
    assert!(
        text.contains("ferry_requests_total{kind=\"head\",class=\"3xx\"} 1\n"),
        "{text}"
    );

    // The access log has one line per request, with body bytes and the range.
    let lines = log_lines(&log);
    assert_eq!(lines.len(), 23, "{lines:#?}");
    let ranged = &lines[2];
    assert_eq!(ranged["status"], 206);
    assert_eq!(ranged["bytes"], 100);
    assert_eq!(ranged["range"], "bytes=10-109");
    assert_eq!(ranged["path"], archive_path.as_str());
    assert_eq!(lines[1]["bytes"], archive.len() as u64);
    assert!(lines[1]["range"].is_null());
    assert_eq!(lines[0]["method"], "GET");

    // Graceful shutdown returns.
    stop.send(()).unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(15), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(TcpStream::connect(addr).await.is_err(), "listener closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cap_sheds_idle_connections_and_defers_behind_busy_ones() {
    let tmp = tempfile::tempdir().unwrap();
    // An object large enough that a client not reading it keeps its response in flight.
    let big = vec![7u8; 32 << 20];
    let path = object_path(&Digest::of(&big));
    fs::create_dir_all(tmp.path().join(&path).parent().unwrap()).unwrap();
    fs::write(tmp.path().join(&path), &big).unwrap();
    let server = Server::bind(&ServeOptions {
        store: Store::folder(tmp.path()),
        listen: "127.0.0.1:0".parse().unwrap(),
        max_connections: 1,
        access_log: None,
    })
    .await
    .unwrap();
    let addr = server.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));

    // An idle connection takes the only slot; a new client gets it instead of waiting.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let r = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        request(addr, "GET", "/healthz", &[]),
    )
    .await
    .expect("served by shedding the idle connection");
    assert_eq!(r.status, 200);
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), idle.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "the idle connection was closed");

    // A connection with a response in flight is never shed: the next client waits.
    let mut busy = TcpStream::connect(addr).await.unwrap();
    busy.write_all(format!("GET /{path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let second = tokio::spawn(request(addr, "GET", "/healthz", &[]));
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert!(!second.is_finished(), "a busy connection was shed");
    drop(busy);
    let r = tokio::time::timeout(std::time::Duration::from_secs(5), second)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.status, 200);

    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

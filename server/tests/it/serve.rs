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

/// Starts a server on `repo`; returns its address and a stop handle.
async fn start(
    repo: &Path,
) -> (
    SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<ferry_server::error::Result<()>>,
) {
    let server = Server::bind(&ServeOptions {
        store: Store::folder(repo),
        listen: "127.0.0.1:0".parse().unwrap(),
        max_connections: 8,
        access_log: None,
    })
    .await
    .unwrap();
    let addr = server.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    (addr, stop, task)
}

/// Writes `object` into `repo` under its name; returns its URL path.
fn put_object(repo: &Path, object: &[u8]) -> String {
    let path = object_path(&Digest::of(object));
    fs::create_dir_all(repo.join(&path).parent().unwrap()).unwrap();
    fs::write(repo.join(&path), object).unwrap();
    format!("/{path}")
}

/// Splits the replies to pipelined requests (`heads[i]`: whether request i was a HEAD).
fn replies(mut raw: &[u8], heads: &[bool]) -> Vec<Reply> {
    let mut out = Vec::new();
    for &head in heads {
        let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let text = String::from_utf8(raw[..split].to_vec()).unwrap();
        let mut lines = text.split("\r\n");
        let status: u16 = lines.next().unwrap()[9..12].parse().unwrap();
        let headers: Vec<(String, String)> = lines
            .map(|l| {
                let (n, v) = l.split_once(':').unwrap();
                (n.trim().to_string(), v.trim().to_string())
            })
            .collect();
        let len: usize = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .map_or(0, |(_, v)| v.parse().unwrap());
        let len = if head || status == 304 { 0 } else { len };
        let body = raw[split + 4..split + 4 + len].to_vec();
        raw = &raw[split + 4 + len..];
        out.push(Reply {
            status,
            headers,
            body,
        });
    }
    assert!(raw.is_empty(), "{} bytes after the last reply", raw.len());
    out
}

/// Plain HTTP/1.1 sends file bodies with sendfile (serve::zero_copy): replies to
/// pipelined and keep-alive requests of every shape come back byte for byte, in order,
/// long bodies (several stand-ins) included, and HTTP/2 reads the same bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_file_bodies_come_back_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path();
    // Over two stand-ins long (4 MiB each), and not a multiple of a page.
    let big: Vec<u8> = (0..(9 << 20) + 12_345u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let small = b"FRYM a small object".to_vec();
    let (big_path, small_path) = (put_object(repo, &big), put_object(repo, &small));
    fs::create_dir_all(repo.join("channels/stable")).unwrap();
    let head = b"a head, as served".to_vec();
    fs::write(repo.join(head_path("stable")), &head).unwrap();
    let big_tag = format!("\"{}\"", Digest::of(&big).to_hex());
    let (addr, stop, task) = start(repo).await;

    let n = big.len();
    type Headers<'a> = Vec<(&'a str, String)>;
    let requests: Vec<(&str, &str, Headers)> = vec![
        ("GET", &big_path, vec![("Range", "bytes=100-65635".into())]),
        ("GET", &small_path, vec![]),
        ("HEAD", &big_path, vec![]),
        ("GET", "/channels/stable/head", vec![]),
        ("GET", &big_path, vec![("If-None-Match", big_tag.clone())]),
        ("GET", &big_path, vec![]),
        (
            "GET",
            &big_path,
            vec![("Range", format!("bytes={}-", n - 7))],
        ),
        ("GET", &big_path, vec![("Range", format!("bytes={n}-"))]),
        (
            "GET",
            &big_path,
            vec![("Range", "bytes=4194000-8389000".into())],
        ),
        ("GET", "/healthz", vec![]),
        ("GET", &small_path, vec![("Range", "bytes=2-4".into())]),
    ];
    let mut raw_req = String::new();
    for (method, path, headers) in &requests {
        raw_req.push_str(&format!("{method} {path} HTTP/1.1\r\nHost: t\r\n"));
        for (name, value) in headers {
            raw_req.push_str(&format!("{name}: {value}\r\n"));
        }
        raw_req.push_str("\r\n");
    }
    // The last one closes, so the whole exchange ends at EOF.
    raw_req.push_str(&format!(
        "GET {big_path} HTTP/1.1\r\nHost: t\r\nRange: bytes=0-0\r\nConnection: close\r\n\r\n"
    ));
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(raw_req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(30), s.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let mut heads: Vec<bool> = requests.iter().map(|r| r.0 == "HEAD").collect();
    heads.push(false);
    let r = replies(&raw, &heads);
    let expect: Vec<(u16, &[u8])> = vec![
        (206, &big[100..65636]),
        (200, &small),
        (200, b""),
        (200, &head),
        (304, b""),
        (200, &big),
        (206, &big[n - 7..]),
        (416, b""),
        (206, &big[4_194_000..8_389_001]),
        (200, b"ok"),
        (206, &small[2..5]),
        (206, &big[..1]),
    ];
    for (i, (reply, (status, body))) in r.iter().zip(&expect).enumerate() {
        assert_eq!(reply.status, *status, "reply {i}");
        assert!(reply.body == *body, "reply {i}: body differs");
    }
    assert_eq!(r[2].header("content-length"), Some(n.to_string().as_str()));

    // Many keep-alive requests on one connection, one at a time.
    let mut s = TcpStream::connect(addr).await.unwrap();
    for i in 0..50usize {
        let start = (i * 199_999) % (n - 70_000);
        let len = [1, 4096, 65_536, 69_999][i % 4];
        let req = format!(
            "GET {big_path} HTTP/1.1\r\nHost: t\r\nRange: bytes={start}-{}\r\n\r\n",
            start + len - 1
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        let mut buf = vec![0u8; 128 << 10];
        let reply = loop {
            let k = s.read(&mut buf).await.unwrap();
            assert!(k > 0, "closed early");
            raw.extend_from_slice(&buf[..k]);
            if let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n")
                && raw.len() >= split + 4 + len
            {
                break replies(&raw, &[false]);
            }
        };
        assert_eq!(reply[0].status, 206);
        assert!(reply[0].body == big[start..start + len], "request {i}");
    }

    // HTTP/2 (prior knowledge) is framed in user space: the same bytes.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let resp = client
        .get(format!("http://{addr}{big_path}"))
        .header("range", "bytes=5000000-5070000")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 206);
    let got = resp.bytes().await.unwrap();
    assert!(got == big[5_000_000..5_070_001]);

    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

/// Heads are kept in memory (serve::files), yet a head replaced by a rename (publish,
/// upload) or rewritten in place is served at once, with the ETag of its new bytes —
/// also a same-size rewrite right after the previous change, and one long after the
/// cached copy was read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_head_is_served_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let file = repo.join(head_path("stable"));
    fs::create_dir_all(file.parent().unwrap()).unwrap();
    fs::write(&file, b"head version 1").unwrap();
    let (addr, stop, task) = start(&repo).await;
    let get = || request(addr, "GET", "/channels/stable/head", &[]);
    let check = |r: Reply, want: &[u8]| {
        assert_eq!((r.status, r.body.as_slice()), (200, want));
        let tag = format!("\"{}\"", Digest::of(want).to_hex());
        assert_eq!(r.header("etag"), Some(tag.as_str()));
    };
    check(get().await, b"head version 1");
    check(get().await, b"head version 1");

    // Replaced by a rename, as publish does.
    let tmp_head = file.with_extension("tmp");
    fs::write(&tmp_head, b"head version 2").unwrap();
    fs::rename(&tmp_head, &file).unwrap();
    check(get().await, b"head version 2");
    // Rewritten in place, same size, within the same clock tick or so.
    fs::write(&file, b"head version 3").unwrap();
    check(get().await, b"head version 3");
    fs::write(&file, b"head version 4").unwrap();
    check(get().await, b"head version 4");

    // Read once it has been quiet for longer than the racy window: served from
    // memory from then on, until it changes.
    tokio::time::sleep(
        ferry_server::serve::files::RACY_COARSE + std::time::Duration::from_millis(300),
    )
    .await;
    check(get().await, b"head version 4");
    check(get().await, b"head version 4");
    fs::write(&file, b"head version 5").unwrap();
    check(get().await, b"head version 5");
    fs::remove_file(&file).unwrap();
    assert_eq!(get().await.status, 404);
    fs::write(&file, b"head version 6").unwrap();
    check(get().await, b"head version 6");

    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

/// Objects are kept open (serve::files): one deleted (by `gc`) may still be served
/// from the open file — its bytes are still exactly those its name promises — but for
/// no longer than `files::RECHECK`, then it is 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_object_is_not_served_past_the_recheck() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path();
    let object = b"an object soon collected".to_vec();
    let path = put_object(repo, &object);
    let (addr, stop, task) = start(repo).await;
    let r = request(addr, "GET", &path, &[]).await;
    assert_eq!((r.status, &r.body), (200, &object));
    fs::remove_file(repo.join(&path[1..])).unwrap();
    let r = request(addr, "GET", &path, &[]).await;
    assert!(
        (r.status == 200 && r.body == object) || r.status == 404,
        "{} {:?}",
        r.status,
        r.body
    );
    tokio::time::sleep(ferry_server::serve::files::RECHECK + std::time::Duration::from_millis(300))
        .await;
    assert_eq!(request(addr, "GET", &path, &[]).await.status, 404);
    assert_eq!(request(addr, "HEAD", &path, &[]).await.status, 404);
    // Put back, it is served again.
    put_object(repo, &object);
    let r = request(addr, "GET", &path, &[]).await;
    assert_eq!((r.status, &r.body), (200, &object));

    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

/// What serve's HTTP/1.1 fast path does not answer itself goes to hyper, with the
/// bytes already read: replies to a pipelined mix come back in order, and the
/// connection keeps being served by hyper after. HTTP/1.0 keep-alive and
/// `Connection: close` are answered as hyper answers them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fast_path_hands_over_what_it_does_not_answer() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path();
    let object = b"FRYD some diff".to_vec();
    let path = put_object(repo, &object);
    let (addr, stop, task) = start(repo).await;

    let mut s = TcpStream::connect(addr).await.unwrap();
    let raw = format!(
        "GET {path} HTTP/1.1\r\nHost: t\r\nRange: bytes=0-3\r\n\r\n\
         GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n\
         GET {path} HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nxx\
         GET {path}?q=1 HTTP/1.1\r\nHost: t\r\n\r\n\
         HEAD {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    );
    s.write_all(raw.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).await.unwrap();
    let r = replies(&got, &[false, false, false, false, true]);
    assert_eq!((r[0].status, r[0].body.as_slice()), (206, &object[..4]));
    assert_eq!((r[1].status, r[1].body.as_slice()), (200, &b"ok"[..]));
    assert_eq!((r[2].status, &r[2].body), (200, &object));
    assert_eq!((r[3].status, &r[3].body), (200, &object));
    assert_eq!(r[4].status, 200);
    assert_eq!(r[4].header("connection"), Some("close"));

    // HTTP/1.0: answered in HTTP/1.0; kept open only when asked.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let raw =
        format!("GET {path} HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET {path} HTTP/1.0\r\n\r\n");
    s.write_all(raw.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).await.unwrap();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.0 200 OK\r\n"), "{text}");
    let r = replies(&got, &[false, false]);
    assert_eq!(r[0].header("connection"), Some("keep-alive"));
    assert_eq!(r[1].header("connection"), None);
    assert_eq!((&r[0].body, &r[1].body), (&object, &object));

    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

/// A client that stops reading a file body sent by the fast path (sendfile) is
/// dropped after `conns::STALL_TIMEOUT`, freeing its connection slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_download_is_dropped() {
    use ferry_server::serve::conns::STALL_TIMEOUT;
    let tmp = tempfile::tempdir().unwrap();
    let big = vec![3u8; 48 << 20];
    let path = put_object(tmp.path(), &big);
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

    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut s = socket.connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .await
        .unwrap();
    tokio::time::sleep(STALL_TIMEOUT + std::time::Duration::from_secs(4)).await;
    // The only slot is free again.
    let r = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        request(addr, "GET", "/healthz", &[]),
    )
    .await
    .expect("the stalled connection was dropped");
    assert_eq!(r.status, 200);
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    assert!(got < big.len(), "the whole body arrived");

    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

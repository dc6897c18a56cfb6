//! `ferry-server serve` under hostile clients, with default settings: connections
//! that sit idle or never finish their request head cannot lock out a normal client
//! (the idle ones are shed to make room, and closed by the idle timeout anyway), and
//! the access log is reopened on SIGHUP for logrotate.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use ferry_tests::tree::put;
use ferry_tests::{Publisher, Server};

/// A published channel `stable`, served with default settings.
fn served() -> (Publisher, Server) {
    let p = Publisher::new("stable");
    let src = tempfile::tempdir().unwrap();
    put(src.path(), "app.txt", b"hello", 0o644);
    p.publish("1.0.0", src.path());
    let server = p.serve();
    (p, server)
}

fn addr(server: &Server) -> SocketAddr {
    server
        .url
        .trim_start_matches("http://")
        .parse()
        .expect("server address")
}

/// One `GET` on a fresh connection; the status line and the whole response.
fn get(addr: SocketAddr, path: &str, limit: Duration) -> String {
    let mut c = TcpStream::connect_timeout(&addr, limit).expect("connect");
    c.set_read_timeout(Some(limit)).unwrap();
    write!(
        c,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = Vec::new();
    c.read_to_end(&mut out).expect("a complete response");
    String::from_utf8_lossy(&out).into_owned()
}

/// Raises this process's soft limit on open files (unprivileged, up to the hard
/// limit) when it is below `want`, with util-linux `prlimit` (no unsafe code).
fn ensure_fd_limit(want: u64) {
    let soft = || -> (u64, u64) {
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
        let line = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .unwrap();
        let mut f = line.split_whitespace().skip(3);
        let parse = |s: Option<&str>| s.unwrap().parse().unwrap_or(u64::MAX);
        (parse(f.next()), parse(f.next()))
    };
    let (have, hard) = soft();
    if have >= want {
        return;
    }
    let new = want.min(hard);
    let status = std::process::Command::new("prlimit")
        .arg(format!("--pid={}", std::process::id()))
        .arg(format!("--nofile={new}:{hard}"))
        .status();
    let (now, _) = soft();
    assert!(
        now >= want,
        "this test needs {want} open files; the limit is {now} (hard {hard}), prlimit: {status:?}"
    );
}

#[test]
fn a_normal_request_is_answered_while_1200_connections_idle_or_stall() {
    ensure_fd_limit(1_400);
    let (_p, server) = served();
    let addr = addr(&server);
    let mut hostile = Vec::new();
    let opening = Instant::now();
    for i in 0..1_200 {
        let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("hostile connection {i}: {e}"));
        if i % 2 == 1 {
            // A request head that never ends.
            c.write_all(b"GET /channels/stable/head HTTP/1.1\r\nHost: test\r\nX-Slow: ")
                .unwrap();
        }
        hostile.push(c);
    }
    eprintln!(
        "1,200 hostile connections open after {:?}",
        opening.elapsed()
    );
    let started = Instant::now();
    let answer = get(addr, "/channels/stable/head", Duration::from_secs(60));
    let took = started.elapsed();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(took < Duration::from_secs(60), "answered after {took:?}");
    eprintln!("answered in {took:?} behind 1,200 hostile connections");
    // Room was made by shedding idle connections, not by waiting for timeouts: at
    // least one per connection beyond the default cap of 1,024.
    let metrics = get(addr, "/metrics", Duration::from_secs(60));
    let shed: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("ferry_connections_shed_total "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(shed > 1_200 - 1_024, "shed {shed}");
    drop(hostile);
}

#[test]
fn idle_http1_and_http2_connections_are_closed() {
    let (_p, server) = served();
    let addr = addr(&server);
    let h2 = std::thread::spawn(move || {
        let mut c = TcpStream::connect(addr).unwrap();
        // h2c with prior knowledge: the preface and an empty SETTINGS frame.
        c.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
            .unwrap();
        time_to_close(c)
    });
    let h1 = std::thread::spawn(move || {
        let mut c = TcpStream::connect(addr).unwrap();
        // One request on a keep-alive connection, then silence.
        write!(c, "GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
        time_to_close(c)
    });
    // The same on a connection that serve's HTTP/1.1 fast path answers.
    let fast = std::thread::spawn(move || {
        let mut c = TcpStream::connect(addr).unwrap();
        write!(
            c,
            "GET /channels/stable/head HTTP/1.1\r\nHost: test\r\n\r\n"
        )
        .unwrap();
        time_to_close(c)
    });
    for (what, t) in [
        ("HTTP/2", h2.join().unwrap()),
        ("HTTP/1.1", h1.join().unwrap()),
        ("HTTP/1.1 (fast path)", fast.join().unwrap()),
    ] {
        assert!(
            t >= Duration::from_secs(25) && t < Duration::from_secs(45),
            "{what} idle connection closed after {t:?}"
        );
    }
}

/// How long until the server closes `c` (reading and discarding what it sends).
fn time_to_close(mut c: TcpStream) -> Duration {
    let started = Instant::now();
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => return started.elapsed(),
            Ok(_) => {}
        }
    }
}

#[test]
fn access_log_reopens_on_sighup() {
    let (_p, server) = served();
    let addr = addr(&server);
    assert!(get(addr, "/healthz", Duration::from_secs(10)).starts_with("HTTP/1.1 200"));
    let rotated = server.access_log.with_extension("log.1");
    std::fs::rename(&server.access_log, &rotated).unwrap();
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    // The signal is handled asynchronously: ask until the new file appears.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.access_log.exists() {
        assert!(Instant::now() < deadline, "no new access log after SIGHUP");
        std::thread::sleep(Duration::from_millis(50));
    }
    let answer = get(addr, "/channels/stable/head", Duration::from_secs(10));
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "the server survived SIGHUP: {answer}"
    );
    let old = std::fs::read_to_string(&rotated).unwrap();
    assert!(old.contains("/healthz"), "{old}");
    assert!(!old.contains("/channels/"), "{old}");
    let new = std::fs::read_to_string(&server.access_log).unwrap();
    assert!(new.contains("/channels/stable/head"), "{new}");
}

/// `PUT path` with the upload token and `body`; the status and the Retry-After header.
fn put_object(addr: SocketAddr, token: &str, body: &[u8]) -> (u16, Option<u64>) {
    let path = ferry_format::layout::object_path(&ferry_format::id::Digest::of(body));
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        c,
        "PUT /{path} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {token}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    // The server may answer (413, 429) before reading the body and close.
    let _ = c.write_all(body);
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status: {text}"));
    let retry_after = text
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("retry-after:")
                .map(str::to_string)
        })
        .map(|v| v.trim().parse().unwrap());
    (status, retry_after)
}

#[test]
fn a_stolen_upload_token_is_limited_in_bytes_and_requests() {
    let p = Publisher::new("stable");
    let repo = p.repo();
    std::fs::create_dir_all(&repo).unwrap();
    let token_file = p.dir.path().join("token");
    std::fs::write(&token_file, "stolen-token-0123456789").unwrap();
    let server = Server::start_with(
        &repo,
        &[
            "--upload-token-file",
            token_file.to_str().unwrap(),
            "--public-key",
            p.public_key().to_str().unwrap(),
            "--upload-bytes-per-hour",
            "1MiB",
            "--upload-requests-per-minute",
            "5",
        ],
    );
    let addr = addr(&server);
    let token = "stolen-token-0123456789";
    let big = |seed: u64| ferry_tests::tree::noise(seed, 600 << 10);
    // The first 600 KiB fit the hour's 1 MiB; the next 600 KiB do not, until the
    // hour is over.
    assert_eq!(put_object(addr, token, &big(1)), (201, None));
    let (status, wait) = put_object(addr, token, &big(2));
    assert_eq!(status, 429);
    assert!(
        wait.is_some_and(|w| (3500..=3600).contains(&w)),
        "Retry-After {wait:?}"
    );
    // Larger than a whole hour's budget: waiting does not help.
    let huge = ferry_tests::tree::noise(3, 2 << 20);
    assert_eq!(put_object(addr, token, &huge), (413, None));
    // Small objects still fit the bytes, but not past 5 requests a minute.
    assert_eq!(put_object(addr, token, b"small one").0, 201);
    assert_eq!(put_object(addr, token, b"small two").0, 201);
    let (status, wait) = put_object(addr, token, b"small three");
    assert_eq!(status, 429);
    assert!(
        wait.is_some_and(|w| (1..=12).contains(&w)),
        "Retry-After {wait:?}"
    );
    // What was refused was not stored.
    let stored = ferry_tests::tree::snapshot(&repo.join("objects"));
    let files = stored.values().filter(|v| v.starts_with("file")).count();
    assert_eq!(files, 3, "{stored:?}");
}

//! The HTTP transport against a tiny loopback server under a path prefix: one mode
//! answers ranges with 206, the other ignores `Range` and sends the whole object
//! (200), which the client must cut down without storing the rest.

mod common;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use common::*;

/// Serves `dir` under `/repo/`; returns the base URL and a counter of requests.
fn serve(dir: PathBuf, honour_range: bool) -> (String, Arc<AtomicU64>) {
    serve_with(dir, honour_range, false, Arc::default())
}

/// With `stall`, range answers send half their body and then hang (for kill tests).
/// Every Range asked for is recorded in `seen`.
fn serve_with(
    dir: PathBuf,
    honour_range: bool,
    stall: bool,
    seen: Arc<Mutex<Vec<(u64, u64)>>>,
) -> (String, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(AtomicU64::new(0));
    let counter = hits.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let seen = seen.clone();
            let Ok(mut stream) = stream else { continue };
            counter.fetch_add(1, Ordering::SeqCst);
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let path = line.split(' ').nth(1).unwrap_or("/").to_string();
            let mut range: Option<(u64, u64)> = None;
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap() == 0 || h == "\r\n" {
                    break;
                }
                let lower = h.to_ascii_lowercase();
                if let Some(spec) = lower.strip_prefix("range: bytes=") {
                    let (a, b) = spec.trim().split_once('-').unwrap();
                    range = Some((a.parse().unwrap(), b.parse().unwrap()));
                    seen.lock().unwrap().extend(range);
                }
            }
            let file = path.strip_prefix("/repo/").map(|p| dir.join(p));
            let resp = match file.and_then(|f| fs::read(f).ok()) {
                None => b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    .to_vec(),
                Some(body) => match range {
                    Some((a, b)) if honour_range => {
                        let part = &body[a as usize..=b as usize];
                        let mut r = format!(
                            "HTTP/1.1 206 Partial Content\r\ncontent-length: {}\r\ncontent-range: bytes {a}-{b}/{}\r\nconnection: close\r\n\r\n",
                            part.len(),
                            body.len()
                        )
                        .into_bytes();
                        if stall {
                            let half = r.len() + part.len() / 2;
                            r.extend_from_slice(part);
                            let _ = stream.write_all(&r[..half]);
                            let _ = stream.flush();
                            std::thread::sleep(std::time::Duration::from_secs(60));
                            continue;
                        }
                        r.extend_from_slice(part);
                        r
                    }
                    _ => {
                        let mut r = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                            body.len()
                        )
                        .into_bytes();
                        r.extend_from_slice(&body);
                        r
                    }
                },
            };
            let _ = stream.write_all(&resp);
        }
    });
    (format!("http://127.0.0.1:{port}/repo"), hits)
}

fn run_pair(honour_range: bool) {
    let t = tempfile::tempdir().unwrap();
    let repo_dir = t.path().join("repo");
    let root = t.path().join("root");
    let r = root.to_str().unwrap();
    let mut repo = Repo::new(&repo_dir);
    let key_file = t.path().join("ferry.pub");
    fs::write(&key_file, repo.key.public().to_text()).unwrap();
    let app1 = noise(400_000, 3);
    repo.publish("1.0", &release(&app1, "one"));
    let (base, hits) = serve(repo_dir.clone(), honour_range);
    ferry(&[
        "init",
        "--root",
        r,
        "--server",
        &format!("{base}/"),
        "--channel",
        "stable",
        "--public-key",
        key_file.to_str().unwrap(),
    ])
    .unwrap();
    ferry(&["update", "--root", r, "--json"]).unwrap();
    assert_eq!(fs::read(root.join("current/bin/app")).unwrap(), app1);
    assert_eq!(hits.load(Ordering::SeqCst), 3);

    let mut app2 = app1.clone();
    app2[200_000..200_050].copy_from_slice(&[1; 50]);
    repo.publish("1.1", &release(&app2, "two"));
    ferry(&["update", "--root", r]).unwrap();
    assert_eq!(fs::read(root.join("current/bin/app")).unwrap(), app2);
    let h = history(&root);
    let downloaded = h[1]["bytes_downloaded"].as_u64().unwrap();
    if honour_range {
        assert!(downloaded < 200_000, "only the delta: {downloaded}");
    }
    assert_eq!(h[1]["requests"], 3);

    // A missing object is an HTTP error naming the URL; nothing changes.
    let head = repo_dir.join("channels/stable/head");
    fs::remove_file(&head).unwrap();
    let e = format!("{:#}", ferry(&["update", "--root", r]).unwrap_err());
    assert!(
        e.contains("HTTP 404") && e.contains("/repo/channels/stable/head"),
        "{e}"
    );
    assert_eq!(fs::read(root.join("current/README")).unwrap(), b"two");
}

#[test]
fn http_with_ranges() {
    run_pair(true);
}

#[test]
fn http_server_ignoring_ranges() {
    run_pair(false);
}

#[test]
fn unreachable_server_is_a_clear_error() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    let r = root.to_str().unwrap();
    let key_file = t.path().join("ferry.pub");
    fs::write(
        &key_file,
        ferry_format::keys::SecretKey::from_seed([1; 32])
            .public()
            .to_text(),
    )
    .unwrap();
    // Bind then drop: the port is (almost certainly) closed.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    ferry(&[
        "init",
        "--root",
        r,
        "--server",
        &format!("http://127.0.0.1:{port}"),
        "--channel",
        "stable",
        "--public-key",
        key_file.to_str().unwrap(),
    ])
    .unwrap();
    let e = format!("{:#}", ferry(&["update", "--root", r]).unwrap_err());
    assert!(
        e.contains("fetching channel head from http://127.0.0.1"),
        "{e}"
    );
    let h = history(&root);
    assert!(h[0]["result"].as_str().unwrap().starts_with("error: "));
}

#[test]
fn kill_9_mid_download_then_resume() {
    let t = tempfile::tempdir().unwrap();
    let repo_dir = t.path().join("repo");
    let root = t.path().join("root");
    let r = root.to_str().unwrap();
    let mut repo = Repo::new(&repo_dir);
    let key_file = t.path().join("ferry.pub");
    fs::write(&key_file, repo.key.public().to_text()).unwrap();
    let app1 = noise(300_000, 5);
    repo.publish("1.0", &release(&app1, "one"));
    let init = |base: &str| {
        ferry(&[
            "init",
            "--root",
            r,
            "--server",
            base,
            "--channel",
            "stable",
            "--public-key",
            key_file.to_str().unwrap(),
            "--force",
        ])
        .unwrap()
    };
    let (good, _) = serve(repo_dir.clone(), true);
    init(&good);
    ferry(&["update", "--root", r]).unwrap();

    let app2 = noise(300_000, 6);
    repo.publish("2.0", &release(&app2, "two"));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (stalling, _) = serve_with(repo_dir.clone(), true, true, seen.clone());
    init(&stalling);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["update", "--root", r])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let downloads = root.join(".ferry/staging/downloads");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let part_len = loop {
        let len = fs::read_dir(&downloads)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
            .map(|e| e.metadata().unwrap().len())
            .sum::<u64>();
        if len > 0 {
            break len;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no partial download appeared"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        fs::read(root.join("current/bin/app")).unwrap(),
        app1,
        "old release intact"
    );
    let first = seen.lock().unwrap()[0];

    let seen_good = Arc::new(Mutex::new(Vec::new()));
    let (good2, _) = serve_with(repo_dir.clone(), true, false, seen_good.clone());
    init(&good2);
    ferry(&["update", "--root", r]).unwrap();
    assert_eq!(fs::read(root.join("current/bin/app")).unwrap(), app2);
    let resumed = seen_good.lock().unwrap()[0];
    assert_eq!(resumed.1, first.1, "same range end");
    assert!(
        resumed.0 >= first.0 + part_len,
        "resumed at {resumed:?}, first {first:?}, had {part_len}"
    );
    ferry(&["verify", "--root", r]).unwrap();
}

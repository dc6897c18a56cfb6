//! Mirrors (`servers = [...]`): a server that is down, answers 503, or serves tampered
//! objects is failed over to the next, which is named in the log; the installed tree
//! is the published one. With every server down, `ferry update` gives up within
//! `give_up_after` with exit code 3 and the active release intact.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ferry_tests::{Agent, Publisher, Server, assert_ok};

use super::fixtures::{Sources, tree_eq, v};
use super::pipeline::NO_DIFFS;

/// A loopback URL nothing listens on: a listener bound, then closed.
fn closed_port() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    format!("http://127.0.0.1:{port}")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `ferry update --json`, asserting success; (report, stderr).
fn update(agent: &Agent) -> (serde_json::Value, String) {
    let out = agent.ferry("update", &["--json"]);
    assert_ok(&out, "update");
    (serde_json::from_slice(&out.stdout).unwrap(), stderr(&out))
}

/// Replaces the root's `servers` and appends `extra` lines to its config.toml.
fn set_servers(agent: &Agent, servers: &[&str], extra: &str) {
    let path = agent.root().join(".ferry/config.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let list: Vec<String> = servers.iter().map(|s| format!("{s:?}")).collect();
    let mut out: Vec<String> = text
        .lines()
        .map(|l| {
            if l.starts_with("servers = ") {
                format!("servers = [{}]", list.join(", "))
            } else {
                l.to_string()
            }
        })
        .collect();
    out.push(extra.to_string());
    std::fs::write(&path, out.join("\n") + "\n").unwrap();
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), &dest).unwrap();
        }
    }
}

fn flip_byte(path: &Path, from_end: usize) {
    let mut data = std::fs::read(path).unwrap();
    let i = data.len() - from_end;
    data[i] ^= 0x55;
    std::fs::write(path, data).unwrap();
}

fn objects(repo: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for fan in std::fs::read_dir(repo.join("objects")).unwrap().flatten() {
        for obj in std::fs::read_dir(fan.path()).unwrap().flatten() {
            out.push(obj.path());
        }
    }
    out
}

fn verified(agent: &Agent) {
    assert_ok(&agent.ferry("verify", &[]), "verify");
}

#[test]
fn the_first_server_down_fails_over_to_the_second() {
    let p = Publisher::new("stable");
    let sources = Sources::app(1);
    p.publish(&v(1), &sources.release(1));
    let srv = p.serve();
    let down = closed_port();
    let agent = Agent::init(&down, "stable", &p.public_key(), &["--server", &srv.url]);

    let (report, err) = update(&agent);
    assert_eq!(report["to"], "1.0.0", "{report}");
    tree_eq(&agent.current(), &sources.release(1));
    verified(&agent);
    assert!(
        err.contains(&format!("server {down}/ failed (")) && err.contains("onnection refused"),
        "the dead server is named with the reason: {err}"
    );
    assert!(err.contains(&format!("trying {}/", srv.url)), "{err}");
    // The dead server cost the first request two attempts; every later request went
    // to the server that worked. The counters include both.
    assert_eq!(
        err.matches(&format!("server {down}/ failed")).count(),
        1,
        "{err}"
    );
    let served = srv.requests().len() as u64;
    assert_eq!(report["requests"].as_u64(), Some(served + 2), "{report}");
}

#[test]
fn a_mirror_serving_tampered_objects_is_failed_over_and_named() {
    let p = Publisher::new("stable");
    let sources = Sources::app(3);
    let first = p.publish_with(&v(1), &sources.release(1), NO_DIFFS);
    let good = p.serve();
    // The mirror is a copy of the repository whose release 1 manifest is damaged:
    // its (valid) head is accepted, its manifest is not.
    let mirror_dir = tempfile::tempdir().unwrap();
    let mirror_repo = mirror_dir.path().join("repo");
    copy_tree(&p.repo(), &mirror_repo);
    let object = |repo: &Path, hex: &str| {
        let d = ferry_format::id::Digest::from_hex(hex).unwrap();
        repo.join(ferry_format::layout::object_path(&d))
    };
    flip_byte(
        &object(&mirror_repo, first["manifest"].as_str().unwrap()),
        200,
    );
    let mirror = Server::start(&mirror_repo);
    let agent = Agent::init(
        &mirror.url,
        "stable",
        &p.public_key(),
        &["--server", &good.url],
    );
    let (report, err) = update(&agent);
    assert_eq!(report["to"], "1.0.0", "{report}");
    tree_eq(&agent.current(), &sources.release(1));
    verified(&agent);
    assert!(
        err.contains(&format!(
            "server {}/ failed (verifying manifest",
            mirror.url
        )) && err.contains("mismatch"),
        "the mirror that served the bad manifest is named: {err}"
    );
    assert!(err.contains(&format!("trying {}/", good.url)), "{err}");

    // Release 2: the mirror is a fresh copy whose archive is damaged where release
    // 2's new chunks are. Head and manifest come from it; the corrupt ranges are
    // fetched again from the good server.
    let second = p.publish_with(&v(2), &sources.release(2), NO_DIFFS);
    drop(mirror);
    std::fs::remove_dir_all(&mirror_repo).unwrap();
    copy_tree(&p.repo(), &mirror_repo);
    flip_byte(
        &object(&mirror_repo, second["archive"].as_str().unwrap()),
        100,
    );
    let mirror = Server::start(&mirror_repo);
    set_servers(&agent, &[&mirror.url, &good.url], "");
    let (report, err) = update(&agent);
    assert_eq!(report["to"], "2.0.0", "{report}");
    tree_eq(&agent.current(), &sources.release(2));
    verified(&agent);
    assert!(
        err.contains(&format!(
            "server {}/ failed (archive ranges from",
            mirror.url
        )) && err.contains("corrupt"),
        "the mirror that served bad chunks is named: {err}"
    );
    let mirror_paths: Vec<String> = mirror.requests().into_iter().map(|r| r.path).collect();
    assert!(
        mirror_paths.iter().any(|p| p.contains("/channels/")),
        "the head came from the mirror: {mirror_paths:?}"
    );
    let archive_path = format!(
        "/{}",
        ferry_format::layout::object_path(
            &ferry_format::id::Digest::from_hex(second["archive"].as_str().unwrap()).unwrap()
        )
    );
    assert!(
        good.requests().iter().any(|r| r.path == archive_path),
        "the corrupt ranges were fetched again from the good server"
    );

    // Release 3, by diff: the mirror's data diff is damaged. The good server's copy
    // is used, so the update still goes by diff, not by the archive.
    let third = p.publish(&v(3), &sources.release(3));
    drop(mirror);
    std::fs::remove_dir_all(&mirror_repo).unwrap();
    copy_tree(&p.repo(), &mirror_repo);
    let size = third["diffs"][0]["size"].as_u64().unwrap();
    let diff = objects(&mirror_repo)
        .into_iter()
        .find(|f| std::fs::metadata(f).unwrap().len() == size)
        .expect("the diff object");
    flip_byte(&diff, 1);
    let diff_path = format!("/{}", diff.strip_prefix(&mirror_repo).unwrap().display());
    let mirror = Server::start(&mirror_repo);
    set_servers(&agent, &[&mirror.url, &good.url], "");
    let before = good.requests().len();
    let (report, err) = update(&agent);
    assert_eq!(report["to"], "3.0.0", "{report}");
    tree_eq(&agent.current(), &sources.release(3));
    verified(&agent);
    assert!(
        err.contains(&format!("server {}/ failed (diff object from", mirror.url))
            && err.contains("mismatch"),
        "the mirror that served the bad diff is named: {err}"
    );
    let archive_path = format!(
        "/{}",
        ferry_format::layout::object_path(
            &ferry_format::id::Digest::from_hex(third["archive"].as_str().unwrap()).unwrap()
        )
    );
    let paths: Vec<String> = good.requests()[before..]
        .iter()
        .map(|r| r.path.clone())
        .collect();
    assert!(paths.contains(&diff_path), "{paths:?}");
    assert!(
        !paths.contains(&archive_path),
        "no fallback to the archive: {paths:?}"
    );
}

#[test]
fn no_server_reachable_exits_3_within_give_up_after_and_keeps_the_release() {
    let p = Publisher::new("stable");
    let sources = Sources::app(2);
    p.publish(&v(1), &sources.release(1));
    let srv = p.serve();
    let agent = Agent::init(&srv.url, "stable", &p.public_key(), &[]);
    update(&agent);
    p.publish(&v(2), &sources.release(2));
    drop(srv);

    let (a, b) = (closed_port(), closed_port());
    set_servers(
        &agent,
        &[&a, &b],
        "give_up_after = \"3s\"\nretry_base = \"100ms\"\nretry_max_delay = \"1s\"",
    );
    let started = Instant::now();
    let out = agent.ferry("update", &[]);
    let took = started.elapsed();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "exit code 3: {err}");
    assert!(took >= Duration::from_secs(3), "kept trying: {took:?}");
    assert!(took < Duration::from_secs(10), "gave up in time: {took:?}");
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: ")
            && last.contains("no server reachable")
            && last.contains(&format!("{a}/ ("))
            && last.contains(&format!("{b}/ ("))
            && last.contains("onnection refused"),
        "the error lists each server and why: {err}"
    );
    assert_eq!(agent.active().as_deref(), Some("1.0.0"));
    tree_eq(&agent.current(), &sources.release(1));
    verified(&agent);

    // `rollback --to` a release that is not retained needs the servers too.
    let started = Instant::now();
    let out = agent.ferry("rollback", &["--to", &v(2)]);
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(took < Duration::from_secs(10), "gave up in time: {took:?}");
    assert!(
        stderr(&out).contains("no server reachable"),
        "{}",
        stderr(&out)
    );
    assert_eq!(agent.active().as_deref(), Some("1.0.0"));
    verified(&agent);
}

/// A server answering every request with `503` and `Retry-After: 1`.
struct Unavailable {
    url: String,
    requests: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Unavailable {
    fn start() -> Unavailable {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, halt) = (requests.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !halt.load(Ordering::Relaxed) {
                let Ok((mut conn, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                conn.set_nonblocking(false).unwrap();
                conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                count.fetch_add(1, Ordering::Relaxed);
                let _ = conn.write_all(
                    b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n\
                      Content-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
        });
        Unavailable {
            url,
            requests,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Unavailable {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn a_503_with_retry_after_is_waited_for_then_failed_over() {
    let p = Publisher::new("stable");
    let sources = Sources::app(1);
    p.publish(&v(1), &sources.release(1));
    let srv = p.serve();
    let busy = Unavailable::start();
    let agent = Agent::init(
        &busy.url,
        "stable",
        &p.public_key(),
        &["--server", &srv.url],
    );

    let started = Instant::now();
    let (report, err) = update(&agent);
    assert_eq!(report["to"], "1.0.0", "{report}");
    tree_eq(&agent.current(), &sources.release(1));
    verified(&agent);
    assert!(
        err.contains("503") && err.contains("retrying in 1.0s"),
        "Retry-After honoured once: {err}"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert!(
        err.contains(&format!("server {}/ failed (", busy.url))
            && err.contains(&format!("trying {}/", srv.url)),
        "{err}"
    );
    // Two attempts, then every request went to the server that answered.
    assert_eq!(busy.requests.load(Ordering::Relaxed), 2);
}

#[test]
fn a_stale_mirror_with_an_older_head_is_failed_over() {
    let p = Publisher::new("stable");
    let sources = Sources::app(2);
    p.publish(&v(1), &sources.release(1));
    // A mirror that stopped syncing after release 1.
    let stale_dir = tempfile::tempdir().unwrap();
    let stale_repo = stale_dir.path().join("repo");
    copy_tree(&p.repo(), &stale_repo);
    p.publish(&v(2), &sources.release(2));
    let good = p.serve();
    let agent = Agent::init(&good.url, "stable", &p.public_key(), &[]);
    update(&agent);
    assert_eq!(agent.active().as_deref(), Some("2.0.0"));

    // Its validly signed but older head is refused (rollback protection) like any bad
    // data, and the good server's is used: nothing goes back to release 1.
    let stale = Server::start(&stale_repo);
    set_servers(&agent, &[&stale.url, &good.url], "");
    let (report, err) = update(&agent);
    assert_eq!(report["to"], "2.0.0", "{report}");
    assert_eq!(agent.active().as_deref(), Some("2.0.0"));
    tree_eq(&agent.current(), &sources.release(2));
    assert!(
        err.contains(&format!(
            "server {}/ failed (verifying channel head",
            stale.url
        )),
        "the stale mirror is named: {err}"
    );
}

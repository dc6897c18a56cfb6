//! The agent's limits with the real binaries: a small disk (a size-limited tmpfs this
//! test mounts, as root), the root lock's bounded wait naming its holder, and the
//! history's cap.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ferry_tests::proxy::FaultProxy;
use ferry_tests::tree::{noise, put};
use ferry_tests::{Agent, Publisher, assert_ok, bin, run};

use super::fixtures::{Scene, Sources, tree_eq, v};

/// A tmpfs of a fixed size mounted on a fresh folder, unmounted on drop.
struct SmallDisk {
    mount: tempfile::TempDir,
}

impl SmallDisk {
    /// `None` (after saying why) only where mounting is not permitted.
    fn mount(size: &str) -> Option<SmallDisk> {
        let mount = tempfile::tempdir().expect("tempdir");
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(mount.path())
            .output()
            .expect("running mount");
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let denied = [
                "permission denied",
                "not permitted",
                "only root",
                "must be superuser",
            ]
            .iter()
            .any(|p| err.to_lowercase().contains(p));
            assert!(denied, "mount -t tmpfs failed: {err}");
            eprintln!(
                "SKIPPED: mounting a tmpfs is not permitted here: {}",
                err.trim()
            );
            return None;
        }
        Some(SmallDisk { mount })
    }

    fn path(&self) -> &Path {
        self.mount.path()
    }

    /// Bytes available to unprivileged users, as `stat -f` reports.
    fn available(&self) -> u64 {
        let out = Command::new("stat")
            .args(["-f", "--format=%a %S"])
            .arg(self.path())
            .output()
            .expect("stat -f");
        let text = String::from_utf8_lossy(&out.stdout);
        let mut it = text
            .split_whitespace()
            .map(|n| n.parse::<u64>().expect("number"));
        it.next().expect("blocks") * it.next().expect("block size")
    }

    fn filler(&self) -> PathBuf {
        self.path().join("filler")
    }

    /// Writes a file until `leave` bytes are available (all of them with 0).
    fn fill_leaving(&self, leave: u64) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.filler())
            .expect("filler");
        let block = vec![0x5a_u8; 64 << 10];
        loop {
            let room = self.available();
            if room <= leave {
                return;
            }
            let n = (room - leave).min(block.len() as u64) as usize;
            match f.write_all(&block[..n]).and_then(|()| f.sync_data()) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(28) => return,
                Err(e) => panic!("filling the disk: {e}"),
            }
        }
    }

    /// An agent whose root is on this disk.
    fn agent(&self, url: &str, p: &Publisher) -> Agent {
        let agent = Agent {
            dir: tempfile::tempdir_in(self.path()).expect("root on the small disk"),
        };
        let out = run(
            bin("ferry"),
            &[
                "init",
                "--root",
                agent.root().to_str().unwrap(),
                "--server",
                url,
                "--channel",
                &p.channel,
                "--public-key",
                p.public_key().to_str().unwrap(),
            ],
        );
        assert_ok(&out, "init");
        agent
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // Lazy: a file still open somewhere must not leave the mount behind.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.mount.path())
            .status();
    }
}

/// Release 1 published and release 2 (1 with a new 3 MB file) ready to publish.
pub fn sources_with_big_release_2() -> Sources {
    let sources = Sources::app(2);
    put(
        &sources.release(2),
        "lib/big.so",
        &noise(77, 3_000_000),
        0o644,
    );
    sources
}

fn staging_files(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.join(".ferry/staging")];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path().display().to_string());
            }
        }
    }
    out
}

#[test]
fn an_update_larger_than_the_free_space_is_refused_before_downloading() {
    let Some(disk) = SmallDisk::mount("16m") else {
        return;
    };
    let p = Publisher::new("stable");
    let sources = sources_with_big_release_2();
    p.publish(&v(1), &sources.release(1));
    let srv = p.serve();
    let agent = disk.agent(&srv.url, &p);
    agent.update();
    p.publish(&v(2), &sources.release(2));
    // Release 2 needs its 3 MB new file downloaded and a 4.8 MB tree built.
    disk.fill_leaving(3_000_000);
    let before = srv.requests().len();
    let err = agent.update_fails_with(7);
    let root = agent.root().display().to_string();
    for part in [
        "not enough disk space to install 2.0.0",
        &format!("in {root}:"),
        "are available there",
        "the active release is unchanged",
    ] {
        assert!(err.contains(part), "{part:?} missing from: {err}");
    }
    // The numbers: what it needs is more than the disk has, and both are stated.
    let number_before = |word: &str| -> u64 {
        let at = err
            .find(word)
            .unwrap_or_else(|| panic!("{word:?} in {err}"));
        let digits: String = err[..at]
            .trim_end()
            .chars()
            .rev()
            .take_while(char::is_ascii_digit)
            .collect();
        digits
            .chars()
            .rev()
            .collect::<String>()
            .parse()
            .expect("a number")
    };
    let needed = number_before(" bytes: downloads");
    let available = number_before(" bytes) are available");
    assert!(needed > 3_000_000 + 4_800_000, "{err}");
    assert!(
        available <= 3_000_000 && available + 1_000_000 > 3_000_000,
        "{err}"
    );
    // Nothing but metadata was fetched: no range of an archive or diff object.
    let reqs = &srv.requests()[before..];
    assert!(reqs.iter().all(|r| r.range.is_none()), "{reqs:?}");
    assert_eq!(staging_files(agent.root()), Vec::<String>::new());
    assert_eq!(agent.active().as_deref(), Some("1.0.0"));
    assert_ok(&agent.ferry("verify", &[]), "verify after the refusal");

    std::fs::remove_file(disk.filler()).unwrap();
    assert_eq!(agent.update()["to"], v(2));
    tree_eq(&agent.current(), &sources.release(2));
}

#[test]
fn a_disk_that_fills_during_the_download_leaves_no_staging_and_the_active_release_intact() {
    let Some(disk) = SmallDisk::mount("32m") else {
        return;
    };
    let p = Publisher::new("stable");
    let sources = sources_with_big_release_2();
    p.publish(&v(1), &sources.release(1));
    let srv = p.serve();
    let proxy = FaultProxy::start(&srv.url);
    let agent = disk.agent(&proxy.url, &p);
    agent.update();
    p.publish(&v(2), &sources.release(2));

    // The space check passes; then, with a megabyte of the download stored, another
    // program fills the disk.
    proxy.arm_stall(1_000_000);
    let (mut child, lines) = spawn_ferry(agent.root(), &["update"]);
    assert_eq!(proxy.wait_stalled(Duration::from_secs(60)), 1_000_000);
    wait_for_part_file(agent.root(), 1_000_000);
    disk.fill_leaving(0);
    proxy.release_stall();
    let status = wait_bounded(&mut child, Duration::from_secs(60));
    let err: Vec<String> = lines.try_iter().collect();
    let err = err.join("\n");
    assert_eq!(status.code(), Some(7), "{err}");
    for part in [
        &format!("the disk holding {} is full", agent.root().display()),
        "installing 2.0.0 stopped",
        "was removed to give the space back",
        "the active release 1.0.0 is unchanged",
        "No space left on device",
    ] {
        assert!(err.contains(part), "{part:?} missing from: {err}");
    }
    assert!(!agent.root().join(".ferry/staging").exists());
    assert_eq!(agent.active().as_deref(), Some("1.0.0"));
    tree_eq(&agent.current(), &sources.release(1));
    assert_ok(&agent.ferry("verify", &[]), "verify after the disk filled");

    std::fs::remove_file(disk.filler()).unwrap();
    assert_eq!(agent.update()["to"], v(2));
    tree_eq(&agent.current(), &sources.release(2));
}

#[test]
fn a_second_command_waits_a_bounded_time_naming_the_holder_and_a_dead_holder_blocks_nothing() {
    let scene = Scene::installed(Sources::app(1), &[]);
    let sources = sources_with_big_release_2();
    scene.p.publish(&v(2), &sources.release(2));
    let proxy = FaultProxy::start(&scene.srv.url);
    let agent = &scene.agent;
    let url = proxy.url.clone();
    let config = agent.root().join(".ferry/config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let text: Vec<String> = text
        .lines()
        .map(|l| match l.starts_with("servers = ") {
            true => format!("servers = [{url:?}]"),
            false => l.to_string(),
        })
        .collect();
    let mut text = text.join("\n");
    std::fs::write(&config, &text).unwrap();

    // An update holds the root, stalled in its download.
    proxy.arm_stall(1000);
    let (mut holder, _lines) = spawn_ferry(agent.root(), &["update"]);
    proxy.wait_stalled(Duration::from_secs(60));
    let pid = holder.id();
    let lock = agent.root().join(".ferry/lock");
    let named = format!("ferry update (pid {pid}) is holding {}", lock.display());

    // --lock-timeout 0: refused at once, naming the holder.
    let started = Instant::now();
    let out = agent.ferry("status", &["--lock-timeout", "0"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(8), "{err}");
    assert!(err.contains(&named), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));

    // The configured timeout: waits, says for what, then gives up.
    text.push_str("\nlock_timeout = \"2s\"\n");
    std::fs::write(&config, &text).unwrap();
    let started = Instant::now();
    let out = agent.ferry("rollback", &[]);
    let waited = started.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!(
            "waiting for ferry update (pid {pid}) holding {}",
            lock.display()
        )),
        "{err}"
    );
    assert!(err.contains(&format!("gave up after 2s: {named}")), "{err}");
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(10),
        "{waited:?}"
    );
    // The flag wins over the configuration.
    let started = Instant::now();
    let out = agent.ferry("history", &["--lock-timeout", "1s"]);
    assert!(!out.status.success());
    assert!(started.elapsed() < Duration::from_secs(2) + Duration::from_millis(900));

    // kill -9: the kernel drops the lock; the label the dead holder left in the lock
    // file names nobody and delays nothing.
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert!(
        std::fs::read_to_string(&lock)
            .unwrap()
            .contains(&pid.to_string())
    );
    let started = Instant::now();
    let out = agent.ferry("status", &["--lock-timeout", "0", "--json"]);
    assert_ok(&out, "status after the holder died");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("waiting"));
    assert!(started.elapsed() < Duration::from_secs(5));
    let u = agent.update();
    assert_eq!(u["to"], v(2));
    let label = std::fs::read_to_string(&lock).unwrap();
    assert!(!label.contains(&pid.to_string()), "{label}");
}

#[test]
fn history_is_capped_and_still_read_newest_first() {
    let scene = Scene::installed(Sources::app(2), &[]);
    let agent = &scene.agent;
    let history = agent.root().join(".ferry/history.jsonl");
    // An old root's history, grown past the cap by events of long ago.
    let old_event = |n: u64| {
        serde_json::json!({"schema": 1, "time": n, "event": "update", "from": null,
            "to": format!("0.{n}.0"), "bytes_downloaded": 0, "requests": 1,
            "key_id": "00112233aabbccdd", "result": "ok"})
        .to_string()
    };
    let mut text = String::new();
    let mut n = 1;
    while text.len() < 1 << 20 {
        text.push_str(&old_event(n));
        text.push('\n');
        n += 1;
    }
    std::fs::write(&history, text.as_bytes()).unwrap();
    let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());

    scene.p.publish(&v(2), &scene.sources.release(2));
    agent.update();
    let rotated = agent.root().join(".ferry/history.1.jsonl");
    assert_eq!(
        size(&rotated),
        text.len() as u64,
        "the full log was rotated"
    );
    assert!(size(&history) < 1000, "a fresh log holds the new event");
    let events = agent.history();
    assert_eq!(
        events.len(),
        n as usize,
        "every event of both files is read"
    );
    assert_eq!(events[0]["to"], v(2));
    assert_eq!(events[1]["to"], format!("0.{}.0", n - 1));
    assert_eq!(events.last().unwrap()["to"], "0.1.0");
    let out = agent.ferry("history", &[]);
    assert_ok(&out, "history");
    let first = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap()
        .to_string();
    assert!(first.contains("-> 2.0.0"), "{first}");

    // Rotating again replaces the older file: two files at most.
    std::fs::write(&history, text.as_bytes()).unwrap();
    assert_eq!(agent.rollback(&[])["to"], v(1));
    assert_eq!(size(&rotated), text.len() as u64);
    assert!(!agent.root().join(".ferry/history.2.jsonl").exists());
    assert_eq!(agent.history()[0]["event"], "rollback");
}

/// `ferry <args> --root ROOT` in the background, its stderr lines on a channel.
fn spawn_ferry(root: &Path, args: &[&str]) -> (Child, mpsc::Receiver<String>) {
    let mut child = Command::new(bin("ferry"))
        .args(args)
        .arg("--root")
        .arg(root)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning ferry");
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (child, rx)
}

fn wait_bounded(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            // Let the stderr reader thread drain the pipe.
            std::thread::sleep(Duration::from_millis(200));
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("ferry did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits (at most 30 s) until partial downloads of `len` bytes are on disk.
fn wait_for_part_file(root: &Path, len: u64) {
    let dir = root.join(".ferry/staging/downloads");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stored: u64 = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum();
        if stored >= len {
            return;
        }
        assert!(Instant::now() < deadline, "stored {stored} of {len} bytes");
        std::thread::sleep(Duration::from_millis(10));
    }
}

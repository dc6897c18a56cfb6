//! The application's own files inside its release (logs, databases, caches): never
//! damage, never deleted, carried into the next release when configured, and kept
//! per release so a rollback returns to that release's own state. A damaged release
//! is rebuilt into a new folder beside it; the active folder is never written.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use ferry_tests::tree::snapshot;
use ferry_tests::{Agent, Publisher, assert_ok};

use super::fixtures::{Scene, Sources, v};

fn write(dir: &Path, rel: &str, bytes: &[u8]) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, bytes).unwrap();
}

fn append(dir: &Path, rel: &str, bytes: &[u8]) {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.join(rel))
        .unwrap();
    f.write_all(bytes).unwrap();
}

fn read(dir: &Path, rel: &str) -> String {
    String::from_utf8(std::fs::read(dir.join(rel)).unwrap()).unwrap()
}

fn inode(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().ino()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Asserts `installed` is the published `source` plus exactly the paths `extra`
/// (each a file or a directory with everything under it).
fn release_plus(installed: &Path, source: &Path, extra: &[&str]) {
    let mut got = snapshot(installed);
    for e in extra {
        assert!(
            got.contains_key(*e),
            "{e} missing from {}",
            installed.display()
        );
    }
    got.retain(|k, _| {
        !extra
            .iter()
            .any(|e| k == e || k.starts_with(&format!("{e}/")))
    });
    let want: BTreeMap<String, String> = snapshot(source);
    assert_eq!(got, want, "release files differ from the published source");
}

#[test]
fn app_files_in_the_active_release_are_never_damage() {
    let s = Scene::installed(Sources::app(2), &[]);
    let (agent, cur) = (&s.agent, s.agent.current());
    write(&cur, "logs/app.log", b"started in 1\n");
    write(&cur, "data.db", b"rows of 1");
    write(&cur, "lib/__pycache__/x.pyc", b"bytecode");
    let v1 = agent.root().join("versions/1.0.0");
    let ino = inode(&v1);
    let app_view = snapshot(&cur);

    // Nothing new: the app's files are not damage, nothing is rebuilt or removed.
    let out = agent.ferry("update", &[]);
    assert_ok(&out, "update with nothing new");
    assert!(
        stdout(&out).contains("already up to date"),
        "{}",
        stdout(&out)
    );
    assert_eq!(agent.current_folder().as_deref(), Some("1.0.0"));
    assert_eq!(inode(&v1), ino, "the active release's folder was replaced");
    assert_eq!(snapshot(&cur), app_view, "the app's files were touched");

    // verify: intact, exit 0, the app's files listed apart as a note.
    let out = agent.ferry("verify", &[]);
    assert_ok(&out, "verify with the app's files");
    let text = stdout(&out);
    assert!(text.starts_with("OK: 1.0.0"), "{text}");
    assert!(!text.contains("problem"), "{text}");
    for e in ["extra: data.db", "extra: lib/__pycache__/", "extra: logs/"] {
        assert!(text.contains(e), "{e} not listed:\n{text}");
    }

    // The next release is built beside it; nothing is carried without `carry`, and
    // the previous release keeps everything the app wrote.
    s.p.publish(&v(2), &s.sources.release(2));
    let u = agent.update();
    assert_eq!(u["to"], v(2));
    assert_eq!(agent.current_folder().as_deref(), Some("2.0.0"));
    release_plus(&cur, &s.sources.release(2), &[]);
    assert_eq!(inode(&v1), ino);
    assert_eq!(snapshot(&v1), app_view);

    // A rollback to a release holding the app's files is not refused, and shows them.
    write(&cur, "logs/app.log", b"running 2\n");
    let r = agent.rollback(&[]);
    assert_eq!(r["to"], v(1));
    assert_eq!(agent.current_folder().as_deref(), Some("1.0.0"));
    assert_eq!(snapshot(&cur), app_view);
    assert_eq!(
        read(&agent.root().join("versions/2.0.0"), "logs/app.log"),
        "running 2\n"
    );
}

#[test]
fn carry_copies_configured_paths_into_the_next_release_and_rollback_returns_to_each_snapshot() {
    let p = Publisher::new("stable");
    let sources = Sources::app(3);
    p.publish(&v(1), &sources.release(1));
    let srv = p.serve();
    let carry = ["--carry", "logs/", "--carry", "*.db"];
    let agent = Agent::init(&srv.url, "stable", &p.public_key(), &carry);
    let config = read(agent.root(), ".ferry/config.toml");
    assert!(config.contains(r#"carry = ["logs/", "*.db"]"#), "{config}");
    agent.update();
    let cur = agent.current();
    write(&cur, "logs/app.log", b"started in 1\n");
    write(&cur, "logs/old/rotated.log", b"older\n");
    write(&cur, "data.db", b"rows of 1");
    write(&cur, "lib/__pycache__/x.pyc", b"bytecode");
    let v1 = agent.root().join("versions/1.0.0");
    let ino = inode(&v1);
    let app_view_1 = snapshot(&cur);

    p.publish(&v(2), &sources.release(2));
    let out = agent.ferry("update", &[]);
    assert_ok(&out, "update to 2 with carry");
    assert!(
        stdout(&out).contains("carried data.db, logs"),
        "{}",
        stdout(&out)
    );
    assert_eq!(agent.current_folder().as_deref(), Some("2.0.0"));
    // logs/ (with everything under it) and *.db came along, the cache did not.
    release_plus(&cur, &sources.release(2), &["data.db", "logs"]);
    assert_eq!(read(&cur, "logs/app.log"), "started in 1\n");
    assert_eq!(read(&cur, "logs/old/rotated.log"), "older\n");
    assert_eq!(read(&cur, "data.db"), "rows of 1");
    // The release it came from was only read.
    assert_eq!(inode(&v1), ino);
    assert_eq!(snapshot(&v1), app_view_1);

    // The app goes on in 2, then 3 carries 2's state.
    append(&cur, "logs/app.log", b"running 2\n");
    write(&cur, "data.db", b"rows of 2");
    let app_view_2 = snapshot(&cur);
    p.publish(&v(3), &sources.release(3));
    agent.update();
    assert_eq!(read(&cur, "logs/app.log"), "started in 1\nrunning 2\n");
    assert_eq!(read(&cur, "data.db"), "rows of 2");
    write(&cur, "data.db", b"rows of 3");

    // Rollbacks return to each release's own snapshot; nothing is carried back.
    let r = agent.rollback(&[]);
    assert_eq!(r["to"], v(2));
    assert_eq!(snapshot(&cur), app_view_2);
    let r = agent.rollback(&[]);
    assert_eq!(r["to"], v(1));
    assert_eq!(snapshot(&cur), app_view_1);
    assert_eq!(
        read(&agent.root().join("versions/3.0.0"), "data.db"),
        "rows of 3"
    );
}

#[test]
fn a_damaged_active_release_is_rebuilt_beside_it_keeping_the_app_files() {
    let s = Scene::installed(Sources::app(1), &[]);
    let (agent, cur) = (&s.agent, s.agent.current());
    write(&cur, "logs/app.log", b"keep me\n");
    append(&cur, "share/doc/README", b"edited by hand\n");
    let v1 = agent.root().join("versions/1.0.0");

    let out = agent.ferry("verify", &[]);
    assert!(!out.status.success(), "verify passed a damaged release");
    let text = stdout(&out);
    assert!(text.contains("problem: share/doc/README: size"), "{text}");
    assert!(text.contains("extra: logs/"), "{text}");
    assert!(!text.contains("problem: logs"), "{text}");

    // While the repair runs, `current` must always lead to a complete release.
    let stop = Arc::new(AtomicBool::new(false));
    let misses = Arc::new(AtomicU64::new(0));
    let watcher = {
        let (stop, misses, cur) = (stop.clone(), misses.clone(), cur.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if std::fs::metadata(cur.join("bin/app")).is_err() {
                    misses.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        })
    };
    let out = agent.ferry("update", &[]);
    stop.store(true, Ordering::Relaxed);
    watcher.join().unwrap();
    assert_ok(&out, "update repairing the active release");
    assert!(stdout(&out).contains("damaged on disk"), "{}", stdout(&out));
    assert_eq!(misses.load(Ordering::Relaxed), 0, "current dangled");

    assert_eq!(agent.current_folder().as_deref(), Some("1.0.0+2"));
    assert_eq!(agent.active().as_deref(), Some("1.0.0"));
    release_plus(&cur, &s.sources.release(1), &["logs"]);
    assert_eq!(read(&cur, "logs/app.log"), "keep me\n");
    assert!(
        !v1.exists(),
        "the damaged folder stays once nothing points to it"
    );
    let status = agent.status();
    assert_eq!(status["active"], "1.0.0");
    assert_eq!(status["active_folder"], "1.0.0+2");
    let out = agent.ferry("verify", &[]);
    assert_ok(&out, "verify after the repair");
    assert!(stdout(&out).contains("extra: logs/"), "{}", stdout(&out));

    // A second repair takes the free name again; the app's files still follow.
    append(&cur, "share/doc/README", b"again\n");
    assert_ok(&agent.ferry("update", &[]), "second repair");
    assert_eq!(agent.current_folder().as_deref(), Some("1.0.0"));
    assert_eq!(read(&cur, "logs/app.log"), "keep me\n");
    assert!(!agent.root().join("versions/1.0.0+2").exists());
    release_plus(&cur, &s.sources.release(1), &["logs"]);

    // A kill between the switch and the state save leaves state.json naming the
    // previous folder: `current` is the truth, and the next command records it.
    let state = agent.root().join(".ferry/state.json");
    let text = std::fs::read_to_string(&state).unwrap();
    assert!(text.contains(r#""folder": "1.0.0""#), "{text}");
    std::fs::write(
        &state,
        text.replace(r#""folder": "1.0.0""#, r#""folder": "1.0.0+2""#),
    )
    .unwrap();
    let out = agent.ferry("update", &[]);
    assert_ok(&out, "update after a crash before the state save");
    assert!(
        stdout(&out).contains("already up to date"),
        "{}",
        stdout(&out)
    );
    assert_eq!(agent.status()["active_folder"], "1.0.0");
}

#[test]
fn rollback_to_a_damaged_retained_release_rebuilds_it_beside_keeping_its_app_files() {
    let s = Scene::installed(Sources::app(2), &[]);
    let (agent, cur) = (&s.agent, s.agent.current());
    write(&cur, "logs/app.log", b"written in 1\n");
    s.p.publish(&v(2), &s.sources.release(2));
    agent.update();
    let v1 = agent.root().join("versions/1.0.0");
    std::fs::remove_file(v1.join("share/empty.txt")).unwrap();

    let out = agent.ferry("rollback", &[]);
    assert_ok(&out, "rollback to a damaged retained release");
    assert!(stdout(&out).contains("damaged on disk"), "{}", stdout(&out));
    assert_eq!(agent.current_folder().as_deref(), Some("1.0.0+2"));
    release_plus(&cur, &s.sources.release(1), &["logs"]);
    assert_eq!(read(&cur, "logs/app.log"), "written in 1\n");
    assert!(!v1.exists(), "the damaged copy is pruned once replaced");
    assert_ok(&agent.ferry("verify", &[]), "verify after the rollback");
}

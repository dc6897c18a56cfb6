//! `ferry doctor` against the real server: a healthy root passes every check and is
//! left exactly as it was; each problem it is shown (a server down, the wrong key, an
//! expired head, a disk too small, an unwritable root, a missing hook, a held lock)
//! is named on its own line, and any failure exits 1.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use ferry_tests::process::run_env;
use ferry_tests::{Agent, Publisher, bin};
use serde_json::Value;

use super::fixtures::{Sources, v};

/// `ferry doctor --root ROOT ARGS` with environment changes.
fn doctor(agent: &Agent, args: &[&str], env: &[(&str, Option<&str>)]) -> Output {
    let root = agent.root().to_str().unwrap();
    let mut all = vec!["doctor", "--root", root];
    all.extend_from_slice(args);
    run_env(bin("ferry"), &all, env)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The line of check `name` (its name and first detail word match), e.g. `server http://..`.
fn line<'a>(text: &'a str, name: &str) -> &'a str {
    text.lines()
        .find(|l| {
            l.get(6..)
                .is_some_and(|rest| rest.starts_with(&format!("{name}  ")))
        })
        .unwrap_or_else(|| panic!("no `{name}` line in:\n{text}"))
}

fn assert_fails(out: &Output, name: &str, words: &[&str]) {
    let text = stdout(out);
    let l = line(&text, name);
    assert!(l.starts_with("fail  "), "{name} should fail:\n{text}");
    for w in words {
        assert!(l.contains(w), "{w:?} missing from `{l}`");
    }
    assert_eq!(
        out.status.code(),
        Some(1),
        "a failed check exits 1:\n{text}"
    );
}

/// Every file under ROOT/.ferry with its bytes (what doctor must not change).
fn ferry_files(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.join(".ferry")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.display().to_string(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

fn add_config(agent: &Agent, lines: &str) {
    let path = agent.root().join(".ferry/config.toml");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push('\n');
    text.push_str(lines);
    std::fs::write(&path, text).unwrap();
}

/// Release 1 installed from a running server, release 2 published after it (so the
/// disk check measures a release to install).
fn scene() -> (Publisher, Sources, ferry_tests::Server, Agent) {
    let p = Publisher::new("stable");
    let sources = Sources::app(2);
    p.publish(&v(1), &sources.release(1));
    let srv = p.serve();
    let agent = Agent::init(&srv.url, "stable", &p.public_key(), &[]);
    agent.update();
    p.publish(&v(2), &sources.release(2));
    (p, sources, srv, agent)
}

#[test]
fn doctor_passes_every_check_on_a_healthy_root_and_changes_nothing() {
    let (_p, _s, srv, agent) = scene();
    add_config(
        &agent,
        "pre_switch = \"sh -c true\"\npost_switch = \"/bin/sh -c 'exit 0'\"\nhealth_check = \"sh -c 'exit 0'\"\n",
    );
    let before = ferry_files(agent.root());
    let out = doctor(&agent, &[], &[]);
    let text = stdout(&out);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for l in text.lines() {
        assert!(l.starts_with("ok    "), "every check passes: `{l}`\n{text}");
    }
    for name in [
        "root",
        "write",
        "lock",
        &format!("server {}", srv.url),
        &format!("head {}", srv.url),
        "clock",
        "disk",
        "hook pre_switch",
        "hook post_switch",
        "hook health_check",
    ] {
        line(&text, name);
    }
    assert!(
        line(&text, &format!("server {}", srv.url)).contains("HTTP 200 in"),
        "{text}"
    );
    assert!(
        line(&text, "disk").contains("release 2.0.0 needs"),
        "{text}"
    );

    let out = doctor(&agent, &["--json"], &[]);
    assert!(out.status.success());
    let report: Value = serde_json::from_slice(&out.stdout).expect("doctor --json prints JSON");
    let checks = report["checks"].as_array().unwrap();
    assert_eq!(checks.len(), text.lines().count());
    for c in checks {
        assert_eq!(c["status"], "ok", "{c}");
        assert!(c["check"].is_string() && c["detail"].is_string(), "{c}");
        assert!(c["hint"].is_null(), "{c}");
    }
    assert_eq!(report["failed"], 0);

    assert_eq!(
        ferry_files(agent.root()),
        before,
        "doctor wrote in ROOT/.ferry (state, head, etag, key lists or its probe file)"
    );
    assert_eq!(
        agent.update()["to"],
        v(2),
        "the update doctor vouched for works"
    );
}

#[test]
fn doctor_names_a_server_that_is_down() {
    let (_p, _s, srv, agent) = scene();
    // A port nothing listens on: bound by the OS, then closed.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let down = format!("http://127.0.0.1:{}/", closed.local_addr().unwrap().port());
    drop(closed);
    let config = agent.root().join(".ferry/config.toml");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        &format!("servers = [\"{}\"]", srv.url),
        &format!("servers = [\"{}\", \"{down}\"]", srv.url),
    );
    std::fs::write(&config, text).unwrap();

    let started = Instant::now();
    let out = doctor(&agent, &[], &[]);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "network checks are bounded"
    );
    assert_fails(
        &out,
        &format!("server {down}"),
        &[
            "connection refused",
            "is the server running?",
            "config.toml",
        ],
    );
    let text = stdout(&out);
    assert!(
        line(&text, &format!("server {}", srv.url)).starts_with("ok "),
        "{text}"
    );

    let out = doctor(&agent, &["--json"], &[]);
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let c = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == format!("server {down}"))
        .expect("a check for the second server");
    assert_eq!(c["status"], "fail");
    assert!(
        c["hint"]
            .as_str()
            .unwrap()
            .contains("is the server running?"),
        "{c}"
    );
    assert_eq!(v["failed"], 1);
}

#[test]
fn doctor_names_a_head_signed_by_another_key() {
    let p = Publisher::new("stable");
    let sources = Sources::app(1);
    p.publish(&v(1), &sources.release(1));
    let srv = p.serve();
    let other = Publisher::new("stable");
    let agent = Agent::init(&srv.url, "stable", &other.public_key(), &[]);
    let out = doctor(&agent, &[], &[]);
    assert_fails(
        &out,
        &format!("head {}", srv.url),
        &["does not verify with the pinned key", "public_key"],
    );
}

#[test]
fn doctor_names_an_expired_head() {
    let p = Publisher::new("stable");
    let sources = Sources::app(1);
    p.publish_with(&v(1), &sources.release(1), &["--expires-in", "2s"]);
    let srv = p.serve();
    let agent = Agent::init(&srv.url, "stable", &p.public_key(), &[]);
    std::thread::sleep(Duration::from_secs(3));
    let out = doctor(&agent, &[], &[]);
    assert_fails(
        &out,
        "clock",
        &[
            "expired at",
            "ago",
            "has not been refreshed",
            "clock is ahead",
            "(now: ",
        ],
    );
    let text = stdout(&out);
    assert!(
        line(&text, &format!("head {}", srv.url)).starts_with("ok "),
        "the signatures of an expired head still verify:\n{text}"
    );
}

#[test]
fn doctor_names_a_disk_too_small_for_the_next_release() {
    let (_p, _s, _srv, agent) = scene();
    // Tests cannot mount a small filesystem; builds with the `failpoints` feature (the
    // ones these tests run) let the free space be given.
    let out = doctor(&agent, &[], &[("FERRY_DOCTOR_FREE_BYTES", Some("4096"))]);
    assert_fails(&out, "disk", &["release 2.0.0 does not fit", "4.1 KB free"]);
    let out = doctor(&agent, &[], &[]);
    assert!(out.status.success(), "{}", stdout(&out));
}

#[test]
fn doctor_names_an_unwritable_root() {
    let (_p, _s, _srv, agent) = scene();
    let ferry_dir = agent.root().join(".ferry");
    let mode = |m| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&ferry_dir, std::fs::Permissions::from_mode(m)).unwrap();
    };
    mode(0o555);
    let uid = std::process::Command::new("id").arg("-u").output().unwrap();
    let out = if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        doctor(&agent, &[], &[])
    } else {
        // chmod does not stop root: run doctor as `nobody` instead (what running ferry
        // as the wrong user looks like), if setpriv is there to do it.
        let Ok(setpriv) = which("setpriv") else {
            mode(0o755);
            eprintln!("running as root without setpriv: not asserted");
            return;
        };
        {
            use std::os::unix::fs::PermissionsExt;
            let open = std::fs::Permissions::from_mode(0o755);
            std::fs::set_permissions(agent.root(), open).unwrap();
        }
        let ferry = bin("ferry");
        let root = agent.root().to_str().unwrap();
        let args = [
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            ferry.to_str().unwrap(),
            "doctor",
            "--root",
            root,
        ];
        run_env(setpriv, &args, &[])
    };
    mode(0o755);
    assert_fails(
        &out,
        "write",
        &["cannot create a file in", "Permission denied"],
    );
}

/// The file `name` along PATH.
fn which(name: &str) -> Result<std::path::PathBuf, ()> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
        .ok_or(())
}

#[test]
fn doctor_names_a_missing_or_unexecutable_hook() {
    let (_p, _s, _srv, agent) = scene();
    let script = agent.root().join("check.sh");
    std::fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
    add_config(
        &agent,
        &format!(
            "pre_switch = \"no-such-program-for-ferry-doctor --now\"\npost_switch = \"/nonexistent/restart-app\"\nhealth_check = \"{}\"\n",
            script.display()
        ),
    );
    let out = doctor(&agent, &[], &[]);
    assert_fails(&out, "hook pre_switch", &["not found along PATH"]);
    assert_fails(
        &out,
        "hook post_switch",
        &["/nonexistent/restart-app", "does not exist"],
    );
    assert_fails(
        &out,
        "hook health_check",
        &["is not executable", "chmod +x"],
    );
}

#[test]
fn doctor_names_who_holds_the_lock_and_only_warns() {
    let (_p, _s, _srv, agent) = scene();
    let path = agent.root().join(".ferry/lock");
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.lock().unwrap();
    std::fs::write(&path, format!("{}\nferry update\n", std::process::id())).unwrap();
    let out = doctor(&agent, &[], &[]);
    drop(file);
    let text = stdout(&out);
    let l = line(&text, "lock");
    assert!(l.starts_with("warn  "), "{text}");
    assert!(
        l.contains(&format!(
            "held by ferry update (pid {})",
            std::process::id()
        )),
        "{l}"
    );
    assert!(out.status.success(), "a warning alone exits 0:\n{text}");
}

#[test]
fn doctor_checks_tls_with_the_roots_ca_file() {
    let pki = super::tls::Pki::new();
    let p = Publisher::new("stable");
    let sources = Sources::app(1);
    p.publish(&v(1), &sources.release(1));
    let srv = pki.serve(&p);
    assert!(srv.url.starts_with("https://"), "{}", srv.url);
    let trusting = Agent::init(
        &srv.url,
        "stable",
        &p.public_key(),
        &["--ca-file", &pki.ca()],
    );
    let out = doctor(&trusting, &[], &[]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    let l = line(&text, &format!("server {}", srv.url));
    assert!(
        l.contains("TLS verified with ca_file") && l.contains("HTTP 200"),
        "{l}"
    );

    let untrusting = Agent::init(&srv.url, "stable", &p.public_key(), &[]);
    let out = doctor(&untrusting, &[], &[]);
    assert_fails(
        &out,
        &format!("server {}", srv.url),
        &["TLS handshake failed", "`ca_file`"],
    );
}

#[test]
fn doctor_follows_a_key_rotation_in_memory_and_stores_nothing() {
    let p = Publisher::new("stable");
    let sources = Sources::app(2);
    p.publish(&v(1), &sources.release(1));
    let srv = p.serve();
    let agent = Agent::init(&srv.url, "stable", &p.public_key(), &[]);
    agent.update();
    // Key list 1 (a root key and a new publishing key), signed by the single key the
    // root trusts; release 2 signed only by the new publishing key.
    let keys = p.dir.path().join("keys");
    let k = |f: &str| keys.join(f).to_str().unwrap().to_string();
    for name in ["root1", "pub2"] {
        let out = ferry_tests::run(
            bin("ferry-server"),
            &[
                "key",
                "gen",
                "--out",
                keys.to_str().unwrap(),
                "--name",
                name,
            ],
        );
        ferry_tests::assert_ok(&out, "key gen");
    }
    let repo = p.repo();
    let out = ferry_tests::run(
        bin("ferry-server"),
        &[
            "key",
            "new-list",
            "--repo",
            repo.to_str().unwrap(),
            "--root",
            &k("root1.pub"),
            "--publisher",
            &k("pub2.pub"),
            "--sign",
            &k("ferry.key"),
            "--sign",
            &k("root1.key"),
            "--previous-key",
            &k("ferry.pub"),
        ],
    );
    ferry_tests::assert_ok(&out, "key new-list");
    let src = sources.release(2);
    let out = ferry_tests::run(
        bin("ferry-server"),
        &[
            "publish",
            "--repo",
            repo.to_str().unwrap(),
            "--key",
            &k("pub2.key"),
            "--channel",
            "stable",
            "--version",
            &v(2),
            "--zstd-level",
            "3",
            src.to_str().unwrap(),
        ],
    );
    ferry_tests::assert_ok(&out, "publish 2 with the new key");

    let before = ferry_files(agent.root());
    let out = doctor(&agent, &[], &[]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    let l = line(&text, &format!("head {}", srv.url));
    assert!(
        l.contains("verified with key list 1") && l.contains("key lists 1..1 followed"),
        "{l}"
    );
    assert!(
        line(&text, "disk").contains("release 2.0.0 needs"),
        "{text}"
    );
    assert_eq!(
        ferry_files(agent.root()),
        before,
        "doctor stored a key list or state"
    );
    assert!(!agent.root().join(".ferry/keys").exists());
    // The update follows the same chain, and stores it.
    assert_eq!(agent.update()["to"], v(2));
    assert!(agent.root().join(".ferry/keys/1").exists());
}

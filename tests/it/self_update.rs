//! The library's self-updating example (client/examples/self_update.rs), run as a user
//! would run it: installed by ferry into a root, started as `ROOT/current/bin/
//! self_update`, it updates itself twice while running — installing the next release
//! beside itself and re-executing it, keeping its process id — and rolls itself back.

use std::path::Path;

use ferry_tests::{Agent, Publisher, assert_ok, bin, run};

/// Release `version` of the application: the example's executable and its VERSION.
fn release(dir: &Path, version: &str) -> std::path::PathBuf {
    let tree = dir.join(version);
    std::fs::create_dir_all(tree.join("bin")).unwrap();
    std::fs::copy(bin("examples/self_update"), tree.join("bin/self_update")).unwrap();
    std::fs::write(tree.join("VERSION"), format!("{version}\n")).unwrap();
    tree
}

/// Runs the installed application with `args`; its stdout.
fn app(agent: &Agent, args: &[&str]) -> String {
    let exe = agent.root().join("current/bin/self_update");
    let root = agent.root().to_str().unwrap().to_string();
    let mut all = vec!["--root", root.as_str()];
    all.extend_from_slice(args);
    let out = run(exe, &all);
    assert_ok(&out, "self_update");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The pids of the "running X (pid P)" lines, with X.
fn runs(stdout: &str) -> Vec<(String, String)> {
    stdout
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("running ")?;
            let (version, pid) = rest.split_once(" (pid ")?;
            Some((version.to_string(), pid.trim_end_matches(')').to_string()))
        })
        .collect()
}

#[test]
fn the_example_updates_itself_twice_while_running_and_rolls_itself_back() {
    let dir = tempfile::tempdir().unwrap();
    let p = Publisher::new("stable");
    p.publish("1.0.0", &release(dir.path(), "1.0.0"));
    let srv = p.serve();
    let agent = Agent::init(&srv.url, "stable", &p.public_key(), &[]);
    agent.update();
    let first = runs(&app(&agent, &[]));
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].0, "1.0.0");

    for (from, to) in [("1.0.0", "2.0.0"), ("2.0.0", "3.0.0")] {
        p.publish(to, &release(dir.path(), to));
        let out = app(&agent, &["--update"]);
        eprintln!("{out}");
        let seen = runs(&out);
        assert_eq!(seen.len(), 2, "{out}");
        assert_eq!(
            (seen[0].0.as_str(), seen[1].0.as_str()),
            (from, to),
            "{out}"
        );
        assert_eq!(
            seen[0].1, seen[1].1,
            "re-executed in the same process: {out}"
        );
        assert!(
            out.contains(&format!("plan: {from} -> {to}: reuse")),
            "{out}"
        );
        assert!(out.contains("stage: Downloading"), "{out}");
        assert_eq!(agent.active().as_deref(), Some(to));
        // The release it came from stays for a rollback.
        let status = agent.status();
        let retained = status["retained"].as_array().unwrap();
        assert!(retained.iter().any(|v| v == from), "{status}");
    }
    assert!(app(&agent, &["--update"]).contains("up to date (3.0.0)"));

    let out = app(&agent, &["--rollback"]);
    eprintln!("{out}");
    let seen = runs(&out);
    assert_eq!(
        seen.iter().map(|s| s.0.as_str()).collect::<Vec<_>>(),
        ["3.0.0", "2.0.0"],
        "{out}"
    );
    assert_eq!(agent.active().as_deref(), Some("2.0.0"));
    assert_eq!(agent.status()["pinned"]["version"], "2.0.0");
    assert!(
        app(&agent, &["--update"]).contains("pinned to 2.0.0 by a rollback; 3.0.0 is available")
    );
    assert_ok(&agent.ferry("verify", &[]), "verify");
}

/// Release `version` of ferry itself: the `ferry` executable under test.
fn ferry_release(dir: &Path, version: &str) -> std::path::PathBuf {
    let tree = dir.join(format!("ferry-{version}"));
    std::fs::create_dir_all(tree.join("bin")).unwrap();
    std::fs::copy(bin("ferry"), tree.join("bin/ferry")).unwrap();
    std::fs::write(tree.join("VERSION"), format!("{version}\n")).unwrap();
    tree
}

#[test]
fn ferry_updates_itself_from_its_own_channel_and_exits_for_its_service_manager() {
    let dir = tempfile::tempdir().unwrap();
    let p = Publisher::new("ferry");
    p.publish("1.0.0", &ferry_release(dir.path(), "1.0.0"));
    let srv = p.serve();
    let agent = Agent::init(&srv.url, "ferry", &p.public_key(), &[]);
    agent.update();
    let config = agent.root().join(".ferry/config.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("interval = \"1s\"\njitter = 0\n");
    std::fs::write(&config, text).unwrap();

    // As contrib/ferry-self.service starts it: the agent from the root it updates.
    let log = dir.path().join("agent.log");
    let mut child = std::process::Command::new(agent.root().join("current/bin/ferry"))
        .args(["agent", "--root", agent.root().to_str().unwrap()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let start = std::time::Instant::now();
    while !read_log().contains("check finished") {
        assert!(start.elapsed().as_secs() < 30, "no check: {}", read_log());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    p.publish("2.0.0", &ferry_release(dir.path(), "2.0.0"));
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed().as_secs() > 60 {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the agent did not exit after replacing itself: {}",
                read_log()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let text = read_log();
    assert!(status.success(), "{status}: {text}");
    assert!(
        text.contains("this agent's own release was replaced"),
        "{text}"
    );
    assert_eq!(agent.active().as_deref(), Some("2.0.0"));
    // What the service manager then starts is the new release's program.
    let exe = agent.root().join("current/bin/ferry");
    assert!(
        exe.canonicalize().unwrap().starts_with(
            agent
                .root()
                .join("versions")
                .canonicalize()
                .unwrap()
                .join("2.0.0")
        ),
        "{}",
        exe.display()
    );
    let out = run(
        exe,
        &["agent", "--root", agent.root().to_str().unwrap(), "--once"],
    );
    assert_ok(&out, "the new agent");
    assert_ok(&agent.ferry("verify", &[]), "verify");
}

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

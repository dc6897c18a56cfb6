//! The agent's identity: made by `ferry init`, shown by `ferry status`, stable across
//! commands, and new on a root copied to another machine (a cloned image), so two
//! machines never report or roll out as one.

use ferry_tests::{Agent, Publisher, assert_ok, bin, run};

#[test]
fn init_makes_the_agent_id_status_shows_it_and_a_cloned_root_gets_its_own() {
    let p = Publisher::new("stable");
    let agent = Agent::init("http://127.0.0.1:9", "stable", &p.public_key(), &[]);
    let file = agent.root().join(".ferry/agent_id");
    let made = std::fs::read_to_string(&file).expect("init writes .ferry/agent_id");
    let id = agent.status()["agent_id"]
        .as_str()
        .expect("status --json has agent_id")
        .to_string();
    assert_eq!(made.trim(), id);
    assert_eq!(id.len(), 32);
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(
        agent.status()["agent_id"],
        id.as_str(),
        "stable across commands"
    );

    let machine = agent.root().join(".ferry/agent_id.machine");
    if !machine.exists() {
        eprintln!("skipped the clone check: this system has no machine id");
        return;
    }
    // The same root as an image cloned onto another machine: its recorded machine
    // differs from the one it now runs on.
    let clone = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("cp")
        .args(["-a", &format!("{}/.", agent.root().display())])
        .arg(clone.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "cp: {out:?}");
    std::fs::write(
        clone.path().join(".ferry/agent_id.machine"),
        "another machine\n",
    )
    .unwrap();
    let out = run(
        bin("ferry"),
        &["status", "--json", "--root", clone.path().to_str().unwrap()],
    );
    assert_ok(&out, "status of the clone");
    let cloned: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let new = cloned["agent_id"].as_str().unwrap();
    assert_ne!(
        new, id,
        "a cloned root must not keep the original's agent id"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("made on another machine"),
        "the change is logged: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The original keeps its id.
    assert_eq!(agent.status()["agent_id"], id.as_str());
}

//! `ferry agent`: real agent processes (and `--once` checks, as cron runs them) against
//! the real ferry-server and nginx on 127.0.0.1 — picking up releases with no command,
//! idle checks as single 304s, update windows with pre-staging, hooks with a health
//! check that switches back and marks a release bad, staged rollouts over a fleet of
//! roots, and kill -9 while a new release is on trial.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferry_tests::nginx::Nginx;
use ferry_tests::{Agent, Publisher, assert_ok, bin};
use serde_json::Value;

use super::fixtures::{Sources, tree_eq, v};

const HEAD: &str = "/channels/stable/head";

/// Appends keys to the root's config.toml (after the commented defaults: every key
/// is top-level).
fn configure(agent: &Agent, lines: &[&str]) {
    let path = agent.root().join(".ferry/config.toml");
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    for l in lines {
        writeln!(f, "{l}").unwrap();
    }
}

/// `ferry agent --once` on `agent`'s root, asserting success; returns stderr (the log).
fn once(agent: &Agent) -> String {
    let out = agent.ferry("agent", &["--once"]);
    assert_ok(&out, "agent --once");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A running `ferry agent`, killed (-9) when dropped; its log goes to a file.
pub struct Running {
    child: Child,
    log: PathBuf,
}

impl Running {
    pub fn start(agent: &Agent, args: &[&str]) -> Running {
        let log = agent.root().with_extension("agent.log");
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(bin("ferry"))
            .args(["agent", "--root", agent.root().to_str().unwrap()])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap();
        Running { child, log }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// One memory figure of /proc/PID/status (`VmRSS`, `RssAnon`, ...) in KiB.
    fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("{field} in /proc/PID/status"))
    }

    /// User + system CPU time so far, in clock ticks.
    fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = after.split_whitespace().collect();
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits (bounded) until `f` holds.
fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
}

fn state(agent: &Agent) -> Value {
    serde_json::from_slice(&std::fs::read(agent.root().join(".ferry/state.json")).unwrap()).unwrap()
}

fn verify_ok(agent: &Agent) {
    assert_ok(&agent.ferry("verify", &[]), "verify");
}

#[test]
fn an_agent_picks_up_a_release_within_interval_and_jitter_and_idles_on_single_304s() {
    let publisher = Publisher::new("stable");
    let sources = Sources::app(2);
    publisher.publish(&v(1), &sources.release(1));
    let nginx = Nginx::start(&publisher.repo());
    let agent = Agent::init(&nginx.url, "stable", &publisher.public_key(), &[]);
    configure(&agent, &["interval = \"2s\"", "jitter = 20"]);
    let mut running = Running::start(&agent, &["--log-format", "json"]);
    wait_until("first install", Duration::from_secs(30), || {
        agent.active().as_deref() == Some("1.0.0")
    });
    tree_eq(&agent.current(), &sources.release(1));

    // Idle: checks every 1.6-2.4 s, each one request answered 304.
    let before = nginx.wire().len();
    let cpu_before = running.cpu_ticks();
    std::thread::sleep(Duration::from_secs(7));
    let idle = nginx.wire()[before..].to_vec();
    let cpu = running.cpu_ticks() - cpu_before;
    assert!(idle.len() >= 2, "idle checks in 7 s: {idle:?}");
    for check in &idle {
        assert_eq!((check.path.as_str(), check.status), (HEAD, 304), "{idle:?}");
        assert!(check.total() < 1024, "{check:?}");
    }
    let rss = running.status_kib("VmRSS");
    let anon = running.status_kib("RssAnon");
    eprintln!(
        "idle: {} checks in 7 s, {} B on the wire each ({:?}); agent RSS {rss} KiB (RssAnon {anon} KiB), {cpu} CPU ticks in 7 s",
        idle.len(),
        idle[0].total(),
        idle[0]
    );
    // What the idle agent holds of its own (heap, stacks) is the anonymous part; the
    // rest is the executable's pages, shared and reclaimable, which grow with the
    // program (12.7 of 16.3 MiB in the test build at 620562c).
    assert!(anon < 8 * 1024, "idle agent RssAnon {anon} KiB");
    assert!(rss < 24 * 1024, "idle agent RSS {rss} KiB");

    // nginx's ETag has one-second resolution.
    std::thread::sleep(Duration::from_millis(1100));
    publisher.publish(&v(2), &sources.release(2));
    let took = wait_until("pick up 2.0.0", Duration::from_secs(20), || {
        agent.active().as_deref() == Some("2.0.0")
    });
    eprintln!("published 2.0.0 was active after {took:?}");
    assert!(
        took < Duration::from_millis(2400 + 3000),
        "picked up after {took:?}: interval 2 s + 20% jitter, plus the update"
    );
    tree_eq(&agent.current(), &sources.release(2));
    verify_ok(&agent);

    // The structured log: one JSON object per line, the check's fields on each event.
    wait_until("the check's log line", Duration::from_secs(5), || {
        running.log().contains("\"result\":\"installed\"")
    });
    running.kill();
    let log = running.log();
    let installed: Value = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|e| e["result"] == "installed" && e["to"] == "2.0.0")
        .unwrap_or_else(|| panic!("no JSON event for the update in:\n{log}"));
    for key in [
        "agent_id",
        "channel",
        "from",
        "to",
        "bytes",
        "requests",
        "duration_ms",
        "result",
    ] {
        assert!(!installed[key].is_null(), "{key} missing in {installed}");
    }
    assert_eq!(installed["from"], "1.0.0");
    assert_eq!(installed["channel"], "stable");
    assert_eq!(installed["agent_id"], agent.status()["agent_id"]);
    assert!(installed["bytes"].as_u64().unwrap() > 0);
}

/// `HH:MM` in UTC, `minutes` from now.
fn utc_hm(minutes: i64) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        + minutes * 60;
    let m = secs.div_euclid(60).rem_euclid(24 * 60);
    format!("{:02}:{:02}", m / 60, m % 60)
}

#[test]
fn outside_its_window_the_agent_prestages_and_inside_it_only_switches() {
    let publisher = Publisher::new("stable");
    let sources = Sources::app(2);
    publisher.publish(&v(1), &sources.release(1));
    let nginx = Nginx::start(&publisher.repo());
    let agent = Agent::init(&nginx.url, "stable", &publisher.public_key(), &[]);
    agent.update();
    std::thread::sleep(Duration::from_millis(1100));
    publisher.publish(&v(2), &sources.release(2));

    // A window two hours away: the release is built beside the active one, no switch.
    let closed = format!("windows = [\"{}-{}\"]", utc_hm(120), utc_hm(180));
    configure(&agent, &[&closed, "timezone = \"UTC\""]);
    let log = once(&agent);
    assert!(log.contains("staged"), "{log}");
    assert_eq!(agent.active().as_deref(), Some("1.0.0"));
    tree_eq(&agent.current(), &sources.release(1));
    verify_ok(&agent);
    let status = agent.status();
    assert_eq!(status["staged"], "2.0.0", "{status}");
    tree_eq(&agent.root().join("versions/2.0.0"), &sources.release(2));
    // Still outside: nothing more is fetched than the head.
    let before = nginx.wire().len();
    let log = once(&agent);
    assert!(log.contains("waiting for an update window"), "{log}");
    assert_eq!(nginx.wire().len() - before, 1);
    assert_eq!(agent.active().as_deref(), Some("1.0.0"));

    // A window around now: the switch needs only the head check.
    let cfg = agent.root().join(".ferry/config.toml");
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        &closed,
        &format!("windows = [\"{}-{}\"]", utc_hm(-1), utc_hm(3)),
    );
    std::fs::write(&cfg, text).unwrap();
    let before = nginx.wire().len();
    let started = Instant::now();
    once(&agent);
    let switch_took = started.elapsed();
    let run = nginx.wire()[before..].to_vec();
    assert_eq!(run.len(), 1, "the switch downloads nothing: {run:?}");
    assert_eq!((run[0].path.as_str(), run[0].status), (HEAD, 304));
    assert_eq!(agent.active().as_deref(), Some("2.0.0"));
    tree_eq(&agent.current(), &sources.release(2));
    verify_ok(&agent);
    assert!(agent.status()["staged"].is_null());
    eprintln!("switch inside the window: {switch_took:?} for the whole `ferry agent --once`");

    // `ferry update` by hand ignores windows.
    std::thread::sleep(Duration::from_millis(1100));
    let sources3 = Sources::app(3);
    publisher.publish(&v(3), &sources3.release(3));
    let text = std::fs::read_to_string(&cfg).unwrap();
    let text = text
        .lines()
        .filter(|l| !l.starts_with("windows"))
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&cfg, format!("{text}\n{closed}\n")).unwrap();
    assert_eq!(agent.update()["to"], v(3));
}

#[test]
fn a_failing_health_check_switches_back_marks_the_release_bad_and_the_next_good_one_installs() {
    let publisher = Publisher::new("stable");
    let sources = Sources::app(3);
    // Release 2 ships without the file the health check looks for.
    for k in [1, 3] {
        std::fs::write(sources.release(k).join("healthy"), "ok").unwrap();
    }
    publisher.publish(&v(1), &sources.release(1));
    let srv = publisher.serve();
    let agent = Agent::init(&srv.url, "stable", &publisher.public_key(), &[]);
    configure(
        &agent,
        &[
            "post_switch = \"echo \\\"$FERRY_FROM>$FERRY_TO\\\" >> hooks.log\"",
            "health_check = \"test -f \\\"$FERRY_CURRENT/healthy\\\"\"",
            "health_retries = 2",
            "health_delay = \"0s\"",
        ],
    );
    once(&agent);
    assert_eq!(agent.active().as_deref(), Some("1.0.0"));

    publisher.publish(&v(2), &sources.release(2));
    let log = once(&agent);
    assert!(log.contains("health check failed 2 time(s)"), "{log}");
    assert_eq!(agent.active().as_deref(), Some("1.0.0"), "{log}");
    tree_eq(&agent.current(), &sources.release(1));
    verify_ok(&agent);
    let hooks = std::fs::read_to_string(agent.root().join("hooks.log")).unwrap();
    assert_eq!(
        hooks, ">1.0.0\n1.0.0>2.0.0\n2.0.0>1.0.0\n",
        "post_switch runs for each switch"
    );
    let status = agent.status();
    assert_eq!(status["bad"][0]["version"], "2.0.0", "{status}");
    assert!(
        status["bad"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("health check")
    );
    let history = agent.history();
    assert!(
        history
            .iter()
            .any(|e| e["event"] == "auto-rollback" && e["to"] == "2.0.0"),
        "{history:?}"
    );

    // Not retried: the next checks take the head only and stay.
    let before = srv.requests().len();
    let log = once(&agent);
    once(&agent);
    assert!(log.contains("marked bad"), "{log}");
    assert_eq!(srv.requests().len() - before, 2, "{:?}", srv.requests());
    assert_eq!(agent.active().as_deref(), Some("1.0.0"));
    let status = agent.ferry("status", &[]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("marked bad:    2.0.0"), "{text}");

    // The next good release installs.
    publisher.publish(&v(3), &sources.release(3));
    once(&agent);
    assert_eq!(agent.active().as_deref(), Some("3.0.0"));
    tree_eq(&agent.current(), &sources.release(3));
    verify_ok(&agent);

    // The operator may still force the bad one by hand (it is no longer current, so
    // through rollback --to): marks never block a deliberate choice.
    let forced = agent.ferry("rollback", &["--to", "2.0.0"]);
    assert_ok(&forced, "rollback --to a bad release");
    assert_eq!(agent.active().as_deref(), Some("2.0.0"));
    let hooks = std::fs::read_to_string(agent.root().join("hooks.log")).unwrap();
    assert!(
        hooks.ends_with("1.0.0>3.0.0\n3.0.0>2.0.0\n"),
        "post_switch runs after a rollback too: {hooks}"
    );
}

#[test]
fn twenty_roots_follow_a_30_percent_rollout_and_raising_it_only_adds_agents() {
    let publisher = Publisher::new("stable");
    let sources = Sources::app(2);
    publisher.publish(&v(1), &sources.release(1));
    let srv = publisher.serve();
    // Ten roots already on 1.0.0, ten fresh ones.
    let agents: Vec<Agent> = (0..20)
        .map(|_| Agent::init(&srv.url, "stable", &publisher.public_key(), &[]))
        .collect();
    for a in &agents[..10] {
        once(a);
    }
    publisher.publish_with(&v(2), &sources.release(2), &["--rollout", "30"]);
    for a in &agents {
        once(a);
    }
    let first: Vec<bool> = agents
        .iter()
        .map(|a| a.active().as_deref() == Some("2.0.0"))
        .collect();
    let n = first.iter().filter(|x| **x).count();
    eprintln!("{n} of 20 agents took 2.0.0 at 30%");
    // Binomial(20, 0.3): P(X = 0) = 0.0008, P(X >= 13) = 0.0013.
    assert!((1..=12).contains(&n), "{n} of 20 at 30%");
    for (a, took) in agents.iter().zip(&first) {
        if !took {
            // Left out, fresh roots included, they run the newest release they may.
            assert_eq!(a.active().as_deref(), Some("1.0.0"));
            let s = a.status();
            assert_eq!(s["held_back"][0]["version"], "2.0.0", "{s}");
            assert!(
                s["held_back"][0]["reason"]
                    .as_str()
                    .unwrap()
                    .contains("30%")
            );
        }
    }
    let folders: Vec<Option<String>> = agents.iter().map(Agent::current_folder).collect();

    let out = ferry_tests::run(
        bin("ferry-server"),
        &[
            "rollout",
            "--repo",
            publisher.repo().to_str().unwrap(),
            "--channel",
            "stable",
            "--key",
            publisher.key().to_str().unwrap(),
            "--percent",
            "100",
        ],
    );
    assert_ok(&out, "rollout --percent 100");
    for (a, took) in agents.iter().zip(&first) {
        let before = a.history().len();
        once(a);
        assert_eq!(a.active().as_deref(), Some("2.0.0"));
        if *took {
            assert_eq!(
                a.history().len(),
                before,
                "an agent already on 2.0.0 changed"
            );
        }
        assert_eq!(a.status()["held_back"], serde_json::json!([]));
    }
    for ((a, took), folder) in agents.iter().zip(&first).zip(&folders) {
        if *took {
            assert_eq!(&a.current_folder(), folder);
        }
        tree_eq(&a.current(), &sources.release(2));
    }
}

/// Kill -9 while the new release is on trial (its health check running): the active
/// release verifies at once, and the restarted agent finishes the trial.
#[test]
fn kill_9_during_the_health_check_then_restart_finishes_the_trial() {
    let publisher = Publisher::new("stable");
    let sources = Sources::app(2);
    publisher.publish(&v(1), &sources.release(1));
    let srv = publisher.serve();
    let agent = Agent::init(&srv.url, "stable", &publisher.public_key(), &[]);
    once(&agent);
    configure(
        &agent,
        &[
            "interval = \"1s\"",
            "health_check = \"test -f gate || sleep 60\"",
            "health_retries = 1",
            "health_delay = \"0s\"",
            "health_timeout = \"2m\"",
        ],
    );
    publisher.publish(&v(2), &sources.release(2));
    let mut running = Running::start(&agent, &[]);
    // On trial and switched to: the trial is saved just before `current` switches.
    wait_until("2.0.0 on trial", Duration::from_secs(30), || {
        state(&agent)["trial"]["version"] == "2.0.0" && agent.active().as_deref() == Some("2.0.0")
    });
    running.kill();
    // The hook's process group outlives a killed agent; it does not matter here.
    assert_eq!(agent.active().as_deref(), Some("2.0.0"));
    verify_ok(&agent);
    // A failing check now (no gate, a short timeout): the restart switches back.
    let cfg = agent.root().join(".ferry/config.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replace("sleep 60", "exit 1")
            .replace("health_timeout = \"2m\"", "health_timeout = \"5s\""),
    )
    .unwrap();
    // The repository is gone meanwhile: finishing a trial needs nothing from it.
    drop(srv);
    let log = once(&agent);
    assert!(log.contains("hooks did not finish"), "{log}");
    assert_eq!(agent.active().as_deref(), Some("1.0.0"));
    tree_eq(&agent.current(), &sources.release(1));
    verify_ok(&agent);
    assert_eq!(agent.status()["bad"][0]["version"], "2.0.0");
    assert!(state(&agent)["trial"].is_null());
}

#[test]
fn a_cancelling_pre_switch_keeps_the_active_release_and_the_build_for_the_next_check() {
    let publisher = Publisher::new("stable");
    let sources = Sources::app(2);
    publisher.publish(&v(1), &sources.release(1));
    let srv = publisher.serve();
    let agent = Agent::init(&srv.url, "stable", &publisher.public_key(), &[]);
    once(&agent);
    configure(&agent, &["pre_switch = \"test -f allow\""]);
    publisher.publish(&v(2), &sources.release(2));
    let out = agent.ferry("agent", &["--once"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("switch to 2.0.0 cancelled"), "{err}");
    assert_eq!(agent.active().as_deref(), Some("1.0.0"));
    verify_ok(&agent);
    std::fs::write(agent.root().join("allow"), "").unwrap();
    let before = srv.requests().len();
    once(&agent);
    assert_eq!(agent.active().as_deref(), Some("2.0.0"));
    assert_eq!(
        srv.requests().len() - before,
        1,
        "the release built before is switched to without downloading it again"
    );
    tree_eq(&agent.current(), &sources.release(2));
}

#[test]
fn a_plan_over_the_data_budget_is_refused_by_the_agent_before_its_download() {
    let publisher = Publisher::new("stable");
    let sources = Sources::app(2);
    publisher.publish(&v(1), &sources.release(1));
    let srv = publisher.serve();
    let agent = Agent::init(&srv.url, "stable", &publisher.public_key(), &[]);
    once(&agent);
    configure(&agent, &["max_download = 100"]);
    publisher.publish(&v(2), &sources.release(2));
    let before = srv.requests().len();
    let out = agent.ferry("agent", &["--once"]);
    assert!(!out.status.success());
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("download budget is 100 B"), "{log}");
    assert!(
        log.contains("plan: 1.0.0 -> 2.0.0"),
        "the plan is printed: {log}"
    );
    assert_eq!(agent.active().as_deref(), Some("1.0.0"));
    verify_ok(&agent);
    let run = srv.requests()[before..].to_vec();
    let bytes: u64 = run.iter().map(|r| r.bytes).sum();
    assert!(
        run.len() <= 2 && bytes < 20_000,
        "head and manifest diff only: {run:?}"
    );
}

#[test]
fn an_incompatible_release_is_refused_with_its_reason_before_anything_is_downloaded() {
    let publisher = Publisher::new("stable");
    let sources = Sources::app(3);
    publisher.publish(&v(1), &sources.release(1));
    let srv = publisher.serve();
    let edge = Agent::init(&srv.url, "stable", &publisher.public_key(), &[]);
    let db = Agent::init(&srv.url, "stable", &publisher.public_key(), &[]);
    configure(&edge, &["labels = [\"role=edge\"]"]);
    configure(&db, &["labels = [\"role=db\"]"]);
    once(&edge);
    once(&db);
    let other_arch = if std::env::consts::ARCH == "aarch64" {
        "x86_64"
    } else {
        "aarch64"
    };
    let arch = format!("arch={other_arch}");
    publisher.publish_with(&v(2), &sources.release(2), &["--requires", &arch]);
    publisher.publish_with(
        &v(3),
        &sources.release(3),
        &["--requires", "role=edge", "--requires", "os=linux"],
    );

    // 3.0.0 wants role=edge: the edge agent takes it; the db agent is refused it and,
    // 2.0.0 being for another architecture, stays on 1.0.0 without downloading.
    once(&edge);
    assert_eq!(edge.active().as_deref(), Some("3.0.0"));
    tree_eq(&edge.current(), &sources.release(3));
    let before = srv.requests().len();
    let log = once(&db);
    assert_eq!(
        srv.requests().len() - before,
        1,
        "only the head: {:?}",
        srv.requests()
    );
    assert_eq!(db.active().as_deref(), Some("1.0.0"));
    assert!(
        log.contains("requires label role=edge, this agent has role=db"),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "requires arch={other_arch}, this agent is {}",
            std::env::consts::ARCH
        )),
        "{log}"
    );
    let status = db.status();
    let held: Vec<&str> = status["held_back"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["version"].as_str().unwrap())
        .collect();
    assert_eq!(held, ["3.0.0", "2.0.0"], "{status}");
    let refused: Vec<Value> = db
        .history()
        .into_iter()
        .filter(|e| e["event"] == "refused")
        .collect();
    assert_eq!(refused.len(), 2, "each refusal recorded once: {refused:?}");
    assert!(
        refused
            .iter()
            .any(|e| e["to"] == "3.0.0" && e["result"].as_str().unwrap().contains("role=edge"))
    );
    // Checked again: not recorded again.
    once(&db);
    let again = db
        .history()
        .iter()
        .filter(|e| e["event"] == "refused")
        .count();
    assert_eq!(again, 2);
    // `ferry update` by hand follows the same rules.
    let out = db.ferry("update", &[]);
    assert_ok(&out, "update");
    assert_eq!(db.active().as_deref(), Some("1.0.0"));

    // Too new for this agent: min-agent above its version.
    let sources4 = Sources::app(4);
    publisher.publish_with(
        &v(4),
        &sources4.release(4),
        &["--requires", "min-agent=99.0.0"],
    );
    let log = once(&edge);
    assert!(log.contains("requires min-agent 99.0.0"), "{log}");
    assert_eq!(edge.active().as_deref(), Some("3.0.0"));
}

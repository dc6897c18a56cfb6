//! The fleet database in PostgreSQL (docs/FLEET.md, "PostgreSQL"): the real
//! `ferry-server serve --fleet-db postgres://…` against a private PostgreSQL started by
//! each test ([`ferry_tests::postgres`]). The checks of tests/it/fleet.rs and
//! tests/it/audit.rs run again on it unchanged; then what only a shared database
//! allows: two servers as one, a halt that happens once, `/healthz` across a database
//! outage, and durability through kill -9 of the server and of PostgreSQL.

use std::path::Path;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use ferry_format::report::AgentState;
use ferry_server::serve::fleet::store::{self, FleetDb, Open, conformance};
use ferry_tests::postgres::{PASSWORD, Postgres};
use serde_json::{Value, json};

use super::fixtures::{Sources, v};
use super::fleet::{AGENT_TOKEN, FleetServer, get_text, head_of, metrics_text, published, report};
use super::online::{key_file, publisher_with_online_role, server};

/// Starts fleet servers on the database `url`.
fn on(url: &str) -> impl Fn(&Path, &[&str]) -> FleetServer + '_ {
    move |repo, extra| FleetServer::start_on(repo, url, extra)
}

/// How the server shows the database (never with its password).
fn shown(pg: &Postgres, db: &str) -> String {
    format!("postgres://ferry@127.0.0.1:{}/{db}", pg.port)
}

fn open(url: &str, mode: Open) -> Result<Box<store::Store>, String> {
    store::open(&FleetDb::parse(url).unwrap(), mode).map_err(|e| e.to_string())
}

#[test]
fn the_store_keeps_the_sqlite_semantics_on_postgres() {
    let pg = Postgres::start();
    let url = pg.database("late");
    conformance::duplicates_late_reports_credentials_and_retention(
        open(&url, Open::Create).unwrap(),
        &|| open(&url, Open::Existing).unwrap(),
    );
    conformance::a_failed_check_does_not_count_against_the_release_the_agent_runs(
        &mut *open(&pg.database("tried"), Open::Create).unwrap(),
    );
    let url = pg.database("halts");
    conformance::halts_commit_inside_the_lock_and_roll_back_on_error(
        &mut *open(&url, Open::Create).unwrap(),
    );
    // The schema is versioned: a newer one is refused, not used.
    pg.psql("halts", "UPDATE ferry_fleet_schema SET version = 99");
    let err = open(&url, Open::Create).err().unwrap();
    assert!(err.contains("schema version 99"), "{err}");
    // The audit opens only what `serve` made, naming the database without password.
    let err = open(&pg.database("empty"), Open::Existing).err().unwrap();
    assert!(err.contains("no fleet tables"), "{err}");
    assert!(err.contains(&shown(&pg, "empty")), "{err}");
    assert!(!err.contains(PASSWORD), "{err}");
}

#[test]
fn reports_enroll_and_credentials_are_bound_to_their_agent_on_postgres() {
    let pg = Postgres::start();
    super::fleet::check_enrollment_and_credentials(&on(&pg.database("fleet")));
}

#[test]
fn the_fleet_view_counts_releases_outcomes_and_offline_agents_on_postgres() {
    let pg = Postgres::start();
    super::fleet::check_fleet_view_counts(&on(&pg.database("fleet")));
}

#[test]
fn a_rollout_halts_itself_until_resumed_on_postgres() {
    let pg = Postgres::start();
    super::fleet::check_halt_until_resumed(&on(&pg.database("fleet")));
}

#[test]
fn audit_export_and_prune_read_the_fleet_database_in_postgres() {
    let pg = Postgres::start();
    let url = pg.database("fleet");
    super::audit::check_audit_of_fleet_db(&url, &shown(&pg, "fleet"));
}

/// fsync on: a report answered 2xx was flushed to PostgreSQL's WAL on disk, so it
/// survives the server's and then the database's kill -9 (and their restarts).
#[test]
fn acknowledged_reports_survive_kill_9_of_the_server_and_of_postgres() {
    let pg = Postgres::start_durable();
    let url = pg.database("fleet");
    let (p, _sources) = published();
    let f = FleetServer::start_on(&p.repo(), &url, &[]);
    let mut sent = Vec::new();
    let cred = f.enroll(&report(1, 0, AgentState::Idle, "1.0.0", None));
    for seq in 1..=40 {
        let r = report(1, seq, AgentState::Idle, "1.0.0", Some("1.0.0"));
        assert_eq!(f.post(&cred, &r), (200, json!({"stored": true})));
        sent.push(r);
    }
    // Right after the last 2xx: SIGKILL to the server (its guard's drop), then to
    // PostgreSQL, which recovers from its WAL when it starts again.
    let FleetServer { srv, dir } = f;
    drop(srv);
    pg.kill9();
    pg.start_again();
    let srv = FleetServer::restart_on(&p.repo(), dir.path(), &url, &[]);
    let f = FleetServer { srv, dir };
    for r in &sent {
        assert_eq!(
            f.post(&cred, r),
            (200, json!({"stored": false})),
            "{} was acknowledged, so it is a duplicate now",
            r.report_id
        );
    }
    let fleet = f.get("/v1/fleet");
    assert_eq!(fleet["channels"][0]["updates_succeeded"], 41, "{fleet}");
}

/// The `/metrics` lines recomputed from the database at each scrape (the counters are
/// each server's own), sorted: each process orders a family's label sets its own way.
fn fleet_gauges(url: &str) -> Vec<String> {
    const GAUGES: [&str; 7] = [
        "ferry_agents{",
        "ferry_agents_offline{",
        "ferry_release_agents{",
        "ferry_fleet_saved_bytes{",
        "ferry_rollout_percent{",
        "ferry_rollout_paused{",
        "ferry_rollout_halted{",
    ];
    let mut lines: Vec<String> = metrics_text(url)
        .lines()
        .filter(|l| GAUGES.iter().any(|g| l.starts_with(g)))
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

/// A view without the moment it was computed.
fn view(f: &FleetServer, path: &str) -> Value {
    let mut v = f.get(path);
    v["generated_at"] = Value::Null;
    v
}

#[test]
fn two_servers_on_one_database_show_one_fleet_and_halt_once() {
    let pg = Postgres::start();
    let url = pg.database("fleet");
    let sources = Sources::app(2);
    let p = publisher_with_online_role(&sources, &[]);
    p.publish_with(&v(2), &sources.release(2), &["--rollout", "50"]);
    let repo = p.repo();
    let online = key_file(&p, "online.key");
    let args = [
        "--timestamp-key",
        &online,
        "--halt-when",
        "failed>20%,min=4",
    ];
    let a = FleetServer::start_on(&repo, &url, &args);
    let b = FleetServer::start_on(&repo, &url, &args);

    // An agent enrolled by one server reports to the other: one credential store.
    for n in 1..=4 {
        let (first, second) = if n % 2 == 1 { (&a, &b) } else { (&b, &a) };
        let cred = first.enroll(&report(n, 1, AgentState::Idle, "2.0.0", Some("2.0.0")));
        let next = report(n, 2, AgentState::Idle, "2.0.0", Some("2.0.0"));
        assert_eq!(second.post(&cred, &next), (200, json!({"stored": true})));
        assert_eq!(first.post(&cred, &next), (200, json!({"stored": false})));
    }
    // Either server shows the same fleet, agents and gauges.
    assert_eq!(view(&a, "/v1/fleet"), view(&b, "/v1/fleet"));
    let agents = view(&a, "/v1/agents");
    assert_eq!(agents["agents"].as_array().unwrap().len(), 4, "{agents}");
    assert_eq!(agents, view(&b, "/v1/agents"));
    let gauges = fleet_gauges(&a.srv.url);
    assert!(
        gauges
            .iter()
            .any(|l| l.starts_with("ferry_agents{") && l.ends_with(" 4")),
        "{gauges:?}"
    );
    assert_eq!(gauges, fleet_gauges(&b.srv.url));

    // Eight agents fail 2.0.0 at the same moment, half of them reporting to each
    // server: every one of those reports trips the rule (2 of 6 is above 20%), on
    // both servers at once. The rollout halts once: one head re-signed, one halt.
    let before = head_of(&repo);
    let start = Barrier::new(8);
    std::thread::scope(|s| {
        for n in 10..18 {
            let (f, start) = (if n % 2 == 0 { &a } else { &b }, &start);
            s.spawn(move || {
                let r = report(n, 1, AgentState::RolledBack, "1.0.0", Some("2.0.0"));
                start.wait();
                let (status, body) = f.post(AGENT_TOKEN, &r);
                assert_eq!(status, 201, "{body}");
            });
        }
    });
    let after = head_of(&repo);
    assert_eq!(after.rollout_of(&v(2)), 0, "paused");
    assert_eq!(
        after.sequence,
        before.sequence + 1,
        "the head re-signed once"
    );
    assert_eq!(pg.psql("fleet", "SELECT count(*) FROM halts"), "1");
    let fleet = view(&a, "/v1/fleet");
    assert_eq!(fleet["channels"][0]["rollout"]["halted"], true, "{fleet}");
    assert_eq!(fleet, view(&b, "/v1/fleet"));
    assert_eq!(fleet_gauges(&a.srv.url), fleet_gauges(&b.srv.url));

    // The audit reads the same database: one halt, one pause in the head log, every
    // outcome once; the URL it names has no password.
    let out = server(&[
        "audit",
        "export",
        "--repo",
        repo.to_str().unwrap(),
        "--since",
        "2020-01-01",
        "--fleet-db",
        &url,
    ]);
    ferry_tests::assert_ok(&out, "audit export --fleet-db postgres://");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(!text.contains(PASSWORD));
    let audit: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        audit["counts"],
        json!({"published": 2, "paused": 1, "halted": 1, "agent-idle": 8, "agent-rolled-back": 8}),
        "{audit:#}"
    );
    assert_eq!(audit["fleet_db"], shown(&pg, "fleet"));
}

/// Polls `/healthz` until it answers `status` (the server reconnects on its own).
fn healthz_until(url: &str, status: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (got, body) = get_text(url, "/healthz");
        if got == status {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/healthz still {got} ({body}) after 20 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn healthz_fails_naming_the_database_while_postgres_is_down() {
    let pg = Postgres::start();
    let url = pg.database("fleet");
    let (p, _sources) = published();
    let f = FleetServer::start_on(&p.repo(), &url, &[]);
    assert_eq!(get_text(&f.srv.url, "/healthz"), (200, "ok".to_string()));
    let cred = f.enroll(&report(1, 1, AgentState::Idle, "1.0.0", None));

    pg.stop();
    let (status, why) = get_text(&f.srv.url, "/healthz");
    assert_eq!(status, 503, "{why}");
    assert_eq!(why.lines().count(), 1, "one line: {why:?}");
    assert!(why.contains(&shown(&pg, "fleet")), "{why}");
    assert!(why.contains("unreachable"), "{why}");
    assert!(!why.contains(PASSWORD), "{why}");
    // Reports are refused with 503 (the agent's queue keeps them), the repository is
    // still served.
    let late = report(1, 2, AgentState::Idle, "1.0.0", Some("1.0.0"));
    assert_eq!(f.post(&cred, &late).0, 503);
    assert_eq!(get_text(&f.srv.url, "/channels/stable/head").0, 200);

    pg.start_again();
    assert_eq!(healthz_until(&f.srv.url, 200), "ok");
    assert_eq!(f.post(&cred, &late), (200, json!({"stored": true})));
    assert_eq!(
        f.get("/v1/agents")["agents"][0]["active"],
        "1.0.0",
        "reports flow again"
    );

    // The repository folder gone: 503 naming it; back: 200.
    let moved = p.dir.path().join("repo.away");
    std::fs::rename(p.repo(), &moved).unwrap();
    let (status, why) = get_text(&f.srv.url, "/healthz");
    assert_eq!(status, 503);
    assert!(why.contains("repository"), "{why}");
    std::fs::rename(&moved, p.repo()).unwrap();
    assert_eq!(get_text(&f.srv.url, "/healthz").0, 200);
    // SIGTERM: a clean exit, the database connection closed on the way out.
    let FleetServer { srv, dir: _dir } = f;
    assert!(srv.terminate().success(), "serve exits 0 on SIGTERM");
}

#[test]
fn fleet_db_urls_of_other_schemes_and_unreachable_databases_are_named() {
    let (p, _sources) = published();
    let repo = p.repo();
    let dir = tempfile::tempdir().unwrap();
    let serve = |db: &str| {
        let mut args = vec![
            "serve".to_string(),
            "--repo".into(),
            repo.to_str().unwrap().into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
        ];
        args.extend(super::fleet::fleet_args_on(dir.path(), db));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = server(&args);
        assert!(!out.status.success(), "serve --fleet-db {db} started");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = serve("mysql://ferry:pw@127.0.0.1/fleet");
    assert!(err.contains("unsupported URL scheme mysql://"), "{err}");
    let out = server(&[
        "audit",
        "export",
        "--repo",
        repo.to_str().unwrap(),
        "--since",
        "2020-01-01",
        "--fleet-db",
        "s3://bucket/fleet",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unsupported URL scheme s3://"), "{err}");
    // Nothing listens on port 1: serve does not start, and says which database.
    let err = serve("postgres://ferry:pw-not-shown@127.0.0.1:1/fleet");
    assert!(
        err.contains("postgres://ferry@127.0.0.1:1/fleet") && err.contains("unreachable"),
        "{err}"
    );
    assert!(!err.contains("pw-not-shown"), "{err}");
    // A URL that does not parse is named without echoing it (or its password).
    let err = serve("postgres://ferry:pw-not-shown@127.0.0.1:port/fleet");
    assert!(
        err.contains("--fleet-db: not a usable postgres:// URL"),
        "{err}"
    );
    assert!(!err.contains("pw-not-shown"), "{err}");
}

//! `ferry-server audit` against real heads: publish, a rollout raised with the
//! publishing key, paused and refreshed with the online key; the export lists those
//! events in order with the key ids that signed them, from the head log the
//! repository keeps (so it runs beside `serve`), as JSON and as the same CSV rows,
//! filtered by --since/--until; a signed export verifies, and fails after an edit of
//! one byte, of the signature, or against another key.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use ferry_format::keys::PublicKey;
use ferry_tests::{Publisher, assert_ok};
use serde_json::Value;

use super::fixtures::{Sources, v};
use super::online::{key_file, publisher_with_online_role, server};

fn key_id(path: &str) -> String {
    PublicKey::from_text(&std::fs::read_to_string(path).unwrap())
        .unwrap()
        .id()
        .to_hex()
}

fn export(p: &Publisher, args: &[&str]) -> std::process::Output {
    let repo = p.repo();
    let mut all = vec!["audit", "export", "--repo", repo.to_str().unwrap()];
    all.extend_from_slice(args);
    server(&all)
}

fn export_json(p: &Publisher, args: &[&str]) -> Value {
    let out = export(p, args);
    assert_ok(&out, &format!("audit export {args:?}"));
    serde_json::from_slice(&out.stdout).expect("audit export prints JSON")
}

/// (event, release) of every event.
fn kinds(report: &Value) -> Vec<(String, String)> {
    report["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["event"].as_str().unwrap().to_string(),
                e["release"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn verify(file: &Path, public_key: &str) -> std::process::Output {
    server(&[
        "audit",
        "verify",
        file.to_str().unwrap(),
        "--public-key",
        public_key,
    ])
}

fn refused(out: &std::process::Output) -> String {
    assert!(
        !out.status.success(),
        "should fail: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// One `GET` on a fresh connection: the whole response.
fn get(url: &str, path: &str) -> Vec<u8> {
    let addr = url.trim_start_matches("http://");
    let mut c = TcpStream::connect(addr).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        c,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = Vec::new();
    c.read_to_end(&mut out).expect("a complete response");
    out
}

#[test]
fn audit_export_lists_every_signed_change_and_a_signed_report_fails_after_any_edit() {
    let sources = Sources::app(2);
    let p = publisher_with_online_role(&sources, &[]);
    let srv = p.serve();
    let repo = p.repo();
    let repo = repo.to_str().unwrap();
    let (publisher_key, online_key) = (p.key(), key_file(&p, "online.key"));
    let publisher_id = key_id(&key_file(&p, "ferry.pub"));
    let online_id = key_id(&key_file(&p, "online.pub"));

    p.publish_with(&v(2), &sources.release(2), &["--rollout", "10"]);
    let rollout = |args: &[&str]| {
        let mut all = vec!["rollout", "--repo", repo, "--channel", "stable"];
        all.extend_from_slice(args);
        assert_ok(&server(&all), &format!("rollout {args:?}"));
    };
    rollout(&["--key", publisher_key.to_str().unwrap(), "--percent", "50"]);
    // Heads carry whole seconds: the pause is later than everything before it.
    std::thread::sleep(Duration::from_millis(2100));
    rollout(&["--timestamp-key", &online_key, "--pause"]);
    assert_ok(
        &server(&[
            "refresh-head",
            "--repo",
            repo,
            "--channel",
            "stable",
            "--timestamp-key",
            &online_key,
        ]),
        "refresh-head --timestamp-key",
    );

    // While `serve` runs on the same repository.
    let report = export_json(&p, &["--since", "2020-01-01", "--format", "json"]);
    let expected = [
        ("published", v(1)),
        ("published", v(2)),
        ("rollout-changed", v(2)),
        ("paused", v(2)),
        ("refreshed", v(2)),
    ]
    .map(|(e, r)| (e.to_string(), r));
    assert_eq!(kinds(&report), expected, "{report:#}");
    let events = report["events"].as_array().unwrap();
    let field = |i: usize, name: &str| events[i][name].clone();
    // Who signed: the publishing key three times, then the online key, whose
    // heads still carry the content only the publishing key signed.
    for (i, role, signer) in [
        (0, "publisher", &publisher_id),
        (1, "publisher", &publisher_id),
        (2, "publisher", &publisher_id),
        (3, "online", &online_id),
        (4, "online", &online_id),
    ] {
        assert_eq!(field(i, "role"), role, "event {i}");
        assert_eq!(
            field(i, "key_ids"),
            serde_json::json!([signer]),
            "event {i}"
        );
        assert_eq!(
            field(i, "content_key_ids"),
            serde_json::json!([publisher_id]),
            "event {i}"
        );
        assert_eq!(field(i, "channel"), "stable");
    }
    assert_eq!(
        (field(1, "percent"), field(0, "percent")),
        (10.into(), 100.into())
    );
    assert_eq!(
        (field(2, "previous_percent"), field(2, "percent")),
        (10.into(), 50.into())
    );
    assert_eq!(
        (field(3, "previous_percent"), field(3, "percent")),
        (50.into(), 0.into())
    );
    let sequences: Vec<u64> = events
        .iter()
        .map(|e| e["head_sequence"].as_u64().unwrap())
        .collect();
    assert!(sequences.windows(2).all(|w| w[0] < w[1]), "{sequences:?}");
    assert_eq!(
        events[3]["publisher_sequence"],
        events[2]["publisher_sequence"]
    );
    assert_eq!(report["counts"]["published"], 2);
    assert_eq!(report["counts"]["paused"], 1);
    assert_eq!(report["report_id"].as_str().unwrap().len(), 32);

    // The log entry behind an event is served, byte for byte, as an immutable object.
    let head_hash = events[3]["head"].as_str().unwrap();
    let name = format!(
        "{:020}-{head_hash}",
        events[3]["head_sequence"].as_u64().unwrap()
    );
    let entry = std::fs::read(p.repo().join("channels/stable/log").join(&name)).unwrap();
    let response = get(&srv.url, &format!("/channels/stable/log/{name}"));
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("immutable"), "{text}");
    assert!(response.ends_with(&entry));

    // CSV: the same rows.
    let out = export(&p, &["--since", "2020-01-01", "--format", "csv"]);
    assert_ok(&out, "audit export --format csv");
    let csv = String::from_utf8(out.stdout).unwrap();
    let mut lines = csv.split_terminator("\r\n");
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let rows: Vec<Vec<String>> = lines
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect();
    assert_eq!(rows.len(), events.len(), "{csv}");
    for (row, e) in rows.iter().zip(events) {
        assert_eq!(row.len(), header.len(), "{csv}");
        for name in ["event", "release", "role", "time_utc", "head"] {
            assert_eq!(row[col(name)], e[name].as_str().unwrap(), "{name}: {csv}");
        }
        assert_eq!(row[col("key_ids")], e["key_ids"][0].as_str().unwrap());
        assert_eq!(row[col("head_sequence")], e["head_sequence"].to_string());
    }

    // --since / --until: at the pause's instant, RFC 3339 and as dates.
    let pause_at = field(3, "time_utc");
    let pause_at = pause_at.as_str().unwrap();
    let later = export_json(&p, &["--since", pause_at]);
    assert_eq!(kinds(&later), expected[3..], "{later:#}");
    let earlier = export_json(&p, &["--since", "2020-01-01", "--until", pause_at]);
    assert_eq!(kinds(&earlier), expected[..3], "{earlier:#}");
    assert_eq!(earlier["until_utc"], pause_at);
    let today = &pause_at[..10];
    let day = export_json(&p, &["--since", today, "--until", today]);
    assert_eq!(kinds(&day), expected);
    let none = export_json(&p, &["--since", "2020-01-01", "--until", "2020-12-31"]);
    assert_eq!(none["events"], serde_json::json!([]));
    let e = refused(&export(&p, &["--since", "last tuesday"]));
    assert!(e.contains("--since") && e.contains("YYYY-MM-DD"), "{e}");

    // Signed with a key of its own; verified; any edit refused.
    let keys = p.dir.path().join("keys");
    assert_ok(
        &server(&[
            "key",
            "gen",
            "--out",
            keys.to_str().unwrap(),
            "--name",
            "audit",
        ]),
        "key gen audit",
    );
    let (audit_key, audit_pub) = (key_file(&p, "audit.key"), key_file(&p, "audit.pub"));
    let out = export(&p, &["--since", "2020-01-01", "--sign", &audit_key]);
    assert_ok(&out, "audit export --sign");
    let signed = out.stdout;
    let file = p.dir.path().join("audit.json");
    std::fs::write(&file, &signed).unwrap();
    let wrapper: Value = serde_json::from_slice(&signed).unwrap();
    assert_eq!(kinds(&wrapper["report"]), expected);
    assert_eq!(wrapper["key_id"], key_id(&audit_pub));
    let out = verify(&file, &audit_pub);
    assert_ok(&out, "audit verify");
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(
        summary.starts_with("verified: audit report ") && summary.contains("5 events"),
        "{summary}"
    );
    assert!(summary.contains("paused 1"), "{summary}");

    let edited = |at: usize, byte: u8| {
        let mut bytes = signed.clone();
        bytes[at] = byte;
        let f = p.dir.path().join(format!("edited-{at}.json"));
        std::fs::write(&f, bytes).unwrap();
        refused(&verify(&f, &audit_pub))
    };
    // One byte of the report: the rollout's 50% becomes 59%.
    let text = String::from_utf8(signed.clone()).unwrap();
    let at = text.find("\"percent\":50").unwrap() + "\"percent\":5".len();
    let e = edited(at, b'9');
    assert!(e.contains("changed after it was signed"), "{e}");
    // One byte of the signature.
    let at = text.rfind("\"}").unwrap() - 1;
    let e = edited(at, if signed[at] == b'0' { b'1' } else { b'0' });
    assert!(e.contains("does not match"), "{e}");
    // Another key.
    let e = refused(&verify(&file, &key_file(&p, "ferry.pub")));
    assert!(e.contains("not by the given key"), "{e}");
    // CSV is not signed.
    let e = refused(&export(
        &p,
        &[
            "--since",
            "2020-01-01",
            "--format",
            "csv",
            "--sign",
            &audit_key,
        ],
    ));
    assert!(e.contains("--format json"), "{e}");
}

/// A head log entry that is not a head the keys signed is reported as such, never
/// read as a change; the events around it stand.
#[test]
fn a_forged_log_entry_is_reported_not_believed() {
    let sources = Sources::app(2);
    let p = publisher_with_online_role(&sources, &[]);
    p.publish(&v(2), &sources.release(2));
    let log = p.repo().join("channels/stable/log");
    let mut names: Vec<String> = std::fs::read_dir(&log)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 2, "{names:?}");
    // Someone with write access "publishes" by copying a head under a new name.
    let copied = std::fs::read(log.join(&names[1])).unwrap();
    let mut forged = copied.clone();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    let hash = ferry_format::id::Digest::of(&forged).to_hex();
    std::fs::write(log.join(format!("{:020}-{hash}", 9)), &forged).unwrap();
    let report = export_json(&p, &["--since", "2020-01-01"]);
    assert_eq!(
        kinds(&report),
        [
            ("published".to_string(), v(1)),
            ("published".to_string(), v(2)),
            ("invalid-log-entry".to_string(), String::new()),
        ],
        "{report:#}"
    );
    let detail = report["events"][2]["detail"].as_str().unwrap();
    assert!(detail.contains("does not verify"), "{detail}");

    // Pruning keeps the newest entry and the current head's.
    std::thread::sleep(Duration::from_millis(2100));
    let out = server(&[
        "audit",
        "prune",
        "--repo",
        p.repo().to_str().unwrap(),
        "--audit-retention",
        "1s",
    ]);
    assert_ok(&out, "audit prune");
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("pruned 1 head log entries"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let mut left: Vec<String> = std::fs::read_dir(&log)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    // The first head went; the current head's entry and the newest (the forged
    // one) stay.
    assert_eq!(left, [names[1].clone(), format!("{:020}-{hash}", 9)]);
    let report = export_json(&p, &["--since", "2020-01-01"]);
    assert_eq!(
        kinds(&report)[0],
        ("baseline".to_string(), v(2)),
        "{report:#}"
    );
}

/// With the fleet database: every agent outcome and the halt of `--halt-when`, read
/// while `serve` writes, beside the online key's pause in the head log; pruning drops
/// them past the retention.
#[test]
fn audit_export_adds_agent_outcomes_and_halts_from_the_fleet_database() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("fleet.db");
    let db = db.to_str().unwrap();
    check_audit_of_fleet_db(db, db);
}

/// The audit of the fleet database `db` (a path or a postgres:// URL), which the
/// report names as `shown` (a URL without its password).
pub fn check_audit_of_fleet_db(db: &str, shown: &str) {
    use ferry_format::report::AgentState;

    use super::fleet::{FleetServer, report};

    let sources = Sources::app(2);
    let p = publisher_with_online_role(&sources, &[]);
    p.publish_with(&v(2), &sources.release(2), &["--rollout", "50"]);
    let online = key_file(&p, "online.key");
    let f = FleetServer::start_on(
        &p.repo(),
        db,
        &[
            "--timestamp-key",
            &online,
            "--halt-when",
            "failed>20%,min=5",
        ],
    );
    for n in 1..=4 {
        f.enroll(&report(n, 1, AgentState::Idle, "2.0.0", Some("2.0.0")));
    }
    f.enroll(&report(
        5,
        1,
        AgentState::RolledBack,
        "1.0.0",
        Some("2.0.0"),
    ));
    f.enroll(&report(6, 1, AgentState::Failed, "1.0.0", Some("2.0.0")));

    let report = export_json(&p, &["--since", "2020-01-01", "--fleet-db", db]);
    let counts = &report["counts"];
    assert_eq!(
        counts,
        &serde_json::json!({
            "published": 2, "paused": 1, "halted": 1,
            "agent-idle": 4, "agent-rolled-back": 1, "agent-failed": 1,
        }),
        "{report:#}"
    );
    assert_eq!(report["fleet_db"], shown);
    let events = report["events"].as_array().unwrap();
    let find = |kind: &str| events.iter().find(|e| e["event"] == kind).unwrap();
    let paused = find("paused");
    assert_eq!(
        (&paused["release"], &paused["role"], &paused["key_ids"][0]),
        (
            &Value::from(v(2)),
            &Value::from("online"),
            &Value::from(key_id(&key_file(&p, "online.pub")))
        )
    );
    let halted = find("halted");
    assert_eq!(halted["release"], v(2));
    let why = halted["detail"].as_str().unwrap();
    assert!(why.contains("2 of 6"), "{why}");
    let failed = find("agent-failed");
    assert_eq!(failed["hostname"], "host-6");
    assert_eq!(failed["release"], v(2));
    assert_eq!(failed["agent_id"], format!("{:032x}", 6));
    assert_eq!(failed["agent_report_id"], format!("{:032x}-1", 6));
    assert_eq!(failed["detail"], "agent 6: health check failed");
    let times: Vec<u64> = events.iter().map(|e| e["time"].as_u64().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    // The CSV has a row for each.
    let out = export(
        &p,
        &["--since", "2020-01-01", "--fleet-db", db, "--format", "csv"],
    );
    assert_ok(&out, "audit export --format csv --fleet-db");
    let csv = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        csv.split_terminator("\r\n").count(),
        1 + events.len(),
        "{csv}"
    );
    assert!(csv.contains(",agent-failed,stable,2.0.0,"), "{csv}");
    // A database that is not there is an error, not an empty report.
    let e = refused(&export(
        &p,
        &[
            "--since",
            "2020-01-01",
            "--fleet-db",
            "/nonexistent/fleet.db",
        ],
    ));
    assert!(e.contains("no fleet database"), "{e}");

    // Past the retention: the database's halts and reports go, and with them their
    // events; the head log keeps the current head.
    std::thread::sleep(Duration::from_millis(2100));
    let out = server(&[
        "audit",
        "prune",
        "--repo",
        p.repo().to_str().unwrap(),
        "--fleet-db",
        db,
        "--audit-retention",
        "1s",
    ]);
    assert_ok(&out, "audit prune --fleet-db");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("1 halts and 6 reports"), "{said}");
    let after = export_json(&p, &["--since", "2020-01-01", "--fleet-db", db]);
    assert_eq!(kinds(&after), [("baseline".to_string(), v(2))], "{after:#}");
}

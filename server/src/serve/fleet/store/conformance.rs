//! What both engines must do alike, as functions over a [`Store`]: the SQLite unit
//! tests (`sqlite::tests`) run them on a file, the end-to-end tests
//! (`tests/it/fleet_pg.rs`) on a real PostgreSQL. Compiled for tests and with the
//! `test-support` feature only.

use ferry_format::report::{AgentState, REPORT_SCHEMA, Report, ReportKind};

use super::{Halt, Store, Stored};
use crate::serve::fleet::FleetError;

pub fn report(agent: u8, seq: u64, time: u64, state: AgentState) -> Report {
    let agent_id = format!("{agent:032x}");
    Report {
        schema: REPORT_SCHEMA,
        report_id: format!("{agent_id}-{seq}"),
        agent_id,
        hostname: "h".into(),
        labels: Default::default(),
        channel: "stable".into(),
        kind: ReportKind::Attempt,
        state,
        time,
        active: Some("1.0.0".into()),
        previous: None,
        target: Some("2.0.0".into()),
        result: "x".into(),
        error: None,
        last_check: None,
        bytes_downloaded: 0,
        bytes_reused: 0,
        bytes_full: 0,
        requests: 0,
        duration_ms: 0,
        held_back: vec![],
        ferry_version: "0.1.0".into(),
    }
}

pub fn put(s: &mut Store, r: &Report, received_at: u64) -> bool {
    let json = String::from_utf8(r.to_json().unwrap()).unwrap();
    s.store(r, &json, received_at, None).unwrap() == Stored::New
}

/// A check that failed before choosing a release never counts against the release the
/// agent runs; agents still at an update have not tried it yet.
pub fn a_failed_check_does_not_count_against_the_release_the_agent_runs(s: &mut Store) {
    // Agent 1 runs 2.0.0; its next check fails before choosing (no target).
    let mut on_new = report(1, 1, 100, AgentState::Idle);
    on_new.active = Some("2.0.0".into());
    assert!(put(s, &on_new, 1000));
    let mut offline = report(1, 2, 200, AgentState::Failed);
    offline.active = Some("2.0.0".into());
    offline.target = None;
    assert!(put(s, &offline, 1100));
    // Agent 2 tried 2.0.0 and rolled back to 1.0.0: a failure of 2.0.0 only.
    assert!(put(s, &report(2, 1, 100, AgentState::RolledBack), 1000));
    assert_eq!(s.outcomes("stable", "2.0.0", 0).unwrap().0, 1);
    assert_eq!(s.outcomes("stable", "2.0.0", 0).unwrap().1, 2);
    let (failed, tried, _) = s.outcomes("stable", "1.0.0", 0).unwrap();
    assert_eq!((failed, tried), (0, 1));
    // Agent 3 is still health-checking 2.0.0: it has not tried it yet.
    let mut checking = report(3, 1, 100, AgentState::HealthChecking);
    checking.kind = ReportKind::Heartbeat;
    checking.active = Some("2.0.0".into());
    assert!(put(s, &checking, 1200));
    assert_eq!(s.outcomes("stable", "2.0.0", 0).unwrap().1, 2);
    let mut done = report(3, 2, 200, AgentState::Idle);
    done.active = Some("2.0.0".into());
    assert!(put(s, &done, 1300));
    assert_eq!(s.outcomes("stable", "2.0.0", 0).unwrap().1, 3);
}

/// Duplicates are stored once, late reports do not roll an agent back, repeating
/// heartbeats only refresh it, enrollment binds credentials, retention prunes, and a
/// reopened store (`reopen`) has kept it all.
pub fn duplicates_late_reports_credentials_and_retention(
    mut s: Box<Store>,
    reopen: &dyn Fn() -> Box<Store>,
) {
    let newest = report(1, 2, 200, AgentState::RolledBack);
    assert!(put(&mut *s, &newest, 1000));
    assert!(!put(&mut *s, &newest, 1001), "same report_id: stored once");
    // A queued report arriving late moves last_seen, not the described state.
    assert!(put(&mut *s, &report(1, 1, 100, AgentState::Idle), 1500));
    let agents = s.agents().unwrap();
    assert_eq!(agents.len(), 1);
    assert_eq!(agents[0].report.state, AgentState::RolledBack);
    assert_eq!(agents[0].last_seen, 1500);
    // Outcomes count the newest report per agent (arrival order): the late idle one.
    assert_eq!(s.outcomes("stable", "2.0.0", 0).unwrap().0, 0);
    assert_eq!(
        s.outcomes("stable", "1.0.0", 0).unwrap().1,
        1,
        "active counts as tried"
    );
    assert!(put(&mut *s, &report(1, 3, 300, AgentState::Failed), 1600));
    let (failed, tried, newest) = s.outcomes("stable", "2.0.0", 0).unwrap();
    assert_eq!((failed, tried), (1, 1));
    assert_eq!(s.outcomes("stable", "2.0.0", newest).unwrap(), (0, 0, 0));
    assert_eq!(
        s.latest_per_target("stable").unwrap()[0].state,
        AgentState::Failed
    );

    // A heartbeat repeating the newest state is not kept as a row, one saying
    // something new is.
    let count = s.report_count().unwrap();
    let mut beat = report(1, 4, 400, AgentState::Failed);
    beat.kind = ReportKind::Heartbeat;
    let json = String::from_utf8(beat.to_json().unwrap()).unwrap();
    assert_eq!(
        s.store(&beat, &json, 1650, None).unwrap(),
        Stored::Refreshed
    );
    assert_eq!(s.report_count().unwrap(), count);
    assert_eq!(s.agents().unwrap()[0].last_seen, 1650);
    assert_eq!(s.outcomes("stable", "2.0.0", newest).unwrap(), (0, 0, 0));
    beat.report_id.push('5');
    beat.state = AgentState::Idle;
    beat.result = "up-to-date".into();
    let json = String::from_utf8(beat.to_json().unwrap()).unwrap();
    assert_eq!(s.store(&beat, &json, 1660, None).unwrap(), Stored::New);
    assert_eq!(s.report_count().unwrap(), count + 1);

    // Enrollment binds a credential; a new one replaces it.
    let r = report(2, 1, 100, AgentState::Idle);
    let json = String::from_utf8(r.to_json().unwrap()).unwrap();
    s.store(&r, &json, 1000, Some(&[1; 32])).unwrap();
    assert_eq!(s.agent_of(&[1; 32]).unwrap(), Some(r.agent_id.clone()));
    s.store(&r, &json, 1000, Some(&[2; 32])).unwrap();
    assert_eq!(s.agent_of(&[1; 32]).unwrap(), None);
    assert_eq!(s.agent_of(&[2; 32]).unwrap(), Some(r.agent_id.clone()));

    // Retention: reports received before the cut go, and agents silent since then.
    assert_eq!(s.prune(1200).unwrap(), (2, 1));
    assert_eq!(s.agents().unwrap().len(), 1, "agent 1 reported at 1600");
    // Agent 1's newest report on 2.0.0 is the idle heartbeat: tried, not failed.
    let (failed, tried, _) = s.outcomes("stable", "2.0.0", 0).unwrap();
    assert_eq!((failed, tried), (0, 1));
    drop(s);
    // Reopened: the schema is kept, nothing is lost.
    let mut s = reopen();
    assert_eq!(s.agents().unwrap().len(), 1);
    assert_eq!(s.attempts("stable").unwrap().len(), 2);
}

/// The halt lock's transaction commits what the rule recorded, and rolls it back when
/// the rule fails midway.
pub fn halts_commit_inside_the_lock_and_roll_back_on_error(s: &mut Store) {
    let halt = |reason: &str| Halt {
        channel: "stable".into(),
        release: "2.0.0".into(),
        content_sequence: 3,
        halted_at: 1000,
        last_report: 7,
        failed: 2,
        tried: 5,
        reason: reason.into(),
    };
    let failed = s.halt_locked("stable", &mut |l| {
        l.record_halt(&halt("lost"))?;
        Err(FleetError::Config("the head could not be signed".into()))
    });
    assert!(failed.is_err());
    assert!(
        s.last_halt("stable", "2.0.0").unwrap().is_none(),
        "rolled back"
    );
    let halted = s
        .halt_locked("stable", &mut |l| {
            assert!(l.last_halt("stable", "2.0.0")?.is_none());
            l.record_halt(&halt("kept"))?;
            Ok(true)
        })
        .unwrap();
    assert!(halted);
    let h = s.last_halt("stable", "2.0.0").unwrap().unwrap();
    assert_eq!(
        (h.reason.as_str(), h.content_sequence, h.last_report),
        ("kept", 3, 7)
    );
    assert_eq!(s.halts_between(0, 2000).unwrap().len(), 1);
    assert_eq!(s.halts_between(1001, 2000).unwrap().len(), 0);
    assert_eq!(s.prune_halts(1001).unwrap(), 1);
    assert!(s.last_halt("stable", "2.0.0").unwrap().is_none());
    s.ping().unwrap();
}

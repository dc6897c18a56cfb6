//! The fleet database: one SQLite file (`serve --fleet-db`), written through one
//! connection, always from blocking threads ([`super::Fleet::with_store`]).
//!
//! Durability: WAL journal with `synchronous=FULL`, so a committed transaction has been
//! fsync'd before `commit` returns; the API answers 2xx only after that. A crash (kill
//! -9, power loss) keeps every acknowledged report and loses at most the one being
//! written, which its agent then sends again from its queue.
//!
//! Schema (version 1, `PRAGMA user_version`):
//! - `reports`: every stored report, its JSON as received plus the columns the fleet
//!   views filter on; `report_id` is unique, so a report delivered twice is stored once.
//! - `agents`: each agent's newest report (by the agent's `time`), kept apart from
//!   `reports` so pruning old reports never forgets an agent that still reports.
//! - `latest`: per agent, channel and release, the row of the agent's newest report
//!   naming the release as `target` (`via` = 'target') or as `target` or `active`
//!   ('either'), with its state: the fleet counts and the halt rule read this, so their
//!   cost grows with the number of agents, not of reports.
//! - `credentials`: the digest of each agent's credential, one per agent id.
//! - `halts`: the rollouts `--halt-when` paused (see [`super::halt`]).

use std::path::Path;

use ferry_format::report::{AgentState, Report, ReportKind};
use rusqlite::{Connection, OptionalExtension, params};

use super::FleetError;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS reports (
    id INTEGER PRIMARY KEY,
    report_id TEXT NOT NULL UNIQUE,
    agent_id TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    time INTEGER NOT NULL,
    channel TEXT NOT NULL,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    active TEXT,
    target TEXT,
    result TEXT NOT NULL,
    json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS reports_by_channel ON reports(channel, agent_id, id);
CREATE INDEX IF NOT EXISTS reports_by_received ON reports(received_at);
CREATE TABLE IF NOT EXISTS latest (
    agent_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    release TEXT NOT NULL,
    via TEXT NOT NULL,
    report_row INTEGER NOT NULL,
    state TEXT NOT NULL,
    PRIMARY KEY (channel, release, via, agent_id)
);
CREATE TABLE IF NOT EXISTS agents (
    agent_id TEXT PRIMARY KEY,
    time INTEGER NOT NULL,
    last_seen INTEGER NOT NULL,
    json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS credentials (
    agent_id TEXT PRIMARY KEY,
    digest BLOB NOT NULL UNIQUE,
    enrolled_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS halts (
    id INTEGER PRIMARY KEY,
    channel TEXT NOT NULL,
    release TEXT NOT NULL,
    content_sequence INTEGER NOT NULL,
    halted_at INTEGER NOT NULL,
    last_report INTEGER NOT NULL,
    failed INTEGER NOT NULL,
    tried INTEGER NOT NULL,
    reason TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS halts_by_release ON halts(channel, release, id);
PRAGMA user_version = 1;
";

fn db(context: impl Into<String>) -> impl FnOnce(rusqlite::Error) -> FleetError {
    let context = context.into();
    move |source| FleetError::Db { context, source }
}

/// One agent as the newest of its reports describes it.
pub struct AgentRow {
    pub report: Report,
    /// Unix seconds (server clock) of the agent's last report of any kind.
    pub last_seen: u64,
}

/// A halt recorded by `--halt-when`.
#[derive(Clone, Debug)]
pub struct Halt {
    pub channel: String,
    pub release: String,
    /// The publisher content sequence of the head the halt paused: a head with newer
    /// content (`rollout --resume --key`, a new publish) has lifted it.
    pub content_sequence: u64,
    pub halted_at: u64,
    /// The newest report row counted for it: after the halt is lifted, only later
    /// reports count towards another one.
    pub last_report: i64,
    pub failed: u64,
    pub tried: u64,
    pub reason: String,
}

/// What [`Store::store`] did with a report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stored {
    /// Kept as a new row.
    New,
    /// Its `report_id` was stored before: nothing changed.
    Duplicate,
    /// A heartbeat repeating the agent's newest report: only `last_seen` moved.
    Refreshed,
}

/// The open database.
pub struct Store {
    conn: Connection,
}

impl Store {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Store, FleetError> {
        let at = format!("fleet database {}", path.display());
        let conn = Connection::open(path).map_err(db(format!("cannot open the {at}")))?;
        // WAL lets `audit export` read while `serve` writes; FULL makes each commit
        // fsync the log, so an acknowledged report survives a crash.
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(db(format!("cannot set up the {at}")))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(FleetError::Config(format!(
                "the {at} cannot use a write-ahead log (journal mode {mode})"
            )));
        }
        conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA busy_timeout = 5000;")
            .map_err(db(format!("cannot set up the {at}")))?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(db(format!("cannot read the {at}")))?;
        if version > 1 {
            return Err(FleetError::Config(format!(
                "the {at} has schema version {version}; this ferry-server knows up to 1"
            )));
        }
        conn.execute_batch(SCHEMA)
            .map_err(db(format!("cannot create the tables of the {at}")))?;
        Ok(Store { conn })
    }

    /// Stores a report from an agent.
    /// `credential`: a new credential digest to bind to the report's agent id
    /// (enrollment), replacing any earlier one, in the same transaction.
    pub fn store(
        &mut self,
        report: &Report,
        json: &str,
        received_at: u64,
        credential: Option<&[u8; 32]>,
    ) -> Result<Stored, FleetError> {
        let tx = self
            .conn
            .transaction()
            .map_err(db("cannot begin a transaction"))?;
        if let Some(digest) = credential {
            tx.execute(
                "DELETE FROM credentials WHERE agent_id = ?1",
                params![report.agent_id],
            )
            .map_err(db("cannot replace a credential"))?;
            tx.execute(
                "INSERT INTO credentials (agent_id, digest, enrolled_at) VALUES (?1, ?2, ?3)",
                params![report.agent_id, &digest[..], received_at as i64],
            )
            .map_err(db("cannot store a credential"))?;
        }
        let kind = match report.kind {
            ReportKind::Attempt => "attempt",
            ReportKind::Heartbeat => "heartbeat",
        };
        // A heartbeat that repeats what the agent's newest report says only refreshes
        // last_seen: keeping it as a row would grow the table by every agent every
        // interval, and would make an old failure look new to the halt rule's window.
        let previous: Option<String> = tx
            .query_row(
                "SELECT json FROM agents WHERE agent_id = ?1",
                params![report.agent_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(db("cannot read an agent"))?;
        let repeats = report.kind == ReportKind::Heartbeat
            && previous
                .as_deref()
                .and_then(|j| Report::from_json(j.as_bytes()).ok())
                .is_some_and(|p| same_state(&p, report));
        let inserted = !repeats
            && tx
            .execute(
                "INSERT INTO reports (report_id, agent_id, received_at, time, channel, kind, state, active, target, result, json)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
                 ON CONFLICT(report_id) DO NOTHING",
                params![
                    report.report_id,
                    report.agent_id,
                    received_at as i64,
                    report.time as i64,
                    report.channel,
                    kind,
                    report.state.name(),
                    report.active,
                    report.target,
                    report.result,
                    json,
                ],
            )
            .map_err(db("cannot store a report"))?
            == 1;
        if inserted {
            let row = tx.last_insert_rowid();
            // A report's state is about its target. The active release, when it is not
            // the target, is one the agent runs: it counts as tried, never as failed —
            // a check that failed before choosing (the repository unreachable) or a
            // switch back to it says nothing against it.
            let mark = |release: &str, via: &str, state: AgentState| {
                tx.execute(
                    "INSERT INTO latest (agent_id, channel, release, via, report_row, state)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT(channel, release, via, agent_id) DO UPDATE SET
                        report_row = excluded.report_row, state = excluded.state
                     WHERE excluded.report_row > latest.report_row",
                    params![
                        report.agent_id,
                        report.channel,
                        release,
                        via,
                        row,
                        state.name()
                    ],
                )
                .map(|_| ())
                .map_err(db("cannot index a report"))
            };
            if let Some(target) = &report.target {
                mark(target, "target", report.state)?;
                mark(target, "either", report.state)?;
            }
            if let Some(active) = report
                .active
                .as_ref()
                .filter(|a| Some(*a) != report.target.as_ref())
            {
                mark(active, "either", AgentState::Idle)?;
            }
        }
        // last_seen moves with every report; the described state only with a report
        // at least as new as the one kept (queued reports arrive late, in order).
        tx.execute(
            "INSERT INTO agents (agent_id, time, last_seen, json) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(agent_id) DO UPDATE SET
                last_seen = max(agents.last_seen, excluded.last_seen),
                json = CASE WHEN excluded.time >= agents.time THEN excluded.json ELSE agents.json END,
                time = max(agents.time, excluded.time)",
            params![report.agent_id, report.time as i64, received_at as i64, json],
        )
        .map_err(db("cannot update an agent"))?;
        tx.commit().map_err(db("cannot commit a report"))?;
        Ok(if inserted {
            Stored::New
        } else if repeats {
            Stored::Refreshed
        } else {
            Stored::Duplicate
        })
    }

    /// How many reports are kept (all kinds).
    pub fn report_count(&self) -> Result<u64, FleetError> {
        self.conn
            .query_row("SELECT count(*) FROM reports", [], |r| r.get::<_, i64>(0))
            .map(|n| n.max(0) as u64)
            .map_err(db("cannot count reports"))
    }

    /// The agent id a credential digest is bound to.
    pub fn agent_of(&self, digest: &[u8; 32]) -> Result<Option<String>, FleetError> {
        self.conn
            .query_row(
                "SELECT agent_id FROM credentials WHERE digest = ?1",
                params![&digest[..]],
                |r| r.get(0),
            )
            .optional()
            .map_err(db("cannot look up a credential"))
    }

    /// Deletes reports received before `before` and agents silent since then.
    pub fn prune(&mut self, before: u64) -> Result<(usize, usize), FleetError> {
        let tx = self
            .conn
            .transaction()
            .map_err(db("cannot begin a transaction"))?;
        let reports = tx
            .execute(
                "DELETE FROM reports WHERE received_at < ?1",
                params![before as i64],
            )
            .map_err(db("cannot prune reports"))?;
        let agents = tx
            .execute(
                "DELETE FROM agents WHERE last_seen < ?1",
                params![before as i64],
            )
            .map_err(db("cannot prune agents"))?;
        tx.execute(
            "DELETE FROM latest WHERE NOT EXISTS (SELECT 1 FROM reports WHERE id = latest.report_row)",
            [],
        )
        .map_err(db("cannot prune the report index"))?;
        tx.commit().map_err(db("cannot commit pruning"))?;
        Ok((reports, agents))
    }

    /// Every agent, by id.
    pub fn agents(&self) -> Result<Vec<AgentRow>, FleetError> {
        let mut stmt = self
            .conn
            .prepare("SELECT json, last_seen FROM agents ORDER BY agent_id")
            .map_err(db("cannot read agents"))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
            .map_err(db("cannot read agents"))?;
        let mut out = Vec::new();
        for row in rows {
            let (json, last_seen) = row.map_err(db("cannot read agents"))?;
            out.push(AgentRow {
                report: parse(&json)?,
                last_seen: last_seen.max(0) as u64,
            });
        }
        Ok(out)
    }

    /// Per agent and target release of `channel`, the agent's newest report aiming at
    /// it (the reports' order of arrival, which each agent's queue keeps).
    pub fn latest_per_target(&self, channel: &str) -> Result<Vec<Report>, FleetError> {
        self.reports(
            "SELECT r.json FROM latest l JOIN reports r ON r.id = l.report_row
             WHERE l.channel = ?1 AND l.via = 'target' ORDER BY r.id",
            params![channel],
        )
    }

    /// Every attempt report of `channel` (outcomes, durations, bytes).
    pub fn attempts(&self, channel: &str) -> Result<Vec<Report>, FleetError> {
        self.reports(
            "SELECT json FROM reports WHERE channel = ?1 AND kind = 'attempt' ORDER BY id",
            params![channel],
        )
    }

    fn reports(&self, sql: &str, args: impl rusqlite::Params) -> Result<Vec<Report>, FleetError> {
        let mut stmt = self.conn.prepare(sql).map_err(db("cannot read reports"))?;
        let rows = stmt
            .query_map(args, |r| r.get::<_, String>(0))
            .map_err(db("cannot read reports"))?;
        let mut out = Vec::new();
        for json in rows {
            out.push(parse(&json.map_err(db("cannot read reports"))?)?);
        }
        Ok(out)
    }

    /// For the halt rule: of the agents whose newest report concerning `release` of
    /// `channel` (as target or active) came after row `after`, how many tried it
    /// (those still downloading, staged, switching or health-checking have not yet)
    /// and how many of those reports say failed or rolled back (the same as counting
    /// only the reports after `after`). Returns (failed, tried, newest row counted).
    pub fn outcomes(
        &self,
        channel: &str,
        release: &str,
        after: i64,
    ) -> Result<(u64, u64, i64), FleetError> {
        self.conn
            .query_row(
                "SELECT coalesce(sum(state IN ('failed', 'rolled-back')), 0),
                        coalesce(sum(state NOT IN ('downloading', 'staged', 'switching', 'health-checking')), 0),
                        coalesce(max(report_row), 0)
                 FROM latest WHERE channel = ?1 AND release = ?2 AND via = 'either' AND report_row > ?3",
                params![channel, release, after],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?.max(0) as u64,
                        r.get::<_, i64>(1)?.max(0) as u64,
                        r.get::<_, i64>(2)?,
                    ))
                },
            )
            .map_err(db("cannot count outcomes"))
    }

    /// The newest halt recorded for `release` of `channel`.
    pub fn last_halt(&self, channel: &str, release: &str) -> Result<Option<Halt>, FleetError> {
        self.conn
            .query_row(
                "SELECT content_sequence, halted_at, last_report, failed, tried, reason FROM halts
                 WHERE channel = ?1 AND release = ?2 ORDER BY id DESC LIMIT 1",
                params![channel, release],
                |r| {
                    Ok(Halt {
                        channel: channel.to_string(),
                        release: release.to_string(),
                        content_sequence: r.get::<_, i64>(0)? as u64,
                        halted_at: r.get::<_, i64>(1)? as u64,
                        last_report: r.get(2)?,
                        failed: r.get::<_, i64>(3)? as u64,
                        tried: r.get::<_, i64>(4)? as u64,
                        reason: r.get(5)?,
                    })
                },
            )
            .optional()
            .map_err(db("cannot read halts"))
    }

    /// Records a halt (durably, before it is reported anywhere).
    pub fn record_halt(&mut self, h: &Halt) -> Result<(), FleetError> {
        self.conn
            .execute(
                "INSERT INTO halts (channel, release, content_sequence, halted_at, last_report, failed, tried, reason)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    h.channel,
                    h.release,
                    h.content_sequence as i64,
                    h.halted_at as i64,
                    h.last_report,
                    h.failed as i64,
                    h.tried as i64,
                    h.reason
                ],
            )
            .map_err(db("cannot record a halt"))?;
        Ok(())
    }

    // Read by `ferry-server audit export` (server/src/audit/fleet.rs).

    /// Attempt reports received (server clock) in `since..until`, oldest first, each
    /// with its receipt time.
    pub fn attempts_received(
        &self,
        since: u64,
        until: u64,
    ) -> Result<Vec<(u64, Report)>, FleetError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT received_at, json FROM reports
                 WHERE kind = 'attempt' AND received_at >= ?1 AND received_at < ?2 ORDER BY id",
            )
            .map_err(db("cannot read reports"))?;
        let rows = stmt
            .query_map(params![since as i64, until as i64], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
            })
            .map_err(db("cannot read reports"))?;
        let mut out = Vec::new();
        for row in rows {
            let (at, json) = row.map_err(db("cannot read reports"))?;
            out.push((at.max(0) as u64, parse(&json)?));
        }
        Ok(out)
    }

    /// Halts recorded in `since..until`, oldest first.
    pub fn halts_between(&self, since: u64, until: u64) -> Result<Vec<Halt>, FleetError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT channel, release, content_sequence, halted_at, last_report, failed, tried, reason
                 FROM halts WHERE halted_at >= ?1 AND halted_at < ?2 ORDER BY id",
            )
            .map_err(db("cannot read halts"))?;
        let rows = stmt
            .query_map(params![since as i64, until as i64], |r| {
                Ok(Halt {
                    channel: r.get(0)?,
                    release: r.get(1)?,
                    content_sequence: r.get::<_, i64>(2)? as u64,
                    halted_at: r.get::<_, i64>(3)? as u64,
                    last_report: r.get(4)?,
                    failed: r.get::<_, i64>(5)? as u64,
                    tried: r.get::<_, i64>(6)? as u64,
                    reason: r.get(7)?,
                })
            })
            .map_err(db("cannot read halts"))?;
        rows.collect::<Result<_, _>>()
            .map_err(db("cannot read halts"))
    }

    /// Deletes halts recorded before `before` (`audit prune`).
    pub fn prune_halts(&mut self, before: u64) -> Result<usize, FleetError> {
        self.conn
            .execute(
                "DELETE FROM halts WHERE halted_at < ?1",
                params![before as i64],
            )
            .map_err(db("cannot prune halts"))
    }
}

/// Whether `b` says nothing `a` did not: same channel, state, releases and outcome.
fn same_state(a: &Report, b: &Report) -> bool {
    a.channel == b.channel
        && a.state == b.state
        && a.active == b.active
        && a.previous == b.previous
        && a.target == b.target
        && a.result == b.result
        && a.error == b.error
}

/// A stored report's JSON: validated when it was received, so an error here means
/// the file was changed behind the server's back.
fn parse(json: &str) -> Result<Report, FleetError> {
    Report::from_json(json.as_bytes()).map_err(|e| {
        FleetError::Config(format!(
            "the fleet database holds an unreadable report: {e}"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_format::report::REPORT_SCHEMA;

    fn report(agent: u8, seq: u64, time: u64, state: AgentState) -> Report {
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

    fn put(s: &mut Store, r: &Report, received_at: u64) -> bool {
        let json = String::from_utf8(r.to_json().unwrap()).unwrap();
        s.store(r, &json, received_at, None).unwrap() == Stored::New
    }

    #[test]
    fn a_failed_check_does_not_count_against_the_release_the_agent_runs() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("fleet.db")).unwrap();
        // Agent 1 runs 2.0.0; its next check fails before choosing (no target).
        let mut on_new = report(1, 1, 100, AgentState::Idle);
        on_new.active = Some("2.0.0".into());
        assert!(put(&mut s, &on_new, 1000));
        let mut offline = report(1, 2, 200, AgentState::Failed);
        offline.active = Some("2.0.0".into());
        offline.target = None;
        assert!(put(&mut s, &offline, 1100));
        // Agent 2 tried 2.0.0 and rolled back to 1.0.0: a failure of 2.0.0 only.
        assert!(put(
            &mut s,
            &report(2, 1, 100, AgentState::RolledBack),
            1000
        ));
        assert_eq!(s.outcomes("stable", "2.0.0", 0).unwrap().0, 1);
        assert_eq!(s.outcomes("stable", "2.0.0", 0).unwrap().1, 2);
        let (failed, tried, _) = s.outcomes("stable", "1.0.0", 0).unwrap();
        assert_eq!((failed, tried), (0, 1));
        // Agent 3 is still health-checking 2.0.0: it has not tried it yet.
        let mut checking = report(3, 1, 100, AgentState::HealthChecking);
        checking.kind = ReportKind::Heartbeat;
        checking.active = Some("2.0.0".into());
        assert!(put(&mut s, &checking, 1200));
        assert_eq!(s.outcomes("stable", "2.0.0", 0).unwrap().1, 2);
        let mut done = report(3, 2, 200, AgentState::Idle);
        done.active = Some("2.0.0".into());
        assert!(put(&mut s, &done, 1300));
        assert_eq!(s.outcomes("stable", "2.0.0", 0).unwrap().1, 3);
    }

    #[test]
    fn duplicates_late_reports_credentials_and_retention() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fleet.db");
        let mut s = Store::open(&path).unwrap();
        let newest = report(1, 2, 200, AgentState::RolledBack);
        assert!(put(&mut s, &newest, 1000));
        assert!(!put(&mut s, &newest, 1001), "same report_id: stored once");
        // A queued report arriving late moves last_seen, not the described state.
        assert!(put(&mut s, &report(1, 1, 100, AgentState::Idle), 1500));
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
        assert!(put(&mut s, &report(1, 3, 300, AgentState::Failed), 1600));
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
        let s = Store::open(&path).unwrap();
        assert_eq!(s.agents().unwrap().len(), 1);
        assert_eq!(s.attempts("stable").unwrap().len(), 2);
    }
}

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
//! - `credentials`: the digest of each agent's credential, one per agent id.
//! - `halts`: the rollouts `--halt-when` paused (see [`super::halt`]).

use std::path::Path;

use ferry_format::report::{Report, ReportKind};
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

    /// Stores a report from an agent; false when its `report_id` was stored before.
    /// `credential`: a new credential digest to bind to the report's agent id
    /// (enrollment), replacing any earlier one, in the same transaction.
    pub fn store(
        &mut self,
        report: &Report,
        json: &str,
        received_at: u64,
        credential: Option<&[u8; 32]>,
    ) -> Result<bool, FleetError> {
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
        let inserted = tx
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
        Ok(inserted)
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
            "SELECT r.json FROM reports r JOIN (
                SELECT max(id) AS id FROM reports
                WHERE channel = ?1 AND target IS NOT NULL GROUP BY agent_id, target
             ) l ON r.id = l.id ORDER BY r.id",
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

    /// For the halt rule: of the agents whose reports after row `after` concern
    /// `release` of `channel` (as target or active), how many tried it, and how many
    /// of those have a newest such report saying failed or rolled back. Returns
    /// (failed, tried, newest row counted).
    pub fn outcomes(
        &self,
        channel: &str,
        release: &str,
        after: i64,
    ) -> Result<(u64, u64, i64), FleetError> {
        self.conn
            .query_row(
                "SELECT coalesce(sum(r.state IN ('failed', 'rolled-back')), 0), count(*), coalesce(max(r.id), 0)
                 FROM reports r JOIN (
                    SELECT max(id) AS id FROM reports
                    WHERE channel = ?1 AND id > ?3 AND (target = ?2 OR active = ?2)
                    GROUP BY agent_id
                 ) l ON r.id = l.id",
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

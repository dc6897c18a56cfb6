//! The fleet database as one SQLite file (`serve --fleet-db PATH`, the default): one
//! connection, always used from blocking threads ([`crate::serve::fleet::Fleet::with_store`]).
//!
//! Durability: WAL journal with `synchronous=FULL`, so a committed transaction has been
//! fsync'd before `commit` returns; the API answers 2xx only after that. A crash (kill
//! -9, power loss) keeps every acknowledged report and loses at most the one being
//! written, which its agent then sends again from its queue.
//!
//! Schema version in `PRAGMA user_version`; the tables are those of [`super`].

use std::path::Path;

use ferry_format::report::{AgentState, Report};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::{
    AgentRow, FleetError, FleetStore, Halt, HaltLedger, Open, SCHEMA_VERSION, Stored, kind_name,
    newer_schema, parse, repeats,
};

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

/// The open SQLite database.
pub struct SqliteStore {
    conn: Connection,
}

impl SqliteStore {
    /// Opens the database at `path`, creating file and tables with [`Open::Create`].
    pub fn open(path: &Path, mode: Open) -> Result<SqliteStore, FleetError> {
        let at = format!("fleet database {}", path.display());
        if mode == Open::Existing && !path.is_file() {
            return Err(FleetError::Config(format!(
                "no {at}: no such file (serve --fleet-db makes it)"
            )));
        }
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
        if version > SCHEMA_VERSION {
            return Err(newer_schema(&path.display().to_string(), version));
        }
        conn.execute_batch(SCHEMA)
            .map_err(db(format!("cannot create the tables of the {at}")))?;
        Ok(SqliteStore { conn })
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
}

impl FleetStore for SqliteStore {
    fn store(
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
        let previous: Option<String> = tx
            .query_row(
                "SELECT json FROM agents WHERE agent_id = ?1",
                params![report.agent_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(db("cannot read an agent"))?;
        let repeats = repeats(report, previous.as_deref());
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
                    kind_name(report),
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

    fn report_count(&mut self) -> Result<u64, FleetError> {
        self.conn
            .query_row("SELECT count(*) FROM reports", [], |r| r.get::<_, i64>(0))
            .map(|n| n.max(0) as u64)
            .map_err(db("cannot count reports"))
    }

    fn agent_of(&mut self, digest: &[u8; 32]) -> Result<Option<String>, FleetError> {
        self.conn
            .query_row(
                "SELECT agent_id FROM credentials WHERE digest = ?1",
                params![&digest[..]],
                |r| r.get(0),
            )
            .optional()
            .map_err(db("cannot look up a credential"))
    }

    fn prune(&mut self, before: u64) -> Result<(usize, usize), FleetError> {
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

    fn agents(&mut self) -> Result<Vec<AgentRow>, FleetError> {
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

    fn latest_per_target(&mut self, channel: &str) -> Result<Vec<Report>, FleetError> {
        self.reports(
            "SELECT r.json FROM latest l JOIN reports r ON r.id = l.report_row
             WHERE l.channel = ?1 AND l.via = 'target' ORDER BY r.id",
            params![channel],
        )
    }

    fn attempts(&mut self, channel: &str) -> Result<Vec<Report>, FleetError> {
        self.reports(
            "SELECT json FROM reports WHERE channel = ?1 AND kind = 'attempt' ORDER BY id",
            params![channel],
        )
    }

    fn halt_locked(
        &mut self,
        _channel: &str,
        decide: &mut dyn FnMut(&mut dyn HaltLedger) -> Result<bool, FleetError>,
    ) -> Result<bool, FleetError> {
        // One connection behind the Fleet's mutex already serialises this process;
        // IMMEDIATE takes SQLite's write lock up front, which also serialises another
        // process on the same file (busy_timeout waits for it).
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(db("cannot begin a transaction"))?;
        let halted = decide(&mut Ledger(&tx))?;
        tx.commit().map_err(db("cannot commit a halt"))?;
        Ok(halted)
    }

    fn attempts_received(
        &mut self,
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

    fn halts_between(&mut self, since: u64, until: u64) -> Result<Vec<Halt>, FleetError> {
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

    fn prune_halts(&mut self, before: u64) -> Result<usize, FleetError> {
        self.conn
            .execute(
                "DELETE FROM halts WHERE halted_at < ?1",
                params![before as i64],
            )
            .map_err(db("cannot prune halts"))
    }

    fn ping(&mut self) -> Result<(), FleetError> {
        self.conn
            .query_row("SELECT count(*) FROM halts", [], |r| r.get::<_, i64>(0))
            .map(|_| ())
            .map_err(db("cannot read the fleet database"))
    }
}

impl HaltLedger for SqliteStore {
    fn outcomes(
        &mut self,
        channel: &str,
        release: &str,
        after: i64,
    ) -> Result<(u64, u64, i64), FleetError> {
        outcomes(&self.conn, channel, release, after)
    }

    fn last_halt(&mut self, channel: &str, release: &str) -> Result<Option<Halt>, FleetError> {
        last_halt(&self.conn, channel, release)
    }

    fn record_halt(&mut self, h: &Halt) -> Result<(), FleetError> {
        record_halt(&self.conn, h)
    }
}

/// The halt rule's queries inside [`FleetStore::halt_locked`]'s transaction.
struct Ledger<'a>(&'a rusqlite::Transaction<'a>);

impl HaltLedger for Ledger<'_> {
    fn outcomes(
        &mut self,
        channel: &str,
        release: &str,
        after: i64,
    ) -> Result<(u64, u64, i64), FleetError> {
        outcomes(self.0, channel, release, after)
    }

    fn last_halt(&mut self, channel: &str, release: &str) -> Result<Option<Halt>, FleetError> {
        last_halt(self.0, channel, release)
    }

    fn record_halt(&mut self, h: &Halt) -> Result<(), FleetError> {
        record_halt(self.0, h)
    }
}

fn outcomes(
    conn: &Connection,
    channel: &str,
    release: &str,
    after: i64,
) -> Result<(u64, u64, i64), FleetError> {
    conn.query_row(
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

fn last_halt(conn: &Connection, channel: &str, release: &str) -> Result<Option<Halt>, FleetError> {
    conn.query_row(
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

fn record_halt(conn: &Connection, h: &Halt) -> Result<(), FleetError> {
    conn.execute(
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

#[cfg(test)]
mod tests {
    use super::super::{Store, conformance};
    use super::*;

    fn at(dir: &tempfile::TempDir) -> Box<Store> {
        Box::new(SqliteStore::open(&dir.path().join("fleet.db"), Open::Create).unwrap())
    }

    #[test]
    fn a_failed_check_does_not_count_against_the_release_the_agent_runs() {
        let dir = tempfile::tempdir().unwrap();
        conformance::a_failed_check_does_not_count_against_the_release_the_agent_runs(&mut *at(
            &dir,
        ));
    }

    #[test]
    fn duplicates_late_reports_credentials_and_retention() {
        let dir = tempfile::tempdir().unwrap();
        conformance::duplicates_late_reports_credentials_and_retention(at(&dir), &|| at(&dir));
    }

    #[test]
    fn halts_commit_inside_the_lock_and_roll_back_on_error() {
        let dir = tempfile::tempdir().unwrap();
        conformance::halts_commit_inside_the_lock_and_roll_back_on_error(&mut *at(&dir));
    }

    #[test]
    fn only_a_database_serve_made_is_opened_for_the_audit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fleet.db");
        let err = SqliteStore::open(&path, Open::Existing).err().unwrap();
        assert!(
            err.to_string().contains("serve --fleet-db makes it"),
            "{err}"
        );
        assert!(!path.exists());
        drop(at(&dir));
        SqliteStore::open(&path, Open::Existing).unwrap();
    }
}

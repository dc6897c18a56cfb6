//! The fleet database in PostgreSQL (`serve --fleet-db postgres://user:pass@host:port/db`),
//! which any number of `serve` instances share (docs/FLEET.md).
//!
//! Client: the synchronous `postgres` crate (a wrapper over `tokio-postgres` that
//! drives one connection on its own small runtime). Every store call already runs on a
//! blocking thread behind the Fleet's mutex, as SQLite's do, and the halt rule re-signs
//! the head (blocking file I/O under a file lock) inside the transaction that records
//! the halt: with the synchronous client both engines share one blocking interface and
//! one call path, with no second async code path to keep equal to SQLite's.
//!
//! Durability: a commit returns once PostgreSQL has flushed it to its WAL
//! (`synchronous_commit` on, which a session that finds it `off` turns back on), so a
//! report answered 2xx survives kill -9 of `serve` and of PostgreSQL alike.
//!
//! Connection: one per `serve`, opened at start (an unreachable database stops `serve`
//! from starting, naming it). When it breaks (the database restarted), the call that
//! finds it broken reconnects once and runs again; if the database is still down the
//! call fails as [`FleetError::Unavailable`] (503 to agents, whose queue keeps the
//! report; 503 from `/healthz`), and the next call tries again.
//!
//! Serialised across servers, with transaction-scoped advisory locks: creating the
//! schema (two servers starting at once) and each evaluation of the halt rule of a
//! channel ([`FleetStore::halt_locked`]).

use std::time::Duration;

use ferry_format::report::{AgentState, Report};
use postgres::config::Host;
use postgres::{Client, GenericClient, NoTls, Row};

// `postgres::Error` shows only its kind ("db error"); its source has the server's
// message: errors are shown with their chain.
use super::super::chain;
use super::{
    AgentRow, FleetError, FleetStore, Halt, HaltLedger, Open, SCHEMA_VERSION, Stored, kind_name,
    newer_schema, parse, repeats,
};

/// The tables of [`super`], in PostgreSQL's types. Row ids come from identity
/// columns, so `report_row` orders reports by when they were stored, as in SQLite
/// (between two servers, by when their transactions took an id).
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS reports (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    report_id TEXT NOT NULL UNIQUE,
    agent_id TEXT NOT NULL,
    received_at BIGINT NOT NULL,
    time BIGINT NOT NULL,
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
    report_row BIGINT NOT NULL,
    state TEXT NOT NULL,
    PRIMARY KEY (channel, release, via, agent_id)
);
CREATE TABLE IF NOT EXISTS agents (
    agent_id TEXT PRIMARY KEY,
    time BIGINT NOT NULL,
    last_seen BIGINT NOT NULL,
    json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS credentials (
    agent_id TEXT PRIMARY KEY,
    digest BYTEA NOT NULL UNIQUE,
    enrolled_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS halts (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    channel TEXT NOT NULL,
    release TEXT NOT NULL,
    content_sequence BIGINT NOT NULL,
    halted_at BIGINT NOT NULL,
    last_report BIGINT NOT NULL,
    failed BIGINT NOT NULL,
    tried BIGINT NOT NULL,
    reason TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS halts_by_release ON halts(channel, release, id);
";

/// The table holding the schema version (one row), as `PRAGMA user_version` does in
/// SQLite.
const VERSION_TABLE: &str = "ferry_fleet_schema";
const VERSION_SQL: &str = "SELECT max(version) FROM ferry_fleet_schema";

/// Advisory lock keys are (class, key) pairs of int4; these classes are ferry's
/// ("fery" and one above), so other users of the database keep theirs.
const SCHEMA_LOCK: (i32, i32) = (0x6665_7279, 0);
const HALT_LOCK_CLASS: i32 = 0x6665_727A;

/// Waits at most this long for a connection when the URL does not say
/// (`connect_timeout=`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Unacknowledged writes to a database that vanished fail after this long
/// (`tcp_user_timeout=` overrides).
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(30);

/// A `postgres://` URL, parsed, and how it is shown (never with its password).
#[derive(Clone)]
pub struct PgTarget {
    config: postgres::Config,
    shown: String,
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PgTarget({})", self.shown)
    }
}

impl std::fmt::Display for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

impl PgTarget {
    /// Parses `postgres://user[:password]@host[:port]/database[?params]` (libpq's URL
    /// form). Without a password in the URL, `PGPASSWORD` from the environment is used,
    /// so the password need not appear on a command line.
    pub fn parse(url: &str) -> Result<PgTarget, String> {
        // The parser's errors name the option, never echo the URL (or its password).
        let mut config: postgres::Config = url
            .parse()
            .map_err(|e| format!("not a usable postgres:// URL: {}", chain(&e)))?;
        if config.get_hosts().is_empty() {
            return Err("the postgres:// URL names no host".into());
        }
        if !matches!(
            config.get_ssl_mode(),
            postgres::config::SslMode::Disable | postgres::config::SslMode::Prefer
        ) {
            return Err(
                "the postgres:// URL asks for TLS (sslmode): ferry-server connects to PostgreSQL without TLS; use a private network, a local socket or a TLS tunnel, and sslmode=disable or prefer".into(),
            );
        }
        if config.get_password().is_none()
            && let Ok(password) = std::env::var("PGPASSWORD")
        {
            config.password(password);
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_tcp_user_timeout().is_none() {
            config.tcp_user_timeout(TCP_USER_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("ferry-server");
        }
        let shown = show(&config);
        Ok(PgTarget { config, shown })
    }
}

/// `postgres://user@host:port/database`, from the parsed URL (so no password).
fn show(c: &postgres::Config) -> String {
    let hosts: Vec<String> = c
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let port = c
                .get_ports()
                .get(i)
                .or(c.get_ports().first())
                .unwrap_or(&5432);
            match h {
                Host::Tcp(name) => format!("{name}:{port}"),
                Host::Unix(dir) => format!("{}:{port}", dir.display()),
            }
        })
        .collect();
    let user = c.get_user().map_or(String::new(), |u| format!("{u}@"));
    format!(
        "postgres://{user}{}/{}",
        hosts.join(","),
        c.get_dbname().unwrap_or_default()
    )
}

/// Makes errors that name the database.
struct Errs {
    db: String,
}

impl Errs {
    /// A connection lost or refused is [`FleetError::Unavailable`] (worth a retry, a
    /// 503); anything else names what failed.
    fn ctx(&self, context: &'static str) -> impl FnOnce(postgres::Error) -> FleetError + '_ {
        move |e| {
            let io = std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>());
            // SQLSTATE class 08 (connection exception) and 57P (the server shutting
            // down or starting: `pg_ctl stop` ends sessions with 57P01).
            let down = e
                .code()
                .is_some_and(|c| c.code().starts_with("08") || c.code().starts_with("57P"));
            if e.is_closed() || io || down {
                FleetError::Unavailable {
                    db: self.db.clone(),
                    reason: chain(&e),
                }
            } else {
                FleetError::Postgres {
                    context: format!("{context} (fleet database {})", self.db),
                    source: e,
                }
            }
        }
    }
}

/// The fleet database in PostgreSQL: one connection, reopened when it breaks.
pub struct PgStore {
    target: PgTarget,
    client: Option<Client>,
    errs: Errs,
}

impl PgStore {
    /// Connects, and with [`Open::Create`] creates the tables when absent.
    pub fn open(target: &PgTarget, mode: Open) -> Result<PgStore, FleetError> {
        let errs = Errs {
            db: target.shown.clone(),
        };
        let mut client = connect(target, &errs)?;
        let mut tx = client
            .transaction()
            .map_err(errs.ctx("cannot begin a transaction"))?;
        // Two servers starting at once would race on CREATE TABLE IF NOT EXISTS.
        tx.execute(
            "SELECT pg_advisory_xact_lock($1, $2)",
            &[&SCHEMA_LOCK.0, &SCHEMA_LOCK.1],
        )
        .map_err(errs.ctx("cannot lock the schema"))?;
        let exists: bool = tx
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&VERSION_TABLE])
            .and_then(|r| r.try_get(0))
            .map_err(errs.ctx("cannot read the schema"))?;
        if exists {
            let version: i32 = tx
                .query_one(VERSION_SQL, &[])
                .and_then(|r| r.try_get::<_, Option<i32>>(0))
                .map_err(errs.ctx("cannot read the schema version"))?
                .unwrap_or(0);
            if i64::from(version) > SCHEMA_VERSION {
                return Err(newer_schema(&errs.db, version.into()));
            }
        } else if mode == Open::Existing {
            return Err(FleetError::Config(format!(
                "no fleet tables in {} (serve --fleet-db makes them)",
                errs.db
            )));
        }
        tx.batch_execute(SCHEMA)
            .map_err(errs.ctx("cannot create the fleet tables"))?;
        if !exists {
            tx.batch_execute(&format!(
                "CREATE TABLE {VERSION_TABLE} (version INTEGER NOT NULL);
                 INSERT INTO {VERSION_TABLE} VALUES ({SCHEMA_VERSION});"
            ))
            .map_err(errs.ctx("cannot record the schema version"))?;
        }
        tx.commit().map_err(errs.ctx("cannot create the schema"))?;
        Ok(PgStore {
            target: target.clone(),
            client: Some(client),
            errs,
        })
    }

    /// Runs `f` on the connection (opened anew when there is none or it closed); when
    /// it finds a connection from before broken, reconnects once and runs `f` again.
    /// Safe for every call here: each is one transaction, and a report stored twice is
    /// stored once (its `report_id`).
    fn run<T>(
        &mut self,
        mut f: impl FnMut(&mut Client, &Errs) -> Result<T, FleetError>,
    ) -> Result<T, FleetError> {
        let reused = self.client.as_ref().is_some_and(|c| !c.is_closed());
        if !reused {
            self.client = None;
        }
        let client = match self.client.as_mut() {
            Some(c) => c,
            None => self.client.insert(reconnect(&self.target, &self.errs)?),
        };
        match f(client, &self.errs) {
            Err(FleetError::Unavailable { .. }) if reused => {
                self.client = None;
                let client = self.client.insert(reconnect(&self.target, &self.errs)?);
                f(client, &self.errs)
            }
            other => other,
        }
    }
}

/// Opens a connection and checks it is durable.
fn connect(target: &PgTarget, errs: &Errs) -> Result<Client, FleetError> {
    let mut client = target
        .config
        .connect(NoTls)
        .map_err(|e| FleetError::Unavailable {
            db: errs.db.clone(),
            reason: chain(&e),
        })?;
    let setting = |client: &mut Client, name: &str| -> Result<String, FleetError> {
        client
            .query_one(format!("SHOW {name}").as_str(), &[])
            .and_then(|r| r.try_get(0))
            .map_err(errs.ctx("cannot read the database's settings"))
    };
    // A 2xx promises the report is on disk: never acknowledge before the WAL flush.
    if setting(&mut client, "synchronous_commit")? == "off" {
        client
            .batch_execute("SET synchronous_commit = on")
            .map_err(errs.ctx("cannot turn synchronous_commit on"))?;
    }
    if setting(&mut client, "fsync")? == "off" {
        tracing::warn!(
            db = %errs.db,
            "PostgreSQL runs with fsync=off: a report acknowledged may be lost if the database machine crashes"
        );
    }
    Ok(client)
}

fn reconnect(target: &PgTarget, errs: &Errs) -> Result<Client, FleetError> {
    let client = connect(target, errs)?;
    tracing::info!(db = %errs.db, "connected to the fleet database");
    Ok(client)
}

/// `SELECT`s whose first column is a report's JSON.
fn reports(
    c: &mut impl GenericClient,
    errs: &Errs,
    sql: &str,
    args: &[&(dyn postgres::types::ToSql + Sync)],
) -> Result<Vec<Report>, FleetError> {
    let rows = c
        .query(sql, args)
        .map_err(errs.ctx("cannot read reports"))?;
    rows.iter()
        .map(|r| {
            let json: String = r.try_get(0).map_err(errs.ctx("cannot read reports"))?;
            parse(&json)
        })
        .collect()
}

fn count(n: i64) -> u64 {
    n.max(0) as u64
}

impl FleetStore for PgStore {
    fn store(
        &mut self,
        report: &Report,
        json: &str,
        received_at: u64,
        credential: Option<&[u8; 32]>,
    ) -> Result<Stored, FleetError> {
        let received_at = received_at as i64;
        let time = report.time as i64;
        self.run(|client, errs| {
            let mut tx = client
                .transaction()
                .map_err(errs.ctx("cannot begin a transaction"))?;
            if let Some(digest) = credential {
                tx.execute(
                    "INSERT INTO credentials (agent_id, digest, enrolled_at) VALUES ($1, $2, $3)
                     ON CONFLICT (agent_id) DO UPDATE SET
                        digest = excluded.digest, enrolled_at = excluded.enrolled_at",
                    &[&report.agent_id, &&digest[..], &received_at],
                )
                .map_err(errs.ctx("cannot store a credential"))?;
            }
            let previous: Option<String> = tx
                .query_opt(
                    "SELECT json FROM agents WHERE agent_id = $1",
                    &[&report.agent_id],
                )
                .and_then(|r| r.map(|r| r.try_get(0)).transpose())
                .map_err(errs.ctx("cannot read an agent"))?;
            let repeats = repeats(report, previous.as_deref());
            let row: Option<i64> = if repeats {
                None
            } else {
                tx.query_opt(
                    "INSERT INTO reports (report_id, agent_id, received_at, time, channel, kind, state, active, target, result, json)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
                     ON CONFLICT (report_id) DO NOTHING RETURNING id",
                    &[
                        &report.report_id,
                        &report.agent_id,
                        &received_at,
                        &time,
                        &report.channel,
                        &kind_name(report),
                        &report.state.name(),
                        &report.active,
                        &report.target,
                        &report.result,
                        &json,
                    ],
                )
                .and_then(|r| r.map(|r| r.try_get(0)).transpose())
                .map_err(errs.ctx("cannot store a report"))?
            };
            if let Some(row) = row {
                // As in SQLite: the state is about the target; an active release that
                // is not the target counts as tried, never as failed.
                let mut mark = |release: &str, via: &str, state: AgentState| {
                    tx.execute(
                        "INSERT INTO latest (agent_id, channel, release, via, report_row, state)
                         VALUES ($1, $2, $3, $4, $5, $6)
                         ON CONFLICT (channel, release, via, agent_id) DO UPDATE SET
                            report_row = excluded.report_row, state = excluded.state
                         WHERE excluded.report_row > latest.report_row",
                        &[
                            &report.agent_id,
                            &report.channel,
                            &release,
                            &via,
                            &row,
                            &state.name(),
                        ],
                    )
                    .map(|_| ())
                    .map_err(errs.ctx("cannot index a report"))
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
            tx.execute(
                "INSERT INTO agents (agent_id, time, last_seen, json) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (agent_id) DO UPDATE SET
                    last_seen = GREATEST(agents.last_seen, excluded.last_seen),
                    json = CASE WHEN excluded.time >= agents.time THEN excluded.json ELSE agents.json END,
                    time = GREATEST(agents.time, excluded.time)",
                &[&report.agent_id, &time, &received_at, &json],
            )
            .map_err(errs.ctx("cannot update an agent"))?;
            tx.commit().map_err(errs.ctx("cannot commit a report"))?;
            Ok(if row.is_some() {
                Stored::New
            } else if repeats {
                Stored::Refreshed
            } else {
                Stored::Duplicate
            })
        })
    }

    fn report_count(&mut self) -> Result<u64, FleetError> {
        self.run(|c, errs| {
            c.query_one("SELECT count(*) FROM reports", &[])
                .and_then(|r| r.try_get(0))
                .map(count)
                .map_err(errs.ctx("cannot count reports"))
        })
    }

    fn agent_of(&mut self, digest: &[u8; 32]) -> Result<Option<String>, FleetError> {
        self.run(|c, errs| {
            c.query_opt(
                "SELECT agent_id FROM credentials WHERE digest = $1",
                &[&&digest[..]],
            )
            .and_then(|r| r.map(|r| r.try_get(0)).transpose())
            .map_err(errs.ctx("cannot look up a credential"))
        })
    }

    fn prune(&mut self, before: u64) -> Result<(usize, usize), FleetError> {
        let before = before as i64;
        self.run(|c, errs| {
            let mut tx = c
                .transaction()
                .map_err(errs.ctx("cannot begin a transaction"))?;
            let reports = tx
                .execute("DELETE FROM reports WHERE received_at < $1", &[&before])
                .map_err(errs.ctx("cannot prune reports"))?;
            let agents = tx
                .execute("DELETE FROM agents WHERE last_seen < $1", &[&before])
                .map_err(errs.ctx("cannot prune agents"))?;
            tx.execute(
                "DELETE FROM latest WHERE NOT EXISTS (SELECT 1 FROM reports WHERE id = latest.report_row)",
                &[],
            )
            .map_err(errs.ctx("cannot prune the report index"))?;
            tx.commit().map_err(errs.ctx("cannot commit pruning"))?;
            Ok((reports as usize, agents as usize))
        })
    }

    fn agents(&mut self) -> Result<Vec<AgentRow>, FleetError> {
        self.run(|c, errs| {
            let rows = c
                .query("SELECT json, last_seen FROM agents ORDER BY agent_id", &[])
                .map_err(errs.ctx("cannot read agents"))?;
            rows.iter()
                .map(|r| {
                    let json: String = r.try_get(0).map_err(errs.ctx("cannot read agents"))?;
                    let last_seen: i64 = r.try_get(1).map_err(errs.ctx("cannot read agents"))?;
                    Ok(AgentRow {
                        report: parse(&json)?,
                        last_seen: count(last_seen),
                    })
                })
                .collect()
        })
    }

    fn latest_per_target(&mut self, channel: &str) -> Result<Vec<Report>, FleetError> {
        self.run(|c, errs| {
            reports(
                c,
                errs,
                "SELECT r.json FROM latest l JOIN reports r ON r.id = l.report_row
                 WHERE l.channel = $1 AND l.via = 'target' ORDER BY r.id",
                &[&channel],
            )
        })
    }

    fn attempts(&mut self, channel: &str) -> Result<Vec<Report>, FleetError> {
        self.run(|c, errs| {
            reports(
                c,
                errs,
                "SELECT json FROM reports WHERE channel = $1 AND kind = 'attempt' ORDER BY id",
                &[&channel],
            )
        })
    }

    fn halt_locked(
        &mut self,
        channel: &str,
        decide: &mut dyn FnMut(&mut dyn HaltLedger) -> Result<bool, FleetError>,
    ) -> Result<bool, FleetError> {
        let key = channel_key(channel);
        self.run(|c, errs| {
            let mut tx = c
                .transaction()
                .map_err(errs.ctx("cannot begin a transaction"))?;
            // Held until commit or rollback: a second server evaluating the same
            // channel waits here, then sees the halt this one recorded.
            tx.execute(
                "SELECT pg_advisory_xact_lock($1, $2)",
                &[&HALT_LOCK_CLASS, &key],
            )
            .map_err(errs.ctx("cannot take the halt lock"))?;
            let halted = decide(&mut Ledger { c: &mut tx, errs })?;
            tx.commit().map_err(errs.ctx("cannot commit a halt"))?;
            Ok(halted)
        })
    }

    fn attempts_received(
        &mut self,
        since: u64,
        until: u64,
    ) -> Result<Vec<(u64, Report)>, FleetError> {
        let (since, until) = (since as i64, until as i64);
        self.run(|c, errs| {
            let rows = c
                .query(
                    "SELECT received_at, json FROM reports
                     WHERE kind = 'attempt' AND received_at >= $1 AND received_at < $2 ORDER BY id",
                    &[&since, &until],
                )
                .map_err(errs.ctx("cannot read reports"))?;
            rows.iter()
                .map(|r| {
                    let at: i64 = r.try_get(0).map_err(errs.ctx("cannot read reports"))?;
                    let json: String = r.try_get(1).map_err(errs.ctx("cannot read reports"))?;
                    Ok((count(at), parse(&json)?))
                })
                .collect()
        })
    }

    fn halts_between(&mut self, since: u64, until: u64) -> Result<Vec<Halt>, FleetError> {
        let (since, until) = (since as i64, until as i64);
        self.run(|c, errs| {
            let rows = c
                .query(
                    "SELECT channel, release, content_sequence, halted_at, last_report, failed, tried, reason
                     FROM halts WHERE halted_at >= $1 AND halted_at < $2 ORDER BY id",
                    &[&since, &until],
                )
                .map_err(errs.ctx("cannot read halts"))?;
            rows.iter()
                .map(|r| halt(r).map_err(errs.ctx("cannot read halts")))
                .collect()
        })
    }

    fn prune_halts(&mut self, before: u64) -> Result<usize, FleetError> {
        let before = before as i64;
        self.run(|c, errs| {
            c.execute("DELETE FROM halts WHERE halted_at < $1", &[&before])
                .map(|n| n as usize)
                .map_err(errs.ctx("cannot prune halts"))
        })
    }

    fn ping(&mut self) -> Result<(), FleetError> {
        self.run(|c, errs| {
            c.query_one(VERSION_SQL, &[])
                .map(|_| ())
                .map_err(errs.ctx("cannot read the fleet database"))
        })
    }
}

impl HaltLedger for PgStore {
    fn outcomes(
        &mut self,
        channel: &str,
        release: &str,
        after: i64,
    ) -> Result<(u64, u64, i64), FleetError> {
        self.run(|c, errs| outcomes(c, errs, channel, release, after))
    }

    fn last_halt(&mut self, channel: &str, release: &str) -> Result<Option<Halt>, FleetError> {
        self.run(|c, errs| last_halt(c, errs, channel, release))
    }

    fn record_halt(&mut self, h: &Halt) -> Result<(), FleetError> {
        self.run(|c, errs| record_halt(c, errs, h))
    }
}

/// The halt rule's queries inside [`FleetStore::halt_locked`]'s transaction.
struct Ledger<'a, 't> {
    c: &'a mut postgres::Transaction<'t>,
    errs: &'a Errs,
}

impl HaltLedger for Ledger<'_, '_> {
    fn outcomes(
        &mut self,
        channel: &str,
        release: &str,
        after: i64,
    ) -> Result<(u64, u64, i64), FleetError> {
        outcomes(self.c, self.errs, channel, release, after)
    }

    fn last_halt(&mut self, channel: &str, release: &str) -> Result<Option<Halt>, FleetError> {
        last_halt(self.c, self.errs, channel, release)
    }

    fn record_halt(&mut self, h: &Halt) -> Result<(), FleetError> {
        record_halt(self.c, self.errs, h)
    }
}

/// The advisory lock key of a channel's halt rule: stable across servers and
/// versions (blake3 of the name); two channels sharing a key only wait for each other.
fn channel_key(channel: &str) -> i32 {
    let hash = blake3::hash(channel.as_bytes());
    let b = hash.as_bytes();
    i32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn outcomes(
    c: &mut impl GenericClient,
    errs: &Errs,
    channel: &str,
    release: &str,
    after: i64,
) -> Result<(u64, u64, i64), FleetError> {
    let row = c
        .query_one(
            "SELECT count(*) FILTER (WHERE state IN ('failed', 'rolled-back')),
                    count(*) FILTER (WHERE state NOT IN ('downloading', 'staged', 'switching', 'health-checking')),
                    coalesce(max(report_row), 0)
             FROM latest WHERE channel = $1 AND release = $2 AND via = 'either' AND report_row > $3",
            &[&channel, &release, &after],
        )
        .map_err(errs.ctx("cannot count outcomes"))?;
    let get = |i: usize| -> Result<i64, FleetError> {
        row.try_get(i).map_err(errs.ctx("cannot count outcomes"))
    };
    Ok((count(get(0)?), count(get(1)?), get(2)?))
}

fn last_halt(
    c: &mut impl GenericClient,
    errs: &Errs,
    channel: &str,
    release: &str,
) -> Result<Option<Halt>, FleetError> {
    c.query_opt(
        "SELECT channel, release, content_sequence, halted_at, last_report, failed, tried, reason
         FROM halts WHERE channel = $1 AND release = $2 ORDER BY id DESC LIMIT 1",
        &[&channel, &release],
    )
    .and_then(|r| r.map(|r| halt(&r)).transpose())
    .map_err(errs.ctx("cannot read halts"))
}

fn record_halt(c: &mut impl GenericClient, errs: &Errs, h: &Halt) -> Result<(), FleetError> {
    c.execute(
        "INSERT INTO halts (channel, release, content_sequence, halted_at, last_report, failed, tried, reason)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        &[
            &h.channel,
            &h.release,
            &(h.content_sequence as i64),
            &(h.halted_at as i64),
            &h.last_report,
            &(h.failed as i64),
            &(h.tried as i64),
            &h.reason,
        ],
    )
    .map(|_| ())
    .map_err(errs.ctx("cannot record a halt"))
}

fn halt(r: &Row) -> Result<Halt, postgres::Error> {
    Ok(Halt {
        channel: r.try_get(0)?,
        release: r.try_get(1)?,
        content_sequence: count(r.try_get(2)?),
        halted_at: count(r.try_get(3)?),
        last_report: r.try_get(4)?,
        failed: count(r.try_get(5)?),
        tried: count(r.try_get(6)?),
        reason: r.try_get(7)?,
    })
}

/// Dropping a client runs its own small runtime to say goodbye, which tokio forbids on
/// an async worker thread (where the last `Arc<Fleet>` may be dropped at shutdown).
impl Drop for PgStore {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            let _ = std::thread::spawn(move || drop(client)).join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_shown_without_passwords_and_tls_is_refused_by_name() {
        let t = PgTarget::parse("postgresql://app:s3cret@10.0.0.5:6543/fleet").unwrap();
        assert_eq!(t.to_string(), "postgres://app@10.0.0.5:6543/fleet");
        assert!(!format!("{t:?}").contains("s3cret"));
        let t = PgTarget::parse("postgres://app@db/fleet").unwrap();
        assert_eq!(t.to_string(), "postgres://app@db:5432/fleet");
        let err = PgTarget::parse("postgres://app@db/fleet?sslmode=require").unwrap_err();
        assert!(err.contains("TLS"), "{err}");
        assert_ne!(channel_key("stable"), channel_key("beta"));
    }
}

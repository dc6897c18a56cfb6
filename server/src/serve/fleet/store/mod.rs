//! The fleet database behind `serve --fleet-db`: one interface ([`FleetStore`]), two
//! engines — a SQLite file ([`sqlite`], the default for one machine) and PostgreSQL
//! ([`postgres`], `--fleet-db postgres://…`, which several `serve` instances share).
//!
//! Both keep the same tables with the same meaning (docs/FLEET.md):
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
//!
//! Every method runs on a blocking thread ([`super::Fleet::with_store`]): commits wait
//! for the disk (SQLite) or the database server (PostgreSQL).

pub mod postgres;
pub mod sqlite;

use std::path::PathBuf;

use ferry_format::report::Report;

use super::FleetError;

/// Where `--fleet-db` points: a file path (SQLite) or a `postgres://` URL.
#[derive(Clone, Debug)]
pub enum FleetDb {
    File(PathBuf),
    Postgres(Box<postgres::PgTarget>),
}

impl FleetDb {
    /// Reads `--fleet-db`: a `postgres://` or `postgresql://` URL, any other URL scheme
    /// is refused (never taken for a file name), anything else is a SQLite file path.
    pub fn parse(s: &str) -> Result<FleetDb, String> {
        match url_scheme(s) {
            None => Ok(FleetDb::File(PathBuf::from(s))),
            Some(scheme)
                if scheme.eq_ignore_ascii_case("postgres")
                    || scheme.eq_ignore_ascii_case("postgresql") =>
            {
                // Schemes are case-insensitive (RFC 3986); the parser wants lower case.
                let rest = &s[scheme.len()..];
                postgres::PgTarget::parse(&format!("{}{rest}", scheme.to_ascii_lowercase()))
                    .map(|t| FleetDb::Postgres(Box::new(t)))
            }
            Some(scheme) => Err(format!(
                "unsupported URL scheme {scheme}:// — give a file path (SQLite) or postgres://user:password@host:port/database"
            )),
        }
    }
}

/// Never shows a password: a PostgreSQL URL is printed without it.
impl std::fmt::Display for FleetDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FleetDb::File(path) => write!(f, "{}", path.display()),
            FleetDb::Postgres(target) => write!(f, "{target}"),
        }
    }
}

/// The scheme of `s` when it looks like a URL (`scheme://…`, RFC 3986 scheme letters).
fn url_scheme(s: &str) -> Option<&str> {
    let (scheme, _) = s.split_once("://")?;
    let mut chars = scheme.chars();
    let first = chars.next()?;
    (first.is_ascii_alphabetic()
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
    .then_some(scheme)
}

/// Whether opening may create the tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Open {
    /// `serve`: create the database (file) and tables when absent.
    Create,
    /// `audit`: only a database `serve` made; a wrong path or URL is an error.
    Existing,
}

/// Opens the fleet database `db`.
pub fn open(db: &FleetDb, mode: Open) -> Result<Box<Store>, FleetError> {
    Ok(match db {
        FleetDb::File(path) => Box::new(sqlite::SqliteStore::open(path, mode)?),
        FleetDb::Postgres(target) => Box::new(postgres::PgStore::open(target, mode)?),
    })
}

/// The fleet database, whichever engine.
pub type Store = dyn FleetStore;

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

/// What [`FleetStore::store`] did with a report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stored {
    /// Kept as a new row.
    New,
    /// Its `report_id` was stored before: nothing changed.
    Duplicate,
    /// A heartbeat repeating the agent's newest report: only `last_seen` moved.
    Refreshed,
}

/// What the halt rule reads and writes ([`super::halt`]), on the store itself or
/// inside [`FleetStore::halt_locked`].
pub trait HaltLedger {
    /// For the halt rule: of the agents whose newest report concerning `release` of
    /// `channel` (as target or active) came after row `after`, how many tried it
    /// (those still downloading, staged, switching or health-checking have not yet)
    /// and how many of those reports say failed or rolled back (the same as counting
    /// only the reports after `after`). Returns (failed, tried, newest row counted).
    fn outcomes(
        &mut self,
        channel: &str,
        release: &str,
        after: i64,
    ) -> Result<(u64, u64, i64), FleetError>;

    /// The newest halt recorded for `release` of `channel`.
    fn last_halt(&mut self, channel: &str, release: &str) -> Result<Option<Halt>, FleetError>;

    /// Records a halt (durably, once the surrounding transaction commits).
    fn record_halt(&mut self, h: &Halt) -> Result<(), FleetError>;
}

/// The fleet database's operations; both engines answer them alike.
pub trait FleetStore: HaltLedger + Send {
    /// Stores a report from an agent, committed before it returns.
    /// `credential`: a new credential digest to bind to the report's agent id
    /// (enrollment), replacing any earlier one, in the same transaction.
    fn store(
        &mut self,
        report: &Report,
        json: &str,
        received_at: u64,
        credential: Option<&[u8; 32]>,
    ) -> Result<Stored, FleetError>;

    /// How many reports are kept (all kinds).
    fn report_count(&mut self) -> Result<u64, FleetError>;

    /// The agent id a credential digest is bound to.
    fn agent_of(&mut self, digest: &[u8; 32]) -> Result<Option<String>, FleetError>;

    /// Deletes reports received before `before` and agents silent since then;
    /// returns (reports, agents) deleted.
    fn prune(&mut self, before: u64) -> Result<(usize, usize), FleetError>;

    /// Every agent, by id.
    fn agents(&mut self) -> Result<Vec<AgentRow>, FleetError>;

    /// Per agent and target release of `channel`, the agent's newest report aiming at
    /// it (the reports' order of arrival, which each agent's queue keeps).
    fn latest_per_target(&mut self, channel: &str) -> Result<Vec<Report>, FleetError>;

    /// Every attempt report of `channel` (outcomes, durations, bytes).
    fn attempts(&mut self, channel: &str) -> Result<Vec<Report>, FleetError>;

    /// Runs `decide` with the halt rule of `channel` held by this caller alone — among
    /// the threads of this process and among every `serve` sharing the database —
    /// inside one transaction that commits what it records. So two servers that both
    /// see a rollout fail cannot both halt it (and both re-sign its head): the second
    /// one sees the first one's halt.
    fn halt_locked(
        &mut self,
        channel: &str,
        decide: &mut dyn FnMut(&mut dyn HaltLedger) -> Result<bool, FleetError>,
    ) -> Result<bool, FleetError>;

    /// Attempt reports received (server clock) in `since..until`, oldest first, each
    /// with its receipt time (`audit export`).
    fn attempts_received(
        &mut self,
        since: u64,
        until: u64,
    ) -> Result<Vec<(u64, Report)>, FleetError>;

    /// Halts recorded in `since..until`, oldest first (`audit export`).
    fn halts_between(&mut self, since: u64, until: u64) -> Result<Vec<Halt>, FleetError>;

    /// Deletes halts recorded before `before` (`audit prune`).
    fn prune_halts(&mut self, before: u64) -> Result<usize, FleetError>;

    /// A cheap query proving the database answers (`GET /healthz`).
    fn ping(&mut self) -> Result<(), FleetError>;
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

/// Whether a heartbeat repeats the agent's newest report (`previous`, its JSON): then
/// it only refreshes `last_seen`. Keeping it as a row would grow the table by every
/// agent every interval, and would make an old failure look new to the halt rule's
/// window.
fn repeats(report: &Report, previous: Option<&str>) -> bool {
    report.kind == ferry_format::report::ReportKind::Heartbeat
        && previous
            .and_then(|j| Report::from_json(j.as_bytes()).ok())
            .is_some_and(|p| same_state(&p, report))
}

/// A stored report's JSON: validated when it was received, so an error here means
/// the database was changed behind the server's back.
fn parse(json: &str) -> Result<Report, FleetError> {
    Report::from_json(json.as_bytes()).map_err(|e| {
        FleetError::Config(format!(
            "the fleet database holds an unreadable report: {e}"
        ))
    })
}

/// The kind column of a report.
fn kind_name(report: &Report) -> &'static str {
    match report.kind {
        ferry_format::report::ReportKind::Attempt => "attempt",
        ferry_format::report::ReportKind::Heartbeat => "heartbeat",
    }
}

/// The schema version both engines write and read; a newer one is refused.
pub const SCHEMA_VERSION: i64 = 1;

fn newer_schema(db: &str, found: i64) -> FleetError {
    FleetError::Config(format!(
        "the fleet database {db} has schema version {found}, newer than the {SCHEMA_VERSION} this ferry-server knows: run a newer ferry-server"
    ))
}

#[cfg(any(test, feature = "test-support"))]
pub mod conformance;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fleet_db_is_a_path_or_a_postgres_url_and_other_schemes_are_refused() {
        assert!(matches!(
            FleetDb::parse("/var/lib/ferry/fleet.db"),
            Ok(FleetDb::File(_))
        ));
        assert!(matches!(FleetDb::parse("fleet.db"), Ok(FleetDb::File(_))));
        for url in [
            "postgres://app:secret@127.0.0.1:5432/appdb",
            "postgresql://app:secret@db.example/appdb",
            "POSTGRES://app@127.0.0.1/appdb",
        ] {
            let db = FleetDb::parse(url).unwrap();
            assert!(matches!(db, FleetDb::Postgres(_)), "{url}");
            let shown = db.to_string();
            assert!(!shown.contains("secret"), "{shown}");
            assert!(shown.contains("app@"), "{shown}");
        }
        for bad in ["mysql://u@h/db", "s3://bucket/fleet", "sqlite://fleet.db"] {
            let err = FleetDb::parse(bad).unwrap_err();
            assert!(err.contains("unsupported URL scheme"), "{err}");
        }
        let err = FleetDb::parse("postgres://app@127.0.0.1:notaport/db").unwrap_err();
        assert!(err.contains("postgres"), "{err}");
    }
}

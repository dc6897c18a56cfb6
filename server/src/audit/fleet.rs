//! Agent outcomes and halts from the fleet database of `serve --fleet-db`
//! (server/src/serve/fleet/store/): a SQLite file, whose WAL mode lets this read while
//! `serve` writes, or PostgreSQL, which any number of readers share.

use ferry_format::audit::{AuditEvent, event};

use crate::error::{Error, Result};
use crate::serve::fleet::chain;
use crate::serve::fleet::store::{self, FleetDb, Open, Store};

fn db_error(db: &FleetDb, e: &dyn std::error::Error) -> Error {
    Error::Unsupported {
        path: db.to_string().into(),
        reason: chain(e),
    }
}

/// Opens an existing fleet database (never creates one: a wrong path or URL is an
/// error).
pub fn open(db: &FleetDb) -> Result<Box<Store>> {
    store::open(db, Open::Existing).map_err(|e| db_error(db, &e))
}

/// Every attempt report received and every halt recorded in `since..until`.
pub fn events(
    db: &FleetDb,
    since: u64,
    until: u64,
    utc: &dyn Fn(u64) -> String,
) -> Result<Vec<AuditEvent>> {
    let mut store = open(db)?;
    let mut out = Vec::new();
    for h in store
        .halts_between(since, until)
        .map_err(|e| db_error(db, &e))?
    {
        out.push(AuditEvent {
            time: h.halted_at,
            time_utc: utc(h.halted_at),
            event: event::HALTED.into(),
            channel: h.channel,
            release: Some(h.release),
            publisher_sequence: Some(h.content_sequence),
            detail: Some(format!(
                "{} ({} of {} agents that tried it failed or rolled back)",
                h.reason, h.failed, h.tried
            )),
            ..AuditEvent::default()
        });
    }
    for (received, r) in store
        .attempts_received(since, until)
        .map_err(|e| db_error(db, &e))?
    {
        out.push(AuditEvent {
            time: received,
            time_utc: utc(received),
            event: format!("{}{}", event::AGENT_PREFIX, r.state.name()),
            channel: r.channel,
            release: r.target.or(r.active),
            agent_id: Some(r.agent_id),
            hostname: Some(r.hostname),
            agent_report_id: Some(r.report_id),
            result: Some(r.result),
            detail: r.error,
            ..AuditEvent::default()
        });
    }
    Ok(out)
}

/// Deletes halts and reports recorded before `before`; returns (halts, reports).
pub fn prune(db: &FleetDb, before: u64) -> Result<(usize, usize)> {
    let mut store = open(db)?;
    let halts = store.prune_halts(before).map_err(|e| db_error(db, &e))?;
    let (reports, _) = store.prune(before).map_err(|e| db_error(db, &e))?;
    Ok((halts, reports))
}

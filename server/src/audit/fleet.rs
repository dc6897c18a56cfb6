//! Agent outcomes and halts from the fleet database of `serve --fleet-db`
//! (server/src/serve/fleet/store.rs). SQLite in WAL mode lets this read while `serve`
//! writes.

use std::path::Path;

use ferry_format::audit::{AuditEvent, event};

use crate::error::{Error, Result};
use crate::serve::fleet::store::Store;

fn db_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Unsupported {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// Opens an existing fleet database (never creates one: a wrong path is an error).
pub fn open(path: &Path) -> Result<Store> {
    if !path.is_file() {
        return Err(db_error(
            path,
            "no fleet database here (serve --fleet-db makes it)",
        ));
    }
    Store::open(path).map_err(|e| db_error(path, e))
}

/// Every attempt report received and every halt recorded in `since..until`.
pub fn events(
    path: &Path,
    since: u64,
    until: u64,
    utc: &dyn Fn(u64) -> String,
) -> Result<Vec<AuditEvent>> {
    let store = open(path)?;
    let mut out = Vec::new();
    for h in store
        .halts_between(since, until)
        .map_err(|e| db_error(path, e))?
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
        .map_err(|e| db_error(path, e))?
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
pub fn prune(path: &Path, before: u64) -> Result<(usize, usize)> {
    let mut store = open(path)?;
    let halts = store.prune_halts(before).map_err(|e| db_error(path, e))?;
    let (reports, _) = store.prune(before).map_err(|e| db_error(path, e))?;
    Ok((halts, reports))
}

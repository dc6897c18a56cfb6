//! `ferry-server audit`: who published, re-signed, rolled out, paused, halted or
//! revoked what and when, from the signed heads the repository keeps in its head log
//! (FORMAT.md §7.1) — so CI publishing straight to storage is audited too — as a JSON
//! report (signed with `--sign`, FORMAT.md §11) or CSV; `audit verify` checks a signed
//! report; `audit prune` drops what is older than the retention.
//!
//! - [`log`]: the head log as events; [`fleet`]: agent outcomes and halts from the
//!   fleet database; [`csv`]: the CSV rows; [`time`]: the dates.
//!
//! Export only reads files (the log's entries are immutable, written before the head
//! they hold becomes current), so it runs while `serve` and publishers write.

pub mod command;
pub mod csv;
pub mod fleet;
pub mod log;
pub mod time;

use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_format::audit::{AUDIT_SCHEMA, AuditEvent, AuditReport, VerifiedReport};
use ferry_format::envelope::ObjectKind;
use ferry_format::keys::{PublicKey, SecretKey};
use ferry_format::layout::parse_head_log_name;

use crate::error::{Error, Result, io_err};
use crate::fsutil;
use crate::repo::Repo;

/// Default of `--audit-retention`.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(365 * 86_400);

/// What `audit export` reads.
pub struct ExportOptions {
    /// How the report names the repository (its folder or URL).
    pub repository: String,
    /// The publishing key of a single-key repository (heads naming no key list).
    pub public_key: Option<PublicKey>,
    /// Unix seconds: events with `since` ≤ time < `until` (`until` defaults to now).
    pub since: u64,
    pub until: Option<u64>,
    /// The fleet database of `serve --fleet-db`, for agent outcomes and halts.
    pub fleet_db: Option<crate::serve::fleet::store::FleetDb>,
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn report_id() -> Result<String> {
    let mut id = [0u8; 16];
    getrandom::fill(&mut id).map_err(|e| Error::Unsupported {
        path: PathBuf::from("report id"),
        reason: format!("no randomness from the OS: {e}"),
    })?;
    Ok(id.iter().map(|b| format!("{b:02x}")).collect())
}

/// Builds the report of `opts`' range.
pub fn export(repo: &Repo, opts: &ExportOptions) -> Result<AuditReport> {
    let generated_at = now();
    let until = opts.until.unwrap_or(generated_at.saturating_add(1));
    if until <= opts.since {
        return Err(Error::Unsupported {
            path: PathBuf::from("--until"),
            reason: format!(
                "the range is empty: --until ({}) is not after --since ({})",
                time::utc(until),
                time::utc(opts.since)
            ),
        });
    }
    if !repo.root().is_dir() {
        return Err(repo.broken("no such repository folder".into()));
    }
    let mut events: Vec<AuditEvent> = Vec::new();
    for channel in log::channels(repo)? {
        events.extend(log::channel_events(
            repo,
            &channel,
            opts.public_key,
            &time::utc,
        )?);
    }
    if let Some(db) = &opts.fleet_db {
        events.extend(fleet::events(db, opts.since, until, &time::utc)?);
    }
    events.retain(|e| opts.since <= e.time && e.time < until);
    // Stable: within one instant, a channel's events keep their log order.
    events.sort_by_key(|e| e.time);
    Ok(AuditReport {
        schema: AUDIT_SCHEMA,
        report_id: report_id()?,
        generated_at,
        generated_at_utc: time::utc(generated_at),
        since: opts.since,
        since_utc: time::utc(opts.since),
        until,
        until_utc: time::utc(until),
        repository: opts.repository.clone(),
        // Shown without a PostgreSQL password.
        fleet_db: opts.fleet_db.as_ref().map(ToString::to_string),
        counts: AuditReport::count(&events),
        events,
    })
}

/// The report as one line of JSON, signed with `key` when given (FORMAT.md §11).
pub fn render_json(report: &AuditReport, key: Option<&SecretKey>) -> Result<Vec<u8>> {
    let bytes = serde_json::to_vec(report).map_err(|e| Error::Unsupported {
        path: PathBuf::from("audit report"),
        reason: format!("cannot encode: {e}"),
    })?;
    match key {
        Some(k) => Ok(ferry_format::audit::sign_report(&bytes, k)?),
        None => {
            let mut bytes = bytes;
            bytes.push(b'\n');
            Ok(bytes)
        }
    }
}

/// Largest signed report `audit verify` reads.
const MAX_REPORT_FILE: u64 = 1 << 30;

/// Checks the signed report `file` against `key` (FORMAT.md §11).
pub fn verify(file: &Path, key: &PublicKey) -> Result<VerifiedReport> {
    let bytes = fsutil::read_small(file, MAX_REPORT_FILE)?;
    ferry_format::audit::verify_signed_report(&bytes, key).map_err(|source| Error::FormatContext {
        context: format!("{} does not verify", file.display()),
        source,
    })
}

/// The line `audit verify` prints for a report that verified.
pub fn summary(v: &VerifiedReport) -> String {
    let r = &v.report;
    let counts: Vec<String> = r.counts.iter().map(|(k, n)| format!("{k} {n}")).collect();
    format!(
        "verified: audit report {} signed by key {}: {} events from {} to {} ({}), generated {}\n",
        r.report_id,
        v.key_id.to_hex(),
        r.events.len(),
        r.since_utc,
        r.until_utc,
        if counts.is_empty() {
            "none".to_string()
        } else {
            counts.join(", ")
        },
        r.generated_at_utc
    )
}

/// What `audit prune` removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    pub log_entries: usize,
    pub halts: usize,
    pub reports: usize,
}

/// Removes head log entries whose head was issued before `before` (unix seconds),
/// keeping in every channel the newest entry and the current head's: the record of
/// the state agents are offered outlives any retention. Entries that are not heads
/// (nothing to date them by) are left for `audit export` to report.
pub fn prune(repo: &Repo, before: u64) -> Result<Pruned> {
    let mut pruned = Pruned::default();
    for channel in log::channels(repo)? {
        let entries = log::entries(repo, &channel)?;
        let current = repo.read_head(&channel)?.map(|b| {
            ferry_format::layout::head_log_name(
                ferry_format::head::claimed_sequence(&b).unwrap_or(u64::MAX),
                &ferry_format::id::Digest::of(&b),
            )
        });
        let dir = repo.head_log_dir(&channel);
        let newest = entries.last().map(|(_, n)| n.clone());
        for (_, name) in &entries {
            if Some(name) == newest.as_ref() || Some(name) == current.as_ref() {
                continue;
            }
            let path = dir.join(name);
            let Ok(bytes) = fsutil::read_small(&path, ObjectKind::ChannelHead.max_size()) else {
                continue;
            };
            let issued = ferry_format::head::inspect_head(&bytes).map(|h| h.issued_at);
            if parse_head_log_name(name).is_some() && issued.is_ok_and(|t| t < before) {
                std::fs::remove_file(&path).map_err(io_err("remove", &path))?;
                pruned.log_entries += 1;
            }
        }
    }
    Ok(pruned)
}

/// Unix seconds `retention` before now.
pub fn cutoff(retention: Duration) -> u64 {
    now().saturating_sub(retention.as_secs())
}

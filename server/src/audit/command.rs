//! The `ferry-server audit` subcommands (clap types) and what they print.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Subcommand, ValueEnum};

use super::time::{End, parse};
use crate::serve::fleet::store::FleetDb;

/// Output format of `audit export`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Json,
    Csv,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Write the audit report of a time range to stdout: every head the repository's
    /// keys signed (published, rollout changed, paused, resumed, refreshed, retired,
    /// requirements, key list), from the head log of each channel. Reads files only,
    /// so it runs while `serve` and publishers work.
    Export {
        /// Repository: a folder, or s3://BUCKET/PREFIX (configured by the AWS_*
        /// environment variables and --store-option).
        #[arg(long, value_name = "DIR|URL", value_parser = crate::store::location::parse_repo)]
        repo: crate::store::Location,
        /// First instant: YYYY-MM-DD (midnight UTC) or RFC 3339 (2026-12-01T12:00:00Z).
        #[arg(long, value_name = "DATE")]
        since: String,
        /// End of the range, excluded: RFC 3339, or YYYY-MM-DD to include that whole
        /// day [default: now].
        #[arg(long, value_name = "DATE")]
        until: Option<String>,
        #[arg(long, value_enum, default_value = "json")]
        format: Format,
        /// Sign the JSON report with this secret key (from `keygen` or `key gen`);
        /// `audit verify` checks it.
        #[arg(long, value_name = "KEY")]
        sign: Option<PathBuf>,
        /// For a single-key repository (no key list): the publishing public key the
        /// heads are verified with.
        #[arg(long, value_name = "PUB")]
        public_key: Option<PathBuf>,
        /// The fleet database of `serve --fleet-db` (a file or a postgres:// URL): adds
        /// agent outcomes (one event per attempt report) and the halts of `--halt-when`.
        #[arg(long, value_name = "PATH|URL")]
        fleet_db: Option<String>,
    },
    /// Check a signed audit report: exit 0 with a summary, or fail naming the problem
    /// (edited report, signature, another key).
    Verify {
        /// The signed report (`audit export --sign` output).
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Public key file of the key that signed it.
        #[arg(long, value_name = "PUB")]
        public_key: PathBuf,
    },
    /// Remove head log entries older than the retention (never a channel's newest
    /// entry or its current head's).
    Prune {
        /// Repository: a folder, or s3://BUCKET/PREFIX (configured by the AWS_*
        /// environment variables and --store-option).
        #[arg(long, value_name = "DIR|URL", value_parser = crate::store::location::parse_repo)]
        repo: crate::store::Location,
        /// The fleet database of `serve --fleet-db` (a file or a postgres:// URL): its
        /// halts and reports older than the retention are deleted too.
        #[arg(long, value_name = "PATH|URL")]
        fleet_db: Option<String>,
        /// How long audit records are kept, e.g. 365d.
        #[arg(long, value_name = "DURATION", default_value = "365d",
              value_parser = parse_retention)]
        audit_retention: Duration,
    },
}

fn parse_retention(s: &str) -> Result<Duration, String> {
    let d = ferry_format::duration::parse_duration(s).map_err(|e| e.to_string())?;
    if d.is_zero() {
        return Err("must be longer than 0s".into());
    }
    Ok(d)
}

/// `--fleet-db`, read after clap, whose errors would echo a password in the URL.
pub fn parse_fleet_db(s: &str) -> anyhow::Result<FleetDb> {
    FleetDb::parse(s).map_err(|e| anyhow::anyhow!("--fleet-db: {e}"))
}

fn stdout(bytes: &[u8]) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .context("cannot write to stdout")
}

/// Runs one `audit` subcommand.
pub fn run(command: AuditCommand, options: &[crate::store::StoreOption]) -> anyhow::Result<()> {
    match command {
        AuditCommand::Export {
            repo,
            since,
            until,
            format,
            sign,
            public_key,
            fleet_db,
        } => {
            if sign.is_some() && format != Format::Json {
                anyhow::bail!("--sign signs JSON reports only: use --format json");
            }
            let key = sign
                .as_deref()
                .map(crate::keygen::read_secret)
                .transpose()?;
            let store = crate::store::Store::open(&repo, options)?;
            let opts = super::ExportOptions {
                repository: store.name(),
                fleet_db: fleet_db.as_deref().map(parse_fleet_db).transpose()?,
                public_key: public_key
                    .as_deref()
                    .map(crate::keygen::read_public)
                    .transpose()?,
                since: parse(&since, End::Since).map_err(|e| anyhow::anyhow!("--since: {e}"))?,
                until: until
                    .as_deref()
                    .map(|u| parse(u, End::Until))
                    .transpose()
                    .map_err(|e| anyhow::anyhow!("--until: {e}"))?,
            };
            let report = store.read(crate::store::Mirror::Logs, |repo| {
                super::export(repo, &opts)
            })?;
            let bytes = match format {
                Format::Json => super::render_json(&report, key.as_ref())?,
                Format::Csv => super::csv::render(&report.events).into_bytes(),
            };
            stdout(&bytes)
        }
        AuditCommand::Verify { file, public_key } => {
            let key = crate::keygen::read_public(&public_key)?;
            let v = super::verify(&file, &key)?;
            stdout(super::summary(&v).as_bytes())
        }
        AuditCommand::Prune {
            repo,
            fleet_db,
            audit_retention,
        } => {
            let store = crate::store::Store::open(&repo, options)?;
            let before = super::cutoff(audit_retention);
            let fleet_db = fleet_db.as_deref().map(parse_fleet_db).transpose()?;
            let mut pruned = store.write(crate::store::Mirror::Logs, |repo| {
                super::prune(repo, before)
            })?;
            if let Some(db) = &fleet_db {
                (pruned.halts, pruned.reports) = super::fleet::prune(db, before)?;
            }
            stdout(
                format!(
                    "pruned {} head log entries issued before {}{}\n",
                    pruned.log_entries,
                    super::time::utc(before),
                    if fleet_db.is_some() {
                        format!(
                            ", {} halts and {} reports recorded before it",
                            pruned.halts, pruned.reports
                        )
                    } else {
                        String::new()
                    }
                )
                .as_bytes(),
            )
        }
    }
}

//! The fleet API of `ferry-server serve` (docs/FLEET.md): agents post reports
//! (`POST /v1/reports`, [`api`]), operators read `GET /v1/agents` and `GET /v1/fleet`,
//! and `--halt-when` pauses a rollout whose agents fail ([`halt`]).
//!
//! On only with `--agent-token-file`, `--operator-token-file` and `--fleet-db` together.
//! The database never lives inside the repository: the repository may be published by
//! any static host, which would then serve the fleet's reports and credentials.

pub mod api;
pub mod auth;
pub mod halt;
pub mod store;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry_format::keys::SecretKey;
use thiserror::Error;

use auth::Tokens;
use store::{FleetDb, Store};

/// Default `--heartbeat-interval`: the agents' own `heartbeat` default.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5 * 60);
/// An agent silent for this many heartbeat intervals counts as offline.
pub const OFFLINE_AFTER_HEARTBEATS: u32 = 3;
/// How often old reports are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// What the fleet API can fail with.
#[derive(Debug, Error)]
pub enum FleetError {
    #[error("{context}")]
    Db {
        context: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("{context}")]
    Postgres {
        context: String,
        #[source]
        source: postgres::Error,
    },
    /// The database cannot be reached or its connection broke: worth a retry (503).
    #[error("the fleet database {db} is unreachable: {reason}")]
    Unavailable { db: String, reason: String },
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Server(#[from] crate::error::Error),
}

/// `--halt-when 'failed>5%,min=20'`: pause the newest release's rollout when more than
/// `percent` of the agents that tried it failed or rolled back, once `min` tried it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HaltRule {
    pub percent: f64,
    pub min: u64,
}

/// `min` when `--halt-when` does not say.
pub const DEFAULT_HALT_MIN: u64 = 20;

impl HaltRule {
    /// Parses `failed>P%[,min=N]` (P may have decimals, 0 <= P < 100, N >= 1).
    pub fn parse(s: &str) -> Result<HaltRule, String> {
        let bad = |why: &str| format!("invalid --halt-when {s:?}: {why} (like 'failed>5%,min=20')");
        let mut parts = s.split(',').map(str::trim);
        let share = parts.next().unwrap_or_default();
        let pct = share
            .strip_prefix("failed>")
            .and_then(|p| p.trim().strip_suffix('%'))
            .ok_or_else(|| bad("expected failed>P%"))?;
        let percent: f64 = pct
            .trim()
            .parse()
            .map_err(|_| bad("the percentage is not a number"))?;
        if !(0.0..100.0).contains(&percent) {
            return Err(bad("the percentage must be at least 0 and below 100"));
        }
        let mut min = DEFAULT_HALT_MIN;
        for part in parts {
            let n = part
                .strip_prefix("min=")
                .ok_or_else(|| bad(&format!("unknown part {part:?}")))?;
            min = n
                .parse()
                .ok()
                .filter(|&n| n >= 1)
                .ok_or_else(|| bad("min must be a whole number of agents, at least 1"))?;
        }
        Ok(HaltRule { percent, min })
    }

    /// Whether `failed` of `tried` agents trip the rule.
    pub fn trips(&self, failed: u64, tried: u64) -> bool {
        tried >= self.min && failed as f64 * 100.0 > self.percent * tried as f64
    }
}

impl std::fmt::Display for HaltRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "failed>{}%,min={}", self.percent, self.min)
    }
}

/// The command line's fleet settings.
pub struct FleetOptions {
    /// The repository served: its heads show rollouts, and halts re-sign them.
    pub repo: crate::store::Store,
    pub agent_tokens: PathBuf,
    pub operator_tokens: PathBuf,
    pub db: FleetDb,
    pub heartbeat: Duration,
    pub retention: Duration,
    /// `--halt-when` and the online key that signs the pause.
    pub halt: Option<(HaltRule, SecretKey)>,
}

/// The fleet API's state, shared by all connections.
pub struct Fleet {
    /// `--fleet-db` as shown in messages (without a password).
    db: String,
    /// The repository served (a folder or a bucket): heads are read and halts
    /// written through it.
    repo_store: crate::store::Store,
    agent_tokens: Tokens,
    operator_tokens: Tokens,
    store: Arc<Mutex<Box<Store>>>,
    heartbeat: Duration,
    retention: Duration,
    halt: Option<Arc<(HaltRule, SecretKey)>>,
}

impl Fleet {
    /// Reads the token files and opens the database, refusing one inside the repository.
    pub fn open(opts: FleetOptions) -> Result<Fleet, FleetError> {
        match (&opts.db, &opts.repo) {
            (FleetDb::File(path), crate::store::Store::Local(repo)) => {
                check_outside(path, repo.root())?;
            }
            (FleetDb::File(path), bucket @ crate::store::Store::Object(_)) => tracing::warn!(
                "--fleet-db {} is a file on this machine: other servers on {} will not share \
                 its reports or halts (use --fleet-db postgres://… for several)",
                path.display(),
                bucket.name()
            ),
            _ => {}
        }
        let agent_tokens = Tokens::load(&opts.agent_tokens)?;
        let operator_tokens = Tokens::load(&opts.operator_tokens)?;
        if let Some((_, key)) = &opts.halt {
            opts.repo
                .read(crate::store::Mirror::Keys, |repo| {
                    crate::key_admin::check_online_key(repo, key)
                })
                .map_err(|e| FleetError::Config(format!("--halt-when needs the online key of the newest key list as --timestamp-key: {e}")))?;
        }
        let store = store::open(&opts.db, store::Open::Create)?;
        Ok(Fleet {
            repo_store: opts.repo,
            db: opts.db.to_string(),
            agent_tokens,
            operator_tokens,
            store: Arc::new(Mutex::new(store)),
            heartbeat: opts.heartbeat,
            retention: opts.retention,
            halt: opts.halt.map(Arc::new),
        })
    }

    /// Runs `f` on the store in a blocking thread, off the async executor (commits
    /// wait for fsync).
    pub async fn with_store<T, F>(&self, f: F) -> Result<T, FleetError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Store) -> Result<T, FleetError> + Send + 'static,
    {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock leaves the database consistent (an
            // unfinished transaction rolls back), so the poisoned guard is still good.
            let mut guard = store.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut **guard)
        })
        .await
        .map_err(|e| FleetError::Config(format!("a fleet database task failed: {e}")))?
    }

    /// The channels with a head in the repository, sorted; none when it cannot be
    /// listed (the view then shows the channels agents report). Called from the
    /// database's blocking thread, like every reader of the repository here.
    fn channels(&self) -> Vec<String> {
        let listed = tokio::runtime::Handle::current().block_on(self.repo_store.channels());
        listed.unwrap_or_else(|e| {
            tracing::warn!(
                "cannot list the channels of {}: {e}",
                self.repo_store.name()
            );
            Vec::new()
        })
    }

    /// The channel's current head as the repository holds it (one read of one small
    /// object, also from a bucket), unverified: the fleet view only shows what it says,
    /// and a halt re-reads and re-signs it through the store. `None` without a head or
    /// for a name that is not a channel (reports name channels: never a path).
    fn head(&self, channel: &str) -> Result<Option<ferry_format::head::ChannelHead>, FleetError> {
        if ferry_format::version::check_channel(channel).is_err() {
            return Ok(None);
        }
        let read = tokio::runtime::Handle::current().block_on(self.repo_store.read_head(channel));
        match read? {
            Some((bytes, _)) => Ok(Some(
                ferry_format::head::inspect_head(&bytes).map_err(crate::error::Error::from)?,
            )),
            None => Ok(None),
        }
    }

    /// The fleet database, as shown in messages (without a password).
    pub fn db(&self) -> &str {
        &self.db
    }

    /// Seconds after which a silent agent counts as offline.
    pub fn offline_after(&self) -> u64 {
        self.heartbeat.as_secs().max(1) * u64::from(OFFLINE_AFTER_HEARTBEATS)
    }

    /// Prunes reports older than `--report-retention` now and every hour, until the
    /// task is dropped.
    pub async fn prune_loop(self: Arc<Self>) {
        loop {
            let before = now().saturating_sub(self.retention.as_secs());
            match self.with_store(move |s| s.prune(before)).await {
                Ok((0, 0)) => {}
                Ok((reports, agents)) => tracing::info!(
                    reports,
                    agents,
                    "pruned fleet records older than the report retention"
                ),
                Err(e) => tracing::warn!("cannot prune the fleet database: {}", chain(&e)),
            }
            tokio::time::sleep(PRUNE_EVERY).await;
        }
    }
}

/// An error and its causes on one line, for logs and one-line answers.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out.replace('\n', " ")
}

/// Unix seconds now.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Refuses a database path inside the repository (symlinks resolved).
fn check_outside(db: &Path, repo: &Path) -> Result<(), FleetError> {
    let repo = std::fs::canonicalize(repo).map_err(|e| {
        FleetError::Config(format!(
            "cannot resolve the repository {}: {e}",
            repo.display()
        ))
    })?;
    let absolute = std::path::absolute(db).map_err(|e| {
        FleetError::Config(format!("cannot resolve --fleet-db {}: {e}", db.display()))
    })?;
    // The file may not exist yet: resolve the nearest existing ancestor.
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    let resolved = loop {
        match std::fs::canonicalize(existing) {
            Ok(p) => break rest.iter().rev().fold(p, |p: PathBuf, c| p.join(c)),
            Err(_) => match (existing.parent(), existing.file_name()) {
                (Some(parent), Some(name)) => {
                    rest.push(name.to_os_string());
                    existing = parent;
                }
                _ => break absolute.clone(),
            },
        }
    };
    if resolved.starts_with(&repo) {
        return Err(FleetError::Config(format!(
            "--fleet-db {} is inside the repository {}: the repository may be published by any static host, which would serve the fleet's reports and credentials; put the database elsewhere",
            db.display(),
            repo.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halt_rules_parse_and_trip_above_the_share_once_min_tried() {
        let r = HaltRule::parse("failed>5%,min=20").unwrap();
        assert_eq!(
            r,
            HaltRule {
                percent: 5.0,
                min: 20
            }
        );
        assert!(!r.trips(19, 19), "fewer than min tried");
        assert!(!r.trips(1, 20), "exactly 5% is not above 5%");
        assert!(r.trips(2, 20));
        assert_eq!(
            HaltRule::parse("failed>2.5%").unwrap().min,
            DEFAULT_HALT_MIN
        );
        for bad in [
            "failed>5",
            "failed<5%",
            "failed>x%",
            "failed>5%,min=0",
            "failed>5%,max=3",
            "failed>100%",
        ] {
            assert!(HaltRule::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_database_inside_the_repository_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        std::fs::create_dir_all(repo.join("channels")).unwrap();
        let err = check_outside(&repo.join("fleet.db"), &repo).unwrap_err();
        assert!(err.to_string().contains("inside the repository"), "{err}");
        assert!(check_outside(&repo.join("new/dir/fleet.db"), &repo).is_err());
        std::os::unix::fs::symlink(&repo, dir.path().join("alias")).unwrap();
        assert!(check_outside(&dir.path().join("alias/fleet.db"), &repo).is_err());
        check_outside(&dir.path().join("fleet.db"), &repo).unwrap();
    }
}

//! The updater as a library: what `ferry update`, `ferry update --dry-run`, `ferry
//! rollback` and `ferry status` do, for an application that updates itself. The
//! `ferry` commands call these same functions and only add printing.
//!
//! Every guarantee of the command line holds: the head, manifests and every chunk are
//! verified against the root's trusted keys before use; the new release is built
//! beside the active one and switched to atomically (`ROOT/current`); the previous
//! releases stay for [`Updater::rollback`]; a crash at any moment leaves the active
//! release intact.
//!
//! ```no_run
//! use ferry_client::updater::{Check, Updater};
//!
//! # fn main() -> Result<(), ferry_client::updater::Error> {
//! let updater = Updater::open("/opt/myapp")?;
//! if let Check::Available(plan) = updater.check()? {
//!     println!("{}", plan.line);
//!     let applied = updater.apply(&plan, &|stage| eprintln!("{stage:?}"))?;
//!     println!("now running {}", applied.to.as_deref().unwrap_or("nothing"));
//! }
//! # Ok(())
//! # }
//! ```

use std::path::{Path, PathBuf};

use ferry_format::report::AgentState;

use crate::cli::exit::{self, Class};
use crate::cli::report::Out;
use crate::cli::{LockArgs, dry_run, rollback, status, update};
use crate::install::layout::Layout;

/// An update failed; the variant is the kind of failure (the same as `ferry`'s exit
/// status: `ferry --help`) and the text says what and what to do next.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No server reachable: offline, or every mirror down. Nothing changed.
    #[error("{0}")]
    Offline(String),
    /// A server answered with an error, or a transfer failed after retries.
    #[error("{0}")]
    Network(String),
    /// A signature, hash, expiry, size or sequence check failed.
    #[error("{0}")]
    Verification(String),
    /// Refused by policy: over the data budget, a failing `pre_switch`, or a release
    /// that failed its health check (the previous release is active again).
    #[error("{0}")]
    Policy(String),
    /// Not enough space or inodes, or the disk refused a write.
    #[error("{0}")]
    Disk(String),
    /// Another ferry held the root longer than the lock timeout.
    #[error("{0}")]
    Lock(String),
    /// Anything else (a root that is not a ferry root, a damaged state file, ...).
    #[error("{0}")]
    Other(String),
}

impl From<anyhow::Error> for Error {
    fn from(e: anyhow::Error) -> Error {
        let text = format!("{e:#}");
        match exit::class_of(&e) {
            Some(Class::Offline) => Error::Offline(text),
            Some(Class::Network) => Error::Network(text),
            Some(Class::Verification) => Error::Verification(text),
            Some(Class::Policy) => Error::Policy(text),
            Some(Class::Disk) => Error::Disk(text),
            Some(Class::Lock) => Error::Lock(text),
            None => Error::Other(text),
        }
    }
}

/// How the missing bytes of a release would come.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Via {
    /// A copy already on disk (staged, or left by an interrupted run).
    OnDisk,
    /// A binary diff from a retained release, plus any archive ranges it lacks.
    Diff,
    /// Ranges of the release's archive.
    Archive,
}

/// What an update to `to` would download, planned from the signed head and manifest
/// and the chunks on disk.
#[derive(Clone, Debug)]
pub struct Plan {
    pub from: Option<String>,
    pub to: String,
    pub via: Via,
    /// Bytes of release data to download, and in how many requests.
    pub download_bytes: u64,
    pub download_requests: u64,
    /// Bytes found in local releases.
    pub reuse_bytes: u64,
    /// The plan as `ferry update` prints it.
    pub line: String,
}

/// What [`Updater::check`] found.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Check {
    /// A release to install, and its plan.
    Available(Plan),
    /// The newest release this root may run is active.
    UpToDate(String),
    /// A rollback pinned the root (`apply` with `force` leaves the pin).
    Pinned { pinned: String, newest: String },
    /// No release of the channel is open to this root (rollout, requirements, labels).
    NothingEligible,
}

/// A stage of [`Updater::apply`], as it starts.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stage {
    /// Fetching and building `version` beside the active release.
    Downloading { version: String },
    /// Running `pre_switch` before switching to `version`.
    Switching { version: String },
    /// Running `post_switch` and the health check of `version`, now active.
    HealthChecking { version: String },
}

/// What [`Updater::apply`] or [`Updater::rollback`] did.
#[derive(Clone, Debug)]
pub struct Applied {
    pub from: Option<String>,
    /// The release active now.
    pub to: Option<String>,
    /// What happened, as `ferry update --json` says it: `installed`, `up-to-date`,
    /// `pinned`, `nothing-eligible`, `rolled-back` (a rollback).
    pub result: String,
    /// The revoked release a recall left (`installed` only).
    pub recalled_from: Option<String>,
    /// False when the release was already active.
    pub changed: bool,
    pub bytes_downloaded: u64,
    pub requests: u64,
    pub bytes_reused: u64,
    pub seconds: f64,
}

/// A root's state, as `ferry status` shows it.
#[derive(Clone, Debug)]
pub struct Status {
    pub channel: String,
    pub active: Option<String>,
    /// Retained releases, oldest first.
    pub retained: Vec<String>,
    pub pinned: Option<String>,
    pub agent_id: String,
}

/// An install root made by `ferry init`.
#[derive(Clone, Debug)]
pub struct Updater {
    root: PathBuf,
    lock: LockArgs,
    force: bool,
    max_download: Option<u64>,
}

impl Updater {
    /// The root at `root`; it must have been made by `ferry init`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Updater, Error> {
        // reqwest is built without a default TLS crypto provider: the library installs
        // ring, as the binary does (a second install is harmless and ignored).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let root = root.into();
        if !Layout::new(&root).config().exists() {
            return Err(Error::Other(format!(
                "{} is not a ferry root (no .ferry/config.toml): run `ferry init` first",
                root.display()
            )));
        }
        Ok(Updater {
            root,
            lock: LockArgs::default(),
            force: false,
            max_download: None,
        })
    }

    /// Update past a rollback's pin and this root's bad marks.
    pub fn force(mut self, force: bool) -> Updater {
        self.force = force;
        self
    }

    /// Refuse plans needing more than `bytes` (else the root's `max_download`).
    pub fn max_download(mut self, bytes: Option<u64>) -> Updater {
        self.max_download = bytes.or(self.max_download);
        self
    }

    /// How long to wait for another ferry holding the root (else its `lock_timeout`).
    pub fn lock_timeout(mut self, timeout: Option<std::time::Duration>) -> Updater {
        self.lock.lock_timeout = timeout;
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// What an update would do and download, from the head and the manifest alone
    /// (at most 2 requests); nothing is written. Over the data budget or the free
    /// space it fails as the update would.
    pub fn check(&self) -> Result<Check, Error> {
        self.check_with(Out::new(false).quiet(true))
    }

    pub(crate) fn check_with(&self, out: Out) -> Result<Check, Error> {
        Ok(dry_run::check(self, out)?)
    }

    /// Installs the release `plan` names — or a newer one, when the channel moved on
    /// since the plan was made — and switches to it with the root's hooks; `progress`
    /// hears each stage as it starts. A release that fails its health check is
    /// switched back from and reported as [`Error::Policy`]. A plan made for another
    /// active release (the root changed since) is refused: check again.
    pub fn apply(&self, plan: &Plan, progress: &dyn Fn(Stage)) -> Result<Applied, Error> {
        let active = self.status()?.active;
        if active != plan.from {
            return Err(Error::Other(format!(
                "the plan was made with {} active, but {} is active now: check again",
                plan.from.as_deref().unwrap_or("nothing"),
                active.as_deref().unwrap_or("nothing")
            )));
        }
        self.update_with(Out::new(false).quiet(true), Some(progress))
    }

    /// `ferry update`: the newest release this root may run, printing to `out`.
    pub(crate) fn update_with(
        &self,
        out: Out,
        progress: Option<&dyn Fn(Stage)>,
    ) -> Result<Applied, Error> {
        let stage = |state: AgentState, version: &str| {
            let version = version.to_string();
            let s = match state {
                AgentState::Downloading => Stage::Downloading { version },
                AgentState::Switching => Stage::Switching { version },
                AgentState::HealthChecking => Stage::HealthChecking { version },
                _ => return,
            };
            if let Some(p) = progress {
                p(s);
            }
        };
        Ok(update::perform(self, &stage, out)?)
    }

    /// Switches back `steps` retained releases (an instant local switch) and pins the
    /// root there until `apply` with `force`.
    pub fn rollback(&self, steps: usize) -> Result<Applied, Error> {
        self.rollback_with(rollback::Target::Steps(steps), Out::new(false).quiet(true))
    }

    /// Switches to `version`, retained or fetched from the channel, and pins it.
    pub fn rollback_to(&self, version: &str) -> Result<Applied, Error> {
        self.rollback_with(
            rollback::Target::Version(version.to_string()),
            Out::new(false).quiet(true),
        )
    }

    pub(crate) fn rollback_with(
        &self,
        target: rollback::Target,
        out: Out,
    ) -> Result<Applied, Error> {
        Ok(rollback::perform(self, target, out)?)
    }

    /// The root's channel, active and retained releases, pin and agent id.
    pub fn status(&self) -> Result<Status, Error> {
        Ok(status::read(self)?)
    }

    pub(crate) fn lock(&self) -> &LockArgs {
        &self.lock
    }

    pub(crate) fn forced(&self) -> bool {
        self.force
    }

    pub(crate) fn download_budget(&self) -> Option<u64> {
        self.max_download
    }
}

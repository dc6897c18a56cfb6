//! The updater as a library: what `ferry update`, `ferry update --dry-run`, `ferry
//! rollback` and `ferry status` do, for an application that updates itself. The
//! `ferry` commands call these same functions and only add printing.
//!
//! [`Updater::check`] (or [`Updater::plan`]) fetches the signed head and manifest and
//! plans the update from them and what is on disk: a [`Plan`], whose
//! [`UpdatePlan`] says for every chunk of the release where it comes from (a local
//! copy, a diff object from a named base, an archive range) and lists the ways to get
//! them with their bytes and requests, the chosen one first and its fallbacks after.
//! [`Updater::apply`] executes exactly that plan, moving on to the next route when a
//! diff fails, and refuses with [`Error::Stale`] when the channel or the disk no longer
//! match it; [`Applied`] reports what the plan said and what was spent.
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

pub use ferry_format::plan::{HopPlan, Region, Route, Source, UpdatePlan, Via};

/// What an application's root follows: [`Updater::new`] initialises the root with it
/// the first time (as `ferry init` does) and opens it afterwards.
///
/// ```
/// use ferry_client::updater::Config;
///
/// let config = Config::new("/opt/myapp", "https://updates.example/myapp", "stable", "/opt/myapp.pub");
/// assert_eq!(config.keep, 3);
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Config {
    /// The install root (created if missing).
    pub root: PathBuf,
    /// Repository base URLs (http://, https:// or file://), tried in order.
    pub servers: Vec<String>,
    /// The channel to follow.
    pub channel: String,
    /// The public key file (`ferry-public-key:v1:...`) trusted to sign the channel.
    pub public_key: PathBuf,
    /// Releases kept installed for rollback.
    pub keep: u64,
}

impl Config {
    /// A root following `channel` of the repository at `server`, signed by the key in
    /// `public_key`, keeping 3 releases.
    ///
    /// ```
    /// let config = ferry_client::updater::Config::new("/opt/myapp", "file:///srv/repo", "beta", "key.pub");
    /// assert_eq!(config.servers, ["file:///srv/repo"]);
    /// ```
    pub fn new(
        root: impl Into<PathBuf>,
        server: impl Into<String>,
        channel: impl Into<String>,
        public_key: impl Into<PathBuf>,
    ) -> Config {
        Config {
            root: root.into(),
            servers: vec![server.into()],
            channel: channel.into(),
            public_key: public_key.into(),
            keep: 3,
        }
    }
}

/// An update failed; the variant is the kind of failure (the same as `ferry`'s exit
/// status: `ferry --help`) and the text says what and what to do next.
///
/// ```
/// use ferry_client::updater::{Error, Updater};
///
/// let dir = std::env::temp_dir().join("not-a-ferry-root");
/// match Updater::open(&dir) {
///     Err(Error::Other(text)) => assert!(text.contains("ferry init")),
///     other => panic!("{other:?}"),
/// }
/// ```
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
    /// [`Updater::apply`] was given a plan that no longer holds: the channel now
    /// offers another release, or what is on disk changed since it was made. Nothing
    /// was downloaded for it; check again.
    #[error("{0}")]
    Stale(String),
    /// Anything else (a root that is not a ferry root, a damaged state file, ...).
    #[error("{0}")]
    Other(String),
}

impl From<anyhow::Error> for Error {
    fn from(e: anyhow::Error) -> Error {
        let text = format!("{e:#}");
        if e.chain()
            .any(|c| c.downcast_ref::<update::Stale>().is_some())
        {
            return Error::Stale(text);
        }
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

/// An update planned by [`Updater::check`]: the release, the plan of where its bytes
/// come from, and the verified manifest it was made from, which [`Updater::apply`]
/// builds the release with.
///
/// ```no_run
/// use ferry_client::updater::{Check, Updater, Via};
///
/// # fn main() -> Result<(), ferry_client::updater::Error> {
/// if let Check::Available(plan) = Updater::open("/opt/myapp")?.check()? {
///     let route = plan.update.chosen();
///     println!("{} -> {} via {}: {} bytes in {} request(s)",
///         plan.from.as_deref().unwrap_or("none"), plan.to,
///         route.via.name(), route.download_bytes, route.requests);
///     for fallback in plan.update.fallbacks() {
///         println!("  else via {}: {} bytes", fallback.via.name(), fallback.download_bytes);
///     }
///     assert_eq!(plan.update.archive().via, Via::Archive);
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Plan {
    pub from: Option<String>,
    pub to: String,
    /// Where every byte comes from, the chosen route first, then its fallbacks.
    pub update: UpdatePlan,
    /// The chosen route as `ferry update` prints it (the two hops' line when `hops`
    /// is set).
    pub line: String,
    /// Two hops through an intermediate release (FORMAT.md §8), when they cost fewer
    /// bytes than `update`'s chosen route: what the update executes then, with
    /// `update` as its fallback.
    pub hops: Option<Box<Hops>>,
    manifest: Vec<u8>,
}

/// Two hops a [`Plan`] goes through: the diff from a held release to `plan.via`, then
/// the diff from there to the target, both priced on this machine.
#[derive(Clone, Debug)]
pub struct Hops {
    pub plan: HopPlan,
    /// The intermediate release's manifest, as fetched and verified for the plan.
    manifest: Vec<u8>,
}

impl Hops {
    pub(crate) fn new(plan: HopPlan, manifest: Vec<u8>) -> Hops {
        Hops { plan, manifest }
    }

    pub(crate) fn manifest_bytes(&self) -> &[u8] {
        &self.manifest
    }
}

impl Plan {
    pub(crate) fn new(update: UpdatePlan, line: String, manifest: Vec<u8>) -> Plan {
        Plan {
            from: update.from.clone(),
            to: update.to.clone(),
            update,
            line,
            hops: None,
            manifest,
        }
    }

    pub(crate) fn through(mut self, hops: Hops, line: String) -> Plan {
        self.hops = Some(Box::new(hops));
        self.line = line;
        self
    }

    /// How the chosen route gets the missing bytes.
    ///
    /// ```no_run
    /// # use ferry_client::updater::{Check, Updater};
    /// # fn main() -> Result<(), ferry_client::updater::Error> {
    /// if let Some(plan) = Updater::open("/opt/myapp")?.plan()? {
    ///     println!("via {}", plan.via().name());
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn via(&self) -> &Via {
        match &self.hops {
            // The second hop's route builds the target, as `Applied::via` says.
            Some(h) => &h.plan.second.chosen().via,
            None => &self.update.chosen().via,
        }
    }

    /// Bytes of release data the chosen route downloads (beyond the head and manifest).
    /// With two hops: the intermediate manifest and both diffs, as `ferry update` spends
    /// them; [`Updater::apply`] spends this less the intermediate manifest, which the
    /// check that made the plan has fetched already.
    ///
    /// ```no_run
    /// # use ferry_client::updater::Updater;
    /// # fn main() -> Result<(), ferry_client::updater::Error> {
    /// let updater = Updater::open("/opt/myapp")?;
    /// if let Some(plan) = updater.plan()? {
    ///     if plan.download_bytes() > 100 << 20 {
    ///         println!("waiting for a cheaper connection");
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn download_bytes(&self) -> u64 {
        match &self.hops {
            Some(h) => h.plan.download_bytes,
            None => self.update.chosen().download_bytes,
        }
    }

    /// Requests the chosen route makes for them (with two hops: the intermediate
    /// manifest, which [`Updater::apply`] does not fetch again, and one per diff).
    ///
    /// ```no_run
    /// # use ferry_client::updater::Updater;
    /// # fn main() -> Result<(), ferry_client::updater::Error> {
    /// if let Some(plan) = Updater::open("/opt/myapp")?.plan()? {
    ///     println!("{} request(s)", plan.download_requests());
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn download_requests(&self) -> u64 {
        match &self.hops {
            Some(h) => h.plan.requests,
            None => self.update.chosen().requests,
        }
    }

    /// Uncompressed bytes copied from local releases instead of downloaded (all of
    /// them when an intact copy is already on disk).
    ///
    /// ```no_run
    /// # use ferry_client::updater::Updater;
    /// # fn main() -> Result<(), ferry_client::updater::Error> {
    /// if let Some(plan) = Updater::open("/opt/myapp")?.plan()? {
    ///     println!("{} bytes reused", plan.reuse_bytes());
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn reuse_bytes(&self) -> u64 {
        match self.via() {
            Via::OnDisk { .. } => self.update.chosen().regions.iter().map(|r| r.bytes).sum(),
            _ => self.update.reuse_bytes,
        }
    }

    pub(crate) fn manifest_bytes(&self) -> &[u8] {
        &self.manifest
    }
}

/// What [`Updater::check`] found.
///
/// ```no_run
/// use ferry_client::updater::{Check, Updater};
///
/// # fn main() -> Result<(), ferry_client::updater::Error> {
/// match Updater::open("/opt/myapp")?.check()? {
///     Check::Available(plan) => println!("{}", plan.line),
///     Check::UpToDate(v) => println!("up to date ({v})"),
///     Check::Pinned { pinned, newest } => println!("pinned to {pinned}; {newest} is out"),
///     Check::NothingEligible | _ => println!("nothing to install"),
/// }
/// # Ok(())
/// # }
/// ```
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
///
/// ```
/// use ferry_client::updater::Stage;
///
/// let progress = |stage: Stage| match stage {
///     Stage::Downloading { version } => format!("downloading {version}"),
///     Stage::Switching { version } => format!("switching to {version}"),
///     Stage::HealthChecking { version } => format!("checking {version}"),
///     _ => String::new(),
/// };
/// assert_eq!(progress(Stage::Downloading { version: "2.0.0".into() }), "downloading 2.0.0");
/// ```
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

/// What [`Updater::apply`] or [`Updater::rollback`] did: what the plan said
/// (`via`, `planned_*`) beside what was spent (`bytes_downloaded`, `requests`, which
/// also count the head and manifest, and any diff that failed before its fallback).
///
/// ```no_run
/// use ferry_client::updater::{Check, Updater};
///
/// # fn main() -> Result<(), ferry_client::updater::Error> {
/// let updater = Updater::open("/opt/myapp")?;
/// if let Check::Available(plan) = updater.check()? {
///     let a = updater.apply(&plan, &|_| {})?;
///     println!("planned {} bytes, spent {} in {} requests",
///         a.planned_bytes, a.bytes_downloaded, a.requests);
/// }
/// # Ok(())
/// # }
/// ```
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
    /// The route of the plan that built the release (none when nothing was built).
    pub via: Option<Via>,
    /// The intermediate release when the update went through one (two hops, FORMAT.md
    /// §8): `via` is then the second hop's route.
    pub through: Option<String>,
    /// What the plan (both hops, with the intermediate manifest) was to download, and
    /// in how many requests.
    pub planned_bytes: u64,
    pub planned_requests: u64,
}

/// A root's state, as `ferry status` shows it.
///
/// ```no_run
/// # fn main() -> Result<(), ferry_client::updater::Error> {
/// let s = ferry_client::updater::Updater::open("/opt/myapp")?.status()?;
/// println!("{}: {} (retained {:?})", s.channel, s.active.as_deref().unwrap_or("none"), s.retained);
/// # Ok(())
/// # }
/// ```
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
///
/// ```no_run
/// use ferry_client::updater::Updater;
///
/// # fn main() -> Result<(), ferry_client::updater::Error> {
/// let updater = Updater::open("/opt/myapp")?
///     .max_download(Some(50 << 20))
///     .lock_timeout(Some(std::time::Duration::from_secs(30)));
/// println!("{}", updater.root().display());
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Updater {
    root: PathBuf,
    lock: LockArgs,
    force: bool,
    max_download: Option<u64>,
}

impl Updater {
    /// Opens the root `config` names, initialising it first when it has no
    /// configuration yet (no network is used: a wrong server or key shows at the first
    /// [`Updater::check`]). A root that follows another channel or other servers is
    /// refused rather than silently re-pointed: `ferry init --force` changes that.
    ///
    /// ```
    /// use ferry_client::updater::{Config, Error, Updater};
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let key = ferry_format::keys::SecretKey::generate().unwrap().public();
    /// let key_file = dir.path().join("ferry.pub");
    /// std::fs::write(&key_file, key.to_text()).unwrap();
    /// let root = dir.path().join("app");
    /// let config = Config::new(&root, "http://127.0.0.1:1", "stable", &key_file);
    ///
    /// let first = Updater::new(config.clone()).unwrap(); // initialises the root
    /// assert!(root.join(".ferry/config.toml").exists());
    /// let again = Updater::new(config.clone()).unwrap(); // opens it as it is
    /// assert_eq!(first.root(), again.root());
    ///
    /// let mut other = config;
    /// other.channel = "beta".into();
    /// match Updater::new(other) {
    ///     Err(Error::Other(text)) => assert!(text.contains("ferry init --force"), "{text}"),
    ///     got => panic!("{got:?}"),
    /// }
    /// ```
    pub fn new(config: Config) -> Result<Updater, Error> {
        // init checks the proxy and CA settings by building an HTTP client.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let layout = Layout::new(&config.root);
        if layout.config().exists() {
            let have = crate::install::config::Config::load(&layout.config())
                .map_err(|e| Error::Other(format!("{}: {e}", layout.config().display())))?;
            if have.channel != config.channel || have.servers != config.servers {
                return Err(Error::Other(format!(
                    "{} follows channel {:?} from {:?}, not channel {:?} from {:?}: run \
                     `ferry init --force` to change what it follows",
                    config.root.display(),
                    have.channel,
                    have.servers,
                    config.channel,
                    config.servers
                )));
            }
        } else {
            crate::cli::init_root(&config).map_err(|e| Error::Other(format!("{e:#}")))?;
        }
        Updater::open(config.root)
    }

    /// The root at `root`; it must have been made by `ferry init`.
    ///
    /// ```
    /// use ferry_client::updater::Updater;
    ///
    /// let fresh = std::env::temp_dir().join(format!("fresh-root-{}", std::process::id()));
    /// std::fs::create_dir_all(&fresh).unwrap();
    /// let err = Updater::open(&fresh).unwrap_err();
    /// assert!(err.to_string().contains("not a ferry root"), "{err}");
    /// ```
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
    ///
    /// ```no_run
    /// # fn main() -> Result<(), ferry_client::updater::Error> {
    /// let updater = ferry_client::updater::Updater::open("/opt/myapp")?.force(true);
    /// # Ok(())
    /// # }
    /// ```
    pub fn force(mut self, force: bool) -> Updater {
        self.force = force;
        self
    }

    /// Refuse plans needing more than `bytes` (else the root's `max_download`):
    /// [`Updater::check`] and [`Updater::apply`] fail with [`Error::Policy`].
    ///
    /// ```no_run
    /// # fn main() -> Result<(), ferry_client::updater::Error> {
    /// use ferry_client::updater::{Error, Updater};
    /// match Updater::open("/opt/myapp")?.max_download(Some(1 << 20)).check() {
    ///     Err(Error::Policy(why)) => println!("too big for now: {why}"),
    ///     other => println!("{other:?}"),
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn max_download(mut self, bytes: Option<u64>) -> Updater {
        self.max_download = bytes.or(self.max_download);
        self
    }

    /// How long to wait for another ferry holding the root (else its `lock_timeout`).
    ///
    /// ```no_run
    /// # fn main() -> Result<(), ferry_client::updater::Error> {
    /// use std::time::Duration;
    /// let updater = ferry_client::updater::Updater::open("/opt/myapp")?
    ///     .lock_timeout(Some(Duration::from_secs(5)));
    /// # Ok(())
    /// # }
    /// ```
    pub fn lock_timeout(mut self, timeout: Option<std::time::Duration>) -> Updater {
        self.lock.lock_timeout = timeout;
        self
    }

    /// The install root.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), ferry_client::updater::Error> {
    /// let updater = ferry_client::updater::Updater::open("/opt/myapp")?;
    /// assert_eq!(updater.root(), std::path::Path::new("/opt/myapp"));
    /// # Ok(())
    /// # }
    /// ```
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// What an update would do and download, from the head and the manifest alone
    /// (at most 3 requests: two hops, FORMAT.md §8, add the intermediate manifest); nothing is written. Over the data budget or the free
    /// space it fails as the update would.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), ferry_client::updater::Error> {
    /// use ferry_client::updater::{Check, Updater};
    /// if let Check::UpToDate(v) = Updater::open("/opt/myapp")?.check()? {
    ///     println!("running the newest release, {v}");
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn check(&self) -> Result<Check, Error> {
        self.check_with(Out::new(false).quiet(true))
    }

    /// The plan of the update [`Updater::check`] finds, if there is one to install.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), ferry_client::updater::Error> {
    /// use ferry_client::updater::{Source, Updater};
    /// if let Some(plan) = Updater::open("/opt/myapp")?.plan()? {
    ///     for region in &plan.update.chosen().regions {
    ///         let from = match region.source {
    ///             Source::Local => "a local copy",
    ///             Source::Diff => "the diff",
    ///             _ => "the archive",
    ///         };
    ///         println!("chunks {:?} ({} bytes) from {from}", region.chunks, region.bytes);
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn plan(&self) -> Result<Option<Plan>, Error> {
        Ok(match self.check()? {
            Check::Available(plan) => Some(plan),
            _ => None,
        })
    }

    pub(crate) fn check_with(&self, out: Out) -> Result<Check, Error> {
        Ok(dry_run::check(self, out)?)
    }

    /// Installs the release `plan` names by executing `plan` — its chosen route, then
    /// its fallbacks in order when a diff fails — and switches to it with the root's
    /// hooks; `progress` hears each stage as it starts. A plan that no longer holds
    /// (another release active or offered now, or the disk changed since) is refused
    /// with [`Error::Stale`] before anything is downloaded. A release that fails its
    /// health check is switched back from and reported as [`Error::Policy`].
    ///
    /// ```no_run
    /// # fn main() -> Result<(), ferry_client::updater::Error> {
    /// use ferry_client::updater::{Error, Updater};
    /// let updater = Updater::open("/opt/myapp")?;
    /// if let Some(plan) = updater.plan()? {
    ///     match updater.apply(&plan, &|stage| eprintln!("{stage:?}")) {
    ///         Err(Error::Stale(_)) => println!("the channel moved on: plan again"),
    ///         other => println!("{other:?}"),
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn apply(&self, plan: &Plan, progress: &dyn Fn(Stage)) -> Result<Applied, Error> {
        let active = self.status()?.active;
        if active != plan.from {
            return Err(Error::Stale(format!(
                "the plan was made with {} active, but {} is active now: check again",
                plan.from.as_deref().unwrap_or("nothing"),
                active.as_deref().unwrap_or("nothing")
            )));
        }
        self.update_with(Out::new(false).quiet(true), Some(plan), Some(progress))
    }

    /// `ferry update`: the newest release this root may run, printing to `out`.
    pub(crate) fn update_with(
        &self,
        out: Out,
        plan: Option<&Plan>,
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
        Ok(update::perform(self, plan, &stage, out)?)
    }

    /// Switches back `steps` retained releases (an instant local switch) and pins the
    /// root there until `apply` with `force`.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), ferry_client::updater::Error> {
    /// let back = ferry_client::updater::Updater::open("/opt/myapp")?.rollback(1)?;
    /// println!("{} -> {}", back.from.as_deref().unwrap_or("none"), back.to.as_deref().unwrap_or("none"));
    /// # Ok(())
    /// # }
    /// ```
    pub fn rollback(&self, steps: usize) -> Result<Applied, Error> {
        self.rollback_with(rollback::Target::Steps(steps), Out::new(false).quiet(true))
    }

    /// Switches to `version`, retained or fetched from the channel, and pins it.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), ferry_client::updater::Error> {
    /// ferry_client::updater::Updater::open("/opt/myapp")?.rollback_to("1.4.2")?;
    /// # Ok(())
    /// # }
    /// ```
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
    ///
    /// ```no_run
    /// # fn main() -> Result<(), ferry_client::updater::Error> {
    /// let status = ferry_client::updater::Updater::open("/opt/myapp")?.status()?;
    /// if let Some(pin) = status.pinned {
    ///     println!("pinned to {pin} by a rollback");
    /// }
    /// # Ok(())
    /// # }
    /// ```
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

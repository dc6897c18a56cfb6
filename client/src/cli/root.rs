//! An opened install root: layout, lock, configuration, state, and the trusted key.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use ferry_format::head::ReleaseRef;
use ferry_format::id::{Digest, ObjectRef};
use ferry_format::keylist::TrustRoot;
use ferry_format::keys::PublicKey;
use ferry_format::manifest::Manifest;
use ferry_format::verified::{Verified, verify_pinned_manifest};

use super::LockArgs;
use crate::apply::source::LocalRelease;
use crate::install::activate::{current_folder, current_version};
use crate::install::config::{self, Config};
use crate::install::layout::Layout;
use crate::install::lock::{LockMode, RootLock};
use crate::install::state::{ReleaseRecord, State};

/// A root held under its lock for the duration of one command.
pub struct Root {
    pub layout: Layout,
    pub config: Config,
    pub state: State,
    _lock: RootLock,
}

impl Root {
    /// Locks and loads an initialised root, waiting for the lock as long as `lock`
    /// says, else as the root's configuration says.
    pub fn open(root: &Path, mode: LockMode, lock: &LockArgs) -> Result<Root> {
        let layout = Layout::new(root);
        config::migrate(&layout).context("converting .ferry/config.json to config.toml")?;
        if !layout.config().exists() {
            bail!(
                "{} is not a ferry root (no .ferry/config.toml): run `ferry init` first",
                root.display()
            );
        }
        // Read before locking to learn the timeout: the file is only ever replaced
        // whole, so an unlocked read sees one complete version of it.
        let timeout = match lock.lock_timeout {
            Some(t) => t,
            None => Config::load(&layout.config())?.lock_timeout(),
        };
        let lock = RootLock::acquire(&layout.lock(), mode, timeout)?;
        let config = Config::load(&layout.config())?;
        let mut state = State::load(&layout.state())?;
        adopt_current(&layout, &mut state);
        let mut root = Root {
            layout,
            config,
            state,
            _lock: lock,
        };
        if mode == LockMode::Exclusive {
            root.adopt_current_folder()?;
        }
        Ok(root)
    }

    /// After a crash between switching `current` to a repaired copy and saving the
    /// state, `current` points at a folder the state does not record for its release
    /// yet. The link is the truth (it only ever points at a complete, synced tree), so
    /// the record follows it; the superseded folder is then pruned like any orphan.
    fn adopt_current_folder(&mut self) -> Result<()> {
        let Some(folder) = current_folder(&self.layout) else {
            return Ok(());
        };
        let version = Layout::folder_version(&folder).to_string();
        let Some(record) = self
            .state
            .releases
            .iter_mut()
            .find(|r| r.version == version)
        else {
            return Ok(());
        };
        if record.folder() == folder || !self.layout.release_dir(&folder).is_dir() {
            return Ok(());
        }
        tracing::info!("{version} is active in {folder}: recording it");
        record.folder = Some(folder);
        self.save_state()
    }

    /// The folder of a retained release.
    pub fn release_dir(&self, record: &ReleaseRecord) -> PathBuf {
        self.layout.release_dir(record.folder())
    }

    pub fn save_state(&self) -> Result<()> {
        self.state
            .save(&self.layout.state())
            .context("saving state")
    }

    /// The root of trust: the newest key list this root has accepted (stored in
    /// `.ferry/keys/`), or the single public key of `ferry init`.
    pub fn trust(&self) -> Result<TrustRoot> {
        trust_of(&self.layout, &self.config)
    }

    /// What history records as the signer: the single key's id, or the key list version.
    pub fn key_id(&self) -> String {
        match self.trust() {
            Ok(TrustRoot::SingleKey(k)) => k.id().to_hex()[..16].to_string(),
            Ok(TrustRoot::List(l)) => format!("key-list-v{}", l.version),
            Err(_) => "invalid-key".into(),
        }
    }

    /// Reads a retained release's stored manifest and checks it against the hash this
    /// root recorded when it verified and installed it (signatures were checked then;
    /// a later key rotation must not orphan installed releases).
    pub fn load_manifest(&self, record: &ReleaseRecord) -> Result<Verified<Manifest>> {
        let path = self.layout.manifest(&record.version);
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let release = ReleaseRef {
            version: record.version.clone(),
            manifest: ObjectRef {
                hash: Digest::from_hex(&record.manifest_hash)
                    .with_context(|| format!("manifest hash of {} in state", record.version))?,
                size: record.manifest_size,
            },
        };
        verify_pinned_manifest(
            &bytes,
            &release,
            self.state.channel_of(record, &self.config.channel),
        )
        .with_context(|| format!("re-verifying stored manifest {}", path.display()))
    }

    /// Every retained release whose manifest still verifies, as chunk sources. A
    /// release that fails is skipped with a warning: it only costs reuse.
    pub fn local_releases(&self) -> Vec<LocalRelease> {
        self.state
            .releases
            .iter()
            .filter_map(|r| match self.load_manifest(r) {
                Ok(manifest) => Some(LocalRelease {
                    version: r.version.clone(),
                    tree: self.release_dir(r),
                    manifest,
                }),
                Err(e) => {
                    tracing::warn!("not reusing chunks of {}: {e:#}", r.version);
                    None
                }
            })
            .collect()
    }
}

/// The single public key of `ferry init`, from a root's configuration.
pub fn public_key_of(layout: &Layout, config: &Config) -> Result<PublicKey> {
    if config.public_key.trim().is_empty() {
        bail!(
            "no trusted key: the key list this root was initialised with is missing from .ferry/keys/"
        );
    }
    PublicKey::from_text(&config.public_key)
        .with_context(|| format!("public key in {}", layout.config().display()))
}

/// [`Root::trust`] from a root's files, without holding its lock (`ferry doctor`
/// must not wait for a running update).
pub fn trust_of(layout: &Layout, config: &Config) -> Result<TrustRoot> {
    let dir = layout.keys();
    let newest = match std::fs::read_dir(&dir) {
        Ok(items) => items
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
            .max(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    match newest {
        Some(v) => {
            let path = layout.key_list(v);
            let bytes =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            TrustRoot::from_stored(&bytes)
                .with_context(|| format!("trusted key list {}", path.display()))
        }
        None => Ok(TrustRoot::SingleKey(public_key_of(layout, config)?)),
    }
}

/// `current` is what runs. A crash between switching it and saving the state leaves
/// the state naming the previous release as active; every switch saves the record of
/// its release first, so a recorded release that `current` points to is the active
/// one. (Saved by the next command that writes the state.)
fn adopt_current(layout: &Layout, state: &mut State) {
    let Some(linked) = current_version(layout) else {
        return;
    };
    if state.active.as_deref() != Some(linked.as_str()) && state.release(&linked).is_some() {
        tracing::warn!(
            "current points to {linked}, the state says {}: an earlier command stopped right after switching; {linked} is active",
            state.active.as_deref().unwrap_or("none")
        );
        state.active = Some(linked);
    }
}

//! An opened install root: layout, lock, configuration, state, and the trusted key.

use std::path::Path;

use anyhow::{Context, Result, bail};
use ferry_format::envelope::TrustedKeys;
use ferry_format::head::ReleaseRef;
use ferry_format::id::{Digest, ObjectRef};
use ferry_format::keys::PublicKey;
use ferry_format::manifest::Manifest;
use ferry_format::verified::{Verified, verify_manifest};

use crate::apply::source::LocalRelease;
use crate::install::config::Config;
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
    /// Locks and loads an initialised root.
    pub fn open(root: &Path, mode: LockMode) -> Result<Root> {
        let layout = Layout::new(root);
        if !layout.config().exists() {
            bail!(
                "{} is not a ferry root (no .ferry/config.json): run `ferry init` first",
                root.display()
            );
        }
        let lock = RootLock::acquire(&layout.lock(), mode)
            .with_context(|| format!("locking {}", layout.lock().display()))?;
        let config = Config::load(&layout.config())?;
        let state = State::load(&layout.state())?;
        Ok(Root {
            layout,
            config,
            state,
            _lock: lock,
        })
    }

    pub fn save_state(&self) -> Result<()> {
        self.state
            .save(&self.layout.state())
            .context("saving state")
    }

    pub fn public_key(&self) -> Result<PublicKey> {
        PublicKey::from_text(&self.config.public_key)
            .with_context(|| format!("public key in {}", self.layout.config().display()))
    }

    pub fn trusted(&self) -> Result<TrustedKeys> {
        Ok(TrustedKeys::single(self.public_key()?))
    }

    /// First 16 hex characters of the trusted key's id, for history.
    pub fn key_id(&self) -> String {
        self.public_key()
            .map(|k| k.id().to_hex()[..16].to_string())
            .unwrap_or_else(|_| "invalid-key".into())
    }

    /// Reads and re-verifies the stored manifest of a retained release.
    pub fn load_manifest(
        &self,
        record: &ReleaseRecord,
        trusted: &TrustedKeys,
    ) -> Result<Verified<Manifest>> {
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
        verify_manifest(&bytes, &release, &self.config.channel, trusted)
            .with_context(|| format!("re-verifying stored manifest {}", path.display()))
    }

    /// Every retained release whose manifest still verifies, as chunk sources. A
    /// release that fails is skipped with a warning: it only costs reuse.
    pub fn local_releases(&self, trusted: &TrustedKeys) -> Vec<LocalRelease> {
        self.state
            .releases
            .iter()
            .filter_map(|r| match self.load_manifest(r, trusted) {
                Ok(manifest) => Some(LocalRelease {
                    version: r.version.clone(),
                    tree: self.layout.version_dir(&r.version),
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

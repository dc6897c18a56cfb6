//! Where everything lives under an install root.
//!
//! ```text
//! ROOT/current -> versions/<version>   the active release (relative symlink)
//! ROOT/versions/<version>/             release trees, never written once renamed in
//! ROOT/.ferry/config.json              what init wrote
//! ROOT/.ferry/state.json               what updates learned (state.rs)
//! ROOT/.ferry/manifests/<version>      signed manifest bytes of each retained release
//! ROOT/.ferry/history.jsonl            one JSON event per line
//! ROOT/.ferry/lock                     flock serialising commands
//! ROOT/.ferry/staging/                 downloads/ and tree-<version>/ being built
//! ```
//! Version strings are safe folder names: the version grammar of the format crate
//! allows only digits, letters, `.` and `-`, and no leading dot.

use std::path::{Path, PathBuf};

/// Paths of one install root.
#[derive(Clone, Debug)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Layout { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn ferry_dir(&self) -> PathBuf {
        self.root.join(".ferry")
    }

    pub fn config(&self) -> PathBuf {
        self.ferry_dir().join("config.json")
    }

    pub fn state(&self) -> PathBuf {
        self.ferry_dir().join("state.json")
    }

    pub fn history(&self) -> PathBuf {
        self.ferry_dir().join("history.jsonl")
    }

    pub fn lock(&self) -> PathBuf {
        self.ferry_dir().join("lock")
    }

    pub fn manifests(&self) -> PathBuf {
        self.ferry_dir().join("manifests")
    }

    pub fn manifest(&self, version: &str) -> PathBuf {
        self.manifests().join(version)
    }

    pub fn staging(&self) -> PathBuf {
        self.ferry_dir().join("staging")
    }

    pub fn downloads(&self) -> PathBuf {
        self.staging().join("downloads")
    }

    pub fn staging_tree(&self, version: &str) -> PathBuf {
        self.staging().join(format!("tree-{version}"))
    }

    pub fn versions(&self) -> PathBuf {
        self.root.join("versions")
    }

    pub fn version_dir(&self, version: &str) -> PathBuf {
        self.versions().join(version)
    }

    /// Trusted key lists, one file per version; the newest is the trust root.
    pub fn keys(&self) -> PathBuf {
        self.ferry_dir().join("keys")
    }

    pub fn key_list(&self, version: u64) -> PathBuf {
        self.keys().join(version.to_string())
    }

    /// This agent's random id (FORMAT.md §5.1 rollout buckets).
    pub fn agent_id(&self) -> PathBuf {
        self.ferry_dir().join("agent_id")
    }

    pub fn current(&self) -> PathBuf {
        self.root.join("current")
    }

    pub fn current_tmp(&self) -> PathBuf {
        self.root.join(".current.tmp")
    }

    /// The symlink target `current` gets for `version`; relative so the root can move.
    pub fn current_target(version: &str) -> PathBuf {
        Path::new("versions").join(version)
    }
}

//! Where everything lives under an install root.
//!
//! ```text
//! ROOT/current -> versions/<folder>    the active release (relative symlink)
//! ROOT/versions/<folder>/              release trees, never written once renamed in
//! ROOT/.ferry/config.toml              what init wrote, edited by hand (config.rs)
//! ROOT/.ferry/ca.pem                   CA certificates copied by init --ca-file
//! ROOT/.ferry/state.json               what updates learned (state.rs)
//! ROOT/.ferry/manifests/<version>      signed manifest bytes of each retained release
//! ROOT/.ferry/history.jsonl            one JSON event per line
//! ROOT/.ferry/lock                     flock serialising commands
//! ROOT/.ferry/staging/                 downloads/ and tree-<version>/ being built
//! ```
//! A release's folder is `<version>`, or `<version>+<n>` for a copy built to repair a
//! damaged one (the damaged folder may still be active, and is never touched while it
//! is): state.json records each release's folder. Version strings are safe folder
//! names and never contain `+`: the version grammar of the format crate allows only
//! digits, letters, `.` and `-`, and no leading dot.

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
        self.ferry_dir().join("config.toml")
    }

    /// The configuration of roots made before `config.toml` (config.rs migrates it).
    pub fn legacy_config(&self) -> PathBuf {
        self.ferry_dir().join("config.json")
    }

    pub fn state(&self) -> PathBuf {
        self.ferry_dir().join("state.json")
    }

    /// The last verified channel head, kept so that a 304 can be answered from it.
    pub fn head(&self) -> PathBuf {
        self.ferry_dir().join("head")
    }

    /// The entity tag the server sent with [`Self::head`].
    pub fn head_etag(&self) -> PathBuf {
        self.ferry_dir().join("head.etag")
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

    /// `versions/<folder>`; see [`Layout::folder_version`] for folder names.
    pub fn release_dir(&self, folder: &str) -> PathBuf {
        self.versions().join(folder)
    }

    /// The version a folder of `versions/` holds: its name up to a `+`.
    pub fn folder_version(folder: &str) -> &str {
        folder.split_once('+').map_or(folder, |(v, _)| v)
    }

    /// A folder name for `version` that is not in `versions/` yet: `<version>`, else
    /// `<version>+2`, `+3`, ...
    pub fn free_folder(&self, version: &str) -> String {
        let taken = |name: &str| std::fs::symlink_metadata(self.release_dir(name)).is_ok();
        if !taken(version) {
            return version.to_string();
        }
        (2u64..)
            .map(|n| format!("{version}+{n}"))
            .find(|name| !taken(name))
            .expect("some suffix is free")
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

    /// The symlink target `current` gets for `folder`; relative so the root can move.
    pub fn current_target(folder: &str) -> PathBuf {
        Path::new("versions").join(folder)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repaired_copies_get_free_folder_names() {
        let t = tempfile::tempdir().unwrap();
        let layout = Layout::new(t.path());
        assert_eq!(layout.free_folder("1.0.0"), "1.0.0");
        std::fs::create_dir_all(layout.release_dir("1.0.0")).unwrap();
        assert_eq!(layout.free_folder("1.0.0"), "1.0.0+2");
        std::fs::create_dir_all(layout.release_dir("1.0.0+2")).unwrap();
        assert_eq!(layout.free_folder("1.0.0"), "1.0.0+3");
        assert_eq!(Layout::folder_version("1.0.0+3"), "1.0.0");
        assert_eq!(Layout::folder_version("2.0-rc1"), "2.0-rc1");
    }
}

//! `ROOT/.ferry/state.json`: what this root has learned and installed, rewritten
//! atomically after every change.
//!
//! `last_sequence` and `last_head_hash` are the anti-replay memory: they are saved as
//! soon as a head verifies, before anything else happens, so a replayed older head is
//! refused even if the update that saw the newer one later failed. `highest_version`
//! is the anti-rollback memory: the highest version ever installed or announced as
//! current by a verified head.

use std::collections::BTreeMap;
use std::path::Path;

use ferry_format::version::Version;
use serde::{Deserialize, Serialize};

use super::{SCHEMA, StoreError, read_json, write_json};

/// The persisted state of a root.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub schema: u32,
    pub last_sequence: Option<u64>,
    /// blake3 hex of the last accepted head's bytes.
    pub last_head_hash: Option<String>,
    pub highest_version: Option<String>,
    /// The version `current` points to.
    pub active: Option<String>,
    pub pin: Option<Pin>,
    /// Unix seconds of the last successful head verification.
    pub last_check: Option<u64>,
    /// Installed releases, in install order.
    pub releases: Vec<ReleaseRecord>,
    /// Manifest hash -> channel, for installed releases of another channel than the
    /// configured one (kept across `ferry init --force` to a new channel, so they can
    /// still be re-verified, reused and rolled back to).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub other_channels: BTreeMap<String, String>,
}

/// Set by a rollback: updates stay on `version` until a release newer than
/// `rolled_back_from` appears (or `--force`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    pub version: String,
    pub rolled_back_from: String,
}

/// One retained release.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseRecord {
    pub version: String,
    /// blake3 hex of the signed manifest bytes in `manifests/<version>`.
    pub manifest_hash: String,
    pub manifest_size: u64,
    /// Unix seconds.
    pub installed_at: u64,
    /// Its folder in `versions/`: the version, or `<version>+<n>` for a repaired copy.
    /// Absent in files of older agents, which always used the version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folder: Option<String>,
}

impl ReleaseRecord {
    /// The folder of `versions/` holding this release.
    pub fn folder(&self) -> &str {
        self.folder.as_deref().unwrap_or(&self.version)
    }
}

impl Default for State {
    fn default() -> Self {
        State {
            schema: SCHEMA,
            last_sequence: None,
            last_head_hash: None,
            highest_version: None,
            active: None,
            pin: None,
            last_check: None,
            releases: Vec::new(),
            other_channels: BTreeMap::new(),
        }
    }
}

impl State {
    /// Loads the state, or a fresh one if the file does not exist yet.
    pub fn load(path: &Path) -> Result<State, StoreError> {
        if !path.exists() {
            return Ok(State::default());
        }
        read_json(path, |s: &State| s.schema)
    }

    pub fn save(&self, path: &Path) -> Result<(), StoreError> {
        crash_point!("client::state::save");
        write_json(path, self)
    }

    pub fn release(&self, version: &str) -> Option<&ReleaseRecord> {
        self.releases.iter().find(|r| r.version == version)
    }

    /// The folder recorded for `version`, if it is retained.
    pub fn folder_of(&self, version: &str) -> Option<&str> {
        self.release(version).map(ReleaseRecord::folder)
    }

    /// Adds or replaces the record of a release.
    pub fn record_release(&mut self, record: ReleaseRecord) {
        self.releases.retain(|r| r.version != record.version);
        self.releases.push(record);
    }

    /// Raises `highest_version` to `version` if it is higher.
    pub fn raise_highest(&mut self, version: &Version) {
        let higher = match self.highest_version.as_deref().map(Version::parse) {
            Some(Ok(h)) => *version > h,
            _ => true,
        };
        if higher {
            self.highest_version = Some(version.to_string());
        }
    }

    /// The channel `record`'s manifest was verified for: `configured` unless it came
    /// from another channel before a re-initialisation.
    pub fn channel_of<'a>(&'a self, record: &ReleaseRecord, configured: &'a str) -> &'a str {
        self.other_channels
            .get(&record.manifest_hash)
            .map_or(configured, String::as_str)
    }

    /// Retained versions, ascending. Unparseable entries (hand-edited state) are skipped.
    pub fn retained(&self) -> Vec<Version> {
        let mut v: Vec<Version> = self
            .releases
            .iter()
            .filter_map(|r| Version::parse(&r.version).ok())
            .collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_schema() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("state.json");
        assert_eq!(State::load(&p).unwrap(), State::default());
        let mut s = State {
            last_sequence: Some(7),
            active: Some("1.0.0".into()),
            pin: Some(Pin {
                version: "1.0.0".into(),
                rolled_back_from: "2.0.0".into(),
            }),
            ..State::default()
        };
        s.record_release(ReleaseRecord {
            version: "1.0.0".into(),
            manifest_hash: "ab".into(),
            manifest_size: 3,
            installed_at: 9,
            folder: Some("1.0.0+2".into()),
        });
        s.raise_highest(&Version::parse("2.0.0").unwrap());
        s.raise_highest(&Version::parse("1.5").unwrap());
        s.save(&p).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["schema"], 1);
        assert_eq!(json["pin"]["rolled_back_from"], "2.0.0");
        let back = State::load(&p).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.highest_version.as_deref(), Some("2.0.0"));

        assert_eq!(back.folder_of("1.0.0"), Some("1.0.0+2"));

        // A record written before folders were recorded reads as `versions/<version>`.
        let old = text.replace(",\n      \"folder\": \"1.0.0+2\"", "");
        assert!(!old.contains("folder"), "{old}");
        let back = serde_json::from_str::<State>(&old).unwrap();
        assert_eq!(back.releases[0].folder, None);
        assert_eq!(back.folder_of("1.0.0"), Some("1.0.0"));

        std::fs::write(&p, text.replace("\"schema\": 1", "\"schema\": 9")).unwrap();
        let e = State::load(&p).unwrap_err().to_string();
        assert!(e.contains("schema 9"), "{e}");
    }
}

//! `ROOT/.ferry/state.json`: what this root has learned and installed, rewritten
//! atomically after every change.
//!
//! `last_sequence` and `last_head_hash` are the anti-replay memory: they are saved as
//! soon as a head verifies, before anything else happens, so a replayed older head is
//! refused even if the update that saw the newer one later failed. `highest_version`
//! is the anti-rollback memory: the highest version ever installed or announced as
//! current by a verified head.

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

        std::fs::write(&p, text.replace("\"schema\": 1", "\"schema\": 9")).unwrap();
        let e = State::load(&p).unwrap_err().to_string();
        assert!(e.contains("schema 9"), "{e}");
    }
}

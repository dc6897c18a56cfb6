//! `ROOT/.ferry/state.json`: what this root has learned and installed, rewritten
//! atomically after every change.
//!
//! `last_sequence` and `last_head_hash` are the anti-replay memory: they are saved as
//! soon as a head verifies, before anything else happens, so a replayed older head is
//! refused even if the update that saw the newer one later failed. `highest_version`
//! is the anti-rollback memory: the highest version ever installed or announced as
//! current by a verified head.
//!
//! Those marks are only as good as the keys that vouched for them: `vouched` records
//! which keys signed the head and the publisher content they came from, so that when
//! a key rotation revokes those keys the marks they set are dropped (fast-forward
//! attack recovery, FORMAT.md §6.3). Fields added after schema 1 have serde
//! defaults, so older state files load unchanged.

use std::collections::BTreeMap;
use std::path::Path;

use ferry_format::envelope::TrustedKeys;
use ferry_format::keylist::TrustRoot;
use ferry_format::verified::RolloutSeen;
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
    /// Highest publisher sequence accepted (the content inside heads).
    #[serde(default)]
    pub last_content_sequence: Option<u64>,
    /// blake3 hex of the publisher content accepted with `last_content_sequence`.
    #[serde(default)]
    pub last_content_hash: Option<String>,
    /// Effective rollout accepted with the last head (an online key may not raise it
    /// again for the same content).
    #[serde(default)]
    pub rollout_seen: Option<RolloutSeen>,
    /// Who signed what set the marks above.
    #[serde(default)]
    pub vouched: Option<Vouched>,
    /// Releases that failed their health check on this root: never installed again
    /// (by the agent or `ferry update`) unless `--force`; a newer release is.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bad: Vec<BadRelease>,
    /// A release built beside the active one, waiting for an update window
    /// (`prestage`) or a retried `pre_switch`; pruning keeps its folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staged: Option<Staged>,
    /// Releases newer than the one chosen at the last check, and why this root did not
    /// take them (rollout, bad mark, requirements): `ferry status` shows them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub held_back: Vec<HeldBack>,
    /// A switch whose `post_switch` and `health_check` have not passed yet: a run
    /// killed during them finishes them next time instead of trusting the release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trial: Option<Trial>,
}

/// The release on trial and the one to switch back to if it fails.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trial {
    pub version: String,
    pub previous: Option<String>,
}

/// Most bad marks kept; the oldest go first (they name releases long superseded).
pub const MAX_BAD: usize = 32;

/// A release marked bad on this root.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadRelease {
    pub version: String,
    pub reason: String,
    /// Unix seconds.
    pub at: u64,
}

/// A release built in `versions/<folder>` but not switched to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Staged {
    pub version: String,
    pub folder: String,
    /// The signed manifest it was built from (stored in `manifests/<version>`), so the
    /// switch re-verifies it locally instead of fetching it again.
    pub manifest_hash: String,
    pub manifest_size: u64,
}

impl Staged {
    /// As a release record, to load and re-verify its stored manifest.
    pub fn record(&self) -> ReleaseRecord {
        ReleaseRecord {
            version: self.version.clone(),
            manifest_hash: self.manifest_hash.clone(),
            manifest_size: self.manifest_size,
            installed_at: 0,
            folder: Some(self.folder.clone()),
            signed_by: Vec::new(),
        }
    }
}

/// A newer release this root did not take, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldBack {
    pub version: String,
    pub reason: String,
}

/// The keys behind the anti-replay and anti-rollback marks.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vouched {
    /// The key list version the signatures were checked with.
    pub key_list: u64,
    /// Key ids (hex) that signed the head's freshness layer: they vouch for
    /// `last_sequence` and `last_head_hash`.
    pub head: Vec<String>,
    /// Key ids (hex) that signed the publisher content: they vouch for
    /// `last_content_sequence`, `last_content_hash` and the current version that
    /// raised `highest_version`.
    pub content: Vec<String>,
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
    /// Key ids (hex) whose signatures on the manifest verified at install; empty for
    /// releases installed before this was recorded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signed_by: Vec<String>,
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
            last_content_sequence: None,
            last_content_hash: None,
            rollout_seen: None,
            vouched: None,
            bad: Vec::new(),
            staged: None,
            held_back: Vec::new(),
            trial: None,
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

    /// Why `version` is marked bad on this root, if it is.
    pub fn bad_reason(&self, version: &str) -> Option<&str> {
        self.bad
            .iter()
            .find(|b| b.version == version)
            .map(|b| b.reason.as_str())
    }

    /// Marks `version` bad (replacing an older mark of it), keeping at most [`MAX_BAD`].
    pub fn mark_bad(&mut self, version: &str, reason: String, at: u64) {
        self.bad.retain(|b| b.version != version);
        self.bad.push(BadRelease {
            version: version.to_string(),
            reason,
            at,
        });
        if self.bad.len() > MAX_BAD {
            self.bad.remove(0);
        }
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

    /// FORMAT.md §6.3, fast-forward recovery (TUF 5.3.11): after the client moved to
    /// `trust`, drops the marks whose signers no longer meet a threshold of it, so a
    /// head signed with a since-revoked key and carrying a huge sequence or version
    /// cannot lock this root out. `highest_version` falls back to the highest
    /// installed release whose manifest signers are still trusted (or unrecorded).
    /// Returns what was forgotten, for the operator.
    pub fn forget_revoked_marks(&mut self, trust: &TrustRoot) -> Vec<String> {
        let Some(v) = self.vouched.clone() else {
            return Vec::new();
        };
        if v.key_list >= trust.version() {
            return Vec::new();
        }
        let publishers = trust.publishers();
        let mut notes = Vec::new();
        let head_ok = v.head.is_empty()
            || meets(&v.head, &publishers)
            || trust.online().is_some_and(|o| meets(&v.head, &o));
        if !head_ok {
            notes.push(format!(
                "forgetting head sequence {} (key list {} no longer trusts the keys that signed it)",
                self.last_sequence.map_or("none".into(), |s| s.to_string()),
                trust.version()
            ));
            self.last_sequence = None;
            self.last_head_hash = None;
            self.rollout_seen = None;
        }
        if !v.content.is_empty() && !meets(&v.content, &publishers) {
            let highest = self
                .releases
                .iter()
                .filter(|r| r.signed_by.is_empty() || meets(&r.signed_by, &publishers))
                .filter_map(|r| Version::parse(&r.version).ok())
                .max();
            notes.push(format!(
                "forgetting publisher sequence {} and highest version {} (key list {} no longer trusts the keys that signed them); highest trusted installed release: {}",
                self.last_content_sequence.map_or("none".into(), |s| s.to_string()),
                self.highest_version.as_deref().unwrap_or("none"),
                trust.version(),
                highest.as_ref().map_or("none".into(), Version::to_string)
            ));
            self.last_content_sequence = None;
            self.last_content_hash = None;
            self.rollout_seen = None;
            self.highest_version = highest.map(|h| h.to_string());
        }
        notes
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

/// At least a threshold of `keys` signed, given their hex ids.
fn meets(ids: &[String], keys: &TrustedKeys) -> bool {
    let trusted: Vec<String> = keys.key_ids().iter().map(|k| k.to_hex()).collect();
    ids.iter().filter(|id| trusted.contains(id)).count() >= keys.threshold()
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
            signed_by: vec!["ab".into()],
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

    #[test]
    fn marks_vouched_by_revoked_keys_are_forgotten() {
        use ferry_format::keylist::KeyList;
        use ferry_format::keys::SecretKey;
        let k = |n: u8| SecretKey::from_seed([n; 32]).public();
        let hex = |n: u8| k(n).id().to_hex();
        let list = |v, publishers: &[ferry_format::keys::PublicKey]| {
            TrustRoot::List(KeyList::new(v, 0, &[k(9)], 1, publishers, 1).unwrap())
        };
        let release = |v: &str, by: u8| ReleaseRecord {
            version: v.into(),
            manifest_hash: "ab".into(),
            manifest_size: 1,
            installed_at: 1,
            folder: None,
            signed_by: vec![hex(by)],
        };
        let poisoned = State {
            last_sequence: Some(1_000_000),
            last_head_hash: Some("x".into()),
            last_content_sequence: Some(1_000_000),
            highest_version: Some("99.0".into()),
            releases: vec![release("1.0", 1), release("99.0", 2)],
            vouched: Some(Vouched {
                key_list: 1,
                head: vec![hex(2)],
                content: vec![hex(2)],
            }),
            ..State::default()
        };
        // Same key list, or a newer one still listing key 2: nothing forgotten.
        let mut s = poisoned.clone();
        assert!(s.forget_revoked_marks(&list(1, &[k(1), k(2)])).is_empty());
        assert!(s.forget_revoked_marks(&list(2, &[k(1), k(2)])).is_empty());
        assert_eq!(s, poisoned);
        // Key 2 revoked: its marks go, the highest trusted installed release stays.
        let notes = s.forget_revoked_marks(&list(2, &[k(1)]));
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert_eq!((s.last_sequence, s.last_content_sequence), (None, None));
        assert_eq!(s.highest_version.as_deref(), Some("1.0"));
    }
}

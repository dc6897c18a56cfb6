//! `ferry init --force` over a root that was already initialised: what of the old
//! trust and memory carries over.
//!
//! - Key lists in `.ferry/keys/` are kept only while they continue the chain of the
//!   trust root this init was given (each one signed by its predecessor's root
//!   keys, FORMAT.md §6.3). Lists accepted under another key would otherwise stay the
//!   trust root and silently override the key the operator just named.
//! - The anti-rollback memory (last head sequence and hash, highest version, pin)
//!   belongs to one channel signed by one trust root. For another channel or another
//!   trust root it would refuse every legitimate head, so it is forgotten; a new
//!   server URL alone keeps it, since a mirror serves the same heads.
//! - Installed releases stay: their manifests are remembered with the channel they
//!   were verified for, so they can still be checked, reused and rolled back to.

use std::path::Path;

use ferry_format::keylist::TrustRoot;

use super::StoreError;
use super::layout::Layout;
use super::state::State;
use crate::fsutil;

/// Versions of the key lists stored in `.ferry/keys/`, ascending.
pub fn stored_key_lists(layout: &Layout) -> Vec<u64> {
    let mut versions: Vec<u64> = std::fs::read_dir(layout.keys())
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    versions.sort_unstable();
    versions
}

/// Removes the stored key lists that do not continue `anchor`'s chain (all of them
/// when there is no usable anchor). Returns the versions removed.
pub fn prune_key_lists(
    layout: &Layout,
    anchor: Option<&TrustRoot>,
) -> Result<Vec<u64>, StoreError> {
    let stored = stored_key_lists(layout);
    let mut keep = Vec::new();
    if let Some(anchor) = anchor {
        let mut trust = anchor.clone();
        keep.push(trust.version());
        loop {
            let next = trust.version() + 1;
            if !stored.contains(&next) {
                break;
            }
            let path = layout.key_list(next);
            let bytes = fsutil::ctx("reading", &path, std::fs::read(&path))?;
            match trust.advance(&bytes) {
                Ok(t) => {
                    keep.push(next);
                    trust = t;
                }
                Err(_) => break,
            }
        }
    }
    let removed: Vec<u64> = stored.into_iter().filter(|v| !keep.contains(v)).collect();
    for v in &removed {
        let path = layout.key_list(*v);
        fsutil::ctx("removing", &path, std::fs::remove_file(&path))?;
    }
    if !removed.is_empty() {
        fsutil::fsync_dir(&layout.keys())?;
    }
    Ok(removed)
}

/// What the root trusts, as a label that changes when the trust root does: the
/// newest stored key list's hash, else the configured public key.
pub fn trust_label(layout: &Layout, public_key: &str) -> String {
    let newest = stored_key_lists(layout).last().copied();
    match newest.and_then(|v| std::fs::read(layout.key_list(v)).ok()) {
        Some(bytes) => format!("key list {}", blake3::hash(&bytes).to_hex()),
        None => format!("key {}", public_key.trim()),
    }
}

/// Forgets the anti-rollback memory of `old_channel` and records the installed
/// releases' channel where it is not `new_channel`. Returns what was forgotten, for
/// the operator (empty if there was nothing to forget).
pub fn forget_memory(state: &mut State, old_channel: &str, new_channel: &str) -> Vec<String> {
    let mut forgot = Vec::new();
    if let Some(seq) = state.last_sequence.take() {
        forgot.push(format!("head sequence {seq}"));
    }
    state.last_head_hash = None;
    if let Some(seq) = state.last_content_sequence.take() {
        forgot.push(format!("publisher sequence {seq}"));
    }
    state.last_content_hash = None;
    state.rollout_seen = None;
    state.vouched = None;
    if let Some(h) = state.highest_version.take() {
        forgot.push(format!("highest version {h}"));
    }
    if let Some(p) = state.pin.take() {
        forgot.push(format!(
            "pin on {} (rolled back from {})",
            p.version, p.rolled_back_from
        ));
    }
    for r in &state.releases {
        state
            .other_channels
            .entry(r.manifest_hash.clone())
            .or_insert_with(|| old_channel.to_string());
    }
    let installed: Vec<&str> = state
        .releases
        .iter()
        .map(|r| r.manifest_hash.as_str())
        .collect();
    state
        .other_channels
        .retain(|hash, channel| channel != new_channel && installed.contains(&hash.as_str()));
    forgot
}

/// `ROOT/.ferry/keys/N` for the message listing removed key lists.
pub fn key_list_names(layout: &Layout, versions: &[u64]) -> String {
    versions
        .iter()
        .map(|v| display(&layout.key_list(*v)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn display(p: &Path) -> String {
    p.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::install::state::{Pin, ReleaseRecord};

    fn record(version: &str, hash: &str) -> ReleaseRecord {
        ReleaseRecord {
            version: version.into(),
            manifest_hash: hash.into(),
            manifest_size: 1,
            installed_at: 1,
            folder: None,
            signed_by: Vec::new(),
        }
    }

    #[test]
    fn forgetting_keeps_releases_and_remembers_their_channel() {
        let mut s = State {
            last_sequence: Some(9),
            last_head_hash: Some("ab".into()),
            highest_version: Some("3.0.0".into()),
            active: Some("2.0.0".into()),
            pin: Some(Pin {
                version: "2.0.0".into(),
                rolled_back_from: "3.0.0".into(),
            }),
            ..State::default()
        };
        s.record_release(record("2.0.0", "h2"));
        s.record_release(record("3.0.0", "h3"));
        let forgot = forget_memory(&mut s, "stable", "beta");
        assert_eq!(forgot.len(), 3, "{forgot:?}");
        assert!(forgot[0].contains("sequence 9"), "{forgot:?}");
        assert_eq!(
            (
                s.last_sequence,
                &s.last_head_hash,
                &s.highest_version,
                &s.pin
            ),
            (None, &None, &None, &None)
        );
        assert_eq!(s.active.as_deref(), Some("2.0.0"));
        assert_eq!(s.releases.len(), 2);
        assert_eq!(s.channel_of(&s.releases[0], "beta"), "stable");

        // Back to stable: its releases verify under the configured channel again.
        s.record_release(record("1.0.0", "b1"));
        s.releases.retain(|r| r.version != "3.0.0");
        forget_memory(&mut s, "beta", "stable");
        assert_eq!(s.other_channels.len(), 1, "{:?}", s.other_channels);
        assert_eq!(s.other_channels["b1"], "beta");
        assert!(forget_memory(&mut s, "stable", "stable").is_empty());
    }
}

//! Which keys a repository's signatures answer to: the latest key list in `keys/`, or
//! the single publishing key when there is none (FORMAT.md §4.5).
//!
//! The build side checks its own output against the same rules an agent applies, so a
//! publish signed by too few keys, or by a revoked one, fails here instead of on the
//! fleet.

use std::path::PathBuf;

use ferry_format::envelope::{ObjectKind, TrustedKeys};
use ferry_format::head::claimed_key_list;
use ferry_format::keylist::{HeadKeys, KeyListRef, TrustRoot, check_ref, key_list_ref};
use ferry_format::keys::{PublicKey, SecretKey};
use ferry_format::layout::key_list_path;

use crate::error::{Error, Result, io_err};
use crate::fsutil::{self, FILE_MODE, Place};
use crate::repo::Repo;

/// The file holding key list `version`.
pub fn key_list_file(repo: &Repo, version: u64) -> PathBuf {
    repo.root().join(key_list_path(version))
}

/// Reads key list `version`, if present.
pub fn read_key_list(repo: &Repo, version: u64) -> Result<Option<Vec<u8>>> {
    fsutil::read_limited(
        &key_list_file(repo, version),
        ObjectKind::KeyList.max_size(),
    )
}

/// The newest key list of the repository: its reference (for heads) and trust root.
pub fn latest_key_list(repo: &Repo) -> Result<Option<(KeyListRef, TrustRoot, Vec<u8>)>> {
    let dir = repo.root().join("keys");
    let items = match std::fs::read_dir(&dir) {
        Ok(items) => items,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("list", &dir)(e)),
    };
    let mut newest = None;
    for item in items {
        let item = item.map_err(io_err("list", &dir))?;
        let Some(v) = item
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        if v >= 1 && key_list_path(v) == format!("keys/{}", item.file_name().to_string_lossy()) {
            newest = newest.max(Some(v));
        }
    }
    let Some(v) = newest else { return Ok(None) };
    let bytes = read_key_list(repo, v)?
        .ok_or_else(|| repo.broken(format!("key list {v} vanished while reading")))?;
    let trust = TrustRoot::from_stored(&bytes).map_err(|source| Error::FormatContext {
        context: format!("key list {}", key_list_file(repo, v).display()),
        source,
    })?;
    let r = key_list_ref(&bytes)?;
    if r.version != v {
        return Err(repo.broken(format!("keys/{v} holds key list version {}", r.version)));
    }
    Ok(Some((r, trust, bytes)))
}

/// Writes a new key list; never replaces an existing version.
pub fn write_key_list(repo: &Repo, version: u64, bytes: &[u8]) -> Result<()> {
    crash_point!("server::key_list::write");
    fsutil::write_atomic(
        &key_list_file(repo, version),
        bytes,
        FILE_MODE,
        Place::Refuse,
    )?;
    Ok(())
}

/// Where `key new-list` keeps the single public key that key list 1 replaced. Only
/// publishers read it, to verify heads signed before the first key list; agents never
/// fetch it (the server does not serve it).
pub fn previous_single_key_file(repo: &Repo) -> PathBuf {
    repo.root().join("keys/previous-single-key.pub")
}

/// The keys that must have signed `head_bytes` of this repository: those of the key
/// list the head names (checked against `keys/<version>`); for a head that names none,
/// the single key key list 1 replaced, or `single` when there is no key list.
pub fn trust_for_head(repo: &Repo, head_bytes: &[u8], single: PublicKey) -> Result<HeadKeys> {
    match claimed_key_list(head_bytes)? {
        None => {
            let previous = previous_single_key_file(repo);
            if previous.exists() {
                return Ok(TrustedKeys::single(crate::ls::read_public(&previous)?).into());
            }
            Ok(TrustedKeys::single(single).into())
        }
        Some(r) => {
            let bytes = read_key_list(repo, r.version)?.ok_or_else(|| {
                repo.broken(format!(
                    "the head names key list {} but keys/{} is missing",
                    r.version, r.version
                ))
            })?;
            check_ref(&r, &bytes)?;
            let trust = TrustRoot::from_stored(&bytes)?;
            Ok(trust.head_keys())
        }
    }
}

/// Verifies the head `bytes` of `channel` as its publisher reads it (both layers,
/// through the key list it names). A format 1 head, written before the online role,
/// is upgraded in memory with `key` (FORMAT.md §9), so the channel continues its
/// sequences above everything agents have seen.
pub fn verify_publisher_head(
    repo: &Repo,
    channel: &str,
    bytes: &[u8],
    key: &SecretKey,
) -> Result<ferry_format::head::ChannelHead> {
    let trusted = trust_for_head(repo, bytes, key.public())?;
    let mismatch = |source| Error::KeyMismatch {
        channel: channel.to_string(),
        key_id: key.public().id().to_hex(),
        source,
    };
    match ferry_format::verified::verify_own_head(bytes, &trusted) {
        Ok(h) => Ok((*h).clone()),
        Err(ferry_format::FormatError::OldFormat { .. }) => {
            tracing::warn!(
                channel,
                "the channel head is format 1: continuing its sequence in format 2"
            );
            ferry_format::head::upgrade_legacy_head(bytes, &trusted.publishers, key)
                .map_err(mismatch)
        }
        Err(e) => Err(mismatch(e)),
    }
}

/// Checks that `keys` meet the threshold of `trust` before anything is signed with them.
pub fn check_signers(trust: &TrustedKeys, keys: &[&SecretKey], what: &str) -> Result<()> {
    let trusted = trust.key_ids();
    let good = keys
        .iter()
        .filter(|k| trusted.contains(&k.public().id()))
        .count();
    if good >= trust.threshold() {
        return Ok(());
    }
    Err(Error::Unsupported {
        path: PathBuf::from(what),
        reason: format!(
            "{good} of the given keys are publishing keys of the key list, {} required (publishing key ids: {})",
            trust.threshold(),
            trusted
                .iter()
                .map(|id| id.to_hex()[..16].to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    })
}

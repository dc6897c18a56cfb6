//! `ferry-server key ...` and `refresh-head`: the operations on the root of trust that
//! do not publish a release (FORMAT.md §4.5).
//!
//! - `key new-list` writes the next key list version: the first one moves a repository
//!   from a single key to root keys plus publishing keys; later ones rotate root keys,
//!   add or revoke publishing keys, or change thresholds. It checks the new list
//!   exactly as an agent will (signed by a threshold of the previous root keys and of
//!   its own) before writing it.
//! - `key show` prints a key list.
//! - `refresh-head` re-signs a channel head with a new expiry and sequence (the TUF
//!   timestamp role's job), so agents are not frozen out when no release is made.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry_format::keylist::{KeyList, TrustRoot, inspect, key_list_ref};
use ferry_format::keys::{PublicKey, SecretKey};
use ferry_format::verified::verify_own_head;

use crate::error::{Error, Result};
use crate::repo::Repo;
use crate::trust::{
    check_signers, key_list_file, latest_key_list, read_key_list, trust_for_head, write_key_list,
};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What to put in the next key list.
pub struct NewList<'a> {
    pub roots: &'a [PublicKey],
    pub root_threshold: u16,
    pub publishers: &'a [PublicKey],
    pub threshold: u16,
    /// Every key that signs: a threshold of the previous root keys and of the new ones.
    pub signers: &'a [SecretKey],
    /// For version 1: the single key agents were initialised with, which must sign.
    pub previous_key: Option<PublicKey>,
}

/// Writes the next key list and returns a description of it.
pub fn new_list(repo: &Repo, spec: &NewList<'_>) -> Result<String> {
    let previous = match latest_key_list(repo)? {
        Some((_, root, _)) => Some(root),
        None => spec.previous_key.map(TrustRoot::SingleKey),
    };
    let version = previous.as_ref().map_or(1, |p| p.version() + 1);
    let list = KeyList::new(
        version,
        now(),
        spec.roots,
        spec.root_threshold,
        spec.publishers,
        spec.threshold,
    )?;
    let signers: Vec<&SecretKey> = spec.signers.iter().collect();
    let bytes = list.sign(&signers)?;
    // The same checks an agent makes, before anything is written.
    let checked = match &previous {
        Some(prev) => prev.advance(&bytes),
        None => TrustRoot::from_stored(&bytes),
    };
    checked.map_err(|source| Error::FormatContext {
        context: format!("key list {version} would be refused by agents"),
        source,
    })?;
    // The single key first: once key list 1 exists, heads signed before it verify only
    // with this file, so a crash between the two writes must not leave the list alone
    // (publishing with the new keys would be refused, and a rerun would make list 2).
    // Alone, the file names the key that signs those heads anyway.
    if let (1, Some(k)) = (version, spec.previous_key) {
        crate::fsutil::write_atomic(
            &crate::trust::previous_single_key_file(repo),
            k.to_text().as_bytes(),
            crate::fsutil::FILE_MODE,
            crate::fsutil::Place::Replace,
        )?;
    }
    write_key_list(repo, version, &bytes)?;
    let mut out = describe(&list);
    let _ = writeln!(out, "written:   {}", key_list_file(repo, version).display());
    if previous.is_none() {
        out.push_str(
            "note: agents initialised with a single --public-key accept this list only if it is \
             also signed by that key (pass --previous-key and sign with it)\n",
        );
    }
    out.push_str("next:      publish (or refresh-head) so channel heads name this key list\n");
    Ok(out)
}

/// Describes key list `version` (the newest when `None`).
pub fn show(repo: &Repo, version: Option<u64>) -> Result<String> {
    let bytes = match version {
        Some(v) => read_key_list(repo, v)?
            .ok_or_else(|| repo.broken(format!("there is no key list {v}")))?,
        None => match latest_key_list(repo)? {
            Some((_, _, bytes)) => bytes,
            None => return Ok("no key list: the repository uses a single publishing key\n".into()),
        },
    };
    let r = key_list_ref(&bytes)?;
    let mut out = describe(&inspect(&bytes)?);
    let _ = writeln!(
        out,
        "object:    {} ({} bytes)",
        r.object.hash, r.object.size
    );
    Ok(out)
}

fn describe(list: &KeyList) -> String {
    let ids = |keys: &[[u8; 32]]| {
        keys.iter()
            .filter_map(|k| PublicKey::from_bytes(k).ok())
            .map(|k| k.id().to_hex()[..16].to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "key list:  version {}\nroot:      {} of [{}]\npublish:   {} of [{}]\n",
        list.version,
        list.root_threshold,
        ids(&list.root_keys),
        list.publish_threshold,
        ids(&list.publish_keys)
    )
}

/// Re-signs the head of `channel` with a new lifetime and the newest key list.
pub fn refresh_head(
    repo: &Repo,
    channel: &str,
    keys: &[SecretKey],
    expires_in: Duration,
) -> Result<String> {
    ferry_format::version::check_channel(channel)?;
    let first = keys.first().ok_or_else(|| Error::Unsupported {
        path: repo.root().to_path_buf(),
        reason: "refresh-head needs at least one --key".into(),
    })?;
    let _lock = repo.lock_channel(channel)?;
    let bytes = repo
        .read_head(channel)?
        .ok_or_else(|| repo.broken(format!("channel {channel:?} has no head")))?;
    let old_trust = trust_for_head(repo, &bytes, first.public())?;
    let old = verify_own_head(&bytes, &old_trust).map_err(|source| Error::KeyMismatch {
        channel: channel.to_string(),
        key_id: first.public().id().to_hex(),
        source,
    })?;
    let latest = latest_key_list(repo)?;
    let trust = match &latest {
        Some((_, root, _)) => root.publishers(),
        None => ferry_format::envelope::TrustedKeys::single(first.public()),
    };
    let signers: Vec<&SecretKey> = keys.iter().collect();
    check_signers(&trust, &signers, "refresh-head --key")?;
    let now = now();
    let mut head = (*old).clone();
    head.sequence += 1;
    head.issued_at = now;
    head.expires_at = now.saturating_add(expires_in.as_secs());
    head.key_list = latest.map(|(r, _, _)| r);
    repo.write_head(channel, &head.sign(&signers)?)?;
    Ok(format!(
        "refreshed {channel}: sequence {}, current {}, expires at {} (unix), key list {}\n",
        head.sequence,
        head.current().version,
        head.expires_at,
        head.key_list
            .map_or("none (single key)".to_string(), |r| format!(
                "v{}",
                r.version
            )),
    ))
}

//! `ferry-server key ...` and `refresh-head`: the operations on the root of trust that
//! do not publish a release (FORMAT.md §4.5).
//!
//! - `key new-list` writes the next key list version: the first one moves a repository
//!   from a single key to root keys plus publishing keys; later ones rotate root keys,
//!   add or revoke publishing keys, or change thresholds. It checks the new list
//!   exactly as an agent will (signed by a threshold of the previous root keys and of
//!   its own) before writing it.
//! - `key show` prints a key list.
//! - `refresh-head` re-signs a channel head with a new expiry and sequence, so agents
//!   are not frozen out when no release is made: with publishing keys ([`refresh_head`])
//!   it re-signs the publisher content too (and may set any rollout); with an online
//!   key ([`refresh_online`], also run by `serve --timestamp-key`) only the freshness
//!   layer, and a rollout can only go down.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry_format::head::{ChannelHead, HeadContent, ReleaseRules, Rollout};
use ferry_format::keylist::{KeyList, TrustRoot, inspect, key_list_ref};
use ferry_format::keys::{PublicKey, SecretKey};
use ferry_format::verified::verify_own_head;

use crate::error::{Error, Result};
use crate::repo::Repo;
use crate::trust::{check_signers, key_list_file, latest_key_list, read_key_list, write_key_list};

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
    /// Online keys (may live on the server: `serve --timestamp-key`); may be empty.
    pub online: &'a [PublicKey],
    pub online_threshold: u16,
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
    let list = if spec.online.is_empty() {
        list
    } else {
        list.with_online(spec.online, spec.online_threshold)?
    };
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
        "key list:  version {}\nroot:      {} of [{}]\npublish:   {} of [{}]\nonline:    {}\n",
        list.version,
        list.root_threshold,
        ids(&list.root_keys),
        list.publish_threshold,
        ids(&list.publish_keys),
        if list.online_keys.is_empty() {
            "none".to_string()
        } else {
            format!("{} of [{}]", list.online_threshold, ids(&list.online_keys))
        }
    )
}

/// What a refresh changes besides sequence and expiry.
#[derive(Clone, Copy, Debug, Default)]
pub struct RefreshOptions {
    /// Lifetime of the new head; `None`: 7 days with publishing keys, the current
    /// head's lifetime with an online key.
    pub expires_in: Option<Duration>,
    /// Lifetime of re-signed publisher content (publishing keys only).
    pub content_expires_in: Option<Duration>,
    /// What to do with the current release's rollout; `None`: keep it.
    pub rollout: Option<RolloutChange>,
}

/// A change to the current release's rollout (`refresh-head --rollout`,
/// `ferry-server rollout`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RolloutChange {
    /// Publishing keys sign this percentage into new content (no override); the online
    /// key may only lower, as an override.
    Percent(u8),
    /// An override of 0% in the freshness layer (signed by whichever key is given):
    /// the content keeps the percentage `Resume` restores.
    Pause,
    /// Publishing keys only: new content with the percentage the content signed
    /// before the pause, and no override.
    Resume,
}

/// Whether the current release is paused: 0% in force while the publisher's content
/// offers it to more.
pub fn is_paused(head: &ChannelHead) -> bool {
    let current = &head.current().version;
    head.rollout_of(current) == 0 && head.content.rollout_of(current) > 0
}

pub(crate) fn read_verified_head(
    repo: &Repo,
    channel: &str,
    key: &SecretKey,
) -> Result<ChannelHead> {
    let bytes = repo
        .read_head(channel)?
        .ok_or_else(|| repo.broken(format!("channel {channel:?} has no head")))?;
    crate::trust::verify_publisher_head(repo, channel, &bytes, key)
}

fn describe_head(what: &str, channel: &str, head: &ChannelHead) -> String {
    let current = &head.current().version;
    format!(
        "{what} {channel}: sequence {}, publisher sequence {}, current {current} at {}%, expires at {} (unix), content expires at {}, key list {}\n",
        head.sequence,
        head.content.sequence,
        head.rollout_of(current),
        head.expires_at,
        head.content.expires_at,
        head.key_list
            .map_or("none (single key)".to_string(), |r| format!(
                "v{}",
                r.version
            )),
    )
}

/// Re-signs the head of `channel` with publishing keys: new publisher content
/// (sequence, expiry, optionally the current release's rollout; rollouts lowered by
/// the online role are kept unless `--rollout` says otherwise) and a new head naming
/// the newest key list.
pub fn refresh_head(
    repo: &Repo,
    channel: &str,
    keys: &[SecretKey],
    opts: RefreshOptions,
) -> Result<String> {
    let head = resign_publisher(repo, channel, keys, opts)?;
    Ok(describe_head("refreshed", channel, &head))
}

/// [`refresh_head`], returning the head written.
pub fn resign_publisher(
    repo: &Repo,
    channel: &str,
    keys: &[SecretKey],
    opts: RefreshOptions,
) -> Result<ChannelHead> {
    resign_publisher_with(repo, channel, keys, opts, |_, _, _| Ok(()))
}

/// What `refresh-head --key` does, with `edit` changing the new publisher content and
/// its rules (revocations, targeting) before they are signed: the one place that
/// re-signs a channel's content without a new release (`revoke`, `rollout --labels`).
/// `edit` sees the verified old head.
pub fn resign_publisher_with(
    repo: &Repo,
    channel: &str,
    keys: &[SecretKey],
    opts: RefreshOptions,
    edit: impl FnOnce(&ChannelHead, &mut HeadContent, &mut ReleaseRules) -> Result<()>,
) -> Result<ChannelHead> {
    ferry_format::version::check_channel(channel)?;
    let first = keys.first().ok_or_else(|| Error::Unsupported {
        path: repo.root().to_path_buf(),
        reason: "refresh-head needs at least one --key".into(),
    })?;
    let expires_in = opts
        .expires_in
        .unwrap_or(crate::publish::DEFAULT_EXPIRES_IN);
    let content_expires_in = opts
        .content_expires_in
        .unwrap_or(crate::publish::DEFAULT_CONTENT_EXPIRES_IN);
    crate::publish::check_lifetimes(repo.root(), expires_in, content_expires_in)?;
    let _lock = repo.lock_channel(channel)?;
    let old = read_verified_head(repo, channel, first)?;
    let latest = latest_key_list(repo)?;
    let trust = match &latest {
        Some((_, root, _)) => root.publishers(),
        None => ferry_format::envelope::TrustedKeys::single(first.public()),
    };
    let signers: Vec<&SecretKey> = keys.iter().collect();
    check_signers(&trust, &signers, "refresh-head --key")
        .map_err(|e| online_not_publisher(&latest, keys, e))?;
    let now = now();
    let mut content = old.content.clone();
    content.sequence += 1;
    content.issued_at = now;
    content.expires_at = now.saturating_add(content_expires_in.as_secs());
    content.rollout = old.effective_rollout();
    let current = old.current().version.clone();
    let mut overrides = Vec::new();
    match opts.rollout {
        None => {}
        Some(RolloutChange::Percent(percent)) => {
            set_rollout(&mut content.rollout, &current, percent, 100)?;
        }
        Some(change @ (RolloutChange::Pause | RolloutChange::Resume)) => {
            if change == RolloutChange::Resume && !is_paused(&old) {
                return Err(not_paused(repo, channel, &old));
            }
            // The content keeps (or gets back) what the publisher signed before the
            // pause; a pause is only the freshness layer's override.
            let signed = old.content.rollout_of(&current);
            set_rollout(&mut content.rollout, &current, signed, 100)?;
            if change == RolloutChange::Pause {
                set_rollout(&mut overrides, &current, 0, 101)?;
            }
        }
    }
    let mut rules = old.rules().clone();
    edit(&old, &mut content, &mut rules)?;
    let head = ChannelHead::new(
        content.sign_with(&rules, &signers)?,
        old.sequence + 1,
        content.issued_at,
        now.saturating_add(expires_in.as_secs()),
        latest.map(|(r, _, _)| r),
        overrides,
    )?;
    let bytes = head.sign(&signers)?;
    repo.write_head(channel, &bytes)?;
    Ok(head)
}

/// A refusal of `--key` that names the online key when one was given: the online role
/// only keeps heads fresh and lowers or pauses rollouts.
fn online_not_publisher(
    latest: &Option<(ferry_format::keylist::KeyListRef, TrustRoot, Vec<u8>)>,
    keys: &[SecretKey],
    e: Error,
) -> Error {
    let online = latest.as_ref().and_then(|(_, root, _)| root.online());
    let Some(k) = online.and_then(|o| {
        let ids = o.key_ids();
        keys.iter().find(|k| ids.contains(&k.public().id()))
    }) else {
        return e;
    };
    Error::Unsupported {
        path: "--key".into(),
        reason: format!(
            "key {} is the repository's online key: it may only keep heads fresh and lower or pause a rollout; re-signing the publisher content (publishing, revoking, retargeting, raising or resuming a rollout) needs publishing keys",
            &k.public().id().to_hex()[..16]
        ),
    }
}

fn not_paused(repo: &Repo, channel: &str, head: &ChannelHead) -> Error {
    let current = &head.current().version;
    let signed = head.content.rollout_of(current);
    let reason = if signed == 0 {
        format!(
            "{current} of channel {channel:?} is not paused: the publisher signed 0% for it, so there is nothing to resume to; set a percentage with --percent"
        )
    } else {
        format!(
            "{current} of channel {channel:?} is not paused: it is at {}%; --resume only lifts a --pause",
            head.rollout_of(current)
        )
    };
    Error::Unsupported {
        path: repo.head_file(channel),
        reason,
    }
}

/// Sets `version`'s entry in a rollout list (absent means `full`).
fn set_rollout(list: &mut Vec<Rollout>, version: &str, percent: u8, full: u8) -> Result<()> {
    if percent > 100 {
        return Err(Error::Unsupported {
            path: "--rollout".into(),
            reason: format!("{percent}% is above 100%"),
        });
    }
    list.retain(|r| r.version != version);
    if percent < full {
        list.push(Rollout {
            version: version.to_string(),
            percent,
        });
        list.sort_by(|a, b| {
            let v = |s: &str| ferry_format::version::Version::parse(s).ok();
            v(&a.version).cmp(&v(&b.version))
        });
    }
    Ok(())
}

/// The repository's newest key list, checked to list `key` in its online role (with
/// threshold 1: one server signs alone).
pub fn check_online_key(
    repo: &Repo,
    key: &SecretKey,
) -> Result<(ferry_format::keylist::KeyListRef, TrustRoot)> {
    let refuse = |reason: String| Error::Unsupported {
        path: repo.root().join("keys"),
        reason,
    };
    let (latest_ref, latest) = match latest_key_list(repo)? {
        Some((r, root, _)) => (r, root),
        None => {
            return Err(refuse(
                "the repository has no key list, so no online role: list the key with `ferry-server key new-list --online`".into(),
            ));
        }
    };
    let online = latest.online().ok_or_else(|| {
        refuse(format!(
            "key list {} has no online role: list the key with `ferry-server key new-list --online`",
            latest.version()
        ))
    })?;
    check_signers(&online, &[key], "--timestamp-key").map_err(|_| {
        refuse(format!(
            "--timestamp-key {} is not an online key of key list {} (or the online threshold is above 1)",
            &key.public().id().to_hex()[..16],
            latest.version()
        ))
    })?;
    Ok((latest_ref, latest))
}

/// Re-signs only the freshness layer of `channel`'s head with an online key: the same
/// publisher content (same releases, manifests and publisher sequence), a new head
/// sequence and expiry (never past the content's), the newest key list, and
/// optionally a lower rollout of the current release. Refuses anything the online
/// role may not do, with the reason.
pub fn refresh_online(
    repo: &Repo,
    channel: &str,
    key: &SecretKey,
    opts: RefreshOptions,
) -> Result<String> {
    let head = resign_online(repo, channel, key, opts)?;
    Ok(describe_head("refreshed (online)", channel, &head))
}

/// [`refresh_online`], returning the head written.
pub fn resign_online(
    repo: &Repo,
    channel: &str,
    key: &SecretKey,
    opts: RefreshOptions,
) -> Result<ChannelHead> {
    ferry_format::version::check_channel(channel)?;
    let refuse = |reason: String| Error::Unsupported {
        path: repo.head_file(channel),
        reason,
    };
    if opts.content_expires_in.is_some() {
        return Err(refuse(
            "--content-expires-in needs publishing keys (--key): the online role cannot extend the publisher's content".into(),
        ));
    }
    let (latest_ref, latest) = check_online_key(repo, key)?;
    let _lock = repo.lock_channel(channel)?;
    let old = read_verified_head(repo, channel, key)?;
    let now = now();
    if now >= old.content.expires_at {
        return Err(refuse(format!(
            "the publisher content expired at {} (unix time), it is now {now}: only publishing keys can re-sign it (refresh-head --key)",
            old.content.expires_at
        )));
    }
    let lifetime = opts
        .expires_in
        .map_or(old.expires_at.saturating_sub(old.issued_at), |d| {
            d.as_secs()
        })
        .max(1);
    let expires_at = now.saturating_add(lifetime).min(old.content.expires_at);
    let mut rollout = old.rollout.clone();
    let version = old.current().version.clone();
    let in_force = old.rollout_of(&version);
    match opts.rollout {
        None => {}
        Some(RolloutChange::Resume) => {
            return Err(refuse(format!(
                "resuming {version} needs publishing keys (--key): the online role can only lower or pause a rollout{}",
                if is_paused(&old) {
                    String::new()
                } else {
                    format!(", and {version} is not paused (at {in_force}%)")
                }
            )));
        }
        Some(RolloutChange::Percent(percent)) if percent > in_force => {
            return Err(refuse(format!(
                "{version} is at {in_force}%: the online role can only lower or pause a rollout, raising or resuming it to {percent}% needs publishing keys (--key)"
            )));
        }
        Some(RolloutChange::Percent(percent)) => {
            set_rollout(&mut rollout, &version, percent, 101)?;
        }
        Some(RolloutChange::Pause) => set_rollout(&mut rollout, &version, 0, 101)?,
    }
    let head = ChannelHead::new(
        old.content_bytes().to_vec(),
        old.sequence + 1,
        now,
        expires_at,
        Some(latest_ref),
        rollout,
    )?;
    let bytes = head.sign(&[key])?;
    // Checked as an agent of the newest key list will: after a rotation that revoked
    // the content's signer, only a publisher can help.
    verify_own_head(&bytes, &latest.head_keys()).map_err(|source| Error::FormatContext {
        context: format!(
            "the refreshed head of {channel:?} would be refused by agents trusting key list {}",
            latest.version()
        ),
        source,
    })?;
    repo.write_head(channel, &bytes)?;
    Ok(head)
}

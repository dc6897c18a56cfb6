//! The head log (FORMAT.md §7.1) as audit events: every logged head of every channel
//! is verified with the repository's own key lists (both layers, as its publisher
//! reads it), and consecutive heads are compared: a release that appears was
//! published, one that leaves was retired, a percentage that moves was rolled out,
//! paused or resumed, and a head that changes nothing else was refreshed.

use std::path::Path;

use ferry_format::audit::{AuditEvent, SignerRole, event};
use ferry_format::envelope::{ObjectKind, TrustedKeys};
use ferry_format::head::ChannelHead;
use ferry_format::id::Digest;
use ferry_format::keylist::{HeadKeys, TrustRoot, check_ref};
use ferry_format::keys::PublicKey;
use ferry_format::layout::parse_head_log_name;
use ferry_format::verified::{HeadRole, verify_own_head};

use crate::error::{Result, io_err};
use crate::fsutil;
use crate::repo::Repo;

/// One logged head, verified.
struct Logged {
    name: String,
    hash: Digest,
    head: ChannelHead,
    role: SignerRole,
    key_ids: Vec<String>,
    content_key_ids: Vec<String>,
}

/// The names of the channels that have a head log, sorted.
pub fn channels(repo: &Repo) -> Result<Vec<String>> {
    let dir = repo.channels_dir();
    let mut out = Vec::new();
    let items = match std::fs::read_dir(&dir) {
        Ok(items) => items,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io_err("list", &dir)(e)),
    };
    for item in items {
        let item = item.map_err(io_err("list", &dir))?;
        let Some(name) = item.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if ferry_format::version::check_channel(&name).is_ok() && repo.head_log_dir(&name).is_dir()
        {
            out.push(name);
        }
    }
    out.sort();
    Ok(out)
}

/// The entries of `channel`'s head log as (sequence, file name), in sequence order
/// (names of one sequence by hash: a crash can leave two heads of one sequence).
pub fn entries(repo: &Repo, channel: &str) -> Result<Vec<(u64, String)>> {
    let dir = repo.head_log_dir(channel);
    let mut out = Vec::new();
    let items = match std::fs::read_dir(&dir) {
        Ok(items) => items,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io_err("list", &dir)(e)),
    };
    for item in items {
        let item = item.map_err(io_err("list", &dir))?;
        let name = item.file_name().to_string_lossy().into_owned();
        // Temporary files of a write in progress (or killed) are not entries.
        if let Some((sequence, _)) = parse_head_log_name(&name) {
            out.push((sequence, name));
        }
    }
    out.sort();
    Ok(out)
}

/// The keys a logged head answers to: the key list it names (`keys/<v>` of the
/// repository, the publisher's own record), or for a head naming none the single key
/// key list 1 replaced (`keys/previous-single-key.pub`), else `single`.
fn head_keys(repo: &Repo, bytes: &[u8], single: Option<PublicKey>) -> Result<HeadKeys> {
    match ferry_format::head::claimed_key_list(bytes)? {
        Some(r) => {
            let list = crate::trust::read_key_list(repo, r.version)?.ok_or_else(|| {
                repo.broken(format!(
                    "a logged head names key list {} but keys/{} is missing",
                    r.version, r.version
                ))
            })?;
            check_ref(&r, &list)?;
            Ok(TrustRoot::from_stored(&list)?.head_keys())
        }
        None => {
            let previous = crate::trust::previous_single_key_file(repo);
            let key = if previous.exists() {
                crate::ls::read_public(&previous)?
            } else {
                single.ok_or_else(|| {
                    repo.broken(
                        "a logged head names no key list (a single-key repository): give the publishing key with --public-key to verify it".into(),
                    )
                })?
            };
            Ok(TrustedKeys::single(key).into())
        }
    }
}

fn hex_ids(ids: &[Digest]) -> Vec<String> {
    ids.iter().map(Digest::to_hex).collect()
}

/// Reads and verifies one entry; `Err` carries why it is not a head the keys signed.
fn read_entry(
    repo: &Repo,
    dir: &Path,
    name: &str,
    single: Option<PublicKey>,
) -> Result<std::result::Result<Logged, String>> {
    let path = dir.join(name);
    let bytes = fsutil::read_small(&path, ObjectKind::ChannelHead.max_size())?;
    let Some((sequence, hash)) = parse_head_log_name(name) else {
        return Ok(Err("not a head log name".into()));
    };
    if Digest::of(&bytes) != hash {
        return Ok(Err(format!(
            "its bytes hash to {}, not to the hash its name carries",
            Digest::of(&bytes).to_hex()
        )));
    }
    let keys = head_keys(repo, &bytes, single)?;
    let verified = match verify_own_head(&bytes, &keys) {
        Ok(v) => v,
        Err(e) => return Ok(Err(format!("it does not verify: {e}"))),
    };
    if verified.sequence != sequence {
        return Ok(Err(format!(
            "it holds head sequence {}, its name says {sequence}",
            verified.sequence
        )));
    }
    let signers = verified.head_signers();
    let role = match signers.role {
        HeadRole::Publisher => SignerRole::Publisher,
        HeadRole::Online => SignerRole::Online,
    };
    Ok(Ok(Logged {
        name: name.to_string(),
        hash,
        role,
        key_ids: hex_ids(verified.signed_by()),
        content_key_ids: hex_ids(&signers.content),
        head: (*verified).clone(),
    }))
}

/// Whether `version` is paused in `head`: 0% in force while the publisher signed more.
fn paused(head: &ChannelHead, version: &str) -> bool {
    head.rollout_of(version) == 0 && head.content.rollout_of(version) > 0
}

/// Releases a head revokes (FORMAT.md §5.3): each new one is a `revoked` event.
fn revoked(head: &ChannelHead) -> Vec<String> {
    head.revoked().to_vec()
}

fn requirements_text(head: &ChannelHead, version: &str) -> String {
    let r = head.requirements_of(version);
    if r.is_empty() {
        "none".into()
    } else {
        r.to_string()
    }
}

/// The events of `channel`'s head log, oldest first, with `utc` formatting times.
pub fn channel_events(
    repo: &Repo,
    channel: &str,
    single: Option<PublicKey>,
    utc: &dyn Fn(u64) -> String,
) -> Result<Vec<AuditEvent>> {
    let dir = repo.head_log_dir(channel);
    let mut events = Vec::new();
    let mut prev: Option<Logged> = None;
    for (sequence, name) in entries(repo, channel)? {
        let cur = match read_entry(repo, &dir, &name, single)? {
            Ok(cur) => cur,
            Err(reason) => {
                tracing::warn!(channel, entry = name, "head log entry refused: {reason}");
                let time = std::fs::metadata(dir.join(&name))
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_secs());
                events.push(AuditEvent {
                    time,
                    time_utc: utc(time),
                    event: event::INVALID_LOG_ENTRY.into(),
                    channel: channel.to_string(),
                    head_sequence: Some(sequence),
                    detail: Some(format!("{name}: {reason}")),
                    ..AuditEvent::default()
                });
                continue;
            }
        };
        events.extend(diff(channel, prev.as_ref(), &cur, utc));
        prev = Some(cur);
    }
    Ok(events)
}

/// The events that lead from `prev` (if any) to `cur`.
fn diff(
    channel: &str,
    prev: Option<&Logged>,
    cur: &Logged,
    utc: &dyn Fn(u64) -> String,
) -> Vec<AuditEvent> {
    let h = &cur.head;
    let base = |kind: &str, release: Option<&str>| AuditEvent {
        time: h.issued_at,
        time_utc: utc(h.issued_at),
        event: kind.to_string(),
        channel: channel.to_string(),
        release: release.map(str::to_string),
        head_sequence: Some(h.sequence),
        publisher_sequence: Some(h.content.sequence),
        head: Some(cur.hash.to_hex()),
        role: Some(cur.role),
        key_ids: cur.key_ids.clone(),
        content_key_ids: cur.content_key_ids.clone(),
        expires_at: Some(h.expires_at),
        ..AuditEvent::default()
    };
    let current = h.current().version.clone();
    let Some(prev) = prev else {
        if h.content.sequence == 1 {
            // The channel's first content: its releases were published here.
            return h
                .releases()
                .iter()
                .map(|r| AuditEvent {
                    percent: Some(h.rollout_of(&r.version)),
                    ..base(event::PUBLISHED, Some(&r.version))
                })
                .collect();
        }
        let listed: Vec<&str> = h.releases().iter().map(|r| r.version.as_str()).collect();
        return vec![AuditEvent {
            percent: Some(h.rollout_of(&current)),
            detail: Some(format!(
                "the head log starts here ({}); releases: {}",
                cur.name,
                listed.join(" ")
            )),
            ..base(event::BASELINE, Some(&current))
        }];
    };
    let p = &prev.head;
    let mut out = Vec::new();
    let (before, after) = (
        p.key_list.map_or(0, |k| k.version),
        h.key_list.map_or(0, |k| k.version),
    );
    if before != after {
        out.push(AuditEvent {
            detail: Some(format!("key list {before} -> {after}")),
            ..base(event::KEY_LIST_CHANGED, None)
        });
    }
    let listed = |head: &ChannelHead, v: &str| head.releases().iter().any(|r| r.version == v);
    for r in p.releases() {
        if !listed(h, &r.version) {
            out.push(base(event::RETIRED, Some(&r.version)));
        }
    }
    for r in h.releases() {
        let v = r.version.as_str();
        let now = h.rollout_of(v);
        if !listed(p, v) {
            out.push(AuditEvent {
                percent: Some(now),
                ..base(event::PUBLISHED, Some(v))
            });
            if !h.requirements_of(v).is_empty() {
                out.push(AuditEvent {
                    detail: Some(requirements_text(h, v)),
                    ..base(event::REQUIREMENTS_CHANGED, Some(v))
                });
            }
            continue;
        }
        if h.requirements_of(v) != p.requirements_of(v) {
            out.push(AuditEvent {
                detail: Some(requirements_text(h, v)),
                ..base(event::REQUIREMENTS_CHANGED, Some(v))
            });
        }
        let was = p.rollout_of(v);
        let kind = match (paused(p, v), paused(h, v)) {
            (false, true) => Some(event::PAUSED),
            (true, false) if now > 0 => Some(event::RESUMED),
            _ if now != was => Some(event::ROLLOUT_CHANGED),
            _ => None,
        };
        if let Some(kind) = kind {
            out.push(AuditEvent {
                percent: Some(now),
                previous_percent: Some(was),
                ..base(kind, Some(v))
            });
        }
    }
    let already = revoked(p);
    for v in revoked(h) {
        if !already.contains(&v) {
            out.push(base(event::REVOKED, Some(&v)));
        }
    }
    if out.iter().all(|e| e.event == event::KEY_LIST_CHANGED) {
        out.push(AuditEvent {
            percent: Some(h.rollout_of(&current)),
            detail: Some(format!("expires {}", utc(h.expires_at))),
            ..base(event::REFRESHED, Some(&current))
        });
    }
    out
}

//! `ferry-server ls`: what a repository's channels currently offer.
//!
//! With `--key` (public or secret key file) heads are verified as a publisher would,
//! through the key list they name; without it they are only decoded and the listing
//! says the signatures were not checked. Manifests are checked against the hashes the
//! head pins.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use std::collections::HashSet;

use ferry_format::head::inspect_head;
use ferry_format::id::ChunkId;
use ferry_format::keys::{PublicKey, SecretKey};
use ferry_format::manifest::Manifest;
use ferry_format::plan::{Base, DEFAULT_MAX_GAP, Disk, SkipReason, Via, plan_update};
use ferry_format::verified::Verified;
use ferry_format::verified::{verify_own_head, verify_pinned_manifest};
use ferry_format::version::check_channel;

use crate::error::{Error, Result, io_err};
use crate::fsutil;
use crate::repo::Repo;

/// Reads a public key file, or derives the public key from a secret key file.
pub fn read_public(path: &Path) -> Result<PublicKey> {
    let bytes = fsutil::read_small(path, 4096)?;
    let text = String::from_utf8_lossy(&bytes);
    PublicKey::from_text(&text)
        .or_else(|_| SecretKey::from_text(&text).map(|k| k.public()))
        .map_err(|source| Error::FormatContext {
            context: format!("{} is not a ferry key file", path.display()),
            source,
        })
}

/// The channel names of a repository, sorted.
pub fn channels(repo: &Repo) -> Result<Vec<String>> {
    let dir = repo.channels_dir();
    let items = match fs::read_dir(&dir) {
        Ok(items) => items,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("list", &dir)(e)),
    };
    let mut out = Vec::new();
    for item in items {
        let item = item.map_err(io_err("list", &dir))?;
        if let Some(name) = item.file_name().to_str()
            && check_channel(name).is_ok()
            && item.path().join("head").is_file()
        {
            out.push(name.to_string());
        }
    }
    out.sort();
    Ok(out)
}

/// The listing text for `channel` (or every channel).
pub fn ls(repo: &Repo, channel: Option<&str>, key: Option<&PublicKey>) -> Result<String> {
    let names = match channel {
        Some(c) => {
            check_channel(c)?;
            vec![c.to_string()]
        }
        None => channels(repo)?,
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut out = String::new();
    if names.is_empty() {
        out.push_str("no channels\n");
    }
    for name in names {
        let Some(bytes) = repo.read_head(&name)? else {
            return Err(repo.broken(format!("channel {name:?} has no head")));
        };
        // With a key the head is verified as a publisher would (through the key list
        // it names); without one it is only decoded, and the listing says so.
        let (head, checked) = match key {
            Some(key) => {
                let trusted = crate::trust::trust_for_head(repo, &bytes, *key)?;
                let head =
                    verify_own_head(&bytes, &trusted).map_err(|source| Error::KeyMismatch {
                        channel: name.clone(),
                        key_id: key.id().to_hex(),
                        source,
                    })?;
                ((*head).clone(), "signatures verified")
            }
            None => (
                inspect_head(&bytes)?,
                "signatures NOT checked: pass --key to verify",
            ),
        };
        let expiry = if head.expires_at <= now {
            "EXPIRED".to_string()
        } else {
            format!("in {}", human_secs(head.expires_at - now))
        };
        let _ = writeln!(
            out,
            "channel {name}  sequence {}  issued {}  expires {} ({expiry})  [{checked}]",
            head.sequence,
            utc(head.issued_at),
            utc(head.expires_at)
        );
        let content_expiry = if head.content.expires_at <= now {
            "EXPIRED".to_string()
        } else {
            format!("in {}", human_secs(head.content.expires_at - now))
        };
        let _ = writeln!(
            out,
            "  publisher sequence {}  content expires {} ({content_expiry})",
            head.content.sequence,
            utc(head.content.expires_at)
        );
        let current = head.current().version.clone();
        // A release whose manifest is gone or damaged is listed, not fatal: ls is the
        // tool one uses to find out what is wrong.
        let manifests: Vec<std::result::Result<Verified<Manifest>, String>> = head
            .releases()
            .iter()
            .map(|r| {
                repo.read_object(&r.manifest, "manifest")
                    .and_then(|b| Ok(verify_pinned_manifest(&b, r, &name)?))
                    .map_err(|e| e.to_string())
            })
            .collect();
        for (i, r) in head.releases().iter().enumerate() {
            let detail = match &manifests[i] {
                Ok(m) => format!(
                    "{} bytes in {} entries, archive {} bytes",
                    m.total_file_bytes(),
                    m.entries.len(),
                    m.archive.size
                ),
                Err(e) => format!("UNREADABLE: {e}"),
            };
            let mark = if r.version == current {
                "  (current)"
            } else {
                ""
            };
            let percent = head.rollout_of(&r.version);
            let mark = if percent < 100 {
                format!("{mark}  (rollout {percent}%)")
            } else {
                mark.to_string()
            };
            let _ = writeln!(
                out,
                "  {:<16} manifest {} ({} bytes)  {detail}{mark}",
                r.version, r.manifest.hash, r.manifest.size
            );
            let requires = head.requirements_of(&r.version);
            if !requires.is_empty() {
                let _ = writeln!(out, "  {:<16} requires {requires}", "");
            }
            let labels = head.rollout_labels_of(&r.version);
            if !labels.is_empty() {
                let _ = writeln!(out, "  {:<16} offered to agents labelled {labels}", "");
            }
            if head.is_revoked(&r.version) {
                let _ = writeln!(out, "  {:<16} REVOKED: agents on it go back", "");
            }
            // What an agent on each older listed release downloads for this one.
            if let Ok(m) = &manifests[i] {
                for (base, older) in head.releases().iter().zip(&manifests).take(i) {
                    let Ok(older) = older else { continue };
                    let _ = writeln!(
                        out,
                        "  {:<16} from {}: {}",
                        "",
                        base.version,
                        cost_from(m, older)
                    );
                }
            }
        }
    }
    Ok(out)
}

/// What updating from `base` to `target` downloads (release data, beyond the head and
/// the manifest or its diff), as the agent's planner would choose it with `base`
/// intact and nothing else on disk.
fn cost_from(target: &Manifest, base: &Verified<Manifest>) -> String {
    let have: HashSet<ChunkId> = base.chunks.iter().map(|c| c.id).collect();
    let has = |id: &ChunkId| have.contains(id);
    let bases = [Base {
        version: &base.version,
        manifest: base,
        hash: base.object_hash(),
        intact: true,
    }];
    let disk = Disk {
        active: Some(&base.version),
        copy: None,
        have: &has,
        bases: &bases,
        failed: &[],
        // What the repository lists; a server making diffs on request changes it.
        on_demand: false,
    };
    let plan = plan_update(target, &disk, DEFAULT_MAX_GAP);
    let archive = plan.archive();
    match &plan.chosen().via {
        Via::Diff { .. } => format!(
            "diff {} bytes in {} request(s) (archive ranges would be {} bytes)",
            plan.chosen().download_bytes,
            plan.chosen().requests,
            archive.download_bytes
        ),
        _ if archive.archive.fetch_chunks == 0 => "nothing to download".to_string(),
        _ => format!(
            "archive ranges {} bytes in {} request(s){}",
            archive.download_bytes,
            archive.requests,
            if plan.skipped.iter().any(|s| s.reason == SkipReason::NoDiff) {
                " (no diff)"
            } else {
                " (its diff is not smaller)"
            }
        ),
    }
}

/// Unix seconds as an RFC 3339 UTC time.
fn utc(seconds: u64) -> String {
    crate::audit::time::utc(seconds)
}

fn human_secs(s: u64) -> String {
    match s {
        s if s >= 86_400 => format!("{}d{}h", s / 86_400, s % 86_400 / 3600),
        s if s >= 3600 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        s => format!("{}m{}s", s / 60, s % 60),
    }
}

//! Which (base, target) pairs a server makes diffs for, and making one.
//!
//! A pair qualifies only when one channel head of the repository lists both manifests
//! among its retained releases (so the work per repository is bounded by the
//! releases the heads retain, and nothing else in `objects/` can be named), both
//! manifests and archives are in the repository, and neither the base (its files) nor
//! the target (the chunks the base lacks) is larger than `--diff-max-input`: the
//! encoder holds both in memory with the base's suffix array. The heads are the
//! repository's own files, read without their signatures: a server trusts its
//! repository, and agents check what it sends against the signed manifests anyway.
//!
//! What a job made is recorded in the repository's diff index (FORMAT.md §3.8): an
//! ordinary diff object under its content-addressed name, or "none" when no diff is
//! smaller than the archive ranges it would replace. Later requests are answered from
//! the index, and static mirrors of the folder serve the object like any other.

use std::path::Path;

use ferry_format::head::{ReleaseRef, inspect_head};
use ferry_format::id::Digest;
use ferry_format::manifest::Manifest;
use ferry_format::ondemand::{IndexEntry, diff_index_path};
use ferry_format::verified::verify_pinned_manifest;

use crate::error::{Error, Result, io_err};
use crate::fsutil::{self, DIR_MODE, FILE_MODE, Place};
use crate::publish::diff::{BaseRelease, diff_one, open_archive};
use crate::repo::Repo;

/// A pair a head retains, loaded.
pub struct Pair {
    pub channel: String,
    pub base: BaseRelease,
    pub target: Manifest,
    /// The name of the target's manifest object.
    pub target_hash: Digest,
    pub target_version: String,
}

/// What [`check`] found for a requested pair.
pub enum Checked {
    /// Made before: the index's entry (its object present with its size).
    Indexed(IndexEntry),
    /// Retained and within the limits: a job can make it.
    Makeable(Box<Pair>),
    /// No head retains both manifests (or one of them is missing or damaged).
    NotRetained(String),
    /// The base's files or the target's missing chunks exceed `max_input` bytes.
    TooLarge { what: &'static str, size: u64 },
}

/// Checks a requested pair against the repository's heads, limits and index.
pub fn check(repo: &Repo, base: &Digest, target: &Digest, max_input: u64) -> Result<Checked> {
    let Some((channel, b, t)) = retained(repo, base, target)? else {
        return Ok(Checked::NotRetained(
            "no channel head retains both releases".into(),
        ));
    };
    if let Some(entry) = read_index(repo, base, target)? {
        return Ok(Checked::Indexed(entry));
    }
    let load = |r: &ReleaseRef| -> Result<(Vec<u8>, Manifest)> {
        let bytes = repo.read_object(&r.manifest, "manifest")?;
        let m =
            verify_pinned_manifest(&bytes, r, &channel).map_err(|source| Error::FormatContext {
                context: format!("the manifest of {channel} {}", r.version),
                source,
            })?;
        Ok((bytes, (*m).clone()))
    };
    let ((base_bytes, base_manifest), (_, target_manifest)) = match (load(&b), load(&t)) {
        (Ok(b), Ok(t)) => (b, t),
        (Err(e), _) | (_, Err(e)) => return Ok(Checked::NotRetained(format!("{e:#}"))),
    };
    let base_size = base_manifest.total_file_bytes();
    if base_size > max_input {
        return Ok(Checked::TooLarge {
            what: "base",
            size: base_size,
        });
    }
    let target_size: u64 = ferry_format::delta::missing_chunks(&target_manifest, &base_manifest)
        .iter()
        .map(|&i| u64::from(target_manifest.chunks[i].size))
        .sum();
    if target_size > max_input {
        return Ok(Checked::TooLarge {
            what: "target",
            size: target_size,
        });
    }
    for (m, v) in [(&base_manifest, &b.version), (&target_manifest, &t.version)] {
        if !archive_present(repo, m) {
            return Ok(Checked::NotRetained(format!(
                "the archive of {channel} {v} is not in the repository"
            )));
        }
    }
    Ok(Checked::Makeable(Box::new(Pair {
        channel,
        base: BaseRelease {
            version: b.version.clone(),
            manifest_hash: *base,
            manifest: base_manifest,
            manifest_bytes: base_bytes,
            archive_present: true,
        },
        target: target_manifest,
        target_hash: *target,
        target_version: t.version,
    })))
}

/// Makes the pair's diff (as `publish` does, `diff_one`) and records it in the
/// index: the object, or "none" when no diff beats the archive ranges. A job that
/// finds the pair already recorded (by a job that ended just before it was started)
/// makes nothing. Returns the entry and whether this call made it.
pub fn make(repo: &Repo, pair: &Pair) -> Result<(IndexEntry, bool)> {
    let (base, target) = (pair.base.manifest_hash, pair.target_hash);
    if let Some(entry) = read_index(repo, &base, &target)? {
        return Ok((entry, false));
    }
    let archive = open_archive(repo, &pair.target)?;
    let entry = match diff_one(repo, &pair.target, &archive, &pair.base)? {
        Some(object) => IndexEntry::Diff(object),
        None => IndexEntry::NoDiff,
    };
    write_index(repo, &base, &target, &entry)?;
    Ok((entry, true))
}

/// The first channel (by name) whose head retains both manifests: its name and the
/// two releases.
fn retained(
    repo: &Repo,
    base: &Digest,
    target: &Digest,
) -> Result<Option<(String, ReleaseRef, ReleaseRef)>> {
    for channel in crate::ls::channels(repo)? {
        let Some(bytes) = repo.read_head(&channel)? else {
            continue;
        };
        let Ok(head) = inspect_head(&bytes) else {
            tracing::warn!(channel, "on-demand diffs: the channel head does not decode");
            continue;
        };
        let find = |d: &Digest| {
            head.releases()
                .iter()
                .find(|r| r.manifest.hash == *d)
                .cloned()
        };
        if let (Some(b), Some(t)) = (find(base), find(target)) {
            return Ok(Some((channel, b, t)));
        }
    }
    Ok(None)
}

fn archive_present(repo: &Repo, m: &Manifest) -> bool {
    std::fs::metadata(repo.object_file(&m.archive.hash))
        .is_ok_and(|meta| meta.is_file() && meta.len() == m.archive.size)
}

/// The index entry of a pair, if one is recorded and (for a diff) its object is in
/// the repository with the recorded size; an entry that does not parse, or names an
/// object `gc` removed, counts as none (the pair is made again).
pub fn read_index(repo: &Repo, base: &Digest, target: &Digest) -> Result<Option<IndexEntry>> {
    let path = repo.root().join(diff_index_path(base, target));
    let Some(bytes) = fsutil::read_limited(&path, 256)? else {
        return Ok(None);
    };
    let entry = match std::str::from_utf8(&bytes)
        .ok()
        .and_then(|t| IndexEntry::parse(t).ok())
    {
        Some(e) => e,
        None => {
            tracing::warn!(path = %path.display(), "ignoring a diff index entry that does not parse");
            return Ok(None);
        }
    };
    if let IndexEntry::Diff(r) = entry {
        let object = repo.object_file(&r.hash);
        if !std::fs::metadata(&object).is_ok_and(|m| m.is_file() && m.len() == r.size) {
            return Ok(None);
        }
    }
    Ok(Some(entry))
}

/// Records `entry` for the pair (atomically: a reader sees the old entry or this one).
pub fn write_index(repo: &Repo, base: &Digest, target: &Digest, entry: &IndexEntry) -> Result<()> {
    let path = repo.root().join(diff_index_path(base, target));
    if let Some(dir) = path.parent() {
        fsutil::ensure_dir(dir, DIR_MODE)?;
    }
    fsutil::write_atomic(&path, entry.encode().as_bytes(), FILE_MODE, Place::Replace)?;
    Ok(())
}

/// Every entry of the diff index: (base, target, the entry's file). Files whose names
/// are not two manifest names are left out (not ours).
pub fn index_entries(repo: &Repo) -> Result<Vec<(Digest, Digest, std::path::PathBuf)>> {
    let dir = repo.root().join(ferry_format::ondemand::DIFF_INDEX_DIR);
    let list = |d: &Path| -> Result<Vec<(String, std::path::PathBuf)>> {
        let items = match std::fs::read_dir(d) {
            Ok(items) => items,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("list", d)(e)),
        };
        let mut out = Vec::new();
        for item in items {
            let item = item.map_err(io_err("list", d))?;
            if let Some(name) = item.file_name().to_str() {
                out.push((name.to_string(), item.path()));
            }
        }
        Ok(out)
    };
    let mut out = Vec::new();
    for (base, base_dir) in list(&dir)? {
        let Ok(b) = Digest::from_hex(&base) else {
            continue;
        };
        for (target, path) in list(&base_dir)? {
            if let Ok(t) = Digest::from_hex(&target)
                && diff_index_path(&b, &t)
                    == format!("{}/{base}/{target}", ferry_format::ondemand::DIFF_INDEX_DIR)
            {
                out.push((b, t, path));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use ferry_format::id::ObjectRef;

    use super::*;

    #[test]
    fn index_entries_are_read_back_only_while_their_object_is_there() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repo::new(dir.path());
        let (a, b, c) = (Digest::of(b"a"), Digest::of(b"b"), Digest::of(b"c"));
        assert_eq!(read_index(&repo, &a, &b).unwrap(), None);

        let object = repo.write_object(b"a diff").unwrap();
        write_index(&repo, &a, &b, &IndexEntry::Diff(object)).unwrap();
        write_index(&repo, &a, &c, &IndexEntry::NoDiff).unwrap();
        assert_eq!(
            read_index(&repo, &a, &b).unwrap(),
            Some(IndexEntry::Diff(object))
        );
        assert_eq!(read_index(&repo, &a, &c).unwrap(), Some(IndexEntry::NoDiff));
        let mut listed: Vec<_> = index_entries(&repo)
            .unwrap()
            .into_iter()
            .map(|(b, t, _)| (b, t))
            .collect();
        listed.sort();
        let mut want = vec![(a, b), (a, c)];
        want.sort();
        assert_eq!(listed, want);

        // An object gc removed, or of another size, and an entry that does not parse
        // count as nothing recorded: the pair is made again.
        let gone = ObjectRef::of(b"removed by gc");
        write_index(&repo, &a, &b, &IndexEntry::Diff(gone)).unwrap();
        assert_eq!(read_index(&repo, &a, &b).unwrap(), None);
        let resized = ObjectRef {
            size: object.size + 1,
            ..object
        };
        write_index(&repo, &a, &b, &IndexEntry::Diff(resized)).unwrap();
        assert_eq!(read_index(&repo, &a, &b).unwrap(), None);
        std::fs::write(dir.path().join(diff_index_path(&a, &c)), b"garbage").unwrap();
        assert_eq!(read_index(&repo, &a, &c).unwrap(), None);
        // Names that are not two manifest names are not index entries.
        std::fs::write(dir.path().join("diff-index").join("README"), b"x").unwrap();
        assert_eq!(index_entries(&repo).unwrap().len(), 2);
    }
}

//! Commands on a repository in a bucket: a working copy in a temporary folder.
//!
//! The command modules (publish, rollout, revoke, refresh-head, key lists, ls, audit)
//! work on a [`Repo`] folder. For a bucket they run unchanged on a working copy:
//!
//! 1. **Mirror** what the command reads ([`Mirror`]): the key lists, the heads (each
//!    with the ETag it had, for the swap), head log entries, and for `publish` the
//!    objects of the releases it builds on — each object checked against its name.
//! 2. **Run** the command on the copy.
//! 3. **Commit** what it added or changed, in the repository's write order: objects,
//!    then key lists, then head log entries, then each changed head with a
//!    compare-and-swap on the ETag read in step 1. Objects and log entries are
//!    put-if-absent; a key list of the same version written meanwhile by someone else
//!    is a conflict. Head log entries the command removed (`audit prune`) are deleted
//!    last.
//!
//! A lost swap means another writer moved the channel after step 1: the whole command
//! runs again on a fresh copy (it re-bases on the new head, as a second local writer
//! does once it holds the channel lock), [`ATTEMPTS`] times at most, then it fails
//! naming the conflict. Nothing of a lost attempt is referenced by any head, and a
//! crash at any point leaves the head either old or new, never naming a missing
//! object, because the head goes last.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use ferry_format::FormatError;
use ferry_format::envelope::ObjectKind;
use ferry_format::head::{ChannelHead, claimed_sequence};
use ferry_format::id::{Digest, ObjectRef};
use ferry_format::layout::{
    RepoPath, head_log_dir, head_log_path, head_path, object_path, parse_repo_path,
};
use ferry_format::verified::verify_pinned_manifest;
use ferry_format::version::check_channel;
use futures_util::StreamExt;
use tempfile::TempDir;

use super::object::ObjectRepo;
use super::{Caching, Expected, Mirror, Placed, Swapped};
use crate::error::{Error, Result, io_err};
use crate::fsutil::{self, FILE_MODE, Place};
use crate::publish::progress::Progress;
use crate::repo::Repo;

/// How many times a write runs before a lost compare-and-swap is reported.
pub const ATTEMPTS: u32 = 5;
/// The key list folder and the file `key new-list` keeps the replaced single key in.
const KEYS_DIR: &str = "keys";
const PREVIOUS_SINGLE_KEY: &str = "keys/previous-single-key.pub";
/// Largest `previous-single-key.pub` accepted (a key's text is about 60 bytes).
const MAX_KEY_FILE: u64 = 4096;

/// A read-only command on a working copy.
pub fn read<T>(
    o: &ObjectRepo,
    mirror: Mirror<'_>,
    f: impl FnOnce(&Repo) -> Result<T>,
) -> Result<T> {
    let stage = Stage::mirror(o, mirror)?;
    let out = f(&stage.repo).map_err(|e| stage.relocate(e));
    drop(stage);
    out
}

/// A copy of what `mirror` names, kept by the caller.
pub fn copy(o: &ObjectRepo, mirror: Mirror<'_>) -> Result<(TempDir, Repo)> {
    let stage = Stage::mirror(o, mirror)?;
    Ok((stage.dir, stage.repo))
}

/// A writing command on a working copy, committed; run again on a lost swap.
pub fn write<T>(
    o: &ObjectRepo,
    mirror: Mirror<'_>,
    mut f: impl FnMut(&Repo) -> Result<T>,
) -> Result<T> {
    let mut attempt = 1;
    let mut lost: Option<(String, String)> = None;
    loop {
        let stage = Stage::mirror(o, mirror)?;
        let out = match f(&stage.repo) {
            Ok(out) => out,
            // On the head another writer left, the command may no longer apply (its
            // version no longer sorts last...): that is the conflict's outcome.
            Err(e) => {
                let e = stage.relocate(e);
                return Err(match lost {
                    Some((channel, detail)) => Error::Conflict {
                        repo: o.url().to_string(),
                        channel,
                        detail: format!("{detail}; run again on the new head, it fails: {e:#}"),
                    },
                    None => e,
                });
            }
        };
        match stage.commit() {
            Ok(()) => return Ok(out),
            Err(Error::Conflict {
                repo,
                channel,
                detail,
            }) => {
                if attempt == ATTEMPTS {
                    return Err(Error::Conflict {
                        repo,
                        channel,
                        detail: format!(
                            "{detail}; gave up after {ATTEMPTS} attempts, each overtaken by \
                             another writer"
                        ),
                    });
                }
                tracing::warn!(
                    repo,
                    channel,
                    "{detail}; running again on the new head (attempt {} of {ATTEMPTS})",
                    attempt + 1
                );
                lost = Some((channel, detail));
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The channels of a bucket that have a head, sorted.
pub async fn channels(o: &ObjectRepo) -> Result<Vec<String>> {
    let (dirs, _) = o.list("channels").await?;
    let mut out = Vec::new();
    for name in dirs {
        if check_channel(&name).is_ok() && o.len(&head_path(&name)).await?.is_some() {
            out.push(name);
        }
    }
    out.sort();
    Ok(out)
}

/// The bucket's head swap: the head log entry first (put-if-absent, as the folder's
/// `write_head` does), then the head itself, conditional on `expected`. A lost swap
/// takes its log entry back: it names a head that never became current, and racing
/// writers would otherwise fill the audit trail with them (a crash between the two
/// writes can still leave one, as on a folder).
pub async fn swap_head(
    o: &ObjectRepo,
    channel: &str,
    bytes: &[u8],
    expected: &Expected,
) -> Result<Swapped> {
    let sequence = claimed_sequence(bytes).map_err(|source| Error::FormatContext {
        context: format!("the head to write for channel {channel:?}"),
        source,
    })?;
    let entry = head_log_path(channel, sequence, &Digest::of(bytes));
    o.put_new(&entry, Bytes::copy_from_slice(bytes), Caching::Immutable)
        .await?;
    crash_point!("server::head::write");
    let limit = ObjectKind::ChannelHead.max_size();
    let swapped = o.swap(&head_path(channel), bytes, expected, limit).await?;
    if let Swapped::Lost(_) = swapped
        && let Err(e) = o.delete(&entry).await
    {
        tracing::warn!("cannot remove the log entry of a head that lost its swap: {e:#}");
    }
    Ok(swapped)
}

/// A temporary folder holding what a command reads of the bucket.
struct Stage<'a> {
    o: &'a ObjectRepo,
    repo: Repo,
    /// Every file the mirror wrote (layout path → blake3), so the commit sends only
    /// what the command added or changed and deletes only what it removed.
    mirrored: HashMap<String, Digest>,
    /// Each head read, with what its swap must find.
    heads: HashMap<String, Expected>,
    dir: TempDir,
    /// Publish's progress counters (reporting to nobody for other commands).
    progress: Progress,
}

impl<'a> Stage<'a> {
    fn mirror(o: &'a ObjectRepo, what: Mirror<'_>) -> Result<Stage<'a>> {
        let dir = tempfile::Builder::new()
            .prefix("ferry-stage-")
            .tempdir()
            .map_err(io_err("create a working folder in", &std::env::temp_dir()))?;
        let mut s = Stage {
            o,
            repo: Repo::new(dir.path()),
            mirrored: HashMap::new(),
            heads: HashMap::new(),
            dir,
            progress: match what {
                Mirror::Release { progress, .. } => progress.clone(),
                _ => Progress::default(),
            },
        };
        s.repo.create()?;
        o.block_on(s.fetch(what)).map_err(|e| s.relocate(e))?;
        Ok(s)
    }

    async fn fetch(&mut self, what: Mirror<'_>) -> Result<()> {
        self.keys().await?;
        match what {
            Mirror::Keys => {}
            Mirror::Heads(Some(channel)) => {
                check_channel(channel)?;
                self.head(channel).await?;
            }
            Mirror::Heads(None) => {
                for channel in channels(self.o).await? {
                    self.head(&channel).await?;
                }
            }
            Mirror::Listing(only) => {
                let names = match only {
                    Some(c) => {
                        check_channel(c)?;
                        vec![c.to_string()]
                    }
                    None => channels(self.o).await?,
                };
                for channel in names {
                    let Some(bytes) = self.head(&channel).await? else {
                        continue;
                    };
                    // Unverified here, as `ls` without --key lists it; a manifest
                    // that cannot be fetched shows as unreadable in the listing.
                    let Ok(head) = ferry_format::head::inspect_head(&bytes) else {
                        continue;
                    };
                    for r in head.releases() {
                        if let Err(e) = self.object(&r.manifest, "manifest").await {
                            tracing::debug!(release = r.version, "manifest not mirrored: {e:#}");
                        }
                    }
                }
            }
            Mirror::Logs => {
                // The log folders first: a channel whose head is gone still has a log.
                let (dirs, _) = self.o.list("channels").await?;
                for channel in dirs.iter().filter(|c| check_channel(c).is_ok()) {
                    self.head(channel).await?;
                    self.log(channel).await?;
                }
            }
            Mirror::Release {
                channel,
                key,
                diff_bases,
                ..
            } => {
                check_channel(channel)?;
                self.progress.fetching();
                if let Some(bytes) = self.head(channel).await? {
                    self.release(channel, &bytes, key, diff_bases).await?;
                }
            }
        }
        Ok(())
    }

    /// Writes `bytes` at the layout path `rel` of the copy and remembers it.
    fn keep(&mut self, rel: &str, bytes: &[u8]) -> Result<()> {
        fsutil::write_atomic(
            &self.repo.root().join(rel),
            bytes,
            FILE_MODE,
            Place::Replace,
        )?;
        self.mirrored.insert(rel.to_string(), Digest::of(bytes));
        Ok(())
    }

    async fn keys(&mut self) -> Result<()> {
        let (_, files) = self.o.list(KEYS_DIR).await?;
        for (name, _) in files {
            let rel = format!("{KEYS_DIR}/{name}");
            let limit = if rel == PREVIOUS_SINGLE_KEY {
                MAX_KEY_FILE
            } else if matches!(parse_repo_path(&rel), Some(RepoPath::KeyList(_))) {
                ObjectKind::KeyList.max_size()
            } else {
                continue;
            };
            if let Some((bytes, _)) = self.o.get_small(&rel, limit).await? {
                self.keep(&rel, &bytes)?;
            }
        }
        Ok(())
    }

    async fn head(&mut self, channel: &str) -> Result<Option<Vec<u8>>> {
        let limit = ObjectKind::ChannelHead.max_size();
        let rel = head_path(channel);
        let Some((bytes, tag)) = self.o.get_small(&rel, limit).await? else {
            self.heads.insert(channel.to_string(), Expected::Absent);
            return Ok(None);
        };
        let tag = tag.ok_or_else(|| Error::StoreConfig {
            url: self.o.url().to_string(),
            reason: "the store sends no ETag with a head: it cannot be swapped safely".into(),
        })?;
        self.keep(&rel, &bytes)?;
        self.heads.insert(channel.to_string(), Expected::ETag(tag));
        Ok(Some(bytes))
    }

    async fn log(&mut self, channel: &str) -> Result<()> {
        let dir = head_log_dir(channel);
        let (_, files) = self.o.list(&dir).await?;
        let limit = ObjectKind::ChannelHead.max_size();
        for (name, _) in files {
            let rel = format!("{dir}/{name}");
            if !matches!(parse_repo_path(&rel), Some(RepoPath::HeadLog(..))) {
                continue;
            }
            if let Some((bytes, _)) = self.o.get_small(&rel, limit).await? {
                self.keep(&rel, &bytes)?;
            }
        }
        Ok(())
    }

    /// What publish reads besides the head: the current manifest and archive, and the
    /// manifests and archives of the releases it makes diffs from (manifests only for
    /// the releases before those, which it reads for manifest diffs). Mirrored as
    /// `publish --to` mirrors a server's channel; a base that cannot be mirrored costs
    /// only its diff.
    async fn release(
        &mut self,
        channel: &str,
        head_bytes: &[u8],
        key: &ferry_format::keys::SecretKey,
        diff_bases: &crate::publish::bases::DiffBases,
    ) -> Result<()> {
        let head = crate::trust::verify_publisher_head(&self.repo, channel, head_bytes, key)?;
        let releases: Vec<_> = head.releases().iter().rev().cloned().collect();
        let manifests = diff_bases.with_held(crate::publish::HELD_RELEASES);
        for (i, r) in releases.iter().enumerate() {
            if i > 0 && !manifests.contains(&(i + 1)) {
                continue;
            }
            let archive = i == 0 || diff_bases.contains(i + 1);
            match self.release_objects(&head, r, archive).await {
                Ok(()) => {}
                // The current release must be complete: publish builds on it.
                Err(e) if i == 0 => return Err(e),
                Err(e) => tracing::warn!(base = r.version, "cannot mirror this diff base: {e:#}"),
            }
        }
        Ok(())
    }

    async fn release_objects(
        &mut self,
        head: &ChannelHead,
        r: &ferry_format::head::ReleaseRef,
        archive: bool,
    ) -> Result<()> {
        self.object(&r.manifest, "manifest").await?;
        if !archive {
            return Ok(());
        }
        let bytes = self.repo.read_object(&r.manifest, "manifest")?;
        let manifest = verify_pinned_manifest(&bytes, r, head.channel())?;
        self.object(&manifest.archive, "archive").await
    }

    /// Downloads object `r` into the copy, streamed to disk and checked against its
    /// name (size and blake3) before it is placed.
    async fn object(&mut self, r: &ObjectRef, what: &'static str) -> Result<()> {
        let rel = object_path(&r.hash);
        let mut tmp = self.repo.object_temp()?;
        let tmp_path = tmp.path().to_path_buf();
        let mut hasher = blake3::Hasher::new();
        let mut len = 0u64;
        let mut body = self
            .o
            .stream(&rel, 0..r.size)
            .await
            .map_err(|e| self.o_err(what, &rel, e))?;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| self.o_err(what, &rel, e))?;
            len += chunk.len() as u64;
            self.progress.fetched(chunk.len() as u64);
            hasher.update(&chunk);
            tmp.write_all(&chunk).map_err(io_err("write", &tmp_path))?;
        }
        // The range asked for r.size bytes: more cannot come, fewer means a shorter
        // object, and the right r.size bytes are the object whatever may follow them.
        let damaged = |source| Error::FormatContext {
            context: format!(
                "{what} {}/{rel} is not the object its name says",
                self.o.url()
            ),
            source,
        };
        if len != r.size {
            return Err(damaged(FormatError::SizeMismatch {
                kind: what,
                expected: r.size,
                actual: len,
            }));
        }
        let actual = Digest::from(hasher.finalize());
        if actual != r.hash {
            return Err(damaged(FormatError::HashMismatch {
                kind: what,
                expected: r.hash.to_hex(),
                actual: actual.to_hex(),
            }));
        }
        self.repo.place_object(tmp, &r.hash)?;
        self.mirrored.insert(rel, r.hash);
        Ok(())
    }

    fn o_err(&self, what: &str, rel: &str, e: std::io::Error) -> Error {
        if e.kind() == std::io::ErrorKind::NotFound {
            return Error::BrokenRepo {
                repo: PathBuf::from(self.o.url().to_string()),
                reason: format!("{what} {rel} is missing"),
            };
        }
        Error::Io {
            action: "read",
            path: PathBuf::from(format!("{}/{rel}", self.o.url())),
            source: e,
        }
    }

    /// Sends what the command added or changed, in the repository's write order.
    fn commit(self) -> Result<()> {
        let files = walk(self.repo.root())?;
        let mut objects = Vec::new();
        let mut keys = BTreeMap::new();
        let mut logs = Vec::new();
        let mut heads = Vec::new();
        let mut present = std::collections::HashSet::new();
        for (rel, path) in files {
            present.insert(rel.clone());
            let bytes_changed = |s: &Self| -> Result<bool> {
                Ok(match s.mirrored.get(&rel) {
                    None => true,
                    Some(d) => {
                        let now = std::fs::read(&path).map_err(io_err("read", &path))?;
                        Digest::of(&now) != *d
                    }
                })
            };
            if rel == PREVIOUS_SINGLE_KEY {
                if bytes_changed(&self)? {
                    keys.insert(0, (rel, path));
                }
                continue;
            }
            match parse_repo_path(&rel) {
                // Immutable names: a mirrored one is unchanged by construction.
                Some(RepoPath::Object(_)) if !self.mirrored.contains_key(&rel) => {
                    objects.push((rel, path))
                }
                Some(RepoPath::HeadLog(..)) if !self.mirrored.contains_key(&rel) => {
                    logs.push((rel, path))
                }
                Some(RepoPath::KeyList(v)) if bytes_changed(&self)? => {
                    keys.insert(v, (rel, path));
                }
                Some(RepoPath::Head(channel)) if bytes_changed(&self)? => {
                    heads.push((channel, path))
                }
                _ => {}
            }
        }
        let removed: Vec<String> = self
            .mirrored
            .keys()
            .filter(|rel| !present.contains(*rel))
            .filter(|rel| matches!(parse_repo_path(rel), Some(RepoPath::HeadLog(..))))
            .cloned()
            .collect();
        let o = self.o;
        let mut sizes = Vec::with_capacity(objects.len());
        for (_, path) in &objects {
            sizes.push(std::fs::metadata(path).map_err(io_err("read", path))?.len());
        }
        if !objects.is_empty() {
            self.progress.uploading(sizes.iter().sum());
        }
        let result = o.block_on(async {
            for ((rel, path), &size) in objects.iter().zip(&sizes) {
                o.put_new_file(rel, path, size, Caching::Immutable, &self.progress)
                    .await?;
                crash_point!("server::store::object_sent");
            }
            for (rel, path) in keys.values() {
                let bytes = std::fs::read(path).map_err(io_err("read", path))?;
                let placed = o
                    .put_new(rel, Bytes::from(bytes.clone()), Caching::Short)
                    .await?;
                if placed == Placed::Existed {
                    let limit = ObjectKind::KeyList.max_size();
                    let now = o.get_small(rel, limit).await?.map(|(b, _)| b);
                    if now.as_deref() != Some(&bytes[..]) {
                        return Err(Error::Conflict {
                            repo: o.url().to_string(),
                            channel: String::new(),
                            detail: format!(
                                "{rel} was written by another process while this command ran: \
                                 run it again on the repository's new key list"
                            ),
                        });
                    }
                }
            }
            for (rel, path) in &logs {
                let bytes = std::fs::read(path).map_err(io_err("read", path))?;
                o.put_new(rel, Bytes::from(bytes), Caching::Immutable)
                    .await?;
            }
            for (channel, path) in &heads {
                let bytes = std::fs::read(path).map_err(io_err("read", path))?;
                let expected = self.heads.get(channel).ok_or_else(|| Error::BrokenRepo {
                    repo: PathBuf::from(o.url().to_string()),
                    reason: format!(
                        "the command wrote the head of channel {channel:?} without reading it first"
                    ),
                })?;
                if let Swapped::Lost(now) = swap_head(o, channel, &bytes, expected).await? {
                    return Err(conflict(o, channel, &bytes, now.as_deref()));
                }
            }
            for rel in &removed {
                o.delete(rel).await?;
            }
            Ok(())
        });
        result.map_err(|e| self.relocate(e))
    }

    /// An error about the copy, restated about the bucket.
    fn relocate(&self, e: Error) -> Error {
        let root = self.repo.root();
        let url = self.o.url().to_string();
        let moved = |p: &Path| -> PathBuf {
            match p.strip_prefix(root) {
                Ok(rel) if rel.as_os_str().is_empty() => PathBuf::from(&url),
                Ok(rel) => PathBuf::from(format!("{url}/{}", rel.display())),
                Err(_) => p.to_path_buf(),
            }
        };
        match e {
            Error::BrokenRepo { repo, reason } => Error::BrokenRepo {
                repo: moved(&repo),
                reason: reason.replace(&root.display().to_string(), &url),
            },
            Error::Io {
                action,
                path,
                source,
            } => Error::Io {
                action,
                path: moved(&path),
                source,
            },
            Error::Unsupported { path, reason } => Error::Unsupported {
                path: moved(&path),
                reason,
            },
            other => other,
        }
    }
}

/// The conflict a lost head swap reports.
fn conflict(o: &ObjectRepo, channel: &str, ours: &[u8], now: Option<&[u8]>) -> Error {
    let ours = claimed_sequence(ours).unwrap_or(0);
    let now = match now.map(claimed_sequence) {
        None => "removed the head".to_string(),
        Some(Ok(s)) => format!("wrote head sequence {s}"),
        Some(Err(_)) => "wrote an unreadable head".to_string(),
    };
    Error::Conflict {
        repo: o.url().to_string(),
        channel: channel.to_string(),
        detail: format!(
            "another writer {now} after this command read the head, so its own head \
             (sequence {ours}) was not written"
        ),
    }
}

/// Every file under `root` as (layout path, file path), skipping dot-names (temp
/// files, the lock folder).
fn walk(root: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for item in std::fs::read_dir(&dir).map_err(io_err("list", &dir))? {
            let item = item.map_err(io_err("list", &dir))?;
            let name = item.file_name();
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            let path = item.path();
            let kind = item.file_type().map_err(io_err("read", &path))?;
            if kind.is_dir() {
                dirs.push(path);
            } else if kind.is_file()
                && let Ok(rel) = path.strip_prefix(root)
                && let Some(rel) = rel.to_str()
            {
                out.push((rel.to_string(), path.clone()));
            }
        }
    }
    Ok(out)
}

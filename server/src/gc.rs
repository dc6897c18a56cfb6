//! `ferry-server gc`: deletes the objects nothing a channel head names any more.
//!
//! What is kept: for every channel, its head's key list and manifest diffs (with
//! their chunk diffs and base manifests), for every release the head lists, its
//! manifest, archive, diff objects and the manifests those diffs are based on, and the
//! diffs `serve --diffs-on-demand` made between two releases one head still lists.
//! Heads, head log entries (`audit prune` owns those) and key lists are never touched;
//! only names under `objects/` are candidates, and entries of the on-demand diff index
//! (FORMAT.md §3.8) whose pair no head lists any more, which are removed first.
//!
//! A publisher uploads its objects before its head names them, so an unreferenced
//! object may belong to a publish in progress: it is deleted only once it is older
//! than the grace period. The objects are listed *before* the heads are read, so an
//! object a head names by the time gc reads it is kept whatever its age.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use ferry_format::envelope::ObjectKind;
use ferry_format::head::inspect_head;
use ferry_format::id::Digest;
use ferry_format::layout::{RepoPath, head_path, object_path, parse_repo_path};
use ferry_format::ondemand::IndexEntry;
use ferry_format::verified::verify_pinned_manifest;

use crate::error::{Error, Result};
use crate::store::{Mirror, Store};

/// What `gc` does.
#[derive(Clone, Copy, Debug)]
pub struct GcOptions {
    /// Unreferenced objects younger than this are kept (a publish may be under way).
    pub grace: Duration,
    /// List what would be deleted; delete nothing.
    pub dry_run: bool,
    /// Also keep, per channel, this many of the newest releases its head no longer
    /// lists (found in the head log): what `rollout`/`publish` retired stays fetchable.
    pub keep_releases: usize,
}

/// What `gc` found and did.
#[derive(Debug, Default)]
pub struct GcReport {
    /// Deleted (or, with `--dry-run`, deletable) objects: layout path and size.
    pub freed: Vec<(String, u64)>,
    pub referenced: usize,
    /// Unreferenced but younger than the grace period.
    pub young: usize,
    pub dry_run: bool,
}

impl GcReport {
    pub fn text(&self) -> String {
        let mut out = String::new();
        let verb = if self.dry_run {
            "would delete"
        } else {
            "deleted"
        };
        for (rel, size) in &self.freed {
            let _ = writeln!(out, "{verb} {rel} ({size} bytes)");
        }
        let bytes: u64 = self.freed.iter().map(|(_, s)| s).sum();
        let _ = writeln!(
            out,
            "{} {} objects, {bytes} bytes; kept {} referenced and {} unreferenced younger \
             than the grace period",
            if self.dry_run { "would free" } else { "freed" },
            self.freed.len(),
            self.referenced,
            self.young
        );
        out
    }
}

/// Runs gc on `store`.
pub async fn gc(store: &Store, opts: GcOptions) -> Result<GcReport> {
    // Listed first: anything a publisher adds later is not a candidate, and anything
    // its head names by the time the heads are read below is referenced.
    let listed = store.list_objects().await?;
    let (mut referenced, pairs) = referenced(store).await?;
    if opts.keep_releases > 0 {
        referenced.extend(retired(store, opts.keep_releases).await?);
    }
    referenced.extend(on_demand_diffs(store, &pairs, opts.dry_run)?);
    let now = SystemTime::now();
    // A time in the future (clock skew) counts as young.
    let young = |time: SystemTime| {
        now.duration_since(time)
            .map_or(true, |age| age < opts.grace)
    };
    let mut report = GcReport {
        dry_run: opts.dry_run,
        ..GcReport::default()
    };
    for (rel, size, modified) in listed {
        // Only names the layout gives objects: a temp file of a running publish (in
        // `objects/` on a folder) is not ours to remove.
        let Some(RepoPath::Object(hash)) = parse_repo_path(&rel) else {
            continue;
        };
        if referenced.contains(&hash) {
            report.referenced += 1;
            continue;
        }
        if young(modified) {
            report.young += 1;
            continue;
        }
        if !opts.dry_run {
            // A publish that reuses an old object renews its time before its head
            // names it (fsutil::refresh_time, ObjectRepo::put_new): look again right
            // before deleting, so one renewed since the listing is kept.
            let Some(time) = store.modified(&rel).await? else {
                continue; // deleted by someone else since the listing
            };
            if young(time) {
                report.young += 1;
                continue;
            }
            store.delete(&rel).await?;
        }
        report.freed.push((rel, size));
    }
    Ok(report)
}

/// The release manifests of each channel head, whose pairs keep their on-demand diffs.
type HeadReleases = Vec<HashSet<Digest>>;

/// Every object hash a channel head names, directly or through its releases'
/// manifests, and each head's release manifests. Any head or manifest that cannot be
/// read stops gc: deleting with an incomplete picture could remove what a head still
/// needs.
async fn referenced(store: &Store) -> Result<(HashSet<Digest>, HeadReleases)> {
    let mut keep = HashSet::new();
    let mut pairs = Vec::new();
    let broken = |reason: String| Error::BrokenRepo {
        repo: store.name().into(),
        reason: format!("{reason}; gc deletes nothing while it cannot see every reference"),
    };
    for channel in store.channels().await? {
        let rel = head_path(&channel);
        let bytes = store
            .read_small(&rel, ObjectKind::ChannelHead.max_size())
            .await?
            .ok_or_else(|| broken(format!("the head of channel {channel:?} vanished")))?;
        let head = inspect_head(&bytes).map_err(|e| broken(format!("{rel}: {e}")))?;
        if let Some(k) = &head.key_list {
            keep.insert(k.object.hash);
        }
        for d in &head.content.manifest_diffs {
            keep.insert(d.object.hash);
            keep.insert(d.base_manifest);
            if let Some(c) = &d.chunk_diff {
                keep.insert(c.hash);
            }
        }
        pairs.push(head.releases().iter().map(|r| r.manifest.hash).collect());
        for r in head.releases() {
            keep.insert(r.manifest.hash);
            let rel = object_path(&r.manifest.hash);
            let bytes = store
                .read_small(&rel, r.manifest.size)
                .await?
                .ok_or_else(|| {
                    broken(format!(
                        "the manifest of {channel} {} ({rel}) is missing",
                        r.version
                    ))
                })?;
            let manifest = verify_pinned_manifest(&bytes, r, &channel)
                .map_err(|e| broken(format!("{rel}: {e}")))?;
            keep.insert(manifest.archive.hash);
            for d in &manifest.diffs {
                keep.insert(d.object.hash);
                // The base is on the agent's disk, but keeping its small manifest
                // costs little and keeps the diff meaningful to any tool reading it.
                keep.insert(d.base_manifest);
            }
        }
    }
    Ok((keep, pairs))
}

/// The objects of the on-demand diff index (a folder repository's) whose base and
/// target one head still lists; the entries of other pairs are removed (unless
/// `dry_run`), so their objects go like any unreferenced object, after the grace
/// period. An entry written after the heads were read names an object younger than
/// the grace period, which stays.
fn on_demand_diffs(store: &Store, heads: &HeadReleases, dry_run: bool) -> Result<HashSet<Digest>> {
    let mut keep = HashSet::new();
    let Store::Local(repo) = store else {
        return Ok(keep);
    };
    for (base, target, path) in crate::serve::ondemand::pair::index_entries(repo)? {
        let retained = heads
            .iter()
            .any(|h| h.contains(&base) && h.contains(&target));
        if retained {
            if let Some(IndexEntry::Diff(r)) =
                crate::serve::ondemand::pair::read_index(repo, &base, &target)?
            {
                keep.insert(r.hash);
            }
        } else if !dry_run {
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(crate::error::io_err("remove", &path)(e));
                }
                _ => {}
            }
        }
    }
    Ok(keep)
}

/// The objects of the `keep` newest releases of each channel that its head no longer
/// lists, newest first as the head log shows them (the log is read from a working
/// copy: the folder itself, or the bucket's heads and log entries). A retired
/// release whose manifest is gone already is skipped: there is nothing left to keep.
async fn retired(store: &Store, keep: usize) -> Result<HashSet<Digest>> {
    let copy = store.clone();
    let copy = tokio::task::spawn_blocking(move || copy.working_copy(Mirror::Logs))
        .await
        .map_err(|e| Error::BrokenRepo {
            repo: store.name().into(),
            reason: format!("reading the head log stopped: {e}"),
        })??;
    let repo = copy.repo();
    let mut out = HashSet::new();
    for channel in crate::audit::log::channels(repo)? {
        let current: HashSet<String> = match repo.read_head(&channel)? {
            Some(b) => inspect_head(&b)
                .map(|h| h.releases().iter().map(|r| r.version.clone()).collect())
                .unwrap_or_default(),
            None => HashSet::new(),
        };
        let mut picked: Vec<ferry_format::head::ReleaseRef> = Vec::new();
        let dir = repo.head_log_dir(&channel);
        for (_, name) in crate::audit::log::entries(repo, &channel)?
            .into_iter()
            .rev()
        {
            if picked.len() >= keep {
                break;
            }
            let path = dir.join(&name);
            let Ok(bytes) = crate::fsutil::read_small(&path, ObjectKind::ChannelHead.max_size())
            else {
                continue;
            };
            let Ok(head) = inspect_head(&bytes) else {
                continue;
            };
            for r in head.releases() {
                if picked.len() < keep
                    && !current.contains(&r.version)
                    && !picked.iter().any(|p| p.version == r.version)
                {
                    picked.push(r.clone());
                }
            }
        }
        for r in picked {
            let rel = object_path(&r.manifest.hash);
            let Some(bytes) = store.read_small(&rel, r.manifest.size).await? else {
                continue;
            };
            // The hash pins it: a manifest that does not verify is not kept by this rule.
            let Ok(manifest) = verify_pinned_manifest(&bytes, &r, &channel) else {
                continue;
            };
            out.insert(r.manifest.hash);
            out.insert(manifest.archive.hash);
            for d in &manifest.diffs {
                out.insert(d.object.hash);
                out.insert(d.base_manifest);
            }
        }
    }
    Ok(out)
}

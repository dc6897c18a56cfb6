//! The update plan on this machine: what is on disk, observed once, handed to the pure
//! planner ([`plan_update`]), and the plan's lines as `ferry update` prints them.
//!
//! Observing is the only part that reads the disk: which chunks of the release the
//! retained releases hold (each hashed), whether a diff's base still has its files at
//! their sizes (the diff reads those bytes; what it produces is checked chunk by
//! chunk), and whether an intact copy of the release is already in `versions/`. From then on the plan is a value: printed, checked against
//! the data budget, executed route by route (deliver/), and reported, never recomputed.
//!
//! A base edited locally, or too old for the publisher to have diffed against, leaves
//! the archive tail, never a full download unless nothing is local.

use anyhow::Result;
use ferry_format::delta::nothing::NOTHING;
use ferry_format::delta::{DiffRef, ManifestDiffRef};
use ferry_format::head::ChannelHead;
use ferry_format::id::Digest;
use ferry_format::manifest::{EntryKind, Manifest};
use ferry_format::plan::{Base, DEFAULT_MAX_GAP, Disk, Route, SkipReason, UpdatePlan, Via};
use ferry_format::plan::{plan_archive, plan_update};
use ferry_format::verified;

use super::report;
use super::root::Root;
use crate::apply::check::{Depth, check_tree};
use crate::apply::source::{LocalChunks, LocalRelease};
use crate::install::layout::Layout;

/// A plan and the observations of the disk it was made from, which executing it uses.
pub struct Observed {
    pub plan: UpdatePlan,
    /// The retained releases (diff bases and chunk sources).
    pub releases: Vec<LocalRelease>,
    /// Their chunks, those the release uses hashed already.
    pub local: LocalChunks,
    /// The recorded folder of this release when it is on disk but damaged: the
    /// application's own files in it are carried into the new copy.
    pub damaged: Option<String>,
}

/// Observes what `root` holds of `manifest`'s release and plans its update from it.
/// `failed` names diff objects that already failed in this run; `on_demand` says the
/// server makes diffs on request (FORMAT.md §3.8), asked for when none listed serves.
pub fn observe(
    root: &Root,
    manifest: &Manifest,
    from: Option<&str>,
    failed: &[Digest],
    on_demand: bool,
) -> Result<Observed> {
    observe_with(root, manifest, from, failed, on_demand, Vec::new())
}

/// What the plan calls the empty release, the base of a diff from nothing (FORMAT.md
/// §3.9): "download diff from nothing". No version is spelled so (they start with a
/// digit).
pub const NOTHING_VERSION: &str = "nothing";

/// The empty release as a diff base: no file, so its tree is never read.
pub fn empty_release(root: &Root) -> LocalRelease {
    LocalRelease {
        version: NOTHING_VERSION.to_string(),
        tree: root.layout.staging().join(NOTHING_VERSION),
        manifest: verified::empty_release(&root.config.channel),
    }
}

/// The head's diff from nothing (FORMAT.md §3.9) for an agent that holds no release.
/// An agent holding any release does not take it: every id of its skeleton is a hole,
/// so a plan made from it could not see the chunks the agent holds, and the archive
/// tail or its own diffs serve it better anyway.
pub fn offered_from_nothing<'h>(root: &Root, head: &'h ChannelHead) -> Option<&'h ManifestDiffRef> {
    if !root.state.releases.is_empty() {
        return None;
    }
    head.content
        .manifest_diffs
        .iter()
        .find(|d| d.base_manifest == NOTHING && d.chunk_diff.is_some())
}

/// [`observe`] for a release of `head`: with the head's diff from nothing among the
/// routes when it is offered to this agent ([`offered_from_nothing`]) and `manifest` is
/// the head's current release, the one it is made for.
pub fn observe_head(
    root: &Root,
    head: &ChannelHead,
    manifest: &Manifest,
    from: Option<&str>,
    on_demand: bool,
) -> Result<Observed> {
    let offered = offered_from_nothing(root, head)
        .filter(|_| head.current().version == manifest.version)
        .and_then(|d| d.chunk_diff);
    let Some(object) = offered else {
        return observe(root, manifest, from, &[], on_demand);
    };
    let mut with = manifest.clone();
    with.diffs.push(DiffRef {
        base_version: NOTHING_VERSION.to_string(),
        base_manifest: NOTHING,
        object,
    });
    observe_with(root, &with, from, &[], on_demand, vec![empty_release(root)])
}

/// [`observe`] with `extra` releases beside the retained ones: the intermediate release
/// of two hops, built in staging, is a chunk source and diff base for the target.
pub fn observe_with(
    root: &Root,
    manifest: &Manifest,
    from: Option<&str>,
    failed: &[Digest],
    on_demand: bool,
    extra: Vec<LocalRelease>,
) -> Result<Observed> {
    let (copy, damaged) = match intact_copy(root, manifest)? {
        OnDisk::Intact(folder) => (Some(folder), None),
        OnDisk::Damaged(folder) => (None, Some(folder)),
        OnDisk::Absent => (None, None),
    };
    let mut releases = root.local_releases();
    releases.extend(extra);
    let mut local = LocalChunks::index(&releases);
    local.verify_wanted(manifest);
    let has = |id: &_| local.has(id);
    // Only bases whose diff could beat the archive ranges are worth checking (the
    // planner skips the others as not smaller); with a server making diffs, any
    // base may be one.
    let ranges = plan_archive(manifest, has, DEFAULT_MAX_GAP).download_bytes;
    let hashes: Vec<Digest> = releases.iter().map(|r| r.manifest.object_hash()).collect();
    let bases: Vec<Base> = releases
        .iter()
        .zip(&hashes)
        .map(|(r, hash)| Base {
            version: &r.version,
            manifest: &r.manifest,
            hash: *hash,
            intact: (on_demand
                || manifest.diffs.iter().any(|d| {
                    d.base_manifest == *hash
                        && d.object.size < ranges
                        && !failed.contains(&d.object.hash)
                }))
                && base_intact(r),
        })
        .collect();
    let disk = Disk {
        active: from,
        copy: copy.as_deref(),
        have: &has,
        bases: &bases,
        failed,
        on_demand,
    };
    let plan = plan_update(manifest, &disk, DEFAULT_MAX_GAP);
    Ok(Observed {
        plan,
        releases,
        local,
        damaged,
    })
}

/// Whether every regular file of `base` (the diff's base bytes) is still there with
/// its manifest size. Its content is not hashed here: that would read the whole base
/// once more before the diff reads it, and every chunk the diff produces is checked
/// against its id anyway, so an edit the sizes do not show fails the diff, which
/// falls back to the plan's next route.
pub fn base_intact(base: &LocalRelease) -> bool {
    base.manifest.entries.iter().all(|e| match &e.kind {
        EntryKind::File { size, .. } => {
            let path = base.tree.join(&e.path);
            std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file() && m.len() == *size)
        }
        _ => true,
    })
}

/// What `versions/` already holds of a release.
enum OnDisk {
    Intact(String),
    /// The recorded folder of a retained release that no longer matches its manifest.
    Damaged(String),
    Absent,
}

/// Looks for an intact copy of `manifest`'s release: its recorded folder first, then
/// folders left by interrupted runs. Extra files do not matter.
fn intact_copy(root: &Root, manifest: &Manifest) -> Result<OnDisk> {
    let version = manifest.version.as_str();
    let recorded = root.state.folder_of(version).map(str::to_string);
    let mut folders: Vec<String> = recorded.iter().cloned().collect();
    if let Ok(entries) = std::fs::read_dir(root.layout.versions()) {
        for entry in entries.flatten() {
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if Layout::folder_version(&name) == version && !folders.contains(&name) {
                folders.push(name);
            }
        }
    }
    for folder in folders {
        let dir = root.layout.release_dir(&folder);
        if std::fs::symlink_metadata(&dir).is_err() {
            continue;
        }
        let check = check_tree(manifest, &dir, Depth::Content);
        if check.is_intact() {
            return Ok(OnDisk::Intact(folder));
        }
        tracing::warn!(
            "{} is damaged ({} problem(s), first: {}); building a new copy beside it",
            dir.display(),
            check.damage.len(),
            check.damage[0]
        );
    }
    Ok(match recorded {
        Some(f) if std::fs::symlink_metadata(root.layout.release_dir(&f)).is_ok() => {
            OnDisk::Damaged(f)
        }
        _ => OnDisk::Absent,
    })
}

/// Why the plan takes no diff, one line per base, for the log: `not using a diff: ...`.
pub fn notes(plan: &UpdatePlan) -> Vec<String> {
    let archive = plan.archive().download_bytes;
    plan.skipped
        .iter()
        .map(|s| match s.reason {
            SkipReason::NoDiff => format!("no diff from {}", s.base),
            SkipReason::Failed => format!("the diff from {} already failed", s.base),
            SkipReason::NotSmaller => format!(
                "the diff from {} is not smaller than the archive ranges ({})",
                s.base,
                report::bytes(archive)
            ),
            SkipReason::Modified => format!("{} is modified locally", s.base),
        })
        .collect()
}

/// The plan line of `route`, as `ferry update` prints it before fetching:
///
/// - `plan: 1.0.0 -> 2.0.0: reuse 812 chunks (52.1 MB) from local releases, download
///   40 chunks (1.2 MB) in 1 request(s); 96% saved against the whole archive (52.1 MB)`
/// - `...: download diff from 1.0.0 (231.4 KB) in 1 request`, plus any archive rest
/// - `...: ask the server for a diff from 1.0.0 (taken if under 1.2 MB) in 1 request;
///   else the archive`
/// - `...: release already on disk and intact in ROOT/versions/2.0.0, nothing to download`
pub fn line(layout: &Layout, plan: &UpdatePlan, route: &Route) -> String {
    let head = format!(
        "plan: {} -> {}: ",
        plan.from.as_deref().unwrap_or("none"),
        plan.to
    );
    let reuse = format!(
        "reuse {} chunks ({}) from local releases",
        plan.reuse_chunks,
        report::bytes(plan.reuse_bytes)
    );
    let rest = &route.archive;
    let mut line = match &route.via {
        Via::OnDisk { folder } => {
            return format!(
                "{head}release already on disk and intact in {}, nothing to download",
                layout.release_dir(folder).display()
            );
        }
        Via::Archive => format!(
            "{head}{reuse}, download {} chunks ({}) in {} request(s)",
            rest.fetch_chunks,
            report::bytes(rest.download_bytes),
            rest.ranges.len(),
        ),
        Via::Diff { base, object, .. } => {
            let mut line = format!(
                "{head}{reuse}, download diff from {base} ({}) in 1 request",
                report::bytes(object.size)
            );
            if rest.fetch_chunks > 0 {
                line.push_str(&format!(
                    ", plus {} chunks ({}) from the archive in {} request(s)",
                    rest.fetch_chunks,
                    report::bytes(rest.download_bytes),
                    rest.ranges.len()
                ));
            }
            line
        }
        Via::Produced { base, cap, .. } => {
            let mut line = format!(
                "{head}{reuse}, ask the server for a diff from {base} (taken if under {}) in 1 request",
                report::bytes(*cap)
            );
            if rest.fetch_chunks > 0 {
                line.push_str(&format!(
                    ", plus {} chunks ({}) from the archive in {} request(s)",
                    rest.fetch_chunks,
                    report::bytes(rest.download_bytes),
                    rest.ranges.len()
                ));
            }
            line.push_str("; else the archive");
            return line;
        }
    };
    line.push_str(&saved(route.download_bytes, plan.archive_size));
    line
}

/// `; 96% saved against the whole archive (52.1 MB)`, or nothing for a first install
/// that needs all of it.
fn saved(download: u64, archive: u64) -> String {
    if archive == 0 || download >= archive {
        return String::new();
    }
    let pct = (archive - download) * 100 / archive;
    format!(
        "; {pct}% saved against the whole archive ({})",
        report::bytes(archive)
    )
}

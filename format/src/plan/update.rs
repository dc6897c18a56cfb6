//! The update plan: one value saying, for every chunk of a release, where it comes
//! from, and what each way of getting the missing ones costs, in the order to try them.
//!
//! Computed once from the signed manifest and a pure description of the disk
//! ([`Disk`]): the caller has already hashed what it holds, so planning reads nothing
//! and the same inputs always give the same plan. The first [`Route`] is the plan; the
//! ones after it are the fallbacks, each independent of the ones before (a failed diff
//! leaves nothing the next route relies on), and the last always fetches the missing
//! chunks from the archive alone, the way that needs nothing but the repository.

use std::collections::HashSet;
use std::ops::Range;

use super::{ArchivePlan, plan_archive};
use crate::delta::missing_chunks;
use crate::id::{ChunkId, Digest, ObjectRef};
use crate::manifest::Manifest;

/// A retained release a diff could start from, as the caller found it on disk.
///
/// ```
/// use ferry_format::id::Digest;
/// use ferry_format::plan::Base;
/// # let manifest = ferry_format::manifest::Manifest {
/// #     channel: "stable".into(), version: "2.0.0".into(), generation: 2,
/// #     chunking: Default::default(), archive: ferry_format::id::ObjectRef::of(b""),
/// #     chunks: vec![], entries: vec![], diffs: vec![],
/// # };
/// let base = Base { version: "1.0.0", manifest: &manifest, hash: Digest::of(b"m"), intact: true };
/// assert!(base.intact);
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Base<'a> {
    pub version: &'a str,
    /// Its verified manifest, which says which chunks a diff from it produces.
    pub manifest: &'a Manifest,
    /// The hash of that manifest's object, as a diff names its base.
    pub hash: Digest,
    /// Whether its installed files still hash to the manifest: a diff reads them.
    pub intact: bool,
}

/// What the caller holds, found before planning (the planner does no I/O).
///
/// ```
/// use ferry_format::plan::Disk;
/// let nothing = |_: &ferry_format::id::ChunkId| false;
/// let disk = Disk { active: None, copy: None, have: &nothing, bases: &[], failed: &[],
///     on_demand: false };
/// assert!(disk.bases.is_empty());
/// ```
#[derive(Clone, Copy)]
pub struct Disk<'a> {
    /// The active release, if any (only named in the plan and its notes).
    pub active: Option<&'a str>,
    /// A folder already holding an intact copy of the release.
    pub copy: Option<&'a str>,
    /// Whether a verified copy of a chunk is held locally.
    pub have: &'a dyn Fn(&ChunkId) -> bool,
    /// The retained releases, each a possible diff base.
    pub bases: &'a [Base<'a>],
    /// Diff objects that already failed in this run: never planned again. For a diff
    /// the server produces (no object name yet), its base's manifest hash.
    pub failed: &'a [Digest],
    /// Whether the server produces diffs on request (FORMAT.md §3.8): when no listed
    /// diff starts from a release held intact, the plan asks it for one.
    pub on_demand: bool,
}

impl std::fmt::Debug for Disk<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Disk")
            .field("active", &self.active)
            .field("copy", &self.copy)
            .field("bases", &self.bases)
            .field("failed", &self.failed)
            .field("on_demand", &self.on_demand)
            .finish_non_exhaustive()
    }
}

/// Where the chunks of a [`Region`] come from.
///
/// ```
/// use ferry_format::plan::Source;
/// assert_ne!(Source::Local, Source::Archive);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Copied from a file of a local release (or the intact copy already on disk).
    Local,
    /// Produced by the route's diff object.
    Diff,
    /// Cut out of one of the route's archive ranges.
    Archive,
}

/// Consecutive chunks of the release's table with the same source.
///
/// ```
/// use ferry_format::plan::{Region, Source};
/// let r = Region { chunks: 0..3, bytes: 300, source: Source::Local };
/// assert_eq!(r.chunks.len(), 3);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Region {
    /// Chunk-table indexes, `start..end`.
    pub chunks: Range<usize>,
    /// Their uncompressed bytes (what they add to the release's files).
    pub bytes: u64,
    pub source: Source,
}

/// How a [`Route`] gets the chunks no local release holds.
///
/// ```
/// use ferry_format::plan::Via;
/// assert_eq!(Via::Archive.name(), "archive");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Via {
    /// Nothing to get: an intact copy of the release is already in `folder`.
    OnDisk { folder: String },
    /// A diff object from the retained release `base`, which produces the chunks at
    /// `produces` (table indexes not held locally); the rest from archive ranges.
    Diff {
        base: String,
        object: ObjectRef,
        produces: Vec<usize>,
    },
    /// A diff the server produces on request (FORMAT.md §3.8) from the retained
    /// release `base` (whose manifest is `base_manifest`), which produces the chunks at
    /// `produces`; the rest from archive ranges. Its size is unknown before it
    /// arrives: it is worth taking only below `cap`, the bytes of the archive ranges it
    /// replaces, and the agent reads no more than that.
    Produced {
        base: String,
        base_manifest: Digest,
        cap: u64,
        produces: Vec<usize>,
    },
    /// Archive ranges alone.
    Archive,
}

impl Via {
    /// The word `ferry update --dry-run --json` uses: `on-disk`, `diff` or `archive`.
    pub fn name(&self) -> &'static str {
        match self {
            Via::OnDisk { .. } => "on-disk",
            Via::Diff { .. } => "diff",
            Via::Produced { .. } => "server-diff",
            Via::Archive => "archive",
        }
    }
}

/// One complete way to get a release: every chunk's source and what it downloads.
///
/// ```
/// use ferry_format::plan::{Route, Via};
/// let r = Route { via: Via::Archive, regions: vec![], archive: Default::default(),
///     download_bytes: 0, requests: 0 };
/// assert_eq!(r.requests, 0);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub via: Via,
    /// Every chunk of the table exactly once, in table order.
    pub regions: Vec<Region>,
    /// The archive ranges this route fetches (empty when it needs none).
    pub archive: ArchivePlan,
    /// The diff object plus the ranges, in bytes (for a [`Via::Produced`] diff, at
    /// most: its cap plus the ranges).
    pub download_bytes: u64,
    /// One request for the diff object, one per range.
    pub requests: u64,
}

/// Why a retained release's diff is not among the routes.
///
/// ```
/// use ferry_format::plan::SkipReason;
/// assert_ne!(SkipReason::Modified, SkipReason::Failed);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SkipReason {
    /// The release's manifest lists no diff from the active release.
    NoDiff,
    /// The diff already failed in this run.
    Failed,
    /// The diff would not download fewer bytes than the archive ranges.
    NotSmaller,
    /// The base's files no longer hash to its manifest.
    Modified,
}

/// A base whose diff the plan does not use, and why.
///
/// ```
/// use ferry_format::plan::{SkipReason, Skipped};
/// let s = Skipped { base: "1.0.0".into(), reason: SkipReason::NoDiff };
/// assert_eq!(s.base, "1.0.0");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    pub base: String,
    pub reason: SkipReason,
}

/// Where every byte of an update comes from, computed once by [`plan_update`].
///
/// ```
/// use ferry_format::plan::{Disk, DEFAULT_MAX_GAP, plan_update};
/// # let manifest = ferry_format::manifest::Manifest {
/// #     channel: "stable".into(), version: "2.0.0".into(), generation: 2,
/// #     chunking: Default::default(), archive: ferry_format::id::ObjectRef::of(b""),
/// #     chunks: vec![], entries: vec![], diffs: vec![],
/// # };
/// let nothing = |_: &ferry_format::id::ChunkId| false;
/// let disk = Disk { active: None, copy: None, have: &nothing, bases: &[], failed: &[],
///     on_demand: false };
/// let plan = plan_update(&manifest, &disk, DEFAULT_MAX_GAP);
/// assert_eq!(plan.to, "2.0.0");
/// assert_eq!(plan.chosen().via.name(), "archive");
/// assert!(plan.fallbacks().is_empty());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpdatePlan {
    pub from: Option<String>,
    pub to: String,
    /// The whole archive's size, what a download of everything would cost.
    pub archive_size: u64,
    /// Chunks (and their uncompressed bytes) copied from local releases on every route.
    pub reuse_chunks: usize,
    pub reuse_bytes: u64,
    /// Never empty: the plan first, then its fallbacks in order; the last fetches
    /// from the archive alone (after an [`Via::OnDisk`] copy, when there is one).
    pub routes: Vec<Route>,
    /// Diffs left out, one per base, in the order of [`Disk::bases`].
    pub skipped: Vec<Skipped>,
}

impl UpdatePlan {
    /// The route to take.
    pub fn chosen(&self) -> &Route {
        // `plan_update` always ends the list with the archive route.
        &self.routes[0]
    }

    /// The routes to try, in order, when the chosen one fails.
    pub fn fallbacks(&self) -> &[Route] {
        &self.routes[1..]
    }

    /// The route taking the archive alone (the last one).
    pub fn archive(&self) -> &Route {
        &self.routes[self.routes.len() - 1]
    }
}

/// Plans the update to `manifest` from what `disk` holds. A diff is a route only when
/// its base is intact, it has not failed, and it downloads fewer bytes than the
/// archive ranges would; routes are sorted cheapest first (ties by base order). When
/// no listed diff is a route and the server produces diffs ([`Disk::on_demand`]), the
/// one from the newest intact base is asked for, capped at the ranges it replaces.
pub fn plan_update(manifest: &Manifest, disk: &Disk<'_>, max_gap: u64) -> UpdatePlan {
    let have = disk.have;
    let archive = plan_archive(manifest, have, max_gap);
    let mut diffs: Vec<(usize, Route)> = Vec::new();
    let mut skipped = Vec::new();
    for (order, base) in disk.bases.iter().enumerate() {
        let Some(diff) = manifest.diffs.iter().find(|d| d.base_manifest == base.hash) else {
            if disk.active == Some(base.version) {
                skipped.push(skip(base, SkipReason::NoDiff));
            }
            continue;
        };
        if archive.fetch_chunks == 0 {
            continue;
        }
        if disk.failed.contains(&diff.object.hash) {
            skipped.push(skip(base, SkipReason::Failed));
            continue;
        }
        let from = FromDiff::new(manifest, base.manifest, have, max_gap);
        let download_bytes = diff.object.size.saturating_add(from.rest.download_bytes);
        if download_bytes >= archive.download_bytes {
            skipped.push(skip(base, SkipReason::NotSmaller));
            continue;
        }
        if !base.intact {
            skipped.push(skip(base, SkipReason::Modified));
            continue;
        }
        let (produces, regions) = from.sources(manifest, have);
        let route = Route {
            via: Via::Diff {
                base: base.version.to_string(),
                object: diff.object,
                produces,
            },
            regions,
            requests: 1 + from.rest.ranges.len() as u64,
            archive: from.rest,
            download_bytes,
        };
        diffs.push((order, route));
    }
    diffs.sort_by_key(|(order, r)| (r.download_bytes, *order));
    if diffs.is_empty() && disk.on_demand && archive.fetch_chunks > 0 {
        diffs.extend(produced(manifest, disk, &archive, max_gap).map(|r| (0, r)));
    }

    let source = |id: &ChunkId| {
        if have(id) {
            Source::Local
        } else {
            Source::Archive
        }
    };
    let mut routes = Vec::with_capacity(diffs.len() + 2);
    if let Some(folder) = disk.copy {
        routes.push(Route {
            via: Via::OnDisk {
                folder: folder.to_string(),
            },
            regions: regions(manifest, |_| Source::Local),
            archive: ArchivePlan::default(),
            download_bytes: 0,
            requests: 0,
        });
    }
    routes.extend(diffs.into_iter().map(|(_, r)| r));
    routes.push(Route {
        via: Via::Archive,
        regions: regions(manifest, source),
        requests: archive.ranges.len() as u64,
        download_bytes: archive.download_bytes,
        archive: archive.clone(),
    });
    UpdatePlan {
        from: disk.active.map(str::to_string),
        to: manifest.version.clone(),
        archive_size: manifest.archive.size,
        reuse_chunks: archive.reuse_chunks,
        reuse_bytes: archive.reuse_bytes,
        routes,
        skipped,
    }
}

/// The route of a diff the server produces from the newest intact base (by
/// generation) without a listed diff, if it replaces any archive bytes.
fn produced(
    manifest: &Manifest,
    disk: &Disk<'_>,
    archive: &ArchivePlan,
    max_gap: u64,
) -> Option<Route> {
    let have = disk.have;
    let base = disk
        .bases
        .iter()
        .filter(|b| b.intact && !disk.failed.contains(&b.hash))
        .filter(|b| b.manifest.version != manifest.version)
        // A listed diff from it that the plan left out would be made again, as large.
        .filter(|b| !manifest.diffs.iter().any(|d| d.base_manifest == b.hash))
        .max_by_key(|b| b.manifest.generation)?;
    let from = FromDiff::new(manifest, base.manifest, have, max_gap);
    let cap = archive
        .download_bytes
        .saturating_sub(from.rest.download_bytes);
    if cap == 0 {
        return None;
    }
    let (produces, regions) = from.sources(manifest, have);
    Some(Route {
        via: Via::Produced {
            base: base.version.to_string(),
            base_manifest: base.hash,
            cap,
            produces,
        },
        regions,
        requests: 1 + from.rest.ranges.len() as u64,
        download_bytes: cap + from.rest.download_bytes,
        archive: from.rest,
    })
}

/// What a diff from one base leaves to the rest of the plan: the chunks it produces
/// (those the base lacks) and the archive ranges for whatever neither the disk nor the
/// diff has. Listed diffs and diffs made on request are priced the same way.
struct FromDiff {
    produced: HashSet<ChunkId>,
    rest: ArchivePlan,
}

impl FromDiff {
    fn new(
        manifest: &Manifest,
        base: &Manifest,
        have: &dyn Fn(&ChunkId) -> bool,
        max_gap: u64,
    ) -> Self {
        let produced: HashSet<ChunkId> = missing_chunks(manifest, base)
            .into_iter()
            .map(|i| manifest.chunks[i].id)
            .collect();
        let rest = plan_archive(manifest, |id| have(id) || produced.contains(id), max_gap);
        FromDiff { produced, rest }
    }

    /// The chunk-table indices the diff produces, and the manifest's regions by source.
    fn sources(
        &self,
        manifest: &Manifest,
        have: &dyn Fn(&ChunkId) -> bool,
    ) -> (Vec<usize>, Vec<Region>) {
        let source = |id: &ChunkId| {
            if have(id) {
                Source::Local
            } else if self.produced.contains(id) {
                Source::Diff
            } else {
                Source::Archive
            }
        };
        let produces = (0..manifest.chunks.len())
            .filter(|&i| source(&manifest.chunks[i].id) == Source::Diff)
            .collect();
        (produces, regions(manifest, source))
    }
}

fn skip(base: &Base<'_>, reason: SkipReason) -> Skipped {
    Skipped {
        base: base.version.to_string(),
        reason,
    }
}

/// The table cut into runs of chunks with the same source.
fn regions(manifest: &Manifest, source: impl Fn(&ChunkId) -> Source) -> Vec<Region> {
    let mut out: Vec<Region> = Vec::new();
    for (i, c) in manifest.chunks.iter().enumerate() {
        let s = source(&c.id);
        match out.last_mut() {
            Some(r) if r.source == s => {
                r.chunks.end = i + 1;
                r.bytes += u64::from(c.size);
            }
            _ => out.push(Region {
                chunks: i..i + 1,
                bytes: u64::from(c.size),
                source: s,
            }),
        }
    }
    out
}

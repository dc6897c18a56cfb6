//! The path a release takes from the repository to `ROOT/current`, shared by
//! `update` and `rollback --to`: fetch and verify the head, fetch (or rebuild from a
//! manifest diff, [`manifest`]) and verify the manifest, execute its plan
//! (cli/plan.rs: a diff object or archive ranges, each failure moving on to the plan's
//! next route), build in staging, copy the application's own files into
//! it, rename into a new folder of `versions/`, switch `current`, record, clean up,
//! prune.
//!
//! Crash safety: until [`activate`] renames the new `current` link into place, the
//! previous release stays active, and every intermediate product (range files, the
//! staging tree, a tree already renamed into `versions/`) is either reused or
//! deleted by the next run. No folder of `versions/` is written or removed while
//! `current` points to it: a damaged release is rebuilt into a new folder
//! (`<version>+<n>`) and the damaged one is pruned once nothing points to it.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use ferry_format::delta::{DiffRef, missing_chunks};
use ferry_format::id::ObjectRef;
use ferry_format::manifest::Manifest;
use ferry_format::plan::{FetchRange, Route, UpdatePlan, Via};
use ferry_format::verified::Verified;
use ferry_format::version::Version;

use super::exit::{self, Class};
use super::plan::{self, Observed};
use super::progress::Download;
use super::report::{self, Out};
use super::root::Root;
use crate::apply::ApplyError;
use crate::apply::build::{Built, Downloaded, Live, build_tree};
use crate::apply::check::{Depth, check_tree};
use crate::apply::diff::{DiffSpool, SpoolWriter, Want, apply_into, apply_to_spool};
use crate::apply::source::LocalChunks;
use crate::apply::source::LocalRelease;
use crate::apply::{carry, image, pattern};
use crate::fsutil;
use crate::install::activate::{current_folder, current_version, switch_current};
use crate::install::layout::Layout;
use crate::install::retain::prune_selection;
use crate::install::space;
use crate::install::state::ReleaseRecord;

mod hops;
mod manifest;
mod remote;

pub use hops::{HopSummary, PricedHops, hops_through};
pub use manifest::PreparedDiff;
pub use remote::Remote;
// `ferry doctor` follows key lists within the same bound.
pub(crate) use remote::MAX_KEY_LIST_STEPS;

/// Whether the active release's `carry` paths go into the new one (an update: yes; a
/// rollback returns to a release's own files).
#[derive(Debug, Clone, Copy)]
pub struct Origin {
    pub carry: bool,
}

/// What building a release cost, and where it is.
#[derive(Debug, Default, Clone)]
pub struct BuildStats {
    pub bytes_reused: u64,
    /// Its folder in `versions/`.
    pub folder: String,
    /// The plan's route that built it, as the plan priced it.
    pub route: Option<Route>,
}

/// A plan to execute and where its execution stands.
pub struct Planned {
    pub observed: Observed,
    /// The route to take next: the routes before it were tried while the manifest
    /// was rebuilt from a skeleton (manifest.rs).
    pub next: usize,
    /// Route `next`'s diff, already applied while the manifest was rebuilt.
    pub prepared: Option<PreparedDiff>,
}

impl Planned {
    /// A plan nothing of which has run yet.
    pub fn new(observed: Observed) -> Planned {
        Planned {
            observed,
            next: 0,
            prepared: None,
        }
    }
}

/// Puts the release of `manifest` into a folder of `ROOT/versions/` by executing
/// `planned` (building it unless an intact copy is already there) and stores its
/// manifest. Does not activate it, and never writes to or removes an existing folder.
/// A disk that fills up meanwhile leaves staging removed and says so (space.rs).
pub fn install_release(
    root: &Root,
    remote: &Remote,
    manifest_bytes: &[u8],
    manifest: &Verified<Manifest>,
    origin: Origin,
    out: Out,
    planned: Planned,
) -> Result<BuildStats> {
    let active = current_version(&root.layout);
    build_release(root, remote, manifest_bytes, manifest, origin, out, planned)
        .map_err(|e| space::after_failure(&root.layout, &manifest.version, active, e))
}

/// Executes the plan: its routes in order from `planned.next`, each failure of a
/// diff moving on to the next route the plan lists, each route checked against the
/// data budget with what this run already spent on release data before it starts.
fn build_release(
    root: &Root,
    remote: &Remote,
    manifest_bytes: &[u8],
    manifest: &Verified<Manifest>,
    origin: Origin,
    out: Out,
    planned: Planned,
) -> Result<BuildStats> {
    let layout = &root.layout;
    let version = manifest.version.clone();
    fsutil::create_dir_all(&layout.manifests())?;
    let damaged = planned.observed.damaged.clone();
    let (staging, stats) = match build_staged(root, remote, manifest, out, planned)? {
        Staged::OnDisk(stats) => {
            fsutil::write_atomic(&layout.manifest(&version), manifest_bytes)?;
            return Ok(stats);
        }
        Staged::Tree(staging, stats) => (staging, stats),
    };
    // The tree holds every byte now: the downloaded ranges and the diff's spool are
    // deleted before the sync, so it does not write out hundreds of MB about to go.
    discard_downloads(layout);
    carry_app_files(root, manifest, &staging, damaged.as_deref(), origin, out)?;
    fsutil::sync_filesystem(&staging)?;
    crash_point!("client::staging::synced");

    fsutil::write_atomic(&layout.manifest(&version), manifest_bytes)?;
    fsutil::create_dir_all(&layout.versions())?;
    // A fresh name: a damaged copy of this release keeps its folder (it may be the
    // active one) until pruning finds nothing pointing to it.
    let folder = layout.free_folder(&version);
    let final_dir = layout.release_dir(&folder);
    crash_point!("client::versions::rename");
    fsutil::ctx(
        "renaming into place",
        &final_dir,
        std::fs::rename(&staging, &final_dir),
    )?;
    fsutil::fsync_dir(&layout.versions())?;
    Ok(BuildStats { folder, ..stats })
}

/// Where [`build_staged`] left a release.
pub(super) enum Staged {
    /// An intact copy already in `versions/` (the stats name its folder).
    OnDisk(BuildStats),
    /// Built in this staging tree (the stats' folder is empty).
    Tree(PathBuf, BuildStats),
}

/// Executes the plan up to a complete, checked tree in staging (its own folder,
/// `staging/tree-<version>`), which nothing else reads; the caller moves it into
/// `versions/` (or, for the intermediate release of two hops, builds the target from
/// it and lets cleanup remove it). Downloads are left for the caller to discard.
/// With a diff the manifest lists, the tree is built while the diff is applied; the
/// diff failing then (a chunk that does not match its id) discards the tree and the
/// plan goes on with its next route, as when it fails before. A skeleton's diff and a
/// diff made on request are applied whole first.
pub(super) fn build_staged(
    root: &Root,
    remote: &Remote,
    manifest: &Verified<Manifest>,
    out: Out,
    planned: Planned,
) -> Result<Staged> {
    let layout = &root.layout;
    let version = manifest.version.clone();
    let Observed {
        plan,
        releases,
        mut local,
        ..
    } = planned.observed;
    let downloads = layout.downloads();
    fsutil::create_dir_all(&downloads)?;
    let (_, data_start) = remote.counts();
    let mut spool = None;
    let mut ranges = None;
    let mut spent_before = 0;
    if let Some(p) = planned.prepared {
        // The diff was fetched, checked against the budget and applied with the
        // manifest; only its rest remains.
        spent_before = p.size;
        ranges = Some(plan.routes[planned.next].archive.ranges.clone());
        spool = Some(p.spool);
    }
    let mut k = planned.next;
    let mut taken = planned.next;
    // One bar per route tried, kept through the route's archive ranges.
    let mut bar = None;
    // Why the last route failed, for a plan with no route left after it.
    let mut failure = String::new();
    let staging = layout.staging_tree(&version);
    let built = loop {
        // A diff applied while the tree is built from its spool (the plan's diff
        // route): its apply runs beside the build.
        let mut live_diff: Option<LiveDiff> = None;
        while ranges.is_none() {
            // Off the screen before the next route's line is printed.
            drop(bar.take());
            taken = k;
            // The plan of a first hop has its diff alone (hops.rs).
            let route = plan
                .routes
                .get(k)
                .ok_or_else(|| hops::no_route_left(&version, &failure))?;
            if let Via::OnDisk { folder } = &route.via {
                // Retained, or left by a run interrupted after the rename: use it as it is.
                out.info(&plan::line(layout, &plan, route));
                return Ok(Staged::OnDisk(BuildStats {
                    bytes_reused: manifest.total_file_bytes(),
                    folder: folder.clone(),
                    route: Some(route.clone()),
                }));
            }
            if k == planned.next && route.via == Via::Archive {
                for n in plan::notes(&plan) {
                    out.info(&format!("not using a diff: {n}"));
                }
            }
            let line = plan::line(layout, &plan, route);
            let spent = spent_before + (remote.counts().1 - data_start);
            check_budget(root, spent + route.download_bytes, Some(&line), out)?;
            out.info(&line);
            if k == planned.next {
                space::check_room(layout, &needs(manifest, &plan, route))?;
            }
            bar = Download::start(&remote.counters, route.download_bytes, out);
            match &route.via {
                Via::Diff { base, object, .. } => {
                    let base = releases
                        .iter()
                        .find(|r| r.version == *base)
                        .context("the plan's diff base is not retained")?;
                    let diff = DiffRef {
                        base_version: base.version.clone(),
                        base_manifest: base.manifest.object_hash(),
                        object: *object,
                    };
                    let started = match remote.download_diff(&diff, &downloads)? {
                        Some(file) => start_diff(root, manifest, base, object, file),
                        None => Err(anyhow::anyhow!("no server has a good copy of it")),
                    };
                    match started {
                        Ok((s, live)) => {
                            spool = Some(s);
                            live_diff = Some(live);
                            ranges = Some(route.archive.ranges.clone());
                        }
                        Err(e) => failure = diff_failed(&base.version, &e),
                    }
                }
                Via::Produced {
                    base,
                    base_manifest,
                    cap,
                    ..
                } => {
                    let base = releases
                        .iter()
                        .find(|r| r.version == *base)
                        .context("the plan's diff base is retained")?;
                    let wait = root.config.diff_wait();
                    let applied = remote
                        .download_made(
                            base_manifest,
                            &manifest.object_hash(),
                            *cap,
                            wait,
                            &downloads,
                        )
                        .and_then(|(file, size)| {
                            let spool = apply_made(root, manifest, base, &file, size);
                            let _ = std::fs::remove_file(&file);
                            spool
                        });
                    match applied {
                        Ok(s) => {
                            spool = Some(s);
                            ranges = Some(route.archive.ranges.clone());
                        }
                        Err(e) => {
                            tracing::warn!(
                                "no diff from {} made by the server, falling back to the next way the plan lists: {e:#}",
                                base.version
                            );
                            failure =
                                format!("the diff from {} the server made: {e:#}", base.version);
                        }
                    }
                }
                _ => ranges = Some(route.archive.ranges.clone()),
            }
            k += 1;
        }
        // The loop ends with ranges set: the plan's last route is the archive alone.
        let route_ranges = ranges.take().unwrap_or_default();
        fsutil::remove_tree(&staging)?;
        let downloaded =
            Downloaded::new(&downloads, manifest, &route_ranges).with_spool(spool.take());
        let built = build_from(
            remote,
            manifest,
            &staging,
            &mut local,
            downloaded,
            (&route_ranges, &downloads),
            live_diff,
            bar.take(),
        );
        match built {
            Ok(built) => break built,
            Err(BuildFailure::Diff { base, error }) => {
                failure = diff_failed(&base, &error);
                fsutil::remove_tree(&staging)?;
            }
            Err(BuildFailure::Other(e)) => return Err(e),
        }
    };
    if built.shared_files > 0 {
        tracing::info!(
            "{} unchanged file(s) ({}) shared with retained releases, not written",
            built.shared_files,
            report::bytes(built.shared_bytes)
        );
    }

    Ok(Staged::Tree(
        staging,
        BuildStats {
            bytes_reused: plan.reuse_bytes,
            folder: String::new(),
            route: plan.routes.get(taken).cloned(),
        },
    ))
}

/// The disk space `route` needs to build the release.
pub fn needs(manifest: &Manifest, plan: &UpdatePlan, route: &Route) -> space::Needs {
    let with_diff = matches!(route.via, Via::Diff { .. } | Via::Produced { .. });
    space::Needs::build(manifest, route.download_bytes, plan.reuse_bytes, with_diff)
}

/// The checks an update makes of its plan before downloading: the download budget
/// and the free space, for the chosen route.
pub fn check_plan(root: &Root, manifest: &Manifest, plan: &UpdatePlan) -> Result<()> {
    let route = plan.chosen();
    check_budget(root, route.download_bytes, None, Out::new(false))?;
    if !matches!(route.via, Via::OnDisk { .. }) {
        space::check_room(&root.layout, &needs(manifest, plan, route))?;
    }
    Ok(())
}

/// Refuses a plan that needs more than the root's download budget (`max_download`,
/// or `ferry update --max-download`), printing the plan first; nothing has been
/// downloaded for it yet.
pub(super) fn check_budget(root: &Root, need: u64, plan: Option<&str>, out: Out) -> Result<()> {
    let Some(budget) = root.config.max_download else {
        return Ok(());
    };
    if need <= budget {
        return Ok(());
    }
    if let Some(line) = plan {
        out.info(line);
    }
    exit::refuse(
        Class::Policy,
        format!(
            "the plan needs {} ({need} bytes) but the download budget is {} ({budget} bytes): refused; raise max_download or pass --max-download",
            report::bytes(need),
            report::bytes(budget),
        ),
    )
}

/// Copies the application's own files into the new tree in `staging` before it is
/// renamed into `versions/`: on an update the `carry` paths of the active release; on
/// the repair of a damaged copy every file that copy has beyond its manifest. The
/// release's files always win; each path that could not be copied is a warning.
fn carry_app_files(
    root: &Root,
    manifest: &Manifest,
    staging: &Path,
    damaged: Option<&str>,
    origin: Origin,
    out: Out,
) -> Result<()> {
    let version = manifest.version.as_str();
    let mut jobs: Vec<(PathBuf, Vec<String>, HashSet<String>)> = Vec::new();
    if origin.carry
        && !root.config.carry.is_empty()
        && let Some(active) = root.state.active.as_deref().filter(|a| *a != version)
        && let Some(record) = root.state.release(active)
    {
        let patterns = pattern::parse_all(&root.config.carry)
            .with_context(|| format!("the carry setting in {}", root.layout.config().display()))?;
        let dir = root.release_dir(record);
        let paths = carry::select(&dir, &patterns)
            .with_context(|| format!("finding carry paths in {}", dir.display()))?;
        // The active release's own files match too (a shipped `default.db`): the new
        // release has its version of them, which is expected, not worth a warning.
        let shipped = root
            .load_manifest(record)
            .map(|m| m.entries.iter().map(|e| e.path.clone()).collect())
            .unwrap_or_default();
        jobs.push((dir, paths, shipped));
    }
    if let Some(folder) = damaged {
        let dir = root.layout.release_dir(folder);
        let extra = check_tree(manifest, &dir, Depth::Shape).extra;
        jobs.push((dir, extra, HashSet::new()));
    }
    for (dir, paths, shipped) in jobs {
        if paths.is_empty() {
            continue;
        }
        let shipped: HashSet<&str> = shipped.iter().map(String::as_str).collect();
        let report = carry::copy_paths(&dir, staging, &paths, &shipped).with_context(|| {
            format!(
                "copying the application's files from {} into the new {version}",
                dir.display()
            )
        })?;
        for skipped in &report.skipped {
            tracing::warn!("not carried from {}: {skipped}", dir.display());
        }
        out.info(&format!(
            "carried {} ({} entries) from {} into {version}",
            paths.join(", "),
            report.copied,
            dir.display()
        ));
    }
    Ok(())
}

/// A diff object checked against its signed reference, with the spool it is to be
/// applied into while the tree is built from that spool ([`build_from`]).
struct LiveDiff<'a> {
    object: PathBuf,
    size: u64,
    base: &'a LocalRelease,
    want: Vec<Want>,
    spool: PathBuf,
    writer: SpoolWriter,
}

/// Creates the spool the diff object `file` (as [`Remote::download_diff`] returns it:
/// checked against its signed reference, which is not hashed again) is applied into.
fn start_diff<'a>(
    root: &Root,
    manifest: &Manifest,
    base: &'a LocalRelease,
    object: &ObjectRef,
    file: PathBuf,
) -> Result<(DiffSpool, LiveDiff<'a>)> {
    let spool = root
        .layout
        .staging()
        .join(format!("diff-{}.spool", object.hash.to_hex()));
    fsutil::remove_tree(&spool)?;
    let want = Want::missing(manifest, &base.manifest);
    let (reader, writer) = DiffSpool::create(&spool, &want)?;
    Ok((
        reader,
        LiveDiff {
            object: file,
            size: object.size,
            base,
            want,
            spool,
            writer,
        },
    ))
}

/// Warns that the diff from `base` failed with `e` and the plan moves on; returns the
/// failure to name if no route is left.
fn diff_failed(base: &str, e: &anyhow::Error) -> String {
    tracing::warn!("diff from {base} not used, falling back to the next way the plan lists: {e:#}");
    format!("the diff from {base}: {e:#}")
}

/// Why [`build_from`] failed.
enum BuildFailure {
    /// The diff applied beside the build failed (the plan falls back to its next
    /// route); its object and spool are gone.
    Diff {
        base: String,
        error: anyhow::Error,
    },
    Other(anyhow::Error),
}

/// Builds the tree at `staging` from the local chunks, `downloaded` (its spool and
/// `ranges`) and, with `live`, a diff applied on its own thread meanwhile: every
/// chunk the build needs from the diff is read as soon as the apply has written and
/// verified it, so applying, building and the ranges' download overlap.
#[allow(clippy::too_many_arguments)]
fn build_from(
    remote: &Remote,
    manifest: &Verified<Manifest>,
    staging: &Path,
    local: &mut LocalChunks,
    downloaded: Downloaded,
    (ranges, downloads): (&[FetchRange], &Path),
    live: Option<LiveDiff<'_>>,
    bar: Option<Download>,
) -> Result<Built, BuildFailure> {
    let version = &manifest.version;
    let build = |local: &mut LocalChunks, downloaded| {
        build_tree(manifest, staging, local, downloaded)
            .with_context(|| format!("building {version} in {}", staging.display()))
    };
    // With one server the tree is built while its ranges arrive: download, decoding
    // and writes overlap. With mirrors a range failing its check is fetched again
    // from the next server after the download, so the build waits for it.
    let overlap = !ranges.is_empty() && remote.ranges_final_as_they_arrive();
    std::thread::scope(|scope| {
        let stopper = live.as_ref().map(|l| l.writer.stopper());
        let base = live.as_ref().map(|l| l.base.version.clone());
        let paths = live.as_ref().map(|l| (l.object.clone(), l.spool.clone()));
        let applier = live
            .map(|l| scope.spawn(move || apply_into(&l.object, l.size, l.base, &l.want, l.writer)));
        let built = (|| -> Result<Built> {
            if !ranges.is_empty() && !overlap {
                remote.download(manifest, ranges, downloads)?;
            }
            if !overlap {
                drop(bar);
                return build(local, downloaded);
            }
            let live = Arc::new(Live::default());
            let downloaded = downloaded.while_downloading(live.clone());
            let (fetched, built) = std::thread::scope(|inner| {
                let builder = inner.spawn(|| build(local, downloaded));
                let fetched = remote.download(manifest, ranges, downloads);
                live.end();
                (fetched, builder.join())
            });
            drop(bar);
            let built = built.unwrap_or_else(|_| {
                Err(anyhow::anyhow!("building {version}: the builder panicked"))
            });
            // A corrupt chunk is the cause even when the download then failed too (its
            // range file may have been refused under it); otherwise a failed download
            // explains a build that ran out of bytes, and comes first.
            match built {
                Err(e) if corrupt_download(&e) => Err(e),
                built => {
                    fetched?;
                    built
                }
            }
        })();
        if built.is_err()
            && let Some(s) = &stopper
        {
            s.stop();
        }
        let applied = applier.map(|h| {
            h.join().unwrap_or_else(|_| {
                Err(ApplyError::SpoolEnded {
                    id: "(the apply panicked)".into(),
                    file: PathBuf::new(),
                })
            })
        });
        match (built, applied) {
            (built, None | Some(Ok(()))) => built.map_err(BuildFailure::Other),
            (Err(e), Some(Err(ApplyError::Stopped))) => Err(BuildFailure::Other(e)),
            (_, Some(Err(e))) => {
                let base = base.unwrap_or_default();
                if let Some((object, spool)) = paths {
                    let _ = std::fs::remove_file(object);
                    let _ = std::fs::remove_file(spool);
                }
                Err(BuildFailure::Diff {
                    error: anyhow::Error::new(e).context(format!("applying the diff from {base}")),
                    base,
                })
            }
        }
    })
}

/// Applies a diff the server made on request (unsigned: it is only as good as the
/// chunks it produces, each checked against its id) to its base into a spool in
/// staging. On failure the spool is gone.
fn apply_made(
    root: &Root,
    manifest: &Verified<Manifest>,
    base: &LocalRelease,
    file: &Path,
    size: u64,
) -> Result<DiffSpool> {
    let spool = root.layout.staging().join(format!(
        "diff-made-{}.spool",
        base.manifest.object_hash().to_hex()
    ));
    fsutil::remove_tree(&spool)?;
    let want = Want::missing(manifest, &base.manifest);
    let image = image::layout(manifest, &missing_chunks(manifest, &base.manifest));
    apply_to_spool(file, size, base, (&want, image.as_ref()), &spool)
        .with_context(|| format!("applying the diff from {} the server made", base.version))
}

/// Switches `current` to `folder` (where `install_release` put the release) and
/// records it as installed and active.
pub fn activate(
    root: &mut Root,
    manifest: &Verified<Manifest>,
    manifest_size: u64,
    folder: &str,
) -> Result<()> {
    let version = manifest.version.clone();
    let now = report::unix_now();
    let previous = root.state.release(&version);
    let installed_at = previous.map_or(now, |r| r.installed_at);
    // A manifest re-read from local storage carries no fresh signature check: keep
    // the signers recorded when it was verified from the network.
    let signed_by = if manifest.signed_by().is_empty() {
        previous.map(|r| r.signed_by.clone()).unwrap_or_default()
    } else {
        manifest.signed_by().iter().map(|k| k.to_hex()).collect()
    };
    root.state.record_release(ReleaseRecord {
        version: version.clone(),
        manifest_hash: manifest.object_hash().to_hex(),
        manifest_size,
        installed_at,
        folder: Some(folder.to_string()),
        signed_by,
    });
    // The record is saved before the switch: a crash right after it leaves a state
    // that knows the release `current` points to, which the next command adopts
    // (`Root::open`), so `ferry verify` and `status` never see an unknown release.
    root.save_state()?;
    switch_current(&root.layout, folder)?;
    root.state.active = Some(version);
    Ok(())
}

/// Removes staging and releases beyond `keep` (never the active one or whatever
/// `current` points to), plus orphans of interrupted runs. Failures only warn: the
/// release is installed, so cleanup must not turn success into an error.
pub fn cleanup_and_prune(root: &mut Root) -> Result<()> {
    if let Err(e) = fsutil::remove_tree(&root.layout.staging()) {
        tracing::warn!("cleaning staging: {e}");
    }
    let retained = root.state.retained();
    let active = root
        .state
        .active
        .as_deref()
        .and_then(|v| Version::parse(v).ok());
    let linked = current_version(&root.layout).and_then(|v| Version::parse(&v).ok());
    let protect: Vec<&Version> = active.iter().chain(linked.iter()).collect();
    let doomed = prune_selection(&retained, root.config.keep, &protect);
    root.state
        .releases
        .retain(|r| !doomed.iter().any(|d| d.as_str() == r.version));
    // State first: a crash now leaves orphan folders (removed below next time), never
    // a state naming a release that is gone.
    root.save_state()?;
    // Folders: the recorded one of each retained release and whatever `current`
    // points to; a superseded (repaired) copy is removed only once neither names it.
    // Manifests: one per retained version.
    let linked = current_folder(&root.layout);
    // A staged release waits for its window in its folder.
    let staged = root.state.staged.as_ref();
    let keep_folders: Vec<String> = root
        .state
        .releases
        .iter()
        .map(|r| r.folder().to_string())
        .chain(linked.clone())
        .chain(staged.map(|s| s.folder.clone()))
        .collect();
    let keep_manifests: Vec<String> = root
        .state
        .releases
        .iter()
        .map(|r| r.version.clone())
        .chain(staged.map(|s| s.version.clone()))
        .chain(
            linked
                .as_deref()
                .map(|f| Layout::folder_version(f).to_string()),
        )
        .collect();
    for (dir, keep, is_tree) in [
        (root.layout.versions(), &keep_folders, true),
        (root.layout.manifests(), &keep_manifests, false),
    ] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if keep.contains(&name) || name.starts_with('.') {
                continue;
            }
            if is_tree {
                tracing::info!("pruning release folder {name}");
            }
            crash_point!("client::prune::remove");
            if let Err(e) = fsutil::remove_tree(&entry.path()) {
                tracing::warn!("pruning {name}: {e}");
            }
        }
    }
    Ok(())
}

/// Whether `e` is a downloaded chunk that failed its check.
fn corrupt_download(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<ApplyError>(),
            Some(ApplyError::CorruptDownload { .. })
        )
    })
}

/// Deletes what this update downloaded into staging (range files, diff objects and
/// spools), leaving the staging trees; failures only warn, cleanup retries later.
fn discard_downloads(layout: &Layout) {
    if let Err(e) = fsutil::remove_tree(&layout.downloads()) {
        tracing::warn!("deleting downloads: {e}");
    }
    let Ok(entries) = std::fs::read_dir(layout.staging()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("diff-") && name.ends_with(".spool") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

//! The path a release takes from the repository to `ROOT/current`, shared by
//! `update` and `rollback --to`: fetch and verify the head, fetch (or rebuild from a
//! manifest diff, [`manifest`]) and verify the manifest, plan against local chunks, download a diff
//! object or archive ranges, build in staging, copy the application's own files into
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

use anyhow::{Context, Result};
use ferry_format::manifest::Manifest;
use ferry_format::plan::{DEFAULT_MAX_GAP, plan_archive};
use ferry_format::verified::Verified;
use ferry_format::version::Version;

use super::exit::{self, Class};
use super::plan::{DiffChoice, archive_line, choose_diff, diff_line};
use super::progress::Download;
use super::report::{self, Out};
use super::root::Root;
use crate::apply::build::{Downloaded, build_tree};
use crate::apply::check::{Depth, check_tree};
use crate::apply::diff::{DiffSpool, Want, apply_to_spool, verify_object};
use crate::apply::source::LocalChunks;
use crate::apply::{carry, pattern};
use crate::fsutil;
use crate::install::activate::{current_folder, current_version, switch_current};
use crate::install::layout::Layout;
use crate::install::retain::prune_selection;
use crate::install::space;
use crate::install::state::ReleaseRecord;

mod manifest;
mod remote;

pub use manifest::DiffHint;
pub use remote::Remote;
// `ferry doctor` follows key lists within the same bound.
pub(crate) use remote::MAX_KEY_LIST_STEPS;

/// Where an install starts: the active release, and whether its `carry` paths go
/// into the new one (an update: yes; a rollback returns to a release's own files).
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    pub from: Option<&'a str>,
    pub carry: bool,
}

/// What building a release cost, and where it is.
#[derive(Debug, Default, Clone)]
pub struct BuildStats {
    pub bytes_reused: u64,
    /// Its folder in `versions/`.
    pub folder: String,
}

/// Puts the release of `manifest` into a folder of `ROOT/versions/` (building it
/// unless an intact copy is already there) and stores its manifest. Does not
/// activate it, and never writes to or removes an existing folder. A disk that fills up
/// meanwhile leaves staging removed and says so (space.rs).
pub fn install_release(
    root: &Root,
    remote: &Remote,
    manifest_bytes: &[u8],
    manifest: &Verified<Manifest>,
    origin: Origin<'_>,
    out: Out,
    hint: DiffHint,
) -> Result<BuildStats> {
    let active = current_version(&root.layout);
    build_release(root, remote, manifest_bytes, manifest, origin, out, hint)
        .map_err(|e| space::after_failure(&root.layout, &manifest.version, active, e))
}

fn build_release(
    root: &Root,
    remote: &Remote,
    manifest_bytes: &[u8],
    manifest: &Verified<Manifest>,
    origin: Origin<'_>,
    out: Out,
    hint: DiffHint,
) -> Result<BuildStats> {
    let layout = &root.layout;
    let version = manifest.version.clone();
    let from = origin.from;
    fsutil::create_dir_all(&layout.manifests())?;
    let damaged = match intact_copy(root, manifest)? {
        OnDisk::Intact(folder) => {
            // Retained, or left by a run interrupted after the rename: use it as it is.
            fsutil::write_atomic(&layout.manifest(&version), manifest_bytes)?;
            out.info(&format!(
                "plan: {} -> {version}: release already on disk and intact in {}, nothing to download",
                from.unwrap_or("none"),
                layout.release_dir(&folder).display()
            ));
            return Ok(BuildStats {
                bytes_reused: manifest.total_file_bytes(),
                folder,
            });
        }
        OnDisk::Damaged(folder) => Some(folder),
        OnDisk::Absent => None,
    };

    let releases = root.local_releases();
    let mut local = LocalChunks::index(&releases);
    local.verify_wanted(manifest);
    let archive_plan = plan_archive(manifest, |id| local.has(id), DEFAULT_MAX_GAP);
    let downloads = layout.downloads();
    fsutil::create_dir_all(&downloads)?;

    let mut ranges = archive_plan.ranges.clone();
    let mut spool = None;
    let mut spent = 0;
    let choice = match hint {
        DiffHint::Prepared(p) => {
            // Planned and printed when the diff was fetched; only a rest can be new.
            let rest = plan_archive(
                manifest,
                |id| local.has(id) || p.spool.has(id),
                DEFAULT_MAX_GAP,
            );
            if rest.fetch_chunks > 0 {
                out.info(&format!(
                    "plus {} chunks ({}) from the archive that the diff from {} does not produce",
                    rest.fetch_chunks,
                    report::bytes(rest.download_bytes),
                    p.base
                ));
            }
            ranges = rest.ranges;
            spent = p.size;
            spool = Some(p.spool);
            Err(Vec::new())
        }
        DiffHint::Nothing => choose_diff(manifest, &releases, &local, &archive_plan, from, None),
        DiffHint::Unusable(skip) => {
            choose_diff(manifest, &releases, &local, &archive_plan, from, Some(skip))
        }
    };
    let download = match &choice {
        Ok(c) => c.diff.object.size + c.rest.download_bytes,
        Err(_) => ranges.iter().map(|r| r.end - r.start).sum(),
    };
    let with_diff = choice.is_ok() || spool.is_some();
    let plan_line = match &choice {
        Ok(c) => Some(diff_line(
            from,
            &version,
            &archive_plan,
            c,
            manifest.archive.size,
        )),
        Err(_) if spool.is_none() => Some(archive_line(
            from,
            &version,
            &archive_plan,
            manifest.archive.size,
        )),
        Err(_) => None,
    };
    // A diff applied while the manifest was rebuilt was checked then; it counts too.
    check_budget(root, spent + download, plan_line.as_deref(), out)?;
    space::check_room(
        layout,
        &space::Needs::build(manifest, download, archive_plan.reuse_bytes, with_diff),
    )?;
    // The plan is printed before the bar starts: a line written while it is drawn
    // would leave a stale bar above it on the terminal.
    match &choice {
        Ok(choice) => out.info(&diff_line(
            from,
            &version,
            &archive_plan,
            choice,
            manifest.archive.size,
        )),
        Err(notes) => {
            for n in notes {
                out.info(&format!("not using a diff: {n}"));
            }
            if spool.is_none() {
                out.info(&archive_line(
                    from,
                    &version,
                    &archive_plan,
                    manifest.archive.size,
                ));
            }
        }
    }
    let bar = Download::start(&remote.counters, download, out);
    if let Ok(choice) = choice {
        let applied = match remote.download_diff(choice.diff, &downloads)? {
            Some(file) => apply_diff(root, manifest, &choice, &file),
            None => Err(anyhow::anyhow!("the repository does not have it")),
        };
        match applied {
            Ok(s) => {
                spool = Some(s);
                ranges = choice.rest.ranges;
            }
            Err(e) => Download::suspend(bar.as_ref(), || {
                tracing::warn!(
                    "diff from {} not used, falling back to the archive: {e:#}",
                    choice.base.version
                );
                out.info(&archive_line(
                    from,
                    &version,
                    &archive_plan,
                    manifest.archive.size,
                ));
            }),
        }
    }
    if !ranges.is_empty() {
        remote.download(manifest, &ranges, &downloads)?;
    }
    drop(bar);
    let downloaded = Downloaded::new(&downloads, manifest, &ranges).with_spool(spool);
    downloaded
        .verify_all(manifest)
        .with_context(|| format!("checking downloaded chunks of {version}"))?;

    let staging = layout.staging_tree(&version);
    fsutil::remove_tree(&staging)?;
    build_tree(manifest, &staging, &mut local, &downloaded)
        .with_context(|| format!("building {version} in {}", staging.display()))?;

    carry_app_files(root, manifest, &staging, damaged.as_deref(), origin, out)?;

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
    Ok(BuildStats {
        bytes_reused: archive_plan.reuse_bytes,
        folder,
    })
}

/// What building a release would take, planned from what is on disk and nothing
/// else (`ferry update --dry-run`): no file is written.
pub struct BuildPlan {
    /// The plan line the update prints.
    pub line: String,
    /// How the missing bytes would come: `on-disk`, `diff` or `archive`.
    pub via: &'static str,
    /// Bytes of release data to download (the diff object and archive ranges).
    pub download: u64,
    /// Requests for them.
    pub requests: u64,
    /// Bytes of chunks found in local releases.
    pub reuse: u64,
}

/// Plans the build of `manifest` as [`install_release`] would without a diff hint.
pub fn plan_build(root: &Root, manifest: &Manifest, from: Option<&str>) -> Result<BuildPlan> {
    let version = &manifest.version;
    if let OnDisk::Intact(folder) = intact_copy(root, manifest)? {
        return Ok(BuildPlan {
            line: format!(
                "plan: {} -> {version}: release already on disk and intact in {}, nothing to download",
                from.unwrap_or("none"),
                root.layout.release_dir(&folder).display()
            ),
            via: "on-disk",
            download: 0,
            requests: 0,
            reuse: manifest.total_file_bytes(),
        });
    }
    let releases = root.local_releases();
    let mut local = LocalChunks::index(&releases);
    local.verify_wanted(manifest);
    let archive_plan = plan_archive(manifest, |id| local.has(id), DEFAULT_MAX_GAP);
    let choice = choose_diff(manifest, &releases, &local, &archive_plan, from, None);
    let plan = match &choice {
        Ok(c) => BuildPlan {
            line: diff_line(from, version, &archive_plan, c, manifest.archive.size),
            via: "diff",
            download: c.diff.object.size + c.rest.download_bytes,
            requests: 1 + c.rest.ranges.len() as u64,
            reuse: archive_plan.reuse_bytes,
        },
        Err(_) => BuildPlan {
            line: archive_line(from, version, &archive_plan, manifest.archive.size),
            via: "archive",
            download: archive_plan.download_bytes,
            requests: archive_plan.ranges.len() as u64,
            reuse: archive_plan.reuse_bytes,
        },
    };
    Ok(plan)
}

/// The checks an update makes of its plan before downloading: the download budget
/// and the free space.
pub fn check_plan(root: &Root, manifest: &Manifest, plan: &BuildPlan) -> Result<()> {
    check_budget(root, plan.download, None, Out::new(false))?;
    let needs = space::Needs::build(manifest, plan.download, plan.reuse, plan.via == "diff");
    space::check_room(&root.layout, &needs)?;
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

/// Copies the application's own files into the new tree in `staging` before it is
/// renamed into `versions/`: on an update the `carry` paths of the active release; on
/// the repair of a damaged copy every file that copy has beyond its manifest. The
/// release's files always win; each path that could not be copied is a warning.
fn carry_app_files(
    root: &Root,
    manifest: &Manifest,
    staging: &Path,
    damaged: Option<&str>,
    origin: Origin<'_>,
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

/// Checks the downloaded diff object against its signed reference, then applies it
/// to its base into a spool in staging. On failure the diff file and the spool are
/// gone, so neither this run's fallback nor a later run trusts them.
fn apply_diff(
    root: &Root,
    manifest: &Manifest,
    choice: &DiffChoice,
    file: &Path,
) -> Result<DiffSpool> {
    let object = choice.diff.object;
    verify_object(file, &object).context("checking the diff object")?;
    let spool = root
        .layout
        .staging()
        .join(format!("diff-{}.spool", object.hash.to_hex()));
    fsutil::remove_tree(&spool)?;
    let want = Want::missing(manifest, &choice.base.manifest);
    apply_to_spool(file, object.size, choice.base, &want, &spool)
        .inspect_err(|_| {
            let _ = std::fs::remove_file(file);
        })
        .with_context(|| format!("applying the diff from {}", choice.base.version))
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

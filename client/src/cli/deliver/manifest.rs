//! The manifest of the release to install: rebuilt from a manifest diff against a
//! retained release's manifest when the head offers one — completing a skeleton
//! (FORMAT.md §3.7) with the data diff the head pins, when the update's plan, made
//! from the skeleton, chooses it; the diff is then already applied for the build — or
//! fetched whole. Verified the same way either way.

use std::collections::HashMap;

use anyhow::{Context, Result};
use ferry_format::delta::manifest_diff::{Skeleton, apply_manifest_diff};
use ferry_format::delta::nothing;
use ferry_format::delta::{DiffRef, ManifestDiffRef};
use ferry_format::envelope::TrustedKeys;
use ferry_format::head::{ChannelHead, ReleaseRef};
use ferry_format::id::{ChunkId, Digest, ObjectRef};
use ferry_format::layout::object_path;
use ferry_format::manifest::Manifest;
use ferry_format::plan::{SkipReason, Via};
use ferry_format::verified::{Verified, verify_manifest};
use ferry_format::version::Version;

use super::{Planned, Remote};
use crate::apply::diff::{DiffSpool, Want, apply_to_spool};
use crate::apply::image;
use crate::cli::plan::{self, NOTHING_VERSION, empty_release};
use crate::cli::report::{self, Out};
use crate::cli::root::Root;
use crate::fsutil;
use crate::install::space;

/// A data diff already applied while the manifest was rebuilt from a skeleton
/// (FORMAT.md §3.7): the chunks it produced, which the build then uses.
pub struct PreparedDiff {
    pub(super) spool: DiffSpool,
    /// Bytes the diff object took to download (it counts against the budget).
    pub(super) size: u64,
}

/// A verified manifest, its exact bytes, and the plan already made (and partly
/// executed) while rebuilding it from a skeleton, if it was.
pub struct FetchedManifest {
    pub bytes: Vec<u8>,
    pub manifest: Verified<Manifest>,
    pub planned: Option<Planned>,
}

/// Marks a skeleton failure that the data diff object itself caused.
#[derive(Debug)]
struct DiffUnusable;

impl std::fmt::Display for DiffUnusable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the diff object the head pins is unusable")
    }
}

/// A plan made from a skeleton, and that skeleton's manifest.
type SkeletonPlan = (Planned, Manifest);

/// What a manifest diff gave: the manifest, or the reason it cannot be used and the
/// plan made from its skeleton, if it got that far (the update keeps that plan).
type Rebuilt<T> = std::result::Result<T, (anyhow::Error, Option<SkeletonPlan>)>;

impl Remote {
    /// The current release's manifest: rebuilt from a manifest diff against the
    /// manifest of a retained release when the head offers one, otherwise (or when
    /// that fails for any reason) fetched whole. Verified the same way either way.
    /// A skeleton manifest diff is planned from (cli/plan.rs) before its data diff is
    /// fetched, and that plan is the update's: when the data diff is its chosen route,
    /// it is applied here and the manifest filled from it; when it is not, or fails,
    /// the update goes on with the plan's next route over the whole manifest.
    pub fn fetch_current_manifest(
        &self,
        root: &Root,
        head: &ChannelHead,
        trusted: &TrustedKeys,
        from: Option<&str>,
        out: Out,
    ) -> Result<FetchedManifest> {
        let release = head.current();
        let channel = &root.config.channel;
        let mut kept: Option<SkeletonPlan> = None;
        let base = manifest_diff_base(root, head).or_else(|| from_nothing(root, head));
        if let Some((base_version, base_bytes, diff)) = base {
            let ctx = ManifestDiffCtx {
                diff,
                base_version: &base_version,
                base: &base_bytes,
                release,
                channel,
                trusted,
            };
            // A transfer that fails (rather than a diff that turns out unusable) ends
            // the update, as for any other object: a slow or broken network is no
            // reason to download more.
            match self.manifest_from_diff(root, &ctx, from, out)? {
                Ok(found) => {
                    tracing::info!(
                        "manifest of {} rebuilt from a diff against {base_version}'s",
                        release.version
                    );
                    return Ok(found);
                }
                Err((e, planned)) => {
                    tracing::warn!(
                        "manifest diff from {base_version} unusable, fetching the whole manifest: {e:#}"
                    );
                    kept = planned;
                }
            }
        }
        let (bytes, manifest) = self.fetch_manifest(release, channel, trusted)?;
        // The skeleton's plan holds for the whole manifest when their chunk tables
        // agree, as they do for any publisher that made the skeleton from it.
        let planned = kept.and_then(|(planned, skeleton)| {
            let same = same_table(&skeleton, &manifest);
            if !same {
                tracing::warn!(
                    "the manifest skeleton's chunk table does not match the manifest's: planning again"
                );
            }
            same.then_some(planned)
        });
        Ok(FetchedManifest {
            bytes,
            manifest,
            planned,
        })
    }

    /// The outer error is a failed transfer of the data diff (fatal), the inner one
    /// anything that makes the manifest diff unusable (the caller falls back).
    fn manifest_from_diff(
        &self,
        root: &Root,
        c: &ManifestDiffCtx,
        from: Option<&str>,
        out: Out,
    ) -> Result<Rebuilt<FetchedManifest>> {
        let path = object_path(&c.diff.object.hash);
        let rebuilt = self
            .get_object(&c.diff.object, "manifest diff")
            .and_then(|bytes| {
                Ok(apply_manifest_diff(
                    c.base,
                    &bytes,
                    c.release.manifest.size,
                )?)
            });
        let rebuilt = match rebuilt {
            Ok(r) => r,
            Err(e) => return Ok(Err((e, None))),
        };
        let (manifest_bytes, planned) = match c.diff.chunk_diff {
            None => (rebuilt, None),
            Some(object) => match self.fill_skeleton(root, c, &rebuilt, object, from, out)? {
                Ok((filled, planned)) => (filled, Some(planned)),
                Err(e) => return Ok(Err(e)),
            },
        };
        let verified = verify_manifest(&manifest_bytes, c.release, c.channel, c.trusted)
            .with_context(|| {
                format!(
                    "verifying manifest of {} rebuilt from {}",
                    c.release.version,
                    self.transport.url(&path)
                )
            });
        match (verified, planned) {
            (Ok(manifest), planned) => Ok(Ok(FetchedManifest {
                bytes: manifest_bytes,
                manifest,
                planned: planned.map(|(p, _)| p),
            })),
            // The skeleton came from a verified object, so a filled manifest that
            // does not verify means the diff's chunks were wrong: the plan moves on.
            (Err(e), Some((mut planned, skeleton))) => {
                // Only a diff that was the chosen route moves the plan on; behind an
                // intact copy it only filled the skeleton.
                if planned.prepared.take().is_some() {
                    planned.next += 1;
                }
                Ok(Err((e.context(DiffUnusable), Some((planned, skeleton)))))
            }
            (Err(e), None) => Ok(Err((e, None))),
        }
    }

    /// Plans the update from a skeleton and, when that plan's chosen route is the data
    /// diff the signed head pins next to it, executes that route: fetches the diff,
    /// applies it to the base (held intact here) and fills the skeleton's holes with
    /// the hashes of the chunks it produced. The caller verifies the result. The
    /// error comes with the plan when one was made, the routes already tried skipped.
    fn fill_skeleton(
        &self,
        root: &Root,
        c: &ManifestDiffCtx,
        skeleton_bytes: &[u8],
        object: ObjectRef,
        from: Option<&str>,
        out: Out,
    ) -> Result<Rebuilt<(Vec<u8>, SkeletonPlan)>> {
        let releases = root.local_releases();
        let nothing = c.base_version == NOTHING_VERSION;
        let empty = nothing.then(|| empty_release(root));
        let found = empty
            .as_ref()
            .or_else(|| releases.iter().find(|r| r.version == c.base_version));
        let Some(base) = found else {
            return Ok(Err((
                anyhow::anyhow!("{} is not installed", c.base_version),
                None,
            )));
        };
        let skeleton = match Skeleton::decode(skeleton_bytes, &base.manifest) {
            Ok(s) => s,
            Err(e) => {
                return Ok(Err((
                    anyhow::Error::new(e).context("reading the manifest skeleton"),
                    None,
                )));
            }
        };
        // Holes are in no release an agent on the base may hold, so the skeleton
        // plans like the manifest; its data diff is the route from the base.
        let mut sk = skeleton.manifest().clone();
        sk.diffs.retain(|d| d.base_manifest != c.diff.base_manifest);
        sk.diffs.push(DiffRef {
            base_version: c.base_version.to_string(),
            base_manifest: c.diff.base_manifest,
            object,
        });
        // The empty release is a diff base only for this plan.
        let extra = nothing.then(|| empty_release(root)).into_iter().collect();
        let observed = plan::observe_with(root, &sk, from, &[], self.makes_diffs(), extra)?;
        // An intact copy on disk is the plan, but it needs the manifest too: the diff
        // that fills the skeleton is then taken (a rerun finds it stored) only for that.
        let d = usize::from(matches!(observed.plan.chosen().via, Via::OnDisk { .. }));
        let chosen = &observed.plan.routes[d.min(observed.plan.routes.len() - 1)];
        let ours = matches!(&chosen.via, Via::Diff { object: o, .. } if o.hash == object.hash);
        let line = plan::line(&root.layout, &observed.plan, chosen);
        let needs = super::needs(&sk, &observed.plan, chosen);
        let bytes = chosen.download_bytes;
        let planned = Planned::new(observed);
        if !ours {
            let plan = &planned.observed.plan;
            let why = match plan.skipped.iter().find(|s| s.base == c.base_version) {
                Some(s) if s.reason == SkipReason::NotSmaller => format!(
                    "the archive ranges ({}) cost less than the diff from {} ({}) with what is local",
                    report::bytes(plan.archive().download_bytes),
                    c.base_version,
                    report::bytes(object.size)
                ),
                Some(s) if s.reason == SkipReason::Modified => {
                    format!("{} is modified locally", c.base_version)
                }
                _ => format!("the plan takes no diff from {}", c.base_version),
            };
            return Ok(Err((anyhow::anyhow!(why), Some((planned, sk)))));
        }
        super::check_budget(root, bytes, Some(&line), out)?;
        out.info(&line);
        space::check_room(&root.layout, &needs)?;
        let downloads = root.layout.downloads();
        fsutil::create_dir_all(&downloads)?;
        let diff_ref = DiffRef {
            base_version: c.base_version.to_string(),
            base_manifest: c.diff.base_manifest,
            object,
        };
        let active = crate::install::activate::current_version(&root.layout);
        let downloaded = self.download_diff(&diff_ref, &downloads);
        let failed = |e: anyhow::Error, mut planned: Planned| {
            planned.next = if d == 0 { 1 } else { 0 };
            Ok(Err((e.context(DiffUnusable), Some((planned, sk.clone())))))
        };
        let Some(file) =
            downloaded.map_err(|e| space::after_failure(&root.layout, &sk.version, active, e))?
        else {
            return failed(
                anyhow::anyhow!("the repository does not have the diff object the head names"),
                planned,
            );
        };
        // What the diff produces, in its order: a diff from nothing in first-use
        // order (FORMAT.md §3.9), any other in table order.
        let outside: Vec<(usize, (u32, Option<ChunkId>))> = skeleton
            .outside_indexes()
            .iter()
            .copied()
            .zip(skeleton.outside_base())
            .collect();
        let produced_order: Vec<usize> = if nothing {
            nothing::order(skeleton.manifest())
        } else {
            skeleton.outside_indexes().to_vec()
        };
        let slot: HashMap<usize, (u32, Option<ChunkId>)> = outside.iter().copied().collect();
        let want: Vec<Want> = produced_order
            .iter()
            .filter_map(|i| slot.get(i))
            .map(|&(size, id)| Want { size, id })
            .collect();
        let base = planned
            .observed
            .releases
            .iter()
            .find(|r| r.version == c.base_version)
            .context("the diff base is retained")?;
        let applied = (|| -> Result<_> {
            // download_diff checked the object against the head's reference.
            let spool = root
                .layout
                .staging()
                .join(format!("diff-{}.spool", object.hash.to_hex()));
            fsutil::remove_tree(&spool)?;
            if want.len() != outside.len() {
                anyhow::bail!(
                    "the skeleton's files use {} of the {} chunks the diff produces",
                    want.len(),
                    outside.len()
                );
            }
            let image = image::layout(skeleton.manifest(), &produced_order);
            let spool = apply_to_spool(&file, object.size, base, (&want, image.as_ref()), &spool)
                .with_context(|| format!("applying the diff from {}", c.base_version))?;
            // The holes, in table order, take the hashes of what filled them.
            let made: HashMap<usize, ChunkId> = produced_order
                .iter()
                .copied()
                .zip(spool.produced())
                .collect();
            let holes: Vec<ChunkId> = outside
                .iter()
                .filter(|(_, (_, id))| id.is_none())
                .filter_map(|(i, _)| made.get(i).copied())
                .collect();
            let filled = skeleton.clone().fill(&holes)?;
            Ok((filled, spool))
        })();
        match applied {
            Ok((filled, spool)) => {
                let mut planned = planned;
                if d == 0 {
                    planned.prepared = Some(PreparedDiff {
                        spool,
                        size: object.size,
                    });
                }
                Ok(Ok((filled, (planned, sk))))
            }
            Err(e) => failed(e, planned),
        }
    }
}

/// The head's diff from nothing, as [`manifest_diff_base`] gives a base: the empty
/// release's name, its (empty) manifest bytes and the diff.
fn from_nothing<'h>(
    root: &Root,
    head: &'h ChannelHead,
) -> Option<(String, Vec<u8>, &'h ManifestDiffRef)> {
    let diff = plan::offered_from_nothing(root, head)?;
    Some((NOTHING_VERSION.to_string(), Vec::new(), diff))
}

/// Whether `manifest` has the chunk table `skeleton` was planned with: the same
/// sizes in the same order, and the same ids but for the skeleton's holes.
fn same_table(skeleton: &Manifest, manifest: &Manifest) -> bool {
    skeleton.chunks.len() == manifest.chunks.len()
        && skeleton.chunks.iter().zip(&manifest.chunks).all(|(s, m)| {
            s.size == m.size
                && s.stored_size == m.stored_size
                && (s.id == m.id || s.id.0 == [0; 32])
        })
}

/// What rebuilding the current manifest from a manifest diff starts from.
struct ManifestDiffCtx<'a> {
    diff: &'a ManifestDiffRef,
    base_version: &'a str,
    base: &'a [u8],
    release: &'a ReleaseRef,
    channel: &'a str,
    trusted: &'a TrustedKeys,
}

/// The retained release whose stored manifest the head's manifest diffs start from:
/// the one whose manifest diff and data diff (sizes in the signed head) cost least
/// together, so an agent still holding an older release that shares more with the
/// new one takes the smaller diff; ties go to the active release, then the newest.
/// Returns its version, manifest bytes (checked against the hash recorded in state)
/// and the diff.
fn manifest_diff_base<'h>(
    root: &Root,
    head: &'h ChannelHead,
) -> Option<(String, Vec<u8>, &'h ManifestDiffRef)> {
    let mut found: Vec<_> = root
        .state
        .releases
        .iter()
        .filter_map(|r| {
            let hash = Digest::from_hex(&r.manifest_hash).ok()?;
            let diff = head
                .content
                .manifest_diffs
                .iter()
                .find(|d| d.base_manifest == hash)?;
            Some((r, hash, diff))
        })
        .collect();
    // A plain manifest diff's data cost is unknown until the manifest is read.
    found.sort_by_key(|(r, _, d)| {
        (
            d.chunk_diff.is_none(),
            d.object.size + d.chunk_diff.map_or(0, |c| c.size),
            root.state.active.as_deref() != Some(r.version.as_str()),
            std::cmp::Reverse(Version::parse(&r.version).ok()),
        )
    });
    found.into_iter().find_map(|(r, hash, diff)| {
        let bytes = std::fs::read(root.layout.manifest(&r.version)).ok()?;
        (Digest::of(&bytes) == hash).then(|| (r.version.clone(), bytes, diff))
    })
}

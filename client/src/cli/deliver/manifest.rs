//! The manifest of the release to install: rebuilt from a manifest diff against a
//! retained release's manifest when the head offers one — completing a skeleton
//! (FORMAT.md §3.7) with the data diff the head pins, which is then already applied
//! for the build — or fetched whole. Verified the same way either way.

use anyhow::{Context, Result, bail};
use ferry_format::delta::manifest_diff::{Skeleton, apply_manifest_diff};
use ferry_format::delta::{DiffRef, ManifestDiffRef};
use ferry_format::envelope::TrustedKeys;
use ferry_format::head::{ChannelHead, ReleaseRef};
use ferry_format::id::{Digest, ObjectRef};
use ferry_format::layout::object_path;
use ferry_format::manifest::Manifest;
use ferry_format::plan::{DEFAULT_MAX_GAP, plan_archive};
use ferry_format::verified::{Verified, verify_manifest};
use ferry_format::version::Version;

use super::Remote;
use crate::apply::diff::{DiffSpool, Want, apply_to_spool, verify_object};
use crate::apply::source::LocalChunks;
use crate::cli::plan::base_intact;
use crate::cli::report::{self, Out};
use crate::cli::root::Root;
use crate::fsutil;
use crate::install::space;

/// A data diff already applied while the manifest was rebuilt from a skeleton
/// (FORMAT.md §3.7): the chunks it produced, which the build then uses.
pub struct PreparedDiff {
    pub(super) base: String,
    pub(super) spool: DiffSpool,
    /// Bytes the diff object took to download (it counts against the budget).
    pub(super) size: u64,
}

/// What fetching the manifest already learned about the data diff.
pub enum DiffHint {
    /// Nothing: the build plans as usual.
    Nothing,
    /// Applied while rebuilding the manifest: the build uses its chunks.
    Prepared(PreparedDiff),
    /// This diff object failed (missing, damaged or producing the wrong chunks): the
    /// build must not fetch it a second time.
    Unusable(Digest),
}

/// A verified manifest, its exact bytes, and what was learned about the data diff.
pub struct FetchedManifest {
    pub bytes: Vec<u8>,
    pub manifest: Verified<Manifest>,
    pub hint: DiffHint,
}

/// Marks a skeleton failure that the data diff object itself caused.
#[derive(Debug)]
struct DiffUnusable;

impl std::fmt::Display for DiffUnusable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the diff object the head pins is unusable")
    }
}

impl Remote {
    /// The current release's manifest: rebuilt from a manifest diff against the
    /// manifest of a retained release when the head offers one, otherwise (or when
    /// that fails for any reason) fetched whole. Verified the same way either way.
    /// A skeleton manifest diff comes with the data diff that completes it, which is
    /// then already applied: the update's plan line is printed before it is fetched.
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
        let mut hint = DiffHint::Nothing;
        if let Some((base_version, base_bytes, diff)) = manifest_diff_base(root, head) {
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
                Err(e) => {
                    tracing::warn!(
                        "manifest diff from {base_version} unusable, fetching the whole manifest: {e:#}"
                    );
                    if let (Some(_), Some(d)) = (e.downcast_ref::<DiffUnusable>(), diff.chunk_diff)
                    {
                        hint = DiffHint::Unusable(d.hash);
                    }
                }
            }
        }
        let (bytes, manifest) = self.fetch_manifest(release, channel, trusted)?;
        Ok(FetchedManifest {
            bytes,
            manifest,
            hint,
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
    ) -> Result<Result<FetchedManifest>> {
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
            Err(e) => return Ok(Err(e)),
        };
        let (manifest_bytes, hint) = match c.diff.chunk_diff {
            None => (rebuilt, DiffHint::Nothing),
            Some(object) => match self.fill_skeleton(root, c, &rebuilt, object, from, out)? {
                Ok((filled, prepared)) => (filled, DiffHint::Prepared(prepared)),
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
        // The skeleton came from a verified object, so a filled manifest that does
        // not verify means the diff's chunks were wrong.
        let verified = match (verified, &hint) {
            (Err(e), DiffHint::Prepared(_)) => Err(e.context(DiffUnusable)),
            (v, _) => v,
        };
        Ok(verified.map(|manifest| FetchedManifest {
            bytes: manifest_bytes,
            manifest,
            hint,
        }))
    }

    /// Completes a skeleton: fetches the data diff the signed head pins next to it,
    /// applies it to the base (held intact here) and fills the skeleton's holes with
    /// the hashes of the chunks it produced. The caller verifies the result. Errors as
    /// for [`Remote::manifest_from_diff`].
    fn fill_skeleton(
        &self,
        root: &Root,
        c: &ManifestDiffCtx,
        skeleton_bytes: &[u8],
        object: ObjectRef,
        from: Option<&str>,
        out: Out,
    ) -> Result<Result<(Vec<u8>, PreparedDiff)>> {
        let releases = root.local_releases();
        let prepared = (|| -> Result<_> {
            let base = releases
                .iter()
                .find(|r| r.version == c.base_version)
                .with_context(|| format!("{} is not installed", c.base_version))?;
            let skeleton = Skeleton::decode(skeleton_bytes, &base.manifest)
                .context("reading the manifest skeleton")?;
            if !base_intact(base) {
                bail!("{} is modified locally", c.base_version);
            }
            Ok((base, skeleton))
        })();
        let (base, skeleton) = match prepared {
            Ok(p) => p,
            Err(e) => return Ok(Err(e)),
        };
        // Price both roads with what is local. The diff produces every chunk the base
        // lacks; the archive tail only what no local release holds (a release that
        // brings back older content may need far less from it). Holes are in no
        // release an agent on the base may hold.
        let local = LocalChunks::index(&releases);
        let sk = skeleton.manifest();
        let archive = plan_archive(sk, |id| local.listed(id), DEFAULT_MAX_GAP);
        if object.size >= archive.download_bytes {
            return Ok(Err(anyhow::anyhow!(
                "the archive ranges ({}) cost less than the diff from {} ({}) with what is local",
                report::bytes(archive.download_bytes),
                c.base_version,
                report::bytes(object.size)
            )));
        }
        let plan = format!(
            "plan: {} -> {}: reuse {} chunks ({}) from local releases, download diff from {} ({}) in 1 request",
            from.unwrap_or("none"),
            sk.version,
            archive.reuse_chunks,
            report::bytes(archive.reuse_bytes),
            c.base_version,
            report::bytes(object.size),
        );
        super::check_budget(root, object.size, Some(&plan), out)?;
        out.info(&plan);
        space::check_room(
            &root.layout,
            &space::Needs::build(sk, object.size, archive.reuse_bytes, true),
        )?;
        let downloads = root.layout.downloads();
        fsutil::create_dir_all(&downloads)?;
        let diff_ref = DiffRef {
            base_version: c.base_version.to_string(),
            base_manifest: c.diff.base_manifest,
            object,
        };
        let active = crate::install::activate::current_version(&root.layout);
        let downloaded = self.download_diff(&diff_ref, &downloads);
        let Some(file) =
            downloaded.map_err(|e| space::after_failure(&root.layout, &sk.version, active, e))?
        else {
            return Ok(Err(anyhow::anyhow!(
                "the repository does not have the diff object the head names"
            )
            .context(DiffUnusable)));
        };
        let want: Vec<Want> = skeleton
            .outside_base()
            .map(|(size, id)| Want { size, id })
            .collect();
        let applied = (|| -> Result<_> {
            verify_object(&file, &object).context("checking the diff object")?;
            let spool = root
                .layout
                .staging()
                .join(format!("diff-{}.spool", object.hash.to_hex()));
            fsutil::remove_tree(&spool)?;
            let spool = apply_to_spool(&file, object.size, base, &want, &spool)
                .with_context(|| format!("applying the diff from {}", c.base_version))?;
            let holes: Vec<_> = want
                .iter()
                .zip(spool.produced())
                .filter(|(w, _)| w.id.is_none())
                .map(|(_, id)| *id)
                .collect();
            let filled = skeleton.fill(&holes)?;
            Ok((
                filled,
                PreparedDiff {
                    base: c.base_version.to_string(),
                    spool,
                    size: object.size,
                },
            ))
        })();
        Ok(applied.map_err(|e| e.context(DiffUnusable)))
    }
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

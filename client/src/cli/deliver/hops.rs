//! Two hops (FORMAT.md §8): when the target's manifest lists no diff worth taking from
//! a release this root holds intact, the update may go through an intermediate
//! release I the head lists: the diff from the held release B to I (listed in I's
//! manifest), then the diff from I to the target (listed in the target's).
//!
//! The planner proposes I from the head and the target's manifest alone
//! (`hop_candidates`); I's manifest is then fetched and verified against the head's
//! reference like any manifest, and both hops are priced exactly (`plan_hops`). The
//! path is taken only when it costs fewer bytes than the direct plan; one candidate is
//! looked at per update, so a path that does not pay costs at most one manifest.
//!
//! I is built whole in `staging/tree-<I>` (unchanged files shared with the retained
//! releases, every chunk checked), then the target is built from it as from a retained
//! release, and the update goes on as any other. I is never renamed into `versions/`,
//! never active and never recorded: cleanup removes it with staging. A kill at any
//! point leaves `current` and `versions/` as they were; the next update starts over.
//! Any failure of the first hop falls back to the direct plan (the archive ranges),
//! with a warning saying why.

use anyhow::{Result, anyhow};
use ferry_format::envelope::TrustedKeys;
use ferry_format::head::ChannelHead;
use ferry_format::manifest::Manifest;
use ferry_format::plan::{DEFAULT_MAX_GAP, HopPlan, Via, hop_candidates, plan_hops};
use ferry_format::verified::Verified;

use super::{Planned, Remote, Staged, build_staged, check_budget, discard_downloads};
use crate::apply::source::LocalRelease;
use crate::cli::plan::{self, Observed, base_intact};
use crate::cli::report::{self, Out};
use crate::cli::root::Root;
use crate::fsutil;

/// What two hops cost as the plan priced them, for the update's summary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HopSummary {
    /// The intermediate release.
    pub via: String,
    /// Its manifest and both diffs.
    pub download_bytes: u64,
    pub requests: u64,
}

/// Two hops priced on this machine: the intermediate release's verified manifest (and
/// its bytes), the plan of the first hop and both hops' cost, which beats the direct
/// plan. [`Remote::take_hops`] executes it.
pub struct PricedHops {
    pub via_bytes: Vec<u8>,
    pub via_manifest: Verified<Manifest>,
    pub first: Observed,
    pub hop: HopPlan,
    /// The plan line `ferry update` prints for it.
    pub line: String,
}

impl Remote {
    /// The plan to execute for `target`: `planned` as it is, or, when two hops through
    /// a release the head lists cost less, the plan of the target from that release,
    /// already built in staging (with what the hops cost), from the active release and
    /// the others retained. Errors only when the data
    /// budget refuses the hops' plan; anything else going wrong falls back to
    /// `planned`.
    pub fn try_hops(
        &self,
        root: &Root,
        head: &ChannelHead,
        trusted: &TrustedKeys,
        target: &Verified<Manifest>,
        planned: Planned,
        out: Out,
    ) -> Result<(Planned, Option<HopSummary>)> {
        // A plan already under way (a skeleton's diff applied) is the direct one.
        if planned.next != 0 || planned.prepared.is_some() {
            return Ok((planned, None));
        }
        match self.price_hops(root, head, trusted, target, &planned.observed, out)? {
            Some(priced) => self.take_hops(root, target, planned, priced, out),
            None => Ok((planned, None)),
        }
    }

    /// Two hops through the most promising release the head lists between a release
    /// this root holds intact and `target`, priced exactly (one more request: the
    /// intermediate release's manifest), when they cost fewer bytes than the plan
    /// `direct` observed. `None` when no path pays or its manifest is unusable (with a
    /// warning); what `ferry update` would do, so `--dry-run` and the library's plan
    /// show what it spends.
    pub fn price_hops(
        &self,
        root: &Root,
        head: &ChannelHead,
        trusted: &TrustedKeys,
        target: &Verified<Manifest>,
        direct: &Observed,
        out: Out,
    ) -> Result<Option<PricedHops>> {
        let chosen = direct.plan.chosen();
        if !matches!(chosen.via, Via::Archive | Via::Diff { .. }) || chosen.download_bytes == 0 {
            return Ok(None);
        }
        let held: Vec<&str> = direct
            .releases
            .iter()
            .filter(|r| base_intact(r))
            .map(|r| r.version.as_str())
            .collect();
        // The cheapest estimate first, looked at unless what is known of it (I's
        // manifest and the second diff) already costs as much as the direct way: the
        // estimate of the first hop is only a guess (a release that rewrote most of the
        // program makes N's own diff from that distance far larger than I's), and a
        // wrong guess costs one manifest.
        let Some(candidate) = hop_candidates(head.releases(), target, &held)
            .into_iter()
            .next()
            .filter(|c| c.via.manifest.size.saturating_add(c.second.size) < chosen.download_bytes)
        else {
            return Ok(None);
        };
        let via = candidate.via.version.clone();
        let channel = &root.config.channel;
        let (via_bytes, via_manifest) = match self.fetch_manifest(&candidate.via, channel, trusted)
        {
            Ok(m) => m,
            Err(e) => {
                warn_fallback(&via, &format!("its manifest is unusable: {e:#}"));
                return Ok(None);
            }
        };
        let (first, hop) = hops_through(root, target, direct, &via_manifest, via_bytes.len())?;
        let Some(hop) = hop.filter(|h| h.beats(&direct.plan)) else {
            out.info(&format!(
                "not going through {via}: two hops would not cost less than {} ({})",
                chosen.via.name(),
                report::bytes(chosen.download_bytes)
            ));
            return Ok(None);
        };
        let line = line(&direct.plan, &hop, root.state.active.as_deref());
        Ok(Some(PricedHops {
            via_bytes,
            via_manifest,
            first,
            hop,
            line,
        }))
    }

    /// Executes `priced`: builds the intermediate release in staging through the first
    /// hop and returns the plan of the target from it, with what the hops cost. Errors
    /// only when the data budget refuses the hops; a failed first hop falls back to
    /// `planned` (the direct plan) with a warning.
    pub fn take_hops(
        &self,
        root: &Root,
        target: &Verified<Manifest>,
        planned: Planned,
        priced: PricedHops,
        out: Out,
    ) -> Result<(Planned, Option<HopSummary>)> {
        let PricedHops {
            via_manifest,
            first,
            hop,
            line,
            ..
        } = priced;
        let from = root.state.active.as_deref();
        let via = hop.via.clone();
        check_budget(root, hop.download_bytes, Some(&line), out)?;
        out.info(&line);

        // The first hop alone: a failed diff ends it, never the intermediate release's
        // archive ranges (the direct plan's archive is the fallback).
        let mut first = first;
        first.plan.routes.truncate(1);
        let summary = HopSummary {
            via: via.clone(),
            download_bytes: hop.download_bytes,
            requests: hop.requests,
        };
        let tree = match build_staged(root, self, &via_manifest, out, Planned::new(first)) {
            Ok(Staged::Tree(tree, _)) => tree,
            Ok(Staged::OnDisk(stats)) => root.layout.release_dir(&stats.folder),
            Err(e) => {
                discard_downloads(&root.layout);
                let _ = fsutil::remove_tree(&root.layout.staging_tree(&via));
                warn_fallback(&via, &format!("the first hop failed: {e:#}"));
                return Ok((planned, None));
            }
        };
        // Its range files and spool go before the second hop downloads.
        discard_downloads(&root.layout);
        crash_point!("client::hops::via_built");
        let via_release = LocalRelease {
            version: via.clone(),
            tree,
            manifest: via_manifest,
        };
        let observed = plan::observe_with(
            root,
            target,
            from,
            &[],
            self.makes_diffs(),
            vec![via_release],
        )?;
        Ok((Planned::new(observed), Some(summary)))
    }
}

/// The first hop's plan on this machine (to `via_manifest`'s release, `via_size`
/// bytes of manifest) and both hops priced from it ([`plan_hops`]), given the direct
/// plan's observation of `target`.
pub fn hops_through(
    root: &Root,
    target: &Verified<Manifest>,
    direct: &Observed,
    via_manifest: &Verified<Manifest>,
    via_size: usize,
) -> Result<(Observed, Option<HopPlan>)> {
    let from = root.state.active.as_deref();
    let first = plan::observe(root, via_manifest, from, &[], false)?;
    let have = |id: &_| direct.local.has(id);
    let hop = plan_hops(
        target,
        via_manifest,
        via_manifest.object_hash(),
        via_size as u64,
        first.plan.clone(),
        &have,
        DEFAULT_MAX_GAP,
    );
    Ok((first, hop))
}

/// `plan: 1.0.0 -> 1.7.0: two hops through 1.5.0: its manifest (20.1 KB), diff from 1.0.0
/// (1.1 MB), diff from 1.5.0 (400.2 KB): 1.5 MB in 3 request(s) after the target's
/// manifest; the archive ranges would download 3.2 MB in 1 request(s)`
fn line(direct: &ferry_format::plan::UpdatePlan, hop: &HopPlan, from: Option<&str>) -> String {
    let first = hop.first.chosen();
    let second = hop.second.chosen();
    let base = match &first.via {
        Via::Diff { base, .. } => base.as_str(),
        _ => from.unwrap_or("none"),
    };
    let chosen = direct.chosen();
    format!(
        "plan: {} -> {}: two hops through {}: its manifest ({}), diff from {base} ({}), diff from {} ({}): {} in {} request(s) after the target's manifest; {} would download {} in {} request(s)",
        from.unwrap_or("none"),
        direct.to,
        hop.via,
        report::bytes(hop.manifest_size),
        report::bytes(first.download_bytes),
        hop.via,
        report::bytes(second.download_bytes),
        report::bytes(hop.download_bytes),
        hop.requests,
        match chosen.via {
            Via::Archive => "the archive ranges",
            _ => "the direct diff",
        },
        report::bytes(chosen.download_bytes),
        chosen.requests,
    )
}

fn warn_fallback(via: &str, why: &str) {
    tracing::warn!(
        "not going through {via} (two hops): {why}; the active release is untouched, taking the direct plan"
    );
}

/// The error a plan whose routes all failed ends with (the first hop's plan has one),
/// with why the last one failed.
pub(super) fn no_route_left(version: &str, failure: &str) -> anyhow::Error {
    anyhow!("no way left to get {version}: {failure}")
}

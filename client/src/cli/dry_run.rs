//! `ferry update --dry-run`: what the update would do and cost, from the head and the
//! release's manifest (at most 3 requests: two hops, FORMAT.md §8, also need the
//! intermediate release's manifest), changing nothing — no state, history, key
//! list, kept head, download or folder is written.
//!
//! The head passes every check a real update makes (signatures, expiry, sequence,
//! rollback protection), the release is chosen by the same rules, and the plan by the
//! same observation of the disk and the same planner (cli/plan.rs), so the bytes and
//! requests printed are the data the update would fetch after its own head and
//! manifest; `--json` lists the plan's fallbacks too. The whole manifest is
//! fetched even where the update would rebuild it from a manifest diff: a skeleton
//! manifest diff needs its data diff applied to be complete. An agent holding no
//! release is shown the head's diff from nothing (FORMAT.md §3.9) as its route.

use anyhow::{Context, Result};
use serde_json::json;

use super::UpdateArgs;
use super::deliver::{self, Remote};
use super::report::{self, Out};
use super::root::Root;
use super::update::{self, Mode};
use crate::install::lock::LockMode;
use crate::install::retain::UpdateDecision;
use crate::updater::{Check, Hops, Plan, Updater};

pub fn run(args: &UpdateArgs) -> Result<()> {
    let updater = Updater::open(&args.root)?
        .force(args.force)
        .max_download(args.max_download)
        .lock_timeout(args.lock.lock_timeout);
    let out = Out::new(args.json).quiet(args.quiet);
    let (check, requests, bytes) = counted(&updater, out)?;
    let (result, to, plan) = match &check {
        Check::Available(p) => ("would-install", Some(p.to.clone()), Some(p)),
        Check::UpToDate(v) => ("up-to-date", Some(v.clone()), None),
        Check::Pinned { newest, .. } => ("pinned", Some(newest.clone()), None),
        Check::NothingEligible => ("nothing-eligible", None, None),
    };
    if args.json {
        let v = json!({
            "dry_run": true,
            "from": plan.map_or_else(|| updater.status().ok().and_then(|s| s.active), |p| p.from.clone()),
            "to": to,
            "result": result,
            "plan": plan.map(|p| p.line.clone()),
            "via": plan.map(|p| if p.hops.is_some() { "hops" } else { p.via().name() }),
            "download_bytes": plan.map_or(0, Plan::download_bytes),
            "download_requests": plan.map_or(0, Plan::download_requests),
            "reuse_bytes": plan.map_or(0, Plan::reuse_bytes),
            "through": plan.and_then(|p| p.hops.as_ref()).map(|h| h.plan.via.clone()),
            "fallbacks": plan.map(|p| p.update.fallbacks().iter().map(|r| json!({
                "via": r.via.name(),
                "download_bytes": r.download_bytes,
                "download_requests": r.requests,
            })).collect::<Vec<_>>()),
            "requests": requests,
            "bytes_downloaded": bytes,
        });
        println!("{v}");
        return Ok(());
    }
    if args.quiet {
        return Ok(());
    }
    let spent = format!(
        "this dry run fetched {} in {requests} request(s) and changed nothing",
        report::bytes(bytes)
    );
    match plan {
        Some(p) => println!(
            "dry run: updating {} -> {}{} would download {} in {} request(s) and reuse {}; {spent}",
            p.from.as_deref().unwrap_or("none"),
            p.to,
            p.hops.as_ref().map_or(String::new(), |h| format!(
                " through {} (two hops)",
                h.plan.via
            )),
            report::bytes(p.download_bytes()),
            p.download_requests(),
            report::bytes(p.reuse_bytes()),
        ),
        None => println!("dry run: {result}; {spent}"),
    }
    Ok(())
}

/// [`Updater::check`].
pub(crate) fn check(u: &Updater, out: Out) -> Result<Check> {
    Ok(counted(u, out)?.0)
}

/// The check, and the requests and bytes it spent.
fn counted(u: &Updater, out: Out) -> Result<(Check, u64, u64)> {
    let mut root = Root::open(u.root(), LockMode::Exclusive, u.lock())?;
    if let Some(budget) = u.download_budget() {
        root.config.max_download = Some(budget);
    }
    let remote = Remote::connect(&root.config)?;
    let check = plan(&mut root, &remote, u.forced(), out)?;
    let (requests, bytes) = remote.counts();
    Ok((check, requests, bytes))
}

fn plan(root: &mut Root, remote: &Remote, force: bool, out: Out) -> Result<Check> {
    let (head, trusted) = remote.peek_head(root)?;
    update::refuse_older(root, &head)?;
    let mode = Mode {
        force,
        schedule: None,
        prestage: false,
        progress: None,
        plan: None,
    };
    let active = root.state.active.clone();
    let Some(version) = update::choose_release(root, &head, &mode, out, false)? else {
        return Ok(Check::NothingEligible);
    };
    let recall = active.as_deref().is_some_and(|a| head.is_revoked(a));
    match update::decide(root, &head, &version, recall, force, out)? {
        None => return Ok(Check::NothingEligible),
        Some(UpdateDecision::UpToDate) => {
            out.info(&format!("already up to date ({version})"));
            return Ok(Check::UpToDate(version));
        }
        Some(UpdateDecision::Pinned(pin)) => {
            out.info(&format!(
                "pinned to {} (rolled back from {}); newest is {version}; use --force",
                pin.version, pin.rolled_back_from
            ));
            return Ok(Check::Pinned {
                pinned: pin.version,
                newest: version,
            });
        }
        Some(UpdateDecision::Install) => {}
    }
    let release = head
        .releases()
        .iter()
        .find(|r| r.version == version)
        .cloned()
        .context("chosen release missing from the head")?;
    let channel = root.config.channel.clone();
    let (bytes, manifest) = remote.fetch_manifest(&release, &channel, &trusted)?;
    let observed = super::plan::observe_head(
        root,
        &head,
        &manifest,
        active.as_deref(),
        remote.makes_diffs(),
    )?;
    let line = super::plan::line(&root.layout, &observed.plan, observed.plan.chosen());
    out.info(&line);
    deliver::check_plan(root, &manifest, &observed.plan)?;
    // Two hops, priced as the update prices them (one more request, counted above).
    let hops = remote.price_hops(root, &head, &trusted, &manifest, &observed, out)?;
    let plan = Plan::new(observed.plan, line, bytes);
    Ok(Check::Available(match hops {
        None => plan,
        Some(priced) => {
            deliver::check_budget(root, priced.hop.download_bytes, Some(&priced.line), out)?;
            out.info(&priced.line);
            plan.through(Hops::new(priced.hop, priced.via_bytes), priced.line)
        }
    }))
}

//! `ferry update --dry-run`: what the update would do and cost, from the head and the
//! release's manifest (at most 2 requests), changing nothing — no state, history, key
//! list, kept head, download or folder is written.
//!
//! The head passes every check a real update makes (signatures, expiry, sequence,
//! rollback protection), the release is chosen by the same rules, and the plan by the
//! same planner over the same local chunks, so the bytes and requests printed are the
//! data the update would fetch after its own head and manifest. The whole manifest is
//! fetched even where the update would rebuild it from a manifest diff: a skeleton
//! manifest diff needs its data diff applied to be complete.

use anyhow::{Context, Result};
use serde_json::json;

use super::UpdateArgs;
use super::deliver::{self, BuildPlan, Remote};
use super::report::{self, Out};
use super::root::Root;
use super::update::{self, Mode};
use crate::install::lock::LockMode;
use crate::install::retain::UpdateDecision;

pub fn run(args: &UpdateArgs) -> Result<()> {
    let mut root = Root::open(&args.root, LockMode::Exclusive, &args.lock)?;
    if args.max_download.is_some() {
        root.config.max_download = args.max_download;
    }
    let out = Out::new(args.json).quiet(args.quiet);
    let remote = Remote::connect(&root.config)?;
    let outcome = plan(&mut root, &remote, args.force, out);
    let (requests, bytes) = remote.counts();
    let (result, version, plan) = outcome?;
    let from = root.state.active.clone();
    if args.json {
        let v = json!({
            "dry_run": true,
            "from": from,
            "to": version,
            "result": result,
            "plan": plan.as_ref().map(|p| p.line.clone()),
            "via": plan.as_ref().map(|p| p.via),
            "download_bytes": plan.as_ref().map_or(0, |p| p.download),
            "download_requests": plan.as_ref().map_or(0, |p| p.requests),
            "reuse_bytes": plan.as_ref().map_or(0, |p| p.reuse),
            "requests": requests,
            "bytes_downloaded": bytes,
        });
        println!("{v}");
        return Ok(());
    }
    let spent = format!(
        "this dry run fetched {} in {requests} request(s) and changed nothing",
        report::bytes(bytes)
    );
    match plan {
        Some(p) => println!(
            "dry run: updating {} -> {} would download {} in {} request(s) and reuse {}; {spent}",
            from.as_deref().unwrap_or("none"),
            version.as_deref().unwrap_or("?"),
            report::bytes(p.download),
            p.requests,
            report::bytes(p.reuse),
        ),
        None => println!("dry run: {result}; {spent}"),
    }
    Ok(())
}

/// (result word, the release chosen, its plan when it would be built).
fn plan(
    root: &mut Root,
    remote: &Remote,
    force: bool,
    out: Out,
) -> Result<(&'static str, Option<String>, Option<BuildPlan>)> {
    let (head, trusted) = remote.peek_head(root)?;
    update::refuse_older(root, &head)?;
    let mode = Mode {
        force,
        schedule: None,
        prestage: false,
        progress: None,
    };
    let active = root.state.active.clone();
    let Some(version) = update::choose_release(root, &head, &mode, out, false)? else {
        return Ok(("nothing-eligible", None, None));
    };
    let recall = active.as_deref().is_some_and(|a| head.is_revoked(a));
    let decision = update::decide(root, &head, &version, recall, force, out)?;
    match decision {
        None => return Ok(("nothing-eligible", Some(version), None)),
        Some(UpdateDecision::UpToDate) => {
            out.info(&format!("already up to date ({version})"));
            return Ok(("up-to-date", Some(version), None));
        }
        Some(UpdateDecision::Pinned(pin)) => {
            out.info(&format!(
                "pinned to {} (rolled back from {}); newest is {version}; use --force",
                pin.version, pin.rolled_back_from
            ));
            return Ok(("pinned", Some(version), None));
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
    let (_, manifest) = remote.fetch_manifest(&release, &channel, &trusted)?;
    let plan = deliver::plan_build(root, &manifest, active.as_deref())?;
    out.info(&plan.line);
    deliver::check_plan(root, &manifest, &plan)?;
    Ok(("would-install", Some(version), Some(plan)))
}

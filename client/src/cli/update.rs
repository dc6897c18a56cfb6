//! `ferry update` and each check of `ferry agent`: move the root to the newest
//! release of the channel it may run (install/choose.rs), switching with the hooks
//! (switch.rs). By hand every check switches at once; the agent passes its update
//! windows, outside which it only pre-stages the release beside the active one.
//!
//! A recall (FORMAT.md §5.3) is the one move to an older release a check makes by
//! itself: when the verified head revokes the active release, the newest release this
//! root may run that is not revoked is installed even if it is older, past the rule
//! that a check never downgrades and past a rollback pin; it is recorded as `recall`.

use std::time::Instant;

use anyhow::{Context, Result};
use ferry_format::head::{ChannelHead, rollout_bucket};
use ferry_format::manifest::Manifest;
use ferry_format::plan::{Route, Via};
use ferry_format::report::AgentState;
use ferry_format::requirements::AgentFacts;
use ferry_format::verified::{Verified, verify_manifest};
use ferry_format::version::Version;
use serde_json::json;

use super::UpdateArgs;
use super::deliver::{self, HopSummary, Remote};
use super::exit::{self, Class};
use super::plan;
use super::report::{self, Out};
use super::root::Root;
use super::switch::{self, Switched};
use crate::agent::window::Schedule;
use crate::apply::check::{Depth, check_tree};
use crate::install::activate::current_folder;
use crate::install::agent_id;
use crate::install::choose::{INCOMPATIBLE, Offer, choose};
use crate::install::history::{self, Event};
use crate::install::lock::LockMode;
use crate::install::retain::{RuleError, UpdateDecision, decide_update};
use crate::install::space;
use crate::install::state::{HeldBack, Staged};
use crate::updater::{Applied, Plan, Updater};

/// Told that a check entered `state` for the release `target`.
pub type Progress<'a> = dyn Fn(AgentState, &str) + 'a;

/// How a check may act.
#[derive(Clone, Copy)]
pub struct Mode<'a> {
    /// Overrides a rollback's pin and this root's bad marks.
    pub force: bool,
    /// Switch only while one of these windows is open (`None`: at once).
    pub schedule: Option<&'a Schedule>,
    /// Outside a window, build the release beside the active one.
    pub prestage: bool,
    /// Told when a check starts a long stage for a release (downloading it,
    /// `pre_switch`, the health check), for the agent's reports.
    pub progress: Option<&'a Progress<'a>>,
    /// A plan made by [`Updater::check`] to execute as it is ([`Updater::apply`]):
    /// refused when the channel or the disk no longer match it.
    pub plan: Option<&'a Plan>,
}

impl Mode<'_> {
    pub fn progress(&self, state: AgentState, target: &str) {
        if let Some(p) = self.progress {
            p(state, target);
        }
    }
}

/// What a check did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Installed,
    UpToDate,
    Pinned,
    /// No release newer than the active one is open to this root.
    NothingEligible,
    /// Built beside the active release; waiting for a window.
    Staged,
    /// Outside every window, not pre-staging (or already staged).
    Waiting,
    /// Installed, failed its hooks, and the previous release is active again.
    SwitchedBack(String),
}

impl Step {
    /// The word the agent's log and JSON use.
    pub fn name(&self) -> &'static str {
        match self {
            Step::Installed => "installed",
            Step::UpToDate => "up-to-date",
            Step::Pinned => "pinned",
            Step::NothingEligible => "nothing-eligible",
            Step::Staged => "staged",
            Step::Waiting => "waiting-for-window",
            Step::SwitchedBack(_) => "rolled-back",
        }
    }
}

/// What one check did, for the summary, history and the agent's log.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub from: Option<String>,
    /// The release active now.
    pub to: Option<String>,
    /// The release the check aimed at.
    pub target: Option<String>,
    pub bytes_reused: u64,
    /// The size of the release's archive when this check downloaded and built it (what
    /// a full download would have cost, for the fleet's bytes saved); else 0.
    pub bytes_full: u64,
    pub step: Step,
    /// The revoked release this check left (a recall, FORMAT.md §5.3).
    pub recalled_from: Option<String>,
    /// The route of the plan that built the release, as the plan priced it (none
    /// when nothing was built).
    pub route: Option<Route>,
    /// When the release was built through an intermediate one (two hops), what both
    /// hops were planned to cost; `route` is then the second hop's.
    pub hops: Option<HopSummary>,
}

/// One check with what it cost.
pub struct Attempt {
    pub from: Option<String>,
    pub target: Option<String>,
    pub result: Result<Outcome>,
    pub requests: u64,
    pub bytes: u64,
    pub seconds: f64,
}

/// `ferry update`: [`perform`] through the library's [`Updater`], then the summary.
pub fn run(args: &UpdateArgs) -> Result<()> {
    let updater = Updater::open(&args.root)?
        .force(args.force)
        // For this run only: the configuration file is not rewritten.
        .max_download(args.max_download)
        .lock_timeout(args.lock.lock_timeout);
    let out = Out::new(args.json).quiet(args.quiet);
    let a = perform(&updater, None, &|_, _| {}, out)?;
    if args.json {
        let v = json!({
            "from": a.from,
            "to": a.to,
            "result": a.result,
            "bytes_downloaded": a.bytes_downloaded,
            "requests": a.requests,
            "bytes_reused": a.bytes_reused,
            "seconds": a.seconds,
            "recalled_from": a.recalled_from,
            "via": if a.through.is_some() { Some("hops") } else { a.via.as_ref().map(Via::name) },
            "through": a.through,
            "planned_bytes": a.planned_bytes,
            "planned_requests": a.planned_requests,
        });
        println!("{v}");
    } else if args.quiet || a.result != Step::Installed.name() {
    } else if let Some(revoked) = &a.recalled_from {
        println!(
            "recalled {revoked} -> {}: {revoked} was revoked by the publisher; downloaded {} in {} requests, reused {}, {:.1} s",
            a.to.as_deref().unwrap_or("none"),
            report::bytes(a.bytes_downloaded),
            a.requests,
            report::bytes(a.bytes_reused),
            a.seconds,
        );
    } else {
        println!(
            "updated {} -> {}: downloaded {} in {} requests, reused {}, {:.1} s",
            a.from.as_deref().unwrap_or("none"),
            a.to.as_deref().unwrap_or("none"),
            report::bytes(a.bytes_downloaded),
            a.requests,
            report::bytes(a.bytes_reused),
            a.seconds,
        );
    }
    Ok(())
}

/// One update of `u`'s root to the newest release it may run, switching at once with
/// the hooks; `progress` hears each long stage. A release switched back from after
/// its health check is an error (refused by policy).
pub(crate) fn perform(
    u: &Updater,
    plan: Option<&Plan>,
    progress: &Progress<'_>,
    out: Out,
) -> Result<Applied> {
    let mut root = Root::open(u.root(), LockMode::Exclusive, u.lock())?;
    if let Some(budget) = u.download_budget() {
        root.config.max_download = Some(budget);
    }
    let mode = Mode {
        force: u.forced(),
        schedule: None,
        prestage: false,
        progress: Some(progress),
        plan,
    };
    let a = attempt(&mut root, &mode, out);
    let o = a.result?;
    if let Step::SwitchedBack(reason) = &o.step {
        return exit::refuse(
            Class::Policy,
            format!(
                "{} was installed but failed ({reason}); {} is active again",
                o.target.as_deref().unwrap_or("the new release"),
                o.to.as_deref().unwrap_or("nothing")
            ),
        );
    }
    Ok(Applied {
        planned_bytes: o.hops.as_ref().map_or_else(
            || o.route.as_ref().map_or(0, |r| r.download_bytes),
            |h| h.download_bytes,
        ),
        planned_requests: o.hops.as_ref().map_or_else(
            || o.route.as_ref().map_or(0, |r| r.requests),
            |h| h.requests,
        ),
        through: o.hops.map(|h| h.via),
        via: o.route.map(|r| r.via),
        changed: o.step == Step::Installed,
        from: o.from,
        to: o.to,
        result: o.step.name().to_string(),
        recalled_from: o.recalled_from,
        bytes_downloaded: a.bytes,
        requests: a.requests,
        bytes_reused: o.bytes_reused,
        seconds: a.seconds,
    })
}

/// Runs one check on an open root and records it in history.
pub fn attempt(root: &mut Root, mode: &Mode<'_>, out: Out) -> Attempt {
    let started = Instant::now();
    let from = root.state.active.clone();
    let mut target: Option<String> = None;
    let remote = Remote::connect(&root.config);
    let result = match &remote {
        Ok(r) => update(root, r, mode, out, &mut target),
        Err(e) => Err(anyhow::anyhow!("{e:#}")),
    };
    let (requests, bytes) = remote.as_ref().map_or((0, 0), Remote::counts);
    drop(remote);
    let a = Attempt {
        from,
        target,
        result,
        requests,
        bytes,
        seconds: started.elapsed().as_secs_f64(),
    };
    if let Err(e) = record(root, &a) {
        tracing::warn!("recording history: {e:#}");
    }
    a
}

fn record(root: &Root, a: &Attempt) -> Result<()> {
    let kind = if a.from.is_none() {
        "install"
    } else {
        "update"
    };
    let mut event = Event::new(kind, report::unix_now(), &root.key_id());
    event.from = a.from.clone();
    event.requests = a.requests;
    event.bytes_downloaded = a.bytes;
    event.to = a.target.clone();
    match &a.result {
        Err(e) => event.result = format!("error: {e:#}"),
        Ok(o) => match &o.step {
            Step::Installed => {
                if let Some(revoked) = &o.recalled_from {
                    event.event = "recall".into();
                    event.result = format!("{revoked} was revoked by the publisher");
                }
            }
            Step::SwitchedBack(reason) => {
                event.event = "auto-rollback".into();
                event.result = format!(
                    "{reason}; switched back to {}, {} marked bad",
                    o.to.as_deref().unwrap_or("nothing"),
                    o.target.as_deref().unwrap_or("?")
                );
            }
            _ => return Ok(()),
        },
    }
    history::append(&root.layout.history(), &event).context("recording history")
}

fn update(
    root: &mut Root,
    remote: &Remote,
    mode: &Mode<'_>,
    out: Out,
    target_slot: &mut Option<String>,
) -> Result<Outcome> {
    let active = root.state.active.clone();
    let mut outcome = Outcome {
        from: active.clone(),
        to: active.clone(),
        target: None,
        bytes_reused: 0,
        bytes_full: 0,
        step: Step::UpToDate,
        recalled_from: None,
        route: None,
        hops: None,
    };
    // A run killed while hooks ran finishes its trial before anything else, also
    // when no server is reachable: it needs nothing from the repository.
    if let Some(Switched::SwitchedBack(reason)) = switch::resume_trial(root, mode, out)? {
        outcome.target = active;
        outcome.to = root.state.active.clone();
        outcome.step = Step::SwitchedBack(reason);
        *target_slot = outcome.target.clone();
        deliver::cleanup_and_prune(root)?;
        return Ok(outcome);
    }

    let (head, trusted) = remote.fetch_head(root)?;
    refuse_older(root, &head)?;
    let chosen = choose_release(root, &head, mode, out, true)?;
    root.save_state()?;
    // The active release revoked in a head that verified in full: the publishing
    // keys' word, so the check leaves it even for an older release.
    let recall = active.clone().filter(|a| head.is_revoked(a));
    if let Some(revoked) = &recall {
        match &chosen {
            Some(v) => out.info(&format!(
                "{revoked} was revoked by the publisher: recalling to {v}"
            )),
            None => out.info(&format!(
                "{revoked} was revoked by the publisher, but no other release is open to this agent: it stays on {revoked}"
            )),
        }
    }
    let Some(version) = chosen else {
        outcome.step = Step::NothingEligible;
        deliver::cleanup_and_prune(root)?;
        return Ok(outcome);
    };
    *target_slot = Some(version.clone());
    outcome.target = Some(version.clone());
    if let Some(p) = mode.plan
        && p.to != version
    {
        return Err(stale(format!(
            "the plan installs {}, but the channel now offers {version} to this root",
            p.to
        )));
    }
    let Some(decision) = decide(root, &head, &version, recall.is_some(), mode.force, out)? else {
        outcome.step = Step::NothingEligible;
        deliver::cleanup_and_prune(root)?;
        return Ok(outcome);
    };
    match decision {
        UpdateDecision::UpToDate => {
            out.info(&format!("already up to date ({version})"));
            // A run killed after its switch left staging or a superseded folder:
            // nothing new to install, so this run finishes that one's cleanup.
            deliver::cleanup_and_prune(root)?;
            return Ok(outcome);
        }
        UpdateDecision::Pinned(pin) => {
            out.info(&format!(
                "pinned to {} (rolled back from {}); newest is {version}; use --force",
                pin.version, pin.rolled_back_from
            ));
            outcome.step = Step::Pinned;
            deliver::cleanup_and_prune(root)?;
            return Ok(outcome);
        }
        UpdateDecision::Install => {}
    }

    if root
        .state
        .staged
        .as_ref()
        .is_some_and(|s| s.version != version)
    {
        // Superseded while it waited: pruning removes its folder.
        root.state.staged = None;
    }
    let window_open = mode
        .schedule
        .is_none_or(|s| s.is_open(jiff::Timestamp::now()));
    let staged = root
        .state
        .staged
        .clone()
        // Waiting, a shape check will do (every check would otherwise re-read the
        // whole release); the switch itself re-reads every byte first.
        .filter(|s| {
            let depth = if window_open {
                Depth::Content
            } else {
                Depth::Shape
            };
            s.version == version && staged_intact(root, s, depth)
        });
    if !window_open && (staged.is_some() || !mode.prestage) {
        out.info(&format!(
            "{version} is {}; waiting for an update window ({})",
            if staged.is_some() {
                "staged"
            } else {
                "available"
            },
            mode.schedule.map_or(String::new(), Schedule::describe)
        ));
        outcome.step = Step::Waiting;
        return Ok(outcome);
    }

    let (manifest, manifest_size, folder, bytes_reused, route, hops) = match staged {
        Some(s) => {
            let manifest = root.load_manifest(&s.record())?;
            out.info(&format!(
                "plan: {} -> {version}: built beside it in versions/{} while waiting, nothing to download",
                active.as_deref().unwrap_or("none"),
                s.folder
            ));
            let reused = manifest.total_file_bytes();
            (manifest, s.manifest_size, s.folder, reused, None, None)
        }
        None => {
            mode.progress(AgentState::Downloading, &version);
            let built = build(root, remote, &head, &trusted, &version, mode.plan, out)?;
            outcome.bytes_full = built.0.archive.size;
            built
        }
    };
    outcome.route = route;
    outcome.hops = hops;
    if !window_open {
        root.state.staged = Some(Staged {
            version: version.clone(),
            folder,
            manifest_hash: manifest.object_hash().to_hex(),
            manifest_size,
        });
        root.save_state()?;
        out.info(&format!(
            "{version} staged; switching in the next update window ({})",
            mode.schedule.map_or(String::new(), Schedule::describe)
        ));
        deliver::cleanup_and_prune(root)?;
        outcome.step = Step::Staged;
        outcome.bytes_reused = bytes_reused;
        return Ok(outcome);
    }
    // Kept until the switch: a cancelled `pre_switch` leaves it for the next check.
    root.state.staged = Some(Staged {
        version: version.clone(),
        folder: folder.clone(),
        manifest_hash: manifest.object_hash().to_hex(),
        manifest_size,
    });
    root.save_state()?;
    let switched = switch::switch_with_hooks(root, &manifest, manifest_size, &folder, mode, out)?;
    root.state.staged = None;
    root.state.pin = None;
    root.save_state()?;
    deliver::cleanup_and_prune(root)?;
    outcome.to = root.state.active.clone();
    outcome.bytes_reused = bytes_reused;
    outcome.step = match switched {
        Switched::Stayed => Step::Installed,
        Switched::SwitchedBack(reason) => Step::SwitchedBack(reason),
    };
    outcome.recalled_from = recall;
    Ok(outcome)
}

/// The rollback-attack check: the head's current release may never go below what this
/// root has seen, whichever release this root then chooses. Raises the highest seen.
pub(super) fn refuse_older(root: &mut Root, head: &ChannelHead) -> Result<()> {
    let current = Version::parse(&head.current().version)?;
    if let Some(h) = root
        .state
        .highest_version
        .as_deref()
        .and_then(|v| Version::parse(v).ok())
        && current < h
    {
        return Err(RuleError::OlderRelease {
            target: current.to_string(),
            highest: h.to_string(),
        }
        .into());
    }
    root.state.raise_highest(&current);
    Ok(())
}

/// What to do about `version`, the release chosen for this root: `None` when it is
/// older than the active one and the root is only held back from the newest (a
/// rollout lowered after it updated: no downgrade, unless `recall`).
pub(super) fn decide(
    root: &Root,
    head: &ChannelHead,
    version: &str,
    recall: bool,
    force: bool,
    out: Out,
) -> Result<Option<UpdateDecision>> {
    let target = Version::parse(version)?;
    let active_v = root
        .state
        .active
        .as_deref()
        .and_then(|v| Version::parse(v).ok());
    if !recall
        && version != head.current().version
        && active_v.as_ref().is_some_and(|a| *a > target)
    {
        return Ok(None);
    }
    // A recall overrides a rollback pin: the pinned release is what was revoked.
    let pin = root.state.pin.as_ref().filter(|_| !recall);
    let decision = decide_update(&target, active_v.as_ref(), None, pin, force)?;
    if decision == UpdateDecision::UpToDate && !active_intact(root, version) {
        out.info(&format!(
            "{version} is active but damaged on disk: building a new copy beside it"
        ));
        return Ok(Some(UpdateDecision::Install));
    }
    Ok(Some(decision))
}

/// Builds `version` into a folder of `versions/` by executing its plan: the one given
/// (`ferry_client`'s `apply`), else the one made from a manifest skeleton while
/// fetching the manifest, else one made now. Returns the manifest, its size, the
/// folder, the bytes reused and the route taken.
fn build(
    root: &mut Root,
    remote: &Remote,
    head: &Verified<ChannelHead>,
    trusted: &ferry_format::envelope::TrustedKeys,
    version: &str,
    given: Option<&Plan>,
    out: Out,
) -> Result<Built> {
    let active = root.state.active.clone();
    let release = head
        .releases()
        .iter()
        .find(|r| r.version == version)
        .cloned()
        .context("chosen release missing from the head")?;
    let channel = root.config.channel.clone();
    let (bytes, manifest, planned) = if let Some(p) = given {
        // The manifest the plan was made from, checked again against this head: no
        // request, and the plan's bytes stay the bytes spent.
        let manifest = verify_manifest(p.manifest_bytes(), &release, &channel, trusted)
            .map_err(|e| stale(format!("the plan's manifest is not {version}'s now: {e:#}")))?;
        let observed = plan::observe_head(
            root,
            head,
            &manifest,
            active.as_deref(),
            remote.makes_diffs(),
        )?;
        if observed.plan != p.update {
            return Err(stale(
                "what is on disk changed since the plan was made".to_string(),
            ));
        }
        (
            p.manifest_bytes().to_vec(),
            manifest,
            deliver::Planned::new(observed),
        )
    } else if head.current().version == version {
        let f = remote.fetch_current_manifest(root, head, trusted, active.as_deref(), out)?;
        let planned = match f.planned {
            Some(p) => p,
            None => deliver::Planned::new(plan::observe_head(
                root,
                head,
                &f.manifest,
                active.as_deref(),
                remote.makes_diffs(),
            )?),
        };
        (f.bytes, f.manifest, planned)
    } else {
        let (bytes, manifest) = remote.fetch_manifest(&release, &channel, trusted)?;
        let observed = plan::observe(
            root,
            &manifest,
            active.as_deref(),
            &[],
            remote.makes_diffs(),
        )?;
        (bytes, manifest, deliver::Planned::new(observed))
    };
    // A plan given to `apply` is executed as it was made, its two hops included.
    let (planned, hops) = match given {
        Some(p) => match &p.hops {
            None => (planned, None),
            Some(h) => {
                let priced = given_hops(root, head, trusted, &manifest, &planned.observed, p, h)?;
                remote.take_hops(root, &manifest, planned, priced, out)?
            }
        },
        None => remote.try_hops(root, head, trusted, &manifest, planned, out)?,
    };
    let stats = deliver::install_release(
        root,
        remote,
        &bytes,
        &manifest,
        deliver::Origin { carry: true },
        out,
        planned,
    )?;
    Ok((
        manifest,
        bytes.len() as u64,
        stats.folder,
        stats.bytes_reused,
        stats.route,
        hops,
    ))
}

/// The two hops of a plan given to `apply`, checked to hold still: the intermediate
/// manifest the plan fetched, verified again against this head (no request), and both
/// hops priced again from the disk as it is now.
fn given_hops(
    root: &Root,
    head: &Verified<ChannelHead>,
    trusted: &ferry_format::envelope::TrustedKeys,
    target: &Verified<Manifest>,
    direct: &plan::Observed,
    p: &Plan,
    h: &crate::updater::Hops,
) -> Result<deliver::PricedHops> {
    let via = &h.plan.via;
    let release = head
        .releases()
        .iter()
        .find(|r| r.version == *via)
        .cloned()
        .ok_or_else(|| {
            stale(format!(
                "the plan goes through {via}, which the head no longer lists"
            ))
        })?;
    let via_manifest = verify_manifest(h.manifest_bytes(), &release, &root.config.channel, trusted)
        .map_err(|e| {
            stale(format!(
                "the plan's manifest of {via} is not {via}'s now: {e:#}"
            ))
        })?;
    let (first, hop) = deliver::hops_through(
        root,
        target,
        direct,
        &via_manifest,
        h.manifest_bytes().len(),
    )?;
    if hop.as_ref() != Some(&h.plan) {
        return Err(stale(format!(
            "what is on disk changed since the plan through {via} was made"
        )));
    }
    Ok(deliver::PricedHops {
        via_bytes: h.manifest_bytes().to_vec(),
        via_manifest,
        first,
        hop: h.plan.clone(),
        line: p.line.clone(),
    })
}

/// What [`build`] made: the manifest, its size, the folder, the bytes reused, the
/// plan's route that built it and, when it went through an intermediate release, what
/// the two hops cost.
type Built = (
    Verified<Manifest>,
    u64,
    String,
    u64,
    Option<Route>,
    Option<HopSummary>,
);

/// A plan given to `apply` that no longer holds.
fn stale(why: String) -> anyhow::Error {
    anyhow::Error::new(Stale(why))
}

/// Marks a plan that no longer matches the channel or the disk ([`crate::updater::Error::Stale`]).
#[derive(Debug)]
pub(crate) struct Stale(pub String);

impl std::fmt::Display for Stale {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: check again", self.0)
    }
}

impl std::error::Error for Stale {}

/// Picks the newest release this root may run (install/choose.rs) and keeps the newer
/// ones it passed over in the state for `ferry status`.
/// The release this root takes from `head`, recording what it is held back from;
/// `record` also writes a refusal for its requirements into the history once.
pub(super) fn choose_release(
    root: &mut Root,
    head: &ChannelHead,
    mode: &Mode<'_>,
    out: Out,
    record: bool,
) -> Result<Option<String>> {
    let needs_id = head
        .releases()
        .iter()
        .any(|r| head.rollout_of(&r.version) < 100);
    let id = if needs_id {
        Some(agent_id::load_or_create(&root.layout.agent_id())?)
    } else {
        None
    };
    let labels = root.config.label_map();
    let free_disk = space::available(root.layout.root());
    let facts = AgentFacts {
        os: std::env::consts::OS,
        arch: std::env::consts::ARCH,
        agent_version: env!("CARGO_PKG_VERSION"),
        free_disk,
        labels: &labels,
    };
    let state = &root.state;
    let offers = head.releases().iter().rev().map(|r| Offer {
        version: &r.version,
        percent: head.rollout_of(&r.version),
        bucket: id
            .as_ref()
            .map_or(0, |id| rollout_bucket(id, head.channel(), &r.version)),
        bad: state.bad_reason(&r.version),
        unmet: head
            .requirements_of(&r.version)
            .unmet(&facts)
            .iter()
            .map(ToString::to_string)
            .collect(),
        revoked: head.is_revoked(&r.version),
        labels: head.rollout_labels_of(&r.version).to_string(),
        unlabelled: head
            .rollout_labels_of(&r.version)
            .unmet(&facts)
            .iter()
            .map(ToString::to_string)
            .collect(),
    });
    let choice = choose(offers, mode.force);
    let active = state.active.as_deref().and_then(|v| Version::parse(v).ok());
    let newer = |h: &HeldBack| {
        let v = Version::parse(&h.version).ok();
        active
            .as_ref()
            .is_none_or(|a| v.as_ref().is_some_and(|v| v > a))
    };
    let held_back: Vec<HeldBack> = choice.held_back.into_iter().filter(newer).collect();
    for h in &held_back {
        out.info(&format!("not selected for {}: {}", h.version, h.reason));
        // A release refused for its requirements is an event of this root's history,
        // recorded once, not at every check.
        if record && h.reason.starts_with(INCOMPATIBLE) && !root.state.held_back.contains(h) {
            let mut event = Event::new("refused", report::unix_now(), &root.key_id());
            event.from = root.state.active.clone();
            event.to = Some(h.version.clone());
            event.result = h.reason.clone();
            if let Err(e) = history::append(&root.layout.history(), &event) {
                tracing::warn!("recording the refusal in history: {e}");
            }
        }
    }
    root.state.held_back = held_back;
    Ok(choice.target)
}

/// `current` points at the recorded folder of `version` and the tree has the
/// manifest's shape (files the application added do not count).
fn active_intact(root: &Root, version: &str) -> bool {
    let Some(record) = root.state.release(version) else {
        return false;
    };
    if current_folder(&root.layout).as_deref() != Some(record.folder()) {
        return false;
    }
    match root.load_manifest(record) {
        Ok(m) => check_tree(&m, &root.release_dir(record), Depth::Shape).is_intact(),
        Err(_) => false,
    }
}

/// The staged folder still holds its release (the switch must not activate a tree
/// someone changed while it waited).
fn staged_intact(root: &Root, staged: &Staged, depth: Depth) -> bool {
    match root.load_manifest(&staged.record()) {
        Ok(m) => check_tree(&m, &root.layout.release_dir(&staged.folder), depth).is_intact(),
        Err(_) => false,
    }
}

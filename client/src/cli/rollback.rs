//! `ferry rollback`: switch to an older release and pin the root there.
//!
//! A retained release is an instant local switch. `--to` a release no longer on disk
//! fetches it like an update does (delta from local chunks), but without the "never
//! older" rule: a rollback is the operator's decision, not the repository's.

use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use ferry_format::version::Version;
use serde_json::json;

use super::RollbackArgs;
use super::deliver::{self, Remote};
use super::report::{self, Out};
use super::root::Root;
use crate::apply::check::{Depth, check_tree};
use crate::install::activate::switch_current;
use crate::install::history::{self, Event};
use crate::install::lock::LockMode;
use crate::install::retain::{RuleError, list, pin_after_rollback, rollback_target};
use crate::updater::{Applied, Updater};

struct Outcome {
    to: String,
    bytes_reused: u64,
}

/// Where a rollback goes.
#[derive(Clone, Debug)]
pub enum Target {
    /// This many retained releases down.
    Steps(usize),
    /// This release, retained or fetched from the channel.
    Version(String),
}

/// `ferry rollback`: [`perform`] through the library's [`Updater`], then the summary.
pub fn run(args: &RollbackArgs) -> Result<()> {
    let updater = Updater::open(&args.root)?.lock_timeout(args.lock.lock_timeout);
    let target = match &args.to {
        Some(v) => Target::Version(v.clone()),
        None => Target::Steps(args.steps.unwrap_or(1)),
    };
    let a = perform(&updater, target, Out::new(args.json))?;
    let (from, to) = (a.from.as_deref(), a.to.as_deref().unwrap_or("none"));
    if args.json {
        let v = json!({
            "from": from,
            "to": to,
            "bytes_downloaded": a.bytes_downloaded,
            "requests": a.requests,
            "bytes_reused": a.bytes_reused,
            "seconds": a.seconds,
        });
        println!("{v}");
    } else if !a.changed {
        println!("{to} is already active");
    } else {
        println!(
            "rolled back {} -> {to}: downloaded {} in {} requests, {:.1} s; pinned (ferry update --force to leave)",
            from.unwrap_or("none"),
            report::bytes(a.bytes_downloaded),
            a.requests,
            a.seconds,
        );
    }
    Ok(())
}

/// Switches `u`'s root to `target` and pins it there, recording the rollback.
pub(crate) fn perform(u: &Updater, target: Target, out: Out) -> Result<Applied> {
    let mut root = Root::open(u.root(), LockMode::Exclusive, u.lock())?;
    let started = Instant::now();
    let from = root.state.active.clone();
    let mut remote: Option<Remote> = None;
    let mut target_slot: Option<String> = None;
    let result = rollback(&mut root, &target, out, &mut remote, &mut target_slot);
    let target = target_slot;
    let (requests, bytes) = remote.as_ref().map_or((0, 0), Remote::counts);
    let mut event = Event::new("rollback", report::unix_now(), &root.key_id());
    event.from = from.clone();
    event.to = target;
    event.requests = requests;
    event.bytes_downloaded = bytes;
    match result {
        Err(e) => {
            // Refusals decided locally before anything happened are not events.
            if e.downcast_ref::<RuleError>().is_none() {
                event.result = format!("error: {e:#}");
                if let Err(h) = history::append(&root.layout.history(), &event) {
                    tracing::warn!("recording the failure in history: {h}");
                }
            }
            Err(e)
        }
        Ok(o) => {
            let seconds = started.elapsed().as_secs_f64();
            let changed = from.as_deref() != Some(o.to.as_str());
            if changed {
                history::append(&root.layout.history(), &event).context("recording history")?;
            }
            Ok(Applied {
                from,
                to: Some(o.to),
                result: "rolled-back".into(),
                recalled_from: None,
                changed,
                bytes_downloaded: bytes,
                requests,
                bytes_reused: o.bytes_reused,
                seconds,
                via: None,
                planned_bytes: 0,
                planned_requests: 0,
            })
        }
    }
}

fn rollback(
    root: &mut Root,
    target: &Target,
    out: Out,
    remote_slot: &mut Option<Remote>,
    target_slot: &mut Option<String>,
) -> Result<Outcome> {
    let active = root
        .state
        .active
        .clone()
        .ok_or(RuleError::NothingInstalled)?;
    let active_v = Version::parse(&active)?;
    let retained = root.state.retained();
    let target_version = match target {
        Target::Version(to) => Version::parse(to)?,
        Target::Steps(steps) => rollback_target(&retained, Some(&active_v), *steps)?,
    };
    let by_version = matches!(target, Target::Version(_));
    let target = target_version;
    let version = target.to_string();
    *target_slot = Some(version.clone());
    if target == active_v {
        return Ok(Outcome {
            to: active,
            bytes_reused: 0,
        });
    }

    // The pin is saved with (before) the switch: a crash after the switch must not
    // leave the older release active but unpinned, for the next `ferry update` would
    // silently undo the operator's rollback.
    let pin = pin_after_rollback(root.state.pin.as_ref(), &version, &active);
    let retained_record = root.state.release(&version).cloned();
    let mut local = None;
    if let Some(record) = &retained_record {
        // Retained: a local switch, after a check of the tree's shape and of the
        // content of every file it shares with another release (an application that
        // edited its active release in place edited those too; `ferry verify` checks
        // every file). Files the application wrote there are part of that release's
        // state, not damage.
        let manifest = root.load_manifest(record)?;
        let check = check_tree(&manifest, &root.release_dir(record), Depth::Shared);
        if check.is_intact() {
            local = Some(manifest);
        } else {
            out.info(&format!(
                "retained release {version} is damaged on disk ({} problem(s), first: {}): fetching it again into a new folder",
                check.damage.len(),
                check.damage[0]
            ));
        }
    }
    let bytes_reused = if let (Some(record), Some(manifest)) = (&retained_record, local) {
        super::switch::run_pre_switch(root, Some(&active), &version)?;
        root.state.pin = Some(pin);
        root.save_state()?;
        switch_current(&root.layout, record.folder())?;
        root.state.active = Some(version.clone());
        manifest.total_file_bytes()
    } else if by_version || retained_record.is_some() {
        let remote = remote_slot.insert(Remote::connect(&root.config)?);
        let (head, trusted) = remote.fetch_head(root)?;
        let release = head.release(&target).cloned().ok_or_else(|| {
            let offered: Vec<&str> = head.releases().iter().map(|r| r.version.as_str()).collect();
            anyhow!(
                "version {version} is neither retained locally ({}) nor offered by channel {} ({})",
                list(&retained),
                root.config.channel,
                offered.join(", ")
            )
        })?;
        let channel = root.config.channel.clone();
        let (bytes, manifest) = remote.fetch_manifest(&release, &channel, &trusted)?;
        let stats = deliver::install_release(
            root,
            remote,
            &bytes,
            &manifest,
            // A rollback returns to the release's own files: nothing is carried.
            deliver::Origin { carry: false },
            out,
            deliver::Planned::new(super::plan::observe(
                root,
                &manifest,
                Some(&active),
                &[],
                remote.makes_diffs(),
            )?),
        )?;
        super::switch::run_pre_switch(root, Some(&active), &version)?;
        root.state.pin = Some(pin);
        deliver::activate(root, &manifest, bytes.len() as u64, &stats.folder)?;
        stats.bytes_reused
    } else {
        bail!(
            "release {version} is not retained (retained: {})",
            list(&retained)
        )
    };
    root.state.raise_highest(&target);
    // An operator's rollback ends any trial: the release they chose is not on trial.
    root.state.trial = None;
    root.save_state()?;
    super::switch::run_post_switch(root, Some(&active), &version, out);
    deliver::cleanup_and_prune(root)?;
    Ok(Outcome {
        to: version,
        bytes_reused,
    })
}

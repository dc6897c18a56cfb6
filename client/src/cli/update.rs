//! `ferry update`: move the root to the channel's current release.

use std::time::Instant;

use anyhow::{Context, Result};
use ferry_format::head::rollout_bucket;
use ferry_format::version::Version;
use serde_json::json;

use super::UpdateArgs;
use super::deliver::{self, Remote};
use super::report::{self, Out};
use super::root::Root;
use crate::apply::check::{Depth, check_tree};
use crate::install::activate::current_folder;
use crate::install::agent_id;
use crate::install::history::{self, Event};
use crate::install::lock::LockMode;
use crate::install::retain::{UpdateDecision, decide_update};

/// What one update did, for the summary and `--json`.
struct Outcome {
    from: Option<String>,
    to: String,
    bytes_reused: u64,
    installed: bool,
}

pub fn run(args: &UpdateArgs) -> Result<()> {
    let mut root = Root::open(&args.root, LockMode::Exclusive, &args.lock)?;
    if args.max_download.is_some() {
        // For this run only: the configuration file is not rewritten.
        root.config.max_download = args.max_download;
    }
    let started = Instant::now();
    let out = Out { json: args.json };
    let from = root.state.active.clone();
    let mut target: Option<String> = None;
    let remote = Remote::connect(&root.config);
    let result = match &remote {
        Ok(r) => update(&mut root, r, args, out, &mut target),
        Err(e) => Err(anyhow::anyhow!("{e:#}")),
    };
    let (requests, bytes) = remote.as_ref().map_or((0, 0), Remote::counts);
    let kind = if from.is_none() { "install" } else { "update" };
    let mut event = Event::new(kind, report::unix_now(), &root.key_id());
    event.from = from;
    event.requests = requests;
    event.bytes_downloaded = bytes;
    match result {
        Err(e) => {
            event.to = target;
            event.result = format!("error: {e:#}");
            if let Err(h) = history::append(&root.layout.history(), &event) {
                tracing::warn!("recording the failure in history: {h}");
            }
            Err(e)
        }
        Ok(o) => {
            let seconds = started.elapsed().as_secs_f64();
            if o.installed {
                event.to = Some(o.to.clone());
                history::append(&root.layout.history(), &event).context("recording history")?;
            }
            if args.json {
                let v = json!({
                    "from": o.from,
                    "to": o.to,
                    "bytes_downloaded": bytes,
                    "requests": requests,
                    "bytes_reused": o.bytes_reused,
                    "seconds": seconds,
                });
                println!("{v}");
            } else if o.installed {
                println!(
                    "updated {} -> {}: downloaded {} in {requests} requests, reused {}, {seconds:.1} s",
                    o.from.as_deref().unwrap_or("none"),
                    o.to,
                    report::bytes(bytes),
                    report::bytes(o.bytes_reused),
                );
            }
            Ok(())
        }
    }
}

fn update(
    root: &mut Root,
    remote: &Remote,
    args: &UpdateArgs,
    out: Out,
    target_slot: &mut Option<String>,
) -> Result<Outcome> {
    let (head, trusted) = remote.fetch_head(root)?;
    let release = head.current().clone();
    *target_slot = Some(release.version.clone());
    let target = Version::parse(&release.version)?;
    let active = root.state.active.clone();
    let active_v = active.as_deref().and_then(|v| Version::parse(v).ok());
    let highest = root
        .state
        .highest_version
        .as_deref()
        .and_then(|v| Version::parse(v).ok());
    let mut decision = decide_update(
        &target,
        active_v.as_ref(),
        highest.as_ref(),
        root.state.pin.as_ref(),
        args.force,
    )?;
    if decision == UpdateDecision::UpToDate && !active_intact(root, &release.version) {
        out.info(&format!(
            "{} is active but damaged on disk: building a new copy beside it",
            release.version
        ));
        decision = UpdateDecision::Install;
    }
    // Seen as current and accepted: later heads may never go below it.
    root.state.raise_highest(&target);
    root.save_state()?;
    let unchanged = |installed| Outcome {
        from: active.clone(),
        to: active.clone().unwrap_or_else(|| release.version.clone()),
        bytes_reused: 0,
        installed,
    };
    match decision {
        UpdateDecision::UpToDate => {
            out.info(&format!("already up to date ({})", release.version));
            // A run killed after its switch left staging or a superseded folder:
            // nothing new to install, so this run finishes that one's cleanup.
            deliver::cleanup_and_prune(root)?;
            return Ok(unchanged(false));
        }
        UpdateDecision::Pinned(pin) => {
            out.info(&format!(
                "pinned to {} (rolled back from {}); newest is {}; use --force",
                pin.version, pin.rolled_back_from, release.version
            ));
            deliver::cleanup_and_prune(root)?;
            return Ok(unchanged(false));
        }
        UpdateDecision::Install => {}
    }
    // Staged rollout (FORMAT.md §5.1): a repair of the active release is not an update.
    let percent = head.rollout_of(&release.version);
    if percent < 100 && active.as_deref() != Some(release.version.as_str()) {
        let id = agent_id::load_or_create(&root.layout.agent_id())?;
        let bucket = rollout_bucket(&id, head.channel(), &release.version);
        if bucket >= percent {
            let what = if percent == 0 {
                "paused".to_string()
            } else {
                format!("offered to {percent}% of agents, this agent's bucket is {bucket}")
            };
            out.info(&format!(
                "not selected for {}: its rollout is {what}; staying on {}",
                release.version,
                active.as_deref().unwrap_or("nothing installed")
            ));
            return Ok(unchanged(false));
        }
    }

    let fetched = remote.fetch_current_manifest(root, &head, &trusted, active.as_deref(), out)?;
    let (bytes, manifest) = (fetched.bytes, fetched.manifest);
    let stats = deliver::install_release(
        root,
        remote,
        &bytes,
        &manifest,
        deliver::Origin {
            from: active.as_deref(),
            carry: true,
        },
        out,
        fetched.hint,
    )?;
    deliver::activate(root, &manifest, bytes.len() as u64, &stats.folder)?;
    root.state.pin = None;
    root.save_state()?;
    deliver::cleanup_and_prune(root)?;
    Ok(Outcome {
        from: active,
        to: release.version,
        bytes_reused: stats.bytes_reused,
        installed: true,
    })
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

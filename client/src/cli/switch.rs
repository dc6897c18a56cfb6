//! Switching `current` with the operator's hooks around it: `pre_switch` may cancel
//! the switch; after it, `post_switch` and `health_check` decide whether the new
//! release stays. When they fail the root switches back to the previous release, runs
//! `post_switch` for it, and marks the failed release bad, so no later check installs
//! it again (a newer release, or `ferry update --force`, does).
//!
//! The trial (`State::trial`) is saved with the switch: a run killed while the hooks
//! run leaves the new release active but on trial, and the next run finishes the
//! trial ([`resume_trial`]) before anything else, so a release is never trusted
//! because its health check was interrupted.

use anyhow::{Context, Result};
use ferry_format::manifest::Manifest;
use ferry_format::report::AgentState;
use ferry_format::verified::Verified;

use super::deliver;
use super::report::{self, Out};
use super::root::Root;
use super::update::Mode;
use crate::agent::hooks::{self, HookEnv};
use crate::apply::check::{Depth, check_tree};
use crate::install::state::Trial;

/// How a switch ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Switched {
    /// The new release is active (and healthy, if a health check is configured).
    Stayed,
    /// The hooks failed: the previous release is active again, the new one marked bad.
    SwitchedBack(String),
}

/// Switches to the release built in `folder`, running the hooks. `Err` means the
/// switch did not happen (a failing `pre_switch`) or failed; the previous release is
/// active either way.
pub fn switch_with_hooks(
    root: &mut Root,
    manifest: &Verified<Manifest>,
    manifest_size: u64,
    folder: &str,
    mode: &Mode<'_>,
    out: Out,
) -> Result<Switched> {
    let version = manifest.version.clone();
    let from = root.state.active.clone().filter(|a| *a != version);
    if let Some(cmd) = root.config.pre_switch.clone() {
        mode.progress(AgentState::Switching, &version);
        let env = hook_env(root, from.clone(), &version);
        hooks::run("pre_switch", &cmd, &env, root.config.health_timeout()).with_context(|| {
            format!(
                "switch to {version} cancelled; {} stays active",
                from.as_deref().unwrap_or("nothing")
            )
        })?;
    }
    if has_trial_hooks(root) {
        root.state.trial = Some(Trial {
            version: version.clone(),
            previous: from.clone(),
        });
    }
    deliver::activate(root, manifest, manifest_size, folder)?;
    root.save_state()?;
    finish_trial(root, mode, out)
}

/// `pre_switch` for a switch the operator asked for (`ferry rollback`): failing
/// cancels it.
pub fn run_pre_switch(root: &Root, from: Option<&str>, to: &str) -> Result<()> {
    let Some(cmd) = root.config.pre_switch.as_deref() else {
        return Ok(());
    };
    let env = hook_env(root, from.map(str::to_string), to);
    hooks::run("pre_switch", cmd, &env, root.config.health_timeout()).with_context(|| {
        format!(
            "switch to {to} cancelled; {} stays active",
            from.unwrap_or("nothing")
        )
    })
}

/// `post_switch` after a switch the operator asked for: the switch is done, so a
/// failure is reported, not undone (no health check: the operator chose the release).
pub fn run_post_switch(root: &Root, from: Option<&str>, to: &str, out: Out) {
    let Some(cmd) = root.config.post_switch.as_deref() else {
        return;
    };
    let env = hook_env(root, from.map(str::to_string), to);
    if let Err(e) = hooks::run("post_switch", cmd, &env, root.config.health_timeout()) {
        out.info(&format!("warning: {e}"));
    }
}

/// Finishes a trial a killed run left (see the module comment); `None` when there is none.
pub fn resume_trial(root: &mut Root, mode: &Mode<'_>, out: Out) -> Result<Option<Switched>> {
    match &root.state.trial {
        Some(t) if root.state.active.as_deref() == Some(t.version.as_str()) => {
            out.info(&format!(
                "{} was switched to but its hooks did not finish: running them again",
                t.version
            ));
            finish_trial(root, mode, out).map(Some)
        }
        Some(_) => {
            // The switch itself never happened (or was undone): nothing is on trial.
            root.state.trial = None;
            root.save_state()?;
            Ok(None)
        }
        None => Ok(None),
    }
}

fn has_trial_hooks(root: &Root) -> bool {
    root.config.post_switch.is_some() || root.config.health_check.is_some()
}

fn hook_env(root: &Root, from: Option<String>, to: &str) -> HookEnv {
    HookEnv {
        root: root.layout.root().to_path_buf(),
        from,
        to: to.to_string(),
    }
}

/// Runs `post_switch` and the health check for the release on trial; switches back
/// when either fails.
fn finish_trial(root: &mut Root, mode: &Mode<'_>, out: Out) -> Result<Switched> {
    let Some(trial) = root.state.trial.clone() else {
        return Ok(Switched::Stayed);
    };
    mode.progress(AgentState::HealthChecking, &trial.version);
    let env = hook_env(root, trial.previous.clone(), &trial.version);
    let Some(reason) = post_switch_then_health(root, &env).err() else {
        root.state.trial = None;
        root.save_state()?;
        return Ok(Switched::Stayed);
    };
    // The command's error (or the agent's check line) says it again with the outcome.
    tracing::info!(to = trial.version.as_str(), "{reason}");
    switch_back(root, &trial, &reason, out)?;
    Ok(Switched::SwitchedBack(reason))
}

fn post_switch_then_health(root: &Root, env: &HookEnv) -> Result<(), String> {
    let timeout = root.config.health_timeout();
    if let Some(cmd) = &root.config.post_switch {
        hooks::run("post_switch", cmd, env, timeout).map_err(|e| e.to_string())?;
        crash_point!("client::hooks::post_switch_ran");
    }
    let Some(cmd) = &root.config.health_check else {
        return Ok(());
    };
    let tries = root.config.health_retries();
    let mut last = String::new();
    for n in 1..=tries {
        std::thread::sleep(root.config.health_delay());
        match hooks::run("health_check", cmd, env, timeout) {
            Ok(()) => {
                crash_point!("client::hooks::health_passed");
                return Ok(());
            }
            Err(e) => {
                tracing::warn!("health check {n} of {tries} failed: {e}");
                last = e.to_string();
            }
        }
    }
    Err(format!("health check failed {tries} time(s): {last}"))
}

/// Marks the release on trial bad and switches back to the one before it.
fn switch_back(root: &mut Root, trial: &Trial, reason: &str, out: Out) -> Result<()> {
    root.state
        .mark_bad(&trial.version, reason.to_string(), report::unix_now());
    root.state.trial = None;
    let previous = trial
        .previous
        .as_deref()
        .and_then(|p| root.state.release(p))
        .cloned();
    let Some(record) = previous else {
        root.save_state()?;
        out.info(&format!(
            "{} failed ({reason}) and there is no earlier release to switch back to: it stays active, marked bad",
            trial.version
        ));
        return Ok(());
    };
    let manifest = root
        .load_manifest(&record)
        .with_context(|| format!("switching back to {}", record.version))?;
    // The trial may have edited files it shares with the previous release: switching
    // back to a damaged tree would trade one broken release for another. Staying put,
    // the next update passes over the bad release and builds the previous one anew.
    let check = check_tree(&manifest, &root.release_dir(&record), Depth::Shared);
    if !check.is_intact() {
        root.save_state()?;
        out.info(&format!(
            "{} failed ({reason}) but {} is damaged on disk ({} problem(s), first: {}): it stays active, marked bad; the next update rebuilds {}",
            trial.version,
            record.version,
            check.damage.len(),
            check.damage[0],
            record.version
        ));
        return Ok(());
    }
    deliver::activate(root, &manifest, record.manifest_size, record.folder())?;
    root.save_state()?;
    out.info(&format!(
        "{} failed ({reason}): switched back to {}, {} marked bad on this root",
        trial.version, record.version, trial.version
    ));
    if let Some(cmd) = root.config.post_switch.clone() {
        let env = hook_env(root, Some(trial.version.clone()), &record.version);
        if let Err(e) = hooks::run("post_switch", &cmd, &env, root.config.health_timeout()) {
            tracing::warn!("after switching back to {}: {e}", record.version);
        }
    }
    Ok(())
}

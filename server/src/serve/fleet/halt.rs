//! `serve --halt-when 'failed>5%,min=20' --timestamp-key FILE`: a rollout that halts
//! itself.
//!
//! After each stored report, for its channel's newest release R: among the agents
//! whose reports concern R (`target` or `active` is R) — the agents that tried it —
//! count those whose newest such report says failed or rolled back. When at least
//! `min` tried it and the failed share is above the threshold, the release's rollout
//! is paused with the online key, exactly as `ferry-server rollout --pause
//! --timestamp-key` does ([`crate::rollout::rollout`]), and the halt is recorded in the
//! fleet database (time, release, counts, reason) and logged.
//!
//! Once: the whole evaluation — reading the head, the last halt and the counts,
//! re-signing the head, recording the halt — runs under the channel's halt lock
//! ([`super::store::FleetStore::halt_locked`]: SQLite's write lock, or a PostgreSQL advisory lock
//! shared by every `serve` on the database), in the transaction that records the halt.
//! A second server whose reports trip the rule at the same moment waits for the lock,
//! then finds the halt recorded for the head's content and neither re-signs nor records
//! again. The head itself is re-signed under the repository's channel lock
//! ([`crate::repo::Repo::lock_channel`]), as every head write is.
//!
//! A halt applies to the publisher content sequence of the head it paused. While the
//! head still carries that content the halt is in force and is not repeated. A
//! publisher lifts it with `rollout --resume --key`, which signs new content (a higher
//! sequence); from then on only reports stored after the halt count towards another
//! one, so the failures that caused it cannot halt the resumed rollout again at once.

use serde_json::{Value, json};

use super::store::{Halt, HaltLedger, Store};
use super::{Fleet, FleetError, HaltRule, chain, now};
use crate::key_admin::{RolloutChange, is_paused};
use crate::rollout::{Signer, rollout};
use crate::store::Mirror;

/// Applies `--halt-when` to `channel` after a report was stored; true when it halted
/// a rollout now. Problems are logged, never the agent's (its report is stored either
/// way).
pub fn after_report(fleet: &Fleet, s: &mut Store, channel: &str) -> bool {
    let Some(halt) = &fleet.halt else {
        return false;
    };
    // The report's channel came from an agent: only a valid channel name is looked up.
    if ferry_format::version::check_channel(channel).is_err() {
        return false;
    }
    let (rule, key) = &**halt;
    match s.halt_locked(channel, &mut |l| evaluate(fleet, *rule, key, l, channel)) {
        Ok(halted) => halted,
        Err(e) => {
            tracing::warn!(channel, "--halt-when could not be applied: {}", chain(&e));
            false
        }
    }
}

/// Decides and applies a halt; runs under the channel's halt lock.
fn evaluate(
    fleet: &Fleet,
    rule: HaltRule,
    key: &ferry_format::keys::SecretKey,
    s: &mut dyn HaltLedger,
    channel: &str,
) -> Result<bool, FleetError> {
    let mirror = Mirror::Heads(Some(channel));
    let Some(head) = fleet.head(channel)? else {
        return Ok(false);
    };
    let release = head.current().version.clone();
    let last = s.last_halt(channel, &release)?;
    if let Some(l) = &last
        && l.content_sequence >= head.content.sequence
    {
        return Ok(false); // halted already, and not lifted since
    }
    let after = last.map_or(0, |l| l.last_report);
    let (failed, tried, newest) = s.outcomes(channel, &release, after)?;
    if !rule.trips(failed, tried) {
        return Ok(false);
    }
    let reason = format!(
        "{failed} of {tried} agents that tried {release} failed or rolled back (--halt-when {rule})"
    );
    let content_sequence = if is_paused(&head) {
        head.content.sequence
    } else {
        let done = fleet.repo_store.write(mirror, |repo| {
            rollout(repo, channel, Signer::Online(key), RolloutChange::Pause)
        })?;
        if done.release != release {
            tracing::warn!(
                channel,
                "a release was published while {release} was being halted: {} was paused instead",
                done.release
            );
        }
        done.publisher_sequence
    };
    let h = Halt {
        channel: channel.to_string(),
        release: release.clone(),
        content_sequence,
        halted_at: now(),
        last_report: newest,
        failed,
        tried,
        reason: reason.clone(),
    };
    s.record_halt(&h)?;
    tracing::warn!(channel, release, failed, tried, "rollout halted: {reason}");
    Ok(true)
}

/// The `rollout` object of a channel in `GET /v1/fleet`: from the repository's current
/// head, `halted` from the fleet database's halt record (null without a head).
pub fn rollout_view(
    s: &mut Store,
    channel: &str,
    head: Option<&ferry_format::head::ChannelHead>,
) -> Result<Value, FleetError> {
    let Some(head) = head else {
        return Ok(Value::Null);
    };
    let release = head.current().version.clone();
    let halt = s
        .last_halt(channel, &release)?
        .filter(|h| h.content_sequence >= head.content.sequence);
    Ok(json!({
        "release": release,
        "percent": head.rollout_of(&release),
        "paused": is_paused(head),
        "halted": halt.is_some(),
        "halt_reason": halt.as_ref().map(|h| h.reason.clone()),
        "halted_at": halt.as_ref().map(|h| h.halted_at),
    }))
}

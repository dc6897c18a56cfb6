//! `ferry-server rollout`: changes the share of agents offered a channel's newest
//! release (FORMAT.md §5, §5.1) by re-signing its head, with the rules of
//! `refresh-head` ([`crate::key_admin`]): publishing keys sign a new percentage or a
//! resume into new publisher content; the online key only lowers or pauses, in the
//! freshness layer. A pause is always such an override, whoever signs it, so the
//! content keeps the percentage `--resume` restores.
//!
//! `--labels` (publishing keys only) sets or replaces the labels an agent must have to
//! be offered the newest release (FORMAT.md §5.4), in new publisher content.

use serde::Serialize;

use ferry_format::head::{ChannelHead, RolloutLabels};
use ferry_format::keys::SecretKey;
use ferry_format::requirements::Requirements;

use crate::error::{Error, Result};
use crate::key_admin::{
    RefreshOptions, RolloutChange, is_paused, resign_online, resign_publisher_with,
};
use crate::repo::Repo;

/// Who signs the new head.
pub enum Signer<'a> {
    /// Publishing keys (enough for the key list's threshold).
    Publishing(&'a [SecretKey]),
    /// The online key of the key list.
    Online(&'a SecretKey),
}

/// What `rollout` did; serialises to the `--json` output.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct RolloutReport {
    pub channel: String,
    /// The channel's newest release, whose rollout changed.
    pub release: String,
    /// The percentage in force now.
    pub percent: u8,
    pub paused: bool,
    /// The percentage the publisher's content signs (what `--resume` restores).
    pub signed_percent: u8,
    pub sequence: u64,
    pub publisher_sequence: u64,
    /// The labels an agent must have to be offered the release (`key=value`); empty:
    /// every agent.
    pub labels: Vec<String>,
}

impl RolloutReport {
    fn of(channel: &str, head: &ChannelHead) -> Self {
        let release = head.current().version.clone();
        RolloutReport {
            channel: channel.to_string(),
            percent: head.rollout_of(&release),
            paused: is_paused(head),
            signed_percent: head.content.rollout_of(&release),
            release,
            sequence: head.sequence,
            publisher_sequence: head.content.sequence,
            labels: head
                .rollout_labels_of(&head.current().version)
                .iter()
                .map(ToString::to_string)
                .collect(),
        }
    }

    /// The one line printed without `--json`.
    pub fn line(&self) -> String {
        let state = if self.paused {
            format!("paused (0%; --resume restores {}%)", self.signed_percent)
        } else {
            format!("at {}%", self.percent)
        };
        let among = if self.labels.is_empty() {
            String::new()
        } else {
            format!(" of agents labelled {}", self.labels.join(" "))
        };
        format!(
            "rollout {}: {} {state}{among} (head sequence {}, publisher sequence {})\n",
            self.channel, self.release, self.sequence, self.publisher_sequence
        )
    }
}

/// Applies `change` to the rollout of `channel`'s newest release in the local
/// repository and writes the re-signed head.
pub fn rollout(
    repo: &Repo,
    channel: &str,
    signer: Signer<'_>,
    change: RolloutChange,
) -> Result<RolloutReport> {
    retarget(repo, channel, signer, Some(change), None)
}

/// [`rollout`] that may also replace the labels the newest release is offered to
/// (`labels`: `Some(empty)` offers it to every agent again; publishing keys only).
pub fn retarget(
    repo: &Repo,
    channel: &str,
    signer: Signer<'_>,
    change: Option<RolloutChange>,
    labels: Option<Requirements>,
) -> Result<RolloutReport> {
    let opts = RefreshOptions {
        rollout: change,
        ..RefreshOptions::default()
    };
    let head = match signer {
        Signer::Publishing(keys) => {
            resign_publisher_with(repo, channel, keys, opts, |old, _, rules| {
                let Some(labels) = labels else {
                    return Ok(());
                };
                let version = old.current().version.clone();
                rules.rollout_labels.retain(|r| r.version != version);
                if !labels.is_empty() {
                    // The current release is the newest: the list stays ascending.
                    rules.rollout_labels.push(RolloutLabels { version, labels });
                }
                Ok(())
            })?
        }
        Signer::Online(_) if labels.is_some() => {
            return Err(Error::Unsupported {
                path: repo.head_file(channel),
                reason: "--labels needs publishing keys (--key): the online role can only lower or pause a rollout, never choose who is offered a release".into(),
            });
        }
        Signer::Online(key) => resign_online(repo, channel, key, opts)?,
    };
    Ok(RolloutReport::of(channel, &head))
}

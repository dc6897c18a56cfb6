//! `ferry-server rollout`: changes the share of agents offered a channel's newest
//! release (FORMAT.md §5, §5.1) by re-signing its head, with the rules of
//! `refresh-head` ([`crate::key_admin`]): publishing keys sign a new percentage or a
//! resume into new publisher content; the online key only lowers or pauses, in the
//! freshness layer. A pause is always such an override, whoever signs it, so the
//! content keeps the percentage `--resume` restores.

use serde::Serialize;

use ferry_format::head::ChannelHead;
use ferry_format::keys::SecretKey;

use crate::error::Result;
use crate::key_admin::{RefreshOptions, RolloutChange, is_paused, resign_online, resign_publisher};
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
        }
    }

    /// The one line printed without `--json`.
    pub fn line(&self) -> String {
        let state = if self.paused {
            format!("paused (0%; --resume restores {}%)", self.signed_percent)
        } else {
            format!("at {}%", self.percent)
        };
        format!(
            "rollout {}: {} {state} (head sequence {}, publisher sequence {})\n",
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
    let opts = RefreshOptions {
        rollout: Some(change),
        ..RefreshOptions::default()
    };
    let head = match signer {
        Signer::Publishing(keys) => resign_publisher(repo, channel, keys, opts)?,
        Signer::Online(key) => resign_online(repo, channel, key, opts)?,
    };
    Ok(RolloutReport::of(channel, &head))
}

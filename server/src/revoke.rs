//! `ferry-server revoke`: recalls a release of a channel (FORMAT.md §5.3). The version
//! joins the revoked list of the publisher content, re-signed with the next publisher
//! sequence through `refresh-head`'s code ([`crate::key_admin::resign_publisher_with`]),
//! so only publishing keys can do it. Agents never install a revoked release, and
//! agents running it go to the newest release they may run that is not revoked, even
//! an older one.

use serde::Serialize;

use ferry_format::head::ChannelHead;
use ferry_format::keys::SecretKey;
use ferry_format::version::Version;

use crate::error::{Error, Result};
use crate::key_admin::{RefreshOptions, resign_publisher_with};
use crate::repo::Repo;

/// What `revoke` did; serialises to the `--json` output.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct RevokeReport {
    pub channel: String,
    /// The release revoked now.
    pub version: String,
    /// Every revoked release of the channel, ascending.
    pub revoked: Vec<String>,
    /// The newest listed release that is not revoked: where agents on a revoked
    /// release go (if they may run it).
    pub newest_not_revoked: String,
    pub sequence: u64,
    pub publisher_sequence: u64,
}

impl RevokeReport {
    fn of(channel: &str, version: &str, head: &ChannelHead) -> Self {
        let newest = head
            .releases()
            .iter()
            .rev()
            .find(|r| !head.is_revoked(&r.version))
            .map(|r| r.version.clone())
            .unwrap_or_default();
        RevokeReport {
            channel: channel.to_string(),
            version: version.to_string(),
            revoked: head.revoked().to_vec(),
            newest_not_revoked: newest,
            sequence: head.sequence,
            publisher_sequence: head.content.sequence,
        }
    }

    /// The line printed without `--json`.
    pub fn line(&self) -> String {
        format!(
            "revoked {} of channel {}: agents on it go to {} (revoked: {}; head sequence {}, publisher sequence {})\n",
            self.version,
            self.channel,
            self.newest_not_revoked,
            self.revoked.join(", "),
            self.sequence,
            self.publisher_sequence
        )
    }
}

/// Revokes `version` of `channel` in the local repository, signing with `keys`
/// (publishing keys).
pub fn revoke(
    repo: &Repo,
    channel: &str,
    keys: &[SecretKey],
    version: &str,
) -> Result<RevokeReport> {
    let wanted = Version::parse(version)?;
    let refuse = |reason: String| Error::Unsupported {
        path: repo.head_file(channel),
        reason,
    };
    let head = resign_publisher_with(
        repo,
        channel,
        keys,
        RefreshOptions::default(),
        |old, _, rules| {
            let listed: Vec<&str> = old.releases().iter().map(|r| r.version.as_str()).collect();
            let Some(name) = listed
                .iter()
                .find(|v| Version::parse(v).is_ok_and(|v| v == wanted))
            else {
                return Err(refuse(format!(
                    "channel {channel:?} lists no release {version} (listed: {})",
                    listed.join(", ")
                )));
            };
            if old.is_revoked(name) {
                return Err(refuse(format!(
                    "{name} of channel {channel:?} is already revoked"
                )));
            }
            if old
                .releases()
                .iter()
                .all(|r| r.version == *name || old.is_revoked(&r.version))
            {
                return Err(refuse(format!(
                    "{name} is the only release of channel {channel:?} not revoked: agents would have nothing to go to; publish a fixed release first"
                )));
            }
            rules.revoked.push(name.to_string());
            rules.revoked.sort_by_key(|v| Version::parse(v).ok());
            Ok(())
        },
    )?;
    Ok(RevokeReport::of(channel, version, &head))
}

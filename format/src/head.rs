//! The channel head (FORMAT.md §5): the one mutable object of a repository.
//!
//! Small, signed, sequenced and expiring. It names the channel's retained releases,
//! oldest first; the last one is the current release.

use serde::{Deserialize, Serialize};

use crate::codec;
use crate::delta::ManifestDiffRef;
use crate::envelope::{Envelope, FORMAT_VERSION, ObjectKind};
use crate::error::{FormatError, Result};
use crate::id::ObjectRef;
use crate::keylist::KeyListRef;
use crate::keys::SecretKey;
use crate::version::{Version, check_channel};

/// Most releases a head may list.
pub const MAX_RELEASES: usize = 1024;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelHead {
    pub channel: String,
    /// Strictly increases with every head the publisher signs for this channel.
    pub sequence: u64,
    /// Unix seconds.
    pub issued_at: u64,
    /// Unix seconds; clients refuse the head from this instant on.
    pub expires_at: u64,
    /// Lowest client format version able to install this channel's releases.
    pub min_client_format: u16,
    /// Retained releases, strictly ascending by version; the last is current.
    pub releases: Vec<ReleaseRef>,
    /// The key list whose publishing keys sign this head and its manifests; `None` in
    /// the single-key setup (implicit key list version 0).
    pub key_list: Option<KeyListRef>,
    /// Diffs from earlier manifests to the current one (FORMAT.md §3.7), so an agent
    /// on a recent release fetches a few KiB instead of the whole manifest.
    pub manifest_diffs: Vec<ManifestDiffRef>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseRef {
    pub version: String,
    pub manifest: ObjectRef,
}

fn malformed(reason: String) -> FormatError {
    FormatError::Malformed {
        kind: "channel head",
        reason,
    }
}

impl ChannelHead {
    /// The current release.
    pub fn current(&self) -> &ReleaseRef {
        // validate() guarantees at least one release; heads are only handed out validated.
        self.releases.last().expect("validated head has a release")
    }

    /// The retained release with this version, if listed.
    pub fn release(&self, version: &Version) -> Option<&ReleaseRef> {
        self.releases
            .iter()
            .find(|r| Version::parse(&r.version).is_ok_and(|v| v == *version))
    }

    pub fn validate(&self) -> Result<()> {
        check_channel(&self.channel)?;
        if self.releases.is_empty() {
            return Err(malformed("no release".into()));
        }
        if self.releases.len() > MAX_RELEASES {
            return Err(FormatError::TooLarge {
                kind: "channel head",
                what: "release count",
                found: self.releases.len() as u64,
                limit: MAX_RELEASES as u64,
            });
        }
        if self.expires_at <= self.issued_at {
            return Err(malformed("expires before it is issued".into()));
        }
        if self.key_list.is_some_and(|k| k.version == 0) {
            return Err(malformed(
                "key list version 0 is implicit and never named".into(),
            ));
        }
        if self.manifest_diffs.len() > crate::manifest::MAX_DIFFS {
            return Err(malformed(format!(
                "{} manifest diffs",
                self.manifest_diffs.len()
            )));
        }
        if self
            .manifest_diffs
            .windows(2)
            .any(|w| w[0].base_manifest >= w[1].base_manifest)
        {
            return Err(malformed(
                "manifest diffs not sorted by base or repeated".into(),
            ));
        }
        if self.min_client_format == 0 {
            return Err(malformed("min client format 0".into()));
        }
        let mut prev: Option<Version> = None;
        for r in &self.releases {
            let v = Version::parse(&r.version)?;
            if prev.as_ref().is_some_and(|p| *p >= v) {
                return Err(malformed(format!("releases not ascending at {v}")));
            }
            prev = Some(v);
        }
        Ok(())
    }

    pub fn sign(&self, keys: &[&SecretKey]) -> Result<Vec<u8>> {
        self.validate()?;
        Ok(Envelope::sign(ObjectKind::ChannelHead, codec::encode(self), keys).encode())
    }

    pub(crate) fn decode_body(body: &[u8]) -> Result<Self> {
        let h: ChannelHead = codec::decode("channel head", body)?;
        h.validate()?;
        if h.min_client_format > FORMAT_VERSION {
            return Err(FormatError::ClientTooOld {
                required: h.min_client_format,
                supported: FORMAT_VERSION,
            });
        }
        Ok(h)
    }
}

/// Decodes and validates a head without checking any signature: for display by the
/// publisher's tools (`ferry-server ls`), never for a trust decision.
pub fn inspect_head(bytes: &[u8]) -> Result<ChannelHead> {
    let env = Envelope::decode(ObjectKind::ChannelHead, bytes)?;
    let head: ChannelHead = codec::decode("channel head", &env.body)?;
    head.validate()?;
    Ok(head)
}

/// Reads which key list a head claims, before its signatures can be checked (they
/// depend on that key list). Only used to decide which key lists to fetch and verify;
/// nothing else of the head is acted on until [`crate::verified::verify_head`] passes.
pub fn claimed_key_list(bytes: &[u8]) -> Result<Option<KeyListRef>> {
    let env = Envelope::decode(ObjectKind::ChannelHead, bytes)?;
    let head: ChannelHead = codec::decode("channel head", &env.body)?;
    Ok(head.key_list)
}

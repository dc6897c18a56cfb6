//! `Verified<T>`: the only road from network bytes to the planner and the installer
//! (FORMAT.md §6, verification steps).
//!
//! A `Verified<T>` can only be made by the functions here, after the steps of
//! FORMAT.md §6 have passed, so code that takes one cannot act on unchecked input.

use std::ops::Deref;

use crate::envelope::{Envelope, ObjectKind, TrustedKeys};
use crate::error::{FormatError, Result};
use crate::head::{ChannelHead, ReleaseRef};
use crate::id::Digest;
use crate::keys::KeyId;
use crate::manifest::Manifest;

/// A value whose signature (and, for objects, hash) has been checked.
#[derive(Clone, Debug)]
pub struct Verified<T> {
    value: T,
    signed_by: Vec<KeyId>,
    object_hash: Digest,
}

impl<T> Verified<T> {
    /// The keys whose signatures verified.
    pub fn signed_by(&self) -> &[KeyId] {
        &self.signed_by
    }

    /// blake3 of the exact bytes that were verified.
    pub fn object_hash(&self) -> Digest {
        self.object_hash
    }
}

impl<T> Deref for Verified<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

/// What the client knows when it checks a head.
#[derive(Clone, Debug)]
pub struct HeadPolicy<'a> {
    pub channel: &'a str,
    /// Unix seconds now.
    pub now: u64,
    /// Seconds of clock skew tolerated on expiry; 0 unless configured.
    pub max_skew: u64,
    /// Highest sequence this client has accepted before, if any.
    pub last_sequence: Option<u64>,
    /// Version of the key list the caller verified signatures with (0: single key).
    pub key_list_version: u64,
}

/// FORMAT.md §6.1: verifies a channel head fetched from anywhere.
pub fn verify_head(
    bytes: &[u8],
    trusted: &TrustedKeys,
    policy: &HeadPolicy<'_>,
) -> Result<Verified<ChannelHead>> {
    // Steps 1-2: framing (size limit, magic, format) then signatures over the raw body.
    let env = Envelope::decode(ObjectKind::ChannelHead, bytes)?;
    let signed_by = env.verify(trusted)?;
    // Step 3: decode and structurally validate the body, including min client format.
    let head = ChannelHead::decode_body(&env.body)?;
    // Step 4: the head names the key list its signatures were checked against, so a
    // head cannot fall back to an older (perhaps compromised) key list.
    let named = head.key_list.map_or(0, |k| k.version);
    if named != policy.key_list_version {
        return Err(FormatError::BadSignature {
            kind: "channel head",
            reason: format!(
                "head names key list version {named}, this agent trusts version {}",
                policy.key_list_version
            ),
        });
    }
    // Step 5: the head is for the channel asked for.
    if head.channel != policy.channel {
        return Err(FormatError::WrongChannel {
            kind: "channel head",
            expected: policy.channel.to_string(),
            found: head.channel,
        });
    }
    // Step 6: not expired (freeze attack).
    if policy.now >= head.expires_at.saturating_add(policy.max_skew) {
        return Err(FormatError::Expired {
            channel: head.channel,
            expires_at: head.expires_at,
            now: policy.now,
        });
    }
    // Step 7: never older than a head already accepted (replay / rollback attack).
    if let Some(seen) = policy.last_sequence
        && head.sequence < seen
    {
        return Err(FormatError::ReplayedHead {
            found: head.sequence,
            seen,
        });
    }
    Ok(Verified {
        value: head,
        signed_by,
        object_hash: Digest::of(bytes),
    })
}

/// FORMAT.md §6.2: verifies a manifest against the release entry of a verified head
/// (or of the client's own record of one).
pub fn verify_manifest(
    bytes: &[u8],
    release: &ReleaseRef,
    channel: &str,
    trusted: &TrustedKeys,
) -> Result<Verified<Manifest>> {
    // Step 1: the bytes are the object the head names (mix-and-match).
    release.manifest.check("manifest", bytes)?;
    // Steps 2-3: framing and signatures.
    let env = Envelope::decode(ObjectKind::Manifest, bytes)?;
    let signed_by = env.verify(trusted)?;
    // Step 4: body and structure (paths, chunk table, sizes).
    let manifest = Manifest::decode_body(&env.body)?;
    // Step 5: channel and version match what the head says.
    if manifest.channel != channel {
        return Err(FormatError::WrongChannel {
            kind: "manifest",
            expected: channel.to_string(),
            found: manifest.channel,
        });
    }
    if manifest.version != release.version {
        return Err(FormatError::WrongVersion {
            expected: release.version.clone(),
            found: manifest.version,
        });
    }
    Ok(Verified {
        value: manifest,
        signed_by,
        object_hash: release.manifest.hash,
    })
}

/// Decodes a manifest the publisher itself wrote, checking its signature with the
/// publisher's key: used by the build side to chain generations.
pub fn verify_own_manifest(bytes: &[u8], trusted: &TrustedKeys) -> Result<Verified<Manifest>> {
    let env = Envelope::decode(ObjectKind::Manifest, bytes)?;
    let signed_by = env.verify(trusted)?;
    let manifest = Manifest::decode_body(&env.body)?;
    Ok(Verified {
        value: manifest,
        signed_by,
        object_hash: Digest::of(bytes),
    })
}

/// Decodes a head the publisher itself wrote, without the freshness checks a client
/// applies (the publisher reads its previous head to build the next one).
pub fn verify_own_head(bytes: &[u8], trusted: &TrustedKeys) -> Result<Verified<ChannelHead>> {
    let env = Envelope::decode(ObjectKind::ChannelHead, bytes)?;
    let signed_by = env.verify(trusted)?;
    let head = ChannelHead::decode_body(&env.body)?;
    Ok(Verified {
        value: head,
        signed_by,
        object_hash: Digest::of(bytes),
    })
}

/// FORMAT.md §6.2, for a manifest the client verified when it installed the release
/// and stored together with its hash in its own state: the hash pins the bytes that
/// passed [`verify_manifest`] then, so only the hash and structure are checked now.
/// This keeps retained releases usable after a key rotation revokes the key that
/// signed them. Never call it with a reference that came from the network.
pub fn verify_pinned_manifest(
    bytes: &[u8],
    pinned: &ReleaseRef,
    channel: &str,
) -> Result<Verified<Manifest>> {
    pinned.manifest.check("stored manifest", bytes)?;
    let env = Envelope::decode(ObjectKind::Manifest, bytes)?;
    let manifest = Manifest::decode_body(&env.body)?;
    if manifest.channel != channel || manifest.version != pinned.version {
        return Err(FormatError::WrongVersion {
            expected: format!("{channel} {}", pinned.version),
            found: format!("{} {}", manifest.channel, manifest.version),
        });
    }
    Ok(Verified {
        value: manifest,
        signed_by: Vec::new(),
        object_hash: pinned.manifest.hash,
    })
}

//! `Verified<T>`: the only road from network bytes to the planner and the installer
//! (FORMAT.md §6, verification steps).
//!
//! A `Verified<T>` can only be made by the functions here, after the steps of
//! FORMAT.md §6 have passed, so code that takes one cannot act on unchecked input.

use std::ops::Deref;

use serde::{Deserialize, Serialize};

use crate::envelope::{Envelope, ObjectKind, TrustedKeys};
use crate::error::{FormatError, Result};
use crate::head::{ChannelHead, ReleaseRef, Rollout};
use crate::id::Digest;
use crate::keylist::HeadKeys;
use crate::keys::KeyId;
use crate::manifest::Manifest;

/// Which role signed a head's freshness layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadRole {
    Publisher,
    Online,
}

/// Who vouched for a verified head: its freshness layer and its publisher content.
#[derive(Clone, Debug)]
pub struct HeadSigners {
    pub role: HeadRole,
    /// Keys whose signatures on the publisher content verified.
    pub content: Vec<KeyId>,
    /// blake3 of the content bytes.
    pub content_hash: Digest,
}

/// A value whose signature (and, for objects, hash) has been checked.
#[derive(Clone, Debug)]
pub struct Verified<T> {
    value: T,
    signed_by: Vec<KeyId>,
    object_hash: Digest,
    head: Option<HeadSigners>,
}

impl<T> Verified<T> {
    /// The keys whose signatures verified (for a head: on its freshness layer).
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

impl Verified<ChannelHead> {
    /// The role that signed the freshness layer and the keys that signed the content.
    pub fn head_signers(&self) -> &HeadSigners {
        // Only verify_head and verify_own_head make a Verified<ChannelHead>; both set it.
        self.head
            .as_ref()
            .expect("a verified head records its signers")
    }
}

/// The effective rollout an agent accepted with a head, remembered so that a later
/// head signed only by the online role for the same publisher content cannot raise
/// it again (resume a paused release).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutSeen {
    /// Publisher sequence of the content those percentages applied to.
    pub content_sequence: u64,
    /// Releases below 100%, as [`ChannelHead::effective_rollout`] gives them.
    pub rollout: Vec<Rollout>,
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
    /// Highest publisher sequence this client has accepted before, if any.
    pub last_content_sequence: Option<u64>,
    /// The effective rollout accepted with the last head, if remembered.
    pub rollout_seen: Option<&'a RolloutSeen>,
}

/// Steps 1-4 of FORMAT.md §6.1, shared by agents and publishers: framing, the
/// freshness layer's signatures (publishing keys, else online keys), the content's
/// signatures (publishing keys only), then both bodies.
/// How signatures are checked: with ed25519, or — for the exact bytes of a head
/// verified before with the same keys — by recalling which trusted keys signed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Signatures {
    Check,
    Remembered,
}

impl Signatures {
    fn signers(self, env: &Envelope, keys: &TrustedKeys) -> Result<Vec<KeyId>> {
        match self {
            Signatures::Check => env.verify(keys),
            Signatures::Remembered => env.remembered_signers(keys),
        }
    }
}

fn verify_layers(bytes: &[u8], keys: &HeadKeys, sigs: Signatures) -> Result<Verified<ChannelHead>> {
    let env = Envelope::decode(ObjectKind::ChannelHead, bytes)?;
    let (signed_by, role) = match sigs.signers(&env, &keys.publishers) {
        Ok(ids) => (ids, HeadRole::Publisher),
        Err(by_publishers) => match &keys.online {
            Some(online) => match sigs.signers(&env, online) {
                Ok(ids) => (ids, HeadRole::Online),
                Err(by_online) => {
                    return Err(FormatError::BadSignature {
                        kind: "channel head",
                        reason: format!(
                            "neither publishing keys ({by_publishers}) nor online keys ({by_online}) signed it"
                        ),
                    });
                }
            },
            None => return Err(by_publishers),
        },
    };
    let (content_env, partial) = ChannelHead::decode_layers(&env.body)?;
    // The content answers to publishing keys only: an online key cannot sign releases.
    let content =
        sigs.signers(&content_env, &keys.publishers)
            .map_err(|e| FormatError::BadSignature {
                kind: "channel content",
                reason: format!("the releases of a head must be signed by publishing keys: {e}"),
            })?;
    let head = partial.finish(&content_env)?;
    let content_hash = Digest::of(head.content_bytes());
    Ok(Verified {
        value: head,
        signed_by,
        object_hash: Digest::of(bytes),
        head: Some(HeadSigners {
            role,
            content,
            content_hash,
        }),
    })
}

/// FORMAT.md §6.1: verifies a channel head fetched from anywhere.
pub fn verify_head(
    bytes: &[u8],
    keys: &HeadKeys,
    policy: &HeadPolicy<'_>,
) -> Result<Verified<ChannelHead>> {
    verify_head_with(bytes, keys, policy, Signatures::Check)
}

/// [`verify_head`] for a head this agent already holds: when `bytes` hash to
/// `remembered` — the hash of a head that `verify_head` accepted with these same
/// `keys` — the signatures are not checked again (identical bytes carry identical,
/// already checked signatures); every other step is, expiry first among them. Other
/// bytes are verified in full. An idle agent's `304 Not Modified` thus costs no
/// signature work and still refuses a head that expired meanwhile.
pub fn verify_remembered_head(
    bytes: &[u8],
    remembered: &Digest,
    keys: &HeadKeys,
    policy: &HeadPolicy<'_>,
) -> Result<Verified<ChannelHead>> {
    let sigs = if Digest::of(bytes) == *remembered {
        Signatures::Remembered
    } else {
        Signatures::Check
    };
    verify_head_with(bytes, keys, policy, sigs)
}

fn verify_head_with(
    bytes: &[u8],
    keys: &HeadKeys,
    policy: &HeadPolicy<'_>,
    sigs: Signatures,
) -> Result<Verified<ChannelHead>> {
    // Steps 1-3: framing, signatures of both layers, bodies (rollout overrides never
    // above the publisher's, min client format).
    let verified = verify_layers(bytes, keys, sigs)?;
    let head = &verified.value;
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
    if head.channel() != policy.channel {
        return Err(FormatError::WrongChannel {
            kind: "channel head",
            expected: policy.channel.to_string(),
            found: head.channel().to_string(),
        });
    }
    // Step 6: neither layer expired (freeze attack). The content's expiry bounds how
    // long an online key can keep a publisher's state alive.
    if policy.now >= head.content.expires_at.saturating_add(policy.max_skew) {
        return Err(FormatError::ContentExpired {
            channel: head.channel().to_string(),
            expires_at: head.content.expires_at,
            now: policy.now,
        });
    }
    if policy.now >= head.expires_at.saturating_add(policy.max_skew) {
        return Err(FormatError::Expired {
            channel: head.channel().to_string(),
            expires_at: head.expires_at,
            now: policy.now,
        });
    }
    // Step 7: never older than a head already accepted (replay / rollback attack),
    // nor older publisher content (an online key reviving an old state).
    if let Some(seen) = policy.last_sequence
        && head.sequence < seen
    {
        return Err(FormatError::ReplayedHead {
            found: head.sequence,
            seen,
        });
    }
    if let Some(seen) = policy.last_content_sequence
        && head.content.sequence < seen
    {
        return Err(FormatError::RevivedContent {
            found: head.content.sequence,
            seen,
        });
    }
    // Step 8: the online role may lower a rollout, never raise it back for the same
    // publisher content (a pause stays a pause until a publisher signs again).
    if verified.head_signers().role == HeadRole::Online
        && let Some(seen) = policy.rollout_seen
        && seen.content_sequence == head.content.sequence
    {
        for r in &head.content.releases {
            let before = seen
                .rollout
                .iter()
                .find(|s| s.version == r.version)
                .map_or(100, |s| s.percent);
            let now = head.rollout_of(&r.version);
            if now > before {
                return Err(FormatError::RolloutResumed {
                    version: r.version.clone(),
                    found: now,
                    seen: before,
                });
            }
        }
    }
    Ok(verified)
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
        head: None,
    })
}

/// The empty release (FORMAT.md §3.9): no chunk, no entry, what every agent holds, so
/// nothing needs checking. Its object hash is `NOTHING`, which no manifest object has:
/// the base of a diff from nothing, and of nothing else.
pub fn empty_release(channel: &str) -> Verified<Manifest> {
    Verified {
        value: crate::delta::nothing::empty_release(channel),
        signed_by: vec![],
        object_hash: crate::delta::nothing::NOTHING,
        head: None,
    }
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
        head: None,
    })
}

/// Decodes a head the publisher itself wrote (or its server re-signed), checking both
/// layers' signatures but none of the freshness rules a client applies (the
/// publisher reads its previous head to build the next one).
pub fn verify_own_head<K: AsHeadKeys + ?Sized>(
    bytes: &[u8],
    keys: &K,
) -> Result<Verified<ChannelHead>> {
    verify_layers(bytes, &keys.as_head_keys(), Signatures::Check)
}

/// What [`verify_own_head`] checks a head with: publishing keys alone, or both roles.
pub trait AsHeadKeys {
    fn as_head_keys(&self) -> HeadKeys;
}

impl AsHeadKeys for TrustedKeys {
    fn as_head_keys(&self) -> HeadKeys {
        HeadKeys::from(self)
    }
}

impl AsHeadKeys for HeadKeys {
    fn as_head_keys(&self) -> HeadKeys {
        self.clone()
    }
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
        head: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::CLIENT_FORMAT;
    use crate::head::HeadContent;
    use crate::id::ObjectRef;
    use crate::keys::SecretKey;

    fn k(n: u8) -> SecretKey {
        SecretKey::from_seed([n; 32])
    }

    /// Publisher key 1, online key 2.
    fn keys() -> HeadKeys {
        HeadKeys {
            publishers: TrustedKeys::single(k(1).public()),
            online: Some(TrustedKeys::single(k(2).public())),
        }
    }

    fn content(sequence: u64, percent: u8) -> HeadContent {
        HeadContent {
            channel: "stable".into(),
            sequence,
            issued_at: 100,
            expires_at: 1000,
            min_client_format: CLIENT_FORMAT,
            releases: vec![ReleaseRef {
                version: "1.0".into(),
                manifest: ObjectRef::of(b"m"),
            }],
            manifest_diffs: vec![],
            rollout: if percent < 100 {
                vec![Rollout {
                    version: "1.0".into(),
                    percent,
                }]
            } else {
                vec![]
            },
        }
    }

    fn head(c: &HeadContent, content_key: u8, seq: u64, over: Option<u8>, key: u8) -> Vec<u8> {
        let rollout = over
            .map(|p| {
                vec![Rollout {
                    version: "1.0".into(),
                    percent: p,
                }]
            })
            .unwrap_or_default();
        ChannelHead::new(
            c.sign(&[&k(content_key)]).unwrap(),
            seq,
            100,
            500,
            None,
            rollout,
        )
        .unwrap()
        .sign(&[&k(key)])
        .unwrap()
    }

    fn policy(now: u64) -> HeadPolicy<'static> {
        HeadPolicy {
            channel: "stable",
            now,
            max_skew: 0,
            last_sequence: None,
            key_list_version: 0,
            last_content_sequence: None,
            rollout_seen: None,
        }
    }

    #[test]
    fn a_remembered_head_skips_the_signature_check_and_nothing_else() {
        let good = head(&content(3, 100), 1, 9, None, 1);
        let remembered = Digest::of(&good);
        let full = verify_head(&good, &keys(), &policy(200)).unwrap();
        let again = verify_remembered_head(&good, &remembered, &keys(), &policy(200)).unwrap();
        assert_eq!(again.signed_by(), full.signed_by());
        assert_eq!(*again, *full);
        let (a, b) = (again.head_signers(), full.head_signers());
        assert!(a.role == b.role && a.content == b.content && a.content_hash == b.content_hash);
        // Expiry and every other rule still apply.
        assert!(matches!(
            verify_remembered_head(&good, &remembered, &keys(), &policy(600)),
            Err(FormatError::Expired { .. })
        ));
        let mut seen = policy(200);
        seen.last_sequence = Some(10);
        assert!(verify_remembered_head(&good, &remembered, &keys(), &seen).is_err());
        // No ed25519 work: a signature byte flipped in bytes remembered as they are
        // passes, which the full check refuses...
        let mut forged = good.clone();
        let last = forged.len() - 1;
        forged[last] ^= 1;
        assert!(verify_head(&forged, &keys(), &policy(200)).is_err());
        assert!(
            verify_remembered_head(&forged, &Digest::of(&forged), &keys(), &policy(200)).is_ok()
        );
        // ...so only bytes hashing to the remembered head skip it: others are checked.
        assert!(verify_remembered_head(&forged, &remembered, &keys(), &policy(200)).is_err());
        // And a head by an untrusted key is refused even when "remembered".
        let other = head(&content(3, 100), 7, 9, None, 7);
        assert!(
            verify_remembered_head(&other, &Digest::of(&other), &keys(), &policy(200)).is_err()
        );
    }

    #[test]
    fn the_online_role_signs_freshness_only() {
        let ok = verify_head(
            &head(&content(3, 100), 1, 9, None, 2),
            &keys(),
            &policy(200),
        )
        .unwrap();
        assert_eq!(ok.head_signers().role, HeadRole::Online);
        assert_eq!(ok.head_signers().content, vec![k(1).public().id()]);
        let by_publisher = verify_head(
            &head(&content(3, 100), 1, 9, None, 1),
            &keys(),
            &policy(200),
        )
        .unwrap();
        assert_eq!(by_publisher.head_signers().role, HeadRole::Publisher);
        // Content signed by the online key: refused whoever signs the head.
        let e = verify_head(
            &head(&content(3, 100), 2, 9, None, 2),
            &keys(),
            &policy(200),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("must be signed by publishing keys"), "{e}");
        // Neither role: refused.
        assert!(
            verify_head(
                &head(&content(3, 100), 1, 9, None, 3),
                &keys(),
                &policy(200)
            )
            .is_err()
        );
    }

    #[test]
    fn expiry_revival_and_resume() {
        // Head fresh (500) but content expired (1000): refused.
        let bytes = head(&content(3, 100), 1, 9, None, 2);
        let e = verify_head(&bytes, &keys(), &policy(1000)).unwrap_err();
        assert!(matches!(e, FormatError::ContentExpired { .. }), "{e}");
        let e = verify_head(&bytes, &keys(), &policy(500)).unwrap_err();
        assert!(matches!(e, FormatError::Expired { .. }), "{e}");
        // Older content in a newer head: refused.
        let mut p = policy(200);
        p.last_content_sequence = Some(4);
        let e = verify_head(&bytes, &keys(), &p).unwrap_err();
        assert!(
            matches!(e, FormatError::RevivedContent { found: 3, seen: 4 }),
            "{e}"
        );
        // Paused at 0 for content 3: the online role cannot bring it back to 40...
        let seen = RolloutSeen {
            content_sequence: 3,
            rollout: vec![Rollout {
                version: "1.0".into(),
                percent: 0,
            }],
        };
        let mut p = policy(200);
        p.rollout_seen = Some(&seen);
        let resumed = head(&content(3, 40), 1, 10, None, 2);
        let e = verify_head(&resumed, &keys(), &p).unwrap_err();
        assert!(
            matches!(
                e,
                FormatError::RolloutResumed {
                    found: 40,
                    seen: 0,
                    ..
                }
            ),
            "{e}"
        );
        // ...a publisher can, and newer content starts afresh.
        assert!(verify_head(&head(&content(3, 40), 1, 10, None, 1), &keys(), &p).is_ok());
        assert!(verify_head(&head(&content(4, 40), 1, 10, None, 2), &keys(), &p).is_ok());
        // Lowering further is fine.
        assert!(verify_head(&head(&content(3, 40), 1, 10, Some(0), 2), &keys(), &p).is_ok());
    }
}

//! The signed envelope every piece of metadata travels in (FORMAT.md §4).
//!
//! ```text
//! offset  size          field
//! 0       4             magic: b"FRYH" channel head, b"FRYC" channel content (the
//!                       publisher-signed part a head embeds), b"FRYM" manifest, b"FRYK" key list
//! 4       2             format version of the kind, u16 LE (ObjectKind::format_version)
//! 6       4             body length B, u32 LE
//! 10      B             body (canonical bincode, see codec.rs)
//! 10+B    2             signature count S, u16 LE (1..=MAX_SIGNATURES)
//! 12+B    S * 96        S entries of key id [32] | ed25519 signature [64],
//!                       sorted by key id, no key id twice
//! ```
//! Each signature covers `"ferry-signature-v1\0" | magic | format version | body`:
//! the magic is the domain tag, so a head signature can never verify as a manifest's.
//! Verification accepts the object when at least `threshold` distinct trusted keys
//! signed it; entries from unknown keys are ignored (they may be from a newer key list).

use crate::codec::Reader;
use crate::error::{FormatError, Result};
use crate::id::Digest;
use crate::keys::{KeyId, PublicKey, SecretKey};

/// The format version of manifests and diff objects, which this build writes and reads.
pub const FORMAT_VERSION: u16 = 1;
/// The client format generation this build implements (FORMAT.md §9): a head's
/// `min_client_format` above it means "upgrade ferry". 2 added the two-layer head
/// (publisher content plus freshness) and the online role of key lists.
pub const CLIENT_FORMAT: u16 = 2;
/// Most signatures an envelope may carry.
pub const MAX_SIGNATURES: usize = 32;
const SIGNATURE_CONTEXT: &[u8] = b"ferry-signature-v1\0";

/// The kinds of signed object, each with its own magic number (domain tag) and size limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectKind {
    ChannelHead,
    /// The publisher-signed part of a channel head (FORMAT.md §5).
    ChannelContent,
    Manifest,
    KeyList,
}

impl ObjectKind {
    pub fn magic(self) -> [u8; 4] {
        match self {
            ObjectKind::ChannelHead => *b"FRYH",
            ObjectKind::ChannelContent => *b"FRYC",
            ObjectKind::Manifest => *b"FRYM",
            ObjectKind::KeyList => *b"FRYK",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ObjectKind::ChannelHead => "channel head",
            ObjectKind::ChannelContent => "channel content",
            ObjectKind::Manifest => "manifest",
            ObjectKind::KeyList => "key list",
        }
    }

    /// The largest encoded object of this kind a reader accepts. A channel head's size
    /// is not known before it is fetched, so this bound is what stops an endless head.
    pub fn max_size(self) -> u64 {
        match self {
            ObjectKind::ChannelHead | ObjectKind::ChannelContent => 1 << 20,
            ObjectKind::Manifest => crate::codec::MAX_BODY as u64,
            ObjectKind::KeyList => 64 << 10,
        }
    }

    /// Refuses an encoded object of `size` bytes that readers would refuse. Writers
    /// call it before storing an object, so nothing is published that no agent can read.
    pub fn check_size(self, size: u64) -> Result<()> {
        if size > self.max_size() {
            return Err(FormatError::TooLarge {
                kind: self.name(),
                what: "size in bytes",
                found: size,
                limit: self.max_size(),
            });
        }
        Ok(())
    }

    /// The highest format version this build reads for this kind, and the one it
    /// writes, except channel content: written as format 2 unless a release carries
    /// requirements (format 3, FORMAT.md §5.2) or the content revokes or targets a
    /// release (format 4, §5.3, §5.4), so a channel without them stays readable by
    /// agents of format 2.
    pub fn format_version(self) -> u16 {
        match self {
            ObjectKind::ChannelHead | ObjectKind::KeyList => 2,
            ObjectKind::ChannelContent => 4,
            ObjectKind::Manifest => FORMAT_VERSION,
        }
    }

    /// The format version [`Envelope::sign`] writes: [`ObjectKind::format_version`],
    /// but 2 for channel content (the head's signing chooses 3 or 4 when needed).
    pub fn written_version(self) -> u16 {
        match self {
            ObjectKind::ChannelContent => 2,
            k => k.format_version(),
        }
    }

    /// The oldest format version still read: key lists are never rewritten, so
    /// version 1 lists (no online role) stay readable; a version 1 head (one layer,
    /// before the online role) is not, the publisher re-signs it. Channel content of
    /// format 2 (no requirements) is what most channels carry.
    pub fn oldest_version(self) -> u16 {
        match self {
            ObjectKind::KeyList => 1,
            ObjectKind::ChannelContent => 2,
            k => k.format_version(),
        }
    }
}

/// The encoded size of an envelope around a body of `body_len` bytes with
/// `signatures` signatures (the framing above), without building it.
pub fn encoded_size(body_len: u64, signatures: usize) -> u64 {
    12 + body_len + 96 * signatures as u64
}

/// One (key id, signature) entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignatureEntry {
    pub key_id: KeyId,
    pub signature: [u8; 64],
}

/// A decoded but not yet verified envelope.
#[derive(Clone, Debug)]
pub struct Envelope {
    pub kind: ObjectKind,
    pub format: u16,
    pub body: Vec<u8>,
    pub signatures: Vec<SignatureEntry>,
}

/// The set of keys a client trusts for a channel and how many must sign.
///
/// Today a key list of one with threshold 1; the envelope already carries a list so a
/// threshold of several keys needs no format change.
#[derive(Clone, Debug)]
pub struct TrustedKeys {
    keys: Vec<PublicKey>,
    threshold: usize,
}

impl TrustedKeys {
    pub fn new(keys: Vec<PublicKey>, threshold: usize) -> Result<Self> {
        if threshold == 0 || threshold > keys.len() {
            return Err(FormatError::BadKey {
                kind: "trusted",
                reason: format!("threshold {threshold} with {} keys", keys.len()),
            });
        }
        Ok(TrustedKeys { keys, threshold })
    }

    pub fn single(key: PublicKey) -> Self {
        TrustedKeys {
            keys: vec![key],
            threshold: 1,
        }
    }

    pub fn key_ids(&self) -> Vec<KeyId> {
        self.keys.iter().map(PublicKey::id).collect()
    }

    pub fn threshold(&self) -> usize {
        self.threshold
    }
}

fn signed_message(kind: ObjectKind, format: u16, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGNATURE_CONTEXT.len() + 6 + body.len());
    m.extend_from_slice(SIGNATURE_CONTEXT);
    m.extend_from_slice(&kind.magic());
    m.extend_from_slice(&format.to_le_bytes());
    m.extend_from_slice(body);
    m
}

impl Envelope {
    /// Signs `body` with every key in `keys`.
    pub fn sign(kind: ObjectKind, body: Vec<u8>, keys: &[&SecretKey]) -> Self {
        Self::sign_as(kind, kind.written_version(), body, keys)
    }

    /// Signs as format `format` (tests of older formats).
    pub(crate) fn sign_as(
        kind: ObjectKind,
        format: u16,
        body: Vec<u8>,
        keys: &[&SecretKey],
    ) -> Self {
        let message = signed_message(kind, format, &body);
        let mut signatures: Vec<SignatureEntry> = keys
            .iter()
            .map(|k| SignatureEntry {
                key_id: k.public().id(),
                signature: k.sign(&message),
            })
            .collect();
        signatures.sort_by_key(|s| s.key_id);
        signatures.dedup_by_key(|s| s.key_id);
        Envelope {
            kind,
            format,
            body,
            signatures,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(12 + self.body.len() + 96 * self.signatures.len());
        out.extend_from_slice(&self.kind.magic());
        out.extend_from_slice(&self.format.to_le_bytes());
        // Body lengths are bounded by MAX_BODY (64 MiB) when built, so they fit in u32.
        out.extend_from_slice(&(self.body.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.body);
        out.extend_from_slice(&(self.signatures.len() as u16).to_le_bytes());
        for s in &self.signatures {
            out.extend_from_slice(&s.key_id.0);
            out.extend_from_slice(&s.signature);
        }
        out
    }

    /// Parses the framing. Nothing is trusted yet: call [`Envelope::verify`].
    pub fn decode(kind: ObjectKind, bytes: &[u8]) -> Result<Self> {
        Self::decode_from(kind, bytes, kind.oldest_version())
    }

    /// Like [`Envelope::decode`], accepting formats from `oldest` on: for the
    /// publisher's migration of format 1 heads only.
    pub(crate) fn decode_from(kind: ObjectKind, bytes: &[u8], oldest: u16) -> Result<Self> {
        Self::decode_range(kind, bytes, oldest, kind.format_version())
    }

    /// Like [`Envelope::decode_from`], reading formats up to `newest` only: what a
    /// build of an earlier format does, for the tests of that rule.
    pub(crate) fn decode_range(
        kind: ObjectKind,
        bytes: &[u8],
        oldest: u16,
        newest: u16,
    ) -> Result<Self> {
        let name = kind.name();
        kind.check_size(bytes.len() as u64)?;
        let mut r = Reader::new(name, bytes);
        if r.take(4, "magic")? != kind.magic() {
            return Err(FormatError::BadMagic { kind: name });
        }
        let format = r.u16("format version")?;
        if format > newest {
            return Err(FormatError::UnsupportedFormat {
                kind: name,
                found: format,
                supported: newest,
            });
        }
        if format < oldest.max(1) {
            return Err(FormatError::OldFormat {
                kind: name,
                found: format,
                oldest,
            });
        }
        let body_len = r.u32("body length")? as usize;
        let body = r.take(body_len, "body")?.to_vec();
        let count = r.u16("signature count")? as usize;
        if count == 0 || count > MAX_SIGNATURES {
            return Err(FormatError::Malformed {
                kind: name,
                reason: format!("{count} signatures, expected 1 to {MAX_SIGNATURES}"),
            });
        }
        let mut signatures = Vec::with_capacity(count);
        for _ in 0..count {
            let key_id = Digest(r.array::<32>("signature key id")?);
            let signature = r.array::<64>("signature")?;
            signatures.push(SignatureEntry { key_id, signature });
        }
        r.finish()?;
        if signatures.windows(2).any(|w| w[0].key_id >= w[1].key_id) {
            return Err(FormatError::Malformed {
                kind: name,
                reason: "signatures not sorted by key id or a key id appears twice".into(),
            });
        }
        Ok(Envelope {
            kind,
            format,
            body,
            signatures,
        })
    }

    /// Checks that at least `threshold` distinct trusted keys signed the body.
    /// Returns the ids of the keys whose signatures verified.
    /// The trusted keys among this envelope's signers, if they meet the threshold,
    /// *without* checking a signature: only for bytes whose hash equals that of an
    /// envelope that [`Envelope::verify`] accepted with the same keys
    /// (`verified::verify_remembered_head`).
    pub(crate) fn remembered_signers(&self, trusted: &TrustedKeys) -> Result<Vec<KeyId>> {
        let ids: Vec<KeyId> = self
            .signatures
            .iter()
            .map(|e| e.key_id)
            .filter(|id| trusted.keys.iter().any(|k| k.id() == *id))
            .collect();
        if ids.len() >= trusted.threshold {
            return Ok(ids);
        }
        // Not what was verified before after all: let the real check say why.
        self.verify(trusted)
    }

    pub fn verify(&self, trusted: &TrustedKeys) -> Result<Vec<KeyId>> {
        let name = self.kind.name();
        let message = signed_message(self.kind, self.format, &self.body);
        let mut good = Vec::new();
        let mut bad = Vec::new();
        for entry in &self.signatures {
            // Key ids are unique in a decoded envelope, so each key counts at most once.
            let Some(key) = trusted.keys.iter().find(|k| k.id() == entry.key_id) else {
                continue;
            };
            if key.verify(&message, &entry.signature) {
                good.push(entry.key_id);
            } else {
                bad.push(entry.key_id);
            }
        }
        if good.len() >= trusted.threshold {
            return Ok(good);
        }
        let reason = if !bad.is_empty() {
            format!("invalid signature by trusted key {}", bad[0])
        } else if !good.is_empty() {
            // Some trusted keys signed, too few: say how many are required.
            format!(
                "signed by {} of the trusted keys, below the threshold of {} (signed by {}; trusted: {})",
                good.len(),
                trusted.threshold,
                short_ids(good.iter().copied()),
                short_ids(trusted.key_ids().into_iter())
            )
        } else {
            format!(
                "not signed by a trusted key (signed by {}; trusted: {})",
                short_ids(self.signatures.iter().map(|s| s.key_id)),
                short_ids(trusted.key_ids().into_iter())
            )
        };
        Err(FormatError::BadSignature { kind: name, reason })
    }
}

fn short_ids(ids: impl Iterator<Item = KeyId>) -> String {
    let v: Vec<String> = ids.map(|id| id.to_hex()[..16].to_string()).collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_and_domain_separation() {
        let k = SecretKey::from_seed([7; 32]);
        let trusted = TrustedKeys::single(k.public());
        let env = Envelope::sign(ObjectKind::Manifest, b"body".to_vec(), &[&k]);
        let bytes = env.encode();
        let back = Envelope::decode(ObjectKind::Manifest, &bytes).unwrap();
        assert_eq!(back.verify(&trusted).unwrap(), vec![k.public().id()]);

        // The same signature presented as a head must fail: magic differs, and even
        // with the magic rewritten the signed message differs.
        assert!(matches!(
            Envelope::decode(ObjectKind::ChannelHead, &bytes),
            Err(FormatError::BadMagic { .. })
        ));
        // A head's publisher content and the head itself share a format version:
        // rewriting the magic still leaves the signature over the other domain.
        let content = Envelope::sign(ObjectKind::ChannelContent, b"body".to_vec(), &[&k]).encode();
        let mut forged = content.clone();
        forged[..4].copy_from_slice(b"FRYH");
        let as_head = Envelope::decode(ObjectKind::ChannelHead, &forged).unwrap();
        assert!(as_head.verify(&trusted).is_err());
    }

    #[test]
    fn format_versions_per_kind() {
        let k = SecretKey::from_seed([1; 32]);
        let at = |kind: ObjectKind, format: u16| {
            let mut b = Envelope::sign(kind, vec![1], &[&k]).encode();
            b[4..6].copy_from_slice(&format.to_le_bytes());
            Envelope::decode(kind, &b).map(|e| e.format)
        };
        assert_eq!(at(ObjectKind::Manifest, 1).unwrap(), 1);
        assert_eq!(at(ObjectKind::KeyList, 1).unwrap(), 1);
        assert_eq!(at(ObjectKind::KeyList, 2).unwrap(), 2);
        assert_eq!(at(ObjectKind::ChannelHead, 2).unwrap(), 2);
        // A one-layer head of format 1: the publisher must re-sign it.
        let e = at(ObjectKind::ChannelHead, 1).unwrap_err().to_string();
        assert!(
            e.contains("no longer reads") && e.contains("re-sign"),
            "{e}"
        );
        // What an agent of the previous format does with a format 2 head or key list:
        // the same rule one version down, "upgrade ferry".
        for kind in [
            ObjectKind::ChannelHead,
            ObjectKind::KeyList,
            ObjectKind::Manifest,
        ] {
            let e = at(kind, kind.format_version() + 1).unwrap_err().to_string();
            assert!(e.contains("upgrade ferry"), "{e}");
        }
    }

    #[test]
    fn wrong_key_and_tampered_body_are_refused() {
        let k = SecretKey::from_seed([1; 32]);
        let other = SecretKey::from_seed([2; 32]);
        let env = Envelope::sign(ObjectKind::ChannelHead, b"abc".to_vec(), &[&k]);
        let e = env
            .verify(&TrustedKeys::single(other.public()))
            .unwrap_err();
        assert!(e.to_string().contains("not signed by a trusted key"), "{e}");
        let mut t = env.clone();
        t.body[0] ^= 1;
        let e = t.verify(&TrustedKeys::single(k.public())).unwrap_err();
        assert!(e.to_string().contains("invalid signature"), "{e}");
    }

    #[test]
    fn too_few_trusted_signatures_name_the_threshold() {
        let (a, b) = (SecretKey::from_seed([1; 32]), SecretKey::from_seed([2; 32]));
        let two_of_two = TrustedKeys::new(vec![a.public(), b.public()], 2).unwrap();
        let env = Envelope::sign(ObjectKind::Manifest, b"abc".to_vec(), &[&a]);
        let e = env.verify(&two_of_two).unwrap_err().to_string();
        assert!(
            e.contains("signed by 1 of the trusted keys, below the threshold of 2"),
            "{e}"
        );
        let both = Envelope::sign(ObjectKind::Manifest, b"abc".to_vec(), &[&a, &b]);
        assert_eq!(both.verify(&two_of_two).unwrap().len(), 2);
    }

    #[test]
    fn framing_errors() {
        let k = SecretKey::from_seed([1; 32]);
        let bytes = Envelope::sign(ObjectKind::Manifest, vec![1, 2, 3], &[&k]).encode();
        for cut in 0..bytes.len() {
            assert!(Envelope::decode(ObjectKind::Manifest, &bytes[..cut]).is_err());
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Envelope::decode(ObjectKind::Manifest, &longer).is_err());
        let mut newer = bytes.clone();
        newer[4] = 2;
        let e = Envelope::decode(ObjectKind::Manifest, &newer).unwrap_err();
        assert!(e.to_string().contains("upgrade ferry"), "{e}");
    }
}

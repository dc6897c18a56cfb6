//! Staging attacks in tests: signs objects *without* the structural checks the normal
//! signing path enforces, so end-to-end tests can hand a client a validly signed but
//! malicious manifest (path traversal, duplicate paths, symlink escapes) and show the
//! client refuses it. Compiled only with the `test-support` feature.

use crate::codec;
use crate::envelope::{Envelope, ObjectKind};
use crate::keys::SecretKey;
use crate::manifest::Manifest;

/// Signs `manifest` exactly as a publisher would, skipping `Manifest::validate`.
pub fn sign_manifest_unchecked(manifest: &Manifest, keys: &[&SecretKey]) -> Vec<u8> {
    Envelope::sign(ObjectKind::Manifest, codec::encode(manifest), keys).encode()
}

/// Signs `head`'s freshness layer exactly as [`crate::head::ChannelHead::sign`] does,
/// skipping its checks (so a test can hand an agent a rollout override above the
/// publisher's, signed by a real key).
pub fn sign_head_unchecked(head: &crate::head::ChannelHead, keys: &[&SecretKey]) -> Vec<u8> {
    head.sign_unchecked(keys)
}

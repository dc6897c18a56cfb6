//! Ed25519 keys, key ids and their text files (FORMAT.md §4.1).
//!
//! Key files are one line of text so they survive copy and paste:
//! `ferry-secret-key:v1:<64 hex>` and `ferry-public-key:v1:<64 hex>`.

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};

use crate::error::{FormatError, Result};
use crate::id::Digest;

const SECRET_PREFIX: &str = "ferry-secret-key:v1:";
const PUBLIC_PREFIX: &str = "ferry-public-key:v1:";

/// A key id: blake3 of the 32-byte public key.
pub type KeyId = Digest;

/// A publishing key. Never leaves the build machine.
pub struct SecretKey(SigningKey);

/// A public key that verifies signatures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl SecretKey {
    /// A new key from the operating system's random source.
    pub fn generate() -> Result<Self> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| FormatError::BadKey {
            kind: "secret",
            reason: format!("no randomness from the OS: {e}"),
        })?;
        Ok(SecretKey(SigningKey::from_bytes(&seed)))
    }

    pub fn from_seed(seed: [u8; 32]) -> Self {
        SecretKey(SigningKey::from_bytes(&seed))
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    pub(crate) fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.0.sign(message).to_bytes()
    }

    /// The key file text, newline-terminated.
    pub fn to_text(&self) -> String {
        format!("{SECRET_PREFIX}{}\n", hex::encode(self.0.to_bytes()))
    }

    pub fn from_text(text: &str) -> Result<Self> {
        let seed = parse_line(text, SECRET_PREFIX, "secret")?;
        Ok(SecretKey(SigningKey::from_bytes(&seed)))
    }
}

impl PublicKey {
    /// The raw 32-byte key, as stored in key lists.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self> {
        VerifyingKey::from_bytes(bytes)
            .map(PublicKey)
            .map_err(|e| FormatError::BadKey {
                kind: "public",
                reason: e.to_string(),
            })
    }

    pub fn id(&self) -> KeyId {
        Digest::of(self.0.as_bytes())
    }

    pub fn to_text(&self) -> String {
        format!("{PUBLIC_PREFIX}{}\n", hex::encode(self.0.as_bytes()))
    }

    pub fn from_text(text: &str) -> Result<Self> {
        let bytes = parse_line(text, PUBLIC_PREFIX, "public")?;
        VerifyingKey::from_bytes(&bytes)
            .map(PublicKey)
            .map_err(|e| FormatError::BadKey {
                kind: "public",
                reason: e.to_string(),
            })
    }

    pub(crate) fn verify(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        let sig = ed25519_dalek::Signature::from_bytes(signature);
        // Strict verification rejects small-order keys and non-canonical signatures, so
        // one signed message has exactly one valid signature per key.
        self.0.verify_strict(message, &sig).is_ok()
    }
}

fn parse_line(text: &str, prefix: &str, kind: &'static str) -> Result<[u8; 32]> {
    let text = text.trim();
    let hexpart = text
        .strip_prefix(prefix)
        .ok_or_else(|| FormatError::BadKey {
            kind,
            reason: format!("expected a line starting with {prefix:?}"),
        })?;
    let mut out = [0u8; 32];
    hex::decode_to_slice(hexpart, &mut out).map_err(|e| FormatError::BadKey {
        kind,
        reason: format!("not 64 hex characters: {e}"),
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_round_trip() {
        let k = SecretKey::generate().unwrap();
        let k2 = SecretKey::from_text(&k.to_text()).unwrap();
        assert_eq!(k.public(), k2.public());
        let p = PublicKey::from_text(&format!("  {}  ", k.public().to_text())).unwrap();
        assert_eq!(p.id(), k.public().id());
        assert!(
            PublicKey::from_text(&k.to_text()).is_err(),
            "secret is not public"
        );
        assert!(SecretKey::from_text("ferry-secret-key:v1:abcd").is_err());
    }
}

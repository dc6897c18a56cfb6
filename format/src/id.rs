//! 32-byte blake3 digests: chunk ids, file hashes and object names (FORMAT.md §1).

use serde::{Deserialize, Serialize};
use std::fmt;

use crate::error::{FormatError, Result};

/// A blake3-256 digest. Chunk ids hash the uncompressed chunk, object names hash the
/// stored bytes of the object, file hashes hash the whole file content.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Digest(pub [u8; 32]);

/// A chunk id: the blake3 digest of the uncompressed chunk bytes.
pub type ChunkId = Digest;

impl Digest {
    /// Digest of `data`.
    pub fn of(data: &[u8]) -> Self {
        Digest(*blake3::hash(data).as_bytes())
    }

    /// Lowercase hex, 64 characters: how digests appear in paths, ETags and messages.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex characters.
    pub fn from_hex(s: &str) -> Result<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|e| FormatError::Malformed {
            kind: "digest",
            reason: format!("{s:?} is not 64 hex characters: {e}"),
        })?;
        Ok(Digest(out))
    }
}

impl From<blake3::Hash> for Digest {
    fn from(h: blake3::Hash) -> Self {
        Digest(*h.as_bytes())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.to_hex())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// A reference to an immutable object: its name (blake3 of its bytes) and its size,
/// so a client knows how much it may read before it asks.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ObjectRef {
    pub hash: Digest,
    pub size: u64,
}

impl ObjectRef {
    /// The reference naming `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        ObjectRef {
            hash: Digest::of(bytes),
            size: bytes.len() as u64,
        }
    }

    /// Checks that `bytes` are exactly the object this reference names.
    pub fn check(&self, kind: &'static str, bytes: &[u8]) -> Result<()> {
        if bytes.len() as u64 != self.size {
            return Err(FormatError::SizeMismatch {
                kind,
                expected: self.size,
                actual: bytes.len() as u64,
            });
        }
        let actual = Digest::of(bytes);
        if actual != self.hash {
            return Err(FormatError::HashMismatch {
                kind,
                expected: self.hash.to_hex(),
                actual: actual.to_hex(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_rejects_garbage() {
        let d = Digest::of(b"ferry");
        assert_eq!(Digest::from_hex(&d.to_hex()).unwrap(), d);
        assert!(Digest::from_hex("zz").is_err());
        assert!(Digest::from_hex(&"a".repeat(63)).is_err());
    }

    #[test]
    fn object_ref_check_names_the_problem() {
        let r = ObjectRef::of(b"hello");
        r.check("manifest", b"hello").unwrap();
        let e = r.check("manifest", b"hellO").unwrap_err().to_string();
        assert!(e.contains("manifest hash mismatch"), "{e}");
        let e = r.check("manifest", b"hell").unwrap_err().to_string();
        assert!(e.contains("size mismatch"), "{e}");
    }
}

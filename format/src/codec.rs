//! The canonical body encoding (FORMAT.md §3): bincode 2 with a fixed configuration.
//!
//! Little-endian, fixed-width integers (u64 lengths, u32 enum tags, u8 option tags
//! and bools). Bodies contain no maps and every list is sorted by the writer, so one
//! value always gives the same bytes. bincode is no longer developed, so FORMAT.md
//! spells this encoding out byte by byte and golden vectors pin it.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{FormatError, Result};

/// Hard ceiling on any body we decode: bincode refuses to allocate past it, so a
/// hostile length prefix cannot exhaust memory.
pub const MAX_BODY: usize = 64 << 20;

fn config() -> impl bincode::config::Config {
    bincode::config::standard()
        .with_little_endian()
        .with_fixed_int_encoding()
        .with_limit::<MAX_BODY>()
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Encoding plain structs of integers, strings and vectors into a Vec cannot fail:
    // there is no map, no unsized type and no I/O.
    bincode::serde::encode_to_vec(value, config()).expect("encoding a body into memory")
}

/// The length [`encode`] would produce, counted without holding the bytes.
pub(crate) fn encoded_len<T: Serialize>(value: &T) -> u64 {
    struct Count(u64);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len() as u64;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    bincode::serde::encode_into_std_write(value, &mut count, config())
        .expect("encoding a body into a counter");
    count.0
}

pub(crate) fn decode<T: DeserializeOwned>(kind: &'static str, bytes: &[u8]) -> Result<T> {
    let (value, used) =
        bincode::serde::decode_from_slice::<T, _>(bytes, config()).map_err(|e| {
            FormatError::Malformed {
                kind,
                reason: e.to_string(),
            }
        })?;
    if used != bytes.len() {
        return Err(FormatError::Malformed {
            kind,
            reason: format!("{} trailing bytes after the body", bytes.len() - used),
        });
    }
    Ok(value)
}

/// Little-endian reader over a byte slice for the hand-laid framing around bodies.
pub(crate) struct Reader<'a> {
    kind: &'static str,
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(kind: &'static str, bytes: &'a [u8]) -> Self {
        Reader { kind, bytes }
    }

    pub(crate) fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if self.bytes.len() < n {
            return Err(FormatError::Malformed {
                kind: self.kind,
                reason: format!("truncated in {what}"),
            });
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    pub(crate) fn u16(&mut self, what: &str) -> Result<u16> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32(&mut self, what: &str) -> Result<u32> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    pub(crate) fn finish(self) -> Result<()> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(FormatError::Malformed {
                kind: self.kind,
                reason: format!("{} trailing bytes", self.bytes.len()),
            })
        }
    }
}

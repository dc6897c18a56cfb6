//! Binary diffs between releases (FORMAT.md §3.6).
//!
//! A diff object carries, for one base release B and the new release N, the bytes of
//! every chunk of N that B lacks ("the missing chunks", in N's chunk-table order),
//! encoded against B's data with bsdiff-style approximate matching. B's data is the
//! concatenation of B's regular files in manifest order: a client holding B intact
//! reads it through its installed files, a publisher rebuilds it from B's archive.
//! Matching runs against the whole base, so moved, renamed and shifted code is found
//! wherever it was.
//!
//! The encoding keeps bsdiff's three streams, each one LZMA2 (.xz) stream:
//! control triples `(add, copy, seek)`, the bytewise differences of the `add` runs
//! (mostly zeros where code only moved) and the `copy` bytes that match nothing.
//! Applying is one sequential pass with bounded memory: the base is read at random
//! positions, the output is written in order.
//!
//! - [`encode`]: the publisher's side (suffix array over the base, bsdiff scan).
//! - [`apply`]: the client's side, streaming.
//! - [`manifest_diff`]: the new manifest as a zstd frame against the old one.

pub mod apply;
pub mod encode;
pub mod manifest_diff;

use serde::{Deserialize, Serialize};

use crate::codec::{self, Reader};
use crate::error::{FormatError, Result};
use crate::id::{Digest, ObjectRef};
use crate::manifest::{EntryKind, Manifest};

/// Magic number of a diff object.
pub const DIFF_MAGIC: [u8; 4] = *b"FRYD";
/// Algorithm number of bsdiff matching with LZMA2-compressed streams (zstd measured
/// 15% larger on real release pairs: benches/diff_eval.rs).
pub const BSDIFF_LZMA2: u8 = 1;
/// Largest base or output a diff may describe: suffix arrays index with i32.
pub const MAX_DIFF_INPUT: u64 = (i32::MAX as u64) - 1;

/// A diff of the new release against one base release, as the new manifest lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffRef {
    pub base_version: String,
    /// The base release's manifest: the client uses the diff only when this is the
    /// manifest of a release it holds intact.
    pub base_manifest: Digest,
    pub object: ObjectRef,
}

/// A diff from an older manifest to the current one, as the channel head lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestDiffRef {
    pub base_manifest: Digest,
    pub object: ObjectRef,
}

/// The header of a diff object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffHeader {
    pub algorithm: u8,
    pub base_manifest: Digest,
    /// Bytes of the base (its regular files, concatenated in manifest order).
    pub base_size: u64,
    /// Bytes produced: the missing chunks, concatenated in the new chunk-table order.
    pub target_size: u64,
    pub target_chunks: u64,
    /// Stored (compressed) sizes of the control, diff and extra streams, which follow
    /// the header in that order.
    pub control_len: u64,
    pub diff_len: u64,
    pub extra_len: u64,
}

impl DiffHeader {
    /// The object's bytes before the streams: magic, format version, header length,
    /// header. The three streams follow, so a publisher can write them from files.
    pub fn encode_prefix(&self) -> Vec<u8> {
        let body = codec::encode(self);
        let mut out = Vec::with_capacity(10 + body.len());
        out.extend_from_slice(&DIFF_MAGIC);
        out.extend_from_slice(&crate::envelope::FORMAT_VERSION.to_le_bytes());
        // A header is a few fixed fields: far below u32::MAX.
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// Parses the prefix of a diff object and checks the stream lengths add up to
    /// `object_len`. Returns the header and the offset of the control stream.
    pub fn decode_prefix(bytes: &[u8], object_len: u64) -> Result<(DiffHeader, u64)> {
        let kind = "diff object";
        let mut r = Reader::new(kind, bytes);
        if r.take(4, "magic")? != DIFF_MAGIC {
            return Err(FormatError::BadMagic { kind });
        }
        let format = r.u16("format version")?;
        if format != crate::envelope::FORMAT_VERSION {
            return Err(FormatError::UnsupportedFormat {
                kind,
                found: format,
                supported: crate::envelope::FORMAT_VERSION,
            });
        }
        let len = r.u32("header length")? as usize;
        if len > 4096 {
            return Err(FormatError::TooLarge {
                kind,
                what: "header",
                found: len as u64,
                limit: 4096,
            });
        }
        let header: DiffHeader = codec::decode(kind, r.take(len, "header")?)?;
        let start = 10 + len as u64;
        let malformed = |reason: String| FormatError::Malformed { kind, reason };
        if header.algorithm != BSDIFF_LZMA2 {
            return Err(malformed(format!("unknown algorithm {}", header.algorithm)));
        }
        if header.base_size > MAX_DIFF_INPUT || header.target_size > MAX_DIFF_INPUT {
            return Err(malformed("base or target beyond 2 GiB".into()));
        }
        let total = start
            .checked_add(header.control_len)
            .and_then(|n| n.checked_add(header.diff_len))
            .and_then(|n| n.checked_add(header.extra_len));
        if total != Some(object_len) {
            return Err(malformed(format!(
                "streams end at {total:?}, the object has {object_len} bytes"
            )));
        }
        Ok((header, start))
    }
}

/// Indexes (in `target`'s chunk table) of the chunks `base` does not have, in table
/// order: exactly what a diff from `base` to `target` produces.
pub fn missing_chunks(target: &Manifest, base: &Manifest) -> Vec<usize> {
    let have: std::collections::HashSet<_> = base.chunks.iter().map(|c| c.id).collect();
    target
        .chunks
        .iter()
        .enumerate()
        .filter(|(_, c)| !have.contains(&c.id))
        .map(|(i, _)| i)
        .collect()
}

/// The regular files making up a release's diff base, in manifest order, with sizes.
pub fn base_files(base: &Manifest) -> impl Iterator<Item = (&str, u64)> {
    base.entries.iter().filter_map(|e| match &e.kind {
        EntryKind::File { size, .. } => Some((e.path.as_str(), *size)),
        _ => None,
    })
}

#[cfg(test)]
mod tests;

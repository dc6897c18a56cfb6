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
//! The encoding keeps bsdiff's model: control records `(seek, add, copy)` as varints,
//! the bytewise differences of the `add` runs (mostly zeros where code only moved) and
//! the `copy` bytes that match nothing. The differences are stored either as one dense
//! stream (best compressed by bzip3) or split into zero runs, non-zero runs and the
//! non-zero bytes (best compressed by LZMA2, and applied as plain copies from the base
//! wherever nothing changed); the publisher keeps whichever layout is smaller.
//! Applying is one sequential pass with bounded memory: the base is read at random
//! positions, the output is written in order.
//!
//! - [`encode`]: the publisher's side: suffix array over the base, bsdiff scan, raw
//!   streams; [`pack`] then picks the layout and each stream's codec.
//! - [`apply`]: the client's side, streaming.
//! - [`streams`]: the stream codecs and varints shared by both sides.
//! - [`manifest_diff`]: the new manifest as a zstd frame against the old one, or its
//!   skeleton without the ids the data diff yields (§3.7).
//! - [`nothing`]: diffs from the empty release, what a fresh install downloads: the
//!   whole release as one long-window zstd stream (§3.9).
//! - [`x86`]: reference rewriting of x86-64 ELF base files (§3.6.1, algorithm 3): the
//!   base moved into the new release's address space before matching.

pub mod apply;
pub mod bcj;
pub mod encode;
pub mod manifest_diff;
pub mod nothing;
pub mod pack;
pub mod streams;
pub mod x86;

use serde::{Deserialize, Serialize};

use crate::codec::{self, Reader};
use crate::error::{FormatError, Result};
use crate::id::{Digest, ObjectRef};
use crate::manifest::{EntryKind, Manifest};

/// Magic number of a diff object.
pub const DIFF_MAGIC: [u8; 4] = *b"FRYD";
/// Algorithm number of bsdiff matching with varint control records and a dense or
/// sparse difference layout, each stream LZMA2, bzip3 or stored (FORMAT.md §3.6).
/// Algorithm 1 (three .xz streams, fixed-width control triples) is no longer read.
pub const BSDIFF_V2: u8 = 2;
/// Algorithm number of [`BSDIFF_V2`] over a base whose x86-64 ELF files are first
/// rewritten through address maps carried in one more stream after the extra stream
/// (FORMAT.md §3.6.1).
pub const BSDIFF_X86: u8 = 3;
/// Largest raw address-map stream (FORMAT.md §3.6.1).
pub const MAX_MAP_RAW: u64 = 8 << 20;
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
    /// When set, the manifest diff yields a skeleton (FORMAT.md §3.7): the ids of the
    /// chunks the base lacks are zero, and this diff object, applied to the base,
    /// produces those chunks, whose blake3 hashes are the ids. Pinning it here (the
    /// head is signed) lets an agent fetch and trust it before it has the manifest.
    pub chunk_diff: Option<ObjectRef>,
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
    /// How the differences of the add runs are stored.
    pub layout: DiffLayout,
    /// The streams following the header, in object order: control, the difference
    /// stream(s) of `layout`, extra.
    pub streams: Vec<StreamHeader>,
}

/// How the bytewise differences of the add runs (the "dense" difference stream, one
/// byte per added byte) are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DiffLayout {
    /// One stream: the dense differences as they are.
    Dense,
    /// Three streams: zero-run lengths, non-zero-run lengths minus one (varints) and
    /// the non-zero bytes. Zero runs are where the base is copied unchanged.
    Sparse,
}

impl DiffLayout {
    /// Number of streams in an object of this layout (control and extra included).
    pub fn stream_count(self) -> usize {
        match self {
            DiffLayout::Dense => 3,
            DiffLayout::Sparse => 5,
        }
    }

    /// The streams' names, in object order, for messages.
    pub fn stream_names(self) -> &'static [&'static str] {
        match self {
            DiffLayout::Dense => &["control", "diff", "extra"],
            DiffLayout::Sparse => &["control", "zero runs", "non-zero runs", "literals", "extra"],
        }
    }
}

/// One stream of a diff object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamHeader {
    pub codec: StreamCodec,
    /// Bytes the stream decodes to, exactly.
    pub raw_len: u64,
    /// Bytes the stream occupies in the object.
    pub stored_len: u64,
}

/// How one stream is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamCodec {
    /// The raw bytes (empty streams, and streams compression does not shrink).
    Stored,
    /// A raw LZMA2 stream (no .xz container) with these properties.
    Lzma2 {
        dict_size: u32,
        lc: u8,
        lp: u8,
        pb: u8,
    },
    /// A bzip3 stream ("BZ3v1" file format) with this block size.
    Bzip3 { block_size: u32 },
    /// One zstd frame (RFC 8878) whose window is at most `2^window_log` bytes: the
    /// extra stream of a diff from nothing (FORMAT.md §3.9), where the whole release
    /// is one long-window stream.
    Zstd { window_log: u8 },
    /// [`StreamCodec::Zstd`] whose frame holds the raw bytes after the x86 branch
    /// filter of xz (BCJ, start offset 0): relative call and jump targets made
    /// absolute repeat across a program, which a fresh install of compiled code
    /// downloads 2-5% fewer bytes for (FORMAT.md §3.9).
    ZstdX86 { window_log: u8 },
}

impl DiffHeader {
    /// The object's bytes before the streams: magic, format version, header length,
    /// header. The streams follow, so a publisher can write them from files.
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

    /// Parses the prefix of a diff object and checks everything the header claims
    /// before anyone acts on it: the algorithm, the stream count of the layout, codec
    /// parameters and the decoders' total memory, raw lengths against the target size,
    /// and stored lengths adding up to `object_len`. Returns the header and the offset
    /// of the first (control) stream.
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
        if header.algorithm != BSDIFF_V2 && header.algorithm != BSDIFF_X86 {
            return Err(FormatError::UnknownAlgorithm {
                kind,
                found: header.algorithm,
                supported: BSDIFF_X86,
            });
        }
        if header.base_size > MAX_DIFF_INPUT || header.target_size > MAX_DIFF_INPUT {
            return Err(malformed("base or target beyond 2 GiB".into()));
        }
        let names = header.stream_names();
        if header.streams.len() != names.len() {
            return Err(malformed(format!(
                "algorithm {} with the {:?} layout has {} streams, the header lists {}",
                header.algorithm,
                header.layout,
                names.len(),
                header.streams.len()
            )));
        }
        if let Some(m) = header.map_stream()
            && m.raw_len > MAX_MAP_RAW
        {
            return Err(FormatError::TooLarge {
                kind,
                what: "address-map stream",
                found: m.raw_len,
                limit: MAX_MAP_RAW,
            });
        }
        let mut memory = 0u64;
        for (s, name) in header.streams.iter().zip(names) {
            streams::check_codec(&s.codec, s.raw_len, s.stored_len)
                .map_err(|reason| malformed(format!("{name} stream: {reason}")))?;
            memory += streams::decoder_memory(&s.codec);
        }
        if memory > streams::DECODER_MEMORY_LIMIT {
            return Err(FormatError::TooLarge {
                kind,
                what: "memory its stream decoders need",
                found: memory,
                limit: streams::DECODER_MEMORY_LIMIT,
            });
        }
        header.check_raw_lengths().map_err(malformed)?;
        let total = header
            .streams
            .iter()
            .try_fold(start, |n, s| n.checked_add(s.stored_len));
        if total != Some(object_len) {
            return Err(malformed(format!(
                "streams end at {total:?}, the object has {object_len} bytes"
            )));
        }
        Ok((header, start))
    }

    /// Offsets and stored lengths of the streams in the object, in object order, given
    /// the offset of the first one (from [`DiffHeader::decode_prefix`]).
    pub fn stream_ranges(&self, start: u64) -> Vec<(u64, u64)> {
        let mut at = start;
        self.streams
            .iter()
            .map(|s| {
                let r = (at, s.stored_len);
                at = at.saturating_add(s.stored_len);
                r
            })
            .collect()
    }

    /// The streams' names, in object order, for messages.
    pub fn stream_names(&self) -> Vec<&'static str> {
        let mut names = self.layout.stream_names().to_vec();
        if self.algorithm == BSDIFF_X86 {
            names.push("address map");
        }
        names
    }

    /// The streams [`apply::apply`] reads (control, differences, extra): all but the
    /// address map of algorithm 3.
    pub fn data_streams(&self) -> &[StreamHeader] {
        &self.streams[..self.layout.stream_count().min(self.streams.len())]
    }

    /// The address-map stream of an algorithm-3 diff (the last stream).
    pub fn map_stream(&self) -> Option<&StreamHeader> {
        if self.algorithm == BSDIFF_X86 {
            self.streams.last()
        } else {
            None
        }
    }

    /// Bytes of the dense difference stream: every output byte comes from an add run
    /// (one difference byte each) or from the extra stream.
    pub(crate) fn dense_len(&self) -> Option<u64> {
        let extra = self.data_streams().last()?.raw_len;
        self.target_size.checked_sub(extra)
    }

    /// Cheap consistency of the raw lengths with the target size, so that no stream
    /// can make a decoder produce (or a reader wait for) more than the target implies.
    fn check_raw_lengths(&self) -> std::result::Result<(), String> {
        let raw: Vec<u64> = self.data_streams().iter().map(|s| s.raw_len).collect();
        let dense = self
            .dense_len()
            .ok_or_else(|| "extra stream longer than the target".to_string())?;
        // Every control record produces at least one byte and is 3 varints.
        let control_max = self.target_size * 3 * streams::MAX_VARINT_LEN as u64;
        if raw[0] > control_max {
            return Err(format!(
                "control stream of {} bytes for a {}-byte target",
                raw[0], self.target_size
            ));
        }
        match self.layout {
            DiffLayout::Dense if raw[1] != dense => Err(format!(
                "diff stream of {} bytes, target minus extra is {dense}",
                raw[1]
            )),
            DiffLayout::Dense => Ok(()),
            DiffLayout::Sparse => {
                let (zeros, runs, literals) = (raw[1], raw[2], raw[3]);
                let v = streams::MAX_VARINT_LEN as u64;
                // k non-zero runs of at least one literal each, k + 1 zero runs.
                if literals > dense
                    || runs > literals * v
                    || zeros > (literals + 1) * v
                    || zeros == 0
                {
                    Err(format!(
                        "sparse streams of {zeros}, {runs} and {literals} bytes cannot describe \
                         {dense} bytes of differences"
                    ))
                } else {
                    Ok(())
                }
            }
        }
    }
}

/// Indexes (in `target`'s chunk table) of the chunks `base` does not have, in the
/// order a diff from `base` to `target` produces them: table order, or first-use order
/// ([`nothing::order`]) when `base` is the empty release (a diff from nothing).
pub fn missing_chunks(target: &Manifest, base: &Manifest) -> Vec<usize> {
    if nothing::is_empty_release(base) {
        return nothing::order(target);
    }
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

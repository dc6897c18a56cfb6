//! Diffs from nothing (FORMAT.md §3.9): what a fresh install downloads when the
//! publisher made one. The per-chunk archive compresses every chunk on its own, so it
//! shares nothing between chunks and is up to 1.4x the size of the release compressed
//! whole. A diff object whose base is the empty release carries every chunk of the
//! release, in table order, as one long-window zstd frame; its manifest diff is a
//! skeleton of the manifest in which every chunk id is a hole, filled from what the
//! diff produces. Both go through the same checks as any skeleton and diff (§3.6,
//! §3.7): nothing here needs a signature of its own.

use super::streams::{MAX_ZSTD_WINDOW_LOG, put_varint, zigzag};
use super::{BSDIFF_V2, DiffHeader, DiffLayout, StreamCodec, StreamHeader};
use crate::chunking::ChunkParams;
use crate::id::{Digest, ObjectRef};
use crate::manifest::Manifest;

/// The base manifest hash a diff from nothing names: no manifest hashes to it, so no
/// agent of any version finds a release of its own under it.
pub const NOTHING: Digest = Digest([0; 32]);

/// The zstd window of a diff from nothing: the largest the format allows (32 MiB),
/// which is what an agent's decoder holds while it installs.
pub const WINDOW_LOG: u8 = MAX_ZSTD_WINDOW_LOG;

/// The release every agent holds: no chunk, no entry. A diff from nothing is a diff
/// from it; its "files", the diff's base, are empty.
pub fn empty_release(channel: &str) -> Manifest {
    Manifest {
        channel: channel.to_string(),
        version: "0".into(),
        generation: 0,
        chunking: ChunkParams::default(),
        archive: ObjectRef {
            hash: NOTHING,
            size: 0,
        },
        chunks: vec![],
        entries: vec![],
        diffs: vec![],
    }
}

/// Whether a diff header is that of a diff from nothing: no base, and the whole target
/// in its extra stream.
pub fn is_from_nothing(h: &DiffHeader) -> bool {
    h.base_manifest == NOTHING && h.base_size == 0
}

/// The bytes of a diff from nothing that precede its extra stream: the header, the
/// control stream (one record copying the whole target from the extra stream) and the
/// empty difference stream. `extra` is the zstd stream the caller has compressed the
/// `target_chunks` chunks (`target_size` bytes) into, appended after these bytes.
pub fn prefix(target_size: u64, target_chunks: u64, extra: StreamHeader) -> Vec<u8> {
    let mut control = Vec::new();
    put_varint(&mut control, zigzag(0));
    put_varint(&mut control, 0);
    put_varint(&mut control, target_size);
    let stored = |len: usize| StreamHeader {
        codec: StreamCodec::Stored,
        raw_len: len as u64,
        stored_len: len as u64,
    };
    let header = DiffHeader {
        algorithm: BSDIFF_V2,
        base_manifest: NOTHING,
        base_size: 0,
        target_size,
        target_chunks,
        layout: DiffLayout::Dense,
        streams: vec![stored(control.len()), stored(0), extra],
    };
    let mut out = header.encode_prefix();
    out.extend_from_slice(&control);
    out
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::delta::apply::{ConcatBase, apply};
    use crate::delta::manifest_diff::{Skeleton, apply_manifest_diff, encode_manifest_diff};
    use crate::delta::streams::Encoder;
    use crate::error::FormatError;

    fn text(n: usize) -> Vec<u8> {
        (0..n)
            .flat_map(|i| format!("line {} of a release, {}\n", i % 977, i % 13).into_bytes())
            .take(n)
            .collect()
    }

    /// A diff from nothing producing `target`, its extra stream compressed with
    /// `window_log` and declared with `declared`.
    fn object(target: &[u8], window_log: u8, declared: u8) -> Vec<u8> {
        let mut raw = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        raw.window_log(window_log.into()).unwrap();
        raw.write_all(target).unwrap();
        let extra = raw.finish().unwrap();
        let h = StreamHeader {
            codec: StreamCodec::Zstd {
                window_log: declared,
            },
            raw_len: target.len() as u64,
            stored_len: extra.len() as u64,
        };
        let mut out = prefix(target.len() as u64, 3, h);
        out.extend_from_slice(&extra);
        out
    }

    fn apply_object(object: &[u8]) -> crate::error::Result<Vec<u8>> {
        let (header, start) = DiffHeader::decode_prefix(object, object.len() as u64)?;
        assert!(is_from_nothing(&header));
        let readers: Vec<&[u8]> = header
            .stream_ranges(start)
            .into_iter()
            .map(|(o, l)| &object[o as usize..(o + l) as usize])
            .collect();
        let mut out = Vec::new();
        apply(&header, &ConcatBase::new(vec![]), readers, &mut |b| {
            out.extend_from_slice(b);
            Ok(())
        })?;
        Ok(out)
    }

    #[test]
    fn a_diff_from_nothing_produces_the_whole_release_from_one_zstd_stream() {
        // Above the size from which streams decode on their own thread, and below it.
        for n in [5 << 20, 70_000] {
            let target = text(n);
            let mut enc = Encoder::with_level(
                &StreamCodec::Zstd {
                    window_log: WINDOW_LOG,
                },
                19,
                Vec::new(),
            )
            .unwrap();
            enc.write_all(&target).unwrap();
            let (raw_len, stored_len, extra) = enc.finish().unwrap();
            assert!(stored_len * 10 < raw_len, "{stored_len} of {raw_len}");
            let h = StreamHeader {
                codec: StreamCodec::Zstd {
                    window_log: WINDOW_LOG,
                },
                raw_len,
                stored_len,
            };
            let mut object = prefix(raw_len, 2, h);
            object.extend_from_slice(&extra);
            assert_eq!(apply_object(&object).unwrap(), target);
        }
    }

    #[test]
    fn a_frame_needing_a_larger_window_than_declared_is_refused() {
        let target = text(1 << 20);
        assert_eq!(apply_object(&object(&target, 20, 20)).unwrap(), target);
        let err = apply_object(&object(&target, 22, 20)).unwrap_err();
        assert!(err.to_string().contains("extra stream"), "{err}");
    }

    #[test]
    fn windows_past_32_mib_are_refused_before_any_stream_is_read() {
        let target = text(4096);
        let err = apply_object(&object(&target, 20, 26)).unwrap_err();
        assert!(
            matches!(&err, FormatError::Malformed { reason, .. } if reason.contains("zstd window of 2^26")),
            "{err}"
        );
    }

    #[test]
    fn trailing_bytes_after_the_frame_are_refused() {
        let target = text(100_000);
        let mut obj = object(&target, 20, 20);
        // Append a byte to the extra stream and count it in the header.
        let (mut header, start) = DiffHeader::decode_prefix(&obj, obj.len() as u64).unwrap();
        header.streams[2].stored_len += 1;
        let body = obj[start as usize..].to_vec();
        obj = header.encode_prefix();
        obj.extend_from_slice(&body);
        obj.push(0);
        let err = apply_object(&obj).unwrap_err();
        assert!(err.to_string().contains("stored bytes"), "{err}");
    }

    #[test]
    fn the_skeleton_from_nothing_holes_every_id_and_fills_back_to_the_manifest() {
        let signer = crate::keys::SecretKey::from_seed([9; 32]);
        let chunk = |tag: &str, generation| crate::manifest::ChunkRecord {
            id: Digest::of(tag.as_bytes()),
            size: 10,
            stored_size: 9,
            generation,
        };
        let manifest = Manifest {
            channel: "stable".into(),
            version: "2.0.0".into(),
            generation: 2,
            chunking: ChunkParams::default(),
            archive: ObjectRef {
                hash: Digest::of(b"archive"),
                size: 27,
            },
            chunks: vec![chunk("a", 1), chunk("b", 2), chunk("c", 2)],
            entries: vec![crate::manifest::Entry {
                path: "f".into(),
                kind: crate::manifest::EntryKind::File {
                    mode: 0o644,
                    size: 30,
                    hash: Digest::of(b"f"),
                    chunks: vec![2, 0, 1],
                },
            }],
            diffs: vec![],
        };
        let bytes = manifest.sign(&[&signer]).unwrap();
        let empty = empty_release("stable");
        let skeleton = Skeleton::make(&bytes, &empty, &|_| false).unwrap();
        let diff = encode_manifest_diff(&[], &skeleton, 19).unwrap();
        let back = apply_manifest_diff(&[], &diff, bytes.len() as u64).unwrap();
        let skeleton = Skeleton::decode(&back, &empty).unwrap();
        assert_eq!(skeleton.holes(), 3);
        assert_eq!(skeleton.outside_indexes(), [0, 1, 2]);
        let ids: Vec<_> = manifest.chunks.iter().map(|c| c.id).collect();
        assert_eq!(skeleton.fill(&ids).unwrap(), bytes);
    }
}

//! Diff objects and manifest diffs (FORMAT.md §3.6, §3.7, §3.9 from nothing, seeded with
//! its zstd stream): whatever the bytes, parsing
//! the prefix and applying the streams over a fixed base never panics, never reads
//! outside the base and never produces more than the header's target size; a manifest
//! diff never yields more than the size bound it is given; a manifest skeleton is
//! parsed and filled against a fixed base manifest, or refused, without panicking.
#![no_main]

use ferry_format::chunking::ChunkParams;
use ferry_format::delta::DiffHeader;
use ferry_format::delta::apply::{ConcatBase, apply};
use ferry_format::delta::manifest_diff::{Skeleton, apply_manifest_diff};
use ferry_format::id::{Digest, ObjectRef};
use ferry_format::manifest::{ChunkRecord, Manifest};
use libfuzzer_sys::fuzz_target;

fn base_manifest() -> Manifest {
    let chunk = |tag: &[u8]| ChunkRecord {
        id: Digest::of(tag),
        size: 100,
        stored_size: 50,
        generation: 1,
    };
    Manifest {
        channel: "stable".into(),
        version: "1.0.0".into(),
        generation: 1,
        chunking: ChunkParams::default(),
        archive: ObjectRef {
            hash: Digest::of(b"archive"),
            size: 100,
        },
        chunks: vec![chunk(b"a"), chunk(b"b")],
        entries: vec![],
        diffs: vec![],
    }
}

const BASE: &[u8] = b"the quick brown fox jumps over the lazy dog, 0123456789 times over";

fuzz_target!(|data: &[u8]| {
    if let Ok(out) = apply_manifest_diff(BASE, data, 4096) {
        assert!(out.len() <= 4096);
    }
    if let Ok(skeleton) = Skeleton::decode(data, &base_manifest()) {
        let _ = skeleton.outside_base().count();
        let holes = skeleton.holes();
        let _ = skeleton.fill(&vec![Digest([1; 32]); holes]);
    }
    let Ok((header, start)) = DiffHeader::decode_prefix(data, data.len() as u64) else {
        return;
    };
    if header.target_size > 1 << 20 {
        return;
    }
    // decode_prefix checked the stored lengths add up to the input.
    let streams: Vec<&[u8]> = header
        .stream_ranges(start)
        .into_iter()
        .map(|(o, l)| &data[o as usize..(o + l) as usize])
        .collect();
    // The base's length must match the header for apply to start; use a prefix of BASE.
    let Some(base) = BASE.get(..header.base_size as usize) else {
        return;
    };
    let parts = ConcatBase::new(vec![&base[..base.len() / 2], &base[base.len() / 2..]]);
    let mut produced = 0u64;
    let result = apply(&header, &parts, streams, &mut |b| {
        produced += b.len() as u64;
        Ok(())
    });
    assert!(produced <= header.target_size);
    if let Ok(n) = result {
        assert_eq!(n, header.target_size);
        assert_eq!(produced, n);
    }
});

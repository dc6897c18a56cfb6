//! Archive planning against a model: for an arbitrary chunk table, "have" set and
//! max_gap, the plan fetches every missing chunk in exactly one range, ranges are
//! sorted, start and end on missing chunks, are separated by more than max_gap bytes
//! and contain no held run longer than max_gap, and the totals add up.
#![no_main]

use std::collections::HashMap;

use ferry_format::chunking::ChunkParams;
use ferry_format::id::{Digest, ObjectRef};
use ferry_format::manifest::{ChunkRecord, Manifest};
use ferry_format::plan::plan_archive;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    max_gap: Gap,
    chunks: Vec<Chunk>,
}

#[derive(Arbitrary, Debug)]
enum Gap {
    Small(u16),
    Any(u64),
}

#[derive(Arbitrary, Debug)]
struct Chunk {
    have: bool,
    /// Stored size; scaled by `big` so both tiny and 4 GiB-scale tables appear.
    stored: u16,
    big: bool,
    size: u32,
}

fuzz_target!(|input: Input| {
    let max_gap = match input.max_gap {
        Gap::Small(g) => u64::from(g),
        Gap::Any(g) => g,
    };
    let chunks: Vec<ChunkRecord> = (input.chunks.iter().enumerate())
        .map(|(i, c)| ChunkRecord {
            id: Digest::of(&i.to_le_bytes()),
            size: c.size,
            stored_size: u32::from(c.stored) << if c.big { 16 } else { 0 },
            generation: 1,
        })
        .collect();
    let have: Vec<bool> = input.chunks.iter().map(|c| c.have).collect();
    let m = Manifest {
        channel: "fuzz".into(),
        version: "1".into(),
        generation: 1,
        chunking: ChunkParams::default(),
        archive: ObjectRef {
            hash: Digest([0; 32]),
            size: 0,
        },
        chunks,
        entries: Vec::new(),
        diffs: Vec::new(),
    };
    let index: HashMap<Digest, usize> = m
        .chunks
        .iter()
        .enumerate()
        .map(|(i, c)| (c.id, i))
        .collect();
    let plan = plan_archive(&m, |id| have[index[id]], max_gap);

    // The model: byte offsets, and which range (if any) holds each chunk.
    let off = m.chunk_offsets();
    let mut owner = vec![None; m.chunks.len()];
    for (k, r) in plan.ranges.iter().enumerate() {
        assert!(
            r.first_chunk < r.last_chunk && r.last_chunk <= m.chunks.len(),
            "{r:?}"
        );
        assert_eq!(
            (r.start, r.end),
            (off[r.first_chunk], off[r.last_chunk]),
            "{r:?}"
        );
        assert!(
            !have[r.first_chunk] && !have[r.last_chunk - 1],
            "range ends on a held chunk"
        );
        for (i, o) in owner
            .iter_mut()
            .enumerate()
            .take(r.last_chunk)
            .skip(r.first_chunk)
        {
            assert_eq!(o.replace(k), None, "chunk {i} in two ranges");
        }
        if k > 0 {
            let prev = &plan.ranges[k - 1];
            assert!(prev.last_chunk <= r.first_chunk, "ranges out of order");
            assert!(
                r.start - prev.end > max_gap,
                "gap {} <= max_gap",
                r.start - prev.end
            );
        }
        // Inside a range, every run of held chunks is a gap worth downloading.
        let mut run_start = None;
        for i in r.first_chunk..r.last_chunk {
            match (have[i], run_start) {
                (true, None) => run_start = Some(off[i]),
                (false, Some(s)) => {
                    assert!(off[i] - s <= max_gap, "held run of {} in {r:?}", off[i] - s);
                    run_start = None;
                }
                _ => {}
            }
        }
    }
    for (i, &h) in have.iter().enumerate() {
        assert!(h || owner[i].is_some(), "missing chunk {i} not fetched");
    }
    let held = || m.chunks.iter().zip(&have).filter(|(_, h)| **h);
    assert_eq!(plan.reuse_chunks, held().count());
    assert_eq!(
        plan.reuse_bytes,
        held().map(|(c, _)| u64::from(c.size)).sum::<u64>()
    );
    assert_eq!(plan.fetch_chunks, m.chunks.len() - plan.reuse_chunks);
    assert_eq!(
        plan.download_bytes,
        plan.ranges.iter().map(|r| r.len()).sum::<u64>()
    );
});

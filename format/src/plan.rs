//! Planning which archive bytes to fetch (FORMAT.md §8). Pure: the caller says which
//! chunks it already holds, the plan says which byte ranges of the archive to request.
//!
//! Missing chunks that sit next to each other become one range; ranges separated by
//! at most `max_gap` bytes of chunks the client already has are merged too, because a
//! request costs more than a few KiB of extra bytes. Because the archive is ordered by
//! generation, an agent on any older release of the channel gets a single range.

use crate::id::ChunkId;
use crate::manifest::Manifest;

/// Default gap worth downloading to save one request.
pub const DEFAULT_MAX_GAP: u64 = 16 << 10;

/// One HTTP range of the archive and the chunks it covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchRange {
    /// First byte, inclusive.
    pub start: u64,
    /// Last byte, exclusive.
    pub end: u64,
    /// Chunk-table indexes covered, `first..last`.
    pub first_chunk: usize,
    pub last_chunk: usize,
}

impl FetchRange {
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

/// What an update will cost before anything is fetched.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ArchivePlan {
    pub ranges: Vec<FetchRange>,
    /// Bytes of archive to download (range bodies).
    pub download_bytes: u64,
    /// Chunks the client must fetch / already has.
    pub fetch_chunks: usize,
    pub reuse_chunks: usize,
    /// Uncompressed bytes taken from local releases.
    pub reuse_bytes: u64,
}

/// Plans the archive ranges for `manifest` given which chunks are held locally.
pub fn plan_archive(
    manifest: &Manifest,
    mut have: impl FnMut(&ChunkId) -> bool,
    max_gap: u64,
) -> ArchivePlan {
    let offsets = manifest.chunk_offsets();
    let mut plan = ArchivePlan::default();
    for (i, c) in manifest.chunks.iter().enumerate() {
        if have(&c.id) {
            plan.reuse_chunks += 1;
            plan.reuse_bytes += u64::from(c.size);
            continue;
        }
        plan.fetch_chunks += 1;
        let (start, end) = (offsets[i], offsets[i + 1]);
        match plan.ranges.last_mut() {
            Some(r) if start - r.end <= max_gap => {
                r.end = end;
                r.last_chunk = i + 1;
            }
            _ => plan.ranges.push(FetchRange {
                start,
                end,
                first_chunk: i,
                last_chunk: i + 1,
            }),
        }
    }
    plan.download_bytes = plan.ranges.iter().map(FetchRange::len).sum();
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunking::ChunkParams;
    use crate::id::{Digest, ObjectRef};
    use crate::manifest::ChunkRecord;

    fn manifest(stored: &[u32]) -> Manifest {
        let chunks: Vec<ChunkRecord> = stored
            .iter()
            .enumerate()
            .map(|(i, &s)| ChunkRecord {
                id: Digest::of(&i.to_le_bytes()),
                size: s,
                stored_size: s,
                generation: 1,
            })
            .collect();
        Manifest {
            channel: "c".into(),
            version: "1".into(),
            generation: 1,
            chunking: ChunkParams::default(),
            archive: ObjectRef {
                hash: Digest::of(b""),
                size: stored.iter().map(|&s| u64::from(s)).sum(),
            },
            chunks,
            entries: vec![],
            diffs: vec![],
        }
    }

    #[test]
    fn tail_is_one_range_and_gaps_merge_or_split() {
        let m = manifest(&[100, 100, 100, 100, 100]);
        let id = |i: usize| m.chunks[i].id;
        let p = plan_archive(&m, |c| *c == id(0) || *c == id(1), 0);
        assert_eq!(p.ranges.len(), 1);
        assert_eq!((p.ranges[0].start, p.ranges[0].end), (200, 500));
        assert_eq!((p.fetch_chunks, p.reuse_chunks, p.reuse_bytes), (3, 2, 200));

        let scattered = |c: &ChunkId| *c == id(1) || *c == id(3);
        let p = plan_archive(&m, scattered, 0);
        assert_eq!(p.ranges.len(), 3);
        assert_eq!(p.download_bytes, 300);
        let p = plan_archive(&m, scattered, 100);
        assert_eq!(p.ranges.len(), 1, "gaps of 100 merge at max_gap 100");
        assert_eq!(p.download_bytes, 500);

        let p = plan_archive(&m, |_| true, 0);
        assert!(p.ranges.is_empty());
        assert_eq!(p.download_bytes, 0);
    }
}

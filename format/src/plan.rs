//! Planning which archive bytes to fetch (FORMAT.md §8). Pure: the caller says which
//! chunks it already holds, the plan says which byte ranges of the archive to request.
//!
//! Missing chunks that sit next to each other become one range; ranges separated by
//! at most `max_gap` bytes of chunks the client already has are merged too, because a
//! request costs more than a few KiB of extra bytes. Because the archive is ordered by
//! generation, an agent on any older release of the channel gets a single range.

use std::collections::HashSet;

use crate::delta::{DiffRef, missing_chunks};
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

/// A diff object an update could use: `diff` from a release whose manifest, held
/// locally, is `base`.
#[derive(Clone, Copy, Debug)]
pub struct DiffOption<'a> {
    pub diff: &'a DiffRef,
    pub base: &'a Manifest,
}

/// One way to get the chunks an update lacks with a diff: the diff object produces the
/// chunks its base lacks, `rest` fetches whatever neither local releases nor the diff
/// provide.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiffPlan {
    /// Index into the options given to [`plan_update`].
    pub option: usize,
    /// Chunk-table indexes the diff produces that are not held locally.
    pub produces: Vec<usize>,
    pub rest: ArchivePlan,
    /// The diff object plus the rest's ranges, in bytes.
    pub download_bytes: u64,
    /// One request for the diff object, one per rest range.
    pub requests: u64,
}

/// Where every missing byte of an update can come from, computed once from the signed
/// manifest and what the caller holds: chunks copied from local releases, the archive
/// ranges that would fetch the rest (`archive`), and the diffs that would fetch it in
/// fewer bytes, cheapest first. The first diff whose base the caller finds intact is
/// the plan; the ones after it, then the archive ranges, are the fallbacks in order.
/// Pure: the caller has already found which chunks it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpdatePlan {
    pub archive: ArchivePlan,
    pub diffs: Vec<DiffPlan>,
}

impl UpdatePlan {
    /// Bytes and requests of the cheapest way: the first diff, else the archive.
    pub fn cheapest(&self) -> (u64, u64) {
        match self.diffs.first() {
            Some(d) => (d.download_bytes, d.requests),
            None => (
                self.archive.download_bytes,
                self.archive.ranges.len() as u64,
            ),
        }
    }
}

/// Plans an update of `manifest`: `have` says which chunks are held locally, `options`
/// are the diffs from releases held locally. A diff is kept only when it downloads
/// fewer bytes than the archive ranges would.
pub fn plan_update(
    manifest: &Manifest,
    have: impl Fn(&ChunkId) -> bool,
    options: &[DiffOption<'_>],
    max_gap: u64,
) -> UpdatePlan {
    let archive = plan_archive(manifest, &have, max_gap);
    let mut diffs = Vec::new();
    if archive.fetch_chunks > 0 {
        for (option, o) in options.iter().enumerate() {
            let produced: HashSet<usize> = missing_chunks(manifest, o.base).into_iter().collect();
            let ids: HashSet<ChunkId> = produced.iter().map(|&i| manifest.chunks[i].id).collect();
            let rest = plan_archive(manifest, |id| have(id) || ids.contains(id), max_gap);
            let download_bytes = o.diff.object.size.saturating_add(rest.download_bytes);
            if download_bytes >= archive.download_bytes {
                continue;
            }
            let mut produces: Vec<usize> = produced
                .into_iter()
                .filter(|&i| !have(&manifest.chunks[i].id))
                .collect();
            produces.sort_unstable();
            diffs.push(DiffPlan {
                option,
                produces,
                requests: 1 + rest.ranges.len() as u64,
                rest,
                download_bytes,
            });
        }
    }
    diffs.sort_by_key(|d| (d.download_bytes, d.option));
    UpdatePlan { archive, diffs }
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

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// A manifest of chunks with these stored sizes, ids from `ids`.
        fn with_ids(sizes: &[u32], ids: &[u8]) -> Manifest {
            let mut m = manifest(sizes);
            for (c, id) in m.chunks.iter_mut().zip(ids) {
                c.id = Digest::of(&[*id]);
            }
            m
        }

        fn diff(size: u64) -> DiffRef {
            DiffRef {
                base_version: "0".into(),
                base_manifest: Digest::of(b"base"),
                object: ObjectRef {
                    hash: Digest::of(b"diff"),
                    size,
                },
            }
        }

        proptest! {
            /// Every chunk the update lacks comes from exactly one place, no byte range
            /// is fetched twice, and no plan downloads more than the archive's tail
            /// from the first missing chunk.
            #[test]
            fn every_region_is_covered_once_and_never_beyond_the_tail(
                sizes in proptest::collection::vec(1u32..5000, 1..40),
                ids in proptest::collection::vec(0u8..30, 40),
                held in proptest::collection::vec(any::<bool>(), 40),
                bases in proptest::collection::vec(
                    (proptest::collection::vec(0u8..30, 0..40), 0u64..20_000), 0..4),
                max_gap in 0u64..10_000,
            ) {
                let m = with_ids(&sizes, &ids[..sizes.len()]);
                let held: HashSet<ChunkId> = m.chunks.iter().zip(&held)
                    .filter(|(_, h)| **h).map(|(c, _)| c.id).collect();
                let base_manifests: Vec<Manifest> = bases.iter()
                    .map(|(ids, _)| with_ids(&vec![1; ids.len()], ids)).collect();
                let diffs: Vec<DiffRef> = bases.iter().map(|(_, size)| diff(*size)).collect();
                let options: Vec<DiffOption> = diffs.iter().zip(&base_manifests)
                    .map(|(diff, base)| DiffOption { diff, base }).collect();
                let plan = plan_update(&m, |id| held.contains(id), &options, max_gap);

                let offsets = m.chunk_offsets();
                let missing: Vec<usize> = (0..m.chunks.len())
                    .filter(|&i| !held.contains(&m.chunks[i].id)).collect();
                let tail = missing.first().map_or(0, |&i| offsets[m.chunks.len()] - offsets[i]);
                let check = |ranges: &[FetchRange], extra: &[usize]| {
                    // Ranges sorted and disjoint, within the archive.
                    for w in ranges.windows(2) {
                        prop_assert!(w[0].end < w[1].start || (max_gap > 0 && w[0].end <= w[1].start));
                    }
                    for i in &missing {
                        let by_range = ranges.iter()
                            .filter(|r| r.first_chunk <= *i && *i < r.last_chunk).count();
                        let by_extra = extra.iter().filter(|e| *e == i).count();
                        // Its id may also be held under another index (duplicate ids).
                        prop_assert!(by_range + by_extra >= 1, "chunk {} not covered", i);
                        prop_assert!(by_range <= 1 && by_extra <= 1, "chunk {} twice", i);
                    }
                    let bytes: u64 = ranges.iter().map(FetchRange::len).sum();
                    prop_assert!(bytes <= tail, "{} > tail {}", bytes, tail);
                    Ok(())
                };
                check(&plan.archive.ranges, &[])?;
                prop_assert_eq!(plan.archive.download_bytes,
                    plan.archive.ranges.iter().map(FetchRange::len).sum::<u64>());
                let mut last = 0;
                for d in &plan.diffs {
                    check(&d.rest.ranges, &d.produces)?;
                    // Cheaper than the archive, cheapest first, and never beyond the tail.
                    prop_assert!(d.download_bytes < plan.archive.download_bytes);
                    prop_assert!(d.download_bytes >= last);
                    last = d.download_bytes;
                    prop_assert!(d.download_bytes <= tail);
                    // A range of the rest never fetches a chunk the diff produces.
                    for r in &d.rest.ranges {
                        for i in r.first_chunk..r.last_chunk {
                            let id = m.chunks[i].id;
                            let produced = d.produces.iter().any(|&p| m.chunks[p].id == id);
                            prop_assert!(!produced || held.contains(&id) || max_gap > 0);
                        }
                    }
                }
                let (bytes, _) = plan.cheapest();
                prop_assert!(bytes <= plan.archive.download_bytes);
            }
        }
    }
}

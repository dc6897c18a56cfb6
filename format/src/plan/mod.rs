//! Planning where every byte of an update comes from (FORMAT.md §8). Pure: the caller
//! describes what it holds, the planner says what to copy, what to fetch and how.
//!
//! - [`plan_archive`]: the byte ranges of a release's archive that fetch the chunks the
//!   caller lacks ([`ArchivePlan`], [`FetchRange`]).
//! - [`plan_update`]: the whole update as one value, [`UpdatePlan`]: every chunk of the
//!   release with its source (a local copy, a diff object from a named base, an
//!   archive range), the bytes and requests of each way to get them ([`Route`]), the
//!   cheapest first and the archive alone last, so a failing way has its fallbacks
//!   listed before anything is fetched. The client prints it, checks it against its
//!   data budget, executes it and reports what it cost, all from this value.
//! - [`hop_candidates`] and [`plan_hops`]: when no diff from a release the caller holds
//!   is worth taking, a path of two diffs through a release the head lists ([`HopPlan`]).
//!
//! Missing chunks that sit next to each other become one range; ranges separated by
//! at most `max_gap` bytes of chunks the client already has are merged too, because a
//! request costs more than a few KiB of extra bytes. Because the archive is ordered by
//! generation, an agent on any older release of the channel gets a single range.

use crate::id::ChunkId;
use crate::manifest::Manifest;

mod hops;
mod update;

pub use hops::{HopCandidate, HopPlan, hop_candidates, plan_hops};
pub use update::{
    Base, Disk, Region, Route, SkipReason, Skipped, Source, UpdatePlan, Via, plan_update,
};

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
mod tests;

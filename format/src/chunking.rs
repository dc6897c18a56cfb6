//! Content-defined chunking and per-chunk compression (FORMAT.md §2).
//!
//! Files are cut with FastCDC v2020 using the parameters recorded in the manifest;
//! each chunk is named by the blake3 of its bytes and stored as one zstd frame.

use serde::{Deserialize, Serialize};
use std::io::Read;

use crate::error::{FormatError, Result};
use crate::id::ChunkId;

/// Algorithm number of FastCDC v2020 in [`ChunkParams::algorithm`].
pub const FASTCDC_2020: u8 = 1;

/// Chunking parameters, recorded in every manifest so a reader knows how chunks were cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkParams {
    pub algorithm: u8,
    /// FastCDC normalization level, 0 to 3.
    pub normalization: u8,
    pub min: u32,
    pub avg: u32,
    pub max: u32,
}

impl Default for ChunkParams {
    /// 16/64/256 KiB: large enough that per-chunk metadata (48 bytes) stays under 0.1%
    /// of the data, small enough that a local edit costs tens of KiB.
    fn default() -> Self {
        ChunkParams {
            algorithm: FASTCDC_2020,
            normalization: 1,
            min: 16 << 10,
            avg: 64 << 10,
            max: 256 << 10,
        }
    }
}

impl ChunkParams {
    /// Checks the parameters against FastCDC's own bounds and ferry's 16 MiB chunk ceiling.
    pub fn validate(&self) -> Result<()> {
        use fastcdc::v2020 as f;
        let bad = |reason: String| FormatError::Malformed {
            kind: "chunk parameters",
            reason,
        };
        if self.algorithm != FASTCDC_2020 {
            return Err(bad(format!(
                "unknown chunking algorithm {}",
                self.algorithm
            )));
        }
        if self.normalization > 3 {
            return Err(bad(format!("normalization {} > 3", self.normalization)));
        }
        let (min, avg, max) = (self.min as usize, self.avg as usize, self.max as usize);
        let in_range = (f::MINIMUM_MIN..=f::MINIMUM_MAX).contains(&min)
            && (f::AVERAGE_MIN..=f::AVERAGE_MAX).contains(&avg)
            && (f::MAXIMUM_MIN..=f::MAXIMUM_MAX).contains(&max)
            && self.min <= self.avg
            && self.avg <= self.max;
        if !in_range {
            return Err(bad(format!(
                "min/avg/max {}/{}/{} outside FastCDC v2020 bounds",
                self.min, self.avg, self.max
            )));
        }
        Ok(())
    }

    fn level(&self) -> fastcdc::v2020::Normalization {
        use fastcdc::v2020::Normalization as N;
        match self.normalization {
            0 => N::Level0,
            1 => N::Level1,
            2 => N::Level2,
            _ => N::Level3,
        }
    }
}

/// One chunk cut from a stream.
pub struct RawChunk {
    /// Offset of the chunk in its file.
    pub offset: u64,
    pub id: ChunkId,
    pub data: Vec<u8>,
}

/// Cuts a stream into chunks. Memory stays bounded by the maximum chunk size.
pub fn chunk_reader<R: Read>(
    reader: R,
    params: ChunkParams,
) -> Result<impl Iterator<Item = Result<RawChunk>>> {
    params.validate()?;
    let cdc = fastcdc::v2020::StreamCDC::with_level(
        reader,
        params.min as usize,
        params.avg as usize,
        params.max as usize,
        params.level(),
    );
    Ok(cdc.map(|c| {
        let c = c.map_err(|e| FormatError::Chunking(e.to_string()))?;
        Ok(RawChunk {
            offset: c.offset,
            id: ChunkId::of(&c.data),
            data: c.data,
        })
    }))
}

/// Cuts an in-memory (or memory-mapped) slice: yields `(offset, length)` pairs.
pub fn chunk_slice(
    data: &[u8],
    params: ChunkParams,
) -> Result<impl Iterator<Item = (usize, usize)> + '_> {
    params.validate()?;
    let cdc = fastcdc::v2020::FastCDC::with_level(
        data,
        params.min as usize,
        params.avg as usize,
        params.max as usize,
        params.level(),
    );
    Ok(cdc.map(|c| (c.offset, c.length)))
}

/// Compresses one chunk as a single zstd frame.
pub fn compress_chunk(data: &[u8], level: i32) -> Result<Vec<u8>> {
    zstd::bulk::compress(data, level).map_err(|e| FormatError::Compression(e.to_string()))
}

/// The largest stored size a chunk of `size` bytes may have: zstd's worst-case bound.
pub fn max_stored_size(size: u32) -> u64 {
    zstd::zstd_safe::compress_bound(size as usize) as u64
}

thread_local! {
    /// One zstd decoder context per thread, reused for every chunk: creating one per
    /// chunk was 11% of a fresh install's time (`perf`, benches/results). Each frame
    /// starts from a reset context, so a chunk that failed leaves nothing behind.
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// Decompresses one stored chunk and checks it against its id and size. Decompression
/// never allocates past `size`, so a hostile frame cannot balloon.
pub fn decompress_chunk(id: &ChunkId, size: u32, stored: &[u8]) -> Result<Vec<u8>> {
    let corrupt = |reason: String| FormatError::CorruptChunk {
        id: id.to_hex(),
        reason,
    };
    let data = DECOMPRESSOR
        .with(|cell| {
            let mut slot = cell.borrow_mut();
            let dctx = match slot.as_mut() {
                Some(d) => d,
                None => slot.insert(zstd::bulk::Decompressor::new()?),
            };
            dctx.decompress(stored, size as usize)
        })
        .map_err(|e| corrupt(e.to_string()))?;
    if data.len() != size as usize {
        return Err(corrupt(format!("{} bytes, expected {size}", data.len())));
    }
    let actual = ChunkId::of(&data);
    if actual != *id {
        return Err(corrupt(format!("content hashes to {actual}")));
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(n: usize) -> Vec<u8> {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn a_bad_chunk_leaves_the_reused_decoder_good_for_the_next() {
        let good = sample(70_000);
        let stored = compress_chunk(&good, 3).unwrap();
        let id = ChunkId::of(&good);
        let mut broken = stored.clone();
        let mid = broken.len() / 2;
        broken[mid] ^= 0xff;
        broken.truncate(broken.len() - 3);
        assert!(decompress_chunk(&id, good.len() as u32, &broken).is_err());
        assert!(decompress_chunk(&id, good.len() as u32 - 1, &stored).is_err());
        assert_eq!(
            decompress_chunk(&id, good.len() as u32, &stored).unwrap(),
            good
        );
    }

    #[test]
    fn stream_and_slice_agree_and_cover_the_input() {
        let data = sample(1 << 20);
        let p = ChunkParams::default();
        let a: Vec<(usize, usize)> = chunk_slice(&data, p).unwrap().collect();
        let b: Vec<(usize, usize)> = chunk_reader(&data[..], p)
            .unwrap()
            .map(|c| {
                let c = c.unwrap();
                (c.offset as usize, c.data.len())
            })
            .collect();
        assert_eq!(a, b);
        assert_eq!(a.iter().map(|c| c.1).sum::<usize>(), data.len());
        assert!(a.iter().all(|c| c.1 <= p.max as usize));
    }

    #[test]
    fn compress_round_trip_and_corruption() {
        let data = sample(70_000);
        let id = ChunkId::of(&data);
        let stored = compress_chunk(&data, 3).unwrap();
        assert!(stored.len() as u64 <= max_stored_size(data.len() as u32));
        assert_eq!(
            decompress_chunk(&id, data.len() as u32, &stored).unwrap(),
            data
        );
        let mut bad = stored.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0x40;
        let e = decompress_chunk(&id, data.len() as u32, &bad).unwrap_err();
        assert!(e.to_string().contains("is corrupt"), "{e}");
        assert!(
            decompress_chunk(&id, 10, &stored).is_err(),
            "size bound enforced"
        );
    }

    #[test]
    fn bad_params_are_refused() {
        let mut p = ChunkParams::default();
        p.min = p.max + 1;
        assert!(p.validate().is_err());
        p = ChunkParams::default();
        p.algorithm = 9;
        assert!(p.validate().is_err());
    }
}

//! Content-defined chunking and per-chunk compression (FORMAT.md §2).
//!
//! Files are cut with FastCDC v2020 using the parameters recorded in the manifest;
//! each chunk is named by the blake3 of its bytes and stored as one zstd frame.

use serde::{Deserialize, Serialize};
use std::io::Read;

use crate::error::{FormatError, Result};
use crate::id::{ChunkId, Digest};

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

/// The bytes [`FileChunker`] reads at a time (or twice the maximum chunk, if larger):
/// small enough that what was read is still in the core's L2 cache when it is cut and
/// hashed (a 16 MiB buffer measured 20% slower), large enough that the tail moved to the
/// front before each read (under one maximum chunk) costs little.
const READ_BUFFER: usize = 1 << 20;

/// One chunk of a file, borrowed from [`FileChunker`]'s buffer.
pub struct ChunkView<'a> {
    /// Offset of the chunk in its file.
    pub offset: u64,
    pub id: ChunkId,
    pub data: &'a [u8],
}

/// The size and file hash (FORMAT.md §1: blake3 of the whole content) of a chunked file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileDigest {
    pub size: u64,
    pub hash: Digest,
}

/// Cuts a stream into chunks and hashes it in one pass: each chunk's bytes are read
/// once into a reused buffer, cut, then hashed twice while they are cache-hot, into
/// the chunk's id and into the file hash (once for a stream of one chunk, whose id is
/// its file hash). No chunk is copied or allocated; memory is
/// the buffer (1 MiB, or twice the maximum chunk if larger).
///
/// The chunks are the same as [`chunk_slice`]'s over the whole content. A lending
/// iterator: each [`ChunkView`] borrows the buffer until the next call.
///
/// The stream is read, not memory-mapped: the bytes hashed are the bytes a caller then
/// compresses even if the file changes meanwhile, a file truncated under the publisher
/// is a read of fewer bytes rather than a SIGBUS, the resident memory stays that of the
/// buffer instead of growing with the file's mapped pages, and this crate keeps
/// forbidding unsafe code (a map needs it). The price is the kernel's copy out of the
/// page cache: a fifth to a third of this stage's time in `perf` (the most for files
/// cached in small pages).
pub struct FileChunker<R> {
    reader: R,
    cutter: Cutter,
    buf: Vec<u8>,
    /// `buf[start..end]` is read and not yet cut.
    start: usize,
    end: usize,
    eof: bool,
    offset: u64,
    file: blake3::Hasher,
    /// The id of a stream's only chunk, which is its file hash too (the same blake3 of
    /// the same bytes): such a stream is hashed once.
    only: Option<ChunkId>,
}

impl<R: Read> FileChunker<R> {
    pub fn new(reader: R, params: ChunkParams) -> Result<Self> {
        params.validate()?;
        let cutter = Cutter::new(params);
        Ok(FileChunker {
            reader,
            buf: vec![0; READ_BUFFER.max(2 * cutter.max)],
            cutter,
            start: 0,
            end: 0,
            eof: false,
            offset: 0,
            file: blake3::Hasher::new(),
            only: None,
        })
    }

    /// The next chunk, or `None` at the end of the stream.
    pub fn next_chunk(&mut self) -> std::io::Result<Option<ChunkView<'_>>> {
        if !self.eof && self.end - self.start < self.cutter.max {
            self.fill()?;
        }
        let window = &self.buf[self.start..self.end];
        if window.is_empty() {
            return Ok(None);
        }
        // Over at least `max` bytes (or all that is left), a cut is the cut FastCDC
        // makes over the whole content: it never looks further than `max`.
        let data = &window[..self.cutter.cut(window)];
        let id = ChunkId::of(data);
        if self.offset == 0 && self.eof && data.len() == window.len() {
            self.only = Some(id);
        } else {
            self.file.update(data);
        }
        let chunk = ChunkView {
            offset: self.offset,
            id,
            data,
        };
        self.start += data.len();
        self.offset += data.len() as u64;
        Ok(Some(chunk))
    }

    /// Moves what is left to the front and reads until the buffer is full or the
    /// stream ends.
    fn fill(&mut self) -> std::io::Result<()> {
        self.buf.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
        while self.end < self.buf.len() {
            match self.reader.read(&mut self.buf[self.end..]) {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(n) => self.end += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The size and hash of everything chunked so far: the whole stream once
    /// [`next_chunk`](Self::next_chunk) has returned `None`.
    pub fn finish(&self) -> FileDigest {
        FileDigest {
            size: self.offset,
            hash: self
                .only
                .unwrap_or_else(|| Digest::from(self.file.finalize())),
        }
    }
}

/// Bytes scanned by each of the two lanes of [`scan`] in a round: long enough
/// that the 64 bytes each lane hashes before its stretch cost little (under 2%), short
/// enough that the stretch after a cut point, hashed for nothing, costs little too.
const LANE: usize = 4096;

/// FastCDC v2020's cut points, found faster than the `fastcdc` crate's `cut` finds
/// them, and always the same ones (the tests compare the two).
///
/// FastCDC cuts at the first position `p` past `min` (and below `max`) where the gear
/// hash `h(p) = (h(p-1) << 1) + GEAR[byte p]`, started at 0 at `min`, has none of the
/// mask's bits set (the strict mask before `avg`, the loose one after). The crate's
/// loop is bound by that chain of dependent shifts and adds: one position at a time,
/// each waiting for the last. But `h(p)` only depends on the 64 bytes up to `p` (older
/// bytes are shifted out), so a stretch of positions can be hashed independently of
/// the previous one, starting 64 bytes early. The scan goes through two adjacent
/// stretches at once, interleaved, which the CPU runs in parallel: the first cut point
/// in the first stretch, else in the second, is FastCDC's (1.7 to 2 times the crate's
/// speed on this repository's benchmark inputs).
///
/// Only for even `min`, `avg` and `max` (the crate's own debug assertions require
/// them; odd values, valid in a manifest, shift the crate's positions by one, so they
/// go to the crate's `cut` itself).
struct Cutter {
    min: usize,
    avg: usize,
    max: usize,
    mask_s: u64,
    mask_l: u64,
    gear: &'static [u64; 256],
    gear_ls: &'static [u64; 256],
}

impl Cutter {
    fn new(params: ChunkParams) -> Cutter {
        use fastcdc::v2020 as f;
        let (mask_s, mask_l) = f::select_masks(params.avg as usize, params.level());
        // The default tables (seed 0) are the crate's statics, borrowed.
        let (std::borrow::Cow::Borrowed(gear), std::borrow::Cow::Borrowed(gear_ls)) =
            f::get_gear_with_seed(0)
        else {
            unreachable!("fastcdc's seed-0 gear tables are borrowed statics")
        };
        Cutter {
            min: params.min as usize,
            avg: params.avg as usize,
            max: params.max as usize,
            mask_s,
            mask_l,
            gear: gear.try_into().expect("256 entries"),
            gear_ls: gear_ls.try_into().expect("256 entries"),
        }
    }

    /// The length of the chunk starting `src`: what `fastcdc::v2020::cut` returns.
    fn cut(&self, src: &[u8]) -> usize {
        let (min, avg, max) = (self.min, self.avg, self.max);
        if (min | avg | max) % 2 == 1 {
            let (ms, ml) = (self.mask_s, self.mask_l);
            return fastcdc::v2020::cut(src, min, avg, max, ms, ml, ms << 1, ml << 1).1;
        }
        let remaining = src.len().min(max);
        if src.len() <= min {
            return src.len();
        }
        // The crate tests positions in pairs, so an odd last one is never tested.
        let end = remaining & !1;
        let switch = avg.min(end);
        let (g, gls) = (self.gear, self.gear_ls);
        scan(src, g, gls, min, min, switch, self.mask_s)
            .or_else(|| scan(src, g, gls, min, switch, end, self.mask_l))
            .unwrap_or(remaining)
    }
}

/// The gear hash of the positions before `at`, as the crate's loop has it at `at`:
/// from the 64 bytes before (all that is left of older ones), or from `min`.
#[inline(always)]
fn warm(src: &[u8], g: &[u64; 256], gls: &[u64; 256], min: usize, at: usize) -> u64 {
    let mut h = 0u64;
    let mut a = at.saturating_sub(64).max(min);
    while a < at {
        h = (h << 2)
            .wrapping_add(gls[src[a] as usize])
            .wrapping_add(g[src[a + 1] as usize]);
        a += 2;
    }
    h
}

/// The first cut point in `from..to` (even bounds) under `mask`, one lane, from the
/// hash `h` of the positions before `from`.
#[inline(always)]
fn scan_one(
    src: &[u8],
    g: &[u64; 256],
    gls: &[u64; 256],
    mut h: u64,
    from: usize,
    to: usize,
    mask: u64,
) -> Option<usize> {
    let mls = mask << 1;
    for (k, pair) in src[from..to].chunks_exact(2).enumerate() {
        h = (h << 2).wrapping_add(gls[pair[0] as usize]);
        if h & mls == 0 {
            return Some(from + 2 * k);
        }
        h = h.wrapping_add(g[pair[1] as usize]);
        if h & mask == 0 {
            return Some(from + 2 * k + 1);
        }
    }
    None
}

/// The first cut point in `from..to` (even bounds) under `mask`, for a hash started
/// at `min`. The positions are taken in pairs as the crate takes them: the even one
/// tested on the hash shifted left once (`gls`, the gear table shifted left once),
/// the odd one on the hash itself.
///
/// (Written this way on measurement: as a method with the tail inline the same loop
/// ran 20% slower, and indexing `src` instead of walking pairs of the two lanes' slices
/// 25% slower, its bounds checks in the hot loop.)
fn scan(
    src: &[u8],
    g: &[u64; 256],
    gls: &[u64; 256],
    min: usize,
    from: usize,
    to: usize,
    mask: u64,
) -> Option<usize> {
    let mls = mask << 1;
    let mut x = from;
    while x < to {
        let a_end = (x + LANE).min(to);
        let b_end = (a_end + LANE).min(to);
        let (mut ha, mut hb) = (warm(src, g, gls, min, x), warm(src, g, gls, min, a_end));
        // Both lanes together while the second has positions (it is never the longer
        // one).
        let second = &src[a_end..b_end];
        let first = &src[x..x + second.len()];
        let mut together = 0;
        let mut hit_b = None;
        for (k, (pa, pb)) in first
            .chunks_exact(2)
            .zip(second.chunks_exact(2))
            .enumerate()
        {
            ha = (ha << 2).wrapping_add(gls[pa[0] as usize]);
            hb = (hb << 2).wrapping_add(gls[pb[0] as usize]);
            if ha & mls == 0 {
                return Some(x + 2 * k);
            }
            let b_even = hb & mls == 0;
            ha = ha.wrapping_add(g[pa[1] as usize]);
            hb = hb.wrapping_add(g[pb[1] as usize]);
            if ha & mask == 0 {
                return Some(x + 2 * k + 1);
            }
            together = k + 1;
            if b_even {
                hit_b = Some(a_end + 2 * k);
                break;
            }
            if hb & mask == 0 {
                hit_b = Some(a_end + 2 * k + 1);
                break;
            }
        }
        // The first lane alone to its end: a cut point there comes before the second
        // lane's.
        if let Some(p) = scan_one(src, g, gls, ha, x + 2 * together, a_end, mask) {
            return Some(p);
        }
        if hit_b.is_some() {
            return hit_b;
        }
        x = b_end;
    }
    None
}

/// Cuts an in-memory (or memory-mapped) slice with the `fastcdc` crate itself: yields
/// `(offset, length)` pairs.
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

thread_local! {
    /// One zstd encoder context per thread, reused for every chunk, and its output
    /// buffer. A fresh context per chunk costs its allocation and the clearing of its
    /// tables (3 to 4% of a level-3 publish in `perf`). Each frame is one-shot
    /// (`ZSTD_compress2`, which resets the session and sizes the frame's parameters
    /// from the chunk's length), so the bytes are those of a fresh context.
    static COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>, Vec<u8>)>> =
        const { std::cell::RefCell::new(None) };
}

/// Compresses one chunk as a single zstd frame.
pub fn compress_chunk(data: &[u8], level: i32) -> Result<Vec<u8>> {
    COMPRESSOR
        .with(|cell| {
            let mut slot = cell.borrow_mut();
            let (_, cctx, out) = match slot.as_mut() {
                Some(s) if s.0 == level => s,
                _ => slot.insert((level, zstd::bulk::Compressor::new(level)?, Vec::new())),
            };
            out.clear();
            out.reserve(zstd::zstd_safe::compress_bound(data.len()));
            cctx.compress_to_buffer(data, out)?;
            Ok(out.to_vec())
        })
        .map_err(|e: std::io::Error| FormatError::Compression(e.to_string()))
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

    /// A reader that returns a few bytes at a time, as pipes and slow disks may.
    struct Trickle<'a>(&'a [u8], usize);

    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            self.1 = self.1 % 7 + 1;
            let n = self.1.min(out.len()).min(self.0.len());
            out[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    fn file_chunks(mut c: FileChunker<impl Read>) -> (Vec<(usize, usize)>, FileDigest) {
        let mut out = Vec::new();
        while let Some(v) = c.next_chunk().unwrap() {
            assert_eq!(v.id, ChunkId::of(v.data));
            out.push((v.offset as usize, v.data.len()));
        }
        (out, c.finish())
    }

    /// The file chunker cuts where FastCDC cuts over the whole content, across reads
    /// and buffer refills, and its file hash is the blake3 of the content.
    #[test]
    fn file_chunker_agrees_with_the_slice_and_hashes_the_file() {
        let noisy = sample(3 << 20);
        let mut mixed = sample(1 << 20);
        mixed.extend(std::iter::repeat_n(0u8, 1 << 20));
        mixed.extend(sample(700_001));
        let small = ChunkParams {
            min: 1 << 10,
            avg: 4 << 10,
            max: 16 << 10,
            ..ChunkParams::default()
        };
        for data in [&noisy[..], &mixed[..], &noisy[..1], &noisy[..20_000], &[]] {
            for p in [ChunkParams::default(), small] {
                let want: Vec<_> = chunk_slice(data, p).unwrap().collect();
                assert_eq!(want.iter().map(|c| c.1).sum::<usize>(), data.len());
                assert!(want.iter().all(|c| c.1 <= p.max as usize));
                let digest = FileDigest {
                    size: data.len() as u64,
                    hash: Digest::of(data),
                };
                let got = file_chunks(FileChunker::new(data, p).unwrap());
                assert_eq!(got, (want.clone(), digest));
                if data.len() < (1 << 20) {
                    let got = file_chunks(FileChunker::new(Trickle(data, 0), p).unwrap());
                    assert_eq!(got, (want, digest));
                }
            }
        }
    }

    /// The reused encoder context writes the frames a fresh one writes, whatever
    /// the chunks before (the archive's bytes must not depend on the order in which a
    /// thread happened to compress chunks).
    #[test]
    fn the_reused_encoder_writes_the_bytes_of_a_fresh_one() {
        let data = sample(300_000);
        let mut text = Vec::new();
        while text.len() < 300_000 {
            text.extend_from_slice(b"fn main() { println!(\"hello\"); } // ferry\n");
        }
        for level in [1, 3, 19, 3] {
            for (d, n) in [(&text, 262_144), (&data, 70_000), (&text, 100), (&data, 0)] {
                let fresh = zstd::bulk::compress(&d[..n], level).unwrap();
                assert_eq!(compress_chunk(&d[..n], level).unwrap(), fresh);
            }
        }
    }

    /// The two-lane scan cuts where the crate's `cut` does: over windows of every
    /// kind of length (below `min`, odd, between `avg` and `max`, beyond `max`),
    /// parameters from the smallest FastCDC allows to the default, and content where
    /// cut points are frequent, rare (zeros: only `max`) or periodic.
    #[test]
    fn the_two_lane_cutter_cuts_where_fastcdc_does() {
        let params = [
            (64, 256, 1024),
            (1 << 10, 4 << 10, 64 << 10),
            (2 << 10, 8 << 10, 16 << 10),
            (16 << 10, 64 << 10, 256 << 10),
        ];
        let noisy = sample(600_000);
        let text: Vec<u8> = noisy
            .iter()
            .map(|b| b"etaoin shrdlu\n"[*b as usize % 14])
            .collect();
        let periodic: Vec<u8> = (0..600_000).map(|i| (i % 3) as u8 * 7).collect();
        let zeros = vec![0u8; 600_000];
        for (min, avg, max) in params {
            for level in 0..=3 {
                let p = ChunkParams {
                    min,
                    avg,
                    max,
                    normalization: level,
                    ..ChunkParams::default()
                };
                let c = Cutter::new(p);
                let (ms, ml) = (c.mask_s, c.mask_l);
                let (min, avg, max) = (min as usize, avg as usize, max as usize);
                for data in [&noisy, &text, &periodic, &zeros] {
                    let mut at = 0;
                    for len in [0, 1, min, min + 1, min + 3, avg - 1, avg + 64, max - 1, max] {
                        let w = &data[at..at + len];
                        let want = fastcdc::v2020::cut(w, min, avg, max, ms, ml, ms << 1, ml << 1);
                        assert_eq!(
                            c.cut(w),
                            want.1,
                            "{min}/{avg}/{max} nc {level}, {len} bytes"
                        );
                        at += 997;
                    }
                    let want: Vec<_> = chunk_slice(data, p).unwrap().collect();
                    let mut got = Vec::new();
                    let mut at = 0;
                    while at < data.len() {
                        let n = c.cut(&data[at..]);
                        got.push((at, n));
                        at += n;
                    }
                    assert_eq!(got, want, "{min}/{avg}/{max} nc {level}");
                }
            }
        }
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

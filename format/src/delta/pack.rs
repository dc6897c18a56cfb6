//! Coding a diff's raw streams (FORMAT.md §3.6): the control and extra streams each
//! under the smallest of a few LZMA2 settings and bzip3, and the differences under
//! the smaller of two layouts — dense with bzip3, or split into zero runs, non-zero
//! runs and literals under LZMA2. Candidates are compressed on parallel threads into
//! caller-made sinks; nothing is held in memory in proportion to the streams.

use std::io::{self, Read, Write};

use super::streams::{self, Encoder, MAX_DICT, MIN_BZIP3_BLOCK, put_varint};
use super::{DiffLayout, StreamCodec, StreamHeader};
use crate::error::{FormatError, Result};

/// A raw stream [`pack`] can read more than once (each candidate codec reads it).
pub trait RawSource: Sync {
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// A reader from the stream's first byte.
    fn open(&self) -> io::Result<Box<dyn Read + Send + '_>>;
}

impl RawSource for &[u8] {
    fn len(&self) -> u64 {
        <[u8]>::len(self) as u64
    }
    fn open(&self) -> io::Result<Box<dyn Read + Send + '_>> {
        Ok(Box::new(*self))
    }
}

/// The compressed streams of one diff object, in object order, each with its header.
pub struct Packed<W> {
    pub layout: DiffLayout,
    pub streams: Vec<(StreamHeader, W)>,
    /// The difference streams of the layout not chosen, for reports.
    pub other: Vec<StreamHeader>,
}

impl<W> Packed<W> {
    /// Bytes of the streams together.
    pub fn stored_len(&self) -> u64 {
        self.streams.iter().map(|(h, _)| h.stored_len).sum()
    }
}

/// LZMA2 dictionary for a stream of `raw_len` bytes: no larger than the stream (a
/// larger one only costs the agent memory) nor than `cap`.
fn dict_for(raw_len: u64, cap: u32) -> u32 {
    raw_len.next_power_of_two().clamp(4096, u64::from(cap)) as u32
}

fn lzma2(raw_len: u64, cap: u32, lc: u8, lp: u8, pb: u8) -> StreamCodec {
    StreamCodec::Lzma2 {
        dict_size: dict_for(raw_len, cap),
        lc,
        lp,
        pb,
    }
}

/// Dictionary cap of every stream but the literals: together with the literals'
/// [`MAX_DICT`] it keeps any object within [`streams::DECODER_MEMORY_LIMIT`].
const SMALL_DICT: u32 = 8 << 20;
/// Largest bzip3 block for the control and extra streams (see [`SMALL_DICT`]).
const SMALL_BZIP3_BLOCK: u32 = 1 << 20;

fn read_err(what: &str) -> impl Fn(io::Error) -> FormatError + '_ {
    move |e| FormatError::Compression(format!("reading the {what} stream: {e}"))
}

/// Compresses `src` with `codec` into a new sink.
fn compress_one<W: Write>(
    src: &dyn RawSource,
    codec: StreamCodec,
    sink: &(dyn Fn() -> io::Result<W> + Sync),
    what: &str,
) -> Result<(StreamHeader, W)> {
    let out = sink().map_err(|e| FormatError::Compression(format!("{what} stream: {e}")))?;
    let mut enc = Encoder::new(&codec, out)?;
    let mut r = src.open().map_err(read_err(what))?;
    io::copy(&mut r, &mut enc).map_err(read_err(what))?;
    let (raw_len, stored_len, w) = enc.finish()?;
    if raw_len != src.len() {
        return Err(FormatError::Compression(format!(
            "the {what} stream has {raw_len} bytes, expected {}",
            src.len()
        )));
    }
    Ok((
        StreamHeader {
            codec,
            raw_len,
            stored_len,
        },
        w,
    ))
}

/// The smallest of `candidates` for `src`, stored raw when none shrinks it.
fn smallest<W: Write>(
    src: &dyn RawSource,
    candidates: &[StreamCodec],
    sink: &(dyn Fn() -> io::Result<W> + Sync),
    what: &str,
) -> Result<(StreamHeader, W)> {
    let mut best: Option<(StreamHeader, W)> = None;
    if !src.is_empty() {
        for &codec in candidates {
            let c = compress_one(src, codec, sink, what)?;
            if best
                .as_ref()
                .is_none_or(|b| c.0.stored_len < b.0.stored_len)
            {
                best = Some(c);
            }
        }
    }
    match best {
        Some(b) if b.0.stored_len < src.len() => Ok(b),
        _ => compress_one(src, StreamCodec::Stored, sink, what),
    }
}

/// Codecs tried for the control and extra streams: LZMA2 tuned for byte-aligned
/// varints, LZMA2's defaults (machine code in extra bytes), and bzip3.
fn small_candidates(raw_len: u64) -> Vec<StreamCodec> {
    vec![
        lzma2(raw_len, SMALL_DICT, 0, 0, 0),
        lzma2(raw_len, SMALL_DICT, 3, 0, 2),
        StreamCodec::Bzip3 {
            block_size: (raw_len.min(u64::from(SMALL_BZIP3_BLOCK)) as u32).max(MIN_BZIP3_BLOCK),
        },
    ]
}

/// bzip3 block sizes tried for the dense layout: 1, 2 and 4 MiB measured best on
/// different release pairs; a block larger than the stream is the same as one that
/// fits it.
fn dense_candidates(raw_len: u64) -> Vec<StreamCodec> {
    let mut out: Vec<StreamCodec> = Vec::new();
    for mib in [1u32, 2, 4] {
        let block = (u64::from(mib << 20).min(raw_len) as u32).max(MIN_BZIP3_BLOCK);
        let c = StreamCodec::Bzip3 { block_size: block };
        if !out.contains(&c) {
            out.push(c);
        }
    }
    out
}

/// Splits the dense differences into the three raw sparse streams as they are
/// written: zero-run lengths, non-zero-run lengths minus one (varints), literals.
struct SparseSplit<Z: Write, N: Write, L: Write> {
    zeros: Z,
    runs: N,
    literals: L,
    zero_run: u64,
    /// Non-zero bytes of the current run; 0 while in a zero run.
    lit_run: u64,
    varint: Vec<u8>,
}

impl<Z: Write, N: Write, L: Write> SparseSplit<Z, N, L> {
    fn new(zeros: Z, runs: N, literals: L) -> Self {
        SparseSplit {
            zeros,
            runs,
            literals,
            zero_run: 0,
            lit_run: 0,
            varint: Vec::with_capacity(streams::MAX_VARINT_LEN),
        }
    }

    fn put(w: &mut impl Write, varint: &mut Vec<u8>, v: u64) -> io::Result<()> {
        varint.clear();
        put_varint(varint, v);
        w.write_all(varint)
    }

    /// Writes the final zero run (covering trailing zeros, possibly none).
    fn finish(mut self) -> io::Result<(Z, N, L)> {
        if self.lit_run > 0 {
            Self::put(&mut self.runs, &mut self.varint, self.lit_run - 1)?;
            self.zero_run = 0;
        }
        Self::put(&mut self.zeros, &mut self.varint, self.zero_run)?;
        Ok((self.zeros, self.runs, self.literals))
    }
}

impl<Z: Write, N: Write, L: Write> Write for SparseSplit<Z, N, L> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut i = 0;
        while i < buf.len() {
            if self.lit_run == 0 {
                let k = buf[i..]
                    .iter()
                    .position(|&b| b != 0)
                    .unwrap_or(buf.len() - i);
                self.zero_run += k as u64;
                i += k;
                if i == buf.len() {
                    break;
                }
                Self::put(&mut self.zeros, &mut self.varint, self.zero_run)?;
                self.zero_run = 0;
            }
            let k = buf[i..]
                .iter()
                .position(|&b| b == 0)
                .unwrap_or(buf.len() - i);
            self.literals.write_all(&buf[i..i + k])?;
            self.lit_run += k as u64;
            i += k;
            if i < buf.len() {
                Self::put(&mut self.runs, &mut self.varint, self.lit_run - 1)?;
                self.lit_run = 0;
            }
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Discards bytes, counting them.
#[derive(Default)]
struct Count(u64);

impl Write for Count {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0 += b.len() as u64;
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The sparse layout's three streams, LZMA2 with literal properties tuned on real
/// release pairs (zero runs: lc=1; run lengths and literals: lc=lp=pb=0).
fn sparse_streams<W: Write>(
    diff: &dyn RawSource,
    sink: &(dyn Fn() -> io::Result<W> + Sync),
) -> Result<Vec<(StreamHeader, W)>> {
    // A first pass sizes the streams, so each dictionary fits its stream.
    let mut sizes = SparseSplit::new(Count::default(), Count::default(), Count::default());
    io::copy(&mut diff.open().map_err(read_err("diff"))?, &mut sizes).map_err(read_err("diff"))?;
    let (z, n, l) = sizes.finish().map_err(read_err("diff"))?;
    let codec = |len: u64, cap, lc| {
        if len == 0 {
            StreamCodec::Stored
        } else {
            lzma2(len, cap, lc, 0, 0)
        }
    };
    let codecs = [
        codec(z.0, SMALL_DICT, 1),
        codec(n.0, SMALL_DICT, 0),
        codec(l.0, MAX_DICT, 0),
    ];
    let names = ["zero runs", "non-zero runs", "literals"];
    let open = |i: usize| -> Result<io::BufWriter<Encoder<W>>> {
        let out =
            sink().map_err(|e| FormatError::Compression(format!("{} stream: {e}", names[i])))?;
        Ok(io::BufWriter::with_capacity(
            64 << 10,
            Encoder::new(&codecs[i], out)?,
        ))
    };
    let mut split = SparseSplit::new(open(0)?, open(1)?, open(2)?);
    io::copy(&mut diff.open().map_err(read_err("diff"))?, &mut split).map_err(read_err("diff"))?;
    let (z, n, l) = split.finish().map_err(read_err("diff"))?;
    let mut out = Vec::with_capacity(3);
    for (i, w) in [z, n, l].into_iter().enumerate() {
        let enc = w
            .into_inner()
            .map_err(|e| FormatError::Compression(format!("{}: {}", names[i], e.error())))?;
        let (raw_len, stored_len, w) = enc.finish()?;
        out.push((
            StreamHeader {
                codec: codecs[i],
                raw_len,
                stored_len,
            },
            w,
        ));
    }
    Ok(out)
}

/// Bytes a stream's entry adds to the header (fixed-width encoding: depends only on
/// the codec variant).
fn header_cost(h: &StreamHeader) -> u64 {
    crate::codec::encode(h).len() as u64
}

/// Compresses the raw streams of [`super::encode::encode`] into the smaller of the two layouts:
/// dense differences with bzip3 (best block size of 1, 2, 4 MiB) or sparse with
/// LZMA2; control and extra each with the smallest of a few LZMA2 settings and
/// bzip3. Candidates are compressed on parallel threads into sinks made by `sink`;
/// the losers' sinks are dropped. Memory: a few compressor states (LZMA2 9e needs
/// about 10x its dictionary, so at most ~600 MiB together), nothing proportional to
/// the streams.
pub fn pack<W: Write + Send>(
    control: &dyn RawSource,
    diff: &dyn RawSource,
    extra: &dyn RawSource,
    sink: &(dyn Fn() -> io::Result<W> + Sync),
) -> Result<Packed<W>> {
    let join = |h: std::thread::ScopedJoinHandle<'_, _>| {
        h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
    };
    let (control, dense, sparse, extra) = std::thread::scope(|s| {
        let c = s.spawn(|| smallest(control, &small_candidates(control.len()), sink, "control"));
        let e = s.spawn(|| smallest(extra, &small_candidates(extra.len()), sink, "extra"));
        let d = s.spawn(|| smallest(diff, &dense_candidates(diff.len()), sink, "diff"));
        let sp = sparse_streams(diff, sink);
        (join(c), join(d), sp, join(e))
    });
    let (control, dense, sparse, extra) = (control?, dense?, sparse?, extra?);
    let dense_cost = dense.0.stored_len + header_cost(&dense.0);
    let sparse_cost: u64 = sparse
        .iter()
        .map(|(h, _)| h.stored_len + header_cost(h))
        .sum();
    let (layout, middle, other) = if sparse_cost < dense_cost {
        (DiffLayout::Sparse, sparse, vec![dense.0])
    } else {
        let other = sparse.iter().map(|(h, _)| *h).collect();
        (DiffLayout::Dense, vec![dense], other)
    };
    let mut streams = Vec::with_capacity(5);
    streams.push(control);
    streams.extend(middle);
    streams.push(extra);
    Ok(Packed {
        layout,
        streams,
        other,
    })
}

/// Dictionary cap of the address-map stream: with every other stream at its cap the
/// decoders still fit [`streams::DECODER_MEMORY_LIMIT`] (maps are tens of KiB).
const MAP_DICT: u32 = 1 << 20;

/// Compresses an address-map stream (FORMAT.md §3.6.1) with the smaller of two LZMA2
/// settings (varints of run gaps and shift changes), or stores it.
pub fn pack_map<W: Write>(
    map: &dyn RawSource,
    sink: &(dyn Fn() -> io::Result<W> + Sync),
) -> Result<(StreamHeader, W)> {
    let candidates = [
        lzma2(map.len(), MAP_DICT, 0, 0, 0),
        lzma2(map.len(), MAP_DICT, 1, 0, 0),
    ];
    smallest(map, &candidates, sink, "address map")
}

/// The whole object for `header` fields and packed streams in memory.
pub fn object_in_memory(header: &super::DiffHeader, packed: &Packed<Vec<u8>>) -> Vec<u8> {
    let mut out = header.encode_prefix();
    for (_, data) in &packed.streams {
        out.extend_from_slice(data);
    }
    out
}

/// [`pack`] into memory, for raw streams already in memory.
pub fn pack_in_memory(control: &[u8], diff: &[u8], extra: &[u8]) -> Result<Packed<Vec<u8>>> {
    pack(&control, &diff, &extra, &|| Ok(Vec::new()))
}

/// Splits `data` into the sparse streams through [`SparseSplit`], fed `piece` bytes at
/// a time; returns the sizes a counting pass finds.
#[cfg(test)]
pub(crate) fn split_for_tests(
    data: &[u8],
    piece: usize,
    z: &mut Vec<u8>,
    n: &mut Vec<u8>,
    l: &mut Vec<u8>,
) -> (usize, usize, usize) {
    let mut split = SparseSplit::new(z, n, l);
    let mut count = SparseSplit::new(Count::default(), Count::default(), Count::default());
    for p in data.chunks(piece) {
        split.write_all(p).unwrap();
        count.write_all(p).unwrap();
    }
    split.finish().unwrap();
    let (a, b, c) = count.finish().unwrap();
    (a.0 as usize, b.0 as usize, c.0 as usize)
}

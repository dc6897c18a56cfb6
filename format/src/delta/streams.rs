//! The codecs of diff-object streams (FORMAT.md §3.6) and the integer encodings of
//! their raw contents. Decoders trust nothing: a stream must decode to exactly its
//! `raw_len` bytes from exactly its `stored_len` bytes, and every buffer a decoder
//! allocates is bounded by parameters [`check_codec`] has accepted.

use std::io::{self, BufReader, Read, Write};

use bzip3::{BlockSize, Bz3State};
use liblzma::stream::{Filters, LzmaOptions, PRESET_EXTREME, Stream};

use super::StreamCodec;
use super::bcj::{X86Reader, X86Writer};
use crate::error::{FormatError, Result};

/// Largest LZMA2 dictionary a stream may use.
pub const MAX_DICT: u32 = 16 << 20;
/// Largest bzip3 block a stream may use: a decoder needs about 6 times the block.
pub const MAX_BZIP3_BLOCK: u32 = 4 << 20;
/// Largest zstd window a stream may use (32 MiB): what the decoder keeps.
pub const MAX_ZSTD_WINDOW_LOG: u8 = 25;
/// Smallest zstd window the format knows (RFC 8878's minimum, 1 KiB).
pub const MIN_ZSTD_WINDOW_LOG: u8 = 10;
/// Smallest bzip3 block the library accepts.
pub const MIN_BZIP3_BLOCK: u32 = bzip3::BLOCK_SIZE_MIN;
/// Memory all the decoders of one object may need together ([`decoder_memory`]): what
/// an agent commits to applying a diff, whatever the release size.
pub const DECODER_MEMORY_LIMIT: u64 = 56 << 20;
/// Longest LEB128 encoding of a u64.
pub const MAX_VARINT_LEN: usize = 10;

const BZ3_MAGIC: &[u8; 5] = b"BZ3v1";

/// Checks a codec's parameters against the format's limits; the reason on failure.
pub fn check_codec(codec: &StreamCodec, raw_len: u64, stored_len: u64) -> Result<(), String> {
    match *codec {
        StreamCodec::Stored if raw_len != stored_len => Err(format!(
            "stored stream of {stored_len} bytes claims {raw_len} raw bytes"
        )),
        StreamCodec::Stored => Ok(()),
        StreamCodec::Lzma2 {
            dict_size,
            lc,
            lp,
            pb,
        } => {
            if !(4096..=MAX_DICT).contains(&dict_size) {
                Err(format!(
                    "LZMA2 dictionary of {dict_size} bytes, outside 4096..={MAX_DICT}"
                ))
            } else if u32::from(lc) + u32::from(lp) > 4 || pb > 4 {
                Err(format!(
                    "LZMA2 properties lc={lc} lp={lp} pb={pb} (need lc+lp <= 4, pb <= 4)"
                ))
            } else {
                Ok(())
            }
        }
        StreamCodec::Bzip3 { block_size } => {
            if !(MIN_BZIP3_BLOCK..=MAX_BZIP3_BLOCK).contains(&block_size) {
                Err(format!(
                    "bzip3 block of {block_size} bytes, outside {MIN_BZIP3_BLOCK}..={MAX_BZIP3_BLOCK}"
                ))
            } else {
                Ok(())
            }
        }
        StreamCodec::Zstd { window_log } | StreamCodec::ZstdX86 { window_log } => {
            if !(MIN_ZSTD_WINDOW_LOG..=MAX_ZSTD_WINDOW_LOG).contains(&window_log) {
                Err(format!(
                    "zstd window of 2^{window_log} bytes, outside 2^{MIN_ZSTD_WINDOW_LOG}..=2^{MAX_ZSTD_WINDOW_LOG}"
                ))
            } else {
                Ok(())
            }
        }
    }
}

/// Memory a decoder of `codec` may allocate, counted generously: LZMA2 needs its
/// dictionary plus probability tables; bzip3 a suffix array (4 bytes per block byte),
/// two block buffers and its model; zstd its window plus a block and its tables.
pub fn decoder_memory(codec: &StreamCodec) -> u64 {
    match *codec {
        StreamCodec::Stored => 0,
        StreamCodec::Lzma2 { dict_size, .. } => u64::from(dict_size) + (1 << 20),
        StreamCodec::Bzip3 { block_size } => 6 * u64::from(block_size) + (2 << 20),
        StreamCodec::Zstd { window_log } => (1u64 << window_log) + (1 << 20),
        // The filter holds one 256 KiB buffer.
        StreamCodec::ZstdX86 { window_log } => (1u64 << window_log) + (1 << 20) + (256 << 10),
    }
}

/// Appends `v` as LEB128 (7 bits per byte, low first, high bit = more follows).
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Maps signed to unsigned so that small magnitudes stay small: 0, -1, 1, -2 -> 0, 1, 2, 3.
pub fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

/// The inverse of [`zigzag`].
pub fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn compression(e: impl std::fmt::Display) -> FormatError {
    FormatError::Compression(e.to_string())
}

fn lzma2_filters(dict_size: u32, lc: u8, lp: u8, pb: u8) -> Result<Filters> {
    let mut opts = LzmaOptions::new_preset(9 | PRESET_EXTREME).map_err(compression)?;
    opts.dict_size(dict_size)
        .literal_context_bits(lc.into())
        .literal_position_bits(lp.into())
        .position_bits(pb.into());
    let mut filters = Filters::new();
    filters.lzma2(&opts);
    Ok(filters)
}

/// Counts the bytes written through it.
struct Counting<W> {
    inner: W,
    n: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(b)?;
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

enum EncoderKind<W: Write> {
    Stored(Counting<W>),
    Lzma2(liblzma::write::XzEncoder<Counting<W>>),
    Bzip3(Bzip3Writer<Counting<W>>),
    Zstd(zstd::stream::write::Encoder<'static, Counting<W>>),
    ZstdX86(X86Writer<zstd::stream::write::Encoder<'static, Counting<W>>>),
}

/// Compresses one raw stream with a given codec into `W`.
pub struct Encoder<W: Write> {
    kind: EncoderKind<W>,
    raw: u64,
}

/// The zstd level of [`Encoder::new`]; [`Encoder::with_level`] picks another.
pub const DEFAULT_ZSTD_LEVEL: i32 = 19;

impl<W: Write> Encoder<W> {
    pub fn new(codec: &StreamCodec, out: W) -> Result<Self> {
        Self::with_level(codec, DEFAULT_ZSTD_LEVEL, out)
    }

    /// [`Encoder::new`] with the zstd level for a [`StreamCodec::Zstd`] stream (the
    /// other codecs have none). A zstd stream matches over its whole window
    /// (long-distance matching) and carries no checksum: chunk ids check it.
    pub fn with_level(codec: &StreamCodec, level: i32, out: W) -> Result<Self> {
        Self::with_options(codec, level, 0, out)
    }

    /// [`Encoder::with_level`] with `threads` zstd worker threads (0: in line).
    pub fn with_options(codec: &StreamCodec, level: i32, threads: u32, out: W) -> Result<Self> {
        let out = Counting { inner: out, n: 0 };
        let kind = match *codec {
            StreamCodec::Stored => EncoderKind::Stored(out),
            StreamCodec::Lzma2 {
                dict_size,
                lc,
                lp,
                pb,
            } => {
                let filters = lzma2_filters(dict_size, lc, lp, pb)?;
                let stream = Stream::new_raw_encoder(&filters).map_err(compression)?;
                EncoderKind::Lzma2(liblzma::write::XzEncoder::new_stream(out, stream))
            }
            StreamCodec::Bzip3 { block_size } => {
                EncoderKind::Bzip3(Bzip3Writer::new(out, block_size)?)
            }
            StreamCodec::Zstd { window_log } => {
                EncoderKind::Zstd(zstd_encoder(out, level, window_log, threads)?)
            }
            StreamCodec::ZstdX86 { window_log } => EncoderKind::ZstdX86(X86Writer::new(
                zstd_encoder(out, level, window_log, threads)?,
            )),
        };
        Ok(Encoder { kind, raw: 0 })
    }

    /// Ends the stream: (raw bytes taken, stored bytes written, the sink).
    pub fn finish(self) -> Result<(u64, u64, W)> {
        let out = match self.kind {
            EncoderKind::Stored(w) => w,
            EncoderKind::Lzma2(e) => e.finish().map_err(compression)?,
            EncoderKind::Bzip3(e) => e.finish()?,
            EncoderKind::Zstd(e) => e.finish().map_err(compression)?,
            EncoderKind::ZstdX86(e) => e
                .finish()
                .map_err(compression)?
                .finish()
                .map_err(compression)?,
        };
        Ok((self.raw, out.n, out.inner))
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let n = match &mut self.kind {
            EncoderKind::Stored(w) => w.write(b)?,
            EncoderKind::Lzma2(w) => w.write(b)?,
            EncoderKind::Bzip3(w) => w.write(b)?,
            EncoderKind::Zstd(w) => w.write(b)?,
            EncoderKind::ZstdX86(w) => w.write(b)?,
        };
        self.raw += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        match &mut self.kind {
            EncoderKind::Stored(w) => w.flush(),
            EncoderKind::Lzma2(w) => w.flush(),
            EncoderKind::Bzip3(w) => w.flush(),
            EncoderKind::Zstd(w) => w.flush(),
            EncoderKind::ZstdX86(w) => w.flush(),
        }
    }
}

/// Writes the bzip3 file format: magic, block size (i32 LE), then per block the
/// compressed size and raw size (i32 LE each) and the compressed block. Blocks are
/// compressed as they fill; the crate's own writer is not used so that the encoder
/// and [`Bzip3Reader`] share one explicit definition of the framing.
struct Bzip3Writer<W: Write> {
    out: W,
    state: Bz3State,
    block: usize,
    buf: Vec<u8>,
    filled: usize,
}

impl<W: Write> Bzip3Writer<W> {
    fn new(mut out: W, block_size: u32) -> Result<Self> {
        let bs = BlockSize::new(block_size)
            .ok_or_else(|| compression(format!("bad bzip3 block size {block_size}")))?;
        out.write_all(BZ3_MAGIC).map_err(compression)?;
        out.write_all(&(block_size as i32).to_le_bytes())
            .map_err(compression)?;
        Ok(Bzip3Writer {
            out,
            state: Bz3State::new(bs),
            block: block_size as usize,
            buf: vec![0; bzip3::bound(block_size as usize)],
            filled: 0,
        })
    }

    fn flush_block(&mut self) -> io::Result<()> {
        if self.filled == 0 {
            return Ok(());
        }
        let n = self
            .state
            .encode_block(&mut self.buf, self.filled)
            .map_err(io::Error::other)?;
        self.out.write_all(&(n as i32).to_le_bytes())?;
        self.out.write_all(&(self.filled as i32).to_le_bytes())?;
        self.out.write_all(&self.buf[..n])?;
        self.filled = 0;
        Ok(())
    }

    fn finish(mut self) -> Result<W> {
        self.flush_block().map_err(compression)?;
        Ok(self.out)
    }
}

impl<W: Write> Write for Bzip3Writer<W> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let n = b.len().min(self.block - self.filled);
        self.buf[self.filled..self.filled + n].copy_from_slice(&b[..n]);
        self.filled += n;
        if self.filled == self.block {
            self.flush_block()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Counts the bytes read through it.
struct CountingReader<R> {
    inner: R,
    n: u64,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(b)?;
        self.n += n as u64;
        Ok(n)
    }
}

/// Reads the bzip3 framing of [`Bzip3Writer`], refusing a header block size other
/// than the declared one and any block claiming more than the block size.
struct Bzip3Reader<R> {
    inner: CountingReader<R>,
    state: Bz3State,
    block: usize,
    buf: Vec<u8>,
    pos: usize,
    len: usize,
}

fn bad_data(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

impl<R: Read> Bzip3Reader<R> {
    fn new(inner: R, block_size: u32) -> Result<Self> {
        let mut inner = CountingReader { inner, n: 0 };
        let mut head = [0u8; 9];
        inner
            .read_exact(&mut head)
            .map_err(|e| corrupt(format!("bzip3 header: {e}")))?;
        let declared = i32::from_le_bytes(head[5..].try_into().expect("4 bytes"));
        if &head[..5] != BZ3_MAGIC || declared as i64 != i64::from(block_size) {
            return Err(corrupt(format!(
                "bzip3 header does not match the declared block size {block_size}"
            )));
        }
        let bs = BlockSize::new(block_size)
            .ok_or_else(|| corrupt(format!("bad bzip3 block size {block_size}")))?;
        Ok(Bzip3Reader {
            inner,
            state: Bz3State::new(bs),
            block: block_size as usize,
            buf: vec![0; bzip3::bound(block_size as usize)],
            pos: 0,
            len: 0,
        })
    }

    /// Decodes the next block; false at a clean end of the stream.
    fn next_block(&mut self) -> io::Result<bool> {
        let mut head = [0u8; 8];
        let mut got = 0;
        while got < 8 {
            match self.inner.read(&mut head[got..])? {
                0 if got == 0 => return Ok(false),
                0 => return Err(bad_data("bzip3 block header cut short".into())),
                n => got += n,
            }
        }
        let stored = i32::from_le_bytes(head[..4].try_into().expect("4 bytes"));
        let raw = i32::from_le_bytes(head[4..].try_into().expect("4 bytes"));
        let stored = usize::try_from(stored)
            .ok()
            .filter(|&n| n <= self.buf.len());
        let raw = usize::try_from(raw)
            .ok()
            .filter(|&n| n >= 1 && n <= self.block);
        let (Some(stored), Some(raw)) = (stored, raw) else {
            return Err(bad_data(format!(
                "bzip3 block sizes outside the {}-byte block",
                self.block
            )));
        };
        self.inner.read_exact(&mut self.buf[..stored])?;
        self.state
            .decode_block(&mut self.buf, stored, raw)
            .map_err(|e| bad_data(format!("bzip3 block: {e}")))?;
        (self.pos, self.len) = (0, raw);
        Ok(true)
    }
}

impl<R: Read> Read for Bzip3Reader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        if self.pos == self.len && !self.next_block()? {
            return Ok(0);
        }
        let n = out.len().min(self.len - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// A zstd frame matching over its whole window (long-distance matching) with no
/// checksum: chunk ids check what it decodes to.
fn zstd_encoder<W: Write>(
    out: W,
    level: i32,
    window_log: u8,
    threads: u32,
) -> Result<zstd::stream::write::Encoder<'static, W>> {
    let mut e = zstd::stream::write::Encoder::new(out, level).map_err(compression)?;
    e.window_log(window_log.into()).map_err(compression)?;
    e.long_distance_matching(true).map_err(compression)?;
    e.include_checksum(false).map_err(compression)?;
    if threads > 0 {
        e.multithread(threads).map_err(compression)?;
    }
    Ok(e)
}

fn zstd_decoder<R: Read>(stored: R, window_log: u8, name: &'static str) -> Result<ZstdReader<R>> {
    let counted = CountingReader {
        inner: stored,
        n: 0,
    };
    let bad = |e: io::Error| corrupt(format!("{name} stream: {e}"));
    let mut d =
        zstd::stream::read::Decoder::with_buffer(BufReader::with_capacity(64 << 10, counted))
            .map_err(bad)?;
    // A frame asking for a larger window than the header declared is refused, so the
    // decoder never allocates past what was checked.
    d.window_log_max(window_log.into()).map_err(bad)?;
    Ok(d.single_frame())
}

/// Stored bytes a zstd decoder has used: what its buffer read ahead of the frame's
/// end was not.
fn zstd_used<R: Read>(d: &ZstdReader<R>) -> u64 {
    d.get_ref().get_ref().n - d.get_ref().buffer().len() as u64
}

fn corrupt(reason: String) -> FormatError {
    FormatError::Malformed {
        kind: "diff stream",
        reason,
    }
}

enum DecoderKind<R: Read> {
    Stored(CountingReader<R>),
    Lzma2(liblzma::bufread::XzDecoder<BufReader<R>>),
    Bzip3(Box<Bzip3Reader<R>>),
    Zstd(ZstdReader<R>),
    ZstdX86(X86Reader<ZstdReader<R>>),
}

type ZstdReader<R> = zstd::stream::read::Decoder<'static, BufReader<CountingReader<R>>>;

/// Decompresses one stream, checking it ends where its header says.
pub struct Decoder<R: Read> {
    kind: DecoderKind<R>,
    name: &'static str,
}

impl<R: Read> Decoder<R> {
    /// `codec` must have passed [`check_codec`] (as every header from
    /// [`super::DiffHeader::decode_prefix`] has).
    pub fn new(codec: &StreamCodec, stored: R, name: &'static str) -> Result<Self> {
        let kind = match *codec {
            StreamCodec::Stored => DecoderKind::Stored(CountingReader {
                inner: stored,
                n: 0,
            }),
            StreamCodec::Lzma2 {
                dict_size,
                lc,
                lp,
                pb,
            } => {
                let filters = lzma2_filters(dict_size, lc, lp, pb)
                    .map_err(|e| corrupt(format!("{name} stream: {e}")))?;
                let stream = Stream::new_raw_decoder(&filters)
                    .map_err(|e| corrupt(format!("{name} stream: {e}")))?;
                DecoderKind::Lzma2(liblzma::bufread::XzDecoder::new_stream(
                    BufReader::with_capacity(64 << 10, stored),
                    stream,
                ))
            }
            StreamCodec::Bzip3 { block_size } => DecoderKind::Bzip3(Box::new(
                Bzip3Reader::new(stored, block_size)
                    .map_err(|e| corrupt(format!("{name} stream: {e}")))?,
            )),
            StreamCodec::Zstd { window_log } => {
                DecoderKind::Zstd(zstd_decoder(stored, window_log, name)?)
            }
            StreamCodec::ZstdX86 { window_log } => {
                DecoderKind::ZstdX86(X86Reader::new(zstd_decoder(stored, window_log, name)?))
            }
        };
        Ok(Decoder { kind, name })
    }

    /// Fills `buf` entirely or fails naming the stream.
    pub fn fill(&mut self, buf: &mut [u8]) -> Result<()> {
        self.read_exact(buf)
            .map_err(|e| corrupt(format!("{} stream: {e}", self.name)))
    }

    /// Checks the stream ends here (no raw byte left) having used exactly `stored_len`
    /// compressed bytes.
    pub fn finish(mut self, stored_len: u64) -> Result<()> {
        let mut one = [0u8; 1];
        let more = self
            .read(&mut one)
            .map_err(|e| corrupt(format!("{} stream: {e}", self.name)))?;
        if more != 0 {
            return Err(corrupt(format!(
                "{} stream decodes past its raw length",
                self.name
            )));
        }
        let used = match &self.kind {
            DecoderKind::Stored(r) => r.n,
            DecoderKind::Lzma2(d) => d.total_in(),
            DecoderKind::Bzip3(d) => d.inner.n,
            // What the buffer read ahead of the frame's end was not used.
            DecoderKind::Zstd(d) => zstd_used(d),
            DecoderKind::ZstdX86(d) => zstd_used(d.get_ref()),
        };
        if used != stored_len {
            return Err(corrupt(format!(
                "{} stream ends after {used} of its {stored_len} stored bytes",
                self.name
            )));
        }
        Ok(())
    }
}

impl<R: Read> Read for Decoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.kind {
            DecoderKind::Stored(r) => r.read(buf),
            DecoderKind::Lzma2(r) => r.read(buf),
            DecoderKind::Bzip3(r) => r.read(buf),
            DecoderKind::Zstd(r) => r.read(buf),
            DecoderKind::ZstdX86(r) => r.read(buf),
        }
    }
}

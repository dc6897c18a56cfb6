//! Applying a diff: one sequential pass, memory bounded by the stream decoders
//! ([`super::streams::DECODER_MEMORY_LIMIT`]) and a few buffers whatever the release
//! size. The base is read at random positions through [`Base`] (a client
//! backs it with memory maps of its installed files); the output is handed to the
//! caller in order.

use std::io::Read;
use std::sync::mpsc;

use super::bcj::X86;
use super::streams::{Decoder, MAX_VARINT_LEN, unzigzag};
use super::{DiffHeader, DiffLayout, StreamCodec, StreamHeader};
use crate::error::{FormatError, Result};

/// Random access to the base a diff was made against.
pub trait Base {
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Fills `buf` from position `pos`; the caller guarantees `pos + buf.len() <= len()`.
    fn read_at(&self, pos: u64, buf: &mut [u8]) -> Result<()>;
    /// Announces that `len` bytes from `pos` will be read, after the reads announced
    /// before: [`apply`] decodes its control stream ahead, so a base that must prepare
    /// its bytes (the rewritten base of an algorithm-3 diff) can prepare them on
    /// another thread before they are wanted. Reading does not depend on it.
    fn will_read(&self, _pos: u64, _len: u64) {}
}

/// A base made of byte slices laid end to end (a release's files in manifest order).
pub struct ConcatBase<'a> {
    parts: Vec<&'a [u8]>,
    /// Start offset of each part, plus the total length at the end.
    starts: Vec<u64>,
}

impl<'a> ConcatBase<'a> {
    pub fn new(parts: Vec<&'a [u8]>) -> Self {
        let mut starts = Vec::with_capacity(parts.len() + 1);
        let mut at = 0u64;
        for p in &parts {
            starts.push(at);
            at += p.len() as u64;
        }
        starts.push(at);
        ConcatBase { parts, starts }
    }
}

impl Base for ConcatBase<'_> {
    fn len(&self) -> u64 {
        *self.starts.last().unwrap_or(&0)
    }

    fn read_at(&self, mut pos: u64, mut buf: &mut [u8]) -> Result<()> {
        // The last part containing `pos`: starts are sorted, empty parts share a start.
        let mut i = self.starts.partition_point(|&s| s <= pos).saturating_sub(1);
        while !buf.is_empty() {
            let part = self.parts.get(i).ok_or_else(|| FormatError::Malformed {
                kind: "diff",
                reason: format!("base read at {pos} beyond its end"),
            })?;
            let off = (pos - self.starts[i]) as usize;
            let n = (part.len() - off.min(part.len())).min(buf.len());
            buf[..n].copy_from_slice(&part[off..off + n]);
            buf = &mut buf[n..];
            pos += n as u64;
            i += 1;
        }
        Ok(())
    }
}

fn corrupt(reason: String) -> FormatError {
    FormatError::Malformed {
        kind: "diff",
        reason,
    }
}

/// Raw bytes a decoder thread hands over at a time, and how many pieces may wait:
/// bounds the memory of every stream to a few hundred KiB beyond its decoder.
const PIECE: usize = 256 << 10;
const DEPTH: usize = 3;
/// Output produced per call of the sink.
const BUF: usize = 256 << 10;

type Piece = Result<Vec<u8>>;

/// Room left at the front of each piece of a filtered stream for the bytes the x86
/// filter held back from the previous one.
const HEADROOM: usize = 4;

/// Decodes one stream on its own thread with `codec`, sending exactly `raw_len` bytes
/// in pieces (each after `headroom` spare bytes), then an error if the stream does
/// not end there or did not use all its stored bytes. Stops quietly when the applying
/// side hangs up.
fn pump(
    name: &'static str,
    (h, codec, headroom): (&StreamHeader, StreamCodec, usize),
    stored: impl Read,
    tx: &mpsc::SyncSender<Piece>,
) -> Result<()> {
    let mut dec = Decoder::new(&codec, stored, name)?;
    let mut left = h.raw_len;
    while left > 0 {
        let mut piece = vec![0u8; headroom + left.min(PIECE as u64) as usize];
        dec.fill(&mut piece[headroom..])?;
        left -= (piece.len() - headroom) as u64;
        if tx.send(Ok(piece)).is_err() {
            return Ok(());
        }
    }
    dec.finish(h.stored_len)
}

/// Targets from this size on decode their streams on threads; below it, spawning
/// threads costs more than decoding a few small streams in line.
const THREADS_FROM: u64 = 4 << 20;

/// Where a stream's raw bytes come from.
enum Source<'a> {
    /// A decoder thread ([`pump`]).
    Thread(mpsc::Receiver<Piece>),
    /// A decoder run here, on demand, with the stream's stored length.
    Inline(Box<Decoder<Box<dyn Read + 'a>>>, u64),
}

/// The applying side of one stream: raw bytes in order, never past `raw_len`.
struct Incoming<'a> {
    src: Source<'a>,
    /// `cur[pos..end]` is ready; `cur[end..]`, the bytes the x86 filter holds back
    /// until more follow, is not.
    cur: Vec<u8>,
    pos: usize,
    end: usize,
    /// The x86 filter a `ZstdX86` stream's decoder thread left to this side, so the
    /// thread that is the fresh install's critical path only runs zstd.
    filter: Option<X86>,
    /// Raw bytes not yet received.
    left: u64,
    name: &'static str,
}

impl Incoming<'_> {
    /// Up to `max` (≥ 1) next bytes; fails if the stream has none left.
    fn take(&mut self, max: usize) -> Result<&[u8]> {
        // A loop, as a piece may leave nothing ready when the filter holds it all.
        while self.pos == self.end {
            if self.left == 0 {
                return Err(corrupt(format!("{} stream ends early", self.name)));
            }
            let (mut piece, headroom) = match &mut self.src {
                Source::Thread(rx) => match rx.recv() {
                    Ok(piece) => (piece?, if self.filter.is_some() { HEADROOM } else { 0 }),
                    Err(_) => return Err(corrupt(format!("{} stream ends early", self.name))),
                },
                Source::Inline(dec, _) => {
                    let mut piece = vec![0u8; self.left.min(PIECE as u64) as usize];
                    dec.fill(&mut piece)?;
                    (piece, 0)
                }
            };
            self.left = self.left.saturating_sub((piece.len() - headroom) as u64);
            let held = &self.cur[self.end..];
            // A piece carries exactly its headroom, so the held bytes (at most 4) fit.
            let start = headroom
                .checked_sub(held.len())
                .ok_or_else(|| corrupt(format!("{} stream: filter state lost", self.name)))?;
            piece[start..headroom].copy_from_slice(held);
            self.cur = piece;
            self.pos = start;
            self.end = match &mut self.filter {
                Some(f) if self.left > 0 => start + f.code(&mut self.cur[start..]),
                Some(f) => {
                    // The stream's last bytes are never converted.
                    f.code(&mut self.cur[start..]);
                    self.cur.len()
                }
                None => self.cur.len(),
            };
        }
        let n = max.min(self.end - self.pos);
        let out = &self.cur[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn varint(&mut self) -> Result<u64> {
        let mut v = 0u64;
        for i in 0..MAX_VARINT_LEN {
            let b = self.take(1)?[0];
            // The tenth byte holds only bit 63.
            if i == MAX_VARINT_LEN - 1 && b > 1 {
                break;
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(corrupt(format!(
            "{} stream: varint beyond 64 bits",
            self.name
        )))
    }

    /// Checks every raw byte was used and the decoder found the stream's end where
    /// the header puts it.
    fn finish(self) -> Result<()> {
        let unread = self.left + (self.cur.len() - self.pos) as u64;
        if unread != 0 {
            return Err(corrupt(format!(
                "{} stream has {unread} bytes beyond what the control stream uses",
                self.name
            )));
        }
        match self.src {
            Source::Thread(rx) => match rx.recv() {
                Err(_) => Ok(()),
                Ok(Err(e)) => Err(e),
                Ok(Ok(_)) => Err(corrupt(format!("{} stream is too long", self.name))),
            },
            Source::Inline(dec, stored_len) => dec.finish(stored_len),
        }
    }
}

/// The dense difference stream, read directly or rebuilt from the sparse streams.
enum Differences<'a> {
    Dense(Incoming<'a>),
    Sparse {
        zeros: Box<Incoming<'a>>,
        runs: Box<Incoming<'a>>,
        literals: Box<Incoming<'a>>,
        zero_left: u64,
        lit_left: u64,
        /// Whether the next run to read is a zero run.
        zero_next: bool,
        /// Difference bytes not yet described by a run.
        undescribed: u64,
    },
}

impl Differences<'_> {
    /// Adds the next `buf.len()` difference bytes to `buf` (which holds base bytes).
    fn add_to(&mut self, buf: &mut [u8]) -> Result<()> {
        match self {
            Differences::Dense(d) => {
                let mut i = 0;
                while i < buf.len() {
                    let piece = d.take(buf.len() - i)?;
                    for (x, y) in buf[i..i + piece.len()].iter_mut().zip(piece) {
                        *x = x.wrapping_add(*y);
                    }
                    i += piece.len();
                }
                Ok(())
            }
            Differences::Sparse {
                zeros,
                runs,
                literals,
                zero_left,
                lit_left,
                zero_next,
                undescribed,
            } => {
                let mut i = 0;
                while i < buf.len() {
                    let room = (buf.len() - i) as u64;
                    if *zero_left > 0 {
                        // Unchanged bytes: the base is already in place.
                        let k = (*zero_left).min(room);
                        *zero_left -= k;
                        i += k as usize;
                    } else if *lit_left > 0 {
                        let piece = literals.take((*lit_left).min(room) as usize)?;
                        for (x, y) in buf[i..i + piece.len()].iter_mut().zip(piece) {
                            *x = x.wrapping_add(*y);
                        }
                        *lit_left -= piece.len() as u64;
                        i += piece.len();
                    } else {
                        let (len, what) = if *zero_next {
                            (zeros.varint()?, "zero run")
                        } else {
                            (runs.varint()?.saturating_add(1), "non-zero run")
                        };
                        if len > *undescribed {
                            return Err(corrupt(format!(
                                "{what} of {len} bytes runs past the differences"
                            )));
                        }
                        *undescribed -= len;
                        if *zero_next {
                            *zero_left = len;
                        } else {
                            *lit_left = len;
                        }
                        *zero_next = !*zero_next;
                    }
                }
                Ok(())
            }
        }
    }

    fn finish(self) -> Result<()> {
        match self {
            Differences::Dense(d) => d.finish(),
            Differences::Sparse {
                mut zeros,
                runs,
                literals,
                zero_left,
                lit_left,
                zero_next,
                undescribed,
            } => {
                // After a non-zero run, the final zero run (of length 0) is still due.
                if zero_next && zeros.varint()? != 0 {
                    return Err(corrupt("final zero run past the differences".into()));
                }
                if zero_left + lit_left + undescribed != 0 {
                    return Err(corrupt(
                        "sparse streams describe more differences than the add runs use".into(),
                    ));
                }
                zeros.finish()?;
                runs.finish()?;
                literals.finish()
            }
        }
    }
}

/// Applies a diff to `base`, handing every produced byte, in order, to `out`.
/// For algorithm 3, `base` is the rewritten base ([`super::x86`]).
/// `streams` are readers of the object's data streams ([`DiffHeader::data_streams`]) in object order
/// ([`DiffHeader::stream_ranges`]); each is decoded on its own thread (the agent's
/// second core) while this one copies from the base, so the output runs at memory
/// speed where the release only moved. Fails on any stream that would read outside
/// the base, produce more than the header's `target_size`, end early or carry bytes
/// nothing uses; the caller still verifies every produced chunk against its id.
/// `header` must come from [`DiffHeader::decode_prefix`].
pub fn apply<B: Base + ?Sized, R: Read + Send>(
    header: &DiffHeader,
    base: &B,
    streams: Vec<R>,
    out: &mut dyn FnMut(&[u8]) -> Result<()>,
) -> Result<u64> {
    if base.len() != header.base_size {
        return Err(corrupt(format!(
            "base is {} bytes, the diff was made against {}",
            base.len(),
            header.base_size
        )));
    }
    let names = header.layout.stream_names();
    let data = header.data_streams();
    if streams.len() != data.len() || streams.len() != names.len() {
        return Err(corrupt(format!(
            "{} stream readers for a {:?} diff of {} data streams",
            streams.len(),
            header.layout,
            data.len()
        )));
    }
    let dense = header
        .dense_len()
        .ok_or_else(|| corrupt("extra stream longer than the target".into()))?;
    let threads = header.target_size >= THREADS_FROM;
    std::thread::scope(|s| {
        let mut incoming = Vec::with_capacity(names.len());
        for ((r, h), &name) in streams.into_iter().zip(data).zip(names) {
            let mut filter = None;
            let src = if threads {
                let (tx, rx) = mpsc::sync_channel(DEPTH);
                let (codec, headroom) = match h.codec {
                    StreamCodec::ZstdX86 { window_log } => {
                        filter = Some(X86::new(false));
                        (StreamCodec::Zstd { window_log }, HEADROOM)
                    }
                    c => (c, 0),
                };
                s.spawn(move || {
                    if let Err(e) = pump(name, (h, codec, headroom), r.take(h.stored_len), &tx) {
                        let _ = tx.send(Err(e));
                    }
                });
                Source::Thread(rx)
            } else {
                let stored: Box<dyn Read> = Box::new(r.take(h.stored_len));
                let dec = Decoder::new(&h.codec, stored, name)?;
                Source::Inline(Box::new(dec), h.stored_len)
            };
            incoming.push(Incoming {
                src,
                cur: Vec::new(),
                pos: 0,
                end: 0,
                filter,
                left: h.raw_len,
                name,
            });
        }
        // Dropping the receivers (on return, error or not) stops the decoders.
        let mut it = incoming.into_iter();
        let mut next = || it.next().expect("one per stream name");
        let control = next();
        let diff = match header.layout {
            DiffLayout::Dense => Differences::Dense(next()),
            DiffLayout::Sparse => Differences::Sparse {
                zeros: Box::new(next()),
                runs: Box::new(next()),
                literals: Box::new(next()),
                zero_left: 0,
                lit_left: 0,
                zero_next: true,
                undescribed: dense,
            },
        };
        let extra = next();
        run(header, base, control, diff, extra, out)
    })
}

/// A control record, checked: `add` bytes from base position `pos` (plus
/// differences), then `copy` bytes of the extra stream.
struct Record {
    pos: u64,
    add: u64,
    copy: u64,
}

/// How far [`run`] decodes the control stream ahead of the output, so the base learns
/// of its reads early ([`Base::will_read`]): records, and base bytes they read.
const AHEAD_RECORDS: usize = 4096;
const AHEAD_BYTES: u64 = 2 << 20;

/// The control stream decoded ahead of the apply, each record checked against the
/// target and base sizes as it is decoded.
struct Controls<'s, 'a> {
    control: &'s mut Incoming<'a>,
    queue: std::collections::VecDeque<Record>,
    /// Bytes the decoded records produce, and the base position after them.
    produced: u64,
    pos: u64,
    /// Base bytes the queued records read.
    queued_bytes: u64,
}

impl Controls<'_, '_> {
    fn decode<B: Base + ?Sized>(&mut self, header: &DiffHeader, base: &B) -> Result<()> {
        let seek = unzigzag(self.control.varint()?);
        let add = self.control.varint()?;
        let copy = self.control.varint()?;
        let end = self
            .produced
            .checked_add(add)
            .and_then(|n| n.checked_add(copy))
            .filter(|&n| n <= header.target_size)
            .ok_or_else(|| corrupt("control runs past the target size".into()))?;
        if end == self.produced {
            return Err(corrupt("control record produces nothing".into()));
        }
        let pos = self
            .pos
            .checked_add_signed(seek)
            .filter(|&p| p <= header.base_size)
            .ok_or_else(|| corrupt(format!("seek {seek} from {} leaves the base", self.pos)))?;
        if pos.checked_add(add).is_none_or(|n| n > header.base_size) {
            return Err(corrupt(format!(
                "add run of {add} at base {pos} leaves the base"
            )));
        }
        if add > 0 {
            base.will_read(pos, add);
        }
        self.produced = end;
        self.pos = pos + add;
        self.queued_bytes += add;
        self.queue.push_back(Record { pos, add, copy });
        Ok(())
    }

    /// The next record, after decoding ahead as far as the bounds allow.
    fn next<B: Base + ?Sized>(&mut self, header: &DiffHeader, base: &B) -> Result<Option<Record>> {
        while self.produced < header.target_size
            && (self.queue.is_empty()
                || (self.queue.len() < AHEAD_RECORDS && self.queued_bytes < AHEAD_BYTES))
        {
            self.decode(header, base)?;
        }
        let r = self.queue.pop_front();
        if let Some(r) = &r {
            self.queued_bytes -= r.add;
        }
        Ok(r)
    }
}

fn run<B: Base + ?Sized>(
    header: &DiffHeader,
    base: &B,
    mut control: Incoming<'_>,
    mut diff: Differences<'_>,
    mut extra: Incoming<'_>,
    out: &mut dyn FnMut(&[u8]) -> Result<()>,
) -> Result<u64> {
    let mut produced = 0u64;
    let mut buf = vec![0u8; BUF];
    let mut controls = Controls {
        control: &mut control,
        queue: std::collections::VecDeque::new(),
        produced: 0,
        pos: 0,
        queued_bytes: 0,
    };
    while let Some(Record { mut pos, add, copy }) = controls.next(header, base)? {
        let mut left = add;
        while left > 0 {
            let n = left.min(BUF as u64) as usize;
            base.read_at(pos, &mut buf[..n])?;
            diff.add_to(&mut buf[..n])?;
            out(&buf[..n])?;
            pos += n as u64;
            left -= n as u64;
        }
        let mut left = copy;
        while left > 0 {
            let piece = extra.take(left.min(BUF as u64) as usize)?;
            left -= piece.len() as u64;
            out(piece)?;
        }
        produced += add + copy;
    }
    control.finish()?;
    diff.finish()?;
    extra.finish()?;
    Ok(produced)
}

//! The x86 branch filter of xz ("BCJ x86", liblzma's `LZMA_FILTER_X86`) for the
//! `ZstdX86` stream codec (FORMAT.md §3.6, §3.9): the rel32 of each E8/E9 (call,
//! jump) it accepts is made absolute against the byte's position in the stream, so
//! calls to one function from all over a program become the same bytes.
//!
//! Written here rather than taken from a crate: lzma-rust2's reader runs it byte by
//! byte through 4 KiB buffers, which added 0.08 s to a 111 MB fresh install (polars,
//! 0.18 s to 0.26 s); this one tests 8 bytes a step for candidates and filters large buffers
//! in place. The unit tests hold it to liblzma's output byte for byte.

use std::io::{self, Read, Write};

const ALLOWED: [bool; 8] = [true, true, true, false, true, false, false, false];
const BIT_NUMBER: [u32; 8] = [0, 1, 2, 2, 3, 3, 3, 3];

/// Whether `b` is the top byte of a displacement the filter converts (|rel| < 2^24).
fn ms_byte(b: u8) -> bool {
    b == 0 || b == 0xFF
}

/// The filter's state between buffers.
#[derive(Clone, Copy, Debug)]
pub struct X86 {
    encoder: bool,
    /// Stream position of the next byte to filter.
    pos: u32,
    prev_mask: u32,
    prev_pos: u32,
}

impl X86 {
    /// A filter over a stream starting at offset 0.
    pub fn new(encoder: bool) -> X86 {
        X86 {
            encoder,
            pos: 0,
            prev_mask: 0,
            prev_pos: 0u32.wrapping_sub(5),
        }
    }

    /// Filters `buf`, the stream's next bytes, in place. Returns how many leading bytes
    /// are final; the rest (at most 4) must come again at the start of the next call,
    /// or pass unchanged at the end of the stream.
    pub fn code(&mut self, buf: &mut [u8]) -> usize {
        if buf.len() < 5 {
            return 0;
        }
        let now = self.pos;
        let mut prev_mask = self.prev_mask;
        let mut prev_pos = self.prev_pos;
        if now.wrapping_sub(prev_pos) > 5 {
            prev_pos = now.wrapping_sub(5);
        }
        let limit = buf.len() - 5;
        let mut i = 0;
        while i <= limit {
            match next_candidate(buf, i, limit) {
                Some(k) => i = k,
                None => {
                    i = limit + 1;
                    break;
                }
            }
            let here = now.wrapping_add(i as u32);
            let offset = here.wrapping_sub(prev_pos);
            prev_pos = here;
            if offset > 5 {
                prev_mask = 0;
            } else {
                for _ in 0..offset {
                    prev_mask &= 0x77;
                    prev_mask <<= 1;
                }
            }
            let b = buf[i + 4];
            if ms_byte(b) && ALLOWED[((prev_mask >> 1) & 7) as usize] && (prev_mask >> 1) < 0x10 {
                let mut src = u32::from_le_bytes([buf[i + 1], buf[i + 2], buf[i + 3], b]);
                let at = here.wrapping_add(5);
                let dest = loop {
                    let dest = if self.encoder {
                        src.wrapping_add(at)
                    } else {
                        src.wrapping_sub(at)
                    };
                    if prev_mask == 0 {
                        break dest;
                    }
                    let n = BIT_NUMBER[(prev_mask >> 1) as usize];
                    if !ms_byte((dest >> (24 - n * 8)) as u8) {
                        break dest;
                    }
                    src = dest ^ ((1u32 << (32 - n * 8)) - 1);
                };
                let out = dest.to_le_bytes();
                buf[i + 1] = out[0];
                buf[i + 2] = out[1];
                buf[i + 3] = out[2];
                buf[i + 4] = if (dest >> 24) & 1 == 1 { 0xFF } else { 0 };
                i += 5;
                prev_mask = 0;
            } else {
                i += 1;
                prev_mask |= 1;
                if ms_byte(b) {
                    prev_mask |= 0x10;
                }
            }
        }
        self.prev_mask = prev_mask;
        self.prev_pos = prev_pos;
        self.pos = now.wrapping_add(i as u32);
        i
    }
}

/// The first position in `i..=limit` holding E8 or E9. In machine code one byte in 40
/// to 60 is one, so this tests 8 bytes a step with exact per-byte masks instead of
/// starting a vector search per hit (memchr2 per hit was 6% of a fresh install's CPU).
fn next_candidate(buf: &[u8], mut i: usize, limit: usize) -> Option<usize> {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    while i + 8 <= limit + 1 {
        let w = u64::from_le_bytes(buf[i..i + 8].try_into().expect("8 bytes"));
        // Bytes E8 and E9 become zero; an exact zero-byte mask then marks them.
        let x = (w | 0x0101_0101_0101_0101) ^ 0xe9e9_e9e9_e9e9_e9e9;
        let zero = !(((x & LOW7) + LOW7) | x | LOW7);
        if zero != 0 {
            return Some(i + (zero.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    (i..=limit).find(|&k| buf[k] & 0xfe == 0xe8)
}

/// Bytes filtered per pass: large enough that a pass costs little per byte.
const BUFFER: usize = 256 << 10;

/// Filters what it writes (the encoder side) into `W`.
pub struct X86Writer<W: Write> {
    inner: W,
    filter: X86,
    buf: Vec<u8>,
}

impl<W: Write> X86Writer<W> {
    pub fn new(inner: W) -> Self {
        X86Writer {
            inner,
            filter: X86::new(true),
            buf: Vec::with_capacity(BUFFER + 8),
        }
    }

    /// Writes the last bytes (which the filter leaves as they are) and returns `W`.
    pub fn finish(mut self) -> io::Result<W> {
        self.filter.code(&mut self.buf);
        self.inner.write_all(&self.buf)?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for X86Writer<W> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let n = b.len().min(BUFFER);
        self.buf.extend_from_slice(&b[..n]);
        if self.buf.len() >= BUFFER {
            let done = self.filter.code(&mut self.buf);
            self.inner.write_all(&self.buf[..done])?;
            self.buf.drain(..done);
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Undoes the filter over what `R` yields (the decoder side).
pub struct X86Reader<R: Read> {
    inner: R,
    filter: X86,
    buf: Box<[u8]>,
    /// `buf[start..done]` is filtered and not yet read, `buf[done..end]` read from
    /// `inner` and not yet filtered.
    start: usize,
    done: usize,
    end: usize,
    eof: bool,
}

impl<R: Read> X86Reader<R> {
    pub fn new(inner: R) -> Self {
        X86Reader {
            inner,
            filter: X86::new(false),
            buf: vec![0; BUFFER].into_boxed_slice(),
            start: 0,
            done: 0,
            end: 0,
            eof: false,
        }
    }

    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    fn refill(&mut self) -> io::Result<()> {
        self.buf.copy_within(self.done..self.end, 0);
        self.end -= self.done;
        self.start = 0;
        self.done = 0;
        while self.end < self.buf.len() && !self.eof {
            match self.inner.read(&mut self.buf[self.end..]) {
                Ok(0) => self.eof = true,
                Ok(n) => self.end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.done = self.filter.code(&mut self.buf[..self.end]);
        if self.eof {
            // The stream's last bytes are never converted.
            self.done = self.end;
        }
        Ok(())
    }
}

impl<R: Read> Read for X86Reader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.start == self.done {
            if self.eof && self.done == self.end {
                return Ok(0);
            }
            self.refill()?;
        }
        let n = out.len().min(self.done - self.start);
        out[..n].copy_from_slice(&self.buf[self.start..self.start + n]);
        self.start += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use liblzma::stream::{Action, Filters, LzmaOptions, Stream};

    use super::*;

    /// Bytes like machine code, calls and jumps among other opcodes and immediates,
    /// with E8/E9 runs close together (the filter's mask cases).
    fn code(n: usize, seed: u32) -> Vec<u8> {
        let mut out = Vec::with_capacity(n + 16);
        let mut x = seed;
        while out.len() < n {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let op = [0xE8u8, 0xE9, 0x0F, 0x48, 0xE8][(x >> 13) as usize % 5];
            out.push(op);
            out.extend_from_slice(&x.to_le_bytes()[..1 + (x >> 20) as usize % 4]);
            out.extend_from_slice(&[0, 0, 0xFF, 0xE8][..(x >> 8) as usize % 4]);
        }
        out.truncate(n);
        out
    }

    /// liblzma's filtering of `data`: x86 then LZMA2 raw, decoded by LZMA2 alone.
    fn xz_filtered(data: &[u8]) -> Vec<u8> {
        let opts = LzmaOptions::new_preset(0).unwrap();
        let mut chain = Filters::new();
        chain.x86().lzma2(&opts);
        let mut enc = Stream::new_raw_encoder(&chain).unwrap();
        let mut packed = Vec::with_capacity(data.len() * 2 + 1024);
        enc.process_vec(data, &mut packed, Action::Finish).unwrap();
        let mut lzma2 = Filters::new();
        lzma2.lzma2(&opts);
        let mut dec = Stream::new_raw_decoder(&lzma2).unwrap();
        let mut out = Vec::with_capacity(data.len() + 64);
        dec.process_vec(&packed, &mut out, Action::Finish).unwrap();
        out
    }

    fn filtered(data: &[u8], piece: usize) -> Vec<u8> {
        let mut w = X86Writer::new(Vec::new());
        for p in data.chunks(piece) {
            w.write_all(p).unwrap();
        }
        w.finish().unwrap()
    }

    #[test]
    fn converts_exactly_the_bytes_liblzma_converts() {
        for (n, seed) in [(1 << 20, 1), (700_001, 2), (5, 3), (4, 4), (0, 5)] {
            let data = code(n, seed);
            let xz = xz_filtered(&data);
            assert_eq!(xz.len(), data.len());
            for piece in [1 << 20, 4093, 7] {
                assert!(
                    filtered(&data, piece) == xz,
                    "{n} bytes in pieces of {piece}"
                );
            }
            if n > 1000 {
                assert!(xz != data);
            }
        }
    }

    #[test]
    fn the_reader_undoes_it_whatever_the_reads() {
        let data = code(600_000, 9);
        let f = filtered(&data, 1 << 20);
        for read in [1usize, 3, 4096, 1 << 20] {
            let mut r = X86Reader::new(&f[..]);
            let mut back = Vec::new();
            let mut buf = vec![0u8; read];
            loop {
                let n = r.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                back.extend_from_slice(&buf[..n]);
            }
            assert!(back == data, "reads of {read}");
        }
    }
}

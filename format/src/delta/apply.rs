//! Applying a diff: one sequential pass, memory bounded by a few buffers whatever the
//! release size. The base is read at random positions through [`Base`] (a client
//! backs it with memory maps of its installed files); the output is handed to the
//! caller in order.

use std::io::Read;

use super::DiffHeader;
use crate::error::{FormatError, Result};

/// Random access to the base a diff was made against.
pub trait Base {
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Fills `buf` from position `pos`; the caller guarantees `pos + buf.len() <= len()`.
    fn read_at(&self, pos: u64, buf: &mut [u8]) -> Result<()>;
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

/// Memory a stream's decoder may use: refuses a hostile dictionary size up front.
const DECODER_MEMLIMIT: u64 = super::encode::MAX_DICT + (4 << 20);

fn decoder<'a, R: Read + 'a>(r: R) -> Result<Box<dyn Read + 'a>> {
    let stream = liblzma::stream::Stream::new_stream_decoder(DECODER_MEMLIMIT, 0)
        .map_err(|e| corrupt(e.to_string()))?;
    Ok(Box::new(liblzma::read::XzDecoder::new_stream(r, stream)))
}

/// Reads exactly `buf.len()` bytes or names the stream that ended early.
fn fill(r: &mut dyn Read, buf: &mut [u8], what: &str) -> Result<()> {
    r.read_exact(buf)
        .map_err(|e| corrupt(format!("{what} stream: {e}")))
}

const BUF: usize = 256 << 10;

/// Applies the diff whose compressed streams are `control`, `diff` and `extra` to
/// `base`, handing every produced byte, in order, to `out`. Fails on any stream that
/// would read outside the base, produce more than the header's `target_size`, or end
/// early; the caller still verifies every produced chunk against its id.
pub fn apply<B: Base + ?Sized>(
    header: &DiffHeader,
    base: &B,
    control: impl Read,
    diff: impl Read,
    extra: impl Read,
    out: &mut dyn FnMut(&[u8]) -> Result<()>,
) -> Result<u64> {
    if base.len() != header.base_size {
        return Err(corrupt(format!(
            "base is {} bytes, the diff was made against {}",
            base.len(),
            header.base_size
        )));
    }
    let mut control = decoder(control)?;
    let mut diff = decoder(diff)?;
    let mut extra = decoder(extra)?;
    let mut produced = 0u64;
    let mut pos = 0u64;
    let mut a = vec![0u8; BUF];
    let mut b = vec![0u8; BUF];
    while produced < header.target_size {
        let mut triple = [0u8; 24];
        fill(&mut control, &mut triple, "control")?;
        let add = u64::from_le_bytes(triple[..8].try_into().expect("8 bytes"));
        let copy = u64::from_le_bytes(triple[8..16].try_into().expect("8 bytes"));
        let seek = i64::from_le_bytes(triple[16..].try_into().expect("8 bytes"));
        let end = produced
            .checked_add(add)
            .and_then(|n| n.checked_add(copy))
            .filter(|&n| n <= header.target_size)
            .ok_or_else(|| corrupt("control runs past the target size".into()))?;
        if pos.checked_add(add).is_none_or(|n| n > header.base_size) {
            return Err(corrupt(format!(
                "add run of {add} at base {pos} leaves the base"
            )));
        }
        let mut left = add;
        while left > 0 {
            let n = left.min(BUF as u64) as usize;
            fill(&mut diff, &mut a[..n], "diff")?;
            base.read_at(pos, &mut b[..n])?;
            for (x, y) in a[..n].iter_mut().zip(&b[..n]) {
                *x = x.wrapping_add(*y);
            }
            out(&a[..n])?;
            pos += n as u64;
            left -= n as u64;
        }
        let mut left = copy;
        while left > 0 {
            let n = left.min(BUF as u64) as usize;
            fill(&mut extra, &mut a[..n], "extra")?;
            out(&a[..n])?;
            left -= n as u64;
        }
        produced = end;
        pos = pos
            .checked_add_signed(seek)
            .filter(|&p| p <= header.base_size)
            .ok_or_else(|| corrupt(format!("seek {seek} from {pos} leaves the base")))?;
    }
    Ok(produced)
}

//! bsdiff-style diff encoding (after Colin Percival's bsdiff 4.3): a suffix array of
//! the base finds, for each target position, the longest exact match; runs are then
//! extended forwards and backwards while more than half of the bytes agree, so code
//! whose embedded addresses shifted still becomes a long "add" run of small
//! differences, which compresses to almost nothing.
//!
//! [`encode`] writes the raw streams; [`super::pack::pack`] then compresses them,
//! choosing the layout and each stream's codec by size.

use std::io::Write;

use super::streams::{self, put_varint, zigzag};
use crate::error::{FormatError, Result};

/// Bytes of the difference stream computed at a time.
const DIFF_PIECE: usize = 64 << 10;

/// What an encode wrote, before compression.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EncodeStats {
    pub controls: u64,
    /// Bytes covered by add runs (base + difference).
    pub added: u64,
    /// Bytes carried literally.
    pub copied: u64,
}

/// Where the three raw (uncompressed) streams go: control records, the dense
/// differences and the extra bytes; [`super::pack::pack`] compresses them.
pub struct Sinks<C: Write, D: Write, E: Write> {
    pub control: C,
    pub diff: D,
    pub extra: E,
}

fn put(w: &mut impl Write, b: &[u8], what: &str) -> Result<()> {
    w.write_all(b)
        .map_err(|e| FormatError::Compression(format!("writing the {what} stream: {e}")))
}

fn match_len(a: &[u8], b: &[u8]) -> usize {
    // Compare 8 bytes at a time; the tail byte by byte.
    let n = a.len().min(b.len());
    let mut i = 0;
    while i + 8 <= n {
        let x = u64::from_ne_bytes(a[i..i + 8].try_into().expect("8 bytes"));
        let y = u64::from_ne_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        if x != y {
            break;
        }
        i += 8;
    }
    while i < n && a[i] == b[i] {
        i += 1;
    }
    i
}

/// Longest match of `target` among the suffixes `sa[lo..=hi]` of `base`:
/// (length, base position).
fn search(sa: &[i32], base: &[u8], target: &[u8], mut lo: usize, mut hi: usize) -> (usize, usize) {
    while hi - lo >= 2 {
        let mid = lo + (hi - lo) / 2;
        let s = &base[sa[mid] as usize..];
        let n = s.len().min(target.len());
        if s[..n] < target[..n] {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let (a, b) = (sa[lo] as usize, sa[hi] as usize);
    let la = match_len(&base[a..], target);
    let lb = match_len(&base[b..], target);
    if la >= lb { (la, a) } else { (lb, b) }
}

/// Encodes `target` against `base` into the three raw streams of `sinks`.
pub fn encode<C: Write, D: Write, E: Write>(
    base: &[u8],
    target: &[u8],
    sinks: Sinks<C, D, E>,
) -> Result<(C, D, E, EncodeStats)> {
    if base.len() as u64 > super::MAX_DIFF_INPUT || target.len() as u64 > super::MAX_DIFF_INPUT {
        return Err(FormatError::TooLarge {
            kind: "diff",
            what: "input",
            found: base.len().max(target.len()) as u64,
            limit: super::MAX_DIFF_INPUT,
        });
    }
    let Sinks {
        mut control,
        mut diff,
        mut extra,
    } = sinks;
    let mut stats = EncodeStats::default();

    let mut sa = vec![0i32; base.len()];
    if !base.is_empty() {
        cdivsufsort::sort_in_place(base, &mut sa);
    }
    let (oldsize, newsize) = (base.len(), target.len());
    let (mut scan, mut len, mut pos) = (0usize, 0usize, 0usize);
    let (mut lastscan, mut lastpos, mut lastoffset) = (0usize, 0usize, 0isize);
    let mut dbuf = Vec::new();
    let mut record = Vec::with_capacity(3 * streams::MAX_VARINT_LEN);
    // bsdiff seeks after each record; the format seeks before, so that every record
    // produces at least one byte (a record producing nothing folds into the next
    // seek) and the first match may start anywhere in the base.
    let mut seek_before = 0i64;
    let old_at =
        |i: isize| -> Option<u8> { (i >= 0 && (i as usize) < oldsize).then(|| base[i as usize]) };

    while scan < newsize {
        let mut oldscore = 0usize;
        scan += len;
        let mut scsc = scan;
        while scan < newsize {
            (len, pos) = if oldsize == 0 {
                (0, 0)
            } else {
                search(&sa, base, &target[scan..], 0, oldsize - 1)
            };
            while scsc < scan + len {
                if old_at(scsc as isize + lastoffset) == Some(target[scsc]) {
                    oldscore += 1;
                }
                scsc += 1;
            }
            if (len == oldscore && len != 0) || len > oldscore + 8 {
                break;
            }
            if old_at(scan as isize + lastoffset) == Some(target[scan]) {
                oldscore = oldscore.saturating_sub(1);
            }
            scan += 1;
        }
        if len != oldscore || scan == newsize {
            // Extend the previous match forwards...
            let (mut s, mut sf, mut lenf) = (0isize, 0isize, 0usize);
            let mut i = 0;
            while lastscan + i < scan && lastpos + i < oldsize {
                if base[lastpos + i] == target[lastscan + i] {
                    s += 1;
                }
                i += 1;
                if s * 2 - i as isize > sf * 2 - lenf as isize {
                    sf = s;
                    lenf = i;
                }
            }
            // ...and the next one backwards.
            let mut lenb = 0usize;
            if scan < newsize {
                let (mut s, mut sb) = (0isize, 0isize);
                let mut i = 1;
                while scan >= lastscan + i && pos >= i {
                    if base[pos - i] == target[scan - i] {
                        s += 1;
                    }
                    if s * 2 - i as isize > sb * 2 - lenb as isize {
                        sb = s;
                        lenb = i;
                    }
                    i += 1;
                }
            }
            // Where they overlap, split at the best point.
            if lastscan + lenf > scan - lenb {
                let overlap = (lastscan + lenf) - (scan - lenb);
                let (mut s, mut ss, mut lens) = (0isize, 0isize, 0usize);
                for i in 0..overlap {
                    if target[lastscan + lenf - overlap + i] == base[lastpos + lenf - overlap + i] {
                        s += 1;
                    }
                    if target[scan - lenb + i] == base[pos - lenb + i] {
                        s -= 1;
                    }
                    if s > ss {
                        ss = s;
                        lens = i + 1;
                    }
                }
                lenf = lenf + lens - overlap;
                lenb -= lens;
            }
            // In pieces: an add run can be megabytes long (most of a large library
            // whose base was rewritten), and a buffer that long would add to the
            // suffix array at the encoder's peak.
            for at in (0..lenf).step_by(DIFF_PIECE) {
                let end = lenf.min(at + DIFF_PIECE);
                dbuf.clear();
                dbuf.extend(
                    (at..end).map(|i| target[lastscan + i].wrapping_sub(base[lastpos + i])),
                );
                put(&mut diff, &dbuf, "diff")?;
            }
            let copy_from = lastscan + lenf;
            let copy_to = scan - lenb;
            put(&mut extra, &target[copy_from..copy_to], "extra")?;
            let seek = (pos as i64 - lenb as i64) - (lastpos as i64 + lenf as i64);
            if lenf + (copy_to - copy_from) > 0 {
                record.clear();
                put_varint(&mut record, zigzag(seek_before));
                put_varint(&mut record, lenf as u64);
                put_varint(&mut record, (copy_to - copy_from) as u64);
                put(&mut control, &record, "control")?;
                stats.controls += 1;
                seek_before = seek;
            } else {
                seek_before += seek;
            }
            stats.added += lenf as u64;
            stats.copied += (copy_to - copy_from) as u64;
            lastscan = scan - lenb;
            lastpos = pos - lenb;
            lastoffset = pos as isize - scan as isize;
        }
    }
    Ok((control, diff, extra, stats))
}

//! Rewriting a base ELF file one 64 KiB block at a time (FORMAT.md §3.6.1), so that an
//! agent never holds or writes the whole rewritten file: it rewrites each block of the
//! base when the diff first reads it, and can do so on either core.
//!
//! Block `k` is the file's bytes `[k × BLOCK, (k + 1) × BLOCK)`. Its rewritten bytes
//! are those of [`super::rewrite_copy`] — every reference of the scan, in scan order,
//! the later winning where fields overlap — restricted to the block:
//!
//! - the code pass is cut at the same boundaries ([`scan::PIECE`]), so the block's
//!   code references come from scanning its own bytes;
//! - the data, relocation-entry, symbol and Go function-table passes write each field
//!   where its table entry (or word) lies, so the entries overlapping the block are
//!   read again;
//! - the two passes that write elsewhere than they read — the words relative
//!   relocations apply to, and the Go function records the table names — are indexed
//!   once (file offset and position in the pass, 8 bytes a field); their value is a
//!   function of the word's original bytes.
//!
//! Addresses go through [`FastMap`], a page table over the runs of an
//! [`AddressMap`], instead of a binary search over all of them.

use std::sync::atomic::{AtomicU32, Ordering};

use super::elf::{ET_EXEC, Elf, Range, u64_at};
use super::map::AddressMap;
use super::scan::{self, Targets, relative};

/// Bytes of one block: the code pass's pieces.
pub const BLOCK: u64 = scan::PIECE;

/// [`AddressMap::map`] through a table of the run in effect at each page start of an
/// address range, which leaves a search among the few runs of one page.
#[derive(Clone, Debug)]
pub struct FastMap {
    starts: Vec<u64>,
    shifts: Vec<i64>,
    lo: u64,
    bits: u32,
    /// For page `p` (addresses from `lo + p << bits`), the number of runs starting at
    /// or before its first address; one more entry than pages.
    table: Vec<u32>,
}

/// Most pages of a [`FastMap`] table (4 bytes each).
const MAX_PAGES: u64 = 1 << 16;

impl FastMap {
    /// A table over `[lo, hi)`, where most lookups fall; others search all runs.
    pub fn new(map: &AddressMap, lo: u64, hi: u64) -> FastMap {
        let (starts, shifts): (Vec<u64>, Vec<i64>) = map.runs().unzip();
        let span = hi.saturating_sub(lo);
        let mut bits = 12;
        while bits < 63 && (span >> bits) >= MAX_PAGES {
            bits += 1;
        }
        let pages = (span >> bits) + 1;
        let table = (0..=pages)
            .map(|p| {
                // In u128: with wide pages `p << bits` passes 2^64, and a wrapped page
                // start would make the table decrease (a range whose start is past its end).
                let page =
                    (u128::from(lo) + (u128::from(p) << bits)).min(u128::from(u64::MAX)) as u64;
                starts.partition_point(|&s| s <= page) as u32
            })
            .collect();
        FastMap {
            starts,
            shifts,
            lo,
            bits,
            table,
        }
    }

    /// The number of runs starting at or before `a`.
    #[inline]
    fn runs_to(&self, a: u64) -> usize {
        let p = (a.wrapping_sub(self.lo) >> self.bits) as usize;
        if a >= self.lo && p + 1 < self.table.len() {
            let (first, last) = (self.table[p] as usize, self.table[p + 1] as usize);
            first + self.starts[first..last].partition_point(|&s| s <= a)
        } else {
            self.starts.partition_point(|&s| s <= a)
        }
    }

    /// The address `a` maps to, as [`AddressMap::map`].
    #[inline]
    pub fn map(&self, a: u64) -> u64 {
        match self.runs_to(a) {
            0 => a,
            i => a.wrapping_add_signed(self.shifts[i - 1]),
        }
    }

    /// A rel32 field naming `target` from `anchor`, rewritten.
    #[inline]
    fn rel32(&self, target: u64, anchor: u64) -> [u8; 4] {
        (self.map(target).wrapping_sub(self.map(anchor)) as u32).to_le_bytes()
    }

    /// The run holding `a`: `[lo, hi)` and its shift.
    #[inline]
    fn run(&self, a: u64) -> (u64, u64, i64) {
        let i = self.runs_to(a);
        let hi = self.starts.get(i).copied().unwrap_or(u64::MAX);
        match i {
            0 => (0, hi, 0),
            i => (self.starts[i - 1], hi, self.shifts[i - 1]),
        }
    }
}

/// A Go function table (pass 5) of one data range.
#[derive(Clone, Debug)]
struct GoTable {
    /// End of the data range (fields must end before it).
    end: u64,
    text: u64,
    /// File offset of the table and its number of 8-byte entries.
    ftab: u64,
    entries: u64,
    /// The records' fields (second sweep): (file offset, entry), by offset.
    records: Vec<(u32, u32)>,
}

/// Rewrites blocks of one x86-64 ELF file through one map; shareable between threads.
#[derive(Debug)]
pub struct BlockRewriter<'a> {
    original: &'a [u8],
    elf: Elf,
    targets: Targets,
    map: FastMap,
    /// Per relocation table (in `elf.rela` order), the words relative relocations
    /// apply to that hold their addend (second sweep): (file offset, entry), by offset.
    rela_words: Vec<Vec<(u32, u32)>>,
    /// Per data range, its Go function table if it has one.
    go: Vec<Option<GoTable>>,
    /// For each multiple of [`scan::SYNC`] of the file inside a code piece, the
    /// position the code scan resumes from ([`scan::scan_piece`]) once a scan passed
    /// it, else `u32::MAX`: a range is rewritten from at most 256 bytes before it.
    sync: Vec<AtomicU32>,
}

fn u32_at(b: &[u8], at: u64) -> Option<u32> {
    let at = usize::try_from(at).ok()?;
    Some(u32::from_le_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

/// The first index `j` of entries `start + stride × j` (each `width` bytes from its
/// start plus `skip`) whose field `[start + stride × j + skip, … + width)` ends after `s`.
fn first_entry(start: u64, stride: u64, skip: u64, width: u64, s: u64) -> u64 {
    let field_end0 = start + skip + width;
    if s < field_end0 {
        0
    } else {
        (s - field_end0) / stride + 1
    }
}

impl<'a> BlockRewriter<'a> {
    /// `None` when `original` is not an x86-64 ELF file (it is then used as it is) or
    /// is 4 GiB or more (a base is below 2 GiB).
    pub fn new(original: &'a [u8], map: &AddressMap) -> Option<BlockRewriter<'a>> {
        let elf = Elf::parse(original)?;
        Self::with_elf(original, elf, map)
    }

    /// As [`BlockRewriter::new`], for a file already parsed as `elf`.
    pub fn with_elf(original: &'a [u8], elf: Elf, map: &AddressMap) -> Option<BlockRewriter<'a>> {
        u32::try_from(original.len()).ok()?;
        let targets = Targets::of(&elf);
        let lo = elf.segments.iter().map(|s| s.vaddr).min().unwrap_or(0);
        let hi = elf
            .segments
            .iter()
            .map(|s| s.vaddr + s.memsz)
            .max()
            .unwrap_or(0);
        let map = FastMap::new(map, lo, hi);
        let rela_words = elf
            .rela
            .iter()
            .map(|r| {
                let mut words = Vec::new();
                let mut e = r.offset;
                let mut j = 0u32;
                while e + 24 <= r.offset + r.size {
                    let (offset, info, addend) = entry(original, e);
                    if relative(info)
                        && targets.loaded(addend)
                        && let Some(at) = elf.offset_of(offset)
                        && u64_at(original, at) == Some(addend)
                    {
                        words.push((at as u32, j));
                    }
                    e += 24;
                    j += 1;
                }
                words.sort_unstable();
                words
            })
            .collect();
        let go = elf
            .data
            .iter()
            .map(|r| go_table(&targets, original, r))
            .collect();
        let sync = (0..original.len().div_ceil(scan::SYNC))
            .map(|_| AtomicU32::new(u32::MAX))
            .collect();
        Some(BlockRewriter {
            original,
            elf,
            targets,
            map,
            rela_words,
            go,
            sync,
        })
    }

    /// The file's size.
    pub fn len(&self) -> u64 {
        self.original.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.original.is_empty()
    }

    /// Number of blocks of the file.
    pub fn blocks(&self) -> u64 {
        self.len().div_ceil(BLOCK)
    }

    /// Bytes of memory the rewriter holds beyond the file (its indexes and tables).
    pub fn memory(&self) -> usize {
        let words: usize = self.rela_words.iter().map(Vec::len).sum();
        let records: usize = self.go.iter().flatten().map(|g| g.records.len()).sum();
        8 * (words + records)
            + 16 * self.map.starts.len()
            + 4 * (self.map.table.len() + self.sync.len())
    }

    /// Block `k` rewritten, into `out` (replacing its contents).
    pub fn block(&self, k: u64, out: &mut Vec<u8>) {
        let len = self.len();
        let s = (k * BLOCK).min(len);
        let e = (s + BLOCK).min(len);
        out.resize((e - s) as usize, 0);
        self.rewrite_range(s, out);
    }

    /// Where the code scan of the piece starting at `ps` may resume to reach `x`.
    fn resume(&self, ps: u64, x: u64) -> u64 {
        let mut b = x / scan::SYNC as u64;
        while b * scan::SYNC as u64 > ps {
            let v = self.sync[b as usize].load(Ordering::Relaxed);
            if v != u32::MAX {
                return u64::from(v);
            }
            b -= 1;
        }
        ps
    }

    /// The rewritten bytes of `[s, s + out.len())`, which must lie in the file, into
    /// `out`.
    pub fn rewrite_range(&self, s: u64, out: &mut [u8]) {
        let e = s + out.len() as u64;
        let orig = self.original;
        out.copy_from_slice(&orig[s as usize..e as usize]);
        let map = &self.map;
        let t = &self.targets;
        // Writes a field, clipped to the block.
        let mut put = |at: u64, bytes: &[u8]| {
            let (lo, hi) = (at.max(s), (at + bytes.len() as u64).min(e));
            if lo < hi {
                out[(lo - s) as usize..(hi - s) as usize]
                    .copy_from_slice(&bytes[(lo - at) as usize..(hi - at) as usize]);
            }
        };
        // 1. Code: the pieces overlapping the range, each scanned from where it may
        // resume before `s` until past `e`.
        let mut run = (1, 0, 0);
        let first = self.elf.code.partition_point(|r| r.offset + r.size <= s);
        for r in self.elf.code[first..].iter().take_while(|r| r.offset < e) {
            let end = r.offset + r.size;
            let mut ps = r.offset.max(s / BLOCK * BLOCK);
            while ps < e.min(end) {
                let pe = ((ps / BLOCK + 1) * BLOCK).min(end);
                let from = self.resume(ps, s.max(ps)) - ps;
                let va = r.vaddr.wrapping_add(ps - r.offset);
                scan::scan_piece(
                    t,
                    &orig[ps as usize..pe as usize],
                    va,
                    (from as usize, (e.min(pe) - ps) as usize, ps as usize),
                    &mut |f, anchor, target| {
                        // Anchors ascend through a piece: their run is mostly the last one.
                        if anchor < run.0 || anchor >= run.1 {
                            run = map.run(anchor);
                        }
                        let v = map
                            .map(target)
                            .wrapping_sub(anchor.wrapping_add_signed(run.2));
                        put(ps + f as u64, &(v as u32).to_le_bytes())
                    },
                    &mut |b, i| {
                        self.sync[(ps as usize + b) / scan::SYNC]
                            .store((ps as usize + i) as u32, Ordering::Relaxed)
                    },
                );
                ps = pe;
            }
        }
        // 2. Data words of unrelocated files.
        if self.elf.e_type == ET_EXEC {
            let first = self.elf.data.partition_point(|r| r.offset + r.size <= s);
            for r in self.elf.data[first..].iter().take_while(|r| r.offset < e) {
                let start = r.offset + (r.vaddr.wrapping_neg() & 7);
                let mut off = start + 8 * first_entry(start, 8, 0, 8, s);
                while off < e && off + 8 <= r.offset + r.size {
                    let v = word(orig, off);
                    if t.loaded(v) {
                        put(off, &map.map(v).to_le_bytes());
                    }
                    off += 8;
                }
            }
        }
        // 3. Relocation tables, each: its entries, then the words they relocate.
        for (r, words) in self.elf.rela.iter().zip(&self.rela_words) {
            let end = r.offset + r.size;
            let mut at = r.offset + 24 * first_entry(r.offset, 24, 0, 24, s);
            while at < e && at + 24 <= end {
                let (offset, info, addend) = entry(orig, at);
                if t.loaded(offset) {
                    put(at, &map.map(offset).to_le_bytes());
                }
                if relative(info) && t.loaded(addend) {
                    put(at + 16, &map.map(addend).to_le_bytes());
                }
                at += 24;
            }
            for (at, _) in in_block(words, s, e, 8) {
                put(at, &map.map(word(orig, at)).to_le_bytes());
            }
        }
        // 4. Symbol tables.
        for r in &self.elf.symbols {
            let end = r.offset + r.size;
            let mut at = r.offset + 24 * first_entry(r.offset, 24, 8, 8, s);
            while at + 8 < e && at + 24 <= end {
                let info = orig[at as usize + 4];
                let shndx = u16::from_le_bytes([orig[at as usize + 6], orig[at as usize + 7]]);
                let v = word(orig, at + 8);
                if shndx != 0 && shndx < 0xff00 && info & 0xf != 6 && t.loaded(v) {
                    put(at + 8, &map.map(v).to_le_bytes());
                }
                at += 24;
            }
        }
        // 5. Go function tables: entries, then the records they name.
        for g in self.go.iter().flatten() {
            let field = |at: u64| -> Option<[u8; 4]> {
                let target = g.text.wrapping_add(u64::from(u32_at(orig, at)?));
                (at + 4 <= g.end && t.executable(target)).then(|| map.rel32(target, g.text))
            };
            let mut i = first_entry(g.ftab, 8, 0, 4, s);
            while i < g.entries && g.ftab + 8 * i < e {
                if let Some(v) = field(g.ftab + 8 * i) {
                    put(g.ftab + 8 * i, &v);
                }
                i += 1;
            }
            for (at, _) in in_block(&g.records, s, e, 4) {
                if let Some(v) = field(at) {
                    put(at, &v);
                }
            }
        }
    }
}

/// The indexed fields of `width` bytes overlapping `[s, e)`, in their pass's order.
fn in_block(index: &[(u32, u32)], s: u64, e: u64, width: u64) -> Vec<(u64, u32)> {
    let from = index.partition_point(|&(at, _)| u64::from(at) + width <= s);
    let mut hits: Vec<(u64, u32)> = index[from..]
        .iter()
        .take_while(|&&(at, _)| u64::from(at) < e)
        .map(|&(at, seq)| (u64::from(at), seq))
        .collect();
    // Fields may overlap; the later in the pass wins, as in the scan.
    hits.sort_unstable_by_key(|&(_, seq)| seq);
    hits
}

/// The u64 at `at` (the caller knows it lies in the file).
fn word(b: &[u8], at: u64) -> u64 {
    u64::from_le_bytes(b[at as usize..at as usize + 8].try_into().expect("8 bytes"))
}

/// A relocation entry `(r_offset, r_info, r_addend)` at `at`.
fn entry(b: &[u8], at: u64) -> (u64, u64, u64) {
    (word(b, at), word(b, at + 8), word(b, at + 16))
}

/// The Go function table of data range `r`, if it starts with a `pclntab` header.
fn go_table(t: &Targets, bytes: &[u8], r: &Range) -> Option<GoTable> {
    let (nfunc, text, ftab, end) = scan::go_header(bytes, r)?;
    let entries = nfunc.saturating_add(1).min(end.saturating_sub(ftab) / 8);
    let mut records = Vec::new();
    for i in 0..entries {
        let Some(off) = u32_at(bytes, ftab + 8 * i + 4) else {
            continue;
        };
        let at = ftab + u64::from(off);
        if let Some(v) = u32_at(bytes, at)
            && at + 4 <= end
            && t.executable(text.wrapping_add(u64::from(v)))
        {
            records.push((at as u32, i as u32));
        }
    }
    records.sort_unstable();
    Some(GoTable {
        end,
        text,
        ftab,
        entries,
        records,
    })
}

/// `original` rewritten block by block into `out` (its size): the same bytes as
/// [`super::rewrite_copy`].
pub fn rewrite_blocks(rw: &BlockRewriter<'_>, out: &mut [u8]) {
    let mut buf = Vec::with_capacity(BLOCK as usize);
    for k in 0..rw.blocks() {
        rw.block(k, &mut buf);
        let s = (k * BLOCK) as usize;
        out[s..s + buf.len()].copy_from_slice(&buf);
    }
}

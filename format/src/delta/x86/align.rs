//! The publisher's side: the address map of one (base ELF, new ELF) pair. Not part of
//! the format (any map is valid; a better one only makes the diff smaller).
//!
//! 1. Scan both files ([`super::scan`]) and mask them: every reference field zeroed,
//!    so that code that only moved is byte-identical.
//! 2. Match the masked new file against the masked base greedily: at each position
//!    the longest match found through a hash index of the base's 24-byte
//!    strings (`Index`), extended backwards; matches of at least [`MIN_MATCH`]
//!    bytes are kept and skipped over.
//! 3. Inside each match, a base reference and a new reference at the same relative
//!    position, found by the same pass, vote: base target → new target, and for code
//!    also base anchor → new anchor. Relocation and Go function tables do not vote:
//!    masked, their entries look alike and align by chance.
//! 4. Each base address takes the new address most votes give it; sorted by address,
//!    the shifts become runs, dropping a lone single-vote point whose shift differs
//!    from equal neighbours (noise that would cost two runs).
//!
//! Memory: a masked copy of the base file, the new file masked in place
//! ([`build_map_owned`]), the index (4 bytes a sample, one every 8 base
//! bytes, and 2 a bucket: 0.8 bytes a base byte), 17 bytes a reference (of the base
//! only those that vote) and 16 bytes a vote; all but the votes are freed before the
//! votes are counted. On polars 1.17.0→1.17.1 (111 MB, 3.2 million references a
//! side) that is some 550 MB with the base the publisher holds, below the suffix
//! array the diff's encoder builds next (4 bytes a base byte); a suffix array was what
//! this used to match with, and the publisher's peak (1.03 GiB).

use super::elf::Elf;
use super::map::AddressMap;
use super::scan::{Kind, Pass, Ref, scan};

/// Shortest masked match that counts as the same code or data.
pub const MIN_MATCH: usize = 32;
/// Bytes hashed to find match candidates.
const GRAM: usize = 24;
/// Every how many base positions a string is indexed (files above [`SMALL`]); with
/// [`GRAM`], every match of [`MIN_MATCH`] bytes holds an indexed string.
const SAMPLE: usize = 8;
/// Files below this are indexed at every position.
const SMALL: usize = 1 << 20;
/// Most index candidates compared at one position (strings that repeat more often
/// than this, such as padding, are matched against the newest ones only). On polars
/// 1.17.0→1.17.1: 32 gave a 0.9% larger diff than the longest match at every position
/// (a suffix array), 128 0.4%, 512 0.1%, for a map made in 6.3, 7.3 and 7.9 s
/// (`x86-eval`).
const CANDIDATES: usize = 512;
/// A candidate match this long is taken without looking further.
const LONG_ENOUGH: usize = 1 << 16;
/// Bytes compared at one position after which the longest match so far is taken
/// (bounds the time on data that repeats at length).
const COMPARE_BUDGET: usize = 1 << 20;

const _: () = assert!(GRAM + SAMPLE - 1 <= MIN_MATCH);

/// What building one map found, for reports.
#[derive(Clone, Copy, Debug, Default)]
pub struct AlignStats {
    pub old_refs: u64,
    pub new_refs: u64,
    /// New bytes covered by masked matches.
    pub matched: u64,
    /// Reference pairs that voted.
    pub votes: u64,
    pub runs: u64,
}

/// A reference as the alignment keeps it: 17 bytes where [`Ref`] takes 32 (millions
/// of them in a large library).
#[derive(Clone, Copy)]
#[repr(C, packed)]
struct Field {
    target: u64,
    /// `target − anchor` mod 2^32; for a code reference (a rel32 operand) the anchor
    /// is the target minus its sign extension.
    rel: u32,
    at: u32,
    /// Pass, kind and whether the pass votes: equal tags are the same kind of field
    /// found by the same pass.
    tag: u8,
}

const ABS64: u8 = 1;
const VOTES: u8 = 1 << 7;
const CODE: u8 = Pass::Code as u8;

impl Field {
    fn of(r: &Ref) -> Field {
        Field {
            target: r.target,
            rel: r.target.wrapping_sub(r.anchor) as u32,
            // Files were checked to be below 2^31 bytes.
            at: r.at as u32,
            tag: (r.pass as u8) << 1
                | if r.kind == Kind::Abs64 { ABS64 } else { 0 }
                | if r.pass.votes() { VOTES } else { 0 },
        }
    }

    fn at(&self) -> u64 {
        u64::from(self.at)
    }

    /// By place, then in scan order.
    fn order(&self) -> (u32, u8) {
        (self.at, self.tag & !VOTES)
    }

    fn width(&self) -> usize {
        if self.tag & ABS64 != 0 { 8 } else { 4 }
    }

    fn votes(&self) -> bool {
        self.tag & VOTES != 0
    }

    fn code(&self) -> bool {
        (self.tag & !VOTES) >> 1 == CODE
    }

    fn anchor(&self) -> u64 {
        let rel = self.rel as i32;
        self.target.wrapping_add_signed(-i64::from(rel))
    }
}

fn zero(bytes: &mut [u8], at: usize, width: usize) {
    bytes[at..at + width].fill(0);
}

/// The address map of `old` (parsed as `old_elf`) towards `new` (`new_elf`).
pub fn build_map(old: &[u8], old_elf: &Elf, new: &[u8], new_elf: &Elf) -> (AddressMap, AlignStats) {
    build_map_owned(old, old_elf, new.to_vec(), new_elf)
}

/// [`build_map`] taking the new file by value: it is masked in place, which saves a
/// copy of it (the publisher's peak memory on large files).
pub fn build_map_owned(
    old: &[u8],
    old_elf: &Elf,
    mut new: Vec<u8>,
    new_elf: &Elf,
) -> (AddressMap, AlignStats) {
    let mut stats = AlignStats::default();
    if old.len() < MIN_MATCH
        || new.len() < MIN_MATCH
        || old.len().max(new.len()) as u64 > crate::delta::MAX_DIFF_INPUT
    {
        return (AddressMap::default(), stats);
    }
    // The base is masked into a copy while it is scanned (the scan reads the original);
    // only its voting references are kept.
    let mut mo = old.to_vec();
    // Room for a reference every 16 bytes (one every 35 in a large Rust library):
    // reserved, not touched, and so served by `mmap` from the start (see `runs`).
    let mut old_fields = Vec::with_capacity(old.len() / 16);
    scan(old_elf, old, |r| {
        zero(&mut mo, r.at as usize, r.kind.width() as usize);
        stats.old_refs += 1;
        if r.pass.votes() {
            old_fields.push(Field::of(&r));
        }
    });
    // The new file is masked in place once all its references are known.
    let mut new_fields = Vec::with_capacity(new.len() / 16);
    scan(new_elf, &new, |r| new_fields.push(Field::of(&r)));
    stats.new_refs = new_fields.len() as u64;
    for f in &new_fields {
        zero(&mut new, f.at as usize, f.width());
    }
    let mn = new;
    // Sorts that allocate nothing (see `runs`). A base reference votes with the first
    // new reference in scan order at the same place, if it is of the same pass and
    // kind: passes run in the order of their number, and two references of one pass
    // at one place read the same bytes, so they are equal.
    old_fields.sort_unstable_by_key(Field::order);
    new_fields.sort_unstable_by_key(Field::order);
    new_fields.dedup_by_key(|f| f.at());
    new_fields.retain(Field::votes);

    // (base address, new address) of every vote.
    let mut votes: Vec<(u64, u64)> = Vec::with_capacity(2 * old_fields.len());
    let index = Index::new(&mo);
    let mut m = Matcher {
        mo: &mo,
        mn: &mn,
        index: &index,
        floor: 0,
        offset: 0,
    };
    let mut n = 0usize;
    while n + GRAM <= mn.len() {
        let Some((start, o, len)) = m.longest(n) else {
            n += 1;
            continue;
        };
        stats.matched += len as u64;
        let first = old_fields.partition_point(|r| r.at() < o as u64);
        let end = (o + len) as u64;
        for r in &old_fields[first..] {
            if r.at() + r.width() as u64 > end {
                break;
            }
            let at = r.at() - o as u64 + start as u64;
            let j = new_fields.partition_point(|x| x.at() < at);
            if let Some(x) = new_fields.get(j).filter(|x| x.at() == at && x.tag == r.tag) {
                votes.push((r.target, x.target));
                if r.code() {
                    votes.push((r.anchor(), x.anchor()));
                }
            }
        }
        n = start + len;
        m.floor = n;
        m.offset = o as i64 - start as i64;
    }
    drop((index, mo, mn, old_fields, new_fields));
    stats.votes = votes.len() as u64;
    let runs = runs(votes);
    stats.runs = runs.len() as u64;
    // Points are sorted and distinct, so starts increase strictly.
    let map = AddressMap::from_runs(&runs).unwrap_or_default();
    (map, stats)
}

/// A base address, the shift most of its votes give, and how many do.
type Point = (u64, i64, u32);

/// The runs of constant shift the votes give.
///
/// Every large buffer of the alignment is reserved at about its final size, and no
/// sort allocates: with glibc, a buffer that grows from small sizes or a freed block
/// of 128 KiB to 32 MiB leaves freed memory in the heap, which stays with the process
/// (some 15 MB on polars) through the encoder's peak that follows.
fn runs(mut votes: Vec<(u64, u64)>) -> Vec<(u64, i64)> {
    // Majority per base address: (address, shift, votes), ascending.
    votes.sort_unstable();
    let mut i = 0;
    let points = std::iter::from_fn(|| {
        let a = votes.get(i)?.0;
        let (mut best, mut best_n) = (0i64, 0u32);
        while i < votes.len() && votes[i].0 == a {
            let b = votes[i].1;
            let mut k = 0u32;
            while i < votes.len() && votes[i] == (a, b) {
                k += 1;
                i += 1;
            }
            if k > best_n {
                (best, best_n) = (b.wrapping_sub(a) as i64, k);
            }
        }
        Some((a, best, best_n))
    });
    let mut runs: Vec<(u64, i64)> = Vec::new();
    let mut current = 0i64;
    let mut keep = |p: Point| {
        if p.1 != current {
            runs.push((p.0, p.1));
            current = p.1;
        }
    };
    // A lone single-vote point between two neighbours of one shift is dropped.
    let (mut prev, mut cur): (Option<Point>, Option<Point>) = (None, None);
    for next in points {
        if let Some(c) = cur {
            let lone = prev.is_some_and(|p| p.1 == next.1 && c.2 < 2 && c.1 != p.1);
            if !lone {
                keep(c);
            }
        }
        (prev, cur) = (cur, Some(next));
    }
    if let Some(c) = cur {
        keep(c);
    }
    runs
}

/// A hash index of the masked base's [`GRAM`]-byte strings at every `step`-th
/// position, as hash chains in one table: per bucket the newest sample + 1 (0: none),
/// then per sample its predecessor in its bucket. 4 bytes a sample and about 2 a
/// bucket.
struct Index {
    step: usize,
    shift: u32,
    buckets: usize,
    table: Vec<u32>,
}

fn word(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// A hash of the [`GRAM`] bytes at `at`.
fn gram_hash(b: &[u8], at: usize) -> u64 {
    const K: [u64; 3] = [
        0x9E37_79B9_7F4A_7C15,
        0xC2B2_AE3D_27D4_EB4F,
        0x1656_67B1_9E37_79F9,
    ];
    let mut h = 0u64;
    for (i, k) in K.iter().enumerate() {
        h = (h ^ word(b, at + 8 * i)).wrapping_mul(*k).rotate_left(29);
    }
    h.wrapping_mul(K[0])
}

impl Index {
    fn new(base: &[u8]) -> Index {
        let step = if base.len() < SMALL { 1 } else { SAMPLE };
        let samples = (base.len() - GRAM) / step + 1;
        // About two samples a bucket.
        let bits = samples.next_power_of_two().trailing_zeros().clamp(4, 30) - 1;
        let buckets = 1usize << bits;
        let shift = 64 - bits;
        let mut table = vec![0u32; buckets + samples];
        for i in 0..samples {
            let b = (gram_hash(base, i * step) >> shift) as usize;
            table[buckets + i] = table[b];
            table[b] = i as u32 + 1;
        }
        Index {
            step,
            shift,
            buckets,
            table,
        }
    }

    /// Base positions whose string may equal the one at `at` of `target`, newest first.
    fn candidates<'a>(&'a self, target: &[u8], at: usize) -> impl Iterator<Item = usize> + 'a {
        let mut c = self.table[(gram_hash(target, at) >> self.shift) as usize];
        std::iter::from_fn(move || {
            let i = c.checked_sub(1)? as usize;
            c = self.table[self.buckets + i];
            Some(i * self.step)
        })
    }
}

fn match_len(a: &[u8], b: &[u8]) -> usize {
    let n = a.len().min(b.len());
    let mut i = 0;
    while i + 8 <= n {
        let x = word(a, i) ^ word(b, i);
        if x != 0 {
            return i + (x.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < n && a[i] == b[i] {
        i += 1;
    }
    i
}

/// How many bytes before `a_end` and `b_end` agree, going back.
fn back_len(a: &[u8], b: &[u8]) -> usize {
    a.iter()
        .rev()
        .zip(b.iter().rev())
        .take_while(|(x, y)| x == y)
        .count()
}

/// The greedy matcher's state.
struct Matcher<'a> {
    mo: &'a [u8],
    mn: &'a [u8],
    index: &'a Index,
    /// End of the last match in the new file: no match extends back before it.
    floor: usize,
    /// Base position − new position of the last match: tried first, since code that
    /// only moved keeps its neighbours' shift.
    offset: i64,
}

impl Matcher<'_> {
    /// The longest match through position `n` of the new file found at `n`:
    /// (new start, base start, length), if at least [`MIN_MATCH`] long.
    fn longest(&self, n: usize) -> Option<(usize, usize, usize)> {
        let (mo, mn) = (self.mo, self.mn);
        let key = word(mn, n);
        let mut best: Option<(usize, usize, usize)> = None;
        let guess = usize::try_from(n as i64 + self.offset).ok();
        let tried = guess.into_iter().chain(
            self.index
                .candidates(mn, n)
                .filter(|&p| Some(p) != guess)
                .take(CANDIDATES),
        );
        let mut budget = COMPARE_BUDGET;
        for p in tried {
            if p + 8 > mo.len() || word(mo, p) != key {
                continue;
            }
            let f = match_len(&mo[p..], &mn[n..]);
            budget = budget.saturating_sub(f);
            if f < GRAM {
                continue;
            }
            let b = back_len(&mo[..p], &mn[self.floor..n]);
            let len = b + f;
            if best.is_none_or(|(_, _, l)| len > l) {
                best = Some((n - b, p - b, len));
            }
            if f >= LONG_ENOUGH || budget == 0 {
                break;
            }
        }
        best.filter(|&(_, _, l)| l >= MIN_MATCH)
    }
}

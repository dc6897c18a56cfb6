//! The publisher's side: the address map of one (base ELF, new ELF) pair. Not part of
//! the format (any map is valid; a better one only makes the diff smaller).
//!
//! 1. Scan both files ([`super::scan`]) and copy each with every reference field
//!    zeroed ("masked"): code that only moved is then byte-identical.
//! 2. Match the masked new file against the masked base greedily with a suffix array
//!    (the longest match at each position; matches of at least [`MIN_MATCH`] bytes
//!    are kept and skipped over).
//! 3. Inside each match, a base reference and a new reference at the same relative
//!    position, found by the same pass, vote: base target → new target, and for code
//!    also base anchor → new anchor. Relocation and Go function tables do not vote:
//!    masked, their entries look alike and align by chance.
//! 4. Each base address takes the new address most votes give it; sorted by address,
//!    the shifts become runs, dropping a lone single-vote point whose shift differs
//!    from equal neighbours (noise that would cost two runs).
//!
//! Memory: a masked copy of the base file, the new file masked in place
//! ([`build_map_owned`]), a suffix array of the base (4 bytes a byte), 32 bytes a
//! reference and 16 bytes a vote.

use super::elf::Elf;
use super::map::AddressMap;
use super::scan::{Pass, Ref, references};
use crate::delta::encode::longest_match;

/// Shortest masked match that counts as the same code or data.
pub const MIN_MATCH: usize = 32;

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

fn masked(mut out: Vec<u8>, refs: &[Ref]) -> Vec<u8> {
    for r in refs {
        let (a, w) = (r.at as usize, r.kind.width() as usize);
        out[a..a + w].fill(0);
    }
    out
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
    let mut old_refs = references(old_elf, old);
    let mut new_refs = references(new_elf, &new);
    old_refs.sort_by_key(|r| r.at);
    new_refs.sort_by_key(|r| r.at);
    let mut stats = AlignStats {
        old_refs: old_refs.len() as u64,
        new_refs: new_refs.len() as u64,
        ..AlignStats::default()
    };
    let mo = masked(old.to_vec(), &old_refs);
    let mn = masked(std::mem::take(&mut new), &new_refs);
    if mo.is_empty() || mn.is_empty() || mo.len() as u64 > crate::delta::MAX_DIFF_INPUT {
        return (AddressMap::default(), stats);
    }
    let mut sa = vec![0i32; mo.len()];
    cdivsufsort::sort_in_place(&mo, &mut sa);

    // (base address, new address) of every vote.
    let mut votes: Vec<(u64, u64)> = Vec::new();
    let mut n = 0usize;
    while n < mn.len() {
        let (len, o) = longest_match(&sa, &mo, &mn[n..]);
        if len < MIN_MATCH {
            // Nothing here: skip what did match (a match starting inside it is still
            // found from a later position, short of a few leading bytes), so that a
            // changed region costs a search every few bytes, not every byte.
            n += (len / 2).max(1);
            continue;
        }
        stats.matched += len as u64;
        let first = old_refs.partition_point(|r| r.at < o as u64);
        let inside = |r: &&Ref| r.at + r.kind.width() <= (o + len) as u64;
        for r in old_refs[first..]
            .iter()
            .take_while(inside)
            .filter(|r| r.pass.votes())
        {
            let at = r.at - o as u64 + n as u64;
            let i = new_refs.partition_point(|x| x.at < at);
            if let Some(x) = new_refs
                .get(i)
                .filter(|x| x.at == at && x.kind == r.kind && x.pass == r.pass)
            {
                votes.push((r.target, x.target));
                if r.pass == Pass::Code {
                    votes.push((r.anchor, x.anchor));
                }
            }
        }
        n += len;
    }
    drop((sa, mo, mn));
    stats.votes = votes.len() as u64;

    // Majority per base address: (address, shift, votes).
    votes.sort_unstable();
    let mut points: Vec<(u64, i64, u32)> = Vec::new();
    let mut i = 0;
    while i < votes.len() {
        let a = votes[i].0;
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
        points.push((a, best, best_n));
    }
    let keep: Vec<bool> = (0..points.len())
        .map(|i| {
            let lone = i > 0
                && i + 1 < points.len()
                && points[i].2 < 2
                && points[i - 1].1 == points[i + 1].1
                && points[i].1 != points[i - 1].1;
            !lone
        })
        .collect();
    let mut runs: Vec<(u64, i64)> = Vec::new();
    let mut current = 0i64;
    for (p, _) in points.iter().zip(&keep).filter(|(_, k)| **k) {
        if p.1 != current {
            runs.push((p.0, p.1));
            current = p.1;
        }
    }
    stats.runs = runs.len() as u64;
    // Points are sorted and distinct, so starts increase strictly.
    let map = AddressMap::from_runs(&runs).unwrap_or_default();
    (map, stats)
}

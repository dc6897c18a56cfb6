//! Reference-aware diffs for x86-64 ELF files (FORMAT.md §3.6.1).
//!
//! Compiled code is full of addresses: call and jump targets, RIP-relative operands,
//! pointers in data, relocation and symbol tables. When a release inserts a few bytes
//! of code, every address past the insertion shifts and thousands of fields change
//! although nothing else did. bsdiff-style matching still finds the code, but has to
//! carry every changed field as a difference byte.
//!
//! This module moves the base into the new release's address space first. The diff
//! carries, for each base ELF file it applies to, an [`AddressMap`] (runs of constant
//! shift from base addresses to new ones); publisher and agent both find the base's
//! references with the same fixed [`scan`] and rewrite each one through the map
//! ([`rewritten`]): a 4-byte field naming `t` relative to an anchor `a` (for a rel32
//! operand at address `p`, `a = p + 4`) becomes `map(t) − map(a)`, an 8-byte field
//! `map(t)`. The usual bsdiff-style diff
//! is then made against the rewritten base, where code that only moved now matches
//! exactly.
//!
//! Correctness never depends on the scan or the map: the agent checks every chunk the
//! diff produces against its id. Only the size does.
//!
//! - [`elf`]: the ELF64 tables the scan reads; [`scan`]: the reference scan;
//! - [`map`]: address maps and their stream; [`align`]: how a publisher builds them.

pub mod align;
pub mod elf;
pub mod map;
pub mod rewrite;
pub mod scan;

pub use map::{AddressMap, FileMaps};

use std::io::Read;

use elf::Elf;
use scan::{Kind, Ref};

use super::StreamHeader;
use super::streams::Decoder;
use crate::error::Result;

/// Decodes the address-map stream of an algorithm-3 diff (`header`, whose stored
/// bytes `stored` yields) for a base of `base_files` regular files. `header` must come
/// from [`super::DiffHeader::decode_prefix`], which bounds its raw length by
/// [`super::MAX_MAP_RAW`].
pub fn read_maps(header: &StreamHeader, stored: impl Read, base_files: u64) -> Result<FileMaps> {
    let mut dec = Decoder::new(&header.codec, stored.take(header.stored_len), "address map")?;
    let len = header.raw_len.min(super::MAX_MAP_RAW) as usize;
    let mut raw = vec![0u8; len];
    dec.fill(&mut raw)?;
    dec.finish(header.stored_len)?;
    if len as u64 != header.raw_len {
        return Err(crate::error::FormatError::Malformed {
            kind: "address map",
            reason: format!("{} raw bytes claimed", header.raw_len),
        });
    }
    FileMaps::decode(&raw, base_files)
}

/// The bytes a reference's field holds once rewritten through `map` (the first
/// [`Kind::width`] bytes of the array), little-endian.
pub fn rewritten(r: &Ref, map: &AddressMap) -> [u8; 8] {
    match r.kind {
        Kind::Rel32 => {
            let v = map.map(r.target).wrapping_sub(map.map(r.anchor)) as u32;
            let mut out = [0u8; 8];
            out[..4].copy_from_slice(&v.to_le_bytes());
            out
        }
        Kind::Abs64 => map.map(r.target).to_le_bytes(),
    }
}

/// Rewrites `out`, a copy of `original` (an ELF file parsed as `elf`), through `map`:
/// every reference the scan finds in `original`, in scan order (a later reference
/// overwrites an earlier one where fields overlap). Returns the number of references.
pub fn rewrite_copy(elf: &Elf, original: &[u8], out: &mut [u8], map: &AddressMap) -> u64 {
    let mut n = 0;
    scan::scan(elf, original, |r| {
        let (at, w) = (r.at as usize, r.kind.width() as usize);
        out[at..at + w].copy_from_slice(&rewritten(&r, map)[..w]);
        n += 1;
    });
    n
}

/// `original` rewritten through `map` when it is an x86-64 ELF file, else `None`.
pub fn rewrite_file(original: &[u8], map: &AddressMap) -> Option<Vec<u8>> {
    let elf = Elf::parse(original)?;
    let mut out = original.to_vec();
    rewrite_copy(&elf, original, &mut out, map);
    Some(out)
}

#[cfg(test)]
mod tests;

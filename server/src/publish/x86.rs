//! The publisher's half of reference-aware diffs (FORMAT.md §3.6.1): address maps for
//! the base's x86-64 ELF files, and the base rewritten through them in place.
//!
//! Each new file is paired with the base file of the same path, or else of the same
//! name once runs of six or more hex digits are removed (shared libraries bundled
//! with a build hash in their name, as in Python wheels); a pair of x86-64 ELF files
//! gets a map ([`align::build_map_owned`]) when the new file is rebuilt from its
//! archive. Memory, per pair: the new file, a masked copy of the base file, the map's
//! index (0.8 bytes a base byte) and the references found (see [`align`]);
//! then, once every map is made, one copy of a base file while it is rewritten.

use std::fs::File;
use std::path::PathBuf;

use ferry_format::delta::base_files;
use ferry_format::delta::x86::elf::Elf;
use ferry_format::delta::x86::{FileMaps, align, rewrite_copy};
use ferry_format::manifest::{EntryKind, Manifest};

use super::diff::append_chunk;
use crate::error::Result;

/// A path without runs of six or more hex digits.
fn stem(path: &str) -> String {
    let mut out = String::new();
    let mut run = String::new();
    for c in path.chars() {
        if c.is_ascii_hexdigit() {
            run.push(c);
            continue;
        }
        if run.len() < 6 {
            out.push_str(&run);
        }
        run.clear();
        out.push(c);
    }
    if run.len() < 6 {
        out.push_str(&run);
    }
    out
}

/// Whether any regular file of `base` (whose files concatenated are `data`) is an
/// x86-64 ELF file.
pub fn has_elf(base: &Manifest, data: &[u8]) -> bool {
    let mut at = 0usize;
    base_files(base).any(|(_, size)| {
        let file = &data[at..at + size as usize];
        at += size as usize;
        Elf::parse(file).is_some()
    })
}

/// Builds the address maps of the base's x86-64 ELF files towards their counterparts
/// in `new` (rebuilt from `new_archive`); `data` is the base: `base`'s regular files
/// concatenated in manifest order. Returns the maps by base file index; none when no
/// pair of x86-64 ELF files is found. One pair's structures at a time, all freed on
/// return.
pub fn build_maps(
    new: &Manifest,
    new_archive: &(File, PathBuf),
    base: &Manifest,
    data: &[u8],
) -> Result<FileMaps> {
    let files = file_ranges(base);
    let offsets = new.chunk_offsets();
    let mut stored = Vec::new();
    let mut maps = FileMaps::default();
    for e in &new.entries {
        let EntryKind::File { chunks, size, .. } = &e.kind else {
            continue;
        };
        let pick = files
            .iter()
            .find(|f| f.1 == e.path)
            .or_else(|| files.iter().find(|f| stem(f.1) == stem(&e.path)));
        let Some(&(index, _, off, len)) = pick else {
            continue;
        };
        if maps.files.iter().any(|(i, _)| *i == index) {
            continue;
        }
        let old = &data[off..off + len];
        let Some(old_elf) = Elf::parse(old) else {
            continue;
        };
        let mut new_bytes = Vec::with_capacity(*size as usize);
        for &ix in chunks {
            append_chunk(
                new_archive,
                new,
                &offsets,
                ix as usize,
                &mut stored,
                &mut new_bytes,
            )?;
        }
        let Some(new_elf) = Elf::parse(&new_bytes) else {
            continue;
        };
        let (map, stats) = align::build_map_owned(old, &old_elf, new_bytes, &new_elf);
        tracing::debug!(
            path = e.path,
            base_refs = stats.old_refs,
            new_refs = stats.new_refs,
            matched = stats.matched,
            votes = stats.votes,
            runs = stats.runs,
            "address map"
        );
        if !map.is_empty() {
            maps.files.push((index, map));
        }
    }
    maps.files.sort_by_key(|(i, _)| *i);
    Ok(maps)
}

/// Rewrites `data` (as for [`build_maps`]) in place through `maps`: each mapped file
/// through one copy of it.
pub fn rewrite_base(base: &Manifest, data: &mut [u8], maps: &FileMaps) {
    let files = file_ranges(base);
    for (index, map) in &maps.files {
        let Some(&(_, _, off, len)) = files.iter().find(|f| f.0 == *index) else {
            continue;
        };
        let original = data[off..off + len].to_vec();
        if let Some(elf) = Elf::parse(&original) {
            rewrite_copy(&elf, &original, &mut data[off..off + len], map);
        }
    }
}

/// (index, path, offset, size) of every regular file of `base`, in manifest order.
fn file_ranges(base: &Manifest) -> Vec<(u64, &str, usize, usize)> {
    let mut files = Vec::new();
    let mut at = 0usize;
    for (i, (path, size)) in base_files(base).enumerate() {
        files.push((i as u64, path, at, size as usize));
        at += size as usize;
    }
    files
}

#[cfg(test)]
mod tests {
    use super::stem;

    #[test]
    fn stems_drop_build_hashes_only() {
        assert_eq!(
            stem("numpy.libs/libscipy_openblas64_-ff651d7f.so"),
            "numpy.libs/libscipy_openblas64_-.so"
        );
        assert_eq!(
            stem("lib/libgfortran-040039e1-0352e75f.so.5.0.0"),
            "lib/libgfortran--.so.5.0.0"
        );
        assert_eq!(stem("bin/app"), "bin/app");
        assert_eq!(stem("lib/deadbe.so"), "lib/.so");
        assert_eq!(stem("lib/dead.so"), "lib/dead.so");
    }
}

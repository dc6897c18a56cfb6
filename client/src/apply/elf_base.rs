//! The rewritten base of an algorithm-3 diff (FORMAT.md §3.6.1): each base ELF file the
//! diff's address maps name, with its references moved into the new release's address
//! space, in a temporary file beside the spool that the apply then maps in place of
//! the installed file.
//!
//! Memory stays bounded: the maps (at most 2^20 runs, 16 bytes each), four windows of
//! 256 KiB being patched, and the scan's few variables. The installed file is read
//! through its memory map; the copy is written sequentially, then patched window by
//! window. Disk: one copy of each mapped file, deleted when the [`Rewritten`] value is
//! dropped.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use ferry_format::delta::x86::elf::Elf;
use ferry_format::delta::x86::{AddressMap, FileMaps, rewritten, scan};
use memmap2::Mmap;

use super::ApplyError;
use super::source::map_file;
use crate::fsutil::{self, FsError, ctx};

/// Bytes of one window of the rewritten copy patched in memory, and how many windows
/// are kept: each pass of the scan writes forwards, but the relocation pass writes to
/// its table and to the words it relocates in turn.
const WINDOW: usize = 256 << 10;
const WINDOWS: usize = 4;

/// Rewritten copies of base files, by index among the base's files; the temporary
/// files are deleted on drop.
pub struct Rewritten {
    pub files: Vec<(usize, Mmap)>,
    paths: Vec<PathBuf>,
}

impl Drop for Rewritten {
    fn drop(&mut self) {
        self.files.clear();
        for p in &self.paths {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Patches a file through a few aligned windows: a write outside them writes back the
/// least recently used one and loads the window holding the new position.
struct Patcher<'a> {
    file: &'a File,
    /// The same file opened for reading (the first is write-only).
    reader: File,
    path: &'a Path,
    len: u64,
    /// (start, bytes, last use), at most [`WINDOWS`].
    windows: Vec<(u64, Vec<u8>, u64)>,
    clock: u64,
}

impl Patcher<'_> {
    /// The index of the window starting at `start` (a multiple of [`WINDOW`]), loaded
    /// if needed. Windows never overlap, so no write can be lost to another's copy.
    fn window(&mut self, start: u64) -> Result<usize, FsError> {
        if let Some(i) = self.windows.iter().position(|w| w.0 == start) {
            return Ok(i);
        }
        if self.windows.len() == WINDOWS {
            let lru = (0..WINDOWS).min_by_key(|&i| self.windows[i].2).unwrap_or(0);
            let (s, b, _) = self.windows.swap_remove(lru);
            ctx("writing", self.path, self.file.write_all_at(&b, s))?;
        }
        let n = (self.len - start).min(WINDOW as u64) as usize;
        let mut b = vec![0u8; n];
        ctx(
            "reading",
            self.path,
            self.reader.read_exact_at(&mut b, start),
        )?;
        self.windows.push((start, b, 0));
        Ok(self.windows.len() - 1)
    }

    /// Writes `bytes` at `at`; the scan only finds fields inside the file.
    fn put(&mut self, mut at: u64, mut bytes: &[u8]) -> Result<(), FsError> {
        self.clock += 1;
        while !bytes.is_empty() {
            let i = self.window(at - at % WINDOW as u64)?;
            let clock = self.clock;
            let (s, b, used) = &mut self.windows[i];
            let off = (at - *s) as usize;
            let n = bytes.len().min(b.len() - off);
            b[off..off + n].copy_from_slice(&bytes[..n]);
            *used = clock;
            at += n as u64;
            bytes = &bytes[n..];
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), FsError> {
        for (s, b, _) in self.windows.drain(..) {
            ctx("writing", self.path, self.file.write_all_at(&b, s))?;
        }
        Ok(())
    }
}

/// Writes `original` rewritten through `map` to a new file at `path`. `false` when
/// `original` is not an x86-64 ELF file (it is then used as it is).
fn rewrite_file(original: &[u8], map: &AddressMap, path: &Path) -> Result<bool, FsError> {
    let Some(elf) = Elf::parse(original) else {
        return Ok(false);
    };
    let file = fsutil::create_new_file(path)?;
    let mut w = BufWriter::with_capacity(1 << 20, &file);
    ctx("writing", path, w.write_all(original))?;
    ctx("writing", path, w.flush())?;
    drop(w);
    let mut p = Patcher {
        file: &file,
        reader: ctx("opening", path, fsutil::open_nofollow(path))?,
        path,
        len: original.len() as u64,
        windows: Vec::new(),
        clock: 0,
    };
    let mut failed = None;
    scan::scan(&elf, original, |r| {
        if failed.is_none() {
            let w = r.kind.width() as usize;
            if let Err(e) = p.put(r.at, &rewritten(&r, map)[..w]) {
                failed = Some(e);
            }
        }
    });
    if let Some(e) = failed {
        return Err(e);
    }
    p.flush()?;
    Ok(true)
}

/// Reads the address-map stream (`stored`, described by `header`) for a base of
/// `base_files` files.
pub fn read_maps(
    header: &ferry_format::delta::StreamHeader,
    stored: impl Read,
    base_files: u64,
) -> ferry_format::Result<FileMaps> {
    ferry_format::delta::x86::read_maps(header, stored, base_files)
}

/// Rewrites every base file `maps` names (`parts` are the base's files in manifest
/// order, mapped) into temporary files `prefix.N`.
pub fn rewrite_base(
    maps: &FileMaps,
    parts: &[&[u8]],
    prefix: &Path,
) -> Result<Rewritten, ApplyError> {
    let mut out = Rewritten {
        files: Vec::new(),
        paths: Vec::new(),
    };
    for (index, map) in &maps.files {
        // decode() checked the index against the base's file count.
        let i = *index as usize;
        let path = prefix.with_extension(format!("base{i}"));
        let _ = std::fs::remove_file(&path);
        out.paths.push(path.clone());
        if !rewrite_file(parts[i], map, &path)? {
            continue;
        }
        let m = map_file(&path).ok_or_else(|| {
            ApplyError::Fs(FsError {
                op: "mapping",
                path: path.clone(),
                source: std::io::Error::other("cannot map the rewritten base file"),
            })
        })?;
        out.files.push((i, m));
    }
    Ok(out)
}

#[cfg(all(test, target_arch = "x86_64", target_os = "linux"))]
mod tests {
    use ferry_format::delta::x86::AddressMap;

    use super::rewrite_file;

    /// The windowed rewrite of a real x86-64 ELF file (this test binary: PIE, with
    /// relocation and symbol tables) is byte for byte the format crate's in-memory one.
    #[test]
    fn the_rewritten_copy_of_a_real_elf_file_is_the_format_crates_rewrite() {
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let map =
            AddressMap::from_runs(&[(0x1000, 64), (0x2_0000, -128), (0x8_0000, 4096)]).unwrap();
        let expected =
            ferry_format::delta::x86::rewrite_file(&exe, &map).expect("an x86-64 ELF file");
        assert_ne!(expected, exe, "the map moves references");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("copy");
        assert!(rewrite_file(&exe, &map, &path).unwrap());
        assert!(std::fs::read(&path).unwrap() == expected, "same bytes");
        let other = dir.path().join("other");
        assert!(!rewrite_file(b"#!/bin/sh\n", &map, &other).unwrap());
        assert!(!other.exists());
    }
}

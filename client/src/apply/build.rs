//! Writing a release tree into staging, one chunk at a time.
//!
//! The tree is built under `ROOT/.ferry/staging/tree-<version>/` and only renamed into
//! `ROOT/versions/` once complete and synced, so a crash leaves at worst a stale
//! staging tree (deleted by the next run). Files are created with `O_EXCL|O_NOFOLLOW`
//! and nothing is ever opened through a symlink. Memory stays bounded by one chunk.
//! A file a retained release already holds is shared with it, not written
//! ([`super::share`]); every file is installed read-only.

use std::cell::RefCell;
use std::fs::{self, DirBuilder, File};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, FileExt};
use std::path::{Path, PathBuf};

use ferry_format::chunking::decompress_chunk;
use ferry_format::id::Digest;
use ferry_format::manifest::{EntryKind, Manifest};
use ferry_format::plan::FetchRange;
use ferry_format::verified::Verified;

use super::ApplyError;
use super::diff::DiffSpool;
use super::share::{Sharer, installed_mode};
use super::source::LocalChunks;
use crate::fetch::ranges::range_file;
use crate::fsutil::{self, ctx};

/// What one update fetched: archive ranges on disk (not yet trusted) and, when the
/// plan used a diff, the spool of chunks it produced (verified, re-checked on read).
pub struct Downloaded {
    dir: PathBuf,
    archive: Digest,
    ranges: Vec<FetchRange>,
    offsets: Vec<u64>,
    open: RefCell<Option<(usize, File)>>,
    spool: Option<DiffSpool>,
}

impl Downloaded {
    pub fn new(dir: &Path, manifest: &Manifest, ranges: &[FetchRange]) -> Self {
        Downloaded {
            dir: dir.to_path_buf(),
            archive: manifest.archive.hash,
            ranges: ranges.to_vec(),
            offsets: manifest.chunk_offsets(),
            open: RefCell::new(None),
            spool: None,
        }
    }

    /// Adds the chunks a diff produced; they are taken before archive ranges.
    pub fn with_spool(mut self, spool: Option<DiffSpool>) -> Self {
        self.spool = spool;
        self
    }

    fn range_of(&self, chunk: usize) -> Option<usize> {
        let i = self.ranges.partition_point(|r| r.last_chunk <= chunk);
        self.ranges
            .get(i)
            .filter(|r| r.first_chunk <= chunk && chunk < r.last_chunk)
            .map(|_| i)
    }

    /// Reads and checks chunk `chunk` of the manifest's table: from the diff spool, or
    /// decompressed from its archive range.
    pub fn chunk(&self, manifest: &Manifest, chunk: usize) -> Result<Vec<u8>, ApplyError> {
        let rec = manifest.chunks[chunk];
        if let Some(spool) = &self.spool
            && let Some(bytes) = spool.chunk(&rec.id, rec.size)?
        {
            return Ok(bytes);
        }
        let ri = self
            .range_of(chunk)
            .ok_or_else(|| ApplyError::MissingChunk {
                id: rec.id.to_hex(),
            })?;
        let r = &self.ranges[ri];
        let path = range_file(&self.dir, &self.archive, r);
        let mut open = self.open.borrow_mut();
        if open.as_ref().is_none_or(|(i, _)| *i != ri) {
            *open = Some((ri, ctx("opening", &path, fsutil::open_nofollow(&path))?));
        }
        let Some((_, file)) = open.as_ref() else {
            unreachable!("just opened")
        };
        let mut stored = vec![0u8; rec.stored_size as usize];
        ctx(
            "reading",
            &path,
            file.read_exact_at(&mut stored, self.offsets[chunk] - r.start),
        )?;
        decompress_chunk(&rec.id, rec.size, &stored).map_err(|source| {
            drop(open.take());
            let _ = fs::remove_file(&path);
            ApplyError::CorruptDownload { source, file: path }
        })
    }
}

/// What [`build_tree`] did beyond writing chunks.
#[derive(Debug, Default, Clone, Copy)]
pub struct Built {
    /// Files shared with a retained release instead of written (reflinks or hard
    /// links), and their bytes.
    pub shared_files: u64,
    pub shared_bytes: u64,
}

/// Downloaded chunks decoded ahead of the writer: enough to keep both cores busy,
/// few enough to keep memory at a few MiB.
const DECODE_AHEAD: usize = 32;

/// Builds the tree of `manifest` at `dest` (which must not exist). Nothing is synced
/// here: the caller syncs the filesystem once, when the tree is complete, before
/// renaming it into place (one sync for the tree instead of one per file).
///
/// Downloaded chunks are read, decompressed and checked against their ids on a second
/// thread, in the order the writer takes them, while this one hashes files, copies
/// local chunks and writes: decoding is the larger half of a fresh install's work.
pub fn build_tree(
    manifest: &Verified<Manifest>,
    dest: &Path,
    local: &mut LocalChunks,
    downloaded: Downloaded,
) -> Result<Built, ApplyError> {
    // Every chunk the writer will ask of the download, in its order: the decoder
    // thread produces exactly this sequence.
    let needed: Vec<usize> = manifest
        .entries
        .iter()
        .filter_map(|e| match &e.kind {
            EntryKind::File { chunks, .. } => Some(chunks),
            _ => None,
        })
        .flatten()
        .map(|&ix| ix as usize)
        .filter(|&ix| !local.has(&manifest.chunks[ix].id))
        .collect();
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel(DECODE_AHEAD);
        scope.spawn(move || {
            for ix in needed {
                let chunk = downloaded.chunk(manifest, ix);
                let failed = chunk.is_err();
                // A closed channel means the writer stopped: so does the decoder.
                if tx.send(chunk).is_err() || failed {
                    break;
                }
            }
        });
        let mut next = || {
            rx.recv().unwrap_or_else(|_| {
                Err(ApplyError::MissingChunk {
                    id: "(the decoder stopped)".into(),
                })
            })
        };
        write_tree(manifest, dest, local, &mut next)
    })
}

/// The writer's half of [`build_tree`]: `next` yields the downloaded chunks in order.
fn write_tree(
    manifest: &Verified<Manifest>,
    dest: &Path,
    local: &mut LocalChunks,
    next: &mut dyn FnMut() -> Result<Vec<u8>, ApplyError>,
) -> Result<Built, ApplyError> {
    let mut dirs = vec![(dest.to_path_buf(), 0o755)];
    let mut sharer = Sharer::default();
    // Directories stay owner-writable while being filled; final modes are set last.
    ctx(
        "creating directory",
        dest,
        DirBuilder::new().mode(0o700).create(dest),
    )?;
    for e in &manifest.entries {
        let path = dest.join(&e.path);
        match &e.kind {
            EntryKind::Dir { mode } => {
                ctx(
                    "creating directory",
                    &path,
                    DirBuilder::new().mode(0o700).create(&path),
                )?;
                dirs.push((path, *mode));
            }
            EntryKind::File {
                mode,
                size,
                hash,
                chunks,
            } => {
                let copies = local.file_copies(hash, *size);
                if !copies.is_empty() && sharer.share(&copies, *size, hash, *mode, &path)?.is_some()
                {
                    // Its downloaded chunks, if any were planned, go unused.
                    for &ix in chunks {
                        if !local.has(&manifest.chunks[ix as usize].id) {
                            next()?;
                        }
                    }
                    crash_point!("client::staging::file_written");
                    continue;
                }
                let mut f = fsutil::create_new_file(&path)?;
                let mut hasher = blake3::Hasher::new();
                for &ix in chunks {
                    let ix = ix as usize;
                    let id = manifest.chunks[ix].id;
                    let written = if local.has(&id) {
                        local.with_chunk(&id, |b| {
                            hasher.update(b);
                            f.write_all(b)
                        })?
                    } else {
                        let b = next()?;
                        hasher.update(&b);
                        f.write_all(&b)
                    };
                    ctx("writing", &path, written)?;
                }
                let actual = Digest::from(hasher.finalize());
                if actual != *hash {
                    return Err(ApplyError::FileMismatch {
                        path: e.path.clone(),
                        expected: hash.to_hex(),
                        actual: actual.to_hex(),
                    });
                }
                fsutil::set_mode(&path, installed_mode(*mode))?;
                crash_point!("client::staging::file_written");
            }
            EntryKind::Symlink { target } => {
                ctx(
                    "creating symlink",
                    &path,
                    std::os::unix::fs::symlink(target, &path),
                )?;
            }
        }
    }
    // Deepest first, so a read-only parent never blocks its children.
    for (dir, mode) in dirs.iter().rev() {
        fsutil::set_mode(dir, *mode)?;
    }
    Ok(Built {
        shared_files: sharer.reflinked + sharer.hard_linked,
        shared_bytes: sharer.bytes,
    })
}

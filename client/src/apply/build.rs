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
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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

/// A download the tree is built from while it runs: the downloader says when it
/// ended, and the reader waits for bytes until then.
#[derive(Debug, Default)]
pub struct Live {
    ended: AtomicBool,
    /// Range files a corrupt chunk was read from. The downloader may still be
    /// writing (or renaming) them, so they are deleted once it ended.
    corrupt: Mutex<Vec<PathBuf>>,
}

impl Live {
    /// Marks the download ended (complete or failed): a reader still waiting for
    /// bytes stops, and the range files a corrupt chunk came from are deleted so the
    /// next run downloads them again.
    pub fn end(&self) {
        let corrupt = {
            let mut corrupt = self.corrupt.lock().unwrap_or_else(|e| e.into_inner());
            self.ended.store(true, Ordering::Release);
            std::mem::take(&mut *corrupt)
        };
        corrupt.iter().for_each(|path| remove_range(path));
    }

    /// Deletes the range file `path` once the download ended (at once if it has).
    fn refuse(&self, path: &Path) {
        let mut corrupt = self.corrupt.lock().unwrap_or_else(|e| e.into_inner());
        if self.ended() {
            drop(corrupt);
            remove_range(path);
        } else {
            corrupt.push(path.to_path_buf());
        }
    }

    fn ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }
}

/// Deletes a range file and its `.part`.
fn remove_range(path: &Path) {
    let mut part = path.as_os_str().to_owned();
    part.push(".part");
    let _ = fs::remove_file(part);
    let _ = fs::remove_file(path);
}

/// How long a reader sleeps between looks at a range file that is still growing.
const GROWING_POLL: Duration = Duration::from_millis(1);

/// What one update fetched: archive ranges on disk (not yet trusted) and, when the
/// plan used a diff, the spool of chunks it produced (verified, re-checked on read).
pub struct Downloaded {
    dir: PathBuf,
    archive: Digest,
    ranges: Vec<FetchRange>,
    offsets: Vec<u64>,
    open: RefCell<Option<(usize, File)>>,
    spool: Option<DiffSpool>,
    live: Option<Arc<Live>>,
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
            live: None,
        }
    }

    /// Reads ranges while `live` is still downloading them: a chunk is read from the
    /// range's `.part` file as soon as its bytes are there (they are checked against
    /// the chunk's id like any others), so decoding and writing overlap the download.
    pub fn while_downloading(mut self, live: Arc<Live>) -> Self {
        self.live = Some(live);
        self
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
        let end = self.offsets[chunk] - r.start + u64::from(rec.stored_size);
        let mut open = self.open.borrow_mut();
        if open.as_ref().is_none_or(|(i, _)| *i != ri) {
            *open = None;
        }
        if let Some(live) = &self.live {
            wait_for(&mut open, ri, &path, end, live)?;
        } else if open.is_none() {
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
            match &self.live {
                Some(live) => live.refuse(&path),
                None => remove_range(&path),
            }
            ApplyError::CorruptDownload { source, file: path }
        })
    }
}

/// Waits until range `ri` (final name `path`) holds at least `end` bytes, with the
/// file open in `open`: the complete file, or its `.part` while it grows (a rename
/// keeps an open descriptor valid). A file replaced under the name (a stale part the
/// downloader deleted) is opened again. Fails once the download ended without them.
fn wait_for(
    open: &mut Option<(usize, File)>,
    ri: usize,
    path: &Path,
    end: u64,
    live: &Live,
) -> Result<(), ApplyError> {
    // The common case: the file already open has the bytes (a rename from `.part`
    // keeps the descriptor valid); one fstat.
    if let Some((i, f)) = open.as_ref()
        && *i == ri
        && f.metadata().is_ok_and(|m| m.len() >= end)
    {
        return Ok(());
    }
    let mut part = path.as_os_str().to_owned();
    part.push(".part");
    let part = PathBuf::from(part);
    loop {
        // Read `ended` before looking: bytes written before it ended are then seen.
        let ended = live.ended();
        let current = [path, part.as_path()].into_iter().find_map(|p| {
            fs::symlink_metadata(p)
                .ok()
                .filter(|m| m.is_file())
                .map(|m| (p, m))
        });
        if let Some((p, meta)) = current {
            let same = open
                .as_ref()
                .and_then(|(_, f)| f.metadata().ok())
                .is_some_and(|m| m.ino() == meta.ino() && m.dev() == meta.dev());
            if !same {
                match fsutil::open_nofollow(p) {
                    Ok(f) => *open = Some((ri, f)),
                    // Renamed from `.part` between the look and the open: look again.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(ctx("opening", p, Err(e))?),
                }
            }
            let len = match open.as_ref() {
                Some((_, f)) => ctx("inspecting", p, f.metadata())?.len(),
                None => 0,
            };
            if len >= end {
                return Ok(());
            }
        }
        if ended {
            return Err(ApplyError::MissingChunk {
                id: format!(
                    "(the download of {} ended before byte {end})",
                    path.display()
                ),
            });
        }
        std::thread::sleep(GROWING_POLL);
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

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_format::chunking::{ChunkParams, compress_chunk};
    use ferry_format::id::{ChunkId, ObjectRef};
    use ferry_format::manifest::ChunkRecord;

    /// A manifest of two chunks and the archive holding them.
    fn two_chunks() -> (Manifest, Vec<u8>) {
        let data = [vec![1u8; 70_000], vec![2u8; 50_000]];
        let mut archive = Vec::new();
        let mut chunks = Vec::new();
        for d in &data {
            let stored = compress_chunk(d, 3).unwrap();
            chunks.push(ChunkRecord {
                id: ChunkId::of(d),
                size: d.len() as u32,
                stored_size: stored.len() as u32,
                generation: 1,
            });
            archive.extend_from_slice(&stored);
        }
        let manifest = Manifest {
            channel: "stable".into(),
            version: "1.0.0".into(),
            generation: 1,
            chunking: ChunkParams::default(),
            archive: ObjectRef {
                hash: Digest::of(&archive),
                size: archive.len() as u64,
            },
            chunks,
            entries: Vec::new(),
            diffs: Vec::new(),
        };
        (manifest, archive)
    }

    #[test]
    fn a_chunk_is_read_from_a_growing_range_as_soon_as_its_bytes_arrive() {
        let t = tempfile::tempdir().unwrap();
        let (m, archive) = two_chunks();
        let range = FetchRange {
            start: 0,
            end: archive.len() as u64,
            first_chunk: 0,
            last_chunk: 2,
        };
        let done = range_file(t.path(), &m.archive.hash, &range);
        let mut part = done.clone().into_os_string();
        part.push(".part");
        let live = Arc::new(Live::default());
        let d = Downloaded::new(t.path(), &m, std::slice::from_ref(&range))
            .while_downloading(live.clone());
        let first_end = m.chunks[0].stored_size as usize;
        std::thread::scope(|s| {
            s.spawn(|| {
                // The downloader: no file yet, then the first chunk's bytes in the
                // part file, then the rest and the rename, as fetch::ranges does.
                std::thread::sleep(Duration::from_millis(30));
                let mut f = fs::File::create(&part).unwrap();
                f.write_all(&archive[..first_end]).unwrap();
                std::thread::sleep(Duration::from_millis(30));
                f.write_all(&archive[first_end..]).unwrap();
                fs::rename(&part, &done).unwrap();
                live.end();
            });
            assert_eq!(d.chunk(&m, 0).unwrap(), vec![1u8; 70_000]);
            assert_eq!(d.chunk(&m, 1).unwrap(), vec![2u8; 50_000]);
        });
    }

    #[test]
    fn a_download_that_ends_short_fails_the_chunk_it_lacks_instead_of_waiting() {
        let t = tempfile::tempdir().unwrap();
        let (m, archive) = two_chunks();
        let range = FetchRange {
            start: 0,
            end: archive.len() as u64,
            first_chunk: 0,
            last_chunk: 2,
        };
        let mut part = range_file(t.path(), &m.archive.hash, &range).into_os_string();
        part.push(".part");
        fs::write(&part, &archive[..m.chunks[0].stored_size as usize]).unwrap();
        let live = Arc::new(Live::default());
        live.end();
        let d = Downloaded::new(t.path(), &m, std::slice::from_ref(&range)).while_downloading(live);
        assert_eq!(d.chunk(&m, 0).unwrap(), vec![1u8; 70_000]);
        let err = d.chunk(&m, 1).unwrap_err().to_string();
        assert!(err.contains("ended before byte"), "{err}");
    }
}

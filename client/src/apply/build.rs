//! Writing a release tree into staging, one chunk at a time.
//!
//! The tree is built under `ROOT/.ferry/staging/tree-<version>/` and only renamed into
//! `ROOT/versions/` once complete and synced, so a crash leaves at worst a stale
//! staging tree (deleted by the next run). Files are created with `O_EXCL|O_NOFOLLOW`
//! and nothing is ever opened through a symlink. Memory stays bounded by one chunk.
//! A file a retained release already holds is shared with it, not written
//! ([`super::share`]); every file is installed read-only.

use std::fs::{self, DirBuilder, File};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt};
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
use super::file_hash::{self, BesideHasher};
use super::image;
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
    open: Mutex<Option<(usize, File)>>,
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
            open: Mutex::new(None),
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
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        self.chunk_with(&mut open, manifest, chunk)
    }

    /// [`Downloaded::chunk`] with the caller's open range file, so several threads
    /// can decode at once, each with its own.
    fn chunk_with(
        &self,
        open: &mut Option<(usize, File)>,
        manifest: &Manifest,
        chunk: usize,
    ) -> Result<Vec<u8>, ApplyError> {
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
        if open.as_ref().is_none_or(|(i, _)| *i != ri) {
            *open = None;
        }
        if let Some(live) = &self.live {
            wait_for(open, ri, &path, end, live)?;
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

/// Gives a download's bytes back to the filesystem once the writer has taken the last
/// chunk that needs them, a few MiB at a time: the tree is synced once at the end,
/// and without this that sync would first write out the whole download it no longer
/// needs (at 4 GiB, half again as much as the tree). A run killed after this
/// downloads those ranges again ([`crate::fetch::ranges`] resumes up to a hole).
struct Reclaim {
    ranges: Vec<RangeUse>,
}

struct RangeUse {
    path: PathBuf,
    /// Where each chunk of the range ends, relative to the range.
    ends: Vec<u64>,
    /// For the range's k-th chunk, the last writer position needing it or any chunk
    /// before it in the range (-1: none).
    done_by: Vec<i64>,
    /// Chunks wholly consumed, from the start.
    consumed: usize,
    /// Bytes given back, from the start (whole blocks).
    punched: u64,
}

/// Bytes given back at a time: few calls, little of the download left to write out.
const RECLAIM_STEP: u64 = 8 << 20;

impl Reclaim {
    /// `needed` lists the chunk taken at each writer position.
    fn new(d: &Downloaded, manifest: &Manifest, needed: &[usize]) -> Self {
        let mut last_use = std::collections::HashMap::new();
        for (p, &c) in needed.iter().enumerate() {
            last_use.insert(c, p as i64);
        }
        let ranges = d
            .ranges
            .iter()
            .map(|r| {
                let mut done_by = Vec::with_capacity(r.last_chunk - r.first_chunk);
                let mut ends = Vec::with_capacity(r.last_chunk - r.first_chunk + 1);
                let mut latest = -1i64;
                for c in r.first_chunk..r.last_chunk {
                    latest = latest.max(last_use.get(&c).copied().unwrap_or(-1));
                    done_by.push(latest);
                    ends.push(d.offsets[c] - r.start + u64::from(manifest.chunks[c].stored_size));
                }
                RangeUse {
                    path: range_file(&d.dir, &d.archive, r),
                    ends,
                    done_by,
                    consumed: 0,
                    punched: 0,
                }
            })
            .collect();
        Reclaim { ranges }
    }

    /// The writer took position `p`, chunk `chunk`.
    fn taken(&mut self, d: &Downloaded, p: usize, chunk: usize) {
        let Some(ri) = d.range_of(chunk) else { return };
        let u = &mut self.ranges[ri];
        // Cleared when the range is gone or its filesystem cannot punch holes.
        if u.done_by.is_empty() {
            return;
        }
        while u.consumed < u.done_by.len() && u.done_by[u.consumed] <= p as i64 {
            u.consumed += 1;
        }
        let upto = match u.consumed {
            0 => 0,
            k => u.ends[k - 1],
        };
        let all = u.consumed == u.done_by.len();
        if upto >= u.punched + RECLAIM_STEP || (all && upto > u.punched) {
            let mut part = u.path.clone().into_os_string();
            part.push(".part");
            let open = |p: &Path| {
                fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(p)
            };
            let Ok(f) = open(&u.path).or_else(|_| open(Path::new(&part))) else {
                // Gone (a corrupt range refused): nothing left to give back.
                u.done_by.clear();
                return;
            };
            {
                // Whole blocks only: a byte zeroed without a hole would look like a
                // downloaded one to a later run. Unsupported on some filesystems: the
                // sync then writes the range out, as before.
                let block = f.metadata().map_or(4096, |m| m.blksize().max(512));
                let from = u.punched.div_ceil(block) * block;
                let to = upto / block * block;
                if to > from {
                    match fsutil::punch_hole(&f, from, to - from) {
                        Ok(()) => u.punched = to,
                        Err(_) => u.done_by.clear(),
                    }
                }
            }
        }
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
            // A range refused for a corrupt chunk is deleted when the download ends;
            // the copy still open may hold this chunk's bytes (checked like any).
            if let Some((i, f)) = open.as_ref()
                && *i == ri
                && f.metadata().is_ok_and(|m| m.len() >= end)
            {
                return Ok(());
            }
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

/// Bytes of a file written between two starts of their writeback
/// ([`fsutil::start_writeback`]): the disk writes the tree out while it is built.
const WRITEBACK_EVERY: u64 = 8 << 20;

/// Downloaded chunks decoded ahead of the writer, across all decoders: enough to keep
/// every core busy, few enough to keep memory at a few MiB.
const DECODE_AHEAD: usize = 32;
/// Most decoder threads: zstd and blake3 of one chunk take about twice the writer's
/// time for it, so a few decoders keep the writer fed.
const MAX_DECODERS: usize = 4;

/// Builds the tree of `manifest` at `dest` (which must not exist). Nothing is synced
/// here: the caller syncs the filesystem once, when the tree is complete, before
/// renaming it into place (one sync for the tree instead of one per file).
///
/// Downloaded chunks are read, decompressed and checked against their ids on decoder
/// threads (one per core, each taking every k-th chunk the writer will ask for and
/// handing them over in order), while this one hashes files, copies local chunks and
/// writes: decoding is the larger part of a fresh install's work.
pub fn build_tree(
    manifest: &Verified<Manifest>,
    dest: &Path,
    local: &mut LocalChunks,
    downloaded: Downloaded,
) -> Result<Built, ApplyError> {
    let decoders = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, MAX_DECODERS);
    build_with(manifest, dest, local, downloaded, decoders)
}

/// [`build_tree`] with `decoders` decoder threads (private: only verified manifests
/// reach the public entry point).
fn build_with(
    manifest: &Manifest,
    dest: &Path,
    local: &mut LocalChunks,
    downloaded: Downloaded,
    decoders: usize,
) -> Result<Built, ApplyError> {
    // Every chunk the writer will ask of the download, in its order: the decoders
    // together produce exactly this sequence.
    // A spool laid out as one file completes that file in place (image.rs): the
    // writer asks nothing of the decoders for it.
    let image = downloaded.spool.as_ref().filter(|s| s.image().is_some());
    let needed: Vec<usize> = manifest
        .entries
        .iter()
        .filter(|e| image.is_none_or(|s| s.image() != Some(e.path.as_str())))
        .filter_map(|e| match &e.kind {
            EntryKind::File { chunks, .. } => Some(chunks),
            _ => None,
        })
        .flatten()
        .map(|&ix| ix as usize)
        .filter(|&ix| !local.has(&manifest.chunks[ix].id))
        .collect();
    let decoders = decoders.clamp(1, needed.len().max(1));
    let downloaded = &downloaded;
    let needed = &needed;
    // The first corrupt chunk any decoder met: the cause to report, even when the
    // writer stopped first at an earlier chunk that then went missing (its range was
    // refused and deleted).
    let corrupt: Mutex<Option<ApplyError>> = Mutex::new(None);
    let corrupt_ref = &corrupt;
    let built = std::thread::scope(|scope| {
        let mut queues = Vec::with_capacity(decoders);
        for k in 0..decoders {
            let (tx, rx) = std::sync::mpsc::sync_channel(DECODE_AHEAD.div_ceil(decoders));
            queues.push(rx);
            scope.spawn(move || {
                let mut open = None;
                for &ix in needed.iter().skip(k).step_by(decoders) {
                    let chunk = match downloaded.chunk_with(&mut open, manifest, ix) {
                        Err(e @ ApplyError::CorruptDownload { .. }) => {
                            let mut first = corrupt_ref.lock().unwrap_or_else(|p| p.into_inner());
                            first.get_or_insert(e);
                            Err(ApplyError::MissingChunk {
                                id: "(a downloaded chunk failed its check)".into(),
                            })
                        }
                        other => other,
                    };
                    let failed = chunk.is_err();
                    // A closed channel means the writer stopped: so does the decoder.
                    if tx.send(chunk).is_err() || failed {
                        break;
                    }
                }
            });
        }
        let mut taken = 0usize;
        let mut reclaim = Reclaim::new(downloaded, manifest, needed);
        let mut next = || {
            let p = taken;
            taken += 1;
            let chunk = queues[p % decoders].recv().unwrap_or_else(|_| {
                Err(ApplyError::MissingChunk {
                    id: "(the decoder stopped)".into(),
                })
            });
            if chunk.is_ok() {
                reclaim.taken(downloaded, p, needed[p]);
            }
            chunk
        };
        let built = write_tree(manifest, dest, local, &mut next, image);
        // Decoders blocked on a full queue see it closed and stop.
        drop(queues);
        built
    });
    // Every decoder has stopped (the scope joined them).
    match (
        built,
        corrupt.into_inner().unwrap_or_else(|p| p.into_inner()),
    ) {
        (Err(ApplyError::MissingChunk { .. }), Some(cause)) => Err(cause),
        (built, _) => built,
    }
}

/// The writer's half of [`build_tree`]: `next` yields the downloaded chunks in order.
/// Large files are hashed whole beside it ([`BesideHasher`]); a mismatch fails the
/// build once the writer is done.
fn write_tree(
    manifest: &Manifest,
    dest: &Path,
    local: &mut LocalChunks,
    next: &mut dyn FnMut() -> Result<Vec<u8>, ApplyError>,
    image: Option<&DiffSpool>,
) -> Result<Built, ApplyError> {
    let large = manifest
        .entries
        .iter()
        .any(|e| matches!(e.kind, EntryKind::File { size, .. } if size >= file_hash::BESIDE_FROM));
    std::thread::scope(|s| {
        let beside = large.then(|| BesideHasher::start(s));
        let built = write_entries(manifest, dest, local, next, beside.as_ref(), image)?;
        beside.map_or(Ok(()), BesideHasher::finish)?;
        Ok(built)
    })
}

fn write_entries(
    manifest: &Manifest,
    dest: &Path,
    local: &mut LocalChunks,
    next: &mut dyn FnMut() -> Result<Vec<u8>, ApplyError>,
    beside: Option<&BesideHasher<'_>>,
    image: Option<&DiffSpool>,
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
                if let Some(spool) = image.filter(|s| s.image() == Some(e.path.as_str())) {
                    let entry = (*size, hash, *mode);
                    image::place(manifest, chunks, entry, &e.path, spool, local, &path)?;
                    crash_point!("client::staging::file_written");
                    continue;
                }
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
                let beside = beside.filter(|_| *size >= file_hash::BESIDE_FROM);
                let mut hasher = blake3::Hasher::new();
                let (mut at, mut flushed) = (0u64, 0u64);
                for &ix in chunks {
                    let ix = ix as usize;
                    let id = manifest.chunks[ix].id;
                    let written = if local.has(&id) {
                        let (written, copy) = local.with_chunk(&id, |b| {
                            let copy = beside.map(|_| b.to_vec());
                            if copy.is_none() {
                                hasher.update(b);
                            }
                            (f.write_all(b), copy)
                        })?;
                        if let (Some(h), Some(copy)) = (beside, copy) {
                            h.bytes(copy)?;
                        }
                        written
                    } else {
                        let b = next()?;
                        let written = f.write_all(&b);
                        match beside {
                            Some(h) => h.bytes(b)?,
                            None => {
                                hasher.update(&b);
                            }
                        }
                        written
                    };
                    ctx("writing", &path, written)?;
                    at += u64::from(manifest.chunks[ix].size);
                    if at - flushed >= WRITEBACK_EVERY {
                        fsutil::start_writeback(&f, flushed, at - flushed);
                        flushed = at;
                    }
                }
                match beside {
                    Some(h) => h.end_file(&e.path, *hash)?,
                    None => {
                        let actual = Digest::from(hasher.finalize());
                        if actual != *hash {
                            return Err(ApplyError::FileMismatch {
                                path: e.path.clone(),
                                expected: hash.to_hex(),
                                actual: actual.to_hex(),
                            });
                        }
                    }
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
    use ferry_format::manifest::{ChunkRecord, Entry};

    /// A manifest of two chunks and the archive holding them.
    fn two_chunks() -> (Manifest, Vec<u8>) {
        chunked(&[vec![1u8; 70_000], vec![2u8; 50_000]])
    }

    /// A manifest whose chunk table is `data`, in order, and the archive holding them
    /// (no entries: tests add the files they need).
    fn chunked(data: &[Vec<u8>]) -> (Manifest, Vec<u8>) {
        let mut archive = Vec::new();
        let mut chunks = Vec::new();
        for d in data {
            let stored = compress_chunk(d, 1).unwrap();
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
            chunking: ChunkParams {
                max: 4 << 20,
                ..ChunkParams::default()
            },
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
    fn decoders_hand_chunks_over_in_the_writers_order_and_a_corrupt_one_is_the_error() {
        let (mut m, archive) = two_chunks();
        let data = [vec![1u8; 70_000], vec![2u8; 50_000]];
        // One file of the two chunks in the reverse of their archive order, twice:
        // the writer asks 1, 0, 1, 0 of two decoders.
        m.entries = vec![Entry {
            path: "f".into(),
            kind: EntryKind::File {
                mode: 0o644,
                size: 240_000,
                hash: Digest::of(&[&data[1][..], &data[0], &data[1], &data[0]].concat()),
                chunks: vec![1, 0, 1, 0],
            },
        }];
        let range = FetchRange {
            start: 0,
            end: archive.len() as u64,
            first_chunk: 0,
            last_chunk: 2,
        };
        let t = tempfile::tempdir().unwrap();
        let done = range_file(t.path(), &m.archive.hash, &range);
        fs::write(&done, &archive).unwrap();
        let d = Downloaded::new(t.path(), &m, std::slice::from_ref(&range));
        let mut local = LocalChunks::index(&[]);
        build_with(&m, &t.path().join("tree"), &mut local, d, 2).unwrap();
        assert_eq!(
            fs::read(t.path().join("tree/f")).unwrap(),
            [&data[1][..], &data[0], &data[1], &data[0]].concat()
        );

        // Chunk 0 (first in the archive, second for the writer) arrived corrupt and
        // the download ended before chunk 1: the corrupt chunk is the error, not the
        // chunk the writer asked for first, and its range is deleted.
        let mut bad = archive[..m.chunks[0].stored_size as usize].to_vec();
        bad[10] ^= 0x55;
        let mut part = done.clone().into_os_string();
        part.push(".part");
        fs::remove_file(&done).unwrap();
        fs::write(&part, &bad).unwrap();
        let live = Arc::new(Live::default());
        let d = Downloaded::new(t.path(), &m, std::slice::from_ref(&range))
            .while_downloading(live.clone());
        let err = std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(50));
                live.end();
            });
            build_with(&m, &t.path().join("tree2"), &mut local, d, 2).unwrap_err()
        });
        assert!(matches!(err, ApplyError::CorruptDownload { .. }), "{err}");
        assert!(!Path::new(&part).exists());
    }

    #[test]
    fn a_file_whose_content_misses_its_manifest_hash_fails_the_build_large_or_small() {
        // 64 chunks of 70,000 bytes: a file of 4.5 MB, hashed beside the writer, and
        // a small one of two chunks, hashed inline; each file's manifest hash is wrong
        // in turn (the one of the file with its last chunk left out).
        let data: Vec<Vec<u8>> = (0..64u8).map(|k| vec![k; 70_000]).collect();
        let (m0, archive) = chunked(&data);
        let t = tempfile::tempdir().unwrap();
        let range = FetchRange {
            start: 0,
            end: archive.len() as u64,
            first_chunk: 0,
            last_chunk: 64,
        };
        fs::write(range_file(t.path(), &m0.archive.hash, &range), &archive).unwrap();
        let file = |path: &str, chunks: Vec<u32>, wrong: bool| {
            let content: Vec<u8> = chunks
                .iter()
                .flat_map(|&c| data[c as usize].clone())
                .collect();
            let hashed = if wrong {
                &content[..content.len() - 70_000]
            } else {
                &content[..]
            };
            Entry {
                path: path.into(),
                kind: EntryKind::File {
                    mode: 0o644,
                    size: content.len() as u64,
                    hash: Digest::of(hashed),
                    chunks,
                },
            }
        };
        let large: Vec<u32> = (0..64).collect();
        const { assert!(64 * 70_000 >= file_hash::BESIDE_FROM) };
        for (k, (large_wrong, small_wrong)) in [(false, false), (true, false), (false, true)]
            .into_iter()
            .enumerate()
        {
            let mut m = m0.clone();
            m.entries = vec![
                file("big", large.clone(), large_wrong),
                file("small", vec![3, 4], small_wrong),
            ];
            let d = Downloaded::new(t.path(), &m, std::slice::from_ref(&range));
            let mut local = LocalChunks::index(&[]);
            let tree = t.path().join(format!("tree{k}"));
            let built = build_with(&m, &tree, &mut local, d, 2);
            match (large_wrong, small_wrong, built) {
                (false, false, Ok(_)) => {
                    assert_eq!(fs::read(tree.join("big")).unwrap().len(), 64 * 70_000)
                }
                (true, _, Err(ApplyError::FileMismatch { path, .. })) => assert_eq!(path, "big"),
                (_, true, Err(ApplyError::FileMismatch { path, .. })) => {
                    assert_eq!(path, "small")
                }
                (l, s, other) => panic!("large wrong {l}, small wrong {s}: {other:?}"),
            }
        }
    }

    /// Overwrites 6 bytes of the file at `path` from `at`, as someone editing it would.
    fn edit(path: &Path, at: u64) {
        fs::OpenOptions::new()
            .write(true)
            .open(path)
            .unwrap()
            .write_all_at(b"edited", at)
            .unwrap();
    }

    /// A spooled chunk was checked when the diff produced it; the spool is a file, and
    /// bytes changed in it afterwards are caught by the hash of the file they go into,
    /// whether it is hashed inline (small) or beside the writer (large).
    #[test]
    fn a_spool_edited_after_the_diff_fails_the_build_through_the_file_hash() {
        let data: Vec<Vec<u8>> = (0..70u8).map(|k| vec![k; 70_000]).collect();
        let (m0, _) = chunked(&data);
        for (k, chunks) in [(0..2u32).collect::<Vec<_>>(), (0..70).collect()]
            .into_iter()
            .enumerate()
        {
            let t = tempfile::tempdir().unwrap();
            let path = t.path().join("s.spool");
            let spool = DiffSpool::filled(&path, &data, None);
            let content: Vec<u8> = chunks
                .iter()
                .flat_map(|&c| data[c as usize].clone())
                .collect();
            let mut m = m0.clone();
            m.entries = vec![Entry {
                path: "f".into(),
                kind: EntryKind::File {
                    mode: 0o644,
                    size: content.len() as u64,
                    hash: Digest::of(&content),
                    chunks,
                },
            }];
            edit(&path, 70_000 + 100);
            let d = Downloaded::new(t.path(), &m, &[]).with_spool(Some(spool));
            let mut local = LocalChunks::index(&[]);
            let built = build_with(&m, &t.path().join("tree"), &mut local, d, 2);
            assert!(
                matches!(&built, Err(ApplyError::FileMismatch { path, .. }) if path == "f"),
                "case {k}: {built:?}"
            );
        }
    }

    /// A spool laid out as the one file holding every chunk the diff produced becomes
    /// that file: the repeats of its chunks are copied in, its hash is checked and it
    /// is renamed into the tree, while other files come from the download as before;
    /// an image edited after the diff fails the build.
    #[test]
    fn a_spool_laid_out_as_a_file_becomes_that_file_once_completed_and_checked() {
        let data: Vec<Vec<u8>> = (0..3u8).map(|k| vec![k + 1; 70_000]).collect();
        let (mut m, archive) = chunked(&data);
        let f = [&data[1][..], &data[2], &data[1]].concat();
        let file = |path: &str, chunks: Vec<u32>, content: &[u8]| Entry {
            path: path.into(),
            kind: EntryKind::File {
                mode: 0o755,
                size: content.len() as u64,
                hash: Digest::of(content),
                chunks,
            },
        };
        m.entries = vec![file("f", vec![1, 2, 1], &f), file("g", vec![0], &data[0])];
        let img = image::layout(&m, &[1, 2]).expect("f holds every produced chunk");
        assert_eq!((img.path.as_str(), img.at.clone()), ("f", vec![0, 70_000]));
        let range = FetchRange {
            start: 0,
            end: archive.len() as u64,
            first_chunk: 0,
            last_chunk: 3,
        };
        for edited in [false, true] {
            let t = tempfile::tempdir().unwrap();
            fs::write(range_file(t.path(), &m.archive.hash, &range), &archive).unwrap();
            let path = t.path().join("s.spool");
            let spool = DiffSpool::filled(&path, &data[1..], Some(&img));
            if edited {
                edit(&path, 100);
            }
            let d =
                Downloaded::new(t.path(), &m, std::slice::from_ref(&range)).with_spool(Some(spool));
            let mut local = LocalChunks::index(&[]);
            let tree = t.path().join("tree");
            let built = build_with(&m, &tree, &mut local, d, 2);
            if edited {
                assert!(
                    matches!(&built, Err(ApplyError::FileMismatch { path, .. }) if path == "f"),
                    "{built:?}"
                );
                continue;
            }
            built.unwrap();
            assert_eq!(fs::read(tree.join("f")).unwrap(), f);
            assert_eq!(fs::read(tree.join("g")).unwrap(), data[0]);
            assert!(!path.exists(), "the spool became the file");
            let mode = fs::metadata(tree.join("f")).unwrap().mode();
            assert_eq!(mode & 0o777, installed_mode(0o755));
        }
    }

    #[test]
    fn a_consumed_download_is_given_back_before_the_tree_is_synced() {
        // Three 4 MiB chunks of noise in one range, a file of chunks 0, 1, 2, 0: the
        // range's start is still needed until the last position.
        let data: Vec<Vec<u8>> = (0..3u64)
            .map(|k| {
                let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ k;
                (0..4 << 20)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x as u8
                    })
                    .collect()
            })
            .collect();
        let (mut m, archive) = chunked(&data);
        let content = [&data[0][..], &data[1], &data[2], &data[0]].concat();
        m.entries = vec![Entry {
            path: "f".into(),
            kind: EntryKind::File {
                mode: 0o644,
                size: content.len() as u64,
                hash: Digest::of(&content),
                chunks: vec![0, 1, 2, 0],
            },
        }];
        let range = FetchRange {
            start: 0,
            end: archive.len() as u64,
            first_chunk: 0,
            last_chunk: 3,
        };
        let t = tempfile::tempdir().unwrap();
        let done = range_file(t.path(), &m.archive.hash, &range);
        fs::write(&done, &archive).unwrap();
        let held = |p: &Path| fsutil::first_hole(&fs::File::open(p).unwrap()).unwrap();
        assert_eq!(held(&done), archive.len() as u64);
        let d = Downloaded::new(t.path(), &m, std::slice::from_ref(&range));
        let mut local = LocalChunks::index(&[]);
        build_with(&m, &t.path().join("tree"), &mut local, d, 2).unwrap();
        assert_eq!(fs::read(t.path().join("tree/f")).unwrap(), content);
        // Given back from the start (block-aligned: the tail block may stay).
        assert_eq!(held(&done), 0, "the range is a hole once consumed");
        assert!(fs::metadata(&done).unwrap().blocks() * 512 < 8192);
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

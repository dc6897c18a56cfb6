//! Applying a diff object (FORMAT.md §3.6) to a retained release, producing the chunks
//! of the new release that the base lacks into a spool file in staging.
//!
//! The diff's streams are read from the downloaded object through one file handle
//! each, the base through memory maps of the base release's installed files, and the
//! output is written sequentially: memory stays at a few buffers whatever the release
//! size. Every produced chunk is hashed as its last byte arrives and compared with its
//! id, so a bad diff (or a base file edited during the update) is refused naming the
//! chunk; the file the tree builder copies it into is then hashed whole against the
//! manifest, which checks the spool's bytes again (the spool is a file on disk).
//! When the manifest is a skeleton (FORMAT.md §3.7) the hashes become the ids, so the
//! whole diff is applied before the manifest can be verified and a tree built from it
//! ([`apply_to_spool`]); with a verified manifest the tree is built while the diff is
//! applied ([`apply_into`] on another thread, the builder reading each chunk from the
//! spool as soon as it is written and verified).
//!
//! An algorithm-3 diff (FORMAT.md §3.6.1) applies to the base with its x86-64 ELF
//! files rewritten through the diff's address maps: the apply reads the base through
//! [`super::elf_base::RewrittenBase`], which rewrites those files block by block as
//! they are read (on a second thread ahead of the apply), writing nothing to disk.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use ferry_format::FormatError;
use ferry_format::delta::apply::{ConcatBase, apply};
use ferry_format::delta::{DiffHeader, base_files, missing_chunks};
use ferry_format::id::{ChunkId, Digest, ObjectRef};
use ferry_format::manifest::ChunkRecord;
use ferry_format::manifest::Manifest;

use super::ApplyError;
use super::check::hash_file;
use super::elf_base::{RewrittenBase, read_maps};
use super::image::Image;
use super::source::{LocalRelease, map_file};
use crate::fsutil::{self, FsError, ctx};

/// Bytes of an image spool written between two starts of their writeback.
const WRITEBACK_EVERY: u64 = 8 << 20;

/// Bytes before the streams at most: magic, format, header length, a ≤ 4 KiB header.
const PREFIX_MAX: u64 = 10 + 4096;

/// One chunk a diff must produce, in output order: its size, and its id when the
/// manifest names it. A skeleton's holes (FORMAT.md §3.7) have none: the hash of what
/// the diff produces becomes the id, checked later through the whole manifest's hash.
#[derive(Clone, Copy, Debug)]
pub struct Want {
    pub size: u32,
    pub id: Option<ChunkId>,
}

impl Want {
    /// The chunks of `target` that `base` lacks, which a diff from `base` produces.
    pub fn missing(target: &Manifest, base: &Manifest) -> Vec<Want> {
        missing_chunks(target, base)
            .into_iter()
            .map(|i| Want::named(&target.chunks[i]))
            .collect()
    }

    fn named(c: &ChunkRecord) -> Want {
        Want {
            size: c.size,
            id: Some(c.id),
        }
    }
}

/// Chunks a diff produced, verified, laid end to end in one staging file: complete
/// ([`apply_to_spool`]), or still being written by [`apply_into`] on another thread
/// while the tree is built from it ([`DiffSpool::create`]): a reader asking for a
/// chunk the diff will produce waits until it is written.
pub struct DiffSpool {
    path: PathBuf,
    file: File,
    /// The manifest path of the file the spool is the image of ([`super::image`]).
    image: Option<String>,
    /// The ids the diff produces (a skeleton's holes aside): a chunk outside them is
    /// never waited for.
    named: HashSet<ChunkId>,
    shared: Arc<Shared>,
}

/// What the apply has written so far, shared with the spool's readers.
#[derive(Default)]
struct Progress {
    /// Chunk id -> offset in the spool (sizes come from the chunk table).
    offsets: HashMap<ChunkId, u64>,
    /// Ids of the produced chunks, in output order.
    produced: Vec<ChunkId>,
    /// `Some(true)` once the apply completed, `Some(false)` once it failed or stopped.
    ended: Option<bool>,
}

#[derive(Default)]
struct Shared {
    progress: Mutex<Progress>,
    grew: Condvar,
    /// Set by the reading side when the tree it builds failed: the apply stops.
    stop: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The writing side of a [`DiffSpool`], handed to [`apply_into`]. Dropped without
/// [`apply_into`] completing, it marks the spool failed, so no reader waits forever.
pub struct SpoolWriter {
    path: PathBuf,
    file: File,
    /// Where each produced chunk goes: end to end, or an image's offsets.
    at: Option<Vec<u64>>,
    shared: Arc<Shared>,
}

impl SpoolWriter {
    fn publish(&self, id: ChunkId, offset: u64) {
        let mut p = self.shared.lock();
        p.offsets.insert(id, offset);
        p.produced.push(id);
        drop(p);
        self.shared.grew.notify_all();
    }

    fn end(&self, complete: bool) {
        self.shared.lock().ended.get_or_insert(complete);
        self.shared.grew.notify_all();
    }

    /// What the reading side uses to stop the apply.
    pub fn stopper(&self) -> SpoolStop {
        SpoolStop(self.shared.clone())
    }
}

/// Stops the apply writing a spool ([`SpoolWriter::stopper`]).
pub struct SpoolStop(Arc<Shared>);

impl SpoolStop {
    /// The apply stops at its next chunk (the tree built from the spool failed).
    pub fn stop(&self) {
        self.0.stop.store(true, Ordering::Relaxed);
    }
}

impl Drop for SpoolWriter {
    fn drop(&mut self) {
        self.end(false);
    }
}

impl DiffSpool {
    /// A new, empty spool at `path` for the chunks `want` lists, and its writer.
    pub fn create(path: &Path, want: &[Want]) -> Result<(DiffSpool, SpoolWriter), ApplyError> {
        Self::create_as(path, want, None)
    }

    /// [`DiffSpool::create`], the chunks laid out as `image` says when given (one
    /// offset per chunk of `want`).
    pub fn create_as(
        path: &Path,
        want: &[Want],
        image: Option<&Image>,
    ) -> Result<(DiffSpool, SpoolWriter), ApplyError> {
        let image = image.filter(|i| i.at.len() == want.len());
        let file = fsutil::create_new_file(path)?;
        let shared = Arc::new(Shared::default());
        let spool = DiffSpool {
            path: path.to_path_buf(),
            file: ctx("opening", path, fsutil::open_nofollow(path))?,
            image: image.map(|i| i.path.clone()),
            named: want.iter().filter_map(|w| w.id).collect(),
            shared: shared.clone(),
        };
        let writer = SpoolWriter {
            path: path.to_path_buf(),
            file,
            at: image.map(|i| i.at.clone()),
            shared,
        };
        Ok((spool, writer))
    }

    /// The spool's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The manifest path of the file this spool is the image of, if it is one.
    pub fn image(&self) -> Option<&str> {
        self.image.as_deref()
    }

    /// Where chunk `id` is in the spool, once written.
    pub fn offset_of(&self, id: &ChunkId) -> Option<u64> {
        self.shared.lock().offsets.get(id).copied()
    }

    /// A complete spool at `path` holding `chunks` in order, as an apply leaves it
    /// (laid out as `image` when given).
    #[cfg(test)]
    pub(super) fn filled(path: &Path, chunks: &[Vec<u8>], image: Option<&Image>) -> DiffSpool {
        let want: Vec<Want> = chunks
            .iter()
            .map(|c| Want {
                size: c.len() as u32,
                id: Some(ChunkId::of(c)),
            })
            .collect();
        let (spool, writer) = DiffSpool::create_as(path, &want, image).unwrap();
        let mut end = 0;
        for (k, c) in chunks.iter().enumerate() {
            let at = image.map_or(end, |i| i.at[k]);
            writer.file.write_all_at(c, at).unwrap();
            writer.publish(ChunkId::of(c), at);
            end += c.len() as u64;
        }
        writer.end(true);
        spool
    }

    /// Ids of the produced chunks in output order (what fills a skeleton's holes).
    pub fn produced(&self) -> Vec<ChunkId> {
        self.shared.lock().produced.clone()
    }

    /// Whether the spool holds `id` now.
    pub fn has(&self, id: &ChunkId) -> bool {
        self.shared.lock().offsets.contains_key(id)
    }

    /// Number of chunks in the spool now.
    pub fn len(&self) -> usize {
        self.shared.lock().offsets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads chunk `id` of `size` bytes back (checked against its id when the diff
    /// produced it; the tree builder's whole-file hash checks it again). `None` if the
    /// diff does not produce it; while the apply runs, waits for a chunk it will
    /// produce.
    pub fn chunk(&self, id: &ChunkId, size: u32) -> Result<Option<Vec<u8>>, ApplyError> {
        let offset = {
            let mut p = self.shared.lock();
            loop {
                if let Some(&offset) = p.offsets.get(id) {
                    break offset;
                }
                match p.ended {
                    Some(true) => return Ok(None),
                    Some(false) => {
                        return Err(ApplyError::SpoolEnded {
                            id: id.to_hex(),
                            file: self.path.clone(),
                        });
                    }
                    None if !self.named.contains(id) => return Ok(None),
                    None => p = self.shared.grew.wait(p).unwrap_or_else(|e| e.into_inner()),
                }
            }
        };
        let mut bytes = vec![0u8; size as usize];
        ctx(
            "reading",
            &self.path,
            self.file.read_exact_at(&mut bytes, offset),
        )?;
        Ok(Some(bytes))
    }
}

/// Checks a downloaded object's size and blake3 against its signed reference; on a
/// mismatch the file is deleted so no later run reuses it.
pub fn verify_object(path: &Path, expected: &ObjectRef) -> Result<(), ApplyError> {
    let size = ctx("inspecting", path, fs::symlink_metadata(path))?.len();
    let mismatch = if size != expected.size {
        Some(FormatError::SizeMismatch {
            kind: "diff object",
            expected: expected.size,
            actual: size,
        })
    } else {
        let actual = ctx("hashing", path, hash_file(path))?;
        (actual != expected.hash).then(|| FormatError::HashMismatch {
            kind: "diff object",
            expected: expected.hash.to_hex(),
            actual: actual.to_hex(),
        })
    };
    match mismatch {
        None => Ok(()),
        Some(source) => {
            let _ = fs::remove_file(path);
            Err(ApplyError::BadObject {
                source,
                file: path.to_path_buf(),
            })
        }
    }
}

/// Applies the verified diff object at `object` (of `object_size` bytes) to the
/// installed tree of `base`, writing the chunks `want` lists (in that order) to a new
/// file `spool`: end to end, or where `image` puts them. On any error the spool is
/// deleted.
pub fn apply_to_spool(
    object: &Path,
    object_size: u64,
    base: &LocalRelease,
    (want, image): (&[Want], Option<&Image>),
    spool: &Path,
) -> Result<DiffSpool, ApplyError> {
    let (reader, writer) = DiffSpool::create_as(spool, want, image)?;
    match apply_into(object, object_size, base, want, writer) {
        Ok(()) => Ok(reader),
        Err(e) => {
            let _ = fs::remove_file(spool);
            Err(e)
        }
    }
}

/// Applies the verified diff object at `object` (of `object_size` bytes) to the
/// installed tree of `base` into the spool `writer` writes, each chunk `want` lists
/// (in that order) readable from the spool as soon as it is written and verified, so
/// a tree can be built from it on another thread meanwhile. Stops early when the
/// spool's reader says so ([`SpoolWriter::stopper`]). The caller deletes the spool.
pub fn apply_into(
    object: &Path,
    object_size: u64,
    base: &LocalRelease,
    want: &[Want],
    writer: SpoolWriter,
) -> Result<(), ApplyError> {
    let applied = apply_inner(object, object_size, base, want, &writer);
    writer.end(applied.is_ok());
    applied
}

fn apply_inner(
    object: &Path,
    object_size: u64,
    base: &LocalRelease,
    want: &[Want],
    writer: &SpoolWriter,
) -> Result<(), ApplyError> {
    let spool = writer.path.as_path();
    let bad = |source: FormatError| ApplyError::BadDiff {
        base: base.version.clone(),
        source,
    };
    let malformed = |reason: String| {
        bad(FormatError::Malformed {
            kind: "diff object",
            reason,
        })
    };

    // Header: read everything it claims before acting on any of it.
    let mut prefix = vec![0u8; object_size.min(PREFIX_MAX) as usize];
    let mut f = ctx("opening", object, fsutil::open_nofollow(object))?;
    ctx("reading", object, f.read_exact(&mut prefix))?;
    drop(f);
    let (header, start) = DiffHeader::decode_prefix(&prefix, object_size).map_err(bad)?;
    if header.base_manifest != base.manifest.object_hash() {
        return Err(malformed(format!(
            "made against manifest {}, not {}'s",
            header.base_manifest, base.version
        )));
    }
    let expected_size: u64 = want.iter().map(|w| u64::from(w.size)).sum();
    if header.target_chunks != want.len() as u64 || header.target_size != expected_size {
        return Err(malformed(format!(
            "produces {} chunks ({} bytes), {} lacks {} chunks ({expected_size} bytes)",
            header.target_chunks,
            header.target_size,
            base.version,
            want.len()
        )));
    }

    // Base: the base release's regular files in manifest order, mapped read-only.
    let mut maps = Vec::new();
    for (rel, size) in base_files(&base.manifest) {
        if size == 0 {
            maps.push(None);
            continue;
        }
        let path = base.tree.join(rel);
        match map_file(&path) {
            Some(m) if m.len() as u64 == size => maps.push(Some(m)),
            _ => return Err(ApplyError::BaseChanged { file: path }),
        }
    }
    let parts: Vec<&[u8]> = maps.iter().map(|m| m.as_deref().unwrap_or(&[])).collect();

    // Streams: byte ranges of the object, each through its own handle.
    let stream = |offset: u64, len: u64| -> Result<std::io::Take<File>, ApplyError> {
        let mut f = ctx("opening", object, fsutil::open_nofollow(object))?;
        ctx("seeking", object, f.seek(SeekFrom::Start(offset)))?;
        Ok(f.take(len))
    };
    let ranges = header.stream_ranges(start);

    // Algorithm 3: the address maps (the last stream) first; the apply then reads the
    // mapped ELF files rewritten block by block as it goes.
    let rewritten = match (header.map_stream(), ranges.last()) {
        (Some(h), Some(&(offset, len))) => {
            let file_maps = read_maps(h, stream(offset, len)?, parts.len() as u64).map_err(bad)?;
            Some(RewrittenBase::new(parts.clone(), &file_maps))
        }
        _ => None,
    };
    let concat = ConcatBase::new(parts);
    let streams = ranges
        .into_iter()
        .take(header.data_streams().len())
        .map(|(offset, len)| stream(offset, len))
        .collect::<Result<Vec<_>, _>>()?;

    // Output: split into the expected chunks, each verified as it completes.
    // The chunk being produced, hashed and written whole once complete (the apply
    // hands over short pieces, which blake3 hashes several times slower one by one).
    let mut pending: Vec<u8> = Vec::new();
    // An image is the tree's file (image.rs): its writeback starts as it is written,
    // over the span written since the last start, so the tree's one sync has less to
    // wait for. An end-to-end spool is deleted before the sync and never written out.
    let mut unflushed: Option<(u64, u64)> = None;
    let mut next = 0usize;
    let mut filled = 0u64;
    let mut written = 0u64;
    // The sink's errors cannot travel through the format crate's error type; keep
    // ours here and hand apply a marker that stops it.
    let mut failure: Option<ApplyError> = None;
    let stop = || FormatError::Malformed {
        kind: "diff output",
        reason: "stopped".into(),
    };
    let mut sink = |mut bytes: &[u8]| -> ferry_format::Result<()> {
        while !bytes.is_empty() {
            // apply() never produces more than target_size, the sum of these chunks.
            let Some(rec) = want.get(next).copied() else {
                failure = Some(malformed("output beyond the expected chunks".into()));
                return Err(stop());
            };
            let n = (u64::from(rec.size) - filled).min(bytes.len() as u64) as usize;
            pending.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            filled += n as u64;
            if filled == u64::from(rec.size) {
                let got = Digest::of(&pending);
                if let Some(id) = rec.id
                    && got != id
                {
                    failure = Some(ApplyError::DiffMismatch {
                        id: id.to_hex(),
                        base: base.version.clone(),
                        actual: got.to_hex(),
                    });
                    return Err(stop());
                }
                // Written through before a reader may look for it.
                let at = writer.at.as_ref().map_or(written, |a| a[next]);
                if let Err(e) = writer.file.write_all_at(&pending, at) {
                    failure = Some(ApplyError::Fs(FsError {
                        op: "writing",
                        path: spool.to_path_buf(),
                        source: e,
                    }));
                    return Err(stop());
                }
                writer.publish(got, at);
                if writer.at.is_some() {
                    let end = at + pending.len() as u64;
                    let (lo, hi) = unflushed.map_or((at, end), |(l, h)| (l.min(at), h.max(end)));
                    if hi - lo >= WRITEBACK_EVERY {
                        fsutil::start_writeback(&writer.file, lo, hi - lo);
                        unflushed = None;
                    } else {
                        unflushed = Some((lo, hi));
                    }
                }
                if writer.shared.stop.load(Ordering::Relaxed) {
                    failure = Some(ApplyError::Stopped);
                    return Err(stop());
                }
                written += filled;
                pending.clear();
                filled = 0;
                next += 1;
            }
        }
        Ok(())
    };
    let applied = match &rewritten {
        None => apply(&header, &concat, streams, &mut sink),
        Some(base) => std::thread::scope(|s| {
            if base.wants_worker() {
                s.spawn(|| base.work_ahead());
            }
            // Stops the worker however the apply ends, a panic included.
            let _stop = base.stopper();
            apply(&header, base, streams, &mut sink)
        }),
    };
    if let Some(e) = failure {
        return Err(e);
    }
    let produced = applied.map_err(bad)?;
    if produced != expected_size || next != want.len() {
        return Err(malformed(format!(
            "produced {produced} of {expected_size} bytes"
        )));
    }
    crash_point!("client::spool::written");
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;
    use std::time::Duration;

    use super::*;

    fn want(bytes: &[u8]) -> Want {
        Want {
            size: bytes.len() as u32,
            id: Some(ChunkId::of(bytes)),
        }
    }

    /// A build reading a spool the apply is still writing waits for each chunk the
    /// diff will produce, gets it as soon as it is written, is never held up by a
    /// chunk the diff does not produce, and is told, rather than left waiting, when
    /// the apply ends without a chunk it needs.
    #[test]
    fn a_live_spool_hands_over_chunks_as_they_are_written_and_says_when_the_apply_died() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (vec![1u8; 5000], vec![2u8; 7000]);
        let (spool, writer) =
            DiffSpool::create(&dir.path().join("s.spool"), &[want(&a), want(&b)]).unwrap();
        let other = ChunkId::of(b"not from the diff");
        assert!(spool.chunk(&other, 17).unwrap().is_none(), "not waited for");
        let got = std::thread::scope(|s| {
            let reader = s.spawn(|| spool.chunk(&ChunkId::of(&a), 5000));
            std::thread::sleep(Duration::from_millis(50));
            assert!(!reader.is_finished(), "waits for a chunk the diff produces");
            writer.file.write_all_at(&a, 0).unwrap();
            writer.publish(ChunkId::of(&a), 0);
            reader.join().unwrap()
        });
        assert_eq!(got.unwrap().as_deref(), Some(&a[..]));
        assert!(spool.has(&ChunkId::of(&a)) && !spool.has(&ChunkId::of(&b)));
        let reader = std::thread::scope(|s| {
            let reader = s.spawn(|| spool.chunk(&ChunkId::of(&b), 7000));
            std::thread::sleep(Duration::from_millis(20));
            // The apply fails (its writer dropped unfinished).
            drop(writer);
            reader.join().unwrap()
        });
        assert!(
            matches!(reader, Err(ApplyError::SpoolEnded { .. })),
            "{reader:?}"
        );
    }
}

//! The local chunk index: which chunks of a new release already exist, byte for byte,
//! inside the trees of retained releases.
//!
//! The index is built from the retained releases' verified manifests: a file's chunks
//! sit at the cumulative sizes of the chunks before them. A location only counts once
//! its bytes hash to the chunk id, or its whole file hashes to the file's signed hash
//! (a file the new release keeps unchanged is checked that way, in one pass): the
//! files could have been edited by someone since install, and the plan must be exact.
//! Good locations are cached, and re-hashed once more when they are copied.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ferry_format::id::{ChunkId, Digest};
use ferry_format::manifest::{EntryKind, Manifest};
use ferry_format::verified::Verified;
use memmap2::Mmap;

use super::ApplyError;
use super::check::hash_file;
use crate::fsutil;

/// A retained release usable as a chunk source.
pub struct LocalRelease {
    pub version: String,
    pub tree: PathBuf,
    pub manifest: Verified<Manifest>,
}

#[derive(Clone, Debug)]
struct Location {
    file: PathBuf,
    offset: u64,
    size: u32,
}

/// A file of a retained release, with where its chunks sit in it.
#[derive(Clone, Debug)]
struct FileCopy {
    path: PathBuf,
    size: u64,
    chunks: Vec<(ChunkId, Location)>,
}

/// A retained file that may be shared whole into a new tree.
#[derive(Clone, Debug)]
pub struct Copy {
    pub path: PathBuf,
    /// When it hashed right during this update: its identity and times just before.
    pub hashed: Option<Stamp>,
}

/// Which inode a file is and when its content last changed: equal stamps before a hash
/// and after a hard link mean the link names the bytes that were hashed (any write in
/// between moves the mtime; the inode number catches a file replaced under the name).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
}

impl Stamp {
    pub fn of(meta: &std::fs::Metadata) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
        }
    }

    fn of_path(path: &Path) -> Option<Stamp> {
        std::fs::symlink_metadata(path)
            .ok()
            .filter(|m| m.is_file())
            .map(|m| Stamp::of(&m))
    }
}

/// Chunk id -> where the chunk can be found on disk.
pub struct LocalChunks {
    candidates: HashMap<ChunkId, Vec<Location>>,
    good: HashMap<ChunkId, Location>,
    /// File content hash -> the retained files listed with it.
    files: HashMap<Digest, Vec<FileCopy>>,
    /// File content hash -> a retained file that hashed to it during
    /// [`Self::verify_wanted`], with its identity and times as they were before.
    good_files: HashMap<Digest, (PathBuf, Stamp)>,
    /// The last mapped file: consecutive chunks of a new file usually come from the
    /// same old file, so one entry avoids most re-mapping.
    mapped: Option<(PathBuf, Option<Mmap>)>,
}

impl LocalChunks {
    /// Indexes every file chunk of `releases`.
    pub fn index(releases: &[LocalRelease]) -> Self {
        let mut candidates: HashMap<ChunkId, Vec<Location>> = HashMap::new();
        let mut files: HashMap<Digest, Vec<FileCopy>> = HashMap::new();
        for rel in releases {
            let m = &rel.manifest;
            for e in &m.entries {
                let EntryKind::File {
                    chunks, hash, size, ..
                } = &e.kind
                else {
                    continue;
                };
                let file = rel.tree.join(&e.path);
                let mut offset = 0u64;
                let mut located = Vec::with_capacity(chunks.len());
                for &ix in chunks {
                    // Verified manifests only name chunks inside their table.
                    let Some(c) = m.chunks.get(ix as usize) else {
                        break;
                    };
                    let loc = Location {
                        file: file.clone(),
                        offset,
                        size: c.size,
                    };
                    candidates.entry(c.id).or_default().push(loc.clone());
                    located.push((c.id, loc));
                    offset += u64::from(c.size);
                }
                files.entry(*hash).or_default().push(FileCopy {
                    path: file,
                    size: *size,
                    chunks: located,
                });
            }
        }
        LocalChunks {
            candidates,
            good: HashMap::new(),
            files,
            good_files: HashMap::new(),
            mapped: None,
        }
    }

    /// Retained files listed with content `hash` and `size`, one that hashed right
    /// during [`Self::verify_wanted`] first: candidates for sharing a whole file
    /// (`share`), which hashes whichever it takes again.
    pub fn file_copies(&self, hash: &Digest, size: u64) -> Vec<Copy> {
        let good = self.good_files.get(hash);
        let mut out: Vec<Copy> = good
            .map(|(path, stamp)| Copy {
                path: path.clone(),
                hashed: Some(*stamp),
            })
            .into_iter()
            .collect();
        if let Some(copies) = self.files.get(hash) {
            out.extend(
                copies
                    .iter()
                    .filter(|c| c.size == size && Some(&c.path) != good.map(|g| &g.0))
                    .map(|c| Copy {
                        path: c.path.clone(),
                        hashed: None,
                    }),
            );
        }
        out
    }

    /// Hashes whole retained files that should equal files of `wanted` (same content
    /// hash in their signed manifests): one that does vouches for all of its chunks at
    /// once, read in large blocks on every core rather than chunk by chunk.
    fn verify_whole_files(&mut self, wanted: &Manifest) {
        for e in &wanted.entries {
            let EntryKind::File { hash, size, .. } = &e.kind else {
                continue;
            };
            if self.good_files.contains_key(hash) {
                continue;
            }
            let Some(copies) = self.files.get(hash) else {
                continue;
            };
            // The stamp is taken before hashing: a write during or after the hash
            // moves the file's mtime past it.
            let Some((copy, stamp)) = copies
                .iter()
                .filter(|c| c.size == *size)
                .filter_map(|c| Stamp::of_path(&c.path).map(|st| (c, st)))
                .find(|(c, _)| hash_file(&c.path).is_ok_and(|h| h == *hash))
            else {
                continue;
            };
            for (id, loc) in &copy.chunks {
                self.good.entry(*id).or_insert_with(|| loc.clone());
            }
            self.good_files.insert(*hash, (copy.path.clone(), stamp));
        }
    }

    /// Hashes the local copies of every chunk `wanted` uses and remembers one good
    /// copy per chunk. Returns how many chunks are available locally.
    pub fn verify_wanted(&mut self, wanted: &Manifest) -> usize {
        self.verify_whole_files(wanted);
        let mut work: Vec<(ChunkId, Location)> = wanted
            .chunks
            .iter()
            .filter(|c| !self.good.contains_key(&c.id))
            .filter_map(|c| self.candidates.get(&c.id).map(|l| (c.id, l)))
            .flat_map(|(id, locs)| locs.iter().map(move |l| (id, l.clone())))
            .collect();
        work.sort_by(|a, b| (&a.1.file, a.1.offset).cmp(&(&b.1.file, b.1.offset)));
        for (id, loc) in work {
            if self.good.contains_key(&id) {
                continue;
            }
            if self.slice(&loc).is_some_and(|b| ChunkId::of(b) == id) {
                self.good.insert(id, loc);
            }
        }
        self.mapped = None;
        wanted
            .chunks
            .iter()
            .filter(|c| self.good.contains_key(&c.id))
            .count()
    }

    /// Whether some retained release lists `id` (not yet checked on disk): enough to
    /// price a plan, which the build then re-checks with [`Self::verify_wanted`].
    pub fn listed(&self, id: &ChunkId) -> bool {
        self.candidates.contains_key(id)
    }

    /// Whether a verified local copy of `id` is known.
    pub fn has(&self, id: &ChunkId) -> bool {
        self.good.contains_key(id)
    }

    /// Re-hashes the local copy of `id` and hands its bytes to `f`.
    pub fn with_chunk<T>(
        &mut self,
        id: &ChunkId,
        f: impl FnOnce(&[u8]) -> T,
    ) -> Result<T, ApplyError> {
        let loc = self
            .good
            .get(id)
            .cloned()
            .ok_or_else(|| ApplyError::MissingChunk { id: id.to_hex() })?;
        match self.slice(&loc) {
            Some(bytes) if ChunkId::of(bytes) == *id => Ok(f(bytes)),
            _ => Err(ApplyError::LocalChanged {
                id: id.to_hex(),
                file: loc.file,
            }),
        }
    }

    fn slice(&mut self, loc: &Location) -> Option<&[u8]> {
        if self.mapped.as_ref().is_none_or(|(p, _)| *p != loc.file) {
            self.mapped = Some((loc.file.clone(), map_file(&loc.file)));
        }
        let map = self.mapped.as_ref()?.1.as_ref()?;
        let start = usize::try_from(loc.offset).ok()?;
        let end = start.checked_add(loc.size as usize)?;
        map.get(start..end)
    }
}

/// Maps a regular file of a retained release read-only; `None` if it is missing, not a
/// regular file (a symlink is never followed) or empty.
#[allow(unsafe_code)]
pub(crate) fn map_file(path: &Path) -> Option<Mmap> {
    let file = fsutil::open_nofollow(path).ok()?;
    let meta = file.metadata().ok()?;
    if !meta.is_file() || meta.len() == 0 {
        return None;
    }
    // SAFETY: the mapped files belong to retained releases under ROOT/versions/, which
    // ferry never writes after renaming them into place, or are a diff's spool in
    // staging once this update finished writing it (image.rs); the root lock keeps
    // other ferry commands out. A modification by someone else cannot make us trust wrong
    // bytes, because every slice is hashed against its chunk id before use; the
    // remaining hazard (truncation while mapped, SIGBUS) needs an outside actor
    // truncating installed release files during an update.
    unsafe { Mmap::map(&file) }.ok()
}

//! The release manifest (FORMAT.md §3): every file, directory and symlink of a release,
//! the chunk table of its archive and the archive's name.
//!
//! The archive object is the concatenation of the stored (zstd) chunks in chunk-table
//! order; a chunk's offset is the sum of the stored sizes before it, so the table
//! cannot describe overlapping or gapped ranges. The table is ordered by generation
//! (the release in which the chunk last appeared after an absence), oldest first, so
//! an agent on any older release of the channel finds what it lacks in one tail.

use serde::{Deserialize, Serialize};
use std::collections::HashSet;

use crate::chunking::{ChunkParams, max_stored_size};
use crate::codec;
use crate::delta::DiffRef;
use crate::envelope::{Envelope, ObjectKind};
use crate::error::{FormatError, Result};
use crate::id::{ChunkId, Digest, ObjectRef};
use crate::keys::SecretKey;
use crate::path::{check_path, check_symlink_target, parent};
use crate::version::{Version, check_channel};

/// Most entries (files, directories, symlinks) in one release.
pub const MAX_ENTRIES: usize = 1_000_000;
/// Most chunks in one release.
pub const MAX_CHUNKS: usize = 4_000_000;
/// Permission bits kept for files and directories. Set-id and sticky bits are dropped:
/// an update channel should not be able to hand out setuid binaries.
pub const MODE_MASK: u32 = 0o777;
/// Most diff objects one manifest lists (one per base release).
pub const MAX_DIFFS: usize = 16;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub channel: String,
    pub version: String,
    /// 1 for a channel's first release, then the previous manifest's plus one.
    pub generation: u64,
    pub chunking: ChunkParams,
    /// The archive holding every chunk of the table.
    pub archive: ObjectRef,
    pub chunks: Vec<ChunkRecord>,
    /// Sorted by path, byte order, no duplicates; parents before children.
    pub entries: Vec<Entry>,
    /// Diff objects from earlier releases to this one, ascending by base version.
    pub diffs: Vec<DiffRef>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRecord {
    pub id: ChunkId,
    /// Uncompressed size.
    pub size: u32,
    /// Size of the zstd frame in the archive.
    pub stored_size: u32,
    pub generation: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub path: String,
    pub kind: EntryKind,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    Dir {
        mode: u32,
    },
    File {
        mode: u32,
        size: u64,
        /// blake3 of the whole content.
        hash: Digest,
        /// Indexes into the chunk table, in file order.
        chunks: Vec<u32>,
    },
    Symlink {
        target: String,
    },
}

fn malformed(reason: String) -> FormatError {
    FormatError::Malformed {
        kind: "manifest",
        reason,
    }
}

impl Manifest {
    /// The archive offset of every chunk, plus the archive's end as the last element.
    pub fn chunk_offsets(&self) -> Vec<u64> {
        let mut out = Vec::with_capacity(self.chunks.len() + 1);
        let mut at = 0u64;
        out.push(0);
        for c in &self.chunks {
            at += u64::from(c.stored_size);
            out.push(at);
        }
        out
    }

    /// Total bytes of all regular files.
    pub fn total_file_bytes(&self) -> u64 {
        self.entries
            .iter()
            .map(|e| match &e.kind {
                EntryKind::File { size, .. } => *size,
                _ => 0,
            })
            .sum()
    }

    /// Checks every structural rule of FORMAT.md §3.4. Publishers call it before
    /// signing; readers call it before anything acts on the manifest.
    pub fn validate(&self) -> Result<()> {
        check_channel(&self.channel)?;
        Version::parse(&self.version)?;
        self.chunking.validate()?;
        if self.generation == 0 {
            return Err(malformed("generation 0".into()));
        }
        if self.entries.len() > MAX_ENTRIES {
            return Err(FormatError::TooLarge {
                kind: "manifest",
                what: "entry count",
                found: self.entries.len() as u64,
                limit: MAX_ENTRIES as u64,
            });
        }
        if self.chunks.len() > MAX_CHUNKS {
            return Err(FormatError::TooLarge {
                kind: "manifest",
                what: "chunk count",
                found: self.chunks.len() as u64,
                limit: MAX_CHUNKS as u64,
            });
        }
        self.validate_chunks()?;
        self.validate_entries()?;
        self.validate_diffs()
    }

    fn validate_diffs(&self) -> Result<()> {
        if self.diffs.len() > MAX_DIFFS {
            return Err(malformed(format!(
                "{} diffs, at most {MAX_DIFFS}",
                self.diffs.len()
            )));
        }
        let mut prev: Option<Version> = None;
        for d in &self.diffs {
            let v = Version::parse(&d.base_version)?;
            if prev.as_ref().is_some_and(|p| *p >= v) || v >= Version::parse(&self.version)? {
                return Err(malformed(format!(
                    "diff bases not ascending or not older than {}",
                    self.version
                )));
            }
            prev = Some(v);
        }
        Ok(())
    }

    fn validate_chunks(&self) -> Result<()> {
        let mut seen = HashSet::with_capacity(self.chunks.len());
        let mut last_gen = 0;
        let mut total = 0u64;
        for (i, c) in self.chunks.iter().enumerate() {
            if !seen.insert(c.id) {
                return Err(malformed(format!("chunk {} listed twice", c.id)));
            }
            if c.size == 0 || c.size > self.chunking.max {
                return Err(malformed(format!("chunk {i} has size {}", c.size)));
            }
            if c.stored_size == 0 || u64::from(c.stored_size) > max_stored_size(c.size) {
                return Err(malformed(format!(
                    "chunk {i} has stored size {}",
                    c.stored_size
                )));
            }
            if c.generation < last_gen || c.generation > self.generation || c.generation == 0 {
                return Err(malformed(format!(
                    "chunk {i} has generation {} out of order",
                    c.generation
                )));
            }
            last_gen = c.generation;
            total += u64::from(c.stored_size);
        }
        if total != self.archive.size {
            return Err(malformed(format!(
                "chunk table covers {total} bytes, archive has {}",
                self.archive.size
            )));
        }
        Ok(())
    }

    fn validate_entries(&self) -> Result<()> {
        let mut dirs: HashSet<&str> = HashSet::new();
        let mut prev: Option<&str> = None;
        for e in &self.entries {
            check_path(&e.path)?;
            if let Some(p) = prev
                && p.as_bytes() >= e.path.as_bytes()
            {
                return Err(malformed(format!(
                    "entries not sorted or duplicate path {:?}",
                    e.path
                )));
            }
            prev = Some(&e.path);
            // Parents must be directories listed earlier: nothing is ever created
            // through a symlink or under a file.
            if let Some(dir) = parent(&e.path)
                && !dirs.contains(dir)
            {
                return Err(FormatError::UnsafePath {
                    path: e.path.clone(),
                    reason: "parent is not a directory of the manifest",
                });
            }
            match &e.kind {
                EntryKind::Dir { mode } => {
                    check_mode(&e.path, *mode)?;
                    dirs.insert(&e.path);
                }
                EntryKind::File {
                    mode, size, chunks, ..
                } => {
                    check_mode(&e.path, *mode)?;
                    let mut sum = 0u64;
                    for &ix in chunks {
                        let c = self.chunks.get(ix as usize).ok_or_else(|| {
                            malformed(format!("{:?} names chunk {ix}, not in the table", e.path))
                        })?;
                        sum += u64::from(c.size);
                    }
                    if sum != *size {
                        return Err(malformed(format!(
                            "{:?} has size {size} but its chunks add up to {sum}",
                            e.path
                        )));
                    }
                }
                EntryKind::Symlink { target } => check_symlink_target(&e.path, target)?,
            }
        }
        Ok(())
    }

    /// Validates, signs and encodes the manifest into the bytes stored in the repository.
    /// The size of this manifest once signed by `signatures` keys, without signing:
    /// publishers compare it with [`ObjectKind::max_size`] before writing anything.
    pub fn signed_size(&self, signatures: usize) -> u64 {
        crate::envelope::encoded_size(codec::encoded_len(self), signatures)
    }

    pub fn sign(&self, keys: &[&SecretKey]) -> Result<Vec<u8>> {
        self.validate()?;
        Ok(Envelope::sign(ObjectKind::Manifest, codec::encode(self), keys).encode())
    }

    pub(crate) fn decode_body(body: &[u8]) -> Result<Self> {
        let m: Manifest = codec::decode("manifest", body)?;
        m.validate()?;
        Ok(m)
    }
}

fn check_mode(path: &str, mode: u32) -> Result<()> {
    if mode & !MODE_MASK != 0 {
        return Err(malformed(format!("{path:?} has mode {mode:o} beyond 0777")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Manifest {
        let data = b"hello world";
        let stored = crate::chunking::compress_chunk(data, 3).unwrap();
        Manifest {
            channel: "stable".into(),
            version: "1.0.0".into(),
            generation: 1,
            chunking: ChunkParams::default(),
            archive: ObjectRef {
                hash: Digest::of(&stored),
                size: stored.len() as u64,
            },
            chunks: vec![ChunkRecord {
                id: ChunkId::of(data),
                size: data.len() as u32,
                stored_size: stored.len() as u32,
                generation: 1,
            }],
            entries: vec![
                Entry {
                    path: "bin".into(),
                    kind: EntryKind::Dir { mode: 0o755 },
                },
                Entry {
                    path: "bin/app".into(),
                    kind: EntryKind::File {
                        mode: 0o755,
                        size: data.len() as u64,
                        hash: Digest::of(data),
                        chunks: vec![0],
                    },
                },
                Entry {
                    path: "link".into(),
                    kind: EntryKind::Symlink {
                        target: "bin/app".into(),
                    },
                },
            ],
            diffs: vec![],
        }
    }

    #[test]
    fn sample_is_valid() {
        sample().validate().unwrap();
    }

    #[test]
    fn signed_size_is_the_size_sign_produces() {
        let k1 = SecretKey::from_seed([1; 32]);
        let k2 = SecretKey::from_seed([2; 32]);
        let m = sample();
        assert_eq!(m.signed_size(1), m.sign(&[&k1]).unwrap().len() as u64);
        assert_eq!(m.signed_size(2), m.sign(&[&k1, &k2]).unwrap().len() as u64);
    }

    #[test]
    fn check_size_refuses_what_readers_refuse() {
        let limit = ObjectKind::Manifest.max_size();
        ObjectKind::Manifest.check_size(limit).unwrap();
        let e = ObjectKind::Manifest
            .check_size(limit + 1)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("{}", limit + 1)) && e.contains(&format!("{limit}")),
            "{e}"
        );
        let head = ObjectKind::ChannelHead.max_size();
        assert_eq!(head, 1 << 20);
        assert!(ObjectKind::ChannelHead.check_size(head + 1).is_err());
    }

    #[test]
    fn structural_attacks_are_refused() {
        let mut m = sample();
        m.entries.swap(0, 1);
        assert!(m.validate().is_err(), "unsorted");

        let mut m = sample();
        m.entries.remove(0);
        let e = m.validate().unwrap_err().to_string();
        assert!(e.contains("parent is not a directory"), "{e}");

        let mut m = sample();
        m.entries[2].kind = EntryKind::Symlink {
            target: "../etc".into(),
        };
        assert!(m.validate().is_err(), "symlink out of tree");

        let mut m = sample();
        m.entries.push(Entry {
            path: "link/evil".into(),
            kind: EntryKind::Dir { mode: 0o755 },
        });
        assert!(m.validate().is_err(), "write through symlink");

        let mut m = sample();
        m.entries[1].kind = EntryKind::File {
            mode: 0o4755,
            size: 11,
            hash: Digest::of(b"x"),
            chunks: vec![0],
        };
        assert!(m.validate().is_err(), "setuid");

        let mut m = sample();
        m.archive.size += 1;
        assert!(m.validate().is_err(), "archive size");

        let mut m = sample();
        m.entries.insert(
            1,
            Entry {
                path: "bin".into(),
                kind: EntryKind::Dir { mode: 0o755 },
            },
        );
        assert!(m.validate().is_err(), "duplicate path");
    }
}

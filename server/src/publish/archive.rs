//! The archive object: every stored chunk frame of a release, in chunk-table order.
//!
//! Carried frames are copied byte for byte from the previous archive (no
//! recompression, so a chunk's stored bytes never change once published), then the new
//! frames are appended from the spool. The bytes are hashed as they are written, so the
//! archive is never held in memory nor read twice. A release with no carried chunk (the
//! first of a channel, or one sharing nothing with the last) has the spool as its
//! archive: it is placed as it is, named by the hash taken while it was spooled.

use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};

use ferry_format::id::{Digest, ObjectRef};
use ferry_format::manifest::Manifest;

use super::table::Table;
use crate::error::{Result, io_err};
use crate::fsutil;
use crate::repo::Repo;

/// A writer that hashes and counts what passes through it.
pub(crate) struct Hashing<W> {
    pub(crate) inner: W,
    pub(crate) hasher: blake3::Hasher,
    pub(crate) len: u64,
}

impl<W> Hashing<W> {
    pub(crate) fn new(inner: W) -> Self {
        Hashing {
            inner,
            hasher: blake3::Hasher::new(),
            len: 0,
        }
    }

    /// The name and size of what was written.
    pub(crate) fn object_ref(&self) -> ObjectRef {
        ObjectRef {
            hash: Digest::from(self.hasher.finalize()),
            size: self.len,
        }
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes the archive of `table` into the repository and returns its reference.
pub fn write_archive(repo: &Repo, prev: Option<&Manifest>, table: Table) -> Result<ObjectRef> {
    let mut spool = table.spool;
    if table.carried.is_empty() {
        // Only new frames: the spool, hashed as it was written, is the archive.
        repo.place_object(spool, &table.spool_ref.hash)?;
        return Ok(table.spool_ref);
    }
    let tmp = repo.object_temp()?;
    let tmp_path = tmp.path().to_path_buf();
    let mut out = Hashing::new(BufWriter::with_capacity(1 << 20, tmp));

    if let (Some(prev), false) = (prev, table.carried.is_empty()) {
        let path = repo.object_file(&prev.archive.hash);
        let mut src = fsutil::open(&path)?;
        let len = src.metadata().map_err(io_err("read", &path))?.len();
        if len != prev.archive.size {
            return Err(repo.broken(format!(
                "previous archive {} has {len} bytes, its manifest says {}",
                path.display(),
                prev.archive.size
            )));
        }
        let offsets = prev.chunk_offsets();
        let mut at = 0u64;
        for &i in &table.carried {
            let (start, stored) = (offsets[i as usize], prev.chunks[i as usize].stored_size);
            if at != start {
                src.seek(SeekFrom::Start(start))
                    .map_err(io_err("read", &path))?;
            }
            let copied = io::copy(&mut (&mut src).take(u64::from(stored)), &mut out)
                .map_err(io_err("copy from", &path))?;
            if copied != u64::from(stored) {
                return Err(
                    repo.broken(format!("previous archive {} is truncated", path.display()))
                );
            }
            at = start + copied;
        }
    }

    let spool_path = spool.path().to_path_buf();
    let spool = spool.as_file_mut();
    spool
        .seek(SeekFrom::Start(0))
        .map_err(io_err("read", &spool_path))?;
    io::copy(spool, &mut out).map_err(io_err("copy from", &spool_path))?;

    out.flush().map_err(io_err("write", &tmp_path))?;
    let r = out.object_ref();
    let tmp = out
        .inner
        .into_inner()
        .map_err(|e| io_err("write", &tmp_path)(e.into_error()))?;
    repo.place_object(tmp, &r.hash)?;
    Ok(r)
}

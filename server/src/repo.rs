//! A repository on the local disk: the layout paths of `ferry_format::layout` mapped
//! to files under one root, with the reads publish and ls need and the writes publish
//! makes (objects first, head last).

use std::path::{Path, PathBuf};

use ferry_format::envelope::ObjectKind;
use ferry_format::head::claimed_sequence;
use ferry_format::id::{Digest, ObjectRef};
use ferry_format::layout::{head_log_dir, head_log_path, head_path, object_path};
use tempfile::NamedTempFile;

use crate::error::{Error, Result, io_err};
use crate::fsutil::{self, DIR_MODE, FILE_MODE, Place};

/// A repository root directory.
#[derive(Clone, Debug)]
pub struct Repo {
    root: PathBuf,
}

impl Repo {
    /// A view of `root`; nothing is created or checked yet.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Repo { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file holding object `hash`.
    pub fn object_file(&self, hash: &Digest) -> PathBuf {
        self.root.join(object_path(hash))
    }

    /// The file holding the head of `channel` (a checked channel name).
    pub fn head_file(&self, channel: &str) -> PathBuf {
        self.root.join(head_path(channel))
    }

    /// The directory listing one folder per channel.
    pub fn channels_dir(&self) -> PathBuf {
        self.root.join("channels")
    }

    /// The raw head of `channel`, if the channel exists.
    pub fn read_head(&self, channel: &str) -> Result<Option<Vec<u8>>> {
        fsutil::read_limited(&self.head_file(channel), ObjectKind::ChannelHead.max_size())
    }

    /// Reads the object `r` names and checks it is exactly those bytes. Only for small
    /// objects (manifests); archives are streamed.
    pub fn read_object(&self, r: &ObjectRef, kind: &'static str) -> Result<Vec<u8>> {
        let path = self.object_file(&r.hash);
        let bytes = fsutil::read_limited(&path, r.size)?.ok_or_else(|| {
            self.broken(format!(
                "{kind} {} is missing ({} does not exist)",
                r.hash,
                path.display()
            ))
        })?;
        r.check(kind, &bytes)
            .map_err(|source| Error::FormatContext {
                context: format!("repository object {} is damaged", path.display()),
                source,
            })?;
        Ok(bytes)
    }

    /// A temp file next to the objects, to stream a large object into.
    pub fn object_temp(&self) -> Result<NamedTempFile> {
        fsutil::temp_in(&self.root.join("objects"))
    }

    /// Moves a finished temp file to the object name `hash`. An existing object of
    /// that name is left alone: it has the same bytes.
    pub fn place_object(&self, tmp: NamedTempFile, hash: &Digest) -> Result<()> {
        let dest = self.object_file(hash);
        if let Some(dir) = dest.parent() {
            fsutil::ensure_dir(dir, DIR_MODE)?;
        }
        crash_point!("server::object::place");
        fsutil::persist(tmp, &dest, FILE_MODE, Place::KeepExisting)?;
        Ok(())
    }

    /// Stores `bytes` as an object and returns its reference.
    pub fn write_object(&self, bytes: &[u8]) -> Result<ObjectRef> {
        let r = ObjectRef::of(bytes);
        crash_point!("server::object::write");
        fsutil::write_atomic(
            &self.object_file(&r.hash),
            bytes,
            FILE_MODE,
            Place::KeepExisting,
        )?;
        Ok(r)
    }

    /// The folder of `channel`'s head log (FORMAT.md §7.1).
    pub fn head_log_dir(&self, channel: &str) -> PathBuf {
        self.root.join(head_log_dir(channel))
    }

    /// Atomically replaces the head of `channel`, after storing the new head in the
    /// channel's head log (FORMAT.md §7.1), so that every head ever signed for the
    /// repository stays on record for `audit export`. A crash between the two leaves a
    /// log entry whose head never became current: still a head the keys signed.
    pub fn write_head(&self, channel: &str, bytes: &[u8]) -> Result<()> {
        let sequence = claimed_sequence(bytes).map_err(|source| Error::FormatContext {
            context: format!("the head to write for channel {channel:?}"),
            source,
        })?;
        let entry = self
            .root
            .join(head_log_path(channel, sequence, &Digest::of(bytes)));
        if let Some(dir) = entry.parent() {
            fsutil::ensure_dir(dir, DIR_MODE)?;
        }
        fsutil::write_atomic(&entry, bytes, FILE_MODE, Place::KeepExisting)?;
        crash_point!("server::head::write");
        fsutil::write_atomic(&self.head_file(channel), bytes, FILE_MODE, Place::Replace)?;
        Ok(())
    }

    /// Waits for and takes the exclusive lock on `channel` in this repository. Every
    /// writer of a channel's head holds it from reading the current head until the new
    /// one is in place (`publish`, `refresh-head`, the upload API), so two of them can
    /// never both build on the same head: one would sign the same sequence as the other
    /// and its release would be lost. The lock files live in `.locks/`, which the
    /// server never serves; the OS drops the lock when the holder exits, crash included.
    pub fn lock_channel(&self, channel: &str) -> Result<ChannelLock> {
        let dir = self.root.join(".locks");
        fsutil::ensure_dir(&self.root, DIR_MODE)?;
        fsutil::ensure_dir(&dir, DIR_MODE)?;
        let path = dir.join(channel);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err("open", &path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                tracing::warn!(
                    channel,
                    lock = %path.display(),
                    "another publisher is changing this channel: waiting for it to finish"
                );
                file.lock().map_err(io_err("lock", &path))?;
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io_err("lock", &path)(e)),
        }
        Ok(ChannelLock { _file: file })
    }

    /// Creates the root (0755) if it does not exist.
    pub fn create(&self) -> Result<()> {
        fsutil::ensure_dir(&self.root, DIR_MODE)
    }

    pub fn broken(&self, reason: String) -> Error {
        Error::BrokenRepo {
            repo: self.root.clone(),
            reason,
        }
    }
}

/// Proof of holding a channel's lock ([`Repo::lock_channel`]); released when dropped.
#[derive(Debug)]
pub struct ChannelLock {
    _file: std::fs::File,
}

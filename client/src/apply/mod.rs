//! Turning a verified manifest into a release tree: [`source`] finds chunks already
//! on disk in retained releases, [`diff`] applies a diff object to a retained release
//! into a spool of new chunks, [`build`] writes a new tree from local, spooled and
//! downloaded chunks, [`check`] compares a tree on disk with its manifest, [`carry`]
//! copies the application's own files (chosen by [`pattern`]) into a new tree,
//! [`share`] puts files a retained release already holds into it without writing them,
//! and [`file_hash`] checks a large file's whole hash on a thread beside the writer.
//!
//! Only `Verified<Manifest>` values enter here; every chunk's bytes are hashed against
//! its id immediately before they are written when they come from a local release
//! (re-hashed from the mapped file) or from a download (`decompress_chunk`), and as the
//! diff produces them when they come from a diff's spool; every file is hashed whole
//! against the manifest before the tree is synced.

pub mod build;
pub mod carry;
pub mod check;
pub mod diff;
pub mod elf_base;
pub mod file_hash;
pub mod image;
pub mod pattern;
pub mod share;
pub mod source;

use std::path::PathBuf;

use ferry_format::FormatError;

use crate::fsutil::FsError;

/// Building or checking a tree failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    /// A filesystem operation failed.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// A downloaded chunk failed decompression or its id check. The range file holding
    /// it was deleted so the next run downloads it again.
    #[error("{source} (downloaded range {file} deleted)")]
    CorruptDownload {
        #[source]
        source: FormatError,
        file: PathBuf,
    },
    /// A file's whole content does not hash to the manifest's value.
    #[error("file {path:?} does not match its manifest hash: expected {expected}, built {actual}")]
    FileMismatch {
        path: String,
        expected: String,
        actual: String,
    },
    /// A local chunk that verified at plan time no longer does.
    #[error("local copy of chunk {id} in {file} changed during the update; run it again")]
    LocalChanged { id: String, file: PathBuf },
    /// A downloaded object does not have the size or blake3 its signed reference
    /// gives; the file was deleted.
    #[error("downloaded {file} refused and deleted")]
    BadObject {
        #[source]
        source: FormatError,
        file: PathBuf,
    },
    /// A diff object is malformed, was made against another base, or does not
    /// describe the chunks the base lacks.
    #[error("diff from {base}: {source}")]
    BadDiff {
        base: String,
        #[source]
        source: FormatError,
    },
    /// A chunk produced by a diff does not hash to its id: a bad diff object, or a
    /// base file that changed during the update.
    #[error("chunk {id} produced by the diff from {base} hashes to {actual}")]
    DiffMismatch {
        id: String,
        base: String,
        actual: String,
    },
    /// A file of the diff's base release is missing or no longer has its size.
    #[error("base file {file} is missing or changed")]
    BaseChanged { file: PathBuf },
    /// The diff writing the spool failed before producing a chunk the tree needs.
    #[error("the diff writing {file} stopped before producing chunk {id}")]
    SpoolEnded { id: String, file: PathBuf },
    /// The apply stopped because the tree built from its spool failed.
    #[error("stopped: the tree built from the diff's output failed")]
    Stopped,
    /// The thread checking large files' hashes beside the writer stopped (a panic).
    #[error("the thread checking the files' hashes stopped")]
    HasherStopped,
    /// A chunk is neither local nor in a downloaded range (a planning bug).
    #[error("chunk {id} is neither on disk nor downloaded")]
    MissingChunk { id: String },
}

//! Turning a verified manifest into a release tree: [`source`] finds chunks already
//! on disk in retained releases, [`build`] writes a new tree from local and downloaded
//! chunks, [`check`] compares a tree on disk with its manifest.
//!
//! Only `Verified<Manifest>` values enter here; every chunk's bytes are hashed against
//! its id immediately before they are written, whether they come from a local release
//! (re-hashed from the mapped file) or from a download (`decompress_chunk`).

pub mod build;
pub mod check;
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
    /// A chunk is neither local nor in a downloaded range (a planning bug).
    #[error("chunk {id} is neither on disk nor downloaded")]
    MissingChunk { id: String },
}

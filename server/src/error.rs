//! The one error type of the server library.
//!
//! Messages name the path, channel or version involved; the underlying cause is kept as
//! the error's `source`, so `main` prints the whole chain once with `{:#}`.

use std::io;
use std::path::{Path, PathBuf};

use ferry_format::FormatError;
use thiserror::Error;

/// Everything keygen, publish, ls and serve can fail with.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// A filesystem operation failed; `action` says which ("read", "create", ...).
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A format rule refused a value (bad version, channel, key text, manifest...).
    #[error(transparent)]
    Format(#[from] FormatError),
    /// A format rule refused a value; `context` says which one.
    #[error("{context}")]
    FormatContext {
        context: String,
        #[source]
        source: FormatError,
    },
    /// `keygen` would overwrite an existing secret key.
    #[error("{} already exists: refusing to overwrite a secret key (move it away first)", path.display())]
    KeyExists { path: PathBuf },
    /// The channel head in the repository is not signed by the key given to publish.
    #[error(
        "the key does not match the repository's channel {channel:?}: its head does not verify with key {key_id}"
    )]
    KeyMismatch {
        channel: String,
        key_id: String,
        #[source]
        source: FormatError,
    },
    /// Publish was asked for a version that does not sort after the current release.
    #[error("version {new} is not greater than current {current} of channel {channel:?}")]
    VersionNotGreater {
        channel: String,
        new: String,
        current: String,
    },
    /// The source tree holds something a release cannot carry.
    #[error("{}: {reason}", path.display())]
    Unsupported { path: PathBuf, reason: String },
    /// The server could not listen on its address.
    #[error("cannot listen on {addr}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: io::Error,
    },
    /// The TLS certificate and key given to `serve` cannot be used.
    #[error("{context}")]
    Tls {
        context: String,
        #[source]
        source: rustls::Error,
    },
    /// The repository is inconsistent (a head names a missing or altered object...).
    #[error("repository {}: {reason}", repo.display())]
    BrokenRepo { repo: PathBuf, reason: String },
    /// `--repo` is not a folder or a supported object store URL.
    #[error("--repo: {0}")]
    Location(#[from] crate::store::location::LocationError),
    /// The object store cannot be configured as given.
    #[error("cannot use {url}: {reason}")]
    StoreConfig { url: String, reason: String },
    /// A request to the object store failed; `reason` is the innermost cause
    /// (`object_store` repeats each cause in the message of every layer above it).
    #[error("cannot {action} {url}: {reason}")]
    Store {
        action: &'static str,
        url: String,
        reason: String,
    },
    /// Another writer changed what this command was changing, after it read it; the
    /// command wrote nothing that any head names. `channel` is empty for a key list.
    #[error("conflict in {repo}{}: {detail}", if channel.is_empty() { String::new() } else { format!(", channel {channel:?}") })]
    Conflict {
        repo: String,
        channel: String,
        detail: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The innermost cause of `e`: for the object store's errors, the part that says
/// what went wrong ("Connection refused", the server's XML error).
pub fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut last = e;
    while let Some(next) = last.source() {
        last = next;
    }
    last.to_string().trim().to_string()
}

/// A closure turning an `io::Error` into [`Error::Io`] for `path`.
pub fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

//! The install root: its layout, the lock, the persisted configuration, state and
//! history, the atomic `current` switch, and the pure rules deciding what to keep,
//! what to roll back to and when a pin holds.

pub mod activate;
pub mod agent_id;
pub mod choose;
pub mod config;
pub mod history;
pub mod layout;
pub mod lock;
pub mod reinit;
pub mod retain;
pub mod space;
pub mod state;

use std::path::PathBuf;

use crate::fsutil::FsError;

/// Schema version written into config, state and history records.
pub const SCHEMA: u32 = 1;

/// Reading or writing one of the root's JSON files failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The file could not be read or written.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// The file is not valid JSON of the expected shape.
    #[error("{path} is damaged: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// `config.toml` is not TOML of the documented keys (docs/AGENT.md).
    #[error("{path}: {reason}")]
    Config { path: PathBuf, reason: String },
    /// The file was written by a ferry with another schema.
    #[error("{path} has schema {found}, this ferry reads schema {SCHEMA}")]
    Schema { path: PathBuf, found: u32 },
}

fn read_json<T: serde::de::DeserializeOwned>(
    path: &std::path::Path,
    schema: impl Fn(&T) -> u32,
) -> Result<T, StoreError> {
    let bytes = crate::fsutil::ctx("reading", path, std::fs::read(path))?;
    let value: T = serde_json::from_slice(&bytes).map_err(|source| StoreError::Parse {
        path: path.to_path_buf(),
        source,
    })?;
    let found = schema(&value);
    if found != SCHEMA {
        return Err(StoreError::Schema {
            path: path.to_path_buf(),
            found,
        });
    }
    Ok(value)
}

fn write_json<T: serde::Serialize>(path: &std::path::Path, value: &T) -> Result<(), StoreError> {
    // Serialising plain structs of strings and numbers cannot fail.
    let mut text = serde_json::to_vec_pretty(value).expect("serialisable");
    text.push(b'\n');
    Ok(crate::fsutil::write_atomic(path, &text)?)
}

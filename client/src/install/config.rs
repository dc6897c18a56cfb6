//! `ROOT/.ferry/config.json`: what `ferry init` was told. Nothing here is checked
//! against the server; a wrong key or URL surfaces at the first `ferry update`.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{SCHEMA, StoreError, read_json, write_json};

/// The root's configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    pub schema: u32,
    /// Base URL of the repository (`http://`, `https://` or `file://`), maybe with a path.
    pub server: String,
    pub channel: String,
    /// The text of the trusted public key file.
    pub public_key: String,
    /// How many releases to keep installed.
    pub keep: usize,
}

impl Config {
    pub fn new(server: String, channel: String, public_key: String, keep: usize) -> Self {
        Config {
            schema: SCHEMA,
            server,
            channel,
            public_key,
            keep,
        }
    }

    pub fn load(path: &Path) -> Result<Config, StoreError> {
        read_json(path, |c: &Config| c.schema)
    }

    pub fn save(&self, path: &Path) -> Result<(), StoreError> {
        write_json(path, self)
    }
}

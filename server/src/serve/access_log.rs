//! The access log (one JSON object per line, written whole and unbuffered so that a
//! reader tailing the file never sees half a line).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;

use crate::error::{Result, io_err};

/// One request, as logged.
#[derive(Debug, Serialize)]
pub struct LogLine<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    /// Body bytes of the response: its Content-Length, 0 for HEAD and 304.
    pub bytes: u64,
    /// The request's `Range` header, verbatim.
    pub range: Option<&'a str>,
}

/// An append-only JSON-lines file.
pub struct AccessLog {
    path: PathBuf,
    file: Mutex<File>,
}

impl AccessLog {
    pub fn open(path: &Path) -> Result<Self> {
        Ok(AccessLog {
            path: path.to_path_buf(),
            file: Mutex::new(open_log(path)?),
        })
    }

    /// Opens the log's path again (creating the file) and writes there from now on;
    /// for SIGHUP after logrotate renamed the file. On failure the old file is kept.
    pub fn reopen(&self) -> Result<()> {
        let file = open_log(&self.path)?;
        *self.file.lock().unwrap_or_else(|p| p.into_inner()) = file;
        Ok(())
    }

    /// Appends `line`. A failing log never fails the request; it is reported instead.
    pub fn record(&self, line: &LogLine<'_>) {
        let mut text = match serde_json::to_string(line) {
            Ok(t) => t,
            Err(e) => return tracing::warn!("cannot encode access log line: {e}"),
        };
        text.push('\n');
        // A poisoned lock only means another request panicked mid-write; the file
        // handle itself is still fine to use.
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = file.write_all(text.as_bytes()) {
            tracing::warn!("cannot write access log: {e}");
        }
    }
}

fn open_log(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o644)
        .open(path)
        .map_err(io_err("open access log", path))
}

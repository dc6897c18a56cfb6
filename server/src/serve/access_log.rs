//! The access log (one JSON object per line, written whole and unbuffered so that a
//! reader tailing the file never sees half a line) and the `/metrics` counters.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

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

/// Request counters for `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Responses by status class: 1xx..5xx.
    by_class: [AtomicU64; 5],
    bytes: AtomicU64,
    connections: AtomicU64,
    shed: AtomicU64,
}

impl Metrics {
    pub fn record(&self, status: u16, bytes: u64) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.by_class[class].fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn connection(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
    }

    /// An idle connection was closed to make room for a new one.
    pub fn shed(&self) {
        self.shed.fetch_add(1, Ordering::Relaxed);
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn render(&self) -> String {
        let mut out = String::from(
            "# HELP ferry_requests_total Responses sent, by status class.\n\
             # TYPE ferry_requests_total counter\n",
        );
        for (i, n) in self.by_class.iter().enumerate() {
            out.push_str(&format!(
                "ferry_requests_total{{class=\"{}xx\"}} {}\n",
                i + 1,
                n.load(Ordering::Relaxed)
            ));
        }
        out.push_str(&format!(
            "# HELP ferry_response_bytes_total Body bytes of responses.\n\
             # TYPE ferry_response_bytes_total counter\n\
             ferry_response_bytes_total {}\n\
             # HELP ferry_connections_total Connections accepted.\n\
             # TYPE ferry_connections_total counter\n\
             ferry_connections_total {}\n\
             # HELP ferry_connections_shed_total Idle connections closed to make room.\n\
             # TYPE ferry_connections_shed_total counter\n\
             ferry_connections_shed_total {}\n",
            self.bytes.load(Ordering::Relaxed),
            self.connections.load(Ordering::Relaxed),
            self.shed.load(Ordering::Relaxed)
        ));
        out
    }
}

//! The `file://` transport: a repository folder read directly, for offline installs
//! and tests. It behaves like the HTTP one, counting a request per `get` and every
//! byte read.

use std::io::SeekFrom;
use std::path::PathBuf;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use futures_util::stream::StreamExt;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::{Body, Counters, FetchError, Transport, Want, join_url, shape};

const BLOCK: u64 = 64 << 10;

/// Reads objects from a local repository folder.
pub struct FileTransport {
    base: String,
    dir: PathBuf,
    counters: Arc<Counters>,
}

impl FileTransport {
    pub fn new(base: &str) -> Result<Self, FetchError> {
        let dir = base
            .strip_prefix("file://")
            .filter(|p| p.starts_with('/'))
            .ok_or_else(|| FetchError::BadUrl {
                url: base.to_string(),
                reason: "a file:// URL needs an absolute path (file:///srv/repo)".into(),
            })?;
        Ok(FileTransport {
            base: base.to_string(),
            dir: PathBuf::from(dir),
            counters: Arc::default(),
        })
    }

    /// Counts into `counters` (shared with the other servers of a [`super::mirrors::Mirrors`]).
    pub fn with_counters(mut self, counters: Arc<Counters>) -> Self {
        self.counters = counters;
        self
    }
}

impl Transport for FileTransport {
    fn get<'a>(
        &'a self,
        path: &'a str,
        range: Option<(u64, u64)>,
        max_len: u64,
        what: &'static str,
    ) -> BoxFuture<'a, Result<Body, FetchError>> {
        Box::pin(async move {
            let url = self.url(path);
            self.counters.add_request();
            // Layout paths are plain relative paths (objects/.., channels/..).
            let file_path = self.dir.join(path.trim_start_matches('/'));
            let mut f = tokio::fs::File::open(&file_path).await.map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    FetchError::NotFound { url: url.clone() }
                } else {
                    FetchError::Request {
                        url: url.clone(),
                        reason: e.to_string(),
                    }
                }
            })?;
            let (start, cap, want) = match range {
                Some((s, e)) => (s, e - s, Want::Exact(e - s)),
                None => (0, max_len + 1, Want::AtMost(max_len, what)),
            };
            if start > 0 {
                f.seek(SeekFrom::Start(start))
                    .await
                    .map_err(|e| FetchError::Request {
                        url: url.clone(),
                        reason: e.to_string(),
                    })?;
            }
            let counters = self.counters.clone();
            let err_url = url.clone();
            let raw = futures_util::stream::unfold((f, cap), move |(mut f, left)| {
                let counters = counters.clone();
                let url = err_url.clone();
                async move {
                    if left == 0 {
                        return None;
                    }
                    let mut buf = vec![0u8; left.min(BLOCK) as usize];
                    match f.read(&mut buf).await {
                        Ok(0) => None,
                        Ok(n) => {
                            counters.add_bytes(n as u64);
                            buf.truncate(n);
                            Some((Ok(buf), (f, left - n as u64)))
                        }
                        Err(e) => Some((
                            Err(FetchError::Request {
                                url,
                                reason: e.to_string(),
                            }),
                            (f, 0),
                        )),
                    }
                }
            })
            .boxed();
            Ok(shape(raw, 0, want, url))
        })
    }

    fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }

    fn url(&self, path: &str) -> String {
        join_url(&self.base, path)
    }
}

//! Getting repository objects: a [`Transport`] trait and its two implementations,
//! [`http::HttpTransport`] (reqwest) and [`file::FileTransport`] (a repository folder,
//! for offline use and tests), plus resumable archive-range downloads in [`ranges`],
//! retries with backoff in [`retry`], and failover between the configured servers in
//! [`mirrors`] (with [`is_offline`] telling "no server reachable" from other errors).
//!
//! Nothing here parses or trusts what it fetches: bytes go to the format crate's
//! verifiers or, for archive ranges, to disk where every chunk is checked by
//! `decompress_chunk` before use. The transports count requests and body bytes so
//! commands can report exactly what an update cost.

pub mod file;
pub mod http;
pub mod mirrors;
pub mod ranges;
pub mod retry;
pub mod speed;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::future::BoxFuture;
use futures_util::stream::{BoxStream, StreamExt};

/// A response body: the bytes asked for, in pieces, already cut to the request.
pub type Body = BoxStream<'static, Result<Vec<u8>, FetchError>>;

/// A fetch failed. Messages name the URL.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// The server could not be reached or the transfer broke off.
    #[error("{url}: {reason}")]
    Request { url: String, reason: String },
    /// The request failed in a way that does not pass by itself: the server's TLS
    /// certificate was rejected, a redirect loop. Not retried.
    #[error("{url}: {reason}")]
    Refused { url: String, reason: String },
    /// The server answered with an HTTP error status.
    #[error("{url}: server answered HTTP {status}")]
    Status { url: String, status: u16 },
    /// The object does not exist (file repositories).
    #[error("{url}: not found")]
    NotFound { url: String },
    /// More bytes arrived than the object may have.
    #[error("{what} larger than {limit} bytes at {url}")]
    TooLarge {
        what: &'static str,
        url: String,
        limit: u64,
    },
    /// The body ended before the requested bytes arrived.
    #[error("{url}: body ended after {got} of {expected} bytes")]
    Truncated {
        url: String,
        expected: u64,
        got: u64,
    },
    /// The server answered a range request with a different range.
    #[error("{url}: unexpected range in response: {reason}")]
    BadRange { url: String, reason: String },
    /// Data arrived slower than the configured low-speed limit (slow retrieval).
    #[error(
        "download from {url} too slow: {bytes} bytes in the last {window_secs}s (limit {limit} B/s)"
    )]
    TooSlow {
        url: String,
        bytes: u64,
        window_secs: u64,
        limit: u64,
    },
    /// A transport option (CA certificates, proxy) is not usable.
    #[error("unusable {option}: {reason}")]
    BadOption {
        option: &'static str,
        reason: String,
    },
    /// The base URL is not usable.
    #[error("unsupported server URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    /// Writing a download to disk failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// No server could be reached for `give_up_after` ([`mirrors`]): each server's base
    /// URL and why its last attempt failed, in the order they were tried.
    #[error("{}", unreachable_message(servers, *after_secs))]
    Unreachable {
        servers: Vec<(String, String)>,
        after_secs: u64,
    },
}

fn unreachable_message(servers: &[(String, String)], after_secs: u64) -> String {
    let each: Vec<String> = servers
        .iter()
        .map(|(url, reason)| format!("{url} ({reason})"))
        .collect();
    format!(
        "no server reachable (gave up after {after_secs}s): {}",
        each.join("; ")
    )
}

/// Whether `err` (anywhere in its chain) says that no server could be reached: the
/// machine is offline or every mirror is down, as opposed to a server that answered
/// with something wrong or a local failure. `ferry` exits with code 3 then; `ferry
/// agent` keeps its release and tries again later.
pub fn is_offline(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        matches!(
            e.downcast_ref::<FetchError>(),
            Some(FetchError::Unreachable { .. })
        )
    })
}

/// Requests made and body bytes received, shared by a transport and its bodies.
#[derive(Debug, Default)]
pub struct Counters {
    requests: AtomicU64,
    bytes: AtomicU64,
}

impl Counters {
    pub fn add_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add_bytes(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

/// The answer to [`Transport::get_if_changed`].
#[derive(Debug)]
pub enum Conditional {
    /// 304 Not Modified: the object still has the tag that was sent.
    Unchanged,
    /// The object's bytes, and its entity tag when the server sent a strong one.
    Fetched {
        bytes: Vec<u8>,
        etag: Option<String>,
    },
}

/// A source of repository objects addressed by layout paths (`objects/..`, `channels/..`).
pub trait Transport: Send + Sync {
    /// Fetches `path`. With `range = Some((start, end))` the body yields exactly
    /// `end - start` bytes starting at `start`, or fails. Without a range it yields the
    /// whole object and fails with [`FetchError::TooLarge`] (naming `what`) as soon as
    /// more than `max_len` bytes arrive.
    fn get<'a>(
        &'a self,
        path: &'a str,
        range: Option<(u64, u64)>,
        max_len: u64,
        what: &'static str,
    ) -> BoxFuture<'a, Result<Body, FetchError>>;

    /// Fetches a whole small object (a channel head) unless it still has the entity
    /// tag `etag` (`If-None-Match`). A transport without entity tags (files) always
    /// fetches and returns no tag.
    fn get_if_changed<'a>(
        &'a self,
        path: &'a str,
        etag: Option<&'a str>,
        max_len: u64,
        what: &'static str,
    ) -> BoxFuture<'a, Result<Conditional, FetchError>> {
        let _ = etag;
        Box::pin(async move {
            let bytes = read_all(self.get(path, None, max_len, what).await?).await?;
            Ok(Conditional::Fetched { bytes, etag: None })
        })
    }

    /// Asks for a diff the server makes on request (FORMAT.md §3.8) at `path`: one
    /// request, never retried, which the server may hold up to `wait` while it makes
    /// the diff. Anything but `200` is an error, and so is a body of more than
    /// `max_len` bytes, as soon as its length shows. Transports whose servers make no
    /// diffs (files) answer [`FetchError::NotFound`] without a request.
    fn get_made<'a>(
        &'a self,
        path: &'a str,
        max_len: u64,
        wait: std::time::Duration,
    ) -> BoxFuture<'a, Result<Body, FetchError>> {
        let _ = (max_len, wait);
        Box::pin(async move {
            Err(FetchError::NotFound {
                url: self.url(path),
            })
        })
    }

    /// Whether the server said, on a channel head it sent, that it makes diffs on
    /// request (FORMAT.md §3.8).
    fn makes_diffs(&self) -> bool {
        false
    }

    /// The counters of everything fetched through this transport.
    fn counters(&self) -> Arc<Counters>;

    /// The full URL of `path`, for messages.
    fn url(&self, path: &str) -> String;
}

/// Opens the transport for a configured server URL; `options` apply to HTTP(S) only.
pub fn connect(base: &str, options: &http::HttpOptions) -> Result<Box<dyn Transport>, FetchError> {
    if base.starts_with("http://") || base.starts_with("https://") {
        Ok(Box::new(http::HttpTransport::new(base, options)?))
    } else if base.starts_with("file://") {
        Ok(Box::new(file::FileTransport::new(base)?))
    } else {
        Err(FetchError::BadUrl {
            url: base.to_string(),
            reason: "expected http://, https:// or file://".into(),
        })
    }
}

/// Like [`connect`], counting into `counters` and retrying HTTP requests under `retry`.
pub fn connect_with(
    base: &str,
    options: &http::HttpOptions,
    retry: retry::Policy,
    counters: Arc<Counters>,
) -> Result<Box<dyn Transport>, FetchError> {
    if base.starts_with("http://") || base.starts_with("https://") {
        Ok(Box::new(
            http::HttpTransport::new(base, options)?
                .with_retry(retry)
                .with_counters(counters),
        ))
    } else if base.starts_with("file://") {
        Ok(Box::new(
            file::FileTransport::new(base)?.with_counters(counters),
        ))
    } else {
        connect(base, options)
    }
}

/// `base` + `/` + `path`, whatever slashes either has.
pub fn join_url(base: &str, path: &str) -> String {
    format!(
        "{}/{}",
        base.trim_end_matches('/'),
        path.trim_start_matches('/')
    )
}

/// Reads a whole body into memory (bodies are bounded by their request).
pub async fn read_all(mut body: Body) -> Result<Vec<u8>, FetchError> {
    let mut out = Vec::new();
    while let Some(piece) = body.next().await {
        out.extend_from_slice(&piece?);
    }
    Ok(out)
}

/// How [`shape`] treats the bytes it keeps.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Want {
    /// Exactly this many bytes; stop reading once they arrived.
    Exact(u64),
    /// At most this many bytes; more is an error.
    AtMost(u64, &'static str),
}

/// Cuts a raw body to what was asked for: drops `skip` leading bytes (a server that
/// ignored `Range` sent the whole object), then keeps [`Want`] bytes. Reading stops as
/// soon as the wanted bytes are in, so an unexpected full body is never read to its end.
pub(crate) fn shape(raw: Body, skip: u64, want: Want, url: String) -> Body {
    struct S {
        raw: Body,
        skip: u64,
        got: u64,
        want: Want,
        url: String,
        done: bool,
    }
    let s = S {
        raw,
        skip,
        got: 0,
        want,
        url,
        done: false,
    };
    futures_util::stream::unfold(s, |mut s| async move {
        loop {
            if s.done {
                return None;
            }
            if let Want::Exact(n) = s.want
                && s.got == n
            {
                return None;
            }
            let item = match s.raw.next().await {
                None => {
                    s.done = true;
                    match s.want {
                        Want::Exact(n) => Err(FetchError::Truncated {
                            url: s.url.clone(),
                            expected: n,
                            got: s.got,
                        }),
                        Want::AtMost(..) => return None,
                    }
                }
                Some(Err(e)) => {
                    s.done = true;
                    Err(e)
                }
                Some(Ok(mut buf)) => {
                    let drop = s.skip.min(buf.len() as u64) as usize;
                    s.skip -= drop as u64;
                    if drop > 0 {
                        buf.drain(..drop);
                    }
                    if buf.is_empty() {
                        continue;
                    }
                    match s.want {
                        Want::Exact(n) => {
                            let room = (n - s.got).min(buf.len() as u64) as usize;
                            buf.truncate(room);
                        }
                        Want::AtMost(max, what) => {
                            if s.got + buf.len() as u64 > max {
                                s.done = true;
                                return Some((
                                    Err(FetchError::TooLarge {
                                        what,
                                        url: s.url.clone(),
                                        limit: max,
                                    }),
                                    s,
                                ));
                            }
                        }
                    }
                    s.got += buf.len() as u64;
                    Ok(buf)
                }
            };
            return Some((item, s));
        }
    })
    .boxed()
}

/// An error and its sources on one line (reqwest hides the cause in `source()`).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(pieces: &[&[u8]]) -> Body {
        let v: Vec<Result<Vec<u8>, FetchError>> = pieces.iter().map(|p| Ok(p.to_vec())).collect();
        futures_util::stream::iter(v).boxed()
    }

    fn run<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn shape_skips_cuts_and_limits() {
        let got = run(read_all(shape(
            body(&[b"abc", b"defg", b"hij"]),
            2,
            Want::Exact(4),
            "u".into(),
        )))
        .unwrap();
        assert_eq!(got, b"cdef");
        let e = run(read_all(shape(
            body(&[b"ab"]),
            0,
            Want::Exact(4),
            "u".into(),
        )))
        .unwrap_err();
        assert!(matches!(e, FetchError::Truncated { got: 2, .. }), "{e}");
        let e = run(read_all(shape(
            body(&[b"abc", b"def"]),
            0,
            Want::AtMost(5, "channel head"),
            "u".into(),
        )))
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("channel head larger than 5 bytes"),
            "{e}"
        );
        assert_eq!(
            join_url("http://h/p/", "/objects/x"),
            "http://h/p/objects/x"
        );
    }
}

//! The HTTP transport: one reqwest client (rustls), byte ranges, counted bodies.
//!
//! A range request must come back as `206` with exactly the asked range; a server that
//! ignores `Range` and answers `200` with the whole object is tolerated by cutting the
//! wanted slice out of the stream and hanging up once it is in.
//!
//! TLS: certificates are verified against the platform's roots, or, with
//! [`HttpOptions::ca_certs`], against exactly the given CA certificates. Proxies:
//! `HTTPS_PROXY`/`HTTP_PROXY`/`ALL_PROXY` and `NO_PROXY` are honoured (an `https://`
//! repository is reached through a `CONNECT` tunnel, so the proxy never sees the
//! plaintext); [`HttpOptions::proxy`] replaces them for every request. reqwest adds no
//! implicit loopback exception on Linux: only `NO_PROXY` bypasses a proxy.
//!
//! Timeouts: connecting is bounded by [`CONNECT_TIMEOUT`]; after that nothing has a
//! fixed deadline (a large release on a slow link may take hours). Instead the
//! [`speed`](super::speed) limits apply: no response headers within
//! [`LowSpeed::time`], or fewer than [`LowSpeed::limit`] bytes per second over that
//! window while reading the body, fails the request with [`FetchError::TooSlow`].
//!
//! Retries: a request that fails in a way that may pass (connection error, connect
//! timeout, `408`, `429`, `5xx`; not the low-speed limit) is sent again under the [`retry`] policy before its body is
//! handed out; a body that breaks off later is continued by the caller from the bytes
//! already received ([`ranges`](super::ranges)).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use ferry_format::ondemand::{DIFFS_HEADER, ON_DEMAND, WAIT_HEADER};

use futures_util::future::BoxFuture;
use futures_util::stream::StreamExt;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_RANGE, ETAG, IF_NONE_MATCH, RANGE, RETRY_AFTER};

use super::retry::{self, Policy, parse_retry_after, transient_status};
use super::speed::{LowSpeed, Monitor, TooSlow};
use super::{
    Body, Conditional, Counters, FetchError, Transport, Want, error_chain, join_url, read_all,
    shape,
};

/// How long establishing a connection (TCP, proxy tunnel, TLS) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an unused connection stays in the pool. Deliberately shorter than the
/// idle timeout of `ferry-server serve` (30 s, `serve::KEEP_ALIVE_IDLE`) and of common
/// web servers (nginx: 75 s): a connection the server may already have closed is not
/// reused. A server with a shorter timeout, or a close racing a reuse, still resets a
/// request now and then, which the [`retry`] policy absorbs.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(15);

/// How the HTTP transport connects and when it gives up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HttpOptions {
    /// PEM text of the CA certificates to trust *instead of* the platform's roots.
    pub ca_certs: Option<String>,
    /// Proxy for every request (`http://host:port`), replacing the environment's.
    pub proxy: Option<String>,
    pub low_speed: LowSpeed,
}

impl HttpOptions {
    /// Builds the client these options describe, which checks the CA certificates
    /// and the proxy URL (for `ferry init`, before they are stored).
    pub fn check(&self) -> Result<(), FetchError> {
        self.client().map(drop)
    }

    pub(crate) fn client(&self) -> Result<reqwest::Client, FetchError> {
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("ferry/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(CONNECT_TIMEOUT)
            .pool_idle_timeout(POOL_IDLE_TIMEOUT);
        if let Some(pem) = &self.ca_certs {
            let bad = |reason: String| FetchError::BadOption {
                option: "CA certificates",
                reason,
            };
            let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
                .map_err(|e| bad(error_chain(&e)))?;
            if certs.is_empty() {
                return Err(bad("no PEM CERTIFICATE block".into()));
            }
            builder = builder.tls_certs_only(certs);
        }
        if let Some(url) = &self.proxy {
            let proxy = reqwest::Proxy::all(url.as_str()).map_err(|e| FetchError::BadOption {
                option: "proxy",
                reason: format!("{url:?}: {}", error_chain(&e)),
            })?;
            builder = builder.proxy(proxy);
        }
        builder.build().map_err(|e| FetchError::BadOption {
            option: "HTTP client",
            reason: error_chain(&e),
        })
    }
}

/// Fetches from an `http://` or `https://` base URL (which may carry a path prefix).
pub struct HttpTransport {
    client: reqwest::Client,
    base: String,
    counters: Arc<Counters>,
    low_speed: LowSpeed,
    retry: Policy,
    /// A channel head came with the header saying the server makes diffs on request.
    makes_diffs: AtomicBool,
}

impl HttpTransport {
    pub fn new(base: &str, options: &HttpOptions) -> Result<Self, FetchError> {
        let bad = |reason: String| FetchError::BadUrl {
            url: base.to_string(),
            reason,
        };
        let parsed = reqwest::Url::parse(base).map_err(|e| bad(e.to_string()))?;
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(bad("a query or fragment is not allowed".into()));
        }
        Ok(HttpTransport {
            client: options.client()?,
            base: base.to_string(),
            counters: Arc::default(),
            low_speed: options.low_speed,
            retry: Policy::DEFAULT,
            makes_diffs: AtomicBool::new(false),
        })
    }

    /// Counts into `counters` (shared with the other servers of a [`super::mirrors::Mirrors`]).
    pub fn with_counters(mut self, counters: Arc<Counters>) -> Self {
        self.counters = counters;
        self
    }

    /// Retries transient failures under `policy` instead of [`Policy::DEFAULT`].
    pub fn with_retry(mut self, policy: Policy) -> Self {
        self.retry = policy;
        self
    }

    /// Sends the request `make` builds, again after a transient failure (see
    /// [`retry`](super::retry)), until it gets an answer that is not transient or the
    /// retry bounds are reached; then the last answer or error is returned. Each
    /// attempt's response headers must arrive within one low-speed window.
    async fn send(
        &self,
        url: &str,
        make: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, FetchError> {
        let mut failures = 0;
        let mut waited = Duration::ZERO;
        loop {
            self.counters.add_request();
            let (reason, retry_after, outcome) = match self.send_once(make(), url).await {
                Ok(resp) if !transient_status(resp.status().as_u16()) => return Ok(resp),
                Ok(resp) => {
                    let retry_after = resp
                        .headers()
                        .get(RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| parse_retry_after(v, SystemTime::now()));
                    (format!("HTTP {}", resp.status()), retry_after, Ok(resp))
                }
                Err((e, true)) => (e.to_string(), None, Err(e)),
                // Another server may be fine: this one is not asked again for the
                // request (fetch/mirrors.rs).
                Err((FetchError::Request { url, reason }, false)) => {
                    return Err(FetchError::Refused { url, reason });
                }
                Err((e, false)) => return Err(e),
            };
            failures += 1;
            match self
                .retry
                .next_delay(failures, waited, retry_after, retry::random())
            {
                Ok(delay) => {
                    tracing::warn!(
                        "GET {url}: {reason}; retrying in {:.1}s (attempt {} of {})",
                        delay.as_secs_f64(),
                        failures + 1,
                        self.retry.attempts
                    );
                    tokio::time::sleep(delay).await;
                    waited += delay;
                }
                Err(give_up) => {
                    tracing::warn!("GET {url}: {reason}; {give_up}");
                    return match outcome {
                        Ok(resp) => Ok(resp),
                        Err(FetchError::Request { url, reason }) => Err(FetchError::Request {
                            url,
                            reason: format!("{reason} ({give_up})"),
                        }),
                        Err(e) => Err(e),
                    };
                }
            }
        }
    }

    /// One attempt; the error says whether it may pass by itself.
    async fn send_once(
        &self,
        req: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<reqwest::Response, (FetchError, bool)> {
        let sent = req.send();
        let result = if self.low_speed.enabled() {
            tokio::time::timeout(self.low_speed.time, sent)
                .await
                .map_err(|_| {
                    let e = too_slow(
                        url,
                        TooSlow {
                            bytes: 0,
                            window: self.low_speed.time,
                            limit: self.low_speed.limit,
                        },
                    );
                    // The low-speed limit is not retried (see `retry`).
                    (e, false)
                })?
        } else {
            sent.await
        };
        result.map_err(|e| (request_error(url, &e), transient_error(&e)))
    }
}

impl HttpTransport {
    /// One GET whose request is retried (see [`Self::send`]); its body is not.
    async fn get_once(
        &self,
        path: &str,
        range: Option<(u64, u64)>,
        max_len: u64,
        what: &'static str,
    ) -> Result<Body, FetchError> {
        match self.get_tagged(path, range, None, max_len, what).await? {
            Some((body, _)) => Ok(body),
            None => Err(FetchError::Status {
                url: self.url(path),
                status: 304,
            }),
        }
    }

    /// One GET, with `If-None-Match: etag` when given: `None` on 304 Not Modified,
    /// else the body and the response's strong entity tag (a weak `W/` one says
    /// nothing about the bytes and is dropped).
    async fn get_tagged(
        &self,
        path: &str,
        range: Option<(u64, u64)>,
        etag: Option<&str>,
        max_len: u64,
        what: &'static str,
    ) -> Result<Option<(Body, Option<String>)>, FetchError> {
        let url = self.url(path);
        let resp = self
            .send(&url, || {
                let mut req = self.client.get(&url);
                if let Some(tag) = etag {
                    req = req.header(IF_NONE_MATCH, tag);
                }
                match range {
                    Some((start, end)) => req.header(RANGE, format!("bytes={start}-{}", end - 1)),
                    None => req,
                }
            })
            .await?;
        let status = resp.status();
        if resp
            .headers()
            .get(DIFFS_HEADER)
            .is_some_and(|v| v.as_bytes() == ON_DEMAND.as_bytes())
        {
            self.makes_diffs.store(true, Ordering::Relaxed);
        }
        if status == StatusCode::NOT_MODIFIED && etag.is_some() {
            return Ok(None);
        }
        let tag = resp
            .headers()
            .get(ETAG)
            .and_then(|v| v.to_str().ok())
            .filter(|t| t.starts_with('"') && t.len() <= MAX_ETAG)
            .map(str::to_string);
        let partial = status == StatusCode::PARTIAL_CONTENT;
        if status != StatusCode::OK && !partial {
            return Err(FetchError::Status {
                url,
                status: status.as_u16(),
            });
        }
        if let (true, Some((start, end))) = (partial, range) {
            check_content_range(&url, resp.headers().get(CONTENT_RANGE), start, end)?;
        } else if partial {
            return Err(FetchError::BadRange {
                url,
                reason: "206 to a request without Range".into(),
            });
        }
        if range.is_none() && resp.content_length().is_some_and(|n| n > max_len) {
            return Err(FetchError::TooLarge {
                what,
                url,
                limit: max_len,
            });
        }
        let raw = counted(resp, self.counters.clone(), url.clone(), self.low_speed);
        let body = match range {
            Some((start, end)) if partial => shape(raw, 0, Want::Exact(end - start), url),
            Some((start, end)) => shape(raw, start, Want::Exact(end - start), url),
            None => shape(raw, 0, Want::AtMost(max_len, what), url),
        };
        Ok(Some((body, tag)))
    }

    /// A whole object, fetched again when its body breaks off, under the retry policy.
    async fn whole(
        &self,
        path: &str,
        etag: Option<&str>,
        max_len: u64,
        what: &'static str,
    ) -> Result<Conditional, FetchError> {
        let mut failures = 0;
        let mut waited = Duration::ZERO;
        loop {
            let Some((body, tag)) = self.get_tagged(path, None, etag, max_len, what).await? else {
                return Ok(Conditional::Unchanged);
            };
            let e = match read_all(body).await {
                Ok(bytes) => return Ok(Conditional::Fetched { bytes, etag: tag }),
                Err(e) if retry::body_may_resume(&e) => e,
                Err(e) => return Err(e),
            };
            failures += 1;
            match self
                .retry
                .next_delay(failures, waited, None, retry::random())
            {
                Ok(delay) => {
                    tracing::warn!(
                        "{e}; fetching it again in {:.1}s (attempt {} of {})",
                        delay.as_secs_f64(),
                        failures + 1,
                        self.retry.attempts
                    );
                    tokio::time::sleep(delay).await;
                    waited += delay;
                }
                Err(give_up) => {
                    tracing::warn!("{e}; {give_up}");
                    return Err(e);
                }
            }
        }
    }
}

/// Longest entity tag kept; a longer one is not stored (the next check fetches whole).
const MAX_ETAG: usize = 256;

impl Transport for HttpTransport {
    /// A range's body is handed out as it streams (its caller continues a broken one
    /// from what it stored). A whole object (a head, key list or manifest: bounded and
    /// read whole by every caller) is read here, and fetched again when its body breaks
    /// off, under the same retry policy.
    fn get<'a>(
        &'a self,
        path: &'a str,
        range: Option<(u64, u64)>,
        max_len: u64,
        what: &'static str,
    ) -> BoxFuture<'a, Result<Body, FetchError>> {
        Box::pin(async move {
            if range.is_some() {
                return self.get_once(path, range, max_len, what).await;
            }
            match self.whole(path, None, max_len, what).await? {
                Conditional::Fetched { bytes, .. } => {
                    Ok(futures_util::stream::once(async { Ok(bytes) }).boxed())
                }
                Conditional::Unchanged => Err(FetchError::Status {
                    url: self.url(path),
                    status: 304,
                }),
            }
        })
    }

    fn get_if_changed<'a>(
        &'a self,
        path: &'a str,
        etag: Option<&'a str>,
        max_len: u64,
        what: &'static str,
    ) -> BoxFuture<'a, Result<Conditional, FetchError>> {
        Box::pin(self.whole(path, etag, max_len, what))
    }

    /// One GET with `Ferry-Wait`; its response headers may take the wait plus one
    /// low-speed window, its body is held to the low-speed limit like any other.
    fn get_made<'a>(
        &'a self,
        path: &'a str,
        max_len: u64,
        wait: Duration,
    ) -> BoxFuture<'a, Result<Body, FetchError>> {
        const WHAT: &str = "diff made by the server";
        Box::pin(async move {
            let url = self.url(path);
            self.counters.add_request();
            let sent = self
                .client
                .get(&url)
                .header(WAIT_HEADER, wait.as_secs().to_string())
                .send();
            let window = wait + self.low_speed.time;
            let resp = tokio::time::timeout(window, sent)
                .await
                .map_err(|_| {
                    too_slow(
                        &url,
                        TooSlow {
                            bytes: 0,
                            window,
                            limit: self.low_speed.limit,
                        },
                    )
                })?
                .map_err(|e| request_error(&url, &e))?;
            let status = resp.status();
            if status != StatusCode::OK {
                return Err(FetchError::Status {
                    url,
                    status: status.as_u16(),
                });
            }
            if resp.content_length().is_some_and(|n| n > max_len) {
                return Err(FetchError::TooLarge {
                    what: WHAT,
                    url,
                    limit: max_len,
                });
            }
            let raw = counted(resp, self.counters.clone(), url.clone(), self.low_speed);
            Ok(shape(raw, 0, Want::AtMost(max_len, WHAT), url))
        })
    }

    fn makes_diffs(&self) -> bool {
        self.makes_diffs.load(Ordering::Relaxed)
    }

    fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }

    fn url(&self, path: &str) -> String {
        join_url(&self.base, path)
    }
}

/// Whether a request error may pass by itself: a refused, reset or timed-out
/// connection may, a rejected certificate or a malformed request will not.
fn transient_error(e: &reqwest::Error) -> bool {
    certificate_problem(e).is_none()
        && !e.is_builder()
        && !e.is_redirect()
        && (e.is_connect() || e.is_timeout() || e.is_request() || e.is_body())
}

/// A failed request, with its whole source chain; a rejected server certificate is
/// named as such (reqwest reports it as a generic connect error).
fn request_error(url: &str, e: &reqwest::Error) -> FetchError {
    let chain = error_chain(e);
    let reason = match certificate_problem(e) {
        Some(problem) => format!(
            "the server's TLS certificate was rejected ({problem}); \
             if it is issued by a private CA, give that CA to `ferry init --ca-file`: {chain}"
        ),
        None => chain,
    };
    FetchError::Request {
        url: url.to_string(),
        reason,
    }
}

/// The certificate error somewhere in `e`'s sources, if that is why it failed. The
/// rustls error sits inside (nested) `io::Error`s, whose `source()` skips the error
/// they wrap, so each link is also unwrapped by hand.
fn certificate_problem(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur = Some(e);
    while let Some(link) = cur {
        let mut err: &(dyn std::error::Error + 'static) = link;
        loop {
            if let Some(
                t @ (rustls::Error::InvalidCertificate(_)
                | rustls::Error::NoCertificatesPresented
                | rustls::Error::UnsupportedNameType),
            ) = err.downcast_ref::<rustls::Error>()
            {
                return Some(t.to_string());
            }
            match err
                .downcast_ref::<std::io::Error>()
                .and_then(std::io::Error::get_ref)
            {
                Some(inner) => err = inner,
                None => break,
            }
        }
        cur = link.source();
    }
    None
}

fn too_slow(url: &str, t: TooSlow) -> FetchError {
    FetchError::TooSlow {
        url: url.to_string(),
        bytes: t.bytes,
        window_secs: t.window.as_secs(),
        limit: t.limit,
    }
}

/// The response body as a stream, counting every byte received and failing it when
/// it arrives slower than `low_speed` allows.
fn counted(
    resp: reqwest::Response,
    counters: Arc<Counters>,
    url: String,
    low_speed: LowSpeed,
) -> Body {
    struct S {
        resp: reqwest::Response,
        monitor: Monitor,
        counters: Arc<Counters>,
        url: String,
        done: bool,
    }
    let s = S {
        resp,
        monitor: Monitor::new(low_speed, Instant::now()),
        counters,
        url,
        done: false,
    };
    futures_util::stream::unfold(s, move |mut s| async move {
        if s.done {
            return None;
        }
        loop {
            // `chunk` is cancel safe (it only polls the body for its next frame): a
            // timed-out wait loses no bytes.
            let next = if low_speed.enabled() {
                tokio::time::timeout(s.monitor.tick(), s.resp.chunk()).await
            } else {
                Ok(s.resp.chunk().await)
            };
            let now = Instant::now();
            let item = match next {
                Err(_) => None,
                Ok(Ok(None)) => return None,
                Ok(Err(e)) => {
                    s.done = true;
                    return Some((Err(request_error(&s.url, &e)), s));
                }
                Ok(Ok(Some(b))) => {
                    s.counters.add_bytes(b.len() as u64);
                    s.monitor.record(now, b.len() as u64);
                    Some(b)
                }
            };
            if let Err(t) = s.monitor.check(now) {
                s.done = true;
                return Some((Err(too_slow(&s.url, t)), s));
            }
            if let Some(b) = item {
                return Some((Ok(b.to_vec()), s));
            }
        }
    })
    .boxed()
}

/// Checks `Content-Range: bytes start-last/total` against the request.
fn check_content_range(
    url: &str,
    header: Option<&reqwest::header::HeaderValue>,
    start: u64,
    end: u64,
) -> Result<(), FetchError> {
    let bad = |reason: String| FetchError::BadRange {
        url: url.to_string(),
        reason,
    };
    let text = header
        .ok_or_else(|| bad("206 without Content-Range".into()))?
        .to_str()
        .map_err(|_| bad("Content-Range is not text".into()))?;
    match ferry_format::content_range::parse_content_range(text) {
        Ok(r) if r.is(start, end) => Ok(()),
        _ => Err(bad(format!(
            "asked for bytes {start}-{}, got {text:?}",
            end - 1
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn content_range_must_match() {
        let h = HeaderValue::from_static("bytes 10-19/100");
        check_content_range("u", Some(&h), 10, 20).unwrap();
        assert!(check_content_range("u", Some(&h), 10, 21).is_err());
        assert!(check_content_range("u", None, 10, 20).is_err());
        let h = HeaderValue::from_static("bytes */100");
        assert!(check_content_range("u", Some(&h), 10, 20).is_err());
    }
}

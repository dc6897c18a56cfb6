//! The HTTP transport: one reqwest client (rustls), byte ranges, counted bodies.
//!
//! A range request must come back as `206` with exactly the asked range; a server that
//! ignores `Range` and answers `200` with the whole object is tolerated by cutting the
//! wanted slice out of the stream and hanging up once it is in.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::StreamExt;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_RANGE, RANGE};

use super::{Body, Counters, FetchError, Transport, Want, error_chain, join_url, shape};

/// Fetches from an `http://` or `https://` base URL (which may carry a path prefix).
pub struct HttpTransport {
    client: reqwest::Client,
    base: String,
    counters: Arc<Counters>,
}

impl HttpTransport {
    pub fn new(base: &str) -> Result<Self, FetchError> {
        let bad = |reason: String| FetchError::BadUrl {
            url: base.to_string(),
            reason,
        };
        let parsed = reqwest::Url::parse(base).map_err(|e| bad(e.to_string()))?;
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(bad("a query or fragment is not allowed".into()));
        }
        let client = reqwest::Client::builder()
            .user_agent(concat!("ferry/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| bad(error_chain(&e)))?;
        Ok(HttpTransport {
            client,
            base: base.to_string(),
            counters: Arc::default(),
        })
    }
}

impl Transport for HttpTransport {
    fn get<'a>(
        &'a self,
        path: &'a str,
        range: Option<(u64, u64)>,
        max_len: u64,
        what: &'static str,
    ) -> BoxFuture<'a, Result<Body, FetchError>> {
        Box::pin(async move {
            let url = self.url(path);
            let mut req = self.client.get(&url);
            if let Some((start, end)) = range {
                req = req.header(RANGE, format!("bytes={start}-{}", end - 1));
            }
            self.counters.add_request();
            let resp = req.send().await.map_err(|e| FetchError::Request {
                url: url.clone(),
                reason: error_chain(&e),
            })?;
            let status = resp.status();
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
            let raw = counted(resp, self.counters.clone(), url.clone());
            Ok(match range {
                Some((start, end)) if partial => shape(raw, 0, Want::Exact(end - start), url),
                Some((start, end)) => shape(raw, start, Want::Exact(end - start), url),
                None => shape(raw, 0, Want::AtMost(max_len, what), url),
            })
        })
    }

    fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }

    fn url(&self, path: &str) -> String {
        join_url(&self.base, path)
    }
}

/// The response body as a stream, counting every byte received.
fn counted(resp: reqwest::Response, counters: Arc<Counters>, url: String) -> Body {
    futures_util::stream::unfold(Some(resp), move |resp| {
        let counters = counters.clone();
        let url = url.clone();
        async move {
            let mut resp = resp?;
            match resp.chunk().await {
                Ok(Some(b)) => {
                    counters.add_bytes(b.len() as u64);
                    Some((Ok(b.to_vec()), Some(resp)))
                }
                Ok(None) => None,
                Err(e) => Some((
                    Err(FetchError::Request {
                        url,
                        reason: error_chain(&e),
                    }),
                    None,
                )),
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

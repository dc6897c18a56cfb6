//! Request routing: `/healthz`, `/metrics`, the fleet page ([`super::page`]) and the
//! repository path shapes of FORMAT.md §7, and with `--diffs-on-demand` the diff
//! requests of §3.8 ([`super::ondemand`]). Nothing else maps to a file.
//!
//! The request path is handed, still percent-encoded, to
//! `ferry_format::layout::parse_repo_path`, which accepts only
//! `objects/<2 hex>/<64 hex>`, `channels/<channel>/head`, `keys/<n>` and the head log's
//! `channels/<channel>/log/<20 digits>-<64 hex>`; the file read is then
//! rebuilt from the parsed value, never from the request text. So `..`, encoded
//! slashes or any other trick is simply a 404.

use std::fmt::Write as _;
use std::io;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use ferry_format::envelope::ObjectKind;
use ferry_format::id::Digest;
use ferry_format::layout::{
    RepoPath, head_log_path, head_path, key_list_path, object_path, parse_repo_path,
};
use ferry_format::ondemand::{DIFFS_HEADER, ON_DEMAND, parse_diff_request};
use futures_util::TryStreamExt;
use http::header::{
    ACCEPT_RANGES, ALLOW, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG,
    IF_NONE_MATCH, IF_RANGE, RANGE,
};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full, StreamBody, combinators::BoxBody};
use hyper::body::Frame;

use super::State;
use super::files::Object;
use super::metrics::Kind;
use super::range::{RangeDecision, decide, if_range_holds, none_match};
use crate::store::Immutable;

/// Every response body: streamed from a file or in memory.
pub type Body = BoxBody<Bytes, io::Error>;

/// Objects never change: any cache may keep them forever.
pub const OBJECT_CACHE: &str = crate::store::IMMUTABLE_CACHE;
/// Heads change with every publish; a short lifetime bounds how stale a cache can be.
pub const HEAD_CACHE: &str = crate::store::SHORT_CACHE;

/// Answers one request, with the object kind it served for the metrics.
pub async fn handle<B>(state: &State, req: &Request<B>) -> (Response<Body>, Kind) {
    let head_only = match *req.method() {
        Method::GET => false,
        Method::HEAD => true,
        _ => {
            let mut r = text(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed\n",
                false,
            );
            r.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            return (r, Kind::other);
        }
    };
    let path = req.uri().path();
    if let Some(page) = super::page::serve(path, head_only) {
        return (page, Kind::other);
    }
    match path {
        "/healthz" => {
            let r = match super::health::check(state).await {
                Ok(()) => text(StatusCode::OK, "ok", head_only),
                Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, why + "\n", head_only),
            };
            return (r, Kind::other);
        }
        "/metrics" => {
            if let Some(fleet) = &state.fleet
                && let Some(gauges) = super::fleet::api::gauges(fleet).await
            {
                state.metrics.set_fleet(&gauges);
            }
            let uploads = state.upload.as_ref().map(|u| u.counts());
            let metrics = state.metrics.render(uploads.as_ref());
            let mut r = text(StatusCode::OK, metrics, head_only);
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(super::metrics::CONTENT_TYPE),
            );
            return (r, Kind::other);
        }
        _ => {}
    }
    if let Some(od) = &state.on_demand
        && let Some(pair) = parse_diff_request(path)
    {
        return super::ondemand::handle(state, od, req, pair, head_only).await;
    }
    let (result, kind) = match parse_repo_path(path) {
        Some(RepoPath::Object(hash)) => match &state.files {
            Some(files) => match files.object(&hash) {
                Ok(o) => {
                    let kind = o.kind;
                    (open_object(state, req, o, head_only).await, kind)
                }
                Err(e) => (Err(e), Kind::other),
            },
            None => {
                let rel = object_path(&hash);
                let r = immutable(state, req, &rel, &hash, head_only).await;
                let kind = match r {
                    Ok(_) => super::metrics::object_kind(&state.store, path).await,
                    Err(_) => Kind::other,
                };
                (r, kind)
            }
        },
        // A head log entry is named by its hash, so it is as immutable as an object.
        Some(RepoPath::HeadLog(channel, sequence, hash)) => {
            let path = head_log_path(&channel, sequence, &hash);
            let r = immutable(state, req, &path, &hash, head_only);
            (r.await, Kind::head)
        }
        Some(RepoPath::Head(channel)) => {
            let rel = head_path(&channel);
            let r = small_file(state, req, &rel, ObjectKind::ChannelHead, head_only).await;
            // Agents ask only a server that says it makes diffs (FORMAT.md §3.8).
            let r = r.map(|mut r| {
                if state.on_demand.is_some() {
                    r.headers_mut()
                        .insert(DIFFS_HEADER, HeaderValue::from_static(ON_DEMAND));
                }
                r
            });
            (r, Kind::head)
        }
        Some(RepoPath::KeyList(version)) => {
            let rel = key_list_path(version);
            let r = small_file(state, req, &rel, ObjectKind::KeyList, head_only);
            (r.await, Kind::key_list)
        }
        None => return (not_found(head_only), Kind::other),
    };
    let resp = match result {
        Ok(r) => r,
        Err(e) if e.kind() == io::ErrorKind::NotFound => not_found(head_only),
        Err(e) => {
            tracing::error!("cannot serve {path}: {e}");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error\n",
                head_only,
            )
        }
    };
    (resp, kind)
}

/// An object of a folder repository, kept open: its 200/206/304/416 answer.
async fn open_object<B>(
    state: &State,
    req: &Request<B>,
    o: Arc<Object>,
    head_only: bool,
) -> io::Result<Response<Body>> {
    let (etag, len) = (o.etag.clone(), o.len);
    respond(
        state,
        req,
        Source::Open(o),
        len,
        &etag,
        OBJECT_CACHE,
        head_only,
    )
    .await
}

/// The answer an object of a folder repository gets at its own path, for another
/// path that names it (an on-demand diff, [`super::ondemand`]).
pub(super) async fn object_response<B>(
    state: &State,
    req: &Request<B>,
    hash: &Digest,
    head_only: bool,
) -> io::Result<Response<Body>> {
    let files = state
        .files
        .as_ref()
        .ok_or_else(|| io::Error::other("not a folder repository"))?;
    open_object(state, req, files.object(hash)?, head_only).await
}

/// Where a body's bytes come from.
enum Source {
    /// An object of the folder, kept open ([`super::files`]).
    Open(Arc<Object>),
    File(std::fs::File),
    Memory(Bytes),
    /// The layout path of a file in object storage, opened at the range answered.
    Remote(String),
}

/// A content-addressed file: an object or a head log entry named by `hash`.
async fn immutable<B>(
    state: &State,
    req: &Request<B>,
    relative: &str,
    hash: &Digest,
    head_only: bool,
) -> io::Result<Response<Body>> {
    let (source, len) = match state.store.open_immutable(relative, hash).await? {
        (Immutable::File(file), len) => (Source::File(file), len),
        (Immutable::Remote, len) => (Source::Remote(relative.to_string()), len),
    };
    let etag = super::files::quoted(hash);
    respond(state, req, source, len, &etag, OBJECT_CACHE, head_only).await
}

/// Channel heads and key lists: small signed files served from memory with a short
/// max-age (a head changes with every publish; a key list is never rewritten, but a
/// short lifetime costs nothing at the rate agents fetch them). From a folder they are
/// kept in memory while unchanged ([`super::files`]).
async fn small_file<B>(
    state: &State,
    req: &Request<B>,
    relative: &str,
    kind: ObjectKind,
    head_only: bool,
) -> io::Result<Response<Body>> {
    if let Some(files) = &state.files {
        let small = files.small(relative, kind.max_size())?;
        let len = small.body.len() as u64;
        let source = Source::Memory(small.body.clone());
        return respond(state, req, source, len, &small.etag, HEAD_CACHE, head_only).await;
    }
    // Heads are replaced atomically (rename, or a single PUT), so one read sees exactly
    // one version; hashing that same buffer keeps the ETag and the body consistent.
    let bytes = match state.store.read_small(relative, kind.max_size()).await {
        Ok(Some(b)) => Bytes::from(b),
        Ok(None) => return Err(io::ErrorKind::NotFound.into()),
        Err(e) => return Err(io::Error::other(format!("{e:#}"))),
    };
    let etag = super::files::quoted(&Digest::of(&bytes));
    let len = bytes.len() as u64;
    respond(
        state,
        req,
        Source::Memory(bytes),
        len,
        &etag,
        HEAD_CACHE,
        head_only,
    )
    .await
}

/// The request headers that decide how a repository file is answered: the first of
/// each, when it is visible ASCII (anything else counts as absent, as
/// `HeaderValue::to_str` has it).
#[derive(Clone, Copy, Debug, Default)]
pub struct Conditions<'a> {
    pub if_none_match: Option<&'a str>,
    pub if_range: Option<&'a str>,
    pub range: Option<&'a str>,
}

impl<'a> Conditions<'a> {
    pub fn of<B>(req: &'a Request<B>) -> Conditions<'a> {
        let header = |name| req.headers().get(name).and_then(|v| v.to_str().ok());
        Conditions {
            if_none_match: header(IF_NONE_MATCH),
            if_range: header(IF_RANGE),
            range: header(RANGE),
        }
    }
}

/// How a repository file of some length is answered (headers aside: every answer
/// has its ETag, Cache-Control and `Accept-Ranges: bytes`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// 304, no other header, no body.
    NotModified,
    /// 416 with `Content-Range: bytes */LEN` and `Content-Length: 0`.
    Unsatisfiable,
    /// 200 (`partial` false) or 206 with `Content-Range: bytes START-END/LEN`: `count`
    /// bytes from `start`.
    Send {
        partial: bool,
        start: u64,
        count: u64,
    },
}

/// The common 200/206/304/416 logic of repository files.
pub fn plan(c: &Conditions<'_>, etag: &str, len: u64) -> Plan {
    if c.if_none_match.is_some_and(|h| none_match(h, etag)) {
        return Plan::NotModified;
    }
    let range = if c.if_range.is_none_or(|h| if_range_holds(h, etag)) {
        decide(c.range, len)
    } else {
        RangeDecision::Full
    };
    match range {
        RangeDecision::Full => Plan::Send {
            partial: false,
            start: 0,
            count: len,
        },
        RangeDecision::Partial { start, end } => Plan::Send {
            partial: true,
            start,
            count: end - start + 1,
        },
        RangeDecision::Unsatisfiable => Plan::Unsatisfiable,
    }
}

/// A repository file's response ([`plan`]).
async fn respond<B>(
    state: &State,
    req: &Request<B>,
    source: Source,
    len: u64,
    etag: &HeaderValue,
    cache: &'static str,
    head_only: bool,
) -> io::Result<Response<Body>> {
    let tag = etag.to_str().unwrap_or_default();
    let mut headers = HeaderMap::with_capacity(8);
    headers.insert(ETAG, etag.clone());
    headers.insert(CACHE_CONTROL, HeaderValue::from_static(cache));
    headers.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    let (status, start, count) = match plan(&Conditions::of(req), tag, len) {
        Plan::NotModified => return Ok(response(StatusCode::NOT_MODIFIED, headers, empty())),
        Plan::Unsatisfiable => {
            headers.insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            let mut v = BytesMut::with_capacity(32);
            let _ = write!(v, "bytes */{len}");
            if let Ok(v) = HeaderValue::from_maybe_shared(v.freeze()) {
                headers.insert(CONTENT_RANGE, v);
            }
            headers.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
            return Ok(response(
                StatusCode::RANGE_NOT_SATISFIABLE,
                headers,
                empty(),
            ));
        }
        Plan::Send {
            partial,
            start,
            count,
        } => {
            headers.insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            if partial {
                let end = start + count - 1;
                headers.insert(CONTENT_RANGE, content_range(start, end, len));
                (StatusCode::PARTIAL_CONTENT, start, count)
            } else {
                (StatusCode::OK, start, count)
            }
        }
    };
    headers.insert(CONTENT_LENGTH, HeaderValue::from(count));
    if head_only {
        return Ok(response(status, headers, empty()));
    }
    let body = match source {
        Source::Memory(bytes) => {
            // start + count <= len = bytes.len(), so the slice is in bounds.
            let part = bytes.slice(start as usize..(start + count) as usize);
            Full::new(part).map_err(|never| match never {}).boxed()
        }
        Source::Open(object) => super::file_body::body(object, start, count)?,
        Source::File(file) => super::file_body::body(Arc::new(file), start, count)?,
        Source::Remote(rel) => {
            let stream = state.store.open_read(&rel, start..start + count).await?;
            StreamBody::new(stream.map_ok(Frame::data)).boxed()
        }
    };
    Ok(response(status, headers, body))
}

/// `bytes START-END/LEN`.
fn content_range(start: u64, end: u64, len: u64) -> HeaderValue {
    let mut v = BytesMut::with_capacity(64);
    let _ = write!(v, "bytes {start}-{end}/{len}");
    // Digits, a dash, a slash and a space are always a valid header value.
    HeaderValue::from_maybe_shared(v.freeze()).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn response(status: StatusCode, headers: HeaderMap, body: Body) -> Response<Body> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    *r.headers_mut() = headers;
    r
}

fn build(builder: http::response::Builder, body: Body) -> Response<Body> {
    // Every header above is built from ASCII we control, so the builder cannot fail;
    // should it ever, a bare 500 is still a valid answer.
    builder.body(body).unwrap_or_else(|_| {
        let mut r = Response::new(empty());
        *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        r
    })
}

fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

fn not_found(head_only: bool) -> Response<Body> {
    text(StatusCode::NOT_FOUND, "not found\n", head_only)
}

pub(super) fn text(status: StatusCode, body: impl Into<Bytes>, head_only: bool) -> Response<Body> {
    let body: Bytes = body.into();
    let b = Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "text/plain; charset=utf-8")
        .header(CONTENT_LENGTH, body.len());
    if head_only {
        build(b, empty())
    } else {
        build(b, Full::new(body).map_err(|never| match never {}).boxed())
    }
}

//! The HTTP/1.x fast path of plain (not TLS) connections: what agents and mirrors ask
//! for almost always — `GET` or `HEAD` of an object, a head log entry, a channel head
//! or a key list of a folder repository — is answered here, with no per-request
//! allocation beyond the request's own parse, the response head written into one
//! buffer, and file bodies sent with `sendfile(2)` after the head (nginx's `sendfile
//! on`, the head held with `MSG_MORE` to leave with the body), or read and written
//! with the head in one `writev` when short.
//!
//! Everything else is left to hyper, for the rest of the connection: the first
//! request that is not such a `GET`/`HEAD` (another path, a method, a body, `Expect`,
//! `Upgrade`, a query string, an absolute URI, a head this parser does not accept or
//! more than [`MAX_HEAD`] bytes of it, HTTP/2's preface) is handed to hyper with every
//! byte read and not yet answered, so hyper sees the connection as if it had served it
//! from the start (`serve_connection` in `serve/mod.rs`). Answers are the same either way:
//! routing and the 200/206/304/416 rules are shared ([`super::routes::plan`]), headers
//! come in hyper's order and case, HTTP/1.0 is answered in HTTP/1.0 and keep-alive
//! follows hyper's rules; the metrics and the access log count them alike.
//!
//! The connection rules of [`super::conns`] hold here too: a request is in flight
//! from its parse until its last byte is written; idle connections (no request in
//! flight: between requests, or still sending a head) close after the idle timeout,
//! or when shed to make room; a response that moves no byte for the stall timeout
//! drops the connection; shutdown closes the connection once its response is sent.

use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::{Buf, Bytes, BytesMut};
use ferry_format::envelope::ObjectKind;
use ferry_format::id::Digest;
use ferry_format::layout::{RepoPath, head_log_path, parse_repo_path};
use ferry_format::ondemand::{DIFFS_HEADER, ON_DEMAND};
use ferry_format::version::check_channel;
use http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::State;
use super::access_log::LogLine;
use super::conns::{self, Conn, Verdict};
use super::files::quoted;
use super::metrics::Kind;
use super::routes::{Conditions, HEAD_CACHE, OBJECT_CACHE, Plan, plan};

/// A request head longer than this is left to hyper (which takes longer ones, up to
/// its own limit, and answers 431 past it).
pub const MAX_HEAD: usize = 16 << 10;
/// Headers parsed here at most; a request with more is left to hyper.
const MAX_HEADERS: usize = 32;
/// Room made in the read buffer before each read.
const READ: usize = 2 << 10;
/// File bodies up to this long are read and written with the response head in one
/// `writev`; longer ones are sent with `sendfile` after it.
pub const INLINE: u64 = 16 << 10;

/// Serves the plain connection `tcp` until it ends, here or, from the first request
/// this path does not answer, through hyper.
pub async fn serve(
    tcp: TcpStream,
    state: Arc<State>,
    stop: watch::Receiver<bool>,
    peer: SocketAddr,
    conn: Arc<Conn>,
) {
    let mut fast = Fast {
        tcp,
        state,
        conn,
        buf: BytesMut::new(),
        head: Vec::new(),
    };
    match fast.run(&stop).await {
        Ok(End::HandOver) => {
            let Fast {
                tcp,
                state,
                conn,
                buf,
                ..
            } = fast;
            tracing::debug!(%peer, "connection handed to hyper");
            let io = Prefixed {
                prefix: buf.freeze(),
                io: tcp,
            };
            let io = conns::Watched::new(io, conn.clone());
            super::serve_connection(io, state, stop, peer, conn).await;
        }
        Ok(End::Close(why)) => {
            tracing::debug!(%peer, "connection closed: {why}");
            let _ = poll_fn(|cx| Pin::new(&mut fast.tcp).poll_shutdown(cx)).await;
        }
        Err(e) => tracing::debug!(%peer, "connection ended: {e}"),
    }
}

enum End {
    Close(&'static str),
    HandOver,
}

struct Fast {
    tcp: TcpStream,
    state: Arc<State>,
    conn: Arc<Conn>,
    /// Bytes read and not yet answered.
    buf: BytesMut,
    /// The response head being written.
    head: Vec<u8>,
}

/// What woke a connection waiting for a request.
enum Wake {
    Read(usize),
    Shed,
    Stop,
    /// The idle or stall rule may apply ([`conns::RULES`]).
    Rules,
}

/// What a request path names.
enum Target {
    Object(Digest),
    /// A channel head or a key list: the request path less its `/` is its layout
    /// path (`parse_repo_path` accepts only the canonical spelling).
    Small(ObjectKind, Kind),
    /// A head log entry: its layout path and hash.
    Log(String, Digest),
}

/// A request this path answers, as offsets into its head's bytes.
struct Req {
    /// The length of its head.
    len: usize,
    head_only: bool,
    http10: bool,
    keep_alive: bool,
    path: Range<usize>,
    target: Target,
    if_none_match: Option<Range<usize>>,
    if_range: Option<Range<usize>>,
    range: Option<Range<usize>>,
}

enum Parsed {
    Partial,
    Req(Box<Req>),
    HandOver,
}

impl Fast {
    async fn run(&mut self, stop: &watch::Receiver<bool>) -> io::Result<End> {
        if self.state.files.is_none() {
            // A bucket: its files are streamed by hyper.
            return Ok(End::HandOver);
        }
        let conn = self.conn.clone();
        loop {
            loop {
                let req = match self.parse() {
                    Parsed::Partial => break,
                    Parsed::HandOver => return Ok(End::HandOver),
                    Parsed::Req(req) => req,
                };
                // Taken out while answered, so the request's text stays borrowable.
                let mut buf = std::mem::take(&mut self.buf);
                let answered = self.answer(&req, &buf[..req.len], &conn).await;
                buf.advance(req.len);
                // Nothing left: the buffer goes back to the allocator, which hands
                // the same (cache-warm) memory to the next connection that reads.
                // Idle connections hold no buffer.
                if !buf.is_empty() {
                    self.buf = buf;
                }
                let keep_alive = answered?;
                if !keep_alive {
                    return Ok(End::Close("not keep-alive"));
                }
                if conn.stopping() || *stop.borrow() {
                    return Ok(End::Close("shutdown"));
                }
            }
            if self.buf.len() > MAX_HEAD {
                return Ok(End::HandOver);
            }
            match self.wait().await? {
                Wake::Read(0) => return Ok(End::Close("closed by the client")),
                Wake::Read(_) => {}
                // Idle by definition: no request in flight.
                Wake::Shed => return Ok(End::Close("shed to make room")),
                Wake::Stop => return Ok(End::Close("shutdown")),
                Wake::Rules => {
                    if self.conn.verdict() == Verdict::Idle {
                        return Ok(End::Close("idle"));
                    }
                }
            }
        }
    }

    /// Reads more of the next request, or learns why to stop waiting for it.
    async fn wait(&mut self) -> io::Result<Wake> {
        if self.buf.capacity() - self.buf.len() < READ {
            self.buf.reserve(READ);
        }
        poll_fn(|cx| {
            match tokio_util::io::poll_read_buf(Pin::new(&mut self.tcp), cx, &mut self.buf) {
                Poll::Ready(Ok(n)) => {
                    if n > 0 {
                        self.conn.touch();
                    }
                    return Poll::Ready(Ok(Wake::Read(n)));
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
            let raised = self.conn.poll_signals(cx);
            if raised & conns::SHED != 0 {
                Poll::Ready(Ok(Wake::Shed))
            } else if raised & conns::STOP != 0 {
                Poll::Ready(Ok(Wake::Stop))
            } else if raised & conns::RULES != 0 {
                Poll::Ready(Ok(Wake::Rules))
            } else {
                Poll::Pending
            }
        })
        .await
    }

    /// The next request buffered, if whole and one this path answers.
    fn parse(&mut self) -> Parsed {
        // Empty lines before a request line are ignored (RFC 9112 §2.2).
        let blank = self
            .buf
            .iter()
            .take_while(|b| **b == b'\r' || **b == b'\n')
            .count();
        self.buf.advance(blank);
        if self.buf.is_empty() {
            return Parsed::Partial;
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        let base = self.buf.as_ptr() as usize;
        let len = match req.parse(&self.buf) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Parsed::Partial,
            // Malformed, HTTP/2's preface, too many headers: hyper answers those.
            Err(_) => return Parsed::HandOver,
        };
        let at = |s: &[u8]| {
            let start = s.as_ptr() as usize - base;
            start..start + s.len()
        };
        let head_only = match req.method {
            Some("GET") => false,
            Some("HEAD") => true,
            _ => return Parsed::HandOver,
        };
        let http10 = match req.version {
            Some(0) => true,
            Some(1) => false,
            _ => return Parsed::HandOver,
        };
        // Origin form, no query: the only shape the repository's paths take.
        let Some(path) = req.path.filter(|p| p.starts_with('/') && !p.contains('?')) else {
            return Parsed::HandOver;
        };
        let target = if let Some(hash) = object_target(path) {
            Target::Object(hash)
        } else if is_head(path) {
            Target::Small(ObjectKind::ChannelHead, Kind::head)
        } else {
            match parse_repo_path(path) {
                Some(RepoPath::Object(hash)) => Target::Object(hash),
                Some(RepoPath::Head(_)) => Target::Small(ObjectKind::ChannelHead, Kind::head),
                Some(RepoPath::KeyList(_)) => Target::Small(ObjectKind::KeyList, Kind::key_list),
                Some(RepoPath::HeadLog(channel, sequence, hash)) => {
                    Target::Log(head_log_path(&channel, sequence, &hash), hash)
                }
                None => return Parsed::HandOver,
            }
        };
        let (mut close, mut keep) = (false, false);
        let (mut if_none_match, mut if_range, mut range) = (None, None, None);
        for h in req.headers.iter() {
            let name = h.name;
            let is = |n: &str| name.eq_ignore_ascii_case(n);
            if is("content-length") {
                if h.value.trim_ascii() != b"0" {
                    return Parsed::HandOver;
                }
            } else if is("transfer-encoding") || is("expect") || is("upgrade") {
                return Parsed::HandOver;
            } else if is("connection") {
                for token in h.value.split(|b| *b == b',') {
                    let token = token.trim_ascii();
                    close |= token.eq_ignore_ascii_case(b"close");
                    keep |= token.eq_ignore_ascii_case(b"keep-alive");
                    if token.eq_ignore_ascii_case(b"upgrade") {
                        return Parsed::HandOver;
                    }
                }
            } else if is("range") {
                first(&mut range, h.value, &at);
            } else if is("if-none-match") {
                first(&mut if_none_match, h.value, &at);
            } else if is("if-range") {
                first(&mut if_range, h.value, &at);
            }
        }
        Parsed::Req(Box::new(Req {
            len,
            head_only,
            http10,
            keep_alive: if http10 { keep && !close } else { !close },
            path: at(path.as_bytes()),
            target,
            if_none_match: if_none_match.flatten(),
            if_range: if_range.flatten(),
            range: range.flatten(),
        }))
    }

    /// Answers `req` (whose head is `raw`); returns whether the connection stays open.
    async fn answer(&mut self, req: &Req, raw: &[u8], conn: &Conn) -> io::Result<bool> {
        let _in_flight = conn.begin_here();
        let text =
            |r: &Option<Range<usize>>| r.clone().and_then(|r| std::str::from_utf8(&raw[r]).ok());
        let path = text(&Some(req.path.clone())).unwrap_or_default();
        let cond = Conditions {
            if_none_match: text(&req.if_none_match),
            if_range: text(&req.if_range),
            range: text(&req.range),
        };
        let (found, kind) = self.find(&req.target, path);
        // Per request, for the same reason as the read buffer.
        self.head = Vec::with_capacity(512);
        let head = &mut self.head;
        let version = if req.http10 { "HTTP/1.0" } else { "HTTP/1.1" };
        let (status, body, bytes) = match found {
            Ok(found) => {
                let tag = found.etag.to_str().unwrap_or_default();
                let p = plan(&cond, tag, found.len);
                let status = match p {
                    Plan::NotModified => StatusCode::NOT_MODIFIED,
                    Plan::Unsatisfiable => StatusCode::RANGE_NOT_SATISFIABLE,
                    Plan::Send { partial: true, .. } => StatusCode::PARTIAL_CONTENT,
                    Plan::Send { .. } => StatusCode::OK,
                };
                status_line(head, version, status);
                header(head, "etag", found.etag.as_bytes());
                header(head, "cache-control", found.cache.as_bytes());
                header(head, "accept-ranges", b"bytes");
                // Agents ask only a server that says it makes diffs (FORMAT.md §3.8).
                if self.state.on_demand.is_some()
                    && matches!(req.target, Target::Small(ObjectKind::ChannelHead, _))
                {
                    header(head, DIFFS_HEADER, ON_DEMAND.as_bytes());
                }
                match p {
                    Plan::NotModified => (status, Body::None, 0),
                    Plan::Unsatisfiable => {
                        header(head, "content-type", b"application/octet-stream");
                        head.extend_from_slice(b"content-range: bytes */");
                        number(head, found.len);
                        head.extend_from_slice(b"\r\n");
                        header(head, "content-length", b"0");
                        (status, Body::None, 0)
                    }
                    Plan::Send {
                        partial,
                        start,
                        count,
                    } => {
                        header(head, "content-type", b"application/octet-stream");
                        if partial {
                            let end = start + count - 1;
                            let len = found.len;
                            head.extend_from_slice(b"content-range: bytes ");
                            number(head, start);
                            head.push(b'-');
                            number(head, end);
                            head.push(b'/');
                            number(head, len);
                            head.extend_from_slice(b"\r\n");
                        }
                        head.extend_from_slice(b"content-length: ");
                        number(head, count);
                        head.extend_from_slice(b"\r\n");
                        if req.head_only {
                            (status, Body::None, 0)
                        } else {
                            (status, found.source.part(start, count), count)
                        }
                    }
                }
            }
            Err(e) => {
                let (status, message): (_, &'static [u8]) = if e.kind() == io::ErrorKind::NotFound {
                    (StatusCode::NOT_FOUND, b"not found\n")
                } else {
                    tracing::error!("cannot serve {path}: {e}");
                    (StatusCode::INTERNAL_SERVER_ERROR, b"internal error\n")
                };
                status_line(head, version, status);
                header(head, "content-type", b"text/plain; charset=utf-8");
                head.extend_from_slice(b"content-length: ");
                number(head, message.len() as u64);
                head.extend_from_slice(b"\r\n");
                if req.head_only {
                    (status, Body::None, 0)
                } else {
                    let n = message.len() as u64;
                    (status, Body::Memory(Bytes::from_static(message)), n)
                }
            }
        };
        if req.http10 && req.keep_alive {
            header(head, "connection", b"keep-alive");
        } else if !req.http10 && !req.keep_alive {
            header(head, "connection", b"close");
        }
        date(head);
        head.extend_from_slice(b"\r\n");

        self.state.metrics.record(kind, status.as_u16(), bytes);
        tracing::debug!(
            method = if req.head_only { "HEAD" } else { "GET" },
            path,
            status = status.as_u16(),
            bytes,
            "request"
        );
        if let Some(log) = &self.state.log {
            log.record(&LogLine {
                method: if req.head_only { "HEAD" } else { "GET" },
                path,
                status: status.as_u16(),
                bytes,
                range: cond.range,
            });
        }
        let sent = self.send(body).await;
        self.head = Vec::new();
        sent?;
        Ok(req.keep_alive)
    }

    /// The file `target` (requested as `path`) names, with the kind the metrics count
    /// it as.
    fn find(&self, target: &Target, path: &str) -> (io::Result<Found>, Kind) {
        let Some(files) = &self.state.files else {
            return (Err(io::ErrorKind::NotFound.into()), Kind::other);
        };
        match target {
            Target::Object(hash) => match files.object(hash) {
                Ok(o) => {
                    let kind = o.kind;
                    let found = Found {
                        etag: o.etag.clone(),
                        len: o.len,
                        cache: OBJECT_CACHE,
                        source: Source::Object(o),
                    };
                    (Ok(found), kind)
                }
                Err(e) => (Err(e), Kind::other),
            },
            Target::Log(rel, hash) => {
                let found = files.open(rel).map(|(file, len)| Found {
                    etag: quoted(hash),
                    len,
                    cache: OBJECT_CACHE,
                    source: Source::File(Arc::new(file)),
                });
                (found, Kind::head)
            }
            Target::Small(object, kind) => {
                let rel = path.strip_prefix('/').unwrap_or(path);
                let found = files.small(rel, object.max_size()).map(|s| Found {
                    etag: s.etag.clone(),
                    len: s.body.len() as u64,
                    cache: HEAD_CACHE,
                    source: Source::Memory(s.body.clone()),
                });
                (found, *kind)
            }
        }
    }

    /// Writes the response head and `body`.
    async fn send(&mut self, body: Body) -> io::Result<()> {
        let (tcp, conn) = (&self.tcp, &*self.conn);
        let tick = &mut Stall { conn };
        match body {
            Body::None => write_all(tcp, conn, tick, &mut [IoSlice::new(&self.head)]).await,
            Body::Memory(b) => {
                let mut bufs = [IoSlice::new(&self.head), IoSlice::new(&b)];
                write_all(tcp, conn, tick, &mut bufs).await
            }
            Body::File { file, start, count } if count <= INLINE => {
                let mut data = vec![0u8; count as usize];
                file.file().read_exact_at(&mut data, start)?;
                let mut bufs = [IoSlice::new(&self.head), IoSlice::new(&data)];
                write_all(tcp, conn, tick, &mut bufs).await
            }
            Body::File { file, start, count } => {
                // MSG_MORE: the head leaves with the body's first bytes, one segment
                // (as nginx's `tcp_nopush`, with one call less than TCP_CORK).
                send_more(tcp, conn, tick, &self.head).await?;
                send_file(tcp, conn, tick, file.file(), start, count).await
            }
        }
    }
}

/// `/objects/<2 hex>/<64 hex>`, the most asked path, parsed without allocating; the
/// same rule as `parse_repo_path` (lowercase hex, the fan its first two digits), which
/// parses the other shapes.
fn object_target(path: &str) -> Option<Digest> {
    let (fan, name) = path.strip_prefix("/objects/")?.split_once('/')?;
    let lower_hex = name
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if name.len() != 64 || !lower_hex || !name.starts_with(fan) || fan.len() != 2 {
        return None;
    }
    Digest::from_hex(name).ok()
}

/// `/channels/<channel>/head`, parsed without allocating (the same rule as
/// `parse_repo_path`).
fn is_head(path: &str) -> bool {
    path.strip_prefix("/channels/")
        .and_then(|p| p.strip_suffix("/head"))
        .is_some_and(|name| !name.contains('/') && check_channel(name).is_ok())
}

/// A repository file found, before its body.
struct Found {
    etag: http::HeaderValue,
    len: u64,
    cache: &'static str,
    source: Source,
}

enum Source {
    Memory(Bytes),
    Object(Arc<super::files::Object>),
    File(Arc<std::fs::File>),
}

impl Source {
    fn part(self, start: u64, count: u64) -> Body {
        let file: Arc<dyn super::file_body::Holds> = match self {
            // start + count <= len = bytes.len(), so the slice is in bounds.
            Source::Memory(b) => {
                return Body::Memory(b.slice(start as usize..(start + count) as usize));
            }
            Source::Object(o) => o,
            Source::File(f) => f,
        };
        Body::File { file, start, count }
    }
}

enum Body {
    None,
    Memory(Bytes),
    File {
        file: Arc<dyn super::file_body::Holds>,
        start: u64,
        count: u64,
    },
}

/// Keeps the first value of a header, when it is visible ASCII (`None` inside when it
/// is not, as `HeaderValue::to_str` fails then).
fn first(
    slot: &mut Option<Option<Range<usize>>>,
    value: &[u8],
    at: &impl Fn(&[u8]) -> Range<usize>,
) {
    if slot.is_none() {
        let visible = value
            .iter()
            .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b));
        *slot = Some(visible.then(|| at(value)));
    }
}

fn status_line(head: &mut Vec<u8>, version: &str, status: StatusCode) {
    head.extend_from_slice(version.as_bytes());
    head.push(b' ');
    head.extend_from_slice(status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    head.extend_from_slice(b"\r\n");
}

/// `n` in decimal.
fn number(head: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    head.extend_from_slice(&digits[at..]);
}

fn header(head: &mut Vec<u8>, name: &str, value: &[u8]) {
    head.extend_from_slice(name.as_bytes());
    head.extend_from_slice(b": ");
    head.extend_from_slice(value);
    head.extend_from_slice(b"\r\n");
}

/// `date: <IMF-fixdate>`, formatted once a second per thread (as hyper does).
fn date(head: &mut Vec<u8>) {
    thread_local! {
        static DATE: std::cell::RefCell<(u64, String)> = const {
            std::cell::RefCell::new((u64::MAX, String::new()))
        };
    }
    let now = SystemTime::now();
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(at, text)| {
        if *at != secs {
            *at = secs;
            *text = httpdate::fmt_http_date(now);
        }
        header(head, "date", text.as_bytes());
    });
}

/// The stall rule while a response is written.
struct Stall<'a> {
    conn: &'a Conn,
}

impl Stall<'_> {
    /// Whether the connection is stalled; registers `cx` to learn when it may be.
    fn stalled(&mut self, cx: &mut Context<'_>) -> bool {
        self.conn.poll_signals(cx) & conns::RULES != 0 && self.conn.verdict() == Verdict::Stalled
    }
}

/// Polls `op` (a non-blocking write) until it does not find the socket full; while it
/// waits, the stall rule is checked whenever the sweeper says it may apply.
fn poll_write_with(
    tcp: &TcpStream,
    conn: &Conn,
    tick: &mut Stall<'_>,
    cx: &mut Context<'_>,
    mut op: impl FnMut() -> io::Result<usize>,
) -> Poll<io::Result<usize>> {
    loop {
        match tcp.poll_write_ready(cx) {
            Poll::Ready(Ok(())) => match tcp.try_io(Interest::WRITABLE, &mut op) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Ok(n) => {
                    if n > 0 {
                        conn.touch();
                    }
                    return Poll::Ready(Ok(n));
                }
                Err(e) => return Poll::Ready(Err(e)),
            },
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => {
                if tick.stalled(cx) {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no progress for {}s", conns::STALL_TIMEOUT.as_secs()),
                    )));
                }
                return Poll::Pending;
            }
        }
    }
}

async fn write_all(
    tcp: &TcpStream,
    conn: &Conn,
    tick: &mut Stall<'_>,
    mut bufs: &mut [IoSlice<'_>],
) -> io::Result<()> {
    while !bufs.is_empty() {
        let n = poll_fn(|cx| {
            poll_write_with(tcp, conn, tick, cx, || {
                rustix::io::writev(tcp, bufs).map_err(io::Error::from)
            })
        })
        .await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut bufs, n);
    }
    Ok(())
}

/// Sends `buf` with MSG_MORE: held until what follows it (or the segment fills).
async fn send_more(
    tcp: &TcpStream,
    conn: &Conn,
    tick: &mut Stall<'_>,
    mut buf: &[u8],
) -> io::Result<()> {
    use rustix::net::SendFlags;
    while !buf.is_empty() {
        let n = poll_fn(|cx| {
            poll_write_with(tcp, conn, tick, cx, || {
                rustix::net::send(tcp, buf, SendFlags::MORE | SendFlags::NOSIGNAL)
                    .map_err(io::Error::from)
            })
        })
        .await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        buf = &buf[n..];
    }
    Ok(())
}

/// Sends `count` bytes of `file` from `start` with `sendfile`.
async fn send_file(
    tcp: &TcpStream,
    conn: &Conn,
    tick: &mut Stall<'_>,
    file: &std::fs::File,
    start: u64,
    count: u64,
) -> io::Result<()> {
    let (mut at, end) = (start, start + count);
    while at < end {
        // At most 1 GiB a call (Linux sends at most 2 GiB less a page).
        let n = (end - at).min(1 << 30) as usize;
        let sent = poll_fn(|cx| {
            poll_write_with(tcp, conn, tick, cx, || {
                let mut offset = at;
                rustix::fs::sendfile(tcp, file, Some(&mut offset), n).map_err(io::Error::from)
            })
        })
        .await?;
        if sent == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "a served file is shorter than its length said",
            ));
        }
        at += sent as u64;
    }
    Ok(())
}

/// A socket whose first bytes read are `prefix` (read already by the fast path).
pub struct Prefixed {
    prefix: Bytes,
    io: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_status_lines_are_written_as_hyper_writes_them() {
        for n in [0u64, 7, 10, 65_536, 140_184_427, u64::MAX] {
            let mut v = Vec::new();
            number(&mut v, n);
            assert_eq!(v, n.to_string().as_bytes());
        }
        let mut v = Vec::new();
        status_line(&mut v, "HTTP/1.1", StatusCode::PARTIAL_CONTENT);
        status_line(&mut v, "HTTP/1.0", StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(
            v,
            b"HTTP/1.1 206 Partial Content\r\nHTTP/1.0 416 Range Not Satisfiable\r\n"
        );
    }
    use ferry_format::layout::object_path;

    #[test]
    fn head_paths_parse_as_the_layout_has_them() {
        for (path, head) in [
            ("/channels/stable/head", true),
            ("/channels/a.b_c-9/head", true),
            ("/channels/.hidden/head", false),
            ("/channels//head", false),
            ("/channels/a/b/head", false),
            ("/channels/%2e%2e/head", false),
            ("/channels/stable/head/", false),
            ("/channels/stable/log/head", false),
            ("channels/stable/head", false),
        ] {
            assert_eq!(is_head(path), head, "{path}");
            if path.starts_with('/') {
                let parsed = matches!(parse_repo_path(path), Some(RepoPath::Head(_)));
                assert_eq!(parsed, head, "{path}");
            }
        }
    }

    #[test]
    fn object_paths_parse_as_the_layout_has_them() {
        let d = Digest::of(b"x");
        let path = format!("/{}", object_path(&d));
        assert_eq!(object_target(&path), Some(d));
        assert_eq!(parse_repo_path(&path), Some(RepoPath::Object(d)));
        let hex = d.to_hex();
        for bad in [
            format!("/objects/{}/{hex}", &hex[1..3]),
            format!("/objects/{}/{}", &hex[..2], hex.to_uppercase()),
            format!("/objects/{}/{}", &hex[..2], &hex[..63]),
            format!("/objects/{}/{hex}0", &hex[..2]),
            format!("/objects/{}x/{hex}", &hex[..2]),
            format!("/objects/{hex}"),
        ] {
            assert_eq!(object_target(&bad), None, "{bad}");
            assert!(
                !matches!(parse_repo_path(&bad), Some(RepoPath::Object(_))),
                "{bad}"
            );
        }
    }
}

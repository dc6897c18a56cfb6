//! `ferry-server serve`: the repository as static files over HTTP/1.1 and h2c, or
//! over HTTPS (HTTP/1.1 and h2 by ALPN) with `--tls-cert`/`--tls-key` ([`tls`]).
//!
//! The server adds nothing a plain static web server could not: any server that maps
//! the repository's files to URLs, with Range support, is an equivalent mirror. This
//! one adds the guard rails: only layout paths are served ([`routes`]), ETags and cache
//! lifetimes fit immutable objects and short-lived heads, connections are capped, and
//! shutdown is graceful.
//!
//! Two HTTP engines share the routing and the rules: on plain connections, GET and
//! HEAD of a folder repository's files — nearly every request agents and mirrors make
//! — are answered by a small HTTP/1.x fast path ([`fast`]: file bodies by `sendfile`,
//! as nginx does); everything else (other paths and methods, request bodies, HTTP/2,
//! TLS, a bucket) by hyper, which takes over a plain connection at its first request
//! the fast path does not answer. Heads and key lists are kept in memory while
//! unchanged and objects kept open ([`files`]).
//!
//! Connection cap: every connection holds a semaphore permit, released when it ends,
//! which also gives shutdown its "all connections done" signal: holding every permit.
//! When no permit is free, the accept loop makes room by shedding the connection idle
//! longest ([`conns`]), so idle or slow clients cannot lock others out; only when every
//! connection has a request in flight does it wait, with one accepted socket at most,
//! while later clients wait in the kernel's backlog. Idle, slow-header and stalled
//! connections are also closed by their own timeouts ([`conns`]).
//!
//! File descriptors: `serve` raises its soft `RLIMIT_NOFILE` to the hard limit at start
//! (as nginx-style servers do) and warns when that is still too low for
//! `--max-connections` (one descriptor per connection, one accepted beyond the cap,
//! a few per request for the files it serves, and the objects kept open, at most
//! [`files::OPEN_MAX`] per core).
//!
//! The access log is reopened on SIGHUP, so logrotate can move it away.

pub mod access_log;
pub mod conns;
pub mod fast;
pub mod file_body;
pub mod files;
pub mod fleet;
pub mod health;
pub mod metrics;
pub mod ondemand;
pub mod page;
pub mod quota;
pub mod range;
pub mod refresh;
pub mod routes;
pub mod tls;
pub mod upload;

use std::convert::Infallible;
use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::header::{CONTENT_LENGTH, RANGE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

use crate::error::{Error, Result, io_err};
use crate::store::Store;
use access_log::{AccessLog, LogLine};
use metrics::Metrics;
use routes::Body;

/// How long in-flight connections get to finish after a shutdown signal.
pub const GRACE: Duration = Duration::from_secs(10);
/// A client must send its request headers within this time (slowloris guard: an idle
/// socket would otherwise hold a connection permit forever). In hyper 1.x this timer
/// also runs while an HTTP/1.1 keep-alive connection waits for its next request.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// The server's keep-alive idle timeout, HTTP/1.1 and HTTP/2 alike (see [`conns`]).
pub const KEEP_ALIVE_IDLE: Duration = conns::IDLE_TIMEOUT;
/// Requests at once on one HTTP/2 connection.
const H2_MAX_STREAMS: u32 = 64;
/// How long a connection asked to close (idle, shed, shutdown) may take to finish.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// What to serve, where.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub store: Store,
    pub listen: SocketAddr,
    pub max_connections: u32,
    pub access_log: Option<PathBuf>,
}

/// Shared by every connection.
pub struct State {
    pub store: Store,
    pub log: Option<AccessLog>,
    pub metrics: Metrics,
    /// The upload API (`PUT`), when `--upload-token-file` enabled it.
    pub upload: Option<upload::Uploads>,
    pub conns: Arc<conns::Conns>,
    /// A folder repository's heads and open objects ([`files`]); `None` for a bucket.
    pub files: Option<files::Files>,
    /// The fleet API (`/v1/`), when `--fleet-db` and its token files enabled it.
    pub fleet: Option<Arc<fleet::Fleet>>,
    /// Diffs made on request (`GET /diffs/..`), when `--diffs-on-demand` enabled them.
    pub on_demand: Option<ondemand::OnDemand>,
}

/// A bound, not yet running server.
pub struct Server {
    listener: TcpListener,
    state: Arc<State>,
    max_connections: u32,
    tls: Option<TlsAcceptor>,
    /// Where connections are served: the runtime `run` is called on, or these.
    workers: Vec<tokio::runtime::Handle>,
}

impl Server {
    /// Checks the repository and binds the listening socket.
    pub async fn bind(opts: &ServeOptions) -> Result<Server> {
        if let Store::Local(repo) = &opts.store
            && !repo.root().is_dir()
        {
            return Err(io_err("serve", repo.root())(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "not a directory",
            )));
        }
        let log = opts
            .access_log
            .as_deref()
            .map(AccessLog::open)
            .transpose()?;
        let listener =
            listen(opts.listen, opts.max_connections).map_err(|source| Error::Listen {
                addr: opts.listen,
                source,
            })?;
        Ok(Server {
            listener,
            state: Arc::new(State {
                store: opts.store.clone(),
                log,
                metrics: Metrics::new(),
                upload: None,
                conns: Arc::default(),
                files: match &opts.store {
                    Store::Local(repo) => Some(files::Files::new(repo.root())),
                    Store::Object(_) => None,
                },
                fleet: None,
                on_demand: None,
            }),
            max_connections: opts.max_connections.max(1),
            tls: None,
            workers: Vec::new(),
        })
    }

    /// Accepts uploads (`PUT`, see [`upload`]) besides serving the repository.
    #[must_use]
    pub fn with_uploads(mut self, uploads: upload::Uploads) -> Server {
        // The state is shared only once `run` starts, so it can still be changed here.
        if let Some(state) = Arc::get_mut(&mut self.state) {
            state.upload = Some(uploads);
        }
        self
    }

    /// Answers the fleet API (`/v1/`, see [`fleet`]) besides serving the repository.
    #[must_use]
    pub fn with_fleet(mut self, fleet: Arc<fleet::Fleet>) -> Server {
        if let Some(state) = Arc::get_mut(&mut self.state) {
            state.fleet = Some(fleet);
        }
        self
    }

    /// Makes diffs on request (`GET /diffs/<base>/<target>`, see [`ondemand`]), and
    /// says so on every channel head it serves. A folder repository only.
    #[must_use]
    pub fn with_on_demand(mut self, opts: ondemand::Options) -> Server {
        if let Some(state) = Arc::get_mut(&mut self.state)
            && let Store::Local(repo) = &state.store
        {
            state.on_demand = Some(ondemand::OnDemand::new(repo.clone(), opts));
        }
        self
    }

    /// Serves connections on these runtimes (in turn) rather than the one `run` runs
    /// on: one single-threaded runtime per core, as `run_cli` does, keeps each
    /// connection on one thread with its own `epoll`, as nginx's workers do.
    #[must_use]
    pub fn with_workers(mut self, workers: Vec<tokio::runtime::Handle>) -> Server {
        self.workers = workers;
        self
    }

    /// Serves HTTPS: every accepted connection first completes a TLS handshake.
    #[must_use]
    pub fn with_tls(mut self, acceptor: TlsAcceptor) -> Server {
        self.tls = Some(acceptor);
        self
    }

    /// The bound address (the real port when port 0 was asked for).
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener.local_addr().map_err(io_err(
            "read the address of",
            std::path::Path::new("the listener"),
        ))
    }

    /// Serves until `shutdown` completes, then drains connections for up to [`GRACE`].
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<()> {
        let permits = Arc::new(Semaphore::new(self.max_connections as usize));
        let (stop_tx, stop_rx) = watch::channel(false);
        let sweeper = tokio::spawn(self.state.conns.clone().sweeper());
        let mut next_worker = 0usize;
        tokio::pin!(shutdown);
        'accept: loop {
            let (stream, peer) = tokio::select! {
                r = self.listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        // Usually EMFILE or a connection reset before accept: back off
                        // briefly instead of spinning, and keep serving.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let permit = match permits.clone().try_acquire_owned() {
                Ok(p) => p,
                // Every slot taken: make room by closing the connection idle longest,
                // and wait for its slot (or any other) to come free.
                Err(_) => loop {
                    let shed = self.state.conns.shed_oldest_idle();
                    if shed {
                        self.state.metrics.shed();
                    }
                    let wait = if shed { CLOSE_GRACE } else { conns::TICK };
                    tokio::select! {
                        p = permits.clone().acquire_owned() => match p {
                            Ok(p) => break p,
                            Err(_) => break 'accept, // never closed; kept total
                        },
                        () = tokio::time::sleep(wait) => {}
                        () = &mut shutdown => break 'accept,
                    }
                },
            };
            self.state.metrics.connection();
            tracing::debug!(%peer, "connection");
            let state = self.state.clone();
            let mut stop = stop_rx.clone();
            let tls = self.tls.clone();
            let reg = state.conns.register();
            let worker = match self.workers.len() {
                0 => None,
                n => Some(&self.workers[next_worker % n]),
            };
            next_worker = next_worker.wrapping_add(1);
            // Moved to the worker's runtime: registered with its `epoll` there.
            let stream = match worker {
                None => Accepted::Here(stream),
                Some(_) => match stream.into_std() {
                    Ok(s) => Accepted::Moved(s),
                    Err(e) => {
                        tracing::warn!(%peer, "cannot hand a connection to a worker: {e}");
                        continue;
                    }
                },
            };
            let connection = async move {
                let _permit = permit;
                let stream = match stream {
                    Accepted::Here(s) => s,
                    Accepted::Moved(s) => match tokio::net::TcpStream::from_std(s) {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::warn!(%peer, "cannot serve a connection: {e}");
                            return;
                        }
                    },
                };
                let conn = reg.conn.clone();
                // As nginx's `tcp_nodelay on`: a response's last segment never waits
                // for an acknowledgement.
                let _ = stream.set_nodelay(true);
                match tls {
                    // Simple GET/HEAD requests of repository files are answered by
                    // [`fast`], the rest (and HTTP/2) by hyper.
                    None => fast::serve(stream, state, stop, peer, conn).await,
                    Some(acceptor) => {
                        let stream = conns::Watched::new(stream, conn.clone());
                        let handshake = tokio::select! {
                            s = tls::handshake(&acceptor, stream, &mut stop, peer) => s,
                            () = conn.shed.notified() => None,
                        };
                        if let Some(stream) = handshake {
                            serve_connection(stream, state, stop, peer, conn).await;
                        }
                    }
                }
                drop(reg);
            };
            match worker {
                Some(runtime) => drop(runtime.spawn(connection)),
                None => drop(tokio::spawn(connection)),
            }
        }

        tracing::info!("shutting down: draining connections");
        drop(self.listener);
        let _ = stop_tx.send(true);
        self.state.conns.stop_all();
        match tokio::time::timeout(GRACE, permits.acquire_many(self.max_connections)).await {
            Ok(_) => tracing::info!("all connections closed"),
            Err(_) => tracing::warn!(
                "connections still open after {}s; exiting anyway",
                GRACE.as_secs()
            ),
        }
        sweeper.abort();
        Ok(())
    }
}

/// The listening socket, with room in its accept queue for a burst of
/// `max_connections` new clients (at least nginx's 511; the kernel caps it at
/// `net.core.somaxconn`). The 128 of `TcpListener::bind` overflowed when 1,000
/// clients connected at once: the kernel then answers with SYN cookies, and those
/// connections keep a 1,460-byte MSS for their whole life (on loopback, 45 segments
/// for a 64 KiB range instead of one), or wait a second for a SYN retransmit.
fn listen(addr: SocketAddr, max_connections: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As std's and tokio's `bind` do on Unix: a restart finds the port free at once.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(max_connections.max(511))
}

/// Serves HTTP/1.1 or HTTP/2 on one accepted (and maybe TLS-wrapped) connection until
/// it ends, or shuts it down gracefully once `stop` turns true, it is shed to make
/// room, or it is idle; drops it when it stalls ([`conns`]).
async fn serve_connection<I>(
    io: I,
    state: Arc<State>,
    mut stop: watch::Receiver<bool>,
    peer: SocketAddr,
    info: Arc<conns::Conn>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let requests = info.clone();
    let service = service_fn(move |req| {
        let state = state.clone();
        let in_flight = requests.begin();
        async move {
            let resp = answer(&state, req).await;
            // The request stays in flight until its body is sent (or dropped).
            Ok::<_, Infallible>(resp.map(|body| {
                Guarded {
                    body,
                    _in_flight: in_flight,
                }
                .boxed()
            }))
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    // No keep-alive pings: an idle HTTP/2 connection is closed (GOAWAY) by the idle
    // rule instead, which a client answering pings could not be.
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_STREAMS);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let why = loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, "connection ended: {e}");
                }
                return;
            }
            _ = async { stop.wait_for(|s| *s).await.map(|_| ()) } => break "shutdown",
            // Idle by definition (no request in flight): dropping it loses nothing,
            // and a slot is needed now.
            () = info.shed.notified() => {
                tracing::debug!(%peer, "connection closed to make room");
                return;
            }
            () = info.rules.notified() => match info.verdict() {
                conns::Verdict::Keep => {}
                conns::Verdict::Idle => break "idle",
                conns::Verdict::Stalled => {
                    tracing::debug!(%peer, "connection dropped: no progress for {}s", conns::STALL_TIMEOUT.as_secs());
                    return;
                }
            },
        }
    };
    tracing::debug!(%peer, "closing connection: {why}");
    conn.as_mut().graceful_shutdown();
    let grace = if why == "shutdown" {
        GRACE
    } else {
        CLOSE_GRACE
    };
    match tokio::time::timeout(grace, conn).await {
        Ok(Err(e)) => tracing::debug!(%peer, "connection ended: {e}"),
        Ok(Ok(())) => {}
        Err(_) => tracing::debug!(%peer, "connection dropped: it did not close in time"),
    }
}

/// An accepted socket, on the accept loop's runtime or ready to move to a worker's.
enum Accepted {
    Here(tokio::net::TcpStream),
    Moved(std::net::TcpStream),
}

/// A response body that keeps its request counted as in flight until it is dropped.
struct Guarded {
    body: Body,
    _in_flight: conns::InFlight,
}

impl hyper::body::Body for Guarded {
    type Data = bytes::Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<std::result::Result<hyper::body::Frame<Self::Data>, Self::Error>>>
    {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// Routes a request, then logs and counts the response.
async fn answer(state: &State, req: Request<Incoming>) -> Response<Body> {
    // GET and HEAD bodies are ignored; dropping it keeps the request `Sync`. Only an
    // upload (`PUT`, when enabled) reads its body.
    let (parts, body) = req.into_parts();
    let req = Request::from_parts(parts, ());
    let (resp, kind) = match (&state.upload, &state.fleet) {
        (_, Some(fleet)) if fleet::api::owns(req.uri().path()) => (
            fleet::api::handle(fleet, &state.metrics, &req, body).await,
            metrics::Kind::other,
        ),
        (Some(uploads), _) if req.method() == Method::PUT => (
            upload::handle(&state.store, uploads, &req, body).await,
            metrics::Kind::other,
        ),
        _ => routes::handle(state, &req).await,
    };
    let status = resp.status();
    let bytes = if req.method() == Method::HEAD || status == StatusCode::NOT_MODIFIED {
        0
    } else {
        resp.headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .unwrap_or(0)
    };
    state.metrics.record(kind, status.as_u16(), bytes);
    let range = req.headers().get(RANGE).and_then(|v| v.to_str().ok());
    tracing::debug!(method = %req.method(), path = req.uri().path(), status = status.as_u16(), bytes, "request");
    if let Some(log) = &state.log {
        log.record(&LogLine {
            method: req.method().as_str(),
            path: req.uri().path(),
            status: status.as_u16(),
            bytes,
            range,
        });
    }
    resp
}

/// The `serve` command: binds, prints `listening on http://ADDR` (`https://ADDR` with
/// `tls`), serves until SIGTERM or Ctrl-C.
pub fn run_cli(
    opts: &ServeOptions,
    tls: Option<&tls::TlsFiles>,
    uploads: Option<upload::Uploads>,
    refresher: Option<refresh::Refresher>,
    fleet: Option<fleet::Fleet>,
    on_demand: Option<ondemand::Options>,
) -> Result<()> {
    // Certificate problems are reported before anything is bound.
    let acceptor = tls.map(tls::acceptor).transpose()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(io_err("start", std::path::Path::new("the async runtime")))?;
    let workers = connection_workers()?;
    let handles = workers.iter().map(|w| w.handle().clone()).collect();
    let result = rt.block_on(async {
        // Signal handlers are installed before the address is announced, so a test
        // that signals right after reading the line cannot kill the process unhandled.
        let shutdown = shutdown_signal()?;
        raise_fd_limit(opts.max_connections);
        let mut server = Server::bind(opts).await?.with_workers(handles);
        let scheme = if acceptor.is_some() { "https" } else { "http" };
        if let Some(acceptor) = acceptor {
            server = server.with_tls(acceptor);
        }
        if let Some(uploads) = uploads {
            server = server.with_uploads(uploads);
        }
        if let Some(opts) = on_demand {
            server = server.with_on_demand(opts);
        }
        let fleet = fleet.map(Arc::new);
        if let Some(fleet) = &fleet {
            server = server.with_fleet(fleet.clone());
        }
        // After the `with_` calls, which need the state unshared.
        reopen_log_on_sighup(server.state.clone())?;
        let addr = server.local_addr()?;
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening on {scheme}://{addr}")
            .and_then(|()| stdout.flush())
            .map_err(io_err("write", std::path::Path::new("stdout")))?;
        drop(stdout);
        tracing::info!(%addr, repo = opts.store.name(), "serving");
        let refreshing = refresher.map(|r| tokio::spawn(r.run()));
        let pruning = fleet.map(|f| tokio::spawn(f.prune_loop()));
        let result = server.run(shutdown).await;
        for task in [refreshing, pruning].into_iter().flatten() {
            task.abort();
        }
        result
    });
    // Connections still open after the grace period are dropped with their runtime.
    for worker in workers {
        worker.shutdown_background();
    }
    result
}

/// One runtime per core for connections ([`Server::with_workers`]), each with one
/// worker thread of its own. (A multi-thread runtime of one worker rather than a
/// current-thread one: a task woken by another runs next — its LIFO slot — which
/// HTTP/2's connection and stream tasks, waking each other, need: 30% more requests
/// per second at 1,000 connections.)
fn connection_workers() -> Result<Vec<tokio::runtime::Runtime>> {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    (0..n)
        .map(|i| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name(format!("serve-{i}"))
                .enable_all()
                .build()
                .map_err(io_err(
                    "start",
                    std::path::Path::new("a connection runtime"),
                ))
        })
        .collect()
}

/// Raises the soft limit on open files to the hard limit, and warns when even that is
/// too low for `max_connections`.
fn raise_fd_limit(max_connections: u32) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current < lim.maximum {
        lim.current = lim.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, lim) {
            tracing::warn!("cannot raise the open-files limit: {e}");
        }
        lim = getrlimit(Resource::Nofile);
    }
    // Per connection one socket, plus the files a request has open, plus a margin
    // for the listener, the log and the runtime, plus the objects kept open.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let needed = u64::from(max_connections) * 2 + 64 + files::OPEN_MAX as u64 * threads;
    match lim.current {
        Some(have) if have < needed => tracing::warn!(
            "the open-files limit ({have}) is low for --max-connections {max_connections} \
             (about {needed} wanted): raise `ulimit -n` or lower --max-connections"
        ),
        _ => {}
    }
}

/// Reopens the access log on every SIGHUP (after logrotate moved it away).
fn reopen_log_on_sighup(state: Arc<State>) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup())
        .map_err(io_err("install", std::path::Path::new("signal handlers")))?;
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            if let Some(log) = &state.log {
                match log.reopen() {
                    Ok(()) => tracing::info!("SIGHUP: access log reopened"),
                    Err(e) => tracing::warn!("SIGHUP: {e}; still writing to the old file"),
                }
            }
        }
    });
    Ok(())
}

/// A future completing on the first SIGTERM or SIGINT.
fn shutdown_signal() -> Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let err = io_err("install", std::path::Path::new("signal handlers"));
    let mut term = signal(SignalKind::terminate()).map_err(err)?;
    let mut int = signal(SignalKind::interrupt())
        .map_err(io_err("install", std::path::Path::new("signal handlers")))?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    })
}

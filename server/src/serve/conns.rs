//! Connection slots under hostile clients.
//!
//! `--max-connections` bounds the connections served at once. Clients that connect
//! and then do nothing (or send a request head that never ends, or stop reading a
//! response) must not hold those slots forever, and a full server must not refuse
//! new clients forever either. So every connection is registered here with:
//!
//! - the number of its requests *in flight* (from the moment its head was read until
//!   its response body was sent or dropped), and since when it has had none;
//! - the time its socket last moved a byte, in either direction ([`Watched`]).
//!
//! Rules, checked for every connection once a [`TICK`] by one sweeper task
//! ([`Conns::sweep`]), which wakes a connection's own task (`serve_connection` in
//! `serve/mod.rs`, or [`super::fast`]) when one applies — no connection keeps a timer
//! of its own (1,000 connections ticking each second woke the runtime, and the
//! machine, a thousand times a second):
//!
//! - **Idle** ([`IDLE_TIMEOUT`]): no request in flight for that long (a keep-alive
//!   connection between requests, HTTP/1.1 or HTTP/2, or one still sending its first
//!   request head) and the connection is closed (gracefully: HTTP/2 gets a GOAWAY).
//!   HTTP/1.1 request heads also have hyper's `header_read_timeout`.
//! - **Stalled** ([`STALL_TIMEOUT`]): a request in flight, yet no byte moved for that
//!   long (the client stopped reading its response, or stopped sending its upload)
//!   and the connection is dropped. This is the write timeout.
//! - **Shedding**: when every slot is taken and another client connects, the
//!   connection that has been idle longest is closed to make room. Idle means no
//!   request in flight, which includes connections still sending a request head: a
//!   slow-loris client is shed first, a download in progress never. Only when every
//!   slot serves a request in flight does the new client wait (in the accept loop,
//!   holding one extra socket at most) for one to end.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};

use futures_util::task::AtomicWaker;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// A connection without a request in flight for this long is closed. This is the
/// server's keep-alive idle timeout; clients keep pooled connections for less
/// (the agent and the publisher: 15 s).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// A connection with a request in flight that moves no byte for this long is dropped.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a connection checks the rules above.
pub const TICK: Duration = Duration::from_secs(1);

/// Every open connection.
pub struct Conns {
    epoch: Instant,
    next_id: AtomicU64,
    live: Mutex<HashMap<u64, Arc<Conn>>>,
}

impl Default for Conns {
    fn default() -> Self {
        Conns {
            epoch: Instant::now(),
            next_id: AtomicU64::new(0),
            live: Mutex::default(),
        }
    }
}

/// One open connection.
pub struct Conn {
    id: u64,
    epoch: Instant,
    in_flight: AtomicU32,
    /// Milliseconds since `epoch` when the last request ended (or the connection opened).
    idle_since: AtomicU64,
    /// Milliseconds since `epoch` when the socket last moved a byte.
    last_io: AtomicU64,
    /// Set once this connection was chosen to make room.
    shedding: AtomicBool,
    /// Woken when it is chosen.
    pub shed: Notify,
    /// Woken when the idle or stall rule says it must end (see [`Conn::verdict`]).
    pub rules: Notify,
    /// The same three events (shed, rules, shutdown) for the HTTP/1.x fast path, as
    /// bits ([`SHED`], [`RULES`], [`STOP`]) and one waker: checking them costs its
    /// task two atomic operations per request, not three futures' polls.
    signals: AtomicU8,
    task: AtomicWaker,
}

/// `Conn::signals`: chosen to make room.
pub const SHED: u8 = 1;
/// `Conn::signals`: the idle or stall rule may apply.
pub const RULES: u8 = 2;
/// `Conn::signals`: the server is shutting down.
pub const STOP: u8 = 4;

impl Conns {
    /// Registers a new connection; it is removed when the returned guard drops.
    pub fn register(self: &Arc<Self>) -> Registered {
        let now = ms(self.epoch);
        let conn = Arc::new(Conn {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            epoch: self.epoch,
            in_flight: AtomicU32::new(0),
            idle_since: AtomicU64::new(now),
            last_io: AtomicU64::new(now),
            shedding: AtomicBool::new(false),
            shed: Notify::new(),
            rules: Notify::new(),
            signals: AtomicU8::new(0),
            task: AtomicWaker::new(),
        });
        self.lock().insert(conn.id, conn.clone());
        Registered {
            conns: self.clone(),
            conn,
        }
    }

    /// Asks the connection that has been idle longest to close. Returns whether there
    /// was one (none when every connection has a request in flight).
    pub fn shed_oldest_idle(&self) -> bool {
        let live = self.lock();
        let victim = live
            .values()
            .filter(|c| c.in_flight.load(Ordering::SeqCst) == 0)
            .filter(|c| !c.shedding.load(Ordering::SeqCst))
            .min_by_key(|c| c.idle_since.load(Ordering::SeqCst));
        match victim {
            Some(c) => {
                c.shedding.store(true, Ordering::SeqCst);
                c.shed.notify_one();
                c.raise(SHED);
                true
            }
            None => false,
        }
    }

    /// Wakes every connection that a rule says must end (idle or stalled).
    pub fn sweep(&self) {
        let now = ms(self.epoch);
        for c in self.lock().values() {
            if c.verdict_at(now, IDLE_TIMEOUT, STALL_TIMEOUT) != Verdict::Keep {
                c.rules.notify_one();
                c.raise(RULES);
            }
        }
    }

    /// Tells every connection's fast path that the server is shutting down (hyper's
    /// connections learn it from the shutdown channel).
    pub fn stop_all(&self) {
        for c in self.lock().values() {
            c.raise(STOP);
        }
    }

    /// Runs [`Conns::sweep`] every [`TICK`], for ever.
    pub async fn sweeper(self: Arc<Self>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.sweep();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Conn>>> {
        // A poisoned map only means a panic while it was held; the map is intact.
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A registered connection; unregisters it on drop.
pub struct Registered {
    conns: Arc<Conns>,
    pub conn: Arc<Conn>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.conns.lock().remove(&self.conn.id);
    }
}

/// What a connection's rules say now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Keep,
    /// No request in flight for [`IDLE_TIMEOUT`].
    Idle,
    /// A request in flight and no byte moved for [`STALL_TIMEOUT`].
    Stalled,
}

impl Conn {
    /// A request starts; it ends when the returned guard drops.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(self.clone())
    }

    /// The same, held by reference (for a request answered before the connection's
    /// task goes on: the fast path's).
    pub fn begin_here(&self) -> InFlightHere<'_> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlightHere(self)
    }

    fn end(&self) {
        self.idle_since.store(ms(self.epoch), Ordering::SeqCst);
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }

    fn raise(&self, signal: u8) {
        self.signals.fetch_or(signal, Ordering::SeqCst);
        self.task.wake();
    }

    /// The signals raised (see `Conn::signals`), with `cx`'s task woken at the next
    /// one; [`RULES`] is taken (cleared) as it is read, the others stay raised.
    pub fn poll_signals(&self, cx: &std::task::Context<'_>) -> u8 {
        self.task.register(cx.waker());
        let raised = self.signals.load(Ordering::SeqCst);
        if raised & RULES != 0 {
            self.signals.fetch_and(!RULES, Ordering::SeqCst);
        }
        raised
    }

    /// Whether the server is shutting down.
    pub fn stopping(&self) -> bool {
        self.signals.load(Ordering::Relaxed) & STOP != 0
    }

    /// The socket moved a byte.
    pub fn touch(&self) {
        self.last_io.store(ms(self.epoch), Ordering::Relaxed);
    }

    pub fn verdict(&self) -> Verdict {
        self.verdict_at(ms(self.epoch), IDLE_TIMEOUT, STALL_TIMEOUT)
    }

    fn verdict_at(&self, now: u64, idle: Duration, stall: Duration) -> Verdict {
        let since = |t: &AtomicU64| now.saturating_sub(t.load(Ordering::SeqCst));
        if self.in_flight.load(Ordering::SeqCst) == 0 {
            if since(&self.idle_since) >= idle.as_millis() as u64 {
                return Verdict::Idle;
            }
        } else if since(&self.last_io) >= stall.as_millis() as u64 {
            return Verdict::Stalled;
        }
        Verdict::Keep
    }
}

/// A request in flight on a connection.
pub struct InFlight(Arc<Conn>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// [`InFlight`], by reference.
pub struct InFlightHere<'a>(&'a Conn);

impl Drop for InFlightHere<'_> {
    fn drop(&mut self) {
        self.0.end();
    }
}

fn ms(epoch: Instant) -> u64 {
    epoch.elapsed().as_millis() as u64
}

/// A connection's socket: records when it last moved a byte.
pub struct Watched<I = TcpStream> {
    io: I,
    conn: Arc<Conn>,
}

impl<I> Watched<I> {
    pub fn new(io: I, conn: Arc<Conn>) -> Self {
        Watched { io, conn }
    }

    fn wrote(&self, r: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.conn.touch();
        }
        r
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.conn.touch();
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write(cx, buf);
        this.wrote(r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.wrote(r)
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

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn idle_and_stalled_connections_are_told_apart() {
        let conns = Arc::new(Conns::default());
        let r = conns.register();
        let c = &r.conn;
        assert_eq!(c.verdict_at(0, 30 * S, 60 * S), Verdict::Keep);
        assert_eq!(c.verdict_at(30_000, 30 * S, 60 * S), Verdict::Idle);
        // A request in flight is never idle, only stalled when its socket is quiet.
        let req = c.begin();
        assert_eq!(c.verdict_at(59_000, 30 * S, 60 * S), Verdict::Keep);
        assert_eq!(c.verdict_at(60_000, 30 * S, 60 * S), Verdict::Stalled);
        drop(req);
        assert_eq!(c.in_flight.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn the_oldest_idle_connection_is_shed_never_a_busy_one() {
        let conns = Arc::new(Conns::default());
        let busy = conns.register();
        let _req = busy.conn.begin();
        let old = conns.register();
        let young = conns.register();
        young.conn.idle_since.store(10_000, Ordering::SeqCst);
        old.conn.idle_since.store(5_000, Ordering::SeqCst);
        busy.conn.idle_since.store(0, Ordering::SeqCst);
        assert!(conns.shed_oldest_idle());
        assert!(old.conn.shedding.load(Ordering::SeqCst));
        assert!(conns.shed_oldest_idle());
        assert!(young.conn.shedding.load(Ordering::SeqCst));
        assert!(!conns.shed_oldest_idle(), "only a busy one is left");
        assert!(!busy.conn.shedding.load(Ordering::SeqCst));
        drop(old);
        assert_eq!(conns.lock().len(), 2);
    }
}

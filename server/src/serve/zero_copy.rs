//! File bodies sent with `sendfile(2)` on plain HTTP/1.x connections: the bytes go
//! from the page cache to the socket without being read into this process, as nginx's
//! `sendfile on` does. (HTTP/2 and TLS frame or encrypt every byte in user space, so
//! they read the file: [`super::file_body`].)
//!
//! hyper writes whatever body it is given, through the connection's socket wrapper
//! ([`super::conns::Watched`]). So the body given to hyper is a *stand-in*: a
//! [`Bytes`] over [`STAND_IN`], a static block of zeros that is never read or sent,
//! of the body's exact length, and the connection's [`Outbox`] queues what it stands
//! for — which file, from which offset. When hyper hands the socket wrapper a buffer
//! that points into [`STAND_IN`], the wrapper sends that many bytes of the file at the
//! matching offset with `sendfile` instead, and reports them written; hyper advances
//! through the stand-in as through any buffer, never knowing.
//!
//! Why it holds:
//! - hyper's HTTP/1 writer queues body buffers and writes them with `writev`, without
//!   copying, when the connection is set to (`http1().writev(true)`, which `serve`
//!   does); a copy would be the only way for the zeros to reach the socket unnoticed.
//! - HTTP/1 responses on a connection are written one after the other, in order, so
//!   the stand-ins arrive in the order their jobs were queued. Each job checks that
//!   the stand-in's offset is exactly the count it has sent so far; anything else (a
//!   stand-in with no job, or out of step) fails the connection instead of sending
//!   one wrong byte. A job whose body hyper dropped unsent (a connection ending) is
//!   skipped: the queue holds it weakly, the body holds it strongly.
//! - The file is held open by the job until its last byte is sent. A file shorter
//!   than its length said (an object truncated in place) fails the connection mid-body,
//!   as a failed `pread` of a long body does.
//!
//! A response's head is written as it is, then its body with `sendfile` (the socket
//! has `TCP_NODELAY`, as with nginx's `tcp_nodelay on`).

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::stream;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use tokio::io::Interest;
use tokio::net::TcpStream;

use super::file_body::Holds;
use super::routes::Body;

/// The largest body one stand-in covers; a longer one is a stream of stand-ins.
pub const MAX: usize = 4 << 20;

/// Never read, never sent: only its address range matters (zero-initialised, so it
/// takes no memory until touched, and nothing touches it).
static STAND_IN: [u8; MAX] = [0; MAX];

/// The files a connection's stand-ins stand for, in the order hyper writes them.
#[derive(Default)]
pub struct Outbox {
    jobs: Mutex<VecDeque<Weak<Job>>>,
}

/// Bytes `start..start + len` of `file`, of which `sent` have been sent.
struct Job {
    file: Arc<dyn Holds>,
    start: u64,
    len: usize,
    sent: AtomicU64,
}

/// Owns a stand-in: keeps its job alive until hyper drops the body.
struct StandIn(Arc<Job>);

impl AsRef<[u8]> for StandIn {
    fn as_ref(&self) -> &[u8] {
        &STAND_IN[..self.0.len]
    }
}

impl Outbox {
    /// The body for bytes `start..start + count` of `file`, sent with `sendfile`.
    pub fn body<F: Holds>(self: &Arc<Self>, file: Arc<F>, start: u64, count: u64) -> Body {
        let file: Arc<dyn Holds> = file;
        if count <= MAX as u64 {
            let b = self.stand_in(file, start, count as usize);
            return Full::new(b).map_err(|never| match never {}).boxed();
        }
        // Each stand-in is queued when hyper asks for it, so after the ones before it.
        let end = start + count;
        let outbox = self.clone();
        let parts = stream::iter((0..count.div_ceil(MAX as u64)).map(move |i| {
            let at = start + i * MAX as u64;
            let n = (end - at).min(MAX as u64) as usize;
            Ok::<_, io::Error>(Frame::data(outbox.stand_in(file.clone(), at, n)))
        }));
        StreamBody::new(parts).boxed()
    }

    fn stand_in(&self, file: Arc<dyn Holds>, start: u64, len: usize) -> Bytes {
        let job = Arc::new(Job {
            file,
            start,
            len,
            sent: AtomicU64::new(0),
        });
        lock(&self.jobs).push_back(Arc::downgrade(&job));
        Bytes::from_owner(StandIn(job))
    }

    /// The next job, which the stand-in at `offset`, `len` bytes long, must belong to.
    fn next(&self, offset: usize, len: usize) -> io::Result<Arc<Job>> {
        let mut jobs = lock(&self.jobs);
        let job = loop {
            let Some(front) = jobs.front() else {
                return Err(out_of_step());
            };
            match front.upgrade() {
                Some(job) => break job,
                // Its body was dropped unsent.
                None => jobs.pop_front(),
            };
        };
        let sent = job.sent.load(Ordering::Relaxed) as usize;
        if offset != sent || len > job.len - sent {
            return Err(out_of_step());
        }
        Ok(job)
    }

    /// `n` more bytes of `job` were sent.
    fn advance(&self, job: &Arc<Job>, n: usize) {
        let sent = job.sent.fetch_add(n as u64, Ordering::Relaxed) as usize + n;
        if sent == job.len {
            let mut jobs = lock(&self.jobs);
            if jobs
                .front()
                .is_some_and(|f| std::ptr::eq(f.as_ptr(), Arc::as_ptr(job)))
            {
                jobs.pop_front();
            }
        }
    }
}

fn out_of_step() -> io::Error {
    io::Error::other("a sendfile stand-in out of step with its connection's queue")
}

/// Where `buf` starts within [`STAND_IN`], if it is (part of) a stand-in.
fn stand_in_offset(buf: &[u8]) -> Option<usize> {
    let base = STAND_IN.as_ptr() as usize;
    let at = buf.as_ptr() as usize;
    (!buf.is_empty() && at >= base && at < base + MAX).then(|| at - base)
}

/// Writes `bufs` to `tcp` when they hold a stand-in (`None` when they do not: a
/// plain write then). One call sends either the buffers before the first stand-in
/// (a response's head), or (part of) that stand-in, with `sendfile`.
pub fn poll_write(
    outbox: Option<&Outbox>,
    tcp: &TcpStream,
    cx: &mut Context<'_>,
    bufs: &[io::IoSlice<'_>],
) -> Option<Poll<io::Result<usize>>> {
    let first = bufs.iter().position(|b| stand_in_offset(b).is_some())?;
    let Some(outbox) = outbox else {
        return Some(Poll::Ready(Err(out_of_step())));
    };
    if first > 0 {
        // Not held back with MSG_MORE or TCP_CORK for the body: on loopback that
        // halved the requests per second (a corked tail waits on acknowledgements;
        // nginx's tcp_nopush shows the same 40 ms stalls at 10 connections).
        return Some(write_head(tcp, cx, &bufs[..first]));
    }
    Some(send_stand_in(outbox, tcp, cx, &bufs[0]))
}

fn write_head(
    tcp: &TcpStream,
    cx: &mut Context<'_>,
    bufs: &[io::IoSlice<'_>],
) -> Poll<io::Result<usize>> {
    loop {
        std::task::ready!(tcp.poll_write_ready(cx))?;
        match tcp.try_write_vectored(bufs) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            r => return Poll::Ready(r),
        }
    }
}

fn send_stand_in(
    outbox: &Outbox,
    tcp: &TcpStream,
    cx: &mut Context<'_>,
    buf: &[u8],
) -> Poll<io::Result<usize>> {
    let offset = stand_in_offset(buf).unwrap_or(usize::MAX);
    let job = match outbox.next(offset, buf.len()) {
        Ok(j) => j,
        Err(e) => return Poll::Ready(Err(e)),
    };
    let n = std::task::ready!(poll_io(tcp, cx, || {
        let mut at = job.start + offset as u64;
        Ok(rustix::fs::sendfile(
            tcp,
            job.file.file(),
            Some(&mut at),
            buf.len(),
        )?)
    }))?;
    if n == 0 {
        return Poll::Ready(Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "a served file is shorter than its length said",
        )));
    }
    outbox.advance(&job, n);
    Poll::Ready(Ok(n))
}

/// Runs the non-blocking socket call `f` (a `sendfile`) once the socket is writable,
/// until it does not find it full.
fn poll_io(
    tcp: &TcpStream,
    cx: &mut Context<'_>,
    mut f: impl FnMut() -> io::Result<usize>,
) -> Poll<io::Result<usize>> {
    loop {
        std::task::ready!(tcp.poll_write_ready(cx))?;
        match tcp.try_io(Interest::WRITABLE, &mut f) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            r => return Poll::Ready(r),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned queue only means a panic while it was held; it is still consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

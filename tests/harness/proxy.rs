//! A fault-injecting HTTP/1.1 proxy in front of a real server.
//!
//! It forwards one request per connection (it forces `Connection: close` both ways;
//! request bodies with a `Content-Length` are forwarded too), counts requests, and when
//! armed:
//! - stalls the first ranged (206) response after sending its headers and a given
//!   number of body bytes, then reports that it has stalled. A test can then kill the
//!   client at a known point of a download instead of guessing with a sleep;
//! - resets connections ([`FaultProxy::arm_resets`]): every Nth request gets a TCP
//!   RST instead of an answer, either before it reaches the server or after the
//!   server handled it (the answer is lost), or half-way through the response body.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct FaultProxy {
    pub url: String,
    addr: std::net::SocketAddr,
    shared: Arc<Shared>,
    stalled: Receiver<u64>,
}

/// Where a reset request is cut off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reset {
    /// Before forwarding: the server never sees the request.
    BeforeForward,
    /// After the server answered: it handled the request, the client gets no answer.
    AfterForward,
    /// After the response head and half of its body.
    MidBody,
}

/// The armed resets.
#[derive(Clone, Copy, Debug)]
struct Resets {
    /// Reset request number n (counted from arming, from 1) when n % every == 0.
    every: u64,
    /// Resets still to do.
    left: u64,
    /// Only requests whose head contains this (compared in lower case).
    only: &'static str,
    how: Reset,
    /// Matching requests seen since arming.
    seen: u64,
}

struct Shared {
    upstream: String,
    resets: Mutex<Option<Resets>>,
    /// Resets done, as (request line, how).
    reset_log: Mutex<Vec<(String, Reset)>>,
    stop: AtomicBool,
    /// Stall the next 206 response after this many body bytes (u64::MAX = disarmed).
    stall_after: AtomicU64,
    /// Lets a stalled response send the rest of its body.
    release: AtomicBool,
    notify: Mutex<Sender<u64>>,
    requests: Mutex<Vec<String>>,
    /// Whole request heads (request line and headers), in arrival order.
    heads: Mutex<Vec<String>>,
}

impl FaultProxy {
    /// Proxies to `upstream`, e.g. `127.0.0.1:8080`.
    pub fn start(upstream_url: &str) -> FaultProxy {
        let upstream = upstream_url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let (tx, rx) = channel();
        let shared = Arc::new(Shared {
            upstream,
            resets: Mutex::new(None),
            reset_log: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            stall_after: AtomicU64::new(u64::MAX),
            release: AtomicBool::new(false),
            notify: Mutex::new(tx),
            requests: Mutex::new(Vec::new()),
            heads: Mutex::new(Vec::new()),
        });
        let s = shared.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let s = s.clone();
                std::thread::spawn(move || {
                    let _ = serve(conn, &s);
                });
            }
        });
        FaultProxy {
            url: format!("http://{addr}"),
            addr,
            shared,
            stalled: rx,
        }
    }

    /// Stall the next ranged response after `bytes` body bytes.
    pub fn arm_stall(&self, bytes: u64) {
        self.shared.stall_after.store(bytes, Ordering::SeqCst);
    }

    pub fn disarm(&self) {
        self.shared.stall_after.store(u64::MAX, Ordering::SeqCst);
    }

    /// Lets a stalled response go on: the rest of its body is sent.
    pub fn release_stall(&self) {
        self.shared.release.store(true, Ordering::SeqCst);
    }

    /// Waits until a response has stalled; returns the body bytes sent before it.
    pub fn wait_stalled(&self, limit: Duration) -> u64 {
        self.stalled
            .recv_timeout(limit)
            .expect("the proxy never stalled a ranged download")
    }

    /// Resets every `every`th request whose head contains `only` in any case (e.g.
    /// `"HEAD "`, `"/channels/"`, `"range: bytes="`, or `""` for all), `count` times
    /// in all, cutting it off as `how` says.
    pub fn arm_resets(&self, every: u64, count: u64, only: &'static str, how: Reset) {
        *self.shared.resets.lock().expect("lock") = Some(Resets {
            every: every.max(1),
            left: count,
            only,
            how,
            seen: 0,
        });
    }

    /// The resets done so far: the request line and where it was cut.
    pub fn resets(&self) -> Vec<(String, Reset)> {
        self.shared.reset_log.lock().expect("lock").clone()
    }

    /// Request lines seen so far.
    pub fn requests(&self) -> Vec<String> {
        self.shared.requests.lock().expect("lock").clone()
    }

    /// Whole request heads seen so far (request line and headers).
    pub fn heads(&self) -> Vec<String> {
        self.shared.heads.lock().expect("lock").clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so its thread ends.
        let _ = TcpStream::connect(self.addr);
    }
}

fn read_head(conn: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if conn.read(&mut byte)? == 0 || buf.len() > 64 << 10 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.push(byte[0]);
    }
    Ok(buf)
}

/// Rewrites a request or response head to say `Connection: close`.
fn force_close(head: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(head);
    let mut out = String::new();
    for line in text.split("\r\n").filter(|l| !l.is_empty()) {
        let lower = line.to_ascii_lowercase();
        if lower.starts_with("connection:") || lower.starts_with("keep-alive:") {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    out.into_bytes()
}

/// Whether this request is to be reset, and how.
fn reset_for(s: &Shared, line: &str, head: &[u8]) -> Option<Reset> {
    let mut armed = s.resets.lock().expect("lock");
    let r = armed.as_mut()?;
    let head = String::from_utf8_lossy(head).to_ascii_lowercase();
    if r.left == 0 || !head.contains(&r.only.to_ascii_lowercase()) {
        return None;
    }
    r.seen += 1;
    if r.seen % r.every != 0 {
        return None;
    }
    r.left -= 1;
    s.reset_log
        .lock()
        .expect("lock")
        .push((line.to_string(), r.how));
    Some(r.how)
}

/// Closes `conn` with a TCP RST (SO_LINGER 0), as a crashed peer or a middlebox does.
fn reset(conn: TcpStream) -> std::io::Result<()> {
    socket2::SockRef::from(&conn).set_linger(Some(Duration::ZERO))?;
    drop(conn);
    Ok(())
}

/// The `Content-Length` of a request head (0 when absent).
fn content_length(head: &[u8]) -> std::io::Result<usize> {
    let text = String::from_utf8_lossy(head);
    for line in text.split("\r\n") {
        let lower = line.to_ascii_lowercase();
        if lower.starts_with("transfer-encoding:") {
            return Err(std::io::Error::other(
                "the proxy forwards no chunked requests",
            ));
        }
        if let Some(v) = lower.strip_prefix("content-length:") {
            return v
                .trim()
                .parse()
                .map_err(|_| std::io::Error::other("bad Content-Length"));
        }
    }
    Ok(0)
}

fn serve(mut conn: TcpStream, s: &Shared) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let head = read_head(&mut conn)?;
    let first = String::from_utf8_lossy(&head)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    s.requests.lock().expect("lock").push(first.clone());
    s.heads
        .lock()
        .expect("lock")
        .push(String::from_utf8_lossy(&head).into_owned());
    let fault = reset_for(s, &first, &head);
    if fault == Some(Reset::BeforeForward) {
        return reset(conn);
    }
    let mut body = vec![0; content_length(&head)?];
    conn.read_exact(&mut body)?;
    let mut up = TcpStream::connect(&s.upstream)?;
    up.set_read_timeout(Some(Duration::from_secs(30)))?;
    up.write_all(&force_close(&head))?;
    up.write_all(&body)?;
    let mut response = Vec::new();
    up.read_to_end(&mut response)?;
    if fault == Some(Reset::AfterForward) {
        return reset(conn);
    }
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
        .unwrap_or(response.len());
    let (rhead, body) = response.split_at(split);
    let is_partial = rhead.starts_with(b"HTTP/1.1 206");
    let stall = s.stall_after.load(Ordering::SeqCst);
    conn.write_all(&force_close(rhead))?;
    if fault == Some(Reset::MidBody) {
        conn.write_all(&body[..body.len() / 2])?;
        conn.flush()?;
        // Give the client time to read what was sent: a reset makes the kernel
        // drop data the client has not read yet.
        std::thread::sleep(Duration::from_millis(300));
        return reset(conn);
    }
    if is_partial && stall != u64::MAX {
        s.stall_after.store(u64::MAX, Ordering::SeqCst);
        let n = (stall as usize).min(body.len());
        conn.write_all(&body[..n])?;
        conn.flush()?;
        let _ = s.notify.lock().expect("lock").send(n as u64);
        // Hold the connection open, sending nothing, until the test ends.
        let deadline = Instant::now() + Duration::from_secs(120);
        while !s.stop.load(Ordering::SeqCst) && Instant::now() < deadline {
            if s.release.swap(false, Ordering::SeqCst) {
                conn.write_all(&body[n..])?;
                conn.flush()?;
                return conn.shutdown(Shutdown::Write);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        return conn.shutdown(Shutdown::Both);
    }
    conn.write_all(body)?;
    conn.flush()?;
    conn.shutdown(Shutdown::Write)
}

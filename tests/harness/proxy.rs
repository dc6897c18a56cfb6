//! A fault-injecting HTTP/1.1 proxy in front of a real server.
//!
//! It forwards one request per connection (it forces `Connection: close` both ways),
//! counts requests, and when armed, stalls the first ranged (206) response after
//! sending its headers and a given number of body bytes, then reports that it has
//! stalled. A test can then kill the client at a known point of a download instead
//! of guessing with a sleep.

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

struct Shared {
    upstream: String,
    stop: AtomicBool,
    /// Stall the next 206 response after this many body bytes (u64::MAX = disarmed).
    stall_after: AtomicU64,
    /// Lets a stalled response send the rest of its body.
    release: AtomicBool,
    notify: Mutex<Sender<u64>>,
    requests: Mutex<Vec<String>>,
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
            stop: AtomicBool::new(false),
            stall_after: AtomicU64::new(u64::MAX),
            release: AtomicBool::new(false),
            notify: Mutex::new(tx),
            requests: Mutex::new(Vec::new()),
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

    /// Request lines seen so far.
    pub fn requests(&self) -> Vec<String> {
        self.shared.requests.lock().expect("lock").clone()
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

fn serve(mut conn: TcpStream, s: &Shared) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let head = read_head(&mut conn)?;
    let first = String::from_utf8_lossy(&head)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    s.requests.lock().expect("lock").push(first);
    let mut up = TcpStream::connect(&s.upstream)?;
    up.set_read_timeout(Some(Duration::from_secs(30)))?;
    up.write_all(&force_close(&head))?;
    let mut response = Vec::new();
    up.read_to_end(&mut response)?;
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
        .unwrap_or(response.len());
    let (rhead, body) = response.split_at(split);
    let is_partial = rhead.starts_with(b"HTTP/1.1 206");
    let stall = s.stall_after.load(Ordering::SeqCst);
    conn.write_all(&force_close(rhead))?;
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

//! A minimal HTTP `CONNECT` proxy, the kind an agent behind a corporate firewall
//! reaches an `https://` repository through.
//!
//! It accepts `CONNECT host:port` to loopback targets only (anything else gets `403`,
//! other methods `405`), answers `200`, then copies bytes both ways without looking at
//! them: the TLS session runs end to end through the tunnel. Every accepted tunnel's
//! target is recorded, so a test can prove a request really went through the proxy.
//! At most [`MAX_TUNNELS`] tunnels are open at once (more get `503`), idle tunnels close
//! after [`IDLE`], and dropping the proxy closes the listener and every tunnel.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Most tunnels open at the same time.
pub const MAX_TUNNELS: usize = 32;
/// A tunnel with no traffic either way for this long is closed.
pub const IDLE: Duration = Duration::from_secs(30);

pub struct ConnectProxy {
    /// `http://127.0.0.1:PORT`, for `HTTPS_PROXY` or `ferry init --proxy`.
    pub url: String,
    addr: SocketAddr,
    shared: Arc<Shared>,
}

struct Shared {
    stop: AtomicBool,
    /// `host:port` of every tunnel opened.
    connects: Mutex<Vec<String>>,
    /// Both ends of every open tunnel (by tunnel number), shut down on drop.
    open: Mutex<Vec<(u64, TcpStream)>>,
    next: AtomicU64,
}

impl ConnectProxy {
    pub fn start() -> ConnectProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind CONNECT proxy");
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            connects: Mutex::new(Vec::new()),
            open: Mutex::new(Vec::new()),
            next: AtomicU64::new(0),
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
                    let _ = tunnel(conn, &s);
                });
            }
        });
        ConnectProxy {
            url: format!("http://{addr}"),
            addr,
            shared,
        }
    }

    /// The `host:port` of every tunnel opened so far.
    pub fn connects(&self) -> Vec<String> {
        self.shared.connects.lock().expect("lock").clone()
    }
}

impl Drop for ConnectProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for (_, s) in self.shared.open.lock().expect("lock").drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
        // Wake the accept loop so its thread ends.
        let _ = TcpStream::connect(self.addr);
    }
}

fn read_head(conn: &mut TcpStream) -> std::io::Result<String> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if conn.read(&mut byte)? == 0 || buf.len() > 16 << 10 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

fn refuse(mut conn: TcpStream, status: &str) -> std::io::Result<()> {
    conn.write_all(
        format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").as_bytes(),
    )?;
    conn.shutdown(Shutdown::Both)
}

fn tunnel(mut conn: TcpStream, s: &Shared) -> std::io::Result<()> {
    conn.set_read_timeout(Some(IDLE))?;
    let head = read_head(&mut conn)?;
    let mut words = head.split_whitespace();
    let (Some("CONNECT"), Some(target)) = (words.next(), words.next()) else {
        return refuse(conn, "405 Method Not Allowed");
    };
    let target = target.to_string();
    let loopback = target
        .to_socket_addrs()
        .map(|mut addrs| addrs.all(|a| a.ip().is_loopback()))
        .unwrap_or(false);
    if !loopback || s.stop.load(Ordering::SeqCst) {
        return refuse(conn, "403 Forbidden");
    }
    let id = s.next.fetch_add(1, Ordering::SeqCst);
    let up = {
        let mut open = s.open.lock().expect("lock");
        if open.len() >= 2 * MAX_TUNNELS {
            drop(open);
            return refuse(conn, "503 Service Unavailable");
        }
        let up = match TcpStream::connect(&target) {
            Ok(up) => up,
            Err(_) => {
                drop(open);
                return refuse(conn, "502 Bad Gateway");
            }
        };
        open.push((id, conn.try_clone()?));
        open.push((id, up.try_clone()?));
        up
    };
    up.set_read_timeout(Some(IDLE))?;
    s.connects.lock().expect("lock").push(target);
    conn.write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")?;
    let (mut c_read, mut u_write) = (conn.try_clone()?, up.try_clone()?);
    let upward = std::thread::spawn(move || {
        let _ = std::io::copy(&mut c_read, &mut u_write);
        let _ = u_write.shutdown(Shutdown::Write);
    });
    let (mut u_read, mut c_write) = (up.try_clone()?, conn.try_clone()?);
    let _ = std::io::copy(&mut u_read, &mut c_write);
    let _ = c_write.shutdown(Shutdown::Write);
    let _ = upward.join();
    let _ = conn.shutdown(Shutdown::Both);
    let _ = up.shutdown(Shutdown::Both);
    s.open.lock().expect("lock").retain(|(n, _)| *n != id);
    Ok(())
}

//! A private nginx instance serving a repository folder: the plain static host ferry
//! must work against. Its own config, pid, logs and temp paths live in a temp folder.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::process::LoggedRequest;

pub struct Nginx {
    child: Child,
    pub url: String,
    pub access_log: PathBuf,
    /// Every request's bytes on the wire, headers included (see [`Nginx::wire`]).
    pub wire_log: PathBuf,
    _dir: tempfile::TempDir,
}

fn nginx_binary() -> PathBuf {
    for p in ["/usr/sbin/nginx", "/usr/bin/nginx", "/usr/local/sbin/nginx"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!("nginx not found: install it (`apt-get install -y nginx`; .ci/run does)");
}

impl Nginx {
    pub fn start(repo: &Path) -> Nginx {
        let dir = tempfile::tempdir().expect("tempdir");
        // The OS picks a free port; nginx is then told to bind it. The window between
        // the two binds is tiny and only other local tests could race for it.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let d = dir.path();
        let access_log = d.join("access.log");
        let wire_log = d.join("wire.log");
        let conf = format!(
            r#"daemon off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 64; }}
http {{
  log_format ferry '$request_method $uri $status $body_bytes_sent "$http_range"';
  access_log {log} ferry;
  log_format wire '$request_method $uri $status $bytes_sent $request_length';
  access_log {wire} wire;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  default_type application/octet-stream;
  server {{
    listen 127.0.0.1:{port};
    root {repo};
  }}
}}
"#,
            d = d.display(),
            log = access_log.display(),
            wire = wire_log.display(),
            repo = repo.display(),
        );
        let conf_path = d.join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("writing nginx.conf");
        let child = Command::new(nginx_binary())
            .arg("-c")
            .arg(&conf_path)
            .arg("-p")
            .arg(d)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning nginx");
        let mut n = Nginx {
            child,
            url: format!("http://127.0.0.1:{port}"),
            access_log,
            wire_log,
            _dir: dir,
        };
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Ok(Some(status)) = n.child.try_wait() {
                panic!("nginx exited at start: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "nginx did not listen within 20 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        n
    }

    /// Requests from nginx's access log (written when each request completes).
    pub fn requests(&self) -> Vec<LoggedRequest> {
        let text = std::fs::read_to_string(&self.access_log).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let mut it = l.splitn(5, ' ');
                let method = it.next()?.to_string();
                let path = it.next()?.to_string();
                let status = it.next()?.parse().ok()?;
                let bytes = it.next()?.parse().ok()?;
                let range = it.next()?.trim_matches('"');
                Some(LoggedRequest {
                    method,
                    path,
                    status,
                    bytes,
                    range: (range != "-" && !range.is_empty()).then(|| range.to_string()),
                })
            })
            .collect()
    }
}

/// One request as it crossed the wire: nginx's `$bytes_sent` (response, headers
/// included) and `$request_length` (request line, headers and body).
#[derive(Clone, Debug)]
pub struct WireRequest {
    pub method: String,
    pub path: String,
    pub status: u16,
    pub bytes_sent: u64,
    pub request_length: u64,
}

impl WireRequest {
    /// Both directions together.
    pub fn total(&self) -> u64 {
        self.bytes_sent + self.request_length
    }
}

impl Nginx {
    /// Requests from the wire log, in the order they completed.
    pub fn wire(&self) -> Vec<WireRequest> {
        let text = std::fs::read_to_string(&self.wire_log).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let mut it = l.split(' ');
                Some(WireRequest {
                    method: it.next()?.to_string(),
                    path: it.next()?.to_string(),
                    status: it.next()?.parse().ok()?,
                    bytes_sent: it.next()?.parse().ok()?,
                    request_length: it.next()?.parse().ok()?,
                })
            })
            .collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM makes the master stop its workers too; SIGKILL would orphan them.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

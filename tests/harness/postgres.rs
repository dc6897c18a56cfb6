//! A private PostgreSQL for the shared-fleet tests: its own data folder in a temp
//! folder owned by the `postgres` user (the server refuses to run as root), a free
//! loopback port, its Unix socket in the same temp folder; started and stopped with
//! `pg_ctl` through `runuser`; stopped (immediate mode, else SIGKILL) when dropped, a
//! failing test included.
//!
//! `fsync=off` by default, for speed: a process crash (kill -9) loses nothing even so
//! (the WAL is written to the OS before a commit returns); only the durability test,
//! which kills PostgreSQL too, starts it with fsync on ([`Postgres::start_durable`]).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// The role the servers under test log in as.
pub const ROLE: &str = "ferry";
pub const PASSWORD: &str = "ferry-secret-7f3a";

pub struct Postgres {
    dir: TempDir,
    bin: PathBuf,
    pub port: u16,
    fsync: bool,
}

/// The newest PostgreSQL's binaries (Debian keeps them off PATH).
fn binaries() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "PostgreSQL not found in /usr/lib/postgresql/*/bin: install it with `.ci/build-deps.sh --postgres` (apt-get install -y postgresql)"
        ),
    }
}

fn run(cmd: &mut Command, what: &str) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `runuser -u postgres -- PROGRAM`: PostgreSQL's programs refuse to run as root.
fn as_postgres(program: &Path) -> Command {
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--"]).arg(program);
    c
}

impl Postgres {
    /// A fresh cluster with `fsync=off`, running, with the role [`ROLE`].
    pub fn start() -> Postgres {
        Postgres::init(false)
    }

    /// Like [`Postgres::start`] with `fsync=on`: commits reach the disk.
    pub fn start_durable() -> Postgres {
        Postgres::init(true)
    }

    fn init(fsync: bool) -> Postgres {
        let bin = binaries();
        let who = Command::new("id").arg("-u").output().expect("id -u");
        assert_eq!(
            String::from_utf8_lossy(&who.stdout).trim(),
            "0",
            "the PostgreSQL tests start a private server as the postgres user through runuser, which needs root"
        );
        let dir = tempfile::Builder::new()
            .prefix("ferry-pg-")
            .tempdir()
            .expect("tempdir");
        run(
            Command::new("chown")
                .arg("postgres:postgres")
                .arg(dir.path()),
            "chown postgres",
        );
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let pg = Postgres {
            dir,
            bin,
            port,
            fsync,
        };
        run(
            as_postgres(&pg.bin.join("initdb"))
                .arg("-D")
                .arg(pg.data())
                .args([
                    "-U",
                    "postgres",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "-E",
                    "UTF8",
                    "--locale=C.UTF-8",
                    "--no-sync",
                ]),
            "initdb",
        );
        pg.start_again();
        pg.psql(
            "postgres",
            &format!("CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}'"),
        );
        pg
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// (Re)starts the server on the same port and data; waits until it accepts.
    pub fn start_again(&self) {
        let fsync = if self.fsync { "on" } else { "off" };
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync={fsync} -c full_page_writes={fsync} -c max_connections=40",
            self.port,
            self.dir.path().display()
        );
        let started = as_postgres(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.dir.path().join("postgres.log"))
            .args(["-w", "-t", "60", "-o", &options, "start"])
            .stdin(Stdio::null())
            .output()
            .expect("pg_ctl start");
        if !started.status.success() {
            panic!(
                "pg_ctl start failed ({}): {}\n{}",
                started.status,
                String::from_utf8_lossy(&started.stderr),
                self.log()
            );
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    /// Stops the server cleanly (`pg_ctl stop -m fast`).
    pub fn stop(&self) {
        run(
            as_postgres(&self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(self.data())
                .args(["-m", "fast", "-w", "stop"]),
            "pg_ctl stop",
        );
    }

    /// SIGKILL to the postmaster, then waits until it and its children (they exit
    /// when they notice it died) are gone, so the cluster can start again.
    pub fn kill9(&self) {
        let pid = self.postmaster_pid().expect("postgres is running");
        let mut family = children(pid);
        family.push(pid);
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while family
            .iter()
            .any(|p| Path::new(&format!("/proc/{p}")).exists())
        {
            assert!(
                Instant::now() < deadline,
                "PostgreSQL processes still running 30 s after kill -9"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn postmaster_pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.data().join("postmaster.pid")).ok()?;
        let pid: u32 = text.lines().next()?.trim().parse().ok()?;
        // A stale file after kill -9 names a process that is gone.
        Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
    }

    /// A new database owned by [`ROLE`]; returns the URL the servers use.
    pub fn database(&self, name: &str) -> String {
        self.psql("postgres", &format!("CREATE DATABASE {name} OWNER {ROLE}"));
        self.url(name)
    }

    /// `postgres://ferry:PASSWORD@127.0.0.1:PORT/NAME`.
    pub fn url(&self, name: &str) -> String {
        format!(
            "postgres://{ROLE}:{PASSWORD}@127.0.0.1:{}/{name}",
            self.port
        )
    }

    /// Runs SQL as the superuser over the socket; returns the unaligned output.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = run(
            Command::new(self.bin.join("psql"))
                .arg("-h")
                .arg(self.dir.path())
                .args(["-p", &self.port.to_string(), "-U", "postgres", "-d", db])
                .args(["-v", "ON_ERROR_STOP=1", "-X", "-q", "-A", "-t", "-c", sql]),
            "psql",
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

/// The processes whose parent is `pid`.
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let child: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            // "pid (comm) state ppid ...": comm may hold spaces, so split after ')'.
            let ppid: u32 = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            (ppid == pid).then_some(child)
        })
        .collect()
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.postmaster_pid().is_none() {
            return;
        }
        let stopped = as_postgres(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "-t", "20", "stop"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !stopped && let Some(pid) = self.postmaster_pid() {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }
}

//! Finding and running the real binaries, and the `ferry-server serve` guard.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, mpsc};

use crate::fresh;
use std::time::Duration;

/// Path of a workspace binary (`ferry` or `ferry-server`) of the profile the tests run
/// in. `.ci/run` builds them before the tests (`cargo build --workspace --bins --examples`); a
/// binary older than a source it is built from is refused ([`fresh`]).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/e2e-<hash> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not found: build the binaries first with `cargo build --workspace --bins --examples`",
        path.display()
    );
    // Once per binary per test process (nextest runs one test per process).
    static CHECKED: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let mut checked = CHECKED.lock().unwrap_or_else(|e| e.into_inner());
    if !checked.iter().any(|n| n == name) {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("tests/ lives in the workspace");
        if let Err(stale) = fresh::check_fresh(&path, workspace, fresh::crates_of(name)) {
            panic!("{stale}");
        }
        checked.push(name.to_string());
    }
    path
}

/// Runs a command to completion with a 120 s ceiling and returns its output.
pub fn run(program: PathBuf, args: &[&str]) -> Output {
    run_env(program, args, &[])
}

/// [`run`] with environment changes: `(name, Some(value))` sets, `(name, None)` removes.
pub fn run_env(program: PathBuf, args: &[&str], env: &[(&str, Option<&str>)]) -> Output {
    let mut cmd = Command::new(&program);
    for (name, value) in env {
        match value {
            Some(v) => cmd.env(name, v),
            None => cmd.env_remove(name),
        };
    }
    let child = cmd
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {}: {e}", program.display()));
    wait_bounded(child, Duration::from_secs(120), &program)
}

fn wait_bounded(child: Child, limit: Duration, program: &Path) -> Output {
    let id = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.expect("waiting for child"),
        Err(_) => {
            // SAFETY-free kill by pid: the child is ours and still running.
            let _ = Command::new("kill").args(["-9", &id.to_string()]).status();
            panic!("{} did not finish within {limit:?}", program.display());
        }
    }
}

/// A running `ferry-server serve`, stopped (SIGTERM, then waited) on drop.
pub struct Server {
    child: Child,
    pub url: String,
    pub access_log: PathBuf,
    _log_dir: tempfile::TempDir,
}

impl Server {
    pub fn start(repo: &Path) -> Server {
        Server::start_with(repo, &[])
    }

    /// Starts `serve` with extra arguments (e.g. `--tls-cert`, `--tls-key`).
    pub fn start_with(repo: &Path, extra_args: &[&str]) -> Server {
        Server::start_with_env(repo, extra_args, &[])
    }

    /// [`Server::start_with`] with extra environment variables (e.g. `FAILPOINTS`).
    pub fn start_with_env(repo: &Path, extra_args: &[&str], env: &[(&str, &str)]) -> Server {
        let log_dir = tempfile::tempdir().expect("tempdir");
        let access_log = log_dir.path().join("access.log");
        let mut child = Command::new(bin("ferry-server"))
            .args(["serve", "--repo"])
            .arg(repo)
            .args(["--listen", "127.0.0.1:0", "--access-log"])
            .arg(&access_log)
            .args(extra_args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning ferry-server serve");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("listening on ") {
                    let _ = tx.send(url.trim().to_string());
                }
            }
        });
        let url = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(url) => url,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("ferry-server did not print its address within 30 s");
            }
        };
        Server {
            child,
            url,
            access_log,
            _log_dir: log_dir,
        }
    }

    /// Requests logged so far: (method, path, status, body bytes, range header).
    pub fn requests(&self) -> Vec<LoggedRequest> {
        let text = std::fs::read_to_string(&self.access_log).unwrap_or_default();
        text.lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("access log JSON line");
                LoggedRequest {
                    method: v["method"].as_str().unwrap_or_default().to_string(),
                    path: v["path"].as_str().unwrap_or_default().to_string(),
                    status: v["status"].as_u64().unwrap_or_default() as u16,
                    bytes: v["bytes"].as_u64().unwrap_or_default(),
                    range: v["range"].as_str().map(str::to_string),
                }
            })
            .collect()
    }

    /// The server's process id (for signals such as SIGHUP).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits for a graceful exit; returns the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let status = self.child.wait().expect("waiting for server");
        std::mem::forget(self);
        status
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request as a server logged it.
#[derive(Debug, Clone)]
pub struct LoggedRequest {
    pub method: String,
    pub path: String,
    pub status: u16,
    pub bytes: u64,
    pub range: Option<String>,
}

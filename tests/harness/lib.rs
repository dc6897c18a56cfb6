//! Harness for ferry's end-to-end tests: the real `ferry-server`, real nginx and the
//! real `ferry` binary, all on 127.0.0.1 with OS-assigned ports, plus a fault-injecting
//! proxy that can stall a download at a known byte so interruption tests are
//! deterministic. Every process a test starts is stopped when its guard drops.

pub mod connect_proxy;
pub mod fresh;
pub mod nginx;
pub mod postgres;
pub mod process;
pub mod proxy;
pub mod seaweedfs;
pub mod tree;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;
use tempfile::TempDir;

pub use process::{Server, bin, run};

/// A publisher's workspace: keys, a repository folder and release sources.
pub struct Publisher {
    pub dir: TempDir,
    pub channel: String,
}

impl Publisher {
    /// Creates keys with `ferry-server keygen`.
    pub fn new(channel: &str) -> Publisher {
        let dir = tempfile::tempdir().expect("tempdir");
        // World-traversable, as a static host's worker (nginx runs as nobody) needs.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod publisher dir");
        let out = run(
            bin("ferry-server"),
            &["keygen", "--out", dir.path().join("keys").to_str().unwrap()],
        );
        assert_ok(&out, "keygen");
        Publisher {
            dir,
            channel: channel.to_string(),
        }
    }

    pub fn repo(&self) -> PathBuf {
        self.dir.path().join("repo")
    }

    pub fn key(&self) -> PathBuf {
        self.dir.path().join("keys/ferry.key")
    }

    pub fn public_key(&self) -> PathBuf {
        self.dir.path().join("keys/ferry.pub")
    }

    /// Publishes `source` (a file or folder) as `version`, with fast compression.
    pub fn publish(&self, version: &str, source: &Path) -> Value {
        self.publish_with(version, source, &[])
    }

    pub fn publish_with(&self, version: &str, source: &Path, extra: &[&str]) -> Value {
        let (repo, key) = (self.repo(), self.key());
        let mut args = vec![
            "publish",
            "--repo",
            repo.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            "--channel",
            &self.channel,
            "--version",
            version,
            "--zstd-level",
            "3",
            "--json",
        ];
        args.extend_from_slice(extra);
        args.push(source.to_str().unwrap());
        let out = run(bin("ferry-server"), &args);
        assert_ok(&out, "publish");
        serde_json::from_slice(&out.stdout).expect("publish --json prints JSON")
    }

    /// Path of the channel head file inside the repository.
    pub fn head_file(&self) -> PathBuf {
        self.repo()
            .join(ferry_format::layout::head_path(&self.channel))
    }

    /// Path of the object named by a hex digest.
    pub fn object_file(&self, hex: &str) -> PathBuf {
        let d = ferry_format::id::Digest::from_hex(hex).expect("hex digest");
        self.repo().join(ferry_format::layout::object_path(&d))
    }

    /// Starts `ferry-server serve` on this repository.
    pub fn serve(&self) -> Server {
        Server::start(&self.repo())
    }
}

/// An install root driven by the real `ferry` binary.
pub struct Agent {
    pub dir: TempDir,
}

impl Agent {
    pub fn init(server_url: &str, channel: &str, public_key: &Path, extra: &[&str]) -> Agent {
        let dir = tempfile::tempdir().expect("tempdir");
        let agent = Agent { dir };
        let mut args = vec![
            "init",
            "--root",
            agent.root_str(),
            "--server",
            server_url,
            "--channel",
            channel,
            "--public-key",
            public_key.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        assert_ok(&run(bin("ferry"), &args), "init");
        agent
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    fn root_str(&self) -> &str {
        self.dir.path().to_str().expect("utf-8 temp path")
    }

    /// Runs `ferry <cmd> --root ROOT <args>`.
    pub fn ferry(&self, cmd: &str, args: &[&str]) -> Output {
        let mut all = vec![cmd, "--root", self.root_str()];
        all.extend_from_slice(args);
        run(bin("ferry"), &all)
    }

    /// `ferry update --json`, asserting success.
    pub fn update(&self) -> Value {
        let out = self.ferry("update", &["--json"]);
        assert_ok(&out, "update");
        serde_json::from_slice(&out.stdout).expect("update --json prints JSON")
    }

    /// `ferry update --json ARGS`, asserting success.
    pub fn update_with(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.ferry("update", &all);
        assert_ok(&out, "update");
        serde_json::from_slice(&out.stdout).expect("update --json prints JSON")
    }

    /// `ferry update`, asserting failure; returns stderr.
    pub fn update_fails(&self) -> String {
        let out = self.ferry("update", &[]);
        assert!(
            !out.status.success(),
            "update should have failed; stdout: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// [`Agent::update_fails`], asserting the exit status (`ferry --help` lists them).
    pub fn update_fails_with(&self, code: i32) -> String {
        let out = self.ferry("update", &[]);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(code), "exit status of: {err}");
        err
    }

    pub fn rollback(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.ferry("rollback", &all);
        assert_ok(&out, "rollback");
        serde_json::from_slice(&out.stdout).expect("rollback --json prints JSON")
    }

    pub fn status(&self) -> Value {
        let out = self.ferry("status", &["--json"]);
        assert_ok(&out, "status");
        serde_json::from_slice(&out.stdout).expect("status --json prints JSON")
    }

    pub fn history(&self) -> Vec<Value> {
        let out = self.ferry("history", &["--json"]);
        assert_ok(&out, "history");
        serde_json::from_slice(&out.stdout).expect("history --json prints a JSON array")
    }

    /// The active version, read from where `current` points (`versions/<version>`, or
    /// `versions/<version>+<n>` for a repaired copy).
    pub fn active(&self) -> Option<String> {
        let folder = self.current_folder()?;
        Some(folder.split('+').next()?.to_string())
    }

    /// The folder of `versions/` that `current` points to.
    pub fn current_folder(&self) -> Option<String> {
        let link = std::fs::read_link(self.root().join("current")).ok()?;
        Some(link.file_name()?.to_str()?.to_string())
    }

    pub fn current(&self) -> PathBuf {
        self.root().join("current")
    }
}

/// Asserts a command succeeded, printing its output otherwise.
pub fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

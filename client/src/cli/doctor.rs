//! `ferry doctor`: checks what the next update needs, one line per check (`ok`,
//! `warn` or `fail`, what was found, and for a problem what to do), and exits 1 when
//! a check fails.
//!
//! Doctor changes nothing in the root: it does not take the lock (it must not wait
//! behind a running update, and it reports who holds it), reads the configuration,
//! state and keys as they are (they are only ever replaced whole), verifies what it
//! fetches in memory (no state, head, entity tag or key list is stored), and its
//! write test creates and removes one file of its own in `ROOT/.ferry`. Network
//! checks are bounded in time per server ([`net`]).

mod disk;
mod hooks;
mod net;
mod verify;

use std::fmt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{Result, bail};
use serde::Serialize;

use super::DoctorArgs;
use crate::install::config::Config;
use crate::install::layout::Layout;
use crate::install::lock;
use crate::install::state::State;

/// How a check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
        })
    }
}

/// One line of the report.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub check: String,
    pub status: Status,
    pub detail: String,
    /// What to do about a warning or failure.
    pub hint: Option<String>,
}

impl Check {
    pub fn ok(check: impl Into<String>, detail: impl Into<String>) -> Check {
        Check {
            check: check.into(),
            status: Status::Ok,
            detail: detail.into(),
            hint: None,
        }
    }

    pub fn warn(
        check: impl Into<String>,
        detail: impl Into<String>,
        hint: impl Into<String>,
    ) -> Check {
        Check {
            check: check.into(),
            status: Status::Warn,
            detail: detail.into(),
            hint: Some(hint.into()),
        }
    }

    pub fn fail(
        check: impl Into<String>,
        detail: impl Into<String>,
        hint: impl Into<String>,
    ) -> Check {
        Check {
            check: check.into(),
            status: Status::Fail,
            detail: detail.into(),
            hint: Some(hint.into()),
        }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:<4}  {}  {}", self.status, self.check, self.detail)?;
        if let Some(h) = &self.hint {
            write!(f, " — {h}")?;
        }
        Ok(())
    }
}

pub fn run(args: &DoctorArgs) -> Result<()> {
    let checks = diagnose(&args.root);
    let failed = checks.iter().filter(|c| c.status == Status::Fail).count();
    let warned = checks.iter().filter(|c| c.status == Status::Warn).count();
    if args.json {
        let v = serde_json::json!({
            "root": args.root,
            "failed": failed,
            "warnings": warned,
            "checks": checks,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for c in &checks {
            println!("{c}");
        }
    }
    if failed > 0 {
        bail!(
            "{failed} of {} checks failed (see the lines marked `fail`)",
            checks.len()
        );
    }
    Ok(())
}

/// Every check, in the order an update needs them.
fn diagnose(root: &Path) -> Vec<Check> {
    let layout = Layout::new(root);
    let config_path = layout.config();
    let (config, state) = match open(&layout) {
        Ok(v) => v,
        Err(c) => return vec![c],
    };
    let mut checks = vec![Check::ok(
        "root",
        format!(
            "{}: initialised, channel {}, active release {}",
            root.display(),
            config.channel,
            state.active.as_deref().unwrap_or("none")
        ),
    )];
    checks.push(write_access(&layout));
    checks.push(lock_check(&layout));
    let found = net::probe_all(&layout, &config, &state, &config_path, &mut checks);
    match &found {
        Some(f) => {
            checks.push(verify::clock(&f.head, config.max_clock_skew_secs));
            checks.push(disk::check(&layout, &config, &state, f));
        }
        None => {
            checks.push(Check::warn(
                "clock",
                "not checked: no server gave a channel head that verifies",
                "fix the `server` and `head` checks above first",
            ));
            checks.push(Check::warn(
                "disk",
                "not checked: the next release is not known without a verified channel head",
                "fix the `server` and `head` checks above first",
            ));
        }
    }
    for (key, command) in [
        ("pre_switch", &config.pre_switch),
        ("post_switch", &config.post_switch),
        ("health_check", &config.health_check),
    ] {
        if let Some(cmd) = command {
            checks.push(hooks::check(key, cmd));
        }
    }
    if config.pre_switch.is_none() && config.post_switch.is_none() && config.health_check.is_none()
    {
        checks.push(Check::ok(
            "hooks",
            "none configured (pre_switch, post_switch, health_check)",
        ));
    }
    checks
}

/// The root's configuration and state, read without the lock and without the
/// conversion of an old `config.json` (which writes).
fn open(layout: &Layout) -> Result<(Config, State), Check> {
    let root = layout.root();
    let meta = std::fs::metadata(root);
    if !meta.as_ref().is_ok_and(std::fs::Metadata::is_dir) {
        let found = match meta {
            Ok(_) => "is not a directory".to_string(),
            Err(e) => e.to_string(),
        };
        return Err(Check::fail(
            "root",
            format!("{}: {found}", root.display()),
            "give the root `ferry init` was run with (--root), or run `ferry init` first",
        ));
    }
    let path = layout.config();
    if !path.exists() {
        if layout.legacy_config().exists() {
            return Err(Check::fail(
                "root",
                format!(
                    "{} has only .ferry/config.json, the configuration of an older ferry",
                    root.display()
                ),
                format!(
                    "run `ferry status --root {}` once: it converts it to config.toml",
                    root.display()
                ),
            ));
        }
        return Err(Check::fail(
            "root",
            format!(
                "{} is not a ferry root (no .ferry/config.toml)",
                root.display()
            ),
            "run `ferry init` first",
        ));
    }
    let config = Config::load(&path).map_err(|e| {
        Check::fail(
            "root",
            e.to_string(),
            format!("fix {} (docs/AGENT.md describes every key)", path.display()),
        )
    })?;
    let state = State::load(&layout.state()).map_err(|e| {
        Check::fail(
            "root",
            e.to_string(),
            "the root's state is unreadable: restore it, or `ferry init --force` a new root",
        )
    })?;
    Ok((config, state))
}

/// An update writes in `ROOT/.ferry` (state, staging), `ROOT/versions` and `ROOT`
/// (the `current` link). A file is created and removed in `.ferry` only; the other
/// two are asked with access(2), which writes nothing.
fn write_access(layout: &Layout) -> Check {
    let dir = layout.ferry_dir();
    let probe = dir.join(format!(".doctor-{}", std::process::id()));
    let created = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&probe);
    let hint = |what: &Path| {
        format!(
            "the next update writes there: run ferry as the user that owns {} (uid {}), or make it writable",
            what.display(),
            owner(what)
        )
    };
    if let Err(e) = created {
        return Check::fail(
            "write",
            format!("cannot create a file in {}: {e}", dir.display()),
            hint(&dir),
        );
    }
    if let Err(e) = std::fs::remove_file(&probe) {
        return Check::fail(
            "write",
            format!("created but cannot remove {}: {e}", probe.display()),
            hint(&dir),
        );
    }
    let versions = layout.versions();
    for d in [layout.root(), versions.as_path()] {
        if !d.exists() {
            continue;
        }
        if let Err(e) = rustix::fs::access(d, rustix::fs::Access::WRITE_OK) {
            return Check::fail(
                "write",
                format!(
                    "{} is not writable: {}",
                    d.display(),
                    std::io::Error::from(e)
                ),
                hint(d),
            );
        }
    }
    Check::ok(
        "write",
        format!(
            "{} and {} are writable",
            dir.display(),
            layout.root().display()
        ),
    )
}

fn owner(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map_or_else(|_| "?".into(), |m| m.uid().to_string())
}

/// Whether an update could take the lock now. The lock file is opened read-only and
/// never created; an exclusive flock taken and dropped at once changes nothing.
fn lock_check(layout: &Layout) -> Check {
    let path = layout.lock();
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Check::ok("lock", "free (no lock file yet)");
        }
        Err(e) => {
            return Check::fail(
                "lock",
                format!("cannot open {}: {e}", path.display()),
                "the next update must lock it: check its owner and permissions",
            );
        }
    };
    match file.try_lock() {
        Ok(()) => Check::ok("lock", "free"),
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = lock::holder(&file);
            Check::warn(
                "lock",
                format!("held by {holder}"),
                "the next update waits for it (at most `lock_timeout`); if it stays held, see what that process is doing",
            )
        }
        Err(std::fs::TryLockError::Error(e)) => Check::fail(
            "lock",
            format!("cannot lock {}: {e}", path.display()),
            "the filesystem must support flock(2)",
        ),
    }
}

/// Where to change `servers` and friends, for hints.
pub(crate) fn config_hint(layout: &Layout) -> String {
    layout.config().display().to_string()
}

/// `3s`, `2m5s`, `4h2m`, `3d4h`.
pub(crate) fn span(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{}s", s / 60, s % 60),
        s if s < 86_400 => format!("{}h{}m", s / 3600, s / 60 % 60),
        s => format!("{}d{}h", s / 86_400, s / 3600 % 24),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_read_as_status_check_detail_hint() {
        let c = Check::fail(
            "server http://127.0.0.1:1/",
            "connection refused",
            "is it running?",
        );
        assert_eq!(
            c.to_string(),
            "fail  server http://127.0.0.1:1/  connection refused — is it running?"
        );
        assert_eq!(Check::ok("lock", "free").to_string(), "ok    lock  free");
        assert_eq!(span(59), "59s");
        assert_eq!(span(125), "2m5s");
        assert_eq!(span(3 * 86_400 + 4 * 3600 + 5), "3d4h");
    }

    #[test]
    fn a_missing_or_old_root_is_named_and_left_as_it_is() {
        let t = tempfile::tempdir().unwrap();
        let checks = diagnose(&t.path().join("nope"));
        assert_eq!(checks.len(), 1);
        assert_eq!(checks[0].status, Status::Fail);
        let layout = Layout::new(t.path());
        std::fs::create_dir_all(layout.ferry_dir()).unwrap();
        let c = &diagnose(t.path())[0];
        assert!(c.detail.contains("not a ferry root"), "{c}");
        std::fs::write(layout.legacy_config(), "{}").unwrap();
        let c = &diagnose(t.path())[0];
        assert!(c.detail.contains("config.json"), "{c}");
        assert!(c.hint.as_deref().unwrap().contains("ferry status"), "{c}");
        assert!(!layout.config().exists(), "doctor does not convert it");
    }

    #[test]
    fn the_write_check_leaves_nothing_behind() {
        let t = tempfile::tempdir().unwrap();
        let layout = Layout::new(t.path());
        std::fs::create_dir_all(layout.ferry_dir()).unwrap();
        let c = write_access(&layout);
        assert_eq!(c.status, Status::Ok, "{c}");
        assert_eq!(std::fs::read_dir(layout.ferry_dir()).unwrap().count(), 0);
        let c = lock_check(&layout);
        assert_eq!(c.status, Status::Ok, "{c}");
        assert!(
            !layout.lock().exists(),
            "doctor never creates the lock file"
        );
    }
}

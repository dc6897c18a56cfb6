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
mod local;
mod net;
mod verify;

use std::fmt;
use std::path::Path;

use anyhow::{Result, bail};
use serde::Serialize;

use super::DoctorArgs;
use crate::install::layout::Layout;

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
    let (config, state) = match local::open(&layout) {
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
    checks.push(local::write_access(&layout));
    checks.push(local::lock_check(&layout));
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
}

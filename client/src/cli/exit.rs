//! Exit statuses by kind of failure, so scripts and service managers can tell an
//! offline machine from a tampered repository, a policy refusal, a full disk or a busy
//! root without parsing messages. The table is printed by `ferry --help` and kept in
//! README.md and docs/AGENT.md.
//!
//! A failure's kind comes from the typed errors in its chain ([`class_of`]); the
//! failures that commands raise themselves with a message carry their kind in
//! [`Refusal`].

use std::io;

use ferry_format::FormatError;

use crate::agent::hooks::HookError;
use crate::apply::ApplyError;
use crate::fetch::FetchError;
use crate::fsutil::FsError;
use crate::install::lock::LockError;
use crate::install::retain::RuleError;
use crate::install::space::SpaceError;

/// The `after_help` of `ferry --help`.
pub const HELP: &str = "\
Exit status:
  0  success
  1  any other error
  2  usage error (unknown option, missing argument)
  3  offline: no server reachable; nothing changed
  4  network: a server answered with an error, or a transfer failed after retries
  5  verification: a signature, hash, expiry, size or sequence check failed
     (rollback protection included)
  6  refused by policy: over the data budget, a failed pre_switch, or a failed
     health check (the previous release is active again)
  7  disk: not enough space or inodes, or the disk refused a write
  8  lock: another ferry holds the root longer than the lock timeout";

/// A kind of failure with its own exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Offline,
    Network,
    Verification,
    Policy,
    Disk,
    Lock,
}

impl Class {
    pub fn code(self) -> i32 {
        match self {
            Class::Offline => 3,
            Class::Network => 4,
            Class::Verification => 5,
            Class::Policy => 6,
            Class::Disk => 7,
            Class::Lock => 8,
        }
    }
}

/// A failure a command recognises itself (a budget exceeded, a repository that
/// equivocates, a release switched back after its health check), with its kind.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    pub class: Class,
    pub message: String,
}

/// `Err` of a [`Refusal`].
pub fn refuse<T>(class: Class, message: String) -> anyhow::Result<T> {
    Err(Refusal { class, message }.into())
}

/// The exit status for `err`: the kind of the first typed error in its chain that has
/// one, else 1.
pub fn code(err: &anyhow::Error) -> i32 {
    class_of(err).map_or(1, Class::code)
}

/// The kind of `err`, from the typed errors in its chain (outermost first).
pub fn class_of(err: &anyhow::Error) -> Option<Class> {
    err.chain().find_map(|e| {
        if let Some(r) = e.downcast_ref::<Refusal>() {
            return Some(r.class);
        }
        if let Some(f) = e.downcast_ref::<FetchError>() {
            return fetch_class(f);
        }
        if e.downcast_ref::<FormatError>().is_some() {
            return Some(Class::Verification);
        }
        if let Some(a) = e.downcast_ref::<ApplyError>() {
            return apply_class(a);
        }
        if let Some(r) = e.downcast_ref::<RuleError>() {
            return matches!(r, RuleError::OlderRelease { .. }).then_some(Class::Verification);
        }
        if let Some(s) = e.downcast_ref::<SpaceError>() {
            return matches!(
                s,
                SpaceError::NotEnoughSpace { .. } | SpaceError::NotEnoughInodes { .. }
            )
            .then_some(Class::Disk);
        }
        if let Some(l) = e.downcast_ref::<LockError>() {
            return matches!(l, LockError::Timeout { .. }).then_some(Class::Lock);
        }
        if let Some(h) = e.downcast_ref::<HookError>() {
            return matches!(h, HookError::Failed { .. } | HookError::TimedOut { .. })
                .then_some(Class::Policy);
        }
        if let Some(f) = e.downcast_ref::<FsError>() {
            return io_class(&f.source);
        }
        e.downcast_ref::<io::Error>().and_then(io_class)
    })
}

fn fetch_class(e: &FetchError) -> Option<Class> {
    match e {
        FetchError::Unreachable { .. } => Some(Class::Offline),
        FetchError::Request { .. }
        | FetchError::Refused { .. }
        | FetchError::Status { .. }
        | FetchError::NotFound { .. }
        | FetchError::Truncated { .. }
        | FetchError::BadRange { .. }
        | FetchError::TooSlow { .. } => Some(Class::Network),
        FetchError::TooLarge { .. } => Some(Class::Verification),
        FetchError::Io { source, .. } => io_class(source),
        _ => None,
    }
}

fn apply_class(e: &ApplyError) -> Option<Class> {
    match e {
        ApplyError::Fs(f) => io_class(&f.source),
        ApplyError::LocalChanged { .. } => None,
        ApplyError::CorruptDownload { .. }
        | ApplyError::FileMismatch { .. }
        | ApplyError::BadObject { .. }
        | ApplyError::BadDiff { .. }
        | ApplyError::DiffMismatch { .. } => Some(Class::Verification),
        _ => None,
    }
}

/// The disk's own refusals: full, over quota, read-only, too large, failing.
fn io_class(e: &io::Error) -> Option<Class> {
    match e.raw_os_error() {
        Some(libc::ENOSPC | libc::EDQUOT | libc::EROFS | libc::EFBIG | libc::EIO) => {
            Some(Class::Disk)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn each_kind_is_found_under_any_context() {
        let offline: anyhow::Error = FetchError::Unreachable {
            servers: vec![],
            after_secs: 1,
        }
        .into();
        assert_eq!(code(&offline.context("fetching the head")), 3);
        let status: anyhow::Error = FetchError::Status {
            url: "u".into(),
            status: 500,
        }
        .into();
        assert_eq!(code(&status), 4);
        let rule: anyhow::Error = RuleError::OlderRelease {
            target: "1".into(),
            highest: "2".into(),
        }
        .into();
        assert_eq!(code(&rule), 5);
        let budget = refuse::<()>(Class::Policy, "over budget".into()).unwrap_err();
        assert_eq!(code(&budget.context("updating")), 6);
        let full: anyhow::Error = FsError {
            op: "writing",
            path: "/x".into(),
            source: io::Error::from_raw_os_error(libc::ENOSPC),
        }
        .into();
        assert_eq!(code(&full), 7);
        let busy: anyhow::Error = LockError::Timeout {
            path: "/l".into(),
            holder: "ferry update (pid 1)".into(),
            timeout: std::time::Duration::ZERO,
        }
        .into();
        assert_eq!(code(&busy), 8);
        let denied: anyhow::Error = FsError {
            op: "reading",
            path: "/x".into(),
            source: io::Error::from_raw_os_error(libc::EACCES),
        }
        .into();
        assert_eq!(code(&denied), 1);
        let plain = Err::<(), _>(io::Error::other("x"))
            .context("y")
            .unwrap_err();
        assert_eq!(code(&plain), 1);
    }
}

//! The checks of the root itself: that it is initialised (read without the lock and
//! without converting an old `config.json`, which writes), that the next update can
//! write where it must, and whether it could take the lock now.

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::Check;
use crate::install::config::Config;
use crate::install::layout::Layout;
use crate::install::lock;
use crate::install::state::State;

/// The root's configuration and state, read without the lock and without the
/// conversion of an old `config.json` (which writes).
pub fn open(layout: &Layout) -> Result<(Config, State), Check> {
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
pub fn write_access(layout: &Layout) -> Check {
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
pub fn lock_check(layout: &Layout) -> Check {
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

#[cfg(test)]
mod tests {
    use super::super::Status;
    use super::*;

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

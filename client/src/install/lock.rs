//! The root lock: one `flock` on `ROOT/.ferry/lock` held for a whole command.
//!
//! The kernel drops an flock when its holder dies, so a `kill -9` never leaves a stale
//! lock behind. Commands that change the root take it exclusively; read-only commands
//! take it shared, so they never observe a half-finished update.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// How a command holds the root.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockMode {
    Shared,
    Exclusive,
}

/// The held lock; released on drop (or process death).
#[derive(Debug)]
pub struct RootLock {
    _file: File,
}

impl RootLock {
    /// Blocks until the lock is held, telling the user once if it has to wait.
    pub fn acquire(path: &Path, mode: LockMode) -> io::Result<RootLock> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)?;
        let tried = match mode {
            LockMode::Shared => file.try_lock_shared(),
            LockMode::Exclusive => file.try_lock(),
        };
        match tried {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                eprintln!("waiting for another ferry command on this root to finish...");
                match mode {
                    LockMode::Shared => file.lock_shared()?,
                    LockMode::Exclusive => file.lock()?,
                }
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
        Ok(RootLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_excludes() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("lock");
        let held = RootLock::acquire(&p, LockMode::Exclusive).unwrap();
        let other = File::options().read(true).open(&p).unwrap();
        assert!(other.try_lock_shared().is_err());
        drop(held);
        assert!(other.try_lock().is_ok());
    }
}

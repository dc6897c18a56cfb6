//! The root lock: one `flock` on `ROOT/.ferry/lock` held for a whole command.
//!
//! The kernel drops an flock when its holder dies, so a `kill -9` never leaves a stale
//! lock behind. Commands that change the root take it exclusively; read-only commands
//! take it shared, so they never observe a half-finished update.
//!
//! Once held, the lock file's content is replaced by the holder's pid and command
//! (`1234\nferry update\n`), so a command that has to wait can say what it waits for.
//! The content is only a label: what a dead holder left there blocks nothing, and a
//! pid that no longer runs is not named.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a command waits for the lock unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// How a command holds the root.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockMode {
    Shared,
    Exclusive,
}

/// Taking the lock failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// The lock file could not be opened or locked.
    #[error("locking {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Another process held the lock for longer than the timeout.
    #[error(
        "gave up after {waited}: {holder} is holding {path} (wait longer with --lock-timeout, or the `lock_timeout` key in .ferry/config.toml)",
        waited = seconds(*timeout)
    )]
    Timeout {
        path: PathBuf,
        holder: String,
        timeout: Duration,
    },
}

/// The held lock; released on drop (or process death).
#[derive(Debug)]
pub struct RootLock {
    _file: File,
}

impl RootLock {
    /// Takes the lock, waiting at most `timeout` (zero: not at all) and telling the
    /// user once, naming the holder, if it has to wait.
    pub fn acquire(path: &Path, mode: LockMode, timeout: Duration) -> Result<RootLock, LockError> {
        let io_err = |source| LockError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(io_err)?;
        let started = Instant::now();
        let mut told = false;
        let mut pause = Duration::from_millis(20);
        loop {
            let tried = match mode {
                LockMode::Shared => file.try_lock_shared(),
                LockMode::Exclusive => file.try_lock(),
            };
            match tried {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) => {}
                Err(std::fs::TryLockError::Error(e)) => return Err(io_err(e)),
            }
            let waited = started.elapsed();
            if waited >= timeout {
                return Err(LockError::Timeout {
                    path: path.to_path_buf(),
                    holder: holder(&file),
                    timeout,
                });
            }
            if !told {
                eprintln!(
                    "waiting for {} holding {} (at most {})",
                    holder(&file),
                    path.display(),
                    seconds(timeout)
                );
                told = true;
            }
            std::thread::sleep(pause.min(timeout - waited));
            pause = (pause * 2).min(Duration::from_millis(500));
        }
        // The label is best effort: a lock that cannot be labelled still serialises.
        let label = format!("{}\n{}\n", std::process::id(), command());
        if file.set_len(0).is_ok() {
            let _ = file.write_all_at(label.as_bytes(), 0);
        }
        Ok(RootLock { _file: file })
    }
}

/// `ferry update`: the program's file name and its subcommand.
fn command() -> String {
    let mut args = std::env::args();
    let program = args
        .next()
        .as_deref()
        .map(Path::new)
        .and_then(Path::file_name)
        .map_or_else(|| "ferry".into(), |n| n.to_string_lossy().into_owned());
    match args.next() {
        Some(sub) => format!("{program} {sub}"),
        None => program,
    }
}

/// `ferry update (pid 1234)` from the lock file, or a plain description when it
/// names no process that is still running.
pub fn holder(file: &File) -> String {
    let mut buf = [0u8; 512];
    let n = file.read_at(&mut buf, 0).unwrap_or(0);
    let text = String::from_utf8_lossy(&buf[..n]);
    let mut lines = text.lines();
    let pid = lines.next().and_then(|l| l.trim().parse::<u32>().ok());
    let cmd = lines.next().map(str::trim).filter(|c| !c.is_empty());
    match (pid, cmd) {
        (Some(pid), Some(cmd)) if Path::new(&format!("/proc/{pid}")).exists() => {
            format!("{cmd} (pid {pid})")
        }
        _ => "another ferry command".into(),
    }
}

/// `10m`, `1m30s`, `0s`.
fn seconds(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 60, s % 60) {
        (0, s) => format!("{s}s"),
        (m, 0) => format!("{m}m"),
        (m, s) => format!("{m}m{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_excludes() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("lock");
        let held = RootLock::acquire(&p, LockMode::Exclusive, Duration::ZERO).unwrap();
        let other = File::options().read(true).open(&p).unwrap();
        assert!(other.try_lock_shared().is_err());
        drop(held);
        assert!(other.try_lock().is_ok());
    }

    #[test]
    fn a_waiter_names_the_holder_and_gives_up_after_the_timeout() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("lock");
        let held = RootLock::acquire(&p, LockMode::Exclusive, Duration::ZERO).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(
            text.lines().next(),
            Some(std::process::id().to_string().as_str())
        );
        let started = Instant::now();
        let e = RootLock::acquire(&p, LockMode::Shared, Duration::from_millis(300)).unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(300));
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("(pid {})", std::process::id())),
            "{msg}"
        );
        assert!(msg.contains("--lock-timeout"), "{msg}");
        // A label naming a process that is gone is not repeated.
        std::fs::write(&p, "4194304000\nferry update\n").unwrap();
        let e = RootLock::acquire(&p, LockMode::Exclusive, Duration::ZERO).unwrap_err();
        assert!(e.to_string().contains("another ferry command"), "{e}");
        drop(held);
        RootLock::acquire(&p, LockMode::Exclusive, Duration::ZERO).unwrap();
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(seconds(Duration::from_secs(600)), "10m");
        assert_eq!(seconds(Duration::from_secs(90)), "1m30s");
        assert_eq!(seconds(Duration::ZERO), "0s");
    }
}

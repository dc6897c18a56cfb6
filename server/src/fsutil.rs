//! Every filesystem write of the server goes through here.
//!
//! Repository files must survive a crash at any instant and be readable by any static
//! web server, so a write is: temp file in the destination's directory, write, fsync,
//! chmod, rename into place, fsync the directory. Directories get 0755 and files 0644
//! explicitly, whatever the process umask is.

use std::fs::{self, File, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use tempfile::NamedTempFile;

use crate::error::{Error, Result, io_err};

/// Mode of every repository file.
pub const FILE_MODE: u32 = 0o644;
/// Mode of every repository directory.
pub const DIR_MODE: u32 = 0o755;

/// What to do when the destination already exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// Atomically replace it (channel heads).
    Replace,
    /// Leave it and drop the new copy: content-addressed objects with the same name
    /// have the same bytes.
    KeepExisting,
    /// Fail with `AlreadyExists` (secret keys).
    Refuse,
}

/// Creates `path` and any missing parents, giving each directory it creates `mode`.
pub fn ensure_dir(path: &Path, mode: u32) -> Result<()> {
    if path.is_dir() {
        return Ok(());
    }
    if let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
    {
        ensure_dir(parent, mode)?;
    }
    match fs::create_dir(path) {
        Ok(()) => fs::set_permissions(path, Permissions::from_mode(mode))
            .map_err(io_err("set permissions of", path)),
        // Another publisher may have created it in the meantime.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        Err(e) => Err(io_err("create directory", path)(e)),
    }
}

/// A new temp file in `dir` (created 0755 if missing), named so that it can never be
/// mistaken for a repository path.
pub fn temp_in(dir: &Path) -> Result<NamedTempFile> {
    ensure_dir(dir, DIR_MODE)?;
    tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(io_err("create a temporary file in", dir))
}

/// Syncs `tmp`, gives it `mode` and renames it to `dest` (same directory as `tmp`).
/// Returns whether the file was placed (false when [`Place::KeepExisting`] kept an
/// existing file).
pub fn persist(tmp: NamedTempFile, dest: &Path, mode: u32, place: Place) -> Result<bool> {
    tmp.as_file()
        .sync_all()
        .map_err(io_err("sync", tmp.path()))?;
    fs::set_permissions(tmp.path(), Permissions::from_mode(mode))
        .map_err(io_err("set permissions of", tmp.path()))?;
    crash_point!("server::persist::synced");
    let placed = match place {
        Place::Replace => tmp
            .persist(dest)
            .map(|_| true)
            .map_err(|e| io_err("rename into", dest)(e.error))?,
        Place::KeepExisting | Place::Refuse => match tmp.persist_noclobber(dest) {
            Ok(_) => true,
            Err(e) if e.error.kind() == io::ErrorKind::AlreadyExists => {
                if place == Place::Refuse {
                    return Err(io_err("create", dest)(e.error));
                }
                match refresh_time(dest) {
                    Ok(()) => false,
                    // `gc` removed the old copy between the two calls: place ours.
                    Err(t) if t.kind() == io::ErrorKind::NotFound => e
                        .file
                        .persist_noclobber(dest)
                        .map(|_| true)
                        .map_err(|e| io_err("rename into", dest)(e.error))?,
                    // Another user's file: it may age out under gc's grace period.
                    Err(t) if t.kind() == io::ErrorKind::PermissionDenied => {
                        tracing::warn!(
                            "cannot refresh the time of {} (another user's file): {t}",
                            dest.display()
                        );
                        false
                    }
                    Err(t) => return Err(io_err("refresh the time of", dest)(t)),
                }
            }
            Err(e) => return Err(io_err("rename into", dest)(e.error)),
        },
    };
    crash_point!("server::persist::placed");
    if let Some(dir) = dest.parent() {
        sync_dir(dir)?;
    }
    Ok(placed)
}

/// Sets the modification time of the existing file `path` to now. A kept object is
/// about to be named again; `gc` deletes unreferenced objects by age, so an old copy
/// a publish reuses must look as new as one it uploads (docs/STORAGE.md, "gc").
pub fn refresh_time(path: &Path) -> io::Result<()> {
    File::open(path)?.set_modified(std::time::SystemTime::now())
}

/// Writes `bytes` to `dest` atomically (see the module docs).
pub fn write_atomic(dest: &Path, bytes: &[u8], mode: u32, place: Place) -> Result<bool> {
    let dir = parent_of(dest);
    let mut tmp = temp_in(dir)?;
    tmp.write_all(bytes).map_err(io_err("write", tmp.path()))?;
    crash_point!("server::write_atomic::temp_written");
    persist(tmp, dest, mode, place)
}

/// Opens a file for reading.
pub fn open(path: &Path) -> Result<File> {
    File::open(path).map_err(io_err("open", path))
}

/// Reads a whole file of at most `limit` bytes; `None` if it does not exist.
pub fn read_limited(path: &Path, limit: u64) -> Result<Option<Vec<u8>>> {
    match read_small(path, limit) {
        Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => Ok(None),
        other => other.map(Some),
    }
}

/// Reads a whole file of at most `limit` bytes that must exist.
pub fn read_small(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let len = fs::metadata(path).map_err(io_err("read", path))?.len();
    if len > limit {
        return Err(Error::Unsupported {
            path: path.to_path_buf(),
            reason: format!("{len} bytes, more than the {limit} allowed"),
        });
    }
    fs::read(path).map_err(io_err("read", path))
}

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Makes a rename in `dir` durable.
fn sync_dir(dir: &Path) -> Result<()> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync directory", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn atomic_writes_set_modes_and_respect_place() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("a/b/file");
        assert!(write_atomic(&dest, b"one", FILE_MODE, Place::Replace).unwrap());
        assert_eq!(mode(&dest), 0o644);
        assert_eq!(mode(&dir.path().join("a")), 0o755);
        assert_eq!(mode(&dir.path().join("a/b")), 0o755);

        assert!(!write_atomic(&dest, b"two", FILE_MODE, Place::KeepExisting).unwrap());
        assert_eq!(fs::read(&dest).unwrap(), b"one");
        assert!(write_atomic(&dest, b"two", FILE_MODE, Place::Refuse).is_err());
        assert!(write_atomic(&dest, b"two", FILE_MODE, Place::Replace).unwrap());
        assert_eq!(fs::read(&dest).unwrap(), b"two");
        // No temp files are left behind.
        assert_eq!(fs::read_dir(dir.path().join("a/b")).unwrap().count(), 1);
    }

    #[test]
    fn a_kept_file_looks_as_new_as_a_placed_one_to_gc() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("object");
        assert!(write_atomic(&dest, b"same", FILE_MODE, Place::KeepExisting).unwrap());
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3 * 86400);
        File::open(&dest).unwrap().set_modified(old).unwrap();
        assert!(!write_atomic(&dest, b"same", FILE_MODE, Place::KeepExisting).unwrap());
        let age = fs::metadata(&dest)
            .unwrap()
            .modified()
            .unwrap()
            .elapsed()
            .unwrap();
        assert!(age < std::time::Duration::from_secs(60), "{age:?}");
        assert_eq!(fs::read(&dest).unwrap(), b"same");
    }
}

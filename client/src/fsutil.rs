//! Filesystem effects that must survive a crash: atomic replacement, fsync of files
//! and directories, no-follow opens and tree removal.
//!
//! Everything that makes durable changes to an install root goes through here, so the
//! crash-safety argument ("a kill -9 at any instant leaves the previous release active")
//! only has to be made once: a file is either the old one or the complete new one,
//! because new content is written to a temporary name, fsynced, renamed over the old
//! name, and the directory holding both names is fsynced.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Error type of this module: the failing operation and path travel with the cause.
#[derive(Debug, thiserror::Error)]
#[error("{op} {path}: {source}")]
pub struct FsError {
    pub op: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// Attaches an operation name and a path to an `io::Error`.
pub fn ctx<T>(op: &'static str, path: &Path, r: io::Result<T>) -> Result<T, FsError> {
    r.map_err(|source| FsError {
        op,
        path: path.to_path_buf(),
        source,
    })
}

/// Replaces `path` with `bytes` so that readers and crashes see either the old or the
/// new content, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FsError> {
    write_atomic_mode(path, bytes, 0o644)
}

/// [`write_atomic`] with the permission bits of the new file (`0o600` for a secret:
/// the file never exists with wider ones).
pub fn write_atomic_mode(path: &Path, bytes: &[u8], mode: u32) -> Result<(), FsError> {
    let dir = parent_of(path);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.unwrap_or_default(),
        std::process::id()
    ));
    let _ = fs::remove_file(&tmp);
    let mut f = ctx(
        "creating",
        &tmp,
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp),
    )?;
    ctx("writing", &tmp, f.write_all(bytes))?;
    ctx("syncing", &tmp, f.sync_all())?;
    crash_point!("client::write_atomic::temp_written");
    drop(f);
    ctx("renaming", path, fs::rename(&tmp, path))?;
    crash_point!("client::write_atomic::renamed");
    fsync_dir(dir)
}

/// Appends one line and syncs it: used for the append-only history log.
pub fn append_line(path: &Path, line: &str) -> Result<(), FsError> {
    let mut f = ctx(
        "opening",
        path,
        OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path),
    )?;
    let mut buf = line.as_bytes().to_vec();
    buf.push(b'\n');
    // One write call: O_APPEND makes it land as a unit after any earlier line.
    ctx("appending to", path, f.write_all(&buf))?;
    crash_point!("client::append_line::written");
    ctx("syncing", path, f.sync_data())
}

/// Makes a directory's entries (new names, renames, removals) durable.
pub fn fsync_dir(dir: &Path) -> Result<(), FsError> {
    crash_point!("client::fsync_dir");
    let f = ctx("opening directory", dir, File::open(dir))?;
    ctx("syncing directory", dir, f.sync_all())
}

/// Starts writing `len` bytes of `file` from `offset` out to the disk without waiting
/// (`sync_file_range` with `SYNC_FILE_RANGE_WRITE`), so that the disk works while the
/// tree is still being built and the one [`sync_filesystem`] at the end has less left
/// to wait for. Only a hint: durability still comes from that sync, so a failure here
/// is ignored.
pub fn start_writeback(file: &File, offset: u64, len: u64) {
    // SAFETY: sync_file_range only reads the descriptor, which `file` keeps open.
    #[allow(unsafe_code)]
    unsafe {
        libc::sync_file_range(
            std::os::fd::AsRawFd::as_raw_fd(file),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

/// Makes everything written to the filesystem holding `dir` durable: one call for a
/// whole new tree instead of an fsync per file and directory. Writeback errors of
/// files already closed are reported (Linux ≥ 5.8), so a tree is only renamed into
/// place once all its bytes reached the disk.
pub fn sync_filesystem(dir: &Path) -> Result<(), FsError> {
    let f = ctx("opening directory", dir, File::open(dir))?;
    // SAFETY: syncfs only reads the descriptor, which `f` keeps open.
    #[allow(unsafe_code)]
    let r = unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&f)) };
    ctx(
        "syncing the filesystem of",
        dir,
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        },
    )
}

/// Gives bytes `offset..offset + len` of `file` back to the filesystem (a hole that
/// reads as zeros; the size stays). Dirty pages in it are dropped unwritten, which is
/// the point: a consumed download is not written out by the next sync. Filesystems
/// without holes answer an error the caller may ignore.
pub fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let (Ok(off), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    };
    // SAFETY: fallocate only reads the descriptor, which `file` keeps open.
    #[allow(unsafe_code)]
    let r = unsafe {
        libc::fallocate(
            std::os::fd::AsRawFd::as_raw_fd(file),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            off,
            len,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Where the first hole of `file` starts: its size when it has none (or the
/// filesystem cannot tell).
pub fn first_hole(file: &File) -> io::Result<u64> {
    let size = file.metadata()?.len();
    // SAFETY: lseek only reads the descriptor, which `file` keeps open; the offset it
    // moves is not used by anyone reading with pread.
    #[allow(unsafe_code)]
    let r = unsafe { libc::lseek(std::os::fd::AsRawFd::as_raw_fd(file), 0, libc::SEEK_HOLE) };
    Ok(u64::try_from(r).map_or(size, |hole| hole.min(size)))
}

/// Creates a new regular file, failing if anything (including a symlink) has the name.
pub fn create_new_file(path: &Path) -> Result<File, FsError> {
    ctx(
        "creating",
        path,
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path),
    )
}

/// Opens an existing regular file for reading without following a final symlink.
pub fn open_nofollow(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Sets the permission bits of `path`.
pub fn set_mode(path: &Path, mode: u32) -> Result<(), FsError> {
    ctx(
        "setting mode of",
        path,
        fs::set_permissions(path, fs::Permissions::from_mode(mode)),
    )
}

/// Removes a tree that may contain read-only directories (a release may ship a
/// `0555` directory, whose entries cannot be unlinked until it is writable again).
/// Symlinks are removed, never followed. A missing path is not an error.
pub fn remove_tree(path: &Path) -> Result<(), FsError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return ctx("inspecting", path, Err(e)),
    };
    if !meta.is_dir() {
        return ctx("removing", path, fs::remove_file(path));
    }
    if meta.permissions().mode() & 0o700 != 0o700 {
        set_mode(path, 0o700)?;
    }
    for entry in ctx("listing", path, fs::read_dir(path))? {
        let entry = ctx("listing", path, entry)?;
        remove_tree(&entry.path())?;
        crash_point!("client::remove_tree::entry_removed");
    }
    ctx("removing", path, fs::remove_dir(path))
}

/// Creates `dir` and its parents if missing.
pub fn create_dir_all(dir: &Path) -> Result<(), FsError> {
    ctx("creating directory", dir, fs::create_dir_all(dir))
}

/// The folder holding `path` (`.` for a bare file name).
pub fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_remove_tree_handles_readonly_dirs() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("state.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::read_dir(t.path()).unwrap().count(), 1, "no temp left");

        let tree = t.path().join("tree");
        fs::create_dir_all(tree.join("ro/sub")).unwrap();
        fs::write(tree.join("ro/sub/f"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc", tree.join("ro/link")).unwrap();
        set_mode(&tree.join("ro/sub"), 0o555).unwrap();
        set_mode(&tree.join("ro"), 0o555).unwrap();
        remove_tree(&tree).unwrap();
        assert!(!tree.exists());
        assert!(Path::new("/etc").exists(), "symlink not followed");
        remove_tree(&tree).unwrap();
    }
}

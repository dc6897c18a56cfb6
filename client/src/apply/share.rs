//! Unchanged files cost nothing: a file of the new release whose content a retained
//! release already holds is shared with it on disk instead of written again.
//!
//! A reflink (`FICLONE`: a new inode sharing the old one's extents, copy-on-write) is
//! tried first where the filesystem offers it (btrfs, XFS); otherwise a hard link to
//! the retained file. A hard link shares the inode itself, so an application editing
//! the file in place would change every release holding it: that is why release
//! files are installed without write permission ([`installed_mode`]), and why a
//! rollback checks the content of every shared file before switching to it
//! (`check::Depth::Shared`).
//!
//! Sharing is decided on the bytes, never on names: the shared file is hashed through
//! its new name right after the link, so what the new tree holds is what the signed
//! manifest says, whatever happened to the retained file before — or, for a hard link
//! to a file this update already hashed whole, its inode, size and mtime are compared
//! with what they were just before that hash (a write in between moves the mtime).

use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use ferry_format::id::Digest;

use super::ApplyError;
use super::check::hash_file;
use super::source::{Copy, Stamp};
use crate::fsutil::{self, ctx};

/// The mode a release file gets on disk: the manifest's, without write permission,
/// so that a file shared between releases is not edited in place by accident.
pub fn installed_mode(mode: u32) -> u32 {
    mode & !0o222
}

/// Whether `on_disk` (the mode bits of an installed file) is what the manifest's
/// `mode` installs: read-only, or as signed for trees installed before files were
/// made read-only.
pub fn mode_matches(on_disk: u32, mode: u32) -> bool {
    on_disk == installed_mode(mode) || on_disk == mode
}

/// How a file came to be in the new tree without being written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shared {
    /// A new inode sharing the retained file's extents.
    Reflinked,
    /// A second name for the retained file's inode.
    HardLinked,
}

/// Shares files of retained releases into a new tree; remembers whether the
/// filesystem takes reflinks so that a build asks once.
#[derive(Debug, Default)]
pub struct Sharer {
    no_reflink: bool,
    pub reflinked: u64,
    pub hard_linked: u64,
    /// Bytes of the files shared instead of written.
    pub bytes: u64,
}

impl Sharer {
    /// Puts a file of `size` bytes hashing to `hash` at `dest` (which must not exist)
    /// by sharing one of `copies`, with the installed mode of `mode`. `None` when no
    /// copy could be shared (missing, edited, another mode, another filesystem): the
    /// caller writes the file, and `dest` does not exist.
    pub fn share(
        &mut self,
        copies: &[Copy],
        size: u64,
        hash: &Digest,
        mode: u32,
        dest: &Path,
    ) -> Result<Option<Shared>, ApplyError> {
        let mode = installed_mode(mode);
        for copy in copies {
            let src = &copy.path;
            let Ok(file) = fsutil::open_nofollow(src) else {
                continue;
            };
            let Ok(meta) = file.metadata() else { continue };
            if !meta.is_file() || meta.len() != size {
                continue;
            }
            let how = if !self.no_reflink && self.reflink(&file, dest)? {
                fsutil::set_mode(dest, mode)?;
                Shared::Reflinked
            } else if meta.mode() & 0o7777 == mode {
                match fs::hard_link(src, dest) {
                    Ok(()) => Shared::HardLinked,
                    // Too many links, another filesystem, or a name that appeared:
                    // writing the file is always possible.
                    Err(_) => continue,
                }
            } else {
                continue;
            };
            // The bytes as they are now under the new name, whatever they were when
            // the plan was made: hashed again, unless this update hashed that very
            // inode and nothing wrote to it since (its stamp is unchanged).
            let unchanged = how == Shared::HardLinked
                && copy.hashed.is_some_and(|before| {
                    fs::symlink_metadata(dest).is_ok_and(|m| Stamp::of(&m) == before)
                });
            if unchanged || hash_file(dest).is_ok_and(|h| h == *hash) {
                match how {
                    Shared::Reflinked => self.reflinked += 1,
                    Shared::HardLinked => self.hard_linked += 1,
                }
                self.bytes += size;
                return Ok(Some(how));
            }
            ctx("removing", dest, fs::remove_file(dest))?;
        }
        Ok(None)
    }

    /// Clones `src` into a new file at `dest`; false (and no `dest`) when the
    /// filesystem does not clone.
    #[allow(unsafe_code)]
    fn reflink(&mut self, src: &File, dest: &Path) -> Result<bool, ApplyError> {
        let out = fsutil::create_new_file(dest)?;
        // SAFETY: FICLONE takes the source descriptor as its argument; both
        // descriptors are open for the duration of the call.
        let r = unsafe { libc::ioctl(out.as_raw_fd(), libc::FICLONE, src.as_raw_fd()) };
        if r == 0 {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        drop(out);
        ctx("removing", dest, fs::remove_file(dest))?;
        // EOPNOTSUPP/ENOTTY/EINVAL: this filesystem does not clone, do not ask again;
        // EXDEV and others may be particular to this source.
        if matches!(
            err.raw_os_error(),
            Some(libc::EOPNOTSUPP | libc::ENOTTY | libc::EINVAL | libc::ENOSYS)
        ) {
            self.no_reflink = true;
        }
        Ok(false)
    }
}

/// Whether `meta` is a file shared with another name (another release).
pub fn is_shared(meta: &fs::Metadata) -> bool {
    meta.nlink() > 1
}

/// The permission bits of `meta`.
pub fn mode_of(meta: &fs::Metadata) -> u32 {
    meta.permissions().mode() & 0o7777
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn copy(path: &Path) -> Copy {
        Copy {
            path: path.to_path_buf(),
            hashed: None,
        }
    }

    fn put(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> PathBuf {
        let p = dir.join(name);
        fs::write(&p, bytes).unwrap();
        fsutil::set_mode(&p, mode).unwrap();
        p
    }

    #[test]
    fn an_unchanged_read_only_file_is_shared_and_hashed_through_its_new_name() {
        let t = tempfile::tempdir().unwrap();
        let bytes = b"unchanged library".repeat(1000);
        let old = put(t.path(), "old", &bytes, 0o555);
        let dest = t.path().join("new");
        let mut s = Sharer::default();
        let how = s
            .share(
                &[copy(&old)],
                bytes.len() as u64,
                &Digest::of(&bytes),
                0o755,
                &dest,
            )
            .unwrap();
        assert!(how.is_some(), "shared");
        assert_eq!(fs::read(&dest).unwrap(), bytes);
        assert_eq!(mode_of(&fs::metadata(&dest).unwrap()), 0o555);
        assert_eq!(s.bytes, bytes.len() as u64);
        if how == Some(Shared::HardLinked) {
            assert!(is_shared(&fs::metadata(&old).unwrap()));
        }
    }

    #[test]
    fn an_edited_copy_or_another_mode_is_not_shared_and_leaves_no_file() {
        let t = tempfile::tempdir().unwrap();
        let bytes = b"signed bytes".repeat(100);
        let edited = put(t.path(), "edited", &b"edited bytes".repeat(100), 0o444);
        let writable = put(t.path(), "writable", &bytes, 0o644);
        let dest = t.path().join("new");
        let mut s = Sharer::default();
        let hash = Digest::of(&bytes);
        let how = s
            .share(
                &[copy(&edited), copy(&writable)],
                bytes.len() as u64,
                &hash,
                0o644,
                &dest,
            )
            .unwrap();
        // A reflink gives the new file its own mode, so the writable copy may be
        // cloned; a hard link never, and the edited copy never either way.
        match how {
            None => assert!(!dest.exists(), "nothing left at the new name"),
            Some(h) => {
                assert_eq!(h, Shared::Reflinked);
                assert_eq!(fs::read(&dest).unwrap(), bytes);
            }
        }
        let missing = t.path().join("missing");
        assert_eq!(
            s.share(&[copy(&missing)], 1, &hash, 0o644, &t.path().join("n2"))
                .unwrap(),
            None
        );
    }

    #[test]
    fn a_copy_hashed_by_this_update_is_linked_without_a_second_hash_unless_written_since() {
        let t = tempfile::tempdir().unwrap();
        let bytes = b"retained release file".repeat(500);
        let hash = Digest::of(&bytes);
        let old = put(t.path(), "old", &bytes, 0o444);
        // Installed long ago, as a retained release's files are.
        let past = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1 << 30);
        fs::File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(past)
            .unwrap();
        let stamped = Copy {
            path: old.clone(),
            hashed: Some(Stamp::of(&fs::metadata(&old).unwrap())),
        };
        let mut s = Sharer::default();
        let first = t.path().join("first");
        assert!(
            s.share(
                std::slice::from_ref(&stamped),
                bytes.len() as u64,
                &hash,
                0o644,
                &first
            )
            .unwrap()
            .is_some()
        );
        assert_eq!(fs::read(&first).unwrap(), bytes);

        // Written after it was hashed (same size): the stamp no longer matches, the
        // bytes are hashed again and refused.
        std::os::unix::fs::FileExt::write_all_at(
            &fs::File::options().write(true).open(&old).unwrap(),
            b"edited",
            10,
        )
        .unwrap();
        let second = t.path().join("second");
        let how = s
            .share(&[stamped], bytes.len() as u64, &hash, 0o644, &second)
            .unwrap();
        assert_eq!(how, None, "an edited copy is never shared");
        assert!(!second.exists());
    }
}

//! Disk space for an update: checked against the plan before anything large is
//! downloaded, and a disk that fills up anyway is cleaned up after.
//!
//! An update needs room for its downloads (range files or a diff object), the chunks
//! a diff produces (the spool), and the new release tree, all at once in staging
//! under `ROOT/.ferry/` before the tree is renamed into `versions/` (same filesystem,
//! no copy). What staging already holds from an interrupted run is either reused or
//! removed before the build, so it counts as available. Each file and folder may take
//! up to one more block than its bytes, and a fixed margin covers the manifest, state
//! and history writes.
//!
//! The estimate can be wrong (another program writes at the same time), so a write
//! that fails with ENOSPC is also recognised: staging is removed to give the space
//! back, and the error says that the active release was left as it was.

use std::io;
use std::path::{Path, PathBuf};

use ferry_format::manifest::Manifest;

use super::activate::current_version;
use super::layout::Layout;
use crate::fsutil;

/// Room kept beyond the estimate for the manifest, state and history writes.
pub const MARGIN: u64 = 1 << 20;

/// What an update will write, in bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Needs {
    pub version: String,
    /// Range files or the diff object, as downloaded.
    pub download: u64,
    /// Chunks a diff produces, kept until the tree is built.
    pub spool: u64,
    /// The release's file bytes.
    pub tree: u64,
    /// Files, folders and links in the release: each may take one block more.
    pub entries: u64,
}

impl Needs {
    /// Building `manifest` after downloading `download` bytes, with `reused` bytes
    /// taken from local releases; `with_diff` when a diff spools the other chunks.
    pub fn build(manifest: &Manifest, download: u64, reused: u64, with_diff: bool) -> Needs {
        let chunk_bytes: u64 = manifest.chunks.iter().map(|c| u64::from(c.size)).sum();
        Needs {
            version: manifest.version.clone(),
            download,
            spool: if with_diff {
                chunk_bytes.saturating_sub(reused)
            } else {
                0
            },
            tree: manifest.total_file_bytes(),
            entries: manifest.entries.len() as u64,
        }
    }
}

/// Not enough room, or the room could not be measured.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpaceError {
    #[error(
        "not enough disk space to install {version} in {path}: it needs {} ({needed} bytes: downloads {}, diff spool {}, release tree {} plus {} of block overhead and margin), but only {} ({available} bytes) are available there; nothing large was downloaded and the active release is unchanged (free some space, or lower --keep to retain fewer releases)",
        mb(*needed), mb(*download), mb(*spool), mb(*tree), mb(*overhead), mb(*available)
    )]
    NotEnoughSpace {
        version: String,
        path: PathBuf,
        needed: u64,
        available: u64,
        download: u64,
        spool: u64,
        tree: u64,
        overhead: u64,
    },
    #[error(
        "not enough free inodes to install {version} in {path}: it has {needed} files and folders, but only {available} more fit on that filesystem; nothing large was downloaded and the active release is unchanged"
    )]
    NotEnoughInodes {
        version: String,
        path: PathBuf,
        needed: u64,
        available: u64,
    },
    #[error("measuring free space of {path}: {source}")]
    Statvfs {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Refuses `needs` when the filesystem holding the root has less room available
/// (to unprivileged users: the reserved blocks are the system's last resort).
/// Bytes available to unprivileged users on the filesystem holding `path`.
pub fn available(path: &Path) -> Option<u64> {
    let st = rustix::fs::statvfs(path).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize.max(512)))
}

pub fn check_room(layout: &Layout, needs: &Needs) -> Result<(), SpaceError> {
    let path = layout.root().to_path_buf();
    let st = rustix::fs::statvfs(&path).map_err(|e| SpaceError::Statvfs {
        path: path.clone(),
        source: e.into(),
    })?;
    let block = st.f_frsize.max(512);
    let available = st.f_bavail.saturating_mul(block);
    let overhead = needs.entries.saturating_mul(block).saturating_add(MARGIN);
    let needed = needs
        .download
        .saturating_add(needs.spool)
        .saturating_add(needs.tree)
        .saturating_add(overhead);
    let staged = tree_bytes(&layout.staging());
    tracing::info!(
        "disk space for {}: {needed} bytes needed, {staged} already in staging, {available} available",
        needs.version
    );
    if needed.saturating_sub(staged) > available {
        return Err(SpaceError::NotEnoughSpace {
            version: needs.version.clone(),
            path,
            needed,
            available,
            download: needs.download,
            spool: needs.spool,
            tree: needs.tree,
            overhead,
        });
    }
    // Some filesystems report no inode limit at all (0 total).
    if st.f_files > 0 && needs.entries > st.f_favail {
        return Err(SpaceError::NotEnoughInodes {
            version: needs.version.clone(),
            path,
            needed: needs.entries,
            available: st.f_favail,
        });
    }
    Ok(())
}

/// The disk filled up while an update wrote to staging.
#[derive(Debug, thiserror::Error)]
#[error(
    "the disk holding {root} is full: installing {version} stopped, {staging} was removed{cleanup} to give the space back, and {active}"
)]
pub struct DiskFull {
    root: PathBuf,
    version: String,
    staging: PathBuf,
    cleanup: String,
    active: String,
}

/// Whether a write in `err`'s chain failed for lack of space (or quota).
pub fn is_disk_full(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<io::Error>().is_some_and(|io| {
            io.kind() == io::ErrorKind::StorageFull
                || matches!(io.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
        })
    })
}

/// Turns a failed install of `version` that ran out of disk into a [`DiskFull`]
/// error, after removing staging; any other error passes unchanged. `active_before`
/// is where `current` pointed when the install started; what the message says about
/// the active release is read from disk, not assumed.
pub fn after_failure(
    layout: &Layout,
    version: &str,
    active_before: Option<String>,
    err: anyhow::Error,
) -> anyhow::Error {
    if !is_disk_full(&err) {
        return err;
    }
    let staging = layout.staging();
    let cleanup = match fsutil::remove_tree(&staging) {
        Ok(()) => String::new(),
        Err(e) => format!(" (partly: {e})"),
    };
    let now = current_version(layout);
    let active = match (&active_before, &now) {
        (Some(a), Some(n)) if a == n => format!("the active release {a} is unchanged"),
        (None, None) => "nothing was active and nothing is".to_string(),
        (_, Some(n)) => format!("the active release is now {n}"),
        (_, None) => "no release is active".to_string(),
    };
    err.context(DiskFull {
        root: layout.root().to_path_buf(),
        version: version.to_string(),
        staging,
        cleanup,
        active,
    })
}

/// Bytes of the files under `dir` (0 if it does not exist).
pub fn tree_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => tree_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// `1.8 MB`.
fn mb(n: u64) -> String {
    format!("{:.1} MB", n as f64 / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn needs(download: u64) -> Needs {
        Needs {
            version: "2.0.0".into(),
            download,
            spool: 0,
            tree: 1000,
            entries: 3,
        }
    }

    #[test]
    fn a_plan_larger_than_the_filesystem_is_refused_with_the_numbers() {
        let t = tempfile::tempdir().unwrap();
        let layout = Layout::new(t.path());
        check_room(&layout, &needs(1000)).unwrap();
        let e = check_room(&layout, &needs(u64::MAX / 2)).unwrap_err();
        let SpaceError::NotEnoughSpace {
            needed, available, ..
        } = &e
        else {
            panic!("{e}");
        };
        assert!(needed > available);
        let msg = e.to_string();
        for part in [
            "install 2.0.0",
            &t.path().display().to_string(),
            &format!("{needed} bytes"),
            &format!("{available} bytes"),
            "active release is unchanged",
        ] {
            assert!(msg.contains(part), "{part:?} missing from: {msg}");
        }
    }

    #[test]
    fn only_out_of_space_errors_are_disk_full() {
        let full = anyhow::Error::new(io::Error::from_raw_os_error(libc::ENOSPC))
            .context("writing x")
            .context("building 2.0.0");
        assert!(is_disk_full(&full));
        let other = anyhow::Error::new(io::Error::from_raw_os_error(libc::EACCES));
        assert!(!is_disk_full(&other));

        let t = tempfile::tempdir().unwrap();
        let layout = Layout::new(t.path());
        std::fs::create_dir_all(layout.downloads()).unwrap();
        std::fs::write(layout.downloads().join("x.part"), b"abc").unwrap();
        let e = after_failure(&layout, "2.0.0", None, other);
        assert!(!e.to_string().contains("full"));
        assert!(layout.downloads().exists(), "other errors keep staging");
        let e = after_failure(&layout, "2.0.0", None, full);
        assert!(!layout.staging().exists());
        let msg = format!("{e:#}");
        assert!(msg.contains("is full"), "{msg}");
        assert!(msg.contains("No space left on device"), "{msg}");
    }
}

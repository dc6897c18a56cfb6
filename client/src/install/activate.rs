//! Switching `ROOT/current` atomically.
//!
//! A new symlink is made under a temporary name and renamed over `current`: rename(2)
//! replaces the old link in one step, so every reader (and a crash at any instant)
//! sees either the old release or the new one. The root directory is then fsynced so
//! the switch itself survives a power cut.

use std::fs;
use std::io;
use std::path::PathBuf;

use super::layout::Layout;
use crate::fsutil::{self, FsError};

/// Points `ROOT/current` at `versions/<folder>`.
pub fn switch_current(layout: &Layout, folder: &str) -> Result<(), FsError> {
    let tmp = layout.current_tmp();
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return fsutil::ctx("removing", &tmp, Err(e)),
    }
    fsutil::ctx(
        "creating symlink",
        &tmp,
        std::os::unix::fs::symlink(Layout::current_target(folder), &tmp),
    )?;
    crash_point!("client::switch_current::link_made");
    fsutil::ctx(
        "renaming",
        &layout.current(),
        fs::rename(&tmp, layout.current()),
    )?;
    crash_point!("client::switch_current::renamed");
    fsutil::fsync_dir(layout.root())
}

/// The folder of `versions/` that `current` points to, if it is a symlink there.
pub fn current_folder(layout: &Layout) -> Option<String> {
    let target: PathBuf = fs::read_link(layout.current()).ok()?;
    let mut parts = target.components();
    let first = parts.next()?;
    if first.as_os_str() != "versions" {
        return None;
    }
    let v = parts.next()?.as_os_str().to_str()?.to_string();
    parts.next().is_none().then_some(v)
}

/// The version `current` points to (the version of its folder).
pub fn current_version(layout: &Layout) -> Option<String> {
    current_folder(layout).map(|f| Layout::folder_version(&f).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switch_is_a_rename_of_a_symlink() {
        let t = tempfile::tempdir().unwrap();
        let layout = Layout::new(t.path());
        for v in ["1.0", "2.0", "2.0+2"] {
            fs::create_dir_all(layout.release_dir(v)).unwrap();
            fs::write(layout.release_dir(v).join("f"), v).unwrap();
        }
        assert_eq!(current_version(&layout), None);
        switch_current(&layout, "1.0").unwrap();
        assert_eq!(current_version(&layout).as_deref(), Some("1.0"));
        assert_eq!(fs::read(layout.current().join("f")).unwrap(), b"1.0");
        // A stale temporary link from a crashed switch is replaced.
        std::os::unix::fs::symlink("nowhere", layout.current_tmp()).unwrap();
        switch_current(&layout, "2.0").unwrap();
        assert_eq!(current_version(&layout).as_deref(), Some("2.0"));
        assert_eq!(fs::read(layout.current().join("f")).unwrap(), b"2.0");
        assert!(fs::symlink_metadata(layout.current_tmp()).is_err());
        assert!(fs::symlink_metadata(layout.current()).unwrap().is_symlink());
        // A repaired copy: the folder differs, the version is the same.
        switch_current(&layout, "2.0+2").unwrap();
        assert_eq!(current_folder(&layout).as_deref(), Some("2.0+2"));
        assert_eq!(current_version(&layout).as_deref(), Some("2.0"));
        assert_eq!(fs::read(layout.current().join("f")).unwrap(), b"2.0+2");
    }
}

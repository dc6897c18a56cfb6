//! The source tree walk: what a release contains, in manifest order.
//!
//! Symlinks are recorded, never followed, so a link pointing outside the tree cannot
//! pull outside files into a release. Names must be UTF-8 because manifest paths are;
//! sockets, fifos and devices have no meaning in a release and are refused.

use std::fs;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ferry_format::manifest::MODE_MASK;
use ferry_format::path::{check_path, check_symlink_target};

use crate::error::{Error, Result, io_err};

/// One thing found in the source tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceEntry {
    /// Manifest path: relative, `/`-separated.
    pub rel: String,
    /// Where it is on disk.
    pub abs: PathBuf,
    pub kind: SourceKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceKind {
    Dir {
        mode: u32,
    },
    /// `size`: its length when listed, for the progress display's total.
    File {
        mode: u32,
        size: u64,
    },
    Symlink {
        target: String,
    },
}

/// Lists `root`: a regular file gives one entry named after it; a directory gives its
/// contents (not itself), sorted by path bytes as the manifest requires.
pub fn walk(root: &Path) -> Result<Vec<SourceEntry>> {
    // The root is what the user named, so it is followed if it is a link.
    let meta = fs::metadata(root).map_err(io_err("read", root))?;
    if meta.is_file() {
        let name = root
            .file_name()
            .ok_or_else(|| unsupported(root, "has no file name".into()))?;
        let rel = utf8(root, name)?;
        return Ok(vec![entry_for(root, rel.to_string(), &meta)?]);
    }
    if !meta.is_dir() {
        return Err(unsupported(
            root,
            "is neither a regular file nor a directory".into(),
        ));
    }
    let mut out = Vec::new();
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        for item in fs::read_dir(&dir).map_err(io_err("list", &dir))? {
            let item = item.map_err(io_err("list", &dir))?;
            let abs = item.path();
            let name = item.file_name();
            let rel = format!("{prefix}{}", utf8(&abs, &name)?);
            let meta = fs::symlink_metadata(&abs).map_err(io_err("read", &abs))?;
            let e = entry_for(&abs, rel, &meta)?;
            if matches!(e.kind, SourceKind::Dir { .. }) {
                stack.push((abs, format!("{}/", e.rel)));
            }
            out.push(e);
        }
    }
    out.sort_by(|a, b| a.rel.as_bytes().cmp(b.rel.as_bytes()));
    Ok(out)
}

fn entry_for(abs: &Path, rel: String, meta: &fs::Metadata) -> Result<SourceEntry> {
    check_path(&rel).map_err(|e| unsupported(abs, format!("cannot be a release path: {e}")))?;
    let ft = meta.file_type();
    let mode = meta.permissions().mode() & MODE_MASK;
    let kind = if ft.is_dir() {
        SourceKind::Dir { mode }
    } else if ft.is_file() {
        SourceKind::File {
            mode,
            size: meta.len(),
        }
    } else if ft.is_symlink() {
        let target = fs::read_link(abs).map_err(io_err("read symlink", abs))?;
        let target = target
            .to_str()
            .ok_or_else(|| unsupported(abs, "symlink target is not UTF-8".into()))?
            .to_string();
        check_symlink_target(&rel, &target).map_err(|e| {
            unsupported(
                abs,
                format!("symlink to {target:?} is not allowed in a release: {e}"),
            )
        })?;
        SourceKind::Symlink { target }
    } else {
        let what = if ft.is_socket() {
            "a socket"
        } else if ft.is_fifo() {
            "a fifo"
        } else if ft.is_block_device() || ft.is_char_device() {
            "a device"
        } else {
            "of an unknown file type"
        };
        return Err(unsupported(
            abs,
            format!("is {what}; releases hold only files, directories and symlinks"),
        ));
    };
    Ok(SourceEntry {
        rel,
        abs: abs.to_path_buf(),
        kind,
    })
}

fn utf8<'a>(abs: &Path, name: &'a std::ffi::OsStr) -> Result<&'a str> {
    name.to_str()
        .ok_or_else(|| unsupported(abs, "name is not UTF-8; release paths must be".into()))
}

fn unsupported(path: &Path, reason: String) -> Error {
    Error::Unsupported {
        path: path.to_path_buf(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn sorted_by_bytes_links_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        fs::create_dir(r.join("a")).unwrap();
        fs::write(r.join("a/x"), b"x").unwrap();
        fs::write(r.join("a-b"), b"y").unwrap();
        symlink("a/x", r.join("link")).unwrap();
        symlink("/etc", r.join("a/outside")).unwrap();
        let e = walk(r);
        // The absolute link is refused, naming it.
        let msg = e.unwrap_err().to_string();
        assert!(msg.contains("outside"), "{msg}");
        fs::remove_file(r.join("a/outside")).unwrap();

        let e = walk(r).unwrap();
        let names: Vec<&str> = e.iter().map(|e| e.rel.as_str()).collect();
        assert_eq!(names, ["a", "a-b", "a/x", "link"]);
        assert_eq!(
            e[3].kind,
            SourceKind::Symlink {
                target: "a/x".into()
            }
        );
    }

    #[test]
    fn single_file_and_fifo() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("app.bin");
        fs::write(&f, b"z").unwrap();
        let e = walk(&f).unwrap();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].rel, "app.bin");
        assert!(matches!(e[0].kind, SourceKind::File { .. }));

        let status = std::process::Command::new("mkfifo")
            .arg(d.path().join("pipe"))
            .status();
        if status.is_ok_and(|s| s.success()) {
            let msg = walk(d.path()).unwrap_err().to_string();
            assert!(msg.contains("pipe") && msg.contains("fifo"), "{msg}");
        }
    }
}

//! Copying an application's own files from one release tree into a freshly built
//! one in staging, before it is renamed into `versions/`: the `carry` paths of the
//! active release on an update, every extra file of a damaged release on its repair.
//!
//! The source is only read. Nothing is followed: a symlink is copied as a symlink,
//! directories are entered by name from a directory that is not a link, and files
//! are opened with `O_NOFOLLOW`, so a link inside the app's data cannot make the
//! agent read or write outside the two trees. A path the new release already has is
//! left alone: the release wins.

use std::collections::HashSet;
use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::pattern::{Pattern, any_matches};
use crate::fsutil::{self, FsError, ctx};

/// What a copy did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CarryReport {
    /// Files, symlinks and directories created in the new tree.
    pub copied: usize,
    /// Paths not copied, with the reason (a file of the new release is in the way, a
    /// parent is not a directory there, a device or socket).
    pub skipped: Vec<String>,
}

/// The paths under `tree` that `patterns` select, relative to it: a matching
/// directory stands for everything under it, and a symlink is never descended into.
pub fn select(tree: &Path, patterns: &[Pattern]) -> Result<Vec<String>, FsError> {
    let mut out = Vec::new();
    if !patterns.is_empty() {
        walk(tree, "", patterns, &mut out)?;
    }
    out.sort();
    Ok(out)
}

fn walk(
    dir: &Path,
    prefix: &str,
    patterns: &[Pattern],
    out: &mut Vec<String>,
) -> Result<(), FsError> {
    for entry in ctx("listing", dir, fs::read_dir(dir))? {
        let entry = ctx("listing", dir, entry)?;
        let rel = format!("{prefix}{}", entry.file_name().to_string_lossy());
        let is_dir = ctx("inspecting", &entry.path(), entry.file_type())?.is_dir();
        if any_matches(patterns, &rel, is_dir) {
            out.push(rel);
        } else if is_dir {
            walk(&entry.path(), &format!("{rel}/"), patterns, out)?;
        }
    }
    Ok(())
}

/// Copies each of `paths` (relative, a trailing `/` allowed) from `from` into `to`,
/// with parents created as in `from`, modes preserved, every new file and directory
/// synced. `shipped` are the paths the source release itself shipped: a conflict on
/// one of those is expected (the new release has its own copy) and not reported.
pub fn copy_paths(
    from: &Path,
    to: &Path,
    paths: &[String],
    shipped: &HashSet<&str>,
) -> Result<CarryReport, FsError> {
    let mut c = Copier {
        report: CarryReport::default(),
        shipped,
        touched: Vec::new(),
        opened: Vec::new(),
    };
    let result = paths.iter().try_for_each(|p| {
        let rel = p.trim_end_matches('/');
        c.copy_path(from, to, rel)
    });
    // Directories made writable for the copy get their release mode back, even
    // after an error (the staging tree is then deleted anyway, which needs 0700).
    let restored = c.finish();
    result?;
    restored?;
    Ok(c.report)
}

struct Copier<'a> {
    report: CarryReport,
    shipped: &'a HashSet<&'a str>,
    /// Directories that got new entries: synced at the end.
    touched: Vec<PathBuf>,
    /// Directories of the new release opened for writing, with their release modes.
    opened: Vec<(PathBuf, u32)>,
}

impl Copier<'_> {
    fn skip(&mut self, rel: &str, why: &str) {
        self.report.skipped.push(format!("{rel}: {why}"));
    }

    fn copy_path(&mut self, from: &Path, to: &Path, rel: &str) -> Result<(), FsError> {
        let parts: Vec<&str> = rel.split('/').collect();
        let (name, parents) = parts.split_last().expect("split yields one part");
        let (mut src, mut dst) = (from.to_path_buf(), to.to_path_buf());
        for (i, part) in parents.iter().enumerate() {
            src.push(part);
            dst.push(part);
            // Only through real directories of the source, never a link swapped in.
            let src_meta = ctx("inspecting", &src, fs::symlink_metadata(&src))?;
            if !src_meta.is_dir() {
                self.skip(rel, "a parent is not a directory in the old release");
                return Ok(());
            }
            match fs::symlink_metadata(&dst) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    let at = parts[..=i].join("/");
                    self.skip(rel, &format!("{at} is not a directory in the new release"));
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    self.make_dir(&dst, src_meta.permissions().mode())?;
                }
                Err(e) => return ctx("inspecting", &dst, Err(e)),
            }
        }
        self.copy_entry(&src.join(name), &dst.join(name), rel)
    }

    fn copy_entry(&mut self, src: &Path, dst: &Path, rel: &str) -> Result<(), FsError> {
        let meta = match fs::symlink_metadata(src) {
            Ok(m) => m,
            // The application removed it meanwhile: nothing to carry.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return ctx("inspecting", src, Err(e)),
        };
        let mode = meta.permissions().mode() & 0o7777;
        match fs::symlink_metadata(dst) {
            Ok(d) if d.is_dir() && meta.is_dir() => return self.copy_children(src, dst, rel),
            Ok(_) => {
                if !self.shipped.contains(rel) {
                    self.skip(rel, "the new release has this path; kept the release's");
                }
                return Ok(());
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return ctx("inspecting", dst, Err(e)),
        }
        self.writable(dst.parent().expect("dst is inside the tree"))?;
        let ft = meta.file_type();
        if ft.is_dir() {
            self.make_dir(dst, mode)?;
            self.copy_children(src, dst, rel)?;
        } else if ft.is_file() {
            let mut input = ctx("opening", src, fsutil::open_nofollow(src))?;
            let mut output = fsutil::create_new_file(dst)?;
            ctx("copying to", dst, io::copy(&mut input, &mut output))?;
            fsutil::set_mode(dst, mode)?;
            ctx("syncing", dst, output.sync_all())?;
        } else if ft.is_symlink() {
            let target = ctx("reading link", src, fs::read_link(src))?;
            ctx(
                "creating symlink",
                dst,
                std::os::unix::fs::symlink(target, dst),
            )?;
        } else {
            self.skip(rel, "not a file, directory or symlink");
            return Ok(());
        }
        self.report.copied += 1;
        self.touch(dst);
        Ok(())
    }

    fn copy_children(&mut self, src: &Path, dst: &Path, rel: &str) -> Result<(), FsError> {
        let mut names: Vec<_> = ctx("listing", src, fs::read_dir(src))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()
            .map_err(|e| FsError {
                op: "listing",
                path: src.to_path_buf(),
                source: e,
            })?;
        names.sort();
        for name in names {
            let child = format!("{rel}/{}", name.to_string_lossy());
            self.copy_entry(&src.join(&name), &dst.join(&name), &child)?;
        }
        Ok(())
    }

    /// Creates `dir` (parent already writable) owner-accessible; its mode is set
    /// when the copy finishes.
    fn make_dir(&mut self, dir: &Path, mode: u32) -> Result<(), FsError> {
        self.writable(dir.parent().expect("inside the tree"))?;
        ctx(
            "creating directory",
            dir,
            DirBuilder::new().mode(0o700).create(dir),
        )?;
        self.opened.push((dir.to_path_buf(), mode & 0o7777));
        self.touch(dir);
        Ok(())
    }

    /// Makes a directory of the new tree owner-writable for the copy (a release may
    /// ship `0555` directories), remembering its mode.
    fn writable(&mut self, dir: &Path) -> Result<(), FsError> {
        if self.opened.iter().any(|(d, _)| d == dir) {
            return Ok(());
        }
        let mode = ctx("inspecting", dir, fs::symlink_metadata(dir))?
            .permissions()
            .mode()
            & 0o7777;
        if mode & 0o700 != 0o700 {
            fsutil::set_mode(dir, mode | 0o700)?;
        }
        self.opened.push((dir.to_path_buf(), mode));
        Ok(())
    }

    fn touch(&mut self, path: &Path) {
        if let Some(parent) = path.parent()
            && !self.touched.iter().any(|d| d == parent)
        {
            self.touched.push(parent.to_path_buf());
        }
    }

    /// Syncs every directory that got entries, then gives directories their modes,
    /// deepest first so a read-only parent never blocks a child.
    fn finish(&mut self) -> Result<(), FsError> {
        let mut first_err = None;
        for dir in &self.touched {
            if let Err(e) = fsutil::fsync_dir(dir) {
                first_err.get_or_insert(e);
            }
        }
        let mut opened = std::mem::take(&mut self.opened);
        opened.sort_by_key(|(d, _)| std::cmp::Reverse(d.components().count()));
        for (dir, mode) in opened {
            if let Err(e) = fsutil::set_mode(&dir, mode) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::pattern::parse_all;

    fn put(root: &Path, rel: &str, bytes: &[u8], mode: u32) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, bytes).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn selected_paths_are_copied_with_modes_and_the_release_wins() {
        let t = tempfile::tempdir().unwrap();
        let (old, new) = (t.path().join("old"), t.path().join("new"));
        put(&old, "bin/app", b"old app", 0o755);
        put(&old, "logs/app.log", b"log", 0o640);
        put(&old, "logs/deep/x.log", b"x", 0o600);
        put(&old, "data.db", b"db", 0o600);
        put(&old, "var/lib/cache.db", b"c", 0o644);
        put(&old, "conf.db", b"the app's", 0o644);
        std::os::unix::fs::symlink("/etc/passwd", old.join("logs/outside")).unwrap();
        fs::set_permissions(old.join("logs"), fs::Permissions::from_mode(0o750)).unwrap();
        put(&new, "bin/app", b"new app", 0o755);
        put(&new, "conf.db", b"the release's", 0o644);
        // A read-only directory of the new release still receives carried files.
        fs::create_dir_all(new.join("var")).unwrap();
        fs::set_permissions(new.join("var"), fs::Permissions::from_mode(0o555)).unwrap();

        let patterns = parse_all(&["logs/".into(), "*.db".into()]).unwrap();
        let paths = select(&old, &patterns).unwrap();
        assert_eq!(paths, ["conf.db", "data.db", "logs", "var/lib/cache.db"]);
        let r = copy_paths(&old, &new, &paths, &HashSet::new()).unwrap();

        assert_eq!(fs::read(new.join("logs/app.log")).unwrap(), b"log");
        assert_eq!(fs::read(new.join("logs/deep/x.log")).unwrap(), b"x");
        assert_eq!(fs::read(new.join("var/lib/cache.db")).unwrap(), b"c");
        assert_eq!(fs::read(new.join("data.db")).unwrap(), b"db");
        assert_eq!(fs::read(new.join("conf.db")).unwrap(), b"the release's");
        assert_eq!(fs::read(new.join("bin/app")).unwrap(), b"new app");
        assert_eq!(
            fs::read_link(new.join("logs/outside")).unwrap(),
            Path::new("/etc/passwd"),
            "a symlink is copied as a link, never followed"
        );
        let mode = |p: &str| {
            fs::symlink_metadata(new.join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(mode("logs"), 0o750);
        assert_eq!(mode("logs/app.log"), 0o640);
        assert_eq!(mode("logs/deep/x.log"), 0o600);
        assert_eq!(mode("var"), 0o555, "release mode restored");
        assert_eq!(r.skipped.len(), 1, "{:?}", r.skipped);
        assert!(
            r.skipped[0].starts_with("conf.db: the new release has"),
            "{:?}",
            r.skipped
        );

        // A path the old release shipped itself conflicts silently.
        let shipped: HashSet<&str> = ["conf.db"].into_iter().collect();
        let again = copy_paths(&old, &new, &["conf.db".into()], &shipped).unwrap();
        assert_eq!(again, CarryReport::default());
        fs::set_permissions(new.join("var"), fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn a_parent_that_is_a_file_in_the_new_release_is_skipped() {
        let t = tempfile::tempdir().unwrap();
        let (old, new) = (t.path().join("old"), t.path().join("new"));
        put(&old, "share/x/child", b"app data", 0o644);
        put(&new, "share/x", b"release file", 0o644);
        let r = copy_paths(&old, &new, &["share/x/child".into()], &HashSet::new()).unwrap();
        assert_eq!(r.copied, 0);
        assert_eq!(
            r.skipped,
            ["share/x/child: share/x is not a directory in the new release"]
        );
        assert_eq!(fs::read(new.join("share/x")).unwrap(), b"release file");
    }
}

//! Comparing a tree on disk with its manifest: used by `ferry verify`, and before
//! reusing a tree left in `versions/` by an interrupted run.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use ferry_format::id::Digest;
use ferry_format::manifest::{EntryKind, Manifest};

use crate::fsutil;

/// How thoroughly to check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Depth {
    /// Kinds, sizes, modes, link targets, no extra files.
    Shape,
    /// Also every file's blake3.
    Content,
}

/// Every difference between `dir` and `manifest`, as readable lines (empty = intact).
pub fn check_tree(manifest: &Manifest, dir: &Path, depth: Depth) -> Vec<String> {
    let mut problems = Vec::new();
    match fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return vec![format!("{} is not a directory", dir.display())],
        Err(e) => return vec![format!("{}: {e}", dir.display())],
    }
    for e in &manifest.entries {
        let path = dir.join(&e.path);
        let meta = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                problems.push(format!("{}: missing", e.path));
                continue;
            }
            Err(err) => {
                problems.push(format!("{}: {err}", e.path));
                continue;
            }
        };
        let mode = meta.permissions().mode() & 0o7777;
        match &e.kind {
            EntryKind::Dir { mode: want } => {
                if !meta.is_dir() {
                    problems.push(format!("{}: expected a directory", e.path));
                } else if mode != *want {
                    problems.push(format!("{}: mode {mode:o}, expected {want:o}", e.path));
                }
            }
            EntryKind::File {
                mode: want,
                size,
                hash,
                ..
            } => {
                if !meta.is_file() {
                    problems.push(format!("{}: expected a regular file", e.path));
                    continue;
                }
                if mode != *want {
                    problems.push(format!("{}: mode {mode:o}, expected {want:o}", e.path));
                }
                if meta.len() != *size {
                    problems.push(format!("{}: size {}, expected {size}", e.path, meta.len()));
                } else if depth == Depth::Content {
                    match hash_file(&path) {
                        Ok(h) if h == *hash => {}
                        Ok(h) => {
                            problems.push(format!("{}: content hash {h}, expected {hash}", e.path))
                        }
                        Err(err) => problems.push(format!("{}: {err}", e.path)),
                    }
                }
            }
            EntryKind::Symlink { target } => {
                if !meta.is_symlink() {
                    problems.push(format!("{}: expected a symlink", e.path));
                    continue;
                }
                match fs::read_link(&path) {
                    Ok(t) if t == Path::new(target) => {}
                    Ok(t) => problems.push(format!(
                        "{}: symlink to {}, expected {target}",
                        e.path,
                        t.display()
                    )),
                    Err(err) => problems.push(format!("{}: {err}", e.path)),
                }
            }
        }
    }
    let known: HashSet<&str> = manifest.entries.iter().map(|e| e.path.as_str()).collect();
    find_extra(dir, "", &known, &mut problems);
    problems
}

fn find_extra(dir: &Path, prefix: &str, known: &HashSet<&str>, problems: &mut Vec<String>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let rel = format!("{prefix}{}", name.to_string_lossy());
        if !known.contains(rel.as_str()) {
            problems.push(format!("{rel}: not part of the release"));
            continue;
        }
        // file_type() does not follow symlinks, so a link is never descended into.
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            find_extra(&entry.path(), &format!("{rel}/"), known, problems);
        }
    }
}

/// blake3 of a regular file, read without following symlinks.
pub fn hash_file(path: &Path) -> io::Result<Digest> {
    let mut f = fsutil::open_nofollow(path)?;
    let mut h = blake3::Hasher::new();
    io::copy(&mut f, &mut h)?;
    Ok(Digest::from(h.finalize()))
}

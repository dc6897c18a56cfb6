//! Comparing a tree on disk with its manifest: used by `ferry verify`, before a
//! rollback's local switch, and before reusing a tree left in `versions/`.
//!
//! Files the manifest does not name are reported apart from damage: an application
//! writes logs, caches and databases next to its code, and those are its data, never
//! a reason to rebuild or delete anything.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use ferry_format::id::Digest;
use ferry_format::manifest::{EntryKind, Manifest};

use super::share::{installed_mode, is_shared, mode_matches};
use crate::fsutil;

/// How thoroughly to check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Depth {
    /// Kinds, sizes, modes, link targets.
    Shape,
    /// Also the blake3 of every file shared with another release (a hard link): an
    /// application editing its active release in place edits those too.
    Shared,
    /// Also every file's blake3.
    Content,
}

/// What [`check_tree`] found: `damage` (entries of the manifest that are missing or
/// differ) and `extra` (paths the manifest does not name; a directory ends with `/`
/// and stands for everything under it), both as paths relative to the tree.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TreeCheck {
    /// Readable lines, one per damaged entry.
    pub damage: Vec<String>,
    pub extra: Vec<String>,
}

impl TreeCheck {
    /// Every entry of the manifest is there as signed (extra files do not matter).
    pub fn is_intact(&self) -> bool {
        self.damage.is_empty()
    }
}

/// Every difference between `dir` and `manifest`.
pub fn check_tree(manifest: &Manifest, dir: &Path, depth: Depth) -> TreeCheck {
    let mut problems = Vec::new();
    match fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return damaged(format!("{} is not a directory", dir.display())),
        Err(e) => return damaged(format!("{}: {e}", dir.display())),
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
                if !mode_matches(mode, *want) {
                    let want = installed_mode(*want);
                    problems.push(format!("{}: mode {mode:o}, expected {want:o}", e.path));
                }
                if meta.len() != *size {
                    problems.push(format!("{}: size {}, expected {size}", e.path, meta.len()));
                } else if depth == Depth::Content || (depth == Depth::Shared && is_shared(&meta)) {
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
    let mut extra = Vec::new();
    find_extra(dir, "", &known, &mut extra);
    extra.sort();
    TreeCheck {
        damage: problems,
        extra,
    }
}

fn damaged(line: String) -> TreeCheck {
    TreeCheck {
        damage: vec![line],
        extra: Vec::new(),
    }
}

fn find_extra(dir: &Path, prefix: &str, known: &HashSet<&str>, extra: &mut Vec<String>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let rel = format!("{prefix}{}", name.to_string_lossy());
        // file_type() does not follow symlinks, so a link is never descended into.
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if !known.contains(rel.as_str()) {
            extra.push(if is_dir { format!("{rel}/") } else { rel });
            continue;
        }
        if is_dir {
            find_extra(&entry.path(), &format!("{rel}/"), known, extra);
        }
    }
}

/// blake3 of a regular file, read without following symlinks.
///
/// Read in blocks of up to 1 MiB, each hashed on every core: checking a tree before a
/// rollback or sharing a file reads whole releases, and one core's blake3 would be
/// the slowest part of it.
pub fn hash_file(path: &Path) -> io::Result<Digest> {
    const BLOCK: u64 = 1 << 20;
    let mut f = fsutil::open_nofollow(path)?;
    let len = f.metadata()?.len();
    let mut buf = vec![0u8; len.clamp(1, BLOCK) as usize];
    let mut h = blake3::Hasher::new();
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        // Below a few blocks of 128 KiB, splitting costs more than it saves.
        if n >= 256 * 1024 {
            h.update_rayon(&buf[..n]);
        } else {
            h.update(&buf[..n]);
        }
    }
    Ok(Digest::from(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_format::chunking::ChunkParams;
    use ferry_format::id::ObjectRef;
    use ferry_format::manifest::Entry;

    fn manifest() -> Manifest {
        let file = |path: &str, bytes: &[u8]| Entry {
            path: path.into(),
            kind: EntryKind::File {
                mode: 0o644,
                size: bytes.len() as u64,
                hash: Digest::from(blake3::hash(bytes)),
                chunks: Vec::new(),
            },
        };
        Manifest {
            channel: "stable".into(),
            version: "1.0.0".into(),
            generation: 1,
            chunking: ChunkParams::default(),
            archive: ObjectRef {
                hash: Digest::from(blake3::hash(b"")),
                size: 0,
            },
            chunks: Vec::new(),
            entries: vec![
                file("a.txt", b"alpha"),
                Entry {
                    path: "lib".into(),
                    kind: EntryKind::Dir { mode: 0o755 },
                },
                file("lib/b.txt", b"beta"),
            ],
            diffs: Vec::new(),
        }
    }

    fn put(dir: &Path, rel: &str, bytes: &[u8]) {
        let p = dir.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, bytes).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
    }

    #[test]
    fn extra_files_are_reported_apart_from_damage() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path();
        put(dir, "a.txt", b"alpha");
        put(dir, "lib/b.txt", b"beta");
        fs::set_permissions(dir.join("lib"), fs::Permissions::from_mode(0o755)).unwrap();
        let m = manifest();
        assert_eq!(check_tree(&m, dir, Depth::Content), TreeCheck::default());

        // The application's own files: extra, never damage.
        put(dir, "logs/app.log", b"started");
        put(dir, "data.db", b"rows");
        put(dir, "lib/__pycache__/b.pyc", b"bytecode");
        put(dir, "lib/c.tmp", b"tmp");
        for depth in [Depth::Shape, Depth::Content] {
            let c = check_tree(&m, dir, depth);
            assert!(c.is_intact(), "{c:?}");
            assert_eq!(
                c.extra,
                ["data.db", "lib/__pycache__/", "lib/c.tmp", "logs/"]
            );
        }

        // A release file changed (same size): damage at Content depth only, and the
        // extra files are still listed apart.
        put(dir, "a.txt", b"ALPHA");
        assert!(check_tree(&m, dir, Depth::Shape).is_intact());
        let c = check_tree(&m, dir, Depth::Content);
        assert_eq!(c.damage.len(), 1, "{c:?}");
        assert!(c.damage[0].starts_with("a.txt: content hash"), "{c:?}");
        assert_eq!(c.extra.len(), 4);
        fs::remove_file(dir.join("lib/b.txt")).unwrap();
        let c = check_tree(&m, dir, Depth::Shape);
        assert_eq!(c.damage, ["lib/b.txt: missing"]);

        let gone = check_tree(&m, &dir.join("nowhere"), Depth::Shape);
        assert_eq!(gone.damage.len(), 1);
        assert!(gone.extra.is_empty());
    }
}

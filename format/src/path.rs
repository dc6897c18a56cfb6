//! Paths inside a release tree (FORMAT.md §3.3).
//!
//! A manifest path is relative, `/`-separated UTF-8 with no empty, `.` or `..`
//! component, no NUL or backslash, at most 4096 bytes, each component at most 255.
//! A symlink target is `../` repeated k times followed by plain components, where k
//! is at most the link's depth: the `..` steps walk up real directories (a link's
//! parents are always directories of the manifest), and plain components only go
//! down, so no target can leave the tree however links chain.

use crate::error::{FormatError, Result};

pub const MAX_PATH_LEN: usize = 4096;
pub const MAX_COMPONENT_LEN: usize = 255;

fn unsafe_path(path: &str, reason: &'static str) -> FormatError {
    FormatError::UnsafePath {
        path: path.to_string(),
        reason,
    }
}

fn check_component(path: &str, c: &str) -> Result<()> {
    match c {
        "" => Err(unsafe_path(path, "empty component or leading/trailing '/'")),
        "." | ".." => Err(unsafe_path(path, "'.' or '..' component")),
        _ if c.len() > MAX_COMPONENT_LEN => Err(unsafe_path(path, "component over 255 bytes")),
        _ if c.contains('\0') => Err(unsafe_path(path, "NUL byte")),
        _ if c.contains('\\') => Err(unsafe_path(path, "backslash")),
        _ => Ok(()),
    }
}

/// Checks a manifest entry path.
pub fn check_path(path: &str) -> Result<()> {
    if path.is_empty() {
        return Err(unsafe_path(path, "empty path"));
    }
    if path.len() > MAX_PATH_LEN {
        return Err(unsafe_path(path, "longer than 4096 bytes"));
    }
    if path.starts_with('/') {
        return Err(unsafe_path(path, "absolute path"));
    }
    path.split('/').try_for_each(|c| check_component(path, c))
}

/// The parent directory of a checked path, `None` at the top of the tree.
pub fn parent(path: &str) -> Option<&str> {
    path.rfind('/').map(|i| &path[..i])
}

/// Checks the target of the symlink at `link_path` (itself already checked).
pub fn check_symlink_target(link_path: &str, target: &str) -> Result<()> {
    let depth = link_path.matches('/').count();
    if target.is_empty() {
        return Err(unsafe_path(link_path, "empty symlink target"));
    }
    if target.len() > MAX_PATH_LEN {
        return Err(unsafe_path(
            link_path,
            "symlink target longer than 4096 bytes",
        ));
    }
    if target.starts_with('/') {
        return Err(unsafe_path(link_path, "symlink target is absolute"));
    }
    let mut ups = 0;
    let mut down = false;
    for c in target.split('/') {
        if c == ".." {
            if down {
                return Err(unsafe_path(
                    link_path,
                    "symlink target has '..' after a name",
                ));
            }
            ups += 1;
            if ups > depth {
                return Err(unsafe_path(
                    link_path,
                    "symlink target points outside the tree",
                ));
            }
        } else {
            check_component(link_path, c)
                .map_err(|_| unsafe_path(link_path, "symlink target has a bad component"))?;
            down = true;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        for ok in ["a", "a/b", "a b/c.d", "ünï/cödé"] {
            check_path(ok).unwrap();
        }
        for bad in [
            "", "/a", "a/", "a//b", "./a", "a/../b", "..", "a\\b", "a\0b",
        ] {
            assert!(check_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn symlink_targets_stay_inside() {
        check_symlink_target("a", "b").unwrap();
        check_symlink_target("d/a", "../b/c").unwrap();
        check_symlink_target("d/e/a", "../../x").unwrap();
        for (link, target) in [
            ("a", "../b"),
            ("a", "/etc/passwd"),
            ("d/a", "../../b"),
            ("d/a", "x/../../.."),
            ("d/a", "x/.."),
            ("a", "."),
            ("a", ""),
        ] {
            assert!(
                check_symlink_target(link, target).is_err(),
                "{link} -> {target}"
            );
        }
    }
}

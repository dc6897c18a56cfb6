//! The patterns of the `carry` setting: which paths of the active release the agent
//! copies into the next one.
//!
//! A pattern is a path relative to the release with `*` (any run of characters) and
//! `?` (one character) matching within one path component, never across a `/`. A
//! trailing `/` restricts it to directories (and carries everything under them). A
//! pattern without a `/` inside it (`*.db`, `logs/`) matches a name at any depth; one
//! with a `/` inside, or a leading `/`, is anchored at the release root (`var/state/`).

use std::fmt;

/// A `carry` pattern that does not describe a path inside a release.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("carry pattern {pattern:?}: {reason}")]
pub struct PatternError {
    pub pattern: String,
    pub reason: &'static str,
}

/// One parsed pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    components: Vec<String>,
    dir_only: bool,
    anchored: bool,
}

impl Pattern {
    pub fn parse(text: &str) -> Result<Pattern, PatternError> {
        let fail = |reason| PatternError {
            pattern: text.to_string(),
            reason,
        };
        if text.contains('\0') || text.contains('\\') {
            return Err(fail("contains NUL or a backslash"));
        }
        let anchored_at_root = text.starts_with('/');
        let body = text.strip_prefix('/').unwrap_or(text);
        let dir_only = body.ends_with('/');
        let body = body.strip_suffix('/').unwrap_or(body);
        if body.is_empty() {
            return Err(fail("names no path (the whole release is never carried)"));
        }
        let components: Vec<String> = body.split('/').map(str::to_string).collect();
        if components.iter().any(|c| c.is_empty()) {
            return Err(fail("has an empty path component (`//`)"));
        }
        if components.iter().any(|c| c == "." || c == "..") {
            return Err(fail("has a `.` or `..` component"));
        }
        Ok(Pattern {
            text: text.to_string(),
            anchored: anchored_at_root || components.len() > 1,
            components,
            dir_only,
        })
    }

    /// Whether the entry at `rel` (a `/`-separated path inside the release, without a
    /// trailing `/`) matches; `is_dir` says whether it is a directory (a symlink to one
    /// is not).
    pub fn matches(&self, rel: &str, is_dir: bool) -> bool {
        if self.dir_only && !is_dir {
            return false;
        }
        if self.anchored {
            let parts: Vec<&str> = rel.split('/').collect();
            parts.len() == self.components.len()
                && parts
                    .iter()
                    .zip(&self.components)
                    .all(|(name, pat)| glob(pat, name))
        } else {
            let name = rel.rsplit('/').next().unwrap_or(rel);
            glob(&self.components[0], name)
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Parses every pattern, failing on the first bad one.
pub fn parse_all(texts: &[String]) -> Result<Vec<Pattern>, PatternError> {
    texts.iter().map(|t| Pattern::parse(t)).collect()
}

/// Whether any of `patterns` matches.
pub fn any_matches(patterns: &[Pattern], rel: &str, is_dir: bool) -> bool {
    patterns.iter().any(|p| p.matches(rel, is_dir))
}

/// `*` and `?` matching of one component (by characters), with the usual
/// backtracking to the last `*`: linear in practice, quadratic at worst.
fn glob(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, rel: &str, is_dir: bool) -> bool {
        Pattern::parse(pattern).unwrap().matches(rel, is_dir)
    }

    #[test]
    fn globs_stay_within_one_component() {
        assert!(glob("*.db", "data.db"));
        assert!(glob("*.db", ".db"));
        assert!(!glob("*.db", "data.dbx"));
        assert!(glob("a*b*c", "aXXbYYbc"));
        assert!(glob("?.log", "1.log"));
        assert!(!glob("?.log", "12.log"));
        assert!(glob("*", ""));
        assert!(glob("", ""));
        assert!(!glob("", "x"));
        assert!(glob("ü*", "über"));
        // A `*` never crosses a `/`: components are matched one by one.
        assert!(!m("var/*.db", "var/sub/x.db", false));
        assert!(m("var/*/x.db", "var/sub/x.db", false));
    }

    #[test]
    fn names_match_at_any_depth_paths_at_the_root() {
        assert!(m("*.db", "data.db", false));
        assert!(m("*.db", "var/lib/data.db", false));
        assert!(m("logs/", "logs", true));
        assert!(m("logs/", "srv/logs", true));
        assert!(!m("logs/", "logs", false), "a trailing / means a directory");
        assert!(m("logs", "logs", false));
        assert!(m("var/state/", "var/state", true));
        assert!(!m("var/state/", "x/var/state", true), "inner / anchors");
        assert!(m("/data.db", "data.db", false));
        assert!(!m("/data.db", "sub/data.db", false), "leading / anchors");
        assert!(m("__pycache__/", "pkg/__pycache__", true));
    }

    #[test]
    fn bad_patterns_are_refused_with_the_reason() {
        for (p, why) in [
            ("", "names no path"),
            ("/", "names no path"),
            ("a//b", "empty path component"),
            ("../etc/", "`..`"),
            ("./x", "`.`"),
            ("a\\b", "backslash"),
        ] {
            let e = Pattern::parse(p).unwrap_err().to_string();
            assert!(e.contains(why), "{p}: {e}");
        }
        let all = parse_all(&["logs/".into(), "*.db".into()]).unwrap();
        assert!(any_matches(&all, "x.db", false));
        assert!(!any_matches(&all, "x.txt", false));
        assert_eq!(all[0].to_string(), "logs/");
    }
}

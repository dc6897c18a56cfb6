//! Refusing stale binaries: an end-to-end test must run the code under review, not
//! whatever an earlier build left in `target/<profile>/`.
//!
//! The rule is cargo's own: cargo rebuilds a binary when a source file it was built
//! from (the list cargo writes next to it, `target/<profile>/<name>.d`) is newer than
//! the last build. So a binary older than one of those files is stale, and
//! `cargo build` is guaranteed to fix it. Files cargo does not track (a note in
//! `src/`, a comment in `Cargo.toml`) never make a binary "stale", since rebuilding
//! would not change it and the check would then refuse forever. Without a `.d` file
//! the `.rs` files of the crates the binary is built from are compared instead.
//! Cost: a few hundred `stat`s, once per binary per test process.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The workspace crates each binary is built from, for when no `.d` file exists.
pub fn crates_of(binary: &str) -> &'static [&'static str] {
    match binary {
        "ferry" | "examples/self_update" => &["client", "format"],
        "ferry-server" => &["server", "format"],
        _ => &["format"],
    }
}

/// The workspace sources cargo recorded for `binary` in `<binary>.d`, if it did.
fn recorded_sources(binary: &Path, workspace: &Path) -> Option<Vec<PathBuf>> {
    let mut dep_info = binary.as_os_str().to_owned();
    dep_info.push(".d");
    let text = std::fs::read_to_string(dep_info).ok()?;
    // "<target>: <dep> <dep> ...", spaces inside paths escaped as "\ ".
    let (_, deps) = text.lines().next()?.split_once(": ")?;
    let mut paths = Vec::new();
    let mut current = String::new();
    let mut chars = deps.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => current.extend(chars.next()),
            ' ' => paths.push(std::mem::take(&mut current)),
            _ => current.push(c),
        }
    }
    paths.push(current);
    Some(
        paths
            .into_iter()
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .filter(|p| p.starts_with(workspace))
            .collect(),
    )
}

/// The `.rs` files of `crates` (their `src/` and `build.rs`).
fn crate_sources(workspace: &Path, crates: &[&str]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for krate in crates {
        out.push(workspace.join(krate).join("build.rs"));
        let mut stack = vec![workspace.join(krate).join("src")];
        while let Some(d) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in entries.flatten() {
                let p = e.path();
                match e.file_type() {
                    Ok(t) if t.is_dir() => stack.push(p),
                    Ok(t) if t.is_file() && p.extension().is_some_and(|x| x == "rs") => out.push(p),
                    _ => {}
                }
            }
        }
    }
    out
}

/// The newest source of `binary` with its modification time.
pub fn newest_source(
    binary: &Path,
    workspace: &Path,
    crates: &[&str],
) -> Option<(PathBuf, SystemTime)> {
    let sources =
        recorded_sources(binary, workspace).unwrap_or_else(|| crate_sources(workspace, crates));
    sources
        .into_iter()
        .filter_map(|p| {
            let t = std::fs::metadata(&p).and_then(|m| m.modified()).ok()?;
            Some((p, t))
        })
        .max_by_key(|(_, t)| *t)
}

/// Refuses `binary` when a source it is built from changed after it was built, with a
/// message that names both and the command that fixes it.
pub fn check_fresh(binary: &Path, workspace: &Path, crates: &[&str]) -> Result<(), String> {
    let built = std::fs::metadata(binary)
        .and_then(|m| m.modified())
        .map_err(|e| format!("cannot read {}: {e}", binary.display()))?;
    match newest_source(binary, workspace, crates) {
        Some((source, changed)) if changed > built => Err(format!(
            "{} is stale: {} changed after it was built; the tests would run old code. \
             Rebuild with `cargo build --workspace --bins --examples` (add `--release` for release tests)",
            binary.display(),
            source.display()
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::time::Duration;

    fn touch(path: &Path, at: SystemTime) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let f = File::options()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.set_modified(at).unwrap();
    }

    fn at(s: u64) -> SystemTime {
        SystemTime::now() - Duration::from_secs(3600) + Duration::from_secs(s)
    }

    #[test]
    fn a_binary_older_than_a_source_cargo_recorded_is_refused() {
        let ws = tempfile::tempdir().unwrap();
        let w = |rel: &str| ws.path().join(rel);
        let bin = w("target/debug/ferry");
        for (rel, t) in [
            ("client/src/main.rs", 10),
            ("client/src/with space.rs", 20),
            ("format/src/deep/mod.rs", 30),
            ("server/src/main.rs", 100),
            ("client/src/NOTES.md", 200),
            ("client/Cargo.toml", 200),
            ("client/src/not_a_module.rs", 200),
        ] {
            touch(&w(rel), at(t));
        }
        touch(&bin, at(50));
        let listed = [
            "client/src/main.rs",
            "client/src/with\\ space.rs",
            "format/src/deep/mod.rs",
        ]
        .map(|rel| format!("{}/{rel}", ws.path().display()))
        .join(" ");
        std::fs::write(
            w("target/debug/ferry.d"),
            format!("{}: {listed} /elsewhere/registry/lib.rs\n", bin.display()),
        )
        .unwrap();

        // Newer than every source cargo recorded: fresh, whatever else changed since
        // (rebuilding would not change the binary).
        check_fresh(&bin, ws.path(), crates_of("ferry")).unwrap();

        touch(&w("client/src/with space.rs"), at(60));
        let err = check_fresh(&bin, ws.path(), crates_of("ferry")).unwrap_err();
        assert!(err.contains("target/debug/ferry is stale"), "{err}");
        assert!(err.contains("client/src/with space.rs changed"), "{err}");
        assert!(
            err.contains("cargo build --workspace --bins --examples"),
            "{err}"
        );

        touch(&bin, at(70));
        check_fresh(&bin, ws.path(), crates_of("ferry")).unwrap();
        touch(&w("format/src/deep/mod.rs"), at(80));
        let err = check_fresh(&bin, ws.path(), crates_of("ferry")).unwrap_err();
        assert!(err.contains("format/src/deep/mod.rs"), "{err}");
    }

    #[test]
    fn without_dep_info_the_rust_sources_of_its_crates_count() {
        let ws = tempfile::tempdir().unwrap();
        let w = |rel: &str| ws.path().join(rel);
        touch(&w("server/src/main.rs"), at(10));
        touch(&w("format/src/lib.rs"), at(20));
        touch(&w("client/src/main.rs"), at(100));
        touch(&w("server/src/README.md"), at(100));
        let bin = w("target/debug/ferry-server");
        touch(&bin, at(50));
        check_fresh(&bin, ws.path(), crates_of("ferry-server")).unwrap();
        touch(&w("format/src/lib.rs"), at(60));
        let err = check_fresh(&bin, ws.path(), crates_of("ferry-server")).unwrap_err();
        assert!(err.contains("ferry-server is stale"), "{err}");
        assert!(err.contains("format/src/lib.rs"), "{err}");
    }
}

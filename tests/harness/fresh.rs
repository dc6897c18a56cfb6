//! Refusing stale binaries: an end-to-end test must run the code under review, not
//! whatever an earlier build left in `target/<profile>/`.
//!
//! Cargo rebuilds a binary when a source it was built from is newer than its last
//! build, so comparing modification times is the same rule cargo applies, and cheap
//! (a few hundred `stat`s, once per binary per test process).

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The workspace crates each binary is built from (their `src/` and `Cargo.toml`).
pub fn crates_of(binary: &str) -> &'static [&'static str] {
    match binary {
        "ferry" => &["client", "format"],
        "ferry-server" => &["server", "format"],
        _ => &["format"],
    }
}

/// The newest Rust source or manifest among `crates` of `workspace`, with its time.
pub fn newest_source(workspace: &Path, crates: &[&str]) -> Option<(PathBuf, SystemTime)> {
    let mut newest: Option<(PathBuf, SystemTime)> = None;
    let mut consider = |path: PathBuf| {
        if let Ok(t) = std::fs::metadata(&path).and_then(|m| m.modified())
            && newest.as_ref().is_none_or(|(_, n)| t > *n)
        {
            newest = Some((path, t));
        }
    };
    for krate in crates {
        let dir = workspace.join(krate);
        consider(dir.join("Cargo.toml"));
        consider(dir.join("build.rs"));
        let mut stack = vec![dir.join("src")];
        while let Some(d) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in entries.flatten() {
                let p = e.path();
                match e.file_type() {
                    Ok(t) if t.is_dir() => stack.push(p),
                    // Only what the compiler reads: a note dropped into src/ does not
                    // make cargo rebuild, so it must not make the binary "stale".
                    Ok(t) if t.is_file() && p.extension().is_some_and(|x| x == "rs") => consider(p),
                    _ => {}
                }
            }
        }
    }
    consider(workspace.join("Cargo.lock"));
    newest
}

/// Refuses `binary` when a source of `crates` changed after it was built, with a
/// message that names both and the command that fixes it.
pub fn check_fresh(binary: &Path, workspace: &Path, crates: &[&str]) -> Result<(), String> {
    let built = std::fs::metadata(binary)
        .and_then(|m| m.modified())
        .map_err(|e| format!("cannot read {}: {e}", binary.display()))?;
    match newest_source(workspace, crates) {
        Some((source, changed)) if changed > built => Err(format!(
            "{} is stale: {} changed after it was built; the tests would run old code. \
             Rebuild with `cargo build --workspace --bins` (add `--release` for release tests)",
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

    #[test]
    fn a_binary_older_than_a_source_of_its_crates_is_refused() {
        let ws = tempfile::tempdir().unwrap();
        let t0 = SystemTime::now() - Duration::from_secs(3600);
        let at = |s| t0 + Duration::from_secs(s);
        touch(&ws.path().join("client/Cargo.toml"), at(0));
        touch(&ws.path().join("client/src/main.rs"), at(10));
        touch(&ws.path().join("format/src/deep/mod.rs"), at(20));
        touch(&ws.path().join("server/src/main.rs"), at(100));
        touch(&ws.path().join("client/src/NOTES.md"), at(200));
        let bin = ws.path().join("target/debug/ferry");
        touch(&bin, at(50));

        // Newer than every source of client and format: fresh, whatever server or a
        // non-Rust file in src/ did.
        check_fresh(&bin, ws.path(), crates_of("ferry")).unwrap();

        touch(&ws.path().join("format/src/deep/mod.rs"), at(60));
        let err = check_fresh(&bin, ws.path(), crates_of("ferry")).unwrap_err();
        assert!(err.contains("target/debug/ferry is stale"), "{err}");
        assert!(err.contains("format/src/deep/mod.rs"), "{err}");
        assert!(err.contains("cargo build --workspace --bins"), "{err}");

        let server = ws.path().join("target/debug/ferry-server");
        touch(&server, at(70));
        let err = check_fresh(&server, ws.path(), crates_of("ferry-server")).unwrap_err();
        assert!(err.contains("server/src/main.rs"), "{err}");

        touch(&ws.path().join("Cargo.lock"), at(80));
        touch(&bin, at(75));
        let err = check_fresh(&bin, ws.path(), crates_of("ferry")).unwrap_err();
        assert!(err.contains("Cargo.lock"), "{err}");
    }
}

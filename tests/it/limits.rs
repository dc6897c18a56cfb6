//! Publishing refuses what no agent could read: the decode limits agents apply
//! (`ObjectKind::max_size` in `format`) are checked before anything is written.

use std::path::Path;

use ferry_format::envelope::ObjectKind;
use ferry_tests::{Publisher, bin, run};

/// Writes `files` empty files with long names deep in `root`: every manifest entry
/// then costs about 3.8 KB, so a few thousand files make a large manifest quickly.
fn long_named_tree(root: &Path, files: usize) -> usize {
    let mut dir = root.to_path_buf();
    let mut rel_len = 0;
    for d in 0..14 {
        let name = format!("{d:02}{}", "d".repeat(248));
        dir.push(&name);
        rel_len += name.len() + 1;
    }
    std::fs::create_dir_all(&dir).unwrap();
    for i in 0..files {
        std::fs::File::create(dir.join(format!("{i:06}{}", "f".repeat(244)))).unwrap();
    }
    rel_len + 250
}

#[test]
fn publish_refuses_a_manifest_over_the_agents_limit_before_writing_anything() {
    let publisher = Publisher::new("stable");
    let src = tempfile::tempdir().unwrap();
    let limit = ObjectKind::Manifest.max_size();
    // Each file entry: path (u64 length + bytes), kind tag, mode, size, hash, chunk list.
    let path_len = long_named_tree(src.path(), 0);
    let files = (limit as usize / (path_len + 64)) + 400;
    long_named_tree(src.path(), files);

    let (repo, key) = (publisher.repo(), publisher.key());
    let args = [
        "publish",
        "--repo",
        repo.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "--channel",
        "stable",
        "--version",
        "1.0.0",
        "--zstd-level",
        "1",
        src.path().to_str().unwrap(),
    ];
    let out = run(bin("ferry-server"), &args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "publish of {files} files succeeded");
    let size: u64 = err
        .split("would have ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the error names the manifest's size: {err}"));
    assert!(size > limit, "{size} bytes reported: {err}");
    assert!(
        err.contains(&format!("manifests of at most {limit} bytes")),
        "the error names the agents' limit: {err}"
    );
    assert!(err.contains(&format!("{files} files")), "{err}");

    assert!(!publisher.head_file().exists(), "a head was written");
    let objects: Vec<_> = walk_files(&repo)
        .into_iter()
        .filter(|p| p.starts_with(repo.join("objects")))
        .collect();
    assert!(objects.is_empty(), "objects written: {objects:?}");
}

fn walk_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.map(Result::unwrap) {
        let p = e.path();
        if e.file_type().unwrap().is_dir() {
            out.extend(walk_files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

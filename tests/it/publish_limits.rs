//! Publishing refuses what no agent could read: the decode limits agents apply
//! (`ObjectKind::max_size` in `format`) are checked before anything is written.

use std::path::Path;

use ferry_format::envelope::ObjectKind;
use ferry_tests::{Publisher, bin, run};

/// Writes `links` tiny files (symlinks) with long names and long targets into `root`:
/// every manifest entry then costs about 4 KB, so a large manifest takes few files,
/// each made with one short-path syscall (files deep in long folders cost a walk of
/// the whole path per file). Returns the bytes of one entry's path and target.
fn long_named_links(root: &Path, links: usize) -> usize {
    let target = (0..15)
        .map(|d| format!("{d:02}{}", "t".repeat(248)))
        .collect::<Vec<_>>()
        .join("/");
    for i in 0..links {
        std::os::unix::fs::symlink(&target, root.join(format!("{i:06}{}", "l".repeat(244))))
            .unwrap();
    }
    250 + target.len()
}

#[test]
fn publish_refuses_a_manifest_over_the_agents_limit_before_writing_anything() {
    let publisher = Publisher::new("stable");
    // Memory-backed when the machine has /dev/shm: tens of thousands of entries are
    // made and removed in a second there, and in tens of seconds on a busy disk.
    let src = tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .unwrap();
    let limit = ObjectKind::Manifest.max_size();
    // Each entry: path and target (u64 length + bytes each) and the kind tag.
    let entry = long_named_links(src.path(), 0) + 20;
    let links = limit as usize / entry + 100;
    long_named_links(src.path(), links);

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
    assert!(
        !out.status.success(),
        "publish of {links} entries succeeded"
    );
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
    assert!(err.contains(&format!("{links} entries")), "{err}");

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

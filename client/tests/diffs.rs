//! Diff-based updates through a `file://` repository written by hand with
//! `ferry_format`: the diff path costs three requests and fewer bytes than the
//! archive; a locally modified base, a corrupt diff object, a diff producing a wrong
//! chunk and a corrupt manifest diff each fall back and still install the release.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;

/// Release 2: bytes inserted into the middle of the app (shifting everything after
/// them) and a small edit: a few new chunks for the archive, a tiny diff.
fn app2_of(app1: &[u8]) -> Vec<u8> {
    let mut app2 = app1[..300_000].to_vec();
    app2.extend_from_slice(b"inserted by release two");
    app2.extend_from_slice(&app1[300_000..]);
    app2[450_000..450_010].copy_from_slice(&[0xAB; 10]);
    app2
}

struct Setup {
    _t: tempfile::TempDir,
    repo: Repo,
    server: String,
    key_file: PathBuf,
    dir: PathBuf,
    app1: Vec<u8>,
    app2: Vec<u8>,
}

fn setup() -> Setup {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().to_path_buf();
    let mut repo = Repo::new(&dir.join("repo"));
    repo.diffs = true;
    let key_file = dir.join("ferry.pub");
    fs::write(&key_file, repo.key.public().to_text()).unwrap();
    let app1 = noise(600_000, 11);
    let app2 = app2_of(&app1);
    repo.publish("1.0.0", &release(&app1, "one"));
    let server = format!("file://{}", dir.join("repo").display());
    Setup {
        _t: t,
        repo,
        server,
        key_file,
        dir,
        app1,
        app2,
    }
}

impl Setup {
    /// A root installed with release 1.
    fn root(&self, name: &str) -> PathBuf {
        let root = self.dir.join(name);
        let r = root.to_str().unwrap();
        ferry(&[
            "init",
            "--root",
            r,
            "--server",
            &self.server,
            "--channel",
            "stable",
            "--public-key",
            self.key_file.to_str().unwrap(),
        ])
        .unwrap();
        ferry(&["update", "--root", r]).unwrap();
        assert_eq!(fs::read(root.join("current/bin/app")).unwrap(), self.app1);
        root
    }

    fn publish2(&mut self) {
        let app2 = self.app2.clone();
        self.repo.publish("2.0.0", &release(&app2, "two"));
    }

    /// Updates `root` to release 2, checks the tree, returns (requests, bytes).
    fn update_to_2(&self, root: &Path) -> (u64, u64) {
        let r = root.to_str().unwrap();
        ferry(&["update", "--root", r]).unwrap();
        let cur = root.join("current");
        assert_eq!(fs::read_link(&cur).unwrap(), Path::new("versions/2.0.0"));
        assert_eq!(fs::read(cur.join("bin/app")).unwrap(), self.app2);
        assert_eq!(fs::read(cur.join("README")).unwrap(), b"two");
        ferry(&["verify", "--root", r]).unwrap();
        assert!(
            fs::read_dir(root.join(".ferry/staging")).is_err(),
            "staging cleaned"
        );
        let h = history(root);
        let last = h.last().unwrap();
        assert_eq!(last["result"], "ok", "{last}");
        (
            last["requests"].as_u64().unwrap(),
            last["bytes_downloaded"].as_u64().unwrap(),
        )
    }
}

fn flip_byte(path: &Path, at: usize) -> Vec<u8> {
    let good = fs::read(path).unwrap();
    let mut bad = good.clone();
    bad[at] ^= 0x01;
    fs::write(path, &bad).unwrap();
    good
}

#[test]
fn diff_update_takes_three_requests_and_falls_back_when_it_must() {
    let mut s = setup();
    let with_diff = s.root("with-diff");
    let modified = s.root("modified");
    let bad_diff = s.root("bad-diff");
    let bad_manifest_diff = s.root("bad-manifest-diff");
    s.publish2();

    // Head, manifest diff, diff object.
    let (requests, diff_bytes) = s.update_to_2(&with_diff);
    assert_eq!(requests, 3, "head, manifest diff, diff object");

    // An edited base is not a diff base: the archive tail instead.
    let readme = modified.join("versions/1.0.0/README");
    fs::write(&readme, b"edited by hand").unwrap();
    let (requests, archive_bytes) = s.update_to_2(&modified);
    assert_eq!(requests, 3, "head, manifest diff, one archive range");
    assert!(
        diff_bytes * 4 < archive_bytes,
        "the diff ({diff_bytes} B) beats the archive tail ({archive_bytes} B)"
    );

    // A corrupt diff object fails its hash check: fall back to the archive.
    let diff_path = s.repo.last_diff.clone().unwrap();
    let good = flip_byte(&diff_path, 200);
    let (requests, bytes) = s.update_to_2(&bad_diff);
    assert_eq!(
        requests, 4,
        "head, manifest diff, diff object, archive range"
    );
    assert!(bytes > archive_bytes);
    assert!(
        fs::read_dir(bad_diff.join(".ferry/staging")).is_err(),
        "the refused diff is not kept"
    );
    fs::write(&diff_path, good).unwrap();

    // A corrupt manifest diff: fetch the whole manifest, then the diff as usual.
    let mdiff_path = s.repo.last_manifest_diff.clone().unwrap();
    let len = fs::metadata(&mdiff_path).unwrap().len() as usize;
    flip_byte(&mdiff_path, len / 2);
    let (requests, _) = s.update_to_2(&bad_manifest_diff);
    assert_eq!(requests, 4, "head, manifest diff, manifest, diff object");
}

#[test]
fn a_diff_producing_a_wrong_chunk_falls_back_to_the_archive() {
    let mut s = setup();
    let root = s.root("root");
    s.repo.tamper_diff_output = true;
    s.publish2();
    // The object matches its signed hash; the chunk it produces does not match its id.
    let (requests, _) = s.update_to_2(&root);
    assert_eq!(
        requests, 4,
        "head, manifest diff, diff object, archive range"
    );
    let r = root.to_str().unwrap();
    // The next update is a no-op: the release is installed and intact.
    ferry(&["update", "--root", r]).unwrap();
    assert_eq!(history(&root).len(), 2);
}

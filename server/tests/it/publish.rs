//! Publishing through the library: the generation design of FORMAT.md §3.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use ferry_format::chunking::decompress_chunk;
use ferry_format::id::Digest;
use ferry_format::keys::SecretKey;
use ferry_format::layout::object_path;
use ferry_format::manifest::{EntryKind, Manifest};

use crate::common::*;

/// Rebuilds every file of `m` from its archive and compares it with `source`.
fn check_reconstructs(repo: &Path, m: &Manifest, source: &Path) {
    let archive = fs::read(repo.join(object_path(&m.archive.hash))).unwrap();
    assert_eq!(Digest::of(&archive), m.archive.hash);
    let offsets = m.chunk_offsets();
    assert_eq!(*offsets.last().unwrap(), archive.len() as u64);
    for e in &m.entries {
        match &e.kind {
            EntryKind::File {
                chunks,
                hash,
                size,
                mode,
            } => {
                let mut data = Vec::new();
                for &ix in chunks {
                    let c = &m.chunks[ix as usize];
                    let (a, b) = (
                        offsets[ix as usize] as usize,
                        offsets[ix as usize + 1] as usize,
                    );
                    data.extend(decompress_chunk(&c.id, c.size, &archive[a..b]).unwrap());
                }
                let want = fs::read(source.join(&e.path)).unwrap();
                assert_eq!(data, want, "{}", e.path);
                assert_eq!((*hash, *size), (Digest::of(&want), want.len() as u64));
                let src_mode = fs::metadata(source.join(&e.path))
                    .unwrap()
                    .permissions()
                    .mode();
                assert_eq!(*mode, src_mode & 0o777);
            }
            EntryKind::Dir { .. } => assert!(source.join(&e.path).is_dir()),
            EntryKind::Symlink { target } => {
                assert_eq!(
                    fs::read_link(source.join(&e.path)).unwrap().to_str(),
                    Some(target.as_str())
                )
            }
        }
    }
}

#[test]
fn two_releases_chain_generations() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, repo) = (tmp.path().join("src"), tmp.path().join("repo"));
    make_tree(&src);
    let r1 = publish_at(&repo, &src, "stable", "1.0.0");
    assert_eq!((r1.sequence, r1.chunks_carried), (1, 0));
    assert!(r1.chunks_new >= 3, "{r1:?}");

    // Release 2 changes the tail of one file; everything else is unchanged.
    let mut app = fs::read(src.join("bin/app")).unwrap();
    let n = app.len();
    app[n - 1000..].copy_from_slice(&noise(99, 1000));
    app.extend(noise(5, 70_000));
    fs::write(src.join("bin/app"), &app).unwrap();
    let r2 = publish_at(&repo, &src, "stable", "2.0.0");
    assert_eq!(r2.sequence, 2);
    assert!(r2.chunks_carried > 0 && r2.chunks_new > 0, "{r2:?}");

    // Every object is named by the blake3 of its bytes, under its fan-out directory;
    // no temp file is left; modes are 0644/0755.
    // Release 2 also gets a diff object and a manifest diff from release 1.
    assert_eq!((r1.diffs.len(), r1.manifest_diffs), (0, 0));
    assert_eq!((r2.diffs.len(), r2.manifest_diffs), (1, 1), "{r2:?}");
    let objects = files_under(&repo.join("objects"));
    assert_eq!(
        objects.len(),
        6,
        "two archives, two manifests, a diff, a manifest diff: {objects:?}"
    );
    for p in &objects {
        let name = p.file_name().unwrap().to_str().unwrap();
        assert_eq!(Digest::of(&fs::read(p).unwrap()).to_hex(), name);
        assert_eq!(
            p.parent().unwrap().file_name().unwrap().to_str().unwrap(),
            &name[..2]
        );
    }
    for p in files_under(&repo) {
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o7777,
            0o644,
            "{p:?}"
        );
        let mut d = p.parent().unwrap();
        while d != repo.parent().unwrap() {
            assert_eq!(
                fs::metadata(d).unwrap().permissions().mode() & 0o7777,
                0o755,
                "{d:?}"
            );
            d = d.parent().unwrap();
        }
    }

    let head = read_head(&repo, "stable");
    assert_eq!(head.sequence, 2);
    let versions: Vec<&str> = head.releases().iter().map(|r| r.version.as_str()).collect();
    assert_eq!(versions, ["1.0.0", "2.0.0"]);
    assert_eq!(head.expires_at - head.issued_at, 3600);

    let m1 = read_manifest(&repo, "stable", "1.0.0");
    let m2 = read_manifest(&repo, "stable", "2.0.0");
    assert_eq!((m1.generation, m2.generation), (1, 2));
    assert_eq!(m2.archive.hash.to_hex(), r2.archive);

    // Carried chunks (generation 1) come first, in release 1's table order; the new
    // ones (generation 2) form one contiguous tail of the archive.
    let k = m2.chunks.iter().take_while(|c| c.generation == 1).count();
    assert_eq!(k, r2.chunks_carried);
    assert!(m2.chunks[k..].iter().all(|c| c.generation == 2));
    let pos_in_1: Vec<usize> = m2.chunks[..k]
        .iter()
        .map(|c| m1.chunks.iter().position(|d| d.id == c.id).unwrap())
        .collect();
    assert!(pos_in_1.windows(2).all(|w| w[0] < w[1]), "{pos_in_1:?}");
    assert!(
        m2.chunks[k..]
            .iter()
            .all(|c| !m1.chunks.iter().any(|d| d.id == c.id))
    );
    let o2 = m2.chunk_offsets();
    let tail: u64 = m2.chunks[k..]
        .iter()
        .map(|c| u64::from(c.stored_size))
        .sum();
    assert_eq!(o2[k] + tail, m2.archive.size);

    // Carried frames are byte-for-byte the frames of archive 1.
    let a1 = fs::read(repo.join(object_path(&m1.archive.hash))).unwrap();
    let a2 = fs::read(repo.join(object_path(&m2.archive.hash))).unwrap();
    let o1 = m1.chunk_offsets();
    for (i, &j) in pos_in_1.iter().enumerate() {
        assert_eq!(
            a2[o2[i] as usize..o2[i + 1] as usize],
            a1[o1[j] as usize..o1[j + 1] as usize]
        );
    }
    check_reconstructs(&repo, &m2, &src);

    let paths: Vec<&str> = m2.entries.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "app",
            "bin",
            "bin/app",
            "share",
            "share/doc",
            "share/doc/README",
            "share/empty"
        ]
    );

    // Versions only go up.
    let e = try_publish(&repo, &src, "stable", "1.5.0", &key(), 10)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not greater"), "{e}");
    let e = try_publish(&repo, &src, "stable", "2.0.0", &key(), 10)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not greater"), "{e}");
    // Another key cannot publish into this channel.
    let other = SecretKey::from_seed([8; 32]);
    let e = try_publish(&repo, &src, "stable", "3.0.0", &other, 10)
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not match"), "{e}");
    assert_eq!(
        read_head(&repo, "stable").sequence,
        2,
        "failed publishes change nothing"
    );

    // Retention keeps the newest releases; a chunk absent from the previous release
    // comes back with the new generation.
    fs::write(src.join("bin/app"), noise(1, 600_000)).unwrap();
    let r3 = try_publish(&repo, &src, "stable", "3.0.0", &key(), 2).unwrap();
    let head = read_head(&repo, "stable");
    let versions: Vec<&str> = head.releases().iter().map(|r| r.version.as_str()).collect();
    assert_eq!(versions, ["2.0.0", "3.0.0"]);
    let m3 = read_manifest(&repo, "stable", "3.0.0");
    assert_eq!(m3.generation, 3);
    assert!(r3.chunks_new > 0);
    check_reconstructs(&repo, &m3, &src);
}

#[test]
fn single_file_release_and_refusals() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let file = tmp.path().join("tool.bin");
    fs::write(&file, noise(3, 100_000)).unwrap();
    let r = publish_at(&repo, &file, "tools", "0.1");
    assert_eq!(r.bytes_total, 100_000);
    let m = read_manifest(&repo, "tools", "0.1");
    assert_eq!(m.entries.len(), 1);
    assert_eq!(m.entries[0].path, "tool.bin");
    assert!(matches!(
        m.entries[0].kind,
        EntryKind::File { size: 100_000, .. }
    ));

    // A symlink leaving the tree is refused, naming the link.
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    std::os::unix::fs::symlink("../../etc/passwd", src.join("evil")).unwrap();
    let e = try_publish(&repo, &src, "stable", "1", &key(), 10)
        .unwrap_err()
        .to_string();
    assert!(e.contains("evil") && e.contains("symlink"), "{e}");
    assert!(!repo.join("channels/stable").exists());

    let e = try_publish(&repo, &file, "bad/channel", "1", &key(), 10)
        .unwrap_err()
        .to_string();
    assert!(e.contains("channel"), "{e}");
    let e = try_publish(&repo, &file, "tools", "x.y", &key(), 10)
        .unwrap_err()
        .to_string();
    assert!(e.contains("version"), "{e}");
}

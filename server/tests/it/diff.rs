//! Diff objects (FORMAT.md §3.6) and manifest diffs (§3.7): what publish lists, and
//! that applying each one the way an agent does reproduces exactly what it stands for.

use std::fs;
use std::path::{Path, PathBuf};

use ferry_format::chunking::decompress_chunk;
use ferry_format::delta::apply::{ConcatBase, apply};
use ferry_format::delta::manifest_diff::{Skeleton, apply_manifest_diff};
use ferry_format::delta::{DiffHeader, DiffRef, base_files, missing_chunks};
use ferry_format::id::{ChunkId, Digest};
use ferry_format::layout::object_path;
use ferry_format::manifest::Manifest;

use crate::common::*;

/// Copies the tree `from` to `to` (files and directories; `make_tree`'s one symlink).
fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let (src, dst) = (e.path(), to.join(e.file_name()));
        let ft = e.file_type().unwrap();
        if ft.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&src).unwrap(), &dst).unwrap();
        } else if ft.is_dir() {
            copy_tree(&src, &dst);
        } else {
            fs::copy(&src, &dst).unwrap();
        }
    }
}

/// Three source trees: release 2 inserts bytes into the middle of the big file (so
/// every later offset shifts) and changes the README; release 3 changes the tail and
/// adds a file.
fn three_releases(root: &Path) -> [PathBuf; 3] {
    let s1 = root.join("src1");
    make_tree(&s1);
    let s2 = root.join("src2");
    copy_tree(&s1, &s2);
    let mut app = fs::read(s2.join("bin/app")).unwrap();
    app.splice(250_000..250_000, noise(11, 5_000));
    fs::write(s2.join("bin/app"), &app).unwrap();
    fs::write(s2.join("share/doc/README"), b"hello ferry 2\n".repeat(120)).unwrap();
    let s3 = root.join("src3");
    copy_tree(&s2, &s3);
    let n = app.len();
    app[n - 2_000..].copy_from_slice(&noise(12, 2_000));
    fs::write(s3.join("bin/app"), &app).unwrap();
    fs::write(s3.join("bin/helper"), noise(13, 90_000)).unwrap();
    [s1, s2, s3]
}

fn object(repo: &Path, hash: &Digest) -> Vec<u8> {
    let bytes = fs::read(repo.join(object_path(hash))).unwrap();
    assert_eq!(
        Digest::of(&bytes),
        *hash,
        "objects are named by their blake3"
    );
    bytes
}

/// Applies diff `d` of `new` over the base release's files as they are on disk
/// (`base_src`, concatenated in manifest order) and checks the output is exactly the
/// chunks `base` lacks, in table order, as the new archive holds them.
fn check_diff(repo: &Path, new: &Manifest, base: &Manifest, base_src: &Path, d: &DiffRef) {
    let bytes = object(repo, &d.object.hash);
    assert_eq!(bytes.len() as u64, d.object.size);
    let (header, start) = DiffHeader::decode_prefix(&bytes, d.object.size).unwrap();
    assert_eq!(header.base_manifest, d.base_manifest);

    let files: Vec<Vec<u8>> = base_files(base)
        .map(|(path, size)| {
            let data = fs::read(base_src.join(path)).unwrap();
            assert_eq!(data.len() as u64, size, "{path}");
            data
        })
        .collect();
    let base_data = ConcatBase::new(files.iter().map(Vec::as_slice).collect());
    let streams: Vec<&[u8]> = header
        .stream_ranges(start)
        .into_iter()
        .map(|(o, l)| &bytes[o as usize..(o + l) as usize])
        .collect();
    let mut out = Vec::new();
    let produced = apply(&header, &base_data, streams, &mut |b| {
        out.extend_from_slice(b);
        Ok(())
    })
    .unwrap();
    assert_eq!(produced, header.target_size);

    let missing = missing_chunks(new, base);
    assert!(!missing.is_empty());
    assert_eq!(header.target_chunks, missing.len() as u64);
    let archive = object(repo, &new.archive.hash);
    let offsets = new.chunk_offsets();
    let mut want = Vec::new();
    for &i in &missing {
        let ch = &new.chunks[i];
        let (a, b) = (offsets[i] as usize, offsets[i + 1] as usize);
        want.extend(decompress_chunk(&ch.id, ch.size, &archive[a..b]).unwrap());
    }
    assert!(
        out == want,
        "the diff from {} reproduces the missing chunks",
        d.base_version
    );
    let mut at = 0;
    for &i in &missing {
        let ch = &new.chunks[i];
        let n = ch.size as usize;
        assert_eq!(ChunkId::of(&out[at..at + n]), ch.id);
        at += n;
    }
    assert_eq!(at, out.len());
}

#[test]
fn third_release_has_diffs_from_both_earlier_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let srcs = three_releases(tmp.path());
    publish_at(&repo, &srcs[0], "stable", "1.0.0");
    publish_at(&repo, &srcs[1], "stable", "2.0.0");
    let r3 = publish_at(&repo, &srcs[2], "stable", "3.0.0");

    let m1 = read_manifest(&repo, "stable", "1.0.0");
    let m2 = read_manifest(&repo, "stable", "2.0.0");
    let m3 = read_manifest(&repo, "stable", "3.0.0");
    let head = read_head(&repo, "stable");
    let bases: Vec<&str> = m3.diffs.iter().map(|d| d.base_version.as_str()).collect();
    assert_eq!(bases, ["1.0.0", "2.0.0"], "ascending by base version");
    assert_eq!(m3.diffs[0].base_manifest, head.releases()[0].manifest.hash);
    assert_eq!(m3.diffs[1].base_manifest, head.releases()[1].manifest.hash);
    // The report lists them newest base first, with the sizes the manifest gives.
    let reported: Vec<(&str, u64)> = r3.diffs.iter().map(|d| (d.base.as_str(), d.size)).collect();
    assert_eq!(
        reported,
        [
            ("2.0.0", m3.diffs[1].object.size),
            ("1.0.0", m3.diffs[0].object.size)
        ]
    );
    check_diff(&repo, &m3, &m1, &srcs[0], &m3.diffs[0]);
    check_diff(&repo, &m3, &m2, &srcs[1], &m3.diffs[1]);
    // Release 2 has its diff from release 1 too.
    assert_eq!(m2.diffs.len(), 1);
    check_diff(&repo, &m2, &m1, &srcs[0], &m2.diffs[0]);

    // A diff pays: smaller than the missing chunks' stored frames.
    for (d, base) in [(&m3.diffs[0], &m1), (&m3.diffs[1], &m2)] {
        let stored: u64 = missing_chunks(&m3, base)
            .iter()
            .map(|&i| u64::from(m3.chunks[i].stored_size))
            .sum();
        assert!(d.object.size < stored, "{} vs {stored}", d.object.size);
    }

    // The head lists a manifest diff from each base, sorted by base manifest; each
    // turns the base's manifest bytes into the current manifest with the ids of the
    // chunks that base lacks zeroed (a skeleton), and pins the data diff from that
    // base, whose chunks' ids fill the holes back to exactly the manifest's bytes.
    assert_eq!(head.content.manifest_diffs.len(), 2);
    assert_eq!(r3.manifest_diffs, 2);
    assert!(
        head.content.manifest_diffs[0].base_manifest < head.content.manifest_diffs[1].base_manifest
    );
    let current = head.current().manifest;
    let new_bytes = object(&repo, &current.hash);
    for md in &head.content.manifest_diffs {
        let base = head
            .releases()
            .iter()
            .find(|r| r.manifest.hash == md.base_manifest)
            .expect("a manifest diff from a listed release");
        assert_ne!(base.version, "3.0.0");
        let base_bytes = object(&repo, &base.manifest.hash);
        let diff = object(&repo, &md.object.hash);
        assert_eq!(diff.len() as u64, md.object.size);
        assert!(diff.len() < new_bytes.len());
        let out = apply_manifest_diff(&base_bytes, &diff, current.size).unwrap();
        assert!(out != new_bytes, "a skeleton, not the manifest");
        let data = m3
            .diffs
            .iter()
            .find(|d| d.base_manifest == md.base_manifest)
            .expect("a data diff from that base");
        assert_eq!(md.chunk_diff, Some(data.object));
        let base_manifest = read_manifest(&repo, "stable", &base.version);
        // Ids stay for chunks of releases older than the base (an agent on the base
        // may hold them); the rest of what the base lacks are holes.
        let older: Vec<_> = if base.version == "2.0.0" {
            read_manifest(&repo, "stable", "1.0.0").chunks
        } else {
            vec![]
        };
        let holes: Vec<_> = missing_chunks(&m3, &base_manifest)
            .iter()
            .map(|&i| m3.chunks[i].id)
            .filter(|id| !older.iter().any(|c| c.id == *id))
            .collect();
        let skeleton = Skeleton::decode(&out, &base_manifest).unwrap();
        assert_eq!(skeleton.holes(), holes.len());
        assert_eq!(
            skeleton.outside_base().len(),
            missing_chunks(&m3, &base_manifest).len()
        );
        assert!(!holes.is_empty());
        let filled = skeleton.fill(&holes).unwrap();
        assert!(filled == new_bytes, "manifest diff from {}", base.version);
    }
}

#[test]
fn depth_limits_the_bases() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let srcs = three_releases(tmp.path());
    publish_at(&repo, &srcs[0], "stable", "1.0.0");
    publish_at(&repo, &srcs[1], "stable", "2.0.0");
    let r3 = publish_depth(&repo, &srcs[2], "stable", "3.0.0", 1);
    let m3 = read_manifest(&repo, "stable", "3.0.0");
    let bases: Vec<&str> = m3.diffs.iter().map(|d| d.base_version.as_str()).collect();
    assert_eq!(bases, ["2.0.0"]);
    assert_eq!((r3.diffs.len(), r3.manifest_diffs), (1, 1));
    assert_eq!(read_head(&repo, "stable").content.manifest_diffs.len(), 1);
}

#[test]
fn depth_zero_writes_no_diffs() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let srcs = three_releases(tmp.path());
    for (v, s) in ["1.0.0", "2.0.0", "3.0.0"].iter().zip(&srcs) {
        let r = publish_depth(&repo, s, "stable", v, 0);
        assert!(r.diffs.is_empty() && r.manifest_diffs == 0, "{r:?}");
    }
    let m3 = read_manifest(&repo, "stable", "3.0.0");
    assert!(m3.diffs.is_empty());
    assert!(read_head(&repo, "stable").content.manifest_diffs.is_empty());
    let objects = files_under(&repo.join("objects"));
    assert_eq!(
        objects.len(),
        6,
        "three archives, three manifests: {objects:?}"
    );
}

#[test]
fn identical_release_gets_no_diff_object() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let src = tmp.path().join("src");
    make_tree(&src);
    publish_at(&repo, &src, "stable", "1.0.0");
    let r2 = publish_at(&repo, &src, "stable", "1.0.1");
    assert!(r2.diffs.is_empty(), "{r2:?}");
    let m2 = read_manifest(&repo, "stable", "1.0.1");
    assert!(m2.diffs.is_empty());
    assert_eq!(r2.chunks_new, 0);
    // The manifest still changed (its version), so the head carries a manifest diff.
    assert_eq!(read_head(&repo, "stable").content.manifest_diffs.len(), 1);
    let objects = files_under(&repo.join("objects"));
    assert_eq!(
        objects.len(),
        4,
        "one archive (identical, stored once), two manifests, a manifest diff: {objects:?}"
    );
}

/// A tree whose files repeat each other's text across chunk boundaries: what a
/// whole-release stream compresses far better than chunks one by one.
fn repetitive_tree(root: &Path) {
    make_tree(root);
    let text: Vec<u8> = (0..40_000)
        .flat_map(|i| format!("fn item_{}() -> u32 {{ {} }}\n", i % 3_000, i % 7).into_bytes())
        .collect();
    fs::write(root.join("share/doc/source.rs"), &text).unwrap();
    fs::write(root.join("share/doc/copy.rs"), &text[1_000..]).unwrap();
}

#[test]
fn the_diff_from_nothing_rebuilds_every_chunk_and_fills_the_skeleton_to_the_manifest() {
    use ferry_format::delta::nothing::{self, NOTHING};
    use ferry_format::delta::{StreamCodec, streams::MAX_ZSTD_WINDOW_LOG};

    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let src = tmp.path().join("src");
    repetitive_tree(&src);
    let r = try_publish_fresh(&repo, &src, "stable", "1.0.0", &key(), 10, 3, Some(19)).unwrap();
    let fresh = r.fresh.as_ref().expect("a diff from nothing");
    let m = read_manifest(&repo, "stable", "1.0.0");
    let head = read_head(&repo, "stable");

    // The head lists it first (NOTHING sorts first), pinning both objects.
    let entry = &head.content.manifest_diffs[0];
    assert_eq!(entry.base_manifest, NOTHING);
    assert_eq!(r.manifest_diffs, head.content.manifest_diffs.len());
    let diff_ref = entry.chunk_diff.expect("the diff object is pinned");
    assert_eq!(diff_ref.size, fresh.size);
    // It pays: the two objects together beat the per-chunk archive (the noise file
    // compresses no better either way; the text, split in chunks, does).
    assert!(
        fresh.size + fresh.manifest_diff_size + 20_000 < m.archive.size,
        "{} + {} vs archive {}",
        fresh.size,
        fresh.manifest_diff_size,
        m.archive.size
    );

    // The diff produces every chunk of the table, in first-use order, from one zstd
    // stream (no x86-64 program here: unfiltered).
    let (codec, ids) = from_nothing_ids(&repo, &m, &diff_ref);
    assert_eq!(
        codec,
        StreamCodec::Zstd {
            window_log: MAX_ZSTD_WINDOW_LOG
        }
    );

    // The manifest diff, from empty bytes, is the skeleton with every id a hole; the
    // produced chunks' hashes fill it back to exactly the signed manifest.
    let manifest_bytes = object(&repo, &head.current().manifest.hash);
    let md = object(&repo, &entry.object.hash);
    let skeleton = apply_manifest_diff(&[], &md, head.current().manifest.size).unwrap();
    let skeleton = Skeleton::decode(&skeleton, &nothing::empty_release("stable")).unwrap();
    assert_eq!(skeleton.holes(), m.chunks.len());
    assert_eq!(skeleton.fill(&ids).unwrap(), manifest_bytes);

    // The next release carries most chunks (first in its table); the diff from
    // nothing still rebuilds each. An x86-64 program in it, most of its bytes, turns
    // the branch filter on.
    let mut elf = vec![0u8; 3 << 20];
    elf[..6].copy_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1]);
    elf[18] = 62;
    // Calls (E8 rel32) to a few functions from all over, as in machine code.
    let mut x = 7u32;
    for at in (64..elf.len() - 16).step_by(16) {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        let target = [4096i64, 900_000, 2_000_000][(x >> 16) as usize % 3];
        elf[at] = 0xE8;
        elf[at + 1..at + 5].copy_from_slice(&((target - at as i64 - 5) as i32).to_le_bytes());
        elf[at + 5..at + 9].copy_from_slice(&[0x48, 0x89, 0xc7, (x >> 24) as u8 & 3]);
    }
    std::fs::write(src.join("app"), &elf).unwrap();
    let r = try_publish_fresh(&repo, &src, "stable", "1.0.1", &key(), 10, 3, Some(19)).unwrap();
    assert!(r.chunks_carried > 0);
    let m = read_manifest(&repo, "stable", "1.0.1");
    let head = read_head(&repo, "stable");
    let entry = head
        .content
        .manifest_diffs
        .iter()
        .find(|d| d.base_manifest == NOTHING)
        .expect("the head lists the diff from nothing");
    let (codec, _) = from_nothing_ids(&repo, &m, &entry.chunk_diff.unwrap());
    assert_eq!(
        codec,
        StreamCodec::ZstdX86 {
            window_log: MAX_ZSTD_WINDOW_LOG
        }
    );

    // --no-fresh: none, and the head lists no entry from nothing.
    let r2 = try_publish_fresh(&repo, &src, "stable", "1.1.0", &key(), 10, 3, None).unwrap();
    assert!(r2.fresh.is_none());
    let head = read_head(&repo, "stable");
    assert!(
        head.content
            .manifest_diffs
            .iter()
            .all(|d| d.base_manifest != NOTHING)
    );
}

/// Applies the diff from nothing `diff_ref` of `m`: its extra stream's codec, and the
/// ids of what it produces in table order, having checked each produced chunk, in
/// first-use order, against the table.
fn from_nothing_ids(
    repo: &Path,
    m: &Manifest,
    diff_ref: &ferry_format::id::ObjectRef,
) -> (ferry_format::delta::StreamCodec, Vec<ChunkId>) {
    use ferry_format::delta::nothing::{self, is_from_nothing};
    let bytes = object(repo, &diff_ref.hash);
    let (header, start) = DiffHeader::decode_prefix(&bytes, diff_ref.size).unwrap();
    assert!(is_from_nothing(&header));
    assert_eq!(header.target_chunks, m.chunks.len() as u64);
    let streams: Vec<&[u8]> = header
        .stream_ranges(start)
        .into_iter()
        .map(|(o, l)| &bytes[o as usize..(o + l) as usize])
        .collect();
    let mut out = Vec::new();
    apply(&header, &ConcatBase::new(vec![]), streams, &mut |b| {
        out.extend_from_slice(b);
        Ok(())
    })
    .unwrap();
    let mut at = 0;
    let mut ids = vec![None; m.chunks.len()];
    for i in nothing::order(m) {
        let c = &m.chunks[i];
        let id = ChunkId::of(&out[at..at + c.size as usize]);
        assert_eq!(id, c.id, "chunk {i}");
        ids[i] = Some(id);
        at += c.size as usize;
    }
    assert_eq!(at, out.len());
    (
        header.streams[2].codec,
        ids.into_iter().map(Option::unwrap).collect(),
    )
}

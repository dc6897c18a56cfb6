//! Fuzz regressions: every input committed under `fuzz/regressions/<target>/` (crash
//! inputs `fuzz/run.sh` found, copied from `fuzz/artifacts/<target>/`) and every seed
//! of `fuzz/corpus/<target>/` is replayed here through the checks of the cargo-fuzz
//! target of the same name, on the stable toolchain and in every test run. The named
//! tests below pin the hostile inputs the decoders were built against.
//!
//! The fuzz targets reach two crate-private body decoders through the `fuzzing`
//! feature; here a body is wrapped in an envelope signed with a fixed key and goes
//! through `verify_own_head` / `verify_own_manifest`, which call the same decoders.
//! `plan_model` takes structured (`arbitrary`) input and is not replayed here; the
//! planner's model is also checked by unit tests in `format/src/plan.rs`.

use std::path::{Path, PathBuf};

use ferry_format::FormatError;
use ferry_format::chunking::{ChunkParams, compress_chunk, decompress_chunk};
use ferry_format::content_range::parse_content_range;
use ferry_format::delta::DiffHeader;
use ferry_format::delta::apply::{ConcatBase, apply};
use ferry_format::delta::manifest_diff::{Skeleton, apply_manifest_diff};
use ferry_format::envelope::{Envelope, ObjectKind, TrustedKeys};
use ferry_format::head::claimed_key_list;
use ferry_format::id::{ChunkId, Digest, ObjectRef};
use ferry_format::keylist::{TrustRoot, inspect, key_list_ref};
use ferry_format::keys::SecretKey;
use ferry_format::layout::{
    RepoPath, head_log_path, head_path, key_list_path, object_path, parse_repo_path,
};
use ferry_format::manifest::{ChunkRecord, Manifest};
use ferry_format::ondemand::{
    IndexEntry, MAX_WAIT_SECS, diff_request_path, parse_diff_request, parse_wait,
};
use ferry_format::path::check_path;
use ferry_format::plan::plan_archive;
use ferry_format::verified::{verify_own_head, verify_own_manifest};
use ferry_format::version::{Version, check_channel};

const NOT_REPLAYED: &[&str] = &["plan_model"];

fn fuzz_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn key() -> SecretKey {
    SecretKey::from_seed([1; 32])
}

/// Runs the checks of fuzz target `target` on `data`; panics where the target would.
fn replay(target: &str, data: &[u8]) {
    match target {
        "envelope_head" => envelope(ObjectKind::ChannelHead, data),
        "envelope_manifest" => envelope(ObjectKind::Manifest, data),
        "head_body" => head_body(data),
        "manifest_body" => manifest_body(data),
        "key_list" => key_list(data),
        "chunk_decompress" => chunk_decompress(data),
        "content_range" => {
            if let Ok(text) = std::str::from_utf8(data) {
                content_range(text)
            }
        }
        "paths" => {
            if let Ok(text) = std::str::from_utf8(data) {
                paths(text)
            }
        }
        "diff_apply" => diff_apply(data),
        "x86_rewrite" => x86_rewrite(data),
        other => panic!(
            "fuzz target {other} has no replay in format/tests/fuzz_regressions.rs: add one \
             (or list it in NOT_REPLAYED with the reason)"
        ),
    }
}

fn signed(kind: ObjectKind, body: &[u8]) -> Vec<u8> {
    Envelope::sign(kind, body.to_vec(), &[&key()]).encode()
}

fn envelope(kind: ObjectKind, data: &[u8]) {
    let Ok(env) = Envelope::decode(kind, data) else {
        return;
    };
    assert_eq!(
        env.encode(),
        data,
        "{} envelope does not round-trip",
        kind.name()
    );
    match kind {
        ObjectKind::ChannelHead => {
            let claimed = claimed_key_list(data);
            let trusted = TrustedKeys::single(key().public());
            if let Ok(head) = verify_own_head(&signed(kind, &env.body), &trusted) {
                assert_eq!(claimed.unwrap(), head.key_list);
            }
        }
        _ => {
            let _ = verify_own_manifest(
                &signed(kind, &env.body),
                &TrustedKeys::single(key().public()),
            );
        }
    }
}

fn head_body(data: &[u8]) {
    let trusted = TrustedKeys::single(key().public());
    let Ok(head) = verify_own_head(&signed(ObjectKind::ChannelHead, data), &trusted) else {
        return;
    };
    head.validate().expect("a decoded head is valid");
    assert!(
        head.releases()
            .iter()
            .all(|r| head.release(&r.version.parse().unwrap()) == Some(r))
    );
    let again = head.sign(&[&key()]).expect("a decoded head signs");
    let env = Envelope::decode(ObjectKind::ChannelHead, &again).unwrap();
    assert_eq!(env.body, data, "head body encoding is not canonical");
}

fn manifest_body(data: &[u8]) {
    let trusted = TrustedKeys::single(key().public());
    let Ok(m) = verify_own_manifest(&signed(ObjectKind::Manifest, data), &trusted) else {
        return;
    };
    m.validate().expect("a decoded manifest is valid");
    let offsets = m.chunk_offsets();
    assert_eq!(offsets.last(), Some(&m.archive.size));
    assert!(
        offsets.windows(2).all(|w| w[0] < w[1]),
        "chunks overlap or are empty"
    );
    for e in &m.entries {
        assert!(check_path(&e.path).is_ok());
    }
    let all = plan_archive(&m, |_| false, 0);
    assert_eq!(all.download_bytes, m.archive.size);
    assert!(plan_archive(&m, |_| true, 0).ranges.is_empty());
    let again = m.sign(&[&key()]).expect("a decoded manifest signs");
    let env = Envelope::decode(ObjectKind::Manifest, &again).unwrap();
    assert_eq!(env.body, data, "manifest body encoding is not canonical");
}

fn key_list(data: &[u8]) {
    let _ = TrustRoot::SingleKey(key().public()).advance(data);
    let _ = TrustRoot::from_stored(data);
    let Ok(list) = inspect(data) else {
        return;
    };
    list.validate().expect("an inspected key list is valid");
    assert_eq!(key_list_ref(data).unwrap().version, list.version);
    let resigned = list.sign(&[&key()]).expect("a decoded key list signs");
    let body = |b: &[u8]| Envelope::decode(ObjectKind::KeyList, b).unwrap().body;
    assert_eq!(
        body(&resigned),
        body(data),
        "key list body encoding is not canonical"
    );
}

fn chunk_decompress(data: &[u8]) {
    fn check(id: &ChunkId, size: u32, stored: &[u8]) -> Option<Vec<u8>> {
        let out = decompress_chunk(id, size, stored).ok()?;
        assert_eq!(out.len(), size as usize);
        assert_eq!(ChunkId::of(&out), *id);
        Some(out)
    }
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        let Some((size, stored)) = rest.split_first_chunk::<3>() else {
            return;
        };
        let size = u32::from_le_bytes([size[0], size[1], size[2], 0]) % ((1 << 20) + 1);
        check(&ChunkId::of(b""), size, stored);
    } else {
        let Some(([lo, hi, xor, delta], content)) = rest.split_first_chunk::<4>() else {
            return;
        };
        let id = ChunkId::of(content);
        let mut stored = compress_chunk(content, 1).unwrap();
        let size = (content.len() as i64 + i64::from(*delta as i8)).clamp(0, 1 << 20) as u32;
        let pos = usize::from(u16::from_le_bytes([*lo, *hi])) % stored.len();
        stored[pos] ^= xor;
        let out = check(&id, size, &stored);
        if *xor == 0 && *delta == 0 {
            assert_eq!(
                out.as_deref(),
                Some(content),
                "an intact chunk must round-trip"
            );
        }
    }
}

fn content_range(text: &str) {
    let Ok(r) = parse_content_range(text) else {
        return;
    };
    assert!(r.first <= r.last);
    assert!(r.complete.is_none_or(|n| r.last < n));
    let complete = r.complete.map_or("*".to_string(), |n| n.to_string());
    let canonical = format!("bytes {}-{}/{complete}", r.first, r.last);
    assert_eq!(parse_content_range(&canonical).unwrap(), r);
}

fn paths(text: &str) {
    let plain =
        |c: &str| !matches!(c, "" | "." | "..") && c.len() <= 255 && !c.contains(['/', '\\', '\0']);
    for s in text.splitn(3, '\n') {
        if check_path(s).is_ok() {
            assert!(s.split('/').all(plain), "{s:?} accepted");
        }
        if check_channel(s).is_ok() {
            assert_eq!(
                parse_repo_path(&head_path(s)),
                Some(RepoPath::Head(s.to_string()))
            );
        }
        if let Ok(v) = Version::parse(s) {
            assert_eq!(v.as_str(), s);
            assert!(plain(s) && !s.starts_with(['.', '-']), "version {s:?}");
        }
        let unrooted = s.strip_prefix('/').unwrap_or(s);
        match parse_repo_path(s) {
            None => {}
            Some(RepoPath::Object(d)) => assert_eq!(unrooted, object_path(&d)),
            Some(RepoPath::Head(c)) => assert_eq!(unrooted, head_path(&c)),
            Some(RepoPath::KeyList(v)) => assert_eq!(unrooted, key_list_path(v)),
            Some(RepoPath::HeadLog(c, seq, hash)) => {
                assert_eq!(unrooted, head_log_path(&c, seq, &hash))
            }
        }
        // Diff requests (FORMAT.md §3.8): exactly what diff_request_path produces,
        // two different manifests; index entries and waits read back as written.
        if let Some((b, t)) = parse_diff_request(s) {
            assert_ne!(b, t);
            assert_eq!(unrooted, diff_request_path(&b, &t));
        }
        if let Ok(e) = IndexEntry::parse(&format!("{s}\n")) {
            assert_eq!(e.encode(), format!("{s}\n"));
        }
        if let Some(w) = parse_wait(s) {
            assert!(w <= MAX_WAIT_SECS && s.bytes().all(|b| b.is_ascii_digit()));
        }
    }
}

fn diff_apply(data: &[u8]) {
    const BASE: &[u8] = b"the quick brown fox jumps over the lazy dog, 0123456789 times over";
    let chunk = |tag: &[u8]| ChunkRecord {
        id: Digest::of(tag),
        size: 100,
        stored_size: 50,
        generation: 1,
    };
    let base_manifest = Manifest {
        channel: "stable".into(),
        version: "1.0.0".into(),
        generation: 1,
        chunking: ChunkParams::default(),
        archive: ObjectRef {
            hash: Digest::of(b"archive"),
            size: 100,
        },
        chunks: vec![chunk(b"a"), chunk(b"b")],
        entries: vec![],
        diffs: vec![],
    };
    if let Ok(out) = apply_manifest_diff(BASE, data, 4096) {
        assert!(out.len() <= 4096);
    }
    if let Ok(skeleton) = Skeleton::decode(data, &base_manifest) {
        let _ = skeleton.outside_base().count();
        let holes = skeleton.holes();
        let _ = skeleton.fill(&vec![Digest([1; 32]); holes]);
    }
    let Ok((header, start)) = DiffHeader::decode_prefix(data, data.len() as u64) else {
        return;
    };
    if header.target_size > 1 << 20 {
        return;
    }
    let streams: Vec<&[u8]> = header
        .stream_ranges(start)
        .into_iter()
        .map(|(o, l)| &data[o as usize..(o + l) as usize])
        .collect();
    let Some(base) = BASE.get(..header.base_size as usize) else {
        return;
    };
    let parts = ConcatBase::new(vec![&base[..base.len() / 2], &base[base.len() / 2..]]);
    let mut produced = 0u64;
    let result = apply(&header, &parts, streams, &mut |b| {
        produced += b.len() as u64;
        Ok(())
    });
    assert!(produced <= header.target_size);
    if let Ok(n) = result {
        assert_eq!(n, header.target_size);
    }
}

/// The checks of `fuzz/fuzz_targets/x86_rewrite.rs`.
fn x86_rewrite(data: &[u8]) {
    use ferry_format::delta::x86::elf::Elf;
    use ferry_format::delta::x86::rewrite::{BlockRewriter, rewrite_blocks};
    use ferry_format::delta::x86::scan::references;
    use ferry_format::delta::x86::{AddressMap, FileMaps, rewrite_file};
    if let Ok(maps) = FileMaps::decode(data, 8) {
        assert_eq!(FileMaps::decode(&maps.encode(), 8).ok(), Some(maps));
    }
    if let Some(elf) = Elf::parse(data) {
        for r in references(&elf, data) {
            assert!(r.at + r.kind.width() <= data.len() as u64);
        }
        let map = AddressMap::from_runs(&[(0, 16), (0x40_0000, -4096)]).expect("increasing");
        let whole = rewrite_file(data, &map).expect("an ELF file");
        assert_eq!(whole.len(), data.len());
        let rw = BlockRewriter::new(data, &map).expect("an ELF file");
        let mut blocks = vec![0u8; data.len()];
        rewrite_blocks(&rw, &mut blocks);
        assert!(blocks == whole, "block by block");
        let (s, e) = (data.len() / 3, data.len() / 3 * 2);
        let mut part = vec![0u8; e - s];
        rw.rewrite_range(s as u64, &mut part);
        assert!(part == whole[s..e], "a range");
    }
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().path())
                .filter(|p| p.is_file() && p.file_name().is_some_and(|n| n != "README.md"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

#[test]
fn every_regression_and_seed_replays_through_its_fuzz_target() {
    let targets: Vec<String> = files_in(&fuzz_dir().join("fuzz_targets"))
        .iter()
        .filter_map(|p| Some(p.file_stem()?.to_str()?.to_string()))
        .collect();
    assert!(targets.len() >= 9, "fuzz targets found: {targets:?}");
    for target in targets
        .iter()
        .filter(|t| !NOT_REPLAYED.contains(&t.as_str()))
    {
        let regressions = files_in(&fuzz_dir().join("regressions").join(target));
        let seeds = files_in(&fuzz_dir().join("corpus").join(target));
        assert!(!seeds.is_empty(), "fuzz/corpus/{target} has no seed");
        for input in regressions.iter().chain(&seeds) {
            let data = std::fs::read(input).unwrap();
            let outcome = std::panic::catch_unwind(|| replay(target, &data));
            assert!(
                outcome.is_ok(),
                "{} fails fuzz target {target}",
                input.display()
            );
        }
    }
}

#[test]
fn an_endless_head_is_refused_before_parsing() {
    let limit = ObjectKind::ChannelHead.max_size() as usize;
    let mut bytes = signed(ObjectKind::ChannelHead, &vec![0; limit]);
    bytes.truncate(limit + 1);
    let e = Envelope::decode(ObjectKind::ChannelHead, &bytes).unwrap_err();
    assert!(matches!(e, FormatError::TooLarge { .. }), "{e}");
    envelope(ObjectKind::ChannelHead, &bytes);
}

#[test]
fn a_hostile_length_prefix_does_not_allocate() {
    // A channel name "of 2^64-1 bytes" and a release list "of 2^63 entries": the
    // decoder must refuse from the remaining input, not reserve the claimed memory.
    let mut huge_string = u64::MAX.to_le_bytes().to_vec();
    huge_string.extend_from_slice(b"stable");
    let mut huge_list = 6u64.to_le_bytes().to_vec();
    huge_list.extend_from_slice(b"stable");
    huge_list.extend_from_slice(&[7; 8 * 3 + 2]); // sequence, issued, expires, format
    huge_list.extend_from_slice(&(1u64 << 63).to_le_bytes());
    let trusted = TrustedKeys::single(key().public());
    for body in [huge_string, huge_list] {
        let e = verify_own_head(&signed(ObjectKind::ChannelHead, &body), &trusted).unwrap_err();
        assert!(matches!(e, FormatError::Malformed { .. }), "{e}");
        let e = verify_own_manifest(&signed(ObjectKind::Manifest, &body), &trusted).unwrap_err();
        assert!(matches!(e, FormatError::Malformed { .. }), "{e}");
        head_body(&body);
        manifest_body(&body);
    }
}

#[test]
fn an_envelope_whose_lengths_run_past_its_end_is_refused() {
    let good = signed(ObjectKind::Manifest, b"body");
    let mut long_body = good.clone();
    long_body[6..10].copy_from_slice(&u32::MAX.to_le_bytes());
    let e = Envelope::decode(ObjectKind::Manifest, &long_body).unwrap_err();
    assert!(e.to_string().contains("truncated in body"), "{e}");
    for count in [0u16, 33, u16::MAX] {
        let mut bad = good.clone();
        let at = 10 + 4;
        bad[at..at + 2].copy_from_slice(&count.to_le_bytes());
        let e = Envelope::decode(ObjectKind::Manifest, &bad).unwrap_err();
        assert!(
            e.to_string().contains("signatures, expected 1 to 32"),
            "{count}: {e}"
        );
        envelope(ObjectKind::Manifest, &bad);
    }
}

#[test]
fn a_chunk_frame_claiming_more_than_its_size_is_cut_off() {
    // zstd frame: magic, single-segment descriptor with an 8-byte content size of
    // 1 TiB, then one raw block of 4 bytes. The agent must stop at the declared size.
    let mut frame = vec![0x28, 0xb5, 0x2f, 0xfd, 0xe0];
    frame.extend_from_slice(&(1u64 << 40).to_le_bytes());
    frame.extend_from_slice(&[0x21, 0x00, 0x00]); // last raw block of 4 bytes
    frame.extend_from_slice(b"abcd");
    let id = ChunkId::of(b"abcd");
    let e = decompress_chunk(&id, 4, &frame).unwrap_err();
    assert!(matches!(e, FormatError::CorruptChunk { .. }), "{e}");
    let mut input = vec![0u8, 4, 0, 0];
    input.extend_from_slice(&frame);
    chunk_decompress(&input);
}

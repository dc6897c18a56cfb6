//! Golden vectors: the exact bytes of a fixed head, manifest and key list, and a
//! manifest diff and diff object agents must keep reading. bincode is no longer
//! developed, so these pin the encoding FORMAT.md specifies; if they fail, the wire
//! format changed. Regenerate all of them (only for a deliberate format change, with a
//! format version bump) with one command:
//! `FERRY_BLESS=1 cargo test -p ferry-format --test golden`.
//!
//! These are written by the code under test; `testdata/independent/` holds a vector
//! computed without it (format/tests/independent.rs).

use std::path::PathBuf;

use ferry_format::chunking::ChunkParams;
use ferry_format::delta::apply::{ConcatBase, apply};
use ferry_format::delta::encode::{Sinks, encode};
use ferry_format::delta::manifest_diff::{apply_manifest_diff, encode_manifest_diff};
use ferry_format::delta::pack::{object_in_memory, pack_in_memory};
use ferry_format::delta::{BSDIFF_V2, DiffHeader, DiffLayout, DiffRef};
use ferry_format::envelope::CLIENT_FORMAT;
use ferry_format::head::{
    ChannelHead, HeadContent, ReleaseRef, ReleaseRequirements, ReleaseRules, Rollout, RolloutLabels,
};
use ferry_format::id::{ChunkId, Digest, ObjectRef};
use ferry_format::keylist::KeyList;
use ferry_format::keys::SecretKey;
use ferry_format::manifest::{ChunkRecord, Entry, EntryKind, Manifest};
use ferry_format::requirements::Requirements;

fn vectors() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../testdata/vectors")
}

fn blessing() -> bool {
    std::env::var_os("FERRY_BLESS").is_some()
}

/// The stored vector `name`, written from `bytes` when blessing.
fn stored(name: &str, bytes: &[u8]) -> String {
    let path = vectors().join(name);
    if blessing() {
        std::fs::create_dir_all(vectors()).unwrap();
        std::fs::write(&path, hex_lines(bytes)).unwrap();
    }
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run with FERRY_BLESS=1 to create", path.display()))
}

fn from_hex_lines(text: &str) -> Vec<u8> {
    let hex: String = text.split_whitespace().collect();
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

fn check(name: &str, bytes: &[u8]) {
    let hex_now = hex_lines(bytes);
    let stored = stored(name, bytes);
    assert_eq!(
        stored, hex_now,
        "{name} changed: the wire format is not what FORMAT.md specifies"
    );
}

fn hex_lines(bytes: &[u8]) -> String {
    bytes
        .chunks(32)
        .map(|c| c.iter().map(|b| format!("{b:02x}")).collect::<String>() + "\n")
        .collect()
}

/// A head whose publisher content (sequence 5, 90 days, 1.1.0 at 50%) is signed by
/// key 1 and whose freshness layer (sequence 7, 7 days, 1.1.0 lowered to 20%) is
/// signed by key 2, as the online role would.
#[test]
fn golden_head() {
    let content = HeadContent {
        channel: "stable".into(),
        sequence: 5,
        issued_at: 1_700_000_000,
        expires_at: 1_707_776_000,
        min_client_format: CLIENT_FORMAT,
        releases: vec![
            ReleaseRef {
                version: "1.0.0".into(),
                manifest: ObjectRef {
                    hash: Digest([0x11; 32]),
                    size: 1234,
                },
            },
            ReleaseRef {
                version: "1.1.0".into(),
                manifest: ObjectRef {
                    hash: Digest([0x22; 32]),
                    size: 5678,
                },
            },
        ],
        manifest_diffs: vec![],
        rollout: vec![Rollout {
            version: "1.1.0".into(),
            percent: 50,
        }],
    };
    let head = ChannelHead::new(
        content.sign(&[&SecretKey::from_seed([1; 32])]).unwrap(),
        7,
        1_700_000_000,
        1_700_604_800,
        None,
        vec![Rollout {
            version: "1.1.0".into(),
            percent: 20,
        }],
    )
    .unwrap();
    check(
        "head_stable_seq7_seed01.hex",
        &head.sign(&[&SecretKey::from_seed([2; 32])]).unwrap(),
    );
}

/// The content of `golden_head` (format 2 there) with requirements on 1.1.0, which
/// makes it format 3 (FORMAT.md §5.2); publisher and freshness layer signed by key 1.
#[test]
fn golden_head_with_requirements() {
    let content = HeadContent {
        channel: "stable".into(),
        sequence: 5,
        issued_at: 1_700_000_000,
        expires_at: 1_707_776_000,
        min_client_format: CLIENT_FORMAT,
        releases: vec![ReleaseRef {
            version: "1.1.0".into(),
            manifest: ObjectRef {
                hash: Digest([0x22; 32]),
                size: 5678,
            },
        }],
        manifest_diffs: vec![],
        rollout: vec![],
    };
    let requirements = ReleaseRules {
        requirements: vec![ReleaseRequirements {
            version: "1.1.0".into(),
            requirements: Requirements::parse(&[
                "os=linux",
                "arch=x86_64",
                "min-agent=0.3.0",
                "disk=500MiB",
                "role=edge",
            ])
            .unwrap(),
        }],
        ..ReleaseRules::default()
    };
    let bytes = ChannelHead::publish_with(
        &content,
        &requirements,
        7,
        1_700_604_800,
        None,
        &[&SecretKey::from_seed([1; 32])],
    )
    .unwrap();
    check("head_stable_requirements_seed01.hex", &bytes);
    let head = ferry_format::head::inspect_head(&from_hex_lines(&stored(
        "head_stable_requirements_seed01.hex",
        &bytes,
    )))
    .unwrap();
    assert_eq!(
        head.requirements_of("1.1.0").to_string(),
        "arch=x86_64 disk=500 MiB min-agent=0.3.0 os=linux role=edge"
    );
}

fn release(version: &str, fill: u8) -> ReleaseRef {
    ReleaseRef {
        version: version.into(),
        manifest: ObjectRef {
            hash: Digest([fill; 32]),
            size: 1000 + u64::from(fill),
        },
    }
}

/// Content format 4 (FORMAT.md §5.3, §5.4): 1.0.0, 1.1.0 (revoked) and 1.2.0, offered
/// to 50% of the agents labelled region=eu and tier=canary, requirements on 1.0.0;
/// publisher and freshness layer signed by key 1.
#[test]
fn golden_head_with_revocation_and_rollout_labels() {
    let content = HeadContent {
        channel: "stable".into(),
        sequence: 6,
        issued_at: 1_700_000_000,
        expires_at: 1_707_776_000,
        min_client_format: CLIENT_FORMAT,
        releases: vec![
            release("1.0.0", 0x11),
            release("1.1.0", 0x22),
            release("1.2.0", 0x33),
        ],
        manifest_diffs: vec![],
        rollout: vec![Rollout {
            version: "1.2.0".into(),
            percent: 50,
        }],
    };
    let rules = ReleaseRules {
        requirements: vec![ReleaseRequirements {
            version: "1.0.0".into(),
            requirements: Requirements::parse(&["os=linux"]).unwrap(),
        }],
        revoked: vec!["1.1.0".into()],
        rollout_labels: vec![RolloutLabels {
            version: "1.2.0".into(),
            labels: Requirements::parse(&["tier=canary", "region=eu"]).unwrap(),
        }],
    };
    let bytes = ChannelHead::publish_with(
        &content,
        &rules,
        8,
        1_700_604_800,
        None,
        &[&SecretKey::from_seed([1; 32])],
    )
    .unwrap();
    check("head_stable_revoked_labels_seed01.hex", &bytes);
    let stored = from_hex_lines(&stored("head_stable_revoked_labels_seed01.hex", &bytes));
    assert_eq!(u16::from_le_bytes([stored[4], stored[5]]), 2, "head format");
    let head = ferry_format::head::inspect_head(&stored).unwrap();
    let content_bytes = head.content_bytes();
    assert_eq!(
        u16::from_le_bytes([content_bytes[4], content_bytes[5]]),
        4,
        "content format"
    );
    assert!(head.is_revoked("1.1.0") && !head.is_revoked("1.2.0"));
    assert_eq!(
        head.rollout_labels_of("1.2.0").to_string(),
        "region=eu tier=canary"
    );
    assert!(head.rollout_labels_of("1.0.0").is_empty());
    assert_eq!(head.rules(), &rules);
}

/// Key list 2 with an online role: roots {3} 1-of-1, publishers {1}, online {2},
/// signed by key 3.
fn key_list_with_online_role() -> Vec<u8> {
    let k = |n: u8| SecretKey::from_seed([n; 32]).public();
    let list = KeyList::new(2, 1_700_000_000, &[k(3)], 1, &[k(1)], 1)
        .unwrap()
        .with_online(&[k(2)], 1)
        .unwrap();
    list.sign(&[&SecretKey::from_seed([3; 32])]).unwrap()
}

#[test]
fn golden_key_list_with_online_role() {
    check(
        "key_list_v2_online_seed03.hex",
        &key_list_with_online_role(),
    );
}

/// The online key's pause (FORMAT.md §5): the publisher content of `golden_head`
/// (1.1.0 at 50%, key 1) under a freshness layer naming key list 2 (the vector above)
/// and signed by its online key 2 alone, with 1.1.0 overridden to 0%.
#[test]
fn golden_head_paused_by_the_online_key() {
    let list = key_list_with_online_role();
    let content = HeadContent {
        channel: "stable".into(),
        sequence: 5,
        issued_at: 1_700_000_000,
        expires_at: 1_707_776_000,
        min_client_format: CLIENT_FORMAT,
        releases: vec![release("1.0.0", 0x11), release("1.1.0", 0x22)],
        manifest_diffs: vec![],
        rollout: vec![Rollout {
            version: "1.1.0".into(),
            percent: 50,
        }],
    };
    let head = ChannelHead::new(
        content.sign(&[&SecretKey::from_seed([1; 32])]).unwrap(),
        9,
        1_700_100_000,
        1_700_704_800,
        Some(ferry_format::keylist::key_list_ref(&list).unwrap()),
        vec![Rollout {
            version: "1.1.0".into(),
            percent: 0,
        }],
    )
    .unwrap();
    let fresh = head.sign(&[&SecretKey::from_seed([2; 32])]).unwrap();
    check("head_stable_online_pause_seed02.hex", &fresh);
    let stored = from_hex_lines(&stored("head_stable_online_pause_seed02.hex", &fresh));
    // An agent trusting key list 2 accepts it, paused, as the online key signed it.
    let trust = ferry_format::keylist::TrustRoot::from_stored(&list).unwrap();
    let policy = ferry_format::verified::HeadPolicy {
        channel: "stable",
        now: 1_700_200_000,
        max_skew: 0,
        last_sequence: None,
        key_list_version: 2,
        last_content_sequence: None,
        rollout_seen: None,
    };
    let v = ferry_format::verified::verify_head(&stored, &trust.head_keys(), &policy).unwrap();
    assert_eq!(
        (v.rollout_of("1.1.0"), v.content.rollout_of("1.1.0")),
        (0, 50)
    );
}

#[test]
fn golden_manifest() {
    check(
        "manifest_stable_1.1.0_seed01.hex",
        &manifest_1_1_0()
            .sign(&[&SecretKey::from_seed([1; 32])])
            .unwrap(),
    );
}

fn manifest_1_1_0() -> Manifest {
    Manifest {
        channel: "stable".into(),
        version: "1.1.0".into(),
        generation: 2,
        chunking: ChunkParams::default(),
        archive: ObjectRef {
            hash: Digest([0x33; 32]),
            size: 30,
        },
        chunks: vec![
            ChunkRecord {
                id: ChunkId::of(b"a"),
                size: 100,
                stored_size: 10,
                generation: 1,
            },
            ChunkRecord {
                id: ChunkId::of(b"b"),
                size: 200,
                stored_size: 20,
                generation: 2,
            },
        ],
        entries: vec![
            Entry {
                path: "bin".into(),
                kind: EntryKind::Dir { mode: 0o755 },
            },
            Entry {
                path: "bin/app".into(),
                kind: EntryKind::File {
                    mode: 0o755,
                    size: 300,
                    hash: Digest([0x44; 32]),
                    chunks: vec![0, 1],
                },
            },
            Entry {
                path: "current".into(),
                kind: EntryKind::Symlink {
                    target: "bin/app".into(),
                },
            },
        ],
        diffs: vec![],
    }
}

#[test]
fn golden_key_list() {
    let key = |seed: u8| SecretKey::from_seed([seed; 32]);
    let list = KeyList::new(
        3,
        1_700_000_000,
        &[key(2).public(), key(3).public()],
        1,
        &[key(4).public(), key(5).public(), key(6).public()],
        2,
    )
    .unwrap();
    check(
        "key_list_v3_seed02_03.hex",
        &list.sign(&[&key(2), &key(3)]).unwrap(),
    );
}

fn manifest_1_2_0() -> Manifest {
    let mut m = manifest_1_1_0();
    m.version = "1.2.0".into();
    m.generation = 3;
    m.chunks[1].id = ChunkId::of(b"c");
    m.chunks[1].generation = 3;
    if let EntryKind::File { hash, .. } = &mut m.entries[1].kind {
        *hash = Digest([0x55; 32]);
    }
    m.diffs = vec![DiffRef {
        base_version: "1.1.0".into(),
        base_manifest: Digest([0x66; 32]),
        object: ObjectRef {
            hash: Digest([0x77; 32]),
            size: 999,
        },
    }];
    m
}

/// A manifest diff is a zstd frame whose choices (matches, block splits) belong to
/// zstd, not to FORMAT.md: what is pinned is that the stored diff keeps turning the
/// base into exactly the new manifest, as an agent of this format version applies it.
#[test]
fn golden_manifest_diff() {
    let k = SecretKey::from_seed([1; 32]);
    let base = manifest_1_1_0().sign(&[&k]).unwrap();
    let target = manifest_1_2_0().sign(&[&k]).unwrap();
    let fresh = encode_manifest_diff(&base, &target, 19).unwrap();
    let diff = from_hex_lines(&stored("manifest_diff_1.1.0_to_1.2.0_seed01.hex", &fresh));
    assert!(
        diff.len() < target.len(),
        "a diff smaller than what it builds"
    );
    let out = apply_manifest_diff(&base, &diff, target.len() as u64).unwrap();
    assert_eq!(
        out, target,
        "the stored manifest diff no longer builds 1.2.0"
    );
    // What this build writes is read the same way.
    assert_eq!(
        apply_manifest_diff(&base, &fresh, target.len() as u64).unwrap(),
        target
    );
}

fn text(seed: u32, lines: usize) -> Vec<u8> {
    (0..lines)
        .map(|i| format!("line {i:05} of release {} {}\n", seed, i * 7 % 13))
        .collect::<String>()
        .into_bytes()
}

fn apply_object(base: &[u8], object: &[u8]) -> (DiffHeader, Vec<u8>) {
    let (header, start) = DiffHeader::decode_prefix(object, object.len() as u64).unwrap();
    let streams: Vec<&[u8]> = header
        .stream_ranges(start)
        .into_iter()
        .map(|(o, l)| &object[o as usize..(o + l) as usize])
        .collect();
    let mut out = Vec::new();
    apply(&header, &ConcatBase::new(vec![base]), streams, &mut |b| {
        out.extend_from_slice(b);
        Ok(())
    })
    .unwrap();
    (header, out)
}

/// A diff object: the header (FORMAT.md §3.6) is pinned byte for byte; the streams
/// are LZMA2 or bzip3 output, whose exact bytes belong to those libraries, so what is
/// pinned for them is that the stored object keeps producing exactly the target.
#[test]
fn golden_diff_object() {
    let base = text(1, 300);
    let mut target = text(2, 320);
    target[100..140].copy_from_slice(&[b'x'; 40]);
    let (c, d, e, _) = encode(
        &base,
        &target,
        Sinks {
            control: Vec::new(),
            diff: Vec::new(),
            extra: Vec::new(),
        },
    )
    .unwrap();
    let packed = pack_in_memory(&c, &d, &e).unwrap();
    let header = DiffHeader {
        algorithm: BSDIFF_V2,
        base_manifest: Digest([0x11; 32]),
        base_size: base.len() as u64,
        target_size: target.len() as u64,
        target_chunks: 2,
        layout: packed.layout,
        streams: packed.streams.iter().map(|(h, _)| *h).collect(),
    };
    let fresh = object_in_memory(&header, &packed);
    let object = from_hex_lines(&stored("diff_object_bsdiff2_text.hex", &fresh));

    let (stored_header, out) = apply_object(&base, &object);
    assert_eq!(
        out, target,
        "the stored diff object no longer builds its target"
    );
    assert_eq!(stored_header.algorithm, BSDIFF_V2);
    assert_eq!(stored_header.base_manifest, Digest([0x11; 32]));
    assert_eq!(
        (stored_header.base_size, stored_header.target_size),
        (base.len() as u64, target.len() as u64)
    );
    assert_eq!(stored_header.target_chunks, 2);
    assert!(matches!(
        stored_header.layout,
        DiffLayout::Dense | DiffLayout::Sparse
    ));
    let prefix = stored_header.encode_prefix();
    assert_eq!(
        &object[..prefix.len()],
        &prefix[..],
        "the diff header encoding changed"
    );
    assert_eq!(apply_object(&base, &fresh).1, target);
}

/// A signed audit report (FORMAT.md §11) over fixed report bytes, signed by key 1,
/// and the head log entry name of `golden_head`'s head (§7): a verifier of this format
/// must accept exactly these bytes.
#[test]
fn golden_signed_audit_report() {
    use ferry_format::audit::{sign_report, verify_signed_report};
    let report = br#"{"schema":1,"report_id":"00112233445566778899aabbccddeeff","generated_at":1700000100,"generated_at_utc":"2023-11-14T22:15:00Z","since":1699920000,"since_utc":"2023-11-14T00:00:00Z","until":1700000100,"until_utc":"2023-11-14T22:15:00Z","repository":"repo","fleet_db":null,"counts":{"published":1},"events":[{"time":1700000000,"time_utc":"2023-11-14T22:13:20Z","event":"published","channel":"stable","release":"1.1.0","head_sequence":7,"publisher_sequence":5,"head":null,"role":"publisher","key_ids":[],"content_key_ids":[],"percent":50,"previous_percent":null,"expires_at":1700604800,"agent_id":null,"hostname":null,"agent_report_id":null,"result":null,"detail":null}]}"#;
    let key = SecretKey::from_seed([1; 32]);
    let signed = sign_report(report, &key).unwrap();
    check("audit_report_signed_seed01.hex", &signed);
    let stored = from_hex_lines(&stored("audit_report_signed_seed01.hex", &signed));
    let v = verify_signed_report(&stored, &key.public()).unwrap();
    assert_eq!(v.bytes, report);
    assert_eq!(v.report.events[0].percent, Some(50));
    assert_eq!(
        ferry_format::layout::head_log_name(7, &Digest([0x33; 32])),
        format!("00000000000000000007-{}", "33".repeat(32))
    );
}

/// A minimal x86-64 ELF executable: one executable `PT_LOAD` segment and one `.text`
/// section holding `code` at 0x401000 (file offset 0x100), section headers after it.
fn tiny_elf(code: &[u8]) -> Vec<u8> {
    let (text_off, va) = (0x100u64, 0x40_1000u64);
    let shoff = text_off + code.len() as u64;
    let mut f = vec![0u8; (shoff + 128) as usize];
    let mut put = |at: u64, v: &[u8]| f[at as usize..at as usize + v.len()].copy_from_slice(v);
    put(0, &[0x7f, b'E', b'L', b'F', 2, 1, 1]);
    put(16, &2u16.to_le_bytes()); // ET_EXEC
    put(18, &62u16.to_le_bytes()); // x86-64
    put(32, &64u64.to_le_bytes()); // e_phoff
    put(40, &shoff.to_le_bytes());
    put(54, &56u16.to_le_bytes());
    put(56, &1u16.to_le_bytes());
    put(58, &64u16.to_le_bytes());
    put(60, &2u16.to_le_bytes());
    // PT_LOAD, R+X, the code.
    put(64, &1u32.to_le_bytes());
    put(68, &5u32.to_le_bytes());
    put(72, &text_off.to_le_bytes());
    put(80, &va.to_le_bytes());
    put(96, &(code.len() as u64).to_le_bytes());
    put(104, &(code.len() as u64).to_le_bytes());
    // Section 1: .text, PROGBITS, ALLOC + EXECINSTR (section 0 is null).
    let s = shoff + 64;
    put(s + 4, &1u32.to_le_bytes());
    put(s + 8, &6u64.to_le_bytes());
    put(s + 16, &va.to_le_bytes());
    put(s + 24, &text_off.to_le_bytes());
    put(s + 32, &(code.len() as u64).to_le_bytes());
    put(text_off, code);
    f
}

/// Code of `funcs` functions of 32 bytes at 0x401000 + `gap` after the first: each
/// calls the next (`E8`), loads the following one's address (`lea rax, [rip+d]`),
/// jumps back to the first when `eax` is zero (`0F 84`), and returns.
fn tiny_code(funcs: u64, gap: usize) -> Vec<u8> {
    let start = |k: u64| 0x40_1000 + 32 * k + if k > 0 { gap as u64 } else { 0 };
    let mut code = Vec::new();
    for k in 0..funcs {
        if k == 1 {
            code.extend(std::iter::repeat_n(0xCC, gap));
        }
        let at = |code: &Vec<u8>, len: u64| 0x40_1000 + code.len() as u64 + len;
        let rel = |to: u64, end: u64| (to.wrapping_sub(end) as u32).to_le_bytes();
        let end = at(&code, 5);
        code.push(0xE8);
        code.extend(rel(start((k + 1) % funcs), end));
        let end = at(&code, 7);
        code.extend([0x48, 0x8D, 0x05]);
        code.extend(rel(start((k + 2) % funcs), end));
        code.extend([0x85, 0xC0]);
        let end = at(&code, 6);
        code.extend([0x0F, 0x84]);
        code.extend(rel(start(0), end));
        code.extend([
            0xB0, k as u8, 0xB0, 0x11, 0xB0, 0x22, 0xB0, 0x33, 0xB0, 0x44, 0x90, 0xC3,
        ]);
    }
    code
}

/// Reference rewriting (FORMAT.md §3.6.1) is byte-exact on both sides or diffs fail:
/// the scan and the rewrite of a fixed file through a fixed map are pinned here.
#[test]
fn golden_x86_rewrite() {
    use ferry_format::delta::x86::scan::references;
    use ferry_format::delta::x86::{AddressMap, elf::Elf, rewrite_file};
    let file = tiny_elf(&tiny_code(8, 0));
    let elf = Elf::parse(&file).unwrap();
    assert_eq!(
        references(&elf, &file).len(),
        3 * 8,
        "a call, a lea and a jz each"
    );
    let map = AddressMap::from_runs(&[(0x40_1020, 16), (0x40_1080, 48)]).unwrap();
    let rewritten = rewrite_file(&file, &map).unwrap();
    check("x86_rewrite_tiny_elf_8funcs.hex", &rewritten);
}

/// The code scan restarts at every multiple of 64 KiB of the file (FORMAT.md §3.6.1):
/// a call whose field crosses one is not a reference, one ending before it and one
/// starting on it are. The 96 bytes around the boundary, rewritten, are pinned.
#[test]
fn golden_x86_rewrite_piece_boundary() {
    use ferry_format::delta::x86::scan::references;
    use ferry_format::delta::x86::{AddressMap, elf::Elf, rewrite_file};
    const B: usize = 0x1_0000;
    let (text_off, va) = (0x100usize, 0x40_1000u64);
    let mut code = vec![0x90u8; B + 0x100 - text_off];
    // `call 0x401000` with its E8 at file offset `at`.
    let mut call = |at: usize| {
        let end = va + (at + 5 - text_off) as u64;
        code[at - text_off] = 0xE8;
        code[at - text_off + 1..at - text_off + 5]
            .copy_from_slice(&(va.wrapping_sub(end) as u32).to_le_bytes());
    };
    call(B - 21); // field ends 16 bytes before the boundary
    call(B - 3); // field crosses it
    call(B); // the first byte of the next piece
    let file = tiny_elf(&code);
    let elf = Elf::parse(&file).unwrap();
    let found: Vec<u64> = references(&elf, &file).iter().map(|r| r.at).collect();
    assert_eq!(found, [B as u64 - 20, B as u64 + 1]);
    let map = AddressMap::from_runs(&[(0x40_1000, 0x40), (0x40_2000, 0x1000)]).unwrap();
    let rewritten = rewrite_file(&file, &map).unwrap();
    check(
        "x86_rewrite_piece_boundary_96.hex",
        &rewritten[B - 48..B + 48],
    );
}

/// An algorithm-3 diff object: header pinned byte for byte, and the stored object
/// keeps producing its target over the base rewritten through its own map stream.
#[test]
fn golden_diff_object_x86() {
    use ferry_format::delta::BSDIFF_X86;
    use ferry_format::delta::pack::pack_map;
    use ferry_format::delta::x86::{FileMaps, align, elf::Elf, read_maps, rewrite_file};
    let base = tiny_elf(&tiny_code(40, 0));
    let target = tiny_elf(&tiny_code(40, 24));
    let (map, _) = align::build_map(
        &base,
        &Elf::parse(&base).unwrap(),
        &target,
        &Elf::parse(&target).unwrap(),
    );
    assert!(!map.is_empty());
    let rewritten = rewrite_file(&base, &map).unwrap();
    let raw_map = FileMaps {
        files: vec![(0, map)],
    }
    .encode();
    let (c, d, e, _) = encode(
        &rewritten,
        &target,
        Sinks {
            control: Vec::new(),
            diff: Vec::new(),
            extra: Vec::new(),
        },
    )
    .unwrap();
    let packed = pack_in_memory(&c, &d, &e).unwrap();
    let map_stream = pack_map(&raw_map.as_slice(), &|| Ok(Vec::new())).unwrap();
    let mut streams: Vec<_> = packed.streams.iter().map(|(h, _)| *h).collect();
    streams.push(map_stream.0);
    let header = DiffHeader {
        algorithm: BSDIFF_X86,
        base_manifest: Digest([0x22; 32]),
        base_size: base.len() as u64,
        target_size: target.len() as u64,
        target_chunks: 1,
        layout: packed.layout,
        streams,
    };
    let mut fresh = object_in_memory(&header, &packed);
    fresh.extend_from_slice(&map_stream.1);
    let object = from_hex_lines(&stored("diff_object_x86_tiny_elf_40funcs.hex", &fresh));

    let (h, start) = DiffHeader::decode_prefix(&object, object.len() as u64).unwrap();
    assert_eq!(h.algorithm, BSDIFF_X86);
    assert_eq!(&object[..h.encode_prefix().len()], &h.encode_prefix()[..]);
    let ranges = h.stream_ranges(start);
    let (mo, ml) = *ranges.last().unwrap();
    let maps = read_maps(
        h.map_stream().unwrap(),
        &object[mo as usize..(mo + ml) as usize],
        1,
    )
    .unwrap();
    let agent_base = rewrite_file(&base, &maps.files[0].1).unwrap();
    let streams: Vec<&[u8]> = ranges[..h.data_streams().len()]
        .iter()
        .map(|&(o, l)| &object[o as usize..(o + l) as usize])
        .collect();
    let mut out = Vec::new();
    apply(&h, &ConcatBase::new(vec![&agent_base]), streams, &mut |b| {
        out.extend_from_slice(b);
        Ok(())
    })
    .unwrap();
    assert_eq!(
        out, target,
        "the stored algorithm-3 object no longer builds its target"
    );
}

/// A fresh install's pair (FORMAT.md §3.9): the manifest diff from nothing (a zstd
/// frame of manifest 1.2.0's skeleton with every chunk id a hole) and the diff object
/// from nothing (header pinned byte for byte; its zstd stream's bytes belong to zstd,
/// so what is pinned is that the stored object keeps producing the chunks, and the
/// stored manifest diff keeps filling back to the signed manifest).
#[test]
fn golden_fresh_install_from_nothing() {
    use ferry_format::delta::manifest_diff::Skeleton;
    use ferry_format::delta::nothing::{self, NOTHING};
    use ferry_format::delta::streams::Encoder;
    use ferry_format::delta::{StreamCodec, StreamHeader};
    use std::io::Write;

    let k = SecretKey::from_seed([1; 32]);
    let manifest = manifest_1_2_0();
    let signed = manifest.sign(&[&k]).unwrap();
    let empty = nothing::empty_release("stable");
    let skeleton = Skeleton::make(&signed, &empty, &|_| false).unwrap();
    let fresh = encode_manifest_diff(&[], &skeleton, 19).unwrap();
    let diff = from_hex_lines(&stored(
        "manifest_diff_from_nothing_1.2.0_seed01.hex",
        &fresh,
    ));
    let back = apply_manifest_diff(&[], &diff, signed.len() as u64).unwrap();
    let skeleton = Skeleton::decode(&back, &empty).unwrap();
    assert_eq!(skeleton.holes(), manifest.chunks.len());
    let ids: Vec<ChunkId> = manifest.chunks.iter().map(|c| c.id).collect();
    assert_eq!(
        skeleton.fill(&ids).unwrap(),
        signed,
        "the stored manifest diff from nothing no longer fills back to 1.2.0"
    );

    let target = text(3, 400);
    let codec = StreamCodec::Zstd {
        window_log: nothing::WINDOW_LOG,
    };
    let mut enc = Encoder::with_level(&codec, 19, Vec::new()).unwrap();
    enc.write_all(&target).unwrap();
    let (raw_len, stored_len, extra) = enc.finish().unwrap();
    let mut fresh = nothing::prefix(
        target.len() as u64,
        2,
        StreamHeader {
            codec,
            raw_len,
            stored_len,
        },
    );
    fresh.extend_from_slice(&extra);
    let object = from_hex_lines(&stored("diff_object_from_nothing_text.hex", &fresh));
    let (header, out) = apply_object(&[], &object);
    assert_eq!(
        out, target,
        "the stored diff from nothing no longer builds its target"
    );
    assert_eq!(header.base_manifest, NOTHING);
    assert_eq!(header.streams[2].codec, codec);
    let prefix = header.encode_prefix();
    assert_eq!(
        &object[..prefix.len()],
        &prefix[..],
        "the diff header encoding changed"
    );
    assert_eq!(apply_object(&[], &fresh).1, target);

    // Through the x86 branch filter (codec 4): calls to a few targets, made absolute.
    let mut code = Vec::new();
    for i in 0..3_000u32 {
        let at = code.len() as i64 + 5;
        let to = [256i64, 9_000, 20_000][(i % 3) as usize];
        code.push(0xE8);
        code.extend_from_slice(&((to - at) as i32).to_le_bytes());
        code.extend_from_slice(&[0x48, 0x89, 0xc7, (i % 5) as u8]);
    }
    let codec = StreamCodec::ZstdX86 {
        window_log: nothing::WINDOW_LOG,
    };
    let mut enc = Encoder::with_level(&codec, 19, Vec::new()).unwrap();
    enc.write_all(&code).unwrap();
    let (raw_len, stored_len, extra) = enc.finish().unwrap();
    let mut fresh = nothing::prefix(
        code.len() as u64,
        1,
        StreamHeader {
            codec,
            raw_len,
            stored_len,
        },
    );
    fresh.extend_from_slice(&extra);
    let object = from_hex_lines(&stored("diff_object_from_nothing_x86.hex", &fresh));
    let (header, out) = apply_object(&[], &object);
    assert_eq!(
        out, code,
        "the stored filtered diff from nothing no longer builds its target"
    );
    assert_eq!(header.streams[2].codec, codec);
    let prefix = header.encode_prefix();
    assert_eq!(&object[..prefix.len()], &prefix[..]);
}

//! Golden vectors: the exact bytes of a fixed head and manifest. bincode is no longer
//! developed, so these pin the encoding FORMAT.md specifies; if they fail, the wire
//! format changed. Regenerate (only for a deliberate format change, with a format
//! version bump) with `FERRY_BLESS=1 cargo test -p ferry-format --test golden`.

use std::path::PathBuf;

use ferry_format::chunking::ChunkParams;
use ferry_format::envelope::CLIENT_FORMAT;
use ferry_format::head::{ChannelHead, HeadContent, ReleaseRef, Rollout};
use ferry_format::id::{ChunkId, Digest, ObjectRef};
use ferry_format::keylist::KeyList;
use ferry_format::keys::SecretKey;
use ferry_format::manifest::{ChunkRecord, Entry, EntryKind, Manifest};

fn vectors() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../testdata/vectors")
}

fn check(name: &str, bytes: &[u8]) {
    let path = vectors().join(name);
    let hex_now = hex_lines(bytes);
    if std::env::var_os("FERRY_BLESS").is_some() {
        std::fs::create_dir_all(vectors()).unwrap();
        std::fs::write(&path, &hex_now).unwrap();
    }
    let stored = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run with FERRY_BLESS=1 to create", path.display()));
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

/// Key list 2 with an online role: roots {3} 1-of-1, publishers {1}, online {2},
/// signed by key 3.
#[test]
fn golden_key_list_with_online_role() {
    let k = |n: u8| SecretKey::from_seed([n; 32]).public();
    let list = KeyList::new(2, 1_700_000_000, &[k(3)], 1, &[k(1)], 1)
        .unwrap()
        .with_online(&[k(2)], 1)
        .unwrap();
    check(
        "key_list_v2_online_seed03.hex",
        &list.sign(&[&SecretKey::from_seed([3; 32])]).unwrap(),
    );
}

#[test]
fn golden_manifest() {
    let m = Manifest {
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
    };
    check(
        "manifest_stable_1.1.0_seed01.hex",
        &m.sign(&[&SecretKey::from_seed([1; 32])]).unwrap(),
    );
}

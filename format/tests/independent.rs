//! A vector ferry did not write: `testdata/independent/make_vectors.py` builds a signed
//! manifest from docs/FORMAT.md with the `blake3` and `PyNaCl` Python packages alone.
//! ferry must produce exactly those bytes for the same manifest, name the object the
//! same, and accept it. (How to rerun the script: its docstring. CI needs no Python.)

use std::path::PathBuf;

use ferry_format::chunking::ChunkParams;
use ferry_format::delta::DiffRef;
use ferry_format::envelope::TrustedKeys;
use ferry_format::head::ReleaseRef;
use ferry_format::id::{ChunkId, Digest, ObjectRef};
use ferry_format::keys::SecretKey;
use ferry_format::manifest::{ChunkRecord, Entry, EntryKind, Manifest};
use ferry_format::verified::verify_manifest;

const NAME: &str = "manifest_stable_2.0.0_seed01";
const APP: &[u8] = b"#!/bin/sh\necho ferry\n";

fn independent(ext: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata/independent")
        .join(format!("{NAME}.{ext}"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn python_bytes() -> Vec<u8> {
    let hex: String = independent("hex").split_whitespace().collect();
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

fn python_field(key: &str) -> String {
    independent("txt")
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{key} in {NAME}.txt"))
        .to_string()
}

/// The manifest make_vectors.py encodes, built with ferry's types.
fn manifest() -> Manifest {
    Manifest {
        channel: "stable".into(),
        version: "2.0.0".into(),
        generation: 2,
        chunking: ChunkParams::default(),
        archive: ObjectRef {
            hash: Digest([0x5A; 32]),
            size: 30,
        },
        chunks: vec![ChunkRecord {
            id: ChunkId::of(APP),
            size: APP.len() as u32,
            stored_size: 30,
            generation: 2,
        }],
        entries: vec![
            Entry {
                path: "bin".into(),
                kind: EntryKind::Dir { mode: 0o755 },
            },
            Entry {
                path: "bin/app".into(),
                kind: EntryKind::File {
                    mode: 0o755,
                    size: APP.len() as u64,
                    hash: Digest::of(APP),
                    chunks: vec![0],
                },
            },
            Entry {
                path: "bin/empty".into(),
                kind: EntryKind::File {
                    mode: 0o644,
                    size: 0,
                    hash: Digest::of(b""),
                    chunks: vec![],
                },
            },
            Entry {
                path: "run".into(),
                kind: EntryKind::Symlink {
                    target: "bin/app".into(),
                },
            },
        ],
        diffs: vec![DiffRef {
            base_version: "1.0.0".into(),
            base_manifest: Digest([0x11; 32]),
            object: ObjectRef {
                hash: Digest([0x22; 32]),
                size: 4321,
            },
        }],
    }
}

#[test]
fn ferry_writes_the_manifest_python_wrote_from_the_spec() {
    let key = SecretKey::from_seed([1; 32]);
    assert_eq!(
        Digest(key.public().to_bytes()).to_hex(),
        python_field("public_key")
    );
    assert_eq!(key.public().id().to_hex(), python_field("key_id"));
    let ours = manifest().sign(&[&key]).unwrap();
    assert_eq!(
        ours,
        python_bytes(),
        "ferry's manifest bytes differ from FORMAT.md as an independent encoder reads it"
    );
    assert_eq!(Digest::of(&ours).to_hex(), python_field("object_name"));
    assert_eq!(ours.len().to_string(), python_field("object_size"));
}

#[test]
fn ferry_accepts_the_manifest_python_wrote() {
    let bytes = python_bytes();
    let release = ReleaseRef {
        version: "2.0.0".into(),
        manifest: ObjectRef {
            hash: Digest::from_hex(&python_field("object_name")).unwrap(),
            size: bytes.len() as u64,
        },
    };
    let trusted = TrustedKeys::single(SecretKey::from_seed([1; 32]).public());
    let m = verify_manifest(&bytes, &release, "stable", &trusted).unwrap();
    assert_eq!(*m, manifest());
}

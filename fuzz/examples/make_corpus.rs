//! Writes the committed seed corpus `fuzz/corpus/<target>/`: a handful of small valid
//! inputs per target, made with the public API so every seed decodes (and is really
//! signed, with the golden-vector key `SecretKey::from_seed([1; 32])`). The golden
//! vectors in `testdata/vectors/` are added as they are. Run `fuzz/make-corpus.sh`.

use std::fs;
use std::path::{Path, PathBuf};

use ferry_format::chunking::{ChunkParams, compress_chunk};
use ferry_format::envelope::{CLIENT_FORMAT, Envelope, ObjectKind};
use ferry_format::head::{ChannelHead, HeadContent, ReleaseRef, Rollout};
use ferry_format::id::{ChunkId, Digest, ObjectRef};
use ferry_format::keylist::{KeyList, key_list_ref};
use ferry_format::keys::SecretKey;
use ferry_format::layout::{head_path, key_list_path, object_path};
use ferry_format::manifest::{ChunkRecord, Entry, EntryKind, Manifest};

fn key(n: u8) -> SecretKey {
    SecretKey::from_seed([n; 32])
}

fn write(dir: &Path, target: &str, name: &str, bytes: &[u8]) {
    let d = dir.join(target);
    fs::create_dir_all(&d).unwrap();
    fs::write(d.join(name), bytes).unwrap();
}

fn body(kind: ObjectKind, signed: &[u8]) -> Vec<u8> {
    Envelope::decode(kind, signed).unwrap().body
}

fn unhex(text: &str) -> Vec<u8> {
    let h: String = text.split_whitespace().collect();
    (0..h.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
        .collect()
}

fn manifest(version: &str, files: &[(&str, &[u8])]) -> Manifest {
    let mut chunks = Vec::new();
    let mut archive = 0u64;
    let mut entries = vec![Entry {
        path: "bin".into(),
        kind: EntryKind::Dir { mode: 0o755 },
    }];
    for (i, (name, data)) in files.iter().enumerate() {
        let stored = compress_chunk(data, 3).unwrap().len() as u32;
        archive += u64::from(stored);
        chunks.push(ChunkRecord {
            id: ChunkId::of(data),
            size: data.len() as u32,
            stored_size: stored,
            generation: 1 + i as u64 % 2,
        });
        entries.push(Entry {
            path: format!("bin/{name}"),
            kind: EntryKind::File {
                mode: 0o644,
                size: data.len() as u64,
                hash: Digest::of(data),
                chunks: vec![i as u32],
            },
        });
    }
    entries.push(Entry {
        path: "bin/sub".into(),
        kind: EntryKind::Dir { mode: 0o700 },
    });
    entries.push(Entry {
        path: "bin/sub/up".into(),
        kind: EntryKind::Symlink {
            target: "../../current".into(),
        },
    });
    entries.push(Entry {
        path: "current".into(),
        kind: EntryKind::Symlink {
            target: "bin".into(),
        },
    });
    Manifest {
        channel: "stable".into(),
        version: version.into(),
        generation: 2,
        chunking: ChunkParams::default(),
        archive: ObjectRef {
            hash: Digest([0x33; 32]),
            size: archive,
        },
        chunks,
        entries,
        diffs: vec![],
    }
}

fn main() {
    let fuzz = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = fuzz.join("corpus");
    let vectors = fuzz.join("../testdata/vectors");

    // Golden vectors, as they are.
    for entry in fs::read_dir(&vectors).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_str().unwrap().to_string();
        let bytes = unhex(&fs::read_to_string(&path).unwrap());
        let (kind, env, bod) = if name.starts_with("head") {
            (ObjectKind::ChannelHead, "envelope_head", "head_body")
        } else if name.starts_with("manifest_diff") || name.starts_with("diff_object") {
            // Not signed envelopes; the diff_apply seeds below cover diff objects.
            continue;
        } else if name.starts_with("manifest") {
            (ObjectKind::Manifest, "envelope_manifest", "manifest_body")
        } else if name.starts_with("key_list") {
            (ObjectKind::KeyList, "key_list", "key_list")
        } else {
            panic!("golden vector {name}: which fuzz target does it seed?");
        };
        write(&out, env, &format!("golden_{name}"), &bytes);
        if bod != env {
            write(&out, bod, &format!("golden_{name}"), &body(kind, &bytes));
        }
    }

    // Key lists: v1 signed by the single key 1 and its own roots (advance accepts it).
    let list = KeyList::new(
        1,
        1_700_000_000,
        &[key(2).public(), key(3).public()],
        2,
        &[key(4).public()],
        1,
    )
    .unwrap();
    let list_bytes = list.sign(&[&key(1), &key(2), &key(3)]).unwrap();
    write(&out, "key_list", "v1_roots2of2", &list_bytes);
    let list2 = KeyList::new(
        2,
        0,
        &[key(5).public()],
        1,
        &[key(6).public(), key(7).public()],
        2,
    )
    .unwrap();
    write(
        &out,
        "key_list",
        "v2_self_signed",
        &list2.sign(&[&key(5)]).unwrap(),
    );
    let online = list2.with_online(&[key(8).public()], 1).unwrap();
    write(
        &out,
        "key_list",
        "v2_online_role",
        &online.sign(&[&key(5)]).unwrap(),
    );

    // Channel heads: one release, several releases with a key list, two signatures.
    let r = |v: &str, n: u8| ReleaseRef {
        version: v.into(),
        manifest: ObjectRef {
            hash: Digest([n; 32]),
            size: 100 + u64::from(n),
        },
    };
    let heads = [
        ("single", vec![r("1", 1)], None, vec![key(1)]),
        (
            "three_releases_keylist",
            vec![r("0.9", 1), r("1.0.0-rc.1", 2), r("1.0.0", 3)],
            Some(key_list_ref(&list_bytes).unwrap()),
            vec![key(4), key(1)],
        ),
    ];
    for (name, releases, key_list, keys) in heads {
        // The current release at 60% by the publisher, lowered to 25% by the head.
        let current = releases.last().unwrap().version.clone();
        let content = HeadContent {
            channel: "beta-2.x_y".into(),
            sequence: 40,
            issued_at: 1_700_000_000,
            expires_at: 1_707_776_000,
            min_client_format: CLIENT_FORMAT,
            releases,
            manifest_diffs: vec![],
            rollout: vec![Rollout {
                version: current.clone(),
                percent: 60,
            }],
        };
        let keys: Vec<&SecretKey> = keys.iter().collect();
        let head = ChannelHead::new(
            content.sign(&keys).unwrap(),
            42,
            1_700_000_000,
            1_700_086_400,
            key_list,
            vec![Rollout {
                version: current,
                percent: 25,
            }],
        )
        .unwrap();
        let signed = head.sign(&keys).unwrap();
        write(&out, "envelope_head", name, &signed);
        write(
            &out,
            "head_body",
            name,
            &body(ObjectKind::ChannelHead, &signed),
        );
    }

    // Manifests: empty tree, and files with real chunks, a directory and symlinks.
    let mut empty = manifest("0.1", &[]);
    empty.entries.clear();
    let files = manifest("2.0.0-beta.1", &[("a", b"hello world"), ("b", &[7; 300])]);
    for (name, m) in [("empty", empty), ("files", files)] {
        let signed = m.sign(&[&key(1)]).unwrap();
        write(&out, "envelope_manifest", name, &signed);
        write(
            &out,
            "manifest_body",
            name,
            &body(ObjectKind::Manifest, &signed),
        );
    }

    // Content-Range headers (valid and near misses).
    for (i, h) in [
        "bytes 0-0/1",
        "bytes 10-19/100",
        "bytes 0-1048575/*",
        " bytes 5-5/6 ",
        "bytes 9999999999999999998-9999999999999999998/9999999999999999999",
        "bytes */100",
    ]
    .iter()
    .enumerate()
    {
        write(&out, "content_range", &format!("h{i}"), h.as_bytes());
    }

    // Chunks: raw frames (mode 0: 3-byte size, then the frame) and intact chunks to damage
    // (mode 1: pos lo, pos hi, xor, size delta, then the content).
    let frame = |mode: u8, size: u32, frame: &[u8]| {
        let mut v = vec![mode];
        v.extend_from_slice(&size.to_le_bytes()[..3]);
        v.extend_from_slice(frame);
        v
    };
    write(
        &out,
        "chunk_decompress",
        "raw_empty",
        &frame(0, 0, &compress_chunk(b"", 3).unwrap()),
    );
    let text = b"ferry ferry ferry delta updates ".repeat(8);
    let raw = frame(0, text.len() as u32, &compress_chunk(&text, 19).unwrap());
    write(&out, "chunk_decompress", "raw_text", &raw);
    let mut intact = vec![1, 0, 0, 0, 0];
    intact.extend_from_slice(&text);
    write(&out, "chunk_decompress", "intact_text", &intact);
    write(
        &out,
        "chunk_decompress",
        "damaged",
        &[1, 7, 0, 0x40, 0, 1, 2, 3, 4, 5, 6, 7, 8],
    );

    // Paths, symlink targets, versions, channels and repository paths, newline-separated.
    let d = Digest::of(b"x");
    for (i, p) in [
        "bin/app\n../lib/x\n1.0.0-rc.1".to_string(),
        "a/b/c\n../../d\n1.0.0".to_string(),
        "d/a\nx/../..\n0.10".to_string(),
        format!("/{}\n{}\nstable", object_path(&d), head_path("stable")),
        format!("/{}\n/keys/03\nbeta-2.x_y", key_list_path(3)),
        "ünï/cödé\n..\n1.0.0-alpha.beta.11".to_string(),
    ]
    .iter()
    .enumerate()
    {
        write(&out, "paths", &format!("p{i}"), p.as_bytes());
    }

    // plan_model takes structured input: any bytes decode, these give a few chunk tables.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for (i, len) in [16, 64, 256, 1024].into_iter().enumerate() {
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        write(&out, "plan_model", &format!("r{i}"), &bytes);
    }

    // diff_apply: a real diff object against a prefix of the target's fixed base, and
    // a manifest diff against the whole base.
    let base: &[u8] = b"the quick brown fox jumps over the lazy dog, 0123456789 times over";
    let target = b"the quick brown cat jumps over the lazy dog, 0123456789 times, twice over";
    let (c, d, e, _) = ferry_format::delta::encode::encode(
        base,
        target,
        ferry_format::delta::encode::Sinks { control: Vec::new(), diff: Vec::new(), extra: Vec::new() },
    )
    .unwrap();
    // The object the publisher would write, then every layout with each codec, so the
    // fuzzer starts from valid streams of every decoder.
    use ferry_format::delta::{DiffLayout, StreamCodec, StreamHeader, streams};
    let packed = ferry_format::delta::pack::pack_in_memory(&c, &d, &e).unwrap();
    let objects = |layout: DiffLayout, middle: Vec<Vec<u8>>, codec: StreamCodec| {
        let mut parts = vec![c.clone()];
        parts.extend(middle);
        parts.push(e.clone());
        let mut headers = Vec::new();
        let mut data = Vec::new();
        for raw in parts {
            let codec = if raw.is_empty() { StreamCodec::Stored } else { codec };
            let mut enc = streams::Encoder::new(&codec, Vec::new()).unwrap();
            std::io::Write::write_all(&mut enc, &raw).unwrap();
            let (raw_len, stored_len, bytes) = enc.finish().unwrap();
            headers.push(StreamHeader { codec, raw_len, stored_len });
            data.extend(bytes);
        }
        let header = ferry_format::delta::DiffHeader {
            algorithm: ferry_format::delta::BSDIFF_V2,
            base_manifest: Digest([7; 32]),
            base_size: base.len() as u64,
            target_size: target.len() as u64,
            target_chunks: 1,
            layout,
            streams: headers,
        };
        let mut object = header.encode_prefix();
        object.extend(data);
        object
    };
    let (zeros, runs, literals) = {
        let (mut z, mut n, mut l) = (Vec::new(), Vec::new(), Vec::new());
        let mut i = 0;
        loop {
            let k = d[i..].iter().take_while(|&&b| b == 0).count();
            streams::put_varint(&mut z, k as u64);
            i += k;
            if i == d.len() {
                break;
            }
            let k = d[i..].iter().take_while(|&&b| b != 0).count();
            streams::put_varint(&mut n, k as u64 - 1);
            l.extend_from_slice(&d[i..i + k]);
            i += k;
        }
        (z, n, l)
    };
    let lzma = StreamCodec::Lzma2 { dict_size: 4096, lc: 0, lp: 0, pb: 0 };
    let bzip3 = StreamCodec::Bzip3 { block_size: streams::MIN_BZIP3_BLOCK };
    for (name, layout, codec) in [
        ("diff_dense_stored", DiffLayout::Dense, StreamCodec::Stored),
        ("diff_dense_bzip3", DiffLayout::Dense, bzip3),
        ("diff_dense_lzma2", DiffLayout::Dense, lzma),
        ("diff_sparse_stored", DiffLayout::Sparse, StreamCodec::Stored),
        ("diff_sparse_lzma2", DiffLayout::Sparse, lzma),
        ("diff_sparse_bzip3", DiffLayout::Sparse, bzip3),
    ] {
        let middle = match layout {
            DiffLayout::Dense => vec![d.clone()],
            DiffLayout::Sparse => vec![zeros.clone(), runs.clone(), literals.clone()],
        };
        write(&out, "diff_apply", name, &objects(layout, middle, codec));
    }
    let header = ferry_format::delta::DiffHeader {
        algorithm: ferry_format::delta::BSDIFF_V2,
        base_manifest: Digest([7; 32]),
        base_size: base.len() as u64,
        target_size: target.len() as u64,
        target_chunks: 1,
        layout: packed.layout,
        streams: packed.streams.iter().map(|(h, _)| *h).collect(),
    };
    let object = ferry_format::delta::pack::object_in_memory(&header, &packed);
    write(&out, "diff_apply", "diff_object", &object);
    let md = ferry_format::delta::manifest_diff::encode_manifest_diff(base, target, 19).unwrap();
    write(&out, "diff_apply", "manifest_diff", &md);

    // A manifest skeleton against the target's fixed base manifest (two chunks, "a"
    // and "b"): every chunk of `files` is a hole.
    let fixed_base = Manifest {
        channel: "stable".into(),
        version: "1.0.0".into(),
        generation: 1,
        chunking: ferry_format::chunking::ChunkParams::default(),
        archive: ferry_format::id::ObjectRef {
            hash: Digest::of(b"archive"),
            size: 100,
        },
        chunks: [b"a", b"b"]
            .iter()
            .map(|tag| ferry_format::manifest::ChunkRecord {
                id: Digest::of(*tag),
                size: 100,
                stored_size: 50,
                generation: 1,
            })
            .collect(),
        entries: vec![],
        diffs: vec![],
    };
    let files = manifest("2.0.0", &[("a", b"hello world"), ("b", &[7; 300])]);
    let skeleton = ferry_format::delta::manifest_diff::Skeleton::make(
        &files.sign(&[&key(1)]).unwrap(),
        &fixed_base,
        &|_| false,
    )
    .unwrap();
    write(&out, "diff_apply", "manifest_skeleton", &skeleton);

    // x86_rewrite: the rewritten ELF file of the golden vector (an x86-64 ELF file with
    // calls, lea and jz), and an address-map stream of two runs.
    let hex: String = fs::read_to_string("../testdata/vectors/x86_rewrite_tiny_elf_8funcs.hex")
        .unwrap()
        .split_whitespace()
        .collect();
    let elf: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    write(&out, "x86_rewrite", "tiny_elf", &elf);
    let map = ferry_format::delta::x86::AddressMap::from_runs(&[(0x40_1020, 16), (0x40_1080, 48)]).unwrap();
    let maps = ferry_format::delta::x86::FileMaps {
        files: vec![(0, map)],
    };
    write(&out, "x86_rewrite", "map_stream", &maps.encode());
}

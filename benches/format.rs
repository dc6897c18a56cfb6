//! Throughput of the format's hot paths on this machine: chunking, chunk ids, publish's
//! file chunker, per-chunk compression and decompression, manifest signing and
//! verification, and archive planning, binary diff application, and Range / Content-Range parsing. Run
//! with `cargo bench -p ferry-benches`; criterion prints MB/s. A manifest decode
//! without verification is not public (`fuzzing` feature only): `verify_and_decode`
//! is the decode figure.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ferry_format::chunking::{
    ChunkParams, FileChunker, chunk_slice, compress_chunk, decompress_chunk,
};
use ferry_format::content_range::parse_content_range;
use ferry_format::delta::apply::{ConcatBase, apply};
use ferry_format::delta::encode::{Sinks, encode};
use ferry_format::delta::pack::{object_in_memory, pack_in_memory};
use ferry_format::delta::{BSDIFF_V2, DiffHeader};
use ferry_format::envelope::TrustedKeys;
use ferry_format::envelope::{Envelope, ObjectKind};
use ferry_format::head::ReleaseRef;
use ferry_format::id::{ChunkId, Digest, ObjectRef};
use ferry_format::keys::SecretKey;
use ferry_format::manifest::{ChunkRecord, Entry, EntryKind, Manifest};
use ferry_format::plan::{DEFAULT_MAX_GAP, plan_archive};
use ferry_format::verified::verify_manifest;

fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    (0..len)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Half random, half structured: closer to compiled code than pure noise.
            if i % 512 < 256 {
                x as u8
            } else {
                (i / 512) as u8
            }
        })
        .collect()
}

fn chunking(c: &mut Criterion) {
    let data = noise(32 << 20);
    let p = ChunkParams::default();
    let mut g = c.benchmark_group("chunking");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.sample_size(10);
    g.bench_function("fastcdc_v2020_64k", |b| {
        b.iter(|| chunk_slice(black_box(&data), p).unwrap().count())
    });
    g.bench_function("fastcdc_v2020_64k_plus_blake3", |b| {
        b.iter(|| {
            chunk_slice(&data, p)
                .unwrap()
                .map(|(o, l)| ChunkId::of(&data[o..o + l]))
                .fold(0u8, |acc, id| acc ^ id.0[0])
        })
    });
    // What publish runs per file: its own two-lane cut, chunk ids and the file hash in
    // one pass, here from memory (a publish reads from the page cache on top).
    g.bench_function("file_chunker_64k_ids_and_file_hash", |b| {
        b.iter(|| {
            let mut c = FileChunker::new(black_box(&data[..]), p).unwrap();
            let mut acc = 0u8;
            while let Some(v) = c.next_chunk().unwrap() {
                acc ^= v.id.0[0];
            }
            acc ^ c.finish().hash.0[0]
        })
    });
    g.finish();
}

fn compression(c: &mut Criterion) {
    let chunk = noise(64 << 10);
    let id = ChunkId::of(&chunk);
    let mut g = c.benchmark_group("chunk_zstd");
    g.throughput(Throughput::Bytes(chunk.len() as u64));
    for level in [3, 9, 19] {
        g.bench_function(format!("compress_level_{level}"), |b| {
            b.iter(|| compress_chunk(black_box(&chunk), level).unwrap())
        });
    }
    let stored = compress_chunk(&chunk, 19).unwrap();
    g.bench_function("decompress_and_verify", |b| {
        b.iter(|| decompress_chunk(&id, chunk.len() as u32, black_box(&stored)).unwrap())
    });
    g.finish();
}

/// A manifest shaped like a 1,000-file tree in 2,000 chunks.
fn big_manifest() -> Manifest {
    let chunks: Vec<ChunkRecord> = (0..2000u32)
        .map(|i| ChunkRecord {
            id: Digest::of(&i.to_le_bytes()),
            size: 65_536,
            stored_size: 30_000,
            generation: 1 + u64::from(i) / 1000,
        })
        .collect();
    let mut entries = vec![Entry {
        path: "lib".into(),
        kind: EntryKind::Dir { mode: 0o755 },
    }];
    for f in 0..1000u32 {
        entries.push(Entry {
            path: format!("lib/module_{f:04}.so"),
            kind: EntryKind::File {
                mode: 0o644,
                size: 2 * 65_536,
                hash: Digest::of(&f.to_be_bytes()),
                chunks: vec![2 * f, 2 * f + 1],
            },
        });
    }
    Manifest {
        channel: "stable".into(),
        version: "2.0.0".into(),
        generation: 2,
        chunking: ChunkParams::default(),
        archive: ObjectRef {
            hash: Digest::of(b"archive"),
            size: 2000 * 30_000,
        },
        chunks,
        entries,
        diffs: vec![],
    }
}

fn manifest(c: &mut Criterion) {
    let m = big_manifest();
    let key = SecretKey::from_seed([3; 32]);
    let bytes = m.sign(&[&key]).unwrap();
    println!(
        "manifest of 1,000 files / 2,000 chunks: {} bytes",
        bytes.len()
    );
    let release = ReleaseRef {
        version: m.version.clone(),
        manifest: ObjectRef::of(&bytes),
    };
    let trusted = TrustedKeys::single(key.public());
    let mut g = c.benchmark_group("manifest_1000_files");
    g.bench_function("sign", |b| b.iter(|| m.sign(&[&key]).unwrap()));
    g.bench_function("verify_and_decode", |b| {
        b.iter(|| verify_manifest(black_box(&bytes), &release, "stable", &trusted).unwrap())
    });
    g.bench_function("plan_tail", |b| {
        b.iter(|| {
            plan_archive(
                &m,
                |id| m.chunks[..1000].iter().any(|c| c.id == *id),
                DEFAULT_MAX_GAP,
            )
        })
    });
    g.finish();
}

/// A base and a new release that differs by scattered edits and one moved block,
/// as a diff object; applied in memory, output discarded.
fn diff_apply(c: &mut Criterion) {
    let old = noise(8 << 20);
    let mut new = old.clone();
    for i in (0..new.len()).step_by(4099) {
        new[i] = new[i].wrapping_add(1);
    }
    new[1 << 20..(1 << 20) + (256 << 10)].copy_from_slice(&old[5 << 20..(5 << 20) + (256 << 10)]);
    let (control, diff, extra, _) = encode(
        &old,
        &new,
        Sinks {
            control: Vec::new(),
            diff: Vec::new(),
            extra: Vec::new(),
        },
    )
    .unwrap();
    let packed = pack_in_memory(&control, &diff, &extra).unwrap();
    let header = DiffHeader {
        algorithm: BSDIFF_V2,
        base_manifest: Digest::of(b""),
        base_size: old.len() as u64,
        target_size: new.len() as u64,
        target_chunks: 0,
        layout: packed.layout,
        streams: packed.streams.iter().map(|(h, _)| *h).collect(),
    };
    let object = object_in_memory(&header, &packed);
    let mut g = c.benchmark_group("diff");
    g.throughput(Throughput::Bytes(new.len() as u64));
    g.sample_size(10);
    g.bench_function("apply_8MiB", |b| {
        b.iter(|| {
            let (header, start) = DiffHeader::decode_prefix(&object, object.len() as u64).unwrap();
            let streams: Vec<&[u8]> = header
                .stream_ranges(start)
                .into_iter()
                .map(|(o, l)| &object[o as usize..(o + l) as usize])
                .collect();
            let mut n = 0u64;
            apply(
                &header,
                &ConcatBase::new(vec![&old]),
                streams,
                &mut |b: &[u8]| {
                    n += b.len() as u64;
                    Ok(())
                },
            )
            .unwrap();
            n
        })
    });
    g.finish();
}

/// The server's answer to a Range header and the client's parse of Content-Range.
fn ranges(c: &mut Criterion) {
    let mut g = c.benchmark_group("range");
    g.bench_function("serve_decide_range", |b| {
        b.iter(|| {
            ferry_server::serve::range::decide(
                black_box(Some("bytes=1048576-1114111")),
                268_435_456,
            )
        })
    });
    g.bench_function("serve_decide_suffix", |b| {
        b.iter(|| ferry_server::serve::range::decide(black_box(Some("bytes=-65536")), 268_435_456))
    });
    g.bench_function("client_parse_content_range", |b| {
        b.iter(|| parse_content_range(black_box("bytes 1048576-1114111/268435456")).unwrap())
    });
    g.finish();
}

/// The signed envelope alone (no signature check, no body decode).
fn envelope(c: &mut Criterion) {
    let m = big_manifest();
    let key = SecretKey::from_seed([3; 32]);
    let bytes = m.sign(&[&key]).unwrap();
    c.bench_function("manifest_1000_files/envelope_decode", |b| {
        b.iter(|| Envelope::decode(ObjectKind::Manifest, black_box(&bytes)).unwrap())
    });
}

criterion_group!(
    benches,
    chunking,
    compression,
    manifest,
    diff_apply,
    ranges,
    envelope
);
criterion_main!(benches);

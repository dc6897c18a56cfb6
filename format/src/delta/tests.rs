use super::apply::{ConcatBase, apply};
use super::encode::{Sinks, encode};
use super::manifest_diff::{apply_manifest_diff, encode_manifest_diff};
use super::pack::{Packed, pack_in_memory};
use super::streams::{self, Encoder};
use super::*;
use crate::error::Result;

fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// The raw streams of `encode`.
fn raw(base: &[u8], target: &[u8]) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let (c, d, e, _) = encode(
        base,
        target,
        Sinks {
            control: Vec::new(),
            diff: Vec::new(),
            extra: Vec::new(),
        },
    )
    .unwrap();
    (c, d, e)
}

/// A whole diff object of `packed`.
fn object(base: &[u8], target: &[u8], packed: Packed<Vec<u8>>) -> Vec<u8> {
    let header = DiffHeader {
        algorithm: BSDIFF_V2,
        base_manifest: Digest::of(b"m"),
        base_size: base.len() as u64,
        target_size: target.len() as u64,
        target_chunks: 1,
        layout: packed.layout,
        streams: packed.streams.iter().map(|(h, _)| *h).collect(),
    };
    let mut object = header.encode_prefix();
    for (h, data) in packed.streams {
        assert_eq!(h.stored_len as usize, data.len());
        object.extend_from_slice(&data);
    }
    object
}

/// Parses and applies `object` over `base` split in two parts at `split`.
fn apply_object(base: &[u8], object: &[u8], split: usize) -> Result<Vec<u8>> {
    let (header, start) = DiffHeader::decode_prefix(object, object.len() as u64)?;
    let split = split.min(base.len());
    let parts = ConcatBase::new(vec![&base[..split], &[], &base[split..]]);
    let readers: Vec<&[u8]> = header
        .stream_ranges(start)
        .into_iter()
        .map(|(o, l)| &object[o as usize..(o + l) as usize])
        .collect();
    let mut out = Vec::new();
    let n = apply(&header, &parts, readers, &mut |b| {
        assert!(out.len() + b.len() <= header.target_size as usize);
        out.extend_from_slice(b);
        Ok(())
    })?;
    assert_eq!(n as usize, out.len());
    Ok(out)
}

/// Encodes with the layout `pack` picks and applies, returning (output, object size).
fn round_trip(base: &[u8], target: &[u8], split: usize) -> (Vec<u8>, usize) {
    let (c, d, e) = raw(base, target);
    let obj = object(base, target, pack_in_memory(&c, &d, &e).unwrap());
    (apply_object(base, &obj, split).unwrap(), obj.len())
}

/// Every layout and codec combination the format allows, for one raw diff: packs
/// with each forced choice.
fn forced_objects(base: &[u8], target: &[u8]) -> Vec<Vec<u8>> {
    let (c, d, e) = raw(base, target);
    let mut out = Vec::new();
    let packed = pack_in_memory(&c, &d, &e).unwrap();
    // Rebuild both layouts from the chosen control/extra and a fresh middle.
    let (control, extra) = (
        packed.streams[0].clone(),
        packed.streams.last().unwrap().clone(),
    );
    let stream = |codec: StreamCodec, raw: &[u8]| {
        let mut enc = Encoder::new(&codec, Vec::new()).unwrap();
        std::io::Write::write_all(&mut enc, raw).unwrap();
        let (raw_len, stored_len, data) = enc.finish().unwrap();
        (
            StreamHeader {
                codec,
                raw_len,
                stored_len,
            },
            data,
        )
    };
    let (z, n, l) = sparse_raw(&d);
    for layout in [DiffLayout::Dense, DiffLayout::Sparse] {
        for codec in [
            StreamCodec::Stored,
            StreamCodec::Lzma2 {
                dict_size: 1 << 16,
                lc: 0,
                lp: 0,
                pb: 0,
            },
            StreamCodec::Bzip3 {
                block_size: streams::MIN_BZIP3_BLOCK,
            },
        ] {
            let middle = match layout {
                DiffLayout::Dense => vec![stream(codec, &d)],
                DiffLayout::Sparse => vec![stream(codec, &z), stream(codec, &n), stream(codec, &l)],
            };
            let mut streams = vec![control.clone()];
            streams.extend(middle);
            streams.push(extra.clone());
            out.push(object(
                base,
                target,
                Packed {
                    layout,
                    streams,
                    other: vec![],
                },
            ));
        }
    }
    out
}

/// The sparse streams of a dense difference stream, written the simple way.
fn sparse_raw(d: &[u8]) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let (mut z, mut n, mut l) = (Vec::new(), Vec::new(), Vec::new());
    let mut i = 0;
    loop {
        let zeros = d[i..].iter().take_while(|&&b| b == 0).count();
        streams::put_varint(&mut z, zeros as u64);
        i += zeros;
        if i == d.len() {
            break;
        }
        let lits = d[i..].iter().take_while(|&&b| b != 0).count();
        streams::put_varint(&mut n, lits as u64 - 1);
        l.extend_from_slice(&d[i..i + lits]);
        i += lits;
    }
    (z, n, l)
}

#[test]
fn shifted_code_diffs_small_and_round_trips() {
    let base = noise(1, 300_000);
    // Shift everything by inserting bytes, and perturb every 4 KiB (like relocated
    // addresses in compiled code).
    let mut target = noise(9, 100);
    target.extend_from_slice(&base);
    for i in (0..target.len()).step_by(4096) {
        target[i] = target[i].wrapping_add(1);
    }
    let (out, size) = round_trip(&base, &target, 1234);
    assert_eq!(out, target);
    assert!(
        size < 5_000,
        "diff of a shifted, perturbed 300 KB was {size} bytes"
    );
}

#[test]
fn edge_cases_round_trip_in_every_layout_and_codec() {
    for (base, target) in [
        (vec![], noise(2, 1000)),
        (noise(3, 1000), vec![]),
        (vec![], vec![]),
        (noise(4, 10), noise(4, 10)),
        (noise(5, 5000), noise(6, 5000)),
        (vec![0; 3000], vec![0; 3000]),
        (noise(7, 200_000), {
            let mut t = noise(7, 200_000);
            t[100..110].fill(0);
            t[150_000] ^= 1;
            t.extend_from_slice(&noise(8, 300));
            t
        }),
    ] {
        let (out, _) = round_trip(&base, &target, 3);
        assert_eq!(out, target);
        for obj in forced_objects(&base, &target) {
            assert_eq!(apply_object(&base, &obj, 7).unwrap(), target);
        }
    }
}

#[test]
fn sparse_split_matches_the_definition() {
    let mut d = vec![0u8; 5000];
    for i in [0usize, 1, 2, 700, 701, 4000, 4999] {
        d[i] = (i % 251 + 1) as u8;
    }
    for data in [
        d.clone(),
        vec![],
        vec![0; 10],
        vec![1; 10],
        d[1..4001].to_vec(),
    ] {
        let (z, n, l) = sparse_raw(&data);
        let (mut zw, mut nw, mut lw) = (Vec::new(), Vec::new(), Vec::new());
        // Through pack's real splitter, in awkward pieces.
        let split = super::pack::split_for_tests(&data, 7, &mut zw, &mut nw, &mut lw);
        assert_eq!(split, (z.len(), n.len(), l.len()));
        assert_eq!((zw, nw, lw), (z, n, l));
    }
}

#[test]
fn varints_and_zigzag_round_trip() {
    for v in [
        0i64,
        1,
        -1,
        63,
        -64,
        64,
        i32::MAX.into(),
        i32::MIN.into(),
        i64::MAX,
        i64::MIN,
    ] {
        assert_eq!(streams::unzigzag(streams::zigzag(v)), v);
    }
    assert_eq!(streams::zigzag(-1), 1);
    let mut b = Vec::new();
    streams::put_varint(&mut b, u64::MAX);
    assert_eq!(b.len(), streams::MAX_VARINT_LEN);
}

/// A small real diff object to corrupt.
fn sample() -> (Vec<u8>, Vec<u8>, Vec<Vec<u8>>) {
    let base = noise(11, 20_000);
    let mut target = base.clone();
    target[5000..5040].copy_from_slice(&noise(12, 40));
    target.rotate_left(3000);
    target.extend_from_slice(&noise(13, 100));
    let objects = forced_objects(&base, &target);
    (base, target, objects)
}

#[test]
fn every_corruption_is_an_error_not_a_panic() {
    let (base, target, objects) = sample();
    for obj in &objects {
        assert_eq!(apply_object(&base, obj, 100).unwrap(), target);
        let (header, start) = DiffHeader::decode_prefix(obj, obj.len() as u64).unwrap();
        // Every single-byte change in the streams either fails or still yields a
        // target-sized output (the agent's chunk ids catch the latter).
        for i in (start as usize..obj.len()).step_by(3) {
            let mut bad = obj.clone();
            bad[i] ^= 0x41;
            if let Ok(out) = apply_object(&base, &bad, 100) {
                assert_eq!(out.len(), target.len());
            }
        }
        // Truncated: the object no longer matches its header.
        for cut in [1, 5, obj.len() - start as usize] {
            let short = &obj[..obj.len() - cut];
            assert!(DiffHeader::decode_prefix(short, short.len() as u64).is_err());
        }
        // Every stream cut short, or given a byte too many, with the header adjusted.
        for s in 0..header.streams.len() {
            for delta in [-1i64, 1] {
                let mut h = header.clone();
                let st = &mut h.streams[s];
                if st.stored_len == 0 && delta < 0 {
                    continue;
                }
                st.stored_len = st.stored_len.wrapping_add_signed(delta);
                if st.codec == StreamCodec::Stored {
                    st.raw_len = st.stored_len;
                }
                let r = rebuild(obj, &header, start, &h, s, delta);
                assert!(
                    apply_object(&base, &r, 100).is_err(),
                    "stream {s} length {delta:+} accepted"
                );
            }
            // A raw length off by one.
            let mut h = header.clone();
            if h.streams[s].codec != StreamCodec::Stored {
                h.streams[s].raw_len += 1;
                let r = rebuild(obj, &header, start, &h, s, 0);
                assert!(apply_object(&base, &r, 100).is_err(), "raw length of {s}");
            }
        }
    }
}

/// `obj` with header `h` and stream `s` lengthened (a zero byte) or shortened by `delta`.
fn rebuild(
    obj: &[u8],
    old: &DiffHeader,
    start: u64,
    h: &DiffHeader,
    s: usize,
    delta: i64,
) -> Vec<u8> {
    let mut out = h.encode_prefix();
    for (i, (o, l)) in old.stream_ranges(start).into_iter().enumerate() {
        let data = &obj[o as usize..(o + l) as usize];
        if i == s && delta < 0 {
            out.extend_from_slice(&data[..data.len() - 1]);
        } else {
            out.extend_from_slice(data);
            if i == s && delta > 0 {
                out.push(0);
            }
        }
    }
    out
}

#[test]
fn hostile_headers_are_refused() {
    let (base, _, objects) = sample();
    let obj = &objects[0];
    let (header, start) = DiffHeader::decode_prefix(obj, obj.len() as u64).unwrap();
    let with = |f: &dyn Fn(&mut DiffHeader)| {
        let mut h = header.clone();
        f(&mut h);
        rebuild(obj, &header, start, &h, usize::MAX, 0)
    };
    let refused = |bytes: Vec<u8>, what: &str| {
        let r = DiffHeader::decode_prefix(&bytes, bytes.len() as u64);
        assert!(r.is_err(), "{what} accepted");
        r.unwrap_err().to_string()
    };
    let e = refused(with(&|h| h.algorithm = 1), "algorithm 1");
    assert!(e.contains("unknown algorithm 1"), "{e}");
    refused(with(&|h| h.layout = DiffLayout::Sparse), "stream count");
    refused(with(&|h| h.streams.push(h.streams[0])), "extra stream");
    refused(with(&|h| h.target_size += 1), "raw lengths vs target");
    refused(with(&|h| h.base_size = MAX_DIFF_INPUT + 1), "huge base");
    let lzma = |dict_size, lc, lp, pb| StreamCodec::Lzma2 {
        dict_size,
        lc,
        lp,
        pb,
    };
    for codec in [
        lzma(streams::MAX_DICT + 1, 0, 0, 0),
        lzma(1024, 0, 0, 0),
        lzma(1 << 16, 3, 2, 0),
        lzma(1 << 16, 0, 0, 5),
        StreamCodec::Bzip3 {
            block_size: streams::MAX_BZIP3_BLOCK + 1,
        },
        StreamCodec::Bzip3 { block_size: 1000 },
    ] {
        refused(with(&|h| h.streams[0].codec = codec), &format!("{codec:?}"));
    }
    // Stored with raw != stored.
    refused(
        with(&|h| {
            h.streams[0].codec = StreamCodec::Stored;
            h.streams[0].raw_len = h.streams[0].stored_len + 1;
        }),
        "stored length mismatch",
    );
    // Legal codecs whose decoders together would need too much memory.
    refused(
        with(&|h| {
            for s in &mut h.streams {
                s.codec = StreamCodec::Bzip3 {
                    block_size: streams::MAX_BZIP3_BLOCK,
                };
            }
        }),
        "decoder memory",
    );
    // A bzip3 stream whose own header names another block size than the object's.
    let (c, d, e) = raw(&base, &base);
    let mut enc = Encoder::new(
        &StreamCodec::Bzip3 {
            block_size: 1 << 20,
        },
        Vec::new(),
    )
    .unwrap();
    std::io::Write::write_all(&mut enc, &d).unwrap();
    let (raw_len, stored_len, data) = enc.finish().unwrap();
    let mut packed = pack_in_memory(&c, &d, &e).unwrap();
    packed.layout = DiffLayout::Dense;
    packed.streams.truncate(1);
    let claimed = StreamHeader {
        codec: StreamCodec::Bzip3 {
            block_size: 1 << 19,
        },
        raw_len,
        stored_len,
    };
    packed.streams.push((claimed, data));
    packed.streams.push((
        StreamHeader {
            codec: StreamCodec::Stored,
            raw_len: e.len() as u64,
            stored_len: e.len() as u64,
        },
        e.clone(),
    ));
    let obj = object(&base, &base, packed);
    let err = apply_object(&base, &obj, 1).unwrap_err().to_string();
    assert!(err.contains("block size"), "{err}");
    assert!(DiffHeader::decode_prefix(b"FRYD\x01\x00", 6).is_err());
}

#[test]
fn control_leaving_the_target_or_base_is_refused() {
    let base = noise(1, 1000);
    let record = |seek: i64, add: u64, copy: u64| {
        let mut b = Vec::new();
        streams::put_varint(&mut b, streams::zigzag(seek));
        streams::put_varint(&mut b, add);
        streams::put_varint(&mut b, copy);
        b
    };
    let stored = |raw: &[u8]| {
        (
            StreamHeader {
                codec: StreamCodec::Stored,
                raw_len: raw.len() as u64,
                stored_len: raw.len() as u64,
            },
            raw.to_vec(),
        )
    };
    let obj = |control: Vec<u8>, target_size: usize, extra: usize| {
        let packed = Packed {
            layout: DiffLayout::Dense,
            streams: vec![
                stored(&control),
                stored(&vec![0; target_size - extra]),
                stored(&vec![7; extra]),
            ],
            other: vec![],
        };
        object(&base, &vec![0; target_size], packed)
    };
    // A correct one first.
    let ok = obj(record(10, 100, 5), 105, 5);
    assert_eq!(apply_object(&base, &ok, 500).unwrap()[..100], base[10..110]);
    for (what, bad) in [
        ("add past the base end", obj(record(950, 100, 0), 100, 0)),
        ("seek before the base", obj(record(-1, 10, 0), 10, 0)),
        ("seek past the base", obj(record(1001, 0, 10), 10, 10)),
        ("output past the target", obj(record(0, 100, 10), 105, 5)),
        (
            "empty record",
            obj([record(0, 0, 0), record(0, 5, 0)].concat(), 5, 0),
        ),
        (
            "trailing record",
            obj([record(0, 5, 0), record(0, 5, 0)].concat(), 5, 0),
        ),
        ("overlong varint", obj(vec![0xff; 11], 5, 0)),
    ] {
        assert!(apply_object(&base, &bad, 500).is_err(), "{what}");
    }
}

#[test]
fn manifest_diff_round_trips_and_is_small() {
    let base = noise(7, 50_000);
    let mut target = base.clone();
    target[25_000..25_032].copy_from_slice(&noise(8, 32));
    let d = encode_manifest_diff(&base, &target, 19).unwrap();
    assert!(d.len() < 200, "{} bytes", d.len());
    assert_eq!(apply_manifest_diff(&base, &d, 50_000).unwrap(), target);
    assert!(
        apply_manifest_diff(&base, &d, 49_999).is_err(),
        "size bound"
    );
    assert!(apply_manifest_diff(&noise(1, 50_000), &d, 50_000).map_or(true, |o| o != target));
}

#[test]
fn large_targets_decode_on_threads_and_fail_cleanly() {
    // At least THREADS_FROM bytes: the streams are decoded on their own threads.
    let base = noise(11, 5 << 20);
    let mut target = base.clone();
    for i in (0..target.len()).step_by(4093) {
        target[i] = target[i].wrapping_add(3);
    }
    target.splice(1 << 20..1 << 20, noise(12, 1000));
    let (out, size) = round_trip(&base, &target, base.len() / 3);
    assert!(out == target, "threaded apply reproduces the target");
    assert!(size < 64 << 10, "{size} bytes");

    // A stream cut short on the wire: an error naming it, not a hang or a panic.
    let (c, d, e) = raw(&base, &target);
    let obj = object(&base, &target, pack_in_memory(&c, &d, &e).unwrap());
    let (header, start) = DiffHeader::decode_prefix(&obj, obj.len() as u64).unwrap();
    let mut readers: Vec<&[u8]> = header
        .stream_ranges(start)
        .into_iter()
        .map(|(o, l)| &obj[o as usize..(o + l) as usize])
        .collect();
    let middle = readers[1];
    readers[1] = &middle[..middle.len() / 2];
    let parts = ConcatBase::new(vec![&base[..]]);
    let err = apply(&header, &parts, readers, &mut |_| Ok(())).unwrap_err();
    assert!(err.to_string().contains("stream"), "{err}");
}

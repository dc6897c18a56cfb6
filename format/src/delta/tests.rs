use super::apply::{ConcatBase, apply};
use super::encode::{Sinks, compress_stream, encode};
use super::manifest_diff::{apply_manifest_diff, encode_manifest_diff};
use super::*;

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

/// Encodes and compresses the three streams.
fn streams(base: &[u8], target: &[u8]) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
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
    let z = |raw: Vec<u8>| {
        let mut out = Vec::new();
        let n = compress_stream(&raw[..], raw.len() as u64, &mut out).unwrap();
        assert_eq!(n as usize, out.len());
        out
    };
    (z(c), z(d), z(e))
}

/// Encodes and applies, returning (output, total compressed size).
fn round_trip(base: &[u8], target: &[u8], split: usize) -> (Vec<u8>, usize) {
    let (c, d, e) = streams(base, target);
    let header = DiffHeader {
        algorithm: BSDIFF_LZMA2,
        base_manifest: Digest::of(b"m"),
        base_size: base.len() as u64,
        target_size: target.len() as u64,
        target_chunks: 1,
        control_len: c.len() as u64,
        diff_len: d.len() as u64,
        extra_len: e.len() as u64,
    };
    let mut object = header.encode_prefix();
    let (parsed, start) = {
        let total = object.len() + c.len() + d.len() + e.len();
        object.extend_from_slice(&c);
        object.extend_from_slice(&d);
        object.extend_from_slice(&e);
        DiffHeader::decode_prefix(&object, total as u64).unwrap()
    };
    assert_eq!(parsed, header);
    let s = start as usize;
    let (cs, ds) = (s + c.len(), s + c.len() + d.len());
    let split = split.min(base.len());
    let parts = ConcatBase::new(vec![&base[..split], &[], &base[split..]]);
    let mut out = Vec::new();
    let n = apply(
        &parsed,
        &parts,
        &object[s..cs],
        &object[cs..ds],
        &object[ds..],
        &mut |b| {
            out.extend_from_slice(b);
            Ok(())
        },
    )
    .unwrap();
    assert_eq!(n as usize, out.len());
    (out, c.len() + d.len() + e.len())
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
fn edge_cases_round_trip() {
    for (base, target) in [
        (vec![], noise(2, 1000)),
        (noise(3, 1000), vec![]),
        (noise(4, 10), noise(4, 10)),
        (noise(5, 5000), noise(6, 5000)),
    ] {
        let (out, _) = round_trip(&base, &target, 3);
        assert_eq!(out, target);
    }
}

#[test]
fn hostile_streams_are_refused() {
    let base = noise(1, 1000);
    let (c, d, e) = streams(&base, &base);
    let mut header = DiffHeader {
        algorithm: BSDIFF_LZMA2,
        base_manifest: Digest::of(b"m"),
        base_size: 1000,
        target_size: 500, // smaller than what the control stream describes
        target_chunks: 1,
        control_len: c.len() as u64,
        diff_len: d.len() as u64,
        extra_len: e.len() as u64,
    };
    let b = ConcatBase::new(vec![&base]);
    let r = apply(&header, &b, &c[..], &d[..], &e[..], &mut |_| Ok(()));
    assert!(r.is_err(), "output past target_size");
    header.target_size = 1000;
    header.base_size = 999;
    assert!(apply(&header, &b, &c[..], &d[..], &e[..], &mut |_| Ok(())).is_err());
    assert!(DiffHeader::decode_prefix(b"FRYD\x01\x00", 6).is_err());
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

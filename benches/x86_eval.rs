//! Measures reference-aware diffs for x86-64 ELF (FORMAT.md §3.6.1) on a real release
//! pair: the diff object ferry ships today against the same diff made over the base
//! rewritten into the new release's address space, with the address map stream
//! (compressed) counted in.
//!
//! `cargo run -p ferry-benches --bin x86-eval -- OLD NEW` where OLD and NEW are both
//! files or both release trees. As a publisher does: the base is the old regular files
//! in path order, concatenated; the target is the new release's chunks (default
//! chunking, per file) that the old one lacks, in order of first use. Each new ELF file
//! is paired with the old file of the same path, or else of the same name once
//! hex runs (build hashes) are removed. The agent's side is checked too: the map
//! stream is decoded, the base rewritten from it alone and the object applied; the
//! output must be the target byte for byte.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use ferry_format::chunking::{ChunkParams, chunk_slice};
use ferry_format::delta::apply::{ConcatBase, apply};
use ferry_format::delta::encode::{Sinks, encode};
use ferry_format::delta::pack::{object_in_memory, pack_in_memory};
use ferry_format::delta::streams::Encoder;
use ferry_format::delta::x86::elf::Elf;
use ferry_format::delta::x86::{FileMaps, align, rewrite_file};
use ferry_format::delta::{BSDIFF_V2, DiffHeader, StreamCodec};
use ferry_format::id::{ChunkId, Digest};

fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").path())
        .collect();
    entries.sort();
    for p in entries {
        let meta = std::fs::symlink_metadata(&p).expect("stat");
        if meta.is_dir() {
            walk(root, &p, out);
        } else if meta.is_file() {
            let rel = p
                .strip_prefix(root)
                .expect("under root")
                .to_string_lossy()
                .into_owned();
            out.push((rel, p));
        }
    }
}

/// The regular files of a release (a file or a tree), in path order.
fn load(path: &str) -> Vec<(String, Vec<u8>)> {
    let root = Path::new(path);
    let mut files = Vec::new();
    if root.is_dir() {
        walk(root, root, &mut files);
    } else {
        files.push((String::new(), root.to_path_buf()));
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    files
        .into_iter()
        .map(|(rel, p)| (rel, std::fs::read(p).expect("read")))
        .collect()
}

/// The new release's chunks the old one lacks, in order of first use.
fn missing_chunks(old: &[(String, Vec<u8>)], new: &[(String, Vec<u8>)]) -> Vec<u8> {
    let p = ChunkParams::default();
    let mut have: HashSet<ChunkId> = HashSet::new();
    for (_, b) in old {
        for (o, l) in chunk_slice(b, p).expect("chunk") {
            have.insert(ChunkId::of(&b[o..o + l]));
        }
    }
    let mut out = Vec::new();
    for (_, b) in new {
        for (o, l) in chunk_slice(b, p).expect("chunk") {
            if have.insert(ChunkId::of(&b[o..o + l])) {
                out.extend_from_slice(&b[o..o + l]);
            }
        }
    }
    out
}

/// A file name without runs of 6 or more hex digits (build hashes in library names).
fn stem(path: &str) -> String {
    let mut out = String::new();
    let mut run = String::new();
    for c in path.chars() {
        if c.is_ascii_hexdigit() {
            run.push(c);
        } else {
            if run.len() < 6 {
                out.push_str(&run);
            }
            run.clear();
            out.push(c);
        }
    }
    if run.len() < 6 {
        out.push_str(&run);
    }
    out
}

/// The shipped diff object of `target` against `base`: (object bytes, layout).
fn object(base: &[u8], target: &[u8]) -> (Vec<u8>, String, f64) {
    let t = Instant::now();
    let (c, d, e, _) = encode(
        base,
        target,
        Sinks {
            control: Vec::new(),
            diff: Vec::new(),
            extra: Vec::new(),
        },
    )
    .expect("encode");
    let packed = pack_in_memory(&c, &d, &e).expect("pack");
    let header = DiffHeader {
        algorithm: BSDIFF_V2,
        base_manifest: Digest::of(b""),
        base_size: base.len() as u64,
        target_size: target.len() as u64,
        target_chunks: 0,
        layout: packed.layout,
        streams: packed.streams.iter().map(|(h, _)| *h).collect(),
    };
    let sizes: Vec<String> = packed
        .streams
        .iter()
        .map(|(h, _)| h.stored_len.to_string())
        .collect();
    let what = format!("{:?} [{}]", packed.layout, sizes.join(" + "));
    (
        object_in_memory(&header, &packed),
        what,
        t.elapsed().as_secs_f64(),
    )
}

fn apply_object(base: &[u8], object: &[u8]) -> Vec<u8> {
    let (header, start) = DiffHeader::decode_prefix(object, object.len() as u64).expect("parse");
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
    .expect("apply");
    out
}

/// The map stream as the smallest of a few LZMA2 settings (or stored).
fn compress_map(raw: &[u8]) -> (usize, String) {
    let mut best = (raw.len(), "stored".to_string());
    for (lc, lp, pb) in [(0, 0, 0), (3, 0, 2), (1, 0, 0)] {
        let codec = StreamCodec::Lzma2 {
            dict_size: (raw.len() as u64).next_power_of_two().clamp(4096, 8 << 20) as u32,
            lc,
            lp,
            pb,
        };
        let mut enc = Encoder::new(&codec, Vec::new()).expect("encoder");
        std::io::Write::write_all(&mut enc, raw).expect("compress");
        let (_, stored, _) = enc.finish().expect("finish");
        if (stored as usize) < best.0 {
            best = (stored as usize, format!("lzma2 lc{lc}lp{lp}pb{pb}"));
        }
    }
    best
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [old_path, new_path] = args.as_slice() else {
        eprintln!("usage: x86-eval OLD NEW (two files or two trees)");
        std::process::exit(2);
    };
    let old = load(old_path);
    let new = load(new_path);
    let base: Vec<u8> = old.iter().flat_map(|(_, b)| b.iter().copied()).collect();
    let target = missing_chunks(&old, &new);
    println!("## x86-eval {old_path} {new_path}");
    println!(
        "base {} B in {} files, target (missing chunks) {} B",
        base.len(),
        old.len(),
        target.len()
    );

    // Maps, one per paired base ELF file.
    println!("| base file | new file | base refs | new refs | matched B | votes | runs | s |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    let mut maps = FileMaps::default();
    let t_maps = Instant::now();
    for (name, bytes) in &new {
        let Some(new_elf) = Elf::parse(bytes) else {
            continue;
        };
        let pick = old
            .iter()
            .position(|(n, _)| n == name)
            .or_else(|| old.iter().position(|(n, _)| stem(n) == stem(name)));
        let Some(i) = pick else { continue };
        let Some(old_elf) = Elf::parse(&old[i].1) else {
            continue;
        };
        if maps.files.iter().any(|(k, _)| *k == i as u64) {
            continue;
        }
        let t = Instant::now();
        let (map, s) = align::build_map(&old[i].1, &old_elf, bytes, &new_elf);
        println!(
            "| {} | {name} | {} | {} | {} | {} | {} | {:.1} |",
            old[i].0,
            s.old_refs,
            s.new_refs,
            s.matched,
            s.votes,
            s.runs,
            t.elapsed().as_secs_f64()
        );
        if !map.is_empty() {
            maps.files.push((i as u64, map));
        }
    }
    maps.files.sort_by_key(|(i, _)| *i);
    let map_secs = t_maps.elapsed().as_secs_f64();
    let raw_map = maps.encode();
    let (map_len, map_codec) = compress_map(&raw_map);

    // The base an agent rewrites from the map stream alone.
    let decoded = FileMaps::decode(&raw_map, old.len() as u64).expect("map stream");
    let t_rw = Instant::now();
    let mut rewritten = Vec::with_capacity(base.len());
    for (i, (_, b)) in old.iter().enumerate() {
        match decoded.files.iter().find(|(k, _)| *k == i as u64) {
            Some((_, map)) => {
                rewritten.extend_from_slice(&rewrite_file(b, map).expect("an ELF file"))
            }
            None => rewritten.extend_from_slice(b),
        }
    }
    let rw_secs = t_rw.elapsed().as_secs_f64();

    let (plain, plain_what, plain_secs) = object(&base, &target);
    let (x86, x86_what, x86_secs) = object(&rewritten, &target);
    assert!(apply_object(&base, &plain) == target, "plain round trip");
    assert!(apply_object(&rewritten, &x86) == target, "x86 round trip");
    let total = x86.len() + map_len;
    println!();
    println!("| diff | bytes | detail | s |");
    println!("|---|---:|---|---:|");
    println!(
        "| today (algorithm 2) | {} | {plain_what} | {plain_secs:.1} |",
        plain.len()
    );
    println!(
        "| reference-aware: object + map | {total} | object {} {x86_what} + map {map_len} ({map_codec}, raw {}) | {:.1} + map {map_secs:.1} + rewrite {rw_secs:.2} |",
        x86.len(),
        raw_map.len(),
        x86_secs
    );
    println!("| ratio | {:.3} | | |", total as f64 / plain.len() as f64);
}

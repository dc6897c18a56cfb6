//! Compares diff encodings on two real files: ferry's bsdiff-style matching with what
//! ferry ships (algorithm 2: the smaller of a dense layout with bzip3 and a sparse
//! layout with LZMA2, both shown with per-stream sizes), against the same raw streams
//! as three .xz streams (algorithm 1's compression) and as zstd -19, over the whole
//! new file and over only the chunks the old release lacks; and zstd
//! `--patch-from`-style compression of the new file with the old one as reference
//! prefix. Prints sizes and encode/apply times.
//!
//! `cargo run -p ferry-benches --bin diff-eval -- [--apply-only] OLD NEW`
//! (`--apply-only`: the shipped encoding's apply throughput, writing to a file, fsync
//! timed separately.) `--dump-raw OLD NEW DIR` writes the raw streams;
//! `--write-object OLD NEW OBJ` then `--apply-object OLD OBJ` applies alone.

use std::time::Instant;

use ferry_format::chunking::{ChunkParams, chunk_slice};
use ferry_format::delta::apply::{ConcatBase, apply};
use ferry_format::delta::encode::{Sinks, encode};
use ferry_format::delta::manifest_diff::encode_manifest_diff;
use ferry_format::delta::pack::{Packed, object_in_memory, pack_in_memory};
use ferry_format::delta::{BSDIFF_V2, DiffHeader, StreamCodec, StreamHeader};
use ferry_format::id::{ChunkId, Digest};

struct Raw {
    control: Vec<u8>,
    diff: Vec<u8>,
    extra: Vec<u8>,
    seconds: f64,
}

fn raw_streams(old: &[u8], new: &[u8]) -> Raw {
    let t = Instant::now();
    let (control, diff, extra, _) = encode(
        old,
        new,
        Sinks {
            control: Vec::new(),
            diff: Vec::new(),
            extra: Vec::new(),
        },
    )
    .expect("encode");
    Raw {
        control,
        diff,
        extra,
        seconds: t.elapsed().as_secs_f64(),
    }
}

/// Algorithm 1's stream compression: an .xz stream, LZMA2 preset 9e, no check.
fn xz(raw: &[u8]) -> Vec<u8> {
    use liblzma::stream::{Check, PRESET_EXTREME, Stream};
    let stream = Stream::new_easy_encoder(9 | PRESET_EXTREME, Check::None).expect("xz");
    let mut enc = liblzma::write::XzEncoder::new_stream(Vec::new(), stream);
    std::io::Write::write_all(&mut enc, raw).expect("xz");
    enc.finish().expect("xz")
}

fn zstd19(raw: &[u8]) -> Vec<u8> {
    zstd::encode_all(raw, 19).expect("zstd")
}

/// Compresses the three streams with `f`: (bytes, seconds).
fn measure(r: &Raw, f: fn(&[u8]) -> Vec<u8>) -> (usize, f64) {
    let t = Instant::now();
    let n = f(&r.control).len() + f(&r.diff).len() + f(&r.extra).len();
    (n, t.elapsed().as_secs_f64())
}

/// The shipped encoding: the diff object (header included) a publisher writes.
fn shipped(old: &[u8], new: &[u8], r: &Raw) -> (DiffHeader, Packed<Vec<u8>>, Vec<u8>) {
    let packed = pack_in_memory(&r.control, &r.diff, &r.extra).expect("pack");
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
    (header, packed, object)
}

/// Applies `object` over `old`, handing the output to `out`: seconds.
fn apply_object(
    old: &[u8],
    object: &[u8],
    out: &mut dyn FnMut(&[u8]) -> ferry_format::Result<()>,
) -> f64 {
    let t = Instant::now();
    let (header, start) = DiffHeader::decode_prefix(object, object.len() as u64).expect("parse");
    let mut streams: Vec<&[u8]> = header
        .stream_ranges(start)
        .into_iter()
        .map(|(o, l)| &object[o as usize..(o + l) as usize])
        .collect();
    // Algorithm 3 (FORMAT.md §3.6.1): the address maps are the last stream, and the
    // streams before it apply to the base rewritten through them — here the whole file
    // at once, in memory (the agent rewrites block by block as it reads).
    let rewritten = header.map_stream().map(|h| {
        let maps = ferry_format::delta::x86::read_maps(h, streams[streams.len() - 1], 1)
            .expect("address maps");
        let t = Instant::now();
        let base = maps
            .files
            .iter()
            .find(|(i, _)| *i == 0)
            .and_then(|(_, map)| ferry_format::delta::x86::rewrite_file(old, map));
        eprintln!("rewrote the base in {:.3} s", t.elapsed().as_secs_f64());
        base
    });
    streams.truncate(header.data_streams().len());
    let base = match &rewritten {
        Some(Some(b)) => b.as_slice(),
        _ => old,
    };
    apply(&header, &ConcatBase::new(vec![base]), streams, out).expect("apply");
    t.elapsed().as_secs_f64()
}

/// Maps `path` read-only, as the agent maps its installed base files.
#[allow(unsafe_code)]
fn map(path: &str) -> memmap2::Mmap {
    let file = std::fs::File::open(path).expect("open");
    // SAFETY: nothing modifies the benchmark's input files while they are mapped.
    unsafe { memmap2::Mmap::map(&file) }.expect("map")
}

fn codec_name(c: &StreamCodec) -> String {
    match c {
        StreamCodec::Stored => "stored".into(),
        StreamCodec::Lzma2 { lc, lp, pb, .. } => format!("lzma2 lc{lc}lp{lp}pb{pb}"),
        StreamCodec::Bzip3 { block_size } => format!("bzip3 {}K", block_size >> 10),
        StreamCodec::Zstd { window_log } => format!("zstd w{window_log}"),
        StreamCodec::ZstdX86 { window_log } => format!("zstd+x86 w{window_log}"),
    }
}

fn describe(streams: &[StreamHeader]) -> String {
    streams
        .iter()
        .map(|h| format!("{} ({})", h.stored_len, codec_name(&h.codec)))
        .collect::<Vec<_>>()
        .join(" + ")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let [_, mode, a, b, dir] = args.as_slice()
        && mode == "--dump-raw"
    {
        // The raw streams, for trying external compressors on them: DIR/whole/* for
        // the whole new file, DIR/missing/* for the chunks the old one lacks.
        let (old, new) = (
            std::fs::read(a).expect("old"),
            std::fs::read(b).expect("new"),
        );
        let missing = missing_chunks(&old, &new);
        for (sub, target) in [("whole", &new), ("missing", &missing)] {
            let r = raw_streams(&old, target);
            std::fs::create_dir_all(format!("{dir}/{sub}")).expect("mkdir");
            for (name, data) in [
                ("control", &r.control),
                ("diff", &r.diff),
                ("extra", &r.extra),
            ] {
                std::fs::write(format!("{dir}/{sub}/{name}"), data).expect("write");
            }
        }
        return;
    }
    if let [_, mode, a, b, obj] = args.as_slice()
        && mode == "--write-object"
    {
        // The shipped object for the missing chunks, to apply alone (`--apply-object`)
        // so that peak memory measures the agent's side only.
        let (old, new) = (
            std::fs::read(a).expect("old"),
            std::fs::read(b).expect("new"),
        );
        let missing = missing_chunks(&old, &new);
        let (_, _, object) = shipped(&old, &missing, &raw_streams(&old, &missing));
        std::fs::write(obj, object).expect("write");
        return;
    }
    if let [_, mode, a, obj] = args.as_slice()
        && mode == "--apply-object"
    {
        // As the agent does it: the base mapped (memmap2), the output written to a
        // file through a buffer; fsync timed on its own.
        use std::io::Write;
        let old = map(a);
        let object = std::fs::read(obj).expect("obj");
        let path = format!("{obj}.out");
        let out = std::fs::File::create(&path).expect("out");
        let mut w = std::io::BufWriter::with_capacity(1 << 20, out);
        let mut n = 0u64;
        let secs = apply_object(&old, &object, &mut |b| {
            n += b.len() as u64;
            w.write_all(b)
                .map_err(|e| ferry_format::FormatError::Compression(e.to_string()))
        });
        let t = Instant::now();
        let out = w.into_inner().expect("flush");
        let flushed = t.elapsed().as_secs_f64();
        let t = Instant::now();
        out.sync_all().expect("fsync");
        let synced = t.elapsed().as_secs_f64();
        let secs = secs + flushed;
        println!(
            "applied {n} B in {secs:.3} s ({:.0} MB/s) to {path}, fsync {synced:.2} s",
            n as f64 / 1e6 / secs
        );
        return;
    }
    let quick = args.iter().any(|a| a == "--apply-only");
    let files: Vec<&String> = args
        .iter()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let (old, new) = match files.as_slice() {
        [a, b] => (
            std::fs::read(a).expect("old"),
            std::fs::read(b).expect("new"),
        ),
        _ => {
            eprintln!("usage: diff-eval [--apply-only] OLD NEW");
            std::process::exit(2);
        }
    };
    let missing = missing_chunks(&old, &new);
    println!(
        "old {} B, new {} B; chunks of new missing from old: {} B",
        old.len(),
        new.len(),
        missing.len()
    );
    if quick {
        apply_throughput(&old, &missing);
        return;
    }
    println!("| encoding | bytes | match s | compress s | apply s |");
    println!("|---|---:|---:|---:|---:|");
    for (what, target) in [("whole file", &new), ("missing chunks only", &missing)] {
        let r = raw_streams(&old, target);
        let t = Instant::now();
        let (header, packed, object) = shipped(&old, target, &r);
        let comp = t.elapsed().as_secs_f64();
        let mut n = 0usize;
        let mut h = blake3::Hasher::new();
        let app = apply_object(&old, &object, &mut |b| {
            n += b.len();
            h.update(b);
            Ok(())
        });
        assert_eq!(
            (n, h.finalize()),
            (target.len(), blake3::hash(target)),
            "round trip"
        );
        let prefix = object.len() as u64 - packed.stored_len();
        let (c, e) = (&header.streams[0], header.streams.last().expect("extra"));
        let middle = &header.streams[1..header.streams.len() - 1];
        let others: u64 = packed.other.iter().map(|h| h.stored_len).sum();
        // Header entries differ by a few bytes between layouts: left out.
        let other_total =
            object.len() as u64 - middle.iter().map(|h| h.stored_len).sum::<u64>() + others;
        println!(
            "| shipped: {:?} ({what}): header {prefix} + control {} + [{}] + extra {} | {} | {:.1} | {comp:.1} | {app:.2} |",
            header.layout,
            describe(&[*c]),
            describe(middle),
            describe(&[*e]),
            object.len(),
            r.seconds
        );
        println!(
            "| not chosen: other layout ({what}): [{}] | ~{other_total} | - | - | - |",
            describe(&packed.other)
        );
        let (n, c) = measure(&r, xz);
        println!(
            "| same raw streams, 3 x xz 9e (algorithm 1 compression; {what}) | {n} | {:.1} | {c:.1} | - |",
            r.seconds
        );
        let (n, c) = measure(&r, zstd19);
        println!(
            "| same raw streams, 3 x zstd -19 ({what}) | {n} | {:.1} | {c:.1} | - |",
            r.seconds
        );
    }
    let t = Instant::now();
    let d = encode_manifest_diff(&old, &new, 19).expect("zstd");
    println!(
        "| zstd -19 with old as prefix (patch-from), whole file | {} | - | {:.1} | - |",
        d.len(),
        t.elapsed().as_secs_f64()
    );
}

/// The chunks of `new` (default chunking) that `old` lacks, concatenated in order:
/// what a diff object produces.
fn missing_chunks(old: &[u8], new: &[u8]) -> Vec<u8> {
    let p = ChunkParams::default();
    let old_ids: std::collections::HashSet<ChunkId> = chunk_slice(old, p)
        .expect("chunk")
        .map(|(o, l)| ChunkId::of(&old[o..o + l]))
        .collect();
    let mut missing = Vec::new();
    for (o, l) in chunk_slice(new, p).expect("chunk") {
        if !old_ids.contains(&ChunkId::of(&new[o..o + l])) {
            missing.extend_from_slice(&new[o..o + l]);
        }
    }
    missing
}

/// The agent's side in-process: apply the shipped encoding over the base and write the
/// output to a file, reporting apply and fsync separately (`--apply-only`).
fn apply_throughput(old: &[u8], target: &[u8]) {
    use std::io::Write;
    let r = raw_streams(old, target);
    let (header, _, object) = shipped(old, target, &r);
    let dir = std::env::temp_dir().join(format!("diff-eval-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    let path = dir.join("out");
    let mut f =
        std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&path).expect("out"));
    let applied = apply_object(old, &object, &mut |b| {
        f.write_all(b)
            .map_err(|e| ferry_format::FormatError::Compression(e.to_string()))
    });
    let t = Instant::now();
    let file = f.into_inner().expect("flush");
    file.sync_all().expect("fsync");
    let synced = t.elapsed().as_secs_f64();
    let mb = target.len() as f64 / 1e6;
    println!(
        "diff {} B ({:?}: {}); apply {mb:.1} MB in {applied:.3} s ({:.0} MB/s) to a file, fsync {synced:.2} s",
        object.len(),
        header.layout,
        describe(&header.streams),
        mb / applied
    );
    let _ = std::fs::remove_dir_all(&dir);
}

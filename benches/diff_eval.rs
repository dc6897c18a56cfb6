//! Compares diff encodings on two real files: ferry's bsdiff-style matching with its
//! three streams compressed by LZMA2 (xz preset 9e, what ferry ships), by zstd -19
//! and by bzip2-class settings, over the whole new file and over only the chunks the
//! old release lacks; and zstd `--patch-from`-style compression of the new file with
//! the old one as reference prefix. Prints sizes and encode/apply times.
//!
//! `cargo run -p ferry-benches --bin diff-eval -- [--apply-only] OLD NEW`
//! (`--apply-only`: the shipped encoding's apply throughput, writing to a file, fsync
//! timed separately.)

use std::time::Instant;

use ferry_format::chunking::{ChunkParams, chunk_slice};
use ferry_format::delta::apply::{ConcatBase, apply};
use ferry_format::delta::encode::{Sinks, compress_stream, encode};
use ferry_format::delta::manifest_diff::encode_manifest_diff;
use ferry_format::delta::{BSDIFF_LZMA2, DiffHeader};
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

fn xz(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    compress_stream(raw, raw.len() as u64, &mut out).expect("xz");
    out
}

fn zstd19(raw: &[u8]) -> Vec<u8> {
    zstd::encode_all(raw, 19).expect("zstd")
}

/// Compresses the three streams with `f`, applies the result (xz only, as shipped)
/// and returns (bytes, compress seconds, apply seconds).
fn measure(
    old: &[u8],
    new: &[u8],
    r: &Raw,
    f: fn(&[u8]) -> Vec<u8>,
    check: bool,
) -> (usize, f64, f64) {
    let t = Instant::now();
    let (c, d, e) = (f(&r.control), f(&r.diff), f(&r.extra));
    let comp = t.elapsed().as_secs_f64();
    let mut app = 0.0;
    if check {
        let header = DiffHeader {
            algorithm: BSDIFF_LZMA2,
            base_manifest: Digest::of(b""),
            base_size: old.len() as u64,
            target_size: new.len() as u64,
            target_chunks: 0,
            control_len: c.len() as u64,
            diff_len: d.len() as u64,
            extra_len: e.len() as u64,
        };
        let t = Instant::now();
        let mut n = 0usize;
        let mut h = blake3::Hasher::new();
        apply(
            &header,
            &ConcatBase::new(vec![old]),
            &c[..],
            &d[..],
            &e[..],
            &mut |b| {
                n += b.len();
                h.update(b);
                Ok(())
            },
        )
        .expect("apply");
        app = t.elapsed().as_secs_f64();
        assert_eq!(
            (n, h.finalize()),
            (new.len(), blake3::hash(new)),
            "round trip"
        );
    }
    (c.len() + d.len() + e.len(), comp, app)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let [_, mode, a, b, dir] = args.as_slice()
        && mode == "--dump-raw"
    {
        // The raw streams, for trying external compressors on them.
        let r = raw_streams(
            &std::fs::read(a).expect("old"),
            &std::fs::read(b).expect("new"),
        );
        for (name, data) in [
            ("control", &r.control),
            ("diff", &r.diff),
            ("extra", &r.extra),
        ] {
            std::fs::write(format!("{dir}/{name}"), data).expect("write");
        }
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
    let p = ChunkParams::default();
    let old_ids: std::collections::HashSet<ChunkId> = chunk_slice(&old, p)
        .expect("chunk")
        .map(|(o, l)| ChunkId::of(&old[o..o + l]))
        .collect();
    let mut missing = Vec::new();
    let mut chunks = 0;
    for (o, l) in chunk_slice(&new, p).expect("chunk") {
        chunks += 1;
        if !old_ids.contains(&ChunkId::of(&new[o..o + l])) {
            missing.extend_from_slice(&new[o..o + l]);
        }
    }
    println!(
        "old {} B, new {} B; chunks of new missing from old: {} B of {chunks} chunks",
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
        let (n, c, a) = measure(&old, target, &r, xz, true);
        println!(
            "| bsdiff matching + xz 9e ({what}) | {n} | {:.1} | {c:.1} | {a:.2} |",
            r.seconds
        );
        let (n, c, _) = measure(&old, target, &r, zstd19, false);
        println!(
            "| bsdiff matching + zstd -19 ({what}) | {n} | {:.1} | {c:.1} | - |",
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

/// The agent's side in-process: apply the shipped encoding over the base and write the
/// output to a file, reporting apply and fsync separately (`--apply-only`).
fn apply_throughput(old: &[u8], target: &[u8]) {
    use std::io::Write;
    let r = raw_streams(old, target);
    let (c, d, e) = (xz(&r.control), xz(&r.diff), xz(&r.extra));
    let header = DiffHeader {
        algorithm: ferry_format::delta::BSDIFF_LZMA2,
        base_manifest: Digest::of(b""),
        base_size: old.len() as u64,
        target_size: target.len() as u64,
        target_chunks: 0,
        control_len: c.len() as u64,
        diff_len: d.len() as u64,
        extra_len: e.len() as u64,
    };
    let dir = std::env::temp_dir().join(format!("diff-eval-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    let path = dir.join("out");
    let mut f =
        std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&path).expect("out"));
    let t = Instant::now();
    apply(
        &header,
        &ConcatBase::new(vec![old]),
        &c[..],
        &d[..],
        &e[..],
        &mut |b| {
            f.write_all(b)
                .map_err(|e| ferry_format::FormatError::Compression(e.to_string()))
        },
    )
    .expect("apply");
    let file = f.into_inner().expect("flush");
    let applied = t.elapsed().as_secs_f64();
    let t = Instant::now();
    file.sync_all().expect("fsync");
    let synced = t.elapsed().as_secs_f64();
    let mb = target.len() as f64 / 1e6;
    println!(
        "diff {} B; apply {mb:.1} MB in {applied:.2} s ({:.0} MB/s) to a file, fsync {synced:.2} s",
        c.len() + d.len() + e.len(),
        mb / applied
    );
    let _ = std::fs::remove_dir_all(&dir);
}

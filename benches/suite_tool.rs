//! Helpers of the benchmark suite (`benches/run.sh`), built in the release profile:
//!
//! - `gen --out DIR --bytes N [--files K] [--seed S]`: a release of N bytes in K files
//!   (one file `blob.bin` when K is 1), content that zstd compresses about 3:1 (words
//!   drawn from a vocabulary, with stretches of noise) and that never repeats at chunk
//!   scale, so chunking dedups nothing. Files sit 100 to a folder.
//! - `mutate --dir DIR --every N [--seed S]`: rewrites every Nth file (sorted order)
//!   with new content of the same size (a new inode: hard links to it are not touched);
//!   prints the rewritten paths, one per line, and their total size on stderr.
//! - `chunk-stage FILE...`: the chunk+hash stage of `ferry-server publish` on its own:
//!   the function publish calls (`FileChunker`: reads into a reused buffer, cuts, and
//!   hashes each chunk into its id and into the file hash in one pass, one thread), and,
//!   over the same input, FastCDC v2020 (the `fastcdc` crate) over a memory map plus
//!   blake3 of each chunk alone. Rounds of both (at least 3, more up to 3 s), alternating
//!   which goes first; prints one JSON object with each side's fastest round.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use ferry_format::chunking::{ChunkParams, FileChunker, chunk_slice};
use ferry_format::id::ChunkId;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// Fills `out` with `len` bytes of text-like data: words from `vocab`, separated by
/// spaces and newlines, with one stretch of 512 random bytes in every 8 KiB.
fn content(rng: &mut Rng, vocab: &[Vec<u8>], len: usize, out: &mut Vec<u8>) {
    out.clear();
    while out.len() < len {
        if out.len() % 8192 < 16 && rng.next().is_multiple_of(2) {
            for _ in 0..64 {
                out.extend_from_slice(&rng.next().to_le_bytes());
            }
            continue;
        }
        let r = rng.next();
        // Skewed choice: small indexes are more frequent, as in real text and code.
        let idx = (((r & 0xffff) * ((r >> 16) & 0xffff)) >> 20) as usize % vocab.len();
        out.extend_from_slice(&vocab[idx]);
        out.push(if (r >> 40).is_multiple_of(13) {
            b'\n'
        } else {
            b' '
        });
    }
    out.truncate(len);
}

fn vocabulary(seed: u64) -> Vec<Vec<u8>> {
    let mut rng = Rng(seed | 1);
    (0..4096)
        .map(|_| {
            let n = 2 + (rng.next() % 11) as usize;
            (0..n)
                .map(|_| {
                    b"etaoinshrdlucmfwypvbgkqjxz_0123456789ETAOIN(){};=.,"
                        [(rng.next() % 51) as usize]
                })
                .collect()
        })
        .collect()
}

fn file_path(out: &Path, i: usize, files: usize) -> PathBuf {
    if files == 1 {
        out.join("blob.bin")
    } else {
        out.join(format!("d{:04}", i / 100))
            .join(format!("f{i:07}.dat"))
    }
}

fn gen_cmd(out: &Path, bytes: u64, files: usize, seed: u64) {
    let vocab = vocabulary(0xfe77_0000);
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut buf = Vec::with_capacity(1 << 20);
    let per = bytes / files as u64;
    for i in 0..files {
        let path = file_path(out, i, files);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        // Sizes vary from half to one and a half times the mean.
        let mut size = if files == 1 {
            bytes
        } else {
            per / 2 + rng.next() % (per + 1)
        };
        let mut w = BufWriter::with_capacity(1 << 20, File::create(&path).unwrap());
        while size > 0 {
            let n = size.min(1 << 20) as usize;
            content(&mut rng, &vocab, n, &mut buf);
            w.write_all(&buf).unwrap();
            size -= n as u64;
        }
        w.flush().unwrap();
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn mutate_cmd(dir: &Path, every: usize, seed: u64) {
    let vocab = vocabulary(0xfe77_0000);
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 3);
    let mut files = Vec::new();
    walk(dir, &mut files);
    let mut total = 0u64;
    let mut buf = Vec::new();
    for (i, p) in files.iter().enumerate() {
        if i % every != every / 2 {
            continue;
        }
        let len = fs::metadata(p).unwrap().len() as usize;
        content(&mut rng, &vocab, len, &mut buf);
        fs::remove_file(p).unwrap();
        fs::write(p, &buf).unwrap();
        total += len as u64;
        println!("{}", p.strip_prefix(dir).unwrap().display());
    }
    eprintln!("{total}");
}

/// Rounds of `chunk-stage`, each running both sides: at least `STAGE_ROUNDS`, and more
/// (up to `STAGE_MAX_ROUNDS`) until `STAGE_SECONDS` have passed, so a 100 MB input gets
/// as many chances as a 1 GiB one. The figures are each side's fastest round, so a
/// round slowed by another process on the shared machine does not decide the ratio.
const STAGE_ROUNDS: usize = 3;
const STAGE_MAX_ROUNDS: usize = 25;
const STAGE_SECONDS: f64 = 3.0;

fn chunk_stage_cmd(paths: &[String]) {
    let params = ChunkParams::default();
    let (mut ferry_s, mut ref_s) = (f64::MAX, f64::MAX);
    let (mut bytes, mut chunks, mut x) = (0u64, 0u64, 0u8);
    let started = Instant::now();
    let mut rounds = 0;
    while rounds < STAGE_ROUNDS
        || (rounds < STAGE_MAX_ROUNDS && started.elapsed().as_secs_f64() < STAGE_SECONDS)
    {
        let round = rounds;
        rounds += 1;
        // The two sides alternate which goes first.
        for side in [round % 2, 1 - round % 2] {
            let t = Instant::now();
            if side == 0 {
                (bytes, chunks) = (0, 0);
                for p in paths {
                    // As server/src/publish/mod.rs runs it, minus the chunk table.
                    let mut chunker = FileChunker::new(File::open(p).unwrap(), params).unwrap();
                    while let Some(c) = chunker.next_chunk().unwrap() {
                        chunks += 1;
                        x ^= c.id.0[0];
                    }
                    let file = chunker.finish();
                    bytes += file.size;
                    x ^= file.hash.0[0];
                }
                ferry_s = ferry_s.min(t.elapsed().as_secs_f64());
            } else {
                for p in paths {
                    let file = File::open(p).unwrap();
                    if file.metadata().unwrap().len() == 0 {
                        continue;
                    }
                    let map = map(&file);
                    for (o, l) in chunk_slice(&map, params).unwrap() {
                        x ^= ChunkId::of(&map[o..o + l]).0[0];
                    }
                }
                ref_s = ref_s.min(t.elapsed().as_secs_f64());
            }
        }
    }
    println!(
        "{{\"bytes\": {bytes}, \"chunks\": {chunks}, \"rounds\": {rounds}, \"ferry_stage_s\": {ferry_s:.4}, \"fastcdc_blake3_s\": {ref_s:.4}, \"check\": {x}}}"
    );
}

#[allow(unsafe_code)]
fn map(file: &File) -> memmap2::Mmap {
    // SAFETY: the benchmark's input files are not modified while mapped.
    unsafe { memmap2::Mmap::map(file).unwrap() }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opt = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .map(|i| args[i + 1].clone())
    };
    match args.first().map(String::as_str) {
        Some("gen") => gen_cmd(
            Path::new(&opt("--out").expect("--out")),
            opt("--bytes").expect("--bytes").parse().unwrap(),
            opt("--files").map_or(1, |v| v.parse().unwrap()),
            opt("--seed").map_or(1, |v| v.parse().unwrap()),
        ),
        Some("mutate") => mutate_cmd(
            Path::new(&opt("--dir").expect("--dir")),
            opt("--every").expect("--every").parse().unwrap(),
            opt("--seed").map_or(2, |v| v.parse().unwrap()),
        ),
        Some("chunk-stage") => chunk_stage_cmd(&args[1..]),
        _ => {
            eprintln!("usage: suite-tool gen|mutate|chunk-stage ... (see benches/suite_tool.rs)");
            std::process::exit(2);
        }
    }
}

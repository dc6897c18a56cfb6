use proptest::prelude::*;

use super::elf::Elf;
use super::map::{AddressMap, FileMaps, MAX_RUNS};
use super::scan::{Kind, references};
use super::{align, rewrite_file};
use crate::delta::apply::{ConcatBase, apply};
use crate::delta::encode::{Sinks, encode};
use crate::delta::pack::{object_in_memory, pack_in_memory};
use crate::delta::{BSDIFF_V2, DiffHeader};
use crate::id::Digest;

const TEXT_VA: u64 = 0x40_1000;
const TEXT_OFF: u64 = 0x1000;

/// Bytes of a filler instruction stream (`mov al, imm8` pairs) unique to `seed`, whose
/// immediates never start a pattern of the scan.
fn filler(seed: u64, pairs: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(2 * pairs);
    for _ in 0..pairs {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let mut b = (x >> 24) as u8;
        if matches!(b, 0x0F | 0x62 | 0xC4 | 0xC5 | 0xE8 | 0xE9) {
            b = 0x90;
        }
        out.extend_from_slice(&[0xB0, b]);
    }
    out
}

/// A program: functions (id, filler length) laid out in order. Function `id` calls
/// functions `(id + 1) % base` and `(id + 2) % base` (an added function, id ≥ 1000,
/// calls 1 and 2) and loads the address of its own word of a pointer table (one word
/// per function, by ascending id) with `lea rax, [rip + d]`.
struct Program {
    funcs: Vec<(u64, usize)>,
    /// Functions of the first release (ids 0..base).
    base: u64,
    /// Bytes of data before the pointer table (moves the table when it grows).
    data_pad: usize,
}

impl Program {
    fn layout(&self) -> Vec<u64> {
        let mut at = TEXT_VA;
        self.funcs
            .iter()
            .map(|&(_, n)| {
                let a = at;
                at += (2 * n + 5 + 5 + 7 + 1) as u64;
                a
            })
            .collect()
    }

    fn start_of(&self, id: u64) -> u64 {
        let k = self
            .funcs
            .iter()
            .position(|f| f.0 == id)
            .expect("a function");
        self.layout()[k]
    }

    fn ids(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.funcs.iter().map(|f| f.0).collect();
        ids.sort_unstable();
        ids
    }

    /// The ELF file: an `ET_EXEC` with a code segment and a data segment whose table
    /// holds a pointer to every function.
    fn build(&self) -> Vec<u8> {
        let text_len: u64 = self.funcs.iter().map(|&(_, n)| (2 * n + 18) as u64).sum();
        let data_off = (TEXT_OFF + text_len + 0xfff) & !0xfff;
        let data_va = 0x80_0000 + data_off;
        let table_va = data_va + self.data_pad as u64;
        let data_len = self.data_pad as u64 + 8 * self.funcs.len() as u64;
        let ids = self.ids();
        let mut text = Vec::new();
        for &(id, n) in &self.funcs {
            text.extend(filler(id, n));
            for j in [1, 2] {
                let callee = if id < 1000 {
                    (id + j) % self.base
                } else {
                    j % self.base
                };
                let end = TEXT_VA + text.len() as u64 + 5;
                text.push(0xE8);
                text.extend((self.start_of(callee).wrapping_sub(end) as u32).to_le_bytes());
            }
            let word = table_va + 8 * ids.binary_search(&id).expect("an id") as u64;
            let end = TEXT_VA + text.len() as u64 + 7;
            text.extend([0x48, 0x8D, 0x05]);
            text.extend((word.wrapping_sub(end) as u32).to_le_bytes());
            text.push(0xC3);
        }
        assert_eq!(text.len() as u64, text_len);
        let mut data = vec![0x11u8; self.data_pad];
        for &id in &ids {
            data.extend(self.start_of(id).to_le_bytes());
        }
        let shoff = data_off + data_len;
        let mut f = vec![0u8; (shoff + 3 * 64) as usize];
        f[..6].copy_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1]);
        let put16 = |f: &mut Vec<u8>, at: u64, v: u16| {
            f[at as usize..at as usize + 2].copy_from_slice(&v.to_le_bytes())
        };
        let put32 = |f: &mut Vec<u8>, at: u64, v: u32| {
            f[at as usize..at as usize + 4].copy_from_slice(&v.to_le_bytes())
        };
        let put64 = |f: &mut Vec<u8>, at: u64, v: u64| {
            f[at as usize..at as usize + 8].copy_from_slice(&v.to_le_bytes())
        };
        put16(&mut f, 16, 2);
        put16(&mut f, 18, 62);
        put64(&mut f, 32, 64);
        put64(&mut f, 40, shoff);
        put16(&mut f, 54, 56);
        put16(&mut f, 56, 2);
        put16(&mut f, 58, 64);
        put16(&mut f, 60, 3);
        for (i, (off, va, len, flags)) in [
            (TEXT_OFF, TEXT_VA, text_len, 5u32),
            (data_off, data_va, data_len, 6),
        ]
        .into_iter()
        .enumerate()
        {
            let h = 64 + 56 * i as u64;
            put32(&mut f, h, 1);
            put32(&mut f, h + 4, flags);
            put64(&mut f, h + 8, off);
            put64(&mut f, h + 16, va);
            put64(&mut f, h + 32, len);
            put64(&mut f, h + 40, len);
            let s = shoff + 64 * (i as u64 + 1);
            put32(&mut f, s + 4, 1);
            put64(&mut f, s + 8, if i == 0 { 6 } else { 3 });
            put64(&mut f, s + 16, va);
            put64(&mut f, s + 24, off);
            put64(&mut f, s + 32, len);
        }
        f[TEXT_OFF as usize..(TEXT_OFF + text_len) as usize].copy_from_slice(&text);
        f[data_off as usize..(data_off + data_len) as usize].copy_from_slice(&data);
        f
    }
}

fn program(sizes: &[usize]) -> Program {
    Program {
        funcs: sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| (i as u64, n))
            .collect(),
        base: sizes.len() as u64,
        data_pad: 64,
    }
}

/// The release after: a new function inserted at `at`, and the data grown in front.
fn next(p: &Program, at: usize, size: usize, pad: usize) -> Program {
    let mut funcs = p.funcs.clone();
    funcs.insert(at, (1000 + at as u64, size));
    Program {
        funcs,
        base: p.base,
        data_pad: p.data_pad + pad,
    }
}

fn diff_object(base: &[u8], target: &[u8]) -> Vec<u8> {
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
    let packed = pack_in_memory(&c, &d, &e).unwrap();
    let header = DiffHeader {
        algorithm: BSDIFF_V2,
        base_manifest: Digest::of(b""),
        base_size: base.len() as u64,
        target_size: target.len() as u64,
        target_chunks: 0,
        layout: packed.layout,
        streams: packed.streams.iter().map(|(h, _)| *h).collect(),
    };
    object_in_memory(&header, &packed)
}

fn apply_object(base: &[u8], object: &[u8]) -> Vec<u8> {
    let (header, start) = DiffHeader::decode_prefix(object, object.len() as u64).unwrap();
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
    .unwrap();
    out
}

/// The map of `old` towards `new`, through its stream, as an agent gets it.
fn map_through_stream(old: &[u8], new: &[u8]) -> AddressMap {
    let (map, _) = align::build_map(
        old,
        &Elf::parse(old).unwrap(),
        new,
        &Elf::parse(new).unwrap(),
    );
    let raw = FileMaps {
        files: vec![(0, map)],
    }
    .encode();
    FileMaps::decode(&raw, 1).unwrap().files.remove(0).1
}

#[test]
fn the_scan_finds_calls_rip_operands_and_pointers_of_a_built_program() {
    let p = program(&[40, 50, 60, 70]);
    let bytes = p.build();
    let elf = Elf::parse(&bytes).unwrap();
    assert_eq!(elf.code.len(), 1);
    assert_eq!(elf.data.len(), 1);
    let refs = references(&elf, &bytes);
    let starts = p.layout();
    let rel: Vec<_> = refs.iter().filter(|r| r.kind == Kind::Rel32).collect();
    let abs: Vec<_> = refs.iter().filter(|r| r.kind == Kind::Abs64).collect();
    assert_eq!(
        rel.len(),
        3 * 4,
        "two calls and one lea per function: {rel:?}"
    );
    assert_eq!(rel[0].target, starts[1]);
    assert_eq!(rel[1].target, starts[2]);
    assert_eq!(
        rel[2].target,
        elf.data[0].vaddr + 64,
        "lea of function 0's table word"
    );
    assert_eq!(abs.len(), 4);
    assert_eq!(abs.iter().map(|r| r.target).collect::<Vec<_>>(), starts);
}

#[test]
fn files_that_are_not_x86_64_elf_are_not_parsed() {
    let good = program(&[40, 50]).build();
    assert!(Elf::parse(&good).is_some());
    assert!(Elf::parse(&good[..63]).is_none(), "truncated header");
    let mut other = good.clone();
    other[18] = 183; // aarch64
    assert!(Elf::parse(&other).is_none());
    let mut big_endian = good.clone();
    big_endian[5] = 2;
    assert!(Elf::parse(&big_endian).is_none());
    let mut phdrs_outside = good.clone();
    phdrs_outside[32..40].copy_from_slice(&(good.len() as u64 - 8).to_le_bytes());
    assert!(Elf::parse(&phdrs_outside).is_none());
    // Section headers outside the file: the executable segments are the code.
    let mut no_sections = good.clone();
    no_sections[40..48].copy_from_slice(&u64::MAX.to_le_bytes());
    let elf = Elf::parse(&no_sections).unwrap();
    assert_eq!(elf.code.len(), 1);
    assert!(elf.data.is_empty());
    assert_eq!(rewrite_file(b"not an elf", &AddressMap::default()), None);
}

#[test]
fn moved_code_matches_exactly_once_the_base_is_rewritten() {
    let old_p = program(&[40, 50, 60, 70, 80, 90]);
    let new_p = next(&old_p, 2, 33, 24);
    let (old, new) = (old_p.build(), new_p.build());
    let map = map_through_stream(&old, &new);
    assert!(!map.is_empty());
    let rewritten = rewrite_file(&old, &map).unwrap();
    // Functions after the insertion moved by one function; once rewritten, each is
    // byte for byte the new one (calls, lea and all).
    let (old_starts, new_starts) = (old_p.layout(), new_p.layout());
    for (k, &old_start) in old_starts.iter().enumerate() {
        let nk = if k < 2 { k } else { k + 1 };
        let len = 2 * old_p.funcs[k].1 + 18;
        let o = (TEXT_OFF + old_start - TEXT_VA) as usize;
        let n = (TEXT_OFF + new_starts[nk] - TEXT_VA) as usize;
        assert_eq!(rewritten[o..o + len], new[n..n + len], "function {k}");
        if k >= 2 {
            assert_ne!(
                old[o..o + len],
                new[n..n + len],
                "function {k} had changed bytes"
            );
        }
    }
    let plain = diff_object(&old, &new);
    let aware = diff_object(&rewritten, &new);
    assert_eq!(apply_object(&rewritten, &aware), new);
    assert!(
        aware.len() < plain.len(),
        "reference-aware {} B against plain {} B",
        aware.len(),
        plain.len()
    );
}

/// Above 1 MiB the publisher's alignment indexes the base every few bytes only; the
/// map must still bring every moved function back to the new bytes exactly.
#[test]
fn a_large_file_aligns_through_the_sampled_index() {
    // Ids below 1000 (those of added functions start there).
    let sizes: Vec<usize> = (0..900).map(|i| 500 + (i * 37) % 400).collect();
    let old_p = program(&sizes);
    let new_p = next(&next(&old_p, 10, 33, 24), 600, 61, 8);
    let (old, new) = (old_p.build(), new_p.build());
    assert!(old.len() > 1 << 20, "{} B", old.len());
    let map = map_through_stream(&old, &new);
    let rewritten = rewrite_file(&old, &map).unwrap();
    let (old_starts, new_starts) = (old_p.layout(), new_p.layout());
    let mut moved = 0;
    for (k, &(id, n)) in old_p.funcs.iter().enumerate() {
        let nk = new_p.funcs.iter().position(|f| f.0 == id).unwrap();
        let len = 2 * n + 18;
        let o = (TEXT_OFF + old_starts[k] - TEXT_VA) as usize;
        let p = (TEXT_OFF + new_starts[nk] - TEXT_VA) as usize;
        assert_eq!(rewritten[o..o + len], new[p..p + len], "function {k}");
        moved += usize::from(old[o..o + len] != new[p..p + len]);
    }
    assert!(moved > 800, "{moved} functions changed bytes");
}

#[test]
fn map_streams_round_trip_and_hostile_ones_are_refused() {
    let maps = FileMaps {
        files: vec![
            (
                2,
                AddressMap::from_runs(&[(0x1000, 16), (0x2000, -8), (u64::MAX, 0)]).unwrap(),
            ),
            (
                5,
                AddressMap::from_runs(&[(0, i64::MIN), (1, i64::MAX)]).unwrap(),
            ),
        ],
    };
    let raw = maps.encode();
    assert_eq!(FileMaps::decode(&raw, 6).unwrap(), maps);
    assert!(
        FileMaps::decode(&raw, 5).is_err(),
        "index past the base's files"
    );
    assert!(
        FileMaps::decode(&raw[..raw.len() - 1], 6).is_err(),
        "truncated"
    );
    let mut trailing = raw.clone();
    trailing.push(0);
    assert!(FileMaps::decode(&trailing, 6).is_err(), "trailing bytes");
    // A run after one at 2^64 − 1.
    let mut past = Vec::new();
    for v in [1u64, 0, 2] {
        crate::delta::streams::put_varint(&mut past, v);
    }
    for v in [u64::MAX, 0, 0, 0] {
        crate::delta::streams::put_varint(&mut past, v);
    }
    assert!(FileMaps::decode(&past, 1).is_err());
    // More runs than an agent holds.
    let mut many = Vec::new();
    for v in [1u64, 0, MAX_RUNS + 1] {
        crate::delta::streams::put_varint(&mut many, v);
    }
    assert!(FileMaps::decode(&many, 1).is_err());
    assert_eq!(AddressMap::from_runs(&[(5, 1), (5, 2)]), None);
    let m = AddressMap::from_runs(&[(10, 5), (20, -3)]).unwrap();
    assert_eq!(
        (m.map(9), m.map(10), m.map(19), m.map(20), m.map(u64::MAX)),
        (9, 15, 24, 17, u64::MAX - 3)
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Whatever the programs and the insertion, the diff made against the rewritten
    /// base applies, over a base rewritten from the decoded map stream, to the new file.
    #[test]
    fn apply_over_the_rewritten_base_round_trips(
        sizes in proptest::collection::vec(16usize..120, 2..12),
        at in 0usize..12,
        size in 16usize..100,
        pad in 0usize..64,
    ) {
        let old_p = program(&sizes);
        let new_p = next(&old_p, at.min(sizes.len()), size, pad);
        let (old, new) = (old_p.build(), new_p.build());
        let publisher = map_through_stream(&old, &new);
        let object = diff_object(&rewrite_file(&old, &publisher).unwrap(), &new);
        // The agent's side: the map from its stream, the base rewritten from it.
        let agent = FileMaps::decode(&FileMaps { files: vec![(0, publisher)] }.encode(), 1).unwrap();
        let base = rewrite_file(&old, &agent.files[0].1).unwrap();
        prop_assert_eq!(apply_object(&base, &object), new);
    }

    #[test]
    fn any_map_stream_decodes_or_is_refused(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        if let Ok(maps) = FileMaps::decode(&bytes, 4) {
            prop_assert_eq!(FileMaps::decode(&maps.encode(), 4).unwrap(), maps);
        }
    }

    #[test]
    fn any_file_scans_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..600), patch in any::<u64>()) {
        let mut f = program(&[20, 30]).build();
        // Random bytes over the headers and tables.
        let at = (patch as usize) % f.len().saturating_sub(bytes.len()).max(1);
        let end = (at + bytes.len()).min(f.len());
        f[at..end].copy_from_slice(&bytes[..end - at]);
        if let Some(elf) = Elf::parse(&f) {
            let map = AddressMap::from_runs(&[(0, 7)]).unwrap();
            let _ = references(&elf, &f);
            prop_assert_eq!(rewrite_file(&f, &map).map(|r| r.len()), Some(f.len()));
        }
    }
}

/// An algorithm-3 object: the data streams of the diff against the rewritten base, and
/// the map stream last.
fn x86_object(old: &[u8], new: &[u8]) -> Vec<u8> {
    use crate::delta::pack::pack_map;
    let map = map_through_stream(old, new);
    let raw = FileMaps {
        files: vec![(0, map.clone())],
    }
    .encode();
    let rewritten = rewrite_file(old, &map).unwrap();
    let (c, d, e, _) = encode(
        &rewritten,
        new,
        Sinks {
            control: Vec::new(),
            diff: Vec::new(),
            extra: Vec::new(),
        },
    )
    .unwrap();
    let packed = pack_in_memory(&c, &d, &e).unwrap();
    let (mh, mbytes) = pack_map(&raw.as_slice(), &|| Ok(Vec::new())).unwrap();
    let mut streams: Vec<_> = packed.streams.iter().map(|(h, _)| *h).collect();
    streams.push(mh);
    let header = DiffHeader {
        algorithm: crate::delta::BSDIFF_X86,
        base_manifest: Digest::of(b""),
        base_size: old.len() as u64,
        target_size: new.len() as u64,
        target_chunks: 1,
        layout: packed.layout,
        streams,
    };
    let mut object = object_in_memory(&header, &packed);
    object.extend_from_slice(&mbytes);
    object
}

/// Re-encodes `object`'s header through `edit`, keeping the streams.
fn with_header(object: &[u8], edit: impl FnOnce(&mut DiffHeader)) -> Vec<u8> {
    let (mut h, start) = DiffHeader::decode_prefix(object, object.len() as u64).unwrap();
    edit(&mut h);
    let mut out = h.encode_prefix();
    out.extend_from_slice(&object[start as usize..]);
    out
}

#[test]
fn algorithm_3_headers_are_checked_before_any_stream_is_read() {
    use crate::error::FormatError;
    let old = program(&[40, 50, 60, 70]).build();
    let new = next(&program(&[40, 50, 60, 70]), 1, 30, 8).build();
    let object = x86_object(&old, &new);
    let parse = |o: &[u8]| DiffHeader::decode_prefix(o, o.len() as u64).map(|(h, _)| h);
    let h = parse(&object).unwrap();
    assert_eq!(h.map_stream(), h.streams.last());
    assert_eq!(h.data_streams().len(), h.layout.stream_count());
    // The agent's side: the map stream read back, the base rewritten, the diff applied.
    let (_, start) = DiffHeader::decode_prefix(&object, object.len() as u64).unwrap();
    let ranges = h.stream_ranges(start);
    let (mo, ml) = *ranges.last().unwrap();
    let maps = super::read_maps(
        h.map_stream().unwrap(),
        &object[mo as usize..(mo + ml) as usize],
        1,
    )
    .unwrap();
    let base = rewrite_file(&old, &maps.files[0].1).unwrap();
    let streams: Vec<&[u8]> = ranges[..h.data_streams().len()]
        .iter()
        .map(|&(o, l)| &object[o as usize..(o + l) as usize])
        .collect();
    let mut out = Vec::new();
    apply(&h, &ConcatBase::new(vec![&base]), streams, &mut |b| {
        out.extend_from_slice(b);
        Ok(())
    })
    .unwrap();
    assert_eq!(out, new);
    // A map stream for a base of no files is refused by its reader.
    assert!(
        super::read_maps(
            h.map_stream().unwrap(),
            &object[mo as usize..(mo + ml) as usize],
            0
        )
        .is_err()
    );

    // Without the map stream, the stream count is wrong for algorithm 3 (and the
    // sizes no longer add up for algorithm 2 either).
    let dropped = with_header(&object, |h| {
        h.streams.pop();
    });
    assert!(matches!(
        parse(&dropped),
        Err(FormatError::Malformed { .. })
    ));
    let as_two = with_header(&object, |h| h.algorithm = crate::delta::BSDIFF_V2);
    assert!(matches!(parse(&as_two), Err(FormatError::Malformed { .. })));
    let unknown = with_header(&object, |h| h.algorithm = 4);
    assert!(matches!(
        parse(&unknown),
        Err(FormatError::UnknownAlgorithm { found: 4, .. })
    ));
    let huge_map = with_header(&object, |h| {
        if let Some(m) = h.streams.last_mut() {
            m.raw_len = crate::delta::MAX_MAP_RAW + 1;
        }
    });
    assert!(matches!(
        parse(&huge_map),
        Err(FormatError::TooLarge { .. })
    ));
}

/// xorshift64: the hostile files below are reproducible from their seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A file of four 64 KiB blocks and a bit whose tables cross block boundaries and
/// overlap: code of calls, jumps and RIP-relative operands over the first two
/// boundaries, a data range over the next (its addresses not 8-aligned with its
/// offsets), two overlapping relocation tables whose relative entries point at words
/// crossing boundaries and at each other, a symbol table over the last boundary and a
/// Go function table whose records overlap; `ET_EXEC` for odd seeds.
fn hostile_elf(seed: u64) -> Vec<u8> {
    const B: u64 = 0x1_0000;
    const VA: u64 = 0x40_0000;
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let len = 4 * B + 1234;
    let mut f: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
    let put = |f: &mut Vec<u8>, at: u64, v: &[u8]| {
        f[at as usize..at as usize + v.len()].copy_from_slice(v)
    };
    let half = 2 * B - 0x200;
    // Addresses: segment 0 at VA + offset, segment 1 three bytes further.
    let va_of = |off: u64| if off < half { VA + off } else { VA + off + 3 };
    let off_of = |va: u64| if va < VA + half { va - VA } else { va - VA - 3 };
    let loaded = |rng: &mut Rng| va_of(rng.below(len));
    put(&mut f, 0, &[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    put(
        &mut f,
        16,
        &(if seed & 1 == 1 { 2u16 } else { 3 }).to_le_bytes(),
    );
    put(&mut f, 18, &62u16.to_le_bytes());
    put(&mut f, 32, &64u64.to_le_bytes());
    put(&mut f, 40, &0x200u64.to_le_bytes());
    put(&mut f, 54, &56u16.to_le_bytes());
    put(&mut f, 56, &2u16.to_le_bytes());
    put(&mut f, 58, &64u16.to_le_bytes());
    put(&mut f, 60, &7u16.to_le_bytes());
    for (i, (off, size, flags, extra)) in [(0, half, 5u32, 0u64), (half, len - half, 6, 0x1000)]
        .into_iter()
        .enumerate()
    {
        let h = 64 + 56 * i as u64;
        put(&mut f, h, &1u32.to_le_bytes());
        put(&mut f, h + 4, &flags.to_le_bytes());
        put(&mut f, h + 8, &off.to_le_bytes());
        put(&mut f, h + 16, &va_of(off).to_le_bytes());
        put(&mut f, h + 32, &size.to_le_bytes());
        put(&mut f, h + 40, &(size + extra).to_le_bytes());
    }
    // Sections (type, flags, offset, size, entsize); section 0 is left random.
    let code: (u64, u64) = (0x400, 0x1_8000);
    let go: (u64, u64) = (0x3_0800, 0x2000);
    let sections = [
        (1u32, 6u64, code.0, code.1, 0u64),
        (1, 2, 2 * B - 0x100, 0x300, 0),
        (4, 2, 3 * B - 0x100, 24 * 40, 24),
        (4, 2, 3 * B - 0x100 + 12, 24 * 20, 24),
        (2, 0, 4 * B - 0x40, 24 * 10, 24),
        (1, 2, go.0, go.1, 0),
    ];
    for (i, &(t, flags, off, size, entsize)) in sections.iter().enumerate() {
        let h = 0x200 + 64 * (i as u64 + 1);
        put(&mut f, h + 4, &t.to_le_bytes());
        put(&mut f, h + 8, &flags.to_le_bytes());
        put(&mut f, h + 16, &va_of(off).to_le_bytes());
        put(&mut f, h + 24, &off.to_le_bytes());
        put(&mut f, h + 32, &size.to_le_bytes());
        put(&mut f, h + 56, &entsize.to_le_bytes());
    }
    // Code: instructions with a field, random bytes between them.
    let mut at = code.0;
    while at + 16 < code.0 + code.1 {
        let rel = |rng: &mut Rng, field: u64| {
            let target = loaded(rng);
            (target.wrapping_sub(va_of(field) + 4) as u32).to_le_bytes()
        };
        let (op, n): (&[u8], u64) = match rng.below(6) {
            0 => (&[0xE8], 1),
            1 => (&[0x0F, 0x84], 2),
            2 => (&[0x48, 0x8D, 0x05], 3),
            3 => (&[0xC5, 0xF9, 0x6F, 0x05], 4),
            4 => (&[0x62, 0xF1, 0x7C, 0x48, 0x28, 0x05], 6),
            _ => (&[], 0),
        };
        put(&mut f, at, op);
        let field = rel(&mut rng, at + n);
        put(&mut f, at + n, &field);
        at += n + 4 + rng.below(6);
    }
    // Relocations: relative ones at words near the boundaries, most holding their addend.
    for e in 0..40 {
        let entry = 3 * B - 0x100 + 24 * e;
        let word = [B, 2 * B, 3 * B][rng.below(3) as usize] - 12 + rng.below(16);
        let addend = loaded(&mut rng);
        let info = [8u64, 37, 1][rng.below(3) as usize];
        put(&mut f, entry, &va_of(word).to_le_bytes());
        put(&mut f, entry + 8, &info.to_le_bytes());
        put(&mut f, entry + 16, &addend.to_le_bytes());
        if rng.below(4) != 0 {
            put(&mut f, off_of(va_of(word)), &addend.to_le_bytes());
        }
    }
    // Pointers in the data range, at its 8-aligned addresses (offsets 5 mod 8).
    let data = 2 * B - 0x100;
    let mut w = data + (va_of(data).wrapping_neg() & 7);
    while w + 8 <= data + 0x300 {
        if rng.below(2) == 0 {
            put(&mut f, w, &loaded(&mut rng).to_le_bytes());
        }
        w += 8;
    }
    for e in 0..10 {
        let entry = 4 * B - 0x40 + 24 * e;
        put(&mut f, entry + 4, &[0, 0, 1, 0]);
        put(&mut f, entry + 8, &loaded(&mut rng).to_le_bytes());
    }
    // A Go function table of 30 functions whose records overlap.
    put(&mut f, go.0, &[0xF1, 0xFF, 0xFF, 0xFF, 0, 0, 1, 8]);
    put(&mut f, go.0 + 8, &30u64.to_le_bytes());
    put(&mut f, go.0 + 24, &va_of(code.0).to_le_bytes());
    put(&mut f, go.0 + 64, &0x100u64.to_le_bytes());
    for i in 0..31 {
        let e = go.0 + 0x100 + 8 * i;
        put(&mut f, e, &(rng.below(code.1) as u32).to_le_bytes());
        put(
            &mut f,
            e + 4,
            &(0x200 + 2 * rng.below(64) as u32).to_le_bytes(),
        );
    }
    for i in 0..64 {
        put(
            &mut f,
            go.0 + 0x300 + 2 * i,
            &(rng.below(code.1) as u16).to_le_bytes(),
        );
    }
    f
}

/// Rewriting block by block, or any range, gives the bytes of the whole-file rewrite
/// (FORMAT.md §3.6.1) on files whose fields cross blocks and overlap, with maps of many
/// runs; and the scan finds references of every pass there.
#[test]
fn block_and_range_rewrites_are_the_whole_file_rewrite() {
    use super::rewrite::{BlockRewriter, rewrite_blocks};
    use super::scan::Pass;
    for seed in 0..12 {
        let f = hostile_elf(seed);
        let elf = Elf::parse(&f).expect("an ELF file");
        let refs = references(&elf, &f);
        for pass in [
            Pass::Code,
            Pass::Relocations,
            Pass::Symbols,
            Pass::GoFunctions,
        ] {
            assert!(refs.iter().any(|r| r.pass == pass), "{pass:?}, seed {seed}");
        }
        if seed & 1 == 1 {
            assert!(refs.iter().any(|r| r.pass == Pass::Data), "seed {seed}");
        }
        let mut rng = Rng(seed + 7);
        let mut runs = Vec::new();
        let mut start = 0x40_0000 + rng.below(0x100);
        for _ in 0..300 {
            runs.push((start, rng.below(0x4000) as i64 - 0x2000));
            start += 1 + rng.below(0x1000);
        }
        let map = AddressMap::from_runs(&runs).unwrap();
        let whole = rewrite_file(&f, &map).unwrap();
        assert_ne!(whole, f);
        let rw = BlockRewriter::new(&f, &map).unwrap();
        // Ranges first, with no resume point known, then blocks, then ranges again.
        let check_ranges = |rng: &mut Rng| {
            for _ in 0..200 {
                let s = rng.below(f.len() as u64);
                let n = 1 + rng.below((f.len() as u64 - s).min(70_000));
                let mut out = vec![0u8; n as usize];
                rw.rewrite_range(s, &mut out);
                assert!(
                    out == whole[s as usize..(s + n) as usize],
                    "range {s}+{n}, seed {seed}"
                );
            }
        };
        check_ranges(&mut rng);
        let mut blocks = vec![0u8; f.len()];
        rewrite_blocks(&rw, &mut blocks);
        assert!(blocks == whole, "block by block, seed {seed}");
        check_ranges(&mut rng);
    }
}

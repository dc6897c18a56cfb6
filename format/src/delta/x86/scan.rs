//! The reference scan of FORMAT.md §3.6.1: where an x86-64 ELF file holds addresses
//! that move when code and data move. It is a fixed, byte-exact procedure rather than
//! a disassembly: publisher and agent must find exactly the same references, and a
//! reference missed or invented costs only diff bytes (every produced chunk is still
//! checked against its id).
//!
//! Five passes, in this order, each emitting references in file order:
//!
//! 1. **Code** (each code range, in pieces cut at the file offsets that are multiples
//!    of [`PIECE`], 64 KiB, each scanned as a range of its own so that any block of
//!    the file can be rewritten alone): a linear scan. At position `i`, the first rule that
//!    matches emits a reference and moves `i` past its 4-byte field, else `i += 1`:
//!    `E8`/`E9 rel32` and `0F 80..8F rel32` whose target is in an executable segment;
//!    then RIP-relative operands (ModRM with `mod = 00, rm = 101`, that is
//!    `modrm & 0xC7 = 0x05`) after a one-byte opcode of [`ONE_BYTE`], a `0F` opcode of
//!    [`TWO_BYTE`], or a VEX (`C5 xx op`, `C4 xx xx op`) or EVEX (`62 xx xx xx op`)
//!    prefix, whose target is in any loaded segment. A field at `f` (address `a`)
//!    holding `d` targets `a + 4 + d` (for an instruction with an immediate after the
//!    displacement that is a few bytes before the real target: the same on both sides,
//!    so it does not matter). Its anchor is `a + 4`.
//! 2. **Data** (`ET_EXEC` files only, whose pointers are not relocated): every 8-byte
//!    word of a data range at an address that is a multiple of 8 whose value lies in a
//!    loaded segment.
//! 3. **Relocations** (each 24-byte entry `r_offset, r_info, r_addend`): `r_offset`
//!    if loaded; for `R_X86_64_RELATIVE` (8) and `R_X86_64_IRELATIVE` (37) also
//!    `r_addend` if loaded; then, in a second sweep of the table, the 8 bytes at
//!    `r_offset` (in a segment's file image) of those relocations when they equal
//!    `r_addend`.
//! 4. **Symbols** (each 24-byte entry): `st_value` when `st_shndx` is neither 0 nor
//!    ≥ 0xFF00, the type is not `STT_TLS` (6), and the value is loaded.
//! 5. **Go function tables** (Go 1.18 and later): a data range starting with the
//!    `pclntab` header `F0`/`F1 FF FF FF 00 00 01 08` holds, at `pclnOffset` (u64 at
//!    64), `nfunc + 1` (u64 at 8) entries `(entryoff u32, funcoff u32)`, stopping at
//!    the range's end; each `entryoff`, and then (second sweep)
//!    the first u32 (`entryOff`) of the function record `funcoff` names, is a 4-byte
//!    field anchored at `textStart` (u64 at 24) when it lies in the range and its
//!    target is executable.
//!
//! A 4-byte field ([`Kind::Rel32`]) holds `target − anchor`; an 8-byte field
//! ([`Kind::Abs64`]) holds `target`.

use super::elf::{ET_EXEC, Elf, Range, u64_at};

/// One-byte opcodes whose ModRM may name a RIP-relative operand: the ALU forms
/// (`01 03 09 0B 21 23 29 2B 31 33 38 39 3A 3B`), `movsxd` (`63`), `imul` (`69 6B`),
/// the immediate groups (`80 81 83`), `test`/`xchg`/`mov`/`lea` (`84 85 87 88 89 8A
/// 8B 8D`), `mov` immediate (`C6 C7`), the unary groups (`F6 F7`) and `FF`
/// (`call`/`jmp`/`push` through memory).
pub const ONE_BYTE: [u8; 33] = [
    0x01, 0x03, 0x09, 0x0B, 0x21, 0x23, 0x29, 0x2B, 0x31, 0x33, 0x38, 0x39, 0x3A, 0x3B, 0x63, 0x69,
    0x6B, 0x80, 0x81, 0x83, 0x84, 0x85, 0x87, 0x88, 0x89, 0x8A, 0x8B, 0x8D, 0xC6, 0xC7, 0xF6, 0xF7,
    0xFF,
];

/// Second bytes of `0F` opcodes whose ModRM may name a RIP-relative operand: SSE moves
/// and arithmetic (`10 11 12 13 16 17 28 29 2A 2C 2D 2E 2F 51 54 55 57 58 59 5A 5C 5E
/// 6F 7E 7F D6 DB EF`), `cmovcc` (`40..4F`), `imul` (`AF`), `movzx`/`movsx`
/// (`B6 B7 BE BF`) and `prefetch` (`18`).
pub const TWO_BYTE: [u8; 50] = [
    0x10, 0x11, 0x12, 0x13, 0x16, 0x17, 0x18, 0x28, 0x29, 0x2A, 0x2C, 0x2D, 0x2E, 0x2F, 0x40, 0x41,
    0x42, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49, 0x4A, 0x4B, 0x4C, 0x4D, 0x4E, 0x4F, 0x51, 0x54,
    0x55, 0x57, 0x58, 0x59, 0x5A, 0x5C, 0x5E, 0x6F, 0x7E, 0x7F, 0xAF, 0xB6, 0xB7, 0xBE, 0xBF, 0xD6,
    0xDB, 0xEF,
];

/// 256-entry membership tables of [`ONE_BYTE`] and [`TWO_BYTE`].
const fn table(ops: &[u8]) -> [bool; 256] {
    let mut t = [false; 256];
    let mut i = 0;
    while i < ops.len() {
        t[ops[i] as usize] = true;
        i += 1;
    }
    t
}
const ONE: [bool; 256] = table(&ONE_BYTE);
const TWO: [bool; 256] = table(&TWO_BYTE);

/// What kind of field a reference is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// 4 bytes: the target minus the reference's anchor (for an instruction operand,
    /// the end of the field), modulo 2^32.
    Rel32,
    /// 8 bytes, an address.
    Abs64,
}

impl Kind {
    pub fn width(self) -> u64 {
        match self {
            Kind::Rel32 => 4,
            Kind::Abs64 => 8,
        }
    }
}

/// Which pass found a reference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    Code,
    Data,
    Relocations,
    Symbols,
    GoFunctions,
}

impl Pass {
    /// Whether references of this pass are evidence for the publisher's alignment
    /// ([`super::align`]): masked relocation and Go function tables look alike
    /// entry after entry, so they match at the wrong place.
    pub fn votes(self) -> bool {
        matches!(self, Pass::Code | Pass::Data | Pass::Symbols)
    }
}

/// One reference: a field at file offset `at` naming address `target`; a
/// [`Kind::Rel32`] field holds `target − anchor`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ref {
    pub at: u64,
    pub anchor: u64,
    pub target: u64,
    pub kind: Kind,
    pub pass: Pass,
}

/// Code ranges are scanned in pieces cut at the file offsets that are multiples of
/// this (FORMAT.md §3.6.1): a piece's references lie inside it and depend on its bytes
/// alone, so an agent rewrites any 64 KiB block of a file on its own, in any order and
/// on any core.
pub const PIECE: u64 = 1 << 16;

/// Where targets may point: the `PT_LOAD` segments' memory images as `(vaddr, memsz)`,
/// all of them and the executable ones.
#[derive(Clone, Debug)]
pub(crate) struct Targets {
    loaded: Vec<(u64, u64)>,
    exec: Vec<(u64, u64)>,
    /// The most significant byte `h` of any displacement the code pass can emit
    /// satisfies `h + near <= 2 × near − 1` (as bytes): see [`Targets::near`].
    near: u8,
}

impl Targets {
    pub(crate) fn of(elf: &Elf) -> Targets {
        let img = |s: &super::elf::Segment| (s.vaddr, s.memsz);
        let code: Vec<(u64, u64)> = elf.code.iter().map(|r| (r.vaddr, r.size)).collect();
        Targets::new(
            elf.segments.iter().map(img).collect(),
            elf.segments.iter().filter(|s| s.exec).map(img).collect(),
            &code,
        )
    }

    /// Targets in `loaded` (and `exec`) images `(vaddr, size)`, for a scan of code at
    /// the addresses of `code`.
    fn new(loaded: Vec<(u64, u64)>, exec: Vec<(u64, u64)>, code: &[(u64, u64)]) -> Targets {
        let near = Self::near(loaded.iter().chain(code).copied());
        Targets { loaded, exec, near }
    }

    /// A field of the code pass names a loaded target from an anchor in a code range,
    /// so its displacement `d` is the distance between two addresses of
    /// `[lo, hi)`, the hull of the loaded segments and the code ranges (plus the
    /// 4 bytes an anchor may pass a range's end). With `hi − lo < 2^(24+s)`,
    /// `d >> 24` lies in `[−2^s, 2^s)`: its top byte plus `2^s` is below `2^(s+1)`.
    /// Returns `2^s` (128 when the hull is 2^30 or wider: every byte passes). A
    /// filter of candidates only, so the scan's result does not depend on it.
    fn near(spans: impl Iterator<Item = (u64, u64)>) -> u8 {
        let (mut lo, mut hi) = (u128::MAX, 0u128);
        for (v, n) in spans {
            lo = lo.min(u128::from(v));
            hi = hi.max(u128::from(v) + u128::from(n) + 4);
        }
        let width = hi.saturating_sub(lo);
        (0..7u32)
            .find(|&s| width < 1u128 << (24 + s))
            .map_or(128, |s| 1u8 << s)
    }

    #[inline]
    pub(crate) fn loaded(&self, va: u64) -> bool {
        self.loaded
            .iter()
            .any(|&(v, n)| va.wrapping_sub(v) < n && va >= v)
    }

    #[inline]
    pub(crate) fn executable(&self, va: u64) -> bool {
        self.exec
            .iter()
            .any(|&(v, n)| va.wrapping_sub(v) < n && va >= v)
    }
}

/// What a code byte may start: nothing, a branch (`E8`/`E9`), a `0F` opcode, or a
/// ModRM byte this many bytes further ([`ONE_BYTE`] 1, `C5` 3, `C4` 4, `62` 5).
const NONE: u8 = 0;
const BRANCH: u8 = 8;
const ESCAPE: u8 = 9;
const fn classes() -> [u8; 256] {
    let mut t = [NONE; 256];
    let mut i = 0;
    while i < 256 {
        if ONE[i] {
            t[i] = 1;
        }
        i += 1;
    }
    t[0xC5] = 3;
    t[0xC4] = 4;
    t[0x62] = 5;
    t[0xE8] = BRANCH;
    t[0xE9] = BRANCH;
    t[0x0F] = ESCAPE;
    t
}
const CLASS: [u8; 256] = classes();

/// Where a scan of a piece may resume: every multiple of this offset in a piece gets
/// the last position at or before it the scan visited (the `sync` list of the private piece scan).
pub const SYNC: usize = 256;

/// A reference a rule found at a position: (field offset, anchor, target, next position).
type Hit = Option<(usize, u64, u64, usize)>;

/// Scans one piece of code (pass 1): `code` is the piece, whose first byte is at
/// address `va`. The scan runs from position `from` (0, or a position the scan from 0
/// visits: it then continues exactly as from 0) until it reaches `to`, handing `emit`
/// each field's offset in `code`, its anchor and target. For each position `b` after
/// `from` that it passes where `b + phase` is a multiple of [`SYNC`], `sync(b, i)`
/// gets the last position `i ≤ b` it visited: a later scan of the same piece may start
/// there.
#[inline]
pub(crate) fn scan_piece(
    t: &Targets,
    code: &[u8],
    va: u64,
    (from, to, phase): (usize, usize, usize),
    emit: &mut impl FnMut(usize, u64, u64),
    sync: &mut impl FnMut(usize, usize),
) {
    let n = code.len();
    // (anchor, target) of the field at f, read from w at k.
    let field = |w: &[u8], f: usize, k: usize| -> (u64, u64) {
        let anchor = va.wrapping_add(f as u64).wrapping_add(4);
        let d = i32::from_le_bytes([w[k], w[k + 1], w[k + 2], w[k + 3]]);
        (anchor, anchor.wrapping_add_signed(i64::from(d)))
    };
    // Every byte a rule may look at (at most i + 9) lies in the piece, so the checks
    // "inside the range" all hold and one bounds check covers them.
    let fast = |i: usize| -> Hit {
        let w: &[u8; 16] = code[i..i + 16].try_into().expect("16 bytes");
        match CLASS[usize::from(w[0])] {
            NONE => None,
            BRANCH => {
                let (anchor, target) = field(w, i + 1, 1);
                t.executable(target)
                    .then_some((i + 1, anchor, target, i + 5))
            }
            ESCAPE => {
                if w[1] & 0xF0 == 0x80 {
                    let (anchor, target) = field(w, i + 2, 2);
                    t.executable(target)
                        .then_some((i + 2, anchor, target, i + 6))
                } else if TWO[usize::from(w[1])] && w[2] & 0xC7 == 0x05 {
                    let (anchor, target) = field(w, i + 3, 3);
                    t.loaded(target).then_some((i + 3, anchor, target, i + 7))
                } else {
                    None
                }
            }
            k => {
                let m = usize::from(k);
                if w[m] & 0xC7 == 0x05 {
                    let (anchor, target) = field(w, i + m + 1, m + 1);
                    t.loaded(target)
                        .then_some((i + m + 1, anchor, target, i + m + 5))
                } else {
                    None
                }
            }
        }
    };
    let to = to.min(n);
    let (mut i, mut prev) = (from, from);
    let phase = phase % SYNC;
    let mut boundary = ((from + phase) / SYNC + 1) * SYNC - phase;
    // Positions [chunk, chunk + LANES) where a rule may match, as bits: every other
    // position is visited and left (i += 1) without looking at it.
    let (mut chunk, mut mask) = (usize::MAX, 0u64);
    while i < to {
        while i >= boundary {
            sync(boundary, if i == boundary { i } else { prev });
            boundary += SYNC;
        }
        if i + LANES + 16 <= n {
            if i < chunk || i - chunk >= LANES {
                chunk = i;
                mask = candidates(
                    code[i..i + LANES + CANDIDATE_TAIL]
                        .try_into()
                        .expect("74 bytes"),
                    t.near,
                );
            }
            let m = mask >> (i - chunk);
            let next = if m == 0 {
                chunk + LANES
            } else {
                i + m.trailing_zeros() as usize
            };
            if next > i {
                // Every position from i to next is visited, and left.
                let next = next.min(to);
                while next >= boundary {
                    sync(boundary, boundary);
                    boundary += SYNC;
                }
                i = next;
                continue;
            }
        }
        prev = i;
        let hit = if i + 16 <= n {
            fast(i)
        } else {
            rule_at(t, code, va, i)
        };
        match hit {
            Some((f, anchor, target, next)) => {
                emit(f, anchor, target);
                i = next;
            }
            None => i += 1,
        }
    }
}

/// The rules of the code pass at position `i` of `code` (whose first byte is at
/// `va`), each checking that what it reads lies in `code`: the scan's last bytes,
/// and the reference the vectorised scan must agree with.
fn rule_at(t: &Targets, code: &[u8], va: u64, i: usize) -> Hit {
    let n = code.len();
    let field = |f: usize| -> (u64, u64) {
        let anchor = va.wrapping_add(f as u64).wrapping_add(4);
        let d = i32::from_le_bytes([code[f], code[f + 1], code[f + 2], code[f + 3]]);
        (anchor, anchor.wrapping_add_signed(i64::from(d)))
    };
    let b = code[i];
    let branch = match b {
        0xE8 | 0xE9 => Some(i + 1),
        0x0F if i + 1 < n && code[i + 1] & 0xF0 == 0x80 => Some(i + 2),
        _ => None,
    };
    if let Some(f) = branch.filter(|&f| f + 4 <= n) {
        let (anchor, target) = field(f);
        if t.executable(target) {
            return Some((f, anchor, target, f + 4));
        }
    }
    // The offset of the ModRM byte for a RIP-relative candidate at i.
    let modrm = match b {
        0x0F if i + 1 < n && TWO[usize::from(code[i + 1])] => Some(i + 2),
        0xC5 => Some(i + 3),
        0xC4 => Some(i + 4),
        0x62 => Some(i + 5),
        _ if ONE[usize::from(b)] => Some(i + 1),
        _ => None,
    };
    if let Some(m) = modrm.filter(|&m| m + 5 <= n && code[m] & 0xC7 == 0x05) {
        let (anchor, target) = field(m + 1);
        if t.loaded(target) {
            return Some((m + 1, anchor, target, m + 5));
        }
    }
    None
}

/// Positions a candidate bit set covers.
const LANES: usize = 64;

/// Bytes of code [`candidates`] reads beyond its lanes.
const CANDIDATE_TAIL: usize = 10;

/// Bit `j` set when a rule of the code scan may match at position `j` of `w` (a
/// superset: `E8`/`E9`, or `0F` followed by `8x`, each with a 4-byte field after it;
/// a byte that could be a RIP-relative ModRM (`& C7 = 05`) 1 byte on (2 after `0F`),
/// or 3, 4, 5 bytes after `C5`, `C4`, `62`, each followed by its 4-byte field; every
/// field's top byte passing [`Targets::near`], `near`). Written as plain loops over
/// arrays, which the compiler turns into vector instructions.
#[inline]
fn candidates(w: &[u8; LANES + CANDIDATE_TAIL], near: u8) -> u64 {
    let max = near.wrapping_mul(2).wrapping_sub(1);
    // rip[k]: a RIP-relative ModRM at k whose field (k + 1 ..= k + 4) may be near.
    let mut rip = [0u8; LANES + CANDIDATE_TAIL];
    // ok[k]: a field ending at k (its top byte) may be near.
    let mut ok = [0u8; LANES + CANDIDATE_TAIL];
    for (o, &b) in ok.iter_mut().zip(w.iter()) {
        *o = u8::from(b.wrapping_add(near) <= max);
    }
    for k in 0..LANES + CANDIDATE_TAIL - 4 {
        rip[k] = u8::from(w[k] & 0xC7 == 0x05) & ok[k + 4];
    }
    let mut cand = [0u8; LANES];
    for j in 0..LANES {
        let b = w[j];
        let jcc = u8::from(w[j + 1] & 0xF0 == 0x80) & ok[j + 5];
        cand[j] = (u8::from(b == 0xE8 || b == 0xE9) & ok[j + 4])
            | (u8::from(b == 0x0F) & (jcc | rip[j + 2]))
            | rip[j + 1]
            | (u8::from(b == 0xC5) & rip[j + 3])
            | (u8::from(b == 0xC4) & rip[j + 4])
            | (u8::from(b == 0x62) & rip[j + 5]);
    }
    let mut mask = 0u64;
    for (k, eight) in cand.chunks_exact(8).enumerate() {
        // Eight 0/1 bytes gathered into the top byte, lowest address in the lowest bit.
        let x = u64::from_le_bytes(eight.try_into().expect("8 bytes"));
        mask |= (x.wrapping_mul(0x0102_0408_1020_4080) >> 56) << (8 * k);
    }
    mask
}

/// The pieces of a code range: `(file offset, length, address)` of each part of `r`
/// between consecutive multiples of [`PIECE`].
pub(crate) fn pieces(r: &Range) -> impl Iterator<Item = (u64, u64, u64)> + '_ {
    let end = r.offset + r.size;
    let mut at = r.offset;
    std::iter::from_fn(move || {
        (at < end).then(|| {
            let next = ((at / PIECE) + 1) * PIECE;
            let piece = (at, next.min(end) - at, r.vaddr.wrapping_add(at - r.offset));
            at = next.min(end);
            piece
        })
    })
}

/// Scans one code range (pass 1), piece by piece.
fn scan_code(t: &Targets, bytes: &[u8], r: &Range, emit: &mut impl FnMut(Ref)) {
    // Ranges were checked to lie inside the file.
    for (off, len, va) in pieces(r) {
        let code = &bytes[off as usize..(off + len) as usize];
        let mut to_ref = |f: usize, anchor, target| {
            emit(Ref {
                at: off + f as u64,
                anchor,
                target,
                kind: Kind::Rel32,
                pass: Pass::Code,
            })
        };
        scan_piece(t, code, va, (0, code.len(), 0), &mut to_ref, &mut |_, _| {});
    }
}

/// Finds every reference of `bytes` (which `elf` was parsed from), in the order of
/// FORMAT.md §3.6.1, handing each to `emit`.
pub fn scan(elf: &Elf, bytes: &[u8], mut emit: impl FnMut(Ref)) {
    let t = Targets::of(elf);
    for r in &elf.code {
        scan_code(&t, bytes, r, &mut emit);
    }
    let abs = |at: u64, target: u64, pass: Pass| Ref {
        at,
        anchor: 0,
        target,
        kind: Kind::Abs64,
        pass,
    };
    if elf.e_type == ET_EXEC {
        for r in &elf.data {
            // The first address of the range that is a multiple of 8.
            let mut off = r.offset + (r.vaddr.wrapping_neg() & 7);
            while off + 8 <= r.offset + r.size {
                if let Some(v) = u64_at(bytes, off).filter(|&v| elf.loaded(v)) {
                    emit(abs(off, v, Pass::Data));
                }
                off += 8;
            }
        }
    }
    for r in &elf.rela {
        let mut e = r.offset;
        while e + 24 <= r.offset + r.size {
            let (Some(offset), Some(info), Some(addend)) = (
                u64_at(bytes, e),
                u64_at(bytes, e + 8),
                u64_at(bytes, e + 16),
            ) else {
                break;
            };
            if elf.loaded(offset) {
                emit(abs(e, offset, Pass::Relocations));
            }
            if relative(info) && elf.loaded(addend) {
                emit(abs(e + 16, addend, Pass::Relocations));
            }
            e += 24;
        }
        // Then the words the relative relocations apply to, when the linker stored
        // the addend there too (a second sweep, so that writes move forwards).
        let mut e = r.offset;
        while e + 24 <= r.offset + r.size {
            let (Some(offset), Some(info), Some(addend)) = (
                u64_at(bytes, e),
                u64_at(bytes, e + 8),
                u64_at(bytes, e + 16),
            ) else {
                break;
            };
            if relative(info)
                && elf.loaded(addend)
                && let Some(at) = elf.offset_of(offset)
                && u64_at(bytes, at) == Some(addend)
            {
                emit(abs(at, addend, Pass::Relocations));
            }
            e += 24;
        }
    }
    for r in &elf.symbols {
        let mut e = r.offset;
        while e + 24 <= r.offset + r.size {
            let info = bytes[e as usize + 4];
            let shndx = u16::from_le_bytes([bytes[e as usize + 6], bytes[e as usize + 7]]);
            if let Some(v) = u64_at(bytes, e + 8)
                && shndx != 0
                && shndx < 0xff00
                && info & 0xf != 6
                && elf.loaded(v)
            {
                emit(abs(e + 8, v, Pass::Symbols));
            }
            e += 24;
        }
    }
    for r in &elf.data {
        scan_go_functions(&t, bytes, r, &mut emit);
    }
}

/// Whether a relocation's `r_info` is `R_X86_64_RELATIVE` (8) or `R_X86_64_IRELATIVE` (37).
pub(crate) fn relative(info: u64) -> bool {
    matches!(info & 0xffff_ffff, 8 | 37)
}

/// The u32 at `at`, if inside the file.
fn u32_at(b: &[u8], at: u64) -> Option<u32> {
    let at = usize::try_from(at).ok()?;
    Some(u32::from_le_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

/// The Go 1.18+ `pclntab` header at the start of data range `r`, if it has one:
/// `(nfunc, textStart, table offset, range end)`.
pub(crate) fn go_header(bytes: &[u8], r: &Range) -> Option<(u64, u64, u64, u64)> {
    let end = r.offset + r.size;
    let head = &bytes[r.offset as usize..end as usize];
    if head.len() < 72 || !matches!(head[..8], [0xF0 | 0xF1, 0xFF, 0xFF, 0xFF, 0, 0, 1, 8]) {
        return None;
    }
    let nfunc = u64_at(bytes, r.offset + 8)?;
    let text = u64_at(bytes, r.offset + 24)?;
    let ftab = r.offset.checked_add(u64_at(bytes, r.offset + 64)?)?;
    Some((nfunc, text, ftab, end))
}

/// Pass 5 over one data range: a Go 1.18+ `pclntab`'s function table.
fn scan_go_functions(t: &Targets, bytes: &[u8], r: &Range, emit: &mut impl FnMut(Ref)) {
    let Some((nfunc, text, ftab, end)) = go_header(bytes, r) else {
        return;
    };
    let field = |at: u64| -> Option<Ref> {
        let v = u32_at(bytes, at)?;
        let target = text.wrapping_add(u64::from(v));
        (at + 4 <= end && t.executable(target)).then_some(Ref {
            at,
            anchor: text,
            target,
            kind: Kind::Rel32,
            pass: Pass::GoFunctions,
        })
    };
    // The table's entries, then (a second sweep, so that writes move forwards) the
    // records they name.
    let entries = nfunc.saturating_add(1).min(end.saturating_sub(ftab) / 8);
    for i in 0..entries {
        if let Some(f) = field(ftab + 8 * i) {
            emit(f);
        }
    }
    for i in 0..entries {
        if let Some(f) =
            u32_at(bytes, ftab + 8 * i + 4).and_then(|off| field(ftab + u64::from(off)))
        {
            emit(f);
        }
    }
}

/// Every reference of `bytes`, in scan order.
pub fn references(elf: &Elf, bytes: &[u8]) -> Vec<Ref> {
    let mut out = Vec::new();
    scan(elf, bytes, |r| out.push(r));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The code pass as its rules read, position after position.
    fn plain(t: &Targets, code: &[u8], va: u64) -> Vec<(usize, u64, u64)> {
        let (mut i, mut out) = (0, Vec::new());
        while i < code.len() {
            match rule_at(t, code, va, i) {
                Some((f, anchor, target, next)) => {
                    out.push((f, anchor, target));
                    i = next;
                }
                None => i += 1,
            }
        }
        out
    }

    /// Bytes the rules look at, and others.
    const ALPHABET: [u8; 16] = [
        0xE8, 0xE9, 0x0F, 0x84, 0x05, 0x0D, 0x15, 0xC5, 0xC4, 0x62, 0x8B, 0x10, 0x00, 0xFF, 0x01,
        0xF8,
    ];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]
        /// The vectorised scan skips only positions where no rule can match, whatever
        /// the address space's width (the candidate filter on the fields' top bytes
        /// depends on it).
        #[test]
        fn the_vectorised_scan_finds_what_the_rules_find(
            picks in proptest::collection::vec((0usize..20, any::<u8>()), 0..900),
            width_bits in 8u32..40,
            code_at in 0u64..4096,
        ) {
            let code: Vec<u8> = picks
                .iter()
                .map(|&(k, b)| if k < ALPHABET.len() { ALPHABET[k] } else { b })
                .collect();
            let lo = 0x40_0000u64;
            let width = (1u64 << width_bits).max(code_at + code.len() as u64 + 1);
            let va = lo + code_at;
            let t = Targets::new(
                vec![(lo, width)],
                vec![(lo, width / 2 + 1)],
                &[(va, code.len() as u64)],
            );
            let mut found = Vec::new();
            scan_piece(
                &t,
                &code,
                va,
                (0, code.len(), 0),
                &mut |f, anchor, target| found.push((f, anchor, target)),
                &mut |_, _| {},
            );
            prop_assert_eq!(found, plain(&t, &code, va));
        }
    }

    #[test]
    fn the_candidate_filter_narrows_with_the_address_space() {
        let near = |width: u64| Targets::new(vec![(0x1000, width)], vec![], &[]).near;
        assert_eq!(near(1 << 20), 1);
        assert_eq!(near((1 << 24) - 8), 1);
        assert_eq!(near(1 << 24), 2);
        assert_eq!(near(100 << 20), 8);
        assert_eq!(near(1 << 31), 128);
    }
}

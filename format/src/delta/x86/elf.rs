//! The parts of an ELF64 little-endian x86-64 file the reference scan needs
//! (FORMAT.md §3.6.1): its `PT_LOAD` segments, and the sections holding code, data,
//! relocations and symbols. Nothing here trusts the file: every table must lie inside
//! it, counts are capped, and a file that breaks a rule is simply not an ELF file for
//! this purpose (its bytes are then left as they are).
//!
//! ```text
//! ELF header (64 bytes)            program header (56)        section header (64)
//!   0  magic 7f 'E' 'L' 'F'          0  p_type   u32            0  sh_name   u32
//!   4  class 2 (64-bit)              4  p_flags  u32            4  sh_type   u32
//!   5  data 1 (little-endian)        8  p_offset u64            8  sh_flags  u64
//!  16  e_type u16                   16  p_vaddr  u64           16  sh_addr   u64
//!  18  e_machine u16 (62)           32  p_filesz u64           24  sh_offset u64
//!  32  e_phoff u64                  40  p_memsz  u64           32  sh_size   u64
//!  40  e_shoff u64                                             56  sh_entsize u64
//!  54  e_phentsize u16 (56)   56  e_phnum u16
//!  58  e_shentsize u16 (64)   60  e_shnum u16
//! ```

/// Most program headers read; a file with more is not scanned.
pub const MAX_SEGMENTS: usize = 256;
/// Most section headers read; a file with more is scanned without sections.
pub const MAX_SECTIONS: usize = 8192;

const PT_LOAD: u32 = 1;
const PF_X: u32 = 1;
const SHT_PROGBITS: u32 = 1;
const SHT_SYMTAB: u32 = 2;
const SHT_RELA: u32 = 4;
const SHT_DYNSYM: u32 = 11;
const SHF_ALLOC: u64 = 2;
const SHF_EXECINSTR: u64 = 4;
/// `e_type` of a position-dependent executable (absolute pointers are not relocated).
pub const ET_EXEC: u16 = 2;

/// A `PT_LOAD` segment: file bytes `[offset, offset + filesz)` at addresses
/// `[vaddr, vaddr + filesz)`, the memory image extending to `vaddr + memsz`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub offset: u64,
    pub filesz: u64,
    pub vaddr: u64,
    pub memsz: u64,
    pub exec: bool,
}

impl Segment {
    /// Whether `va` lies in the segment's memory image.
    pub fn holds(&self, va: u64) -> bool {
        va >= self.vaddr && va - self.vaddr < self.memsz
    }
}

/// A range of the file with the address of its first byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    pub offset: u64,
    pub size: u64,
    pub vaddr: u64,
}

/// What the scan reads of one file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Elf {
    pub e_type: u16,
    pub segments: Vec<Segment>,
    /// Code to scan for rel32 and RIP-relative operands, ascending, not overlapping.
    pub code: Vec<Range>,
    /// Allocated non-executable `SHT_PROGBITS` sections, ascending, not overlapping.
    pub data: Vec<Range>,
    /// `SHT_RELA` sections (24-byte entries), in section-header order.
    pub rela: Vec<Range>,
    /// `SHT_SYMTAB` and `SHT_DYNSYM` sections (24-byte entries), in section-header order.
    pub symbols: Vec<Range>,
}

fn u16_at(b: &[u8], at: u64) -> Option<u16> {
    let at = usize::try_from(at).ok()?;
    Some(u16::from_le_bytes(
        b.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}

fn u32_at(b: &[u8], at: u64) -> Option<u32> {
    let at = usize::try_from(at).ok()?;
    Some(u32::from_le_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

/// The little-endian u64 at `at`, if the file holds 8 bytes there.
pub fn u64_at(b: &[u8], at: u64) -> Option<u64> {
    let at = usize::try_from(at).ok()?;
    Some(u64::from_le_bytes(
        b.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// Whether `[offset, offset + size)` lies inside a file of `len` bytes.
fn inside(offset: u64, size: u64, len: u64) -> bool {
    offset.checked_add(size).is_some_and(|end| end <= len)
}

impl Elf {
    /// Parses `bytes` as an ELF64 LE x86-64 file; `None` when it is not one (or breaks
    /// a rule of FORMAT.md §3.6.1), in which case nothing of it is rewritten.
    pub fn parse(bytes: &[u8]) -> Option<Elf> {
        let len = bytes.len() as u64;
        if bytes.get(..6)? != [0x7f, b'E', b'L', b'F', 2, 1] || u16_at(bytes, 18)? != 62 {
            return None;
        }
        let e_type = u16_at(bytes, 16)?;
        let (phoff, phentsize, phnum) =
            (u64_at(bytes, 32)?, u16_at(bytes, 54)?, u16_at(bytes, 56)?);
        if phentsize != 56
            || usize::from(phnum) > MAX_SEGMENTS
            || !inside(phoff, 56 * u64::from(phnum), len)
        {
            return None;
        }
        let mut segments = Vec::new();
        for i in 0..u64::from(phnum) {
            let h = phoff + 56 * i;
            let (p_type, flags) = (u32_at(bytes, h)?, u32_at(bytes, h + 4)?);
            let s = Segment {
                offset: u64_at(bytes, h + 8)?,
                vaddr: u64_at(bytes, h + 16)?,
                filesz: u64_at(bytes, h + 32)?,
                memsz: u64_at(bytes, h + 40)?,
                exec: flags & PF_X != 0,
            };
            if p_type == PT_LOAD
                && s.filesz <= s.memsz
                && inside(s.offset, s.filesz, len)
                && s.vaddr.checked_add(s.memsz).is_some()
            {
                segments.push(s);
            }
        }
        let mut elf = Elf {
            e_type,
            segments,
            ..Elf::default()
        };
        let (shoff, shentsize, shnum) =
            (u64_at(bytes, 40)?, u16_at(bytes, 58)?, u16_at(bytes, 60)?);
        let sections_ok = shnum > 0
            && shentsize == 64
            && usize::from(shnum) <= MAX_SECTIONS
            && inside(shoff, 64 * u64::from(shnum), len);
        if sections_ok {
            for i in 0..u64::from(shnum) {
                let h = shoff + 64 * i;
                let (sh_type, flags) = (u32_at(bytes, h + 4)?, u64_at(bytes, h + 8)?);
                let r = Range {
                    vaddr: u64_at(bytes, h + 16)?,
                    offset: u64_at(bytes, h + 24)?,
                    size: u64_at(bytes, h + 32)?,
                };
                let entsize = u64_at(bytes, h + 56)?;
                if r.size == 0
                    || !inside(r.offset, r.size, len)
                    || r.vaddr.checked_add(r.size).is_none()
                {
                    continue;
                }
                match sh_type {
                    SHT_PROGBITS if flags & SHF_ALLOC != 0 && flags & SHF_EXECINSTR != 0 => {
                        elf.code.push(r)
                    }
                    SHT_PROGBITS if flags & SHF_ALLOC != 0 => elf.data.push(r),
                    SHT_RELA if entsize == 24 => elf.rela.push(r),
                    SHT_SYMTAB | SHT_DYNSYM if entsize == 24 => elf.symbols.push(r),
                    _ => {}
                }
            }
        }
        if elf.code.is_empty() {
            // No usable section headers: the executable segments are the code.
            elf.code = elf
                .segments
                .iter()
                .filter(|s| s.exec && s.filesz > 0)
                .map(|s| Range {
                    offset: s.offset,
                    size: s.filesz,
                    vaddr: s.vaddr,
                })
                .collect();
        }
        disjoint(&mut elf.code);
        disjoint(&mut elf.data);
        Some(elf)
    }

    /// Whether `va` lies in the memory image of some `PT_LOAD` segment.
    pub fn loaded(&self, va: u64) -> bool {
        self.segments.iter().any(|s| s.holds(va))
    }

    /// Whether `va` lies in the memory image of an executable `PT_LOAD` segment.
    pub fn executable(&self, va: u64) -> bool {
        self.segments.iter().any(|s| s.exec && s.holds(va))
    }

    /// The file offset of address `va`: in the file image of the first `PT_LOAD`
    /// segment (in header order) holding it.
    pub fn offset_of(&self, va: u64) -> Option<u64> {
        self.segments
            .iter()
            .find(|s| va >= s.vaddr && va - s.vaddr < s.filesz)
            .map(|s| s.offset + (va - s.vaddr))
    }
}

/// Sorts ranges by file offset (then size) and drops every range that starts before
/// the end of the one kept before it.
fn disjoint(ranges: &mut Vec<Range>) {
    ranges.sort_by_key(|r| (r.offset, r.size));
    let mut end = 0u64;
    ranges.retain(|r| {
        let keep = r.offset >= end;
        if keep {
            end = r.offset + r.size;
        }
        keep
    });
}

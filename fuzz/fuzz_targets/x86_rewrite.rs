//! Reference rewriting for x86-64 ELF (FORMAT.md §3.6.1): whatever the bytes, an
//! address-map stream decodes or is refused and a decoded one encodes back to a stream
//! that decodes to the same maps; a file parses as ELF or not, and scanning and
//! rewriting it never panics, never writes outside it and keeps its size; rewriting it
//! block by block, or any range of it, gives the whole-file rewrite's bytes.
#![no_main]

use ferry_format::delta::x86::elf::Elf;
use ferry_format::delta::x86::rewrite::{BlockRewriter, rewrite_blocks};
use ferry_format::delta::x86::scan::references;
use ferry_format::delta::x86::{AddressMap, FileMaps, rewrite_file};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(maps) = FileMaps::decode(data, 8) {
        assert_eq!(FileMaps::decode(&maps.encode(), 8).ok(), Some(maps));
    }
    if let Some(elf) = Elf::parse(data) {
        for r in references(&elf, data) {
            assert!(r.at + r.kind.width() <= data.len() as u64);
        }
        let map = AddressMap::from_runs(&[(0, 16), (0x40_0000, -4096)]).expect("increasing");
        let whole = rewrite_file(data, &map).expect("an ELF file");
        assert_eq!(whole.len(), data.len());
        let rw = BlockRewriter::new(data, &map).expect("an ELF file");
        let mut blocks = vec![0u8; data.len()];
        rewrite_blocks(&rw, &mut blocks);
        assert!(blocks == whole, "block by block");
        // A range from the middle, after the blocks left resume points.
        let (s, e) = (data.len() / 3, data.len() / 3 * 2);
        let mut part = vec![0u8; e - s];
        rw.rewrite_range(s as u64, &mut part);
        assert!(part == whole[s..e], "a range");
    }
});

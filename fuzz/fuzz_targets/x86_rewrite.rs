//! Reference rewriting for x86-64 ELF (FORMAT.md §3.6.1): whatever the bytes, an
//! address-map stream decodes or is refused and a decoded one encodes back to a stream
//! that decodes to the same maps; a file parses as ELF or not, and scanning and
//! rewriting it never panics, never writes outside it and keeps its size.
#![no_main]

use ferry_format::delta::x86::elf::Elf;
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
        assert_eq!(rewrite_file(data, &map).map(|f| f.len()), Some(data.len()));
    }
});

//! Chunk decompression of hostile zstd frames: never panics, never returns more than
//! the declared size, and anything it returns hashes to the chunk id.
//!
//! Input: `mode` byte, then
//! - mode even, raw frame: 3 bytes choosing the declared size (at most 1 MiB), then
//!   the stored bytes; the id is that of the empty chunk, so only an empty frame with
//!   size 0 may succeed.
//! - mode odd, damaged real frame: `[pos lo, pos hi, xor, size delta]`, then the chunk
//!   content, which is compressed, damaged at `pos` with `xor` (no damage when 0), and
//!   decompressed with its true id and size + (delta as i8). Intact, it must round-trip.
#![no_main]

use ferry_format::chunking::{compress_chunk, decompress_chunk};
use ferry_format::id::ChunkId;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        let Some((size, stored)) = rest.split_first_chunk::<3>() else {
            return;
        };
        let size = u32::from_le_bytes([size[0], size[1], size[2], 0]) % ((1 << 20) + 1);
        check(&ChunkId::of(b""), size, stored);
    } else {
        let Some(([lo, hi, xor, delta], content)) = rest.split_first_chunk::<4>() else {
            return;
        };
        let id = ChunkId::of(content);
        let mut stored = compress_chunk(content, 1).unwrap();
        let size = (content.len() as i64 + i64::from(*delta as i8)).clamp(0, 1 << 20) as u32;
        let pos = usize::from(u16::from_le_bytes([*lo, *hi])) % stored.len();
        stored[pos] ^= xor;
        let out = check(&id, size, &stored);
        if *xor == 0 && *delta == 0 {
            assert_eq!(
                out.as_deref(),
                Some(content),
                "an intact chunk must round-trip"
            );
        }
    }
});

fn check(id: &ChunkId, size: u32, stored: &[u8]) -> Option<Vec<u8>> {
    let out = decompress_chunk(id, size, stored).ok()?;
    assert_eq!(out.len(), size as usize);
    assert_eq!(ChunkId::of(&out), *id);
    Some(out)
}

//! Manifest diffs (FORMAT.md §3.7): the new manifest as one zstd frame compressed with
//! the old manifest's exact bytes as reference prefix ("patch-from"). Unchanged file
//! entries become short matches, so an update's metadata costs what changed, not the
//! whole tree. The result is verified like any manifest (hash and size from the signed
//! head, then signatures), so the diff itself needs no signature.

use std::io::{Read, Write};

use crate::error::{FormatError, Result};

fn window_log(total: usize) -> u32 {
    (usize::BITS - total.max(1).leading_zeros()).clamp(10, 27)
}

/// Encodes `target` against `base`.
pub fn encode_manifest_diff(base: &[u8], target: &[u8], level: i32) -> Result<Vec<u8>> {
    let err = |e: std::io::Error| FormatError::Compression(e.to_string());
    let mut enc =
        zstd::stream::write::Encoder::with_ref_prefix(Vec::new(), level, base).map_err(err)?;
    enc.window_log(window_log(base.len() + target.len()))
        .map_err(err)?;
    enc.long_distance_matching(true).map_err(err)?;
    enc.include_checksum(false).map_err(err)?;
    enc.write_all(target).map_err(err)?;
    enc.finish().map_err(err)
}

/// Applies a manifest diff, producing at most `max_size` bytes (the size the signed
/// head gives the new manifest).
pub fn apply_manifest_diff(base: &[u8], diff: &[u8], max_size: u64) -> Result<Vec<u8>> {
    let corrupt = |e: std::io::Error| FormatError::Malformed {
        kind: "manifest diff",
        reason: e.to_string(),
    };
    let mut dec = zstd::stream::read::Decoder::with_ref_prefix(diff, base).map_err(corrupt)?;
    dec.window_log_max(27).map_err(corrupt)?;
    let mut out = Vec::new();
    (&mut dec)
        .take(max_size.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(corrupt)?;
    if out.len() as u64 > max_size {
        return Err(FormatError::TooLarge {
            kind: "manifest diff",
            what: "output",
            found: out.len() as u64,
            limit: max_size,
        });
    }
    Ok(out)
}

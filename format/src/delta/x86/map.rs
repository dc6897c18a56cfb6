//! Address maps (FORMAT.md §3.6.1): for each base ELF file the diff rewrites, a
//! piecewise map from the base's addresses to the new release's, as runs of constant
//! shift, and the raw stream that carries them.
//!
//! ```text
//! map stream = varint files, then per file:
//!   varint index gap   (first: the file's index among the base's files;
//!                       then index − previous index − 1)
//!   varint runs, then per run:
//!     varint start gap (first: start; then start − previous start − 1)
//!     varint zigzag(shift − previous shift)   (the previous shift of the first is 0)
//! ```
//!
//! `map(a) = a + shift` of the last run with `start ≤ a`; an address below the first
//! run maps to itself. Arithmetic wraps modulo 2^64.

use super::super::streams::{put_varint, unzigzag, zigzag};
use crate::error::{FormatError, Result};

/// Most runs a map stream may hold (all files together): bounds what an agent holds
/// in memory (16 bytes a run) whatever the stream claims.
pub const MAX_RUNS: u64 = 1 << 20;

/// A piecewise constant-shift map of one file's addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AddressMap {
    /// Run starts, strictly increasing.
    starts: Vec<u64>,
    /// Shift of each run (new − old, mod 2^64).
    shifts: Vec<i64>,
}

impl AddressMap {
    /// A map from runs `(start, shift)`; starts must be strictly increasing.
    pub fn from_runs(runs: &[(u64, i64)]) -> Option<AddressMap> {
        if runs.windows(2).any(|w| w[0].0 >= w[1].0) {
            return None;
        }
        Some(AddressMap {
            starts: runs.iter().map(|r| r.0).collect(),
            shifts: runs.iter().map(|r| r.1).collect(),
        })
    }

    /// The address `a` maps to.
    pub fn map(&self, a: u64) -> u64 {
        match self.starts.partition_point(|&s| s <= a) {
            0 => a,
            i => a.wrapping_add_signed(self.shifts[i - 1]),
        }
    }

    pub fn len(&self) -> usize {
        self.starts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    /// The runs, ascending.
    pub fn runs(&self) -> impl Iterator<Item = (u64, i64)> + '_ {
        self.starts.iter().copied().zip(self.shifts.iter().copied())
    }
}

/// The maps of one diff, by index of the file among the base's regular files
/// (manifest order), ascending.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileMaps {
    pub files: Vec<(u64, AddressMap)>,
}

fn bad(reason: String) -> FormatError {
    FormatError::Malformed {
        kind: "address map",
        reason,
    }
}

/// Varints from a slice.
struct Cursor<'a> {
    bytes: &'a [u8],
}

impl Cursor<'_> {
    fn varint(&mut self, what: &str) -> Result<u64> {
        let mut v = 0u64;
        for i in 0..super::super::streams::MAX_VARINT_LEN {
            let (&b, rest) = self
                .bytes
                .split_first()
                .ok_or_else(|| bad(format!("ends inside {what}")))?;
            self.bytes = rest;
            if i == 9 && b > 1 {
                break;
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(bad(format!("{what}: varint beyond 64 bits")))
    }
}

impl FileMaps {
    /// The raw map stream.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        put_varint(&mut out, self.files.len() as u64);
        let mut prev_index: Option<u64> = None;
        for (index, map) in &self.files {
            put_varint(&mut out, prev_index.map_or(*index, |p| index - p - 1));
            prev_index = Some(*index);
            put_varint(&mut out, map.len() as u64);
            let (mut prev_start, mut prev_shift) = (None::<u64>, 0i64);
            for (start, shift) in map.runs() {
                put_varint(&mut out, prev_start.map_or(start, |p| start - p - 1));
                put_varint(&mut out, zigzag(shift.wrapping_sub(prev_shift)));
                (prev_start, prev_shift) = (Some(start), shift);
            }
        }
        out
    }

    /// Parses a raw map stream of a base with `base_files` regular files. Refuses
    /// indexes past the base's files, starts past 2^64, more than [`MAX_RUNS`] runs
    /// and trailing bytes.
    pub fn decode(bytes: &[u8], base_files: u64) -> Result<FileMaps> {
        let mut c = Cursor { bytes };
        let count = c.varint("the file count")?;
        if count > base_files {
            return Err(bad(format!(
                "{count} maps for a base of {base_files} files"
            )));
        }
        let mut files = Vec::new();
        let mut total = 0u64;
        let mut next_index = 0u64;
        for _ in 0..count {
            let index = next_index
                .checked_add(c.varint("a file index")?)
                .filter(|&i| i < base_files)
                .ok_or_else(|| bad("a file index past the base's files".into()))?;
            next_index = index + 1;
            let runs = c.varint("a run count")?;
            total = total.saturating_add(runs);
            if total > MAX_RUNS {
                return Err(bad(format!("more than {MAX_RUNS} runs")));
            }
            let mut map = AddressMap::default();
            let (mut next_start, mut shift) = (0u64, 0i64);
            for _ in 0..runs {
                let start = next_start
                    .checked_add(c.varint("a run start")?)
                    .ok_or_else(|| bad("a run start past 2^64".into()))?;
                shift = shift.wrapping_add(unzigzag(c.varint("a shift")?));
                map.starts.push(start);
                map.shifts.push(shift);
                // The next start is greater; a run at 2^64 − 1 must be the last.
                next_start = start.saturating_add(1);
            }
            if map.starts.windows(2).any(|w| w[0] >= w[1]) {
                return Err(bad("run starts not increasing".into()));
            }
            files.push((index, map));
        }
        if !c.bytes.is_empty() {
            return Err(bad(format!("{} bytes after the last map", c.bytes.len())));
        }
        Ok(FileMaps { files })
    }
}

//! The rewritten base of an algorithm-3 diff (FORMAT.md §3.6.1): the base release's
//! files, with each x86-64 ELF file the diff's address maps name seen through its
//! references moved into the new release's address space.
//!
//! Nothing is written to disk and the rewritten file is never whole in memory. The
//! scan restarts at every 64 KiB of a file, so any block, or any range, can be
//! rewritten from the installed file's bytes, the map and a small index
//! ([`BlockRewriter`]). The apply decodes its control stream ahead and announces the
//! base reads to come ([`Base::will_read`]): a worker thread
//! ([`RewrittenBase::work_ahead`]) rewrites the blocks of the long reads among them, in
//! the order they will be read and at most 32 blocks ahead, so the rewrite
//! runs on the second core and no block is made that the apply will not read. The
//! apply takes the blocks the worker made, rewrites a long read's block itself when
//! the worker is behind (and keeps it), and rewrites just the bytes of a short read
//! (from the scan's resume point at most 256 bytes before it). The apply never waits,
//! except for a block the worker is finishing.
//!
//! Memory: the maps (at most 2^20 runs, 16 bytes each, and a page table of at most
//! 256 KiB per file), the index (8 bytes per relocation and Go function record that
//! writes elsewhere), the resume points (4 bytes per 256 bytes of a mapped file) and
//! [`CACHE_BLOCKS`] × 64 KiB of blocks.

use std::collections::{HashMap, VecDeque};
use std::io::Read;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use ferry_format::FormatError;
use ferry_format::delta::apply::Base;
use ferry_format::delta::x86::FileMaps;
use ferry_format::delta::x86::rewrite::{BLOCK, BlockRewriter};

/// Rewritten blocks kept (64 KiB each): those the worker made ahead of the apply and
/// the last ones read (a diff often reads back a little).
pub const CACHE_BLOCKS: usize = 48;
/// Announced blocks the worker may rewrite ahead of the apply: fewer than the cache
/// holds, so that none is evicted before it is read.
const WINDOW: usize = 32;
/// Announced blocks remembered at most; later announcements are dropped (the apply
/// then rewrites those blocks itself).
const MAX_PLANNED: usize = 4096;
/// A read of at least this many bytes of one block takes the whole block rewritten
/// (and kept); a shorter one rewrites just its bytes.
const MAIN_READ: usize = 4096;
/// Files with fewer blocks than this are rewritten by the apply alone: a thread
/// costs more than it saves.
const WORKER_FROM: u64 = 16;

/// Reads the address-map stream (`stored`, described by `header`) for a base of
/// `base_files` files.
pub fn read_maps(
    header: &ferry_format::delta::StreamHeader,
    stored: impl Read,
    base_files: u64,
) -> ferry_format::Result<FileMaps> {
    ferry_format::delta::x86::read_maps(header, stored, base_files)
}

/// A block: (rewriter, block index).
type Key = (usize, u64);

struct Cache {
    blocks: HashMap<Key, (Arc<Vec<u8>>, u64)>,
    /// The blocks the apply announced it will read whole ([`Base::will_read`]), in
    /// the order it will read them; the first [`WINDOW`] are the worker's to make.
    planned: VecDeque<Key>,
    /// The block the worker is rewriting now.
    pending: Option<Key>,
    /// The block the apply is rewriting now (the worker leaves it alone).
    busy: Option<Key>,
    clock: u64,
    stop: bool,
    /// Buffers of evicted blocks, for reuse.
    spare: Vec<Vec<u8>>,
}

impl Cache {
    /// Keeps `b` as block `key`, evicting the least recently used beyond the limit
    /// (never a block of the worker's window: the apply is about to read it).
    fn insert(&mut self, key: Key, b: Arc<Vec<u8>>) {
        self.clock += 1;
        self.blocks.insert(key, (b, self.clock));
        while self.blocks.len() > CACHE_BLOCKS {
            let window: Vec<Key> = self.planned.iter().take(WINDOW).copied().collect();
            let Some(old) = self
                .blocks
                .iter()
                .filter(|e| *e.0 != key && !window.contains(e.0))
                .min_by_key(|e| e.1.1)
                .map(|e| *e.0)
            else {
                break;
            };
            if let Some((b, _)) = self.blocks.remove(&old)
                && let Ok(v) = Arc::try_unwrap(b)
            {
                self.spare.push(v);
            }
        }
    }

    fn buffer(&mut self) -> Vec<u8> {
        self.spare
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(BLOCK as usize))
    }

    /// The apply reads block `key` whole: it leaves the plan, with the announced
    /// blocks before it (the apply read those in shorter pieces, or not at all).
    fn reached(&mut self, key: Key) {
        if let Some(i) = self.planned.iter().take(WINDOW).position(|&k| k == key) {
            self.planned.drain(..=i);
        }
    }

    /// The first block of the window neither made nor being made.
    fn next_for_worker(&self) -> Option<Key> {
        self.planned
            .iter()
            .take(WINDOW)
            .find(|k| !self.blocks.contains_key(k) && self.busy != Some(**k))
            .copied()
    }
}

/// The base of an algorithm-3 diff: the base's files in manifest order, the mapped ELF
/// files rewritten block by block as they are read.
pub struct RewrittenBase<'a> {
    parts: Vec<&'a [u8]>,
    /// Start offset of each part, plus the total length at the end.
    starts: Vec<u64>,
    /// Per part, the index of its rewriter.
    rewriter_of: Vec<Option<usize>>,
    rewriters: Vec<BlockRewriter<'a>>,
    cache: Mutex<Cache>,
    wake: Condvar,
}

impl<'a> RewrittenBase<'a> {
    /// The base made of `parts` (the base's files in manifest order), the files `maps`
    /// names rewritten when they are x86-64 ELF files (others are read as they are).
    pub fn new(parts: Vec<&'a [u8]>, maps: &FileMaps) -> RewrittenBase<'a> {
        let mut rewriter_of = vec![None; parts.len()];
        let mut rewriters = Vec::new();
        for (index, map) in &maps.files {
            // decode() checked the index against the base's file count.
            let i = *index as usize;
            if let Some(rw) = BlockRewriter::new(parts[i], map) {
                rewriter_of[i] = Some(rewriters.len());
                rewriters.push(rw);
            }
        }
        let mut starts = Vec::with_capacity(parts.len() + 1);
        let mut at = 0u64;
        for p in &parts {
            starts.push(at);
            at += p.len() as u64;
        }
        starts.push(at);
        RewrittenBase {
            parts,
            starts,
            rewriter_of,
            rewriters,
            cache: Mutex::new(Cache {
                blocks: HashMap::new(),
                planned: VecDeque::new(),
                pending: None,
                busy: None,
                clock: 0,
                stop: false,
                spare: Vec::new(),
            }),
            wake: Condvar::new(),
        }
    }

    /// Whether a worker thread ([`RewrittenBase::work_ahead`]) pays off.
    pub fn wants_worker(&self) -> bool {
        self.rewriters.iter().any(|r| r.blocks() >= WORKER_FROM)
    }

    /// Files rewritten (x86-64 ELF files with a map).
    pub fn rewritten_files(&self) -> usize {
        self.rewriters.len()
    }

    fn lock(&self) -> MutexGuard<'_, Cache> {
        // A panic elsewhere cannot leave the cache inconsistent: every change is one
        // insert or assignment.
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Rewrites the blocks the apply announced, in order and at most [`WINDOW`] ahead
    /// of it, until [`RewrittenBase::stop`]; run on its own thread.
    pub fn work_ahead(&self) {
        let mut c = self.lock();
        loop {
            if c.stop {
                return;
            }
            let Some(key) = c.next_for_worker() else {
                c = self.wake.wait(c).unwrap_or_else(|e| e.into_inner());
                continue;
            };
            let mut buf = c.buffer();
            c.pending = Some(key);
            drop(c);
            self.rewriters[key.0].block(key.1, &mut buf);
            c = self.lock();
            c.pending = None;
            c.insert(key, Arc::new(buf));
            // The apply may be waiting for it.
            self.wake.notify_all();
        }
    }

    /// Ends [`RewrittenBase::work_ahead`].
    pub fn stop(&self) {
        self.lock().stop = true;
        self.wake.notify_all();
    }

    /// A value that ends [`RewrittenBase::work_ahead`] when dropped.
    pub fn stopper(&self) -> impl Drop + '_ {
        struct Stopper<'s, 'a>(&'s RewrittenBase<'a>);
        impl Drop for Stopper<'_, '_> {
            fn drop(&mut self) {
                self.0.stop();
            }
        }
        Stopper(self)
    }

    /// Calls `f(part, offset in part, length)` for each part `[pos, pos + len)` covers.
    fn split(&self, mut pos: u64, mut len: u64, mut f: impl FnMut(usize, u64, u64)) {
        // The last part containing `pos`: starts are sorted, empty parts share a start.
        let mut i = self.starts.partition_point(|&s| s <= pos).saturating_sub(1);
        while len > 0 && i < self.parts.len() {
            let off = pos - self.starts[i];
            let n = (self.parts[i].len() as u64).saturating_sub(off).min(len);
            f(i, off, n);
            pos += n;
            len -= n;
            i += 1;
        }
    }

    /// Fills `out` with the rewritten bytes of file `r` from `at`, from blocks the
    /// worker made or, for those it has not, rewritten here.
    fn read_rewritten(&self, r: usize, at: u64, out: &mut [u8]) {
        let mut c = self.lock();
        let mut done = 0;
        while done < out.len() {
            let pos = at + done as u64;
            let (k, inner) = (pos / BLOCK, (pos % BLOCK) as usize);
            let m = (BLOCK as usize - inner).min(out.len() - done);
            if m >= MAIN_READ {
                c.reached((r, k));
                // The worker may now take one more block.
                self.wake.notify_all();
            }
            while c.pending == Some((r, k)) {
                // The worker is nearly done with it: waiting costs less than doing it
                // again.
                c = self.wake.wait(c).unwrap_or_else(|e| e.into_inner());
            }
            c.clock += 1;
            let clock = c.clock;
            if let Some(e) = c.blocks.get_mut(&(r, k)) {
                e.1 = clock;
                out[done..done + m].copy_from_slice(&e.0[inner..inner + m]);
            } else if m >= MAIN_READ {
                // The worker is behind: the whole block here, kept (a diff often
                // reads a block again).
                let mut buf = c.buffer();
                c.busy = Some((r, k));
                drop(c);
                self.rewriters[r].block(k, &mut buf);
                out[done..done + m].copy_from_slice(&buf[inner..inner + m]);
                c = self.lock();
                c.busy = None;
                c.insert((r, k), Arc::new(buf));
            } else {
                drop(c);
                self.rewriters[r].rewrite_range(pos, &mut out[done..done + m]);
                c = self.lock();
            }
            done += m;
        }
    }
}

impl Base for RewrittenBase<'_> {
    fn len(&self) -> u64 {
        *self.starts.last().unwrap_or(&0)
    }

    fn will_read(&self, pos: u64, len: u64) {
        let mut blocks = Vec::new();
        self.split(pos, len, |i, off, n| {
            let Some(r) = self.rewriter_of[i] else { return };
            let mut at = off;
            while at < off + n {
                let k = at / BLOCK;
                let end = ((k + 1) * BLOCK).min(off + n);
                if end - at >= MAIN_READ as u64 {
                    blocks.push((r, k));
                }
                at = end;
            }
        });
        if blocks.is_empty() {
            return;
        }
        let mut c = self.lock();
        for key in blocks {
            if c.planned.len() < MAX_PLANNED && c.planned.back() != Some(&key) {
                c.planned.push_back(key);
            }
        }
        drop(c);
        self.wake.notify_all();
    }

    fn read_at(&self, pos: u64, buf: &mut [u8]) -> ferry_format::Result<()> {
        if pos
            .checked_add(buf.len() as u64)
            .is_none_or(|e| e > self.len())
        {
            return Err(FormatError::Malformed {
                kind: "diff",
                reason: format!("base read at {pos} beyond its end"),
            });
        }
        let mut done = 0usize;
        self.split(pos, buf.len() as u64, |i, off, n| {
            let out = &mut buf[done..done + n as usize];
            match self.rewriter_of[i] {
                None => {
                    let off = off as usize;
                    out.copy_from_slice(&self.parts[i][off..off + n as usize]);
                }
                Some(r) => self.read_rewritten(r, off, out),
            }
            done += n as usize;
        });
        Ok(())
    }
}

#[cfg(all(test, target_arch = "x86_64", target_os = "linux"))]
mod tests {
    use ferry_format::delta::apply::Base;
    use ferry_format::delta::x86::{AddressMap, FileMaps};

    use super::RewrittenBase;

    /// The base read through [`RewrittenBase`] — in any order, with the worker running
    /// or not — is byte for byte the format crate's whole-file rewrite of a real x86-64
    /// ELF file (this test binary: PIE, with relocation and symbol tables, many
    /// blocks), and the other files are read as they are.
    #[test]
    fn the_lazily_rewritten_base_is_the_format_crates_rewrite() {
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let map =
            AddressMap::from_runs(&[(0x1000, 64), (0x2_0000, -128), (0x8_0000, 4096)]).unwrap();
        let expected =
            ferry_format::delta::x86::rewrite_file(&exe, &map).expect("an x86-64 ELF file");
        assert_ne!(expected, exe, "the map moves references");
        let script = b"#!/bin/sh\nexit 0\n".to_vec();
        let maps = FileMaps {
            files: vec![(0, map.clone()), (1, map)],
        };
        let whole: Vec<u8> = [&script[..], &expected[..], &script[..]].concat();
        for worker in [false, true] {
            let base = RewrittenBase::new(vec![&script, &exe, &script], &maps);
            assert_eq!(base.rewritten_files(), 1, "the script is not an ELF file");
            assert!(base.wants_worker());
            let got = std::thread::scope(|s| {
                if worker {
                    s.spawn(|| base.work_ahead());
                }
                let mut got = vec![0u8; whole.len()];
                // Forwards in odd steps, each announced a few reads ahead as the apply
                // does, then a few reads back, unannounced.
                let steps: Vec<(usize, usize)> = (0..whole.len())
                    .step_by(77_777)
                    .map(|p| (p, 77_777.min(whole.len() - p)))
                    .collect();
                for (i, &(p, n)) in steps.iter().enumerate() {
                    if i == 0 {
                        for &(p, n) in steps.iter().take(3) {
                            base.will_read(p as u64, n as u64);
                        }
                    } else if let Some(&(p, n)) = steps.get(i + 2) {
                        base.will_read(p as u64, n as u64);
                    }
                    base.read_at(p as u64, &mut got[p..p + n]).unwrap();
                }
                for &(at, n) in &[(3usize, 200_000usize), (whole.len() - 70_000, 70_000)] {
                    let mut b = vec![0u8; n];
                    base.read_at(at as u64, &mut b).unwrap();
                    assert!(b == whole[at..at + n], "read back at {at}");
                }
                base.stop();
                got
            });
            assert!(got == whole, "same bytes (worker: {worker})");
        }
    }
}

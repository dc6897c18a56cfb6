//! The chunk table of a new release and its generations (FORMAT.md §3).
//!
//! Every chunk the walk produces is either *carried* (the previous release's table has
//! it: it keeps that record's generation and its stored frame is later copied from the
//! previous archive) or *new* (generation G+1, compressed here). New chunks are
//! compressed in parallel batches and spooled, in first-appearance order, to a temp
//! file; the archive is assembled afterwards as carried frames (previous table order)
//! followed by the spool, so the table stays ordered by generation and every new chunk
//! sits in one contiguous tail.

use std::collections::HashMap;
use std::io::{BufWriter, Write};

use ferry_format::chunking::{RawChunk, compress_chunk};
use ferry_format::id::ChunkId;
use ferry_format::manifest::{ChunkRecord, Manifest};
use rayon::prelude::*;
use tempfile::NamedTempFile;

use super::progress::Progress;
use crate::error::{Result, io_err};

/// New chunks compressed together: bounds memory (64 x 256 KiB max chunk = 16 MiB of
/// input) while giving rayon enough work to keep every core busy.
const BATCH: usize = 64;

/// Where a chunk of a file will be in the final table, before that table is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkRef {
    /// Index in the previous release's table.
    Carried(u32),
    /// Index among this release's new chunks.
    New(u32),
}

/// Collects the chunks of a release as the walk produces them.
pub struct TableBuilder<'p> {
    prev: Option<&'p Manifest>,
    prev_index: HashMap<ChunkId, u32>,
    prev_used: Vec<bool>,
    generation: u64,
    level: i32,
    new_index: HashMap<ChunkId, u32>,
    new_records: Vec<ChunkRecord>,
    batch: Vec<(u32, Vec<u8>)>,
    spool: BufWriter<NamedTempFile>,
    /// Bytes count as chunked once deduplicated or compressed, not when read: the
    /// walk reads a batch far faster than it is compressed.
    progress: Progress,
    /// The highest new-chunk index the file being read uses, if any.
    file_newest: Option<u32>,
    /// New chunks compressed so far (the batch holds the rest).
    compressed: usize,
    /// Files read whose chunks wait in the batch: done when it is compressed.
    files_waiting: u64,
}

/// The finished table.
pub struct Table {
    pub records: Vec<ChunkRecord>,
    /// Previous-table indexes of the carried chunks, in previous-table order.
    pub carried: Vec<u32>,
    /// Final index of each previous-table index (`u32::MAX` when not carried).
    prev_to_final: Vec<u32>,
    /// The stored frames of the new chunks, concatenated.
    pub spool: NamedTempFile,
}

impl Table {
    /// The final table index of `r`.
    pub fn index(&self, r: ChunkRef) -> u32 {
        match r {
            ChunkRef::Carried(i) => self.prev_to_final[i as usize],
            ChunkRef::New(i) => self.carried.len() as u32 + i,
        }
    }

    pub fn new_count(&self) -> usize {
        self.records.len() - self.carried.len()
    }
}

impl<'p> TableBuilder<'p> {
    /// `prev` is the previous release's manifest, `spool` an empty temp file;
    /// chunks and files done are counted in `progress`.
    pub fn new(
        prev: Option<&'p Manifest>,
        level: i32,
        spool: NamedTempFile,
        progress: Progress,
    ) -> Self {
        let prev_index = prev
            .map(|m| {
                m.chunks
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (c.id, i as u32))
                    .collect()
            })
            .unwrap_or_default();
        TableBuilder {
            prev,
            prev_index,
            prev_used: vec![false; prev.map_or(0, |m| m.chunks.len())],
            generation: prev.map_or(0, |m| m.generation) + 1,
            level,
            new_index: HashMap::new(),
            new_records: Vec::new(),
            batch: Vec::new(),
            spool: BufWriter::with_capacity(1 << 20, spool),
            progress,
            file_newest: None,
            compressed: 0,
            files_waiting: 0,
        }
    }

    /// Every chunk of a file has been added: it is done now if none of them waits
    /// in the batch, else once the batch is compressed.
    pub fn file_read(&mut self) {
        match self.file_newest.take() {
            Some(i) if i as usize >= self.compressed => self.files_waiting += 1,
            _ => self.progress.files_done(1),
        }
    }

    fn uses_new(&mut self, i: u32) {
        self.file_newest = Some(self.file_newest.map_or(i, |n| n.max(i)));
    }

    /// Records one chunk of the walk, deduplicated within the release.
    pub fn add(&mut self, chunk: RawChunk) -> Result<ChunkRef> {
        if let Some(&i) = self.prev_index.get(&chunk.id) {
            self.prev_used[i as usize] = true;
            self.progress.chunk(chunk.data.len() as u64, true);
            return Ok(ChunkRef::Carried(i));
        }
        if let Some(&i) = self.new_index.get(&chunk.id) {
            self.progress.chunk(chunk.data.len() as u64, true);
            self.uses_new(i);
            return Ok(ChunkRef::New(i));
        }
        let i = self.new_records.len() as u32;
        self.new_index.insert(chunk.id, i);
        self.new_records.push(ChunkRecord {
            id: chunk.id,
            // The chunker never yields more than ChunkParams::max (<= 16 MiB) bytes.
            size: chunk.data.len() as u32,
            stored_size: 0,
            generation: self.generation,
        });
        self.batch.push((i, chunk.data));
        self.uses_new(i);
        if self.batch.len() >= BATCH {
            self.flush_batch()?;
        }
        Ok(ChunkRef::New(i))
    }

    fn flush_batch(&mut self) -> Result<()> {
        let (level, progress) = (self.level, &self.progress);
        let frames: Vec<_> = self
            .batch
            .par_iter()
            .map(|(_, data)| {
                let frame = compress_chunk(data, level);
                // From the worker threads, so the count moves chunk by chunk.
                progress.chunk(data.len() as u64, false);
                frame
            })
            .collect();
        for ((i, _), frame) in self.batch.drain(..).zip(frames) {
            let frame = frame?;
            self.new_records[i as usize].stored_size = frame.len() as u32;
            let path = self.spool.get_ref().path().to_path_buf();
            self.spool
                .write_all(&frame)
                .map_err(io_err("write", &path))?;
        }
        self.compressed = self.new_records.len();
        self.progress
            .files_done(std::mem::take(&mut self.files_waiting));
        Ok(())
    }

    /// Compresses what is left and fixes the final order.
    pub fn finish(mut self) -> Result<Table> {
        self.flush_batch()?;
        let path = self.spool.get_ref().path().to_path_buf();
        let spool = self
            .spool
            .into_inner()
            .map_err(|e| io_err("write", &path)(e.into_error()))?;
        let mut records = Vec::with_capacity(self.new_records.len());
        let mut carried = Vec::new();
        let mut prev_to_final = vec![u32::MAX; self.prev_used.len()];
        if let Some(prev) = self.prev {
            for (i, used) in self.prev_used.iter().enumerate() {
                if *used {
                    prev_to_final[i] = records.len() as u32;
                    carried.push(i as u32);
                    records.push(prev.chunks[i]);
                }
            }
        }
        records.extend(self.new_records);
        Ok(Table {
            records,
            carried,
            prev_to_final,
            spool,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(byte: u8, len: usize) -> RawChunk {
        let data = vec![byte; len];
        RawChunk {
            offset: 0,
            id: ChunkId::of(&data),
            data,
        }
    }

    /// The progress display counts bytes once deduplicated or compressed and files
    /// once every chunk of theirs is: never ahead of the work.
    #[test]
    fn progress_counts_bytes_and_files_once_their_chunks_are_done() {
        let progress = Progress::counting();
        let spool = tempfile::NamedTempFile::new().unwrap();
        let mut b = TableBuilder::new(None, 1, spool, progress.clone());
        // File 1: a new chunk, which waits in the batch.
        b.add(chunk(1, 1000)).unwrap();
        b.file_read();
        assert_eq!(progress.chunked(), (0, 0, 0));
        // File 2: only the chunk file 1 has, so it waits for that chunk too.
        b.add(chunk(1, 1000)).unwrap();
        b.file_read();
        assert_eq!(progress.chunked(), (0, 1000, 1000));
        // Filling the batch compresses it: both files are done, every byte counted.
        for k in 0..BATCH as u8 - 1 {
            b.add(chunk(10 + k, 100)).unwrap();
        }
        let batch_bytes = 1000 + 100 * (BATCH as u64 - 1);
        assert_eq!(progress.chunked(), (2, batch_bytes + 1000, 1000));
        b.file_read();
        assert_eq!(progress.chunked(), (3, batch_bytes + 1000, 1000));
        // A file of compressed chunks only is done at once.
        b.add(chunk(1, 1000)).unwrap();
        b.file_read();
        assert_eq!(progress.chunked(), (4, batch_bytes + 2000, 2000));
        let table = b.finish().unwrap();
        assert_eq!(table.new_count(), BATCH);
    }
}

//! The chunk table of a new release and its generations (FORMAT.md §3).
//!
//! Every chunk the walk produces is either *carried* (the previous release's table has
//! it: it keeps that record's generation and its stored frame is later copied from the
//! previous archive) or *new* (generation G+1, compressed here). New chunks are
//! compressed by one worker thread per core while the walk goes on reading, cutting and
//! hashing, and spooled, in first-appearance order, to a temp file; the archive is
//! assembled afterwards as carried frames (previous table order) followed by the spool,
//! so the table stays ordered by generation and every new chunk sits in one contiguous
//! tail. The spool is hashed as it is written: with no carried chunk it *is* the
//! archive, placed as it is.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufWriter, Write};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, SyncSender, channel, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use ferry_format::FormatError;
use ferry_format::chunking::compress_chunk;
use ferry_format::id::{ChunkId, ObjectRef};
use ferry_format::manifest::{ChunkRecord, Manifest};
use tempfile::NamedTempFile;

use super::archive::Hashing;
use super::progress::Progress;
use crate::error::{Result, io_err};

/// Chunks handed to the workers and not compressed yet, at most, per worker: each
/// worker always finds its next chunk waiting, and their bytes stay few (on 2 cores,
/// 8 x 256 KiB max chunk = 2 MiB).
const QUEUED_PER_WORKER: usize = 4;

/// Frames compressed ahead of a chunk still being compressed wait for it, up to this
/// many bytes (plus the frames of the chunks queued by then); past it no chunk is
/// handed out until that one is done. Compression times vary by chunk, most at high
/// levels: a window of 16 chunks left a worker idle behind a slow one (polars at level
/// 19 used 96% CPU of 200%). Bounding the waiting frames by bytes gives a wide window
/// (hundreds of frames at typical ratios) in bounded memory.
const READY_BYTES: usize = 16 << 20;

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
    new_index: HashMap<ChunkId, u32>,
    new_records: Vec<ChunkRecord>,
    workers: Workers,
    /// Chunks handed to the workers whose frame has not come back.
    queued: usize,
    /// The most `queued` may be.
    max_queued: usize,
    /// Frames compressed out of order, waiting for the ones before them, and their
    /// bytes.
    ready: BTreeMap<u32, Vec<u8>>,
    ready_bytes: usize,
    /// Buffers of chunks compressed, for the next chunks to copy into.
    free: Vec<Vec<u8>>,
    spool: Hashing<BufWriter<NamedTempFile>>,
    /// New chunks spooled so far (in index order: the first `spooled` ones).
    spooled: u32,
    /// Bytes count as chunked once deduplicated or compressed, not when read: the
    /// walk reads far faster than chunks are compressed.
    progress: Progress,
    /// The highest new-chunk index the file being read uses, if any.
    file_newest: Option<u32>,
    /// Files read whose chunks are not all spooled yet, by the highest new-chunk index
    /// they use: done once that one is.
    files_waiting: BTreeMap<u32, u64>,
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
    /// The name and size of the spool's bytes.
    pub spool_ref: ObjectRef,
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
    ) -> Result<Self> {
        let prev_index = prev
            .map(|m| {
                m.chunks
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (c.id, i as u32))
                    .collect()
            })
            .unwrap_or_default();
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let spool_path = spool.path().to_path_buf();
        Ok(TableBuilder {
            prev,
            prev_index,
            prev_used: vec![false; prev.map_or(0, |m| m.chunks.len())],
            generation: prev.map_or(0, |m| m.generation) + 1,
            new_index: HashMap::new(),
            new_records: Vec::new(),
            workers: Workers::start(threads, QUEUED_PER_WORKER * threads, level, &progress)
                .map_err(io_err("start the compression threads for", &spool_path))?,
            queued: 0,
            max_queued: QUEUED_PER_WORKER * threads,
            ready: BTreeMap::new(),
            ready_bytes: 0,
            free: Vec::new(),
            spool: Hashing::new(BufWriter::with_capacity(1 << 20, spool)),
            spooled: 0,
            progress,
            file_newest: None,
            files_waiting: BTreeMap::new(),
        })
    }

    /// Every chunk of a file has been added: it is done now if all of them are
    /// deduplicated or spooled, else once the last of them is.
    pub fn file_read(&mut self) {
        match self.file_newest.take() {
            Some(i) if i >= self.spooled => *self.files_waiting.entry(i).or_default() += 1,
            _ => self.progress.files_done(1),
        }
    }

    fn uses_new(&mut self, i: u32) {
        self.file_newest = Some(self.file_newest.map_or(i, |n| n.max(i)));
    }

    /// Records one chunk of the walk, deduplicated within the release; a new one is
    /// copied and handed to the compression workers.
    pub fn add(&mut self, id: ChunkId, data: &[u8]) -> Result<ChunkRef> {
        if let Some(&i) = self.prev_index.get(&id) {
            self.prev_used[i as usize] = true;
            self.progress.chunk(data.len() as u64, true);
            return Ok(ChunkRef::Carried(i));
        }
        if let Some(&i) = self.new_index.get(&id) {
            self.progress.chunk(data.len() as u64, true);
            self.uses_new(i);
            return Ok(ChunkRef::New(i));
        }
        let i = self.new_records.len() as u32;
        self.new_index.insert(id, i);
        self.new_records.push(ChunkRecord {
            id,
            // The chunker never yields more than ChunkParams::max (<= 16 MiB) bytes.
            size: data.len() as u32,
            stored_size: 0,
            generation: self.generation,
        });
        self.uses_new(i);
        // Either wait leaves a chunk being compressed (the one the waiting frames wait
        // for, or a queued one), so it ends.
        while self.queued >= self.max_queued || self.ready_bytes > READY_BYTES {
            self.wait_for_one()?;
        }
        let mut copy = self.free.pop().unwrap_or_default();
        copy.clear();
        copy.extend_from_slice(data);
        self.workers.submit(i, copy);
        self.queued += 1;
        // Spool what is done without waiting, so the workers' output does not pile up.
        while let Some(done) = self.workers.try_done() {
            self.take(done)?;
        }
        Ok(ChunkRef::New(i))
    }

    /// Waits for one compressed chunk and spools what it completes.
    fn wait_for_one(&mut self) -> Result<()> {
        let done = self.workers.wait_done().map_err(|_| {
            FormatError::Compression("a compression thread stopped unexpectedly".into())
        })?;
        self.take(done)
    }

    /// Takes a worker's result and spools every frame now in order.
    fn take(&mut self, done: Done) -> Result<()> {
        self.queued -= 1;
        self.free.push(done.data);
        let frame = done.frame?;
        self.ready_bytes += frame.len();
        self.ready.insert(done.index, frame);
        while let Some(frame) = self.ready.remove(&self.spooled) {
            self.ready_bytes -= frame.len();
            self.new_records[self.spooled as usize].stored_size = frame.len() as u32;
            let path = self.spool.inner.get_ref().path().to_path_buf();
            self.spool
                .write_all(&frame)
                .map_err(io_err("write", &path))?;
            self.spooled += 1;
        }
        while let Some(entry) = self.files_waiting.first_entry() {
            if *entry.key() >= self.spooled {
                break;
            }
            self.progress.files_done(entry.remove());
        }
        Ok(())
    }

    /// Waits for the last chunks and fixes the final order.
    pub fn finish(mut self) -> Result<Table> {
        while (self.spooled as usize) < self.new_records.len() {
            self.wait_for_one()?;
        }
        let TableBuilder {
            prev,
            prev_used,
            mut new_records,
            mut spool,
            ..
        } = self;
        let path = spool.inner.get_ref().path().to_path_buf();
        spool.flush().map_err(io_err("write", &path))?;
        let spool_ref = spool.object_ref();
        let spool = spool
            .inner
            .into_inner()
            .map_err(|e| io_err("write", &path)(e.into_error()))?;
        let mut records = Vec::with_capacity(new_records.len());
        let mut carried = Vec::new();
        let mut prev_to_final = vec![u32::MAX; prev_used.len()];
        if let Some(prev) = prev {
            for (i, used) in prev_used.iter().enumerate() {
                if *used {
                    prev_to_final[i] = records.len() as u32;
                    carried.push(i as u32);
                    records.push(prev.chunks[i]);
                }
            }
        }
        records.append(&mut new_records);
        Ok(Table {
            records,
            carried,
            prev_to_final,
            spool,
            spool_ref,
        })
    }
}

/// A chunk to compress: its new-chunk index and its bytes.
struct Job {
    index: u32,
    data: Vec<u8>,
}

/// A compressed chunk, and its buffer back for reuse.
struct Done {
    index: u32,
    frame: std::result::Result<Vec<u8>, FormatError>,
    data: Vec<u8>,
}

/// The compression threads: each takes the next chunk from a shared queue, so a core
/// never waits while chunks are waiting; each keeps one zstd context for all its chunks
/// ([`compress_chunk`]).
struct Workers {
    jobs: Option<SyncSender<Job>>,
    done: Receiver<Done>,
    /// Set when the table is dropped unfinished: the workers leave the queue alone.
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Workers {
    fn start(
        n: usize,
        max_queued: usize,
        level: i32,
        progress: &Progress,
    ) -> std::io::Result<Workers> {
        let (jobs, queue) = sync_channel::<Job>(max_queued);
        let queue = Arc::new(Mutex::new(queue));
        let (done_tx, done) = channel();
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::with_capacity(n);
        for k in 0..n {
            let (queue, done_tx, stop, progress) = (
                queue.clone(),
                done_tx.clone(),
                stop.clone(),
                progress.clone(),
            );
            let spawned = std::thread::Builder::new()
                .name(format!("ferry-zstd-{k}"))
                .spawn(move || work(&queue, &done_tx, &stop, level, &progress));
            match spawned {
                Ok(t) => threads.push(t),
                // The ones started stop when `jobs` is dropped.
                Err(e) => return Err(e),
            }
        }
        Ok(Workers {
            jobs: Some(jobs),
            done,
            stop,
            threads,
        })
    }

    fn submit(&self, index: u32, data: Vec<u8>) {
        // The queue holds as many chunks as the table ever has queued, so this never blocks; a send fails only once every worker has gone,
        // and then `wait_done` says so.
        if let Some(jobs) = &self.jobs {
            let _ = jobs.send(Job { index, data });
        }
    }

    fn try_done(&self) -> Option<Done> {
        self.done.try_recv().ok()
    }

    fn wait_done(&self) -> std::result::Result<Done, std::sync::mpsc::RecvError> {
        self.done.recv()
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        drop(self.jobs.take());
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// One compression thread: until the queue is closed (or the table given up).
fn work(
    queue: &Mutex<Receiver<Job>>,
    done: &Sender<Done>,
    stop: &AtomicBool,
    level: i32,
    progress: &Progress,
) {
    loop {
        let job = match queue.lock() {
            Ok(q) => q.recv(),
            Err(_) => return,
        };
        let Ok(Job { index, data }) = job else {
            return;
        };
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let frame =
            catch_unwind(AssertUnwindSafe(|| compress_chunk(&data, level))).unwrap_or_else(|_| {
                Err(FormatError::Compression(
                    "the compressor panicked".to_string(),
                ))
            });
        progress.chunk(data.len() as u64, false);
        if done.send(Done { index, frame, data }).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(byte: u8, len: usize) -> (ChunkId, Vec<u8>) {
        let data = vec![byte; len];
        (ChunkId::of(&data), data)
    }

    fn add(b: &mut TableBuilder<'_>, (id, data): &(ChunkId, Vec<u8>)) -> ChunkRef {
        b.add(*id, data).unwrap()
    }

    /// Waits until every chunk handed to the workers is spooled.
    fn settle(b: &mut TableBuilder<'_>) {
        while (b.spooled as usize) < b.new_records.len() {
            b.wait_for_one().unwrap();
        }
    }

    /// The progress display counts bytes once deduplicated or compressed and files
    /// once every chunk of theirs is spooled: never ahead of the work.
    #[test]
    fn progress_counts_bytes_and_files_once_their_chunks_are_done() {
        let progress = Progress::counting();
        let spool = tempfile::NamedTempFile::new().unwrap();
        let mut b = TableBuilder::new(None, 1, spool, progress.clone()).unwrap();
        let (a, c) = (chunk(1, 1000), chunk(2, 500));
        // File 1: a new chunk, done once it is spooled (the workers may be that fast).
        add(&mut b, &a);
        b.file_read();
        let (files, bytes, dedup) = progress.chunked();
        assert_eq!((files, dedup), (b.spooled as u64, 0));
        assert!(bytes <= 1000);
        settle(&mut b);
        assert_eq!(progress.chunked(), (1, 1000, 0));
        // File 2: only the chunk file 1 has, spooled already: done at once.
        add(&mut b, &a);
        b.file_read();
        assert_eq!(progress.chunked(), (2, 2000, 1000));
        // File 3: a chunk of file 1 and a new one: done once the new one is spooled.
        add(&mut b, &a);
        add(&mut b, &c);
        b.file_read();
        let (files, _, _) = progress.chunked();
        assert_eq!(files, 2 + u64::from(b.spooled == 2));
        settle(&mut b);
        assert_eq!(progress.chunked(), (3, 3500, 2000));
        // A file with no chunk (empty) is done at once.
        b.file_read();
        assert_eq!(progress.chunked().0, 4);
        let table = b.finish().unwrap();
        assert_eq!(table.new_count(), 2);
    }

    /// However the workers finish, the spool holds the new chunks' frames in
    /// first-appearance order, the records carry their stored sizes, at most
    /// `max_queued` chunks wait for a worker and `READY_BYTES` of frames (plus those of
    /// the chunks queued when it was reached) for their turn at any time, and the spool's reference names its bytes.
    #[test]
    fn frames_are_spooled_in_order_with_bounded_work_in_flight() {
        let spool = tempfile::NamedTempFile::new().unwrap();
        let mut b = TableBuilder::new(None, 3, spool, Progress::default()).unwrap();
        let chunks: Vec<_> = (0..200)
            .map(|k| {
                // Sizes from 64 bytes to 200 KB, so the workers finish out of order.
                let len = 64 + (k * 7919) % 200_000;
                let data: Vec<u8> = (0..len).map(|i| ((i * k) % 251 + i / 1000) as u8).collect();
                (ChunkId::of(&data), data)
            })
            .collect();
        for (k, c) in chunks.iter().enumerate() {
            assert_eq!(add(&mut b, c), ChunkRef::New(k as u32));
            assert!(b.queued <= b.max_queued);
            assert!(b.ready_bytes <= READY_BYTES + b.max_queued * (256 << 10));
            assert_eq!(b.ready_bytes, b.ready.values().map(Vec::len).sum::<usize>());
            // A repeat is deduplicated, not compressed again.
            assert_eq!(add(&mut b, &chunks[k / 2]), ChunkRef::New(k as u32 / 2));
        }
        let table = b.finish().unwrap();
        assert_eq!(table.new_count(), chunks.len());
        let bytes = std::fs::read(table.spool.path()).unwrap();
        assert_eq!(table.spool_ref, ObjectRef::of(&bytes));
        let mut at = 0;
        for (r, (id, data)) in table.records.iter().zip(&chunks) {
            let frame = &bytes[at..at + r.stored_size as usize];
            assert_eq!(r.id, *id);
            assert_eq!(
                ferry_format::chunking::decompress_chunk(id, r.size, frame).unwrap(),
                *data
            );
            at += frame.len();
        }
        assert_eq!(at, bytes.len());
    }
}

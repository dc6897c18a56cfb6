//! `ROOT/.ferry/reports/`: reports waiting for the fleet server, one file per report
//! named by a sequence number (`00000000000000000042.json`), so the order they were
//! made in is the order they are delivered in.
//!
//! Every report is written here (atomically, fsynced) before it is sent, so an
//! unreachable server or a kill -9 loses nothing: the next flush sends what is left.
//! The queue is bounded ([`MAX_REPORTS`], [`MAX_BYTES`]): an agent cut off for weeks
//! drops its oldest reports, with a warning, rather than fill the disk.
//!
//! The sequence is also the report's id (`<agent id>-<sequence>`), which the server
//! uses to store a report delivered twice only once; so `next` is advanced (durably)
//! before the report that takes the number is written, and a number is never reused
//! even after the queue empties.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use crate::fsutil::{self, FsError};

/// Most reports kept waiting.
pub const MAX_REPORTS: usize = 1000;
/// Most bytes of reports kept waiting.
pub const MAX_BYTES: u64 = 4 * 1024 * 1024;

const NEXT: &str = "next";
const LOCK: &str = ".lock";
const SUFFIX: &str = ".json";

/// The queue in one directory.
#[derive(Clone, Debug)]
pub struct Queue {
    dir: PathBuf,
    max_reports: usize,
    max_bytes: u64,
}

/// One waiting report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    pub path: PathBuf,
    pub size: u64,
}

impl Queue {
    pub fn new(dir: impl Into<PathBuf>) -> Queue {
        Queue {
            dir: dir.into(),
            max_reports: MAX_REPORTS,
            max_bytes: MAX_BYTES,
        }
    }

    /// The same queue with other bounds (tests).
    pub fn with_bounds(mut self, max_reports: usize, max_bytes: u64) -> Queue {
        self.max_reports = max_reports.max(1);
        self.max_bytes = max_bytes;
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Adds the report `make` builds for the next sequence number, durably, then
    /// drops the oldest reports beyond the bounds. Returns the number and how many
    /// old reports were dropped.
    pub fn push(&self, make: impl FnOnce(u64) -> Vec<u8>) -> Result<(u64, usize), FsError> {
        fsutil::create_dir_all(&self.dir)?;
        // Two processes on one root (an agent and a cron `--once`) must not take one
        // number twice.
        let lock_path = self.dir.join(LOCK);
        let lock = fsutil::ctx(
            "opening",
            &lock_path,
            File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&lock_path),
        )?;
        fsutil::ctx(
            "locking",
            &lock_path,
            rustix::fs::flock(lock.as_fd(), rustix::fs::FlockOperation::LockExclusive)
                .map_err(std::io::Error::from),
        )?;
        let entries = self.entries()?;
        let next_path = self.dir.join(NEXT);
        let recorded = std::fs::read_to_string(&next_path)
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
            .unwrap_or(1);
        let after_last = entries.last().map_or(1, |e| e.seq + 1);
        let seq = recorded.max(after_last).max(1);
        fsutil::write_atomic(&next_path, format!("{}\n", seq + 1).as_bytes())?;
        let path = self.path_of(seq);
        fsutil::write_atomic(&path, &make(seq))?;
        let dropped = self.trim()?;
        Ok((seq, dropped))
    }

    fn path_of(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:020}{SUFFIX}"))
    }

    /// The waiting reports, oldest first. Other names (temporary files of a write
    /// cut short, `next`) are not reports.
    pub fn entries(&self) -> Result<Vec<Entry>, FsError> {
        let read = match std::fs::read_dir(&self.dir) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return fsutil::ctx("reading", &self.dir, Err(e)),
        };
        let mut out = Vec::new();
        for item in read {
            let item = fsutil::ctx("reading", &self.dir, item)?;
            let name = item.file_name();
            let Some(seq) = name
                .to_str()
                .and_then(|n| n.strip_suffix(SUFFIX))
                .filter(|n| n.len() == 20 && n.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            let size = item.metadata().map(|m| m.len()).unwrap_or(0);
            out.push(Entry {
                seq,
                path: item.path(),
                size,
            });
        }
        out.sort_by_key(|e| e.seq);
        Ok(out)
    }

    /// Removes a delivered (or refused) report. One that reappears after a crash is
    /// sent again and stored once by the server.
    pub fn remove(&self, entry: &Entry) -> Result<(), FsError> {
        match std::fs::remove_file(&entry.path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            r => fsutil::ctx("removing", &entry.path, r),
        }
    }

    /// Drops the oldest reports until the queue is within its bounds.
    fn trim(&self) -> Result<usize, FsError> {
        let entries = self.entries()?;
        let mut count = entries.len();
        let mut bytes: u64 = entries.iter().map(|e| e.size).sum();
        let mut dropped = 0;
        for e in &entries {
            // The newest report always stays.
            if count <= 1 || (count <= self.max_reports && bytes <= self.max_bytes) {
                break;
            }
            self.remove(e)?;
            count -= 1;
            bytes -= e.size;
            dropped += 1;
        }
        if dropped > 0 {
            tracing::warn!(
                dropped,
                "the report queue {} is full ({} reports or {} bytes): dropped the {dropped} oldest",
                self.dir.display(),
                self.max_reports,
                self.max_bytes
            );
            fsutil::fsync_dir(&self.dir)?;
        }
        Ok(dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seqs(q: &Queue) -> Vec<u64> {
        q.entries().unwrap().iter().map(|e| e.seq).collect()
    }

    #[test]
    fn reports_keep_their_order_and_numbers_are_never_reused() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::new(dir.path().join("reports"));
        assert!(q.entries().unwrap().is_empty());
        for i in 1..=3u64 {
            let (seq, dropped) = q.push(|s| format!("report {s}").into_bytes()).unwrap();
            assert_eq!((seq, dropped), (i, 0));
        }
        // A temporary file of a write cut short is not a report.
        std::fs::write(q.dir().join(".00000000000000000009.json.tmp-1"), "x").unwrap();
        let entries = q.entries().unwrap();
        assert_eq!(seqs(&q), [1, 2, 3]);
        assert_eq!(
            std::fs::read_to_string(&entries[1].path).unwrap(),
            "report 2"
        );
        for e in &entries {
            q.remove(e).unwrap();
        }
        assert!(q.entries().unwrap().is_empty());
        // Emptied, the queue goes on counting: a reused number would be a
        // duplicate report id, which the server would drop.
        assert_eq!(q.push(|_| b"r".to_vec()).unwrap().0, 4);
        // A lost or damaged `next` never makes a number go below a waiting report.
        std::fs::write(q.dir().join(NEXT), "garbage").unwrap();
        assert_eq!(q.push(|_| b"r".to_vec()).unwrap().0, 5);
    }

    #[test]
    fn a_full_queue_drops_its_oldest_reports() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::new(dir.path()).with_bounds(3, 1_000_000);
        for _ in 0..5 {
            q.push(|_| vec![b'x'; 10]).unwrap();
        }
        assert_eq!(seqs(&q), [3, 4, 5]);
        let (_, dropped) = q.push(|_| vec![b'x'; 10]).unwrap();
        assert_eq!(dropped, 1);
        assert_eq!(seqs(&q), [4, 5, 6]);

        // By bytes: 3 x 400 > 1000, so one goes; a report larger than the bound alone
        // is still kept (the newest always stays).
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::new(dir.path()).with_bounds(100, 1000);
        for _ in 0..3 {
            q.push(|_| vec![b'x'; 400]).unwrap();
        }
        assert_eq!(seqs(&q), [2, 3]);
        q.push(|_| vec![b'x'; 5000]).unwrap();
        assert_eq!(seqs(&q), [4]);
    }
}

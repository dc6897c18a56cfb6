//! Checking a large file's whole-content hash on a thread beside the tree's writer.
//!
//! A file's chunks are checked against their ids as they come (a download's and a
//! local release's as they are handed to the writer, a diff's as the diff produces
//! them); the whole-file hash of the signed manifest is checked too, and for a large
//! file it is the writer's biggest cost after the write itself (the polars update,
//! before [`super::image`]: blake3 of its 111 MB file took 20-30 ms of a 100 ms build).
//! The writer hands each chunk it wrote to a [`BesideHasher`] and goes on; a mismatch
//! is the build's error once the writer is done, before anything is synced or renamed.
//! Files below [`BESIDE_FROM`] stay hashed inline: in a tree of many small files a
//! hand-over per chunk would move little hashing for a thread wake-up each.

use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::{Scope, ScopedJoinHandle};

use ferry_format::id::Digest;

use super::ApplyError;

/// Files of at least this many bytes are hashed beside the writer.
pub const BESIDE_FROM: u64 = 4 << 20;
/// Chunks handed over and not yet hashed, at most (each at most 256 KiB).
const AHEAD: usize = 16;

enum Msg {
    Bytes(Vec<u8>),
    /// The file's last chunk was handed over: its hash must be `expected`.
    End {
        path: String,
        expected: Digest,
    },
}

/// The writer's end of a hashing thread; [`BesideHasher::finish`] gives its verdict.
pub struct BesideHasher<'scope> {
    tx: SyncSender<Msg>,
    thread: ScopedJoinHandle<'scope, Option<ApplyError>>,
}

impl<'scope> BesideHasher<'scope> {
    pub fn start<'env>(scope: &'scope Scope<'scope, 'env>) -> Self {
        let (tx, rx) = sync_channel(AHEAD);
        let thread = scope.spawn(move || hash_all(rx));
        BesideHasher { tx, thread }
    }

    /// The next bytes of the current file, in order.
    pub fn bytes(&self, bytes: Vec<u8>) -> Result<(), ApplyError> {
        self.send(Msg::Bytes(bytes))
    }

    /// Ends the current file, whose hash must be `expected`.
    pub fn end_file(&self, path: &str, expected: Digest) -> Result<(), ApplyError> {
        self.send(Msg::End {
            path: path.to_string(),
            expected,
        })
    }

    fn send(&self, msg: Msg) -> Result<(), ApplyError> {
        // The thread only stops when the channel closes, or by a panic.
        self.tx.send(msg).map_err(|_| ApplyError::HasherStopped)
    }

    /// Waits for every handed-over file to be hashed: the first that did not match.
    pub fn finish(self) -> Result<(), ApplyError> {
        drop(self.tx);
        match self.thread.join() {
            Ok(None) => Ok(()),
            Ok(Some(e)) => Err(e),
            Err(_) => Err(ApplyError::HasherStopped),
        }
    }
}

fn hash_all(rx: Receiver<Msg>) -> Option<ApplyError> {
    let mut hasher = blake3::Hasher::new();
    let mut first = None;
    for msg in rx {
        match msg {
            Msg::Bytes(b) => {
                hasher.update(&b);
            }
            Msg::End { path, expected } => {
                let actual = Digest::from(hasher.finalize());
                if actual != expected && first.is_none() {
                    first = Some(ApplyError::FileMismatch {
                        path,
                        expected: expected.to_hex(),
                        actual: actual.to_hex(),
                    });
                }
                hasher.reset();
            }
        }
    }
    first
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_hashed_beside_report_the_first_that_does_not_match() {
        let (a, b) = (vec![7u8; 300_000], vec![9u8; 100_000]);
        let verdict = std::thread::scope(|s| {
            let h = BesideHasher::start(s);
            h.bytes(a[..200_000].to_vec()).unwrap();
            h.bytes(a[200_000..].to_vec()).unwrap();
            h.end_file("a", Digest::of(&a)).unwrap();
            h.bytes(b.clone()).unwrap();
            // Names a's content: b does not match it.
            h.end_file("b", Digest::of(&a)).unwrap();
            h.bytes(b.clone()).unwrap();
            h.end_file("c", Digest::of(&a)).unwrap();
            h.finish()
        });
        match verdict {
            Err(ApplyError::FileMismatch { path, actual, .. }) => {
                assert_eq!(path, "b");
                assert_eq!(actual, Digest::of(&b).to_hex());
            }
            other => panic!("expected b's mismatch, got {other:?}"),
        }
        let ok = std::thread::scope(|s| {
            let h = BesideHasher::start(s);
            h.bytes(b.clone()).unwrap();
            h.end_file("b", Digest::of(&b)).unwrap();
            h.finish()
        });
        assert!(ok.is_ok());
    }
}

//! Response bodies read from local files (the folder's objects, or the disk cache's
//! copies of a bucket's) for hyper: HTTP/2, TLS, and plain connections hyper took over
//! (the HTTP/1.x fast path sends files with `sendfile` instead, [`super::fast`]).
//! Each read is one `pread`: a range up to [`CHUNK`] bytes — an
//! agent's typical request — is read in one call and answered from memory, a longer
//! one streams in [`CHUNK`]-sized reads, each made only when the connection has taken
//! the previous one, so a connection holds at most one chunk.
//!
//! The open, stat and reads run right on the connection's thread, not on the blocking
//! pool. A repository's files are immutable and, on a serving machine, in the page
//! cache: such a call takes microseconds, and the hand-off cost more than it saved
//! (about twice the requests per second at 1,000 connections without it; see
//! benches/results). A cold read from a slow disk does hold up the thread's other
//! connections meanwhile, as it does in nginx with its default `sendfile on` and no
//! `aio threads`.

use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;

use super::routes::Body;
use crate::store::Exclusive;

/// Bytes per read. (128 KiB had 1,000 HTTP/2 streams of 4 MiB ranges peak at 540 MiB
/// RSS, each buffering reads ahead; 64 KiB halves that at the same bytes per second.)
pub const CHUNK: u64 = 64 << 10;

/// Something holding an open file.
pub trait Holds: Send + Sync + 'static {
    fn file(&self) -> &std::fs::File;
}

impl Holds for std::fs::File {
    fn file(&self) -> &std::fs::File {
        self
    }
}

impl Holds for super::files::Object {
    fn file(&self) -> &std::fs::File {
        &self.file
    }
}

/// The body for bytes `start..start + count` of `file`.
pub fn body<F: Holds>(file: Arc<F>, start: u64, count: u64) -> io::Result<Body> {
    if count <= CHUNK {
        let bytes = read(file.file(), start, count)?;
        return Ok(Full::new(bytes).map_err(|never| match never {}).boxed());
    }
    let end = start + count;
    let chunks = futures_util::stream::try_unfold(start, move |at| {
        let file = file.clone();
        async move {
            if at >= end {
                return Ok(None);
            }
            let n = CHUNK.min(end - at);
            let bytes = read(file.file(), at, n)?;
            Ok(Some((Frame::data(bytes), at + n)))
        }
    });
    Ok(StreamBody::new(Exclusive::new(Box::pin(chunks))).boxed())
}

/// Exactly `count` bytes at `at` (a file shorter than its length said is an error).
fn read(file: &std::fs::File, at: u64, count: u64) -> io::Result<Bytes> {
    let mut buf = vec![0u8; count as usize];
    file.read_exact_at(&mut buf, at)?;
    Ok(Bytes::from(buf))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn collect(file: &std::path::Path, start: u64, count: u64) -> Vec<u8> {
        let f = Arc::new(std::fs::File::open(file).unwrap());
        let body = body(f, start, count).unwrap();
        body.collect().await.unwrap().to_bytes().to_vec()
    }

    #[tokio::test]
    async fn ranges_short_and_long_come_back_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("object");
        let data: Vec<u8> = (0..(3 * CHUNK + 17)).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let len = data.len() as u64;
        for (start, count) in [
            (0, 1),
            (5, CHUNK),
            (0, CHUNK + 1),
            (CHUNK - 3, 2 * CHUNK + 5),
            (0, len),
            (len - 1, 1),
        ] {
            let got = collect(&path, start, count).await;
            assert_eq!(
                got,
                &data[start as usize..(start + count) as usize],
                "{start}+{count}"
            );
        }
        // A file shorter than the range asked: an error, never short data.
        let f = Arc::new(std::fs::File::open(&path).unwrap());
        match body(f, len - 2, 4) {
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof),
            Ok(_) => panic!("a short read answered"),
        }
    }
}

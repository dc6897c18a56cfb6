//! Resumable downloads of archive ranges (and of whole diff objects, which are the
//! range `[0, size)` of their object) into `ROOT/.ferry/staging/downloads/`.
//!
//! Each planned range goes to `<archive hex>-<start>-<end>.part`, renamed to its final
//! name once complete. A later run (after a crash or kill) reuses complete files and
//! resumes `.part` files from their length, so an interrupted update only fetches
//! what it had not yet received; a body that breaks off during a run is continued the
//! same way at once. Nothing here is trusted: callers verify every chunk.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use ferry_format::id::Digest;
use ferry_format::plan::FetchRange;
use futures_util::stream::{StreamExt, TryStreamExt};
use tokio::io::AsyncWriteExt;

use super::retry::{self, Policy};
use super::{FetchError, Transport};

/// Ranges fetched at the same time.
pub const PARALLEL: usize = 4;

/// The final file name of a downloaded range.
pub fn range_file(dir: &Path, archive: &Digest, r: &FetchRange) -> PathBuf {
    dir.join(format!("{}-{}-{}", archive.to_hex(), r.start, r.end))
}

/// Downloads every range of object `archive` not already complete in `dir`; `what`
/// names the object in errors. A body that breaks off is continued under `policy`.
pub async fn download(
    t: &dyn Transport,
    archive: &Digest,
    ranges: &[FetchRange],
    dir: &Path,
    what: &'static str,
    policy: Policy,
) -> Result<(), FetchError> {
    let path = ferry_format::layout::object_path(archive);
    futures_util::stream::iter(
        ranges
            .iter()
            .map(|r| fetch_one(t, &path, archive, r, dir, what, policy)),
    )
    .buffer_unordered(PARALLEL)
    .try_collect::<Vec<()>>()
    .await?;
    Ok(())
}

async fn fetch_one(
    t: &dyn Transport,
    path: &str,
    archive: &Digest,
    r: &FetchRange,
    dir: &Path,
    what: &'static str,
    policy: Policy,
) -> Result<(), FetchError> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| FetchError::Io { path: p, source }
    };
    let done = range_file(dir, archive, r);
    if let Ok(m) = tokio::fs::symlink_metadata(&done).await {
        // A range a build had consumed has holes where its bytes were (the build
        // gives them back as it goes): only a whole one is reused.
        if m.is_file() && m.len() == r.len() && held(&done) == r.len() {
            return Ok(());
        }
        tokio::fs::remove_file(&done).await.map_err(io(&done))?;
    }
    let mut part = done.clone().into_os_string();
    part.push(".part");
    let part = PathBuf::from(part);
    let mut have = match tokio::fs::symlink_metadata(&part).await {
        Ok(m) if m.is_file() => held(&part),
        Ok(_) => {
            tokio::fs::remove_file(&part).await.map_err(io(&part))?;
            0
        }
        Err(_) => 0,
    };
    if have > r.len() {
        tokio::fs::remove_file(&part).await.map_err(io(&part))?;
        have = 0;
    }
    // Appends continue after what is held, not after a hole.
    if let Ok(f) = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&part)
        && f.metadata().is_ok_and(|m| m.len() > have)
    {
        f.set_len(have).map_err(io(&part))?;
    }
    // A body that breaks off (reset, truncated) is continued from what the
    // `.part` file holds, under the retry policy; the count of failures in a row
    // restarts whenever bytes arrived, so a long download on a flaky link goes on as
    // long as it progresses. Errors of the request itself were already retried by
    // the transport and end the download.
    let mut failures = 0;
    let mut waited = std::time::Duration::ZERO;
    while have < r.len() {
        if have > 0 {
            tracing::info!("resuming {} at byte {have}", part.display());
        }
        let mut body = t
            .get(path, Some((r.start + have, r.end)), r.len() - have, what)
            .await?;
        let mut f = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&part)
            .await
            .map_err(io(&part))?;
        let mut got = 0u64;
        let mut broken = None;
        while let Some(piece) = body.next().await {
            match piece {
                Ok(bytes) => {
                    f.write_all(&bytes).await.map_err(io(&part))?;
                    got += bytes.len() as u64;
                    crash_point!("client::download::part_appended");
                }
                Err(e) if retry::body_may_resume(&e) => {
                    broken = Some(e);
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        // Not synced: a downloaded range is never trusted from disk (each chunk is
        // decompressed and hashed against its id when the tree is built), so bytes a
        // power cut lost only cost their download again; a kill -9 loses nothing
        // the kernel has. The tree built from it is synced as a whole.
        f.flush().await.map_err(io(&part))?;
        crash_point!("client::download::part_flushed");
        have += got;
        let Some(e) = broken else { break };
        failures = if got > 0 { 1 } else { failures + 1 };
        match policy.next_delay(failures, waited, None, retry::random()) {
            Ok(delay) => {
                tracing::warn!(
                    "{e}; continuing at byte {have} of {} in {:.1}s",
                    r.len(),
                    delay.as_secs_f64()
                );
                tokio::time::sleep(delay).await;
                waited += delay;
            }
            Err(give_up) => {
                tracing::warn!("{e}; {give_up}");
                return Err(e);
            }
        }
    }
    tokio::fs::rename(&part, &done).await.map_err(io(&done))?;
    crash_point!("client::download::range_complete");
    Ok(())
}

/// The bytes of the range file at `path` that can be resumed from: up to its first
/// hole (0 if it cannot be opened).
fn held(path: &Path) -> u64 {
    crate::fsutil::open_nofollow(path)
        .and_then(|f| crate::fsutil::first_hole(&f))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fetch::file::FileTransport;

    /// A repository holding `archive_bytes` as an object, and an empty downloads
    /// folder: the tempdir, the archive's name, the downloads folder, the repo's URL.
    fn repo_with(archive_bytes: &[u8]) -> (tempfile::TempDir, Digest, PathBuf, String) {
        let t = tempfile::tempdir().unwrap();
        let archive = Digest::of(archive_bytes);
        let obj = t
            .path()
            .join("repo")
            .join(ferry_format::layout::object_path(&archive));
        std::fs::create_dir_all(obj.parent().unwrap()).unwrap();
        std::fs::write(&obj, archive_bytes).unwrap();
        let dl = t.path().join("downloads");
        std::fs::create_dir_all(&dl).unwrap();
        let base = format!("file://{}", t.path().join("repo").display());
        (t, archive, dl, base)
    }

    #[test]
    fn a_range_a_build_gave_back_is_downloaded_again_from_its_first_hole() {
        let archive_bytes: Vec<u8> = (0..256 * 1024u32)
            .map(|i| (i * 7 + i / 251) as u8)
            .collect();
        let (_repo, archive, dl, base) = repo_with(&archive_bytes);
        let r = FetchRange {
            start: 0,
            end: 200 * 1024,
            first_chunk: 0,
            last_chunk: 1,
        };
        let tr = FileTransport::new(&base).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let get = || {
            rt.block_on(download(
                &tr,
                &archive,
                std::slice::from_ref(&r),
                &dl,
                "archive range",
                Policy::DEFAULT,
            ))
            .unwrap()
        };
        let punch = |path: &Path, len: u64| {
            let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
            crate::fsutil::punch_hole(&f, 0, len).unwrap();
            f.sync_all().unwrap();
            crate::fsutil::first_hole(&f).unwrap()
        };
        // A run killed while building had downloaded 160 KiB and given back the first
        // 64 KiB: it is fetched again from the start, not resumed after the hole.
        let done = range_file(&dl, &archive, &r);
        let mut part = done.clone().into_os_string();
        part.push(".part");
        let part = std::path::PathBuf::from(part);
        std::fs::write(&part, &archive_bytes[..160 * 1024]).unwrap();
        if punch(&part, 64 * 1024) != 0 {
            eprintln!("this filesystem keeps no holes: nothing to test");
            return;
        }
        get();
        assert_eq!(std::fs::read(&done).unwrap(), &archive_bytes[..200 * 1024]);
        let c = tr.counters();
        assert_eq!((c.requests(), c.bytes()), (1, 200 * 1024));

        // A complete range with a hole is not reused either.
        assert_eq!(punch(&done, 8 * 1024), 0);
        get();
        assert_eq!(std::fs::read(&done).unwrap(), &archive_bytes[..200 * 1024]);
        assert_eq!((c.requests(), c.bytes()), (2, 400 * 1024));
    }

    #[test]
    fn resumes_part_files_and_reuses_complete_ones() {
        let archive_bytes: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let (_repo, archive, dl, base) = repo_with(&archive_bytes);
        let r = FetchRange {
            start: 100,
            end: 600,
            first_chunk: 0,
            last_chunk: 1,
        };
        // A kill -9 left 200 bytes of this range behind.
        let done = range_file(&dl, &archive, &r);
        let mut part = done.clone().into_os_string();
        part.push(".part");
        std::fs::write(&part, &archive_bytes[100..300]).unwrap();

        let tr = FileTransport::new(&base).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(download(
            &tr,
            &archive,
            std::slice::from_ref(&r),
            &dl,
            "archive range",
            Policy::DEFAULT,
        ))
        .unwrap();
        assert_eq!(std::fs::read(&done).unwrap(), &archive_bytes[100..600]);
        let c = tr.counters();
        assert_eq!((c.requests(), c.bytes()), (1, 300), "only the missing tail");
        assert!(!std::path::Path::new(&part).exists());

        rt.block_on(download(
            &tr,
            &archive,
            &[r],
            &dl,
            "archive range",
            Policy::DEFAULT,
        ))
        .unwrap();
        assert_eq!(c.requests(), 1, "complete range reused without a request");
    }

    /// A transport whose first `breaks` bodies break off after `after` bytes with a
    /// connection error, as a reset connection does.
    struct Flaky {
        inner: FileTransport,
        breaks: std::sync::atomic::AtomicU32,
        after: usize,
        asked: std::sync::Mutex<Vec<(u64, u64)>>,
    }

    impl Transport for Flaky {
        fn get<'a>(
            &'a self,
            path: &'a str,
            range: Option<(u64, u64)>,
            max_len: u64,
            what: &'static str,
        ) -> futures_util::future::BoxFuture<'a, Result<crate::fetch::Body, FetchError>> {
            Box::pin(async move {
                self.asked.lock().unwrap().push(range.unwrap());
                let body =
                    crate::fetch::read_all(self.inner.get(path, range, max_len, what).await?)
                        .await?;
                let broken = self
                    .breaks
                    .fetch_update(
                        std::sync::atomic::Ordering::SeqCst,
                        std::sync::atomic::Ordering::SeqCst,
                        |n| n.checked_sub(1),
                    )
                    .is_ok();
                let mut pieces = vec![Ok(body[..self.after.min(body.len())].to_vec())];
                if broken {
                    pieces.push(Err(FetchError::Request {
                        url: "u".into(),
                        reason: "connection reset by peer".into(),
                    }));
                } else {
                    pieces.push(Ok(body[self.after.min(body.len())..].to_vec()));
                }
                Ok(futures_util::stream::iter(pieces).boxed())
            })
        }

        fn counters(&self) -> std::sync::Arc<crate::fetch::Counters> {
            self.inner.counters()
        }

        fn url(&self, path: &str) -> String {
            self.inner.url(path)
        }
    }

    #[test]
    fn a_body_that_breaks_off_is_continued_from_the_bytes_received() {
        let archive_bytes: Vec<u8> = (0..1000u32).map(|i| (i * 13) as u8).collect();
        let (_repo, archive, dl, base) = repo_with(&archive_bytes);
        let r = FetchRange {
            start: 100,
            end: 900,
            first_chunk: 0,
            last_chunk: 1,
        };
        let tr = Flaky {
            inner: FileTransport::new(&base).unwrap(),
            breaks: 3.into(),
            after: 150,
            asked: Default::default(),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(download(
            &tr,
            &archive,
            std::slice::from_ref(&r),
            &dl,
            "archive range",
            Policy::DEFAULT,
        ))
        .unwrap();
        assert_eq!(
            std::fs::read(range_file(&dl, &archive, &r)).unwrap(),
            &archive_bytes[100..900]
        );
        assert_eq!(
            *tr.asked.lock().unwrap(),
            [(100, 900), (250, 900), (400, 900), (550, 900)],
            "each retry asks only for the bytes not yet received"
        );
    }
}

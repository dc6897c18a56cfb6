//! A repository in object storage (S3 and S3-compatible services) through the
//! `object_store` crate: the layout paths of FORMAT.md §7 become keys under the URL's
//! prefix.
//!
//! Writes follow the repository's rules with what object storage offers instead of
//! renames and locks: immutable things (objects, head log entries, key lists) are
//! created with a conditional put that fails when the key exists (`If-None-Match: *`),
//! and a channel head is replaced with a compare-and-swap on the ETag it had when it
//! was read (`If-Match`), or created with `If-None-Match: *` for a new channel.
//! Everything carries the `Content-Type` and `Cache-Control` a client of the bucket's
//! own HTTP endpoint (or a CDN in front of it) needs.

use std::collections::HashMap;
use std::future::Future;
use std::io::{self, Read};
use std::ops::Range;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path as Key;
use object_store::{
    Attribute, Attributes, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutMode,
    PutMultipartOptions, PutOptions, PutPayload, UpdateVersion, WriteMultipart,
};

use super::cache::DiskCache;
use super::location::{ObjectUrl, Service};
use super::{Caching, Expected, Placed, StoreOption, Swapped};
use crate::error::{Error, Result, io_err};
use crate::publish::progress::Progress;

/// Objects up to this size go up in one conditional `PUT`; larger ones as a multipart
/// upload, a part at a time, so memory stays bounded whatever the archive's size.
const SINGLE_PUT_MAX: u64 = 16 << 20;
/// Part size of multipart uploads (S3 wants at least 5 MiB per part but the last).
const PART_SIZE: usize = 8 << 20;
/// An object a publish finds already stored is written again when it is older than
/// this, so that its time shows `gc` it is in use again (a bucket has no way to touch
/// an object); `gc --grace` must exceed it plus a publish's duration (docs/STORAGE.md).
pub const REFRESH_AFTER: std::time::Duration = std::time::Duration::from_secs(3600);
/// Parts in flight at once during a multipart upload.
const PARTS_IN_FLIGHT: usize = 4;

/// A bucket (and key prefix) holding a repository.
///
/// Every request runs on the store's own small runtime, whatever runtime (or plain
/// thread) asks: the HTTP client keeps connections in a pool, and a pooled connection
/// is served by a task of the runtime that opened it, so requests made from two
/// runtimes (the command line's, `serve`'s) would hang on connections whose runtime
/// no longer runs. Response bodies are then read from anywhere.
pub struct ObjectRepo {
    inner: Arc<dyn ObjectStore>,
    url: ObjectUrl,
    /// Taken out only when dropped (see `Drop`).
    rt: Option<tokio::runtime::Runtime>,
    /// `serve --cache-dir`: local copies of objects.
    cache: OnceLock<Arc<DiskCache>>,
    /// The first bytes of objects `serve` looked at (their kind, for metrics).
    magic: Mutex<HashMap<String, Option<[u8; 4]>>>,
}

/// Most object kinds remembered before the memory is cleared.
const MAGIC_MEMORY: usize = 1 << 16;

impl std::fmt::Debug for ObjectRepo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectRepo")
            .field("url", &self.url)
            .finish()
    }
}

impl ObjectRepo {
    /// Configures the client from the standard environment (`AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL`/`AWS_ENDPOINT`,
    /// `AWS_ALLOW_HTTP`, `AWS_VIRTUAL_HOSTED_STYLE_REQUEST`...) and then `options`
    /// (`--store-option`), which win. Nothing is contacted yet.
    pub fn open(url: &ObjectUrl, options: &[StoreOption]) -> Result<ObjectRepo> {
        // The workspace builds rustls with the ring provider only; the HTTP client
        // needs it installed before it is built. One already installed is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let bad = |reason: String| Error::StoreConfig {
            url: url.to_string(),
            reason,
        };
        let inner: Arc<dyn ObjectStore> = match url.service {
            Service::S3 => {
                let mut b = AmazonS3Builder::from_env().with_bucket_name(&url.bucket);
                for o in options {
                    let key: AmazonS3ConfigKey = o.key.parse().map_err(|_| {
                        bad(format!(
                            "--store-option {}: not an S3 setting (for example endpoint, region, \
                             allow_http, virtual_hosted_style_request)",
                            o.key
                        ))
                    })?;
                    b = b.with_config(key, &o.value);
                }
                // A region is needed to sign requests; S3-compatible servers accept any.
                if b.get_config_value(&AmazonS3ConfigKey::Region).is_none() {
                    b = b.with_region("us-east-1");
                }
                Arc::new(b.build().map_err(|e| bad(e.to_string()))?)
            }
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("ferry-store")
            .enable_all()
            .build()
            .map_err(io_err("start", Path::new("the object store's runtime")))?;
        Ok(ObjectRepo {
            inner,
            url: url.clone(),
            rt: Some(rt),
            cache: OnceLock::new(),
            magic: Mutex::new(HashMap::new()),
        })
    }

    pub fn url(&self) -> &ObjectUrl {
        &self.url
    }

    /// Sets the disk cache (once; later calls are ignored).
    pub fn set_cache(&self, cache: DiskCache) {
        let _ = self.cache.set(Arc::new(cache));
    }

    pub fn cache(&self) -> Option<&Arc<DiskCache>> {
        self.cache.get()
    }

    /// The first 4 bytes of `rel` (see [`super::Store::magic`]).
    pub async fn magic(&self, rel: &str) -> io::Result<Option<[u8; 4]>> {
        if let Some(m) = self.lock_magic().get(rel) {
            return Ok(*m);
        }
        let mut body = self.stream(rel, 0..4).await?;
        let mut head = Vec::with_capacity(4);
        while let Some(chunk) = body.next().await {
            head.extend_from_slice(&chunk?);
        }
        let m = <[u8; 4]>::try_from(&head[..head.len().min(4)]).ok();
        let mut memory = self.lock_magic();
        if memory.len() >= MAGIC_MEMORY {
            memory.clear();
        }
        memory.insert(rel.to_string(), m);
        Ok(m)
    }

    fn lock_magic(&self) -> std::sync::MutexGuard<'_, HashMap<String, Option<[u8; 4]>>> {
        self.magic.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The key of the layout path `rel`.
    fn key(&self, rel: &str) -> Key {
        if self.url.prefix.is_empty() {
            Key::from(rel)
        } else {
            Key::from(format!("{}/{rel}", self.url.prefix))
        }
    }

    /// The layout path of `key` (the inverse of [`Self::key`]).
    fn rel<'k>(&self, key: &'k Key) -> Option<&'k str> {
        let s = key.as_ref();
        if self.url.prefix.is_empty() {
            return Some(s);
        }
        s.strip_prefix(self.url.prefix.as_str())?.strip_prefix('/')
    }

    fn err(&self, action: &'static str, rel: &str) -> impl FnOnce(object_store::Error) -> Error {
        let url = format!("{}/{rel}", self.url);
        move |source| Error::Store {
            action,
            url,
            reason: crate::error::root_cause(&source),
        }
    }

    fn rt(&self) -> &tokio::runtime::Runtime {
        // Only `Drop` takes it out.
        self.rt
            .as_ref()
            .expect("the store's runtime lives as long as the store")
    }

    /// Runs `f` to completion from synchronous code: on the current runtime when
    /// called from one of its blocking threads (`spawn_blocking`), else on the
    /// store's. The requests inside run on the store's runtime either way.
    pub fn block_on<F: Future>(&self, f: F) -> F::Output {
        match tokio::runtime::Handle::try_current() {
            Ok(h) => h.block_on(f),
            Err(_) => self.rt().block_on(f),
        }
    }

    /// Runs a request on the store's runtime.
    async fn run<T: Send + 'static>(
        &self,
        f: impl Future<Output = T> + Send + 'static,
    ) -> io::Result<T> {
        self.rt()
            .spawn(f)
            .await
            .map_err(|e| io::Error::other(format!("an object store request stopped: {e}")))
    }

    fn stopped(&self, rel: &str) -> impl FnOnce(io::Error) -> Error {
        let url = format!("{}/{rel}", self.url);
        move |e| Error::Store {
            action: "finish a request to",
            url,
            reason: e.to_string(),
        }
    }

    /// The bytes and ETag of `rel`, if it exists; at most `limit` bytes.
    pub async fn get_small(
        &self,
        rel: &str,
        limit: u64,
    ) -> Result<Option<(Vec<u8>, Option<String>)>> {
        let (inner, key) = (self.inner.clone(), self.key(rel));
        let got = self
            .run(async move {
                let r = inner.get(&key).await?;
                if r.meta.size > limit {
                    return Ok(Err(r.meta.size));
                }
                let e_tag = r.meta.e_tag.clone();
                Ok(Ok((r.bytes().await?, e_tag)))
            })
            .await
            .map_err(self.stopped(rel))?;
        match got {
            Ok(Ok((bytes, e_tag))) => Ok(Some((bytes.to_vec(), e_tag))),
            Ok(Err(size)) => Err(Error::Unsupported {
                path: format!("{}/{rel}", self.url).into(),
                reason: format!("{size} bytes, more than the {limit} allowed"),
            }),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err("read", rel)(e)),
        }
    }

    /// The size and last-written time of `rel`, if it exists (one `HEAD`).
    async fn meta(&self, rel: &str) -> Result<Option<(u64, std::time::SystemTime)>> {
        let (inner, key) = (self.inner.clone(), self.key(rel));
        let head = self
            .run(async move { inner.head(&key).await })
            .await
            .map_err(self.stopped(rel))?;
        match head {
            Ok(m) => Ok(Some((m.size, std::time::SystemTime::from(m.last_modified)))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err("look up", rel)(e)),
        }
    }

    /// The size of `rel`, if it exists.
    pub async fn len(&self, rel: &str) -> Result<Option<u64>> {
        Ok(self.meta(rel).await?.map(|(size, _)| size))
    }

    /// Bytes `range` of `rel` as a stream (nothing is buffered beyond one network read).
    pub async fn stream(
        &self,
        rel: &str,
        range: Range<u64>,
    ) -> io::Result<BoxStream<'static, io::Result<Bytes>>> {
        if range.is_empty() {
            return Ok(futures_util::stream::empty().boxed());
        }
        let opts = GetOptions {
            range: Some(GetRange::Bounded(range)),
            ..GetOptions::default()
        };
        let (inner, key) = (self.inner.clone(), self.key(rel));
        match self
            .run(async move { inner.get_opts(&key, opts).await })
            .await?
        {
            Ok(r) => Ok(r.into_stream().map_err(io::Error::other).boxed()),
            Err(object_store::Error::NotFound { .. }) => Err(io::ErrorKind::NotFound.into()),
            Err(e) => Err(io::Error::other(e)),
        }
    }

    /// Creates `rel` with `bytes` unless it exists (then it is left alone).
    pub async fn put_new(&self, rel: &str, bytes: Bytes, caching: Caching) -> Result<Placed> {
        let opts = PutOptions {
            mode: PutMode::Create,
            attributes: attributes(caching),
            ..PutOptions::default()
        };
        let (inner, key) = (self.inner.clone(), self.key(rel));
        let bytes_again = bytes.clone();
        let put = self
            .run(async move { inner.put_opts(&key, PutPayload::from(bytes), opts).await })
            .await
            .map_err(self.stopped(rel))?;
        match put {
            Ok(_) => Ok(Placed::Created),
            Err(object_store::Error::AlreadyExists { .. }) => {
                if caching == Caching::Immutable && is_old(self.modified(rel).await?) {
                    self.rewrite(rel, bytes_again, caching).await?;
                }
                Ok(Placed::Existed)
            }
            Err(e) => Err(self.err("write", rel)(e)),
        }
    }

    /// The time `rel` was last written, if it exists.
    pub async fn modified(&self, rel: &str) -> Result<Option<std::time::SystemTime>> {
        Ok(self.meta(rel).await?.map(|(_, time)| time))
    }

    /// Writes `rel` again with the bytes it holds (content-addressed: readers see the
    /// same bytes before and after), which renews its time.
    async fn rewrite(&self, rel: &str, bytes: Bytes, caching: Caching) -> Result<()> {
        let opts = PutOptions {
            mode: PutMode::Overwrite,
            attributes: attributes(caching),
            ..PutOptions::default()
        };
        let (inner, key) = (self.inner.clone(), self.key(rel));
        self.run(async move { inner.put_opts(&key, PutPayload::from(bytes), opts).await })
            .await
            .map_err(self.stopped(rel))?
            .map_err(self.err("write", rel))?;
        Ok(())
    }

    /// Creates `rel` from the file `path` (of `size` bytes) unless it exists. Small
    /// files go up in one conditional `PUT`; larger ones, after a look-up that finds
    /// no such key, as a multipart upload — conditional multipart completion is not
    /// offered by every S3-compatible service, and two uploads of a content-addressed
    /// name carry the same bytes anyway. What is sent is counted in `progress`.
    pub async fn put_new_file(
        &self,
        rel: &str,
        path: &Path,
        size: u64,
        caching: Caching,
        progress: &Progress,
    ) -> Result<Placed> {
        if size <= SINGLE_PUT_MAX {
            let bytes = tokio::fs::read(path).await.map_err(io_err("read", path))?;
            let placed = self.put_new(rel, Bytes::from(bytes), caching).await?;
            match placed {
                Placed::Created => progress.uploaded(size),
                Placed::Existed => progress.upload_skipped(size),
            }
            return Ok(placed);
        }
        let stored = self.meta(rel).await?;
        let existed = stored.is_some_and(|(len, _)| len == size);
        if existed && !is_old(stored.map(|(_, time)| time)) {
            progress.upload_skipped(size);
            return Ok(Placed::Existed);
        }
        let progress = progress.clone();
        let opts = PutMultipartOptions {
            attributes: attributes(caching),
            ..PutMultipartOptions::default()
        };
        let (inner, key) = (self.inner.clone(), self.key(rel));
        let (url, path) = (format!("{}/{rel}", self.url), path.to_path_buf());
        let store_err = move |action| {
            let url = url.clone();
            move |e: object_store::Error| Error::Store {
                action,
                url,
                reason: crate::error::root_cause(&e),
            }
        };
        self.run(async move {
            let upload = inner
                .put_multipart_opts(&key, opts)
                .await
                .map_err(store_err("start uploading"))?;
            let mut w = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
            let sent: Result<()> = async {
                let mut file = std::fs::File::open(&path).map_err(io_err("open", &path))?;
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let n = file.read(&mut buf).map_err(io_err("read", &path))?;
                    if n == 0 {
                        return Ok(());
                    }
                    w.wait_for_capacity(PARTS_IN_FLIGHT)
                        .await
                        .map_err(store_err("upload"))?;
                    w.write(&buf[..n]);
                    // Counted once taken: the wait above keeps what is taken within
                    // a few parts of what went out.
                    progress.uploaded(n as u64);
                }
            }
            .await;
            if let Err(e) = sent {
                let _ = w.abort().await;
                return Err(e);
            }
            w.finish().await.map_err(store_err("finish uploading"))?;
            Ok(if existed {
                Placed::Existed
            } else {
                Placed::Created
            })
        })
        .await
        .map_err(self.stopped(rel))?
    }

    /// Replaces (or creates) `rel` with `bytes` only if it is still what was read
    /// (`expected`). A conditional request that is retried after its first attempt
    /// landed fails its condition against its own write, so a failed condition is
    /// checked by reading the key back: holding `bytes` means this write won.
    pub async fn swap(
        &self,
        rel: &str,
        bytes: &[u8],
        expected: &Expected,
        limit: u64,
    ) -> Result<Swapped> {
        let mode = match expected {
            Expected::Absent => PutMode::Create,
            Expected::ETag(tag) => PutMode::Update(UpdateVersion {
                e_tag: Some(tag.clone()),
                version: None,
            }),
            Expected::Bytes(_) => {
                return Err(Error::StoreConfig {
                    url: self.url.to_string(),
                    reason: "a head read from a folder cannot be swapped in a bucket".into(),
                });
            }
        };
        let opts = PutOptions {
            mode,
            attributes: attributes(Caching::Short),
            ..PutOptions::default()
        };
        let payload = PutPayload::from(Bytes::copy_from_slice(bytes));
        let (inner, key) = (self.inner.clone(), self.key(rel));
        let put = self
            .run(async move { inner.put_opts(&key, payload, opts).await })
            .await
            .map_err(self.stopped(rel))?;
        match put {
            Ok(_) => Ok(Swapped::Done),
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => match self.get_small(rel, limit).await? {
                Some((now, _)) if now == bytes => Ok(Swapped::Done),
                now => Ok(Swapped::Lost(now.map(|(b, _)| b))),
            },
            Err(e) => Err(self.err("write", rel)(e)),
        }
    }

    /// The names directly under the folder `dir` (a layout path, no trailing slash):
    /// sub-folders and objects with their sizes.
    pub async fn list(&self, dir: &str) -> Result<(Vec<String>, Vec<(String, u64)>)> {
        let (inner, key) = (self.inner.clone(), self.key(dir));
        let listed = self
            .run(async move { inner.list_with_delimiter(Some(&key)).await })
            .await
            .map_err(self.stopped(dir))?
            .map_err(self.err("list", dir))?;
        let name = |k: &Key| {
            self.rel(k)
                .and_then(|r| r.strip_prefix(dir))
                .map(|r| r.trim_matches('/').to_string())
                .filter(|n| !n.is_empty() && !n.contains('/'))
        };
        let dirs = listed.common_prefixes.iter().filter_map(name).collect();
        let files = listed
            .objects
            .iter()
            .filter_map(|m| Some((name(&m.location)?, m.size)))
            .collect();
        Ok((dirs, files))
    }

    /// Every key under the folder `dir` (a layout path), at any depth, as layout paths
    /// with their sizes and when they were last written.
    pub async fn list_all(&self, dir: &str) -> Result<Vec<(String, u64, std::time::SystemTime)>> {
        let (inner, key) = (self.inner.clone(), self.key(dir));
        let listed: Vec<object_store::ObjectMeta> = self
            .run(async move { inner.list(Some(&key)).try_collect().await })
            .await
            .map_err(self.stopped(dir))?
            .map_err(self.err("list", dir))?;
        Ok(listed
            .into_iter()
            .filter_map(|m| {
                let rel = self.rel(&m.location)?.to_string();
                Some((rel, m.size, std::time::SystemTime::from(m.last_modified)))
            })
            .collect())
    }

    /// Deletes `rel` (gone already is fine).
    pub async fn delete(&self, rel: &str) -> Result<()> {
        let (inner, key) = (self.inner.clone(), self.key(rel));
        let deleted = self
            .run(async move { inner.delete(&key).await })
            .await
            .map_err(self.stopped(rel))?;
        match deleted {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err("delete", rel)(e)),
        }
    }
}

impl Drop for ObjectRepo {
    fn drop(&mut self) {
        // Dropping a runtime waits for its tasks, which an async context forbids;
        // `serve` drops the store inside one. Nothing is left to wait for here.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// The HTTP metadata every key is written with: clients may read the bucket straight
/// over HTTP (or through a CDN), so the caching rules travel with the objects.
fn attributes(caching: Caching) -> Attributes {
    let mut a = Attributes::new();
    a.insert(Attribute::ContentType, super::CONTENT_TYPE.into());
    a.insert(Attribute::CacheControl, caching.header().into());
    a
}

/// Whether an object last written at `time` should be written again to renew its time
/// (see [`REFRESH_AFTER`]); one gone meanwhile (`None`) is, which restores it.
fn is_old(time: Option<std::time::SystemTime>) -> bool {
    time.and_then(|t| t.elapsed().ok())
        .is_none_or(|age| age > REFRESH_AFTER)
}

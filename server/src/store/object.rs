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

/// Objects up to this size go up in one conditional `PUT`; larger ones as a multipart
/// upload, a part at a time, so memory stays bounded whatever the archive's size.
const SINGLE_PUT_MAX: u64 = 16 << 20;
/// Part size of multipart uploads (S3 wants at least 5 MiB per part but the last).
const PART_SIZE: usize = 8 << 20;
/// Parts in flight at once during a multipart upload.
const PARTS_IN_FLIGHT: usize = 4;

/// A bucket (and key prefix) holding a repository.
pub struct ObjectRepo {
    inner: Arc<dyn ObjectStore>,
    url: ObjectUrl,
    /// For callers outside any tokio runtime (the command line): made on first use.
    rt: OnceLock<tokio::runtime::Runtime>,
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
        Ok(ObjectRepo {
            inner,
            url: url.clone(),
            rt: OnceLock::new(),
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

    /// Runs `f` to completion from synchronous code: on the current runtime when
    /// called from one of its blocking threads (`spawn_blocking`), else on a runtime
    /// of this store's own.
    pub fn block_on<F: Future>(&self, f: F) -> F::Output {
        match tokio::runtime::Handle::try_current() {
            Ok(h) => h.block_on(f),
            Err(_) => self
                .rt
                .get_or_init(|| {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("a tokio runtime starts") // only fails without OS resources
                })
                .block_on(f),
        }
    }

    /// The bytes and ETag of `rel`, if it exists; at most `limit` bytes.
    pub async fn get_small(
        &self,
        rel: &str,
        limit: u64,
    ) -> Result<Option<(Vec<u8>, Option<String>)>> {
        let r = match self.inner.get(&self.key(rel)).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.err("read", rel)(e)),
        };
        if r.meta.size > limit {
            return Err(Error::Unsupported {
                path: format!("{}/{rel}", self.url).into(),
                reason: format!("{} bytes, more than the {limit} allowed", r.meta.size),
            });
        }
        let e_tag = r.meta.e_tag.clone();
        let bytes = r.bytes().await.map_err(self.err("read", rel))?;
        Ok(Some((bytes.to_vec(), e_tag)))
    }

    /// The size of `rel`, if it exists.
    pub async fn len(&self, rel: &str) -> Result<Option<u64>> {
        match self.inner.head(&self.key(rel)).await {
            Ok(m) => Ok(Some(m.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err("look up", rel)(e)),
        }
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
        match self.inner.get_opts(&self.key(rel), opts).await {
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
        match self
            .inner
            .put_opts(&self.key(rel), PutPayload::from(bytes), opts)
            .await
        {
            Ok(_) => Ok(Placed::Created),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(Placed::Existed),
            Err(e) => Err(self.err("write", rel)(e)),
        }
    }

    /// Creates `rel` from the file `path` (of `size` bytes) unless it exists. Small
    /// files go up in one conditional `PUT`; larger ones, after a look-up that finds
    /// no such key, as a multipart upload — conditional multipart completion is not
    /// offered by every S3-compatible service, and two uploads of a content-addressed
    /// name carry the same bytes anyway.
    pub async fn put_new_file(
        &self,
        rel: &str,
        path: &Path,
        size: u64,
        caching: Caching,
    ) -> Result<Placed> {
        if size <= SINGLE_PUT_MAX {
            let bytes = tokio::fs::read(path).await.map_err(io_err("read", path))?;
            return self.put_new(rel, Bytes::from(bytes), caching).await;
        }
        if self.len(rel).await? == Some(size) {
            return Ok(Placed::Existed);
        }
        let opts = PutMultipartOptions {
            attributes: attributes(caching),
            ..PutMultipartOptions::default()
        };
        let upload = self
            .inner
            .put_multipart_opts(&self.key(rel), opts)
            .await
            .map_err(self.err("start uploading", rel))?;
        let mut w = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let mut file = std::fs::File::open(path).map_err(io_err("open", path))?;
        let mut buf = vec![0u8; 1 << 20];
        let sent: Result<()> = async {
            loop {
                let n = file.read(&mut buf).map_err(io_err("read", path))?;
                if n == 0 {
                    return Ok(());
                }
                w.wait_for_capacity(PARTS_IN_FLIGHT)
                    .await
                    .map_err(self.err("upload", rel))?;
                w.write(&buf[..n]);
            }
        }
        .await;
        if let Err(e) = sent {
            let _ = w.abort().await;
            return Err(e);
        }
        w.finish()
            .await
            .map_err(self.err("finish uploading", rel))?;
        Ok(Placed::Created)
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
        match self.inner.put_opts(&self.key(rel), payload, opts).await {
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
        let listed = self
            .inner
            .list_with_delimiter(Some(&self.key(dir)))
            .await
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

    /// Deletes `rel` (gone already is fine).
    pub async fn delete(&self, rel: &str) -> Result<()> {
        match self.inner.delete(&self.key(rel)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err("delete", rel)(e)),
        }
    }

    /// Lists every key under the folder `dir`, recursively, as layout paths.
    pub async fn list_all(&self, dir: &str) -> Result<Vec<(String, u64)>> {
        let key = self.key(dir);
        let mut out = Vec::new();
        let mut items = self.inner.list(Some(&key));
        while let Some(m) = items.next().await {
            let m = m.map_err(self.err("list", dir))?;
            if let Some(rel) = self.rel(&m.location) {
                out.push((rel.to_string(), m.size));
            }
        }
        Ok(out)
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

//! Where a repository lives: a local folder (the embedded default) or a bucket in
//! object storage (`--repo s3://bucket/prefix`).
//!
//! [`Store`] offers the few operations the server needs on both, with the same rules:
//! objects and head log entries are written once (put-if-absent), and a channel head is
//! replaced only by a compare-and-swap against the head the writer read, after
//! everything it names — so a crash leaves no head naming a missing object, and of two
//! writers racing on one channel exactly one wins; the other re-bases on the new head
//! or fails naming the conflict, never reporting success without its change.
//!
//! - On a folder the swap is the channel lock ([`Repo::lock_channel`]) around "read,
//!   compare, rename", and the commands work on the folder directly, as always.
//! - In a bucket the swap is a conditional `PUT` ([`object`]). Commands that compute
//!   over many files (publish, rollout, audit...) run unchanged on a *working copy*
//!   (`stage.rs`): the keys, heads and objects they read are mirrored into a temporary
//!   folder, the command runs there, and what it added is sent back in the
//!   repository's write order, the head last with a compare-and-swap.
//! - `serve` reads objects from either ([`Store::open_read`]), from a bucket through
//!   an optional local disk cache of immutable objects ([`cache`]).

pub mod cache;
pub mod location;
pub mod object;
mod stage;

use std::io;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use ferry_format::envelope::ObjectKind;
use ferry_format::id::Digest;
use ferry_format::keys::SecretKey;
use ferry_format::layout::{head_path, object_path};
use tempfile::NamedTempFile;

use crate::error::{Error, Result, io_err};
use crate::fsutil::{self, DIR_MODE, FILE_MODE, Place};
use crate::repo::Repo;
pub use location::Location;
use object::ObjectRepo;

/// `Content-Type` of every repository file: signed binary envelopes.
pub const CONTENT_TYPE: &str = "application/octet-stream";
/// Objects and head log entries never change: any cache may keep them forever.
pub const IMMUTABLE_CACHE: &str = "public, max-age=31536000, immutable";
/// Heads change with every publish: a short lifetime bounds how stale a cache can be,
/// and a stale copy must be checked again, never served past it.
pub const SHORT_CACHE: &str = "public, max-age=10, must-revalidate";

/// How HTTP caches may keep a key written to a bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caching {
    Immutable,
    Short,
}

impl Caching {
    pub fn header(self) -> &'static str {
        match self {
            Caching::Immutable => IMMUTABLE_CACHE,
            Caching::Short => SHORT_CACHE,
        }
    }
}

/// What a put-if-absent did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placed {
    Created,
    /// The name existed: left alone (content-addressed names hold the same bytes).
    Existed,
}

/// What a head compare-and-swap did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Swapped {
    Done,
    /// The head was no longer the one read; here is what it is now.
    Lost(Option<Vec<u8>>),
}

/// The head a writer read, which a swap must still find.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expected {
    /// No head: the channel is new.
    Absent,
    /// The head's ETag in a bucket.
    ETag(String),
    /// The hash of the head's bytes in a folder.
    Bytes(Digest),
}

/// One `--store-option KEY=VALUE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreOption {
    pub key: String,
    pub value: String,
}

impl StoreOption {
    /// clap's value parser. Secrets are refused: a command line is visible to every
    /// user of the machine (`ps`), the environment is not.
    pub fn parse(s: &str) -> Result<StoreOption, String> {
        let (key, value) = s.split_once('=').ok_or_else(|| {
            format!("{s:?}: expected KEY=VALUE, like endpoint=http://127.0.0.1:8333")
        })?;
        let key = key.trim().to_ascii_lowercase();
        if key.contains("secret") || key.contains("token") || key.contains("access_key") {
            return Err(format!(
                "{key}: pass credentials in the environment (AWS_ACCESS_KEY_ID, \
                 AWS_SECRET_ACCESS_KEY), not on the command line"
            ));
        }
        Ok(StoreOption {
            key,
            value: value.trim().to_string(),
        })
    }
}

/// What a command reads of a repository in a bucket before it runs (a folder is read
/// in place).
#[derive(Clone, Copy)]
pub enum Mirror<'a> {
    /// The key lists.
    Keys,
    /// The key lists and the head of one channel, or of every channel.
    Heads(Option<&'a str>),
    /// What `ls` reads: the key lists, the head of one channel or of every channel,
    /// and the manifests of the releases the heads list.
    Listing(Option<&'a str>),
    /// The key lists, every head and every head log entry.
    Logs,
    /// What `publish` reads: the key lists, the channel's head, its current release
    /// (manifest and archive) and the releases diffs are made from.
    Release {
        channel: &'a str,
        key: &'a SecretKey,
        diff_bases: &'a crate::publish::bases::DiffBases,
        /// Counts what is fetched and sent back, for publish's progress display.
        progress: &'a crate::publish::progress::Progress,
    },
}

/// A repository: a folder or a bucket.
#[derive(Clone, Debug)]
pub enum Store {
    Local(Repo),
    Object(Arc<ObjectRepo>),
}

/// A stream of a response body's chunks. `Sync` (hyper's boxed bodies need it)
/// although the streams of the HTTP client are not: see [`Exclusive`].
pub type ByteStream =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = io::Result<Bytes>> + Send + Sync>>;

/// Makes a `Send` stream `Sync`: polling takes `&mut self`, so the mutex is only ever
/// reached through `get_mut` and never locked.
pub struct Exclusive<S>(std::sync::Mutex<S>);

impl<S> Exclusive<S> {
    pub fn new(s: S) -> Self {
        Exclusive(std::sync::Mutex::new(s))
    }
}

impl<S: futures_util::Stream + Unpin> futures_util::Stream for Exclusive<S> {
    type Item = S::Item;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let inner = self
            .get_mut()
            .0
            .get_mut()
            .unwrap_or_else(|p| p.into_inner());
        std::pin::Pin::new(inner).poll_next(cx)
    }
}

/// See [`Store::working_copy`].
pub struct WorkingCopy {
    repo: Repo,
    _dir: Option<tempfile::TempDir>,
}

impl WorkingCopy {
    pub fn repo(&self) -> &Repo {
        &self.repo
    }
}

/// An immutable file opened for `serve`.
pub enum Immutable {
    /// A local file: the folder's, or the cache's copy of a bucket's object. A
    /// blocking handle: it is read with `pread` on the blocking pool, one hop per
    /// read, not through `tokio::fs` (a hop per open, stat, seek and read).
    File(std::fs::File),
    /// In the bucket: read with [`Store::open_read`] once the range is known.
    Remote,
}

impl Store {
    /// Opens the repository `--repo` names; a bucket is configured from the
    /// environment and `options`. Nothing is read yet.
    pub fn open(location: &Location, options: &[StoreOption]) -> Result<Store> {
        match location {
            Location::Local(path) => {
                if !options.is_empty() {
                    return Err(Error::StoreConfig {
                        url: path.display().to_string(),
                        reason: "--store-option configures object storage; this --repo is a \
                                 local folder"
                            .into(),
                    });
                }
                Ok(Store::Local(Repo::new(path)))
            }
            Location::Object(url) => Ok(Store::Object(Arc::new(ObjectRepo::open(url, options)?))),
        }
    }

    /// The folder repository at `path`.
    pub fn folder(path: impl Into<std::path::PathBuf>) -> Store {
        Store::Local(Repo::new(path))
    }

    /// The folder path or the URL, for messages.
    pub fn name(&self) -> String {
        match self {
            Store::Local(r) => r.root().display().to_string(),
            Store::Object(o) => o.url().to_string(),
        }
    }

    /// Runs a command that only reads, on the folder or on a working copy of what
    /// `mirror` names.
    pub fn read<T>(&self, mirror: Mirror<'_>, f: impl FnOnce(&Repo) -> Result<T>) -> Result<T> {
        match self {
            Store::Local(repo) => f(repo),
            Store::Object(o) => stage::read(o, mirror, f),
        }
    }

    /// Runs a command that writes. On a folder it runs in place (its channel lock
    /// orders writers). In a bucket it runs on a working copy whose additions are then
    /// sent back, the heads last with a compare-and-swap; when another writer moved a
    /// head meanwhile, the command runs again on the new head (a few times at most,
    /// then it fails naming the conflict), as a second local writer does once it gets
    /// the lock.
    pub fn write<T>(&self, mirror: Mirror<'_>, f: impl FnMut(&Repo) -> Result<T>) -> Result<T> {
        match self {
            Store::Local(repo) => {
                let mut f = f;
                f(repo)
            }
            Store::Object(o) => stage::write(o, mirror, f),
        }
    }

    /// A folder holding what `mirror` names, to read with the folder functions: the
    /// repository itself, or a copy of the bucket's files (dropped with the value).
    pub fn working_copy(&self, mirror: Mirror<'_>) -> Result<WorkingCopy> {
        match self {
            Store::Local(repo) => Ok(WorkingCopy {
                repo: repo.clone(),
                _dir: None,
            }),
            Store::Object(o) => {
                let (dir, repo) = stage::copy(o, mirror)?;
                Ok(WorkingCopy {
                    repo,
                    _dir: Some(dir),
                })
            }
        }
    }

    /// `text` about `repo` (the folder, or a working copy of the bucket) with the
    /// working copy's paths replaced by the bucket's URL.
    pub fn relocate(&self, repo: &Repo, text: String) -> String {
        match self {
            Store::Local(_) => text,
            Store::Object(o) => {
                text.replace(&repo.root().display().to_string(), &o.url().to_string())
            }
        }
    }

    /// Reads the small file `rel` (a head or key list) of at most `limit` bytes.
    pub async fn read_small(&self, rel: &str, limit: u64) -> Result<Option<Vec<u8>>> {
        match self {
            Store::Local(repo) => {
                let path = repo.root().join(rel);
                blocking(move || fsutil::read_limited(&path, limit)).await
            }
            Store::Object(o) => Ok(o.get_small(rel, limit).await?.map(|(b, _)| b)),
        }
    }

    /// The head of `channel` and what a swap of it must find.
    pub async fn read_head(&self, channel: &str) -> Result<Option<(Vec<u8>, Expected)>> {
        let limit = ObjectKind::ChannelHead.max_size();
        match self {
            Store::Local(repo) => {
                let repo = repo.clone();
                let channel = channel.to_string();
                let bytes = blocking(move || repo.read_head(&channel)).await?;
                Ok(bytes.map(|b| {
                    let d = Digest::of(&b);
                    (b, Expected::Bytes(d))
                }))
            }
            Store::Object(o) => match o.get_small(&head_path(channel), limit).await? {
                None => Ok(None),
                Some((bytes, Some(tag))) => Ok(Some((bytes, Expected::ETag(tag)))),
                Some((_, None)) => Err(Error::StoreConfig {
                    url: o.url().to_string(),
                    reason: "the store sends no ETag with a head: it cannot be swapped safely"
                        .into(),
                }),
            },
        }
    }

    /// The size of the file `rel`, if it exists.
    pub async fn len(&self, rel: &str) -> Result<Option<u64>> {
        match self {
            Store::Local(repo) => match tokio::fs::metadata(repo.root().join(rel)).await {
                Ok(m) if m.is_file() => Ok(Some(m.len())),
                Ok(_) => Ok(None),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(io_err("read", &repo.root().join(rel))(e)),
            },
            Store::Object(o) => o.len(rel).await,
        }
    }

    /// A temp file to receive an object in (next to the objects for a folder, so it
    /// can be renamed into place).
    pub fn object_temp(&self) -> Result<NamedTempFile> {
        match self {
            Store::Local(repo) => repo.object_temp(),
            Store::Object(_) => fsutil::temp_in(&std::env::temp_dir()),
        }
    }

    /// Stores the finished temp file `tmp` (from [`Self::object_temp`], `size` bytes)
    /// as object `hash`, unless the object exists.
    pub async fn put_object(&self, tmp: NamedTempFile, hash: &Digest, size: u64) -> Result<Placed> {
        match self {
            Store::Local(repo) => {
                let dest = repo.object_file(hash);
                let placed = blocking(move || {
                    if let Some(dir) = dest.parent() {
                        fsutil::ensure_dir(dir, DIR_MODE)?;
                    }
                    crash_point!("server::upload::object_received");
                    fsutil::persist(tmp, &dest, FILE_MODE, Place::KeepExisting)
                })
                .await?;
                Ok(if placed {
                    Placed::Created
                } else {
                    Placed::Existed
                })
            }
            Store::Object(o) => {
                crash_point!("server::upload::object_received");
                let placed = o
                    .put_new_file(
                        &object_path(hash),
                        tmp.path(),
                        size,
                        Caching::Immutable,
                        &Default::default(),
                    )
                    .await;
                drop(tmp);
                placed
            }
        }
    }

    /// Replaces the head of `channel` with `bytes` if it is still `expected`, after
    /// storing `bytes` in the channel's head log (FORMAT.md §7.1).
    pub async fn swap_head(
        &self,
        channel: &str,
        bytes: Vec<u8>,
        expected: &Expected,
    ) -> Result<Swapped> {
        match self {
            Store::Local(repo) => {
                let repo = repo.clone();
                let channel = channel.to_string();
                let expected = expected.clone();
                blocking(move || local_swap(&repo, &channel, &bytes, &expected)).await
            }
            Store::Object(o) => stage::swap_head(o, channel, &bytes, expected).await,
        }
    }

    /// The channels that have a head, sorted.
    pub async fn channels(&self) -> Result<Vec<String>> {
        match self {
            Store::Local(repo) => {
                let repo = repo.clone();
                blocking(move || crate::ls::channels(&repo)).await
            }
            Store::Object(o) => stage::channels(o).await,
        }
    }

    /// Every file under `objects/`, as (layout path, size, last written). Names that
    /// are not object names (a publisher's temp files) are listed too: the caller
    /// decides what to do with them.
    pub async fn list_objects(&self) -> Result<Vec<(String, u64, std::time::SystemTime)>> {
        match self {
            Store::Local(repo) => {
                let root = repo.root().to_path_buf();
                blocking(move || list_local_objects(&root)).await
            }
            Store::Object(o) => o.list_all("objects").await,
        }
    }

    /// The time the file `rel` was last written, if it exists.
    pub async fn modified(&self, rel: &str) -> Result<Option<std::time::SystemTime>> {
        match self {
            Store::Local(repo) => {
                let path = repo.root().join(rel);
                match tokio::fs::metadata(&path).await {
                    Ok(m) => Ok(Some(
                        m.modified().map_err(io_err("read the time of", &path))?,
                    )),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(io_err("read the time of", &path)(e)),
                }
            }
            Store::Object(o) => o.modified(rel).await,
        }
    }

    /// Deletes the file `rel` (gone already is fine).
    pub async fn delete(&self, rel: &str) -> Result<()> {
        match self {
            Store::Local(repo) => {
                let path = repo.root().join(rel);
                match tokio::fs::remove_file(&path).await {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(crate::error::io_err("delete", &path)(e)),
                }
            }
            Store::Object(o) => o.delete(rel).await,
        }
    }

    /// Checks that the repository can be read (a bucket answers a listing with these
    /// credentials), so that `serve` fails at start, not on every request.
    pub fn check(&self) -> Result<()> {
        match self {
            Store::Local(_) => Ok(()),
            Store::Object(o) => o.block_on(o.list("channels")).map(|_| ()),
        }
    }

    /// Keeps the bucket's objects `serve` reads in `dir`, at most `capacity` bytes.
    pub fn use_cache(&self, dir: &Path, capacity: u64) -> Result<()> {
        match self {
            Store::Local(repo) => Err(Error::StoreConfig {
                url: repo.root().display().to_string(),
                reason: "--cache-dir caches object storage; this --repo is a local folder, \
                         read from disk already"
                    .into(),
            }),
            Store::Object(o) => {
                o.set_cache(cache::DiskCache::open(dir, capacity)?);
                Ok(())
            }
        }
    }

    /// Opens the immutable file `rel` named by `hash` (an object or a head log entry)
    /// and gives its length. From a bucket, a cached copy is used when there is one;
    /// otherwise the caller streams from the bucket and the object is copied into the
    /// cache for later requests.
    pub async fn open_immutable(&self, rel: &str, hash: &Digest) -> io::Result<(Immutable, u64)> {
        match self {
            Store::Local(repo) => {
                let path = repo.root().join(rel);
                let (file, len) = open_file(&path)?;
                Ok((Immutable::File(file), len))
            }
            Store::Object(o) => {
                let cache = o.cache().filter(|_| rel == object_path(hash));
                if let Some(cache) = cache
                    && let Some(path) = cache.get(hash)
                {
                    match open_file(&path) {
                        Ok((file, len)) => return Ok((Immutable::File(file), len)),
                        Err(e) if e.kind() == io::ErrorKind::NotFound => cache.forget(hash),
                        Err(e) => return Err(e),
                    }
                }
                let len = o
                    .len(rel)
                    .await
                    .map_err(io::Error::other)?
                    .ok_or(io::ErrorKind::NotFound)?;
                if let Some(cache) = cache {
                    cache.fill(o, *hash, len);
                }
                Ok((Immutable::Remote, len))
            }
        }
    }

    /// Bytes `range` of the file `rel`, as a stream of chunks.
    pub async fn open_read(&self, rel: &str, range: Range<u64>) -> io::Result<ByteStream> {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        match self {
            Store::Local(repo) => {
                let mut file = tokio::fs::File::open(repo.root().join(rel)).await?;
                file.seek(io::SeekFrom::Start(range.start)).await?;
                let part = file.take(range.end.saturating_sub(range.start));
                Ok(Box::pin(tokio_util::io::ReaderStream::with_capacity(
                    part,
                    64 << 10,
                )))
            }
            Store::Object(o) => Ok(Box::pin(Exclusive::new(o.stream(rel, range).await?))),
        }
    }

    /// The first 4 bytes of the file `rel` (`None` when it is shorter), which tell an
    /// object's kind. Kinds never change, so a bucket's answers are remembered.
    pub async fn magic(&self, rel: &str) -> io::Result<Option<[u8; 4]>> {
        match self {
            Store::Local(repo) => {
                use tokio::io::AsyncReadExt;
                let mut f = tokio::fs::File::open(repo.root().join(rel)).await?;
                let mut m = [0u8; 4];
                match f.read_exact(&mut m).await {
                    Ok(_) => Ok(Some(m)),
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
                    Err(e) => Err(e),
                }
            }
            Store::Object(o) => o.magic(rel).await,
        }
    }
}

/// The folder's compare-and-swap: under the channel lock, the head must still hash
/// as it did when read.
fn local_swap(repo: &Repo, channel: &str, bytes: &[u8], expected: &Expected) -> Result<Swapped> {
    let _lock = repo.lock_channel(channel)?;
    let now = repo.read_head(channel)?;
    let holds = match (expected, &now) {
        (Expected::Absent, None) => true,
        (Expected::Bytes(d), Some(b)) => Digest::of(b) == *d,
        _ => false,
    };
    if !holds {
        return Ok(Swapped::Lost(now));
    }
    repo.write_head(channel, bytes)?;
    Ok(Swapped::Done)
}

/// The files of a folder repository's `objects/` (one fan-out level, as the layout
/// has), with their sizes and modification times.
fn list_local_objects(root: &Path) -> Result<Vec<(String, u64, std::time::SystemTime)>> {
    let objects = root.join("objects");
    let read = |dir: &Path| match std::fs::read_dir(dir) {
        Ok(items) => Ok(Some(items)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(crate::error::io_err("list", dir)(e)),
    };
    let mut out = Vec::new();
    let Some(fans) = read(&objects)? else {
        return Ok(out);
    };
    for fan in fans {
        let fan = fan.map_err(crate::error::io_err("list", &objects))?;
        let fan_path = fan.path();
        if !fan_path.is_dir() {
            continue;
        }
        let Some(items) = read(&fan_path)? else {
            continue;
        };
        for item in items {
            let item = item.map_err(crate::error::io_err("list", &fan_path))?;
            let meta = item
                .metadata()
                .map_err(crate::error::io_err("read", &item.path()))?;
            if !meta.is_file() {
                continue;
            }
            let modified = meta
                .modified()
                .map_err(crate::error::io_err("read", &item.path()))?;
            let rel = format!(
                "objects/{}/{}",
                fan.file_name().to_string_lossy(),
                item.file_name().to_string_lossy()
            );
            out.push((rel, meta.len(), modified));
        }
    }
    Ok(out)
}

/// Runs blocking file work off the async executor.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Io {
            action: "finish",
            path: Path::new("a blocking task").to_path_buf(),
            source: io::Error::other(e),
        })?
}

/// Opens a regular file for reading, with its length (anything else is not found).
/// Called on the connection's thread, as its reads are: see
/// `serve::file_body` for why not on the blocking pool.
fn open_file(path: &Path) -> io::Result<(std::fs::File, u64)> {
    let file = std::fs::File::open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::ErrorKind::NotFound.into());
    }
    Ok((file, meta.len()))
}

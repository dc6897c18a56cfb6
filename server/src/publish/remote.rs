//! `publish --to URL`: publish into a repository served by a remote
//! `ferry-server serve --upload-token-file`.
//!
//! The local pipeline is reused as is, on a *staging* repository that holds just what
//! it reads:
//!
//! 1. **Mirror** the channel from the server into a temporary staging repository: the
//!    key lists, the head (verified with the publisher's key, as a local publish
//!    does), the current manifest and the current archive, and the manifests and
//!    archives of the releases before it that `--diff-bases` makes diffs from. These
//!    come over plain `GET`s of the layout paths clients use, or from the `--cache`
//!    folder; every object is checked against its name (blake3 and size) whichever way
//!    it came. An older release that cannot be mirrored only costs its diff.
//! 2. **Publish** locally into the staging repository ([`super::publish`]): carried
//!    chunks are copied out of the mirrored archive, new ones compressed.
//! 3. **Upload** in the repository's write order: the manifest, the archive, the diff
//!    objects and the manifest diffs (streamed from disk, each skipped when the server
//!    already has it), last the head, with
//!    `X-Ferry-Previous-Sequence` set to the sequence mirrored in step 1. The server
//!    swaps heads only if the channel is still there, so a publisher racing another
//!    gets `409 Conflict` instead of silently dropping the other's release.
//!
//! With `--cache DIR`, fetched and published objects are kept in `DIR/objects/` (the
//! repository layout, hard-linked with the staging folder when possible), so the next
//! publish takes the previous release from disk and downloads only the head.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ferry_format::FormatError;
use ferry_format::envelope::ObjectKind;
use ferry_format::head::ReleaseRef;
use ferry_format::id::{Digest, ObjectRef};
use ferry_format::layout::{head_path, key_list_path, object_path};
use ferry_format::verified::verify_pinned_manifest;
use ferry_format::version::check_channel;
use futures_util::StreamExt;
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_LENGTH, RETRY_AFTER};
use thiserror::Error;
use tokio_util::io::ReaderStream;

mod backoff;

use super::progress::Progress;
use super::{PublishOptions, PublishReport, previous, publish};
use crate::error::{Error, io_err};
use crate::fsutil::{self, DIR_MODE, FILE_MODE, Place};
use crate::repo::Repo;
use crate::serve::upload::{PREVIOUS_SEQUENCE, read_token_file};

/// Where to publish to.
#[derive(Clone, Debug)]
pub struct RemoteOptions {
    /// Base URL of the server (`http://` or `https://`, may carry a path prefix).
    pub url: String,
    /// File holding the upload token.
    pub token_file: PathBuf,
    /// Folder keeping fetched and published objects between publishes.
    pub cache: Option<PathBuf>,
}

/// Everything a remote publish can fail with.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum RemoteError {
    /// The local part: keys, source tree, staging repository, publish rules.
    #[error(transparent)]
    Local(#[from] Error),
    /// `--to` is not a usable base URL.
    #[error("invalid --to URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    /// The request did not get an answer (connection refused, TLS, timeout...).
    #[error("{method} {url} failed: {reason}")]
    Request {
        method: &'static str,
        url: String,
        reason: String,
        /// Whether it may pass by itself (a reset or timeout; not a bad certificate).
        transient: bool,
    },
    /// The server does not accept the upload token.
    #[error(
        "the server refused the upload token (401 Unauthorized) for {url}: check --token-file against the server's --upload-token-file"
    )]
    Unauthorized { url: String },
    /// The server answered with an unexpected status; `message` is its explanation.
    #[error("{what} {url}: the server answered {status}: {message}")]
    Status {
        what: &'static str,
        url: String,
        status: StatusCode,
        message: String,
        /// The server's `Retry-After`, if it sent one.
        retry_after: Option<Duration>,
    },
    /// A request kept failing in a way that may pass; `last` is its last failure.
    #[error("{last} ({why})")]
    GaveUp {
        why: backoff::GiveUp,
        #[source]
        last: Box<RemoteError>,
    },
    /// An object from the server does not match the name its head gives it.
    #[error("{what} from {url} is not the object the channel head names")]
    Corrupt {
        what: &'static str,
        url: String,
        #[source]
        source: FormatError,
    },
}

type Result<T, E = RemoteError> = std::result::Result<T, E>;

impl From<FormatError> for RemoteError {
    fn from(e: FormatError) -> Self {
        RemoteError::Local(Error::Format(e))
    }
}

/// The most key lists mirrored; a chain this long is a broken server, not a history.
const MAX_KEY_LISTS: u64 = 10_000;
/// How much of an error body is quoted in messages.
const MAX_MESSAGE: usize = 4096;
/// Read size when streaming an archive up.
const UPLOAD_CHUNK: usize = 256 << 10;
/// How long an unused connection stays in the client's pool (see `Server::new`).
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(15);

/// Publishes `opts.source` as a release of `opts.channel` on the server `remote.url`.
/// `opts.repo` is ignored: a staging folder takes its place.
pub fn publish_to(remote: &RemoteOptions, opts: &PublishOptions<'_>) -> Result<PublishReport> {
    let started = Instant::now();
    check_channel(&opts.channel)?;
    let mut server = Server::new(&remote.url, read_token_file(&remote.token_file)?)?;
    server.progress = opts.progress.clone();
    let cache = remote.cache.as_ref().map(Repo::new);
    // Staging lives inside the cache when there is one, so objects can be hard-linked
    // between the two instead of copied.
    let staging_dir = match &remote.cache {
        Some(dir) => {
            fsutil::ensure_dir(dir, DIR_MODE)?;
            tempfile::Builder::new()
                .prefix(".staging-")
                .tempdir_in(dir)
                .map_err(io_err("create a staging folder in", dir))?
        }
        None => tempfile::Builder::new()
            .prefix("ferry-publish-")
            .tempdir()
            .map_err(io_err("create a staging folder in", &std::env::temp_dir()))?,
    };
    let staging = Repo::new(staging_dir.path());
    staging.create()?;

    // One task at a time: blocking file writes inside it cost nothing.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io_err("start", Path::new("the async runtime")))?;
    let (previous_sequence, previous_head) =
        rt.block_on(server.mirror(&staging, cache.as_ref(), opts))?;

    let mut report = publish(&PublishOptions {
        repo: staging.root().to_path_buf(),
        key: opts.key,
        extra_keys: opts.extra_keys,
        channel: opts.channel.clone(),
        version: opts.version.clone(),
        expires_in: opts.expires_in,
        content_expires_in: opts.content_expires_in,
        rollout: opts.rollout,
        requires: opts.requires.clone(),
        rollout_labels: opts.rollout_labels.clone(),
        retain: opts.retain,
        zstd_level: opts.zstd_level,
        source: opts.source.clone(),
        diff_bases: opts.diff_bases.clone(),
        fresh_level: opts.fresh_level,
        progress: opts.progress.clone(),
    })?;
    let archive = ObjectRef {
        hash: Digest::from_hex(&report.archive)?,
        size: report.archive_size,
    };
    let manifest = ObjectRef {
        hash: Digest::from_hex(&report.manifest)?,
        size: report.manifest_size,
    };
    let objects = [manifest, archive]
        .into_iter()
        .chain(report.diffs.iter().map(|d| d.object))
        .chain(report.fresh.iter().filter_map(|f| f.entry.chunk_diff))
        .chain(report.manifest_diff_objects.iter().copied());
    opts.progress.uploading(objects.map(|r| r.size).sum());
    rt.block_on(async {
        // The small manifest goes first: a refused token then shows up as a clean 401
        // before megabytes of archive are sent to a server that will not read them.
        server.put_object(&staging, &manifest, "manifest").await?;
        server.put_object(&staging, &archive, "archive").await?;
        for d in &report.diffs {
            server.put_object(&staging, &d.object, "diff").await?;
        }
        for d in report.fresh.iter().filter_map(|f| f.entry.chunk_diff) {
            server.put_object(&staging, &d, "diff from nothing").await?;
        }
        for r in &report.manifest_diff_objects {
            server.put_object(&staging, r, "manifest diff").await?;
        }
        let head = fsutil::read_small(
            &staging.head_file(&opts.channel),
            ObjectKind::ChannelHead.max_size(),
        )?;
        server
            .put_head(
                &opts.channel,
                head,
                previous_sequence,
                previous_head.as_deref(),
            )
            .await
    })?;
    if let Some(cache) = &cache {
        for r in [&archive, &manifest] {
            link_or_copy(&staging.object_file(&r.hash), cache, &r.hash)?;
        }
    }
    tracing::info!(
        channel = opts.channel,
        version = opts.version,
        sequence = report.sequence,
        url = remote.url,
        "published to the server"
    );
    report.elapsed = started.elapsed();
    Ok(report)
}

/// The server side of a remote publish.
struct Server {
    client: reqwest::Client,
    base: String,
    token: String,
    retry: backoff::Policy,
    /// Counts the bytes fetched and sent, for the progress display.
    progress: Progress,
}

impl Server {
    fn new(base: &str, token: String) -> Result<Server> {
        let bad = |reason: String| RemoteError::BadUrl {
            url: base.to_string(),
            reason,
        };
        let parsed = reqwest::Url::parse(base).map_err(|e| bad(e.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(bad("expected an http:// or https:// URL".into()));
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(bad("a query or fragment is not allowed".into()));
        }
        // The workspace builds rustls with the ring provider only; reqwest needs it
        // installed before a client is built. A provider already installed is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .user_agent(concat!("ferry-server/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            // Per read, not per request: a multi-GiB upload may take long, a silent
            // server may not.
            .read_timeout(Duration::from_secs(120))
            // Shorter than the idle timeout of `ferry-server serve` (30 s,
            // `serve::KEEP_ALIVE_IDLE`) and of common web servers, so a pooled
            // connection the server may already have closed is not reused; the race
            // that remains is absorbed by the retries.
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build()
            .map_err(|e| bad(chain(&e)))?;
        Ok(Server {
            client,
            base: base.trim_end_matches('/').to_string(),
            token,
            retry: backoff::Policy::DEFAULT,
            progress: Progress::default(),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.base)
    }

    /// Step 1: copies what the local publish reads into `staging` and returns the
    /// sequence of the server's head (0 for a new channel) and its bytes.
    async fn mirror(
        &self,
        staging: &Repo,
        cache: Option<&Repo>,
        opts: &PublishOptions<'_>,
    ) -> Result<(u64, Option<Vec<u8>>)> {
        self.progress.fetching();
        // Key lists first: a head is verified against the one it names.
        for version in 1..=MAX_KEY_LISTS {
            let path = key_list_path(version);
            let limit = ObjectKind::KeyList.max_size();
            let Some(bytes) = self.get_small(&path, limit, "key list").await? else {
                break;
            };
            let file = staging.root().join(&path);
            fsutil::write_atomic(&file, &bytes, FILE_MODE, Place::Replace)?;
        }
        let channel = &opts.channel;
        let limit = ObjectKind::ChannelHead.max_size();
        let Some(head_bytes) = self
            .get_small(&head_path(channel), limit, "channel head")
            .await?
        else {
            return Ok((0, None));
        };
        staging.write_head(channel, &head_bytes)?;
        // Verified before anything it names is fetched; `previous` checks it again
        // together with the manifest.
        let key = opts.key;
        let head = crate::trust::verify_publisher_head(staging, channel, &head_bytes, key)?;
        self.materialise(staging, cache, &head.current().manifest, "manifest")
            .await?;
        let prev = previous(staging, channel, key)?
            .ok_or_else(|| staging.broken("the mirrored head vanished".into()))?;
        self.materialise(staging, cache, &prev.manifest.archive, "archive")
            .await?;
        // The releases before the current one that diffs are made from. Best effort:
        // publish leaves out a base it cannot read, with a warning.
        let listed = head.releases().iter().rev().enumerate().skip(1);
        for (_, r) in listed.filter(|(i, _)| opts.diff_bases.contains(i + 1)) {
            if let Err(e) = self.mirror_release(staging, cache, r, channel).await {
                tracing::warn!(base = r.version, "cannot mirror this diff base: {e:#}");
            }
        }
        Ok((head.sequence, Some(head_bytes)))
    }

    /// Mirrors the manifest of release `r` (pinned by the verified head) and its archive.
    async fn mirror_release(
        &self,
        staging: &Repo,
        cache: Option<&Repo>,
        r: &ReleaseRef,
        channel: &str,
    ) -> Result<()> {
        self.materialise(staging, cache, &r.manifest, "manifest")
            .await?;
        let bytes = staging.read_object(&r.manifest, "manifest")?;
        let manifest = verify_pinned_manifest(&bytes, r, channel)?;
        self.materialise(staging, cache, &manifest.archive, "archive")
            .await
    }

    /// Puts object `r` into `staging`: from the cache when it holds an intact copy,
    /// else downloaded (and then added to the cache).
    async fn materialise(
        &self,
        staging: &Repo,
        cache: Option<&Repo>,
        r: &ObjectRef,
        what: &'static str,
    ) -> Result<()> {
        if let Some(cache) = cache {
            let cached = cache.object_file(&r.hash);
            if cached.is_file() {
                match check_file(&cached, r, what) {
                    Ok(()) => {
                        tracing::debug!(object = %r.hash, "{what} taken from the cache");
                        return Ok(link_or_copy(&cached, staging, &r.hash)?);
                    }
                    Err(e) => {
                        tracing::warn!("{}: {e:#}; fetching it again", cached.display());
                        // A damaged copy would otherwise be kept by the no-clobber
                        // placement below; if it cannot be removed it is only ignored.
                        let _ = std::fs::remove_file(&cached);
                    }
                }
            }
        }
        self.download(staging, r, what).await?;
        if let Some(cache) = cache {
            link_or_copy(&staging.object_file(&r.hash), cache, &r.hash)?;
        }
        Ok(())
    }

    /// GETs a small file; `None` on 404. Retried as a whole.
    async fn get_small(
        &self,
        path: &str,
        limit: u64,
        what: &'static str,
    ) -> Result<Option<Vec<u8>>> {
        let url = self.url(path);
        self.retrying("GET", || self.get_small_once(&url, limit, what))
            .await
    }

    async fn get_small_once(
        &self,
        url: &str,
        limit: u64,
        what: &'static str,
    ) -> Result<Option<Vec<u8>>> {
        let url = url.to_string();
        let resp = self.send("GET", &url, self.client.get(&url)).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let mut resp = expect_success(what, &url, resp).await?;
        let mut out = Vec::new();
        while let Some(chunk) = next_chunk(&mut resp, &url).await? {
            if (out.len() + chunk.len()) as u64 > limit {
                return Err(RemoteError::Corrupt {
                    what,
                    url,
                    source: FormatError::TooLarge {
                        kind: what,
                        what: "object",
                        found: (out.len() + chunk.len()) as u64,
                        limit,
                    },
                });
            }
            out.extend_from_slice(&chunk);
        }
        Ok(Some(out))
    }

    /// Streams object `r` into `staging`, checking its size and name; a download that
    /// breaks off starts again (objects are small next to what an agent fetches, and
    /// the publisher usually takes them from its `--cache`).
    async fn download(&self, staging: &Repo, r: &ObjectRef, what: &'static str) -> Result<()> {
        let url = self.url(&object_path(&r.hash));
        self.retrying("GET", || self.download_once(staging, r, what, &url))
            .await
    }

    async fn download_once(
        &self,
        staging: &Repo,
        r: &ObjectRef,
        what: &'static str,
        url: &str,
    ) -> Result<()> {
        let url = url.to_string();
        let resp = self.send("GET", &url, self.client.get(&url)).await?;
        let mut resp = expect_success(what, &url, resp).await?;
        let mut tmp = staging.object_temp()?;
        let tmp_path = tmp.path().to_path_buf();
        let mut hasher = blake3::Hasher::new();
        let mut len = 0u64;
        while let Some(chunk) = next_chunk(&mut resp, &url).await? {
            len += chunk.len() as u64;
            self.progress.fetched(chunk.len() as u64);
            if len > r.size {
                break; // reported as a size mismatch below
            }
            hasher.update(&chunk);
            tmp.write_all(&chunk).map_err(io_err("write", &tmp_path))?;
        }
        let corrupt = |source| RemoteError::Corrupt {
            what,
            url: url.clone(),
            source,
        };
        if len != r.size {
            return Err(corrupt(FormatError::SizeMismatch {
                kind: what,
                expected: r.size,
                actual: len,
            }));
        }
        let actual = Digest::from(hasher.finalize());
        if actual != r.hash {
            return Err(corrupt(FormatError::HashMismatch {
                kind: what,
                expected: r.hash.to_hex(),
                actual: actual.to_hex(),
            }));
        }
        staging.place_object(tmp, &r.hash)?;
        Ok(())
    }

    /// Uploads object `r` from `staging`, streamed from disk, unless the server
    /// already has an object of that name and size. Both steps are idempotent (an
    /// object's name is its content: storing it twice stores it once), so each is
    /// retried as a whole.
    async fn put_object(&self, staging: &Repo, r: &ObjectRef, what: &'static str) -> Result<()> {
        let url = self.url(&object_path(&r.hash));
        let probe = self
            .retrying("HEAD", || async {
                let probe = self.send("HEAD", &url, self.client.head(&url)).await?;
                if backoff::transient_status(probe.status().as_u16()) {
                    return Err(status_error(what, &url, probe).await);
                }
                Ok(probe)
            })
            .await?;
        let has = probe.status() == StatusCode::OK
            && probe
                .headers()
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                == Some(r.size);
        if has {
            tracing::debug!(object = %r.hash, "{what} already on the server");
            self.progress.upload_skipped(r.size);
            return Ok(());
        }
        self.retrying("PUT", || self.put_object_once(staging, r, what, &url))
            .await
    }

    async fn put_object_once(
        &self,
        staging: &Repo,
        r: &ObjectRef,
        what: &'static str,
        url: &str,
    ) -> Result<()> {
        let path = staging.object_file(&r.hash);
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(io_err("open", &path))?;
        // Counted as the client takes it from the file: into the connection, give or
        // take its buffers.
        let sent = Arc::new(AtomicU64::new(0));
        let stream = ReaderStream::with_capacity(file, UPLOAD_CHUNK).inspect({
            let (sent, progress) = (sent.clone(), self.progress.clone());
            move |read| {
                if let Ok(bytes) = read {
                    sent.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                    progress.uploaded(bytes.len() as u64);
                }
            }
        });
        let body = reqwest::Body::wrap_stream(stream);
        let req = self
            .client
            .put(url)
            .header(AUTHORIZATION, format!("Bearer {}", self.token))
            .header(CONTENT_LENGTH, r.size)
            .body(body);
        let result = async {
            let resp = self.send("PUT", url, req).await?;
            expect_success(what, url, resp).await
        }
        .await;
        if result.is_err() {
            // A retry sends the object again from its start.
            self.progress.upload_failed(sent.load(Ordering::Relaxed));
        }
        result.map(drop)
    }

    /// Uploads the head, last, as a compare-and-swap on `previous_sequence`.
    ///
    /// Not blindly retried: when the answer to a `PUT` is lost (reset, timeout, `5xx`)
    /// the server may or may not have swapped the head, and a second `PUT` after a
    /// swap would be refused with `409` as if another publisher had won, although
    /// this one did. So after such a failure the head is read back: if it is ours,
    /// the publish is done; if it is still the one this publish was built on
    /// (`previous`, or none for a new channel), the swap did not happen and the `PUT`
    /// is sent again (still a compare-and-swap, so a racing publisher still gets a
    /// real `409`); anything else means another publisher moved the channel, which is
    /// a conflict. A `409` that follows an unanswered `PUT` is checked the same way
    /// (the first `PUT` may have landed late).
    async fn put_head(
        &self,
        channel: &str,
        bytes: Vec<u8>,
        previous_sequence: u64,
        previous: Option<&[u8]>,
    ) -> Result<()> {
        let url = self.url(&head_path(channel));
        let limit = ObjectKind::ChannelHead.max_size();
        let mut failures = 0;
        let mut waited = Duration::ZERO;
        let mut unanswered = false;
        loop {
            let e = match self
                .put_head_once(&url, bytes.clone(), previous_sequence)
                .await
            {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            let transient = transient(&e);
            if transient.is_none() && !unanswered {
                return Err(e);
            }
            let now = self
                .get_small(&head_path(channel), limit, "channel head")
                .await?;
            if now.as_deref() == Some(&bytes[..]) {
                tracing::info!("{e}; but the server holds this head: published");
                return Ok(());
            }
            let Some(retry_after) = transient else {
                return Err(e);
            };
            if now.as_deref() != previous {
                return Err(RemoteError::Status {
                    what: "channel head",
                    url,
                    status: StatusCode::CONFLICT,
                    message: format!(
                        "after {e}, the server holds a head that is neither the one this \
                         publish was built on nor its own: another publisher moved the \
                         channel; publish again on top of it"
                    ),
                    retry_after: None,
                });
            }
            unanswered = true;
            failures += 1;
            match self
                .retry
                .next_delay(failures, waited, retry_after, backoff::random())
            {
                Ok(delay) => {
                    tracing::warn!(
                        "{e}; the head was not swapped, sending it again in {:.1}s (attempt {} of {})",
                        delay.as_secs_f64(),
                        failures + 1,
                        self.retry.attempts
                    );
                    tokio::time::sleep(delay).await;
                    waited += delay;
                }
                Err(why) => {
                    return Err(RemoteError::GaveUp {
                        why,
                        last: Box::new(e),
                    });
                }
            }
        }
    }

    async fn put_head_once(&self, url: &str, bytes: Vec<u8>, previous_sequence: u64) -> Result<()> {
        let req = self
            .client
            .put(url)
            .header(AUTHORIZATION, format!("Bearer {}", self.token))
            .header(PREVIOUS_SEQUENCE, previous_sequence)
            .body(bytes);
        let resp = self.send("PUT", url, req).await?;
        expect_success("channel head", url, resp).await?;
        Ok(())
    }

    /// Runs `op` again after a failure that may pass, under the retry policy.
    async fn retrying<T, F, Fut>(&self, method: &'static str, mut op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let mut failures = 0;
        let mut waited = Duration::ZERO;
        loop {
            let e = match op().await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let Some(retry_after) = transient(&e) else {
                return Err(e);
            };
            failures += 1;
            match self
                .retry
                .next_delay(failures, waited, retry_after, backoff::random())
            {
                Ok(delay) => {
                    tracing::warn!(
                        "{e}; retrying {method} in {:.1}s (attempt {} of {})",
                        delay.as_secs_f64(),
                        failures + 1,
                        self.retry.attempts
                    );
                    tokio::time::sleep(delay).await;
                    waited += delay;
                }
                Err(why) => {
                    tracing::warn!("{e}; {why}");
                    return Err(RemoteError::GaveUp {
                        why,
                        last: Box::new(e),
                    });
                }
            }
        }
    }

    async fn send(
        &self,
        method: &'static str,
        url: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response> {
        req.send().await.map_err(|e| request_error(method, url, &e))
    }
}

/// Passes a 2xx response through; turns anything else into an error quoting the
/// server's explanation.
async fn expect_success(
    what: &'static str,
    url: &str,
    resp: reqwest::Response,
) -> Result<reqwest::Response> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    Err(status_error(what, url, resp).await)
}

/// The error for a response that is not a success.
async fn status_error(what: &'static str, url: &str, resp: reqwest::Response) -> RemoteError {
    let status = resp.status();
    if status == StatusCode::UNAUTHORIZED {
        return RemoteError::Unauthorized {
            url: url.to_string(),
        };
    }
    let retry_after = resp
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| backoff::parse_retry_after(v, std::time::SystemTime::now()));
    let text = resp.text().await.unwrap_or_default();
    let mut message: String = text.trim().chars().take(MAX_MESSAGE).collect();
    if message.is_empty() {
        message = "(no explanation)".into();
    }
    RemoteError::Status {
        what,
        url: url.to_string(),
        status,
        message,
        retry_after,
    }
}

async fn next_chunk(resp: &mut reqwest::Response, url: &str) -> Result<Option<bytes::Bytes>> {
    resp.chunk()
        .await
        .map_err(|e| request_error("GET", url, &e))
}

fn request_error(method: &'static str, url: &str, e: &reqwest::Error) -> RemoteError {
    let reason = chain(e);
    // A certificate the client rejects will be rejected again.
    let certificate = reason.contains("certificate");
    RemoteError::Request {
        method,
        url: url.to_string(),
        transient: !certificate
            && !e.is_builder()
            && !e.is_redirect()
            && (e.is_connect() || e.is_timeout() || e.is_request() || e.is_body()),
        reason,
    }
}

/// Whether `e` may pass by itself, and the delay the server asked for.
fn transient(e: &RemoteError) -> Option<Option<Duration>> {
    match e {
        RemoteError::Request {
            transient: true, ..
        } => Some(None),
        RemoteError::Status {
            status,
            retry_after,
            ..
        } if backoff::transient_status(status.as_u16()) => Some(*retry_after),
        _ => None,
    }
}

/// Checks that the file at `path` is object `r` (size, then blake3).
fn check_file(path: &Path, r: &ObjectRef, what: &'static str) -> Result<(), Error> {
    let file = fsutil::open(path)?;
    let len = file.metadata().map_err(io_err("read", path))?.len();
    if len != r.size {
        return Err(Error::FormatContext {
            context: format!("cached {what} is damaged"),
            source: FormatError::SizeMismatch {
                kind: what,
                expected: r.size,
                actual: len,
            },
        });
    }
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(file).map_err(io_err("read", path))?;
    let actual = Digest::from(hasher.finalize());
    if actual != r.hash {
        return Err(Error::FormatContext {
            context: format!("cached {what} is damaged"),
            source: FormatError::HashMismatch {
                kind: what,
                expected: r.hash.to_hex(),
                actual: actual.to_hex(),
            },
        });
    }
    Ok(())
}

/// Makes object `hash` (the file `src`) part of `into`: a hard link when both are on
/// one filesystem (objects are never written in place, so sharing the inode is safe),
/// a copy otherwise. An object already there is left alone: same name, same bytes.
fn link_or_copy(src: &Path, into: &Repo, hash: &Digest) -> Result<(), Error> {
    let dest = into.object_file(hash);
    if dest.is_file() {
        return Ok(());
    }
    if let Some(dir) = dest.parent() {
        fsutil::ensure_dir(dir, DIR_MODE)?;
    }
    match std::fs::hard_link(src, &dest) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => tracing::debug!("cannot hard-link {}: {e}; copying", src.display()),
    }
    let mut tmp = into.object_temp()?;
    let tmp_path = tmp.path().to_path_buf();
    io::copy(&mut fsutil::open(src)?, &mut tmp).map_err(io_err("copy into", &tmp_path))?;
    into.place_object(tmp, hash)
}

/// An error and its causes on one line (reqwest hides the interesting part, such as
/// "connection refused", in the source chain).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_joined() {
        let s = Server::new("http://127.0.0.1:9/base/", "t".into()).unwrap();
        assert_eq!(
            s.url("channels/stable/head"),
            "http://127.0.0.1:9/base/channels/stable/head"
        );
        for bad in [
            "ftp://host/",
            "not a url",
            "http://h/?q=1",
            "file:///tmp/repo",
        ] {
            assert!(Server::new(bad, "t".into()).is_err(), "{bad}");
        }
    }

    #[test]
    fn cached_objects_are_checked_before_use() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (Repo::new(d.path().join("a")), Repo::new(d.path().join("b")));
        let r = a.write_object(b"object bytes").unwrap();
        let file = a.object_file(&r.hash);
        check_file(&file, &r, "archive").unwrap();
        link_or_copy(&file, &b, &r.hash).unwrap();
        assert_eq!(
            std::fs::read(b.object_file(&r.hash)).unwrap(),
            b"object bytes"
        );
        let other = ObjectRef::of(b"object bytez");
        let e = check_file(&file, &other, "archive").unwrap_err();
        assert!(format!("{e:#}").contains("damaged"), "{e:#}");
    }
}

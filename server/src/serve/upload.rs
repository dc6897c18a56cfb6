//! The upload API: `PUT` of objects and channel heads, for `publish --to`.
//!
//! Enabled only when `serve` is given `--upload-token-file` (and then at least one
//! `--public-key`). The token decides who may *write*; the signatures decide what
//! may be *published*: the server verifies every head it is handed (and the current
//! release's manifest) with its trusted keys, exactly as a client will, so a stolen
//! token can at worst store unreferenced objects, never move a channel.
//!
//! ```text
//! PUT /objects/<2 hex>/<64 hex>   body = the object; blake3 must equal the name
//!     201 stored, 200 already there, 400 content does not match the name,
//!     401 token, 408 stalled body, 413 larger than --max-upload-size (or than
//!     --upload-bytes-per-hour), 429 + Retry-After: the token's hourly bytes are spent
//! PUT /channels/<channel>/head    body = the signed head (≤ 1 MiB)
//!     header X-Ferry-Previous-Sequence: N   (0 for a new channel)
//!     201 published, 400 malformed or header missing, 401 token,
//!     403 signatures do not verify with the trusted keys,
//!     409 head moved (compare-and-swap lost) or an object it names is missing,
//!     413 too large, 422 expired, wrong channel, manifest or archive inconsistent
//! any PUT with the token: 429 + Retry-After past --upload-requests-per-minute
//! ```
//!
//! The per-token budgets ([`super::quota`]) bound what a stolen token can cost.
//!
//! Uploads follow the repository's write order (FORMAT.md §7): objects first, each
//! streamed to a temp file, hashed, then renamed into place; the head last, accepted
//! only once the objects of its current release are present and verify. A head
//! replaces the channel's head only under a per-channel lock when the channel is still
//! at the sequence the publisher read (`X-Ferry-Previous-Sequence`) and the new
//! sequence is higher, so two publishers racing cannot silently overwrite each other:
//! the loser gets 409 and publishes again on top of the winner.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use ferry_format::FormatError;
use ferry_format::envelope::{ObjectKind, TrustedKeys};
use ferry_format::head::ChannelHead;
use ferry_format::id::{Digest, ObjectRef};
use ferry_format::keylist::HeadKeys;
use ferry_format::keys::PublicKey;
use ferry_format::layout::{RepoPath, object_path, parse_repo_path};
use ferry_format::verified::{verify_manifest, verify_own_head};
use http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use subtle::ConstantTimeEq;
use tokio::io::AsyncWriteExt;

use super::quota::{Limits, Over, Quota, retry_after_secs};
use super::routes::Body;
use crate::error::{Error, Result, io_err};
use crate::fsutil;
use crate::repo::Repo;
use crate::store::{Expected, Mirror, Placed, Store, Swapped};

/// The request header carrying the sequence the publisher built its head on.
pub const PREVIOUS_SEQUENCE: &str = "x-ferry-previous-sequence";
/// Default `--max-upload-size`: 4 GiB.
pub const DEFAULT_MAX_UPLOAD_SIZE: u64 = 4 << 30;
/// An upload that sends nothing for this long is dropped, so a stalled client cannot
/// hold a connection (and a temp file) forever.
const BODY_IDLE: Duration = Duration::from_secs(60);
/// Largest token file accepted.
const MAX_TOKEN_FILE: u64 = 4096;

/// Reads a token file: its content with surrounding whitespace (a trailing newline
/// from `echo` or an editor) removed. An empty token is refused: it would let anyone in.
pub fn read_token_file(path: &Path) -> Result<String> {
    let bytes = fsutil::read_small(path, MAX_TOKEN_FILE)?;
    let text = String::from_utf8(bytes).map_err(|_| Error::Unsupported {
        path: path.to_path_buf(),
        reason: "the token file is not UTF-8 text".into(),
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(Error::Unsupported {
            path: path.to_path_buf(),
            reason: "the token file is empty".into(),
        });
    }
    if token.chars().any(|c| c.is_control()) || token.contains(' ') {
        return Err(Error::Unsupported {
            path: path.to_path_buf(),
            reason: "the token must be one line without spaces or control characters".into(),
        });
    }
    Ok(token.to_string())
}

/// Parses `--max-upload-size`: bytes, optionally with a `KiB`, `MiB` or `GiB` suffix.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?}: expected a number of bytes, like 4GiB"))?;
    let shift = match unit.trim() {
        "" | "B" => 0,
        "K" | "KiB" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        other => return Err(format!("unknown size unit {other:?}: use KiB, MiB or GiB")),
    };
    let bytes = n
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("size {s:?} is too large"))?;
    if bytes == 0 {
        return Err("must be larger than 0".into());
    }
    Ok(bytes)
}

/// The upload configuration and its per-channel locks, shared by all connections.
pub struct Uploads {
    /// blake3 of the token: comparing fixed-size digests in constant time leaks
    /// neither the token's bytes nor its length.
    token: Digest,
    trusted: TrustedKeys,
    /// The first configured key: the single-key trust root (key list version 0) from
    /// which the repository's key lists, if any, must chain.
    anchor: PublicKey,
    max_object_size: u64,
    locks: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    counters: Counters,
    quota: Quota,
}

impl Uploads {
    /// Uploads authorised by `token` whose heads and manifests must be signed by any
    /// one of `keys` (threshold 1).
    pub fn new(token: &str, keys: Vec<PublicKey>, max_object_size: u64) -> Result<Uploads> {
        let anchor = *keys.first().ok_or_else(|| Error::Unsupported {
            path: PathBuf::from("--public-key"),
            reason: "uploads need at least one trusted public key".into(),
        })?;
        let trusted = TrustedKeys::new(keys, 1)?;
        Ok(Uploads {
            token: Digest::of(token.as_bytes()),
            trusted,
            anchor,
            max_object_size,
            locks: std::sync::Mutex::default(),
            counters: Counters::default(),
            quota: Quota::new(Limits::default()),
        })
    }

    /// Replaces the default per-token budgets.
    #[must_use]
    pub fn with_limits(mut self, limits: Limits) -> Uploads {
        self.quota = Quota::new(limits);
        self
    }

    /// Reads the token file and the public key files given on the command line.
    pub fn load(token_file: &Path, key_files: &[PathBuf], max_object_size: u64) -> Result<Self> {
        let token = read_token_file(token_file)?;
        let keys = key_files
            .iter()
            .map(|p| crate::ls::read_public(p))
            .collect::<Result<Vec<_>>>()?;
        if keys.is_empty() {
            return Err(Error::Unsupported {
                path: token_file.to_path_buf(),
                reason: "uploads need at least one --public-key to verify what is uploaded".into(),
            });
        }
        Uploads::new(&token, keys, max_object_size)
    }

    /// Whether the `Authorization` header carries the token.
    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(value) = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let Some((scheme, token)) = value.split_once(' ') else {
            return false;
        };
        if !scheme.eq_ignore_ascii_case("bearer") {
            return false;
        }
        let offered = Digest::of(token.trim().as_bytes());
        bool::from(offered.0.ct_eq(&self.token.0))
    }

    fn channel_lock(&self, channel: &str) -> Arc<tokio::sync::Mutex<()>> {
        // A poisoned map only means a panic while inserting; the map itself is intact.
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(channel.to_string()).or_default().clone()
    }

    /// The upload counters, for `/metrics`.
    pub fn counts(&self) -> super::metrics::UploadCounts {
        self.counters.counts()
    }
}

/// Accepted and refused uploads, by kind and by reason.
#[derive(Debug, Default)]
struct Counters {
    objects: AtomicU64,
    heads: AtomicU64,
    refused: [AtomicU64; REASONS.len()],
}

/// Why an upload was refused: the `reason` label of `ferry_upload_refused_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reason {
    Auth,
    BadRequest,
    TooLarge,
    Mismatch,
    Signature,
    Invalid,
    Missing,
    Conflict,
    Internal,
    RateLimited,
}

const REASONS: [&str; 10] = [
    "auth",
    "bad_request",
    "too_large",
    "mismatch",
    "signature",
    "invalid",
    "missing_object",
    "conflict",
    "internal",
    "rate_limited",
];

impl Counters {
    fn counts(&self) -> super::metrics::UploadCounts {
        super::metrics::UploadCounts {
            objects: self.objects.load(Ordering::Relaxed),
            heads: self.heads.load(Ordering::Relaxed),
            refused: REASONS
                .iter()
                .zip(&self.refused)
                .map(|(name, n)| (*name, n.load(Ordering::Relaxed)))
                .collect(),
        }
    }
}

/// A refused upload: the status, a message for the publisher, the counted reason.
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    reason: Reason,
    message: String,
    /// Sent as `Retry-After`, in seconds.
    retry_after: Option<u64>,
}

fn refuse(status: StatusCode, reason: Reason, message: impl Into<String>) -> Refusal {
    Refusal {
        status,
        reason,
        message: message.into(),
        retry_after: None,
    }
}

/// The refusal for an upload past the token's budget.
fn over_budget(over: Over, limits: Limits) -> Refusal {
    let (status, message, wait) = match over {
        Over::Requests(wait) => (
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "more than {} uploads per minute with this token (--upload-requests-per-minute)",
                limits.requests_per_minute
            ),
            Some(wait),
        ),
        Over::Bytes(wait) => (
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "this token's {} bytes per hour are spent (--upload-bytes-per-hour)",
                limits.bytes_per_hour
            ),
            Some(wait),
        ),
        Over::Never => (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the object is larger than the {} bytes a token may upload per hour (--upload-bytes-per-hour)",
                limits.bytes_per_hour
            ),
            None,
        ),
    };
    let mut r = refuse(status, Reason::RateLimited, message);
    r.retry_after = wait.map(retry_after_secs);
    r
}

fn internal(e: impl std::fmt::Display) -> Refusal {
    tracing::error!("upload failed: {e}");
    refuse(
        StatusCode::INTERNAL_SERVER_ERROR,
        Reason::Internal,
        "internal error",
    )
}

/// Answers a `PUT`. `body` is the request body, still unread.
pub async fn handle<B>(repo: &Store, up: &Uploads, req: &Request<()>, body: B) -> Response<Body>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let path = req.uri().path();
    let result = if !up.authorized(req.headers()) {
        // Checked before the path, so an unauthenticated client learns nothing.
        Err(refuse(
            StatusCode::UNAUTHORIZED,
            Reason::Auth,
            "missing or wrong upload token (Authorization: Bearer <token>)",
        ))
    } else if let Err(over) = up.quota.request() {
        Err(over_budget(over, up.quota.limits()))
    } else {
        match parse_repo_path(path) {
            Some(RepoPath::Object(hash)) => put_object(repo, up, hash, req.headers(), body)
                .await
                .inspect(|_| {
                    up.counters.objects.fetch_add(1, Ordering::Relaxed);
                }),
            Some(RepoPath::Head(channel)) => put_head(repo, up, &channel, req.headers(), body)
                .await
                .inspect(|_| {
                    up.counters.heads.fetch_add(1, Ordering::Relaxed);
                }),
            _ => {
                return message(StatusCode::NOT_FOUND, "not found");
            }
        }
    };
    match result {
        Ok(status) => message(status, status.canonical_reason().unwrap_or("ok")),
        Err(r) => {
            up.counters.refused[r.reason as usize].fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                path,
                status = r.status.as_u16(),
                "upload refused: {}",
                r.message
            );
            let mut resp = message(r.status, &r.message);
            if let Some(secs) = r.retry_after {
                resp.headers_mut()
                    .insert(RETRY_AFTER, http::HeaderValue::from(secs));
            }
            if r.status == StatusCode::UNAUTHORIZED {
                resp.headers_mut().insert(
                    WWW_AUTHENTICATE,
                    http::HeaderValue::from_static("Bearer realm=\"ferry\""),
                );
            }
            resp
        }
    }
}

/// A text response; the message ends with a newline.
fn message(status: StatusCode, text: &str) -> Response<Body> {
    let body = Bytes::from(format!("{text}\n"));
    let mut resp = Response::new(
        Full::new(body.clone())
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(CONTENT_LENGTH, http::HeaderValue::from(body.len()));
    resp
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok())
}

/// Runs blocking filesystem work (fsync, rename) off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(io_err("finish", Path::new("a filesystem task"))(
            io::Error::other(e.to_string()),
        ))
    })
}

/// Streams `body` to `sink` (if any), hashing it, refusing past `limit` bytes.
async fn stream_body<B>(
    mut body: B,
    limit: u64,
    what: &str,
    mut sink: Option<&mut tokio::fs::File>,
    mut collect: Option<&mut Vec<u8>>,
) -> Result<(Digest, u64), Refusal>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut hasher = blake3::Hasher::new();
    let mut len = 0u64;
    loop {
        let frame = match tokio::time::timeout(BODY_IDLE, body.frame()).await {
            Err(_) => {
                return Err(refuse(
                    StatusCode::REQUEST_TIMEOUT,
                    Reason::BadRequest,
                    format!(
                        "{what} upload stalled: no data for {}s",
                        BODY_IDLE.as_secs()
                    ),
                ));
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(refuse(
                    StatusCode::BAD_REQUEST,
                    Reason::BadRequest,
                    format!("{what} upload broke off: {e}"),
                ));
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers carry nothing we use
        };
        len += data.len() as u64;
        if len > limit {
            return Err(too_large(what, limit));
        }
        hasher.update(&data);
        if let Some(file) = sink.as_deref_mut() {
            file.write_all(&data).await.map_err(internal)?;
        }
        if let Some(buf) = collect.as_deref_mut() {
            buf.extend_from_slice(&data);
        }
    }
    Ok((Digest::from(hasher.finalize()), len))
}

fn too_large(what: &str, limit: u64) -> Refusal {
    refuse(
        StatusCode::PAYLOAD_TOO_LARGE,
        Reason::TooLarge,
        format!("{what} is larger than the {limit} bytes this server accepts"),
    )
}

/// `PUT /objects/xx/<hash>`: stores the body under its name once it hashes to it.
async fn put_object<B>(
    repo: &Store,
    up: &Uploads,
    hash: Digest,
    headers: &HeaderMap,
    body: B,
) -> Result<StatusCode, Refusal>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let declared = content_length(headers);
    if declared.is_some_and(|n| n > up.max_object_size) {
        return Err(too_large("object", up.max_object_size));
    }
    // The token's hourly bytes: the declared length is reserved before anything is
    // written (without one, the largest object the budget allows), and what was not
    // stored is given back afterwards.
    let limits = up.quota.limits();
    let reserved = declared.unwrap_or(up.max_object_size.min(limits.bytes_per_hour));
    up.quota
        .reserve(reserved)
        .map_err(|over| over_budget(over, limits))?;
    let result = store_object(repo, up, hash, body, reserved).await;
    let stored = match &result {
        Ok((_, len)) => *len,
        Err(_) => 0,
    };
    up.quota.settle(reserved, stored);
    result.map(|(status, _)| status)
}

/// Streams an object of at most `limit` bytes to a temp file and places it; returns
/// the status and its length.
async fn store_object<B>(
    repo: &Store,
    up: &Uploads,
    hash: Digest,
    body: B,
    limit: u64,
) -> Result<(StatusCode, u64), Refusal>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let limit = limit.min(up.max_object_size);
    let r = repo.clone();
    let tmp = blocking(move || r.object_temp()).await.map_err(internal)?;
    let mut file = tokio::fs::File::from_std(tmp.as_file().try_clone().map_err(internal)?);
    let (actual, len) = stream_body(body, limit, "object", Some(&mut file), None).await?;
    file.flush().await.map_err(internal)?;
    drop(file);
    if actual != hash {
        // The temp file is removed when `tmp` drops.
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            Reason::Mismatch,
            format!(
                "object content does not match its name: the body hashes to {actual}, the path names {hash}"
            ),
        ));
    }
    let placed = repo.put_object(tmp, &hash, len).await.map_err(internal)?;
    let status = match placed {
        Placed::Created => StatusCode::CREATED,
        Placed::Existed => StatusCode::OK,
    };
    Ok((status, len))
}

/// The compare-and-swap rule of a head upload: the channel must still be at the
/// sequence the publisher read (`expected`; 0 for a channel without a head) and the
/// new head must move it forward.
fn check_sequence(expected: u64, current: Option<u64>, new: u64) -> Result<(), Refusal> {
    let current = current.unwrap_or(0);
    if expected != current {
        return Err(refuse(
            StatusCode::CONFLICT,
            Reason::Conflict,
            format!(
                "head moved: expected sequence {expected}, current {current}; fetch the new head and publish again"
            ),
        ));
    }
    if new <= current {
        return Err(refuse(
            StatusCode::CONFLICT,
            Reason::Conflict,
            format!("head sequence {new} does not move past the current sequence {current}"),
        ));
    }
    Ok(())
}

/// Maps a verification failure: bad signatures are 403, everything else is `other`.
fn verification(e: FormatError, what: &str, other: StatusCode) -> Refusal {
    match e {
        FormatError::BadSignature { .. } => refuse(
            StatusCode::FORBIDDEN,
            Reason::Signature,
            format!(
                "{what} refused: its signatures do not verify with the server's trusted keys: {e}"
            ),
        ),
        e => refuse(other, Reason::Invalid, format!("{what} refused: {e}")),
    }
}

/// `PUT /channels/<channel>/head`: verifies the head and its current release, then
/// replaces the channel's head if nobody else did since the publisher looked.
async fn put_head<B>(
    store: &Store,
    up: &Uploads,
    channel: &str,
    headers: &HeaderMap,
    body: B,
) -> Result<StatusCode, Refusal>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let expected: u64 = headers
        .get(PREVIOUS_SEQUENCE)
        .and_then(|v| v.to_str().ok()?.trim().parse().ok())
        .ok_or_else(|| {
            refuse(
                StatusCode::BAD_REQUEST,
                Reason::BadRequest,
                "a head upload needs the X-Ferry-Previous-Sequence header (0 for a new channel)",
            )
        })?;
    let limit = ObjectKind::ChannelHead.max_size();
    if content_length(headers).is_some_and(|n| n > limit) {
        return Err(too_large("channel head", limit));
    }
    let mut bytes = Vec::new();
    stream_body(body, limit, "channel head", None, Some(&mut bytes)).await?;

    // The same checks a client makes (FORMAT.md §6.1 steps 1-5), minus the sequence,
    // which is the compare-and-swap below.
    // The key lists in a folder the trust functions read: the repository itself, or
    // a copy of a bucket's.
    let s = store.clone();
    let view = blocking(move || s.working_copy(Mirror::Keys))
        .await
        .map_err(internal)?;
    let repo = view.repo().clone();
    let (trusted, key_list_version) = current_trust(&repo, up).await?;
    let head = verify_own_head(&bytes, &trusted)
        .map_err(|e| verification(e, "channel head", StatusCode::BAD_REQUEST))?;
    let named = head.key_list.map_or(0, |k| k.version);
    if named != key_list_version {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            Reason::Signature,
            format!(
                "the head names key list version {named}, the repository's current key list is version {key_list_version}"
            ),
        ));
    }
    if head.channel() != channel {
        return Err(refuse(
            StatusCode::UNPROCESSABLE_ENTITY,
            Reason::Invalid,
            format!(
                "the head is for channel {:?}, uploaded to channel {channel:?}",
                head.channel()
            ),
        ));
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(internal)?
        .as_secs();
    if now >= head.expires_at {
        return Err(refuse(
            StatusCode::UNPROCESSABLE_ENTITY,
            Reason::Invalid,
            format!(
                "the head expired at {} (unix time), it is now {now}: clients would refuse it",
                head.expires_at
            ),
        ));
    }

    if now >= head.content.expires_at {
        return Err(refuse(
            StatusCode::UNPROCESSABLE_ENTITY,
            Reason::Invalid,
            format!(
                "the head's publisher content expired at {} (unix time), it is now {now}: clients would refuse it",
                head.content.expires_at
            ),
        ));
    }

    // Objects first, head last: the current release must be complete and verify.
    check_release(store, &trusted.publishers, &head).await?;

    // The in-process lock orders this server's uploads; the swap below is a real
    // compare-and-swap against other writers (a local `publish` under the channel
    // lock, or another server on the same bucket).
    let lock = up.channel_lock(channel);
    let _held = lock.lock().await;
    let current = store.read_head(channel).await.map_err(internal)?;
    let (current, swap_from) = match current {
        Some((b, e)) => (Some(b), e),
        None => (None, Expected::Absent),
    };
    let current_head = match current {
        None => None,
        Some(b) => Some(
            verify_own_head(&b, &crate::trust::trust_for_head(&repo, &b, up.anchor).unwrap_or_else(|_| trusted.clone()))
                .map_err(|e| {
                    refuse(
                        StatusCode::CONFLICT,
                        Reason::Conflict,
                        format!(
                            "the channel's current head does not verify with the server's trusted keys ({e}): \
                             cannot compare sequences; the server operator must add the key that signed it"
                        ),
                    )
                })?,
        ),
    };
    check_sequence(
        expected,
        current_head.as_ref().map(|h| h.sequence),
        head.sequence,
    )?;
    if let Some(current) = &current_head
        && head.content.sequence < current.content.sequence
    {
        return Err(refuse(
            StatusCode::CONFLICT,
            Reason::Conflict,
            format!(
                "the head carries publisher sequence {}, the channel is at {}: older publisher content cannot be revived",
                head.content.sequence, current.content.sequence
            ),
        ));
    }
    crash_point!("server::upload::head_swap");
    match store.swap_head(channel, bytes, &swap_from).await {
        Ok(Swapped::Done) => {}
        Ok(Swapped::Lost(_)) => {
            return Err(refuse(
                StatusCode::CONFLICT,
                Reason::Conflict,
                "head moved while this upload was checked: fetch the new head and publish again",
            ));
        }
        Err(e) => return Err(internal(e)),
    }
    tracing::info!(
        channel,
        sequence = head.sequence,
        version = head.current().version,
        "channel head published"
    );
    Ok(StatusCode::CREATED)
}

/// The keys heads and manifests must be signed with, and the key list version heads
/// must name: the configured keys while the repository has no key list; once it has,
/// the newest key list that chains from the first configured key, each step checked
/// exactly as agents check it (FORMAT.md §6.3).
async fn current_trust(repo: &Repo, up: &Uploads) -> Result<(HeadKeys, u64), Refusal> {
    let repo = repo.clone();
    let anchor = up.anchor;
    let walked = blocking(move || {
        let mut trust = ferry_format::keylist::TrustRoot::SingleKey(anchor);
        let mut steps = 0;
        while let Some(bytes) = crate::trust::read_key_list(&repo, trust.version() + 1)? {
            trust = trust
                .advance(&bytes)
                .map_err(|source| Error::FormatContext {
                    context: format!(
                        "key list {} in the repository does not chain from the server's key",
                        trust.version() + 1
                    ),
                    source,
                })?;
            steps += 1;
        }
        Ok((trust, steps))
    })
    .await
    .map_err(|e| {
        refuse(
            StatusCode::CONFLICT,
            Reason::Invalid,
            format!("cannot establish the repository's keys: {e}"),
        )
    })?;
    match walked {
        (_, 0) => Ok((up.trusted.clone().into(), 0)),
        (trust, _) => Ok((trust.head_keys(), trust.version())),
    }
}

/// The current release of `head` is on the server: its manifest verifies against the
/// head's entry and its archive has the size the manifest gives.
async fn check_release(
    repo: &Store,
    trusted: &TrustedKeys,
    head: &ChannelHead,
) -> Result<(), Refusal> {
    let release = head.current().clone();
    let missing = |what: &str, r: &ObjectRef| {
        refuse(
            StatusCode::CONFLICT,
            Reason::Missing,
            format!(
                "{what} {} of release {} is not on the server: upload objects first, the head last",
                r.hash, release.version
            ),
        )
    };
    let manifest_file = object_path(&release.manifest.hash);
    let bytes = match repo.len(&manifest_file).await.map_err(internal)? {
        None => {
            return Err(missing("manifest", &release.manifest));
        }
        Some(len) if len != release.manifest.size => {
            return Err(refuse(
                StatusCode::UNPROCESSABLE_ENTITY,
                Reason::Invalid,
                format!(
                    "manifest {} has {len} bytes on the server, the head says {}",
                    release.manifest.hash, release.manifest.size
                ),
            ));
        }
        Some(len) => repo
            .read_small(&manifest_file, len)
            .await
            .map_err(internal)?
            .ok_or_else(|| missing("manifest", &release.manifest))?,
    };
    let manifest = verify_manifest(&bytes, &release, head.channel(), trusted)
        .map_err(|e| verification(e, "manifest", StatusCode::UNPROCESSABLE_ENTITY))?;
    match repo
        .len(&object_path(&manifest.archive.hash))
        .await
        .map_err(internal)?
    {
        None => Err(missing("archive", &manifest.archive)),
        Some(len) if len != manifest.archive.size => Err(refuse(
            StatusCode::UNPROCESSABLE_ENTITY,
            Reason::Invalid,
            format!(
                "archive {} has {len} bytes on the server, the manifest says {}",
                manifest.archive.hash, manifest.archive.size
            ),
        )),
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_format::keys::SecretKey;

    fn uploads(token: &str) -> Uploads {
        let key = SecretKey::from_seed([3; 32]);
        Uploads::new(token, vec![key.public()], 1 << 20).unwrap()
    }

    fn with_auth(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, value.parse().unwrap());
        h
    }

    #[test]
    fn token_compare_needs_the_exact_bearer_token() {
        let up = uploads("s3cret-token");
        assert!(up.authorized(&with_auth("Bearer s3cret-token")));
        assert!(up.authorized(&with_auth("bearer s3cret-token")));
        for wrong in [
            "Bearer s3cret-tokem",
            "Bearer s3cret-token2",
            "Bearer s3cret",
            "Bearer ",
            "Basic s3cret-token",
            "s3cret-token",
            "",
        ] {
            assert!(!up.authorized(&with_auth(wrong)), "{wrong:?}");
        }
        assert!(!up.authorized(&HeaderMap::new()), "no header");
    }

    #[test]
    fn compare_and_swap_rules() {
        // New channel: the publisher saw nothing (0) and nothing is there.
        check_sequence(0, None, 1).unwrap();
        // Normal succession.
        check_sequence(4, Some(4), 5).unwrap();
        check_sequence(4, Some(4), 9).unwrap();
        // Someone published in between.
        let e = check_sequence(4, Some(5), 5).unwrap_err();
        assert_eq!(e.status, StatusCode::CONFLICT);
        assert!(
            e.message.contains("expected sequence 4, current 5"),
            "{}",
            e.message
        );
        // A publisher that believes the channel is new, but it is not.
        assert_eq!(
            check_sequence(0, Some(1), 2).unwrap_err().status,
            StatusCode::CONFLICT
        );
        // Never backwards or sideways.
        assert!(check_sequence(4, Some(4), 4).is_err());
        assert!(check_sequence(4, Some(4), 3).is_err());
        assert!(check_sequence(0, None, 0).is_err());
    }

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("4GiB").unwrap(), 4 << 30);
        assert_eq!(parse_size("10MiB").unwrap(), 10 << 20);
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("1K").unwrap(), 1024);
        for bad in ["", "0", "GiB", "1TB", "-1", "99999999999999999999G"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn token_files_are_trimmed_and_must_not_be_empty() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("token");
        std::fs::write(&p, "  abc123\n\n").unwrap();
        assert_eq!(read_token_file(&p).unwrap(), "abc123");
        std::fs::write(&p, " \n").unwrap();
        assert!(read_token_file(&p).is_err());
        std::fs::write(&p, "two words\n").unwrap();
        assert!(read_token_file(&p).is_err());
    }

    #[tokio::test]
    async fn objects_are_stored_only_under_their_own_name() {
        let d = tempfile::tempdir().unwrap();
        let up = uploads("t");
        let data = Bytes::from_static(b"some object bytes");
        let name = Digest::of(&data);
        let body = || Full::new(data.clone());
        let none = HeaderMap::new();
        let store = Store::folder(d.path());
        let put = |hash| put_object(&store, &up, hash, &none, body());
        assert_eq!(put(name).await.unwrap(), StatusCode::CREATED);
        assert_eq!(put(name).await.unwrap(), StatusCode::OK, "idempotent");
        let stored = Repo::new(d.path()).object_file(&name);
        assert_eq!(std::fs::read(&stored).unwrap(), data);
        let e = put(Digest::of(b"other")).await.unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(
            e.message.contains("does not match its name"),
            "{}",
            e.message
        );

        let small = Uploads::new("t", vec![SecretKey::from_seed([3; 32]).public()], 4).unwrap();
        let e = put_object(&store, &small, name, &none, body())
            .await
            .unwrap_err();
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
        // Refused uploads leave no temp file behind.
        let leftovers: Vec<_> = std::fs::read_dir(d.path().join("objects"))
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp-"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}

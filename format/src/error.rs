//! The one error type of the format crate.

use thiserror::Error;

/// Everything that can go wrong while encoding, decoding or verifying ferry objects.
///
/// Messages name the object and the problem; they are for people, not for matching.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum FormatError {
    /// The bytes do not start with the magic number of the expected object kind.
    #[error("not a ferry {kind}: bad magic number")]
    BadMagic { kind: &'static str },
    /// The object was written in a format version this build does not read.
    #[error(
        "{kind} uses format version {found}, this ferry reads up to version {supported}: upgrade ferry"
    )]
    UnsupportedFormat {
        kind: &'static str,
        found: u16,
        supported: u16,
    },
    /// The object was written by an older publisher in a format no longer read.
    #[error(
        "{kind} uses format version {found}, which this ferry no longer reads (oldest: {oldest}): the publisher must re-sign it with a current ferry-server (publish or refresh-head)"
    )]
    OldFormat {
        kind: &'static str,
        found: u16,
        oldest: u16,
    },
    /// The repository requires a newer client than this one.
    #[error(
        "channel requires client format {required}, this ferry supports {supported}: upgrade ferry"
    )]
    ClientTooOld { required: u16, supported: u16 },
    /// Structurally broken or truncated bytes.
    #[error("malformed {kind}: {reason}")]
    Malformed { kind: &'static str, reason: String },
    /// A field exceeds a limit of FORMAT.md.
    #[error("{kind} too large: {what} is {found}, the limit is {limit}")]
    TooLarge {
        kind: &'static str,
        what: &'static str,
        found: u64,
        limit: u64,
    },
    /// A path in a manifest is not a clean relative UTF-8 path inside the tree.
    #[error("unsafe path {path:?} in manifest: {reason}")]
    UnsafePath { path: String, reason: &'static str },
    /// A version string does not follow the version grammar.
    #[error("invalid version {0:?}: expected dot-separated numbers, optionally -prerelease")]
    BadVersion(String),
    /// A channel name does not follow the channel grammar.
    #[error("invalid channel name {0:?}: use 1-64 of [A-Za-z0-9._-], not starting with '.'")]
    BadChannel(String),
    /// A size such as `500MiB` could not be parsed.
    #[error(
        "invalid size {0:?}: expected a whole number of bytes with an optional unit (KiB, MiB, GiB, TiB, KB, MB, GB, TB), like 500MiB"
    )]
    BadSize(String),
    /// A release requirement (FORMAT.md §5.2) that breaks its grammar or limits.
    #[error("invalid requirement {found:?}: {reason}")]
    BadRequirement { found: String, reason: String },
    /// A duration string such as `7d` could not be parsed.
    #[error("invalid duration {0:?}: expected a number and a unit (s, m, h, d), like 90s or 7d")]
    BadDuration(String),
    /// A key file could not be parsed.
    #[error("invalid {kind} key: {reason}")]
    BadKey { kind: &'static str, reason: String },
    /// No trusted key produced a valid signature over the object.
    #[error("signature check failed for {kind}: {reason}")]
    BadSignature { kind: &'static str, reason: String },
    /// The bytes do not hash to the name the signed metadata gives them.
    #[error("{kind} hash mismatch: expected {expected}, got {actual}")]
    HashMismatch {
        kind: &'static str,
        expected: String,
        actual: String,
    },
    /// The object's size differs from the size the signed metadata gives it.
    #[error("{kind} size mismatch: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        kind: &'static str,
        expected: u64,
        actual: u64,
    },
    /// A signed object belongs to another channel than the one asked for.
    #[error("{kind} is for channel {found:?}, expected channel {expected:?}")]
    WrongChannel {
        kind: &'static str,
        expected: String,
        found: String,
    },
    /// A manifest is for another release than the head names.
    #[error("manifest is for version {found}, the channel head names version {expected}")]
    WrongVersion { expected: String, found: String },
    /// The channel head's lifetime is over: the repository may be frozen by an attacker.
    #[error(
        "channel head for {channel:?} expired at {expires_at} (unix time), it is now {now}: the publisher (or the server's online key) must refresh it"
    )]
    Expired {
        channel: String,
        expires_at: u64,
        now: u64,
    },
    /// A channel head older than one already seen: a replay or rollback attack.
    #[error(
        "channel head sequence {found} is lower than {seen}, already seen: refusing a replayed or rolled-back head"
    )]
    ReplayedHead { found: u64, seen: u64 },
    /// The publisher-signed content of a head is past its own expiry, which no online
    /// re-signing can extend.
    #[error(
        "the publisher's content of channel {channel:?} expired at {expires_at} (unix time), it is now {now}: a fresh head cannot extend it, a publishing key must re-sign (publish or refresh-head --key)"
    )]
    ContentExpired {
        channel: String,
        expires_at: u64,
        now: u64,
    },
    /// Publisher content older than content already accepted: an online key (or a
    /// replay) trying to revive an old state of the channel.
    #[error(
        "publisher sequence {found} is lower than {seen}, already accepted: refusing to revive older publisher content"
    )]
    RevivedContent { found: u64, seen: u64 },
    /// A head's rollout override is above the percentage the publisher signed.
    #[error(
        "rollout of {version} raised to {found}% by the head, the publisher signed {signed}%: only publishing keys may raise a rollout"
    )]
    RolloutRaised {
        version: String,
        found: u8,
        signed: u8,
    },
    /// An online-signed head raises a rollout that an earlier head of the same
    /// publisher content had lowered or paused.
    #[error(
        "rollout of {version} resumed to {found}% by an online-signed head after {seen}% was accepted for the same publisher content: only publishing keys may resume a rollout"
    )]
    RolloutResumed {
        version: String,
        found: u8,
        seen: u8,
    },
    /// A chunk failed to decompress or does not match its id.
    #[error("chunk {id} is corrupt: {reason}")]
    CorruptChunk { id: String, reason: String },
    /// Chunking failed (an I/O error from the reader).
    #[error("chunking failed: {0}")]
    Chunking(String),
    /// Compression failed.
    #[error("compression failed: {0}")]
    Compression(String),
    /// An object names an encoding algorithm this build does not implement.
    #[error("{kind} uses unknown algorithm {found}, this ferry reads algorithm {supported}")]
    UnknownAlgorithm {
        kind: &'static str,
        found: u8,
        supported: u8,
    },
}

pub type Result<T, E = FormatError> = std::result::Result<T, E>;

//! # ferry-format
//!
//! The bytes and rules of ferry, with no I/O policy and no network. `docs/FORMAT.md`
//! is the normative specification; each module names the section it implements.
//!
//! - [`id`]: blake3 digests naming chunks, files and objects (§1).
//! - [`version`]: release versions and channel names (§2); [`duration`]: `7d`-style spans.
//! - [`chunking`]: FastCDC v2020 cutting, per-chunk zstd (§2).
//! - [`codec`]: the canonical bincode body encoding (§3).
//! - [`manifest`] and [`path`]: a release's tree and chunk table (§3).
//! - [`delta`]: binary diffs between releases and manifest diffs (§3.6, §3.7);
//!   [`ondemand`]: diffs a server produces on request, their path and headers (§3.8).
//! - [`envelope`] and [`keys`]: signed objects, domain tags, ed25519 keys (§4);
//!   [`keylist`]: rotating root of trust with thresholds (§4.5).
//! - [`head`]: the signed, sequenced, expiring channel head (§5);
//!   [`requirements`]: what a release requires of the agent (§5.2), [`size`]: `500MiB`-style sizes.
//! - [`verified`]: `Verified<T>`, the only way from bytes to trusted values (§6).
//! - [`layout`]: repository paths (§7), the head log among them; [`plan`]: archive range planning (§8);
//!   [`content_range`]: the one HTTP header a client must parse to trust a range.
//! - [`report`]: agent reports (§10); [`audit`]: signed audit reports (§11).
//!
//! ```
//! use ferry_format::{head::*, id::ObjectRef, keys::SecretKey, envelope::*, keylist::HeadKeys, verified::*};
//! let key = SecretKey::from_seed([1; 32]);
//! let content = HeadContent {
//!     channel: "stable".into(), sequence: 1, issued_at: 100, expires_at: 9000,
//!     min_client_format: CLIENT_FORMAT,
//!     releases: vec![ReleaseRef { version: "1.0".into(), manifest: ObjectRef::of(b"m") }],
//!     manifest_diffs: vec![], rollout: vec![],
//! };
//! let bytes = ChannelHead::publish(&content, 1, 200, None, &[&key]).unwrap();
//! let policy = HeadPolicy { channel: "stable", now: 150, max_skew: 0, last_sequence: None,
//!     key_list_version: 0, last_content_sequence: None, rollout_seen: None };
//! let keys = HeadKeys::from(TrustedKeys::single(key.public()));
//! let trusted = verify_head(&bytes, &keys, &policy).unwrap();
//! assert_eq!(trusted.current().version, "1.0");
//! ```
#![forbid(unsafe_code)]

pub mod audit;
pub mod chunking;
pub mod codec;
pub mod content_range;
pub mod delta;
pub mod duration;
pub mod envelope;
pub mod error;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod head;
pub mod id;
pub mod keylist;
pub mod keys;
pub mod layout;
pub mod manifest;
pub mod ondemand;
pub mod path;
pub mod plan;
pub mod report;
pub mod requirements;
pub mod size;
#[cfg(feature = "test-support")]
pub mod test_support;
pub mod verified;
pub mod version;

pub use error::{FormatError, Result};

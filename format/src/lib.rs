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
//! - [`delta`]: binary diffs between releases and manifest diffs (§3.6, §3.7).
//! - [`envelope`] and [`keys`]: signed objects, domain tags, ed25519 keys (§4);
//!   [`keylist`]: rotating root of trust with thresholds (§4.5).
//! - [`head`]: the signed, sequenced, expiring channel head (§5).
//! - [`verified`]: `Verified<T>`, the only way from bytes to trusted values (§6).
//! - [`layout`]: repository paths (§7); [`plan`]: archive range planning (§8);
//!   [`content_range`]: the one HTTP header a client must parse to trust a range.
//!
//! ```
//! use ferry_format::{head::*, id::ObjectRef, keys::SecretKey, envelope::TrustedKeys, verified::*};
//! let key = SecretKey::from_seed([1; 32]);
//! let head = ChannelHead {
//!     channel: "stable".into(), sequence: 1, issued_at: 100, expires_at: 200,
//!     min_client_format: 1,
//!     releases: vec![ReleaseRef { version: "1.0".into(), manifest: ObjectRef::of(b"m") }],
//!     key_list: None, manifest_diffs: vec![],
//! };
//! let bytes = head.sign(&[&key]).unwrap();
//! let policy = HeadPolicy { channel: "stable", now: 150, max_skew: 0, last_sequence: None, key_list_version: 0 };
//! let trusted = verify_head(&bytes, &TrustedKeys::single(key.public()), &policy).unwrap();
//! assert_eq!(trusted.current().version, "1.0");
//! ```
#![forbid(unsafe_code)]

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
pub mod path;
pub mod plan;
#[cfg(feature = "test-support")]
pub mod test_support;
pub mod verified;
pub mod version;

pub use error::{FormatError, Result};

//! Diffs a server produces on request (FORMAT.md §3.8): the request path, the two
//! headers agent and server exchange, and the server's index from a (base, target)
//! pair to the diff object it made.
//!
//! An agent that holds a retained release no listed diff starts from may ask a server
//! that advertises it ([`DIFFS_HEADER`] on the channel head's response) for
//! `GET /diffs/<base manifest>/<target manifest>`. The answer is an ordinary diff
//! object (§3.6) from that base to that target, which needs no signature: every chunk
//! it produces is checked against its id in the signed target manifest. Anything but
//! `200` with a diff no larger than the archive ranges it replaces sends the agent to
//! the archive.
//!
//! ```text
//! diffs/<64 hex base manifest>/<64 hex target manifest>   request path (never a file)
//! diff-index/<64 hex base>/<64 hex target>                server side: "diff <hex> <size>\n" or "none\n"
//! ```

use crate::error::{FormatError, Result};
use crate::id::{Digest, ObjectRef};

/// Response header of a channel head served by a server that produces diffs on
/// request; its value is [`ON_DEMAND`]. Static hosts never send it, so agents never
/// ask them.
pub const DIFFS_HEADER: &str = "ferry-diffs";
/// The value of [`DIFFS_HEADER`].
pub const ON_DEMAND: &str = "on-demand";
/// Request header: how many whole seconds the agent waits for a diff that is not made
/// yet (decimal, at most [`MAX_WAIT_SECS`]; a larger value counts as that). Without
/// it the server waits for nothing: it starts the job and answers `503`.
pub const WAIT_HEADER: &str = "ferry-wait";
/// Longest wait a server grants one request: below the 60 s a server may drop a
/// connection that moves no byte.
pub const MAX_WAIT_SECS: u64 = 50;

/// The request path of the diff from the release whose manifest is `base` to the one
/// whose manifest is `target` (relative, like the layout's paths).
pub fn diff_request_path(base: &Digest, target: &Digest) -> String {
    format!("diffs/{}/{}", base.to_hex(), target.to_hex())
}

/// The (base, target) of a request path [`diff_request_path`] produces, with or
/// without its leading `/`; `None` for any other text (upper case hex, a query, more
/// or fewer components, the same manifest twice).
pub fn parse_diff_request(path: &str) -> Option<(Digest, Digest)> {
    let path = path.strip_prefix('/').unwrap_or(path);
    let rest = path.strip_prefix("diffs/")?;
    let (base, target) = rest.split_once('/')?;
    let b = Digest::from_hex(base).ok()?;
    let t = Digest::from_hex(target).ok()?;
    (b != t && diff_request_path(&b, &t) == path).then_some((b, t))
}

/// Where a server records what it made for (base, target): never served, read only
/// by the server that wrote it (and `gc`).
pub fn diff_index_path(base: &Digest, target: &Digest) -> String {
    format!("diff-index/{}/{}", base.to_hex(), target.to_hex())
}

/// The folder of [`diff_index_path`]'s files.
pub const DIFF_INDEX_DIR: &str = "diff-index";

/// What the server made for a pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndexEntry {
    /// This object (a §3.6 diff object under its content-addressed name).
    Diff(ObjectRef),
    /// No diff smaller than the archive ranges it would replace.
    NoDiff,
}

impl IndexEntry {
    /// The file's text: `diff <64 hex> <size>\n` or `none\n`.
    pub fn encode(&self) -> String {
        match self {
            IndexEntry::Diff(r) => format!("diff {} {}\n", r.hash.to_hex(), r.size),
            IndexEntry::NoDiff => "none\n".into(),
        }
    }

    /// Reads exactly what [`IndexEntry::encode`] writes.
    pub fn parse(text: &str) -> Result<IndexEntry> {
        let bad = || FormatError::Malformed {
            kind: "diff index entry",
            reason: format!("{:?}", text.chars().take(200).collect::<String>()),
        };
        let line = text.strip_suffix('\n').ok_or_else(bad)?;
        let entry = match line.split(' ').collect::<Vec<_>>().as_slice() {
            ["none"] => IndexEntry::NoDiff,
            ["diff", hash, size] => IndexEntry::Diff(ObjectRef {
                hash: Digest::from_hex(hash).map_err(|_| bad())?,
                size: size.parse().map_err(|_| bad())?,
            }),
            _ => return Err(bad()),
        };
        (entry.encode() == text).then_some(entry).ok_or_else(bad)
    }
}

/// The wait an agent asked for in [`WAIT_HEADER`], capped at [`MAX_WAIT_SECS`];
/// `None` for anything but decimal digits.
pub fn parse_wait(value: &str) -> Option<u64> {
    if value.is_empty() || value.len() > 20 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(
        value
            .parse::<u64>()
            .map_or(MAX_WAIT_SECS, |v| v.min(MAX_WAIT_SECS)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_canonical_request_paths_parse() {
        let (b, t) = (Digest::of(b"base"), Digest::of(b"target"));
        let path = diff_request_path(&b, &t);
        assert_eq!(path, format!("diffs/{}/{}", b.to_hex(), t.to_hex()));
        assert_eq!(parse_diff_request(&path), Some((b, t)));
        assert_eq!(parse_diff_request(&format!("/{path}")), Some((b, t)));
        for bad in [
            format!("/diffs/{}/{}", b.to_hex().to_uppercase(), t.to_hex()),
            format!("/diffs/{}/{}/", b.to_hex(), t.to_hex()),
            format!("/diffs/{}/{}/x", b.to_hex(), t.to_hex()),
            format!("/diffs/{}", b.to_hex()),
            format!("/diffs/{}/{}", b.to_hex(), b.to_hex()),
            format!("/diffs/../{}", t.to_hex()),
            format!("/diffs/{}/{}?x=1", b.to_hex(), t.to_hex()),
            format!("/diff-index/{}/{}", b.to_hex(), t.to_hex()),
            format!("/objects/{}/{}", &b.to_hex()[..2], b.to_hex()),
            "/diffs//".to_string(),
        ] {
            assert_eq!(parse_diff_request(&bad), None, "{bad}");
        }
        assert_eq!(
            diff_index_path(&b, &t),
            format!("diff-index/{}/{}", b.to_hex(), t.to_hex())
        );
    }

    #[test]
    fn index_entries_round_trip_and_nothing_else_parses() {
        let r = ObjectRef::of(b"a diff");
        for e in [IndexEntry::Diff(r), IndexEntry::NoDiff] {
            assert_eq!(IndexEntry::parse(&e.encode()).unwrap(), e);
        }
        for bad in [
            "none".to_string(),
            "none \n".to_string(),
            format!("diff {} {}", r.hash.to_hex(), r.size),
            format!("diff {} 0{}\n", r.hash.to_hex(), r.size),
            format!("diff {} -1\n", r.hash.to_hex()),
            format!("diff {} {}\n", r.hash.to_hex().to_uppercase(), r.size),
            format!("diff  {} {}\n", r.hash.to_hex(), r.size),
        ] {
            assert!(IndexEntry::parse(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn waits_are_digits_capped_at_the_maximum() {
        assert_eq!(parse_wait("0"), Some(0));
        assert_eq!(parse_wait("30"), Some(30));
        assert_eq!(parse_wait("51"), Some(MAX_WAIT_SECS));
        assert_eq!(parse_wait("99999999999999999999"), Some(MAX_WAIT_SECS));
        for bad in ["", "-1", "1.5", " 3", "3s", "+3", "999999999999999999999"] {
            assert_eq!(parse_wait(bad), None, "{bad:?}");
        }
    }
}

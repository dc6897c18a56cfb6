//! Parsing a `Content-Range` response header (RFC 9110 §14.4), the one piece of HTTP a
//! client must understand to trust that a 206 body is the range it asked for. Kept
//! here, free of any HTTP library, so it can be fuzzed and reused by every transport.

use crate::error::{FormatError, Result};

/// A satisfied byte range: `bytes first-last/complete` (`complete` is `None` for `*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContentRange {
    pub first: u64,
    /// Inclusive.
    pub last: u64,
    pub complete: Option<u64>,
}

fn bad(text: &str, reason: &str) -> FormatError {
    FormatError::Malformed {
        kind: "Content-Range header",
        reason: format!("{text:?}: {reason}"),
    }
}

fn number(text: &str, s: &str) -> Result<u64> {
    if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad(text, "not a decimal number"));
    }
    s.parse().map_err(|_| bad(text, "number out of range"))
}

/// Parses `bytes A-B/N` or `bytes A-B/*`; rejects unsatisfied ranges (`bytes */N`),
/// `B < A`, and `B ≥ N`.
pub fn parse_content_range(text: &str) -> Result<ContentRange> {
    let rest = text
        .trim()
        .strip_prefix("bytes ")
        .ok_or_else(|| bad(text, "unit is not bytes"))?;
    let (span, complete) = rest.split_once('/').ok_or_else(|| bad(text, "no '/'"))?;
    let (a, b) = span.split_once('-').ok_or_else(|| bad(text, "no '-'"))?;
    let first = number(text, a.trim())?;
    let last = number(text, b.trim())?;
    let complete = match complete.trim() {
        "*" => None,
        n => Some(number(text, n)?),
    };
    if last < first {
        return Err(bad(text, "last byte before first"));
    }
    if complete.is_some_and(|n| last >= n) {
        return Err(bad(text, "range beyond the complete length"));
    }
    Ok(ContentRange {
        first,
        last,
        complete,
    })
}

impl ContentRange {
    /// True when this is exactly `[start, end)`.
    pub fn is(&self, start: u64, end: u64) -> bool {
        end > start && self.first == start && self.last == end - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let r = parse_content_range("bytes 10-19/100").unwrap();
        assert!(r.is(10, 20));
        assert_eq!(parse_content_range("bytes 0-0/*").unwrap().complete, None);
        for bad in [
            "",
            "bytes */100",
            "bytes 5-4/100",
            "bytes 0-100/100",
            "items 0-1/2",
            "bytes -1-2/3",
            "bytes 1-2",
            "bytes 99999999999999999999-1/2",
        ] {
            assert!(parse_content_range(bad).is_err(), "{bad:?}");
        }
    }
}

//! Which bytes of a file a request gets: `Range` (RFC 9110 §14) and the conditional
//! headers that decide between 200, 206, 304 and 416.
//!
//! Only single ranges are honoured. A multi-range request gets the whole body (RFC
//! 9110 §14.2 lets a server ignore `Range`), and so does a malformed header: ferry
//! clients fetch one contiguous tail, and multipart bodies would only add attack
//! surface.

use http_range_header::{EndPosition, RangeUnsatisfiableError, StartPosition, parse_range_header};

/// The answer to a `Range` header for a representation of `len` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeDecision {
    /// 200 with the whole body.
    Full,
    /// 206 with bytes `start..=end`.
    Partial { start: u64, end: u64 },
    /// 416 with `Content-Range: bytes */len`.
    Unsatisfiable,
}

/// Decides what a `Range` header value asks for.
pub fn decide(header: Option<&str>, len: u64) -> RangeDecision {
    let Some(header) = header else {
        return RangeDecision::Full;
    };
    let parsed = match parse_range_header(header) {
        Ok(p) => p,
        // `bytes=-0` is well-formed and can never be satisfied (RFC 9110 §14.1.1).
        Err(RangeUnsatisfiableError::ZeroSuffix) if !header.contains(',') => {
            return RangeDecision::Unsatisfiable;
        }
        Err(_) => return RangeDecision::Full,
    };
    let [range] = parsed.ranges.as_slice() else {
        return RangeDecision::Full;
    };
    match (range.start, range.end) {
        // last-pos before first-pos makes the range invalid, not unsatisfiable: ignore it.
        (StartPosition::Index(s), EndPosition::Index(e)) if e < s => {
            return RangeDecision::Full;
        }
        // A suffix longer than the representation means all of it (RFC 9110 §14.1.2);
        // the parser's validate() calls that an error, so it is handled here.
        (StartPosition::FromLast(n), _) if n > len && len > 0 => {
            return RangeDecision::Partial {
                start: 0,
                end: len - 1,
            };
        }
        _ => {}
    }
    if len == 0 {
        return RangeDecision::Unsatisfiable;
    }
    match parsed.validate(len).as_deref() {
        Ok([r]) if *r.start() < len && r.start() <= r.end() => RangeDecision::Partial {
            start: *r.start(),
            end: *r.end(),
        },
        _ => RangeDecision::Unsatisfiable,
    }
}

/// Whether an `If-None-Match` value matches the strong ETag `etag` (quoted). Uses the
/// weak comparison RFC 9110 §13.1.2 prescribes for this header.
pub fn none_match(header: &str, etag: &str) -> bool {
    header
        .split(',')
        .map(str::trim)
        .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag)
}

/// Whether an `If-Range` value still allows a partial answer: only the same strong
/// ETag does (dates are not used, since ETags are always sent).
pub fn if_range_holds(header: &str, etag: &str) -> bool {
    header.trim() == etag
}

#[cfg(test)]
mod tests {
    use super::RangeDecision::*;
    use super::*;

    fn d(h: &str, len: u64) -> RangeDecision {
        decide(Some(h), len)
    }

    #[test]
    fn single_ranges() {
        assert_eq!(decide(None, 100), Full);
        assert_eq!(d("bytes=0-9", 100), Partial { start: 0, end: 9 });
        assert_eq!(d("bytes=90-200", 100), Partial { start: 90, end: 99 });
        assert_eq!(d("bytes=99-99", 100), Partial { start: 99, end: 99 });
    }

    #[test]
    fn suffix_and_open_ended() {
        assert_eq!(d("bytes=-10", 100), Partial { start: 90, end: 99 });
        assert_eq!(d("bytes=-100", 100), Partial { start: 0, end: 99 });
        assert_eq!(d("bytes=-500", 100), Partial { start: 0, end: 99 });
        assert_eq!(d("bytes=40-", 100), Partial { start: 40, end: 99 });
        assert_eq!(d("bytes=0-", 1), Partial { start: 0, end: 0 });
    }

    #[test]
    fn unsatisfiable() {
        assert_eq!(d("bytes=100-", 100), Unsatisfiable);
        assert_eq!(d("bytes=100-200", 100), Unsatisfiable);
        assert_eq!(d("bytes=-0", 100), Unsatisfiable);
        assert_eq!(d("bytes=0-", 0), Unsatisfiable);
        assert_eq!(d("bytes=-5", 0), Unsatisfiable);
    }

    #[test]
    fn multi_and_malformed_get_the_whole_body() {
        assert_eq!(d("bytes=0-1,5-9", 100), Full);
        assert_eq!(d("bytes=0-5,3-9", 100), Full, "overlapping");
        assert_eq!(d("bytes=5-1", 100), Full, "reversed");
        assert_eq!(d("bytes=abc", 100), Full);
        assert_eq!(d("items=0-5", 100), Full);
        assert_eq!(d("bytes=", 100), Full);
        assert_eq!(d("bytes=--5", 100), Full);
    }

    #[test]
    fn conditionals() {
        let tag = "\"abc\"";
        assert!(none_match("\"abc\"", tag));
        assert!(none_match("\"x\", W/\"abc\"", tag));
        assert!(none_match("*", tag));
        assert!(!none_match("\"abcd\"", tag));
        assert!(if_range_holds("\"abc\"", tag));
        assert!(!if_range_holds("W/\"abc\"", tag));
    }
}

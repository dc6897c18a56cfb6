//! Content-Range parsing: never panics; an accepted header is a satisfiable range,
//! and printing it back canonically parses to the same range.
#![no_main]

use ferry_format::content_range::parse_content_range;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let Ok(r) = parse_content_range(text) else {
        return;
    };
    assert!(r.first <= r.last);
    assert!(r.complete.is_none_or(|n| r.last < n));
    assert!(r.is(r.first, r.last + 1));
    let complete = r.complete.map_or("*".to_string(), |n| n.to_string());
    let canonical = format!("bytes {}-{}/{complete}", r.first, r.last);
    assert_eq!(parse_content_range(&canonical).unwrap(), r);
});

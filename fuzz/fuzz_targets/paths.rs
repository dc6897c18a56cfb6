//! Path, version, channel and repository-path grammars: never panic, and accept only
//! what is safe. The input is split at newlines into the strings to check.
#![no_main]

use ferry_format::id::Digest;
use ferry_format::layout::{
    RepoPath, head_log_path, head_path, key_list_path, object_path, parse_repo_path,
};
use ferry_format::ondemand::{
    IndexEntry, MAX_WAIT_SECS, diff_request_path, parse_diff_request, parse_wait,
};
use ferry_format::path::{check_path, check_symlink_target};
use ferry_format::version::{Version, check_channel};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let parts: Vec<&str> = text.splitn(3, '\n').collect();
    for s in &parts {
        if check_path(s).is_ok() {
            assert!(!s.is_empty() && !s.starts_with('/') && s.len() <= 4096);
            assert!(s.split('/').all(plain_component), "{s:?} accepted");
        }
        if check_channel(s).is_ok() {
            assert!(
                !s.starts_with('.') && plain_component(s),
                "channel {s:?} accepted"
            );
            let parsed = Some(RepoPath::Head(s.to_string()));
            assert_eq!(parse_repo_path(&head_path(s)), parsed);
            assert_eq!(parse_repo_path(&format!("/{}", head_path(s))), parsed);
        }
        if let Ok(v) = Version::parse(s) {
            assert_eq!(v.as_str(), *s);
            // Versions name folders on clients.
            assert!(
                plain_component(s) && !s.starts_with(['.', '-']),
                "version {s:?}"
            );
            assert!(
                s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
            );
        }
        let d = Digest::of(s.as_bytes());
        assert_eq!(parse_repo_path(&object_path(&d)), Some(RepoPath::Object(d)));
        // parse_repo_path accepts exactly what the layout functions produce.
        let unrooted = s.strip_prefix('/').unwrap_or(s);
        match parse_repo_path(s) {
            None => {}
            Some(RepoPath::Object(d)) => assert_eq!(unrooted, object_path(&d)),
            Some(RepoPath::Head(c)) => assert_eq!(unrooted, head_path(&c)),
            Some(RepoPath::KeyList(v)) => assert_eq!(unrooted, key_list_path(v)),
            Some(RepoPath::HeadLog(c, seq, hash)) => {
                assert_eq!(unrooted, head_log_path(&c, seq, &hash))
            }
        }
        // Diff requests (FORMAT.md §3.8): exactly what diff_request_path produces,
        // two different manifests; index entries and waits read back as written.
        if let Some((b, t)) = parse_diff_request(s) {
            assert_ne!(b, t);
            assert_eq!(unrooted, diff_request_path(&b, &t));
        }
        if let Ok(e) = IndexEntry::parse(&format!("{s}\n")) {
            assert_eq!(e.encode(), format!("{s}\n"));
        }
        if let Some(w) = parse_wait(s) {
            assert!(w <= MAX_WAIT_SECS && s.bytes().all(|b| b.is_ascii_digit()));
        }
        let v = u64::from_le_bytes(*d.0.first_chunk().unwrap()).max(1);
        assert_eq!(
            parse_repo_path(&key_list_path(v)),
            Some(RepoPath::KeyList(v))
        );
    }
    if let [link, target, ..] = parts[..]
        && check_path(link).is_ok()
        && check_symlink_target(link, target).is_ok()
    {
        // Resolve from the link's directory: the walk never leaves the tree.
        let mut dir: Vec<&str> = link.split('/').collect();
        dir.pop();
        for c in target.split('/') {
            if c == ".." {
                let up = dir.pop();
                assert!(up.is_some(), "{link:?} -> {target:?} leaves the tree");
            } else {
                assert!(plain_component(c), "{link:?} -> {target:?}");
                dir.push(c);
            }
        }
    }
    // Version order is total and agrees with string equality.
    let versions: Vec<Version> = parts
        .iter()
        .filter_map(|s| Version::parse(s).ok())
        .collect();
    for a in &versions {
        for b in &versions {
            assert_eq!(a.cmp(b), b.cmp(a).reverse(), "{a} vs {b}");
            assert_eq!(a == b, a.as_str() == b.as_str(), "{a} vs {b}");
            for c in &versions {
                assert!(!(a <= b && b <= c) || a <= c, "{a} <= {b} <= {c}");
            }
        }
    }
});

/// A single path component that can name nothing but an entry of its directory.
fn plain_component(c: &str) -> bool {
    !matches!(c, "" | "." | "..") && c.len() <= 255 && !c.contains(['/', '\\', '\0'])
}

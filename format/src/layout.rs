//! Where objects live in a repository (FORMAT.md §7). A repository is plain static
//! files, so these relative paths are also the URL paths under the server's base URL.
//!
//! ```text
//! objects/<first 2 hex>/<64 hex>     immutable, content-addressed (manifests, archives)
//! channels/<channel>/head            the signed channel head
//! channels/<channel>/log/<seq>-<hash> every head ever written, immutable (the audit trail)
//! keys/<version>                     key list <version> (never rewritten once written)
//! ```

use crate::id::Digest;
use crate::version::check_channel;

/// Relative path of the object named `hash`.
pub fn object_path(hash: &Digest) -> String {
    let hex = hash.to_hex();
    format!("objects/{}/{hex}", &hex[..2])
}

/// Relative path of a channel's head.
pub fn head_path(channel: &str) -> String {
    format!("channels/{channel}/head")
}

/// Relative path of the folder of a channel's head log (FORMAT.md §7).
pub fn head_log_dir(channel: &str) -> String {
    format!("channels/{channel}/log")
}

/// Relative path of one head log entry: the head of head sequence `sequence` whose
/// exact bytes hash to `hash`. The sequence comes first, as 20 digits, so names sort
/// in sequence order; the hash makes the name content-addressed, so an entry is never
/// rewritten and a head that a crash kept from becoming current does not take the
/// name of the head later signed with the same sequence.
pub fn head_log_path(channel: &str, sequence: u64, hash: &Digest) -> String {
    format!(
        "{}/{}",
        head_log_dir(channel),
        head_log_name(sequence, hash)
    )
}

/// The file name of a head log entry (see [`head_log_path`]).
pub fn head_log_name(sequence: u64, hash: &Digest) -> String {
    format!("{sequence:020}-{}", hash.to_hex())
}

/// Parses a head log entry's file name back into (sequence, hash); `None` for any
/// name [`head_log_name`] does not produce.
pub fn parse_head_log_name(name: &str) -> Option<(u64, Digest)> {
    let (seq, hash) = name.split_once('-')?;
    if seq.len() != 20 || !seq.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let sequence: u64 = seq.parse().ok()?;
    let d = Digest::from_hex(hash).ok()?;
    (head_log_name(sequence, &d) == name).then_some((sequence, d))
}

/// Relative path of key list `version`. Key lists are found by version so that an
/// agent several rotations behind can walk the chain one step at a time.
pub fn key_list_path(version: u64) -> String {
    format!("keys/{version}")
}

/// A request path a repository can answer.
#[derive(Debug, PartialEq, Eq)]
pub enum RepoPath {
    Object(Digest),
    Head(String),
    KeyList(u64),
    /// A head log entry: channel, head sequence, blake3 of the entry's bytes.
    HeadLog(String, u64, Digest),
}

/// Recognises exactly the paths [`object_path`], [`head_path`], [`key_list_path`] and
/// [`head_log_path`] produce, so a server
/// that maps only these to files can never read anything else.
pub fn parse_repo_path(path: &str) -> Option<RepoPath> {
    let path = path.strip_prefix('/').unwrap_or(path);
    let parts: Vec<&str> = path.split('/').collect();
    match parts.as_slice() {
        ["objects", fan, name] => {
            let d = Digest::from_hex(name).ok()?;
            let canonical = d.to_hex();
            (canonical == *name && canonical[..2] == **fan).then_some(RepoPath::Object(d))
        }
        ["channels", channel, "head"] => check_channel(channel)
            .ok()
            .map(|()| RepoPath::Head(channel.to_string())),
        ["channels", channel, "log", name] => {
            check_channel(channel).ok()?;
            let (sequence, hash) = parse_head_log_name(name)?;
            Some(RepoPath::HeadLog(channel.to_string(), sequence, hash))
        }
        ["keys", version] => {
            let v: u64 = version.parse().ok()?;
            (v >= 1 && key_list_path(v) == path).then_some(RepoPath::KeyList(v))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_layout_paths_parse() {
        let d = Digest::of(b"x");
        assert_eq!(parse_repo_path(&object_path(&d)), Some(RepoPath::Object(d)));
        assert_eq!(
            parse_repo_path("/channels/stable/head"),
            Some(RepoPath::Head("stable".into()))
        );
        assert_eq!(parse_repo_path("/keys/3"), Some(RepoPath::KeyList(3)));
        let log = head_log_path("stable", 7, &d);
        assert_eq!(
            log,
            format!("channels/stable/log/00000000000000000007-{}", d.to_hex())
        );
        assert_eq!(
            parse_repo_path(&log),
            Some(RepoPath::HeadLog("stable".into(), 7, d))
        );
        assert_eq!(
            parse_head_log_name(&head_log_name(u64::MAX, &d)),
            Some((u64::MAX, d))
        );
        for bad in [
            "/keys/0",
            "/keys/03",
            "/keys/+3",
            "/keys/3/x",
            "/etc/passwd",
            "/channels/../head",
            "/channels/..%2f/head",
            &format!("/channels/stable/log/7-{}", d.to_hex()),
            &format!("/channels/stable/log/00000000000000000007_{}", d.to_hex()),
            &format!(
                "/channels/stable/log/00000000000000000007-{}",
                d.to_hex().to_uppercase()
            ),
            &format!("/channels/stable/log/99999999999999999999-{}", d.to_hex()),
            "/channels/stable/log/00000000000000000007",
            &format!("/channels/../log/00000000000000000007-{}", d.to_hex()),
            "/objects/zz/00",
            "/objects/../../etc/passwd",
            &format!("/objects/00/{}", d.to_hex()),
            &format!(
                "/objects/{}/{}",
                &d.to_hex()[..2],
                d.to_hex().to_uppercase()
            ),
        ] {
            assert_eq!(parse_repo_path(bad), None, "{bad}");
        }
    }
}

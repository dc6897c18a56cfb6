//! Where objects live in a repository (FORMAT.md §7). A repository is plain static
//! files, so these relative paths are also the URL paths under the server's base URL.
//!
//! ```text
//! objects/<first 2 hex>/<64 hex>     immutable, content-addressed (manifests, archives)
//! channels/<channel>/head            the signed channel head
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
}

/// Recognises exactly the paths [`object_path`] and [`head_path`] produce, so a server
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
        for bad in [
            "/keys/0",
            "/keys/03",
            "/keys/+3",
            "/keys/3/x",
            "/etc/passwd",
            "/channels/../head",
            "/channels/..%2f/head",
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

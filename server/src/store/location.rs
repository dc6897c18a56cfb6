//! What `--repo` names: a local folder or a bucket in object storage.
//!
//! Any value that starts with a URL scheme (`NAME:`) is a URL and must be a supported
//! one; it is never taken as a folder name, so `--repo s3:/bucket` (one slash) or an
//! unknown scheme fails here instead of creating a local folder called `s3:`. A folder
//! whose name has a colon is still reachable as `./name:with-colon`.

use std::fmt;
use std::path::PathBuf;

use thiserror::Error;

/// A parsed `--repo` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// A folder on this machine (the embedded default).
    Local(PathBuf),
    /// An object store: the URL as given, its kind, bucket and key prefix.
    Object(ObjectUrl),
}

/// Which object store a URL names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    /// Amazon S3 or an S3-compatible service (`s3://`, `s3a://`).
    S3,
}

/// An object store URL: `s3://bucket/prefix`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectUrl {
    pub service: Service,
    pub bucket: String,
    /// Key prefix without leading or trailing slash; empty for the bucket's root.
    pub prefix: String,
}

impl fmt::Display for ObjectUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.service {
            Service::S3 => "s3",
        };
        if self.prefix.is_empty() {
            write!(f, "{scheme}://{}", self.bucket)
        } else {
            write!(f, "{scheme}://{}/{}", self.bucket, self.prefix)
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Local(p) => write!(f, "{}", p.display()),
            Location::Object(u) => u.fmt(f),
        }
    }
}

/// Why a `--repo` value was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum LocationError {
    #[error(
        "{value:?} starts with the URL scheme {scheme:?} but is not a URL (no \"//\" after \
         \"{scheme}:\"): write {scheme}://BUCKET/PREFIX for object storage, or ./{value} for a \
         local folder whose name has a colon"
    )]
    Malformed { value: String, scheme: String },
    #[error(
        "unknown storage scheme {scheme:?} in {value:?}: --repo takes a local folder or \
         s3://BUCKET/PREFIX (S3 and S3-compatible services)"
    )]
    UnknownScheme { value: String, scheme: String },
    #[error("{value:?}: {reason}")]
    BadUrl { value: String, reason: String },
    #[error("--repo is empty")]
    Empty,
}

impl Location {
    /// Parses a `--repo` value (see the module docs).
    pub fn parse(value: &str) -> Result<Location, LocationError> {
        if value.is_empty() {
            return Err(LocationError::Empty);
        }
        let Some(scheme) = scheme_of(value) else {
            return Ok(Location::Local(PathBuf::from(value)));
        };
        let rest = &value[scheme.len() + 1..];
        let Some(after) = rest.strip_prefix("//") else {
            return Err(LocationError::Malformed {
                value: value.to_string(),
                scheme: scheme.to_string(),
            });
        };
        let bad = |reason: &str| LocationError::BadUrl {
            value: value.to_string(),
            reason: reason.to_string(),
        };
        match scheme.to_ascii_lowercase().as_str() {
            "file" => {
                // file:///abs/path (an empty host) only: file://host/... names another machine.
                let path = after
                    .strip_prefix('/')
                    .map(|p| format!("/{p}"))
                    .ok_or_else(|| bad("a file: URL must be file:///ABSOLUTE/PATH"))?;
                Ok(Location::Local(PathBuf::from(path)))
            }
            "s3" | "s3a" => {
                if after.contains(['?', '#']) {
                    return Err(bad(
                        "a query or fragment is not allowed: configure the store with the AWS_* \
                         environment variables or --store-option",
                    ));
                }
                let (bucket, prefix) = after.split_once('/').unwrap_or((after, ""));
                if bucket.is_empty() {
                    return Err(bad("the bucket name is missing (s3://BUCKET/PREFIX)"));
                }
                if bucket.contains('@') || bucket.contains(':') {
                    return Err(bad(
                        "credentials or ports do not belong in the URL: use AWS_ACCESS_KEY_ID, \
                         AWS_SECRET_ACCESS_KEY and AWS_ENDPOINT_URL",
                    ));
                }
                let prefix = prefix.trim_matches('/');
                if prefix
                    .split('/')
                    .any(|p| p.is_empty() || p == "." || p == "..")
                    && !prefix.is_empty()
                {
                    return Err(bad("the prefix has an empty, \".\" or \"..\" segment"));
                }
                Ok(Location::Object(ObjectUrl {
                    service: Service::S3,
                    bucket: bucket.to_string(),
                    prefix: prefix.to_string(),
                }))
            }
            _ => Err(LocationError::UnknownScheme {
                value: value.to_string(),
                scheme: scheme.to_string(),
            }),
        }
    }
}

/// The URL scheme `value` starts with (RFC 3986: a letter, then letters, digits, `+`,
/// `-` or `.`, then `:`), if any.
fn scheme_of(value: &str) -> Option<&str> {
    let end = value.find(':')?;
    let scheme = &value[..end];
    let mut chars = scheme.chars();
    let first = chars.next()?;
    (first.is_ascii_alphabetic()
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
    .then_some(scheme)
}

/// clap's value parser for `--repo`.
pub fn parse_repo(value: &str) -> Result<Location, String> {
    Location::parse(value).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s3(bucket: &str, prefix: &str) -> Location {
        Location::Object(ObjectUrl {
            service: Service::S3,
            bucket: bucket.into(),
            prefix: prefix.into(),
        })
    }

    #[test]
    fn folders_stay_folders() {
        for p in [
            "repo",
            "./repo",
            "/srv/ferry/repo",
            "../x",
            "./s3:/b",
            "a b/c",
            "1:2",
        ] {
            assert_eq!(
                Location::parse(p).unwrap(),
                Location::Local(p.into()),
                "{p}"
            );
        }
        assert_eq!(
            Location::parse("file:///srv/repo").unwrap(),
            Location::Local("/srv/repo".into())
        );
    }

    #[test]
    fn s3_urls() {
        assert_eq!(Location::parse("s3://b").unwrap(), s3("b", ""));
        assert_eq!(Location::parse("s3://b/").unwrap(), s3("b", ""));
        assert_eq!(Location::parse("s3://b/p/q/").unwrap(), s3("b", "p/q"));
        assert_eq!(Location::parse("S3A://b/p").unwrap(), s3("b", "p"));
        assert_eq!(s3("b", "p/q").to_string(), "s3://b/p/q");
    }

    #[test]
    fn anything_with_a_scheme_is_a_store_or_an_error() {
        for (v, want) in [
            ("s3:/bucket/prefix", "not a URL"),
            ("s3:bucket", "not a URL"),
            ("http://host/repo", "unknown storage scheme \"http\""),
            ("minio://b/p", "unknown storage scheme"),
            ("s3://", "bucket name is missing"),
            ("s3:///p", "bucket name is missing"),
            ("s3://k:s@b/p", "credentials"),
            ("s3://b/p?endpoint=x", "query"),
            ("s3://b/a//c", "empty"),
            ("s3://b/a/../c", "\"..\""),
            ("file://host/x", "file:///"),
            ("", "empty"),
        ] {
            let e = Location::parse(v).unwrap_err().to_string();
            assert!(e.contains(want), "{v}: {e}");
        }
    }
}

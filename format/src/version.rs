//! Release versions and channel names (FORMAT.md §2).
//!
//! A version is dot-separated decimal numbers compared numerically (`0.9 < 0.10`,
//! `1 < 1.0.1`), optionally followed by `-` and a semver-style pre-release
//! (`1.0.0-rc.1 < 1.0.0`). Versions name folders on clients, so the grammar is
//! deliberately narrow.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use crate::error::{FormatError, Result};

/// Longest accepted version string.
pub const MAX_VERSION_LEN: usize = 64;
/// Longest accepted channel name.
pub const MAX_CHANNEL_LEN: usize = 64;

/// A parsed, validated release version.
#[derive(Clone, Debug)]
pub struct Version {
    raw: String,
    numbers: Vec<u64>,
    pre: Option<Vec<PreId>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum PreId {
    Num(u64),
    Alpha(String),
}

impl PartialOrd for PreId {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for PreId {
    // Semver rule: numeric identifiers sort before alphanumeric ones.
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (PreId::Num(a), PreId::Num(b)) => a.cmp(b),
            (PreId::Num(_), PreId::Alpha(_)) => Ordering::Less,
            (PreId::Alpha(_), PreId::Num(_)) => Ordering::Greater,
            (PreId::Alpha(a), PreId::Alpha(b)) => a.cmp(b),
        }
    }
}

impl Version {
    pub fn parse(s: &str) -> Result<Self> {
        let bad = || FormatError::BadVersion(s.to_string());
        if s.is_empty() || s.len() > MAX_VERSION_LEN {
            return Err(bad());
        }
        let (main, pre) = match s.split_once('-') {
            Some((m, p)) => (m, Some(p)),
            None => (s, None),
        };
        let numbers = main
            .split('.')
            .map(|part| {
                if part.is_empty() || part.len() > 19 || !part.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad());
                }
                part.parse::<u64>().map_err(|_| bad())
            })
            .collect::<Result<Vec<_>>>()?;
        let pre = match pre {
            None => None,
            Some(p) => Some(
                p.split('.')
                    .map(|id| {
                        if id.is_empty()
                            || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                        {
                            return Err(bad());
                        }
                        Ok(match id.parse::<u64>() {
                            Ok(n) if id.bytes().all(|b| b.is_ascii_digit()) => PreId::Num(n),
                            _ => PreId::Alpha(id.to_string()),
                        })
                    })
                    .collect::<Result<Vec<_>>>()?,
            ),
        };
        Ok(Version {
            raw: s.to_string(),
            numbers,
            pre,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }
}

impl FromStr for Version {
    type Err = FormatError;
    fn from_str(s: &str) -> Result<Self> {
        Version::parse(s)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Version {}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        let n = self.numbers.len().max(other.numbers.len());
        for i in 0..n {
            let a = self.numbers.get(i).copied().unwrap_or(0);
            let b = other.numbers.get(i).copied().unwrap_or(0);
            match a.cmp(&b) {
                Ordering::Equal => {}
                o => return o,
            }
        }
        let pre = match (&self.pre, &other.pre) {
            (None, None) => Ordering::Equal,
            (None, Some(_)) => Ordering::Greater,
            (Some(_), None) => Ordering::Less,
            (Some(a), Some(b)) => a.cmp(b),
        };
        // Ties between spellings such as `1` and `1.0` are broken by part count and then
        // by the raw text, so that the order is total and agrees with string equality.
        pre.then(self.numbers.len().cmp(&other.numbers.len()))
            .then_with(|| self.raw.cmp(&other.raw))
    }
}

/// Checks a channel name: 1-64 characters of `[A-Za-z0-9._-]`, not starting with `.`.
/// Channel names appear in repository paths, so nothing else is allowed.
pub fn check_channel(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_CHANNEL_LEN
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(FormatError::BadChannel(name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    #[test]
    fn numeric_order() {
        assert!(v("1") < v("1.0.1"));
        assert!(v("0.9") < v("0.10"));
        assert!(v("1.0.0-rc.1") < v("1.0.0"));
        assert!(v("1.0.0-alpha") < v("1.0.0-alpha.1"));
        assert!(v("1.0.0-alpha.1") < v("1.0.0-alpha.beta"));
        assert!(v("1.0.0-beta.2") < v("1.0.0-beta.11"));
        assert!(v("2") > v("1.999.999"));
        assert!(v("1") < v("1.0"), "ties are broken by part count");
        assert_eq!(v("1.2.3"), v("1.2.3"));
    }

    #[test]
    fn rejects_bad_versions() {
        for s in [
            "", "a", "1..2", ".1", "1.", "1-", "1-a..b", "../1", "1/2", "1 2", "1-ü",
        ] {
            assert!(Version::parse(s).is_err(), "{s:?} must be rejected");
        }
        assert!(Version::parse(&"1".repeat(65)).is_err());
    }

    #[test]
    fn channel_names() {
        check_channel("stable").unwrap();
        check_channel("beta-2.x_y").unwrap();
        for s in ["", ".hidden", "a/b", "..", "a b", &"x".repeat(65)] {
            assert!(check_channel(s).is_err(), "{s:?} must be rejected");
        }
    }
}

//! What a release requires of the agent that installs it (FORMAT.md §5.2).
//!
//! A requirement is a key and a value. Four keys have a meaning: `os` and `arch`
//! (compared with the agent's `std::env::consts` values), `min-agent` (a version the
//! agent's own must reach) and `disk` (bytes of free space, stored as a decimal number
//! of bytes). Any other key is a label, met when the agent's configured labels hold
//! the same value. The agent checks them before downloading anything and refuses the
//! release with every [`Unmet`] reason it finds.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{FormatError, Result};
use crate::size::{human_size, parse_size};
use crate::version::Version;

/// Most requirements one release may carry.
pub const MAX_REQUIREMENTS: usize = 32;
/// Longest key.
pub const MAX_KEY_LEN: usize = 32;
/// Longest value.
pub const MAX_VALUE_LEN: usize = 64;

/// The keys with a meaning; every other key is a label.
pub const OS: &str = "os";
pub const ARCH: &str = "arch";
pub const MIN_AGENT: &str = "min-agent";
pub const DISK: &str = "disk";

/// One requirement, validated: a key of `[a-z0-9_-]{1,32}` and a value of 1-64
/// printable ASCII characters (no space); `min-agent` a version, `disk` a canonical
/// decimal byte count.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requirement {
    key: String,
    value: String,
}

/// What a requirement asks, by key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind<'a> {
    Os(&'a str),
    Arch(&'a str),
    MinAgent(Version),
    /// Free bytes on the agent's filesystem.
    Disk(u64),
    Label {
        key: &'a str,
        value: &'a str,
    },
}

fn bad(found: impl Into<String>, reason: impl Into<String>) -> FormatError {
    FormatError::BadRequirement {
        found: found.into(),
        reason: reason.into(),
    }
}

impl Requirement {
    /// A requirement as stored (`disk` in bytes), checked.
    pub fn new(key: &str, value: &str) -> Result<Self> {
        let r = Requirement {
            key: key.to_string(),
            value: value.to_string(),
        };
        r.validate()?;
        Ok(r)
    }

    /// Parses the publisher's `key=value` (`disk=500MiB`: any size [`parse_size`]
    /// reads, stored as bytes).
    pub fn parse(s: &str) -> Result<Self> {
        let (key, value) = s
            .split_once('=')
            .ok_or_else(|| bad(s, "expected key=value, like os=linux or disk=500MiB"))?;
        if key == DISK {
            let bytes = parse_size(value).map_err(|e| bad(s, e.to_string()))?;
            return Requirement::new(key, &bytes.to_string()).map_err(|e| match e {
                FormatError::BadRequirement { reason, .. } => bad(s, reason),
                e => e,
            });
        }
        Requirement::new(key, value).map_err(|e| match e {
            FormatError::BadRequirement { reason, .. } => bad(s, reason),
            e => e,
        })
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// The stored value (`disk` in bytes).
    pub fn value(&self) -> &str {
        &self.value
    }

    /// What it asks. Only validated requirements exist, so this cannot fail.
    pub fn kind(&self) -> Kind<'_> {
        match self.key.as_str() {
            OS => Kind::Os(&self.value),
            ARCH => Kind::Arch(&self.value),
            MIN_AGENT => Kind::MinAgent(
                Version::parse(&self.value).expect("a validated min-agent is a version"),
            ),
            DISK => Kind::Disk(self.value.parse().expect("a validated disk is a number")),
            key => Kind::Label {
                key,
                value: &self.value,
            },
        }
    }

    pub fn validate(&self) -> Result<()> {
        let shown = || format!("{}={}", self.key, self.value);
        let (k, v) = (&self.key, &self.value);
        if k.is_empty()
            || k.len() > MAX_KEY_LEN
            || !k
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        {
            return Err(bad(shown(), "the key must be 1-32 of [a-z0-9_-]"));
        }
        if v.is_empty() || v.len() > MAX_VALUE_LEN || !v.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(bad(
                shown(),
                "the value must be 1-64 printable ASCII characters without spaces",
            ));
        }
        match k.as_str() {
            MIN_AGENT => {
                Version::parse(v)
                    .map_err(|_| bad(shown(), "min-agent must be a version, like 0.3.0"))?;
            }
            DISK => {
                let canonical = v.parse::<u64>().is_ok_and(|n| n.to_string() == *v);
                if !canonical {
                    return Err(bad(shown(), "disk must be a size, like 500MiB"));
                }
            }
            _ => {}
        }
        Ok(())
    }
}

impl fmt::Display for Requirement {
    /// `key=value`, `disk` as a size for people (`disk=500 MiB`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind() {
            Kind::Disk(n) => write!(f, "{}={}", self.key, human_size(n)),
            _ => write!(f, "{}={}", self.key, self.value),
        }
    }
}

/// The requirements of one release: sorted by key, each key once, at most
/// [`MAX_REQUIREMENTS`]. Empty means none.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requirements(Vec<Requirement>);

/// What the agent knows about itself, to check requirements against.
#[derive(Clone, Copy, Debug)]
pub struct AgentFacts<'a> {
    /// `std::env::consts::OS`.
    pub os: &'a str,
    /// `std::env::consts::ARCH`.
    pub arch: &'a str,
    /// The agent's version (`CARGO_PKG_VERSION`).
    pub agent_version: &'a str,
    /// Free bytes where the release would be built, if known.
    pub free_disk: Option<u64>,
    /// The agent's configured `labels`.
    pub labels: &'a BTreeMap<String, String>,
}

/// A requirement the agent does not meet, displayed as one line saying why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unmet {
    Os {
        required: String,
        actual: String,
    },
    Arch {
        required: String,
        actual: String,
    },
    MinAgent {
        required: String,
        actual: String,
    },
    Disk {
        required: u64,
        /// `None`: the agent could not measure it, so cannot check.
        free: Option<u64>,
    },
    Label {
        key: String,
        value: String,
        actual: Option<String>,
    },
}

impl fmt::Display for Unmet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unmet::Os { required, actual } => {
                write!(f, "requires os={required}, this agent is {actual}")
            }
            Unmet::Arch { required, actual } => {
                write!(f, "requires arch={required}, this agent is {actual}")
            }
            Unmet::MinAgent { required, actual } => {
                write!(f, "requires min-agent {required}, this agent is {actual}")
            }
            Unmet::Disk {
                required,
                free: Some(free),
            } => write!(
                f,
                "requires {} free disk, {} free",
                human_size(*required),
                human_size(*free)
            ),
            Unmet::Disk {
                required,
                free: None,
            } => write!(
                f,
                "requires {} free disk, this agent cannot tell how much is free",
                human_size(*required)
            ),
            Unmet::Label {
                key,
                value,
                actual: Some(actual),
            } => write!(
                f,
                "requires label {key}={value}, this agent has {key}={actual}"
            ),
            Unmet::Label {
                key,
                value,
                actual: None,
            } => write!(
                f,
                "requires label {key}={value}, this agent has no label {key}"
            ),
        }
    }
}

impl Requirements {
    /// No requirement.
    pub const fn none() -> Self {
        Requirements(Vec::new())
    }

    /// Sorts by key and checks the list: each key once, at most [`MAX_REQUIREMENTS`].
    pub fn new(mut list: Vec<Requirement>) -> Result<Self> {
        list.sort_by(|a, b| a.key.cmp(&b.key));
        let r = Requirements(list);
        r.validate()?;
        Ok(r)
    }

    /// Parses the publisher's `key=value` strings (`--requires`).
    pub fn parse<S: AsRef<str>>(items: &[S]) -> Result<Self> {
        Requirements::new(
            items
                .iter()
                .map(|s| Requirement::parse(s.as_ref()))
                .collect::<Result<_>>()?,
        )
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Requirement> {
        self.0.iter()
    }

    /// The requirement with this key, if any.
    pub fn get(&self, key: &str) -> Option<&Requirement> {
        self.0.iter().find(|r| r.key == key)
    }

    /// Decoded lists must be what [`Requirements::new`] makes: strictly ascending by
    /// key (so one value has one encoding) and bounded.
    pub fn validate(&self) -> Result<()> {
        if self.0.len() > MAX_REQUIREMENTS {
            return Err(FormatError::TooLarge {
                kind: "release requirements",
                what: "requirement count",
                found: self.0.len() as u64,
                limit: MAX_REQUIREMENTS as u64,
            });
        }
        for r in &self.0 {
            r.validate()?;
        }
        if let Some(w) = self.0.windows(2).find(|w| w[0].key >= w[1].key) {
            return Err(bad(
                w[1].to_string(),
                if w[0].key == w[1].key {
                    format!("the key {} is given twice", w[1].key)
                } else {
                    "requirements not sorted by key".to_string()
                },
            ));
        }
        Ok(())
    }

    /// Every requirement `facts` does not meet, in key order; empty: the agent may
    /// install the release. A fact the agent cannot establish (free disk unknown, its
    /// own version unparsable) fails the requirement: never install what cannot be
    /// checked.
    pub fn unmet(&self, facts: &AgentFacts<'_>) -> Vec<Unmet> {
        self.0
            .iter()
            .filter_map(|r| match r.kind() {
                Kind::Os(os) => (os != facts.os).then(|| Unmet::Os {
                    required: os.to_string(),
                    actual: facts.os.to_string(),
                }),
                Kind::Arch(arch) => (arch != facts.arch).then(|| Unmet::Arch {
                    required: arch.to_string(),
                    actual: facts.arch.to_string(),
                }),
                Kind::MinAgent(min) => {
                    let ok = Version::parse(facts.agent_version).is_ok_and(|v| v >= min);
                    (!ok).then(|| Unmet::MinAgent {
                        required: min.to_string(),
                        actual: facts.agent_version.to_string(),
                    })
                }
                Kind::Disk(required) => {
                    let ok = facts.free_disk.is_some_and(|free| free >= required);
                    (!ok).then_some(Unmet::Disk {
                        required,
                        free: facts.free_disk,
                    })
                }
                Kind::Label { key, value } => {
                    let actual = facts.labels.get(key);
                    (actual.map(String::as_str) != Some(value)).then(|| Unmet::Label {
                        key: key.to_string(),
                        value: value.to_string(),
                        actual: actual.cloned(),
                    })
                }
            })
            .collect()
    }
}

impl<'a> IntoIterator for &'a Requirements {
    type Item = &'a Requirement;
    type IntoIter = std::slice::Iter<'a, Requirement>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl fmt::Display for Requirements {
    /// `key=value` pairs separated by spaces, in key order.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn facts<'a>(labels: &'a BTreeMap<String, String>) -> AgentFacts<'a> {
        AgentFacts {
            os: "linux",
            arch: "x86_64",
            agent_version: "0.2.0",
            free_disk: Some(120 << 20),
            labels,
        }
    }

    #[test]
    fn parses_the_publishers_forms() {
        let r = Requirements::parse(&[
            "role=edge",
            "os=linux",
            "disk=500MiB",
            "min-agent=0.3.0",
            "arch=x86_64",
        ])
        .unwrap();
        let keys: Vec<_> = r.iter().map(Requirement::key).collect();
        assert_eq!(keys, ["arch", "disk", "min-agent", "os", "role"]);
        assert_eq!(r.get("disk").unwrap().value(), (500u64 << 20).to_string());
        assert_eq!(
            r.to_string(),
            "arch=x86_64 disk=500 MiB min-agent=0.3.0 os=linux role=edge"
        );
        assert_eq!(
            Requirement::parse("disk=2GB").unwrap().kind(),
            Kind::Disk(2_000_000_000)
        );
    }

    #[test]
    fn bad_requirements_say_what_is_wrong() {
        let err = |items: &[&str]| Requirements::parse(items).unwrap_err().to_string();
        assert!(err(&["os"]).contains("expected key=value"));
        assert!(err(&["OS=linux"]).contains("[a-z0-9_-]"));
        assert!(err(&[&format!("{}=x", "k".repeat(33))]).contains("[a-z0-9_-]"));
        assert!(err(&["role="]).contains("1-64 printable"));
        assert!(err(&["role=a b"]).contains("1-64 printable"));
        assert!(err(&[&format!("role={}", "v".repeat(65))]).contains("1-64 printable"));
        assert!(err(&["min-agent=latest"]).contains("min-agent must be a version"));
        let e = err(&["disk=lots"]);
        assert!(
            e.contains("\"disk=lots\"") && e.contains("invalid size"),
            "{e}"
        );
        assert!(err(&["os=linux", "os=macos"]).contains("the key os is given twice"));
        let many: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(err(&many).contains("requirement count is 33, the limit is 32"));
        // Decoded bytes must be canonical: disk in plain bytes.
        assert!(Requirement::new("disk", "0500").is_err());
        assert!(Requirement::new("disk", "5MiB").is_err());
    }

    #[test]
    fn unmet_requirements_read_as_one_line_each() {
        let mut labels = BTreeMap::new();
        labels.insert("role".to_string(), "db".to_string());
        let r = Requirements::parse(&[
            "arch=aarch64",
            "min-agent=0.3.0",
            "disk=500MiB",
            "role=edge",
            "zone=eu",
            "os=linux",
        ])
        .unwrap();
        let lines: Vec<String> = r
            .unmet(&facts(&labels))
            .iter()
            .map(|u| u.to_string())
            .collect();
        assert_eq!(
            lines,
            [
                "requires arch=aarch64, this agent is x86_64",
                "requires 500 MiB free disk, 120 MiB free",
                "requires min-agent 0.3.0, this agent is 0.2.0",
                "requires label role=edge, this agent has role=db",
                "requires label zone=eu, this agent has no label zone",
            ]
        );
        let unknown_disk = AgentFacts {
            free_disk: None,
            ..facts(&labels)
        };
        let d = Requirements::parse(&["disk=1KiB"]).unwrap();
        assert_eq!(
            d.unmet(&unknown_disk)[0].to_string(),
            "requires 1 KiB free disk, this agent cannot tell how much is free"
        );
        let met =
            Requirements::parse(&["os=linux", "arch=x86_64", "min-agent=0.2", "role=db"]).unwrap();
        assert!(met.unmet(&facts(&labels)).is_empty());
        assert!(Requirements::default().unmet(&facts(&labels)).is_empty());
        // Pre-releases sort before their release.
        let rc = AgentFacts {
            agent_version: "0.3.0-rc.1",
            ..facts(&labels)
        };
        assert_eq!(
            Requirements::parse(&["min-agent=0.3.0"])
                .unwrap()
                .unmet(&rc)
                .len(),
            1
        );
    }

    fn requirement() -> impl Strategy<Value = Requirement> {
        prop_oneof![
            "[a-z]{1,8}".prop_map(|v| Requirement::new("os", &v).unwrap()),
            (0u64..1 << 40).prop_map(|n| Requirement::new("disk", &n.to_string()).unwrap()),
            (0u32..20, 0u32..20).prop_map(|(a, b)| Requirement::new(
                "min-agent",
                &format!("{a}.{b}")
            )
            .unwrap()),
            ("[a-z0-9_-]{1,32}", "[!-~]{1,64}")
                .prop_filter_map("a label", |(k, v)| Requirement::new(&k, &v).ok()),
        ]
    }

    proptest! {
        #[test]
        fn lists_are_canonical_and_round_trip(list in proptest::collection::vec(requirement(), 0..40)) {
            match Requirements::new(list.clone()) {
                Ok(r) => {
                    prop_assert!(r.len() <= MAX_REQUIREMENTS);
                    let keys: Vec<_> = r.iter().map(Requirement::key).collect();
                    prop_assert!(keys.windows(2).all(|w| w[0] < w[1]));
                    let bytes = crate::codec::encode(&r);
                    let back: Requirements = crate::codec::decode("requirements", &bytes).unwrap();
                    prop_assert_eq!(&back, &r);
                    back.validate().unwrap();
                    // Shown as the publisher writes them, they parse back to the same list.
                    let shown: Vec<String> = r.iter().map(|q| match q.kind() {
                        Kind::Disk(n) => format!("disk={n}"),
                        _ => q.to_string(),
                    }).collect();
                    prop_assert_eq!(Requirements::parse(&shown).unwrap(), r);
                }
                Err(_) => {
                    let mut keys: Vec<_> = list.iter().map(Requirement::key).collect();
                    keys.sort();
                    let dup = keys.windows(2).any(|w| w[0] == w[1]);
                    prop_assert!(dup || list.len() > MAX_REQUIREMENTS);
                }
            }
        }

        #[test]
        fn an_agent_meets_exactly_what_it_has(
            labels in proptest::collection::btree_map("[a-z]{1,3}", "[a-z]{1,3}", 0..5),
            wanted in proptest::collection::btree_map("[a-z]{1,3}", "[a-z]{1,3}", 0..5),
            free in proptest::option::of(0u64..1000),
            need in 0u64..1000,
        ) {
            let mut list: Vec<Requirement> = wanted
                .iter()
                .filter(|(k, _)| !["os"].contains(&k.as_str()))
                .map(|(k, v)| Requirement::new(k, v).unwrap())
                .collect();
            list.push(Requirement::new("disk", &need.to_string()).unwrap());
            let r = Requirements::new(list).unwrap();
            let f = AgentFacts { os: "linux", arch: "x86_64", agent_version: "1.0.0", free_disk: free, labels: &labels };
            let unmet = r.unmet(&f);
            let labels_unmet = wanted.iter().filter(|(k, v)| k.as_str() != "os" && labels.get(*k) != Some(v)).count();
            let disk_unmet = usize::from(free.is_none_or(|f| f < need));
            prop_assert_eq!(unmet.len(), labels_unmet + disk_unmet);
        }
    }
}

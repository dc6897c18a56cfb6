//! The channel head (FORMAT.md §5): the one mutable object of a repository.
//!
//! Two layers. The publisher signs the *content* ([`HeadContent`], its own `FRYC`
//! envelope): the channel's retained releases (oldest first; the last is current),
//! manifest diffs, rollout percentages, a publisher sequence and a long expiry. The
//! head proper wraps those signed bytes in a *freshness* layer (sequence, short expiry,
//! key list, rollout overrides) signed by a threshold of publishing keys or of the key
//! list's online keys. So a key on the serving machine can keep a head fresh and lower
//! or pause a rollout, but cannot add, change, raise or revive a release: those live in
//! bytes only publishing keys sign.
//!
//! The content may also say what each release requires of the agent (§5.2,
//! [`ReleaseRequirements`]). Content with requirements is encoded as format 3 (the
//! format 2 body followed by the requirements list); content without stays format 2,
//! byte for byte what agents of format 2 read, while they refuse format 3 with
//! "upgrade ferry" before looking at any release.
//!
//! Revocations (§5.3) and label targeting (§5.4) travel the same way one format up:
//! content that revokes or targets a release is format 4 (the format 3 body, its
//! requirements list possibly empty, followed by the revoked versions and the
//! targeting), which agents of format 3 and before refuse with "upgrade ferry", so none
//! ignores a recall or installs a release meant for other labels. All of it is signed
//! by the publishing keys: the online role, which re-signs only the freshness layer,
//! can neither revoke nor retarget.

use serde::{Deserialize, Serialize};

use crate::codec;
use crate::delta::ManifestDiffRef;
use crate::envelope::{CLIENT_FORMAT, Envelope, ObjectKind};
use crate::error::{FormatError, Result};
use crate::id::ObjectRef;
use crate::keylist::KeyListRef;
use crate::keys::SecretKey;
use crate::requirements::{Kind, Requirements};
use crate::version::{Version, check_channel};

/// Most releases a head may list.
pub const MAX_RELEASES: usize = 1024;

/// What the publisher signs: everything about the channel's releases.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeadContent {
    pub channel: String,
    /// Publisher sequence: strictly increases with every content a publisher signs,
    /// and agents never accept a lower one than they have seen.
    pub sequence: u64,
    /// Unix seconds.
    pub issued_at: u64,
    /// Unix seconds; agents refuse the content (whatever head wraps it) from then on.
    pub expires_at: u64,
    /// Lowest client format version able to install this channel's releases.
    pub min_client_format: u16,
    /// Retained releases, strictly ascending by version; the last is current.
    pub releases: Vec<ReleaseRef>,
    /// Diffs from earlier manifests to the current one (FORMAT.md §3.7), so an agent
    /// on a recent release fetches a few KiB instead of the whole manifest.
    pub manifest_diffs: Vec<ManifestDiffRef>,
    /// Releases offered to only part of the fleet (percent below 100), ascending by
    /// version; a listed release not named here is at 100%.
    pub rollout: Vec<Rollout>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseRef {
    pub version: String,
    pub manifest: ObjectRef,
}

/// The share of agents (0-100) a release is offered to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    pub version: String,
    pub percent: u8,
}

/// What one listed release requires of the agent that installs it (FORMAT.md §5.2),
/// signed by the publishing keys with the release.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseRequirements {
    pub version: String,
    /// Never empty (a release without requirements is not listed).
    pub requirements: Requirements,
}

/// The labels an agent must have to be offered a release (FORMAT.md §5.4), signed by
/// the publishing keys with the release; its rollout percentage applies among them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutLabels {
    pub version: String,
    /// Never empty, and labels only: no key with a meaning of §5.2 (`os`, `arch`,
    /// `min-agent`, `disk`), which are requirements.
    pub labels: Requirements,
}

/// What the content signs about single releases besides their rollout percentage:
/// requirements (§5.2, content format 3), revocations (§5.3) and label targeting
/// (§5.4) (format 4). Publisher tools carry it from one content to the next.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReleaseRules {
    /// Ascending by version, each naming a listed release.
    pub requirements: Vec<ReleaseRequirements>,
    /// Revoked releases: strictly ascending, each listed, never every listed release.
    pub revoked: Vec<String>,
    /// Ascending by version, each naming a listed release.
    pub rollout_labels: Vec<RolloutLabels>,
}

impl ReleaseRules {
    /// The content format that holds these rules: 2 (byte-compatible with format 2
    /// agents) when there are none, 3 with requirements only, 4 with a revocation or
    /// a targeting.
    pub fn content_format(&self) -> u16 {
        if !self.revoked.is_empty() || !self.rollout_labels.is_empty() {
            4
        } else if !self.requirements.is_empty() {
            3
        } else {
            2
        }
    }

    /// Forgets whatever names a release no longer listed (after retention dropped it).
    pub fn retain_listed(&mut self, releases: &[ReleaseRef]) {
        let listed = |v: &str| releases.iter().any(|r| r.version == v);
        self.requirements.retain(|r| listed(&r.version));
        self.revoked.retain(|v| listed(v));
        self.rollout_labels.retain(|r| listed(&r.version));
    }

    fn check(&self, kind: &'static str, releases: &[ReleaseRef]) -> Result<()> {
        check_requirements(kind, &self.requirements, releases)?;
        check_revoked(kind, &self.revoked, releases)?;
        check_rollout_labels(kind, &self.rollout_labels, releases)
    }
}

/// Content of format 3: the format 2 body followed by the requirements.
#[derive(Serialize, Deserialize)]
struct ContentV3 {
    content: HeadContent,
    requirements: Vec<ReleaseRequirements>,
}

/// Content of format 4: the format 3 body (requirements possibly empty) followed by
/// the revoked versions and the label targeting.
#[derive(Serialize, Deserialize)]
struct ContentV4 {
    content: HeadContent,
    requirements: Vec<ReleaseRequirements>,
    revoked: Vec<String>,
    rollout_labels: Vec<RolloutLabels>,
}

/// A per-release list of the content (rollout, targeting, requirements, revocations)
/// is strictly ascending by version and names only listed releases. Returns each
/// entry's version, for the list's own checks.
fn check_per_release<'a>(
    kind: &'static str,
    what: &str,
    versions: impl IntoIterator<Item = &'a str>,
    releases: &[ReleaseRef],
) -> Result<Vec<Version>> {
    let mut out: Vec<Version> = Vec::new();
    for r in versions {
        let v = Version::parse(r)?;
        if out.last().is_some_and(|p| *p >= v) {
            return Err(malformed(
                kind,
                format!("{what} not ascending at {v} or repeated"),
            ));
        }
        if !releases.iter().any(|rel| rel.version == r) {
            return Err(malformed(
                kind,
                format!("{what} names {v}, which is not a listed release"),
            ));
        }
        out.push(v);
    }
    Ok(out)
}

/// Revoked versions are strictly ascending, listed, and leave a release to run.
fn check_revoked(kind: &'static str, revoked: &[String], releases: &[ReleaseRef]) -> Result<()> {
    check_per_release(
        kind,
        "revocation",
        revoked.iter().map(String::as_str),
        releases,
    )?;
    if !releases.is_empty() && revoked.len() >= releases.len() {
        return Err(malformed(
            kind,
            "every listed release is revoked: agents would have none to run".into(),
        ));
    }
    Ok(())
}

/// Targetings are ascending by version, name listed releases, hold labels only.
fn check_rollout_labels(
    kind: &'static str,
    list: &[RolloutLabels],
    releases: &[ReleaseRef],
) -> Result<()> {
    let versions = list.iter().map(|r| r.version.as_str());
    for (r, v) in list.iter().zip(check_per_release(
        kind,
        "rollout labels",
        versions,
        releases,
    )?) {
        if r.labels.is_empty() {
            return Err(malformed(
                kind,
                format!("empty rollout labels listed for {v} (absence means every agent)"),
            ));
        }
        r.labels.validate()?;
        if let Some(l) = r
            .labels
            .iter()
            .find(|l| !matches!(l.kind(), Kind::Label { .. }))
        {
            return Err(malformed(
                kind,
                format!(
                    "rollout labels of {v} hold {l}, which is not a label (os, arch, min-agent and disk are requirements)"
                ),
            ));
        }
    }
    Ok(())
}

/// Requirement lists are ascending by version, name listed releases, are not empty.
fn check_requirements(
    kind: &'static str,
    list: &[ReleaseRequirements],
    releases: &[ReleaseRef],
) -> Result<()> {
    let versions = list.iter().map(|r| r.version.as_str());
    for (r, v) in list
        .iter()
        .zip(check_per_release(kind, "requirements", versions, releases)?)
    {
        if r.requirements.is_empty() {
            return Err(malformed(
                kind,
                format!("empty requirements listed for {v} (absence means none)"),
            ));
        }
        r.requirements.validate()?;
    }
    Ok(())
}

/// The encoded body of a head (`FRYH`, format 2).
#[derive(Serialize, Deserialize)]
struct HeadBody {
    sequence: u64,
    issued_at: u64,
    expires_at: u64,
    key_list: Option<KeyListRef>,
    rollout: Vec<Rollout>,
    content: Vec<u8>,
}

/// A channel head: the freshness layer plus the publisher content it carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelHead {
    /// Strictly increases with every head signed for this channel (by a publisher or
    /// by the online role).
    pub sequence: u64,
    /// Unix seconds.
    pub issued_at: u64,
    /// Unix seconds; clients refuse the head from this instant on.
    pub expires_at: u64,
    /// The key list whose keys sign this head and its manifests; `None` in the
    /// single-key setup (implicit key list version 0).
    pub key_list: Option<KeyListRef>,
    /// Rollout overrides, ascending by version: each at most what the content says.
    pub rollout: Vec<Rollout>,
    /// Decoded from [`ChannelHead::content_bytes`]; trusted only once a head verified.
    pub content: HeadContent,
    /// Signed with the content; see [`ChannelHead::requirements_of`],
    /// [`ChannelHead::is_revoked`], [`ChannelHead::rollout_labels_of`].
    rules: ReleaseRules,
    content_bytes: Vec<u8>,
}

fn malformed(kind: &'static str, reason: String) -> FormatError {
    FormatError::Malformed { kind, reason }
}

/// Rollout lists are ascending by version, name listed releases, and hold percentages.
fn check_rollout(kind: &'static str, list: &[Rollout], releases: &[ReleaseRef]) -> Result<()> {
    let versions = list.iter().map(|r| r.version.as_str());
    for (r, v) in list
        .iter()
        .zip(check_per_release(kind, "rollout", versions, releases)?)
    {
        if r.percent > 100 {
            return Err(malformed(kind, format!("rollout of {v} is {}%", r.percent)));
        }
    }
    Ok(())
}

impl HeadContent {
    /// The current release.
    pub fn current(&self) -> &ReleaseRef {
        // validate() guarantees at least one release; contents are only handed out validated.
        self.releases.last().expect("validated head has a release")
    }

    /// The percentage the publisher signed for `version` (100 unless listed).
    pub fn rollout_of(&self, version: &str) -> u8 {
        self.rollout
            .iter()
            .find(|r| r.version == version)
            .map_or(100, |r| r.percent)
    }

    pub fn validate(&self) -> Result<()> {
        const K: &str = "channel content";
        check_channel(&self.channel)?;
        if self.releases.is_empty() {
            return Err(malformed(K, "no release".into()));
        }
        if self.releases.len() > MAX_RELEASES {
            return Err(FormatError::TooLarge {
                kind: K,
                what: "release count",
                found: self.releases.len() as u64,
                limit: MAX_RELEASES as u64,
            });
        }
        if self.expires_at <= self.issued_at {
            return Err(malformed(K, "expires before it is issued".into()));
        }
        if self.manifest_diffs.len() > crate::manifest::MAX_DIFFS {
            return Err(malformed(
                K,
                format!("{} manifest diffs", self.manifest_diffs.len()),
            ));
        }
        if self
            .manifest_diffs
            .windows(2)
            .any(|w| w[0].base_manifest >= w[1].base_manifest)
        {
            return Err(malformed(
                K,
                "manifest diffs not sorted by base or repeated".into(),
            ));
        }
        if self.min_client_format == 0 {
            return Err(malformed(K, "min client format 0".into()));
        }
        let mut prev: Option<Version> = None;
        for r in &self.releases {
            let v = Version::parse(&r.version)?;
            if prev.as_ref().is_some_and(|p| *p >= v) {
                return Err(malformed(K, format!("releases not ascending at {v}")));
            }
            prev = Some(v);
        }
        check_rollout(K, &self.rollout, &self.releases)?;
        if let Some(r) = self.rollout.iter().find(|r| r.percent == 100) {
            return Err(malformed(
                K,
                format!(
                    "rollout of {} listed at 100% (absence means 100%)",
                    r.version
                ),
            ));
        }
        Ok(())
    }

    /// Validates, signs with every given key and encodes the `FRYC` envelope (format
    /// 2: no release has requirements, none is revoked or targeted).
    pub fn sign(&self, keys: &[&SecretKey]) -> Result<Vec<u8>> {
        self.sign_with(&ReleaseRules::default(), keys)
    }

    /// Like [`HeadContent::sign`], with the releases' requirements, revocations and
    /// targeting, in the lowest content format that holds them
    /// ([`ReleaseRules::content_format`]).
    pub fn sign_with(&self, rules: &ReleaseRules, keys: &[&SecretKey]) -> Result<Vec<u8>> {
        self.validate()?;
        rules.check("channel content", &self.releases)?;
        let format = rules.content_format();
        let body = match format {
            2 => codec::encode(self),
            3 => codec::encode(&ContentV3 {
                content: self.clone(),
                requirements: rules.requirements.clone(),
            }),
            _ => codec::encode(&ContentV4 {
                content: self.clone(),
                requirements: rules.requirements.clone(),
                revoked: rules.revoked.clone(),
                rollout_labels: rules.rollout_labels.clone(),
            }),
        };
        Ok(Envelope::sign_as(ObjectKind::ChannelContent, format, body, keys).encode())
    }

    pub(crate) fn decode_body(format: u16, body: &[u8]) -> Result<(Self, ReleaseRules)> {
        const K: &str = "channel content";
        let (c, rules) = match format {
            ..=2 => (
                codec::decode::<HeadContent>(K, body)?,
                ReleaseRules::default(),
            ),
            3 => {
                let v3: ContentV3 = codec::decode(K, body)?;
                let rules = ReleaseRules {
                    requirements: v3.requirements,
                    ..ReleaseRules::default()
                };
                (v3.content, rules)
            }
            _ => {
                let v4: ContentV4 = codec::decode(K, body)?;
                let rules = ReleaseRules {
                    requirements: v4.requirements,
                    revoked: v4.revoked,
                    rollout_labels: v4.rollout_labels,
                };
                (v4.content, rules)
            }
        };
        if rules.content_format() != format.max(2) {
            // One value, one encoding: the lowest format that holds the rules.
            return Err(malformed(
                K,
                format!(
                    "format {format} {}",
                    if format == 3 {
                        "without requirements"
                    } else {
                        "without a revocation or rollout labels"
                    }
                ),
            ));
        }
        c.validate()?;
        rules.check(K, &c.releases)?;
        if c.min_client_format > CLIENT_FORMAT {
            return Err(FormatError::ClientTooOld {
                required: c.min_client_format,
                supported: CLIENT_FORMAT,
            });
        }
        Ok((c, rules))
    }
}

impl ChannelHead {
    /// Wraps signed content bytes (a `FRYC` envelope) in a freshness layer. The
    /// content's signatures are not checked here (the publisher's tools and
    /// [`crate::verified`] do that).
    pub fn new(
        content_bytes: Vec<u8>,
        sequence: u64,
        issued_at: u64,
        expires_at: u64,
        key_list: Option<KeyListRef>,
        rollout: Vec<Rollout>,
    ) -> Result<Self> {
        let env = Envelope::decode(ObjectKind::ChannelContent, &content_bytes)?;
        let (content, rules) = HeadContent::decode_body(env.format, &env.body)?;
        let head = ChannelHead {
            sequence,
            issued_at,
            expires_at,
            key_list,
            rollout,
            content,
            rules,
            content_bytes,
        };
        head.validate()?;
        Ok(head)
    }

    /// The exact signed content bytes the head carries.
    pub fn content_bytes(&self) -> &[u8] {
        &self.content_bytes
    }

    /// The channel.
    pub fn channel(&self) -> &str {
        &self.content.channel
    }

    /// The current release.
    pub fn current(&self) -> &ReleaseRef {
        self.content.current()
    }

    /// The retained releases, oldest first.
    pub fn releases(&self) -> &[ReleaseRef] {
        &self.content.releases
    }

    /// The retained release with this version, if listed.
    pub fn release(&self, version: &Version) -> Option<&ReleaseRef> {
        self.content
            .releases
            .iter()
            .find(|r| Version::parse(&r.version).is_ok_and(|v| v == *version))
    }

    /// The requirements of every release that has some, ascending by version.
    pub fn requirements(&self) -> &[ReleaseRequirements] {
        &self.rules.requirements
    }

    /// Everything the content signs about single releases (requirements, revocations,
    /// targeting): what a publisher carries into the next content.
    pub fn rules(&self) -> &ReleaseRules {
        &self.rules
    }

    /// Replaces the rules to sign with [`ChannelHead::resign_content`] (publisher
    /// tools and tests; checked when signing).
    pub fn set_rules(&mut self, rules: ReleaseRules) {
        self.rules = rules;
    }

    /// Whether the publisher revoked the release `version` (FORMAT.md §5.3): no agent
    /// installs it, and agents running it go to the newest release they may run that
    /// is not revoked, even an older one.
    pub fn is_revoked(&self, version: &str) -> bool {
        self.rules.revoked.iter().any(|v| v == version)
    }

    /// The revoked releases, ascending.
    pub fn revoked(&self) -> &[String] {
        &self.rules.revoked
    }

    /// The labels an agent must have to be offered `version` (FORMAT.md §5.4); empty
    /// when every agent is (or when `version` is not listed). Check it with
    /// [`Requirements::unmet`]: every entry is a label.
    pub fn rollout_labels_of(&self, version: &str) -> &Requirements {
        static EVERYONE: Requirements = Requirements::none();
        self.rules
            .rollout_labels
            .iter()
            .find(|r| r.version == version)
            .map_or(&EVERYONE, |r| &r.labels)
    }

    /// What the release `version` requires of the agent (FORMAT.md §5.2); empty when
    /// nothing (or when `version` is not listed). An agent checks this with
    /// [`Requirements::unmet`] before downloading anything of the release.
    pub fn requirements_of(&self, version: &str) -> &Requirements {
        static NONE: Requirements = Requirements::none();
        self.rules
            .requirements
            .iter()
            .find(|r| r.version == version)
            .map_or(&NONE, |r| &r.requirements)
    }

    /// Replaces the requirements to sign with [`ChannelHead::resign_content`]
    /// (publisher tools and tests; checked when signing).
    pub fn set_requirements(&mut self, requirements: Vec<ReleaseRequirements>) {
        self.rules.requirements = requirements;
    }

    /// The rollout percentage in force for `version`: the head's override if it has
    /// one (never above the publisher's), else the publisher's.
    pub fn rollout_of(&self, version: &str) -> u8 {
        self.rollout
            .iter()
            .find(|r| r.version == version)
            .map_or_else(|| self.content.rollout_of(version), |r| r.percent)
    }

    /// The effective rollout of every release below 100%, ascending by version.
    pub fn effective_rollout(&self) -> Vec<Rollout> {
        self.content
            .releases
            .iter()
            .map(|r| Rollout {
                version: r.version.clone(),
                percent: self.rollout_of(&r.version),
            })
            .filter(|r| r.percent < 100)
            .collect()
    }

    pub fn validate(&self) -> Result<()> {
        const K: &str = "channel head";
        self.content.validate()?;
        self.rules.check(K, &self.content.releases)?;
        if self.expires_at <= self.issued_at {
            return Err(malformed(K, "expires before it is issued".into()));
        }
        if self.key_list.is_some_and(|k| k.version == 0) {
            return Err(malformed(
                K,
                "key list version 0 is implicit and never named".into(),
            ));
        }
        check_rollout(K, &self.rollout, &self.content.releases)?;
        for r in &self.rollout {
            let signed = self.content.rollout_of(&r.version);
            if r.percent > signed {
                return Err(FormatError::RolloutRaised {
                    version: r.version.clone(),
                    found: r.percent,
                    signed,
                });
            }
        }
        Ok(())
    }

    /// Re-encodes [`ChannelHead::content`] with its rules and signs it with
    /// `keys` (publishing keys): for the publisher's tools and tests that edit a
    /// head's content.
    pub fn resign_content(&mut self, keys: &[&SecretKey]) -> Result<()> {
        self.content_bytes = self.content.sign_with(&self.rules, keys)?;
        Ok(())
    }

    /// Signs the freshness layer with `keys` (publishing or online keys) and encodes
    /// the head. The content bytes are carried as they are.
    pub fn sign(&self, keys: &[&SecretKey]) -> Result<Vec<u8>> {
        self.validate()?;
        Ok(self.sign_unchecked(keys))
    }

    pub(crate) fn sign_unchecked(&self, keys: &[&SecretKey]) -> Vec<u8> {
        let body = HeadBody {
            sequence: self.sequence,
            issued_at: self.issued_at,
            expires_at: self.expires_at,
            key_list: self.key_list,
            rollout: self.rollout.clone(),
            content: self.content_bytes.clone(),
        };
        Envelope::sign(ObjectKind::ChannelHead, codec::encode(&body), keys).encode()
    }

    /// A head whose content and freshness layer are both signed by `keys`: what a
    /// publisher writes.
    pub fn publish(
        content: &HeadContent,
        sequence: u64,
        expires_at: u64,
        key_list: Option<KeyListRef>,
        keys: &[&SecretKey],
    ) -> Result<Vec<u8>> {
        Self::publish_with(
            content,
            &ReleaseRules::default(),
            sequence,
            expires_at,
            key_list,
            keys,
        )
    }

    /// [`ChannelHead::publish`] with the releases' requirements, revocations and
    /// targeting.
    pub fn publish_with(
        content: &HeadContent,
        rules: &ReleaseRules,
        sequence: u64,
        expires_at: u64,
        key_list: Option<KeyListRef>,
        keys: &[&SecretKey],
    ) -> Result<Vec<u8>> {
        let head = ChannelHead::new(
            content.sign_with(rules, keys)?,
            sequence,
            content.issued_at,
            expires_at,
            key_list,
            Vec::new(),
        )?;
        head.sign(keys)
    }

    /// Decodes the freshness layer and the content envelope's framing; the caller
    /// checks the content's signatures before calling [`PartialHead::finish`].
    pub(crate) fn decode_layers(body: &[u8]) -> Result<(Envelope, PartialHead)> {
        Self::decode_layers_up_to(body, ObjectKind::ChannelContent.format_version())
    }

    /// [`ChannelHead::decode_layers`] as a build reading content formats up to
    /// `newest` does (tests of what an agent of an earlier format does).
    fn decode_layers_up_to(body: &[u8], newest: u16) -> Result<(Envelope, PartialHead)> {
        let b: HeadBody = codec::decode("channel head", body)?;
        let env = Envelope::decode_range(
            ObjectKind::ChannelContent,
            &b.content,
            ObjectKind::ChannelContent.oldest_version(),
            newest,
        )?;
        Ok((env, PartialHead(b)))
    }
}

/// A head whose content is not decoded yet.
pub(crate) struct PartialHead(HeadBody);

impl PartialHead {
    /// Decodes and validates the content (whose signatures the caller checked).
    pub(crate) fn finish(self, content_env: &Envelope) -> Result<ChannelHead> {
        let b = self.0;
        let (content, rules) = HeadContent::decode_body(content_env.format, &content_env.body)?;
        let head = ChannelHead {
            sequence: b.sequence,
            issued_at: b.issued_at,
            expires_at: b.expires_at,
            key_list: b.key_list,
            rollout: b.rollout,
            content,
            rules,
            content_bytes: b.content,
        };
        head.validate()?;
        Ok(head)
    }
}

/// The body of a format 1 head (one layer, before the online role).
#[derive(Deserialize)]
struct HeadV1 {
    channel: String,
    sequence: u64,
    issued_at: u64,
    expires_at: u64,
    #[allow(dead_code)]
    min_client_format: u16,
    releases: Vec<ReleaseRef>,
    key_list: Option<KeyListRef>,
    manifest_diffs: Vec<ManifestDiffRef>,
}

/// FORMAT.md §9: a format 1 head, whose signatures `publishers` verified, re-expressed
/// as the state a publisher continues from: its sequence becomes both the head and the
/// publisher sequence, so the next head signed is higher than anything agents saw.
/// The content is signed with `key` for use in memory only (it is the old head's
/// releases, which the publisher's key signed); nothing returned here is written as is.
pub fn upgrade_legacy_head(
    bytes: &[u8],
    publishers: &crate::envelope::TrustedKeys,
    key: &SecretKey,
) -> Result<ChannelHead> {
    let env = Envelope::decode_from(ObjectKind::ChannelHead, bytes, 1)?;
    if env.format != 1 {
        return Err(malformed("channel head", "not a format 1 head".into()));
    }
    env.verify(publishers)?;
    let old: HeadV1 = codec::decode("channel head", &env.body)?;
    let content = HeadContent {
        channel: old.channel,
        sequence: old.sequence,
        issued_at: old.issued_at,
        expires_at: old.expires_at,
        min_client_format: CLIENT_FORMAT,
        releases: old.releases,
        manifest_diffs: old.manifest_diffs,
        rollout: Vec::new(),
    };
    ChannelHead::new(
        content.sign(&[key])?,
        old.sequence,
        old.issued_at,
        old.expires_at,
        old.key_list,
        Vec::new(),
    )
}

/// Decodes and validates a head without checking any signature: for display by the
/// publisher's tools (`ferry-server ls`), never for a trust decision.
pub fn inspect_head(bytes: &[u8]) -> Result<ChannelHead> {
    let env = Envelope::decode(ObjectKind::ChannelHead, bytes)?;
    let (content_env, partial) = ChannelHead::decode_layers(&env.body)?;
    partial.finish(&content_env)
}

/// Reads which key list a head claims, before its signatures can be checked (they
/// depend on that key list). Only used to decide which key lists to fetch and verify;
/// nothing else of the head is acted on until [`crate::verified::verify_head`] passes.
pub fn claimed_key_list(bytes: &[u8]) -> Result<Option<KeyListRef>> {
    let env = Envelope::decode_from(ObjectKind::ChannelHead, bytes, 1)?;
    if env.format == 1 {
        // Read so that a publisher can find the keys of a head it migrates (§9); an
        // agent then refuses the head itself as too old.
        let head: HeadV1 = codec::decode("channel head", &env.body)?;
        return Ok(head.key_list);
    }
    let head: HeadBody = codec::decode("channel head", &env.body)?;
    Ok(head.key_list)
}

/// Reads the head sequence a head claims, without checking any signature: the name
/// of its head log entry (FORMAT.md §7), so that every head written is logged even
/// when it is a format 1 head a publisher mirrors to migrate it.
pub fn claimed_sequence(bytes: &[u8]) -> Result<u64> {
    let env = Envelope::decode_from(ObjectKind::ChannelHead, bytes, 1)?;
    if env.format == 1 {
        let head: HeadV1 = codec::decode("channel head", &env.body)?;
        return Ok(head.sequence);
    }
    let head: HeadBody = codec::decode("channel head", &env.body)?;
    Ok(head.sequence)
}

/// The rollout bucket of an agent for a release of a channel (FORMAT.md §5.1): the
/// first 8 bytes of blake3(agent id ‖ channel ‖ 0x00 ‖ version) as a little-endian
/// u64, mod 100 (the id has 16 bytes and a channel name no NUL, so the input is
/// unambiguous). The agent takes the release when its bucket is below the release's
/// percentage, so raising the percentage only adds agents, and each release of each
/// channel draws a different share.
pub fn rollout_bucket(agent_id: &[u8; 16], channel: &str, version: &str) -> u8 {
    let mut h = blake3::Hasher::new();
    h.update(agent_id);
    h.update(channel.as_bytes());
    h.update(&[0]);
    h.update(version.as_bytes());
    let d = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&d.as_bytes()[..8]);
    (u64::from_le_bytes(first) % 100) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content() -> HeadContent {
        HeadContent {
            channel: "stable".into(),
            sequence: 3,
            issued_at: 100,
            expires_at: 1000,
            min_client_format: CLIENT_FORMAT,
            releases: vec![
                ReleaseRef {
                    version: "1.0".into(),
                    manifest: ObjectRef::of(b"a"),
                },
                ReleaseRef {
                    version: "2.0".into(),
                    manifest: ObjectRef::of(b"b"),
                },
            ],
            manifest_diffs: vec![],
            rollout: vec![Rollout {
                version: "2.0".into(),
                percent: 40,
            }],
        }
    }

    #[test]
    fn overrides_may_only_lower_and_must_name_releases() {
        let k = SecretKey::from_seed([1; 32]);
        let bytes = content().sign(&[&k]).unwrap();
        let with =
            |rollout: Vec<Rollout>| ChannelHead::new(bytes.clone(), 9, 100, 200, None, rollout);
        let r = |v: &str, p| Rollout {
            version: v.into(),
            percent: p,
        };
        let h = with(vec![r("2.0", 10)]).unwrap();
        assert_eq!((h.rollout_of("2.0"), h.rollout_of("1.0")), (10, 100));
        assert!(with(vec![r("2.0", 0)]).is_ok());
        assert!(with(vec![r("1.0", 50)]).is_ok());
        let e = with(vec![r("2.0", 41)]).unwrap_err();
        assert!(
            matches!(
                e,
                FormatError::RolloutRaised {
                    signed: 40,
                    found: 41,
                    ..
                }
            ),
            "{e}"
        );
        assert!(with(vec![r("3.0", 1)]).is_err());
        assert!(with(vec![r("2.0", 1), r("1.0", 1)]).is_err());
        // The content itself lists only releases below 100%.
        let mut c = content();
        c.rollout[0].percent = 100;
        assert!(c.sign(&[&k]).is_err());
    }

    #[test]
    fn buckets_are_stable_and_spread() {
        let id = [7u8; 16];
        assert_eq!(
            rollout_bucket(&id, "stable", "1.0"),
            rollout_bucket(&id, "stable", "1.0")
        );
        let mut seen = [0u32; 100];
        for i in 0..2000u32 {
            let mut a = [0u8; 16];
            a[..4].copy_from_slice(&i.to_le_bytes());
            seen[rollout_bucket(&a, "stable", "2.0") as usize] += 1;
        }
        assert!(seen.iter().all(|&n| n > 0), "{seen:?}");
    }

    /// FORMAT.md §5.1 spelled out: blake3(id ‖ channel ‖ 0x00 ‖ version), first 8
    /// bytes little-endian, mod 100. The channel takes part, and the separator keeps
    /// ("ab", "1") and ("a", "b1") apart.
    #[test]
    fn buckets_follow_the_spec_and_depend_on_the_channel() {
        let id = [7u8; 16];
        let mut input = id.to_vec();
        input.extend_from_slice(b"stable\x002.0");
        let d = blake3::hash(&input);
        let expected = (u64::from_le_bytes(d.as_bytes()[..8].try_into().unwrap()) % 100) as u8;
        assert_eq!(rollout_bucket(&id, "stable", "2.0"), expected);
        let differs = |f: &dyn Fn(&[u8; 16]) -> (u8, u8)| {
            (0..200u8).any(|i| {
                let (a, b) = f(&[i; 16]);
                a != b
            })
        };
        assert!(differs(&|a| (
            rollout_bucket(a, "stable", "2.0"),
            rollout_bucket(a, "beta", "2.0")
        )));
        assert!(differs(&|a| (
            rollout_bucket(a, "ab", "1"),
            rollout_bucket(a, "a", "b1")
        )));
    }

    fn reqs(version: &str, items: &[&str]) -> ReleaseRequirements {
        ReleaseRequirements {
            version: version.into(),
            requirements: Requirements::parse(items).unwrap(),
        }
    }

    fn with_reqs(requirements: Vec<ReleaseRequirements>) -> ReleaseRules {
        ReleaseRules {
            requirements,
            ..ReleaseRules::default()
        }
    }

    #[test]
    fn requirements_travel_in_format_3_content_and_only_then() {
        let k = SecretKey::from_seed([1; 32]);
        let c = content();
        // Without requirements: format 2, the same bytes as before requirements existed.
        let plain = c.sign(&[&k]).unwrap();
        assert_eq!(plain, c.sign_with(&ReleaseRules::default(), &[&k]).unwrap());
        assert_eq!(u16::from_le_bytes([plain[4], plain[5]]), 2);
        let r = vec![reqs("2.0", &["os=linux", "disk=500MiB", "role=edge"])];
        let with = c.sign_with(&with_reqs(r.clone()), &[&k]).unwrap();
        assert_eq!(u16::from_le_bytes([with[4], with[5]]), 3);
        // The format 3 body is the format 2 body followed by the list.
        let body2 = Envelope::decode(ObjectKind::ChannelContent, &plain)
            .unwrap()
            .body;
        let body3 = Envelope::decode(ObjectKind::ChannelContent, &with)
            .unwrap()
            .body;
        assert_eq!(&body3[..body2.len()], &body2[..]);
        assert_eq!(&body3[body2.len()..], &codec::encode(&r)[..]);

        let mut h = ChannelHead::new(with, 9, 100, 200, None, vec![]).unwrap();
        assert_eq!(h.requirements(), &r[..]);
        assert_eq!(h.requirements_of("2.0"), &r[0].requirements);
        assert!(h.requirements_of("1.0").is_empty());
        assert!(h.requirements_of("9.9").is_empty());
        // Re-signing the content keeps them, and the head round-trips through verification.
        h.content.sequence += 1;
        h.resign_content(&[&k]).unwrap();
        let bytes = h.sign(&[&k]).unwrap();
        let keys = crate::keylist::HeadKeys::from(crate::envelope::TrustedKeys::single(k.public()));
        let policy = crate::verified::HeadPolicy {
            channel: "stable",
            now: 150,
            max_skew: 0,
            last_sequence: None,
            key_list_version: 0,
            last_content_sequence: None,
            rollout_seen: None,
        };
        let v = crate::verified::verify_head(&bytes, &keys, &policy).unwrap();
        assert_eq!(
            v.requirements_of("2.0").to_string(),
            "disk=500 MiB os=linux role=edge"
        );
        assert_eq!(inspect_head(&bytes).unwrap(), h);
    }

    #[test]
    fn malformed_requirements_are_refused() {
        let k = SecretKey::from_seed([1; 32]);
        let c = content();
        let e = |r: Vec<ReleaseRequirements>| {
            c.sign_with(&with_reqs(r), &[&k]).unwrap_err().to_string()
        };
        assert!(e(vec![reqs("3.0", &["os=linux"])]).contains("not a listed release"));
        assert!(
            e(vec![reqs("2.0", &["os=linux"]), reqs("1.0", &["os=linux"])])
                .contains("not ascending")
        );
        assert!(e(vec![reqs("2.0", &[])]).contains("absence means none"));
        // Format 3 without requirements has a second encoding of format 2 content.
        let body = codec::encode(&ContentV3 {
            content: c.clone(),
            requirements: vec![],
        });
        let env = Envelope::sign_as(ObjectKind::ChannelContent, 3, body, &[&k]).encode();
        let err = ChannelHead::new(env, 9, 100, 200, None, vec![]).unwrap_err();
        assert!(
            err.to_string().contains("format 3 without requirements"),
            "{err}"
        );
        // A format 3 body labelled format 2 does not decode (trailing bytes).
        let body = codec::encode(&ContentV3 {
            content: c.clone(),
            requirements: vec![reqs("2.0", &["os=linux"])],
        });
        let env = Envelope::sign_as(ObjectKind::ChannelContent, 2, body, &[&k]).encode();
        assert!(ChannelHead::new(env, 9, 100, 200, None, vec![]).is_err());
        // Dropping the release drops the reason to list its requirements.
        let mut h = ChannelHead::new(
            c.sign_with(&with_reqs(vec![reqs("1.0", &["arch=x86_64"])]), &[&k])
                .unwrap(),
            9,
            100,
            200,
            None,
            vec![],
        )
        .unwrap();
        h.content.releases.remove(0);
        h.content.rollout.clear();
        assert!(h.resign_content(&[&k]).is_err());
    }

    /// FORMAT.md §9: an agent of format 2 (content format 2 at most) reads heads
    /// without requirements as before, and stops at a head with requirements with
    /// "upgrade ferry", before any release of it is considered.
    #[test]
    fn a_format_2_agent_reads_plain_heads_and_refuses_heads_with_requirements() {
        let k = SecretKey::from_seed([1; 32]);
        let c = content();
        let as_format_2 = |content_bytes: Vec<u8>| {
            let head = ChannelHead::new(content_bytes, 9, 100, 200, None, vec![]).unwrap();
            let signed = head.sign(&[&k]).unwrap();
            let env = Envelope::decode(ObjectKind::ChannelHead, &signed).unwrap();
            assert_eq!(env.format, 2, "the freshness layer stays format 2");
            ChannelHead::decode_layers_up_to(&env.body, 2)
                .and_then(|(content_env, partial)| partial.finish(&content_env))
        };
        let plain = as_format_2(c.sign(&[&k]).unwrap()).unwrap();
        assert_eq!(plain.content, c);
        let e = as_format_2(
            c.sign_with(&with_reqs(vec![reqs("2.0", &["min-agent=0.3.0"])]), &[&k])
                .unwrap(),
        )
        .unwrap_err();
        assert!(
            matches!(
                e,
                FormatError::UnsupportedFormat {
                    kind: "channel content",
                    found: 3,
                    supported: 2
                }
            ),
            "{e}"
        );
        assert_eq!(
            e.to_string(),
            "channel content uses format version 3, this ferry reads up to version 2: upgrade ferry"
        );
    }

    fn recall_rules() -> ReleaseRules {
        ReleaseRules {
            requirements: vec![],
            revoked: vec!["2.0".into()],
            rollout_labels: vec![RolloutLabels {
                version: "1.0".into(),
                labels: Requirements::parse(&["region=eu"]).unwrap(),
            }],
        }
    }

    #[test]
    fn revocations_and_rollout_labels_travel_in_format_4_content_and_only_then() {
        let k = SecretKey::from_seed([1; 32]);
        let c = content();
        let rules = recall_rules();
        let with = c.sign_with(&rules, &[&k]).unwrap();
        assert_eq!(u16::from_le_bytes([with[4], with[5]]), 4);
        // The format 4 body is the format 2 body, the (empty) requirements, then the
        // revoked versions and the targeting.
        let body2 = codec::encode(&c);
        let body4 = Envelope::decode(ObjectKind::ChannelContent, &with)
            .unwrap()
            .body;
        assert_eq!(&body4[..body2.len()], &body2[..]);
        let mut tail = codec::encode(&Vec::<ReleaseRequirements>::new());
        tail.extend(codec::encode(&rules.revoked));
        tail.extend(codec::encode(&rules.rollout_labels));
        assert_eq!(&body4[body2.len()..], &tail[..]);

        let mut h = ChannelHead::new(with, 9, 100, 200, None, vec![]).unwrap();
        assert!(h.is_revoked("2.0") && !h.is_revoked("1.0") && !h.is_revoked("9.9"));
        assert_eq!(h.revoked(), ["2.0".to_string()]);
        assert_eq!(h.rollout_labels_of("1.0").to_string(), "region=eu");
        assert!(h.rollout_labels_of("2.0").is_empty());
        // Re-signing keeps every rule, and requirements join them in format 4.
        let mut more = rules.clone();
        more.requirements = vec![reqs("2.0", &["os=linux"])];
        h.set_rules(more.clone());
        h.content.sequence += 1;
        h.resign_content(&[&k]).unwrap();
        let bytes = h.sign(&[&k]).unwrap();
        let back = inspect_head(&bytes).unwrap();
        assert_eq!(back.rules(), &more);
        // Without revocation and targeting the same rules are format 3 again.
        more.revoked.clear();
        more.rollout_labels.clear();
        let three = c.sign_with(&more, &[&k]).unwrap();
        assert_eq!(u16::from_le_bytes([three[4], three[5]]), 3);
    }

    #[test]
    fn malformed_revocations_and_rollout_labels_are_refused() {
        let k = SecretKey::from_seed([1; 32]);
        let c = content();
        let e = |f: &dyn Fn(&mut ReleaseRules)| {
            let mut r = recall_rules();
            f(&mut r);
            c.sign_with(&r, &[&k]).unwrap_err().to_string()
        };
        assert!(e(&|r| r.revoked = vec!["3.0".into()]).contains("not a listed release"));
        assert!(e(&|r| r.revoked = vec!["2.0".into(), "1.0".into()]).contains("not ascending"));
        assert!(
            e(&|r| r.revoked = vec!["1.0".into(), "2.0".into()]).contains("every listed release")
        );
        assert!(e(&|r| r.rollout_labels[0].version = "3.0".into()).contains("not a listed"));
        assert!(
            e(&|r| r.rollout_labels[0].labels = Requirements::none())
                .contains("absence means every agent")
        );
        let not_label = e(&|r| {
            r.rollout_labels[0].labels = Requirements::parse(&["os=linux"]).unwrap();
        });
        assert!(not_label.contains("not a label"), "{not_label}");
        // Format 4 holding only requirements is a second encoding of format 3.
        let body = codec::encode(&ContentV4 {
            content: c.clone(),
            requirements: vec![reqs("2.0", &["os=linux"])],
            revoked: vec![],
            rollout_labels: vec![],
        });
        let env = Envelope::sign_as(ObjectKind::ChannelContent, 4, body, &[&k]).encode();
        let err = ChannelHead::new(env, 9, 100, 200, None, vec![]).unwrap_err();
        assert!(err.to_string().contains("format 4 without"), "{err}");
        // Dropping a revoked release from the list drops its revocation with it.
        let mut r = recall_rules();
        r.retain_listed(&c.releases[..1]);
        assert!(r.revoked.is_empty() && r.rollout_labels.len() == 1);
    }

    /// FORMAT.md §9: an agent of the previous format (content format 3 at most) stops
    /// at a head that revokes or targets a release with "upgrade ferry", before any
    /// release of it is considered: it neither ignores the recall nor takes a release
    /// meant for other labels.
    #[test]
    fn a_format_3_agent_refuses_heads_with_revocations_or_rollout_labels() {
        let k = SecretKey::from_seed([1; 32]);
        let c = content();
        let as_format_3 = |rules: &ReleaseRules| {
            let head = ChannelHead::new(
                c.sign_with(rules, &[&k]).unwrap(),
                9,
                100,
                200,
                None,
                vec![],
            )
            .unwrap();
            let signed = head.sign(&[&k]).unwrap();
            let env = Envelope::decode(ObjectKind::ChannelHead, &signed).unwrap();
            ChannelHead::decode_layers_up_to(&env.body, 3)
                .and_then(|(content_env, partial)| partial.finish(&content_env))
        };
        assert!(as_format_3(&ReleaseRules::default()).is_ok());
        let only_revoked = ReleaseRules {
            revoked: vec!["2.0".into()],
            ..ReleaseRules::default()
        };
        let only_labels = ReleaseRules {
            revoked: vec![],
            ..recall_rules()
        };
        for rules in [only_revoked, only_labels] {
            let e = as_format_3(&rules).unwrap_err();
            assert_eq!(
                e.to_string(),
                "channel content uses format version 4, this ferry reads up to version 3: upgrade ferry"
            );
        }
    }

    /// Only publishing keys revoke or retarget: content carrying a revocation signed
    /// by the online key alone is refused, whatever the freshness layer says.
    #[test]
    fn the_online_key_cannot_revoke() {
        let publisher = SecretKey::from_seed([1; 32]);
        let online = SecretKey::from_seed([2; 32]);
        let root = SecretKey::from_seed([3; 32]);
        let list =
            crate::keylist::KeyList::new(1, 100, &[root.public()], 1, &[publisher.public()], 1)
                .unwrap()
                .with_online(&[online.public()], 1)
                .unwrap();
        let list_bytes = list.sign(&[&root]).unwrap();
        let trust = crate::keylist::TrustRoot::from_stored(&list_bytes).unwrap();
        let list_ref = crate::keylist::key_list_ref(&list_bytes).unwrap();
        let policy = crate::verified::HeadPolicy {
            channel: "stable",
            now: 150,
            max_skew: 0,
            last_sequence: None,
            key_list_version: 1,
            last_content_sequence: None,
            rollout_seen: None,
        };
        let head_with = |content_key: &SecretKey| {
            let rules = ReleaseRules {
                revoked: vec!["2.0".into()],
                ..ReleaseRules::default()
            };
            let content_bytes = content().sign_with(&rules, &[content_key]).unwrap();
            ChannelHead::new(content_bytes, 9, 100, 200, Some(list_ref), vec![])
                .unwrap()
                .sign(&[&online])
                .unwrap()
        };
        let ok = crate::verified::verify_head(&head_with(&publisher), &trust.head_keys(), &policy)
            .unwrap();
        assert!(ok.is_revoked("2.0"));
        assert!(
            crate::verified::verify_head(&head_with(&online), &trust.head_keys(), &policy).is_err()
        );
    }

    #[test]
    fn format_1_heads_are_refused_by_agents_and_continued_by_publishers() {
        #[derive(Serialize)]
        struct V1 {
            channel: String,
            sequence: u64,
            issued_at: u64,
            expires_at: u64,
            min_client_format: u16,
            releases: Vec<ReleaseRef>,
            key_list: Option<KeyListRef>,
            manifest_diffs: Vec<ManifestDiffRef>,
        }
        let k = SecretKey::from_seed([1; 32]);
        let c = content();
        let v1 = V1 {
            channel: c.channel.clone(),
            sequence: 77,
            issued_at: 100,
            expires_at: 1000,
            min_client_format: 1,
            releases: c.releases.clone(),
            key_list: None,
            manifest_diffs: vec![],
        };
        let bytes =
            Envelope::sign_as(ObjectKind::ChannelHead, 1, codec::encode(&v1), &[&k]).encode();
        let e = inspect_head(&bytes).unwrap_err();
        assert!(matches!(e, FormatError::OldFormat { found: 1, .. }), "{e}");
        assert_eq!(claimed_key_list(&bytes).unwrap(), None);
        let trusted = crate::envelope::TrustedKeys::single(k.public());
        let up = upgrade_legacy_head(&bytes, &trusted, &k).unwrap();
        assert_eq!((up.sequence, up.content.sequence), (77, 77));
        assert_eq!(up.content.releases, c.releases);
        // Only with the keys that signed it.
        let other = crate::envelope::TrustedKeys::single(SecretKey::from_seed([2; 32]).public());
        assert!(upgrade_legacy_head(&bytes, &other, &k).is_err());
    }
}

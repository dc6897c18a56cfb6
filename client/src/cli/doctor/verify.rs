//! The `head` and `clock` checks: a served channel head verified with the root's
//! pinned keys, following key list rotations the way `ferry update` does
//! (`deliver::remote`: fetch every version in between, each accepted only by
//! `TrustRoot::advance`, the last checked against the head's reference), but in
//! memory: nothing accepted here is stored.

use ferry_format::error::FormatError;
use ferry_format::head::{ChannelHead, claimed_key_list, inspect_head};
use ferry_format::keylist::{TrustRoot, check_ref};
use ferry_format::verified::{HeadPolicy, Verified, verify_head};

use super::super::deliver::MAX_KEY_LIST_STEPS;
use super::super::report::{unix_now, utc};
use super::super::root::trust_of;
use super::{Check, span};
use crate::install::config::Config;
use crate::install::layout::Layout;
use crate::install::state::State;

/// A head whose signatures verified with the root's keys.
pub struct Verdict {
    pub head: Verified<ChannelHead>,
    pub trust: TrustRoot,
    /// Key list versions followed past the stored one (first, last).
    pub followed: Option<(u64, u64)>,
    /// Why the head is refused now although its signatures hold (expiry).
    pub expired: Option<String>,
}

impl Verdict {
    pub fn describe(&self) -> String {
        let h = &self.head;
        let mut s = format!(
            "sequence {}, current release {} ({} listed), signatures verified with {}",
            h.sequence,
            h.content.current().version,
            h.content.releases.len(),
            trust_name(&self.trust)
        );
        if let Some((a, b)) = self.followed {
            s.push_str(&format!(
                " (key lists {a}..{b} followed from the stored one; the next update stores them)"
            ));
        }
        if self.expired.is_some() {
            s.push_str(" (but expired: see `clock`)");
        }
        s
    }
}

fn trust_name(trust: &TrustRoot) -> String {
    match trust {
        TrustRoot::SingleKey(k) => format!("the pinned key {}", &k.id().to_hex()[..16]),
        TrustRoot::List(l) => format!("key list {}", l.version),
    }
}

const WRONG_KEY: &str = "this root trusts other keys than the repository is signed with: compare `public_key` in .ferry/config.toml (or the key list in .ferry/keys/) with the publisher's ferry.pub; if the publisher changed keys without a key list, `ferry init --force` with the new key";

/// Verifies `bytes` as ferry update would, with `key_list` fetching a key list
/// version from the same server. Errors are (detail, hint).
pub fn head(
    layout: &Layout,
    config: &Config,
    state: &State,
    bytes: &[u8],
    key_list: &dyn Fn(u64) -> Result<Vec<u8>, String>,
) -> Result<Verdict, (String, String)> {
    let mut trust = trust_of(layout, config).map_err(|e| {
        (
            format!("the root's trusted keys are unusable: {e:#}"),
            "`ferry init --force` with the publisher's public key or key list".to_string(),
        )
    })?;
    let not_head = |e: FormatError| {
        (
            format!("not a channel head ferry can read: {e}"),
            "the server sent something else: check the path in `servers`".to_string(),
        )
    };
    let claimed = claimed_key_list(bytes).map_err(not_head)?;
    let mut followed = None;
    if let Some(claimed) = claimed.filter(|c| c.version > trust.version()) {
        let from = trust.version();
        if claimed.version - from > MAX_KEY_LIST_STEPS {
            return Err((
                format!(
                    "the head names key list {}, {} versions past the trusted {from}: ferry update refuses to walk that far",
                    claimed.version,
                    claimed.version - from
                ),
                WRONG_KEY.into(),
            ));
        }
        let mut last = Vec::new();
        for version in from + 1..=claimed.version {
            let list = key_list(version).map_err(|e| {
                (
                    format!("fetching key list {version}, which the head names: {e}"),
                    "the server must serve keys/N for every key list since the root's".to_string(),
                )
            })?;
            trust = trust.advance(&list).map_err(|e| {
                (
                    format!(
                        "key list {version} does not verify with key list {}: {e}",
                        version - 1
                    ),
                    WRONG_KEY.to_string(),
                )
            })?;
            last = list;
        }
        check_ref(&claimed, &last).map_err(|e| {
            (
                format!(
                    "key list {} is not the one the head names: {e}",
                    claimed.version
                ),
                "the server's keys/ and channel head disagree: a broken or tampered mirror"
                    .to_string(),
            )
        })?;
        followed = Some((from + 1, claimed.version));
    }
    let mut policy = HeadPolicy {
        channel: &config.channel,
        now: unix_now(),
        max_skew: config.max_clock_skew_secs,
        last_sequence: state.last_sequence,
        key_list_version: trust.version(),
        last_content_sequence: state.last_content_sequence,
        rollout_seen: state.rollout_seen.as_ref(),
    };
    let keys = trust.head_keys();
    let (head, expired) = match verify_head(bytes, &keys, &policy) {
        Ok(h) => (h, None),
        Err(e @ (FormatError::Expired { .. } | FormatError::ContentExpired { .. })) => {
            // Expiry is checked after every signature: they hold. Verify again at an
            // instant inside the window to get the head for the clock check.
            let unchecked = inspect_head(bytes).map_err(not_head)?;
            let end = unchecked.expires_at.min(unchecked.content.expires_at);
            policy.now = end.saturating_sub(1);
            let h = verify_head(bytes, &keys, &policy)
                .map_err(|e| (e.to_string(), WRONG_KEY.into()))?;
            (h, Some(e.to_string()))
        }
        Err(e) => return Err(refusal(e, &trust)),
    };
    if state.last_sequence == Some(head.sequence)
        && state
            .last_head_hash
            .as_deref()
            .is_some_and(|h| h != head.object_hash().to_hex())
    {
        return Err((
            format!(
                "channel head sequence {} was already seen with different content: the repository is equivocating",
                head.sequence
            ),
            "ferry update refuses this server's head: tell the publisher".into(),
        ));
    }
    Ok(Verdict {
        head,
        trust,
        followed,
        expired,
    })
}

fn refusal(e: FormatError, trust: &TrustRoot) -> (String, String) {
    match e {
        FormatError::BadSignature { .. } => (
            format!("does not verify with {}: {e}", trust_name(trust)),
            WRONG_KEY.into(),
        ),
        FormatError::ReplayedHead { .. } | FormatError::RevivedContent { .. } => (
            e.to_string(),
            "this server serves an older head than this root already accepted: a mirror that stopped syncing, or a replay; ferry update refuses it".into(),
        ),
        FormatError::WrongChannel { .. } => (
            e.to_string(),
            "the server put another channel's head at this path: check `channel` and `servers`".into(),
        ),
        FormatError::ClientTooOld { .. } | FormatError::UnsupportedFormat { .. } => (
            e.to_string(),
            "upgrade ferry on this machine".into(),
        ),
        e => (e.to_string(), "ferry update refuses this head".into()),
    }
}

/// The local clock against the head's validity window.
pub fn clock(head: &ChannelHead, max_skew: u64) -> Check {
    let now = unix_now();
    let end = head.expires_at.min(head.content.expires_at);
    let which = if head.content.expires_at < head.expires_at {
        "the channel head's publisher content"
    } else {
        "the channel head"
    };
    if now >= end.saturating_add(max_skew) {
        return Check::fail(
            "clock",
            format!(
                "{which} expired at {}, {} ago: the repository has not been refreshed, or this machine's clock is ahead (now: {})",
                utc(end),
                span(now - end),
                utc(now)
            ),
            "refresh the head on the server (`ferry-server refresh-head`, or publish), or correct this machine's clock (NTP); `max_clock_skew` in .ferry/config.toml tolerates a small difference",
        );
    }
    if head.issued_at > now.saturating_add(max_skew) {
        return Check::warn(
            "clock",
            format!(
                "the channel head was issued at {}, {} in the future: this machine's clock is behind (now: {})",
                utc(head.issued_at),
                span(head.issued_at - now),
                utc(now)
            ),
            "correct this machine's clock (NTP): a clock that is behind keeps accepting heads after they expired",
        );
    }
    let left = end.saturating_sub(now);
    let mut detail = format!(
        "now {}: the channel head was issued {} ago and expires at {} (in {})",
        utc(now),
        span(now.saturating_sub(head.issued_at)),
        utc(end),
        span(left)
    );
    if max_skew > 0 {
        detail.push_str(&format!(", max_clock_skew {}", span(max_skew)));
    }
    Check::ok("clock", detail)
}

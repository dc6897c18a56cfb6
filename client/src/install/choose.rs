//! Which of a channel's releases this root should run (pure). The head lists the
//! channel's retained releases; the newest one this root may take wins: not outside
//! its staged rollout (FORMAT.md §5.1) or its targeted labels (§5.4), not revoked by
//! the publisher (§5.3), not marked bad here after a failed health check, not
//! requiring what this agent lacks. So an agent left out of the newest
//! release's rollout — a fresh one included — still installs the newest release it is
//! eligible for, and the newer ones it skipped are kept for `ferry status`.

use super::state::HeldBack;

/// How a held-back reason for unmet requirements starts.
pub const INCOMPATIBLE: &str = "incompatible with this agent";
/// The held-back reason of a revoked release.
pub const REVOKED: &str = "revoked by the publisher";

/// One release of the head, newest first, with what this root knows about it.
#[derive(Debug, Clone)]
pub struct Offer<'a> {
    pub version: &'a str,
    /// Effective rollout percentage (100: everyone).
    pub percent: u8,
    /// This agent's rollout bucket for the release (0-99).
    pub bucket: u8,
    /// Why it is marked bad on this root, if it is.
    pub bad: Option<&'a str>,
    /// Requirements this agent does not meet, one line each.
    pub unmet: Vec<String>,
    /// Whether the publisher revoked it (FORMAT.md §5.3).
    pub revoked: bool,
    /// The labels the release is offered to (`key=value …`, empty: every agent) and
    /// the ones this agent lacks, one line each (§5.4).
    pub labels: String,
    pub unlabelled: Vec<String>,
}

/// The release to run and the newer ones passed over.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Choice {
    pub target: Option<String>,
    pub held_back: Vec<HeldBack>,
}

/// Picks the newest eligible release from `offers` (newest first). `force` (the
/// operator's `ferry update --force`) overrides bad marks, never revocation, rollout,
/// targeting or requirements: those are the publisher's word.
pub fn choose<'a>(offers: impl IntoIterator<Item = Offer<'a>>, force: bool) -> Choice {
    let mut held_back = Vec::new();
    for offer in offers {
        match why_not(&offer, force) {
            None => {
                return Choice {
                    target: Some(offer.version.to_string()),
                    held_back,
                };
            }
            Some(reason) => held_back.push(HeldBack {
                version: offer.version.to_string(),
                reason,
            }),
        }
    }
    Choice {
        target: None,
        held_back,
    }
}

fn why_not(offer: &Offer<'_>, force: bool) -> Option<String> {
    if offer.revoked {
        return Some(REVOKED.into());
    }
    if !offer.unmet.is_empty() {
        return Some(format!("{INCOMPATIBLE}: {}", offer.unmet.join("; ")));
    }
    if !offer.unlabelled.is_empty() {
        return Some(format!(
            "offered only to agents labelled {}: {}",
            offer.labels,
            offer.unlabelled.join("; ")
        ));
    }
    if offer.percent == 0 {
        return Some("its rollout is paused".into());
    }
    if offer.bucket >= offer.percent {
        return Some(format!(
            "offered to {}% of agents, this agent's bucket is {} (not yet in)",
            offer.percent, offer.bucket
        ));
    }
    if let Some(reason) = offer.bad.filter(|_| !force) {
        return Some(format!(
            "marked bad on this root ({reason}); `ferry update --force` installs it anyway"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(version: &str, percent: u8, bucket: u8) -> Offer<'_> {
        Offer {
            version,
            percent,
            bucket,
            bad: None,
            unmet: Vec::new(),
            revoked: false,
            labels: String::new(),
            unlabelled: Vec::new(),
        }
    }

    #[test]
    fn the_newest_eligible_release_wins_and_the_skipped_ones_say_why() {
        let c = choose(
            [
                offer("3.0.0", 30, 57),
                offer("2.0.0", 0, 1),
                offer("1.0.0", 100, 99),
            ],
            false,
        );
        assert_eq!(c.target.as_deref(), Some("1.0.0"));
        assert_eq!(c.held_back.len(), 2);
        assert!(c.held_back[0].reason.contains("30%"), "{:?}", c.held_back);
        assert!(c.held_back[0].reason.contains("57"));
        assert!(c.held_back[1].reason.contains("paused"));
        let in_rollout = choose([offer("3.0.0", 30, 29), offer("1.0.0", 100, 0)], false);
        assert_eq!(in_rollout.target.as_deref(), Some("3.0.0"));
        assert!(in_rollout.held_back.is_empty());
    }

    #[test]
    fn a_bad_release_is_skipped_unless_forced_and_requirements_never_are() {
        let mut bad = offer("2.0.0", 100, 5);
        bad.bad = Some("health check failed");
        let older = offer("1.0.0", 100, 5);
        let c = choose([bad.clone(), older.clone()], false);
        assert_eq!(c.target.as_deref(), Some("1.0.0"));
        assert!(c.held_back[0].reason.contains("marked bad"));
        assert_eq!(
            choose([bad, older.clone()], true).target.as_deref(),
            Some("2.0.0")
        );
        let mut needs = offer("2.0.0", 100, 5);
        needs.unmet = vec!["requires arch=aarch64, this agent is x86_64".into()];
        let c = choose([needs, older], true);
        assert_eq!(c.target.as_deref(), Some("1.0.0"));
        assert!(c.held_back[0].reason.contains("arch=aarch64"));
    }

    #[test]
    fn a_revoked_release_is_never_chosen_not_even_forced() {
        let mut revoked = offer("2.0.0", 100, 5);
        revoked.revoked = true;
        for force in [false, true] {
            let c = choose([revoked.clone(), offer("1.0.0", 100, 5)], force);
            assert_eq!(c.target.as_deref(), Some("1.0.0"));
            assert_eq!(c.held_back[0].reason, REVOKED);
        }
        assert_eq!(choose([revoked], true).target, None);
    }

    #[test]
    fn a_targeted_release_waits_for_agents_with_its_labels_then_its_percentage() {
        let mut eu = offer("2.0.0", 50, 10);
        eu.labels = "region=eu".into();
        eu.unlabelled = vec!["requires label region=eu, this agent has no label region".into()];
        let c = choose([eu.clone(), offer("1.0.0", 100, 5)], true);
        assert_eq!(c.target.as_deref(), Some("1.0.0"));
        assert!(
            c.held_back[0]
                .reason
                .starts_with("offered only to agents labelled region=eu: requires label"),
            "{:?}",
            c.held_back
        );
        eu.unlabelled.clear();
        assert_eq!(choose([eu.clone()], false).target.as_deref(), Some("2.0.0"));
        eu.bucket = 70;
        assert!(choose([eu], false).held_back[0].reason.contains("50%"));
    }

    #[test]
    fn nothing_eligible_is_no_target() {
        let c = choose([offer("1.0.0", 10, 50)], false);
        assert_eq!(c.target, None);
        assert_eq!(c.held_back.len(), 1);
    }
}

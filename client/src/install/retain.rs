//! The pure rules of an install root: whether an update may proceed, what a rollback
//! goes back to, what a rollback pins, and which releases pruning removes.
//!
//! No I/O here, so every rule is tested directly.

use ferry_format::version::Version;

use super::state::Pin;

/// A rule refused the operation.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum RuleError {
    /// The channel's current release is older than one this root already had: a
    /// rollback attack, or a publisher mistake that only a local rollback may override.
    #[error(
        "refusing to move to an older release: the channel offers {target}, but {highest} was already installed or announced (use `ferry rollback` for a deliberate downgrade)"
    )]
    OlderRelease { target: String, highest: String },
    /// Nothing is installed, so there is nothing to roll back from.
    #[error("nothing is installed yet: run `ferry update` first")]
    NothingInstalled,
    /// `--steps` asks for more steps than there are older retained releases.
    #[error("cannot roll back {steps} step(s) from {active}: retained versions are {retained}")]
    NotEnoughReleases {
        steps: usize,
        active: String,
        retained: String,
    },
    /// `--steps 0`.
    #[error("--steps must be at least 1")]
    ZeroSteps,
}

/// What `ferry update` should do with the channel's current release.
#[derive(Debug, PartialEq, Eq)]
pub enum UpdateDecision {
    Install,
    UpToDate,
    /// A rollback pinned the root and the channel has nothing newer than what was
    /// rolled back from.
    Pinned(Pin),
}

/// Decides an update to `target` (spec: update step 2).
pub fn decide_update(
    target: &Version,
    active: Option<&Version>,
    highest: Option<&Version>,
    pin: Option<&Pin>,
    force: bool,
) -> Result<UpdateDecision, RuleError> {
    if let Some(h) = highest
        && target < h
    {
        return Err(RuleError::OlderRelease {
            target: target.to_string(),
            highest: h.to_string(),
        });
    }
    if let Some(p) = pin
        && !force
    {
        let newer = match Version::parse(&p.rolled_back_from) {
            Ok(from) => *target > from,
            Err(_) => true,
        };
        if !newer {
            return Ok(UpdateDecision::Pinned(p.clone()));
        }
    }
    if active == Some(target) {
        return Ok(UpdateDecision::UpToDate);
    }
    Ok(UpdateDecision::Install)
}

/// The retained release `steps` levels below `active`.
pub fn rollback_target(
    retained: &[Version],
    active: Option<&Version>,
    steps: usize,
) -> Result<Version, RuleError> {
    let active = active.ok_or(RuleError::NothingInstalled)?;
    if steps == 0 {
        return Err(RuleError::ZeroSteps);
    }
    let mut older: Vec<&Version> = retained.iter().filter(|v| *v < active).collect();
    older.sort();
    older.reverse();
    older
        .get(steps - 1)
        .map(|v| (*v).clone())
        .ok_or_else(|| RuleError::NotEnoughReleases {
            steps,
            active: active.to_string(),
            retained: list(retained),
        })
}

/// The pin a rollback from `previous_active` to `target` leaves: it remembers the
/// highest release ever rolled back from, so chained rollbacks keep refusing it.
pub fn pin_after_rollback(existing: Option<&Pin>, target: &str, previous_active: &str) -> Pin {
    let from = match existing {
        Some(p) => match (
            Version::parse(&p.rolled_back_from),
            Version::parse(previous_active),
        ) {
            (Ok(a), Ok(b)) if a > b => p.rolled_back_from.clone(),
            _ => previous_active.to_string(),
        },
        None => previous_active.to_string(),
    };
    Pin {
        version: target.to_string(),
        rolled_back_from: from,
    }
}

/// Releases to remove so that only the `keep` highest remain, never removing one in
/// `protect` (the active release and whatever `current` points to).
pub fn prune_selection(retained: &[Version], keep: usize, protect: &[&Version]) -> Vec<Version> {
    let mut sorted: Vec<&Version> = retained.iter().collect();
    sorted.sort();
    sorted.reverse();
    sorted
        .into_iter()
        .skip(keep.max(1))
        .filter(|v| !protect.contains(v))
        .cloned()
        .collect()
}

/// `1.0.0, 2.0.0` or `none`.
pub fn list(versions: &[Version]) -> String {
    if versions.is_empty() {
        return "none".into();
    }
    let mut v: Vec<&Version> = versions.iter().collect();
    v.sort();
    v.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    fn vs(s: &[&str]) -> Vec<Version> {
        s.iter().map(|x| v(x)).collect()
    }

    #[test]
    fn rollback_by_steps() {
        let r = vs(&["1.0", "3.0", "2.0", "4.0"]);
        let active = v("3.0");
        assert_eq!(rollback_target(&r, Some(&active), 1).unwrap(), v("2.0"));
        assert_eq!(rollback_target(&r, Some(&active), 2).unwrap(), v("1.0"));
        let e = rollback_target(&r, Some(&active), 3).unwrap_err();
        assert!(e.to_string().contains("1.0, 2.0, 3.0, 4.0"), "{e}");
        assert_eq!(
            rollback_target(&r, Some(&v("1.0")), 1),
            Err(RuleError::NotEnoughReleases {
                steps: 1,
                active: "1.0".into(),
                retained: "1.0, 2.0, 3.0, 4.0".into()
            })
        );
        assert_eq!(
            rollback_target(&r, None, 1),
            Err(RuleError::NothingInstalled)
        );
        assert_eq!(
            rollback_target(&r, Some(&active), 0),
            Err(RuleError::ZeroSteps)
        );
    }

    #[test]
    fn update_decisions_and_pins() {
        let (one, two, three) = (v("1.0"), v("2.0"), v("3.0"));
        assert_eq!(
            decide_update(&two, Some(&one), Some(&one), None, false),
            Ok(UpdateDecision::Install)
        );
        assert_eq!(
            decide_update(&two, Some(&two), Some(&two), None, false),
            Ok(UpdateDecision::UpToDate)
        );
        assert!(matches!(
            decide_update(&one, Some(&two), Some(&two), None, true),
            Err(RuleError::OlderRelease { .. })
        ));
        // Rolled back from 2.0 to 1.0: 2.0 is not offered again unless forced.
        let pin = pin_after_rollback(None, "1.0", "2.0");
        assert_eq!(pin.rolled_back_from, "2.0");
        assert_eq!(
            decide_update(&two, Some(&one), Some(&two), Some(&pin), false),
            Ok(UpdateDecision::Pinned(pin.clone()))
        );
        assert_eq!(
            decide_update(&two, Some(&one), Some(&two), Some(&pin), true),
            Ok(UpdateDecision::Install)
        );
        assert_eq!(
            decide_update(&three, Some(&one), Some(&two), Some(&pin), false),
            Ok(UpdateDecision::Install)
        );
        // A second rollback keeps the higher "rolled back from".
        let chained = pin_after_rollback(Some(&pin), "0.5", "1.0");
        assert_eq!(chained.version, "0.5");
        assert_eq!(chained.rolled_back_from, "2.0");
        let raised = pin_after_rollback(Some(&pin), "2.5", "3.0");
        assert_eq!(raised.rolled_back_from, "3.0");
    }

    #[test]
    fn prune_keeps_highest_and_protected() {
        let r = vs(&["1.0", "2.0", "3.0", "4.0", "5.0"]);
        assert_eq!(prune_selection(&r, 3, &[]), vs(&["2.0", "1.0"]));
        let active = v("1.0");
        assert_eq!(prune_selection(&r, 3, &[&active]), vs(&["2.0"]));
        assert_eq!(prune_selection(&r, 0, &[]).len(), 4, "keep is at least 1");
        assert!(prune_selection(&r, 9, &[]).is_empty());
    }
}

//! Two hops (FORMAT.md §8): an agent holding release B intact, for which the target
//! N's manifest lists no diff worth taking, goes through a release I the head lists:
//! B → I by a diff I's manifest lists, I → N by one N's manifest lists. A static host
//! makes no diffs on request, and a publisher's skip list of bases (`1,2,5,8` by
//! default) makes every distance up to 10 one diff or two.
//!
//! Planning is in two steps because I's manifest is one request away:
//!
//! 1. [`hop_candidates`], from the head and N's manifest alone: the releases I that N
//!    lists a diff from, between B and N, each with an estimate of the whole path. The
//!    first hop's size is unknown before I's manifest is read; it is estimated by the
//!    size of N's own diff from the same distance (a publisher diffs every release
//!    from the same distances, and releases the same distance apart differ about as
//!    much: not so across a release that rewrote most of the program, so the caller
//!    prices the best candidate exactly unless its known part alone is too dear), and
//!    a candidate whose first distance N has no diff from is left out (the publisher
//!    then made none for I either).
//! 2. [`plan_hops`], once I's manifest is fetched and verified: the exact plan of each
//!    hop (the first from what the disk holds, the second from the disk and I), their
//!    bytes and requests together. [`HopPlan::beats`] says whether it is worth taking
//!    over the direct plan.

use std::collections::{HashMap, HashSet};

use super::update::{Base, Disk, UpdatePlan, Via, plan_update};
use crate::head::ReleaseRef;
use crate::id::{ChunkId, Digest, ObjectRef};
use crate::manifest::Manifest;

/// A release a two-hop path could pass through, before its manifest is fetched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HopCandidate {
    /// The release held intact the path starts from.
    pub from: String,
    /// The intermediate release, as the head lists it (its manifest pinned).
    pub via: ReleaseRef,
    /// The second hop: the diff N's manifest lists from `via`.
    pub second: ObjectRef,
    /// Estimated bytes of the whole path: `via`'s manifest, the first diff (estimated)
    /// and the second one.
    pub estimate: u64,
}

/// The intermediate releases worth a look for an update to `target` from any of the
/// releases in `held` (versions held intact), cheapest estimate first (ties: the
/// second diff smaller, then the newer intermediate). `releases` is the head's list;
/// only releases it lists count, and distances are positions in it.
pub fn hop_candidates(
    releases: &[ReleaseRef],
    target: &Manifest,
    held: &[&str],
) -> Vec<HopCandidate> {
    let position: HashMap<&str, usize> = releases
        .iter()
        .enumerate()
        .map(|(i, r)| (r.version.as_str(), i))
        .collect();
    let Some(&at) = position.get(target.version.as_str()) else {
        return Vec::new();
    };
    // N's diffs by distance: from releases the head lists with the manifest it pins.
    let by_distance: HashMap<usize, ObjectRef> = target
        .diffs
        .iter()
        .filter_map(|d| {
            let &p = position.get(d.base_version.as_str())?;
            (p < at && releases[p].manifest.hash == d.base_manifest).then_some((at - p, d.object))
        })
        .collect();
    let mut out = Vec::new();
    for from in held {
        let Some(&b) = position.get(from) else {
            continue;
        };
        if b >= at {
            continue;
        }
        let distance = at - b;
        for (&k, second) in &by_distance {
            if k >= distance {
                continue;
            }
            let Some(first) = by_distance.get(&(distance - k)) else {
                continue;
            };
            let via = &releases[at - k];
            out.push((
                at - k,
                HopCandidate {
                    from: from.to_string(),
                    via: via.clone(),
                    second: *second,
                    estimate: via
                        .manifest
                        .size
                        .saturating_add(first.size)
                        .saturating_add(second.size),
                },
            ));
        }
    }
    out.sort_by(|(p, x), (q, y)| {
        (x.estimate, x.second.size, std::cmp::Reverse(p), &x.from).cmp(&(
            y.estimate,
            y.second.size,
            std::cmp::Reverse(q),
            &y.from,
        ))
    });
    out.into_iter().map(|(_, c)| c).collect()
}

/// A two-hop path priced exactly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HopPlan {
    /// The intermediate release.
    pub via: String,
    /// Bytes of its manifest (fetched to plan the first hop).
    pub manifest_size: u64,
    /// The update to `via` from what the disk holds; its chosen route is a diff.
    pub first: UpdatePlan,
    /// The update to the target from the disk and `via`; its chosen route is the
    /// diff from `via`.
    pub second: UpdatePlan,
    /// Both hops and `via`'s manifest.
    pub download_bytes: u64,
    /// `via`'s manifest and both hops' requests.
    pub requests: u64,
}

impl HopPlan {
    /// Whether the path costs fewer bytes than the direct plan's chosen route: never
    /// over an intact copy on disk or a diff the server makes on request (its size is
    /// unknown, and a server that makes diffs makes the direct one).
    pub fn beats(&self, direct: &UpdatePlan) -> bool {
        let chosen = direct.chosen();
        matches!(chosen.via, Via::Archive | Via::Diff { .. })
            && self.download_bytes < chosen.download_bytes
    }
}

/// The two hops through `via` (whose verified manifest is `via_manifest`, object
/// `via_hash`, `manifest_size` bytes), given `first`, the plan of the update to `via`
/// from the disk. `None` when either hop would not be one diff: the first plan chooses
/// no diff, or `target` lists none from `via` that beats its archive ranges. `have`
/// says which chunks the disk holds (`via`'s are added: it is built first).
pub fn plan_hops(
    target: &Manifest,
    via_manifest: &Manifest,
    via_hash: Digest,
    manifest_size: u64,
    first: UpdatePlan,
    have: &dyn Fn(&ChunkId) -> bool,
    max_gap: u64,
) -> Option<HopPlan> {
    if !matches!(first.chosen().via, Via::Diff { .. }) {
        return None;
    }
    let in_via: HashSet<ChunkId> = via_manifest.chunks.iter().map(|c| c.id).collect();
    let have_after = |id: &ChunkId| have(id) || in_via.contains(id);
    let bases = [Base {
        version: &via_manifest.version,
        manifest: via_manifest,
        hash: via_hash,
        intact: true,
    }];
    let disk = Disk {
        active: first.from.as_deref(),
        copy: None,
        have: &have_after,
        bases: &bases,
        failed: &[],
        on_demand: false,
    };
    let second = plan_update(target, &disk, max_gap);
    if !matches!(&second.chosen().via, Via::Diff { base, .. } if *base == via_manifest.version) {
        return None;
    }
    let (a, b) = (first.chosen(), second.chosen());
    Some(HopPlan {
        via: via_manifest.version.clone(),
        manifest_size,
        download_bytes: manifest_size
            .saturating_add(a.download_bytes)
            .saturating_add(b.download_bytes),
        requests: 1 + a.requests + b.requests,
        first,
        second,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunking::ChunkParams;
    use crate::delta::DiffRef;
    use crate::manifest::ChunkRecord;
    use crate::plan::DEFAULT_MAX_GAP;

    fn object(name: &str, size: u64) -> ObjectRef {
        ObjectRef {
            hash: Digest::of(name.as_bytes()),
            size,
        }
    }

    /// Release `v` made of chunks named by `ids`, 100 bytes each, with diffs from
    /// `(base, size)`.
    fn release(v: &str, ids: &[&str], diffs: &[(&str, u64)]) -> Manifest {
        Manifest {
            channel: "c".into(),
            version: v.into(),
            generation: 1,
            chunking: ChunkParams::default(),
            archive: ObjectRef {
                hash: Digest::of(v.as_bytes()),
                size: 100 * ids.len() as u64,
            },
            chunks: ids
                .iter()
                .map(|id| ChunkRecord {
                    id: Digest::of(id.as_bytes()),
                    size: 100,
                    stored_size: 100,
                    generation: 1,
                })
                .collect(),
            entries: vec![],
            diffs: diffs
                .iter()
                .map(|(base, size)| DiffRef {
                    base_version: base.to_string(),
                    base_manifest: manifest_hash(base),
                    object: object(&format!("diff {base} -> {v}"), *size),
                })
                .collect(),
        }
    }

    fn manifest_hash(v: &str) -> Digest {
        Digest::of(format!("manifest {v}").as_bytes())
    }

    /// The head's list: releases 1..=n, each manifest 50 bytes.
    fn head(n: usize) -> Vec<ReleaseRef> {
        (1..=n)
            .map(|i| ReleaseRef {
                version: i.to_string(),
                manifest: ObjectRef {
                    hash: manifest_hash(&i.to_string()),
                    size: 50,
                },
            })
            .collect()
    }

    /// Release 8 with diffs from distances 1, 2 and 5 (releases 7, 6 and 3).
    fn target_8() -> Manifest {
        release("8", &["x"], &[("3", 500), ("6", 300), ("7", 100)])
    }

    #[test]
    fn seven_back_goes_through_the_release_whose_two_diffs_are_estimated_cheapest() {
        let c = hop_candidates(&head(8), &target_8(), &["1"]);
        // 7 = 2 + 5 = 5 + 2: through 6 (second diff 300, first estimated by N's diff
        // from distance 5, 500) or through 3 (second 500, first estimated 300). Same
        // estimate; the smaller known second diff wins.
        let via: Vec<&str> = c.iter().map(|c| c.via.version.as_str()).collect();
        assert_eq!(via, ["6", "3"]);
        assert_eq!(c[0].estimate, 50 + 300 + 500);
        assert_eq!(c[0].second.size, 300);
        assert_eq!(c[0].from, "1");
        // 3 back = 1 + 2 = 2 + 1: through 7 (100 + est. 300) or 6 (300 + est. 100).
        let c = hop_candidates(&head(8), &target_8(), &["5"]);
        let via: Vec<&str> = c.iter().map(|c| c.via.version.as_str()).collect();
        assert_eq!(via, ["7", "6"]);
        // Several held releases: the cheapest path from any of them comes first.
        let c = hop_candidates(&head(8), &target_8(), &["1", "5"]);
        assert_eq!((c[0].from.as_str(), c[0].via.version.as_str()), ("5", "7"));
    }

    #[test]
    fn distances_no_two_diffs_add_up_to_have_no_candidate() {
        // 8 back from release 9 with diffs from 1, 2 and 5 only: 8 is no sum of two.
        let n = release("9", &["x"], &[("4", 500), ("7", 300), ("8", 100)]);
        assert!(hop_candidates(&head(9), &n, &["1"]).is_empty());
        // One back has nothing to go through; a release not in the head has no place.
        assert!(hop_candidates(&head(8), &target_8(), &["7"]).is_empty());
        assert!(hop_candidates(&head(8), &target_8(), &["0.9"]).is_empty());
        // A diff whose base manifest is not the one the head pins counts for nothing.
        let mut n = target_8();
        n.diffs[2].base_manifest = Digest::of(b"another 7");
        let c = hop_candidates(&head(8), &n, &["5"]);
        assert!(c.iter().all(|c| c.via.version != "7"));
    }

    /// B holds a, b; I is a, c (c new); N is a, c, d. The agent holds B.
    fn chain(first: u64, second: u64) -> (Manifest, Manifest, Manifest) {
        let b = release("1", &["a", "b"], &[]);
        let i = release("2", &["a", "c"], &[("1", first)]);
        let n = release("3", &["a", "c", "d"], &[("2", second)]);
        (b, i, n)
    }

    fn hop_of(b: &Manifest, i: &Manifest, n: &Manifest) -> (Option<HopPlan>, UpdatePlan) {
        let held: HashSet<ChunkId> = b.chunks.iter().map(|c| c.id).collect();
        let have = |id: &ChunkId| held.contains(id);
        let bases = [Base {
            version: "1",
            manifest: b,
            hash: manifest_hash("1"),
            intact: true,
        }];
        let disk = Disk {
            active: Some("1"),
            copy: None,
            have: &have,
            bases: &bases,
            failed: &[],
            on_demand: false,
        };
        let direct = plan_update(n, &disk, DEFAULT_MAX_GAP);
        let first = plan_update(i, &disk, DEFAULT_MAX_GAP);
        let hop = plan_hops(n, i, manifest_hash("2"), 50, first, &have, DEFAULT_MAX_GAP);
        (hop, direct)
    }

    #[test]
    fn two_small_diffs_beat_the_archive_ranges_and_count_every_request() {
        let (b, i, n) = chain(30, 20);
        let (hop, direct) = hop_of(&b, &i, &n);
        // Direct: c and d from the archive, one range of 200 bytes.
        assert_eq!(direct.chosen().via, Via::Archive);
        assert_eq!(direct.chosen().download_bytes, 200);
        let hop = hop.expect("both hops are one diff each");
        assert_eq!(hop.via, "2");
        assert_eq!(hop.download_bytes, 50 + 30 + 20);
        assert_eq!(
            hop.requests, 3,
            "the intermediate manifest and one diff per hop"
        );
        // The second hop takes nothing from the archive: c is in I, d from the diff.
        assert!(hop.second.chosen().archive.ranges.is_empty());
        assert!(hop.beats(&direct));
    }

    #[test]
    fn hops_that_cost_as_much_as_the_archive_are_not_taken() {
        // 50 + 90 + 60 = 200: not fewer bytes than the ranges.
        let (b, i, n) = chain(90, 60);
        let (hop, direct) = hop_of(&b, &i, &n);
        assert!(!hop.expect("each diff beats its own ranges").beats(&direct));
        // A second diff no smaller than its ranges (d: 100 bytes) is no hop at all.
        let (b, i, n) = chain(30, 100);
        assert!(hop_of(&b, &i, &n).0.is_none());
        // Nor is a first hop the intermediate manifest lists no diff for.
        let (b, mut i, n) = chain(30, 20);
        i.diffs.clear();
        assert!(hop_of(&b, &i, &n).0.is_none());
    }

    #[test]
    fn a_direct_diff_cheaper_than_both_hops_wins() {
        let (b, i, mut n) = chain(30, 20);
        n.diffs.push(DiffRef {
            base_version: "1".into(),
            base_manifest: manifest_hash("1"),
            object: object("diff 1 -> 3", 60),
        });
        let (hop, direct) = hop_of(&b, &i, &n);
        assert!(matches!(direct.chosen().via, Via::Diff { .. }));
        assert!(hop.is_some_and(|h| h.download_bytes == 100 && !h.beats(&direct)));
        n.diffs.last_mut().unwrap().object.size = 150;
        let (hop, direct) = hop_of(&b, &i, &n);
        assert!(hop.is_some_and(|h| h.beats(&direct)));
    }
}

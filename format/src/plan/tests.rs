use std::collections::HashSet;

use super::*;
use crate::chunking::ChunkParams;
use crate::delta::DiffRef;
use crate::id::{Digest, ObjectRef};
use crate::manifest::ChunkRecord;

fn manifest(stored: &[u32]) -> Manifest {
    let chunks: Vec<ChunkRecord> = stored
        .iter()
        .enumerate()
        .map(|(i, &s)| ChunkRecord {
            id: Digest::of(&i.to_le_bytes()),
            size: s,
            stored_size: s,
            generation: 1,
        })
        .collect();
    Manifest {
        channel: "c".into(),
        version: "2".into(),
        generation: 1,
        chunking: ChunkParams::default(),
        archive: ObjectRef {
            hash: Digest::of(b""),
            size: stored.iter().map(|&s| u64::from(s)).sum(),
        },
        chunks,
        entries: vec![],
        diffs: vec![],
    }
}

#[test]
fn tail_is_one_range_and_gaps_merge_or_split() {
    let m = manifest(&[100, 100, 100, 100, 100]);
    let id = |i: usize| m.chunks[i].id;
    let p = plan_archive(&m, |c| *c == id(0) || *c == id(1), 0);
    assert_eq!(p.ranges.len(), 1);
    assert_eq!((p.ranges[0].start, p.ranges[0].end), (200, 500));
    assert_eq!((p.fetch_chunks, p.reuse_chunks, p.reuse_bytes), (3, 2, 200));

    let scattered = |c: &ChunkId| *c == id(1) || *c == id(3);
    let p = plan_archive(&m, scattered, 0);
    assert_eq!(p.ranges.len(), 3);
    assert_eq!(p.download_bytes, 300);
    let p = plan_archive(&m, scattered, 100);
    assert_eq!(p.ranges.len(), 1, "gaps of 100 merge at max_gap 100");
    assert_eq!(p.download_bytes, 500);

    let p = plan_archive(&m, |_| true, 0);
    assert!(p.ranges.is_empty());
    assert_eq!(p.download_bytes, 0);
}

/// A release 2 whose first two chunks release 1 has; its diff from 1 is small.
fn two_releases(diff_size: u64) -> (Manifest, Manifest) {
    let mut new = manifest(&[100, 100, 100, 100]);
    let mut old = new.clone();
    old.chunks.truncate(2);
    old.version = "1".into();
    new.diffs.push(DiffRef {
        base_version: "1".into(),
        base_manifest: Digest::of(b"manifest 1"),
        object: ObjectRef {
            hash: Digest::of(b"diff"),
            size: diff_size,
        },
    });
    (new, old)
}

#[test]
fn an_intact_base_with_a_small_diff_is_the_plan_and_the_archive_its_fallback() {
    let (new, old) = two_releases(50);
    let held: HashSet<ChunkId> = old.chunks.iter().map(|c| c.id).collect();
    let have = |id: &ChunkId| held.contains(id);
    let bases = [Base {
        version: "1",
        manifest: &old,
        hash: Digest::of(b"manifest 1"),
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
    let plan = plan_update(&new, &disk, DEFAULT_MAX_GAP);
    assert_eq!(plan.from.as_deref(), Some("1"));
    assert_eq!((plan.reuse_chunks, plan.reuse_bytes), (2, 200));
    let chosen = plan.chosen();
    assert!(
        matches!(&chosen.via, Via::Diff { base, produces, .. } if base == "1" && *produces == [2, 3])
    );
    assert_eq!((chosen.download_bytes, chosen.requests), (50, 1));
    assert_eq!(
        chosen.regions,
        [
            Region {
                chunks: 0..2,
                bytes: 200,
                source: Source::Local
            },
            Region {
                chunks: 2..4,
                bytes: 200,
                source: Source::Diff
            },
        ]
    );
    assert_eq!(plan.fallbacks().len(), 1);
    assert_eq!(plan.archive().via, Via::Archive);
    assert_eq!(
        (plan.archive().download_bytes, plan.archive().requests),
        (200, 1)
    );

    // The same base modified, or its diff failed already: the archive alone.
    let modified = [Base {
        intact: false,
        ..bases[0]
    }];
    let plan = plan_update(
        &new,
        &Disk {
            bases: &modified,
            ..disk
        },
        DEFAULT_MAX_GAP,
    );
    assert_eq!(plan.routes.len(), 1);
    assert_eq!(
        plan.skipped,
        [Skipped {
            base: "1".into(),
            reason: SkipReason::Modified
        }]
    );
    let failed = [Digest::of(b"diff")];
    let plan = plan_update(
        &new,
        &Disk {
            failed: &failed,
            ..disk
        },
        DEFAULT_MAX_GAP,
    );
    assert_eq!(plan.chosen().via, Via::Archive);
    assert_eq!(plan.skipped[0].reason, SkipReason::Failed);
    // A diff as large as the ranges is not worth a request.
    let (new, _) = two_releases(200);
    let plan = plan_update(&new, &disk, DEFAULT_MAX_GAP);
    assert_eq!(plan.chosen().via, Via::Archive);
    assert_eq!(plan.skipped[0].reason, SkipReason::NotSmaller);
}

#[test]
fn without_a_listed_diff_the_server_is_asked_for_one_capped_at_the_ranges_it_replaces() {
    // Release 3 shares its first chunk with 1 and its second with 2; 2 and 1 are
    // retained, and 3 lists no diff from either.
    let mut new = manifest(&[100, 100, 100, 100]);
    new.version = "3".into();
    new.generation = 3;
    let mut one = new.clone();
    one.version = "1".into();
    one.generation = 1;
    one.chunks = vec![new.chunks[0]];
    let mut two = new.clone();
    two.version = "2".into();
    two.generation = 2;
    two.chunks = vec![new.chunks[1]];
    let held: HashSet<ChunkId> = [new.chunks[0].id, new.chunks[1].id].into();
    let have = |id: &ChunkId| held.contains(id);
    let bases = [
        Base {
            version: "1",
            manifest: &one,
            hash: Digest::of(b"manifest 1"),
            intact: true,
        },
        Base {
            version: "2",
            manifest: &two,
            hash: Digest::of(b"manifest 2"),
            intact: true,
        },
    ];
    let disk = Disk {
        active: Some("2"),
        copy: None,
        have: &have,
        bases: &bases,
        failed: &[],
        on_demand: true,
    };
    let plan = plan_update(&new, &disk, 0);
    // The newest base: its diff produces chunks 0, 2 and 3, of which 2 and 3 are
    // missing here: the ranges it replaces are those 200 bytes.
    let chosen = plan.chosen();
    assert_eq!(
        chosen.via,
        Via::Produced {
            base: "2".into(),
            base_manifest: Digest::of(b"manifest 2"),
            cap: 200,
            produces: vec![2, 3],
        }
    );
    assert_eq!(chosen.via.name(), "server-diff");
    assert_eq!((chosen.download_bytes, chosen.requests), (200, 1));
    assert_eq!(plan.routes.len(), 2);
    assert_eq!(plan.archive().via, Via::Archive);

    // Not asked: no server making them, the newest base modified (the older one is
    // asked instead), or its diff already failed.
    let off = plan_update(
        &new,
        &Disk {
            on_demand: false,
            ..disk
        },
        0,
    );
    assert_eq!(off.chosen().via, Via::Archive);
    let modified = [
        bases[0],
        Base {
            intact: false,
            ..bases[1]
        },
    ];
    let older = plan_update(
        &new,
        &Disk {
            bases: &modified,
            ..disk
        },
        0,
    );
    assert!(matches!(&older.chosen().via, Via::Produced { base, .. } if base == "1"));
    let failed = [Digest::of(b"manifest 2"), Digest::of(b"manifest 1")];
    let none = plan_update(
        &new,
        &Disk {
            failed: &failed,
            ..disk
        },
        0,
    );
    assert_eq!(none.chosen().via, Via::Archive);
    // A listed diff that is a route comes first, and nothing is asked for.
    let mut listed = new.clone();
    listed.diffs.push(DiffRef {
        base_version: "1".into(),
        base_manifest: Digest::of(b"manifest 1"),
        object: ObjectRef {
            hash: Digest::of(b"diff"),
            size: 50,
        },
    });
    let plan = plan_update(&listed, &disk, 0);
    assert!(matches!(plan.chosen().via, Via::Diff { .. }));
    assert!(
        plan.routes
            .iter()
            .all(|r| !matches!(r.via, Via::Produced { .. }))
    );
}

#[test]
fn an_intact_copy_on_disk_downloads_nothing() {
    let (new, _) = two_releases(50);
    let nothing = |_: &ChunkId| false;
    let disk = Disk {
        active: None,
        copy: Some("2+1"),
        have: &nothing,
        bases: &[],
        failed: &[],
        on_demand: false,
    };
    let plan = plan_update(&new, &disk, DEFAULT_MAX_GAP);
    assert_eq!(
        plan.chosen().via,
        Via::OnDisk {
            folder: "2+1".into()
        }
    );
    assert_eq!(plan.chosen().download_bytes, 0);
    assert_eq!(plan.archive().download_bytes, 400);
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    /// A manifest of chunks with these stored sizes, ids from `ids`.
    fn with_ids(sizes: &[u32], ids: &[u8]) -> Manifest {
        let mut m = manifest(sizes);
        for (c, id) in m.chunks.iter_mut().zip(ids) {
            c.id = Digest::of(&[*id]);
        }
        m
    }

    /// Checks one route against the release it plans: every chunk in exactly one
    /// region, each region's source able to provide it, ranges sorted and disjoint,
    /// and never more bytes than the archive's tail from the first missing chunk.
    fn check_route(
        m: &Manifest,
        route: &Route,
        held: &HashSet<ChunkId>,
        tail: u64,
    ) -> Result<(), TestCaseError> {
        let mut next = 0;
        for r in &route.regions {
            prop_assert_eq!(r.chunks.start, next, "a gap or an overlap before {:?}", r);
            prop_assert!(!r.chunks.is_empty());
            next = r.chunks.end;
            let bytes: u64 = r.chunks.clone().map(|i| u64::from(m.chunks[i].size)).sum();
            prop_assert_eq!(r.bytes, bytes);
            for i in r.chunks.clone() {
                let id = m.chunks[i].id;
                match (r.source, &route.via) {
                    (Source::Local, Via::OnDisk { .. }) => {}
                    (Source::Local, _) => prop_assert!(held.contains(&id)),
                    (Source::Diff, Via::Diff { produces, .. } | Via::Produced { produces, .. }) => {
                        prop_assert!(produces.contains(&i))
                    }
                    (Source::Diff, _) => prop_assert!(false, "diff chunks without a diff"),
                    (Source::Archive, _) => prop_assert!(
                        route
                            .archive
                            .ranges
                            .iter()
                            .any(|r| r.first_chunk <= i && i < r.last_chunk),
                        "chunk {} from no range",
                        i
                    ),
                }
                if r.source != Source::Local {
                    prop_assert!(!held.contains(&id), "chunk {} fetched but held", i);
                }
            }
        }
        prop_assert_eq!(next, m.chunks.len(), "chunks past {} in no region", next);
        for w in route.archive.ranges.windows(2) {
            prop_assert!(w[0].end <= w[1].start && w[0].last_chunk <= w[1].first_chunk);
        }
        let ranges: u64 = route.archive.ranges.iter().map(FetchRange::len).sum();
        let object = match &route.via {
            Via::Diff { object, .. } => object.size,
            Via::Produced { cap, .. } => *cap,
            _ => 0,
        };
        prop_assert_eq!(route.download_bytes, object + ranges);
        prop_assert_eq!(
            route.requests,
            u64::from(object > 0 || matches!(route.via, Via::Diff { .. } | Via::Produced { .. }))
                + route.archive.ranges.len() as u64
        );
        prop_assert!(
            route.download_bytes <= tail,
            "{} > tail {}",
            route.download_bytes,
            tail
        );
        Ok(())
    }

    proptest! {
        #[test]
        fn every_region_once_never_beyond_the_tail_and_fallbacks_end_in_the_archive(
            sizes in proptest::collection::vec(1u32..5000, 1..40),
            ids in proptest::collection::vec(0u8..30, 40),
            held in proptest::collection::vec(any::<bool>(), 40),
            bases in proptest::collection::vec(
                (proptest::collection::vec(0u8..30, 0..40), 0u64..20_000, any::<bool>()), 0..4),
            failed in proptest::collection::vec(any::<bool>(), 4),
            listed in proptest::collection::vec(any::<bool>(), 4),
            copy in any::<bool>(),
            on_demand in any::<bool>(),
            max_gap in 0u64..10_000,
        ) {
            let mut m = with_ids(&sizes, &ids[..sizes.len()]);
            let held: HashSet<ChunkId> = m.chunks.iter().zip(&held)
                .filter(|(_, h)| **h).map(|(c, _)| c.id).collect();
            let names: Vec<String> = (0..bases.len()).map(|i| format!("0.{i}")).collect();
            let base_manifests: Vec<Manifest> = bases.iter().zip(&names)
                .map(|((ids, _, _), name)| Manifest {
                    version: name.clone(),
                    ..with_ids(&vec![1; ids.len()], ids)
                }).collect();
            let mut failed_objects = Vec::new();
            for (i, (_, size, _)) in bases.iter().enumerate() {
                if !listed[i] {
                    continue;
                }
                let object = ObjectRef { hash: Digest::of(&[i as u8, 1]), size: *size };
                if failed[i] {
                    failed_objects.push(object.hash);
                }
                m.diffs.push(DiffRef {
                    base_version: names[i].clone(),
                    base_manifest: Digest::of(&[i as u8]),
                    object,
                });
            }
            let base_list: Vec<Base> = bases.iter().enumerate().map(|(i, (_, _, intact))| Base {
                version: &names[i],
                manifest: &base_manifests[i],
                hash: Digest::of(&[i as u8]),
                intact: *intact,
            }).collect();
            let have = |id: &ChunkId| held.contains(id);
            let disk = Disk {
                active: None,
                copy: copy.then_some("2"),
                have: &have,
                bases: &base_list,
                failed: &failed_objects,
                on_demand,
            };
            let plan = plan_update(&m, &disk, max_gap);

            let offsets = m.chunk_offsets();
            let first_missing = (0..m.chunks.len()).find(|&i| !held.contains(&m.chunks[i].id));
            let tail = first_missing.map_or(0, |i| offsets[m.chunks.len()] - offsets[i]);
            for route in &plan.routes {
                check_route(&m, route, &held, tail)?;
            }
            // The archive alone is the last fallback, and every diff route beats it.
            prop_assert_eq!(&plan.archive().via, &Via::Archive);
            prop_assert_eq!(plan.routes.iter().filter(|r| r.via == Via::Archive).count(), 1);
            let mut last = 0;
            for (k, r) in plan.routes.iter().enumerate() {
                match &r.via {
                    Via::OnDisk { .. } => prop_assert!(copy && k == 0),
                    Via::Diff { base, object, .. } => {
                        let i = names.iter().position(|n| n == base).unwrap();
                        prop_assert!(bases[i].2, "a modified base's diff is planned");
                        prop_assert!(!failed_objects.contains(&object.hash));
                        prop_assert!(r.download_bytes < plan.archive().download_bytes);
                        prop_assert!(r.download_bytes >= last, "not cheapest first");
                        last = r.download_bytes;
                    }
                    Via::Produced { base, base_manifest, cap, .. } => {
                        let i = names.iter().position(|n| n == base).unwrap();
                        prop_assert!(on_demand, "a produced diff without a server making them");
                        prop_assert!(!listed[i], "asked for a diff the manifest lists");
                        prop_assert!(bases[i].2, "a modified base's diff is asked for");
                        prop_assert_eq!(*base_manifest, Digest::of(&[i as u8]));
                        prop_assert!(*cap > 0);
                        prop_assert!(
                            !plan.routes.iter().any(|r| matches!(r.via, Via::Diff { .. })),
                            "asked for a diff while a listed one is planned"
                        );
                        prop_assert_eq!(r.download_bytes, plan.archive().download_bytes);
                        prop_assert_eq!(k, plan.routes.len() - 2);
                    }
                    Via::Archive => prop_assert_eq!(k, plan.routes.len() - 1),
                }
            }
            prop_assert_eq!(plan.reuse_bytes,
                m.chunks.iter().filter(|c| held.contains(&c.id)).map(|c| u64::from(c.size)).sum::<u64>());
        }
    }
}

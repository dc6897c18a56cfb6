//! Property tests: every object the format defines survives encode → decode unchanged,
//! and decoding arbitrary or mutated bytes returns an error instead of panicking.

use ferry_format::chunking::{ChunkParams, compress_chunk, decompress_chunk};
use ferry_format::envelope::CLIENT_FORMAT;
use ferry_format::envelope::{Envelope, ObjectKind, TrustedKeys};
use ferry_format::head::{ChannelHead, HeadContent, ReleaseRef, Rollout};
use ferry_format::id::{ChunkId, Digest, ObjectRef};
use ferry_format::keylist::HeadKeys;
use ferry_format::keys::SecretKey;
use ferry_format::manifest::{ChunkRecord, Entry, EntryKind, Manifest};
use ferry_format::verified::{HeadPolicy, verify_head, verify_manifest};
use proptest::prelude::*;

fn key() -> SecretKey {
    SecretKey::from_seed([42; 32])
}

fn arb_version() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(0u64..1000, 1..4),
        prop::option::of("[a-z]{1,5}(\\.[0-9]{1,2})?"),
    )
        .prop_map(|(nums, pre)| {
            let mut s = nums
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(".");
            if let Some(p) = pre {
                s.push('-');
                s.push_str(&p);
            }
            s
        })
}

fn arb_head() -> impl Strategy<Value = ChannelHead> {
    (
        "[a-z][a-z0-9-]{0,10}",
        any::<u64>(),
        0u64..1 << 40,
        1u64..1 << 20,
        prop::collection::btree_set(0u32..10_000, 1..20),
        any::<[u8; 32]>(),
        (0u8..100, 0u8..=100),
    )
        .prop_map(
            |(channel, sequence, issued_at, life, versions, h, (signed, lowered))| {
                let releases: Vec<ReleaseRef> = versions
                    .into_iter()
                    .map(|v| ReleaseRef {
                        version: format!("1.{v}"),
                        manifest: ObjectRef {
                            hash: Digest(h),
                            size: u64::from(v),
                        },
                    })
                    .collect();
                let current = releases.last().unwrap().version.clone();
                let content = HeadContent {
                    channel,
                    sequence: sequence / 2,
                    issued_at,
                    expires_at: issued_at + life * 10,
                    min_client_format: CLIENT_FORMAT,
                    releases,
                    manifest_diffs: vec![],
                    rollout: vec![Rollout {
                        version: current.clone(),
                        percent: signed,
                    }],
                };
                let over = vec![Rollout {
                    version: current,
                    percent: lowered.min(signed),
                }];
                ChannelHead::new(
                    content.sign(&[&key()]).unwrap(),
                    sequence,
                    issued_at,
                    issued_at + life,
                    None,
                    over,
                )
                .unwrap()
            },
        )
}

/// A manifest whose files are made of real chunks of generated content.
fn arb_manifest() -> impl Strategy<Value = Manifest> {
    (
        arb_version(),
        prop::collection::btree_map(
            "[a-z]{1,8}",
            prop::collection::vec(any::<u8>(), 0..300),
            0..8,
        ),
        1u64..5,
    )
        .prop_map(|(version, files, generation)| {
            let mut chunks: Vec<ChunkRecord> = Vec::new();
            let mut entries = vec![Entry {
                path: "d".into(),
                kind: EntryKind::Dir { mode: 0o755 },
            }];
            for (name, data) in &files {
                let mut ixs = vec![];
                if !data.is_empty() {
                    let id = ChunkId::of(data);
                    let ix = match chunks.iter().position(|c| c.id == id) {
                        Some(ix) => ix,
                        None => {
                            let stored = compress_chunk(data, 1).unwrap();
                            chunks.push(ChunkRecord {
                                id,
                                size: data.len() as u32,
                                stored_size: stored.len() as u32,
                                generation,
                            });
                            chunks.len() - 1
                        }
                    };
                    ixs.push(ix as u32);
                }
                entries.push(Entry {
                    path: format!("d/{name}"),
                    kind: EntryKind::File {
                        mode: 0o644,
                        size: data.len() as u64,
                        hash: Digest::of(data),
                        chunks: ixs,
                    },
                });
            }
            entries.push(Entry {
                path: "link".into(),
                kind: EntryKind::Symlink { target: "d".into() },
            });
            let size = chunks.iter().map(|c| u64::from(c.stored_size)).sum();
            Manifest {
                channel: "stable".into(),
                version,
                generation,
                chunking: ChunkParams::default(),
                archive: ObjectRef {
                    hash: Digest::of(b"archive"),
                    size,
                },
                chunks,
                entries,
                diffs: vec![],
            }
        })
}

proptest! {
    #[test]
    fn head_round_trips(head in arb_head()) {
        let k = key();
        let bytes = head.sign(&[&k]).unwrap();
        let policy = HeadPolicy { channel: head.channel(), now: head.issued_at, max_skew: 0, last_sequence: None, key_list_version: 0, last_content_sequence: None, rollout_seen: None };
        let back = verify_head(&bytes, &HeadKeys::from(TrustedKeys::single(k.public())), &policy).unwrap();
        prop_assert_eq!(&*back, &head);
        // Canonical: signing the same head again gives the same bytes.
        prop_assert_eq!(head.sign(&[&k]).unwrap(), bytes);
    }

    #[test]
    fn manifest_round_trips(m in arb_manifest()) {
        let k = key();
        let bytes = m.sign(&[&k]).unwrap();
        let release = ReleaseRef { version: m.version.clone(), manifest: ObjectRef::of(&bytes) };
        let back = verify_manifest(&bytes, &release, "stable", &TrustedKeys::single(k.public())).unwrap();
        prop_assert_eq!(&*back, &m);
    }

    #[test]
    fn mutated_manifest_never_verifies(m in arb_manifest(), pos in any::<prop::sample::Index>(), bit in 0u8..8) {
        let k = key();
        let bytes = m.sign(&[&k]).unwrap();
        let release = ReleaseRef { version: m.version.clone(), manifest: ObjectRef::of(&bytes) };
        let mut bad = bytes.clone();
        let i = pos.index(bad.len());
        bad[i] ^= 1 << bit;
        prop_assert!(verify_manifest(&bad, &release, "stable", &TrustedKeys::single(k.public())).is_err());
        // Even when the attacker also controls the hash the head names, the signature fails.
        let forged = ReleaseRef { version: m.version.clone(), manifest: ObjectRef::of(&bad) };
        prop_assert!(verify_manifest(&bad, &forged, "stable", &TrustedKeys::single(k.public())).is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = Envelope::decode(ObjectKind::Manifest, &bytes);
        let _ = Envelope::decode(ObjectKind::ChannelHead, &bytes);
        let mut framed = b"FRYM\x01\x00".to_vec();
        framed.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        framed.extend_from_slice(&bytes);
        let _ = Envelope::decode(ObjectKind::Manifest, &framed);
    }

    #[test]
    fn chunks_round_trip(data in prop::collection::vec(any::<u8>(), 1..5000), level in 1i32..5) {
        let stored = compress_chunk(&data, level).unwrap();
        prop_assert_eq!(decompress_chunk(&ChunkId::of(&data), data.len() as u32, &stored).unwrap(), data);
    }
}

/// A base release's table and a new release keeping some of its chunks (in order) and
/// adding new ones, with files naming chunks of the new table.
fn arb_release_pair() -> impl Strategy<Value = (Manifest, Manifest, Vec<ChunkId>)> {
    (1usize..40, 0usize..20)
        .prop_flat_map(|(base_n, new_n)| {
            (
                Just(base_n),
                Just(new_n),
                prop::collection::vec(any::<bool>(), base_n),
                prop::collection::vec(
                    prop::collection::vec(any::<prop::sample::Index>(), 1..6),
                    0..12,
                ),
            )
        })
        .prop_map(|(base_n, new_n, keep, files)| {
            let record = |tag: String, generation| ChunkRecord {
                id: Digest::of(tag.as_bytes()),
                size: 1000,
                stored_size: 500,
                generation,
            };
            let base_table: Vec<ChunkRecord> =
                (0..base_n).map(|i| record(format!("b{i}"), 1)).collect();
            let mut table: Vec<ChunkRecord> = base_table
                .iter()
                .zip(&keep)
                .filter(|(_, k)| **k)
                .map(|(c, _)| *c)
                .collect();
            let added: Vec<ChunkRecord> = (0..new_n).map(|i| record(format!("n{i}"), 2)).collect();
            table.extend(&added);
            let manifest =
                |version: &str, generation, table: &[ChunkRecord], files: Vec<Entry>| Manifest {
                    channel: "stable".into(),
                    version: version.into(),
                    generation,
                    chunking: ChunkParams::default(),
                    archive: ObjectRef {
                        hash: Digest::of(version.as_bytes()),
                        size: 500 * table.len() as u64,
                    },
                    chunks: table.to_vec(),
                    entries: files,
                    diffs: vec![],
                };
            let entries = |n: usize, picks: &[Vec<prop::sample::Index>]| -> Vec<Entry> {
                if n == 0 {
                    return vec![];
                }
                picks
                    .iter()
                    .enumerate()
                    .map(|(i, p)| Entry {
                        path: format!("f{i:03}"),
                        kind: EntryKind::File {
                            mode: 0o644,
                            size: 1000 * p.len() as u64,
                            hash: Digest::of(format!("file{i}").as_bytes()),
                            chunks: p.iter().map(|x| x.index(n) as u32).collect(),
                        },
                    })
                    .collect()
            };
            let base = manifest("1.0.0", 1, &base_table, entries(base_n, &files));
            let new = manifest("1.1.0", 2, &table, entries(table.len(), &files));
            (base, new, added.iter().map(|c| c.id).collect())
        })
}

proptest! {
    #[test]
    fn manifest_skeletons_fill_back_to_the_signed_manifest((base, new, added) in arb_release_pair()) {
        use ferry_format::delta::manifest_diff::Skeleton;
        let new_bytes = new.sign(&[&key()]).unwrap();
        let skeleton = Skeleton::make(&new_bytes, &base, &|_| false).unwrap();
        let parsed = Skeleton::decode(&skeleton, &base).unwrap();
        prop_assert_eq!(parsed.holes(), added.len());
        prop_assert_eq!(parsed.fill(&added).unwrap(), new_bytes);
    }
}

/// Content with every kind of entropy: stretches of one byte, of a short period, of
/// noise, so cut points come often, rarely or never (then only at `max`).
fn arb_content() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec((0u8..3, any::<u64>(), 1usize..40_000), 0..12).prop_map(|parts| {
        let mut out = Vec::new();
        for (kind, seed, len) in parts {
            let mut x = seed | 1;
            out.extend((0..len).map(|i| match kind {
                0 => seed as u8,
                1 => (i % (seed as usize % 7 + 2)) as u8,
                _ => {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                }
            }));
        }
        out
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// The chunker publish runs (its own two-lane scan, reads into a buffer) cuts
    /// where the `fastcdc` crate cuts and hashes the whole content, for any even
    /// parameters within FastCDC's bounds.
    #[test]
    fn the_file_chunker_cuts_as_fastcdc_does(
        data in arb_content(),
        min in 32u32..4096,
        avg_over in 0u32..16_384,
        max_over in 0u32..65_536,
        normalization in 0u8..=3,
    ) {
        use ferry_format::chunking::{FileChunker, chunk_slice};
        let min = 2 * min;
        let avg = (min.max(256) + avg_over) & !1;
        let max = (avg.max(1024) + max_over) & !1;
        let p = ChunkParams { min, avg, max, normalization, ..ChunkParams::default() };
        let want: Vec<(usize, usize)> = chunk_slice(&data, p).unwrap().collect();
        let mut c = FileChunker::new(&data[..], p).unwrap();
        let mut got = Vec::new();
        while let Some(v) = c.next_chunk().unwrap() {
            prop_assert_eq!(v.id, ChunkId::of(v.data));
            got.push((v.offset as usize, v.data.len()));
        }
        prop_assert_eq!(got, want);
        prop_assert_eq!(c.finish().hash, Digest::of(&data));
    }
}

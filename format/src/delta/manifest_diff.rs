//! Manifest diffs (FORMAT.md §3.7): the new manifest as one zstd frame compressed with
//! the old manifest's exact bytes as reference prefix ("patch-from"). Unchanged file
//! entries become short matches, so an update's metadata costs what changed, not the
//! whole tree. The result is verified like any manifest (hash and size from the signed
//! head, then signatures), so the diff itself needs no signature.
//!
//! What zstd cannot shrink is the 32-byte id of every new chunk. Those ids are hashes
//! of bytes the agent is about to produce anyway from the data diff against the same
//! base, so a manifest diff may carry a [`Skeleton`] instead: the manifest with those
//! ids zeroed, completed by the agent from the chunks the data diff produces and only
//! then verified (hash from the signed head, signatures) like any manifest.

use std::collections::HashMap;
use std::io::{Read, Write};

use crate::codec;
use crate::envelope::{Envelope, ObjectKind};
use crate::error::{FormatError, Result};
use crate::id::{ChunkId, Digest};
use crate::manifest::{EntryKind, Manifest};

fn window_log(total: usize) -> u32 {
    (usize::BITS - total.max(1).leading_zeros()).clamp(10, 27)
}

/// Encodes `target` against `base`.
pub fn encode_manifest_diff(base: &[u8], target: &[u8], level: i32) -> Result<Vec<u8>> {
    let err = |e: std::io::Error| FormatError::Compression(e.to_string());
    let mut enc =
        zstd::stream::write::Encoder::with_ref_prefix(Vec::new(), level, base).map_err(err)?;
    enc.window_log(window_log(base.len() + target.len()))
        .map_err(err)?;
    enc.long_distance_matching(true).map_err(err)?;
    enc.include_checksum(false).map_err(err)?;
    enc.write_all(target).map_err(err)?;
    enc.finish().map_err(err)
}

/// Applies a manifest diff, producing at most `max_size` bytes (the size the signed
/// head gives the new manifest).
pub fn apply_manifest_diff(base: &[u8], diff: &[u8], max_size: u64) -> Result<Vec<u8>> {
    let corrupt = |e: std::io::Error| FormatError::Malformed {
        kind: "manifest diff",
        reason: e.to_string(),
    };
    let mut dec = zstd::stream::read::Decoder::with_ref_prefix(diff, base).map_err(corrupt)?;
    dec.window_log_max(27).map_err(corrupt)?;
    let mut out = Vec::new();
    (&mut dec)
        .take(max_size.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(corrupt)?;
    if out.len() as u64 > max_size {
        return Err(FormatError::TooLarge {
            kind: "manifest diff",
            what: "output",
            found: out.len() as u64,
            limit: max_size,
        });
    }
    Ok(out)
}

/// A manifest as a skeleton manifest diff yields it (FORMAT.md §3.7). The chunks the
/// base lacks are exactly what the data diff from that base produces; those that no
/// release an agent on the base may still hold has are "holes": their ids are zero.
/// File entries name chunks by their index in the *base's* table, or past its end for
/// chunks the base lacks, so that entries which did not change are byte for byte the
/// base's, whatever the new table dropped or added. Not verified: its sizes only split
/// the data diff's output into chunks and price the alternatives; [`Skeleton::fill`]
/// gives the bytes to verify against the signed head.
#[derive(Clone, Debug)]
pub struct Skeleton {
    envelope: Envelope,
    manifest: Manifest,
    /// Table indexes of the chunks the base lacks, in table order.
    outside: Vec<usize>,
}

fn malformed(reason: String) -> FormatError {
    FormatError::Malformed {
        kind: "manifest skeleton",
        reason,
    }
}

fn is_hole(id: &ChunkId) -> bool {
    id.0 == [0; 32]
}

/// Rewrites every file's chunk indexes with `f`.
fn remap_entries(m: &mut Manifest, f: impl Fn(u32) -> Result<u32>) -> Result<()> {
    for e in &mut m.entries {
        if let EntryKind::File { chunks, .. } = &mut e.kind {
            for c in chunks.iter_mut() {
                *c = f(*c)?;
            }
        }
    }
    Ok(())
}

fn base_index(base: &Manifest) -> HashMap<ChunkId, u32> {
    base.chunks
        .iter()
        .enumerate()
        .map(|(k, c)| (c.id, k as u32))
        .collect()
}

impl Skeleton {
    /// The publisher's side: `manifest_bytes` (a signed manifest) turned into the
    /// skeleton against `base`, in the same envelope (same signatures). `keep` names
    /// the chunks outside the base whose ids stay, because an agent on the base may
    /// hold them in another release and copy them instead of downloading.
    pub fn make(
        manifest_bytes: &[u8],
        base: &Manifest,
        keep: &dyn Fn(&ChunkId) -> bool,
    ) -> Result<Vec<u8>> {
        let mut envelope = Envelope::decode(ObjectKind::Manifest, manifest_bytes)?;
        let mut manifest: Manifest = codec::decode("manifest", &envelope.body)?;
        let in_base = base_index(base);
        let mut next_outside = base.chunks.len() as u32;
        let mut to_base = Vec::with_capacity(manifest.chunks.len());
        for c in &mut manifest.chunks {
            to_base.push(match in_base.get(&c.id) {
                Some(&k) => k,
                None => {
                    if !keep(&c.id) {
                        c.id = Digest([0; 32]);
                    }
                    next_outside += 1;
                    next_outside - 1
                }
            });
        }
        remap_entries(&mut manifest, |i| {
            to_base
                .get(i as usize)
                .copied()
                .ok_or_else(|| malformed(format!("chunk index {i} beyond the table")))
        })?;
        envelope.body = codec::encode(&manifest);
        Ok(envelope.encode())
    }

    /// Parses a skeleton made against `base` (the output of a skeleton manifest diff).
    pub fn decode(bytes: &[u8], base: &Manifest) -> Result<Skeleton> {
        let envelope = Envelope::decode(ObjectKind::Manifest, bytes)?;
        let mut manifest: Manifest = codec::decode("manifest", &envelope.body)?;
        let in_base = base_index(base);
        let outside: Vec<usize> = (0..manifest.chunks.len())
            .filter(|&i| {
                let id = &manifest.chunks[i].id;
                is_hole(id) || !in_base.contains_key(id)
            })
            .collect();
        let index: HashMap<ChunkId, u32> = manifest
            .chunks
            .iter()
            .enumerate()
            .filter(|(_, c)| !is_hole(&c.id))
            .map(|(i, c)| (c.id, i as u32))
            .collect();
        remap_entries(&mut manifest, |v| {
            let found = match base.chunks.get(v as usize) {
                Some(c) => index.get(&c.id).copied(),
                None => outside
                    .get(v as usize - base.chunks.len())
                    .map(|&i| i as u32),
            };
            found.ok_or_else(|| {
                malformed(format!(
                    "file names chunk {v}, which is in neither the base nor the new table"
                ))
            })
        })?;
        Ok(Skeleton {
            envelope,
            manifest,
            outside,
        })
    }

    /// The chunks the base lacks, in table order — what the data diff from the base
    /// produces, one after the other: size, and id unless it is a hole.
    pub fn outside_base(&self) -> impl ExactSizeIterator<Item = (u32, Option<ChunkId>)> + '_ {
        self.outside.iter().map(|&i| {
            let c = &self.manifest.chunks[i];
            (c.size, (!is_hole(&c.id)).then_some(c.id))
        })
    }

    /// Table indexes of the chunks [`Skeleton::outside_base`] lists, in its order.
    pub fn outside_indexes(&self) -> &[usize] {
        &self.outside
    }

    /// Number of holes (chunks whose ids [`Skeleton::fill`] must be given).
    pub fn holes(&self) -> usize {
        self.manifest
            .chunks
            .iter()
            .filter(|c| is_hole(&c.id))
            .count()
    }

    /// The manifest as the skeleton has it (holes zero), to price archive ranges
    /// before anything else is fetched. Unverified: plan with it, never install.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The manifest's bytes with the holes filled by `ids` (in table order), ready for
    /// verification against the signed head.
    pub fn fill(mut self, ids: &[ChunkId]) -> Result<Vec<u8>> {
        let holes: Vec<usize> = (0..self.manifest.chunks.len())
            .filter(|&i| is_hole(&self.manifest.chunks[i].id))
            .collect();
        if ids.len() != holes.len() {
            return Err(malformed(format!(
                "{} chunk ids for {} holes",
                ids.len(),
                holes.len()
            )));
        }
        for (&i, id) in holes.iter().zip(ids) {
            self.manifest.chunks[i].id = *id;
        }
        self.envelope.body = codec::encode(&self.manifest);
        Ok(self.envelope.encode())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunking::ChunkParams;
    use crate::id::ObjectRef;
    use crate::keys::SecretKey;
    use crate::manifest::{ChunkRecord, Entry};

    fn chunk(tag: &str, generation: u64) -> ChunkRecord {
        ChunkRecord {
            id: Digest::of(tag.as_bytes()),
            size: 1000,
            stored_size: 500,
            generation,
        }
    }

    /// A manifest whose files are made of the named chunks.
    fn manifest(
        version: &str,
        generation: u64,
        table: &[ChunkRecord],
        files: &[(&str, &[u32])],
    ) -> Manifest {
        Manifest {
            channel: "stable".into(),
            version: version.into(),
            generation,
            chunking: ChunkParams::default(),
            archive: ObjectRef {
                hash: Digest::of(version.as_bytes()),
                size: 500 * table.len() as u64,
            },
            chunks: table.to_vec(),
            entries: files
                .iter()
                .map(|(path, chunks)| Entry {
                    path: path.to_string(),
                    kind: EntryKind::File {
                        mode: 0o644,
                        size: 1000 * chunks.len() as u64,
                        hash: Digest::of(path.as_bytes()),
                        chunks: chunks.to_vec(),
                    },
                })
                .collect(),
            diffs: vec![],
        }
    }

    fn signed(m: &Manifest) -> Vec<u8> {
        m.sign(&[&SecretKey::from_seed([7; 32])]).unwrap()
    }

    /// Base: a b c d. New: b d e f (a and c dropped, e and f added), so every index
    /// in the new table differs from the base's.
    fn pair() -> (Manifest, Manifest) {
        let base = manifest(
            "1.0.0",
            1,
            &[chunk("a", 1), chunk("b", 1), chunk("c", 1), chunk("d", 1)],
            &[("x", &[0, 1]), ("y", &[2, 3])],
        );
        let new = manifest(
            "1.1.0",
            2,
            &[chunk("b", 1), chunk("d", 1), chunk("e", 2), chunk("f", 2)],
            &[("x", &[2, 0]), ("y", &[3, 1]), ("z", &[1])],
        );
        (base, new)
    }

    #[test]
    fn skeleton_round_trips_through_its_holes() {
        let (base, new) = pair();
        let new_bytes = signed(&new);
        let skeleton_bytes = Skeleton::make(&new_bytes, &base, &|_| false).unwrap();
        assert_ne!(skeleton_bytes, new_bytes);
        let skeleton = Skeleton::decode(&skeleton_bytes, &base).unwrap();
        assert_eq!(skeleton.holes(), 2);
        let outside: Vec<_> = skeleton.outside_base().collect();
        assert_eq!(outside, [(1000, None), (1000, None)]);
        let filled = skeleton
            .fill(&[new.chunks[2].id, new.chunks[3].id])
            .unwrap();
        assert_eq!(filled, new_bytes);
    }

    #[test]
    fn kept_ids_are_named_and_only_holes_are_filled() {
        // "e" is in another release an agent may hold: its id stays.
        let (base, new) = pair();
        let new_bytes = signed(&new);
        let e = new.chunks[2].id;
        let skeleton = Skeleton::make(&new_bytes, &base, &|id| *id == e).unwrap();
        let skeleton = Skeleton::decode(&skeleton, &base).unwrap();
        assert_eq!(skeleton.holes(), 1);
        let outside: Vec<_> = skeleton.outside_base().collect();
        assert_eq!(outside, [(1000, Some(e)), (1000, None)]);
        assert_eq!(skeleton.fill(&[new.chunks[3].id]).unwrap(), new_bytes);
    }

    #[test]
    fn unchanged_files_cost_almost_nothing() {
        // 200 files; the new release drops the first file's chunk and adds one: every
        // index shifts, yet the skeleton diff stays small where the plain one cannot.
        let table: Vec<ChunkRecord> = (0..200).map(|i| chunk(&format!("c{i}"), 1)).collect();
        let names: Vec<String> = (0..200).map(|i| format!("file{i:03}")).collect();
        let lists: Vec<[u32; 1]> = (0..200).map(|i| [i]).collect();
        let files: Vec<(&str, &[u32])> = names
            .iter()
            .zip(&lists)
            .map(|(n, l)| (n.as_str(), &l[..]))
            .collect();
        let base = manifest("1.0.0", 1, &table, &files);
        let mut new_table = table[1..].to_vec();
        new_table.push(chunk("new", 2));
        let new_lists: Vec<[u32; 1]> = (0..200).map(|i| [(i + 199) % 200]).collect();
        let new_files: Vec<(&str, &[u32])> = names
            .iter()
            .zip(&new_lists)
            .map(|(n, l)| (n.as_str(), &l[..]))
            .collect();
        let new = manifest("1.1.0", 2, &new_table, &new_files);
        let (base_bytes, new_bytes) = (signed(&base), signed(&new));
        let skeleton = Skeleton::make(&new_bytes, &base, &|_| false).unwrap();
        let plain = encode_manifest_diff(&base_bytes, &new_bytes, 19)
            .unwrap()
            .len();
        let skel = encode_manifest_diff(&base_bytes, &skeleton, 19)
            .unwrap()
            .len();
        assert!(
            skel * 2 < plain,
            "skeleton diff {skel} B vs plain {plain} B"
        );
        let filled = Skeleton::decode(&skeleton, &base)
            .unwrap()
            .fill(&[new_table[199].id])
            .unwrap();
        assert_eq!(filled, new_bytes);
    }

    #[test]
    fn bad_skeletons_are_refused_by_name() {
        let (base, new) = pair();
        let skeleton = Skeleton::make(&signed(&new), &base, &|_| false).unwrap();
        let err = Skeleton::decode(&skeleton, &base)
            .unwrap()
            .fill(&[new.chunks[2].id])
            .unwrap_err();
        assert!(err.to_string().contains("1 chunk ids for 2 holes"), "{err}");
        // Against another base, the file indexes point nowhere.
        let other = manifest("0.9.0", 1, &[chunk("q", 1)], &[("x", &[0])]);
        let err = Skeleton::decode(&skeleton, &other).unwrap_err();
        assert!(
            err.to_string()
                .contains("in neither the base nor the new table"),
            "{err}"
        );
        assert!(Skeleton::decode(b"FRYMjunk", &base).is_err());
    }
}

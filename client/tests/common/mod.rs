//! Shared test helpers: a hand-written `file://` repository and a command runner.
#![allow(dead_code)]

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use clap::Parser;
use ferry_client::cli::Cli;
use ferry_format::chunking::{ChunkParams, chunk_slice, compress_chunk};
use ferry_format::delta::encode::{Sinks, encode};
use ferry_format::delta::manifest_diff::encode_manifest_diff;
use ferry_format::delta::pack::{object_in_memory, pack_in_memory};
use ferry_format::delta::{BSDIFF_V2, DiffHeader, DiffRef, ManifestDiffRef, missing_chunks};
use ferry_format::envelope::CLIENT_FORMAT;
use ferry_format::head::{ChannelHead, HeadContent, ReleaseRef};
use ferry_format::id::{ChunkId, Digest, ObjectRef};
use ferry_format::keys::SecretKey;
use ferry_format::layout::{head_path, object_path};
use ferry_format::manifest::{ChunkRecord, Entry, EntryKind, Manifest};

pub enum Item {
    Dir(u32),
    File(u32, Vec<u8>),
    Link(&'static str),
}

/// A minimal publisher: enough of `ferry-server publish` to feed the client.
pub struct Repo {
    pub dir: PathBuf,
    pub key: SecretKey,
    pub sequence: u64,
    pub generation: u64,
    pub releases: Vec<ReleaseRef>,
    /// Chunk id -> generation it first appeared in.
    pub seen: HashMap<ChunkId, u64>,
    pub heads: Vec<Vec<u8>>,
    /// Write a diff object and a manifest diff against the previous release.
    pub diffs: bool,
    /// The previous release: manifest, signed bytes, and its files concatenated in
    /// manifest order (the diff base).
    pub prev: Option<(Manifest, Vec<u8>, Vec<u8>)>,
    /// Manifest diffs the next head lists.
    pub manifest_diffs: Vec<ManifestDiffRef>,
    /// Repository paths of the last release's diff object and manifest diff.
    pub last_diff: Option<PathBuf>,
    pub last_manifest_diff: Option<PathBuf>,
    /// Encode the next diff with one output byte flipped: a well-formed object whose
    /// hash matches the manifest but which produces a chunk that fails its id.
    pub tamper_diff_output: bool,
}

impl Repo {
    pub fn new(dir: &Path) -> Repo {
        Repo {
            dir: dir.to_path_buf(),
            key: SecretKey::from_seed([42; 32]),
            sequence: 0,
            generation: 0,
            releases: Vec::new(),
            seen: HashMap::new(),
            heads: Vec::new(),
            diffs: false,
            prev: None,
            manifest_diffs: Vec::new(),
            last_diff: None,
            last_manifest_diff: None,
            tamper_diff_output: false,
        }
    }

    /// Like `ferry-server publish`: a bsdiff object from the previous release's files
    /// to the chunks it lacks, listed in `manifest`.
    fn write_diff(&mut self, manifest: &mut Manifest, data: &HashMap<ChunkId, Vec<u8>>) {
        let Some((base, base_bytes, base_data)) = &self.prev else {
            return;
        };
        let wanted = missing_chunks(manifest, base);
        let mut target: Vec<u8> = wanted
            .iter()
            .flat_map(|&i| data[&manifest.chunks[i].id].iter().copied())
            .collect();
        if self.tamper_diff_output {
            target[0] ^= 0xFF;
        }
        let sinks = Sinks {
            control: Vec::new(),
            diff: Vec::new(),
            extra: Vec::new(),
        };
        let (c, d, e, _) = encode(base_data, &target, sinks).unwrap();
        let packed = pack_in_memory(&c, &d, &e).unwrap();
        let header = DiffHeader {
            algorithm: BSDIFF_V2,
            base_manifest: Digest::of(base_bytes),
            base_size: base_data.len() as u64,
            target_size: target.len() as u64,
            target_chunks: wanted.len() as u64,
            layout: packed.layout,
            streams: packed.streams.iter().map(|(h, _)| *h).collect(),
        };
        let object = object_in_memory(&header, &packed);
        let path = object_path(&Digest::of(&object));
        self.put(&path, &object);
        self.last_diff = Some(self.dir.join(path));
        manifest.diffs = vec![DiffRef {
            base_version: base.version.clone(),
            base_manifest: Digest::of(base_bytes),
            object: ObjectRef::of(&object),
        }];
    }

    /// A manifest diff from the previous release's manifest to `mbytes`, for the head.
    fn write_manifest_diff(&mut self, mbytes: &[u8]) {
        let Some((_, base_bytes, _)) = &self.prev else {
            return;
        };
        let diff = encode_manifest_diff(base_bytes, mbytes, 19).unwrap();
        let path = object_path(&Digest::of(&diff));
        self.manifest_diffs = vec![ManifestDiffRef {
            base_manifest: Digest::of(base_bytes),
            object: ObjectRef::of(&diff),
            chunk_diff: None,
        }];
        self.put(&path, &diff);
        self.last_manifest_diff = Some(self.dir.join(path));
    }

    pub fn put(&self, rel: &str, bytes: &[u8]) {
        let p = self.dir.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, bytes).unwrap();
    }

    /// Publishes a release; returns the archive's repository path.
    pub fn publish(&mut self, version: &str, items: &[(&str, Item)]) -> PathBuf {
        self.generation += 1;
        let g = self.generation;
        let mut data: HashMap<ChunkId, Vec<u8>> = HashMap::new();
        let mut file_chunks: Vec<Vec<ChunkId>> = Vec::new();
        let mut order: Vec<ChunkId> = Vec::new();
        for (_, item) in items {
            let Item::File(_, content) = item else {
                file_chunks.push(Vec::new());
                continue;
            };
            let mut ids = Vec::new();
            for (off, len) in chunk_slice(content, ChunkParams::default()).unwrap() {
                let bytes = &content[off..off + len];
                let id = ChunkId::of(bytes);
                if let std::collections::hash_map::Entry::Vacant(v) = data.entry(id) {
                    v.insert(bytes.to_vec());
                    order.push(id);
                }
                ids.push(id);
            }
            file_chunks.push(ids);
        }
        // Chunks that appeared before keep their generation; the table is ordered by it.
        for id in &order {
            self.seen.entry(*id).or_insert(g);
        }
        order.sort_by_key(|id| self.seen[id]);
        let index: HashMap<ChunkId, u32> = order
            .iter()
            .enumerate()
            .map(|(i, id)| (*id, i as u32))
            .collect();
        let mut archive = Vec::new();
        let mut chunks = Vec::new();
        for id in &order {
            let stored = compress_chunk(&data[id], 3).unwrap();
            chunks.push(ChunkRecord {
                id: *id,
                size: data[id].len() as u32,
                stored_size: stored.len() as u32,
                generation: self.seen[id],
            });
            archive.extend_from_slice(&stored);
        }
        let entries = items
            .iter()
            .zip(&file_chunks)
            .map(|((path, item), ids)| Entry {
                path: path.to_string(),
                kind: match item {
                    Item::Dir(mode) => EntryKind::Dir { mode: *mode },
                    Item::Link(t) => EntryKind::Symlink {
                        target: t.to_string(),
                    },
                    Item::File(mode, content) => EntryKind::File {
                        mode: *mode,
                        size: content.len() as u64,
                        hash: Digest::of(content),
                        chunks: ids.iter().map(|id| index[id]).collect(),
                    },
                },
            })
            .collect();
        let mut manifest = Manifest {
            channel: "stable".into(),
            version: version.into(),
            generation: g,
            chunking: ChunkParams::default(),
            archive: ObjectRef::of(&archive),
            chunks,
            entries,
            diffs: vec![],
        };
        let archive_path = object_path(&manifest.archive.hash);
        self.put(&archive_path, &archive);
        self.manifest_diffs.clear();
        if self.diffs {
            self.write_diff(&mut manifest, &data);
        }
        let mbytes = manifest.sign(&[&self.key]).unwrap();
        self.put(&object_path(&Digest::of(&mbytes)), &mbytes);
        if self.diffs {
            self.write_manifest_diff(&mbytes);
        }
        let files: Vec<u8> = items
            .iter()
            .filter_map(|(_, item)| match item {
                Item::File(_, content) => Some(content.as_slice()),
                _ => None,
            })
            .flatten()
            .copied()
            .collect();
        self.prev = Some((manifest, mbytes.clone(), files));
        self.releases.push(ReleaseRef {
            version: version.into(),
            manifest: ObjectRef::of(&mbytes),
        });
        self.sign_head(self.releases.clone());
        self.dir.join(archive_path)
    }

    pub fn sign_head(&mut self, releases: Vec<ReleaseRef>) {
        self.sequence += 1;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let content = HeadContent {
            channel: "stable".into(),
            sequence: self.sequence,
            issued_at: now - 10,
            expires_at: now + 7200,
            min_client_format: CLIENT_FORMAT,
            releases,
            manifest_diffs: self.manifest_diffs.clone(),
            rollout: vec![],
        };
        let bytes =
            ChannelHead::publish(&content, self.sequence, now + 3600, None, &[&self.key]).unwrap();
        self.put(&head_path("stable"), &bytes);
        self.heads.push(bytes);
    }
}

pub fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub fn ferry(args: &[&str]) -> anyhow::Result<()> {
    let mut argv = vec!["ferry"];
    argv.extend_from_slice(args);
    ferry_client::run(Cli::try_parse_from(argv)?)
}

pub fn release(app: &[u8], readme: &str) -> Vec<(&'static str, Item)> {
    vec![
        ("README", Item::File(0o644, readme.as_bytes().to_vec())),
        ("app", Item::Link("bin/app")),
        ("bin", Item::Dir(0o755)),
        ("bin/app", Item::File(0o755, app.to_vec())),
        ("data", Item::Dir(0o555)),
        ("data/empty", Item::File(0o444, Vec::new())),
    ]
}

pub fn state(root: &Path) -> serde_json::Value {
    serde_json::from_slice(&fs::read(root.join(".ferry/state.json")).unwrap()).unwrap()
}

pub fn history(root: &Path) -> Vec<serde_json::Value> {
    fs::read_to_string(root.join(".ferry/history.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

//! Shared helpers: deterministic data, source trees, reading a repository back.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use ferry_format::envelope::TrustedKeys;
use ferry_format::head::ChannelHead;
use ferry_format::keys::SecretKey;
use ferry_format::layout::{head_path, object_path};
use ferry_format::manifest::Manifest;
use ferry_format::verified::{verify_manifest, verify_own_head};
use ferry_server::publish::{PublishOptions, PublishReport, publish};

/// Deterministic pseudo-random bytes (xorshift), incompressible enough to chunk.
pub fn noise(seed: u64, n: usize) -> Vec<u8> {
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

pub fn key() -> SecretKey {
    SecretKey::from_seed([7; 32])
}

/// A tree with files, a subdirectory, an empty file and a symlink.
pub fn make_tree(root: &Path) {
    fs::create_dir_all(root.join("bin")).unwrap();
    fs::create_dir_all(root.join("share/doc")).unwrap();
    fs::write(root.join("bin/app"), noise(1, 600_000)).unwrap();
    fs::set_permissions(root.join("bin/app"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(root.join("share/doc/README"), b"hello ferry\n".repeat(100)).unwrap();
    fs::write(root.join("share/empty"), b"").unwrap();
    symlink("bin/app", root.join("app")).unwrap();
}

pub fn publish_at(repo: &Path, source: &Path, channel: &str, version: &str) -> PublishReport {
    try_publish(repo, source, channel, version, &key(), 10).unwrap()
}

pub fn publish_depth(
    repo: &Path,
    source: &Path,
    channel: &str,
    version: &str,
    diff_depth: usize,
) -> PublishReport {
    try_publish_depth(repo, source, channel, version, &key(), 10, diff_depth).unwrap()
}

pub fn try_publish(
    repo: &Path,
    source: &Path,
    channel: &str,
    version: &str,
    key: &SecretKey,
    retain: usize,
) -> ferry_server::error::Result<PublishReport> {
    try_publish_depth(repo, source, channel, version, key, retain, 3)
}

pub fn try_publish_depth(
    repo: &Path,
    source: &Path,
    channel: &str,
    version: &str,
    key: &SecretKey,
    retain: usize,
    diff_depth: usize,
) -> ferry_server::error::Result<PublishReport> {
    try_publish_fresh(
        repo, source, channel, version, key, retain, diff_depth, None,
    )
}

/// [`try_publish_depth`] with the diff from nothing at `fresh_level` (FORMAT.md §3.9;
/// `None`: none, as the other server tests publish).
#[allow(clippy::too_many_arguments)]
pub fn try_publish_fresh(
    repo: &Path,
    source: &Path,
    channel: &str,
    version: &str,
    key: &SecretKey,
    retain: usize,
    diff_depth: usize,
    fresh_level: Option<i32>,
) -> ferry_server::error::Result<PublishReport> {
    publish(&PublishOptions {
        repo: repo.to_path_buf(),
        key,
        extra_keys: &[],
        channel: channel.into(),
        version: version.into(),
        expires_in: std::time::Duration::from_secs(3600),
        content_expires_in: std::time::Duration::from_secs(7200),
        rollout: 100,
        requires: Default::default(),
        rollout_labels: Default::default(),
        retain,
        zstd_level: 3,
        source: source.to_path_buf(),
        diff_bases: ferry_server::publish::bases::DiffBases::depth(diff_depth).unwrap(),
        fresh_level,
        progress: Default::default(),
    })
}

pub fn read_head(repo: &Path, channel: &str) -> ChannelHead {
    let bytes = fs::read(repo.join(head_path(channel))).unwrap();
    (*verify_own_head(&bytes, &TrustedKeys::single(key().public())).unwrap()).clone()
}

/// The verified manifest of `version` in `channel`'s head.
pub fn read_manifest(repo: &Path, channel: &str, version: &str) -> Manifest {
    let head = read_head(repo, channel);
    let r = head
        .releases()
        .iter()
        .find(|r| r.version == version)
        .unwrap()
        .clone();
    let bytes = fs::read(repo.join(object_path(&r.manifest.hash))).unwrap();
    let trusted = TrustedKeys::single(key().public());
    (*verify_manifest(&bytes, &r, channel, &trusted).unwrap()).clone()
}

/// Every file under `root`, recursively (no symlinks in repositories).
pub fn files_under(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

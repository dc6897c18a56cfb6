//! `ferry-server publish`: a source tree becomes a signed release of a channel.
//!
//! The steps, in the order their effects reach the repository:
//!
//! 1. Take the channel's lock in the repository (a concurrent `publish` or
//!    `refresh-head` of the channel waits for it), then read and verify the channel's
//!    current head and current manifest with the publisher's key ([`previous`]); the
//!    new version must sort after the current one.
//! 2. Walk the source ([`walk`]), chunk every file, split the chunks into carried and
//!    new ([`table`]).
//! 3. Write the archive ([`archive`]), then a diff object from each of the releases
//!    `--diff-bases` names by distance ([`bases`], [`diff`]), then the signed manifest
//!    listing those diffs,
//!    then a manifest diff from each of the same releases, and the diff from nothing
//!    that fresh installs take ([`fresh`]), as immutable objects.
//! 4. Sign and atomically replace the channel head, last: a reader can never see a
//!    head that names an object not yet written.
//!
//! A crash at any point leaves the previous head in force and at worst some
//! unreferenced objects or `.tmp-` files.
//!
//! [`remote`] publishes to a server instead of a local folder: the same steps on a
//! staging repository mirrored from the server, then an upload in the same order.

pub mod archive;
pub mod bases;
pub mod diff;
pub mod fresh;
pub mod progress;
pub mod remote;
pub mod table;
pub mod walk;
pub mod x86;

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ferry_format::chunking::{ChunkParams, FileChunker, FileDigest};
use ferry_format::envelope::{CLIENT_FORMAT, ObjectKind, TrustedKeys};
use ferry_format::head::{
    ChannelHead, HeadContent, ReleaseRef, ReleaseRequirements, ReleaseRules, Rollout, RolloutLabels,
};
use ferry_format::id::{Digest, ObjectRef};
use ferry_format::keys::SecretKey;
use ferry_format::manifest::{Entry, EntryKind, MAX_DIFFS, Manifest};
use ferry_format::requirements::Requirements;
use ferry_format::verified::verify_pinned_manifest;
use ferry_format::version::{Version, check_channel};
use serde::Serialize;

use crate::error::{Error, Result, io_err};
use crate::fsutil;
use crate::repo::Repo;
use table::{ChunkRef, TableBuilder};
use walk::SourceKind;

/// Default lifetime of a head: clients refuse it afterwards, so a publisher must
/// re-publish (or refresh) at least this often.
pub const DEFAULT_EXPIRES_IN: Duration = Duration::from_secs(7 * 86_400);
/// Default lifetime of the publisher-signed content of a head: an online key may keep
/// the head fresh until then, never longer.
pub const DEFAULT_CONTENT_EXPIRES_IN: Duration = Duration::from_secs(90 * 86_400);
/// Default number of releases a head keeps listing (rollback targets): the current one
/// and the ten before it, so that an agent up to ten releases behind still holds a
/// listed release, which `serve --diffs-on-demand` makes a diff from.
pub const DEFAULT_RETAIN: usize = 11;
/// Releases before a diff's base whose chunks an agent on that base may still hold
/// (`ferry init --keep` defaults to 3 installed releases).
pub(crate) const HELD_RELEASES: usize = 3;
/// Manifest diffs a head may list (FORMAT.md §5).
const MAX_MANIFEST_DIFFS: usize = 16;
/// Default zstd level: publishing happens once, downloads many times.
pub const DEFAULT_ZSTD_LEVEL: i32 = 19;

/// What to publish, where.
pub struct PublishOptions<'a> {
    pub repo: PathBuf,
    pub key: &'a SecretKey,
    /// More signing keys, for key lists whose threshold is above one.
    pub extra_keys: &'a [SecretKey],
    pub channel: String,
    pub version: String,
    pub expires_in: Duration,
    /// Lifetime of the publisher-signed content (at least `expires_in`).
    pub content_expires_in: Duration,
    /// Share of agents (0-100) the new release is offered to.
    pub rollout: u8,
    /// What the new release requires of agents (FORMAT.md §5.2); empty: nothing.
    pub requires: Requirements,
    /// Labels an agent must have to be offered the new release (FORMAT.md §5.4);
    /// empty: every agent.
    pub rollout_labels: Requirements,
    pub retain: usize,
    pub zstd_level: i32,
    /// A regular file or a directory.
    pub source: PathBuf,
    /// Which earlier releases, by distance, get a diff object to the new one
    /// ([`bases::DiffBases`]; default `1,2,3,5,8,10`).
    pub diff_bases: bases::DiffBases,
    /// zstd level of the diff from nothing fresh installs take (FORMAT.md §3.9;
    /// [`fresh::DEFAULT_FRESH_LEVEL`]), or `None` for none: fresh installs then fetch
    /// the archive.
    pub fresh_level: Option<i32>,
    /// Where the steps report how far they are ([`progress::Progress::default`]:
    /// nowhere).
    pub progress: progress::Progress,
}

/// What a publish did. Serialises to the `--json` output.
#[derive(Clone, Debug, Serialize)]
pub struct PublishReport {
    pub channel: String,
    pub version: String,
    pub sequence: u64,
    pub manifest: String,
    pub manifest_size: u64,
    pub archive: String,
    pub archive_size: u64,
    pub chunks_new: usize,
    pub chunks_carried: usize,
    pub bytes_total: u64,
    /// Diff objects written, newest base first.
    pub diffs: Vec<diff::DiffSummary>,
    /// Manifest diffs the head lists (the one from nothing included).
    pub manifest_diffs: usize,
    /// The diff from nothing, when one was written.
    pub fresh: Option<fresh::FreshSummary>,
    /// The new release's requirements as `key=value` (FORMAT.md §5.2).
    pub requires: Vec<String>,
    /// The labels the new release is offered to as `key=value` (FORMAT.md §5.4).
    pub rollout_labels: Vec<String>,
    #[serde(skip)]
    pub manifest_diff_objects: Vec<ferry_format::id::ObjectRef>,
    #[serde(skip)]
    pub files: usize,
    #[serde(skip)]
    pub generation: u64,
    #[serde(skip)]
    pub elapsed: Duration,
}

/// The channel as it is before this publish.
pub struct Previous {
    pub head: ChannelHead,
    pub manifest: Manifest,
}

/// Step 1: reads the channel's current head and manifest, verified with `key`.
pub fn previous(repo: &Repo, channel: &str, key: &SecretKey) -> Result<Option<Previous>> {
    let Some(bytes) = repo.read_head(channel)? else {
        return Ok(None);
    };
    let head = crate::trust::verify_publisher_head(repo, channel, &bytes, key)?;
    if head.channel() != channel {
        return Err(repo.broken(format!(
            "the head at {} is for channel {:?}",
            repo.head_file(channel).display(),
            head.channel()
        )));
    }
    let current = head.current().clone();
    let manifest_bytes = repo.read_object(&current.manifest, "manifest")?;
    // The head was just verified and pins this manifest by hash; after a key rotation
    // the manifest may carry a signature by a key that has since been replaced.
    let manifest =
        verify_pinned_manifest(&manifest_bytes, &current, channel).map_err(|source| {
            Error::FormatContext {
                context: format!(
                    "current manifest {} of channel {channel:?} does not verify",
                    current.manifest.hash
                ),
                source,
            }
        })?;
    Ok(Some(Previous {
        head,
        manifest: (*manifest).clone(),
    }))
}

/// Publishes `opts.source` as release `opts.version` of `opts.channel`.
pub fn publish(opts: &PublishOptions<'_>) -> Result<PublishReport> {
    let started = Instant::now();
    check_channel(&opts.channel)?;
    let version = Version::parse(&opts.version)?;
    if opts.diff_bases.distances().len() > MAX_DIFFS {
        return Err(Error::Unsupported {
            path: opts.repo.clone(),
            reason: format!("at most {MAX_DIFFS} diff bases"),
        });
    }
    check_lifetimes(&opts.repo, opts.expires_in, opts.content_expires_in)?;
    if opts.rollout > 100 {
        return Err(Error::Unsupported {
            path: opts.repo.clone(),
            reason: format!("--rollout {} is above 100%", opts.rollout),
        });
    }
    if opts.retain == 0 {
        return Err(Error::Unsupported {
            path: opts.repo.clone(),
            reason: "--retain must keep at least the new release".into(),
        });
    }
    let repo = Repo::new(&opts.repo);
    repo.create()?;
    let _lock = repo.lock_channel(&opts.channel)?;

    let prev = previous(&repo, &opts.channel, opts.key)?;
    if let Some(p) = &prev {
        let current = &p.head.current().version;
        // A head only lists versions that parse; validate() checked them.
        if Version::parse(current).is_ok_and(|c| version <= c) {
            return Err(Error::VersionNotGreater {
                channel: opts.channel.clone(),
                new: opts.version.clone(),
                current: current.clone(),
            });
        }
    }
    let prev_manifest = prev.as_ref().map(|p| &p.manifest);
    let generation = prev_manifest.map_or(0, |m| m.generation) + 1;

    // Step 2: walk and chunk.
    let sources = walk::walk(&opts.source)?;
    let progress = &opts.progress;
    let (file_count, file_bytes) = sources.iter().fold((0, 0), |(n, b), s| match s.kind {
        SourceKind::File { size, .. } => (n + 1, b + size),
        _ => (n, b),
    });
    progress.chunking(file_count, file_bytes);
    let params = ChunkParams::default();
    let mut builder = TableBuilder::new(
        prev_manifest,
        opts.zstd_level,
        repo.object_temp()?,
        progress.clone(),
    )?;
    let mut pending: Vec<(String, Pending)> = Vec::with_capacity(sources.len());
    let mut files = 0;
    for s in sources {
        let kind = match s.kind {
            SourceKind::Dir { mode } => Pending::Dir { mode },
            SourceKind::Symlink { target } => Pending::Symlink { target },
            SourceKind::File { mode, .. } => {
                files += 1;
                let mut chunker = FileChunker::new(fsutil::open(&s.abs)?, params)?;
                let mut chunks = Vec::new();
                while let Some(c) = chunker.next_chunk().map_err(io_err("read", &s.abs))? {
                    chunks.push(builder.add(c.id, c.data)?);
                }
                builder.file_read();
                let FileDigest { size, hash } = chunker.finish();
                Pending::File {
                    mode,
                    size,
                    hash,
                    chunks,
                }
            }
        };
        pending.push((s.rel, kind));
    }
    let mut table = builder.finish()?;

    // The new head names the repository's newest key list, and everything is signed by
    // all given keys; refuse now if they do not meet that list's threshold.
    let signers: Vec<&SecretKey> = std::iter::once(opts.key).chain(opts.extra_keys).collect();
    let key_list = crate::trust::latest_key_list(&repo)?;
    let trust = match &key_list {
        Some((_, root, _)) => root.publishers(),
        None => TrustedKeys::single(opts.key.public()),
    };
    crate::trust::check_signers(&trust, &signers, "publish --key")?;

    // Step 3: objects. The manifest is assembled first (the archive's name is a
    // fixed-size field, filled in once the archive is written) so that a release no
    // agent could read is refused before any object is stored.
    let entries = pending
        .into_iter()
        .map(|(path, kind)| Entry {
            path,
            kind: match kind {
                Pending::Dir { mode } => EntryKind::Dir { mode },
                Pending::Symlink { target } => EntryKind::Symlink { target },
                Pending::File {
                    mode,
                    size,
                    hash,
                    chunks,
                } => EntryKind::File {
                    mode,
                    size,
                    hash,
                    chunks: chunks.into_iter().map(|c| table.index(c)).collect(),
                },
            },
        })
        .collect();
    let mut manifest = Manifest {
        channel: opts.channel.clone(),
        version: opts.version.clone(),
        generation,
        chunking: params,
        archive: ObjectRef {
            hash: Digest([0; 32]),
            size: 0,
        },
        chunks: std::mem::take(&mut table.records),
        entries,
        diffs: vec![],
    };
    readable(&manifest, signers.len(), files)?;
    progress.archive();
    let chunks_carried = table.carried.len();
    let archive = archive::write_archive(&repo, prev_manifest, table)?;
    crash_point!("server::publish::archive_written");
    manifest.archive = archive;
    // Diffs need the chunk table (final now) and go into the signed manifest.
    // The releases at the `diff_bases` distances are diff bases; the few after each
    // only tell which chunks an agent on a base may still hold (skeleton manifest
    // diffs keep the ids of those chunks).
    let (bases, earlier): (Vec<_>, Vec<_>) = match &prev {
        Some(p) if !opts.diff_bases.is_empty() => {
            let listed = p.head.releases();
            let at = |d: &usize| listed.len().checked_sub(*d).map(|i| &listed[i]);
            let base_versions: Vec<&str> = opts
                .diff_bases
                .distances()
                .iter()
                .filter_map(at)
                .map(|r| r.version.as_str())
                .collect();
            let read = opts.diff_bases.with_held(HELD_RELEASES);
            diff::load_bases(&repo, &p.head, &read)
                .into_iter()
                .partition(|b| base_versions.contains(&b.version.as_str()))
        }
        _ => (Vec::new(), Vec::new()),
    };
    let (diff_refs, diffs) = diff::write_diffs(&repo, &manifest, &bases, progress)?;
    manifest.diffs = diff_refs;
    readable(&manifest, signers.len(), files)?;
    let manifest_bytes = manifest.sign(&signers)?;
    let manifest_ref = repo.write_object(&manifest_bytes)?;
    crash_point!("server::publish::manifest_written");
    let manifest_diffs =
        diff::write_manifest_diffs(&repo, &manifest_bytes, &bases, &earlier, &manifest.diffs)?;
    drop(bases);
    drop(earlier);
    let mut manifest_diffs = manifest_diffs;
    let fresh = match opts.fresh_level {
        // The head lists at most 16 manifest diffs; the bases' come first.
        Some(level) if manifest_diffs.len() < MAX_MANIFEST_DIFFS => {
            progress.fresh();
            let threads = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
            fresh::write_from_nothing(&repo, &manifest, &manifest_bytes, level, threads)?
        }
        _ => None,
    };
    if let Some(f) = &fresh {
        // NOTHING is all zeros: first in the list's order by base manifest.
        manifest_diffs.insert(0, f.entry.clone());
    }
    let manifest_diff_objects: Vec<_> = manifest_diffs.iter().map(|d| d.object).collect();

    // Step 4: the head, last.
    let now = unix_now()?;
    let mut releases = prev
        .as_ref()
        .map(|p| p.head.releases().to_vec())
        .unwrap_or_default();
    releases.push(ReleaseRef {
        version: opts.version.clone(),
        manifest: manifest_ref,
    });
    let keep_from = releases.len().saturating_sub(opts.retain);
    releases.drain(..keep_from);
    // Older releases keep the rollout in force (a pause by the online role becomes
    // the publisher's); the new one gets --rollout.
    let mut rollout: Vec<Rollout> = prev
        .as_ref()
        .map(|p| p.head.effective_rollout())
        .unwrap_or_default()
        .into_iter()
        .filter(|r| releases.iter().any(|rel| rel.version == r.version))
        .collect();
    if opts.rollout < 100 {
        rollout.push(Rollout {
            version: opts.version.clone(),
            percent: opts.rollout,
        });
    }
    // Older releases keep their requirements, revocations and targeting while they
    // are listed.
    let mut rules: ReleaseRules = prev
        .as_ref()
        .map(|p| p.head.rules().clone())
        .unwrap_or_default();
    rules.retain_listed(&releases);
    if !opts.requires.is_empty() {
        rules.requirements.push(ReleaseRequirements {
            version: opts.version.clone(),
            requirements: opts.requires.clone(),
        });
    }
    if !opts.rollout_labels.is_empty() {
        rules.rollout_labels.push(RolloutLabels {
            version: opts.version.clone(),
            labels: opts.rollout_labels.clone(),
        });
    }
    let content = HeadContent {
        channel: opts.channel.clone(),
        sequence: prev.as_ref().map_or(0, |p| p.head.content.sequence) + 1,
        issued_at: now,
        expires_at: now.saturating_add(opts.content_expires_in.as_secs()),
        min_client_format: CLIENT_FORMAT,
        releases,
        manifest_diffs,
        rollout,
    };
    let sequence = prev.as_ref().map_or(0, |p| p.head.sequence) + 1;
    let head_bytes = ChannelHead::publish_with(
        &content,
        &rules,
        sequence,
        now.saturating_add(opts.expires_in.as_secs()),
        key_list.map(|(r, _, _)| r),
        &signers,
    )?;
    crash_point!("server::publish::head_signed");
    head_readable(&content, &head_bytes, &opts.version)?;
    repo.write_head(&opts.channel, &head_bytes)?;

    Ok(PublishReport {
        channel: opts.channel.clone(),
        version: opts.version.clone(),
        sequence,
        manifest: manifest_ref.hash.to_hex(),
        manifest_size: manifest_ref.size,
        archive: archive.hash.to_hex(),
        archive_size: archive.size,
        chunks_new: manifest.chunks.len() - chunks_carried,
        chunks_carried,
        bytes_total: manifest.total_file_bytes(),
        diffs,
        manifest_diffs: manifest_diff_objects.len(),
        fresh,
        requires: opts.requires.iter().map(|r| r.to_string()).collect(),
        rollout_labels: opts.rollout_labels.iter().map(|r| r.to_string()).collect(),
        manifest_diff_objects,
        files,
        generation,
        elapsed: started.elapsed(),
    })
}

/// Refuses a manifest agents would refuse to decode (signed size over
/// [`ObjectKind::max_size`]), naming both sizes.
fn readable(manifest: &Manifest, signatures: usize, files: usize) -> Result<()> {
    let size = manifest.signed_size(signatures);
    ObjectKind::Manifest
        .check_size(size)
        .map_err(|source| Error::FormatContext {
            context: format!(
                "release {} of channel {:?} cannot be published: its manifest ({} entries, \
                 {files} files, {} chunks) would have {size} bytes, and agents read manifests \
                 of at most {} bytes",
                manifest.version,
                manifest.channel,
                manifest.entries.len(),
                manifest.chunks.len(),
                ObjectKind::Manifest.max_size(),
            ),
            source,
        })
}

/// Refuses a signed head agents would refuse to read (over [`ObjectKind::max_size`]),
/// naming both sizes.
fn head_readable(head: &HeadContent, bytes: &[u8], version: &str) -> Result<()> {
    ObjectKind::ChannelHead
        .check_size(bytes.len() as u64)
        .map_err(|source| Error::FormatContext {
            context: format!(
                "release {version} of channel {:?} cannot be published: its channel head \
                 ({} releases, {} manifest diffs) would have {} bytes, and agents read \
                 heads of at most {} bytes; publish with a smaller --retain",
                head.channel,
                head.releases.len(),
                head.manifest_diffs.len(),
                bytes.len(),
                ObjectKind::ChannelHead.max_size(),
            ),
            source,
        })
}

/// Unix seconds now.
pub fn unix_now() -> Result<u64> {
    Ok(SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| {
            io_err("read", std::path::Path::new("the system clock"))(std::io::Error::other(
                "clock is before 1970",
            ))
        })?
        .as_secs())
}

/// A head cannot outlive the publisher content it carries.
pub fn check_lifetimes(repo: &std::path::Path, head: Duration, content: Duration) -> Result<()> {
    if head > content {
        return Err(Error::Unsupported {
            path: repo.to_path_buf(),
            reason: format!(
                "--expires-in {}s is longer than --content-expires-in {}s: a head cannot outlive the publisher content it carries",
                head.as_secs(),
                content.as_secs()
            ),
        });
    }
    Ok(())
}

/// An entry whose chunk indexes are not final yet.
enum Pending {
    Dir {
        mode: u32,
    },
    File {
        mode: u32,
        size: u64,
        hash: Digest,
        chunks: Vec<ChunkRef>,
    },
    Symlink {
        target: String,
    },
}

impl PublishReport {
    /// The human summary printed without `--json`.
    pub fn summary(&self) -> String {
        let diffs = if self.diffs.is_empty() {
            "none".to_string()
        } else {
            self.diffs
                .iter()
                .map(|d| format!("from {} ({} bytes, {:.2}s)", d.base, d.size, d.seconds))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "published {channel} {version} (sequence {seq}, generation {generation})\n\
             files:    {files}, {bytes} bytes\n\
             chunks:   {new} new, {carried} carried\n\
             archive:  {archive} ({archive_size} bytes)\n\
             manifest: {manifest} ({manifest_size} bytes)\n\
             diffs:    {diffs}\n\
             manifest diffs: {manifest_diffs}\n\
             fresh installs: {fresh}\n\
             {requires}\
             time:     {secs:.2}s\n",
            requires = if self.requires.is_empty() {
                String::new()
            } else {
                format!("requires: {}\n", self.requires.join(" "))
            },
            channel = self.channel,
            version = self.version,
            seq = self.sequence,
            generation = self.generation,
            files = self.files,
            bytes = self.bytes_total,
            new = self.chunks_new,
            carried = self.chunks_carried,
            archive = self.archive,
            archive_size = self.archive_size,
            manifest = self.manifest,
            manifest_size = self.manifest_size,
            manifest_diffs = self.manifest_diffs,
            fresh = match &self.fresh {
                Some(f) => format!(
                    "diff from nothing ({} bytes + manifest diff {} bytes, {:.2}s)",
                    f.size, f.manifest_diff_size, f.seconds
                ),
                None => "the archive".to_string(),
            },
            secs = self.elapsed.as_secs_f64(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_format::head::MAX_RELEASES;

    /// Heads are bounded by their release count today (at most 1,024 short entries,
    /// far below 1 MiB), so no valid head reaches the limit; the check still guards
    /// the bytes against future fields, and must name both sizes.
    #[test]
    fn a_head_over_the_agents_limit_is_refused() {
        let key = SecretKey::from_seed([1; 32]);
        let head = HeadContent {
            channel: "stable".into(),
            sequence: 1,
            issued_at: 1_700_000_000,
            expires_at: 1_700_604_800,
            min_client_format: CLIENT_FORMAT,
            releases: (1..=MAX_RELEASES)
                .map(|k| ReleaseRef {
                    version: format!("{k}.0.0-{}", "r".repeat(50)),
                    manifest: ObjectRef {
                        hash: Digest([7; 32]),
                        size: 1000,
                    },
                })
                .collect(),
            manifest_diffs: vec![],
            rollout: vec![],
        };
        let largest = ChannelHead::publish(&head, 1, 1_700_604_800, None, &[&key]).unwrap();
        head_readable(&head, &largest, "1024.0.0").unwrap();

        let limit = ObjectKind::ChannelHead.max_size();
        let over = vec![0; limit as usize + 1];
        let err = head_readable(&head, &over, "1024.0.0")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("would have {} bytes", limit + 1))
                && err.contains(&format!("at most {limit} bytes"))
                && err.contains("1024 releases"),
            "{err}"
        );
    }
}

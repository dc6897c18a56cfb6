//! The connected repository: fetching and verifying the channel head (following the
//! key list rotations it names, answering an unchanged head from the stored copy), the
//! manifest, a diff object and archive ranges.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use ferry_format::delta::DiffRef;
use ferry_format::envelope::{ObjectKind, TrustedKeys};
use ferry_format::head::claimed_key_list;
use ferry_format::head::{ChannelHead, ReleaseRef};
use ferry_format::keylist::{TrustRoot, check_ref};
use ferry_format::layout::{head_path, key_list_path, object_path};
use ferry_format::manifest::Manifest;
use ferry_format::plan::FetchRange;
use ferry_format::verified::{HeadPolicy, RolloutSeen, Verified, verify_head, verify_manifest};

use super::super::report::{self};
use super::super::root::Root;
use crate::fetch::ranges::range_file;
use crate::fetch::{self, Conditional, Counters, FetchError, Transport};
use crate::fsutil;
use crate::install::config::Config;
use crate::install::state::Vouched;

/// A key list accepted while following a rotation: its version and exact bytes.
type AcceptedKeyList = (u64, Vec<u8>);

/// Most key list versions one update follows; a longer chain is more likely an attack
/// than an agent that slept through a hundred rotations.
pub(crate) const MAX_KEY_LIST_STEPS: u64 = 100;

/// A connected repository plus the runtime its transport runs on. Everything else
/// in ferry is synchronous; only fetching is async.
pub struct Remote {
    pub(super) rt: tokio::runtime::Runtime,
    pub(super) transport: Box<dyn Transport>,
    pub(super) counters: Arc<Counters>,
}

impl Remote {
    pub fn connect(config: &Config) -> Result<Remote> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        let transport = {
            let _guard = rt.enter();
            fetch::connect(config.server(), &config.http_options())?
        };
        let counters = transport.counters();
        Ok(Remote {
            rt,
            transport,
            counters,
        })
    }

    /// (HTTP requests made, body bytes received) so far.
    pub fn counts(&self) -> (u64, u64) {
        (self.counters.requests(), self.counters.bytes())
    }

    pub(super) fn get_all(&self, path: &str, max_len: u64, what: &'static str) -> Result<Vec<u8>> {
        let t = &*self.transport;
        self.rt
            .block_on(async { fetch::read_all(t.get(path, None, max_len, what).await?).await })
            .with_context(|| format!("fetching {what} from {}", t.url(path)))
    }

    /// Fetches and verifies the channel head (following key list rotations it names),
    /// then persists its sequence and any new key list before anything else happens.
    /// Returns the head and the keys that must sign its manifests.
    pub fn fetch_head(&self, root: &mut Root) -> Result<(Verified<ChannelHead>, TrustedKeys)> {
        let channel = root.config.channel.clone();
        let path = head_path(&channel);
        let stored = stored_head(root);
        let t = &*self.transport;
        let fetched = self
            .rt
            .block_on(t.get_if_changed(
                &path,
                stored.as_ref().map(|(tag, _)| tag.as_str()),
                ObjectKind::ChannelHead.max_size(),
                "channel head",
            ))
            .with_context(|| format!("fetching channel head from {}", t.url(&path)))?;
        // 304 says only that the bytes did not change: they are verified again below
        // (locally, against the same policy), so an expired head is refused even so.
        let (bytes, etag) = match (fetched, stored) {
            (Conditional::Fetched { bytes, etag }, _) => (bytes, etag),
            (Conditional::Unchanged, Some((_, bytes))) => (bytes, None),
            (Conditional::Unchanged, None) => {
                bail!(
                    "{}: 304 Not Modified to a request without If-None-Match",
                    t.url(&path)
                )
            }
        };
        let (trust, new_lists) = self.follow_key_lists(root, &bytes)?;
        let trusted = trust.publishers();
        let now = report::unix_now();
        // Marks set by keys this trust root no longer accepts are dropped before they
        // are compared (fast-forward recovery); kept only if the head verifies.
        let mut state = root.state.clone();
        let forgotten = state.forget_revoked_marks(&trust);
        let policy = HeadPolicy {
            channel: &channel,
            now,
            max_skew: root.config.max_clock_skew_secs,
            last_sequence: state.last_sequence,
            key_list_version: trust.version(),
            last_content_sequence: state.last_content_sequence,
            rollout_seen: state.rollout_seen.as_ref(),
        };
        let head = verify_head(&bytes, &trust.head_keys(), &policy).with_context(|| {
            format!("verifying channel head from {}", self.transport.url(&path))
        })?;
        for note in forgotten {
            tracing::warn!("{note}");
        }
        root.state = state;
        // The chain is trusted once the head it leads to verifies; keep it from now on.
        if !new_lists.is_empty() {
            fsutil::create_dir_all(&root.layout.keys())?;
            for (version, list) in &new_lists {
                fsutil::write_atomic(&root.layout.key_list(*version), list)?;
            }
        }
        let hash = head.object_hash().to_hex();
        if root.state.last_sequence == Some(head.sequence)
            && root
                .state
                .last_head_hash
                .as_deref()
                .is_some_and(|h| h != hash)
        {
            bail!(
                "channel head sequence {} was already seen with different content: the repository is equivocating (two heads signed with one sequence number)",
                head.sequence
            );
        }
        let signers = head.head_signers().clone();
        let content_hash = signers.content_hash.to_hex();
        if root.state.last_content_sequence == Some(head.content.sequence)
            && root
                .state
                .last_content_hash
                .as_deref()
                .is_some_and(|h| h != content_hash)
        {
            bail!(
                "publisher sequence {} was already seen with different content: the publisher's keys signed two different channel states with one sequence number",
                head.content.sequence
            );
        }
        let hex = |ids: &[ferry_format::keys::KeyId]| ids.iter().map(|k| k.to_hex()).collect();
        root.state.last_sequence = Some(head.sequence);
        root.state.last_head_hash = Some(hash);
        root.state.last_content_sequence = Some(head.content.sequence);
        root.state.last_content_hash = Some(content_hash);
        root.state.rollout_seen = Some(RolloutSeen {
            content_sequence: head.content.sequence,
            rollout: head.effective_rollout(),
        });
        root.state.vouched = Some(Vouched {
            key_list: trust.version(),
            head: hex(head.signed_by()),
            content: hex(&signers.content),
        });
        root.state.last_check = Some(now);
        root.save_state()?;
        if let Some(tag) = etag {
            // After the state: a head file whose hash the state does not record is
            // never used (see `stored_head`).
            fsutil::write_atomic(&root.layout.head(), &bytes)?;
            fsutil::write_atomic(&root.layout.head_etag(), tag.as_bytes())?;
        }
        Ok((head, trusted))
    }

    /// FORMAT.md §6.3: when a head names a newer key list than the trusted one, fetch
    /// every version in between and accept each only if the previous one's root keys
    /// (and its own) signed it. Key lists are fetched only when the head says they
    /// changed. Returns the resulting trust root and the newly accepted lists.
    fn follow_key_lists(
        &self,
        root: &Root,
        head_bytes: &[u8],
    ) -> Result<(TrustRoot, Vec<AcceptedKeyList>)> {
        let mut trust = root.trust()?;
        let Some(claimed) = claimed_key_list(head_bytes).context("reading the channel head")?
        else {
            return Ok((trust, Vec::new()));
        };
        if claimed.version <= trust.version() {
            // Equal: nothing to fetch. Lower: verify_head refuses it with a clear message.
            return Ok((trust, Vec::new()));
        }
        if claimed.version - trust.version() > MAX_KEY_LIST_STEPS {
            bail!(
                "the channel head names key list {}, {} versions past the trusted {}: refusing to walk that far",
                claimed.version,
                claimed.version - trust.version(),
                trust.version()
            );
        }
        let mut accepted = Vec::new();
        for version in trust.version() + 1..=claimed.version {
            let path = key_list_path(version);
            let bytes = self.get_all(&path, ObjectKind::KeyList.max_size(), "key list")?;
            trust = trust.advance(&bytes).with_context(|| {
                format!(
                    "verifying key list {version} from {}",
                    self.transport.url(&path)
                )
            })?;
            accepted.push((version, bytes));
        }
        if let Some((_, last)) = accepted.last() {
            check_ref(&claimed, last).context("the key list the channel head names")?;
        }
        Ok((trust, accepted))
    }

    /// Fetches (at most the signed size) and verifies a release's manifest.
    pub fn fetch_manifest(
        &self,
        release: &ReleaseRef,
        channel: &str,
        trusted: &TrustedKeys,
    ) -> Result<(Vec<u8>, Verified<Manifest>)> {
        let path = object_path(&release.manifest.hash);
        let bytes = self.get_all(&path, release.manifest.size, "manifest")?;
        let manifest = verify_manifest(&bytes, release, channel, trusted).with_context(|| {
            format!(
                "verifying manifest of {} from {}",
                release.version,
                self.transport.url(&path)
            )
        })?;
        Ok((bytes, manifest))
    }

    /// Downloads a whole diff object into `dir`, resumable like archive ranges.
    /// `None` when the repository does not have it (the caller falls back to the
    /// archive); a broken transfer is an error, and its `.part` file is resumed by the
    /// next run rather than thrown away for a larger archive download.
    pub(super) fn download_diff(&self, diff: &DiffRef, dir: &Path) -> Result<Option<PathBuf>> {
        let t = &*self.transport;
        let whole = FetchRange {
            start: 0,
            end: diff.object.size,
            first_chunk: 0,
            last_chunk: 0,
        };
        let path = object_path(&diff.object.hash);
        let fetched = self.rt.block_on(fetch::ranges::download(
            t,
            &diff.object.hash,
            std::slice::from_ref(&whole),
            dir,
            "diff object",
        ));
        match fetched {
            Ok(()) => Ok(Some(range_file(dir, &diff.object.hash, &whole))),
            Err(e @ (FetchError::NotFound { .. } | FetchError::Status { status: 404, .. })) => {
                tracing::warn!("{e}");
                Ok(None)
            }
            Err(e) => Err(e).with_context(|| format!("downloading diff object {}", t.url(&path))),
        }
    }

    pub(super) fn download(
        &self,
        manifest: &Manifest,
        ranges: &[FetchRange],
        dir: &Path,
    ) -> Result<()> {
        let t = &*self.transport;
        let archive = manifest.archive.hash;
        self.rt
            .block_on(fetch::ranges::download(
                t,
                &archive,
                ranges,
                dir,
                "archive range",
            ))
            .with_context(|| {
                format!(
                    "downloading archive {}",
                    t.url(&object_path(&manifest.archive.hash))
                )
            })
    }
}

/// The entity tag and bytes of the last verified head, if both are stored and the
/// bytes are the head the state last accepted (anything else is ignored: the head is
/// then fetched whole).
fn stored_head(root: &Root) -> Option<(String, Vec<u8>)> {
    let tag = std::fs::read_to_string(root.layout.head_etag()).ok()?;
    let bytes = std::fs::read(root.layout.head()).ok()?;
    let hash = ferry_format::id::Digest::of(&bytes).to_hex();
    let recorded = root.state.last_head_hash.as_deref()?;
    (recorded == hash && tag.starts_with('"')).then_some((tag, bytes))
}

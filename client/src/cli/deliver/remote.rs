//! The connected repository: fetching and verifying the channel head (following the
//! key list rotations it names, answering an unchanged head from the stored copy), the
//! manifest, a diff object and archive ranges.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use ferry_format::delta::DiffRef;
use ferry_format::envelope::{ObjectKind, TrustedKeys};
use ferry_format::head::claimed_key_list;
use ferry_format::head::{ChannelHead, ReleaseRef};
use ferry_format::id::{Digest, ObjectRef};
use ferry_format::keylist::{TrustRoot, check_ref};
use ferry_format::layout::{head_path, key_list_path, object_path};
use ferry_format::manifest::Manifest;
use ferry_format::ondemand::diff_request_path;
use ferry_format::plan::FetchRange;
use ferry_format::verified::{
    HeadPolicy, RolloutSeen, Verified, verify_head, verify_manifest, verify_remembered_head,
};
use futures_util::StreamExt;

use super::super::exit::{self, Class};
use super::super::report::{self};
use super::super::root::Root;
use crate::apply::ApplyError;
use crate::apply::build::Downloaded;
use crate::apply::diff::verify_object;
use crate::fetch::mirrors::{Failed, Fault, Mirrors};
use crate::fetch::ranges::range_file;
use crate::fetch::retry::Policy;
use crate::fetch::{self, Conditional, Counters, FetchError, Transport};
use crate::fsutil;
use crate::install::config::Config;
use crate::install::state::{State, Vouched};

/// A key list accepted while following a rotation: its version and exact bytes.
type AcceptedKeyList = (u64, Vec<u8>);

/// Most key list versions one update follows; a longer chain is more likely an attack
/// than an agent that slept through a hundred rotations.
pub(crate) const MAX_KEY_LIST_STEPS: u64 = 100;

/// The connected repository (every server of `servers`, [`Mirrors`]) plus the
/// runtime its transports run on. Everything else in ferry is synchronous; only
/// fetching is async.
///
/// Each object is fetched and verified as one step under [`Mirrors::run`], so a
/// server whose data fails verification is failed over like one that is down.
pub struct Remote {
    pub(super) rt: tokio::runtime::Runtime,
    pub(super) transport: Mirrors,
    pub(super) counters: Arc<Counters>,
    retry: Policy,
}

/// A head fetched from one server and verified, not yet persisted.
struct FetchedHead {
    bytes: Vec<u8>,
    etag: Option<String>,
    head: Verified<ChannelHead>,
    trust: TrustRoot,
    new_lists: Vec<AcceptedKeyList>,
    state: State,
    forgotten: Vec<String>,
}

/// A transport error on one server, with what was being fetched.
fn fetch_failed(e: FetchError, what: impl FnOnce() -> String) -> Failed<anyhow::Error> {
    Failed {
        fault: Fault::of(&e),
        error: anyhow::Error::new(e).context(what()),
    }
}

/// Data from one server that failed verification: the next server may have it right.
fn bad_answer(e: anyhow::Error) -> Failed<anyhow::Error> {
    Failed {
        fault: Fault::BadAnswer,
        error: e,
    }
}

impl Remote {
    pub fn connect(config: &Config) -> Result<Remote> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        let retry = config.retry_policy();
        let transport = {
            let _guard = rt.enter();
            Mirrors::connect(
                &config.servers,
                &config.http_options(),
                retry,
                config.give_up_after(),
            )?
        };
        let counters = transport.counters();
        Ok(Remote {
            rt,
            transport,
            counters,
            retry,
        })
    }

    /// (HTTP requests made, body bytes received) so far, over every server.
    pub fn counts(&self) -> (u64, u64) {
        (self.counters.requests(), self.counters.bytes())
    }

    /// A whole content-addressed object, from the first server whose copy matches
    /// `object` (its signed reference): one whose copy does not is failed over.
    pub(super) fn get_object(&self, object: &ObjectRef, what: &'static str) -> Result<Vec<u8>> {
        let path = object_path(&object.hash);
        let path = &path;
        self.rt
            .block_on(self.transport.run(|t| async move {
                let bytes = read_whole(t, path, object.size, what).await?;
                object
                    .check(what, &bytes)
                    .with_context(|| format!("{what} from {}", t.url(path)))
                    .map_err(bad_answer)?;
                Ok(bytes)
            }))
            .map_err(|f| f.error)
    }

    /// Fetches and verifies the channel head (following key list rotations it names),
    /// then persists its sequence and any new key list before anything else happens.
    /// Returns the head and the keys that must sign its manifests. A server whose head
    /// (or key list) does not verify is failed over like one that is down.
    pub fn fetch_head(&self, root: &mut Root) -> Result<(Verified<ChannelHead>, TrustedKeys)> {
        self.head(root, true)
    }

    /// [`Remote::fetch_head`] for a dry run: the same checks, but nothing it learns is
    /// written (state, key lists, the kept head); `root.state` changes in memory only.
    pub fn peek_head(&self, root: &mut Root) -> Result<(Verified<ChannelHead>, TrustedKeys)> {
        self.head(root, false)
    }

    fn head(&self, root: &mut Root, persist: bool) -> Result<(Verified<ChannelHead>, TrustedKeys)> {
        let channel = root.config.channel.clone();
        let path = head_path(&channel);
        let stored = stored_head(root);
        let base = root.trust()?;
        let now = report::unix_now();
        let fetched = {
            let (root, path, stored, base) = (&*root, &path, &stored, &base);
            self.rt
                .block_on(self.transport.run(|t| async move {
                    head_from(t, root, path, stored.as_ref(), base, now).await
                }))
                .map_err(|f| f.error)?
        };
        let FetchedHead {
            bytes,
            etag,
            head,
            trust,
            new_lists,
            state,
            forgotten,
        } = fetched;
        let trusted = trust.publishers();
        for note in forgotten {
            tracing::warn!("{note}");
        }
        root.state = state;
        // The chain is trusted once the head it leads to verifies; keep it from now on.
        if persist && !new_lists.is_empty() {
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
            return exit::refuse(
                Class::Verification,
                format!(
                    "channel head sequence {} was already seen with different content: the repository is equivocating (two heads signed with one sequence number)",
                    head.sequence
                ),
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
            return exit::refuse(
                Class::Verification,
                format!(
                    "publisher sequence {} was already seen with different content: the publisher's keys signed two different channel states with one sequence number",
                    head.content.sequence
                ),
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
        if !persist {
            return Ok((head, trusted));
        }
        root.save_state()?;
        if let Some(tag) = etag {
            // After the state: a head file whose hash the state does not record is
            // never used (see `stored_head`).
            fsutil::write_atomic(&root.layout.head(), &bytes)?;
            fsutil::write_atomic(&root.layout.head_etag(), tag.as_bytes())?;
        }
        Ok((head, trusted))
    }

    /// Fetches (at most the signed size) and verifies a release's manifest, from the
    /// first server whose copy matches its signed reference.
    pub fn fetch_manifest(
        &self,
        release: &ReleaseRef,
        channel: &str,
        trusted: &TrustedKeys,
    ) -> Result<(Vec<u8>, Verified<Manifest>)> {
        let path = object_path(&release.manifest.hash);
        let path = &path;
        self.rt
            .block_on(self.transport.run(|t| async move {
                let bytes = read_whole(t, path, release.manifest.size, "manifest").await?;
                let manifest = verify_manifest(&bytes, release, channel, trusted)
                    .with_context(|| {
                        format!(
                            "verifying manifest of {} from {}",
                            release.version,
                            t.url(path)
                        )
                    })
                    .map_err(bad_answer)?;
                Ok((bytes, manifest))
            }))
            .map_err(|f| f.error)
    }

    /// Downloads a whole diff object into `dir`, resumable like archive ranges, and
    /// checks it against its signed reference (a server whose copy does not match is
    /// failed over). `None` when no server has a good copy (the caller falls back to
    /// the archive); a broken transfer is an error, and its `.part` file is resumed by
    /// the next run rather than thrown away for a larger archive download.
    pub(super) fn download_diff(&self, diff: &DiffRef, dir: &Path) -> Result<Option<PathBuf>> {
        let whole = FetchRange {
            start: 0,
            end: diff.object.size,
            first_chunk: 0,
            last_chunk: 0,
        };
        let path = object_path(&diff.object.hash);
        let (whole, path, policy) = (&whole, &path, self.retry);
        let fetched = self.rt.block_on(self.transport.run(|t| async move {
            let hash = &diff.object.hash;
            fetch::ranges::download(
                t,
                hash,
                std::slice::from_ref(whole),
                dir,
                "diff object",
                policy,
            )
            .await
            .map_err(|e| fetch_failed(e, || format!("downloading diff object {}", t.url(path))))?;
            let file = range_file(dir, hash, whole);
            match verify_object(&file, &diff.object) {
                Ok(()) => Ok(file),
                // The file is gone: the next server's copy is fetched from the start.
                Err(e @ ApplyError::BadObject { .. }) => Err(bad_answer(
                    anyhow::Error::new(e).context(format!("diff object from {}", t.url(path))),
                )),
                Err(e) => Err(Failed {
                    fault: Fault::Local,
                    error: e.into(),
                }),
            }
        }));
        match fetched {
            Ok(file) => Ok(Some(file)),
            Err(f) if f.fault == Fault::BadAnswer && !too_slow(&f.error) => {
                tracing::warn!("no server has a usable copy: {:#}", f.error);
                Ok(None)
            }
            Err(f) => Err(f.error),
        }
    }

    /// Whether the server that sent the head makes diffs on request (FORMAT.md
    /// §3.8): only then does the plan ask it for one.
    pub fn makes_diffs(&self) -> bool {
        self.transport.makes_diffs()
    }

    /// Asks the server for the diff it makes on request from the release whose
    /// manifest is `base` to the one whose manifest is `target` (FORMAT.md §3.8),
    /// waiting at most `wait` for it to be made, and stores it in `dir`: one request,
    /// never more than `cap` bytes read. Returns the file and its size. Any failure
    /// (a refusal, `503` while it is being made, a larger body, a broken transfer) is
    /// an error the caller answers with the archive; the file is then gone.
    pub(super) fn download_made(
        &self,
        base: &Digest,
        target: &Digest,
        cap: u64,
        wait: std::time::Duration,
        dir: &Path,
    ) -> Result<(PathBuf, u64)> {
        let path = diff_request_path(base, target);
        let file = dir.join(format!(
            "made-{}-{}.diff",
            &base.to_hex()[..16],
            &target.to_hex()[..16]
        ));
        fsutil::remove_tree(&file)?;
        let fetched = self.rt.block_on(async {
            let mut body = self
                .transport
                .get_made(&path, cap, wait)
                .await
                .with_context(|| format!("asking {}", self.transport.url(&path)))?;
            let out = fsutil::create_new_file(&file)?;
            let mut w = std::io::BufWriter::with_capacity(1 << 20, out);
            let mut size = 0u64;
            while let Some(piece) = body.next().await {
                let piece =
                    piece.with_context(|| format!("downloading {}", self.transport.url(&path)))?;
                fsutil::ctx("writing", &file, w.write_all(&piece))?;
                size += piece.len() as u64;
            }
            fsutil::ctx("writing", &file, w.flush())?;
            anyhow::Ok(size)
        });
        match fetched {
            Ok(size) => Ok((file, size)),
            Err(e) => {
                let _ = std::fs::remove_file(&file);
                Err(e)
            }
        }
    }

    /// Downloads archive ranges into `dir`. With more than one server, the chunks of
    /// each server's ranges are checked right away, and the ranges holding a chunk
    /// that does not match its id are deleted and fetched from the next server (the
    /// build checks every chunk again either way; with one server there is no one
    /// else to ask, so that check is the only one).
    /// Whether downloaded ranges are final as they arrive: with one server, yes; with
    /// mirrors, a range failing its check is fetched again from the next one after
    /// the download, so the tree must wait for it.
    pub(super) fn ranges_final_as_they_arrive(&self) -> bool {
        self.transport.len() <= 1
    }

    pub(super) fn download(
        &self,
        manifest: &Manifest,
        ranges: &[FetchRange],
        dir: &Path,
    ) -> Result<()> {
        let archive = manifest.archive.hash;
        let path = object_path(&archive);
        let (path, policy, check) = (&path, self.retry, self.transport.len() > 1);
        self.rt
            .block_on(self.transport.run(|t| async move {
                fetch::ranges::download(t, &archive, ranges, dir, "archive range", policy)
                    .await
                    .map_err(|e| {
                        fetch_failed(e, || format!("downloading archive {}", t.url(path)))
                    })?;
                if check {
                    check_ranges(manifest, ranges, dir).map_err(|f| Failed {
                        fault: f.fault,
                        error: f
                            .error
                            .context(format!("archive ranges from {}", t.url(path))),
                    })?;
                }
                Ok(())
            }))
            .map_err(|f| f.error)
    }
}

/// Fetches the channel head from one server and verifies it, following the key list
/// rotations it names on the same server; nothing is persisted.
async fn head_from(
    t: &dyn Transport,
    root: &Root,
    path: &str,
    stored: Option<&(String, Vec<u8>)>,
    base: &TrustRoot,
    now: u64,
) -> Result<FetchedHead, Failed<anyhow::Error>> {
    let fetched = t
        .get_if_changed(
            path,
            stored.map(|(tag, _)| tag.as_str()),
            ObjectKind::ChannelHead.max_size(),
            "channel head",
        )
        .await
        .map_err(|e| fetch_failed(e, || format!("fetching channel head from {}", t.url(path))))?;
    // 304 says only that the bytes did not change: they are verified again below
    // (locally, against the same policy), so an expired head is refused even so.
    let (bytes, etag, unchanged) = match (fetched, stored) {
        (Conditional::Fetched { bytes, etag }, _) => (bytes, etag, false),
        (Conditional::Unchanged, Some((_, bytes))) => (bytes.clone(), None, true),
        (Conditional::Unchanged, None) => {
            return Err(bad_answer(anyhow::anyhow!(
                "{}: 304 Not Modified to a request without If-None-Match",
                t.url(path)
            )));
        }
    };
    let (trust, new_lists) = follow_key_lists(t, base, &bytes).await?;
    // Marks set by keys this trust root no longer accepts are dropped before they
    // are compared (fast-forward recovery); kept only if the head verifies.
    let mut state = root.state.clone();
    let forgotten = state.forget_revoked_marks(&trust);
    let policy = HeadPolicy {
        channel: &root.config.channel,
        now,
        max_skew: root.config.max_clock_skew_secs,
        last_sequence: state.last_sequence,
        key_list_version: trust.version(),
        last_content_sequence: state.last_content_sequence,
        rollout_seen: state.rollout_seen.as_ref(),
    };
    // The kept head's signatures were checked when it was accepted, with the keys
    // trusted now: an idle check re-checks everything but them (expiry included).
    let remembered = state
        .last_head_hash
        .as_deref()
        .and_then(|h| Digest::from_hex(h).ok())
        .filter(|_| {
            unchanged
                && forgotten.is_empty()
                && state
                    .vouched
                    .as_ref()
                    .is_some_and(|v| v.key_list == trust.version())
        });
    let verified = match &remembered {
        Some(hash) => verify_remembered_head(&bytes, hash, &trust.head_keys(), &policy),
        None => verify_head(&bytes, &trust.head_keys(), &policy),
    };
    let head = verified
        .with_context(|| format!("verifying channel head from {}", t.url(path)))
        .map_err(bad_answer)?;
    Ok(FetchedHead {
        bytes,
        etag,
        head,
        trust,
        new_lists,
        state,
        forgotten,
    })
}

/// FORMAT.md §6.3: when a head names a newer key list than the trusted one, fetch
/// every version in between (from the server that sent the head) and accept each only
/// if the previous one's root keys (and its own) signed it. Key lists are fetched only
/// when the head says they changed. Returns the resulting trust root and the newly
/// accepted lists.
async fn follow_key_lists(
    t: &dyn Transport,
    base: &TrustRoot,
    head_bytes: &[u8],
) -> Result<(TrustRoot, Vec<AcceptedKeyList>), Failed<anyhow::Error>> {
    let mut trust = base.clone();
    let Some(claimed) = claimed_key_list(head_bytes)
        .context("reading the channel head")
        .map_err(bad_answer)?
    else {
        return Ok((trust, Vec::new()));
    };
    if claimed.version <= trust.version() {
        // Equal: nothing to fetch. Lower: verify_head refuses it with a clear message.
        return Ok((trust, Vec::new()));
    }
    if claimed.version - trust.version() > MAX_KEY_LIST_STEPS {
        return Err(bad_answer(anyhow::anyhow!(
            "the channel head names key list {}, {} versions past the trusted {}: refusing to walk that far",
            claimed.version,
            claimed.version - trust.version(),
            trust.version()
        )));
    }
    let mut accepted = Vec::new();
    for version in trust.version() + 1..=claimed.version {
        let path = key_list_path(version);
        let bytes = read_whole(t, &path, ObjectKind::KeyList.max_size(), "key list").await?;
        trust = trust
            .advance(&bytes)
            .with_context(|| format!("verifying key list {version} from {}", t.url(&path)))
            .map_err(bad_answer)?;
        accepted.push((version, bytes));
    }
    if let Some((_, last)) = accepted.last() {
        check_ref(&claimed, last)
            .context("the key list the channel head names")
            .map_err(bad_answer)?;
    }
    Ok((trust, accepted))
}

/// A whole object from one server.
async fn read_whole(
    t: &dyn Transport,
    path: &str,
    max_len: u64,
    what: &'static str,
) -> Result<Vec<u8>, Failed<anyhow::Error>> {
    async { fetch::read_all(t.get(path, None, max_len, what).await?).await }
        .await
        .map_err(|e| fetch_failed(e, || format!("fetching {what} from {}", t.url(path))))
}

/// Checks every chunk of the downloaded `ranges` and deletes each range file holding
/// a chunk that does not match its id, so the next server fetches exactly those.
fn check_ranges(
    manifest: &Manifest,
    ranges: &[FetchRange],
    dir: &Path,
) -> Result<(), Failed<anyhow::Error>> {
    let mut bad = 0;
    let mut first = None;
    for r in ranges {
        let one = Downloaded::new(dir, manifest, std::slice::from_ref(r));
        for i in r.first_chunk..r.last_chunk {
            match one.chunk(manifest, i) {
                Ok(_) => {}
                // `chunk` deleted the range file.
                Err(e @ ApplyError::CorruptDownload { .. }) => {
                    bad += 1;
                    first.get_or_insert(e);
                    break;
                }
                Err(e) => {
                    return Err(Failed {
                        fault: Fault::Local,
                        error: e.into(),
                    });
                }
            }
        }
    }
    match first {
        None => Ok(()),
        Some(e) => Err(bad_answer(
            anyhow::Error::new(e).context(format!("{bad} of {} ranges corrupt", ranges.len())),
        )),
    }
}

/// Whether the low-speed limit ended the transfer (which ends the update: see
/// fetch/retry.rs), rather than a missing or damaged object.
fn too_slow(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<FetchError>(),
            Some(FetchError::TooSlow { .. })
        )
    })
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

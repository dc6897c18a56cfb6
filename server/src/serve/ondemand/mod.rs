//! `serve --diffs-on-demand`: diffs for any pair of retained releases, made on first
//! request and kept (FORMAT.md §3.8).
//!
//! An agent holding a release that no listed diff starts from (it was offline for more
//! releases than `publish --diff-depth`) asks `GET /diffs/<base>/<target>`, by the two
//! manifests' names. The server
//!
//! 1. refuses a pair no channel head retains, or whose base or target is larger than
//!    `--diff-max-input` (404, 413: [`pair::check`]);
//! 2. answers from the repository's diff index when the pair was made before: the
//!    diff object (200, immutable, its name as ETag), or 404 when no diff beats the
//!    archive ranges;
//! 3. otherwise joins or starts the pair's job ([`jobs`]: one per pair, at most
//!    `--diff-jobs` running and `--diff-queue` waiting beyond them; past that 503 with
//!    `Retry-After`), and holds the request as long as the agent said it would wait
//!    (`Ferry-Wait`, at most 50 s): the diff if the job ends by then, else 503 with
//!    `Retry-After` while the job goes on for the next request.
//!
//! The job is `publish`'s own diff code (`publish::diff::diff_one`): it reads
//! the base and target from the archives and writes an ordinary content-addressed
//! object, then the index entry. Nothing a client sends reaches a file path: the
//! request path is parsed into two digests (`ferry_format::ondemand`), and only
//! manifests a head names are read. The answer is not signed and need not be: the
//! agent checks every chunk it produces against the signed manifest and reads no more
//! than the archive ranges it replaces.

pub mod jobs;
pub mod pair;

use std::sync::Arc;
use std::time::Duration;

use ferry_format::id::Digest;
use ferry_format::ondemand::{IndexEntry, WAIT_HEADER, parse_wait};
use http::header::{CACHE_CONTROL, RETRY_AFTER};
use http::{HeaderValue, Request, Response, StatusCode};
use prometheus_client::metrics::counter::Counter;

use super::State;
use super::metrics::{Kind, OnDemandResult};
use super::routes::{self, Body};
use crate::repo::Repo;
use jobs::{Jobs, Joined, Waited};
use pair::Checked;

/// `Retry-After` of a 503: about when a job started now has made progress worth
/// asking again for (the agent does not retry by itself; a person or the next check
/// does).
pub const RETRY_AFTER_SECS: u64 = 10;

/// `--diff-jobs`, `--diff-queue`, `--diff-max-input`.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Jobs running at once.
    pub jobs: usize,
    /// Jobs waiting for a running slot, beyond which requests get 503.
    pub queue: usize,
    /// Largest base (its files) or target (the chunks the base lacks), in bytes.
    pub max_input: u64,
}

/// Defaults: one job at a time, 8 waiting, bases and targets up to 256 MiB (a job
/// peaks at about 6 bytes per input byte: `publish` of polars' 111 MB, 666 MiB).
pub const DEFAULT_JOBS: usize = 1;
pub const DEFAULT_QUEUE: usize = 8;
pub const DEFAULT_MAX_INPUT: u64 = 256 << 20;

/// What a job gives every request waiting for it.
type Outcome = Result<IndexEntry, String>;

/// The on-demand diffs of one folder repository.
pub struct OnDemand {
    repo: Repo,
    jobs: Arc<Jobs<(Digest, Digest), Outcome>>,
    max_input: u64,
}

impl OnDemand {
    pub fn new(repo: Repo, opts: Options) -> OnDemand {
        let running = opts.jobs.max(1);
        OnDemand {
            repo,
            jobs: Jobs::new(running, running + opts.queue),
            max_input: opts.max_input,
        }
    }
}

/// Answers `GET /diffs/<base>/<target>`.
pub async fn handle<B>(
    state: &State,
    od: &OnDemand,
    req: &Request<B>,
    (base, target): (Digest, Digest),
    head_only: bool,
) -> (Response<Body>, Kind) {
    let count = |r| state.metrics.on_demand(r);
    let wait = req
        .headers()
        .get(WAIT_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_wait)
        .map_or(Duration::ZERO, Duration::from_secs);
    let checked = {
        let (repo, max) = (od.repo.clone(), od.max_input);
        tokio::task::spawn_blocking(move || pair::check(&repo, &base, &target, max)).await
    };
    let checked = match checked {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            count(OnDemandResult::failed);
            return internal(&format!("{e:#}"), head_only);
        }
        Err(e) => {
            count(OnDemandResult::failed);
            return internal(&e.to_string(), head_only);
        }
    };
    let entry = match checked {
        Checked::Indexed(entry) => Ok(entry),
        Checked::NotRetained(why) => {
            count(OnDemandResult::refused);
            tracing::debug!(%base, %target, "on-demand diff refused: {why}");
            return (
                refusal(
                    StatusCode::NOT_FOUND,
                    "no such pair of retained releases\n",
                    head_only,
                ),
                Kind::other,
            );
        }
        Checked::TooLarge { what, size } => {
            count(OnDemandResult::refused);
            let text = format!(
                "the {what} ({size} bytes) is larger than this server makes diffs for ({} bytes)\n",
                od.max_input
            );
            return (
                refusal(StatusCode::PAYLOAD_TOO_LARGE, text, head_only),
                Kind::other,
            );
        }
        Checked::Makeable(pair) => {
            let repo = od.repo.clone();
            let made = state.metrics.on_demand_counter(OnDemandResult::produced);
            let broke = state.metrics.on_demand_counter(OnDemandResult::failed);
            let work = move || run_job(&repo, &pair, &made, &broke);
            let mut ticket = match od.jobs.join((base, target), work) {
                Joined::Full => {
                    count(OnDemandResult::refused);
                    return (
                        busy("busy making other diffs: ask again later\n", head_only),
                        Kind::other,
                    );
                }
                Joined::Started(t) => {
                    count(OnDemandResult::started);
                    t
                }
                Joined::Joined(t) => t,
            };
            match ticket.wait(wait).await {
                Waited::Done(outcome) => outcome,
                Waited::Pending => {
                    count(OnDemandResult::pending);
                    return (
                        busy("the diff is being made: ask again later\n", head_only),
                        Kind::other,
                    );
                }
                Waited::Lost => Err("the job stopped without a result".into()),
            }
        }
    };
    match entry {
        Ok(IndexEntry::Diff(object)) => {
            match routes::object_response(state, req, &object.hash, head_only).await {
                Ok(r) => {
                    count(OnDemandResult::served);
                    (r, Kind::diff)
                }
                Err(e) => internal(
                    &format!("serving diff object {}: {e}", object.hash),
                    head_only,
                ),
            }
        }
        Ok(IndexEntry::NoDiff) => {
            count(OnDemandResult::refused);
            (
                refusal(
                    StatusCode::NOT_FOUND,
                    "no diff is smaller than the archive ranges it would replace\n",
                    head_only,
                ),
                Kind::other,
            )
        }
        // Counted as failed by the job.
        Err(e) => internal(&e, head_only),
    }
}

/// A job: makes the pair's diff and counts what happened.
fn run_job(repo: &Repo, pair: &pair::Pair, made: &Counter, broke: &Counter) -> Outcome {
    let started = std::time::Instant::now();
    match pair::make(repo, pair) {
        Ok((entry, made_now)) => {
            if let (IndexEntry::Diff(object), true) = (entry, made_now) {
                made.inc();
                tracing::info!(
                    channel = pair.channel,
                    base = pair.base.version,
                    target = pair.target_version,
                    size = object.size,
                    seconds = format!("{:.2}", started.elapsed().as_secs_f64()),
                    "on-demand diff made"
                );
            }
            Ok(entry)
        }
        Err(e) => {
            broke.inc();
            let e = format!("{e:#}");
            tracing::error!(
                channel = pair.channel,
                base = pair.base.version,
                target = pair.target_version,
                "making an on-demand diff failed: {e}"
            );
            Err(e)
        }
    }
}

/// A refusal no cache may keep: the answer changes as releases are published.
fn refusal(status: StatusCode, text: impl Into<bytes::Bytes>, head_only: bool) -> Response<Body> {
    let mut r = routes::text(status, text, head_only);
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// 503 with `Retry-After`.
fn busy(text: &'static str, head_only: bool) -> Response<Body> {
    let mut r = refusal(StatusCode::SERVICE_UNAVAILABLE, text, head_only);
    r.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
    r
}

/// 500, logged.
fn internal(why: &str, head_only: bool) -> (Response<Body>, Kind) {
    tracing::error!("on-demand diff: {why}");
    (
        refusal(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error\n",
            head_only,
        ),
        Kind::other,
    )
}

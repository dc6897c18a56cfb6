//! Failing over between the servers of `servers = [...]`.
//!
//! Every server is a mirror of one repository and none is trusted: whatever a server
//! sends is verified exactly as if it were the only one, and a server whose data fails
//! verification is simply one that failed. [`Mirrors::run`] tries one request (a fetch,
//! or a fetch and its verification) on each server in turn until one succeeds:
//!
//! - **Order.** The server that last worked first, then the others in configured
//!   order. A mirror that is down costs the first request of a run, not every one.
//! - **When to move on.** Each HTTP request is sent at most twice to one server (the
//!   second attempt absorbs a keep-alive connection the server closed just as it was
//!   reused; a `Retry-After` within the bounds is honoured before it), then the next
//!   server is tried at once. Waiting out a dead mirror's full backoff first would
//!   delay an update by tens of seconds when a healthy mirror is one connection away;
//!   going straight on means one dead mirror costs an update two refused connections.
//! - **Why it failed** ([`Fault`]): unreachable (connection refused, reset or timed
//!   out; `408`, `429`, `5xx`), a bad answer (data that fails verification, `404`, a
//!   wrong range, the low-speed limit, a rejected TLS certificate), or a local failure (a write to disk), which
//!   ends the request at once since another server cannot help.
//! - **When all failed.** If any server answered badly, the request fails with that
//!   answer's error after one round: asking the same servers again gets the same bytes.
//!   If every server was unreachable, the round is repeated after an exponential
//!   backoff with full jitter (the retry policy's base and cap), so a fleet that lost
//!   its network does not come back in step and no dead mirror is hammered; after
//!   `give_up_after` of failures (counted from the first failure, so a long download
//!   that breaks off late still gets the whole time) the request fails with
//!   [`FetchError::Unreachable`], naming every server and why it failed. The bound is
//!   `give_up_after` plus the last round, whose attempts are each bounded by the
//!   connect timeout.
//!
//! Each failure is logged with the server's URL and the reason. The request and byte
//! counters are shared by all servers, so a report counts every attempt.

use std::fmt::Display;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;

use super::http::HttpOptions;
use super::retry::{self, Policy};
use super::{Body, Conditional, Counters, FetchError, Transport};

/// How long one-shot commands keep trying when no server is reachable.
pub const DEFAULT_GIVE_UP_AFTER: Duration = Duration::from_secs(30);

/// Attempts of one HTTP request on one server before the next server is tried.
pub const ATTEMPTS_PER_SERVER: u32 = 2;

/// Why a request failed on one server, which decides what happens next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// No usable answer, for a reason that may pass: next server, and when every
    /// server is unreachable, all of them again after a backoff.
    Unreachable,
    /// The server answered with something else than the signed references ask for:
    /// next server, but not this one again for this request.
    BadAnswer,
    /// Not the server's fault: the request ends.
    Local,
}

impl Fault {
    /// The fault a transport error shows.
    pub fn of(e: &FetchError) -> Fault {
        match e {
            FetchError::Request { .. }
            | FetchError::Truncated { .. }
            | FetchError::Unreachable { .. } => Fault::Unreachable,
            FetchError::Status { status, .. } if retry::transient_status(*status) => {
                Fault::Unreachable
            }
            FetchError::Status { .. }
            | FetchError::Refused { .. }
            | FetchError::NotFound { .. }
            | FetchError::TooLarge { .. }
            | FetchError::BadRange { .. }
            | FetchError::TooSlow { .. } => Fault::BadAnswer,
            FetchError::Io { .. } | FetchError::BadOption { .. } | FetchError::BadUrl { .. } => {
                Fault::Local
            }
        }
    }
}

/// A request that failed on one server, and why.
#[derive(Debug)]
pub struct Failed<E> {
    pub fault: Fault,
    pub error: E,
}

impl<E: From<FetchError>> Failed<E> {
    /// A transport error, classified by [`Fault::of`].
    pub fn fetch(e: FetchError) -> Self {
        Failed {
            fault: Fault::of(&e),
            error: e.into(),
        }
    }
}

/// The servers of one root, tried in turn (see the module docs).
pub struct Mirrors {
    servers: Vec<Box<dyn Transport>>,
    preferred: AtomicUsize,
    counters: Arc<Counters>,
    give_up_after: Duration,
    backoff: Policy,
}

impl Mirrors {
    /// Opens a transport per base URL; `retry`'s base and cap pace the backoff, both
    /// within one server and between rounds.
    pub fn connect(
        bases: &[String],
        options: &HttpOptions,
        retry: Policy,
        give_up_after: Duration,
    ) -> Result<Mirrors, FetchError> {
        let counters = Arc::<Counters>::default();
        let per_server = Policy {
            attempts: retry.attempts.min(ATTEMPTS_PER_SERVER),
            budget: retry.budget.min(give_up_after),
            ..retry
        };
        let servers = bases
            .iter()
            .map(|b| super::connect_with(b, options, per_server, counters.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Mirrors::from_transports(
            servers,
            counters,
            retry,
            give_up_after,
        ))
    }

    /// Mirrors over transports that all count into `counters`.
    pub fn from_transports(
        servers: Vec<Box<dyn Transport>>,
        counters: Arc<Counters>,
        backoff: Policy,
        give_up_after: Duration,
    ) -> Mirrors {
        assert!(!servers.is_empty(), "Mirrors needs at least one server");
        Mirrors {
            servers,
            preferred: AtomicUsize::new(0),
            counters,
            give_up_after,
            backoff,
        }
    }

    /// How many servers there are.
    pub fn len(&self) -> usize {
        self.servers.len()
    }

    /// Never: there is at least one server.
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// The URL of `path` on the server the next request starts with, for messages.
    pub fn url(&self, path: &str) -> String {
        self.servers[self.preferred()].url(path)
    }

    /// The server's base URL, as logged.
    pub fn name(&self, index: usize) -> String {
        self.servers[index].url("")
    }

    /// The server the next request starts with.
    pub fn preferred(&self) -> usize {
        self.preferred.load(Ordering::Relaxed)
    }

    /// The order of the next round: the server that last worked, then the others in
    /// configured order.
    fn order(&self) -> Vec<usize> {
        let first = self.preferred();
        std::iter::once(first)
            .chain((0..self.servers.len()).filter(|&i| i != first))
            .collect()
    }

    /// Runs `op` against one server after the other until it succeeds (see the
    /// module docs for the order, the rounds and when it gives up). `op` classifies
    /// its own failures: a transport error with [`Failed::fetch`], data that fails
    /// verification as [`Fault::BadAnswer`].
    pub async fn run<'a, T, E, F, Fut>(&'a self, mut op: F) -> Result<T, Failed<E>>
    where
        E: Display + From<FetchError>,
        F: FnMut(&'a dyn Transport) -> Fut,
        Fut: Future<Output = Result<T, Failed<E>>>,
    {
        let mut first_failure: Option<Instant> = None;
        let mut round = 0u32;
        loop {
            let order = self.order();
            let mut down = Vec::new();
            let mut answered = None;
            for (k, &i) in order.iter().enumerate() {
                let failed = match op(&*self.servers[i]).await {
                    Ok(v) => {
                        self.preferred.store(i, Ordering::Relaxed);
                        return Ok(v);
                    }
                    Err(f) if f.fault == Fault::Local => return Err(f),
                    Err(f) => f,
                };
                first_failure.get_or_insert_with(Instant::now);
                let name = self.name(i);
                let reason = format!("{:#}", failed.error);
                match order.get(k + 1) {
                    Some(&next) => tracing::warn!(
                        "server {name} failed ({reason}); trying {}",
                        self.name(next)
                    ),
                    None if self.servers.len() > 1 => {
                        tracing::warn!("server {name} failed ({reason})")
                    }
                    None => {}
                }
                match failed.fault {
                    Fault::Unreachable => down.push((name, reason)),
                    _ => answered = Some(failed),
                }
            }
            if let Some(failed) = answered {
                return Err(failed);
            }
            round += 1;
            let since = first_failure.map_or(Duration::ZERO, |t| t.elapsed());
            let left = self.give_up_after.saturating_sub(since);
            if left.is_zero() {
                let e = FetchError::Unreachable {
                    servers: down,
                    after_secs: since.as_secs(),
                };
                tracing::warn!("{e}");
                return Err(Failed {
                    fault: Fault::Unreachable,
                    error: e.into(),
                });
            }
            let ceiling = self.backoff.ceiling(round).as_millis() as u64;
            let delay = Duration::from_millis(retry::random() % (ceiling + 1)).min(left);
            tracing::warn!(
                "no server reachable; trying again in {:.1}s (giving up in {:.0}s)",
                delay.as_secs_f64(),
                left.as_secs_f64()
            );
            tokio::time::sleep(delay).await;
        }
    }
}

/// Plain fetches fail over on transport errors; what they fetch is checked by the
/// caller (which uses [`Mirrors::run`] itself to fail over on bad data).
impl Transport for Mirrors {
    fn get<'a>(
        &'a self,
        path: &'a str,
        range: Option<(u64, u64)>,
        max_len: u64,
        what: &'static str,
    ) -> BoxFuture<'a, Result<Body, FetchError>> {
        Box::pin(async move {
            self.run(move |t| async move {
                t.get(path, range, max_len, what)
                    .await
                    .map_err(Failed::fetch)
            })
            .await
            .map_err(|f| f.error)
        })
    }

    fn get_if_changed<'a>(
        &'a self,
        path: &'a str,
        etag: Option<&'a str>,
        max_len: u64,
        what: &'static str,
    ) -> BoxFuture<'a, Result<Conditional, FetchError>> {
        Box::pin(async move {
            self.run(move |t| async move {
                t.get_if_changed(path, etag, max_len, what)
                    .await
                    .map_err(Failed::fetch)
            })
            .await
            .map_err(|f| f.error)
        })
    }

    /// Asked of the server that last worked (the one that sent the head, whose
    /// header said it makes diffs), once: whatever goes wrong, the agent takes the
    /// archive rather than another server.
    fn get_made<'a>(
        &'a self,
        path: &'a str,
        max_len: u64,
        wait: Duration,
    ) -> BoxFuture<'a, Result<Body, FetchError>> {
        self.servers[self.preferred()].get_made(path, max_len, wait)
    }

    fn makes_diffs(&self) -> bool {
        self.servers[self.preferred()].makes_diffs()
    }

    fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }

    fn url(&self, path: &str) -> String {
        Mirrors::url(self, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fetch::file::FileTransport;
    use crate::fetch::http::HttpTransport;
    use crate::fetch::read_all;
    use std::path::Path;
    use std::sync::atomic::AtomicU32;

    const FAST: Policy = Policy {
        attempts: 2,
        base: Duration::from_millis(5),
        max_delay: Duration::from_millis(50),
        budget: Duration::from_secs(1),
    };

    fn rt() -> tokio::runtime::Runtime {
        let _ = rustls::crypto::ring::default_provider().install_default();
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// A loopback URL nothing listens on: a listener bound, then closed.
    fn closed_port() -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        format!("http://127.0.0.1:{port}/repo")
    }

    fn http(url: &str, c: &Arc<Counters>) -> Box<dyn Transport> {
        Box::new(
            HttpTransport::new(url, &HttpOptions::default())
                .unwrap()
                .with_retry(FAST)
                .with_counters(c.clone()),
        )
    }

    /// A repository folder holding `objects/x` = `bytes`.
    fn repo(dir: &Path, name: &str, bytes: &[u8]) -> String {
        let root = dir.join(name);
        std::fs::create_dir_all(root.join("objects")).unwrap();
        std::fs::write(root.join("objects/x"), bytes).unwrap();
        format!("file://{}", root.display())
    }

    fn file(url: &str, c: &Arc<Counters>) -> Box<dyn Transport> {
        Box::new(FileTransport::new(url).unwrap().with_counters(c.clone()))
    }

    async fn get(m: &Mirrors, path: &str) -> Result<Vec<u8>, FetchError> {
        read_all(m.get(path, None, 1 << 20, "object").await?).await
    }

    #[test]
    fn a_server_that_is_down_is_failed_over_and_the_one_that_worked_goes_first() {
        let rt = rt();
        let dir = tempfile::tempdir().unwrap();
        let c = Arc::<Counters>::default();
        let down = closed_port();
        let good = repo(dir.path(), "good", b"object");
        let m = Mirrors::from_transports(
            vec![http(&down, &c), file(&good, &c)],
            c.clone(),
            FAST,
            Duration::from_secs(5),
        );
        assert_eq!(m.url("objects/x"), format!("{down}/objects/x"));
        assert_eq!(rt.block_on(get(&m, "objects/x")).unwrap(), b"object");
        // Two attempts on the dead server (its requests count too), then one here.
        assert_eq!((c.requests(), c.bytes()), (3, 6));
        assert_eq!(m.preferred(), 1);
        assert_eq!(m.url("objects/x"), format!("{good}/objects/x"));
        // The next request starts with the server that worked: no new attempt on
        // the dead one.
        assert_eq!(rt.block_on(get(&m, "objects/x")).unwrap(), b"object");
        assert_eq!(c.requests(), 4);
    }

    #[test]
    fn when_every_server_is_unreachable_it_gives_up_after_the_bound_naming_each() {
        let rt = rt();
        let c = Arc::<Counters>::default();
        let (a, b) = (closed_port(), closed_port());
        let bound = Duration::from_millis(400);
        let m = Mirrors::from_transports(vec![http(&a, &c), http(&b, &c)], c.clone(), FAST, bound);
        let started = Instant::now();
        let e = rt.block_on(get(&m, "objects/x")).unwrap_err();
        let took = started.elapsed();
        assert!(took >= bound, "{took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
        let FetchError::Unreachable { servers, .. } = &e else {
            panic!("{e}")
        };
        let names: Vec<&str> = servers.iter().map(|(s, _)| s.as_str()).collect();
        assert_eq!(names, [format!("{a}/"), format!("{b}/")], "{e}");
        assert!(
            servers
                .iter()
                .all(|(_, why)| why.contains("onnection refused")),
            "{e}"
        );
        assert!(e.to_string().starts_with("no server reachable"), "{e}");
        // More than one round: unreachable servers are tried again, paced.
        assert!(c.requests() > 4, "{}", c.requests());
        let wrapped = anyhow::Error::new(e).context("fetching channel head");
        assert!(crate::fetch::is_offline(&wrapped));
        assert!(!crate::fetch::is_offline(&anyhow::anyhow!("disk full")));
    }

    #[test]
    fn data_failing_verification_is_failed_over_and_bad_answers_are_not_asked_again() {
        let rt = rt();
        let dir = tempfile::tempdir().unwrap();
        let c = Arc::<Counters>::default();
        let tampered = repo(dir.path(), "tampered", b"0bject");
        let good = repo(dir.path(), "good", b"object");
        let m = Mirrors::from_transports(
            vec![file(&tampered, &c), file(&good, &c)],
            c.clone(),
            FAST,
            Duration::from_secs(60),
        );
        let want = ferry_format::id::Digest::of(b"object");
        let verified = |m: &Mirrors| {
            rt.block_on(m.run(|t| async move {
                let bytes = read_all(
                    t.get("objects/x", None, 100, "object")
                        .await
                        .map_err(Failed::<FetchError>::fetch)?,
                )
                .await
                .map_err(Failed::fetch)?;
                if ferry_format::id::Digest::of(&bytes) != want {
                    return Err(Failed {
                        fault: Fault::BadAnswer,
                        error: FetchError::NotFound {
                            url: t.url("objects/x"),
                        },
                    });
                }
                Ok(bytes)
            }))
        };
        assert_eq!(verified(&m).unwrap(), b"object");
        assert_eq!(m.preferred(), 1);

        // Servers that answer, badly, are asked once each: the request fails at once
        // with the last answer, which is not "offline".
        let m = Mirrors::from_transports(
            vec![file(&tampered, &c), file(&tampered, &c)],
            c.clone(),
            FAST,
            Duration::from_secs(60),
        );
        let before = c.requests();
        let started = Instant::now();
        let f = verified(&m).unwrap_err();
        assert_eq!(f.fault, Fault::BadAnswer);
        assert_eq!(c.requests() - before, 2);
        assert!(started.elapsed() < Duration::from_secs(1));
        let missing = rt.block_on(get(&m, "objects/none")).unwrap_err();
        assert!(matches!(missing, FetchError::NotFound { .. }), "{missing}");
    }

    #[test]
    fn a_local_failure_ends_the_request_without_trying_other_servers() {
        let rt = rt();
        let dir = tempfile::tempdir().unwrap();
        let c = Arc::<Counters>::default();
        let good = repo(dir.path(), "good", b"object");
        let m = Mirrors::from_transports(
            vec![file(&good, &c), file(&good, &c)],
            c.clone(),
            FAST,
            Duration::from_secs(60),
        );
        let calls = AtomicU32::new(0);
        let calls = &calls;
        let f = rt
            .block_on(m.run(|_| async move {
                calls.fetch_add(1, Ordering::Relaxed);
                Err::<(), _>(Failed::<FetchError>::fetch(FetchError::Io {
                    path: "/full".into(),
                    source: std::io::Error::other("no space left"),
                }))
            }))
            .unwrap_err();
        assert_eq!(f.fault, Fault::Local);
        assert_eq!(calls.load(Ordering::Relaxed), 1);
    }
}

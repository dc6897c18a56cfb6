//! Delivering queued reports to `<first server>/v1/reports` (docs/FLEET.md), in order.
//!
//! Enrollment: a report is sent with the credential in `ROOT/.ferry/credential` when
//! there is one for the report's agent id, else with the fleet token read from
//! `token_file`; the server answers a token-authenticated report with `201` and a
//! credential bound to the agent id, which is stored (mode 0600, atomically) and
//! used from then on. A `401` or `403` to a credential (revoked, or the server
//! forgot it, or the agent id changed) re-reads the token file and enrolls again,
//! once per report; a `401` to the token itself stops the flush, leaving the queue
//! for the next one.
//!
//! A report the server refuses as invalid (`400`, `413`) is dropped with a warning:
//! it would be refused forever and block every later one. Anything else (no
//! connection, `5xx`) stops the flush with the report and those after it queued.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_format::report::Enrolled;
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};

use super::queue::{Entry, Queue};
use crate::fetch::http::HttpOptions;
use crate::fetch::{FetchError, error_chain, join_url};
use crate::fsutil;

/// Most bytes of an answer read (an `Enrolled` is about 120).
const MAX_ANSWER: usize = 64 * 1024;

/// Why a flush stopped before the queue was empty.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("reports need an http:// or https:// server, not {0}")]
    NotHttp(String),
    #[error("{0}")]
    Client(#[from] FetchError),
    #[error("reading the fleet token {path}: {reason}")]
    Token { path: PathBuf, reason: String },
    #[error("POST {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("POST {url}: the fleet token in {token} was refused (HTTP {status})")]
    TokenRefused {
        url: String,
        token: PathBuf,
        status: u16,
    },
    #[error("POST {url}: server answered HTTP {status}{detail}")]
    Status {
        url: String,
        status: u16,
        detail: String,
    },
    #[error("POST {url}: enrollment answer: {reason}")]
    BadAnswer { url: String, reason: String },
    #[error("storing the credential: {0}")]
    Store(#[from] fsutil::FsError),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// What one flush did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Flushed {
    pub delivered: usize,
    /// Refused by the server as invalid and dropped.
    pub dropped: usize,
    /// Still queued.
    pub left: usize,
}

/// Where and how reports are sent.
pub struct Sender {
    client: reqwest::Client,
    url: String,
    token_file: PathBuf,
    credential: PathBuf,
}

/// The agent id a queued report names, read from its JSON.
fn agent_of(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Id {
        agent_id: String,
    }
    serde_json::from_slice::<Id>(body).ok().map(|i| i.agent_id)
}

impl Sender {
    /// Reports to `server`'s `/v1/reports`, enrolling with the token in `token_file`
    /// and keeping the credential at `credential`.
    pub fn new(
        server: &str,
        options: &HttpOptions,
        token_file: PathBuf,
        credential: PathBuf,
    ) -> Result<Sender, SendError> {
        if !(server.starts_with("http://") || server.starts_with("https://")) {
            return Err(SendError::NotHttp(server.to_string()));
        }
        Ok(Sender {
            client: options.client()?,
            url: join_url(server, "v1/reports"),
            token_file,
            credential,
        })
    }

    /// Sends the queued reports oldest first until the queue is empty, one fails, or
    /// `budget` is spent (a report cut off by the budget stays queued; if the server
    /// stored it, it stores the second copy once).
    pub fn flush(&self, queue: &Queue, budget: Duration) -> (Flushed, Option<SendError>) {
        let mut done = Flushed::default();
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                return (
                    done,
                    Some(SendError::Unreachable {
                        url: self.url.clone(),
                        reason: format!("starting the HTTP runtime: {e}"),
                    }),
                );
            }
        };
        let entries = match queue.entries() {
            Ok(e) => e,
            Err(e) => return (done, Some(e.into())),
        };
        let total = entries.len();
        let error = rt.block_on(async {
            match tokio::time::timeout(budget, self.send_all(queue, &entries, &mut done)).await {
                Ok(r) => r.err(),
                Err(_) => Some(SendError::Timeout(budget)),
            }
        });
        if done.delivered + done.dropped > 0 {
            // Removals need not be durable (a report back after a crash is stored
            // once), but a synced directory keeps the next flush from resending.
            let _ = fsutil::fsync_dir(queue.dir());
        }
        done.left = total - done.delivered - done.dropped;
        (done, error)
    }

    async fn send_all(
        &self,
        queue: &Queue,
        entries: &[Entry],
        done: &mut Flushed,
    ) -> Result<(), SendError> {
        for entry in entries {
            let body = match std::fs::read(&entry.path) {
                Ok(b) => b,
                // Delivered by another flush meanwhile.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    done.delivered += 1;
                    continue;
                }
                Err(source) => {
                    return Err(fsutil::FsError {
                        op: "reading",
                        path: entry.path.clone(),
                        source,
                    }
                    .into());
                }
            };
            match self.deliver(&body).await? {
                None => done.delivered += 1,
                Some(reason) => {
                    tracing::warn!(
                        "the fleet server refused report {} as invalid ({reason}); dropped it",
                        entry.path.display()
                    );
                    done.dropped += 1;
                }
            }
            queue.remove(entry)?;
        }
        Ok(())
    }

    /// Sends one report: `None` when stored, `Some(reason)` when refused as invalid.
    async fn deliver(&self, body: &[u8]) -> Result<Option<String>, SendError> {
        let agent = agent_of(body).unwrap_or_default();
        if let Some(credential) = self.credential_for(&agent) {
            let (status, answer) = self.post(body, &credential).await?;
            match status {
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                    tracing::info!(
                        "the fleet server refused this agent's credential (HTTP {}); enrolling again with the fleet token",
                        status.as_u16()
                    );
                }
                _ => return self.judge(status, &answer, &agent),
            }
        }
        let token = self.read_token()?;
        let (status, answer) = self.post(body, &token).await?;
        if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
            return Err(SendError::TokenRefused {
                url: self.url.clone(),
                token: self.token_file.clone(),
                status: status.as_u16(),
            });
        }
        self.judge(status, &answer, &agent)
    }

    /// What an answer means; stores the credential of an enrollment.
    fn judge(
        &self,
        status: StatusCode,
        answer: &[u8],
        agent: &str,
    ) -> Result<Option<String>, SendError> {
        let detail = || {
            String::from_utf8_lossy(answer)
                .trim()
                .chars()
                .take(200)
                .collect::<String>()
        };
        match status {
            StatusCode::CREATED => {
                let bad = |reason: String| SendError::BadAnswer {
                    url: self.url.clone(),
                    reason,
                };
                let enrolled: Enrolled =
                    serde_json::from_slice(answer).map_err(|e| bad(e.to_string()))?;
                if enrolled.agent_id != agent {
                    return Err(bad(format!(
                        "credential for agent {}, not {agent}",
                        enrolled.agent_id
                    )));
                }
                if enrolled.credential.is_empty()
                    || !enrolled.credential.bytes().all(|b| b.is_ascii_graphic())
                {
                    return Err(bad("the credential is not a token".into()));
                }
                let json = serde_json::to_vec(&enrolled).map_err(|e| bad(e.to_string()))?;
                fsutil::write_atomic_mode(&self.credential, &json, 0o600)?;
                tracing::info!("enrolled with the fleet server as agent {agent}");
                Ok(None)
            }
            s if s.is_success() => Ok(None),
            StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE => {
                Ok(Some(format!("HTTP {}: {}", status.as_u16(), detail())))
            }
            s => Err(SendError::Status {
                url: self.url.clone(),
                status: s.as_u16(),
                detail: match detail() {
                    d if d.is_empty() => String::new(),
                    d => format!(": {d}"),
                },
            }),
        }
    }

    /// The stored credential, if it is bound to `agent`.
    fn credential_for(&self, agent: &str) -> Option<String> {
        let bytes = std::fs::read(&self.credential).ok()?;
        let stored: Enrolled = serde_json::from_slice(&bytes).ok()?;
        (stored.agent_id == agent).then_some(stored.credential)
    }

    /// The fleet token: the first non-empty line of the token file.
    fn read_token(&self) -> Result<String, SendError> {
        let bad = |reason: String| SendError::Token {
            path: self.token_file.clone(),
            reason,
        };
        let text = std::fs::read_to_string(&self.token_file).map_err(|e| bad(e.to_string()))?;
        text.lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .map(str::to_string)
            .ok_or_else(|| bad("the file is empty".into()))
    }

    async fn post(&self, body: &[u8], bearer: &str) -> Result<(StatusCode, Vec<u8>), SendError> {
        let unreachable = |e: reqwest::Error| SendError::Unreachable {
            url: self.url.clone(),
            reason: error_chain(&e),
        };
        let mut resp = self
            .client
            .post(&self.url)
            .header(AUTHORIZATION, format!("Bearer {bearer}"))
            .header(CONTENT_TYPE, "application/json")
            .body(body.to_vec())
            .send()
            .await
            .map_err(unreachable)?;
        let status = resp.status();
        let mut answer = Vec::new();
        while let Some(piece) = resp.chunk().await.map_err(unreachable)? {
            answer.extend_from_slice(&piece);
            if answer.len() > MAX_ANSWER {
                answer.truncate(MAX_ANSWER);
                break;
            }
        }
        Ok((status, answer))
    }
}

/// `ROOT/.ferry/credential`.
pub fn credential_path(ferry_dir: &Path) -> PathBuf {
    ferry_dir.join("credential")
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    const A: &str = "00112233445566778899aabbccddeeff";
    const B: &str = "ffeeddccbbaa99887766554433221100";

    fn sender(dir: &Path) -> Sender {
        let _ = rustls::crypto::ring::default_provider().install_default();
        Sender::new(
            "http://127.0.0.1:9/repo/",
            &HttpOptions::default(),
            dir.join("token"),
            credential_path(dir),
        )
        .unwrap()
    }

    #[test]
    fn reports_go_to_the_first_servers_v1_reports_over_http_only() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(sender(dir.path()).url, "http://127.0.0.1:9/repo/v1/reports");
        let err = Sender::new(
            "file:///srv/repo",
            &HttpOptions::default(),
            dir.path().join("t"),
            dir.path().join("c"),
        )
        .err()
        .unwrap();
        assert!(err.to_string().contains("http:// or https://"), "{err}");
    }

    #[test]
    fn an_enrollment_stores_a_private_credential_bound_to_the_agent() {
        let dir = tempfile::tempdir().unwrap();
        let s = sender(dir.path());
        assert_eq!(s.credential_for(A), None);
        let answer = serde_json::to_vec(&Enrolled {
            agent_id: A.into(),
            credential: "c0ffee".into(),
        })
        .unwrap();
        assert_eq!(s.judge(StatusCode::CREATED, &answer, A).unwrap(), None);
        let mode = std::fs::metadata(credential_path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(s.credential_for(A).as_deref(), Some("c0ffee"));
        // Another agent id (a cloned root made a new one) enrolls anew.
        assert_eq!(s.credential_for(B), None);

        // A credential for someone else, or not a token, is not stored.
        let other = serde_json::to_vec(&Enrolled {
            agent_id: B.into(),
            credential: "beef".into(),
        })
        .unwrap();
        let err = s.judge(StatusCode::CREATED, &other, A).unwrap_err();
        assert!(err.to_string().contains("not 0011"), "{err}");
        let spaced = br#"{"agent_id":"00112233445566778899aabbccddeeff","credential":"a b"}"#;
        assert!(s.judge(StatusCode::CREATED, spaced, A).is_err());
        assert!(s.judge(StatusCode::CREATED, b"{}", A).is_err());
        assert_eq!(s.credential_for(A).as_deref(), Some("c0ffee"));
    }

    #[test]
    fn answers_decide_between_delivered_dropped_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let s = sender(dir.path());
        assert_eq!(
            s.judge(StatusCode::OK, b"{\"stored\":true}", A).unwrap(),
            None
        );
        let dropped = s
            .judge(StatusCode::BAD_REQUEST, b"agent report: bad schema", A)
            .unwrap()
            .unwrap();
        assert!(
            dropped.contains("400") && dropped.contains("bad schema"),
            "{dropped}"
        );
        assert!(
            s.judge(StatusCode::PAYLOAD_TOO_LARGE, b"", A)
                .unwrap()
                .is_some()
        );
        let kept = s
            .judge(StatusCode::SERVICE_UNAVAILABLE, b"", A)
            .unwrap_err();
        assert!(kept.to_string().contains("503"), "{kept}");
    }

    #[test]
    fn the_token_is_the_first_line_of_its_file_and_read_each_time() {
        let dir = tempfile::tempdir().unwrap();
        let s = sender(dir.path());
        let err = s.read_token().unwrap_err().to_string();
        assert!(err.contains("token"), "{err}");
        std::fs::write(dir.path().join("token"), "\n  first  \nsecond\n").unwrap();
        assert_eq!(s.read_token().unwrap(), "first");
        std::fs::write(dir.path().join("token"), "renewed\n").unwrap();
        assert_eq!(s.read_token().unwrap(), "renewed");
        std::fs::write(dir.path().join("token"), "\n\n").unwrap();
        assert!(s.read_token().unwrap_err().to_string().contains("empty"));
        assert_eq!(
            agent_of(b"{\"agent_id\":\"x\",\"more\":1}").as_deref(),
            Some("x")
        );
    }

    #[test]
    fn an_unreachable_server_leaves_every_report_queued() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "t\n").unwrap();
        let q = Queue::new(dir.path().join("reports"));
        for _ in 0..3 {
            q.push(|s| format!("{{\"agent_id\":\"{A}\",\"n\":{s}}}").into_bytes())
                .unwrap();
        }
        // Port 9 (discard) on loopback: nothing listens, the connection is refused.
        let (done, err) = sender(dir.path()).flush(&q, Duration::from_secs(5));
        assert_eq!(
            done,
            Flushed {
                delivered: 0,
                dropped: 0,
                left: 3
            }
        );
        assert!(err.unwrap().to_string().contains("127.0.0.1:9"));
        assert_eq!(q.entries().unwrap().len(), 3);
    }
}

//! The server checks: for every URL in `servers`, DNS, TCP, TLS (with the root's
//! `ca_file`) and the HTTP status and latency of the channel head request, each
//! step bounded in time, then the head it served verified in memory ([`verify`]).
//!
//! One plain GET per object, never retried: doctor reports what a server does now,
//! and a retry policy of up to 30 s would hide it (and keep the user waiting).

use std::path::Path;
use std::time::{Duration, Instant};

use ferry_format::envelope::ObjectKind;
use ferry_format::head::ChannelHead;
use ferry_format::keylist::TrustRoot;
use ferry_format::layout::{head_path, key_list_path};
use ferry_format::verified::Verified;
use reqwest::Url;
use tokio::runtime::Runtime;

use super::{Check, verify};
use crate::fetch::{self, Transport, error_chain, join_url};
use crate::install::config::Config;
use crate::install::layout::Layout;
use crate::install::state::State;

/// Resolving a host name.
const DNS_TIMEOUT: Duration = Duration::from_secs(3);
/// One TCP connect.
const TCP_TIMEOUT: Duration = Duration::from_secs(3);
/// One whole request (connect, TLS, headers and body).
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

/// A server doctor can fetch from.
pub enum Source {
    Http {
        client: reqwest::Client,
        base: String,
    },
    /// `file://` repositories.
    Other(Box<dyn Transport>),
}

/// Why a GET gave no bytes.
enum GetError {
    Timeout,
    Request(String),
    Status(u16),
    TooLarge(u64),
}

impl std::fmt::Display for GetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GetError::Timeout => write!(f, "no answer within {}s", HTTP_TIMEOUT.as_secs()),
            GetError::Request(e) => f.write_str(e),
            GetError::Status(s) => write!(f, "server answered HTTP {s}"),
            GetError::TooLarge(n) => write!(f, "larger than {n} bytes"),
        }
    }
}

impl Source {
    pub fn url(&self, path: &str) -> String {
        match self {
            Source::Http { base, .. } => join_url(base, path),
            Source::Other(t) => t.url(path),
        }
    }

    async fn get_once(
        &self,
        path: &str,
        max_len: u64,
        what: &'static str,
    ) -> Result<Vec<u8>, GetError> {
        let fetch = async {
            match self {
                Source::Http { client, base } => {
                    let mut resp = client
                        .get(join_url(base, path))
                        .send()
                        .await
                        .map_err(|e| GetError::Request(error_chain(&e)))?;
                    if resp.status() != reqwest::StatusCode::OK {
                        return Err(GetError::Status(resp.status().as_u16()));
                    }
                    let mut body = Vec::new();
                    while let Some(piece) = resp
                        .chunk()
                        .await
                        .map_err(|e| GetError::Request(error_chain(&e)))?
                    {
                        body.extend_from_slice(&piece);
                        if body.len() as u64 > max_len {
                            return Err(GetError::TooLarge(max_len));
                        }
                    }
                    Ok(body)
                }
                Source::Other(t) => {
                    let body = t.get(path, None, max_len, what).await;
                    match body {
                        Ok(b) => fetch::read_all(b)
                            .await
                            .map_err(|e| GetError::Request(e.to_string())),
                        Err(e) => Err(GetError::Request(e.to_string())),
                    }
                }
            }
        };
        tokio::time::timeout(HTTP_TIMEOUT, fetch)
            .await
            .unwrap_or(Err(GetError::Timeout))
    }
}

/// The runtime of the checks. Dropping a tokio runtime waits for its blocking
/// threads, and a name lookup that timed out may still sit in getaddrinfo there for
/// as long as the resolver likes; doctor leaves it behind instead.
pub struct Rt(Option<Runtime>);

impl Rt {
    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.0.as_ref().expect("runtime until drop").block_on(f)
    }
}

impl Drop for Rt {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// A server whose channel head verified: what the clock and disk checks work from.
pub struct Found {
    pub server: String,
    pub head: Verified<ChannelHead>,
    pub trust: TrustRoot,
    source: Source,
    rt: std::sync::Arc<Rt>,
}

impl Found {
    /// One bounded GET from the server the head came from.
    pub fn get(&self, path: &str, max_len: u64, what: &'static str) -> Result<Vec<u8>, String> {
        self.rt
            .block_on(self.source.get_once(path, max_len, what))
            .map_err(|e| format!("{}: {e}", self.source.url(path)))
    }
}

/// Adds a `server` and (when it served a head) a `head` check for every server;
/// returns the verified head with the highest sequence, if any.
pub fn probe_all(
    layout: &Layout,
    config: &Config,
    state: &State,
    config_path: &Path,
    checks: &mut Vec<Check>,
) -> Option<Found> {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => std::sync::Arc::new(Rt(Some(rt))),
        Err(e) => {
            checks.push(Check::fail(
                "server",
                format!("cannot start the async runtime: {e}"),
                "this machine is out of threads or file descriptors",
            ));
            return None;
        }
    };
    let cfg = config_path.display().to_string();
    let mut best: Option<Found> = None;
    for server in &config.servers {
        let (check, got) = rt.block_on(probe(server, config, &cfg));
        let failed = check.status == super::Status::Fail;
        checks.push(check);
        let (Some((source, bytes)), false) = (got, failed) else {
            continue;
        };
        let fetch_list = |version: u64| {
            rt.block_on(source.get_once(
                &key_list_path(version),
                ObjectKind::KeyList.max_size(),
                "key list",
            ))
            .map_err(|e| format!("{}: {e}", source.url(&key_list_path(version))))
        };
        let head_check = format!("head {server}");
        match verify::head(layout, config, state, &bytes, &fetch_list) {
            Ok(v) => {
                checks.push(Check::ok(head_check, v.describe()));
                let newer = best
                    .as_ref()
                    .is_none_or(|b| v.head.sequence > b.head.sequence);
                if newer {
                    best = Some(Found {
                        server: server.clone(),
                        head: v.head,
                        trust: v.trust,
                        source,
                        rt: rt.clone(),
                    });
                }
            }
            Err((detail, hint)) => checks.push(Check::fail(head_check, detail, hint)),
        }
    }
    best
}

/// One server: its check line, and its source plus the head bytes when it served them.
async fn probe(server: &str, config: &Config, cfg: &str) -> (Check, Option<(Source, Vec<u8>)>) {
    let name = format!("server {server}");
    let path = head_path(&config.channel);
    let fix_url = format!("check `servers` in {cfg}");
    if !(server.starts_with("http://") || server.starts_with("https://")) {
        let source = match fetch::connect(server, &config.http_options()) {
            Ok(t) => Source::Other(t),
            Err(e) => return (Check::fail(name, e.to_string(), fix_url), None),
        };
        let started = Instant::now();
        return match source
            .get_once(&path, ObjectKind::ChannelHead.max_size(), "channel head")
            .await
        {
            Ok(bytes) => (
                Check::ok(
                    name,
                    format!(
                        "channel head read in {} ms ({} bytes)",
                        started.elapsed().as_millis(),
                        bytes.len()
                    ),
                ),
                Some((source, bytes)),
            ),
            Err(e) => (
                Check::fail(
                    name,
                    format!("reading the channel head: {e}"),
                    format!(
                        "is the repository folder there and the channel `{}` published? {fix_url}",
                        config.channel
                    ),
                ),
                None,
            ),
        };
    }
    let url = match Url::parse(server) {
        Ok(u) => u,
        Err(e) => return (Check::fail(name, format!("not a URL: {e}"), fix_url), None),
    };
    let https = url.scheme() == "https";
    let mut found = Vec::new();
    match proxy_for(config, &url) {
        Some(proxy) => found.push(format!(
            "through proxy {proxy} (which resolves and connects)"
        )),
        None => match connect(&url).await {
            Ok(steps) => found.extend(steps),
            Err((detail, hint)) => {
                return (Check::fail(name, detail, format!("{hint} {fix_url}")), None);
            }
        },
    }
    let client = match config.http_options().client() {
        Ok(c) => c,
        Err(e) => {
            return (
                Check::fail(
                    name,
                    e.to_string(),
                    format!("fix `ca_file` or `proxy` in {cfg}"),
                ),
                None,
            );
        }
    };
    let source = Source::Http {
        client,
        base: server.to_string(),
    };
    let head_url = source.url(&path);
    let started = Instant::now();
    let got = source
        .get_once(&path, ObjectKind::ChannelHead.max_size(), "channel head")
        .await;
    let ms = started.elapsed().as_millis();
    let tls = match (&config.ca_file, https) {
        (_, false) => None,
        (Some(ca), true) => Some(format!("TLS verified with ca_file {}", ca.display())),
        (None, true) => Some("TLS verified with the system's roots".to_string()),
    };
    match got {
        Ok(bytes) => {
            found.extend(tls);
            found.push(format!(
                "HTTP 200 in {ms} ms (channel head, {} bytes)",
                bytes.len()
            ));
            (Check::ok(name, found.join(", ")), Some((source, bytes)))
        }
        Err(GetError::Request(e)) if https && is_tls(&e) => {
            let hint = format!(
                "the server's certificate is not trusted here: set `ca_file` in {cfg} to the CA that signed it, or fix the server's certificate (expired? another host name?)"
            );
            (
                Check::fail(name, format!("TLS handshake failed: {e}"), hint),
                None,
            )
        }
        Err(e @ GetError::Status(404)) => (
            Check::fail(
                name,
                format!("{e} for {head_url}"),
                format!(
                    "the server has no channel `{}` there: check `channel` and the path in `servers` in {cfg}",
                    config.channel
                ),
            ),
            None,
        ),
        Err(e @ GetError::Status(_)) => (
            Check::fail(
                name,
                format!("{e} for {head_url}"),
                "the server could not answer: see its logs",
            ),
            None,
        ),
        Err(e @ GetError::Timeout) => (
            Check::fail(
                name,
                format!("{e} to GET {head_url}"),
                "the server accepts connections but does not answer: is it overloaded or stuck?",
            ),
            None,
        ),
        Err(e) => (
            Check::fail(name, format!("GET {head_url}: {e}"), fix_url),
            None,
        ),
    }
}

/// DNS then TCP, each bounded: what was found, or (detail, hint).
async fn connect(url: &Url) -> Result<Vec<String>, (String, String)> {
    let port = url.port_or_known_default().unwrap_or(80);
    let Some(raw) = url.host_str() else {
        return Err(("the URL has no host".into(), "give one;".into()));
    };
    let literal = raw.trim_start_matches('[').trim_end_matches(']');
    let (host, addrs) = match literal.parse::<std::net::IpAddr>() {
        Ok(ip) => (
            format!("{raw} is an address (no DNS lookup)"),
            vec![std::net::SocketAddr::new(ip, port)],
        ),
        Err(_) => {
            let d = raw;
            let started = Instant::now();
            let looked =
                tokio::time::timeout(DNS_TIMEOUT, tokio::net::lookup_host((d, port))).await;
            let addrs: Vec<_> = match looked {
                Err(_) => {
                    return Err((
                        format!(
                            "DNS: resolving {d} took more than {}s",
                            DNS_TIMEOUT.as_secs()
                        ),
                        "check this machine's DNS servers (/etc/resolv.conf);".into(),
                    ));
                }
                Ok(Err(e)) => {
                    return Err((
                        format!("DNS: cannot resolve {d}: {e}"),
                        "check the host name, and this machine's DNS (/etc/resolv.conf);".into(),
                    ));
                }
                Ok(Ok(a)) => a.collect(),
            };
            let ms = started.elapsed().as_millis();
            (
                format!("{d} resolved to {} in {ms} ms", list(&addrs)),
                addrs,
            )
        }
    };
    let mut last = None;
    for addr in &addrs {
        let started = Instant::now();
        match tokio::time::timeout(TCP_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(_)) => {
                let ms = started.elapsed().as_millis();
                return Ok(vec![host, format!("TCP connect to {addr} in {ms} ms")]);
            }
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                last = Some((
                    format!("connection refused by {addr}"),
                    "is the server running?".to_string(),
                ));
            }
            Ok(Err(e)) => {
                last = Some((
                    format!("TCP connect to {addr}: {e}"),
                    "check the network path to the server;".to_string(),
                ));
            }
            Err(_) => {
                last = Some((
                    format!(
                        "TCP connect to {addr}: no answer within {}s",
                        TCP_TIMEOUT.as_secs()
                    ),
                    "the host is down, or a firewall drops the connection;".to_string(),
                ));
            }
        }
    }
    Err(last.unwrap_or_else(|| {
        (
            format!("DNS: {host} has no address"),
            "check the host name;".into(),
        )
    }))
}

fn list(addrs: &[std::net::SocketAddr]) -> String {
    let ips: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
    ips.join(" ")
}

/// Whether an error chain is a TLS failure (rustls and reqwest word them so).
fn is_tls(chain: &str) -> bool {
    let c = chain.to_ascii_lowercase();
    ["certificate", "tls", "handshake", "unknownissuer", "ssl"]
        .iter()
        .any(|w| c.contains(w))
}

/// The proxy a request to `url` goes through, as reqwest picks it: the `proxy` key,
/// else the environment's, unless `NO_PROXY` names the host.
fn proxy_for(config: &Config, url: &Url) -> Option<String> {
    if let Some(p) = &config.proxy {
        return Some(p.clone());
    }
    let env = |names: &[&str]| {
        names
            .iter()
            .find_map(|n| std::env::var(n).ok().filter(|v| !v.trim().is_empty()))
    };
    let host = url
        .host_str()?
        .trim_start_matches('[')
        .trim_end_matches(']');
    if let Some(no) = env(&["NO_PROXY", "no_proxy"]) {
        for entry in no.split(',').map(str::trim) {
            let e = entry.trim_start_matches('.');
            if entry == "*" || (!e.is_empty() && (host == e || host.ends_with(&format!(".{e}")))) {
                return None;
            }
        }
    }
    if url.scheme() == "https" {
        env(&["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"])
    } else {
        env(&["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"])
    }
}

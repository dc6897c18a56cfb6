//! TLS for `serve --tls-cert CERT.pem --tls-key KEY.pem`.
//!
//! The certificate chain and key are read once at start-up into a rustls
//! [`ServerConfig`](rustls::ServerConfig) on the ring provider (the one crypto backend
//! of the workspace; the process-wide default is not consulted, so the server does not
//! depend on who installed what first). TLS 1.3 and 1.2 are offered, 1.3 preferred;
//! ALPN offers `h2` then `http/1.1`, and the same hyper-util auto builder serves
//! whichever the client picked (it recognises the HTTP/2 preface itself, so ALPN only
//! has to be advertised, not consulted).
//!
//! The handshake runs inside the connection's task, after its permit was taken, under
//! [`HANDSHAKE_TIMEOUT`]: a client that connects and never finishes the handshake holds
//! one permit for a bounded time, like one that never sends its request headers. A
//! failed handshake ends only that connection and is logged at debug level (scanners
//! and clients that do not trust the certificate cause them all the time).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::error::{Error, Result, io_err};

/// A client must complete the TLS handshake within this time.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the PEM certificate chain (leaf first) and its private key are.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Reads the certificate chain and key and builds the acceptor.
pub fn acceptor(files: &TlsFiles) -> Result<TlsAcceptor> {
    let chain = read_chain(&files.cert)?;
    let key = read_key(&files.key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        // Listed in order of preference.
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|source| Error::Tls {
            context: "cannot configure TLS versions".into(),
            source,
        })?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|source| Error::Tls {
            context: format!(
                "{} and {} do not make a usable certificate and key",
                files.cert.display(),
                files.key.display()
            ),
            source,
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Completes the server side of a handshake. `None` when it failed, timed out, or the
/// server began shutting down meanwhile; failures are logged at debug level only.
pub async fn handshake<S>(
    acceptor: &TlsAcceptor,
    stream: S,
    stop: &mut watch::Receiver<bool>,
    peer: SocketAddr,
) -> Option<TlsStream<S>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let accept = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream));
    tokio::select! {
        r = accept => match r {
            Ok(Ok(s)) => Some(s),
            Ok(Err(e)) => {
                tracing::debug!(%peer, "TLS handshake failed: {e}");
                None
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake timed out");
                None
            }
        },
        _ = async { stop.wait_for(|s| *s).await.map(|_| ()) } => None,
    }
}

/// Every `CERTIFICATE` block of a PEM file, in order; at least one.
fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let bytes = std::fs::read(path).map_err(io_err("read", path))?;
    let chain = CertificateDer::pem_slice_iter(&bytes)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad_pem(path, &e.to_string()))?;
    if chain.is_empty() {
        return Err(bad_pem(path, "no CERTIFICATE block"));
    }
    Ok(chain)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) of a PEM file.
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    let bytes = std::fs::read(path).map_err(io_err("read", path))?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| bad_pem(path, &e.to_string()))
}

fn bad_pem(path: &Path, reason: &str) -> Error {
    Error::Io {
        action: "use",
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, reason.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_or_empty_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let files = TlsFiles {
            cert: empty.clone(),
            key: dir.path().join("missing.pem"),
        };
        let e = acceptor(&files).err().unwrap();
        assert!(format!("{e:#}").contains("empty.pem"), "{e:#}");
        let files = TlsFiles {
            cert: dir.path().join("missing.pem"),
            key: empty,
        };
        let e = acceptor(&files).err().unwrap();
        assert!(e.to_string().contains("missing.pem"), "{e}");
    }
}

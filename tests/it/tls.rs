//! Transport hardening: `serve` over TLS with a private CA, an agent that trusts only
//! that CA, one that does not, an `https://` update through a `CONNECT` proxy (from the
//! environment and from `ferry init --proxy`), and slow retrieval cut off by the
//! low-speed limit.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ferry_tests::connect_proxy::ConnectProxy;
use ferry_tests::process::run_env;
use ferry_tests::proxy::FaultProxy;
use ferry_tests::tree::{noise, put};
use ferry_tests::{Agent, Publisher, Server, assert_ok, bin};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tempfile::TempDir;

use super::fixtures::{Sources, tree_eq, v};

/// A private CA and a server certificate it issued for 127.0.0.1 and localhost, as
/// PEM files: `ca.pem`, `cert.pem` (leaf then CA) and `key.pem`.
pub struct Pki {
    dir: TempDir,
}

impl Pki {
    pub fn new() -> Pki {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "ferry test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();

        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &*ca).unwrap();

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(
            dir.path().join("cert.pem"),
            format!("{}{}", cert.pem(), ca.pem()),
        )
        .unwrap();
        std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).unwrap();
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn ca(&self) -> String {
        self.path("ca.pem").to_str().unwrap().to_string()
    }

    /// `ferry-server serve` with this certificate.
    pub fn serve(&self, publisher: &Publisher) -> Server {
        let (cert, key) = (self.path("cert.pem"), self.path("key.pem"));
        Server::start_with(
            &publisher.repo(),
            &[
                "--tls-cert",
                cert.to_str().unwrap(),
                "--tls-key",
                key.to_str().unwrap(),
            ],
        )
    }
}

/// `ferry update --json` with environment changes, asserting success.
fn update_env(agent: &Agent, env: &[(&str, Option<&str>)]) -> serde_json::Value {
    let root = agent.root().to_str().unwrap();
    let out = run_env(bin("ferry"), &["update", "--json", "--root", root], env);
    assert_ok(&out, "update");
    serde_json::from_slice(&out.stdout).expect("update --json prints JSON")
}

/// No proxy from the environment of whoever runs the tests.
const NO_PROXY_ENV: [(&str, Option<&str>); 8] = [
    ("HTTPS_PROXY", None),
    ("https_proxy", None),
    ("HTTP_PROXY", None),
    ("http_proxy", None),
    ("ALL_PROXY", None),
    ("all_proxy", None),
    ("NO_PROXY", None),
    ("no_proxy", None),
];

fn nothing_installed(root: &Path) {
    assert!(std::fs::symlink_metadata(root.join("current")).is_err());
    let versions = std::fs::read_dir(root.join("versions"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(versions, 0, "a release was installed");
}

#[test]
fn https_update_with_a_private_ca() {
    let pki = Pki::new();
    let publisher = Publisher::new("stable");
    let sources = Sources::app(2);
    publisher.publish(&v(1), &sources.release(1));
    let server = pki.serve(&publisher);
    assert!(
        server.url.starts_with("https://127.0.0.1:"),
        "{}",
        server.url
    );
    let agent = Agent::init(
        &server.url,
        "stable",
        &publisher.public_key(),
        &["--ca-file", &pki.ca()],
    );
    assert_eq!(update_env(&agent, &NO_PROXY_ENV)["to"], v(1));
    tree_eq(&agent.current(), &sources.release(1));
    publisher.publish(&v(2), &sources.release(2));
    assert_eq!(update_env(&agent, &NO_PROXY_ENV)["to"], v(2));
    tree_eq(&agent.current(), &sources.release(2));
    // The CA travels in the configuration: the file is no longer needed.
    drop(pki);
    assert_ok(&agent.ferry("verify", &[]), "verify");
    assert!(server.requests().iter().any(|r| r.status == 206));
    assert!(server.terminate().success(), "graceful shutdown under TLS");
}

#[test]
fn untrusted_certificate_fails_clearly_and_installs_nothing() {
    let pki = Pki::new();
    let publisher = Publisher::new("stable");
    let sources = Sources::app(1);
    publisher.publish(&v(1), &sources.release(1));
    let server = pki.serve(&publisher);

    // Trusting the system roots only: the private CA is unknown.
    let stranger = Agent::init(&server.url, "stable", &publisher.public_key(), &[]);
    let root = stranger.root().to_str().unwrap();
    let out = run_env(bin("ferry"), &["update", "--root", root], &NO_PROXY_ENV);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("certificate"), "{err}");
    assert!(err.contains("UnknownIssuer"), "the cause is kept: {err}");
    assert!(err.contains("--ca-file"), "the fix is named: {err}");
    nothing_installed(stranger.root());

    // Trusting another CA is no better.
    let other = Pki::new();
    let wrong = Agent::init(
        &server.url,
        "stable",
        &publisher.public_key(),
        &["--ca-file", &other.ca()],
    );
    let root = wrong.root().to_str().unwrap();
    let out = run_env(bin("ferry"), &["update", "--root", root], &NO_PROXY_ENV);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("certificate"));
    nothing_installed(wrong.root());

    // The failed handshakes did not hurt the server.
    let good = Agent::init(
        &server.url,
        "stable",
        &publisher.public_key(),
        &["--ca-file", &pki.ca()],
    );
    assert_eq!(update_env(&good, &NO_PROXY_ENV)["to"], v(1));
}

#[test]
fn init_refuses_an_unusable_ca_file_or_proxy() {
    let publisher = Publisher::new("stable");
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate\n").unwrap();
    let key = publisher.public_key();
    for extra in [
        vec!["--ca-file", junk.to_str().unwrap()],
        vec!["--proxy", "socks9://nowhere"],
    ] {
        let root = dir.path().join("root");
        let mut args = vec![
            "init",
            "--root",
            root.to_str().unwrap(),
            "--server",
            "https://127.0.0.1:1/",
            "--channel",
            "stable",
            "--public-key",
            key.to_str().unwrap(),
        ];
        args.extend(&extra);
        let out = ferry_tests::run(bin("ferry"), &args);
        assert!(!out.status.success(), "{extra:?} was accepted");
        assert!(!root.join(".ferry/config.toml").exists());
    }
}

#[test]
fn https_update_through_a_connect_proxy() {
    let pki = Pki::new();
    let publisher = Publisher::new("stable");
    let sources = Sources::app(2);
    publisher.publish(&v(1), &sources.release(1));
    let server = pki.serve(&publisher);
    let target = server.url.trim_start_matches("https://").to_string();

    // From the environment (loopback is not exempt unless NO_PROXY says so).
    let proxy = ConnectProxy::start();
    let agent = Agent::init(
        &server.url,
        "stable",
        &publisher.public_key(),
        &["--ca-file", &pki.ca()],
    );
    let mut env = NO_PROXY_ENV.to_vec();
    env.push(("HTTPS_PROXY", Some(&proxy.url)));
    assert_eq!(update_env(&agent, &env)["to"], v(1));
    tree_eq(&agent.current(), &sources.release(1));
    let seen = proxy.connects();
    assert!(!seen.is_empty(), "the update bypassed the proxy");
    assert!(seen.iter().all(|t| *t == target), "{seen:?}");

    // From the configuration, which wins over a broken proxy in the environment.
    let configured = ConnectProxy::start();
    let agent = Agent::init(
        &server.url,
        "stable",
        &publisher.public_key(),
        &["--ca-file", &pki.ca(), "--proxy", &configured.url],
    );
    let mut env = NO_PROXY_ENV.to_vec();
    env.push(("HTTPS_PROXY", Some("http://127.0.0.1:1")));
    env.push(("NO_PROXY", Some("127.0.0.1,localhost")));
    assert_eq!(update_env(&agent, &env)["to"], v(1));
    assert!(!configured.connects().is_empty(), "--proxy was not used");
    publisher.publish(&v(2), &sources.release(2));
    assert_eq!(update_env(&agent, &env)["to"], v(2));
    tree_eq(&agent.current(), &sources.release(2));
}

#[test]
fn slow_retrieval_is_cut_off_by_the_low_speed_limit() {
    let publisher = Publisher::new("stable");
    let sources = Sources::app(2);
    put(
        &sources.release(2),
        "lib/big.so",
        &noise(78, 2_000_000),
        0o644,
    );
    publisher.publish(&v(1), &sources.release(1));
    let server = publisher.serve();
    let proxy = FaultProxy::start(&server.url);
    let agent = Agent::init(
        &proxy.url,
        "stable",
        &publisher.public_key(),
        &["--low-speed-time", "2s", "--low-speed-limit", "100000"],
    );
    assert_eq!(update_env(&agent, &NO_PROXY_ENV)["to"], v(1));
    publisher.publish(&v(2), &sources.release(2));

    // The archive's bytes stop after the first 1000; the connection stays open.
    proxy.arm_stall(1000);
    let started = Instant::now();
    let root = agent.root().to_str().unwrap();
    let out = run_env(bin("ferry"), &["update", "--root", root], &NO_PROXY_ENV);
    let took = started.elapsed();
    assert!(!out.status.success(), "a stalled download succeeded");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("too slow"), "{err}");
    assert!(err.contains("in the last 2s (limit 100000 B/s)"), "{err}");
    assert!(
        took < Duration::from_secs(10),
        "the stall was noticed after {took:?}"
    );
    assert_eq!(agent.active().as_deref(), Some("1.0.0"));
    tree_eq(&agent.current(), &sources.release(1));

    // Without the stall the same root updates (resuming the bytes it kept).
    proxy.disarm();
    assert_eq!(update_env(&agent, &NO_PROXY_ENV)["to"], v(2));
    tree_eq(&agent.current(), &sources.release(2));
}

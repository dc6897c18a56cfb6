//! Repositories in object storage: `--repo s3://bucket/prefix` against a real
//! S3-compatible server (SeaweedFS, started per test on 127.0.0.1, see
//! tests/harness/seaweedfs.rs), configured by the standard AWS_* environment only.
//! Publish and `ls` through the bucket, `serve` from it (with its disk cache and the
//! upload API writing into it), agents updating and rolling back through that server
//! and straight from the bucket's own HTTP endpoint (anonymous read, single ranges
//! only), two publishers racing on one channel, a publish killed mid-way, and `--repo`
//! values with a scheme that are not a supported store.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use ferry_tests::process::run_env;
use ferry_tests::proxy::FaultProxy;
use ferry_tests::seaweedfs::{BUCKET, SeaweedFs};
use ferry_tests::{Agent, Publisher, Server, assert_ok, bin};
use serde_json::Value;

use super::fixtures::{Sources, tree_eq, v};

const TOKEN: &str = "s3-upload-token-0123456789";

/// A SeaweedFS instance, a publisher's keys and a repository at `s3://ferry/<prefix>`.
pub struct Bucket {
    pub s3: SeaweedFs,
    pub p: Publisher,
    pub sources: Sources,
    pub prefix: String,
    pub repo: String,
}

impl Bucket {
    pub fn new(prefix: &str, releases: u64) -> Bucket {
        let s3 = SeaweedFs::start();
        let repo = s3.repo(prefix);
        Bucket {
            s3,
            p: Publisher::new("stable"),
            sources: Sources::app(releases),
            prefix: prefix.to_string(),
            repo,
        }
    }

    /// `ferry-server ARGS` with the bucket's environment and `extra` variables.
    pub fn server_env(&self, args: &[&str], extra: &[(&str, &str)]) -> Output {
        let env = self.s3.env();
        let mut all: Vec<(&str, Option<&str>)> =
            env.iter().map(|(k, v)| (*k, Some(v.as_str()))).collect();
        all.extend(extra.iter().map(|(k, v)| (*k, Some(*v))));
        run_env(bin("ferry-server"), args, &all)
    }

    pub fn server(&self, args: &[&str]) -> Output {
        self.server_env(args, &[])
    }

    fn publish_args(&self, k: u64) -> Vec<String> {
        [
            "publish",
            "--repo",
            &self.repo,
            "--key",
            self.p.key().to_str().unwrap(),
            "--channel",
            "stable",
            "--version",
            &v(k),
            "--zstd-level",
            "3",
            "--json",
            self.sources.release(k).to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec()
    }

    pub fn publish(&self, k: u64) -> Value {
        self.publish_with(k, &[])
    }

    pub fn publish_with(&self, k: u64, extra: &[&str]) -> Value {
        let mut args = self.publish_args(k);
        let source = args.pop().unwrap();
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push(source);
        let out = self.server(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert_ok(&out, "publish to the bucket");
        serde_json::from_slice(&out.stdout).expect("publish --json prints JSON")
    }

    /// `ls --key` of the bucket: the heads verified, every manifest read.
    pub fn ls(&self) -> String {
        let key = self.p.public_key();
        let out = self.server(&["ls", "--repo", &self.repo, "--key", key.to_str().unwrap()]);
        assert_ok(&out, "ls");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(text.contains("[signatures verified]"), "{text}");
        assert!(
            !text.contains("UNREADABLE"),
            "a head names a missing object:\n{text}"
        );
        text
    }

    /// The current release of the channel, from `ls`.
    pub fn current(&self) -> String {
        let text = self.ls();
        let line = text
            .lines()
            .find(|l| l.contains("(current)"))
            .unwrap_or_else(|| panic!("no current release:\n{text}"));
        line.split_whitespace().next().unwrap().to_string()
    }

    /// `audit export` of the bucket as JSON.
    fn audit(&self) -> Value {
        let key = self.p.public_key();
        let out = self.server(&[
            "audit",
            "export",
            "--repo",
            &self.repo,
            "--since",
            "2000-01-01",
            "--public-key",
            key.to_str().unwrap(),
        ]);
        assert_ok(&out, "audit export");
        serde_json::from_slice(&out.stdout).expect("audit export prints JSON")
    }

    /// The path of the key file `name` in the publisher's `keys/` folder.
    pub fn key(&self, name: &str) -> String {
        let path = self.p.dir.path().join("keys").join(name);
        path.to_str().unwrap().to_string()
    }

    /// Writes key list 1 into the bucket: an offline root (`keys/root1.*`), the
    /// publisher's key and an online key (`keys/online.*`), signed by the publisher
    /// and the root. Returns what `key new-list` printed.
    pub fn key_list_with_online_role(&self) -> String {
        for name in ["root1", "online"] {
            let keys = self.p.dir.path().join("keys");
            let out = self.server(&[
                "key",
                "gen",
                "--out",
                keys.to_str().unwrap(),
                "--name",
                name,
            ]);
            assert_ok(&out, "key gen");
        }
        let key = |name: &str| self.key(name);
        let out = self.server(&[
            "key",
            "new-list",
            "--repo",
            &self.repo,
            "--root",
            &key("root1.pub"),
            "--publisher",
            &key("ferry.pub"),
            "--online",
            &key("online.pub"),
            "--sign",
            &key("ferry.key"),
            "--sign",
            &key("root1.key"),
            "--previous-key",
            &key("ferry.pub"),
        ]);
        assert_ok(&out, "key new-list on the bucket");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ferry-server serve --repo s3://...` with the bucket's environment.
    pub fn serve(&self, extra: &[&str]) -> Server {
        let env = self.s3.env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Server::start_with_env(Path::new(&self.repo), extra, &env)
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The `Range` header values in request heads.
fn ranges(heads: &[String]) -> Vec<String> {
    heads
        .iter()
        .flat_map(|h| h.lines())
        .filter_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("range")
                .then(|| value.trim().to_string())
        })
        .collect()
}

/// Publish, `ls`, `serve` from the bucket (disk cache on, uploads written into the
/// bucket), an agent updating, then rolling back through it.
#[test]
fn publish_ls_serve_update_and_rollback_through_a_bucket() {
    let b = Bucket::new("apps/demo", 2);
    let report = b.publish(1);
    assert_eq!(report["sequence"], 1, "{report}");
    assert_eq!(b.current(), v(1));

    let cache = tempfile::tempdir().unwrap();
    let token = b.p.dir.path().join("upload.token");
    std::fs::write(&token, TOKEN).unwrap();
    let srv = b.serve(&[
        "--cache-dir",
        cache.path().to_str().unwrap(),
        "--cache-size",
        "64MiB",
        "--upload-token-file",
        token.to_str().unwrap(),
        "--public-key",
        b.p.public_key().to_str().unwrap(),
    ]);
    let agent = Agent::init(&srv.url, "stable", &b.p.public_key(), &[]);
    agent.update();
    assert_eq!(agent.active().as_deref(), Some(v(1).as_str()));
    tree_eq(&agent.current(), &b.sources.release(1));

    // Release 2 through the upload API of the server on the bucket: objects and the
    // head land in the bucket, not on the server's disk.
    let out = run_env(
        bin("ferry-server"),
        &[
            "publish",
            "--to",
            &srv.url,
            "--token-file",
            token.to_str().unwrap(),
            "--key",
            b.p.key().to_str().unwrap(),
            "--channel",
            "stable",
            "--version",
            &v(2),
            "--zstd-level",
            "3",
            b.sources.release(2).to_str().unwrap(),
        ],
        &[],
    );
    assert_ok(&out, "publish --to the server on the bucket");
    assert_eq!(b.current(), v(2), "the upload API wrote into the bucket");

    let done = agent.update();
    assert_eq!(agent.active().as_deref(), Some(v(2).as_str()), "{done}");
    tree_eq(&agent.current(), &b.sources.release(2));
    agent.rollback(&[]);
    assert_eq!(agent.active().as_deref(), Some(v(1).as_str()));
    tree_eq(&agent.current(), &b.sources.release(1));

    let log = srv.requests();
    let served: Vec<_> = log
        .iter()
        .filter(|r| r.path.starts_with("/objects/"))
        .collect();
    assert!(!served.is_empty(), "{log:?}");
    for r in &log {
        // 404s: agents probing for a next key list, `publish --to` probing for objects.
        assert!(
            r.status < 400 || r.path.starts_with("/keys/") || r.method == "HEAD",
            "{r:?}"
        );
        if let Some(range) = &r.range {
            assert!(!range.contains(','), "multi-range request {r:?}");
        }
    }
    // Objects read from the bucket are copied into the cache in the background.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_dir(cache.path()).unwrap().count() == 0 {
        assert!(Instant::now() < deadline, "nothing was cached");
        std::thread::sleep(Duration::from_millis(50));
    }
    srv.terminate();
}

/// Two publishers at once on one channel, both paused between reading the head and
/// swapping it (a failpoint sleep), so their writes overlap: exactly one wins each
/// head sequence; the other re-bases on the new head and publishes on top, or exits
/// non-zero naming the conflict — never 0 without its release in the head.
#[test]
fn racing_publishers_never_both_win_and_the_loser_rebases_or_names_the_conflict() {
    let b = Bucket::new("race", 3);
    b.publish(1);
    // 3.0.0 and 2.0.0 race from 1.0.0: if 3.0.0 wins, 2.0.0 no longer sorts after the
    // current release and must fail; if 2.0.0 wins, 3.0.0 re-bases on it.
    let racers = [3u64, 2];
    let outs: Vec<Output> = std::thread::scope(|scope| {
        let handles: Vec<_> = racers
            .iter()
            .map(|&k| {
                let args = b.publish_args(k);
                let b = &b;
                scope.spawn(move || {
                    let args: Vec<&str> = args.iter().map(String::as_str).collect();
                    b.server_env(&args, &[("FAILPOINTS", "server::head::write=sleep(2000)")])
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let listing = b.ls();
    let listed = |k: u64| {
        listing
            .lines()
            .any(|l| l.split_whitespace().next() == Some(&v(k)))
    };
    let mut raced = false;
    for (k, out) in racers.iter().zip(&outs) {
        let err = stderr(out);
        raced |= err.contains("running again on the new head") || err.contains("conflict");
        if out.status.success() {
            assert!(
                listed(*k),
                "{} exited 0 without its release in the head:\n{listing}\n{err}",
                v(*k)
            );
        } else {
            assert!(
                err.contains("conflict"),
                "{} failed without naming the conflict: {err}",
                v(*k)
            );
            assert!(!listed(*k), "{} failed but is listed:\n{listing}", v(*k));
        }
    }
    assert!(raced, "the publishers did not overlap: {outs:?}");
    assert!(outs.iter().any(|o| o.status.success()), "{outs:?}");
    // Every head sequence was won once: no two heads of the audit trail share one.
    let audit = b.audit();
    let mut seqs: Vec<u64> = audit["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["head_sequence"].as_u64().unwrap())
        .collect();
    let n = seqs.len();
    seqs.sort();
    seqs.dedup();
    assert_eq!(seqs.len(), n, "two heads with one sequence: {audit}");
    assert_eq!(seqs, (1..=n as u64).collect::<Vec<_>>(), "{audit}");
}

/// A publish aborted (as by kill -9) after its first object went up, and after its
/// head log entry but before the head swap: the head still names release 1, whose
/// objects are all there, agents keep updating, and a rerun publishes release 2.
#[test]
fn a_publish_killed_mid_way_leaves_no_head_naming_a_missing_object() {
    let b = Bucket::new("crash", 2);
    b.publish(1);
    let args = b.publish_args(2);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    for point in ["server::store::object_sent", "server::head::write"] {
        let out = b.server_env(&args, &[("FAILPOINTS", &format!("{point}=return"))]);
        assert!(
            !out.status.success() && out.status.code().is_none(),
            "{point}: the publish was not aborted: {out:?}"
        );
        assert_eq!(b.current(), v(1), "{point}");
        let agent = Agent::init(&b.s3.http(&b.prefix), "stable", &b.p.public_key(), &[]);
        agent.update();
        tree_eq(&agent.current(), &b.sources.release(1));
    }
    b.publish(2);
    assert_eq!(b.current(), v(2));
}

/// No ferry-server at all: agents update from the bucket's own HTTP endpoint (the
/// objects carry their caching rules), sending only single-range requests.
#[test]
fn agents_update_straight_from_the_bucket_endpoint_with_single_ranges() {
    let b = Bucket::new("direct", 2);
    b.publish(1);
    // A recording proxy in front of the bucket shows what agents send.
    let proxy = FaultProxy::start(&b.s3.endpoint);
    let url = format!("{}/{BUCKET}/{}", proxy.url, b.prefix);
    let agent = Agent::init(&url, "stable", &b.p.public_key(), &[]);
    agent.update();
    tree_eq(&agent.current(), &b.sources.release(1));
    // Without a diff, the agent fetches the new chunks as ranges of the archive.
    b.publish_with(2, &["--diff-depth", "0"]);
    agent.update();
    tree_eq(&agent.current(), &b.sources.release(2));
    agent.rollback(&[]);
    tree_eq(&agent.current(), &b.sources.release(1));

    let heads = proxy.heads();
    assert!(heads.iter().any(|h| h.contains("/objects/")), "{heads:?}");
    let ranges = ranges(&heads);
    assert!(!ranges.is_empty(), "no ranged request: {heads:?}");
    for r in &ranges {
        assert!(!r.contains(','), "multi-range request: {r}");
    }
    // Content-Type and Cache-Control were stored with each key.
    let head =
        b.s3.get(&format!("/{BUCKET}/{}/channels/stable/head", b.prefix))
            .unwrap();
    let lower = head.to_ascii_lowercase();
    assert!(lower.starts_with("http/1.1 200"), "{head}");
    assert!(
        lower.contains("cache-control: public, max-age=10, must-revalidate"),
        "{head}"
    );
    assert!(
        lower.contains("content-type: application/octet-stream"),
        "{head}"
    );
    let object = heads
        .iter()
        .find_map(|h| {
            let line = h.lines().next()?;
            let path = line.split_whitespace().nth(1)?;
            path.contains("/objects/").then(|| path.to_string())
        })
        .unwrap();
    let got = b.s3.get(&object).unwrap().to_ascii_lowercase();
    assert!(got.starts_with("http/1.1 200"), "{object}");
    assert!(
        got.contains("cache-control: public, max-age=31536000, immutable"),
        "{object}"
    );
}

/// A `--repo` with a URL scheme is a supported store or an error: a one-slash typo
/// or an unknown scheme is refused with the reason, and no folder is created (before
/// object storage, `--repo s3:/bucket/prefix` made a local folder `s3:`).
#[test]
fn repo_urls_with_typos_or_unknown_schemes_are_refused_not_made_folders() {
    let p = Publisher::new("stable");
    let sources = Sources::app(1);
    let cwd = tempfile::tempdir().unwrap();
    let key = p.key();
    let src = sources.release(1);
    let cases: [(&[&str], &str); 5] = [
        (&["ls", "--repo", "s3:/bucket/prefix"], "is not a URL"),
        (&["ls", "--repo", "s3:bucket"], "is not a URL"),
        (
            &["key", "show", "--repo", "minio://bucket/p"],
            "unknown storage scheme \"minio\"",
        ),
        (
            &["serve", "--repo", "gs:/bucket", "--listen", "127.0.0.1:0"],
            "is not a URL",
        ),
        (
            &[
                "audit",
                "export",
                "--repo",
                "http://host/repo",
                "--since",
                "2026-01-01",
            ],
            "unknown storage scheme",
        ),
    ];
    let publish = [
        "publish",
        "--repo",
        "s3:/bucket/prefix",
        "--key",
        key.to_str().unwrap(),
        "--channel",
        "stable",
        "--version",
        "1.0.0",
        src.to_str().unwrap(),
    ];
    for (args, want) in cases
        .iter()
        .copied()
        .chain([(&publish[..], "is not a URL")])
    {
        // These fail while parsing the command line, before any work: no time bound
        // beyond the process's own is needed.
        let out = Command::new(bin("ferry-server"))
            .args(args)
            .current_dir(cwd.path())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = stderr(&out);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    let left: Vec<_> = std::fs::read_dir(cwd.path()).unwrap().collect();
    assert!(left.is_empty(), "folders were created: {left:?}");
}

/// `serve` with a bucket it cannot use fails at start naming why, instead of
/// answering every request with an error: an unreachable endpoint, `--cache-dir` on a
/// folder (read from disk already).
#[test]
fn serve_refuses_at_start_what_it_cannot_do_with_the_repository() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("repo");
    std::fs::create_dir(&folder).unwrap();
    let cache = dir.path().join("cache");
    // Nothing listens on port 1 of the loopback interface.
    let unreachable = [
        ("AWS_ACCESS_KEY_ID", Some("k")),
        ("AWS_SECRET_ACCESS_KEY", Some("s")),
        ("AWS_ENDPOINT_URL", Some("http://127.0.0.1:1")),
        ("AWS_ALLOW_HTTP", Some("true")),
    ];
    let cases: [(Vec<&str>, &str); 2] = [
        (
            vec!["serve", "--repo", "s3://ferry/x", "--listen", "127.0.0.1:0"],
            "cannot list s3://ferry/x/channels: Connection refused",
        ),
        (
            vec![
                "serve",
                "--repo",
                folder.to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
                "--cache-dir",
                cache.to_str().unwrap(),
            ],
            "--cache-dir caches object storage",
        ),
    ];
    for (args, want) in cases {
        let started = Instant::now();
        let out = run_env(bin("ferry-server"), &args, &unreachable);
        let err = stderr(&out);
        assert!(!out.status.success(), "{args:?} started");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(started.elapsed() < Duration::from_secs(60), "{args:?}");
    }
    assert!(!cache.exists());
}

/// Key lists written into a bucket (`key new-list`, `key show`), and `serve
/// --timestamp-key` on the bucket re-signing a short-lived head through the store,
/// so agents reading the bucket's head past its first expiry still update.
#[test]
fn key_lists_and_the_online_role_work_on_a_bucket() {
    let b = Bucket::new("online", 1);
    let text = b.key_list_with_online_role();
    let key = |name: &str| b.key(name);
    assert!(
        text.contains(&format!("written:   {}/keys/1", b.repo)),
        "{text}"
    );
    let out = b.server(&["key", "show", "--repo", &b.repo]);
    assert_ok(&out, "key show");
    assert!(String::from_utf8_lossy(&out.stdout).contains("online:    1 of ["));

    b.publish_with(1, &["--expires-in", "4s"]);
    let sequence = || -> u64 {
        let text = b.ls();
        let line = text.lines().next().unwrap_or_default().to_string();
        let mut words = line.split_whitespace().skip_while(|w| *w != "sequence");
        words
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{text}"))
    };
    assert_eq!(sequence(), 1);
    let srv = b.serve(&["--timestamp-key", &key("online.key")]);
    let agent = Agent::init(&b.s3.http(&b.prefix), "stable", &b.p.public_key(), &[]);
    // Past the head's 4 s lifetime: only the server on the bucket re-signed it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while sequence() < 3 {
        assert!(Instant::now() < deadline, "the head was not re-signed");
        std::thread::sleep(Duration::from_millis(500));
    }
    agent.update();
    tree_eq(&agent.current(), &b.sources.release(1));
    srv.terminate();

    // `audit prune` deletes the bucket's old head log entries, never the current one.
    let before = b.audit()["events"].as_array().unwrap().len();
    std::thread::sleep(Duration::from_secs(1));
    let out = b.server(&[
        "audit",
        "prune",
        "--repo",
        &b.repo,
        "--audit-retention",
        "1s",
    ]);
    assert_ok(&out, "audit prune");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("pruned {} head log entries", before - 1)),
        "{before}: {text}"
    );
    assert_eq!(b.audit()["events"].as_array().unwrap().len(), 1);
    b.ls();
}

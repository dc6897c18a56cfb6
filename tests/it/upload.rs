//! Remote publishing: `ferry-server publish --to URL --token-file FILE` against
//! `ferry-server serve --upload-token-file FILE --public-key PUB`. The token decides
//! who may write, the signatures what may be published: a wrong token, a head signed
//! by another key, a stale compare-and-swap and an object that is not what its name
//! says are all refused, and agents keep getting the last good release.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use ferry_tests::{Agent, Publisher, Server, assert_ok, bin, run};
use serde_json::Value;

use super::fixtures::{Sources, tree_eq, v};

const TOKEN: &str = "upload-token-0123456789abcdef";

/// A publisher (keys A), an empty repository served with uploads enabled for key A,
/// and token files.
struct Remote {
    publisher: Publisher,
    server: Server,
    /// The publisher's token file (surrounded by whitespace, as editors leave it).
    token_file: PathBuf,
}

impl Remote {
    fn start(channel: &str) -> Remote {
        let publisher = Publisher::new(channel);
        let repo = publisher.repo();
        std::fs::create_dir_all(&repo).unwrap();
        let server_token = publisher.dir.path().join("server.token");
        std::fs::write(&server_token, format!("{TOKEN}\n\n")).unwrap();
        let token_file = publisher.dir.path().join("publisher.token");
        std::fs::write(&token_file, format!("  \t{TOKEN}\r\n")).unwrap();
        let server = Server::start_with(
            &repo,
            &[
                "--upload-token-file",
                server_token.to_str().unwrap(),
                "--public-key",
                publisher.public_key().to_str().unwrap(),
            ],
        );
        Remote {
            publisher,
            server,
            token_file,
        }
    }

    /// `publish --to` with the publisher's key and token file.
    fn publish(&self, version: &str, source: &Path, extra: &[&str]) -> Output {
        self.publish_as(
            &self.publisher.key(),
            &self.publisher.channel,
            &self.token_file,
            version,
            source,
            extra,
        )
    }

    fn publish_as(
        &self,
        key: &Path,
        channel: &str,
        token_file: &Path,
        version: &str,
        source: &Path,
        extra: &[&str],
    ) -> Output {
        let mut args = vec![
            "publish",
            "--to",
            &self.server.url,
            "--token-file",
            token_file.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            "--channel",
            channel,
            "--version",
            version,
            "--zstd-level",
            "3",
            "--json",
        ];
        args.extend_from_slice(extra);
        args.push(source.to_str().unwrap());
        run(bin("ferry-server"), &args)
    }

    fn published(&self, version: &str, source: &Path, extra: &[&str]) -> Value {
        let out = self.publish(version, source, extra);
        assert_ok(&out, "publish --to");
        serde_json::from_slice(&out.stdout).expect("publish --json prints JSON")
    }

    fn agent(&self) -> Agent {
        Agent::init(
            &self.server.url,
            &self.publisher.channel,
            &self.publisher.public_key(),
            &[],
        )
    }

    /// GETs of objects the server logged from request `from` on.
    fn object_gets_since(&self, from: usize) -> usize {
        self.server.requests()[from..]
            .iter()
            .filter(|r| r.method == "GET" && r.path.starts_with("/objects/"))
            .count()
    }
}

/// Every file of a repository with its content, to show nothing changed.
fn snapshot(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    fn walk(dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
        let Ok(items) = std::fs::read_dir(dir) else {
            return;
        };
        for item in items {
            let path = item.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push((path.clone(), std::fs::read(&path).unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    walk(root, &mut out);
    out.sort();
    out
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// One raw HTTP/1.1 request; returns the status and the body as text.
fn request(
    url: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let addr = url.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, String::from_utf8_lossy(&raw[split..]).into_owned())
}

fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

fn object_url_path(hex: &str) -> String {
    format!("/objects/{}/{hex}", &hex[..2])
}

#[test]
fn publish_to_a_server_then_agents_install_and_update() {
    // The token files carry surrounding whitespace and newlines on both sides.
    let remote = Remote::start("stable");
    let sources = Sources::app(2);
    // Text the whole-release stream compresses better than chunks one by one, so the
    // publish has a diff from nothing to upload.
    let manual: String = (0..20_000)
        .map(|i| format!("step {} of the manual, section {}\n", i % 1_500, i % 9))
        .collect();
    for k in 1..=2 {
        ferry_tests::tree::put(
            &sources.release(k),
            "share/manual.txt",
            manual.as_bytes(),
            0o644,
        );
    }
    let first = remote.published(&v(1), &sources.release(1), &[]);
    assert_eq!(first["sequence"], 1);
    assert_eq!(first["version"], v(1));
    let agent = remote.agent();
    let installed = agent.update();
    assert_eq!(installed["to"], v(1));
    tree_eq(&agent.current(), &sources.release(1));
    // The diff from nothing was uploaded with the rest: the fresh install took it.
    assert!(first["fresh"].is_object(), "{first}");
    assert_eq!(installed["via"], "diff", "{installed}");

    let before = remote.server.requests().len();
    let second = remote.published(&v(2), &sources.release(2), &[]);
    assert_eq!(second["sequence"], 2);
    assert!(
        second["chunks_carried"].as_u64().unwrap() > 0,
        "the second publish reuses the first release's chunks: {second}"
    );
    // Without a cache the previous manifest and archive come from the server.
    assert_eq!(remote.object_gets_since(before), 2);
    let puts: Vec<(String, u16)> = remote.server.requests()[before..]
        .iter()
        .filter(|r| r.method == "PUT")
        .map(|r| (r.path.clone(), r.status))
        .collect();
    assert_eq!(
        puts.len(),
        7,
        "manifest, archive, diff from 1.0.0, diff from nothing, the two manifest diffs, \
         head: {puts:?}"
    );
    assert_eq!(puts[6], ("/channels/stable/head".to_string(), 201));
    assert!(puts.iter().all(|(_, s)| *s == 201), "{puts:?}");

    let r = agent.update();
    assert_eq!(
        (r["from"].as_str(), r["to"].as_str()),
        (Some("1.0.0"), Some("2.0.0"))
    );
    tree_eq(&agent.current(), &sources.release(2));

    // Uploaded objects are ordinary repository files, as a static host needs them.
    use std::os::unix::fs::PermissionsExt;
    let archive = remote
        .publisher
        .object_file(second["archive"].as_str().unwrap());
    let mode = std::fs::metadata(&archive).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644);
    // The upload counters are exposed with the other metrics.
    let (status, metrics) = request(&remote.server.url, "GET", "/metrics", &[], b"");
    assert_eq!(status, 200);
    assert!(
        metrics.contains("ferry_uploads_total{kind=\"head\"} 2"),
        "{metrics}"
    );
}

#[test]
fn wrong_token_is_refused_and_the_repository_is_unchanged() {
    let remote = Remote::start("stable");
    let sources = Sources::app(2);
    remote.published(&v(1), &sources.release(1), &[]);
    let before = snapshot(&remote.publisher.repo());

    let wrong = remote.publisher.dir.path().join("wrong.token");
    std::fs::write(&wrong, "not-the-token\n").unwrap();
    let out = remote.publish_as(
        &remote.publisher.key(),
        "stable",
        &wrong,
        &v(2),
        &sources.release(2),
        &[],
    );
    assert!(!out.status.success(), "a wrong token must not publish");
    let err = stderr(&out);
    assert!(err.contains("401") && err.contains("token"), "{err}");
    assert_eq!(
        snapshot(&remote.publisher.repo()),
        before,
        "nothing was stored"
    );

    // The same without any Authorization header, on a raw request.
    let (status, _) = request(
        &remote.server.url,
        "PUT",
        &object_url_path(&ferry_format::id::Digest::of(b"x").to_hex()),
        &[],
        b"x",
    );
    assert_eq!(status, 401);
    let agent = remote.agent();
    assert_eq!(agent.update()["to"], v(1));
}

#[test]
fn heads_signed_by_another_key_are_refused_even_with_the_token() {
    let remote = Remote::start("stable");
    let sources = Sources::app(2);
    remote.published(&v(1), &sources.release(1), &[]);
    let served_head = std::fs::read(remote.publisher.head_file()).unwrap();
    let thief = Publisher::new("stable");

    // On an existing channel the publisher already notices that its key is not the
    // channel's (the mirrored head does not verify with it).
    let out = remote.publish_as(
        &thief.key(),
        "stable",
        &remote.token_file,
        &v(2),
        &sources.release(2),
        &[],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("does not match"), "{}", stderr(&out));

    // On a new channel nothing stops it before the server, which refuses the head.
    let out = remote.publish_as(
        &thief.key(),
        "beta",
        &remote.token_file,
        &v(1),
        &sources.release(2),
        &[],
    );
    assert!(
        !out.status.success(),
        "a head signed by an untrusted key published"
    );
    let err = stderr(&out);
    assert!(err.contains("403") && err.contains("signature"), "{err}");
    assert!(!remote.publisher.repo().join("channels/beta").exists());

    // A complete, well-formed head for `stable` signed by the other key, sent by hand
    // with the right token and the right previous sequence: still 403.
    thief.publish("9.0.0", &sources.release(2));
    let forged = std::fs::read(thief.head_file()).unwrap();
    let (status, body) = request(
        &remote.server.url,
        "PUT",
        "/channels/stable/head",
        &[
            ("Authorization", &bearer()),
            ("X-Ferry-Previous-Sequence", "1"),
        ],
        &forged,
    );
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("signature"), "{body}");
    assert_eq!(
        std::fs::read(remote.publisher.head_file()).unwrap(),
        served_head
    );

    let agent = remote.agent();
    assert_eq!(agent.update()["to"], v(1));
    tree_eq(&agent.current(), &sources.release(1));
}

#[test]
fn head_uploads_need_their_objects_and_lose_a_stale_compare_and_swap() {
    let remote = Remote::start("stable");
    let sources = Sources::app(3);
    remote.published(&v(1), &sources.release(1), &[]);
    remote.published(&v(2), &sources.release(2), &[]);

    // A second publisher works on a copy of the repository at sequence 2 and signs
    // release 3 with the channel's key, locally.
    let copy = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(remote.publisher.repo())
        .arg(copy.path().join("repo"))
        .status()
        .unwrap();
    assert!(status.success());
    let out = run(
        bin("ferry-server"),
        &[
            "publish",
            "--repo",
            copy.path().join("repo").to_str().unwrap(),
            "--key",
            remote.publisher.key().to_str().unwrap(),
            "--channel",
            "stable",
            "--version",
            &v(3),
            "--zstd-level",
            "3",
            &sources.release(3).to_string_lossy(),
        ],
    );
    assert_ok(&out, "local publish into the copy");
    let racing_head = std::fs::read(copy.path().join("repo/channels/stable/head")).unwrap();
    let put_head = |previous: &str| {
        request(
            &remote.server.url,
            "PUT",
            "/channels/stable/head",
            &[
                ("Authorization", &bearer()),
                ("X-Ferry-Previous-Sequence", previous),
            ],
            &racing_head,
        )
    };

    // Objects first, head last: the head names a manifest the server does not have.
    let (status, body) = put_head("2");
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("not on the server"), "{body}");
    // Without the compare-and-swap header the upload is malformed.
    let (status, _) = request(
        &remote.server.url,
        "PUT",
        "/channels/stable/head",
        &[("Authorization", &bearer())],
        &racing_head,
    );
    assert_eq!(status, 400);

    // The first publisher wins the race (its objects are byte-identical: publishing
    // is deterministic), so the racing head now builds on a sequence that is gone.
    let won = remote.published(&v(3), &sources.release(3), &[]);
    assert_eq!(won["sequence"], 3);
    let served = std::fs::read(remote.publisher.head_file()).unwrap();
    let (status, body) = put_head("2");
    assert_eq!(status, 409, "{body}");
    assert!(
        body.contains("head moved: expected sequence 2, current 3"),
        "{body}"
    );
    assert_eq!(std::fs::read(remote.publisher.head_file()).unwrap(), served);

    let agent = remote.agent();
    assert_eq!(agent.update()["to"], v(3));
    tree_eq(&agent.current(), &sources.release(3));
}

#[test]
fn objects_are_stored_only_under_the_name_of_their_content() {
    let remote = Remote::start("stable");
    let url = &remote.server.url;
    let body = b"an object body".as_slice();
    let name = ferry_format::id::Digest::of(body).to_hex();
    let auth = bearer();
    let auth = [("Authorization", auth.as_str())];

    let wrong = object_url_path(&ferry_format::id::Digest::of(b"something else").to_hex());
    let (status, text) = request(url, "PUT", &wrong, &auth, body);
    assert_eq!(status, 400, "{text}");
    assert!(
        text.contains("object content does not match its name"),
        "{text}"
    );

    let path = object_url_path(&name);
    assert_eq!(request(url, "PUT", &path, &auth, body).0, 201);
    assert_eq!(request(url, "PUT", &path, &auth, body).0, 200, "idempotent");
    let (status, served) = request(url, "GET", &path, &[], b"");
    assert_eq!((status, served.as_bytes()), (200, body));
    assert_eq!(request(url, "PUT", "/elsewhere", &auth, body).0, 404);

    // Refusals are counted by reason.
    let (_, metrics) = request(url, "GET", "/metrics", &[], b"");
    assert!(
        metrics.contains("ferry_upload_refused_total{reason=\"mismatch\"} 1"),
        "{metrics}"
    );
    // Only the stored object is left: no temp file of the refused upload.
    let files: Vec<_> = snapshot(&remote.publisher.repo().join("objects"))
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    assert_eq!(files, [remote.publisher.object_file(&name)]);
}

#[test]
fn cache_keeps_the_previous_release_so_only_the_head_is_fetched() {
    let remote = Remote::start("stable");
    let sources = Sources::app(4);
    let cache = tempfile::tempdir().unwrap();
    let with_cache = ["--cache", cache.path().to_str().unwrap()];

    remote.published(&v(1), &sources.release(1), &with_cache);
    let before = remote.server.requests().len();
    let second = remote.published(&v(2), &sources.release(2), &with_cache);
    assert!(second["chunks_carried"].as_u64().unwrap() > 0);
    assert_eq!(
        remote.object_gets_since(before),
        0,
        "the previous manifest and archive come from the cache"
    );
    let head_gets = remote.server.requests()[before..]
        .iter()
        .filter(|r| r.method == "GET" && r.path == "/channels/stable/head")
        .count();
    assert_eq!(head_gets, 1);

    // A damaged cached archive is noticed (blake3) and fetched again.
    let archive = second["archive"].as_str().unwrap();
    let cached = cache
        .path()
        .join(format!("objects/{}/{archive}", &archive[..2]));
    let mut bytes = std::fs::read(&cached).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&cached, &bytes).unwrap();
    let before = remote.server.requests().len();
    remote.published(&v(3), &sources.release(3), &with_cache);
    assert_eq!(
        remote.object_gets_since(before),
        1,
        "only the damaged archive"
    );

    // Without the cache they come from the server again: the manifest and archive of
    // each of the three releases release 4 is diffed against.
    let before = remote.server.requests().len();
    remote.published(&v(4), &sources.release(4), &[]);
    assert_eq!(remote.object_gets_since(before), 6);

    let agent = remote.agent();
    assert_eq!(agent.update()["to"], v(4));
    tree_eq(&agent.current(), &sources.release(4));
    // The cache holds objects only, never a head, and no staging leftovers.
    assert!(!cache.path().join("channels").exists());
    let leftovers: Vec<_> = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "objects")
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn remote_publish_follows_the_repository_key_list() {
    let r = Remote::start("stable");
    let sources = Sources::app(3);
    r.published(&v(1), &sources.release(1), &[]);
    let agent = r.agent();
    agent.update();

    // On the repository host: introduce key list 1 (root1 offline, pub2 publishes),
    // then re-sign the head under it.
    let keys = r.publisher.dir.path().join("keys");
    let k = |f: &str| keys.join(f).to_str().unwrap().to_string();
    for name in ["root1", "pub2"] {
        let out = run(
            bin("ferry-server"),
            &["key", "gen", "--out", &k(""), "--name", name],
        );
        assert_ok(&out, "key gen");
    }
    let repo = r.publisher.repo();
    let repo_s = repo.to_str().unwrap();
    assert_ok(
        &run(
            bin("ferry-server"),
            &[
                "key",
                "new-list",
                "--repo",
                repo_s,
                "--root",
                &k("root1.pub"),
                "--publisher",
                &k("pub2.pub"),
                "--sign",
                &k("ferry.key"),
                "--sign",
                &k("root1.key"),
                "--previous-key",
                &k("ferry.pub"),
            ],
        ),
        "key new-list",
    );
    assert_ok(
        &run(
            bin("ferry-server"),
            &[
                "refresh-head",
                "--repo",
                repo_s,
                "--channel",
                "stable",
                "--key",
                &k("pub2.key"),
            ],
        ),
        "refresh-head",
    );

    // Remote publishing now needs the new publishing key; the old one is refused.
    let pub2 = keys.join("pub2.key");
    let out = r.publish_as(
        &pub2,
        "stable",
        &r.token_file,
        &v(2),
        &sources.release(2),
        &[],
    );
    assert_ok(&out, "publish --to with the key list's publisher");
    let old = r.publisher.key();
    let out = r.publish_as(
        &old,
        "stable",
        &r.token_file,
        &v(3),
        &sources.release(3),
        &[],
    );
    assert!(
        !out.status.success(),
        "the replaced single key can no longer publish"
    );

    // The agent, initialised with the single key, follows to key list 1 and installs.
    assert_eq!(agent.update()["to"], v(2));
    tree_eq(&agent.current(), &sources.release(2));
}

/// The upload API applies the online role's limits too: a head whose releases only the
/// online key signed is refused (403), and so is one reviving older publisher content
/// (409), even with the token.
#[test]
fn the_upload_api_refuses_what_only_an_online_key_signed() {
    use ferry_format::head::inspect_head;
    use ferry_format::keys::SecretKey;
    use ferry_format::test_support::sign_head_unchecked;

    let r = Remote::start("stable");
    let sources = Sources::app(1);
    r.published(&v(1), &sources.release(1), &[]);
    let keys = r.publisher.dir.path().join("keys");
    let k = |f: &str| keys.join(f).to_str().unwrap().to_string();
    for name in ["root1", "online"] {
        let out = run(
            bin("ferry-server"),
            &["key", "gen", "--out", &k(""), "--name", name],
        );
        assert_ok(&out, "key gen");
    }
    let repo = r.publisher.repo();
    let repo_s = repo.to_str().unwrap();
    let server = |args: &[&str]| run(bin("ferry-server"), args);
    assert_ok(
        &server(&[
            "key",
            "new-list",
            "--repo",
            repo_s,
            "--root",
            &k("root1.pub"),
            "--publisher",
            &k("ferry.pub"),
            "--online",
            &k("online.pub"),
            "--sign",
            &k("ferry.key"),
            "--sign",
            &k("root1.key"),
            "--previous-key",
            &k("ferry.pub"),
        ]),
        "key new-list --online",
    );
    let refresh = || {
        assert_ok(
            &server(&[
                "refresh-head",
                "--repo",
                repo_s,
                "--channel",
                "stable",
                "--key",
                &k("ferry.key"),
            ]),
            "refresh-head --key",
        )
    };
    refresh();
    let older = inspect_head(&std::fs::read(r.publisher.head_file()).unwrap()).unwrap();
    refresh();
    let online = SecretKey::from_text(&std::fs::read_to_string(k("online.key")).unwrap()).unwrap();
    let put = |h: &ferry_format::head::ChannelHead| {
        let current = inspect_head(&std::fs::read(r.publisher.head_file()).unwrap()).unwrap();
        let mut h = h.clone();
        h.sequence = current.sequence + 1;
        request(
            &r.server.url,
            "PUT",
            "/channels/stable/head",
            &[
                ("Authorization", &bearer()),
                ("X-Ferry-Previous-Sequence", &current.sequence.to_string()),
            ],
            &sign_head_unchecked(&h, &[&online]),
        )
    };
    let before = std::fs::read(r.publisher.head_file()).unwrap();
    // Releases signed by the online key.
    let mut forged = older.clone();
    forged.content.sequence += 10;
    forged.resign_content(&[&online]).unwrap();
    let (status, body) = put(&forged);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("publishing keys"), "{body}");
    // Older publisher content in a fresh online-signed head.
    let (status, body) = put(&older);
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("cannot be revived"), "{body}");
    assert_eq!(std::fs::read(r.publisher.head_file()).unwrap(), before);
}

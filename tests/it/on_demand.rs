//! Diffs `ferry-server serve --diffs-on-demand` makes for any pair of retained
//! releases (FORMAT.md §3.8): an agent ten releases behind, past every listed diff,
//! updates in three requests counted at the server (head, manifest, the diff), the
//! diff is made once however many agents ask and kept in the repository, a static
//! host is never asked, and whatever a server sends in its place (a refusal, garbage,
//! a diff for another base, more bytes than the archive ranges) leaves the agent on
//! the archive with the active release untouched until the verified switch.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use ferry_format::id::Digest;
use ferry_format::ondemand::{IndexEntry, diff_index_path};
use ferry_tests::nginx::Nginx;
use ferry_tests::tree::{noise, put};
use ferry_tests::{Agent, Publisher, Server};
use serde_json::Value;
use tempfile::TempDir;

use super::fixtures::{tree_eq, v};
use super::metrics::{promtool_check, sample};
use super::pipeline::object_url_path;

/// Releases 1..=n of an application changing a little with every release: a few KiB
/// patched into a 1.2 MB binary (never the same place twice), a plugin rewritten, a
/// note added. Enough releases for jumps of ten.
struct Chain {
    dir: TempDir,
}

impl Chain {
    fn new(n: u64) -> Chain {
        let dir = tempfile::tempdir().expect("tempdir");
        for k in 1..=n {
            let root = dir.path().join(k.to_string());
            let mut bin = noise(1, 1_200_000);
            for j in 2..=k {
                let at = 60_000 + (j as usize) * 80_000;
                bin[at..at + 4000].copy_from_slice(&noise(100 + j, 4000));
            }
            put(&root, "bin/app", &bin, 0o755);
            put(&root, "lib/libcore.so", &noise(2, 400_000), 0o644);
            put(&root, "lib/libplugin.so", &noise(3 + 10 * k, 60_000), 0o644);
            put(
                &root,
                "share/doc/README",
                format!("release {k}\n").as_bytes(),
                0o644,
            );
            for j in 2..=k {
                put(
                    &root,
                    &format!("share/notes-{j}.txt"),
                    &noise(200 + j, 2000),
                    0o644,
                );
            }
        }
        Chain { dir }
    }

    fn release(&self, k: u64) -> std::path::PathBuf {
        self.dir.path().join(k.to_string())
    }
}

/// Publishing as the issue has it: diffs from the last 3 releases, 12 retained.
const PUBLISH: &[&str] = &["--diff-depth", "3", "--retain", "12"];
const ON_DEMAND: &[&str] = &["--diffs-on-demand"];

/// The agents install release 1 (`first`, already published), then releases
/// 2..=last are published. Returns each release's `publish --json`, 1 first.
fn publish_rest(
    first: Value,
    last: u64,
    agents: &[&Agent],
    p: &Publisher,
    chain: &Chain,
) -> Vec<Value> {
    for a in agents {
        assert_eq!(a.update()["to"], v(1));
    }
    let mut out = vec![first];
    for k in 2..=last {
        out.push(p.publish_with(&v(k), &chain.release(k), PUBLISH));
    }
    out
}

/// A raw `GET path` with extra header lines: (status, head, body).
fn get(url: &str, path: &str, headers: &str) -> (u16, String, Vec<u8>) {
    let addr = url.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head[9..12].parse().unwrap();
    (status, head, raw[split + 4..].to_vec())
}

fn manifest_hash(published: &Value) -> Digest {
    Digest::from_hex(published["manifest"].as_str().unwrap()).unwrap()
}

fn diff_path(base: &Value, target: &Value) -> String {
    format!(
        "/{}",
        ferry_format::ondemand::diff_request_path(&manifest_hash(base), &manifest_hash(target))
    )
}

fn index_entry(repo: &Path, base: &Value, target: &Value) -> Option<IndexEntry> {
    let path = repo.join(diff_index_path(
        &manifest_hash(base),
        &manifest_hash(target),
    ));
    let text = std::fs::read_to_string(path).ok()?;
    Some(IndexEntry::parse(&text).unwrap())
}

fn metric(url: &str, result: &str) -> f64 {
    let (_, _, text) = get(url, "/metrics", "");
    let text = String::from_utf8(text).unwrap();
    sample(
        &text,
        &format!("ferry_diffs_on_demand_total{{result=\"{result}\"}}"),
    )
}

#[test]
fn an_agent_ten_releases_behind_updates_through_a_diff_the_server_makes_in_three_requests() {
    let p = Publisher::new("stable");
    let chain = Chain::new(11);
    let first = p.publish_with(&v(1), &chain.release(1), PUBLISH);
    let srv = Server::start_with(&p.repo(), ON_DEMAND);
    let agent = Agent::init(&srv.url, "stable", &p.public_key(), &[]);
    let lagging = Agent::init(&srv.url, "stable", &p.public_key(), &[]);
    let releases = publish_rest(first, 11, &[&agent, &lagging], &p, &chain);
    let eleventh = &releases[10];

    // The plan says what it asks for, its bound, and the archive behind it.
    let out = agent.ferry("update", &["--dry-run", "--json"]);
    ferry_tests::assert_ok(&out, "update --dry-run");
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["via"], "server-diff", "{plan}");
    assert!(
        plan["plan"]
            .as_str()
            .unwrap()
            .contains("ask the server for a diff from 1.0.0 (taken if under"),
        "{plan}"
    );
    let archive_ranges = plan["fallbacks"][0]["download_bytes"].as_u64().unwrap();
    assert_eq!(plan["fallbacks"][0]["via"], "archive", "{plan}");

    let before = srv.requests().len();
    let r = agent.update();
    assert_eq!(r["to"], v(11));
    tree_eq(&agent.current(), &chain.release(11));
    let reqs = srv.requests()[before..].to_vec();
    let paths: Vec<&str> = reqs.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(reqs.len(), 3, "head, manifest, diff: {paths:?}");
    assert_eq!(reqs[0].path, "/channels/stable/head");
    assert_eq!(
        reqs[1].path,
        object_url_path(eleventh["manifest"].as_str().unwrap())
    );
    assert_eq!(reqs[2].path, diff_path(&releases[0], eleventh));
    assert!(reqs.iter().all(|r| r.status == 200), "{reqs:?}");
    let logged: u64 = reqs.iter().map(|r| r.bytes).sum();
    assert_eq!(r["bytes_downloaded"].as_u64().unwrap(), logged);
    assert_eq!(r["requests"].as_u64().unwrap(), 3);
    let diff_bytes = reqs[2].bytes;
    eprintln!(
        "10 back through ferry-server: {} requests, {logged} bytes (head {}, manifest {}, diff {diff_bytes}); the archive ranges instead: {archive_ranges} bytes",
        reqs.len(),
        reqs[0].bytes,
        reqs[1].bytes
    );
    assert!(
        diff_bytes * 4 < archive_ranges,
        "diff {diff_bytes} not far below the archive ranges {archive_ranges}"
    );

    // Kept in the repository as an ordinary object the index names: the next agent
    // gets the same bytes without a second job, and a static host serves the object.
    let Some(IndexEntry::Diff(object)) = index_entry(&p.repo(), &releases[0], eleventh) else {
        panic!("no index entry for 1 -> 11");
    };
    assert_eq!(object.size, diff_bytes);
    let before = srv.requests().len();
    assert_eq!(lagging.update()["to"], v(11));
    tree_eq(&lagging.current(), &chain.release(11));
    let reqs = srv.requests()[before..].to_vec();
    assert_eq!(reqs.len(), 3, "{reqs:?}");
    assert_eq!(reqs[2].bytes, diff_bytes);
    assert_eq!(metric(&srv.url, "produced"), 1.0);
    assert_eq!(metric(&srv.url, "served"), 2.0);
    let (_, _, text) = get(&srv.url, "/metrics", "");
    promtool_check(&String::from_utf8(text).unwrap());
    let nginx = Nginx::start(&p.repo());
    let (status, head, body) = get(&nginx.url, &object_url_path(&object.hash.to_hex()), "");
    assert_eq!(status, 200, "{head}");
    assert_eq!(Digest::of(&body), object.hash);
}

#[test]
fn a_static_host_is_never_asked_and_the_archive_serves() {
    let p = Publisher::new("stable");
    let chain = Chain::new(11);
    p.publish_with(&v(1), &chain.release(1), PUBLISH);
    let nginx = Nginx::start(&p.repo());
    let agent = Agent::init(&nginx.url, "stable", &p.public_key(), &[]);
    assert_eq!(agent.update()["to"], v(1));
    for k in 2..=11 {
        p.publish_with(&v(k), &chain.release(k), PUBLISH);
    }
    let out = agent.ferry("update", &["--dry-run"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("ask the server"), "{text}");
    let before = nginx.requests().len();
    assert_eq!(agent.update()["to"], v(11));
    tree_eq(&agent.current(), &chain.release(11));
    let reqs = nginx.requests()[before..].to_vec();
    super::pipeline::assert_three_requests(&reqs, "/channels/stable/head");
    assert!(
        reqs.iter().all(|r| !r.path.starts_with("/diffs/")),
        "{reqs:?}"
    );
}

/// The first diff object (`FRYD`) in the repository's objects.
fn a_listed_diff(repo: &Path) -> Vec<u8> {
    for fan in std::fs::read_dir(repo.join("objects")).unwrap() {
        let fan = fan.unwrap().path();
        if !fan.is_dir() {
            continue;
        }
        for o in std::fs::read_dir(&fan).unwrap() {
            let bytes = std::fs::read(o.unwrap().path()).unwrap();
            if bytes.starts_with(b"FRYD") {
                return bytes;
            }
        }
    }
    panic!("no diff object in {}", repo.display());
}

#[test]
fn refusals_and_bad_diffs_send_the_agent_to_the_archive_with_its_release_intact() {
    let p = Publisher::new("stable");
    let chain = Chain::new(12);
    let first = p.publish_with(&v(1), &chain.release(1), PUBLISH);
    let srv = Server::start_with(&p.repo(), ON_DEMAND);
    let roots: Vec<Agent> = (0..5)
        .map(|_| Agent::init(&srv.url, "stable", &p.public_key(), &[]))
        .collect();
    let refs: Vec<&Agent> = roots.iter().collect();
    let releases = publish_rest(first, 11, &refs, &p, &chain);
    let eleventh = releases[10].clone();
    let index = p.repo().join(diff_index_path(
        &manifest_hash(&releases[0]),
        &manifest_hash(&eleventh),
    ));
    std::fs::create_dir_all(index.parent().unwrap()).unwrap();
    // What a hostile server (or a damaged repository) sends for 1 -> 11.
    let store = |bytes: &[u8]| {
        let object = ferry_format::id::ObjectRef::of(bytes);
        let path = p.object_file(&object.hash.to_hex());
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, bytes).unwrap();
        std::fs::write(&index, IndexEntry::Diff(object).encode()).unwrap();
    };

    // Each update: the server's answer fails, the archive serves, the agent names
    // why.
    let expect_archive = |a: &Agent, to: &Value, why: &str| {
        let before = srv.requests().len();
        let out = a.ferry("update", &["--json"]);
        ferry_tests::assert_ok(&out, "update");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("no diff from 1.0.0 made by the server") && err.contains(why),
            "expected {why:?} in: {err}"
        );
        let r: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(r["to"], to["version"]);
        let reqs = srv.requests()[before..].to_vec();
        let paths: Vec<&str> = reqs.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(paths.len(), 4, "head, manifest, diff, archive: {paths:?}");
        assert!(paths[2].starts_with("/diffs/"), "{paths:?}");
        assert_eq!(
            paths[3],
            object_url_path(to["archive"].as_str().unwrap()),
            "{paths:?}"
        );
        assert_eq!(reqs[3].status, 206);
        let logged: u64 = reqs.iter().map(|r| r.bytes).sum();
        (r, reqs, logged)
    };

    // 0. Garbage, and no archive to fall back to: the update fails and the release
    // that was active stays active and intact.
    store(&noise(9, 5000));
    let archive = p.object_file(eleventh["archive"].as_str().unwrap());
    let aside = archive.with_extension("aside");
    std::fs::rename(&archive, &aside).unwrap();
    let out = roots[4].ferry("update", &[]);
    assert!(
        !out.status.success(),
        "update without a usable diff or archive"
    );
    std::fs::rename(&aside, &archive).unwrap();
    assert_eq!(roots[4].active().as_deref(), Some("1.0.0"));
    tree_eq(&roots[4].current(), &chain.release(1));
    ferry_tests::assert_ok(&roots[4].ferry("verify", &[]), "verify");

    // 1. Garbage where the diff should be.
    let (_, _, _) = expect_archive(&roots[0], &eleventh, "applying the diff from 1.0.0");
    tree_eq(&roots[0].current(), &chain.release(11));
    // 2. A real diff object, made for another base (one the manifest lists).
    store(&a_listed_diff(&p.repo()));
    expect_archive(&roots[1], &eleventh, "made against manifest");
    tree_eq(&roots[1].current(), &chain.release(11));
    // 3. More bytes than the archive ranges it would replace: refused by its
    // length, none of it read.
    store(&noise(10, 3_000_000));
    let (r, reqs, logged) = expect_archive(&roots[2], &eleventh, "larger than");
    tree_eq(&roots[2].current(), &chain.release(11));
    assert!(reqs[2].bytes == 3_000_000, "{reqs:?}");
    assert_eq!(
        r["bytes_downloaded"].as_u64().unwrap(),
        logged - reqs[2].bytes,
        "the agent read some of an oversized diff"
    );
    // 4. A pair no head retains any more: 404, then the archive.
    let twelfth = p.publish_with(&v(12), &chain.release(12), &["--retain", "11"]);
    expect_archive(&roots[3], &twelfth, "404");
    tree_eq(&roots[3].current(), &chain.release(12));
    assert!(metric(&srv.url, "refused") >= 1.0);
}

#[test]
fn agents_asking_for_one_pair_at_once_share_one_job() {
    let p = Publisher::new("stable");
    let chain = Chain::new(11);
    let first = p.publish_with(&v(1), &chain.release(1), PUBLISH);
    let srv = Server::start_with(&p.repo(), ON_DEMAND);
    let agents: Vec<Agent> = (0..4)
        .map(|_| Agent::init(&srv.url, "stable", &p.public_key(), &[]))
        .collect();
    for a in &agents {
        assert_eq!(a.update()["to"], v(1));
    }
    let mut last = first.clone();
    for k in 2..=11 {
        last = p.publish_with(&v(k), &chain.release(k), PUBLISH);
    }
    // Six requests at the same instant, each willing to wait: one job answers all.
    let path = diff_path(&first, &last);
    let start = std::sync::Barrier::new(6);
    let answers: Vec<(u16, String, Vec<u8>)> = std::thread::scope(|s| {
        let asking: Vec<_> = (0..6)
            .map(|_| {
                s.spawn(|| {
                    start.wait();
                    get(&srv.url, &path, "Ferry-Wait: 40\r\n")
                })
            })
            .collect();
        asking.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (status, head, body) in &answers {
        assert_eq!(*status, 200, "{head}");
        assert_eq!(body, &answers[0].2);
    }
    assert_eq!(metric(&srv.url, "started"), 1.0, "one job for six requests");
    assert_eq!(metric(&srv.url, "produced"), 1.0);
    assert_eq!(metric(&srv.url, "served"), 6.0);

    // Then the agents, at once too: every one takes it in 3 requests, no new job.
    let before = srv.requests().len();
    let results: Vec<Value> = std::thread::scope(|s| {
        let running: Vec<_> = agents.iter().map(|a| s.spawn(|| a.update())).collect();
        running.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (a, r) in agents.iter().zip(&results) {
        assert_eq!(r["to"], v(11));
        assert_eq!(r["requests"].as_u64().unwrap(), 3, "{r}");
        tree_eq(&a.current(), &chain.release(11));
    }
    let reqs = srv.requests()[before..].to_vec();
    let diffs: Vec<_> = reqs
        .iter()
        .filter(|r| r.path.starts_with("/diffs/"))
        .collect();
    assert_eq!(diffs.len(), 4, "{reqs:?}");
    assert!(diffs.iter().all(|r| r.status == 200), "{diffs:?}");
    assert_eq!(metric(&srv.url, "started"), 1.0, "a job for a made pair");
    assert_eq!(metric(&srv.url, "produced"), 1.0);
    assert_eq!(metric(&srv.url, "served"), 10.0);
}

#[test]
fn hostile_requests_are_refused_without_work() {
    let p = Publisher::new("stable");
    let chain = Chain::new(3);
    let rels: Vec<Value> = (1..=3)
        .map(|k| p.publish_with(&v(k), &chain.release(k), PUBLISH))
        .collect();
    let srv = Server::start_with(
        &p.repo(),
        &["--diffs-on-demand", "--diff-max-input", "1MiB"],
    );
    // The head says the server makes diffs; a plain server's does not.
    let (_, head, _) = get(&srv.url, "/channels/stable/head", "");
    assert!(
        head.to_ascii_lowercase().contains("ferry-diffs: on-demand"),
        "{head}"
    );
    let plain = Server::start(&p.repo());
    let (_, head, _) = get(&plain.url, "/channels/stable/head", "");
    assert!(!head.to_ascii_lowercase().contains("ferry-diffs"), "{head}");
    let (status, _, _) = get(&plain.url, &diff_path(&rels[0], &rels[2]), "");
    assert_eq!(
        status, 404,
        "a server without --diffs-on-demand makes nothing"
    );

    let (a, c) = (manifest_hash(&rels[0]), manifest_hash(&rels[2]));
    let archive = Digest::from_hex(rels[2]["archive"].as_str().unwrap()).unwrap();
    let unknown = Digest::of(b"no such manifest");
    for path in [
        // Not manifests a head retains: an archive, an unknown name.
        format!("/diffs/{}/{}", a.to_hex(), archive.to_hex()),
        format!("/diffs/{}/{}", unknown.to_hex(), c.to_hex()),
        // Not the request shape: the same manifest twice, upper case, traversal,
        // the index itself.
        format!("/diffs/{}/{}", a.to_hex(), a.to_hex()),
        format!("/diffs/{}/{}", a.to_hex().to_uppercase(), c.to_hex()),
        format!("/diffs/../objects/{}", c.to_hex()),
        format!("/diffs/{}/..%2f..%2fchannels%2fstable%2fhead", a.to_hex()),
        format!("/{}", diff_index_path(&a, &c)),
    ] {
        let (status, head, _) = get(&srv.url, &path, "");
        assert_eq!(status, 404, "{path}: {head}");
    }
    // Over --diff-max-input (the base's files are 1.6 MB): 413, no job.
    let (status, head, _) = get(
        &srv.url,
        &diff_path(&rels[0], &rels[2]),
        "Ferry-Wait: 5\r\n",
    );
    assert_eq!(status, 413, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("cache-control: no-store"),
        "{head}"
    );
    assert_eq!(metric(&srv.url, "produced"), 0.0);
    assert_eq!(metric(&srv.url, "refused"), 3.0);
    assert!(!p.repo().join("diff-index").exists());
}

/// `ferry-server gc --grace 1h` on `p`'s repository, its output.
fn gc(p: &Publisher, dry_run: bool) -> String {
    let repo = p.repo();
    let mut args = vec!["gc", "--repo", repo.to_str().unwrap(), "--grace", "1h"];
    if dry_run {
        args.push("--dry-run");
    }
    let out = ferry_tests::run(ferry_tests::bin("ferry-server"), &args);
    ferry_tests::assert_ok(&out, "gc");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn gc_keeps_the_diffs_of_retained_pairs_and_drops_the_others() {
    let p = Publisher::new("stable");
    let chain = Chain::new(5);
    let depth1 = &["--diff-depth", "1", "--retain", "3"];
    let first = p.publish_with(&v(1), &chain.release(1), depth1);
    let srv = Server::start_with(&p.repo(), ON_DEMAND);
    let agent = Agent::init(&srv.url, "stable", &p.public_key(), &[]);
    assert_eq!(agent.update()["to"], v(1));
    p.publish_with(&v(2), &chain.release(2), depth1);
    let third = p.publish_with(&v(3), &chain.release(3), depth1);
    assert_eq!(agent.update()["to"], v(3));
    let Some(IndexEntry::Diff(object)) = index_entry(&p.repo(), &first, &third) else {
        panic!("no diff made for 1 -> 3");
    };
    let file = p.object_file(&object.hash.to_hex());
    let index = p.repo().join(diff_index_path(
        &manifest_hash(&first),
        &manifest_hash(&third),
    ));
    let age = |path: &Path| {
        let out = std::process::Command::new("touch")
            .args(["-d", "2 hours ago"])
            .arg(path)
            .output()
            .unwrap();
        ferry_tests::assert_ok(&out, "touch -d");
    };
    age(&file);
    // 1 and 3 are both retained: the diff stays.
    let text = gc(&p, false);
    assert!(file.is_file() && index.is_file(), "{text}");
    // Once no head lists 1, the pair's entry goes, and its object with the other
    // unreferenced ones (a dry run changes nothing).
    p.publish_with(&v(4), &chain.release(4), depth1);
    p.publish_with(&v(5), &chain.release(5), depth1);
    let text = gc(&p, true);
    assert!(index.is_file(), "{text}");
    assert!(text.contains(&object.hash.to_hex()), "{text}");
    age(&file);
    let text = gc(&p, false);
    assert!(!index.exists() && !file.exists(), "{text}");
}

#[test]
fn an_agent_that_will_not_wait_takes_the_archive_and_the_next_one_gets_the_diff() {
    let p = Publisher::new("stable");
    let chain = Chain::new(5);
    let depth1 = &["--diff-depth", "1", "--retain", "6"];
    let first = p.publish_with(&v(1), &chain.release(1), depth1);
    let srv = Server::start_with(&p.repo(), ON_DEMAND);
    let impatient = Agent::init(&srv.url, "stable", &p.public_key(), &[]);
    let next = Agent::init(&srv.url, "stable", &p.public_key(), &[]);
    for a in [&impatient, &next] {
        let config = a.root().join(".ferry/config.toml");
        let text = std::fs::read_to_string(&config).unwrap();
        let text = text.replace("# diff_wait = \"30s\"", "diff_wait = \"0s\"");
        assert!(text.contains("\ndiff_wait = \"0s\""), "{text}");
        std::fs::write(&config, text).unwrap();
        assert_eq!(a.update()["to"], v(1));
    }
    let mut releases = vec![first];
    for k in 2..=5 {
        releases.push(p.publish_with(&v(k), &chain.release(k), depth1));
    }
    // A request that waits for nothing starts the job and is told when to come back.
    let (status, head, _) = get(&srv.url, &diff_path(&releases[1], &releases[4]), "");
    assert_eq!(status, 503, "{head}");
    let head = head.to_ascii_lowercase();
    assert!(head.contains("retry-after: 10"), "{head}");
    assert!(head.contains("cache-control: no-store"), "{head}");

    // The agent asks once, gets 503, and takes the archive at once.
    let before = srv.requests().len();
    let out = impatient.ferry("update", &["--json"]);
    ferry_tests::assert_ok(&out, "update");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("503"), "{err}");
    tree_eq(&impatient.current(), &chain.release(5));
    let reqs = srv.requests()[before..].to_vec();
    let paths: Vec<&str> = reqs.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths.len(), 4, "{paths:?}");
    assert_eq!(reqs[2].status, 503, "{reqs:?}");
    assert_eq!(reqs[3].status, 206, "{reqs:?}");
    assert!(metric(&srv.url, "pending") >= 2.0);

    // The job went on: once it is done, the next agent takes the diff in 3 requests.
    for _ in 0..200 {
        if index_entry(&p.repo(), &releases[0], &releases[4]).is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        matches!(
            index_entry(&p.repo(), &releases[0], &releases[4]),
            Some(IndexEntry::Diff(_))
        ),
        "the job did not finish"
    );
    let before = srv.requests().len();
    let r = next.update();
    assert_eq!(r["to"], v(5));
    tree_eq(&next.current(), &chain.release(5));
    let reqs = srv.requests()[before..].to_vec();
    assert_eq!(reqs.len(), 3, "{reqs:?}");
    assert!(reqs[2].path.starts_with("/diffs/") && reqs[2].status == 200);
}

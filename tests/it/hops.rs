//! Two hops from a static host (FORMAT.md §8): with diff bases at distances 1, 2, 5 and
//! 8 (`--diff-bases 1,2,5,8`; the default adds 3 and 10, which makes a jump of 10 one
//! diff), an agent 7 or 10 releases behind a real nginx reaches the
//! new release through one intermediate release in at most 5 requests (head, manifest,
//! the intermediate manifest, one diff per hop), counted in nginx's access log; a
//! corrupt intermediate manifest or diff, or a kill at any step, leaves the active
//! release intact and the update falls back to the archive or works when run again.

use std::path::Path;
use std::process::Command;

use ferry_tests::nginx::Nginx;
use ferry_tests::process::LoggedRequest;
use ferry_tests::tree::{noise, put, snapshot};
use ferry_tests::{Agent, Publisher, bin};
use serde_json::Value;
use tempfile::TempDir;

use super::fixtures::{tree_eq, v};
use super::pipeline::object_url_path;

/// Release `n` of a tree whose 2 MB binary gets 2 KB of new bytes per release: every
/// diff is a few KB, while the archive ranges of a jump are one chunk per release.
fn hop_release(root: &Path, n: u64) {
    let mut bin = noise(1, 2_000_000);
    for k in 2..=n {
        let at = 100_000 + (k as usize) * 170_000;
        bin[at..at + 2000].copy_from_slice(&noise(100 + k, 2000));
    }
    put(root, "bin/app", &bin, 0o755);
    put(root, "lib/core.so", &noise(2, 300_000), 0o644);
    put(
        root,
        "share/README",
        format!("release {n}\n").as_bytes(),
        0o644,
    );
}

struct Chain {
    sources: TempDir,
    p: Publisher,
    reports: Vec<Value>,
}

impl Chain {
    fn new() -> Chain {
        let sources = tempfile::tempdir().expect("tempdir");
        for k in 1..=11 {
            hop_release(&sources.path().join(k.to_string()), k);
        }
        Chain {
            sources,
            p: Publisher::new("stable"),
            reports: Vec::new(),
        }
    }

    fn source(&self, k: u64) -> std::path::PathBuf {
        self.sources.path().join(k.to_string())
    }

    /// Publishes releases up to `k` with diffs from distances 1, 2, 5 and 8.
    fn publish_to(&mut self, k: u64) {
        for n in self.reports.len() as u64 + 1..=k {
            let r = self
                .p
                .publish_with(&v(n), &self.source(n), &["--diff-bases", "1,2,5,8"]);
            self.reports.push(r);
        }
    }

    fn report(&self, k: u64) -> &Value {
        &self.reports[k as usize - 1]
    }

    /// An agent that installed release `k` (the latest published).
    fn agent_on(&self, nginx: &Nginx, k: u64) -> Agent {
        let a = Agent::init(&nginx.url, "stable", &self.p.public_key(), &[]);
        assert_eq!(a.update()["to"], v(k));
        a
    }
}

/// Every object of the repository but archives and manifests: diffs and manifest diffs.
fn diff_objects(repo: &Path, reports: &[Value]) -> Vec<std::path::PathBuf> {
    let kept: Vec<String> = reports
        .iter()
        .flat_map(|r| {
            [
                r["archive"].as_str().unwrap(),
                r["manifest"].as_str().unwrap(),
            ]
        })
        .map(str::to_string)
        .collect();
    let mut out = Vec::new();
    for shard in std::fs::read_dir(repo.join("objects")).unwrap().flatten() {
        for f in std::fs::read_dir(shard.path()).unwrap().flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            if !kept.contains(&name) {
                out.push(f.path());
            }
        }
    }
    out
}

fn flip_last_byte(path: &Path) {
    let mut data = std::fs::read(path).unwrap();
    let n = data.len();
    data[n - 1] ^= 0x55;
    std::fs::write(path, data).unwrap();
}

/// What an update from a static host asked for, checked: at most 5 requests, the
/// intermediate release's manifest among them, no archive range.
fn assert_two_hops(reqs: &[LoggedRequest], r: &Value, chain: &Chain, target: u64) {
    assert_eq!(r["via"], "hops", "{r}");
    let through = r["through"].as_str().expect("the intermediate release");
    let k: u64 = through.split('.').next().unwrap().parse().unwrap();
    assert!(k < target, "{through}");
    let archive = object_url_path(chain.report(target)["archive"].as_str().unwrap());
    let via_manifest = object_url_path(chain.report(k)["manifest"].as_str().unwrap());
    assert!(reqs.len() <= 5, "{} requests: {reqs:#?}", reqs.len());
    assert_eq!(r["requests"].as_u64().unwrap(), reqs.len() as u64);
    assert!(
        reqs.iter()
            .all(|q| (q.status == 200 || q.status == 206) && q.path != archive),
        "{reqs:#?}"
    );
    assert!(reqs.iter().any(|q| q.path == via_manifest), "{reqs:#?}");
    let logged: u64 = reqs.iter().map(|q| q.bytes).sum();
    assert_eq!(r["bytes_downloaded"].as_u64().unwrap(), logged);
    // The plan priced the hops exactly: all but the head and the target's manifest.
    let planned = r["planned_bytes"].as_u64().unwrap();
    assert_eq!(planned + reqs[0].bytes + reqs[1].bytes, logged, "{r}");
    // Far below the archive ranges (a 100 KB chunk of the binary per release).
    assert!(logged < 100_000, "{logged}");
}

/// The intermediate release was never installed: no folder, no record, no history.
fn assert_not_installed(agent: &Agent, k: &str) {
    let versions: Vec<String> = std::fs::read_dir(agent.root().join("versions"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!versions.iter().any(|f| f.starts_with(k)), "{versions:?}");
    let state = std::fs::read_to_string(agent.root().join(".ferry/state.json")).unwrap();
    assert!(!state.contains(&format!("\"{k}\"")), "{state}");
    let history = std::fs::read_to_string(agent.root().join(".ferry/history.jsonl")).unwrap();
    assert!(!history.contains(&format!("\"{k}\"")), "{history}");
    assert!(!agent.root().join(".ferry/staging").exists());
}

#[test]
fn seven_and_ten_back_take_two_hops_in_at_most_five_requests() {
    let mut chain = Chain::new();
    chain.publish_to(1);
    let nginx = Nginx::start(&chain.p.repo());
    let ten_back = chain.agent_on(&nginx, 1);
    chain.publish_to(4);
    let seven_back = chain.agent_on(&nginx, 4);
    chain.publish_to(11);
    // Release 11 lists diffs from 10, 9, 6 and 3 (distances 1, 2, 5, 8).
    let bases: Vec<&str> = chain.report(11)["diffs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["base"].as_str().unwrap())
        .collect();
    assert_eq!(bases, [v(10), v(9), v(6), v(3)]);

    for (agent, from) in [(&seven_back, 4), (&ten_back, 1)] {
        let before = nginx.requests().len();
        let out = agent.ferry("update", &["--json"]);
        ferry_tests::assert_ok(&out, "update");
        let r: Value = serde_json::from_slice(&out.stdout).unwrap();
        let reqs = nginx.requests()[before..].to_vec();
        assert_eq!(r["from"], v(from));
        assert_eq!(r["to"], v(11));
        assert_two_hops(&reqs, &r, &chain, 11);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("two hops through"), "{err}");
        tree_eq(&agent.current(), &chain.source(11));
        assert_not_installed(agent, r["through"].as_str().unwrap());
        // The release it left is retained as it was.
        tree_eq(
            &agent.root().join(format!("versions/{}", v(from))),
            &chain.source(from),
        );
    }
}

#[test]
fn a_corrupt_intermediate_manifest_falls_back_to_the_archive() {
    let mut chain = Chain::new();
    chain.publish_to(1);
    let nginx = Nginx::start(&chain.p.repo());
    let agent = chain.agent_on(&nginx, 1);
    chain.publish_to(11);
    // Every release between 1 and 11 has a manifest that no longer matches its hash.
    for k in 2..=10 {
        flip_last_byte(
            &chain
                .p
                .object_file(chain.report(k)["manifest"].as_str().unwrap()),
        );
    }
    let out = agent.ferry("update", &["--json"]);
    ferry_tests::assert_ok(&out, "update");
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("(two hops): its manifest is unusable")
            && err.contains("the active release is untouched, taking the direct plan"),
        "{err}"
    );
    assert_eq!(r["via"], "archive", "{r}");
    tree_eq(&agent.current(), &chain.source(11));
    tree_eq(&agent.root().join("versions/1.0.0"), &chain.source(1));
}

#[test]
fn a_corrupt_intermediate_diff_falls_back_to_the_archive() {
    let mut chain = Chain::new();
    chain.publish_to(1);
    let nginx = Nginx::start(&chain.p.repo());
    let agent = chain.agent_on(&nginx, 1);
    chain.publish_to(10);
    // The diffs of releases 2..=10 (the first hop's) are damaged; release 11's (the
    // second hop's, published after) are sound.
    for f in diff_objects(&chain.p.repo(), &chain.reports) {
        flip_last_byte(&f);
    }
    chain.publish_to(11);
    let before = nginx.requests().len();
    let out = agent.ferry("update", &["--json"]);
    ferry_tests::assert_ok(&out, "update");
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("(two hops): the first hop failed")
            && err.contains("hash mismatch")
            && err.contains("the active release is untouched, taking the direct plan"),
        "{err}"
    );
    assert_eq!(r["via"], "archive", "{r}");
    let archive = object_url_path(chain.report(11)["archive"].as_str().unwrap());
    assert!(
        nginx.requests()[before..]
            .iter()
            .any(|q| q.path == archive && q.status == 206)
    );
    tree_eq(&agent.current(), &chain.source(11));
    assert_not_installed(&agent, r["through"].as_str().unwrap_or("2.0.0"));
    tree_eq(&agent.root().join("versions/1.0.0"), &chain.source(1));
}

/// `ferry update` on `root` with the `fail` crate's FAILPOINTS (and a trace file).
fn update_with(
    root: &Path,
    failpoints: Option<&str>,
    trace: Option<&Path>,
) -> std::process::Output {
    let mut cmd = Command::new(bin("ferry"));
    cmd.args(["update", "--root", root.to_str().unwrap(), "--json"]);
    if let Some(f) = failpoints {
        cmd.env("FAILPOINTS", f);
    }
    if let Some(t) = trace {
        cmd.env("FERRY_FAILPOINT_TRACE", t);
    }
    cmd.output().expect("run ferry")
}

fn copy_root(from: &Path, to: &Path) {
    let ok = Command::new("cp")
        .args(["-a", from.to_str().unwrap(), to.to_str().unwrap()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

#[test]
fn a_kill_at_any_step_of_two_hops_leaves_the_active_release_and_the_next_update_works() {
    let mut chain = Chain::new();
    chain.publish_to(1);
    let nginx = Nginx::start(&chain.p.repo());
    let agent = chain.agent_on(&nginx, 1);
    chain.publish_to(8);
    let start = snapshot(&agent.root().join("current"));
    let work = tempfile::tempdir().unwrap();
    // One traced run lists the steps two hops pass.
    let traced = work.path().join("traced");
    copy_root(agent.root(), &traced);
    let trace = work.path().join("trace");
    let out = update_with(&traced, None, Some(&trace));
    ferry_tests::assert_ok(&out, "update");
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["via"], "hops", "{r}");
    let mut points: Vec<String> = std::fs::read_to_string(&trace)
        .expect("the binaries carry failpoints: cargo build --workspace --bins --examples")
        .lines()
        .map(str::to_string)
        .collect();
    points.dedup();
    let mut seen = std::collections::BTreeSet::new();
    points.retain(|p| seen.insert(p.clone()));
    assert!(
        points.iter().any(|p| p == "client::hops::via_built"),
        "{points:?}"
    );
    for point in points.iter().filter(|p| p.starts_with("client::")) {
        let root = work.path().join(point.replace("::", "-"));
        copy_root(agent.root(), &root);
        let out = update_with(&root, Some(&format!("{point}=return")), None);
        assert!(!out.status.success(), "{point}: the run was not killed");
        // Killed before the switch, the old release is active and whole; after it, the
        // new one.
        let active = std::fs::read_link(root.join("current")).unwrap();
        let now = snapshot(&root.join("current"));
        if active.ends_with(v(1)) {
            assert_eq!(now, start, "{point}");
        } else {
            tree_eq(&root.join("current"), &chain.source(8));
        }
        let out = update_with(&root, None, None);
        ferry_tests::assert_ok(&out, "update after the kill");
        tree_eq(&root.join("current"), &chain.source(8));
        let r: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(
            r["to"] == v(8),
            "{point}: {r} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!root.join(".ferry/staging").exists(), "{point}");
    }
}

/// Every update is priced before it is fetched, two hops included: `update --dry-run`
/// announces the hops (3 requests of its own: head, manifest, the intermediate
/// manifest) with the bytes and requests the update then spends after its head and
/// manifest, and the library's plan carries them too: `apply` executes those hops
/// without fetching either manifest again.
#[test]
fn the_dry_run_and_the_librarys_plan_price_two_hops_as_the_update_spends_them() {
    let mut chain = Chain::new();
    chain.publish_to(4);
    let nginx = Nginx::start(&chain.p.repo());
    let cli = chain.agent_on(&nginx, 4);
    let lib = chain.agent_on(&nginx, 4);
    chain.publish_to(11);

    let before = nginx.requests().len();
    let out = cli.ferry("update", &["--dry-run", "--json"]);
    ferry_tests::assert_ok(&out, "update --dry-run");
    let dry: Value = serde_json::from_slice(&out.stdout).unwrap();
    let reqs = nginx.requests()[before..].to_vec();
    assert_eq!(
        reqs.len(),
        3,
        "head, manifest, intermediate manifest: {reqs:#?}"
    );
    assert_eq!(
        (&dry["via"], &dry["requests"]),
        (&Value::from("hops"), &Value::from(3)),
        "{dry}"
    );
    let through = dry["through"]
        .as_str()
        .expect("the intermediate release")
        .to_string();
    assert_eq!(
        std::fs::read_link(cli.root().join("current")).unwrap(),
        std::fs::read_link(lib.root().join("current")).unwrap(),
        "the dry run switched nothing"
    );

    let before = nginx.requests().len();
    let out = cli.ferry("update", &["--json"]);
    ferry_tests::assert_ok(&out, "update");
    let real: Value = serde_json::from_slice(&out.stdout).unwrap();
    let data = nginx.requests()[before + 2..].to_vec();
    assert_eq!(real["through"], through.as_str(), "{real}");
    assert_eq!(
        dry["download_bytes"],
        data.iter().map(|q| q.bytes).sum::<u64>(),
        "{dry} vs {data:#?}"
    );
    assert_eq!(
        dry["download_requests"],
        data.len() as u64,
        "{dry} vs {data:#?}"
    );

    let updater = ferry_client::updater::Updater::open(lib.root()).unwrap();
    let plan = updater.plan().unwrap().expect("release 11 to install");
    let hops = plan.hops.as_ref().expect("two hops in the library's plan");
    assert_eq!(hops.plan.via, through);
    assert_eq!(
        plan.download_bytes(),
        dry["download_bytes"].as_u64().unwrap()
    );
    assert_eq!(
        plan.download_requests(),
        dry["download_requests"].as_u64().unwrap()
    );
    assert!(plan.line.contains("two hops through"), "{}", plan.line);
    let before = nginx.requests().len();
    let applied = updater.apply(&plan, &|_| {}).unwrap();
    let reqs = nginx.requests()[before..].to_vec();
    assert_eq!(applied.through.as_deref(), Some(through.as_str()));
    assert_eq!(applied.to.as_deref(), Some(v(11).as_str()));
    let manifests = [
        object_url_path(chain.report(11)["manifest"].as_str().unwrap()),
        object_url_path(
            chain
                .reports
                .iter()
                .find(|r| r["version"] == through.as_str())
                .unwrap()["manifest"]
                .as_str()
                .unwrap(),
        ),
    ];
    assert!(
        reqs.iter().all(|q| !manifests.contains(&q.path)),
        "{reqs:#?}"
    );
    // The head, then one diff per hop.
    assert_eq!(reqs.len(), 3, "{reqs:#?}");
    tree_eq(&lib.current(), &chain.source(11));
    assert_not_installed(&lib, &through);
}

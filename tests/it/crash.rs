//! Crash safety at every write step. `ferry update`, `ferry rollback`, `ferry-server
//! publish`, `publish --to` and `key new-list` are each run once with failpoint tracing on, which
//! lists every write step (failpoint) they pass, then rerun from the same starting
//! state once per pass, aborting the process there (std::process::abort through the
//! `fail` crate's FAILPOINTS: no unwinding, no destructors, as a kill -9). After each
//! kill: the active release (or the channel head) is the old or the new one and
//! verifies, a rerun converges to the new one without downloading again what the
//! killed run had stored, and no head in the repository names a missing or wrong
//! object. A failpoint added anywhere on these paths is exercised without editing
//! this file. The binaries must carry failpoints: `cargo build --workspace --bins --examples`
//! turns them on through the tests crate's dependency on the `failpoints` features.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ferry_format::head::claimed_key_list;
use ferry_format::id::{Digest, ObjectRef};
use ferry_format::keylist::TrustRoot;
use ferry_format::keys::PublicKey;
use ferry_format::layout::{head_log_path, head_path, key_list_path, object_path};
use ferry_format::verified::{HeadPolicy, verify_head, verify_manifest, verify_pinned_manifest};
use ferry_tests::tree::{noise, put, snapshot};
use ferry_tests::{Agent, Publisher, Server, bin};
use serde_json::Value;
use tempfile::TempDir;

use super::fixtures::v;

/// Where a traced binary appends the name of each failpoint it passes.
const TRACE_VAR: &str = "FERRY_FAILPOINT_TRACE";
/// Ceiling of one command: these releases take well under a second.
const LIMIT: Duration = Duration::from_secs(60);
/// Passes of one point that are killed: the first ones and the last. A point inside
/// a loop (one pass per file written, per piece of a download) repeats the same step
/// on other data; its first few and last passes cover the states it can leave.
const PASSES_PER_POINT: usize = 4;

/// Two small releases of a tree: a binary patched in the middle (diffable), an
/// unchanged library, a new library, a changed text, a directory and a symlink.
struct Releases {
    dir: TempDir,
}

impl Releases {
    fn new() -> Releases {
        let dir = tempfile::tempdir().expect("tempdir");
        for k in 1..=2u64 {
            let root = dir.path().join(k.to_string());
            let mut app = noise(1, 160_000);
            if k == 2 {
                app[70_000..74_000].copy_from_slice(&noise(9, 4000));
                put(&root, "lib/new.so", &noise(5, 50_000), 0o644);
            }
            put(&root, "bin/app", &app, 0o755);
            put(&root, "lib/core.so", &noise(2, 60_000), 0o644);
            put(
                &root,
                "share/README",
                format!("release {k}\n").as_bytes(),
                0o644,
            );
            std::fs::create_dir_all(root.join("var/cache")).unwrap();
            std::os::unix::fs::symlink("app", root.join("bin/app-latest")).unwrap();
        }
        Releases { dir }
    }

    fn src(&self, k: u64) -> PathBuf {
        self.dir.path().join(k.to_string())
    }
}

/// How a run ended.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    Aborted,
    Exited(Output),
}

/// Runs `program args` with `env`, stdout and stderr to files in `dir`, bounded by
/// [`LIMIT`].
fn run_in(dir: &Path, program: &str, args: &[&str], env: &[(&str, &str)]) -> Ended {
    std::fs::create_dir_all(dir).unwrap();
    let (out_path, err_path) = (dir.join("stdout"), dir.join("stderr"));
    let mut child = Command::new(bin(program))
        .args(args)
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn")
        .env("TMPDIR", dir)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {program}: {e}"));
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{program} {args:?} did not finish within {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    if status.signal() == Some(libc::SIGABRT) {
        return Ended::Aborted;
    }
    Ended::Exited(Output {
        status,
        stdout: std::fs::read(&out_path).unwrap(),
        stderr: std::fs::read(&err_path).unwrap(),
    })
}

/// The output of a run that must succeed.
fn succeeded(ended: Ended, what: &str) -> Output {
    match ended {
        Ended::Exited(out) if out.status.success() => out,
        Ended::Exited(out) => panic!(
            "{what} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Ended::Aborted => panic!("{what} aborted without a failpoint armed"),
    }
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).expect("--json prints JSON")
}

/// The failpoints listed in a trace file, in the order passed.
fn read_trace(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// One kill: the `pass`-th (from 0) pass through `point`.
#[derive(Clone, Debug)]
struct Site {
    point: String,
    pass: usize,
    /// Passes through `point` in the traced run.
    of: usize,
}

impl Site {
    /// The `fail` crate's action list that aborts at this pass.
    fn failpoints(&self) -> String {
        match self.pass {
            0 => format!("{}=return", self.point),
            n => format!("{}={n}*off->return", self.point),
        }
    }
}

/// Runs `program args` armed to abort at `site`, tracing into `dir/trace`. Returns
/// whether it was killed there; a run that passed the point fewer times than in the
/// traced run (a download arriving in fewer pieces) must have succeeded instead.
fn kill_at(dir: &Path, program: &str, args: &[&str], site: &Site, case: &str) -> bool {
    std::fs::create_dir_all(dir).unwrap();
    let trace = dir.join("trace");
    let fp = site.failpoints();
    let env = [
        ("FAILPOINTS", fp.as_str()),
        (TRACE_VAR, trace.to_str().unwrap()),
    ];
    let ended = run_in(dir, program, args, &env);
    let killed = ended == Ended::Aborted;
    assert_eq!(
        killed,
        reached(&trace, site),
        "{case}: killed exactly when reached"
    );
    if killed {
        return true;
    }
    succeeded(ended, &format!("{case}, not reached this time"));
    false
}

/// Whether a run traced into `trace` reached `site` (the trace is written before
/// the point acts, so the pass that aborts is in it).
fn reached(trace: &Path, site: &Site) -> bool {
    read_trace(trace)
        .iter()
        .filter(|p| **p == site.point)
        .count()
        > site.pass
}

/// The kill sites of a trace: every point, at its first [`PASSES_PER_POINT`] - 1
/// passes and its last, in the order first reached.
fn sites(trace: &[String]) -> Vec<Site> {
    assert!(
        !trace.is_empty(),
        "no failpoint was passed: the binaries were built without failpoints; build them with `cargo build --workspace --bins --examples`"
    );
    let mut passes: Vec<(String, usize)> = Vec::new();
    for p in trace {
        match passes.iter_mut().find(|(q, _)| q == p) {
            Some((_, n)) => *n += 1,
            None => passes.push((p.clone(), 1)),
        }
    }
    let mut out = Vec::new();
    for (point, n) in passes {
        let mut chosen: Vec<usize> = (0..n.min(PASSES_PER_POINT - 1)).collect();
        if !chosen.contains(&(n - 1)) {
            chosen.push(n - 1);
        }
        out.extend(chosen.into_iter().map(|pass| Site {
            point: point.clone(),
            pass,
            of: n,
        }));
    }
    out
}

/// Copies a tree as is (modes, symlinks).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    let st = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success(), "cp -a {} {}", from.display(), to.display());
}

fn bytes_under(dir: &Path) -> u64 {
    let Ok(items) = std::fs::read_dir(dir) else {
        return 0;
    };
    items
        .flatten()
        .map(|e| {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                bytes_under(&e.path())
            } else {
                m.len()
            }
        })
        .sum()
}

/// The release `current` points to, after checking that it is one of `releases`
/// (version, source), that its tree is that release's, and that `ferry verify` agrees.
fn active_release(root: &Path, releases: &[(String, PathBuf)], case: &str) -> String {
    let link = std::fs::read_link(root.join("current"))
        .unwrap_or_else(|e| panic!("{case}: no current link: {e}"));
    let version = link.file_name().unwrap().to_str().unwrap().to_string();
    let (_, src) = releases
        .iter()
        .find(|(v, _)| *v == version)
        .unwrap_or_else(|| panic!("{case}: current points to {version}"));
    assert_eq!(
        snapshot(&root.join("current")),
        snapshot(src),
        "{case}: the active tree is not release {version}"
    );
    let verify = run_in(
        &root.with_extension("verify"),
        "ferry",
        &["verify", "--root", root.to_str().unwrap()],
        &[],
    );
    succeeded(verify, &format!("{case}: ferry verify"));
    version
}

/// Checks every head of `repo` as an agent initialised with `public_key` would
/// (following the key lists it names, then every object it and its manifests name:
/// present, right size, right hash) and returns each channel's current version.
fn walk_repo(repo: &Path, public_key: &Path, case: &str) -> BTreeMap<String, String> {
    let key = PublicKey::from_text(&std::fs::read_to_string(public_key).unwrap()).unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let object = |r: &ObjectRef, what: &str| {
        let path = repo.join(object_path(&r.hash));
        let bytes = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{case}: {what} {} is missing: {e}", path.display()));
        r.check("object", &bytes)
            .unwrap_or_else(|e| panic!("{case}: {what} {}: {e}", path.display()));
        bytes
    };
    let mut currents = BTreeMap::new();
    let channels = repo.join("channels");
    for entry in std::fs::read_dir(&channels).unwrap().flatten() {
        let channel = entry.file_name().to_str().unwrap().to_string();
        let head_file = repo.join(head_path(&channel));
        let Ok(bytes) = std::fs::read(&head_file) else {
            continue;
        };
        let mut trust = TrustRoot::SingleKey(key);
        let named = claimed_key_list(&bytes).unwrap();
        for version in 1..=named.map_or(0, |k| k.version) {
            let list = std::fs::read(repo.join(key_list_path(version)))
                .unwrap_or_else(|e| panic!("{case}: key list {version} is missing: {e}"));
            trust = trust
                .advance(&list)
                .unwrap_or_else(|e| panic!("{case}: key list {version}: {e}"));
        }
        let policy = HeadPolicy {
            channel: &channel,
            now,
            max_skew: 0,
            last_sequence: None,
            key_list_version: trust.version(),
            last_content_sequence: None,
            rollout_seen: None,
        };
        let trusted = trust.publishers();
        let head = verify_head(&bytes, &trust.head_keys(), &policy)
            .unwrap_or_else(|e| panic!("{case}: head of {channel}: {e}"));
        // The head log holds the current head (it is written first, FORMAT.md §7.1).
        let logged = repo.join(head_log_path(&channel, head.sequence, &Digest::of(&bytes)));
        assert_eq!(
            std::fs::read(&logged).ok().as_deref(),
            Some(&bytes[..]),
            "{case}: the current head of {channel} is not in the head log ({})",
            logged.display()
        );
        for d in &head.content.manifest_diffs {
            object(&d.object, "manifest diff");
            if let Some(c) = &d.chunk_diff {
                object(c, "chunk diff");
            }
        }
        for r in head.releases() {
            let bytes = object(&r.manifest, "manifest");
            // Older releases may be signed by keys a later key list replaced; the
            // head pins them by hash.
            let m = if r.version == head.current().version {
                verify_manifest(&bytes, r, &channel, &trusted)
            } else {
                verify_pinned_manifest(&bytes, r, &channel)
            }
            .unwrap_or_else(|e| panic!("{case}: manifest of {}: {e}", r.version));
            object(&m.archive, "archive");
            for d in &m.diffs {
                object(&d.object, "diff");
            }
        }
        currents.insert(channel, head.current().version.clone());
    }
    currents
}

/// Prints the kills a command was put through. `missed` runs passed their point fewer
/// times than the traced run (a download arriving in fewer pieces) and completed
/// instead; they must stay the exception.
fn report(command: &str, sites: &[Site], missed: usize) {
    let mut points: Vec<(&str, usize)> = sites.iter().map(|s| (s.point.as_str(), s.of)).collect();
    points.sort_unstable();
    points.dedup();
    let passes: usize = points.iter().map(|(_, n)| n).sum();
    let names: Vec<&str> = points.iter().map(|(p, _)| *p).collect();
    eprintln!(
        "{command}: {} kills at {} failpoints ({passes} passes, {missed} not reached again): {}",
        sites.len() - missed,
        points.len(),
        names.join(", ")
    );
    assert!(
        missed * 4 <= sites.len(),
        "{command}: {missed} of {} kill sites were not reached again",
        sites.len()
    );
}

#[test]
fn crash_at_every_write_step_of_update() {
    let releases = Releases::new();
    let p = Publisher::new("stable");
    p.publish(&v(1), &releases.src(1));
    let srv = p.serve();
    // keep = 1: the update also prunes release 1.
    let agent = Agent::init(&srv.url, "stable", &p.public_key(), &["--keep", "1"]);
    agent.update();
    p.publish(&v(2), &releases.src(2));
    let work = tempfile::tempdir().unwrap();
    let known = [(v(1), releases.src(1)), (v(2), releases.src(2))];

    // The reference run: its trace and what a fresh update downloads.
    let fresh = work.path().join("fresh");
    copy_tree(agent.root(), &fresh);
    let trace = work.path().join("fresh.trace");
    let out = succeeded(
        run_in(
            &fresh.with_extension("run"),
            "ferry",
            &["update", "--json", "--root", fresh.to_str().unwrap()],
            &[(TRACE_VAR, trace.to_str().unwrap())],
        ),
        "reference update",
    );
    let fresh_bytes = json(&out)["bytes_downloaded"].as_u64().unwrap();
    let sites = sites(&read_trace(&trace));
    for must in [
        "client::download::part_appended",
        "client::staging::file_written",
        "client::versions::rename",
        "client::switch_current::renamed",
        "client::state::save",
        "client::history::append",
        "client::prune::remove",
    ] {
        assert!(
            sites.iter().any(|s| s.point == must),
            "update never passes {must}"
        );
    }

    let mut missed = 0;
    for (i, site) in sites.iter().enumerate() {
        let case = format!("update killed at {} pass {}", site.point, site.pass);
        let root = work.path().join(format!("case-{i}"));
        copy_tree(agent.root(), &root);
        let root_s = root.to_str().unwrap();
        let dir = root.with_extension("kill");
        if !kill_at(
            &dir,
            "ferry",
            &["update", "--json", "--root", root_s],
            site,
            &case,
        ) {
            missed += 1;
        }
        active_release(&root, &known, &case);
        // What the killed run stored is not downloaded again.
        let stored = bytes_under(&root.join(".ferry/staging/downloads"));
        let rerun = succeeded(
            run_in(
                &root.with_extension("rerun"),
                "ferry",
                &["update", "--json", "--root", root_s],
                &[],
            ),
            &format!("{case}: rerun"),
        );
        let again = json(&rerun)["bytes_downloaded"].as_u64().unwrap();
        assert!(
            again + stored <= fresh_bytes,
            "{case}: the rerun downloaded {again} bytes with {stored} already stored; a fresh update downloads {fresh_bytes}"
        );
        assert_eq!(active_release(&root, &known, &case), v(2), "{case}");
        // Converged means cleaned up too, also when the killed run had already switched
        // and the rerun found nothing to install.
        assert!(
            !root.join(".ferry/staging").exists(),
            "{case}: the rerun left staging behind"
        );
        let folders: Vec<String> = std::fs::read_dir(root.join("versions"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect();
        assert!(
            folders.iter().all(|f| f == "1.0.0" || f == "2.0.0"),
            "{case}: release folders after the rerun: {folders:?}"
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
    report("update", &sites, missed);
}

#[test]
fn crash_at_every_write_step_of_rollback() {
    let releases = Releases::new();
    let p = Publisher::new("stable");
    p.publish(&v(1), &releases.src(1));
    let srv = p.serve();
    let agent = Agent::init(&srv.url, "stable", &p.public_key(), &[]);
    agent.update();
    p.publish(&v(2), &releases.src(2));
    agent.update();
    let work = tempfile::tempdir().unwrap();
    let known = [(v(1), releases.src(1)), (v(2), releases.src(2))];

    let fresh = work.path().join("fresh");
    copy_tree(agent.root(), &fresh);
    let trace = work.path().join("fresh.trace");
    succeeded(
        run_in(
            &fresh.with_extension("run"),
            "ferry",
            &["rollback", "--json", "--root", fresh.to_str().unwrap()],
            &[(TRACE_VAR, trace.to_str().unwrap())],
        ),
        "reference rollback",
    );
    let sites = sites(&read_trace(&trace));
    assert!(
        sites
            .iter()
            .any(|s| s.point == "client::switch_current::renamed"),
        "rollback never passes the switch"
    );

    let mut missed = 0;
    for (i, site) in sites.iter().enumerate() {
        let case = format!("rollback killed at {} pass {}", site.point, site.pass);
        let root = work.path().join(format!("case-{i}"));
        copy_tree(agent.root(), &root);
        let root_s = root.to_str().unwrap();
        let dir = root.with_extension("kill");
        if !kill_at(
            &dir,
            "ferry",
            &["rollback", "--json", "--root", root_s],
            site,
            &case,
        ) {
            missed += 1;
        }
        active_release(&root, &known, &case);
        let rerun = succeeded(
            run_in(
                &root.with_extension("rerun"),
                "ferry",
                &["rollback", "--to", &v(1), "--json", "--root", root_s],
                &[],
            ),
            &format!("{case}: rerun"),
        );
        assert_eq!(json(&rerun)["bytes_downloaded"], 0, "{case}");
        assert_eq!(active_release(&root, &known, &case), v(1), "{case}");
        // The rollback's pin survived: an update stays on release 1.
        succeeded(
            run_in(
                &root.with_extension("update"),
                "ferry",
                &["update", "--json", "--root", root_s],
                &[],
            ),
            &format!("{case}: update after the rollback"),
        );
        assert_eq!(
            active_release(&root, &known, &case),
            v(1),
            "{case}: pin lost"
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
    report("rollback", &sites, missed);
}

/// `ferry agent --once` with hooks: killed at every write step (and between its hooks),
/// the active release is one of the two and verifies, and the next check converges on
/// release 2 with its trial finished (never trusted because a health check was cut off).
#[test]
fn crash_at_every_write_step_of_an_agent_check_with_hooks() {
    let releases = Releases::new();
    let p = Publisher::new("stable");
    p.publish(&v(1), &releases.src(1));
    let srv = p.serve();
    let agent = Agent::init(&srv.url, "stable", &p.public_key(), &["--keep", "1"]);
    agent.update();
    let cfg = agent.root().join(".ferry/config.toml");
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(
        "post_switch = \"echo \\\"$FERRY_FROM>$FERRY_TO\\\" >> ../hooks.log\"\n\
         health_check = \"test -f \\\"$FERRY_CURRENT/bin/app\\\"\"\n\
         health_delay = \"0s\"\n",
    );
    std::fs::write(&cfg, text).unwrap();
    p.publish(&v(2), &releases.src(2));
    let work = tempfile::tempdir().unwrap();
    let known = [(v(1), releases.src(1)), (v(2), releases.src(2))];

    let fresh = work.path().join("fresh");
    copy_tree(agent.root(), &fresh);
    let trace = work.path().join("fresh.trace");
    succeeded(
        run_in(
            &fresh.with_extension("run"),
            "ferry",
            &["agent", "--once", "--root", fresh.to_str().unwrap()],
            &[(TRACE_VAR, trace.to_str().unwrap())],
        ),
        "reference check",
    );
    let sites = sites(&read_trace(&trace));
    for must in [
        "client::switch_current::renamed",
        "client::hooks::post_switch_ran",
        "client::hooks::health_passed",
    ] {
        assert!(
            sites.iter().any(|s| s.point == must),
            "the agent never passes {must}"
        );
    }

    let mut missed = 0;
    for (i, site) in sites.iter().enumerate() {
        let case = format!("agent killed at {} pass {}", site.point, site.pass);
        let root = work.path().join(format!("case-{i}"));
        copy_tree(agent.root(), &root);
        let root_s = root.to_str().unwrap();
        let dir = root.with_extension("kill");
        if !kill_at(
            &dir,
            "ferry",
            &["agent", "--once", "--root", root_s],
            site,
            &case,
        ) {
            missed += 1;
        }
        active_release(&root, &known, &case);
        succeeded(
            run_in(
                &root.with_extension("rerun"),
                "ferry",
                &["agent", "--once", "--root", root_s],
                &[],
            ),
            &format!("{case}: rerun"),
        );
        assert_eq!(active_release(&root, &known, &case), v(2), "{case}");
        let state: Value =
            serde_json::from_slice(&std::fs::read(root.join(".ferry/state.json")).unwrap())
                .unwrap();
        assert!(state["trial"].is_null(), "{case}: trial left open: {state}");
        assert!(
            state["bad"].is_null(),
            "{case}: a healthy release marked bad"
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
    report("agent --once", &sites, missed);
}

/// `ferry-server publish` of release 2 into `repo`.
fn publish_args<'a>(key: &'a str, repo: &'a str, src: &'a str, v2: &'a str) -> Vec<&'a str> {
    vec![
        "publish",
        "--repo",
        repo,
        "--key",
        key,
        "--channel",
        "stable",
        "--version",
        v2,
        "--zstd-level",
        "3",
        "--json",
        src,
    ]
}

#[test]
fn crash_at_every_write_step_of_publish() {
    let releases = Releases::new();
    let p = Publisher::new("stable");
    p.publish(&v(1), &releases.src(1));
    let work = tempfile::tempdir().unwrap();
    let (src, v2, key) = (releases.src(2), v(2), p.key());
    let (src, key) = (src.to_str().unwrap(), key.to_str().unwrap());

    let fresh = work.path().join("fresh");
    copy_tree(&p.repo(), &fresh);
    let trace = work.path().join("fresh.trace");
    succeeded(
        run_in(
            &fresh.with_extension("run"),
            "ferry-server",
            &publish_args(key, fresh.to_str().unwrap(), src, &v2),
            &[(TRACE_VAR, trace.to_str().unwrap())],
        ),
        "reference publish",
    );
    let sites = sites(&read_trace(&trace));
    for must in [
        "server::publish::archive_written",
        "server::publish::manifest_written",
        "server::head::write",
        "server::persist::synced",
    ] {
        assert!(
            sites.iter().any(|s| s.point == must),
            "publish never passes {must}"
        );
    }

    let mut missed = 0;
    for (i, site) in sites.iter().enumerate() {
        let case = format!("publish killed at {} pass {}", site.point, site.pass);
        let repo = work.path().join(format!("case-{i}"));
        copy_tree(&p.repo(), &repo);
        let args = publish_args(key, repo.to_str().unwrap(), src, &v2);
        if !kill_at(
            &repo.with_extension("kill"),
            "ferry-server",
            &args,
            site,
            &case,
        ) {
            missed += 1;
        }
        let current = walk_repo(&repo, &p.public_key(), &case)["stable"].clone();
        assert!(
            current == v(1) || current == v2,
            "{case}: head names {current}"
        );
        if current == v(1) {
            succeeded(
                run_in(&repo.with_extension("rerun"), "ferry-server", &args, &[]),
                &format!("{case}: rerun"),
            );
        }
        assert_eq!(walk_repo(&repo, &p.public_key(), &case)["stable"], v2);
        std::fs::remove_dir_all(&repo).unwrap();
    }
    report("publish", &sites, missed);
}

const TOKEN: &str = "crash-test-upload-token-0123456789";

/// `ferry-server serve` of `repo` with the upload API for `p`'s key.
fn upload_server(p: &Publisher, repo: &Path, token: &Path, env: &[(&str, &str)]) -> Server {
    Server::start_with_env(
        repo,
        &[
            "--upload-token-file",
            token.to_str().unwrap(),
            "--public-key",
            p.public_key().to_str().unwrap(),
        ],
        env,
    )
}

/// Environment variables for one process.
type Env<'a> = &'a [(&'a str, &'a str)];

/// Which process a remote publish kill lands in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Publisher,
    Server,
}

#[test]
fn crash_at_every_write_step_of_remote_publish() {
    let releases = Releases::new();
    let p = Publisher::new("stable");
    p.publish(&v(1), &releases.src(1));
    let work = tempfile::tempdir().unwrap();
    let token = work.path().join("token");
    std::fs::write(&token, TOKEN).unwrap();
    let (src, v2) = (releases.src(2), v(2));
    let src = src.to_str().unwrap();
    let publish_to = |url: &str, dir: &Path, env: &[(&str, &str)]| {
        run_in(
            dir,
            "ferry-server",
            &[
                "publish",
                "--to",
                url,
                "--token-file",
                token.to_str().unwrap(),
                "--key",
                p.key().to_str().unwrap(),
                "--channel",
                "stable",
                "--version",
                &v2,
                "--zstd-level",
                "3",
                "--json",
                src,
            ],
            env,
        )
    };

    let fresh = work.path().join("fresh");
    copy_tree(&p.repo(), &fresh);
    let (ptrace, strace) = (
        work.path().join("publisher.trace"),
        work.path().join("server.trace"),
    );
    {
        let srv = upload_server(&p, &fresh, &token, &[(TRACE_VAR, strace.to_str().unwrap())]);
        succeeded(
            publish_to(
                &srv.url,
                &fresh.with_extension("run"),
                &[(TRACE_VAR, ptrace.to_str().unwrap())],
            ),
            "reference publish --to",
        );
    }
    let server_sites = sites(&read_trace(&strace));
    assert!(
        server_sites
            .iter()
            .any(|s| s.point == "server::upload::head_swap"),
        "the upload API never passes the head swap"
    );
    let all: Vec<(Side, Site)> = sites(&read_trace(&ptrace))
        .into_iter()
        .map(|s| (Side::Publisher, s))
        .chain(server_sites.into_iter().map(|s| (Side::Server, s)))
        .collect();

    let mut missed = 0;
    for (i, (side, site)) in all.iter().enumerate() {
        let case = format!(
            "publish --to killed in the {side:?} at {} pass {}",
            site.point, site.pass
        );
        let repo = work.path().join(format!("case-{i}"));
        copy_tree(&p.repo(), &repo);
        let dir = repo.with_extension("kill");
        std::fs::create_dir_all(&dir).unwrap();
        let (fp, trace) = (site.failpoints(), dir.join("trace"));
        let armed = [
            ("FAILPOINTS", fp.as_str()),
            (TRACE_VAR, trace.to_str().unwrap()),
        ];
        let (server_env, publisher_env): (Env, Env) = match side {
            Side::Server => (&armed, &[]),
            Side::Publisher => (&[], &armed),
        };
        let mut srv = upload_server(&p, &repo, &token, server_env);
        let first = publish_to(&srv.url, &dir, publisher_env);
        let killed = match side {
            Side::Publisher => {
                let killed = first == Ended::Aborted;
                assert_eq!(killed, reached(&trace, site), "{case}: killed when reached");
                killed
            }
            Side::Server => {
                // The trace names the pass the server died at; the publisher then fails.
                let died = reached(&trace, site);
                let failed = matches!(&first, Ended::Exited(o) if !o.status.success());
                assert_eq!(died, failed, "{case}: the publisher's outcome: {first:?}");
                if died {
                    srv = upload_server(&p, &repo, &token, &[]);
                }
                died
            }
        };
        if !killed {
            missed += 1;
            succeeded(first, &format!("{case}, not reached this time"));
        }
        let current = walk_repo(&repo, &p.public_key(), &case)["stable"].clone();
        assert!(
            current == v(1) || current == v2,
            "{case}: head names {current}"
        );
        if current == v(1) {
            succeeded(
                publish_to(&srv.url, &repo.with_extension("rerun"), &[]),
                &format!("{case}: rerun"),
            );
        }
        assert_eq!(walk_repo(&repo, &p.public_key(), &case)["stable"], v2);
        drop(srv);
        std::fs::remove_dir_all(&repo).unwrap();
    }
    for side in [Side::Publisher, Side::Server] {
        let sites: Vec<Site> = all
            .iter()
            .filter(|(s, _)| *s == side)
            .map(|(_, site)| site.clone())
            .collect();
        let missed = if side == Side::Server { missed } else { 0 };
        report(&format!("publish --to, {side:?}"), &sites, missed);
    }
}

#[test]
fn crash_at_every_write_step_of_key_rotation() {
    let releases = Releases::new();
    let p = Publisher::new("stable");
    p.publish(&v(1), &releases.src(1));
    let keys = p.dir.path().join("keys");
    for name in ["root1", "pub2"] {
        let out = ferry_tests::run(
            bin("ferry-server"),
            &[
                "key",
                "gen",
                "--out",
                keys.to_str().unwrap(),
                "--name",
                name,
            ],
        );
        ferry_tests::assert_ok(&out, "key gen");
    }
    let key = |f: &str| keys.join(f).to_str().unwrap().to_string();
    let (root1, pub2, old_key, root1_key) = (
        key("root1.pub"),
        key("pub2.pub"),
        key("ferry.key"),
        key("root1.key"),
    );
    let (pub2_key, old_pub) = (key("pub2.key"), key("ferry.pub"));
    let new_list = |repo: &str| -> Vec<String> {
        [
            "key",
            "new-list",
            "--repo",
            repo,
            "--root",
            &root1,
            "--publisher",
            &pub2,
            "--sign",
            &old_key,
            "--sign",
            &root1_key,
            "--previous-key",
            &old_pub,
        ]
        .map(str::to_string)
        .to_vec()
    };
    let (src, v2) = (releases.src(2), v(2));
    let src = src.to_str().unwrap();
    let work = tempfile::tempdir().unwrap();

    let fresh = work.path().join("fresh");
    copy_tree(&p.repo(), &fresh);
    let trace = work.path().join("fresh.trace");
    let args = new_list(fresh.to_str().unwrap());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    succeeded(
        run_in(
            &fresh.with_extension("run"),
            "ferry-server",
            &args,
            &[(TRACE_VAR, trace.to_str().unwrap())],
        ),
        "reference key new-list",
    );
    let sites = sites(&read_trace(&trace));
    assert!(
        sites.iter().any(|s| s.point == "server::key_list::write"),
        "key new-list never passes the key list write"
    );

    let mut missed = 0;
    for (i, site) in sites.iter().enumerate() {
        let case = format!("key new-list killed at {} pass {}", site.point, site.pass);
        let repo = work.path().join(format!("case-{i}"));
        copy_tree(&p.repo(), &repo);
        let repo_s = repo.to_str().unwrap();
        let args = new_list(repo_s);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        if !kill_at(
            &repo.with_extension("kill"),
            "ferry-server",
            &args,
            site,
            &case,
        ) {
            missed += 1;
        }
        // The channel is untouched by a rotation.
        assert_eq!(walk_repo(&repo, &p.public_key(), &case)["stable"], v(1));
        // Rerun unless key list 1 is complete (a rerun would then make list 2).
        if !repo.join(key_list_path(1)).exists() {
            succeeded(
                run_in(&repo.with_extension("rerun"), "ferry-server", &args, &[]),
                &format!("{case}: rerun"),
            );
        }
        // The new publishing key can publish, and agents can follow.
        succeeded(
            run_in(
                &repo.with_extension("publish"),
                "ferry-server",
                &publish_args(&pub2_key, repo_s, src, &v2),
                &[],
            ),
            &format!("{case}: publish with the new key"),
        );
        assert_eq!(walk_repo(&repo, &p.public_key(), &case)["stable"], v2);
        std::fs::remove_dir_all(&repo).unwrap();
    }
    report("key new-list", &sites, missed);
}

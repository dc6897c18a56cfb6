//! Binary diffs in the download plan, end to end: one diff object and a manifest diff
//! per update from any of the last releases, the archive tail when the base has no
//! diff or was modified locally, and a mixed plan of local copies and a diff.

use ferry_tests::Agent;
use ferry_tests::tree::{noise, put};

use super::fixtures::{Scene, Sources, tree_eq, v};
use super::pipeline::{assert_diff_update, assert_three_requests};

#[test]
fn next_and_two_back_each_take_a_manifest_diff_and_one_diff_object() {
    let Scene {
        p,
        sources,
        srv,
        agent,
    } = Scene::installed(Sources::app(3), &[]);
    let lagging = Agent::init(&srv.url, "stable", &p.public_key(), &[]);
    lagging.update();

    let second = p.publish(&v(2), &sources.release(2));
    let before = srv.requests().len();
    let r = agent.update();
    assert_eq!(r["to"], v(2));
    tree_eq(&agent.current(), &sources.release(2));
    let reqs = srv.requests()[before..].to_vec();
    assert_diff_update(&reqs, "/channels/stable/head", &second);
    let logged: u64 = reqs.iter().map(|r| r.bytes).sum();
    assert_eq!(r["bytes_downloaded"].as_u64().unwrap(), logged);
    // The diff is what makes the update small: far below the archive tail it replaces.
    let diff_size = second["diffs"][0]["size"].as_u64().unwrap();
    assert!(reqs[2].bytes == diff_size, "{reqs:?} vs {second}");
    // `ferry-server ls` prices each base as the agent's planner does.
    let ls = ferry_tests::run(
        ferry_tests::bin("ferry-server"),
        &["ls", "--repo", p.repo().to_str().unwrap()],
    );
    let ls = String::from_utf8_lossy(&ls.stdout);
    assert!(
        ls.contains(&format!(
            "from 1.0.0: diff {diff_size} bytes in 1 request(s)"
        )),
        "{ls}"
    );

    let third = p.publish(&v(3), &sources.release(3));
    let before = srv.requests().len();
    assert_eq!(lagging.update()["to"], v(3));
    tree_eq(&lagging.current(), &sources.release(3));
    assert_diff_update(&srv.requests()[before..], "/channels/stable/head", &third);
}

#[test]
fn a_base_without_a_diff_falls_back_to_the_archive_tail() {
    let depth1 = &["--diff-depth", "1"];
    let Scene {
        p,
        sources,
        srv,
        agent,
    } = Scene::installed(Sources::app(4), depth1);
    for k in 2..=4 {
        p.publish_with(&v(k), &sources.release(k), depth1);
    }
    // Release 4 only has a diff from 3, each release one from the one before: the
    // agent on 1 would need three diffs (two hops is the most it takes, FORMAT.md §8),
    // so it takes the archive tail.
    let before = srv.requests().len();
    assert_eq!(agent.update()["to"], v(4));
    tree_eq(&agent.current(), &sources.release(4));
    assert_three_requests(&srv.requests()[before..], "/channels/stable/head");
}

#[test]
fn a_locally_modified_base_falls_back_to_the_archive() {
    let Scene {
        p,
        sources,
        srv,
        agent,
    } = Scene::installed(Sources::app(2), &[]);
    let second = p.publish(&v(2), &sources.release(2));
    // Someone edits the installed release: its bytes are no longer the diff's base.
    let readme = agent.root().join("versions/1.0.0/share/doc/README");
    std::fs::write(&readme, b"edited by hand\n").unwrap();
    let before = srv.requests().len();
    assert_eq!(agent.update()["to"], v(2));
    tree_eq(&agent.current(), &sources.release(2));
    let archive = super::pipeline::object_url_path(second["archive"].as_str().unwrap());
    let reqs = srv.requests()[before..].to_vec();
    assert!(
        reqs.iter().any(|r| r.path == archive && r.status == 206),
        "{reqs:?}"
    );
}

/// Edits release 1's installed `bin/app` in place, same size, next to what release 2
/// changed (bytes 600,000..604,000), so inside a chunk the diff produces from the base's
/// bytes: the plan's check of the base (file sizes) does not see it, the produced
/// chunk's id does.
fn edit_base_in_place(agent: &Agent) {
    use std::os::unix::fs::FileExt;
    let app = agent.root().join("versions/1.0.0/bin/app");
    let f = std::fs::OpenOptions::new().write(true).open(&app).unwrap();
    f.write_all_at(b"edited in place", 599_000).unwrap();
}

#[test]
fn a_base_edited_without_changing_its_size_fails_its_diff_which_falls_back_to_the_archive() {
    let Scene {
        p,
        sources,
        srv,
        agent,
    } = Scene::installed(Sources::app(2), &[]);
    let second = p.publish(&v(2), &sources.release(2));
    edit_base_in_place(&agent);
    let before = srv.requests().len();
    let out = agent.ferry("update", &["--json"]);
    ferry_tests::assert_ok(&out, "update");
    let err = String::from_utf8_lossy(&out.stderr);
    // Behind a manifest diff (a skeleton) the produced chunks' hashes make the
    // manifest, which then fails its signed hash; otherwise the chunk ids fail.
    assert!(
        err.contains("manifest diff from 1.0.0 unusable")
            || err.contains("diff from 1.0.0 not used, falling back"),
        "the failed diff is named: {err}"
    );
    tree_eq(&agent.current(), &sources.release(2));
    let archive = super::pipeline::object_url_path(second["archive"].as_str().unwrap());
    let reqs = srv.requests()[before..].to_vec();
    assert!(
        reqs.iter().any(|r| r.path == archive && r.status == 206),
        "{reqs:?}"
    );
}

#[test]
fn mixed_plan_copies_local_chunks_and_applies_a_diff() {
    let sources = Sources::app(3);
    // Release 3 brings back release 1's plugin, which release 2 had replaced.
    let plugin1 = std::fs::read(sources.release(1).join("lib/libplugin.so")).unwrap();
    put(&sources.release(3), "lib/libplugin.so", &plugin1, 0o644);
    let Scene {
        p,
        sources,
        srv,
        agent,
    } = Scene::installed(sources, &[]);
    p.publish(&v(2), &sources.release(2));
    agent.update();
    let third = p.publish(&v(3), &sources.release(3));
    let before = srv.requests().len();
    let out = agent.ferry("update", &[]);
    ferry_tests::assert_ok(&out, "update 2 -> 3");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("reuse") && text.contains("diff"),
        "plan: {text}"
    );
    tree_eq(&agent.current(), &sources.release(3));
    assert_diff_update(&srv.requests()[before..], "/channels/stable/head", &third);
}

#[test]
fn tampered_diff_objects_fall_back_to_verified_paths() {
    let Scene {
        p,
        sources,
        srv: _srv,
        agent,
    } = Scene::installed(Sources::app(2), &[]);
    let second = p.publish(&v(2), &sources.release(2));
    // A mirror corrupts every object but release 2's manifest and archive, so the
    // manifest diff and the diff object are damaged. The agent notices (hash
    // mismatch), says so, and takes the whole manifest and the archive instead.
    let objects: Vec<std::path::PathBuf> = walk_objects(&p.repo());
    let keep = [
        super::pipeline::object_url_path(second["manifest"].as_str().unwrap()),
        super::pipeline::object_url_path(second["archive"].as_str().unwrap()),
    ];
    let mut corrupted = 0;
    for path in objects {
        let url = format!("/{}", path.strip_prefix(p.repo()).unwrap().display());
        if keep.contains(&url) {
            continue;
        }
        let mut data = std::fs::read(&path).unwrap();
        let n = data.len();
        data[n / 2] ^= 0x20;
        std::fs::write(&path, data).unwrap();
        corrupted += 1;
    }
    assert!(corrupted >= 2, "diff objects exist to corrupt");
    let out = agent.ferry("update", &["--json"]);
    ferry_tests::assert_ok(&out, "update with corrupt diff objects");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("mismatch"), "the fallback is explained: {err}");
    tree_eq(&agent.current(), &sources.release(2));
}

fn walk_objects(repo: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for fan in std::fs::read_dir(repo.join("objects")).unwrap().flatten() {
        for obj in std::fs::read_dir(fan.path()).unwrap().flatten() {
            out.push(obj.path());
        }
    }
    out
}

#[test]
fn a_damaged_diff_behind_a_skeleton_is_fetched_once_then_the_archive_serves() {
    let Scene {
        p,
        sources,
        srv,
        agent,
    } = Scene::installed(Sources::app(2), &[]);
    let second = p.publish(&v(2), &sources.release(2));
    // Only the data diff is damaged: the manifest diff (a skeleton whose new chunk ids
    // that diff would fill) is fine. The agent finds out, takes the whole manifest and
    // the archive tail, and does not fetch the damaged diff a second time.
    let size = second["diffs"][0]["size"].as_u64().unwrap();
    let diff = walk_objects(&p.repo())
        .into_iter()
        .find(|f| std::fs::metadata(f).unwrap().len() == size)
        .expect("the diff object");
    let mut data = std::fs::read(&diff).unwrap();
    let n = data.len();
    data[n - 1] ^= 0x01;
    std::fs::write(&diff, data).unwrap();
    let diff_path = format!("/{}", diff.strip_prefix(p.repo()).unwrap().display());

    let before = srv.requests().len();
    let out = agent.ferry("update", &["--json"]);
    ferry_tests::assert_ok(&out, "update with a damaged diff object");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("mismatch"), "the fallback is explained: {err}");
    tree_eq(&agent.current(), &sources.release(2));
    let reqs = srv.requests()[before..].to_vec();
    let paths: Vec<&str> = reqs.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        paths.iter().filter(|p| **p == diff_path).count(),
        1,
        "{paths:?}"
    );
    let manifest = super::pipeline::object_url_path(second["manifest"].as_str().unwrap());
    let archive = super::pipeline::object_url_path(second["archive"].as_str().unwrap());
    assert!(paths.contains(&manifest.as_str()), "{paths:?}");
    assert!(paths.contains(&archive.as_str()), "{paths:?}");
    assert_eq!(
        reqs.len(),
        5,
        "head, manifest diff, diff, manifest, archive: {paths:?}"
    );
}

#[test]
fn three_releases_back_is_still_head_manifest_diff_and_one_diff_object() {
    let Scene {
        p,
        sources,
        srv,
        agent,
    } = Scene::installed(Sources::app(4), &[]);
    p.publish(&v(2), &sources.release(2));
    p.publish(&v(3), &sources.release(3));
    let fourth = p.publish(&v(4), &sources.release(4));
    // The default diff bases (1, 2, 3, 5, 8, 10 back) reach release 1.
    assert_eq!(fourth["diffs"].as_array().unwrap().len(), 3, "{fourth}");
    let before = srv.requests().len();
    assert_eq!(agent.update()["to"], v(4));
    tree_eq(&agent.current(), &sources.release(4));
    assert_diff_update(&srv.requests()[before..], "/channels/stable/head", &fourth);
}

/// An agent on release 2 that still holds release 1, and release 3 bringing back
/// release 1's big library (release 2 had replaced it), published with `extra`.
/// Returns the agent's update output, the requests it made, and the size of release
/// 3's diff from release 2 (which must carry the library: about a megabyte).
fn bring_back_update(
    extra: &[&str],
) -> (
    std::process::Output,
    Vec<ferry_tests::process::LoggedRequest>,
    u64,
) {
    let sources = Sources::app(3);
    let big = noise(500, 1_000_000);
    put(&sources.release(1), "lib/libbig.so", &big, 0o644);
    put(
        &sources.release(2),
        "lib/libbig.so",
        &noise(501, 1_000_000),
        0o644,
    );
    put(&sources.release(3), "lib/libbig.so", &big, 0o644);
    let Scene {
        p,
        sources,
        srv,
        agent,
    } = Scene::installed(sources, extra);
    p.publish_with(&v(2), &sources.release(2), extra);
    agent.update();
    let third = p.publish_with(&v(3), &sources.release(3), extra);
    let from_2 = third["diffs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["base"] == v(2))
        .expect("a diff from release 2")["size"]
        .as_u64()
        .unwrap();
    assert!(from_2 > 900_000, "{third}");
    let before = srv.requests().len();
    let out = agent.ferry("update", &["--json"]);
    ferry_tests::assert_ok(&out, "update 2 -> 3");
    tree_eq(&agent.current(), &sources.release(3));
    let reqs = srv.requests()[before..].to_vec();
    assert!(
        reqs.iter().all(|q| q.bytes != from_2),
        "the big diff from release 2 was not fetched: {reqs:?}"
    );
    (out, reqs, from_2)
}

fn downloaded(out: &std::process::Output) -> u64 {
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    r["bytes_downloaded"].as_u64().unwrap()
}

#[test]
fn the_head_prices_diffs_so_an_agent_takes_the_one_from_the_release_it_shares_most_with() {
    // The head lists release 3's diffs from releases 1 and 2 with their sizes: the
    // agent takes the small one from release 1, which has the library.
    let (out, reqs, from_2) = bring_back_update(&[]);
    assert_eq!(reqs.len(), 3, "head, manifest diff, diff object: {reqs:?}");
    assert!(downloaded(&out) < from_2 / 3, "{reqs:?}");
}

#[test]
fn a_skeleton_is_priced_against_local_copies_and_the_archive_before_its_diff_is_fetched() {
    // Only a diff from release 2 exists. The skeleton names the library's chunks
    // (they are in release 1, which an agent on release 2 may hold), so the agent sees
    // it can copy them and take the rest from the archive for less than the diff.
    let (out, reqs, from_2) = bring_back_update(&["--diff-depth", "1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cost less than the diff"), "{err}");
    assert!(downloaded(&out) < from_2 / 3, "{reqs:?}");
    assert!(
        reqs.iter().any(|q| q.status == 206),
        "an archive range: {reqs:?}"
    );
}

/// The C source of a program of `n` functions that call each other, read a table of
/// pointers to all of them, and print a banner; `extra` inserts more functions after
/// the tenth, so that every function, call target and pointer after it moves.
fn elf_program_source(n: usize, extra: usize, banner: &str) -> String {
    use std::fmt::Write;
    let mut s = String::from("#include <stdio.h>\nvolatile int sink;\n");
    for i in 0..n {
        writeln!(s, "int f{i}(int x);").unwrap();
    }
    let mut defs = Vec::new();
    for i in 0..n {
        defs.push(format!(
            "__attribute__((noinline)) int f{i}(int x) {{ if (x > {i}) return f{}(x - 1) + f{}(x - 2) + {i}; sink += x * {}; return x ^ {i}; }}",
            (i + 1) % n,
            (i * 7 + 3) % n,
            i % 13 + 1
        ));
        if i == 9 {
            for k in 0..extra {
                defs.push(format!(
                    "__attribute__((noinline)) int g{k}(int x) {{ sink += x + {k}; return x * 3 + {k}; }}"
                ));
            }
        }
    }
    for d in defs {
        s.push_str(&d);
        s.push('\n');
    }
    let table: Vec<String> = (0..n).map(|i| format!("f{i}")).collect();
    writeln!(s, "int (*const table[])(int) = {{ {} }};", table.join(", ")).unwrap();
    writeln!(
        s,
        "int main(int argc, char **argv) {{ (void)argv; puts(\"{banner}\"); return table[argc % {n}](argc) & 1; }}"
    )
    .unwrap();
    s
}

/// Compiles `source` into `out` with the system C compiler (Debian's gcc: PIE, so the
/// table is relocated through `.rela.dyn`).
fn compile_c(source: &str, out: &std::path::Path) {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("app.c");
    std::fs::write(&src, source).unwrap();
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let status = std::process::Command::new("cc")
        .args(["-O1", "-fno-inline", "-o"])
        .arg(out)
        .arg(&src)
        .status()
        .expect("a C compiler (cc): .ci/build-deps.sh installs gcc");
    assert!(status.success(), "cc failed");
}

#[test]
fn an_x86_64_elf_binary_updates_through_a_reference_aware_diff() {
    use ferry_format::delta::{BSDIFF_X86, DiffHeader};
    let sources = tempfile::tempdir().unwrap();
    let (one, two) = (sources.path().join("1"), sources.path().join("2"));
    compile_c(
        &elf_program_source(3000, 0, "release 1"),
        &one.join("bin/app"),
    );
    compile_c(
        &elf_program_source(3000, 40, "release 2"),
        &two.join("bin/app"),
    );
    put(&one, "share/README", b"an ELF program\n", 0o644);
    put(&two, "share/README", b"an ELF program\n", 0o644);

    let p = ferry_tests::Publisher::new("stable");
    p.publish(&v(1), &one);
    let srv = p.serve();
    let agent = Agent::init(&srv.url, "stable", &p.public_key(), &[]);
    agent.update();
    let second = p.publish(&v(2), &two);

    // The publisher kept the reference-aware diff: it is smaller than the plain one.
    let diff_size = second["diffs"][0]["size"].as_u64().unwrap();
    let headers: Vec<DiffHeader> = walk_objects(&p.repo())
        .into_iter()
        .filter_map(|path| {
            let bytes = std::fs::read(&path).unwrap();
            DiffHeader::decode_prefix(&bytes, bytes.len() as u64)
                .ok()
                .map(|(h, _)| h)
        })
        // Each release also has its diff from nothing, for fresh installs.
        .filter(|h| !ferry_format::delta::nothing::is_from_nothing(h))
        .collect();
    assert_eq!(headers.len(), 1, "one diff object between the releases");
    assert_eq!(headers[0].algorithm, BSDIFF_X86, "{headers:?}");

    let before = srv.requests().len();
    let r = agent.update();
    assert_eq!(r["to"], v(2));
    tree_eq(&agent.current(), &two);
    let reqs = srv.requests()[before..].to_vec();
    assert_diff_update(&reqs, "/channels/stable/head", &second);
    assert_eq!(reqs[2].bytes, diff_size);
    // The updated program runs.
    let out = std::process::Command::new(agent.current().join("bin/app"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "release 2\n");
}

/// With the whole manifest (here its manifest diff is gone from the repository), the
/// tree is built while the diff is applied; a base edited in place without changing
/// its size makes a produced chunk fail its id halfway through that build, which is
/// discarded, and the plan's next route (the archive) builds the release, the active
/// one untouched meanwhile.
#[test]
fn a_diff_failing_while_the_tree_is_built_from_it_falls_back_to_the_archive() {
    let Scene {
        p,
        sources,
        srv,
        agent,
    } = Scene::installed(Sources::app(2), &[]);
    let second = p.publish(&v(2), &sources.release(2));
    // Manifest diffs are zstd frames; archives are too, but far larger.
    let mut gone = 0;
    for shard in std::fs::read_dir(p.repo().join("objects"))
        .unwrap()
        .flatten()
    {
        for f in std::fs::read_dir(shard.path()).unwrap().flatten() {
            let bytes = std::fs::read(f.path()).unwrap();
            if bytes.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) && bytes.len() < 100_000 {
                std::fs::remove_file(f.path()).unwrap();
                gone += 1;
            }
        }
    }
    assert_eq!(gone, 1, "release 2's one manifest diff");
    edit_base_in_place(&agent);
    let before = srv.requests().len();
    let out = agent.ferry("update", &["--json"]);
    ferry_tests::assert_ok(&out, "update");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("diff from 1.0.0 not used, falling back") && err.contains("hashes to"),
        "the failed diff and its chunk are named: {err}"
    );
    tree_eq(&agent.current(), &sources.release(2));
    let reqs = srv.requests()[before..].to_vec();
    let archive = super::pipeline::object_url_path(second["archive"].as_str().unwrap());
    let manifest = super::pipeline::object_url_path(second["manifest"].as_str().unwrap());
    assert!(
        reqs.iter().any(|r| r.path == manifest && r.status == 200),
        "{reqs:?}"
    );
    assert!(
        reqs.iter().any(|r| r.path == archive && r.status == 206),
        "{reqs:?}"
    );
    assert!(
        !agent.root().join(".ferry/staging").exists()
            || std::fs::read_dir(agent.root().join(".ferry/staging"))
                .unwrap()
                .flatten()
                .all(|e| !e.file_name().to_string_lossy().ends_with(".spool"))
    );
}

/// An installed ELF base that no longer scans as the publisher's did (its `e_machine`
/// edited in place, same size: the agent reads it as a plain file and does not rewrite
/// it) makes the reference-aware diff produce chunks that fail their ids: the agent
/// says so and takes the archive, and release 2 runs.
#[test]
fn an_elf_base_edited_in_place_fails_the_reference_aware_diff_which_falls_back_to_the_archive() {
    use std::os::unix::fs::FileExt;
    let sources = tempfile::tempdir().unwrap();
    let (one, two) = (sources.path().join("1"), sources.path().join("2"));
    compile_c(
        &elf_program_source(3000, 0, "release 1"),
        &one.join("bin/app"),
    );
    compile_c(
        &elf_program_source(3000, 40, "release 2"),
        &two.join("bin/app"),
    );
    let p = ferry_tests::Publisher::new("stable");
    p.publish(&v(1), &one);
    let srv = p.serve();
    let agent = Agent::init(&srv.url, "stable", &p.public_key(), &[]);
    agent.update();
    let second = p.publish(&v(2), &two);
    let app = agent.root().join("versions/1.0.0/bin/app");
    let f = std::fs::OpenOptions::new().write(true).open(&app).unwrap();
    f.write_all_at(&3u16.to_le_bytes(), 18).unwrap(); // EM_386
    drop(f);
    let before = srv.requests().len();
    let out = agent.ferry("update", &["--json"]);
    ferry_tests::assert_ok(&out, "update");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("manifest diff from 1.0.0 unusable")
            || err.contains("diff from 1.0.0 not used, falling back"),
        "the failed diff is named: {err}"
    );
    tree_eq(&agent.current(), &two);
    let archive = super::pipeline::object_url_path(second["archive"].as_str().unwrap());
    let reqs = srv.requests()[before..].to_vec();
    assert!(
        reqs.iter().any(|r| r.path == archive && r.status == 206),
        "{reqs:?}"
    );
    let out = std::process::Command::new(agent.current().join("bin/app"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "release 2\n");
}

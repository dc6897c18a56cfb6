//! Shell completions and manual pages, generated from the parser's own definitions:
//! bash completes `ferry`'s commands and flags, and groff renders every page.

use std::process::Command;

use ferry_tests::{assert_ok, bin, run};

/// What bash's completion function offers for the words typed so far.
fn complete(script: &str, words: &[&str]) -> Vec<String> {
    let line = words.join(" ");
    let program = format!(
        "source {script}\nCOMP_WORDS=({line})\nCOMP_CWORD={}\nCOMP_LINE={line:?}\nCOMP_POINT=${{#COMP_LINE}}\n_ferry ferry {:?} {:?}\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"",
        words.len() - 1,
        words.last().unwrap(),
        words[words.len() - 2],
    );
    let out = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", &program])
        .output()
        .expect("bash");
    assert_ok(&out, "bash completion");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

#[test]
fn bash_completes_commands_and_flags_and_the_other_shells_get_scripts() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(bin("ferry"), &["completions", "bash"]);
    assert_ok(&out, "completions bash");
    let script = dir.path().join("ferry.bash");
    std::fs::write(&script, &out.stdout).unwrap();
    let script = script.to_str().unwrap();
    assert_eq!(complete(script, &["ferry", "upd"]), ["update"]);
    let rollback = complete(script, &["ferry", "rollback", "--"]);
    for flag in ["--root", "--steps", "--to"] {
        assert!(rollback.iter().any(|f| f == flag), "{flag}: {rollback:?}");
    }
    let shells = complete(script, &["ferry", "completions", ""]);
    assert!(shells.iter().any(|s| s == "fish"), "{shells:?}");
    for (shell, start) in [("zsh", "#compdef ferry"), ("fish", "complete -c ferry")] {
        let out = run(bin("ferry"), &["completions", shell]);
        assert_ok(&out, shell);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(start), "{shell}: {text}");
    }
    let out = run(bin("ferry"), &["completions", "tcsh"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
}

#[test]
fn every_manual_page_renders_with_its_options_and_the_exit_statuses() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(
        bin("ferry"),
        &["man", "--out", dir.path().to_str().unwrap()],
    );
    assert_ok(&out, "man --out");
    let mut pages: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    pages.sort();
    for page in [
        "ferry.1",
        "ferry-update.1",
        "ferry-rollback.1",
        "ferry-agent.1",
    ] {
        assert!(pages.iter().any(|p| p == page), "{page} in {pages:?}");
    }
    let render = |page: &str| {
        let out = Command::new("groff")
            // Plain text: no colour, bold or underline sequences.
            .args(["-man", "-Tutf8", "-P-cbou"])
            .arg(dir.path().join(page))
            .output()
            .unwrap_or_else(|e| {
                panic!("groff: {e}: install groff-base (`.ci/build-deps.sh --man`; .ci/run does)")
            });
        assert_ok(&out, "groff");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let main = render("ferry.1");
    assert!(main.contains("Exit status"), "{main}");
    assert!(main.contains("8  lock"), "{main}");
    let update = render("ferry-update.1");
    assert!(update.contains("max-download"), "{update}");
    // Printed to stdout without --out: the main page.
    let out = run(bin("ferry"), &["man"]);
    assert_ok(&out, "man");
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with(".ie"),
        "roff"
    );
}

#[test]
fn ferry_server_has_completions_and_a_page_per_command_too() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(bin("ferry-server"), &["completions", "bash"]);
    assert_ok(&out, "ferry-server completions bash");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("complete -F _ferry__server"), "{text}");
    let syntax = Command::new("bash")
        .args(["-n", "-c", &text])
        .output()
        .unwrap();
    assert_ok(&syntax, "bash -n");
    let out = run(
        bin("ferry-server"),
        &["man", "--out", dir.path().to_str().unwrap()],
    );
    assert_ok(&out, "ferry-server man --out");
    for page in [
        "ferry-server.1",
        "ferry-server-publish.1",
        "ferry-server-serve.1",
        "ferry-server-audit-export.1",
    ] {
        let rendered = Command::new("groff")
            .args(["-man", "-Tutf8", "-P-cbou"])
            .arg(dir.path().join(page))
            .output()
            .unwrap();
        assert_ok(&rendered, page);
        assert!(!rendered.stdout.is_empty(), "{page}");
    }
}

//! What a person at a terminal sees, driven through tmux (a real terminal): `ferry
//! update` prints its plan, draws a progress bar on stderr while the download runs
//! (held half-way by a proxy so the bar can be read), then clears it and prints its
//! summary; with stderr not a terminal there is no bar and no escape sequence.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ferry_tests::proxy::FaultProxy;
use ferry_tests::{Agent, Publisher, assert_ok, bin};

use super::fixtures::v;
use super::limits::sources_with_big_release_2;
use super::pipeline::NO_DIFFS;

/// A tmux server of its own (socket in a temporary folder), killed on drop.
struct Tmux {
    socket: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmux {
    /// Runs `command` in a detached 220x30 session (plan lines are long).
    fn start(command: &str) -> Tmux {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("tmux.sock");
        let out = Command::new("tmux")
            .arg("-S")
            .arg(&socket)
            .args([
                "-f",
                "/dev/null",
                "new-session",
                "-d",
                "-x",
                "220",
                "-y",
                "30",
            ])
            .arg(command)
            .output()
            .unwrap_or_else(|e| {
                panic!("tmux: {e}: install it (`.ci/build-deps.sh --tmux`; .ci/run does)")
            });
        assert_ok(&out, "tmux new-session");
        Tmux { socket, _dir: dir }
    }

    /// The screen as text (`escapes`: with its escape sequences).
    fn screen(&self, escapes: bool) -> String {
        let mut args = vec!["capture-pane", "-p"];
        if escapes {
            args.push("-e");
        }
        let out = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(&args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn wait_for(&self, what: &str, limit: Duration) -> String {
        let start = Instant::now();
        loop {
            let screen = self.screen(false);
            if screen.contains(what) {
                return screen;
            }
            assert!(
                start.elapsed() < limit,
                "{what:?} not on the screen within {limit:?}:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .arg("kill-server")
            .output();
    }
}

fn shell_quote(p: &Path) -> String {
    format!("'{}'", p.display())
}

#[test]
fn update_in_a_terminal_shows_the_plan_a_progress_bar_and_the_summary() {
    let p = Publisher::new("stable");
    let sources = sources_with_big_release_2();
    p.publish_with(&v(1), &sources.release(1), NO_DIFFS);
    let srv = p.serve();
    let proxy = FaultProxy::start(&srv.url);
    let agent = Agent::init(&proxy.url, "stable", &p.public_key(), &[]);
    agent.update();
    p.publish_with(&v(2), &sources.release(2), NO_DIFFS);

    proxy.arm_stall(1_000_000);
    let command = format!(
        "{} update --root {}; echo \"exit=$?\"; sleep 60",
        shell_quote(&bin("ferry")),
        shell_quote(agent.root())
    );
    let tmux = Tmux::start(&command);
    proxy.wait_stalled(Duration::from_secs(60));
    // The bar has caught up with the megabyte the proxy let through.
    let during = tmux.wait_for("downloading [=====", Duration::from_secs(20));
    eprintln!("--- during the download:\n{during}");
    assert!(during.contains("plan: 1.0.0 -> 2.0.0: reuse"), "{during}");
    assert!(
        during.contains("% saved against the whole archive"),
        "{during}"
    );
    // The newest drawing: a pane that scrolled may still show an earlier one above.
    let bar = during
        .lines()
        .rfind(|l| l.contains("downloading [="))
        .unwrap()
        .to_string();
    assert!(bar.contains("1.00 MB/3.38 MB"), "{bar}");
    // Held there, the bar says so instead of keeping its last rate and time left.
    let stalled = tmux.wait_for("stalled for", Duration::from_secs(15));
    eprintln!("--- held:\n{stalled}");
    proxy.release_stall();
    let after = tmux.wait_for("exit=", Duration::from_secs(60));
    eprintln!("--- after:\n{after}");
    assert!(after.contains("exit=0"), "{after}");
    assert!(
        after.contains("updated 1.0.0 -> 2.0.0: downloaded"),
        "{after}"
    );
    assert!(
        !after.contains("downloading ["),
        "the bar is cleared: {after}"
    );
    assert_eq!(agent.active().as_deref(), Some("2.0.0"));
}

#[test]
fn update_without_a_terminal_draws_no_bar_and_writes_no_escape_sequence() {
    let p = Publisher::new("stable");
    let sources = sources_with_big_release_2();
    p.publish_with(&v(1), &sources.release(1), NO_DIFFS);
    let srv = p.serve();
    let agent = Agent::init(&srv.url, "stable", &p.public_key(), &[]);
    agent.update();
    p.publish_with(&v(2), &sources.release(2), NO_DIFFS);
    let out = agent.ferry("update", &[]);
    assert_ok(&out, "update");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(stdout.contains("plan: 1.0.0 -> 2.0.0"), "{stdout}");
    assert!(stdout.contains("updated 1.0.0 -> 2.0.0"), "{stdout}");
    assert!(!stderr.contains("downloading"), "{stderr}");
    assert!(!stdout.contains('\u{1b}') && !stderr.contains('\u{1b}'));
    // --quiet: nothing but errors.
    p.publish_with("3.0.0", &sources.release(1), NO_DIFFS);
    let out = agent.ferry("update", &["--quiet"]);
    assert_ok(&out, "update --quiet");
    assert!(out.stdout.is_empty() && out.stderr.is_empty(), "{out:?}");
    assert_eq!(agent.active().as_deref(), Some("3.0.0"));
}

//! What a person at a terminal sees, driven through tmux (a real terminal): `ferry
//! update` prints its plan, draws a progress bar on stderr while the download runs
//! (held half-way by a proxy so the bar can be read), then clears it and prints its
//! summary; `ferry-server publish` shows files, bytes chunked and deduplicated and
//! its throughput while it chunks, then the diff it makes, then its summary. With
//! stderr not a terminal there is no bar and no escape sequence.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ferry_tests::proxy::FaultProxy;
use ferry_tests::tree::{noise, put};
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
        self.wait_for_line(|l| l.contains(what), limit)
    }

    /// The screen once one of its lines passes `test`.
    fn wait_for_line(&self, test: impl Fn(&str) -> bool, limit: Duration) -> String {
        let start = Instant::now();
        loop {
            let screen = self.screen(false);
            if screen.lines().any(&test) {
                return screen;
            }
            assert!(
                start.elapsed() < limit,
                "not on the screen within {limit:?}:\n{screen}"
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

/// Files of a release that takes a few seconds to publish at `--zstd-level 19`: 20
/// files of 500 kB of short runs of four letters, which zstd's strongest levels search
/// longest. Release 2 patches 16 bytes every 20 kB of two files in three: every chunk
/// of those is new (and slow to compress), the others are deduplicated, and the diff
/// from release 1 is small and quick to make.
fn slow_release(root: &Path, n: u64) {
    for f in 0..PUBLISH_FILES {
        let mut data = Vec::with_capacity(500_000 + 8);
        for b in noise(1000 + f, 500_000) {
            let run = 1 + usize::from(b >> 2) % 5;
            data.extend(std::iter::repeat_n(b'A' + b % 4, run));
            if data.len() >= 500_000 {
                break;
            }
        }
        data.truncate(500_000);
        if n >= 2 && f % 3 != 0 {
            for at in (10_000..500_000).step_by(20_000) {
                data[at..at + 16].copy_from_slice(b"patched release2");
            }
        }
        put(root, &format!("data/part-{f:02}.bin"), &data, 0o644);
    }
}

const PUBLISH_FILES: u64 = 20;

/// `ferry-server publish` arguments for release `version` of `source` at zstd level 19.
fn publish_args(p: &Publisher, version: &str, source: &Path) -> Vec<String> {
    let mut args: Vec<String> = ["publish", "--repo"].map(String::from).to_vec();
    args.push(p.repo().display().to_string());
    args.push("--key".into());
    args.push(p.key().display().to_string());
    for a in [
        "--channel",
        "stable",
        "--version",
        version,
        "--zstd-level",
        "19",
        // Level 19 keeps the chunking slow enough to watch; the diff from nothing
        // need not be.
        "--fresh-level",
        "3",
    ] {
        args.push(a.into());
    }
    args.push(source.display().to_string());
    args
}

/// A publisher with release 1.0.0 published, and the source of release 2.0.0.
fn publisher_before_release_2() -> (Publisher, tempfile::TempDir) {
    let p = Publisher::new("stable");
    let sources = tempfile::tempdir().unwrap();
    let (one, two) = (sources.path().join("1"), sources.path().join("2"));
    slow_release(&one, 1);
    slow_release(&two, 2);
    p.publish("1.0.0", &one);
    (p, sources)
}

#[test]
fn publish_in_a_terminal_shows_files_bytes_and_throughput_then_the_diff_and_the_summary() {
    let (p, sources) = publisher_before_release_2();
    let args = publish_args(&p, "2.0.0", &sources.path().join("2"));
    // Info logs on, so the diff's log line has to find its way around the progress
    // line; NO_COLOR, so neither may carry a colour code. The `printf` afterwards
    // shows that the capture does keep colour codes when there are some.
    let command = format!(
        "NO_COLOR=1 FERRY_LOG=info {} {}; echo \"exit=$?\"; printf '\\033[31mred\\033[0m\\n'; sleep 60",
        shell_quote(&bin("ferry-server")),
        args.iter()
            .map(|a| shell_quote(Path::new(a)))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let tmux = Tmux::start(&command);

    // While it chunks: files, bytes, deduplicated bytes, and a rate once there is one.
    // Bytes count once compressed, not once read (reading is far faster): with a
    // rate shown, some are still to come.
    let during = tmux.wait_for_line(
        |l| l.starts_with("chunking [") && l.contains("/s, ") && !l.contains("10.00 MB/10.00 MB"),
        Duration::from_secs(30),
    );
    eprintln!("--- while chunking:\n{during}");
    let bar = during
        .lines()
        .find(|l| l.starts_with("chunking ["))
        .unwrap();
    let files = format!("/{PUBLISH_FILES} files, ");
    assert!(bar.contains(&files), "{bar}");
    assert!(bar.contains("/10.00 MB, "), "all the bytes to chunk: {bar}");
    assert!(bar.contains(" deduplicated, "), "{bar}");
    assert!(bar.contains(" left"), "the time left: {bar}");

    // Then the diff from the one earlier release.
    let diffing = tmux.wait_for(
        "diffs: making the one from 1.0.0 (1 of 1, 10.00 MB base)",
        Duration::from_secs(30),
    );
    eprintln!("--- while diffing:\n{diffing}");

    let after = tmux.wait_for("exit=", Duration::from_secs(60));
    eprintln!("--- after:\n{after}");
    assert!(after.contains("exit=0"), "{after}");
    assert!(
        after.contains("published stable 2.0.0 (sequence 2, generation 2)"),
        "{after}"
    );
    assert!(after.contains("files:    20, 10000000 bytes"), "{after}");
    assert!(after.contains("diffs:    from 1.0.0 ("), "{after}");
    // At level 3 the whole-release stream is larger than this level-19 archive, so
    // fresh installs keep the archive, and the summary says so.
    assert!(after.contains("fresh installs: the archive"), "{after}");
    // The info line stands on its own line: written above the progress line, not
    // glued to its text.
    let logged = after
        .lines()
        .find(|l| l.contains("diff object written"))
        .unwrap_or_else(|| panic!("no log line: {after}"));
    assert!(
        logged
            .trim_start()
            .starts_with(|c: char| c.is_ascii_digit()),
        "{logged}"
    );
    // The progress line is gone, and left nothing behind.
    for gone in [
        "chunking [",
        "diffs: making",
        "writing the archive",
        "compressing the release whole",
        "] ",
    ] {
        assert!(
            !after.contains(gone),
            "{gone:?} left on the screen:\n{after}"
        );
    }
    let published = after.find("published stable").unwrap();
    assert!(
        after[..published].lines().all(|l| l.trim().is_empty()
            || l.contains(" INFO ferry_server::publish::diff: ")
            || l.contains(" INFO ferry_server::publish::fresh: ")),
        "only the diffs' log lines before the summary:\n{after}"
    );

    let escapes = tmux.screen(true);
    let colours = escapes.matches("\u{1b}[").count();
    assert!(
        escapes.contains("\u{1b}[31mred"),
        "the capture keeps colours: {escapes:?}"
    );
    // The printf's red and its reset (tmux writes them as one or two sequences).
    assert!(
        colours <= 2,
        "colour codes besides the printf's: {escapes:?}"
    );
}

#[test]
fn publish_without_a_terminal_writes_no_progress_and_no_escape_sequence() {
    let (p, sources) = publisher_before_release_2();
    let dir = tempfile::tempdir().unwrap();
    let (out_file, err_file) = (dir.path().join("stdout"), dir.path().join("stderr"));
    // Info logs on: stderr carries the log line, and nothing of a progress display.
    let status = Command::new(bin("ferry-server"))
        .args(publish_args(&p, "2.0.0", &sources.path().join("2")))
        .env("FERRY_LOG", "info")
        .env_remove("NO_COLOR")
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&out_file).unwrap())
        .stderr(std::fs::File::create(&err_file).unwrap())
        .status()
        .unwrap();
    let stdout = std::fs::read_to_string(&out_file).unwrap();
    let stderr = std::fs::read_to_string(&err_file).unwrap();
    assert!(status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.starts_with("published stable 2.0.0 (sequence 2, generation 2)\n"),
        "{stdout}"
    );
    assert!(stderr.contains("diff object written"), "{stderr}");
    for progress in ["chunking", "deduplicated", "diffs:", "/s", "\r"] {
        assert!(!stderr.contains(progress), "{progress:?} in {stderr:?}");
    }
    assert!(!stdout.contains('\u{1b}') && !stderr.contains('\u{1b}'));
}

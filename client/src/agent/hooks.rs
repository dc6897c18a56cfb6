//! The operator's commands around a switch (`pre_switch`, `post_switch`,
//! `health_check` in config.toml), each run with `/bin/sh -c` in the root, with
//! `FERRY_ROOT`, `FERRY_FROM`, `FERRY_TO` and `FERRY_CURRENT` in its environment.
//!
//! A hook runs in its own process group, so a timeout kills what it started too (a
//! `sleep` under `sh -c` would otherwise keep the output pipes open). Its output is
//! captured up to [`OUTPUT_LIMIT`] per stream for the log; the rest is read and
//! dropped, so a chatty hook never blocks on a full pipe.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Bytes of each of stdout and stderr kept for the log.
pub const OUTPUT_LIMIT: usize = 16 * 1024;

/// How often a running hook is polled for its exit.
const POLL: Duration = Duration::from_millis(20);

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("{hook} could not be started ({command:?}): {source}")]
    Spawn {
        hook: &'static str,
        command: String,
        source: std::io::Error,
    },
    #[error("{hook} ({command:?}) {status}{output}")]
    Failed {
        hook: &'static str,
        command: String,
        status: String,
        output: String,
    },
    #[error("{hook} ({command:?}) did not finish within {}s and was killed{output}", timeout.as_secs())]
    TimedOut {
        hook: &'static str,
        command: String,
        timeout: Duration,
        output: String,
    },
}

/// What a hook sees of the switch it runs around.
#[derive(Debug, Clone)]
pub struct HookEnv {
    pub root: PathBuf,
    /// The release active before the switch (empty on a first install).
    pub from: Option<String>,
    pub to: String,
}

impl HookEnv {
    fn apply(&self, cmd: &mut Command) {
        // The hook runs in the root: a root given as a relative path (`--root
        // opt/myapp`) would name something else from there.
        let root = std::path::absolute(&self.root).unwrap_or_else(|_| self.root.clone());
        cmd.current_dir(&root)
            .env("FERRY_ROOT", &root)
            .env("FERRY_FROM", self.from.as_deref().unwrap_or(""))
            .env("FERRY_TO", &self.to)
            .env("FERRY_CURRENT", root.join("current"));
    }
}

/// Runs `command` as hook `hook` and waits for it, at most `timeout`. Its output goes
/// to the log either way.
pub fn run(
    hook: &'static str,
    command: &str,
    env: &HookEnv,
    timeout: Duration,
) -> Result<(), HookError> {
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    env.apply(&mut cmd);
    let started = Instant::now();
    let mut child = cmd.spawn().map_err(|source| HookError::Spawn {
        hook,
        command: command.to_string(),
        source,
    })?;
    let out = capture(child.stdout.take());
    let err = capture(child.stderr.take());
    let status = wait(&mut child, timeout);
    let output = collect(out, err);
    if !output.is_empty() {
        tracing::info!(hook, "{hook} output:{output}");
    }
    let command = command.to_string();
    match status {
        None => Err(HookError::TimedOut {
            hook,
            command,
            timeout,
            output,
        }),
        Some(s) if s.success() => {
            tracing::info!(
                hook,
                duration_ms = started.elapsed().as_millis() as u64,
                "{hook} succeeded"
            );
            Ok(())
        }
        Some(s) => Err(HookError::Failed {
            hook,
            command,
            status: describe(s),
            output,
        }),
    }
}

/// Waits up to `timeout`; on timeout kills the hook's whole process group.
fn wait(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return Some(s),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(POLL),
            _ => break,
        }
    }
    if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => format!("was killed by signal {sig}"),
        _ => "failed".into(),
    }
}

type Captured = Option<JoinHandle<(Vec<u8>, bool)>>;

fn capture<R: Read + Send + 'static>(pipe: Option<R>) -> Captured {
    let mut pipe = pipe?;
    Some(std::thread::spawn(move || {
        let mut kept = Vec::new();
        let mut cut = false;
        let mut buf = [0u8; 8192];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            let room = OUTPUT_LIMIT - kept.len();
            kept.extend_from_slice(&buf[..n.min(room)]);
            cut |= n > room;
        }
        (kept, cut)
    }))
}

/// The captured output as ` stdout: ...; stderr: ...` (empty when there was none). A
/// reader still blocked after the hook ended (a daemon it left holding the pipe) is
/// abandoned rather than waited for.
fn collect(out: Captured, err: Captured) -> String {
    let mut text = String::new();
    for (name, handle) in [("stdout", out), ("stderr", err)] {
        let Some(handle) = handle else { continue };
        let deadline = Instant::now() + Duration::from_millis(500);
        while !handle.is_finished() && Instant::now() < deadline {
            std::thread::sleep(POLL);
        }
        if !handle.is_finished() {
            continue;
        }
        let Ok((bytes, cut)) = handle.join() else {
            continue;
        };
        let s = String::from_utf8_lossy(&bytes);
        let s = s.trim_end();
        if s.is_empty() {
            continue;
        }
        let more = if cut { " [cut]" } else { "" };
        text.push_str(&format!("; {name}: {s}{more}"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn env(dir: &Path) -> HookEnv {
        HookEnv {
            root: dir.to_path_buf(),
            from: Some("1.0.0".into()),
            to: "1.1.0".into(),
        }
    }

    #[test]
    fn a_hook_sees_the_switch_in_its_environment_and_runs_in_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let cmd = "echo \"$FERRY_FROM $FERRY_TO $FERRY_ROOT $FERRY_CURRENT\" > seen";
        run(
            "post_switch",
            cmd,
            &env(dir.path()),
            Duration::from_secs(10),
        )
        .unwrap();
        let seen = std::fs::read_to_string(dir.path().join("seen")).unwrap();
        let root = dir.path().display();
        assert_eq!(seen.trim(), format!("1.0.0 1.1.0 {root} {root}/current"));
    }

    #[test]
    fn a_relative_root_reaches_the_hook_as_an_absolute_path() {
        let dir = tempfile::tempdir().unwrap();
        // The same folder named from the working directory: up to `/`, then down.
        let cwd = std::env::current_dir().unwrap();
        let up: PathBuf = cwd.components().skip(1).map(|_| "..").collect();
        let relative = &up.join(dir.path().strip_prefix("/").unwrap());
        assert!(relative.is_relative());
        run(
            "post_switch",
            "test -d \"$FERRY_ROOT\" && echo \"$FERRY_CURRENT\" > seen",
            &env(relative),
            Duration::from_secs(10),
        )
        .unwrap();
        let seen = std::fs::read_to_string(dir.path().join("seen")).unwrap();
        let absolute = std::path::absolute(relative).unwrap();
        assert_eq!(seen.trim(), format!("{}/current", absolute.display()));
    }

    #[test]
    fn a_failing_hook_says_its_status_and_output() {
        let dir = tempfile::tempdir().unwrap();
        let e = run(
            "health_check",
            "echo not ready; echo broken >&2; exit 7",
            &env(dir.path()),
            Duration::from_secs(10),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("exited with status 7"), "{e}");
        assert!(e.contains("stdout: not ready"), "{e}");
        assert!(e.contains("stderr: broken"), "{e}");
    }

    #[test]
    fn a_hook_past_its_timeout_is_killed_with_what_it_started() {
        let dir = tempfile::tempdir().unwrap();
        let started = Instant::now();
        let e = run(
            "health_check",
            "sleep 30; echo late > late",
            &env(dir.path()),
            Duration::from_millis(300),
        )
        .unwrap_err();
        assert!(matches!(e, HookError::TimedOut { .. }), "{e}");
        assert!(started.elapsed() < Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(200));
        assert!(!dir.path().join("late").exists());
    }

    #[test]
    fn output_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let e = run(
            "pre_switch",
            "head -c 1000000 /dev/zero | tr '\\0' x; exit 1",
            &env(dir.path()),
            Duration::from_secs(20),
        )
        .unwrap_err()
        .to_string();
        assert!(e.len() < OUTPUT_LIMIT + 500, "{}", e.len());
        assert!(e.contains("[cut]"));
    }
}

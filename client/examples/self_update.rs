//! An application that updates itself with `ferry_client::updater`, while running.
//!
//! It is installed by ferry into a root like any release: `ROOT/current/bin/self_update`
//! next to `ROOT/current/VERSION`, and started as `ROOT/current/bin/self_update --root
//! ROOT`. It prints the release it runs (read beside its own executable), then:
//!
//! - `--update`: asks the channel for a newer release, prints the plan, installs it
//!   beside the running one (verified as `ferry update` does), and re-executes itself
//!   through `ROOT/current`, which now points at the new release: same process id,
//!   new program. The release it came from stays on disk for a rollback.
//! - `--rollback`: switches back to the previous retained release (pinned there) and
//!   re-executes itself the same way.
//!
//! The running executable is never written to: ferry builds the new release in a new
//! folder and switches the `current` symlink with one rename, so the old program keeps
//! running from its own file until it replaces itself with `exec`.
//!
//! ```text
//! cargo run --example self_update -- --root /opt/myapp --update
//! ```

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use ferry_client::updater::{Check, Updater};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(root) = args
        .iter()
        .position(|a| a == "--root")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from)
    else {
        eprintln!("usage: self_update --root ROOT [--update | --rollback]");
        return ExitCode::from(2);
    };
    println!("running {} (pid {})", own_version(), std::process::id());
    let result = if args.iter().any(|a| a == "--update") {
        update(&root)
    } else if args.iter().any(|a| a == "--rollback") {
        rollback(&root)
    } else {
        Ok(())
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("self_update: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The release this program belongs to: the `VERSION` file of the tree its executable
/// is in (`/proc/self/exe` names the file itself, not the `current` symlink).
fn own_version() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("VERSION")))
        .and_then(|f| std::fs::read_to_string(f).ok())
        .map_or_else(|| "an unknown release".into(), |v| v.trim().to_string())
}

fn update(root: &Path) -> Result<(), ferry_client::updater::Error> {
    let updater = Updater::open(root)?;
    match updater.check()? {
        Check::Available(plan) => {
            println!("{}", plan.line);
            let applied = updater.apply(&plan, &|stage| println!("stage: {stage:?}"))?;
            println!(
                "installed {}: downloaded {} bytes in {} requests",
                applied.to.as_deref().unwrap_or("?"),
                applied.bytes_downloaded,
                applied.requests
            );
            restart(root)
        }
        Check::UpToDate(v) => {
            println!("up to date ({v})");
            Ok(())
        }
        Check::Pinned { pinned, newest } => {
            println!("pinned to {pinned} by a rollback; {newest} is available");
            Ok(())
        }
        Check::NothingEligible => {
            println!("no release is open to this machine");
            Ok(())
        }
        _ => Ok(()),
    }
}

fn rollback(root: &Path) -> Result<(), ferry_client::updater::Error> {
    let applied = Updater::open(root)?.rollback(1)?;
    println!(
        "rolled back to {}",
        applied.to.as_deref().unwrap_or("nothing")
    );
    restart(root)
}

/// Replaces this process with the program `ROOT/current` points at now.
fn restart(root: &Path) -> Result<(), ferry_client::updater::Error> {
    let exe = root.join("current/bin/self_update");
    let err = Command::new(&exe).arg("--root").arg(root).exec();
    Err(ferry_client::updater::Error::Other(format!(
        "re-executing {}: {err}",
        exe.display()
    )))
}

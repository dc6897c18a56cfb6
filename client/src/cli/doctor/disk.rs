//! The `disk` check: free space where the root is against what installing the
//! channel's current release takes, by the rule of `install::space` (tree, downloads,
//! one block per entry, a fixed margin; what staging holds counts as free).
//!
//! Doctor does not plan against local chunks (that needs every retained manifest
//! re-verified, the update's work), so it gives a range: at least the tree (all
//! chunks reused), at most the tree plus the whole archive (nothing reused). Below
//! the least it fails, below the most it warns.

use ferry_format::layout::object_path;
use ferry_format::manifest::Manifest;
use ferry_format::verified::verify_manifest;

use super::super::report::bytes;
use super::net::Found;
use super::{Check, config_hint};
use crate::install::config::Config;
use crate::install::layout::Layout;
use crate::install::space::{MARGIN, Needs, tree_bytes};
use crate::install::state::State;

/// Replaces the free bytes statvfs reports, so the tests can show a disk that is too
/// small (they cannot mount one). Honoured only by builds with the `failpoints`
/// feature, like the crash points (failpoint.rs); never in a release build.
#[cfg(feature = "failpoints")]
pub const FREE_BYTES_VAR: &str = "FERRY_DOCTOR_FREE_BYTES";

/// Free bytes and inodes for an unprivileged user, and the block size.
struct Room {
    available: u64,
    block: u64,
    inodes: Option<u64>,
}

fn room(layout: &Layout) -> std::io::Result<Room> {
    let st = rustix::fs::statvfs(layout.root())?;
    let block = st.f_frsize.max(512);
    #[allow(unused_mut)]
    let mut available = st.f_bavail.saturating_mul(block);
    #[cfg(feature = "failpoints")]
    if let Some(n) = std::env::var(FREE_BYTES_VAR)
        .ok()
        .and_then(|v| v.parse().ok())
    {
        available = n;
    }
    Ok(Room {
        available,
        block,
        inodes: (st.f_files > 0).then_some(st.f_favail),
    })
}

pub fn check(layout: &Layout, config: &Config, state: &State, found: &Found) -> Check {
    let release = found.head.content.current();
    let version = &release.version;
    if let Some(folder) = state.folder_of(version)
        && layout.release_dir(folder).is_dir()
    {
        let what = if state.active.as_deref() == Some(version.as_str()) {
            "is already active"
        } else {
            "is retained"
        };
        return Check::ok(
            "disk",
            format!(
                "the current release {version} {what} in {}: installing it takes no space",
                layout.release_dir(folder).display()
            ),
        );
    }
    let path = object_path(&release.manifest.hash);
    let manifest = found
        .get(&path, release.manifest.size, "manifest")
        .map_err(|e| format!("fetching the manifest of {version}: {e}"))
        .and_then(|b| {
            verify_manifest(&b, release, &config.channel, &found.trust.publishers()).map_err(|e| {
                format!(
                    "the manifest of {version} from {} does not verify: {e}",
                    found.server
                )
            })
        });
    let manifest = match manifest {
        Ok(m) => m,
        Err(e) => {
            return Check::fail(
                "disk",
                e,
                "ferry update would fail the same way: check the server's objects/ folder",
            );
        }
    };
    let room = match room(layout) {
        Ok(r) => r,
        Err(e) => {
            return Check::fail(
                "disk",
                format!("measuring free space of {}: {e}", layout.root().display()),
                "the root's filesystem must answer statvfs(2)",
            );
        }
    };
    let mut c = verdict(layout, &manifest, &room, &config_hint(layout));
    c.detail.push_str(&notes(found, state));
    c
}

/// Why the next update might not install the current release after all.
fn notes(found: &Found, state: &State) -> String {
    let version = &found.head.content.current().version;
    let mut s = String::new();
    if let Some(pin) = &state.pin {
        s.push_str(&format!(
            " (the root is pinned to {} by a rollback: `ferry update` installs nothing without --force)",
            pin.version
        ));
    }
    let percent = found.head.rollout_of(version);
    if percent < 100 {
        s.push_str(&format!(
            " ({version} is offered to {percent}% of agents: this one may not take it yet)"
        ));
    }
    s
}

fn verdict(layout: &Layout, manifest: &Manifest, room: &Room, cfg: &str) -> Check {
    let version = &manifest.version;
    let needed = |download: u64, reused: u64| {
        let n = Needs::build(manifest, download, reused, false);
        n.download
            .saturating_add(n.tree)
            .saturating_add(n.entries.saturating_mul(room.block))
            .saturating_add(MARGIN)
    };
    let staged = tree_bytes(&layout.staging());
    let least = needed(0, manifest.total_file_bytes()).saturating_sub(staged);
    let most = needed(manifest.archive.size, 0).saturating_sub(staged);
    let free = format!(
        "{} free in {}",
        bytes(room.available),
        layout.root().display()
    );
    if let Some(inodes) = room.inodes
        && manifest.entries.len() as u64 > inodes
    {
        return Check::fail(
            "disk",
            format!(
                "release {version} has {} files and folders, but only {inodes} more fit on the filesystem of {}",
                manifest.entries.len(),
                layout.root().display()
            ),
            "free inodes there (delete small files), or lower `keep`",
        );
    }
    let range = format!(
        "{} to {} (release tree {}, download up to {})",
        bytes(least),
        bytes(most),
        bytes(manifest.total_file_bytes()),
        bytes(manifest.archive.size)
    );
    if least > room.available {
        return Check::fail(
            "disk",
            format!("release {version} does not fit: it needs {range}, {free}"),
            format!(
                "free at least {} there, or lower `keep` in {cfg} so fewer releases are retained",
                bytes(least - room.available)
            ),
        );
    }
    if most > room.available {
        return Check::warn(
            "disk",
            format!(
                "release {version} needs {range}, {free}: it fits only if enough of it is reused from retained releases"
            ),
            format!("free {} there to be sure", bytes(most - room.available)),
        );
    }
    Check::ok("disk", format!("release {version} needs {range}, {free}"))
}

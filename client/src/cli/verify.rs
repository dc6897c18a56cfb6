//! `ferry verify`: the active release on disk, checked in full against its stored
//! manifest (itself checked against the hash recorded when it was verified and
//! installed): every file's blake3, modes and link targets. Paths the manifest does
//! not name (the application's logs, caches, databases) are listed apart and do not
//! fail the check.

use anyhow::{Result, anyhow, bail};

use super::VerifyArgs;
use super::root::Root;
use crate::apply::check::{Depth, check_tree};
use crate::install::activate::current_folder;
use crate::install::lock::LockMode;

pub fn run(args: &VerifyArgs) -> Result<()> {
    let root = Root::open(&args.root, LockMode::Shared, &args.lock)?;
    let active = root
        .state
        .active
        .clone()
        .ok_or_else(|| anyhow!("nothing is installed yet: run `ferry update` first"))?;
    let record = root
        .state
        .release(&active)
        .ok_or_else(|| anyhow!("state names {active} as active but has no record of it"))?;
    let manifest = root.load_manifest(record)?;
    let mut problems = Vec::new();
    match current_folder(&root.layout) {
        Some(f) if f == record.folder() => {}
        Some(f) => problems.push(format!(
            "current points to versions/{f}, state says {active} is in versions/{}",
            record.folder()
        )),
        None => problems.push("current is missing or not a link into versions/".to_string()),
    }
    let check = check_tree(&manifest, &root.release_dir(record), Depth::Content);
    problems.extend(check.damage);
    let extra = check.extra;
    if problems.is_empty() {
        println!(
            "OK: {active} ({} entries, {} bytes) matches its signed manifest",
            manifest.entries.len(),
            manifest.total_file_bytes()
        );
        print_extra(&extra);
        return Ok(());
    }
    for p in &problems {
        println!("problem: {p}");
    }
    print_extra(&extra);
    bail!("{} problem(s) found in release {active}", problems.len())
}

/// Files the application added are listed, never counted as problems.
fn print_extra(extra: &[String]) {
    if extra.is_empty() {
        return;
    }
    println!(
        "note: {} path(s) not part of the release (the application's own files; left alone):",
        extra.len()
    );
    for e in extra {
        println!("extra: {e}");
    }
}

//! `ferry verify`: the active release on disk, checked in full against its stored
//! manifest (itself checked against the hash recorded when it was verified and
//! installed): every file's blake3, modes, link targets, and no extra files.

use anyhow::{Result, anyhow, bail};

use super::VerifyArgs;
use super::root::Root;
use crate::apply::check::{Depth, check_tree};
use crate::install::activate::current_version;
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
    match current_version(&root.layout) {
        Some(v) if v == active => {}
        Some(v) => problems.push(format!("current points to {v}, state says {active}")),
        None => problems.push("current is missing or not a link into versions/".to_string()),
    }
    problems.extend(check_tree(
        &manifest,
        &root.layout.version_dir(&active),
        Depth::Content,
    ));
    if problems.is_empty() {
        println!(
            "OK: {active} ({} entries, {} bytes) matches its signed manifest",
            manifest.entries.len(),
            manifest.total_file_bytes()
        );
        return Ok(());
    }
    for p in &problems {
        println!("problem: {p}");
    }
    bail!("{} problem(s) found in release {active}", problems.len())
}

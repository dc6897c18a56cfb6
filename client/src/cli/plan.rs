//! Choosing how to get the chunks an update lacks: copies from local releases always,
//! then for the rest either a diff object from a retained release held intact or
//! ranges of the archive's tail, whichever downloads fewer bytes. Also the plan lines
//! printed before anything is fetched.
//!
//! A diff from base B produces exactly the chunks B lacks (`missing_chunks`). It is a
//! candidate only when B is retained here and its installed files still hash to B's
//! manifest, since the diff reads B's bytes; a base edited locally, or too old for the
//! publisher to have diffed against, leaves the archive tail, never a full download
//! unless nothing is local.

use ferry_format::delta::DiffRef;
use ferry_format::id::Digest;
use ferry_format::manifest::{EntryKind, Manifest};
use ferry_format::plan::{ArchivePlan, DEFAULT_MAX_GAP, DiffOption, plan_update};

use super::report;
use crate::apply::check::hash_file;
use crate::apply::source::{LocalChunks, LocalRelease};

/// A diff chosen for an update.
pub struct DiffChoice<'a> {
    pub diff: &'a DiffRef,
    pub base: &'a LocalRelease,
    /// Archive ranges for whatever neither local releases nor the diff provide (empty
    /// with a consistent publisher).
    pub rest: ArchivePlan,
}

/// Picks the cheapest usable diff for the chunks `archive` would download, or `None`
/// with the reasons no diff is used (one line each, for the log). The costs come from
/// the pure planner ([`plan_update`]); this only adds what needs the disk: a base must
/// still hash to its manifest.
pub fn choose_diff<'a>(
    manifest: &'a Manifest,
    releases: &'a [LocalRelease],
    local: &LocalChunks,
    archive: &ArchivePlan,
    from: Option<&str>,
    failed: Option<Digest>,
) -> Result<DiffChoice<'a>, Vec<String>> {
    if archive.fetch_chunks == 0 {
        return Err(Vec::new());
    }
    let mut notes = Vec::new();
    let mut bases: Vec<&LocalRelease> = Vec::new();
    let mut options: Vec<DiffOption<'a>> = Vec::new();
    for base in releases {
        let hash = base.manifest.object_hash();
        let Some(diff) = manifest.diffs.iter().find(|d| d.base_manifest == hash) else {
            if from == Some(base.version.as_str()) {
                notes.push(format!("no diff from {}", base.version));
            }
            continue;
        };
        if failed == Some(diff.object.hash) {
            notes.push(format!("the diff from {} already failed", base.version));
            continue;
        }
        bases.push(base);
        options.push(DiffOption {
            diff,
            base: &base.manifest,
        });
    }
    let plan = plan_update(manifest, |id| local.has(id), &options, DEFAULT_MAX_GAP);
    for (i, base) in bases.iter().enumerate() {
        if !plan.diffs.iter().any(|d| d.option == i) {
            notes.push(format!(
                "the diff from {} is not smaller than the archive ranges ({})",
                base.version,
                report::bytes(archive.download_bytes)
            ));
        }
    }
    // Hash bases only now, cheapest first, and stop at the first intact one.
    for d in plan.diffs {
        let base = bases[d.option];
        if base_intact(base) {
            return Ok(DiffChoice {
                diff: options[d.option].diff,
                base,
                rest: d.rest,
            });
        }
        notes.push(format!("{} is modified locally", base.version));
    }
    Err(notes)
}

/// Whether every regular file of `base` (the diff's base bytes) still has its
/// manifest size and hash.
pub fn base_intact(base: &LocalRelease) -> bool {
    base.manifest.entries.iter().all(|e| match &e.kind {
        EntryKind::File { size, hash, .. } => {
            let path = base.tree.join(&e.path);
            std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file() && m.len() == *size)
                && hash_file(&path).is_ok_and(|h| h == *hash)
        }
        _ => true,
    })
}

/// `plan: 1.0.0 -> 2.0.0: reuse 812 chunks (52.1 MB) from local releases, download
/// 40 chunks (1.2 MB) in 1 request(s)`.
pub fn archive_line(from: Option<&str>, to: &str, plan: &ArchivePlan, archive: u64) -> String {
    format!(
        "plan: {} -> {to}: reuse {} chunks ({}) from local releases, download {} chunks ({}) in {} request(s){}",
        from.unwrap_or("none"),
        plan.reuse_chunks,
        report::bytes(plan.reuse_bytes),
        plan.fetch_chunks,
        report::bytes(plan.download_bytes),
        plan.ranges.len(),
        saved(plan.download_bytes, archive),
    )
}

/// `; 96% saved against the whole archive (52.1 MB)`, or nothing for a first install
/// that needs all of it.
fn saved(download: u64, archive: u64) -> String {
    if archive == 0 || download >= archive {
        return String::new();
    }
    let pct = (archive - download) * 100 / archive;
    format!(
        "; {pct}% saved against the whole archive ({})",
        report::bytes(archive)
    )
}

/// `plan: 1.0.0 -> 2.0.0: reuse 812 chunks (52.1 MB) from local releases, download
/// diff from 1.0.0 (231.4 KB) in 1 request`, plus any archive rest.
pub fn diff_line(
    from: Option<&str>,
    to: &str,
    local: &ArchivePlan,
    c: &DiffChoice,
    archive: u64,
) -> String {
    let mut line = format!(
        "plan: {} -> {to}: reuse {} chunks ({}) from local releases, download diff from {} ({}) in 1 request",
        from.unwrap_or("none"),
        local.reuse_chunks,
        report::bytes(local.reuse_bytes),
        c.base.version,
        report::bytes(c.diff.object.size),
    );
    if c.rest.fetch_chunks > 0 {
        line.push_str(&format!(
            ", plus {} chunks ({}) from the archive in {} request(s)",
            c.rest.fetch_chunks,
            report::bytes(c.rest.download_bytes),
            c.rest.ranges.len()
        ));
    }
    line.push_str(&saved(c.diff.object.size + c.rest.download_bytes, archive));
    line
}

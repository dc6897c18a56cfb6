//! The diff from nothing (FORMAT.md §3.9): what an agent holding no release installs
//! from. Every chunk of the new release, in first-use order, read back from the
//! archive just written and compressed as one long-window zstd stream (through the x86
//! branch filter when x86-64 programs make up most of the release) into a temp file; then
//! the object (prefix + that stream) and the manifest diff from nothing (a skeleton with
//! every id a hole). Offered only when the two together are smaller than the archive.
//! Memory: the zstd encoder's window and tables, whatever the release size.

use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::time::Instant;

use ferry_format::delta::manifest_diff::{Skeleton, encode_manifest_diff};
use ferry_format::delta::nothing::{self, NOTHING};
use ferry_format::delta::streams::Encoder;
use ferry_format::delta::{MAX_DIFF_INPUT, ManifestDiffRef, StreamCodec, StreamHeader};
use ferry_format::manifest::{EntryKind, Manifest};
use serde::Serialize;

use super::archive::Hashing;
use super::diff::{MANIFEST_DIFF_LEVEL, append_chunk, open_archive};
use crate::error::{Error, Result, io_err};
use crate::repo::Repo;

/// Default zstd level of the diff from nothing: made once per release, downloaded by
/// every fresh install. With the 32 MiB window, 21 was the smallest on polars 1.17.1
/// (`zstd --ultra -N --long=25`: 22,983,933 B at 20, 22,943,162 at 21, 22,946,857 at
/// 22; `-19 --long=31`, the bound fresh installs are held to, 23,027,092).
pub const DEFAULT_FRESH_LEVEL: i32 = 21;

/// The diff from nothing written, as the publish report shows it.
#[derive(Clone, Debug, Serialize)]
pub struct FreshSummary {
    /// Names (hex) and bytes of the diff object and of the manifest diff.
    pub object: String,
    pub size: u64,
    pub manifest_diff: String,
    pub manifest_diff_size: u64,
    /// Time spent making both.
    pub seconds: f64,
    #[serde(skip)]
    pub entry: ManifestDiffRef,
}

/// Chunks read back from the archive per write to the compressor.
const BATCH: usize = 4 << 20;

/// Writes the diff from nothing to `manifest` (signed as `manifest_bytes`, archive
/// already in `repo`) at zstd `level` with `threads` workers, or `None` when the
/// release is empty, beyond the diff size limit, or the pair would not beat the archive.
pub fn write_from_nothing(
    repo: &Repo,
    manifest: &Manifest,
    manifest_bytes: &[u8],
    level: i32,
    threads: u32,
) -> Result<Option<FreshSummary>> {
    let started = Instant::now();
    let target_size: u64 = manifest.chunks.iter().map(|c| u64::from(c.size)).sum();
    if manifest.chunks.is_empty() || target_size > MAX_DIFF_INPUT {
        tracing::info!(
            target_size,
            "no diff from nothing: the release is empty or beyond the diff limit"
        );
        return Ok(None);
    }
    let skeleton = Skeleton::make(
        manifest_bytes,
        &nothing::empty_release(&manifest.channel),
        &|_| false,
    )?;
    let manifest_diff = encode_manifest_diff(&[], &skeleton, MANIFEST_DIFF_LEVEL)?;

    let archive = open_archive(repo, manifest)?;
    let offsets = manifest.chunk_offsets();
    let (mut stored, mut batch) = (Vec::new(), Vec::with_capacity(BATCH + (1 << 20)));
    let code = x86_64_bytes(&archive, manifest, &offsets, &mut stored)?;
    let codec = if code * 2 >= target_size {
        StreamCodec::ZstdX86 {
            window_log: nothing::WINDOW_LOG,
        }
    } else {
        StreamCodec::Zstd {
            window_log: nothing::WINDOW_LOG,
        }
    };
    let spool = repo.object_temp()?;
    let spool_path = spool.path().to_path_buf();
    let context = |source| Error::FormatContext {
        context: "compressing the diff from nothing".into(),
        source,
    };
    let mut enc = Encoder::with_options(
        &codec,
        level,
        threads,
        BufWriter::with_capacity(1 << 20, spool),
    )
    .map_err(context)?;
    for i in nothing::order(manifest) {
        append_chunk(&archive, manifest, &offsets, i, &mut stored, &mut batch)?;
        if batch.len() >= BATCH {
            enc.write_all(&batch)
                .map_err(io_err("write", &spool_path))?;
            batch.clear();
        }
    }
    enc.write_all(&batch)
        .map_err(io_err("write", &spool_path))?;
    drop(batch);
    let (raw_len, stored_len, spool) = enc.finish().map_err(context)?;
    let prefix = nothing::prefix(
        raw_len,
        manifest.chunks.len() as u64,
        StreamHeader {
            codec,
            raw_len,
            stored_len,
        },
    );
    let size = prefix.len() as u64 + stored_len;
    let total = size + manifest_diff.len() as u64;
    if total >= manifest.archive.size {
        tracing::info!(
            size,
            archive = manifest.archive.size,
            "no diff from nothing: not smaller than the archive"
        );
        return Ok(None);
    }

    let mut spool = spool
        .into_inner()
        .map_err(|e| io_err("write", &spool_path)(e.into_error()))?;
    let tmp = repo.object_temp()?;
    let tmp_path = tmp.path().to_path_buf();
    let mut out = Hashing::new(BufWriter::with_capacity(1 << 20, tmp));
    out.write_all(&prefix).map_err(io_err("write", &tmp_path))?;
    let file = spool.as_file_mut();
    file.seek(SeekFrom::Start(0))
        .map_err(io_err("read", &spool_path))?;
    io::copy(file, &mut out).map_err(io_err("copy from", &spool_path))?;
    out.flush().map_err(io_err("write", &tmp_path))?;
    let object = out.object_ref();
    if object.size != size {
        return Err(Error::Unsupported {
            path: tmp_path,
            reason: format!(
                "diff from nothing has {} bytes, expected {size}",
                object.size
            ),
        });
    }
    let tmp = out
        .inner
        .into_inner()
        .map_err(|e| io_err("write", &tmp_path)(e.into_error()))?;
    repo.place_object(tmp, &object.hash)?;
    let diff_ref = repo.write_object(&manifest_diff)?;
    let seconds = started.elapsed().as_secs_f64();
    tracing::info!(
        size,
        ?codec,
        manifest_diff = diff_ref.size,
        archive = manifest.archive.size,
        seconds = format!("{seconds:.2}"),
        "diff from nothing written"
    );
    Ok(Some(FreshSummary {
        object: object.hash.to_hex(),
        size,
        manifest_diff: diff_ref.hash.to_hex(),
        manifest_diff_size: diff_ref.size,
        seconds,
        entry: ManifestDiffRef {
            base_manifest: NOTHING,
            object: diff_ref,
            chunk_diff: Some(object),
        },
    }))
}

/// Files smaller than this are not looked at for machine code (they count as other
/// bytes): reading their first chunk would cost more than they weigh.
const CODE_FILE_MIN: u64 = 64 << 10;

/// Bytes of `manifest`'s files that are x86-64 programs, told by their first chunk.
fn x86_64_bytes(
    archive: &(std::fs::File, std::path::PathBuf),
    manifest: &Manifest,
    offsets: &[u64],
    stored: &mut Vec<u8>,
) -> Result<u64> {
    let mut code = 0;
    let mut head = Vec::new();
    for e in &manifest.entries {
        if let EntryKind::File { size, chunks, .. } = &e.kind
            && *size >= CODE_FILE_MIN
            && let Some(&first) = chunks.first()
        {
            head.clear();
            append_chunk(
                archive,
                manifest,
                offsets,
                first as usize,
                stored,
                &mut head,
            )?;
            if nothing::is_x86_64_code(&head) {
                code += size;
            }
        }
    }
    Ok(code)
}

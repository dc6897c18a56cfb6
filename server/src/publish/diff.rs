//! Diff objects (FORMAT.md §3.6) and manifest diffs (§3.7) of a new release against
//! earlier releases of its channel (`publish --diff-bases`, default `1,2,3,5,8,10`: the
//! releases that many positions back, [`super::bases`]).
//!
//! For each base release B, newest first:
//!
//! 1. **Base**: B's regular files concatenated in manifest order
//!    ([`delta::base_files`]'s order), rebuilt from B's archive: exactly what an agent
//!    holding B reads through its installed files.
//! 2. **Target**: the chunks of the new release that B lacks
//!    ([`delta::missing_chunks`], new table order), taken from the archive just written.
//! 3. [`encode`] writes the three raw streams to temp files; the base and target are
//!    freed, then [`pack`] compresses them (dense and sparse layouts, several codecs,
//!    on parallel threads) into more temp files and the object is assembled as header
//!    prefix + the chosen streams, hashed as it is written. Peak memory is one base,
//!    its suffix array (4 bytes per byte) and one target while encoding, then a few
//!    compressor states while packing.
//! 4. **Reference-aware** (algorithm 3, FORMAT.md §3.6.1): when base and new release
//!    have x86-64 ELF files in common, [`super::x86::build_maps`] builds their address
//!    maps before the target is read (the maps' structures, well below the encoder's
//!    suffix array, are freed by then) and [`super::x86::rewrite_base`] rewrites the
//!    base in place; the target is encoded again against it and the object carries the
//!    maps as one more stream. Below [`COMPARE_BELOW`] bytes of
//!    base both objects are made and the smaller is kept; above, making both would
//!    double the publisher's time on the largest releases, so the reference-aware one
//!    is kept (it was the smaller on every measured pair, benches/X86-EVAL.md).
//!
//! A diff is published only when it pays: smaller than the archive ranges the agent on
//! B would download without it. A base with nothing missing gets no diff.
//!
//! Manifest diffs are small (the manifests are in memory) and listed in the head.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::Instant;

use ferry_format::chunking::decompress_chunk;
use ferry_format::delta::encode::{Sinks, encode};
use ferry_format::delta::manifest_diff::{Skeleton, encode_manifest_diff};
use ferry_format::delta::pack::{RawSource, pack, pack_map};
use ferry_format::delta::x86::FileMaps;
use ferry_format::delta::{
    self, BSDIFF_V2, BSDIFF_X86, DiffHeader, DiffRef, MAX_DIFF_INPUT, ManifestDiffRef, StreamHeader,
};
use ferry_format::head::ChannelHead;
use ferry_format::id::{ChunkId, Digest, ObjectRef};
use ferry_format::manifest::{EntryKind, Manifest};
use ferry_format::plan::{DEFAULT_MAX_GAP, plan_archive};
use ferry_format::verified::verify_pinned_manifest;
use ferry_format::version::Version;
use serde::Serialize;
use tempfile::NamedTempFile;

use super::archive::Hashing;
use super::progress::Progress;
use crate::error::{Error, Result, io_err};
use crate::fsutil;
use crate::repo::Repo;

/// zstd level of manifest diffs: they are small, so the strongest level costs little.
pub const MANIFEST_DIFF_LEVEL: i32 = 19;
/// Bases below this size get both a plain and a reference-aware diff, and keep the
/// smaller; larger ones with x86-64 ELF files only the reference-aware one.
pub const COMPARE_BELOW: u64 = 64 << 20;

/// A release a diff is made against.
pub struct BaseRelease {
    pub version: String,
    /// Name of its manifest object (what `DiffRef::base_manifest` pins).
    pub manifest_hash: Digest,
    pub manifest: Manifest,
    /// The exact stored manifest bytes (the manifest diff's reference).
    pub manifest_bytes: Vec<u8>,
    /// Its archive is in the repository with the right size: a data diff can be made.
    pub archive_present: bool,
}

/// One diff object written, as the publish report shows it.
#[derive(Clone, Debug, Serialize)]
pub struct DiffSummary {
    /// Version of the base release.
    pub base: String,
    /// Bytes of the diff object.
    pub size: u64,
    /// Time spent making it (read, encode, compress, write).
    pub seconds: f64,
    #[serde(skip)]
    pub object: ObjectRef,
}

/// The releases of `head` at `distances` (1 = its current one), newest first. A release
/// whose manifest or archive cannot be read is left out with a warning: diffs are an
/// optimisation, a damaged old release must not stop a new one.
pub fn load_bases(repo: &Repo, head: &ChannelHead, distances: &[usize]) -> Vec<BaseRelease> {
    let mut out = Vec::new();
    let listed = head.releases().iter().rev().enumerate();
    for (_, r) in listed.filter(|(i, _)| distances.contains(&(i + 1))) {
        let loaded = repo.read_object(&r.manifest, "manifest").and_then(|bytes| {
            let m = verify_pinned_manifest(&bytes, r, head.channel())?;
            Ok((bytes, (*m).clone()))
        });
        let (manifest_bytes, manifest) = match loaded {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(base = r.version, "no diff from this release: {e:#}");
                continue;
            }
        };
        let archive_path = repo.object_file(&manifest.archive.hash);
        let archive_present = std::fs::metadata(&archive_path)
            .is_ok_and(|m| m.is_file() && m.len() == manifest.archive.size);
        if !archive_present {
            tracing::warn!(
                base = r.version,
                "no data diff from this release: its archive {} is missing or damaged",
                archive_path.display()
            );
        }
        out.push(BaseRelease {
            version: r.version.clone(),
            manifest_hash: r.manifest.hash,
            manifest,
            manifest_bytes,
            archive_present,
        });
    }
    out
}

/// Writes a diff object from each base to `new` (whose archive is already in `repo`).
/// Returns the references in manifest order (ascending by base version) and what was
/// written, in base order.
pub fn write_diffs(
    repo: &Repo,
    new: &Manifest,
    bases: &[BaseRelease],
    progress: &Progress,
) -> Result<(Vec<DiffRef>, Vec<DiffSummary>)> {
    let mut refs = Vec::new();
    let mut summaries = Vec::new();
    let with_archive = bases.iter().filter(|b| b.archive_present).count();
    if with_archive == 0 {
        return Ok((refs, summaries));
    }
    progress.diffs(with_archive);
    let new_archive = open_archive(repo, new)?;
    for base in bases.iter().filter(|b| b.archive_present) {
        let started = Instant::now();
        progress.diff_started(&base.version, base.manifest.total_file_bytes());
        let made = diff_one(repo, new, &new_archive, base)?;
        progress.diff_done(&base.version, made.map(|o| o.size));
        let Some(object) = made else {
            continue;
        };
        let seconds = started.elapsed().as_secs_f64();
        tracing::info!(
            base = base.version,
            size = object.size,
            seconds = format!("{seconds:.2}"),
            "diff object written"
        );
        refs.push(DiffRef {
            base_version: base.version.clone(),
            base_manifest: base.manifest_hash,
            object,
        });
        summaries.push(DiffSummary {
            base: base.version.clone(),
            size: object.size,
            seconds,
            object,
        });
    }
    // Head versions parse (the head was validated), so the fallback never decides.
    refs.sort_by(|a, b| {
        match (
            Version::parse(&a.base_version),
            Version::parse(&b.base_version),
        ) {
            (Ok(x), Ok(y)) => x.cmp(&y),
            _ => a.base_version.cmp(&b.base_version),
        }
    });
    Ok((refs, summaries))
}

/// Makes and stores the diff from `base`, or `None` when there is none worth having.
/// `publish` calls it for each base, and `serve --diffs-on-demand` for a pair an agent
/// asks for (serve/ondemand/), so both write the same bytes.
pub(crate) fn diff_one(
    repo: &Repo,
    new: &Manifest,
    new_archive: &(File, PathBuf),
    base: &BaseRelease,
) -> Result<Option<ObjectRef>> {
    let v = &base.version;
    let missing = delta::missing_chunks(new, &base.manifest);
    if missing.is_empty() {
        tracing::info!(base = v, "no diff: the base holds every chunk");
        return Ok(None);
    }
    let base_size = base.manifest.total_file_bytes();
    let target_size: u64 = missing.iter().map(|&i| u64::from(new.chunks[i].size)).sum();
    if base_size > MAX_DIFF_INPUT || target_size > MAX_DIFF_INPUT {
        tracing::warn!(
            base = v,
            base_size,
            target_size,
            "no diff: base or target beyond the {MAX_DIFF_INPUT}-byte diff limit"
        );
        return Ok(None);
    }
    // What the agent on this base downloads without a diff: the diff must beat it.
    let without = {
        let have: HashSet<ChunkId> = base.manifest.chunks.iter().map(|c| c.id).collect();
        plan_archive(new, |id| have.contains(id), DEFAULT_MAX_GAP).download_bytes
    };

    // Raw streams are spooled while the base and target are in memory; packing runs
    // after they are freed, so its compressors' memory never adds to the encoder's.
    let started = Instant::now();
    let encoded = encode_streams(repo, new, new_archive, base, &missing)?;
    let encode_secs = started.elapsed().as_secs_f64();
    let mut best: Option<Candidate> = None;
    for (streams, maps) in encoded {
        let c = pack_candidate(
            repo,
            base,
            target_size,
            missing.len() as u64,
            streams,
            maps.as_deref(),
        )?;
        tracing::debug!(
            base = v,
            encode_secs,
            total_secs = started.elapsed().as_secs_f64(),
            algorithm = c.header.algorithm,
            size = c.size,
            layout = ?c.header.layout,
            streams = ?c.header.streams.iter().map(|h| (h.codec, h.raw_len, h.stored_len)).collect::<Vec<_>>(),
            "diff candidate"
        );
        if best.as_ref().is_none_or(|b| c.size < b.size) {
            best = Some(c);
        }
    }
    let Some(Candidate {
        header,
        streams,
        size: _,
    }) = best
    else {
        return Ok(None);
    };
    let prefix = header.encode_prefix();
    let size = prefix.len() as u64 + header.streams.iter().map(|h| h.stored_len).sum::<u64>();
    if size >= without {
        tracing::info!(
            base = v,
            size,
            without,
            "no diff: it is not smaller than the archive ranges it replaces"
        );
        return Ok(None);
    }

    let tmp = repo.object_temp()?;
    let tmp_path = tmp.path().to_path_buf();
    let mut out = Hashing::new(BufWriter::with_capacity(1 << 20, tmp));
    out.write_all(&prefix).map_err(io_err("write", &tmp_path))?;
    for (_, stream) in streams {
        let path = stream.get_ref().path().to_path_buf();
        let mut stream = stream
            .into_inner()
            .map_err(|e| io_err("write", &path)(e.into_error()))?;
        let file = stream.as_file_mut();
        file.seek(SeekFrom::Start(0))
            .map_err(io_err("read", &path))?;
        io::copy(file, &mut out).map_err(io_err("copy from", &path))?;
    }
    out.flush().map_err(io_err("write", &tmp_path))?;
    let r = out.object_ref();
    if r.size != size {
        return Err(Error::Unsupported {
            path: tmp_path,
            reason: format!("diff object has {} bytes, expected {size}", r.size),
        });
    }
    let tmp = out
        .inner
        .into_inner()
        .map_err(|e| io_err("write", &tmp_path)(e.into_error()))?;
    repo.place_object(tmp, &r.hash)?;
    Ok(Some(r))
}

/// A diff's raw streams (control, diff, extra) and, for algorithm 3, its raw map stream.
type Encoded = ([Spooled; 3], Option<Vec<u8>>);

/// Rebuilds the base and the target of `base` and encodes them into spools of the
/// control, diff and extra streams: against the base as it is, and (see the module
/// notes) against the base rewritten through the address maps of its x86-64 ELF files
/// when there are any. The base and target buffers are freed on return.
fn encode_streams(
    repo: &Repo,
    new: &Manifest,
    new_archive: &(File, PathBuf),
    base: &BaseRelease,
    missing: &[usize],
) -> Result<Vec<Encoded>> {
    let base_size = base.manifest.total_file_bytes();
    let mut base_data = read_base(repo, &base.manifest, base_size)?;
    let read_target = || -> Result<Vec<u8>> {
        let target_size: u64 = missing.iter().map(|&i| u64::from(new.chunks[i].size)).sum();
        let mut target = Vec::with_capacity(target_size as usize);
        let offsets = new.chunk_offsets();
        let mut stored = Vec::new();
        for &i in missing {
            append_chunk(new_archive, new, &offsets, i, &mut stored, &mut target)?;
        }
        Ok(target)
    };
    let encode_one = |base_data: &[u8], target: &[u8]| -> Result<[Spooled; 3]> {
        let sinks = Sinks {
            control: Spool::new(repo)?,
            diff: Spool::new(repo)?,
            extra: Spool::new(repo)?,
        };
        let (c, d, e, stats) = encode(base_data, target, sinks)?;
        tracing::debug!(
            base = base.version,
            controls = stats.controls,
            added = stats.added,
            copied = stats.copied,
            "encoded"
        );
        Ok([c.finish()?, d.finish()?, e.finish()?])
    };
    // The address maps first, before the target is read: their memory never adds to
    // the target's or the encoder's.
    let maps = if super::x86::has_elf(&base.manifest, &base_data) {
        super::x86::build_maps(new, new_archive, &base.manifest, &base_data)?
    } else {
        FileMaps::default()
    };
    let mut out = Vec::new();
    let mut target = None;
    // The plain diff first: the rewrite happens in place.
    if maps.files.is_empty() || base_size < COMPARE_BELOW {
        let t = target.insert(read_target()?);
        out.push((encode_one(&base_data, t)?, None));
    }
    if !maps.files.is_empty() {
        super::x86::rewrite_base(&base.manifest, &mut base_data, &maps);
        let t = match target.take() {
            Some(t) => t,
            None => read_target()?,
        };
        out.push((encode_one(&base_data, &t)?, Some(maps.encode())));
    }
    Ok(out)
}

/// One packed diff object, ready to write.
struct Candidate {
    header: DiffHeader,
    streams: Vec<(StreamHeader, BufWriter<NamedTempFile>)>,
    size: u64,
}

/// Packs raw streams (and a raw map stream for algorithm 3) into a candidate object.
fn pack_candidate(
    repo: &Repo,
    base: &BaseRelease,
    target_size: u64,
    target_chunks: u64,
    [control, diff, extra]: [Spooled; 3],
    maps: Option<&[u8]>,
) -> Result<Candidate> {
    let v = &base.version;
    let sink = || -> io::Result<BufWriter<NamedTempFile>> {
        let tmp = repo.object_temp().map_err(io::Error::other)?;
        Ok(BufWriter::with_capacity(1 << 20, tmp))
    };
    let context = |source| Error::FormatContext {
        context: format!("compressing the diff from {v}"),
        source,
    };
    let packed = pack(&control, &diff, &extra, &sink).map_err(context)?;
    drop((control, diff, extra));
    let mut streams = packed.streams;
    let algorithm = match maps {
        Some(raw) => {
            streams.push(pack_map(&raw, &sink).map_err(context)?);
            BSDIFF_X86
        }
        None => BSDIFF_V2,
    };
    let header = DiffHeader {
        algorithm,
        base_manifest: base.manifest_hash,
        base_size: base.manifest.total_file_bytes(),
        target_size,
        target_chunks,
        layout: packed.layout,
        streams: streams.iter().map(|(h, _)| *h).collect(),
    };
    let size = header.encode_prefix().len() as u64
        + streams.iter().map(|(h, _)| h.stored_len).sum::<u64>();
    // What an agent will check first; a candidate it would refuse is not one.
    DiffHeader::decode_prefix(&header.encode_prefix(), size).map_err(context)?;
    Ok(Candidate {
        header,
        streams,
        size,
    })
}

/// Opens the archive of `m`, checking its size.
pub(crate) fn open_archive(repo: &Repo, m: &Manifest) -> Result<(File, PathBuf)> {
    let path = repo.object_file(&m.archive.hash);
    let file = fsutil::open(&path)?;
    let len = file.metadata().map_err(io_err("read", &path))?.len();
    if len != m.archive.size {
        return Err(repo.broken(format!(
            "archive {} has {len} bytes, its manifest says {}",
            path.display(),
            m.archive.size
        )));
    }
    Ok((file, path))
}

/// The base of a diff: every regular file of `m`, in manifest order, from its archive.
fn read_base(repo: &Repo, m: &Manifest, size: u64) -> Result<Vec<u8>> {
    let archive = open_archive(repo, m)?;
    let offsets = m.chunk_offsets();
    let mut out = Vec::with_capacity(size as usize);
    let mut stored = Vec::new();
    // The order of delta::base_files: every File entry, in entry order.
    for e in &m.entries {
        if let EntryKind::File { chunks, .. } = &e.kind {
            for &ix in chunks {
                append_chunk(&archive, m, &offsets, ix as usize, &mut stored, &mut out)?;
            }
        }
    }
    debug_assert_eq!(out.len() as u64, size);
    Ok(out)
}

/// Reads chunk `ix` of `m` from its archive, verifies it, and appends its bytes to `out`.
pub(super) fn append_chunk(
    (file, path): &(File, PathBuf),
    m: &Manifest,
    offsets: &[u64],
    ix: usize,
    stored: &mut Vec<u8>,
    out: &mut Vec<u8>,
) -> Result<()> {
    let c = &m.chunks[ix];
    stored.resize(c.stored_size as usize, 0);
    file.read_exact_at(stored, offsets[ix])
        .map_err(io_err("read", path))?;
    let data = decompress_chunk(&c.id, c.size, stored).map_err(|source| Error::FormatContext {
        context: format!("archive {} holds a damaged chunk", path.display()),
        source,
    })?;
    out.extend_from_slice(&data);
    Ok(())
}

/// Write buffer of a raw stream's spool: small, as the spools fill while the encoder
/// holds its suffix array (the publisher's peak).
const SPOOL_BUFFER: usize = 64 << 10;

/// A raw stream spooled to a temp file next to the objects.
struct Spool {
    out: BufWriter<NamedTempFile>,
    len: u64,
}

impl Spool {
    fn new(repo: &Repo) -> Result<Spool> {
        Ok(Spool {
            out: BufWriter::with_capacity(SPOOL_BUFFER, repo.object_temp()?),
            len: 0,
        })
    }

    /// The finished raw stream and its length.
    fn finish(self) -> Result<Spooled> {
        let path = self.out.get_ref().path().to_path_buf();
        let tmp = self
            .out
            .into_inner()
            .map_err(|e| io_err("write", &path)(e.into_error()))?;
        Ok(Spooled {
            file: tmp,
            len: self.len,
        })
    }
}

impl Write for Spool {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// A raw stream spooled to a temp file, and its length.
struct Spooled {
    file: NamedTempFile,
    len: u64,
}

impl RawSource for Spooled {
    fn len(&self) -> u64 {
        self.len
    }
    /// Each packing candidate reads through its own handle.
    fn open(&self) -> io::Result<Box<dyn Read + Send + '_>> {
        Ok(Box::new(BufReader::with_capacity(
            1 << 20,
            self.file.reopen()?,
        )))
    }
}

/// Writes a manifest diff from each base to `new_bytes` (the signed new manifest) and
/// returns the head's list, sorted by base manifest. Where `diffs` (the new manifest's
/// data diffs) has one from the same base, the manifest diff yields a skeleton whose
/// missing chunk ids that data diff fills in (FORMAT.md §3.7), and the head pins the
/// data diff next to it; ids stay for chunks of the releases older than the base
/// (among `bases` and the `earlier` ones before them), which an agent on it may still
/// have. One that is not smaller than the manifest is left out.
pub fn write_manifest_diffs(
    repo: &Repo,
    new_bytes: &[u8],
    bases: &[BaseRelease],
    earlier: &[BaseRelease],
    diffs: &[DiffRef],
) -> Result<Vec<ManifestDiffRef>> {
    let mut out = Vec::new();
    for b in bases {
        let chunk_diff = diffs
            .iter()
            .find(|d| d.base_manifest == b.manifest_hash)
            .map(|d| d.object);
        let target = match chunk_diff {
            Some(_) => {
                // An agent on `b` may still hold the releases before it; ids of their
                // chunks stay so it can copy them rather than take them from the diff.
                let older: std::collections::HashSet<_> = bases
                    .iter()
                    .chain(earlier)
                    .filter(|o| older_than(&o.version, &b.version))
                    .flat_map(|o| o.manifest.chunks.iter().map(|c| c.id))
                    .collect();
                Skeleton::make(new_bytes, &b.manifest, &|id| older.contains(id))?
            }
            None => new_bytes.to_vec(),
        };
        let d = encode_manifest_diff(&b.manifest_bytes, &target, MANIFEST_DIFF_LEVEL)?;
        if d.len() >= new_bytes.len() {
            tracing::info!(
                base = b.version,
                "no manifest diff: not smaller than the manifest"
            );
            continue;
        }
        let object = repo.write_object(&d)?;
        tracing::info!(
            base = b.version,
            size = object.size,
            skeleton = chunk_diff.is_some(),
            "manifest diff written"
        );
        out.push(ManifestDiffRef {
            base_manifest: b.manifest_hash,
            object,
            chunk_diff,
        });
    }
    out.sort_by_key(|d| d.base_manifest);
    out.dedup_by_key(|d| d.base_manifest);
    Ok(out)
}

fn older_than(a: &str, b: &str) -> bool {
    matches!((Version::parse(a), Version::parse(b)), (Ok(x), Ok(y)) if x < y)
}

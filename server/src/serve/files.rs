//! What `serve` keeps in memory about a folder repository's files, so that a request
//! costs no more than it must: the small files (channel heads, key lists) whole, and
//! the objects open.
//!
//! **Small files** ([`Files::small`]): kept with their ETag, and checked with one `stat`
//! per request. The cached copy is served only while the path's file is the very one
//! read — same device, inode, size, modification and change times — and that file had
//! not changed in the racy window (below) before it was read. A file is replaced by a
//! rename (publish, upload) or rewritten in place (tests, hand edits): both give the
//! path a new inode or a new change time (`ctime`, which no one can set back), so the
//! next request reads the new version. A change within the same clock tick as the
//! read could leave the times equal; that is why a file changed less than that window
//! before it was read is read again on every request until it has been quiet that long
//! (as git does with "racily clean" index entries): [`RACY`], a few ticks of the
//! kernel's coarse clock, which stamps the times; [`RACY_COARSE`] on a filesystem that
//! keeps whole seconds (both times without a fraction of a second). A cached head is therefore never
//! staler than the `stat` that checks it, and never torn: a replaced head is read
//! whole from one open file, and its ETag is the hash of exactly those bytes.
//!
//! **Objects** ([`Files::object`]): content-addressed, so never changed, only created
//! and deleted (by `gc`). Each stays open, with its length, ETag and kind, in a bounded
//! table ([`OPEN_MAX`] descriptors at most per serving thread: each keeps its own
//! tables, so a request takes no lock; the least recently used are closed first),
//! so a range costs one read, not an open, a `stat`, a read and a close. An entry is
//! checked against its path at most every [`RECHECK`]: an object deleted by `gc` (or
//! replaced) is served from the open file for at most that long after, then answered
//! 404 (or the new file). Serving a deleted immutable object a moment longer is
//! harmless — its bytes are still exactly those its name promises — and nginx's
//! `open_file_cache` does the same for its `open_file_cache_valid` (60 s).

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use ferry_format::id::Digest;
use ferry_format::layout::object_path;
use http::HeaderValue;

use super::metrics::Kind;

/// A small file that changed less than this before it was read is read again on the
/// next request (see the module docs): five ticks of a 100 Hz kernel's coarse clock.
/// (2 s made a head published just before a burst of requests cost a read on each of
/// them for 2 s: 17% fewer heads per second over the first 4 s.)
pub const RACY: Duration = Duration::from_millis(50);
/// The same, for a file whose times have no fraction of a second: a filesystem that
/// keeps whole seconds (ext3's small inodes) or two (FAT).
pub const RACY_COARSE: Duration = Duration::from_secs(2);
/// How often an open object is checked against its path (deleted or replaced).
pub const RECHECK: Duration = Duration::from_secs(1);
/// Objects kept open at most by each serving thread (file descriptors).
pub const OPEN_MAX: usize = 256;
/// Small files remembered at most (heads and key lists that exist: a repository has a
/// few; the table is emptied should it ever grow past this).
const SMALL_MAX: usize = 4096;

/// The files of one folder repository.
pub struct Files {
    root: PathBuf,
    epoch: Instant,
    /// Names this repository's tables in each thread's [`TABLES`] (they are dropped
    /// once it is).
    alive: Arc<()>,
}

thread_local! {
    /// Each thread's tables, per [`Files`] (tests run several servers in a process).
    /// A serving thread keeps its own, as nginx's worker processes do: a request takes
    /// no lock and writes no cache line another core uses (a shared table's lock and
    /// reference counts cost each request two cores' worth of cache-line transfers).
    static TABLES: RefCell<Vec<(Weak<()>, Tables)>> = const { RefCell::new(Vec::new()) };
}

#[derive(Default)]
struct Tables {
    small: HashMap<String, Arc<Small>>,
    open: Open,
}

/// A channel head or key list, as read.
pub struct Small {
    pub body: Bytes,
    /// The quoted hash of `body`.
    pub etag: HeaderValue,
    path: PathBuf,
    stamp: Stamp,
    /// Changed too shortly before it was read for `stamp` to tell every change.
    racy: bool,
}

/// An object, open.
pub struct Object {
    pub file: File,
    pub len: u64,
    /// The quoted hash that names it.
    pub etag: HeaderValue,
    /// Its kind, for the metrics.
    pub kind: Kind,
    path: PathBuf,
    id: (u64, u64),
    /// Milliseconds since `Files::epoch` when it was last found at its path.
    checked: AtomicU64,
}

/// Which file a path held, and how it last changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(m: &std::fs::Metadata) -> Stamp {
        Stamp {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }

    /// How long after a change the times may still not tell the next one apart.
    fn racy_window(&self) -> Duration {
        if self.mtime.1 == 0 && self.ctime.1 == 0 {
            RACY_COARSE
        } else {
            RACY
        }
    }

    /// Whether the file changed after `since` (on the filesystem's clock).
    fn changed_after(&self, since: SystemTime) -> bool {
        let since = match since.duration_since(SystemTime::UNIX_EPOCH) {
            Ok(d) => (d.as_secs() as i64, i64::from(d.subsec_nanos())),
            Err(_) => return true,
        };
        self.ctime >= since || self.mtime >= since
    }
}

/// The open objects: two generations, so a lookup is one or two hash probes and the
/// least recently used half is closed at once when the table is full.
#[derive(Default)]
struct Open {
    young: HashMap<Digest, Arc<Object>>,
    old: HashMap<Digest, Arc<Object>>,
}

impl Open {
    fn get(&mut self, hash: &Digest) -> Option<Arc<Object>> {
        if let Some(o) = self.young.get(hash) {
            return Some(o.clone());
        }
        let o = self.old.remove(hash)?;
        self.insert(*hash, o.clone());
        Some(o)
    }

    fn insert(&mut self, hash: Digest, o: Arc<Object>) {
        if self.young.len() >= OPEN_MAX / 2 {
            // The old generation (not used since the young one began) is closed.
            self.old = std::mem::take(&mut self.young);
        }
        self.young.insert(hash, o);
    }

    fn remove(&mut self, hash: &Digest) {
        self.young.remove(hash);
        self.old.remove(hash);
    }
}

impl Files {
    pub fn new(root: &Path) -> Files {
        Files {
            root: root.to_path_buf(),
            epoch: Instant::now(),
            alive: Arc::new(()),
        }
    }

    /// Runs `f` on this thread's tables of this repository.
    fn tables<T>(&self, f: impl FnOnce(&mut Tables) -> T) -> T {
        TABLES.with_borrow_mut(|all| {
            all.retain(|(w, _)| w.strong_count() > 0);
            let me = Arc::as_ptr(&self.alive);
            let i = match all.iter().position(|(w, _)| std::ptr::eq(w.as_ptr(), me)) {
                Some(i) => i,
                None => {
                    all.push((Arc::downgrade(&self.alive), Tables::default()));
                    all.len() - 1
                }
            };
            f(&mut all[i].1)
        })
    }

    /// The small file `rel` (at most `limit` bytes): the cached copy while the path
    /// still holds the file it was read from, else read now. Not found: `NotFound`.
    pub fn small(&self, rel: &str, limit: u64) -> io::Result<Arc<Small>> {
        let cached = self.tables(|t| t.small.get(rel).cloned());
        let found = match &cached {
            Some(c) => std::fs::metadata(&c.path),
            None => std::fs::metadata(self.root.join(rel)),
        };
        let meta = match found {
            Ok(m) if m.is_file() => m,
            Ok(_) => return Err(self.forget_small(rel, io::ErrorKind::NotFound.into())),
            Err(e) => return Err(self.forget_small(rel, e)),
        };
        if let Some(c) = cached
            && !c.racy
            && c.stamp == Stamp::of(&meta)
        {
            return Ok(c);
        }
        let small = match read_small(self.root.join(rel), limit) {
            Ok(s) => Arc::new(s),
            Err(e) => return Err(self.forget_small(rel, e)),
        };
        self.tables(|t| {
            if t.small.len() >= SMALL_MAX {
                t.small.clear();
            }
            t.small.insert(rel.to_string(), small.clone());
        });
        Ok(small)
    }

    fn forget_small(&self, rel: &str, e: io::Error) -> io::Error {
        self.tables(|t| t.small.remove(rel));
        e
    }

    /// The object `hash`, open. Not found: `NotFound`.
    pub fn object(&self, hash: &Digest) -> io::Result<Arc<Object>> {
        let now = self.epoch.elapsed().as_millis() as u64;
        let cached = self.tables(|t| t.open.get(hash));
        if let Some(o) = cached {
            if now.saturating_sub(o.checked.load(Ordering::Relaxed)) < RECHECK.as_millis() as u64 {
                return Ok(o);
            }
            match std::fs::metadata(&o.path) {
                Ok(m) if (m.dev(), m.ino()) == o.id => {
                    o.checked.store(now, Ordering::Relaxed);
                    return Ok(o);
                }
                // Replaced: opened again below.
                Ok(_) => {}
                Err(e) => {
                    self.tables(|t| t.open.remove(hash));
                    return Err(e);
                }
            }
        }
        let path = self.root.join(object_path(hash));
        let file = File::open(&path)?;
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(io::ErrorKind::NotFound.into());
        }
        let kind = kind_of(&file)?;
        let o = Arc::new(Object {
            file,
            len: meta.len(),
            etag: quoted(hash),
            kind,
            path,
            id: (meta.dev(), meta.ino()),
            checked: AtomicU64::new(now),
        });
        self.tables(|t| t.open.insert(*hash, o.clone()));
        Ok(o)
    }
}

impl Files {
    /// The regular file `rel` of the repository, open, with its length (a head log
    /// entry: immutable, but rarely asked, so not kept open).
    pub fn open(&self, rel: &str) -> io::Result<(File, u64)> {
        let file = File::open(self.root.join(rel))?;
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(io::ErrorKind::NotFound.into());
        }
        Ok((file, meta.len()))
    }
}

/// Reads `path` whole (at most `limit` bytes) from one open file.
fn read_small(path: PathBuf, limit: u64) -> io::Result<Small> {
    use std::io::Read;
    let started = SystemTime::now();
    let mut file = File::open(&path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::ErrorKind::NotFound.into());
    }
    let stamp = Stamp::of(&meta);
    if stamp.len > limit {
        return Err(io::Error::other(format!(
            "{}: {} bytes, more than the {limit} allowed",
            path.display(),
            stamp.len
        )));
    }
    let mut body = Vec::with_capacity(stamp.len as usize);
    // One byte past the limit tells a file that grew since the stat.
    (&mut file).take(limit + 1).read_to_end(&mut body)?;
    if body.len() as u64 > limit {
        return Err(io::Error::other(format!(
            "{}: more than the {limit} bytes allowed",
            path.display()
        )));
    }
    let racy = started
        .checked_sub(stamp.racy_window())
        .is_none_or(|t| stamp.changed_after(t));
    Ok(Small {
        etag: quoted(&Digest::of(&body)),
        body: Bytes::from(body),
        path,
        stamp,
        racy,
    })
}

/// An object's kind by its first bytes: a manifest's magic `FRYM`, a diff's `FRYD`;
/// anything else (archives, and manifest diffs, which are bare zstd frames like an
/// archive's chunks) counts as an archive.
fn kind_of(file: &File) -> io::Result<Kind> {
    let mut magic = [0u8; 4];
    match file.read_exact_at(&mut magic, 0) {
        Ok(()) if &magic == b"FRYM" => Ok(Kind::manifest),
        Ok(()) if &magic == b"FRYD" => Ok(Kind::diff),
        Ok(()) => Ok(Kind::archive),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(Kind::archive),
        Err(e) => Err(e),
    }
}

/// `"<hex>"`, an ETag.
pub fn quoted(hash: &Digest) -> HeaderValue {
    let text = format!("\"{}\"", hash.to_hex());
    // Hex digits and quotes are always a valid header value.
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("\"\""))
}

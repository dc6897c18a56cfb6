//! `serve --cache-dir DIR --cache-size SIZE`: immutable objects of a bucket kept on
//! local disk, least recently used evicted first.
//!
//! A request for an object the cache lacks is answered straight from the bucket
//! (streamed, the requested range only) while one background task per object copies
//! the whole object into the cache; later requests are answered from the file. A copy
//! is checked against the object's name (size and blake3) before it is renamed into
//! place, so the cache never serves bytes the bucket did not hold under that name.
//! Objects are content-addressed and never change, so a cached copy never goes stale.
//!
//! Eviction deletes files that requests may still be reading; an open file stays
//! readable until closed. At start the folder's complete files are taken back, oldest
//! modification first in line for eviction; leftovers of interrupted copies are removed.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ferry_format::id::Digest;
use ferry_format::layout::object_path;
use futures_util::StreamExt;

use super::object::ObjectRepo;
use crate::error::{Result, io_err};
use crate::fsutil::{self, DIR_MODE};

/// Prefix of the copies in progress.
const PARTIAL: &str = ".partial-";

/// The cache folder and its bookkeeping.
pub struct DiskCache {
    dir: PathBuf,
    capacity: u64,
    state: Mutex<Lru>,
}

#[derive(Default)]
struct Lru {
    /// Cached object → (size, last use).
    entries: HashMap<Digest, (u64, u64)>,
    total: u64,
    clock: u64,
    /// Objects being copied in now.
    filling: HashSet<Digest>,
}

impl std::fmt::Debug for DiskCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskCache")
            .field("dir", &self.dir)
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl DiskCache {
    /// Opens (creating) the cache folder `dir` holding at most `capacity` bytes, and
    /// takes back the objects it already holds.
    pub fn open(dir: &Path, capacity: u64) -> Result<DiskCache> {
        fsutil::ensure_dir(dir, DIR_MODE)?;
        let mut found = Vec::new();
        for item in std::fs::read_dir(dir).map_err(io_err("list", dir))? {
            let item = item.map_err(io_err("list", dir))?;
            let path = item.path();
            let name = item.file_name().to_string_lossy().into_owned();
            if name.starts_with(PARTIAL) {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let Ok(hash) = Digest::from_hex(&name) else {
                continue;
            };
            let meta = item.metadata().map_err(io_err("read", &path))?;
            if meta.is_file() {
                found.push((meta.modified().ok(), hash, meta.len()));
            }
        }
        found.sort();
        let cache = DiskCache {
            dir: dir.to_path_buf(),
            capacity,
            state: Mutex::new(Lru::default()),
        };
        {
            let mut lru = cache.lock();
            for (_, hash, size) in found {
                lru.clock += 1;
                let clock = lru.clock;
                lru.entries.insert(hash, (size, clock));
                lru.total += size;
            }
            cache.evict(&mut lru);
        }
        Ok(cache)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lru> {
        // The bookkeeping stays consistent at every await-free step: a panic while
        // holding the lock leaves nothing half-done.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn file(&self, hash: &Digest) -> PathBuf {
        self.dir.join(hash.to_hex())
    }

    /// The cached copy of object `hash`, marked as just used.
    pub fn get(&self, hash: &Digest) -> Option<PathBuf> {
        let mut lru = self.lock();
        lru.clock += 1;
        let clock = lru.clock;
        let entry = lru.entries.get_mut(hash)?;
        entry.1 = clock;
        Some(self.file(hash))
    }

    /// Forgets `hash` (its file vanished behind the cache's back).
    pub fn forget(&self, hash: &Digest) {
        let mut lru = self.lock();
        if let Some((size, _)) = lru.entries.remove(hash) {
            lru.total -= size;
        }
    }

    /// Starts copying object `hash` (`size` bytes) from `o` into the cache, unless it
    /// is there, on its way, or larger than the whole cache.
    pub fn fill(self: &Arc<Self>, o: &Arc<ObjectRepo>, hash: Digest, size: u64) {
        if size > self.capacity {
            return;
        }
        {
            let mut lru = self.lock();
            if lru.entries.contains_key(&hash) || !lru.filling.insert(hash) {
                return;
            }
        }
        let cache = self.clone();
        let o = o.clone();
        tokio::spawn(async move {
            if let Err(e) = cache.copy_in(&o, &hash, size).await {
                tracing::warn!(object = %hash, "cannot cache this object: {e:#}");
            }
            cache.lock().filling.remove(&hash);
        });
    }

    async fn copy_in(&self, o: &ObjectRepo, hash: &Digest, size: u64) -> Result<()> {
        let mut tmp = tempfile::Builder::new()
            .prefix(PARTIAL)
            .tempfile_in(&self.dir)
            .map_err(io_err("create a temporary file in", &self.dir))?;
        let tmp_path = tmp.path().to_path_buf();
        let rel = object_path(hash);
        let mut body = o
            .stream(&rel, 0..size)
            .await
            .map_err(io_err("read", Path::new(&rel)))?;
        let mut hasher = blake3::Hasher::new();
        let mut len = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(io_err("read", Path::new(&rel)))?;
            len += chunk.len() as u64;
            hasher.update(&chunk);
            // Small synchronous writes: the page cache absorbs them.
            tmp.write_all(&chunk).map_err(io_err("write", &tmp_path))?;
        }
        if len != size || Digest::from(hasher.finalize()) != *hash {
            return Err(crate::error::Error::BrokenRepo {
                repo: PathBuf::from(o.url().to_string()),
                reason: format!("object {rel} does not hold the bytes its name says"),
            });
        }
        let dest = self.file(hash);
        tmp.persist(&dest)
            .map_err(|e| io_err("rename into", &dest)(e.error))?;
        let mut lru = self.lock();
        lru.clock += 1;
        let clock = lru.clock;
        if lru.entries.insert(*hash, (size, clock)).is_none() {
            lru.total += size;
        }
        self.evict(&mut lru);
        Ok(())
    }

    /// Deletes least recently used files until the total fits the capacity.
    fn evict(&self, lru: &mut Lru) {
        while lru.total > self.capacity {
            let Some((&oldest, &(size, _))) = lru.entries.iter().min_by_key(|(_, (_, t))| *t)
            else {
                break;
            };
            lru.entries.remove(&oldest);
            lru.total -= size;
            let path = self.file(&oldest);
            if let Err(e) = std::fs::remove_file(&path)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!("cannot evict {}: {e}", path.display());
            }
            tracing::debug!(object = %oldest, size, "evicted from the cache");
        }
    }

    /// Bytes held now.
    pub fn used(&self) -> u64 {
        self.lock().total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(dir: &Path, bytes: &[u8]) -> Digest {
        let d = Digest::of(bytes);
        std::fs::write(dir.join(d.to_hex()), bytes).unwrap();
        d
    }

    #[test]
    fn least_recently_used_goes_first_and_restarts_keep_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let a = put(dir.path(), &[1; 40]);
        std::thread::sleep(std::time::Duration::from_millis(20));
        let b = put(dir.path(), &[2; 40]);
        std::fs::write(dir.path().join(format!("{PARTIAL}x")), b"half").unwrap();
        let cache = DiskCache::open(dir.path(), 100).unwrap();
        assert_eq!(cache.used(), 80);
        assert!(!dir.path().join(format!("{PARTIAL}x")).exists());
        // a is used after b, so b is the least recently used one.
        assert!(cache.get(&a).is_some());
        let c = put(dir.path(), &[3; 40]);
        {
            let mut lru = cache.lock();
            lru.clock += 1;
            let clock = lru.clock;
            lru.entries.insert(c, (40, clock));
            lru.total += 40;
            cache.evict(&mut lru);
        }
        assert_eq!(cache.used(), 80);
        assert!(cache.get(&b).is_none() && !dir.path().join(b.to_hex()).exists());
        assert!(cache.get(&a).is_some() && cache.get(&c).is_some());
        // A smaller capacity at restart evicts down to it, oldest files first.
        drop(cache);
        let cache = DiskCache::open(dir.path(), 50).unwrap();
        assert_eq!(cache.used(), 40);
    }
}

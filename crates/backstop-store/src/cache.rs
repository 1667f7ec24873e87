//! A local cache of the repository's immutable metadata objects (index and snapshots), so that
//! opening a repository and listing backups do not download them again on every run.
//!
//! The cache is an accelerator, never the truth: the store decides which objects exist (every
//! `list` goes to it and drops cache entries it no longer lists), and every cache entry carries
//! the BLAKE3 hash of its bytes, checked on each read; a damaged entry is dropped and fetched
//! again. An entry whose hash matches but whose bytes the reader finds bad (they were fetched from
//! a damaged copy of the repository) is dropped by [`Store::evict`], so that the next read goes
//! to the store, which may hold a mended copy by then. Any failure of the cache itself (full disk, permissions) is logged and the request goes
//! to the store, so a broken cache costs requests, never a failed operation.

use std::collections::HashSet;
use std::fs;
use std::io::Write as _;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use crate::memory::check_range;
use crate::{ObjectMeta, PendingObject, PutMode, Store, StoreError, validate_key};

/// The key prefixes whose objects never change once written: index objects are named by the
/// hash of their content and snapshots by a unique name. `config` and `keys/` are not among
/// them (key files are deleted when a password changes), and neither are packs, which are read
/// by range and would make the cache as large as the repository.
const CACHED_PREFIXES: &[&str] = &["index/", "snapshots/"];

/// Marks a repository's cache directory as used: its modification time is when a process last
/// opened the repository through the cache.
const LAST_USED: &str = ".last-used";

/// Marks the cache directory `<base>/<current>` as used now and removes the cache directories of
/// other repositories under `base` that no process has used for `max_age` (restic removes its
/// unused caches after 30 days the same way): a deleted repository's cache does not stay
/// forever. Only directories named like a repository id (32 hex digits) are considered, never
/// through a symlink. Returns how many were removed; failures are logged and skipped, since a
/// cache is never worth failing an operation for.
pub fn remove_unused_caches(base: &Path, current: &str, max_age: Duration) -> usize {
    let stamp = base.join(current).join(LAST_USED);
    let touched = fs::create_dir_all(base.join(current))
        .and_then(|()| fs::File::create(&stamp))
        .and_then(|f| f.set_modified(SystemTime::now()));
    if let Err(e) = touched {
        tracing::debug!(path = %stamp.display(), error = %e, "cannot mark the cache as used");
    }
    let Ok(listing) = fs::read_dir(base) else {
        return 0;
    };
    let mut removed = 0;
    for item in listing.flatten() {
        let name = item.file_name();
        let Some(name) = name.to_str() else { continue };
        let is_repository_id = name.len() == 32 && name.bytes().all(|b| b.is_ascii_hexdigit());
        if !is_repository_id || name == current {
            continue;
        }
        let dir = item.path();
        let Ok(md) = fs::symlink_metadata(&dir) else {
            continue;
        };
        if !md.is_dir() {
            continue;
        }
        let used = fs::metadata(dir.join(LAST_USED))
            .and_then(|m| m.modified())
            .or_else(|_| md.modified());
        let unused_for = used
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok());
        if unused_for.is_some_and(|age| age > max_age) {
            match fs::remove_dir_all(&dir) {
                Ok(()) => removed += 1,
                Err(e) => tracing::warn!(
                    path = %dir.display(),
                    error = %e,
                    "cannot remove an unused repository cache"
                ),
            }
        }
    }
    removed
}

/// Starts every cache entry; the version lets a later format be told apart.
const MAGIC: &[u8; 8] = b"BKSCACH1";
const HASH_LEN: usize = 32;
const HEADER_LEN: usize = MAGIC.len() + HASH_LEN;

/// Temporary files of writes in progress live here, beside the entries so the final rename
/// stays on one filesystem; the leading dot keeps them out of the entry walk.
const TMP_DIR: &str = ".tmp";
/// A temporary file older than this belongs to a process that died mid-write.
const TMP_MAX_AGE: Duration = Duration::from_secs(3600);

/// What a [`CachingStore`] did so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CacheStats {
    /// Gets answered from the cache.
    pub hits: u64,
    /// Gets of cacheable objects that went to the store.
    pub misses: u64,
    /// Entries whose bytes did not match their hash; dropped and fetched again.
    pub damaged: u64,
    /// Entries dropped by [`Store::evict`]: the reader found their bytes bad (a copy of a
    /// damaged object), so the next read fetches the object again.
    pub evicted: u64,
    /// Entries removed because a listing no longer showed their object.
    pub pruned: u64,
    /// Failures of the cache directory itself (the request then went to the store).
    pub errors: u64,
}

#[derive(Debug, Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    damaged: AtomicU64,
    evicted: AtomicU64,
    pruned: AtomicU64,
    errors: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Keeps copies of `index/` and `snapshots/` objects in a local directory.
///
/// ```
/// use backstop_store::{CachingStore, CountingStore, MemoryStore, PutMode, Store};
///
/// let dir = tempfile::tempdir()?;
/// let remote = CountingStore::new(MemoryStore::new());
/// remote.put("index/ab12", b"index bytes", PutMode::Create)?;
///
/// let first = CachingStore::new(remote.clone(), dir.path());
/// assert_eq!(first.get("index/ab12")?, b"index bytes");
/// // A later run with the same cache directory reads it locally.
/// let second = CachingStore::new(remote.clone(), dir.path());
/// assert_eq!(second.get("index/ab12")?, b"index bytes");
/// assert_eq!(remote.counts().gets, 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// - `get` of a cached key reads the entry, checks its hash and returns it without a request;
///   otherwise it fetches from the store and keeps a copy.
/// - `put` of a cacheable key keeps a copy once the store accepted it, so the objects a backup
///   writes are not downloaded by the next one.
/// - `list` always asks the store and removes the entries under the listed prefix that the
///   store no longer has (deleted by `gc`, `delete` or another host).
/// - `delete` removes the entry too, and so does `evict`, which a reader calls when the bytes it
///   got do not authenticate or decode: the entry's hash only proves that they are the bytes
///   that were fetched, not that the object fetched was sound.
/// - Everything else goes to the store unchanged.
///
/// One directory per repository: the engine uses `<cache dir>/<repository id>`. Entries are
/// written to a temporary file and renamed into place, so several processes can share the
/// directory. Nothing is fsynced: a torn entry after a crash fails its hash check and is
/// fetched again.
#[derive(Clone, Debug)]
pub struct CachingStore<S> {
    inner: S,
    dir: PathBuf,
    prefixes: Arc<Vec<String>>,
    counters: Arc<Counters>,
}

/// Whether a [`CachingStore::new`] keeps objects under `key`: `index/` and `snapshots/`.
pub fn is_cacheable(key: &str) -> bool {
    CACHED_PREFIXES.iter().any(|p| key.starts_with(p))
}

impl<S: Store> CachingStore<S> {
    /// Caches the immutable objects of `inner` under `dir`, which is created when the first
    /// entry is written. Leftover temporary files of dead processes are removed.
    pub fn new(inner: S, dir: impl Into<PathBuf>) -> Self {
        Self::with_prefixes(inner, dir, CACHED_PREFIXES.iter().map(|p| (*p).to_owned()))
    }

    /// Caches the objects under other key prefixes than the repository's `index/` and
    /// `snapshots/`; each must end with `/` and hold only objects that are never overwritten
    /// by another process (overwrites through this store itself are seen).
    pub fn with_prefixes(
        inner: S,
        dir: impl Into<PathBuf>,
        prefixes: impl IntoIterator<Item = String>,
    ) -> Self {
        let store = Self {
            inner,
            dir: dir.into(),
            prefixes: Arc::new(
                prefixes
                    .into_iter()
                    .filter(|p| p.ends_with('/') && validate_key(p.trim_end_matches('/')).is_ok())
                    .collect(),
            ),
            counters: Arc::default(),
        };
        store.remove_old_temporaries();
        store
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What the cache did so far (shared by clones).
    pub fn stats(&self) -> CacheStats {
        let c = &self.counters;
        CacheStats {
            hits: c.hits.load(Ordering::Relaxed),
            misses: c.misses.load(Ordering::Relaxed),
            damaged: c.damaged.load(Ordering::Relaxed),
            evicted: c.evicted.load(Ordering::Relaxed),
            pruned: c.pruned.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
        }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Unwraps the inner store.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The entry file of a key; `None` for keys the cache does not keep (or invalid ones, which
    /// the store then rejects with its own error).
    fn entry_path(&self, key: &str) -> Option<PathBuf> {
        let cached = self.prefixes.iter().any(|p| key.starts_with(p.as_str()));
        if !cached || validate_key(key).is_err() {
            return None;
        }
        // Validated keys are relative, `/`-separated and free of `.` and `..` segments.
        Some(key.split('/').fold(self.dir.clone(), |p, seg| p.join(seg)))
    }

    fn cache_error(&self, key: &str, what: &str, path: &Path, err: &std::io::Error) {
        bump(&self.counters.errors);
        tracing::warn!(
            key,
            path = %path.display(),
            error = %err,
            "metadata cache: {what} failed; using the store instead"
        );
    }

    /// The cached bytes of `key`, if a sound entry exists. A damaged entry is removed.
    fn read_entry(&self, key: &str, path: &Path) -> Option<Vec<u8>> {
        let mut raw = match fs::read(path) {
            Ok(raw) => raw,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return None,
            Err(err) => {
                self.cache_error(key, "reading an entry", path, &err);
                return None;
            }
        };
        let sound = raw.len() >= HEADER_LEN
            && raw.get(..MAGIC.len()) == Some(MAGIC.as_slice())
            && raw.get(MAGIC.len()..HEADER_LEN).is_some_and(|stored| {
                blake3::hash(raw.get(HEADER_LEN..).unwrap_or_default()) == *stored
            });
        if !sound {
            bump(&self.counters.damaged);
            tracing::warn!(
                key,
                path = %path.display(),
                "metadata cache entry is damaged (hash mismatch); dropping it and fetching the object again"
            );
            self.remove_entry(key, path);
            return None;
        }
        raw.drain(..HEADER_LEN);
        Some(raw)
    }

    /// Stores a copy of `bytes` under `path`: temporary file, then rename, so readers see
    /// either no entry or a whole one.
    fn write_entry(&self, key: &str, path: &Path, bytes: &[u8]) {
        let tmp_dir = self.dir.join(TMP_DIR);
        let result = (|| {
            fs::create_dir_all(&tmp_dir)?;
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent)?;
            }
            let mut tmp = tempfile::NamedTempFile::new_in(&tmp_dir)?;
            tmp.write_all(MAGIC)?;
            tmp.write_all(blake3::hash(bytes).as_bytes())?;
            tmp.write_all(bytes)?;
            tmp.persist(path).map_err(|e| e.error)?;
            Ok::<(), std::io::Error>(())
        })();
        if let Err(err) = result {
            self.cache_error(key, "writing an entry", path, &err);
        }
    }

    /// Removes the entry of `key`; returns whether there was one.
    fn remove_entry(&self, key: &str, path: &Path) -> bool {
        match fs::remove_file(path) {
            Ok(()) => true,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => false,
            Err(err) => {
                self.cache_error(key, "removing an entry", path, &err);
                false
            }
        }
    }

    fn remove_old_temporaries(&self) {
        let Ok(entries) = fs::read_dir(self.dir.join(TMP_DIR)) else {
            return;
        };
        let now = SystemTime::now();
        for entry in entries.flatten() {
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|modified| now.duration_since(modified).ok())
                .is_some_and(|age| age > TMP_MAX_AGE);
            if old {
                // Best effort: another process may have removed it already.
                let _ = fs::remove_file(entry.path());
            }
        }
    }

    /// Keys of the entries whose key starts with `prefix`.
    fn cached_keys(&self, prefix: &str) -> Vec<(String, PathBuf)> {
        let mut out = Vec::new();
        for top in self.prefixes.iter() {
            // Only the cached prefixes a listing of `prefix` overlaps.
            if !(top.starts_with(prefix) || prefix.starts_with(top.as_str())) {
                continue;
            }
            let top_key = top.trim_end_matches('/');
            let top_dir = top_key
                .split('/')
                .fold(self.dir.clone(), |p, seg| p.join(seg));
            walk(&top_dir, top_key, &mut out);
        }
        out.retain(|(key, _)| key.starts_with(prefix));
        out
    }

    fn fetch(&self, key: &str, path: Option<&Path>) -> Result<Vec<u8>, StoreError> {
        let bytes = self.inner.get(key)?;
        if let Some(path) = path {
            self.write_entry(key, path, &bytes);
        }
        Ok(bytes)
    }
}

/// Collects the entry files under `dir` as keys starting with `key_prefix`; skips temporary
/// files and anything that is not a plain file.
fn walk(dir: &Path, key_prefix: &str, out: &mut Vec<(String, PathBuf)>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        let key = format!("{key_prefix}/{name}");
        match entry.file_type() {
            Ok(t) if t.is_dir() => walk(&entry.path(), &key, out),
            Ok(t) if t.is_file() => out.push((key, entry.path())),
            _ => {}
        }
    }
}

impl<S: Store> Store for CachingStore<S> {
    fn put(&self, key: &str, bytes: &[u8], mode: PutMode) -> Result<(), StoreError> {
        self.inner.put(key, bytes, mode)?;
        if let Some(path) = self.entry_path(key) {
            self.write_entry(key, &path, bytes);
        }
        Ok(())
    }

    fn get(&self, key: &str) -> Result<Vec<u8>, StoreError> {
        let Some(path) = self.entry_path(key) else {
            return self.inner.get(key);
        };
        if let Some(bytes) = self.read_entry(key, &path) {
            bump(&self.counters.hits);
            return Ok(bytes);
        }
        bump(&self.counters.misses);
        self.fetch(key, Some(&path))
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>, StoreError> {
        let cached = self
            .entry_path(key)
            .and_then(|path| self.read_entry(key, &path));
        let Some(bytes) = cached else {
            return self.inner.get_range(key, range);
        };
        check_range(key, &range, bytes.len() as u64)?;
        bump(&self.counters.hits);
        // check_range proved both ends fit in the entry's length, which is a usize.
        Ok(bytes
            .get(range.start as usize..range.end as usize)
            .map(<[u8]>::to_vec)
            .unwrap_or_default())
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        let listed = self.inner.list(prefix)?;
        let present: HashSet<&str> = listed.iter().map(|m| m.key.as_str()).collect();
        for (key, path) in self.cached_keys(prefix) {
            if !present.contains(key.as_str()) {
                tracing::debug!(key, "metadata cache: object is gone from the store");
                bump(&self.counters.pruned);
                self.remove_entry(&key, &path);
            }
        }
        Ok(listed)
    }

    fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        self.inner.head(key)
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        let result = self.inner.delete(key);
        // Also when the store failed: an entry dropped too early only costs a fetch.
        if let Some(path) = self.entry_path(key) {
            self.remove_entry(key, &path);
        }
        result
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn remove_temp_files(&self, min_age: std::time::Duration) -> Result<u64, StoreError> {
        self.inner.remove_temp_files(min_age)
    }

    fn sequential_read_size(&self) -> u64 {
        self.inner.sequential_read_size()
    }

    /// Removes the entry of `key`, and forwards, so that a cache beneath this one drops its
    /// copy too; `true` if either dropped one.
    fn evict(&self, key: &str) -> bool {
        let below = self.inner.evict(key);
        let here = self.entry_path(key).is_some_and(|path| {
            let removed = self.remove_entry(key, &path);
            if removed {
                bump(&self.counters.evicted);
                tracing::warn!(
                    key,
                    "metadata cache entry holds a damaged object; dropped it, the next read fetches the object again"
                );
            }
            removed
        });
        here || below
    }

    /// Forwarded, so that the inner store's way of writing pieces (a local store's temp file)
    /// is kept. Such an object is not cached on the way, since its key comes only at the end:
    /// the repository writes only packs this way, which are not cached, and a cacheable
    /// object would be cached when first read.
    fn put_pieces(
        &self,
        size_hint: usize,
        buffer: Vec<u8>,
    ) -> Result<Box<dyn PendingObject + '_>, StoreError> {
        self.inner.put_pieces(size_hint, buffer)
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn caches_of_repositories_unused_for_long_go_and_no_other_directory() {
        let base = tempfile::tempdir().unwrap();
        let id = |c: char| c.to_string().repeat(32);
        let old = SystemTime::now() - Duration::from_secs(40 * 86_400);
        for name in [id('a'), id('b'), id('c'), "not-a-repository".to_owned()] {
            fs::create_dir_all(base.path().join(&name).join("index")).unwrap();
        }
        // `b` was last used 40 days ago; `c` has no stamp but a fresh directory; the odd name
        // is old but not a cache this code made.
        let stamp = base.path().join(id('b')).join(LAST_USED);
        fs::File::create(&stamp).unwrap().set_modified(old).unwrap();
        fs::File::open(base.path().join("not-a-repository"))
            .unwrap()
            .set_modified(old)
            .unwrap();
        let removed = remove_unused_caches(base.path(), &id('a'), Duration::from_secs(30 * 86_400));
        assert_eq!(removed, 1);
        assert!(!base.path().join(id('b')).exists());
        for kept in [id('a'), id('c'), "not-a-repository".to_owned()] {
            assert!(base.path().join(&kept).exists(), "{kept}");
        }
        assert!(base.path().join(id('a')).join(LAST_USED).exists());
    }

    use super::*;
    use crate::{CountingStore, MemoryStore, StoreErrorKind};

    fn setup() -> (tempfile::TempDir, CountingStore<MemoryStore>) {
        (
            tempfile::tempdir().unwrap(),
            CountingStore::new(MemoryStore::new()),
        )
    }

    #[test]
    fn only_index_and_snapshots_are_cached() {
        for key in ["index/ab", "snapshots/0000000001-aa", "index/a/b"] {
            assert!(is_cacheable(key), "{key}");
        }
        for key in [
            "config",
            "keys/ab",
            "packs/ab/abcd",
            "locks/x",
            "archive/wal/x",
            "indexx",
        ] {
            assert!(!is_cacheable(key), "{key}");
        }
        let (dir, remote) = setup();
        let cache = CachingStore::new(remote.clone(), dir.path());
        for key in ["config", "keys/k1", "packs/ab/p1", "index/i1"] {
            remote.put(key, b"bytes", PutMode::Create).unwrap();
            cache.get(key).unwrap();
            cache.get(key).unwrap();
        }
        // Three uncached keys twice each, the index object once.
        assert_eq!(remote.counts().gets, 7);
        assert_eq!(cache.stats().hits, 1);
        assert_eq!(cache.stats().misses, 1);
    }

    #[test]
    fn puts_are_kept_so_the_next_run_does_not_download_them() {
        let (dir, remote) = setup();
        let writer = CachingStore::new(remote.clone(), dir.path());
        writer
            .put("snapshots/0000000001-ab", b"snap", PutMode::Create)
            .unwrap();
        // A failed put keeps nothing.
        writer
            .put("snapshots/0000000001-ab", b"other", PutMode::Create)
            .unwrap_err();
        let reader = CachingStore::new(remote.clone(), dir.path());
        assert_eq!(reader.get("snapshots/0000000001-ab").unwrap(), b"snap");
        assert_eq!(
            reader.get_range("snapshots/0000000001-ab", 1..3).unwrap(),
            b"na"
        );
        assert_eq!(
            reader
                .get_range("snapshots/0000000001-ab", 2..9)
                .unwrap_err()
                .kind(),
            StoreErrorKind::InvalidRange
        );
        assert_eq!(remote.counts().gets, 0);
    }

    #[test]
    fn damaged_entries_are_dropped_and_fetched_again() {
        let (dir, remote) = setup();
        remote
            .put("index/i1", b"the index", PutMode::Create)
            .unwrap();
        let cache = CachingStore::new(remote.clone(), dir.path());
        cache.get("index/i1").unwrap();
        let entry = dir.path().join("index/i1");
        for damage in [
            |raw: &mut Vec<u8>| *raw.last_mut().unwrap() ^= 1,
            |raw: &mut Vec<u8>| raw.truncate(raw.len() - 1),
            |raw: &mut Vec<u8>| raw.truncate(5),
            |raw: &mut Vec<u8>| raw[0] = b'X',
        ] {
            let mut raw = fs::read(&entry).unwrap();
            damage(&mut raw);
            fs::write(&entry, raw).unwrap();
            let before = remote.counts().gets;
            assert_eq!(cache.get("index/i1").unwrap(), b"the index");
            assert_eq!(remote.counts().gets, before + 1, "fetched again");
            // And the fresh entry is sound again.
            assert_eq!(cache.get("index/i1").unwrap(), b"the index");
            assert_eq!(remote.counts().gets, before + 1);
        }
        assert_eq!(cache.stats().damaged, 4);
    }

    /// An entry's hash proves only that it holds the bytes fetched; when those were a damaged
    /// copy, the reader evicts the entry and the next read sees the mended object.
    #[test]
    fn an_evicted_entry_is_fetched_again_from_the_store() {
        let (dir, remote) = setup();
        remote.inner().raw_put("index/i1", b"damaged copy".to_vec());
        let cache = CachingStore::new(remote.clone(), dir.path());
        assert_eq!(cache.get("index/i1").unwrap(), b"damaged copy");
        // The repository's copy is mended; the entry still serves the old bytes.
        remote.inner().raw_put("index/i1", b"the index".to_vec());
        assert_eq!(cache.get("index/i1").unwrap(), b"damaged copy");
        assert!(cache.evict("index/i1"));
        assert_eq!(cache.get("index/i1").unwrap(), b"the index");
        assert_eq!(remote.counts().gets, 2);
        // The fresh entry serves the next run.
        let again = CachingStore::new(remote.clone(), dir.path());
        assert_eq!(again.get("index/i1").unwrap(), b"the index");
        assert_eq!(remote.counts().gets, 2);
        // Nothing to drop: no entry, or a key the cache does not keep.
        assert!(cache.evict("index/i1"));
        assert!(!cache.evict("index/i1"));
        assert!(!cache.evict("config"));
        assert_eq!(cache.stats().evicted, 2);
        // Through wrappers and pointers, to the cache beneath them.
        cache.get("index/i1").unwrap();
        let wrapped: Box<dyn Store> = Box::new(CountingStore::new(crate::FaultStore::new(
            crate::ThrottleStore::new(Arc::new(cache.clone()), crate::ThrottleLimits::new(0, 0)),
        )));
        assert!(wrapped.evict("index/i1"));
        assert!(!dir.path().join("index/i1").exists());
    }

    #[test]
    fn listing_prunes_what_the_store_no_longer_has() {
        let (dir, remote) = setup();
        let cache = CachingStore::new(remote.clone(), dir.path());
        for key in [
            "index/a",
            "index/b",
            "snapshots/0000000001-x",
            "snapshots/0000000002-y",
        ] {
            cache.put(key, key.as_bytes(), PutMode::Create).unwrap();
        }
        // Another host deletes behind this cache's back.
        remote.inner().raw_remove("index/a");
        remote.inner().raw_remove("snapshots/0000000001-x");
        // A listing of another prefix touches nothing under index/.
        cache.list("snapshots/0000000002").unwrap();
        assert!(dir.path().join("index/a").exists());
        assert!(dir.path().join("snapshots/0000000001-x").exists());
        let listed = cache.list("index/").unwrap();
        assert_eq!(listed.len(), 1);
        assert!(!dir.path().join("index/a").exists());
        assert!(dir.path().join("index/b").exists());
        cache.list("").unwrap();
        assert!(!dir.path().join("snapshots/0000000001-x").exists());
        assert!(dir.path().join("snapshots/0000000002-y").exists());
        assert_eq!(cache.stats().pruned, 2);
        // A deleted key is gone from the cache at once.
        cache.delete("index/b").unwrap();
        assert!(!dir.path().join("index/b").exists());
        assert_eq!(
            cache.get("index/b").unwrap_err().kind(),
            StoreErrorKind::NotFound
        );
    }

    #[test]
    fn a_broken_cache_directory_costs_requests_not_failures() {
        let dir = tempfile::tempdir().unwrap();
        // A file where the cache directory should be: nothing can be created under it.
        let blocked = dir.path().join("cache");
        fs::write(&blocked, b"not a directory").unwrap();
        let remote = CountingStore::new(MemoryStore::new());
        let cache = CachingStore::new(remote.clone(), &blocked);
        cache.put("index/i", b"bytes", PutMode::Create).unwrap();
        assert_eq!(cache.get("index/i").unwrap(), b"bytes");
        assert_eq!(cache.get("index/i").unwrap(), b"bytes");
        cache.list("").unwrap();
        cache.delete("index/i").unwrap();
        assert_eq!(remote.counts().gets, 2);
        assert!(cache.stats().errors >= 3, "{:?}", cache.stats());
    }

    #[test]
    fn old_temporaries_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join(TMP_DIR);
        fs::create_dir_all(&tmp).unwrap();
        let old = tmp.join("old");
        let fresh = tmp.join("fresh");
        fs::write(&old, b"x").unwrap();
        fs::write(&fresh, b"x").unwrap();
        let past = SystemTime::now() - 2 * TMP_MAX_AGE;
        fs::File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(past)
            .unwrap();
        let _cache = CachingStore::new(MemoryStore::new(), dir.path());
        assert!(!old.exists());
        assert!(fresh.exists());
    }
}

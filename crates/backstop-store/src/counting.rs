//! A wrapper that counts requests and bytes, to measure what an operation costs on an object store.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{ObjectMeta, PendingObject, PutMode, Store, StoreError};

/// Requests made and bytes moved through a [`CountingStore`].
///
/// Requests are counted when they are made, whether they succeed or not; bytes only when they
/// moved (a failed put counts no bytes up).
///
/// Serializes as a flat JSON object with the field names below (the CLI's `--json` output).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RequestCounts {
    /// `put` calls.
    pub puts: u64,
    /// `get` and `get_range` calls.
    pub gets: u64,
    /// The `get_range` calls among `gets`.
    pub range_gets: u64,
    /// `list` calls.
    pub lists: u64,
    /// `head` calls.
    pub heads: u64,
    /// `delete` calls.
    pub deletes: u64,
    /// Bytes stored by successful puts.
    pub bytes_up: u64,
    /// Bytes returned by successful gets.
    pub bytes_down: u64,
}

impl RequestCounts {
    /// All requests of every kind.
    pub fn requests(&self) -> u64 {
        self.puts + self.gets + self.lists + self.heads + self.deletes
    }

    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &RequestCounts) -> RequestCounts {
        RequestCounts {
            puts: self.puts.saturating_sub(earlier.puts),
            gets: self.gets.saturating_sub(earlier.gets),
            range_gets: self.range_gets.saturating_sub(earlier.range_gets),
            lists: self.lists.saturating_sub(earlier.lists),
            heads: self.heads.saturating_sub(earlier.heads),
            deletes: self.deletes.saturating_sub(earlier.deletes),
            bytes_up: self.bytes_up.saturating_sub(earlier.bytes_up),
            bytes_down: self.bytes_down.saturating_sub(earlier.bytes_down),
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    puts: AtomicU64,
    gets: AtomicU64,
    range_gets: AtomicU64,
    lists: AtomicU64,
    heads: AtomicU64,
    deletes: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

/// A handle on a [`CountingStore`]'s counters that does not keep the store itself alive
/// (a store may own connections or helper processes that must close when it is dropped).
#[derive(Clone, Debug)]
pub struct RequestCounter {
    counters: Arc<Counters>,
}

impl RequestCounter {
    /// The counts so far.
    pub fn counts(&self) -> RequestCounts {
        self.counters.snapshot()
    }
}

impl Counters {
    fn snapshot(&self) -> RequestCounts {
        RequestCounts {
            puts: self.puts.load(Ordering::Relaxed),
            gets: self.gets.load(Ordering::Relaxed),
            range_gets: self.range_gets.load(Ordering::Relaxed),
            lists: self.lists.load(Ordering::Relaxed),
            heads: self.heads.load(Ordering::Relaxed),
            deletes: self.deletes.load(Ordering::Relaxed),
            bytes_up: self.bytes_up.load(Ordering::Relaxed),
            bytes_down: self.bytes_down.load(Ordering::Relaxed),
        }
    }
}

/// Counts every request to the inner store. Clones share the counters.
#[derive(Clone, Debug)]
pub struct CountingStore<S> {
    inner: S,
    counters: Arc<Counters>,
}

impl<S: Store> CountingStore<S> {
    /// Wraps `inner` with all counters at zero.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            counters: Arc::default(),
        }
    }

    /// The counts so far.
    pub fn counts(&self) -> RequestCounts {
        self.counters.snapshot()
    }

    /// A handle that reads the counters without keeping this store alive.
    pub fn counter(&self) -> RequestCounter {
        RequestCounter {
            counters: Arc::clone(&self.counters),
        }
    }

    /// Sets every counter back to zero.
    pub fn reset(&self) {
        let c = &self.counters;
        for counter in [
            &c.puts,
            &c.gets,
            &c.range_gets,
            &c.lists,
            &c.heads,
            &c.deletes,
            &c.bytes_up,
            &c.bytes_down,
        ] {
            counter.store(0, Ordering::Relaxed);
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
}

impl<S: Store> Store for CountingStore<S> {
    fn put(&self, key: &str, bytes: &[u8], mode: PutMode) -> Result<(), StoreError> {
        bump(&self.counters.puts, 1);
        self.inner.put(key, bytes, mode)?;
        bump(&self.counters.bytes_up, bytes.len() as u64);
        Ok(())
    }

    fn get(&self, key: &str) -> Result<Vec<u8>, StoreError> {
        bump(&self.counters.gets, 1);
        let bytes = self.inner.get(key)?;
        bump(&self.counters.bytes_down, bytes.len() as u64);
        Ok(bytes)
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>, StoreError> {
        bump(&self.counters.gets, 1);
        bump(&self.counters.range_gets, 1);
        let bytes = self.inner.get_range(key, range)?;
        bump(&self.counters.bytes_down, bytes.len() as u64);
        Ok(bytes)
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        bump(&self.counters.lists, 1);
        self.inner.list(prefix)
    }

    fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        bump(&self.counters.heads, 1);
        self.inner.head(key)
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        bump(&self.counters.deletes, 1);
        self.inner.delete(key)
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn remove_temp_files(&self, min_age: std::time::Duration) -> Result<u64, StoreError> {
        // Counted as one listing and one delete per file removed, when any were; a walk that
        // finds none is not counted (stores without temp files make no request at all).
        let removed = self.inner.remove_temp_files(min_age)?;
        if removed > 0 {
            bump(&self.counters.lists, 1);
            bump(&self.counters.deletes, removed);
        }
        Ok(removed)
    }

    fn sequential_read_size(&self) -> u64 {
        self.inner.sequential_read_size()
    }

    fn evict(&self, key: &str) -> bool {
        self.inner.evict(key)
    }

    fn put_pieces(
        &self,
        size_hint: usize,
        buffer: Vec<u8>,
    ) -> Result<Box<dyn PendingObject + '_>, StoreError> {
        Ok(Box::new(CountedObject {
            inner: self.inner.put_pieces(size_hint, buffer)?,
            counters: &self.counters,
        }))
    }
}

/// A [`CountingStore`]'s pending object: counted as one put when it is finished.
struct CountedObject<'a> {
    inner: Box<dyn PendingObject + 'a>,
    counters: &'a Counters,
}

impl PendingObject for CountedObject<'_> {
    fn write(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        self.inner.write(bytes)
    }

    fn len(&self) -> u64 {
        self.inner.len()
    }

    fn finish(self: Box<Self>, key: &str, mode: PutMode) -> Result<Vec<u8>, StoreError> {
        bump(&self.counters.puts, 1);
        let len = self.inner.len();
        let buffer = self.inner.finish(key, mode)?;
        bump(&self.counters.bytes_up, len);
        Ok(buffer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryStore;

    #[test]
    fn a_pieced_put_counts_as_one_put_of_its_bytes_once_finished() {
        let store = CountingStore::new(MemoryStore::new());
        let mut pending = store.put_pieces(0, Vec::new()).unwrap();
        pending.write(b"123").unwrap();
        pending.write(b"45").unwrap();
        assert_eq!(store.counts().puts, 0);
        pending.finish("a", PutMode::Create).unwrap();
        assert_eq!((store.counts().puts, store.counts().bytes_up), (1, 5));
        assert_eq!(store.get("a").unwrap(), b"12345");
    }

    #[test]
    fn counts_requests_and_bytes() {
        let store = CountingStore::new(MemoryStore::new());
        store.put("a", b"12345", PutMode::Create).unwrap();
        assert!(store.put("a", b"12345", PutMode::Create).is_err());
        store.get_range("a", 1..3).unwrap();
        store.get("a").unwrap();
        assert!(store.get("b").is_err());
        store.list("").unwrap();
        store.head("a").unwrap();
        store.delete("a").unwrap();
        let before = store.counts();
        assert_eq!(
            before,
            RequestCounts {
                puts: 2,
                gets: 3,
                range_gets: 1,
                lists: 1,
                heads: 1,
                deletes: 1,
                bytes_up: 5,
                bytes_down: 7,
            }
        );
        assert_eq!(before.requests(), 8);
        store.clone().get_range("a", 0..0).unwrap_err();
        assert_eq!(store.counts().since(&before).gets, 1);
        store.reset();
        assert_eq!(store.counts(), RequestCounts::default());
    }
}

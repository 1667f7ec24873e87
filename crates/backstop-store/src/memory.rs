//! An in-memory store for tests and examples, with hooks to damage objects behind the engine's back.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::{ObjectMeta, PutMode, Store, StoreError, StoreErrorKind, validate_key};

/// Objects in a `BTreeMap` behind a lock.
///
/// Clones share the same objects, so a test can keep a handle, give a clone to the engine and
/// then inspect or damage what the engine wrote ([`MemoryStore::corrupt`],
/// [`MemoryStore::raw_put`], [`MemoryStore::raw_remove`]).
#[derive(Clone, Default)]
pub struct MemoryStore {
    objects: Arc<RwLock<BTreeMap<String, Object>>>,
}

/// What a [`MemoryStore`] held at one moment ([`MemoryStore::snapshot`]).
#[derive(Clone)]
pub struct MemorySnapshot(BTreeMap<String, Object>);

impl MemorySnapshot {
    /// Every key, sorted.
    pub fn keys(&self) -> Vec<String> {
        self.0.keys().cloned().collect()
    }
}

#[derive(Clone)]
struct Object {
    bytes: Arc<Vec<u8>>,
    modified_unix: i64,
}

impl Object {
    fn new(bytes: Vec<u8>) -> Self {
        Self {
            bytes: Arc::new(bytes),
            modified_unix: now_unix(),
        }
    }
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    // A panic while the lock is held cannot leave the map half-updated (every change is a single
    // map operation), so a poisoned lock is still safe to use.
    fn read(&self) -> RwLockReadGuard<'_, BTreeMap<String, Object>> {
        self.objects.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, BTreeMap<String, Object>> {
        self.objects.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every key, sorted.
    pub fn keys(&self) -> Vec<String> {
        self.read().keys().cloned().collect()
    }

    /// Number of objects.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether the store holds no object.
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// Sum of all object sizes.
    pub fn total_bytes(&self) -> u64 {
        self.read().values().map(|o| o.bytes.len() as u64).sum()
    }

    /// Changes the bytes of an existing object in place (flip a bit, truncate, append), bypassing
    /// every rule; returns whether the key existed.
    pub fn corrupt(&self, key: &str, damage: impl FnOnce(&mut Vec<u8>)) -> bool {
        let mut objects = self.write();
        match objects.get_mut(key) {
            Some(object) => {
                damage(Arc::make_mut(&mut object.bytes));
                true
            }
            None => false,
        }
    }

    /// Stores `bytes` under `key` without checking the key or the put mode.
    pub fn raw_put(&self, key: &str, bytes: impl Into<Vec<u8>>) {
        self.write()
            .insert(key.to_owned(), Object::new(bytes.into()));
    }

    /// Removes an object without any checks; returns whether it existed.
    pub fn raw_remove(&self, key: &str) -> bool {
        self.write().remove(key).is_some()
    }

    /// The bytes under `key`, if any, without any checks.
    pub fn raw_get(&self, key: &str) -> Option<Vec<u8>> {
        self.read().get(key).map(|o| o.bytes.as_ref().clone())
    }

    /// Everything the store holds now (the objects are shared, not copied), to put back with
    /// [`MemoryStore::restore`]: a test that injects a failure at each step of an operation
    /// starts every attempt from the same state.
    pub fn snapshot(&self) -> MemorySnapshot {
        MemorySnapshot(self.read().clone())
    }

    /// Makes the store hold exactly what `snapshot` held: objects added since go, changed or
    /// removed ones come back.
    pub fn restore(&self, snapshot: &MemorySnapshot) {
        self.write().clone_from(&snapshot.0);
    }

    fn object(&self, key: &str) -> Result<Object, StoreError> {
        validate_key(key)?;
        self.read()
            .get(key)
            .cloned()
            .ok_or_else(|| StoreError::new(StoreErrorKind::NotFound, key, "no such object"))
    }
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("objects", &self.len())
            .finish()
    }
}

/// Checks `range` against an object of `size` bytes; shared by the stores that slice in memory.
pub(crate) fn check_range(key: &str, range: &Range<u64>, size: u64) -> Result<(), StoreError> {
    if range.start > range.end || range.end > size {
        return Err(StoreError::new(
            StoreErrorKind::InvalidRange,
            key,
            format!(
                "range {}..{} is not inside the object of {size} bytes",
                range.start, range.end
            ),
        ));
    }
    Ok(())
}

impl Store for MemoryStore {
    fn put(&self, key: &str, bytes: &[u8], mode: PutMode) -> Result<(), StoreError> {
        validate_key(key)?;
        let mut objects = self.write();
        if mode == PutMode::Create && objects.contains_key(key) {
            return Err(StoreError::new(
                StoreErrorKind::AlreadyExists,
                key,
                "object already exists and the put asked to create it",
            ));
        }
        objects.insert(key.to_owned(), Object::new(bytes.to_vec()));
        Ok(())
    }

    fn get(&self, key: &str) -> Result<Vec<u8>, StoreError> {
        Ok(self.object(key)?.bytes.as_ref().clone())
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>, StoreError> {
        let object = self.object(key)?;
        check_range(key, &range, object.bytes.len() as u64)?;
        // check_range proved both ends fit in the object's length, which is a usize.
        let (start, end) = (range.start as usize, range.end as usize);
        Ok(object
            .bytes
            .get(start..end)
            .map(<[u8]>::to_vec)
            .unwrap_or_default())
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        let objects = self.read();
        Ok(objects
            .range(prefix.to_owned()..)
            .take_while(|(key, _)| key.starts_with(prefix))
            .map(|(key, object)| ObjectMeta {
                key: key.clone(),
                size: object.bytes.len() as u64,
                modified_unix: Some(object.modified_unix),
            })
            .collect())
    }

    fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        let object = self.object(key)?;
        Ok(ObjectMeta {
            key: key.to_owned(),
            size: object.bytes.len() as u64,
            modified_unix: Some(object.modified_unix),
        })
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        validate_key(key)?;
        self.write().remove(key);
        Ok(())
    }

    fn describe(&self) -> String {
        "memory://".to_owned()
    }

    fn sequential_read_size(&self) -> u64 {
        // Small, so that the tests' packs (often about 1 MiB) are read in many pieces and the
        // engine's streaming reads are exercised by every gc and full verify in the tests.
        64 << 10
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restoring_a_snapshot_undoes_puts_removals_and_damage() {
        let store = MemoryStore::new();
        store.put("a", b"one", PutMode::Create).unwrap();
        store.put("b", b"two", PutMode::Create).unwrap();
        let saved = store.snapshot();
        store.put("c", b"new", PutMode::Create).unwrap();
        store.raw_remove("b");
        store.corrupt("a", |bytes| bytes[0] ^= 1);
        store.restore(&saved);
        assert_eq!(store.keys(), ["a", "b"]);
        assert_eq!(saved.keys(), ["a", "b"]);
        assert_eq!(store.raw_get("a").unwrap(), b"one");
        assert_eq!(store.raw_get("b").unwrap(), b"two");
    }

    #[test]
    fn clones_share_objects_and_corrupt_changes_them() {
        let store = MemoryStore::new();
        let handle = store.clone();
        store.put("a/b", b"hello", PutMode::Create).unwrap();
        assert_eq!(handle.keys(), vec!["a/b".to_owned()]);
        assert!(handle.corrupt("a/b", |bytes| bytes[0] ^= 1));
        assert_eq!(store.get("a/b").unwrap(), b"iello");
        assert!(!handle.corrupt("missing", |_| {}));
        assert!(handle.raw_remove("a/b"));
        assert_eq!(
            store.get("a/b").unwrap_err().kind(),
            StoreErrorKind::NotFound
        );
    }
}

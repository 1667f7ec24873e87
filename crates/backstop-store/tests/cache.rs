//! The metadata cache under the access pattern of the engine: open lists `index/` and reads
//! every index object, listing backups lists `snapshots/` and reads every snapshot. A second
//! run with the same cache directory must read none of them from the store, and must still see
//! what other hosts added and deleted meanwhile.

use std::sync::{Arc, Mutex};

use backstop_store::{
    CachingStore, CountingStore, MemoryStore, ObjectMeta, PutMode, Store, StoreError,
};

/// Records the key of every get that reaches the store.
#[derive(Clone, Debug, Default)]
struct GetLog {
    inner: MemoryStore,
    gets: Arc<Mutex<Vec<String>>>,
}

impl GetLog {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.gets.lock().expect("log lock"))
    }
}

impl Store for GetLog {
    fn put(&self, key: &str, bytes: &[u8], mode: PutMode) -> Result<(), StoreError> {
        self.inner.put(key, bytes, mode)
    }
    fn get(&self, key: &str) -> Result<Vec<u8>, StoreError> {
        self.gets.lock().expect("log lock").push(key.to_owned());
        self.inner.get(key)
    }
    fn get_range(&self, key: &str, range: std::ops::Range<u64>) -> Result<Vec<u8>, StoreError> {
        self.gets.lock().expect("log lock").push(key.to_owned());
        self.inner.get_range(key, range)
    }
    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        self.inner.list(prefix)
    }
    fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        self.inner.head(key)
    }
    fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.inner.delete(key)
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

/// What opening a repository and listing its backups reads, as the engine does it.
fn open_and_list(store: &dyn Store) -> Vec<Vec<u8>> {
    let mut read = vec![store.get("config").expect("get config")];
    for prefix in ["keys/", "index/", "snapshots/"] {
        let mut keys: Vec<String> = store
            .list(prefix)
            .expect("list")
            .into_iter()
            .map(|m| m.key)
            .collect();
        keys.sort();
        for key in keys {
            read.push(store.get(&key).expect("get listed object"));
        }
    }
    read
}

#[test]
fn a_second_run_reads_no_index_or_snapshot_from_the_store() {
    let remote = GetLog::default();
    let store = remote.inner.clone();
    store.raw_put("config", "config");
    store.raw_put("keys/k1", "key");
    for i in 0..20 {
        store.raw_put(&format!("index/{i:064x}"), format!("index {i}"));
        store.raw_put(&format!("snapshots/{i:010}-abcd"), format!("snapshot {i}"));
    }
    let dir = tempfile::tempdir().unwrap();

    let first = open_and_list(&CachingStore::new(remote.clone(), dir.path()));
    assert_eq!(remote.take().len(), 42, "the first run reads everything");

    let cache = CachingStore::new(CountingStore::new(remote.clone()), dir.path());
    let second = open_and_list(&cache);
    assert_eq!(second, first, "the cache returns the same bytes");
    assert_eq!(
        remote.take(),
        vec!["config".to_owned(), "keys/k1".to_owned()],
        "only the mutable objects are read again"
    );
    assert_eq!(cache.inner().counts().gets, 2);
    assert_eq!(cache.stats().hits, 40);

    // Another host adds a backup and its index, and gc deletes an old one.
    store.raw_put("index/new", "new index");
    store.raw_put("snapshots/0000000021-ef01", "snapshot 21");
    store.raw_remove("snapshots/0000000000-abcd");
    store.raw_remove(&format!("index/{:064x}", 0));
    let third = open_and_list(&CachingStore::new(remote.clone(), dir.path()));
    assert_eq!(
        remote.take(),
        vec![
            "config".to_owned(),
            "keys/k1".to_owned(),
            "index/new".to_owned(),
            "snapshots/0000000021-ef01".to_owned()
        ],
        "only what is new is fetched"
    );
    assert_eq!(third.len(), second.len());
    assert!(
        !third.contains(&b"snapshot 0".to_vec()),
        "deleted objects are gone"
    );
    assert!(
        !dir.path().join("snapshots/0000000000-abcd").exists(),
        "and pruned from the cache"
    );
}

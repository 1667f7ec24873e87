//! `verify --read-data-subset`: each run reads the share asked for (at least one pack), and
//! runs read different parts, so that frequent subsets cover every pack in time.

#![allow(clippy::unwrap_used, reason = "tests")]

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use backstop::store::{MemoryStore, ObjectMeta, PutMode, Store, StoreError};
use backstop::{
    BackupEngine, BackupOptions, DirSource, EngineOptions, InitOptions, VerifyLevel, VerifyOptions,
};

/// A store that remembers which packs were read.
#[derive(Clone, Debug)]
struct PackReads {
    inner: MemoryStore,
    packs: Arc<Mutex<BTreeSet<String>>>,
}

impl PackReads {
    fn take(&self) -> BTreeSet<String> {
        std::mem::take(&mut *self.packs.lock().unwrap())
    }

    fn note(&self, key: &str) {
        if key.starts_with("packs/") {
            self.packs.lock().unwrap().insert(key.to_owned());
        }
    }
}

impl Store for PackReads {
    fn put(&self, key: &str, bytes: &[u8], mode: PutMode) -> Result<(), StoreError> {
        self.inner.put(key, bytes, mode)
    }
    fn get(&self, key: &str) -> Result<Vec<u8>, StoreError> {
        self.note(key);
        self.inner.get(key)
    }
    fn get_range(&self, key: &str, range: std::ops::Range<u64>) -> Result<Vec<u8>, StoreError> {
        self.note(key);
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

#[test]
fn each_subset_reads_its_share_and_runs_cover_every_pack() {
    let source = tempfile::tempdir().unwrap();
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    for i in 0..16 {
        let bytes: Vec<u8> = (0..1_000_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        std::fs::write(source.path().join(format!("f{i}")), bytes).unwrap();
    }
    let store = PackReads {
        inner: MemoryStore::new(),
        packs: Arc::default(),
    };
    let engine = BackupEngine::init(
        store.clone(),
        InitOptions::default()
            .with_chunk_sizes(16 * 1024, 64 * 1024, 256 * 1024)
            .with_pack_size(1024 * 1024),
        EngineOptions::default(),
    )
    .unwrap();
    engine
        .create_backup(
            &mut DirSource::new(source.path()),
            &BackupOptions::default(),
        )
        .unwrap();
    let all: BTreeSet<String> = store
        .inner
        .list("packs/")
        .unwrap()
        .into_iter()
        .map(|m| m.key)
        .collect();
    assert!(all.len() >= 12, "only {} packs", all.len());
    store.take();

    // A quick verify reads only the packs that hold the file lists, as every verify does.
    let report = engine
        .verify_all_with(&VerifyOptions::new(VerifyLevel::Quick))
        .unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    let lists = store.take();
    let subset = |percent: u8| {
        let options = VerifyOptions::new(VerifyLevel::Subset(percent));
        let report = engine.verify_all_with(&options).unwrap();
        assert!(report.is_ok(), "{:?}", report.problems);
        let mut read = store.take();
        // The list packs count when the subset reads them whole: once in 16-odd runs.
        if report.packs_read as usize != read.len() {
            read.retain(|key| !lists.contains(key));
        }
        assert_eq!(read.len() as u64, report.packs_read);
        read
    };
    // 1 %: one pack each time, not none.
    assert_eq!(subset(1).len(), 1);
    // 10 % of n packs: ceil(n / 10), and in 60 runs every pack at least once (a run of
    // ceil(n / 10) packs from a random start misses a given pack with probability < 0.9 a run).
    let share = all.len().div_ceil(10);
    let mut seen = BTreeSet::new();
    for _ in 0..60 {
        let read = subset(10);
        assert_eq!(read.len(), share);
        seen.extend(read);
    }
    assert_eq!(seen, all, "some packs were never read");
}

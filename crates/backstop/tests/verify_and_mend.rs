//! Finding damage and mending it: `verify --read-data-subset` reads the share asked for (at
//! least one pack) and another part each run, so that frequent subsets cover every pack in
//! time; a pack lost from the store leaves the index at the next gc, and a full-read backup of
//! the same data stores its blobs again.

#![allow(clippy::unwrap_used, reason = "tests")]

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use backstop::store::{MemoryStore, ObjectMeta, PutMode, Store, StoreError};
use backstop::{
    BackupEngine, BackupOptions, DirSource, EngineOptions, InitOptions, VerifyLevel, VerifyOptions,
};

#[path = "support/data.rs"]
mod data;
use data::incompressible;

/// A store that remembers which packs were read, and in which order packs were stored.
#[derive(Clone, Debug, Default)]
struct Recording {
    inner: MemoryStore,
    reads: Arc<Mutex<BTreeSet<String>>>,
    puts: Arc<Mutex<Vec<String>>>,
}

impl Recording {
    fn take(&self) -> BTreeSet<String> {
        std::mem::take(&mut *self.reads.lock().unwrap())
    }

    fn note(&self, key: &str) {
        if key.starts_with("packs/") {
            self.reads.lock().unwrap().insert(key.to_owned());
        }
    }
}

impl Store for Recording {
    fn put(&self, key: &str, bytes: &[u8], mode: PutMode) -> Result<(), StoreError> {
        if key.starts_with("packs/") {
            self.puts.lock().unwrap().push(key.to_owned());
        }
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
    for i in 0..16 {
        let bytes = incompressible(1_000_000, i);
        std::fs::write(source.path().join(format!("f{i}")), bytes).unwrap();
    }
    let store = Recording::default();
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
    // 10 % of n packs: ceil(n / 10), and in 300 runs every pack at least once. A run of
    // ceil(n / 10) packs from a random start misses a given pack with probability at most 0.9,
    // so 300 runs miss one of the ~20 packs with probability below 20 * 0.9^300 = 4e-13 (60
    // runs, as first written, failed about once in 40: 20 * 0.9^60 = 0.036).
    let share = all.len().div_ceil(10);
    let mut seen = BTreeSet::new();
    for _ in 0..300 {
        let read = subset(10);
        assert_eq!(read.len(), share);
        seen.extend(read);
    }
    assert_eq!(seen, all, "some packs were never read");
}

/// A pack lost from the store (deleted by hand, lost by the service): verify names it, gc takes
/// it out of the index and counts the blobs backups needed from it, and a backup of the same
/// data with `full_read` stores them again, after which the earlier backup verifies and
/// restores whole. Without the gc step the blobs stay "known" and are never stored again.
#[test]
fn a_lost_pack_leaves_the_index_at_gc_and_the_next_full_read_backup_mends_the_backups() {
    use backstop::{BackupSelector, GcOptions, RestoreOptions};
    let source = tempfile::tempdir().unwrap();
    let bytes = incompressible(6_000_000, 99);
    std::fs::write(source.path().join("big"), &bytes).unwrap();
    let store = Recording::default();
    let engine = BackupEngine::init(
        store.clone(),
        InitOptions::default()
            .with_chunk_sizes(16 * 1024, 64 * 1024, 256 * 1024)
            .with_pack_size(1024 * 1024),
        EngineOptions::default(),
    )
    .unwrap();
    let first = engine
        .create_backup(
            &mut DirSource::new(source.path()),
            &BackupOptions::default(),
        )
        .unwrap();
    // The first pack stored holds file data only (trees are stored at the end).
    let lost = store.puts.lock().unwrap()[0].clone();
    store.inner.delete(&lost).unwrap();

    let report = engine.verify_all(VerifyLevel::Quick).unwrap();
    assert!(
        report.problems.iter().any(|p| p.contains(&lost)),
        "{:?}",
        report.problems
    );
    // And what that costs: the one file whose data was in the pack.
    assert_eq!(
        report.damaged_files,
        [backstop::DamagedFiles {
            backup: first.id,
            files: 1,
            paths: vec!["big".into()],
        }]
    );
    let gc = engine.gc_with(&GcOptions::default()).unwrap();
    assert_eq!(gc.packs_missing, 1, "{gc:?}");
    assert!(gc.blobs_lost > 0, "{gc:?}");

    let again = engine
        .create_backup(
            &mut DirSource::new(source.path()),
            &BackupOptions::default().with_full_read(true),
        )
        .unwrap();
    assert!(again.blobs_added > 0, "{again:?}");
    let report = engine.verify_all(VerifyLevel::Full).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert!(report.damaged_files.is_empty());
    let target = tempfile::tempdir().unwrap();
    engine
        .restore(
            BackupSelector::Id(first.id),
            &target.path().join("r"),
            &RestoreOptions::default(),
        )
        .unwrap();
    assert_eq!(std::fs::read(target.path().join("r/big")).unwrap(), bytes);
}

/// `rounds` backups of a one-file tree (`f` holds `round N`), the second's snapshot then
/// damaged in the store.
fn backups_with_the_second_damaged(rounds: u32) -> (tempfile::TempDir, MemoryStore, BackupEngine) {
    let source = tempfile::tempdir().unwrap();
    let store = MemoryStore::new();
    let engine = BackupEngine::init(
        store.clone(),
        InitOptions::default().with_chunk_sizes(16 * 1024, 64 * 1024, 256 * 1024),
        EngineOptions::default(),
    )
    .unwrap();
    for round in 0..rounds {
        std::fs::write(source.path().join("f"), format!("round {round}")).unwrap();
        engine
            .create_backup(
                &mut DirSource::new(source.path()),
                &BackupOptions::default(),
            )
            .unwrap();
    }
    let key = store
        .keys()
        .into_iter()
        .find(|k| k.starts_with("snapshots/0000000002-"))
        .unwrap();
    let mut bytes = store.raw_get(&key).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    store.raw_put(&key, bytes);
    (source, store, engine)
}

/// One damaged snapshot must not stop the work that can go on without it: listing shows the
/// other backups, a new backup finds its parent among them, verify reports the damaged one
/// (and checks the rest), restores of the others work. gc refuses, since it cannot know what
/// data the damaged backup uses, and says to delete it; once deleted, gc runs.
#[test]
fn a_damaged_snapshot_is_reported_and_stops_only_gc() {
    use backstop::{BackupSelector, GcOptions, RestoreOptions};
    let (source, store, engine) = backups_with_the_second_damaged(3);

    let ids: Vec<u64> = engine
        .list_backups()
        .unwrap()
        .iter()
        .map(|b| b.id)
        .collect();
    assert_eq!(ids, [1, 3]);
    let next = engine
        .create_backup(
            &mut DirSource::new(source.path()),
            &BackupOptions::default(),
        )
        .unwrap();
    assert_eq!((next.id, next.parent), (4, Some(3)));
    let report = engine.verify_all(VerifyLevel::Full).unwrap();
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert!(
        report.problems[0].contains("backup 2") && report.problems[0].contains("delete"),
        "{:?}",
        report.problems
    );
    let target = tempfile::tempdir().unwrap();
    engine
        .restore(
            BackupSelector::Id(1),
            &target.path().join("r"),
            &RestoreOptions::default(),
        )
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(target.path().join("r/f")).unwrap(),
        "round 0"
    );

    let before = store.keys();
    let err = engine.gc_with(&GcOptions::default()).unwrap_err();
    assert!(err.to_string().contains("delete"), "{err}");
    assert_eq!(store.keys(), before, "the refused gc changed something");
    engine.delete_backup(2).unwrap();
    engine.gc_with(&GcOptions::default()).unwrap();
    assert!(engine.verify_all(VerifyLevel::Full).unwrap().is_ok());
}

/// `latest` is the newest backup that can be read: a damaged newest snapshot is passed over
/// (with a warning), not an error that stops every restore of `latest`.
#[test]
fn latest_passes_over_a_damaged_newest_snapshot() {
    use backstop::{BackupSelector, RestoreOptions};
    let (_source, _store, engine) = backups_with_the_second_damaged(2);

    assert_eq!(engine.backup_info(BackupSelector::Latest).unwrap().id, 1);
    let target = tempfile::tempdir().unwrap();
    let info = engine
        .restore(
            BackupSelector::Latest,
            &target.path().join("r"),
            &RestoreOptions::default(),
        )
        .unwrap();
    assert_eq!(info.id, 1);
    assert_eq!(
        std::fs::read_to_string(target.path().join("r/f")).unwrap(),
        "round 0"
    );
    // The damaged one by its id is still an error.
    assert!(engine.backup_info(BackupSelector::Id(2)).is_err());
}

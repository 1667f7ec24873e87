//! RocksDB backed up from outside its process, end to end through the engine: live backups of a
//! database that another process writes, flushes and compacts meanwhile, restored and checked
//! with RocksDB itself (`ldb checkconsistency`, and an open + full scan with paranoid checks
//! through rocksdict); and an incremental backup that reads only what changed.
//!
//! The writer and the check are `tests/support/rocksdb_writer.py` (rocksdict, installed by
//! `scripts/install/rocksdb.sh`).

// Helpers outside `#[test]` functions panic on purpose: a panic is how a test reports failure.
#![allow(clippy::unwrap_used)]

#[path = "support/running.rs"]
mod running;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Instant;

use backstop::source::rocksdb::RocksDbSource;
use backstop::source::testing::rocksdb_writer::{
    Filler, Layout, StressWriter, check_restored, rocksdict_available,
};
use backstop::{
    BackupEngine, BackupOptions, EngineOptions, ErrorKind, ExistingTarget, InitOptions, LocalStore,
    MemoryStore, RestoreOptions, VerifyLevel,
};

fn fast_init() -> InitOptions {
    InitOptions::default().with_kdf(8 * 1024, 1)
}

#[test]
fn twenty_live_backups_each_restore_to_a_prefix_of_the_committed_batches() {
    let test = "twenty_live_backups_each_restore_to_a_prefix_of_the_committed_batches";
    if !rocksdict_available(test) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("db");
    let engine = BackupEngine::init(
        MemoryStore::new(),
        fast_init(),
        EngineOptions::default().with_threads(2),
    )
    .unwrap();
    let mut writer = StressWriter::start(&db, &tmp.path().join("status"), 300);
    let mut committed = writer.wait_committed(20);
    let mut backups = Vec::new();
    for _ in 0..20 {
        // Let the database flush and compact between backups.
        committed = writer.wait_committed(committed + 30);
        let info = engine
            .create_backup(&mut RocksDbSource::new(&db), &BackupOptions::default())
            .unwrap();
        assert_eq!(info.restore_kind, "rocksdb");
        backups.push((info.id, committed, info));
    }
    // Restoring over the database while the writer has it open is refused, whether it would
    // overwrite or mend it, before anything is written; the writer goes on.
    for existing in [ExistingTarget::Overwrite, ExistingTarget::Delta] {
        let err = engine
            .restore(
                backups[19].0,
                &db,
                &RestoreOptions::default().with_existing(existing),
            )
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unsafe, "{existing:?}: {err}");
        assert!(err.to_string().contains("LOCK"), "{err}");
    }
    // A plain directory backup of it says that RocksDB has it open, and which source backs it
    // up.
    running::assert_a_plain_backup_warns(&engine, &db, "RocksDB", "rocksdb", "holds its `LOCK`");
    let written = writer.wait_committed(committed + 10);
    drop(writer);

    for (id, committed, info) in &backups {
        let target = tmp.path().join(format!("restored-{id}"));
        engine
            .restore(*id, &target, &RestoreOptions::default())
            .unwrap();
        let last = check_restored(&target, &Layout::STRESS);
        assert!(
            last >= *committed,
            "backup {id} lost batches: it holds up to {last}, {committed} had committed before it \
             began ({info:?})"
        );
    }
    let last = backups.last().unwrap();
    assert!(engine.verify(last.0, VerifyLevel::Full).unwrap().is_ok());
    let staging: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .chain(std::fs::read_dir(&db).unwrap())
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(backstop::source::rocksdb::STAGING_PREFIX))
        .collect();
    assert!(
        staging.is_empty(),
        "staging directories left behind: {staging:?}"
    );
    let read: u64 = backups.iter().map(|b| b.2.bytes_read).sum();
    eprintln!("20 live backups while {written} batches were written; {read} bytes read in all");
}

fn names(db: &Path) -> BTreeSet<(String, u64)> {
    std::fs::read_dir(db)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().unwrap().len(),
            )
        })
        .collect()
}

/// An incremental backup after one more flush reads only the new table, the MANIFEST, the WAL
/// and the few small files stored with every backup. The database is 200 MiB by default
/// (`BACKSTOP_ROCKSDB_MIB=1024` gives the 1 GiB); the assertion does not depend on it.
#[test]
fn incremental_backup_after_one_flush_reads_only_the_new_table_manifest_and_wal() {
    let test = "incremental_backup_after_one_flush_reads_only_the_new_table_manifest_and_wal";
    if !rocksdict_available(test) {
        return;
    }
    let mib: u32 = std::env::var("BACKSTOP_ROCKSDB_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("db");
    let mut filler = Filler::start(&db, mib);
    let engine = BackupEngine::init(
        LocalStore::new(tmp.path().join("repo")),
        fast_init(),
        EngineOptions::default().with_threads(2),
    )
    .unwrap();

    let started = Instant::now();
    let full = engine
        .create_backup(&mut RocksDbSource::new(&db), &BackupOptions::default())
        .unwrap();
    let full_time = started.elapsed();
    let before = names(&db);
    let last_batch = filler.flush();
    let after = names(&db);
    let started = Instant::now();
    let incremental = engine
        .create_backup(&mut RocksDbSource::new(&db), &BackupOptions::default())
        .unwrap();
    let incremental_time = started.elapsed();

    let is_table = |n: &str| n.ends_with(".sst") || n.ends_with(".blob");
    let before_names: BTreeSet<&String> = before.iter().map(|(n, _)| n).collect();
    let new_tables: Vec<&(String, u64)> = after
        .iter()
        .filter(|(n, _)| is_table(n) && !before_names.contains(n))
        .collect();
    assert_eq!(
        new_tables.len(),
        1,
        "one flush makes one table: {new_tables:?}"
    );
    // Stored with every backup: the MANIFEST, WAL, OPTIONS, CURRENT, IDENTITY, binding config.
    let per_backup: u64 = after
        .iter()
        .filter(|(n, _)| !is_table(n) && n != "LOCK" && n != "LOG" && !n.starts_with("LOG.old"))
        .map(|(_, len)| len)
        .sum();
    let allowed = new_tables[0].1 + per_backup + 64 * 1024;
    eprintln!(
        "{mib} MiB database: full backup read {} bytes in {full_time:?}; after one flush the \
         incremental read {} bytes in {incremental_time:?} (new table {} + per-backup files \
         {per_backup}), added {} bytes",
        full.bytes_read, incremental.bytes_read, new_tables[0].1, incremental.bytes_added
    );
    assert!(
        incremental.bytes_read <= allowed,
        "the incremental backup read {} bytes, more than the new table, MANIFEST and WAL ({allowed})",
        incremental.bytes_read
    );
    assert!(
        full.bytes_read > u64::from(mib) << 20,
        "the full backup read the whole database"
    );
    let batch_keys = filler.batch_keys;
    drop(filler);

    let target = tmp.path().join("restored");
    engine
        .restore(incremental.id, &target, &RestoreOptions::default())
        .unwrap();
    let layout = Layout {
        batch_keys,
        value_size: 4000,
        values: "random",
    };
    assert_eq!(check_restored(&target, &layout), last_batch);
}

//! A `rocksdb::DB` held by the application (the `rocksdb-embedded` feature), backed up through
//! the engine while a thread of the same process writes atomic batches: every restored copy
//! opens with RocksDB and holds exactly a prefix of the committed batches; `flush_before_backup`
//! leaves the WAL empty; a backup after one more flush reads only the new table and small files;
//! the checkpoint directory never outlives its session.
#![cfg(feature = "rocksdb-embedded")]
// Helpers outside `#[test]` functions panic on purpose: a panic is how a test reports failure.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use backstop::source::rocksdb_embedded::rocksdb::{DB, Options, WriteBatch};
use backstop::source::rocksdb_embedded::{CHECKPOINT_PREFIX, EmbeddedRocksDb};
use backstop::{
    BackupEngine, BackupOptions, EngineOptions, InitOptions, MemoryStore, RestoreOptions,
    SessionContext, Source, VerifyLevel,
};

/// Keys per batch; a torn batch would show as a batch with fewer keys.
const KEYS_PER_BATCH: u64 = 8;

fn engine() -> BackupEngine {
    BackupEngine::init(
        MemoryStore::new(),
        InitOptions::default().with_kdf(8 * 1024, 1),
        EngineOptions::default(),
    )
    .unwrap()
}

fn open(path: &Path, small_memtable: bool) -> Arc<DB> {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    // Compactions would replace tables between two backups; the incremental test counts them.
    opts.set_disable_auto_compactions(true);
    if small_memtable {
        opts.set_write_buffer_size(256 * 1024);
    }
    Arc::new(DB::open(&opts, path).unwrap())
}

fn put_batch(db: &DB, batch_no: u64, value_len: usize) {
    let mut batch = WriteBatch::default();
    for k in 0..KEYS_PER_BATCH {
        let value: Vec<u8> = (0..value_len)
            .map(|i| (i as u64 ^ batch_no.wrapping_mul(31) ^ k) as u8)
            .collect();
        batch.put(format!("b{batch_no:010}-{k}"), value);
    }
    db.write(batch).unwrap();
}

/// The batch numbers in a restored database, checking each batch is whole.
fn batches_in(path: &Path) -> Vec<u64> {
    let db = DB::open(&Options::default(), path).unwrap();
    let mut counts: BTreeMap<u64, u64> = BTreeMap::new();
    for item in db.iterator(backstop::source::rocksdb_embedded::rocksdb::IteratorMode::Start) {
        let (key, _) = item.unwrap();
        let key = std::str::from_utf8(&key).unwrap();
        let batch: u64 = key[1..11].parse().unwrap();
        *counts.entry(batch).or_default() += 1;
    }
    for (batch, n) in &counts {
        assert_eq!(
            *n,
            KEYS_PER_BATCH,
            "batch {batch} is torn in {}",
            path.display()
        );
    }
    counts.into_keys().collect()
}

fn checkpoint_dirs(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(CHECKPOINT_PREFIX))
        .collect()
}

fn wal_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

struct Writer {
    committed: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    fn start(db: Arc<DB>) -> Self {
        let committed = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s) = (committed.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut n = 0;
            while !s.load(Ordering::Relaxed) {
                put_batch(&db, n, 100);
                n += 1;
                c.store(n, Ordering::SeqCst);
            }
        });
        Self {
            committed,
            stop,
            thread: Some(thread),
        }
    }

    /// Waits (polling, with a deadline) until at least `n` more batches are committed.
    fn wait_for_more(&self, n: u64) {
        let target = self.committed.load(Ordering::SeqCst) + n;
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.committed.load(Ordering::SeqCst) < target {
            assert!(
                Instant::now() < deadline,
                "the writer thread made no progress"
            );
            std::thread::yield_now();
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn live_backups_during_batched_writes_restore_to_a_prefix_of_the_batches() {
    let tmp = tempfile::tempdir().unwrap();
    let db_path = tmp.path().join("db");
    let db = open(&db_path, true);
    let writer = Writer::start(db.clone());
    let engine = engine();
    let mut source = EmbeddedRocksDb::new(db.clone(), &db_path);
    for round in 0..5 {
        writer.wait_for_more(200);
        let before = writer.committed.load(Ordering::SeqCst);
        let info = engine
            .create_backup(&mut source, &BackupOptions::default())
            .unwrap();
        let after = writer.committed.load(Ordering::SeqCst);
        assert_eq!(info.source_kind, "rocksdb");
        assert_eq!(info.restore_kind, "rocksdb");
        assert!(checkpoint_dirs(tmp.path()).is_empty(), "checkpoint left");
        engine.verify(info.id, VerifyLevel::Full).unwrap();
        let target = tmp.path().join(format!("restore-{round}"));
        engine
            .restore(info.id, &target, &RestoreOptions::default())
            .unwrap();
        let batches = batches_in(&target);
        let n = batches.len() as u64;
        assert_eq!(
            batches,
            (0..n).collect::<Vec<_>>(),
            "a gap in round {round}"
        );
        // A batch is counted as committed only after `write` returned, so one more may be in.
        assert!(
            before <= n && n <= after + 1,
            "round {round}: {n} batches restored, {before} committed before, {after} after"
        );
        eprintln!(
            "round {round}: {n} batches, read {} of {} bytes",
            info.bytes_read, info.size
        );
    }
    drop(writer);
}

#[test]
fn flush_before_backup_leaves_an_empty_wal_and_the_next_backup_reads_only_new_files() {
    let tmp = tempfile::tempdir().unwrap();
    let db_path = tmp.path().join("db");
    let db = open(&db_path, false);
    // About 8 MiB in a few tables, and some rows only in the memtable and WAL.
    for n in 0..2000 {
        put_batch(&db, n, 512);
        if n % 500 == 499 {
            db.flush().unwrap();
        }
    }
    for n in 2000..2100 {
        put_batch(&db, n, 512);
    }
    let engine = engine();
    let mut source = EmbeddedRocksDb::new(db.clone(), &db_path).with_flush_before_backup(true);
    let first = engine
        .create_backup(&mut source, &BackupOptions::default())
        .unwrap();
    assert_eq!(
        first.source_meta.get("flush_before_backup").unwrap(),
        "true"
    );
    let restored = tmp.path().join("restore-1");
    engine
        .restore(first.id, &restored, &RestoreOptions::default())
        .unwrap();
    let wal = wal_bytes(&restored);
    assert_eq!(wal, 0, "the flushed backup holds {wal} WAL bytes");
    assert_eq!(batches_in(&restored), (0..2100).collect::<Vec<_>>());

    for n in 2100..2200 {
        put_batch(&db, n, 512);
    }
    db.flush().unwrap();
    let second = engine
        .create_backup(&mut source, &BackupOptions::default())
        .unwrap();
    assert_eq!(second.parent, Some(first.id));
    eprintln!(
        "database {} bytes; the second backup read {} bytes",
        second.size, second.bytes_read
    );
    assert!(
        second.bytes_read * 10 < second.size,
        "the incremental backup read {} of {} bytes",
        second.bytes_read,
        second.size
    );
    let restored = tmp.path().join("restore-2");
    engine
        .restore(second.id, &restored, &RestoreOptions::default())
        .unwrap();
    assert_eq!(batches_in(&restored), (0..2200).collect::<Vec<_>>());
}

#[test]
fn a_dropped_session_removes_its_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let db_path = tmp.path().join("db");
    let db = open(&db_path, false);
    put_batch(&db, 0, 10);
    let under = tmp.path().join("checkpoints");
    std::fs::create_dir(&under).unwrap();
    let mut source = EmbeddedRocksDb::new(db, &db_path).with_checkpoint_dir(&under);
    let mut session = source.begin(&SessionContext::default()).unwrap();
    assert_eq!(checkpoint_dirs(&under).len(), 1);
    let first = session.next_phase().unwrap().unwrap();
    assert!(first.entries.iter().all(|e| e.path.ends_with(".sst")));
    drop(session);
    assert!(
        checkpoint_dirs(&under).is_empty(),
        "checkpoint left after drop"
    );
}

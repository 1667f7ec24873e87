//! EventStore through the engine: backups taken while a separate process writes, scavenges and
//! indexes following EventStore's file protocol, each restored (with the `truncate.chk` fix-up)
//! and checked against the protocol's invariants; and an incremental backup that reads only the
//! chunk being written, the checkpoints and the index.

// Tests may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

#[path = "../../backstop-source/tests/support/eventstore_check.rs"]
mod eventstore_check;
#[path = "../../backstop-source/tests/support/eventstore_writer.rs"]
mod eventstore_writer;
#[path = "support/running.rs"]
mod running;

use backstop::source::eventstore::EventStoreSource;
use backstop::{
    BackupEngine, BackupOptions, EngineOptions, InitOptions, MemoryStore, RestoreOptions,
    VerifyLevel,
};
use eventstore_check::check_db;

const CHUNK_SIZE: u64 = 256 * 1024;

fn engine() -> BackupEngine {
    BackupEngine::init(
        MemoryStore::new(),
        InitOptions::default().with_kdf(8 * 1024, 1),
        EngineOptions::default().with_threads(2),
    )
    .unwrap()
}

#[test]
fn twenty_backups_under_load_each_restore_consistent() {
    if !eventstore_writer::python_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("db");
    let mut writer = eventstore_writer::Writer::start(
        &db,
        &[
            "--interval-ms",
            "1",
            "--batch",
            "8",
            "--scavenge-every",
            "10",
            "--index-every",
            "32",
        ],
    );
    let engine = engine();
    let mut source = EventStoreSource::new(&db);
    let mut ids = Vec::new();
    let mut seen = 0;
    for _ in 0..20 {
        writer.assert_running();
        // Each backup starts after the writer moved on from what the previous one captured.
        eventstore_writer::wait_past(&db, seen + 32 * 1024);
        let info = engine
            .create_backup(&mut source, &BackupOptions::default())
            .unwrap();
        assert_eq!(info.restore_kind, "eventstore");
        seen = info.source_meta["eventstore.writer"].parse().unwrap();
        ids.push(info.id);
    }
    // Over the database the writer has open: refused before anything is written (EventStore
    // keeps no lock file to query, but the writer has its chunk and checkpoints open); a plain
    // directory backup of it says so.
    let evidence = format!("has `{}/", std::fs::canonicalize(&db).unwrap().display());
    running::assert_restore_over_is_refused(&engine, ids[19], &db, &evidence);
    running::assert_a_plain_backup_warns(&engine, &db, "EventStore", "eventstore", &evidence);
    let last = writer.stop();
    assert!(last.starts_with("stopped"), "{last}");

    let mut writers = Vec::new();
    for id in ids {
        assert!(engine.verify(id, VerifyLevel::Full).unwrap().is_ok());
        let target = tmp.path().join(format!("restore-{id}"));
        let restored = engine
            .restore(id, &target, &RestoreOptions::default())
            .unwrap();
        assert!(
            restored.fixups.iter().any(|f| f.contains("truncate.chk")),
            "{restored:?}"
        );
        let checked = check_db(&target).unwrap_or_else(|e| panic!("backup {id}: {e}"));
        writers.push(checked.writer);
        std::fs::remove_dir_all(&target).unwrap();
    }
    eprintln!("writer positions of the 20 restored backups: {writers:?}");
    assert!(
        writers.windows(2).all(|w| w[0] < w[1]) && writers[19] - writers[0] > 2 * CHUNK_SIZE as i64,
        "the writer barely moved between backups: {writers:?}"
    );
}

#[test]
fn an_incremental_backup_reads_only_the_active_chunk_checkpoints_and_index() {
    if !eventstore_writer::python_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("db");
    let fast = ["--batch", "100", "--interval-ms", "0", "--seed", "3"];
    eventstore_writer::run(&db, &[&["--records", "2600"][..], &fast].concat());
    let completed = eventstore_writer::writer_position(&db) as u64 / CHUNK_SIZE;
    assert!(completed >= 10, "only {completed} completed chunks");

    let engine = engine();
    let mut source = EventStoreSource::new(&db);
    let full = engine
        .create_backup(&mut source, &BackupOptions::default())
        .unwrap();
    let chunks_total: u64 = (0..=completed).map(|_| CHUNK_SIZE).sum();
    assert!(full.bytes_read >= chunks_total, "{full:?}");

    // A few more records, all in the active chunk.
    let before = eventstore_writer::writer_position(&db) as u64;
    eventstore_writer::run(
        &db,
        &[&["--records", "20", "--seed", "4"][..], &fast[..4]].concat(),
    );
    let after = eventstore_writer::writer_position(&db) as u64;
    assert!(
        after > before && after / CHUNK_SIZE == completed,
        "left the active chunk"
    );

    let incremental = engine
        .create_backup(&mut source, &BackupOptions::default())
        .unwrap();
    assert_eq!(incremental.parent, Some(full.id));
    let size_of = |path: &std::path::Path| std::fs::metadata(path).unwrap().len();
    let active = db.join(format!("chunk-{completed:06}.000000"));
    let checkpoints: u64 = ["writer.chk", "chaser.chk", "epoch.chk", "truncate.chk"]
        .iter()
        .map(|n| size_of(&db.join(n)))
        .sum();
    let index = dir_size(&db.join("index"));
    let budget = size_of(&active) + checkpoints + index;
    assert!(
        incremental.bytes_read <= budget,
        "the incremental backup read {} bytes, more than the active chunk + checkpoints + index \
         ({budget}); a completed chunk was read again",
        incremental.bytes_read
    );
    eprintln!(
        "full backup read {} bytes; the incremental read {} (budget {budget}: active chunk {}, \
         checkpoints {checkpoints}, index {index})",
        full.bytes_read,
        incremental.bytes_read,
        size_of(&active)
    );
    assert!(
        incremental.bytes_read < full.bytes_read / 5,
        "{incremental:?}"
    );

    let target = tmp.path().join("restore");
    engine
        .restore(incremental.id, &target, &RestoreOptions::default())
        .unwrap();
    let checked = check_db(&target).unwrap();
    assert_eq!(checked.writer as u64, after);
}

fn dir_size(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let md = entry.metadata().unwrap();
        total += if md.is_dir() {
            dir_size(&entry.path())
        } else {
            md.len()
        };
    }
    total
}

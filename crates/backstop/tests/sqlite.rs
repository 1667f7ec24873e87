//! SQLite hot backups through the engine: 20 backups of a database a separate writer process
//! keeps changing (WAL and rollback-journal mode), each restored and checked by SQLite itself
//! (`PRAGMA integrity_check`), by the bank invariant and by the sequence committed before the
//! backup began; and the size of an incremental backup after 1% of the rows changed.
//!
//! The writer is `tests/support/sqlite_writer.py` (python3 with its sqlite3 module).

// Helpers outside `#[test]` functions are test code too: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

#[path = "support/running.rs"]
mod running;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use backstop::source::sqlite::bank;
use backstop::source::sqlite::{SqliteMethod, SqliteSource};
use backstop::source::testing::sqlite_bank::{
    BankWriter as Writer, WriterStats, create_bank, open, state, wait_past,
};
use backstop::{
    BackupEngine, BackupInfo, BackupOptions, EngineOptions, InitOptions, LocalStore, MemoryStore,
    RestoreOptions, Store, VerifyLevel,
};

const ACCOUNTS: u32 = 2000;

fn engine(store: impl Store + 'static) -> BackupEngine {
    BackupEngine::init(store, InitOptions::default(), EngineOptions::default()).unwrap()
}

/// Restores `info` into `target` (the sqlite procedure runs integrity_check) and checks what
/// SQLite and the bank say about it.
fn restore_and_check(
    engine: &BackupEngine,
    info: &BackupInfo,
    target: &Path,
    accounts: u32,
    committed: i64,
) {
    engine
        .restore(info.id, target, &RestoreOptions::default())
        .unwrap();
    let mut names: Vec<String> = std::fs::read_dir(target)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["bank.db"],
        "stale files beside the restored database"
    );
    let db = target.join("bank.db");
    let check: String = open(&db)
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok", "backup {}", info.id);
    let got = state(&db);
    assert!(got.invariant_holds(), "backup {} is torn: {got:?}", info.id);
    assert_eq!(got.accounts, i64::from(accounts));
    assert!(
        got.max_seq >= committed,
        "backup {} lacks transfers: has seq {}, but {committed} was committed before it began",
        info.id,
        got.max_seq
    );
}

/// Takes `rounds` backups while the writer runs, restoring and checking each.
fn hot_backups(
    store: impl Store + 'static,
    journal_mode: &str,
    method: SqliteMethod,
    rounds: usize,
) -> Option<(Vec<BackupInfo>, WriterStats)> {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("bank.db");
    create_bank(&db, journal_mode, ACCOUNTS, 200);
    let engine = engine(store);
    let writer = Writer::start(&db)?;
    // A plain directory backup says that the database is in use, and which source backs it up:
    // in WAL mode by the lock on its `-shm`, in rollback-journal mode by its `-journal` (a
    // write under way) or by the writer process having it open.
    let evidence = if journal_mode == "wal" {
        "`bank.db-shm` is locked"
    } else {
        "bank.db"
    };
    running::assert_a_plain_backup_warns(&engine, dir.path(), "SQLite", "sqlite", evidence);
    let mut infos = Vec::new();
    let mut seq = 0;
    for round in 0..rounds {
        // Every backup starts with transfers it has not seen yet.
        seq = wait_past(&db, seq);
        let committed = state(&db).max_seq;
        let mut source = SqliteSource::new(&db).with_method(method);
        let info = engine
            .create_backup(&mut source, &BackupOptions::default())
            .unwrap();
        assert_eq!(info.source_kind, "sqlite");
        assert_eq!(info.restore_kind, "sqlite");
        let target = dir.path().join(format!("restore{round}"));
        restore_and_check(&engine, &info, &target, ACCOUNTS, committed);
        infos.push(info);
    }
    // Restoring over the live database is refused before anything is written: in WAL mode by
    // the lock every connection holds on the `-shm` file; in rollback-journal mode, where an
    // idle connection holds no lock, by the writer process having the database open.
    if let Some(last) = infos.last() {
        let evidence = if journal_mode == "wal" {
            "bank.db-shm".to_owned()
        } else {
            format!("has `{}", std::fs::canonicalize(&db).unwrap().display())
        };
        running::assert_restore_over_is_refused(&engine, last.id, dir.path(), &evidence);
    }
    let stats = writer.stop();
    assert!(stats.transactions > 0);
    assert!(state(&db).invariant_holds());
    let report = engine.verify_all(VerifyLevel::Full).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    Some((infos, stats))
}

fn holds(infos: &[BackupInfo]) -> String {
    let ms: Vec<u64> = infos
        .iter()
        .map(|i| i.source_meta["sqlite.hold_ms"].parse().unwrap())
        .collect();
    format!(
        "lock/transaction held max {} ms",
        ms.iter().max().unwrap_or(&0)
    )
}

#[test]
fn twenty_hot_backups_in_wal_mode() {
    let repo = tempfile::tempdir().unwrap();
    let Some((infos, stats)) =
        hot_backups(LocalStore::new(repo.path()), "wal", SqliteMethod::Auto, 20)
    else {
        return;
    };
    for info in &infos {
        assert_eq!(info.source_meta["sqlite.method"], "dbpage");
        assert_eq!(info.source_meta["sqlite.journal_mode"], "wal");
        assert_eq!(info.source_meta["sqlite.hold_blocks_writers"], "false");
    }
    eprintln!(
        "wal/dbpage: 20 backups, {} transfers meanwhile, longest writer transaction {:.1} ms, {}",
        stats.transactions,
        stats.max_txn_ms,
        holds(&infos)
    );
}

#[test]
fn twenty_hot_backups_in_rollback_journal_mode() {
    let Some((infos, stats)) = hot_backups(MemoryStore::new(), "delete", SqliteMethod::Auto, 20)
    else {
        return;
    };
    for info in &infos {
        assert_eq!(info.source_meta["sqlite.method"], "backup-api");
        assert_eq!(info.source_meta["sqlite.journal_mode"], "delete");
    }
    eprintln!(
        "delete/backup-api: 20 backups, {} transfers meanwhile, longest writer transaction \
         {:.1} ms, {}",
        stats.transactions,
        stats.max_txn_ms,
        holds(&infos)
    );
}

/// The `dbpage` method forced on a rollback-journal database: still consistent, but the read
/// transaction keeps the writer from committing while the engine stores the file; the numbers
/// printed show for how long.
#[test]
fn hot_backups_in_rollback_journal_mode_with_forced_dbpage() {
    let Some((infos, stats)) = hot_backups(MemoryStore::new(), "delete", SqliteMethod::DbPage, 5)
    else {
        return;
    };
    for info in &infos {
        assert_eq!(info.source_meta["sqlite.method"], "dbpage");
        assert_eq!(info.source_meta["sqlite.hold_blocks_writers"], "true");
        assert!(!info.warnings.is_empty(), "the blocking is not reported");
    }
    eprintln!(
        "delete/dbpage: 5 backups, {} transfers meanwhile, longest writer transaction {:.1} ms, \
         {}",
        stats.transactions,
        stats.max_txn_ms,
        holds(&infos)
    );
}

/// The database as a list of pages, read from the file once everything is checkpointed into it.
fn file_pages(db: &Path, page_size: usize) -> Vec<Vec<u8>> {
    let conn = open(db);
    // In WAL mode, move every committed page into the file (no-op in rollback mode).
    let _: (i64, i64, i64) = conn
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap();
    drop(conn);
    std::fs::read(db)
        .unwrap()
        .chunks(page_size)
        .map(<[u8]>::to_vec)
        .collect()
}

fn incremental_after_one_percent(journal_mode: &str) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("bank.db");
    let accounts = 20_000;
    create_bank(&db, journal_mode, accounts, 100);
    let engine = engine(MemoryStore::new());
    let first = engine
        .create_backup(&mut SqliteSource::new(&db), &BackupOptions::default())
        .unwrap();
    let page_size: usize = first.source_meta["sqlite.page_size"].parse().unwrap();
    let before = file_pages(&db, page_size);

    // 1% of the rows, spread over the table: new padding, same length.
    let mut conn = open(&db);
    let tx = conn.transaction().unwrap();
    let mut id: u64 = 7;
    for _ in 0..accounts / 100 {
        id = id
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        tx.execute(
            "UPDATE accounts SET pad = randomblob(100) WHERE id = ?1",
            [(id >> 33) % u64::from(accounts) + 1],
        )
        .unwrap();
    }
    tx.commit().unwrap();
    drop(conn);

    let second = engine
        .create_backup(&mut SqliteSource::new(&db), &BackupOptions::default())
        .unwrap();
    let after = file_pages(&db, page_size);
    let changed = after
        .iter()
        .enumerate()
        .filter(|(i, page)| before.get(*i) != Some(page))
        .count();
    let limit = 2 * changed * page_size;
    eprintln!(
        "{journal_mode}/{}: {} pages of {page_size} bytes, {changed} changed ({:.1}%); first \
         backup added {} raw bytes, the incremental {} raw bytes ({:.2}x the changed pages)",
        second.source_meta["sqlite.method"],
        after.len(),
        100.0 * changed as f64 / after.len() as f64,
        first.bytes_added_raw,
        second.bytes_added_raw,
        second.bytes_added_raw as f64 / (changed * page_size) as f64
    );
    assert!(changed > 0);
    assert!(
        second.bytes_added_raw <= limit as u64,
        "the incremental backup added {} raw bytes, more than twice the {changed} changed pages \
         ({limit} bytes)",
        second.bytes_added_raw
    );
    restore_and_check(&engine, &second, &dir.path().join("restored"), accounts, 0);
}

/// A delta restore brings a restored copy that went on taking writes (and was left with a
/// stale `-wal` beside it) back to the hot backup it came from, writing only the pages that
/// differ: the database file comes out byte for byte as the first restore wrote it, and SQLite
/// finds it intact.
#[test]
fn a_delta_restore_brings_a_diverged_copy_back_to_the_backup() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("bank.db");
    create_bank(&db, "wal", 20_000, 100);
    let engine = engine(MemoryStore::new());
    let Some(writer) = Writer::start(&db) else {
        return;
    };
    let seq = wait_past(&db, 0);
    let info = engine
        .create_backup(&mut SqliteSource::new(&db), &BackupOptions::default())
        .unwrap();
    // Not over the live database while the writer has it open: refused before anything is
    // written.
    let err = engine
        .restore(
            info.id,
            dir.path(),
            &RestoreOptions::default().with_existing(backstop::ExistingTarget::Overwrite),
        )
        .unwrap_err();
    assert_eq!(err.kind(), backstop::ErrorKind::Unsafe, "{err}");
    assert!(err.to_string().contains("bank.db-shm"), "{err}");
    writer.stop();
    let target = dir.path().join("restored");
    restore_and_check(&engine, &info, &target, 20_000, seq);
    let restored = target.join("bank.db");
    let as_restored = std::fs::read(&restored).unwrap();
    let state_restored = state(&restored);

    // The copy goes on as a database of its own: 1% of its rows change (neighbours, so a few
    // pages), a table is added.
    let mut conn = open(&restored);
    let tx = conn.transaction().unwrap();
    tx.execute(
        "UPDATE accounts SET pad = randomblob(100) WHERE id BETWEEN 5000 AND 5199",
        [],
    )
    .unwrap();
    tx.execute_batch("CREATE TABLE later(x); INSERT INTO later VALUES (1), (2);")
        .unwrap();
    tx.commit().unwrap();
    drop(conn);
    std::fs::write(
        target.join("bank.db-wal"),
        b"a stale log the backup does not have",
    )
    .unwrap();
    assert_ne!(std::fs::read(&restored).unwrap(), as_restored);

    let delta = engine
        .restore(
            info.id,
            &target,
            &RestoreOptions::default().with_existing(backstop::ExistingTarget::Delta),
        )
        .unwrap();
    assert_eq!(std::fs::read(&restored).unwrap(), as_restored);
    let check: String = open(&restored)
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    assert_eq!(state(&restored), state_restored);
    assert!(!target.join("bank.db-wal").exists());
    assert_eq!(delta.removed, 1, "{delta:?}");
    eprintln!(
        "delta restore of a {} byte database: {} bytes written, {} kept",
        as_restored.len(),
        delta.bytes,
        delta.bytes_kept
    );
    assert!(
        delta.bytes * 4 < as_restored.len() as u64,
        "wrote {} of {} bytes",
        delta.bytes,
        as_restored.len()
    );
    assert_eq!(delta.bytes + delta.bytes_kept, as_restored.len() as u64);
}

#[test]
fn incremental_after_one_percent_update_wal() {
    incremental_after_one_percent("wal");
}

#[test]
fn incremental_after_one_percent_update_rollback_journal() {
    incremental_after_one_percent("delete");
}

/// A library user backs up the database behind the connection the application holds, while
/// the application is in the middle of its own transaction; the backup has only committed data.
#[test]
fn backup_of_a_connection_the_application_holds() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("bank.db");
    create_bank(&db, "wal", ACCOUNTS, 50);
    let app = Arc::new(Mutex::new(open(&db)));
    bank::transfer(&mut app.lock().unwrap(), 1, 2, 10).unwrap();
    app.lock()
        .unwrap()
        .execute_batch("BEGIN; UPDATE accounts SET balance = 0;")
        .unwrap();

    let engine = engine(MemoryStore::new());
    let mut source = SqliteSource::from_connection(app.clone());
    let info = engine
        .create_backup(&mut source, &BackupOptions::default())
        .unwrap();
    app.lock().unwrap().execute_batch("ROLLBACK").unwrap();
    restore_and_check(&engine, &info, &dir.path().join("restored"), ACCOUNTS, 1);
    let meta: &BTreeMap<String, String> = &info.source_meta;
    assert_eq!(meta["sqlite.method"], "dbpage");
}

/// What another process gets when it asks for the write lock of `db` at once: `acquired` or
/// `locked`.
fn write_lock_from_another_process(db: &Path) -> String {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import sqlite3, sys\n\
             c = sqlite3.connect(sys.argv[1], timeout=0, isolation_level=None)\n\
             try:\n    c.execute('BEGIN IMMEDIATE'); print('acquired')\n\
             except sqlite3.OperationalError as e:\n    print('locked' if 'locked' in str(e) else e)",
        ])
        .arg(db)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// An application that embeds the engine backs up a directory holding its own database while
/// it writes (a plain copy, warned of). Reading and closing the database's files must not drop
/// the application's locks: POSIX locks go with any close of the file in the process, and
/// another process could then write beside the application's transaction.
#[test]
fn a_directory_backup_in_the_process_that_writes_the_database_keeps_its_locks() {
    for mode in ["delete", "wal"] {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("bank.db");
        create_bank(&db, mode, ACCOUNTS, 50);
        let app = open(&db);
        app.execute_batch(
            "BEGIN IMMEDIATE; UPDATE accounts SET balance = balance + 1 WHERE id = 1;",
        )
        .unwrap();
        assert_eq!(write_lock_from_another_process(&db), "locked", "{mode}");

        let engine = engine(MemoryStore::new());
        for _ in 0..2 {
            let info = engine
                .create_backup(
                    &mut backstop::DirSource::new(dir.path()),
                    &BackupOptions::default(),
                )
                .unwrap();
            assert!(
                info.warnings
                    .iter()
                    .any(|w| w.contains("running SQLite database")),
                "{mode}: {:?}",
                info.warnings
            );
            assert_eq!(
                write_lock_from_another_process(&db),
                "locked",
                "{mode}: the backup dropped the application's lock"
            );
        }
        app.execute_batch("COMMIT").unwrap();
        drop(app);
        assert_eq!(write_lock_from_another_process(&db), "acquired", "{mode}");
    }
}

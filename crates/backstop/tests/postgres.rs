//! PostgreSQL base backups through the engine, against a real PostgreSQL 15 server under
//! pgbench write load from a separate process: every backup restores into a new data directory
//! where the server replays the stored WAL, reaches consistency, passes `pg_amcheck` and keeps
//! the pgbench invariant; an incremental backup stores about what changed; a WAL segment the
//! archive lacks is a clear `NotFound`; a server that goes away in the middle of a backup
//! fails it without recording anything.
//!
//! Needs the PostgreSQL 15 server, pgbench and amcheck (scripts/install/postgres.sh); skipped
//! loudly without them, and failing under `CI=true`.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failed step fails the test"
)]

#[path = "support/running.rs"]
mod running;

#[path = "support/pg_cluster.rs"]
mod pg_cluster;

use backstop::source::postgres::PostgresSource;
use backstop::{
    BackupEngine, BackupOptions, EngineOptions, ErrorKind, ExistingTarget, InitOptions,
    MemoryStore, RestoreOptions, VerifyLevel,
};
use pg_cluster::PgCluster;
use std::path::Path;
use std::time::{Duration, SystemTime};

fn engine() -> BackupEngine {
    BackupEngine::init(
        MemoryStore::new(),
        InitOptions::default(),
        EngineOptions::default(),
    )
    .unwrap()
}

/// Restores backup `id` into a new cluster under `root` (tablespace `ts_oid` moved to
/// `<root>-ts`), starts it and checks it the way PostgreSQL itself would: recovery ends,
/// pg_amcheck finds nothing, the pgbench balances agree, and every transaction committed before
/// the backup began is there.
fn restore_and_check(
    engine: &BackupEngine,
    id: u64,
    root: &std::path::Path,
    ts_oid: &str,
    committed_before: u64,
) -> u64 {
    let mut restored = PgCluster::at(root);
    let ts_dir = root.with_extension("ts");
    let options = RestoreOptions::default()
        .with_fixup_option(format!("tablespace-{ts_oid}"), ts_dir.to_str().unwrap())
        .with_fixup_option("archive-mode", "off");
    let info = engine.restore(id, restored.data_dir(), &options).unwrap();
    assert!(
        info.fixups.iter().any(|f| f.contains("recovery.signal")),
        "{:?}",
        info.fixups
    );
    pg_cluster::give_to_server_user(root);
    pg_cluster::give_to_server_user(&ts_dir);
    restored.start(&[]);
    restored.wait_until_promoted();
    if let Err(e) = restored.amcheck() {
        panic!(
            "backup {id}: {e}\n--- server log ---\n{}",
            restored.log_tail()
        );
    }
    let sums = restored.pgbench_sums();
    assert!(
        sums.iter().all(|s| *s == sums[0]),
        "backup {id}: pgbench invariant broken: {sums:?}"
    );
    let rows = restored.history_rows();
    assert!(
        rows >= committed_before,
        "backup {id} lost transactions: {rows} pgbench transactions, {committed_before} were \
         committed before it began"
    );
    assert_eq!(
        restored.psql("SELECT count(*) FROM in_ts"),
        "2000",
        "backup {id}"
    );
    restored.stop();
    rows
}

#[test]
fn ten_base_backups_under_pgbench_load_each_restore_consistent() {
    if !pg_cluster::require_postgres() {
        return;
    }
    let started = std::time::Instant::now();
    let tmp = pg_cluster::tempdir();
    let (primary, ts_oid) = PgCluster::primary_with_tablespace(tmp.path(), 2000);

    let engine = engine();
    let mut source = PostgresSource::new(primary.conninfo()).with_fast_checkpoint(true);
    let load = primary.pgbench_load(2, 600, Some(200));
    let mut backups = Vec::new();
    for _ in 0..10 {
        let committed_before = primary.history_rows();
        let info = engine
            .create_backup(&mut source, &BackupOptions::default())
            .unwrap();
        assert_eq!(info.restore_kind, "postgres");
        assert!(info.source_meta.contains_key("wal-stop-segment"));
        backups.push((info, committed_before));
    }
    load.stop();
    let backed_up = started.elapsed();
    assert!(
        engine
            .verify(backups[9].0.id, VerifyLevel::Full)
            .unwrap()
            .is_ok()
    );

    for (info, committed_before) in &backups {
        let root = tmp.path().join(format!("restored-{}", info.id));
        let rows = restore_and_check(&engine, info.id, &root, &ts_oid, *committed_before);
        eprintln!(
            "backup {}: WAL {}..{}, read {} B, added {} B; restored {rows} pgbench transactions \
             (>= {committed_before})",
            info.id,
            info.source_meta["wal-start-segment"],
            info.source_meta["wal-stop-segment"],
            info.bytes_read,
            info.bytes_added,
        );
        // Restored data directories are large; free the disk as we go.
        std::fs::remove_dir_all(&root).unwrap();
    }
    eprintln!(
        "10 backups under load in {:.1} s, 10 restores checked in {:.1} s",
        backed_up.as_secs_f64(),
        (started.elapsed() - backed_up).as_secs_f64()
    );
}

/// The newest modification time of any file under `dir`.
fn newest_mtime(dir: &Path) -> SystemTime {
    let mut newest = SystemTime::UNIX_EPOCH;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for item in std::fs::read_dir(&dir).unwrap() {
            let item = item.unwrap();
            let Ok(md) = item.metadata() else { continue };
            if md.is_dir() {
                stack.push(item.path());
            } else {
                newest = newest.max(md.modified().unwrap());
            }
        }
    }
    newest
}

#[test]
fn incremental_backup_after_a_little_load_stores_much_less() {
    if !pg_cluster::require_postgres() {
        return;
    }
    let tmp = pg_cluster::tempdir();
    let mut primary = PgCluster::init(&tmp.path().join("primary"), &[]);
    primary.start(&[]);
    primary.pgbench_init(2, &[]);
    primary.psql("CHECKPOINT");
    // The engine trusts size and mtime only for files older than its racy window (2 s) when
    // they were read; let the freshly loaded tables age past it, as a real database's have.
    let base = primary.data_dir().join("base");
    pg_cluster::wait_for("the data files to age past the racy window", || {
        SystemTime::now()
            .duration_since(newest_mtime(&base))
            .unwrap_or_default()
            > Duration::from_millis(2500)
    });
    let engine = engine();
    let mut source = PostgresSource::new(primary.conninfo()).with_fast_checkpoint(true);
    let full = engine
        .create_backup(&mut source, &BackupOptions::default())
        .unwrap();

    // A little load: 200 pgbench transactions, finished before the next backup.
    primary.pgbench_run(1, 200);
    let incremental = engine
        .create_backup(&mut source, &BackupOptions::default())
        .unwrap();
    for (what, info) in [("full", &full), ("incremental", &incremental)] {
        eprintln!(
            "{what}: {} B logical, read {} B, added {} B ({} B before compression)",
            info.size, info.bytes_read, info.bytes_added, info.bytes_added_raw
        );
    }
    assert_eq!(incremental.parent, Some(full.id));
    assert!(
        incremental.bytes_added * 4 < full.bytes_added,
        "the incremental backup added {} B, the full backup {} B",
        incremental.bytes_added,
        full.bytes_added
    );
    // pgbench_accounts (most of the data) changed, but the other databases did not.
    assert!(
        incremental.bytes_read < full.bytes_read * 4 / 5,
        "unchanged files were read again: {} B of {} B",
        incremental.bytes_read,
        full.bytes_read
    );

    let root = tmp.path().join("restored");
    let mut restored = PgCluster::at(&root);
    engine
        .restore(
            incremental.id,
            restored.data_dir(),
            &RestoreOptions::default(),
        )
        .unwrap();
    if pg_cluster::running_as_root() {
        // Restored by root, every file is the server user's again: the backup label (written
        // by the backup, not read from the data directory) and what the restore procedure
        // made (the recovery files, the directories whose contents backups skip) included.
        use std::os::unix::fs::MetadataExt as _;
        let owner = |p: &Path| std::fs::metadata(p).unwrap().uid();
        let server = owner(primary.data_dir());
        assert_ne!(server, 0);
        for file in [
            "",
            "PG_VERSION",
            "backup_label",
            "global/pg_control",
            "recovery.signal",
            "postgresql.auto.conf",
            "pg_stat_tmp",
            "pg_replslot",
        ] {
            assert_eq!(owner(&restored.data_dir().join(file)), server, "`{file}`");
        }
    }
    pg_cluster::give_to_server_user(&root);
    restored.start(&[]);
    restored.wait_until_promoted();
    restored.amcheck().unwrap();
    assert_eq!(restored.history_rows(), 200);
    let sums = restored.pgbench_sums();
    assert!(
        sums.iter().all(|s| *s == sums[0]),
        "pgbench invariant broken: {sums:?}"
    );

    // A plain directory backup of the data directory says that the server runs on it, and
    // which source backs it up; once the server has stopped, it says nothing of the kind.
    running::assert_a_plain_backup_warns(
        &engine,
        restored.data_dir(),
        "PostgreSQL",
        "postgres",
        "`postmaster.pid` exists",
    );
    restored.stop();
    let warnings = running::plain_backup_warnings(&engine, restored.data_dir());
    assert!(
        !warnings.iter().any(|w| w.contains("running")),
        "{warnings:?}"
    );
}

/// A delta restore brings a restored cluster that went its own way (promoted, more pgbench
/// transactions, rows changed in its tablespace outside the data directory, a new table) back
/// to the hot backup it came from: the server replays the same WAL to the same point as after
/// the first restore, `pg_amcheck` finds nothing, the pgbench invariant holds, the tablespace's
/// rows are the backup's again (compared in place, then placed where they were), the new table
/// is gone; and of the data directory only what differs was written. While the server runs, the
/// restore is refused.
#[test]
fn a_delta_restore_brings_a_cluster_that_went_its_own_way_back_to_the_backup() {
    if !pg_cluster::require_postgres() {
        return;
    }
    let tmp = pg_cluster::tempdir();
    let (mut primary, ts_oid) = PgCluster::primary_with_tablespace(tmp.path(), 2000);
    let engine = engine();
    let mut source = PostgresSource::new(primary.conninfo()).with_fast_checkpoint(true);
    let load = primary.pgbench_load(2, 600, Some(200));
    let committed_before = primary.history_rows();
    let info = engine
        .create_backup(&mut source, &BackupOptions::default())
        .unwrap();
    load.stop();
    primary.stop();

    let root = tmp.path().join("restored");
    let ts_dir = root.with_extension("ts");
    let mut restored = PgCluster::at(&root);
    let options = RestoreOptions::default()
        .with_fixup_option(format!("tablespace-{ts_oid}"), ts_dir.to_str().unwrap())
        .with_fixup_option("archive-mode", "off");
    engine
        .restore(info.id, restored.data_dir(), &options)
        .unwrap();
    pg_cluster::give_to_server_user(&root);
    pg_cluster::give_to_server_user(&ts_dir);
    restored.start(&[]);
    restored.wait_until_promoted();
    let rows = restored.history_rows();
    assert!(rows >= committed_before, "{rows} < {committed_before}");
    restored.pgbench_run(2, 300);
    restored.psql("UPDATE in_ts SET v = 'changed' WHERE id <= 100");
    restored.psql("CREATE TABLE later AS SELECT g FROM generate_series(1, 10000) g");
    restored.psql("CHECKPOINT");
    // Not over a running server: refused before anything is written.
    let err = engine
        .restore(
            info.id,
            restored.data_dir(),
            &options.clone().with_existing(ExistingTarget::Delta),
        )
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsafe, "{err}");
    assert!(err.to_string().contains("postmaster.pid"), "{err}");
    assert_eq!(restored.psql("SELECT count(*) FROM later"), "10000");
    restored.stop();

    let delta = engine
        .restore(
            info.id,
            restored.data_dir(),
            &options.clone().with_existing(ExistingTarget::Delta),
        )
        .unwrap();
    eprintln!(
        "delta restore: {} B written, {} B kept, {} paths removed; {:?}",
        delta.bytes, delta.bytes_kept, delta.removed, delta.fixups
    );
    assert!(
        delta.fixups.iter().any(|f| f.contains("brought back")),
        "{:?}",
        delta.fixups
    );
    let link = restored.data_dir().join(format!("pg_tblspc/{ts_oid}"));
    assert_eq!(std::fs::read_link(&link).unwrap(), ts_dir);
    pg_cluster::give_to_server_user(&root);
    pg_cluster::give_to_server_user(&ts_dir);
    restored.start(&[]);
    restored.wait_until_promoted();
    if let Err(e) = restored.amcheck() {
        panic!("{e}\n--- server log ---\n{}", restored.log_tail());
    }
    assert_eq!(restored.history_rows(), rows);
    let sums = restored.pgbench_sums();
    assert!(
        sums.iter().all(|s| *s == sums[0]),
        "pgbench invariant broken: {sums:?}"
    );
    assert!(
        restored.try_psql("SELECT count(*) FROM later").is_err(),
        "the table made after the backup is still there"
    );
    assert_eq!(
        restored.psql("SELECT count(*) FROM in_ts WHERE v = md5(id::text)"),
        "2000"
    );
    assert!(delta.removed > 0, "{delta:?}");
    assert!(
        delta.bytes < delta.bytes_kept,
        "a delta restore wrote {} B and kept only {} B",
        delta.bytes,
        delta.bytes_kept
    );
    restored.stop();
}

#[test]
fn fetching_a_wal_segment_the_archive_lacks_is_not_found() {
    let engine = engine();
    engine
        .archive_put("wal", "000000010000000000000001", b"segment one")
        .unwrap();
    assert_eq!(
        engine
            .archive_get("wal", "000000010000000000000001")
            .unwrap(),
        b"segment one"
    );
    let err = engine
        .archive_get("wal", "000000010000000000000002")
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(
        err.to_string().contains("000000010000000000000002"),
        "{err}"
    );
}

/// With data checksums on (the harness's initdb uses `--data-checksums`), every page read is
/// checked: a healthy cluster reports no failure (which also proves the checksum is computed
/// as PostgreSQL does), and a page damaged on disk is named in the backup's warnings.
#[test]
fn page_checksums_are_verified_and_damage_is_reported() {
    if !pg_cluster::require_postgres() {
        return;
    }
    let tmp = pg_cluster::tempdir();
    let mut cluster = PgCluster::init(&tmp.path().join("checksums"), &[]);
    cluster.start(&[]);
    cluster.pgbench_init(1, &[]);
    cluster.psql("CHECKPOINT");
    let engine = engine();
    let backup = |cluster: &PgCluster| {
        engine
            .create_backup(
                &mut PostgresSource::new(cluster.conninfo()).with_fast_checkpoint(true),
                &BackupOptions::default(),
            )
            .unwrap()
    };
    let healthy = backup(&cluster);
    assert_eq!(
        healthy
            .source_meta
            .get("checksum-failures")
            .map(String::as_str),
        Some("0"),
        "{:?}",
        healthy.warnings
    );

    let relation = cluster.psql("SELECT pg_relation_filepath('pgbench_accounts')");
    cluster.stop();
    let path = cluster.data_dir().join(relation.trim());
    let mut bytes = std::fs::read(&path).unwrap();
    assert!(
        bytes.len() > 3 * 8192,
        "pgbench_accounts should span several pages"
    );
    bytes[2 * 8192 + 5000] ^= 0xFF; // inside block 2, away from its header
    std::fs::write(&path, &bytes).unwrap();
    cluster.start(&[]);

    let damaged = backup(&cluster);
    assert_eq!(
        damaged
            .source_meta
            .get("checksum-failures")
            .map(String::as_str),
        Some("1"),
        "{:?}",
        damaged.warnings
    );
    let name = path.file_name().unwrap().to_str().unwrap();
    assert!(
        damaged
            .warnings
            .iter()
            .any(|w| w.contains(name) && w.contains("block 2")),
        "{:?}",
        damaged.warnings
    );
}

/// Crashes the server when the backup reads its first file, once.
struct CrashOnFirstFile<F> {
    crash: F,
    crashed: std::sync::atomic::AtomicBool,
}

impl<F: Fn() + Send + Sync> backstop::Progress for CrashOnFirstFile<F> {
    fn file(&self, _path: &str) {
        if !self.crashed.swap(true, std::sync::atomic::Ordering::SeqCst) {
            (self.crash)();
        }
    }
}

/// A server that goes away in the middle of a base backup (crashed under pgbench load while
/// the data files are read) fails the backup with an error that says PostgreSQL's side broke
/// off, records no backup, and leaves the repository valid; once the server is back (after
/// crash recovery) the next backup works and restores consistent.
#[test]
fn a_server_that_goes_away_mid_backup_fails_it_and_records_nothing() {
    if !pg_cluster::require_postgres() {
        return;
    }
    let tmp = pg_cluster::tempdir();
    let (mut primary, ts_oid) = PgCluster::primary_with_tablespace(tmp.path(), 2000);
    let engine = engine();
    let mut source = PostgresSource::new(primary.conninfo()).with_fast_checkpoint(true);

    let load = primary.pgbench_load(2, 600, Some(200));
    let hook = std::sync::Arc::new(CrashOnFirstFile {
        crash: primary.crasher(),
        crashed: std::sync::atomic::AtomicBool::new(false),
    });
    let result = engine.create_backup(
        &mut source,
        &BackupOptions::default().with_progress(hook.clone()),
    );
    load.stop();
    assert!(
        hook.crashed.load(std::sync::atomic::Ordering::SeqCst),
        "the server was not crashed"
    );
    let err = result.expect_err("a backup whose server went away succeeded");
    let mut message = err.to_string();
    let mut cause = std::error::Error::source(&err);
    while let Some(inner) = cause {
        message.push_str(&format!(": {inner}"));
        cause = inner.source();
    }
    eprintln!("the backup failed with: {message}");
    assert!(
        message.contains("pg_backup_stop")
            && message.contains("connection to PostgreSQL broke")
            && message.contains("run it again"),
        "the error does not say what failed and what to do: {message}"
    );
    assert!(
        engine.list_backups().unwrap().is_empty(),
        "a backup was recorded"
    );
    assert!(engine.verify_all(VerifyLevel::Quick).unwrap().is_ok());

    primary.start(&[]);
    let committed_before = primary.history_rows();
    let info = engine
        .create_backup(&mut source, &BackupOptions::default())
        .unwrap();
    let root = tmp.path().join("restored");
    restore_and_check(&engine, info.id, &root, &ts_oid, committed_before);
}

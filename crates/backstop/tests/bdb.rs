//! Berkeley DB hot backups through the engine, against a real transactional environment that a
//! separate writer process keeps changing (transfers between accounts, a sequence number, one
//! history record per transaction, synchronous commits, 256 KiB log files that rotate fast):
//!
//! - 20 hot backups, each restored, recovered by `db_recover -c` (the restore profile),
//!   checked by `db_verify`, by the transfers' invariant, and by the sequence committed before
//!   the backup began; full log files already stored are never read again;
//! - an incremental chain of 5 backups, each restored after the chain is complete;
//! - a log file removed from the environment between backups is detected and reported, and the
//!   backup becomes a new full one; safe archival (only stored logs) keeps the chain;
//! - a hot standby refreshed 10 times under load opens and satisfies the invariant every time,
//!   and after promotion it runs as the new primary;
//! - an environment whose DB_CONFIG names its data directory by an absolute path (inside the
//!   home) restores, and seeds a standby, that recover and open on their own: recovery never
//!   touches the original environment's files.
//!
//! Needs `db5.3-util` and the `berkeleydb` Python binding (scripts/install/bdb.sh).

#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail the test on any error"
)]

#[path = "support/running.rs"]
mod running;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use backstop::source::bdb::{self, BdbSource, BdbTools};
use backstop::source::testing::bdb_bank::{self, BankState, BankWriter};
use backstop::{
    BackupEngine, BackupInfo, BackupOptions, EngineOptions, InitOptions, MemoryStore,
    RestoreOptions, VerifyLevel,
};

const ACCOUNTS: u64 = 300;

/// Starts the bank's writer on `home`, its sequence file beside the environments in `root`.
fn start_writer(root: &Path, home: &Path, data_dir: Option<&str>, max_seconds: u32) -> BankWriter {
    let seq_file = root.join(format!(
        "committed-{}",
        home.file_name().unwrap().to_string_lossy()
    ));
    BankWriter::start(home, seq_file, ACCOUNTS, data_dir, max_seconds)
}

fn engine() -> BackupEngine {
    BackupEngine::init(
        MemoryStore::new(),
        InitOptions::default(),
        EngineOptions::default(),
    )
    .unwrap()
}

/// Restores `id` into `dir` with recovery and `db_verify`, then checks the bank.
fn restore_and_check(engine: &BackupEngine, id: u64, dir: &Path) -> BankState {
    let info = engine
        .restore(
            id,
            dir,
            &RestoreOptions::default().with_fixup_option("verify", "true"),
        )
        .unwrap();
    assert!(
        info.fixups.iter().any(|s| s.contains("catastrophic")),
        "{:?}",
        info.fixups
    );
    let verified = info
        .fixups
        .iter()
        .filter(|s| s.starts_with("db_verify"))
        .count();
    assert!(
        verified >= 2,
        "db_verify did not check both databases: {:?}",
        info.fixups
    );
    assert!(
        !dir.read_dir().unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("__db")),
        "recovery must leave no region files"
    );
    bdb_bank::check_state(dir, ACCOUNTS)
}

fn stored_logs(info: &BackupInfo) -> BTreeSet<String> {
    info.source_meta["bdb.stored_logs"]
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn log_size(entry: &str) -> u64 {
    entry.rsplit(':').next().unwrap().parse().unwrap()
}

#[test]
fn twenty_hot_backups_under_load_restore_consistent() {
    if !bdb_bank::prerequisites("bdb") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let mut writer = start_writer(root.path(), &root.path().join("env"), Some("data"), 240);
    let engine = engine();
    let mut source = BdbSource::new(&writer.home);
    let mut parent: Option<BackupInfo> = None;
    for round in 0..20 {
        let before = writer.committed();
        let info = engine
            .create_backup(&mut source, &BackupOptions::default())
            .unwrap();
        assert!(
            info.warnings.is_empty(),
            "backup {round}: {:?}",
            info.warnings
        );
        assert_eq!(info.restore_kind, "bdb");
        assert_eq!(info.source_meta["bdb.full"], (round == 0).to_string());
        if let Some(parent) = &parent {
            // Full logs the parent stored are not read again.
            let reused: u64 = stored_logs(parent)
                .intersection(&stored_logs(&info))
                .map(|l| log_size(l))
                .sum();
            assert!(
                info.bytes_read + reused <= info.size,
                "backup {round} read {} of {} bytes although {reused} bytes of logs were stored",
                info.bytes_read,
                info.size
            );
        }
        if round == 0 {
            // Over the environment the writer has open: refused before anything is written.
            // Berkeley DB leaves no lock file to query, but the writer maps its regions and
            // has its files open; a plain directory backup of it says so.
            let home = std::fs::canonicalize(&writer.home).unwrap();
            let evidence = format!("has `{}/", home.display());
            running::assert_restore_over_is_refused(&engine, info.id, &writer.home, &evidence);
            running::assert_a_plain_backup_warns(
                &engine,
                &writer.home,
                "Berkeley DB",
                "bdb",
                &evidence,
            );
        }
        let dir = root.path().join(format!("restore{round}"));
        let state = restore_and_check(&engine, info.id, &dir);
        assert!(
            state.seq >= before,
            "backup {round} lost commits: {} < {before}",
            state.seq
        );
        std::fs::remove_dir_all(&dir).unwrap();
        parent = Some(info);
        writer.wait_for_commits(30);
    }
    let report = engine.verify_all(VerifyLevel::Full).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
}

#[test]
fn incremental_chain_of_five_restores_each_state() {
    if !bdb_bank::prerequisites("bdb") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let mut writer = start_writer(root.path(), &root.path().join("env"), None, 240);
    let engine = engine();
    let mut source = BdbSource::new(&writer.home);
    let mut chain = Vec::new();
    for _ in 0..5 {
        let before = writer.committed();
        let info = engine
            .create_backup(&mut source, &BackupOptions::default())
            .unwrap();
        let after = writer.committed();
        chain.push((info, before, after));
        writer.wait_for_commits(150);
    }
    drop(writer);
    let mut previous = None;
    for (i, (info, before, after)) in chain.iter().enumerate() {
        assert_eq!(info.parent.is_some(), i > 0, "backup {i}");
        assert_eq!(
            info.source_meta["bdb.full"],
            (i == 0).to_string(),
            "backup {i}"
        );
        let state = restore_and_check(&engine, info.id, &root.path().join(format!("restore{i}")));
        // The writer publishes a sequence just after its commit returns, so the backup may
        // hold one transaction more than was published when it ended.
        assert!(
            (*before..=*after + 1).contains(&state.seq),
            "backup {i} restored sequence {} outside [{before}, {after} + 1]",
            state.seq
        );
        assert!(
            previous < Some(state.seq),
            "the chain's states must advance"
        );
        previous = Some(state.seq);
    }
}

#[test]
fn removed_log_between_backups_is_detected_and_safe_archival_is_not() {
    if !bdb_bank::prerequisites("bdb") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let mut writer = start_writer(root.path(), &root.path().join("env"), None, 240);
    let tools = BdbTools::from_path();
    let engine = engine();
    let mut source = BdbSource::new(&writer.home);
    writer.wait_until("three log files", |w| {
        w.log_numbers().last().is_some_and(|&l| l >= 3)
    });
    let first = engine
        .create_backup(&mut source, &BackupOptions::default())
        .unwrap();
    let last1: u32 = first.source_meta["bdb.last_log"].parse().unwrap();

    // Backstop's archival removes only what the latest backup holds: the chain goes on.
    writer.wait_until("two more log files", |w| {
        w.log_numbers().last().is_some_and(|&l| l >= last1 + 2)
    });
    let home = writer.home.clone();
    writer.wait_until("a stored log is no longer needed", |_| {
        !bdb::archivable_logs(&home, &first.source_meta, &tools)
            .unwrap()
            .is_empty()
    });
    let removed = bdb::remove_archived_logs(&writer.home, &first.source_meta, &tools).unwrap();
    assert!(!removed.is_empty());
    for log in &removed {
        let name = log.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            stored_logs(&first).iter().any(|l| l.starts_with(&name)),
            "{name} not stored"
        );
        assert!(!log.exists());
    }
    let second = engine
        .create_backup(&mut source, &BackupOptions::default())
        .unwrap();
    assert!(second.warnings.is_empty(), "{:?}", second.warnings);
    assert_eq!(second.source_meta["bdb.full"], "false");
    let last2: u32 = second.source_meta["bdb.last_log"].parse().unwrap();

    // `db_archive -d` removes logs regardless of backups: the next backup sees the gap.
    writer.wait_until("two more log files", |w| {
        w.log_numbers().last().is_some_and(|&l| l >= last2 + 2)
    });
    let archive = tools.find("archive").unwrap();
    writer.wait_until("db_archive -d removes the last backup's last log", |w| {
        let status = Command::new(&archive)
            .arg("-d")
            .arg("-h")
            .arg(&home)
            .status()
            .unwrap();
        status.success() && w.log_numbers().first().is_some_and(|&f| f > last2)
    });
    let before = writer.committed();
    let third = engine
        .create_backup(&mut source, &BackupOptions::default())
        .unwrap();
    assert_eq!(third.warnings.len(), 1, "{:?}", third.warnings);
    let warning = &third.warnings[0];
    assert!(
        warning.contains("log gap") && warning.contains(&format!("log.{last2:010}")),
        "{warning}"
    );
    assert_eq!(third.source_meta["bdb.full"], "true");
    assert_ne!(
        third.source_meta["bdb.epoch"],
        second.source_meta["bdb.epoch"]
    );
    // A new full backup: every file is read again, none taken from the parent.
    assert_eq!(
        third.bytes_read, third.size,
        "a full backup reads everything"
    );
    let state = restore_and_check(&engine, third.id, &root.path().join("restore3"));
    assert!(state.seq >= before);
}

#[test]
fn restore_fails_clearly_without_tools_and_raw_restore_skips_recovery() {
    if !bdb_bank::prerequisites("bdb") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let writer = start_writer(root.path(), &root.path().join("env"), None, 240);
    let engine = engine();
    let info = engine
        .create_backup(&mut BdbSource::new(&writer.home), &BackupOptions::default())
        .unwrap();
    let empty = root.path().join("no-tools");
    std::fs::create_dir(&empty).unwrap();
    let err = engine
        .restore(
            info.id,
            &root.path().join("r1"),
            &RestoreOptions::default().with_fixup_option("db-tools", empty.to_str().unwrap()),
        )
        .unwrap_err();
    let chain = std::iter::successors(Some(&err as &dyn std::error::Error), |e| e.source())
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ");
    assert!(
        chain.contains("db5.3-util") && chain.contains("db-tools"),
        "{chain}"
    );
    let raw = engine
        .restore(
            info.id,
            &root.path().join("r2"),
            &RestoreOptions::default().with_raw(true),
        )
        .unwrap();
    assert!(
        raw.fixups.iter().all(|s| !s.contains("catastrophic")),
        "{:?}",
        raw.fixups
    );
    assert!(root.path().join("r2/accounts.db").exists());
}

#[test]
fn standby_refreshed_ten_times_under_load_then_fails_over() {
    if !bdb_bank::prerequisites("bdb") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let mut writer = start_writer(root.path(), &root.path().join("env"), Some("data"), 240);
    let tools = BdbTools::from_path();
    let standby = root.path().join("standby");
    let mut removed_some = false;
    for round in 0..10 {
        let before = writer.committed();
        let report = bdb::refresh_standby(&writer.home, &standby, &tools).unwrap();
        assert_eq!(report.seeded, round == 0, "{report:?}");
        assert_eq!(report.reseed_reason, None);
        removed_some |= !report.logs_removed.is_empty();
        let state = bdb_bank::check_state(&standby, ACCOUNTS);
        assert!(
            state.seq >= before,
            "refresh {round} is behind: {} < {before}",
            state.seq
        );
        writer.wait_for_commits(150);
    }
    assert!(
        removed_some,
        "logs no longer needed should leave the standby"
    );
    drop(writer);

    // Failover: the standby becomes the primary and takes writes; refreshes refuse it now.
    bdb::promote_standby(&standby).unwrap();
    let err = bdb::refresh_standby(&root.path().join("env"), &standby, &tools).unwrap_err();
    assert!(err.to_string().contains("promoted"), "{err}");
    let before = bdb_bank::check_state(&standby, ACCOUNTS).seq;
    let primary = start_writer(root.path(), &standby, None, 2);
    primary.wait_exit();
    let after = bdb_bank::check_state(&standby, ACCOUNTS);
    assert!(after.seq > before, "the promoted standby took no writes");
}

#[test]
fn standby_from_the_repository_is_the_latest_backup_restored_over_it() {
    if !bdb_bank::prerequisites("bdb") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let mut writer = start_writer(root.path(), &root.path().join("env"), Some("data"), 240);
    let engine = engine();
    let mut source = BdbSource::new(&writer.home);
    let standby = root.path().join("standby");
    for round in 0..3 {
        let before = writer.committed();
        engine
            .create_backup(&mut source, &BackupOptions::default())
            .unwrap();
        // Logs written by the standby's previous recovery must not meet the restored ones.
        bdb::remove_standby_logs(&standby).unwrap();
        let options = RestoreOptions::default()
            .with_existing(backstop::ExistingTarget::Overwrite)
            .with_fixup_option("verify", "true");
        engine
            .restore(backstop::BackupSelector::Latest, &standby, &options)
            .unwrap();
        let state = bdb_bank::check_state(&standby, ACCOUNTS);
        assert!(
            state.seq >= before,
            "round {round}: {} < {before}",
            state.seq
        );
        writer.wait_for_commits(150);
    }
}

/// Every file under `dir` with its modification time and contents, optionally leaving out the
/// region files (which any process joining the environment updates).
fn fingerprint(
    dir: &Path,
    with_regions: bool,
) -> std::collections::BTreeMap<String, (std::time::SystemTime, Vec<u8>)> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for item in std::fs::read_dir(&d).unwrap() {
            let path = item.unwrap().path();
            let md = std::fs::symlink_metadata(&path).unwrap();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if md.is_dir() {
                stack.push(path);
            } else if with_regions || !name.starts_with("__db.") {
                let rel = path.strip_prefix(dir).unwrap().display().to_string();
                out.insert(rel, (md.modified().unwrap(), std::fs::read(&path).unwrap()));
            }
        }
    }
    out
}

// Regression: a DB_CONFIG with an absolute `set_data_dir` (accepted because it lies inside the
// home) was stored unchanged, so `db_recover -c -h TARGET` on restore, and in a standby, opened
// and wrote the original environment's data files.
#[test]
fn absolute_data_dir_restores_and_stands_by_without_touching_the_original() {
    if !bdb_bank::prerequisites("bdb") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let home = root.path().join("env");
    let absolute = home.join("data");
    let mut writer = start_writer(root.path(), &home, Some(absolute.to_str().unwrap()), 240);
    let config = std::fs::read_to_string(home.join("DB_CONFIG")).unwrap();
    assert!(
        config.contains(&format!("set_data_dir {}", absolute.display())),
        "{config}"
    );
    let engine = engine();
    let info = engine
        .create_backup(&mut BdbSource::new(&home), &BackupOptions::default())
        .unwrap();
    writer.wait_for_commits(50);
    let refreshed = root.path().join("standby");
    let tools = BdbTools::from_path();
    bdb::refresh_standby(&home, &refreshed, &tools).unwrap();
    writer.wait_for_commits(50);
    drop(writer);

    // Restore: recovery works on the copy only.
    let original = fingerprint(&home, true);
    let dir = root.path().join("restore");
    restore_and_check(&engine, info.id, &dir);
    assert!(
        fingerprint(&home, true) == original,
        "the restore changed files of the original environment"
    );
    let restored_config = std::fs::read_to_string(dir.join("DB_CONFIG")).unwrap();
    assert!(
        restored_config.contains("set_data_dir data\n")
            && !restored_config.contains(&*home.to_string_lossy()),
        "{restored_config}"
    );

    // A standby refresh (here the second, which recovers again) works on the standby only.
    let original = fingerprint(&home, false);
    bdb::refresh_standby(&home, &refreshed, &tools).unwrap();
    assert!(
        fingerprint(&home, false) == original,
        "the standby refresh changed data or log files of the original environment"
    );
    let standby_config = std::fs::read_to_string(refreshed.join("DB_CONFIG")).unwrap();
    assert!(
        !standby_config.contains(&*home.to_string_lossy()),
        "{standby_config}"
    );

    // Both copies are self-contained: they open and hold the bank with the original gone.
    std::fs::rename(&home, root.path().join("env-moved")).unwrap();
    bdb_bank::check_state(&dir, ACCOUNTS);
    bdb_bank::check_state(&refreshed, ACCOUNTS);
    assert!(
        std::fs::read_dir(dir.join("data")).unwrap().count() >= 2,
        "the restored data directory holds the databases"
    );
}
